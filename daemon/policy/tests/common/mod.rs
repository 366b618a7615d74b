//! Helpers shared by the policy crate's integration tests: build a cluster from YAML text.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

pub mod r#gen;
pub mod oracle;
pub mod scenarios;

use flowgate_policy::evaluate::{Decision, Flow, evaluate};
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};

/// Loads YAML and builds the cluster; panics (naming them) if any object was rejected.
pub fn cluster(yaml: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("test.yaml", yaml);
    assert!(
        m.errors.is_empty(),
        "test manifests must be valid, got: {:#?}",
        m.errors
    );
    Cluster::from_manifests(&mut m)
}

/// Evaluates `from -> to` between two named pods (`ns/name`).
pub fn decide(cluster: &Cluster, from: &str, to: &str, protocol: Protocol, port: u16) -> Decision {
    let flow = flow(cluster, from, to, protocol, Some(port));
    evaluate(cluster, &flow)
}

/// A flow between two endpoints, each `ns/name` or an IP.
pub fn flow(
    cluster: &Cluster,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: Option<u16>,
) -> Flow {
    let probe = flowgate_policy::probe::Probe {
        from: from.into(),
        to: to.into(),
        port: port.map(|p| flowgate_policy::probe::PortRef::Number(i64::from(p))),
        protocol: protocol.as_str().into(),
        expect: None,
    };
    flowgate_policy::probe::resolve(cluster, &probe)
        .unwrap_or_else(|e| panic!("probe {from} -> {to} must resolve: {e}"))
}
