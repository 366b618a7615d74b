//! `flowgate explain`: a human account of one flow: which policies select each end, whether each
//! end is isolated, which rule matched (or why none did), and the final verdict.

use std::fmt::Write as _;

use crate::cluster::{Cluster, PodId};
use crate::evaluate::{
    Decision, Flow, Reason, Remote, SideDecision, Verdict, evaluate, peer_matches, port_matches,
};
use crate::model::{Direction, NamespaceScope, Peer, Policy, Rule};

/// Explains a flow in plain text. The verdict is the one `evaluate` gives; this adds the trail.
pub fn explain(cluster: &Cluster, flow: &Flow) -> String {
    let decision = evaluate(cluster, flow);
    let mut out = String::new();
    let port = flow.port.map(|p| format!("/{p}")).unwrap_or_default();
    let _ = writeln!(
        out,
        "Flow: {} -> {} {}{}",
        endpoint(cluster, flow.src_pod, flow.src_ip),
        endpoint(cluster, flow.dst_pod, flow.dst_ip),
        flow.protocol,
        port
    );
    section(&mut out, cluster, flow, Direction::Egress, &decision.egress);
    section(
        &mut out,
        cluster,
        flow,
        Direction::Ingress,
        &decision.ingress,
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "Verdict: {}", verdict_line(&decision));
    out
}

fn verdict_line(d: &Decision) -> String {
    match (d.egress.verdict, d.ingress.verdict) {
        (Verdict::Allow, Verdict::Allow) => "ALLOW (egress and ingress both allow)".into(),
        (Verdict::Deny, Verdict::Deny) => "DENY (egress and ingress both deny)".into(),
        (Verdict::Deny, _) => "DENY (the source's egress denies)".into(),
        (_, Verdict::Deny) => "DENY (the destination's ingress denies)".into(),
    }
}

fn endpoint(cluster: &Cluster, pod: Option<PodId>, ip: std::net::IpAddr) -> String {
    match pod {
        Some(id) => format!("{} ({ip})", cluster.pod(id).key()),
        None => format!("{ip} (outside the cluster)"),
    }
}

fn section(
    out: &mut String,
    cluster: &Cluster,
    flow: &Flow,
    direction: Direction,
    side: &SideDecision,
) {
    let (subject, remote, title) = match direction {
        Direction::Egress => (
            flow.src_pod,
            Remote {
                pod: flow.dst_pod,
                ip: flow.dst_ip,
            },
            "Egress from the source",
        ),
        Direction::Ingress => (
            flow.dst_pod,
            Remote {
                pod: flow.src_pod,
                ip: flow.src_ip,
            },
            "Ingress to the destination",
        ),
    };
    let _ = writeln!(out);
    let _ = writeln!(out, "{title}:");
    let Some(subject) = subject else {
        let _ = writeln!(
            out,
            "  the endpoint is outside the cluster: no NetworkPolicy applies on this side"
        );
        let _ = writeln!(
            out,
            "  => {} ({})",
            side.verdict.as_str().to_uppercase(),
            side.reason.as_str()
        );
        return;
    };
    let pod = cluster.pod(subject);
    if side.reason == Reason::HostNetwork {
        let _ = writeln!(
            out,
            "  {} is a host-network pod: NetworkPolicy does not apply to it",
            pod.key()
        );
        let _ = writeln!(out, "  => ALLOW (host_network)");
        return;
    }
    let selecting: Vec<&Policy> = cluster
        .policies_selecting(subject)
        .map(|(_, p)| p)
        .collect();
    if selecting.is_empty() {
        let _ = writeln!(
            out,
            "  no policy in namespace {} selects {}",
            pod.namespace,
            pod.key()
        );
    } else {
        let list: Vec<String> = selecting
            .iter()
            .map(|p| format!("{}/{} ({})", p.namespace, p.name, types(p)))
            .collect();
        let _ = writeln!(
            out,
            "  policies selecting {}: {}",
            pod.key(),
            list.join(", ")
        );
    }
    let isolating: Vec<&&Policy> = selecting.iter().filter(|p| p.isolates(direction)).collect();
    if isolating.is_empty() {
        let _ = writeln!(
            out,
            "  {} is not isolated for {direction}: all {direction} traffic is allowed",
            pod.key()
        );
    }
    // Named ports resolve on the destination pod, whichever side is deciding.
    let dst_pod = flow.dst_pod.map(|id| cluster.pod(id));
    for policy in isolating {
        let key = match direction {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        };
        let rules = policy.rules(direction);
        if rules.is_empty() {
            let _ = writeln!(
                out,
                "  {}/{}: isolates for {direction} and has no {key} rules: allows nothing",
                policy.namespace, policy.name
            );
        }
        for (i, rule) in rules.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {}/{} {key}[{i}]: {}",
                policy.namespace,
                policy.name,
                rule_trail(cluster, policy, rule, direction, remote, dst_pod, flow)
            );
        }
    }
    let detail = match side.reason {
        Reason::DefaultDeny => {
            let names: Vec<String> = side
                .isolated_by
                .iter()
                .map(|p| format!("{}/{}", p.namespace, p.name))
                .collect();
            format!(
                "default_deny: isolated by {} and no rule allows this flow",
                names.join(", ")
            )
        }
        Reason::RuleAllow => {
            let names: Vec<String> = side
                .allowed_by
                .iter()
                .map(|r| {
                    format!(
                        "{}/{} {key}[{}]",
                        r.namespace,
                        r.name,
                        r.rule,
                        key = direction.as_str()
                    )
                })
                .collect();
            format!("rule_allow: {}", names.join(", "))
        }
        other => other.as_str().to_owned(),
    };
    let _ = writeln!(
        out,
        "  => {} ({detail})",
        side.verdict.as_str().to_uppercase()
    );
}

fn types(p: &Policy) -> String {
    match (p.isolates_ingress, p.isolates_egress) {
        (true, true) => "Ingress, Egress".into(),
        (true, false) => "Ingress".into(),
        (false, true) => "Egress".into(),
        (false, false) => "no policyTypes".into(),
    }
}

fn rule_trail(
    cluster: &Cluster,
    policy: &Policy,
    rule: &Rule,
    direction: Direction,
    remote: Remote,
    dst_pod: Option<&crate::model::Pod>,
    flow: &Flow,
) -> String {
    let list = if direction == Direction::Ingress {
        "from"
    } else {
        "to"
    };
    let peer = match &rule.peers {
        None => Ok(format!("{list} any peer")),
        Some(peers) => match peers
            .iter()
            .position(|p| peer_matches(cluster, &policy.namespace, p, remote))
        {
            Some(j) => Ok(format!(
                "{list}[{j}] ({}) matches",
                describe_peer(&peers[j])
            )),
            None => {
                let all: Vec<String> = peers.iter().map(describe_peer).collect();
                Err(format!(
                    "no {list} peer matches (peers: {})",
                    all.join("; ")
                ))
            }
        },
    };
    let port = if rule.ports.is_empty() {
        Ok("any port".to_owned())
    } else {
        match rule
            .ports
            .iter()
            .position(|s| port_matches(s, flow.protocol, flow.port, dst_pod))
        {
            Some(k) => Ok(format!("ports[{k}] ({}) matches", rule.ports[k])),
            None => {
                let all: Vec<String> = rule.ports.iter().map(ToString::to_string).collect();
                Err(format!("no port matches (ports: {})", all.join(", ")))
            }
        }
    };
    match (peer, port) {
        (Ok(a), Ok(b)) => format!("{a}, {b} -> ALLOW"),
        (Err(a), Ok(b)) => format!("{a}; {b} -> no match"),
        (Ok(a), Err(b)) => format!("{a}; {b} -> no match"),
        (Err(a), Err(b)) => format!("{a}; {b} -> no match"),
    }
}

/// A peer in kubectl-like words.
pub fn describe_peer(peer: &Peer) -> String {
    match peer {
        Peer::IpBlock(b) => {
            if b.except.is_empty() {
                format!("ipBlock {}", b.cidr)
            } else {
                let ex: Vec<String> = b.except.iter().map(ToString::to_string).collect();
                format!("ipBlock {} except {}", b.cidr, ex.join(","))
            }
        }
        Peer::Pods {
            namespaces: NamespaceScope::Own(ns),
            pods,
        } => format!("pods {pods} in namespace {ns}"),
        Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods,
        } if pods.is_empty() => {
            format!("all pods in namespaces {ns}")
        }
        Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods,
        } => format!("pods {pods} in namespaces {ns}"),
    }
}
