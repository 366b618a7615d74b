//! `flowgate lab` and `flowgate agent --lab` run as a user runs them (the real binary, root):
//! every example's probes behave on real traffic as the policies say; the agent picks up a
//! policy edit, keeps the last good state on a malformed file, and cleans up after itself.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, veths, eBPF)");
            return;
        }
    };
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn flowgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    c.current_dir(root());
    for (k, _) in std::env::vars() {
        if k.starts_with("FLOWGATE_") {
            c.env_remove(k);
        }
    }
    c
}

/// Lab namespaces left by the flowgate process `pid` (other tests may run labs meanwhile).
fn lab_namespaces(pid: u32) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let prefix = format!("fglab-{pid}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_example_behaves_on_real_traffic_as_the_policies_say() {
    require_root!();
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("probes.json").is_file())
        .collect();
    dirs.sort();
    assert!(dirs.len() >= 5, "the examples are there: {dirs:?}");
    for dir in dirs {
        let out = flowgate()
            .args([
                "lab",
                "-q",
                "--timeout-ms",
                "500",
                "-o",
                "json",
                "--manifests",
            ])
            .arg(&dir)
            .arg("--probes")
            .arg(dir.join("probes.json"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: flowgate lab failed:\n{stderr}",
            dir.display()
        );
        let results: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
        let probes: Vec<serde_json::Value> =
            serde_json::from_str(&std::fs::read_to_string(dir.join("probes.json")).unwrap())
                .unwrap();
        assert_eq!(
            results.len(),
            probes.len(),
            "{}: one result per probe",
            dir.display()
        );
        for (r, p) in results.iter().zip(&probes) {
            let what = format!(
                "{}: {} -> {} {}",
                dir.display(),
                p["from"],
                p["to"],
                p["port"]
            );
            assert_eq!(r["matches"], true, "{what}: {r:#}");
            assert_eq!(
                r["expected"], p["expect"],
                "{what}: the example's own expectation"
            );
            if p["from"] == p["to"] {
                // A pod's traffic to itself stays on its loopback; no CNI enforces it.
                assert_eq!(r["observed"], "allow", "{what}");
                assert!(
                    r["note"].as_str().is_some_and(|n| n.contains("loopback")),
                    "{what}: {r:#}"
                );
                continue;
            }
            assert_eq!(r["observed"], r["expected"], "{what}");
            let events = r["events"].as_array().unwrap();
            // Every probe whose source or destination is a pod has at least one event.
            let has_pod = p["from"].as_str().unwrap().contains('/')
                || p["to"].as_str().unwrap().contains('/');
            if has_pod {
                assert!(!events.is_empty(), "{what}: no flow event");
            }
            for e in events {
                assert_eq!(e["schema"], "flowgate.flow/v1");
            }
        }
    }
}

#[test]
fn lab_refuses_without_root_with_a_clear_message() {
    require_root!();
    let dir = root().join("examples/three-tier");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_flowgate"))
        .args(["lab", "-q", "--manifests"])
        .arg(&dir)
        .arg("--probes")
        .arg(dir.join("probes.json"))
        .current_dir(std::env::temp_dir())
        .output()
        .expect("setpriv (util-linux) runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(77),
        "EX_NOPERM without root: {stderr}"
    );
    assert!(stderr.contains("needs root"), "{stderr}");
}

const ALLOW_CURL: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: frontend-from-curl, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: frontend}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: sandbox}}}], ports: [{port: 80}]}]
";

/// Waits until a record satisfying `pred` arrives (or panics after `limit`).
fn wait_for(
    rx: &mpsc::Receiver<serde_json::Value>,
    limit: Duration,
    what: &str,
    pred: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = Instant::now() + limit;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(r) if pred(&r) => return,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("no record {what} within {limit:?}");
}

fn curl_to_frontend(r: &serde_json::Value) -> bool {
    r["source"]["pod"] == "curl"
        && r["destination"]["pod"] == "frontend"
        && r["destination"]["port"] == 80
        && r["direction"] == "ingress"
}

#[test]
fn agent_applies_manifest_edits_and_keeps_the_last_good_state() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("flowgate-agent-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["cluster.yaml", "policies.yaml"] {
        std::fs::copy(root().join("examples/three-tier").join(f), dir.join(f)).unwrap();
    }
    let mut child = flowgate()
        .args([
            "agent",
            "--lab",
            "-q",
            "--poll-ms",
            "100",
            "--traffic-interval-ms",
            "200",
            "--duration-secs",
            "20",
            "--manifests",
        ])
        .arg(&dir)
        .arg("--traffic")
        .arg(root().join("examples/three-tier/probes.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let record: serde_json::Value =
                serde_json::from_str(&line).expect("every stdout line is a JSON record");
            if tx.send(record).is_err() {
                break;
            }
        }
    });
    let stderr = child.stderr.take().unwrap();
    let (etx, erx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = etx.send(line);
        }
    });

    wait_for(
        &rx,
        Duration::from_secs(10),
        "denying sandbox/curl -> shop/frontend:80",
        |r| curl_to_frontend(r) && r["verdict"] == "deny" && r["reason"] == "default_deny",
    );
    let edited = Instant::now();
    std::fs::write(dir.join("allow-curl.yaml"), ALLOW_CURL).unwrap();
    wait_for(
        &rx,
        Duration::from_secs(5),
        "allowing it by the new policy",
        |r| {
            curl_to_frontend(r)
                && r["verdict"] == "allow"
                && r["policy"]["allowed_by"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|p| p["name"] == "frontend-from-curl"))
        },
    );
    eprintln!(
        "policy edit -> first record under the new policy: {:?}",
        edited.elapsed()
    );

    // A malformed file: reported, and the last good state (curl allowed) stays in force.
    std::fs::write(dir.join("broken.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\nspec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut reported = false;
    while Instant::now() < deadline && !reported {
        if let Ok(line) = erx.recv_timeout(Duration::from_millis(200)) {
            reported |= line.contains("keeping generation");
        }
    }
    assert!(reported, "the agent says it keeps the current generation");
    while rx.try_recv().is_ok() {}
    wait_for(
        &rx,
        Duration::from_secs(5),
        "still allowing curl after the malformed file",
        |r| curl_to_frontend(r) && r["verdict"] == "allow",
    );

    let pid = child.id();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "the agent exits cleanly after --duration-secs"
    );
    assert!(
        lab_namespaces(pid).is_empty(),
        "the agent removed its lab: {:?}",
        lab_namespaces(pid)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
