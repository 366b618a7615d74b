//! Kernel-in-the-loop tests without a network: the real eBPF programs, loaded (not attached),
//! run on crafted packets with `BPF_PROG_TEST_RUN` against maps seeded by `compile` + `diff`;
//! the return code and the emitted events are checked. Needs root (CAP_BPF); CI runs as root.
//!
//! ```text
//!   crafted frame ──> fg_to_pod   (the local pod's ingress; TC egress of its host veth)
//!   crafted frame ──> fg_from_pod (the local pod's egress;  TC ingress of its host veth)
//!   test_run gives the skb ifindex 1 (lo): the local pod is mapped to ifindex 1.
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use aya::maps::{MapData, RingBuf};
use aya::{TestRun as _, TestRunOptions};
use flowgate::datapath::{
    Datapath, LoadOptions, SKB_CONTEXT_BYTES, events, skb_context, skb_context_mark,
};
use flowgate_abi::{DIR_EGRESS, FlowEvent, programs, reason, trust, verdict};
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::{Mode, diff};
use flowgate_policy::{Cluster, Manifests};

#[path = "datapath_test_run/frame.rs"]
mod frame;

use frame::{Frame, tcp};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (CAP_BPF) to load eBPF programs");
            return;
        }
    };
}

/// Namespace a: web (10.1.0.1, fd00::1; http TCP 80) is the local pod, isolated both ways:
/// ingress allows app=client pods of namespace b on http, UDP 53 and SCTP 9000 from anywhere,
/// and ICMP from 10.2.0.0/16 (a rule without ports); egress allows nothing.
const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: a}
---
apiVersion: v1
kind: Namespace
metadata: {name: b}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIP: 10.1.0.1, podIPs: [{ip: 10.1.0.1}, {ip: 'fd00::1'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
status: {podIP: 10.2.0.1, podIPs: [{ip: 10.2.0.1}, {ip: 'fd00::2'}]}
";

const ALLOW_CLIENT: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}, podSelector: {matchLabels: {app: client}}}]
      ports: [{port: http}]
    - ports: [{port: 53, protocol: UDP}, {port: 9000, protocol: SCTP}]
    - from: [{ipBlock: {cidr: 10.2.0.0/16}}]
";

const DENY_ALL: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
";

fn cluster(policies: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("test.yaml", &format!("{CLUSTER}\n---\n{policies}"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

struct Harness {
    dp: Datapath,
    ring: RingBuf<MapData>,
    snap: Snapshot,
    history: Vec<Snapshot>,
}

impl Harness {
    fn new(policies: &str, ring_bytes: u32) -> Self {
        let mut dp = Datapath::load(&LoadOptions {
            ring_bytes,
            ..LoadOptions::default()
        })
        .expect("the datapath loads");
        let ring = dp.take_events().unwrap();
        let c = cluster(policies);
        let snap = compile(&c, &locals(), None);
        dp.apply(&diff(&Snapshot::default(), &snap, Mode::Enforce))
            .unwrap();
        Self {
            dp,
            ring,
            history: vec![snap.clone()],
            snap,
        }
    }

    fn update(&mut self, policies: &str, mode: Mode) {
        let c = cluster(policies);
        let next = compile(&c, &locals(), Some(&self.snap));
        self.dp.apply(&diff(&self.snap, &next, mode)).unwrap();
        self.history.push(next.clone());
        self.snap = next;
    }

    fn run(&mut self, program: &'static str, frame: &[u8]) -> (u32, Vec<FlowEvent>) {
        let prog = self.dp.program(program).unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..TestRunOptions::default()
            })
            .unwrap();
        let mut out = Vec::new();
        let mut stats = events::ReaderStats::default();
        events::drain(&mut self.ring, &mut out, &mut stats);
        assert_eq!(stats.malformed, 0, "every record decodes");
        (result.return_value, out)
    }

    /// `run` with the skb's mark and ingress interface; also gives the mark afterwards.
    fn run_in(
        &mut self,
        program: &'static str,
        frame: &[u8],
        mark: u32,
        ingress_ifindex: u32,
    ) -> (u32, Vec<FlowEvent>, u32) {
        let ctx = skb_context(mark, ingress_ifindex);
        let mut ctx_out = [0u8; SKB_CONTEXT_BYTES];
        let prog = self.dp.program(program).unwrap();
        let result = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                ctx_out: Some(&mut ctx_out),
                ..TestRunOptions::default()
            })
            .unwrap();
        let mut out = Vec::new();
        let mut stats = events::ReaderStats::default();
        events::drain(&mut self.ring, &mut out, &mut stats);
        (result.return_value, out, skb_context_mark(&ctx_out))
    }

    /// The (policy, rule) names an allow event's attribution resolves to, at its generation.
    fn allowed_by(&self, ev: &FlowEvent) -> Vec<String> {
        let snap = self
            .history
            .iter()
            .find(|s| s.generation == ev.generation)
            .expect("known generation");
        snap.attributions[&ev.attribution]
            .iter()
            .map(|r| format!("{}/{}#{}", r.namespace, r.name, r.rule))
            .collect()
    }
}

fn locals() -> Vec<LocalEndpoint> {
    vec![LocalEndpoint {
        pod: "a/web".into(),
        ifindex: 1,
    }]
}

fn one(events: &[FlowEvent]) -> FlowEvent {
    assert_eq!(
        events.len(),
        1,
        "expected exactly one event, got {events:#?}"
    );
    events[0]
}

#[test]
fn allowed_flow_passes_with_one_event_naming_the_rule() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let syn = tcp("10.2.0.1", 40000, "10.1.0.1", 80, SYN).bytes();
    let (rc, evs) = h.run(programs::TO_POD, &syn);
    assert_eq!(rc, TC_ACT_OK, "client -> web:http is allowed");
    let ev = one(&evs);
    assert_eq!(
        (ev.verdict, ev.reason, ev.direction),
        (
            verdict::ALLOW,
            reason::RULE_ALLOW,
            flowgate_abi::DIR_INGRESS
        )
    );
    assert_eq!(
        (
            ev.src_port,
            ev.dst_port,
            ev.proto,
            ev.ip_version,
            ev.tcp_flags
        ),
        (40000, 80, 6, 4, SYN)
    );
    assert_eq!(
        h.allowed_by(&ev),
        vec!["a/web-in#0".to_owned(), "a/web-in#2".to_owned()],
        "the http rule and the 10.2/16 rule"
    );
    assert_eq!(ev.generation, h.snap.generation);
    // The next packet of the connection and the reply pass without events.
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40000, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(
        (rc, evs.len()),
        (TC_ACT_OK, 0),
        "established: no second event"
    );
    let (rc, evs) = h.run(
        programs::FROM_POD,
        &tcp("10.1.0.1", 80, "10.2.0.1", 40000, SYN | ACK).bytes(),
    );
    assert_eq!(
        (rc, evs.len()),
        (TC_ACT_OK, 0),
        "the reply passes although web's egress allows nothing"
    );
    // A new connection reusing the 5-tuple is a new connection: decided and reported again.
    let (rc, evs) = h.run(programs::TO_POD, &syn);
    assert_eq!(
        (rc, one(&evs).verdict),
        (TC_ACT_OK, verdict::ALLOW),
        "a reused tuple's SYN is reported"
    );
}

#[test]
fn default_deny_drops_with_isolating_policy_and_deduplicates() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let syn = tcp("192.0.2.9", 40001, "10.1.0.1", 80, SYN).bytes();
    let (rc, evs) = h.run(programs::TO_POD, &syn);
    assert_eq!(
        rc, TC_ACT_SHOT,
        "an outside address is not allowed to web:80"
    );
    let ev = one(&evs);
    assert_eq!(
        (ev.verdict, ev.reason, ev.count),
        (verdict::DENY, reason::DEFAULT_DENY, 1)
    );
    let isolated = &h.snap.endpoints[&1].ingress.isolated_by;
    assert_eq!(
        isolated.len(),
        1,
        "the isolating policy is known for the event's endpoint"
    );
    // Retransmissions inside the window: dropped, no further event.
    for _ in 0..5 {
        let (rc, evs) = h.run(programs::TO_POD, &syn);
        assert_eq!((rc, evs.len()), (TC_ACT_SHOT, 0));
    }
    // A policy change ends the window: the next drop is reported at once under the new
    // generation (its own attribution), carrying the five packets folded so far.
    let before = h.snap.generation;
    h.update(DENY_ALL, Mode::Enforce);
    assert_ne!(h.snap.generation, before);
    let (rc, evs) = h.run(programs::TO_POD, &syn);
    let ev = one(&evs);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        (ev.verdict, ev.generation, ev.count),
        (verdict::DENY, h.snap.generation, 6),
        "the first drop under the new policy is reported at once"
    );
    // web's own new connections out are denied (egress isolated, no rules).
    let (rc, evs) = h.run(
        programs::FROM_POD,
        &tcp("10.1.0.1", 5555, "10.2.0.1", 443, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(one(&evs).direction, DIR_EGRESS);
}

#[test]
fn ports_protocols_and_families() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let cases: Vec<(&str, Frame, u32)> = vec![
        (
            "client TCP 81 (not http)",
            tcp("10.2.0.1", 40002, "10.1.0.1", 81, SYN).proto(6),
            TC_ACT_OK,
        ),
        (
            "outside UDP 53",
            tcp("192.0.2.1", 5000, "10.1.0.1", 53, 0).proto(17),
            TC_ACT_OK,
        ),
        (
            "outside UDP 54",
            tcp("192.0.2.1", 5000, "10.1.0.1", 54, 0).proto(17),
            TC_ACT_SHOT,
        ),
        (
            "outside SCTP 9000",
            tcp("192.0.2.1", 5000, "10.1.0.1", 9000, 0).proto(132),
            TC_ACT_OK,
        ),
        (
            "outside TCP 9000 (the rule is SCTP)",
            tcp("192.0.2.1", 5001, "10.1.0.1", 9000, SYN),
            TC_ACT_SHOT,
        ),
        (
            "ICMP from 10.2/16 (rule without ports)",
            tcp("10.2.9.9", 7, "10.1.0.1", 0, 0).proto(1),
            TC_ACT_OK,
        ),
        (
            "ICMP from outside",
            tcp("192.0.2.1", 7, "10.1.0.1", 0, 0).proto(1),
            TC_ACT_SHOT,
        ),
        (
            "client over IPv6 to http",
            tcp("fd00::2", 40003, "fd00::1", 80, SYN),
            TC_ACT_OK,
        ),
        (
            "outside IPv6 to http",
            tcp("2001:db8::9", 40003, "fd00::1", 80, SYN),
            TC_ACT_SHOT,
        ),
        (
            "ICMPv6 echo from outside",
            tcp("2001:db8::9", 7, "fd00::1", 0, 0).proto(58),
            TC_ACT_SHOT,
        ),
    ];
    // "client TCP 81": the 10.2.0.0/16 rule has no ports, so every port is allowed from there.
    for (what, frame, want) in cases {
        let (rc, _) = h.run(programs::TO_POD, &frame.bytes());
        assert_eq!(rc, want, "{what}");
    }
    // Not IP, and truncated IP: passed untouched.
    let arp = [
        vec![0xff; 6],
        vec![2, 0, 0, 0, 0, 1],
        vec![0x08, 0x06],
        vec![0; 28],
    ]
    .concat();
    assert_eq!(h.run(programs::TO_POD, &arp), (TC_ACT_OK, vec![]));
    let mut short = tcp("192.0.2.1", 1, "10.1.0.1", 80, SYN).bytes();
    short.truncate(14 + 20 + 2);
    assert_eq!(
        h.run(programs::TO_POD, &short),
        (TC_ACT_OK, vec![]),
        "a truncated TCP header is not judged"
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    // Outside UDP 53 is allowed: its later fragments pass too; UDP 54's are dropped.
    let ok = tcp("192.0.2.1", 5353, "10.1.0.1", 53, 0).proto(17);
    assert_eq!(
        h.run(programs::TO_POD, &ok.frag(77, 0, true).bytes()).0,
        TC_ACT_OK
    );
    assert_eq!(
        h.run(programs::TO_POD, &ok.frag(77, 3, false).bytes()).0,
        TC_ACT_OK
    );
    let bad = tcp("192.0.2.1", 5354, "10.1.0.1", 54, 0).proto(17);
    assert_eq!(
        h.run(programs::TO_POD, &bad.frag(78, 0, true).bytes()).0,
        TC_ACT_SHOT
    );
    assert_eq!(
        h.run(programs::TO_POD, &bad.frag(78, 3, false).bytes()).0,
        TC_ACT_SHOT
    );
    // A later fragment whose first was never seen: ports unknown, denied with its own reason.
    let (rc, evs) = h.run(programs::TO_POD, &bad.frag(79, 3, false).bytes());
    assert_eq!(
        (rc, one(&evs).reason),
        (TC_ACT_SHOT, reason::FRAGMENT_UNKNOWN)
    );
    // IPv6 fragment header.
    let v6 = tcp("2001:db8::9", 5353, "fd00::1", 53, 0).proto(17);
    assert_eq!(
        h.run(programs::TO_POD, &v6.frag(0x1234_5678, 0, true).bytes())
            .0,
        TC_ACT_OK
    );
    assert_eq!(
        h.run(programs::TO_POD, &v6.frag(0x1234_5678, 2, false).bytes())
            .0,
        TC_ACT_OK
    );
}

#[test]
fn audit_mode_drops_nothing_and_reports_audit_deny() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    h.update(ALLOW_CLIENT, Mode::Audit);
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40001, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_OK, "audit mode passes what enforce would drop");
    let ev = one(&evs);
    assert_eq!(
        (ev.verdict, ev.reason),
        (verdict::AUDIT_DENY, reason::DEFAULT_DENY)
    );
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40000, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_OK, verdict::ALLOW));
}

#[test]
fn policy_change_rechecks_established_connections() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40000, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_OK);
    h.update(DENY_ALL, Mode::Enforce);
    // The next packet of the established connection is re-checked against the new policy.
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40000, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(rc, TC_ACT_SHOT, "no rule allows it any more");
    let ev = one(&evs);
    assert_eq!(
        (ev.verdict, ev.reason, ev.generation),
        (verdict::DENY, reason::RECHECK_DENY, h.snap.generation)
    );
    assert_ne!(ev.flags & flowgate_abi::event_flags::RECHECK, 0);
    // Re-allowing: a connection still allowed under a new generation keeps passing silently.
    h.update(ALLOW_CLIENT, Mode::Enforce);
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40010, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_OK);
    h.update(ALLOW_CLIENT, Mode::Enforce);
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40010, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(
        (rc, evs.len()),
        (TC_ACT_OK, 0),
        "re-checked and still allowed: no event"
    );
}

#[test]
fn the_senders_mark_is_honoured_only_from_another_interface_and_never_leaves_the_programs() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let denied = tcp("192.0.2.9", 40500, "10.1.0.1", 80, ACK).bytes();
    let before = h.dp.path_stats().unwrap();
    // Marked by a sending pod's fg_from_pod (came in on interface 7): passed unjudged, the
    // mark cleared before the packet enters the pod.
    let (rc, evs, mark) = h.run_in(programs::TO_POD, &denied, trust::MASK | 0x4000, 7);
    assert_eq!((rc, evs.len()), (TC_ACT_OK, 0));
    assert_eq!(mark, 0x4000, "the trust bits are cleared, other bits kept");
    let after = h.dp.path_stats().unwrap();
    assert_eq!(after.peer_judged, before.peer_judged + 1);
    // The same bits on a packet the node itself sent (no ingress interface): judged, dropped.
    let (rc, evs, mark) = h.run_in(programs::TO_POD, &denied, trust::MASK, 0);
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_SHOT, verdict::DENY));
    assert_eq!(mark, 0);
    // Only one of the bits: judged too.
    let (rc, _, _) = h.run_in(programs::TO_POD, &denied, trust::SENT_BY_ENDPOINT, 7);
    assert_eq!(rc, TC_ACT_SHOT);
    let (rc, _, _) = h.run_in(programs::TO_POD, &denied, trust::PEER_JUDGED, 7);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(
        h.dp.path_stats().unwrap().judged_at_receiver,
        after.judged_at_receiver + 3
    );
    // fg_from_pod never lets bits it did not set through: web's egress allows nothing.
    let out = tcp("10.1.0.1", 40600, "192.0.2.9", 443, SYN).bytes();
    let (rc, _, mark) = h.run_in(programs::FROM_POD, &out, trust::MASK, 0);
    assert_eq!((rc, mark), (TC_ACT_SHOT, 0));
    // ... nor sets them for a reply whose other end is no local endpoint: web's reply on a
    // connection its ingress allowed (the marking itself: `conntrack::*`).
    let syn = tcp("10.2.0.1", 40601, "10.1.0.1", 80, SYN).bytes();
    assert_eq!(h.run(programs::TO_POD, &syn).0, TC_ACT_OK);
    let reply = tcp("10.1.0.1", 80, "10.2.0.1", 40601, SYN | ACK).bytes();
    let (rc, evs, mark) = h.run_in(programs::FROM_POD, &reply, trust::PEER_JUDGED, 0);
    assert_eq!((rc, evs.len()), (TC_ACT_OK, 0), "a reply: no new event");
    assert_eq!(
        mark, 0,
        "the other end is not a local endpoint's: no trust bits"
    );
}

#[test]
fn ports_are_read_behind_ipv4_options_too() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    // UDP 53 from anywhere is allowed, 54 is not: with IP options, the ports are still read
    // right (they are not at the usual offset).
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40700, "10.1.0.1", 53, 0)
            .proto(17)
            .ip_options()
            .bytes(),
    );
    let ev = one(&evs);
    assert_eq!(
        (rc, ev.verdict, ev.src_port, ev.dst_port),
        (TC_ACT_OK, verdict::ALLOW, 40700, 53)
    );
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40701, "10.1.0.1", 54, 0)
            .proto(17)
            .ip_options()
            .bytes(),
    );
    assert_eq!((rc, one(&evs).dst_port), (TC_ACT_SHOT, 54));
}

/// Like `DENY_ALL`, for ingress only: web's egress is not isolated.
const DENY_INGRESS: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress]
";

#[test]
fn a_connection_denied_on_recheck_stays_denied_both_ways() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40020, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_OK);
    h.update(DENY_INGRESS, Mode::Enforce);
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40020, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!((rc, one(&evs).reason), (TC_ACT_SHOT, reason::RECHECK_DENY));
    // web's reply: its egress is open, but the connection was denied. It must not reopen it as
    // a new outgoing flow (which would then let the client's packets in as its replies).
    let (rc, evs) = h.run(
        programs::FROM_POD,
        &tcp("10.1.0.1", 80, "10.2.0.1", 40020, ACK).bytes(),
    );
    assert_eq!(rc, TC_ACT_SHOT, "the denied connection's reply is dropped");
    assert!(
        evs.iter().all(|e| e.verdict == verdict::DENY),
        "no allow event for it: {evs:#?}"
    );
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40020, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(rc, TC_ACT_SHOT, "and the client's next packet too");
    // A new connection on the same ports is decided afresh (denied here, by the policy).
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40020, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!((rc, one(&evs).reason), (TC_ACT_SHOT, reason::DEFAULT_DENY));
    // Allowed again under a new generation: the connection passes again.
    h.update(ALLOW_CLIENT, Mode::Enforce);
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40020, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(
        rc, TC_ACT_OK,
        "re-checked under the new generation: allowed"
    );
}

/// A SYN on a tuple whose entry is still in the table rewrites the entry in place (no second
/// LRU element): the new connection's direction, verdict and generation all take effect.
#[test]
fn a_new_connection_on_a_reused_tuple_takes_over_its_entry() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    // The client opens client:40021 -> web:80 (ingress, allowed).
    let (rc, _) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40021, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!(rc, TC_ACT_OK);
    // Now web's ingress is closed and its egress open; web opens the same tuple outwards.
    h.update(DENY_INGRESS, Mode::Enforce);
    let (rc, evs) = h.run(
        programs::FROM_POD,
        &tcp("10.1.0.1", 80, "10.2.0.1", 40021, SYN).bytes(),
    );
    let ev = one(&evs);
    assert_eq!(
        (rc, ev.verdict, ev.direction),
        (TC_ACT_OK, verdict::ALLOW, DIR_EGRESS)
    );
    // The client's packets are replies of web's connection, current under this generation.
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40021, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!((rc, evs.len()), (TC_ACT_OK, 0), "a reply: {evs:#?}");
    // After another policy change (ingress still closed to the client), the re-check follows
    // the direction the entry now holds (egress, open): had the old direction (ingress) stayed,
    // this would be dropped.
    h.update(
        &format!(
            "{DENY_INGRESS}---\n{}",
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other, namespace: a}\n\
             spec:\n  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Ingress]\n  \
             ingress: [{from: [{ipBlock: {cidr: 192.0.2.0/24}}], ports: [{port: 9999}]}]\n"
        ),
        Mode::Enforce,
    );
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("10.2.0.1", 40021, "10.1.0.1", 80, ACK).bytes(),
    );
    assert_eq!(
        (rc, evs.len()),
        (TC_ACT_OK, 0),
        "re-checked as egress: {evs:#?}"
    );
}

#[test]
fn ring_buffer_loss_is_counted_exactly() {
    require_root!();
    // One page: room for a few dozen 88-byte records (plus 8-byte headers).
    let mut h = Harness::new(DENY_ALL, 4096);
    let sent = 200u16;
    let prog = h.dp.program(programs::TO_POD).unwrap();
    for i in 0..sent {
        let frame = tcp("192.0.2.9", 20000 + i, "10.1.0.1", 80, SYN).bytes();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ..TestRunOptions::default()
            })
            .unwrap();
        assert_eq!(r.return_value, TC_ACT_SHOT);
    }
    let mut out = Vec::new();
    let mut stats = events::ReaderStats::default();
    events::drain(&mut h.ring, &mut out, &mut stats);
    let lost = h.dp.lost_events().unwrap();
    assert!(
        !out.is_empty() && lost[1] > 0,
        "a one-page ring must overflow: {} delivered, {lost:?} lost",
        out.len()
    );
    assert_eq!(
        out.len() as u64 + lost[1],
        u64::from(sent),
        "delivered + lost (deny) = sent"
    );
    assert_eq!(
        (lost[0], lost[2]),
        (0, 0),
        "nothing lost in the other classes"
    );
}

#[test]
fn a_flooded_copy_for_another_local_pod_passes_unjudged() {
    require_root!();
    let mut h = Harness::new(ALLOW_CLIENT, 1 << 16);
    // web (ifindex 1 here) and another local pod at 10.1.0.9 on interface 7.
    h.dp.set_local_ips(&[
        ("10.1.0.1".parse().unwrap(), 1),
        ("10.1.0.9".parse().unwrap(), 7),
    ])
    .unwrap();
    // A bridge floods a frame for 10.1.0.9 to web's port too: not web's flow, no verdict.
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40100, "10.1.0.9", 80, SYN).bytes(),
    );
    assert_eq!(
        (rc, evs.len()),
        (TC_ACT_OK, 0),
        "a copy for another local pod is passed without an event"
    );
    // web's own traffic is judged as ever.
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40101, "10.1.0.1", 80, SYN).bytes(),
    );
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_SHOT, verdict::DENY));
    // An address that is no local pod's is judged as well (a pod's extra addresses, a VIP).
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40102, "10.1.0.50", 80, SYN).bytes(),
    );
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_SHOT, verdict::DENY));
    // The map follows the set given: 10.1.0.9 gone, its copies are judged again.
    h.dp.set_local_ips(&[("10.1.0.1".parse().unwrap(), 1)])
        .unwrap();
    let (rc, evs) = h.run(
        programs::TO_POD,
        &tcp("192.0.2.9", 40103, "10.1.0.9", 80, SYN).bytes(),
    );
    assert_eq!((rc, one(&evs).verdict), (TC_ACT_SHOT, verdict::DENY));
}

// After `require_root!`, which the module uses.
#[path = "datapath_test_run/conntrack.rs"]
mod conntrack;
