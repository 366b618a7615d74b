//! A flowgate node at work: the loaded datapath attached to the local pods' host interfaces,
//! the snapshot in its maps, and the event path (ring buffer -> decode -> enrich -> records).
//! `apply` recompiles a cluster and switches the maps to it; `drain` returns the flow records
//! produced since the last call. Used by `flowgate lab` and `flowgate agent --lab`.

use std::time::{Duration, Instant};

use aya::maps::{MapData, RingBuf};
use flowgate_flows::record::Mode as RecordMode;
use flowgate_flows::{Enricher, FlowRecord, Tables};
use flowgate_policy::Cluster;
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::Mode;

use crate::datapath::events::{self, ReaderStats};
use crate::datapath::{Attached, Datapath, DatapathError, LoadOptions, TcMode};
use crate::lab::{EndpointKind, Lab, LabError};

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Datapath(#[from] DatapathError),
    #[error(transparent)]
    Lab(#[from] LabError),
}

/// What one `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyStats {
    pub generation: u32,
    pub ops: usize,
    /// Compile + diff.
    pub compile: Duration,
    /// Building the event-enrichment tables of the new generation.
    pub enrich: Duration,
    /// Writing the ops to the kernel maps (barriers included).
    pub write: Duration,
    pub cells: usize,
}

pub struct Node {
    datapath: Datapath,
    ring: RingBuf<MapData>,
    snapshot: Snapshot,
    enricher: Enricher,
    mode: Mode,
    locals: Vec<LocalEndpoint>,
    /// Each local pod's addresses (for the datapath's `FG_LOCAL_IPS`).
    local_ips: std::collections::BTreeMap<String, Vec<std::net::IpAddr>>,
    pub attached: Option<Attached>,
    pub reader: ReaderStats,
    /// Label keys kept in records (empty: all).
    pub record_labels: Vec<String>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("generation", &self.snapshot.generation)
            .field("locals", &self.locals.len())
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC (what `bpf_ktime_get_ns` counts), in nanoseconds.
pub fn realtime_offset_ns() -> i128 {
    let read = |clock| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(clock, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    };
    read(libc::CLOCK_REALTIME) - read(libc::CLOCK_MONOTONIC)
}

impl Node {
    /// Loads the datapath and attaches it to every pod of the lab (inside the lab's node
    /// namespace). Nothing is enforced until the first `apply`.
    pub fn on_lab(lab: &Lab, mode: Mode, node_name: &str) -> Result<Self, NodeError> {
        Self::on_lab_with(lab, mode, node_name, TcMode::Auto)
    }

    /// `on_lab` with a chosen attach mechanism (TCX, or the legacy clsact qdisc + filter).
    pub fn on_lab_with(
        lab: &Lab,
        mode: Mode,
        node_name: &str,
        tc: TcMode,
    ) -> Result<Self, NodeError> {
        let mut node = Self::on_host(mode, node_name, &LoadOptions::default())?;
        let pods: Vec<(String, String, u32)> = lab
            .endpoints()
            .filter(|e| e.kind == EndpointKind::Pod)
            .map(|e| (e.key.to_owned(), e.host_ifname.to_owned(), e.host_ifindex))
            .collect();
        node.local_ips = lab
            .endpoints()
            .filter(|e| e.kind == EndpointKind::Pod)
            .map(|e| (e.key.to_owned(), e.ips.to_vec()))
            .collect();
        let datapath = &mut node.datapath;
        node.attached = lab.in_node(|| -> Result<Option<Attached>, DatapathError> {
            let mut how = None;
            for (_, ifname, _) in &pods {
                how = Some(datapath.attach_pod_interface(ifname, tc)?);
            }
            Ok(how)
        })??;
        node.locals = pods
            .into_iter()
            .map(|(pod, _, ifindex)| LocalEndpoint { pod, ifindex })
            .collect();
        Ok(node)
    }

    /// Loads the datapath for the node the agent runs on (the calling thread's network
    /// namespace), attached to nothing yet: `attach_local` adds pods as their interfaces are
    /// found. Nothing is enforced until the first `apply`.
    pub fn on_host(mode: Mode, node_name: &str, options: &LoadOptions) -> Result<Self, NodeError> {
        let mut datapath = Datapath::load(options)?;
        let ring = datapath.take_events()?;
        Ok(Self {
            datapath,
            ring,
            snapshot: Snapshot::default(),
            enricher: Enricher::new(node_name, realtime_offset_ns()),
            mode,
            locals: Vec::new(),
            local_ips: std::collections::BTreeMap::new(),
            attached: None,
            reader: ReaderStats::default(),
            record_labels: Vec::new(),
        })
    }

    /// Attaches the datapath to a local pod's host interface (in the calling thread's network
    /// namespace). The pod is enforced from the next `apply` on; until then its traffic passes
    /// as an unmanaged interface's does.
    pub fn attach_local(
        &mut self,
        pod: &str,
        ips: &[std::net::IpAddr],
        ifname: &str,
        ifindex: u32,
    ) -> Result<(), NodeError> {
        self.attached = Some(self.datapath.attach_pod_interface(ifname, TcMode::Auto)?);
        self.local_ips.insert(pod.to_owned(), ips.to_vec());
        self.locals.retain(|l| l.pod != pod && l.ifindex != ifindex);
        self.locals.push(LocalEndpoint {
            pod: pod.to_owned(),
            ifindex,
        });
        Ok(())
    }

    /// Stops enforcing for a pod from the next `apply` on (its endpoint entry is removed, so the
    /// programs pass its interface's traffic; a deleted pod's interface goes with it).
    pub fn forget_local(&mut self, pod: &str) {
        self.locals.retain(|l| l.pod != pod);
        self.local_ips.remove(pod);
    }

    /// What is wrong with the datapath in force (see `datapath::health`); empty before the
    /// first apply and when all is well. In the calling thread's network namespace.
    pub fn check_datapath(&mut self) -> Result<Vec<crate::datapath::health::Problem>, NodeError> {
        if self.snapshot.generation == 0 {
            return Ok(Vec::new());
        }
        let ifindexes: Vec<u32> = self.locals.iter().map(|l| l.ifindex).collect();
        Ok(self.datapath.health(self.snapshot.generation, &ifindexes)?)
    }

    /// The local pod enforced on interface `ifindex`.
    pub fn pod_on(&self, ifindex: u32) -> Option<String> {
        self.locals
            .iter()
            .find(|l| l.ifindex == ifindex)
            .map(|l| l.pod.clone())
    }

    /// The local pods enforced for from the next `apply`.
    pub fn locals(&self) -> &[LocalEndpoint] {
        &self.locals
    }

    /// Compiles `cluster` for the local pods and switches the datapath to it.
    pub fn apply(&mut self, cluster: &Cluster) -> Result<ApplyStats, NodeError> {
        let started = Instant::now();
        // Which local pod each local address belongs to (independent of the policy generation).
        let owners: Vec<(std::net::IpAddr, u32)> = self
            .locals
            .iter()
            .flat_map(|l| {
                self.local_ips
                    .get(&l.pod)
                    .into_iter()
                    .flatten()
                    .map(|ip| (*ip, l.ifindex))
            })
            .collect();
        self.datapath.set_local_ips(&owners)?;
        let mut next = compile(cluster, &self.locals, Some(&self.snapshot));
        // `diff`, or the takeover of an adopted pinned datapath (which sets the generation).
        let ops = self.datapath.plan(&self.snapshot, &mut next, self.mode)?;
        let compiled = started.elapsed();
        // Tables first: events of the new generation may arrive as soon as it is active.
        let mode = match self.mode {
            Mode::Enforce => RecordMode::Enforce,
            Mode::Audit => RecordMode::Audit,
        };
        // Derived from the last generation's (only the pods that changed are looked at).
        let enriching = Instant::now();
        let tables = match self.enricher.latest() {
            Some(last) => Tables::after(last, cluster, &next, mode),
            None => Tables::from_snapshot(cluster, &next, mode),
        };
        self.enricher.push(tables);
        let enrich = enriching.elapsed();
        let writing = Instant::now();
        self.datapath.apply(&ops)?;
        let stats = ApplyStats {
            generation: next.generation,
            ops: ops.len(),
            compile: compiled,
            enrich,
            write: writing.elapsed(),
            cells: next.cell_count(),
        };
        self.snapshot = next;
        Ok(stats)
    }

    /// Flow records of every event in the ring buffer now.
    pub fn drain(&mut self) -> Vec<FlowRecord> {
        let mut raw = Vec::new();
        events::drain(&mut self.ring, &mut raw, &mut self.reader);
        raw.iter().map(|ev| self.enricher.enrich(ev)).collect()
    }

    /// A gap record for ring-buffer losses since the last call (the kernel counts them per CPU
    /// and verdict class), or `None` if nothing was lost.
    pub fn ringbuf_gap(&mut self) -> Result<Option<flowgate_flows::gap::GapRecord>, NodeError> {
        let delta = self.datapath.take_lost()?;
        if delta.iter().all(|d| *d == 0) {
            return Ok(None);
        }
        Ok(Some(self.gap(&flowgate_flows::gap::Stage::Ringbuf, delta)))
    }

    /// After adopting the pinned datapath of a previous agent: the `restart` gap record (always,
    /// so a consumer sees the restart), with the ring-buffer losses no agent reported while none
    /// was reading. `None` on a fresh datapath.
    pub fn restart_gap(&mut self) -> Option<flowgate_flows::gap::GapRecord> {
        let lost = self.datapath.adopted()?.unreported_lost;
        Some(self.gap(&flowgate_flows::gap::Stage::Restart, lost))
    }

    /// The pinned datapath this agent adopted: (pin directory, generation in force).
    pub fn adopted(&self) -> Option<(std::path::PathBuf, u32)> {
        self.datapath
            .adopted()
            .map(|a| (a.pin_dir.clone(), a.generation))
    }

    /// Why an incompatible pinned datapath was replaced (for the log), if one was.
    pub fn replaced(&self) -> Option<String> {
        self.datapath.replaced().map(ToString::to_string)
    }

    /// Removes the pinned links of interfaces that are no longer local pods' (in the calling
    /// thread's network namespace); returns the pins removed.
    pub fn prune_links(&mut self) -> Result<Vec<String>, NodeError> {
        let locals: Vec<u32> = self.locals.iter().map(|l| l.ifindex).collect();
        Ok(self.datapath.retain_links(|i| locals.contains(&i))?)
    }

    fn gap(
        &mut self,
        stage: &flowgate_flows::gap::Stage,
        delta: [u64; 3],
    ) -> flowgate_flows::gap::GapRecord {
        use flowgate_flows::gap::{GapRecord, LostCounts};
        let lost = LostCounts {
            allow: delta[0],
            deny: delta[1],
            audit: delta[2],
        };
        let seq = self.enricher.next_seq();
        let time = flowgate_flows::enrich::rfc3339(self.enricher_now());
        GapRecord::new(time, seq, self.enricher.node(), stage, lost, None)
    }

    fn enricher_now(&self) -> i128 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid, writable timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &raw mut ts) };
        i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
    }

    /// A `policy_snapshot` record of what is in force now (after `apply`).
    pub fn policy_snapshot(
        &mut self,
        cluster: &Cluster,
    ) -> flowgate_flows::node_record::NodeRecord {
        use flowgate_flows::node_record::{EndpointSummary, NodeRecordType};
        let mut e = EndpointSummary::default();
        for state in self.snapshot.endpoints.values() {
            e.total += 1;
            e.ingress_isolated += u64::from(!state.ingress.isolated_by.is_empty());
            e.egress_isolated += u64::from(!state.egress.isolated_by.is_empty());
            let (ns, name) = state.pod.split_once('/').unwrap_or(("", &state.pod));
            let covered = cluster
                .pod_by_name(ns, name)
                .is_some_and(|id| cluster.policies_selecting(id).next().is_some());
            e.uncovered += u64::from(!covered);
        }
        let policies = u64::try_from(cluster.policies().count()).unwrap_or(u64::MAX);
        let mut record = self.node_record(NodeRecordType::PolicySnapshot);
        record.policies = Some(policies);
        record.endpoints = Some(e);
        record
    }

    /// A `heartbeat` record: the agent is alive, `flows` records so far.
    pub fn heartbeat(&mut self, flows: u64) -> flowgate_flows::node_record::NodeRecord {
        let mut record = self.node_record(flowgate_flows::node_record::NodeRecordType::Heartbeat);
        record.flows = Some(flows);
        record
    }

    fn node_record(
        &mut self,
        record_type: flowgate_flows::node_record::NodeRecordType,
    ) -> flowgate_flows::node_record::NodeRecord {
        flowgate_flows::node_record::NodeRecord {
            schema: flowgate_flows::record::SCHEMA,
            record_type,
            time: flowgate_flows::enrich::rfc3339(self.enricher_now()),
            seq: self.enricher.next_seq(),
            node: self.enricher.node().to_owned(),
            generation: self.snapshot.generation,
            mode: match self.mode {
                Mode::Enforce => RecordMode::Enforce,
                Mode::Audit => RecordMode::Audit,
            },
            policies: None,
            endpoints: None,
            flows: None,
        }
    }

    /// Ring-buffer reserve failures so far (allow, deny, audit).
    pub fn lost(&self) -> Result<[u64; 3], NodeError> {
        Ok(self.datapath.lost_events()?)
    }

    /// How `fg_to_pod` handled packets so far (`Datapath::path_stats`).
    pub fn path_stats(&self) -> Result<crate::datapath::PathStats, NodeError> {
        Ok(self.datapath.path_stats()?)
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn set_mode(&mut self, mode: Mode) {
        self.mode = mode;
    }
}
