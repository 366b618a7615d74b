//! The bridged, Flannel-style lab node: every endpoint reaches every other in both families
//! (pods of one subnet, of other subnets, externals inside and outside a pod subnet) with no
//! route out of the node; with the real datapath on the bridge ports, `flowgate lab --wiring
//! bridged` on the three-tier example gives observed == expected for every probe, with flow
//! events; and traffic between two pods of one /24 is switched by the bridge (the node's IP
//! stack forwards nothing) while TC on the ports still sees and decides it. Needs root (CI runs
//! as root); without it: "skipped: ...".
//!
//! ```text
//!   pod a 10.244.5.2/24     pod b 10.244.5.3/24      (one subnet: layer 2 between them)
//!        | eth0                  | eth0
//!   +----|-----------------------|------------------------------------------------+
//!   |  fg..h0 (port)          fg..h1 (port)   <- the datapath: TC ingress/egress  |
//!   |  +------------------------------------------+                               |
//!   |  | cni0 169.254.1.1/32 fe80::1/64 (bridge)  |  10.244.5.0/24 dev cni0       |
//!   |  +------------------------------------------+        node netns             |
//!   +-----------------------------------------------------------------------------+
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use std::net::IpAddr;

use flowgate::lab::{Lab, LabPod, LabProbe, LabSpec, LabWiring, Outcome, ProbeEnd};
use flowgate::node::Node;
use flowgate_flows::record::{Direction, Verdict as RecVerdict};
use flowgate_policy::maps::Mode;
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, veths, eBPF)");
            return;
        }
    };
}

/// iproute2's `ip`, also where PATH lacks the sbin directories.
fn ip_command() -> Command {
    let program = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("ip");
    Command::new(program)
}

fn ip_addr(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[test]
fn every_endpoint_reaches_every_other_through_the_bridge_and_nothing_leaves() {
    require_root!();
    let pod = |key: &str, ips: &[&str]| LabPod {
        key: key.to_owned(),
        ips: ips.iter().map(|ip| ip_addr(ip)).collect(),
        ports: Vec::new(),
    };
    let spec = LabSpec {
        pods: vec![
            pod("x/a", &["10.82.1.1", "fd82::1:1"]),
            pod("x/b", &["10.82.1.2", "fd82::1:2"]),
            // Another /24 and /64 on the same bridge: reached via the gateway on cni0.
            pod("y/c", &["10.83.0.7", "fd83::7"]),
        ],
        // Externals inside a pod subnet (proxy ARP / proxy NDP on cni0) and outside.
        externals: vec![
            ip_addr("10.82.1.99"),
            ip_addr("fd82::1:99"),
            ip_addr("203.0.113.60"),
        ],
        extra_ports: vec![(Protocol::Tcp, 8080), (Protocol::Udp, 5353)],
    };
    let lab = Lab::build_wired(&spec, LabWiring::Bridged).unwrap();
    assert_eq!(lab.wiring(), LabWiring::Bridged);
    let mut probes = Vec::new();
    for from in lab.endpoints() {
        for to in lab.endpoints().filter(|to| to.key != from.key) {
            for &dst in to.ips {
                if !from.ips.iter().any(|src| src.is_ipv4() == dst.is_ipv4()) {
                    continue;
                }
                for (protocol, port) in [
                    (Protocol::Tcp, Some(8080)),
                    (Protocol::Udp, Some(5353)),
                    (Protocol::Icmp, None),
                ] {
                    probes.push(LabProbe::new(
                        ProbeEnd::parse(from.key),
                        dst,
                        protocol,
                        port,
                    ));
                }
            }
        }
    }
    assert!(probes.len() > 60, "{} probes", probes.len());
    let seen = lab.probe_all(&probes, Duration::from_millis(1500));
    let failed: Vec<String> = probes
        .iter()
        .zip(&seen)
        .filter(|(_, seen)| seen.outcome != Outcome::Reached)
        .map(|(probe, seen)| {
            format!(
                "{} -> {} {:?}/{:?}: {:?}",
                probe.from, probe.to, probe.protocol, probe.port, seen.outcome
            )
        })
        .collect();
    assert!(failed.is_empty(), "not reached:\n{}", failed.join("\n"));

    // Sealed: no default route, and no interface but lo, cni0 and the lab's veths.
    let node = lab.node_netns_name();
    for family in ["-4", "-6"] {
        let routes = ip_command()
            .args([family, "-n", node, "route", "show", "default"])
            .output()
            .unwrap();
        assert!(routes.status.success());
        assert!(
            routes.stdout.is_empty(),
            "the node has no default route ({family})"
        );
    }
    let links = ip_command()
        .args(["-n", node, "-o", "link", "show"])
        .output()
        .unwrap();
    let mut names: Vec<String> = String::from_utf8_lossy(&links.stdout)
        .lines()
        .map(|line| {
            let name = line.split(':').nth(1).unwrap().trim();
            name.split('@').next().unwrap().to_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = lab
        .endpoints()
        .map(|endpoint| endpoint.host_ifname.to_owned())
        .chain(["cni0".to_owned(), "lo".to_owned()])
        .collect();
    expected.sort();
    assert_eq!(names, expected, "the node's interfaces");
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn the_three_tier_example_behaves_on_a_bridged_node_as_the_policies_say() {
    require_root!();
    let dir = root().join("examples/three-tier");
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    for (key, _) in std::env::vars() {
        if key.starts_with("FLOWGATE_") {
            command.env_remove(key);
        }
    }
    let out = command
        .current_dir(root())
        .args([
            "lab",
            "-q",
            "--wiring",
            "bridged",
            "--timeout-ms",
            "500",
            "-o",
            "json",
        ])
        .arg("--manifests")
        .arg(&dir)
        .arg("--probes")
        .arg(dir.join("probes.json"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "flowgate lab --wiring bridged failed:\n{stderr}"
    );
    let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let probes: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("probes.json")).unwrap()).unwrap();
    assert_eq!(results.len(), probes.len(), "one result per probe");
    let mut pod_to_pod_denies = 0;
    for (r, p) in results.iter().zip(&probes) {
        let what = format!("{} -> {} {}", p["from"], p["to"], p["port"]);
        assert_eq!(r["matches"], true, "{what}: {r:#}");
        assert_eq!(
            r["expected"], p["expect"],
            "{what}: the example's own expectation"
        );
        assert_eq!(r["observed"], r["expected"], "{what}");
        let events = r["events"].as_array().unwrap();
        let from_pod = p["from"].as_str().unwrap().contains('/');
        let to_pod = p["to"].as_str().unwrap().contains('/');
        if from_pod || to_pod {
            assert!(!events.is_empty(), "{what}: no flow event");
        }
        if from_pod && to_pod && p["expect"] == "deny" {
            // Pods of one /24 on one bridge: the drop happened at a bridge port.
            pod_to_pod_denies += 1;
            assert!(
                events.iter().any(|e| e["verdict"] == "deny"),
                "{what}: a deny event: {events:#?}"
            );
        }
    }
    assert!(
        pod_to_pod_denies >= 5,
        "the example denies traffic between pods of its /24 ({pod_to_pod_denies} probes)"
    );
}

const PODS: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: l2, labels: {app: a}}
status: {podIP: 10.244.5.2}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: l2, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 8080}, {containerPort: 9090}]}]}
status: {podIP: 10.244.5.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-in, namespace: l2}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 8080}]}]
";

/// `ForwDatagrams` of the node namespace: what its IP stack routed from one interface to
/// another (`/proc/thread-self/net`: the namespace of the thread reading it).
fn node_forwarded(lab: &Lab) -> u64 {
    let text = lab
        .in_node(|| std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap())
        .unwrap();
    let mut ip_lines = text.lines().filter(|line| line.starts_with("Ip:"));
    let (names, values) = (ip_lines.next().unwrap(), ip_lines.next().unwrap());
    let index = names
        .split_whitespace()
        .position(|name| name == "ForwDatagrams")
        .unwrap();
    values
        .split_whitespace()
        .nth(index)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn pods_of_one_subnet_talk_through_the_bridge_and_the_ports_still_decide() {
    require_root!();
    let mut manifests = Manifests::new();
    manifests.add_text("l2.yaml", PODS);
    assert!(manifests.errors.is_empty(), "{:#?}", manifests.errors);
    let cluster = Cluster::from_manifests(&mut manifests);
    let lab = Lab::build_wired(&LabSpec::from_cluster(&cluster), LabWiring::Bridged).unwrap();
    let mut node = Node::on_lab(&lab, Mode::Enforce, "lab").unwrap();
    node.apply(&cluster).unwrap();

    let before = node_forwarded(&lab);
    let a = ProbeEnd::Pod("l2/a".into());
    let b_ip = "10.244.5.3".parse().unwrap();
    let timeout = Duration::from_millis(500);
    let allowed = lab.probe(&a, b_ip, Protocol::Tcp, Some(8080), timeout);
    let denied = lab.probe(&a, b_ip, Protocol::Tcp, Some(9090), timeout);
    std::thread::sleep(Duration::from_millis(50));
    let records = node.drain();
    assert_eq!(allowed.outcome, Outcome::Reached, "a -> b:8080 is allowed");
    assert_eq!(denied.outcome, Outcome::TimedOut, "a -> b:9090 is dropped");
    assert_eq!(
        node_forwarded(&lab),
        before,
        "same-subnet traffic is switched by cni0, never routed by the node"
    );
    let to_b = |port: u16, verdict: RecVerdict| {
        records.iter().any(|r| {
            r.direction == Direction::Ingress
                && r.verdict == verdict
                && r.destination.port == Some(port)
                && r.destination.ip == b_ip
        })
    };
    assert!(
        to_b(8080, RecVerdict::Allow),
        "b's port saw the allowed SYN: {records:#?}"
    );
    assert!(
        to_b(9090, RecVerdict::Deny),
        "b's port dropped the denied SYN: {records:#?}"
    );
}
