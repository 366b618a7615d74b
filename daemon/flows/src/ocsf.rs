//! Records as OCSF events, for SIEMs that ingest OCSF (Amazon Security Lake, Splunk, ...).
//!
//! A flow record becomes a Network Activity event (`class_uid` 4001, OCSF 1.3.0) with the
//! `host` and `security_control` profiles; a gap record becomes an OCSF Base Event (`class_uid`
//! 0, `activity_id` 99 Other) since OCSF has no class for "records were lost". Fields without
//! an OCSF home go to `unmapped`. The mapping table, with the reasons for each choice, is
//! docs/siem-mappings.md; tests/schema.rs checks this code against that table.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::gap::GapRecord;
use crate::pipeline::Record;
use crate::record::{
    Direction, Endpoint, EndpointKind, FlowRecord, PolicyRef, Reason, RuleRef, Scope, Verdict,
};

/// The OCSF schema version the events follow.
pub const OCSF_VERSION: &str = "1.3.0";
/// `metadata.product.name` and `metadata.product.vendor_name`.
pub const PRODUCT: &str = "flowgate";

pub const NETWORK_ACTIVITY_CLASS: u32 = 4001;
pub const NETWORK_ACTIVITY_CATEGORY: u32 = 4;
pub const BASE_EVENT_CLASS: u32 = 0;

/// The tag that marks egress to a public address (raises the severity of a deny).
const EGRESS_TO_WORLD: &str = "egress_to_world";

/// One record as an OCSF event.
pub fn to_ocsf(record: &Record) -> Value {
    match record {
        Record::Flow(flow) => network_activity(flow),
        Record::Gap(gap) => base_event_for_gap(gap),
        Record::Node(node) => base_event_for_node(node),
    }
}

/// Heartbeats and policy snapshots: OCSF Base Events (activity "Other") with the record kept
/// whole in `unmapped`.
fn base_event_for_node(n: &crate::node_record::NodeRecord) -> Value {
    let name = match n.record_type {
        crate::node_record::NodeRecordType::Heartbeat => "heartbeat",
        crate::node_record::NodeRecordType::PolicySnapshot => "policy_snapshot",
    };
    let mut ev = Map::new();
    put(&mut ev, "class_uid", BASE_EVENT_CLASS);
    put(&mut ev, "class_name", "Base Event");
    put(&mut ev, "category_uid", 0);
    put(&mut ev, "category_name", "Uncategorized");
    put(&mut ev, "activity_id", 99);
    put(&mut ev, "activity_name", name);
    put(&mut ev, "type_uid", u64::from(BASE_EVENT_CLASS) * 100 + 99);
    put(&mut ev, "type_name", "Base Event: Other");
    put_time(&mut ev, "time", &n.time);
    put(&mut ev, "timezone_offset", 0);
    put_id(&mut ev, "severity_id", "severity", id(1, "Informational"));
    put_id(&mut ev, "status_id", "status", id(1, "Success"));
    put(
        &mut ev,
        "message",
        format!("{name}: generation {}", n.generation),
    );
    put(&mut ev, "device", device(&n.node));
    put(
        &mut ev,
        "metadata",
        metadata::<&str>(n.schema, n.seq, &n.time, &["host"], &[]),
    );
    put(
        &mut ev,
        "unmapped",
        serde_json::to_value(n).unwrap_or_default(),
    );
    Value::Object(ev)
}

/// An OCSF enum attribute pair: the id and its caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id {
    pub id: u32,
    pub caption: &'static str,
}

const fn id(id: u32, caption: &'static str) -> Id {
    Id { id, caption }
}

/// `activity_id`: a new connection allowed (or passed in audit mode) opens; a denied one is
/// refused; an established one cut by a policy change is reset.
pub fn activity(verdict: Verdict, reason: Reason) -> Id {
    match (verdict, reason) {
        (Verdict::Allow | Verdict::AuditDeny, _) => id(1, "Open"),
        (Verdict::Deny, Reason::RecheckDeny) => id(3, "Reset"),
        (Verdict::Deny, _) => id(5, "Refuse"),
    }
}

/// `action_id` (security_control profile): what the control did to the traffic.
pub fn action(verdict: Verdict) -> Id {
    match verdict {
        Verdict::Allow | Verdict::AuditDeny => id(1, "Allowed"),
        Verdict::Deny => id(2, "Denied"),
    }
}

/// `disposition_id`: an audit deny passed but was detected as a policy violation.
pub fn disposition(verdict: Verdict) -> Id {
    match verdict {
        Verdict::Allow => id(1, "Allowed"),
        Verdict::Deny => id(2, "Blocked"),
        Verdict::AuditDeny => id(15, "Detected"),
    }
}

/// `status_id`: did the connection attempt go through.
pub fn status(verdict: Verdict) -> Id {
    match verdict {
        Verdict::Allow | Verdict::AuditDeny => id(1, "Success"),
        Verdict::Deny => id(2, "Failure"),
    }
}

/// `severity_id`: allows are informational, audit denies low, denies medium, and a denied
/// egress to a public address (an exfiltration attempt) high.
pub fn severity<T: AsRef<str>>(verdict: Verdict, tags: &[T]) -> Id {
    match verdict {
        Verdict::Allow => id(1, "Informational"),
        Verdict::AuditDeny => id(2, "Low"),
        Verdict::Deny if tags.iter().any(|t| t.as_ref() == EGRESS_TO_WORLD) => id(4, "High"),
        Verdict::Deny => id(3, "Medium"),
    }
}

/// `connection_info.direction_id`, from the reporting pod's point of view (the pod is the
/// "inside" whose policy decided).
pub fn direction(direction: Direction) -> Id {
    match direction {
        Direction::Ingress => id(1, "Inbound"),
        Direction::Egress => id(2, "Outbound"),
    }
}

/// `connection_info.boundary_id`: External when either end is a public external address,
/// Internal otherwise (pods, and private addresses such as nodes).
pub fn boundary(source: &Endpoint, destination: &Endpoint) -> Id {
    let public = |e: &Endpoint| e.kind == EndpointKind::External && e.scope == Some(Scope::Public);
    if public(source) || public(destination) {
        id(3, "External")
    } else {
        id(2, "Internal")
    }
}

/// `connection_info.protocol_num` and `protocol_name` (IANA keyword, lowercase) of a record's
/// `network.transport`.
pub fn protocol(transport: &str) -> (Option<u8>, Option<&'static str>) {
    match transport {
        "tcp" => (Some(6), Some("tcp")),
        "udp" => (Some(17), Some("udp")),
        "sctp" => (Some(132), Some("sctp")),
        "icmp" => (Some(1), Some("icmp")),
        "icmpv6" => (Some(58), Some("ipv6-icmp")),
        other => (other.parse().ok(), None),
    }
}

/// `connection_info.tcp_flags`: the record's `SYN|ACK` names as the TCP header's bit mask.
pub fn tcp_flag_bits(names: &str) -> u32 {
    names
        .split('|')
        .map(|name| match name {
            "FIN" => 0x01,
            "SYN" => 0x02,
            "RST" => 0x04,
            "PSH" => 0x08,
            "ACK" => 0x10,
            "URG" => 0x20,
            _ => 0,
        })
        .fold(0, |acc, bit| acc | bit)
}

/// `firewall_rule.uid` of a rule that allowed a flow: `<namespace>/<policy>/<direction>/<rule>`.
pub fn rule_uid(rule: &RuleRef, direction: Direction) -> String {
    format!(
        "{}/{}/{}/{}",
        rule.namespace,
        rule.name,
        direction_name(direction),
        rule.rule
    )
}

/// Milliseconds since the Unix epoch of an RFC 3339 time (`...Z` or `...+HH:MM`), truncated.
pub fn epoch_ms(rfc3339: &str) -> Option<i64> {
    let b = rfc3339.as_bytes();
    let num = |from: usize, to: usize| -> Option<i64> {
        let s = rfc3339.get(from..to)?;
        if s.bytes().all(|c| c.is_ascii_digit()) {
            s.parse().ok()
        } else {
            None
        }
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
    let mut rest = rfc3339.get(19..)?;
    let mut millis = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms = frac.get(..digits.min(3))?;
        millis = format!("{ms:0<3}").parse().ok()?;
        rest = frac.get(digits..)?;
    }
    let offset_secs = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.get(..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            if rest.len() != 6 || rest.get(3..4)? != ":" {
                return None;
            }
            let hours: i64 = rest.get(1..3)?.parse().ok()?;
            let minutes: i64 = rest.get(4..6)?.parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1000 + millis)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The lowercase name serde gives a record enum.
fn name_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

fn direction_name(direction: Direction) -> &'static str {
    match direction {
        Direction::Ingress => "ingress",
        Direction::Egress => "egress",
    }
}

fn put(map: &mut Map<String, Value>, key: &str, value: impl Into<Value>) {
    map.insert(key.to_owned(), value.into());
}

fn put_id(map: &mut Map<String, Value>, key: &str, caption_key: &str, value: Id) {
    put(map, key, value.id);
    put(map, caption_key, value.caption);
}

fn put_time(map: &mut Map<String, Value>, key: &str, rfc3339: &str) {
    if let Some(ms) = epoch_ms(rfc3339) {
        put(map, key, ms);
    }
}

fn metadata<T: AsRef<str>>(
    schema: &str,
    seq: u64,
    time: &str,
    profiles: &[&str],
    labels: &[T],
) -> Value {
    let mut product = Map::new();
    put(&mut product, "name", PRODUCT);
    put(&mut product, "vendor_name", PRODUCT);
    put(&mut product, "version", env!("CARGO_PKG_VERSION"));
    let mut m = Map::new();
    put(&mut m, "version", OCSF_VERSION);
    put(&mut m, "product", product);
    put(
        &mut m,
        "profiles",
        profiles.iter().map(|p| Value::from(*p)).collect::<Vec<_>>(),
    );
    put(&mut m, "log_version", schema);
    put(&mut m, "sequence", seq);
    put(&mut m, "original_time", time);
    if !labels.is_empty() {
        let labels: Vec<Value> = labels.iter().map(|l| Value::from(l.as_ref())).collect();
        put(&mut m, "labels", labels);
    }
    Value::Object(m)
}

/// The node as the OCSF `device` (host profile). Its type is not known to the agent.
fn device(node: &str) -> Value {
    let mut d = Map::new();
    put(&mut d, "hostname", node);
    put(&mut d, "name", node);
    put_id(&mut d, "type_id", "type", id(0, "Unknown"));
    Value::Object(d)
}

/// `namespace/pod` of a pod endpoint.
fn pod_name(e: &Endpoint) -> Option<String> {
    match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => Some(format!("{ns}/{pod}")),
        _ => None,
    }
}

fn network_endpoint(e: &Endpoint) -> Value {
    let mut m = Map::new();
    put(&mut m, "ip", e.ip.to_string());
    if let Some(port) = e.port {
        put(&mut m, "port", port);
    }
    if let Some(name) = pod_name(e) {
        put(&mut m, "name", name);
    }
    Value::Object(m)
}

/// The endpoint's fields that have no OCSF attribute (for `unmapped`).
fn endpoint_rest(e: &Endpoint) -> Value {
    let mut m = Map::new();
    put(&mut m, "kind", name_of(&e.kind));
    if let Some(ns) = &e.namespace {
        put(&mut m, "namespace", &**ns);
    }
    if let Some(pod) = &e.pod {
        put(&mut m, "pod", &**pod);
    }
    if !e.labels.is_empty() {
        let labels: Map<String, Value> = e
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        put(&mut m, "labels", labels);
    }
    if let Some(scope) = &e.scope {
        put(&mut m, "scope", name_of(scope));
    }
    if let Some(node) = &e.node {
        put(&mut m, "node", &**node);
    }
    if let Some(w) = &e.workload {
        let mut workload = Map::new();
        put(&mut workload, "kind", &*w.kind);
        put(&mut workload, "name", &*w.name);
        put(&mut m, "workload", workload);
    }
    Value::Object(m)
}

fn policy_ref_value(p: &PolicyRef) -> Value {
    let mut m = Map::new();
    put(&mut m, "namespace", p.namespace.as_str());
    put(&mut m, "name", p.name.as_str());
    Value::Object(m)
}

fn rule_ref_value(r: &RuleRef) -> Value {
    let mut m = Map::new();
    put(&mut m, "namespace", r.namespace.as_str());
    put(&mut m, "name", r.name.as_str());
    put(&mut m, "rule", r.rule);
    if let Some(peer) = r.peer {
        put(&mut m, "peer", peer);
    }
    if let Some(port) = r.port {
        put(&mut m, "port", port);
    }
    Value::Object(m)
}

/// `<namespace>/<pod> <ip>:<port>` (or without the pod, or the port) for `message`.
fn describe(e: &Endpoint) -> String {
    let addr = match (e.ip, e.port) {
        (std::net::IpAddr::V6(ip), Some(port)) => format!("[{ip}]:{port}"),
        (ip, Some(port)) => format!("{ip}:{port}"),
        (ip, None) => ip.to_string(),
    };
    match pod_name(e) {
        Some(name) => format!("{name} {addr}"),
        None => addr,
    }
}

fn network_activity(f: &FlowRecord) -> Value {
    let mut ev = Map::new();
    let activity = activity(f.verdict, f.reason);
    put(&mut ev, "class_uid", NETWORK_ACTIVITY_CLASS);
    put(&mut ev, "class_name", "Network Activity");
    put(&mut ev, "category_uid", NETWORK_ACTIVITY_CATEGORY);
    put(&mut ev, "category_name", "Network Activity");
    put_id(&mut ev, "activity_id", "activity_name", activity);
    put(
        &mut ev,
        "type_uid",
        u64::from(NETWORK_ACTIVITY_CLASS) * 100 + u64::from(activity.id),
    );
    put(
        &mut ev,
        "type_name",
        format!("Network Activity: {}", activity.caption),
    );
    put_time(&mut ev, "time", &f.time);
    put(&mut ev, "timezone_offset", 0);
    put_time(&mut ev, "start_time", &f.counters.first_seen);
    put_time(&mut ev, "end_time", &f.counters.last_seen);
    put(&mut ev, "count", f.counters.packets);
    put_id(
        &mut ev,
        "severity_id",
        "severity",
        severity(f.verdict, &f.tags),
    );
    put_id(&mut ev, "status_id", "status", status(f.verdict));
    put(&mut ev, "status_detail", name_of(&f.reason));
    put_id(&mut ev, "action_id", "action", action(f.verdict));
    put_id(
        &mut ev,
        "disposition_id",
        "disposition",
        disposition(f.verdict),
    );
    put(
        &mut ev,
        "message",
        format!(
            "{} {} {} -> {} {} ({})",
            name_of(&f.verdict),
            direction_name(f.direction),
            describe(&f.source),
            describe(&f.destination),
            f.network.transport,
            name_of(&f.reason)
        ),
    );
    put(&mut ev, "src_endpoint", network_endpoint(&f.source));
    put(&mut ev, "dst_endpoint", network_endpoint(&f.destination));

    let mut conn = Map::new();
    put_id(
        &mut conn,
        "direction_id",
        "direction",
        direction(f.direction),
    );
    put_id(
        &mut conn,
        "boundary_id",
        "boundary",
        boundary(&f.source, &f.destination),
    );
    let (num, name) = protocol(&f.network.transport);
    if let Some(num) = num {
        put(&mut conn, "protocol_num", num);
    }
    if let Some(name) = name {
        put(&mut conn, "protocol_name", name);
    }
    put(&mut conn, "protocol_ver_id", f.network.ip_version);
    if let Some(flags) = &f.network.tcp_flags {
        put(&mut conn, "tcp_flags", tcp_flag_bits(flags));
    }
    put(&mut ev, "connection_info", conn);

    let mut traffic = Map::new();
    put(&mut traffic, "packets", f.counters.packets);
    put(&mut traffic, "bytes", f.counters.bytes);
    put(&mut ev, "traffic", traffic);

    let generation = f.policy.generation.to_string();
    let policy_entity = |namespace: &str, name: &str| {
        let mut p = Map::new();
        put(&mut p, "uid", format!("{namespace}/{name}"));
        put(&mut p, "name", name);
        put(&mut p, "version", generation.as_str());
        Value::Object(p)
    };
    if let Some(rule) = f.policy.allowed_by.first() {
        put(
            &mut ev,
            "policy",
            policy_entity(&rule.namespace, &rule.name),
        );
        let mut r = Map::new();
        put(&mut r, "uid", rule_uid(rule, f.direction));
        put(
            &mut r,
            "name",
            format!(
                "{}/{} {}[{}]",
                rule.namespace,
                rule.name,
                direction_name(f.direction),
                rule.rule
            ),
        );
        put(&mut r, "type", "NetworkPolicy");
        put(&mut r, "category", direction_name(f.direction));
        put(&mut r, "version", generation.as_str());
        put(&mut ev, "firewall_rule", r);
    } else if let Some(p) = f.policy.isolated_by.first() {
        put(&mut ev, "policy", policy_entity(&p.namespace, &p.name));
    }

    put(&mut ev, "device", device(&f.node));
    put(
        &mut ev,
        "metadata",
        metadata(
            f.schema,
            f.seq,
            &f.time,
            &["host", "security_control"],
            &f.tags,
        ),
    );

    let mut unmapped = Map::new();
    put(&mut unmapped, "mode", name_of(&f.mode));
    put(&mut unmapped, "reporter", name_of(&f.reporter));
    put(&mut unmapped, "source", endpoint_rest(&f.source));
    put(&mut unmapped, "destination", endpoint_rest(&f.destination));
    let mut policy = Map::new();
    put(&mut policy, "generation", f.policy.generation);
    if !f.policy.allowed_by.is_empty() {
        let list: Vec<Value> = f.policy.allowed_by.iter().map(rule_ref_value).collect();
        put(&mut policy, "allowed_by", list);
    }
    if !f.policy.isolated_by.is_empty() {
        let list: Vec<Value> = f.policy.isolated_by.iter().map(policy_ref_value).collect();
        put(&mut policy, "isolated_by", list);
    }
    if f.policy.unresolved {
        put(&mut policy, "unresolved", true);
    }
    put(&mut unmapped, "policy", policy);
    let mut counters = Map::new();
    put(&mut counters, "dedup_count", f.counters.dedup_count);
    put(&mut unmapped, "counters", counters);
    put(&mut ev, "unmapped", unmapped);
    Value::Object(ev)
}

/// `severity_id` of a gap: high when denies (or audit denies) were lost, since the deny log
/// is then incomplete; low when only allows were.
pub fn gap_severity(gap: &GapRecord) -> Id {
    if gap.lost.deny > 0 || gap.lost.audit > 0 {
        id(4, "High")
    } else {
        id(2, "Low")
    }
}

fn base_event_for_gap(g: &GapRecord) -> Value {
    let mut ev = Map::new();
    put(&mut ev, "class_uid", BASE_EVENT_CLASS);
    put(&mut ev, "class_name", "Base Event");
    put(&mut ev, "category_uid", 0);
    put(&mut ev, "category_name", "Uncategorized");
    put(&mut ev, "activity_id", 99);
    put(&mut ev, "activity_name", g.record_type);
    put(&mut ev, "type_uid", u64::from(BASE_EVENT_CLASS) * 100 + 99);
    put(&mut ev, "type_name", "Base Event: Other");
    put_time(&mut ev, "time", &g.time);
    put(&mut ev, "timezone_offset", 0);
    put(&mut ev, "count", g.lost.total());
    put_id(&mut ev, "severity_id", "severity", gap_severity(g));
    put_id(&mut ev, "status_id", "status", id(2, "Failure"));
    put(
        &mut ev,
        "status_detail",
        format!("records lost at stage {}", g.stage),
    );
    let range = g
        .lost_seq
        .map(|r| format!(", seq {}..={}", r.first, r.last))
        .unwrap_or_default();
    put(
        &mut ev,
        "message",
        format!(
            "{} records lost at {} (allow {}, deny {}, audit {}){range}",
            g.lost.total(),
            g.stage,
            g.lost.allow,
            g.lost.deny,
            g.lost.audit
        ),
    );
    put(&mut ev, "device", device(&g.node));
    put(
        &mut ev,
        "metadata",
        metadata::<&str>(g.schema, g.seq, &g.time, &["host"], &[]),
    );
    let mut unmapped = Map::new();
    put(&mut unmapped, "record_type", g.record_type);
    put(&mut unmapped, "stage", g.stage.as_str());
    let mut lost = Map::new();
    put(&mut lost, "allow", g.lost.allow);
    put(&mut lost, "deny", g.lost.deny);
    put(&mut lost, "audit", g.lost.audit);
    put(&mut unmapped, "lost", lost);
    if let Some(range) = g.lost_seq {
        let mut r = Map::new();
        put(&mut r, "first", range.first);
        put(&mut r, "last", range.last);
        put(&mut unmapped, "lost_seq", r);
    }
    put(&mut ev, "unmapped", unmapped);
    Value::Object(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_rfc3339_to_epoch_millis() {
        assert_eq!(epoch_ms("1970-01-01T00:00:00.000000000Z"), Some(0));
        assert_eq!(
            epoch_ms("2026-11-28T18:00:00.500999999Z"),
            Some(1_795_888_800_500)
        );
        assert_eq!(epoch_ms("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(epoch_ms("2026-11-28T18:00:00.5Z"), Some(1_795_888_800_500));
        assert_eq!(epoch_ms("2000-02-29T01:00:00+01:00"), Some(951_782_400_000));
        assert_eq!(epoch_ms("1969-12-31T23:59:59.999Z"), Some(-1));
        for bad in [
            "",
            "2026-11-28",
            "2026-13-01T00:00:00Z",
            "2026-11-28T18:00:00.Z",
        ] {
            assert_eq!(epoch_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn tcp_flag_names_become_header_bits() {
        assert_eq!(tcp_flag_bits("SYN"), 0x02);
        assert_eq!(tcp_flag_bits("SYN|ACK"), 0x12);
        assert_eq!(tcp_flag_bits("SYN|ACK|FIN|RST|PSH|URG"), 0x3f);
        assert_eq!(tcp_flag_bits(""), 0);
    }

    #[test]
    fn protocols_use_iana_names_and_numbers() {
        assert_eq!(protocol("icmpv6"), (Some(58), Some("ipv6-icmp")));
        assert_eq!(protocol("47"), (Some(47), None));
        assert_eq!(protocol("bogus"), (None, None));
    }
}
