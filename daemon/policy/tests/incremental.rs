//! Incremental compile against the full one. A random cluster, then a random sequence of
//! changes made to the index one object at a time (relabels, IP moves, port changes, pods
//! coming and going, namespace relabels, policies replaced and removed). After each change:
//! - the snapshot compiled incrementally from the previous one equals a full compile, from the
//!   same previous snapshot, of an index built from scratch of the same objects (ids included);
//! - applied by `diff` (which takes only the changed IP-cache keys), the maps decide every flow
//!   of the local endpoints as `evaluate` does, and the plan deletes only what it wrote;
//! - while the plan is applied op by op, every flow is decided as by the old snapshot or as by
//!   the new one, both sides together.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use common::r#gen::*;
use common::oracle::{decisions, external, ifindex, resolve};
use flowgate_abi::PolicyKey;
use flowgate_policy::Cluster;
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::evaluate::{Flow, evaluate};
use flowgate_policy::maps::{MapState, Mode, diff, policy_key};
use flowgate_policy::model::{Direction, Namespace, Pod, Policy, Protocol};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Change {
    Relabel(usize, &'static str, bool),
    MoveIp(usize, u8),
    Ports(usize, u16),
    RemovePod(usize),
    AddPod(usize, &'static str, &'static str),
    NamespaceTeam(usize, Option<&'static str>),
    Policy(Policy),
    /// A policy's rules replaced, its selector and types kept (its tables keep their place).
    Rules(
        usize,
        Vec<flowgate_policy::model::Rule>,
        Vec<flowgate_policy::model::Rule>,
    ),
    RemovePolicy(usize),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        (0usize..8, prop::sample::select(&APPS[..]), any::<bool>())
            .prop_map(|(i, a, t)| Change::Relabel(i, a, t)),
        (0usize..8, 1u8..12).prop_map(|(i, o)| Change::MoveIp(i, o)),
        (0usize..8, prop::sample::select(&[80u16, 81, 443][..]))
            .prop_map(|(i, p)| Change::Ports(i, p)),
        (0usize..8).prop_map(Change::RemovePod),
        (
            0usize..4,
            prop::sample::select(&NAMESPACES[..]),
            prop::sample::select(&APPS[..])
        )
            .prop_map(|(i, ns, a)| Change::AddPod(i, ns, a)),
        (
            0usize..3,
            prop::option::of(prop::sample::select(&["a", "b"][..]))
        )
            .prop_map(|(n, t)| Change::NamespaceTeam(n, t)),
        (0usize..6).prop_flat_map(policy).prop_map(Change::Policy),
        (
            0usize..6,
            prop::collection::vec(rule("n0"), 0..3),
            prop::collection::vec(rule("n0"), 0..3)
        )
            .prop_map(|(i, ingress, egress)| Change::Rules(i, ingress, egress)),
        (0usize..6).prop_map(Change::RemovePolicy),
    ]
}

/// The objects the index should hold, kept beside it to build a fresh index from.
#[derive(Debug, Clone)]
struct Objects {
    namespaces: BTreeMap<String, Namespace>,
    pods: Vec<Pod>,
    policies: Vec<Policy>,
}

impl Objects {
    fn build(&self) -> Cluster {
        Cluster::build(
            self.namespaces.values().cloned().collect(),
            self.pods.clone(),
            self.policies.clone(),
        )
        .0
    }

    /// Makes the change here and in `cluster` (one object at a time, as a watcher would).
    fn apply(&mut self, change: &Change, cluster: &mut Cluster) {
        let n = self.pods.len();
        let at = |i: usize| (n > 0).then_some(i % n.max(1));
        match change {
            Change::Relabel(i, app, tier) => {
                if let Some(p) = at(*i).map(|k| &mut self.pods[k]) {
                    p.labels.insert("app".into(), (*app).into());
                    if *tier {
                        p.labels.insert("tier".into(), "backend".into());
                    } else {
                        p.labels.remove("tier");
                    }
                    cluster.upsert_pod(p.clone());
                }
            }
            Change::MoveIp(i, octet) => {
                if let Some(p) = at(*i).map(|k| &mut self.pods[k]) {
                    p.ips = vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, *octet))];
                    cluster.upsert_pod(p.clone());
                }
            }
            Change::Ports(i, port) => {
                if let Some(p) = at(*i).map(|k| &mut self.pods[k]) {
                    if let Some(http) = p.ports.first_mut() {
                        http.port = *port;
                    }
                    cluster.upsert_pod(p.clone());
                }
            }
            Change::RemovePod(i) => {
                if !self.pods.is_empty() {
                    let p = self.pods.remove(i % self.pods.len());
                    cluster.remove_pod(&p.namespace, &p.name);
                }
            }
            Change::AddPod(i, ns, app) => {
                let name = format!("pod{}", 20 + i);
                self.pods.retain(|p| p.name != name);
                let template = self.pods.first().cloned();
                if let Some(mut p) = template {
                    p.namespace = (*ns).into();
                    p.name = name;
                    p.labels = labels(&[("app", app)]);
                    p.ips = vec![IpAddr::V4(Ipv4Addr::new(
                        10,
                        0,
                        2,
                        20 + u8::try_from(*i).unwrap(),
                    ))];
                    // A pod moved to another namespace under the same name is a new object.
                    for old in cluster
                        .pods()
                        .map(|(_, q)| (q.namespace.clone(), q.name.clone()))
                        .collect::<Vec<_>>()
                    {
                        if old.1 == p.name {
                            cluster.remove_pod(&old.0, &old.1);
                        }
                    }
                    cluster.upsert_pod(p.clone());
                    self.pods.push(p);
                }
            }
            Change::NamespaceTeam(n, team) => {
                let name = NAMESPACES[*n];
                let l = team.map(|t| labels(&[("team", t)])).unwrap_or_default();
                let ns = Namespace::new(name, l, false);
                self.namespaces.insert(name.into(), ns.clone());
                cluster.upsert_namespace(ns);
            }
            Change::Policy(p) => {
                self.policies.retain(|q| q.name != p.name);
                for (ns, name) in cluster
                    .policies()
                    .map(|(_, q)| (q.namespace.clone(), q.name.clone()))
                    .collect::<Vec<_>>()
                {
                    if name == p.name && ns != p.namespace {
                        cluster.remove_policy(&ns, &name);
                    }
                }
                self.policies.push(p.clone());
                cluster.upsert_policy(p.clone());
            }
            Change::Rules(i, ingress, egress) => {
                let name = format!("p{i}");
                if let Some(p) = self.policies.iter_mut().find(|q| q.name == name) {
                    // Own-namespace peers name the policy's own namespace.
                    let own = |rules: &[flowgate_policy::model::Rule]| {
                        let mut rules = rules.to_vec();
                        for peer in rules.iter_mut().flat_map(|r| r.peers.iter_mut().flatten()) {
                            if let flowgate_policy::model::Peer::Pods {
                                namespaces: flowgate_policy::model::NamespaceScope::Own(ns),
                                ..
                            } = peer
                            {
                                ns.clone_from(&p.namespace);
                            }
                        }
                        rules
                    };
                    p.ingress = own(ingress);
                    p.egress = own(egress);
                    cluster.upsert_policy(p.clone());
                }
            }
            Change::RemovePolicy(i) => {
                let name = format!("p{i}");
                if let Some(at) = self.policies.iter().position(|q| q.name == name) {
                    let p = self.policies.remove(at);
                    cluster.remove_policy(&p.namespace, &p.name);
                }
            }
        }
    }
}

/// Pods with an even number are on this node; the others are remote.
fn local_endpoints(cluster: &Cluster) -> Vec<LocalEndpoint> {
    cluster
        .pods()
        .filter(|(_, p)| p.name.trim_start_matches("pod").parse::<u32>().unwrap() % 2 == 0)
        .map(|(_, p)| LocalEndpoint {
            pod: p.key(),
            ifindex: ifindex(p),
        })
        .collect()
}

const PROBES: [(Protocol, Option<u16>); 5] = [
    (Protocol::Tcp, Some(80)),
    (Protocol::Tcp, Some(81)),
    (Protocol::Udp, Some(53)),
    (Protocol::Tcp, Some(443)),
    (Protocol::Icmp, None),
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn incremental_compile_equals_full_compile_and_evaluate(
        pods in pods(),
        policies in policies(),
        changes in prop::collection::vec(change(), 1..8),
    ) {
        let mut objects = Objects {
            namespaces: namespaces().into_iter().map(|n| (n.name.clone(), n)).collect(),
            pods,
            policies,
        };
        let mut cluster = objects.build();
        let mut current = compile(&cluster, &local_endpoints(&cluster), None);
        let mut state = MapState::default();
        for op in diff(&Snapshot::default(), &current, Mode::Enforce) {
            state.apply(&op);
        }
        for change in &changes {
            objects.apply(change, &mut cluster);
            let locals = local_endpoints(&cluster);
            let next = compile(&cluster, &locals, Some(&current));
            let fresh = objects.build();
            let full = compile(&fresh, &locals, Some(&current));
            prop_assert!(next.same_maps(&full), "after {:?}:\nincremental {:#?}\nfull {:#?}", change, next, full);

            // Endpoints in both snapshots, remotes from both clusters and outside.
            let endpoints: Vec<(u32, IpAddr)> = locals
                .iter()
                .filter(|l| current.endpoints.contains_key(&l.ifindex))
                .filter_map(|l| {
                    let (ns, name) = l.pod.split_once('/')?;
                    let ip = cluster.pod(cluster.pod_by_name(ns, name)?).ips[0];
                    // The same address before and after (an endpoint that moved is a new one).
                    (state.identity(ip).is_some() && current.ipcache.contains_key(&ip.into())).then_some((l.ifindex, ip))
                })
                .collect();
            let mut remotes: Vec<IpAddr> = objects.pods.iter().map(|p| p.ips[0]).collect();
            remotes.extend(current.ipcache.keys().filter(|k| k.prefix_len() == 32).map(|k| k.addr()));
            remotes.extend((0..3).map(external));
            remotes.sort();
            remotes.dedup();
            let snaps = [&current, &next];
            let plan = diff(&current, &next, Mode::Enforce);
            let mut final_state = state.clone();
            for op in &plan {
                final_state.apply(op);
            }
            prop_assert_eq!(final_state.missing_deletes, 0, "the plan deletes only keys it wrote");
            let resident: BTreeSet<PolicyKey> = next
                .tables
                .iter()
                .chain(next.standby())
                .flat_map(|(t, entries)| entries.keys().map(|c| policy_key(*t, c)))
                .collect();
            let left: BTreeSet<PolicyKey> = final_state.policy.keys().copied().collect();
            prop_assert_eq!(left, resident, "after {:?}: the policy map holds the new tables' and standby tables' cells, nothing else", change);
            let before = decisions(&state, &snaps, &endpoints, &remotes, &PROBES);
            let after = decisions(&final_state, &snaps, &endpoints, &remotes, &PROBES);
            for (step, op) in plan.iter().enumerate() {
                state.apply(op);
                for (key, got) in &decisions(&state, &snaps, &endpoints, &remotes, &PROBES) {
                    prop_assert!(got == &before[key] || got == &after[key],
                        "{:?}, step {} ({:?}): {:?} is neither old {:?} nor new {:?}", change, step, op, got, before[key], after[key]);
                }
            }

            // The maps now decide every flow of a local endpoint as `evaluate` does.
            for l in &locals {
                let (ns, name) = l.pod.split_once('/').unwrap();
                let pod = cluster.pod(cluster.pod_by_name(ns, name).unwrap());
                if pod.ips.is_empty() || cluster.pod_by_ip(pod.ips[0]) != cluster.pod_by_name(ns, name) {
                    continue; // its address is another pod's: evaluate names that pod
                }
                for &r in &remotes {
                    for (proto, port) in PROBES {
                        let out = Flow { src_ip: pod.ips[0], src_pod: cluster.pod_by_ip(pod.ips[0]), dst_ip: r, dst_pod: cluster.pod_by_ip(r), protocol: proto, port };
                        let got = resolve(state.lookup(l.ifindex, Direction::Egress, r, proto, port), &[&next], l.ifindex, Direction::Egress);
                        prop_assert_eq!(&got, &evaluate(&cluster, &out).egress, "egress {:?} after {:?}", out, change);
                        let inbound = Flow { src_ip: r, src_pod: cluster.pod_by_ip(r), dst_ip: pod.ips[0], dst_pod: cluster.pod_by_ip(pod.ips[0]), protocol: proto, port };
                        let got = resolve(state.lookup(l.ifindex, Direction::Ingress, r, proto, port), &[&next], l.ifindex, Direction::Ingress);
                        prop_assert_eq!(&got, &evaluate(&cluster, &inbound).ingress, "ingress {:?} after {:?}", inbound, change);
                    }
                }
            }
            current = next;
        }
    }
}

/// Policy `n0/p0`: selects every pod of n0, allows ingress from `peers` on TCP `ports`.
fn ingress_policy(peers: Option<Vec<flowgate_policy::model::Peer>>, ports: &[u16]) -> Policy {
    Policy {
        namespace: "n0".into(),
        name: "p0".into(),
        pod_selector: flowgate_policy::model::Selector::default(),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: vec![flowgate_policy::model::Rule {
            peers,
            ports: ports
                .iter()
                .map(|p| flowgate_policy::model::PortSpec {
                    protocol: Protocol::Tcp,
                    port: flowgate_policy::model::PortMatch::Range(*p, *p),
                })
                .collect(),
        }],
        egress: vec![],
    }
}

/// A relabel, a policy edit and a namespace relabel each take the incremental path: only the
/// touched addresses' IP-cache keys are worked out again.
#[test]
fn one_change_recompiles_only_what_it_touches() {
    let pod = |name: &str, octet: u8, app: &str| Pod {
        namespace: "n0".into(),
        name: name.into(),
        labels: labels(&[("app", app)]),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, octet))],
        ports: vec![],
        host_network: false,
        node_name: None,
        owner: None,
    };
    let pods = vec![
        pod("pod0", 1, "web"),
        pod("pod1", 2, "db"),
        pod("pod3", 3, "db"),
    ];
    let allow_web = |port: u16| ingress_policy(None, &[port]);
    let (mut cluster, _) = Cluster::build(namespaces(), pods, vec![allow_web(80)]);
    let locals = local_endpoints(&cluster);
    let first = compile(&cluster, &locals, None);
    assert!(
        first.changed_keys_since(&Snapshot::default()).is_none(),
        "a first compile is full"
    );

    cluster.upsert_pod(pod("pod1", 2, "web"));
    let second = compile(&cluster, &locals, Some(&first));
    let keys: Vec<String> = second
        .changed_keys_since(&first)
        .expect("a relabel is compiled incrementally")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(keys, vec!["10.0.1.2/32"], "only the relabelled pod's key");

    cluster.upsert_policy(allow_web(81));
    let third = compile(&cluster, &locals, Some(&second));
    assert!(
        third
            .changed_keys_since(&second)
            .is_some_and(|k| k.is_empty()),
        "a policy edit without ipBlocks changes no IP-cache key"
    );
    assert_ne!(
        third.tables, second.tables,
        "but the table follows the policy"
    );

    cluster.upsert_namespace(Namespace::new("n0", labels(&[("team", "c")]), false));
    let fourth = compile(&cluster, &locals, Some(&third));
    assert_eq!(
        fourth.changed_keys_since(&third).map(|k| k.len()),
        Some(3),
        "a namespace relabel moves its three pods"
    );
    assert!(
        fourth.changed_keys_since(&second).is_none(),
        "the changed keys are relative to the previous snapshot only"
    );
}

/// One port added to the policy of a server that allows many identities, and one remote pod
/// relabelled: the plan writes the cells that change (into the server's standby table), not
/// the whole table, and the maps then decide as the new snapshot does.
#[test]
fn one_change_writes_what_it_changes_not_the_table() {
    let remote = |i: u8| Pod {
        namespace: "n1".into(),
        name: format!("pod{}", 101 + 2 * u32::from(i)),
        labels: labels(&[("app", "web"), ("shard", &i.to_string())]),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 2, 10 + i))],
        ports: vec![],
        host_network: false,
        node_name: None,
        owner: None,
    };
    let server = Pod {
        namespace: "n0".into(),
        name: "pod0".into(),
        labels: labels(&[("app", "db")]),
        ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))],
        ports: vec![],
        host_network: false,
        node_name: None,
        owner: None,
    };
    let web_anywhere = flowgate_policy::model::Peer::Pods {
        namespaces: flowgate_policy::model::NamespaceScope::Selected(
            flowgate_policy::model::Selector::default(),
        ),
        pods: flowgate_policy::model::Selector {
            match_labels: vec![("app".into(), "web".into())],
            match_expressions: vec![],
        },
    };
    let allow = |ports: &[u16]| ingress_policy(Some(vec![web_anywhere.clone()]), ports);
    let mut pods: Vec<Pod> = (0..40).map(remote).collect();
    pods.push(server.clone());
    let (mut cluster, _) = Cluster::build(namespaces(), pods, vec![allow(&[80])]);
    let locals = local_endpoints(&cluster);
    let mut state = MapState::default();
    let mut current = Snapshot::default();
    let mut step = |cluster: &Cluster, state: &mut MapState| -> usize {
        let next = compile(cluster, &locals, Some(&current));
        let plan = diff(&current, &next, Mode::Enforce);
        for op in &plan {
            state.apply(op);
        }
        assert_eq!(state.missing_deletes, 0);
        let table = next.endpoints[&ifindex(&server)].ingress.table;
        for i in 0..40 {
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 10 + i));
            for port in [80, 81] {
                let got = state.lookup(
                    ifindex(&server),
                    Direction::Ingress,
                    ip,
                    Protocol::Tcp,
                    Some(port),
                );
                let cell = next.tables[&table].iter().any(|(c, _)| {
                    Some(c.identity) == next.ipcache.get(&ip.into()).copied() && c.port == port
                });
                assert_eq!(
                    matches!(got, flowgate_policy::maps::Lookup::Allow { .. }),
                    cell,
                    "{ip}:{port} decided as the new table says"
                );
            }
        }
        current = next;
        plan.iter()
            .filter(|op| {
                matches!(
                    op,
                    flowgate_policy::maps::MapOp::PolicyUpdate(..)
                        | flowgate_policy::maps::MapOp::PolicyDelete(..)
                )
            })
            .count()
    };
    let first = step(&cluster, &mut state);
    assert!(
        first >= 80,
        "the first apply writes the table and its standby copy: {first}"
    );
    // The standby of a table holds the generation before last: each plan writes the cells the
    // last two changes made, not the table (40 identities here).
    cluster.upsert_pod(Pod {
        labels: labels(&[("app", "batch")]),
        ..remote(7)
    });
    let relabelled = step(&cluster, &mut state);
    assert!(
        relabelled <= 4,
        "one identity's cells: {relabelled} policy writes"
    );
    cluster.upsert_pod(Pod {
        labels: labels(&[("app", "batch")]),
        ..remote(9)
    });
    let again = step(&cluster, &mut state);
    assert!(again <= 8, "two relabels' cells: {again} policy writes");
    cluster.upsert_policy(allow(&[80, 81]));
    let port_added = step(&cluster, &mut state);
    assert!(
        port_added <= 38 + 8,
        "a port for 38 identities, and the relabel before: {port_added}"
    );
}
