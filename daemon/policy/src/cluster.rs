//! The index evaluation and compilation run on: namespaces by name, pods by name and IP,
//! policies by namespace. Built at once from validated objects (`build`), or kept up to date one
//! object at a time (`update`: what the Kubernetes-mode store and the manifest reload do), with
//! a journal of what changed so `compile` can redo only what a change touches.
//! Per-flow work touches only the policies of two namespaces.

mod update;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub use update::Changes;
use update::Journal;

use crate::error::{Location, Notice, ObjectRef};
use crate::load::Manifests;
use crate::model::{Labels, Namespace, Pod, Policy};

/// A pod's slot in the index (stable while the pod stays; not an order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodId(pub u32);

/// A policy's slot in the index (stable while the policy stays; not an order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub u32);

/// Where each index lineage gets its number: a clone or a fresh `build` starts a new one, so a
/// snapshot compiled from one lineage never takes another's journal for its own.
static EPOCHS: AtomicU64 = AtomicU64::new(1);

fn next_epoch() -> u64 {
    EPOCHS.fetch_add(1, Ordering::Relaxed)
}

#[derive(Debug)]
pub struct Cluster {
    namespaces: BTreeMap<String, Namespace>,
    /// Namespaces given as objects (the others are implied by a pod or policy in them).
    explicit: std::collections::HashSet<String>,
    /// Pods and policies in force per namespace (an implied namespace lives while it has any).
    users: HashMap<String, usize>,
    /// Slots; `None` is free (listed in `free_pods`).
    pods: Vec<Option<Pod>>,
    free_pods: Vec<u32>,
    /// By namespace, then name: the (namespace, name) order `pods()` gives.
    pod_by_name: BTreeMap<String, BTreeMap<String, PodId>>,
    /// The owner of each IP: of the (non-host-network) pods claiming it, the last in
    /// (namespace, name) order.
    pod_by_ip: HashMap<IpAddr, PodId>,
    /// Other claimants of an IP someone else owns (two pods with one IP is a mistake, but the
    /// owner must be right when either goes).
    shadowed: HashMap<IpAddr, Vec<PodId>>,
    policies: Vec<Option<Policy>>,
    free_policies: Vec<u32>,
    /// By namespace, each list sorted by name: attribution lists come out in a stable order.
    policies_by_namespace: BTreeMap<String, Vec<PolicyId>>,
    empty_labels: Labels,
    /// Returned for an id that is not (or no longer) in the index.
    placeholder_pod: Pod,
    placeholder_policy: Policy,
    epoch: u64,
    journal: Journal,
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            namespaces: BTreeMap::new(),
            explicit: std::collections::HashSet::new(),
            users: HashMap::new(),
            pods: Vec::new(),
            free_pods: Vec::new(),
            pod_by_name: BTreeMap::new(),
            pod_by_ip: HashMap::new(),
            shadowed: HashMap::new(),
            policies: Vec::new(),
            free_policies: Vec::new(),
            policies_by_namespace: BTreeMap::new(),
            empty_labels: Labels::new(),
            placeholder_pod: Pod {
                namespace: String::new(),
                name: String::new(),
                labels: Labels::new(),
                ips: Vec::new(),
                ports: Vec::new(),
                host_network: true,
                node_name: None,
                owner: None,
            },
            placeholder_policy: Policy {
                namespace: String::new(),
                name: String::new(),
                pod_selector: crate::model::Selector::default(),
                isolates_ingress: false,
                isolates_egress: false,
                ingress: Vec::new(),
                egress: Vec::new(),
            },
            epoch: next_epoch(),
            journal: Journal::default(),
        }
    }
}

/// A copy is a lineage of its own: its later changes are not the original's.
impl Clone for Cluster {
    fn clone(&self) -> Self {
        Self {
            namespaces: self.namespaces.clone(),
            explicit: self.explicit.clone(),
            users: self.users.clone(),
            pods: self.pods.clone(),
            free_pods: self.free_pods.clone(),
            pod_by_name: self.pod_by_name.clone(),
            pod_by_ip: self.pod_by_ip.clone(),
            shadowed: self.shadowed.clone(),
            policies: self.policies.clone(),
            free_policies: self.free_policies.clone(),
            policies_by_namespace: self.policies_by_namespace.clone(),
            empty_labels: Labels::new(),
            placeholder_pod: self.placeholder_pod.clone(),
            placeholder_policy: self.placeholder_policy.clone(),
            epoch: next_epoch(),
            journal: Journal::default(),
        }
    }
}

fn id(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

fn cluster_notice(kind: &str, namespace: Option<&str>, name: &str, message: String) -> Notice {
    Notice {
        location: Location {
            source: "<cluster>".into(),
            line: None,
        },
        object: Some(ObjectRef {
            kind: kind.into(),
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }),
        message,
    }
}

impl Cluster {
    /// Builds the index. Namespaces that pods or policies live in but that were not given are
    /// implied (with only the `kubernetes.io/metadata.name` label), each with a notice; so is
    /// an IP that two pods claim (the later in (namespace, name) order owns it).
    pub fn build(
        namespaces: Vec<Namespace>,
        mut pods: Vec<Pod>,
        mut policies: Vec<Policy>,
    ) -> (Self, Vec<Notice>) {
        let mut notices = Vec::new();
        let mut cluster = Self::default();
        for namespace in namespaces {
            cluster.insert_namespace(namespace);
        }
        let given: std::collections::BTreeSet<String> =
            cluster.namespaces.keys().cloned().collect();
        let used = pods
            .iter()
            .map(|p| &p.namespace)
            .chain(policies.iter().map(|p| &p.namespace));
        let mut implied = std::collections::BTreeSet::new();
        for name in used {
            if !given.contains(name) && implied.insert(name.clone()) {
                notices.push(cluster_notice(
                    "Namespace",
                    None,
                    name,
                    "not defined in the manifests; assumed to exist with only the \
                     kubernetes.io/metadata.name label"
                        .into(),
                ));
            }
        }
        pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let mut owners: HashMap<IpAddr, String> = HashMap::new();
        for pod in pods {
            if !pod.host_network {
                for ip in &pod.ips {
                    if let Some(other) = owners.insert(*ip, pod.key()) {
                        notices.push(cluster_notice(
                            "Pod",
                            Some(&pod.namespace),
                            &pod.name,
                            format!(
                                "IP {ip} is also used by pod {other}; flows to {ip} are attributed to {}",
                                pod.key()
                            ),
                        ));
                    }
                }
            }
            cluster.insert_pod(pod);
        }
        for policy in policies {
            cluster.insert_policy(policy);
        }
        // A built index starts its journal empty: nothing before it is a change.
        cluster.journal = Journal::default();
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

    /// The namespaces given as objects (not those implied by a pod or policy), by name.
    pub fn given_namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces
            .values()
            .filter(|n| self.explicit.contains(&n.name))
    }

    /// Every pod, in (namespace, name) order.
    pub fn pods(&self) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pod_by_name
            .values()
            .flat_map(|m| m.values())
            .map(|&id| (id, self.pod(id)))
    }

    /// Pods of one namespace, in name order.
    pub fn pods_in(&self, namespace: &str) -> impl Iterator<Item = (PodId, &Pod)> {
        self.pod_by_name
            .get(namespace)
            .into_iter()
            .flat_map(|m| m.values())
            .map(|&id| (id, self.pod(id)))
    }

    /// The pod in a slot; a placeholder (a host-network pod with no name) for a free slot.
    pub fn pod(&self, id: PodId) -> &Pod {
        self.pods
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .unwrap_or(&self.placeholder_pod)
    }

    pub fn pod_by_name(&self, namespace: &str, name: &str) -> Option<PodId> {
        self.pod_by_name.get(namespace)?.get(name).copied()
    }

    /// The (non-host-network) pod that owns an IP.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<PodId> {
        self.pod_by_ip.get(&ip).copied()
    }

    /// Every policy, in (namespace, name) order.
    pub fn policies(&self) -> impl Iterator<Item = (PolicyId, &Policy)> {
        self.policies_by_namespace
            .values()
            .flatten()
            .map(|&pid| (pid, self.policy(pid)))
    }

    /// The policy in a slot; an empty placeholder for a free slot.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        self.policies
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .unwrap_or(&self.placeholder_policy)
    }

    /// A policy by namespace and name.
    pub fn policy_by_name(&self, namespace: &str, name: &str) -> Option<PolicyId> {
        self.policies_in(namespace)
            .find(|(_, p)| p.name == name)
            .map(|(id, _)| id)
    }

    /// Policies in a namespace, in name order.
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

    /// Objects held: (namespaces, pods, policies).
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.namespaces.len(),
            self.pods.len() - self.free_pods.len(),
            self.policies.len() - self.free_policies.len(),
        )
    }
}

#[cfg(test)]
mod tests;
