//! Kubernetes mode: the cluster source. `watch` runs the watchers and feeds `store`; `debounce`
//! decides when the control loop (`cli::agent_cluster`) recompiles.

pub mod debounce;
pub mod store;
pub mod watch;
