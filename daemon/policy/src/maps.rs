//! The datapath's maps as data: `diff(old, new, mode) -> Vec<MapOp>` orders the updates from one
//! snapshot to the next, and `MapState` models the kernel maps (with LPM semantics) so the
//! kernel's lookup can be run in Rust against the same keys and values.
//!
//! Consistency: while the ops of a plan are applied one by one, every flow is decided either
//! exactly as by the old snapshot or exactly as by the new one, on both of its sides together:
//! 1. write cells no address resolves to yet (new and transient identities), and the tables the
//!    new snapshot switches to: fresh ids, or standby tables (below), which no endpoint entry of
//!    the active parity points at;
//! 2. point every IP-cache key whose identity changes at a transient identity that decides like
//!    the old one in the old tables and like the new one in the new tables (a table used by both
//!    snapshots is kept in place only where the two agree on it: `moves_agree`);
//! 3. write the endpoints' entries for the inactive parity, then flip `ACTIVE` (one write): a
//!    packet reads `ACTIVE` once, so it uses the old parity's entries and tables throughout, or
//!    the new parity's throughout;
//! 4. point the changed keys at their new identities, delete the removed ones;
//! 5. after a grace period, delete what nothing resolves to any more.
//!
//! Standby tables (`Snapshot::standby`, chosen by `compile::buffers`): a table that retires at
//! the flip is not deleted but kept, as it stands, and the next plan that must copy-on-write the
//! same endpoint side writes only the differences into it (step 1). That is safe because no
//! packet can read it by then: after the flip, only the new parity's entries are read, and they
//! do not point at it; the two barriers of step 5 outlast any program that read `ACTIVE` before
//! the flip; and the old parity's entries are deleted at the end of the plan, so the next plan
//! writes the inactive parity's entries afresh. The plan keeps each standby's content exactly
//! (retiring tables lose their transient cells first), so the delta it writes is exact.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv6Addr};

use flowgate_abi::{
    Active, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, EndpointInfo, EndpointKey,
    IpCacheKey, IpCacheValue, MODE_AUDIT, MODE_ENFORCE, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_PROTO, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP, PolicyKey,
    PolicyValue,
};
use ipnet::IpNet;

use crate::compile::{Cell, Entries, Snapshot};
use crate::model::{Direction, Protocol};

/// One write to the datapath's maps, in the order `diff` gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOp {
    PolicyUpdate(PolicyKey, PolicyValue),
    PolicyDelete(PolicyKey),
    IpCacheUpdate(IpCacheKey, IpCacheValue),
    IpCacheDelete(IpCacheKey),
    EndpointUpdate(EndpointKey, EndpointInfo),
    EndpointDelete(EndpointKey),
    /// The one atomic switch to the new snapshot.
    Activate(Active),
    /// Wait until no program can still be using what the previous ops replaced.
    Barrier,
}

/// Enforce or audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Audit,
}

pub fn proto_number(protocol: Protocol, ipv6: bool) -> u8 {
    match protocol {
        Protocol::Tcp => PROTO_TCP,
        Protocol::Udp => PROTO_UDP,
        Protocol::Sctp => PROTO_SCTP,
        Protocol::Icmp if ipv6 => PROTO_ICMPV6,
        Protocol::Icmp => PROTO_ICMP,
    }
}

pub fn policy_key(table: u32, cell: &Cell) -> PolicyKey {
    match cell.proto {
        None => PolicyKey::new(POLICY_PREFIX_ANY_PROTO, table, cell.identity, 0, 0),
        Some(p) => PolicyKey::new(
            POLICY_PREFIX_PROTO + u32::from(cell.port_bits),
            table,
            cell.identity,
            proto_number(p, false),
            cell.port,
        ),
    }
}

/// The IP-cache key of a network: IPv6 as is, IPv4 mapped into `::ffff:0:0/96`.
pub fn ipcache_key(net: &IpNet) -> IpCacheKey {
    match net {
        IpNet::V4(n) => IpCacheKey {
            prefixlen: 96 + u32::from(n.prefix_len()),
            addr: n.network().to_ipv6_mapped().octets(),
        },
        IpNet::V6(n) => IpCacheKey {
            prefixlen: u32::from(n.prefix_len()),
            addr: n.network().octets(),
        },
    }
}

fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The parity a snapshot's endpoint entries are written under.
pub fn parity(generation: u32) -> u8 {
    u8::from(generation & 1 == 1)
}

fn endpoint_info(
    snap: &Snapshot,
    state: &crate::compile::EndpointState,
    tables: &HashMap<u32, u32>,
) -> EndpointInfo {
    let mut flags = 0;
    if !state.ingress.isolated_by.is_empty() {
        flags |= ENDPOINT_INGRESS_ISOLATED;
    }
    if !state.egress.isolated_by.is_empty() {
        flags |= ENDPOINT_EGRESS_ISOLATED;
    }
    let t = |id: u32| tables.get(&id).copied().unwrap_or(id);
    EndpointInfo {
        endpoint_id: state.endpoint_id,
        generation: snap.generation,
        ingress_table: t(state.ingress.table),
        egress_table: t(state.egress.table),
        flags,
        _pad: [0; 3],
    }
}

/// Longest prefix of `cache` containing `net`.
fn resolve(cache: &BTreeMap<IpNet, u32>, net: &IpNet) -> Option<u32> {
    (0..=net.prefix_len()).rev().find_map(|len| {
        let n = IpNet::new(net.network(), len).ok()?.trunc();
        cache.get(&n).copied()
    })
}

/// The cells of one identity (cells are ordered by identity first).
fn identity_range(entries: &Entries, identity: u32) -> impl Iterator<Item = (&Cell, &u32)> {
    let first = Cell {
        identity,
        proto: None,
        port: 0,
        port_bits: 0,
    };
    entries
        .range(first..)
        .take_while(move |(c, _)| c.identity == identity)
}

fn cells_of(entries: &Entries, identity: u32) -> Vec<(Cell, u32)> {
    identity_range(entries, identity)
        .map(|(c, a)| (*c, *a))
        .collect()
}

/// The cells of `entries` whose identity is not in `known`: by identity when the caller knows
/// which identities are new (`only`), else by looking at every cell.
fn cells_outside<'a>(
    entries: &'a Entries,
    known: &'a BTreeMap<u32, crate::compile::IdentityContent>,
    only: Option<&'a BTreeSet<u32>>,
) -> Vec<(&'a Cell, &'a u32)> {
    match only {
        Some(ids) => ids
            .iter()
            .filter(|id| !known.contains_key(id))
            .flat_map(|id| identity_range(entries, *id))
            .collect(),
        None => entries
            .iter()
            .filter(|(c, _)| !known.contains_key(&c.identity))
            .collect(),
    }
}

fn relabel(cells: &[(Cell, u32)], identity: u32) -> Vec<(Cell, u32)> {
    cells
        .iter()
        .map(|(c, a)| (Cell { identity, ..*c }, *a))
        .collect()
}

/// The ops that turn table `table` from `current` into `wanted` (`None`: no cells).
fn write_delta(
    ops: &mut Vec<MapOp>,
    table: u32,
    current: Option<&Entries>,
    wanted: Option<&Entries>,
) {
    let empty = Entries::new();
    let (current, wanted) = (current.unwrap_or(&empty), wanted.unwrap_or(&empty));
    if current == wanted {
        return;
    }
    // Both are sorted: one pass over the two.
    let mut have = current.iter().peekable();
    let mut want = wanted.iter().peekable();
    loop {
        let order = match (have.peek(), want.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((h, _)), Some((w, _))) => h.cmp(w),
        };
        match order {
            std::cmp::Ordering::Less => {
                if let Some((cell, _)) = have.next() {
                    ops.push(MapOp::PolicyDelete(policy_key(table, cell)));
                }
            }
            std::cmp::Ordering::Greater => {
                if let Some((cell, attr)) = want.next() {
                    ops.push(MapOp::PolicyUpdate(
                        policy_key(table, cell),
                        PolicyValue { attribution: *attr },
                    ));
                }
            }
            std::cmp::Ordering::Equal => {
                if let (Some((_, a)), Some((cell, b))) = (have.next(), want.next())
                    && a != b
                {
                    ops.push(MapOp::PolicyUpdate(
                        policy_key(table, cell),
                        PolicyValue { attribution: *b },
                    ));
                }
            }
        }
    }
}

/// (old identity, new identity) of every IP-cache key whose resolution changes between two
/// caches: the pairs `diff` switches through transient identities.
pub fn identity_moves(
    old: &BTreeMap<IpNet, u32>,
    new: &BTreeMap<IpNet, u32>,
) -> BTreeSet<(u32, u32)> {
    let mut pairs = BTreeSet::new();
    if old.is_empty() {
        return pairs;
    }
    for key in old.keys().chain(new.keys()) {
        if let (Some(o), Some(n)) = (resolve(old, key), resolve(new, key))
            && o != n
        {
            pairs.insert((o, n));
        }
    }
    pairs
}

/// `identity_moves` restricted to the keys that may have changed (those of an incremental
/// compile: host keys only, so no other key's resolution moves with them).
pub fn identity_moves_at(
    old: &BTreeMap<IpNet, u32>,
    new: &BTreeMap<IpNet, u32>,
    keys: &BTreeSet<IpNet>,
) -> BTreeSet<(u32, u32)> {
    let mut pairs = BTreeSet::new();
    if old.is_empty() {
        return pairs;
    }
    for key in keys {
        if let (Some(o), Some(n)) = (resolve(old, key), resolve(new, key))
            && o != n
        {
            pairs.insert((o, n));
        }
    }
    pairs
}

/// Whether a table can stay in place through such moves: for each pair, the old table decides
/// the old identity exactly as the new table decides the new one.
pub fn moves_agree(old: &Entries, new: &Entries, moves: &BTreeSet<(u32, u32)>) -> bool {
    moves
        .iter()
        .all(|(o, n)| relabel(&cells_of(old, *o), 0) == relabel(&cells_of(new, *n), 0))
}

/// The ordered ops that take the datapath from `old` (what is in the maps, its standby tables
/// included; `Snapshot::default()` for empty maps) to `new`. When `new` was compiled
/// incrementally from `old`, only the IP-cache keys it changed are looked at. Table ids of `new` that must move to a fresh id (copy-on-write) are
/// renamed in the ops; `new`'s own ids are what the caller keeps for resolving events.
pub fn diff(old: &Snapshot, new: &Snapshot, mode: Mode) -> Vec<MapOp> {
    let first = old.endpoints.is_empty() && old.ipcache.is_empty();
    let mut early: Vec<MapOp> = Vec::new();
    let mut late: Vec<MapOp> = Vec::new();

    // Keys whose identity changes get a transient identity for the switch.
    // Only the keys an incremental compile changed can move, and only the identities it added
    // and removed come or go; otherwise every key and cell is looked at.
    let delta = new.delta_since(old);
    let (added, removed) = match delta {
        Some((_, added, removed)) => (Some(added), Some(removed)),
        None => (None, None),
    };
    let every_key: BTreeSet<IpNet>;
    let keys = match delta {
        Some((keys, _, _)) => keys,
        None => {
            every_key = old
                .ipcache
                .keys()
                .chain(new.ipcache.keys())
                .copied()
                .collect();
            &every_key
        }
    };
    let mut moved: Vec<(IpNet, u32, u32, u32)> = Vec::new(); // key, old id, new id, transient
    let mut inserts: Vec<(IpNet, u32)> = Vec::new();
    let mut removals: Vec<IpNet> = Vec::new();
    for key in keys {
        let old_id = resolve(&old.ipcache, key);
        let new_id = resolve(&new.ipcache, key);
        match (old_id, new_id, first) {
            (Some(o), Some(n), false) if o != n => {
                let t = old.fresh_identity(0).max(new.fresh_identity(0))
                    + u32::try_from(moved.len()).unwrap_or(u32::MAX);
                moved.push((*key, o, n, t));
            }
            _ => {
                if let Some(n) = new.ipcache.get(key) {
                    if old.ipcache.get(key) != Some(n) {
                        inserts.push((*key, *n));
                    }
                } else {
                    removals.push(*key);
                }
            }
        }
    }

    // Tables: in place where every common identity and every transient agrees, else fresh.
    let mut rename: HashMap<u32, u32> = HashMap::new();
    let mut fresh_count = 0;
    let old_copy = |entries: &Entries| -> Vec<(Cell, u32)> {
        moved
            .iter()
            .flat_map(|(_, o, _, t)| relabel(&cells_of(entries, *o), *t))
            .collect()
    };
    let new_copy = |entries: &Entries| -> Vec<(Cell, u32)> {
        moved
            .iter()
            .flat_map(|(_, _, n, t)| relabel(&cells_of(entries, *n), *t))
            .collect()
    };
    let mut in_place: BTreeSet<u32> = BTreeSet::new();
    for (id, entries) in &new.tables {
        let keep = old
            .tables
            .get(id)
            .is_some_and(|old_entries| old_copy(old_entries) == new_copy(entries));
        if keep {
            in_place.insert(*id);
            let new_identities = cells_outside(entries, &old.identities, added);
            for (cell, attr) in new_identities
                .into_iter()
                .chain(new_copy(entries).iter().map(|(c, a)| (c, a)))
            {
                early.push(MapOp::PolicyUpdate(
                    policy_key(*id, cell),
                    PolicyValue { attribution: *attr },
                ));
            }
            // The transients' cells as written above (in place, old and new copies agree).
            for (cell, _) in new_copy(entries) {
                late.push(MapOp::PolicyDelete(policy_key(*id, &cell)));
            }
            for (cell, _) in cells_outside(&old.tables[id], &new.identities, removed) {
                late.push(MapOp::PolicyDelete(policy_key(*id, cell)));
            }
        } else {
            // Copy-on-write: a table id nothing reads yet, written from what it holds now (its
            // standby content, see `compile::buffers`; nothing for a fresh id).
            let (target, current) = if old.tables.contains_key(id) {
                let fresh = old.fresh_table(0).max(new.fresh_table(0)) + fresh_count;
                fresh_count += 1;
                rename.insert(*id, fresh);
                (fresh, None)
            } else {
                (*id, old.standby().get(id))
            };
            let mut wanted = entries.clone();
            wanted.extend(new_copy(entries));
            write_delta(&mut early, target, current, Some(&wanted));
            for (cell, _) in new_copy(entries) {
                late.push(MapOp::PolicyDelete(policy_key(target, &cell)));
            }
        }
    }
    // Old tables that retire at the flip: transients decide as before until then. Afterwards
    // (nothing reads them) they become what the new snapshot keeps as standby, or go.
    for (id, entries) in &old.tables {
        if in_place.contains(id) {
            continue;
        }
        for (cell, attr) in old_copy(entries) {
            early.push(MapOp::PolicyUpdate(
                policy_key(*id, &cell),
                PolicyValue { attribution: attr },
            ));
        }
        for (cell, _) in old_copy(entries) {
            late.push(MapOp::PolicyDelete(policy_key(*id, &cell)));
        }
        write_delta(&mut late, *id, Some(entries), new.standby().get(id));
    }
    for (id, entries) in old.standby() {
        if !new.tables.contains_key(id) {
            write_delta(&mut late, *id, Some(entries), new.standby().get(id));
        }
    }
    for (id, entries) in new.standby() {
        if !old.tables.contains_key(id) && !old.standby().contains_key(id) {
            write_delta(&mut late, *id, None, Some(entries));
        }
    }

    let mut ops = early;
    for (key, _, _, t) in &moved {
        ops.push(MapOp::IpCacheUpdate(
            ipcache_key(key),
            IpCacheValue { identity: *t },
        ));
    }
    for (key, id) in &inserts {
        ops.push(MapOp::IpCacheUpdate(
            ipcache_key(key),
            IpCacheValue { identity: *id },
        ));
    }
    let p = parity(new.generation);
    for (ifindex, state) in &new.endpoints {
        let key = EndpointKey {
            ifindex: *ifindex,
            parity: p,
            _pad: [0; 3],
        };
        ops.push(MapOp::EndpointUpdate(
            key,
            endpoint_info(new, state, &rename),
        ));
    }
    let mode = match mode {
        Mode::Enforce => MODE_ENFORCE,
        Mode::Audit => MODE_AUDIT,
    };
    ops.push(MapOp::Activate(Active {
        generation: new.generation,
        parity: p,
        mode,
        _pad: [0; 2],
    }));
    ops.push(MapOp::Barrier);
    for (key, _, _, _) in &moved {
        match new.ipcache.get(key) {
            Some(id) => ops.push(MapOp::IpCacheUpdate(
                ipcache_key(key),
                IpCacheValue { identity: *id },
            )),
            None => ops.push(MapOp::IpCacheDelete(ipcache_key(key))),
        }
    }
    for key in &removals {
        ops.push(MapOp::IpCacheDelete(ipcache_key(key)));
    }
    ops.push(MapOp::Barrier);
    ops.extend(late);
    // The old parity's endpoint entries: no packet reads them after the flip and the barriers.
    let old_parity = parity(old.generation);
    for ifindex in old.endpoints.keys() {
        ops.push(MapOp::EndpointDelete(EndpointKey {
            ifindex: *ifindex,
            parity: old_parity,
            _pad: [0; 3],
        }));
    }
    ops
}

/// An in-memory model of the kernel maps, with the kernel's LPM semantics.
#[derive(Debug, Default, Clone)]
pub struct MapState {
    pub active: Option<Active>,
    pub endpoints: HashMap<EndpointKey, EndpointInfo>,
    pub ipcache: BTreeMap<IpCacheKey, IpCacheValue>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
    /// How many IP-cache keys have each prefix length (so a lookup tries only those).
    ipcache_lens: BTreeMap<u32, usize>,
    /// Deletes of keys that were not there (a correct plan has none).
    pub missing_deletes: u64,
}

/// What the kernel decides for one side of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// No endpoint entry for the interface: not a pod flowgate manages.
    Unmanaged,
    NotIsolated {
        generation: u32,
    },
    Allow {
        generation: u32,
        attribution: u32,
    },
    Deny {
        generation: u32,
    },
}

impl MapState {
    pub fn apply(&mut self, op: &MapOp) {
        match op {
            MapOp::PolicyUpdate(k, v) => {
                self.policy.insert(*k, *v);
            }
            MapOp::PolicyDelete(k) => {
                if self.policy.remove(k).is_none() {
                    self.missing_deletes += 1;
                }
            }
            MapOp::IpCacheUpdate(k, v) => {
                if self.ipcache.insert(*k, *v).is_none() {
                    *self.ipcache_lens.entry(k.prefixlen).or_default() += 1;
                }
            }
            MapOp::IpCacheDelete(k) => {
                let removed = self.ipcache.remove(k).is_some();
                if !removed {
                    self.missing_deletes += 1;
                }
                if removed && let Some(n) = self.ipcache_lens.get_mut(&k.prefixlen) {
                    *n -= 1;
                    if *n == 0 {
                        self.ipcache_lens.remove(&k.prefixlen);
                    }
                }
            }
            MapOp::EndpointUpdate(k, v) => {
                self.endpoints.insert(*k, *v);
            }
            MapOp::EndpointDelete(k) => {
                if self.endpoints.remove(k).is_none() {
                    self.missing_deletes += 1;
                }
            }
            MapOp::Activate(a) => self.active = Some(*a),
            MapOp::Barrier => {}
        }
    }

    /// The identity of a remote address: longest IP-cache prefix.
    pub fn identity(&self, ip: IpAddr) -> Option<u32> {
        let addr = mapped(ip);
        self.ipcache_lens.keys().rev().find_map(|&len| {
            let key = IpCacheKey {
                prefixlen: len,
                addr: mask(addr, len),
            };
            self.ipcache.get(&key).map(|v| v.identity)
        })
    }

    /// The lookup the kernel program does for one side of a packet.
    pub fn lookup(
        &self,
        ifindex: u32,
        direction: Direction,
        remote: IpAddr,
        protocol: Protocol,
        port: Option<u16>,
    ) -> Lookup {
        let parity = self.active.map_or(0, |a| a.parity);
        let Some(ep) = self.endpoints.get(&EndpointKey {
            ifindex,
            parity,
            _pad: [0; 3],
        }) else {
            return Lookup::Unmanaged;
        };
        let (flag, table) = match direction {
            Direction::Ingress => (ENDPOINT_INGRESS_ISOLATED, ep.ingress_table),
            Direction::Egress => (ENDPOINT_EGRESS_ISOLATED, ep.egress_table),
        };
        if ep.flags & flag == 0 {
            return Lookup::NotIsolated {
                generation: ep.generation,
            };
        }
        let identity = self.identity(remote).unwrap_or(0);
        let proto = proto_number(protocol, remote.is_ipv6());
        let port = port.unwrap_or(0);
        let full = PolicyKey::new(
            flowgate_abi::POLICY_PREFIX_FULL,
            table,
            identity,
            proto,
            port,
        );
        let hit = (POLICY_PREFIX_ANY_PROTO..=flowgate_abi::POLICY_PREFIX_FULL)
            .rev()
            .filter(|len| *len == POLICY_PREFIX_ANY_PROTO || *len >= POLICY_PREFIX_PROTO)
            .find_map(|len| self.policy.get(&mask_policy(full, len)));
        match hit {
            Some(v) => Lookup::Allow {
                generation: ep.generation,
                attribution: v.attribution,
            },
            None => Lookup::Deny {
                generation: ep.generation,
            },
        }
    }
}

fn mask(addr: [u8; 16], len: u32) -> [u8; 16] {
    let bits = u128::from_be_bytes(addr);
    let masked = if len == 0 {
        0
    } else {
        bits & (u128::MAX << (128 - len))
    };
    masked.to_be_bytes()
}

fn mask_policy(full: PolicyKey, len: u32) -> PolicyKey {
    let mut data = [0u8; 12];
    data[..4].copy_from_slice(&full.table);
    data[4..8].copy_from_slice(&full.identity);
    data[8] = full.proto;
    data[10..].copy_from_slice(&full.port);
    let bits = u128::from_be_bytes({
        let mut b = [0u8; 16];
        b[..12].copy_from_slice(&data);
        b
    });
    let masked = (bits & (u128::MAX << (128 - len))).to_be_bytes();
    PolicyKey {
        prefixlen: len,
        table: [masked[0], masked[1], masked[2], masked[3]],
        identity: [masked[4], masked[5], masked[6], masked[7]],
        proto: masked[8],
        _pad: masked[9],
        port: [masked[10], masked[11]],
    }
}

/// The IPv4-mapped form of an address, as the IP cache stores it.
pub fn ipcache_addr(ip: IpAddr) -> Ipv6Addr {
    Ipv6Addr::from(mapped(ip))
}
