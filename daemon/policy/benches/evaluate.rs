//! Scale benchmark of flowgate-policy (`make bench`; results and method in docs/benchmarks.md).
//!
//! A synthetic cluster is generated deterministically from a fixed seed: 2,000 namespaces,
//! 50,000 pods and 10,000 NetworkPolicies, written out as YAML manifests (one multi-document
//! file per namespace, the way a manifests directory looks). Measured:
//!
//! - `load`: YAML text -> `Manifests::add_texts` -> `Cluster::from_manifests` (the real path), and
//!   `Cluster::build` from already-validated model objects. Target: under 2 s.
//! - `load_phases`: where load time goes (YAML parse, k8s-openapi decode, validate, index), and
//!   a baseline: the same objects parsed from JSON by serde_json.
//! - `per_flow`: 100,000 random flows, each timed alone (`sample_size = 1`), so divan's median is
//!   the median per flow. Target: under 20 µs. Baselines in the same run: a flow between
//!   namespaces without policies, and the `pod_by_ip` HashMap lookup.
//! - `all_flows`: the same flows back to back, as throughput (mean per flow, drop included).

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::ItemsCount;
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Flow, Manifests, PodId, Reason, Verdict};
use serde_json::Value;

const NAMESPACES: usize = 2_000;
const PODS: usize = 50_000;
const POLICIES: usize = 10_000;
const FLOWS: usize = 100_000;
const NODES: usize = 400;
const TEAMS: usize = 200;
/// "flowgate" in ASCII; change it and every figure in docs/benchmarks.md is for another cluster.
const SEED: u64 = 0x666c_6f77_6761_7465;

fn main() {
    FIXTURE.report();
    divan::main();
}

// The synthetic cluster (generator and YAML rendering) and the random flows, kept in files of
// their own and included here, so the benchmark stays one module.
include!("synthetic/cluster.rs");
include!("synthetic/render.rs");
include!("synthetic/flows.rs");

/// The YAML options `load.rs` parses with (YAML 1.2 core booleans).
fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! { strict_booleans: true }
}

/// Every document parsed to a JSON value (input of the decode and validate phases).
static VALUES: LazyLock<Vec<Value>> = LazyLock::new(|| {
    FIXTURE
        .documents
        .iter()
        .filter_map(|doc| serde_saphyr::from_str_with_options::<Value>(doc, yaml_options()).ok())
        .collect()
});

/// The same documents as compact JSON (input of the JSON-parse baseline).
static JSON_DOCUMENTS: LazyLock<Vec<String>> = LazyLock::new(|| {
    VALUES
        .iter()
        .map(|value| serde_json::to_string(value).unwrap_or_default())
        .collect()
});

fn median(mut values: Vec<usize>) -> usize {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

impl Fixture {
    /// What was generated and how the flows decide, so the figures can be read in context.
    fn report(&self) {
        let bytes: usize = self.files.iter().map(|(_, t)| t.len()).sum();
        let c = &self.cluster;
        let policied = c
            .namespaces()
            .filter(|n| c.policies_in(&n.name).next().is_some())
            .count();
        let most = c
            .namespaces()
            .map(|n| c.policies_in(&n.name).count())
            .max()
            .unwrap_or(0);
        eprintln!(
            "fixture: {} namespaces ({policied} with policies, at most {most} in one), {} pods, \
             {} policies; {} YAML documents in {} files, {:.1} MiB",
            c.namespaces().count(),
            c.pods().count(),
            c.policies().count(),
            self.documents.len(),
            self.files.len(),
            bytes as f64 / (1024.0 * 1024.0),
        );
        for (label, flows) in [
            ("mixed", &self.flows.mixed),
            ("pod->pod", &self.flows.pod_to_pod),
            ("pod->external", &self.flows.pod_to_external),
            ("external->pod", &self.flows.external_to_pod),
            ("baseline unpoliced", &self.flows.unpoliced),
        ] {
            let mut allowed = 0;
            let mut egress_isolated = 0;
            let mut ingress_isolated = 0;
            let mut considered = Vec::with_capacity(flows.len());
            let isolated = |s: &flowgate_policy::SideDecision| {
                usize::from(matches!(s.reason, Reason::RuleAllow | Reason::DefaultDeny))
            };
            for flow in flows {
                let d = flowgate_policy::evaluate(c, flow);
                allowed += usize::from(d.verdict == Verdict::Allow);
                egress_isolated += isolated(&d.egress);
                ingress_isolated += isolated(&d.ingress);
                // Policies the evaluator walks: those in the source's and destination's namespaces.
                let n = [flow.src_pod, flow.dst_pod]
                    .into_iter()
                    .flatten()
                    .map(|id| c.policies_in(&c.pod(id).namespace).count())
                    .sum();
                considered.push(n);
            }
            let pct = |n: usize| 100.0 * n as f64 / flows.len().max(1) as f64;
            eprintln!(
                "flows {label}: {} flows, {:.1}% allowed; source egress isolated in {:.1}%, \
                 destination ingress isolated in {:.1}%; policies in the two namespaces: \
                 median {}, max {}",
                flows.len(),
                pct(allowed),
                pct(egress_isolated),
                pct(ingress_isolated),
                median(considered.clone()),
                considered.iter().max().copied().unwrap_or(0),
            );
        }
        let share = |protocol: Protocol| {
            let n = self
                .flows
                .mixed
                .iter()
                .filter(|f| f.protocol == protocol)
                .count();
            100.0 * n as f64 / self.flows.mixed.len().max(1) as f64
        };
        eprintln!(
            "flows mixed by protocol: TCP {:.1}%, UDP {:.1}%, SCTP {:.1}%",
            share(Protocol::Tcp),
            share(Protocol::Udp),
            share(Protocol::Sctp)
        );
        assert!(
            self.flows
                .unpoliced
                .iter()
                .all(|f| flowgate_policy::evaluate(c, f).verdict == Verdict::Allow),
            "baseline flows must be unpoliced"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (a) Load + index. Target: under 2 s.

#[divan::bench_group(sample_count = 5, sample_size = 1)]
mod load {
    use super::*;

    /// The realistic path, as `flowgate --manifests DIR` takes it: every namespace's file
    /// through `add_texts` (documents parsed on all cores), then `from_manifests`.
    #[divan::bench]
    fn yaml_to_cluster(bencher: Bencher) {
        let files: Vec<(&str, &str)> = FIXTURE
            .files
            .iter()
            .map(|(s, t)| (s.as_str(), t.as_str()))
            .collect();
        bencher.bench_local(|| {
            let mut manifests = Manifests::new();
            manifests.add_texts(&files);
            let cluster = Cluster::from_manifests(&mut manifests);
            (manifests, cluster)
        });
    }

    /// The same, one file at a time on one core (`add_text` per file): the single-core cost.
    #[divan::bench]
    fn yaml_to_cluster_one_core(bencher: Bencher) {
        let files = &FIXTURE.files;
        bencher.bench_local(|| {
            let mut manifests = Manifests::new();
            for (source, text) in files {
                manifests.add_text(source, text);
            }
            let cluster = Cluster::from_manifests(&mut manifests);
            (manifests, cluster)
        });
    }

    /// `Cluster::build` from already-validated model objects (cloned outside the timing).
    #[divan::bench]
    fn model_to_cluster(bencher: Bencher) {
        let m = &FIXTURE.manifests;
        bencher
            .with_inputs(|| (m.namespaces.clone(), m.pods.clone(), m.policies.clone()))
            .bench_local_values(|(namespaces, pods, policies)| {
                Cluster::build(namespaces, pods, policies)
            });
    }
}

/// Where `yaml_to_cluster` spends its time, phase by phase.
#[divan::bench_group(sample_count = 5, sample_size = 1)]
mod load_phases {
    use super::*;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::networking::v1 as net;

    enum Kind {
        Namespace,
        Pod,
        Policy,
    }

    impl Kind {
        fn of(value: &Value) -> Self {
            match value.get("kind").and_then(Value::as_str) {
                Some("Pod") => Self::Pod,
                Some("Namespace") => Self::Namespace,
                _ => Self::Policy,
            }
        }
    }

    /// `add_text` alone: split, YAML parse, decode, validate, record.
    #[divan::bench]
    fn add_text(bencher: Bencher) {
        let files = &FIXTURE.files;
        bencher.bench_local(|| {
            let mut manifests = Manifests::new();
            for (source, text) in files {
                manifests.add_text(source, text);
            }
            manifests
        });
    }

    /// YAML text -> `serde_json::Value` with serde-saphyr, one document at a time, as `add_text`.
    #[divan::bench]
    fn yaml_parse(bencher: Bencher) {
        let documents = &FIXTURE.documents;
        bencher.bench_local(|| {
            documents
                .iter()
                .filter_map(|doc| {
                    serde_saphyr::from_str_with_options::<Value>(doc, yaml_options()).ok()
                })
                .collect::<Vec<_>>()
        });
    }

    /// Baseline: the same objects as JSON text -> `Value` with serde_json (what a JSON input,
    /// e.g. `kubectl get -o json` or the API server, could cost to parse).
    #[divan::bench]
    fn json_parse_baseline(bencher: Bencher) {
        let documents = &*JSON_DOCUMENTS;
        bencher.bench_local(|| {
            documents
                .iter()
                .filter_map(|doc| serde_json::from_str::<Value>(doc).ok())
                .collect::<Vec<_>>()
        });
    }

    /// `Value` -> k8s-openapi structs only (serde_json, without serde_path_to_error).
    #[divan::bench]
    fn k8s_decode(bencher: Bencher) {
        let values = &*VALUES;
        bencher
            .with_inputs(|| values.clone())
            .bench_local_values(|values| {
                let mut decoded = 0usize;
                for value in values {
                    let ok = match Kind::of(&value) {
                        Kind::Pod => serde_json::from_value::<core::Pod>(value).is_ok(),
                        Kind::Namespace => serde_json::from_value::<core::Namespace>(value).is_ok(),
                        Kind::Policy => serde_json::from_value::<net::NetworkPolicy>(value).is_ok(),
                    };
                    decoded += usize::from(ok);
                }
                decoded
            });
    }

    /// `Value` -> k8s-openapi structs through `serde_path_to_error`, as `validate` decodes.
    #[divan::bench]
    fn k8s_decode_tracked(bencher: Bencher) {
        fn tracked<T: serde::de::DeserializeOwned>(value: Value) -> bool {
            serde_path_to_error::deserialize::<_, T>(value).is_ok()
        }
        let values = &*VALUES;
        bencher
            .with_inputs(|| values.clone())
            .bench_local_values(|values| {
                let mut decoded = 0usize;
                for value in values {
                    let ok = match Kind::of(&value) {
                        Kind::Pod => tracked::<core::Pod>(value),
                        Kind::Namespace => tracked::<core::Namespace>(value),
                        Kind::Policy => tracked::<net::NetworkPolicy>(value),
                    };
                    decoded += usize::from(ok);
                }
                decoded
            });
    }

    /// `Value` -> model: `validate::{namespace, pod, network_policy}` (decode + checks).
    #[divan::bench]
    fn validate(bencher: Bencher) {
        use flowgate_policy::validate;
        let values = &*VALUES;
        bencher
            .with_inputs(|| values.clone())
            .bench_local_values(|values| {
                let mut valid = 0usize;
                for value in values {
                    let ok = match Kind::of(&value) {
                        Kind::Pod => validate::pod(value).is_ok(),
                        Kind::Namespace => validate::namespace(value).is_ok(),
                        Kind::Policy => validate::network_policy(value).is_ok(),
                    };
                    valid += usize::from(ok);
                }
                valid
            });
    }

    /// `from_manifests` on loaded manifests: clones the three lists, then `build`.
    #[divan::bench]
    fn from_manifests(bencher: Bencher) {
        let m = &FIXTURE.manifests;
        bencher
            .with_inputs(|| m.clone())
            .bench_local_refs(Cluster::from_manifests);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) Evaluate, one flow per sample: divan's median is the median per flow. Target: < 20 µs.

fn flows_of(class: &str) -> &'static [Flow] {
    let f = &FIXTURE.flows;
    match class {
        "pod->pod" => &f.pod_to_pod,
        "pod->external" => &f.pod_to_external,
        "external->pod" => &f.external_to_pod,
        "baseline unpoliced" => &f.unpoliced,
        _ => &f.mixed,
    }
}

/// Hands out `flows` one per call, cycling.
fn cycle(flows: &'static [Flow]) -> impl FnMut() -> Flow {
    let mut next = 0;
    move || {
        let flow = flows[next % flows.len()];
        next += 1;
        flow
    }
}

#[divan::bench_group(sample_count = 100_000, sample_size = 1)]
mod per_flow {
    use super::*;

    /// `evaluate` on each of the 100,000 flows (or one class of them), timed alone.
    #[divan::bench(args = ["mixed", "pod->pod", "pod->external", "external->pod"])]
    fn evaluate(bencher: Bencher, class: &str) {
        let cluster = &FIXTURE.cluster;
        bencher
            .with_inputs(cycle(flows_of(class)))
            .bench_local_refs(|flow| flowgate_policy::evaluate(cluster, flow));
    }

    /// Baseline: `evaluate` on pod->pod flows between namespaces that have no policies.
    #[divan::bench]
    fn baseline_unpoliced(bencher: Bencher) {
        let cluster = &FIXTURE.cluster;
        bencher
            .with_inputs(cycle(flows_of("baseline unpoliced")))
            .bench_local_refs(|flow| flowgate_policy::evaluate(cluster, flow));
    }

    /// Baseline: the HashMap lookup of a pod by IP (`Cluster::pod_by_ip`), the floor of any
    /// per-flow work.
    #[divan::bench]
    fn baseline_pod_by_ip(bencher: Bencher) {
        let cluster = &FIXTURE.cluster;
        bencher
            .with_inputs(cycle(flows_of("mixed")))
            .bench_local_refs(|flow| cluster.pod_by_ip(flow.dst_ip));
    }
}

/// The same flows back to back: throughput, mean per flow (dropping each `Decision` included).
#[divan::bench_group(sample_count = 10, sample_size = 1)]
mod all_flows {
    use super::*;

    fn run(bencher: Bencher, flows: &'static [Flow]) {
        let cluster = &FIXTURE.cluster;
        bencher
            .counter(ItemsCount::new(flows.len()))
            .bench_local(|| {
                flows
                    .iter()
                    .filter(|f| flowgate_policy::evaluate(cluster, f).verdict == Verdict::Allow)
                    .count()
            });
    }

    #[divan::bench]
    fn evaluate_mixed(bencher: Bencher) {
        run(bencher, flows_of("mixed"));
    }

    #[divan::bench]
    fn baseline_unpoliced(bencher: Bencher) {
        run(bencher, flows_of("baseline unpoliced"));
    }

    #[divan::bench]
    fn baseline_pod_by_ip(bencher: Bencher) {
        let cluster = &FIXTURE.cluster;
        let flows = flows_of("mixed");
        bencher
            .counter(ItemsCount::new(flows.len()))
            .bench_local(|| {
                flows
                    .iter()
                    .filter(|f| cluster.pod_by_ip(f.dst_ip).is_some())
                    .count()
            });
    }
}
