//! `flowgate lint`: the NetworkPolicy pitfalls seen in the field, as findings with a severity, the
//! object and the field path. Pure: works on the validated cluster.

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::cluster::Cluster;
use crate::error::{Location, ObjectRef};
use crate::explain::describe_peer;
use crate::model::{
    Direction, NamespaceScope, Peer, Policy, PortMatch, PortSpec, Protocol, Rule, Selector,
};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Error => "error",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable identifier of the check, e.g. `and-or-trap`.
    pub code: &'static str,
    pub object: ObjectRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}[{}] {}", self.severity, self.code, self.object)?;
        if let Some(field) = &self.field {
            write!(f, " {field}")?;
        }
        if let Some(location) = &self.location {
            write!(f, " ({location})")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every check, over every policy, in policy order.
pub fn lint(cluster: &Cluster) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (_, policy) in cluster.policies() {
        let mut ctx = Ctx {
            cluster,
            policy,
            findings: &mut findings,
        };
        ctx.selects_no_pods();
        ctx.ignored_rules();
        for direction in [Direction::Ingress, Direction::Egress] {
            for (i, rule) in policy.rules(direction).iter().enumerate() {
                ctx.and_or_trap(direction, i, rule);
                ctx.peers(direction, i, rule);
            }
            ctx.shadowed(direction);
        }
        ctx.egress_without_dns();
    }
    findings
}

/// Fills in each finding's file and line from where its object was loaded.
pub fn locate(findings: &mut [Finding], origins: &HashMap<(String, String, String), Location>) {
    for f in findings {
        let key = (
            f.object.kind.clone(),
            f.object.namespace.clone().unwrap_or_default(),
            f.object.name.clone(),
        );
        f.location = origins.get(&key).cloned();
    }
}

struct Ctx<'a> {
    cluster: &'a Cluster,
    policy: &'a Policy,
    findings: &'a mut Vec<Finding>,
}

fn list_key(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    }
}

impl Ctx<'_> {
    fn push(
        &mut self,
        severity: Severity,
        code: &'static str,
        field: Option<String>,
        message: String,
    ) {
        let object = ObjectRef {
            kind: "NetworkPolicy".into(),
            namespace: Some(self.policy.namespace.clone()),
            name: self.policy.name.clone(),
        };
        self.findings.push(Finding {
            severity,
            code,
            object,
            field,
            location: None,
            message,
        });
    }

    fn selects_no_pods(&mut self) {
        let p = self.policy;
        let any = self
            .cluster
            .pods_in(&p.namespace)
            .any(|(_, pod)| p.pod_selector.matches(&pod.labels));
        if !any {
            self.push(
                Severity::Warning,
                "policy-selects-no-pods",
                Some("spec.podSelector".into()),
                format!(
                    "podSelector {} selects no pod in namespace {} in the manifests: this policy has no effect there (misspelled label?)",
                    p.pod_selector, p.namespace
                ),
            );
        }
    }

    fn ignored_rules(&mut self) {
        let p = self.policy;
        for (direction, types) in [
            (Direction::Ingress, "Ingress"),
            (Direction::Egress, "Egress"),
        ] {
            if !p.isolates(direction) && !p.rules(direction).is_empty() {
                self.push(
                    Severity::Warning,
                    "rules-ignored",
                    Some(format!("spec.{direction}")),
                    format!("spec.policyTypes does not include {types}, so these {direction} rules are ignored"),
                );
            }
        }
    }

    fn and_or_trap(&mut self, direction: Direction, index: usize, rule: &Rule) {
        let Some(peers) = &rule.peers else { return };
        let ns_only = peers.iter().position(|p| {
            matches!(p, Peer::Pods { namespaces: NamespaceScope::Selected(_), pods } if pods.is_empty())
        });
        let pod_only = peers.iter().position(|p| {
            matches!(
                p,
                Peer::Pods {
                    namespaces: NamespaceScope::Own(_),
                    ..
                }
            )
        });
        if let (Some(n), Some(m)) = (ns_only, pod_only) {
            let key = list_key(direction);
            self.push(
                Severity::Warning,
                "and-or-trap",
                Some(format!("spec.{direction}[{index}].{key}")),
                format!(
                    "{key}[{n}] ({}) and {key}[{m}] ({}) are separate peers, so they are OR'd: every pod in those namespaces is allowed, \
                     plus the matching pods of namespace {}. To allow only the matching pods in those namespaces, put namespaceSelector \
                     and podSelector in ONE peer (drop the '-' before podSelector).",
                    describe_peer(&peers[n]),
                    describe_peer(&peers[m]),
                    self.policy.namespace
                ),
            );
        }
    }

    fn peers(&mut self, direction: Direction, index: usize, rule: &Rule) {
        let Some(peers) = &rule.peers else { return };
        let key = list_key(direction);
        for (j, peer) in peers.iter().enumerate() {
            let field = format!("spec.{direction}[{index}].{key}[{j}]");
            match peer {
                Peer::Pods { namespaces, pods } => {
                    self.selectors_match_something(namespaces, pods, field)
                }
                Peer::IpBlock(block) => {
                    if block.host_bits_set {
                        self.push(
                            Severity::Warning,
                            "cidr-host-bits",
                            Some(format!("{field}.ipBlock.cidr")),
                            format!(
                                "the CIDR has host bits set; it means the network {}",
                                block.cidr
                            ),
                        );
                    }
                    let inside: Vec<String> = self
                        .cluster
                        .pods()
                        .filter(|(_, pod)| {
                            !pod.host_network && pod.ips.iter().any(|ip| block.contains(*ip))
                        })
                        .map(|(_, pod)| pod.key())
                        .collect();
                    if !inside.is_empty() {
                        let shown: Vec<&str> = inside.iter().take(5).map(String::as_str).collect();
                        self.push(
                            Severity::Warning,
                            "ipblock-contains-pod-ips",
                            Some(format!("{field}.ipBlock")),
                            format!(
                                "{} also matches the IPs of {} pod(s) ({}{}): ipBlock is meant for endpoints outside the cluster, and CNIs \
                                 differ on whether it applies to pod traffic; select pods with podSelector/namespaceSelector, or add them to `except`",
                                describe_peer(peer),
                                inside.len(),
                                shown.join(", "),
                                if inside.len() > shown.len() { ", ..." } else { "" }
                            ),
                        );
                    }
                }
            }
        }
    }

    fn selectors_match_something(
        &mut self,
        namespaces: &NamespaceScope,
        pods: &Selector,
        field: String,
    ) {
        let cluster = self.cluster;
        let in_scope: Vec<&str> = match namespaces {
            NamespaceScope::Own(ns) => vec![ns.as_str()],
            NamespaceScope::Selected(sel) => {
                let matched: Vec<&str> = cluster
                    .namespaces()
                    .filter(|n| sel.matches(&n.labels))
                    .map(|n| n.name.as_str())
                    .collect();
                if matched.is_empty() {
                    self.push(
                        Severity::Warning,
                        "selector-matches-nothing",
                        Some(format!("{field}.namespaceSelector")),
                        format!("namespaceSelector {sel} matches no namespace in the manifests (misspelled label?)"),
                    );
                    return;
                }
                matched
            }
        };
        if pods.is_empty() {
            return;
        }
        let any = in_scope
            .iter()
            .any(|ns| cluster.pods_in(ns).any(|(_, p)| pods.matches(&p.labels)));
        if !any {
            self.push(
                Severity::Warning,
                "selector-matches-nothing",
                Some(format!("{field}.podSelector")),
                format!("podSelector {pods} matches no pod in namespace(s) {} in the manifests (misspelled label?)", in_scope.join(", ")),
            );
        }
    }

    fn shadowed(&mut self, direction: Direction) {
        let rules = self.policy.rules(direction);
        for (j, later) in rules.iter().enumerate() {
            let by = rules.iter().enumerate().find(|&(i, broader)| {
                i != j && rule_covers(broader, later) && (!rule_covers(later, broader) || i < j)
            });
            if let Some((i, _)) = by {
                self.push(
                    Severity::Warning,
                    "shadowed-rule",
                    Some(format!("spec.{direction}[{j}]")),
                    format!("{direction}[{i}] already allows everything {direction}[{j}] allows; {direction}[{j}] never decides a flow"),
                );
            }
        }
    }

    fn egress_without_dns(&mut self) {
        let p = self.policy;
        if !p.isolates_egress {
            return;
        }
        // Everything the pods this policy selects may send, across all policies isolating them.
        let selected: Vec<_> = self
            .cluster
            .pods_in(&p.namespace)
            .filter(|(_, pod)| !pod.host_network && p.pod_selector.matches(&pod.labels))
            .collect();
        let mut missing: Vec<Protocol> = Vec::new();
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let allows = |policy: &Policy| {
                policy.isolates_egress
                    && policy.egress.iter().any(|r| {
                        r.ports.is_empty() || r.ports.iter().any(|s| allows_53(s, protocol))
                    })
            };
            let ok = if selected.is_empty() {
                allows(p)
            } else {
                selected
                    .iter()
                    .all(|(id, _)| self.cluster.policies_selecting(*id).any(|(_, q)| allows(q)))
            };
            if !ok {
                missing.push(protocol);
            }
        }
        if !missing.is_empty() {
            let what: Vec<&str> = missing.iter().map(|p| p.as_str()).collect();
            self.push(
                Severity::Warning,
                "egress-without-dns",
                Some("spec.policyTypes".into()),
                format!(
                    "isolates egress, but no egress rule allows DNS over {} port 53: name resolution in the selected pods will fail \
                     (allow UDP and TCP 53 to kube-system pods labelled k8s-app=kube-dns)",
                    what.join(" and ")
                ),
            );
        }
    }
}

fn allows_53(spec: &PortSpec, protocol: Protocol) -> bool {
    spec.protocol == protocol
        && match &spec.port {
            PortMatch::Any => true,
            PortMatch::Range(a, b) => (*a..=*b).contains(&53),
            // A named port may well be DNS; give it the benefit of the doubt.
            PortMatch::Named(_) => true,
        }
}

/// Whether `broader` allows at least everything `narrower` allows (conservative: only proves
/// coverage it can see syntactically).
fn rule_covers(broader: &Rule, narrower: &Rule) -> bool {
    let peers_covered = match (&broader.peers, &narrower.peers) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(b), Some(n)) => n.iter().all(|np| b.iter().any(|bp| peer_covers(bp, np))),
    };
    let ports_covered = match (broader.ports.is_empty(), narrower.ports.is_empty()) {
        (true, _) => true,
        (false, true) => false,
        (false, false) => narrower
            .ports
            .iter()
            .all(|np| broader.ports.iter().any(|bp| port_covers(bp, np))),
    };
    peers_covered && ports_covered
}

fn peer_covers(b: &Peer, n: &Peer) -> bool {
    if b == n {
        return true;
    }
    match (b, n) {
        (
            Peer::Pods {
                namespaces: bn,
                pods: bp,
            },
            Peer::Pods {
                namespaces: nn,
                pods: np,
            },
        ) => {
            let ns_ok = match (bn, nn) {
                (NamespaceScope::Selected(s), _) if s.is_empty() => true,
                (a, c) => a == c,
            };
            ns_ok && (bp.is_empty() || bp == np)
        }
        (Peer::IpBlock(bb), Peer::IpBlock(nb)) => {
            bb.except.is_empty() && bb.cidr.contains(&nb.cidr)
        }
        _ => false,
    }
}

fn port_covers(b: &PortSpec, n: &PortSpec) -> bool {
    b.protocol == n.protocol
        && match (&b.port, &n.port) {
            (PortMatch::Any, _) => true,
            (PortMatch::Range(a, z), PortMatch::Range(c, d)) => a <= c && d <= z,
            (x, y) => x == y,
        }
}
