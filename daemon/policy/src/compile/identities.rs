//! The IP cache and its identities: every remote address resolves (LPM) to an identity whose
//! content decides every peer match. Built for the whole cluster, or brought up to date for the
//! IPs a change touched (the rest of the cache stays as the previous snapshot had it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::cluster::{Cluster, PodId};
use crate::model::{Peer, Pod};

use super::tables::PortList;
use super::{IdentityContent, PodIdentity, Snapshot};

fn world_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

fn world_v6() -> IpNet {
    IpNet::V6(Ipv6Net::default())
}

/// The longest prefix of `cidrs` containing `ip`.
fn region_of(cidrs: &BTreeSet<IpNet>, ip: IpAddr) -> IpNet {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    for len in (0..=max).rev() {
        if let Ok(net) = IpNet::new(ip, len) {
            let net = net.trunc();
            if cidrs.contains(&net) {
                return net;
            }
        }
    }
    if ip.is_ipv4() { world_v4() } else { world_v6() }
}

pub(super) fn port_list(pod: &Pod) -> PortList {
    pod.ports
        .iter()
        .map(|p| (p.name.clone(), p.protocol, p.port))
        .collect()
}

fn pod_content(cluster: &Cluster, pod: &Pod, region: IpNet) -> IdentityContent {
    IdentityContent::Pod(Arc::new(PodIdentity {
        namespace: pod.namespace.clone(),
        namespace_labels: cluster.namespace_labels(&pod.namespace).clone(),
        labels: pod.labels.clone(),
        ports: port_list(pod),
        region,
    }))
}

/// The CIDRs regions are cut by: the two roots, and every ipBlock CIDR and except of the
/// policies that select a local pod.
pub(super) fn region_cidrs(cluster: &Cluster, local_pods: &[(u32, PodId)]) -> BTreeSet<IpNet> {
    let mut relevant = BTreeSet::new();
    for &(_, pod) in local_pods {
        for (pid, _) in cluster.policies_selecting(pod) {
            relevant.insert(pid);
        }
    }
    let mut cidrs: BTreeSet<IpNet> = [world_v4(), world_v6()].into();
    for pid in relevant {
        let policy = cluster.policy(pid);
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for peer in rule.peers.iter().flatten() {
                if let Peer::IpBlock(b) = peer {
                    cidrs.insert(b.cidr);
                    cidrs.extend(b.except.iter().copied());
                }
            }
        }
    }
    cidrs
}

/// What the IP-cache key of one address holds: the pod that owns it, else the CIDR region it
/// is (a /32 or /128 ipBlock), else nothing.
fn content_at(cluster: &Cluster, cidrs: &BTreeSet<IpNet>, key: IpNet) -> Option<IdentityContent> {
    let ip = key.addr();
    match cluster.pod_by_ip(ip) {
        Some(id) => Some(pod_content(cluster, cluster.pod(id), region_of(cidrs, ip))),
        None => cidrs.contains(&key).then_some(IdentityContent::Region(key)),
    }
}

impl Snapshot {
    fn intern_identity(&mut self, content: &IdentityContent) -> u32 {
        if let Some(id) = self.identity_ids.get(content) {
            return *id;
        }
        let id = self.next_identity;
        self.next_identity += 1;
        self.identity_ids.insert(content.clone(), id);
        id
    }

    /// The IP cache of the whole cluster (ids interned in key order).
    pub(super) fn build_ipcache(&mut self, cluster: &Cluster, cidrs: &BTreeSet<IpNet>) {
        let mut ipcache: BTreeMap<IpNet, IdentityContent> = BTreeMap::new();
        for cidr in cidrs {
            ipcache.insert(*cidr, IdentityContent::Region(*cidr));
        }
        for (_, pod) in cluster.pods() {
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                ipcache.insert(
                    IpNet::from(*ip),
                    pod_content(cluster, pod, region_of(cidrs, *ip)),
                );
            }
        }
        self.identities.clear();
        self.identity_refs.clear();
        self.ipcache.clear();
        for (net, content) in ipcache {
            let id = self.intern_identity(&content);
            self.identities.entry(id).or_insert(content);
            *self.identity_refs.entry(id).or_default() += 1;
            self.ipcache.insert(net, id);
        }
    }

    /// The previous snapshot's IP cache with the keys of `ips` worked out again (in key order,
    /// so new identities get the ids a full build would give them). The region CIDRs must be
    /// the previous snapshot's. Returns the keys whose identity changed, and the identities
    /// that came and went.
    pub(super) fn update_ipcache(
        &mut self,
        previous: &Snapshot,
        cluster: &Cluster,
        cidrs: &BTreeSet<IpNet>,
        ips: &BTreeSet<IpAddr>,
    ) -> (BTreeSet<IpNet>, BTreeSet<u32>, BTreeSet<u32>) {
        self.ipcache.clone_from(&previous.ipcache);
        self.identities.clone_from(&previous.identities);
        self.identity_refs.clone_from(&previous.identity_refs);
        let keys: BTreeSet<IpNet> = ips.iter().map(|ip| IpNet::from(*ip)).collect();
        let mut changed = BTreeSet::new();
        let mut added = BTreeSet::new();
        for key in keys {
            let new_id = content_at(cluster, cidrs, key).map(|content| {
                let id = self.intern_identity(&content);
                if let std::collections::btree_map::Entry::Vacant(slot) = self.identities.entry(id)
                {
                    slot.insert(content);
                    added.insert(id);
                }
                id
            });
            let old_id = self.ipcache.get(&key).copied();
            if old_id == new_id {
                continue;
            }
            if let Some(old) = old_id
                && let Some(n) = self.identity_refs.get_mut(&old)
            {
                *n = n.saturating_sub(1);
            }
            match new_id {
                Some(new) => {
                    *self.identity_refs.entry(new).or_default() += 1;
                    self.ipcache.insert(key, new);
                }
                None => {
                    self.ipcache.remove(&key);
                }
            }
            changed.insert(key);
        }
        // Identities no address resolves to any more (only now: one that a key left may have
        // been taken up by a later key).
        let unused: BTreeSet<u32> = self
            .identity_refs
            .iter()
            .filter(|(_, n)| **n == 0)
            .map(|(id, _)| *id)
            .collect();
        for id in &unused {
            self.identity_refs.remove(id);
            self.identities.remove(id);
        }
        (changed, added, unused)
    }
}
