// Part of `schema.rs` (brought in with `include!`): The OCSF mapping against docs/siem-mappings.md.

// ---------------------------------------------------------------------------------------------
// The OCSF mapping against docs/siem-mappings.md

/// The rows of the table between `<!-- {name}:begin -->` and `<!-- {name}:end -->`, cells
/// trimmed and without backticks, header and separator left out.
fn table(name: &str) -> Vec<Vec<String>> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let start = MAPPINGS
        .find(&begin)
        .unwrap_or_else(|| panic!("siem-mappings.md has {begin}"));
    let stop = MAPPINGS[start..]
        .find(&end)
        .unwrap_or_else(|| panic!("siem-mappings.md has {end}"));
    let rows: Vec<Vec<String>> = MAPPINGS[start + begin.len()..start + stop]
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().replace('`', ""))
                .collect()
        })
        .filter(|cells: &Vec<String>| !cells.iter().all(|c| c.starts_with("---")))
        .skip(1)
        .collect();
    assert!(rows.len() > 3, "the {name} table has rows");
    rows
}

fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// Dotted paths of a record's fields (label maps and lists count as one field).
fn leaves(value: &Value, prefix: &str, out: &mut Vec<String>) {
    if let Value::Object(map) = value {
        for (key, child) in map {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            if child.is_object() && key != "labels" {
                leaves(child, &path, out);
            } else {
                out.push(path);
            }
        }
    }
}

/// Checks the `copy`, `epoch_ms` and `const` rows of a field table, and that the table's first
/// column names every field of the record.
fn check_field_table(name: &str, case: &str, record: &Value, event: &Value) {
    let rows = table(name);
    for row in &rows {
        let (field, attr, rule) = (&row[0], &row[1], &row[2]);
        let at = get(event, attr);
        if rule == "copy" {
            assert_eq!(
                at,
                get(record, field),
                "{case}: {attr} is a copy of {field} ({name})"
            );
        } else if rule == "epoch_ms" {
            let time = get(record, field).and_then(Value::as_str).unwrap();
            assert_eq!(
                at.and_then(Value::as_i64),
                epoch_ms(time),
                "{case}: {attr} is {field} in epoch ms ({name})"
            );
        } else if let Some(constant) = rule.strip_prefix("const ") {
            let constant: Value = serde_json::from_str(constant)
                .unwrap_or_else(|e| panic!("{name}: const {constant} is JSON: {e}"));
            assert_eq!(at, Some(&constant), "{case}: {attr} ({name})");
        }
    }
    let named: Vec<&str> = rows
        .iter()
        .flat_map(|row| row[0].split(',').map(str::trim))
        .collect();
    let mut fields = Vec::new();
    leaves(record, "", &mut fields);
    for field in fields {
        assert!(
            named.contains(&field.as_str()),
            "{case}: the field {field} is missing from the {name} table of siem-mappings.md"
        );
    }
}

/// `"15 Detected"` -> (15, "Detected").
fn id_cell(cell: &str) -> (u64, &str) {
    let (id, caption) = cell.split_once(' ').unwrap();
    (id.parse().unwrap(), caption)
}

fn check_verdict_table(case: &str, record: &Value, event: &Value) {
    let rows = table("ocsf-verdicts");
    let tags: Vec<&str> = record["tags"]
        .as_array()
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let row = rows
        .iter()
        .find(|row| {
            row[0] == record["verdict"]
                && (row[1] == "*" || row[1] == record["reason"])
                && match row[2].as_str() {
                    "*" => true,
                    "-" => !tags.contains(&"egress_to_world"),
                    tag => tags.contains(&tag),
                }
        })
        .unwrap_or_else(|| panic!("{case}: a row of the verdict table matches"));
    for (col, (id, caption)) in [
        (3, ("activity_id", "activity_name")),
        (4, ("action_id", "action")),
        (5, ("disposition_id", "disposition")),
        (6, ("status_id", "status")),
        (7, ("severity_id", "severity")),
    ] {
        let (want_id, want_caption) = id_cell(&row[col]);
        assert_eq!(
            (event[id].as_u64(), event[caption].as_str()),
            (Some(want_id), Some(want_caption)),
            "{case}: {id} per the verdict table row {row:?}"
        );
    }
}

#[test]
fn ocsf_events_follow_the_mapping_tables() {
    for (case, record) in all_cases() {
        let native = serde_json::to_value(&record).unwrap();
        let event = to_ocsf(&record);
        match &record {
            Record::Flow(f) => {
                check_field_table("ocsf-flow", case, &native, &event);
                check_verdict_table(case, &native, &event);
                check_flow_rules(case, f, &event);
            }
            Record::Node(n) => {
                assert_eq!(event["class_uid"], 0, "{case}: a Base Event");
                assert_eq!(event["activity_name"], native["record_type"], "{case}");
                assert_eq!(
                    event["unmapped"]["generation"], n.generation,
                    "{case}: the record is kept in unmapped"
                );
            }
            Record::Gap(g) => {
                check_field_table("ocsf-gap", case, &native, &event);
                let lost = g.lost.total();
                assert_eq!(event["count"], lost, "{case}: count is the lost total");
                let high = g.lost.deny + g.lost.audit > 0;
                assert_eq!(
                    (event["severity_id"].clone(), event["severity"].clone()),
                    if high {
                        (json!(4), json!("High"))
                    } else {
                        (json!(2), json!("Low"))
                    },
                    "{case}: severity"
                );
                assert_eq!(
                    event["status_detail"],
                    format!("records lost at stage {}", g.stage)
                );
                let message = event["message"].as_str().unwrap();
                assert!(
                    message.starts_with(&format!("{lost} records lost at {}", g.stage)),
                    "{case}: {message}"
                );
            }
        }
    }
}

/// The rows of the flow table whose rule is described in words.
fn check_flow_rules(case: &str, f: &flowgate_flows::FlowRecord, event: &Value) {
    let activity = event["activity_id"].as_u64().unwrap();
    assert_eq!(event["type_uid"], 4001 * 100 + activity, "{case}: type_uid");
    assert_eq!(
        event["type_name"],
        format!(
            "Network Activity: {}",
            event["activity_name"].as_str().unwrap()
        ),
        "{case}: type_name"
    );
    for (end, key) in [
        (&f.source, "src_endpoint"),
        (&f.destination, "dst_endpoint"),
    ] {
        let want = match (&end.namespace, &end.pod) {
            (Some(ns), Some(pod)) => Some(json!(format!("{ns}/{pod}"))),
            _ => None,
        };
        assert_eq!(event[key].get("name").cloned(), want, "{case}: {key}.name");
    }
    let conn = &event["connection_info"];
    let (dir_id, dir) = match f.direction {
        flowgate_flows::record::Direction::Ingress => (1, "Inbound"),
        flowgate_flows::record::Direction::Egress => (2, "Outbound"),
    };
    assert_eq!(
        (conn["direction_id"].clone(), conn["direction"].clone()),
        (json!(dir_id), json!(dir)),
        "{case}: direction"
    );
    let public = [&f.source, &f.destination]
        .iter()
        .any(|e| e.kind == EndpointKind::External && e.scope == Some(Scope::Public));
    assert_eq!(
        (conn["boundary_id"].clone(), conn["boundary"].clone()),
        if public {
            (json!(3), json!("External"))
        } else {
            (json!(2), json!("Internal"))
        },
        "{case}: boundary"
    );
    let (num, name) = match &*f.network.transport {
        "tcp" => (json!(6), json!("tcp")),
        "udp" => (json!(17), json!("udp")),
        "sctp" => (json!(132), json!("sctp")),
        "icmp" => (json!(1), json!("icmp")),
        "icmpv6" => (json!(58), json!("ipv6-icmp")),
        n => (json!(n.parse::<u8>().unwrap()), Value::Null),
    };
    assert_eq!(conn["protocol_num"], num, "{case}: protocol_num");
    assert_eq!(
        conn.get("protocol_name").cloned().unwrap_or(Value::Null),
        name,
        "{case}: protocol_name"
    );
    let bits = f.network.tcp_flags.as_deref().map(|names| {
        names
            .split('|')
            .filter(|n| !n.is_empty())
            .map(|n| match n {
                "FIN" => 1,
                "SYN" => 2,
                "RST" => 4,
                "PSH" => 8,
                "ACK" => 16,
                "URG" => 32,
                other => panic!("unknown TCP flag {other}"),
            })
            .sum::<u64>()
    });
    assert_eq!(
        conn.get("tcp_flags").and_then(Value::as_u64),
        bits,
        "{case}: tcp_flags"
    );
    let generation = f.policy.generation.to_string();
    let first = f
        .policy
        .allowed_by
        .first()
        .map(|r| (&r.namespace, &r.name))
        .or_else(|| {
            f.policy
                .isolated_by
                .first()
                .map(|p| (&p.namespace, &p.name))
        });
    match first {
        Some((ns, name)) => assert_eq!(
            event["policy"],
            json!({"uid": format!("{ns}/{name}"), "name": name, "version": generation}),
            "{case}: policy"
        ),
        None => assert!(event.get("policy").is_none(), "{case}: no policy"),
    }
    let dir = match f.direction {
        flowgate_flows::record::Direction::Ingress => "ingress",
        flowgate_flows::record::Direction::Egress => "egress",
    };
    match f.policy.allowed_by.first() {
        Some(r) => assert_eq!(
            event["firewall_rule"],
            json!({
                "uid": format!("{}/{}/{dir}/{}", r.namespace, r.name, r.rule),
                "name": format!("{}/{} {dir}[{}]", r.namespace, r.name, r.rule),
                "type": "NetworkPolicy",
                "category": dir,
                "version": generation,
            }),
            "{case}: firewall_rule"
        ),
        None => assert!(
            event.get("firewall_rule").is_none(),
            "{case}: no firewall_rule without a rule"
        ),
    }
    assert_eq!(
        event["metadata"]["product"]["version"],
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(event["metadata"]["version"], ocsf::OCSF_VERSION);
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("({})", event["status_detail"].as_str().unwrap())),
        "{case}: {message}"
    );
}
