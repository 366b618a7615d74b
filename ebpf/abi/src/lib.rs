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

/// Bumped whenever a layout below changes; carried in every event.
pub const ABI_VERSION: u8 = 1;

/// Map names, as in the eBPF object.
pub mod maps {
    pub const ACTIVE: &str = "FG_ACTIVE";
    pub const ENDPOINTS: &str = "FG_ENDPOINTS";
    pub const IPCACHE: &str = "FG_IPCACHE";
    pub const POLICY: &str = "FG_POLICY";
    pub const CONNTRACK: &str = "FG_CONNTRACK";
    pub const EVENTS: &str = "FG_EVENTS";
    pub const LOST: &str = "FG_LOST";
}

/// Map capacities (entries).
pub mod capacity {
    pub const ENDPOINTS: u32 = 8192;
    pub const IPCACHE: u32 = 262_144;
    pub const POLICY: u32 = 1_048_576;
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
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PolicyValue {
    /// Index of the (policy, rule) list that allows this cell, resolved in userspace at the
    /// event's generation.
    pub attribution: u32,
}

const _: () = assert!(size_of::<Active>() == 8);
const _: () = assert!(size_of::<EndpointKey>() == 8);
const _: () = assert!(size_of::<EndpointInfo>() == 20);
const _: () = assert!(size_of::<IpCacheKey>() == 20);
const _: () = assert!(size_of::<IpCacheValue>() == 4);
const _: () = assert!(size_of::<PolicyKey>() == 16);
const _: () = assert!(size_of::<PolicyValue>() == 4);

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
}
