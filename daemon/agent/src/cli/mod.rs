//! Subcommands of the `flowgate` binary and what they share: reading manifest paths, exit codes,
//! printing diagnostics.

pub mod agent;
pub mod agent_cluster;
pub mod explain;
pub mod lab;
pub mod lint;
pub mod manifests;
pub mod observe;
pub mod verdicts;

use std::io::Write as _;
use std::process::ExitCode;

/// Process exit codes (sysexits where one fits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exit {
    Ok,
    /// A probe failed or missed its expectation; lint findings at or above --fail-on.
    Failed,
    /// EX_USAGE-like: a path could not be read, a probe file could not be parsed.
    Unreadable,
    /// EX_DATAERR: some manifests were rejected (reported; the rest was evaluated).
    InvalidManifests,
    /// EX_NOPERM: the command needs root.
    NoPermission,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(match exit {
            Exit::Ok => 0,
            Exit::Failed => 1,
            Exit::Unreadable => 64,
            Exit::InvalidManifests => 65,
            Exit::NoPermission => 77,
        })
    }
}

/// Output formats of the offline commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Human-readable text.
    Table,
    /// Machine-readable JSON.
    Json,
}

/// Writes command output to stdout. A reader that went away (`flowgate ... | head`) is not an
/// error: the output is simply no longer wanted.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `emit` for a value as pretty JSON, with a trailing newline.
pub fn emit_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    emit(&format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// Whether we run as root (the lab and the agent need CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
