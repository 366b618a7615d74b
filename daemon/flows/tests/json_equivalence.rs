//! The hand-written JSON writer (`Record::to_json`, `Record::write_json`, `flowgate_flows::json`)
//! against the serde derives it replaces on the hot path: for arbitrary records (every verdict,
//! reason, mode, direction, kind and scope; IPv4 and IPv6; ICMP without ports; labels, names and
//! times with characters that need escaping, control characters and unicode; empty and absent
//! optional fields; gap records) and for records enriched from arbitrary events, the fast JSON
//! parses to the same value as `serde_json::to_value`, is byte for byte `serde_json::to_vec`,
//! and deserializes back to the record.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use flowgate_abi::{ABI_VERSION, FlowEvent};
use flowgate_flows::enrich::{LocalInfo, PodInfo};
use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage};
use flowgate_flows::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Scope, Verdict,
};
use flowgate_flows::{Enricher, Record, Tables};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use serde_json::Value;

/// Strings that exercise the escaping: plain names, JSON specials, control characters,
/// non-ASCII, and anything at all.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-z0-9.-]{0,12}",
        2 => "[a-z\"\\\\/\u{0}-\u{1f}\u{7f}é€😀 ]{0,10}",
        2 => any::<String>(),
    ]
}

fn shared(s: String) -> Arc<str> {
    Arc::from(s)
}

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|o| IpAddr::V4(Ipv4Addr::from(o))),
        any::<[u8; 16]>().prop_map(|o| IpAddr::V6(Ipv6Addr::from(o))),
        any::<[u8; 4]>().prop_map(|o| IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped())),
        Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
    ]
}

fn endpoint() -> impl Strategy<Value = Endpoint> {
    (
        ip(),
        option::of(any::<u16>()),
        prop_oneof![Just(EndpointKind::Pod), Just(EndpointKind::External)],
        option::of(text().prop_map(shared)),
        option::of(text().prop_map(shared)),
        btree_map(text(), text(), 0..4),
        option::of(prop_oneof![Just(Scope::Private), Just(Scope::Public)]),
        option::of(text().prop_map(shared)),
        option::of((text().prop_map(shared), text().prop_map(shared))),
    )
        .prop_map(
            |(ip, port, kind, namespace, pod, labels, scope, node, workload)| Endpoint {
                ip,
                port,
                kind,
                namespace,
                pod,
                labels: Arc::new(labels),
                scope,
                node,
                workload: workload
                    .map(|(kind, name)| flowgate_flows::record::Workload { kind, name }),
            },
        )
}

fn static_or_owned() -> impl Strategy<Value = Cow<'static, str>> {
    prop_oneof![
        prop::sample::select(vec!["tcp", "udp", "sctp", "icmp", "icmpv6", "SYN|ACK", ""])
            .prop_map(Cow::Borrowed),
        text().prop_map(Cow::Owned),
    ]
}

fn rule_ref() -> impl Strategy<Value = RuleRef> {
    (
        text(),
        text(),
        any::<usize>(),
        option::of(any::<usize>()),
        option::of(any::<usize>()),
    )
        .prop_map(|(namespace, name, rule, peer, port)| RuleRef {
            namespace,
            name,
            rule,
            peer,
            port,
        })
}

fn policy_ref() -> impl Strategy<Value = PolicyRef> {
    (text(), text()).prop_map(|(namespace, name)| PolicyRef { namespace, name })
}

fn flow_record() -> impl Strategy<Value = FlowRecord> {
    let enums = (
        prop::sample::select(vec![Verdict::Allow, Verdict::Deny, Verdict::AuditDeny]),
        prop::sample::select(vec![Mode::Enforce, Mode::Audit]),
        prop::sample::select(vec![
            Reason::NotIsolated,
            Reason::RuleAllow,
            Reason::DefaultDeny,
            Reason::RecheckDeny,
            Reason::FragmentUnknown,
            Reason::Unknown,
        ]),
        prop::sample::select(vec![Direction::Ingress, Direction::Egress]),
        prop::sample::select(vec![Reporter::Src, Reporter::Dst]),
    );
    let network = (
        static_or_owned(),
        any::<u8>(),
        option::of(static_or_owned()),
    )
        .prop_map(|(transport, ip_version, tcp_flags)| Network {
            transport,
            ip_version,
            tcp_flags,
        });
    let policy = (
        any::<u32>(),
        vec(rule_ref(), 0..3),
        vec(policy_ref(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(generation, allowed_by, isolated_by, unresolved)| PolicyInfo {
                generation,
                allowed_by: allowed_by.into(),
                isolated_by: isolated_by.into(),
                unresolved,
            },
        );
    let counters = (any::<u64>(), any::<u64>(), any::<u64>(), text(), text()).prop_map(
        |(packets, bytes, dedup_count, first_seen, last_seen)| Counters {
            packets,
            bytes,
            dedup_count,
            first_seen: first_seen.into(),
            last_seen: last_seen.into(),
        },
    );
    (
        enums,
        (text(), any::<u64>(), text()),
        endpoint(),
        endpoint(),
        network,
        policy,
        counters,
        vec(static_or_owned(), 0..3),
    )
        .prop_map(
            |(
                (verdict, mode, reason, direction, reporter),
                (time, seq, node),
                source,
                destination,
                network,
                policy,
                counters,
                tags,
            )| FlowRecord {
                schema: SCHEMA,
                record_type: RecordType::Flow,
                time: time.into(),
                seq,
                node: node.into(),
                verdict,
                mode,
                reason,
                direction,
                reporter,
                source,
                destination,
                network,
                policy,
                counters,
                tags,
            },
        )
}

fn gap_record() -> impl Strategy<Value = GapRecord> {
    (
        text(),
        any::<u64>(),
        text(),
        prop_oneof![Just(Stage::Ringbuf), text().prop_map(Stage::Sink)],
        any::<[u64; 3]>(),
        option::of(any::<(u64, u64)>()),
    )
        .prop_map(|(time, seq, node, stage, [allow, deny, audit], range)| {
            GapRecord::new(
                time,
                seq,
                &node,
                &stage,
                LostCounts { allow, deny, audit },
                range.map(|(first, last)| SeqRange { first, last }),
            )
        })
}

/// The fast JSON of `record` against serde's: same value, same bytes; `write_json` appends
/// exactly what `to_json` returns.
fn assert_same_json(record: &Record) {
    let fast = record.to_json();
    let reference = serde_json::to_vec(record).unwrap();
    let value: Value = serde_json::from_str(&fast).expect("the fast JSON parses");
    assert_eq!(value, serde_json::to_value(record).unwrap(), "{fast}");
    assert_eq!(
        fast,
        String::from_utf8(reference).unwrap(),
        "same bytes as serde_json"
    );
    let mut appended = b"prefix\n".to_vec();
    record.write_json(&mut appended);
    assert_eq!(&appended[7..], fast.as_bytes());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_flow_records_serialize_like_serde(record in flow_record()) {
        let record = Record::Flow(record);
        assert_same_json(&record);
        let Record::Flow(flow) = &record else { unreachable!() };
        let back: FlowRecord = serde_json::from_str(&record.to_json()).unwrap();
        prop_assert_eq!(&back, flow);
    }

    #[test]
    fn arbitrary_gap_records_serialize_like_serde(record in gap_record()) {
        let record = Record::Gap(record);
        assert_same_json(&record);
        let Record::Gap(gap) = &record else { unreachable!() };
        let back: GapRecord = serde_json::from_str(&record.to_json()).unwrap();
        prop_assert_eq!(&back, gap);
    }
}

/// Tables with awkward names and labels: one local endpoint (id 1) and two remote pods.
fn tables(generation: u32, mode: Mode) -> Tables {
    let labels = |pairs: &[(&str, &str)]| {
        Arc::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    let policy = |ns: &str, name: &str| PolicyRef {
        namespace: ns.into(),
        name: name.into(),
    };
    Tables {
        generation,
        mode,
        endpoints: HashMap::from([(
            1,
            LocalInfo {
                namespace: "shop".into(),
                pod: "web-\"quoted\"\\x".into(),
                labels: labels(&[("app", "web"), ("note", "line\nbreak\ttab"), ("ü", "日本")]),
                node: Some("node\"1".into()),
                workload: Some(flowgate_flows::record::Workload {
                    kind: "Deployment".into(),
                    name: "web\u{2}".into(),
                }),
                isolated_by_ingress: vec![policy("shop", "deny-all"), policy("shop", "in\u{1}")]
                    .into(),
                isolated_by_egress: Arc::default(),
            },
        )]),
        attributions: HashMap::from([(
            7,
            vec![
                RuleRef {
                    namespace: "shop".into(),
                    name: "allow-\u{7f}web".into(),
                    rule: 0,
                    peer: Some(1),
                    port: None,
                },
                RuleRef {
                    namespace: "shop".into(),
                    name: "allow-web".into(),
                    rule: 2,
                    peer: None,
                    port: Some(0),
                },
            ]
            .into(),
        )]),
        pods_by_ip: Arc::new(HashMap::from([
            (
                IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
                PodInfo {
                    namespace: "db".into(),
                    pod: "pg-0".into(),
                    labels: Arc::default(),
                    node: None,
                    workload: None,
                },
            ),
            (
                "fd00::2".parse().unwrap(),
                PodInfo {
                    namespace: "db".into(),
                    pod: "pg-0 😀".into(),
                    labels: labels(&[("k\"", "v\\")]),
                    node: Some("n😀".into()),
                    workload: Some(flowgate_flows::record::Workload {
                        kind: "StatefulSet".into(),
                        name: "pg".into(),
                    }),
                },
            ),
        ])),
        pods_changed: Arc::default(),
        source: None,
    }
}

fn address() -> impl Strategy<Value = [u8; 16]> {
    prop_oneof![
        Just(Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets()),
        Just("fd00::2".parse::<Ipv6Addr>().unwrap().octets()),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_ipv6_mapped().octets()),
        any::<[u8; 16]>(),
    ]
}

fn event() -> impl Strategy<Value = FlowEvent> {
    (
        (0u8..4, 0u8..8, 0u8..2, any::<u8>()),
        prop::sample::select(vec![1u8, 6, 17, 58, 132, 47, 0, 255]),
        prop_oneof![Just(4u8), Just(6u8), any::<u8>()],
        (
            any::<u8>(),
            any::<u8>(),
            0u32..3,
            1u32..3,
            prop_oneof![Just(0u32), Just(7), Just(9)],
        ),
        (any::<u32>(), any::<u16>(), any::<u16>()),
        (address(), address()),
        (any::<u64>(), any::<u64>()),
    )
        .prop_map(
            |(
                (verdict, reason, direction, _),
                proto,
                ip_version,
                (tcp_flags, flags, endpoint_id, generation, attribution),
                (count, src_port, dst_port),
                (src_addr, dst_addr),
                (timestamp_ns, first_ns),
            )| FlowEvent {
                version: ABI_VERSION,
                verdict,
                reason,
                direction,
                proto,
                ip_version,
                tcp_flags,
                flags,
                endpoint_id,
                generation,
                attribution,
                count,
                src_port,
                dst_port,
                src_addr,
                dst_addr,
                timestamp_ns,
                first_ns,
                ..FlowEvent::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Records from the real enricher: every branch of `enrich` (local, remote and external
    /// ends, known and unknown generations and attributions, ICMP, other protocols, tags),
    /// with wall-clock offsets from before 1970 to far in the future.
    #[test]
    fn enriched_records_serialize_like_serde(
        events in vec(event(), 1..8),
        offset in prop_oneof![Just(0i128), Just(1_795_888_800_000_000_000i128), any::<i64>().prop_map(i128::from)],
        audit in any::<bool>(),
    ) {
        let mut enricher = Enricher::new("node \"a\"\n", offset);
        enricher.push(tables(1, if audit { Mode::Audit } else { Mode::Enforce }));
        enricher.push(tables(2, Mode::Enforce));
        for ev in &events {
            let record = Record::Flow(enricher.enrich(ev));
            assert_same_json(&record);
        }
    }
}

/// The records of the real path, one of each kind, by name (the fixed cases behind the
/// properties above, so a regression names what broke).
#[test]
fn fixed_records_serialize_like_serde() {
    let mut enricher = Enricher::new("node-1", 1_795_888_800_000_000_000);
    enricher.push(tables(1, Mode::Enforce));
    let v4 = |o: [u8; 4]| Ipv4Addr::from(o).to_ipv6_mapped().octets();
    let base = FlowEvent {
        version: ABI_VERSION,
        proto: 6,
        ip_version: 4,
        tcp_flags: 0x12,
        endpoint_id: 1,
        generation: 1,
        count: 1,
        src_port: 40_000,
        dst_port: 80,
        src_addr: v4([10, 0, 0, 2]),
        dst_addr: v4([10, 0, 0, 1]),
        timestamp_ns: 5,
        first_ns: 5,
        ..FlowEvent::default()
    };
    let cases = [
        FlowEvent {
            attribution: 7,
            ..base
        },
        FlowEvent {
            verdict: 1,
            reason: 2,
            count: 4,
            first_ns: 1,
            ..base
        },
        FlowEvent {
            verdict: 1,
            direction: 1,
            dst_addr: v4([203, 0, 113, 5]),
            flags: 0xff,
            ..base
        },
        FlowEvent {
            proto: 58,
            ip_version: 6,
            src_addr: "fd00::2".parse::<Ipv6Addr>().unwrap().octets(),
            dst_addr: "2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(),
            ..base
        },
        FlowEvent {
            proto: 47,
            generation: 99,
            attribution: 7,
            ..base
        },
    ];
    for ev in &cases {
        assert_same_json(&Record::Flow(enricher.enrich(ev)));
    }
    let gap = GapRecord::new(
        "2026-11-28T18:00:00.000000000Z".into(),
        3,
        "node-1",
        &Stage::Sink("file".into()),
        LostCounts {
            allow: 1,
            deny: 2,
            audit: 0,
        },
        Some(SeqRange { first: 1, last: 3 }),
    );
    assert_same_json(&Record::Gap(gap));
}
