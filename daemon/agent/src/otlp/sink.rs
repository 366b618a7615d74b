//! The OTLP sink itself: the bounded buffer shared with the export thread, `write`/`flush`,
//! the accounting of refused records, and the handle that reads the counters.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage, VerdictClass};
use flowgate_flows::pipeline::{Record, Sink};

use super::export::{Records, Worker, build_exporter};
use super::{OtlpConfig, OtlpError, OtlpStats};

#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) record: Record,
    pub(super) observed: SystemTime,
}

/// Losses of one streak, not yet reported by a gap record.
#[derive(Debug, Default)]
pub(super) struct Loss {
    lost: LostCounts,
    first: Option<u64>,
    last: u64,
}

impl Loss {
    /// Accounts a lost record: a flow record counts 1 in its class; a gap record carries its
    /// own counts over (so no loss goes unreported) and widens the range by what it covered.
    pub(super) fn add(&mut self, record: &Record) {
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

    pub(super) fn gap(&self, time: &str, node: &str, stage: &str) -> Option<Record> {
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
pub(super) struct State {
    pub(super) buffer: VecDeque<Entry>,
    /// Records refused since the last gap record.
    pub(super) refused: Loss,
    /// Set by `flush`: send what is buffered now.
    pub(super) flush_requested: bool,
    /// Set when the sink is dropped: when that happened.
    pub(super) closing: Option<Instant>,
    /// When the oldest record not yet in a sent batch arrived.
    pub(super) batch_started: Option<Instant>,
    /// Failed attempts of the batch at the head of the buffer.
    pub(super) attempts: u32,
    pub(super) backoff_until: Option<Instant>,
    /// Failed attempts not yet reported by `flush`.
    pub(super) unreported_failures: u64,
    pub(super) stats: OtlpStats,
}

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) state: Mutex<State>,
    /// Wakes the export thread.
    pub(super) work: Condvar,
    /// Wakes `wait_idle` callers.
    pub(super) idle: Condvar,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
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
