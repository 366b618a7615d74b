//! Map keys and values built from whole 32-bit words.
//!
//! The BPF backend cannot assume anything about the alignment of a byte array, so a struct
//! literal with `[u8; N]` fields and zeroed pad bytes compiles into one load and one store per
//! byte (each byte kept in its own stack slot in between) and a call to a `memset` subprogram for
//! the pad. On the established path that was most of the program's own time. Built here as
//! `[u32; N]` and transmuted, each key is a handful of word stores, and addresses travel through
//! the programs as `Addr` words.

use flowgate_abi::{CtKey, CtValue, EndpointKey, FragKey, PolicyKeyData};

/// An address as it sits in a map key: IPv6, or IPv4 mapped (`::ffff:a.b.c.d`), its 16 bytes in
/// network order held as four words (word `i` holds bytes `4i..4i + 4` in memory order).
pub(crate) type Addr = [u32; 4];

/// The same 16 bytes as an array.
#[inline(always)]
pub(crate) fn bytes(a: Addr) -> [u8; 16] {
    // SAFETY: same size, every bit pattern valid for both.
    unsafe { core::mem::transmute::<Addr, [u8; 16]>(a) }
}

/// Borrows the address as the `[u8; 16]` map key it is.
#[inline(always)]
pub(crate) fn as_bytes(a: &Addr) -> &[u8; 16] {
    // SAFETY: same size; `[u8; 16]` needs no more alignment than `[u32; 4]` has.
    unsafe { &*core::ptr::from_ref(a).cast::<[u8; 16]>() }
}

/// An IPv4 address mapped into IPv6, from its 4 bytes in network order.
#[inline(always)]
pub(crate) fn v4_mapped(a: [u8; 4]) -> Addr {
    [
        0,
        0,
        u32::from_ne_bytes([0, 0, 0xff, 0xff]),
        u32::from_ne_bytes(a),
    ]
}

/// An IPv6 address from its 16 bytes in network order.
#[inline(always)]
pub(crate) fn v6(a: [u8; 16]) -> Addr {
    [
        u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
        u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
        u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
        u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
    ]
}

/// A byte followed by three zero bytes, as one word.
#[inline(always)]
fn byte_word(b: u8) -> u32 {
    u32::from_ne_bytes([b, 0, 0, 0])
}

/// Two `u16` fields in memory order, as one word.
#[inline(always)]
fn pair_word(first: [u8; 2], second: [u8; 2]) -> u32 {
    u32::from_ne_bytes([first[0], first[1], second[0], second[1]])
}

/// The conntrack key: the endpoint's view of the connection.
#[inline(always)]
pub(crate) fn ct_key(
    ifindex: u32,
    proto: u8,
    local_port: u16,
    remote_port: u16,
    local: Addr,
    remote: Addr,
) -> CtKey {
    let words: [u32; 11] = [
        ifindex,
        byte_word(proto),
        pair_word(local_port.to_ne_bytes(), remote_port.to_ne_bytes()),
        local[0],
        local[1],
        local[2],
        local[3],
        remote[0],
        remote[1],
        remote[2],
        remote[3],
    ];
    // SAFETY: `CtKey` is `repr(C)`, 44 bytes (asserted in flowgate-abi) of integers and byte
    // arrays laid out as above with no implicit padding; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 11], CtKey>(words) }
}

/// A conntrack value.
#[inline(always)]
pub(crate) fn ct_value(
    generation: u32,
    direction: u8,
    verdict: u8,
    peer_generation: u32,
    created_ns: u64,
) -> CtValue {
    let g = generation.to_ne_bytes();
    let p = peer_generation.to_ne_bytes();
    let words: [u64; 3] = [
        u64::from_ne_bytes([g[0], g[1], g[2], g[3], direction, verdict, 0, 0]),
        u64::from_ne_bytes([p[0], p[1], p[2], p[3], 0, 0, 0, 0]),
        created_ns,
    ];
    // SAFETY: `CtValue` is `repr(C)`, 24 bytes (asserted in flowgate-abi): generation, direction,
    // verdict, 2 pad bytes, peer_generation, 4 pad bytes, created_ns; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u64; 3], CtValue>(words) }
}

/// The endpoint table's key.
#[inline(always)]
pub(crate) fn endpoint_key(ifindex: u32, parity: u8) -> EndpointKey {
    // SAFETY: `EndpointKey` is `repr(C)`: ifindex, parity, 3 pad bytes (8 bytes, asserted).
    unsafe { core::mem::transmute::<[u32; 2], EndpointKey>([ifindex, byte_word(parity)]) }
}

/// The fragment table's key.
#[inline(always)]
pub(crate) fn frag_key(ifindex: u32, id: u32, proto: u8, src: Addr, dst: Addr) -> FragKey {
    let words: [u32; 11] = [
        ifindex,
        id,
        byte_word(proto),
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    // SAFETY: `FragKey` is `repr(C)`, 44 bytes (asserted): ifindex, id, proto, 3 pad bytes,
    // then the two addresses; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 11], FragKey>(words) }
}

/// The policy table's key data (big-endian fields, so that LPM prefixes run over them in order).
#[inline(always)]
pub(crate) fn policy_key(table: u32, identity: u32, proto: u8, port: u16) -> PolicyKeyData {
    let p = port.to_be_bytes();
    let words: [u32; 3] = [
        u32::from_ne_bytes(table.to_be_bytes()),
        u32::from_ne_bytes(identity.to_be_bytes()),
        u32::from_ne_bytes([proto, 0, p[0], p[1]]),
    ];
    // SAFETY: `PolicyKeyData` is `repr(C)`, 12 bytes (asserted) of byte arrays in this order:
    // table, identity, proto, 1 pad byte, port; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 3], PolicyKeyData>(words) }
}
