// Part of `deploy.rs` (brought in with `include!`): helpers for the rendered objects, and the
// security checks (RBAC, the container's privileges, the API token, the probes), with the broken
// variants they must reject.

/// What the ClusterRole may grant: read access to exactly these (API group, resource).
const RBAC_GRANTS: [(&str, &str); 3] = [
    ("", "namespaces"),
    ("", "pods"),
    ("networking.k8s.io", "networkpolicies"),
];
const READ_VERBS: [&str; 3] = ["get", "list", "watch"];
/// The capabilities the container adds (after dropping ALL); the DaemonSet's comments say why.
const CAPABILITIES: [&str; 4] = ["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"];
/// The only host directory the agent mounts: the node's bpffs.
const BPFFS: &str = "/sys/fs/bpf";

/// The single object of `kind`, or a problem.
fn single<'a>(objects: &'a [Value], k: &str, problems: &mut Vec<String>) -> Option<&'a Value> {
    let found = kind(objects, k);
    if found.len() == 1 {
        Some(found[0])
    } else {
        problems.push(format!("expected one {k}, found {}", found.len()));
        None
    }
}

fn pod_spec(ds: &Value) -> &Value {
    &ds["spec"]["template"]["spec"]
}

fn containers(ds: &Value) -> Vec<&Value> {
    pod_spec(ds)["containers"]
        .as_array()
        .map(|c| c.iter().collect())
        .unwrap_or_default()
}

fn env(container: &Value) -> BTreeMap<String, &Value> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| (e["name"].as_str().unwrap_or_default().to_owned(), e))
        .collect()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    env(container).get(name).and_then(|e| e["value"].as_str())
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap_or("<not a string>").to_owned())
        .collect()
}

/// `labels` includes every key/value of `selector` (and `selector` is not empty).
fn selects(selector: &Value, labels: &Value) -> bool {
    selector
        .as_object()
        .is_some_and(|s| !s.is_empty() && s.iter().all(|(k, v)| labels[k] == *v))
}

fn security_problems(objects: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    rbac_problems(objects, &mut problems);
    if let Some(ds) = single(objects, "DaemonSet", &mut problems) {
        pod_problems(ds, &mut problems);
    }
    problems
}

fn rbac_problems(objects: &[Value], problems: &mut Vec<String>) {
    if !kind(objects, "Role").is_empty() || !kind(objects, "RoleBinding").is_empty() {
        problems.push("namespaced Roles: the agent needs only its ClusterRole".to_owned());
    }
    let Some(role) = single(objects, "ClusterRole", problems) else {
        return;
    };
    let mut granted = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        for field in ["resourceNames", "nonResourceURLs"] {
            if !rule[field].is_null() {
                problems.push(format!("ClusterRole rule with {field}: {rule}"));
            }
        }
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    granted.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    let expected: BTreeSet<(String, String, String)> = RBAC_GRANTS
        .iter()
        .flat_map(|(g, r)| {
            READ_VERBS
                .iter()
                .map(|v| ((*g).to_owned(), (*r).to_owned(), (*v).to_owned()))
        })
        .collect();
    if granted != expected {
        problems.push(format!(
            "ClusterRole grants more than get/list/watch on pods, namespaces and networkpolicies: \
             extra {:?}, missing {:?}",
            granted.difference(&expected).collect::<Vec<_>>(),
            expected.difference(&granted).collect::<Vec<_>>()
        ));
    }
    let Some(binding) = single(objects, "ClusterRoleBinding", problems) else {
        return;
    };
    if binding["roleRef"]["kind"] != "ClusterRole"
        || binding["roleRef"]["name"] != role["metadata"]["name"]
    {
        problems.push(format!(
            "ClusterRoleBinding refers to {}",
            binding["roleRef"]
        ));
    }
    let Some(ds) = single(objects, "DaemonSet", problems) else {
        return;
    };
    let subject = json!([{
        "kind": "ServiceAccount",
        "name": pod_spec(ds)["serviceAccountName"],
        "namespace": ds["metadata"]["namespace"],
    }]);
    if binding["subjects"] != subject {
        problems.push(format!(
            "ClusterRoleBinding subjects {} are not the DaemonSet's ServiceAccount {subject}",
            binding["subjects"]
        ));
    }
}

fn pod_problems(ds: &Value, problems: &mut Vec<String>) {
    let spec = pod_spec(ds);
    if spec["hostNetwork"] != true {
        problems.push("hostNetwork is not true".to_owned());
    }
    for field in ["hostPID", "hostIPC"] {
        if spec[field] == true {
            problems.push(format!("{field} is true"));
        }
    }
    if spec["automountServiceAccountToken"] == false {
        problems.push("no ServiceAccount token: the in-cluster configuration needs it".to_owned());
    }
    if !spec["initContainers"].is_null() || !spec["ephemeralContainers"].is_null() {
        problems.push("init or ephemeral containers: only the agent's is checked".to_owned());
    }
    let all = containers(ds);
    if all.len() != 1 {
        problems.push(format!("expected one container, found {}", all.len()));
        return;
    }
    let c = all[0];
    let sc = &c["securityContext"];
    if sc["privileged"] != false {
        problems.push(format!("privileged is {}, not false", sc["privileged"]));
    }
    if sc["allowPrivilegeEscalation"] != false {
        problems.push("allowPrivilegeEscalation is not false".to_owned());
    }
    if sc["readOnlyRootFilesystem"] != true {
        problems.push("readOnlyRootFilesystem is not true".to_owned());
    }
    if strings(&sc["capabilities"]["drop"]) != ["ALL"] {
        problems.push(format!(
            "capabilities.drop is {}, not [ALL]",
            sc["capabilities"]["drop"]
        ));
    }
    let added: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    let allowed: BTreeSet<String> = CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    if added != allowed {
        problems.push(format!("capabilities.add is {added:?}, not {allowed:?}"));
    }
    volume_problems(ds, c, problems);
    http_problems(ds, c, problems);
}

fn volume(ds: &Value, name: &str) -> Option<Value> {
    pod_spec(ds)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .cloned()
}

fn volume_problems(ds: &Value, c: &Value, problems: &mut Vec<String>) {
    for v in pod_spec(ds)["volumes"].as_array().into_iter().flatten() {
        if let Some(path) = v["hostPath"]["path"].as_str()
            && path != BPFFS
        {
            problems.push(format!("hostPath {path}: only {BPFFS} is needed"));
        }
    }
    for m in c["volumeMounts"].as_array().into_iter().flatten() {
        // Kubernetes accepts Bidirectional only in privileged containers.
        if m["mountPropagation"] == "Bidirectional" {
            problems.push(format!(
                "{} has Bidirectional mount propagation",
                m["mountPath"]
            ));
        }
    }
}

/// The HTTP API: address, token, port and probes.
fn http_problems(ds: &Value, c: &Value, problems: &mut Vec<String>) {
    let Some(addr) = env_value(c, "FLOWGATE_HTTP_ADDR") else {
        problems.push(
            "FLOWGATE_HTTP_ADDR is not set (the default is loopback: no probes, no scrapes)"
                .to_owned(),
        );
        return;
    };
    let Ok(addr) = addr.parse::<SocketAddr>() else {
        problems.push(format!("FLOWGATE_HTTP_ADDR {addr} is not an address:port"));
        return;
    };
    if !addr.ip().is_loopback() {
        token_problems(ds, c, problems);
    }
    let ports = c["ports"].as_array().cloned().unwrap_or_default();
    let http = ports.iter().find(|p| p["name"] == "http");
    if http.is_none_or(|p| p["containerPort"] != addr.port()) {
        problems.push(format!(
            "no container port `http` = {} (FLOWGATE_HTTP_ADDR)",
            addr.port()
        ));
    }
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        let port = match &get["port"] {
            Value::String(name) => ports
                .iter()
                .find(|p| p["name"] == *name)
                .map(|p| p["containerPort"].clone()),
            number => Some(number.clone()),
        };
        if get["path"] != path || port != Some(json!(addr.port())) {
            problems.push(format!(
                "{probe} is {get}, not GET {path} on port {}",
                addr.port()
            ));
        }
    }
}

/// FLOWGATE_API_TOKEN_FILE is set, in a mounted Secret the pod cannot start without.
fn token_problems(ds: &Value, c: &Value, problems: &mut Vec<String>) {
    let Some(file) = env_value(c, "FLOWGATE_API_TOKEN_FILE") else {
        problems.push(
            "FLOWGATE_HTTP_ADDR is not loopback but FLOWGATE_API_TOKEN_FILE is not set".to_owned(),
        );
        return;
    };
    let mount = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|m| {
            let dir = m["mountPath"].as_str()?;
            let name = file.strip_prefix(dir)?.strip_prefix('/')?;
            Some((m["name"].as_str()?.to_owned(), name.to_owned()))
        });
    let Some((volume_name, name)) = mount else {
        problems.push(format!(
            "FLOWGATE_API_TOKEN_FILE {file} is in no mounted volume"
        ));
        return;
    };
    let Some(v) = volume(ds, &volume_name) else {
        problems.push(format!("no volume {volume_name}"));
        return;
    };
    let secret = &v["secret"];
    if secret.is_null() || secret["optional"] == true {
        problems.push(format!(
            "the token's volume {volume_name} is not a required Secret: {v}"
        ));
    }
    if let Some(items) = secret["items"].as_array()
        && !items.iter().any(|i| i["path"] == name.as_str())
    {
        problems.push(format!("the token Secret's items do not hold {name}"));
    }
}

#[test]
fn security_properties_hold_in_every_rendering() {
    for r in renderings() {
        let problems = security_problems(&r.objects);
        assert!(problems.is_empty(), "{}: {problems:#?}", r.name);
    }
}

/// `objects` with `f` applied to the first object of kind `k`.
fn mutated(objects: &[Value], k: &str, f: impl FnOnce(&mut Value)) -> Vec<Value> {
    let mut out = objects.to_vec();
    f(out.iter_mut().find(|o| o["kind"] == k).unwrap());
    out
}

fn plain_objects() -> Vec<Value> {
    objects(&std::fs::read_to_string(root().join(PLAIN)).unwrap())
}

#[test]
fn the_security_check_rejects_broken_variants() {
    let plain = plain_objects();
    assert!(security_problems(&plain).is_empty());
    let c = "/spec/template/spec/containers/0";
    let broken: Vec<(&str, Vec<Value>)> = vec![
        (
            "verb create",
            mutated(&plain, "ClusterRole", |r| {
                r["rules"][0]["verbs"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("create"));
            }),
        ),
        (
            "secrets",
            mutated(&plain, "ClusterRole", |r| {
                r["rules"][0]["resources"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!("secrets"));
            }),
        ),
        (
            "wildcard",
            mutated(&plain, "ClusterRole", |r| {
                r["rules"][1]["verbs"] = json!(["*"])
            }),
        ),
        (
            "other subject",
            mutated(&plain, "ClusterRoleBinding", |b| {
                b["subjects"][0]["name"] = json!("default")
            }),
        ),
        (
            "privileged",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/securityContext")).unwrap()["privileged"] = json!(true);
            }),
        ),
        (
            "SYS_ADMIN",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/securityContext/capabilities/add"))
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!("SYS_ADMIN"));
            }),
        ),
        (
            "no drop",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/securityContext/capabilities"))
                    .unwrap()["drop"] = json!([]);
            }),
        ),
        (
            "writable root",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/securityContext")).unwrap()["readOnlyRootFilesystem"] =
                    json!(false);
            }),
        ),
        (
            "pod network",
            mutated(&plain, "DaemonSet", |d| {
                d["spec"]["template"]["spec"]["hostNetwork"] = json!(false)
            }),
        ),
        (
            "no token",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/env"))
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .retain(|e| e["name"] != "FLOWGATE_API_TOKEN_FILE");
            }),
        ),
        (
            "optional token",
            mutated(&plain, "DaemonSet", |d| {
                let volumes = d
                    .pointer_mut("/spec/template/spec/volumes")
                    .unwrap()
                    .as_array_mut()
                    .unwrap();
                volumes
                    .iter_mut()
                    .find(|v| v["name"] == "api-token")
                    .unwrap()["secret"]["optional"] = json!(true);
            }),
        ),
        (
            "probe path",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/readinessProbe/httpGet"))
                    .unwrap()["path"] = json!("/healthz");
            }),
        ),
        (
            "probe port",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/livenessProbe/httpGet"))
                    .unwrap()["port"] = json!(8080);
            }),
        ),
        (
            "host root",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut("/spec/template/spec/volumes")
                    .unwrap()
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "root", "hostPath": {"path": "/"}}));
            }),
        ),
        (
            "bidirectional",
            mutated(&plain, "DaemonSet", |d| {
                d.pointer_mut(&format!("{c}/volumeMounts/0")).unwrap()["mountPropagation"] =
                    json!("Bidirectional");
            }),
        ),
    ];
    for (name, objects) in broken {
        let problems = security_problems(&objects);
        assert!(
            !problems.is_empty(),
            "{name}: the security check accepted it"
        );
        println!("{name}: {problems:?}");
    }
    // Loopback needs no token.
    let loopback = mutated(&plain, "DaemonSet", |d| {
        let env = d
            .pointer_mut(&format!("{c}/env"))
            .unwrap()
            .as_array_mut()
            .unwrap();
        env.retain(|e| e["name"] != "FLOWGATE_API_TOKEN_FILE");
        env.iter_mut()
            .find(|e| e["name"] == "FLOWGATE_HTTP_ADDR")
            .unwrap()["value"] = json!("127.0.0.1:9090");
    });
    let problems = security_problems(&loopback);
    assert!(
        problems
            .iter()
            .all(|p| !p.contains("FLOWGATE_API_TOKEN_FILE")),
        "{problems:?}"
    );
}
