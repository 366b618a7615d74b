// Part of `validation.rs` (brought in with `include!`): Ports.

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

#[test]
fn end_port_below_port_is_rejected() {
    rejects_policy(
        &ingress_port("port: 80, endPort: 79"),
        "spec.ingress[0].ports[0].endPort",
        "must be greater than or equal to `port`",
    );
}

#[test]
fn end_port_with_named_port_is_rejected() {
    rejects_policy(
        &ingress_port("port: http, endPort: 90"),
        "spec.ingress[0].ports[0].endPort",
        "may not be specified when `port` is non-numeric",
    );
}

#[test]
fn end_port_without_port_is_rejected() {
    rejects_policy(
        &ingress_port("protocol: TCP, endPort: 90"),
        "spec.ingress[0].ports[0].endPort",
        "may not be specified when `port` is not specified",
    );
}

#[test]
fn port_out_of_range_is_rejected() {
    for port in ["0", "65536", "-1", "100000"] {
        rejects_policy(
            &ingress_port(&format!("port: {port}")),
            "spec.ingress[0].ports[0].port",
            PORT_RANGE,
        );
    }
}

#[test]
fn end_port_out_of_range_is_rejected() {
    rejects_policy(
        &ingress_port("port: 1, endPort: 65536"),
        "spec.ingress[0].ports[0].endPort",
        PORT_RANGE,
    );
    // Both out of range and below `port`: either message is right (the API server gives both).
    let error = single_error(&policy_yaml(&ingress_port("port: 1, endPort: 0")));
    assert_eq!(error.object, Some(policy_ref()));
    assert_eq!(
        error.field.as_deref(),
        Some("spec.ingress[0].ports[0].endPort")
    );
    assert!(
        error.message.contains(PORT_RANGE) || error.message.contains("greater than or equal"),
        "{error}"
    );
}

#[test]
fn port_errors_name_the_egress_rule_and_port_index() {
    rejects_policy(
        "
        podSelector: {}
        egress:
          - ports: [{port: 53, protocol: UDP}]
          - ports:
              - port: 80
              - port: 443
              - {port: 8080, endPort: 8000}
        ",
        "spec.egress[1].ports[2].endPort",
        "must be greater than or equal to `port`",
    );
}

#[test]
fn unknown_protocol_is_rejected() {
    for protocol in ["ICMP", "tcp", "Udp", "\"\"", "ICMPv6"] {
        let shown = protocol.trim_matches('"');
        rejects_policy(
            &ingress_port(&format!("protocol: {protocol}, port: 80")),
            "spec.ingress[0].ports[0].protocol",
            &format!("unsupported value {shown:?}"),
        );
    }
}

#[test]
fn unknown_protocol_message_lists_the_supported_values() {
    let error = single_error(&policy_yaml(&ingress_port("protocol: ICMP")));
    for value in ["TCP", "UDP", "SCTP"] {
        assert!(error.message.contains(value), "{error}");
    }
}

#[test]
fn valid_ports_are_accepted() {
    let policy = accepts_policy(
        "
        podSelector: {}
        ingress:
          - ports:
              - port: 80
              - {port: 32000, endPort: 32768, protocol: UDP}
              - {port: 443, endPort: 443}
              - {port: http, protocol: SCTP}
              - protocol: UDP
              - {port: 1}
              - {port: 65535}
        ",
    );
    let ports: Vec<_> = policy.ingress[0]
        .ports
        .iter()
        .map(|p| (p.protocol, p.port.clone()))
        .collect();
    assert_eq!(
        ports,
        vec![
            (Protocol::Tcp, PortMatch::Range(80, 80)),
            (Protocol::Udp, PortMatch::Range(32000, 32768)),
            (Protocol::Tcp, PortMatch::Range(443, 443)),
            (Protocol::Sctp, PortMatch::Named("http".into())),
            (Protocol::Udp, PortMatch::Any),
            (Protocol::Tcp, PortMatch::Range(1, 1)),
            (Protocol::Tcp, PortMatch::Range(65535, 65535)),
        ]
    );
}

#[test]
fn invalid_named_port_is_rejected() {
    for name in [
        // too long (16 characters)
        "abcdefghijklmnop",
        // uppercase
        "HTTP",
        "Http",
        // no letter (a quoted number is a string, hence a name)
        "\"8080\"",
        "\"80-80\"",
        // double, leading or trailing hyphen
        "my--port",
        "-http",
        "http-",
        // characters outside [-a-z0-9]
        "my_port",
        "my.port",
        "\"\"",
    ] {
        let shown = name.trim_matches('"');
        rejects_policy(
            &ingress_port(&format!("port: {name}")),
            "spec.ingress[0].ports[0].port",
            &format!("{INVALID_PORT_NAME} {shown:?}"),
        );
    }
}

#[test]
fn valid_named_ports_are_accepted() {
    for name in ["abcdefghijklmno", "http-2", "h2c", "a", "1a", "dns-tcp-53"] {
        let policy = accepts_policy(&ingress_port(&format!("port: {name}")));
        assert_eq!(
            policy.ingress[0].ports[0].port,
            PortMatch::Named(name.to_owned())
        );
    }
}
