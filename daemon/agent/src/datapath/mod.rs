//! The loaded eBPF datapath: the embedded object (built by build.rs), its two TC programs and
//! its maps. Plans and applies `flowgate_policy::maps::MapOp`s in order, attaches to pod
//! interfaces, and hands out the ring buffer and loss counters. Used by `flowgate lab` and
//! `flowgate agent`. With a pin directory (`pinned.rs`) the datapath outlives the agent, and the
//! next agent adopts it.

pub mod attach;
pub mod events;
pub mod health;
pub mod pin;
mod pinned;
pub mod takeover;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use flowgate_abi::{
    Active, EndpointInfo, EndpointKey, IpCacheKey, IpCacheValue, LOST_SLOTS, PolicyKey,
    PolicyKeyData, PolicyValue, maps, programs, stats,
};
use flowgate_policy::compile::Snapshot;
use flowgate_policy::maps::{MapOp, Mode, diff};

pub use attach::{Attached, TcMode};
pub use pin::{DEFAULT_PIN_DIR, Incompatible, Unpinned};
pub use pinned::{Adopted, Replaced};

/// The object built by aya-build in build.rs (empty when built with `AYA_BUILD_SKIP=1`).
pub static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowgate-datapath"));

/// How long a `MapOp::Barrier` waits: programs run for microseconds inside an RCU read section,
/// so after this no packet can still be using what the ops before the barrier replaced.
pub const BARRIER: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error(
        "the eBPF object is empty: this flowgate was built with AYA_BUILD_SKIP=1 (rebuild without it)"
    )]
    NotBuilt,
    #[error("loading the eBPF object failed (are you root, with CAP_BPF and CAP_NET_ADMIN?)")]
    Load(#[from] aya::EbpfError),
    #[error("program {name} is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map {name} is missing from the eBPF object (or was already taken)")]
    MissingMap { name: &'static str },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error(transparent)]
    Attach(#[from] attach::AttachError),
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} is not on a BPF file system ({checked} has file system magic {magic:#x}); mount one with `mount -t bpf bpf /sys/fs/bpf` (in a pod: mount the host's /sys/fs/bpf)"
    )]
    NotBpffs {
        path: PathBuf,
        checked: PathBuf,
        magic: i64,
    },
    #[error("another flowgate agent holds {path} (waited {waited:?})")]
    PinLocked { path: PathBuf, waited: Duration },
    #[error("pinned map {path}: {source}")]
    PinMap {
        path: PathBuf,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("pinned link {path}: {source}")]
    Link {
        path: PathBuf,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("pinning link {path}: {source}")]
    LinkPin {
        path: PathBuf,
        #[source]
        source: Box<aya::pin::PinError>,
    },
    #[error("the eBPF object's maps differ from the layout table in datapath/pin.rs: {detail}")]
    LayoutTable { detail: String },
    #[error(
        "the adopted datapath must be taken over first: plan the first apply with Datapath::plan"
    )]
    TakeoverRequired,
    #[error(transparent)]
    Takeover(#[from] Box<takeover::TakeoverError>),
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Ring-buffer size in bytes: a power of two, a multiple of the page size. An adopted
    /// datapath keeps the size of its pinned ring buffer.
    pub ring_bytes: u32,
    /// Pin the programs' maps and links here (a directory on bpffs, e.g. `DEFAULT_PIN_DIR`) so
    /// enforcement outlives this agent, and adopt what an earlier agent pinned here. `None`:
    /// nothing is pinned, and dropping the `Datapath` detaches everything.
    pub pin_dir: Option<PathBuf>,
    /// How long a pinned load waits for another agent to release the pin directory.
    pub lock_wait: Duration,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: flowgate_abi::capacity::EVENTS_BYTES,
            pin_dir: None,
            lock_wait: Duration::from_secs(60),
        }
    }
}

/// Size of the kernel's `struct __sk_buff` (the context of TC programs), as
/// `BPF_PROG_TEST_RUN` copies it back.
pub const SKB_CONTEXT_BYTES: usize = 192;

/// A `struct __sk_buff` for `BPF_PROG_TEST_RUN` of the programs, with the two fields the
/// programs read besides the packet: `mark` (`flowgate_abi::trust`) and `ingress_ifindex` (the
/// interface the packet came in on; 0: sent by the node itself). The kernel takes every other
/// field as zero; `ifindex` 0 gives the skb the loopback device.
pub fn skb_context(mark: u32, ingress_ifindex: u32) -> [u8; SKB_CONTEXT_BYTES] {
    // Offsets in the UAPI struct: len, pkt_type, mark (8), ..., ingress_ifindex (36).
    let mut ctx = [0u8; SKB_CONTEXT_BYTES];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx
}

/// The `mark` of a context `BPF_PROG_TEST_RUN` copied back (see `skb_context`).
pub fn skb_context_mark(ctx: &[u8; SKB_CONTEXT_BYTES]) -> u32 {
    u32::from_ne_bytes([ctx[8], ctx[9], ctx[10], ctx[11]])
}

/// The programs' counters (see `Datapath::path_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Packets into a pod that `fg_to_pod` passed because both ends of their same-node
    /// connection had passed it under the active generation (one judgement per packet).
    pub peer_judged: u64,
    /// Packets into a pod that `fg_to_pod` looked at itself.
    pub judged_at_receiver: u64,
}

/// The loaded object with both programs loaded (not attached) and the policy maps taken.
pub struct Datapath {
    ebpf: Ebpf,
    active: Array<MapData, Active>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    ipcache: LpmTrie<MapData, [u8; 16], IpCacheValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    lost: PerCpuArray<MapData, u64>,
    /// How packets went through the programs (`flowgate_abi::stats`).
    stats: PerCpuArray<MapData, u64>,
    /// Local pods' addresses -> their interface (see the eBPF `FG_LOCAL_IPS`).
    local_ips: HashMap<MapData, [u8; 16], u32>,
    /// `lost` as of the last gap report (`take_lost`).
    reported_lost: [u64; LOST_SLOTS as usize],
    pinned: Option<pinned::Pinned>,
    /// Ops applied so far (for statistics).
    pub applied_ops: u64,
}

impl std::fmt::Debug for Datapath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datapath")
            .field("applied_ops", &self.applied_ops)
            .finish_non_exhaustive()
    }
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DatapathError::MissingMap { name })?;
    T::try_from(map).map_err(map_err(name))
}

impl Datapath {
    /// Loads the object and both programs into the kernel. With `options.pin_dir`, adopts the
    /// datapath pinned there if it is compatible (see `adopted`), replaces it if not (see
    /// `replaced`), or pins a fresh one.
    pub fn load(options: &LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NotBuilt);
        }
        match &options.pin_dir {
            Some(dir) => pinned::load(options, dir),
            None => {
                let mut loader = EbpfLoader::new();
                loader.map_max_entries(maps::EVENTS, options.ring_bytes);
                Self::load_with(&mut loader)
            }
        }
    }

    fn load_with(loader: &mut EbpfLoader<'_>) -> Result<Self, DatapathError> {
        let mut ebpf = loader.load(OBJECT)?;
        for name in [programs::FROM_POD, programs::TO_POD] {
            let prog = program_mut(&mut ebpf, name)?;
            prog.load()
                .map_err(|source| DatapathError::Program { name, source })?;
        }
        Ok(Self {
            active: take(&mut ebpf, maps::ACTIVE)?,
            endpoints: take(&mut ebpf, maps::ENDPOINTS)?,
            ipcache: take(&mut ebpf, maps::IPCACHE)?,
            policy: take(&mut ebpf, maps::POLICY)?,
            lost: take(&mut ebpf, maps::LOST)?,
            stats: take(&mut ebpf, maps::STATS)?,
            local_ips: take(&mut ebpf, maps::LOCAL_IPS)?,
            ebpf,
            reported_lost: [0; LOST_SLOTS as usize],
            pinned: None,
            applied_ops: 0,
        })
    }

    /// One of the two programs, for attaching or `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program_mut(&mut self.ebpf, name)
    }

    /// Attaches both programs to a pod's host-side interface (in the calling thread's network
    /// namespace): `fg_from_pod` on TC ingress, `fg_to_pod` on TC egress. Pinned, an interface
    /// that already has the pinned datapath's links (or filters) gets them switched to this
    /// agent's programs, atomically, instead; `mode` then only applies to new interfaces.
    pub fn attach_pod_interface(
        &mut self,
        iface: &str,
        mode: TcMode,
    ) -> Result<Attached, DatapathError> {
        if self.pinned.is_some() {
            return self.attach_pinned(iface, mode);
        }
        let from = attach::attach(
            self.program(programs::FROM_POD)?,
            iface,
            TcAttachType::Ingress,
            mode,
        )?;
        let to = attach::attach(
            self.program(programs::TO_POD)?,
            iface,
            TcAttachType::Egress,
            mode,
        )?;
        debug_assert_eq!(from.1, to.1);
        Ok(to.1)
    }

    /// The ring buffer of flow events; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, DatapathError> {
        take(&mut self.ebpf, maps::EVENTS)
    }

    /// Another map of the object by name (conntrack and the like, for tests and inspection).
    pub fn take_map(&mut self, name: &'static str) -> Result<aya::maps::Map, DatapathError> {
        self.ebpf
            .take_map(name)
            .ok_or(DatapathError::MissingMap { name })
    }

    /// The ops that take the maps from `old` (the snapshot applied last; `Snapshot::default()`
    /// before the first apply) to `next`: `diff(old, next, mode)`, except for the first apply
    /// after adopting a pinned datapath, which must take over the snapshot the previous agent
    /// left in the maps (see `takeover`; it sets `next.generation` to follow the adopted one).
    pub fn plan(
        &mut self,
        old: &Snapshot,
        next: &mut Snapshot,
        mode: Mode,
    ) -> Result<Vec<MapOp>, DatapathError> {
        if !self
            .pinned
            .as_ref()
            .is_some_and(pinned::Pinned::takeover_pending)
        {
            return Ok(diff(old, next, mode));
        }
        let live = self.read_live()?;
        let ops = takeover::plan(&live, next, mode).map_err(Box::new)?;
        if let Some(p) = &mut self.pinned {
            p.planned = Some(next.generation);
        }
        Ok(ops)
    }

    /// Applies ops in order; `Barrier` waits `BARRIER`. An adopted datapath takes only the
    /// takeover `plan` gave until that has been applied.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), DatapathError> {
        if let Some(p) = &self.pinned
            && p.takeover_pending()
            && !p.planned.is_some_and(|g| activates(ops, g))
        {
            return Err(DatapathError::TakeoverRequired);
        }
        for op in ops {
            self.apply_one(op)?;
        }
        if ops
            .iter()
            .any(|op| matches!(op, MapOp::Activate(a) if a.generation != 0))
        {
            self.applied_snapshot()?;
        }
        Ok(())
    }

    fn apply_one(&mut self, op: &MapOp) -> Result<(), DatapathError> {
        match op {
            MapOp::PolicyUpdate(k, v) => {
                self.policy
                    .insert(&Key::new(k.prefixlen, k.data()), v, 0)
                    .map_err(map_err(maps::POLICY))?;
            }
            MapOp::PolicyDelete(k) => ignore_missing(
                self.policy.remove(&Key::new(k.prefixlen, k.data())),
                maps::POLICY,
            )?,
            MapOp::IpCacheUpdate(k, v) => {
                self.ipcache
                    .insert(&Key::new(k.prefixlen, k.addr), v, 0)
                    .map_err(map_err(maps::IPCACHE))?;
            }
            MapOp::IpCacheDelete(k) => ignore_missing(
                self.ipcache.remove(&Key::new(k.prefixlen, k.addr)),
                maps::IPCACHE,
            )?,
            MapOp::EndpointUpdate(k, v) => self
                .endpoints
                .insert(k, v, 0)
                .map_err(map_err(maps::ENDPOINTS))?,
            MapOp::EndpointDelete(k) => ignore_missing(self.endpoints.remove(k), maps::ENDPOINTS)?,
            MapOp::Activate(a) => self.active.set(0, a, 0).map_err(map_err(maps::ACTIVE))?,
            MapOp::Barrier => std::thread::sleep(BARRIER),
        }
        self.applied_ops += 1;
        Ok(())
    }

    /// Makes `FG_LOCAL_IPS` hold exactly `owners`: each local pod's address with the ifindex of
    /// its host interface (entries left by a previous agent included).
    pub fn set_local_ips(
        &mut self,
        owners: &[(std::net::IpAddr, u32)],
    ) -> Result<(), DatapathError> {
        let want: std::collections::BTreeMap<[u8; 16], u32> = owners
            .iter()
            .map(|(ip, ifindex)| (ip_key(*ip), *ifindex))
            .collect();
        let have: Vec<([u8; 16], u32)> = self.local_ips.iter().filter_map(Result::ok).collect();
        for (key, ifindex) in &have {
            if want.get(key) != Some(ifindex) {
                ignore_missing(self.local_ips.remove(key), maps::LOCAL_IPS)?;
            }
        }
        for (key, ifindex) in &want {
            if !have.contains(&(*key, *ifindex)) {
                self.local_ips
                    .insert(key, ifindex, 0)
                    .map_err(map_err(maps::LOCAL_IPS))?;
            }
        }
        Ok(())
    }

    /// Ring-buffer reserve failures so far per verdict class (allow, deny, audit), summed over CPUs.
    /// Pinned, the count runs since the pinned maps were created.
    pub fn lost_events(&self) -> Result<[u64; LOST_SLOTS as usize], DatapathError> {
        let mut out = [0u64; LOST_SLOTS as usize];
        for (slot, total) in (0..LOST_SLOTS).zip(out.iter_mut()) {
            let per_cpu = self.lost.get(&slot, 0).map_err(map_err(maps::LOST))?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }

    /// The programs' counters (`flowgate_abi::stats`), summed over CPUs: how many packets
    /// `fg_to_pod` passed on the sending endpoint's judgement, and how many it judged itself.
    /// Pinned, they count since the pinned maps were created.
    pub fn path_stats(&self) -> Result<PathStats, DatapathError> {
        let read = |slot: u32| -> Result<u64, DatapathError> {
            let per_cpu = self.stats.get(&slot, 0).map_err(map_err(maps::STATS))?;
            Ok(per_cpu.iter().sum())
        };
        Ok(PathStats {
            peer_judged: read(stats::PEER_JUDGED)?,
            judged_at_receiver: read(stats::JUDGED_AT_RECEIVER)?,
        })
    }

    /// Ring-buffer losses (allow, deny, audit) not reported yet, for a gap record: the losses
    /// since the last call (since the load at first; an adopted datapath's earlier losses are in
    /// `Adopted::unreported_lost`). Pinned, what has been reported is recorded in the pin
    /// directory, so the next agent reports only the rest.
    pub fn take_lost(&mut self) -> Result<[u64; LOST_SLOTS as usize], DatapathError> {
        let now = self.lost_events()?;
        let delta: [u64; LOST_SLOTS as usize] =
            std::array::from_fn(|i| now[i].saturating_sub(self.reported_lost[i]));
        if delta.iter().any(|d| *d != 0) {
            self.reported_lost = now;
            self.record_reported_lost()?;
        }
        Ok(delta)
    }

    /// What the policy maps hold now.
    pub fn read_live(&self) -> Result<takeover::LiveMaps, DatapathError> {
        let active = self.active.get(&0, 0).map_err(map_err(maps::ACTIVE))?;
        let endpoints = self
            .endpoints
            .iter()
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(map_err(maps::ENDPOINTS))?;
        let mut ipcache = BTreeMap::new();
        for entry in self.ipcache.iter() {
            let (key, value) = entry.map_err(map_err(maps::IPCACHE))?;
            let key = IpCacheKey {
                prefixlen: key.prefix_len(),
                addr: key.data(),
            };
            ipcache.insert(key, value);
        }
        let mut policy = BTreeMap::new();
        for entry in self.policy.iter() {
            let (key, value) = entry.map_err(map_err(maps::POLICY))?;
            let data = key.data();
            let key = PolicyKey {
                prefixlen: key.prefix_len(),
                table: data.table,
                identity: data.identity,
                proto: data.proto,
                _pad: data._pad,
                port: data.port,
            };
            policy.insert(key, value);
        }
        Ok(takeover::LiveMaps {
            active,
            endpoints,
            ipcache,
            policy,
        })
    }
}

/// Whether `ops` switch to generation `generation`.
fn activates(ops: &[MapOp], generation: u32) -> bool {
    ops.iter()
        .any(|op| matches!(op, MapOp::Activate(a) if a.generation == generation))
}

fn program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DatapathError> {
    ebpf.program_mut(name)
        .ok_or(DatapathError::MissingProgram { name })?
        .try_into()
        .map_err(|source| DatapathError::Program { name, source })
}

/// Deleting a key that is already gone is fine (the plan never relies on it being there).
fn ignore_missing(
    result: Result<(), aya::maps::MapError>,
    name: &'static str,
) -> Result<(), DatapathError> {
    match result {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        other => other.map_err(map_err(name)),
    }
}

/// An address as the datapath keys it: IPv6, or IPv4 mapped as `::ffff:a.b.c.d`.
fn ip_key(ip: std::net::IpAddr) -> [u8; 16] {
    match ip {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    }
}
