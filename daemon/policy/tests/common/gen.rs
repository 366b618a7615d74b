//! Random clusters for property tests: namespaces n0-n2, pods with app/tier labels and named
//! ports, policies with every kind of peer and port, and flows between pods and external IPs.

use std::net::{IpAddr, Ipv4Addr};

use flowgate_policy::Cluster;
use flowgate_policy::evaluate::Flow;
use flowgate_policy::model::{
    ContainerPort, IpBlock, Labels, Namespace, NamespaceScope, Peer, Pod, Policy, PortMatch,
    PortSpec, Protocol, Requirement, Rule, Selector,
};
use proptest::prelude::*;

pub const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];
pub const APPS: [&str; 3] = ["web", "db", "cache"];
pub const PORTS: [u16; 4] = [53, 80, 81, 443];

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

pub fn selector() -> impl Strategy<Value = Selector> {
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

pub fn ns_selector() -> impl Strategy<Value = Selector> {
    prop_oneof![
        Just(Selector::default()),
        prop::sample::select(&["a", "b"][..]).prop_map(|t| Selector {
            match_labels: vec![("team".into(), t.into())],
            match_expressions: vec![]
        }),
    ]
}

pub fn peer(own: &'static str) -> impl Strategy<Value = Peer> {
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

pub fn port_spec() -> impl Strategy<Value = PortSpec> {
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

pub fn rule(own: &'static str) -> impl Strategy<Value = Rule> {
    (
        prop::option::of(prop::collection::vec(peer(own), 1..3)),
        prop::collection::vec(port_spec(), 0..3),
    )
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

pub fn policy(index: usize) -> impl Strategy<Value = Policy> {
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

pub fn pods() -> impl Strategy<Value = Vec<Pod>> {
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
                    owner: None,
                }
            })
            .collect()
    })
}

pub fn namespaces() -> Vec<Namespace> {
    vec![
        Namespace::new("n0", labels(&[("team", "a")]), false),
        Namespace::new("n1", labels(&[("team", "b")]), false),
        Namespace::new("n2", Labels::new(), false),
    ]
}

pub fn policies() -> impl Strategy<Value = Vec<Policy>> {
    (0usize..5).prop_flat_map(|n| (0..n).map(policy).collect::<Vec<_>>())
}

/// Endpoint choice: a pod index, or one of two external IPs.
pub fn flows() -> impl Strategy<Value = Vec<(usize, usize, Protocol, u16)>> {
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

pub fn make_flow(cluster: &Cluster, src: usize, dst: usize, protocol: Protocol, port: u16) -> Flow {
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

pub fn build(pods: Vec<Pod>, policies: Vec<Policy>) -> Cluster {
    Cluster::build(namespaces(), pods, policies).0
}
