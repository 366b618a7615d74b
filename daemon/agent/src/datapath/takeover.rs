//! The first apply after adopting a pinned datapath (`Datapath::plan` calls `plan` here).
//!
//! The adopted maps hold the previous agent's snapshot, but this agent's first compile numbers
//! tables and identities from 1 again: the same ids with other meanings. Writing that snapshot
//! over the live one would change verdicts one op at a time. So the plan has two parts:
//!
//! 1. **Renumber** the live state into ids the new snapshot cannot use (2^31 and up), deciding
//!    every flow exactly as before at every op: copies of the live tables under new table ids,
//!    holding the cells of both the old and the new identity ids; then each endpoint entry
//!    (one atomic hash update each) to the copies; then each IP-cache key to its new identity;
//!    after a barrier, the old cells go. Entries nothing reads (the inactive parity's endpoints,
//!    tables no live endpoint uses) are deleted.
//! 2. **Switch** with `flowgate_policy::maps::diff`, the renumbered state as its old snapshot: the
//!    same ordered plan as any policy update, with its guarantee (every flow is decided by the
//!    old snapshot or by the new one, on both sides together, after every op).
//!
//! The new snapshot's generation continues the adopted one (connection tracking and deny
//! deduplication compare generations, so they must never repeat).

use std::collections::{BTreeMap, BTreeSet};

use flowgate_abi::{
    Active, EndpointInfo, EndpointKey, IpCacheKey, IpCacheValue, POLICY_PREFIX_ANY_PROTO,
    POLICY_PREFIX_FULL, POLICY_PREFIX_PROTO, PROTO_ICMP, PROTO_SCTP, PROTO_TCP, PROTO_UDP,
    PolicyKey, PolicyValue,
};
use flowgate_policy::compile::{Cell, EndpointState, IdentityContent, SideState, Snapshot};
use flowgate_policy::maps::{MapOp, Mode, diff, parity};
use flowgate_policy::model::Protocol;

/// Renumbered ids start here; a fresh compile's ids (counted from 1) stay below.
pub const RENUMBERED_FROM: u32 = 1 << 31;

/// The policy maps as the kernel holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveMaps {
    pub active: Active,
    pub endpoints: BTreeMap<EndpointKey, EndpointInfo>,
    pub ipcache: BTreeMap<IpCacheKey, IpCacheValue>,
    pub policy: BTreeMap<PolicyKey, PolicyValue>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TakeoverError {
    #[error("the adopted maps use {kind} ids up to {max}: no room to renumber them")]
    IdsExhausted { kind: &'static str, max: u32 },
    #[error(
        "the new snapshot uses {kind} ids up to {max}, into the renumbered range (2^31 and up)"
    )]
    SnapshotTooLarge { kind: &'static str, max: u32 },
    #[error("the adopted policy map holds a key this agent cannot read: {key:?}")]
    UnknownPolicyKey { key: PolicyKey },
    #[error("the adopted IP cache holds a key this agent cannot read: {key:?}")]
    UnknownIpCacheKey { key: IpCacheKey },
}

/// The ops that take the kernel maps from `live` to `next`, never deciding a flow by anything
/// but the live snapshot or `next`. Sets `next.generation` to follow the live one.
pub fn plan(live: &LiveMaps, next: &mut Snapshot, mode: Mode) -> Result<Vec<MapOp>, TakeoverError> {
    let parity_now = live.active.parity;
    let in_force: Vec<(&EndpointKey, &EndpointInfo)> = live
        .endpoints
        .iter()
        .filter(|(k, _)| k.parity == parity_now)
        .collect();
    let tables: BTreeSet<u32> = in_force
        .iter()
        .flat_map(|(_, e)| [e.ingress_table, e.egress_table])
        .filter(|t| *t != 0)
        .collect();
    let cells: Vec<(&PolicyKey, &PolicyValue)> = live
        .policy
        .iter()
        .filter(|(k, _)| tables.contains(&k.table()))
        .collect();
    let identities: BTreeSet<u32> = live
        .ipcache
        .values()
        .map(|v| v.identity)
        .chain(cells.iter().map(|(k, _)| k.identity()))
        .collect();
    // Fresh ids go above every id anywhere in the maps, leftovers included.
    let every_table = live
        .policy
        .keys()
        .map(PolicyKey::table)
        .chain(tables.iter().copied());
    let every_identity = live
        .policy
        .keys()
        .map(PolicyKey::identity)
        .chain(identities.iter().copied());
    let tmap = renumber(&tables, every_table, "table")?;
    let imap = renumber(&identities, every_identity, "identity")?;
    let table = |id: u32| tmap.get(&id).copied().unwrap_or(id);
    let identity = |id: u32| imap.get(&id).copied().unwrap_or(id);

    let mut ops = Vec::new();
    // Nothing reads the inactive parity's entries (an interrupted update's leftovers).
    for key in live.endpoints.keys().filter(|k| k.parity != parity_now) {
        ops.push(MapOp::EndpointDelete(*key));
    }
    // Copies of the live tables under their new ids, knowing the old and the new identities.
    for (key, value) in &cells {
        let (t, i) = (table(key.table()), identity(key.identity()));
        if t != key.table() {
            ops.push(MapOp::PolicyUpdate(
                with_ids(key, t, key.identity()),
                **value,
            ));
        }
        if i != key.identity() {
            ops.push(MapOp::PolicyUpdate(with_ids(key, t, i), **value));
        }
    }
    // Each endpoint to its copies: one atomic update, equal verdicts before and after.
    for (key, info) in &in_force {
        let moved = EndpointInfo {
            ingress_table: table(info.ingress_table),
            egress_table: table(info.egress_table),
            ..**info
        };
        if moved != **info {
            ops.push(MapOp::EndpointUpdate(**key, moved));
        }
    }
    // Each address to its new identity, which every table now decides like the old one.
    for (key, value) in &live.ipcache {
        let i = identity(value.identity);
        if i != value.identity {
            ops.push(MapOp::IpCacheUpdate(*key, IpCacheValue { identity: i }));
        }
    }
    ops.push(MapOp::Barrier);
    // What nothing reads any more: the old ids' cells, and tables no endpoint in force uses.
    for key in live.policy.keys() {
        let (t, i) = (table(key.table()), identity(key.identity()));
        if !tables.contains(&key.table()) || t != key.table() || i != key.identity() {
            ops.push(MapOp::PolicyDelete(*key));
        }
        if tables.contains(&key.table()) && t != key.table() && i != key.identity() {
            ops.push(MapOp::PolicyDelete(with_ids(key, t, key.identity())));
        }
    }

    let renumbered = renumbered_snapshot(live, &in_force, &cells, table, identity)?;
    next.generation = following_generation(live.active.generation, parity_now);
    let bound = u32::try_from(renumbered.ipcache.len() + next.ipcache.len()).unwrap_or(u32::MAX);
    for (kind, max) in [
        ("identity", next.fresh_identity(bound)),
        ("table", next.fresh_table(bound)),
    ] {
        if max >= RENUMBERED_FROM {
            return Err(TakeoverError::SnapshotTooLarge { kind, max });
        }
    }
    ops.extend(diff(&renumbered, next, mode));
    Ok(ops)
}

/// The first generation after `generation` whose parity is not `parity_now` (and not 0, which
/// the programs read as "nothing applied").
pub fn following_generation(generation: u32, parity_now: u8) -> u32 {
    let mut g = generation.wrapping_add(1);
    while g == 0 || parity(g) == parity_now {
        g = g.wrapping_add(1);
    }
    g
}

/// New ids for the ids below `RENUMBERED_FROM` (0 and ids already above stay), above every id in
/// `seen`.
fn renumber(
    ids: &BTreeSet<u32>,
    seen: impl Iterator<Item = u32>,
    kind: &'static str,
) -> Result<BTreeMap<u32, u32>, TakeoverError> {
    let max = seen.max().unwrap_or(0);
    let mut fresh = max.max(RENUMBERED_FROM - 1);
    let mut out = BTreeMap::new();
    for id in ids.iter().filter(|id| **id != 0 && **id < RENUMBERED_FROM) {
        fresh = fresh
            .checked_add(1)
            .ok_or(TakeoverError::IdsExhausted { kind, max })?;
        out.insert(*id, fresh);
    }
    Ok(out)
}

fn with_ids(key: &PolicyKey, table: u32, identity: u32) -> PolicyKey {
    PolicyKey {
        table: table.to_be_bytes(),
        identity: identity.to_be_bytes(),
        ..*key
    }
}

/// The live state after renumbering, as the old snapshot `diff` takes: only what `diff` reads of
/// an old snapshot is filled in (endpoint keys and tables, IP cache, identities, tables' cells).
fn renumbered_snapshot(
    live: &LiveMaps,
    in_force: &[(&EndpointKey, &EndpointInfo)],
    cells: &[(&PolicyKey, &PolicyValue)],
    table: impl Fn(u32) -> u32,
    identity: impl Fn(u32) -> u32,
) -> Result<Snapshot, TakeoverError> {
    let mut snap = Snapshot::default();
    // `diff` reads the old generation for its parity only.
    snap.generation = if parity(live.active.generation) == live.active.parity {
        live.active.generation
    } else {
        live.active.generation.wrapping_add(1)
    };
    for (key, info) in in_force {
        let side = |t: u32| SideState {
            isolated_by: Vec::new(),
            table: table(t),
        };
        snap.endpoints.insert(
            key.ifindex,
            EndpointState {
                pod: String::new(),
                endpoint_id: info.endpoint_id,
                ingress: side(info.ingress_table),
                egress: side(info.egress_table),
            },
        );
        for t in [info.ingress_table, info.egress_table] {
            if t != 0 {
                snap.tables.entry(table(t)).or_default();
            }
        }
    }
    // Networks are parsed from text: the agent names no `ipnet` type itself.
    for (key, value) in &live.ipcache {
        let net = network_text(key)
            .parse()
            .map_err(|_| TakeoverError::UnknownIpCacheKey { key: *key })?;
        let id = identity(value.identity);
        snap.ipcache.insert(net, id);
        snap.identities.insert(id, IdentityContent::Region(net));
    }
    for (key, value) in cells {
        let id = identity(key.identity());
        let cell = cell_of(key, id).ok_or(TakeoverError::UnknownPolicyKey { key: **key })?;
        snap.tables
            .entry(table(key.table()))
            .or_default()
            .insert(cell, value.attribution);
        if let std::collections::btree_map::Entry::Vacant(slot) = snap.identities.entry(id) {
            let anywhere = "::/0"
                .parse()
                .map_err(|_| TakeoverError::UnknownPolicyKey { key: **key })?;
            slot.insert(IdentityContent::Region(anywhere));
        }
    }
    Ok(snap)
}

/// `a.b.c.d/len` for an IPv4-mapped key (as `maps::ipcache_key` writes IPv4), else IPv6.
fn network_text(key: &IpCacheKey) -> String {
    let v6 = std::net::Ipv6Addr::from(key.addr);
    match v6.to_ipv4_mapped() {
        Some(v4) if key.prefixlen >= 96 => format!("{v4}/{}", key.prefixlen - 96),
        _ => format!("{v6}/{}", key.prefixlen),
    }
}

/// The table cell a policy key stands for (the inverse of `maps::policy_key`).
fn cell_of(key: &PolicyKey, identity: u32) -> Option<Cell> {
    if key.prefixlen == POLICY_PREFIX_ANY_PROTO {
        return Some(Cell {
            identity,
            proto: None,
            port: 0,
            port_bits: 0,
        });
    }
    if !(POLICY_PREFIX_PROTO..=POLICY_PREFIX_FULL).contains(&key.prefixlen) {
        return None;
    }
    let proto = match key.proto {
        PROTO_TCP => Protocol::Tcp,
        PROTO_UDP => Protocol::Udp,
        PROTO_SCTP => Protocol::Sctp,
        PROTO_ICMP => Protocol::Icmp,
        _ => return None,
    };
    Some(Cell {
        identity,
        proto: Some(proto),
        port: key.port(),
        port_bits: u8::try_from(key.prefixlen - POLICY_PREFIX_PROTO).ok()?,
    })
}

#[cfg(test)]
#[path = "takeover_tests.rs"]
mod tests;
