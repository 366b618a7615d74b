//! The clusters the benchmark compiles, built in memory from model objects (no YAML): the two lab
//! pods in namespace `bench` with the policies that select them, plus either a handful of other
//! objects (configuration (b): 10 policies) or a generated cluster around them (configuration
//! (c): 50,000 pods, 10,000 policies, 2,000 namespaces). Generation is deterministic (SplitMix64
//! from a fixed seed), so every run compiles the same cluster.
//!
//! Both lab pods are isolated in both directions, so every new flow costs the full lookups on
//! both hooks: the client (`app=bench-client`, `tier=frontend`) is selected by three policies,
//! the server (`app=bench-server`, `tier=backend`) by five. They allow the benchmark ports
//! (iperf3, request/response, new connections) and nothing else between the two, so the probe
//! to `DENIED_PORT` shows the programs are enforcing.

use std::net::{IpAddr, Ipv4Addr};

use flowgate_policy::Cluster;
use flowgate_policy::model::{
    ContainerPort, IpBlock, Labels, Namespace, NamespaceScope, Peer, Pod, Policy, PortMatch,
    PortSpec, Protocol, Rule, Selector,
};

pub const BENCH_NS: &str = "bench";
pub const CLIENT: &str = "bench/client";
pub const SERVER: &str = "bench/server";
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 1);
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 2);
pub const IPERF_PORT: u16 = 5201;
pub const RR_PORT: u16 = 7000;
pub const CRR_PORT: u16 = 7001;
/// Served in the server pod by the lab, allowed by no policy (and dropped by the netfilter
/// configurations): the enforcement check.
pub const DENIED_PORT: u16 = 7009;
/// Added and removed by the policy-change measurement.
pub const CHANGE_PORT: u16 = 7002;

/// "flowgate" in ASCII, as the policy benchmark uses.
const SEED: u64 = 0x666c_6f77_6761_7465;

/// One object a change replaced, to be put into the index the way a watch event is.
#[derive(Debug, Clone)]
pub enum Changed {
    Policy(Policy),
    Pod(Pod),
}

impl Changed {
    /// Replaces the object in the index (one `upsert`, as the Kubernetes-mode store does).
    pub fn upsert(self, cluster: &mut Cluster) -> bool {
        match self {
            Self::Policy(p) => cluster.upsert_policy(p),
            Self::Pod(p) => cluster.upsert_pod(p),
        }
    }
}

/// The objects of a cluster, kept so that one object can be changed and the index rebuilt.
#[derive(Debug, Clone)]
pub struct Objects {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub policies: Vec<Policy>,
}

impl Objects {
    pub fn cluster(&self) -> Cluster {
        Cluster::build(
            self.namespaces.clone(),
            self.pods.clone(),
            self.policies.clone(),
        )
        .0
    }

    /// Namespaces with at least one pod.
    pub fn populated_namespaces(&self) -> usize {
        let mut names: Vec<&str> = self.pods.iter().map(|p| p.namespace.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }

    /// `bench/server-from-client` with or without `CHANGE_PORT`: a change to the server's
    /// ingress table.
    pub fn toggle_server_policy(&mut self) -> Option<Changed> {
        let policy = self
            .policies
            .iter_mut()
            .find(|p| p.namespace == BENCH_NS && p.name == "server-from-client")?;
        let rule = policy.ingress.first_mut()?;
        let extra = tcp(CHANGE_PORT);
        if let Some(at) = rule.ports.iter().position(|p| *p == extra) {
            rule.ports.remove(at);
        } else {
            rule.ports.push(extra);
        }
        Some(Changed::Policy(policy.clone()))
    }

    /// A policy of another namespace (selecting no local pod) gains or loses a port.
    pub fn toggle_remote_policy(&mut self) -> Option<Changed> {
        let policy = self
            .policies
            .iter_mut()
            .find(|p| p.namespace != BENCH_NS && p.isolates_ingress && !p.ingress.is_empty())?;
        let rule = policy.ingress.first_mut()?;
        let extra = tcp(CHANGE_PORT);
        if let Some(at) = rule.ports.iter().position(|p| *p == extra) {
            rule.ports.remove(at);
        } else {
            rule.ports.push(extra);
        }
        Some(Changed::Policy(policy.clone()))
    }

    /// A remote pod that the server's ingress allows (a frontend in an `env=prod` namespace)
    /// changes `tier` back and forth, so its IP moves to another identity.
    pub fn toggle_remote_pod_label(&mut self) -> Option<Changed> {
        let prod: Vec<&str> = self
            .namespaces
            .iter()
            .filter(|n| {
                n.name != BENCH_NS && n.labels.get("env").map(String::as_str) == Some("prod")
            })
            .map(|n| n.name.as_str())
            .collect();
        let pod = self.pods.iter_mut().find(|p| {
            prod.contains(&p.namespace.as_str())
                && p.labels.get("app").map(String::as_str) == Some("web")
        })?;
        let tier = pod.labels.entry("tier".to_owned()).or_default();
        *tier = if tier == "frontend" {
            "frontend-canary".to_owned()
        } else {
            "frontend".to_owned()
        };
        Some(Changed::Pod(pod.clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Building blocks.

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn selector(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        match_labels: pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        match_expressions: Vec::new(),
    }
}

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: PortMatch::Range(port, port),
    }
}

fn tcp_range(first: u16, last: u16) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: PortMatch::Range(first, last),
    }
}

fn named(name: &str) -> PortSpec {
    PortSpec {
        protocol: Protocol::Tcp,
        port: PortMatch::Named(name.to_owned()),
    }
}

fn dns() -> Vec<PortSpec> {
    vec![
        PortSpec {
            protocol: Protocol::Udp,
            port: PortMatch::Range(53, 53),
        },
        tcp(53),
    ]
}

fn own(namespace: &str, pods: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespaces: NamespaceScope::Own(namespace.to_owned()),
        pods: selector(pods),
    }
}

fn across(namespaces: &[(&str, &str)], pods: &[(&str, &str)]) -> Peer {
    Peer::Pods {
        namespaces: NamespaceScope::Selected(selector(namespaces)),
        pods: selector(pods),
    }
}

fn to_dns() -> Peer {
    across(
        &[("kubernetes.io/metadata.name", "kube-system")],
        &[("k8s-app", "kube-dns")],
    )
}

fn rule(peers: Vec<Peer>, ports: Vec<PortSpec>) -> Rule {
    Rule {
        peers: Some(peers),
        ports,
    }
}

fn ingress(namespace: &str, name: &str, select: &[(&str, &str)], rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: selector(select),
        isolates_ingress: true,
        isolates_egress: false,
        ingress: rules,
        egress: Vec::new(),
    }
}

fn egress(namespace: &str, name: &str, select: &[(&str, &str)], rules: Vec<Rule>) -> Policy {
    Policy {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        pod_selector: selector(select),
        isolates_ingress: false,
        isolates_egress: true,
        ingress: Vec::new(),
        egress: rules,
    }
}

fn pod(
    namespace: &str,
    name: &str,
    pod_labels: Labels,
    ip: Ipv4Addr,
    ports: &[(&str, u16, Protocol)],
) -> Pod {
    Pod {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: pod_labels,
        ips: vec![IpAddr::V4(ip)],
        ports: ports
            .iter()
            .map(|(name, port, protocol)| ContainerPort {
                name: Some((*name).to_owned()),
                port: *port,
                protocol: *protocol,
            })
            .collect(),
        host_network: false,
        node_name: Some("lab".to_owned()),
        owner: None,
    }
}

fn namespace(name: &str, pairs: &[(&str, &str)]) -> Namespace {
    Namespace::new(name, labels(pairs), false)
}

// ---------------------------------------------------------------------------------------------
// The objects every configuration shares: the bench namespace, DNS and monitoring.

/// The bench namespace with the two lab pods and the 7 policies selecting them.
fn bench() -> anyhow::Result<Objects> {
    let ns = BENCH_NS;
    let client = pod(
        ns,
        "client",
        labels(&[("app", "bench-client"), ("tier", "frontend")]),
        CLIENT_IP,
        &[],
    );
    let server = pod(
        ns,
        "server",
        labels(&[("app", "bench-server"), ("tier", "backend")]),
        SERVER_IP,
        &[
            ("iperf", IPERF_PORT, Protocol::Tcp),
            ("rr", RR_PORT, Protocol::Tcp),
            ("crr", CRR_PORT, Protocol::Tcp),
            ("denied", DENIED_PORT, Protocol::Tcp),
            ("metrics", 9090, Protocol::Tcp),
        ],
    );
    let bench_ports = || vec![tcp(IPERF_PORT), tcp_range(RR_PORT, CRR_PORT)];
    let server_sel = [("app", "bench-server")];
    let client_sel = [("app", "bench-client")];
    let policies = vec![
        Policy {
            namespace: ns.to_owned(),
            name: "default-deny".to_owned(),
            pod_selector: Selector::default(),
            isolates_ingress: true,
            isolates_egress: true,
            ingress: Vec::new(),
            egress: Vec::new(),
        },
        ingress(
            ns,
            "server-from-client",
            &server_sel,
            vec![rule(vec![own(ns, &client_sel)], bench_ports())],
        ),
        ingress(
            ns,
            "server-from-monitoring",
            &server_sel,
            vec![rule(
                vec![across(
                    &[("purpose", "monitoring")],
                    &[("app", "prometheus")],
                )],
                vec![named("metrics")],
            )],
        ),
        ingress(
            ns,
            "backends-from-prod-frontends",
            &[("tier", "backend")],
            vec![rule(
                vec![across(&[("env", "prod")], &[("tier", "frontend")])],
                vec![tcp(8080)],
            )],
        ),
        ingress(
            ns,
            "server-from-internal-cidr",
            &server_sel,
            vec![rule(
                vec![Peer::IpBlock(IpBlock {
                    cidr: "10.0.0.0/8".parse()?,
                    except: vec!["10.64.0.0/16".parse()?],
                    host_bits_set: false,
                })],
                vec![tcp(9000)],
            )],
        ),
        egress(
            ns,
            "client-egress",
            &client_sel,
            vec![
                rule(vec![own(ns, &server_sel)], bench_ports()),
                rule(vec![to_dns()], dns()),
            ],
        ),
        egress(
            ns,
            "frontends-to-prod-backends",
            &[("tier", "frontend")],
            vec![rule(
                vec![across(&[("env", "prod")], &[("tier", "backend")])],
                vec![tcp(8080)],
            )],
        ),
    ];
    Ok(Objects {
        namespaces: vec![namespace(ns, &[("team", "bench"), ("env", "prod")])],
        pods: vec![client, server],
        policies,
    })
}

/// kube-system (DNS) and monitoring (Prometheus), one policy each.
fn infrastructure(objects: &mut Objects) {
    objects.namespaces.push(namespace("kube-system", &[]));
    objects
        .namespaces
        .push(namespace("monitoring", &[("purpose", "monitoring")]));
    for i in 0..2u8 {
        objects.pods.push(pod(
            "kube-system",
            &format!("coredns-{i}"),
            labels(&[("k8s-app", "kube-dns")]),
            Ipv4Addr::new(10, 96, 0, 10 + i),
            &[("dns", 53, Protocol::Udp), ("dns-tcp", 53, Protocol::Tcp)],
        ));
        objects.pods.push(pod(
            "monitoring",
            &format!("prometheus-{i}"),
            labels(&[("app", "prometheus")]),
            Ipv4Addr::new(10, 97, 0, 10 + i),
            &[("web", 9090, Protocol::Tcp)],
        ));
    }
    objects.policies.push(ingress(
        "kube-system",
        "dns-from-everywhere",
        &[("k8s-app", "kube-dns")],
        vec![rule(vec![across(&[], &[])], dns())],
    ));
    objects.policies.push(Policy {
        namespace: "monitoring".to_owned(),
        name: "prometheus-scrapes-everything".to_owned(),
        pod_selector: selector(&[("app", "prometheus")]),
        isolates_ingress: false,
        isolates_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            peers: None,
            ports: Vec::new(),
        }],
    });
}

/// Configuration (b): the bench namespace, DNS, monitoring and a small shop: 10 policies.
pub fn small() -> anyhow::Result<Objects> {
    let mut objects = bench()?;
    infrastructure(&mut objects);
    objects
        .namespaces
        .push(namespace("shop", &[("team", "shop"), ("env", "prod")]));
    for i in 0..3u8 {
        objects.pods.push(pod(
            "shop",
            &format!("web-{i}"),
            labels(&[("app", "web"), ("tier", "frontend")]),
            Ipv4Addr::new(10, 98, 0, 10 + i),
            &[("http", 8080, Protocol::Tcp)],
        ));
        objects.pods.push(pod(
            "shop",
            &format!("api-{i}"),
            labels(&[("app", "api"), ("tier", "backend")]),
            Ipv4Addr::new(10, 98, 0, 20 + i),
            &[("http", 8080, Protocol::Tcp)],
        ));
    }
    objects.policies.push(ingress(
        "shop",
        "api-from-web",
        &[("app", "api")],
        vec![rule(
            vec![own("shop", &[("app", "web")])],
            vec![named("http")],
        )],
    ));
    Ok(objects)
}

// ---------------------------------------------------------------------------------------------
// Configuration (c): a generated cluster around the bench namespace.

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
}

/// A workload kind: `app` and `tier` labels and its named containerPorts.
struct App {
    app: &'static str,
    tier: &'static str,
    ports: &'static [(&'static str, u16, Protocol)],
}

const APPS: &[App] = &[
    App {
        app: "web",
        tier: "frontend",
        ports: &[
            ("http", 8080, Protocol::Tcp),
            ("metrics", 9090, Protocol::Tcp),
        ],
    },
    App {
        app: "api",
        tier: "backend",
        ports: &[
            ("http", 8080, Protocol::Tcp),
            ("grpc", 9000, Protocol::Tcp),
            ("metrics", 9090, Protocol::Tcp),
        ],
    },
    App {
        app: "worker",
        tier: "backend",
        ports: &[("metrics", 9090, Protocol::Tcp)],
    },
    App {
        app: "postgres",
        tier: "db",
        ports: &[
            ("postgres", 5432, Protocol::Tcp),
            ("metrics", 9187, Protocol::Tcp),
        ],
    },
    App {
        app: "redis",
        tier: "cache",
        ports: &[("redis", 6379, Protocol::Tcp)],
    },
    App {
        app: "kafka",
        tier: "queue",
        ports: &[
            ("kafka", 9092, Protocol::Tcp),
            ("metrics", 9308, Protocol::Tcp),
        ],
    },
];

const ENVS: [&str; 3] = ["prod", "staging", "dev"];
const TEAMS: usize = 200;

/// Pod `index` of the generated ones: 10.64.0.0/14, every fourth address, so a quarter of the
/// pods fall in the `except` of the server's ipBlock rule and three quarters in its CIDR.
fn generated_ip(index: usize) -> Ipv4Addr {
    let offset = u32::try_from(index * 4 + 1).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + offset)
}

/// The bench namespace, DNS and monitoring, plus generated namespaces until there are `pods`
/// pods and `policies` policies in all, over `namespaces` generated namespaces.
pub fn large(pods: usize, policies: usize, namespaces: usize) -> anyhow::Result<Objects> {
    let mut objects = bench()?;
    infrastructure(&mut objects);
    let mut rng = Rng(SEED);
    let pods_left = pods.saturating_sub(objects.pods.len());
    let policies_left = policies.saturating_sub(objects.policies.len());
    let namespaces = namespaces.max(1);
    let mut pod_index = 0;
    let mut policy_count = 0;
    for n in 0..namespaces {
        let name = format!("ns-{n:04}");
        let env = ENVS[n % ENVS.len()];
        let team = format!("team-{:03}", n % TEAMS);
        objects
            .namespaces
            .push(namespace(&name, &[("team", &team), ("env", env)]));
        // Pods: this namespace's share, spread over 3 to 5 deployments.
        let share = pods_left / namespaces + usize::from(n < pods_left % namespaces);
        let deployments = 3 + rng.below(3);
        let first = rng.below(APPS.len());
        for d in 0..deployments {
            let app = &APPS[(first + d) % APPS.len()];
            let hash = format!("{:010x}", rng.next_u64() & 0xff_ffff_ffff);
            let replicas = share / deployments + usize::from(d < share % deployments);
            for r in 0..replicas {
                let pod_labels = labels(&[
                    ("app", app.app),
                    ("tier", app.tier),
                    ("team", &team),
                    ("pod-template-hash", &hash),
                ]);
                let pod_name = format!("{}-{hash}-{r}", app.app);
                objects.pods.push(pod(
                    &name,
                    &pod_name,
                    pod_labels,
                    generated_ip(pod_index),
                    app.ports,
                ));
                pod_index += 1;
            }
        }
        // Policies: the usual five per namespace, until the total is reached.
        let first_app = APPS[first].app;
        let candidates = [
            Policy {
                namespace: name.clone(),
                name: "default-deny-ingress".to_owned(),
                pod_selector: Selector::default(),
                isolates_ingress: true,
                isolates_egress: false,
                ingress: Vec::new(),
                egress: Vec::new(),
            },
            ingress(
                &name,
                "backend-from-frontend",
                &[("tier", "backend")],
                vec![rule(
                    vec![own(&name, &[("tier", "frontend")])],
                    vec![named("http"), named("grpc")],
                )],
            ),
            ingress(
                &name,
                "allow-monitoring",
                &[],
                vec![rule(
                    vec![across(
                        &[("purpose", "monitoring")],
                        &[("app", "prometheus")],
                    )],
                    vec![named("metrics")],
                )],
            ),
            ingress(
                &name,
                "allow-team",
                &[("app", first_app)],
                vec![rule(
                    vec![across(&[("team", &team)], &[])],
                    vec![tcp(8080), tcp_range(9000, 9100)],
                )],
            ),
            egress(
                &name,
                "frontend-egress",
                &[("tier", "frontend")],
                vec![
                    rule(vec![own(&name, &[("tier", "backend")])], vec![tcp(8080)]),
                    rule(vec![to_dns()], dns()),
                    rule(
                        vec![Peer::IpBlock(IpBlock {
                            cidr: "0.0.0.0/0".parse()?,
                            except: vec!["10.0.0.0/8".parse()?],
                            host_bits_set: false,
                        })],
                        vec![tcp(443)],
                    ),
                ],
            ),
        ];
        for policy in candidates {
            if policy_count < policies_left {
                objects.policies.push(policy);
                policy_count += 1;
            }
        }
    }
    Ok(objects)
}
