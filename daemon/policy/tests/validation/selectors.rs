// Part of `validation.rs` (brought in with `include!`): Label selectors.

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

#[test]
fn bad_selector_operator_is_rejected() {
    for operator in ["Equals", "in", "exists", "\"\""] {
        let shown = operator.trim_matches('"');
        rejects_policy(
            &match_expression(&format!("key: app, operator: {operator}, values: [web]")),
            "spec.podSelector.matchExpressions[0].operator",
            &format!("{shown:?} is not a valid selector operator"),
        );
    }
}

#[test]
fn in_and_not_in_without_values_are_rejected() {
    for (operator, values) in [
        ("In", ""),
        ("In", ", values: []"),
        ("NotIn", ""),
        ("NotIn", ", values: []"),
    ] {
        rejects_policy(
            &match_expression(&format!("key: app, operator: {operator}{values}")),
            "spec.podSelector.matchExpressions[0].values",
            &format!("must be specified when `operator` is '{operator}'"),
        );
    }
}

#[test]
fn exists_and_does_not_exist_with_values_are_rejected() {
    for operator in ["Exists", "DoesNotExist"] {
        rejects_policy(
            &match_expression(&format!("key: app, operator: {operator}, values: [web]")),
            "spec.podSelector.matchExpressions[0].values",
            &format!("may not be specified when `operator` is '{operator}'"),
        );
    }
}

#[test]
fn invalid_match_expression_key_is_rejected() {
    rejects_policy(
        "
        podSelector:
          matchExpressions:
            - {key: app, operator: Exists}
            - {key: -app, operator: Exists}
        ",
        "spec.podSelector.matchExpressions[1].key",
        &format!("{INVALID_LABEL_KEY} \"-app\""),
    );
}

#[test]
fn invalid_match_expression_value_is_rejected() {
    rejects_policy(
        &match_expression("key: app, operator: In, values: [web, -db]"),
        "spec.podSelector.matchExpressions[0].values[1]",
        &format!("{INVALID_LABEL_VALUE} \"-db\""),
    );
}

#[test]
fn invalid_match_labels_key_is_rejected() {
    let long_name = "a".repeat(64);
    for key in [
        "-app",
        "app-",
        "bad key",
        long_name.as_str(),
        "Example.com/app",
        "/app",
        "example.com/",
        "a/b/c",
        "exa_mple.com/app",
        "",
    ] {
        rejects_policy(
            &match_labels(&format!("\"{key}\": web")),
            &format!("spec.podSelector.matchLabels[{key}]"),
            &format!("{INVALID_LABEL_KEY} {key:?}"),
        );
    }
}

#[test]
fn invalid_match_labels_value_is_rejected() {
    let long_value = "v".repeat(64);
    for value in ["-web", "web-", "a b", "web/1", long_value.as_str()] {
        rejects_policy(
            &match_labels(&format!("app: \"{value}\"")),
            "spec.podSelector.matchLabels[app]",
            &format!("{INVALID_LABEL_VALUE} {value:?}"),
        );
    }
}

#[test]
fn valid_labels_are_accepted() {
    let long_name = "a".repeat(63);
    let long_prefix = format!("{}.example.com/app", "b".repeat(100));
    for (key, value) in [
        ("app", "web"),
        ("app.kubernetes.io/name", "Web_1.2-x"),
        ("A_b.C-d", ""),
        (long_name.as_str(), long_name.as_str()),
        (long_prefix.as_str(), "x"),
        ("9", "9"),
    ] {
        let text = format!("\"{key}\": \"{value}\"");
        let policy = accepts_policy(&match_labels(&text));
        assert_eq!(
            policy.pod_selector.match_labels,
            vec![(key.to_owned(), value.to_owned())]
        );
    }
}

#[test]
fn selector_errors_in_peers_name_the_peer_selector() {
    rejects_policy(
        "
        podSelector: {}
        ingress:
          - from:
              - namespaceSelector:
                  matchLabels: {team: \"a b\"}
        ",
        "spec.ingress[0].from[0].namespaceSelector.matchLabels[team]",
        INVALID_LABEL_VALUE,
    );
    rejects_policy(
        "
        podSelector: {}
        egress:
          - to:
              - namespaceSelector: {}
                podSelector:
                  matchExpressions: [{key: app, operator: Within, values: [x]}]
        ",
        "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
        "not a valid selector operator",
    );
}
