//! The watchers against kube-rs's `tower_test` mock API: the exact request sequence (list,
//! then watch from the listed resourceVersion with bookmarks, then a relist after `410 Gone`)
//! and what reaches the store: objects, a delete missed while the watch was gone, a rejected
//! object counted by kind and name. No network, no root.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::{Request, Response};
use flowgate::k8s::store::Kind;
use flowgate::k8s::watch::{self, Source, SourceEvents};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

#[derive(Default)]
struct Counted {
    rejected: AtomicU64,
    errors: AtomicU64,
    kinds: Mutex<Vec<Kind>>,
}

impl SourceEvents for Counted {
    fn rejected(&self, kind: Kind) {
        self.rejected.fetch_add(1, Ordering::SeqCst);
        self.kinds.lock().unwrap().push(kind);
    }

    fn watch_error(&self, _kind: Kind) {
        self.errors.fetch_add(1, Ordering::SeqCst);
    }
}

fn query(request: &Request<Body>) -> BTreeMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn pod(name: &str, ip: &str, rv: u64) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": "a", "name": name, "resourceVersion": rv.to_string(),
                        "labels": {"app": name}},
           "spec": {"nodeName": "n1", "containers": [{"name": "c"}]},
           "status": {"phase": "Running", "podIP": ip}})
}

/// A pod the typed decoder cannot read (a port as a word): it must cost only itself.
fn garbled() -> Value {
    let mut p = pod("garbled", "10.0.0.9", 7);
    p["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}]);
    p
}

fn body(value: &Value) -> Response<Body> {
    Response::builder()
        .body(Body::from(serde_json::to_vec(value).unwrap()))
        .unwrap()
}

/// A watch response: newline-delimited events, then the stream ends.
fn events(events: &[Value]) -> Response<Body> {
    let mut text = String::new();
    for e in events {
        text.push_str(&e.to_string());
        text.push('\n');
    }
    Response::builder()
        .body(Body::from(text.into_bytes()))
        .unwrap()
}

/// The next request, which must be a GET of `path`; returns it and its responder.
async fn expect(
    handle: &mut Handle,
    path: &str,
) -> (
    Request<Body>,
    tower_test::mock::SendResponse<Response<Body>>,
) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(30), handle.next_request())
        .await
        .unwrap_or_else(|_| panic!("no request for {path} within 30 s"))
        .expect("the client is still there");
    assert_eq!(request.method(), "GET");
    assert_eq!(request.uri().path(), path, "{}", request.uri());
    (request, send)
}

fn pod_names(source: &Source) -> Vec<String> {
    source
        .lock()
        .local_pods("n1")
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

#[tokio::test]
async fn list_then_watch_from_its_version_then_relist_after_410_gone() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let source = Source::new();
    let counted = Arc::new(Counted::default());
    tokio::spawn(watch::run::<core::Pod>(
        client,
        Arc::clone(&source),
        Arc::clone(&counted) as Arc<dyn SourceEvents>,
    ));

    // 1. The initial list (paged, no watch).
    let (request, send) = expect(&mut handle, "/api/v1/pods").await;
    let q = query(&request);
    assert!(!q.contains_key("watch"), "a list first: {q:?}");
    send.send_response(body(&json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "10"},
        "items": [pod("p1", "10.0.0.1", 5), pod("p2", "10.0.0.2", 6), garbled()]})));

    // 2. A watch from the listed resourceVersion, asking for bookmarks. It brings a new pod,
    // a bookmark, an invalid pod (rejected, counted), then 410 Gone.
    let (request, send) = expect(&mut handle, "/api/v1/pods").await;
    let q = query(&request);
    assert_eq!(q.get("watch").map(String::as_str), Some("true"), "{q:?}");
    assert_eq!(
        q.get("resourceVersion").map(String::as_str),
        Some("10"),
        "{q:?}"
    );
    assert_eq!(
        q.get("allowWatchBookmarks").map(String::as_str),
        Some("true"),
        "{q:?}"
    );
    let mut bad = pod("bad", "10.0.0.300", 12);
    bad["metadata"]["resourceVersion"] = json!("12");
    send.send_response(events(&[
        json!({"type": "ADDED", "object": pod("p3", "10.0.0.3", 11)}),
        json!({"type": "ADDED", "object": bad}),
        json!({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"resourceVersion": "13"}}}),
        json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1",
               "metadata": {}, "status": "Failure", "message": "too old resource version",
               "reason": "Expired", "code": 410}}),
    ]));

    // 3. 410: the watcher relists (p2 was deleted meanwhile, and no DELETED event came).
    let (request, send) = expect(&mut handle, "/api/v1/pods").await;
    let q = query(&request);
    assert!(
        !q.contains_key("watch"),
        "a relist after 410, not a watch: {q:?}"
    );
    assert_eq!(
        pod_names(&source),
        ["a/p1", "a/p2", "a/p3"],
        "the watch events reached the store before the relist"
    );
    assert!(
        source.lock().synced_kind(Kind::Pod),
        "the first list completed"
    );
    send.send_response(body(&json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "20"},
        "items": [pod("p1", "10.0.0.1", 5), pod("p3", "10.0.0.3", 11)]})));

    // 4. Watching again from the relisted version; by then the relist replaced the kind.
    let (request, send) = expect(&mut handle, "/api/v1/pods").await;
    let q = query(&request);
    assert_eq!(
        q.get("resourceVersion").map(String::as_str),
        Some("20"),
        "{q:?}"
    );
    assert_eq!(
        pod_names(&source),
        ["a/p1", "a/p3"],
        "the missed delete is applied"
    );
    assert_eq!(
        counted.rejected.load(Ordering::SeqCst),
        2,
        "the undecodable pod of the list and the invalid pod of the watch are counted"
    );
    assert_eq!(*counted.kinds.lock().unwrap(), [Kind::Pod, Kind::Pod]);
    assert_eq!(source.lock().rejected, [0, 2, 0]);
    assert!(
        counted.errors.load(Ordering::SeqCst) >= 1,
        "the 410 is counted as a watch error"
    );
    drop(send);
}

#[tokio::test]
async fn network_policies_are_watched_cluster_wide_and_deletes_apply() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let source = Source::new();
    tokio::spawn(watch::run::<net::NetworkPolicy>(
        client,
        Arc::clone(&source),
        Arc::new(Counted::default()) as Arc<dyn SourceEvents>,
    ));
    let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "a", "name": "deny", "resourceVersion": "3"},
        "spec": {"podSelector": {}}});
    let path = "/apis/networking.k8s.io/v1/networkpolicies";
    let (_, send) = expect(&mut handle, path).await;
    send.send_response(body(&json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
        "metadata": {"resourceVersion": "3"}, "items": [policy]})));
    let (_, send) = expect(&mut handle, path).await;
    assert_eq!(source.lock().counts().2, 1);
    let mut deleted = policy.clone();
    deleted["metadata"]["resourceVersion"] = json!("4");
    send.send_response(events(&[json!({"type": "DELETED", "object": deleted})]));
    // The stream ended: the next watch resumes from the deleted object's version.
    let (request, _send) = expect(&mut handle, path).await;
    assert_eq!(
        query(&request).get("resourceVersion").map(String::as_str),
        Some("4")
    );
    assert_eq!(source.lock().counts().2, 0, "the delete reached the store");
}
