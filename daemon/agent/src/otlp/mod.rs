//! OTLP logs sink: every [`Record`] the pipeline hands this sink becomes one OpenTelemetry
//! `LogRecord`, sent to a collector over OTLP/gRPC or OTLP/HTTP (protobuf).
//!
//! # Transport: plain text only, no TLS
//!
//! The sink speaks plain `http://` (gRPC over h2c, or HTTP/1.1 protobuf POSTs) to a collector
//! on the node or in the cluster network (a DaemonSet collector, `hostPort` 4317/4318). No TLS
//! is compiled in: no rustls, so no second rustls crypto provider next to kube's (two providers
//! make `kube::Client` panic; `../shared/TOOLCHAIN.md`). An `https://` endpoint is refused when
//! the sink is built ([`OtlpError::Scheme`]); run a node-local collector that forwards with TLS.
//!
//! # Records
//!
//! | OTLP field | flow record (`record_type: flow`) | gap record (`record_type: gap`) |
//! | --- | --- | --- |
//! | `time_unix_nano` | `time` (RFC 3339, ns) | `time` |
//! | `observed_time_unix_nano` | when the sink took the record | same |
//! | `severity_number` / `severity_text` | `allow`: 9 `INFO`; `deny` and `audit_deny`: 13 `WARN` | 13 `WARN` |
//! | `event_name` | `flowgate.flow` | `flowgate.gap` |
//! | `body` | `deny ingress tcp shop/frontend 10.0.0.1:40000 -> shop/db 10.0.0.2:5432 (default_deny)` | `lost 3 records at sink_otlp (allow 1, deny 2, audit 0), seq 7..9` |
//!
//! An `audit_deny` is a packet the policy would have dropped and that audit mode let through:
//! it is the same finding as a `deny`, so it gets the same severity; `flowgate.verdict` and
//! `flowgate.mode` tell them apart. Allows are routine (`INFO`).
//!
//! # Attributes
//!
//! OpenTelemetry semantic-convention names where one exists, `flowgate.*` for the rest. Enum
//! values are the lowercase strings of the JSON records (`flowgate.flow/v1`). Absent values
//! (ICMP ports, an external peer's pod, empty lists) are left out, never sent empty.
//!
//! | attribute | type | flow record field |
//! | --- | --- | --- |
//! | `source.address` | string | `source.ip` |
//! | `source.port` | int | `source.port` (not for ICMP) |
//! | `destination.address` | string | `destination.ip` |
//! | `destination.port` | int | `destination.port` (not for ICMP) |
//! | `network.transport` | string | `network.transport`: `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` or the protocol number |
//! | `network.type` | string | `ipv4` or `ipv6` (`network.ip_version`) |
//! | `k8s.namespace.name` | string | the reporting pod's namespace (`source` when `reporter` is `src`, else `destination`) |
//! | `k8s.pod.name` | string | the reporting pod's name |
//! | `flowgate.record_type` | string | `flow` |
//! | `flowgate.schema` | string | `schema` (`flowgate.flow/v1`) |
//! | `flowgate.seq` | int | `seq` |
//! | `flowgate.verdict` | string | `verdict`: `allow`, `deny`, `audit_deny` |
//! | `flowgate.mode` | string | `mode`: `enforce`, `audit` |
//! | `flowgate.reason` | string | `reason`: `not_isolated`, `rule_allow`, `default_deny`, ... |
//! | `flowgate.direction` | string | `direction`: `ingress`, `egress` |
//! | `flowgate.reporter` | string | `reporter`: `src`, `dst` |
//! | `flowgate.policy.generation` | int | `policy.generation` |
//! | `flowgate.policy.allowed_by` | string[] | `policy.allowed_by` as `ns/name[rule]` |
//! | `flowgate.policy.isolated_by` | string[] | `policy.isolated_by` as `ns/name` |
//! | `flowgate.policy.unresolved` | bool | `policy.unresolved` (only when true) |
//! | `flowgate.source.kind` | string | `source.kind`: `pod`, `external` |
//! | `flowgate.source.namespace` | string | `source.namespace` (pods) |
//! | `flowgate.source.pod` | string | `source.pod` (pods) |
//! | `flowgate.source.scope` | string | `source.scope`: `private`, `public` (externals) |
//! | `flowgate.destination.kind`, `.namespace`, `.pod`, `.scope` | string | the same for `destination` |
//! | `flowgate.network.tcp_flags` | string | `network.tcp_flags` (`SYN\|ACK`; TCP only) |
//! | `flowgate.packets` | int | `counters.packets` |
//! | `flowgate.dedup_count` | int | `counters.dedup_count` |
//! | `flowgate.tags` | string[] | `tags` (`egress_to_world`, `recheck`) |
//!
//! `flowgate.source.*` and `flowgate.destination.*` are set for both ends, the reporting one
//! included, so "every flow to pod X" is one attribute filter whichever end reported it;
//! `k8s.namespace.name`/`k8s.pod.name` name the reporting pod, as the conventions mean them.
//! Pod labels are not sent (unbounded cardinality); the JSON records keep them.
//!
//! | attribute | type | gap record field |
//! | --- | --- | --- |
//! | `flowgate.record_type` | string | `gap` |
//! | `flowgate.schema`, `flowgate.seq` | string, int | `schema`, `seq` |
//! | `flowgate.gap.stage` | string | `stage`: `ringbuf`, `restart`, `sink_<name>` |
//! | `flowgate.gap.lost.allow`, `.deny`, `.audit` | int | `lost.allow`, `lost.deny`, `lost.audit` |
//! | `flowgate.gap.lost.total` | int | their sum |
//! | `flowgate.gap.lost_seq.first`, `.last` | int | `lost_seq` (when known) |
//!
//! Resource: `service.name` = `flowgate` (configurable), `service.version` = the crate version,
//! `host.name` and `k8s.node.name` = the node name, plus whatever `OTEL_RESOURCE_ATTRIBUTES`
//! adds. Instrumentation scope: `flowgate` with the crate version.
//!
//! # Batching, memory and loss
//!
//! [`Sink::write`] neither converts nor waits: it appends the record to a bounded buffer
//! ([`OtlpConfig::buffer_capacity`] records) under a mutex and returns. An export thread of
//! the sink's own (a current-thread tokio runtime driving the exporter) sends
//! batches of up to [`OtlpConfig::max_batch`] records, one export in flight at a time, when a
//! batch is full, when the oldest record has waited [`OtlpConfig::batch_delay`], or as soon as
//! [`Sink::flush`] asks for it. `flush()` does not wait for the collector either: it hands
//! everything buffered to the export thread and returns (use [`OtlpHandle::wait_idle`] to wait).
//!
//! A dead or slow collector never grows memory: a failed export is retried with backoff
//! ([`OtlpConfig::max_attempts`] attempts, each bounded by [`OtlpConfig::export_timeout`]) while
//! the records stay in the bounded buffer; when the buffer is full `write` refuses the record
//! (returns an error, which the pipeline counts) and counts it. Loss is made visible in the
//! stream itself, like the pipeline's queues do: the next record the sink does take is preceded
//! by a gap record (stage `sink_<name>_buffer`), and a batch given up after its last attempt is
//! replaced by one gap record (stage `sink_<name>_export`) at the head of the buffer. Such a gap
//! record counts the flow records lost and carries over the counts of gap records that were lost
//! with them, so every loss stays reported; its `lost_seq` spans the lost part of the stream.
//! Counters: [`OtlpSink::stats`] / [`OtlpHandle::stats`].
//!
//! Dropping the sink (the pipeline drops it when its queue closes) exports what is left until
//! [`OtlpConfig::shutdown_timeout`] has passed since the drop (an export already under way may
//! first run out its [`OtlpConfig::export_timeout`]), counts what could not be sent as dropped,
//! and stops the export thread.
//!
//! [`Record`]: flowgate_flows::pipeline::Record
//! [`Sink::write`]: flowgate_flows::pipeline::Sink::write
//! [`Sink::flush`]: flowgate_flows::pipeline::Sink::flush
//!
//! This file owns the configuration, the error and counter types; the sink and its buffer are
//! in `sink.rs`, the export thread in `export.rs`, the record mapping in `mapping.rs`.

mod export;
mod mapping;
mod sink;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use flowgate_flows::gap::LostCounts;
use serde::Serialize;

pub use mapping::{LogFields, log_fields, parse_rfc3339};
pub use sink::{OtlpHandle, OtlpSink};

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`grpc`); endpoint like `http://127.0.0.1:4317`.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`http/protobuf`); endpoint like `http://127.0.0.1:4318`
    /// (`/v1/logs` is appended unless the URL already ends with it).
    HttpProtobuf,
}

impl FromStr for OtlpProtocol {
    type Err = OtlpError;

    /// The values of `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc`, `http/protobuf` (`http` also works).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" | "http" => Ok(Self::HttpProtobuf),
            other => Err(OtlpError::Protocol(other.to_owned())),
        }
    }
}

impl fmt::Display for OtlpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Grpc => "grpc",
            Self::HttpProtobuf => "http/protobuf",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error(
        "OTLP endpoint {0:?}: only plain http:// is supported (this build has no TLS); \
         send to a node-local collector"
    )]
    Scheme(String),
    #[error("unknown OTLP protocol {0:?} (expected grpc or http/protobuf)")]
    Protocol(String),
    #[error("invalid OTLP header {0:?} (expected name=value, an ASCII header name and value)")]
    Header(String),
    #[error("building the OTLP exporter: {0}")]
    Build(String),
    #[error("starting the OTLP export thread: {0}")]
    Io(#[from] std::io::Error),
}

/// Where and how to send, and the bounds of the buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// `http://host:port`: 4317 for gRPC, 4318 for HTTP by convention.
    pub endpoint: String,
    pub protocol: OtlpProtocol,
    /// Extra request headers (gRPC metadata), e.g. a tenant id.
    pub headers: Vec<(String, String)>,
    /// `service.name` of the resource.
    pub service_name: String,
    /// `host.name` and `k8s.node.name` of the resource.
    pub node_name: String,
    /// The sink's name in the pipeline (its gap records say `sink_<name>_buffer`/`_export`).
    pub name: String,
    /// Records held at most (buffered plus the batch being sent); at least 2.
    pub buffer_capacity: usize,
    /// Log records per export request.
    pub max_batch: usize,
    /// How long a record may wait for a fuller batch when nobody calls `flush`.
    pub batch_delay: Duration,
    /// Bound on one export request (connect included).
    pub export_timeout: Duration,
    /// Attempts per batch before it is given up (and replaced by a gap record); at least 1.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubles per further failure up to `max_backoff`.
    pub retry_backoff: Duration,
    pub max_backoff: Duration,
    /// How long dropping the sink may spend exporting what is left.
    pub shutdown_timeout: Duration,
}

impl OtlpConfig {
    pub fn new(endpoint: &str, protocol: OtlpProtocol, node_name: &str) -> Self {
        Self {
            endpoint: endpoint.to_owned(),
            protocol,
            headers: Vec::new(),
            service_name: "flowgate".to_owned(),
            node_name: node_name.to_owned(),
            name: "otlp".to_owned(),
            buffer_capacity: 8192,
            max_batch: 512,
            batch_delay: Duration::from_secs(1),
            export_timeout: Duration::from_secs(5),
            max_attempts: 3,
            retry_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`-style `name=value,name2=value2` (spaces trimmed).
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, OtlpError> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| OtlpError::Header(kv.to_owned()))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

/// The sink's counters. Invariant: `accepted + gap_records = exported +
/// dropped_export.total() + buffered`; what `write` refused is in `dropped_full`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OtlpStats {
    /// Records `write` took into the buffer.
    pub accepted: u64,
    /// Records `write` refused because the buffer was full, by verdict class (gap records
    /// count as `deny`, as in the pipeline).
    pub dropped_full: LostCounts,
    /// Records given up after `max_attempts` failed exports, or still unsent when the sink
    /// stopped, by verdict class (this sink's own gap records included).
    pub dropped_export: LostCounts,
    /// Log records the collector acknowledged (this sink's gap records included).
    pub exported: u64,
    /// Gap records this sink added to its stream.
    pub gap_records: u64,
    /// Successful export requests.
    pub export_batches: u64,
    /// Failed export attempts (errors and timeouts).
    pub export_failures: u64,
    /// Records held now.
    pub buffered: usize,
    pub capacity: usize,
    pub last_error: Option<String>,
}

impl OtlpStats {
    /// Every record this sink lost (refused or given up).
    pub fn dropped(&self) -> u64 {
        self.dropped_full.total() + self.dropped_export.total()
    }
}

#[cfg(test)]
mod tests {
    use super::sink::Loss;
    use super::*;
    use flowgate_flows::enrich::rfc3339;
    use flowgate_flows::gap::{GapRecord, SeqRange, Stage};
    use flowgate_flows::pipeline::Record;
    use std::time::{SystemTime, UNIX_EPOCH};

    fn nanos(t: SystemTime) -> u128 {
        t.duration_since(UNIX_EPOCH).unwrap().as_nanos()
    }

    #[test]
    fn parses_the_records_time_format() {
        for ns in [
            0i128,
            1_795_888_800_500_000_000,
            951_782_400_000_000_001,
            4_102_444_799_999_999_999,
        ] {
            let t = parse_rfc3339(&rfc3339(ns)).unwrap();
            assert_eq!(nanos(t) as i128, ns, "{}", rfc3339(ns));
        }
        let t = parse_rfc3339("2026-11-28T19:00:00.5+01:00").unwrap();
        assert_eq!(nanos(t), 1_795_888_800_500_000_000);
        for bad in [
            "",
            "2026-11-28",
            "2026-13-28T18:00:00Z",
            "2026-11-28T18:00:00",
            "2026-11-28T18:00:00.Z",
            "2026-11-28T18:00:00Zjunk",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn headers_parse_like_the_otel_variable() {
        assert_eq!(
            parse_headers(" x-tenant = a , authorization=Bearer t=1,").unwrap(),
            vec![
                ("x-tenant".to_owned(), "a".to_owned()),
                ("authorization".to_owned(), "Bearer t=1".to_owned())
            ]
        );
        assert!(parse_headers("novalue").is_err());
        assert_eq!(
            "http/protobuf".parse::<OtlpProtocol>().unwrap(),
            OtlpProtocol::HttpProtobuf
        );
        assert!("http/json".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn a_gap_carries_lost_gap_counts_over_and_spans_their_range() {
        let mut loss = Loss::default();
        let flow = |seq| {
            let mut e = flowgate_flows::Enricher::new("n1", 0);
            let mut f = e.enrich(&flowgate_abi::FlowEvent {
                version: flowgate_abi::ABI_VERSION,
                ip_version: 4,
                ..Default::default()
            });
            f.seq = seq;
            Record::Flow(f)
        };
        loss.add(&flow(10));
        let upstream = GapRecord::new(
            rfc3339(0),
            14,
            "n1",
            &Stage::Sink("otlp".into()),
            LostCounts {
                allow: 1,
                deny: 2,
                audit: 0,
            },
            Some(SeqRange {
                first: 11,
                last: 14,
            }),
        );
        loss.add(&Record::Gap(upstream));
        loss.add(&flow(15));
        let Some(Record::Gap(g)) = loss.gap(&rfc3339(0), "n1", "otlp_export") else {
            panic!("a gap record")
        };
        assert_eq!((g.seq, g.stage.as_str()), (15, "sink_otlp_export"));
        assert_eq!(
            g.lost_seq,
            Some(SeqRange {
                first: 10,
                last: 15
            })
        );
        assert_eq!(g.lost.total(), 5);
    }
}
