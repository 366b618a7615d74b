//! End-to-end tests of the `flowgate` binary, run the way a user runs it: every example under
//! `examples/` (probe verdicts and the README's expected matrices), `lint`, `explain`, probe
//! errors, input from stdin and the environment, and the documented exit codes (0 ok, 1 failed
//! probe or lint finding, 2 bad command line, 64 unreadable input, 65 rejected manifests).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

include!("cli/helpers.rs");
include!("cli/examples.rs");
include!("cli/lint.rs");
include!("cli/explain.rs");
include!("cli/probe_errors.rs");
include!("cli/inputs.rs");
include!("cli/expectations.rs");
include!("cli/agent_config.rs");
