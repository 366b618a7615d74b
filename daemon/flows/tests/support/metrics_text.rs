// Included by tests/metrics.rs: an OpenMetrics text checker and builders of flow and gap
// records for the metrics tests.

// ---------------------------------------------------------------------------------------------
// OpenMetrics text checks.

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Splits `{a="x",b="y"} 1` into labels and the rest, undoing the text format's escapes.
fn parse_labels(s: &str) -> (Vec<(String, String)>, &str) {
    let Some(body) = s.strip_prefix('{') else {
        return (Vec::new(), s);
    };
    let mut labels = Vec::new();
    let mut chars = body.char_indices().peekable();
    loop {
        let (start, c) = chars.next().expect("label set ends with }");
        if c == '}' {
            return (labels, &body[start + 1..]);
        }
        let name_end = body[start..].find('=').expect("label has =") + start;
        let name = body[start..name_end].to_owned();
        assert!(
            !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit()),
            "label name {name:?} is valid"
        );
        while chars.next_if(|&(i, _)| i <= name_end).is_some() {}
        assert_eq!(
            chars.next().map(|(_, c)| c),
            Some('"'),
            "label value is quoted"
        );
        let mut value = String::new();
        loop {
            match chars.next().expect("label value ends with \"") {
                (_, '"') => break,
                (_, '\\') => match chars.next().expect("escape has a character") {
                    (_, 'n') => value.push('\n'),
                    (_, c @ ('\\' | '"')) => value.push(c),
                    (_, c) => panic!("invalid escape \\{c}"),
                },
                (_, c) => value.push(c),
            }
        }
        assert!(
            labels.iter().all(|(n, _)| *n != name),
            "label {name} appears once"
        );
        labels.push((name, value));
        if chars.next_if(|&(_, c)| c == ',').is_none() {
            assert_eq!(
                chars.peek().map(|&(_, c)| c),
                Some('}'),
                "labels are separated by commas"
            );
        }
    }
}

/// Checks the text is a well-formed OpenMetrics exposition (families declared once, with HELP
/// then TYPE (then UNIT); every sample belongs to the family declared last, with a suffix its
/// type allows; histograms have `le` on buckets; it ends with `# EOF`) and returns the samples.
fn check_openmetrics(text: &str) -> Vec<Sample> {
    assert!(
        text.ends_with("# EOF\n"),
        "the exposition ends with # EOF: {text}"
    );
    let body = &text[..text.len() - "# EOF\n".len()];
    assert!(!body.contains("# EOF"), "# EOF appears only at the end");
    let mut declared: HashMap<String, String> = HashMap::new();
    let mut current: Option<(String, String)> = None;
    let mut help_for: Option<String> = None;
    let mut samples = Vec::new();
    for line in body.lines() {
        assert!(!line.is_empty(), "no empty lines in OpenMetrics text");
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("HELP has a text");
            assert!(!declared.contains_key(name), "family {name} declared once");
            help_for = Some(name.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE has a type");
            assert_eq!(
                help_for.as_deref(),
                Some(name),
                "TYPE follows HELP of {name}"
            );
            assert!(
                ["counter", "gauge", "histogram"].contains(&kind),
                "type of {name}: {kind}"
            );
            assert!(
                name.starts_with("flowgate_")
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "family name {name} is valid and flowgate_-prefixed"
            );
            declared.insert(name.to_owned(), kind.to_owned());
            current = Some((name.to_owned(), kind.to_owned()));
        } else if let Some(rest) = line.strip_prefix("# UNIT ") {
            let (name, unit) = rest.split_once(' ').expect("UNIT has a unit");
            assert_eq!(current.as_ref().map(|c| c.0.as_str()), Some(name));
            assert!(
                name.ends_with(&format!("_{unit}")),
                "{name} ends with its unit"
            );
        } else {
            assert!(!line.starts_with('#'), "unknown comment line {line:?}");
            let name_end = line.find(['{', ' ']).expect("a sample has a value");
            let name = &line[..name_end];
            let (labels, rest) = parse_labels(&line[name_end..]);
            let value: f64 = rest
                .trim_start_matches(' ')
                .parse()
                .unwrap_or_else(|_| panic!("sample value of {line:?} is a number"));
            let (family, kind) = current
                .as_ref()
                .unwrap_or_else(|| panic!("sample {line:?} comes after its family's TYPE"));
            let suffix = name.strip_prefix(family.as_str()).unwrap_or_else(|| {
                panic!("sample {name} belongs to the family declared before it, {family}")
            });
            let allowed: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "gauge" => &[""],
                _ => &["_bucket", "_count", "_sum", "_created"],
            };
            assert!(
                allowed.contains(&suffix),
                "{name}: suffix {suffix:?} of a {kind}"
            );
            assert_eq!(
                suffix == "_bucket",
                labels.iter().any(|(n, _)| n == "le"),
                "only histogram buckets carry le: {line}"
            );
            if kind == "counter" {
                assert!(value >= 0.0, "counter {line} is not negative");
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
    }
    let mut seen = HashSet::new();
    for s in &samples {
        assert!(
            seen.insert((s.name.clone(), s.labels.clone())),
            "series {} {:?} appears once",
            s.name,
            s.labels
        );
    }
    samples
}

/// Encodes, checks the structure, and returns the text.
fn encode(metrics: &Metrics) -> String {
    let text = metrics.encode();
    check_openmetrics(&text);
    text
}

#[track_caller]
fn assert_line(text: &str, line: &str) {
    assert!(
        text.lines().any(|l| l == line),
        "expected the line\n  {line}\nin\n{text}"
    );
}

#[track_caller]
fn assert_no_series(text: &str, prefix: &str) {
    assert!(
        !text.lines().any(|l| l.starts_with(prefix)),
        "expected no line starting with\n  {prefix}\nin\n{text}"
    );
}

fn series_of<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Records.

fn pod(namespace: &str, name: &str, ip: [u8; 4], port: u16) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        port: Some(port),
        kind: EndpointKind::Pod,
        namespace: Some(namespace.into()),
        pod: Some(name.into()),
        labels: Arc::new(BTreeMap::from([("app".to_owned(), name.to_owned())])),
        scope: None,
        node: Some("node-7".into()),
        workload: None,
    }
}

fn external(ip: [u8; 4], port: u16, scope: Scope) -> Endpoint {
    Endpoint {
        ip: IpAddr::V4(Ipv4Addr::from(ip)),
        port: Some(port),
        kind: EndpointKind::External,
        namespace: None,
        pod: None,
        labels: Arc::default(),
        scope: Some(scope),
        node: None,
        workload: None,
    }
}

fn flow(
    direction: Direction,
    verdict: Verdict,
    reason: Reason,
    source: Endpoint,
    destination: Endpoint,
) -> FlowRecord {
    FlowRecord {
        schema: SCHEMA,
        record_type: RecordType::Flow,
        time: "2026-11-28T18:00:00.000000000Z".into(),
        seq: 1,
        node: "node-a".into(),
        verdict,
        mode: if verdict == Verdict::AuditDeny {
            Mode::Audit
        } else {
            Mode::Enforce
        },
        reason,
        direction,
        reporter: match direction {
            Direction::Egress => Reporter::Src,
            Direction::Ingress => Reporter::Dst,
        },
        source,
        destination,
        network: Network {
            transport: "tcp".into(),
            ip_version: 4,
            tcp_flags: Some("SYN".into()),
        },
        policy: PolicyInfo {
            generation: 1,
            allowed_by: Arc::default(),
            isolated_by: Arc::default(),
            unresolved: false,
        },
        counters: Counters {
            packets: 1,
            bytes: 60,
            dedup_count: 0,
            first_seen: "2026-11-28T18:00:00.000000000Z".into(),
            last_seen: "2026-11-28T18:00:00.000000000Z".into(),
        },
        tags: Vec::new(),
    }
}

fn rule(namespace: &str, name: &str, rule: usize) -> RuleRef {
    RuleRef {
        namespace: namespace.into(),
        name: name.into(),
        rule,
        peer: Some(0),
        port: Some(0),
    }
}

fn policy(namespace: &str, name: &str) -> PolicyRef {
    PolicyRef {
        namespace: namespace.into(),
        name: name.into(),
    }
}

/// An ingress allow into shop/web from shop/frontend, allowed by `rules`.
fn allow_into_web(rules: Vec<RuleRef>) -> FlowRecord {
    let mut f = flow(
        Direction::Ingress,
        Verdict::Allow,
        Reason::RuleAllow,
        pod("shop", "frontend-5c6b-k8s2p", [10, 244, 1, 17], 40112),
        pod("shop", "web-7d9f8-x2x9q", [10, 244, 2, 9], 8443),
    );
    f.policy.allowed_by = rules.into();
    f
}

/// A (deduplicated) ingress deny into `namespace`/db, isolated by `policies`.
fn deny_into_db(namespace: &str, policies: Vec<PolicyRef>, packets: u64) -> FlowRecord {
    let mut f = flow(
        Direction::Ingress,
        Verdict::Deny,
        Reason::DefaultDeny,
        pod("shop", "web-7d9f8-x2x9q", [10, 244, 2, 9], 51000),
        pod(namespace, "db-0", [10, 244, 3, 4], 5432),
    );
    f.policy.isolated_by = policies.into();
    f.counters.packets = packets;
    f.counters.dedup_count = packets - 1;
    f
}

/// `[allow, deny, audit]` lost records.
fn lost([allow, deny, audit]: [u64; 3]) -> LostCounts {
    LostCounts { allow, deny, audit }
}

/// A gap record of `stage` that lost `[allow, deny, audit]` records.
fn gap(stage: &Stage, counts: [u64; 3]) -> GapRecord {
    GapRecord::new(
        "2026-11-28T18:00:01.000000000Z".into(),
        9,
        "node-a",
        stage,
        lost(counts),
        Some(SeqRange { first: 1, last: 9 }),
    )
}

