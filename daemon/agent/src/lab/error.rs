//! Errors of the lab node: `LabError` for building and entering it, `ProbeFailure` for a probe
//! that could not even be attempted (it ends up in `Outcome::Failed`, never as a silent deny).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;

use flowgate_policy::model::Protocol;
use nix::errno::Errno;

/// Why a lab could not be built, entered or torn down.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(
        "the lab needs root: it creates network namespaces, veth pairs and raw sockets \
         (missing capabilities: {}); run it as root, e.g. with sudo",
        missing.join(", ")
    )]
    NotPrivileged { missing: Vec<&'static str> },

    #[error("lab spec: pod {key:?} is listed twice")]
    DuplicatePod { key: String },

    #[error("lab spec: pod key {key:?} is not \"namespace/name\"")]
    BadPodKey { key: String },

    #[error("lab spec: {ip} is given to both {first} and {second}")]
    DuplicateIp {
        ip: IpAddr,
        first: String,
        second: String,
    },

    #[error("lab spec: {endpoint}: {ip} cannot be used in the lab: {why}")]
    UnusableIp {
        endpoint: String,
        ip: IpAddr,
        why: &'static str,
    },

    #[error("lab spec: {endpoint}: port 0 is not a port")]
    PortZero { endpoint: String },

    #[error("lab spec: {count} endpoints (pods with an IP + externals); the lab supports {max}")]
    TooManyEndpoints { count: usize, max: usize },

    #[error("lab spec: {count} pods on the bridge; a bridged lab supports {max}")]
    TooManyBridgePorts { count: usize, max: usize },

    #[error("lab: no endpoint {key:?} in this lab")]
    UnknownEndpoint { key: String },

    #[error("iproute2's `ip` was not found in PATH nor in {tried:?}; install iproute2")]
    IpNotFound { tried: Vec<PathBuf> },

    #[error("lab: could not run {program:?}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "lab: `ip{}-batch -` failed ({status}){}: {stderr}",
        netns.as_deref().map(|n| format!(" -n {n} ")).unwrap_or_else(|| " ".to_owned()),
        line.as_deref().map(|l| format!(" at `{l}`")).unwrap_or_default()
    )]
    IpFailed {
        netns: Option<String>,
        status: String,
        /// The batch line that failed, when `ip` says which.
        line: Option<String>,
        stderr: String,
        /// The whole batch, for debugging.
        script: String,
    },

    #[error("lab: {op} {path:?}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("lab: {op} ({target})")]
    Sys {
        op: &'static str,
        target: String,
        #[source]
        source: Errno,
    },

    #[error("lab: could not start thread {name:?}")]
    Thread {
        name: &'static str,
        #[source]
        source: io::Error,
    },

    #[error("lab: interrupted by a signal; every lab namespace of this process was removed")]
    Interrupted,
}

impl LabError {
    pub(super) fn sys(op: &'static str, target: impl Into<String>, source: Errno) -> Self {
        Self::Sys {
            op,
            target: target.into(),
            source,
        }
    }

    pub(super) fn io(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Why a probe could not be attempted at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    #[error("unknown source {key:?}: no such endpoint in the lab")]
    UnknownSource { key: String },

    #[error("{from} has no IPv{family} address to reach {to}")]
    NoSourceAddress {
        from: String,
        family: u8,
        to: IpAddr,
    },

    #[error("{protocol} probes need a destination port")]
    MissingPort { protocol: Protocol },

    #[error("{op}: {errno}")]
    Socket { op: &'static str, errno: Errno },

    #[error("could not start a probe thread")]
    Thread,
}
