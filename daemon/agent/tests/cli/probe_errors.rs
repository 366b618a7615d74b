// Part of `cli.rs` (brought in with `include!`): 4. Probe errors.

// ---------------------------------------------------------------------------------------------
// 4. Probe errors
// ---------------------------------------------------------------------------------------------

#[test]
fn probe_errors_are_reported_never_a_silent_deny() {
    let dir = example("three-tier");
    let tmp = TempDir::new("probe-errors");
    let probes = tmp.write(
        "probes.json",
        r#"[
  {"from": "shop/ghost", "to": "shop/backend", "port": 8080, "expect": "deny"},
  {"from": "shop/frontend", "to": "shop/backend", "port": "no-such-port", "expect": "deny"},
  {"from": "shop/frontend", "to": "shop/backend", "port": 70000, "expect": "deny"},
  {"from": "shop/frontend", "to": "shop/backend", "port": 0, "expect": "deny"},
  {"from": "shop/frontend", "to": "shop/backend", "port": 8080, "expect": "allow"},
  {"from": "shop/frontend", "to": "shop/database", "port": 5432, "expect": "deny"}
]"#,
    );
    let out = verdicts_json(&dir, &probes);
    out.assert_code(1, "some probes could not be evaluated");
    let results = out.json();
    let results = array(&results, "verdicts -o json output");
    assert_eq!(results.len(), 6, "one result per probe: {results:?}");

    let errors = [
        (0, "shop/ghost"),
        (1, "no-such-port"),
        (2, "70000"),
        (3, "port 0"),
    ];
    for (i, needle) in errors {
        let r = &results[i];
        let error = r.get("error").and_then(Value::as_str).unwrap_or_else(|| {
            panic!("probe #{i} should carry an \"error\" (not a verdict), got {r}")
        });
        assert!(
            error.contains(needle),
            "probe #{i}: the error should mention {needle:?}, got {error:?}"
        );
        for key in ["verdict", "egress", "ingress", "expectation_met"] {
            assert!(
                r.get(key).is_none(),
                "probe #{i} failed to resolve: it must not carry {key:?} (no silent deny), got {r}"
            );
        }
    }
    assert!(
        results[1]["error"]
            .as_str()
            .is_some_and(|e| e.contains("api")),
        "the unknown named port error should list the pod's named ports (api), got {}",
        results[1]
    );
    for (i, expected) in [(4, "allow"), (5, "deny")] {
        let r = &results[i];
        assert_evaluated(r, &format!("probe #{i} next to failing probes"));
        assert_eq!(
            r["verdict"], expected,
            "probe #{i} should still get its verdict, got {r}"
        );
    }
    assert!(
        out.stderr.contains("4 of 6 probes failed"),
        "stderr should count the failed probes (`4 of 6 probes failed`), got:\n{}",
        out.stderr
    );

    let table = run(&["verdicts", "-q", "--manifests", &dir, "--probes", &probes]);
    table.assert_code(1, "some probes could not be evaluated");
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "one table row per probe:\n{}", table.stdout);
    for (i, row) in rows.iter().enumerate().take(4) {
        assert!(
            row.contains("ERROR") && !row.contains(" deny "),
            "table row #{i} should say ERROR, not deny:\n{row}"
        );
    }
}
