//! Kubernetes mode across an agent restart, end to end: the real `flowgate agent` binary
//! against the fake API server on a lab node, killed with SIGKILL under traffic; the pinned
//! programs keep enforcing with no agent at all, the next agent adopts them, and `--cleanup`
//! removes them. Needs root and bpffs; CI runs as root after the bootstrap mounts bpffs.
//!
//! ```text
//!   traffic: b -> a (denied), c -> a (allowed), all along
//!   agent 1 ──SIGKILL──> (no agent, 1.5 s) ──> agent 2 adopts /sys/fs/bpf/flowgate-e2e-<pid>
//!   then: a link detached from outside -> /healthz 503 -> re-attached -> --cleanup
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod fake_apiserver;
#[path = "cluster_e2e/harness.rs"]
mod harness;

use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use fake_apiserver::FakeApi;
use flowgate::lab::{Lab, LabProbe, LabSpec, ProbeEnd};
use flowgate_policy::model::Protocol;
use harness::*;
use serde_json::{Value, json};

/// Enforcement survives the agent: killed with SIGKILL during traffic, its pinned programs
/// keep the policy in force (denied stays denied, allowed stays allowed); the next agent
/// adopts them, says so with a `restart` gap record, and events resume. `--cleanup` then
/// removes everything, and the traffic is open again.
#[test]
fn a_killed_agent_leaves_enforcement_in_force_and_the_next_one_adopts_it() {
    require_root!();
    let objects = three_pods("10.63.0");
    let lab = Lab::build(&LabSpec::from_cluster(&oracle(&objects))).expect("the lab builds");
    let api = FakeApi::new();
    for o in &objects {
        api.set(o.clone());
    }
    let api_addr = serve(&lab, &api);
    let pins = format!("/sys/fs/bpf/flowgate-e2e-{}", std::process::id());
    assert!(
        std::path::Path::new("/sys/fs/bpf").exists(),
        "bpffs must be mounted at /sys/fs/bpf (scripts/bootstrap.sh mounts it)"
    );
    let dir = std::env::temp_dir().join(format!("flowgate-cluster-restart-{}", std::process::id()));
    let pin_args = ["--bpffs-dir", pins.as_str()];
    let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
        "10.63.0.1".parse().unwrap(),
        "10.63.0.2".parse().unwrap(),
        "10.63.0.3".parse().unwrap(),
    );

    let http1 = free_addr(&lab);
    let mut agent1 = start_agent(&lab, api_addr, http1, &dir, &pin_args);
    wait_for("agent 1 ready", &agent1, Duration::from_secs(30), || {
        get(&lab, http1, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    converge(&lab, &oracle(&objects), "agent 1", &agent1, Instant::now());

    // Traffic all along: b -> a is denied, c -> a allowed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (leaks, blocked, rounds) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let (mut leaks, mut blocked, mut rounds) = (0, 0, 0);
            let probes = [
                LabProbe::new(ProbeEnd::Ip(b), a, Protocol::Tcp, Some(80)),
                LabProbe::new(ProbeEnd::Ip(c), a, Protocol::Tcp, Some(80)),
            ];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let seen = lab.probe_all(&probes, Duration::from_millis(300));
                leaks += usize::from(seen[0].outcome.delivered());
                blocked += usize::from(!seen[1].outcome.delivered() && !delivered(&lab, c, a));
                rounds += 1;
            }
            (leaks, blocked, rounds)
        });
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child (nsenter execs the agent: same pid).
        unsafe { libc::kill(i32::try_from(agent1.child.id()).unwrap(), libc::SIGKILL) };
        agent1.child.wait().unwrap();
        // No agent at all for a while: the pinned programs alone decide.
        std::thread::sleep(Duration::from_millis(1500));
        let http2 = free_addr(&lab);
        let agent2 = start_agent(&lab, api_addr, http2, &dir, &pin_args);
        wait_for("agent 2 ready", &agent2, Duration::from_secs(30), || {
            get(&lab, http2, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let counts = traffic.join().unwrap();

        assert!(
            agent2.log().contains("adopted the pinned datapath"),
            "{}",
            agent2.log()
        );
        let records: Vec<Value> = agent2
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(
            records
                .first()
                .map(|r| (r["record_type"].clone(), r["stage"].clone())),
            Some((json!("gap"), json!("restart"))),
            "the first record of the adopting agent is the restart gap"
        );
        // Events resume: new traffic is reported by the new agent, with attribution.
        let before = agent2.stdout.lock().unwrap().len();
        assert!(!delivered(&lab, b, a));
        wait_for(
            "agent 2's deny event",
            &agent2,
            Duration::from_secs(5),
            || {
                agent2.stdout.lock().unwrap()[before..].iter().any(|l| {
                    let r: Value = serde_json::from_str(l).unwrap_or_default();
                    r["verdict"] == "deny"
                        && r["policy"]["isolated_by"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["name"] == "a-from-c"))
                })
            },
        );
        converge(&lab, &oracle(&objects), "agent 2", &agent2, Instant::now());

        // The datapath taken away from outside (a link detached, as `bpftool link detach`
        // does): /healthz says so, naming the program and the interface.
        assert_eq!(get(&lab, http2, "/healthz").map(|(s, _)| s), Some(200));
        let a_if = lab
            .endpoints()
            .find(|e| e.key == "x/a")
            .map(|e| e.host_ifindex)
            .unwrap();
        detach_pinned_link(&format!("{pins}/links/{a_if}-ingress"));
        wait_for("/healthz to fail", &agent2, Duration::from_secs(10), || {
            get(&lab, http2, "/healthz").is_some_and(|(status, body)| {
                status == 503 && body.contains("fg_from_pod is no longer attached on")
            })
        });
        // ... and the agent attaches that pod afresh: healthy again.
        wait_for(
            "/healthz to recover",
            &agent2,
            Duration::from_secs(10),
            || get(&lab, http2, "/healthz").is_some_and(|(status, _)| status == 200),
        );
        converge(
            &lab,
            &oracle(&objects),
            "after re-attaching",
            &agent2,
            Instant::now(),
        );
        drop(agent2);
        counts
    });
    eprintln!(
        "restart under traffic: {rounds} rounds, {leaks} denied flows let through, {blocked} allowed flows blocked"
    );
    assert!(
        rounds >= 5,
        "traffic ran through the restart ({rounds} rounds)"
    );
    assert_eq!(
        leaks, 0,
        "b -> a stays denied through the kill, the gap and the adoption"
    );
    assert_eq!(
        blocked, 0,
        "c -> a stays allowed through the kill, the gap and the adoption"
    );

    // With both agents gone, the programs still enforce; --cleanup removes them.
    assert!(
        !delivered(&lab, b, a),
        "still enforced with no agent running"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.node_netns().display()))
        .arg(env!("CARGO_BIN_EXE_flowgate"))
        .args(["agent", "--cleanup", "--bpffs-dir", &pins])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pinned links (programs detached)"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&pins).exists(),
        "the pin directory is gone"
    );
    assert!(delivered(&lab, b, a), "nothing enforces after the cleanup");
    lab.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Detaches the BPF link pinned at `path` (BPF_OBJ_GET, then BPF_LINK_DETACH), as an
/// administrator's `bpftool link detach` would: the link stays, attached to nothing.
fn detach_pinned_link(path: &str) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let cpath = std::ffi::CString::new(path).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr of 128 bytes with `pathname` set to a valid C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {path}: {}",
        std::io::Error::last_os_error()
    );
    let mut attr = [0u64; 16];
    attr[0] = u64::try_from(fd).unwrap();
    // SAFETY: `attr` is a zeroed bpf_attr with `link_detach.link_fd` set to the link's fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_LINK_DETACH: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is the descriptor BPF_OBJ_GET returned, closed once.
    unsafe { libc::close(i32::try_from(fd).unwrap()) };
}

/// One probe, retried once if it did not get through: a host TCP stall under load is not a
/// policy drop (a drop is deterministic, the retry fails too).
fn delivered(lab: &Lab, from: IpAddr, to: IpAddr) -> bool {
    let probe = [LabProbe::new(
        ProbeEnd::Ip(from),
        to,
        Protocol::Tcp,
        Some(80),
    )];
    (0..2).any(|_| {
        lab.probe_all(&probe, Duration::from_millis(400))[0]
            .outcome
            .delivered()
    })
}
