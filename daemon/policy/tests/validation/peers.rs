// Part of `validation.rs` (brought in with `include!`): Peers.

// ---------------------------------------------------------------------------------------------
// Peers
// ---------------------------------------------------------------------------------------------

#[test]
fn peer_with_no_fields_is_rejected() {
    rejects_policy(
        "
        podSelector: {}
        ingress:
          - from:
              - podSelector: {}
              - {}
        ",
        "spec.ingress[0].from[1]",
        "must specify a peer",
    );
    rejects_policy(
        "
        podSelector: {}
        egress:
          - to: [{}]
        ",
        "spec.egress[0].to[0]",
        "must specify a peer",
    );
}

#[test]
fn ip_block_with_another_peer_is_rejected() {
    for other in [
        "podSelector: {}",
        "namespaceSelector: {}",
        "podSelector: {}, namespaceSelector: {}",
    ] {
        rejects_policy(
            &format!(
                "podSelector: {{}}\ningress:\n  - from:\n      - {{ipBlock: {{cidr: 10.0.0.0/8}}, {other}}}\n"
            ),
            "spec.ingress[0].from[0]",
            "may not specify both ipBlock and another peer",
        );
    }
}

#[test]
fn valid_peers_are_accepted() {
    let policy = accepts_policy(
        "
        podSelector: {}
        ingress:
          - from:
              - podSelector: {}
              - namespaceSelector: {matchLabels: {team: a}}
              - {namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}
          - from: []
          - {}
        ",
    );
    let peers = policy.ingress[0].peers.as_ref().unwrap();
    assert_eq!(peers.len(), 3);
    match &peers[0] {
        Peer::Pods { namespaces, pods } => {
            assert_eq!(namespaces, &NamespaceScope::Own("team".into()));
            assert!(pods.is_empty());
        }
        other => panic!("unexpected {other:?}"),
    }
    match &peers[2] {
        Peer::Pods { namespaces, pods } => {
            assert!(matches!(namespaces, NamespaceScope::Selected(s) if s.is_empty()));
            assert_eq!(pods.match_labels, vec![("app".into(), "db".into())]);
        }
        other => panic!("unexpected {other:?}"),
    }
    // `from: []` and an absent `from` both mean every peer.
    assert!(policy.ingress[1].peers.is_none());
    assert!(policy.ingress[2].peers.is_none());
}
