// Included by benches/evaluate.rs: the deterministic synthetic cluster (2,000 namespaces,
// 50,000 pods, 10,000 NetworkPolicies) and its YAML rendering.

// ---------------------------------------------------------------------------------------------
// Deterministic randomness: SplitMix64, so the cluster is the same on every machine and run.

struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; `n > 0`.
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next_u64() % n as u64).unwrap_or_default()
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn port(&mut self, lo: u16, hi: u16) -> u16 {
        u16::try_from(self.range(usize::from(lo), usize::from(hi))).unwrap_or(lo)
    }

    fn octet(&mut self) -> u8 {
        u8::try_from(self.below(256)).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// What the generator builds: namespaces with apps, pods of those apps, and policies about them.

/// A workload kind: `app`/`tier` labels and its named containerPorts (name, port, protocol).
struct AppKind {
    app: &'static str,
    tier: &'static str,
    ports: &'static [(&'static str, u16, &'static str)],
}

const APPS: &[AppKind] = &[
    AppKind {
        app: "web",
        tier: "frontend",
        ports: &[("http", 8080, "TCP"), ("metrics", 9090, "TCP")],
    },
    AppKind {
        app: "api",
        tier: "backend",
        ports: &[
            ("http", 8080, "TCP"),
            ("grpc", 9000, "TCP"),
            ("metrics", 9090, "TCP"),
        ],
    },
    AppKind {
        app: "worker",
        tier: "backend",
        ports: &[("metrics", 9090, "TCP")],
    },
    AppKind {
        app: "postgres",
        tier: "db",
        ports: &[("postgres", 5432, "TCP"), ("metrics", 9187, "TCP")],
    },
    AppKind {
        app: "redis",
        tier: "cache",
        ports: &[("redis", 6379, "TCP")],
    },
    AppKind {
        app: "kafka",
        tier: "queue",
        ports: &[("kafka", 9092, "TCP"), ("metrics", 9308, "TCP")],
    },
    AppKind {
        app: "statsd",
        tier: "backend",
        ports: &[("statsd", 8125, "UDP"), ("metrics", 9102, "TCP")],
    },
    AppKind {
        app: "sip-gw",
        tier: "edge",
        ports: &[("sip", 5060, "UDP"), ("m3ua", 2905, "SCTP")],
    },
];

struct GenNamespace {
    name: String,
    team: String,
    env: &'static str,
    /// Indexes into `APPS`.
    apps: Vec<usize>,
    pods: usize,
    policies: usize,
}

#[derive(Default, Clone)]
struct GenSelector {
    labels: Vec<(String, String)>,
    /// (key, operator, values)
    exprs: Vec<(String, &'static str, Vec<String>)>,
}

impl GenSelector {
    fn all() -> Self {
        Self::default()
    }

    fn labels(pairs: &[(&str, &str)]) -> Self {
        Self {
            labels: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            exprs: Vec::new(),
        }
    }

    fn expr(mut self, key: &str, operator: &'static str, values: &[&str]) -> Self {
        let values = values.iter().map(|v| (*v).to_owned()).collect();
        self.exprs.push((key.to_owned(), operator, values));
        self
    }

    fn namespace(name: &str) -> Self {
        Self::labels(&[("kubernetes.io/metadata.name", name)])
    }
}

enum GenPeer {
    Pods {
        namespaces: Option<GenSelector>,
        pods: Option<GenSelector>,
    },
    Block {
        cidr: String,
        except: Vec<String>,
    },
}

impl GenPeer {
    fn pods(pods: GenSelector) -> Self {
        Self::Pods {
            namespaces: None,
            pods: Some(pods),
        }
    }

    fn namespaces(namespaces: GenSelector) -> Self {
        Self::Pods {
            namespaces: Some(namespaces),
            pods: None,
        }
    }

    fn and(namespaces: GenSelector, pods: GenSelector) -> Self {
        Self::Pods {
            namespaces: Some(namespaces),
            pods: Some(pods),
        }
    }

    fn block(cidr: &str, except: &[&str]) -> Self {
        Self::Block {
            cidr: cidr.to_owned(),
            except: except.iter().map(|e| (*e).to_owned()).collect(),
        }
    }
}

enum GenPortValue {
    Number(u16),
    Name(&'static str),
}

struct GenPort {
    protocol: Option<&'static str>,
    port: GenPortValue,
    end_port: Option<u16>,
}

fn tcp(port: u16) -> GenPort {
    GenPort {
        protocol: Some("TCP"),
        port: GenPortValue::Number(port),
        end_port: None,
    }
}

fn udp(port: u16) -> GenPort {
    GenPort {
        protocol: Some("UDP"),
        port: GenPortValue::Number(port),
        end_port: None,
    }
}

fn named(protocol: Option<&'static str>, name: &'static str) -> GenPort {
    GenPort {
        protocol,
        port: GenPortValue::Name(name),
        end_port: None,
    }
}

fn span(protocol: &'static str, port: u16, end_port: u16) -> GenPort {
    GenPort {
        protocol: Some(protocol),
        port: GenPortValue::Number(port),
        end_port: Some(end_port),
    }
}

#[derive(Default)]
struct GenRule {
    peers: Vec<GenPeer>,
    ports: Vec<GenPort>,
}

fn rule(peers: Vec<GenPeer>, ports: Vec<GenPort>) -> GenRule {
    GenRule { peers, ports }
}

struct GenPolicy {
    name: String,
    selector: GenSelector,
    /// `None`: no `policyTypes`, the API server's defaulting applies.
    types: Option<&'static [&'static str]>,
    ingress: Vec<GenRule>,
    egress: Vec<GenRule>,
}

const INGRESS: &[&str] = &["Ingress"];
const EGRESS: &[&str] = &["Egress"];
const BOTH: &[&str] = &["Ingress", "Egress"];

fn policy(
    name: String,
    selector: GenSelector,
    types: Option<&'static [&'static str]>,
) -> GenPolicy {
    GenPolicy {
        name,
        selector,
        types,
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

fn allow_dns(name: String) -> GenPolicy {
    let mut p = policy(name, GenSelector::all(), Some(EGRESS));
    p.egress.push(rule(
        vec![GenPeer::and(
            GenSelector::namespace("kube-system"),
            GenSelector::labels(&[("k8s-app", "kube-dns")]),
        )],
        vec![udp(53), tcp(53)],
    ));
    p
}

/// One of fifteen policy shapes seen in real clusters, about `app` in namespace `ns`.
fn templated_policy(rng: &mut Rng, k: usize, ns: &GenNamespace, app: &AppKind) -> GenPolicy {
    let a = app.app;
    let name = |template: &str| format!("{template}-{a}-{k}");
    match rng.below(15) {
        0 => {
            let mut p = policy(
                name("frontend-to"),
                GenSelector::labels(&[("app", a)]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::pods(GenSelector::labels(&[("tier", "frontend")]))],
                vec![named(None, "http")],
            ));
            p
        }
        1 => {
            let mut p = policy(
                name("from-ingress-nginx"),
                GenSelector::labels(&[("tier", "frontend")]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::and(
                    GenSelector::namespace("ingress-nginx"),
                    GenSelector::labels(&[("app.kubernetes.io/name", "ingress-nginx")]),
                )],
                vec![tcp(8080)],
            ));
            p
        }
        2 => {
            let mut p = policy(name("allow-scrape"), GenSelector::all(), Some(INGRESS));
            p.ingress.push(rule(
                vec![GenPeer::and(
                    GenSelector::namespace("monitoring"),
                    GenSelector::labels(&[("app", "prometheus")]),
                )],
                vec![named(Some("TCP"), "metrics")],
            ));
            p
        }
        3 => {
            let mut p = policy(
                name("allow-team"),
                GenSelector::labels(&[("app", a)]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::namespaces(GenSelector::labels(&[(
                    "team",
                    ns.team.as_str(),
                )]))],
                vec![tcp(8080), tcp(9000)],
            ));
            p
        }
        4 => {
            let mut p = policy(
                name("backend-from-prod"),
                GenSelector::all().expr("tier", "In", &["backend", "db"]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::and(
                    GenSelector::all()
                        .expr("env", "NotIn", &["dev"])
                        .expr("team", "Exists", &[]),
                    GenSelector::all()
                        .expr("app", "In", &["api", "worker", "web"])
                        .expr("track", "DoesNotExist", &[]),
                )],
                Vec::new(),
            ));
            p
        }
        5 => {
            let mut p = policy(
                name("db-lockdown"),
                GenSelector::labels(&[("tier", "db")]),
                Some(BOTH),
            );
            p.ingress.push(rule(
                vec![GenPeer::pods(GenSelector::labels(&[("tier", "backend")]))],
                vec![tcp(5432)],
            ));
            p
        }
        6 => {
            let mut p = policy(
                name("public-https"),
                GenSelector::labels(&[("tier", "frontend")]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::block(
                    "0.0.0.0/0",
                    &["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"],
                )],
                vec![tcp(443), tcp(8443)],
            ));
            p
        }
        7 => {
            let mut p = policy(
                name("egress-internet"),
                GenSelector::labels(&[("app", a)]),
                Some(EGRESS),
            );
            p.egress.push(rule(
                vec![GenPeer::block(
                    "0.0.0.0/0",
                    &["10.0.0.0/8", "169.254.169.254/32"],
                )],
                vec![tcp(443)],
            ));
            p.egress.push(rule(
                vec![GenPeer::block("203.0.113.0/24", &[])],
                vec![span("TCP", 30000, 32767)],
            ));
            p
        }
        8 => {
            let mut p = policy(
                name("port-range"),
                GenSelector::labels(&[("app", a)]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::pods(GenSelector::all())],
                vec![span("TCP", 8000, 8100), span("UDP", 5000, 5100)],
            ));
            p
        }
        9 => {
            let mut p = policy(
                name("partner-cidrs"),
                GenSelector::labels(&[("app", a)]),
                Some(INGRESS),
            );
            let node = rng.below(NODES);
            let net = format!("10.{}.0.0/16", 1 + node / 256);
            let hole = format!("10.{}.{}.0/24", 1 + node / 256, node % 256);
            p.ingress.push(rule(
                vec![
                    GenPeer::block("198.51.100.0/24", &[]),
                    GenPeer::block(&net, &[&hole]),
                ],
                vec![named(None, "http"), tcp(443)],
            ));
            p
        }
        10 => {
            let mut p = policy(
                name("telco"),
                GenSelector::labels(&[("tier", "edge")]),
                Some(INGRESS),
            );
            p.ingress.push(rule(
                vec![GenPeer::namespaces(GenSelector::labels(&[("env", "prod")]))],
                vec![
                    GenPort {
                        protocol: Some("SCTP"),
                        port: GenPortValue::Number(2905),
                        end_port: None,
                    },
                    named(Some("UDP"), "sip"),
                ],
            ));
            p
        }
        11 => {
            let mut p = policy(name("same-namespace"), GenSelector::all(), Some(INGRESS));
            p.ingress
                .push(rule(vec![GenPeer::pods(GenSelector::all())], Vec::new()));
            p
        }
        12 => {
            // No policyTypes: defaulted to Ingress + Egress (egress rules present).
            let mut p = policy(name("to-team-db"), GenSelector::labels(&[("app", a)]), None);
            p.egress.push(rule(
                vec![GenPeer::and(
                    GenSelector::labels(&[("team", ns.team.as_str()), ("env", "prod")]),
                    GenSelector::labels(&[("tier", "db")]),
                )],
                vec![tcp(5432)],
            ));
            p.egress.push(rule(
                vec![GenPeer::and(
                    GenSelector::namespace("kube-system"),
                    GenSelector::labels(&[("k8s-app", "kube-dns")]),
                )],
                vec![udp(53), tcp(53)],
            ));
            p
        }
        13 => {
            let mut p = policy(
                name("canary-open"),
                GenSelector::labels(&[("app", a), ("track", "canary")]),
                Some(INGRESS),
            );
            p.ingress.push(GenRule::default());
            p
        }
        _ => {
            let mut p = policy(
                name("to-statsd"),
                GenSelector::labels(&[("app", a)]),
                Some(EGRESS),
            );
            p.egress.push(rule(
                vec![GenPeer::and(
                    GenSelector::namespace("monitoring"),
                    GenSelector::labels(&[("app", "statsd-exporter")]),
                )],
                vec![udp(8125)],
            ));
            p
        }
    }
}

/// `ns.policies` policies: usually a default deny (and DNS when egress is denied), then
/// app-specific allows.
fn namespace_policies(rng: &mut Rng, ns: &GenNamespace) -> Vec<GenPolicy> {
    let mut out = Vec::new();
    if ns.policies == 0 {
        return out;
    }
    if rng.percent(85) {
        if rng.percent(35) {
            out.push(policy(
                "default-deny-all".into(),
                GenSelector::all(),
                Some(BOTH),
            ));
            if rng.percent(95) {
                out.push(allow_dns("allow-dns".into()));
            }
        } else {
            out.push(policy(
                "default-deny-ingress".into(),
                GenSelector::all(),
                Some(INGRESS),
            ));
        }
    }
    let mut k = 0;
    while out.len() < ns.policies {
        let app = &APPS[*rng.pick(&ns.apps)];
        out.push(templated_policy(rng, k, ns, app));
        k += 1;
    }
    out.truncate(ns.policies);
    out
}

// ---------------------------------------------------------------------------------------------
// YAML rendering, block style as `kubectl get -o yaml` writes it.

