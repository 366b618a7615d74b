// Part of `validation.rs` (brought in with `include!`): ipBlock.

// ---------------------------------------------------------------------------------------------
// ipBlock
// ---------------------------------------------------------------------------------------------

#[test]
fn ip_block_invalid_cidr_is_rejected() {
    for cidr in [
        "10.0.0.0/33",
        "not-a-cidr",
        "10.0.0.0",
        "10.0.0/8",
        "2001:db8::/129",
        "10.0.0.0/-1",
    ] {
        rejects_policy(
            &ingress_ip_block(&format!("cidr: \"{cidr}\"")),
            "spec.ingress[0].from[0].ipBlock.cidr",
            &format!("invalid CIDR {cidr:?}"),
        );
    }
}

#[test]
fn ip_block_empty_or_missing_cidr_is_required() {
    rejects_policy(
        &ingress_ip_block("cidr: \"\""),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "required",
    );
    rejects_policy(
        &ingress_ip_block("except: [10.0.0.0/16]"),
        "spec.ingress[0].from[0].ipBlock.cidr",
        "required",
    );
}

#[test]
fn ip_block_invalid_cidr_in_egress_names_the_egress_path() {
    rejects_policy(
        "
        podSelector: {}
        egress:
          - to:
              - podSelector: {}
          - to:
              - ipBlock: {cidr: 10.0.0.0/8}
              - ipBlock: {cidr: 300.0.0.0/8}
        ",
        "spec.egress[1].to[1].ipBlock.cidr",
        "invalid CIDR \"300.0.0.0/8\"",
    );
}

#[test]
fn ip_block_invalid_except_is_rejected() {
    rejects_policy(
        &ingress_ip_block("cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.0.0/40]"),
        "spec.ingress[0].from[0].ipBlock.except[1]",
        "invalid CIDR \"10.2.0.0/40\"",
    );
}

#[test]
fn ip_block_except_outside_cidr_is_rejected() {
    rejects_policy(
        &ingress_ip_block("cidr: 10.0.0.0/8, except: [192.168.0.0/16]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
    // Overlapping but not inside: a bigger block that contains the cidr.
    rejects_policy(
        &ingress_ip_block("cidr: 10.1.0.0/16, except: [10.0.0.0/8]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
}

#[test]
fn ip_block_except_equal_to_cidr_is_rejected() {
    rejects_policy(
        &ingress_ip_block("cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.0.0.0/8]"),
        "spec.ingress[0].from[0].ipBlock.except[1]",
        NOT_STRICT_SUBSET,
    );
    // Equal once host bits are cleared: still not a strict subset.
    rejects_policy(
        &ingress_ip_block("cidr: 10.0.0.0/8, except: [10.9.9.9/8]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
    rejects_policy(
        &ingress_ip_block("cidr: \"2001:db8::/32\", except: [\"2001:db8::/32\"]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
}

#[test]
fn ip_block_except_of_another_family_is_rejected() {
    rejects_policy(
        &ingress_ip_block("cidr: 10.0.0.0/8, except: [\"2001:db8::/32\"]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
    rejects_policy(
        &ingress_ip_block("cidr: \"::/0\", except: [10.0.0.0/8]"),
        "spec.ingress[0].from[0].ipBlock.except[0]",
        NOT_STRICT_SUBSET,
    );
}

#[test]
fn ip_block_except_message_names_both_values() {
    let error = single_error(&policy_yaml(&ingress_ip_block(
        "cidr: 10.0.0.0/8, except: [192.168.0.0/16]",
    )));
    assert!(
        error.message.contains("\"192.168.0.0/16\"") && error.message.contains("\"10.0.0.0/8\""),
        "{error}"
    );
}

#[test]
fn ip_block_cidr_with_host_bits_is_accepted_as_its_network() {
    let policy = accepts_policy(&ingress_ip_block("cidr: 10.0.0.5/8"));
    let block = first_ingress_ip_block(&policy);
    assert_eq!(block.cidr, "10.0.0.0/8".parse().unwrap());
    assert!(block.host_bits_set);
    assert!(block.except.is_empty());

    let policy = accepts_policy(&ingress_ip_block("cidr: \"2001:db8::1/32\""));
    let block = first_ingress_ip_block(&policy);
    assert_eq!(block.cidr, "2001:db8::/32".parse().unwrap());
    assert!(block.host_bits_set);
}

#[test]
fn ip_block_valid_cidr_and_except_are_accepted() {
    let policy = accepts_policy(&ingress_ip_block(
        "cidr: 10.0.0.0/8, except: [10.1.0.0/16, 10.2.3.4/32, 10.3.9.9/16]",
    ));
    let block = first_ingress_ip_block(&policy);
    assert_eq!(block.cidr, "10.0.0.0/8".parse().unwrap());
    assert!(!block.host_bits_set);
    // An except with host bits is read as its network, like the API server's ParseCIDRSloppy.
    assert_eq!(
        block.except,
        vec![
            "10.1.0.0/16".parse().unwrap(),
            "10.2.3.4/32".parse().unwrap(),
            "10.3.0.0/16".parse().unwrap()
        ]
    );

    let policy = accepts_policy(&ingress_ip_block(
        "cidr: \"0.0.0.0/0\", except: [\"0.0.0.0/1\"]",
    ));
    assert_eq!(first_ingress_ip_block(&policy).except.len(), 1);
}
