//! The agent's side of the Prometheus metrics: one `flowgate_flows::metrics::Metrics` shared by
//! the metrics sink (records), the HTTP handler (`/metrics`) and the control loop (generation,
//! endpoints, apply latency, sink losses).

use std::sync::Arc;

use flowgate_flows::Fanout;
use flowgate_flows::metrics::{EndpointCounts, Metrics, MetricsSink};
use flowgate_flows::pipeline::SinkStats;
use flowgate_policy::Cluster;
use flowgate_policy::compile::Snapshot;

use crate::http::MetricsText;
use crate::node::ApplyStats;

#[derive(Debug, Clone)]
pub struct AgentMetrics {
    metrics: Arc<Metrics>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentMetrics {
    pub fn new() -> Self {
        Self {
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// At most `max_series` series per label family; further label sets go to `__other__`.
    pub fn with_max_series(max_series: usize) -> Self {
        Self {
            metrics: Arc::new(Metrics::with_max_series(max_series)),
        }
    }

    /// The families themselves (for the figures only the control loop knows).
    pub fn flows(&self) -> &Metrics {
        &self.metrics
    }

    /// What `/metrics` serves.
    pub fn text(&self) -> MetricsText {
        let m = Arc::clone(&self.metrics);
        Arc::new(move || m.encode())
    }

    /// Adds the metrics sink to a fan-out.
    pub fn attach(&self, mut fanout: Fanout, queue: usize) -> std::io::Result<Fanout> {
        fanout.add_sink(Box::new(MetricsSink::new(Arc::clone(&self.metrics))), queue)?;
        Ok(fanout)
    }

    /// After a snapshot is in the datapath: generation, endpoints, apply latency, and the series
    /// of deleted policies removed.
    pub fn applied(&self, stats: &ApplyStats, snapshot: &Snapshot, cluster: &Cluster) {
        self.metrics.set_policy_generation(stats.generation);
        let mut counts = EndpointCounts::default();
        for e in snapshot.endpoints.values() {
            counts.add(
                !e.ingress.isolated_by.is_empty(),
                !e.egress.isolated_by.is_empty(),
            );
        }
        self.metrics.set_endpoints(counts);
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        use flowgate_abi::{capacity, maps};
        self.metrics.set_map_fill(&[
            (
                maps::ENDPOINTS,
                count(snapshot.endpoints.len()),
                u64::from(capacity::ENDPOINTS),
            ),
            (
                maps::IPCACHE,
                count(snapshot.ipcache.len()),
                u64::from(capacity::IPCACHE),
            ),
            (
                maps::POLICY,
                count(snapshot.resident_cells()),
                u64::from(capacity::POLICY),
            ),
        ]);
        self.metrics
            .observe_policy_apply(stats.compile + stats.enrich + stats.write);
        let live: Vec<(String, String)> = cluster
            .policies()
            .map(|(_, p)| (p.namespace.clone(), p.name.clone()))
            .collect();
        self.metrics.retain_policies(&live);
    }

    /// Every sink's losses so far.
    pub fn sinks(&self, stats: &[SinkStats]) {
        self.metrics.set_sink_losses(stats);
    }
}
