//! What an operator installs next to the agent: the Prometheus alert rules in
//! `deploy/prometheus/` and the Grafana dashboards in `dashboards/`.
//!
//! - `promtool check rules` accepts `flowgate-alerts.rules.yaml` and `promtool test rules`
//!   passes its unit tests in `flowgate-alerts.test.yaml` (a firing and a non-firing case for
//!   every alert);
//! - every dashboard query parses as PromQL: they are written into a rules file as recording
//!   rules and `promtool check rules` must accept it, after Grafana's template variables are
//!   replaced by values;
//! - every `flowgate_*` metric the dashboards and alert rules name is one the agent exports
//!   (`metrics::FAMILIES`, which flowgate-flows' tests compare with the registry's
//!   exposition), and docs/metrics.md lists exactly the exported families;
//! - every `$variable` a query uses is defined by the dashboard or is a Grafana built-in;
//! - panel ids are unique, every panel and target queries the `${datasource}` variable;
//! - the dashboards type-check against npm `@grafana/schema` (`tools/grafana-schema/`) with
//!   TypeScript's strict mode and excess-property checks.
//!
//! Each check is also run on a broken input that it must reject. promtool comes with Debian's
//! prometheus package and the npm packages with `npm ci`; scripts/bootstrap.sh installs both.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

const DASHBOARDS: [&str; 3] = [
    "flowgate-overview.json",
    "flowgate-policy.json",
    "flowgate-agent.json",
];

/// Grafana's built-in variables the dashboards use, with the value used to check the PromQL.
const BUILTINS: [(&str, &str); 2] = [("$__rate_interval", "5m"), ("$__range", "1h")];

fn dashboard(name: &str) -> Value {
    let path = root().join("dashboards").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(nested) = panel["panels"].as_array() {
            out.extend(nested);
        }
    }
    out
}

fn exprs(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .into_iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .map(|t| t["expr"].as_str().expect("target without expr").to_owned())
        .collect()
}

fn variables(dashboard: &Value) -> BTreeSet<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .map(|v| format!("${}", v["name"].as_str().expect("variable name")))
        .collect()
}

fn alert_exprs() -> Vec<String> {
    let path = root().join("deploy/prometheus/flowgate-alerts.rules.yaml");
    let rules: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            out.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    assert!(!out.is_empty(), "no alert rules read");
    out
}

/// The series names the agent exports: `metrics::FAMILIES` (which flowgate-flows' tests hold
/// equal to the registry's exposition), histograms with their three series.
fn exported_metrics() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (name, kind) in flowgate_flows::metrics::FAMILIES {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        } else {
            out.insert(name.to_owned());
        }
    }
    out
}

/// The `flowgate_*` identifiers an expression names (there are no flowgate label names that
/// start with `flowgate_`, so these are metric names).
fn flowgate_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("flowgate_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

/// Names in `exprs` that are neither exported by the agent nor provided by Prometheus.
fn unknown_metrics(exprs: &[String], exported: &BTreeSet<String>) -> Vec<String> {
    let mut unknown = Vec::new();
    for expr in exprs {
        for name in flowgate_names(expr) {
            if !exported.contains(&name) {
                unknown.push(format!("{name} (in `{expr}`)"));
            }
        }
    }
    unknown
}

/// Replaces Grafana variables by values PromQL accepts: built-ins by a duration, the dashboard's
/// own (all used inside `=~"..."` matchers) by `.*`.
fn substitute(expr: &str, variables: &BTreeSet<String>) -> String {
    let mut out = expr.to_owned();
    for (name, value) in BUILTINS {
        out = out.replace(name, value);
    }
    // Longest first, so `$policy_namespace` is not cut by `$policy`.
    let mut vars: Vec<&String> = variables.iter().collect();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for var in vars {
        out = out.replace(var.as_str(), ".*");
    }
    out
}

fn promtool() -> PathBuf {
    let Some(path) = ["/usr/bin/promtool", "/usr/local/bin/promtool"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    else {
        panic!(
            "promtool is not installed: scripts/bootstrap.sh installs it (Debian's prometheus package)"
        );
    };
    path
}

/// Runs `command`; Err carries its status and output unless it succeeds.
fn run(mut command: Command) -> Result<(), String> {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// `promtool <args>` in the repository root.
fn promtool_in_root(args: &[&str]) -> Result<(), String> {
    let mut command = Command::new(promtool());
    command.args(args).current_dir(root());
    run(command)
}

#[test]
fn alert_rules_pass_promtool_check() {
    let rules = "deploy/prometheus/flowgate-alerts.rules.yaml";
    promtool_in_root(&["check", "rules", rules]).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn alert_rules_pass_their_promtool_unit_tests() {
    let tests = "deploy/prometheus/flowgate-alerts.test.yaml";
    promtool_in_root(&["test", "rules", tests]).unwrap_or_else(|e| panic!("{e}"));
}

/// `promtool check rules` on the expressions as recording rules.
fn promtool_parses(tag: &str, exprs: &[String]) -> Result<(), String> {
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, expr)| serde_json::json!({"record": format!("check:expr_{i}"), "expr": expr}))
        .collect();
    let file = serde_json::json!({"groups": [{"name": "dashboard_exprs", "rules": rules}]});
    let path = std::env::temp_dir().join(format!(
        "flowgate-dashboard-exprs-{tag}-{}.json",
        std::process::id()
    ));
    // YAML is a superset of JSON: promtool reads this file as a rules file.
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let mut command = Command::new(promtool());
    command.args(["check", "rules"]).arg(&path);
    let result = run(command);
    let _ = std::fs::remove_file(&path);
    result
}

#[test]
fn every_dashboard_expression_parses_as_promql() {
    let mut total = 0;
    for name in DASHBOARDS {
        let d = dashboard(name);
        let vars = variables(&d);
        let exprs: Vec<String> = exprs(&d).iter().map(|e| substitute(e, &vars)).collect();
        assert!(exprs.len() >= 5, "{name}: only {} expressions", exprs.len());
        if let Err(out) = promtool_parses(name.trim_end_matches(".json"), &exprs) {
            panic!("{name}: promtool rejected an expression:\n{out}");
        }
        total += exprs.len();
    }
    println!("{total} dashboard expressions parse as PromQL");
}

#[test]
fn the_parse_check_rejects_broken_promql() {
    let broken = vec!["sum(rate(flowgate_verdicts_total[5m])".to_owned()];
    assert!(promtool_parses("broken", &broken).is_err());
    let unsubstituted = vec!["rate(flowgate_verdicts_total[$__rate_interval])".to_owned()];
    assert!(promtool_parses("unsubstituted", &unsubstituted).is_err());
}

#[test]
fn dashboards_and_alerts_use_only_metrics_the_agent_exports() {
    let exported = exported_metrics();
    for family in [
        "flowgate_verdicts_total",
        "flowgate_events_lost_total",
        "flowgate_policy_apply_seconds_bucket",
        "flowgate_policy_generation",
    ] {
        assert!(exported.contains(family), "{family} not in {exported:?}");
    }
    let mut all: Vec<String> = DASHBOARDS
        .iter()
        .flat_map(|n| exprs(&dashboard(n)))
        .collect();
    all.extend(alert_exprs());
    // Variable queries name metrics too: label_values(<selector>, <label>).
    for name in DASHBOARDS {
        for var in dashboard(name)["templating"]["list"].as_array().unwrap() {
            if let Some(q) = var["query"]["query"].as_str() {
                all.push(q.to_owned());
            }
        }
    }
    let unknown = unknown_metrics(&all, &exported);
    assert!(
        unknown.is_empty(),
        "not exported by the agent: {unknown:#?}"
    );
    let used: BTreeSet<String> = all.iter().flat_map(|e| flowgate_names(e)).collect();
    println!(
        "{} expressions use {} of {} exported series names",
        all.len(),
        used.len(),
        exported.len()
    );
}

#[test]
fn the_metric_check_rejects_a_metric_the_agent_does_not_export() {
    let exported = exported_metrics();
    let exprs = vec![
        "sum(rate(flowgate_verdicts_total[5m]))".to_owned(),
        "sum(rate(flowgate_map_fill_ratio_bucket[5m]))".to_owned(),
    ];
    let unknown = unknown_metrics(&exprs, &exported);
    assert_eq!(unknown.len(), 1, "{unknown:?}");
    assert!(unknown[0].starts_with("flowgate_map_fill_ratio_bucket"));
}

#[test]
fn docs_metrics_lists_exactly_the_exported_families() {
    let docs = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let documented: BTreeSet<String> = docs
        .lines()
        .filter(|l| l.starts_with("### `flowgate_"))
        .map(|l| {
            l.trim_start_matches("### `")
                .trim_end_matches('`')
                .to_owned()
        })
        .collect();
    let exported: BTreeSet<String> = exported_metrics()
        .into_iter()
        .filter(|n| !n.ends_with("_bucket") && !n.ends_with("_sum") && !n.ends_with("_count"))
        .collect();
    let histograms: BTreeSet<String> = exported_metrics()
        .into_iter()
        .filter_map(|n| n.strip_suffix("_bucket").map(str::to_owned))
        .collect();
    let families: BTreeSet<String> = exported.union(&histograms).cloned().collect();
    assert_eq!(
        documented, families,
        "docs/metrics.md sections vs the agent's registry"
    );
}

#[test]
fn dashboards_are_well_formed() {
    let mut uids = BTreeSet::new();
    for name in DASHBOARDS {
        let d = dashboard(name);
        let uid = d["uid"].as_str().expect("uid");
        assert!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
        assert!(
            d["title"]
                .as_str()
                .is_some_and(|t| t.starts_with("flowgate")),
            "{name}: title"
        );
        let vars = variables(&d);
        assert!(
            vars.contains("$datasource"),
            "{name}: no datasource variable"
        );
        let mut ids = BTreeSet::new();
        for panel in panels(&d) {
            let id = panel["id"].as_u64().expect("panel id");
            assert!(ids.insert(id), "{name}: panel id {id} twice");
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
            assert!(
                x + w <= 24,
                "{name}: panel {id} overflows the 24-column grid"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "{name}: panel {id}"
            );
            let title = panel["title"].as_str().unwrap_or_default();
            assert!(
                !panel["description"].as_str().unwrap_or_default().is_empty(),
                "{name}: panel '{title}' has no description"
            );
            for target in panel["targets"].as_array().expect("targets") {
                assert_eq!(
                    target["datasource"]["uid"], "${datasource}",
                    "{name}: panel {id}"
                );
                let expr = target["expr"].as_str().unwrap();
                for used in expr.split('$').skip(1) {
                    let var: String = used
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    let var = format!("${var}");
                    assert!(
                        vars.contains(&var) || BUILTINS.iter().any(|(b, _)| *b == var),
                        "{name}: panel '{title}' uses undefined {var}"
                    );
                }
            }
        }
    }
}

/// `tsc --noEmit --strict` on `tools/grafana-schema/generated/<tag>-*.ts`, one file per
/// `(name, json)`, each `export const dashboard: DashboardJson = <json>;`. Err carries tsc's
/// output.
fn grafana_schema_check(tag: &str, dashboards: &[(&str, String)]) -> Result<(), String> {
    let tools = root().join("tools/grafana-schema");
    let tsc = tools.join("node_modules/.bin/tsc");
    assert!(
        tsc.is_file()
            && tools
                .join("node_modules/@grafana/schema/package.json")
                .is_file(),
        "{} is missing: scripts/bootstrap.sh installs @grafana/schema and typescript (npm ci)",
        tsc.display()
    );
    let dir = tools.join("generated");
    std::fs::create_dir_all(&dir).unwrap();
    let mut files = Vec::new();
    for (name, json) in dashboards {
        let path = dir.join(format!("{tag}-{}.ts", name.trim_end_matches(".json")));
        let source = format!(
            "import type {{ DashboardJson }} from \"../dashboard-json\";\n\
             export const dashboard: DashboardJson = {json};\n"
        );
        std::fs::write(&path, source).unwrap();
        files.push(path);
    }
    let mut command = Command::new(&tsc);
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
        .args(&files)
        .current_dir(&tools);
    let result = run(command);
    for f in &files {
        let _ = std::fs::remove_file(f);
    }
    result
}

#[test]
fn dashboards_type_check_against_grafana_schema() {
    let dashboards: Vec<(&str, String)> = DASHBOARDS
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(root().join("dashboards").join(n)).unwrap();
            (*n, text)
        })
        .collect();
    if let Err(out) = grafana_schema_check("ok", &dashboards) {
        panic!("the dashboards do not type-check against @grafana/schema:\n{out}");
    }
}

#[test]
fn the_schema_check_rejects_unknown_keys_and_wrong_values() {
    let base = dashboard(DASHBOARDS[0]);
    let mut unknown_key = base.clone();
    unknown_key["graphTooltipp"] = Value::from(1);
    let mut wrong_value = base.clone();
    wrong_value["panels"][1]["fieldConfig"]["defaults"]["color"] =
        serde_json::json!({"mode": "traffic-light"});
    let mut wrong_type = base;
    wrong_type["refresh"] = Value::from(30);
    for (name, broken, expected) in [
        ("unknown-key", unknown_key, "graphTooltipp"),
        ("wrong-value", wrong_value, "traffic-light"),
        ("wrong-type", wrong_type, "TS2322"),
    ] {
        match grafana_schema_check(&format!("broken-{name}"), &[(name, broken.to_string())]) {
            Ok(()) => panic!("{name}: tsc accepted a broken dashboard"),
            Err(out) => assert!(
                out.contains(expected),
                "{name}: tsc failed otherwise:\n{out}"
            ),
        }
    }
}
