// Included by benches/evaluate.rs: the 100,000 random flows (pod to pod, pod to external,
// external to pod) evaluated by the benchmark.

fn random_protocol(rng: &mut Rng) -> Protocol {
    match rng.below(20) {
        0 => Protocol::Sctp,
        1..=3 => Protocol::Udp,
        _ => Protocol::Tcp,
    }
}

/// A destination port for a flow to `pod`: often one it listens on, else common or random.
fn pod_port(rng: &mut Rng, cluster: &Cluster, pod: PodId) -> (Protocol, u16) {
    let ports = &cluster.pod(pod).ports;
    match rng.below(100) {
        0..55 if !ports.is_empty() => {
            let p = rng.pick(ports);
            (p.protocol, p.port)
        }
        0..80 => *rng.pick(COMMON_PORTS),
        _ => (random_protocol(rng), rng.port(1, 65535)),
    }
}

fn external_ip(rng: &mut Rng) -> IpAddr {
    let ip = match rng.below(100) {
        0..25 => Ipv4Addr::new(203, 0, 113, rng.octet()),
        25..35 => Ipv4Addr::new(198, 51, 100, rng.octet()),
        35..40 => Ipv4Addr::new(169, 254, 169, 254),
        _ => loop {
            let first = u8::try_from(rng.range(11, 223)).unwrap_or(11);
            if ![127, 169, 172, 192].contains(&first) {
                break Ipv4Addr::new(first, rng.octet(), rng.octet(), rng.octet());
            }
        },
    };
    IpAddr::V4(ip)
}

fn pod_ip(cluster: &Cluster, pod: PodId) -> IpAddr {
    cluster.pod(pod).ips[0]
}

fn pod_flow(cluster: &Cluster, src: PodId, dst: PodId, (protocol, port): (Protocol, u16)) -> Flow {
    let src_ip = pod_ip(cluster, src);
    let dst_ip = pod_ip(cluster, dst);
    Flow {
        src_ip,
        src_pod: cluster.pod_by_ip(src_ip),
        dst_ip,
        dst_pod: cluster.pod_by_ip(dst_ip),
        protocol,
        port: Some(port),
    }
}

fn generate_flows(cluster: &Cluster) -> Flows {
    let mut rng = Rng(SEED ^ 0xF10E);
    // Pods that own an IP, grouped by namespace in (namespace, name) order.
    let mut by_namespace: Vec<(String, Vec<PodId>)> = Vec::new();
    for (id, pod) in cluster.pods() {
        if pod.host_network || pod.ips.is_empty() {
            continue;
        }
        match by_namespace.last_mut() {
            Some((ns, ids)) if *ns == pod.namespace => ids.push(id),
            _ => by_namespace.push((pod.namespace.clone(), vec![id])),
        }
    }
    let all: Vec<PodId> = by_namespace
        .iter()
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    let namespace_of: Vec<usize> = by_namespace
        .iter()
        .enumerate()
        .flat_map(|(i, (_, ids))| std::iter::repeat_n(i, ids.len()))
        .collect();
    let team_of = |ns: &str| cluster.namespace_labels(ns).get("team").cloned();
    let mut team_namespaces: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, (ns, _)) in by_namespace.iter().enumerate() {
        if let Some(team) = team_of(ns) {
            team_namespaces.entry(team).or_default().push(i);
        }
    }
    let dns: Vec<PodId> = all
        .iter()
        .copied()
        .filter(|&id| cluster.pod(id).labels.get("k8s-app").map(String::as_str) == Some("kube-dns"))
        .collect();

    let mut flows = Flows::default();
    for _ in 0..FLOWS {
        let class = rng.below(10);
        if class < 6 {
            let index = rng.below(all.len());
            let src = all[index];
            let src_ns = namespace_of[index];
            let dst = match rng.below(10) {
                0..4 => *rng.pick(&by_namespace[src_ns].1),
                4 => *rng.pick(&dns),
                5 => {
                    let team = team_of(&by_namespace[src_ns].0).unwrap_or_default();
                    match team_namespaces.get(&team) {
                        Some(list) => {
                            let ns = *rng.pick(list);
                            *rng.pick(&by_namespace[ns].1)
                        }
                        None => *rng.pick(&all),
                    }
                }
                _ => *rng.pick(&all),
            };
            let port = if dns.contains(&dst) && rng.percent(80) {
                (Protocol::Udp, 53)
            } else {
                pod_port(&mut rng, cluster, dst)
            };
            let flow = pod_flow(cluster, src, dst, port);
            flows.pod_to_pod.push(flow);
            flows.mixed.push(flow);
        } else if class < 8 {
            let src = *rng.pick(&all);
            let src_ip = pod_ip(cluster, src);
            let (protocol, port) = match rng.below(100) {
                0..50 => (Protocol::Tcp, 443),
                50..65 => (Protocol::Tcp, rng.port(30000, 32767)),
                65..75 => (Protocol::Udp, 53),
                _ => (random_protocol(&mut rng), rng.port(1, 65535)),
            };
            let dst_ip = external_ip(&mut rng);
            let flow = Flow {
                src_ip,
                src_pod: cluster.pod_by_ip(src_ip),
                dst_ip,
                dst_pod: cluster.pod_by_ip(dst_ip),
                protocol,
                port: Some(port),
            };
            flows.pod_to_external.push(flow);
            flows.mixed.push(flow);
        } else {
            let dst = *rng.pick(&all);
            let dst_ip = pod_ip(cluster, dst);
            let (protocol, port) = match rng.below(100) {
                0..40 => pod_port(&mut rng, cluster, dst),
                40..70 => (Protocol::Tcp, *rng.pick(&[80, 443, 8443])),
                _ => (random_protocol(&mut rng), rng.port(1, 65535)),
            };
            let src_ip = external_ip(&mut rng);
            let flow = Flow {
                src_ip,
                src_pod: cluster.pod_by_ip(src_ip),
                dst_ip,
                dst_pod: cluster.pod_by_ip(dst_ip),
                protocol,
                port: Some(port),
            };
            flows.external_to_pod.push(flow);
            flows.mixed.push(flow);
        }
    }

    let unpoliced: Vec<PodId> = by_namespace
        .iter()
        .filter(|(ns, _)| cluster.policies_in(ns).next().is_none())
        .flat_map(|(_, ids)| ids.clone())
        .collect();
    for _ in 0..FLOWS {
        let src = *rng.pick(&unpoliced);
        let dst = *rng.pick(&unpoliced);
        let port = pod_port(&mut rng, cluster, dst);
        flows.unpoliced.push(pod_flow(cluster, src, dst, port));
    }
    flows
}

// ---------------------------------------------------------------------------------------------
// The fixture every benchmark shares, built once before divan starts.

struct Fixture {
    /// (source name, YAML text): one multi-document file per namespace.
    files: Vec<(String, String)>,
    /// Every YAML document alone, for the load-phase benchmarks.
    documents: Vec<String>,
    /// What `add_text` loaded from `files` (the model objects `Cluster::build` takes).
    manifests: Manifests,
    cluster: Cluster,
    flows: Flows,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let generated = generate();
    let files: Vec<(String, String)> = generated
        .iter()
        .map(|(name, docs)| (name.clone(), docs.join("---\n")))
        .collect();
    let documents: Vec<String> = generated.into_iter().flat_map(|(_, docs)| docs).collect();
    let mut manifests = Manifests::new();
    for (source, text) in &files {
        manifests.add_text(source, text);
    }
    let cluster = Cluster::from_manifests(&mut manifests);
    assert!(
        manifests.errors.is_empty(),
        "generated manifests rejected: {:?}",
        &manifests.errors[..manifests.errors.len().min(3)]
    );
    assert!(
        manifests.notices.is_empty(),
        "unexpected notices: {:?}",
        &manifests.notices[..manifests.notices.len().min(3)]
    );
    assert_eq!(manifests.namespaces.len(), NAMESPACES);
    assert_eq!(manifests.pods.len(), PODS);
    assert_eq!(manifests.policies.len(), POLICIES);
    if let Some(dir) = std::env::var_os("FLOWGATE_BENCH_DUMP") {
        // Writes the generated manifests, e.g. to try the `flowgate` CLI on them.
        let dir = std::path::PathBuf::from(dir);
        let written = std::fs::create_dir_all(&dir).and_then(|()| {
            files
                .iter()
                .try_for_each(|(name, text)| std::fs::write(dir.join(name), text))
        });
        eprintln!(
            "FLOWGATE_BENCH_DUMP: {} files to {}: {written:?}",
            files.len(),
            dir.display()
        );
    }
    let flows = generate_flows(&cluster);
    Fixture {
        files,
        documents,
        manifests,
        cluster,
        flows,
    }
});

