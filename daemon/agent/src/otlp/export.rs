//! The export thread: builds the OTLP exporter, batches the buffered records, retries with
//! backoff, gives batches up as gap records, and drains the buffer on shutdown.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry::{InstrumentationScope, Key, KeyValue};
use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
use opentelemetry_otlp::{RetryPolicy, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{
    LogBatch, LogExporter as _, SdkLogRecord, SdkLogger, SdkLoggerProvider,
};
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};

use super::mapping::log_fields;
use super::sink::{Entry, Loss, Shared};
use super::{OtlpConfig, OtlpError, OtlpProtocol};

pub(super) fn build_exporter(
    config: &OtlpConfig,
) -> Result<opentelemetry_otlp::LogExporter, OtlpError> {
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
pub(super) struct Records {
    _provider: SdkLoggerProvider,
    logger: SdkLogger,
    scope: InstrumentationScope,
}

impl Records {
    pub(super) fn new() -> Self {
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

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    pub(super) runtime: tokio::runtime::Runtime,
    pub(super) exporter: opentelemetry_otlp::LogExporter,
    pub(super) records: Records,
    pub(super) node: String,
    pub(super) stage: String,
    pub(super) max_batch: usize,
    pub(super) config: OtlpConfig,
}

enum Next {
    Export(Vec<Entry>),
    Close,
}

impl Worker {
    pub(super) fn run(self) {
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
