//! The lab node without any datapath: real TCP, UDP, SCTP and ICMP between every pair of pods
//! and externals (IPv4 and IPv6), refusals and timeouts where expected, no packet leaving the
//! lab, and nothing left behind after Drop, a failed build, Ctrl-C or a killed owner.
//! Needs root (CI runs as root); without it every test prints "skipped: ..." and passes.
//!
//! ```text
//!   x/a 10.77.1.1 fd77::1:1   x/b 10.77.1.2 fd77::1:2   y/c 10.77.2.1 fd77::2:1   y/d 10.77.2.2
//!        | eth0                    | eth0                    | eth0                    | eth0
//!   +----|------------------------|-------------------------|-------------------------|----+
//!   |  fg..h0                   fg..h1                    fg..h2                    fg..h3  |
//!   |  node netns: /32 + /128 routes, proxy ARP for 169.254.1.1, fe80::1, forwarding      |
//!   |  fg..h4                   fg..h5                                                    |
//!   +----|------------------------|-------------------------------------------------------+
//!        | eth0                    | eth0
//!   203.0.113.50 (external)   2001:db8:77::50 (external)
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

#[path = "lab_topology/child.rs"]
mod child;
#[path = "lab_topology/sniffer.rs"]
mod sniffer;

use std::collections::BTreeSet;
use std::net::{IpAddr, UdpSocket};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use flowgate::lab::{self, Lab, LabError, LabPod, LabProbe, LabSpec, Observed, Outcome, ProbeEnd};
use flowgate_policy::model::Protocol;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use child::{spawn_child, wait_for_exit};
use sniffer::Sniffer;

const TIMEOUT: Duration = Duration::from_millis(1500);
/// How far past its timeout a probe may return (scheduling on a 2-core VM).
const SLACK: Duration = Duration::from_millis(700);

/// Labs are built one at a time: the checks on `ip netns` and the host must see only their own.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn euid_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn is_root(test: &str) -> bool {
    let root = euid_is_root();
    if !root {
        eprintln!("skipped: needs root ({test} creates network namespaces; CI runs as root)");
    }
    root
}

fn ip_addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn ip(args: &[&str]) -> String {
    let program = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip");
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Interface names of a namespace (`None`: the host's).
fn link_names(netns: Option<&str>) -> BTreeSet<String> {
    let mut args = vec![];
    if let Some(name) = netns {
        args.extend(["-n", name]);
    }
    args.extend(["-o", "link", "show"]);
    ip(&args)
        .lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Lab namespaces of process `pid` still present under /run/netns.
fn lab_netns_of(pid: u32) -> Vec<String> {
    let prefix = format!("fglab-{pid}-");
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

fn pod(key: &str, ips: &[&str]) -> LabPod {
    LabPod {
        key: key.to_owned(),
        ips: ips.iter().map(|s| ip_addr(s)).collect(),
        ports: vec![
            (Protocol::Tcp, 80),
            (Protocol::Udp, 53),
            (Protocol::Sctp, 9000),
        ],
    }
}

/// Four pods in two namespaces (three dual-stack, one IPv4-only) and two externals.
fn spec() -> LabSpec {
    LabSpec {
        pods: vec![
            pod("x/a", &["10.77.1.1", "fd77::1:1"]),
            pod("x/b", &["10.77.1.2", "fd77::1:2"]),
            pod("y/c", &["10.77.2.1", "fd77::2:1"]),
            pod("y/d", &["10.77.2.2"]),
        ],
        externals: vec![ip_addr("203.0.113.50"), ip_addr("2001:db8:77::50")],
        extra_ports: vec![
            (Protocol::Tcp, 8080),
            (Protocol::Udp, 5353),
            (Protocol::Sctp, 7777),
        ],
    }
}

/// Every probe between every ordered pair of endpoints, in every family both have: the
/// destination's own ports (pods) or the extra ports (externals), and ICMP.
fn matrix(lab: &Lab) -> Vec<LabProbe> {
    let endpoints: Vec<_> = lab.endpoints().collect();
    let mut probes = Vec::new();
    for from in &endpoints {
        for to in &endpoints {
            if from.key == to.key {
                continue;
            }
            for &dst in to.ips {
                let Some(&src) = from.ips.iter().find(|s| s.is_ipv4() == dst.is_ipv4()) else {
                    continue;
                };
                let source = match from.kind {
                    lab::EndpointKind::Pod => ProbeEnd::Pod(from.key.to_owned()),
                    lab::EndpointKind::External => ProbeEnd::Ip(src),
                };
                let ports: &[(Protocol, u16)] = match to.kind {
                    lab::EndpointKind::Pod => &[
                        (Protocol::Tcp, 80),
                        (Protocol::Tcp, 8080),
                        (Protocol::Udp, 53),
                        (Protocol::Sctp, 9000),
                    ],
                    lab::EndpointKind::External => &[
                        (Protocol::Tcp, 8080),
                        (Protocol::Udp, 5353),
                        (Protocol::Sctp, 7777),
                    ],
                };
                for &(protocol, port) in ports {
                    probes.push(LabProbe::new(source.clone(), dst, protocol, Some(port)));
                }
                probes.push(LabProbe::new(source.clone(), dst, Protocol::Icmp, None));
            }
        }
    }
    probes
}

fn describe(probe: &LabProbe, seen: &Observed) -> String {
    format!(
        "{} -> {} {} {:?}: {:?} after {:?}",
        probe.from, probe.to, probe.protocol, probe.port, seen.outcome, seen.elapsed
    )
}

#[test]
fn every_protocol_reaches_every_peer_in_both_families() {
    if !is_root("every_protocol_reaches_every_peer_in_both_families") {
        return;
    }
    let _serial = serial();
    let lab = Lab::build(&spec()).unwrap();
    let probes = matrix(&lab);
    let started = Instant::now();
    let results = lab.probe_all(&probes, TIMEOUT);
    let took = started.elapsed();
    let failures: Vec<String> = probes
        .iter()
        .zip(&results)
        .filter(|(_, seen)| seen.outcome != Outcome::Reached)
        .map(|(probe, seen)| describe(probe, seen))
        .collect();
    assert!(
        failures.is_empty(),
        "with no datapath every probe must reach its peer; {} of {} did not:\n{}",
        failures.len(),
        probes.len(),
        failures.join("\n")
    );
    let count = |protocol: Protocol, v6: bool| {
        probes
            .iter()
            .filter(|p| p.protocol == protocol && p.to.is_ipv6() == v6)
            .count()
    };
    for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp, Protocol::Icmp] {
        assert!(
            count(protocol, false) > 0 && count(protocol, true) > 0,
            "{protocol} in both families"
        );
    }
    for (probe, seen) in probes.iter().zip(&results) {
        assert_eq!(
            seen.src.map(|s| s.is_ipv4()),
            Some(probe.to.is_ipv4()),
            "{}",
            describe(probe, seen)
        );
        assert!(seen.src_port.is_some(), "{}", describe(probe, seen));
    }
    eprintln!(
        "{} probes (TCP, UDP, SCTP, ICMP; IPv4 and IPv6) all reached in {took:?}",
        probes.len()
    );
}

#[test]
fn closed_ports_are_refused_and_blackholed_destinations_time_out() {
    if !is_root("closed_ports_are_refused_and_blackholed_destinations_time_out") {
        return;
    }
    let _serial = serial();
    let lab = Lab::build(&spec()).unwrap();
    let from = ProbeEnd::parse("x/a");
    for dst in ["10.77.2.1", "fd77::2:1"].map(ip_addr) {
        for protocol in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            let seen = lab.probe(&from, dst, protocol, Some(4444), TIMEOUT);
            assert_eq!(
                seen.outcome,
                Outcome::Refused,
                "nothing listens on {protocol} {dst}:4444: the peer's stack must refuse (RST, ICMP port unreachable, SCTP ABORT)"
            );
            assert!(
                seen.elapsed < Duration::from_millis(500),
                "a refusal is immediate: {seen:?}"
            );
        }
    }

    // Blackhole y/c in the node: packets to it vanish without an answer.
    let node = lab.node_netns_name().to_owned();
    let host_if = lab.host_ifname("y/c").unwrap().to_owned();
    for (dst, prefix) in [("10.77.2.1", "32"), ("fd77::2:1", "128")] {
        ip(&[
            "-n",
            &node,
            "route",
            "replace",
            "blackhole",
            &format!("{dst}/{prefix}"),
        ]);
    }
    let probes: Vec<LabProbe> = ["10.77.2.1", "fd77::2:1"]
        .map(ip_addr)
        .into_iter()
        .flat_map(|dst| {
            [
                (Protocol::Tcp, Some(80)),
                (Protocol::Udp, Some(53)),
                (Protocol::Sctp, Some(9000)),
                (Protocol::Icmp, None),
            ]
            .map(|(protocol, port)| LabProbe::new(from.clone(), dst, protocol, port))
        })
        .collect();
    let started = Instant::now();
    let results = lab.probe_all(&probes, TIMEOUT);
    for (probe, seen) in probes.iter().zip(&results) {
        assert_eq!(
            seen.outcome,
            Outcome::TimedOut,
            "blackholed: {}",
            describe(probe, seen)
        );
        assert!(
            seen.elapsed >= TIMEOUT && seen.elapsed <= TIMEOUT + SLACK,
            "a timeout must take the bound, no more: {}",
            describe(probe, seen)
        );
    }
    assert!(
        started.elapsed() <= TIMEOUT + SLACK,
        "the probes must run in parallel"
    );

    // Restore the routes: the same probes get through again.
    for (dst, prefix) in [("10.77.2.1", "32"), ("fd77::2:1", "128")] {
        ip(&[
            "-n",
            &node,
            "route",
            "replace",
            &format!("{dst}/{prefix}"),
            "dev",
            &host_if,
        ]);
    }
    for (probe, seen) in probes.iter().zip(lab.probe_all(&probes, TIMEOUT)) {
        assert_eq!(
            seen.outcome,
            Outcome::Reached,
            "after restoring: {}",
            describe(probe, &seen)
        );
    }

    // An address nobody has: the node has no route for it, so nothing is ever reached.
    for dst in ["198.51.100.7", "2001:db8:ffff::7"].map(ip_addr) {
        let seen = lab.probe(&from, dst, Protocol::Tcp, Some(80), TIMEOUT);
        assert!(
            matches!(seen.outcome, Outcome::Unreachable | Outcome::TimedOut),
            "{dst} is outside the lab: {seen:?}"
        );
        assert!(seen.elapsed <= TIMEOUT + SLACK, "{seen:?}");
    }

    // Probes that cannot be attempted say why instead of pretending to be a deny.
    let unknown = lab.probe(
        &ProbeEnd::parse("x/zz"),
        ip_addr("10.77.1.2"),
        Protocol::Tcp,
        Some(80),
        TIMEOUT,
    );
    assert!(
        matches!(
            unknown.outcome,
            Outcome::Failed(lab::ProbeFailure::UnknownSource { .. })
        ),
        "{unknown:?}"
    );
    let no_v6 = lab.probe(
        &ProbeEnd::parse("y/d"),
        ip_addr("fd77::1:1"),
        Protocol::Tcp,
        Some(80),
        TIMEOUT,
    );
    assert!(
        matches!(
            no_v6.outcome,
            Outcome::Failed(lab::ProbeFailure::NoSourceAddress { .. })
        ),
        "{no_v6:?}"
    );
}

#[test]
fn the_lab_is_sealed_and_leaves_the_host_untouched() {
    if !is_root("the_lab_is_sealed_and_leaves_the_host_untouched") {
        return;
    }
    let _serial = serial();
    let host_links = link_names(None);
    let host_routes = (
        ip(&["-4", "route", "show", "table", "all"]),
        ip(&["-6", "route", "show", "table", "all"]),
    );
    let host_forwarding = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let host_addrs: Vec<IpAddr> = ip(&["-o", "addr", "show", "scope", "global"])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(3))
        .filter_map(|cidr| cidr.split('/').next()?.parse().ok())
        .collect();

    let lab = Lab::build(&spec()).unwrap();
    let node = lab.node_netns_name().to_owned();
    assert_eq!(lab.node_netns(), Path::new("/run/netns").join(&node));
    let veths: BTreeSet<String> = lab.endpoints().map(|e| e.host_ifname.to_owned()).collect();
    assert_eq!(veths.len(), 6);
    assert!(
        veths
            .iter()
            .all(|name| name.starts_with("fg") && name.len() <= 15),
        "{veths:?}"
    );

    // The node: only lo and the host veths, no default route, forwarding on.
    let expected: BTreeSet<String> = veths.iter().cloned().chain(["lo".to_owned()]).collect();
    assert_eq!(
        link_names(Some(&node)),
        expected,
        "the node holds lo and the host veths only"
    );
    for family in ["-4", "-6"] {
        let default = ip(&["-n", &node, family, "route", "show", "default"]);
        assert!(
            default.trim().is_empty(),
            "the node must have no default route ({family}): {default}"
        );
    }
    assert_eq!(lab.node_sysctl("net/ipv4/ip_forward").unwrap(), "1");
    assert_eq!(
        lab.node_sysctl("net/ipv6/conf/all/forwarding").unwrap(),
        "1"
    );
    for endpoint in lab.endpoints() {
        let shown = ip(&[
            "-n",
            &node,
            "-o",
            "link",
            "show",
            "dev",
            endpoint.host_ifname,
        ]);
        assert!(
            shown.starts_with(&format!("{}: ", endpoint.host_ifindex)),
            "ifindex of {}: {shown}",
            endpoint.key
        );
        let if_key = format!("net/ipv4/conf/{}/proxy_arp", endpoint.host_ifname);
        assert_eq!(
            lab.node_sysctl(&if_key).unwrap(),
            "1",
            "proxy ARP on {}",
            endpoint.host_ifname
        );
        let netns = endpoint.netns.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            link_names(Some(netns)),
            BTreeSet::from(["lo".to_owned(), "eth0".to_owned()])
        );
        assert_eq!(
            lab.endpoint_sysctl(endpoint.key, "net/ipv4/ip_forward")
                .unwrap(),
            "0",
            "{}",
            endpoint.key
        );
        assert_eq!(lab.in_endpoint(endpoint.key, || 7).unwrap(), 7);
    }
    assert!(
        link_names(None).is_disjoint(&veths),
        "no lab interface in the host namespace"
    );
    assert_eq!(lab.in_node(|| 42).unwrap(), 42);

    // Traffic: the whole matrix plus probes at the host's own addresses, with a sniffer on
    // every host interface. Not one frame to or from a lab address may show up there.
    let mut watched: BTreeSet<IpAddr> = lab
        .endpoints()
        .flat_map(|e| e.ips.iter().copied())
        .collect();
    watched.insert(IpAddr::from(lab::GATEWAY_V4));
    let control = UdpSocket::bind("127.0.0.1:0").unwrap();
    let control_port = control.local_addr().unwrap().port();
    let sniffer = Sniffer::start(watched, control_port);
    let mut probes = matrix(&lab);
    for &addr in &host_addrs {
        for from in ["x/a", "y/d"] {
            probes.push(LabProbe::new(
                ProbeEnd::parse(from),
                addr,
                Protocol::Tcp,
                Some(22),
            ));
            probes.push(LabProbe::new(
                ProbeEnd::parse(from),
                addr,
                Protocol::Icmp,
                None,
            ));
        }
    }
    let results = lab.probe_all(&probes, TIMEOUT);
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"control", ("127.0.0.1", control_port))
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let (leaked, control_seen) = sniffer.finish();
    assert!(
        control_seen > 0,
        "the sniffer must see the control datagram on the host's lo"
    );
    assert!(
        leaked.is_empty(),
        "lab packets showed up in the host namespace: {leaked:?}"
    );
    for (probe, seen) in probes.iter().zip(&results) {
        let reached = seen.outcome == Outcome::Reached;
        assert_eq!(
            reached,
            !host_addrs.contains(&probe.to),
            "{}",
            describe(probe, seen)
        );
    }

    // Teardown: the namespaces go; the host is as it was.
    let names = lab_netns_of(std::process::id());
    assert_eq!(names.len(), 7, "node + 6 endpoints: {names:?}");
    lab.teardown().unwrap();
    assert!(
        lab_netns_of(std::process::id()).is_empty(),
        "all lab namespaces removed"
    );
    let listed = ip(&["netns", "list"]);
    assert!(
        !names.iter().any(|name| listed.contains(name.as_str())),
        "ip netns list: {listed}"
    );
    assert_eq!(link_names(None), host_links, "host interfaces unchanged");
    assert_eq!(
        (
            ip(&["-4", "route", "show", "table", "all"]),
            ip(&["-6", "route", "show", "table", "all"])
        ),
        host_routes,
        "host routes unchanged"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        host_forwarding
    );
}

#[test]
fn a_failed_build_removes_what_it_made() {
    if !is_root("a_failed_build_removes_what_it_made") {
        return;
    }
    let _serial = serial();
    let pid = std::process::id();
    let first = Lab::build(&spec()).unwrap();
    let next_seq = first.id().seq + 1;
    drop(first);
    assert!(lab_netns_of(pid).is_empty(), "Drop removes every namespace");
    // Occupy the name the next lab will give its second endpoint: its creation fails midway,
    // after the node and the first endpoint exist.
    let blocker = Path::new("/run/netns").join(format!("fglab-{pid}-{next_seq}-e1-x-b"));
    std::fs::write(&blocker, b"").unwrap();
    let result = Lab::build(&spec());
    let leftover = lab_netns_of(pid);
    let _ = std::fs::remove_file(&blocker);
    match result {
        Err(error @ LabError::IpFailed { .. }) => {
            let message = error.to_string();
            let LabError::IpFailed { stderr, line, .. } = error else {
                unreachable!()
            };
            assert!(stderr.contains("File exists"), "{stderr}");
            let name = blocker.file_name().unwrap().to_str().unwrap();
            assert_eq!(
                line,
                Some(format!("netns add {name}")),
                "the error names the failed step"
            );
            eprintln!("as reported: {message}");
        }
        other => panic!("expected the build to fail creating {blocker:?}, got {other:?}"),
    }
    assert!(
        leftover.is_empty(),
        "a failed build must remove what it made: {leftover:?}"
    );
}

#[test]
fn ten_pods_build_and_tear_down_quickly() {
    if !is_root("ten_pods_build_and_tear_down_quickly") {
        return;
    }
    let _serial = serial();
    let pods = (1..=10)
        .map(|i| {
            pod(
                &format!("ns{}/pod{i}", i % 3),
                &[&format!("10.78.0.{i}"), &format!("fd78::{i}")],
            )
        })
        .collect();
    let spec = LabSpec {
        pods,
        ..LabSpec::default()
    };
    let started = Instant::now();
    let lab = Lab::build(&spec).unwrap();
    let built = started.elapsed();
    let seen = lab.probe(
        &ProbeEnd::parse("ns1/pod1"),
        ip_addr("fd78::10"),
        Protocol::Sctp,
        Some(9000),
        TIMEOUT,
    );
    assert_eq!(seen.outcome, Outcome::Reached, "{seen:?}");
    let started = Instant::now();
    lab.teardown().unwrap();
    let removed = started.elapsed();
    eprintln!("10-pod dual-stack lab: built in {built:?}, torn down in {removed:?}");
    assert!(built < Duration::from_secs(20) && removed < Duration::from_secs(10));
    assert!(lab_netns_of(std::process::id()).is_empty());
}

#[test]
fn ctrl_c_removes_the_lab_and_the_process_still_dies_of_sigint() {
    if !is_root("ctrl_c_removes_the_lab_and_the_process_still_dies_of_sigint") {
        return;
    }
    let _serial = serial();
    let (mut child, _) = spawn_child("interrupt");
    let pid = child.0.id();
    assert!(!lab_netns_of(pid).is_empty());
    kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGINT).unwrap();
    let status = wait_for_exit(&mut child.0);
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "re-raised SIGINT: {status:?}"
    );
    assert!(
        lab_netns_of(pid).is_empty(),
        "the handler removed the lab: {:?}",
        lab_netns_of(pid)
    );
}

#[test]
fn a_killed_owners_lab_is_removed_by_the_next_build() {
    if !is_root("a_killed_owners_lab_is_removed_by_the_next_build") {
        return;
    }
    let _serial = serial();
    let (mut child, _) = spawn_child("hold");
    let pid = child.0.id();
    child.0.kill().unwrap(); // SIGKILL: no handler, no Drop
    let _ = wait_for_exit(&mut child.0); // reaped: the pid no longer exists
    let stale = lab_netns_of(pid);
    assert_eq!(
        stale.len(),
        3,
        "SIGKILL leaves the child's namespaces behind: {stale:?}"
    );
    let lab = Lab::build(&small_spec()).unwrap();
    for name in &stale {
        assert!(
            lab.stale_removed().contains(name),
            "{name} not in {:?}",
            lab.stale_removed()
        );
    }
    assert!(lab_netns_of(pid).is_empty(), "stale namespaces removed");
}

#[test]
fn without_privileges_the_build_refuses_and_says_why() {
    if !euid_is_root() {
        // Not root: this process is the unprivileged case itself.
        let error = Lab::build(&small_spec()).unwrap_err();
        assert!(matches!(error, LabError::NotPrivileged { .. }), "{error}");
        return;
    }
    let _serial = serial();
    // Root: run the helper as `nobody`, whose effective capabilities are empty.
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "lab_child_process", "--nocapture"])
        .env("FLOWGATE_LAB_CHILD", "unprivileged")
        .uid(65_534)
        .gid(65_534)
        .output();
    let output = match output {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("skipped: nobody cannot execute the test binary here ({error})");
            return;
        }
        Err(error) => panic!("running the helper as nobody: {error}"),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let refused = stdout
        .lines()
        .find_map(|line| {
            line.split_once("REFUSED ")
                .map(|(_, message)| message.to_owned())
        })
        .unwrap_or_else(|| panic!("the helper must report a refusal; it printed:\n{stdout}"));
    assert!(
        refused.contains("needs root") && refused.contains("CAP_NET_ADMIN"),
        "the refusal must say what is missing: {refused}"
    );
    assert!(output.status.success(), "{output:?}");
    eprintln!("as nobody: {refused}");
}

fn small_spec() -> LabSpec {
    LabSpec {
        pods: vec![pod("c/one", &["10.79.0.1"]), pod("c/two", &["10.79.0.2"])],
        ..LabSpec::default()
    }
}

#[test]
#[ignore = "helper process for the Ctrl-C and stale-lab tests, which run it themselves"]
fn lab_child_process() {
    let Ok(mode) = std::env::var("FLOWGATE_LAB_CHILD") else {
        eprintln!(
            "skipped: helper process; the Ctrl-C and stale-lab tests run it with FLOWGATE_LAB_CHILD"
        );
        return;
    };
    if mode == "unprivileged" {
        let error = Lab::build(&small_spec()).unwrap_err();
        assert!(matches!(error, LabError::NotPrivileged { .. }), "{error}");
        println!("REFUSED {error}");
        return;
    }
    if mode == "interrupt" {
        lab::install_interrupt_cleanup().unwrap();
    }
    let lab = Lab::build(&small_spec()).unwrap();
    println!("LAB-READY {}", lab.node_netns_name());
    thread::sleep(Duration::from_secs(30));
    drop(lab);
}
