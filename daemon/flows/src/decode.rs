//! One ring-buffer record (bytes) -> `FlowEvent`, checking its size and ABI version.

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

/// The bytes of an event as the kernel writes them (for tests and benchmarks).
pub fn encode(event: &FlowEvent) -> Vec<u8> {
    let size = size_of::<FlowEvent>();
    let mut out = vec![0u8; size];
    // SAFETY: `out` holds exactly size_of::<FlowEvent>() bytes; write_unaligned needs no alignment.
    unsafe { out.as_mut_ptr().cast::<FlowEvent>().write_unaligned(*event) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks_version_and_length() {
        let event = FlowEvent {
            version: ABI_VERSION,
            ifindex: 7,
            dst_port: 443,
            ..FlowEvent::default()
        };
        assert_eq!(decode(&encode(&event)), Ok(event));
        let mut wrong = encode(&event);
        wrong[0] = ABI_VERSION + 1;
        assert_eq!(
            decode(&wrong),
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
