// Part of `cli.rs` (brought in with `include!`): Helpers.

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
