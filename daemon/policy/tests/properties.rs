//! Property tests on random clusters, policies and flows: invariants of the semantics that must
//! hold whatever the input (monotonicity, attribution that re-checks, non-selected pods open).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::net::{IpAddr, Ipv4Addr};

use flowgate_policy::Cluster;
use flowgate_policy::evaluate::{Flow, Reason, Remote, Verdict, evaluate, rule_match};
use flowgate_policy::model::{
    ContainerPort, Direction, IpBlock, Labels, Namespace, NamespaceScope, Peer, Pod, Policy,
    PortMatch, PortSpec, Protocol, Requirement, Rule, Selector,
};
use proptest::prelude::*;

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
const APPS: [&str; 3] = ["web", "db", "cache"];
const PORTS: [u16; 4] = [53, 80, 81, 443];

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        prop::sample::select(&APPS[..]).prop_map(|a| Selector {
            match_labels: vec![("app".into(), a.into())],
            match_expressions: vec![]
        }),
        prop::sample::select(&APPS[..]).prop_map(|a| Selector {
            match_labels: vec![],
            match_expressions: vec![Requirement::NotIn("app".into(), vec![a.into()])]
        }),
        Just(Selector {
            match_labels: vec![],
            match_expressions: vec![Requirement::Exists("tier".into())]
        }),
    ]
}

fn ns_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        prop::sample::select(&["a", "b"][..]).prop_map(|t| Selector {
            match_labels: vec![("team".into(), t.into())],
            match_expressions: vec![]
        }),
    ]
}

fn peer(own: &'static str) -> impl Strategy<Value = Peer> {
    prop_oneof![
        selector().prop_map(move |pods| Peer::Pods {
            namespaces: NamespaceScope::Own(own.into()),
            pods
        }),
        (ns_selector(), selector()).prop_map(|(ns, pods)| Peer::Pods {
            namespaces: NamespaceScope::Selected(ns),
            pods
        }),
        prop_oneof![
            Just(("10.0.0.0/8", vec![])),
            Just(("10.0.0.0/8", vec!["10.0.1.0/24"])),
            Just(("0.0.0.0/0", vec!["10.0.0.0/8"])),
            Just(("203.0.113.0/24", vec![])),
        ]
        .prop_map(|(cidr, except)| Peer::IpBlock(IpBlock {
            cidr: cidr.parse().unwrap(),
            except: except.iter().map(|e| e.parse().unwrap()).collect(),
            host_bits_set: false,
        })),
    ]
}

fn port_spec() -> impl Strategy<Value = PortSpec> {
    let protocol = prop::sample::select(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp][..]);
    let port = prop_oneof![
        Just(PortMatch::Any),
        prop::sample::select(&PORTS[..]).prop_map(|p| PortMatch::Range(p, p)),
        Just(PortMatch::Range(80, 81)),
        prop::sample::select(&["http", "dns", "metrics"][..])
            .prop_map(|n| PortMatch::Named(n.into())),
    ];
    (protocol, port).prop_map(|(protocol, port)| PortSpec { protocol, port })
}

fn rule(own: &'static str) -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(peer(own), 1..3)),
        prop::collection::vec(port_spec(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy(index: usize) -> impl Strategy<Value = Policy> {
    prop::sample::select(&NAMESPACES[..]).prop_flat_map(move |ns| {
        (
            selector(),
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(rule(ns), 0..3),
            prop::collection::vec(rule(ns), 0..3),
        )
            .prop_map(
                move |(pod_selector, isolates_ingress, isolates_egress, ingress, egress)| Policy {
                    namespace: ns.into(),
                    name: format!("p{index}"),
                    pod_selector,
                    isolates_ingress,
                    isolates_egress,
                    ingress,
                    egress,
                },
            )
    })
}

fn pods() -> impl Strategy<Value = Vec<Pod>> {
    prop::collection::vec(
        (
            prop::sample::select(&NAMESPACES[..]),
            prop::sample::select(&APPS[..]),
            any::<bool>(),
            any::<bool>(),
        ),
        2..7,
    )
    .prop_map(|specs| {
        specs
            .into_iter()
            .enumerate()
            .map(|(i, (ns, app, tier, alt_ports))| {
                let mut l = labels(&[("app", app)]);
                if tier {
                    l.insert("tier".into(), "backend".into());
                }
                let http = if alt_ports { 81 } else { 80 };
                let octet = u8::try_from(i).unwrap();
                Pod {
                    namespace: ns.into(),
                    name: format!("pod{i}"),
                    labels: l,
                    ips: vec![IpAddr::V4(Ipv4Addr::new(
                        10,
                        0,
                        if i % 2 == 0 { 1 } else { 2 },
                        octet + 1,
                    ))],
                    ports: vec![
                        ContainerPort {
                            name: Some("http".into()),
                            port: http,
                            protocol: Protocol::Tcp,
                        },
                        ContainerPort {
                            name: Some("dns".into()),
                            port: 53,
                            protocol: Protocol::Udp,
                        },
                    ],
                    host_network: false,
                    node_name: None,
                }
            })
            .collect()
    })
}

fn namespaces() -> Vec<Namespace> {
    vec![
        Namespace::new("n0", labels(&[("team", "a")]), false),
        Namespace::new("n1", labels(&[("team", "b")]), false),
        Namespace::new("n2", Labels::new(), false),
    ]
}

fn policies() -> impl Strategy<Value = Vec<Policy>> {
    (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

/// Endpoint choice: a pod index, or one of two external IPs.
fn flows() -> impl Strategy<Value = Vec<(usize, usize, Protocol, u16)>> {
    let protocol =
        prop::sample::select(&[Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp][..]);
    prop::collection::vec(
        (
            0usize..8,
            0usize..8,
            protocol,
            prop::sample::select(&PORTS[..]),
        ),
        1..12,
    )
}

fn make_flow(cluster: &Cluster, src: usize, dst: usize, protocol: Protocol, port: u16) -> Flow {
    let ids: Vec<_> = cluster.pods().map(|(id, p)| (id, p.ips[0])).collect();
    let externals = [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1)),
    ];
    let end = |i: usize| {
        ids.get(i)
            .map_or((externals[i % 2], None), |(id, ip)| (*ip, Some(*id)))
    };
    let (src_ip, src_pod) = end(src);
    let (dst_ip, dst_pod) = end(dst);
    Flow {
        src_ip,
        src_pod,
        dst_ip,
        dst_pod,
        protocol,
        port: protocol.has_ports().then_some(port),
    }
}

fn build(pods: Vec<Pod>, policies: Vec<Policy>) -> Cluster {
    Cluster::build(namespaces(), pods, policies).0
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The verdict is egress AND ingress; each reason agrees with its attribution, and every
    /// allowed_by entry names a rule that really matches the flow.
    #[test]
    fn attribution_is_consistent(pods in pods(), policies in policies(), flows in flows()) {
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            let decision = evaluate(&cluster, &flow);
            let both = decision.egress.verdict == Verdict::Allow && decision.ingress.verdict == Verdict::Allow;
            prop_assert_eq!(decision.verdict == Verdict::Allow, both);
            for (side, direction, subject, remote) in [
                (&decision.egress, Direction::Egress, flow.src_pod, Remote { pod: flow.dst_pod, ip: flow.dst_ip }),
                (&decision.ingress, Direction::Ingress, flow.dst_pod, Remote { pod: flow.src_pod, ip: flow.src_ip }),
            ] {
                prop_assert_eq!(side.verdict == Verdict::Deny, side.reason == Reason::DefaultDeny);
                prop_assert_eq!(!side.allowed_by.is_empty(), side.reason == Reason::RuleAllow);
                prop_assert_eq!(!side.isolated_by.is_empty(), side.reason == Reason::DefaultDeny);
                prop_assert_eq!(subject.is_none(), side.reason == Reason::External);
                let dst_pod = flow.dst_pod.map(|id| cluster.pod(id));
                for r in &side.allowed_by {
                    let (_, policy) = cluster.policies().find(|(_, p)| p.namespace == r.namespace && p.name == r.name).unwrap();
                    let matched = rule_match(&cluster, &policy.namespace, &policy.rules(direction)[r.rule], remote, dst_pod, flow.protocol, flow.port);
                    prop_assert_eq!(matched, Some((r.peer, r.port)));
                    let pod = cluster.pod(subject.unwrap());
                    prop_assert!(policy.isolates(direction) && policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels));
                }
            }
        }
    }

    /// Adding an allow rule to any policy never turns an allow into a deny.
    #[test]
    fn adding_a_rule_never_denies_more(pods in pods(), policies in policies(), flows in flows(), extra in rule("n0"), which in any::<prop::sample::Index>(), ingress in any::<bool>()) {
        prop_assume!(!policies.is_empty());
        let before = build(pods.clone(), policies.clone());
        let mut changed = policies;
        let i = which.index(changed.len());
        let mut extra = extra;
        // A podSelector-only peer refers to the policy's own namespace.
        for peer in extra.peers.iter_mut().flatten() {
            if let Peer::Pods { namespaces: NamespaceScope::Own(ns), .. } = peer {
                ns.clone_from(&changed[i].namespace);
            }
        }
        if ingress { changed[i].ingress.push(extra) } else { changed[i].egress.push(extra) }
        let after = build(pods, changed);
        for (s, d, proto, port) in flows {
            let b = evaluate(&before, &make_flow(&before, s, d, proto, port)).verdict;
            let a = evaluate(&after, &make_flow(&after, s, d, proto, port)).verdict;
            prop_assert!(!(b == Verdict::Allow && a == Verdict::Deny), "flow {s}->{d} {proto}/{port} went from allow to deny");
        }
    }

    /// A pod that no policy selects allows everything in both directions.
    #[test]
    fn unselected_pods_are_open(pods in pods(), policies in policies(), flows in flows()) {
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            let decision = evaluate(&cluster, &flow);
            if let Some(src) = flow.src_pod
                && cluster.policies_selecting(src).next().is_none()
            {
                prop_assert_eq!(decision.egress.reason, Reason::NotIsolated);
            }
            if let Some(dst) = flow.dst_pod
                && cluster.policies_selecting(dst).next().is_none()
            {
                prop_assert_eq!(decision.ingress.reason, Reason::NotIsolated);
            }
        }
    }

    /// An allow-all policy for both directions in every namespace makes every flow allowed,
    /// whatever else is there (policies are additive; nothing can subtract).
    #[test]
    fn allow_all_everywhere_allows_everything(pods in pods(), policies in policies(), flows in flows()) {
        let mut policies = policies;
        for ns in NAMESPACES {
            policies.push(Policy {
                namespace: ns.into(),
                name: "allow-all".into(),
                pod_selector: Selector::default(),
                isolates_ingress: true,
                isolates_egress: true,
                ingress: vec![Rule { peers: None, ports: vec![] }],
                egress: vec![Rule { peers: None, ports: vec![] }],
            });
        }
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            prop_assert_eq!(evaluate(&cluster, &flow).verdict, Verdict::Allow);
        }
    }
}
