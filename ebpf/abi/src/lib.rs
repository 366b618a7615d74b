//! flowgate-abi: every type that crosses an eBPF map or the ring buffer, shared by the kernel
//! programs (`ebpf/datapath`) and userspace (`flowgate-policy` compiles into these keys, the
//! agent writes them). `#[repr(C)]`, `Copy`, named padding, no `bool`, const size asserts.
//!
//! Lookup order in the kernel, per packet and direction (the pod's egress on the host side's
//! ingress hook, the pod's ingress on its egress hook):
//! 1. `ACTIVE[0]` gives the parity of the active snapshot;
//! 2. `ENDPOINTS[(ifindex, parity)]` gives the endpoint's tables and isolation (no entry: not
//!    ours, pass);
//! 3. not isolated in this direction: allow (`not_isolated`);
//! 4. `IPCACHE` (LPM on the remote address, IPv4 mapped into `::ffff:0:0/96`) gives the remote
//!    identity;
//! 5. `POLICY` (LPM on table, identity, protocol, port) gives the attribution of an allow; a miss
//!    is a default deny.

#![no_std]

use core::mem::size_of;

/// Bumped whenever a layout below changes, or the meaning of a map's entries; carried in every
/// event. A pinned datapath of another version is replaced, never adopted (`PinMeta`).
pub const ABI_VERSION: u8 = 5;

/// Map names, as in the eBPF object.
pub mod maps {
    pub const ACTIVE: &str = "FG_ACTIVE";
    pub const ENDPOINTS: &str = "FG_ENDPOINTS";
    pub const IPCACHE: &str = "FG_IPCACHE";
    pub const POLICY: &str = "FG_POLICY";
    pub const CONNTRACK: &str = "FG_CONNTRACK";
    pub const FRAGMENTS: &str = "FG_FRAGS";
    pub const DENY_DEDUP: &str = "FG_DENY_DEDUP";
    pub const EVENTS: &str = "FG_EVENTS";
    pub const LOST: &str = "FG_LOST";
    pub const LOCAL_IPS: &str = "FG_LOCAL_IPS";
    pub const STATS: &str = "FG_STATS";
    pub const FLOW_CACHE: &str = "FG_FLOW_CACHE";
}

/// Program names (at most 15 characters: the kernel truncates longer names).
pub mod programs {
    /// On the host-side interface's TC ingress: packets leaving the pod (its egress).
    pub const FROM_POD: &str = "fg_from_pod";
    /// On the host-side interface's TC egress: packets entering the pod (its ingress).
    pub const TO_POD: &str = "fg_to_pod";
}

/// Map capacities (entries).
pub mod capacity {
    pub const ENDPOINTS: u32 = 8192;
    pub const IPCACHE: u32 = 262_144;
    pub const POLICY: u32 = 1_048_576;
    pub const CONNTRACK: u32 = 262_144;
    pub const FRAGMENTS: u32 = 8192;
    pub const DENY_DEDUP: u32 = 65_536;
    /// Local pods' addresses (two per endpoint: dual stack).
    pub const LOCAL_IPS: u32 = 2 * ENDPOINTS;
    /// Slots of the per-CPU flow cache (a power of two).
    pub const FLOW_CACHE: u32 = 256;
    /// Default ring-buffer size in bytes (a power of two, a multiple of the page size).
    pub const EVENTS_BYTES: u32 = 4 * 1024 * 1024;
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_SCTP: u8 = 132;

/// Policy direction, from the pod's point of view.
pub const DIR_INGRESS: u8 = 0;
pub const DIR_EGRESS: u8 = 1;

pub const MODE_ENFORCE: u8 = 0;
pub const MODE_AUDIT: u8 = 1;

/// `ACTIVE[0]`: which of the two endpoint slots is live. Switching it is the one atomic step
/// of a snapshot update.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Active {
    /// Snapshot generation now in force.
    pub generation: u32,
    /// 0 or 1: selects `EndpointKey::parity`.
    pub parity: u8,
    /// `MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u8,
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointKey {
    /// Host-side interface of the pod.
    pub ifindex: u32,
    pub parity: u8,
    pub _pad: [u8; 3],
}

pub const ENDPOINT_INGRESS_ISOLATED: u8 = 1;
pub const ENDPOINT_EGRESS_ISOLATED: u8 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EndpointInfo {
    /// Stable id of the local endpoint (for events).
    pub endpoint_id: u32,
    /// Generation of the snapshot this entry belongs to (carried into events and conntrack).
    pub generation: u32,
    /// Policy table consulted for the pod's ingress / egress.
    pub ingress_table: u32,
    pub egress_table: u32,
    /// `ENDPOINT_*_ISOLATED` bits.
    pub flags: u8,
    pub _pad: [u8; 3],
}

/// LPM key of `IPCACHE`: IPv6, or IPv4 mapped as `::ffff:a.b.c.d` (prefix length + 96).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpCacheKey {
    pub prefixlen: u32,
    pub addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IpCacheValue {
    pub identity: u32,
}

/// Bits of `PolicyKey` data before `proto`: table (32) + identity (32).
pub const POLICY_PREFIX_ANY_PROTO: u32 = 64;
/// Bits up to and including `proto` and its pad byte: every port of one protocol.
pub const POLICY_PREFIX_PROTO: u32 = 80;
/// A single port.
pub const POLICY_PREFIX_FULL: u32 = 96;

/// The data part of a `POLICY` LPM key (what follows `prefixlen`), as the kernel map stores it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKeyData {
    pub table: [u8; 4],
    pub identity: [u8; 4],
    pub proto: u8,
    pub _pad: u8,
    pub port: [u8; 2],
}

/// LPM key of `POLICY`. All multi-byte fields are big-endian so prefixes follow their bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    pub prefixlen: u32,
    pub table: [u8; 4],
    pub identity: [u8; 4],
    pub proto: u8,
    pub _pad: u8,
    pub port: [u8; 2],
}

impl PolicyKey {
    /// The key of a lookup (full prefix) or of an entry covering `port` with `prefixlen`.
    pub const fn new(prefixlen: u32, table: u32, identity: u32, proto: u8, port: u16) -> Self {
        Self {
            prefixlen,
            table: table.to_be_bytes(),
            identity: identity.to_be_bytes(),
            proto,
            _pad: 0,
            port: port.to_be_bytes(),
        }
    }

    pub const fn table(&self) -> u32 {
        u32::from_be_bytes(self.table)
    }

    pub const fn identity(&self) -> u32 {
        u32::from_be_bytes(self.identity)
    }

    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }

    /// The key without its prefix length, as the kernel's LPM map takes it.
    pub const fn data(&self) -> PolicyKeyData {
        PolicyKeyData {
            table: self.table,
            identity: self.identity,
            proto: self.proto,
            _pad: 0,
            port: self.port,
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Index of the (policy, rule) list that allows this cell, resolved in userspace at the
    /// event's generation.
    pub attribution: u32,
}

/// Event verdicts.
pub mod verdict {
    pub const ALLOW: u8 = 0;
    pub const DENY: u8 = 1;
    /// Audit mode: enforce mode would have dropped it; it passed.
    pub const AUDIT_DENY: u8 = 2;
}

/// Event reasons (why the verdict).
pub mod reason {
    /// The pod is not isolated in this direction.
    pub const NOT_ISOLATED: u8 = 0;
    /// A rule allowed it (`attribution` names the rules).
    pub const RULE_ALLOW: u8 = 1;
    /// The pod is isolated and no rule allows it.
    pub const DEFAULT_DENY: u8 = 2;
    /// An established connection, re-checked after a policy change, is no longer allowed.
    pub const RECHECK_DENY: u8 = 3;
    /// A non-first fragment whose first fragment was not seen: its ports are unknown.
    pub const FRAGMENT_UNKNOWN: u8 = 4;
}

/// `FlowEvent::flags` bits.
pub mod event_flags {
    /// The event summarises `count` denied packets of one flow (deduplicated).
    pub const DEDUPLICATED: u8 = 1;
    /// The verdict came from re-checking an established connection after a policy change.
    pub const RECHECK: u8 = 2;
}

/// One verdict of the datapath: a new connection allowed on one side, or denied packets of a
/// flow (deduplicated per 5-tuple and reason within `DENY_WINDOW_NS`, with a count).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowEvent {
    /// `ABI_VERSION`.
    pub version: u8,
    pub verdict: u8,
    pub reason: u8,
    /// `DIR_INGRESS` or `DIR_EGRESS` of the local pod.
    pub direction: u8,
    /// IP protocol number.
    pub proto: u8,
    /// 4 or 6.
    pub ip_version: u8,
    /// TCP flags of the packet (0 for other protocols).
    pub tcp_flags: u8,
    /// `event_flags` bits.
    pub flags: u8,
    pub ifindex: u32,
    pub endpoint_id: u32,
    /// Snapshot generation the verdict was made with.
    pub generation: u32,
    /// `PolicyValue::attribution` of the allowing cell (0: none).
    pub attribution: u32,
    /// The remote end's identity.
    pub identity: u32,
    /// Packets this event stands for (1 unless deduplicated).
    pub count: u32,
    pub src_port: u16,
    pub dst_port: u16,
    /// Bytes (IP packet lengths as the interface saw them) of the packets this event stands for.
    pub bytes: u32,
    /// IPv6, or IPv4 mapped (`::ffff:a.b.c.d`).
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    /// `bpf_ktime_get_ns` of this packet, and of the first packet the event counts.
    pub timestamp_ns: u64,
    pub first_ns: u64,
}

/// Denied packets of one (5-tuple, reason) produce at most one event per window.
pub const DENY_WINDOW_NS: u64 = 1_000_000_000;

/// Indexes of `LOST` (ring-buffer reserve failures per verdict class).
pub const LOST_ALLOW: u32 = 0;
pub const LOST_DENY: u32 = 1;
pub const LOST_AUDIT: u32 = 2;
pub const LOST_SLOTS: u32 = 3;

/// One local endpoint's view of a flow, the same for both of its directions: the addresses and
/// ports as seen from the endpoint (`local_*` is the pod's side). The deny-dedup key, with the
/// reason in `_pad[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Host-side interface of the local endpoint.
    pub ifindex: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
    pub local_port: u16,
    pub remote_port: u16,
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
}

/// Connection-tracking key: the connection itself, the same from both of its ends and in both
/// directions. Its two ends, each an (address, port), are ordered (`ConnKey::of`). A
/// connection between two pods of the node has one entry, in which each pod's hooks keep their
/// own `CtEnd`.
///
/// Aligned to 4 so that the kernel programs compare it word by word (the size stays 40).
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnKey {
    pub proto: u8,
    pub _pad: [u8; 3],
    pub lo_port: u16,
    pub hi_port: u16,
    pub lo_addr: [u8; 16],
    pub hi_addr: [u8; 16],
}

impl ConnKey {
    /// The key of a connection between `local` and `remote` (address, IPv4 mapped into IPv6,
    /// and port), and the index of `local`'s end (`CT_LO` or `CT_HI`). The `lo` end is the one
    /// that orders first: the address read as four native-endian `u32` words, compared last word
    /// first (the one that differs for IPv4), then the others in order, then the port. The
    /// kernel programs compute the same order on the words they hold.
    pub fn of(proto: u8, local: ([u8; 16], u16), remote: ([u8; 16], u16)) -> (Self, usize) {
        let order = |(a, port): ([u8; 16], u16)| {
            let w =
                |i: usize| u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]);
            (w(3), w(0), w(1), w(2), port)
        };
        let (lo, hi, mine) = if order(local) < order(remote) {
            (local, remote, CT_LO)
        } else {
            (remote, local, CT_HI)
        };
        let key = Self {
            proto,
            _pad: [0; 3],
            lo_port: lo.1,
            hi_port: hi.1,
            lo_addr: lo.0,
            hi_addr: hi.0,
        };
        (key, mine)
    }
}

/// One end's state in a connection's entry (`CtValue::ends`), written only by the hooks of the
/// local endpoint at that end. `ifindex == 0`: the end is not a tracked local endpoint.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtEnd {
    /// Host-side interface of the local endpoint at this end. A hook uses an end only when it
    /// is its own interface: a pod that forges the other end's address does not get its state.
    pub ifindex: u32,
    /// Generation this end last allowed the connection under; a different active generation
    /// makes its next packet re-check the policy.
    pub generation: u32,
    /// Policy direction of the packet that this end decided the connection on: `DIR_EGRESS`
    /// when this end opened it, `DIR_INGRESS` when the other end did.
    pub direction: u8,
    /// `verdict::ALLOW`, or `verdict::AUDIT_DENY` in audit mode; `verdict::DENY` for a
    /// connection a re-check denied: this end drops its packets both ways until a new SYN or a
    /// new generation decides it again.
    pub verdict: u8,
    pub _pad: [u8; 2],
}

/// A connection's entry: the state of each of its ends that is a local endpoint, indexed like
/// the key (`[lo, hi]`). Same-node connections fill both: when both ends allow it under the
/// active generation, the sender's `fg_from_pod` marks the packet `trust::MASK` and the
/// receiver's `fg_to_pod` does not judge it again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtValue {
    pub ends: [CtEnd; 2],
    /// `bpf_ktime_get_ns` of the last decision written into the entry.
    pub decided_ns: u64,
}

/// A per-CPU cache slot (`FLOW_CACHE`): what an established packet's conntrack lookup found,
/// so that the connection's next packets on this CPU pass without the hash lookup. Filled when a
/// hook passes a packet on its own end; valid only under the generation it was read under, in
/// which an end that allows a connection cannot stop allowing it (only a re-check, under a
/// newer generation, denies). Every `FLOW_CACHE_REFRESH`th hit takes the conntrack lookup
/// anyway, so the LRU sees the connection in use and the slot is read afresh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowCacheSlot {
    pub key: ConnKey,
    /// Active generation when the slot was filled; 0: empty.
    pub generation: u32,
    /// Per end (`[lo, hi]`): its interface if that end allowed the connection (`ALLOW`) under
    /// `generation`, else 0.
    pub ifindex: [u32; 2],
    /// Hits since the slot was filled.
    pub hits: u32,
}

/// See `FlowCacheSlot`.
pub const FLOW_CACHE_REFRESH: u32 = 32;

/// The index of a connection end in `ConnKey` and `CtValue::ends`.
pub const CT_LO: usize = 0;
pub const CT_HI: usize = 1;

/// How `fg_from_pod` tells the receiving pod's `fg_to_pod` on the same node what it found: two
/// bits of the skb's mark, set at the sender's TC ingress hook and read and cleared at the
/// receiver's TC egress hook, both in the node's network namespace. The kernel zeroes the mark
/// when a packet crosses network namespaces (a veth into or out of a pod), so a pod cannot set
/// them. No CNI or kube-proxy mode flowgate runs with uses these bits (kube-proxy uses 0x4000 and
/// 0x8000, Calico 0xffff0000 by default, Cilium 0x0f00 and the upper half).
pub mod trust {
    /// `fg_from_pod` sets both bits, never one: the connection's entry has both of its ends
    /// (two local endpoints) allowing it under the active generation, so the receiving hook
    /// passes the packet without judging it again. One bit alone means nothing: the receiving
    /// hook judges the packet. Two bits make a collision with another user of the mark less
    /// likely to be taken as trust.
    pub const SENT_BY_ENDPOINT: u32 = 0x10;
    /// See `SENT_BY_ENDPOINT`.
    pub const PEER_JUDGED: u32 = 0x20;
    /// Both bits: what `fg_to_pod` trusts, and what both programs clear.
    pub const MASK: u32 = SENT_BY_ENDPOINT | PEER_JUDGED;
}

/// Datapath counters per CPU (`STATS`): how packets went through the programs.
pub mod stats {
    /// Packets `fg_to_pod` passed on the sending endpoint's judgement (`trust::MASK`).
    pub const PEER_JUDGED: u32 = 0;
    /// Packets `fg_to_pod` judged itself (conntrack or policy).
    pub const JUDGED_AT_RECEIVER: u32 = 1;
    pub const SLOTS: u32 = 2;
}

/// Key of the fragment map: the first fragment's ports, found by the IP ID.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub ifindex: u32,
    pub id: u32,
    pub proto: u8,
    pub _pad: [u8; 3],
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FragValue {
    pub src_port: u16,
    pub dst_port: u16,
}

/// Deduplication state of one denied (5-tuple, reason).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DedupValue {
    pub first_ns: u64,
    pub last_emit_ns: u64,
    /// Packets denied since the last event.
    pub pending: u32,
    /// Their bytes.
    pub pending_bytes: u32,
    /// Policy generation of the last event: a drop under a newer generation is reported at once
    /// (with its own attribution), not folded into the old window.
    pub generation: u32,
    pub _pad: u32,
}

/// The pinned datapath's record (`<pin dir>/meta`, a one-entry array the agent creates and the
/// kernel programs never read): which layout the pinned maps have, and what the agent running
/// on them has reported. A new agent adopts the pinned maps only when `magic`, `abi_version` and
/// `layout` equal its own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PinMeta {
    /// `PIN_MAGIC`.
    pub magic: u32,
    /// `ABI_VERSION` of the agent that created the pinned maps.
    pub abi_version: u8,
    pub _pad: [u8; 3],
    /// Fingerprint of every pinned map's (name, type, key size, value size, capacity).
    pub layout: u64,
    /// Ring-buffer losses (`LOST` summed over CPUs, per verdict class) already reported in a gap
    /// record; the next agent reports the rest.
    pub reported_lost: [u64; LOST_SLOTS as usize],
}

/// `PinMeta::magic`: "FGPN".
pub const PIN_MAGIC: u32 = u32::from_le_bytes(*b"FGPN");

const _: () = assert!(size_of::<PolicyKeyData>() == 12);
const _: () = assert!(size_of::<FlowEvent>() == 88);
const _: () = assert!(core::mem::align_of::<FlowEvent>() == 8);
const _: () = assert!(size_of::<FlowKey>() == 44);
const _: () = assert!(size_of::<ConnKey>() == 40);
const _: () = assert!(core::mem::align_of::<ConnKey>() == 4);
const _: () = assert!(size_of::<CtEnd>() == 12);
const _: () = assert!(size_of::<CtValue>() == 32);
const _: () = assert!(size_of::<FlowCacheSlot>() == 56);
const _: () = assert!(capacity::FLOW_CACHE.is_power_of_two());
const _: () = assert!(FLOW_CACHE_REFRESH.is_power_of_two());
const _: () = assert!(size_of::<FragKey>() == 44);
const _: () = assert!(size_of::<DedupValue>() == 32);
const _: () = assert!(size_of::<Active>() == 8);
const _: () = assert!(size_of::<EndpointKey>() == 8);
const _: () = assert!(size_of::<EndpointInfo>() == 20);
const _: () = assert!(size_of::<IpCacheKey>() == 20);
const _: () = assert!(size_of::<IpCacheValue>() == 4);
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(size_of::<PolicyValue>() == 4);
const _: () = assert!(size_of::<PinMeta>() == 40);

#[cfg(feature = "user")]
mod user {
    // SAFETY (all impls): #[repr(C)], Copy, only integer fields and explicit padding fields, so
    // every bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::Active {}
    unsafe impl aya::Pod for super::EndpointKey {}
    unsafe impl aya::Pod for super::EndpointInfo {}
    unsafe impl aya::Pod for super::IpCacheKey {}
    unsafe impl aya::Pod for super::IpCacheValue {}
    unsafe impl aya::Pod for super::PolicyKey {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::PolicyKeyData {}
    unsafe impl aya::Pod for super::FlowEvent {}
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::ConnKey {}
    unsafe impl aya::Pod for super::CtEnd {}
    unsafe impl aya::Pod for super::FlowCacheSlot {}
    unsafe impl aya::Pod for super::CtValue {}
    unsafe impl aya::Pod for super::FragKey {}
    unsafe impl aya::Pod for super::FragValue {}
    unsafe impl aya::Pod for super::DedupValue {}
    unsafe impl aya::Pod for super::PinMeta {}
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    fn v4(a: [u8; 4], port: u16) -> ([u8; 16], u16) {
        let mut addr = [0; 16];
        addr[10] = 0xff;
        addr[11] = 0xff;
        addr[12..].copy_from_slice(&a);
        (addr, port)
    }

    fn v6(first: u8, last: u8, port: u16) -> ([u8; 16], u16) {
        let mut addr = [0; 16];
        addr[0] = first;
        addr[15] = last;
        (addr, port)
    }

    /// Both ends compute the same key and opposite ends, each finding its own address and port
    /// at its index.
    #[test]
    fn both_ends_of_a_connection_have_one_key_and_opposite_ends() {
        let pairs = [
            (v4([10, 0, 0, 1], 80), v4([10, 0, 0, 2], 40000)),
            (v4([10, 0, 0, 2], 80), v4([10, 0, 0, 1], 40000)),
            (v4([192, 168, 1, 1], 80), v4([10, 0, 0, 1], 80)),
            // The same address: the ports order the ends.
            (v4([10, 0, 0, 1], 80), v4([10, 0, 0, 1], 81)),
            // IPv6 addresses that differ in the first word only, or the last only.
            (v6(0xfd, 1, 443), v6(0xfe, 1, 443)),
            (v6(0xfd, 1, 443), v6(0xfd, 2, 443)),
        ];
        for (a, b) in pairs {
            let (key_a, end_a) = ConnKey::of(PROTO_TCP, a, b);
            let (key_b, end_b) = ConnKey::of(PROTO_TCP, b, a);
            assert_eq!(key_a, key_b, "{a:?} {b:?}");
            assert_ne!(end_a, end_b);
            let at = |end: usize| {
                if end == CT_LO {
                    (key_a.lo_addr, key_a.lo_port)
                } else {
                    (key_a.hi_addr, key_a.hi_port)
                }
            };
            assert_eq!((at(end_a), at(end_b)), (a, b));
            assert_eq!(key_a.proto, PROTO_TCP);
        }
        // The protocol is part of the key.
        let (a, b) = (v4([10, 0, 0, 1], 53), v4([10, 0, 0, 2], 5353));
        assert_ne!(
            ConnKey::of(PROTO_TCP, a, b).0,
            ConnKey::of(PROTO_UDP, a, b).0
        );
    }
}
