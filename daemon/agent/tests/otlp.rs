//! The OTLP logs sink against collectors in this process: the fake OpenTelemetry collector
//! (gRPC), a minimal OTLP/HTTP receiver (protobuf bodies decoded with the OTLP messages), and
//! dead ones (a closed port, a listener that never answers). Loopback only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fake_opentelemetry_collector::{ExportedLog, FakeCollectorServer};
use flowgate::otlp::{OtlpConfig, OtlpProtocol, OtlpSink, OtlpStats, log_fields, parse_rfc3339};
use flowgate_flows::gap::{GapRecord, LostCounts, Stage};
use flowgate_flows::pipeline::{Fanout, Record, Sink};
use flowgate_flows::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Verdict,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use prost::Message;

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

// ---------------------------------------------------------------------------------------------
// Expected OTLP values

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.into())),
    }
}

fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}

fn strs(v: &[&str]) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(ArrayValue {
            values: v.iter().map(|x| s(x)).collect(),
        })),
    }
}

/// The fake collector flattens attributes to `key -> format!("{:?}", Option<AnyValue>)`.
fn flat(attrs: &[(&str, AnyValue)]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), format!("{:?}", Some(v.clone()))))
        .collect()
}

/// Every attribute of the deny record of `sample()`, written out by hand.
fn deny_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("source.address", s("10.0.1.5")),
        ("source.port", i(40_000)),
        ("destination.address", s("10.0.3.9")),
        ("destination.port", i(5432)),
        ("network.transport", s("tcp")),
        ("network.type", s("ipv4")),
        ("k8s.namespace.name", s("shop")),
        ("k8s.pod.name", s("database")),
        ("flowgate.record_type", s("flow")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(2)),
        ("flowgate.verdict", s("deny")),
        ("flowgate.mode", s("enforce")),
        ("flowgate.reason", s("default_deny")),
        ("flowgate.direction", s("ingress")),
        ("flowgate.reporter", s("dst")),
        ("flowgate.policy.generation", i(7)),
        (
            "flowgate.policy.isolated_by",
            strs(&["shop/db-ingress", "shop/default-deny"]),
        ),
        ("flowgate.source.kind", s("pod")),
        ("flowgate.source.namespace", s("shop")),
        ("flowgate.source.pod", s("frontend")),
        ("flowgate.destination.kind", s("pod")),
        ("flowgate.destination.namespace", s("shop")),
        ("flowgate.destination.pod", s("database")),
        ("flowgate.network.tcp_flags", s("SYN")),
        ("flowgate.packets", i(3)),
        ("flowgate.dedup_count", i(2)),
    ]
}

fn audit_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("source.address", s("fd00::5")),
        ("destination.address", s("2001:db8::1")),
        ("network.transport", s("icmpv6")),
        ("network.type", s("ipv6")),
        ("k8s.namespace.name", s("shop")),
        ("k8s.pod.name", s("frontend")),
        ("flowgate.record_type", s("flow")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(3)),
        ("flowgate.verdict", s("audit_deny")),
        ("flowgate.mode", s("audit")),
        ("flowgate.reason", s("default_deny")),
        ("flowgate.direction", s("egress")),
        ("flowgate.reporter", s("src")),
        ("flowgate.policy.generation", i(7)),
        (
            "flowgate.policy.isolated_by",
            strs(&["shop/db-ingress", "shop/default-deny"]),
        ),
        ("flowgate.source.kind", s("pod")),
        ("flowgate.source.namespace", s("shop")),
        ("flowgate.source.pod", s("frontend")),
        ("flowgate.destination.kind", s("external")),
        ("flowgate.destination.scope", s("public")),
        ("flowgate.packets", i(1)),
        ("flowgate.dedup_count", i(0)),
        ("flowgate.tags", strs(&["egress_to_world"])),
    ]
}

fn gap_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("flowgate.record_type", s("gap")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(4)),
        ("flowgate.gap.stage", s("ringbuf")),
        ("flowgate.gap.lost.allow", i(5)),
        ("flowgate.gap.lost.deny", i(2)),
        ("flowgate.gap.lost.audit", i(1)),
        ("flowgate.gap.lost.total", i(8)),
    ]
}

/// (severity number, text, body) of `sample()`, by seq.
fn sample_heads() -> Vec<(i32, &'static str, &'static str)> {
    vec![
        (
            9,
            "INFO",
            "allow egress tcp shop/frontend 10.0.1.5:40000 -> shop/api 10.0.2.7:8080 (rule_allow)",
        ),
        (
            13,
            "WARN",
            "deny ingress tcp shop/frontend 10.0.1.5:40000 -> shop/database 10.0.3.9:5432 (default_deny)",
        ),
        (
            13,
            "WARN",
            "audit_deny egress icmpv6 shop/frontend fd00::5 -> 2001:db8::1 (default_deny)",
        ),
        (
            13,
            "WARN",
            "lost 8 records at ringbuf (allow 5, deny 2, audit 1)",
        ),
    ]
}

/// What the fake collector shows for `record`, from the sink's own mapping.
fn flat_mapping(record: &Record) -> BTreeMap<String, String> {
    log_fields(record)
        .attributes
        .into_iter()
        .map(|(k, v)| (k.to_owned(), format!("{:?}", Some(AnyValue::from(v)))))
        .collect()
}

fn seq_of(log: &ExportedLog) -> String {
    log.attributes
        .get("flowgate.seq")
        .cloned()
        .unwrap_or_default()
}

fn fast_config(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    let mut config = OtlpConfig::new(endpoint, protocol, "node-a");
    // Only `flush` sends: the test sees that flush pushes what is buffered.
    config.batch_delay = Duration::from_secs(600);
    config.export_timeout = Duration::from_secs(5);
    config
}

// ---------------------------------------------------------------------------------------------
// gRPC: the fake collector

#[test]
fn grpc_collector_gets_exactly_one_log_record_per_record() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();
    let mut config = fast_config(&collector.endpoint(), OtlpProtocol::Grpc);
    config.headers = vec![("x-flowgate-tenant".into(), "blue".into())];
    let mut sink = OtlpSink::new(config).unwrap();
    let records = sample();
    for r in &records {
        sink.write(r).unwrap();
    }
    // Nothing leaves before the flush (batch_delay is 10 minutes).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.stats().exported, 0);
    sink.flush().unwrap();
    let mut logs = rt.block_on(collector.exported_logs(4, Duration::from_secs(10)));
    // Nothing more arrives.
    logs.extend(rt.block_on(collector.exported_logs(1, Duration::from_millis(300))));
    assert_eq!(logs.len(), 4, "one log record per record: {logs:#?}");

    let by_seq = |seq: i64| -> &ExportedLog {
        let want = format!("{:?}", Some(i(seq)));
        logs.iter()
            .find(|l| l.attributes.get("flowgate.seq") == Some(&want))
            .unwrap_or_else(|| panic!("no log record with seq {seq}: {logs:#?}"))
    };
    for ((seq, record), (severity, text, body)) in (1..).zip(&records).zip(sample_heads()) {
        let log = by_seq(seq);
        assert_eq!(log.severity_number, severity, "seq {seq}");
        assert_eq!(log.severity_text, text, "seq {seq}");
        assert_eq!(log.body, Some(format!("{:?}", s(body))), "seq {seq}");
        assert_eq!(log.attributes, flat_mapping(record), "seq {seq}");
        assert_eq!(log.dropped_attributes_count, 0);
    }
    // The mapping itself, written out by hand for three of them.
    assert_eq!(by_seq(2).attributes, flat(&deny_attributes()));
    assert_eq!(by_seq(3).attributes, flat(&audit_attributes()));
    assert_eq!(by_seq(4).attributes, flat(&gap_attributes()));
    let allow = &by_seq(1).attributes;
    assert_eq!(
        allow.get("flowgate.policy.allowed_by"),
        Some(&format!("{:?}", Some(strs(&["shop/allow-web[0]"]))))
    );
    assert_eq!(
        allow.get("k8s.pod.name"),
        Some(&format!("{:?}", Some(s("frontend")))),
        "an egress record is reported by its source pod"
    );
    assert!(!allow.contains_key("flowgate.policy.isolated_by"));

    let stats = sink.shutdown();
    assert_eq!(
        (
            stats.accepted,
            stats.exported,
            stats.dropped(),
            stats.buffered
        ),
        (4, 4, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.export_failures, 0);
    collector.abort();
}

/// Through the pipeline (`Fanout`): closing it drops the sink, which sends what is left.
#[test]
fn grpc_through_the_fanout_every_record_arrives_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();
    let mut config = OtlpConfig::new(&collector.endpoint(), OtlpProtocol::Grpc, "node-a");
    config.max_batch = 64;
    let sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let mut fanout = Fanout::new("node-a");
    fanout.add_sink(Box::new(sink), 4096).unwrap();
    let sent = 1_000u64;
    for seq in 1..=sent {
        let verdict = if seq % 3 == 0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        fanout.publish(flow(
            seq,
            verdict,
            Direction::Egress,
            pod("10.0.1.5", Some(40_000), "shop", "frontend"),
            external("203.0.113.5", Some(443)),
        ));
    }
    // The fake collector holds at most 64 log records until they are read: read concurrently.
    let reader = rt.spawn(async move {
        let mut logs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while logs.len() < 1_000 && Instant::now() < deadline {
            logs.extend(collector.exported_logs(1, Duration::from_millis(50)).await);
        }
        // Anything beyond the records would show up here.
        logs.extend(collector.exported_logs(1, Duration::from_millis(200)).await);
        collector.abort();
        logs
    });
    let pipeline = fanout.close();
    assert_eq!((pipeline[0].delivered, pipeline[0].lost.total()), (sent, 0));
    let logs = rt.block_on(reader).unwrap();
    let stats = handle.stats();
    assert_eq!(logs.len() as u64, sent, "{stats:?}");
    let mut seqs: Vec<String> = logs.iter().map(seq_of).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, sent, "each record exactly once");
    let warn = logs.iter().filter(|l| l.severity_text == "WARN").count();
    assert_eq!(warn as u64, sent / 3, "denies are WARN");
    assert_eq!(
        (stats.accepted, stats.exported, stats.dropped()),
        (sent, sent, 0)
    );
    assert!(
        stats.export_batches >= sent / 64,
        "batches of at most 64: {stats:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// HTTP: a minimal OTLP/HTTP receiver

#[derive(Debug)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    request: ExportLogsServiceRequest,
}

struct HttpCollector {
    endpoint: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// While set, every request is answered 503 and not kept.
    failing: Arc<AtomicBool>,
}

impl HttpCollector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (r, f) = (Arc::clone(&received), Arc::clone(&failing));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (r, f) = (Arc::clone(&r), Arc::clone(&f));
                std::thread::spawn(move || serve(stream, &r, &f));
            }
        });
        Self {
            endpoint,
            received,
            failing,
        }
    }

    fn log_records(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.request.resource_logs.iter())
            .flat_map(|rl| rl.scope_logs.iter())
            .flat_map(|sl| sl.log_records.iter().cloned())
            .collect()
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.log_records().len();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// HTTP/1.1 with keep-alive and content-length bodies (what the exporter's hyper client sends).
fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, failing: &AtomicBool) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response: &[u8] = if failing.load(Ordering::SeqCst) {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        } else {
            let request = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
            received.lock().unwrap().push(Received {
                path,
                headers,
                request,
            });
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        };
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

fn kv_map(kvs: &[KeyValue]) -> BTreeMap<String, AnyValue> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

fn seq_value(r: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> i64 {
    match kv_map(&r.attributes)
        .get("flowgate.seq")
        .and_then(|v| v.value.clone())
    {
        Some(Value::IntValue(v)) => v,
        other => panic!("flowgate.seq: {other:?}"),
    }
}

#[test]
fn http_protobuf_receiver_gets_the_records_with_timestamps_resource_and_headers() {
    let collector = HttpCollector::start();
    let mut config = fast_config(&collector.endpoint, OtlpProtocol::HttpProtobuf);
    config.headers = vec![("X-Flowgate-Tenant".into(), "blue".into())];
    let mut sink = OtlpSink::new(config).unwrap();
    let records = sample();
    for r in &records {
        sink.write(r).unwrap();
    }
    sink.flush().unwrap();
    assert_eq!(collector.wait_for(4, Duration::from_secs(10)), 4);
    assert!(sink.handle().wait_idle(Duration::from_secs(5)));

    let received = collector.received.lock().unwrap();
    assert_eq!(received.len(), 1, "one request for one flushed batch");
    let req = &received[0];
    assert_eq!(req.path, "/v1/logs");
    assert_eq!(
        req.headers.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
    assert_eq!(
        req.headers.get("x-flowgate-tenant").map(String::as_str),
        Some("blue")
    );
    let [rl] = req.request.resource_logs.as_slice() else {
        panic!("one resource: {:?}", req.request)
    };
    let resource = kv_map(&rl.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], s("flowgate"));
    assert_eq!(resource["k8s.node.name"], s("node-a"));
    assert_eq!(resource["host.name"], s("node-a"));
    assert_eq!(resource["service.version"], s(env!("CARGO_PKG_VERSION")));
    let [sl] = rl.scope_logs.as_slice() else {
        panic!("one scope")
    };
    assert_eq!(sl.scope.as_ref().unwrap().name, "flowgate");
    assert_eq!(sl.log_records.len(), 4);
    for (record, (log, (severity, text, body))) in records
        .iter()
        .zip(sl.log_records.iter().zip(sample_heads()))
    {
        let want_ns = parse_rfc3339(record.time())
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert_eq!(
            u128::from(log.time_unix_nano),
            want_ns,
            "time from record.time"
        );
        assert!(log.observed_time_unix_nano > 0);
        assert_eq!(
            (log.severity_number, log.severity_text.as_str()),
            (severity, text)
        );
        assert_eq!(log.body, Some(s(body)));
        let event = if matches!(record, Record::Gap(_)) {
            "flowgate.gap"
        } else {
            "flowgate.flow"
        };
        assert_eq!(log.event_name, event);
        let got = kv_map(&log.attributes);
        let want: BTreeMap<String, AnyValue> = log_fields(record)
            .attributes
            .into_iter()
            .map(|(k, v)| (k.to_owned(), AnyValue::from(v)))
            .collect();
        assert_eq!(got, want, "seq {}", record.seq());
        assert_eq!(got.len(), log.attributes.len(), "no duplicate keys");
    }
    assert_eq!(
        kv_map(&sl.log_records[1].attributes),
        deny_attributes()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    );
    drop(received);
    let stats = sink.shutdown();
    assert_eq!((stats.exported, stats.dropped()), (4, 0), "{stats:?}");
}

/// The collector refuses for a while: batches are given up, the buffer stays bounded, and once
/// the collector is back its stream accounts for every record (received + reported lost).
#[test]
fn http_outage_loss_is_bounded_counted_and_reported_in_the_stream() {
    let collector = HttpCollector::start();
    collector.failing.store(true, Ordering::SeqCst);
    let mut config = fast_config(&collector.endpoint, OtlpProtocol::HttpProtobuf);
    config.buffer_capacity = 8;
    config.max_batch = 4;
    config.max_attempts = 1;
    config.retry_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(1);
    let mut sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let deny = |seq| {
        flow(
            seq,
            if seq % 2 == 0 {
                Verdict::Deny
            } else {
                Verdict::Allow
            },
            Direction::Ingress,
            external("203.0.113.5", Some(50_000)),
            pod("10.0.3.9", Some(5432), "shop", "database"),
        )
    };
    let mut refused = 0u64;
    for seq in 1..=40 {
        if sink.write(&deny(seq)).is_err() {
            refused += 1;
        }
        let _ = sink.flush();
        assert!(handle.stats().buffered <= 8);
    }
    // Let the export thread give up what it holds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().dropped_export.total() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = handle.stats();
    assert!(
        refused > 0 && during.dropped_full.total() == refused,
        "{during:?}"
    );
    assert!(
        during.export_failures > 0 && during.dropped_export.total() > 0,
        "{during:?}"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(sink.flush().is_err(), "flush reports the failed exports");

    // The collector is back: what the buffer holds (a gap record standing for the given-up
    // batches) goes out, then new records are taken again.
    collector.failing.store(false, Ordering::SeqCst);
    assert!(
        handle.wait_idle(Duration::from_secs(10)),
        "{:?}",
        handle.stats()
    );
    for seq in 41..=45 {
        sink.write(&deny(seq)).unwrap();
    }
    sink.flush().unwrap();
    assert!(
        handle.wait_idle(Duration::from_secs(10)),
        "{:?}",
        handle.stats()
    );
    let stats = sink.shutdown();

    let logs = collector.log_records();
    let mut flows = 0u64;
    let mut lost = 0u64;
    let mut stages = Vec::new();
    for log in &logs {
        let attrs = kv_map(&log.attributes);
        if attrs["flowgate.record_type"] == s("gap") {
            let Some(Value::IntValue(n)) = attrs["flowgate.gap.lost.total"].value.clone() else {
                panic!("lost.total")
            };
            lost += u64::try_from(n).unwrap();
            stages.push(attrs["flowgate.gap.stage"].clone());
        } else {
            flows += 1;
        }
    }
    eprintln!(
        "received {flows} flow records and gap records for {lost} lost: {stages:?}; {stats:?}"
    );
    assert!(stages.contains(&s("sink_otlp_export")), "{stages:?}");
    assert!(flows > 0);
    // Records refused at the very end have no later record to carry their gap; none here.
    assert_eq!(
        flows + lost,
        45,
        "received + reported lost = sent ({flows} + {lost}); {stats:?}"
    );
    let seqs: Vec<i64> = logs.iter().map(seq_value).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the stream stays in order: {seqs:?}"
    );
    assert_eq!(
        stats.accepted + stats.gap_records,
        stats.exported + stats.dropped_export.total() + stats.buffered as u64,
        "{stats:?}"
    );
    assert_eq!(stats.exported, logs.len() as u64);
}

// ---------------------------------------------------------------------------------------------
// Dead collectors

/// A loopback port nothing listens on.
fn closed_port_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Accepts connections and never answers (a hung collector).
fn black_hole_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

/// Writes many records at a dead collector: no call waits, the buffer never exceeds its
/// bound, losses are counted, and dropping the sink is bounded too.
fn dead_collector_neither_blocks_nor_grows(endpoint: &str, protocol: OtlpProtocol) -> OtlpStats {
    let mut config = OtlpConfig::new(endpoint, protocol, "node-a");
    config.buffer_capacity = 256;
    config.max_batch = 64;
    config.batch_delay = Duration::from_millis(20);
    config.export_timeout = Duration::from_secs(1);
    config.max_attempts = 2;
    config.retry_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(20);
    config.shutdown_timeout = Duration::from_secs(1);
    let mut sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let sent = 20_000u64;
    let mut refused = 0u64;
    let mut slowest = Duration::ZERO;
    let mut max_buffered = 0;
    let started = Instant::now();
    for seq in 1..=sent {
        let record = flow(
            seq,
            Verdict::Deny,
            Direction::Egress,
            pod("10.0.1.5", Some(40_000), "shop", "frontend"),
            external("203.0.113.5", Some(443)),
        );
        let t = Instant::now();
        if sink.write(&record).is_err() {
            refused += 1;
        }
        if seq % 100 == 0 {
            let _ = sink.flush();
        }
        slowest = slowest.max(t.elapsed());
        if seq % 100 == 0 {
            max_buffered = max_buffered.max(handle.stats().buffered);
            // Spread the writes over about a second, so exports are attempted meanwhile.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let writing = started.elapsed();
    assert!(
        writing < Duration::from_secs(5),
        "{protocol}: writes took {writing:?}"
    );
    assert!(
        // Far below the export timeout (1 s): no call waits for an export. (Not tighter: on a
        // loaded 2-core machine the export thread can be preempted while it holds the lock.)
        slowest < Duration::from_millis(500),
        "{protocol}: slowest write/flush {slowest:?}"
    );
    let stats = handle.stats();
    assert!(
        max_buffered <= 256 && stats.buffered <= 256,
        "{protocol}: {stats:?}"
    );
    assert_eq!(stats.accepted + stats.dropped_full.total(), sent);
    assert_eq!(stats.dropped_full.total(), refused);
    assert_eq!(stats.dropped_full.deny, refused, "counted by verdict class");
    assert!(refused > sent / 2, "{protocol}: {stats:?}");
    assert!(stats.export_failures > 0, "{protocol}: {stats:?}");
    assert!(stats.last_error.is_some());
    assert_eq!(stats.exported, 0);

    let t = Instant::now();
    drop(sink);
    let stopping = t.elapsed();
    assert!(
        stopping < Duration::from_secs(4),
        "{protocol}: dropping the sink took {stopping:?}"
    );
    let stats = handle.stats();
    eprintln!(
        "{protocol} at {endpoint}: writes {writing:?} (slowest {slowest:?}), drop {stopping:?}; {stats:?}"
    );
    assert_eq!(stats.buffered, 0);
    assert_eq!(
        stats.accepted + stats.gap_records,
        stats.dropped_export.total(),
        "{protocol}: every record taken is accounted for: {stats:?}"
    );
    stats
}

#[test]
fn unreachable_grpc_collector_neither_blocks_nor_grows() {
    let stats =
        dead_collector_neither_blocks_nor_grows(&closed_port_endpoint(), OtlpProtocol::Grpc);
    assert!(stats.gap_records > 0, "{stats:?}");
}

#[test]
fn unreachable_http_collector_neither_blocks_nor_grows() {
    let stats = dead_collector_neither_blocks_nor_grows(
        &closed_port_endpoint(),
        OtlpProtocol::HttpProtobuf,
    );
    assert!(stats.gap_records > 0, "{stats:?}");
}

#[test]
fn hung_collector_neither_blocks_nor_grows() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let stats = dead_collector_neither_blocks_nor_grows(&black_hole_endpoint(), protocol);
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("export timed out")),
            "{protocol}: {stats:?}"
        );
    }
}

#[test]
fn tls_endpoints_and_bad_headers_are_refused_up_front() {
    let err = OtlpSink::new(OtlpConfig::new(
        "https://collector:4317",
        OtlpProtocol::Grpc,
        "n",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("plain http://"), "{err}");
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let mut config = OtlpConfig::new("http://127.0.0.1:4317", protocol, "n");
        config.headers = vec![("bad header".into(), "v".into())];
        assert!(OtlpSink::new(config).is_err(), "{protocol}");
    }
}
