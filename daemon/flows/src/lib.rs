//! flowgate-flows: the datapath's event bytes in, flow records out. `decode` reads one
//! ring-buffer record; `enrich::Enricher` turns it into a `record::FlowRecord` using lookup
//! tables of the policy generation the kernel decided with. No kernel, no cluster API here:
//! tested with plain bytes and tables.

pub mod agent_metrics;
pub mod compact;
pub mod decode;
pub mod enrich;
pub mod gap;
pub mod json;
pub mod jsonl;
pub mod metrics;
pub mod node_record;
pub mod ocsf;
pub mod pipeline;
pub mod record;

pub use decode::{DecodeError, decode};
pub use enrich::{Enricher, Tables};
pub use pipeline::{Fanout, Record, Sink};
pub use record::FlowRecord;
