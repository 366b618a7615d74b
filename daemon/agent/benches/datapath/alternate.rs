//! Each ratio target, judged on one live node where two configurations are alternated every
//! `--ab-secs`: (c) against (a), (e) and (b) for throughput, request/response and new
//! connections, and (f) against (a) for the last two.
//!
//! The rounds run each configuration for a few seconds, 10 to 60 s apart, and this VM drifts by
//! several percent over such spans: the per-round c/a ratios of one run have spread from 0.934
//! to 1.011, and a ratio of the rounds' medians has landed 1.5 % below the interval of its own
//! alternation. That cannot decide a target a percent or two away, so the targets are judged
//! here. Two sides stand on the node, only one of them in force at a time, and they take turns
//! between short segments, in blocks of four (A C C A, then C A A C, so a linear drift cancels
//! within each block). Each block gives one ratio, the sum of its C segments over the sum of
//! its A segments; the estimate is the median over the blocks, printed with a confidence
//! interval that assumes nothing about the distribution of the blocks.
//!
//! The sides: (c)'s loaded datapath, against nothing (a), against (e)'s nftables set, and
//! against (b)'s own loaded datapath (two datapaths with their own maps, one on the hooks at a
//! time); and (f)'s empty program against nothing, the floor under any TC datapath. A loaded
//! node's own links are detached first (`BPF_LINK_DETACH`), and the same programs are then
//! attached by fresh TCX links made here (`BPF_LINK_CREATE`, as `empty.rs` does); closing them
//! detaches them. Before measuring, a probe checks that each switch works both ways (for (c)
//! against (b), which both drop the probe, by which datapath reports the drop).

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::*;
use crate::empty::{self, bpf, bpf_call};
use crate::report::Target;

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_TCX: u32 = 11;
/// `struct bpf_prog_info`: `name[16]` at byte 64.
const PROG_INFO_NAME: usize = 64;

/// Programs and the hooks they go on.
struct Hooks {
    programs: Vec<OwnedFd>,
    /// (index into `programs`, ifindex, TCX attach type) for each hook.
    hooks: Vec<(usize, u32, u32)>,
}

fn u32_at(buf: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
}

/// `BPF_OBJ_GET_INFO_BY_FD` into a zeroed buffer of `N` bytes.
fn info<const N: usize>(fd: &OwnedFd) -> Result<[u8; N]> {
    let mut buf = [0u8; N];
    let mut attr = Vec::with_capacity(16);
    attr.extend_from_slice(&u32::try_from(fd.as_raw_fd())?.to_ne_bytes());
    attr.extend_from_slice(&u32::try_from(N)?.to_ne_bytes());
    attr.extend_from_slice(&(buf.as_mut_ptr() as u64).to_ne_bytes());
    bpf_call(BPF_OBJ_GET_INFO_BY_FD, &attr).context("BPF_OBJ_GET_INFO_BY_FD")?;
    Ok(buf)
}

impl Hooks {
    /// Detaches flowgate's TCX links from the interfaces `ifindexes` of the namespace at `netns`
    /// and keeps their programs. Fails unless it finds both programs on every interface.
    fn take(netns: &Path, ifindexes: &[u32]) -> Result<Self> {
        let hooks = traffic::in_netns(netns, || {
            let mut hooks = Vec::new();
            let mut id = 0u32;
            while let Some(next) = next_link_id(id)? {
                id = next;
                let Ok(link) = bpf(BPF_LINK_GET_FD_BY_ID, &id.to_ne_bytes()) else {
                    continue; // gone meanwhile
                };
                let link_info = info::<64>(&link)?;
                let (kind, prog_id) = (u32_at(&link_info, 0), u32_at(&link_info, 8));
                let (ifindex, attach_type) = (u32_at(&link_info, 16), u32_at(&link_info, 20));
                if kind != BPF_LINK_TYPE_TCX || !ifindexes.contains(&ifindex) {
                    continue;
                }
                let program = bpf(BPF_PROG_GET_FD_BY_ID, &prog_id.to_ne_bytes())
                    .context("BPF_PROG_GET_FD_BY_ID")?;
                let prog_info = info::<128>(&program)?;
                let name = &prog_info[PROG_INFO_NAME..PROG_INFO_NAME + 16];
                let name = String::from_utf8_lossy(name.split(|b| *b == 0).next().unwrap_or(&[]))
                    .into_owned();
                if name != "fg_from_pod" && name != "fg_to_pod" {
                    continue;
                }
                let fd = u32::try_from(link.as_raw_fd())?;
                bpf_call(BPF_LINK_DETACH, &fd.to_ne_bytes()).context("BPF_LINK_DETACH")?;
                hooks.push((program, ifindex, attach_type));
            }
            Ok(hooks)
        })?;
        let (programs, hooks): (Vec<OwnedFd>, Vec<(usize, u32, u32)>) = hooks
            .into_iter()
            .enumerate()
            .map(|(i, (program, ifindex, attach_type))| (program, (i, ifindex, attach_type)))
            .unzip();
        if hooks.len() != 2 * ifindexes.len() {
            bail!(
                "found {} of flowgate's TCX links on {} interfaces, expected two each",
                hooks.len(),
                ifindexes.len()
            );
        }
        Ok(Self { programs, hooks })
    }

    /// The empty program of configuration (f) for both hooks of `ifindexes`.
    fn empty(ifindexes: &[u32]) -> Result<Self> {
        let hooks = ifindexes
            .iter()
            .flat_map(|&i| {
                [
                    (0, i, empty::BPF_TCX_INGRESS),
                    (0, i, empty::BPF_TCX_EGRESS),
                ]
            })
            .collect();
        Ok(Self {
            programs: vec![empty::load()?],
            hooks,
        })
    }

    /// Fresh TCX links of the programs (in the namespace at `netns`); closing them detaches.
    fn link(&self, netns: &Path) -> Result<Vec<OwnedFd>> {
        traffic::in_netns(netns, || {
            self.hooks
                .iter()
                .map(|&(program, ifindex, attach_type)| {
                    empty::link(&self.programs[program], ifindex, attach_type)
                })
                .collect()
        })
    }
}

/// What one side of an alternation puts in force in the node namespace.
enum Side {
    /// Nothing: configuration (a).
    Nothing,
    /// Configuration (e): the nftables set of `elements`, in the named node namespace.
    Nftables { netns: String, elements: usize },
    /// Programs on the pods' interfaces: (b), (c) or (f).
    Programs(Hooks),
}

/// Two sides on the node, one at a time: `base` in the A segments, `measured` in the C ones.
struct Switch {
    netns: PathBuf,
    base: Side,
    measured: Side,
    links: Vec<OwnedFd>,
    /// The namespace whose nftables ruleset is loaded, to flush.
    nft_loaded: Option<String>,
    current: Option<bool>,
}

impl Switch {
    fn new(netns: &Path, base: Side, measured: Side) -> Self {
        Self {
            netns: netns.to_path_buf(),
            base,
            measured,
            links: Vec::new(),
            nft_loaded: None,
            current: None,
        }
    }

    /// Puts the measured side (`true`) or the base side in force, and only it.
    fn set(&mut self, measured: bool) -> Result<()> {
        if self.current == Some(measured) {
            return Ok(());
        }
        self.release()?;
        match if measured { &self.measured } else { &self.base } {
            Side::Nothing => {}
            Side::Nftables { netns, elements } => {
                netfilter::load_nft(netns, *elements)?;
                self.nft_loaded = Some(netns.clone());
            }
            Side::Programs(hooks) => self.links = hooks.link(&self.netns)?,
        }
        self.current = Some(measured);
        Ok(())
    }

    /// Neither side in force.
    fn release(&mut self) -> Result<()> {
        self.current = None;
        // Closing a TCX link detaches its program.
        self.links.clear();
        if let Some(netns) = self.nft_loaded.take() {
            netfilter::flush(&netns)?;
        }
        Ok(())
    }
}

/// `BPF_LINK_GET_NEXT_ID`: the id of the first link after `start`; `None` after the last.
fn next_link_id(start: u32) -> Result<Option<u32>> {
    match empty::bpf_block(BPF_LINK_GET_NEXT_ID, &start.to_ne_bytes()) {
        Ok((_, block)) => Ok(Some(u32_at(&block, 4))),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).context("BPF_LINK_GET_NEXT_ID"),
    }
}

/// One metric's alternated segments: each block's ratio, and the per-segment rates of the base
/// (A) and measured (C) sides.
#[derive(Default)]
struct Alternation {
    blocks: Vec<f64>,
    a: Vec<f64>,
    c: Vec<f64>,
}

/// One alternation: `measured` against `base` (configuration letters), per metric.
struct Pairing {
    measured: char,
    base: char,
    results: Vec<(Metric, Alternation)>,
}

impl Pairing {
    /// The ratio this pairing's target is judged on, with the target: (c) against (a), (b)
    /// and (e).
    fn target(&self, metric: Metric) -> Option<Target> {
        (self.measured == 'c')
            .then(|| metric.target_vs(self.base))
            .flatten()
    }

    fn get(&self, metric: Metric) -> Option<&Alternation> {
        self.results
            .iter()
            .find(|(m, _)| *m == metric)
            .map(|(_, alt)| alt)
    }
}

/// Request/response and new connections: the metrics the empty program (f) is alternated on.
const SHORT_RUNS: [Metric; 2] = [Metric::RequestResponse, Metric::NewConnections];

impl Bench {
    /// Whether `alternate` will judge the ratio (c)/(`base`).
    pub(super) fn alternates(&self, base: char) -> bool {
        let has = |c| self.args.configs.contains(c);
        self.args.ab_blocks > 0 && has('a') && has('c') && has(base)
    }

    /// The alternated measurements: (c) against (a), (e) and (b), and (f) against (a), those
    /// whose configurations run. The report section, and the checks of the ratio targets.
    pub(super) fn alternate(&mut self) -> Result<String> {
        let (netns, ifindexes) = self.pod_hooks();
        let mut pairings = Vec::new();

        let results = self.against_large(Side::Nothing, [Outcome::TimedOut, Outcome::Reached])?;
        pairings.push(Pairing {
            measured: 'c',
            base: 'a',
            results,
        });

        if self.args.configs.contains('f') {
            let mut switch = Switch::new(
                &netns,
                Side::Nothing,
                Side::Programs(Hooks::empty(&ifindexes)?),
            );
            let results = self.measure_pair(
                &mut switch,
                [Outcome::Reached, Outcome::Reached],
                &SHORT_RUNS,
                &mut || {},
            )?;
            pairings.push(Pairing {
                measured: 'f',
                base: 'a',
                results,
            });
        }

        if self.alternates('e') {
            let nftables = Side::Nftables {
                netns: self.node_netns.clone(),
                elements: self.args.rules,
            };
            // Both sides enforce: flowgate, or the nftables set in its place.
            let results = self.against_large(nftables, [Outcome::TimedOut, Outcome::TimedOut])?;
            pairings.push(Pairing {
                measured: 'c',
                base: 'e',
                results,
            });
        }

        if self.alternates('b') {
            // Two loaded datapaths, each with its own maps: (b)'s programs or (c)'s on the hooks.
            let mut small = self.loaded(&self.small)?;
            let small_hooks = Hooks::take(&netns, &ifindexes)?;
            let mut large = self.loaded(&self.large)?;
            let large_hooks = Hooks::take(&netns, &ifindexes)?;
            let mut switch = Switch::new(
                &netns,
                Side::Programs(small_hooks),
                Side::Programs(large_hooks),
            );
            let results = self
                .check_reporting(&mut switch, &mut small, &mut large)
                .and_then(|()| {
                    self.measure_pair(
                        &mut switch,
                        [Outcome::TimedOut, Outcome::TimedOut],
                        &Metric::ALL,
                        &mut || {
                            small.drain();
                            large.drain();
                        },
                    )
                });
            switch.release()?;
            pairings.push(Pairing {
                measured: 'c',
                base: 'b',
                results: results?,
            });
        }
        Ok(self.report_alternations(&pairings))
    }

    /// (c)'s datapath, on a fresh node, alternated with `base` on every metric; `outcomes` as
    /// for `measure_pair`.
    fn against_large(
        &self,
        base: Side,
        outcomes: [Outcome; 2],
    ) -> Result<Vec<(Metric, Alternation)>> {
        let (netns, ifindexes) = self.pod_hooks();
        let mut node = self.loaded(&self.large)?;
        let flowgate = Side::Programs(Hooks::take(&netns, &ifindexes)?);
        let mut switch = Switch::new(&netns, base, flowgate);
        self.measure_pair(&mut switch, outcomes, &Metric::ALL, &mut || {
            node.drain();
        })
    }

    /// The node namespace, and the pods' host interfaces in it.
    fn pod_hooks(&self) -> (PathBuf, Vec<u32>) {
        let ifindexes = self.locals().iter().map(|l| l.ifindex).collect();
        (self.lab.node_netns().to_path_buf(), ifindexes)
    }

    /// A lab node with the datapath loaded and attached, and `cluster` applied.
    fn loaded(&self, cluster: &Cluster) -> Result<Node> {
        let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        node.apply(cluster)?;
        Ok(node)
    }

    /// Checks that the switch works both ways, then alternates; neither side is left in force.
    fn measure_pair(
        &self,
        switch: &mut Switch,
        outcomes: [Outcome; 2],
        metrics: &[Metric],
        drain: &mut dyn FnMut(),
    ) -> Result<Vec<(Metric, Alternation)>> {
        let measured = self
            .check_switch(switch, outcomes)
            .and_then(|()| self.alternation(switch, metrics, drain));
        switch.release()?;
        measured
    }

    /// The switch works both ways: the flow no policy allows gives `outcomes[0]` with the
    /// measured side in force and `outcomes[1]` with the base side.
    fn check_switch(&self, switch: &mut Switch, outcomes: [Outcome; 2]) -> Result<()> {
        for (measured, expected) in [true, false].into_iter().zip(outcomes) {
            switch.set(measured)?;
            let seen = self.denied_flow();
            if seen.outcome != expected {
                bail!(
                    "alternation: with the {} side in force, client -> server:{DENIED_PORT} gave {:?}, expected {expected:?}",
                    if measured { "measured" } else { "base" },
                    seen.outcome
                );
            }
        }
        Ok(())
    }

    /// For two flowgate sides, which deny the same flow: only the datapath in force reports the
    /// denial, so the switch really exchanges them.
    fn check_reporting(
        &self,
        switch: &mut Switch,
        base: &mut Node,
        measured: &mut Node,
    ) -> Result<()> {
        for on in [true, false] {
            switch.set(on)?;
            base.drain();
            measured.drain();
            self.denied_flow();
            let (in_force, idle) = if on {
                (measured.drain().len(), base.drain().len())
            } else {
                (base.drain().len(), measured.drain().len())
            };
            if in_force == 0 || idle != 0 {
                bail!(
                    "alternation: with the {} datapath in force, it reported {in_force} events and the other {idle}; expected some and none",
                    if on { "measured" } else { "base" }
                );
            }
        }
        Ok(())
    }

    /// `metrics` in turn, each in `--ab-blocks` blocks of four segments.
    fn alternation(
        &self,
        switch: &mut Switch,
        metrics: &[Metric],
        drain: &mut dyn FnMut(),
    ) -> Result<Vec<(Metric, Alternation)>> {
        let segment = Duration::from_secs_f64(self.args.ab_secs);
        let mut results = Vec::new();
        for &metric in metrics {
            let mut alt = Alternation::default();
            for block in 0..self.args.ab_blocks {
                let order = if block % 2 == 0 {
                    [false, true, true, false]
                } else {
                    [true, false, false, true]
                };
                let (mut a, mut c) = (0.0, 0.0);
                for measured in order {
                    switch.set(measured)?;
                    let rate = match metric {
                        Metric::Throughput => {
                            traffic::iperf3(&self.pair, IPERF_PORT, self.args.ab_iperf_secs, drain)?
                        }
                        Metric::RequestResponse => {
                            traffic::request_response(&self.pair, RR_PORT, segment, drain)?.per_sec
                        }
                        Metric::NewConnections => {
                            traffic::connect_rate(&self.pair, CRR_PORT, segment, drain)?.per_sec
                        }
                    };
                    if measured {
                        c += rate;
                        alt.c.push(rate);
                    } else {
                        a += rate;
                        alt.a.push(rate);
                    }
                }
                alt.blocks.push(ratio(c, a));
            }
            results.push((metric, alt));
        }
        Ok(results)
    }

    /// The alternations' lines, and their targets checked (added to `self.targets`).
    fn report_alternations(&mut self, pairings: &[Pairing]) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nalternated on one live node: {} blocks of 4 segments of {} s each (throughput: iperf3 \
             runs of {} s after 1 omitted), in the order A C C A, C A A C, ...; A = the base \
             configuration, C = the measured one; each block's ratio is its C total over its A total, \
             and the estimate is the median over the blocks, with a distribution-free interval",
            self.args.ab_blocks, self.args.ab_secs, self.args.ab_iperf_secs
        );
        for metric in Metric::ALL {
            let mut first = true;
            for p in pairings {
                let Some(alt) = p.get(metric) else { continue };
                let _ = writeln!(
                    out,
                    "  {:<17} ({}) vs ({}): {}",
                    if first { metric.short() } else { "" },
                    p.measured,
                    p.base,
                    versus(metric, p.base, p.measured, alt)
                );
                first = false;
            }
        }
        let _ = writeln!(out, "targets (on the alternated estimates):");
        for metric in Metric::ALL {
            for p in pairings {
                let (Some(alt), Some(target)) = (p.get(metric), p.target(metric)) else {
                    continue;
                };
                let estimate = median(&alt.blocks);
                let rounds = ratio(
                    self.samples.median(p.measured, metric),
                    self.samples.median(p.base, metric),
                );
                let (ok, judged) = target.judge(estimate, report::median_interval(&alt.blocks));
                let what = format!(
                    "{}: ({})/({}) alternated = {}{} ({judged}); on the rounds' medians {}",
                    metric.short(),
                    p.measured,
                    p.base,
                    fmt_ratio(estimate),
                    report::fmt_interval(&alt.blocks),
                    fmt_ratio(rounds)
                );
                let _ = writeln!(out, "  [{}] {what}", if ok { " ok " } else { "MISS" });
                self.targets.push((ok, what));
            }
        }
        if let (Some(c), Some(f)) = (
            pairings.iter().find(|p| (p.measured, p.base) == ('c', 'a')),
            pairings.iter().find(|p| p.measured == 'f'),
        ) {
            for metric in SHORT_RUNS {
                if let (Some(c), Some(f)) = (c.get(metric), f.get(metric)) {
                    let _ = writeln!(
                        out,
                        "  {}: c/f = (c/a) / (f/a) = {} (what flowgate adds over an empty program)",
                        metric.short(),
                        fmt_ratio(ratio(median(&c.blocks), median(&f.blocks)))
                    );
                }
            }
        }
        out
    }
}

/// One alternation of `measured` against `base`: "(base) median A, (measured) median C;
/// measured/base median over blocks R, interval (blocks: ...)".
fn versus(metric: Metric, base: char, measured: char, alt: &Alternation) -> String {
    format!(
        "({base}) median {}, ({measured}) median {}; {measured}/{base} median over blocks {}{} (blocks: {})",
        report::value(metric, median(&alt.a)),
        report::value(metric, median(&alt.c)),
        fmt_ratio(median(&alt.blocks)),
        report::fmt_interval(&alt.blocks),
        blocks(&alt.blocks)
    )
}

fn blocks(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| fmt_ratio(*r))
        .collect::<Vec<_>>()
        .join(" ")
}
