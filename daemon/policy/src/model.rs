//! The validated model of Namespaces, Pods and NetworkPolicies that evaluation works on.
//! Built by `validate` from k8s-openapi objects; indexed by `cluster`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

/// Label key/value pairs of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// The label the API server sets on every namespace (immutable since Kubernetes 1.22).
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// IP protocol of a flow, or of a NetworkPolicy port (which only allows TCP, UDP and SCTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
    /// ICMP or ICMPv6: has no port, so only rules without `ports` can allow it.
    Icmp,
}

impl Protocol {
    /// Parses a NetworkPolicy / containerPort protocol name (case-sensitive like the API server).
    pub fn from_k8s(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Parses a probe protocol: the Kubernetes names, plus ICMP; case-insensitive.
    pub fn from_probe(name: &str) -> Option<Self> {
        match name.to_ascii_uppercase().as_str() {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            "ICMP" | "ICMPV6" => Some(Self::Icmp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
            Self::Icmp => "ICMP",
        }
    }

    /// Whether flows of this protocol carry a destination port.
    pub fn has_ports(self) -> bool {
        !matches!(self, Self::Icmp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `matchExpressions` requirement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Self::In(key, values) => labels.get(key).is_some_and(|v| values.contains(v)),
            Self::NotIn(key, values) => labels.get(key).is_none_or(|v| !values.contains(v)),
            Self::Exists(key) => labels.contains_key(key),
            Self::DoesNotExist(key) => !labels.contains_key(key),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::In(k, v) => write!(f, "{k} in ({})", v.join(",")),
            Self::NotIn(k, v) => write!(f, "{k} notin ({})", v.join(",")),
            Self::Exists(k) => write!(f, "{k}"),
            Self::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// A validated label selector. The empty selector matches everything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub match_labels: Vec<(String, String)>,
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }
}

impl fmt::Display for Selector {
    /// kubectl's selector syntax; `{}` for the empty selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(self.match_expressions.iter().map(ToString::to_string))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// Which namespaces a pod peer covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// `podSelector` alone: the policy's own namespace.
    Own(String),
    /// `namespaceSelector` (alone or AND'd with a `podSelector`).
    Selected(Selector),
}

/// An `ipBlock` peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpBlock {
    /// The network (host bits cleared, as the API server's consumers interpret it).
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
    /// The manifest's CIDR had host bits set (`10.0.0.5/8`): accepted, linted.
    pub host_bits_set: bool,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

/// One entry of a rule's `from`/`to` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Pods {
        namespaces: NamespaceScope,
        pods: Selector,
    },
    IpBlock(IpBlock),
}

/// What a NetworkPolicy port entry matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortMatch {
    /// `port` absent: every port of the protocol.
    Any,
    /// A number, or `port`..=`endPort`.
    Range(u16, u16),
    /// A named port, resolved on the destination pod's containerPorts (name AND protocol).
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::Any => write!(f, "{}/*", self.protocol),
            PortMatch::Range(a, b) if a == b => write!(f, "{}/{a}", self.protocol),
            PortMatch::Range(a, b) => write!(f, "{}/{a}-{b}", self.protocol),
            PortMatch::Named(n) => write!(f, "{}/{n}", self.protocol),
        }
    }
}

/// One ingress or egress rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None` when `from`/`to` is absent or empty: every peer, in or outside the cluster.
    pub peers: Option<Vec<Peer>>,
    /// Empty when `ports` is absent or empty: every port and protocol (ICMP too).
    pub ports: Vec<PortSpec>,
}

/// Traffic direction, from the point of view of the selected pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ingress => "ingress",
            Self::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub pod_selector: Selector,
    /// `Ingress` is in the effective `policyTypes`.
    pub isolates_ingress: bool,
    /// `Egress` is in the effective `policyTypes`.
    pub isolates_egress: bool,
    /// Ingress rules; ignored (kept for lint) unless `isolates_ingress`.
    pub ingress: Vec<Rule>,
    /// Egress rules; ignored (kept for lint) unless `isolates_egress`.
    pub egress: Vec<Rule>,
}

impl Policy {
    pub fn isolates(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A named or numbered container port of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    /// `status.podIPs` (or `status.podIP`); empty for a pod not yet scheduled.
    pub ips: Vec<IpAddr>,
    pub ports: Vec<ContainerPort>,
    /// Host-network pods share the node's address; NetworkPolicy does not apply to them.
    pub host_network: bool,
    pub node_name: Option<String>,
    /// The controlling owner from `metadata.ownerReferences` (kind, name), if any.
    pub owner: Option<(String, String)>,
}

impl Pod {
    /// Resolves a named port the way the spec says: name AND protocol must match.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && p.protocol == protocol)
            .map(|p| p.port)
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The workload (kind, name) the pod belongs to: its controlling owner, with a ReplicaSet
    /// named `<deployment>-<pod-template-hash>` reported as that Deployment.
    pub fn workload(&self) -> Option<(String, String)> {
        let (kind, name) = self.owner.clone()?;
        if kind == "ReplicaSet"
            && let Some(hash) = self.labels.get("pod-template-hash")
            && let Some(deployment) = name.strip_suffix(&format!("-{hash}"))
        {
            return Some(("Deployment".to_owned(), deployment.to_owned()));
        }
        Some((kind, name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// Labels, including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// No Namespace object was given; it was implied by a pod or policy in it.
    pub implied: bool,
}

impl Namespace {
    pub fn new(name: &str, mut labels: Labels, implied: bool) -> Self {
        labels.insert(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned());
        Self {
            name: name.to_owned(),
            labels,
            implied,
        }
    }
}
