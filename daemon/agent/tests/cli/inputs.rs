// Part of `cli.rs` (brought in with `include!`): 5. Inputs: stdin, environment, bad command lines, unreadable and rejected manifests.

// ---------------------------------------------------------------------------------------------
// 5. Inputs: stdin, environment, bad command lines, unreadable and rejected manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn probes_from_stdin() {
    let dir = example("three-tier");
    let stdin = r#"[{"from": "shop/frontend", "to": "shop/backend", "port": 8080, "expect": "allow"},
                    {"from": "shop/backend", "to": "shop/frontend", "port": 80, "expect": "deny"}]"#;
    let out = run_with(
        &[
            "verdicts",
            "-q",
            "--manifests",
            &dir,
            "--probes",
            "-",
            "-o",
            "json",
        ],
        &[],
        Some(stdin),
    );
    out.assert_code(0, "both probes from stdin meet their expect");
    let results = out.json();
    let results = array(&results, "verdicts -o json output");
    let verdicts: Vec<&Value> = results.iter().map(|r| &r["verdict"]).collect();
    assert_eq!(
        verdicts,
        [&Value::from("allow"), &Value::from("deny")],
        "probes read from stdin should be evaluated in order"
    );
}

#[test]
fn arguments_from_environment_variables() {
    let dir = example("three-tier");
    let probes = format!("{dir}/probes.json");
    let by_flags = verdicts_json(&dir, &probes);
    by_flags.assert_code(0, "the example's probes meet their expect");

    // Everything from the environment, with two manifest files separated by a comma.
    let manifests = format!("{dir}/cluster.yaml,{dir}/policies.yaml");
    let by_env = run_with(
        &["verdicts"],
        &[
            ("FLOWGATE_MANIFESTS", &manifests),
            ("FLOWGATE_PROBES", &probes),
            ("FLOWGATE_OUTPUT", "json"),
            ("FLOWGATE_QUIET", "true"),
        ],
        None,
    );
    by_env.assert_code(0, "the example's probes meet their expect");
    assert_eq!(
        by_env.json(),
        by_flags.json(),
        "FLOWGATE_MANIFESTS/FLOWGATE_PROBES/FLOWGATE_OUTPUT should give the same result as the flags"
    );

    // Flags win over the environment.
    let overridden = run_with(
        &["verdicts", "-q", "--probes", &probes, "-o", "table"],
        &[("FLOWGATE_MANIFESTS", &dir), ("FLOWGATE_OUTPUT", "json")],
        None,
    );
    overridden.assert_code(0, "the example's probes meet their expect");
    assert!(
        overridden.stdout.starts_with("FROM"),
        "-o table should override FLOWGATE_OUTPUT=json, got:\n{}",
        overridden.stdout
    );

    let explain = run_with(
        &["explain", "-q"],
        &[
            ("FLOWGATE_MANIFESTS", &dir),
            ("FLOWGATE_FROM", "shop/frontend"),
            ("FLOWGATE_TO", "shop/backend"),
            ("FLOWGATE_PORT", "8080"),
        ],
        None,
    );
    explain.assert_code(0, "explain from environment variables");
    assert!(
        explain.stdout.contains("Verdict: ALLOW"),
        "explain with FLOWGATE_FROM/TO/PORT should explain frontend -> backend:8080, got:\n{}",
        explain.stdout
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let dir = example("three-tier");
    let out = run(&["verdicts", "--manifests", &dir, "--no-such-flag"]);
    out.assert_code(2, "bad command line");
    assert!(
        out.stderr.contains("unexpected argument '--no-such-flag'"),
        "clap should name the unknown flag, got:\n{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("Usage:"),
        "clap should print the usage, got:\n{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for a usage error, got:\n{}",
        out.stdout
    );
}

#[test]
fn missing_manifest_path_exits_64_naming_the_path() {
    let tmp = TempDir::new("missing");
    let missing = path_str(&tmp.path().join("no-such-manifests.yaml"));
    let probes = tmp.write("probes.json", "[]");
    for args in [
        vec!["verdicts", "--manifests", &missing, "--probes", &probes],
        vec!["verdicts", "--manifests", &missing, "--matrix"],
        vec!["lint", "--manifests", &missing],
        vec![
            "explain",
            "--manifests",
            &missing,
            "--from",
            "a/b",
            "--to",
            "c/d",
            "--port",
            "80",
        ],
    ] {
        let out = run(&args);
        out.assert_code(64, "a manifest path cannot be read");
        assert!(
            out.stderr.contains(&missing),
            "`{}` should name the missing path {missing} on stderr, got:\n{}",
            out.cmdline,
            out.stderr
        );
    }
}

#[test]
fn unparsable_probe_file_exits_64_naming_the_file() {
    let dir = example("three-tier");
    let tmp = TempDir::new("bad-probes");
    let probes = tmp.write("probes.json", "{\"from\": \"not an array\"");
    let out = run(&["verdicts", "--manifests", &dir, "--probes", &probes]);
    out.assert_code(64, "the probe file cannot be parsed");
    assert!(
        out.stderr.contains(&probes),
        "the error should name the probe file {probes}, got:\n{}",
        out.stderr
    );
}

#[test]
fn one_bad_manifest_file_is_reported_and_the_rest_evaluated() {
    let example_dir = PathBuf::from(example("three-tier"));
    let tmp = TempDir::new("bad-file");
    for file in ["cluster.yaml", "policies.yaml"] {
        let text = std::fs::read_to_string(example_dir.join(file)).expect("example file");
        tmp.write(file, &text);
    }
    let broken = tmp.write(
        "broken.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: [unclosed\n",
    );
    let manifests = path_str(tmp.path());
    let probes_path = example_dir.join("probes.json");
    let out = verdicts_json(&manifests, &path_str(&probes_path));
    out.assert_code(65, "one manifest file was rejected, the rest evaluated");
    assert!(
        out.stderr.contains(&broken),
        "the error should name the bad file {broken}, got:\n{}",
        out.stderr
    );
    let probes = read_json(&probes_path);
    let probes = array(&probes, "probes.json");
    let results = out.json();
    let results = array(&results, "verdicts -o json output");
    assert_eq!(results.len(), probes.len(), "one result per probe");
    for (i, (probe, result)) in probes.iter().zip(results).enumerate() {
        let context = format!("probe #{i} {probe} next to a bad manifest file");
        assert_evaluated(result, &context);
        assert_eq!(
            result.get("verdict"),
            probe.get("expect"),
            "{context}: the good manifests should still be evaluated, got {result}"
        );
    }

    let lint = run(&["lint", "--manifests", &manifests, "-o", "json"]);
    lint.assert_code(1, "a rejected manifest is an error finding");
    let findings = lint.json();
    let findings = array(&findings, "lint -o json output");
    assert!(
        findings.iter().any(|f| f["code"] == "invalid-manifest"
            && f["location"]["source"].as_str() == Some(broken.as_str())),
        "lint should report invalid-manifest located in {broken}, got {findings:?}"
    );
}
