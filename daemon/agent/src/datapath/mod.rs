//! The loaded eBPF datapath: the embedded object (built by build.rs), its two TC programs and
//! its maps. Applies `flowgate_policy::maps::MapOp`s in order, attaches to pod interfaces, and
//! hands out the ring buffer and loss counters. Used by `flowgate lab` and `flowgate agent`.

pub mod attach;
pub mod events;

use std::time::Duration;

use aya::maps::lpm_trie::Key;
use aya::maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf};
use aya::programs::{SchedClassifier, TcAttachType};
use aya::{Ebpf, EbpfLoader};
use flowgate_abi::{
    Active, EndpointInfo, EndpointKey, IpCacheValue, LOST_SLOTS, PolicyKeyData, PolicyValue, maps,
    programs,
};
use flowgate_policy::maps::MapOp;

pub use attach::{Attached, TcMode};

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
}

/// Load-time options.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Ring-buffer size in bytes: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            ring_bytes: flowgate_abi::capacity::EVENTS_BYTES,
        }
    }
}

/// The loaded object with both programs loaded (not attached) and the policy maps taken.
pub struct Datapath {
    ebpf: Ebpf,
    active: Array<MapData, Active>,
    endpoints: HashMap<MapData, EndpointKey, EndpointInfo>,
    ipcache: LpmTrie<MapData, [u8; 16], IpCacheValue>,
    policy: LpmTrie<MapData, PolicyKeyData, PolicyValue>,
    lost: PerCpuArray<MapData, u64>,
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
    /// Loads the object and both programs into the kernel.
    pub fn load(options: &LoadOptions) -> Result<Self, DatapathError> {
        if OBJECT.is_empty() {
            return Err(DatapathError::NotBuilt);
        }
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(maps::EVENTS, options.ring_bytes)
            .load(OBJECT)?;
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
            ebpf,
            applied_ops: 0,
        })
    }

    /// One of the two programs, for attaching or `BPF_PROG_TEST_RUN`.
    pub fn program(&mut self, name: &'static str) -> Result<&mut SchedClassifier, DatapathError> {
        program_mut(&mut self.ebpf, name)
    }

    /// Attaches both programs to a pod's host-side interface (in the calling thread's network
    /// namespace): `fg_from_pod` on TC ingress, `fg_to_pod` on TC egress.
    pub fn attach_pod_interface(
        &mut self,
        iface: &str,
        mode: TcMode,
    ) -> Result<Attached, DatapathError> {
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

    /// Applies ops in order; `Barrier` waits `BARRIER`.
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), DatapathError> {
        for op in ops {
            self.apply_one(op)?;
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

    /// Ring-buffer reserve failures so far per verdict class (allow, deny, audit), summed over CPUs.
    pub fn lost_events(&self) -> Result<[u64; LOST_SLOTS as usize], DatapathError> {
        let mut out = [0u64; LOST_SLOTS as usize];
        for (slot, total) in (0..LOST_SLOTS).zip(out.iter_mut()) {
            let per_cpu = self.lost.get(&slot, 0).map_err(map_err(maps::LOST))?;
            *total = per_cpu.iter().sum();
        }
        Ok(out)
    }
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
