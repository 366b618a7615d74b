//! The whole event path under load, with the real datapath (root; CI runs as root): packets run
//! through the loaded program with `BPF_PROG_TEST_RUN` (one distinct flow each, all denied, so
//! each yields one event), a reader drains the ring buffer into the fan-out, and every event is
//! accounted for: delivered to the sink, or counted lost by the kernel (and reported in a gap
//! record). The program never waits for the reader.
//!
//! ```text
//!   test_run(frame i) ──> fg_to_pod ──> FG_EVENTS (small ring) ──> reader ──> Fanout ──> sink
//!                                 └──> FG_LOST[deny] when the ring is full
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::{TestRun as _, TestRunOptions};
use flowgate::datapath::{Datapath, LoadOptions, events};
use flowgate_abi::programs;
use flowgate_flows::enrich::{Enricher, Tables};
use flowgate_flows::gap::{GapRecord, LostCounts, Stage};
use flowgate_flows::pipeline::{Fanout, MemorySink, Record};
use flowgate_flows::record::Mode as RecordMode;
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::{Mode, diff};
use flowgate_policy::{Cluster, Manifests};

const DENY_ALL: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
status: {podIP: 10.1.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec: {podSelector: {}}
";

fn frame(sport: u16) -> Vec<u8> {
    let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    p.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 9, 10, 1, 0, 1,
    ]);
    p.extend_from_slice(&sport.to_be_bytes());
    p.extend_from_slice(&80u16.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    p
}

#[test]
fn every_event_is_delivered_or_counted_lost_and_the_datapath_never_waits() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (CAP_BPF)");
        return;
    }
    let mut m = Manifests::new();
    m.add_text("t.yaml", DENY_ALL);
    let cluster = Cluster::from_manifests(&mut m);
    let snap = compile(
        &cluster,
        &[LocalEndpoint {
            pod: "a/web".into(),
            ifindex: 1,
        }],
        None,
    );
    // Two pages of ring: it overflows quickly when the reader is slow.
    let mut dp = Datapath::load(&LoadOptions {
        ring_bytes: 8192,
        ..LoadOptions::default()
    })
    .unwrap();
    let mut ring = dp.take_events().unwrap();
    dp.apply(&diff(&Snapshot::default(), &snap, Mode::Enforce))
        .unwrap();

    let sink = MemorySink {
        name: "memory".into(),
        ..Default::default()
    };
    let delivered = Arc::clone(&sink.records);
    let mut fanout = Fanout::new("n1");
    fanout.add_sink(Box::new(sink), 1 << 20).unwrap();
    let fanout = Arc::new(Mutex::new(Some(fanout)));
    let mut enricher = Enricher::new("n1", 0);
    enricher.push(Tables::from_snapshot(&cluster, &snap, RecordMode::Enforce));

    // The reader: drains the ring every 5 ms (slower than the generator, so the ring overflows).
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, fanout) = (Arc::clone(&done), Arc::clone(&fanout));
        std::thread::spawn(move || {
            let mut stats = events::ReaderStats::default();
            loop {
                let finished = done.load(Ordering::Acquire);
                let mut batch = Vec::new();
                events::drain(&mut ring, &mut batch, &mut stats);
                let guard = fanout.lock().unwrap();
                for ev in &batch {
                    guard
                        .as_ref()
                        .unwrap()
                        .publish(Record::Flow(enricher.enrich(ev)));
                }
                drop(guard);
                if finished {
                    return (stats, enricher);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    let sent: u16 = 20_000;
    let prog = dp.program(programs::TO_POD).unwrap();
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..sent {
        let f = frame(1024 + i);
        let t = Instant::now();
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(&f),
                ..TestRunOptions::default()
            })
            .unwrap();
        slowest = slowest.max(t.elapsed());
        assert_eq!(r.return_value, 2, "denied");
    }
    let generating = started.elapsed();
    std::thread::sleep(Duration::from_millis(20));
    done.store(true, Ordering::Release);
    let (stats, mut enricher) = reader.join().unwrap();
    let lost = dp.lost_events().unwrap();
    // The kernel's losses, published in-band like the agent does.
    let gap = GapRecord::new(
        "now".into(),
        enricher.next_seq(),
        "n1",
        &Stage::Ringbuf,
        LostCounts {
            allow: lost[0],
            deny: lost[1],
            audit: lost[2],
        },
        None,
    );
    let fanout = fanout.lock().unwrap().take().unwrap();
    fanout.publish(Record::Gap(gap));
    let sink_stats = fanout.close();

    let records = delivered.lock().unwrap();
    let flows = records
        .iter()
        .filter(|r| matches!(r, Record::Flow(_)))
        .count() as u64;
    let reported: u64 = records
        .iter()
        .filter_map(|r| {
            if let Record::Gap(g) = r {
                Some(g.lost.total())
            } else {
                None
            }
        })
        .sum();
    eprintln!(
        "{sent} denied flows in {generating:?} ({:.0}/s, slowest program run {slowest:?}); delivered {flows}, kernel-lost {lost:?}, sink-lost {}",
        f64::from(sent) / generating.as_secs_f64(),
        sink_stats[0].lost.total()
    );
    assert_eq!(stats.malformed, 0);
    assert!(
        lost[1] > 0,
        "the small ring overflowed (otherwise this test proves nothing)"
    );
    assert_eq!(
        flows + lost[1],
        u64::from(sent),
        "delivered + counted lost = sent, exactly"
    );
    assert_eq!(
        reported, lost[1],
        "the gap record reports exactly the kernel's losses"
    );
    assert_eq!((lost[0], lost[2]), (0, 0));
    assert!(
        slowest < Duration::from_millis(50),
        "the program never waits for the reader: {slowest:?}"
    );
}
