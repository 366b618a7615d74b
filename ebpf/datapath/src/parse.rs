//! Packet parsing for both programs: the Ethernet and IP headers read directly, the L4 header
//! at its usual offsets directly and elsewhere with one helper copy, IPv6 extension headers,
//! and fragments (a first fragment records its ports for the later ones in `FG_FRAGS`).

use aya_ebpf::programs::TcContext;
use flowgate_abi::{FragValue, PROTO_ICMP, PROTO_ICMPV6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

use crate::FG_FRAGS;
use crate::keys::{Addr, frag_key, v4_mapped, v6};

const ETH_HLEN: usize = 14;
const ETH_HLEN_U32: u32 = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;

/// What to do with a parsed packet before any policy.
const KIND_NORMAL: u8 = 0;
/// Always passes: ICMP errors (related to a flow), IPv6 neighbour discovery and MLD.
pub(crate) const KIND_PASS: u8 = 1;
/// A non-first fragment whose first fragment was not seen: ports unknown.
pub(crate) const KIND_FRAGMENT_UNKNOWN: u8 = 2;

/// The parsed packet; only plain scalars, so it survives helper calls on the stack.
pub(crate) struct Packet {
    pub(crate) ifindex: u32,
    /// IP packet length (the skb's length without the Ethernet header).
    pub(crate) len: u32,
    pub(crate) src: Addr,
    pub(crate) dst: Addr,
    pub(crate) src_port: u16,
    pub(crate) dst_port: u16,
    pub(crate) proto: u8,
    pub(crate) ip_version: u8,
    pub(crate) tcp_flags: u8,
    pub(crate) kind: u8,
}

#[inline(always)]
pub(crate) fn parse(ctx: &TcContext, ifindex: u32) -> Option<Packet> {
    let ether_type = u16::from_be(load::<u16>(ctx, 12)?);
    let mut pkt = Packet {
        ifindex,
        len: ctx.len().saturating_sub(ETH_HLEN_U32),
        src: [0; 4],
        dst: [0; 4],
        src_port: 0,
        dst_port: 0,
        proto: 0,
        ip_version: 0,
        tcp_flags: 0,
        kind: KIND_NORMAL,
    };
    let l4: usize;
    let mut fragment = false;
    let mut first_fragment = true;
    let mut more_fragments = false;
    let mut frag_id: u32 = 0;
    if ether_type == ETH_P_IP {
        let vihl: u8 = load(ctx, ETH_HLEN)?;
        let ihl = usize::from(vihl & 0x0f) * 4;
        if ihl < 20 {
            return None;
        }
        let id = u16::from_be(load::<u16>(ctx, ETH_HLEN + 4)?);
        let frag = u16::from_be(load::<u16>(ctx, ETH_HLEN + 6)?);
        pkt.proto = load(ctx, ETH_HLEN + 9)?;
        let src: [u8; 4] = load(ctx, ETH_HLEN + 12)?;
        let dst: [u8; 4] = load(ctx, ETH_HLEN + 16)?;
        pkt.src = v4_mapped(src);
        pkt.dst = v4_mapped(dst);
        pkt.ip_version = 4;
        let offset = frag & 0x1fff;
        more_fragments = frag & 0x2000 != 0;
        if offset != 0 || more_fragments {
            fragment = true;
            first_fragment = offset == 0;
            frag_id = u32::from(id);
        }
        l4 = ETH_HLEN + ihl;
    } else if ether_type == ETH_P_IPV6 {
        let mut next: u8 = load(ctx, ETH_HLEN + 6)?;
        pkt.src = v6(load(ctx, ETH_HLEN + 8)?);
        pkt.dst = v6(load(ctx, ETH_HLEN + 24)?);
        pkt.ip_version = 6;
        let mut off = ETH_HLEN + 40;
        // Walk up to four extension headers (hop-by-hop, routing, destination options, fragment).
        for _ in 0..4 {
            if next == 0 || next == 43 || next == 60 {
                let hdr: [u8; 2] = ctx.load(off).ok()?;
                next = hdr[0];
                off += (usize::from(hdr[1]) + 1) * 8;
            } else if next == 44 {
                let hdr: [u8; 8] = ctx.load(off).ok()?;
                next = hdr[0];
                let fo = u16::from_be_bytes([hdr[2], hdr[3]]);
                fragment = true;
                first_fragment = fo >> 3 == 0;
                more_fragments = fo & 1 != 0;
                frag_id = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
                off += 8;
            } else {
                break;
            }
        }
        pkt.proto = next;
        l4 = off;
    } else {
        return None;
    }

    if fragment && !first_fragment {
        let fkey = frag_key(ifindex, frag_id, pkt.proto, pkt.src, pkt.dst);
        // SAFETY: the value is copied out at once.
        match unsafe { FG_FRAGS.get(&fkey) } {
            Some(ports) => {
                pkt.src_port = ports.src_port;
                pkt.dst_port = ports.dst_port;
            }
            None => pkt.kind = KIND_FRAGMENT_UNKNOWN,
        }
        return Some(pkt);
    }

    // The L4 header: read directly at the two usual offsets, else one helper copy (see
    // `load_l4`).
    match pkt.proto {
        PROTO_TCP => {
            // Ports and the flags byte (offset 13) in one copy.
            let hdr: [u8; 14] = load_l4(ctx, l4)?;
            pkt.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
            pkt.tcp_flags = hdr[13];
        }
        PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = load_l4(ctx, l4)?;
            pkt.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        PROTO_ICMP => {
            let hdr: [u8; 8] = load_l4(ctx, l4)?;
            match hdr[0] {
                // Echo request / reply: the identifier tracks the exchange like a port.
                0 | 8 => {
                    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
                    pkt.src_port = id;
                    pkt.dst_port = id;
                }
                // Errors about another flow (unreachable, redirect, time exceeded, ...).
                3 | 4 | 5 | 11 | 12 => pkt.kind = KIND_PASS,
                _ => {}
            }
        }
        PROTO_ICMPV6 => {
            let hdr: [u8; 8] = load_l4(ctx, l4)?;
            match hdr[0] {
                128 | 129 => {
                    let id = u16::from_be_bytes([hdr[4], hdr[5]]);
                    pkt.src_port = id;
                    pkt.dst_port = id;
                }
                // Errors; MLD and neighbour discovery (the IPv6 ARP) must always pass.
                1..=4 | 130..=137 | 143 => pkt.kind = KIND_PASS,
                _ => {}
            }
        }
        _ => {}
    }
    if fragment && more_fragments {
        let fkey = frag_key(ifindex, frag_id, pkt.proto, pkt.src, pkt.dst);
        let value = FragValue {
            src_port: pkt.src_port,
            dst_port: pkt.dst_port,
        };
        let _ = FG_FRAGS.insert(&fkey, &value, 0);
    }
    Some(pkt)
}

/// A `T` at `offset`: read straight from the linear packet data when it is there (a bounds
/// check and a load), else copied out with `bpf_skb_load_bytes` (non-linear skbs).
#[inline(always)]
fn load<T: Copy>(ctx: &TcContext, offset: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return ctx.load::<T>(offset).ok();
    }
    let ptr = (start + offset) as *const T;
    // SAFETY: the bytes [ptr, ptr + size_of::<T>()) are inside the packet's linear data
    // (checked above); T is plain bytes or integers, read unaligned.
    Some(unsafe { ptr.read_unaligned() })
}

/// The L4 header at `l4`. Direct reads need an offset the verifier can range-check, so the
/// two usual offsets (IPv4 without options, IPv6 without extension headers) are constants
/// here; any other offset (IP options, extension headers) takes one `bpf_skb_load_bytes`.
#[inline(always)]
fn load_l4<T: Copy>(ctx: &TcContext, l4: usize) -> Option<T> {
    if l4 == ETH_HLEN + 20 {
        load(ctx, ETH_HLEN + 20)
    } else if l4 == ETH_HLEN + 40 {
        load(ctx, ETH_HLEN + 40)
    } else {
        ctx.load(l4).ok()
    }
}
