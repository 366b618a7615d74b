// Part of `cli.rs` (brought in with `include!`): 6. A missed expectation.

// ---------------------------------------------------------------------------------------------
// 6. A missed expectation
// ---------------------------------------------------------------------------------------------

#[test]
fn mismatched_expect_fails_and_shows_mismatch() {
    let dir = example("three-tier");
    let tmp = TempDir::new("mismatch");
    let probes = tmp.write(
        "probes.json",
        r#"[
  {"from": "shop/frontend", "to": "shop/backend", "port": 8080, "expect": "allow"},
  {"from": "shop/frontend", "to": "shop/database", "port": 5432, "expect": "allow"}
]"#,
    );
    let table = run(&["verdicts", "-q", "--manifests", &dir, "--probes", &probes]);
    table.assert_code(1, "a probe missed its expect");
    let rows: Vec<&str> = table.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "one row per probe:\n{}", table.stdout);
    assert!(
        !rows[0].contains("MISMATCH"),
        "the met expectation should not be flagged:\n{}",
        rows[0]
    );
    assert!(
        rows[1].contains("deny (MISMATCH: expected allow)"),
        "the missed expectation should read `deny (MISMATCH: expected allow)`:\n{}",
        rows[1]
    );
    assert!(
        table.stderr.contains("1 of 2 probes failed"),
        "stderr should count the failed probe, got:\n{}",
        table.stderr
    );

    let json = verdicts_json(&dir, &probes);
    json.assert_code(1, "a probe missed its expect");
    let results = json.json();
    assert_eq!(
        results[1]["expectation_met"],
        Value::Bool(false),
        "the JSON should say expectation_met: false, got {}",
        results[1]
    );
    assert_eq!(
        results[1]["verdict"], "deny",
        "the verdict itself is still reported, got {}",
        results[1]
    );
}

#[test]
fn help_lists_the_offline_commands() {
    let out = run(&["--help"]);
    out.assert_code(0, "--help succeeds");
    for command in ["verdicts", "explain", "lint"] {
        assert!(
            out.stdout.contains(command),
            "`flowgate --help` should list {command}, got:\n{}",
            out.stdout
        );
    }
}
