//! Event-path benchmark (`make bench-events`, root): the real datapath driven with
//! `BPF_PROG_TEST_RUN` over varied packets (one new denied flow each) at a paced rate, the
//! ring buffer drained every 20 ms (the agent's cadence) into the fan-out and a JSON-lines sink
//! (to /dev/null). Reports, per offered rate: events/s achieved, delivered, lost (kernel and
//! sink), and whether delivered + lost = sent. Then the agent's RSS with a 100,000-record
//! in-memory ring (`/v1/flows?last=N`).

#[path = "common/rss.rs"]
mod rss;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aya::{TestRun as _, TestRunOptions};
use flowgate::datapath::{Datapath, LoadOptions, events};
use flowgate::http::ApiState;
use flowgate_abi::programs;
use flowgate_flows::enrich::{Enricher, Tables};
use flowgate_flows::jsonl::{Filter, JsonlSink};
use flowgate_flows::pipeline::{Fanout, Record, Sink as _};
use flowgate_flows::record::Mode as RecordMode;
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::{Mode, diff};
use flowgate_policy::{Cluster, Manifests};
use rss::rss_kib;

const DENY_ALL: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: web, namespace: a, labels: {app: web}}\nstatus: {podIP: 10.1.0.1}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}}\n";

fn frame(n: u32) -> Vec<u8> {
    let [a, b, c, d] = n.to_be_bytes();
    let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    // Source 100.(b).(c).(d) varies with n: every packet is a new flow.
    p.extend_from_slice(&[
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 100, b, c, d, 10, 1, 0, 1,
    ]);
    p.extend_from_slice(&[a, 7, 0, 80]);
    p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0, 0]);
    p
}

struct Outcome {
    sent: u64,
    achieved: f64,
    delivered: u64,
    kernel_lost: u64,
    sink_lost: u64,
}

fn run(rate: u64, seconds: u64) -> anyhow::Result<Outcome> {
    let mut m = Manifests::new();
    m.add_text("bench.yaml", DENY_ALL);
    let cluster = Cluster::from_manifests(&mut m);
    let snap = compile(
        &cluster,
        &[LocalEndpoint {
            pod: "a/web".into(),
            ifindex: 1,
        }],
        None,
    );
    let mut dp = Datapath::load(&LoadOptions::default())?;
    let mut ring = dp.take_events()?;
    dp.apply(&diff(&Snapshot::default(), &snap, Mode::Enforce))?;
    let sink = JsonlSink::file(
        std::path::Path::new("/dev/null"),
        u64::MAX,
        0,
        Filter::default(),
    )?;
    let mut fanout = Fanout::new("bench");
    fanout.add_sink(Box::new(sink), 65_536)?;
    let fanout = Arc::new(Mutex::new(Some(fanout)));
    let mut enricher = Enricher::new("bench", 0);
    enricher.push(Tables::from_snapshot(&cluster, &snap, RecordMode::Enforce));
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (done, fanout) = (Arc::clone(&done), Arc::clone(&fanout));
        std::thread::spawn(move || {
            let mut stats = events::ReaderStats::default();
            loop {
                let finished = done.load(Ordering::Acquire);
                let mut batch = Vec::new();
                events::drain(&mut ring, &mut batch, &mut stats);
                if let Ok(guard) = fanout.lock()
                    && let Some(f) = guard.as_ref()
                {
                    for ev in &batch {
                        f.publish(Record::Flow(enricher.enrich(ev)));
                    }
                }
                if finished {
                    return stats;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let total = rate * seconds;
    let prog = dp.program(programs::TO_POD)?;
    let started = Instant::now();
    for i in 0..total {
        // Pace: packet i goes out at i / rate seconds.
        let due = Duration::from_secs_f64(i as f64 / rate as f64);
        while started.elapsed() < due {
            std::hint::spin_loop();
        }
        let f = frame(u32::try_from(i).unwrap_or(u32::MAX));
        prog.test_run(TestRunOptions {
            data_in: Some(&f),
            ..TestRunOptions::default()
        })?;
    }
    let achieved = total as f64 / started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(100));
    done.store(true, Ordering::Release);
    let _ = reader.join();
    let lost = dp.lost_events()?;
    let fanout = fanout.lock().ok().and_then(|mut g| g.take());
    let stats = fanout.map(Fanout::close).unwrap_or_default();
    Ok(Outcome {
        sent: total,
        achieved,
        delivered: stats.first().map_or(0, |s| s.delivered),
        kernel_lost: lost.iter().sum(),
        sink_lost: stats.first().map_or(0, |s| s.lost.total()),
    })
}

fn main() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the event-path benchmark needs root (CAP_BPF)");
        return Ok(());
    }
    println!(
        "| offered events/s | achieved | sent | delivered | kernel lost | sink lost | accounted |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for rate in [100_000u64, 200_000, 400_000, 1_000_000] {
        let o = run(rate, 2)?;
        println!(
            "| {rate} | {:.0} | {} | {} | {} | {} | {} |",
            o.achieved,
            o.sent,
            o.delivered,
            o.kernel_lost,
            o.sink_lost,
            if o.delivered + o.kernel_lost + o.sink_lost == o.sent {
                "exact"
            } else {
                "MISMATCH"
            }
        );
    }
    // RSS with a 100,000-record in-memory ring.
    let before = rss_kib();
    let api = ApiState::new(Arc::new(String::new), None);
    let mut stream = api.stream_sink(100_000);
    let mut enricher = Enricher::new("bench", 0);
    for i in 0..100_000u32 {
        let ev = flowgate_abi::FlowEvent {
            version: flowgate_abi::ABI_VERSION,
            verdict: 1,
            ip_version: 4,
            proto: 6,
            count: 1,
            src_port: u16::try_from(i % 60_000).unwrap_or(0),
            dst_port: 80,
            ..Default::default()
        };
        stream.write(&Record::Flow(enricher.enrich(&ev)))?;
    }
    let after = rss_kib();
    println!(
        "\nRSS: {before} KiB before, {after} KiB with a 100,000-record ring (+{} KiB, {:.0} bytes per record)",
        after - before,
        (after - before) as f64 * 1024.0 / 100_000.0
    );
    Ok(())
}
