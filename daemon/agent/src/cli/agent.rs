//! `flowgate agent`: the daemon. In Kubernetes mode (the default) the cluster state comes from
//! the API server (`agent_cluster`); on a lab node (`--lab`) it builds the node from manifest
//! files, watches them and re-applies on every change (a malformed file is reported and the
//! last good state stays in force). Both stream one record per flow verdict to the sinks and
//! serve the HTTP API. This file holds the flags, what both modes share, and the lab loop.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use flowgate_flows::jsonl::{Filter, JsonlSink};
use flowgate_flows::{Fanout, Record};
use flowgate_policy::maps::Mode;
use flowgate_policy::probe;

use super::lab::{ModeArg, WiringArg};
use super::manifests::{self, ManifestArgs};
use super::{Exit, is_root};
use crate::http::{self, ApiState};
use crate::lab::{Lab, LabProbe, ProbeEnd, install_interrupt_cleanup};
use crate::metrics::AgentMetrics;
use crate::node::Node;
use crate::otlp::{OtlpConfig, OtlpProtocol, OtlpSink, parse_headers};

/// Run the flowgate node agent: enforce NetworkPolicy with eBPF and report every verdict.
///
/// Kubernetes mode (the default; what the DaemonSet runs): the agent watches Pods, Namespaces
/// and NetworkPolicies (in-cluster service account, or --kubeconfig), finds the host interface
/// of every pod on --node-name, attaches the datapath there and keeps the maps in step with the
/// cluster. /readyz turns ready once every watch has synced and the first snapshot is in the
/// maps.
///
/// With --lab, the node is a local lab built from the manifests (a network namespace per pod;
/// see `flowgate lab`), and the manifests are the cluster state: edits are picked up within
/// --poll-ms and applied atomically (a malformed file is reported; the last good policy state
/// stays in force). --traffic runs a probe file against the lab every --traffic-interval-ms,
/// so there is something to see.
///
/// Each flow verdict is one record on stdout: JSON lines (schema flowgate.flow/v1), OCSF, or a
/// compact line per flow; also to a rotated file, OTLP, /metrics and the live stream.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run on a local lab node built from --manifests instead of a Kubernetes node.
    #[arg(long, env = "FLOWGATE_LAB", requires = "manifests")]
    pub lab: bool,

    /// Lab mode: how the lab node wires its pods, routed (Calico-style: a host route per pod IP
    /// to its veth) or bridged (Flannel-style: the host veths are ports of the bridge cni0).
    #[arg(
        long,
        value_enum,
        default_value = "routed",
        env = "FLOWGATE_LAB_WIRING"
    )]
    pub wiring: WiringArg,

    /// Lab mode: manifest files or directories holding the cluster state (YAML, multi-document
    /// or `kind: List`; directories are read recursively for *.yaml and *.yml).
    #[arg(long, short = 'm', num_args = 1.., value_delimiter = ',', env = "FLOWGATE_MANIFESTS", requires = "lab")]
    pub manifests: Vec<PathBuf>,

    /// Lab mode: do not print notices (skipped kinds, implied namespaces) to stderr.
    #[arg(long, short = 'q', env = "FLOWGATE_QUIET")]
    pub quiet: bool,

    /// Kubernetes mode: the kubeconfig to use. Default: $KUBECONFIG or ~/.kube/config if there
    /// is one, else the in-cluster service account (what a DaemonSet pod has).
    #[arg(long, env = "FLOWGATE_KUBECONFIG", conflicts_with = "lab")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubernetes mode: the bpffs directory where the datapath's maps and links are pinned, so
    /// that enforcement survives a restart or an upgrade: the next agent adopts them without a
    /// moment of no policy.
    #[arg(long, default_value = crate::datapath::DEFAULT_PIN_DIR, env = "FLOWGATE_BPFFS_DIR")]
    pub bpffs_dir: PathBuf,

    /// Kubernetes mode: pin nothing (enforcement then stops when the agent stops).
    #[arg(long, env = "FLOWGATE_NO_PIN")]
    pub no_pin: bool,

    /// Remove everything flowgate pinned under --bpffs-dir (programs detached from every
    /// interface, maps freed) and exit: the uninstall step, since pinned programs keep
    /// enforcing the last policy after the agent is gone. Refused while an agent runs.
    #[arg(long, env = "FLOWGATE_CLEANUP", conflicts_with = "lab")]
    pub cleanup: bool,

    /// Kubernetes mode: gather API changes until the API has been quiet this long, then
    /// recompile once (a burst of pod churn costs one map update).
    #[arg(long, default_value = "100", env = "FLOWGATE_SYNC_MIN_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_min_interval_ms: u64,

    /// Kubernetes mode: the longest an API change waits before it is applied, however busy the
    /// API is.
    #[arg(long, default_value = "1000", env = "FLOWGATE_SYNC_MAX_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub sync_max_interval_ms: u64,

    /// Enforce (drop what policy denies) or audit (drop nothing, report audit_deny).
    #[arg(long, value_enum, default_value = "enforce", env = "FLOWGATE_MODE")]
    pub mode: ModeArg,

    /// How records are written to stdout.
    #[arg(long, value_enum, default_value = "json", env = "FLOWGATE_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Probe file to run against the lab repeatedly (built-in traffic generator).
    #[arg(long, env = "FLOWGATE_TRAFFIC", requires = "lab")]
    pub traffic: Option<PathBuf>,

    /// Stop the traffic after this many rounds (default: until the agent stops).
    #[arg(long, env = "FLOWGATE_TRAFFIC_ROUNDS")]
    pub traffic_rounds: Option<u64>,

    /// Pause between two traffic rounds.
    #[arg(long, default_value = "1000", env = "FLOWGATE_TRAFFIC_INTERVAL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub traffic_interval_ms: u64,

    /// Stop after this many seconds (default: run until interrupted).
    #[arg(long, env = "FLOWGATE_DURATION_SECS")]
    pub duration_secs: Option<u64>,

    /// How often the manifests are checked for changes.
    #[arg(long, default_value = "500", env = "FLOWGATE_POLL_MS", value_parser = clap::value_parser!(u64).range(10..))]
    pub poll_ms: u64,

    /// The Kubernetes node this agent runs on (the DaemonSet sets it from spec.nodeName): its
    /// pods are the ones enforced for, and records name it. Required in Kubernetes mode; the lab
    /// defaults to "lab".
    #[arg(long, env = "FLOWGATE_NODE_NAME")]
    pub node_name: Option<String>,

    /// Only these verdicts on stdout (comma-separated: allow, deny, audit_deny; default all).
    /// Gap records (reported losses) are always written.
    #[arg(long, default_value = "", env = "FLOWGATE_LOG_FILTER")]
    pub log_filter: String,

    /// Also write JSON lines to this file, rotated by size.
    #[arg(long, env = "FLOWGATE_JSONL_FILE")]
    pub jsonl_file: Option<PathBuf>,

    /// Rotate the JSON-lines file past this many bytes.
    #[arg(long, default_value = "104857600", env = "FLOWGATE_JSONL_MAX_BYTES")]
    pub jsonl_max_bytes: u64,

    /// Rotated JSON-lines files to keep (file.1 .. file.N).
    #[arg(long, default_value = "5", env = "FLOWGATE_JSONL_KEEP")]
    pub jsonl_keep: usize,

    /// Only these verdicts in the JSON-lines file (as --log-filter).
    #[arg(long, default_value = "", env = "FLOWGATE_JSONL_FILTER")]
    pub jsonl_filter: String,

    /// Address of the HTTP API (/metrics, /healthz, /readyz, /v1/...). Anything but loopback
    /// needs --api-token-file.
    #[arg(long, default_value = "127.0.0.1:9090", env = "FLOWGATE_HTTP_ADDR")]
    pub http_addr: std::net::SocketAddr,

    /// File holding the bearer token /v1/* requires (mandatory off loopback).
    #[arg(long, env = "FLOWGATE_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,

    /// Pod label keys to put in records (comma-separated, e.g. app,app.kubernetes.io/name,tier);
    /// default: every label.
    #[arg(long, value_delimiter = ',', env = "FLOWGATE_RECORD_LABELS")]
    pub record_labels: Vec<String>,

    /// At most this many series per Prometheus label family (per policy/rule, per namespace
    /// pair, ...); further label sets are counted under `__other__` (docs/metrics.md).
    #[arg(long, default_value = "10000", env = "FLOWGATE_METRICS_MAX_SERIES", value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_max_series: u64,

    /// Seconds between two heartbeat records (0: none).
    #[arg(long, default_value = "10", env = "FLOWGATE_HEARTBEAT_SECS")]
    pub heartbeat_secs: u64,

    /// Records kept in memory for /v1/flows?last=N.
    #[arg(long, default_value = "10000", env = "FLOWGATE_RECENT")]
    pub recent: usize,

    /// Send every record as an OTLP log record to this collector (e.g. http://127.0.0.1:4317
    /// for gRPC, http://127.0.0.1:4318 for HTTP). Plain HTTP only: use a node-local collector.
    #[arg(long, env = "FLOWGATE_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: grpc or http/protobuf.
    #[arg(long, default_value = "grpc", env = "FLOWGATE_OTLP_PROTOCOL")]
    pub otlp_protocol: String,

    /// Extra OTLP headers, `key=value,key2=value2` (as OTEL_EXPORTER_OTLP_HEADERS).
    #[arg(long, env = "FLOWGATE_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// Format of the JSON-lines file: json (flowgate.flow/v1) or ocsf (OCSF Network Activity).
    #[arg(
        long,
        value_enum,
        default_value = "json",
        env = "FLOWGATE_JSONL_FORMAT"
    )]
    pub jsonl_format: LineFormat,

    /// Queue length of each sink; a sink that falls further behind loses records (counted and
    /// reported as gap records).
    #[arg(long, default_value = "65536", env = "FLOWGATE_SINK_QUEUE", value_parser = clap::value_parser!(u64).range(1..))]
    pub sink_queue: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (schema flowgate.flow/v1).
    Json,
    /// One human-readable line per flow.
    Compact,
    /// One OCSF Network Activity (class 4001) JSON object per line; see docs/siem-mappings.md.
    Ocsf,
    /// Write nothing on stdout (use the file, OTLP or HTTP sinks).
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LineFormat {
    /// The flowgate.flow/v1 record.
    Json,
    /// OCSF Network Activity.
    Ocsf,
}

fn ocsf_line(record: &Record) -> String {
    flowgate_flows::ocsf::to_ocsf(record).to_string()
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

/// Reads the API token, and refuses an API off loopback without one (before anything starts).
fn api_token(args: &Args) -> anyhow::Result<Option<String>> {
    let token = match &args.api_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --api-token-file {}", path.display()))?;
            let token = text.trim().to_owned();
            if token.len() < 16 {
                bail!(
                    "--api-token-file {}: the token must be at least 16 characters",
                    path.display()
                );
            }
            Some(token)
        }
        None => None,
    };
    if token.is_none() && !http::is_loopback(&args.http_addr) {
        bail!(
            "--http-addr {} is not loopback: /v1/* would be open to the network; give --api-token-file (or bind 127.0.0.1)",
            args.http_addr
        );
    }
    Ok(token)
}

/// The sinks: stdout in the chosen format, the rotated file, the live stream / recent ring.
fn sinks(args: &Args, api: &ApiState) -> anyhow::Result<Fanout> {
    let mut fanout = Fanout::new(args.node());
    let queue = usize::try_from(args.sink_queue).unwrap_or(usize::MAX);
    let stdout_filter =
        Filter::parse(&args.log_filter).map_err(|e| anyhow::anyhow!("--log-filter: {e}"))?;
    match args.log_format {
        LogFormat::Json => fanout.add_sink(Box::new(JsonlSink::stdout(stdout_filter)), queue)?,
        LogFormat::Compact => {
            fanout.add_sink(
                Box::new(
                    JsonlSink::stdout(stdout_filter).with_format(flowgate_flows::compact::plain),
                ),
                queue,
            )?;
        }
        LogFormat::Ocsf => {
            fanout.add_sink(
                Box::new(JsonlSink::stdout(stdout_filter).with_format(ocsf_line)),
                queue,
            )?;
        }
        LogFormat::None => {}
    }
    if let Some(path) = &args.jsonl_file {
        let filter = Filter::parse(&args.jsonl_filter)
            .map_err(|e| anyhow::anyhow!("--jsonl-filter: {e}"))?;
        let mut sink = JsonlSink::file(path, args.jsonl_max_bytes, args.jsonl_keep, filter)
            .with_context(|| format!("cannot open --jsonl-file {}", path.display()))?;
        if args.jsonl_format == LineFormat::Ocsf {
            sink = sink.with_format(ocsf_line);
        }
        fanout.add_sink(Box::new(sink), queue)?;
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        let protocol: OtlpProtocol = args
            .otlp_protocol
            .parse()
            .map_err(|e| anyhow::anyhow!("--otlp-protocol: {e}"))?;
        let mut config = OtlpConfig::new(endpoint, protocol, args.node());
        if let Some(h) = &args.otlp_headers {
            config.headers =
                parse_headers(h).map_err(|e| anyhow::anyhow!("--otlp-headers: {e}"))?;
        }
        let sink = OtlpSink::new(config)
            .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
        fanout.add_sink(Box::new(sink), queue)?;
    }
    fanout.add_sink(Box::new(api.stream_sink(args.recent)), queue)?;
    Ok(fanout)
}

impl Args {
    /// The node name records carry: --node-name, or "lab" on a lab node.
    pub fn node(&self) -> &str {
        self.node_name.as_deref().unwrap_or("lab")
    }

    fn manifest_args(&self) -> ManifestArgs {
        ManifestArgs {
            manifests: self.manifests.clone(),
            quiet: self.quiet,
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    if args.cleanup {
        return cleanup(args);
    }
    // Configuration is checked in full before anything is bound or loaded.
    let token = api_token(args)?;
    if !args.lab && args.node_name.as_deref().is_none_or(str::is_empty) {
        bail!(
            "--node-name is required in Kubernetes mode (the DaemonSet sets FLOWGATE_NODE_NAME from spec.nodeName); for a local lab node use --lab --manifests PATH"
        );
    }
    if args.sync_min_interval_ms > args.sync_max_interval_ms {
        bail!(
            "--sync-min-interval-ms {} is above --sync-max-interval-ms {}",
            args.sync_min_interval_ms,
            args.sync_max_interval_ms
        );
    }
    if !is_root() {
        eprintln!(
            "error: flowgate agent needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON; CAP_SYS_ADMIN for the lab); run it with sudo"
        );
        return Ok(Exit::NoPermission);
    }
    if args.lab {
        run_lab(args, token)
    } else {
        super::agent_cluster::run(args, token)
    }
}

/// `--cleanup`: unpins everything under --bpffs-dir.
fn cleanup(args: &Args) -> anyhow::Result<Exit> {
    if !is_root() {
        eprintln!("error: flowgate agent --cleanup needs root (CAP_BPF, CAP_NET_ADMIN)");
        return Ok(Exit::NoPermission);
    }
    let removed = crate::datapath::Datapath::unpin_all(&args.bpffs_dir)
        .with_context(|| format!("cleaning up {}", args.bpffs_dir.display()))?;
    eprintln!(
        "flowgate agent: removed {} pinned links (programs detached) and {} pinned maps under {}",
        removed.links,
        removed.maps,
        args.bpffs_dir.display()
    );
    Ok(Exit::Ok)
}

/// What both modes run: the HTTP API on its own runtime, the metrics, the sinks.
pub(super) struct Services {
    pub runtime: tokio::runtime::Runtime,
    pub api: ApiState,
    pub metrics: AgentMetrics,
    pub fanout: Fanout,
}

impl Services {
    /// Binds the HTTP address first: a port that cannot be bound is a configuration error.
    pub fn start(args: &Args, token: Option<String>) -> anyhow::Result<Self> {
        let metrics = AgentMetrics::with_max_series(
            usize::try_from(args.metrics_max_series).unwrap_or(usize::MAX),
        );
        let api = ApiState::new(metrics.text(), token);
        let listener = std::net::TcpListener::bind(args.http_addr)
            .with_context(|| format!("cannot listen on --http-addr {}", args.http_addr))?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let router = http::router(api.clone());
        runtime.spawn(async move {
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => {
                    if let Err(e) = axum::serve(l, router).await {
                        eprintln!("flowgate agent: HTTP server stopped: {e}");
                    }
                }
                Err(e) => eprintln!("flowgate agent: HTTP server failed to start: {e}"),
            }
        });
        let fanout = sinks(args, &api)?;
        let fanout = metrics.attach(
            fanout,
            usize::try_from(args.sink_queue).unwrap_or(usize::MAX),
        )?;
        Ok(Self {
            runtime,
            api,
            metrics,
            fanout,
        })
    }

    /// After an apply: the policy state for /v1/*, the metrics, a policy_snapshot record.
    pub fn applied(
        &self,
        node: &mut Node,
        cluster: &flowgate_policy::Cluster,
        stats: &crate::node::ApplyStats,
    ) {
        self.fanout
            .publish(Record::Node(node.policy_snapshot(cluster)));
        self.metrics.applied(stats, node.snapshot(), cluster);
        self.api
            .set_policy(Arc::new(cluster.clone()), Arc::new(node.snapshot().clone()));
    }

    /// Flushes the last losses, closes every sink and prints the closing line.
    pub fn finish(self, node: &mut Node, pump: &Pump, started: Instant) -> anyhow::Result<()> {
        if let Some(gap) = node.ringbuf_gap()? {
            self.fanout.publish(Record::Gap(gap));
        }
        let sink_stats = self.fanout.close();
        let lost = node.lost().unwrap_or_default();
        eprintln!(
            "flowgate agent: stopped after {:.1} s; records {:?}; ring-buffer losses (allow, deny, audit) {:?}; undecodable records {}; sinks {}",
            started.elapsed().as_secs_f64(),
            pump.counts,
            lost,
            node.reader.malformed,
            sink_stats
                .iter()
                .map(|s| format!(
                    "{} delivered {} lost {}",
                    s.name,
                    s.delivered,
                    s.lost.total()
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
        self.runtime.shutdown_timeout(Duration::from_secs(1));
        Ok(())
    }
}

/// The event path's periodic work, the same in both modes: records out of the ring buffer,
/// ring-buffer losses as gap records, sink losses as metrics, heartbeats.
#[derive(Debug)]
pub(super) struct Pump {
    pub counts: std::collections::BTreeMap<String, u64>,
    heartbeat: Duration,
    last_loss_check: Instant,
    last_heartbeat: Instant,
}

impl Pump {
    pub fn new(heartbeat_secs: u64) -> Self {
        Self {
            counts: std::collections::BTreeMap::new(),
            heartbeat: Duration::from_secs(heartbeat_secs),
            last_loss_check: Instant::now(),
            last_heartbeat: Instant::now(),
        }
    }

    pub fn tick(&mut self, node: &mut Node, services: &Services) -> anyhow::Result<()> {
        for r in node.drain() {
            *self
                .counts
                .entry(format!("{:?}", r.verdict).to_lowercase())
                .or_default() += 1;
            services.fanout.publish(Record::Flow(r));
        }
        if self.last_loss_check.elapsed() >= Duration::from_secs(1) {
            self.last_loss_check = Instant::now();
            if let Some(gap) = node.ringbuf_gap()? {
                services.fanout.publish(Record::Gap(gap));
            }
            services.metrics.sinks(&services.fanout.stats());
            if let Ok(p) = node.path_stats() {
                services
                    .metrics
                    .flows()
                    .set_datapath_paths([p.peer_judged, p.judged_at_receiver]);
            }
        }
        if !self.heartbeat.is_zero() && self.last_heartbeat.elapsed() >= self.heartbeat {
            self.last_heartbeat = Instant::now();
            let flows = self.counts.values().sum();
            services.fanout.publish(Record::Node(node.heartbeat(flows)));
        }
        Ok(())
    }
}

fn run_lab(args: &Args, token: Option<String>) -> anyhow::Result<Exit> {
    let manifest_args = args.manifest_args();
    let mut loaded = manifests::load(&manifest_args)?;
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
    let spec = super::lab::lab_spec(&loaded.cluster, &flows);
    let services = Services::start(args, token)?;

    install_interrupt_cleanup().context("installing the Ctrl-C cleanup")?;
    let lab = Lab::build_wired(&spec, args.wiring.into()).context("building the lab node")?;
    let mut node = Node::on_lab(&lab, Mode::from(args.mode), args.node())
        .context("loading and attaching the datapath")?;
    node.record_labels.clone_from(&args.record_labels);
    let stats = node
        .apply(&loaded.cluster)
        .context("applying the policies")?;
    services.applied(&mut node, &loaded.cluster, &stats);
    services.api.ready.store(true, Ordering::Relaxed);
    eprintln!(
        "flowgate agent: node {} ({} pods), mode {:?}, generation {} applied: {} map ops, {} policy cells, compile {:.1} ms, write {:.1} ms; API on http://{}",
        args.node(),
        node.snapshot().endpoints.len(),
        node.mode(),
        stats.generation,
        stats.ops,
        stats.cells,
        stats.compile.as_secs_f64() * 1e3,
        stats.write.as_secs_f64() * 1e3,
        args.http_addr
    );
    let probes: Vec<LabProbe> = flows
        .iter()
        .map(|f| LabProbe::new(ProbeEnd::Ip(f.src_ip), f.dst_ip, f.protocol, f.port))
        .collect();

    let started = Instant::now();
    let deadline = args.duration_secs.map(|s| started + Duration::from_secs(s));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let mut pump = Pump::new(args.heartbeat_secs);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        if !probes.is_empty() {
            let (lab, probes, stop) = (&lab, &probes, &stop);
            let interval = Duration::from_millis(args.traffic_interval_ms);
            let rounds = args.traffic_rounds.unwrap_or(u64::MAX);
            scope.spawn(move || {
                let mut done = 0;
                while !stop.load(Ordering::Relaxed) && done < rounds {
                    let _ = lab.probe_all(probes, Duration::from_millis(500));
                    done += 1;
                    std::thread::sleep(interval);
                }
            });
        }
        let result = (|| -> anyhow::Result<()> {
            let mut last = fingerprint(&manifest_args);
            let mut last_poll = Instant::now();
            loop {
                pump.tick(&mut node, &services)?;
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(());
                }
                if last_poll.elapsed() >= Duration::from_millis(args.poll_ms) {
                    last_poll = Instant::now();
                    let now = fingerprint(&manifest_args);
                    if now != last {
                        last = now;
                        if let Some(stats) = reload(&manifest_args, &mut node, &mut loaded) {
                            services.applied(&mut node, &loaded.cluster, &stats);
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })();
        stop.store(true, Ordering::Relaxed);
        result
    })?;
    services.finish(&mut node, &pump, started)?;
    drop(node);
    lab.teardown().context("removing the lab")?;
    Ok(Exit::Ok)
}

/// Re-reads the manifests; applies them only if every object is valid.
fn reload(
    args: &ManifestArgs,
    node: &mut Node,
    loaded: &mut manifests::Loaded,
) -> Option<crate::node::ApplyStats> {
    match manifests::load(args) {
        Ok(next) if next.has_errors() => {
            eprintln!(
                "flowgate agent: manifests changed but have errors (above): keeping generation {} in force",
                node.snapshot().generation
            );
        }
        Ok(mut next) => {
            // The index in force, changed only where the files changed: its journal then names
            // just those objects, and the compile redoes only what they touch.
            let mut cluster = std::mem::take(&mut loaded.cluster);
            let objects = |m: &flowgate_policy::Manifests| {
                (m.namespaces.clone(), m.pods.clone(), m.policies.clone())
            };
            let (namespaces, pods, policies) = objects(&next.manifests);
            cluster.sync(namespaces, pods, policies);
            match node.apply(&cluster) {
                Ok(stats) => {
                    eprintln!(
                        "flowgate agent: manifests changed: generation {} applied ({} map ops, compile {:.1} ms, write {:.1} ms)",
                        stats.generation,
                        stats.ops,
                        stats.compile.as_secs_f64() * 1e3,
                        stats.write.as_secs_f64() * 1e3
                    );
                    next.cluster = cluster;
                    *loaded = next;
                    return Some(stats);
                }
                Err(e) => {
                    eprintln!(
                        "flowgate agent: applying the changed manifests failed: {e:#}; the previous state stays"
                    );
                    let (namespaces, pods, policies) = objects(&loaded.manifests);
                    cluster.sync(namespaces, pods, policies);
                    loaded.cluster = cluster;
                }
            }
        }
        Err(e) => {
            eprintln!("flowgate agent: cannot read the manifests: {e:#}; keeping the current state")
        }
    }
    None
}
