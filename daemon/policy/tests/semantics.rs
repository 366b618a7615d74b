//! One test per NetworkPolicy semantic rule (DESIGN.md "Semantics that must be exact"), each on a
//! small cluster written as YAML, checking the verdict and the attribution.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod common;

use common::{cluster, decide, flow};
use flowgate_policy::evaluate::{Reason, Verdict, evaluate};
use flowgate_policy::model::Protocol::{Icmp, Sctp, Tcp, Udp};

/// Namespaces a (team=a) and b (team=b); pods a/web (app=web, port http/TCP 80, dns/UDP 53),
/// a/db (app=db), b/client (app=client), a/host (hostNetwork).
const BASE: &str = r"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: a}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: b}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec:
  containers:
    - name: c
      ports:
        - {name: http, containerPort: 80}
        - {name: dns, containerPort: 53, protocol: UDP}
        - {name: alt, containerPort: 8080, protocol: UDP}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
status: {podIP: 10.2.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: a, labels: {app: web}}
spec: {hostNetwork: true}
status: {podIP: 192.168.0.10}
";

fn with(policies: &str) -> flowgate_policy::Cluster {
    cluster(&format!("{BASE}\n---\n{policies}"))
}

const DENY_ALL_INGRESS_A: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: a}
spec: {podSelector: {}}
";

#[test]
fn no_policy_means_not_isolated_and_allowed() {
    let c = with("");
    let d = decide(&c, "b/client", "a/web", Tcp, 80);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.egress.reason, Reason::NotIsolated);
    assert_eq!(d.ingress.reason, Reason::NotIsolated);
}

#[test]
fn policy_types_absent_means_ingress_only_without_egress_rules() {
    let c = with(DENY_ALL_INGRESS_A);
    let d = decide(&c, "b/client", "a/web", Tcp, 80);
    assert_eq!(
        d.verdict,
        Verdict::Deny,
        "ingress to a/web is isolated by a/deny"
    );
    assert_eq!(d.ingress.reason, Reason::DefaultDeny);
    assert_eq!(d.ingress.isolated_by[0].name, "deny");
    // Egress of a/web is not isolated: it may still send.
    let d = decide(&c, "a/web", "b/client", Tcp, 80);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.egress.reason, Reason::NotIsolated);
}

#[test]
fn policy_types_absent_with_egress_rules_isolates_egress_too() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  egress:
    - to: [{podSelector: {matchLabels: {app: db}}}]
",
    );
    assert_eq!(
        decide(&c, "a/web", "b/client", Tcp, 80).egress.reason,
        Reason::DefaultDeny
    );
    let d = decide(&c, "a/web", "a/db", Tcp, 5432);
    assert_eq!(d.verdict, Verdict::Allow);
    assert_eq!(d.egress.allowed_by[0].rule, 0);
    assert_eq!(d.egress.allowed_by[0].peer, Some(0));
    assert_eq!(d.egress.allowed_by[0].port, None);
    // And ingress is isolated (policyTypes defaults to Ingress as well), with no ingress rules.
    assert_eq!(
        decide(&c, "a/db", "a/web", Tcp, 80).ingress.reason,
        Reason::DefaultDeny
    );
}

#[test]
fn both_sides_must_allow() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-deny, namespace: b}
spec: {podSelector: {}, policyTypes: [Egress]}
",
    );
    let d = decide(&c, "b/client", "a/web", Tcp, 80);
    assert_eq!(
        (d.verdict, d.egress.verdict, d.ingress.verdict),
        (Verdict::Deny, Verdict::Deny, Verdict::Allow)
    );
}

#[test]
fn namespace_and_pod_selector_in_one_peer_are_anded_separate_peers_are_ored() {
    let and = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
          podSelector: {matchLabels: {app: db}}
",
    );
    assert_eq!(
        decide(&and, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Deny,
        "client is in b but not app=db"
    );
    assert_eq!(
        decide(&and, "a/db", "a/web", Tcp, 80).verdict,
        Verdict::Deny,
        "db is app=db but not in b"
    );
    let or = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: b}}
        - podSelector: {matchLabels: {app: db}}
",
    );
    let d = decide(&or, "b/client", "a/web", Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.allowed_by[0].peer),
        (Verdict::Allow, Some(0))
    );
    let d = decide(&or, "a/db", "a/web", Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.allowed_by[0].peer),
        (Verdict::Allow, Some(1))
    );
}

#[test]
fn pod_selector_alone_means_own_namespace_and_empty_namespace_selector_means_all() {
    let own = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {}}]}]
",
    );
    assert_eq!(
        decide(&own, "a/db", "a/web", Tcp, 80).verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&own, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Deny
    );
    assert_eq!(
        decide(&own, "203.0.113.1", "a/web", Tcp, 80).verdict,
        Verdict::Deny,
        "pod selectors never match external IPs"
    );
    let all = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{namespaceSelector: {}}]}]
",
    );
    assert_eq!(
        decide(&all, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&all, "203.0.113.1", "a/web", Tcp, 80).verdict,
        Verdict::Deny
    );
}

#[test]
fn empty_from_matches_everything_and_empty_ingress_list_allows_nothing() {
    let any = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: [{}]
",
    );
    assert_eq!(
        decide(&any, "203.0.113.1", "a/web", Udp, 9).verdict,
        Verdict::Allow
    );
    let d = decide(&any, "b/client", "a/web", Sctp, 9);
    assert_eq!(
        (d.ingress.allowed_by[0].peer, d.ingress.allowed_by[0].port),
        (None, None)
    );
    let none = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: []
",
    );
    assert_eq!(
        decide(&none, "a/db", "a/web", Tcp, 80).verdict,
        Verdict::Deny
    );
}

#[test]
fn ip_block_with_except_matches_pod_ips_and_external_ips() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
",
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Allow,
        "10.2.0.1 is in the block"
    );
    assert_eq!(
        decide(&c, "a/db", "a/web", Tcp, 80).verdict,
        Verdict::Deny,
        "10.1.0.2 is in the except"
    );
    let f = flow(&c, "10.9.9.9", "a/web", Tcp, Some(80));
    assert_eq!(
        f.src_pod, None,
        "an IP that is no pod's is outside the cluster"
    );
    assert_eq!(evaluate(&c, &f).verdict, Verdict::Allow);
    assert_eq!(evaluate(&c, &f).egress.reason, Reason::External);
    assert_eq!(
        decide(&c, "192.0.2.1", "a/web", Tcp, 80).verdict,
        Verdict::Deny
    );
}

#[test]
fn named_port_needs_name_and_protocol_on_the_destination_pod() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress:
    - ports: [{port: http}, {port: dns, protocol: UDP}, {port: alt}]
",
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 80).ingress.allowed_by[0].port,
        Some(0)
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Udp, 53).ingress.allowed_by[0].port,
        Some(1)
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Udp, 80).verdict,
        Verdict::Deny,
        "http is TCP only"
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 8080).verdict,
        Verdict::Deny,
        "alt is declared UDP; the policy port defaults to TCP"
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 53).verdict,
        Verdict::Deny
    );
}

#[test]
fn named_port_on_egress_resolves_on_the_destination_not_the_source() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: b}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{ports: [{port: http}]}]
",
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&c, "b/client", "a/db", Tcp, 80).verdict,
        Verdict::Deny,
        "a/db has no port named http"
    );
    assert_eq!(
        decide(&c, "b/client", "203.0.113.7", Tcp, 80).verdict,
        Verdict::Deny,
        "externals have no named ports"
    );
}

#[test]
fn end_port_makes_an_inclusive_range_and_protocol_defaults_to_tcp() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 32000, endPort: 32768}]}]
",
    );
    for (port, want) in [
        (31999, Verdict::Deny),
        (32000, Verdict::Allow),
        (32768, Verdict::Allow),
        (32769, Verdict::Deny),
    ] {
        assert_eq!(
            decide(&c, "b/client", "a/web", Tcp, port).verdict,
            want,
            "TCP port {port}"
        );
    }
    assert_eq!(
        decide(&c, "b/client", "a/web", Udp, 32000).verdict,
        Verdict::Deny,
        "the range is TCP only"
    );
}

#[test]
fn icmp_is_allowed_only_by_rules_without_ports() {
    let ports = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: TCP}]}]
",
    );
    let f = flow(&ports, "b/client", "a/web", Icmp, None);
    assert_eq!(evaluate(&ports, &f).verdict, Verdict::Deny);
    let no_ports = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}}]}]
",
    );
    let f = flow(&no_ports, "b/client", "a/web", Icmp, None);
    assert_eq!(evaluate(&no_ports, &f).verdict, Verdict::Allow);
}

#[test]
fn policies_are_additive_and_every_allowing_rule_is_named() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: one, namespace: a}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 81}]}, {from: [{namespaceSelector: {}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: two, namespace: a}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80}]}]
",
    );
    let d = decide(&c, "b/client", "a/web", Tcp, 80);
    let names: Vec<(String, usize)> = d
        .ingress
        .allowed_by
        .iter()
        .map(|r| (r.name.clone(), r.rule))
        .collect();
    assert_eq!(names, vec![("one".to_owned(), 1), ("two".to_owned(), 0)]);
    // a/db is selected only by `two`.
    let d = decide(&c, "b/client", "a/db", Tcp, 81);
    let isolated: Vec<&str> = d
        .ingress
        .isolated_by
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!((d.verdict, isolated), (Verdict::Deny, vec!["two"]));
}

#[test]
fn policy_types_egress_ignores_ingress_rules() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  policyTypes: [Egress]
  ingress: [{}]
  egress: [{}]
",
    );
    let d = decide(&c, "b/client", "a/web", Tcp, 80);
    assert_eq!(d.ingress.reason, Reason::NotIsolated);
}

#[test]
fn host_network_pods_are_not_subject_to_policy_nor_matched_as_pods() {
    let c = with(DENY_ALL_INGRESS_A);
    let d = decide(&c, "b/client", "a/host", Tcp, 80);
    assert_eq!(
        (d.verdict, d.ingress.reason),
        (Verdict::Allow, Reason::HostNetwork)
    );
}

#[test]
fn namespace_name_label_is_set_automatically() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}}]}]
",
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 80).verdict,
        Verdict::Allow
    );
    assert_eq!(decide(&c, "a/db", "a/web", Tcp, 80).verdict, Verdict::Deny);
}

#[test]
fn match_expressions_operators() {
    let c = with(
        r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: a}
spec:
  podSelector: {matchExpressions: [{key: app, operator: NotIn, values: [db]}]}
  ingress:
    - from:
        - podSelector: {matchExpressions: [{key: app, operator: In, values: [db, cache]}]}
        - namespaceSelector: {matchExpressions: [{key: team, operator: Exists}, {key: frozen, operator: DoesNotExist}]}
          podSelector: {matchExpressions: [{key: app, operator: Exists}]}
",
    );
    assert_eq!(
        decide(&c, "a/db", "a/web", Tcp, 80).ingress.allowed_by[0].peer,
        Some(0)
    );
    assert_eq!(
        decide(&c, "b/client", "a/web", Tcp, 80).ingress.allowed_by[0].peer,
        Some(1)
    );
    assert_eq!(
        decide(&c, "b/client", "a/db", Tcp, 80).ingress.reason,
        Reason::NotIsolated,
        "db is not selected (NotIn)"
    );
}
