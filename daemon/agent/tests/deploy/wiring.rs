// Part of `deploy.rs` (brought in with `include!`): the monitoring wiring (Service,
// ServiceMonitor, PrometheusRule), the agent's variables, the documented defaults and the
// non-default values, with the broken variants the checks must reject.

fn alert_rules() -> Value {
    let path = root().join("deploy/prometheus/flowgate-alerts.rules.yaml");
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The Service selects the agent's pods and names its API port `http`; the ServiceMonitor
/// scrapes that port's /metrics; the PrometheusRule holds exactly the alert rules file's groups.
fn monitoring_problems(objects: &[Value], rules: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let (Some(ds), Some(svc)) = (
        single(objects, "DaemonSet", &mut problems),
        single(objects, "Service", &mut problems),
    ) else {
        return problems;
    };
    let pod_labels = &ds["spec"]["template"]["metadata"]["labels"];
    if !selects(&ds["spec"]["selector"]["matchLabels"], pod_labels) {
        problems.push("the DaemonSet's selector does not select its pods".to_owned());
    }
    if !selects(&svc["spec"]["selector"], pod_labels) {
        problems.push(format!(
            "the Service's selector {} does not select the agent's pods",
            svc["spec"]["selector"]
        ));
    }
    let name = svc["metadata"]["name"].as_str().unwrap_or_default();
    if !name.contains("flowgate") {
        problems.push(format!(
            "Service {name}: the scrape job is named after it, and FlowgateAgentDown matches job=~\".*flowgate.*\""
        ));
    }
    if svc["spec"]["publishNotReadyAddresses"] != true {
        problems.push(
            "the Service leaves unready agents out: FlowgateAgentNotReady reads their metrics"
                .to_owned(),
        );
    }
    let container_port = containers(ds)
        .first()
        .and_then(|c| c["ports"].as_array().cloned())
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "http");
    let port = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "http");
    match (port, container_port) {
        (Some(p), Some(cp))
            if p["targetPort"] == "http" || p["targetPort"] == cp["containerPort"] => {}
        _ => problems
            .push("the Service has no port `http` to the container's port `http`".to_owned()),
    }
    for sm in kind(objects, "ServiceMonitor") {
        if !selects(
            &sm["spec"]["selector"]["matchLabels"],
            &svc["metadata"]["labels"],
        ) {
            problems.push("the ServiceMonitor does not select the Service".to_owned());
        }
        let namespaces = strings(&sm["spec"]["namespaceSelector"]["matchNames"]);
        let ns = svc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !(namespaces.contains(&ns)
            || (namespaces.is_empty() && sm["metadata"]["namespace"] == ns.as_str()))
        {
            problems.push(format!(
                "the ServiceMonitor does not look in namespace {ns}"
            ));
        }
        if !sm["spec"]["jobLabel"].is_null() {
            problems.push(
                "the ServiceMonitor renames the job (FlowgateAgentDown matches the Service name)"
                    .to_owned(),
            );
        }
        let endpoints = sm["spec"]["endpoints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if endpoints.is_empty()
            || endpoints
                .iter()
                .any(|e| e["port"] != "http" || !(e["path"] == "/metrics" || e["path"].is_null()))
        {
            problems.push(format!(
                "ServiceMonitor endpoints {endpoints:?} are not /metrics on port http"
            ));
        }
    }
    for pr in kind(objects, "PrometheusRule") {
        if pr["spec"] != json!({"groups": rules["groups"]}) {
            problems.push(
                "the PrometheusRule's spec is not the groups of flowgate-alerts.rules.yaml"
                    .to_owned(),
            );
        }
    }
    problems
}

#[test]
fn monitoring_objects_fit_the_service_and_the_alert_rules() {
    let rules = alert_rules();
    assert!(
        rules["groups"].as_array().is_some_and(|g| !g.is_empty()),
        "no alert groups read"
    );
    for r in renderings() {
        let problems = monitoring_problems(&r.objects, &rules);
        assert!(problems.is_empty(), "{}: {problems:#?}", r.name);
        assert_eq!(
            kind(&r.objects, "PrometheusRule").len(),
            1,
            "{}: PrometheusRule",
            r.name
        );
    }
    // The annotations' Prometheus templates came through helm verbatim.
    let text = std::fs::read_to_string(root().join(PLAIN)).unwrap();
    assert!(
        text.contains("{{ $labels.src_namespace }}"),
        "{PLAIN} lost the alert templates"
    );
}

#[test]
fn the_monitoring_check_rejects_broken_variants() {
    let plain = plain_objects();
    let rules = alert_rules();
    assert!(monitoring_problems(&plain, &rules).is_empty());
    let broken: Vec<(&str, Vec<Value>)> = vec![
        (
            "service selector",
            mutated(&plain, "Service", |s| {
                s["spec"]["selector"]["app.kubernetes.io/name"] = json!("other")
            }),
        ),
        (
            "monitor port",
            mutated(&plain, "ServiceMonitor", |m| {
                m["spec"]["endpoints"][0]["port"] = json!("metrics")
            }),
        ),
        (
            "monitor selector",
            mutated(&plain, "ServiceMonitor", |m| {
                m["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] = json!("other");
            }),
        ),
        (
            "service port",
            mutated(&plain, "Service", |s| {
                s["spec"]["ports"][0]["name"] = json!("web")
            }),
        ),
        (
            "job label",
            mutated(&plain, "ServiceMonitor", |m| {
                m["spec"]["jobLabel"] = json!("app.kubernetes.io/component")
            }),
        ),
        (
            "rule dropped",
            mutated(&plain, "PrometheusRule", |p| {
                p["spec"]["groups"][0]["rules"]
                    .as_array_mut()
                    .unwrap()
                    .pop();
            }),
        ),
        (
            "rule edited",
            mutated(&plain, "PrometheusRule", |p| {
                p["spec"]["groups"][0]["rules"][0]["for"] = json!("10m")
            }),
        ),
        (
            "not ready hidden",
            mutated(&plain, "Service", |s| {
                s["spec"]["publishNotReadyAddresses"] = json!(false)
            }),
        ),
    ];
    for (name, objects) in broken {
        assert!(
            !monitoring_problems(&objects, &rules).is_empty(),
            "{name}: the monitoring check accepted it"
        );
    }
}

/// The environment variables of `flowgate agent`, each with its possible values (empty when
/// any value goes), read from `flowgate agent --help` (clap's `[env: NAME=]`).
fn agent_variables() -> BTreeMap<String, Vec<String>> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowgate"));
    command.args(["agent", "--help"]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FLOWGATE_") {
            command.env_remove(name);
        }
    }
    let help = run(command).unwrap_or_else(|e| panic!("{e}"));
    parse_help(&help)
}

fn parse_help(help: &str) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    // One block per option: it starts at a line like `  -m, --manifests` or `      --lab`.
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        if indent <= 6 && line.trim_start().starts_with('-') {
            blocks.push(Vec::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(line);
        }
    }
    for block in blocks {
        let text = block.join("\n");
        let Some(start) = text.find("[env: ") else {
            continue;
        };
        let name = text[start + 6..].split('=').next().unwrap().to_owned();
        let mut values = Vec::new();
        if let Some(list) = text.split("[possible values: ").nth(1) {
            values.extend(
                list.split(']')
                    .next()
                    .unwrap()
                    .split(", ")
                    .map(str::to_owned),
            );
        } else if let Some(list) = text.split("Possible values:").nth(1) {
            for line in list.lines() {
                if let Some(item) = line.trim_start().strip_prefix("- ") {
                    values.push(item.split(':').next().unwrap().trim().to_owned());
                }
            }
        }
        out.insert(name, values);
    }
    out
}

/// Every FLOWGATE_* variable the agent container sets is one of `flowgate agent`, with a
/// literal value among its possible values.
fn variable_problems(objects: &[Value], variables: &BTreeMap<String, Vec<String>>) -> Vec<String> {
    let mut problems = Vec::new();
    for ds in kind(objects, "DaemonSet") {
        for c in containers(ds) {
            for (name, var) in env(c) {
                if !name.starts_with("FLOWGATE_") {
                    continue;
                }
                match variables.get(&name) {
                    None => problems.push(format!("{name} is not a variable of `flowgate agent`")),
                    Some(values) => {
                        if let Some(value) = var["value"].as_str()
                            && !values.is_empty()
                            && !values.iter().any(|v| v == value)
                        {
                            problems
                                .push(format!("{name}={value}: `flowgate agent` takes {values:?}"));
                        }
                    }
                }
            }
        }
    }
    problems
}

#[test]
fn every_flowgate_variable_is_one_of_flowgate_agent() {
    let variables = agent_variables();
    for known in ["FLOWGATE_MODE", "FLOWGATE_HTTP_ADDR", "FLOWGATE_LOG_FORMAT"] {
        assert!(
            variables.contains_key(known),
            "{known} not read from --help: {variables:?}"
        );
    }
    assert_eq!(variables["FLOWGATE_MODE"], ["enforce", "audit"]);
    assert!(
        variables["FLOWGATE_LOG_FORMAT"].contains(&"ocsf".to_owned()),
        "{variables:?}"
    );
    let mut problems = Vec::new();
    for r in renderings() {
        problems.extend(
            variable_problems(&r.objects, &variables)
                .into_iter()
                .map(|p| format!("{}: {p}", r.name)),
        );
    }
    assert!(
        problems.is_empty(),
        "variables `flowgate agent --help` does not list or accept:\n{problems:#?}"
    );
}

#[test]
fn the_variable_check_rejects_unknown_names_and_values() {
    let mut variables = BTreeMap::new();
    variables.insert(
        "FLOWGATE_MODE".to_owned(),
        vec!["enforce".to_owned(), "audit".to_owned()],
    );
    variables.insert("FLOWGATE_HTTP_ADDR".to_owned(), vec![]);
    let ds = |env: Value| {
        vec![
            json!({"kind": "DaemonSet", "spec": {"template": {"spec": {"containers": [{"env": env}]}}}}),
        ]
    };
    let fine = ds(
        json!([{"name": "FLOWGATE_MODE", "value": "audit"}, {"name": "FLOWGATE_HTTP_ADDR", "value": "x"}, {"name": "OTHER", "value": "y"}]),
    );
    assert!(variable_problems(&fine, &variables).is_empty());
    let unknown = ds(json!([{"name": "FLOWGATE_MOED", "value": "audit"}]));
    assert_eq!(variable_problems(&unknown, &variables).len(), 1);
    let bad_value = ds(json!([{"name": "FLOWGATE_MODE", "value": "block"}]));
    assert_eq!(variable_problems(&bad_value, &variables).len(), 1);
    // Both forms clap prints possible values in.
    let help = "Options:\n      --mode <MODE>\n          Mode\n\n          [env: FLOWGATE_MODE=]\n          [possible values: enforce, audit]\n\n      --log-format <F>\n          Format\n\n          Possible values:\n          - json:    One\n          - compact: Two\n\n          [env: FLOWGATE_LOG_FORMAT=]\n  -q, --quiet\n          [env: FLOWGATE_QUIET=]\n";
    let parsed = parse_help(help);
    assert_eq!(parsed["FLOWGATE_MODE"], ["enforce", "audit"]);
    assert_eq!(parsed["FLOWGATE_LOG_FORMAT"], ["json", "compact"]);
    assert!(parsed["FLOWGATE_QUIET"].is_empty());
}

/// What a default install runs, as documented (deploy/README.md and the chart's values.yaml).
fn default_problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    let expected: BTreeSet<&str> = [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "DaemonSet",
        "ServiceMonitor",
        "PrometheusRule",
    ]
    .into_iter()
    .collect();
    if kinds
        .iter()
        .filter(|k| **k != "Namespace")
        .copied()
        .collect::<BTreeSet<_>>()
        != expected
    {
        problems.push(format!(
            "kinds {kinds:?}, expected {expected:?} (no Secret with a token, no unused ConfigMap)"
        ));
    }
    for o in objects {
        if o["kind"] != "Namespace"
            && o["kind"] != "ClusterRole"
            && o["kind"] != "ClusterRoleBinding"
            && o["metadata"]["namespace"] != NAMESPACE
        {
            problems.push(format!(
                "{}/{} is not in {NAMESPACE}",
                o["kind"], o["metadata"]["name"]
            ));
        }
    }
    let Some(ds) = single(objects, "DaemonSet", &mut problems) else {
        return problems;
    };
    let spec = pod_spec(ds);
    let tolerations = spec["tolerations"].as_array().cloned().unwrap_or_default();
    for effect in ["NoSchedule", "NoExecute"] {
        if !tolerations.contains(&json!({"operator": "Exists", "effect": effect})) {
            problems.push(format!("no toleration of every {effect} taint"));
        }
    }
    let expectations = [
        (
            "/spec/updateStrategy",
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}),
        ),
        (
            "/spec/template/spec/dnsPolicy",
            json!("ClusterFirstWithHostNet"),
        ),
        (
            "/spec/template/spec/priorityClassName",
            json!("system-node-critical"),
        ),
        (
            "/spec/template/spec/terminationGracePeriodSeconds",
            json!(30),
        ),
        (
            "/spec/template/spec/containers/0/image",
            json!("ghcr.io/flowgate/flowgate:0.1.0"),
        ),
        ("/spec/template/spec/containers/0/args", json!(["agent"])),
        (
            "/spec/template/spec/containers/0/securityContext/runAsUser",
            json!(0),
        ),
        (
            "/spec/template/spec/containers/0/resources/requests",
            json!({"cpu": "100m", "memory": "128Mi"}),
        ),
        (
            "/spec/template/spec/containers/0/resources/limits",
            json!({"memory": "512Mi"}),
        ),
    ];
    for (pointer, expected) in expectations {
        if ds.pointer(pointer) != Some(&expected) {
            problems.push(format!(
                "{pointer} is {:?}, expected {expected}",
                ds.pointer(pointer)
            ));
        }
    }
    let c = containers(ds)[0];
    for (name, expected) in [
        ("FLOWGATE_MODE", "audit"),
        ("FLOWGATE_HTTP_ADDR", "0.0.0.0:9090"),
        ("FLOWGATE_BPFFS_DIR", "/sys/fs/bpf/flowgate"),
        ("FLOWGATE_LOG_FORMAT", "json"),
    ] {
        if env_value(c, name) != Some(expected) {
            problems.push(format!(
                "{name} is {:?}, expected {expected}",
                env_value(c, name)
            ));
        }
    }
    if env(c)
        .get("FLOWGATE_NODE_NAME")
        .map(|e| &e["valueFrom"]["fieldRef"]["fieldPath"])
        != Some(&json!("spec.nodeName"))
    {
        problems.push("FLOWGATE_NODE_NAME is not the pod's spec.nodeName".to_owned());
    }
    let bpffs = volume(ds, "bpffs").unwrap_or_default();
    if bpffs["hostPath"] != json!({"path": BPFFS, "type": "DirectoryOrCreate"}) {
        problems.push(format!("bpffs volume {bpffs}"));
    }
    let mounts = c["volumeMounts"].as_array().cloned().unwrap_or_default();
    let tmp = mounts
        .iter()
        .find(|m| m["mountPath"] == "/tmp")
        .and_then(|m| volume(ds, m["name"].as_str()?));
    if tmp.is_none_or(|v| v["emptyDir"].is_null()) {
        problems.push("no emptyDir at /tmp (the root filesystem is read-only)".to_owned());
    }
    problems
}

#[test]
fn default_renderings_run_the_agent_as_documented() {
    for r in renderings().into_iter().take(2) {
        let problems = default_problems(&r.objects);
        assert!(problems.is_empty(), "{}: {problems:#?}", r.name);
    }
    let broken = mutated(&plain_objects(), "DaemonSet", |d| {
        d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] = json!("1");
    });
    assert!(
        !default_problems(&broken).is_empty(),
        "a CPU limit was accepted"
    );
}

#[test]
fn custom_values_reach_the_manifests() {
    let file = format!("{CHART}/ci/custom-values.yaml");
    let values: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(root().join(&file)).unwrap()).unwrap();
    let rendered = objects(&helm_template(&["-f", &file]).unwrap_or_else(|e| panic!("{e}")));
    assert!(
        kind(&rendered, "ServiceMonitor").is_empty(),
        "serviceMonitor.enabled: false"
    );
    assert!(
        kind(&rendered, "Secret").is_empty(),
        "an existing Secret: the chart creates none"
    );
    let ds = kind(&rendered, "DaemonSet")[0];
    let c = containers(ds)[0];
    let token = volume(ds, "api-token").unwrap();
    assert_eq!(
        token["secret"]["secretName"],
        values["apiToken"]["existingSecret"]
    );
    let key = values["apiToken"]["key"].as_str().unwrap();
    assert_eq!(
        env_value(c, "FLOWGATE_API_TOKEN_FILE"),
        Some(format!("/etc/flowgate/api-token/{key}").as_str())
    );
    assert_eq!(
        env_value(c, "FLOWGATE_HTTP_ADDR"),
        Some(format!("[::]:{}", values["http"]["port"]).as_str())
    );
    for (name, value) in [
        ("FLOWGATE_MODE", &values["mode"]),
        ("FLOWGATE_LOG_FORMAT", &values["logFormat"]),
        ("FLOWGATE_LOG_FILTER", &values["logFilter"]),
        ("FLOWGATE_OTLP_ENDPOINT", &values["otlp"]["endpoint"]),
        ("FLOWGATE_OTLP_PROTOCOL", &values["otlp"]["protocol"]),
        ("FLOWGATE_BPFFS_DIR", &values["bpffsDir"]),
    ] {
        assert_eq!(env_value(c, name), value.as_str(), "{name}");
    }
    let labels: Vec<String> = strings(&values["recordLabels"]);
    assert_eq!(
        env_value(c, "FLOWGATE_RECORD_LABELS"),
        Some(labels.join(",").as_str())
    );
    assert_eq!(
        env(c)["FLOWGATE_OTLP_HEADERS"]["valueFrom"],
        values["extraEnv"][1]["valueFrom"]
    );
    assert_eq!(pod_spec(ds)["tolerations"], values["tolerations"]);
    let rule = kind(&rendered, "PrometheusRule")[0];
    assert_eq!(
        rule["metadata"]["labels"]["release"],
        values["prometheusRule"]["labels"]["release"]
    );

    let created = objects(
        &helm_template(&["-f", &format!("{CHART}/ci/create-token-values.yaml")])
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let secret = kind(&created, "Secret");
    assert_eq!(secret.len(), 1, "apiToken.create: true renders the Secret");
    let ds = kind(&created, "DaemonSet")[0];
    assert_eq!(
        volume(ds, "api-token").unwrap()["secret"]["secretName"],
        secret[0]["metadata"]["name"]
    );
    let token = secret[0]["data"]["token"].as_str().unwrap_or_default();
    assert!(
        token.len() >= 48,
        "a random token of 48 characters, base64: {token}"
    );
}

/// The value paths `values.schema.json` describes down to its leaves (free-form objects such as
/// `resources` are leaves).
fn schema_leaves(schema: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, property) in schema["properties"].as_object().into_iter().flatten() {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        if property["properties"].is_object() {
            schema_leaves(property, &path, out);
        } else {
            out.insert(path);
        }
    }
}

/// Every value of the schema is in values.yaml with a comment right above it, and in the
/// chart's README.md.
fn values_doc_problems(values_yaml: &str, readme: &str, schema: &Value) -> Vec<String> {
    let mut leaves = BTreeSet::new();
    schema_leaves(schema, "", &mut leaves);
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut previous = "";
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            previous = trimmed;
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        let path = path.join(".");
        stack.push((indent, key.to_owned()));
        if leaves.contains(&path) {
            seen.insert(path.clone());
            if !previous.starts_with('#') {
                problems.push(format!("values.yaml: {path} has no comment right above it"));
            }
        }
        previous = trimmed;
    }
    for leaf in &leaves {
        if !seen.contains(leaf) {
            problems.push(format!("values.yaml does not set {leaf}"));
        }
        if !readme.contains(&format!("| `{leaf}` |")) {
            problems.push(format!("README.md does not list {leaf}"));
        }
    }
    problems
}

#[test]
fn every_value_is_commented_in_values_yaml_and_listed_in_the_readme() {
    let chart = root().join(CHART);
    let read = |name: &str| std::fs::read_to_string(chart.join(name)).unwrap();
    let schema: Value = serde_json::from_str(&read("values.schema.json")).unwrap();
    let (values, readme) = (read("values.yaml"), read("README.md"));
    let problems = values_doc_problems(&values, &readme, &schema);
    assert!(problems.is_empty(), "{problems:#?}");
    let mut leaves = BTreeSet::new();
    schema_leaves(&schema, "", &mut leaves);
    assert!(
        leaves.contains("mode") && leaves.contains("apiToken.existingSecret"),
        "{leaves:?}"
    );

    let uncommented = values.replace("  # Scrape interval.\n  interval: 30s", "  interval: 30s");
    assert_ne!(uncommented, values, "the broken variant changed nothing");
    let problems = values_doc_problems(&uncommented, &readme, &schema);
    assert_eq!(
        problems,
        ["values.yaml: serviceMonitor.interval has no comment right above it"]
    );
    let unlisted = readme.replace("| `otlp.protocol` |", "| otlp protocol |");
    let problems = values_doc_problems(&values, &unlisted, &schema);
    assert_eq!(problems, ["README.md does not list otlp.protocol"]);
}
