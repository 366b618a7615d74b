//! The `flowgate` agent crate: everything that does I/O. The command line (`cli`), the eBPF
//! datapath loader (`datapath`), the lab node (`lab`), a node at work (`node`); the binary (`main.rs`) only parses arguments and dispatches.

pub mod cli;
pub mod datapath;
pub mod discovery;
pub mod http;
pub mod k8s;
pub mod lab;
pub mod metrics;
pub mod node;
pub mod otlp;
