//! Validation of manifests: every rejection the validator implements, with the field path, the
//! key part of the message and the object it is about; plus the loader's handling of documents,
//! lists, unknown kinds, defaulting and duplicates.
//!
//! Expected behaviour is the Kubernetes API server's (pkg/apis/networking/validation,
//! pkg/apis/core/validation, apimachinery label and name validation).

use flowgate_policy::model::{
    ContainerPort, IpBlock, NamespaceScope, Peer, Policy, PortMatch, Protocol,
};
use flowgate_policy::{ManifestError, Manifests, ObjectRef};

const SOURCE: &str = "test.yaml";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Strips the common leading indentation of the non-blank lines (so YAML can be written indented
/// inside the test) and drops a leading newline.
fn dedent(text: &str) -> String {
    let text = text.strip_prefix('\n').unwrap_or(text);
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| if l.len() >= indent { &l[indent..] } else { "" })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Indents every line of `text` by `n` spaces.
fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines()
        .map(|l| {
            if l.is_empty() {
                String::new()
            } else {
                format!("{pad}{l}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn load(text: &str) -> Manifests {
    let mut manifests = Manifests::new();
    manifests.add_text(SOURCE, text);
    manifests
}

/// A NetworkPolicy `team/np` with the given spec (written at indentation 0, dedented).
fn policy_yaml(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: np\n  namespace: team\nspec:\n{}",
        indent(&dedent(spec), 2)
    )
}

/// A Pod `team/web` with the given spec and status (each dedented; either may be empty).
fn pod_yaml(spec: &str, status: &str) -> String {
    let mut text =
        String::from("apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\n");
    if !spec.trim().is_empty() {
        text.push_str("spec:\n");
        text.push_str(&indent(&dedent(spec), 2));
    }
    if !status.trim().is_empty() {
        text.push_str("status:\n");
        text.push_str(&indent(&dedent(status), 2));
    }
    text
}

fn policy_ref() -> ObjectRef {
    object("NetworkPolicy", Some("team"), "np")
}

fn pod_ref() -> ObjectRef {
    object("Pod", Some("team"), "web")
}

fn object(kind: &str, namespace: Option<&str>, name: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_owned(),
        namespace: namespace.map(str::to_owned),
        name: name.to_owned(),
    }
}

/// Loads `text`, which must produce exactly one error and load nothing; returns the error.
#[track_caller]
fn single_error(text: &str) -> ManifestError {
    let m = load(text);
    assert_eq!(
        m.errors.len(),
        1,
        "expected exactly one error for\n{text}\ngot: {:#?}",
        m.errors
    );
    assert!(
        m.policies.is_empty() && m.pods.is_empty() && m.namespaces.is_empty(),
        "a rejected object must not be loaded: {m:#?}"
    );
    m.errors[0].clone()
}

/// Asserts the error is about `object`, at exactly `field`, with `message` in its message.
#[track_caller]
fn assert_error(error: &ManifestError, object: &ObjectRef, field: &str, message: &str) {
    assert_eq!(error.object.as_ref(), Some(object), "object of {error}");
    assert_eq!(error.field.as_deref(), Some(field), "field path of {error}");
    assert!(
        error.message.contains(message),
        "message of {error:?} should contain {message:?}"
    );
    assert_eq!(error.location.source, SOURCE);
    assert_eq!(error.location.line, Some(1), "line of {error}");
}

/// The spec must be rejected at `field` (relative to the object) with `message`.
#[track_caller]
fn rejects_policy(spec: &str, field: &str, message: &str) {
    let error = single_error(&policy_yaml(spec));
    assert_error(&error, &policy_ref(), field, message);
}

/// The spec must load as exactly one policy, with no errors; returns it.
#[track_caller]
fn accepts_policy(spec: &str) -> Policy {
    let m = load(&policy_yaml(spec));
    assert!(m.errors.is_empty(), "unexpected errors: {:#?}", m.errors);
    assert_eq!(m.policies.len(), 1, "{m:#?}");
    m.policies[0].clone()
}

#[track_caller]
fn rejects_pod(spec: &str, status: &str, field: &str, message: &str) {
    let error = single_error(&pod_yaml(spec, status));
    assert_error(&error, &pod_ref(), field, message);
}

/// The single ipBlock peer of the policy's first ingress rule.
#[track_caller]
fn first_ingress_ip_block(policy: &Policy) -> IpBlock {
    let blocks: Vec<IpBlock> = policy.ingress[0]
        .peers
        .iter()
        .flatten()
        .filter_map(|peer| match peer {
            Peer::IpBlock(block) => Some(block.clone()),
            Peer::Pods { .. } => None,
        })
        .collect();
    assert_eq!(blocks.len(), 1, "expected one ipBlock peer in {policy:?}");
    blocks[0].clone()
}

/// An ingress rule with one port entry (given as YAML flow mapping body).
fn ingress_port(port: &str) -> String {
    format!("podSelector: {{}}\ningress:\n  - ports:\n      - {{{port}}}\n")
}

/// An ingress rule with one ipBlock peer (given as YAML flow mapping body).
fn ingress_ip_block(block: &str) -> String {
    format!("podSelector: {{}}\ningress:\n  - from:\n      - ipBlock: {{{block}}}\n")
}

/// A podSelector with the given matchLabels entry (a YAML flow mapping body).
fn match_labels(entry: &str) -> String {
    format!("podSelector:\n  matchLabels: {{{entry}}}\n")
}

/// A podSelector with one matchExpressions requirement (a YAML flow mapping body).
fn match_expression(expr: &str) -> String {
    format!("podSelector:\n  matchExpressions:\n    - {{{expr}}}\n")
}

const PORT_RANGE: &str = "must be between 1 and 65535, inclusive";
const NOT_STRICT_SUBSET: &str = "must be a strict subset of `cidr`";
const INVALID_PORT_NAME: &str = "invalid port name";
const INVALID_LABEL_KEY: &str = "invalid label key";
const INVALID_LABEL_VALUE: &str = "invalid label value";

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

// ---------------------------------------------------------------------------------------------
// Metadata and decoding
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_metadata_name_is_rejected() {
    let error = single_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  namespace: team\nspec: {}\n",
    );
    assert_error(
        &error,
        &object("NetworkPolicy", Some("team"), "<unnamed>"),
        "metadata.name",
        "required",
    );

    let error = single_error("apiVersion: v1\nkind: Pod\nmetadata:\n  name: \"\"\n");
    let pod = error.object.as_ref().unwrap();
    assert_eq!(
        (pod.kind.as_str(), pod.namespace.as_deref()),
        ("Pod", Some("default"))
    );
    assert_eq!(error.field.as_deref(), Some("metadata.name"));
    assert!(error.message.contains("required"), "{error}");

    let error = single_error("apiVersion: v1\nkind: Namespace\n");
    assert_error(
        &error,
        &object("Namespace", None, "<unnamed>"),
        "metadata.name",
        "required",
    );
}

#[test]
fn wrong_field_type_is_reported_with_its_path() {
    rejects_policy(
        &ingress_port("port: [1]"),
        "spec.ingress[0].ports[0].port",
        "invalid type",
    );
    rejects_policy(
        "
        podSelector: {}
        ingress: {from: []}
        ",
        "spec.ingress",
        "invalid type",
    );
    rejects_policy(
        "
        podSelector: {}
        ingress:
          - from:
              - ipBlock: {cidr: 10.0.0.0/8, except: 10.1.0.0/16}
        ",
        "spec.ingress[0].from[0].ipBlock.except",
        "invalid type",
    );
    rejects_policy(
        "podSelector: {matchLabels: {app: [web]}}\n",
        "spec.podSelector.matchLabels.app",
        "invalid type",
    );
    rejects_pod(
        "containers: [{name: c, ports: [{containerPort: [80]}]}]\n",
        "",
        "spec.containers[0].ports[0].containerPort",
        "invalid type",
    );
    let error = single_error("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a]\n");
    assert_error(
        &error,
        &object("Namespace", None, "<unnamed>"),
        "metadata.name",
        "invalid type",
    );
}

#[test]
fn namespace_and_pod_labels_are_validated() {
    let error = single_error(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team\n  labels: {\"-bad\": x}\n",
    );
    assert_error(
        &error,
        &object("Namespace", None, "team"),
        "metadata.labels[-bad]",
        INVALID_LABEL_KEY,
    );
    let error = single_error(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: team\n  labels: {app: \"web app\"}\n",
    );
    assert_error(
        &error,
        &pod_ref(),
        "metadata.labels[app]",
        INVALID_LABEL_VALUE,
    );
}

#[test]
fn namespace_defaults_to_default() {
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np}
        spec: {podSelector: {}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies[0].namespace, "default");
    assert_eq!(m.pods[0].namespace, "default");
    assert!(m.origins.contains_key(&(
        "NetworkPolicy".to_owned(),
        "default".to_owned(),
        "np".to_owned()
    )));

    // The object ref of a rejected object also names the default namespace.
    let error = single_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np}\nspec: {policyTypes: [x]}\n",
    );
    assert_error(
        &error,
        &object("NetworkPolicy", Some("default"), "np"),
        "spec.policyTypes[0]",
        "unsupported value",
    );
}

#[test]
fn empty_namespace_defaults_to_default() {
    // kubectl and the API server treat `namespace: ""` like an absent namespace.
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: \"\"}
        spec: {podSelector: {}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: \"\"}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies[0].namespace, "default");
    assert_eq!(m.pods[0].namespace, "default");
}

#[test]
fn policy_name_must_be_a_dns_subdomain() {
    // ValidateNetworkPolicyName = NameIsDNSSubdomain.
    for name in ["Web_Policy", "web policy", "-web", "web."] {
        let error = single_error(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \"{name}\", namespace: team}}\nspec: {{}}\n"
        ));
        assert_error(
            &error,
            &object("NetworkPolicy", Some("team"), name),
            "metadata.name",
            name,
        );
    }
}

#[test]
fn object_namespace_must_be_a_dns_label() {
    // ValidateObjectMeta checks metadata.namespace with ValidateNamespaceName (a DNS label).
    for namespace in ["Team", "team.a", "team_a"] {
        let error = single_error(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: \"{namespace}\"}}\n"
        ));
        assert_error(
            &error,
            &object("Pod", Some(namespace), "web"),
            "metadata.namespace",
            namespace,
        );
    }
    let error = single_error("apiVersion: v1\nkind: Namespace\nmetadata: {name: team.a}\n");
    assert_error(
        &error,
        &object("Namespace", None, "team.a"),
        "metadata.name",
        "team.a",
    );
}

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

// ---------------------------------------------------------------------------------------------
// Loading: documents, lists, kinds, duplicates
// ---------------------------------------------------------------------------------------------

#[test]
fn yaml_syntax_error_loses_only_its_document() {
    let text = dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: broken
           namespace: a
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: a}
        ",
    );
    let m = load(&text);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.pods.len(), 1);
    assert_eq!(m.pods[0].name, "web");
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(error.location.source, SOURCE);
    // The line of the broken key itself (line 9 of the file), not the document's start.
    assert_eq!(error.location.line, Some(9));
    assert_eq!(error.object, None);
    assert!(error.message.starts_with("not valid YAML"), "{error}");
    assert!(
        error.to_string().starts_with("test.yaml:9: not valid YAML"),
        "{error}"
    );
}

#[test]
fn yaml_syntax_error_message_line_is_the_file_line() {
    // The broken line is line 9 of the file (line 5 of its document). A line number in the
    // message must not contradict the location: it has to be the file's line, or absent.
    let text = dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: a}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: broken
           namespace: a
        ",
    );
    let m = load(&text);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let message = &m.errors[0].message;
    let mentions_line = |n: usize| {
        message.contains(&format!("line {n}")) || message.contains(&format!("line: {n}"))
    };
    for wrong in 1..=8 {
        assert!(
            !mentions_line(wrong) || mentions_line(9),
            "message gives a document-relative line: {message}"
        );
    }
}

#[test]
fn unterminated_flow_in_last_document_keeps_the_others() {
    let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n--- # second\nkind: Pod\nmetadata: {name: [\n";
    let m = load(text);
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    // The unclosed `[` is on line 6 of the file.
    let line = m.errors[0].location.line.unwrap();
    assert_eq!(line, 6, "{}", m.errors[0]);
    assert!(m.errors[0].message.contains("not valid YAML"));
}

#[test]
fn list_items_are_loaded() {
    let m = load(&dedent(
        "
        apiVersion: v1
        kind: List
        items:
          - apiVersion: v1
            kind: Namespace
            metadata: {name: team}
          - apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: team}
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: np, namespace: team}
            spec: {podSelector: {}}
          - apiVersion: apps/v1
            kind: Deployment
            metadata: {name: web, namespace: team}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicyList
        items:
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: other, namespace: team}
          - apiVersion: networking.k8s.io/v1
            kind: NetworkPolicy
            metadata: {name: bad, namespace: team}
            spec: {policyTypes: [Sideways]}
        ",
    ));
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(m.pods.len(), 1);
    let names: Vec<_> = m.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["np", "other"]);
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert!(m.notices[0].message.contains("apps/v1 Deployment"));
    // An item's error names the item and the document the list starts on.
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(
        error.object,
        Some(object("NetworkPolicy", Some("team"), "bad"))
    );
    assert_eq!(error.field.as_deref(), Some("spec.policyTypes[0]"));
    assert_eq!(error.location.line, Some(18));
}

#[test]
fn unknown_kinds_are_skipped_with_a_notice() {
    let m = load(&dedent(
        "
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: web, namespace: team}
        spec: {replicas: 3}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        ---
        apiVersion: networking.k8s.io/v1beta1
        kind: NetworkPolicy
        metadata: {name: old}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert!(m.policies.is_empty() && m.pods.is_empty() && m.namespaces.is_empty());
    assert_eq!(m.notices.len(), 3, "{:#?}", m.notices);

    let deployment = &m.notices[0];
    assert_eq!(deployment.location.line, Some(1));
    assert_eq!(
        deployment.object,
        Some(object("Deployment", Some("team"), "web"))
    );
    assert!(
        deployment
            .message
            .contains("skipped: apps/v1 Deployment is not used"),
        "{deployment}"
    );

    let service = &m.notices[1];
    assert_eq!(service.location.line, Some(6));
    assert_eq!(
        service.object,
        Some(object("Service", Some("default"), "web"))
    );
    assert!(service.message.contains("skipped: v1 Service"), "{service}");

    assert!(
        m.notices[2]
            .message
            .contains("networking.k8s.io/v1beta1 NetworkPolicy")
    );
}

#[test]
fn unknown_kind_ending_in_list_without_items_gets_a_notice() {
    // Only a document with `items` is a list (kubectl: meta.IsListType); a custom kind that
    // happens to end in "List" is an ordinary object and must not vanish silently.
    let m = load(&dedent(
        "
        apiVersion: example.com/v1
        kind: IPAllowList
        metadata: {name: office, namespace: team}
        spec: {cidrs: [10.0.0.0/8]}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert_eq!(
        m.notices[0].object,
        Some(object("IPAllowList", Some("team"), "office"))
    );
    assert!(
        m.notices[0]
            .message
            .contains("skipped: example.com/v1 IPAllowList"),
        "{}",
        m.notices[0]
    );
}

#[test]
fn document_without_kind_is_an_error() {
    let m = load("apiVersion: v1\nmetadata: {name: web}\n");
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    let error = &m.errors[0];
    assert_eq!(error.field.as_deref(), Some("kind"));
    assert!(error.message.contains("missing"), "{error}");
    assert_eq!(error.location.line, Some(1));
    assert!(m.notices.is_empty());
}

#[test]
fn document_without_api_version_is_an_error() {
    // The loader's own message says "every object needs apiVersion and kind"; a Pod without
    // apiVersion is not a valid object and must not be skipped as an "unused kind".
    let m = load("kind: Pod\nmetadata: {name: web}\n");
    assert_eq!(
        m.errors.len(),
        1,
        "errors: {:#?}\nnotices: {:#?}",
        m.errors,
        m.notices
    );
    let error = &m.errors[0];
    assert_eq!(error.field.as_deref(), Some("apiVersion"));
    assert!(error.message.contains("missing"), "{error}");
}

#[test]
fn non_object_documents_are_skipped_with_a_notice() {
    let m = load("just a string\n---\n- a\n- list\n---\n# only a comment\n---\n\n---\nnull\n");
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.notices.len(), 2, "{:#?}", m.notices);
    assert!(m.notices[0].message.contains("not a Kubernetes object"));
    assert_eq!(m.notices[1].location.line, Some(3));
}

#[test]
fn duplicate_object_replaces_the_previous_definition() {
    let m = load(&dedent(
        "
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec: {policyTypes: [Ingress]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: other}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec: {policyTypes: [Egress]}
        ",
    ));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.policies.len(), 2);
    let team: Vec<_> = m
        .policies
        .iter()
        .filter(|p| p.namespace == "team")
        .collect();
    assert_eq!(team.len(), 1);
    assert!(
        team[0].isolates_egress && !team[0].isolates_ingress,
        "the later one wins"
    );
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    let notice = &m.notices[0];
    assert_eq!(notice.object, Some(policy_ref()));
    assert_eq!(notice.location.line, Some(10));
    assert!(
        notice
            .message
            .contains("replaces the definition at test.yaml:1"),
        "{notice}"
    );
}

#[test]
fn duplicate_across_sources_and_kinds() {
    let mut m = Manifests::new();
    m.add_text(
        "a.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web}\n",
    );
    m.add_text(
        "a.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\n",
    );
    m.add_text(
        "b.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {v: \"2\"}}\n",
    );
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    assert_eq!(m.pods.len(), 1, "a Pod of the same name is not a duplicate");
    assert_eq!(m.namespaces.len(), 1);
    assert_eq!(
        m.namespaces[0].labels.get("v").map(String::as_str),
        Some("2")
    );
    assert_eq!(m.notices.len(), 1, "{:#?}", m.notices);
    assert_eq!(
        m.notices[0].to_string(),
        "b.yaml:1: Namespace web: replaces the definition at a.yaml:1"
    );
}

#[test]
fn good_objects_survive_a_bad_one() {
    let m = load(&dedent(
        "
        apiVersion: v1
        kind: Namespace
        metadata: {name: team, labels: {team: a}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: team, labels: {app: web}}
        spec:
          containers: [{name: c, ports: [{containerPort: 80, name: http}]}]
        status: {podIP: 10.0.0.1}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: np, namespace: team}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
            - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-web, namespace: team}
        spec:
          podSelector: {matchLabels: {app: web}}
          ingress:
            - ports: [{port: http}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, namespace: team}
        ",
    ));
    assert_eq!(m.namespaces.len(), 1);
    let pods: Vec<_> = m.pods.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(pods, ["web", "db"]);
    let policies: Vec<_> = m.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(policies, ["allow-web"]);
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    assert_eq!(
        m.errors[0].to_string(),
        "test.yaml:12: NetworkPolicy team/np: spec.ingress[0].from[0].ipBlock.except[0]: \
         \"11.0.0.0/8\" must be a strict subset of `cidr` \"10.0.0.0/8\""
    );
    assert!(m.notices.is_empty(), "{:#?}", m.notices);
}

#[test]
fn error_display_names_source_line_object_and_field() {
    let m = load(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: a}}\n---\n{}",
        policy_yaml(&ingress_port("port: 0"))
    ));
    assert_eq!(m.errors.len(), 1, "{:#?}", m.errors);
    assert_eq!(
        m.errors[0].to_string(),
        "test.yaml:5: NetworkPolicy team/np: spec.ingress[0].ports[0].port: \
         must be between 1 and 65535, inclusive (got 0)"
    );
}
