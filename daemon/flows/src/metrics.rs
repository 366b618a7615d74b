//! The Prometheus metrics of flowgate (OpenMetrics text). Every family is registered in
//! `Metrics::with_max_series`; `MetricsSink` feeds them from the records of the fan-out, the
//! agent sets the policy and loss figures, and its `/metrics` handler calls `Metrics::encode`.
//! Labels come only from bounded sets (what admins write: namespaces, policies, rules), and
//! each family with such labels is capped: past the cap, new label sets share an `__other__`
//! series. `docs/metrics.md` is the reference of every family.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::Hash;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::gap::{GapRecord, LostCounts, Stage, VerdictClass};
use crate::pipeline::{Record, Sink, SinkStats};
use crate::record::{Direction, EndpointKind, FlowRecord, Reason, Verdict};

/// Series a capped family holds before new label sets go to its `__other__` series.
pub const DEFAULT_MAX_SERIES: usize = 10_000;
/// The value of every variable label of an overflow series.
pub const OVERFLOW: &str = "__other__";
/// The namespace label of a flow end that is not a known pod (outside the cluster, host
/// network, or not resolvable with the tables of the event's generation).
pub const EXTERNAL: &str = "__external__";
/// The `Content-Type` of `Metrics::encode`'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The tag `enrich` puts on egress flows to a public address outside the cluster.
pub const EGRESS_TO_WORLD_TAG: &str = "egress_to_world";

/// Every family `Metrics` exports, by the name queries use (counters with `_total`; the
/// histogram without its `_bucket`/`_sum`/`_count` suffixes) and its type. A family with no
/// series is left out of the exposition, so this list is what dashboards and alert rules are
/// checked against; a test compares it with the exposition once every family has a series.
pub const FAMILIES: [(&str, &str); 17] = [
    ("flowgate_verdicts_total", "counter"),
    ("flowgate_denied_packets_total", "counter"),
    ("flowgate_namespace_flows_total", "counter"),
    ("flowgate_egress_world_total", "counter"),
    ("flowgate_events_lost_total", "counter"),
    ("flowgate_records_total", "counter"),
    ("flowgate_policy_generation", "gauge"),
    ("flowgate_endpoints", "gauge"),
    ("flowgate_policy_apply_seconds", "histogram"),
    ("flowgate_metrics_overflow_total", "counter"),
    ("flowgate_policy_sync_seconds", "histogram"),
    ("flowgate_source_objects_rejected_total", "counter"),
    ("flowgate_source_watch_errors_total", "counter"),
    ("flowgate_pods_unenforced", "gauge"),
    ("flowgate_map_entries", "gauge"),
    ("flowgate_map_capacity", "gauge"),
    ("flowgate_datapath_packets_total", "counter"),
];

// ---------------------------------------------------------------------------------------------
// Label values: the same lowercase strings as the flow record's JSON.

fn direction_str(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::AuditDeny => "audit_deny",
    }
}

fn reason_str(r: Reason) -> &'static str {
    match r {
        Reason::NotIsolated => "not_isolated",
        Reason::RuleAllow => "rule_allow",
        Reason::DefaultDeny => "default_deny",
        Reason::RecheckDeny => "recheck_deny",
        Reason::FragmentUnknown => "fragment_unknown",
        Reason::Unknown => "unknown",
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(direction_str(*self))
    }
}

impl EncodeLabelValue for Verdict {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(verdict_str(*self))
    }
}

impl EncodeLabelValue for Reason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(reason_str(*self))
    }
}

impl EncodeLabelValue for VerdictClass {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// `record_type` of `flowgate_records_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RecordType {
    Flow,
    Gap,
    Heartbeat,
    PolicySnapshot,
}

impl EncodeLabelValue for RecordType {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Self::Flow => "flow",
            Self::Gap => "gap",
            Self::Heartbeat => "heartbeat",
            Self::PolicySnapshot => "policy_snapshot",
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Label sets, one struct per family (field order = label order in the text).

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VerdictLabels {
    direction: Direction,
    verdict: Verdict,
    reason: Reason,
    policy_namespace: String,
    policy_name: String,
    rule: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeniedPacketLabels {
    direction: Direction,
    policy_namespace: String,
    policy_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NamespaceFlowLabels {
    src_namespace: String,
    dst_namespace: String,
    direction: Direction,
    verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EgressWorldLabels {
    src_namespace: String,
    verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LostLabels {
    stage: String,
    verdict_class: VerdictClass,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RecordLabels {
    record_type: RecordType,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct EndpointLabels {
    ingress_isolated: bool,
    egress_isolated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OverflowLabels {
    /// The capped counter's sample name, e.g. `flowgate_verdicts_total`.
    family: String,
}

/// A label set of a capped family.
trait Series: Clone + Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static {
    /// The label set this one is counted in once its family is full: the variable labels
    /// become `__other__`, the enumerated ones (direction, verdict, ...) stay.
    fn overflow(&self) -> Self;
    /// The policy (namespace, name) the series is about, if any.
    fn policy(&self) -> Option<(&str, &str)> {
        None
    }
}

impl Series for VerdictLabels {
    fn overflow(&self) -> Self {
        Self {
            policy_namespace: OVERFLOW.into(),
            policy_name: OVERFLOW.into(),
            rule: OVERFLOW.into(),
            ..self.clone()
        }
    }
    fn policy(&self) -> Option<(&str, &str)> {
        Some((&self.policy_namespace, &self.policy_name))
    }
}

impl Series for DeniedPacketLabels {
    fn overflow(&self) -> Self {
        Self {
            direction: self.direction,
            policy_namespace: OVERFLOW.into(),
            policy_name: OVERFLOW.into(),
        }
    }
    fn policy(&self) -> Option<(&str, &str)> {
        Some((&self.policy_namespace, &self.policy_name))
    }
}

impl Series for NamespaceFlowLabels {
    fn overflow(&self) -> Self {
        Self {
            src_namespace: OVERFLOW.into(),
            dst_namespace: OVERFLOW.into(),
            ..self.clone()
        }
    }
}

impl Series for EgressWorldLabels {
    fn overflow(&self) -> Self {
        Self {
            src_namespace: OVERFLOW.into(),
            verdict: self.verdict,
        }
    }
}

impl Series for LostLabels {
    fn overflow(&self) -> Self {
        Self {
            stage: OVERFLOW.into(),
            verdict_class: self.verdict_class,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A counter family holding at most `max` series of its own; later label sets are counted in
/// their overflow series (which are not counted against the cap).
#[derive(Debug)]
struct Capped<S> {
    family: Family<S, Counter>,
    /// The label sets with a series of their own. Held while the family changes, so the count
    /// and the family agree.
    series: Mutex<HashSet<S>>,
    max: usize,
    /// `flowgate_metrics_overflow_total{family=...}`.
    overflowed: Counter,
}

impl<S: Series> Capped<S> {
    fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &str,
        max: usize,
        overflow: &Family<OverflowLabels, Counter>,
    ) -> Self {
        let family = Family::<S, Counter>::default();
        registry.register(name, help, family.clone());
        let overflowed = overflow.get_or_create_owned(&OverflowLabels {
            family: format!("{name}_total"),
        });
        Self {
            family,
            series: Mutex::new(HashSet::new()),
            max,
            overflowed,
        }
    }

    fn inc_by(&self, labels: S, n: u64) {
        let mut series = lock(&self.series);
        let key = if series.contains(&labels) {
            labels
        } else if series.len() < self.max {
            series.insert(labels.clone());
            labels
        } else {
            self.overflowed.inc();
            labels.overflow()
        };
        self.family.get_or_create(&key).inc_by(n);
    }

    /// Creates a series that exists from the start, whatever the cap (it still counts in it).
    fn reserve(&self, labels: S) {
        let mut series = lock(&self.series);
        self.family.get_or_create(&labels).inc_by(0);
        series.insert(labels);
    }

    /// Removes the series whose policy is neither unset (`""`), `__other__`, nor `live`.
    fn retain_policies(&self, live: &HashSet<(&str, &str)>) {
        let mut series = lock(&self.series);
        let gone: Vec<S> = series
            .iter()
            .filter(|s| {
                s.policy()
                    .is_some_and(|p| p != ("", "") && !live.contains(&p))
            })
            .cloned()
            .collect();
        for s in &gone {
            self.family.remove(s);
            series.remove(s);
        }
    }
}

/// Endpoints of this node by isolation, for `flowgate_endpoints`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EndpointCounts {
    pub not_isolated: u64,
    pub ingress_only: u64,
    pub egress_only: u64,
    pub both: u64,
}

impl EndpointCounts {
    /// Counts one endpoint.
    pub fn add(&mut self, ingress_isolated: bool, egress_isolated: bool) {
        let slot = match (ingress_isolated, egress_isolated) {
            (false, false) => &mut self.not_isolated,
            (true, false) => &mut self.ingress_only,
            (false, true) => &mut self.egress_only,
            (true, true) => &mut self.both,
        };
        *slot += 1;
    }
}

/// What is known of one (stage, verdict class)'s losses.
#[derive(Debug, Clone, Copy, Default)]
struct LossTotals {
    /// Sum of the gap records seen.
    from_gaps: u64,
    /// Highest cumulative total passed to `set_losses`.
    reported: u64,
    /// What the counter holds: max(from_gaps, reported), never decreasing.
    exported: u64,
}

/// Every metric family of flowgate, registered in one registry. Shared as `Arc<Metrics>`:
/// all methods take `&self` (the families are internally locked), so the HTTP handler
/// encodes while `MetricsSink` and the agent update.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    max_series: usize,
    verdicts: Capped<VerdictLabels>,
    denied_packets: Capped<DeniedPacketLabels>,
    namespace_flows: Capped<NamespaceFlowLabels>,
    egress_world: Capped<EgressWorldLabels>,
    events_lost: Capped<LostLabels>,
    records: Family<RecordLabels, Counter>,
    policy_generation: Gauge<u32, AtomicU32>,
    endpoints: Family<EndpointLabels, Gauge<u64, AtomicU64>>,
    policy_apply: Histogram,
    agent: crate::agent_metrics::AgentFamilies,
    losses: Mutex<HashMap<(String, VerdictClass), LossTotals>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::with_max_series(DEFAULT_MAX_SERIES)
    }
}

/// Buckets of `flowgate_policy_apply_seconds`: 0.5 ms to about 16 s, doubling.
fn apply_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 16)
}

impl Metrics {
    /// Every family with the default cap (`DEFAULT_MAX_SERIES`).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every family; each capped family holds at most `max_series` series of its own.
    pub fn with_max_series(max_series: usize) -> Self {
        let mut registry = Registry::default();
        let overflow = Family::<OverflowLabels, Counter>::default();
        let r = &mut registry;
        let verdicts = Capped::register(
            r,
            "flowgate_verdicts",
            "Flow records per verdict, counted once per allowing (policy, rule) for allows and \
             once per isolating policy for denies",
            max_series,
            &overflow,
        );
        let denied_packets = Capped::register(
            r,
            "flowgate_denied_packets",
            "Packets of deny and audit_deny records (deduplicated denies count every packet), \
             per isolating policy",
            max_series,
            &overflow,
        );
        let namespace_flows = Capped::register(
            r,
            "flowgate_namespace_flows",
            "Flow records by source and destination namespace (__external__: not a known pod)",
            max_series,
            &overflow,
        );
        let egress_world = Capped::register(
            r,
            "flowgate_egress_world",
            "Egress flow records to public addresses outside the cluster (tag egress_to_world)",
            max_series,
            &overflow,
        );
        let events_lost = Capped::register(
            r,
            "flowgate_events_lost",
            "Records lost, by stage (ringbuf or sink_<name>) and verdict class",
            max_series,
            &overflow,
        );
        let records = Family::<RecordLabels, Counter>::default();
        r.register(
            "flowgate_records",
            "Records observed by the metrics sink, by record type",
            records.clone(),
        );
        let policy_generation = Gauge::<u32, AtomicU32>::default();
        r.register(
            "flowgate_policy_generation",
            "Generation of the policy snapshot in the datapath",
            policy_generation.clone(),
        );
        let endpoints = Family::<EndpointLabels, Gauge<u64, AtomicU64>>::default();
        r.register(
            "flowgate_endpoints",
            "Local endpoints (pods) the datapath enforces for, by isolation per direction",
            endpoints.clone(),
        );
        let policy_apply = Histogram::new(apply_buckets());
        r.register_with_unit(
            "flowgate_policy_apply",
            "Time to compile a policy snapshot and write it to the datapath",
            Unit::Seconds,
            policy_apply.clone(),
        );
        r.register(
            "flowgate_metrics_overflow",
            "Increments counted in an __other__ series because the family was at its series cap",
            overflow.clone(),
        );
        let agent = crate::agent_metrics::AgentFamilies::register(r);

        let metrics = Self {
            registry,
            max_series,
            verdicts,
            denied_packets,
            namespace_flows,
            egress_world,
            events_lost,
            records,
            policy_generation,
            endpoints,
            policy_apply,
            agent,
            losses: Mutex::new(HashMap::new()),
        };
        // Series that exist from the start, so rate() and alerts see a zero, not nothing.
        for record_type in [RecordType::Flow, RecordType::Gap] {
            metrics
                .records
                .get_or_create(&RecordLabels { record_type })
                .inc_by(0);
        }
        for verdict_class in VerdictClass::ALL {
            let labels = LostLabels {
                stage: Stage::Ringbuf.label(),
                verdict_class,
            };
            metrics.events_lost.reserve(labels);
        }
        metrics.set_endpoints(EndpointCounts::default());
        metrics
    }

    /// The cap of each capped family.
    pub fn max_series(&self) -> usize {
        self.max_series
    }

    /// Counts one record (what `MetricsSink` does with each record it gets).
    pub fn observe(&self, record: &Record) {
        match record {
            Record::Flow(flow) => self.observe_flow(flow),
            Record::Gap(gap) => self.observe_gap(gap),
            Record::Node(node) => {
                let record_type = match node.record_type {
                    crate::node_record::NodeRecordType::Heartbeat => RecordType::Heartbeat,
                    crate::node_record::NodeRecordType::PolicySnapshot => {
                        RecordType::PolicySnapshot
                    }
                };
                self.records
                    .get_or_create(&RecordLabels { record_type })
                    .inc();
            }
        }
    }

    /// Counts one flow record in `flowgate_records_total`, `flowgate_verdicts_total`,
    /// `flowgate_denied_packets_total` (denies), `flowgate_namespace_flows_total` and
    /// `flowgate_egress_world_total` (records tagged `egress_to_world`).
    pub fn observe_flow(&self, flow: &FlowRecord) {
        self.records
            .get_or_create(&RecordLabels {
                record_type: RecordType::Flow,
            })
            .inc();
        let verdict_labels = |namespace: &str, name: &str, rule: String| VerdictLabels {
            direction: flow.direction,
            verdict: flow.verdict,
            reason: flow.reason,
            policy_namespace: namespace.to_owned(),
            policy_name: name.to_owned(),
            rule,
        };
        match flow.verdict {
            Verdict::Allow => {
                let mut seen: Vec<(&str, &str, usize)> = Vec::new();
                for r in flow.policy.allowed_by.iter() {
                    let key = (r.namespace.as_str(), r.name.as_str(), r.rule);
                    if seen.contains(&key) {
                        continue;
                    }
                    seen.push(key);
                    let labels = verdict_labels(&r.namespace, &r.name, r.rule.to_string());
                    self.verdicts.inc_by(labels, 1);
                }
                if seen.is_empty() {
                    self.verdicts
                        .inc_by(verdict_labels("", "", String::new()), 1);
                }
            }
            Verdict::Deny | Verdict::AuditDeny => {
                let mut seen: Vec<(&str, &str)> = Vec::new();
                for p in flow.policy.isolated_by.iter() {
                    let key = (p.namespace.as_str(), p.name.as_str());
                    if !seen.contains(&key) {
                        seen.push(key);
                    }
                }
                if seen.is_empty() {
                    seen.push(("", ""));
                }
                for (namespace, name) in seen {
                    self.verdicts
                        .inc_by(verdict_labels(namespace, name, String::new()), 1);
                    let labels = DeniedPacketLabels {
                        direction: flow.direction,
                        policy_namespace: namespace.to_owned(),
                        policy_name: name.to_owned(),
                    };
                    self.denied_packets.inc_by(labels, flow.counters.packets);
                }
            }
        }
        let namespace = |end: &crate::record::Endpoint| match (&end.kind, &end.namespace) {
            (EndpointKind::Pod, Some(ns)) => ns.to_string(),
            _ => EXTERNAL.to_owned(),
        };
        let src_namespace = namespace(&flow.source);
        self.namespace_flows.inc_by(
            NamespaceFlowLabels {
                src_namespace: src_namespace.clone(),
                dst_namespace: namespace(&flow.destination),
                direction: flow.direction,
                verdict: flow.verdict,
            },
            1,
        );
        if flow.tags.iter().any(|t| t == EGRESS_TO_WORLD_TAG) {
            let labels = EgressWorldLabels {
                src_namespace,
                verdict: flow.verdict,
            };
            self.egress_world.inc_by(labels, 1);
        }
    }

    /// Counts one gap record in `flowgate_records_total` and its losses in
    /// `flowgate_events_lost_total`.
    pub fn observe_gap(&self, gap: &GapRecord) {
        self.records
            .get_or_create(&RecordLabels {
                record_type: RecordType::Gap,
            })
            .inc();
        for class in VerdictClass::ALL {
            let n = gap.lost.get(class);
            if n > 0 {
                self.account_loss(&gap.stage, class, |t| {
                    t.from_gaps = t.from_gaps.saturating_add(n);
                });
            }
        }
    }

    /// Cumulative losses per stage since the start (the datapath's ring-buffer reserve
    /// failures, `Fanout::stats`). `flowgate_events_lost_total` becomes, per stage and verdict
    /// class, the larger of this total and the sum of the gap records seen; a total smaller
    /// than an earlier one is ignored, so the counter never decreases.
    pub fn set_losses(&self, losses: &[(Stage, LostCounts)]) {
        for (stage, lost) in losses {
            let stage = stage.label();
            for class in VerdictClass::ALL {
                let n = lost.get(class);
                self.account_loss(&stage, class, |t| t.reported = t.reported.max(n));
            }
        }
    }

    /// `set_losses` with the losses of every sink of a fan-out.
    pub fn set_sink_losses(&self, stats: &[SinkStats]) {
        let losses: Vec<(Stage, LostCounts)> = stats
            .iter()
            .map(|s| (Stage::Sink(s.name.clone()), s.lost))
            .collect();
        self.set_losses(&losses);
    }

    fn account_loss(&self, stage: &str, class: VerdictClass, update: impl FnOnce(&mut LossTotals)) {
        let mut losses = lock(&self.losses);
        let totals = losses.entry((stage.to_owned(), class)).or_default();
        update(totals);
        let target = totals.from_gaps.max(totals.reported);
        if target > totals.exported {
            let delta = target - totals.exported;
            totals.exported = target;
            let labels = LostLabels {
                stage: stage.to_owned(),
                verdict_class: class,
            };
            self.events_lost.inc_by(labels, delta);
        }
    }

    /// `flowgate_policy_generation`: the generation now in the datapath.
    pub fn set_policy_generation(&self, generation: u32) {
        self.policy_generation.set(generation);
    }

    /// `flowgate_endpoints`: sets all four (ingress_isolated, egress_isolated) series.
    pub fn set_endpoints(&self, counts: EndpointCounts) {
        for (ingress_isolated, egress_isolated, n) in [
            (false, false, counts.not_isolated),
            (true, false, counts.ingress_only),
            (false, true, counts.egress_only),
            (true, true, counts.both),
        ] {
            let labels = EndpointLabels {
                ingress_isolated,
                egress_isolated,
            };
            self.endpoints.get_or_create(&labels).set(n);
        }
    }

    /// `flowgate_policy_apply_seconds`: one compile + write of a snapshot took `elapsed`.
    pub fn observe_policy_apply(&self, elapsed: Duration) {
        self.policy_apply.observe(elapsed.as_secs_f64());
    }

    /// `flowgate_policy_sync_seconds`: an API event to the maps holding it.
    pub fn observe_policy_sync(&self, elapsed: Duration) {
        self.agent.observe_policy_sync(elapsed);
    }

    /// `flowgate_source_objects_rejected_total{kind}`.
    pub fn source_rejected(&self, kind: &str) {
        self.agent.source_rejected(kind);
    }

    /// `flowgate_source_watch_errors_total{kind}`.
    pub fn source_watch_error(&self, kind: &str) {
        self.agent.source_watch_error(kind);
    }

    /// `flowgate_map_entries{map}` and `flowgate_map_capacity{map}`: (map, entries, capacity).
    pub fn set_map_fill(&self, maps: &[(&str, u64, u64)]) {
        self.agent.set_map_fill(maps);
    }

    /// `flowgate_datapath_packets_total{path}` from the datapath's running totals
    /// (`agent_metrics::DATAPATH_PATHS` order: peer_judged, receiver_judged).
    pub fn set_datapath_paths(&self, totals: [u64; 2]) {
        self.agent.set_datapath_paths(totals);
    }

    /// `flowgate_pods_unenforced{reason}`: local pods not enforced, per reason.
    pub fn set_pods_unenforced(&self, by_reason: &[(&str, u64)]) {
        self.agent.set_unenforced(by_reason);
    }

    /// Removes the series of every policy not in `live` (namespace, name) from
    /// `flowgate_verdicts_total` and `flowgate_denied_packets_total`. Series without a policy
    /// (`""`) and overflow series stay. Freed series make room under the cap again.
    pub fn retain_policies<N: AsRef<str>, M: AsRef<str>>(&self, live: &[(N, M)]) {
        let live: HashSet<(&str, &str)> = live
            .iter()
            .map(|(ns, name)| (ns.as_ref(), name.as_ref()))
            .collect();
        self.verdicts.retain_policies(&live);
        self.denied_packets.retain_policies(&live);
    }

    /// The OpenMetrics text of every family, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            Ok(()) => out,
            // Writing to a String cannot fail and no label value encoder here returns an
            // error; should one ever, serve a valid empty exposition rather than a torn one.
            Err(std::fmt::Error) => "# EOF\n".to_owned(),
        }
    }
}

/// The sink that counts records into `Metrics` (runs on the fan-out's thread for it).
#[derive(Debug, Clone)]
pub struct MetricsSink {
    name: String,
    metrics: Arc<Metrics>,
}

impl MetricsSink {
    /// A sink named `metrics` (its losses are the stage `sink_metrics`).
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self::named("metrics", metrics)
    }

    pub fn named(name: &str, metrics: Arc<Metrics>) -> Self {
        Self {
            name: name.to_owned(),
            metrics,
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Sink for MetricsSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write(&mut self, record: &Record) -> std::io::Result<()> {
        self.metrics.observe(record);
        Ok(())
    }
}
