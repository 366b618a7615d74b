// Part of `otlp.rs` (brought in with `include!`): Records.

// ---------------------------------------------------------------------------------------------
// Records

fn pod(ip: &str, port: Option<u16>, ns: &str, name: &str) -> Endpoint {
    Endpoint {
        ip: ip.parse().unwrap(),
        port,
        kind: EndpointKind::Pod,
        namespace: Some(ns.into()),
        pod: Some(name.into()),
        labels: BTreeMap::from([("app".into(), name.into())]).into(),
        scope: None,
        node: Some("node-1".into()),
        workload: None,
    }
}

fn external(ip: &str, port: Option<u16>) -> Endpoint {
    let ip: IpAddr = ip.parse().unwrap();
    Endpoint {
        ip,
        port,
        kind: EndpointKind::External,
        namespace: None,
        pod: None,
        labels: Default::default(),
        scope: Some(flowgate_flows::enrich::scope(ip)),
        node: None,
        workload: None,
    }
}

/// 2026-11-28T18:00:00Z plus `ms` milliseconds.
fn time(ms: i128) -> String {
    flowgate_flows::enrich::rfc3339(1_795_888_800_000_000_000 + ms * 1_000_000)
}

fn flow(seq: u64, verdict: Verdict, direction: Direction, src: Endpoint, dst: Endpoint) -> Record {
    let egress = direction == Direction::Egress;
    let (reason, allowed_by, isolated_by) = match verdict {
        Verdict::Allow => (
            Reason::RuleAllow,
            vec![RuleRef {
                namespace: "shop".into(),
                name: "allow-web".into(),
                rule: 0,
                peer: Some(0),
                port: None,
            }],
            Vec::new(),
        ),
        Verdict::Deny | Verdict::AuditDeny => (
            Reason::DefaultDeny,
            Vec::new(),
            vec![
                PolicyRef {
                    namespace: "shop".into(),
                    name: "db-ingress".into(),
                },
                PolicyRef {
                    namespace: "shop".into(),
                    name: "default-deny".into(),
                },
            ],
        ),
    };
    let v6 = src.ip.is_ipv6();
    let icmp = src.port.is_none();
    let transport = match (icmp, v6) {
        (true, true) => "icmpv6",
        (true, false) => "icmp",
        (false, _) => "tcp",
    };
    Record::Flow(FlowRecord {
        schema: SCHEMA,
        record_type: RecordType::Flow,
        time: time(i128::from(seq) * 250).into(),
        seq,
        node: "node-a".into(),
        verdict,
        mode: if verdict == Verdict::AuditDeny {
            Mode::Audit
        } else {
            Mode::Enforce
        },
        reason,
        direction,
        reporter: if egress { Reporter::Src } else { Reporter::Dst },
        source: src,
        destination: dst,
        network: Network {
            transport: transport.into(),
            ip_version: if v6 { 6 } else { 4 },
            tcp_flags: (!icmp).then(|| "SYN".into()),
        },
        policy: PolicyInfo {
            generation: 7,
            allowed_by: allowed_by.into(),
            isolated_by: isolated_by.into(),
            unresolved: false,
        },
        counters: Counters {
            packets: if verdict == Verdict::Deny { 3 } else { 1 },
            bytes: if verdict == Verdict::Deny { 180 } else { 60 },
            dedup_count: if verdict == Verdict::Deny { 2 } else { 0 },
            first_seen: time(0).into(),
            last_seen: time(i128::from(seq) * 250).into(),
        },
        tags: Vec::new(),
    })
}

/// An allow (egress, reported by the source pod), a deny (ingress, reported by the
/// destination pod), an audit deny to the world over IPv6 ICMP, and a ring-buffer gap.
fn sample() -> Vec<Record> {
    let frontend = || pod("10.0.1.5", Some(40_000), "shop", "frontend");
    let mut audit = flow(
        3,
        Verdict::AuditDeny,
        Direction::Egress,
        pod("fd00::5", None, "shop", "frontend"),
        external("2001:db8::1", None),
    );
    if let Record::Flow(f) = &mut audit {
        f.tags.push("egress_to_world".into());
    }
    vec![
        flow(
            1,
            Verdict::Allow,
            Direction::Egress,
            frontend(),
            pod("10.0.2.7", Some(8080), "shop", "api"),
        ),
        flow(
            2,
            Verdict::Deny,
            Direction::Ingress,
            frontend(),
            pod("10.0.3.9", Some(5432), "shop", "database"),
        ),
        audit,
        Record::Gap(GapRecord::new(
            time(1_000),
            4,
            "node-a",
            &Stage::Ringbuf,
            LostCounts {
                allow: 5,
                deny: 2,
                audit: 1,
            },
            None,
        )),
    ]
}
