// Part of `schema.rs` (brought in with `include!`): The real enrich path.

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
