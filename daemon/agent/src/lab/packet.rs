//! Wire formats the lab writes and reads by hand: SCTP packets (INIT, INIT-ACK, ABORT) with their
//! CRC32c checksum, ICMP/ICMPv6 echo and error messages, and the IPv4 header of raw sockets.
//! Pure functions, used by the lab's SCTP server (`servers`) and its probe clients (`probe`).

use std::hash::BuildHasher;

/// A fresh 64-bit number for tags, TSNs, echo ids and tokens: unpredictable enough to tell
/// concurrent probes apart (std's per-process random hash keys), not for cryptography.
pub(super) fn nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    std::collections::hash_map::RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// SCTP chunk types the lab speaks (RFC 9260, section 3.2).
pub(super) const CHUNK_INIT: u8 = 1;
pub(super) const CHUNK_INIT_ACK: u8 = 2;
pub(super) const CHUNK_ABORT: u8 = 6;

const SCTP_COMMON_HEADER: usize = 12;
const INIT_CHUNK_LEN: usize = 20;
/// State Cookie parameter (type 7) carried by an INIT-ACK: 4 bytes of header + 8 of cookie.
const STATE_COOKIE_PARAM: u16 = 7;
const STATE_COOKIE_LEN: usize = 12;

/// CRC32c (Castagnoli), reflected polynomial, as SCTP uses it (RFC 9260 appendix B).
const CRC32C_POLY: u32 = 0x82F6_3B78;

const CRC32C_TABLE: [u32; 256] = crc32c_table();

const fn crc32c_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i: u32 = 0;
    while i < 256 {
        let mut crc = i;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ CRC32C_POLY
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i as usize] = crc;
        i += 1;
    }
    table
}

/// CRC32c of `data` (initial value all ones, final complement).
pub(super) fn crc32c(data: &[u8]) -> u32 {
    let mut crc = u32::MAX;
    for &byte in data {
        let index = (crc ^ u32::from(byte)).to_le_bytes()[0];
        crc = CRC32C_TABLE[usize::from(index)] ^ (crc >> 8);
    }
    !crc
}

/// Writes the SCTP checksum of `packet` (common header + chunks) into bytes 8..12. The CRC is
/// computed with the field zeroed and stored least significant byte first, as Linux does.
fn seal_sctp(packet: &mut [u8]) {
    if packet.len() < SCTP_COMMON_HEADER {
        return;
    }
    packet[8..12].fill(0);
    let crc = crc32c(packet);
    packet[8..12].copy_from_slice(&crc.to_le_bytes());
}

fn sctp_common_header(src_port: u16, dst_port: u16, vtag: u32) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&src_port.to_be_bytes());
    packet.extend_from_slice(&dst_port.to_be_bytes());
    packet.extend_from_slice(&vtag.to_be_bytes());
    packet.extend_from_slice(&[0; 4]);
    packet
}

/// The association parameters of an INIT or INIT-ACK chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct InitParams {
    pub initiate_tag: u32,
    pub a_rwnd: u32,
    pub outbound_streams: u16,
    pub inbound_streams: u16,
    pub initial_tsn: u32,
}

impl InitParams {
    pub(super) fn new(initiate_tag: u32, initial_tsn: u32) -> Self {
        Self {
            // A zero initiate tag is illegal (RFC 9260, 3.3.2).
            initiate_tag: initiate_tag.max(1),
            a_rwnd: 65_535,
            outbound_streams: 10,
            inbound_streams: 10,
            initial_tsn,
        }
    }

    fn write(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.initiate_tag.to_be_bytes());
        out.extend_from_slice(&self.a_rwnd.to_be_bytes());
        out.extend_from_slice(&self.outbound_streams.to_be_bytes());
        out.extend_from_slice(&self.inbound_streams.to_be_bytes());
        out.extend_from_slice(&self.initial_tsn.to_be_bytes());
    }
}

fn chunk_header(out: &mut Vec<u8>, kind: u8, length: usize) {
    out.push(kind);
    out.push(0); // flags; for ABORT the T bit stays 0: the tag is the peer's, not reflected
    out.extend_from_slice(&u16::try_from(length).unwrap_or(u16::MAX).to_be_bytes());
}

/// An SCTP packet holding one INIT chunk, as a client opening an association sends it
/// (verification tag 0).
pub(super) fn sctp_init(src_port: u16, dst_port: u16, params: &InitParams) -> Vec<u8> {
    let mut packet = sctp_common_header(src_port, dst_port, 0);
    chunk_header(&mut packet, CHUNK_INIT, INIT_CHUNK_LEN);
    params.write(&mut packet);
    seal_sctp(&mut packet);
    packet
}

/// The INIT-ACK a listening endpoint answers an INIT with: ports swapped, verification tag =
/// the INIT's initiate tag, our own association parameters and a State Cookie.
pub(super) fn sctp_init_ack(init: &SctpPacket, ours: &InitParams, cookie: u64) -> Vec<u8> {
    let vtag = init.init.map_or(0, |p| p.initiate_tag);
    let mut packet = sctp_common_header(init.dst_port, init.src_port, vtag);
    chunk_header(
        &mut packet,
        CHUNK_INIT_ACK,
        INIT_CHUNK_LEN + STATE_COOKIE_LEN,
    );
    ours.write(&mut packet);
    packet.extend_from_slice(&STATE_COOKIE_PARAM.to_be_bytes());
    let param_len = u16::try_from(STATE_COOKIE_LEN).unwrap_or(u16::MAX);
    packet.extend_from_slice(&param_len.to_be_bytes());
    packet.extend_from_slice(&cookie.to_be_bytes());
    seal_sctp(&mut packet);
    packet
}

/// The ABORT an endpoint without a listener on the port answers an INIT with (RFC 9260, 8.4:
/// verification tag = the INIT's initiate tag, T bit clear).
pub(super) fn sctp_abort(init: &SctpPacket) -> Vec<u8> {
    let vtag = init.init.map_or(0, |p| p.initiate_tag);
    let mut packet = sctp_common_header(init.dst_port, init.src_port, vtag);
    chunk_header(&mut packet, CHUNK_ABORT, 4);
    seal_sctp(&mut packet);
    packet
}

/// The parts of a received SCTP packet the lab looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SctpPacket {
    pub src_port: u16,
    pub dst_port: u16,
    pub vtag: u32,
    /// Type of the first chunk.
    pub chunk: u8,
    /// The parameters, when the first chunk is an INIT or INIT-ACK.
    pub init: Option<InitParams>,
}

fn be16(bytes: &[u8], at: usize) -> Option<u16> {
    let raw = bytes.get(at..at + 2)?;
    Some(u16::from_be_bytes([raw[0], raw[1]]))
}

fn be32(bytes: &[u8], at: usize) -> Option<u32> {
    let raw = bytes.get(at..at + 4)?;
    Some(u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

/// Parses an SCTP packet (no IP header). `None` when it is truncated or its checksum is wrong:
/// a real SCTP stack silently discards such packets, and so does the lab.
pub(super) fn parse_sctp(packet: &[u8]) -> Option<SctpPacket> {
    if packet.len() < SCTP_COMMON_HEADER + 4 {
        return None;
    }
    let stored = u32::from_le_bytes([packet[8], packet[9], packet[10], packet[11]]);
    let mut zeroed = packet.to_vec();
    zeroed[8..12].fill(0);
    if crc32c(&zeroed) != stored {
        return None;
    }
    let chunk = packet[SCTP_COMMON_HEADER];
    let init = if chunk == CHUNK_INIT || chunk == CHUNK_INIT_ACK {
        let at = SCTP_COMMON_HEADER + 4;
        Some(InitParams {
            initiate_tag: be32(packet, at)?,
            a_rwnd: be32(packet, at + 4)?,
            outbound_streams: be16(packet, at + 8)?,
            inbound_streams: be16(packet, at + 10)?,
            initial_tsn: be32(packet, at + 12)?,
        })
    } else {
        None
    };
    Some(SctpPacket {
        src_port: be16(packet, 0)?,
        dst_port: be16(packet, 2)?,
        vtag: be32(packet, 4)?,
        chunk,
        init,
    })
}

/// The payload of an IPv4 packet as an `AF_INET` raw socket returns it (header included).
pub(super) fn ipv4_payload(packet: &[u8]) -> Option<&[u8]> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 {
        return None;
    }
    packet.get(header_len..)
}

/// The Internet checksum (RFC 1071), as ICMPv4 uses it.
pub(super) fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut words = data.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(u16::from_be_bytes([*last, 0]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// ICMP message types the lab uses, per family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IcmpFamily {
    V4,
    V6,
}

impl IcmpFamily {
    fn echo_request(self) -> u8 {
        match self {
            Self::V4 => 8,
            Self::V6 => 128,
        }
    }

    fn echo_reply(self) -> u8 {
        match self {
            Self::V4 => 0,
            Self::V6 => 129,
        }
    }

    fn dest_unreachable(self) -> u8 {
        match self {
            Self::V4 => 3,
            Self::V6 => 1,
        }
    }
}

/// An echo request. ICMPv4 carries its checksum; for ICMPv6 the kernel fills it in (it covers
/// a pseudo-header only the kernel knows), so the field stays zero.
pub(super) fn icmp_echo_request(family: IcmpFamily, id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(8 + payload.len());
    message.push(family.echo_request());
    message.push(0);
    message.extend_from_slice(&[0, 0]);
    message.extend_from_slice(&id.to_be_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(payload);
    if family == IcmpFamily::V4 {
        let checksum = internet_checksum(&message);
        message[2..4].copy_from_slice(&checksum.to_be_bytes());
    }
    message
}

/// What an ICMP message received by a probe says about the probe's echo `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IcmpAnswer {
    /// An echo reply with our id and payload.
    Reply,
    /// A destination-unreachable error quoting our echo request; `code` is the ICMP code.
    Unreachable { code: u8 },
}

/// Interprets an ICMP message (no IP header) for the echo request `id` carrying `payload`.
pub(super) fn parse_icmp(
    family: IcmpFamily,
    message: &[u8],
    id: u16,
    payload: &[u8],
) -> Option<IcmpAnswer> {
    let kind = *message.first()?;
    let code = *message.get(1)?;
    if kind == family.echo_reply() {
        let matches = be16(message, 4)? == id && message.get(8..)? == payload;
        return matches.then_some(IcmpAnswer::Reply);
    }
    if kind != family.dest_unreachable() {
        return None;
    }
    // The error quotes the offending packet: its IP header, then at least 8 bytes of our echo.
    let quoted = message.get(8..)?;
    let echo = match family {
        IcmpFamily::V4 => ipv4_payload(quoted)?,
        IcmpFamily::V6 => quoted.get(40..)?,
    };
    let ours = *echo.first()? == family.echo_request() && be16(echo, 4)? == id;
    ours.then_some(IcmpAnswer::Unreachable { code })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_published_check_values() {
        // The "check" value of CRC-32C, and the RFC 3720 (iSCSI) B.4 vectors.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        let ascending: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&ascending), 0x46DD_794E);
    }

    #[test]
    fn init_round_trips_and_carries_a_valid_checksum() {
        let params = InitParams::new(0xdead_beef, 7);
        let packet = sctp_init(40_000, 80, &params);
        assert_eq!(packet.len(), 32, "common header (12) + INIT chunk (20)");
        let parsed = parse_sctp(&packet).expect("a freshly built INIT parses");
        assert_eq!(
            (parsed.src_port, parsed.dst_port, parsed.vtag),
            (40_000, 80, 0)
        );
        assert_eq!(parsed.chunk, CHUNK_INIT);
        assert_eq!(parsed.init, Some(params));
    }

    #[test]
    fn a_corrupted_packet_is_discarded() {
        let mut packet = sctp_init(1, 2, &InitParams::new(3, 4));
        packet[20] ^= 0x01;
        assert_eq!(parse_sctp(&packet), None, "a bad CRC32c must be rejected");
    }

    #[test]
    fn init_ack_and_abort_answer_the_init() {
        let init = parse_sctp(&sctp_init(40_000, 80, &InitParams::new(0x1234, 1))).unwrap();
        let ack = parse_sctp(&sctp_init_ack(&init, &InitParams::new(0x99, 5), 42)).unwrap();
        assert_eq!((ack.src_port, ack.dst_port, ack.vtag), (80, 40_000, 0x1234));
        assert_eq!(ack.chunk, CHUNK_INIT_ACK);
        assert_eq!(ack.init.map(|p| p.initiate_tag), Some(0x99));
        let abort = parse_sctp(&sctp_abort(&init)).unwrap();
        assert_eq!(
            (abort.src_port, abort.dst_port, abort.vtag),
            (80, 40_000, 0x1234)
        );
        assert_eq!(abort.chunk, CHUNK_ABORT);
    }

    #[test]
    fn zero_initiate_tag_is_never_sent() {
        assert_eq!(InitParams::new(0, 0).initiate_tag, 1);
    }

    #[test]
    fn icmpv4_echo_checksum_verifies() {
        let message = icmp_echo_request(IcmpFamily::V4, 0x4242, 1, b"flowgate");
        assert_eq!(
            internet_checksum(&message),
            0,
            "a message with its checksum sums to zero"
        );
    }

    #[test]
    fn echo_reply_and_quoted_errors_are_matched_by_id() {
        let payload = b"token";
        let mut reply = icmp_echo_request(IcmpFamily::V4, 7, 1, payload);
        reply[0] = 0;
        assert_eq!(
            parse_icmp(IcmpFamily::V4, &reply, 7, payload),
            Some(IcmpAnswer::Reply)
        );
        assert_eq!(parse_icmp(IcmpFamily::V4, &reply, 8, payload), None);

        let request = icmp_echo_request(IcmpFamily::V6, 9, 1, payload);
        let mut error = vec![1, 3, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&[0x60; 40]);
        error.extend_from_slice(&request);
        assert_eq!(
            parse_icmp(IcmpFamily::V6, &error, 9, payload),
            Some(IcmpAnswer::Unreachable { code: 3 })
        );
    }

    #[test]
    fn ipv4_header_is_skipped_by_its_length() {
        let mut packet = vec![0x46, 0, 0, 0];
        packet.resize(24, 0);
        packet.extend_from_slice(b"payload");
        assert_eq!(ipv4_payload(&packet), Some(&b"payload"[..]));
        assert_eq!(ipv4_payload(&[0x60, 0, 0]), None, "not IPv4");
    }
}
