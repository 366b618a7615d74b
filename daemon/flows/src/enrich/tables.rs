//! What one policy generation needs to explain its events: the local endpoints, the
//! attribution lists, and every pod by IP. Built from a compiled snapshot and its cluster; the
//! pod table of a generation is the previous one's plus the pods that changed since (what the
//! cluster's journal names), so an apply costs what it changed, not the cluster's size.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use flowgate_policy::Cluster;
use flowgate_policy::compile::Snapshot;
use flowgate_policy::model::Pod;

use crate::record::{Mode, PolicyRef, RuleRef, SharedLabels, Workload};

/// A local pod the datapath reports for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub labels: SharedLabels,
    pub node: Option<Arc<str>>,
    pub workload: Option<Workload>,
    pub isolated_by_ingress: Arc<[PolicyRef]>,
    pub isolated_by_egress: Arc<[PolicyRef]>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: Arc<str>,
    pub pod: Arc<str>,
    pub labels: SharedLabels,
    pub node: Option<Arc<str>>,
    pub workload: Option<Workload>,
}

impl PodInfo {
    fn of(pod: &Pod) -> Self {
        Self {
            namespace: Arc::from(pod.namespace.as_str()),
            pod: Arc::from(pod.name.as_str()),
            labels: Arc::new(pod.labels.clone()),
            node: pod.node_name.as_deref().map(Arc::from),
            workload: pod.workload().map(|(kind, name)| Workload {
                kind: Arc::from(kind),
                name: Arc::from(name),
            }),
        }
    }
}

/// Changed pods kept beside a shared pod table before it is copied with them folded in.
const OVERLAY_MAX: usize = 4096;

/// What one policy generation needs to explain its events. The values are shared with the
/// records enriched from them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub generation: u32,
    pub mode: Mode,
    /// By endpoint id.
    pub endpoints: HashMap<u32, LocalInfo>,
    pub attributions: HashMap<u32, Arc<[RuleRef]>>,
    /// Pods by IP, shared between generations.
    pub pods_by_ip: Arc<HashMap<IpAddr, PodInfo>>,
    /// What changed since `pods_by_ip` was made: the pod on an IP now (`None`: no pod). Read
    /// first.
    pub pods_changed: Arc<HashMap<IpAddr, Option<PodInfo>>>,
    /// The cluster index (epoch, revision) the pod tables reflect.
    pub source: Option<(u64, u64)>,
}

impl Tables {
    /// The pod that owns an IP in this generation.
    pub fn pod(&self, ip: IpAddr) -> Option<&PodInfo> {
        match self.pods_changed.get(&ip) {
            Some(changed) => changed.as_ref(),
            None => self.pods_by_ip.get(&ip),
        }
    }

    /// Keeps only the listed label keys in records (an empty list keeps every label).
    pub fn select_labels(mut self, keep: &[String]) -> Self {
        if keep.is_empty() {
            return self;
        }
        let filter = |labels: &SharedLabels| -> SharedLabels {
            Arc::new(
                labels
                    .iter()
                    .filter(|(k, _)| keep.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )
        };
        for info in self.endpoints.values_mut() {
            info.labels = filter(&info.labels);
        }
        for info in Arc::make_mut(&mut self.pods_by_ip).values_mut() {
            info.labels = filter(&info.labels);
        }
        for info in Arc::make_mut(&mut self.pods_changed).values_mut().flatten() {
            info.labels = filter(&info.labels);
        }
        self
    }

    /// The tables of a compiled snapshot of a cluster, every pod worked out.
    pub fn from_snapshot(cluster: &Cluster, snap: &Snapshot, mode: Mode) -> Self {
        // One shared value per pod (all of its IPs and its endpoint use it).
        let mut pods_by_ip = HashMap::new();
        for (_, pod) in cluster.pods() {
            if !pod.host_network && !pod.ips.is_empty() {
                let info = PodInfo::of(pod);
                for ip in &pod.ips {
                    pods_by_ip.insert(*ip, info.clone());
                }
            }
        }
        Self::with_pods(cluster, snap, mode, Arc::new(pods_by_ip), Arc::default())
    }

    /// The tables of a snapshot compiled after the one `previous` explains: the pod table is
    /// shared, with the pods the cluster's journal says changed since laid over it. Without a
    /// journal that reaches back (another index, or too far behind), as `from_snapshot`.
    pub fn after(previous: &Tables, cluster: &Cluster, snap: &Snapshot, mode: Mode) -> Self {
        let changes = previous
            .source
            .and_then(|(epoch, revision)| cluster.changes_since(epoch, revision));
        let Some(changes) = changes else {
            return Self::from_snapshot(cluster, snap, mode);
        };
        let mut changed = previous.pods_changed.as_ref().clone();
        for ip in &changes.ips {
            let info = cluster
                .pod_by_ip(*ip)
                .map(|id| PodInfo::of(cluster.pod(id)));
            changed.insert(*ip, info);
        }
        if changed.len() <= OVERLAY_MAX {
            let pods = Arc::clone(&previous.pods_by_ip);
            return Self::with_pods(cluster, snap, mode, pods, Arc::new(changed));
        }
        let mut pods = previous.pods_by_ip.as_ref().clone();
        for (ip, info) in changed {
            match info {
                Some(info) => pods.insert(ip, info),
                None => pods.remove(&ip),
            };
        }
        Self::with_pods(cluster, snap, mode, Arc::new(pods), Arc::default())
    }

    fn with_pods(
        cluster: &Cluster,
        snap: &Snapshot,
        mode: Mode,
        pods_by_ip: Arc<HashMap<IpAddr, PodInfo>>,
        pods_changed: Arc<HashMap<IpAddr, Option<PodInfo>>>,
    ) -> Self {
        let policy_refs = |refs: &[flowgate_policy::PolicyRef]| -> Arc<[PolicyRef]> {
            refs.iter()
                .map(|p| PolicyRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                })
                .collect()
        };
        let mut endpoints = HashMap::new();
        for state in snap.endpoints.values() {
            let (namespace, pod) = state.pod.split_once('/').unwrap_or(("", &state.pod));
            let info = match cluster.pod_by_name(namespace, pod) {
                Some(id) => PodInfo::of(cluster.pod(id)),
                None => PodInfo {
                    namespace: Arc::from(namespace),
                    pod: Arc::from(pod),
                    labels: SharedLabels::default(),
                    node: None,
                    workload: None,
                },
            };
            endpoints.insert(
                state.endpoint_id,
                LocalInfo {
                    namespace: info.namespace,
                    pod: info.pod,
                    labels: info.labels,
                    node: info.node,
                    workload: info.workload,
                    isolated_by_ingress: policy_refs(&state.ingress.isolated_by),
                    isolated_by_egress: policy_refs(&state.egress.isolated_by),
                },
            );
        }
        let attributions = snap
            .attributions
            .iter()
            .map(|(id, refs)| {
                let refs = refs
                    .iter()
                    .map(|r| RuleRef {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        rule: r.rule,
                        peer: r.peer,
                        port: r.port,
                    })
                    .collect();
                (*id, refs)
            })
            .collect();
        Self {
            generation: snap.generation,
            mode,
            endpoints,
            attributions,
            pods_by_ip,
            pods_changed,
            source: Some((cluster.epoch(), cluster.revision())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use flowgate_policy::compile::{LocalEndpoint, compile};
    use flowgate_policy::model::{Labels, Namespace};

    use super::*;

    fn pod(name: &str, octet: u8, app: &str) -> Pod {
        Pod {
            namespace: "n".into(),
            name: name.into(),
            labels: Labels::from([("app".to_owned(), app.to_owned())]),
            ips: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet))],
            ports: Vec::new(),
            host_network: false,
            node_name: Some("n1".into()),
            owner: None,
        }
    }

    /// After each change, the tables derived from the previous ones answer every IP as tables
    /// built from scratch do, and share the previous pod table until the overlay is folded.
    #[test]
    fn derived_tables_equal_tables_built_from_scratch() {
        let ns = vec![Namespace::new("n", Labels::new(), false)];
        let pods: Vec<Pod> = (1..=20).map(|i| pod(&format!("p{i}"), i, "web")).collect();
        let (mut cluster, _) = Cluster::build(ns, pods, Vec::new());
        let locals = vec![LocalEndpoint {
            pod: "n/p1".into(),
            ifindex: 1,
        }];
        let mut snap = compile(&cluster, &locals, None);
        let mut tables = Tables::from_snapshot(&cluster, &snap, Mode::Enforce);
        let first = Arc::clone(&tables.pods_by_ip);
        let changes: Vec<(Option<Pod>, &str)> = vec![
            (Some(pod("p2", 2, "db")), ""),
            (Some(pod("p3", 30, "web")), ""),
            (None, "p4"),
            // p9 takes p5's address: the later name owns it.
            (Some(pod("p9", 5, "cache")), ""),
            (None, "p9"),
            (Some(pod("p1", 1, "local")), ""),
        ];
        for (upsert, remove) in changes {
            let changed = match upsert {
                Some(p) => cluster.upsert_pod(p),
                None => cluster.remove_pod("n", remove),
            };
            assert!(changed, "each step changes the cluster");
            snap = compile(&cluster, &locals, Some(&snap));
            let derived = Tables::after(&tables, &cluster, &snap, Mode::Enforce);
            let scratch = Tables::from_snapshot(&cluster, &snap, Mode::Enforce);
            for octet in 0..=40 {
                let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, octet));
                assert_eq!(derived.pod(ip), scratch.pod(ip), "{ip}");
            }
            assert_eq!(derived.endpoints, scratch.endpoints);
            assert_eq!(derived.attributions, scratch.attributions);
            assert!(
                Arc::ptr_eq(&derived.pods_by_ip, &first),
                "the pod table is shared, not copied"
            );
            tables = derived;
        }
        let local = tables
            .endpoints
            .values()
            .next()
            .expect("the local endpoint");
        assert_eq!(local.labels.get("app").map(String::as_str), Some("local"));
        // Another index: nothing to derive from, so built from scratch.
        let other = cluster.clone();
        let rebuilt = Tables::after(&tables, &other, &snap, Mode::Enforce);
        assert!(rebuilt.pods_changed.is_empty() && !Arc::ptr_eq(&rebuilt.pods_by_ip, &first));
    }
}
