//! Finding each pod's host-side interface (`flowgate::discovery`) in real lab nodes, routed and
//! bridged: every pod resolves to exactly its own host veth with the right wiring; a bridged pod
//! nobody has talked to is `Pending` and resolves once the kernel has resolved its neighbour —
//! with no IPv4 packet sent to the pod; routes that lead nowhere, via a gateway or to a device
//! that is not a pod's give precise errors; and the tracker follows pods and recreated veths.
//! Needs root (CI runs as root); without it every test prints "skipped: ..." and passes.
//!
//! ```text
//!   x/a 10.81.1.1          x/b 10.81.1.2          y/c 10.81.2.1 fd81::2:1 (dual stack)
//!        | eth0                 | eth0                 | eth0
//!   +----|----------------------|----------------------|-----------------------------------+
//!   |  fg..h0                fg..h1                 fg..h2          node netns             |
//!   |  routed:  10.81.1.1/32 dev h0, 10.81.1.2/32 dev h1, 10.81.2.1/32 + fd81::2:1/128 dev h2 |
//!   |  bridged: h0 h1 h2 ports of cni0; 10.81.1.0/24, 10.81.2.0/24, fd81::/64 dev cni0       |
//!   +--------------------------------------------------------------------------------------+
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use flowgate::discovery::{
    self, DiscoveryError, HostInterface, InterfaceTracker, PendingOn, Wiring,
};
use flowgate::lab::{EndpointKind, Lab, LabPod, LabSpec, LabWiring};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, veths, netlink changes)");
            return;
        }
    };
}

fn ip_addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn iproute_binary(program: &str) -> String {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .into_iter()
        .map(|dir| format!("{dir}/{program}"))
        .find(|p| Path::new(p).exists())
        .unwrap_or_else(|| program.to_owned())
}

/// Runs an iproute2 program (`ip`, `bridge`) and returns its stdout; panics with its stderr.
fn iproute(program: &str, args: &[&str]) -> String {
    let output = Command::new(iproute_binary(program))
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn pod(key: &str, ips: &[&str]) -> LabPod {
    LabPod {
        key: key.to_owned(),
        ips: ips.iter().map(|ip| ip_addr(ip)).collect(),
        ports: Vec::new(),
    }
}

fn spec() -> LabSpec {
    LabSpec {
        pods: vec![
            pod("x/a", &["10.81.1.1"]),
            pod("x/b", &["10.81.1.2"]),
            pod("y/c", &["10.81.2.1", "fd81::2:1"]),
        ],
        ..LabSpec::default()
    }
}

/// What each pod of `lab` must resolve to: its own host veth.
fn expected(lab: &Lab, wiring: &Wiring) -> Vec<(String, Vec<IpAddr>, HostInterface)> {
    lab.endpoints()
        .filter(|endpoint| endpoint.kind == EndpointKind::Pod)
        .map(|endpoint| {
            (
                endpoint.key.to_owned(),
                endpoint.ips.to_vec(),
                HostInterface {
                    ifindex: endpoint.host_ifindex,
                    ifname: endpoint.host_ifname.to_owned(),
                    wiring: wiring.clone(),
                },
            )
        })
        .collect()
}

fn find(lab: &Lab, ip: IpAddr) -> Result<HostInterface, DiscoveryError> {
    lab.in_node(|| discovery::find_host_interface(ip)).unwrap()
}

/// Resolves `ip` until it is no longer pending (the kernel answers ARP/NDP in microseconds;
/// the bound is for a loaded CI machine), returning the first answer and the final one.
fn find_until_resolved(
    lab: &Lab,
    ip: IpAddr,
) -> (
    Result<HostInterface, DiscoveryError>,
    Result<HostInterface, DiscoveryError>,
) {
    let first = find(lab, ip);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = find(lab, ip);
    while last.as_ref().is_err_and(DiscoveryError::is_pending) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        last = find(lab, ip);
    }
    (first, last)
}

/// A counter of an endpoint's namespace from `/proc/thread-self/net/<file>` (`/proc/net` is the
/// process's namespace, not the thread's): `Ip` + `InReceives` in snmp, `Ip6InReceives` in snmp6.
fn counter(lab: &Lab, key: &str, file: &str, name: &str) -> u64 {
    counters(lab, key, file, &[name])[0]
}

/// Several counters of one endpoint from a single read of its `/proc/net/{file}`, so they
/// describe the same instant (separate reads let a packet land between them).
fn counters<const N: usize>(lab: &Lab, key: &str, file: &str, names: &[&str; N]) -> [u64; N] {
    let text = lab
        .in_endpoint(key, || {
            std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap()
        })
        .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    names.map(|name| {
        if file == "snmp6" {
            return lines
                .iter()
                .find_map(|line| {
                    let (field, value) = line.split_once(char::is_whitespace)?;
                    (field == name).then(|| value.trim().parse().unwrap())
                })
                .unwrap_or_else(|| panic!("{name} not in {file}"));
        }
        let (group, field) = name.split_once('.').unwrap();
        let header = lines
            .iter()
            .position(|line| line.starts_with(&format!("{group}:")))
            .unwrap();
        let names: Vec<&str> = lines[header].split_whitespace().collect();
        let values: Vec<&str> = lines[header + 1].split_whitespace().collect();
        let index = names.iter().position(|n| *n == field).unwrap();
        values[index].parse().unwrap()
    })
}

#[test]
fn routed_pods_resolve_to_their_own_veths() {
    require_root!();
    let lab = Lab::build(&spec()).unwrap();
    for (key, ips, want) in expected(&lab, &Wiring::Routed) {
        for ip in &ips {
            assert_eq!(
                find(&lab, *ip).unwrap(),
                want,
                "{key} ({ip}) must resolve to its own host veth"
            );
        }
        let whole = lab
            .in_node(|| discovery::Resolver::open().unwrap().resolve_pod(&ips))
            .unwrap();
        assert_eq!(whole.unwrap(), want, "{key} with all its IPs");
    }
}

#[test]
fn bridged_pods_are_pending_until_the_kernel_resolves_them_without_an_ip_packet() {
    require_root!();
    let lab = Lab::build_wired(&spec(), LabWiring::Bridged).unwrap();
    assert_eq!(lab.bridge(), Some("cni0"));
    let node = lab.node_netns_name().to_owned();
    let bridged = Wiring::Bridged {
        bridge: "cni0".into(),
    };
    // Nobody has talked to the pods; make sure the node holds no neighbour entry either.
    iproute("ip", &["-n", &node, "neigh", "flush", "dev", "cni0"]);
    let v4_before: Vec<u64> = expected(&lab, &bridged)
        .iter()
        .map(|(key, _, _)| counter(&lab, key, "snmp", "Ip.InReceives"))
        .collect();
    // One read for all three, and only once two reads 50 ms apart agree: the node's own IPv6
    // (router solicitations, MLD reports) reaches the pod at any time, and a multicast packet
    // counted between two separate reads once made `multicast` exceed `received`.
    let v6 = |lab: &Lab| {
        let names = ["Ip6InReceives", "Ip6InMcastPkts", "Icmp6InNeighborSolicits"];
        let mut last = counters(lab, "y/c", "snmp6", &names);
        for _ in 0..40 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = counters(lab, "y/c", "snmp6", &names);
            if now == last {
                return now.map(|n| n as i64);
            }
            last = now;
        }
        panic!("y/c: IPv6 counters never settled for 2 s: {last:?}");
    };
    let v6_before = v6(&lab);

    for (key, ips, want) in expected(&lab, &bridged) {
        for ip in ips {
            let (first, last) = find_until_resolved(&lab, ip);
            assert!(
                matches!(
                    &first,
                    Err(DiscoveryError::Pending { ip: pending, bridge, what: PendingOn::Neighbour { .. } })
                        if *pending == ip && bridge == "cni0"
                ),
                "{key} ({ip}): before any traffic the node has no neighbour entry: {first:?}"
            );
            assert_eq!(
                last.unwrap(),
                want,
                "{key} ({ip}) resolves to its own bridge port once the neighbour is resolved"
            );
        }
    }
    for ((key, _, _), before) in expected(&lab, &bridged).iter().zip(&v4_before) {
        assert_eq!(
            counter(&lab, key, "snmp", "Ip.InReceives"),
            *before,
            "{key}: resolution must not send any IPv4 packet to the pod (ARP only)"
        );
    }
    let v6_after = v6(&lab);
    let [received, multicast, solicitations] = [0, 1, 2].map(|i| v6_after[i] - v6_before[i]);
    assert!(
        received - multicast <= solicitations,
        "y/c: every unicast IPv6 packet the pod got during resolution was a neighbour \
         solicitation (received {received}, multicast {multicast}, solicitations {solicitations})"
    );

    // A known neighbour whose FDB entry is gone (aged out): pending, re-probed, resolved. x/a
    // is silenced first (no IPv6: no router solicitations or MLD reports of its own), so only
    // the re-probe's answer can teach the bridge its port again.
    lab.in_endpoint("x/a", || {
        std::fs::write("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1").unwrap();
    })
    .unwrap();
    let (_, _, a) = &expected(&lab, &bridged)[0];
    let neighbour = iproute(
        "ip",
        &["-n", &node, "neigh", "get", "10.81.1.1", "dev", "cni0"],
    );
    let mac = neighbour
        .split_whitespace()
        .skip_while(|word| *word != "lladdr")
        .nth(1)
        .unwrap()
        .to_owned();
    let received = counter(&lab, "x/a", "snmp", "Ip.InReceives");
    iproute(
        "bridge",
        &["-n", &node, "fdb", "del", &mac, "dev", &a.ifname, "master"],
    );
    let (first, last) = find_until_resolved(&lab, ip_addr("10.81.1.1"));
    assert!(
        matches!(
            &first,
            Err(DiscoveryError::Pending {
                what: PendingOn::BridgePort {
                    triggered: true,
                    ..
                },
                ..
            })
        ),
        "the MAC is known but not in the FDB: {first:?}"
    );
    assert_eq!(
        last.unwrap(),
        *a,
        "re-learned on its port after the re-probe"
    );
    assert_eq!(
        counter(&lab, "x/a", "snmp", "Ip.InReceives"),
        received,
        "the re-probe is ARP too"
    );
}

#[test]
fn routes_that_do_not_lead_to_a_pod_give_precise_errors() {
    require_root!();
    let lab = Lab::build(&spec()).unwrap();
    let node = lab.node_netns_name().to_owned();
    let a = lab.host_ifname("x/a").unwrap().to_owned();
    for line in [
        "route add 198.51.100.0/24 via 10.81.1.1".to_owned(),
        // A Flannel-style overlay device (no remote, no underlay: it can send nothing). The
        // kernel here has no `dummy` module; vxlan is the realistic case anyway.
        "link add fgdisc0 type vxlan id 42 dstport 4789".to_owned(),
        "link set fgdisc0 up".to_owned(),
        "route add 192.0.2.200/32 dev fgdisc0".to_owned(),
        // A device without a kind, like a node's physical eth0.
        "route add 192.0.2.202/32 dev lo".to_owned(),
        "route add blackhole 192.0.2.201/32".to_owned(),
    ] {
        let args: Vec<&str> = ["-n", node.as_str()]
            .into_iter()
            .chain(line.split_whitespace())
            .collect();
        iproute("ip", &args);
    }

    for probe in [
        "192.0.2.77",
        "fd99::1",
        "192.0.2.201",
        "198.51.100.7",
        "192.0.2.200",
        "192.0.2.202",
    ] {
        let error = find(&lab, ip_addr(probe)).unwrap_err();
        eprintln!("{probe}: {error}");
    }
    for missing in ["192.0.2.77", "fd99::1", "192.0.2.201"] {
        let error = find(&lab, ip_addr(missing)).unwrap_err();
        assert!(
            matches!(&error, DiscoveryError::NoRoute { ip, .. } if *ip == ip_addr(missing)),
            "{missing}: {error:?}"
        );
        assert!(error.to_string().contains(missing), "{error}");
    }
    let error = find(&lab, ip_addr("198.51.100.7")).unwrap_err();
    match &error {
        DiscoveryError::ViaGateway { ip, gateway, dev } => {
            assert_eq!(*ip, ip_addr("198.51.100.7"));
            assert_eq!(*gateway, ip_addr("10.81.1.1"));
            assert_eq!(*dev, a, "the gateway's device");
        }
        other => panic!("198.51.100.7 is routed via a gateway: {other:?}"),
    }
    let error = find(&lab, ip_addr("192.0.2.200")).unwrap_err();
    match &error {
        DiscoveryError::UnsupportedDevice { ip, dev, kind, .. } => {
            assert_eq!(*ip, ip_addr("192.0.2.200"));
            assert_eq!(dev, "fgdisc0");
            assert_eq!(kind, "vxlan");
        }
        other => panic!("192.0.2.200 is routed to a vxlan device: {other:?}"),
    }
    assert!(error.to_string().contains("fgdisc0 (ifindex"), "{error}");
    let error = find(&lab, ip_addr("192.0.2.202")).unwrap_err();
    assert!(
        matches!(&error, DiscoveryError::UnsupportedDevice { dev, kind, .. }
            if dev == "lo" && kind.starts_with("kindless")),
        "192.0.2.202 is routed to lo: {error:?}"
    );
}

#[test]
fn the_tracker_follows_pods_and_recreated_veths() {
    require_root!();
    let lab = Lab::build(&spec()).unwrap();
    let node = lab.node_netns_name().to_owned();
    let want = expected(&lab, &Wiring::Routed);
    let mut desired: Vec<(String, Vec<IpAddr>)> = want
        .iter()
        .map(|(key, ips, _)| (key.clone(), ips.clone()))
        .collect();
    desired.push(("x/ghost".to_owned(), vec![ip_addr("10.81.9.9")]));
    let mut tracker = InterfaceTracker::new();
    let reconcile = |tracker: &mut InterfaceTracker, desired: &[(String, Vec<IpAddr>)]| {
        lab.in_node(|| tracker.reconcile(desired)).unwrap()
    };

    let first = reconcile(&mut tracker, &desired);
    let attached: Vec<(String, HostInterface)> = want
        .iter()
        .map(|(key, _, interface)| (key.clone(), interface.clone()))
        .collect();
    assert_eq!(first.attach, attached, "every pod on its own veth");
    assert!(first.detach.is_empty());
    assert!(
        matches!(first.unresolved.as_slice(), [(pod, DiscoveryError::NoRoute { .. })] if pod == "x/ghost"),
        "{:?}",
        first.unresolved
    );

    // x/a's veth is deleted and recreated (a new ifindex under the same name).
    let (_, _, old) = &want[0];
    let pod_netns = lab.endpoint("x/a").unwrap().netns.to_owned();
    let pod_netns = pod_netns.file_name().unwrap().to_str().unwrap();
    iproute("ip", &["-n", &node, "link", "del", &old.ifname]);
    let script = format!(
        "link add {h} type veth peer name eth0 netns {pod_netns}\nlink set {h} up\n\
         route add 10.81.1.1/32 dev {h}\n",
        h = old.ifname
    );
    let mut batch = Command::new(iproute_binary("ip"))
        .args(["-n", &node, "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut batch.stdin.take().unwrap(), script.as_bytes()).unwrap();
    assert!(batch.wait().unwrap().success(), "recreating {}", old.ifname);
    let new_ifindex: u32 = iproute(
        "ip",
        &["-n", &node, "-o", "link", "show", "dev", &old.ifname],
    )
    .split(':')
    .next()
    .unwrap()
    .trim()
    .parse()
    .unwrap();
    assert_ne!(new_ifindex, old.ifindex);

    // ... and x/ghost's route appears: it resolves on this pass.
    let ghost = "fgdiscg0";
    iproute(
        "ip",
        &[
            "-n", &node, "link", "add", ghost, "type", "veth", "peer", "name", "fgdiscg1",
        ],
    );
    iproute("ip", &["-n", &node, "link", "set", ghost, "up"]);
    iproute("ip", &["-n", &node, "link", "set", "fgdiscg1", "up"]);
    iproute(
        "ip",
        &["-n", &node, "route", "add", "10.81.9.9/32", "dev", ghost],
    );

    let second = reconcile(&mut tracker, &desired);
    assert_eq!(
        second.detach,
        [("x/a".to_owned(), old.clone())],
        "{second:?}"
    );
    let recreated = HostInterface {
        ifindex: new_ifindex,
        ..old.clone()
    };
    assert_eq!(second.attach.len(), 2, "{second:?}");
    assert!(
        second
            .attach
            .contains(&("x/a".to_owned(), recreated.clone())),
        "{second:?}"
    );
    assert!(
        second
            .attach
            .iter()
            .any(|(pod, interface)| pod == "x/ghost" && interface.ifname == ghost),
        "{second:?}"
    );
    assert!(second.unresolved.is_empty(), "{second:?}");

    let quiet = reconcile(&mut tracker, &desired);
    assert!(quiet.is_empty(), "nothing changed: {quiet:?}");

    // x/b is no longer wanted.
    desired.retain(|(pod, _)| pod != "x/b");
    let third = reconcile(&mut tracker, &desired);
    assert_eq!(third.detach, [("x/b".to_owned(), want[1].2.clone())]);
    assert!(third.attach.is_empty() && third.unresolved.is_empty());
    assert_eq!(tracker.get("x/a"), Some(&recreated));
    assert_eq!(tracker.len(), 3);
}

#[test]
fn the_tracker_retries_a_pending_bridged_pod_until_it_resolves() {
    require_root!();
    let lab = Lab::build_wired(&spec(), LabWiring::Bridged).unwrap();
    iproute(
        "ip",
        &["-n", lab.node_netns_name(), "neigh", "flush", "dev", "cni0"],
    );
    let want = expected(
        &lab,
        &Wiring::Bridged {
            bridge: "cni0".into(),
        },
    );
    let desired: Vec<(String, Vec<IpAddr>)> = want
        .iter()
        .map(|(key, ips, _)| (key.clone(), ips.clone()))
        .collect();
    let mut tracker = InterfaceTracker::new();
    let first = lab.in_node(|| tracker.reconcile(&desired)).unwrap();
    assert!(first.attach.is_empty(), "nothing resolved yet: {first:?}");
    assert_eq!(first.unresolved.len(), want.len(), "{first:?}");
    assert!(
        first.unresolved.iter().all(|(_, error)| error.is_pending()),
        "{first:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(5);
    let mut attached = Vec::new();
    while attached.len() < want.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let changes = lab.in_node(|| tracker.reconcile(&desired)).unwrap();
        assert!(changes.detach.is_empty(), "{changes:?}");
        attached.extend(changes.attach);
    }
    attached.sort_by(|a, b| a.0.cmp(&b.0));
    let expected: Vec<(String, HostInterface)> = want
        .into_iter()
        .map(|(key, _, interface)| (key, interface))
        .collect();
    assert_eq!(
        attached, expected,
        "every pod attached to its own bridge port"
    );
}
