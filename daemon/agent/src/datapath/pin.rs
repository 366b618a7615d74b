//! The pinned datapath on bpffs (`LoadOptions::pin_dir`), so enforcement outlives the agent: the
//! directory layout, the bpffs check, the one-agent lock, the compatibility record (`meta`), the
//! map layouts a new agent may adopt, the link pins of each interface, and `unpin_all`.
//!
//! ```text
//! <pin dir>/                 flock'ed by the agent using it
//!   meta                     PinMeta (one-entry array): layout fingerprint, reported losses;
//!                            pinned last, so its presence says the maps are complete
//!   maps/FG_ACTIVE ...       every map of the eBPF object (policy, conntrack, dedup, ring, losses)
//!   links/<ifindex>-ingress  the TCX link of fg_from_pod on that interface (a bpf link), or on
//!   links/<ifindex>-egress   the legacy path a symlink "tc:<priority>:<handle>" naming the filter
//! ```

use std::fmt;
use std::fs::File;
use std::os::fd::AsFd as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData, MapError, MapInfo, MapType};
use aya::programs::TcAttachType;
use aya::programs::links::{FdLink, Link as _, PinnedLink};
use aya::programs::tc::{SchedClassifierLink, TcHandle};
use flowgate_abi::{
    ABI_VERSION, Active, ConnKey, CtValue, DedupValue, EndpointInfo, EndpointKey, FlowCacheSlot,
    FlowKey, FragKey, FragValue, IpCacheKey, IpCacheValue, LOST_SLOTS, PIN_MAGIC, PinMeta,
    PolicyKey, PolicyValue, capacity, maps, stats,
};
use nix::fcntl::{Flock, FlockArg};

use super::DatapathError;

/// Where the agent pins the datapath unless told otherwise.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/flowgate";

/// `statfs(2)` `f_type` of a BPF file system.
const BPF_FS_MAGIC: i128 = 0xcafe_4a11;

/// Legacy tc filters of a pinned datapath sit at this priority and handle, on both hooks, so the
/// next agent can replace them in place.
pub const NL_PRIORITY: u16 = 0xbf00;
pub const NL_HANDLE: TcHandle = TcHandle::new(0, 0x0f16);

/// The two hooks of a pod interface: program, TC attach type, pin name suffix.
pub const HOOKS: [(&str, TcAttachType, &str); 2] = [
    (
        flowgate_abi::programs::FROM_POD,
        TcAttachType::Ingress,
        "ingress",
    ),
    (
        flowgate_abi::programs::TO_POD,
        TcAttachType::Egress,
        "egress",
    ),
];

/// One map as the eBPF object defines it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapLayout {
    pub name: &'static str,
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    /// `None`: any capacity (the ring buffer's size is chosen at load).
    pub max_entries: Option<u32>,
}

const fn size<T>() -> u32 {
    // Map keys and values are a few dozen bytes.
    #[expect(
        clippy::cast_possible_truncation,
        reason = "ABI types are far below 4 GiB"
    )]
    let s = size_of::<T>() as u32;
    s
}

const fn layout(
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
    max_entries: Option<u32>,
) -> MapLayout {
    MapLayout {
        name,
        map_type,
        key_size,
        value_size,
        max_entries,
    }
}

/// Every map of the object: what a pinned map must match to be adopted. A pinned load checks
/// the maps it created against this table, so it cannot drift from the object unnoticed.
pub const LAYOUT: [MapLayout; 12] = [
    layout(maps::ACTIVE, MapType::Array, 4, size::<Active>(), Some(1)),
    layout(
        maps::ENDPOINTS,
        MapType::Hash,
        size::<EndpointKey>(),
        size::<EndpointInfo>(),
        Some(capacity::ENDPOINTS),
    ),
    layout(
        maps::IPCACHE,
        MapType::LpmTrie,
        size::<IpCacheKey>(),
        size::<IpCacheValue>(),
        Some(capacity::IPCACHE),
    ),
    layout(
        maps::POLICY,
        MapType::LpmTrie,
        size::<PolicyKey>(),
        size::<PolicyValue>(),
        Some(capacity::POLICY),
    ),
    layout(
        maps::CONNTRACK,
        MapType::LruHash,
        size::<ConnKey>(),
        size::<CtValue>(),
        Some(capacity::CONNTRACK),
    ),
    layout(
        maps::FRAGMENTS,
        MapType::LruHash,
        size::<FragKey>(),
        size::<FragValue>(),
        Some(capacity::FRAGMENTS),
    ),
    layout(
        maps::DENY_DEDUP,
        MapType::LruHash,
        size::<FlowKey>(),
        size::<DedupValue>(),
        Some(capacity::DENY_DEDUP),
    ),
    layout(maps::EVENTS, MapType::RingBuf, 0, 0, None),
    layout(maps::LOST, MapType::PerCpuArray, 4, 8, Some(LOST_SLOTS)),
    layout(maps::STATS, MapType::PerCpuArray, 4, 8, Some(stats::SLOTS)),
    layout(
        maps::FLOW_CACHE,
        MapType::PerCpuArray,
        4,
        size::<FlowCacheSlot>(),
        Some(capacity::FLOW_CACHE),
    ),
    layout(
        maps::LOCAL_IPS,
        MapType::Hash,
        16,
        4,
        Some(capacity::LOCAL_IPS),
    ),
];

/// FNV-1a over the layout table: equal for agents whose maps can be shared.
pub fn layout_fingerprint() -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for m in &LAYOUT {
        let text = format!(
            "{}:{:?}:{}:{}:{:?};",
            m.name, m.map_type, m.key_size, m.value_size, m.max_entries
        );
        for byte in text.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}

/// This agent's record for a pin directory it creates.
pub fn our_meta(reported_lost: [u64; LOST_SLOTS as usize]) -> PinMeta {
    PinMeta {
        magic: PIN_MAGIC,
        abi_version: ABI_VERSION,
        _pad: [0; 3],
        layout: layout_fingerprint(),
        reported_lost,
    }
}

/// Why pinned maps cannot be adopted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incompatible {
    /// Maps without a record: a load that died before it finished.
    NoRecord,
    /// The record itself has another layout, or is not flowgate's.
    Record {
        detail: String,
    },
    Abi {
        pinned: u8,
    },
    Layout {
        pinned: u64,
    },
    Map {
        name: &'static str,
        detail: String,
    },
}

impl fmt::Display for Incompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoRecord => write!(
                f,
                "maps are pinned but no record (meta) says they are complete"
            ),
            Self::Record { detail } => write!(f, "its record (meta) is not readable: {detail}"),
            Self::Abi { pinned } => write!(
                f,
                "it was made by ABI version {pinned}, this agent has version {ABI_VERSION}"
            ),
            Self::Layout { pinned } => write!(
                f,
                "its map layouts (fingerprint {pinned:016x}) differ from this agent's ({:016x})",
                layout_fingerprint()
            ),
            Self::Map { name, detail } => write!(f, "map {name}: {detail}"),
        }
    }
}

/// What a pin directory holds.
#[derive(Debug)]
pub enum Found {
    Nothing,
    Compatible { meta: PinMeta, ring_bytes: u32 },
    Incompatible(Incompatible),
}

/// A pin directory, locked for as long as this value lives (the kernel drops the lock when the
/// process dies, so a crashed agent never blocks the next one).
#[derive(Debug)]
pub struct Pins {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl Pins {
    /// Checks that `dir` is on bpffs, creates its subdirectories and takes the lock, waiting up
    /// to `wait` for another agent to let go.
    pub fn open(dir: &Path, wait: Duration) -> Result<Self, DatapathError> {
        check_bpffs(dir)?;
        for sub in [dir.to_path_buf(), dir.join("maps"), dir.join("links")] {
            std::fs::create_dir_all(&sub).map_err(|source| DatapathError::PinDir {
                path: sub.clone(),
                source,
            })?;
        }
        let lock = lock(dir, wait)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    pub fn meta_path(&self) -> PathBuf {
        self.dir.join("meta")
    }

    pub fn link_path(&self, ifindex: u32, hook: &str) -> PathBuf {
        self.dir.join("links").join(format!("{ifindex}-{hook}"))
    }

    /// Whether the pinned maps (if any) can be adopted by this agent.
    pub fn inspect(&self) -> Found {
        let any_map = LAYOUT.iter().any(|m| self.map_path(m.name).exists());
        if !self.meta_path().exists() {
            return if any_map {
                Found::Incompatible(Incompatible::NoRecord)
            } else {
                Found::Nothing
            };
        }
        let meta = match read_meta(&self.meta_path()) {
            Ok(meta) => meta,
            Err(detail) => return Found::Incompatible(Incompatible::Record { detail }),
        };
        if meta.magic != PIN_MAGIC {
            return Found::Incompatible(Incompatible::Record {
                detail: format!("magic {:08x}", meta.magic),
            });
        }
        if meta.abi_version != ABI_VERSION {
            return Found::Incompatible(Incompatible::Abi {
                pinned: meta.abi_version,
            });
        }
        if meta.layout != layout_fingerprint() {
            return Found::Incompatible(Incompatible::Layout {
                pinned: meta.layout,
            });
        }
        match self.check_maps() {
            Ok(ring_bytes) => Found::Compatible { meta, ring_bytes },
            Err(e) => Found::Incompatible(e),
        }
    }

    /// Every pinned map against `LAYOUT`; the ring buffer's size.
    pub fn check_maps(&self) -> Result<u32, Incompatible> {
        let mut ring_bytes = 0;
        for m in &LAYOUT {
            let info = MapInfo::from_pin(self.map_path(m.name)).map_err(|e| Incompatible::Map {
                name: m.name,
                detail: format!("not readable ({e})"),
            })?;
            let pinned = (
                info.map_type().ok(),
                info.key_size(),
                info.value_size(),
                m.max_entries.map(|_| info.max_entries()),
            );
            let ours = (Some(m.map_type), m.key_size, m.value_size, m.max_entries);
            if pinned != ours {
                return Err(Incompatible::Map {
                    name: m.name,
                    detail: format!(
                        "pinned (type, key size, value size, entries) {pinned:?}, this agent's {ours:?}"
                    ),
                });
            }
            if m.map_type == MapType::RingBuf {
                ring_bytes = info.max_entries();
            }
        }
        Ok(ring_bytes)
    }

    /// Unpins the maps and the record (links stay: they keep the old programs, and through them
    /// the old maps, in force).
    pub fn remove_maps(&self) -> Result<(), DatapathError> {
        let meta = self.meta_path();
        remove_if_there(&meta)?;
        for m in &LAYOUT {
            remove_if_there(&self.map_path(m.name))?;
        }
        Ok(())
    }

    /// Pins the record (last step of a complete pinned datapath); returns a handle to update it.
    pub fn write_meta(&self, meta: PinMeta) -> Result<Array<MapData, PinMeta>, DatapathError> {
        let path = self.meta_path();
        let err = |source| DatapathError::PinMap {
            path: path.clone(),
            source,
        };
        let mut array = Array::<MapData, PinMeta>::create(1, 0).map_err(err)?;
        array.set(0, meta, 0).map_err(err)?;
        remove_if_there(&path)?;
        array.pin(&path).map_err(|e| {
            err(MapError::PinError {
                name: None,
                error: e,
            })
        })?;
        open_meta(&path).map_err(err)
    }

    pub fn open_meta(&self) -> Result<Array<MapData, PinMeta>, DatapathError> {
        let path = self.meta_path();
        open_meta(&path).map_err(|source| DatapathError::PinMap { path, source })
    }

    /// The link pins, by file name.
    pub fn link_names(&self) -> Result<Vec<String>, DatapathError> {
        let dir = self.dir.join("links");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|source| DatapathError::PinDir {
                path: dir.clone(),
                source,
            })?
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        Ok(names)
    }
}

fn open_meta(path: &Path) -> Result<Array<MapData, PinMeta>, MapError> {
    Array::try_from(Map::Array(MapData::from_pin(path)?))
}

fn read_meta(path: &Path) -> Result<PinMeta, String> {
    let array = open_meta(path).map_err(|e| e.to_string())?;
    array.get(&0, 0).map_err(|e| e.to_string())
}

fn remove_if_there(path: &Path) -> Result<(), DatapathError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DatapathError::PinDir {
            path: path.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

/// `dir`, or the closest ancestor that exists, must be on bpffs: pins anywhere else fail, or
/// (on a tmpfs) would not be pins at all.
fn check_bpffs(dir: &Path) -> Result<(), DatapathError> {
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let fs = nix::sys::statfs::statfs(existing).map_err(|e| DatapathError::PinDir {
        path: existing.to_path_buf(),
        source: e.into(),
    })?;
    // `f_type`'s width differs between platforms.
    let magic = i128::from(fs.filesystem_type().0);
    if magic != BPF_FS_MAGIC {
        return Err(DatapathError::NotBpffs {
            path: dir.to_path_buf(),
            checked: existing.to_path_buf(),
            magic: i64::try_from(magic).unwrap_or(i64::MIN),
        });
    }
    Ok(())
}

fn lock(dir: &Path, wait: Duration) -> Result<Flock<File>, DatapathError> {
    let started = Instant::now();
    let mut file = File::open(dir).map_err(|source| DatapathError::PinDir {
        path: dir.to_path_buf(),
        source,
    })?;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((back, nix::errno::Errno::EWOULDBLOCK)) if started.elapsed() < wait => {
                file = back;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(DatapathError::PinLocked {
                    path: dir.to_path_buf(),
                    waited: wait,
                });
            }
            Err((_, e)) => {
                return Err(DatapathError::PinDir {
                    path: dir.to_path_buf(),
                    source: e.into(),
                });
            }
        }
    }
}

/// What a link pin holds.
#[derive(Debug)]
pub enum LinkPin {
    /// A TCX link (a bpf link object).
    Tcx(PinnedLink),
    /// A legacy tc filter, named by a symlink.
    Filter { priority: u16, handle: TcHandle },
}

/// The pin at `path`, if any.
pub fn read_link_pin(path: &Path) -> Result<Option<LinkPin>, DatapathError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DatapathError::PinDir {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path).map_err(|source| DatapathError::PinDir {
            path: path.to_path_buf(),
            source,
        })?;
        return Ok(parse_filter(&target.to_string_lossy())
            .map(|(priority, handle)| LinkPin::Filter { priority, handle }));
    }
    PinnedLink::from_pin(path)
        .map(|link| Some(LinkPin::Tcx(link)))
        .map_err(|source| DatapathError::Link {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
}

pub fn filter_text(priority: u16, handle: TcHandle) -> String {
    format!("tc:{priority}:{}", u32::from(handle))
}

fn parse_filter(text: &str) -> Option<(u16, TcHandle)> {
    let mut parts = text.strip_prefix("tc:")?.split(':');
    let priority = parts.next()?.parse().ok()?;
    let handle = parts.next()?.parse::<u32>().ok()?;
    Some((priority, TcHandle::from(handle)))
}

/// Pins a filter's name at `path`.
pub fn pin_filter(path: &Path, priority: u16, handle: TcHandle) -> Result<(), DatapathError> {
    remove_if_there(path)?;
    std::os::unix::fs::symlink(filter_text(priority, handle), path).map_err(|source| {
        DatapathError::PinDir {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Pins a TCX link at `path` (replacing a stale pin).
pub fn pin_tcx(path: &Path, link: FdLink) -> Result<(), DatapathError> {
    remove_if_there(path)?;
    link.pin(path)
        .map(drop)
        .map_err(|source| DatapathError::LinkPin {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
}

/// The interface name of `ifindex` in the calling thread's network namespace.
pub fn ifname(ifindex: u32) -> Option<String> {
    nix::net::if_::if_indextoname(ifindex)
        .ok()
        .and_then(|name| name.into_string().ok())
}

/// `<ifindex>-<hook>` back into its parts.
pub fn parse_link_name(name: &str) -> Option<(u32, TcAttachType)> {
    let (ifindex, hook) = name.split_once('-')?;
    let attach = HOOKS.iter().find(|(_, _, h)| *h == hook)?.1;
    Some((ifindex.parse().ok()?, attach))
}

/// Removes one link pin, detaching what it holds: a TCX link goes with its last reference; a
/// legacy filter is deleted by netlink (in the calling thread's network namespace; a filter whose
/// interface is gone went with it).
pub fn remove_link_pin(path: &Path) -> Result<(), DatapathError> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_link_name);
    match read_link_pin(path)? {
        Some(LinkPin::Tcx(link)) => {
            link.unpin()
                .map(drop)
                .map_err(|source| DatapathError::PinDir {
                    path: path.to_path_buf(),
                    source,
                })?;
        }
        Some(LinkPin::Filter { priority, handle }) => {
            if let Some((ifindex, attach)) = name
                && let Some(iface) = ifname(ifindex)
                && let Ok(link) =
                    SchedClassifierLink::attached(&iface, attach, priority, handle, None)
            {
                // Already gone (the qdisc or the filter was removed by someone else) is fine.
                let _ = link.detach();
            }
            remove_if_there(path)?;
        }
        None => remove_if_there(path)?,
    }
    Ok(())
}

/// What `unpin_all` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpinned {
    pub links: usize,
    pub maps: usize,
}

/// Detaches every pinned link and filter and deletes every pin under `dir`, then the directory.
/// Refuses while an agent holds the directory. Legacy filters are deleted in the calling thread's
/// network namespace.
pub fn unpin_all(dir: &Path) -> Result<Unpinned, DatapathError> {
    if !dir.exists() {
        return Ok(Unpinned::default());
    }
    let pins = Pins::open(dir, Duration::ZERO)?;
    let mut done = Unpinned::default();
    for name in pins.link_names()? {
        remove_link_pin(&pins.dir.join("links").join(&name))?;
        done.links += 1;
    }
    let maps_dir = pins.dir.join("maps");
    let entries = std::fs::read_dir(&maps_dir).map_err(|source| DatapathError::PinDir {
        path: maps_dir.clone(),
        source,
    })?;
    for entry in entries.filter_map(Result::ok) {
        remove_if_there(&entry.path())?;
        done.maps += 1;
    }
    remove_if_there(&pins.meta_path())?;
    for sub in [pins.dir.join("links"), maps_dir, pins.dir.clone()] {
        match std::fs::remove_dir(&sub) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(DatapathError::PinDir {
                    path: sub,
                    source: e,
                });
            }
            _ => {}
        }
    }
    Ok(done)
}

/// Whether the TCX link's program is attached at `iface`'s hook (in the calling thread's network
/// namespace): a pin whose interface went away, or was replaced, is stale.
pub fn tcx_link_is_at(link: &FdLink, iface: &str, attach: TcAttachType) -> bool {
    let Ok(info) = link.info() else {
        return false;
    };
    aya::programs::SchedClassifier::query_tcx(iface, attach)
        .is_ok_and(|(_, programs)| programs.iter().any(|p| p.id() == info.program_id()))
}

/// The network namespace of the calling thread, to come back to it from another thread.
pub fn current_netns() -> Result<File, DatapathError> {
    let path = Path::new("/proc/thread-self/ns/net");
    File::open(path).map_err(|source| DatapathError::PinDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Runs `f` inside `netns`: here if the calling thread is in it already (no capability needed,
/// as for an agent in the host namespace), else on a new thread that enters it (CAP_SYS_ADMIN).
pub fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> T + Send) -> Result<T, DatapathError> {
    let here = Path::new("/proc/thread-self/ns/net");
    let err = |source: std::io::Error| DatapathError::PinDir {
        path: here.to_path_buf(),
        source,
    };
    let same = |a: &std::fs::Metadata, b: &std::fs::Metadata| {
        use std::os::unix::fs::MetadataExt as _;
        (a.dev(), a.ino()) == (b.dev(), b.ino())
    };
    if same(
        &netns.metadata().map_err(err)?,
        &std::fs::metadata(here).map_err(err)?,
    ) {
        return Ok(f());
    }
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map(|()| f())
                    .map_err(|e| err(e.into()))
            })
            .join()
            .unwrap_or_else(|_| {
                Err(err(std::io::Error::other(
                    "the thread switching network namespace panicked",
                )))
            })
    })
}
