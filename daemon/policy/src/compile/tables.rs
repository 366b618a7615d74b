//! A table's cells: for each identity, the protocol/port partition of the rules that match it
//! and the (policy, rule) list that allows each part. Computed for all identities (a new
//! table) or for some (the identities a change added to a table that is otherwise the same).

use std::collections::BTreeSet;

use crate::cluster::Changes;
use crate::evaluate::{PolicyRef, RuleRef};
use crate::model::{Direction, NamespaceScope, Peer, Policy, PortMatch, Protocol};

use super::{Cell, Entries, IdentityContent, Snapshot, TableSignature};

/// The protocols with ports (ICMP has none: only rules without ports allow it).
const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

/// (name, protocol, port) of a pod's containerPorts.
pub(super) type PortList = Vec<(Option<String>, Protocol, u16)>;

/// Whether a peer matches every address of an identity.
pub fn peer_matches_identity(peer: &Peer, content: &IdentityContent) -> bool {
    match (peer, content) {
        (Peer::IpBlock(block), content) => {
            let region = match content {
                IdentityContent::Region(region) => region,
                IdentityContent::Pod(p) => &p.region,
            };
            block.cidr.contains(region) && !block.except.iter().any(|e| e.contains(region))
        }
        (Peer::Pods { .. }, IdentityContent::Region(_)) => false,
        (Peer::Pods { namespaces, pods }, IdentityContent::Pod(p)) => {
            let in_scope = match namespaces {
                NamespaceScope::Own(ns) => *ns == p.namespace,
                NamespaceScope::Selected(sel) => sel.matches(&p.namespace_labels),
            };
            in_scope && pods.matches(&p.labels)
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

/// Whether any rule of `policy` in `direction` matches an identity.
fn matches_any(policy: &Policy, direction: Direction, content: &IdentityContent) -> bool {
    policy
        .rules(direction)
        .iter()
        .any(|rule| match &rule.peers {
            None => true,
            Some(peers) => peers.iter().any(|p| peer_matches_identity(p, content)),
        })
}

impl Snapshot {
    /// The cells of the table of `signature`, and the previous table's id when they are that
    /// table's with only identities added and removed. With the previous snapshot and what
    /// changed since, the previous table of the same signature is the start: identities gone
    /// lose their cells, new ones gain theirs, and a changed policy's rules are worked out again
    /// only for the identities its old or its new rules match (no other identity's cells
    /// depend on it). Otherwise every identity is worked out.
    pub(super) fn table_for(
        &mut self,
        signature: &TableSignature,
        isolating: &[&Policy],
        previous: Option<(&Snapshot, &Changes)>,
        added: &[u32],
        removed: &BTreeSet<u32>,
    ) -> (Entries, Option<u32>) {
        let Some(direction) = signature.direction else {
            return (Entries::new(), None);
        };
        let start = previous.and_then(|(prev, changes)| {
            let id = prev.signatures.get(signature)?;
            Some((prev, changes, *id, prev.tables.get(id)?))
        });
        let Some((prev, changes, prev_id, old)) = start else {
            return (
                self.whole_table(isolating, direction, &signature.own_ports),
                None,
            );
        };
        let mut affected: BTreeSet<u32> = BTreeSet::new();
        for policy in isolating {
            let key = (policy.namespace.clone(), policy.name.clone());
            if !changes.policies.contains(&key) {
                continue;
            }
            let name = PolicyRef {
                namespace: key.0,
                name: key.1,
            };
            let Some(before) = prev.policies.get(&name) else {
                // Not known as it was: work the whole table out.
                return (
                    self.whole_table(isolating, direction, &signature.own_ports),
                    None,
                );
            };
            if before.rules(direction) == policy.rules(direction) {
                continue;
            }
            for (id, content) in &self.identities {
                if matches_any(before, direction, content)
                    || matches_any(policy, direction, content)
                {
                    affected.insert(*id);
                }
            }
        }
        let mut entries = old.clone();
        if !removed.is_empty() || !affected.is_empty() {
            entries.retain(|cell, _| {
                !removed.contains(&cell.identity) && !affected.contains(&cell.identity)
            });
        }
        let reused = affected.is_empty().then_some(prev_id);
        affected.extend(added.iter().copied());
        let ids: Vec<u32> = affected.into_iter().collect();
        self.table_entries_for(
            &mut entries,
            &ids,
            isolating,
            direction,
            &signature.own_ports,
        );
        (entries, reused)
    }

    /// The cells of every identity.
    fn whole_table(
        &mut self,
        isolating: &[&Policy],
        direction: Direction,
        owner_ports: &PortList,
    ) -> Entries {
        let mut entries = Entries::new();
        let ids: Vec<u32> = self.identities.keys().copied().collect();
        self.table_entries_for(&mut entries, &ids, isolating, direction, owner_ports);
        entries
    }

    /// Adds to `entries` the cells of the given identities (in id order, so attribution ids are
    /// given out in the order a compile of every identity gives them).
    pub(super) fn table_entries_for(
        &mut self,
        entries: &mut Entries,
        identities: &[u32],
        isolating: &[&Policy],
        direction: Direction,
        owner_ports: &PortList,
    ) {
        for &identity in identities {
            let Some(content) = self.identities.get(&identity).cloned() else {
                continue;
            };
            self.identity_cells(
                entries,
                identity,
                &content,
                isolating,
                direction,
                owner_ports,
            );
        }
    }

    fn identity_cells(
        &mut self,
        entries: &mut Entries,
        identity: u32,
        content: &IdentityContent,
        isolating: &[&Policy],
        direction: Direction,
        owner_ports: &PortList,
    ) {
        // Rules matching this identity, with the first matching peer index.
        let mut matched: Vec<(RuleRef, &crate::model::Rule)> = Vec::new();
        for policy in isolating {
            for (index, rule) in policy.rules(direction).iter().enumerate() {
                let peer = match &rule.peers {
                    None => Some(None),
                    Some(peers) => peers
                        .iter()
                        .position(|p| peer_matches_identity(p, content))
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
            return;
        }
        let dst_ports: &[(Option<String>, Protocol, u16)] = match (direction, content) {
            (Direction::Ingress, _) => owner_ports,
            (Direction::Egress, IdentityContent::Pod(p)) => &p.ports,
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

    fn intern_attribution(&mut self, refs: &[RuleRef]) -> u32 {
        if let Some(id) = self.attribution_ids.get(refs) {
            return *id;
        }
        let id = self.next_attribution;
        self.next_attribution += 1;
        self.attribution_ids.insert(refs.to_vec(), id);
        id
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
