// Part of `validation.rs` (brought in with `include!`): policyTypes.

// ---------------------------------------------------------------------------------------------
// policyTypes
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_policy_type_is_rejected() {
    rejects_policy(
        "
        podSelector: {}
        policyTypes: [ingress]
        ",
        "spec.policyTypes[0]",
        "unsupported value \"ingress\"",
    );
    rejects_policy(
        "
        podSelector: {}
        policyTypes: [Ingress, Both]
        ",
        "spec.policyTypes[1]",
        "unsupported value \"Both\": supported values are \"Ingress\", \"Egress\"",
    );
}

#[test]
fn more_than_two_policy_types_are_rejected() {
    rejects_policy(
        "
        podSelector: {}
        policyTypes: [Ingress, Egress, Ingress]
        ",
        "spec.policyTypes",
        "may not have more than 2 entries",
    );
}

#[test]
fn repeated_policy_type_is_accepted() {
    // The API server only checks the count and each value, not uniqueness.
    let policy = accepts_policy(
        "
        podSelector: {}
        policyTypes: [Egress, Egress]
        ",
    );
    assert!(!policy.isolates_ingress);
    assert!(policy.isolates_egress);
}

#[test]
fn policy_types_absent_without_egress_rules_means_ingress_only() {
    let policy = accepts_policy("podSelector: {}\n");
    assert!(policy.isolates_ingress);
    assert!(!policy.isolates_egress);

    let policy = accepts_policy(
        "
        podSelector: {}
        ingress: [{}]
        ",
    );
    assert!(policy.isolates_ingress);
    assert!(!policy.isolates_egress);
}

#[test]
fn policy_types_absent_with_egress_rules_means_both() {
    let policy = accepts_policy(
        "
        podSelector: {}
        egress:
          - to: [{podSelector: {}}]
        ",
    );
    assert!(policy.isolates_ingress);
    assert!(policy.isolates_egress);
    assert_eq!(policy.egress.len(), 1);
}

#[test]
fn policy_types_absent_with_empty_egress_list_means_ingress_only() {
    let policy = accepts_policy(
        "
        podSelector: {}
        egress: []
        ",
    );
    assert!(policy.isolates_ingress);
    assert!(!policy.isolates_egress);
}

#[test]
fn policy_types_empty_list_is_defaulted_like_absent() {
    let policy = accepts_policy(
        "
        podSelector: {}
        policyTypes: []
        egress: [{}]
        ",
    );
    assert!(policy.isolates_ingress);
    assert!(policy.isolates_egress);
}

#[test]
fn explicit_policy_types_are_kept() {
    let policy = accepts_policy(
        "
        podSelector: {}
        policyTypes: [Egress]
        ingress: [{}]
        ",
    );
    assert!(!policy.isolates_ingress);
    assert!(policy.isolates_egress);
    // Ingress rules are kept (for lint) but do not isolate.
    assert_eq!(policy.ingress.len(), 1);
}
