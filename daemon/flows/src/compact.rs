//! The one-line-per-flow human format (`--log-format compact`, `flowgate observe`): time,
//! verdict, the reporting side, source -> destination:port/transport, and the deciding
//! policy/rule (or the isolating policies of a default deny). Optionally colored.

use crate::pipeline::Record;
use crate::record::{Endpoint, FlowRecord, Verdict};

const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const RESET: &str = "\x1b[0m";

fn end(e: &Endpoint) -> String {
    match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => e.ip.to_string(),
    }
}

/// The deciding policies: `ns/name[rule]` for allows, the isolating `ns/name` for denies.
pub fn deciders(f: &FlowRecord) -> String {
    let refs: Vec<String> = if f.policy.allowed_by.is_empty() {
        f.policy
            .isolated_by
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    } else {
        f.policy
            .allowed_by
            .iter()
            .map(|a| format!("{}/{}[{}]", a.namespace, a.name, a.rule))
            .collect()
    };
    refs.join(",")
}

fn name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// One line (no newline), with ANSI colors if `color`.
pub fn compact(record: &Record, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_owned()
        }
    };
    let clock = |t: &str| t.get(11..23).unwrap_or(t).to_owned();
    match record {
        Record::Flow(f) => {
            let (label, code) = match f.verdict {
                Verdict::Allow => ("ALLOW", GREEN),
                Verdict::Deny => ("DENY", RED),
                Verdict::AuditDeny => ("AUDIT-DENY", YELLOW),
            };
            let port = f
                .destination
                .port
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let count = if f.counters.packets > 1 {
                format!(" x{}", f.counters.packets)
            } else {
                String::new()
            };
            format!(
                "{} {} {:<7} {} -> {}{}/{}  {} {}{}",
                paint(DIM, &clock(&f.time)),
                paint(code, &format!("{label:<10}")),
                name(&f.direction),
                end(&f.source),
                end(&f.destination),
                port,
                f.network.transport,
                name(&f.reason),
                deciders(f),
                count
            )
            .trim_end()
            .to_owned()
        }
        Record::Node(n) => {
            let what = match n.record_type {
                crate::node_record::NodeRecordType::Heartbeat => {
                    format!("heartbeat, {} flows so far", n.flows.unwrap_or(0))
                }
                crate::node_record::NodeRecordType::PolicySnapshot => {
                    let e = n.endpoints.unwrap_or_default();
                    format!(
                        "policy generation applied: {} policies, {} pods ({} ingress-isolated, {} egress-isolated, {} uncovered)",
                        n.policies.unwrap_or(0),
                        e.total,
                        e.ingress_isolated,
                        e.egress_isolated,
                        e.uncovered
                    )
                }
            };
            format!(
                "{} {} generation {} {what}",
                paint(DIM, &clock(&n.time)),
                paint(DIM, &format!("{:<10}", "NODE")),
                n.generation
            )
        }
        Record::Gap(g) => {
            let seqs = g
                .lost_seq
                .map(|r| format!(" seq {}-{}", r.first, r.last))
                .unwrap_or_default();
            format!(
                "{} {} {} lost {} (allow {}, deny {}, audit {}){seqs}",
                paint(DIM, &clock(&g.time)),
                paint(YELLOW, &format!("{:<10}", "GAP")),
                g.stage,
                g.lost.total(),
                g.lost.allow,
                g.lost.deny,
                g.lost.audit
            )
        }
    }
}

/// `compact` without colors, as a `jsonl::Formatter`.
pub fn plain(record: &Record) -> String {
    compact(record, false)
}
