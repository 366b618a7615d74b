//! The cluster state as the watchers see it: every Namespace, Pod and NetworkPolicy, validated
//! into the policy model the moment it arrives (so only what evaluation needs is kept: labels,
//! IPs, ports, node, owner; a full Pod object is dropped at once). Fed by `k8s::watch` with the
//! watcher's events, in the reflector's way: `Init` .. `InitApply` .. `InitDone` replaces a kind
//! atomically (a relist after `410 Gone` removes what was deleted meanwhile), `Apply`/`Delete`
//! change one object. The objects live in the policy index itself (`Cluster`), kept up to date
//! one object at a time, so a recompile starts from the index as it is (and compiles only what
//! changed) instead of rebuilding it. Pure: tested by feeding it objects.

use std::time::Instant;

use flowgate_policy::Cluster;
use flowgate_policy::model::{Namespace, Pod, Policy};
use flowgate_policy::validate::{self, FieldError};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use serde::de::DeserializeOwned;

/// The kinds the agent watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Namespace,
    Pod,
    NetworkPolicy,
}

impl Kind {
    pub const ALL: [Self; 3] = [Self::Namespace, Self::Pod, Self::NetworkPolicy];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::NetworkPolicy => "NetworkPolicy",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::Namespace => 0,
            Self::Pod => 1,
            Self::NetworkPolicy => 2,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `(namespace, name)`; the namespace is empty for a Namespace.
pub type Key = (String, String);

/// An object the API server sent that flowgate cannot use: logged and skipped (the previous
/// version of the object, if any, stays in force).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub error: FieldError,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let object = if self.namespace.is_empty() {
            self.name.clone()
        } else {
            format!("{}/{}", self.namespace, self.name)
        };
        write!(f, "{} {object}", self.kind)?;
        if let Some(field) = &self.error.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.error.message)
    }
}

/// A Kubernetes object the store takes in, with its conversion to the model and its place in
/// the index.
pub trait Watched: kube::Resource<DynamicType = ()> + Clone {
    const KIND: Kind;
    type Model: Clone + PartialEq;

    /// The model object, `Ok(None)` for one that takes no part in policy (a finished pod).
    fn into_model(self) -> Result<Option<Self::Model>, FieldError>;

    /// Inserts or replaces the object in the index; whether anything changed.
    fn upsert(cluster: &mut Cluster, model: Self::Model) -> bool;

    /// Removes the object from the index; whether it was there.
    fn remove(cluster: &mut Cluster, key: &Key) -> bool;

    /// The keys of every object of this kind in the index.
    fn keys(cluster: &Cluster) -> Vec<Key>;
}

impl Watched for core::Namespace {
    const KIND: Kind = Kind::Namespace;
    type Model = Namespace;

    fn into_model(self) -> Result<Option<Namespace>, FieldError> {
        validate::namespace_object(self).map(Some)
    }

    fn upsert(cluster: &mut Cluster, model: Namespace) -> bool {
        cluster.upsert_namespace(model)
    }

    fn remove(cluster: &mut Cluster, key: &Key) -> bool {
        cluster.remove_namespace(&key.1)
    }

    fn keys(cluster: &Cluster) -> Vec<Key> {
        cluster
            .given_namespaces()
            .map(|n| (String::new(), n.name.clone()))
            .collect()
    }
}

impl Watched for core::Pod {
    const KIND: Kind = Kind::Pod;
    type Model = Pod;

    fn into_model(self) -> Result<Option<Pod>, FieldError> {
        // A pod that has finished keeps its IP in status, but the IP may already belong to a
        // new pod: like kube-proxy and the CNIs, ignore it.
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return Ok(None);
        }
        validate::pod_object(self).map(Some)
    }

    fn upsert(cluster: &mut Cluster, model: Pod) -> bool {
        cluster.upsert_pod(model)
    }

    fn remove(cluster: &mut Cluster, key: &Key) -> bool {
        cluster.remove_pod(&key.0, &key.1)
    }

    fn keys(cluster: &Cluster) -> Vec<Key> {
        cluster
            .pods()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .collect()
    }
}

impl Watched for net::NetworkPolicy {
    const KIND: Kind = Kind::NetworkPolicy;
    type Model = Policy;

    fn into_model(self) -> Result<Option<Policy>, FieldError> {
        validate::network_policy_object(self).map(Some)
    }

    fn upsert(cluster: &mut Cluster, model: Policy) -> bool {
        cluster.upsert_policy(model)
    }

    fn remove(cluster: &mut Cluster, key: &Key) -> bool {
        cluster.remove_policy(&key.0, &key.1)
    }

    fn keys(cluster: &Cluster) -> Vec<Key> {
        cluster
            .policies()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .collect()
    }
}

fn key_of<K: kube::Resource>(object: &K) -> Key {
    let meta = object.meta();
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

/// The same event with each object passed through `f`.
fn map_event<A, B>(event: Event<A>, f: impl FnOnce(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// What one watcher event did to the store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// The policy-relevant state changed (a recompile is due).
    pub changed: bool,
    /// This kind has just finished its (re)list.
    pub synced: bool,
    pub rejected: Option<Rejected>,
}

/// The three kinds in the policy index, plus relist buffers and sync state.
#[derive(Debug, Default)]
pub struct ClusterStore {
    cluster: Cluster,
    /// Relist in progress per kind: the keys listed so far (objects go straight in; at
    /// `InitDone` the keys not listed are removed).
    relisting: [Option<Vec<Key>>; 3],
    synced: [bool; 3],
    /// When the first and the last change not yet in a snapshot arrived.
    dirty_since: Option<Instant>,
    last_change: Option<Instant>,
    /// Objects rejected so far, per kind.
    pub rejected: [u64; 3],
}

impl ClusterStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes one watcher event.
    pub fn handle<K: Watched>(&mut self, event: Event<K>, now: Instant) -> Applied {
        self.take(
            map_event(event, |object| (key_of(&object), Ok(object))),
            now,
        )
    }

    /// Takes one event of the untyped watch the agent runs (so that one object the typed
    /// decoder cannot read is rejected alone, instead of failing the whole list or watch).
    pub fn handle_dynamic<K: Watched + DeserializeOwned>(
        &mut self,
        event: Event<DynamicObject>,
        now: Instant,
    ) -> Applied {
        self.take::<K>(
            map_event(event, |object| {
                let key = key_of(&object);
                let typed = object.try_parse::<K>().map_err(|e| FieldError {
                    field: None,
                    message: format!("cannot be decoded as a {}: {e}", K::KIND),
                });
                (key, typed)
            }),
            now,
        )
    }

    fn take<K: Watched>(
        &mut self,
        event: Event<(Key, Result<K, FieldError>)>,
        now: Instant,
    ) -> Applied {
        let kind = K::KIND.index();
        let mut applied = Applied::default();
        match event {
            Event::Init => self.relisting[kind] = Some(Vec::new()),
            Event::InitApply((key, object)) | Event::Apply((key, object)) => {
                if let Some(listed) = &mut self.relisting[kind] {
                    listed.push(key.clone());
                }
                match object.and_then(K::into_model) {
                    Ok(Some(model)) => applied.changed = K::upsert(&mut self.cluster, model),
                    Ok(None) => applied.changed = K::remove(&mut self.cluster, &key),
                    Err(error) => {
                        self.rejected[kind] += 1;
                        applied.rejected = Some(Rejected {
                            kind: K::KIND,
                            namespace: key.0,
                            name: key.1,
                            error,
                        });
                    }
                }
            }
            Event::Delete((key, _)) => {
                applied.changed = K::remove(&mut self.cluster, &key);
            }
            Event::InitDone => {
                if let Some(listed) = self.relisting[kind].take() {
                    let listed: std::collections::HashSet<Key> = listed.into_iter().collect();
                    for key in K::keys(&self.cluster) {
                        if !listed.contains(&key) {
                            applied.changed |= K::remove(&mut self.cluster, &key);
                        }
                    }
                }
                applied.synced = !self.synced[kind];
                self.synced[kind] = true;
            }
        }
        if applied.changed {
            self.dirty_since.get_or_insert(now);
            self.last_change = Some(now);
        }
        applied
    }

    /// Every kind has completed its first list.
    pub fn synced(&self) -> bool {
        self.synced.iter().all(|s| *s)
    }

    /// Whether `kind` has completed its first list.
    pub fn synced_kind(&self, kind: Kind) -> bool {
        self.synced[kind.index()]
    }

    /// The kinds that have not completed their first list yet.
    pub fn waiting_for(&self) -> Vec<Kind> {
        Kind::ALL
            .into_iter()
            .filter(|k| !self.synced[k.index()])
            .collect()
    }

    /// When the oldest and the newest change not yet taken by `take_pending` arrived.
    pub fn pending(&self) -> (Option<Instant>, Option<Instant>) {
        (self.dirty_since, self.last_change)
    }

    /// The policy index of the current state (kept up to date object by object).
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Marks the store clean (its state is about to be applied); returns the time the oldest
    /// change not applied yet arrived (for the API-event-to-maps latency).
    pub fn take_pending(&mut self) -> Option<Instant> {
        self.last_change = None;
        self.dirty_since.take()
    }

    /// Pods on `node` that have an IP of their own (not `hostNetwork`): the ones to enforce for.
    pub fn local_pods(&self, node: &str) -> Vec<(String, Vec<std::net::IpAddr>)> {
        self.cluster
            .pods()
            .map(|(_, p)| p)
            .filter(|p| p.node_name.as_deref() == Some(node) && !p.host_network)
            .filter(|p| !p.ips.is_empty())
            .map(|p| (p.key(), p.ips.clone()))
            .collect()
    }

    /// Objects held, per kind (namespaces, pods, policies).
    pub fn counts(&self) -> (usize, usize, usize) {
        let (_, pods, policies) = self.cluster.counts();
        (self.cluster.given_namespaces().count(), pods, policies)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn pod(ns: &str, name: &str, node: &str, ip: &str, labels: &[(&str, &str)]) -> core::Pod {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"namespace": ns, "name": name,
                         "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                             .collect::<BTreeMap<String, String>>(),
                         "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
            "spec": {"nodeName": node, "containers": [{"name": "c"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn policy(ns: &str, name: &str, cidr: &str) -> net::NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": ns, "name": name},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": cidr}}]}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_relist_replaces_a_kind_and_removes_what_was_deleted_meanwhile() {
        let mut s = ClusterStore::new();
        let t = Instant::now();
        s.handle::<core::Pod>(Event::Init, t);
        assert!(
            s.handle(Event::InitApply(pod("a", "p1", "n1", "10.0.0.1", &[])), t)
                .changed
        );
        s.handle(Event::InitApply(pod("a", "p2", "n1", "10.0.0.2", &[])), t);
        let done = s.handle::<core::Pod>(Event::InitDone, t);
        assert!(done.synced && !done.changed, "the list removed nothing");
        assert!(!s.synced(), "namespaces and policies have not listed yet");
        assert_eq!(s.waiting_for(), vec![Kind::Namespace, Kind::NetworkPolicy]);
        // 410 Gone: the watcher relists; p2 was deleted while the watch was down.
        s.handle::<core::Pod>(Event::Init, t);
        s.handle(Event::InitApply(pod("a", "p1", "n1", "10.0.0.1", &[])), t);
        let again = s.handle::<core::Pod>(Event::InitDone, t);
        assert!(again.changed && !again.synced, "synced is reported once");
        assert_eq!(s.counts().1, 1);
        assert_eq!(
            s.local_pods("n1"),
            vec![("a/p1".into(), vec!["10.0.0.1".parse().unwrap()])]
        );
    }

    #[test]
    fn only_policy_relevant_changes_count_and_finished_pods_leave() {
        let mut s = ClusterStore::new();
        let t0 = Instant::now();
        s.handle(
            Event::Apply(pod("a", "p1", "n1", "10.0.0.1", &[("app", "x")])),
            t0,
        );
        let _ = s.take_pending();
        assert_eq!(s.pending(), (None, None));
        // A status condition flips: nothing policy cares about.
        let mut p = pod("a", "p1", "n1", "10.0.0.1", &[("app", "x")]);
        p.status.as_mut().unwrap().conditions = None;
        assert!(!s.handle(Event::Apply(p), t0).changed);
        // A label change matters.
        let t1 = t0 + std::time::Duration::from_millis(5);
        assert!(
            s.handle(
                Event::Apply(pod("a", "p1", "n1", "10.0.0.1", &[("app", "y")])),
                t1
            )
            .changed
        );
        assert_eq!(s.pending(), (Some(t1), Some(t1)));
        // A finished pod's IP may be reused at once: it takes no part any more.
        let mut done = pod("a", "p1", "n1", "10.0.0.1", &[("app", "y")]);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert!(s.handle(Event::Apply(done), t1).changed);
        assert_eq!(s.counts().1, 0);
    }

    #[test]
    fn a_rejected_object_is_reported_by_name_and_the_previous_version_stays() {
        let mut s = ClusterStore::new();
        let t = Instant::now();
        assert!(
            s.handle(Event::Apply(policy("a", "p", "10.0.0.0/8")), t)
                .changed
        );
        let bad = s.handle(Event::Apply(policy("a", "p", "10.0.0.0/33")), t);
        assert!(!bad.changed);
        let rejected = bad.rejected.expect("the invalid CIDR is rejected");
        let text = rejected.to_string();
        assert!(
            text.starts_with("NetworkPolicy a/p: spec.ingress[0].from[0].ipBlock.cidr"),
            "{text}"
        );
        assert_eq!(s.rejected, [0, 0, 1]);
        let (_, p) = s
            .cluster()
            .policies()
            .next()
            .expect("the previous version is kept");
        assert_eq!(p.name, "p");
        // A delete removes it.
        assert!(
            s.handle(Event::Delete(policy("a", "p", "10.0.0.0/8")), t)
                .changed
        );
        assert_eq!(s.counts().2, 0);
    }

    #[test]
    fn local_pods_are_this_nodes_pods_with_an_ip_of_their_own() {
        let mut s = ClusterStore::new();
        let t = Instant::now();
        s.handle(Event::Apply(pod("a", "here", "n1", "10.0.0.1", &[])), t);
        s.handle(Event::Apply(pod("a", "there", "n2", "10.0.0.2", &[])), t);
        let mut host = pod("a", "host", "n1", "192.168.1.10", &[]);
        host.spec.as_mut().unwrap().host_network = Some(true);
        s.handle(Event::Apply(host), t);
        let mut pending = pod("a", "pending", "n1", "", &[]);
        pending.status = None;
        s.handle(Event::Apply(pending), t);
        let local: Vec<String> = s.local_pods("n1").into_iter().map(|(p, _)| p).collect();
        assert_eq!(local, vec!["a/here".to_owned()]);
        assert_eq!(
            s.counts().1,
            4,
            "every pod's labels and IPs are kept for peer matching"
        );
    }

    #[test]
    fn the_index_is_kept_object_by_object_and_names_each_change() {
        let mut s = ClusterStore::new();
        let t = Instant::now();
        s.handle(
            Event::Apply(pod("a", "p1", "n1", "10.0.0.1", &[("app", "x")])),
            t,
        );
        s.handle(
            Event::Apply(pod("a", "p2", "n1", "10.0.0.2", &[("app", "x")])),
            t,
        );
        s.handle(Event::Apply(policy("a", "p", "10.0.0.0/8")), t);
        let (epoch, revision) = (s.cluster().epoch(), s.cluster().revision());
        s.handle(
            Event::Apply(pod("a", "p2", "n1", "10.0.0.2", &[("app", "y")])),
            t,
        );
        let changes = s
            .cluster()
            .changes_since(epoch, revision)
            .expect("the same index, one change on");
        assert_eq!(
            changes.pods.into_iter().collect::<Vec<_>>(),
            vec![("a".to_owned(), "p2".to_owned())],
            "only the relabelled pod"
        );
        assert!(changes.policies.is_empty() && changes.namespaces.is_empty());
        // And the index is what building it from the objects gives.
        let pods: Vec<Pod> = s.cluster().pods().map(|(_, p)| p.clone()).collect();
        let policies: Vec<Policy> = s.cluster().policies().map(|(_, p)| p.clone()).collect();
        let (built, _) = Cluster::build(Vec::new(), pods, policies);
        let labels = |c: &Cluster| -> Vec<String> {
            c.pods()
                .map(|(_, p)| format!("{}={:?}", p.key(), p.labels))
                .collect()
        };
        assert_eq!(labels(s.cluster()), labels(&built));
        assert_eq!(
            s.cluster().namespaces().cloned().collect::<Vec<_>>(),
            built.namespaces().cloned().collect::<Vec<_>>(),
            "namespace a is implied by its pods in both"
        );
    }
}
