//! The mapping of flow, gap and node records to OTLP log fields (severity, event name, body,
//! attributes; see the tables in the module docs of `otlp`), and the RFC 3339 time parser.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowgate_flows::gap::GapRecord;
use flowgate_flows::pipeline::Record;
use flowgate_flows::record::{Endpoint, FlowRecord, Reporter, Verdict};
use opentelemetry::logs::{AnyValue, Severity};
use serde::Serialize;

/// What one record becomes (exposed so the mapping can be checked without a collector).
#[derive(Debug, Clone, PartialEq)]
pub struct LogFields {
    /// `None` when the record's time does not parse (the collector then uses the observed time).
    pub timestamp: Option<SystemTime>,
    pub severity: Severity,
    pub severity_text: &'static str,
    pub event_name: &'static str,
    pub body: String,
    pub attributes: Vec<(&'static str, AnyValue)>,
}

impl LogFields {
    pub fn get(&self, key: &str) -> Option<&AnyValue> {
        self.attributes
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// The mapping of the module docs' tables.
pub fn log_fields(record: &Record) -> LogFields {
    match record {
        Record::Flow(f) => flow_fields(f),
        Record::Gap(g) => gap_fields(g),
        Record::Node(n) => node_fields(n),
    }
}

/// Heartbeats and policy snapshots: INFO log records with the generation and the counts.
fn node_fields(n: &flowgate_flows::node_record::NodeRecord) -> LogFields {
    let record_type = label(&n.record_type);
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        ("flowgate.record_type", record_type.clone().into()),
        ("flowgate.schema", n.schema.into()),
        ("flowgate.seq", int(n.seq)),
        ("flowgate.policy.generation", int(u64::from(n.generation))),
        ("flowgate.mode", label(&n.mode).into()),
    ];
    if let Some(p) = n.policies {
        a.push(("flowgate.policies", int(p)));
    }
    if let Some(e) = n.endpoints {
        a.push(("flowgate.endpoints.total", int(e.total)));
        a.push((
            "flowgate.endpoints.ingress_isolated",
            int(e.ingress_isolated),
        ));
        a.push(("flowgate.endpoints.egress_isolated", int(e.egress_isolated)));
        a.push(("flowgate.endpoints.uncovered", int(e.uncovered)));
    }
    if let Some(f) = n.flows {
        a.push(("flowgate.flows", int(f)));
    }
    LogFields {
        timestamp: parse_rfc3339(&n.time),
        severity: Severity::Info,
        severity_text: "INFO",
        event_name: if n.record_type == flowgate_flows::node_record::NodeRecordType::Heartbeat {
            "flowgate.heartbeat"
        } else {
            "flowgate.policy_snapshot"
        },
        body: format!("{record_type}: generation {}", n.generation),
        attributes: a,
    }
}

/// The JSON record's string for an enum value (`snake_case`), so both outputs agree.
fn label<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn int(v: u64) -> AnyValue {
    AnyValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
}

/// A name shared with the record (no copy).
fn shared(s: &Arc<str>) -> AnyValue {
    AnyValue::String(Arc::clone(s).into())
}

fn strings(v: impl IntoIterator<Item = String>) -> AnyValue {
    AnyValue::ListAny(Box::new(v.into_iter().map(AnyValue::from).collect()))
}

fn flow_fields(f: &FlowRecord) -> LogFields {
    let mut a: Vec<(&'static str, AnyValue)> = Vec::with_capacity(32);
    a.push(("source.address", f.source.ip.to_string().into()));
    if let Some(p) = f.source.port {
        a.push(("source.port", AnyValue::Int(i64::from(p))));
    }
    a.push(("destination.address", f.destination.ip.to_string().into()));
    if let Some(p) = f.destination.port {
        a.push(("destination.port", AnyValue::Int(i64::from(p))));
    }
    a.push(("network.transport", f.network.transport.clone().into()));
    let ipv6 = match f.network.ip_version {
        4 => false,
        6 => true,
        _ => f.source.ip.is_ipv6(),
    };
    a.push(("network.type", if ipv6 { "ipv6" } else { "ipv4" }.into()));
    let local = match f.reporter {
        Reporter::Src => &f.source,
        Reporter::Dst => &f.destination,
    };
    if let (Some(ns), Some(pod)) = (&local.namespace, &local.pod) {
        a.push(("k8s.namespace.name", shared(ns)));
        a.push(("k8s.pod.name", shared(pod)));
    }
    a.push(("flowgate.record_type", label(&f.record_type).into()));
    a.push(("flowgate.schema", f.schema.into()));
    a.push(("flowgate.seq", int(f.seq)));
    a.push(("flowgate.verdict", label(&f.verdict).into()));
    a.push(("flowgate.mode", label(&f.mode).into()));
    a.push(("flowgate.reason", label(&f.reason).into()));
    a.push(("flowgate.direction", label(&f.direction).into()));
    a.push(("flowgate.reporter", label(&f.reporter).into()));
    a.push((
        "flowgate.policy.generation",
        AnyValue::Int(i64::from(f.policy.generation)),
    ));
    if !f.policy.allowed_by.is_empty() {
        let refs = f
            .policy
            .allowed_by
            .iter()
            .map(|r| format!("{}/{}[{}]", r.namespace, r.name, r.rule));
        a.push(("flowgate.policy.allowed_by", strings(refs)));
    }
    if !f.policy.isolated_by.is_empty() {
        let refs = f
            .policy
            .isolated_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name));
        a.push(("flowgate.policy.isolated_by", strings(refs)));
    }
    if f.policy.unresolved {
        a.push(("flowgate.policy.unresolved", AnyValue::Boolean(true)));
    }
    endpoint_fields(&mut a, &f.source, SOURCE_KEYS);
    endpoint_fields(&mut a, &f.destination, DESTINATION_KEYS);
    if let Some(flags) = &f.network.tcp_flags {
        a.push(("flowgate.network.tcp_flags", flags.clone().into()));
    }
    a.push(("flowgate.packets", int(f.counters.packets)));
    a.push(("flowgate.dedup_count", int(f.counters.dedup_count)));
    if !f.tags.is_empty() {
        a.push((
            "flowgate.tags",
            strings(f.tags.iter().map(|t| t.to_string())),
        ));
    }
    let (severity, severity_text) = match f.verdict {
        Verdict::Allow => (Severity::Info, "INFO"),
        Verdict::Deny | Verdict::AuditDeny => (Severity::Warn, "WARN"),
    };
    LogFields {
        timestamp: parse_rfc3339(&f.time),
        severity,
        severity_text,
        event_name: "flowgate.flow",
        body: flow_body(f),
        attributes: a,
    }
}

/// `kind`, `namespace`, `pod`, `scope` keys of one end.
type EndpointKeys = [&'static str; 4];
const SOURCE_KEYS: EndpointKeys = [
    "flowgate.source.kind",
    "flowgate.source.namespace",
    "flowgate.source.pod",
    "flowgate.source.scope",
];
const DESTINATION_KEYS: EndpointKeys = [
    "flowgate.destination.kind",
    "flowgate.destination.namespace",
    "flowgate.destination.pod",
    "flowgate.destination.scope",
];

fn endpoint_fields(a: &mut Vec<(&'static str, AnyValue)>, e: &Endpoint, keys: EndpointKeys) {
    let [kind, namespace, pod, scope] = keys;
    a.push((kind, label(&e.kind).into()));
    if let Some(ns) = &e.namespace {
        a.push((namespace, shared(ns)));
    }
    if let Some(p) = &e.pod {
        a.push((pod, shared(p)));
    }
    if let Some(s) = &e.scope {
        a.push((scope, label(s).into()));
    }
}

/// `shop/frontend 10.0.0.1:40000`, `[2001:db8::1]:443`, `203.0.113.5` (no port: ICMP).
fn endpoint_text(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (IpAddr::V6(ip), Some(p)) => format!("[{ip}]:{p}"),
        (ip, Some(p)) => format!("{ip}:{p}"),
        (ip, None) => ip.to_string(),
    };
    match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod} {addr}"),
        _ => addr,
    }
}

fn flow_body(f: &FlowRecord) -> String {
    format!(
        "{} {} {} {} -> {} ({})",
        label(&f.verdict),
        label(&f.direction),
        f.network.transport,
        endpoint_text(&f.source),
        endpoint_text(&f.destination),
        label(&f.reason),
    )
}

fn gap_fields(g: &GapRecord) -> LogFields {
    let mut a: Vec<(&'static str, AnyValue)> = vec![
        ("flowgate.record_type", g.record_type.into()),
        ("flowgate.schema", g.schema.into()),
        ("flowgate.seq", int(g.seq)),
        ("flowgate.gap.stage", g.stage.clone().into()),
        ("flowgate.gap.lost.allow", int(g.lost.allow)),
        ("flowgate.gap.lost.deny", int(g.lost.deny)),
        ("flowgate.gap.lost.audit", int(g.lost.audit)),
        ("flowgate.gap.lost.total", int(g.lost.total())),
    ];
    let mut body = format!(
        "lost {} records at {} (allow {}, deny {}, audit {})",
        g.lost.total(),
        g.stage,
        g.lost.allow,
        g.lost.deny,
        g.lost.audit
    );
    if let Some(r) = g.lost_seq {
        a.push(("flowgate.gap.lost_seq.first", int(r.first)));
        a.push(("flowgate.gap.lost_seq.last", int(r.last)));
        body.push_str(&format!(", seq {}..{}", r.first, r.last));
    }
    LogFields {
        timestamp: parse_rfc3339(&g.time),
        severity: Severity::Warn,
        severity_text: "WARN",
        event_name: "flowgate.gap",
        body,
        attributes: a,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` -> time (the records' `time`); `None` when it
/// does not parse or is before 1970.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let digits = b.get(from..to)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 7)?, num(8, 10)?);
    let (hour, minute, second) = (num(11, 13)?, num(14, 16)?, num(17, 19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut i = 19;
    let mut nanos: i64 = 0;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            if i - start < 9 {
                nanos = nanos * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        if i == start {
            return None;
        }
        for _ in (i - start)..9 {
            nanos *= 10;
        }
    }
    let offset_secs = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let secs = num(i + 1, i + 3)? * 3600 + num(i + 4, i + 6)? * 60;
            if *c == b'+' { secs } else { -secs }
        }
        _ => return None,
    };
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    let secs = u64::try_from(secs).ok()?;
    let nanos = u32::try_from(nanos).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}
