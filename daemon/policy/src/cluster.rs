//! The index evaluation runs on: namespaces by name, pods by name and IP, policies by namespace.
//! Built once from validated objects; per-flow work touches only the policies of two namespaces.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use crate::error::{Location, Notice, ObjectRef};
use crate::load::Manifests;
use crate::model::{Labels, Namespace, Pod, Policy};

/// Index of a pod in `Cluster::pods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);

/// Index of a policy in `Cluster::policies`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);

#[derive(Debug, Default, Clone)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    /// Sorted by (namespace, name).
    pods: Vec<Pod>,
    pod_by_name: HashMap<String, HashMap<String, PodId>>,
    pod_by_ip: HashMap<IpAddr, PodId>,
    /// Sorted by (namespace, name), so attribution lists come out in a stable order.
    policies: Vec<Policy>,
    policies_by_namespace: HashMap<String, Vec<PolicyId>>,
    empty_labels: Labels,
}

fn id(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

impl Cluster {
    /// Builds the index. Namespaces that pods or policies live in but that were not given are
    /// implied (with only the `kubernetes.io/metadata.name` label), each with a notice.
    pub fn build(
        namespaces: Vec<Namespace>,
        mut pods: Vec<Pod>,
        mut policies: Vec<Policy>,
    ) -> (Self, Vec<Notice>) {
        let mut notices = Vec::new();
        let mut ns_map: BTreeMap<String, Namespace> = namespaces
            .into_iter()
            .map(|n| (n.name.clone(), n))
            .collect();
        let used = pods
            .iter()
            .map(|p| &p.namespace)
            .chain(policies.iter().map(|p| &p.namespace));
        for name in used {
            if !ns_map.contains_key(name) {
                ns_map.insert(name.clone(), Namespace::new(name, Labels::new(), true));
                notices.push(Notice {
                    location: Location {
                        source: "<cluster>".into(),
                        line: None,
                    },
                    object: Some(ObjectRef {
                        kind: "Namespace".into(),
                        namespace: None,
                        name: name.clone(),
                    }),
                    message: "not defined in the manifests; assumed to exist with only the \
                              kubernetes.io/metadata.name label"
                        .into(),
                });
            }
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

        let mut pod_by_name: HashMap<String, HashMap<String, PodId>> = HashMap::new();
        let mut pod_by_ip: HashMap<IpAddr, PodId> = HashMap::new();
        for (i, pod) in pods.iter().enumerate() {
            let pid = PodId(id(i));
            pod_by_name
                .entry(pod.namespace.clone())
                .or_default()
                .insert(pod.name.clone(), pid);
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                if let Some(other) = pod_by_ip.insert(*ip, pid) {
                    let other = &pods[other.0 as usize];
                    notices.push(Notice {
                        location: Location {
                            source: "<cluster>".into(),
                            line: None,
                        },
                        object: Some(ObjectRef {
                            kind: "Pod".into(),
                            namespace: Some(pod.namespace.clone()),
                            name: pod.name.clone(),
                        }),
                        message: format!(
                            "IP {ip} is also used by pod {}; flows to {ip} are attributed to {}",
                            other.key(),
                            pod.key()
                        ),
                    });
                }
            }
        }
        let mut policies_by_namespace: HashMap<String, Vec<PolicyId>> = HashMap::new();
        for (i, policy) in policies.iter().enumerate() {
            policies_by_namespace
                .entry(policy.namespace.clone())
                .or_default()
                .push(PolicyId(id(i)));
        }
        let cluster = Self {
            namespaces: ns_map,
            pods,
            pod_by_name,
            pod_by_ip,
            policies,
            policies_by_namespace,
            empty_labels: Labels::new(),
        };
        (cluster, notices)
    }

    /// Builds the index from everything `Manifests` loaded; the notices are appended to it.
    pub fn from_manifests(manifests: &mut Manifests) -> Self {
        let (cluster, notices) = Self::build(
            manifests.namespaces.clone(),
            manifests.pods.clone(),
            manifests.policies.clone(),
        );
        manifests.notices.extend(notices);
        cluster
    }

    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name)
    }

    /// A namespace's labels; empty for an unknown namespace.
    pub fn namespace_labels(&self, name: &str) -> &Labels {
        self.namespaces
            .get(name)
            .map_or(&self.empty_labels, |n| &n.labels)
    }

    pub fn pods(&self) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pods.iter().enumerate().map(|(i, p)| (PodId(id(i)), p))
    }

    /// Pods of one namespace, in no particular order.
    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pod_by_name
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|&id| (id, self.pod(id)))
    }

    pub fn pod(&self, id: PodId) -> &Pod {
        &self.pods[id.0 as usize]
    }

    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pod_by_name.get(namespace)?.get(name).copied()
    }

    /// The (non-host-network) pod that owns an IP.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.pod_by_ip.get(&ip).copied()
    }

    pub fn policies(&self) -> impl Iterator<Item = (PolicyId, &Policy)> {
        self.policies
            .iter()
            .enumerate()
            .map(|(i, p)| (PolicyId(id(i)), p))
    }

    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0 as usize]
    }

    /// Policies in a namespace, in (namespace, name) order.
    pub fn policies_in(&self, namespace: &str) -> impl Iterator<Item = (PolicyId, &Policy)> {
        self.policies_by_namespace
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|&pid| (pid, self.policy(pid)))
    }

    /// Policies whose podSelector selects the pod (host-network pods are never selected:
    /// NetworkPolicy does not apply to them).
    pub fn policies_selecting(&self, pod: PodId) -> impl Iterator<Item = (PolicyId, &Policy)> {
        let pod = self.pod(pod);
        let host = pod.host_network;
        self.policies_in(&pod.namespace)
            .filter(move |(_, p)| !host && p.pod_selector.matches(&pod.labels))
    }
}
