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
//!
//! Incremental: when `previous` was compiled from an earlier revision of the same index (see
//! `Cluster::changes_since`) and the region CIDRs are the same, only the IP-cache keys of the
//! pods a change touched (and of the pods of relabelled namespaces) are worked out again, and a
//! table of the same signature starts from its previous cells: identities gone lose theirs, new
//! ones gain theirs, and where one of its policies changed, only the identities that policy's
//! old or new rules match are worked out again (`tables::table_for`). The result is what a full
//! compile from the same `previous` gives (ids included): `tests/incremental.rs` holds it.

mod buffers;
mod identities;
mod tables;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ipnet::IpNet;

use crate::cluster::{Changes, Cluster, PodId};
use crate::evaluate::{PolicyRef, RuleRef};
use crate::model::{Direction, Labels, Policy, Protocol};

pub use tables::{peer_matches_identity, prefixes};

/// A pod on this node and the host-side interface its traffic crosses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// `namespace/name`.
    pub pod: String,
    pub ifindex: u32,
}

/// What a pod identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodIdentity {
    pub namespace: String,
    pub namespace_labels: Labels,
    pub labels: Labels,
    /// (name, protocol, port) of every containerPort, for egress named ports.
    pub ports: Vec<(Option<String>, Protocol, u16)>,
    /// The region the pod's IP falls in, for ipBlock peers.
    pub region: IpNet,
}

/// What an identity stands for. Peer matches depend on nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IdentityContent {
    /// Addresses whose longest matching CIDR (of all ipBlocks in force, plus the two roots) is this.
    Region(IpNet),
    /// A pod IP (shared: snapshots copy identities on every compile).
    Pod(Arc<PodIdentity>),
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

/// What an incremental compile changed, and the snapshot it started from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Delta {
    generation: u32,
    source: Option<(u64, u64)>,
    /// IP-cache keys whose identity changed.
    keys: BTreeSet<IpNet>,
    /// Identities that came and went.
    added: BTreeSet<u32>,
    removed: BTreeSet<u32>,
}

/// Everything the datapath needs for one policy generation, plus the allocators that keep ids
/// stable into the next one, and what an incremental compile reuses.
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
    /// The index (epoch, revision) this was compiled from.
    source: Option<(u64, u64)>,
    /// The region CIDRs in force.
    cidrs: BTreeSet<IpNet>,
    /// IP-cache keys per identity.
    identity_refs: HashMap<u32, u32>,
    /// The table of each signature.
    signatures: HashMap<TableSignature, u32>,
    delta: Option<Delta>,
    /// Tables in the maps that nothing reads (see `buffers`), and each active table's standby.
    standby: BTreeMap<u32, Entries>,
    partners: BTreeMap<u32, u32>,
    /// The policies the tables were compiled from, as they were.
    policies: HashMap<PolicyRef, Policy>,
}

impl Snapshot {
    /// Table cells in total (the size of the datapath's policy map for this snapshot).
    pub fn cell_count(&self) -> usize {
        self.tables.values().map(BTreeMap::len).sum()
    }

    /// Cells in the datapath's policy map with this snapshot in force: its tables' and their
    /// standby copies'.
    pub fn resident_cells(&self) -> usize {
        self.cell_count() + self.standby.values().map(BTreeMap::len).sum::<usize>()
    }

    /// An id no snapshot so far has used for an identity (for transient identities in `diff`).
    pub fn fresh_identity(&self, taken: u32) -> u32 {
        self.next_identity.max(1) + taken
    }

    /// An id no snapshot so far has used for a table.
    pub fn fresh_table(&self, taken: u32) -> u32 {
        self.next_table.max(1) + taken
    }

    /// The IP-cache keys whose identity may differ between `old` and this snapshot, when this
    /// snapshot was compiled incrementally from `old` (`None`: any key may differ).
    pub fn changed_keys_since(&self, old: &Snapshot) -> Option<&BTreeSet<IpNet>> {
        self.delta_since(old).map(|(keys, _, _)| keys)
    }

    /// With `changed_keys_since`, the identities that came and went since `old`.
    pub(crate) fn delta_since(
        &self,
        old: &Snapshot,
    ) -> Option<(&BTreeSet<IpNet>, &BTreeSet<u32>, &BTreeSet<u32>)> {
        self.delta
            .as_ref()
            .filter(|d| d.generation == old.generation && d.source == old.source)
            .map(|d| (&d.keys, &d.added, &d.removed))
    }

    /// Whether the two snapshots put the same things in the maps and explain them the same way
    /// (what a full and an incremental compile must agree on; the memo may differ).
    pub fn same_maps(&self, other: &Snapshot) -> bool {
        self.generation == other.generation
            && self.endpoints == other.endpoints
            && self.ipcache == other.ipcache
            && self.identities == other.identities
            && self.tables == other.tables
            && self.attributions == other.attributions
            && self.standby == other.standby
    }
}

/// Compiles the cluster for the given local endpoints. `previous` (the snapshot now in the
/// datapath) keeps identity, attribution, endpoint and table ids stable where content is equal,
/// and lets the compile redo only what changed since it (see the module comment).
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
    snap.source = Some((cluster.epoch(), cluster.revision()));

    let local_pods: Vec<(u32, PodId)> = locals
        .iter()
        .filter_map(|l| {
            let (ns, name) = l.pod.split_once('/')?;
            let id = cluster.pod_by_name(ns, name)?;
            (!cluster.pod(id).host_network).then_some((l.ifindex, id))
        })
        .collect();

    let cidrs = identities::region_cidrs(cluster, &local_pods);
    let changes: Option<Changes> = previous
        .and_then(|p| p.source)
        .and_then(|(epoch, revision)| cluster.changes_since(epoch, revision));
    let incremental = match (previous, changes) {
        (Some(prev), Some(changes)) if prev.cidrs == cidrs => Some((prev, changes)),
        _ => None,
    };
    match &incremental {
        Some((prev, changes)) => {
            let mut ips = changes.ips.clone();
            for ns in &changes.namespaces {
                for (_, pod) in cluster.pods_in(ns) {
                    if !pod.host_network {
                        ips.extend(pod.ips.iter().copied());
                    }
                }
            }
            let (keys, added, removed) = snap.update_ipcache(prev, cluster, &cidrs, &ips);
            // Contents of identities gone are not interned any more (a full compile keeps only
            // those in use).
            for id in &removed {
                if let Some(content) = prev.identities.get(id) {
                    snap.identity_ids.remove(content);
                }
            }
            snap.delta = Some(Delta {
                generation: prev.generation,
                source: prev.source,
                keys,
                added,
                removed,
            });
        }
        None => snap.build_ipcache(cluster, &cidrs),
    }
    snap.cidrs = cidrs;
    // Identities the change added and removed (what a reused table gains and loses).
    let (added, removed): (Vec<u32>, BTreeSet<u32>) = match &snap.delta {
        Some(d) => (d.added.iter().copied().collect(), d.removed.clone()),
        None => (Vec::new(), BTreeSet::new()),
    };

    // Tables, shared by endpoints with the same signature.
    let mut by_signature: HashMap<TableSignature, Entries> = HashMap::new();
    // Tables that are a previous table with only identities added and removed (they agree with
    // it on every identity both snapshots know, by construction).
    let mut reused_from: HashMap<TableSignature, u32> = HashMap::new();
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
            for (r, p) in isolated_by.iter().zip(&isolating) {
                snap.policies.insert(r.clone(), (*p).clone());
            }
            if isolating.is_empty() {
                sides.push((ifindex, pod, direction, TableSignature::none(), isolated_by));
                continue;
            }
            let own_ports = if direction == Direction::Ingress {
                identities::port_list(cluster.pod(pod))
            } else {
                Vec::new()
            };
            let signature = TableSignature {
                direction: Some(direction),
                policies: isolated_by.clone(),
                own_ports,
            };
            if !by_signature.contains_key(&signature) {
                let (entries, reused) = snap.table_for(
                    &signature,
                    &isolating,
                    incremental.as_ref().map(|(prev, changes)| (*prev, changes)),
                    &added,
                    &removed,
                );
                if let Some(id) = reused {
                    reused_from.insert(signature.clone(), id);
                }
                by_signature.insert(signature.clone(), entries);
            }
            sides.push((ifindex, pod, direction, signature, isolated_by));
        }
    }

    let placing: Vec<(u32, Direction, &TableSignature)> = sides
        .iter()
        .map(|(ifindex, _, direction, signature, _)| (*ifindex, *direction, signature))
        .collect();
    buffers::place_tables(&mut snap, previous, &placing, by_signature, &reused_from);

    for (ifindex, pod, direction, signature, isolated_by) in sides {
        let table = snap.signatures.get(&signature).copied().unwrap_or(0);
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
    let mut live = vec![false; snap.next_attribution as usize];
    for id in snap.tables.values().flat_map(|t| t.values()) {
        if let Some(slot) = live.get_mut(*id as usize) {
            *slot = true;
        }
    }
    snap.attribution_ids
        .retain(|_, id| live.get(*id as usize).copied().unwrap_or(false));
    snap.attributions = snap
        .attribution_ids
        .iter()
        .map(|(refs, id)| (*id, refs.clone()))
        .collect();
    if snap.delta.is_none() {
        snap.identity_ids
            .retain(|_, id| snap.identities.contains_key(id));
    }
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

/// What a table's cells depend on besides the identities: its direction, the policies that
/// isolate its endpoints (in order), and the endpoint's own containerPorts (ingress named
/// ports resolve on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TableSignature {
    direction: Option<Direction>,
    policies: Vec<PolicyRef>,
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
