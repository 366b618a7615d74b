//! The Prometheus alert rules in `deploy/prometheus/`: `promtool check rules` must accept
//! `flowgate-alerts.rules.yaml`, and `promtool test rules` must pass its unit tests in
//! `flowgate-alerts.test.yaml` (a firing and a non-firing case for every alert). promtool comes
//! with Debian's prometheus package, which scripts/bootstrap.sh installs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn promtool() -> PathBuf {
    let Some(path) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        panic!(
            "promtool is not installed: scripts/bootstrap.sh installs it (Debian's prometheus package)"
        );
    };
    path
}

/// Runs `promtool <args>` in the repository root and fails with its output unless it succeeds.
fn run_promtool(args: &[&str]) {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .expect("running promtool");
    assert!(
        output.status.success(),
        "promtool {} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn alert_rules_pass_promtool_check() {
    run_promtool(&[
        "check",
        "rules",
        "deploy/prometheus/flowgate-alerts.rules.yaml",
    ]);
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    run_promtool(&[
        "test",
        "rules",
        "deploy/prometheus/flowgate-alerts.test.yaml",
    ]);
}
