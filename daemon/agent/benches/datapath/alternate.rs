//! (c) against (a), and (f) against (a), alternated every `--ab-secs` on one live node: the
//! precise estimates of (c)/(a) and (f)/(a) for request/response and new connections.
//!
//! The rounds run each configuration for a few seconds, 10 to 15 s apart, and this VM drifts by
//! several percent over such spans (the per-round c/a ratios of one run range over 4 %). Here
//! the (c) node stays loaded and its two programs are attached and detached on both pods'
//! interfaces between short segments, in blocks of four (A C C A, then C A A C, so a linear
//! drift cancels within each block). With the programs detached, the node is (a): nothing runs
//! on the hooks, and the maps only sit in memory. Each block gives one ratio, the sum of its C
//! segments over the sum of its A segments; the estimate is the median over the blocks. The
//! same is then done with (f)'s empty program, the floor under any TC datapath, and with (e)'s
//! nftables set standing in for the detached programs: (c) against (e) directly.
//!
//! The node's own links are detached first (`BPF_LINK_DETACH`), and the same programs are then
//! attached by fresh TCX links made here (`BPF_LINK_CREATE`, as `empty.rs` does); closing them
//! detaches them. Before measuring, a probe checks that each switch works both ways.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::*;
use crate::empty::{self, bpf, bpf_call};

const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_DETACH: libc::c_long = 34;
const BPF_LINK_TYPE_TCX: u32 = 11;
/// `struct bpf_prog_info`: `name[16]` at byte 64.
const PROG_INFO_NAME: usize = 64;

/// Programs on the pods' interfaces, attached or not at the bench's will.
struct Switch {
    netns: PathBuf,
    programs: Vec<OwnedFd>,
    /// (index into `programs`, ifindex, TCX attach type) for each hook.
    hooks: Vec<(usize, u32, u32)>,
    links: Vec<OwnedFd>,
    /// (node namespace, set elements): configuration (e) is loaded whenever the programs are
    /// detached, and removed before they are attached.
    instead: Option<(String, usize)>,
    nft_loaded: bool,
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

impl Switch {
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
        Ok(Self {
            netns: netns.to_path_buf(),
            programs,
            hooks,
            links: Vec::new(),
            instead: None,
            nft_loaded: false,
        })
    }

    /// The empty program of configuration (f) on both hooks of `ifindexes`, detached.
    fn empty(netns: &Path, ifindexes: &[u32]) -> Result<Self> {
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
            netns: netns.to_path_buf(),
            programs: vec![empty::load()?],
            hooks,
            links: Vec::new(),
            instead: None,
            nft_loaded: false,
        })
    }

    fn set(&mut self, attached: bool) -> Result<()> {
        if !attached {
            // Closing a TCX link detaches its program.
            self.links.clear();
            if let Some((netns, elements)) = &self.instead
                && !self.nft_loaded
            {
                netfilter::load_nft(netns, *elements)?;
                self.nft_loaded = true;
            }
            return Ok(());
        }
        self.unload_nft()?;
        if !self.links.is_empty() {
            return Ok(());
        }
        let (programs, hooks) = (&self.programs, &self.hooks);
        self.links = traffic::in_netns(&self.netns, || {
            hooks
                .iter()
                .map(|&(program, ifindex, attach_type)| {
                    empty::link(&programs[program], ifindex, attach_type)
                })
                .collect()
        })?;
        Ok(())
    }

    /// Detached, and nothing in its place.
    fn release(&mut self) -> Result<()> {
        self.links.clear();
        self.unload_nft()
    }

    /// Removes configuration (e) if it stands in for the programs.
    fn unload_nft(&mut self) -> Result<()> {
        if self.nft_loaded
            && let Some((netns, _)) = &self.instead
        {
            netfilter::flush(netns)?;
            self.nft_loaded = false;
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

/// One metric's alternated segments: each block's ratio, and the per-segment rates without
/// (A) and with (C) the programs.
#[derive(Default)]
struct Alternation {
    blocks: Vec<f64>,
    a: Vec<f64>,
    c: Vec<f64>,
}

const ALTERNATED: [Metric; 2] = [Metric::RequestResponse, Metric::NewConnections];

impl Bench {
    /// The alternated measurements: (c) against (a) on a fresh (c) node, and, when (f) is among
    /// the configurations, (f) against (a). The report section, and target checks for (c).
    pub(super) fn alternate(&mut self) -> Result<String> {
        let ifindexes: Vec<u32> = self.locals().iter().map(|l| l.ifindex).collect();
        let netns = self.lab.node_netns().to_path_buf();
        let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        node.apply(&self.large)?;
        let mut switch = Switch::take(&netns, &ifindexes)?;
        self.check_switch(&mut switch, Outcome::TimedOut, Outcome::Reached)?;
        let flowgate = self.alternation(&mut switch, &mut || {
            node.drain();
        })?;
        drop(switch);
        drop(node);
        let empty = if self.args.configs.contains('f') {
            let mut switch = Switch::empty(&netns, &ifindexes)?;
            self.check_switch(&mut switch, Outcome::Reached, Outcome::Reached)?;
            Some(self.alternation(&mut switch, &mut || {})?)
        } else {
            None
        };
        let nftables = if self.args.configs.contains('e') {
            let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
            node.apply(&self.large)?;
            let mut switch = Switch::take(&netns, &ifindexes)?;
            switch.instead = Some((self.node_netns.clone(), self.args.rules));
            // Both sides enforce: flowgate attached, or the nftables set in its place.
            let measured = self
                .check_switch(&mut switch, Outcome::TimedOut, Outcome::TimedOut)
                .and_then(|()| {
                    self.alternation(&mut switch, &mut || {
                        node.drain();
                    })
                });
            switch.release()?;
            Some(measured?)
        } else {
            None
        };

        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nalternated on one live node: {} blocks of 4 segments of {:.1} s (A C C A, C A A C, ...); \
             A = no programs (for \"(c) vs (e)\": the nftables set instead), C = the programs attached; \
             each block's ratio is its C total over its A total",
            self.args.ab_blocks, self.args.ab_secs
        );
        let mut targets = Vec::new();
        for (i, metric) in ALTERNATED.iter().enumerate() {
            let c = &flowgate[i];
            let estimate = median(&c.blocks);
            let _ = writeln!(
                out,
                "  {:<17} (c) vs (a): {}",
                metric.short(),
                versus(*metric, 'a', 'c', c)
            );
            if let Some(empty) = &empty {
                let f = &empty[i];
                let _ = writeln!(
                    out,
                    "  {:<17} (f) vs (a): {}; c/f {}",
                    "",
                    versus(*metric, 'a', 'f', f),
                    fmt_ratio(ratio(estimate, median(&f.blocks)))
                );
            }
            if let Some(nftables) = &nftables {
                let e = &nftables[i];
                let versus_e = median(&e.blocks);
                let _ = writeln!(
                    out,
                    "  {:<17} (c) vs (e): {}",
                    "",
                    versus(*metric, 'e', 'c', e)
                );
                targets.push((
                    versus_e >= 1.0,
                    format!(
                        "{}: (c)/(e) alternated = {}{} (target: no worse than nftables, >= 1.00)",
                        metric.short(),
                        fmt_ratio(versus_e),
                        report::fmt_interval(&e.blocks)
                    ),
                ));
            }
            let t = metric.target_vs_none();
            targets.push((
                estimate >= t,
                format!(
                    "{}: (c)/(a) alternated = {}{} (target >= {t:.2})",
                    metric.short(),
                    fmt_ratio(estimate),
                    report::fmt_interval(&c.blocks)
                ),
            ));
        }
        let _ = writeln!(out, "targets (alternated):");
        for (ok, what) in &targets {
            let _ = writeln!(out, "  [{}] {what}", if *ok { " ok " } else { "MISS" });
        }
        self.targets.extend(targets);
        Ok(out)
    }

    /// The switch works both ways: the flow no policy allows gives `attached` with the
    /// programs attached and `detached` without them.
    fn check_switch(
        &self,
        switch: &mut Switch,
        attached: Outcome,
        detached: Outcome,
    ) -> Result<()> {
        for (on, expected) in [(true, attached), (false, detached)] {
            switch.set(on)?;
            let seen = self.denied_flow();
            if seen.outcome != expected {
                bail!(
                    "alternation: with the programs {}, client -> server:{DENIED_PORT} gave {:?}, expected {expected:?}",
                    if on { "attached" } else { "detached" },
                    seen.outcome
                );
            }
        }
        Ok(())
    }

    /// Request/response, then new connections, in `--ab-blocks` blocks of four segments.
    fn alternation(
        &self,
        switch: &mut Switch,
        drain: &mut dyn FnMut(),
    ) -> Result<Vec<Alternation>> {
        let segment = Duration::from_secs_f64(self.args.ab_secs);
        let mut results = Vec::new();
        for metric in ALTERNATED {
            let mut alt = Alternation::default();
            for block in 0..self.args.ab_blocks {
                let order = if block % 2 == 0 {
                    [false, true, true, false]
                } else {
                    [true, false, false, true]
                };
                let (mut a, mut c) = (0.0, 0.0);
                for attached in order {
                    switch.set(attached)?;
                    let rate = match metric {
                        Metric::RequestResponse => {
                            traffic::request_response(&self.pair, RR_PORT, segment, drain)?
                        }
                        _ => traffic::connect_rate(&self.pair, CRR_PORT, segment, drain)?,
                    };
                    if attached {
                        c += rate.per_sec;
                        alt.c.push(rate.per_sec);
                    } else {
                        a += rate.per_sec;
                        alt.a.push(rate.per_sec);
                    }
                }
                alt.blocks.push(ratio(c, a));
            }
            results.push(alt);
        }
        switch.set(false)?;
        Ok(results)
    }
}

/// One alternation of `measured` against `base`: "(base) median A, (measured) median C;
/// measured/base median over blocks R (blocks: ...)".
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
