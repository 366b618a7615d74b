//! `evaluate(cluster, flow) -> Decision`: the reference NetworkPolicy semantics with attribution.
//! The offline CLI answers with it; the compiled datapath is checked against it.

use std::net::IpAddr;

use serde::Serialize;

use crate::cluster::{Cluster, PodId};
use crate::model::{Direction, NamespaceScope, Peer, Pod, PortMatch, PortSpec, Protocol, Rule};

/// One connection attempt: addresses, the pods behind them (if any), protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src_ip: IpAddr,
    /// The pod that owns `src_ip`; `None` for an endpoint outside the cluster.
    pub src_pod: Option<PodId>,
    pub dst_ip: IpAddr,
    pub dst_pod: Option<PodId>,
    pub protocol: Protocol,
    /// Destination port; `None` for ICMP.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// Why one side decided as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// No policy isolates the pod in this direction.
    NotIsolated,
    /// A rule of an isolating policy matched.
    RuleAllow,
    /// The pod is isolated and no rule matched.
    DefaultDeny,
    /// This end is outside the cluster: no policy applies on its side.
    External,
    /// This end is a host-network pod: NetworkPolicy does not apply to it.
    HostNetwork,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotIsolated => "not_isolated",
            Self::RuleAllow => "rule_allow",
            Self::DefaultDeny => "default_deny",
            Self::External => "external",
            Self::HostNetwork => "host_network",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

/// A rule that allowed a flow: the policy, the rule's index in `spec.ingress`/`spec.egress`, and the
/// indexes of the first matching peer (`from`/`to`) and port; `None` where the rule has no list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct RuleRef {
    pub namespace: String,
    pub name: String,
    pub rule: usize,
    pub peer: Option<usize>,
    pub port: Option<usize>,
}

/// The verdict of one direction (the source's egress or the destination's ingress).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideDecision {
    pub verdict: Verdict,
    pub reason: Reason,
    /// Every (policy, rule) that allows the flow, in policy order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allowed_by: Vec<RuleRef>,
    /// For a default deny: the policies that isolate the pod in this direction.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub isolated_by: Vec<PolicyRef>,
}

impl SideDecision {
    fn allow(reason: Reason) -> Self {
        Self {
            verdict: Verdict::Allow,
            reason,
            allowed_by: Vec::new(),
            isolated_by: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Allow only if both sides allow.
    pub verdict: Verdict,
    /// The source pod's egress.
    pub egress: SideDecision,
    /// The destination pod's ingress.
    pub ingress: SideDecision,
}

/// Decides a flow exactly as the NetworkPolicy spec says, naming the rules or policies responsible.
pub fn evaluate(cluster: &Cluster, flow: &Flow) -> Decision {
    let egress = side(
        cluster,
        Direction::Egress,
        flow.src_pod,
        flow.dst_pod,
        flow.dst_ip,
        flow,
    );
    let ingress = side(
        cluster,
        Direction::Ingress,
        flow.dst_pod,
        flow.src_pod,
        flow.src_ip,
        flow,
    );
    let verdict = if egress.verdict == Verdict::Allow && ingress.verdict == Verdict::Allow {
        Verdict::Allow
    } else {
        Verdict::Deny
    };
    Decision {
        verdict,
        egress,
        ingress,
    }
}

/// The decision of `subject`'s policies for traffic with the remote end `peer_pod`/`peer_ip`.
pub fn side(
    cluster: &Cluster,
    direction: Direction,
    subject: Option<PodId>,
    peer_pod: Option<PodId>,
    peer_ip: IpAddr,
    flow: &Flow,
) -> SideDecision {
    let Some(subject) = subject else {
        return SideDecision::allow(Reason::External);
    };
    if cluster.pod(subject).host_network {
        return SideDecision::allow(Reason::HostNetwork);
    }
    // Named ports resolve on the destination pod: the peer for egress, the subject for ingress.
    let dst_pod = match direction {
        Direction::Egress => peer_pod,
        Direction::Ingress => Some(subject),
    }
    .map(|id| cluster.pod(id));
    let remote = Remote {
        pod: peer_pod,
        ip: peer_ip,
    };

    let mut isolated_by = Vec::new();
    let mut allowed_by = Vec::new();
    for (_, policy) in cluster.policies_selecting(subject) {
        if !policy.isolates(direction) {
            continue;
        }
        isolated_by.push(PolicyRef {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        });
        for (index, rule) in policy.rules(direction).iter().enumerate() {
            if let Some((peer, port)) = rule_match(
                cluster,
                &policy.namespace,
                rule,
                remote,
                dst_pod,
                flow.protocol,
                flow.port,
            ) {
                allowed_by.push(RuleRef {
                    namespace: policy.namespace.clone(),
                    name: policy.name.clone(),
                    rule: index,
                    peer,
                    port,
                });
            }
        }
    }
    if isolated_by.is_empty() {
        SideDecision::allow(Reason::NotIsolated)
    } else if allowed_by.is_empty() {
        SideDecision {
            verdict: Verdict::Deny,
            reason: Reason::DefaultDeny,
            allowed_by,
            isolated_by,
        }
    } else {
        SideDecision {
            verdict: Verdict::Allow,
            reason: Reason::RuleAllow,
            allowed_by,
            isolated_by: Vec::new(),
        }
    }
}

/// The remote end of a flow as one side sees it.
#[derive(Debug, Clone, Copy)]
pub struct Remote {
    pub pod: Option<PodId>,
    pub ip: IpAddr,
}

/// Whether a rule matches; on a match, the first matching peer and port indexes (`None` where the
/// rule has no `from`/`to` or no `ports`).
pub fn rule_match(
    cluster: &Cluster,
    policy_namespace: &str,
    rule: &Rule,
    remote: Remote,
    dst_pod: Option<&Pod>,
    protocol: Protocol,
    port: Option<u16>,
) -> Option<(Option<usize>, Option<usize>)> {
    let port_index = if rule.ports.is_empty() {
        None
    } else {
        Some(
            rule.ports
                .iter()
                .position(|spec| port_matches(spec, protocol, port, dst_pod))?,
        )
    };
    let peer_index = match &rule.peers {
        None => None,
        Some(peers) => Some(
            peers
                .iter()
                .position(|p| peer_matches(cluster, policy_namespace, p, remote))?,
        ),
    };
    Some((peer_index, port_index))
}

pub fn peer_matches(
    cluster: &Cluster,
    policy_namespace: &str,
    peer: &Peer,
    remote: Remote,
) -> bool {
    match peer {
        Peer::IpBlock(block) => block.contains(remote.ip),
        Peer::Pods { namespaces, pods } => {
            let Some(pod) = remote.pod.map(|id| cluster.pod(id)) else {
                return false;
            };
            if pod.host_network {
                return false;
            }
            let in_scope = match namespaces {
                NamespaceScope::Own(ns) => {
                    debug_assert_eq!(ns, policy_namespace);
                    pod.namespace == *ns
                }
                NamespaceScope::Selected(sel) => {
                    sel.matches(cluster.namespace_labels(&pod.namespace))
                }
            };
            in_scope && pods.matches(&pod.labels)
        }
    }
}

pub fn port_matches(
    spec: &PortSpec,
    protocol: Protocol,
    port: Option<u16>,
    dst_pod: Option<&Pod>,
) -> bool {
    let Some(port) = port else { return false };
    if spec.protocol != protocol {
        return false;
    }
    match &spec.port {
        PortMatch::Any => true,
        PortMatch::Range(start, end) => (*start..=*end).contains(&port),
        PortMatch::Named(name) => {
            dst_pod.and_then(|pod| pod.named_port(name, protocol)) == Some(port)
        }
    }
}
