//! `flowgate agent`: the daemon. On a lab node (`--lab`) it builds the node from the manifests,
//! attaches the datapath, applies the policies, watches the manifests and re-applies on every
//! change (a malformed file is reported and the last good state stays in force), and streams
//! one record per flow verdict on stdout. Kubernetes mode comes with the cluster-source work.

use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use flowgate_flows::FlowRecord;
use flowgate_policy::maps::Mode;
use flowgate_policy::probe;

use super::lab::{ModeArg, event_summary};
use super::manifests::{self, ManifestArgs};
use super::{Exit, is_root};
use crate::lab::{Lab, LabProbe, LabSpec, ProbeEnd, install_interrupt_cleanup};
use crate::node::Node;

/// Run the flowgate node agent: enforce NetworkPolicy with eBPF and report every verdict.
///
/// With --lab, the node is a local lab built from the manifests (a network namespace per pod;
/// see `flowgate lab`), and the manifests are the cluster state: edits are picked up within
/// --poll-ms and applied atomically (a malformed file is reported; the last good policy state
/// stays in force). Each flow verdict is one record on stdout: JSON lines (schema
/// flowgate.flow/v1) or a compact line per flow. --traffic runs a probe file against the lab
/// every --traffic-interval-ms, so there is something to see.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Run on a local lab node built from the manifests (required until Kubernetes mode lands).
    #[arg(long, env = "FLOWGATE_LAB")]
    pub lab: bool,

    /// Enforce (drop what policy denies) or audit (drop nothing, report audit_deny).
    #[arg(long, value_enum, default_value = "enforce", env = "FLOWGATE_MODE")]
    pub mode: ModeArg,

    /// How records are written to stdout.
    #[arg(long, value_enum, default_value = "json", env = "FLOWGATE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Probe file to run against the lab repeatedly (built-in traffic generator).
    #[arg(long, env = "FLOWGATE_TRAFFIC")]
    pub traffic: Option<PathBuf>,

    /// Pause between two traffic rounds.
    #[arg(long, default_value = "1000", env = "FLOWGATE_TRAFFIC_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub traffic_interval_ms: u64,

    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, env = "FLOWGATE_DURATION_SECS")]
    pub duration_secs: Option<u64>,

    /// How often the manifests are checked for changes.
    #[arg(long, default_value = "500", env = "FLOWGATE_POLL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,

    /// Name of this node in records.
    #[arg(long, default_value = "lab", env = "FLOWGATE_NODE_NAME")]
    pub node_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (schema flowgate.flow/v1).
    Json,
    /// One human-readable line per flow.
    Compact,
}

/// A cheap fingerprint of the manifest files: paths, sizes and modification times.
fn fingerprint(args: &ManifestArgs) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out = Vec::new();
    for root in &args.manifests {
        let mut stack = vec![root.clone()];
        while let Some(path) = stack.pop() {
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                if let Ok(entries) = std::fs::read_dir(&path) {
                    stack.extend(entries.flatten().map(|e| e.path()));
                }
            } else {
                out.push((path, meta.len(), meta.modified().ok()));
            }
        }
    }
    out.sort();
    out
}

fn write_record(
    out: &mut impl std::io::Write,
    format: LogFormat,
    record: &FlowRecord,
) -> std::io::Result<()> {
    match format {
        LogFormat::Json => {
            serde_json::to_writer(&mut *out, record).map_err(std::io::Error::other)?;
            out.write_all(b"\n")
        }
        LogFormat::Compact => {
            let end = |e: &flowgate_flows::record::Endpoint| match (&e.namespace, &e.pod) {
                (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
                _ => e.ip.to_string(),
            };
            let port = record
                .destination
                .port
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let verdict = match record.verdict {
                flowgate_flows::record::Verdict::Allow => "ALLOW",
                flowgate_flows::record::Verdict::Deny => "DENY",
                flowgate_flows::record::Verdict::AuditDeny => "AUDIT-DENY",
            };
            writeln!(
                out,
                "{} {:<10} {} -> {}{}/{}  by {}",
                record.time.get(11..23).unwrap_or(&record.time),
                verdict,
                end(&record.source),
                end(&record.destination),
                port,
                record.network.transport,
                event_summary(record)
            )
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    if !args.lab {
        bail!("Kubernetes mode is not available yet: run the agent on a lab node with --lab");
    }
    if !is_root() {
        eprintln!(
            "error: flowgate agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN for the lab); run it with sudo"
        );
        return Ok(Exit::NoPermission);
    }
    let mut loaded = manifests::load(&args.manifests)?;
    if loaded.has_errors() {
        bail!("the manifests have errors (above); fix them before starting the agent");
    }
    let traffic = match &args.traffic {
        Some(path) => {
            let text = manifests::read_input(path)?;
            probe::parse_probes(&text)
                .with_context(|| format!("{}: not a valid probe file", path.display()))?
        }
        None => Vec::new(),
    };
    let flows: Vec<_> = traffic
        .iter()
        .filter_map(|p| probe::resolve(&loaded.cluster, p).ok())
        .collect();
    let mut spec = LabSpec::from_cluster(&loaded.cluster);
    for f in &flows {
        for (ip, pod) in [(f.src_ip, f.src_pod), (f.dst_ip, f.dst_pod)] {
            if pod.is_none() && !spec.externals.contains(&ip) {
                spec.externals.push(ip);
            }
        }
        if let Some(port) = f.port
            && !spec.extra_ports.contains(&(f.protocol, port))
        {
            spec.extra_ports.push((f.protocol, port));
        }
    }
    install_interrupt_cleanup().context("installing the Ctrl-C cleanup")?;
    let lab = Lab::build(&spec).context("building the lab node")?;
    let mut node = Node::on_lab(&lab, Mode::from(args.mode), &args.node_name)
        .context("loading and attaching the datapath")?;
    let stats = node
        .apply(&loaded.cluster)
        .context("applying the policies")?;
    eprintln!(
        "flowgate agent: node {} ({} pods), mode {:?}, generation {} applied: {} map ops, {} policy cells, compile {:.1} ms, write {:.1} ms",
        args.node_name,
        node.snapshot().endpoints.len(),
        node.mode(),
        stats.generation,
        stats.ops,
        stats.cells,
        stats.compile.as_secs_f64() * 1e3,
        stats.write.as_secs_f64() * 1e3
    );
    let probes: Vec<LabProbe> = flows
        .iter()
        .map(|f| LabProbe::new(ProbeEnd::Ip(f.src_ip), f.dst_ip, f.protocol, f.port))
        .collect();

    let started = Instant::now();
    let deadline = args.duration_secs.map(|s| started + Duration::from_secs(s));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        if !probes.is_empty() {
            let (lab, probes, stop) = (&lab, &probes, &stop);
            let interval = Duration::from_millis(args.traffic_interval_ms);
            scope.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = lab.probe_all(probes, Duration::from_millis(500));
                    std::thread::sleep(interval);
                }
            });
        }
        let result = (|| -> anyhow::Result<()> {
            let mut last = fingerprint(&args.manifests);
            let mut last_poll = Instant::now();
            let stdout = std::io::stdout();
            loop {
                let records = node.drain();
                let mut out = stdout.lock();
                for r in &records {
                    *counts
                        .entry(format!("{:?}", r.verdict).to_lowercase())
                        .or_default() += 1;
                    if let Err(e) = write_record(&mut out, args.log_format, r) {
                        if e.kind() == std::io::ErrorKind::BrokenPipe {
                            return Ok(());
                        }
                        return Err(e.into());
                    }
                }
                out.flush()?;
                drop(out);
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(());
                }
                if last_poll.elapsed() >= Duration::from_millis(args.poll_ms) {
                    last_poll = Instant::now();
                    let now = fingerprint(&args.manifests);
                    if now != last {
                        last = now;
                        reload(args, &mut node, &mut loaded);
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        result
    })?;
    let lost = node.lost().unwrap_or_default();
    eprintln!(
        "flowgate agent: stopped after {:.1} s; records {:?}; ring-buffer losses (allow, deny, audit) {:?}; undecodable records {}",
        started.elapsed().as_secs_f64(),
        counts,
        lost,
        node.reader.malformed
    );
    drop(node);
    lab.teardown().context("removing the lab")?;
    Ok(Exit::Ok)
}

/// Re-reads the manifests; applies them only if every object is valid.
fn reload(args: &Args, node: &mut Node, loaded: &mut manifests::Loaded) {
    match manifests::load(&args.manifests) {
        Ok(next) if next.has_errors() => {
            eprintln!(
                "flowgate agent: manifests changed but have errors (above): keeping generation {} in force",
                node.snapshot().generation
            );
        }
        Ok(next) => match node.apply(&next.cluster) {
            Ok(stats) => {
                eprintln!(
                    "flowgate agent: manifests changed: generation {} applied ({} map ops, compile {:.1} ms, write {:.1} ms)",
                    stats.generation,
                    stats.ops,
                    stats.compile.as_secs_f64() * 1e3,
                    stats.write.as_secs_f64() * 1e3
                );
                *loaded = next;
            }
            Err(e) => eprintln!(
                "flowgate agent: applying the changed manifests failed: {e:#}; the previous state stays"
            ),
        },
        Err(e) => {
            eprintln!("flowgate agent: cannot read the manifests: {e:#}; keeping the current state")
        }
    }
}
