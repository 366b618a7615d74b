//! Conformance suite: the upstream Kubernetes e2e NetworkPolicy model (namespaces x, y, z; pods
//! a, b, c; ports 80, 81; TCP, UDP, SCTP) with the upstream scenarios and their truth tables,
//! written as data under tests/conformance/. Every (from, to) pair of every case must match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowgate_policy::evaluate::{Flow, Verdict, evaluate};
use flowgate_policy::matrix::matrix;
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    name: String,
    upstream: String,
    #[serde(default)]
    relabel: Vec<Relabel>,
    policies: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Relabel {
    namespace: String,
    pod: Option<String>,
    labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    port: u16,
    protocol: String,
    default: bool,
    #[serde(default)]
    expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    from: Sel,
    to: Sel,
    connected: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sel {
    namespace: Option<String>,
    pod: Option<String>,
}

impl Sel {
    fn matches(&self, key: &str) -> bool {
        let (ns, pod) = key.split_once('/').unwrap_or((key, ""));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

/// The model with a scenario's label changes applied to the raw objects.
fn model_yaml(relabel: &[Relabel]) -> String {
    let text =
        std::fs::read_to_string(dir().join("model.yaml")).expect("model.yaml must be readable");
    let options = serde_saphyr::options! { strict_booleans: true };
    let docs: Vec<Value> =
        serde_saphyr::from_multiple_with_options(&text, options).expect("model.yaml must parse");
    let mut out = Vec::new();
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
        let meta = &doc["metadata"];
        let name = meta["name"].as_str().unwrap_or_default().to_owned();
        let ns = meta["namespace"].as_str().unwrap_or_default().to_owned();
        for r in relabel {
            let hit = match (&r.pod, kind.as_str()) {
                (Some(pod), "Pod") => r.namespace == ns && *pod == name,
                (None, "Namespace") => r.namespace == name,
                _ => false,
            };
            if hit {
                doc["metadata"]["labels"] = serde_json::to_value(&r.labels).unwrap();
            }
        }
        out.push(serde_json::to_string(&doc).unwrap());
    }
    // JSON is YAML: one document each.
    out.join("\n---\n")
}

fn load(scenario: &Scenario) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("model.yaml", &model_yaml(&scenario.relabel));
    m.add_text(
        &format!("{}.yaml#policies", scenario.name),
        &scenario.policies,
    );
    assert!(
        m.errors.is_empty(),
        "scenario {}: manifests rejected: {:#?}",
        scenario.name,
        m.errors
    );
    let cluster = Cluster::from_manifests(&mut m);
    assert_eq!(
        cluster.pods().count(),
        9,
        "scenario {}: the model has 9 pods",
        scenario.name
    );
    cluster
}

fn check_case(scenario: &Scenario, cluster: &Cluster, case: &Case) -> Vec<String> {
    let protocol =
        Protocol::from_k8s(&case.protocol).expect("case protocol must be TCP, UDP or SCTP");
    let pods: Vec<_> = cluster
        .pods()
        .map(|(id, p)| (id, p.key(), p.ips[0]))
        .collect();
    let grid = matrix(cluster, &[protocol], &[case.port]);
    let mut mismatches = Vec::new();
    for (si, (src, src_key, src_ip)) in pods.iter().enumerate() {
        for (di, (dst, dst_key, dst_ip)) in pods.iter().enumerate() {
            let mut expected = case.default;
            for e in &case.expect {
                if e.from.matches(src_key) && e.to.matches(dst_key) {
                    expected = e.connected;
                }
            }
            let flow = Flow {
                src_ip: *src_ip,
                src_pod: Some(*src),
                dst_ip: *dst_ip,
                dst_pod: Some(*dst),
                protocol,
                port: Some(case.port),
            };
            let decision = evaluate(cluster, &flow);
            let got = decision.verdict == Verdict::Allow;
            if got != expected {
                mismatches.push(format!(
                    "{} {}/{} {src_key} -> {dst_key}: expected {}, evaluate says {} (egress {:?}, ingress {:?})",
                    scenario.name,
                    case.protocol,
                    case.port,
                    if expected { "allow" } else { "deny" },
                    decision.verdict.as_str(),
                    decision.egress.reason,
                    decision.ingress.reason,
                ));
            }
            // The matrix must agree with evaluate cell by cell.
            assert_eq!(
                grid.tables[0].verdicts[si][di], decision.verdict,
                "matrix and evaluate disagree"
            );
        }
    }
    mismatches
}

#[test]
fn upstream_e2e_scenarios_match_their_truth_tables() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir().join("scenarios"))
        .expect("scenarios dir must exist")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "expected the conformance scenarios, found only {}",
        files.len()
    );
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let scenario: Scenario = serde_saphyr::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: bad scenario file: {e}", file.display()));
        assert!(
            !scenario.upstream.is_empty(),
            "{}: upstream title missing",
            file.display()
        );
        assert!(!scenario.cases.is_empty(), "{}: no cases", file.display());
        let cluster = load(&scenario);
        for case in &scenario.cases {
            mismatches.extend(check_case(&scenario, &cluster, case));
            cells += 81;
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {cells} cells differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    eprintln!(
        "conformance: {} scenarios, {cells} cells, all match",
        files.len()
    );
}
