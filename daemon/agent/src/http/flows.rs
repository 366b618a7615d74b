//! `GET /v1/flows`: recent records from the in-memory ring (`last=N`) and, with `follow=true`,
//! the live stream as server-sent events; filtered by namespace, pod, direction, verdict,
//! policy and time. A subscriber that falls behind by more than the stream buffer gets a
//! `notice` event and is cut off, never slowing the agent or other subscribers.

use std::convert::Infallible;
use std::sync::{Arc, PoisonError};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use flowgate_flows::pipeline::Record;
use flowgate_flows::record::{Direction, Endpoint, FlowRecord, Verdict};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use super::{ApiError, ApiState};

/// Filters of `/v1/flows` (and of `flowgate observe`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    /// Either end in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Either end is this pod (`namespace/name`, or a name in any namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_pod: Option<String>,
    /// `ingress` or `egress`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    /// `allow`, `deny` or `audit_deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// `namespace/name` of a policy that allowed or isolated the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Only records at or after this RFC 3339 UTC time (e.g. 2026-11-28T18:00:00Z).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// How many recent records to send first (default 20 without `follow`, 0 with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<usize>,
    /// Keep the stream open and send new records as they come.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follow: Option<bool>,
}

fn pod_matches(end: &Endpoint, wanted: &str) -> bool {
    let (Some(ns), Some(pod)) = (&end.namespace, &end.pod) else {
        return false;
    };
    match wanted.split_once('/') {
        Some((wns, wpod)) => wns == &**ns && wpod == &**pod,
        None => wanted == &**pod,
    }
}

impl FlowQuery {
    /// Rejects values that can never match, with a message saying what is allowed.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(d) = &self.direction
            && !matches!(d.as_str(), "ingress" | "egress")
        {
            return Err(format!("direction={d:?}: use ingress or egress"));
        }
        if let Some(v) = &self.verdict
            && !matches!(v.as_str(), "allow" | "deny" | "audit_deny")
        {
            return Err(format!("verdict={v:?}: use allow, deny or audit_deny"));
        }
        if let Some(p) = &self.policy
            && p.split_once('/')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
        {
            return Err(format!("policy={p:?}: use namespace/name"));
        }
        if let Some(s) = &self.since
            && !looks_like_rfc3339(s)
        {
            return Err(format!(
                "since={s:?}: use an RFC 3339 UTC time like 2026-11-28T18:00:00Z"
            ));
        }
        Ok(())
    }

    pub fn matches(&self, record: &Record) -> bool {
        match record {
            // Loss reports always reach every subscriber.
            Record::Gap(_) => true,
            // Heartbeats and policy snapshots are about the node, not a flow: shown unless the
            // query asks for particular flows.
            Record::Node(_) => {
                self.namespace.is_none()
                    && self.pod.is_none()
                    && self.from_pod.is_none()
                    && self.to_pod.is_none()
                    && self.direction.is_none()
                    && self.verdict.is_none()
                    && self.policy.is_none()
            }
            Record::Flow(f) => self.matches_flow(f),
        }
    }

    fn matches_flow(&self, f: &FlowRecord) -> bool {
        let ns_ok = self.namespace.as_ref().is_none_or(|ns| {
            f.source.namespace.as_deref() == Some(ns.as_str())
                || f.destination.namespace.as_deref() == Some(ns.as_str())
        });
        let pod_ok = self
            .pod
            .as_ref()
            .is_none_or(|p| pod_matches(&f.source, p) || pod_matches(&f.destination, p));
        let from_ok = self
            .from_pod
            .as_ref()
            .is_none_or(|p| pod_matches(&f.source, p));
        let to_ok = self
            .to_pod
            .as_ref()
            .is_none_or(|p| pod_matches(&f.destination, p));
        let dir_ok = self.direction.as_ref().is_none_or(|d| {
            matches!(
                (d.as_str(), f.direction),
                ("ingress", Direction::Ingress) | ("egress", Direction::Egress)
            )
        });
        let verdict_ok = self.verdict.as_ref().is_none_or(|v| {
            matches!(
                (v.as_str(), f.verdict),
                ("allow", Verdict::Allow)
                    | ("deny", Verdict::Deny)
                    | ("audit_deny", Verdict::AuditDeny)
            )
        });
        let policy_ok = self.policy.as_ref().is_none_or(|p| {
            let (ns, name) = p.split_once('/').unwrap_or(("", p));
            f.policy
                .allowed_by
                .iter()
                .any(|r| r.namespace == ns && r.name == name)
                || f.policy
                    .isolated_by
                    .iter()
                    .any(|r| r.namespace == ns && r.name == name)
        });
        // Same fixed-width UTC format on both sides: text order is time order.
        let since_ok = self.since.as_ref().is_none_or(|s| &*f.time >= s.as_str());
        ns_ok && pod_ok && from_ok && to_ok && dir_ok && verdict_ok && policy_ok && since_ok
    }
}

fn looks_like_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && s.ends_with('Z')
}

fn event(record: &Record) -> Event {
    let kind = match record {
        Record::Flow(_) => "flow",
        Record::Gap(_) => "gap",
        Record::Node(_) => "node",
    };
    Event::default()
        .event(kind)
        .id(record.seq().to_string())
        .data(record.to_json())
}

struct Follow {
    backlog: std::vec::IntoIter<Arc<Record>>,
    rx: Option<tokio::sync::broadcast::Receiver<Arc<Record>>>,
    query: FlowQuery,
    last_seq: u64,
}

pub async fn flows(
    State(state): State<ApiState>,
    query: Result<Query<FlowQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    query.validate().map_err(ApiError::bad_request)?;
    let follow = query.follow.unwrap_or(false);
    // Subscribe before reading the ring, so nothing falls between the two.
    let rx = follow.then(|| state.stream.subscribe());
    let last = query.last.unwrap_or(if follow { 0 } else { 20 });
    let backlog: Vec<Arc<Record>> = {
        let recent = state.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let matching: Vec<Arc<Record>> = recent
            .iter()
            .filter(|r| query.matches(r))
            .cloned()
            .collect();
        let skip = matching.len().saturating_sub(last);
        matching.into_iter().skip(skip).collect()
    };
    let last_seq = backlog.last().map_or(0, |r| r.seq());
    let start = Follow {
        backlog: backlog.into_iter(),
        rx,
        query,
        last_seq,
    };
    let stream = futures_util::stream::unfold(start, |mut st| async move {
        if let Some(r) = st.backlog.next() {
            return Some((Ok(event(&r)), st));
        }
        let mut rx = st.rx.take()?;
        loop {
            match rx.recv().await {
                Ok(r) if r.seq() > st.last_seq && st.query.matches(&r) => {
                    st.rx = Some(rx);
                    return Some((Ok(event(&r)), st));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(skipped)) => {
                    // Cut off (st.rx stays None): the next poll ends the stream.
                    let notice = serde_json::json!({
                        "notice": format!("this subscriber fell {skipped} records behind the live stream and is disconnected; reconnect (with last=N) to resume"),
                    });
                    return Some((
                        Ok(Event::default().event("notice").data(notice.to_string())),
                        st,
                    ));
                }
                Err(RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
