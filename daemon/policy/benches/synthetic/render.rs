// Included by benches/evaluate.rs: rendering the synthetic cluster as YAML manifests (one
// multi-document file per namespace) and generating it.

fn pad(indent: usize) -> String {
    " ".repeat(indent)
}

/// Appends `body`, rendered at `indent + 2`, as a list item at `indent`.
fn push_item(out: &mut String, indent: usize, body: &str) {
    out.push_str(&pad(indent));
    out.push_str("- ");
    out.push_str(&body[indent + 2..]);
}

fn render_selector(out: &mut String, indent: usize, key: &str, sel: &GenSelector) {
    let p = pad(indent);
    if sel.labels.is_empty() && sel.exprs.is_empty() {
        let _ = writeln!(out, "{p}{key}: {{}}");
        return;
    }
    let _ = writeln!(out, "{p}{key}:");
    if !sel.labels.is_empty() {
        let _ = writeln!(out, "{p}  matchLabels:");
        for (k, v) in &sel.labels {
            let _ = writeln!(out, "{p}    {k}: {v}");
        }
    }
    if !sel.exprs.is_empty() {
        let _ = writeln!(out, "{p}  matchExpressions:");
        for (k, op, values) in &sel.exprs {
            let _ = writeln!(out, "{p}    - key: {k}\n{p}      operator: {op}");
            if !values.is_empty() {
                let _ = writeln!(out, "{p}      values:");
                for v in values {
                    let _ = writeln!(out, "{p}        - {v}");
                }
            }
        }
    }
}

fn render_peer(out: &mut String, indent: usize, peer: &GenPeer) {
    let p = pad(indent);
    match peer {
        GenPeer::Pods { namespaces, pods } => {
            if let Some(ns) = namespaces {
                render_selector(out, indent, "namespaceSelector", ns);
            }
            if let Some(pods) = pods {
                render_selector(out, indent, "podSelector", pods);
            }
        }
        GenPeer::Block { cidr, except } => {
            let _ = writeln!(out, "{p}ipBlock:\n{p}  cidr: {cidr}");
            if !except.is_empty() {
                let _ = writeln!(out, "{p}  except:");
                for e in except {
                    let _ = writeln!(out, "{p}    - {e}");
                }
            }
        }
    }
}

fn render_port(out: &mut String, indent: usize, port: &GenPort) {
    let p = pad(indent);
    if let Some(protocol) = port.protocol {
        let _ = writeln!(out, "{p}protocol: {protocol}");
    }
    match port.port {
        GenPortValue::Number(n) => {
            let _ = writeln!(out, "{p}port: {n}");
        }
        GenPortValue::Name(name) => {
            let _ = writeln!(out, "{p}port: {name}");
        }
    }
    if let Some(end) = port.end_port {
        let _ = writeln!(out, "{p}endPort: {end}");
    }
}

fn render_rules(out: &mut String, key: &str, peers_key: &str, rules: &[GenRule]) {
    if rules.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {key}:");
    for r in rules {
        if r.peers.is_empty() && r.ports.is_empty() {
            out.push_str("    - {}\n");
            continue;
        }
        let mut body = String::new();
        if !r.peers.is_empty() {
            let _ = writeln!(body, "      {peers_key}:");
            for peer in &r.peers {
                let mut item = String::new();
                render_peer(&mut item, 10, peer);
                push_item(&mut body, 8, &item);
            }
        }
        if !r.ports.is_empty() {
            body.push_str("      ports:\n");
            for port in &r.ports {
                let mut item = String::new();
                render_port(&mut item, 10, port);
                push_item(&mut body, 8, &item);
            }
        }
        push_item(out, 4, &body);
    }
}

fn render_policy(ns: &str, policy: &GenPolicy) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {}\n  namespace: {ns}\nspec:",
        policy.name
    );
    render_selector(&mut out, 2, "podSelector", &policy.selector);
    if let Some(types) = policy.types {
        out.push_str("  policyTypes:\n");
        for t in types {
            let _ = writeln!(out, "    - {t}");
        }
    }
    render_rules(&mut out, "ingress", "from", &policy.ingress);
    render_rules(&mut out, "egress", "to", &policy.egress);
    out
}

fn render_namespace(name: &str, labels: &[(&str, &str)]) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    kubernetes.io/metadata.name: {name}\n"
    );
    for (k, v) in labels {
        let _ = writeln!(out, "    {k}: {v}");
    }
    out
}

struct GenPod<'a> {
    namespace: &'a str,
    name: String,
    labels: Vec<(&'a str, String)>,
    container: &'a str,
    ports: &'a [(&'a str, u16, &'a str)],
    ip: Ipv4Addr,
    node: usize,
    host_network: bool,
}

fn render_pod(pod: &GenPod<'_>) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  labels:\n",
        pod.name, pod.namespace
    );
    for (k, v) in &pod.labels {
        let _ = writeln!(out, "    {k}: \"{v}\"");
    }
    let _ = writeln!(out, "spec:\n  nodeName: node-{}", pod.node);
    if pod.host_network {
        out.push_str("  hostNetwork: true\n");
    }
    let _ = writeln!(
        out,
        "  containers:\n    - name: {c}\n      image: registry.example.com/{c}:1.{m}.0",
        c = pod.container,
        m = pod.node % 20
    );
    if !pod.ports.is_empty() {
        out.push_str("      ports:\n");
        for (name, port, protocol) in pod.ports {
            let _ = writeln!(
                out,
                "        - name: {name}\n          containerPort: {port}\n          protocol: {protocol}"
            );
        }
    }
    let _ = writeln!(
        out,
        "status:\n  phase: Running\n  podIP: {ip}\n  podIPs:\n    - ip: {ip}",
        ip = pod.ip
    );
    out
}

/// Kubernetes' name-suffix alphabet (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A unique 5-character pod-name suffix for pod number `n`.
fn suffix(mut n: usize) -> String {
    let mut s = String::new();
    for _ in 0..5 {
        s.push(char::from(SUFFIX_ALPHABET[n % SUFFIX_ALPHABET.len()]));
        n /= SUFFIX_ALPHABET.len();
    }
    s
}

fn template_hash(rng: &mut Rng) -> String {
    (0..10)
        .map(|_| char::from(*rng.pick(SUFFIX_ALPHABET)))
        .collect()
}

/// Spreads `total` over `counts` at random until they add up, keeping each at least `min`.
fn adjust_total(rng: &mut Rng, counts: &mut [usize], eligible: &[usize], total: usize, min: usize) {
    let mut sum: usize = counts.iter().sum();
    while sum != total {
        let i = *rng.pick(eligible);
        if sum < total {
            counts[i] += 1;
            sum += 1;
        } else if counts[i] > min {
            counts[i] -= 1;
            sum -= 1;
        }
    }
}

/// Allocates pod IPs: each of `NODES` nodes owns 10.(1 + n / 256).(n % 256).0/24.
struct Ipam {
    used: Vec<u8>,
}

impl Ipam {
    fn assign(&mut self, rng: &mut Rng) -> (usize, Ipv4Addr) {
        let mut node = rng.below(NODES);
        while self.used[node] >= 250 {
            node = (node + 1) % NODES;
        }
        self.used[node] += 1;
        let ip = Ipv4Addr::new(
            10,
            u8::try_from(1 + node / 256).unwrap_or_default(),
            u8::try_from(node % 256).unwrap_or_default(),
            1 + self.used[node],
        );
        (node, ip)
    }
}

/// The generated manifests: one multi-document YAML file per namespace.
fn generate() -> Vec<(String, Vec<String>)> {
    let mut rng = Rng(SEED);
    let specials = ["kube-system", "monitoring", "ingress-nginx"];
    let mut namespaces: Vec<GenNamespace> = Vec::with_capacity(NAMESPACES);
    for name in specials {
        namespaces.push(GenNamespace {
            name: name.to_owned(),
            team: "platform".to_owned(),
            env: "prod",
            apps: Vec::new(),
            pods: 0,
            policies: 0,
        });
    }
    for i in specials.len()..NAMESPACES {
        let team = format!("team-{:03}", rng.below(TEAMS));
        let env = *rng.pick(&["prod", "prod", "staging", "dev", "dev"]);
        let mut apps: Vec<usize> = Vec::new();
        for _ in 0..rng.range(2, 6) {
            let a = rng.below(APPS.len());
            if !apps.contains(&a) {
                apps.push(a);
            }
        }
        let roll = rng.below(1000);
        let policies = match roll {
            0..100 => 0,                   // 10%: no policy at all (the baseline's namespaces)
            100..103 => rng.range(60, 80), // a few platform-heavy namespaces
            103..200 => rng.range(8, 20),
            _ => rng.range(2, 7),
        };
        namespaces.push(GenNamespace {
            name: format!("{team}-{env}-{i:04}"),
            team,
            env,
            apps,
            pods: rng.range(5, 45),
            policies,
        });
    }

    // Special namespaces: kube-dns, node-exporter (host network), prometheus, statsd, ingress.
    let special_pods = 2 + 50 + 2 + 2 + 4;
    let special_policies = 5;
    let regular: Vec<usize> = (specials.len()..NAMESPACES).collect();
    let policied: Vec<usize> = regular
        .iter()
        .copied()
        .filter(|&i| namespaces[i].policies > 0)
        .collect();
    let mut pods: Vec<usize> = namespaces.iter().map(|n| n.pods).collect();
    adjust_total(&mut rng, &mut pods, &regular, PODS - special_pods, 1);
    let mut policies: Vec<usize> = namespaces.iter().map(|n| n.policies).collect();
    adjust_total(
        &mut rng,
        &mut policies,
        &policied,
        POLICIES - special_policies,
        1,
    );
    for (i, ns) in namespaces.iter_mut().enumerate() {
        ns.pods = pods[i];
        ns.policies = policies[i];
    }

    let mut ipam = Ipam {
        used: vec![0; NODES],
    };
    let mut pod_number = 0;
    let mut files = Vec::with_capacity(NAMESPACES);
    for ns in &namespaces {
        let mut docs = Vec::new();
        match ns.name.as_str() {
            "kube-system" => {
                docs.push(render_namespace(&ns.name, &[]));
                for _ in 0..2 {
                    let (node, ip) = ipam.assign(&mut rng);
                    pod_number += 1;
                    docs.push(render_pod(&GenPod {
                        namespace: &ns.name,
                        name: format!("coredns-5d78c9869d-{}", suffix(pod_number)),
                        labels: vec![("k8s-app", "kube-dns".into())],
                        container: "coredns",
                        ports: &[
                            ("dns", 53, "UDP"),
                            ("dns-tcp", 53, "TCP"),
                            ("metrics", 9153, "TCP"),
                        ],
                        ip,
                        node,
                        host_network: false,
                    }));
                }
                for node in 0..50 {
                    pod_number += 1;
                    docs.push(render_pod(&GenPod {
                        namespace: &ns.name,
                        name: format!("node-exporter-{}", suffix(pod_number)),
                        labels: vec![("app", "node-exporter".into())],
                        container: "node-exporter",
                        ports: &[("metrics", 9100, "TCP")],
                        ip: Ipv4Addr::new(10, 250, 0, u8::try_from(node + 1).unwrap_or(1)),
                        node,
                        host_network: true,
                    }));
                }
                let deny = policy(
                    "default-deny-ingress".into(),
                    GenSelector::all(),
                    Some(INGRESS),
                );
                let mut dns = policy(
                    "allow-dns-ingress".into(),
                    GenSelector::labels(&[("k8s-app", "kube-dns")]),
                    Some(INGRESS),
                );
                dns.ingress.push(rule(
                    vec![GenPeer::namespaces(GenSelector::all())],
                    vec![udp(53), tcp(53)],
                ));
                docs.push(render_policy(&ns.name, &deny));
                docs.push(render_policy(&ns.name, &dns));
            }
            "monitoring" => {
                docs.push(render_namespace(&ns.name, &[("team", "platform")]));
                for (app, ports) in [
                    ("prometheus", &[("web", 9090, "TCP")][..]),
                    (
                        "statsd-exporter",
                        &[("statsd", 8125, "UDP"), ("metrics", 9102, "TCP")][..],
                    ),
                ] {
                    for _ in 0..2 {
                        let (node, ip) = ipam.assign(&mut rng);
                        pod_number += 1;
                        docs.push(render_pod(&GenPod {
                            namespace: &ns.name,
                            name: format!("{app}-{}", suffix(pod_number)),
                            labels: vec![("app", app.into())],
                            container: app,
                            ports,
                            ip,
                            node,
                            host_network: false,
                        }));
                    }
                }
                let deny = policy(
                    "default-deny-ingress".into(),
                    GenSelector::all(),
                    Some(INGRESS),
                );
                let mut statsd = policy(
                    "allow-statsd".into(),
                    GenSelector::labels(&[("app", "statsd-exporter")]),
                    Some(INGRESS),
                );
                statsd.ingress.push(rule(
                    vec![GenPeer::namespaces(GenSelector::all().expr(
                        "team",
                        "Exists",
                        &[],
                    ))],
                    vec![udp(8125)],
                ));
                docs.push(render_policy(&ns.name, &deny));
                docs.push(render_policy(&ns.name, &statsd));
            }
            "ingress-nginx" => {
                docs.push(render_namespace(&ns.name, &[("team", "platform")]));
                for _ in 0..4 {
                    let (node, ip) = ipam.assign(&mut rng);
                    pod_number += 1;
                    docs.push(render_pod(&GenPod {
                        namespace: &ns.name,
                        name: format!("ingress-nginx-controller-{}", suffix(pod_number)),
                        labels: vec![("app.kubernetes.io/name", "ingress-nginx".into())],
                        container: "controller",
                        ports: &[("http", 80, "TCP"), ("https", 443, "TCP")],
                        ip,
                        node,
                        host_network: false,
                    }));
                }
                let mut public = policy("allow-public".into(), GenSelector::all(), Some(INGRESS));
                public.ingress.push(rule(
                    vec![GenPeer::block("0.0.0.0/0", &[])],
                    vec![tcp(80), tcp(443)],
                ));
                docs.push(render_policy(&ns.name, &public));
            }
            _ => {
                let critical = rng.percent(10);
                let mut labels = vec![("team", ns.team.as_str()), ("env", ns.env)];
                if critical {
                    labels.push(("criticality", "high"));
                }
                if rng.percent(30) {
                    labels.push(("istio-injection", "enabled"));
                }
                docs.push(render_namespace(&ns.name, &labels));
                let hashes: Vec<String> = ns.apps.iter().map(|_| template_hash(&mut rng)).collect();
                for j in 0..ns.pods {
                    let slot = j % ns.apps.len();
                    let app = &APPS[ns.apps[slot]];
                    let canary = rng.percent(15);
                    let mut labels = vec![
                        ("app", app.app.to_owned()),
                        ("tier", app.tier.to_owned()),
                        ("version", if canary { "v2" } else { "v1" }.to_owned()),
                        ("pod-template-hash", hashes[slot].clone()),
                    ];
                    if canary {
                        labels.push(("track", "canary".to_owned()));
                    }
                    let (node, ip) = ipam.assign(&mut rng);
                    pod_number += 1;
                    docs.push(render_pod(&GenPod {
                        namespace: &ns.name,
                        name: format!("{}-{}-{}", app.app, hashes[slot], suffix(pod_number)),
                        labels,
                        container: app.app,
                        ports: app.ports,
                        ip,
                        node,
                        host_network: false,
                    }));
                }
                for p in namespace_policies(&mut rng, ns) {
                    docs.push(render_policy(&ns.name, &p));
                }
            }
        }
        files.push((format!("{}.yaml", ns.name), docs));
    }
    files
}

// ---------------------------------------------------------------------------------------------
// Flows.

#[derive(Default)]
struct Flows {
    /// 100,000 flows: 60% pod->pod, 20% pod->external, 20% external->pod.
    mixed: Vec<Flow>,
    pod_to_pod: Vec<Flow>,
    pod_to_external: Vec<Flow>,
    external_to_pod: Vec<Flow>,
    /// Baseline: pod->pod flows between namespaces that no policy is in.
    unpoliced: Vec<Flow>,
}

const COMMON_PORTS: &[(Protocol, u16)] = &[
    (Protocol::Tcp, 80),
    (Protocol::Tcp, 443),
    (Protocol::Tcp, 8080),
    (Protocol::Tcp, 8050),
    (Protocol::Tcp, 5432),
    (Protocol::Tcp, 9090),
    (Protocol::Udp, 53),
    (Protocol::Udp, 5060),
    (Protocol::Udp, 5050),
    (Protocol::Sctp, 2905),
];

