//! The Prometheus metrics, tested by their encoded OpenMetrics text: counts per policy and
//! rule, the `__other__` overflow at the cap, removal of a deleted policy's series, loss
//! counters, bounded labels (no IP, port or pod name), and the structure of the exposition.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use flowgate_abi::{ABI_VERSION, DIR_EGRESS, DIR_INGRESS, FlowEvent, reason, verdict};
use flowgate_flows::enrich::{LocalInfo, PodInfo};
use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage};
use flowgate_flows::metrics::{EndpointCounts, Metrics, MetricsSink};
use flowgate_flows::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Scope, Verdict,
};
use flowgate_flows::{Enricher, Fanout, Record, Sink, Tables};

// The OpenMetrics text checker and the record builders, in a file of their own.
include!("support/metrics_text.rs");

// ---------------------------------------------------------------------------------------------
// Tests.

/// An allow counts once per allowing (policy, rule); a deny once per isolating policy with
/// rule=""; a not_isolated allow has empty policy labels; denied packets count the dedup count.
#[test]
fn counts_each_allowing_rule_and_each_isolating_policy() {
    let m = Metrics::new();
    let allow = allow_into_web(vec![
        rule("shop", "allow-frontend", 0),
        rule("shop", "allow-frontend", 2),
        rule("shop", "allow-monitoring", 0),
    ]);
    m.observe_flow(&allow);
    m.observe_flow(&allow);
    m.observe_flow(&allow_into_web(vec![rule("shop", "allow-frontend", 2)]));
    m.observe_flow(&deny_into_db(
        "data",
        vec![policy("data", "default-deny"), policy("data", "db-ingress")],
        7,
    ));
    m.observe_flow(&deny_into_db(
        "data",
        vec![policy("data", "default-deny")],
        1,
    ));
    let mut open = flow(
        Direction::Egress,
        Verdict::Allow,
        Reason::NotIsolated,
        pod("tools", "debug-shell", [10, 244, 2, 30], 33000),
        pod("shop", "web-7d9f8-x2x9q", [10, 244, 2, 9], 8443),
    );
    m.observe_flow(&open);
    open.verdict = Verdict::AuditDeny;
    open.reason = Reason::DefaultDeny;
    open.policy.isolated_by = vec![policy("tools", "egress-lockdown")].into();
    open.counters.packets = 3;
    m.observe_flow(&open);

    let text = encode(&m);
    for line in [
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-frontend",rule="0"} 2"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-frontend",rule="2"} 3"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-monitoring",rule="0"} 2"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="data",policy_name="default-deny",rule=""} 2"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="data",policy_name="db-ingress",rule=""} 1"#,
        r#"flowgate_verdicts_total{direction="egress",verdict="allow",reason="not_isolated",policy_namespace="",policy_name="",rule=""} 1"#,
        r#"flowgate_verdicts_total{direction="egress",verdict="audit_deny",reason="default_deny",policy_namespace="tools",policy_name="egress-lockdown",rule=""} 1"#,
        r#"flowgate_denied_packets_total{direction="ingress",policy_namespace="data",policy_name="default-deny"} 8"#,
        r#"flowgate_denied_packets_total{direction="ingress",policy_namespace="data",policy_name="db-ingress"} 7"#,
        r#"flowgate_denied_packets_total{direction="egress",policy_namespace="tools",policy_name="egress-lockdown"} 3"#,
        r#"flowgate_records_total{record_type="flow"} 7"#,
        r#"flowgate_namespace_flows_total{src_namespace="shop",dst_namespace="shop",direction="ingress",verdict="allow"} 3"#,
        r#"flowgate_namespace_flows_total{src_namespace="shop",dst_namespace="data",direction="ingress",verdict="deny"} 2"#,
        r#"flowgate_namespace_flows_total{src_namespace="tools",dst_namespace="shop",direction="egress",verdict="allow"} 1"#,
        r#"flowgate_namespace_flows_total{src_namespace="tools",dst_namespace="shop",direction="egress",verdict="audit_deny"} 1"#,
    ] {
        assert_line(&text, line);
    }
    assert_eq!(series_of(&text, "flowgate_verdicts_total").len(), 7);
    assert_eq!(series_of(&text, "flowgate_denied_packets_total").len(), 3);
    assert_no_series(&text, "flowgate_egress_world_total");
}

/// Events through the real `Enricher` with hand-made tables: the attribution id resolves to
/// (policy, rule), an egress deny to a public address counts in `flowgate_egress_world_total`,
/// external ends are `__external__`, and no IP, port or pod name reaches the text.
#[test]
fn enriched_events_count_by_namespace_and_egress_to_world_without_ips_ports_or_pods() {
    let tables = Tables {
        generation: 3,
        mode: Mode::Enforce,
        endpoints: HashMap::from([(
            1,
            LocalInfo {
                namespace: "shop".into(),
                pod: "web-7d9f8-x2x9q".into(),
                labels: Arc::new(BTreeMap::from([("app".into(), "web".into())])),
                node: Some("node-a".into()),
                workload: None,
                isolated_by_ingress: vec![policy("shop", "allow-frontend")].into(),
                isolated_by_egress: vec![policy("shop", "egress-lockdown")].into(),
            },
        )]),
        attributions: HashMap::from([(7, vec![rule("shop", "allow-frontend", 1)].into())]),
        pods_by_ip: Arc::new(HashMap::from([(
            IpAddr::V4(Ipv4Addr::new(10, 244, 1, 17)),
            PodInfo {
                namespace: "shop".into(),
                pod: "frontend-5c6b-k8s2p".into(),
                labels: Arc::new(BTreeMap::from([("app".into(), "frontend".into())])),
                node: Some("node-b".into()),
                workload: None,
            },
        )])),
        pods_changed: Arc::default(),
        source: None,
    };
    let mut enricher = Enricher::new("node-a", 0);
    enricher.push(tables);
    let v4 = |ip: [u8; 4]| {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&ip);
        a
    };
    let event =
        |direction, verdict, reason, attribution, (src, sport), (dst, dport), count| FlowEvent {
            version: ABI_VERSION,
            verdict,
            reason,
            direction,
            proto: 6,
            ip_version: 4,
            endpoint_id: 1,
            generation: 3,
            attribution,
            count,
            src_port: sport,
            dst_port: dport,
            src_addr: v4(src),
            dst_addr: v4(dst),
            ..FlowEvent::default()
        };
    let web = ([10, 244, 2, 9], 8443);
    let web_client = ([10, 244, 2, 9], 51000);
    let frontend = ([10, 244, 1, 17], 40112);
    let world = ([203, 0, 113, 50], 443);
    let lan = ([192, 168, 50, 3], 39999);
    let m = Arc::new(Metrics::new());
    let mut sink = MetricsSink::new(Arc::clone(&m));
    let (allow, deny) = (verdict::ALLOW, verdict::DENY);
    let (rule_allow, default_deny) = (reason::RULE_ALLOW, reason::DEFAULT_DENY);
    let events = [
        // shop/frontend -> shop/web, allowed by allow-frontend rule 1.
        event(DIR_INGRESS, allow, rule_allow, 7, frontend, web, 1),
        // shop/web -> 203.0.113.50:443 (public), denied 4 times: an exfiltration attempt.
        event(DIR_EGRESS, deny, default_deny, 0, web_client, world, 4),
        // 192.168.50.3 (private, outside the cluster) -> shop/web, denied.
        event(DIR_INGRESS, deny, default_deny, 0, lan, web, 1),
    ];
    for ev in &events {
        let record = Record::Flow(enricher.enrich(ev));
        sink.write(&record).unwrap();
    }
    let text = encode(&m);
    for line in [
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-frontend",rule="1"} 1"#,
        r#"flowgate_verdicts_total{direction="egress",verdict="deny",reason="default_deny",policy_namespace="shop",policy_name="egress-lockdown",rule=""} 1"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="shop",policy_name="allow-frontend",rule=""} 1"#,
        r#"flowgate_denied_packets_total{direction="egress",policy_namespace="shop",policy_name="egress-lockdown"} 4"#,
        r#"flowgate_denied_packets_total{direction="ingress",policy_namespace="shop",policy_name="allow-frontend"} 1"#,
        r#"flowgate_egress_world_total{src_namespace="shop",verdict="deny"} 1"#,
        r#"flowgate_namespace_flows_total{src_namespace="shop",dst_namespace="shop",direction="ingress",verdict="allow"} 1"#,
        r#"flowgate_namespace_flows_total{src_namespace="shop",dst_namespace="__external__",direction="egress",verdict="deny"} 1"#,
        r#"flowgate_namespace_flows_total{src_namespace="__external__",dst_namespace="shop",direction="ingress",verdict="deny"} 1"#,
        r#"flowgate_records_total{record_type="flow"} 3"#,
    ] {
        assert_line(&text, line);
    }
    assert_eq!(
        series_of(&text, "flowgate_egress_world_total").len(),
        1,
        "only the public destination is egress to the world"
    );
    // Every family now has a series, so the exposition names them all: it must name exactly
    // `FAMILIES`, the list dashboards and alert rules are checked against.
    m.observe_policy_apply(Duration::from_millis(1));
    m.set_pods_unenforced(&[("no_route", 1)]);
    m.set_map_fill(&[("FG_POLICY", 10, 100)]);
    let exposed: BTreeSet<(String, String)> = encode(&m)
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest.split_once(' ').unwrap();
            let name = if kind == "counter" {
                format!("{name}_total")
            } else {
                name.to_owned()
            };
            (name, kind.to_owned())
        })
        .collect();
    let listed: BTreeSet<(String, String)> = flowgate_flows::metrics::FAMILIES
        .iter()
        .map(|(n, k)| ((*n).to_owned(), (*k).to_owned()))
        .collect();
    assert_eq!(exposed, listed, "metrics::FAMILIES vs the exposition");
    for forbidden in [
        "10.244.",
        "203.0.113",
        "192.168.",
        "::ffff",
        "40112",
        "51000",
        "39999",
        "8443",
        "443\"",
        "web-7d9f8",
        "frontend-5c6b",
        "node-a",
    ] {
        assert!(
            !text.contains(forbidden),
            "{forbidden:?} must never be a label value:\n{text}"
        );
    }
}

/// Past the cap, a family's new label sets go to its `__other__` series (variable labels
/// collapsed, direction/verdict/reason kept); existing series keep counting; the overflow is
/// itself counted.
#[test]
fn new_label_sets_past_the_cap_go_to_the_other_series() {
    let m = Metrics::with_max_series(3);
    assert_eq!(m.max_series(), 3);
    for i in 0..5 {
        m.observe_flow(&deny_into_db(
            &format!("team-{i}"),
            vec![policy(&format!("team-{i}"), "default-deny")],
            2,
        ));
    }
    // An existing series still counts on its own at the cap.
    m.observe_flow(&deny_into_db(
        "team-0",
        vec![policy("team-0", "default-deny")],
        2,
    ));
    // Another combination of the enumerated labels gets its own overflow series.
    let mut audit = deny_into_db("team-9", vec![policy("team-9", "default-deny")], 1);
    audit.verdict = Verdict::AuditDeny;
    m.observe_flow(&audit);

    let text = encode(&m);
    for line in [
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="team-0",policy_name="default-deny",rule=""} 2"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="team-1",policy_name="default-deny",rule=""} 1"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="team-2",policy_name="default-deny",rule=""} 1"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="deny",reason="default_deny",policy_namespace="__other__",policy_name="__other__",rule="__other__"} 2"#,
        r#"flowgate_verdicts_total{direction="ingress",verdict="audit_deny",reason="default_deny",policy_namespace="__other__",policy_name="__other__",rule="__other__"} 1"#,
        r#"flowgate_denied_packets_total{direction="ingress",policy_namespace="team-0",policy_name="default-deny"} 4"#,
        r#"flowgate_denied_packets_total{direction="ingress",policy_namespace="__other__",policy_name="__other__"} 5"#,
        r#"flowgate_namespace_flows_total{src_namespace="__other__",dst_namespace="__other__",direction="ingress",verdict="deny"} 2"#,
        r#"flowgate_namespace_flows_total{src_namespace="__other__",dst_namespace="__other__",direction="ingress",verdict="audit_deny"} 1"#,
        r#"flowgate_metrics_overflow_total{family="flowgate_verdicts_total"} 3"#,
        r#"flowgate_metrics_overflow_total{family="flowgate_denied_packets_total"} 3"#,
        r#"flowgate_metrics_overflow_total{family="flowgate_namespace_flows_total"} 3"#,
        r#"flowgate_metrics_overflow_total{family="flowgate_egress_world_total"} 0"#,
    ] {
        assert_line(&text, line);
    }
    assert_eq!(
        series_of(&text, "flowgate_verdicts_total").len(),
        3 + 2,
        "the cap's series plus one overflow series per enumerated-label combination"
    );
    for i in 3..5 {
        assert!(
            !text.contains(&format!("team-{i}\"")),
            "team-{i} came past the cap and has no series"
        );
    }
}

/// `flowgate_egress_world_total` counts only records tagged `egress_to_world`, by source
/// namespace and verdict; at the cap the source namespace collapses, the verdict stays.
#[test]
fn egress_world_counts_tagged_records_and_collapses_the_namespace_at_the_cap() {
    let m = Metrics::with_max_series(1);
    let to_world = |namespace: &str, verdict: Verdict, tagged: bool| {
        let mut f = flow(
            Direction::Egress,
            verdict,
            Reason::DefaultDeny,
            pod(namespace, "exporter-0", [10, 244, 2, 40], 45000),
            external([198, 51, 100, 7], 443, Scope::Public),
        );
        if tagged {
            f.tags = vec!["egress_to_world".into(), "recheck".into()];
        }
        f
    };
    m.observe_flow(&to_world("shop", Verdict::Deny, true));
    m.observe_flow(&to_world("shop", Verdict::Deny, true));
    m.observe_flow(&to_world("tools", Verdict::Deny, true));
    m.observe_flow(&to_world("tools", Verdict::AuditDeny, true));
    m.observe_flow(&to_world("shop", Verdict::Deny, false));
    let text = encode(&m);
    for line in [
        r#"flowgate_egress_world_total{src_namespace="shop",verdict="deny"} 2"#,
        r#"flowgate_egress_world_total{src_namespace="__other__",verdict="deny"} 1"#,
        r#"flowgate_egress_world_total{src_namespace="__other__",verdict="audit_deny"} 1"#,
        r#"flowgate_metrics_overflow_total{family="flowgate_egress_world_total"} 2"#,
    ] {
        assert_line(&text, line);
    }
    assert_eq!(series_of(&text, "flowgate_egress_world_total").len(), 3);
    assert!(
        !text.contains("198.51.100") && !text.contains("exporter-0"),
        "no address or pod name in the text"
    );
}

/// `retain_policies` drops the series of a deleted policy from both policy families, keeps
/// the live policies' and the policy-less ones, and frees room under the cap.
#[test]
fn retain_policies_removes_the_series_of_deleted_policies() {
    let m = Metrics::with_max_series(4);
    m.observe_flow(&allow_into_web(vec![
        rule("shop", "allow-frontend", 0),
        rule("shop", "legacy-allow", 1),
    ]));
    m.observe_flow(&deny_into_db(
        "data",
        vec![policy("data", "legacy-deny")],
        5,
    ));
    let mut open = allow_into_web(Vec::new());
    open.reason = Reason::NotIsolated;
    m.observe_flow(&open);
    // The cap (4) is reached: a new policy overflows.
    m.observe_flow(&allow_into_web(vec![rule("shop", "allow-new", 0)]));
    let text = encode(&m);
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="__other__",policy_name="__other__",rule="__other__"} 1"#,
    );
    assert_eq!(series_of(&text, "flowgate_verdicts_total").len(), 4 + 1);

    m.retain_policies(&[("shop", "allow-frontend"), ("shop", "allow-new")]);
    let text = encode(&m);
    assert_no_series(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="legacy-allow","#,
    );
    assert!(
        !text.contains("legacy-deny") && !text.contains("legacy-allow"),
        "no series of a deleted policy is left:\n{text}"
    );
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-frontend",rule="0"} 1"#,
    );
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="not_isolated",policy_namespace="",policy_name="",rule=""} 1"#,
    );
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="__other__",policy_name="__other__",rule="__other__"} 1"#,
    );
    assert_no_series(&text, "flowgate_denied_packets_total{");

    // The freed series make room: allow-new now gets its own series.
    m.observe_flow(&allow_into_web(vec![rule("shop", "allow-new", 0)]));
    let text = encode(&m);
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-new",rule="0"} 1"#,
    );

    // With owned strings too, and an empty live set removes every policy's series.
    m.retain_policies::<String, String>(&[]);
    let text = encode(&m);
    let mut left = series_of(&text, "flowgate_verdicts_total");
    left.sort_unstable();
    assert_eq!(
        left,
        vec![
            r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="not_isolated",policy_namespace="",policy_name="",rule=""} 1"#,
            r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="__other__",policy_name="__other__",rule="__other__"} 1"#,
        ],
        "only the policy-less and overflow series remain"
    );
}

/// Losses from gap records and from cumulative totals: the counter is the larger of the two
/// per (stage, class), never decreases, and the ring buffer's series exist from the start.
#[test]
fn lost_counters_take_gap_records_and_totals_and_stay_monotonic() {
    let m = Metrics::new();
    let text = encode(&m);
    for class in ["allow", "deny", "audit"] {
        assert_line(
            &text,
            &format!(r#"flowgate_events_lost_total{{stage="ringbuf",verdict_class="{class}"}} 0"#),
        );
    }
    // The ring buffer's series exist whatever the cap, and creating them overflows nothing.
    let tiny = encode(&Metrics::with_max_series(1));
    for class in ["allow", "deny", "audit"] {
        assert_line(
            &tiny,
            &format!(r#"flowgate_events_lost_total{{stage="ringbuf",verdict_class="{class}"}} 0"#),
        );
    }
    assert_line(
        &tiny,
        r#"flowgate_metrics_overflow_total{family="flowgate_events_lost_total"} 0"#,
    );

    let sink = Stage::Sink("metrics".into());
    m.observe_gap(&gap(&Stage::Ringbuf, [2, 1, 0]));
    m.observe(&Record::Gap(gap(&sink, [0, 3, 0])));
    let text = encode(&m);
    for line in [
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="allow"} 2"#,
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="deny"} 1"#,
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="audit"} 0"#,
        r#"flowgate_events_lost_total{stage="sink_metrics",verdict_class="deny"} 3"#,
        r#"flowgate_records_total{record_type="gap"} 2"#,
    ] {
        assert_line(&text, line);
    }

    // Cumulative totals that include the gaps (and losses not yet reported in-band).
    m.set_losses(&[
        (Stage::Ringbuf, lost([5, 1, 4])),
        (Stage::Sink("json".into()), lost([0, 0, 6])),
    ]);
    // A smaller total later (e.g. a reloaded datapath map) never lowers the counter.
    m.set_losses(&[(Stage::Ringbuf, lost([1, 0, 0]))]);
    // More gap records than the last total: the counter follows the gaps.
    m.observe_gap(&gap(&Stage::Ringbuf, [4, 0, 0]));
    let text = encode(&m);
    for line in [
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="allow"} 6"#,
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="deny"} 1"#,
        r#"flowgate_events_lost_total{stage="ringbuf",verdict_class="audit"} 4"#,
        r#"flowgate_events_lost_total{stage="sink_metrics",verdict_class="deny"} 3"#,
        r#"flowgate_events_lost_total{stage="sink_json",verdict_class="audit"} 6"#,
    ] {
        assert_line(&text, line);
    }
    assert_no_series(
        &text,
        r#"flowgate_events_lost_total{stage="sink_json",verdict_class="allow"}"#,
    );
}

/// The metrics sink inside a real fan-out, encoded from another thread while it writes; then
/// the fan-out's own losses via `set_sink_losses`.
#[test]
fn the_sink_counts_records_from_a_fanout_while_another_thread_encodes() {
    let m = Arc::new(Metrics::new());
    let mut fanout = Fanout::new("node-a");
    fanout
        .add_sink(Box::new(MetricsSink::new(Arc::clone(&m))), 10_000)
        .unwrap();
    let reader = {
        let m = Arc::clone(&m);
        std::thread::spawn(move || {
            for _ in 0..50 {
                check_openmetrics(&m.encode());
            }
        })
    };
    for i in 0..500u64 {
        let mut f = allow_into_web(vec![rule("shop", "allow-frontend", 0)]);
        f.seq = i + 1;
        fanout.publish(Record::Flow(f));
    }
    reader.join().unwrap();
    let stats = fanout.close();
    assert_eq!(stats[0].name, "metrics");
    m.set_sink_losses(&stats);
    let text = encode(&m);
    assert_line(&text, r#"flowgate_records_total{record_type="flow"} 500"#);
    assert_line(
        &text,
        r#"flowgate_verdicts_total{direction="ingress",verdict="allow",reason="rule_allow",policy_namespace="shop",policy_name="allow-frontend",rule="0"} 500"#,
    );
    // The queue held everything: set_sink_losses added zeros, which create no series.
    assert_no_series(&text, r#"flowgate_events_lost_total{stage="sink_metrics""#);

    // Another sink's losses in the fan-out's stats become that sink's series.
    let mut otlp_lost = LostCounts::default();
    otlp_lost.add(flowgate_flows::gap::VerdictClass::Deny, 2);
    m.set_sink_losses(&[flowgate_flows::pipeline::SinkStats {
        name: "otlp".into(),
        delivered: 10,
        lost: otlp_lost,
        write_errors: 0,
        queue_capacity: 8,
    }]);
    assert_line(
        &encode(&m),
        r#"flowgate_events_lost_total{stage="sink_otlp",verdict_class="deny"} 2"#,
    );
}

/// The gauges and the histogram, with their exact series.
#[test]
fn policy_generation_endpoints_and_apply_time() {
    let m = Metrics::new();
    let text = encode(&m);
    assert_line(&text, "flowgate_policy_generation 0");
    assert_line(
        &text,
        r#"flowgate_endpoints{ingress_isolated="true",egress_isolated="true"} 0"#,
    );
    m.set_policy_generation(42);
    let mut counts = EndpointCounts::default();
    for (i, e) in [(true, false), (true, true), (false, false), (true, false)] {
        counts.add(i, e);
    }
    m.set_endpoints(counts);
    // 2^-8 s and 2^-5 s: exact in binary, so the sum is exact too.
    m.observe_policy_apply(Duration::from_nanos(3_906_250));
    m.observe_policy_apply(Duration::from_nanos(31_250_000));
    let text = encode(&m);
    for line in [
        "# TYPE flowgate_policy_generation gauge",
        "flowgate_policy_generation 42",
        r#"flowgate_endpoints{ingress_isolated="false",egress_isolated="false"} 1"#,
        r#"flowgate_endpoints{ingress_isolated="true",egress_isolated="false"} 2"#,
        r#"flowgate_endpoints{ingress_isolated="false",egress_isolated="true"} 0"#,
        r#"flowgate_endpoints{ingress_isolated="true",egress_isolated="true"} 1"#,
        "# TYPE flowgate_policy_apply_seconds histogram",
        "# UNIT flowgate_policy_apply_seconds seconds",
        "flowgate_policy_apply_seconds_count 2",
        "flowgate_policy_apply_seconds_sum 0.03515625",
        r#"flowgate_policy_apply_seconds_bucket{le="0.002"} 0"#,
        r#"flowgate_policy_apply_seconds_bucket{le="0.004"} 1"#,
        r#"flowgate_policy_apply_seconds_bucket{le="0.016"} 1"#,
        r#"flowgate_policy_apply_seconds_bucket{le="0.032"} 2"#,
        r#"flowgate_policy_apply_seconds_bucket{le="+Inf"} 2"#,
    ] {
        assert_line(&text, line);
    }
    // Setting again replaces, it does not add.
    m.set_endpoints(EndpointCounts::default());
    assert_line(
        &encode(&m),
        r#"flowgate_endpoints{ingress_isolated="true",egress_isolated="false"} 0"#,
    );
}

/// Label values are the flow record's own JSON strings, for every verdict and reason.
#[test]
fn label_values_are_the_flow_records_json_strings() {
    let m = Metrics::new();
    let reasons = [
        Reason::NotIsolated,
        Reason::RuleAllow,
        Reason::DefaultDeny,
        Reason::RecheckDeny,
        Reason::FragmentUnknown,
        Reason::Unknown,
    ];
    let verdicts = [Verdict::Allow, Verdict::Deny, Verdict::AuditDeny];
    for (i, reason) in reasons.into_iter().enumerate() {
        let mut f = deny_into_db("data", Vec::new(), 1);
        f.verdict = verdicts[i % 3];
        f.reason = reason;
        f.direction = if i % 2 == 0 {
            Direction::Ingress
        } else {
            Direction::Egress
        };
        m.observe_flow(&f);
        let json = serde_json::to_value(&f).unwrap();
        let text = encode(&m);
        let expected = format!(
            r#"flowgate_verdicts_total{{direction={},verdict={},reason={},policy_namespace="",policy_name="",rule=""}} 1"#,
            json["direction"], json["verdict"], json["reason"]
        );
        assert_line(&text, &expected);
    }
}

/// The checker itself rejects what is not OpenMetrics (so the other tests' checks mean
/// something).
#[test]
fn the_openmetrics_check_rejects_broken_text() {
    let good =
        "# HELP flowgate_x X.\n# TYPE flowgate_x counter\nflowgate_x_total{a=\"b\"} 1\n# EOF\n";
    assert_eq!(check_openmetrics(good).len(), 1);
    for bad in [
        // no EOF
        "# HELP flowgate_x X.\n# TYPE flowgate_x counter\nflowgate_x_total 1\n",
        // a sample of an undeclared family
        "# HELP flowgate_x X.\n# TYPE flowgate_x counter\nflowgate_y_total 1\n# EOF\n",
        // a counter sample without _total
        "# HELP flowgate_x X.\n# TYPE flowgate_x counter\nflowgate_x 1\n# EOF\n",
        // a sample before any TYPE
        "flowgate_x_total 1\n# EOF\n",
        // an unquoted label value
        "# HELP flowgate_x X.\n# TYPE flowgate_x counter\nflowgate_x_total{a=b} 1\n# EOF\n",
    ] {
        let bad = bad.to_owned();
        assert!(
            std::panic::catch_unwind(move || check_openmetrics(&bad)).is_err(),
            "the check rejects broken text"
        );
    }
}

#[test]
fn agent_families_count_sync_latency_rejections_watch_errors_and_unenforced_pods() {
    let m = Metrics::new();
    // Present from the start at 0, one series per kind.
    let text = encode(&m);
    for kind in ["Namespace", "Pod", "NetworkPolicy"] {
        assert!(
            text.contains(&format!(
                "flowgate_source_objects_rejected_total{{kind=\"{kind}\"}} 0"
            )),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "flowgate_source_watch_errors_total{{kind=\"{kind}\"}} 0"
            )),
            "{text}"
        );
    }
    m.source_rejected("NetworkPolicy");
    m.source_watch_error("Pod");
    m.source_watch_error("Pod");
    m.observe_policy_sync(Duration::from_millis(150));
    m.set_pods_unenforced(&[("no_route", 2), ("pending", 1)]);
    let text = encode(&m);
    for line in [
        r#"flowgate_source_objects_rejected_total{kind="NetworkPolicy"} 1"#,
        r#"flowgate_source_watch_errors_total{kind="Pod"} 2"#,
        "flowgate_policy_sync_seconds_count 1",
        r#"flowgate_policy_sync_seconds_bucket{le="0.128"} 0"#,
        r#"flowgate_policy_sync_seconds_bucket{le="0.256"} 1"#,
        r#"flowgate_pods_unenforced{reason="no_route"} 2"#,
        r#"flowgate_pods_unenforced{reason="pending"} 1"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    m.set_map_fill(&[
        ("FG_IPCACHE", 50_004, 262_144),
        ("FG_POLICY", 6_704, 1_048_576),
    ]);
    let text = encode(&m);
    for line in [
        r#"flowgate_map_entries{map="FG_IPCACHE"} 50004"#,
        r#"flowgate_map_capacity{map="FG_IPCACHE"} 262144"#,
        r#"flowgate_map_entries{map="FG_POLICY"} 6704"#,
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // A reason that is resolved reads 0, not a vanished series.
    m.set_pods_unenforced(&[("pending", 1)]);
    let text = encode(&m);
    assert!(
        text.contains(r#"flowgate_pods_unenforced{reason="no_route"} 0"#),
        "{text}"
    );
}

#[test]
fn datapath_path_counters_follow_the_kernel_totals_from_a_baseline() {
    let m = Metrics::new();
    let has = |text: &str, path: &str, n: u64| {
        text.contains(&format!(
            "flowgate_datapath_packets_total{{path=\"{path}\"}} {n}"
        ))
    };
    let text = encode(&m);
    assert!(
        has(&text, "peer_judged", 0) && has(&text, "receiver_judged", 0),
        "{text}"
    );
    // The first totals are the baseline (an adopted datapath's earlier counts are not exported
    // again); later ones add their increase.
    m.set_datapath_paths([1000, 50]);
    assert!(has(&encode(&m), "peer_judged", 0));
    m.set_datapath_paths([1400, 60]);
    let text = encode(&m);
    assert!(
        has(&text, "peer_judged", 400) && has(&text, "receiver_judged", 10),
        "{text}"
    );
    // A new datapath counts from zero: its totals are added whole, the counter never goes down.
    m.set_datapath_paths([7, 3]);
    let text = encode(&m);
    assert!(
        has(&text, "peer_judged", 407) && has(&text, "receiver_judged", 13),
        "{text}"
    );
}
