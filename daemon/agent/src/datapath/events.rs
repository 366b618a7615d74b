//! Reading `FlowEvent`s from the ring buffer. The kernel submits with `BPF_RB_NO_WAKEUP` (a
//! wake-up per event costs ~3 us on this kind of VM), so epoll readiness almost never fires:
//! readers drain on a short timer.

use aya::maps::{MapData, RingBuf};
use flowgate_abi::FlowEvent;

pub use flowgate_flows::decode::{DecodeError, decode};

/// Counters of one reader.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReaderStats {
    pub decoded: u64,
    /// Records that did not decode (wrong size or version): counted, never silently dropped.
    pub malformed: u64,
}

/// Everything currently in the ring.
pub fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<FlowEvent>, stats: &mut ReaderStats) {
    while let Some(item) = ring.next() {
        match decode(&item) {
            Ok(event) => {
                stats.decoded += 1;
                out.push(event);
            }
            Err(_) => stats.malformed += 1,
        }
    }
}
