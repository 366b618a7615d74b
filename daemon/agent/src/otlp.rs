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
//! | `flowgate.gap.stage` | string | `stage`: `ringbuf`, `sink_<name>` |
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

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage, VerdictClass};
use flowgate_flows::pipeline::{Record, Sink};
use flowgate_flows::record::{Endpoint, FlowRecord, Reporter, Verdict};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::{InstrumentationScope, Key, KeyValue};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use serde::Serialize;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

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

#[derive(Debug, Clone)]
struct Entry {
    record: Record,
    observed: SystemTime,
}

/// Losses of one streak, not yet reported by a gap record.
#[derive(Debug, Default)]
struct Loss {
    lost: LostCounts,
    first: Option<u64>,
    last: u64,
}

impl Loss {
    /// Accounts a lost record: a flow record counts 1 in its class; a gap record carries its
    /// own counts over (so no loss goes unreported) and widens the range by what it covered.
    fn add(&mut self, record: &Record) {
        match record {
            Record::Flow(f) => {
                self.lost.add(record.verdict_class(), 1);
                self.cover(f.seq, f.seq);
            }
            Record::Gap(g) => {
                for class in VerdictClass::ALL {
                    self.lost.add(class, g.lost.get(class));
                }
                let first = g.lost_seq.map_or(g.seq, |r| r.first.min(g.seq));
                self.cover(first, g.seq);
            }
            Record::Node(n) => {
                self.lost.add(record.verdict_class(), 1);
                self.cover(n.seq, n.seq);
            }
        }
    }

    fn cover(&mut self, first: u64, last: u64) {
        self.first = Some(self.first.map_or(first, |f| f.min(first)));
        self.last = self.last.max(last);
    }

    fn gap(&self, time: &str, node: &str, stage: &str) -> Option<Record> {
        let first = self.first?;
        Some(Record::Gap(GapRecord::new(
            time.to_owned(),
            self.last,
            node,
            &Stage::Sink(stage.to_owned()),
            self.lost,
            Some(SeqRange {
                first,
                last: self.last,
            }),
        )))
    }
}

#[derive(Debug, Default)]
struct State {
    buffer: VecDeque<Entry>,
    /// Records refused since the last gap record.
    refused: Loss,
    /// Set by `flush`: send what is buffered now.
    flush_requested: bool,
    /// Set when the sink is dropped: when that happened.
    closing: Option<Instant>,
    /// When the oldest record not yet in a sent batch arrived.
    batch_started: Option<Instant>,
    /// Failed attempts of the batch at the head of the buffer.
    attempts: u32,
    backoff_until: Option<Instant>,
    /// Failed attempts not yet reported by `flush`.
    unreported_failures: u64,
    stats: OtlpStats,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the export thread.
    work: Condvar,
    /// Wakes `wait_idle` callers.
    idle: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reads the counters of a sink that has been moved into the pipeline.
#[derive(Debug, Clone)]
pub struct OtlpHandle {
    shared: Arc<Shared>,
}

impl OtlpHandle {
    pub fn stats(&self) -> OtlpStats {
        let st = self.shared.lock();
        let mut stats = st.stats.clone();
        stats.buffered = st.buffer.len();
        stats
    }

    /// Waits until nothing is buffered (sent, or given up: see `stats`), at most `timeout`.
    pub fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if st.buffer.is_empty() {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            if st.closing.is_none() {
                st.flush_requested = true;
                self.shared.work.notify_one();
            }
            st = self
                .shared
                .idle
                .wait_timeout(st, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The OTLP logs sink (see the module docs).
#[derive(Debug)]
pub struct OtlpSink {
    name: String,
    /// The stage of the gap records that report refused records: `<name>_buffer`.
    buffer_stage: String,
    node: String,
    capacity: usize,
    max_batch: usize,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpSink {
    /// Builds the exporter and starts the export thread. Nothing is sent (and no connection
    /// made) before the first record.
    pub fn new(config: OtlpConfig) -> Result<Self, OtlpError> {
        if !config.endpoint.starts_with("http://") {
            return Err(OtlpError::Scheme(config.endpoint));
        }
        let capacity = config.buffer_capacity.max(2);
        let max_batch = config.max_batch.clamp(1, capacity);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let exporter = {
            // tonic's channel spawns its worker on the runtime it is built in.
            let _guard = runtime.enter();
            build_exporter(&config)?
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                stats: OtlpStats {
                    capacity,
                    ..OtlpStats::default()
                },
                ..State::default()
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let worker = Worker {
            shared: Arc::clone(&shared),
            runtime,
            exporter,
            records: Records::new(),
            node: config.node_name.clone(),
            stage: format!("{}_export", config.name),
            max_batch,
            config: config.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("{}-export", config.name))
            .spawn(move || worker.run())?;
        Ok(Self {
            buffer_stage: format!("{}_buffer", config.name),
            name: config.name,
            node: config.node_name,
            capacity,
            max_batch,
            shared,
            thread: Some(thread),
        })
    }

    pub fn handle(&self) -> OtlpHandle {
        OtlpHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    pub fn stats(&self) -> OtlpStats {
        self.handle().stats()
    }

    /// Exports what is left (at most `shutdown_timeout`), stops, and returns the final counters.
    pub fn shutdown(mut self) -> OtlpStats {
        self.stop();
        self.stats()
    }

    fn stop(&mut self) {
        {
            let mut st = self.shared.lock();
            st.closing.get_or_insert_with(Instant::now);
            self.shared.work.notify_all();
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for OtlpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Sink for OtlpSink {
    fn name(&self) -> &str {
        &self.name
    }

    /// Buffers the record; never waits for the collector. A full buffer refuses the record
    /// (counted; reported by a gap record before the next record taken) with an error.
    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let mut st = self.shared.lock();
        if st.closing.is_some() {
            return Err(std::io::Error::other("otlp sink stopped"));
        }
        let gap = st
            .refused
            .gap(record.time(), &self.node, &self.buffer_stage);
        let needed = 1 + usize::from(gap.is_some());
        if st.buffer.len() + needed > self.capacity {
            st.refused.add(record);
            st.stats.dropped_full.add(record.verdict_class(), 1);
            return Err(std::io::Error::other(
                "otlp buffer full (collector slow or unreachable): record dropped",
            ));
        }
        let observed = SystemTime::now();
        if st.buffer.is_empty() {
            st.batch_started = Some(Instant::now());
        }
        if let Some(gap) = gap {
            st.refused = Loss::default();
            st.stats.gap_records += 1;
            st.buffer.push_back(Entry {
                record: gap,
                observed,
            });
        }
        st.buffer.push_back(Entry {
            record: record.clone(),
            observed,
        });
        st.stats.accepted += 1;
        if st.buffer.len() >= self.max_batch {
            self.shared.work.notify_one();
        }
        Ok(())
    }

    /// Hands everything buffered to the export thread and returns at once. Reports an error
    /// when exports failed since the previous call (the pipeline counts it).
    fn flush(&mut self) -> std::io::Result<()> {
        let mut st = self.shared.lock();
        if !st.buffer.is_empty() {
            st.flush_requested = true;
            self.shared.work.notify_one();
        }
        let failures = std::mem::take(&mut st.unreported_failures);
        if failures > 0 {
            let last = st.stats.last_error.clone().unwrap_or_default();
            return Err(std::io::Error::other(format!(
                "{failures} OTLP export attempt(s) failed: {last}"
            )));
        }
        Ok(())
    }
}

fn build_exporter(config: &OtlpConfig) -> Result<opentelemetry_otlp::LogExporter, OtlpError> {
    let build_err = |e: opentelemetry_otlp::ExporterBuildError| OtlpError::Build(e.to_string());
    // The worker bounds every export with `export_timeout` itself; the exporter's own timeout
    // is only a backstop, a little longer, so a timeout always reads the same in the stats.
    let inner_timeout = config.export_timeout.saturating_add(Duration::from_secs(1));
    let mut exporter = match config.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = MetadataMap::with_capacity(config.headers.len());
            for (k, v) in &config.headers {
                let bad = || OtlpError::Header(format!("{k}={v}"));
                let key = MetadataKey::<Ascii>::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| bad())?;
                let value = MetadataValue::<Ascii>::try_from(v.as_str()).map_err(|_| bad())?;
                metadata.append(key, value);
            }
            opentelemetry_otlp::LogExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(inner_timeout)
                .with_metadata(metadata)
                .with_retry_policy(RetryPolicy::disabled())
                .build()
                .map_err(build_err)?
        }
        OtlpProtocol::HttpProtobuf => {
            let endpoint = if config.endpoint.ends_with("/v1/logs") {
                config.endpoint.clone()
            } else {
                format!("{}/v1/logs", config.endpoint.trim_end_matches('/'))
            };
            for (k, v) in &config.headers {
                let valid_name = !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_!#$%&'*+.^`|~".contains(&b));
                if !valid_name || !v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
                    return Err(OtlpError::Header(format!("{k}={v}")));
                }
            }
            opentelemetry_otlp::LogExporter::builder()
                .with_http()
                .with_endpoint(endpoint)
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(inner_timeout)
                .with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>())
                .with_retry_policy(RetryPolicy::disabled())
                .build()
                .map_err(build_err)?
        }
    };
    let version = env!("CARGO_PKG_VERSION");
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", version),
            KeyValue::new("host.name", config.node_name.clone()),
            KeyValue::new("k8s.node.name", config.node_name.clone()),
        ])
        .build();
    exporter.set_resource(&resource);
    Ok(exporter)
}

/// Makes SDK log records (the SDK only creates them through a logger).
struct Records {
    _provider: SdkLoggerProvider,
    logger: SdkLogger,
    scope: InstrumentationScope,
}

impl Records {
    fn new() -> Self {
        let scope = InstrumentationScope::builder("flowgate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        // No processors: the provider is only the record factory; the worker exports.
        let provider = SdkLoggerProvider::builder().build();
        let logger = provider.logger_with_scope(scope.clone());
        Self {
            _provider: provider,
            logger,
            scope,
        }
    }

    fn make(&self, entry: &Entry) -> SdkLogRecord {
        let fields = log_fields(&entry.record);
        let mut r = self.logger.create_log_record();
        if let Some(t) = fields.timestamp {
            r.set_timestamp(t);
        }
        r.set_observed_timestamp(entry.observed);
        r.set_severity_number(fields.severity);
        r.set_severity_text(fields.severity_text);
        r.set_event_name(fields.event_name);
        r.set_body(AnyValue::from(fields.body));
        r.add_attributes(
            fields
                .attributes
                .into_iter()
                .map(|(k, v)| (Key::from_static_str(k), v)),
        );
        r
    }
}

struct Worker {
    shared: Arc<Shared>,
    runtime: tokio::runtime::Runtime,
    exporter: opentelemetry_otlp::LogExporter,
    records: Records,
    node: String,
    stage: String,
    max_batch: usize,
    config: OtlpConfig,
}

enum Next {
    Export(Vec<Entry>),
    Close,
}

impl Worker {
    fn run(self) {
        while let Next::Export(batch) = self.next_batch() {
            let result = self.export(&batch, self.config.export_timeout);
            self.settle(batch.len(), result);
        }
        self.drain();
        let _ = self.exporter.shutdown();
    }

    /// Waits until a batch is due (or the sink closes) and copies it; the records stay in the
    /// buffer, so they count against its bound until the collector has them.
    fn next_batch(&self) -> Next {
        let mut st = self.shared.lock();
        loop {
            if st.closing.is_some() {
                return Next::Close;
            }
            let now = Instant::now();
            let due_at = st.batch_started.map(|t| t + self.config.batch_delay);
            let ready = !st.buffer.is_empty()
                && (st.flush_requested
                    || st.attempts > 0
                    || st.buffer.len() >= self.max_batch
                    || due_at.is_none_or(|t| now >= t));
            let backoff = st.backoff_until.filter(|t| now < *t);
            if ready && backoff.is_none() {
                let n = st.buffer.len().min(self.max_batch);
                if n == st.buffer.len() {
                    st.flush_requested = false;
                }
                return Next::Export(st.buffer.iter().take(n).cloned().collect());
            }
            let wake_at = match (backoff, due_at.filter(|_| !st.buffer.is_empty())) {
                (Some(b), _) => Some(b),
                (None, d) => d,
            };
            let wait = wake_at.map_or(Duration::from_secs(1), |t| {
                t.saturating_duration_since(now)
                    .max(Duration::from_millis(1))
            });
            st = self
                .shared
                .work
                .wait_timeout(st, wait)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn export(&self, batch: &[Entry], timeout: Duration) -> Result<(), String> {
        let records: Vec<SdkLogRecord> = batch.iter().map(|e| self.records.make(e)).collect();
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            records.iter().map(|r| (r, &self.records.scope)).collect();
        let export = self.exporter.export(LogBatch::new(&refs));
        // The timer must be made inside the runtime.
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(timeout, export).await });
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("export timed out after {timeout:?}")),
        }
    }

    /// Accounts an export of the `n` records at the head of the buffer.
    fn settle(&self, n: usize, result: Result<(), String>) {
        let mut st = self.shared.lock();
        let now = Instant::now();
        // Only this thread takes records out, so the batch is still the head of the buffer.
        let n = n.min(st.buffer.len());
        match result {
            Ok(()) => {
                st.buffer.drain(..n);
                st.stats.exported += n as u64;
                st.stats.export_batches += 1;
                st.attempts = 0;
                st.backoff_until = None;
            }
            Err(e) => {
                st.stats.export_failures += 1;
                st.stats.last_error = Some(e);
                st.unreported_failures += 1;
                st.attempts += 1;
                let exp = (st.attempts - 1).min(16);
                let backoff = self
                    .config
                    .retry_backoff
                    .saturating_mul(1 << exp)
                    .min(self.config.max_backoff);
                st.backoff_until = Some(now + backoff);
                if st.attempts >= self.config.max_attempts.max(1) {
                    // Give the batch up: one gap record at the head stands for it.
                    st.attempts = 0;
                    let mut loss = Loss::default();
                    let mut time = String::new();
                    let mut observed = SystemTime::now();
                    for entry in st.buffer.drain(..n).collect::<Vec<_>>() {
                        loss.add(&entry.record);
                        st.stats.dropped_export.add(entry.record.verdict_class(), 1);
                        time = entry.record.time().to_owned();
                        observed = entry.observed;
                    }
                    if let Some(gap) = loss.gap(&time, &self.node, &self.stage) {
                        st.stats.gap_records += 1;
                        st.buffer.push_front(Entry {
                            record: gap,
                            observed,
                        });
                    }
                }
            }
        }
        st.batch_started = (!st.buffer.is_empty()).then_some(now);
        if st.buffer.is_empty() {
            self.shared.idle.notify_all();
        }
    }

    /// On close: send what is left, one attempt per batch, within `shutdown_timeout`; what
    /// cannot be sent is counted as dropped.
    fn drain(&self) {
        let since = self.shared.lock().closing.unwrap_or_else(Instant::now);
        let deadline = since + self.config.shutdown_timeout;
        loop {
            let batch: Vec<Entry> = {
                let st = self.shared.lock();
                st.buffer.iter().take(self.max_batch).cloned().collect()
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if batch.is_empty() || left.is_zero() {
                break;
            }
            let result = self.export(&batch, self.config.export_timeout.min(left));
            let failed = result.is_err();
            let mut st = self.shared.lock();
            match result {
                Ok(()) => {
                    let n = batch.len().min(st.buffer.len());
                    st.buffer.drain(..n);
                    st.stats.exported += n as u64;
                    st.stats.export_batches += 1;
                }
                Err(e) => {
                    st.stats.export_failures += 1;
                    st.stats.last_error = Some(e);
                }
            }
            if failed {
                break;
            }
        }
        let mut st = self.shared.lock();
        for entry in std::mem::take(&mut st.buffer) {
            st.stats.dropped_export.add(entry.record.verdict_class(), 1);
        }
        self.shared.idle.notify_all();
    }
}

/// What one record becomes (exposed so the mapping can be checked without a collector).
#[derive(Debug, Clone, PartialEq)]
pub struct LogFields {
    /// `None` when the record's time does not parse (the collector then uses the observed time).
    pub timestamp: Option<SystemTime>,
    pub severity: Severity,
    pub severity_text: &'static str,
    pub event_name: &'static str,
    pub body: String,
    pub attributes: Vec<(&'static str, AnyValue)>,
}

impl LogFields {
    pub fn get(&self, key: &str) -> Option<&AnyValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The mapping of the module docs' tables.
pub fn log_fields(record: &Record) -> LogFields {
    match record {
        Record::Flow(f) => flow_fields(f),
        Record::Gap(g) => gap_fields(g),
        Record::Node(n) => node_fields(n),
    }
}

/// Heartbeats and policy snapshots: INFO log records with the generation and the counts.
fn node_fields(n: &flowgate_flows::node_record::NodeRecord) -> LogFields {
    let record_type = label(&n.record_type);
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        ("flowgate.record_type", record_type.clone().into()),
        ("flowgate.schema", n.schema.into()),
        ("flowgate.seq", int(n.seq)),
        ("flowgate.policy.generation", int(u64::from(n.generation))),
        ("flowgate.mode", label(&n.mode).into()),
    ];
    if let Some(p) = n.policies {
        a.push(("flowgate.policies", int(p)));
    }
    if let Some(e) = n.endpoints {
        a.push(("flowgate.endpoints.total", int(e.total)));
        a.push((
            "flowgate.endpoints.ingress_isolated",
            int(e.ingress_isolated),
        ));
        a.push(("flowgate.endpoints.egress_isolated", int(e.egress_isolated)));
        a.push(("flowgate.endpoints.uncovered", int(e.uncovered)));
    }
    if let Some(f) = n.flows {
        a.push(("flowgate.flows", int(f)));
    }
    LogFields {
        timestamp: parse_rfc3339(&n.time),
        severity: Severity::Info,
        severity_text: "INFO",
        event_name: if n.record_type == flowgate_flows::node_record::NodeRecordType::Heartbeat {
            "flowgate.heartbeat"
        } else {
            "flowgate.policy_snapshot"
        },
        body: format!("{record_type}: generation {}", n.generation),
        attributes: a,
    }
}

/// The JSON record's string for an enum value (`snake_case`), so both outputs agree.
fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn int(v: u64) -> AnyValue {
    AnyValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A name shared with the record (no copy).
fn shared(s: &Arc<str>) -> AnyValue {
    AnyValue::String(Arc::clone(s).into())
}

fn strings(v: impl IntoIterator<Item = String>) -> AnyValue {
    AnyValue::ListAny(Box::new(v.into_iter().map(AnyValue::from).collect()))
}

fn flow_fields(f: &FlowRecord) -> LogFields {
    let mut a: Vec<(&'static str, AnyValue)> = Vec::with_capacity(32);
    a.push(("source.address", f.source.ip.to_string().into()));
    if let Some(p) = f.source.port {
        a.push(("source.port", AnyValue::Int(i64::from(p))));
    }
    a.push(("destination.address", f.destination.ip.to_string().into()));
    if let Some(p) = f.destination.port {
        a.push(("destination.port", AnyValue::Int(i64::from(p))));
    }
    a.push(("network.transport", f.network.transport.clone().into()));
    let ipv6 = match f.network.ip_version {
        4 => false,
        6 => true,
        _ => f.source.ip.is_ipv6(),
    };
    a.push(("network.type", if ipv6 { "ipv6" } else { "ipv4" }.into()));
    let local = match f.reporter {
        Reporter::Src => &f.source,
        Reporter::Dst => &f.destination,
    };
    if let (Some(ns), Some(pod)) = (&local.namespace, &local.pod) {
        a.push(("k8s.namespace.name", shared(ns)));
        a.push(("k8s.pod.name", shared(pod)));
    }
    a.push(("flowgate.record_type", label(&f.record_type).into()));
    a.push(("flowgate.schema", f.schema.into()));
    a.push(("flowgate.seq", int(f.seq)));
    a.push(("flowgate.verdict", label(&f.verdict).into()));
    a.push(("flowgate.mode", label(&f.mode).into()));
    a.push(("flowgate.reason", label(&f.reason).into()));
    a.push(("flowgate.direction", label(&f.direction).into()));
    a.push(("flowgate.reporter", label(&f.reporter).into()));
    a.push((
        "flowgate.policy.generation",
        AnyValue::Int(i64::from(f.policy.generation)),
    ));
    if !f.policy.allowed_by.is_empty() {
        let refs = f
            .policy
            .allowed_by
            .iter()
            .map(|r| format!("{}/{}[{}]", r.namespace, r.name, r.rule));
        a.push(("flowgate.policy.allowed_by", strings(refs)));
    }
    if !f.policy.isolated_by.is_empty() {
        let refs = f
            .policy
            .isolated_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name));
        a.push(("flowgate.policy.isolated_by", strings(refs)));
    }
    if f.policy.unresolved {
        a.push(("flowgate.policy.unresolved", AnyValue::Boolean(true)));
    }
    endpoint_fields(&mut a, &f.source, SOURCE_KEYS);
    endpoint_fields(&mut a, &f.destination, DESTINATION_KEYS);
    if let Some(flags) = &f.network.tcp_flags {
        a.push(("flowgate.network.tcp_flags", flags.clone().into()));
    }
    a.push(("flowgate.packets", int(f.counters.packets)));
    a.push(("flowgate.dedup_count", int(f.counters.dedup_count)));
    if !f.tags.is_empty() {
        a.push((
            "flowgate.tags",
            strings(f.tags.iter().map(|t| t.to_string())),
        ));
    }
    let (severity, severity_text) = match f.verdict {
        Verdict::Allow => (Severity::Info, "INFO"),
        Verdict::Deny | Verdict::AuditDeny => (Severity::Warn, "WARN"),
    };
    LogFields {
        timestamp: parse_rfc3339(&f.time),
        severity,
        severity_text,
        event_name: "flowgate.flow",
        body: flow_body(f),
        attributes: a,
    }
}

/// `kind`, `namespace`, `pod`, `scope` keys of one end.
type EndpointKeys = [&'static str; 4];
const SOURCE_KEYS: EndpointKeys = [
    "flowgate.source.kind",
    "flowgate.source.namespace",
    "flowgate.source.pod",
    "flowgate.source.scope",
];
const DESTINATION_KEYS: EndpointKeys = [
    "flowgate.destination.kind",
    "flowgate.destination.namespace",
    "flowgate.destination.pod",
    "flowgate.destination.scope",
];

fn endpoint_fields(a: &mut Vec<(&'static str, AnyValue)>, e: &Endpoint, keys: EndpointKeys) {
    let [kind, namespace, pod, scope] = keys;
    a.push((kind, label(&e.kind).into()));
    if let Some(ns) = &e.namespace {
        a.push((namespace, shared(ns)));
    }
    if let Some(p) = &e.pod {
        a.push((pod, shared(p)));
    }
    if let Some(s) = &e.scope {
        a.push((scope, label(s).into()));
    }
}

/// `shop/frontend 10.0.0.1:40000`, `[2001:db8::1]:443`, `203.0.113.5` (no port: ICMP).
fn endpoint_text(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (IpAddr::V6(ip), Some(p)) => format!("[{ip}]:{p}"),
        (ip, Some(p)) => format!("{ip}:{p}"),
        (ip, None) => ip.to_string(),
    };
    match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod} {addr}"),
        _ => addr,
    }
}

fn flow_body(f: &FlowRecord) -> String {
    format!(
        "{} {} {} {} -> {} ({})",
        label(&f.verdict),
        label(&f.direction),
        f.network.transport,
        endpoint_text(&f.source),
        endpoint_text(&f.destination),
        label(&f.reason),
    )
}

fn gap_fields(g: &GapRecord) -> LogFields {
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        ("flowgate.record_type", g.record_type.into()),
        ("flowgate.schema", g.schema.into()),
        ("flowgate.seq", int(g.seq)),
        ("flowgate.gap.stage", g.stage.clone().into()),
        ("flowgate.gap.lost.allow", int(g.lost.allow)),
        ("flowgate.gap.lost.deny", int(g.lost.deny)),
        ("flowgate.gap.lost.audit", int(g.lost.audit)),
        ("flowgate.gap.lost.total", int(g.lost.total())),
    ];
    let mut body = format!(
        "lost {} records at {} (allow {}, deny {}, audit {})",
        g.lost.total(),
        g.stage,
        g.lost.allow,
        g.lost.deny,
        g.lost.audit
    );
    if let Some(r) = g.lost_seq {
        a.push(("flowgate.gap.lost_seq.first", int(r.first)));
        a.push(("flowgate.gap.lost_seq.last", int(r.last)));
        body.push_str(&format!(", seq {}..{}", r.first, r.last));
    }
    LogFields {
        timestamp: parse_rfc3339(&g.time),
        severity: Severity::Warn,
        severity_text: "WARN",
        event_name: "flowgate.gap",
        body,
        attributes: a,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` -> time (the records' `time`); `None` when it
/// does not parse or is before 1970.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let secs = num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60;
            if *c == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowgate_flows::enrich::rfc3339;

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
