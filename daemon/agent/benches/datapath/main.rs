//! Datapath benchmark (`make bench-datapath`, as root; method and results in docs/benchmarks.md,
//! section "Datapath").
//!
//! A lab node with two pods, client and server, on the same node: their traffic crosses both
//! host veths, so both hooks of both interfaces run the programs. Six configurations, run
//! interleaved (a b c d e f a b c d e f ...) for several rounds:
//!
//! - (a) no programs attached (the lab alone);
//! - (b) flowgate enforcing 10 policies;
//! - (c) flowgate enforcing 10,000 policies over a 50,000-pod cluster (generated in memory; the two
//!   lab pods are part of it and the only local ones);
//! - (d) an iptables FORWARD chain of 10,000 rules in the node namespace, no eBPF;
//! - (e) an nftables set of 10,000 elements looked up by one rule, no eBPF;
//! - (f) an empty program on flowgate's two hooks: the floor under any TC datapath on this
//!   kernel.
//!
//! In each: iperf3 TCP throughput, 1-byte TCP request/response over one connection, and new TCP
//! connections per second (connect, 1-byte request/response, close), client and server pinned to
//! one and the same CPU. The table gives medians over the rounds and ratios of the medians. Then
//! the ratio targets are measured precisely (`alternate.rs`): (c) against (a), (e) and (b),
//! alternated every second on one live node so that drift cancels, each estimate with an
//! interval, and (f) against (a) the same way. The targets are judged on those; the rounds'
//! ratios are printed beside them (and judged only where no alternation runs, `--ab-blocks 0`).
//! Then, on configuration (c): compile time, one policy change and one pod relabel applied to the
//! live maps, memory (RSS, map entries), the programs' own run time in traffic
//! (`kernel.bpf_stats_enabled`) and per path (`BPF_PROG_TEST_RUN`), to show where the time goes.
//!
//! Nothing here is hard-coded: every figure printed is measured in this run.

mod after_rounds;
mod alternate;
mod cluster;
mod empty;
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
    /// Configurations to run, in round order (letters a to f).
    #[arg(long, default_value = "abcdef")]
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
    /// Blocks of each alternation (four segments each; 0 skips them, and the ratio targets are
    /// then judged on the rounds). Each block gives one ratio; the estimate is their median.
    #[arg(long, default_value_t = 16)]
    ab_blocks: usize,
    /// Seconds of each segment of the alternation.
    #[arg(long, default_value_t = 1.0)]
    ab_secs: f64,
    /// Seconds of each iperf3 segment of the alternation (one more second is run and omitted).
    #[arg(long, default_value_t = 1)]
    ab_iperf_secs: u32,
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
        'f' => "empty program on both hooks (TCX)",
        _ => "?",
    }
}

/// What is in force in the node namespace.
enum Setup {
    None,
    Node(Box<Node>),
    Netfilter,
    Empty(empty::EmptyPrograms),
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
        if !('a'..='f').contains(&c) {
            bail!("--configs takes letters a to f, got {c:?}");
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
    if bench.alternates('a') {
        out.push_str(&bench.alternate()?);
    }
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
            'f' => {
                let ifindexes: Vec<u32> = self.locals().iter().map(|l| l.ifindex).collect();
                let programs = empty::attach(self.lab.node_netns(), &ifindexes)?;
                self.costs
                    .entry(config)
                    .or_default()
                    .setup
                    .push(started.elapsed());
                Setup::Empty(programs)
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
            // Closing the link descriptors detaches the program.
            Setup::Empty(programs) => {
                drop(programs);
                Ok(())
            }
        }
    }

    /// One attempt of the flow no policy allows: client -> server:`DENIED_PORT`.
    fn denied_flow(&self) -> flowgate::lab::Observed {
        self.lab.probe(
            &ProbeEnd::parse(CLIENT),
            IpAddr::V4(SERVER_IP),
            Protocol::Tcp,
            Some(DENIED_PORT),
            Duration::from_millis(500),
        )
    }

    /// The flow the configurations all deny (none allows): dropped under b to e, reached under a
    /// and f (which judges nothing).
    fn enforcement_check(&mut self, config: char) -> Result<()> {
        let seen = self.denied_flow();
        let expected = if config == 'a' || config == 'f' {
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
            ('f', 'a'),
            ('c', 'f'),
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
                let each: Vec<String> = self
                    .samples
                    .paired_ratios('c', 'a', metric)
                    .into_iter()
                    .map(fmt_ratio)
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<17} c/a per round, median {}: {}",
                    metric.short(),
                    fmt_ratio(self.samples.paired_ratio('c', 'a', metric)),
                    each.join(" ")
                );
            }
        }

        let _ = writeln!(
            out,
            "\ntargets{}:",
            if self.alternates('a') {
                " (the ratio targets are judged on the alternations below)"
            } else {
                " (on the ratios of medians above)"
            }
        );
        let mut targets = Vec::new();
        let mut check = |ok: bool, what: String| {
            let _ = writeln!(out, "  [{}] {what}", if ok { " ok " } else { "MISS" });
            targets.push((ok, what));
        };
        for metric in Metric::ALL {
            let m = |c| self.samples.median(c, metric);
            for base in ['a', 'e', 'b'] {
                let Some(target) = metric.target_vs(base) else {
                    continue;
                };
                if !has('c') || !has(base) || self.alternates(base) {
                    continue;
                }
                let r = ratio(m('c'), m(base));
                let (ok, judged) = target.judge(r, None);
                check(
                    ok,
                    format!(
                        "{}: (c)/({base}) = {} ({judged})",
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
}
