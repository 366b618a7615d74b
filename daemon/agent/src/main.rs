//! The `flowgate` binary: parses the command line and hands each subcommand to its module.
//! All I/O lives in this crate; the policy semantics live in flowgate-policy.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flowgate::cli;

/// flowgate enforces Kubernetes NetworkPolicy with eBPF and reports every verdict: one event per
/// flow, allowed or dropped, naming the policy and rule that decided it.
///
/// The offline commands (verdicts, explain, lint) read manifests (Namespaces, Pods with
/// status.podIP, NetworkPolicies) and need no cluster: use them in CI and code review.
///
/// Exit codes: 0 success; 1 a probe failed or did not meet its `expect`, or lint found issues at
/// or above --fail-on; 2 bad command line; 64 unreadable input; 65 some manifests were rejected
/// (they are reported, and the rest is still evaluated).
#[derive(Debug, Parser)]
#[command(name = "flowgate", version, about, long_about, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Verdicts(cli::verdicts::Args),
    Explain(cli::explain::Args),
    Lint(cli::lint::Args),
    Lab(cli::lab::Args),
    Agent(Box<cli::agent::Args>),
    Observe(cli::observe::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Verdicts(args) => cli::verdicts::run(&args),
        Command::Explain(args) => cli::explain::run(&args),
        Command::Lint(args) => cli::lint::run(&args),
        Command::Lab(args) => cli::lab::run(&args),
        Command::Agent(args) => cli::agent::run(&args),
        Command::Observe(args) => cli::observe::run(&args),
    };
    match result {
        Ok(code) => code.into(),
        Err(error) => {
            eprintln!("error: {error:#}");
            cli::Exit::Unreadable.into()
        }
    }
}
