//! `flowgate lint`: report the NetworkPolicy pitfalls found in manifests, and the manifests the API
//! server would reject, with severity, object and field path.

use flowgate_policy::ObjectRef;
use flowgate_policy::lint::{self, Finding, Severity};

use super::manifests::{self, ManifestArgs};
use super::{Exit, Output, emit, emit_json};

/// Find the pitfalls in a set of NetworkPolicies
///
/// Checks (code: what it finds):
///   invalid-manifest          an object the API server would reject (error)
///   and-or-trap               a from/to list with a separate namespaceSelector peer and podSelector
///                             peer: they are OR'd, and usually meant as one peer
///   egress-without-dns        egress isolation without an allowance for UDP and TCP port 53
///   selector-matches-nothing  a peer selector that matches no namespace or pod in the manifests
///   policy-selects-no-pods    a policy whose podSelector selects no pod
///   shadowed-rule             a rule that a broader rule of the same policy already covers
///   ipblock-contains-pod-ips  an ipBlock whose range holds pod IPs
///   cidr-host-bits            an ipBlock CIDR with host bits set (10.0.0.5/8 means 10.0.0.0/8)
///   rules-ignored             ingress/egress rules whose direction is missing from policyTypes
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    pub manifests: ManifestArgs,

    /// Exit with status 1 when a finding has this severity or higher.
    #[arg(long, value_enum, default_value = "error", env = "FLOWGATE_FAIL_ON")]
    pub fail_on: FailOn,

    /// Output format: `table` prints one finding per line.
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
pub enum FailOn {
    Info,
    Warning,
    Error,
}

impl From<FailOn> for Severity {
    fn from(f: FailOn) -> Self {
        match f {
            FailOn::Info => Severity::Info,
            FailOn::Warning => Severity::Warning,
            FailOn::Error => Severity::Error,
        }
    }
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    // Manifest errors become findings here, so they are printed once, with the rest.
    let loaded = manifests::load_silently(&args.manifests)?;
    let mut findings: Vec<Finding> = loaded
        .manifests
        .errors
        .iter()
        .map(|e| Finding {
            severity: Severity::Error,
            code: "invalid-manifest",
            object: e.object.clone().unwrap_or(ObjectRef {
                kind: "-".into(),
                namespace: None,
                name: "-".into(),
            }),
            field: e.field.clone(),
            location: Some(e.location.clone()),
            message: e.message.clone(),
        })
        .collect();
    let mut policy_findings = lint::lint(&loaded.cluster);
    lint::locate(&mut policy_findings, &loaded.manifests.origins);
    findings.extend(policy_findings);
    if !args.manifests.quiet {
        for notice in &loaded.manifests.notices {
            eprintln!("notice: {notice}");
        }
    }
    match args.output {
        Output::Json => emit_json(&findings)?,
        Output::Table => {
            let text: String = findings.iter().map(|f| format!("{f}\n")).collect();
            emit(&text)?;
            let count = |s| findings.iter().filter(|f| f.severity == s).count();
            eprintln!(
                "{} error(s), {} warning(s), {} info in {} policies",
                count(Severity::Error),
                count(Severity::Warning),
                count(Severity::Info),
                loaded.cluster.policies().count()
            );
        }
    }
    let threshold = Severity::from(args.fail_on);
    Ok(if findings.iter().any(|f| f.severity >= threshold) {
        Exit::Failed
    } else {
        Exit::Ok
    })
}
