// Part of `cli.rs` (brought in with `include!`): 2. lint.

// ---------------------------------------------------------------------------------------------
// 2. lint
// ---------------------------------------------------------------------------------------------

#[test]
fn lint_reports_and_or_trap_and_honours_fail_on() {
    let dir = example("and-or-trap");
    let out = run(&["lint", "--manifests", &dir, "-o", "json"]);
    out.assert_code(0, "a warning is below the default --fail-on error");
    let findings = out.json();
    let findings = array(&findings, "lint -o json output");
    let trap = findings
        .iter()
        .find(|f| f["code"] == "and-or-trap")
        .unwrap_or_else(|| {
            panic!("expected a finding with code \"and-or-trap\", got {findings:?}")
        });
    assert_eq!(
        trap["severity"], "warning",
        "and-or-trap should be a warning: {trap}"
    );
    assert_eq!(
        trap["object"]["name"], "postgres-from-app-api",
        "and-or-trap should name the broken policy: {trap}"
    );
    assert_eq!(
        trap["field"], "spec.ingress[0].from",
        "and-or-trap should point at the from list: {trap}"
    );

    let strict = run(&["lint", "--manifests", &dir, "--fail-on", "warning"]);
    strict.assert_code(1, "--fail-on warning with a warning finding");
    assert!(
        strict.stdout.contains("and-or-trap"),
        "table output should name the and-or-trap finding, got:\n{}",
        strict.stdout
    );

    let default = run(&["lint", "--manifests", &dir]);
    default.assert_code(0, "default --fail-on is error, and-or-trap is a warning");
}

const BAD_CIDR_POLICY: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-cidr
  namespace: default
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
    - to:
        - ipBlock:
            cidr: 10.0.0.0/33
";

#[test]
fn lint_reports_invalid_cidr_as_invalid_manifest_error() {
    let tmp = TempDir::new("bad-cidr");
    let file = tmp.write("policy.yaml", BAD_CIDR_POLICY);
    let out = run(&["lint", "--manifests", &file, "-o", "json"]);
    out.assert_code(1, "an invalid-manifest finding is an error");
    let findings = out.json();
    let findings = array(&findings, "lint -o json output");
    let finding = findings
        .iter()
        .find(|f| f["code"] == "invalid-manifest")
        .unwrap_or_else(|| {
            panic!("expected a finding with code \"invalid-manifest\", got {findings:?}")
        });
    assert_eq!(
        finding["severity"], "error",
        "invalid-manifest should be an error: {finding}"
    );
    assert_eq!(
        finding["object"]["name"], "bad-cidr",
        "the finding should name the policy: {finding}"
    );
    assert!(
        finding["field"]
            .as_str()
            .is_some_and(|f| f.ends_with("ipBlock.cidr")),
        "the finding should point at the ipBlock.cidr field: {finding}"
    );
    assert!(
        finding["message"]
            .as_str()
            .is_some_and(|m| m.contains("10.0.0.0/33")),
        "the message should quote the bad CIDR: {finding}"
    );
    assert_eq!(
        finding["location"]["source"].as_str(),
        Some(file.as_str()),
        "the finding should name the file: {finding}"
    );

    let table = run(&["lint", "--manifests", &file]);
    table.assert_code(1, "an invalid-manifest finding is an error");
    assert!(
        table.stdout.contains("invalid-manifest"),
        "table output should list the invalid-manifest finding, got:\n{}",
        table.stdout
    );
}
