//! Validation of manifests: every rejection the validator implements, with the field path, the
//! key part of the message and the object it is about; plus the loader's handling of documents,
//! lists, unknown kinds, defaulting and duplicates.
//!
//! Expected behaviour is the Kubernetes API server's (pkg/apis/networking/validation,
//! pkg/apis/core/validation, apimachinery label and name validation).

use flowgate_policy::model::{
    ContainerPort, IpBlock, NamespaceScope, Peer, Policy, PortMatch, Protocol,
};
use flowgate_policy::{ManifestError, Manifests, ObjectRef};

const SOURCE: &str = "test.yaml";

include!("validation/helpers.rs");
include!("validation/ip_block.rs");
include!("validation/ports.rs");
include!("validation/selectors.rs");
include!("validation/peers.rs");
include!("validation/policy_types.rs");
include!("validation/metadata.rs");
include!("validation/pods.rs");
include!("validation/loading.rs");
