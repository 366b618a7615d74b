//! The compiled datapath against the reference: maps built by `compile` + `diff` and looked up
//! the way the kernel looks them up give the same verdict and attribution as `evaluate`; and
//! while a plan is applied op by op, every flow is decided as by the old or by the new snapshot.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod common;

use std::net::IpAddr;

use common::r#gen::*;
use common::oracle::{decisions, external, ifindex, locals, resolve, state_of};
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile, prefixes};
use flowgate_policy::evaluate::evaluate;
use flowgate_policy::maps::{MapState, Mode, diff};
use flowgate_policy::model::{Direction, Protocol};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Compiled maps, looked up like the kernel does, equal `evaluate` on both sides of every flow.
    #[test]
    fn compiled_lookup_equals_evaluate(pods in pods(), policies in policies(), flows in flows()) {
        let cluster = build(pods, policies);
        let snap = compile(&cluster, &locals(&cluster), None);
        let state = state_of(&snap);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            let expected = evaluate(&cluster, &flow);
            if let Some(src) = flow.src_pod {
                let i = ifindex(cluster.pod(src));
                let got = resolve(state.lookup(i, Direction::Egress, flow.dst_ip, flow.protocol, flow.port), &[&snap], i, Direction::Egress);
                prop_assert_eq!(&got, &expected.egress, "egress of {:?}", flow);
            }
            if let Some(dst) = flow.dst_pod {
                let i = ifindex(cluster.pod(dst));
                let got = resolve(state.lookup(i, Direction::Ingress, flow.src_ip, flow.protocol, flow.port), &[&snap], i, Direction::Ingress);
                prop_assert_eq!(&got, &expected.ingress, "ingress of {:?}", flow);
            }
        }
    }

    /// Applying a plan op by op: at every step each flow's (egress, ingress) pair is the old pair
    /// or the new pair, never a mix; at the end the maps equal `evaluate` on the new cluster.
    #[test]
    fn plan_switches_atomically(
        old_pods in pods(), old_policies in policies(),
        new_pods in pods(), new_policies in policies(),
        which in 0usize..3,
    ) {
        let (new_pods, new_policies) = match which {
            0 => (old_pods.clone(), new_policies),
            1 => (new_pods, old_policies.clone()),
            _ => (new_pods, new_policies),
        };
        let old_cluster = build(old_pods, old_policies);
        let new_cluster = build(new_pods, new_policies);
        let old = compile(&old_cluster, &locals(&old_cluster), None);
        let new = compile(&new_cluster, &locals(&new_cluster), Some(&old));
        let mut state = state_of(&old);
        let final_state = {
            let mut s = state.clone();
            for op in diff(&old, &new, Mode::Enforce) { s.apply(&op); }
            s
        };

        // Endpoints present in both with the same IP; remote addresses from both and outside.
        let stable: Vec<(u32, IpAddr)> = old_cluster.pods()
            .filter_map(|(_, p)| {
                let (_, q) = new_cluster.pods().find(|(_, q)| q.key() == p.key())?;
                (q.ips == p.ips).then(|| (ifindex(p), p.ips[0]))
            })
            .collect();
        let mut remotes: Vec<IpAddr> = old_cluster.pods().chain(new_cluster.pods()).map(|(_, p)| p.ips[0]).collect();
        remotes.extend((0..3).map(external));
        remotes.sort();
        remotes.dedup();
        let probes: Vec<(Protocol, Option<u16>)> = vec![(Protocol::Tcp, Some(80)), (Protocol::Udp, Some(53)), (Protocol::Tcp, Some(443)), (Protocol::Icmp, None)];

        let snaps = [&old, &new];
        let decide = |st: &MapState| decisions(st, &snaps, &stable, &remotes, &probes);
        let before = decide(&state);
        let after = decide(&final_state);
        prop_assert_eq!(final_state.missing_deletes, 0, "the plan deletes only keys it wrote");
        for (step, op) in diff(&old, &new, Mode::Enforce).iter().enumerate() {
            state.apply(op);
            let now = decide(&state);
            for (key, got) in &now {
                prop_assert!(got == &before[key] || got == &after[key],
                    "step {} ({:?}): {:?} is neither old {:?} nor new {:?}", step, op, got, before[key], after[key]);
            }
        }

        // And the final maps are the new policy exactly.
        for (_, pod) in new_cluster.pods() {
            for &r in &remotes {
                for (proto, port) in &probes {
                    let remote_pod = new_cluster.pod_by_ip(r);
                    let flow = flowgate_policy::evaluate::Flow { src_ip: pod.ips[0], src_pod: new_cluster.pod_by_ip(pod.ips[0]), dst_ip: r, dst_pod: remote_pod, protocol: *proto, port: *port };
                    let i = ifindex(pod);
                    let got = resolve(final_state.lookup(i, Direction::Egress, r, *proto, *port), &[&new], i, Direction::Egress);
                    prop_assert_eq!(&got, &evaluate(&new_cluster, &flow).egress);
                }
            }
        }
    }
}

#[test]
fn port_ranges_become_few_prefixes() {
    assert_eq!(prefixes(80, 80), vec![(80, 16)]);
    assert_eq!(prefixes(0, 65535), vec![(0, 0)]);
    assert_eq!(prefixes(32000, 32767), vec![(32000, 8), (32256, 7)]);
    // Every range is covered exactly, by at most 2 * 16 prefixes.
    for (lo, hi) in [
        (1u32, 65535u32),
        (80, 81),
        (1024, 65535),
        (32000, 32768),
        (5, 1000),
    ] {
        let ps = prefixes(lo, hi);
        assert!(ps.len() <= 32, "{lo}-{hi}: {} prefixes", ps.len());
        let covered: u32 = ps
            .iter()
            .map(|(_, bits)| 1u32 << (16 - u32::from(*bits)))
            .sum();
        assert_eq!(covered, hi - lo + 1, "{lo}-{hi} covered exactly");
        let mut next = lo;
        for (start, bits) in ps {
            assert_eq!(u32::from(start), next, "contiguous");
            next += 1 << (16 - u32::from(bits));
        }
    }
}

#[test]
fn table_shared_by_endpoints_with_the_same_policies() {
    let yaml = r"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: n0, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: n0, labels: {app: web}}
status: {podIP: 10.0.0.2}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: n0}
spec:
  podSelector: {}
  ingress: [{from: [{podSelector: {}}], ports: [{port: 8000, endPort: 8999}]}]
";
    let cluster = common::cluster(yaml);
    let locals = vec![
        LocalEndpoint {
            pod: "n0/a".into(),
            ifindex: 1,
        },
        LocalEndpoint {
            pod: "n0/b".into(),
            ifindex: 2,
        },
    ];
    let snap = compile(&cluster, &locals, None);
    assert_eq!(
        snap.endpoints[&1].ingress.table, snap.endpoints[&2].ingress.table,
        "same policies, same table"
    );
    assert_eq!(snap.tables.len(), 1);
    // a and b have the same labels: one identity. 8000-8999 is 6 prefixes, not 1,000 entries.
    let pod_identities = snap
        .identities
        .values()
        .filter(|c| matches!(c, flowgate_policy::compile::IdentityContent::Pod { .. }))
        .count();
    assert_eq!(pod_identities, 1, "one label set, one identity");
    assert_eq!(prefixes(8000, 8999).len(), 6);
    assert_eq!(snap.cell_count(), 6);
}

/// Every conformance scenario applied one after another (as the lab test does): each diff only
/// deletes what it wrote, and after each the maps decide every pod pair like `evaluate`.
#[test]
fn conformance_scenarios_in_sequence_apply_cleanly() {
    let mut state = MapState::default();
    let mut current = Snapshot::default();
    for scenario in common::scenarios::all() {
        let cluster = common::scenarios::load(&scenario);
        let locals: Vec<LocalEndpoint> = cluster
            .pods()
            .enumerate()
            .map(|(i, (_, p))| LocalEndpoint {
                pod: p.key(),
                ifindex: 100 + u32::try_from(i).unwrap(),
            })
            .collect();
        let next = compile(&cluster, &locals, Some(&current));
        for op in diff(&current, &next, Mode::Enforce) {
            state.apply(&op);
        }
        assert_eq!(
            state.missing_deletes, 0,
            "{}: the diff deleted keys it never wrote",
            scenario.name
        );
        for case in &scenario.cases {
            let protocol = Protocol::from_k8s(&case.protocol).unwrap();
            for (sid, src) in cluster.pods() {
                for (did, dst) in cluster.pods() {
                    let flow = flowgate_policy::evaluate::Flow {
                        src_ip: src.ips[0],
                        src_pod: Some(sid),
                        dst_ip: dst.ips[0],
                        dst_pod: Some(did),
                        protocol,
                        port: Some(case.port),
                    };
                    let want = evaluate(&cluster, &flow);
                    let i = locals.iter().find(|l| l.pod == dst.key()).unwrap().ifindex;
                    let got = resolve(
                        state.lookup(i, Direction::Ingress, src.ips[0], protocol, Some(case.port)),
                        &[&next],
                        i,
                        Direction::Ingress,
                    );
                    assert_eq!(
                        got,
                        want.ingress,
                        "{}: ingress of {} -> {}",
                        scenario.name,
                        src.key(),
                        dst.key()
                    );
                }
            }
        }
        current = next;
    }
}
