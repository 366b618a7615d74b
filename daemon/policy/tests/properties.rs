//! Property tests on random clusters, policies and flows: invariants of the semantics that must
//! hold whatever the input (monotonicity, attribution that re-checks, non-selected pods open).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod common;

use common::r#gen::*;
use flowgate_policy::evaluate::{Reason, Remote, Verdict, evaluate, rule_match};
use flowgate_policy::model::{Direction, NamespaceScope, Peer, Policy, Rule, Selector};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The verdict is egress AND ingress; each reason agrees with its attribution, and every
    /// allowed_by entry names a rule that really matches the flow.
    #[test]
    fn attribution_is_consistent(pods in pods(), policies in policies(), flows in flows()) {
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            let decision = evaluate(&cluster, &flow);
            let both = decision.egress.verdict == Verdict::Allow && decision.ingress.verdict == Verdict::Allow;
            prop_assert_eq!(decision.verdict == Verdict::Allow, both);
            for (side, direction, subject, remote) in [
                (&decision.egress, Direction::Egress, flow.src_pod, Remote { pod: flow.dst_pod, ip: flow.dst_ip }),
                (&decision.ingress, Direction::Ingress, flow.dst_pod, Remote { pod: flow.src_pod, ip: flow.src_ip }),
            ] {
                prop_assert_eq!(side.verdict == Verdict::Deny, side.reason == Reason::DefaultDeny);
                prop_assert_eq!(!side.allowed_by.is_empty(), side.reason == Reason::RuleAllow);
                prop_assert_eq!(!side.isolated_by.is_empty(), side.reason == Reason::DefaultDeny);
                prop_assert_eq!(subject.is_none(), side.reason == Reason::External);
                let dst_pod = flow.dst_pod.map(|id| cluster.pod(id));
                for r in &side.allowed_by {
                    let (_, policy) = cluster.policies().find(|(_, p)| p.namespace == r.namespace && p.name == r.name).unwrap();
                    let matched = rule_match(&cluster, &policy.namespace, &policy.rules(direction)[r.rule], remote, dst_pod, flow.protocol, flow.port);
                    prop_assert_eq!(matched, Some((r.peer, r.port)));
                    let pod = cluster.pod(subject.unwrap());
                    prop_assert!(policy.isolates(direction) && policy.namespace == pod.namespace && policy.pod_selector.matches(&pod.labels));
                }
            }
        }
    }

    /// Adding an allow rule to any policy never turns an allow into a deny.
    #[test]
    fn adding_a_rule_never_denies_more(pods in pods(), policies in policies(), flows in flows(), extra in rule("n0"), which in any::<prop::sample::Index>(), ingress in any::<bool>()) {
        prop_assume!(!policies.is_empty());
        let before = build(pods.clone(), policies.clone());
        let mut changed = policies;
        let i = which.index(changed.len());
        let mut extra = extra;
        // A podSelector-only peer refers to the policy's own namespace.
        for peer in extra.peers.iter_mut().flatten() {
            if let Peer::Pods { namespaces: NamespaceScope::Own(ns), .. } = peer {
                ns.clone_from(&changed[i].namespace);
            }
        }
        if ingress { changed[i].ingress.push(extra) } else { changed[i].egress.push(extra) }
        let after = build(pods, changed);
        for (s, d, proto, port) in flows {
            let b = evaluate(&before, &make_flow(&before, s, d, proto, port)).verdict;
            let a = evaluate(&after, &make_flow(&after, s, d, proto, port)).verdict;
            prop_assert!(!(b == Verdict::Allow && a == Verdict::Deny), "flow {s}->{d} {proto}/{port} went from allow to deny");
        }
    }

    /// A pod that no policy selects allows everything in both directions.
    #[test]
    fn unselected_pods_are_open(pods in pods(), policies in policies(), flows in flows()) {
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            let decision = evaluate(&cluster, &flow);
            if let Some(src) = flow.src_pod
                && cluster.policies_selecting(src).next().is_none()
            {
                prop_assert_eq!(decision.egress.reason, Reason::NotIsolated);
            }
            if let Some(dst) = flow.dst_pod
                && cluster.policies_selecting(dst).next().is_none()
            {
                prop_assert_eq!(decision.ingress.reason, Reason::NotIsolated);
            }
        }
    }

    /// An allow-all policy for both directions in every namespace makes every flow allowed,
    /// whatever else is there (policies are additive; nothing can subtract).
    #[test]
    fn allow_all_everywhere_allows_everything(pods in pods(), policies in policies(), flows in flows()) {
        let mut policies = policies;
        for ns in NAMESPACES {
            policies.push(Policy {
                namespace: ns.into(),
                name: "allow-all".into(),
                pod_selector: Selector::default(),
                isolates_ingress: true,
                isolates_egress: true,
                ingress: vec![Rule { peers: None, ports: vec![] }],
                egress: vec![Rule { peers: None, ports: vec![] }],
            });
        }
        let cluster = build(pods, policies);
        for (s, d, proto, port) in flows {
            let flow = make_flow(&cluster, s, d, proto, port);
            prop_assert_eq!(evaluate(&cluster, &flow).verdict, Verdict::Allow);
        }
    }
}
