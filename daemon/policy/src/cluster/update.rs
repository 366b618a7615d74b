//! The index one object at a time: insert, replace or remove a Namespace, Pod or NetworkPolicy,
//! leaving every part of the index as `Cluster::build` of the same objects would have it
//! (implied namespaces come and go with their last pod or policy; an IP two pods claim belongs
//! to the later in (namespace, name) order). Each change is journalled, so `compile` can ask
//! what changed since the revision it last compiled (`changes_since`). Callers: the
//! Kubernetes-mode store (one watch event at a time) and `sync` (a manifest reload).

use std::collections::{BTreeSet, VecDeque};
use std::net::IpAddr;

use super::{Cluster, PodId, PolicyId, id};
use crate::model::{Labels, Namespace, Pod, Policy};

/// What changed in an index between two revisions (the union of the journal's entries).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Namespaces whose labels changed (or that came or went).
    pub namespaces: BTreeSet<String>,
    /// Pods added, replaced or removed, by (namespace, name).
    pub pods: BTreeSet<(String, String)>,
    /// Every IP such a pod had before or has now.
    pub ips: BTreeSet<IpAddr>,
    /// Policies added, replaced or removed, by (namespace, name).
    pub policies: BTreeSet<(String, String)>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty()
            && self.pods.is_empty()
            && self.ips.is_empty()
            && self.policies.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Touched {
    Namespace(String),
    Pod {
        namespace: String,
        name: String,
        ips: Vec<IpAddr>,
    },
    Policy {
        namespace: String,
        name: String,
    },
}

/// The journal keeps this many changes; a compile further behind starts from scratch.
const JOURNAL_MAX: usize = 8192;

#[cfg(test)]
pub(super) const JOURNAL_MAX_FOR_TESTS: usize = JOURNAL_MAX;

#[derive(Debug, Clone, Default)]
pub(super) struct Journal {
    /// The revision before `entries[0]`.
    base: u64,
    entries: VecDeque<Touched>,
}

impl Journal {
    fn revision(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    fn push(&mut self, touched: Touched) {
        self.entries.push_back(touched);
        while self.entries.len() > JOURNAL_MAX {
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

/// A pod's IPs without repeats (an IP listed twice is claimed once).
fn distinct_ips(pod: &Pod) -> Vec<IpAddr> {
    let mut ips = Vec::with_capacity(pod.ips.len());
    for ip in &pod.ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    ips
}

impl Cluster {
    /// This index's lineage: `build` and `clone` start a new one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// How many changes this index has taken since it was built.
    pub fn revision(&self) -> u64 {
        self.journal.revision()
    }

    /// What changed since `revision` of lineage `epoch`; `None` when that is not this index's
    /// past (another lineage, or older than the journal keeps).
    pub fn changes_since(&self, epoch: u64, revision: u64) -> Option<Changes> {
        if epoch != self.epoch || revision < self.journal.base || revision > self.revision() {
            return None;
        }
        let skip = usize::try_from(revision - self.journal.base).ok()?;
        let mut changes = Changes::default();
        for touched in self.journal.entries.iter().skip(skip) {
            match touched {
                Touched::Namespace(name) => {
                    changes.namespaces.insert(name.clone());
                }
                Touched::Pod {
                    namespace,
                    name,
                    ips,
                } => {
                    changes.pods.insert((namespace.clone(), name.clone()));
                    changes.ips.extend(ips.iter().copied());
                }
                Touched::Policy { namespace, name } => {
                    changes.policies.insert((namespace.clone(), name.clone()));
                }
            }
        }
        Some(changes)
    }

    /// Inserts or replaces a Namespace object; `false` if it was already so.
    pub fn upsert_namespace(&mut self, namespace: Namespace) -> bool {
        let newly_explicit = self.explicit.insert(namespace.name.clone());
        if !newly_explicit && self.namespaces.get(&namespace.name) == Some(&namespace) {
            return false;
        }
        self.insert_namespace(namespace);
        true
    }

    pub(super) fn insert_namespace(&mut self, namespace: Namespace) {
        let name = namespace.name.clone();
        self.explicit.insert(name.clone());
        let same = self.namespaces.get(&name) == Some(&namespace);
        self.namespaces.insert(name.clone(), namespace);
        if !same {
            self.journal.push(Touched::Namespace(name));
        }
    }

    /// Removes a Namespace object; while pods or policies remain in it, it stays implied (with
    /// only its name label), as `build` would have it. `false` if no such object was given.
    pub fn remove_namespace(&mut self, name: &str) -> bool {
        if !self.explicit.remove(name) {
            return false;
        }
        if self.users.get(name).copied().unwrap_or(0) > 0 {
            let implied = Namespace::new(name, Labels::new(), true);
            if self.namespaces.get(name) != Some(&implied) {
                self.namespaces.insert(name.to_owned(), implied);
                self.journal.push(Touched::Namespace(name.to_owned()));
            }
        } else if self.namespaces.remove(name).is_some() {
            self.journal.push(Touched::Namespace(name.to_owned()));
        }
        true
    }

    fn use_namespace(&mut self, name: &str) {
        *self.users.entry(name.to_owned()).or_default() += 1;
        if !self.namespaces.contains_key(name) {
            self.namespaces
                .insert(name.to_owned(), Namespace::new(name, Labels::new(), true));
            self.journal.push(Touched::Namespace(name.to_owned()));
        }
    }

    fn release_namespace(&mut self, name: &str) {
        let left = match self.users.get_mut(name) {
            Some(n) => {
                *n = n.saturating_sub(1);
                *n
            }
            None => 0,
        };
        if left == 0 {
            self.users.remove(name);
            if !self.explicit.contains(name) && self.namespaces.remove(name).is_some() {
                self.journal.push(Touched::Namespace(name.to_owned()));
            }
        }
    }

    /// Inserts or replaces a pod; `false` if it was already so.
    pub fn upsert_pod(&mut self, pod: Pod) -> bool {
        if let Some(id) = self.pod_by_name(&pod.namespace, &pod.name)
            && *self.pod(id) == pod
        {
            return false;
        }
        self.insert_pod(pod);
        true
    }

    pub(super) fn insert_pod(&mut self, pod: Pod) {
        let mut ips = distinct_ips(&pod);
        let (namespace, name) = (pod.namespace.clone(), pod.name.clone());
        let id = match self.pod_by_name(&namespace, &name) {
            Some(id) => {
                let old = self.pods.get_mut(id.0 as usize).and_then(Option::take);
                if let Some(old) = old {
                    for ip in distinct_ips(&old) {
                        if !old.host_network {
                            self.unclaim(id, ip);
                        }
                        if !ips.contains(&ip) {
                            ips.push(ip);
                        }
                    }
                }
                id
            }
            None => {
                self.use_namespace(&namespace);
                let id = match self.free_pods.pop() {
                    Some(slot) => PodId(slot),
                    None => {
                        self.pods.push(None);
                        PodId(id(self.pods.len() - 1))
                    }
                };
                self.pod_by_name
                    .entry(namespace.clone())
                    .or_default()
                    .insert(name.clone(), id);
                id
            }
        };
        let claims = (!pod.host_network).then(|| distinct_ips(&pod));
        if let Some(slot) = self.pods.get_mut(id.0 as usize) {
            *slot = Some(pod);
        }
        for ip in claims.into_iter().flatten() {
            self.claim(id, ip);
        }
        self.journal.push(Touched::Pod {
            namespace,
            name,
            ips,
        });
    }

    /// Removes a pod; `false` if there was none.
    pub fn remove_pod(&mut self, namespace: &str, name: &str) -> bool {
        let Some(id) = self.pod_by_name(namespace, name) else {
            return false;
        };
        let Some(old) = self.pods.get_mut(id.0 as usize).and_then(Option::take) else {
            return false;
        };
        let ips = distinct_ips(&old);
        if !old.host_network {
            for ip in &ips {
                self.unclaim(id, *ip);
            }
        }
        if let Some(names) = self.pod_by_name.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.pod_by_name.remove(namespace);
            }
        }
        self.free_pods.push(id.0);
        self.release_namespace(namespace);
        self.journal.push(Touched::Pod {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ips,
        });
        true
    }

    fn later(&self, a: PodId, b: PodId) -> bool {
        let (a, b) = (self.pod(a), self.pod(b));
        (&a.namespace, &a.name) > (&b.namespace, &b.name)
    }

    fn claim(&mut self, id: PodId, ip: IpAddr) {
        match self.pod_by_ip.get(&ip).copied() {
            None => {
                self.pod_by_ip.insert(ip, id);
            }
            Some(owner) if self.later(id, owner) => {
                self.pod_by_ip.insert(ip, id);
                self.shadowed.entry(ip).or_default().push(owner);
            }
            Some(_) => self.shadowed.entry(ip).or_default().push(id),
        }
    }

    /// Gives up `id`'s claim on `ip` (called before the slot's pod is replaced or freed, while
    /// the other claimants' pods are all in place).
    fn unclaim(&mut self, id: PodId, ip: IpAddr) {
        if self.pod_by_ip.get(&ip) == Some(&id) {
            self.pod_by_ip.remove(&ip);
            let Some(others) = self.shadowed.get_mut(&ip) else {
                return;
            };
            let mut best = 0;
            for i in 1..others.len() {
                let (a, b) = (others[i], others[best]);
                let pods = &self.pods;
                let key = |p: PodId| {
                    pods.get(p.0 as usize)
                        .and_then(Option::as_ref)
                        .map(|p| (p.namespace.clone(), p.name.clone()))
                };
                if key(a) > key(b) {
                    best = i;
                }
            }
            let next = others.swap_remove(best);
            if others.is_empty() {
                self.shadowed.remove(&ip);
            }
            self.pod_by_ip.insert(ip, next);
        } else if let Some(others) = self.shadowed.get_mut(&ip) {
            if let Some(at) = others.iter().position(|p| *p == id) {
                others.swap_remove(at);
            }
            if others.is_empty() {
                self.shadowed.remove(&ip);
            }
        }
    }

    /// Inserts or replaces a policy; `false` if it was already so.
    pub fn upsert_policy(&mut self, policy: Policy) -> bool {
        if let Some(id) = self.policy_by_name(&policy.namespace, &policy.name)
            && *self.policy(id) == policy
        {
            return false;
        }
        self.insert_policy(policy);
        true
    }

    pub(super) fn insert_policy(&mut self, policy: Policy) {
        let touched = Touched::Policy {
            namespace: policy.namespace.clone(),
            name: policy.name.clone(),
        };
        if let Some(id) = self.policy_by_name(&policy.namespace, &policy.name) {
            if let Some(slot) = self.policies.get_mut(id.0 as usize) {
                *slot = Some(policy);
            }
            self.journal.push(touched);
            return;
        }
        self.use_namespace(&policy.namespace);
        let id = match self.free_policies.pop() {
            Some(slot) => PolicyId(slot),
            None => {
                self.policies.push(None);
                PolicyId(id(self.policies.len() - 1))
            }
        };
        let namespace = policy.namespace.clone();
        let name = policy.name.clone();
        if let Some(slot) = self.policies.get_mut(id.0 as usize) {
            *slot = Some(policy);
        }
        let at = {
            let list = self
                .policies_by_namespace
                .get(&namespace)
                .map(Vec::as_slice)
                .unwrap_or_default();
            list.partition_point(|p| self.policy(*p).name < name)
        };
        self.policies_by_namespace
            .entry(namespace)
            .or_default()
            .insert(at, id);
        self.journal.push(touched);
    }

    /// Removes a policy; `false` if there was none.
    pub fn remove_policy(&mut self, namespace: &str, name: &str) -> bool {
        let Some(id) = self.policy_by_name(namespace, name) else {
            return false;
        };
        if let Some(list) = self.policies_by_namespace.get_mut(namespace) {
            list.retain(|p| *p != id);
            if list.is_empty() {
                self.policies_by_namespace.remove(namespace);
            }
        }
        if let Some(slot) = self.policies.get_mut(id.0 as usize) {
            *slot = None;
        }
        self.free_policies.push(id.0);
        self.release_namespace(namespace);
        self.journal.push(Touched::Policy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        });
        true
    }

    /// Brings the index to exactly these objects (what `build` of them would give), changing
    /// only what differs, so the journal names just the changes (a manifest reload). Returns
    /// how many objects changed.
    pub fn sync(
        &mut self,
        namespaces: Vec<Namespace>,
        pods: Vec<Pod>,
        policies: Vec<Policy>,
    ) -> usize {
        let mut changed = 0;
        let wanted: std::collections::HashSet<String> =
            namespaces.iter().map(|n| n.name.clone()).collect();
        let gone: Vec<String> = self
            .explicit
            .iter()
            .filter(|n| !wanted.contains(*n))
            .cloned()
            .collect();
        // New and changed objects first, so a namespace that stays in use never flickers.
        for namespace in namespaces {
            changed += usize::from(self.upsert_namespace(namespace));
        }
        let wanted: std::collections::HashSet<(String, String)> = pods
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        for pod in pods {
            changed += usize::from(self.upsert_pod(pod));
        }
        let stale: Vec<(String, String)> = self
            .pods()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .filter(|k| !wanted.contains(k))
            .collect();
        for (namespace, name) in stale {
            changed += usize::from(self.remove_pod(&namespace, &name));
        }
        let wanted: std::collections::HashSet<(String, String)> = policies
            .iter()
            .map(|p| (p.namespace.clone(), p.name.clone()))
            .collect();
        for policy in policies {
            changed += usize::from(self.upsert_policy(policy));
        }
        let stale: Vec<(String, String)> = self
            .policies()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .filter(|k| !wanted.contains(k))
            .collect();
        for (namespace, name) in stale {
            changed += usize::from(self.remove_policy(&namespace, &name));
        }
        for name in gone {
            changed += usize::from(self.remove_namespace(&name));
        }
        changed
    }
}
