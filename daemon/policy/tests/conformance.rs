//! Conformance suite: the upstream Kubernetes e2e NetworkPolicy model (namespaces x, y, z; pods
//! a, b, c; ports 80, 81; TCP, UDP, SCTP) with the upstream scenarios and their truth tables,
//! written as data under tests/conformance/. Every (from, to) pair of every case must match.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod common;

use common::scenarios::{self, Case, Scenario};
use flowgate_policy::Cluster;
use flowgate_policy::evaluate::{Flow, Verdict, evaluate};
use flowgate_policy::matrix::matrix;
use flowgate_policy::model::Protocol;

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
            let expected = case.expected(src_key, dst_key);
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
    let all = scenarios::all();
    assert!(
        all.len() >= 40,
        "expected the conformance scenarios, found only {}",
        all.len()
    );
    let mut mismatches = Vec::new();
    let mut cells = 0;
    for scenario in &all {
        assert!(
            !scenario.upstream.is_empty(),
            "{}: upstream title missing",
            scenario.name
        );
        assert!(!scenario.cases.is_empty(), "{}: no cases", scenario.name);
        let cluster = scenarios::load(scenario);
        for case in &scenario.cases {
            mismatches.extend(check_case(scenario, &cluster, case));
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
        all.len()
    );
}
