//! Connection tracking with one entry per connection: each local end keeps its own state in it,
//! the sender marks a packet for the receiver only when both ends passed the connection under
//! the active generation, and a hook never uses or overwrites an end another interface holds.
//!
//! `BPF_PROG_TEST_RUN` gives every run interface 1 (web), so the other pod's end (interface 7)
//! is written into the entry the way its own hooks would write it. Some steps write an entry
//! in ways a generation never sees (an end going back to an older generation): they clear the
//! per-CPU flow cache first, which would rightly pass on what it read under the generation.

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuValues};
use flowgate_abi::{
    ConnKey, CtEnd, CtValue, DIR_EGRESS, DIR_INGRESS, FlowCacheSlot, capacity, maps, programs,
    trust, verdict,
};

use super::frame::tcp;
use super::{ACK, ALLOW_CLIENT, Harness, SYN, TC_ACT_OK, TC_ACT_SHOT, is_root, one};

type Conntrack = BpfHashMap<MapData, ConnKey, CtValue>;

fn conntrack(h: &mut Harness) -> Conntrack {
    h.dp.take_map(maps::CONNTRACK).unwrap().try_into().unwrap()
}

/// Empties every CPU's flow cache.
fn forget(cache: &mut PerCpuArray<MapData, FlowCacheSlot>) {
    let cpus = aya::util::nr_cpus().unwrap();
    for slot in 0..capacity::FLOW_CACHE {
        let empty = PerCpuValues::try_from(vec![FlowCacheSlot::default(); cpus]).unwrap();
        cache.set(slot, empty, 0).unwrap();
    }
}

fn flow_cache(h: &mut Harness) -> PerCpuArray<MapData, FlowCacheSlot> {
    h.dp.take_map(maps::FLOW_CACHE).unwrap().try_into().unwrap()
}

fn v4(addr: &str) -> [u8; 16] {
    let ip: std::net::Ipv4Addr = addr.parse().unwrap();
    ip.to_ipv6_mapped().octets()
}

/// The key of a TCP connection and the index of `local`'s end in it.
fn key(local: (&str, u16), remote: (&str, u16)) -> (ConnKey, usize) {
    ConnKey::of(6, (v4(local.0), local.1), (v4(remote.0), remote.1))
}

fn end(ifindex: u32, generation: u32, direction: u8, v: u8) -> CtEnd {
    CtEnd {
        ifindex,
        generation,
        direction,
        verdict: v,
        _pad: [0; 2],
    }
}

#[test]
fn a_same_node_connection_is_one_entry_and_marked_only_when_both_ends_passed_it() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let generation = h.snap.generation;
    let mut ct = conntrack(&mut h);
    let mut cache = flow_cache(&mut h);
    // The client pod's SYN passed web's ingress: one entry, web's end current, the other empty.
    let syn = tcp("10.2.0.1", 41000, "10.1.0.1", 80, SYN).bytes();
    let (rc, evs) = h.run(programs::TO_POD, &syn);
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_OK, verdict::ALLOW));
    let (k, web) = key(("10.1.0.1", 80), ("10.2.0.1", 41000));
    let mut value = ct
        .get(&k, 0)
        .expect("one entry for the connection, found by its key");
    assert_eq!(
        value.ends[web],
        end(1, generation, DIR_INGRESS, verdict::ALLOW)
    );
    assert_eq!(
        value.ends[1 - web],
        CtEnd::default(),
        "the other end is empty"
    );
    assert_eq!(
        ct.iter().filter_map(Result::ok).count(),
        1,
        "nothing else is tracked"
    );
    let reply = tcp("10.1.0.1", 80, "10.2.0.1", 41000, SYN | ACK).bytes();
    assert_eq!(
        h.run_in(programs::FROM_POD, &reply, 0, 0).2,
        0,
        "no local peer: no mark"
    );

    // The client is a local pod (interface 7) whose fg_from_pod passed the connection: its end
    // is current too, so web's packets are marked for its fg_to_pod.
    value.ends[1 - web] = end(7, generation, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    forget(&mut cache);
    let (rc, evs, mark) = h.run_in(programs::FROM_POD, &reply, 0, 0);
    assert_eq!((rc, evs.len(), mark), (TC_ACT_OK, 0, trust::MASK));

    // Not when the client's end was denied on a re-check, or is of an older generation.
    for other in [
        end(7, generation, DIR_EGRESS, verdict::DENY),
        end(7, generation - 1, DIR_EGRESS, verdict::ALLOW),
    ] {
        value.ends[1 - web] = other;
        ct.insert(k, value, 0).unwrap();
        forget(&mut cache);
        let (rc, _, mark) = h.run_in(programs::FROM_POD, &reply, 0, 0);
        assert_eq!((rc, mark), (TC_ACT_OK, 0), "{other:?}");
    }

    // A new SYN on the same tuple rewrites web's end in place, leaving the client's alone.
    value.ends[1 - web] = end(7, generation, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    assert_eq!(h.run(programs::TO_POD, &syn).0, TC_ACT_OK);
    let after = ct.get(&k, 0).unwrap();
    assert_eq!(after.ends[1 - web], value.ends[1 - web]);
    assert_eq!(after.ends[web].ifindex, 1);
    assert!(after.decided_ns >= value.decided_ns);
}

#[test]
fn an_end_held_by_another_interface_is_neither_used_nor_taken_over() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let generation = h.snap.generation;
    let mut ct = conntrack(&mut h);
    let mut cache = flow_cache(&mut h);
    // 192.0.2.9 may not reach web. An entry whose web-address end is held by interface 7 (a
    // pod that sent with web's address) does not let web's traffic through on it.
    let (k, web) = key(("10.1.0.1", 80), ("192.0.2.9", 41100));
    let mut value = CtValue::default();
    value.ends[web] = end(7, generation, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    let ack = tcp("192.0.2.9", 41100, "10.1.0.1", 80, ACK).bytes();
    let (rc, evs) = h.run(programs::TO_POD, &ack);
    assert_eq!(
        (rc, one(&evs).verdict),
        (TC_ACT_SHOT, verdict::DENY),
        "judged by web's own policy"
    );
    // An allowed client's flow is decided and passes, but the end stays interface 7's.
    let (k, web) = key(("10.1.0.1", 80), ("10.2.0.1", 41101));
    value.ends = [CtEnd::default(); 2];
    value.ends[web] = end(7, generation, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    let ack = tcp("10.2.0.1", 41101, "10.1.0.1", 80, ACK).bytes();
    let (rc, evs) = h.run(programs::TO_POD, &ack);
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_OK, verdict::ALLOW));
    assert_eq!(ct.get(&k, 0).unwrap().ends[web], value.ends[web]);
    // Web's own end (interface 1) is used: the same packet passes on it without a decision.
    value.ends[web] = end(1, generation, DIR_INGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    let (rc, evs) = h.run(programs::TO_POD, &ack);
    assert_eq!((rc, evs.len()), (TC_ACT_OK, 0));
    // Once the holder's end is of an older generation, a decision takes it over.
    value.ends[web] = end(7, generation - 1, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    forget(&mut cache);
    assert_eq!(h.run(programs::TO_POD, &ack).0, TC_ACT_OK);
    assert_eq!(
        ct.get(&k, 0).unwrap().ends[web],
        end(1, generation, DIR_INGRESS, verdict::ALLOW)
    );
}

/// Keeps the test's thread, and so its test runs, on the CPU it is on: the flow cache is per CPU.
fn stay_on_this_cpu() {
    // SAFETY: plain libc calls on a zeroed, then filled, CPU set of this thread.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).unwrap();
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set),
            0
        );
    }
}

#[test]
fn the_flow_cache_passes_established_packets_and_refreshes_from_the_entry() {
    require_root!();
    stay_on_this_cpu();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let mut ct = conntrack(&mut h);
    let syn = tcp("10.2.0.1", 41200, "10.1.0.1", 80, SYN).bytes();
    assert_eq!(h.run(programs::TO_POD, &syn).0, TC_ACT_OK);
    // The first established packet passes on the entry and fills this CPU's slot.
    let ack = tcp("10.2.0.1", 41200, "10.1.0.1", 80, ACK).bytes();
    assert_eq!(h.run(programs::TO_POD, &ack), (TC_ACT_OK, vec![]));
    // With the entry gone, the next packets pass on the slot: silently, no new-flow decision.
    let (k, _) = key(("10.1.0.1", 80), ("10.2.0.1", 41200));
    ct.remove(&k).unwrap();
    for i in 1..flowgate_abi::FLOW_CACHE_REFRESH {
        assert_eq!(
            h.run(programs::TO_POD, &ack),
            (TC_ACT_OK, vec![]),
            "hit {i}"
        );
    }
    // Every FLOW_CACHE_REFRESH-th takes the lookup: it misses, so the packet is decided as a
    // new flow (allowed: one event) and tracked again.
    let (rc, evs) = h.run(programs::TO_POD, &ack);
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_OK, verdict::ALLOW));
    assert!(ct.get(&k, 0).is_ok(), "tracked again");
}

#[test]
fn the_flow_cache_holds_only_under_its_generation() {
    require_root!();
    stay_on_this_cpu();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let generation = h.snap.generation;
    let mut ct = conntrack(&mut h);
    // A same-node connection: web's reply is marked for the client pod's end (interface 7),
    // by the entry, then by the slot it filled.
    let syn = tcp("10.2.0.1", 41300, "10.1.0.1", 80, SYN).bytes();
    assert_eq!(h.run(programs::TO_POD, &syn).0, TC_ACT_OK);
    let (k, web) = key(("10.1.0.1", 80), ("10.2.0.1", 41300));
    let mut value = ct.get(&k, 0).unwrap();
    value.ends[1 - web] = end(7, generation, DIR_EGRESS, verdict::ALLOW);
    ct.insert(k, value, 0).unwrap();
    let reply = tcp("10.1.0.1", 80, "10.2.0.1", 41300, ACK).bytes();
    for source in ["the entry", "the slot"] {
        let (rc, evs, mark) = h.run_in(programs::FROM_POD, &reply, 0, 0);
        assert_eq!(
            (rc, evs.len(), mark),
            (TC_ACT_OK, 0, trust::MASK),
            "{source}"
        );
    }
    // A new generation in which web's ingress allows nothing: the slot no longer counts, the
    // connection is re-checked and dropped, either way.
    h.update(super::DENY_INGRESS, flowgate_policy::maps::Mode::Enforce);
    let (rc, evs, mark) = h.run_in(programs::FROM_POD, &reply, 0, 0);
    assert_eq!(
        (rc, one(&evs).reason, mark),
        (TC_ACT_SHOT, flowgate_abi::reason::RECHECK_DENY, 0)
    );
    let ack = tcp("10.2.0.1", 41300, "10.1.0.1", 80, ACK).bytes();
    assert_eq!(h.run(programs::TO_POD, &ack).0, TC_ACT_SHOT);
}
