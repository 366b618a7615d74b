//! The conformance scenarios (tests/conformance/scenarios/*.yaml) as data: parsing, the e2e
//! model with a scenario's relabels, and the expected truth table of a case. Shared by the
//! policy crate's conformance test and the agent's lab test (included there by path).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flowgate_policy::{Cluster, Manifests};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub upstream: String,
    #[serde(default)]
    pub relabel: Vec<Relabel>,
    pub policies: String,
    pub cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Relabel {
    pub namespace: String,
    pub pod: Option<String>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    pub port: u16,
    pub protocol: String,
    pub default: bool,
    #[serde(default)]
    pub expect: Vec<Expect>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub from: Sel,
    pub to: Sel,
    pub connected: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sel {
    pub namespace: Option<String>,
    pub pod: Option<String>,
}

impl Sel {
    pub fn matches(&self, key: &str) -> bool {
        let (ns, pod) = key.split_once('/').unwrap_or((key, ""));
        self.namespace.as_deref().is_none_or(|n| n == ns)
            && self.pod.as_deref().is_none_or(|p| p == pod)
    }
}

/// The conformance data directory (found from either crate of the workspace).
pub fn dir() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let own = here.join("tests/conformance");
    if own.is_dir() {
        own
    } else {
        here.join("../policy/tests/conformance")
    }
}

/// The model with a scenario's label changes applied to the raw objects.
pub fn model_yaml(relabel: &[Relabel]) -> String {
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

pub fn load(scenario: &Scenario) -> Cluster {
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

/// Every scenario, sorted by file name.
pub fn all() -> Vec<Scenario> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir().join("scenarios"))
        .expect("scenarios dir must exist")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            serde_saphyr::from_str(&text)
                .unwrap_or_else(|e| panic!("{}: bad scenario file: {e}", file.display()))
        })
        .collect()
}

impl Case {
    /// Whether `from` may reach `to` (pod keys) in this case's expected table.
    pub fn expected(&self, from: &str, to: &str) -> bool {
        let mut connected = self.default;
        for e in &self.expect {
            if e.from.matches(from) && e.to.matches(to) {
                connected = e.connected;
            }
        }
        connected
    }
}
