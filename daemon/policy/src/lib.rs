//! flowgate-policy: a pure, exact model of Kubernetes NetworkPolicy.
//!
//! Text in (`load::Manifests::add_text`), validated model out (`model`), an index (`cluster`),
//! and answers: `evaluate` (verdict with attribution), `explain`, `lint`, `probe` and `matrix`.
//! No I/O happens here: the `flowgate` binary reads files and prints.

pub mod cluster;
pub mod compile;
pub mod error;
pub mod evaluate;
pub mod explain;
pub mod lint;
pub mod load;
pub mod maps;
pub mod matrix;
pub mod model;
pub mod probe;
pub mod validate;

pub use cluster::{Cluster, PodId, PolicyId};
pub use error::{Location, ManifestError, Notice, ObjectRef};
pub use evaluate::{Decision, Flow, PolicyRef, Reason, RuleRef, SideDecision, Verdict, evaluate};
pub use load::Manifests;
