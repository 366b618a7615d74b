//! The shipped record schema and SIEM mapping against the code that emits records.
//!
//! - Records built through the real path (manifests -> `compile` -> `Tables::from_snapshot` ->
//!   `Enricher::enrich` on kernel-shaped `FlowEvent`s, and gap records from `GapRecord::new` and
//!   from a `Fanout` whose sink is too slow) validate against docs/flow-record.schema.json.
//! - Broken records (a missing field, a wrong enum value, an extra field, ...) do not, so the
//!   schema really constrains what it documents.
//! - `ocsf::to_ocsf` of every record agrees with the tables in docs/siem-mappings.md, which
//!   this test reads; and every record field appears in those tables.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_abi::{ABI_VERSION, DIR_EGRESS, DIR_INGRESS, FlowEvent, event_flags, reason, verdict};
use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage};
use flowgate_flows::ocsf::{self, epoch_ms, to_ocsf};
use flowgate_flows::pipeline::MemorySink;
use flowgate_flows::record::{EndpointKind, Mode, Scope, Verdict};
use flowgate_flows::{Enricher, Fanout, Record, Tables};
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::{Cluster, Manifests};
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("../../../docs/flow-record.schema.json");
const MAPPINGS: &str = include_str!("../../../docs/siem-mappings.md");
const REFERENCE: &str = include_str!("../../../docs/flow-record.md");

/// 2026-11-28T18:00:00Z in ns: CLOCK_REALTIME - CLOCK_MONOTONIC for the enricher.
const REALTIME_OFFSET_NS: i128 = 1_795_888_800_000_000_000;

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: ops
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
    tier: frontend
spec:
  containers:
    - name: web
      image: nginx:1.27
      ports:
        - name: http
          containerPort: 80
          protocol: TCP
status:
  podIP: 10.0.0.10
  podIPs:
    - ip: 10.0.0.10
    - ip: fd00::10
---
apiVersion: v1
kind: Pod
metadata:
  name: backend
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
    tier: backend
spec:
  containers:
    - name: api
      image: shop/api:1
      ports:
        - name: api
          containerPort: 8080
          protocol: TCP
status:
  podIP: 10.0.0.11
  podIPs:
    - ip: 10.0.0.11
    - ip: fd00::11
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: ops
spec:
  containers:
    - name: shell
      image: busybox:1.36
status:
  podIP: 10.0.0.20
  podIPs:
    - ip: 10.0.0.20
    - ip: fd00::20
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend-from-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      tier: backend
  ingress:
    - from:
        - podSelector:
            matchLabels:
              tier: frontend
      ports:
        - protocol: TCP
          port: 8080
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
  namespace: shop
spec:
  podSelector:
    matchLabels:
      tier: frontend
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector:
            matchLabels:
              tier: backend
      ports:
        - protocol: TCP
          port: 8080
";

// ---------------------------------------------------------------------------------------------
// The real enrich path

/// A node with the three pods of `CLUSTER`: generation 1 in enforce mode, generation 2 (the same
/// policies) in audit mode.
struct Node {
    snap: Snapshot,
    enricher: Enricher,
    clock: u64,
}

const AUDIT_GENERATION: u32 = 2;

impl Node {
    fn new() -> Self {
        let mut manifests = Manifests::new();
        manifests.add_text("cluster.yaml", CLUSTER);
        assert!(
            manifests.errors.is_empty(),
            "test manifests load cleanly: {:?}",
            manifests.errors
        );
        let cluster = Cluster::from_manifests(&mut manifests);
        let locals: Vec<LocalEndpoint> = ["shop/frontend", "shop/backend", "ops/debug"]
            .iter()
            .zip(10..)
            .map(|(pod, ifindex)| LocalEndpoint {
                pod: (*pod).to_owned(),
                ifindex,
            })
            .collect();
        let snap = compile(&cluster, &locals, None);
        let audit = compile(&cluster, &locals, Some(&snap));
        assert_eq!((snap.generation, audit.generation), (1, AUDIT_GENERATION));
        let mut enricher = Enricher::new("node-a", REALTIME_OFFSET_NS);
        enricher.push(Tables::from_snapshot(&cluster, &snap, Mode::Enforce));
        enricher.push(Tables::from_snapshot(&cluster, &audit, Mode::Audit));
        Self {
            snap,
            enricher,
            clock: 1_000_000,
        }
    }

    fn endpoint_id(&self, pod: &str) -> (u32, u32) {
        let (ifindex, state) = self
            .snap
            .endpoints
            .iter()
            .find(|(_, s)| s.pod == pod)
            .unwrap_or_else(|| panic!("{pod} is a local endpoint"));
        (*ifindex, state.endpoint_id)
    }

    fn attribution(&self, policy: &str) -> u32 {
        self.snap
            .attributions
            .iter()
            .find(|(_, refs)| refs.iter().any(|r| r.name == policy))
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("an attribution id for {policy}"))
    }

    /// The event the kernel writes for one verdict, as seen by `local`.
    fn event(&mut self, local: &str, e: Ev) -> FlowEvent {
        let (ifindex, endpoint_id) = self.endpoint_id(local);
        self.clock += 1_000_000;
        let count = e.count.max(1);
        let src: IpAddr = e.src.parse().unwrap();
        let dst: IpAddr = e.dst.parse().unwrap();
        FlowEvent {
            version: ABI_VERSION,
            verdict: e.verdict,
            reason: e.reason,
            direction: e.direction,
            proto: e.proto,
            ip_version: if src.is_ipv4() { 4 } else { 6 },
            tcp_flags: e.tcp_flags,
            flags: e.flags,
            ifindex,
            endpoint_id,
            generation: e.generation,
            attribution: e.attribution,
            identity: 0,
            count,
            src_port: e.ports.0,
            dst_port: e.ports.1,
            bytes: 0,
            src_addr: mapped(src),
            dst_addr: mapped(dst),
            timestamp_ns: self.clock,
            first_ns: self.clock - u64::from(count - 1) * 250_000,
        }
    }

    fn record(&mut self, local: &str, e: Ev) -> Record {
        let ev = self.event(local, e);
        Record::Flow(self.enricher.enrich(&ev))
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// What a test case sets in an event; the rest is filled in by `Node::event`.
#[derive(Clone, Copy)]
struct Ev {
    verdict: u8,
    reason: u8,
    direction: u8,
    proto: u8,
    tcp_flags: u8,
    flags: u8,
    generation: u32,
    attribution: u32,
    count: u32,
    src: &'static str,
    dst: &'static str,
    ports: (u16, u16),
}

const TCP_SYN: Ev = Ev {
    verdict: verdict::ALLOW,
    reason: reason::NOT_ISOLATED,
    direction: DIR_EGRESS,
    proto: 6,
    tcp_flags: 0x02,
    flags: 0,
    generation: 1,
    attribution: 0,
    count: 1,
    src: "10.0.0.20",
    dst: "10.0.0.10",
    ports: (40_000, 80),
};

/// One record per case the issue names, built through the real path.
fn flow_cases() -> Vec<(&'static str, Record)> {
    let mut node = Node::new();
    let backend_rule = node.attribution("backend-from-frontend");
    let frontend_rule = node.attribution("frontend-egress");
    let deny = Ev {
        verdict: verdict::DENY,
        reason: reason::DEFAULT_DENY,
        direction: DIR_INGRESS,
        ..TCP_SYN
    };
    vec![
        (
            "allow by a rule (ingress)",
            node.record(
                "shop/backend",
                Ev {
                    reason: reason::RULE_ALLOW,
                    direction: DIR_INGRESS,
                    attribution: backend_rule,
                    src: "10.0.0.10",
                    dst: "10.0.0.11",
                    ports: (41_000, 8080),
                    ..TCP_SYN
                },
            ),
        ),
        (
            "allow by a rule (egress)",
            node.record(
                "shop/frontend",
                Ev {
                    reason: reason::RULE_ALLOW,
                    attribution: frontend_rule,
                    src: "10.0.0.10",
                    dst: "10.0.0.11",
                    ports: (41_000, 8080),
                    ..TCP_SYN
                },
            ),
        ),
        ("allow, not isolated", node.record("ops/debug", TCP_SYN)),
        ("default deny", node.record("shop/frontend", deny)),
        (
            "audit deny",
            node.record(
                "shop/frontend",
                Ev {
                    verdict: verdict::AUDIT_DENY,
                    generation: AUDIT_GENERATION,
                    ..deny
                },
            ),
        ),
        (
            "deny of egress to a public external",
            node.record(
                "shop/frontend",
                Ev {
                    direction: DIR_EGRESS,
                    src: "10.0.0.10",
                    dst: "203.0.113.5",
                    ports: (42_000, 443),
                    ..deny
                },
            ),
        ),
        (
            "allow of egress to a public external over UDP",
            node.record(
                "ops/debug",
                Ev {
                    proto: 17,
                    tcp_flags: 0,
                    dst: "198.51.100.7",
                    ports: (53_000, 53),
                    ..TCP_SYN
                },
            ),
        ),
        (
            "deny from a private external",
            node.record(
                "shop/backend",
                Ev {
                    src: "192.168.1.5",
                    dst: "10.0.0.11",
                    ports: (50_000, 8080),
                    ..deny
                },
            ),
        ),
        (
            "ICMP echo allowed",
            node.record(
                "ops/debug",
                Ev {
                    proto: 1,
                    tcp_flags: 0,
                    ports: (0, 0),
                    ..TCP_SYN
                },
            ),
        ),
        (
            "ICMPv6 denied",
            node.record(
                "shop/frontend",
                Ev {
                    proto: 58,
                    tcp_flags: 0,
                    src: "fd00::20",
                    dst: "fd00::10",
                    ports: (0, 0),
                    ..deny
                },
            ),
        ),
        (
            "IPv6 allow by a rule",
            node.record(
                "shop/backend",
                Ev {
                    reason: reason::RULE_ALLOW,
                    direction: DIR_INGRESS,
                    attribution: backend_rule,
                    src: "fd00::10",
                    dst: "fd00::11",
                    ports: (43_000, 8080),
                    ..TCP_SYN
                },
            ),
        ),
        (
            "deduplicated deny",
            node.record(
                "shop/frontend",
                Ev {
                    count: 7,
                    flags: event_flags::DEDUPLICATED,
                    ..deny
                },
            ),
        ),
        (
            "recheck deny",
            node.record(
                "shop/frontend",
                Ev {
                    reason: reason::RECHECK_DENY,
                    tcp_flags: 0x10,
                    flags: event_flags::RECHECK,
                    ..deny
                },
            ),
        ),
        (
            "TCP packet without flags",
            node.record(
                "shop/frontend",
                Ev {
                    tcp_flags: 0,
                    ..deny
                },
            ),
        ),
        (
            "other IP protocol (GRE)",
            node.record(
                "ops/debug",
                Ev {
                    proto: 47,
                    tcp_flags: 0,
                    ports: (0, 0),
                    ..TCP_SYN
                },
            ),
        ),
        (
            "unresolved generation",
            node.record(
                "shop/frontend",
                Ev {
                    generation: 99,
                    ..deny
                },
            ),
        ),
    ]
}

fn gap_cases() -> Vec<(&'static str, Record)> {
    vec![
        (
            "ring-buffer gap",
            Record::Gap(GapRecord::new(
                "2026-11-28T18:00:01.000000000Z".into(),
                17,
                "node-a",
                &Stage::Ringbuf,
                LostCounts {
                    allow: 3,
                    deny: 2,
                    audit: 0,
                },
                None,
            )),
        ),
        (
            "sink gap of allows",
            Record::Gap(GapRecord::new(
                "2026-11-28T18:00:02.000000000Z".into(),
                43,
                "node-a",
                &Stage::Sink("otlp".into()),
                LostCounts {
                    allow: 3,
                    deny: 0,
                    audit: 0,
                },
                Some(SeqRange {
                    first: 41,
                    last: 43,
                }),
            )),
        ),
    ]
}

fn all_cases() -> Vec<(&'static str, Record)> {
    let mut cases = flow_cases();
    cases.extend(gap_cases());
    cases.extend(node_cases());
    cases
}

/// A heartbeat and a policy snapshot, as the agent writes them.
fn node_cases() -> Vec<(&'static str, Record)> {
    use flowgate_flows::node_record::{EndpointSummary, NodeRecord, NodeRecordType};
    let base = NodeRecord {
        schema: flowgate_flows::record::SCHEMA,
        record_type: NodeRecordType::Heartbeat,
        time: "2026-11-28T18:00:10.000000000Z".into(),
        seq: 40,
        node: "node-a".into(),
        generation: 3,
        mode: flowgate_flows::record::Mode::Enforce,
        policies: None,
        endpoints: None,
        flows: Some(39),
    };
    let snapshot = NodeRecord {
        record_type: NodeRecordType::PolicySnapshot,
        seq: 41,
        flows: None,
        policies: Some(12),
        endpoints: Some(EndpointSummary {
            total: 5,
            ingress_isolated: 4,
            egress_isolated: 1,
            uncovered: 1,
        }),
        ..base.clone()
    };
    vec![
        ("heartbeat", Record::Node(base)),
        ("policy snapshot", Record::Node(snapshot)),
    ]
}

fn flow(record: &Record) -> &flowgate_flows::FlowRecord {
    match record {
        Record::Flow(f) => f,
        Record::Gap(_) | Record::Node(_) => panic!("expected a flow record"),
    }
}

// ---------------------------------------------------------------------------------------------
// The schema

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("docs/flow-record.schema.json is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema())
        .expect("the schema compiles")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema fails its meta-schema: {e}");
    }
}

#[test]
fn the_cases_are_what_they_claim() {
    let cases = flow_cases();
    let get = |name: &str| flow(&cases.iter().find(|(n, _)| *n == name).unwrap().1).clone();
    let r = get("allow by a rule (ingress)");
    assert_eq!((r.verdict, r.policy.allowed_by.len()), (Verdict::Allow, 1));
    assert_eq!(r.policy.allowed_by[0].name, "backend-from-frontend");
    assert_eq!(r.destination.pod.as_deref(), Some("backend"));
    let r = get("audit deny");
    assert_eq!((r.verdict, r.mode), (Verdict::AuditDeny, Mode::Audit));
    assert_eq!(r.policy.isolated_by[0].name, "default-deny-ingress");
    let r = get("deny of egress to a public external");
    assert_eq!(r.destination.kind, EndpointKind::External);
    assert_eq!(r.destination.scope, Some(Scope::Public));
    assert_eq!(r.tags, ["egress_to_world"]);
    assert_eq!(
        get("deny from a private external").source.scope,
        Some(Scope::Private)
    );
    assert_eq!(get("ICMP echo allowed").source.port, None);
    assert_eq!(get("ICMPv6 denied").network.transport, "icmpv6");
    assert_eq!(get("IPv6 allow by a rule").network.ip_version, 6);
    let r = get("deduplicated deny");
    assert_eq!((r.counters.packets, r.counters.dedup_count), (7, 6));
    assert_ne!(r.counters.first_seen, r.counters.last_seen);
    assert_eq!(get("recheck deny").tags, ["recheck"]);
    assert_eq!(
        get("TCP packet without flags").network.tcp_flags.as_deref(),
        Some("")
    );
    assert_eq!(get("other IP protocol (GRE)").network.transport, "47");
    assert!(get("unresolved generation").policy.unresolved);
    let seqs: Vec<u64> = cases.iter().map(|(_, r)| r.seq()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases: {seqs:?}"
    );
}

#[test]
fn every_emitted_record_validates() {
    let validator = validator();
    for (name, record) in all_cases() {
        let line = record.to_json();
        let value: Value = serde_json::from_str(&line).unwrap();
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "{name}: {line}\n{errs:#?}");
    }
}

#[test]
fn records_and_gaps_from_a_fanout_with_a_slow_sink_validate() {
    let mut node = Node::new();
    let slow = MemorySink {
        name: "slow".into(),
        delay: Duration::from_millis(1),
        ..MemorySink::default()
    };
    let received = Arc::clone(&slow.records);
    let mut fanout = Fanout::new("node-a");
    fanout.add_sink(Box::new(slow), 4).unwrap();
    for i in 0..2_000u32 {
        let e = if i % 2 == 0 {
            TCP_SYN
        } else {
            Ev {
                verdict: verdict::DENY,
                reason: reason::DEFAULT_DENY,
                direction: DIR_INGRESS,
                ..TCP_SYN
            }
        };
        fanout.publish(node.record("ops/debug", e));
        // Bursts with pauses: losses happen in a burst, and the next burst's first delivered
        // record is preceded by the gap record reporting them.
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    fanout.close();
    let records = received.lock().unwrap().clone();
    let gaps = records
        .iter()
        .filter(|r| matches!(r, Record::Gap(_)))
        .count();
    assert!(
        gaps > 0,
        "a sink 1 ms per record behind a 4-record queue loses records and says so"
    );
    let validator = validator();
    for record in &records {
        let value = serde_json::to_value(record).unwrap();
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "{value}\n{errs:#?}");
    }
}

/// A valid record with one thing broken must fail: (what is broken, how).
type Breakage = (&'static str, fn(&mut Value));

#[test]
fn broken_records_fail_validation() {
    let validator = validator();
    let cases = all_cases();
    let find = |name: &str| {
        serde_json::to_value(&cases.iter().find(|(n, _)| *n == name).unwrap().1).unwrap()
    };
    let allow = find("allow by a rule (ingress)");
    let icmp = find("ICMP echo allowed");
    let gap = find("sink gap of allows");
    let external = find("deny of egress to a public external");
    let breakages: Vec<(&Value, Breakage)> = vec![
        (
            &allow,
            ("missing verdict", |v| {
                drop(v.as_object_mut().unwrap().remove("verdict"))
            }),
        ),
        (
            &allow,
            ("missing counters.packets", |v| {
                drop(v["counters"].as_object_mut().unwrap().remove("packets"));
            }),
        ),
        (
            &allow,
            ("missing schema", |v| {
                drop(v.as_object_mut().unwrap().remove("schema"))
            }),
        ),
        (&allow, ("verdict drop", |v| v["verdict"] = json!("drop"))),
        (
            &allow,
            ("verdict in capitals", |v| v["verdict"] = json!("ALLOW")),
        ),
        (
            &allow,
            ("reason external", |v| v["reason"] = json!("external")),
        ),
        (
            &allow,
            ("direction inbound", |v| v["direction"] = json!("inbound")),
        ),
        (&allow, ("mode dry_run", |v| v["mode"] = json!("dry_run"))),
        (
            &allow,
            ("kind node", |v| v["source"]["kind"] = json!("node")),
        ),
        (
            &allow,
            ("schema v2", |v| v["schema"] = json!("flowgate.flow/v2")),
        ),
        (
            &allow,
            ("record_type typo", |v| v["record_type"] = json!("flw")),
        ),
        (
            &allow,
            ("extra top-level field", |v| {
                v["verdict_reason"] = json!("x")
            }),
        ),
        (
            &allow,
            ("extra endpoint field", |v| {
                v["source"]["workload"] = json!("x")
            }),
        ),
        (
            &allow,
            ("extra policy field", |v| v["policy"]["rules"] = json!([])),
        ),
        (
            &allow,
            ("extra rule_ref field", |v| {
                v["policy"]["allowed_by"][0]["x"] = json!(1)
            }),
        ),
        (
            &allow,
            ("extra counters field", |v| {
                v["counters"]["octets"] = json!(1)
            }),
        ),
        (&allow, ("null tags", |v| v["tags"] = Value::Null)),
        (&allow, ("empty tags", |v| v["tags"] = json!([]))),
        (
            &allow,
            ("unresolved false", |v| {
                v["policy"]["unresolved"] = json!(false)
            }),
        ),
        (
            &allow,
            ("time without nanoseconds", |v| {
                v["time"] = json!("2026-11-28T18:00:00Z");
            }),
        ),
        (
            &allow,
            ("time not a date", |v| v["time"] = json!("yesterday")),
        ),
        (&allow, ("seq zero", |v| v["seq"] = json!(0))),
        (&allow, ("seq as a string", |v| v["seq"] = json!("7"))),
        (
            &allow,
            ("ip not an address", |v| {
                v["source"]["ip"] = json!("10.0.0.999")
            }),
        ),
        (
            &allow,
            ("port out of range", |v| {
                v["destination"]["port"] = json!(70_000)
            }),
        ),
        (
            &allow,
            ("ip_version 5", |v| v["network"]["ip_version"] = json!(5)),
        ),
        (
            &allow,
            ("tcp without tcp_flags", |v| {
                drop(v["network"].as_object_mut().unwrap().remove("tcp_flags"));
            }),
        ),
        (
            &allow,
            ("tcp_flags lowercase", |v| {
                v["network"]["tcp_flags"] = json!("syn")
            }),
        ),
        (
            &allow,
            ("reporter does not match direction", |v| {
                v["reporter"] = json!("src")
            }),
        ),
        (
            &allow,
            ("pod endpoint without namespace", |v| {
                drop(v["source"].as_object_mut().unwrap().remove("namespace"));
            }),
        ),
        (
            &allow,
            ("allow with isolated_by", |v| {
                v["policy"]["isolated_by"] = json!([{"namespace": "shop", "name": "x"}]);
            }),
        ),
        (
            &icmp,
            ("port on icmp", |v| v["destination"]["port"] = json!(0)),
        ),
        (
            &external,
            ("external without scope", |v| {
                drop(v["destination"].as_object_mut().unwrap().remove("scope"));
            }),
        ),
        (
            &external,
            ("external with a pod name", |v| {
                v["destination"]["pod"] = json!("x")
            }),
        ),
        (
            &external,
            ("scope internal", |v| {
                v["destination"]["scope"] = json!("internal")
            }),
        ),
        (
            &gap,
            ("gap without lost.deny", |v| {
                drop(v["lost"].as_object_mut().unwrap().remove("deny"));
            }),
        ),
        (&gap, ("gap stage disk", |v| v["stage"] = json!("disk"))),
        (
            &gap,
            ("gap with a verdict", |v| v["verdict"] = json!("deny")),
        ),
        (
            &gap,
            ("gap lost_seq extra field", |v| {
                v["lost_seq"]["count"] = json!(3)
            }),
        ),
        (
            &gap,
            ("gap record_type heartbeet", |v| {
                v["record_type"] = json!("heartbeet")
            }),
        ),
        (
            &gap,
            ("heartbeat without seq", |v| {
                v["record_type"] = json!("heartbeat");
                drop(v.as_object_mut().unwrap().remove("seq"));
            }),
        ),
    ];
    for (valid, (what, breaks)) in breakages {
        assert!(
            validator.is_valid(valid),
            "the record broken by '{what}' is valid before: {valid}"
        );
        let mut broken = valid.clone();
        breaks(&mut broken);
        assert!(
            !validator.is_valid(&broken),
            "'{what}' must fail validation: {broken}"
        );
    }
    // Heartbeats are closed records now: an unknown key, or a missing `flows`, fails.
    let heartbeat = json!({
        "schema": "flowgate.flow/v1", "record_type": "heartbeat",
        "time": "2026-11-28T18:00:00.000000000Z", "seq": 5, "node": "node-a",
        "generation": 2, "mode": "enforce", "flows": 4
    });
    assert!(
        validator.is_valid(&heartbeat),
        "{:?}",
        errors(&validator, &heartbeat)
    );
    let mut extra = heartbeat.clone();
    extra["last_seq"] = json!(4);
    assert!(!validator.is_valid(&extra), "an unknown key fails");
    let mut missing = heartbeat.clone();
    missing.as_object_mut().unwrap().remove("flows");
    assert!(
        !validator.is_valid(&missing),
        "a heartbeat without flows fails"
    );
    let mut snapshot_with_flows = heartbeat;
    snapshot_with_flows["record_type"] = json!("policy_snapshot");
    assert!(
        !validator.is_valid(&snapshot_with_flows),
        "a policy snapshot needs policies and endpoints"
    );
}

/// The JSON blocks of a Markdown document.
fn json_blocks(doc: &str) -> Vec<&str> {
    doc.split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .collect()
}

#[test]
fn the_examples_in_flow_record_md_validate() {
    let validator = validator();
    let blocks = json_blocks(REFERENCE);
    assert!(blocks.len() >= 4, "flow-record.md has its examples");
    let mut types = Vec::new();
    for block in blocks {
        let value: Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("an example in flow-record.md is JSON: {e}\n{block}"));
        let errs = errors(&validator, &value);
        assert!(
            errs.is_empty(),
            "flow-record.md example:\n{block}\n{errs:#?}"
        );
        types.push((value["record_type"].clone(), value["verdict"].clone()));
    }
    for (record_type, verdict) in [
        ("flow", json!("allow")),
        ("flow", json!("deny")),
        ("gap", Value::Null),
    ] {
        assert!(
            types.contains(&(json!(record_type), verdict.clone())),
            "flow-record.md shows a {record_type} {verdict} example"
        );
    }
}

/// Validates a captured stream (one sink's JSON lines, e.g. the output of `flowgate agent`):
/// every line against the schema, and seq strictly increasing per node.
#[test]
fn a_captured_stream_validates_when_given() {
    let Some(path) = std::env::var_os("FLOWGATE_VALIDATE_JSONL") else {
        eprintln!("skipped: set FLOWGATE_VALIDATE_JSONL=<file of JSON lines> to validate one");
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let validator = validator();
    let mut last_seq = std::collections::HashMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "line {}: {line}\n{errs:#?}", n + 1);
        let node = value["node"].as_str().unwrap().to_owned();
        let seq = value["seq"].as_u64().unwrap();
        if let Some(prev) = last_seq.insert(node, seq) {
            assert!(seq > prev, "line {}: seq {seq} after {prev}", n + 1);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The OCSF mapping against docs/siem-mappings.md

/// The rows of the table between `<!-- {name}:begin -->` and `<!-- {name}:end -->`, cells
/// trimmed and without backticks, header and separator left out.
fn table(name: &str) -> Vec<Vec<String>> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = MAPPINGS
        .find(&begin)
        .unwrap_or_else(|| panic!("siem-mappings.md has {begin}"));
    let stop = MAPPINGS[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("siem-mappings.md has {end}"));
    let rows: Vec<Vec<String>> = MAPPINGS[start + begin.len()..start + stop]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .filter(|cells: &Vec<String>| !cells.iter().all(|c| c.starts_with("---")))
        .skip(1)
        .collect();
    assert!(rows.len() > 3, "the {name} table has rows");
    rows
}

fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// Dotted paths of a record's fields (label maps and lists count as one field).
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if child.is_object() && key != "labels" {
                leaves(child, &path, out);
            } else {
                out.push(path);
            }
        }
    }
}

/// Checks the `copy`, `epoch_ms` and `const` rows of a field table, and that the table's first
/// column names every field of the record.
fn check_field_table(name: &str, case: &str, record: &Value, event: &Value) {
    let rows = table(name);
    for row in &rows {
        let (field, attr, rule) = (&row[0], &row[1], &row[2]);
        let at = get(event, attr);
        if rule == "copy" {
            assert_eq!(
                at,
                get(record, field),
                "{case}: {attr} is a copy of {field} ({name})"
            );
        } else if rule == "epoch_ms" {
            let time = get(record, field).and_then(Value::as_str).unwrap();
            assert_eq!(
                at.and_then(Value::as_i64),
                epoch_ms(time),
                "{case}: {attr} is {field} in epoch ms ({name})"
            );
        } else if let Some(constant) = rule.strip_prefix("const ") {
            let constant: Value = serde_json::from_str(constant)
                .unwrap_or_else(|e| panic!("{name}: const {constant} is JSON: {e}"));
            assert_eq!(at, Some(&constant), "{case}: {attr} ({name})");
        }
    }
    let named: Vec<&str> = rows
        .iter()
        .flat_map(|row| row[0].split(',').map(str::trim))
        .collect();
    let mut fields = Vec::new();
    leaves(record, "", &mut fields);
    for field in fields {
        assert!(
            named.contains(&field.as_str()),
            "{case}: the field {field} is missing from the {name} table of siem-mappings.md"
        );
    }
}

/// `"15 Detected"` -> (15, "Detected").
fn id_cell(cell: &str) -> (u64, &str) {
    let (id, caption) = cell.split_once(' ').unwrap();
    (id.parse().unwrap(), caption)
}

fn check_verdict_table(case: &str, record: &Value, event: &Value) {
    let rows = table("ocsf-verdicts");
    let tags: Vec<&str> = record["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let row = rows
        .iter()
        .find(|row| {
            row[0] == record["verdict"]
                && (row[1] == "*" || row[1] == record["reason"])
                && match row[2].as_str() {
                    "*" => true,
                    "-" => !tags.contains(&"egress_to_world"),
                    tag => tags.contains(&tag),
                }
        })
        .unwrap_or_else(|| panic!("{case}: a row of the verdict table matches"));
    for (col, (id, caption)) in [
        (3, ("activity_id", "activity_name")),
        (4, ("action_id", "action")),
        (5, ("disposition_id", "disposition")),
        (6, ("status_id", "status")),
        (7, ("severity_id", "severity")),
    ] {
        let (want_id, want_caption) = id_cell(&row[col]);
        assert_eq!(
            (event[id].as_u64(), event[caption].as_str()),
            (Some(want_id), Some(want_caption)),
            "{case}: {id} per the verdict table row {row:?}"
        );
    }
}

#[test]
fn ocsf_events_follow_the_mapping_tables() {
    for (case, record) in all_cases() {
        let native = serde_json::to_value(&record).unwrap();
        let event = to_ocsf(&record);
        match &record {
            Record::Flow(f) => {
                check_field_table("ocsf-flow", case, &native, &event);
                check_verdict_table(case, &native, &event);
                check_flow_rules(case, f, &event);
            }
            Record::Node(n) => {
                assert_eq!(event["class_uid"], 0, "{case}: a Base Event");
                assert_eq!(event["activity_name"], native["record_type"], "{case}");
                assert_eq!(
                    event["unmapped"]["generation"], n.generation,
                    "{case}: the record is kept in unmapped"
                );
            }
            Record::Gap(g) => {
                check_field_table("ocsf-gap", case, &native, &event);
                let lost = g.lost.total();
                assert_eq!(event["count"], lost, "{case}: count is the lost total");
                let high = g.lost.deny + g.lost.audit > 0;
                assert_eq!(
                    (event["severity_id"].clone(), event["severity"].clone()),
                    if high {
                        (json!(4), json!("High"))
                    } else {
                        (json!(2), json!("Low"))
                    },
                    "{case}: severity"
                );
                assert_eq!(
                    event["status_detail"],
                    format!("records lost at stage {}", g.stage)
                );
                let message = event["message"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("{lost} records lost at {}", g.stage)),
                    "{case}: {message}"
                );
            }
        }
    }
}

/// The rows of the flow table whose rule is described in words.
fn check_flow_rules(case: &str, f: &flowgate_flows::FlowRecord, event: &Value) {
    let activity = event["activity_id"].as_u64().unwrap();
    assert_eq!(event["type_uid"], 4001 * 100 + activity, "{case}: type_uid");
    assert_eq!(
        event["type_name"],
        format!(
            "Network Activity: {}",
            event["activity_name"].as_str().unwrap()
        ),
        "{case}: type_name"
    );
    for (end, key) in [
        (&f.source, "src_endpoint"),
        (&f.destination, "dst_endpoint"),
    ] {
        let want = match (&end.namespace, &end.pod) {
            (Some(ns), Some(pod)) => Some(json!(format!("{ns}/{pod}"))),
            _ => None,
        };
        assert_eq!(event[key].get("name").cloned(), want, "{case}: {key}.name");
    }
    let conn = &event["connection_info"];
    let (dir_id, dir) = match f.direction {
        flowgate_flows::record::Direction::Ingress => (1, "Inbound"),
        flowgate_flows::record::Direction::Egress => (2, "Outbound"),
    };
    assert_eq!(
        (conn["direction_id"].clone(), conn["direction"].clone()),
        (json!(dir_id), json!(dir)),
        "{case}: direction"
    );
    let public = [&f.source, &f.destination]
        .iter()
        .any(|e| e.kind == EndpointKind::External && e.scope == Some(Scope::Public));
    assert_eq!(
        (conn["boundary_id"].clone(), conn["boundary"].clone()),
        if public {
            (json!(3), json!("External"))
        } else {
            (json!(2), json!("Internal"))
        },
        "{case}: boundary"
    );
    let (num, name) = match &*f.network.transport {
        "tcp" => (json!(6), json!("tcp")),
        "udp" => (json!(17), json!("udp")),
        "sctp" => (json!(132), json!("sctp")),
        "icmp" => (json!(1), json!("icmp")),
        "icmpv6" => (json!(58), json!("ipv6-icmp")),
        n => (json!(n.parse::<u8>().unwrap()), Value::Null),
    };
    assert_eq!(conn["protocol_num"], num, "{case}: protocol_num");
    assert_eq!(
        conn.get("protocol_name").cloned().unwrap_or(Value::Null),
        name,
        "{case}: protocol_name"
    );
    let bits = f.network.tcp_flags.as_deref().map(|names| {
        names
            .split('|')
            .filter(|n| !n.is_empty())
            .map(|n| match n {
                "FIN" => 1,
                "SYN" => 2,
                "RST" => 4,
                "PSH" => 8,
                "ACK" => 16,
                "URG" => 32,
                other => panic!("unknown TCP flag {other}"),
            })
            .sum::<u64>()
    });
    assert_eq!(
        conn.get("tcp_flags").and_then(Value::as_u64),
        bits,
        "{case}: tcp_flags"
    );
    let generation = f.policy.generation.to_string();
    let first = f
        .policy
        .allowed_by
        .first()
        .map(|r| (&r.namespace, &r.name))
        .or_else(|| {
            f.policy
                .isolated_by
                .first()
                .map(|p| (&p.namespace, &p.name))
        });
    match first {
        Some((ns, name)) => assert_eq!(
            event["policy"],
            json!({"uid": format!("{ns}/{name}"), "name": name, "version": generation}),
            "{case}: policy"
        ),
        None => assert!(event.get("policy").is_none(), "{case}: no policy"),
    }
    let dir = match f.direction {
        flowgate_flows::record::Direction::Ingress => "ingress",
        flowgate_flows::record::Direction::Egress => "egress",
    };
    match f.policy.allowed_by.first() {
        Some(r) => assert_eq!(
            event["firewall_rule"],
            json!({
                "uid": format!("{}/{}/{dir}/{}", r.namespace, r.name, r.rule),
                "name": format!("{}/{} {dir}[{}]", r.namespace, r.name, r.rule),
                "type": "NetworkPolicy",
                "category": dir,
                "version": generation,
            }),
            "{case}: firewall_rule"
        ),
        None => assert!(
            event.get("firewall_rule").is_none(),
            "{case}: no firewall_rule without a rule"
        ),
    }
    assert_eq!(
        event["metadata"]["product"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(event["metadata"]["version"], ocsf::OCSF_VERSION);
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("({})", event["status_detail"].as_str().unwrap())),
        "{case}: {message}"
    );
}
