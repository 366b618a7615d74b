//! A fake Kubernetes API server on loopback that speaks the real list/watch protocol for the
//! three kinds the agent watches (there is no real API server on this machine): `GET` of a
//! collection lists (`{kind}List` with `metadata.resourceVersion`); with `watch=true` it streams
//! newline-delimited watch events (`ADDED`/`MODIFIED`/`DELETED`, `BOOKMARK` when asked for)
//! from the requested resourceVersion on, and answers a resourceVersion older than its history
//! with an `ERROR` event carrying `410 Expired`, as etcd compaction makes the real one do.
//!
//! ```text
//!   test ── set/delete/compact/cut_watches ──> FakeApi (objects, event log, rv counter)
//!   agent (kube-rs watcher) ── GET /api/v1/pods?... ──> list | watch stream
//! ```

#![allow(dead_code, reason = "each test binary uses a part")]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;

/// The collections served: (path, kind, apiVersion).
pub const RESOURCES: [(&str, &str, &str); 3] = [
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
    ),
];

#[derive(Debug, Clone)]
struct Change {
    rv: u64,
    kind: &'static str,
    kind_event: &'static str,
    object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    log: Vec<Change>,
    /// Watches from a resourceVersion below this get 410.
    oldest: u64,
    /// Requests seen: (kind, "list" | "watch", resourceVersion asked for).
    pub requests: Vec<(String, String, Option<String>)>,
    /// Bumped to end every open watch stream.
    cut: u64,
}

#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Mutex<Inner>>,
    tx: broadcast::Sender<Change>,
    cut_tx: broadcast::Sender<()>,
    /// While true, new watch requests wait (so a test can change things between a cut and the
    /// client's next watch).
    hold: Arc<tokio::sync::watch::Sender<bool>>,
    /// Kinds whose list requests wait (so a test can see the agent before it has synced).
    hold_lists: Arc<tokio::sync::watch::Sender<Vec<String>>>,
}

fn kind_of(object: &Value) -> &'static str {
    match object["kind"].as_str() {
        Some("Namespace") => "Namespace",
        Some("Pod") => "Pod",
        Some("NetworkPolicy") => "NetworkPolicy",
        other => panic!("the fake API server does not serve kind {other:?}"),
    }
}

fn key_of(object: &Value) -> (String, String, String) {
    let meta = &object["metadata"];
    (
        kind_of(object).to_owned(),
        meta["namespace"].as_str().unwrap_or_default().to_owned(),
        meta["name"]
            .as_str()
            .expect("objects have a name")
            .to_owned(),
    )
}

impl Default for FakeApi {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeApi {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
        let (cut_tx, _) = broadcast::channel(16);
        let (hold, _) = tokio::sync::watch::channel(false);
        let (hold_lists, _) = tokio::sync::watch::channel(Vec::new());
        Self {
            hold_lists: Arc::new(hold_lists),
            hold: Arc::new(hold),
            inner: Arc::new(Mutex::new(Inner {
                rv: 1,
                oldest: 0,
                ..Inner::default()
            })),
            tx,
            cut_tx,
        }
    }

    /// Creates or replaces an object (ADDED or MODIFIED to watchers).
    pub fn set(&self, mut object: Value) {
        let mut inner = self.inner.lock().unwrap();
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&object);
        let kind_event = if inner.objects.insert(key, object.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let change = Change {
            rv,
            kind: kind_of(&object),
            kind_event,
            object,
        };
        inner.log.push(change.clone());
        let _ = self.tx.send(change);
    }

    /// Deletes an object (DELETED to watchers).
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let mut inner = self.inner.lock().unwrap();
        let Some(mut object) =
            inner
                .objects
                .remove(&(kind.to_owned(), namespace.to_owned(), name.to_owned()))
        else {
            panic!("no {kind} {namespace}/{name} to delete");
        };
        inner.rv += 1;
        let rv = inner.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            kind: kind_of(&object),
            kind_event: "DELETED",
            object,
        };
        inner.log.push(change.clone());
        let _ = self.tx.send(change);
    }

    /// Forgets the event history, as etcd compaction does: a watch resuming from before now
    /// gets `410 Gone` and must relist.
    pub fn compact(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.oldest = inner.rv;
        inner.log.clear();
    }

    /// Ends every open watch stream (as an API server restart or a load balancer does).
    pub fn cut_watches(&self) {
        self.inner.lock().unwrap().cut += 1;
        let _ = self.cut_tx.send(());
    }

    /// Holds new watch requests until `release_watches`.
    pub fn hold_watches(&self) {
        self.hold.send_replace(true);
    }

    pub fn release_watches(&self) {
        self.hold.send_replace(false);
    }

    /// Holds list requests of `kinds` until `release_lists`.
    pub fn hold_lists_of(&self, kinds: &[&str]) {
        self.hold_lists
            .send_replace(kinds.iter().map(|k| (*k).to_owned()).collect());
    }

    pub fn release_lists(&self) {
        self.hold_lists.send_replace(Vec::new());
    }

    /// The requests seen so far: (kind, list|watch, resourceVersion).
    pub fn requests(&self) -> Vec<(String, String, Option<String>)> {
        self.inner.lock().unwrap().requests.clone()
    }

    pub fn lists_of(&self, kind: &str) -> usize {
        self.requests()
            .iter()
            .filter(|(k, what, _)| k == kind && what == "list")
            .count()
    }

    pub fn router(&self) -> Router {
        let mut router = Router::new();
        for (path, _, _) in RESOURCES {
            router = router.route(path, axum::routing::get(collection));
        }
        router.with_state(self.clone())
    }

    /// Serves on `listener` (already bound, e.g. inside a lab's node namespace) on a runtime
    /// of its own thread.
    pub fn serve(&self, listener: std::net::TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let router = self.router();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, router).await.unwrap();
            });
        });
    }
}

fn line(value: &Value) -> Result<bytes_like::Bytes, std::convert::Infallible> {
    let mut text = value.to_string();
    text.push('\n');
    Ok(bytes_like::Bytes::from(text))
}

mod bytes_like {
    pub use axum::body::Bytes;
}

async fn collection(
    State(api): State<FakeApi>,
    uri: Uri,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    let (_, kind, api_version) = RESOURCES
        .iter()
        .find(|(path, _, _)| *path == uri.path())
        .copied()
        .expect("routed paths only");
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    if watch {
        let mut held = api.hold.subscribe();
        let _ = held.wait_for(|hold| !*hold).await;
    } else {
        let mut held = api.hold_lists.subscribe();
        let _ = held
            .wait_for(|kinds| !kinds.iter().any(|k| k == kind))
            .await;
    }
    let rv = query.get("resourceVersion").cloned();
    let bookmarks = query
        .get("allowWatchBookmarks")
        .is_some_and(|b| b == "true");
    let mut inner = api.inner.lock().unwrap();
    inner.requests.push((
        kind.to_owned(),
        if watch { "watch" } else { "list" }.to_owned(),
        rv.clone(),
    ));
    if !watch {
        let items: Vec<Value> = inner
            .objects
            .iter()
            .filter(|((k, _, _), _)| k == kind)
            .map(|(_, v)| v.clone())
            .collect();
        let body = json!({
            "apiVersion": api_version,
            "kind": format!("{kind}List"),
            "metadata": {"resourceVersion": inner.rv.to_string()},
            "items": items,
        });
        return (StatusCode::OK, axum::Json(body)).into_response();
    }
    let from: u64 = rv.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
    let mut first: Vec<Value> = Vec::new();
    let expired = from < inner.oldest;
    if expired {
        first.push(json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("too old resource version: {from} ({})", inner.oldest),
            "reason": "Expired", "code": 410}}));
    } else {
        for c in inner.log.iter().filter(|c| c.kind == kind && c.rv > from) {
            first.push(json!({"type": c.kind_event, "object": c.object}));
        }
        if bookmarks {
            first.push(json!({"type": "BOOKMARK", "object": {
                "kind": kind, "apiVersion": api_version,
                "metadata": {"resourceVersion": inner.rv.to_string()}}}));
        }
    }
    drop(inner);
    let rx = api.tx.subscribe();
    let cut = api.cut_tx.subscribe();
    let first = futures_util::stream::iter(first.iter().map(line).collect::<Vec<_>>());
    // Live events until the watch is cut (or had expired at once).
    let live = futures_util::stream::unfold(
        (rx, cut, expired),
        move |(mut rx, mut cut, done)| async move {
            if done {
                return None;
            }
            loop {
                // A cut sent before a change wins over it (the client must miss that change).
                tokio::select! {
                    biased;
                    _ = cut.recv() => return None,
                    change = rx.recv() => match change {
                        Ok(c) if c.kind == kind => {
                            let event = json!({"type": c.kind_event, "object": c.object});
                            return Some((line(&event), (rx, cut, false)));
                        }
                        Ok(_) => {}
                        Err(_) => return None,
                    },
                }
            }
        },
    );
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(futures_util::StreamExt::chain(
            first, live,
        )))
        .unwrap()
}
