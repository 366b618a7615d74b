//! `GET /v1/explain` (the policy engine's verdict and attribution for one flow, as in
//! `flowgate explain -o json`) and `GET /v1/policies` (the policies in force, the generation,
//! which local pods are isolated per direction and which no policy covers).

use std::sync::PoisonError;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use flowgate_policy::probe::{self, PortRef, Probe, ProbeResult};
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExplainQuery {
    from: String,
    to: String,
    port: Option<String>,
    #[serde(default = "tcp")]
    protocol: String,
}

fn tcp() -> String {
    "TCP".into()
}

fn unavailable() -> ApiError {
    ApiError {
        status: StatusCode::SERVICE_UNAVAILABLE,
        message: "no policy state yet: the agent has not applied its first snapshot".into(),
    }
}

pub async fn explain(
    State(state): State<ApiState>,
    query: Result<Query<ExplainQuery>, QueryRejection>,
) -> Result<Json<ProbeResult>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let cluster = state
        .policy
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .cluster
        .clone()
        .ok_or_else(unavailable)?;
    let port = q
        .port
        .map(|p| p.parse::<i64>().map_or(PortRef::Name(p), PortRef::Number));
    let probe = Probe {
        from: q.from,
        to: q.to,
        port,
        protocol: q.protocol,
        expect: None,
    };
    let result = probe::run(&cluster, &probe);
    if let Some(error) = &result.error {
        return Err(ApiError::bad_request(error.clone()));
    }
    Ok(Json(result))
}

#[derive(Debug, Serialize)]
pub struct PolicySummary {
    namespace: String,
    name: String,
    pod_selector: String,
    policy_types: Vec<&'static str>,
    ingress_rules: usize,
    egress_rules: usize,
}

#[derive(Debug, Serialize)]
pub struct EndpointSummary {
    pod: String,
    ingress_isolated: bool,
    egress_isolated: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ingress_isolated_by: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    egress_isolated_by: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct PoliciesResponse {
    generation: u32,
    policies: Vec<PolicySummary>,
    /// This node's pods and their isolation.
    endpoints: Vec<EndpointSummary>,
    /// Local pods no policy selects: open in both directions.
    uncovered: Vec<String>,
    /// Local pods the datapath is not attached to (policy NOT enforced), and why.
    unenforced: Vec<super::Unenforced>,
}

pub async fn policies(State(state): State<ApiState>) -> Result<Json<PoliciesResponse>, ApiError> {
    let (cluster, snapshot, unenforced) = {
        let p = state.policy.read().unwrap_or_else(PoisonError::into_inner);
        (
            p.cluster.clone().ok_or_else(unavailable)?,
            p.snapshot.clone().ok_or_else(unavailable)?,
            p.unenforced.clone(),
        )
    };
    let policies = cluster
        .policies()
        .map(|(_, p)| PolicySummary {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            pod_selector: p.pod_selector.to_string(),
            policy_types: [
                (p.isolates_ingress, "Ingress"),
                (p.isolates_egress, "Egress"),
            ]
            .into_iter()
            .filter_map(|(on, t)| on.then_some(t))
            .collect(),
            ingress_rules: p.ingress.len(),
            egress_rules: p.egress.len(),
        })
        .collect();
    let names = |refs: &[flowgate_policy::PolicyRef]| {
        refs.iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect::<Vec<_>>()
    };
    let mut endpoints: Vec<EndpointSummary> = snapshot
        .endpoints
        .values()
        .map(|e| EndpointSummary {
            pod: e.pod.clone(),
            ingress_isolated: !e.ingress.isolated_by.is_empty(),
            egress_isolated: !e.egress.isolated_by.is_empty(),
            ingress_isolated_by: names(&e.ingress.isolated_by),
            egress_isolated_by: names(&e.egress.isolated_by),
        })
        .collect();
    endpoints.sort_by(|a, b| a.pod.cmp(&b.pod));
    let uncovered = endpoints
        .iter()
        .filter(|e| {
            let (ns, name) = e.pod.split_once('/').unwrap_or(("", &e.pod));
            cluster
                .pod_by_name(ns, name)
                .is_none_or(|id| cluster.policies_selecting(id).next().is_none())
        })
        .map(|e| e.pod.clone())
        .collect();
    Ok(Json(PoliciesResponse {
        generation: snapshot.generation,
        policies,
        endpoints,
        uncovered,
        unenforced,
    }))
}
