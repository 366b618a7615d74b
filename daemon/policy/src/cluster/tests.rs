//! The incremental index against an independent reading of the same objects: after any
//! sequence of inserts, replacements and removals, every query answers as the objects say (and
//! as `build` of them does); the journal names what changed.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use proptest::prelude::*;

use super::*;
use crate::model::{Namespace, Pod, Policy, Selector};

type Key = (String, String);

/// What every query of an index answers, in a form two indexes can be compared by.
#[derive(Debug, PartialEq, Eq)]
struct View {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    by_name: Vec<(Key, Option<Key>)>,
    by_ip: Vec<(IpAddr, Option<Key>)>,
    policies: Vec<Key>,
    policies_in: Vec<(String, Vec<Key>)>,
    pods_in: Vec<(String, Vec<Key>)>,
    counts: (usize, usize, usize),
}

const NAMESPACES: [&str; 3] = ["n0", "n1", "n2"];

fn ip(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))
}

fn key_of(pod: &Pod) -> Key {
    (pod.namespace.clone(), pod.name.clone())
}

fn view(c: &Cluster) -> View {
    let mut by_name = Vec::new();
    let mut by_ip = Vec::new();
    for ns in NAMESPACES {
        for i in 0..6 {
            let name = format!("p{i}");
            let found = c.pod_by_name(ns, &name).map(|id| key_of(c.pod(id)));
            by_name.push(((ns.to_owned(), name), found));
        }
    }
    for i in 0..5 {
        by_ip.push((ip(i), c.pod_by_ip(ip(i)).map(|id| key_of(c.pod(id)))));
    }
    let listed = |it: &mut dyn Iterator<Item = Key>| it.collect::<Vec<_>>();
    View {
        namespaces: c.namespaces().cloned().collect(),
        pods: c.pods().map(|(_, p)| p.clone()).collect(),
        by_name,
        by_ip,
        policies: c
            .policies()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .collect(),
        policies_in: NAMESPACES
            .iter()
            .map(|ns| {
                let keys = listed(
                    &mut c
                        .policies_in(ns)
                        .map(|(_, p)| (p.namespace.clone(), p.name.clone())),
                );
                ((*ns).to_owned(), keys)
            })
            .collect(),
        pods_in: NAMESPACES
            .iter()
            .map(|ns| {
                (
                    (*ns).to_owned(),
                    listed(&mut c.pods_in(ns).map(|(_, p)| key_of(p))),
                )
            })
            .collect(),
        counts: c.counts(),
    }
}

/// The view the objects themselves give, worked out without the index.
fn expected(
    namespaces: &BTreeMap<String, Namespace>,
    pods: &BTreeMap<Key, Pod>,
    policies: &BTreeMap<Key, Policy>,
) -> View {
    let mut all_ns = namespaces.clone();
    for used in pods.keys().chain(policies.keys()).map(|k| &k.0) {
        all_ns
            .entry(used.clone())
            .or_insert_with(|| Namespace::new(used, Labels::new(), true));
    }
    let mut by_name = Vec::new();
    for ns in NAMESPACES {
        for i in 0..6 {
            let k = (ns.to_owned(), format!("p{i}"));
            let found = pods.contains_key(&k).then(|| k.clone());
            by_name.push((k, found));
        }
    }
    let by_ip = (0..5)
        .map(|i| {
            let owner = pods
                .values()
                .filter(|p| !p.host_network && p.ips.contains(&ip(i)))
                .map(key_of)
                .max();
            (ip(i), owner)
        })
        .collect();
    View {
        namespaces: all_ns.values().cloned().collect(),
        pods: pods.values().cloned().collect(),
        by_name,
        by_ip,
        policies: policies.keys().cloned().collect(),
        policies_in: NAMESPACES
            .iter()
            .map(|ns| {
                let keys = policies.keys().filter(|k| k.0 == *ns).cloned().collect();
                ((*ns).to_owned(), keys)
            })
            .collect(),
        pods_in: NAMESPACES
            .iter()
            .map(|ns| {
                let keys = pods.keys().filter(|k| k.0 == *ns).cloned().collect();
                ((*ns).to_owned(), keys)
            })
            .collect(),
        counts: (all_ns.len(), pods.len(), policies.len()),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Namespace(usize, u8),
    RemoveNamespace(usize),
    Pod(usize, usize, Vec<u8>, bool, u8),
    RemovePod(usize, usize),
    Policy(usize, usize, bool),
    RemovePolicy(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, 0u8..3).prop_map(|(n, l)| Op::Namespace(n, l)),
        (0usize..3).prop_map(Op::RemoveNamespace),
        (
            0usize..3,
            0usize..6,
            prop::collection::vec(0u8..5, 0..3),
            any::<bool>(),
            0u8..3
        )
            .prop_map(|(n, p, ips, host, l)| Op::Pod(n, p, ips, host, l)),
        (0usize..3, 0usize..6).prop_map(|(n, p)| Op::RemovePod(n, p)),
        (0usize..3, 0usize..4, any::<bool>()).prop_map(|(n, p, e)| Op::Policy(n, p, e)),
        (0usize..3, 0usize..4).prop_map(|(n, p)| Op::RemovePolicy(n, p)),
    ]
}

fn labels(value: u8) -> Labels {
    [("v".to_owned(), value.to_string())].into()
}

fn pod(ns: usize, i: usize, ips: &[u8], host_network: bool, label: u8) -> Pod {
    Pod {
        namespace: NAMESPACES[ns].into(),
        name: format!("p{i}"),
        labels: labels(label),
        ips: ips.iter().map(|i| ip(*i)).collect(),
        ports: Vec::new(),
        host_network,
        node_name: None,
        owner: None,
    }
}

fn policy(ns: usize, i: usize, egress: bool) -> Policy {
    Policy {
        namespace: NAMESPACES[ns].into(),
        name: format!("q{i}"),
        pod_selector: Selector::default(),
        isolates_ingress: true,
        isolates_egress: egress,
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn incremental_index_equals_the_objects_and_build(ops in prop::collection::vec(op(), 0..40)) {
        let mut c = Cluster::default();
        let mut namespaces: BTreeMap<String, Namespace> = BTreeMap::new();
        let mut pods: BTreeMap<Key, Pod> = BTreeMap::new();
        let mut policies: BTreeMap<Key, Policy> = BTreeMap::new();
        for op in ops {
            let before = c.revision();
            let (epoch, changed, touched) = match op {
                Op::Namespace(n, l) => {
                    let ns = Namespace::new(NAMESPACES[n], labels(l), false);
                    let changed = namespaces.get(NAMESPACES[n]) != Some(&ns);
                    namespaces.insert(ns.name.clone(), ns.clone());
                    (c.epoch(), changed, c.upsert_namespace(ns))
                }
                Op::RemoveNamespace(n) => {
                    let changed = namespaces.remove(NAMESPACES[n]).is_some();
                    (c.epoch(), changed, c.remove_namespace(NAMESPACES[n]))
                }
                Op::Pod(n, i, ips, host, l) => {
                    let p = pod(n, i, &ips, host, l);
                    let changed = pods.get(&key_of(&p)) != Some(&p);
                    pods.insert(key_of(&p), p.clone());
                    let touched = c.upsert_pod(p.clone());
                    if touched {
                        let changes = c.changes_since(c.epoch(), before).unwrap();
                        prop_assert!(changes.pods.contains(&key_of(&p)), "{changes:?}");
                        prop_assert!(p.ips.iter().all(|ip| changes.ips.contains(ip)), "{changes:?}");
                    }
                    (c.epoch(), changed, touched)
                }
                Op::RemovePod(n, i) => {
                    let k = (NAMESPACES[n].to_owned(), format!("p{i}"));
                    let old = pods.remove(&k);
                    let touched = c.remove_pod(&k.0, &k.1);
                    if let Some(old) = &old {
                        let changes = c.changes_since(c.epoch(), before).unwrap();
                        prop_assert!(old.ips.iter().all(|ip| changes.ips.contains(ip)), "{changes:?}");
                    }
                    (c.epoch(), old.is_some(), touched)
                }
                Op::Policy(n, i, e) => {
                    let p = policy(n, i, e);
                    let k = (p.namespace.clone(), p.name.clone());
                    let changed = policies.get(&k) != Some(&p);
                    policies.insert(k, p.clone());
                    (c.epoch(), changed, c.upsert_policy(p))
                }
                Op::RemovePolicy(n, i) => {
                    let k = (NAMESPACES[n].to_owned(), format!("q{i}"));
                    let changed = policies.remove(&k).is_some();
                    (c.epoch(), changed, c.remove_policy(&k.0, &k.1))
                }
            };
            prop_assert_eq!(changed, touched, "an update reports whether it changed anything");
            prop_assert_eq!(changed, c.revision() > before, "a change and only a change is journalled");
            prop_assert_eq!(epoch, c.epoch());
            let want = expected(&namespaces, &pods, &policies);
            prop_assert_eq!(&view(&c), &want);
        }
        let (built, _) = Cluster::build(
            namespaces.values().cloned().collect(),
            pods.values().rev().cloned().collect(),
            policies.values().cloned().collect(),
        );
        prop_assert_eq!(view(&built), expected(&namespaces, &pods, &policies));
        prop_assert_eq!(built.revision(), 0, "a built index starts with an empty journal");
        let copy = c.clone();
        prop_assert_ne!(copy.epoch(), c.epoch(), "a clone is a lineage of its own");
        prop_assert!(copy.changes_since(c.epoch(), 0).is_none());
    }
}

#[test]
fn sync_changes_only_what_differs() {
    let ns = vec![Namespace::new("n0", labels(1), false)];
    let pods = vec![pod(0, 0, &[1], false, 0), pod(0, 1, &[2], false, 0)];
    let (mut c, _) = Cluster::build(ns.clone(), pods.clone(), vec![policy(0, 0, false)]);
    let rev = c.revision();
    let mut moved = pods.clone();
    moved[1].labels = labels(2);
    let changed = c.sync(ns.clone(), moved.clone(), vec![policy(0, 0, false)]);
    assert_eq!(changed, 1, "only the relabelled pod differs");
    let changes = c.changes_since(c.epoch(), rev).unwrap();
    assert_eq!(
        changes.pods.into_iter().collect::<Vec<_>>(),
        vec![("n0".to_owned(), "p1".to_owned())]
    );
    assert!(changes.policies.is_empty() && changes.namespaces.is_empty());
    let (built, _) = Cluster::build(ns, moved, vec![policy(0, 0, false)]);
    assert_eq!(view(&c), view(&built));
}

#[test]
fn a_journal_too_far_behind_asks_for_a_full_rebuild() {
    let mut c = Cluster::default();
    for i in 0..(super::update::JOURNAL_MAX_FOR_TESTS + 10) {
        c.upsert_pod(pod(0, 0, &[1], false, u8::try_from(i % 3).unwrap()));
    }
    assert!(c.changes_since(c.epoch(), 0).is_none());
    assert!(c.changes_since(c.epoch(), c.revision()).unwrap().is_empty());
    assert!(c.changes_since(c.epoch() + 1, c.revision()).is_none());
}
