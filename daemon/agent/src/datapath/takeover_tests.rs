//! The takeover plan replayed op by op on the in-memory model of the maps
//! (`flowgate_policy::maps::MapState`, the kernel's lookup with LPM semantics): every flow's
//! (egress, ingress) pair must stay the adopted one or become the new one, never anything else,
//! and the maps must end exactly as a fresh load of the new snapshot would leave them.

use std::net::IpAddr;

use flowgate_policy::compile::{LocalEndpoint, compile};
use flowgate_policy::maps::{Lookup, MapState};
use flowgate_policy::model::Direction;
use flowgate_policy::{Cluster, Manifests};

use super::*;

const PODS: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: app, labels: {app: a}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: app, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: app, labels: {app: c}}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: other, labels: {app: d}}
status: {podIP: 10.0.0.4}
";

/// The adopted agent's first policies: b admits a on http; a may reach b and part of a range.
const FIRST: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: b}}}]
  - to: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]
    ports: [{port: 443}]
";

/// Its update: b admits c too (b's table changes), d is isolated, the range narrows.
const SECOND: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchExpressions: [{key: app, operator: In, values: [a, c]}]}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: b}}}]
  - to: [{ipBlock: {cidr: 192.168.0.0/17, except: [192.168.1.0/24]}}]
    ports: [{port: 443}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: d-in, namespace: other}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
";

/// What the new agent compiles: other policies and CIDRs, so most verdicts change and the fresh
/// compile's ids (from 1 again) mean other identities and tables than the adopted ones.
const NEW: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}, {ipBlock: {cidr: 10.0.0.0/30}}], ports: [{port: 80}, {port: 53, protocol: UDP}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: c-out, namespace: app}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 192.168.1.0/24}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {app: d}}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: d-in, namespace: other}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 443}]}]
";

fn cluster(policies: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("test.yaml", &format!("{PODS}\n---\n{policies}"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

fn locals() -> Vec<LocalEndpoint> {
    ["app/a", "app/b", "app/c", "other/d"]
        .iter()
        .zip(11..)
        .map(|(pod, ifindex)| LocalEndpoint {
            pod: (*pod).to_owned(),
            ifindex,
        })
        .collect()
}

fn live_of(state: &MapState) -> LiveMaps {
    LiveMaps {
        active: state.active.unwrap_or_default(),
        endpoints: state.endpoints.iter().map(|(k, v)| (*k, *v)).collect(),
        ipcache: state.ipcache.clone(),
        policy: state.policy.clone(),
    }
}

fn applied(ops: &[MapOp]) -> MapState {
    let mut state = MapState::default();
    for op in ops {
        state.apply(op);
    }
    state
}

/// Every (egress, ingress) pair of every flow between the local pods, and from them to
/// addresses outside.
fn verdicts(state: &MapState) -> Vec<(Lookup, Lookup)> {
    let pods: Vec<(u32, IpAddr)> = (11..)
        .zip(["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"])
        .map(|(i, ip)| (i, ip.parse().unwrap()))
        .collect();
    let outside: Vec<IpAddr> = ["192.168.0.5", "192.168.1.5", "192.168.200.1", "8.8.8.8"]
        .iter()
        .map(|ip| ip.parse().unwrap())
        .collect();
    let ports = [
        (Protocol::Tcp, Some(80)),
        (Protocol::Tcp, Some(443)),
        (Protocol::Udp, Some(53)),
        (Protocol::Icmp, None),
    ];
    let mut out = Vec::new();
    for (src, src_ip) in &pods {
        for (protocol, port) in ports {
            for (dst, dst_ip) in &pods {
                out.push((
                    state.lookup(*src, Direction::Egress, *dst_ip, protocol, port),
                    state.lookup(*dst, Direction::Ingress, *src_ip, protocol, port),
                ));
            }
            for ip in &outside {
                let egress = state.lookup(*src, Direction::Egress, *ip, protocol, port);
                out.push((egress, Lookup::Unmanaged));
            }
        }
    }
    out
}

/// Replays the takeover from `adopted` to a fresh compile of `NEW`, checking every op boundary.
fn check_takeover(adopted: &MapState) {
    let live = live_of(adopted);
    let mut next = compile(&cluster(NEW), &locals(), None);
    let ops = plan(&live, &mut next, Mode::Enforce).expect("a plan");
    assert!(
        next.generation > live.active.generation,
        "generations continue: {} after {}",
        next.generation,
        live.active.generation
    );
    let expected = applied(&diff(&Snapshot::default(), &next, Mode::Enforce));
    let (before, after) = (verdicts(adopted), verdicts(&expected));
    assert_ne!(before, after, "the test needs verdicts that change");
    let mut state = adopted.clone();
    for (n, op) in ops.iter().enumerate() {
        state.apply(op);
        for ((now, old), new) in verdicts(&state).iter().zip(&before).zip(&after) {
            assert!(
                now == old || now == new,
                "after op {n} ({op:?}) a flow is decided as {now:?}: neither the adopted {old:?} nor the new {new:?}"
            );
        }
    }
    assert_eq!(
        state.missing_deletes, 0,
        "the plan deletes only what is there"
    );
    assert_eq!(state.active, expected.active);
    assert_eq!(state.endpoints, expected.endpoints);
    assert_eq!(state.ipcache, expected.ipcache);
    assert_eq!(
        state.policy, expected.policy,
        "nothing of the adopted snapshot is left"
    );
}

/// The previous agent applied FIRST then SECOND (so its ids are not a fresh compile's).
fn previous_agent() -> (MapState, Vec<MapOp>) {
    let first = compile(&cluster(FIRST), &locals(), None);
    let second = compile(&cluster(SECOND), &locals(), Some(&first));
    let mut state = applied(&diff(&Snapshot::default(), &first, Mode::Enforce));
    let update = diff(&first, &second, Mode::Enforce);
    for op in &update {
        state.apply(op);
    }
    (state, update)
}

#[test]
fn a_takeover_decides_every_flow_by_the_adopted_or_the_new_snapshot() {
    let (adopted, _) = previous_agent();
    check_takeover(&adopted);
}

#[test]
fn a_takeover_of_an_update_cut_short_by_a_crash_is_as_safe() {
    let first = compile(&cluster(FIRST), &locals(), None);
    let second = compile(&cluster(SECOND), &locals(), Some(&first));
    let update = diff(&first, &second, Mode::Enforce);
    // The previous agent died after each op of its update in turn: before the flip, between the
    // flip and the clean-up, in the middle of the clean-up.
    let base = applied(&diff(&Snapshot::default(), &first, Mode::Enforce));
    for cut in [1, update.len() / 3, update.len() / 2, update.len() - 2] {
        let mut adopted = base.clone();
        for op in &update[..cut] {
            adopted.apply(op);
        }
        check_takeover(&adopted);
    }
}

#[test]
fn a_takeover_of_a_renumbered_state_renumbers_again() {
    // The agent before this one died during its own takeover, after the renumbering.
    let (adopted, _) = previous_agent();
    let live = live_of(&adopted);
    let mut interim = compile(&cluster(SECOND), &locals(), None);
    let ops = plan(&live, &mut interim, Mode::Enforce).unwrap();
    let flip = ops
        .iter()
        .position(|op| matches!(op, MapOp::Activate(_)))
        .unwrap();
    let mut state = adopted.clone();
    for op in &ops[..flip] {
        state.apply(op);
    }
    assert!(
        state
            .policy
            .keys()
            .any(|k| k.table() >= RENUMBERED_FROM && k.identity() >= RENUMBERED_FROM),
        "the interim state holds renumbered ids"
    );
    check_takeover(&state);
}

#[test]
fn a_takeover_of_empty_maps_is_a_first_apply() {
    let mut next = compile(&cluster(NEW), &locals(), None);
    let ops = plan(&LiveMaps::default(), &mut next, Mode::Audit).unwrap();
    assert_eq!(next.generation, 1);
    assert_eq!(ops[0], MapOp::Barrier, "nothing to renumber");
    assert_eq!(ops[1..], diff(&Snapshot::default(), &next, Mode::Audit)[..]);
}

#[test]
fn generations_continue_with_the_other_parity_and_skip_zero() {
    assert_eq!(following_generation(7, 1), 8);
    assert_eq!(following_generation(8, 0), 9);
    // A live parity that does not match the generation: the next one must still differ from it.
    assert_eq!(following_generation(8, 1), 10);
    assert_eq!(following_generation(u32::MAX, 1), 2);
    assert_eq!(following_generation(0, 0), 1);
}

#[test]
fn keys_read_back_as_the_cells_and_networks_that_wrote_them() {
    let snap = compile(&cluster(SECOND), &locals(), None);
    for (table, entries) in &snap.tables {
        for cell in entries.keys() {
            let key = flowgate_policy::maps::policy_key(*table, cell);
            assert_eq!(cell_of(&key, cell.identity), Some(*cell), "{key:?}");
        }
    }
    for net in snap.ipcache.keys() {
        let key = flowgate_policy::maps::ipcache_key(net);
        assert_eq!(network_text(&key), net.to_string(), "{key:?}");
    }
}
