//! The real datapath on a lab node with real traffic (needs root; CI runs as root):
//! the upstream e2e conformance scenarios, probe by probe, against `evaluate`, with the events
//! naming the right policies and rules; policy updates while connections are open; audit mode.
//!
//! ```text
//!   pod netns x/a ─┐            node netns (the datapath on every host veth)
//!   pod netns x/b ─┼─ veth ─── fglab-..-node ─── veth ─┬─ pod netns z/c
//!        ...       ┘   (fg_from_pod on TC ingress,     └─ ...
//!                       fg_to_pod on TC egress)
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

#[path = "common/echo.rs"]
mod echo;

#[path = "../../policy/tests/common/scenarios.rs"]
#[allow(dead_code, reason = "shared with the policy crate's tests")]
mod scenarios;

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use flowgate::cli::lab::records_for;
use flowgate::lab::{Lab, LabProbe, LabSpec, Outcome, ProbeEnd};
use flowgate::node::Node;
use flowgate_flows::FlowRecord;
use flowgate_flows::record::{Direction as RecDirection, Verdict as RecVerdict};
use flowgate_policy::evaluate::{Flow, SideDecision, Verdict, evaluate};
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

const TIMEOUT: Duration = Duration::from_millis(400);

fn observed_verdict(outcome: &Outcome) -> Verdict {
    match outcome {
        Outcome::Failed(f) => panic!("probe could not run: {f}"),
        o if o.delivered() => Verdict::Allow,
        _ => Verdict::Deny,
    }
}

/// (namespace, name, rule, peer, port) of an allowing rule.
type Rule = (String, String, usize, Option<usize>, Option<usize>);

/// Checks that a side's records agree with `evaluate` for that side: verdict, reason and
/// attribution (allowed_by / isolated_by).
fn check_side(
    records: &[&FlowRecord],
    direction: RecDirection,
    expected: &SideDecision,
    what: &str,
) -> Result<(), String> {
    let side: Vec<&&FlowRecord> = records
        .iter()
        .filter(|r| r.direction == direction)
        .collect();
    let Some(r) = side.first() else {
        return Err(format!("{what}: no {direction:?} event"));
    };
    let want = match expected.verdict {
        Verdict::Allow => RecVerdict::Allow,
        Verdict::Deny => RecVerdict::Deny,
    };
    if r.verdict != want {
        return Err(format!(
            "{what}: {direction:?} event says {:?}, evaluate {:?}",
            r.verdict, expected.verdict
        ));
    }
    let allowed: Vec<Rule> = r
        .policy
        .allowed_by
        .iter()
        .map(|a| (a.namespace.clone(), a.name.clone(), a.rule, a.peer, a.port))
        .collect();
    let want_allowed: Vec<Rule> = expected
        .allowed_by
        .iter()
        .map(|a| (a.namespace.clone(), a.name.clone(), a.rule, a.peer, a.port))
        .collect();
    let isolated: Vec<(String, String)> = r
        .policy
        .isolated_by
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    let want_isolated: Vec<(String, String)> = expected
        .isolated_by
        .iter()
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .collect();
    if allowed != want_allowed || isolated != want_isolated {
        return Err(format!(
            "{what}: {direction:?} attribution {allowed:?}/{isolated:?}, evaluate {want_allowed:?}/{want_isolated:?}"
        ));
    }
    Ok(())
}

#[test]
fn conformance_scenarios_hold_on_real_traffic() {
    require_root!();
    let all = scenarios::all();
    let first = scenarios::load(&all[0]);
    let lab = Lab::build(&LabSpec::from_cluster(&first)).expect("the e2e model lab builds");
    let mut node = Node::on_lab(&lab, Mode::Enforce, "lab").expect("the datapath attaches");
    let mut failures = Vec::new();
    let (mut probes_run, mut cases_run) = (0, 0);
    // A UDP or SCTP 5-tuple that comes round again (ephemeral ports repeat over thousands of
    // probes) is the same flow to connection tracking: it is not reported again.
    let mut seen_tuples = std::collections::HashSet::new();
    let started = Instant::now();
    for scenario in &all {
        let cluster = scenarios::load(scenario);
        node.apply(&cluster).expect("the scenario applies");
        for case in &scenario.cases {
            let protocol = Protocol::from_k8s(&case.protocol).unwrap();
            cases_run += 1;
            // Every ordered pair of distinct pods (a pod's traffic to itself never leaves it).
            let pods: Vec<_> = cluster
                .pods()
                .map(|(id, p)| (id, p.key(), p.ips[0]))
                .collect();
            let mut flows = Vec::new();
            for (sid, skey, sip) in &pods {
                for (did, dkey, dip) in &pods {
                    if sid != did {
                        let flow = Flow {
                            src_ip: *sip,
                            src_pod: Some(*sid),
                            dst_ip: *dip,
                            dst_pod: Some(*did),
                            protocol,
                            port: Some(case.port),
                        };
                        flows.push((skey.clone(), dkey.clone(), flow));
                    }
                }
            }
            let probes: Vec<LabProbe> = flows
                .iter()
                .map(|(_, _, f)| {
                    LabProbe::new(ProbeEnd::Ip(f.src_ip), f.dst_ip, f.protocol, f.port)
                })
                .collect();
            let seen = lab.probe_all(&probes, TIMEOUT);
            std::thread::sleep(Duration::from_millis(30));
            let records = node.drain();
            for ((skey, dkey, flow), obs) in flows.iter().zip(&seen) {
                probes_run += 1;
                let decision = evaluate(&cluster, flow);
                let what = format!(
                    "{} {}/{} {skey} -> {dkey}",
                    scenario.name, case.protocol, case.port
                );
                let table = case.expected(skey, dkey);
                assert_eq!(
                    decision.verdict == Verdict::Allow,
                    table,
                    "{what}: evaluate disagrees with the scenario table"
                );
                let got = observed_verdict(&obs.outcome);
                if got != decision.verdict {
                    failures.push(format!(
                        "{what}: observed {got:?} ({:?}), expected {:?}",
                        obs.outcome, decision.verdict
                    ));
                    continue;
                }
                let tuple = (obs.src, obs.src_port, flow.dst_ip, flow.port, flow.protocol);
                let repeated = !seen_tuples.insert(tuple) && protocol != Protocol::Tcp;
                if repeated {
                    continue;
                }
                let mine = records_for(&records, flow, obs);
                if let Err(e) = check_side(&mine, RecDirection::Egress, &decision.egress, &what) {
                    failures.push(e);
                }
                // The ingress side sees the packet only if egress let it out.
                if decision.egress.verdict == Verdict::Allow
                    && let Err(e) =
                        check_side(&mine, RecDirection::Ingress, &decision.ingress, &what)
                {
                    failures.push(e);
                }
            }
        }
    }
    let lost = node.lost().unwrap();
    eprintln!(
        "lab conformance: {} scenarios, {cases_run} cases, {probes_run} real probes in {:.1} s; ring-buffer losses {lost:?}",
        all.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, [0, 0, 0], "no event may be lost at this rate");
    assert!(
        failures.is_empty(),
        "{} of {probes_run} probes failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const TWO_PODS: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {app: client}}
status: {podIP: 10.70.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: app, labels: {app: server}}
spec: {containers: [{name: c, ports: [{containerPort: 7000}]}]}
status: {podIP: 10.70.0.2}
";

const ALLOW_7100: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 7100}]}]
";

const DENY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: []
";

fn cluster(policies: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("test.yaml", &format!("{TWO_PODS}\n---\n{policies}"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

/// An echo server on server:7100 (our own, so a connection can stay open), and a connected
/// client socket in the client's namespace.
fn open_connection(lab: &Lab) -> TcpStream {
    echo::open_echo_connection(
        lab,
        "app/server",
        "10.70.0.2:7100".parse().unwrap(),
        "app/client",
        TIMEOUT,
        Duration::from_millis(600),
    )
}

fn echo(stream: &mut TcpStream, byte: u8) -> bool {
    stream.write_all(&[byte]).unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(1) if buf[0] == byte)
}

/// On an established same-node connection, each packet is judged once: by the sender's
/// `fg_from_pod`, which the receiver's `fg_to_pod` trusts (`flowgate_abi::trust`).
fn judged_once_per_packet(node: &Node, conn: &mut TcpStream) {
    let before = node.path_stats().unwrap();
    let rounds = 20;
    for i in 0..rounds {
        assert!(echo(conn, b'0' + i), "round {i} of the echo");
    }
    let after = node.path_stats().unwrap();
    let trusted = after.peer_judged - before.peer_judged;
    let judged = after.judged_at_receiver - before.judged_at_receiver;
    eprintln!(
        "{rounds} echo rounds: {trusted} packets passed on the sender's judgement, {judged} judged at the receiver"
    );
    assert!(
        trusted >= 2 * u64::from(rounds),
        "each request and each reply passes on the sender's judgement: {trusted} of at least {}",
        2 * rounds
    );
}

fn probe(lab: &Lab) -> Verdict {
    let seen = lab.probe(
        &ProbeEnd::Pod("app/client".into()),
        "10.70.0.2".parse::<IpAddr>().unwrap(),
        Protocol::Tcp,
        Some(7100),
        TIMEOUT,
    );
    observed_verdict(&seen.outcome)
}

#[test]
fn policy_updates_apply_to_new_connections_at_once_and_recheck_established_ones() {
    require_root!();
    let allow = cluster(ALLOW_7100);
    let lab = Lab::build(&LabSpec {
        extra_ports: vec![(Protocol::Tcp, 7000)],
        ..LabSpec::from_cluster(&allow)
    })
    .unwrap();
    let mut node = Node::on_lab(&lab, Mode::Enforce, "lab").unwrap();
    node.apply(&allow).unwrap();
    let mut conn = open_connection(&lab);
    assert!(echo(&mut conn, b'a'), "the allowed connection carries data");
    judged_once_per_packet(&node, &mut conn);

    // Deny: the next new connection is dropped at once, the open one on its next packet.
    let stats = node.apply(&cluster(DENY)).unwrap();
    eprintln!(
        "deny applied: {} ops, compile {:?}, write {:?}",
        stats.ops, stats.compile, stats.write
    );
    assert_eq!(
        probe(&lab),
        Verdict::Deny,
        "new connections follow the new policy at once"
    );
    assert!(
        !echo(&mut conn, b'b'),
        "the established connection is re-checked and dropped"
    );
    std::thread::sleep(Duration::from_millis(50));
    let records = node.drain();
    assert!(
        records.iter().any(|r| r.verdict == RecVerdict::Deny
            && r.reason == flowgate_flows::record::Reason::RecheckDeny
            && r.destination.port == Some(7100)),
        "a recheck_deny event names the dropped connection: {records:#?}"
    );

    // Allow again: new connections pass at once; the old one recovers on retransmission.
    node.apply(&allow).unwrap();
    assert_eq!(
        probe(&lab),
        Verdict::Allow,
        "new connections are allowed at once"
    );
    let mut buf = [0u8; 1];
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(conn.read(&mut buf), Ok(1) if buf[0] == b'b'),
        "the retransmitted byte gets through"
    );
}

#[test]
fn audit_mode_drops_nothing_and_reports_what_enforce_would_drop() {
    require_root!();
    let deny = cluster(DENY);
    let lab = Lab::build(&LabSpec {
        extra_ports: vec![(Protocol::Tcp, 7100)],
        ..LabSpec::from_cluster(&deny)
    })
    .unwrap();
    let mut node = Node::on_lab(&lab, Mode::Audit, "lab").unwrap();
    node.apply(&deny).unwrap();
    assert_eq!(probe(&lab), Verdict::Allow, "audit mode drops nothing");
    std::thread::sleep(Duration::from_millis(30));
    let records = node.drain();
    let audit: Vec<&FlowRecord> = records
        .iter()
        .filter(|r| r.verdict == RecVerdict::AuditDeny)
        .collect();
    assert_eq!(
        audit.len(),
        1,
        "one audit_deny record for the new connection: {records:#?}"
    );
    assert_eq!(audit[0].policy.isolated_by[0].name, "server-in");
    assert_eq!(audit[0].mode, flowgate_flows::record::Mode::Audit);
}

#[test]
fn legacy_clsact_attach_enforces_the_same() {
    require_root!();
    let deny = cluster(DENY);
    // The server's 7100 is the echo server of `open_connection`.
    let lab = Lab::build(&LabSpec::from_cluster(&deny)).unwrap();
    let mut node = Node::on_lab_with(
        &lab,
        Mode::Enforce,
        "lab",
        flowgate::datapath::TcMode::Netlink,
    )
    .unwrap();
    assert_eq!(node.attached, Some(flowgate::datapath::Attached::Netlink));
    node.apply(&cluster(ALLOW_7100)).unwrap();
    let mut conn = open_connection(&lab);
    judged_once_per_packet(&node, &mut conn);
    drop(conn);
    assert_eq!(probe(&lab), Verdict::Allow);
    node.apply(&deny).unwrap();
    assert_eq!(
        probe(&lab),
        Verdict::Deny,
        "the clsact filter enforces the new policy"
    );
    let qdisc = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            lab.node_netns_name(),
            "tc",
            "qdisc",
            "show",
            "dev",
            lab.host_ifname("app/server").unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&qdisc.stdout).contains("clsact"),
        "attached through a clsact qdisc"
    );
}
