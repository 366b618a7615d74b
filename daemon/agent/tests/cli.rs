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

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// What one run of the binary produced.
#[derive(Debug)]
struct Run {
    /// Exit code; -1 if the process was killed by a signal.
    code: i32,
    stdout: String,
    stderr: String,
    /// The command line, for failure messages.
    cmdline: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` should print JSON on stdout, but it does not parse ({e}).\nstdout:\n{}\nstderr:\n{}",
                self.cmdline, self.stdout, self.stderr
            )
        })
    }

    fn assert_code(&self, expected: i32, why: &str) {
        assert_eq!(
            self.code, expected,
            "`{}` should exit with {expected} ({why}), but exited with {}.\nstdout:\n{}\nstderr:\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        );
    }

    fn assert_no_panic(&self) {
        assert!(
            !self.stderr.contains("panicked"),
            "`{}` panicked:\n{}",
            self.cmdline,
            self.stderr
        );
    }
}

/// The workspace root (commands run from here, as the READMEs show).
fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize()
        .unwrap_or_else(|e| panic!("workspace root {} should exist: {e}", root.display()))
}

/// Runs the built binary with `args`, the given environment (every inherited `FLOWGATE_*`
/// variable removed first, so the caller's shell cannot change the outcome) and optional stdin.
fn run_with(args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    cmd.args(args).current_dir(repo_root());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FLOWGATE_") {
            cmd.env_remove(key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut cmdline: String = env
        .iter()
        .map(|(k, v)| format!("{k}={v} "))
        .collect::<String>();
    cmdline.push_str("flowgate");
    for a in args {
        cmdline.push(' ');
        cmdline.push_str(a);
    }
    if stdin.is_some() {
        cmdline.push_str(" <stdin");
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{cmdline}`: {e}"));
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write stdin of `{cmdline}`: {e}"));
        // Dropping the pipe closes it: the binary sees end of file.
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("cannot wait for `{cmdline}`: {e}"));
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        cmdline,
    };
    run.assert_no_panic();
    run
}

fn run(args: &[&str]) -> Run {
    run_with(args, &[], None)
}

/// A directory under the system temp dir, unique per process and per call, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "flowgate-cli-test-{}-{n}-{tag}",
            std::process::id()
        ));
        // A leftover from an earlier process with the same id would make the test lie.
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create temp dir {}: {e}", path.display()));
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path as a string.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path_str(&path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("path {} is not UTF-8", path.display()))
        .to_owned()
}

/// Every directory under `examples/`, sorted. Fails when there is none: an empty list would make
/// the example tests pass vacuously.
fn examples() -> Vec<PathBuf> {
    let dir = repo_root().join("examples");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(
        !out.is_empty(),
        "expected at least one example directory under {}, found none",
        dir.display()
    );
    out
}

fn example(name: &str) -> String {
    let path = repo_root().join("examples").join(name);
    assert!(
        path.is_dir(),
        "example {} should exist (the test relies on it)",
        path.display()
    );
    path_str(&path)
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} should be valid JSON: {e}", path.display()))
}

fn array<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("{what} should be a JSON array, got: {value}"))
}

/// Lines with runs of whitespace collapsed, leading and trailing blank lines dropped.
fn normalize(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    while lines.first().is_some_and(String::is_empty) {
        lines.remove(0);
    }
    while lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    lines
}

/// The body of the first ```matrix fenced block of a README.
fn matrix_block(readme: &str) -> Option<String> {
    let mut lines = readme.lines();
    lines.find(|l| l.trim() == "```matrix")?;
    let mut body = String::new();
    for line in lines {
        if line.trim_start().starts_with("```") {
            return Some(body);
        }
        body.push_str(line);
        body.push('\n');
    }
    None // unterminated fence
}

const TABLE_HEADER_TAIL: &str = "(rows: from, columns: to; . allow, X deny)";

/// Splits a matrix block into tables, each `(protocol, port, text)`, by their header lines.
fn matrix_tables(block: &str, readme: &Path) -> Vec<(String, String, String)> {
    let mut tables: Vec<(String, String, String)> = Vec::new();
    for line in block.lines() {
        if line.trim_end().ends_with(TABLE_HEADER_TAIL) {
            let head = line.split_whitespace().next().unwrap_or_default();
            let (protocol, port) = head.split_once('/').unwrap_or_else(|| {
                panic!(
                    "{}: matrix table header {line:?} should start with PROTOCOL/PORT",
                    readme.display()
                )
            });
            tables.push((protocol.to_owned(), port.to_owned(), String::new()));
        }
        let Some(current) = tables.last_mut() else {
            assert!(
                line.trim().is_empty(),
                "{}: the ```matrix block should start with a table header like `TCP/8080 {TABLE_HEADER_TAIL}`, found {line:?}",
                readme.display()
            );
            continue;
        };
        current.2.push_str(line);
        current.2.push('\n');
    }
    tables
}

/// The `verdicts -o json` command for an example, as owned strings.
fn verdicts_json(manifests: &str, probes: &str) -> Run {
    run(&[
        "verdicts",
        "-q",
        "--manifests",
        manifests,
        "--probes",
        probes,
        "-o",
        "json",
    ])
}

/// Checks that one `verdicts -o json` element is an evaluated flow: verdict, and egress and
/// ingress objects each with a verdict and a reason.
fn assert_evaluated(element: &Value, context: &str) {
    assert!(
        element.get("error").is_none(),
        "{context}: expected an evaluated probe, got an error: {element}"
    );
    let verdict = element.get("verdict").and_then(Value::as_str);
    assert!(
        matches!(verdict, Some("allow" | "deny")),
        "{context}: expected \"verdict\": \"allow\" or \"deny\", got {element}"
    );
    for side in ["egress", "ingress"] {
        let obj = element
            .get(side)
            .and_then(Value::as_object)
            .unwrap_or_else(|| panic!("{context}: expected an \"{side}\" object, got {element}"));
        assert!(
            matches!(
                obj.get("verdict").and_then(Value::as_str),
                Some("allow" | "deny")
            ),
            "{context}: expected {side}.verdict to be \"allow\" or \"deny\", got {element}"
        );
        assert!(
            obj.get("reason")
                .and_then(Value::as_str)
                .is_some_and(|r| !r.is_empty()),
            "{context}: expected a non-empty {side}.reason, got {element}"
        );
    }
}

/// The `explain` arguments for a probe object from a probe file.
fn explain_args(probe: &Value) -> Vec<String> {
    let mut args = vec![
        "--from".to_owned(),
        probe["from"].as_str().expect("probe.from").to_owned(),
        "--to".to_owned(),
        probe["to"].as_str().expect("probe.to").to_owned(),
    ];
    match probe.get("port") {
        None => {}
        Some(Value::String(s)) => args.extend(["--port".to_owned(), s.clone()]),
        Some(Value::Number(n)) => args.extend(["--port".to_owned(), n.to_string()]),
        Some(other) => panic!("probe port should be a number or a name, got {other}"),
    }
    if let Some(protocol) = probe.get("protocol").and_then(Value::as_str) {
        args.extend(["--protocol".to_owned(), protocol.to_owned()]);
    }
    args
}

/// A probe file with every example probe minus its `expect` (so explain and verdicts see the
/// very same probe).
fn without_expect(probes: &[Value]) -> Vec<Value> {
    probes
        .iter()
        .map(|p| {
            let mut p = p.clone();
            if let Some(obj) = p.as_object_mut() {
                obj.remove("expect");
            }
            p
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Every example: probe verdicts and the README matrix
// ---------------------------------------------------------------------------------------------

#[test]
fn every_example_probe_meets_its_expect() {
    for dir in examples() {
        let name = name_of(&dir);
        let probes_path = dir.join("probes.json");
        assert!(
            probes_path.is_file(),
            "example {name} should have a probes.json"
        );
        let probes = read_json(&probes_path);
        let probes = array(&probes, &format!("{name}/probes.json"));
        assert!(
            !probes.is_empty(),
            "example {name}: probes.json should hold at least one probe"
        );
        let out = verdicts_json(&path_str(&dir), &path_str(&probes_path));
        out.assert_code(
            0,
            &format!("every probe of example {name} meets its expect"),
        );
        let results = out.json();
        let results = array(&results, "verdicts -o json output");
        assert_eq!(
            results.len(),
            probes.len(),
            "example {name}: expected one result per probe"
        );
        for (i, (probe, result)) in probes.iter().zip(results).enumerate() {
            let context = format!("example {name}, probe #{i} {probe}");
            assert_eq!(
                (result.get("from"), result.get("to")),
                (probe.get("from"), probe.get("to")),
                "{context}: results should be in probe order"
            );
            assert_evaluated(result, &context);
            if let Some(expect) = probe.get("expect") {
                assert_eq!(
                    result.get("verdict"),
                    Some(expect),
                    "{context}: expected verdict {expect}, got {result}"
                );
                assert_eq!(
                    result.get("expectation_met"),
                    Some(&Value::Bool(true)),
                    "{context}: expected \"expectation_met\": true, got {result}"
                );
            }
        }
    }
}

#[test]
fn every_example_readme_matrix_matches_verdicts_matrix() {
    for dir in examples() {
        let name = name_of(&dir);
        let readme_path = dir.join("README.md");
        let readme = std::fs::read_to_string(&readme_path)
            .unwrap_or_else(|e| panic!("example {name} should have a README.md: {e}"));
        let block = matrix_block(&readme).unwrap_or_else(|| {
            panic!("example {name}: README.md should hold a (closed) ```matrix fenced block")
        });
        let tables = matrix_tables(&block, &readme_path);
        assert!(
            !tables.is_empty(),
            "example {name}: the ```matrix block should hold at least one table with a header like `TCP/8080 {TABLE_HEADER_TAIL}`"
        );
        let manifests = path_str(&dir);
        let mut printed = String::new();
        for (t, (protocol, port, expected)) in tables.iter().enumerate() {
            let out = run(&[
                "verdicts",
                "--matrix",
                "-q",
                "--manifests",
                &manifests,
                "--ports",
                port,
                "--protocols",
                protocol,
            ]);
            out.assert_code(0, "the matrix of valid manifests is printed");
            assert_eq!(
                normalize(&out.stdout),
                normalize(expected),
                "example {name}: `{}` should print the README's {protocol}/{port} table exactly (left: printed, right: README)",
                out.cmdline
            );
            if t > 0 {
                printed.push('\n');
            }
            printed.push_str(&out.stdout);
        }
        // Nothing in the block beyond the tables (the tables concatenated are the whole block).
        assert_eq!(
            normalize(&printed),
            normalize(&block),
            "example {name}: the README ```matrix block should be exactly the printed tables"
        );
    }
}

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

// ---------------------------------------------------------------------------------------------
// 3. explain
// ---------------------------------------------------------------------------------------------

#[test]
fn explain_json_equals_verdicts_element_for_every_example_probe() {
    let tmp = TempDir::new("explain-json");
    for dir in examples() {
        let name = name_of(&dir);
        let manifests = path_str(&dir);
        let probes = read_json(&dir.join("probes.json"));
        let probes = without_expect(array(&probes, "probes.json"));
        let file = tmp.write(
            &format!("{name}.json"),
            &serde_json::to_string(&probes).expect("serializable"),
        );
        let verdicts = verdicts_json(&manifests, &file);
        verdicts.assert_code(0, "probes without expect, all resolvable");
        let results = verdicts.json();
        let results = array(&results, "verdicts -o json output");
        assert_eq!(
            results.len(),
            probes.len(),
            "example {name}: one result per probe"
        );
        for (probe, element) in probes.iter().zip(results) {
            let mut args = vec!["explain", "-q", "--manifests", &manifests, "-o", "json"];
            let extra = explain_args(probe);
            args.extend(extra.iter().map(String::as_str));
            let explained = run(&args);
            explained.assert_code(0, "the probe resolves");
            assert_eq!(
                &explained.json(),
                element,
                "example {name}: `{}` should print the same object as the matching `verdicts -o json` element",
                explained.cmdline
            );
        }
    }
}

#[test]
fn explain_text_names_the_allowing_policy_and_rule() {
    let dir = example("three-tier");
    let out = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/frontend",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ]);
    out.assert_code(0, "explain of a resolvable flow");
    for needle in [
        "shop/backend-from-frontend ingress[0]",
        "rule_allow: shop/backend-from-frontend ingress[0]",
        "Verdict: ALLOW",
    ] {
        assert!(
            out.stdout.contains(needle),
            "`{}` should say {needle:?}, got:\n{}",
            out.cmdline,
            out.stdout
        );
    }
}

#[test]
fn explain_text_names_every_allowing_rule_in_the_examples() {
    for dir in examples() {
        let name = name_of(&dir);
        let manifests = path_str(&dir);
        let probes = read_json(&dir.join("probes.json"));
        let probes = without_expect(array(&probes, "probes.json"));
        for probe in &probes {
            let mut json_args = vec!["explain", "-q", "--manifests", &manifests, "-o", "json"];
            let extra = explain_args(probe);
            json_args.extend(extra.iter().map(String::as_str));
            let element = run(&json_args).json();
            let mut text_args = vec!["explain", "-q", "--manifests", &manifests];
            text_args.extend(extra.iter().map(String::as_str));
            let text = run(&text_args);
            text.assert_code(0, "explain of a resolvable flow");
            let verdict = element["verdict"].as_str().expect("verdict").to_uppercase();
            assert!(
                text.stdout.contains(&format!("Verdict: {verdict}")),
                "example {name}: `{}` should end with `Verdict: {verdict}`, got:\n{}",
                text.cmdline,
                text.stdout
            );
            for side in ["egress", "ingress"] {
                for rule in element[side]["allowed_by"].as_array().into_iter().flatten() {
                    let needle = format!(
                        "{}/{} {side}[{}]",
                        rule["namespace"].as_str().expect("namespace"),
                        rule["name"].as_str().expect("name"),
                        rule["rule"]
                    );
                    assert!(
                        text.stdout.contains(&needle),
                        "example {name}: `{}` should name the allowing rule {needle:?}, got:\n{}",
                        text.cmdline,
                        text.stdout
                    );
                }
            }
        }
    }
}

#[test]
fn explain_unknown_pod_fails_with_a_clear_message() {
    let dir = example("three-tier");
    let out = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ]);
    assert_ne!(
        out.code, 0,
        "`{}` should fail for an unknown pod, but exited 0:\n{}",
        out.cmdline, out.stdout
    );
    assert!(
        out.stderr.contains("unknown pod \"shop/ghost\""),
        "`{}` should say `unknown pod \"shop/ghost\"` on stderr, got:\n{}",
        out.cmdline,
        out.stderr
    );
    assert!(
        !out.stdout.contains("Verdict"),
        "no verdict should be printed for an unknown pod, got:\n{}",
        out.stdout
    );

    let json = run(&[
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
        "-o",
        "json",
    ]);
    json.assert_code(1, "a probe that cannot be evaluated failed");
    let element = json.json();
    assert!(
        element["error"]
            .as_str()
            .is_some_and(|e| e.contains("shop/ghost")),
        "explain -o json should report the unknown pod in \"error\", got {element}"
    );
    assert!(
        element.get("verdict").is_none(),
        "no verdict for an unknown pod, got {element}"
    );
}

/// Exit code 1 means "a probe failed" (documented in `flowgate --help`), 64 "unreadable input".
/// An unknown pod is a failed probe, and `explain -o json` already exits 1 for it: the text
/// output must agree.
#[test]
fn explain_unknown_pod_exit_code_is_the_same_in_text_and_json() {
    let dir = example("three-tier");
    let base = [
        "explain",
        "--manifests",
        &dir,
        "--from",
        "shop/ghost",
        "--to",
        "shop/backend",
        "--port",
        "8080",
    ];
    let json = run(&[&base[..], &["-o", "json"]].concat());
    let text = run(&base);
    json.assert_code(1, "an unknown pod is a failed probe");
    text.assert_code(
        1,
        "an unknown pod is a failed probe (exit 1), not unreadable input (64); `-o json` exits 1",
    );
}

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
