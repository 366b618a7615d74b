//! The agent on a lab node as an operator sees it (root; CI runs as root): a real Prometheus
//! (Debian's) scrapes `/metrics` while the built-in traffic runs, and its query API must show
//! exactly the verdicts the agent reported, per policy and rule; `flowgate observe` shows the
//! flows of the probes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Stops the child on drop (a failing test must not leave an agent or Prometheus running):
/// SIGTERM first, so the agent removes its lab, then SIGKILL.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = i32::try_from(self.0.id()).unwrap_or(0);
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn agent(
    api: u16,
    rounds: u64,
    secs: u64,
) -> (Guard, std::sync::mpsc::Receiver<serde_json::Value>) {
    let example = root().join("examples/three-tier");
    let mut child = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args(["agent", "--lab", "-q", "--traffic-interval-ms", "300"])
        .args([
            "--traffic-rounds",
            &rounds.to_string(),
            "--duration-secs",
            &secs.to_string(),
        ])
        .args(["--http-addr", &format!("127.0.0.1:{api}"), "--manifests"])
        .arg(&example)
        .arg("--traffic")
        .arg(example.join("probes.json"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str(&line).expect("stdout is JSON lines"));
        }
    });
    (Guard(child), rx)
}

/// The label set `flowgate_verdicts_total` counts a record under (one per allowing rule or
/// isolating policy).
fn expected_series(records: &[serde_json::Value]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in records.iter().filter(|r| r["record_type"] == "flow") {
        let base = format!(
            "{}|{}|{}",
            r["direction"].as_str().unwrap(),
            r["verdict"].as_str().unwrap(),
            r["reason"].as_str().unwrap()
        );
        let policy = &r["policy"];
        let keys: Vec<String> = if let Some(a) = policy["allowed_by"].as_array() {
            a.iter()
                .map(|p| {
                    format!(
                        "{base}|{}|{}|{}",
                        p["namespace"].as_str().unwrap(),
                        p["name"].as_str().unwrap(),
                        p["rule"]
                    )
                })
                .collect()
        } else if let Some(i) = policy["isolated_by"].as_array() {
            i.iter()
                .map(|p| {
                    format!(
                        "{base}|{}|{}|",
                        p["namespace"].as_str().unwrap(),
                        p["name"].as_str().unwrap()
                    )
                })
                .collect()
        } else {
            vec![format!("{base}|||")]
        };
        for k in keys {
            *out.entry(k).or_default() += 1;
        }
    }
    out
}

#[test]
fn prometheus_scrapes_exactly_the_verdicts_the_agent_reported() {
    if !is_root() {
        eprintln!("skipped: needs root (lab node, eBPF)");
        return;
    }
    let Some(prometheus) = ["/usr/bin/prometheus", "/usr/local/bin/prometheus"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        panic!("prometheus is not installed: scripts/bootstrap.sh installs Debian's package");
    };
    let (api, prom_port) = (free_port(), free_port());
    let (_agent, rx) = agent(api, 3, 40);
    let dir = std::env::temp_dir().join(format!("flowgate-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!("global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: flowgate\n    static_configs: [{{targets: ['127.0.0.1:{api}']}}]\n"),
    )
    .unwrap();
    let _prom = Guard(
        Command::new(prometheus)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );

    // Collect the agent's records until the three traffic rounds are over and it goes quiet.
    let mut records = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(3)) {
            Ok(r) => records.push(r),
            Err(_) if !records.is_empty() => break,
            Err(_) => {}
        }
    }
    // Every record the lab produced validates against the shipped schema.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("docs/flow-record.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the shipped schema compiles");
    for r in &records {
        let errors: Vec<String> = validator.iter_errors(r).map(|e| e.to_string()).collect();
        assert!(
            errors.is_empty(),
            "record does not validate: {errors:?}\n{r}"
        );
    }
    let mut flows = records.iter().filter(|r| r["record_type"] == "flow");
    assert!(
        flows.all(|r| r["counters"]["bytes"].as_u64().is_some_and(|b| b > 0)),
        "byte counts are reported"
    );
    assert!(
        records
            .iter()
            .any(|r| r["record_type"] == "policy_snapshot"),
        "the applied generation is reported"
    );
    let expected = expected_series(&records);
    assert!(
        expected.len() >= 5,
        "the traffic produced allow and deny verdicts: {expected:?}"
    );

    // Poll Prometheus until its newest scrape has all the counts (first sample ~6 s after start).
    let query = "/api/v1/query?query=flowgate_verdicts_total";
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = BTreeMap::new();
    while Instant::now() < deadline {
        let body = http_get(prom_port, query);
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
            got = v["data"]["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let m = &s["metric"];
                    let key = format!(
                        "{}|{}|{}|{}|{}|{}",
                        m["direction"].as_str().unwrap_or_default(),
                        m["verdict"].as_str().unwrap_or_default(),
                        m["reason"].as_str().unwrap_or_default(),
                        m["policy_namespace"].as_str().unwrap_or_default(),
                        m["policy_name"].as_str().unwrap_or_default(),
                        m["rule"].as_str().unwrap_or_default()
                    );
                    (
                        key,
                        s["value"][1]
                            .as_str()
                            .unwrap()
                            .parse::<u64>()
                            .expect("integral counter values"),
                    )
                })
                .collect();
            if got == expected {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        got, expected,
        "Prometheus's flowgate_verdicts_total equals the agent's records per policy and rule"
    );
    let lost = http_get(
        prom_port,
        "/api/v1/query?query=sum(flowgate_events_lost_total)",
    );
    assert!(!lost.contains("\"error\""), "{lost}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn observe_shows_the_flows_of_a_probe_run() {
    if !is_root() {
        eprintln!("skipped: needs root (lab node, eBPF)");
        return;
    }
    let api = free_port();
    let (_agent, rx) = agent(api, 1, 15);
    // Wait for the first traffic round's records.
    let first = rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the agent reports flows");
    assert_eq!(first["schema"], "flowgate.flow/v1");
    std::thread::sleep(Duration::from_secs(1));
    let out = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([
            "observe",
            "--server",
            &format!("http://127.0.0.1:{api}"),
            "--last",
            "1000",
            "--verdict",
            "deny",
            "--no-color",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(!lines.is_empty(), "denied flows are shown");
    assert!(
        lines.iter().all(|l| l.contains("DENY")),
        "only denies: {text}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sandbox/curl -> shop/frontend:80/tcp")
                && l.contains("default_deny shop/default-deny-ingress")),
        "the curl probe is shown with its isolating policy: {text}"
    );
    let json = Command::new(env!("CARGO_BIN_EXE_flowgate"))
        .args([
            "observe",
            "--server",
            &format!("http://127.0.0.1:{api}"),
            "--last",
            "3",
            "-o",
            "json",
            "--from-pod",
            "shop/backend",
        ])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&json.stdout).lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["source"]["pod"], "backend");
    }
}
