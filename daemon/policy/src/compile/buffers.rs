//! Which table id each table of a new snapshot takes, and the standby table it keeps beside it.
//!
//! A table that decides every identity both snapshots know as before (and every identity move,
//! see `maps::diff`) keeps its id: its changes are written in place. Any other table must not be
//! written while packets read it, so it goes to another id (copy-on-write); rather than a fresh
//! id written in full, it takes its *standby*: the id it had two generations ago (or a copy
//! made when it was first written), still in the maps, which nothing reads once the flip to the
//! previous generation and its barriers are past. `diff` writes only the cells in which the
//! standby differs from the new table, and the table it replaces becomes the new standby, as it
//! stands. So a change costs map writes in proportion to what it changes, not to table size.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::model::Direction;

use super::{Entries, Snapshot, TableSignature, agree};

/// How a table got its id.
enum Placement {
    /// The previous table of the endpoint side, changed in place.
    InPlace,
    /// The previous table's standby; the previous table (if any) retires.
    FromStandby(u32),
    /// A fresh id; the previous table of the side (if any) retires.
    Fresh(Option<u32>),
}

/// Gives each signature's entries a table id in `snap`, and each table a standby.
pub(super) fn place_tables(
    snap: &mut Snapshot,
    previous: Option<&Snapshot>,
    sides: &[(u32, Direction, &TableSignature)],
    mut by_signature: HashMap<TableSignature, Entries>,
    reused_from: &HashMap<TableSignature, u32>,
) {
    let moves = match previous {
        Some(p) => match snap.changed_keys_since(p) {
            Some(keys) => crate::maps::identity_moves_at(&p.ipcache, &snap.ipcache, keys),
            None => crate::maps::identity_moves(&p.ipcache, &snap.ipcache),
        },
        None => BTreeSet::new(),
    };
    let mut placed: Vec<(TableSignature, u32, Placement)> = Vec::new();
    let mut active: BTreeSet<u32> = BTreeSet::new();
    for &(ifindex, direction, signature) in sides {
        if signature.direction.is_none() || placed.iter().any(|(s, _, _)| s == signature) {
            continue;
        }
        let Some(entries) = by_signature.get(signature) else {
            continue;
        };
        let before = previous.and_then(|p| {
            let t = p.endpoints.get(&ifindex)?.side(direction).table;
            p.tables.get(&t).map(|old| (p, t, old))
        });
        let (id, placement) = match before {
            Some((p, t, old))
                if !active.contains(&t)
                    && (reused_from.get(signature) == Some(&t) || agree(old, entries, p, snap))
                    && crate::maps::moves_agree(old, entries, &moves) =>
            {
                (t, Placement::InPlace)
            }
            Some((p, t, _)) => match p.partners.get(&t) {
                Some(b) if p.standby.contains_key(b) && !active.contains(b) => {
                    (*b, Placement::FromStandby(t))
                }
                _ => (snap.take_table_id(), Placement::Fresh(Some(t))),
            },
            None => (snap.take_table_id(), Placement::Fresh(None)),
        };
        active.insert(id);
        placed.push((signature.clone(), id, placement));
    }

    // Standbys, once every active id is known (a table still in use is nobody's standby).
    let mut standby_taken: BTreeSet<u32> = BTreeSet::new();
    for (signature, id, placement) in &placed {
        let free = |b: &u32, taken: &BTreeSet<u32>| !active.contains(b) && !taken.contains(b);
        let kept: Option<(u32, Entries)> = previous.and_then(|p| {
            let b = match placement {
                Placement::InPlace => *p.partners.get(id)?,
                Placement::FromStandby(t) | Placement::Fresh(Some(t)) => *t,
                Placement::Fresh(None) => return None,
            };
            let content = p.tables.get(&b).or_else(|| p.standby.get(&b))?;
            free(&b, &standby_taken).then(|| (b, content.clone()))
        });
        let (b, content) = match kept {
            Some(k) => k,
            // A copy of the table itself, written after the switch.
            None => (
                snap.take_table_id(),
                by_signature.get(signature).cloned().unwrap_or_default(),
            ),
        };
        standby_taken.insert(b);
        snap.partners.insert(*id, b);
        snap.standby.insert(b, content);
    }

    let mut ids: HashMap<TableSignature, u32> = HashMap::new();
    for (signature, id, _) in placed {
        if let Some(entries) = by_signature.remove(&signature) {
            snap.tables.insert(id, entries);
        }
        ids.insert(signature, id);
    }
    snap.signatures = ids;
}

impl Snapshot {
    fn take_table_id(&mut self) -> u32 {
        let id = self.next_table;
        self.next_table += 1;
        id
    }

    /// Tables in the maps that the snapshot does not use, by id: each one's content (the
    /// standby copies a changed table is written into next time, see `compile::buffers`).
    pub fn standby(&self) -> &BTreeMap<u32, Entries> {
        &self.standby
    }
}
