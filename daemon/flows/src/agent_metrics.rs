//! The metric families about the agent's own inputs, registered by `Metrics::with_max_series`
//! next to the flow families: how long a cluster change takes to reach the datapath, objects
//! and watches of the cluster source that failed, local pods the datapath cannot enforce for,
//! and how full the datapath's maps are. Every label is from a small fixed set (kind, reason,
//! map).

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

/// The cluster-source kinds, as the `kind` label has them.
pub const SOURCE_KINDS: [&str; 3] = ["Namespace", "Pod", "NetworkPolicy"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MapLabels {
    map: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PathLabels {
    path: String,
}

/// The `path` label of `flowgate_datapath_packets_total`.
pub const DATAPATH_PATHS: [&str; 2] = ["peer_judged", "receiver_judged"];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Debug)]
pub(crate) struct AgentFamilies {
    policy_sync: Histogram,
    rejected: Family<KindLabels, Counter>,
    watch_errors: Family<KindLabels, Counter>,
    unenforced: Family<ReasonLabels, Gauge<u64, AtomicU64>>,
    unenforced_reasons: std::sync::Mutex<std::collections::BTreeSet<String>>,
    map_entries: Family<MapLabels, Gauge<u64, AtomicU64>>,
    map_capacity: Family<MapLabels, Gauge<u64, AtomicU64>>,
    datapath_packets: Family<PathLabels, Counter>,
    /// The kernel's totals as of the last `set_datapath_paths`; `None` before the first.
    datapath_seen: std::sync::Mutex<Option<[u64; 2]>>,
}

/// Buckets of `flowgate_policy_sync_seconds`: 1 ms to about 65 s, doubling.
fn sync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 17)
}

impl AgentFamilies {
    pub(crate) fn register(r: &mut Registry) -> Self {
        let policy_sync = Histogram::new(sync_buckets());
        r.register_with_unit(
            "flowgate_policy_sync",
            "Time from a Kubernetes API event that changed policy state to the snapshot \
             including it being in the datapath (debounce included)",
            Unit::Seconds,
            policy_sync.clone(),
        );
        let rejected = Family::<KindLabels, Counter>::default();
        r.register(
            "flowgate_source_objects_rejected",
            "Objects from the Kubernetes API that failed validation and were skipped (the \
             previous version stays in force)",
            rejected.clone(),
        );
        let watch_errors = Family::<KindLabels, Counter>::default();
        r.register(
            "flowgate_source_watch_errors",
            "Failed list or watch requests to the Kubernetes API (retried with backoff)",
            watch_errors.clone(),
        );
        let unenforced = Family::<ReasonLabels, Gauge<u64, AtomicU64>>::default();
        r.register(
            "flowgate_pods_unenforced",
            "Local pods with an IP whose host interface cannot be found or attached, so policy \
             is not enforced for them, by reason",
            unenforced.clone(),
        );
        let map_entries = Family::<MapLabels, Gauge<u64, AtomicU64>>::default();
        r.register(
            "flowgate_map_entries",
            "Entries of the policy snapshot in force in each datapath map the agent fills \
             (FG_ENDPOINTS, FG_IPCACHE, FG_POLICY)",
            map_entries.clone(),
        );
        let map_capacity = Family::<MapLabels, Gauge<u64, AtomicU64>>::default();
        r.register(
            "flowgate_map_capacity",
            "Maximum entries of each datapath map the agent fills: an apply that needs more fails \
             and the previous snapshot stays in force",
            map_capacity.clone(),
        );
        let datapath_packets = Family::<PathLabels, Counter>::default();
        r.register(
            "flowgate_datapath_packets",
            "Packets into local pods by how fg_to_pod handled them: peer_judged (a same-node \
             connection both ends had passed under the policy in force: judged once, at the \
             sender) or receiver_judged (looked at by the receiving pod's own hook)",
            datapath_packets.clone(),
        );
        let families = Self {
            datapath_packets,
            datapath_seen: std::sync::Mutex::default(),
            map_entries,
            map_capacity,
            policy_sync,
            rejected,
            watch_errors,
            unenforced,
            unenforced_reasons: std::sync::Mutex::default(),
        };
        // Zeros from the start, so increase() and alerts see a series, not nothing.
        for kind in SOURCE_KINDS {
            let labels = KindLabels { kind: kind.into() };
            families.rejected.get_or_create(&labels).inc_by(0);
            families.watch_errors.get_or_create(&labels).inc_by(0);
        }
        for path in DATAPATH_PATHS {
            let labels = PathLabels { path: path.into() };
            families.datapath_packets.get_or_create(&labels).inc_by(0);
        }
        families
    }

    /// `flowgate_datapath_packets_total{path}` from the kernel's running totals (in
    /// `DATAPATH_PATHS` order). The first call sets the baseline: counts from before this agent
    /// (a pinned datapath it adopted) are not exported again. A total that went down (a new
    /// datapath) counts from zero.
    pub(crate) fn set_datapath_paths(&self, totals: [u64; 2]) {
        let mut seen = self
            .datapath_seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = seen.as_ref() {
            for ((path, now), before) in DATAPATH_PATHS.iter().zip(totals).zip(last) {
                let delta = if now >= *before { now - before } else { now };
                let labels = PathLabels {
                    path: (*path).into(),
                };
                self.datapath_packets.get_or_create(&labels).inc_by(delta);
            }
        }
        *seen = Some(totals);
    }

    /// `flowgate_map_entries` / `flowgate_map_capacity`: (map, entries, capacity).
    pub(crate) fn set_map_fill(&self, maps: &[(&str, u64, u64)]) {
        for (map, entries, capacity) in maps {
            let labels = MapLabels {
                map: (*map).to_owned(),
            };
            self.map_entries.get_or_create(&labels).set(*entries);
            self.map_capacity.get_or_create(&labels).set(*capacity);
        }
    }

    pub(crate) fn observe_policy_sync(&self, elapsed: Duration) {
        self.policy_sync.observe(elapsed.as_secs_f64());
    }

    pub(crate) fn source_rejected(&self, kind: &str) {
        self.rejected
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub(crate) fn source_watch_error(&self, kind: &str) {
        self.watch_errors
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Replaces every `flowgate_pods_unenforced` series: `(reason, pods)`; reasons not given
    /// drop to 0 (kept, so a resolved problem reads as 0, not as a vanished series).
    pub(crate) fn set_unenforced(&self, by_reason: &[(&str, u64)]) {
        let mut known = self
            .unenforced_reasons
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for reason in known.iter() {
            if !by_reason.iter().any(|(r, _)| r == reason) {
                self.unenforced
                    .get_or_create(&ReasonLabels {
                        reason: reason.clone(),
                    })
                    .set(0);
            }
        }
        for (reason, pods) in by_reason {
            known.insert((*reason).to_owned());
            self.unenforced
                .get_or_create(&ReasonLabels {
                    reason: (*reason).into(),
                })
                .set(*pods);
        }
    }
}
