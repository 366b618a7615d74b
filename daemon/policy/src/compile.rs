//! `compile(cluster, local endpoints, previous) -> Snapshot`: the NetworkPolicy model turned into
//! the datapath's lookup tables (flowgate-abi layouts), so that a packet costs a fixed number of
//! hash/LPM lookups however many policies exist.
//!
//! Identities: every remote address resolves (LPM) to an identity whose *content* decides every
//! peer match: a CIDR region (the longest ipBlock CIDR/except containing the address), or a pod
//! (namespace and its labels, pod labels, named ports, and the region of its IP). Ids are
//! content-addressed and stable across snapshots, so an identity's meaning never changes.
//!
//! Tables: per (endpoint, direction) that is isolated, the allowed (identity, protocol, port
//! range) cells, each pointing at the list of (policy, rule) that allow it. Endpoints with the
//! same policies share a table. Port ranges become LPM prefixes, never one entry per port.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::cluster::{Cluster, PodId};
use crate::evaluate::{PolicyRef, RuleRef};
use crate::model::{Direction, Labels, NamespaceScope, Peer, Pod, Policy, PortMatch, Protocol};

/// A pod on this node and the host-side interface its traffic crosses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// `namespace/name`.
    pub pod: String,
    pub ifindex: u32,
}

/// What an identity stands for. Peer matches depend on nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityContent {
    /// Addresses whose longest matching CIDR (of all ipBlocks in force, plus the two roots) is this.
    Region(IpNet),
    /// A pod IP.
    Pod {
        namespace: String,
        namespace_labels: Labels,
        labels: Labels,
        /// (name, protocol, port) of every containerPort, for egress named ports.
        ports: Vec<(Option<String>, Protocol, u16)>,
        /// The region the pod's IP falls in, for ipBlock peers.
        region: IpNet,
    },
}

/// One allowed cell of a table: an identity, and a protocol and port range (as an LPM prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    pub identity: u32,
    /// `None`: every protocol and port (a rule without `ports`).
    pub proto: Option<Protocol>,
    /// First port of the range; with `port_bits` leading bits fixed (0 = every port).
    pub port: u16,
    pub port_bits: u8,
}

/// Cells of one table, each with its attribution id.
pub type Entries = BTreeMap<Cell, u32>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideState {
    /// Policies isolating the endpoint in this direction (empty: not isolated, `table` is 0).
    pub isolated_by: Vec<PolicyRef>,
    pub table: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    pub pod: String,
    pub endpoint_id: u32,
    pub ingress: SideState,
    pub egress: SideState,
}

impl EndpointState {
    pub fn side(&self, direction: Direction) -> &SideState {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// Everything the datapath needs for one policy generation, plus the allocators that keep ids
/// stable into the next one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub generation: u32,
    /// By ifindex.
    pub endpoints: BTreeMap<u32, EndpointState>,
    pub ipcache: BTreeMap<IpNet, u32>,
    pub identities: BTreeMap<u32, IdentityContent>,
    pub tables: BTreeMap<u32, Entries>,
    pub attributions: BTreeMap<u32, Vec<RuleRef>>,
    identity_ids: HashMap<IdentityContent, u32>,
    attribution_ids: HashMap<Vec<RuleRef>, u32>,
    endpoint_ids: HashMap<String, u32>,
    next_identity: u32,
    next_attribution: u32,
    next_table: u32,
    next_endpoint: u32,
}

impl Snapshot {
    /// Table cells in total (the size of the datapath's policy map for this snapshot).
    pub fn cell_count(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// An id no snapshot so far has used for an identity (for transient identities in `diff`).
    pub fn fresh_identity(&self, taken: u32) -> u32 {
        self.next_identity.max(1) + taken
    }

    /// An id no snapshot so far has used for a table.
    pub fn fresh_table(&self, taken: u32) -> u32 {
        self.next_table.max(1) + taken
    }
}

fn world_v4() -> IpNet {
    IpNet::V4(Ipv4Net::default())
}

fn world_v6() -> IpNet {
    IpNet::V6(Ipv6Net::default())
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
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

/// Compiles the cluster for the given local endpoints. `previous` (the snapshot now in the
/// datapath) keeps identity, attribution, endpoint and table ids stable where content is equal.
pub fn compile(
    cluster: &Cluster,
    locals: &[LocalEndpoint],
    previous: Option<&Snapshot>,
) -> Snapshot {
    let mut snap = Snapshot::default();
    if let Some(prev) = previous {
        snap.generation = prev.generation.wrapping_add(1);
        snap.identity_ids.clone_from(&prev.identity_ids);
        snap.attribution_ids.clone_from(&prev.attribution_ids);
        snap.endpoint_ids.clone_from(&prev.endpoint_ids);
        snap.next_identity = prev.next_identity;
        snap.next_attribution = prev.next_attribution;
        snap.next_table = prev.next_table;
        snap.next_endpoint = prev.next_endpoint;
    } else {
        snap.generation = 1;
    }
    snap.next_identity = snap.next_identity.max(1);
    snap.next_attribution = snap.next_attribution.max(1);
    snap.next_table = snap.next_table.max(1);
    snap.next_endpoint = snap.next_endpoint.max(1);

    let local_pods: Vec<(u32, PodId)> = locals
        .iter()
        .filter_map(|l| {
            let (ns, name) = l.pod.split_once('/')?;
            let id = cluster.pod_by_name(ns, name)?;
            (!cluster.pod(id).host_network).then_some((l.ifindex, id))
        })
        .collect();

    // CIDRs of the ipBlocks of every policy that selects a local endpoint.
    let mut relevant: BTreeSet<usize> = BTreeSet::new();
    for &(_, pod) in &local_pods {
        for (pid, _) in cluster.policies_selecting(pod) {
            relevant.insert(pid.0 as usize);
        }
    }
    let mut cidrs: BTreeSet<IpNet> = [world_v4(), world_v6()].into();
    for (pid, policy) in cluster.policies() {
        if !relevant.contains(&(pid.0 as usize)) {
            continue;
        }
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for peer in rule.peers.iter().flatten() {
                if let Peer::IpBlock(b) = peer {
                    cidrs.insert(b.cidr);
                    cidrs.extend(b.except.iter().copied());
                }
            }
        }
    }

    // Identities and the IP cache.
    let mut ipcache: BTreeMap<IpNet, IdentityContent> = BTreeMap::new();
    for cidr in &cidrs {
        ipcache.insert(*cidr, IdentityContent::Region(*cidr));
    }
    for (_, pod) in cluster.pods() {
        if pod.host_network {
            continue;
        }
        for ip in &pod.ips {
            ipcache.insert(
                host_net(*ip),
                pod_content(cluster, pod, region_of(&cidrs, *ip)),
            );
        }
    }
    let mut used: BTreeMap<u32, IdentityContent> = BTreeMap::new();
    for (net, content) in ipcache {
        let id = snap.intern_identity(&content);
        used.insert(id, content);
        snap.ipcache.insert(net, id);
    }
    snap.identities = used;

    // Tables, shared by endpoints with the same signature.
    let mut by_signature: HashMap<TableSignature, Entries> = HashMap::new();
    let mut sides: Vec<(u32, PodId, Direction, TableSignature, Vec<PolicyRef>)> = Vec::new();
    for &(ifindex, pod) in &local_pods {
        for direction in [Direction::Ingress, Direction::Egress] {
            let isolating: Vec<&Policy> = cluster
                .policies_selecting(pod)
                .map(|(_, p)| p)
                .filter(|p| p.isolates(direction))
                .collect();
            let isolated_by: Vec<PolicyRef> = isolating
                .iter()
                .map(|p| PolicyRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                })
                .collect();
            if isolating.is_empty() {
                sides.push((ifindex, pod, direction, TableSignature::none(), isolated_by));
                continue;
            }
            let own_ports = if direction == Direction::Ingress {
                port_list(cluster.pod(pod))
            } else {
                Vec::new()
            };
            let signature = TableSignature {
                direction: Some(direction),
                policies: isolated_by.clone(),
                own_ports,
            };
            if !by_signature.contains_key(&signature) {
                let entries = snap.table_entries(cluster, &isolating, direction, cluster.pod(pod));
                by_signature.insert(signature.clone(), entries);
            }
            sides.push((ifindex, pod, direction, signature, isolated_by));
        }
    }

    // Table ids: reuse the previous id of the same endpoint side where it agrees on every
    // identity both snapshots know and on every identity move (see `maps::diff`); otherwise a
    // new id (copy-on-write).
    let moves = previous
        .map(|p| crate::maps::identity_moves(&p.ipcache, &snap.ipcache))
        .unwrap_or_default();
    let mut ids_by_signature: HashMap<TableSignature, u32> = HashMap::new();
    let mut claimed: HashMap<u32, TableSignature> = HashMap::new();
    for (ifindex, _, direction, signature, _) in &sides {
        if signature.direction.is_none() || ids_by_signature.contains_key(signature) {
            continue;
        }
        let entries = &by_signature[signature];
        let candidate = previous
            .and_then(|p| {
                p.endpoints
                    .get(ifindex)
                    .map(|e| (p, e.side(*direction).table))
            })
            .filter(|(p, t)| {
                *t != 0
                    && !claimed.contains_key(t)
                    && p.tables.get(t).is_some_and(|old| {
                        agree(old, entries, p, &snap)
                            && crate::maps::moves_agree(old, entries, &moves)
                    })
            })
            .map(|(_, t)| t);
        let id = candidate.unwrap_or_else(|| {
            let id = snap.next_table;
            snap.next_table += 1;
            id
        });
        claimed.insert(id, signature.clone());
        ids_by_signature.insert(signature.clone(), id);
    }
    for (signature, id) in &ids_by_signature {
        snap.tables.insert(*id, by_signature[signature].clone());
    }

    for (ifindex, pod, direction, signature, isolated_by) in sides {
        let table = ids_by_signature.get(&signature).copied().unwrap_or(0);
        let key = cluster.pod(pod).key();
        let endpoint_id = match snap.endpoint_ids.get(&key) {
            Some(id) => *id,
            None => {
                let id = snap.next_endpoint;
                snap.next_endpoint += 1;
                snap.endpoint_ids.insert(key.clone(), id);
                id
            }
        };
        let state = snap
            .endpoints
            .entry(ifindex)
            .or_insert_with(|| EndpointState {
                pod: key,
                endpoint_id,
                ingress: SideState {
                    isolated_by: Vec::new(),
                    table: 0,
                },
                egress: SideState {
                    isolated_by: Vec::new(),
                    table: 0,
                },
            });
        let side = SideState { isolated_by, table };
        match direction {
            Direction::Ingress => state.ingress = side,
            Direction::Egress => state.egress = side,
        }
    }

    // Keep only the attributions in use (ids stay reserved in the allocator).
    let live: BTreeSet<u32> = snap
        .tables
        .values()
        .flat_map(|t| t.values().copied())
        .collect();
    snap.attribution_ids.retain(|_, id| live.contains(id));
    snap.attributions = snap
        .attribution_ids
        .iter()
        .map(|(refs, id)| (*id, refs.clone()))
        .collect();
    snap.identity_ids
        .retain(|_, id| snap.identities.contains_key(id));
    let live_endpoints: BTreeSet<&String> = snap.endpoints.values().map(|e| &e.pod).collect();
    snap.endpoint_ids.retain(|k, _| live_endpoints.contains(k));
    snap
}

/// Two tables agree when every identity known to both snapshots has the same cells.
fn agree(old: &Entries, new: &Entries, old_snap: &Snapshot, new_snap: &Snapshot) -> bool {
    let common =
        |id: u32| old_snap.identities.contains_key(&id) && new_snap.identities.contains_key(&id);
    let old_common = old.iter().filter(|(c, _)| common(c.identity));
    let new_common = new.iter().filter(|(c, _)| common(c.identity));
    old_common.eq(new_common)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TableSignature {
    direction: Option<Direction>,
    policies: Vec<PolicyRef>,
    /// The endpoint's own containerPorts (ingress named ports resolve on it).
    own_ports: Vec<(Option<String>, Protocol, u16)>,
}

impl TableSignature {
    fn none() -> Self {
        Self {
            direction: None,
            policies: Vec::new(),
            own_ports: Vec::new(),
        }
    }
}

fn port_list(pod: &Pod) -> Vec<(Option<String>, Protocol, u16)> {
    pod.ports
        .iter()
        .map(|p| (p.name.clone(), p.protocol, p.port))
        .collect()
}

fn pod_content(cluster: &Cluster, pod: &Pod, region: IpNet) -> IdentityContent {
    IdentityContent::Pod {
        namespace: pod.namespace.clone(),
        namespace_labels: cluster.namespace_labels(&pod.namespace).clone(),
        labels: pod.labels.clone(),
        ports: port_list(pod),
        region,
    }
}

/// Whether a peer matches every address of an identity.
pub fn peer_matches_identity(peer: &Peer, content: &IdentityContent) -> bool {
    match (peer, content) {
        (
            Peer::IpBlock(block),
            IdentityContent::Region(region) | IdentityContent::Pod { region, .. },
        ) => block.cidr.contains(region) && !block.except.iter().any(|e| e.contains(region)),
        (Peer::Pods { .. }, IdentityContent::Region(_)) => false,
        (
            Peer::Pods { namespaces, pods },
            IdentityContent::Pod {
                namespace,
                namespace_labels,
                labels,
                ..
            },
        ) => {
            let in_scope = match namespaces {
                NamespaceScope::Own(ns) => ns == namespace,
                NamespaceScope::Selected(sel) => sel.matches(namespace_labels),
            };
            in_scope && pods.matches(labels)
        }
    }
}

/// A rule's port entry, resolved: (protocol, first, last), `None` if a named port does not
/// resolve on the destination.
fn resolve_port(
    spec: &crate::model::PortSpec,
    dst_ports: &[(Option<String>, Protocol, u16)],
) -> Option<(Protocol, u16, u16)> {
    match &spec.port {
        PortMatch::Any => Some((spec.protocol, 0, u16::MAX)),
        PortMatch::Range(a, b) => Some((spec.protocol, *a, *b)),
        PortMatch::Named(name) => dst_ports
            .iter()
            .find(|(n, proto, _)| n.as_deref() == Some(name.as_str()) && *proto == spec.protocol)
            .map(|(_, proto, port)| (*proto, *port, *port)),
    }
}

const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

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

    fn intern_attribution(&mut self, refs: &[RuleRef]) -> u32 {
        if let Some(id) = self.attribution_ids.get(refs) {
            return *id;
        }
        let id = self.next_attribution;
        self.next_attribution += 1;
        self.attribution_ids.insert(refs.to_vec(), id);
        id
    }

    /// The cells of a table: for each identity, the protocol/port partition and who allows it.
    fn table_entries(
        &mut self,
        _cluster: &Cluster,
        isolating: &[&Policy],
        direction: Direction,
        owner: &Pod,
    ) -> Entries {
        let mut entries = Entries::new();
        let owner_ports = port_list(owner);
        let identities: Vec<(u32, IdentityContent)> = self
            .identities
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (identity, content) in identities {
            // Rules matching this identity, with the first matching peer index.
            let mut matched: Vec<(RuleRef, &crate::model::Rule)> = Vec::new();
            for policy in isolating {
                for (index, rule) in policy.rules(direction).iter().enumerate() {
                    let peer = match &rule.peers {
                        None => Some(None),
                        Some(peers) => peers
                            .iter()
                            .position(|p| peer_matches_identity(p, &content))
                            .map(Some),
                    };
                    if let Some(peer) = peer {
                        let r = RuleRef {
                            namespace: policy.namespace.clone(),
                            name: policy.name.clone(),
                            rule: index,
                            peer,
                            port: None,
                        };
                        matched.push((r, rule));
                    }
                }
            }
            if matched.is_empty() {
                continue;
            }
            let dst_ports: &[(Option<String>, Protocol, u16)] = match (direction, &content) {
                (Direction::Ingress, _) => &owner_ports,
                (Direction::Egress, IdentityContent::Pod { ports, .. }) => ports,
                (Direction::Egress, IdentityContent::Region(_)) => &[],
            };
            // Rules without ports allow every protocol and port.
            let any: Vec<RuleRef> = matched
                .iter()
                .filter(|(_, r)| r.ports.is_empty())
                .map(|(rr, _)| rr.clone())
                .collect();
            if !any.is_empty() {
                let id = self.intern_attribution(&any);
                entries.insert(
                    Cell {
                        identity,
                        proto: None,
                        port: 0,
                        port_bits: 0,
                    },
                    id,
                );
            }
            for proto in PORT_PROTOCOLS {
                // Resolved ranges per matched rule, in port-entry order.
                let ranges: Vec<Vec<(usize, u16, u16)>> = matched
                    .iter()
                    .map(|(_, rule)| {
                        rule.ports
                            .iter()
                            .enumerate()
                            .filter_map(|(k, spec)| {
                                resolve_port(spec, dst_ports)
                                    .filter(|(p, _, _)| *p == proto)
                                    .map(|(_, a, b)| (k, a, b))
                            })
                            .collect()
                    })
                    .collect();
                let mut bounds: BTreeSet<u32> = BTreeSet::new();
                for (_, a, b) in ranges.iter().flatten() {
                    bounds.insert(u32::from(*a));
                    bounds.insert(u32::from(*b) + 1);
                }
                let bounds: Vec<u32> = bounds.into_iter().collect();
                for pair in bounds.windows(2) {
                    let (lo, hi) = (pair[0], pair[1] - 1);
                    let mut refs: Vec<RuleRef> = Vec::new();
                    for ((rr, rule), rule_ranges) in matched.iter().zip(&ranges) {
                        if rule.ports.is_empty() {
                            refs.push(rr.clone());
                        } else if let Some((k, _, _)) = rule_ranges
                            .iter()
                            .find(|(_, a, b)| u32::from(*a) <= lo && hi <= u32::from(*b))
                        {
                            refs.push(RuleRef {
                                port: Some(*k),
                                ..rr.clone()
                            });
                        }
                    }
                    if refs.len() == any.len() {
                        // Same as the any-protocol cell (or nothing): the LPM falls back to it.
                        continue;
                    }
                    let id = self.intern_attribution(&refs);
                    for (port, bits) in prefixes(lo, hi) {
                        entries.insert(
                            Cell {
                                identity,
                                proto: Some(proto),
                                port,
                                port_bits: bits,
                            },
                            id,
                        );
                    }
                }
            }
        }
        entries
    }
}

/// Splits the inclusive port range [lo, hi] into aligned prefixes (first port, fixed bits).
pub fn prefixes(lo: u32, hi: u32) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let mut start = lo;
    while start <= hi {
        // Largest block aligned at `start` that fits in [start, hi].
        let mut size: u32 = if start == 0 {
            1 << 16
        } else {
            1 << start.trailing_zeros().min(16)
        };
        while start + size - 1 > hi {
            size >>= 1;
        }
        let bits = 16 - size.trailing_zeros();
        out.push((
            u16::try_from(start).unwrap_or(u16::MAX),
            u8::try_from(bits).unwrap_or(16),
        ));
        start += size;
    }
    out
}
