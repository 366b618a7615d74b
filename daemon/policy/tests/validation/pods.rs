// Part of `validation.rs` (brought in with `include!`): Pods.

// ---------------------------------------------------------------------------------------------
// Pods
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_pod_ip_is_rejected() {
    rejects_pod(
        "",
        "podIP: 10.0.0.256",
        "status.podIP",
        "invalid IP address \"10.0.0.256\"",
    );
    rejects_pod(
        "",
        "podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::zz\"}]",
        "status.podIPs[1].ip",
        "invalid IP address \"fd00::zz\"",
    );
    rejects_pod(
        "",
        "podIP: 10.0.0.0/24",
        "status.podIP",
        "invalid IP address",
    );
}

#[test]
fn pod_container_port_out_of_range_is_rejected() {
    rejects_pod(
        "containers: [{name: c, ports: [{containerPort: 0}]}]",
        "",
        "spec.containers[0].ports[0].containerPort",
        PORT_RANGE,
    );
    rejects_pod(
        "
        containers:
          - name: a
            ports: [{containerPort: 80}]
          - name: b
            ports: [{containerPort: 81}, {containerPort: 65536}]
        ",
        "",
        "spec.containers[1].ports[1].containerPort",
        PORT_RANGE,
    );
}

#[test]
fn pod_port_unknown_protocol_is_rejected() {
    for protocol in ["ICMP", "udp"] {
        rejects_pod(
            &format!(
                "containers: [{{name: c, ports: [{{containerPort: 80, protocol: {protocol}}}]}}]"
            ),
            "",
            "spec.containers[0].ports[0].protocol",
            &format!("unsupported value {protocol:?}"),
        );
    }
}

#[test]
fn pod_port_invalid_name_is_rejected() {
    rejects_pod(
        "containers: [{name: c, ports: [{containerPort: 80, name: HTTP}]}]",
        "",
        "spec.containers[0].ports[0].name",
        &format!("{INVALID_PORT_NAME} \"HTTP\""),
    );
}

#[test]
fn pod_duplicate_port_name_in_a_container_is_rejected() {
    // validateContainerPorts: a port name may appear once per container (field.Duplicate).
    rejects_pod(
        "
        containers:
          - name: c
            ports:
              - {containerPort: 80, name: http}
              - {containerPort: 8080, name: http}
        ",
        "",
        "spec.containers[0].ports[1].name",
        "http",
    );
}

#[test]
fn valid_pod_is_loaded() {
    let m = load(&pod_yaml(
        "
        nodeName: node-1
        containers:
          - name: a
            ports:
              - {containerPort: 80, name: http}
              - {containerPort: 53, protocol: UDP, name: dns}
          - name: b
            ports: [{containerPort: 9000, protocol: SCTP}]
        ",
        "
        podIP: 10.0.0.1
        podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::1\"}]
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    let pod = &m.pods[0];
    assert_eq!(pod.key(), "team/web");
    assert_eq!(
        pod.ips,
        vec![
            "10.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "fd00::1".parse().unwrap()
        ]
    );
    assert_eq!(
        pod.ports,
        vec![
            ContainerPort {
                name: Some("http".into()),
                port: 80,
                protocol: Protocol::Tcp
            },
            ContainerPort {
                name: Some("dns".into()),
                port: 53,
                protocol: Protocol::Udp
            },
            ContainerPort {
                name: None,
                port: 9000,
                protocol: Protocol::Sctp
            },
        ]
    );
    assert_eq!(pod.node_name.as_deref(), Some("node-1"));
    assert!(!pod.host_network);
}
