//! Fan-out of records to sinks: one bounded queue and one thread per sink, so a slow sink never
//! stalls the ring-buffer reader or another sink. A full queue drops the record for that sink
//! only, counts it (per verdict class), and the sink's stream then gets a `gap` record naming
//! the lost sequence numbers before the next record it does receive.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use serde::Serialize;

use crate::gap::{GapRecord, LostCounts, SeqRange, Stage, VerdictClass};
use crate::node_record::NodeRecord;
use crate::record::{FlowRecord, Verdict};

/// Room for a typical record's JSON line, so `to_json` allocates once.
const JSON_CAPACITY: usize = 1024;

/// What flows to sinks. (Records travel in an `Arc`, so the size difference between the
/// variants costs nothing per hop.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
#[allow(
    clippy::large_enum_variant,
    reason = "records are shared behind Arc, never moved by value in bulk"
)]
pub enum Record {
    Flow(FlowRecord),
    Gap(GapRecord),
    /// `heartbeat` and `policy_snapshot`.
    Node(NodeRecord),
}

impl Record {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Flow(f) => f.seq,
            Self::Gap(g) => g.seq,
            Self::Node(n) => n.seq,
        }
    }

    pub fn time(&self) -> &str {
        match self {
            Self::Flow(f) => &f.time,
            Self::Gap(g) => &g.time,
            Self::Node(n) => &n.time,
        }
    }

    /// The class losses of this record are counted in (gap records count as denies: they are
    /// what a deny log's completeness depends on).
    pub fn verdict_class(&self) -> VerdictClass {
        match self {
            Self::Flow(f) => match f.verdict {
                Verdict::Allow => VerdictClass::Allow,
                Verdict::Deny => VerdictClass::Deny,
                Verdict::AuditDeny => VerdictClass::Audit,
            },
            Self::Gap(_) => VerdictClass::Deny,
            Self::Node(_) => VerdictClass::Allow,
        }
    }

    /// One JSON line (no trailing newline). The same JSON as serializing with serde
    /// (`serde_json::to_string`), written by `crate::json`.
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(JSON_CAPACITY);
        self.write_json(&mut out);
        // `write_json` writes only whole `str`s and ASCII, so this never falls back.
        String::from_utf8(out).unwrap_or_else(|_| serde_json::to_string(self).unwrap_or_default())
    }

    /// Appends the JSON line (no trailing newline) to `out`, e.g. a sink's batch.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Self::Flow(f) => crate::json::write_flow(out, f),
            Self::Gap(g) => crate::json::write_gap(out, g),
            // Rare records: serde is fast enough.
            Self::Node(n) => {
                let _ = serde_json::to_writer(&mut *out, n);
            }
        }
    }
}

/// A destination for records, driven on its own thread.
pub trait Sink: Send {
    fn name(&self) -> &str;
    /// Takes one record. Errors are counted; the sink keeps getting records.
    fn write(&mut self, record: &Record) -> std::io::Result<()>;
    /// Called when the queue is momentarily empty (batch boundaries).
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counters of one sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkStats {
    pub name: String,
    pub delivered: u64,
    pub lost: LostCounts,
    pub write_errors: u64,
    pub queue_capacity: usize,
}

#[derive(Debug, Default)]
struct Pending {
    lost: LostCounts,
    first: Option<u64>,
    last: u64,
}

#[derive(Debug)]
struct Outlet {
    name: String,
    /// `None` once closed.
    tx: Option<SyncSender<Arc<Record>>>,
    pending: Mutex<Pending>,
    lost_total: [AtomicU64; 3],
    delivered: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
    capacity: usize,
    thread: Option<JoinHandle<()>>,
}

impl Outlet {
    fn offer(&self, record: &Arc<Record>, node: &str) {
        let Some(tx) = &self.tx else { return };
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(first) = pending.first {
            let gap = GapRecord::new(
                record.time().to_owned(),
                pending.last,
                node,
                &Stage::Sink(self.name.clone()),
                pending.lost,
                Some(SeqRange {
                    first,
                    last: pending.last,
                }),
            );
            if tx.try_send(Arc::new(Record::Gap(gap))).is_err() {
                self.lose(&mut pending, record);
                return;
            }
            *pending = Pending::default();
        }
        if tx.try_send(Arc::clone(record)).is_err() {
            self.lose(&mut pending, record);
        }
    }

    fn lose(&self, pending: &mut Pending, record: &Record) {
        let class = record.verdict_class();
        pending.lost.add(class, 1);
        pending.first.get_or_insert(record.seq());
        pending.last = record.seq();
        self.lost_total[class.index()].fetch_add(1, Ordering::Relaxed);
    }
}

/// The fan-out to every sink.
#[derive(Debug)]
pub struct Fanout {
    node: String,
    outlets: Vec<Outlet>,
}

fn drive(
    mut sink: Box<dyn Sink>,
    rx: Receiver<Arc<Record>>,
    delivered: &AtomicU64,
    errors: &AtomicU64,
) {
    loop {
        let record = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => {
                if sink.flush().is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                match rx.recv() {
                    Ok(r) => r,
                    Err(_) => break,
                }
            }
            Err(TryRecvError::Disconnected) => break,
        };
        match sink.write(&record) {
            Ok(()) => delivered.fetch_add(1, Ordering::Relaxed),
            Err(_) => errors.fetch_add(1, Ordering::Relaxed),
        };
    }
    if sink.flush().is_err() {
        errors.fetch_add(1, Ordering::Relaxed);
    }
}

impl Fanout {
    pub fn new(node: &str) -> Self {
        Self {
            node: node.to_owned(),
            outlets: Vec::new(),
        }
    }

    /// Adds a sink fed through a queue of `capacity` records.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>, capacity: usize) -> std::io::Result<()> {
        let (tx, rx) = sync_channel(capacity.max(1));
        let name = sink.name().to_owned();
        let delivered = Arc::new(AtomicU64::new(0));
        let write_errors = Arc::new(AtomicU64::new(0));
        let (d, e) = (Arc::clone(&delivered), Arc::clone(&write_errors));
        let thread = std::thread::Builder::new()
            .name(format!("sink-{name}"))
            .spawn(move || drive(sink, rx, &d, &e))?;
        self.outlets.push(Outlet {
            name,
            tx: Some(tx),
            pending: Mutex::new(Pending::default()),
            lost_total: Default::default(),
            delivered,
            write_errors,
            capacity,
            thread: Some(thread),
        });
        Ok(())
    }

    /// Offers a record to every sink; never blocks.
    pub fn publish(&self, record: Record) {
        let record = Arc::new(record);
        for outlet in &self.outlets {
            outlet.offer(&record, &self.node);
        }
    }

    pub fn stats(&self) -> Vec<SinkStats> {
        self.outlets
            .iter()
            .map(|o| {
                let mut lost = LostCounts::default();
                for class in VerdictClass::ALL {
                    lost.add(class, o.lost_total[class.index()].load(Ordering::Relaxed));
                }
                SinkStats {
                    name: o.name.clone(),
                    delivered: o.delivered.load(Ordering::Relaxed),
                    lost,
                    write_errors: o.write_errors.load(Ordering::Relaxed),
                    queue_capacity: o.capacity,
                }
            })
            .collect()
    }

    /// Closes the queues and waits until every sink has written and flushed what it got.
    pub fn close(mut self) -> Vec<SinkStats> {
        for outlet in &mut self.outlets {
            // Dropping the sender ends the sink's thread once its queue is drained.
            outlet.tx = None;
            if let Some(thread) = outlet.thread.take() {
                let _ = thread.join();
            }
        }
        self.stats()
    }
}

/// A sink that keeps everything in memory (tests, benchmarks), optionally slowed down.
#[derive(Debug, Clone, Default)]
pub struct MemorySink {
    pub name: String,
    pub records: Arc<Mutex<Vec<Record>>>,
    pub delay: std::time::Duration,
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::enrich::{Enricher, Tables};

    fn flow(enricher: &mut Enricher, deny: bool) -> Record {
        let ev = flowgate_abi::FlowEvent {
            version: flowgate_abi::ABI_VERSION,
            verdict: u8::from(deny),
            ip_version: 4,
            proto: 6,
            count: 1,
            ..Default::default()
        };
        Record::Flow(enricher.enrich(&ev))
    }

    /// More records than a slow sink can take: the fast sink gets everything, the slow one gets
    /// what fitted plus gap records, and delivered + lost = sent for both; nothing blocks.
    #[test]
    fn a_slow_sink_loses_counted_records_and_never_stalls_the_others() {
        let mut enricher = Enricher::new("n1", 0);
        let _ = Tables::from_snapshot;
        let fast = MemorySink {
            name: "fast".into(),
            ..Default::default()
        };
        let slow = MemorySink {
            name: "slow".into(),
            delay: std::time::Duration::from_millis(2),
            ..Default::default()
        };
        let (fast_records, slow_records) = (Arc::clone(&fast.records), Arc::clone(&slow.records));
        let mut fanout = Fanout::new("n1");
        fanout.add_sink(Box::new(fast), 10_000).unwrap();
        fanout.add_sink(Box::new(slow), 8).unwrap();
        let sent = 2_000u64;
        // In bursts of 100 with a pause after each, so the slow sink drains a little between
        // bursts and its next record is preceded by a gap record (2,000 records take well
        // under a millisecond to publish: without pauses, every loss would come after the last
        // record it received). Only the publishing is timed.
        let mut publishing = std::time::Duration::ZERO;
        for i in 0..sent {
            if i % 100 == 99 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            let record = flow(&mut enricher, i % 3 == 0);
            let started = std::time::Instant::now();
            fanout.publish(record);
            publishing += started.elapsed();
        }
        assert!(
            publishing < std::time::Duration::from_secs(2),
            "publishing never waits for the slow sink"
        );
        let stats = fanout.close();
        let fast_got = fast_records.lock().unwrap().len() as u64;
        assert_eq!(
            (fast_got, stats[0].lost.total()),
            (sent, 0),
            "the fast sink gets every record"
        );
        let slow_all = slow_records.lock().unwrap().clone();
        let flows = slow_all
            .iter()
            .filter(|r| matches!(r, Record::Flow(_)))
            .count() as u64;
        let gaps: Vec<&GapRecord> = slow_all
            .iter()
            .filter_map(|r| {
                if let Record::Gap(g) = r {
                    Some(g)
                } else {
                    None
                }
            })
            .collect();
        assert!(
            stats[1].lost.total() > 0 && !gaps.is_empty(),
            "the slow sink lost records and was told so"
        );
        // Every record sent is either delivered or reported lost, in gap records or in the stats.
        let in_gaps: u64 = gaps.iter().map(|g| g.lost.total()).sum();
        assert_eq!(
            flows + stats[1].lost.total(),
            sent,
            "delivered + lost = sent"
        );
        assert!(in_gaps <= stats[1].lost.total());
        // The sink's stream stays strictly increasing in seq, gaps included, and each gap names
        // exactly the missing sequence numbers before it.
        let seqs: Vec<u64> = slow_all.iter().map(Record::seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seq strictly increases: {seqs:?}"
        );
        for g in &gaps {
            let range = g.lost_seq.unwrap();
            assert_eq!(range.last, g.seq);
            assert_eq!(
                range.last - range.first + 1,
                g.lost.total(),
                "a loss streak is contiguous"
            );
        }
    }
}
