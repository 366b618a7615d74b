//! `flowgate verdicts`: evaluate a probe file (or the full pod-to-pod matrix) against manifests and
//! print each verdict with the policy and rule behind it.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use flowgate_policy::evaluate::{SideDecision, Verdict};
use flowgate_policy::matrix::matrix;
use flowgate_policy::model::Protocol;
use flowgate_policy::probe::{self, ProbeResult};

use super::manifests::{self, ManifestArgs};
use super::{Exit, Output, emit, emit_json};

/// Evaluate probes (from -> to, port, protocol) against manifests, with attribution
///
/// Each result says allow or deny, and for each direction (the source's egress, the destination's
/// ingress) WHY: `allowed_by` names the policy, rule, peer and port indexes that allowed it;
/// `isolated_by` names the policies that isolate the pod when no rule matched (default deny).
///
/// The probe file is a JSON array of {"from": "ns/pod" | "IP", "to": "ns/pod" | "IP",
/// "port": 80 | "port-name", "protocol": "TCP"|"UDP"|"SCTP"|"ICMP", "expect": "allow"|"deny"}.
/// protocol defaults to TCP; a bare IP that is no pod's IP is an endpoint outside the cluster; a
/// named port is resolved on the destination pod; "expect" is optional and a mismatch fails the run.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Probe file (JSON array), or `-` for stdin. Required unless --matrix (which ignores it).
    #[arg(
        long,
        short = 'p',
        env = "FLOWGATE_PROBES",
        required_unless_present = "matrix",
        conflicts_with = "matrix"
    )]
    pub probes: Option<PathBuf>,

    /// Print the full pod-to-pod truth table instead of evaluating probes.
    #[arg(long, env = "FLOWGATE_MATRIX")]
    pub matrix: bool,

    /// Ports for --matrix (comma-separated). Default: every numeric containerPort in the manifests.
    #[arg(long, value_delimiter = ',', requires = "matrix", env = "FLOWGATE_PORTS", value_parser = clap::value_parser!(u16).range(1..))]
    pub ports: Vec<u16>,

    /// Protocols for --matrix (comma-separated: TCP, UDP, SCTP).
    #[arg(long, value_delimiter = ',', requires = "matrix", default_value = "TCP", env = "FLOWGATE_PROTOCOLS", value_parser = parse_protocol)]
    pub protocols: Vec<Protocol>,

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

pub fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::from_k8s(&s.to_ascii_uppercase())
        .ok_or_else(|| format!("unknown protocol {s:?}: use TCP, UDP or SCTP"))
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    let loaded = manifests::load(&args.manifests)?;
    let manifest_exit = if loaded.has_errors() {
        Exit::InvalidManifests
    } else {
        Exit::Ok
    };
    if args.matrix {
        let ports = if args.ports.is_empty() {
            let mut ports: Vec<u16> = loaded
                .cluster
                .pods()
                .flat_map(|(_, p)| p.ports.iter().map(|c| c.port))
                .collect();
            ports.sort_unstable();
            ports.dedup();
            if ports.is_empty() {
                bail!("no --ports given and no pod in the manifests declares a containerPort");
            }
            ports
        } else {
            args.ports.clone()
        };
        let m = matrix(&loaded.cluster, &args.protocols, &ports);
        match args.output {
            Output::Table => emit(&m.to_table())?,
            Output::Json => emit_json(&m)?,
        }
        return Ok(manifest_exit);
    }
    let Some(path) = &args.probes else {
        bail!("--probes is required without --matrix")
    };
    let text = manifests::read_input(path)?;
    let probes = probe::parse_probes(&text).with_context(|| {
        format!("{}: not a valid probe file (expected a JSON array of {{\"from\", \"to\", \"port\", \"protocol\"}})", path.display())
    })?;
    let results: Vec<ProbeResult> = probes
        .iter()
        .map(|p| probe::run(&loaded.cluster, p))
        .collect();
    match args.output {
        Output::Json => emit_json(&results)?,
        Output::Table => emit(&table(&results))?,
    }
    let failed = results.iter().filter(|r| r.failed()).count();
    if failed > 0 {
        eprintln!(
            "{failed} of {} probes failed (an error, or a verdict other than `expect`)",
            results.len()
        );
        return Ok(Exit::Failed.max(manifest_exit));
    }
    Ok(manifest_exit)
}

/// One side's verdict in a few words, e.g. `rule_allow x/web ingress[0]`.
pub fn side_summary(side: &SideDecision, direction: &str) -> String {
    let refs: Vec<String> = if side.allowed_by.is_empty() {
        side.isolated_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    } else {
        side.allowed_by
            .iter()
            .map(|r| format!("{}/{} {direction}[{}]", r.namespace, r.name, r.rule))
            .collect()
    };
    if refs.is_empty() {
        side.reason.as_str().to_owned()
    } else {
        format!("{} {}", side.reason.as_str(), refs.join(", "))
    }
}

fn table(results: &[ProbeResult]) -> String {
    let mut rows: Vec<[String; 6]> = vec![[
        "FROM".into(),
        "TO".into(),
        "PORT".into(),
        "VERDICT".into(),
        "EGRESS (source)".into(),
        "INGRESS (destination)".into(),
    ]];
    for r in results {
        let port = match (&r.probe.port, r.resolved_port) {
            (Some(probe::PortRef::Name(n)), Some(p)) => {
                format!("{}/{n}={p}", r.probe.protocol.to_ascii_uppercase())
            }
            (Some(probe::PortRef::Name(n)), None) => {
                format!("{}/{n}", r.probe.protocol.to_ascii_uppercase())
            }
            (Some(probe::PortRef::Number(n)), _) => {
                format!("{}/{n}", r.probe.protocol.to_ascii_uppercase())
            }
            (None, _) => r.probe.protocol.to_ascii_uppercase(),
        };
        let verdict = match (&r.error, r.verdict, r.expectation_met) {
            (Some(_), _, _) => "ERROR".to_owned(),
            (None, Some(v), Some(false)) => {
                let other = if v == Verdict::Allow { "deny" } else { "allow" };
                format!("{} (MISMATCH: expected {other})", v.as_str())
            }
            (None, Some(v), _) => v.as_str().to_owned(),
            (None, None, _) => "-".to_owned(),
        };
        let (egress, ingress) = match (&r.error, &r.egress, &r.ingress) {
            (Some(e), _, _) => (e.clone(), String::new()),
            (None, Some(e), Some(i)) => (side_summary(e, "egress"), side_summary(i, "ingress")),
            _ => (String::new(), String::new()),
        };
        rows.push([
            r.probe.from.clone(),
            r.probe.to.clone(),
            port,
            verdict,
            egress,
            ingress,
        ]);
    }
    render_rows(&rows)
}

/// Rows as left-aligned columns separated by two spaces, without trailing blanks.
pub fn render_rows<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let _ = write!(line, "{cell:<w$}");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
