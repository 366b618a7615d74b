//! Reading `FlowEvent`s from the ring buffer. The kernel submits with `BPF_RB_NO_WAKEUP` (a
//! wake-up per event costs ~3 us on this kind of VM), so epoll readiness almost never fires:
//! readers drain on a short timer.

use aya::maps::{MapData, RingBuf};
use flowgate_abi::{ABI_VERSION, FlowEvent};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring-buffer record of {len} bytes, expected {expected}")]
    Length { len: usize, expected: usize },
    #[error("ring-buffer record of ABI version {version}, this agent reads version {ABI_VERSION}")]
    Version { version: u8 },
}

/// Decodes one ring-buffer record.
pub fn decode(bytes: &[u8]) -> Result<FlowEvent, DecodeError> {
    let expected = size_of::<FlowEvent>();
    if bytes.len() != expected {
        return Err(DecodeError::Length {
            len: bytes.len(),
            expected,
        });
    }
    // SAFETY: the length is checked; FlowEvent is #[repr(C)] with only integer fields and
    // explicit padding, so every bit pattern is a valid value; read_unaligned needs no alignment.
    let event = unsafe { bytes.as_ptr().cast::<FlowEvent>().read_unaligned() };
    if event.version != ABI_VERSION {
        return Err(DecodeError::Version {
            version: event.version,
        });
    }
    Ok(event)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(version: u8) -> Vec<u8> {
        let mut b = vec![0u8; size_of::<FlowEvent>()];
        b[0] = version;
        b
    }

    #[test]
    fn decodes_a_record_of_the_current_version() {
        let mut bytes = record(ABI_VERSION);
        bytes[8] = 7; // ifindex, little-endian
        let event = decode(&bytes).expect("a record of the current version decodes");
        assert_eq!((event.version, event.ifindex), (ABI_VERSION, 7));
    }

    #[test]
    fn rejects_other_versions_and_lengths() {
        assert_eq!(
            decode(&record(ABI_VERSION + 1)),
            Err(DecodeError::Version {
                version: ABI_VERSION + 1
            })
        );
        assert_eq!(
            decode(&[0u8; 56]),
            Err(DecodeError::Length {
                len: 56,
                expected: 88
            })
        );
    }
}
