//! Map keys and values built from whole 32-bit words.
//!
//! The BPF backend cannot assume anything about the alignment of a byte array, so a struct
//! literal with `[u8; N]` fields and zeroed pad bytes compiles into one load and one store per
//! byte (each byte kept in its own stack slot in between) and a call to a `memset` subprogram for
//! the pad. On the established path that was most of the program's own time. Built here as
//! `[u32; N]` and transmuted, each key is a handful of word stores, and addresses travel through
//! the programs as `Addr` words.

use flowgate_abi::{CT_HI, CT_LO, ConnKey, CtValue, EndpointKey, FlowKey, FragKey, PolicyKeyData};

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

/// The endpoint's view of a flow (the deny-dedup key).
#[inline(always)]
pub(crate) fn flow_key(ifindex: u32, proto: u8, view: &View) -> FlowKey {
    let (local, remote) = (view.local, view.remote);
    let words: [u32; 11] = [
        ifindex,
        byte_word(proto),
        pair_word(
            view.local_port.to_ne_bytes(),
            view.remote_port.to_ne_bytes(),
        ),
        local[0],
        local[1],
        local[2],
        local[3],
        remote[0],
        remote[1],
        remote[2],
        remote[3],
    ];
    // SAFETY: `FlowKey` is `repr(C)`, 44 bytes (asserted in flowgate-abi) of integers and byte
    // arrays laid out as above with no implicit padding; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 11], FlowKey>(words) }
}

/// A packet's flow as the local endpoint sees it: `local` is the pod's side.
#[derive(Clone, Copy)]
pub(crate) struct View {
    pub(crate) local: Addr,
    pub(crate) remote: Addr,
    pub(crate) local_port: u16,
    pub(crate) remote_port: u16,
}

/// Whether end `(a, a_port)` orders before `(b, b_port)`: address words as stored, then port.
/// Any fixed order would do; both ends of a connection must only compute the same one.
#[inline(always)]
fn lower(a: &Addr, a_port: u16, b: &Addr, b_port: u16) -> bool {
    if a[3] != b[3] {
        // The word that differs first for IPv4 (mapped: the first three words are the same).
        return a[3] < b[3];
    }
    if a[0] != b[0] {
        return a[0] < b[0];
    }
    if a[1] != b[1] {
        return a[1] < b[1];
    }
    if a[2] != b[2] {
        return a[2] < b[2];
    }
    a_port < b_port
}

/// The conntrack key of the connection, and which of its ends is the local endpoint
/// (`CT_LO` or `CT_HI`).
#[inline(always)]
pub(crate) fn conn_key(proto: u8, view: &View) -> (ConnKey, usize) {
    let local_lo = lower(&view.local, view.local_port, &view.remote, view.remote_port);
    let (lo, lo_port, hi, hi_port, mine) = if local_lo {
        (
            view.local,
            view.local_port,
            view.remote,
            view.remote_port,
            CT_LO,
        )
    } else {
        (
            view.remote,
            view.remote_port,
            view.local,
            view.local_port,
            CT_HI,
        )
    };
    let words: [u32; 10] = [
        byte_word(proto),
        pair_word(lo_port.to_ne_bytes(), hi_port.to_ne_bytes()),
        lo[0],
        lo[1],
        lo[2],
        lo[3],
        hi[0],
        hi[1],
        hi[2],
        hi[3],
    ];
    // SAFETY: `ConnKey` is `repr(C)`, 40 bytes (asserted in flowgate-abi): proto, 3 pad bytes,
    // the two ports, the two addresses; no implicit padding, every bit pattern is valid.
    (
        unsafe { core::mem::transmute::<[u32; 10], ConnKey>(words) },
        mine,
    )
}

/// A new conntrack entry holding one end's state (`mine`); the other end is empty.
#[inline(always)]
pub(crate) fn ct_value(
    mine: usize,
    ifindex: u32,
    generation: u32,
    direction: u8,
    verdict: u8,
    decided_ns: u64,
) -> CtValue {
    // One end: ifindex, generation, then direction, verdict and 2 pad bytes.
    let end = [
        ifindex,
        generation,
        u32::from_ne_bytes([direction, verdict, 0, 0]),
    ];
    let empty = [0u32; 3];
    let (lo, hi) = if mine == CT_HI {
        (empty, end)
    } else {
        (end, empty)
    };
    let ns = decided_ns.to_ne_bytes();
    let words: [u32; 8] = [
        lo[0],
        lo[1],
        lo[2],
        hi[0],
        hi[1],
        hi[2],
        u32::from_ne_bytes([ns[0], ns[1], ns[2], ns[3]]),
        u32::from_ne_bytes([ns[4], ns[5], ns[6], ns[7]]),
    ];
    // SAFETY: `CtValue` is `repr(C)`, 32 bytes (asserted in flowgate-abi): two 12-byte `CtEnd`s
    // (ifindex, generation, direction, verdict, 2 pad bytes) and `decided_ns` at offset 24, no
    // implicit padding; every bit pattern is valid.
    unsafe { core::mem::transmute::<[u32; 8], CtValue>(words) }
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
