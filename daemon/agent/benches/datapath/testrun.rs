//! The programs' cost per path, measured with `BPF_PROG_TEST_RUN` on the real programs: loaded
//! (not attached) with their own maps, filled by `compile` + `diff` for a cluster whose client
//! pod is mapped to ifindex 1 (test runs give the skb the loopback device), then run in a
//! kernel loop on crafted frames. Caches are warm and there is no network stack around the
//! program, so these are the floor of what a packet pays; the in-traffic figures (bpf_stats)
//! show what it pays among everything else.

use std::net::Ipv4Addr;

use anyhow::{Context, Result, bail};
use aya::{TestRun as _, TestRunOptions};
use flowgate::datapath::{Datapath, LoadOptions, skb_context};
use flowgate_abi::{programs, trust};
use flowgate_policy::Cluster;
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::{Mode, diff};

use crate::cluster::{CLIENT, CLIENT_IP, RR_PORT, SERVER_IP};
use crate::report::median;

const TC_ACT_OK: u32 = 0;
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SAMPLES: usize = 5;

/// Nanoseconds per run of each path.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paths {
    /// An ARP frame: one load, not IP, pass.
    pub not_ip: f64,
    /// A TCP segment before any snapshot: the whole parse, then `FG_ACTIVE` says generation 0.
    pub parse_only: f64,
    /// An established segment in the direction that opened it, repeated: parse, `FG_ACTIVE`,
    /// a hit in this CPU's flow cache (one in `FLOW_CACHE_REFRESH` is a conntrack lookup), the
    /// mark for the receiver.
    pub established: f64,
    /// A reply segment, at the other hook: the same connection (one key for both ends and
    /// directions), likewise from the flow cache.
    pub reply: f64,
    /// `fg_to_pod` on a segment the sender marked as judged by both ends: the mark, a counter.
    pub trusted: f64,
    /// A SYN: parse, `FG_ACTIVE`, `FG_ENDPOINTS`, the two LPM lookups (IP cache, policy), a
    /// conntrack update and a ring-buffer event.
    pub new_flow: f64,
}

fn tcp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
    // IPv4: version/IHL, TOS, total length 40, id, DF, TTL 64, TCP, checksum (unchecked).
    f.extend_from_slice(&[0x45, 0, 0, 40, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f
}

fn arp_frame() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&CLIENT_IP.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&SERVER_IP.octets());
    f
}

/// Median over `SAMPLES` test runs of `repeat` iterations, in ns per iteration.
fn time(dp: &mut Datapath, program: &'static str, frame: &[u8], repeat: u32) -> Result<f64> {
    time_in(dp, program, frame, &skb_context(0, 0), repeat)
}

/// `time` with a context (`skb_context`): the skb's mark and ingress interface.
fn time_in(
    dp: &mut Datapath,
    program: &'static str,
    frame: &[u8],
    ctx: &[u8],
    repeat: u32,
) -> Result<f64> {
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let result = dp
            .program(program)?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(ctx),
                repeat,
                ..TestRunOptions::default()
            })
            .with_context(|| format!("BPF_PROG_TEST_RUN of {program}"))?;
        if result.return_value != TC_ACT_OK {
            bail!(
                "{program} returned {} on a frame it must pass",
                result.return_value
            );
        }
        samples.push(result.duration.as_nanos() as f64);
    }
    Ok(median(&samples))
}

/// Every path with the maps of `cluster` (the client pod local, on ifindex 1).
pub fn paths(cluster: &Cluster, repeat: u32) -> Result<Paths> {
    let locals = [LocalEndpoint {
        pod: CLIENT.to_owned(),
        ifindex: 1,
    }];
    let request = tcp_frame(CLIENT_IP, SERVER_IP, 40_000, RR_PORT, ACK);
    let syn = tcp_frame(CLIENT_IP, SERVER_IP, 40_000, RR_PORT, SYN);
    let response = tcp_frame(SERVER_IP, CLIENT_IP, RR_PORT, 40_000, ACK);

    let mut empty = Datapath::load(&LoadOptions::default())?;
    let not_ip = time(&mut empty, programs::FROM_POD, &arp_frame(), repeat)?;
    let parse_only = time(&mut empty, programs::FROM_POD, &request, repeat)?;
    drop(empty);

    let mut dp = Datapath::load(&LoadOptions::default())?;
    let mut ring = dp.take_events()?;
    let snapshot = compile(cluster, &locals, None);
    dp.apply(&diff(&Snapshot::default(), &snapshot, Mode::Enforce))?;
    // SYNs: each one is decided afresh, tracked and reported; 5 x 4,000 of them fit the ring
    // buffer (a full ring would skip the event and look cheaper; checked below).
    let new_flow = time(&mut dp, programs::FROM_POD, &syn, 4_000)?;
    while ring.next().is_some() {}
    // The last SYN left the connection tracked: the rest is established traffic.
    let established = time(&mut dp, programs::FROM_POD, &request, repeat)?;
    let reply = time(&mut dp, programs::TO_POD, &response, repeat)?;
    // A segment from another local pod (ingress interface 2) that both ends had passed. The
    // program clears the mark it trusts, and a repeated test run reuses the skb: so one run per
    // call, the median of many (the kernel times the run alone, not the syscall).
    let mut single = Vec::new();
    for _ in 0..501 {
        single.push(time_in(
            &mut dp,
            programs::TO_POD,
            &response,
            &skb_context(trust::MASK, 2),
            1,
        )?);
    }
    let trusted = median(&single);
    let lost: u64 = dp.lost_events()?.iter().sum();
    if lost > 0 {
        bail!("{lost} events were lost during the SYN runs: the new-flow figure is too low");
    }
    Ok(Paths {
        not_ip,
        parse_only,
        established,
        reply,
        trusted,
        new_flow,
    })
}
