//! `flowgate explain`: one flow, explained: which policies select each end, whether each end is
//! isolated, which rule matched (or that none did), and the final verdict.

use flowgate_policy::probe::{self, PortRef, Probe};

use super::manifests::{self, ManifestArgs};
use super::{Exit, Output, emit, emit_json};

/// Explain how the policies decide one flow.
///
/// Shows, for the source's egress and the destination's ingress: the policies that select the pod,
/// whether it is isolated in that direction, each rule of the isolating policies and whether its
/// peers and ports match, and the verdict. `--output json` prints the same object as one element of
/// `flowgate verdicts --output json`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Source: `namespace/pod`, or an IP (a pod's IP, or an endpoint outside the cluster).
    #[arg(long, env = "FLOWGATE_FROM")]
    pub from: String,

    /// Destination: `namespace/pod`, or an IP.
    #[arg(long, env = "FLOWGATE_TO")]
    pub to: String,

    /// Destination port: a number, or a named port of the destination pod. Omit for ICMP.
    #[arg(long, env = "FLOWGATE_PORT")]
    pub port: Option<String>,

    /// Protocol: TCP, UDP, SCTP or ICMP.
    #[arg(long, default_value = "TCP", env = "FLOWGATE_PROTOCOL")]
    pub protocol: String,

    /// Output format: `table` prints the explanation as text.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "table",
        env = "FLOWGATE_OUTPUT"
    )]
    pub output: Output,
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    let loaded = manifests::load(&args.manifests)?;
    let port = args.port.as_ref().map(|p| match p.parse::<i64>() {
        Ok(n) => PortRef::Number(n),
        Err(_) => PortRef::Name(p.clone()),
    });
    let probe = Probe {
        from: args.from.clone(),
        to: args.to.clone(),
        port,
        protocol: args.protocol.clone(),
        expect: None,
    };
    let manifest_exit = if loaded.has_errors() {
        Exit::InvalidManifests
    } else {
        Exit::Ok
    };
    match args.output {
        Output::Json => {
            let result = probe::run(&loaded.cluster, &probe);
            emit_json(&result)?;
            Ok(if result.failed() {
                Exit::Failed
            } else {
                manifest_exit
            })
        }
        Output::Table => match probe::resolve(&loaded.cluster, &probe) {
            Ok(flow) => {
                emit(&flowgate_policy::explain::explain(&loaded.cluster, &flow))?;
                Ok(manifest_exit)
            }
            Err(error) => {
                eprintln!("error: {error}");
                Ok(Exit::Failed)
            }
        },
    }
}
