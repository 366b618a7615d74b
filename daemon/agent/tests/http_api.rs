//! The HTTP API driven with `oneshot` (no socket): health and readiness, metrics, the flow
//! stream with its filters and its cut-off of slow subscribers, explain, policies, the token
//! requirement, and JSON errors for bad queries.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use flowgate::http::{ApiState, router};
use flowgate_abi::{ABI_VERSION, DIR_EGRESS, DIR_INGRESS, FlowEvent, verdict};
use flowgate_flows::Sink as _;
use flowgate_flows::enrich::{Enricher, Tables};
use flowgate_flows::pipeline::Record;
use flowgate_flows::record::Mode;
use flowgate_policy::compile::{LocalEndpoint, compile};
use flowgate_policy::{Cluster, Manifests};
use http_body_util::BodyExt as _;
use tower::ServiceExt as _;

const YAML: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: other, labels: {app: client}}
status: {podIP: 10.2.0.1}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-in, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
";

fn cluster() -> Cluster {
    let mut m = Manifests::new();
    m.add_text("t.yaml", YAML);
    assert!(m.errors.is_empty());
    Cluster::from_manifests(&mut m)
}

fn mapped(ip: [u8; 4]) -> [u8; 16] {
    std::net::Ipv4Addr::from(ip).to_ipv6_mapped().octets()
}

/// Records of the cluster above: client -> web:80 allowed, and :81 denied, on web's ingress;
/// web -> client egress allowed (not isolated).
fn setup(token: Option<&str>) -> (ApiState, Vec<Record>) {
    let c = cluster();
    let locals = vec![LocalEndpoint {
        pod: "shop/web".into(),
        ifindex: 5,
    }];
    let snap = compile(&c, &locals, None);
    let mut enricher = Enricher::new("n1", 0);
    enricher.push(Tables::from_snapshot(&c, &snap, Mode::Enforce));
    let ep = snap.endpoints[&5].endpoint_id;
    let attribution = *snap.attributions.keys().next().unwrap();
    let ev = |dport: u16, v: u8, attribution: u32, dir: u8, src: [u8; 4], dst: [u8; 4]| FlowEvent {
        version: ABI_VERSION,
        verdict: v,
        reason: if v == verdict::ALLOW { 1 } else { 2 },
        direction: dir,
        proto: 6,
        ip_version: 4,
        endpoint_id: ep,
        generation: snap.generation,
        attribution,
        count: 1,
        src_port: 40000,
        dst_port: dport,
        src_addr: mapped(src),
        dst_addr: mapped(dst),
        timestamp_ns: 1_000,
        ..FlowEvent::default()
    };
    let records = vec![
        Record::Flow(enricher.enrich(&ev(
            80,
            verdict::ALLOW,
            attribution,
            DIR_INGRESS,
            [10, 2, 0, 1],
            [10, 1, 0, 1],
        ))),
        Record::Flow(enricher.enrich(&ev(
            81,
            verdict::DENY,
            0,
            DIR_INGRESS,
            [10, 2, 0, 1],
            [10, 1, 0, 1],
        ))),
        Record::Flow(enricher.enrich(&FlowEvent {
            reason: 0,
            ..ev(
                443,
                verdict::ALLOW,
                0,
                DIR_EGRESS,
                [10, 1, 0, 1],
                [10, 2, 0, 1],
            )
        })),
    ];
    let state = ApiState::new(
        Arc::new(|| {
            "# TYPE flowgate_policy_generation gauge\nflowgate_policy_generation 1\n# EOF\n"
                .to_owned()
        }),
        token.map(str::to_owned),
    );
    state.set_policy(Arc::new(c), Arc::new(snap));
    let mut sink = state.stream_sink(100);
    for r in &records {
        sink.write(r).unwrap();
    }
    (state, records)
}

async fn get(state: &ApiState, uri: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::builder().uri(uri);
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let response = router(state.clone())
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let (state, _) = setup(None);
    assert_eq!(get(&state, "/healthz", None).await.0, StatusCode::OK);
    let (status, _, body) = get(&state, "/readyz", None).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready before the first snapshot: {body}"
    );
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(get(&state, "/readyz", None).await.0, StatusCode::OK);
    state.healthy.store(false, Ordering::Relaxed);
    assert_eq!(
        get(&state, "/healthz", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "unhealthy when the datapath is gone"
    );
    let (status, content_type, body) = get(&state, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(body.ends_with("# EOF\n"));
}

#[tokio::test]
async fn flows_with_filters_and_last() {
    let (state, records) = setup(None);
    let (status, content_type, body) = get(&state, "/v1/flows", None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "text/event-stream")
    );
    assert_eq!(
        sse_data(&body).len(),
        records.len(),
        "all recent records without filters"
    );
    let denies = sse_data(&get(&state, "/v1/flows?verdict=deny", None).await.2);
    assert_eq!(denies.len(), 1);
    assert_eq!(denies[0]["destination"]["port"], 81);
    let egress = sse_data(
        &get(&state, "/v1/flows?direction=egress&from_pod=shop/web", None)
            .await
            .2,
    );
    assert_eq!(egress.len(), 1);
    assert_eq!(egress[0]["destination"]["pod"], "client");
    let by_policy = sse_data(&get(&state, "/v1/flows?policy=shop/web-in", None).await.2);
    assert_eq!(by_policy.len(), 2, "allowed by it, and isolated by it");
    assert_eq!(
        sse_data(
            &get(&state, "/v1/flows?namespace=other&last=1", None)
                .await
                .2
        )
        .len(),
        1
    );
    assert_eq!(
        sse_data(&get(&state, "/v1/flows?pod=nope", None).await.2).len(),
        0
    );
}

#[tokio::test]
async fn bad_queries_get_400_with_a_message() {
    let (state, _) = setup(None);
    for (uri, needle) in [
        ("/v1/flows?verdict=maybe", "verdict"),
        ("/v1/flows?direction=up", "direction"),
        ("/v1/flows?policy=noslash", "namespace/name"),
        ("/v1/flows?since=yesterday", "RFC 3339"),
        ("/v1/flows?last=many", "last"),
        ("/v1/flows?colour=red", "colour"),
        ("/v1/explain?from=shop/web", "to"),
        (
            "/v1/explain?from=shop/ghost&to=shop/web&port=80",
            "unknown pod",
        ),
    ] {
        let (status, content_type, body) = get(&state, uri, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert!(
            content_type.starts_with("application/json"),
            "{uri}: {content_type}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{uri}: {body}"
        );
    }
    let (status, _, body) = get(&state, "/v2/nothing", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn explain_and_policies() {
    let (state, _) = setup(None);
    let (status, _, body) = get(
        &state,
        "/v1/explain?from=other/client&to=shop/web&port=80",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["ingress"]["allowed_by"][0]["name"], "web-in");
    let (status, _, body) = get(&state, "/v1/policies", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["generation"], 1);
    assert_eq!(v["policies"][0]["name"], "web-in");
    assert_eq!(v["endpoints"][0]["pod"], "shop/web");
    assert_eq!(v["endpoints"][0]["ingress_isolated"], true);
    assert_eq!(v["endpoints"][0]["egress_isolated"], false);
    assert_eq!(v["uncovered"].as_array().unwrap().len(), 0);
    // Before the first snapshot: 503, not a made-up answer.
    let empty = ApiState::new(Arc::new(String::new), None);
    assert_eq!(
        get(&empty, "/v1/policies", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn the_token_guards_v1_but_not_metrics_or_health() {
    let (state, _) = setup(Some("s3cret"));
    assert_eq!(
        get(&state, "/v1/flows", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&state, "/v1/flows", Some("wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&state, "/v1/policies", None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&state, "/v1/flows", Some("s3cret")).await.0,
        StatusCode::OK
    );
    assert_eq!(get(&state, "/metrics", None).await.0, StatusCode::OK);
    assert_eq!(get(&state, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_slow_follower_is_cut_off_with_a_notice() {
    let (state, records) = setup(None);
    let req = Request::builder()
        .uri("/v1/flows?follow=true")
        .body(Body::empty())
        .unwrap();
    let response = router(state.clone()).oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Publish far more than the stream buffer while the subscriber reads nothing.
    let mut sink = state.stream_sink(10);
    for _ in 0..(flowgate::http::STREAM_BUFFER * 2) {
        sink.write(&records[0]).unwrap();
    }
    drop(state);
    drop(sink);
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        response.into_body().collect(),
    )
    .await
    .expect("the cut-off stream ends")
    .unwrap()
    .to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(
        text.contains("event: notice") && text.contains("fell"),
        "{text}"
    );
}
