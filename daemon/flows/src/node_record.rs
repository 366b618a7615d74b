//! Records about the node rather than a flow: `heartbeat` (periodic: the agent is alive, with
//! the sequence number so far, so a consumer can tell silence from loss) and `policy_snapshot`
//! (each time a policy generation is applied: what is in force).

use serde::{Deserialize, Serialize};

use crate::record::{Mode, SCHEMA};

fn schema() -> &'static str {
    SCHEMA
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeRecordType {
    Heartbeat,
    PolicySnapshot,
}

/// The endpoints of this node by isolation (for `policy_snapshot`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSummary {
    /// Local pods the datapath enforces for.
    pub total: u64,
    pub ingress_isolated: u64,
    pub egress_isolated: u64,
    /// Local pods no policy selects.
    pub uncovered: u64,
}

/// `record_type: "heartbeat"` or `"policy_snapshot"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    #[serde(skip_deserializing, default = "schema")]
    pub schema: &'static str,
    pub record_type: NodeRecordType,
    pub time: String,
    pub seq: u64,
    pub node: String,
    /// The policy generation in force.
    pub generation: u32,
    pub mode: Mode,
    /// policy_snapshot: NetworkPolicies in the cluster state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policies: Option<u64>,
    /// policy_snapshot: this node's pods by isolation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<EndpointSummary>,
    /// heartbeat: flow records reported so far by this agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<u64>,
}
