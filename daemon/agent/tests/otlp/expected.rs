// Part of `otlp.rs` (brought in with `include!`): Expected OTLP values.

// ---------------------------------------------------------------------------------------------
// Expected OTLP values

fn s(v: &str) -> AnyValue {
    AnyValue {
        value: Some(Value::StringValue(v.into())),
    }
}

fn i(v: i64) -> AnyValue {
    AnyValue {
        value: Some(Value::IntValue(v)),
    }
}

fn strs(v: &[&str]) -> AnyValue {
    AnyValue {
        value: Some(Value::ArrayValue(ArrayValue {
            values: v.iter().map(|x| s(x)).collect(),
        })),
    }
}

/// The fake collector flattens attributes to `key -> format!("{:?}", Option<AnyValue>)`.
fn flat(attrs: &[(&str, AnyValue)]) -> BTreeMap<String, String> {
    attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), format!("{:?}", Some(v.clone()))))
        .collect()
}

/// Every attribute of the deny record of `sample()`, written out by hand.
fn deny_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("source.address", s("10.0.1.5")),
        ("source.port", i(40_000)),
        ("destination.address", s("10.0.3.9")),
        ("destination.port", i(5432)),
        ("network.transport", s("tcp")),
        ("network.type", s("ipv4")),
        ("k8s.namespace.name", s("shop")),
        ("k8s.pod.name", s("database")),
        ("flowgate.record_type", s("flow")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(2)),
        ("flowgate.verdict", s("deny")),
        ("flowgate.mode", s("enforce")),
        ("flowgate.reason", s("default_deny")),
        ("flowgate.direction", s("ingress")),
        ("flowgate.reporter", s("dst")),
        ("flowgate.policy.generation", i(7)),
        (
            "flowgate.policy.isolated_by",
            strs(&["shop/db-ingress", "shop/default-deny"]),
        ),
        ("flowgate.source.kind", s("pod")),
        ("flowgate.source.namespace", s("shop")),
        ("flowgate.source.pod", s("frontend")),
        ("flowgate.destination.kind", s("pod")),
        ("flowgate.destination.namespace", s("shop")),
        ("flowgate.destination.pod", s("database")),
        ("flowgate.network.tcp_flags", s("SYN")),
        ("flowgate.packets", i(3)),
        ("flowgate.dedup_count", i(2)),
    ]
}

fn audit_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("source.address", s("fd00::5")),
        ("destination.address", s("2001:db8::1")),
        ("network.transport", s("icmpv6")),
        ("network.type", s("ipv6")),
        ("k8s.namespace.name", s("shop")),
        ("k8s.pod.name", s("frontend")),
        ("flowgate.record_type", s("flow")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(3)),
        ("flowgate.verdict", s("audit_deny")),
        ("flowgate.mode", s("audit")),
        ("flowgate.reason", s("default_deny")),
        ("flowgate.direction", s("egress")),
        ("flowgate.reporter", s("src")),
        ("flowgate.policy.generation", i(7)),
        (
            "flowgate.policy.isolated_by",
            strs(&["shop/db-ingress", "shop/default-deny"]),
        ),
        ("flowgate.source.kind", s("pod")),
        ("flowgate.source.namespace", s("shop")),
        ("flowgate.source.pod", s("frontend")),
        ("flowgate.destination.kind", s("external")),
        ("flowgate.destination.scope", s("public")),
        ("flowgate.packets", i(1)),
        ("flowgate.dedup_count", i(0)),
        ("flowgate.tags", strs(&["egress_to_world"])),
    ]
}

fn gap_attributes() -> Vec<(&'static str, AnyValue)> {
    vec![
        ("flowgate.record_type", s("gap")),
        ("flowgate.schema", s("flowgate.flow/v1")),
        ("flowgate.seq", i(4)),
        ("flowgate.gap.stage", s("ringbuf")),
        ("flowgate.gap.lost.allow", i(5)),
        ("flowgate.gap.lost.deny", i(2)),
        ("flowgate.gap.lost.audit", i(1)),
        ("flowgate.gap.lost.total", i(8)),
    ]
}

/// (severity number, text, body) of `sample()`, by seq.
fn sample_heads() -> Vec<(i32, &'static str, &'static str)> {
    vec![
        (
            9,
            "INFO",
            "allow egress tcp shop/frontend 10.0.1.5:40000 -> shop/api 10.0.2.7:8080 (rule_allow)",
        ),
        (
            13,
            "WARN",
            "deny ingress tcp shop/frontend 10.0.1.5:40000 -> shop/database 10.0.3.9:5432 (default_deny)",
        ),
        (
            13,
            "WARN",
            "audit_deny egress icmpv6 shop/frontend fd00::5 -> 2001:db8::1 (default_deny)",
        ),
        (
            13,
            "WARN",
            "lost 8 records at ringbuf (allow 5, deny 2, audit 1)",
        ),
    ]
}

/// What the fake collector shows for `record`, from the sink's own mapping.
fn flat_mapping(record: &Record) -> BTreeMap<String, String> {
    log_fields(record)
        .attributes
        .into_iter()
        .map(|(k, v)| (k.to_owned(), format!("{:?}", Some(AnyValue::from(v)))))
        .collect()
}

fn seq_of(log: &ExportedLog) -> String {
    log.attributes
        .get("flowgate.seq")
        .cloned()
        .unwrap_or_default()
}

fn fast_config(endpoint: &str, protocol: OtlpProtocol) -> OtlpConfig {
    let mut config = OtlpConfig::new(endpoint, protocol, "node-a");
    // Only `flush` sends: the test sees that flush pushes what is buffered.
    config.batch_delay = Duration::from_secs(600);
    config.export_timeout = Duration::from_secs(5);
    config
}
