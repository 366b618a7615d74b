//! The agent's HTTP API (axum): `/metrics`, `/healthz`, `/readyz`, and under `/v1/` the live
//! flow stream (server-sent events), the policy engine's explanation of a flow, and the policy
//! state. `router(state)` builds it; tests drive it with `oneshot`. Bound to loopback by default;
//! bound anywhere else, `/v1/*` requires the bearer token (`--api-token-file`).

mod flows;
mod policies;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flowgate_flows::pipeline::{Record, Sink};
use flowgate_policy::Cluster;
use flowgate_policy::compile::Snapshot;
use tokio::sync::broadcast;

pub use flows::FlowQuery;

/// Encodes the Prometheus metrics (OpenMetrics text).
pub type MetricsText = Arc<dyn Fn() -> String + Send + Sync>;

/// The policy state `/v1/explain` and `/v1/policies` answer from.
#[derive(Debug, Default)]
pub struct PolicyState {
    pub cluster: Option<Arc<Cluster>>,
    pub snapshot: Option<Arc<Snapshot>>,
    /// Local pods the datapath is not attached to, and why (Kubernetes mode).
    pub unenforced: Vec<Unenforced>,
}

/// A local pod policy is not enforced for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unenforced {
    /// `namespace/name`.
    pub pod: String,
    /// A short fixed word (the `reason` label of `flowgate_pods_unenforced`).
    pub reason: String,
    /// What was found, in words.
    pub detail: String,
}

/// Everything the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub metrics: MetricsText,
    pub ready: Arc<AtomicBool>,
    /// What `/readyz` says while not ready.
    pub not_ready: Arc<RwLock<String>>,
    pub healthy: Arc<AtomicBool>,
    /// What `/healthz` says while not healthy.
    pub unhealthy: Arc<RwLock<String>>,
    pub stream: broadcast::Sender<Arc<Record>>,
    pub recent: Arc<Mutex<VecDeque<Arc<Record>>>>,
    pub policy: Arc<RwLock<PolicyState>>,
    /// Required on `/v1/*` when set.
    pub token: Option<Arc<str>>,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("ready", &self.ready.load(Ordering::Relaxed))
            .field("healthy", &self.healthy.load(Ordering::Relaxed))
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

/// How many live-stream records a subscriber may fall behind before it is cut off.
pub const STREAM_BUFFER: usize = 4096;

impl ApiState {
    pub fn new(metrics: MetricsText, token: Option<String>) -> Self {
        let (stream, _) = broadcast::channel(STREAM_BUFFER);
        Self {
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            not_ready: Arc::new(RwLock::new(
                "the first policy snapshot is not in the maps yet".into(),
            )),
            healthy: Arc::new(AtomicBool::new(true)),
            unhealthy: Arc::new(RwLock::new(String::new())),
            stream,
            recent: Arc::new(Mutex::new(VecDeque::new())),
            policy: Arc::new(RwLock::new(PolicyState::default())),
            token: token.map(Arc::from),
        }
    }

    /// A sink feeding the live stream and the in-memory ring of the last `keep` records.
    pub fn stream_sink(&self, keep: usize) -> StreamSink {
        StreamSink {
            tx: self.stream.clone(),
            recent: Arc::clone(&self.recent),
            keep,
        }
    }

    pub fn set_policy(&self, cluster: Arc<Cluster>, snapshot: Arc<Snapshot>) {
        let mut p = self.policy.write().unwrap_or_else(PoisonError::into_inner);
        p.cluster = Some(cluster);
        p.snapshot = Some(snapshot);
    }

    /// The local pods not enforced for, for `/v1/policies`.
    pub fn set_unenforced(&self, unenforced: Vec<Unenforced>) {
        self.policy
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .unenforced = unenforced;
    }

    /// `/healthz`: healthy, or not with the reason.
    pub fn set_health(&self, problem: Option<String>) {
        self.healthy.store(problem.is_none(), Ordering::Relaxed);
        *self
            .unhealthy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = problem.unwrap_or_default();
    }

    /// Why `/readyz` is not ready yet.
    pub fn set_not_ready(&self, why: impl Into<String>) {
        *self
            .not_ready
            .write()
            .unwrap_or_else(PoisonError::into_inner) = why.into();
    }
}

/// Feeds `/v1/flows`: the broadcast to live subscribers and the bounded ring for `last=N`.
#[derive(Debug)]
pub struct StreamSink {
    tx: broadcast::Sender<Arc<Record>>,
    recent: Arc<Mutex<VecDeque<Arc<Record>>>>,
    keep: usize,
}

impl Sink for StreamSink {
    fn name(&self) -> &str {
        "stream"
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        let record = Arc::new(record.clone());
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            if recent.len() >= self.keep {
                recent.pop_front();
            }
            if self.keep > 0 {
                recent.push_back(Arc::clone(&record));
            }
        }
        // No subscriber is fine.
        let _ = self.tx.send(record);
        Ok(())
    }
}

/// An API error: a status and a JSON `{"error": message}` body.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    let body = (state.metrics)();
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

async fn healthz(State(state): State<ApiState>) -> Response {
    if state.healthy.load(Ordering::Relaxed) {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        let why = state
            .unhealthy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let why = if why.is_empty() {
            "datapath is not loaded".to_owned()
        } else {
            why
        };
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response()
    }
}

async fn readyz(State(state): State<ApiState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let why = state
            .not_ready
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response()
    }
}

/// `Authorization: Bearer <token>` on `/v1/*` when a token is configured.
async fn require_token(State(state): State<ApiState>, request: Request, next: Next) -> Response {
    if let Some(token) = &state.token {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return ApiError {
                status: StatusCode::UNAUTHORIZED,
                message:
                    "this API needs `Authorization: Bearer <token>` (the agent's --api-token-file)"
                        .into(),
            }
            .into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        message: "no such endpoint: see /v1/flows, /v1/explain, /v1/policies".into(),
    }
}

/// The whole API.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/flows", get(flows::flows))
        .route("/explain", get(policies::explain))
        .route("/policies", get(policies::policies))
        .layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .nest("/v1", v1)
        .fallback(not_found)
        .with_state(state)
}

/// Whether an address is loopback (where the API needs no token).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
