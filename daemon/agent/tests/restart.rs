//! Enforcement survives an agent restart (needs root and bpffs; CI runs as root after the
//! bootstrap mounts /sys/fs/bpf): the datapath pinned by one agent keeps enforcing after that
//! agent is killed, the next agent adopts it without a moment of "no policy", events written
//! while no agent ran are delivered late or counted, an incompatible pinned datapath is replaced
//! without a gap, and unpinning removes everything.
//!
//! ```text
//!   pod netns app/x ─┐             node netns: fg_from_pod / fg_to_pod on every host veth,
//!   pod netns app/y ─┼─ veth ───── their links pinned under /sys/fs/bpf/flowgate-test-<pid>-<n>
//!   pod netns app/z ─┘
//!   y admits z on 7000 and 7100 and nothing else, and may not open connections itself (its
//!   replies pass only through connection tracking): x -> y denied, z -> y allowed.
//!
//!   agent 1 (a child process: load pinned, attach, apply) ──SIGKILL──> nothing runs ──> agent 2
//!   (this process: load = adopt, attach = switch each link's program, plan + apply = takeover)
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

#[path = "restart/agent1.rs"]
mod agent1;
#[path = "restart/support.rs"]
mod support;

#[path = "common/echo.rs"]
mod echo;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use agent1::Agent1;
use aya::maps::{HashMap as BpfHashMap, MapData};
use flowgate::datapath::{Attached, Datapath, DatapathError, LoadOptions, TcMode};
use flowgate_abi::capacity::EVENTS_BYTES;
use flowgate_abi::{ConnKey, CtValue, FlowEvent, maps, verdict};
use flowgate_flows::gap::{GapRecord, LostCounts, Stage};
use flowgate_flows::pipeline::Record;
use flowgate_policy::compile::Snapshot;
use flowgate_policy::maps::Mode;
use support::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, eBPF, bpffs)");
            return;
        }
    };
}

#[test]
#[ignore = "agent 1 of the restart test, which runs it as a child process and kills it"]
fn restart_agent_child() {
    let Ok(config) = std::env::var("FLOWGATE_RESTART_CHILD") else {
        eprintln!("skipped: helper process; the restart test runs it with FLOWGATE_RESTART_CHILD");
        return;
    };
    let config: serde_json::Value = serde_json::from_str(&config).unwrap();
    let netns = std::fs::File::open(config["netns"].as_str().unwrap()).unwrap();
    nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    let pods: Vec<(String, String, u32)> = serde_json::from_value(config["pods"].clone()).unwrap();
    let mut dp = Datapath::load(&LoadOptions {
        pin_dir: Some(config["pin_dir"].as_str().unwrap().into()),
        ..LoadOptions::default()
    })
    .unwrap();
    assert!(
        dp.adopted().is_none() && dp.replaced().is_none(),
        "a fresh pin directory"
    );
    let mut ring = dp.take_events().unwrap();
    for (_, ifname, _) in &pods {
        dp.attach_pod_interface(ifname, TcMode::Auto).unwrap();
    }
    let locals = locals(&pods);
    let first = apply(&mut dp, DENY_ALL, &locals, &Snapshot::default());
    let second = apply(&mut dp, POLICY, &locals, &first);
    println!("AGENT-READY {}", second.generation);
    let mut read = 0;
    loop {
        let n = drain(&mut ring).len();
        if n > 0 {
            read += n;
            println!("READ {read}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_agent_keeps_enforcing_and_the_next_one_takes_over_without_a_gap() {
    require_root!();
    let lab = build_lab();
    let pins = PinDir::new(&lab);
    let pods = pods(&lab);

    // Agent 1 enforces; a connection z -> y is open; everything it produced, it has read.
    let mut agent1 = Agent1::spawn(&lab, &pins, &pods);
    assert_eq!(agent1.wait_for("AGENT-READY", |_| true), 2);
    let mut conn = open_connection(&lab);
    let conn_port = conn.local_addr().unwrap().port();
    assert!(echo(&mut conn, b'a'), "the connection carries data");
    assert_enforced(&lab, "agent 1 running");
    // 2 events for the connection, 2 per probe.
    agent1.wait_for("READ", |n| n >= 6);
    let programs1 = tcx_programs(&lab, &pods);
    agent1.kill();

    // No agent: the pinned links keep agent 1's programs, and its maps, in force.
    assert!(
        programs1.iter().all(|hook| hook.len() == 1),
        "one program per hook: {programs1:?}"
    );
    assert_eq!(
        programs1,
        tcx_programs(&lab, &pods),
        "a killed agent's programs stay attached"
    );
    let mut down: std::collections::HashMap<Tuple, (usize, usize)> = Default::default();
    for round in 0..5 {
        for (tuple, (allows, denies)) in round_without_agent(&lab, round) {
            let sum = down.entry(tuple).or_default();
            *sum = (sum.0 + allows, sum.1 + denies);
        }
    }
    assert!(
        echo(&mut conn, b'b'),
        "the open connection works while no agent runs"
    );
    let links1 = link_ids(&pins);

    // Agent 2 starts (load = adopt, attach = switch each link's program, plan + apply = take the
    // snapshot over) while probes run in a loop, x -> y and z -> y. Nothing may decide by
    // anything but the policy: x never reaches y, and the datapath denies nothing but x (every
    // drop of the programs reports a deny, or counts a loss when the ring is full). A z probe
    // that times out without a deny is the host's network stack under this load (a SYN-ACK
    // stuck in a queue past the 900 ms timeout, seen at about 1 in 3,000): counted, bounded.
    let stop = AtomicBool::new(false);
    let flips = std::sync::Mutex::new(Vec::new());
    let probes = AtomicUsize::new(0);
    let z_timeouts = std::sync::Mutex::new(Vec::new());
    let started = Instant::now();
    let (mut dp, mut ring, backlog, during, new_generation, times) = std::thread::scope(|scope| {
        // The probes stop when this closure ends, also by a failed assertion.
        let _stop = StopOnDrop(&stop);
        for (from, timeout, threads) in [("app/x", 100, 3), ("app/z", 900, 2)] {
            for _ in 0..threads {
                let (lab, stop, probes) = (&lab, &stop, &probes);
                let (flips, z_timeouts) = (&flips, &z_timeouts);
                scope.spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let seen = probe_y(lab, from, Duration::from_millis(timeout));
                        probes.fetch_add(1, Ordering::Relaxed);
                        let at = started.elapsed();
                        match (from, seen.outcome.delivered()) {
                            ("app/x", true) => flips.lock().unwrap().push((seen, at)),
                            ("app/z", false) => z_timeouts.lock().unwrap().push((seen, at)),
                            _ => {}
                        }
                    }
                });
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let mut dp = Datapath::load(&pins.options()).expect("agent 2 loads");
        let load_time = (t0 - started, t0.elapsed());
        let mut ring = dp.take_events().unwrap();
        let backlog = drain(&mut ring);
        std::thread::sleep(Duration::from_millis(300));
        let mut during = drain(&mut ring);
        let t0 = Instant::now();
        let how = attach_all(&lab, &mut dp, &pods, TcMode::Auto);
        let attach_time = (t0 - started, t0.elapsed());
        assert_eq!(how, Attached::Tcx);
        std::thread::sleep(Duration::from_millis(300));
        during.extend(drain(&mut ring));
        let t0 = Instant::now();
        let snapshot = apply(&mut dp, POLICY, &locals(&pods), &Snapshot::default());
        let apply_time = (t0 - started, t0.elapsed());
        std::thread::sleep(Duration::from_millis(300));
        let times = (load_time, attach_time, apply_time);
        (dp, ring, backlog, during, snapshot.generation, times)
    });
    let mut during = during;
    during.extend(drain(&mut ring));
    let flips = flips.into_inner().unwrap();
    let probes = probes.into_inner();
    eprintln!(
        "{probes} probes while agent 2 started ((start, duration) of load {:?}, links switched {:?}, takeover applied {:?}), {} events, {} z timeouts without a deny",
        times.0,
        times.1,
        times.2,
        backlog.len() + during.len(),
        z_timeouts.lock().unwrap().len()
    );
    assert!(
        probes >= 50,
        "the probes ran during the adoption ({probes})"
    );
    assert!(flips.is_empty(), "x must never reach y: {flips:#?}");
    let x = mapped(ip("10.71.0.1"));
    let denied: Vec<&FlowEvent> = backlog
        .iter()
        .chain(&during)
        .filter(|e| e.verdict == verdict::DENY && e.src_addr != x)
        .collect();
    assert!(denied.is_empty(), "only x -> y is ever denied: {denied:#?}");
    let z_timeouts = z_timeouts.into_inner().unwrap();
    assert!(
        z_timeouts.len() * 100 <= probes,
        "z -> y timed out too often without being denied: {z_timeouts:#?}"
    );
    assert_eq!(dp.take_lost().unwrap(), [0, 0, 0], "every event was read");
    assert_eq!(new_generation, 3, "the generations continue");
    assert_eq!(
        link_ids(&pins),
        links1,
        "the same links, their programs replaced: never detached and attached again"
    );

    // What agent 2 found: the generation in force, its endpoints and links, nothing lost.
    let adopted = dp
        .adopted()
        .expect("agent 2 adopted the pinned datapath")
        .clone();
    assert_eq!(adopted.generation, 2, "{adopted:?}");
    assert_eq!(adopted.mode, Mode::Enforce);
    assert_eq!(adopted.endpoints.len(), 3, "{adopted:?}");
    assert_eq!(adopted.links.len(), 6, "{:?}", adopted.links);
    assert_eq!(adopted.unreported_lost, [0, 0, 0]);
    // The events written while no agent ran were waiting in the pinned ring buffer.
    for (tuple, (allows, denies)) in &down {
        let mine: Vec<&FlowEvent> = backlog.iter().filter(|e| Tuple::of(e) == *tuple).collect();
        let got = (
            mine.iter().filter(|e| e.verdict == verdict::ALLOW).count(),
            mine.iter().filter(|e| e.verdict == verdict::DENY).count(),
        );
        assert_eq!(
            got,
            (*allows, *denies),
            "the events of the probe {tuple:?} while no agent ran are delivered late: {mine:#?}"
        );
        assert!(mine.iter().all(|e| e.generation == 2));
    }
    let gap = GapRecord::new(
        "2026-11-28T18:45:02.031400000Z".into(),
        1,
        "lab",
        &Stage::Restart,
        LostCounts {
            allow: adopted.unreported_lost[0],
            deny: adopted.unreported_lost[1],
            audit: adopted.unreported_lost[2],
        },
        None,
    );
    assert_schema_valid(&Record::Gap(gap).to_json());

    // Connection tracking survived: the open connection's entry, with both of its ends (two
    // pods of the node) of generation 2, is there (re-checked and re-stamped on its next packet).
    let conntrack: BpfHashMap<MapData, ConnKey, CtValue> =
        dp.take_map(maps::CONNTRACK).unwrap().try_into().unwrap();
    let tracked: Vec<CtValue> = conntrack
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| {
            let ports = (k.lo_port, k.hi_port);
            ports == (conn_port, 7100) || ports == (7100, conn_port)
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        tracked.len(),
        1,
        "one entry for the open connection: {tracked:?}"
    );
    assert!(
        tracked[0]
            .ends
            .iter()
            .all(|end| end.ifindex != 0 && end.generation == 2),
        "both ends of the open connection are tracked under generation 2: {tracked:?}"
    );

    // The links run agent 2's programs now: one per hook, not one more.
    let programs2 = tcx_programs(&lab, &pods);
    for (old, new) in programs1.iter().zip(&programs2) {
        assert_eq!(new.len(), 1, "{programs2:?}");
        assert_ne!(old[0].0, new[0].0, "the link runs a new program");
        assert_eq!(old[0].1, new[0].1);
    }
    assert!(
        echo(&mut conn, b'c'),
        "the open connection survives the takeover (its replies pass by connection tracking)"
    );
    assert_enforced(&lab, "agent 2 running");
    std::thread::sleep(Duration::from_millis(30));
    let now = drain(&mut ring);
    assert!(
        now.iter().any(|e| e.generation == 3),
        "events flow again, decided under the new generation"
    );
    assert!(
        dp.retain_links(|i| pods.iter().any(|p| p.2 == i))
            .unwrap()
            .is_empty(),
        "every pinned link is a pod's"
    );

    // A clean stop leaves enforcement in place too; unpinning removes it.
    drop(dp);
    assert_enforced(&lab, "agent 2 stopped");
    let path = pins.path.clone();
    let removed = lab.in_node(|| Datapath::unpin_all(&path)).unwrap().unwrap();
    assert_eq!(
        (removed.links, removed.maps),
        (6, flowgate::datapath::pin::LAYOUT.len()),
        "every link and every map of the object: {removed:?}"
    );
    assert!(!path.exists(), "the pin directory is gone");
    assert!(
        tcx_programs(&lab, &pods).iter().all(Vec::is_empty),
        "no program is left on any hook"
    );
    assert_eq!(
        verdicts(&lab),
        (true, true),
        "nothing enforces after unpinning"
    );
}

#[test]
fn events_while_no_agent_reads_are_delivered_or_counted_exactly() {
    require_root!();
    // One page: 42 events of 96 bytes fit.
    let (lab, pins, _) = after_a_stopped_agent(4096, TcMode::Auto);
    let mut expected = (0, 0);
    for round in 0..15 {
        for (_, (a, d)) in round_without_agent(&lab, round) {
            expected = (expected.0 + a as u64, expected.1 + d as u64);
        }
    }
    let (allows, denies) = expected;

    let mut dp = Datapath::load(&pins.options()).unwrap();
    let adopted = dp.adopted().unwrap().clone();
    assert_eq!(adopted.ring_bytes, 4096, "the adopted ring keeps its size");
    let backlog = drain(&mut dp.take_events().unwrap());
    let lost = adopted.unreported_lost;
    eprintln!(
        "{} events delivered late, lost {lost:?}, of {allows} allows and {denies} denies",
        backlog.len()
    );
    assert!(
        lost[0] + lost[1] > 0,
        "the ring overflowed while no agent read it"
    );
    assert_eq!(
        classes(&backlog),
        (allows - lost[0], denies - lost[1]),
        "every event while down is delivered or counted lost, per verdict class"
    );
    assert_eq!(dp.take_lost().unwrap(), [0, 0, 0], "reported once");
    drop(dp);
    let dp = Datapath::load(&pins.options()).unwrap();
    assert_eq!(
        dp.adopted().unwrap().unreported_lost,
        [0, 0, 0],
        "the next agent knows those losses were reported"
    );
}

#[test]
fn an_incompatible_pinned_datapath_is_replaced_without_a_gap() {
    require_root!();
    replaced_without_a_gap(TcMode::Auto);
}

#[test]
fn an_incompatible_pinned_datapath_on_the_legacy_tc_path_is_replaced_without_a_gap() {
    require_root!();
    replaced_without_a_gap(TcMode::Netlink);
}

/// Makes the pins look like another ABI's.
fn mark_as_other_abi(pins: &PinDir) {
    let meta_path = pins.path.join("meta");
    let mut meta: aya::maps::Array<MapData, flowgate_abi::PinMeta> =
        aya::maps::Map::Array(MapData::from_pin(&meta_path).unwrap())
            .try_into()
            .unwrap();
    let mut record = meta.get(&0, 0).unwrap();
    record.abi_version = 99;
    meta.set(0, record, 0).unwrap();
}

#[test]
fn an_incompatible_pinned_datapath_of_interfaces_gone_is_replaced_on_their_successors() {
    require_root!();
    let (lab, pins, old_pods) = after_a_stopped_agent(EVENTS_BYTES, TcMode::Auto);
    mark_as_other_abi(&pins);
    // The node's interfaces go away with their namespace; a new node's reuse their ifindexes,
    // so the old link pins carry the new interfaces' names but belong to dead links.
    drop(lab);
    let lab = build_lab();
    let pods = pods(&lab);
    assert!(
        pods.iter().any(|p| old_pods.iter().any(|o| o.2 == p.2)),
        "precondition: a new interface reuses an old ifindex ({old_pods:?} -> {pods:?})"
    );
    let mut dp = Datapath::load(&pins.options()).unwrap();
    assert!(dp.replaced().is_some());
    attach_all(&lab, &mut dp, &pods, TcMode::Auto);
    // Before the fix this failed forever: BPF_LINK_UPDATE of a link whose interface is gone.
    apply(&mut dp, POLICY, &locals(&pods), &Snapshot::default());
    assert!(
        tcx_programs(&lab, &pods).iter().all(|p| p.len() == 1),
        "one program per hook: {:?}",
        tcx_programs(&lab, &pods)
    );
    assert_enforced(&lab, "replaced, on the new interfaces");
}

fn replaced_without_a_gap(tc: TcMode) {
    let (lab, pins, pods) = after_a_stopped_agent(EVENTS_BYTES, tc);
    let old_programs = hook_programs(&lab, &pods);
    assert!(old_programs.iter().all(|p| p.is_some()), "{old_programs:?}");
    // An agent of another ABI made these pins.
    mark_as_other_abi(&pins);

    let mut dp = Datapath::load(&pins.options()).unwrap();
    assert!(dp.adopted().is_none());
    let message = dp.replaced().expect("replaced").to_string();
    eprintln!("{message}");
    for part in [
        "is incompatible: it was made by ABI version 99, this agent has version",
        "Replacing it",
        "keep enforcing its last policy until this agent's first apply",
        "connection tracking starts empty",
    ] {
        assert!(message.contains(part), "{message:?} must say {part:?}");
    }
    attach_all(&lab, &mut dp, &pods, TcMode::Auto);
    assert_eq!(
        hook_programs(&lab, &pods),
        old_programs,
        "the old programs stay until the first apply"
    );
    assert_enforced(&lab, "replacing, before the first apply");
    let snapshot = apply(&mut dp, POLICY, &locals(&pods), &Snapshot::default());
    assert_eq!(snapshot.generation, 1, "a fresh datapath starts again");
    let new_programs = hook_programs(&lab, &pods);
    for (old, new) in old_programs.iter().zip(&new_programs) {
        assert_ne!(
            old, new,
            "after the first apply, the links run the new programs"
        );
    }
    assert_enforced(&lab, "replaced");
    drop(dp);
    let dp = Datapath::load(&pins.options()).unwrap();
    assert_eq!(
        dp.adopted().map(|a| a.generation),
        Some(1),
        "the replacement is what the next agent adopts"
    );
}

#[test]
fn the_legacy_tc_path_survives_a_restart_and_unpins_cleanly() {
    require_root!();
    let (lab, pins, pods) = after_a_stopped_agent(EVENTS_BYTES, TcMode::Netlink);
    let (_, y_if, _) = &pods[1];
    let before = filter_program(&filters(&lab, y_if, "egress"))
        .expect("the stopped agent's filter is still on y's hook");
    assert_enforced(&lab, "legacy filters, no agent");

    let mut dp = Datapath::load(&pins.options()).unwrap();
    assert!(dp.adopted().is_some());
    // Auto would pick TCX on this kernel; the adopted filters are kept and switched instead.
    assert_eq!(
        attach_all(&lab, &mut dp, &pods, TcMode::Auto),
        Attached::Netlink
    );
    let text = filters(&lab, y_if, "egress");
    let after = filter_program(&text).unwrap();
    assert_ne!(before, after, "the filter runs the new program");
    assert_eq!(
        text.lines().filter(|l| l.contains("fg_")).count(),
        1,
        "replaced in place, not added: {text}"
    );
    assert!(
        tcx_programs(&lab, &pods).iter().all(Vec::is_empty),
        "no TCX link was added"
    );
    assert_enforced(&lab, "legacy filters switched");
    apply(&mut dp, POLICY, &locals(&pods), &Snapshot::default());
    assert_enforced(&lab, "legacy filters, taken over");
    drop(dp);

    let path = pins.path.clone();
    let removed = lab.in_node(|| Datapath::unpin_all(&path)).unwrap().unwrap();
    assert_eq!(removed.links, 6);
    for (_, ifname, _) in &pods {
        for hook in ["ingress", "egress"] {
            let text = filters(&lab, ifname, hook);
            assert!(!text.contains("fg_"), "{ifname} {hook}: {text}");
        }
    }
    assert_eq!(
        verdicts(&lab),
        (true, true),
        "nothing enforces after unpinning"
    );
}

#[test]
fn one_agent_at_a_time_and_only_on_bpffs() {
    require_root!();
    let lab = build_lab();
    let pins = PinDir::new(&lab);
    let first = Datapath::load(&pins.options()).unwrap();
    let error = Datapath::load(&LoadOptions {
        lock_wait: Duration::from_millis(200),
        ..pins.options()
    })
    .unwrap_err();
    assert!(matches!(error, DatapathError::PinLocked { .. }), "{error}");
    assert!(
        error.to_string().contains("another flowgate agent holds"),
        "{error}"
    );
    drop(first);
    assert!(
        Datapath::load(&pins.options()).is_ok(),
        "free once the first agent is gone"
    );

    let error = Datapath::load(&LoadOptions {
        pin_dir: Some(std::env::temp_dir().join("flowgate-not-bpffs")),
        ..LoadOptions::default()
    })
    .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, DatapathError::NotBpffs { .. })
            && text.contains("mount -t bpf bpf /sys/fs/bpf"),
        "{text}"
    );
}
