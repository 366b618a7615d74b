//! The flow record (`schema: "flowgate.flow/v1"`): flat, stable snake_case keys, enums as
//! lowercase strings. One per verdict event; serialized as one JSON line.
//!
//! What the generation tables already hold (node, namespace and pod names, labels, attribution
//! lists) is shared (`Arc`), not copied into each record; fixed vocabularies (`transport`,
//! `tcp_flags`, `tags`) are static strings. The serde derives are the reference encoding;
//! `crate::json` writes the same JSON faster.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub const SCHEMA: &str = "flowgate.flow/v1";

fn schema() -> &'static str {
    SCHEMA
}

/// Labels of a pod, shared with the generation tables.
pub type SharedLabels = Arc<BTreeMap<String, String>>;

fn no_labels(labels: &SharedLabels) -> bool {
    labels.is_empty()
}

fn empty<T>(list: &Arc<[T]>) -> bool {
    list.is_empty()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    #[serde(skip_deserializing, default = "schema")]
    pub schema: &'static str,
    pub record_type: RecordType,
    /// RFC 3339 UTC time of the packet (nanosecond precision).
    pub time: Arc<str>,
    /// Per-node, strictly increasing.
    pub seq: u64,
    pub node: Arc<str>,
    pub verdict: Verdict,
    pub mode: Mode,
    pub reason: Reason,
    /// Direction from the reporting pod's point of view.
    pub direction: Direction,
    /// Which end reported: `src` for an egress verdict, `dst` for ingress.
    pub reporter: Reporter,
    pub source: Endpoint,
    pub destination: Endpoint,
    pub network: Network,
    pub policy: PolicyInfo,
    pub counters: Counters,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Cow<'static, str>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordType {
    Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Allow,
    Deny,
    AuditDeny,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Enforce,
    Audit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    NotIsolated,
    RuleAllow,
    DefaultDeny,
    RecheckDeny,
    FragmentUnknown,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reporter {
    Src,
    Dst,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointKind {
    Pod,
    External,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Private,
    Public,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// Absent for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub kind: EndpointKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "no_labels")]
    pub labels: SharedLabels,
    /// For externals: private (RFC 1918, ULA, ...) or public.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
    /// For pods: the node the pod runs on (`spec.nodeName`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
    /// For pods: the workload from `metadata.ownerReferences` (a ReplicaSet of a Deployment is
    /// reported as the Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Workload>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: Arc<str>,
    pub name: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6` or the protocol number.
    pub transport: Cow<'static, str>,
    pub ip_version: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_flags: Option<Cow<'static, str>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub namespace: String,
    pub name: String,
    pub rule: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// The policy generation the datapath decided with.
    pub generation: u32,
    #[serde(default, skip_serializing_if = "empty")]
    pub allowed_by: Arc<[RuleRef]>,
    #[serde(default, skip_serializing_if = "empty")]
    pub isolated_by: Arc<[PolicyRef]>,
    /// Set when the generation was no longer known, so attribution could not be resolved.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets this record stands for (more than 1 for deduplicated denies).
    pub packets: u64,
    /// Their bytes (IP packet lengths).
    #[serde(default)]
    pub bytes: u64,
    pub dedup_count: u64,
    pub first_seen: Arc<str>,
    pub last_seen: Arc<str>,
}
