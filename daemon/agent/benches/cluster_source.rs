//! The Kubernetes-mode cluster store at 50,000 pods: what a watch event costs and what holding
//! the cluster costs, against kube-rs's own `reflector` store of full Pod objects measured in
//! the same run (the usual way to keep a watched cluster in memory). Run with
//! `make bench-source`; results in docs/benchmarks.md.
//!
//! - ingest: JSON bytes of one watch event's Pod (as the API server sends it: managedFields,
//!   conditions, container specs) -> the agent's path (an untyped object, then decoded and
//!   validated on its own) -> store; the baseline decodes a typed Pod into a reflector.
//!   Median over rounds of all pods.
//! - memory: RSS held by the store after every pod is in, measured after `malloc_trim`, each
//!   store built and measured alone.
//! - the store is the policy index itself (kept per event, so a recompile takes it as it is);
//!   what remains O(cluster) per apply is the copy of it the HTTP API keeps (`clone`).

#[path = "common/rss.rs"]
mod rss;

use std::time::Instant;

use flowgate::k8s::store::ClusterStore;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector;
use kube::runtime::watcher::Event;
use rss::rss_kib;

const PODS: usize = 50_000;
const ROUNDS: usize = 5;

fn trim() {
    // SAFETY: malloc_trim has no preconditions; it only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// A pod as the API server sends it in a watch event (sizes like a small Deployment's pod).
fn pod_json(i: usize) -> Vec<u8> {
    let ns = format!("ns-{}", i % 2_000);
    let app = format!("app-{}", i % 500);
    let ip = format!("10.{}.{}.{}", 64 + i / 65_536, (i / 256) % 256, i % 256);
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{app}-7d9f8c6b5-{i:05x}"), "namespace": ns,
            "uid": format!("6f1c2a3e-0000-4000-8000-{i:012x}"), "resourceVersion": format!("{}", 1_000 + i),
            "creationTimestamp": "2026-11-28T10:00:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9f8c6b5", "tier": if i.is_multiple_of(3) { "web" } else { "api" }},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-27T09:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f8c6b5"),
                                 "uid": "0b5e5d1c-1111-4222-8333-444455556666", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1", "time": "2026-11-28T10:00:00Z",
                 "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}},
                 "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:ports": {}}}}}},
                {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-28T10:00:05Z",
                 "fieldsType": "FieldsV1", "subresource": "status",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:podIP": {}, "f:podIPs": {}}}}
            ]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 100), "serviceAccountName": "default", "restartPolicy": "Always",
            "containers": [{"name": "app", "image": format!("registry.example.com/{app}:1.2.3"),
                            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                            "env": [{"name": "LOG_LEVEL", "value": "info"}]}]
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.10",
            "startTime": "2026-11-28T10:00:01Z", "qosClass": "Burstable",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-28T10:00:05Z"},
                           {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-28T10:00:00Z"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "x", "imageID": "y",
                                   "containerID": "containerd://abc", "started": true,
                                   "state": {"running": {"startedAt": "2026-11-28T10:00:03Z"}}}]
        }
    }))
    .unwrap_or_default()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn decode(bytes: &[u8]) -> Pod {
    serde_json::from_slice(bytes).unwrap_or_default()
}

/// The agent's watch is untyped (`DynamicObject`); each object is decoded on its own.
fn decode_dynamic(bytes: &[u8]) -> DynamicObject {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| DynamicObject::new("", &ApiResource::erase::<Pod>(&())))
}

fn main() {
    eprintln!("generating {PODS} pod events ...");
    let events: Vec<Vec<u8>> = (0..PODS).map(pod_json).collect();
    let bytes: usize = events.iter().map(Vec::len).sum();
    println!(
        "{PODS} pods, {:.0} bytes of JSON each on average",
        bytes as f64 / PODS as f64
    );

    // Ingest, interleaved rounds: flowgate's store vs kube's reflector writer.
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut store = ClusterStore::new();
        let now = Instant::now();
        let started = Instant::now();
        for e in &events {
            store.handle_dynamic::<Pod>(Event::Apply(decode_dynamic(e)), now);
        }
        ours.push(started.elapsed().as_secs_f64() * 1e9 / PODS as f64);
        drop(store);

        let (reader, mut writer) = reflector::store::<Pod>();
        let started = Instant::now();
        for e in &events {
            writer.apply_watcher_event(&Event::Apply(decode(e)));
        }
        theirs.push(started.elapsed().as_secs_f64() * 1e9 / PODS as f64);
        drop((reader, writer));
    }
    let (ours_ns, theirs_ns) = (median(ours), median(theirs));

    // Memory: each store alone, after a trim.
    trim();
    let base = rss_kib();
    let mut store = ClusterStore::new();
    let now = Instant::now();
    for e in &events {
        store.handle_dynamic::<Pod>(Event::Apply(decode_dynamic(e)), now);
    }
    trim();
    let ours_kib = rss_kib().saturating_sub(base);
    let mut take = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let cluster = store.cluster().clone();
        take.push(started.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(cluster);
    }
    drop(store);
    trim();
    let base = rss_kib();
    let (reader, mut writer) = reflector::store::<Pod>();
    for e in &events {
        writer.apply_watcher_event(&Event::Apply(decode(e)));
    }
    trim();
    let theirs_kib = rss_kib().saturating_sub(base);
    std::hint::black_box(reader.state().len());
    drop((reader, writer));

    println!("| measure | flowgate store | kube reflector (baseline) | ratio |");
    println!("|---|---:|---:|---:|");
    println!(
        "| ingest per pod event (median of {ROUNDS} rounds of {PODS}) | {:.1} µs | {:.1} µs | {:.2} |",
        ours_ns / 1e3,
        theirs_ns / 1e3,
        ours_ns / theirs_ns
    );
    println!(
        "| memory holding {PODS} pods (RSS) | {:.1} MiB | {:.1} MiB | {:.2} |",
        ours_kib as f64 / 1024.0,
        theirs_kib as f64 / 1024.0,
        ours_kib as f64 / theirs_kib.max(1) as f64
    );
    println!(
        "| copy of the policy index for the HTTP API (`cluster().clone()`, median) | {:.0} ms | | |",
        median(take)
    );
}
