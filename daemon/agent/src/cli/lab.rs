//! `flowgate lab`: a local node built from manifests (a network namespace per pod, routed like a
//! CNI would), the real datapath attached, every probe run as a real connection attempt, and per
//! probe the observed verdict, the expected one (`policy::evaluate`) and the flow events.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use flowgate_flows::FlowRecord;
use flowgate_policy::evaluate::{Flow, Verdict};
use flowgate_policy::maps::Mode;
use flowgate_policy::model::Protocol;
use flowgate_policy::probe::{self, Probe, ProbeResult};
use serde::Serialize;

use super::manifests::{self, ManifestArgs};
use super::{Exit, Output, emit, emit_json};
use crate::lab::{
    Lab, LabProbe, LabSpec, LabWiring, Observed, Outcome, ProbeEnd, install_interrupt_cleanup,
};
use crate::node::Node;

/// Build a local node from manifests, enforce them with the real datapath, run every probe as
/// real traffic, and compare what happened with what the policies say.
///
/// Every Pod with a status.podIP becomes a network namespace wired to a node namespace of its
/// own (never the host's; nothing has a route out, so no probe leaves the lab), routed or
/// bridged as --wiring says, with servers on its containerPorts and on every probed port (TCP,
/// UDP echo, SCTP via raw sockets). Bare IPs in the probes become hosts outside the cluster. Each result carries `observed` (what the traffic
/// did), `expected` (flowgate verdicts' answer) and `events` (the flow records the datapath
/// produced for it). Everything is removed on exit, also on failure or Ctrl-C. Needs root.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Probe file (JSON array, as for `flowgate verdicts`), or `-` for stdin.
    #[arg(long, short = 'p', env = "FLOWGATE_PROBES")]
    pub probes: PathBuf,

    /// Enforce (drop what policy denies) or audit (drop nothing, report audit_deny).
    #[arg(long, value_enum, default_value = "enforce", env = "FLOWGATE_MODE")]
    pub mode: ModeArg,

    /// How the lab node wires its pods, like one of the two families of CNIs: routed
    /// (Calico-style: a host route per pod IP to the pod's veth) or bridged (Flannel-style: the
    /// host veths are ports of the bridge cni0, every pod subnet is routed to it, and pods of
    /// one /24 reach each other at layer 2 through it). The datapath attaches to the host veths
    /// either way.
    #[arg(
        long,
        value_enum,
        default_value = "routed",
        env = "FLOWGATE_LAB_WIRING"
    )]
    pub wiring: WiringArg,

    /// How long a probe waits for an answer before it counts as dropped.
    #[arg(long, default_value = "1000", env = "FLOWGATE_PROBE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub timeout_ms: u64,

    /// Output format.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "table",
        env = "FLOWGATE_OUTPUT"
    )]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ModeArg {
    Enforce,
    Audit,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Audit => Mode::Audit,
        }
    }
}

/// `--wiring` of `flowgate lab` and `flowgate agent --lab`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WiringArg {
    Routed,
    Bridged,
}

impl From<WiringArg> for LabWiring {
    fn from(w: WiringArg) -> Self {
        match w {
            WiringArg::Routed => LabWiring::Routed,
            WiringArg::Bridged => LabWiring::Bridged,
        }
    }
}

/// One probe's lab result: the `verdicts` element plus what the traffic did.
#[derive(Debug, Clone, Serialize)]
pub struct LabResult {
    #[serde(flatten)]
    pub result: ProbeResult,
    /// `policy::evaluate`'s verdict (the same as `verdict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Verdict>,
    /// What the real traffic did: `allow` if it reached the destination's stack, `deny` if it was
    /// dropped (timed out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed: Option<Verdict>,
    /// `reached`, `refused`, `unreachable`, `timed_out` or `failed: ...`.
    pub outcome: String,
    pub elapsed_ms: f64,
    /// Whether observed equals expected (in audit mode: whether the traffic passed).
    pub matches: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The datapath's flow records for this probe (both sides on this node).
    pub events: Vec<FlowRecord>,
}

fn outcome_text(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Reached => "reached".into(),
        Outcome::Refused => "refused".into(),
        Outcome::Unreachable => "unreachable".into(),
        Outcome::TimedOut => "timed_out".into(),
        Outcome::Failed(f) => format!("failed: {f}"),
    }
}

/// The lab for a cluster and the flows to run in it: every pod, a host for each address outside
/// the cluster, and servers on every probed port.
pub fn lab_spec(cluster: &flowgate_policy::Cluster, flows: &[Flow]) -> LabSpec {
    let mut spec = LabSpec::from_cluster(cluster);
    for flow in flows {
        for (ip, pod) in [(flow.src_ip, flow.src_pod), (flow.dst_ip, flow.dst_pod)] {
            if pod.is_none() && !spec.externals.contains(&ip) {
                spec.externals.push(ip);
            }
        }
        if let Some(port) = flow.port
            && !spec.extra_ports.contains(&(flow.protocol, port))
        {
            spec.extra_ports.push((flow.protocol, port));
        }
    }
    spec
}

/// The records that belong to a probe's flow.
pub fn records_for<'a>(
    records: &'a [FlowRecord],
    flow: &Flow,
    observed: &Observed,
) -> Vec<&'a FlowRecord> {
    let transport = match flow.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
        Protocol::Icmp if flow.dst_ip.is_ipv6() => "icmpv6",
        Protocol::Icmp => "icmp",
    };
    let src = observed.src.unwrap_or(flow.src_ip);
    records
        .iter()
        .filter(|r| {
            r.network.transport == transport
                && r.source.ip == src
                && r.destination.ip == flow.dst_ip
                && (flow.port.is_none() || r.destination.port == flow.port)
                && (observed.src_port.is_none()
                    || flow.port.is_none()
                    || r.source.port == observed.src_port)
        })
        .collect()
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    if !super::is_root() {
        eprintln!(
            "error: flowgate lab needs root: it creates network namespaces (CAP_SYS_ADMIN), veths and routes \
             (CAP_NET_ADMIN) and loads eBPF (CAP_BPF); run it with sudo"
        );
        return Ok(Exit::NoPermission);
    }
    let loaded = manifests::load(&args.manifests)?;
    let cluster = &loaded.cluster;
    let text = manifests::read_input(&args.probes)?;
    let probes = probe::parse_probes(&text)
        .with_context(|| format!("{}: not a valid probe file", args.probes.display()))?;
    let mode = Mode::from(args.mode);

    // Resolve first: a probe naming an unknown pod is an error for that probe, not traffic.
    let resolved: Vec<(Probe, ProbeResult, Option<Flow>)> = probes
        .iter()
        .map(|p| {
            (
                p.clone(),
                probe::run(cluster, p),
                probe::resolve(cluster, p).ok(),
            )
        })
        .collect();
    let flows: Vec<Flow> = resolved.iter().filter_map(|(_, _, f)| *f).collect();
    let spec = lab_spec(cluster, &flows);

    install_interrupt_cleanup().context("installing the Ctrl-C cleanup")?;
    let lab = Lab::build_wired(&spec, args.wiring.into()).context("building the lab node")?;
    let mut node = Node::on_lab(&lab, mode, "lab").context("loading and attaching the datapath")?;
    node.apply(cluster)
        .context("applying the policies to the datapath")?;

    let runnable: Vec<(usize, LabProbe)> = resolved
        .iter()
        .enumerate()
        .filter_map(|(i, (_, _, flow))| {
            let flow = flow.as_ref()?;
            Some((
                i,
                LabProbe::new(
                    ProbeEnd::Ip(flow.src_ip),
                    flow.dst_ip,
                    flow.protocol,
                    flow.port,
                ),
            ))
        })
        .collect();
    let lab_probes: Vec<LabProbe> = runnable.iter().map(|(_, p)| p.clone()).collect();
    let observed = lab.probe_all(&lab_probes, Duration::from_millis(args.timeout_ms));
    // Events are drained on a timer in the agent; here, give the ring a moment and read it.
    std::thread::sleep(Duration::from_millis(50));
    let records = node.drain();

    let mut results: Vec<LabResult> = resolved
        .iter()
        .map(|(_, result, _)| LabResult {
            result: result.clone(),
            expected: result.verdict,
            observed: None,
            outcome: "not run".into(),
            elapsed_ms: 0.0,
            matches: false,
            note: result
                .error
                .as_ref()
                .map(|_| "not run: the probe could not be resolved".to_owned()),
            events: Vec::new(),
        })
        .collect();
    for ((index, _), seen) in runnable.iter().zip(&observed) {
        let (_, _, flow) = &resolved[*index];
        let Some(flow) = flow else { continue };
        let r = &mut results[*index];
        r.outcome = outcome_text(&seen.outcome);
        r.elapsed_ms = seen.elapsed.as_secs_f64() * 1000.0;
        r.events = records_for(&records, flow, seen)
            .into_iter()
            .cloned()
            .collect();
        let observed_verdict = match &seen.outcome {
            Outcome::Failed(_) => None,
            o if o.delivered() => Some(Verdict::Allow),
            _ => Some(Verdict::Deny),
        };
        r.observed = observed_verdict;
        let to_itself = flow.src_pod.is_some() && flow.src_pod == flow.dst_pod;
        let wanted = if mode == Mode::Audit || to_itself {
            Some(Verdict::Allow)
        } else {
            r.expected
        };
        r.matches = observed_verdict.is_some() && observed_verdict == wanted;
        if to_itself {
            r.note = Some(
                "a pod's traffic to its own IP stays on its loopback: no CNI enforces it".into(),
            );
        } else if mode == Mode::Audit && r.expected == Some(Verdict::Deny) {
            r.note = Some("audit mode: passed, reported as audit_deny".into());
        }
    }
    drop(node);
    lab.teardown().context("removing the lab")?;

    match args.output {
        Output::Json => emit_json(&results)?,
        Output::Table => emit(&table(&results))?,
    }
    let failed = results.iter().filter(|r| !r.matches).count();
    if failed > 0 {
        eprintln!(
            "{failed} of {} probes did not behave as the policies say (or could not run)",
            results.len()
        );
        return Ok(Exit::Failed.max(if loaded.has_errors() {
            Exit::InvalidManifests
        } else {
            Exit::Ok
        }));
    }
    Ok(if loaded.has_errors() {
        Exit::InvalidManifests
    } else {
        Exit::Ok
    })
}

fn table(results: &[LabResult]) -> String {
    let mut rows = vec![["FROM", "TO", "PORT", "EXPECTED", "OBSERVED", "EVENTS"].map(String::from)];
    for r in results {
        let p = &r.result.probe;
        let port = match &p.port {
            Some(probe::PortRef::Number(n)) => format!("{}/{n}", p.protocol.to_ascii_uppercase()),
            Some(probe::PortRef::Name(n)) => format!("{}/{n}", p.protocol.to_ascii_uppercase()),
            None => p.protocol.to_ascii_uppercase(),
        };
        let v = |v: Option<Verdict>| v.map_or("-".to_owned(), |v| v.as_str().to_owned());
        let observed = if r.matches {
            v(r.observed)
        } else {
            format!("{} (MISMATCH: {})", v(r.observed), r.outcome)
        };
        let events: Vec<String> = r.events.iter().map(event_summary).collect();
        rows.push([
            p.from.clone(),
            p.to.clone(),
            port,
            v(r.expected),
            observed,
            events.join("; "),
        ]);
    }
    super::verdicts::render_rows(&rows)
}

/// `egress allow rule_allow ns/policy[rule]`-style summary of one record.
pub fn event_summary(r: &FlowRecord) -> String {
    let mut s = format!(
        "{} {} {}",
        name(&r.direction),
        name(&r.verdict),
        name(&r.reason)
    );
    let refs: Vec<String> = if r.policy.allowed_by.is_empty() {
        r.policy
            .isolated_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    } else {
        r.policy
            .allowed_by
            .iter()
            .map(|a| format!("{}/{}[{}]", a.namespace, a.name, a.rule))
            .collect()
    };
    if !refs.is_empty() {
        s.push(' ');
        s.push_str(&refs.join(","));
    }
    s
}

/// The serde (snake_case) name of a unit enum value.
fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
