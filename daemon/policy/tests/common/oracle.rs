//! The kernel's side of the oracle: maps filled by `diff`, a kernel lookup read back as the
//! decision `evaluate` reports, and the endpoints and remote addresses the tests probe.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use flowgate_policy::Cluster;
use flowgate_policy::compile::{LocalEndpoint, Snapshot};
use flowgate_policy::evaluate::{Reason, SideDecision, Verdict};
use flowgate_policy::maps::{Lookup, MapState, Mode, diff};
use flowgate_policy::model::{Direction, Pod, Protocol};

/// Every pod is local; its ifindex is derived from its name so it is stable across snapshots.
pub fn locals(cluster: &Cluster) -> Vec<LocalEndpoint> {
    cluster
        .pods()
        .map(|(_, p)| LocalEndpoint {
            pod: p.key(),
            ifindex: ifindex(p),
        })
        .collect()
}

pub fn ifindex(p: &Pod) -> u32 {
    let ns: u32 = p.namespace.trim_start_matches('n').parse().unwrap();
    let i: u32 = p.name.trim_start_matches("pod").parse().unwrap();
    10 + ns * 100 + i
}

pub fn state_of(snap: &Snapshot) -> MapState {
    let mut state = MapState::default();
    for op in diff(&Snapshot::default(), snap, Mode::Enforce) {
        state.apply(&op);
    }
    state
}

/// A kernel lookup turned into the decision `evaluate` would report for that side.
pub fn resolve(
    lookup: Lookup,
    snaps: &[&Snapshot],
    ifindex: u32,
    direction: Direction,
) -> SideDecision {
    let snap_of = |generation: u32| {
        *snaps
            .iter()
            .find(|s| s.generation == generation)
            .expect("generation of a known snapshot")
    };
    match lookup {
        Lookup::Unmanaged => panic!("ifindex {ifindex} has no endpoint entry"),
        Lookup::NotIsolated { .. } => SideDecision {
            verdict: Verdict::Allow,
            reason: Reason::NotIsolated,
            allowed_by: vec![],
            isolated_by: vec![],
        },
        Lookup::Allow {
            generation,
            attribution,
        } => SideDecision {
            verdict: Verdict::Allow,
            reason: Reason::RuleAllow,
            allowed_by: snap_of(generation).attributions[&attribution].clone(),
            isolated_by: vec![],
        },
        Lookup::Deny { generation } => SideDecision {
            verdict: Verdict::Deny,
            reason: Reason::DefaultDeny,
            allowed_by: vec![],
            isolated_by: snap_of(generation).endpoints[&ifindex]
                .side(direction)
                .isolated_by
                .clone(),
        },
    }
}

/// An address outside every pod: public, inside 10/8 but outside the pods' /24s, and another.
pub fn external(i: usize) -> IpAddr {
    [
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9)),
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, 200)),
        IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9)),
    ][i % 3]
}

/// Per (endpoint, probe, remote, side): the decision, and the paired remote ingress if any.
pub type Decisions = BTreeMap<(u32, usize, IpAddr, usize), (SideDecision, Option<SideDecision>)>;

/// Every decision the maps make now for the endpoints `(ifindex, address)`: each endpoint's
/// egress to every remote paired with that remote's ingress when it is an endpoint too (the
/// two sides of one flow), and each endpoint's ingress from every remote.
pub fn decisions(
    st: &MapState,
    snaps: &[&Snapshot],
    endpoints: &[(u32, IpAddr)],
    remotes: &[IpAddr],
    probes: &[(Protocol, Option<u16>)],
) -> Decisions {
    let mut out = BTreeMap::new();
    for (pi, (proto, port)) in probes.iter().enumerate() {
        for &(i, ip) in endpoints {
            for &r in remotes {
                let egress = resolve(
                    st.lookup(i, Direction::Egress, r, *proto, *port),
                    snaps,
                    i,
                    Direction::Egress,
                );
                let ingress = endpoints.iter().find(|(_, rip)| *rip == r).map(|&(j, _)| {
                    resolve(
                        st.lookup(j, Direction::Ingress, ip, *proto, *port),
                        snaps,
                        j,
                        Direction::Ingress,
                    )
                });
                out.insert((i, pi, r, 0), (egress, ingress));
                let alone = resolve(
                    st.lookup(i, Direction::Ingress, r, *proto, *port),
                    snaps,
                    i,
                    Direction::Ingress,
                );
                out.insert((i, pi, r, 1), (alone, None));
            }
        }
    }
    out
}
