//! Loss made visible: `GapRecord`s say how many records a stage lost and which sequence
//! numbers, so a consumer can prove its stream complete (received + reported lost = all).

use serde::{Deserialize, Serialize};

use crate::record::SCHEMA;

fn schema() -> &'static str {
    SCHEMA
}

fn gap() -> &'static str {
    "gap"
}

/// Where records were lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The kernel's ring buffer was full (counted per CPU by the datapath).
    Ringbuf,
    /// The agent restarted and adopted the running datapath: the ring buffer filled up while no
    /// agent read it, or the previous agent had not reported those losses. The first record of
    /// such a run, even with nothing lost.
    Restart,
    /// A sink's bounded queue was full (the sink is slower than the event rate).
    Sink(String),
}

impl Stage {
    pub fn label(&self) -> String {
        match self {
            Self::Ringbuf => "ringbuf".into(),
            Self::Restart => "restart".into(),
            Self::Sink(name) => format!("sink_{name}"),
        }
    }
}

/// Verdict classes losses are counted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictClass {
    Allow,
    Deny,
    Audit,
}

impl VerdictClass {
    pub const ALL: [Self; 3] = [Self::Allow, Self::Deny, Self::Audit];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Audit => "audit",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Self::Allow => 0,
            Self::Deny => 1,
            Self::Audit => 2,
        }
    }
}

/// `record_type: "gap"`: records a stage lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GapRecord {
    #[serde(skip_deserializing, default = "schema")]
    pub schema: &'static str,
    #[serde(skip_deserializing, default = "gap")]
    pub record_type: &'static str,
    pub time: String,
    /// For a sink's gap: the last lost sequence number (so `seq` keeps increasing in that
    /// sink's stream); for a ring-buffer gap: a sequence number of its own.
    pub seq: u64,
    pub node: String,
    /// `ringbuf`, `restart` or `sink_<name>`.
    pub stage: String,
    /// Lost records per verdict class (`allow`, `deny`, `audit`).
    pub lost: LostCounts,
    /// The sequence numbers lost, when known (a sink's losses; the ring buffer's are unnumbered).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost_seq: Option<SeqRange>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostCounts {
    pub allow: u64,
    pub deny: u64,
    pub audit: u64,
}

impl LostCounts {
    pub fn total(&self) -> u64 {
        self.allow + self.deny + self.audit
    }

    pub fn add(&mut self, class: VerdictClass, n: u64) {
        match class {
            VerdictClass::Allow => self.allow += n,
            VerdictClass::Deny => self.deny += n,
            VerdictClass::Audit => self.audit += n,
        }
    }

    pub fn get(&self, class: VerdictClass) -> u64 {
        match class {
            VerdictClass::Allow => self.allow,
            VerdictClass::Deny => self.deny,
            VerdictClass::Audit => self.audit,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first: u64,
    pub last: u64,
}

impl GapRecord {
    pub fn new(
        time: String,
        seq: u64,
        node: &str,
        stage: &Stage,
        lost: LostCounts,
        lost_seq: Option<SeqRange>,
    ) -> Self {
        Self {
            schema: SCHEMA,
            record_type: "gap",
            time,
            seq,
            node: node.to_owned(),
            stage: stage.label(),
            lost,
            lost_seq,
        }
    }
}
