//! Datapath benchmark (`make bench-datapath`, as root; method and results in docs/benchmarks.md,
//! section "Datapath").
//!
//! A lab node with two pods, client and server, on the same node: their traffic crosses both
//! host veths, so both hooks of both interfaces run the programs. Five configurations, run
//! interleaved (a b c d e a b c d e ...) for several rounds:
//!
//! - (a) no programs attached (the lab alone);
//! - (b) flowgate enforcing 10 policies;
//! - (c) flowgate enforcing 10,000 policies over a 50,000-pod cluster (generated in memory; the two
//!   lab pods are part of it and the only local ones);
//! - (d) an iptables FORWARD chain of 10,000 rules in the node namespace, no eBPF;
//! - (e) an nftables set of 10,000 elements looked up by one rule, no eBPF.
//!
//! In each: iperf3 TCP throughput, 1-byte TCP request/response over one connection, and new TCP
//! connections per second (connect, 1-byte request/response, close), client and server pinned to
//! one and the same CPU. The table gives medians over the rounds and ratios of the medians, and
//! the targets are checked against them. Then, on configuration (c): compile time, one policy
//! change and one pod relabel applied to the live maps, memory (RSS, map entries), the programs'
//! own run time in traffic (`kernel.bpf_stats_enabled`) and per path (`BPF_PROG_TEST_RUN`), to
//! show where the time goes.
//!
//! Nothing here is hard-coded: every figure printed is measured in this run.

mod cluster;
mod kernel;
mod netfilter;
mod report;
mod testrun;
mod traffic;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use flowgate::lab::{self, Lab, LabPod, LabSpec, Outcome, ProbeEnd};
use flowgate::node::{ApplyStats, Node};
use flowgate_policy::Cluster;
use flowgate_policy::compile::{LocalEndpoint, compile};
use flowgate_policy::maps::{Mode, diff};
use flowgate_policy::model::Protocol;

use cluster::{
    CLIENT, CLIENT_IP, CRR_PORT, DENIED_PORT, IPERF_PORT, Objects, RR_PORT, SERVER, SERVER_IP,
};
use report::{Metric, Samples, fmt_ratio, median, median_duration, ms, ratio, thousands};
use traffic::{Pair, Rate};

/// Datapath benchmark: flowgate's eBPF programs against no programs, iptables and nftables on a
/// lab node (needs root).
#[derive(Debug, Parser)]
struct Args {
    /// Rounds of the interleaved configurations.
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Seconds of each request/response and new-connections run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// Seconds of each iperf3 run (one more second is run and omitted).
    #[arg(long, default_value_t = 3)]
    iperf_secs: u32,
    /// Configurations to run, in round order (letters a to e).
    #[arg(long, default_value = "abcde")]
    configs: String,
    /// Pods of the large cluster (c).
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Policies of the large cluster (c).
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    /// Generated namespaces of the large cluster (c).
    #[arg(long, default_value_t = 2_000)]
    namespaces: usize,
    /// iptables rules (d) and nftables set elements (e).
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Applies per kind of change (a change and its revert count as two).
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// The CPU the pinned client and server run on (default: the last one).
    #[arg(long)]
    cpu: Option<usize>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn describe(config: char) -> &'static str {
    match config {
        'a' => "no programs",
        'b' => "flowgate, 10 policies",
        'c' => "flowgate, 10,000 policies / 50,000 pods",
        'd' => "iptables, 10,000 rules",
        'e' => "nftables, 10,000-element set",
        _ => "?",
    }
}

/// What is in force in the node namespace.
enum Setup {
    None,
    Node(Box<Node>),
    Netfilter,
}

/// Totals over the measured runs of one configuration.
#[derive(Debug, Default, Clone)]
struct Costs {
    /// Loading and attaching the datapath (b, c) or loading the rules (d, e).
    setup: Vec<Duration>,
    applies: Vec<ApplyStats>,
    events: u64,
    connections: u64,
}

struct Bench {
    args: Args,
    lab: Lab,
    pair: Pair,
    node_netns: String,
    small: Cluster,
    large: Cluster,
    samples: Samples,
    costs: BTreeMap<char, Costs>,
    notes: Vec<String>,
    /// Every target checked: (met, what).
    targets: Vec<(bool, String)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    lab::install_interrupt_cleanup().context("installing the Ctrl-C cleanup")?;
    for c in args.configs.chars() {
        if !('a'..='e').contains(&c) {
            bail!("--configs takes letters a to e, got {c:?}");
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    let cpu = args.cpu.unwrap_or(cpus - 1);
    let other_cpu = if cpus > 1 && cpu == 0 { 1 } else { 0 };
    // The agent's own thread (draining events, applying) stays off the benchmark's CPU.
    traffic::pin(other_cpu)?;
    let rss_start = rss_now()?;

    eprintln!("building the clusters ...");
    let small_objects = cluster::small()?;
    let large_objects = cluster::large(args.pods, args.policies, args.namespaces)?;
    let shapes = (shape(&small_objects), shape(&large_objects));
    let small = small_objects.cluster();
    drop(small_objects);
    let started = Instant::now();
    let large = large_objects.cluster();
    let index_time = started.elapsed();
    // The agent keeps the index, not the objects it was built from.
    drop(large_objects);
    let rss_clusters = rss_now()?;

    let spec = LabSpec {
        pods: vec![
            LabPod {
                key: CLIENT.to_owned(),
                ips: vec![IpAddr::V4(CLIENT_IP)],
                ports: Vec::new(),
            },
            LabPod {
                key: SERVER.to_owned(),
                ips: vec![IpAddr::V4(SERVER_IP)],
                ports: vec![(Protocol::Tcp, DENIED_PORT)],
            },
        ],
        ..LabSpec::default()
    };
    let lab = Lab::build(&spec).context("building the lab node (root needed)")?;
    let netns_of = |key: &str| -> Result<std::path::PathBuf> {
        Ok(lab
            .endpoint(key)
            .with_context(|| format!("lab endpoint {key}"))?
            .netns
            .to_path_buf())
    };
    let pair = Pair {
        client_netns: netns_of(CLIENT)?,
        server_netns: netns_of(SERVER)?,
        client_ip: CLIENT_IP,
        server_ip: SERVER_IP,
        cpu,
    };
    // Wide ephemeral range; a dropped SYN fails a run in seconds, not minutes.
    traffic::sysctls(
        &pair.client_netns,
        &[
            ("net/ipv4/ip_local_port_range", "1024 65535"),
            ("net/ipv4/tcp_syn_retries", "2"),
        ],
    )?;
    let node_netns = lab.node_netns_name().to_owned();
    let mut bench = Bench {
        args,
        lab,
        pair,
        node_netns,
        small,
        large,
        samples: Samples::default(),
        costs: BTreeMap::new(),
        notes: Vec::new(),
        targets: Vec::new(),
    };
    let started = Instant::now();
    let load_start = load_average();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine: {} CPUs, kernel {}; traffic pinned to CPU {cpu}, the agent's thread (draining events) to CPU {other_cpu}",
        cpus,
        kernel_release()
    );
    let _ = writeln!(
        out,
        "clusters: (b) {}; (c) {}; (c) index built in {}",
        shapes.0,
        shapes.1,
        ms(index_time)
    );
    bench.rounds()?;
    out.push_str(&bench.main_table());
    out.push_str(&bench.after(rss_start, rss_clusters)?);
    let _ = writeln!(
        out,
        "\ntotal benchmark time: {:.0} s; load average at start {load_start}, at the end {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    let missed: Vec<&String> = bench
        .targets
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| what)
        .collect();
    if missed.is_empty() {
        let _ = writeln!(out, "all {} targets met", bench.targets.len());
    } else {
        let _ = writeln!(
            out,
            "TARGETS MISSED: {} of {}:",
            missed.len(),
            bench.targets.len()
        );
        for what in missed {
            let _ = writeln!(out, "  - {what}");
        }
    }
    println!("{out}");
    bench.lab.teardown().context("removing the lab node")?;
    Ok(())
}

/// VmRSS in KiB after handing freed heap back to the kernel, so it counts live data.
fn rss_now() -> Result<u64> {
    // SAFETY: malloc_trim only releases free memory of the allocator; no preconditions.
    unsafe { libc::malloc_trim(0) };
    Ok(kernel::rss_kib()?.0)
}

fn shape(objects: &Objects) -> String {
    format!(
        "{} namespaces with pods, {} pods, {} policies",
        objects.populated_namespaces(),
        thousands(objects.pods.len() as f64),
        thousands(objects.policies.len() as f64)
    )
}

/// The 1-minute load average: anything else running shows in the ratios.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

impl Bench {
    fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.args.secs.max(0.1))
    }

    fn locals(&self) -> Vec<LocalEndpoint> {
        self.lab
            .endpoints()
            .filter(|e| e.kind == lab::EndpointKind::Pod)
            .map(|e| LocalEndpoint {
                pod: e.key.to_owned(),
                ifindex: e.host_ifindex,
            })
            .collect()
    }

    /// Puts configuration `config` in force.
    fn setup(&mut self, config: char) -> Result<Setup> {
        let started = Instant::now();
        let setup = match config {
            'b' | 'c' => {
                let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")
                    .context("loading and attaching the datapath")?;
                let loaded = started.elapsed();
                let cluster = if config == 'b' {
                    &self.small
                } else {
                    &self.large
                };
                let stats = node.apply(cluster).context("applying the policies")?;
                let costs = self.costs.entry(config).or_default();
                costs.setup.push(loaded);
                costs.applies.push(stats);
                Setup::Node(Box::new(node))
            }
            'd' => {
                let rules = netfilter::load_iptables(&self.node_netns, self.args.rules)?;
                self.costs
                    .entry(config)
                    .or_default()
                    .setup
                    .push(started.elapsed());
                if rules != self.args.rules + 2 {
                    bail!(
                        "iptables lists {rules} FORWARD rules, expected {}",
                        self.args.rules + 2
                    );
                }
                Setup::Netfilter
            }
            'e' => {
                let elements = netfilter::load_nft(&self.node_netns, self.args.rules)?;
                self.costs
                    .entry(config)
                    .or_default()
                    .setup
                    .push(started.elapsed());
                if elements != self.args.rules {
                    bail!(
                        "nft lists {elements} set elements, expected {}",
                        self.args.rules
                    );
                }
                Setup::Netfilter
            }
            _ => Setup::None,
        };
        Ok(setup)
    }

    fn teardown(&self, setup: Setup) -> Result<()> {
        match setup {
            Setup::None => Ok(()),
            // Dropping the node detaches the programs and frees its maps.
            Setup::Node(node) => {
                drop(node);
                Ok(())
            }
            Setup::Netfilter => netfilter::flush(&self.node_netns),
        }
    }

    /// The flow the configurations all deny (none allows): dropped under b to e, reached under a.
    fn enforcement_check(&mut self, config: char) -> Result<()> {
        let seen = self.lab.probe(
            &ProbeEnd::parse(CLIENT),
            IpAddr::V4(SERVER_IP),
            Protocol::Tcp,
            Some(DENIED_PORT),
            Duration::from_millis(500),
        );
        let expected = if config == 'a' {
            Outcome::Reached
        } else {
            Outcome::TimedOut
        };
        if seen.outcome != expected {
            bail!(
                "enforcement check failed in ({config}): client -> server:{DENIED_PORT} gave {:?}, expected {expected:?}",
                seen.outcome
            );
        }
        self.notes.push(format!(
            "({config}) client -> server:{DENIED_PORT} (allowed by nothing): {:?}",
            seen.outcome
        ));
        Ok(())
    }

    /// Throughput, request/response and new connections under `setup`.
    fn measure(&self, setup: &mut Setup) -> Result<(f64, Rate, Rate, u64)> {
        let mut events = 0u64;
        let mut drain = || {
            if let Setup::Node(node) = setup {
                events += node.drain().len() as u64;
            }
        };
        let bits = traffic::iperf3(&self.pair, IPERF_PORT, self.args.iperf_secs, &mut drain)?;
        let rr = traffic::request_response(&self.pair, RR_PORT, self.duration(), &mut drain)?;
        let crr = traffic::connect_rate(&self.pair, CRR_PORT, self.duration(), &mut drain)?;
        Ok((bits, rr, crr, events))
    }

    fn rounds(&mut self) -> Result<()> {
        // One unrecorded pass first: the first runs of a fresh lab are not like the rest.
        eprintln!("warm-up ...");
        let mut none = Setup::None;
        self.measure(&mut none)?;
        let configs: Vec<char> = self.args.configs.chars().collect();
        for round in 0..self.args.rounds {
            for &config in &configs {
                let mut setup = self.setup(config)?;
                if round == 0 {
                    self.enforcement_check(config)?;
                }
                let measured = self.measure(&mut setup);
                let lost = match &setup {
                    Setup::Node(node) => node.lost().ok().map(|l| l.iter().sum::<u64>()),
                    _ => None,
                };
                self.teardown(setup)?;
                let (bits, rr, crr, events) = measured?;
                eprintln!(
                    "round {}/{} ({config}) {:<40} {:>6.2} Gbit/s {:>9} trans/s {:>8} conn/s{}",
                    round + 1,
                    self.args.rounds,
                    describe(config),
                    bits / 1e9,
                    thousands(rr.per_sec),
                    thousands(crr.per_sec),
                    lost.map_or(String::new(), |l| format!("  events {events}, lost {l}"))
                );
                self.samples.push(config, Metric::Throughput, bits);
                self.samples
                    .push(config, Metric::RequestResponse, rr.per_sec);
                self.samples
                    .push(config, Metric::NewConnections, crr.per_sec);
                let costs = self.costs.entry(config).or_default();
                costs.events += events;
                costs.connections += crr.count;
            }
        }
        Ok(())
    }

    fn main_table(&mut self) -> String {
        let configs: Vec<char> = self.args.configs.chars().collect();
        let has = |c: char| configs.contains(&c);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\n{} rounds, interleaved {}; each cell the median over the rounds; ratios are ratios of those medians",
            self.args.rounds,
            configs.iter().collect::<String>()
        );
        for c in &configs {
            let _ = writeln!(out, "  ({c}) {}", describe(*c));
        }
        out.push('\n');
        let mut header = vec!["metric".to_owned()];
        header.extend(configs.iter().map(|c| format!("({c})")));
        let pairs: Vec<(char, char)> = [
            ('c', 'a'),
            ('c', 'b'),
            ('c', 'e'),
            ('b', 'a'),
            ('d', 'a'),
            ('e', 'a'),
        ]
        .into_iter()
        .filter(|(n, d)| has(*n) && has(*d))
        .collect();
        header.extend(pairs.iter().map(|(n, d)| format!("{n}/{d}")));
        let mut rows = Vec::new();
        for metric in Metric::ALL {
            let mut row = vec![metric.label().to_owned()];
            row.extend(
                configs
                    .iter()
                    .map(|c| report::value(metric, self.samples.median(*c, metric))),
            );
            row.extend(pairs.iter().map(|(n, d)| {
                fmt_ratio(ratio(
                    self.samples.median(*n, metric),
                    self.samples.median(*d, metric),
                ))
            }));
            rows.push(row);
        }
        out.push_str(&report::table(&header, &rows));

        let _ = writeln!(out, "\nper round (spread = (max - min) / median):");
        for metric in Metric::ALL {
            for c in &configs {
                let values: Vec<String> = self
                    .samples
                    .get(*c, metric)
                    .iter()
                    .map(|v| report::value(metric, *v))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<17} ({c}) {}  spread {:.1}%",
                    metric.short(),
                    values.join(" "),
                    self.samples.spread(*c, metric) * 100.0
                );
            }
            if has('a') && has('c') {
                let _ = writeln!(
                    out,
                    "  {:<17} c/a per round, median {}",
                    metric.short(),
                    fmt_ratio(self.samples.paired_ratio('c', 'a', metric))
                );
            }
        }

        let _ = writeln!(out, "\ntargets (on the ratios of medians above):");
        let mut targets = Vec::new();
        let mut check = |ok: bool, what: String| {
            let _ = writeln!(out, "  [{}] {what}", if ok { " ok " } else { "MISS" });
            targets.push((ok, what));
        };
        for metric in Metric::ALL {
            let m = |c| self.samples.median(c, metric);
            if has('c') && has('a') {
                let r = ratio(m('c'), m('a'));
                let t = metric.target_vs_none();
                check(
                    r >= t,
                    format!(
                        "{}: (c)/(a) = {} (target >= {t:.2})",
                        metric.short(),
                        fmt_ratio(r)
                    ),
                );
            }
            if has('c') && has('e') {
                let r = ratio(m('c'), m('e'));
                check(
                    r >= 1.0,
                    format!(
                        "{}: (c)/(e) = {} (target: no worse than nftables, >= 1.00)",
                        metric.short(),
                        fmt_ratio(r)
                    ),
                );
            }
            if has('c') && has('b') {
                let r = ratio(m('c'), m('b'));
                check(
                    r >= 0.98,
                    format!(
                        "{}: (c)/(b) = {} (target >= 0.98)",
                        metric.short(),
                        fmt_ratio(r)
                    ),
                );
            }
        }
        if let Some(costs) = self.costs.get(&'c') {
            let compiles: Vec<Duration> = costs.applies.iter().map(|s| s.compile).collect();
            let worst = report::max_duration(&compiles);
            check(
                worst < Duration::from_secs(1),
                format!(
                    "compile of (c), compile + diff in node.apply: median {}, max {} over {} applies (target < 1 s)",
                    ms(median_duration(&compiles)),
                    ms(worst),
                    compiles.len()
                ),
            );
        }
        self.targets.extend(targets);
        out
    }

    /// Everything measured after the rounds, on fresh (b) and (c) nodes.
    fn after(&mut self, rss_start: u64, rss_clusters: u64) -> Result<String> {
        let mut out = String::new();
        out.push_str(&self.setup_costs());

        // A live (c) node: memory, changes, the programs' cost in traffic, map sizes.
        let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        let first = node.apply(&self.large)?;
        let rss_node = rss_now()?;
        let snapshot_line = {
            let snap = node.snapshot();
            format!(
                "  (c) snapshot: {} identities, {} IP-cache entries, {} tables, {} cells, {} attributions, {} endpoints (first apply: {} map ops)",
                thousands(snap.identities.len() as f64),
                thousands(snap.ipcache.len() as f64),
                thousands(snap.tables.len() as f64),
                thousands(snap.cell_count() as f64),
                thousands(snap.attributions.len() as f64),
                snap.endpoints.len(),
                thousands(first.ops as f64)
            )
        };
        let changes = self.changes(&mut node)?;
        let applies = 1 + 3 * self.args.changes.max(1);
        let rss_changed = rss_now()?;
        let (_, hwm) = kernel::rss_kib()?;
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        let _ = writeln!(
            out,
            "\nmemory (VmRSS after malloc_trim, so freed heap is not counted):"
        );
        let _ = writeln!(
            out,
            "  agent RSS: {} at start; {} with the clusters indexed (+{} for (c)'s 50,000-pod model); \
             {} with the (c) node live after its first apply (+{}: snapshot, event-enrichment tables, loaded object); \
             {} after {applies} applies in all (+{} more: the enricher keeps the tables of past generations); \
             peak VmHWM {}",
            mib(rss_start),
            mib(rss_clusters),
            mib(rss_clusters.saturating_sub(rss_start)),
            mib(rss_node),
            mib(rss_node.saturating_sub(rss_clusters)),
            mib(rss_changed),
            mib(rss_changed.saturating_sub(rss_node)),
            mib(hwm)
        );
        out.push_str(&snapshot_line);
        out.push('\n');
        let diag_c = self.diagnose(&mut node)?;
        out.push_str(&self.map_table()?);
        drop(node);
        let mut small = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        small.apply(&self.small)?;
        let diag_b = self.diagnose(&mut small)?;
        drop(small);
        out.push_str(&changes);

        // Compile alone, in memory (no kernel), from an empty snapshot.
        let locals = self.locals();
        let mut compile_times = Vec::new();
        let mut diff_times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let snap = compile(&self.large, &locals, None);
            compile_times.push(started.elapsed());
            let started = Instant::now();
            let ops = diff(&Default::default(), &snap, Mode::Enforce);
            diff_times.push(started.elapsed());
            drop(ops);
        }
        let _ = writeln!(
            out,
            "\n(c) compile alone (in memory, no maps, from nothing): median {} over {}; diff from empty: {}",
            ms(median_duration(&compile_times)),
            compile_times.len(),
            ms(median_duration(&diff_times))
        );

        let paths_b = testrun::paths(&self.small, 200_000)?;
        let paths_c = testrun::paths(&self.large, 200_000)?;
        out.push_str(&self.diagnostics(
            &[('b', diag_b), ('c', diag_c)],
            &[('b', paths_b), ('c', paths_c)],
        ));
        Ok(out)
    }

    fn setup_costs(&self) -> String {
        let mut out = String::from("\nset-up costs (median over the rounds):\n");
        for (config, costs) in &self.costs {
            let setup = median_duration(&costs.setup);
            match config {
                'b' | 'c' => {
                    let compiles: Vec<Duration> = costs.applies.iter().map(|s| s.compile).collect();
                    let writes: Vec<Duration> = costs.applies.iter().map(|s| s.write).collect();
                    let last = costs.applies.last();
                    let _ = writeln!(
                        out,
                        "  ({config}) load + attach {}; first apply: compile + diff {}, write {} ({} map ops, {} cells)",
                        ms(setup),
                        ms(median_duration(&compiles)),
                        ms(median_duration(&writes)),
                        thousands(last.map_or(0, |s| s.ops) as f64),
                        thousands(last.map_or(0, |s| s.cells) as f64),
                    );
                }
                'd' => {
                    let _ = writeln!(
                        out,
                        "  (d) iptables-restore of {} rules: {}",
                        thousands(self.args.rules as f64),
                        ms(setup)
                    );
                }
                'e' => {
                    let _ = writeln!(
                        out,
                        "  (e) nft -f with a {}-element set: {}",
                        thousands(self.args.rules as f64),
                        ms(setup)
                    );
                }
                _ => {}
            }
        }
        for (config, costs) in &self.costs {
            if matches!(config, 'b' | 'c') {
                let _ = writeln!(
                    out,
                    "  ({config}) flow events drained during the runs: {} ({:.2} per new connection)",
                    thousands(costs.events as f64),
                    ratio(costs.events as f64, costs.connections as f64)
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  check: {note}");
        }
        out
    }

    /// The live node's maps, as the kernel has them.
    fn map_table(&self) -> Result<String> {
        let maps = kernel::maps("FG_")?;
        let header: Vec<String> = [
            "map of the (c) node, after the diagnostic traffic",
            "type",
            "max entries",
            "entries",
            "kernel memory",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let rows: Vec<Vec<String>> = maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    map_type(m.map_type).to_owned(),
                    thousands(m.max_entries as f64),
                    thousands(m.entries as f64),
                    format!("{:.1} MiB", m.memlock as f64 / 1_048_576.0),
                ]
            })
            .collect();
        let mut out = String::from("\n");
        out.push_str(&report::table(&header, &rows));
        let total: u64 = maps.iter().map(|m| m.memlock).sum();
        let _ = writeln!(
            out,
            "  maps in all: {:.1} MiB of kernel memory (the kernel's memlock figure per map)",
            total as f64 / 1_048_576.0
        );
        Ok(out)
    }

    /// One policy change and one pod relabel (and a policy change elsewhere), each applied
    /// `changes` times (change, revert, ...) to the live (c) node.
    fn changes(&mut self, node: &mut Node) -> Result<String> {
        let mut objects = cluster::large(self.args.pods, self.args.policies, self.args.namespaces)?;
        type Mutate = fn(&mut Objects) -> bool;
        let kinds: [(&str, Mutate); 3] = [
            (
                "policy selecting the server: a port added/removed",
                Objects::toggle_server_policy,
            ),
            (
                "pod relabel: a remote pod the server allows changes tier",
                |o| o.toggle_remote_pod_label().is_some(),
            ),
            (
                "policy selecting no local pod: a port added/removed",
                Objects::toggle_remote_policy,
            ),
        ];
        let header: Vec<String> = [
            "change on (c), applied to the live maps",
            "map ops",
            "compile + diff",
            "write",
            "total (median)",
            "total (max)",
            "index rebuild",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut rows = Vec::new();
        let mut targets = String::new();
        for (label, mutate) in kinds {
            let mut stats = Vec::new();
            let mut index = Vec::new();
            for _ in 0..self.args.changes.max(1) {
                if !mutate(&mut objects) {
                    bail!("the cluster has nothing to change for: {label}");
                }
                let started = Instant::now();
                let cluster = objects.cluster();
                index.push(started.elapsed());
                stats.push(node.apply(&cluster)?);
            }
            let compiles: Vec<Duration> = stats.iter().map(|s| s.compile).collect();
            let writes: Vec<Duration> = stats.iter().map(|s| s.write).collect();
            let totals: Vec<Duration> = stats.iter().map(|s| s.compile + s.write).collect();
            let ops: Vec<f64> = stats.iter().map(|s| s.ops as f64).collect();
            let total = median_duration(&totals);
            rows.push(vec![
                label.to_owned(),
                thousands(median(&ops)),
                ms(median_duration(&compiles)),
                ms(median_duration(&writes)),
                ms(total),
                ms(report::max_duration(&totals)),
                ms(median_duration(&index)),
            ]);
            if !label.starts_with("policy selecting no") {
                let ok = total < Duration::from_millis(10);
                let what = format!(
                    "{label}: compile + write median {} (target < 10 ms)",
                    ms(total)
                );
                let _ = writeln!(targets, "  [{}] {what}", if ok { " ok " } else { "MISS" });
                self.targets.push((ok, what));
            }
        }
        let mut out = format!(
            "\nchanges ({} applies each, alternating change and revert; `index rebuild` is Cluster::build, not part of the apply):\n",
            self.args.changes.max(1)
        );
        out.push_str(&report::table(&header, &rows));
        out.push_str("targets:\n");
        out.push_str(&targets);
        Ok(out)
    }

    /// Request/response and new connections again with `kernel.bpf_stats_enabled`, for the
    /// programs' run counts and times. Not part of the table: counting costs time itself.
    fn diagnose(&self, node: &mut Node) -> Result<Diagnosis> {
        let secs = Duration::from_secs_f64(self.args.secs.clamp(0.5, 2.0));
        let stats = kernel::BpfStats::enable()?;
        let mut drain = || {
            node.drain();
        };
        let before = kernel::programs("fg_")?;
        let rr = traffic::request_response(&self.pair, RR_PORT, secs, &mut drain)?;
        let middle = kernel::programs("fg_")?;
        let crr = traffic::connect_rate(&self.pair, CRR_PORT, secs, &mut drain)?;
        let after = kernel::programs("fg_")?;
        let iperf_secs = self.args.iperf_secs.clamp(1, 2);
        let bits = traffic::iperf3(&self.pair, IPERF_PORT, iperf_secs, &mut drain)?;
        let after_bulk = kernel::programs("fg_")?;
        drop(stats);
        Ok(Diagnosis {
            rr: (rr, delta(&before, &middle)),
            crr: (crr, delta(&middle, &after)),
            // iperf3 sends for one omitted second plus the measured ones.
            bulk: (bits, f64::from(iperf_secs + 1), delta(&after, &after_bulk)),
        })
    }

    fn diagnostics(&self, runs: &[(char, Diagnosis)], paths: &[(char, testrun::Paths)]) -> String {
        let mut out = String::from(
            "\nwhere the time goes, 1: the programs in traffic (separate runs with kernel.bpf_stats_enabled=1, \
             which adds two clock reads per run):\n",
        );
        let a_rr = self.samples.median('a', Metric::RequestResponse);
        let a_crr = self.samples.median('a', Metric::NewConnections);
        let header: Vec<String> = [
            "run",
            "program",
            "runs / transaction",
            "ns / run",
            "ns / transaction",
            "vs (a)'s transaction time",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut rows = Vec::new();
        for (config, diagnosis) in runs {
            for (label, (rate, progs), base) in [
                ("request/response", &diagnosis.rr, a_rr),
                ("new connections", &diagnosis.crr, a_crr),
            ] {
                let per_txn_total: f64 = progs
                    .iter()
                    .map(|p| ratio(p.run_time_ns as f64, rate.count as f64))
                    .sum();
                for p in progs {
                    rows.push(vec![
                        format!("({config}) {label}"),
                        p.name.clone(),
                        format!("{:.2}", ratio(p.runs as f64, rate.count as f64)),
                        format!("{:.0}", ratio(p.run_time_ns as f64, p.runs as f64)),
                        format!("{:.0}", ratio(p.run_time_ns as f64, rate.count as f64)),
                        String::new(),
                    ]);
                }
                rows.push(vec![
                    format!("({config}) {label}"),
                    "both".to_owned(),
                    String::new(),
                    String::new(),
                    format!("{per_txn_total:.0}"),
                    format!("{:.1}%", per_txn_total * base / 1e9 * 100.0),
                ]);
            }
        }
        out.push_str(&report::table(&header, &rows));
        let _ = writeln!(
            out,
            "  (a)'s transaction time: request/response {:.2} us, new connection {:.2} us",
            ratio(1e6, a_rr),
            ratio(1e6, a_crr)
        );
        for (config, diagnosis) in runs {
            let (bits, secs, progs) = &diagnosis.bulk;
            let busy: f64 = progs.iter().map(|p| p.run_time_ns as f64).sum::<f64>() / (secs * 1e9);
            let each: Vec<String> = progs
                .iter()
                .map(|p| {
                    format!(
                        "{} {} runs/s at {:.0} ns",
                        p.name,
                        thousands(p.runs as f64 / secs),
                        ratio(p.run_time_ns as f64, p.runs as f64)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  ({config}) iperf3 at {:.2} Gbit/s: {}; the programs take {:.1}% of the one CPU that carries the transfer",
                bits / 1e9,
                each.join(", "),
                busy * 100.0
            );
        }

        let _ = writeln!(
            out,
            "\nwhere the time goes, 2: ns per run of each path, BPF_PROG_TEST_RUN of the real programs on crafted frames \
             (own maps filled for the cluster, warm caches, median of 5):"
        );
        let mut header = vec!["path".to_owned()];
        header.extend(paths.iter().map(|(c, _)| format!("({c}) maps")));
        let lines: [(&str, PathOf); 5] = [
            ("ARP: one load, not IP, pass", |p| p.not_ip),
            ("TCP before any snapshot: full parse + FG_ACTIVE", |p| {
                p.parse_only
            }),
            (
                "TCP established: parse + FG_ACTIVE + FG_ENDPOINTS + 1 conntrack hit",
                |p| p.established,
            ),
            (
                "TCP reply: the same + 1 conntrack miss before the hit",
                |p| p.reply,
            ),
            (
                "TCP SYN: parse + lookups + IP-cache LPM + policy LPM + conntrack update + event",
                |p| p.new_flow,
            ),
        ];
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|(label, get)| {
                let mut row = vec![(*label).to_owned()];
                row.extend(paths.iter().map(|(_, p)| format!("{:.0}", get(p))));
                row
            })
            .collect();
        out.push_str(&report::table(&header, &rows));
        out
    }
}

/// Picks one path's figure.
type PathOf = fn(&testrun::Paths) -> f64;

#[derive(Debug)]
struct Diagnosis {
    rr: (Rate, Vec<kernel::ProgStat>),
    crr: (Rate, Vec<kernel::ProgStat>),
    /// Bits per second, seconds of traffic, and the programs' counters over the transfer.
    bulk: (f64, f64, Vec<kernel::ProgStat>),
}

fn delta(before: &[kernel::ProgStat], after: &[kernel::ProgStat]) -> Vec<kernel::ProgStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name);
            kernel::ProgStat {
                name: a.name.clone(),
                runs: a.runs.saturating_sub(b.map_or(0, |b| b.runs)),
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            }
        })
        .collect()
}

fn map_type(t: u64) -> &'static str {
    match t {
        1 => "hash",
        2 => "array",
        6 => "percpu array",
        9 => "lru hash",
        11 => "lpm trie",
        27 => "ring buffer",
        _ => "other",
    }
}
