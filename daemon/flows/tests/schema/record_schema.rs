// Part of `schema.rs` (brought in with `include!`): The schema.

// ---------------------------------------------------------------------------------------------
// The schema

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("docs/flow-record.schema.json is JSON")
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema())
        .expect("the schema compiles")
}

fn errors(validator: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    validator
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

#[test]
fn the_schema_is_a_valid_draft_2020_12_schema() {
    let schema = schema();
    assert_eq!(
        schema["$schema"],
        "https://json-schema.org/draft/2020-12/schema"
    );
    if let Err(e) = jsonschema::meta::validate(&schema) {
        panic!("the schema fails its meta-schema: {e}");
    }
}

#[test]
fn the_cases_are_what_they_claim() {
    let cases = flow_cases();
    let get = |name: &str| flow(&cases.iter().find(|(n, _)| *n == name).unwrap().1).clone();
    let r = get("allow by a rule (ingress)");
    assert_eq!((r.verdict, r.policy.allowed_by.len()), (Verdict::Allow, 1));
    assert_eq!(r.policy.allowed_by[0].name, "backend-from-frontend");
    assert_eq!(r.destination.pod.as_deref(), Some("backend"));
    let r = get("audit deny");
    assert_eq!((r.verdict, r.mode), (Verdict::AuditDeny, Mode::Audit));
    assert_eq!(r.policy.isolated_by[0].name, "default-deny-ingress");
    let r = get("deny of egress to a public external");
    assert_eq!(r.destination.kind, EndpointKind::External);
    assert_eq!(r.destination.scope, Some(Scope::Public));
    assert_eq!(r.tags, ["egress_to_world"]);
    assert_eq!(
        get("deny from a private external").source.scope,
        Some(Scope::Private)
    );
    assert_eq!(get("ICMP echo allowed").source.port, None);
    assert_eq!(get("ICMPv6 denied").network.transport, "icmpv6");
    assert_eq!(get("IPv6 allow by a rule").network.ip_version, 6);
    let r = get("deduplicated deny");
    assert_eq!((r.counters.packets, r.counters.dedup_count), (7, 6));
    assert_ne!(r.counters.first_seen, r.counters.last_seen);
    assert_eq!(get("recheck deny").tags, ["recheck"]);
    assert_eq!(
        get("TCP packet without flags").network.tcp_flags.as_deref(),
        Some("")
    );
    assert_eq!(get("other IP protocol (GRE)").network.transport, "47");
    assert!(get("unresolved generation").policy.unresolved);
    let seqs: Vec<u64> = cases.iter().map(|(_, r)| r.seq()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "seq strictly increases: {seqs:?}"
    );
}

#[test]
fn every_emitted_record_validates() {
    let validator = validator();
    for (name, record) in all_cases() {
        let line = record.to_json();
        let value: Value = serde_json::from_str(&line).unwrap();
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "{name}: {line}\n{errs:#?}");
    }
}

#[test]
fn records_and_gaps_from_a_fanout_with_a_slow_sink_validate() {
    let mut node = Node::new();
    let slow = MemorySink {
        name: "slow".into(),
        delay: Duration::from_millis(1),
        ..MemorySink::default()
    };
    let received = Arc::clone(&slow.records);
    let mut fanout = Fanout::new("node-a");
    fanout.add_sink(Box::new(slow), 4).unwrap();
    for i in 0..2_000u32 {
        let e = if i % 2 == 0 {
            TCP_SYN
        } else {
            Ev {
                verdict: verdict::DENY,
                reason: reason::DEFAULT_DENY,
                direction: DIR_INGRESS,
                ..TCP_SYN
            }
        };
        fanout.publish(node.record("ops/debug", e));
        // Bursts with pauses: losses happen in a burst, and the next burst's first delivered
        // record is preceded by the gap record reporting them.
        if i % 100 == 99 {
            std::thread::sleep(Duration::from_millis(8));
        }
    }
    fanout.close();
    let records = received.lock().unwrap().clone();
    let gaps = records
        .iter()
        .filter(|r| matches!(r, Record::Gap(_)))
        .count();
    assert!(
        gaps > 0,
        "a sink 1 ms per record behind a 4-record queue loses records and says so"
    );
    let validator = validator();
    for record in &records {
        let value = serde_json::to_value(record).unwrap();
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "{value}\n{errs:#?}");
    }
}

/// A valid record with one thing broken must fail: (what is broken, how).
type Breakage = (&'static str, fn(&mut Value));

#[test]
fn broken_records_fail_validation() {
    let validator = validator();
    let cases = all_cases();
    let find = |name: &str| {
        serde_json::to_value(&cases.iter().find(|(n, _)| *n == name).unwrap().1).unwrap()
    };
    let allow = find("allow by a rule (ingress)");
    let icmp = find("ICMP echo allowed");
    let gap = find("sink gap of allows");
    let external = find("deny of egress to a public external");
    let breakages: Vec<(&Value, Breakage)> = vec![
        (
            &allow,
            ("missing verdict", |v| {
                drop(v.as_object_mut().unwrap().remove("verdict"))
            }),
        ),
        (
            &allow,
            ("missing counters.packets", |v| {
                drop(v["counters"].as_object_mut().unwrap().remove("packets"));
            }),
        ),
        (
            &allow,
            ("missing schema", |v| {
                drop(v.as_object_mut().unwrap().remove("schema"))
            }),
        ),
        (&allow, ("verdict drop", |v| v["verdict"] = json!("drop"))),
        (
            &allow,
            ("verdict in capitals", |v| v["verdict"] = json!("ALLOW")),
        ),
        (
            &allow,
            ("reason external", |v| v["reason"] = json!("external")),
        ),
        (
            &allow,
            ("direction inbound", |v| v["direction"] = json!("inbound")),
        ),
        (&allow, ("mode dry_run", |v| v["mode"] = json!("dry_run"))),
        (
            &allow,
            ("kind node", |v| v["source"]["kind"] = json!("node")),
        ),
        (
            &allow,
            ("schema v2", |v| v["schema"] = json!("flowgate.flow/v2")),
        ),
        (
            &allow,
            ("record_type typo", |v| v["record_type"] = json!("flw")),
        ),
        (
            &allow,
            ("extra top-level field", |v| {
                v["verdict_reason"] = json!("x")
            }),
        ),
        (
            &allow,
            ("extra endpoint field", |v| {
                v["source"]["workload"] = json!("x")
            }),
        ),
        (
            &allow,
            ("extra policy field", |v| v["policy"]["rules"] = json!([])),
        ),
        (
            &allow,
            ("extra rule_ref field", |v| {
                v["policy"]["allowed_by"][0]["x"] = json!(1)
            }),
        ),
        (
            &allow,
            ("extra counters field", |v| {
                v["counters"]["octets"] = json!(1)
            }),
        ),
        (&allow, ("null tags", |v| v["tags"] = Value::Null)),
        (&allow, ("empty tags", |v| v["tags"] = json!([]))),
        (
            &allow,
            ("unresolved false", |v| {
                v["policy"]["unresolved"] = json!(false)
            }),
        ),
        (
            &allow,
            ("time without nanoseconds", |v| {
                v["time"] = json!("2026-11-28T18:00:00Z");
            }),
        ),
        (
            &allow,
            ("time not a date", |v| v["time"] = json!("yesterday")),
        ),
        (&allow, ("seq zero", |v| v["seq"] = json!(0))),
        (&allow, ("seq as a string", |v| v["seq"] = json!("7"))),
        (
            &allow,
            ("ip not an address", |v| {
                v["source"]["ip"] = json!("10.0.0.999")
            }),
        ),
        (
            &allow,
            ("port out of range", |v| {
                v["destination"]["port"] = json!(70_000)
            }),
        ),
        (
            &allow,
            ("ip_version 5", |v| v["network"]["ip_version"] = json!(5)),
        ),
        (
            &allow,
            ("tcp without tcp_flags", |v| {
                drop(v["network"].as_object_mut().unwrap().remove("tcp_flags"));
            }),
        ),
        (
            &allow,
            ("tcp_flags lowercase", |v| {
                v["network"]["tcp_flags"] = json!("syn")
            }),
        ),
        (
            &allow,
            ("reporter does not match direction", |v| {
                v["reporter"] = json!("src")
            }),
        ),
        (
            &allow,
            ("pod endpoint without namespace", |v| {
                drop(v["source"].as_object_mut().unwrap().remove("namespace"));
            }),
        ),
        (
            &allow,
            ("allow with isolated_by", |v| {
                v["policy"]["isolated_by"] = json!([{"namespace": "shop", "name": "x"}]);
            }),
        ),
        (
            &icmp,
            ("port on icmp", |v| v["destination"]["port"] = json!(0)),
        ),
        (
            &external,
            ("external without scope", |v| {
                drop(v["destination"].as_object_mut().unwrap().remove("scope"));
            }),
        ),
        (
            &external,
            ("external with a pod name", |v| {
                v["destination"]["pod"] = json!("x")
            }),
        ),
        (
            &external,
            ("scope internal", |v| {
                v["destination"]["scope"] = json!("internal")
            }),
        ),
        (
            &gap,
            ("gap without lost.deny", |v| {
                drop(v["lost"].as_object_mut().unwrap().remove("deny"));
            }),
        ),
        (&gap, ("gap stage disk", |v| v["stage"] = json!("disk"))),
        (
            &gap,
            ("gap with a verdict", |v| v["verdict"] = json!("deny")),
        ),
        (
            &gap,
            ("gap lost_seq extra field", |v| {
                v["lost_seq"]["count"] = json!(3)
            }),
        ),
        (
            &gap,
            ("gap record_type heartbeet", |v| {
                v["record_type"] = json!("heartbeet")
            }),
        ),
        (
            &gap,
            ("heartbeat without seq", |v| {
                v["record_type"] = json!("heartbeat");
                drop(v.as_object_mut().unwrap().remove("seq"));
            }),
        ),
    ];
    for (valid, (what, breaks)) in breakages {
        assert!(
            validator.is_valid(valid),
            "the record broken by '{what}' is valid before: {valid}"
        );
        let mut broken = valid.clone();
        breaks(&mut broken);
        assert!(
            !validator.is_valid(&broken),
            "'{what}' must fail validation: {broken}"
        );
    }
    // Heartbeats are closed records now: an unknown key, or a missing `flows`, fails.
    let heartbeat = json!({
        "schema": "flowgate.flow/v1", "record_type": "heartbeat",
        "time": "2026-11-28T18:00:00.000000000Z", "seq": 5, "node": "node-a",
        "generation": 2, "mode": "enforce", "flows": 4
    });
    assert!(
        validator.is_valid(&heartbeat),
        "{:?}",
        errors(&validator, &heartbeat)
    );
    let mut extra = heartbeat.clone();
    extra["last_seq"] = json!(4);
    assert!(!validator.is_valid(&extra), "an unknown key fails");
    let mut missing = heartbeat.clone();
    missing.as_object_mut().unwrap().remove("flows");
    assert!(
        !validator.is_valid(&missing),
        "a heartbeat without flows fails"
    );
    let mut snapshot_with_flows = heartbeat;
    snapshot_with_flows["record_type"] = json!("policy_snapshot");
    assert!(
        !validator.is_valid(&snapshot_with_flows),
        "a policy snapshot needs policies and endpoints"
    );
}

/// The JSON blocks of a Markdown document.
fn json_blocks(doc: &str) -> Vec<&str> {
    doc.split("```json\n")
        .skip(1)
        .filter_map(|rest| rest.split_once("\n```").map(|(block, _)| block))
        .collect()
}

#[test]
fn the_examples_in_flow_record_md_validate() {
    let validator = validator();
    let blocks = json_blocks(REFERENCE);
    assert!(blocks.len() >= 4, "flow-record.md has its examples");
    let mut types = Vec::new();
    for block in blocks {
        let value: Value = serde_json::from_str(block)
            .unwrap_or_else(|e| panic!("an example in flow-record.md is JSON: {e}\n{block}"));
        let errs = errors(&validator, &value);
        assert!(
            errs.is_empty(),
            "flow-record.md example:\n{block}\n{errs:#?}"
        );
        types.push((value["record_type"].clone(), value["verdict"].clone()));
    }
    for (record_type, verdict) in [
        ("flow", json!("allow")),
        ("flow", json!("deny")),
        ("gap", Value::Null),
    ] {
        assert!(
            types.contains(&(json!(record_type), verdict.clone())),
            "flow-record.md shows a {record_type} {verdict} example"
        );
    }
}

/// Validates a captured stream (one sink's JSON lines, e.g. the output of `flowgate agent`):
/// every line against the schema, and seq strictly increasing per node.
#[test]
fn a_captured_stream_validates_when_given() {
    let Some(path) = std::env::var_os("FLOWGATE_VALIDATE_JSONL") else {
        eprintln!("skipped: set FLOWGATE_VALIDATE_JSONL=<file of JSON lines> to validate one");
        return;
    };
    let text = std::fs::read_to_string(&path).unwrap();
    let validator = validator();
    let mut last_seq = std::collections::HashMap::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {}: {e}", n + 1));
        let errs = errors(&validator, &value);
        assert!(errs.is_empty(), "line {}: {line}\n{errs:#?}", n + 1);
        let node = value["node"].as_str().unwrap().to_owned();
        let seq = value["seq"].as_u64().unwrap();
        if let Some(prev) = last_seq.insert(node, seq) {
            assert!(seq > prev, "line {}: seq {seq} after {prev}", n + 1);
        }
    }
}
