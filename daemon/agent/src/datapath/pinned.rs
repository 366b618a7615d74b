//! The datapath in pinned mode (`LoadOptions::pin_dir`): loading onto the pins (adopting a
//! compatible datapath, replacing an incompatible one, or pinning a fresh one), switching each
//! interface's pinned link to this agent's programs, the replaced datapath's switch after the
//! first apply, the loss record, and removing pins. The layout on bpffs is in `pin.rs`.
//!
//! Enforcement never lapses across a restart:
//! - a crashed or stopped agent leaves its links (and legacy filters) attached: the kernel keeps
//!   the programs, and through them the maps, for as long as the pins exist;
//! - an adopting agent reuses every pinned map (policy, connection tracking, deny deduplication,
//!   the ring buffer with the events nobody read yet, loss counters), loads its programs against
//!   them, and replaces each link's program in one `BPF_LINK_UPDATE` (a tc filter in one
//!   replace): before it the old program decides, after it the new one, with the same maps;
//! - its first apply takes over the snapshot in the maps (`takeover.rs`);
//! - an incompatible datapath is replaced without a gap: its links keep the old programs and
//!   maps until this agent's first apply has filled the new maps, then switch.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use aya::EbpfLoader;
use aya::maps::{Array, MapData};
use aya::programs::links::FdLink;
use aya::programs::tc::{NlOptions, SchedClassifierLink};
use aya::programs::{SchedClassifier, TcAttachType};
use flowgate_abi::{EndpointInfo, LOST_SLOTS, MODE_AUDIT, PinMeta, maps};
use flowgate_policy::maps::Mode;

use super::attach::{self, Attached, TcMode};
use super::pin::{self, Found, Incompatible, LinkPin, Pins};
use super::{Datapath, DatapathError, LoadOptions, program_mut};

/// What a pinned load found and adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adopted {
    pub pin_dir: PathBuf,
    /// The generation in force (`FG_ACTIVE`); this agent's first apply continues from it.
    pub generation: u32,
    pub mode: Mode,
    /// The endpoint entries in force: (ifindex, entry).
    pub endpoints: Vec<(u32, EndpointInfo)>,
    /// The link pins found (`<ifindex>-ingress`, `<ifindex>-egress`).
    pub links: Vec<String>,
    /// The size of the adopted ring buffer (kept whatever `LoadOptions::ring_bytes` says).
    pub ring_bytes: u32,
    /// Ring-buffer losses (allow, deny, audit) no agent has reported: while no agent read the
    /// ring, it filled up. For the `restart` gap record.
    pub unreported_lost: [u64; LOST_SLOTS as usize],
}

/// An incompatible pinned datapath that this one replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    pub pin_dir: PathBuf,
    pub reason: Incompatible,
}

impl fmt::Display for Replaced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the datapath pinned at {} is incompatible: {}. Replacing it: its programs keep \
             enforcing its last policy until this agent's first apply, then each interface \
             switches to the new programs; connection tracking starts empty (established \
             connections are decided again as new ones), and the events it had not handed over \
             are lost",
            self.pin_dir.display(),
            self.reason
        )
    }
}

#[derive(Debug)]
enum State {
    Fresh,
    Adopted(Adopted),
    Replaced(Replaced),
}

/// A link of the replaced datapath, switched once the new maps hold a snapshot.
#[derive(Debug)]
struct Deferred {
    iface: String,
    prog: &'static str,
    attach: TcAttachType,
    mode: TcMode,
    path: PathBuf,
    netns: File,
}

/// The pinned part of a `Datapath`.
pub(super) struct Pinned {
    pins: Pins,
    /// The record; `None` until a replacing datapath has switched.
    meta: Option<Array<MapData, PinMeta>>,
    state: State,
    takeover: bool,
    /// The generation the takeover `plan` switches to.
    pub(super) planned: Option<u32>,
    deferred: Vec<Deferred>,
}

impl Pinned {
    pub(super) fn takeover_pending(&self) -> bool {
        self.takeover
    }
}

/// `Datapath::load` with a pin directory.
pub(super) fn load(options: &LoadOptions, dir: &Path) -> Result<Datapath, DatapathError> {
    let pins = Pins::open(dir, options.lock_wait)?;
    let found = pins.inspect();
    let ring_bytes = match &found {
        Found::Compatible { ring_bytes, .. } => *ring_bytes,
        Found::Nothing | Found::Incompatible(_) => options.ring_bytes,
    };
    if let Found::Incompatible(_) = &found {
        // The old maps live on through the old programs, which the links keep.
        pins.remove_maps()?;
    }
    let mut loader = EbpfLoader::new();
    loader.map_max_entries(maps::EVENTS, ring_bytes);
    for m in &pin::LAYOUT {
        loader.map_pin_path(m.name, pins.map_path(m.name));
    }
    let mut dp = Datapath::load_with(&mut loader)?;
    pins.check_maps().map_err(|e| DatapathError::LayoutTable {
        detail: e.to_string(),
    })?;
    let links = pins.link_names()?;
    let (state, meta, takeover) = match found {
        Found::Nothing => {
            let meta = pins.write_meta(pin::our_meta(dp.reported_lost))?;
            (State::Fresh, Some(meta), false)
        }
        Found::Compatible { meta, ring_bytes } => {
            let live = dp.read_live()?;
            let now = dp.lost_events()?;
            let unreported_lost: [u64; LOST_SLOTS as usize] =
                std::array::from_fn(|i| now[i].saturating_sub(meta.reported_lost[i]));
            dp.reported_lost = now;
            let adopted = Adopted {
                pin_dir: dir.to_path_buf(),
                generation: live.active.generation,
                mode: if live.active.mode == MODE_AUDIT {
                    Mode::Audit
                } else {
                    Mode::Enforce
                },
                endpoints: live
                    .endpoints
                    .iter()
                    .filter(|(k, _)| k.parity == live.active.parity)
                    .map(|(k, v)| (k.ifindex, *v))
                    .collect(),
                links,
                ring_bytes,
                unreported_lost,
            };
            (State::Adopted(adopted), Some(pins.open_meta()?), true)
        }
        Found::Incompatible(reason) => {
            let replaced = Replaced {
                pin_dir: dir.to_path_buf(),
                reason,
            };
            (State::Replaced(replaced), None, false)
        }
    };
    dp.pinned = Some(Pinned {
        pins,
        meta,
        state,
        takeover,
        planned: None,
        deferred: Vec::new(),
    });
    // The adopted losses are reported by the `restart` gap record: the record says so now.
    dp.record_reported_lost()?;
    Ok(dp)
}

impl Datapath {
    /// The pinned datapath this one adopted, if it did.
    pub fn adopted(&self) -> Option<&Adopted> {
        match &self.pinned.as_ref()?.state {
            State::Adopted(a) => Some(a),
            State::Fresh | State::Replaced(_) => None,
        }
    }

    /// The incompatible pinned datapath this one replaces, if any (its `Display` is the log line).
    pub fn replaced(&self) -> Option<&Replaced> {
        match &self.pinned.as_ref()?.state {
            State::Replaced(r) => Some(r),
            State::Fresh | State::Adopted(_) => None,
        }
    }

    /// The pin directory, if pinned.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pinned.as_ref().map(|p| p.pins.dir())
    }

    /// Removes every pinned link and legacy filter, and every pin, under `dir` (uninstall;
    /// `flowgate agent --cleanup`). Refuses while an agent holds `dir`. Legacy filters are
    /// deleted in the calling thread's network namespace.
    pub fn unpin_all(dir: &Path) -> Result<pin::Unpinned, DatapathError> {
        pin::unpin_all(dir)
    }

    /// Detaches and unpins the links of interfaces for which `keep(ifindex)` is false (pods that
    /// went away while no agent ran, or since); returns their pin names. Legacy filters are
    /// deleted in the calling thread's network namespace.
    pub fn retain_links(
        &mut self,
        keep: impl Fn(u32) -> bool,
    ) -> Result<Vec<String>, DatapathError> {
        let Some(p) = &mut self.pinned else {
            return Ok(Vec::new());
        };
        let mut removed = Vec::new();
        for name in p.pins.link_names()? {
            let ifindex = pin::parse_link_name(&name).map(|(i, _)| i);
            if ifindex.is_some_and(&keep) {
                continue;
            }
            let path = p.pins.dir().join("links").join(&name);
            pin::remove_link_pin(&path)?;
            p.deferred.retain(|d| d.path != path);
            removed.push(name);
        }
        Ok(removed)
    }

    pub(super) fn attach_pinned(
        &mut self,
        iface: &str,
        mode: TcMode,
    ) -> Result<Attached, DatapathError> {
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| DatapathError::PinDir {
            path: PathBuf::from(format!("/sys/class/net/{iface}")),
            source: e.into(),
        })?;
        let mut how = Attached::Tcx;
        for (prog, attach, hook) in pin::HOOKS {
            let Some(p) = &mut self.pinned else {
                break;
            };
            let path = p.pins.link_path(ifindex, hook);
            let existing = match pin::read_link_pin(&path)? {
                // A pin of this name may be stale: a link of an interface (or a network
                // namespace) that is gone, whose ifindex a new interface reuses. Updating it
                // would fail; it is removed and the hook attached afresh.
                Some(LinkPin::Tcx(pinned)) => {
                    let link = FdLink::from(pinned);
                    if pin::tcx_link_is_at(&link, iface, attach) {
                        pin::read_link_pin(&path)?
                    } else {
                        drop(link);
                        pin::remove_link_pin(&path)?;
                        None
                    }
                }
                other => other,
            };
            if matches!(p.state, State::Replaced(_))
                && p.meta.is_none()
                && let Some(old) = &existing
            {
                // The old program keeps deciding, with its maps, until the first apply.
                how = match old {
                    LinkPin::Tcx(_) => Attached::Tcx,
                    LinkPin::Filter { .. } => Attached::Netlink,
                };
                p.deferred.push(Deferred {
                    iface: iface.to_owned(),
                    prog,
                    attach,
                    mode,
                    path,
                    netns: pin::current_netns()?,
                });
                continue;
            }
            let program = program_mut(&mut self.ebpf, prog)?;
            how = attach_hook(program, prog, iface, attach, mode, &path, existing, true)?;
        }
        Ok(how)
    }

    /// After an apply that activated a snapshot: the takeover is done, and a replacing datapath
    /// switches the old links to its programs and becomes the pinned one.
    pub(super) fn applied_snapshot(&mut self) -> Result<(), DatapathError> {
        let Some(p) = &mut self.pinned else {
            return Ok(());
        };
        p.takeover = false;
        p.planned = None;
        if p.meta.is_some() {
            return Ok(());
        }
        while let Some(d) = p.deferred.first() {
            let program = program_mut(&mut self.ebpf, d.prog)?;
            let existing = pin::read_link_pin(&d.path)?;
            let (iface, prog, attach, mode, path) = (&d.iface, d.prog, d.attach, d.mode, &d.path);
            pin::in_netns(&d.netns, || {
                if nix::net::if_::if_nametoindex(iface.as_str()).is_err() {
                    // The interface went away since: nothing to switch.
                    drop(existing);
                    return pin::remove_link_pin(path).map(|()| Attached::Tcx);
                }
                // Checked again: the link may have gone stale since it was deferred.
                attach_hook(program, prog, iface, attach, mode, path, existing, true)
            })??;
            p.deferred.remove(0);
        }
        p.meta = Some(p.pins.write_meta(pin::our_meta(self.reported_lost))?);
        Ok(())
    }

    /// Records in the pin directory which losses have been reported.
    pub(super) fn record_reported_lost(&mut self) -> Result<(), DatapathError> {
        let Some(Pinned {
            meta: Some(meta),
            pins,
            ..
        }) = &mut self.pinned
        else {
            return Ok(());
        };
        let path = pins.meta_path();
        let err = |source| DatapathError::PinMap {
            path: path.clone(),
            source,
        };
        let mut record = meta.get(&0, 0).map_err(err)?;
        record.reported_lost = self.reported_lost;
        meta.set(0, record, 0).map_err(err)
    }
}

/// Puts `prog` on one hook of `iface`, pinned at `path`: switches the program of the link or
/// filter pinned there (if `check`, only if it is really on that hook), else attaches and pins.
#[expect(
    clippy::too_many_arguments,
    reason = "one hook's whole description; used in two places"
)]
fn attach_hook(
    program: &mut SchedClassifier,
    prog: &'static str,
    iface: &str,
    attach: TcAttachType,
    mode: TcMode,
    path: &Path,
    existing: Option<LinkPin>,
    check: bool,
) -> Result<Attached, DatapathError> {
    let perr = |source| DatapathError::Program { name: prog, source };
    match existing {
        Some(LinkPin::Tcx(pinned)) => {
            let link = FdLink::from(pinned);
            if !check || pin::tcx_link_is_at(&link, iface, attach) {
                let link =
                    SchedClassifierLink::try_from(link).map_err(|source| DatapathError::Link {
                        path: path.to_path_buf(),
                        source: Box::new(source),
                    })?;
                // BPF_LINK_UPDATE: the hook runs the old program or the new one, never none.
                let id = program.attach_to_link(link).map_err(perr)?;
                // Dropping our handle closes its descriptor; the pin keeps the link attached.
                drop(program.take_link(id).map_err(perr)?);
                return Ok(Attached::Tcx);
            }
            // The interface went away or the link was detached: a stale pin.
            drop(link);
            pin::remove_link_pin(path)?;
        }
        Some(LinkPin::Filter { priority, handle }) => {
            match replace_filter(program, iface, attach, priority, handle) {
                Ok(()) => return Ok(Attached::Netlink),
                // The filter is gone (the qdisc was removed): attach afresh.
                Err(_) => pin::remove_link_pin(path)?,
            }
        }
        None => {}
    }
    let filter = NlOptions {
        priority: pin::NL_PRIORITY,
        handle: pin::NL_HANDLE,
        classid: None,
    };
    let (id, how) = match attach::attach_with(program, iface, attach, mode, filter) {
        Ok(attached) => attached,
        Err(attach::AttachError::Attach {
            mode: Attached::Netlink,
            ..
        }) if replace_filter(program, iface, attach, pin::NL_PRIORITY, pin::NL_HANDLE).is_ok() => {
            // Our filter was there without its pin.
            pin::pin_filter(path, pin::NL_PRIORITY, pin::NL_HANDLE)?;
            return Ok(Attached::Netlink);
        }
        Err(e) => return Err(e.into()),
    };
    let link = program.take_link(id).map_err(perr)?;
    match how {
        Attached::Tcx => {
            let link = FdLink::try_from(link).map_err(|source| DatapathError::Link {
                path: path.to_path_buf(),
                source: Box::new(source),
            })?;
            pin::pin_tcx(path, link)?;
        }
        Attached::Netlink => {
            pin::pin_filter(path, pin::NL_PRIORITY, pin::NL_HANDLE)?;
            // Dropping the handle would delete the filter: it must outlive this agent.
            std::mem::forget(link);
        }
    }
    Ok(how)
}

/// Replaces the program of the legacy filter at (`priority`, `handle`) in one netlink request.
fn replace_filter(
    program: &mut SchedClassifier,
    iface: &str,
    attach: TcAttachType,
    priority: u16,
    handle: aya::programs::tc::TcHandle,
) -> Result<(), aya::programs::ProgramError> {
    let link = SchedClassifierLink::attached(iface, attach, priority, handle, None)
        .map_err(|e| aya::programs::ProgramError::TcError(e.into()))?;
    let id = program.attach_to_link(link)?;
    // Dropping the handle would delete the filter: it must outlive this agent.
    std::mem::forget(program.take_link(id)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_map_layout_table_names_every_map_once() {
        let mut names: Vec<&str> = super::pin::LAYOUT.iter().map(|m| m.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), super::pin::LAYOUT.len());
    }
}
