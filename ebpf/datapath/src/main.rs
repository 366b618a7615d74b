//! flowgate's kernel programs, attached with TC to both hooks of each local pod's host-side
//! interface: `fg_from_pod` (TC ingress: packets the pod sends, its egress) and `fg_to_pod` (TC
//! egress: packets the pod receives, its ingress). They parse the packet, let replies and
//! established connections of the current policy generation through (connection tracking),
//! decide new flows with a fixed number of map lookups (maps compiled by flowgate-policy, layouts
//! in flowgate-abi), and report every verdict to the ring buffer. Loaded by the agent.
#![no_std]
#![no_main]
// Map keys are passed by reference on purpose: by value they would be copied onto the 512-byte
// BPF stack, which everything inlined into one frame shares.
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "keys by reference save BPF stack"
)]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_NO_WAKEUP, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use flowgate_abi::{
    ABI_VERSION, Active, CT_HI, CT_LO, ConnKey, CtEnd, CtValue, DENY_WINDOW_NS, DIR_EGRESS,
    DIR_INGRESS, DedupValue, ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, EndpointInfo,
    EndpointKey, FLOW_CACHE_REFRESH, FlowCacheSlot, FlowEvent, FlowKey, FragKey, FragValue,
    IpCacheValue, LOST_ALLOW, LOST_AUDIT, LOST_DENY, LOST_SLOTS, MODE_AUDIT, POLICY_PREFIX_FULL,
    PROTO_TCP, PolicyKeyData, PolicyValue, capacity, event_flags, reason, stats, trust, verdict,
};

#[map]
static FG_ACTIVE: Array<Active> = Array::with_max_entries(1, 0);

#[map]
static FG_ENDPOINTS: HashMap<EndpointKey, EndpointInfo> =
    HashMap::with_max_entries(capacity::ENDPOINTS, 0);

#[map]
static FG_IPCACHE: LpmTrie<[u8; 16], IpCacheValue> =
    LpmTrie::with_max_entries(capacity::IPCACHE, 0);

#[map]
static FG_POLICY: LpmTrie<PolicyKeyData, PolicyValue> =
    LpmTrie::with_max_entries(capacity::POLICY, 0);

#[map]
static FG_CONNTRACK: LruHashMap<ConnKey, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

#[map]
static FG_FRAGS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

/// Keyed by the flow with the deny reason in `_pad[0]`.
#[map]
static FG_DENY_DEDUP: LruHashMap<FlowKey, DedupValue> =
    LruHashMap::with_max_entries(capacity::DENY_DEDUP, 0);

/// Flow events; the agent may resize it at load time.
#[map]
static FG_EVENTS: RingBuf = RingBuf::with_byte_size(capacity::EVENTS_BYTES, 0);

/// Each local pod's address (IPv4 mapped into IPv6) -> the ifindex of its host interface. On
/// a bridge, a frame whose destination MAC the bridge has not learned yet is flooded to every
/// port: `fg_to_pod` passes the copies meant for another local pod without judging them (the
/// receiving pod's stack drops a frame for another MAC), instead of reporting a verdict for a
/// flow that never was that pod's.
#[map]
static FG_LOCAL_IPS: HashMap<[u8; 16], u32> = HashMap::with_max_entries(capacity::LOCAL_IPS, 0);

/// Per CPU: what established packets' conntrack lookups found (`FlowCacheSlot`), by a hash of
/// the connection's key.
#[map]
static FG_FLOW_CACHE: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(capacity::FLOW_CACHE, 0);

/// How packets went through the programs (`stats`), per CPU.
#[map]
static FG_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stats::SLOTS, 0);

/// Ring-buffer reserve failures per verdict class, per CPU: only the kernel can see them.
#[map]
static FG_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Internal `emit` flag (never in an event): report the packet's addresses turned around.
const EVENT_REVERSED: u8 = 0x80;

mod keys;
mod parse;

use keys::{View, as_bytes, conn_key, ct_value, endpoint_key, flow_key, policy_key};
use parse::{KIND_FRAGMENT_UNKNOWN, KIND_PASS, Packet, parse};

/// Packets the pod sends: decided by its egress policy.
#[classifier]
pub fn fg_from_pod(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer, valid for the whole run.
    let mark = unsafe { (*skb).mark };
    if mark & trust::MASK != 0 {
        // Never carry a hint this program did not set.
        // SAFETY: as above; the mark is writable from TC programs.
        unsafe { (*skb).mark = mark & !trust::MASK };
    }
    decide(&ctx, DIR_EGRESS)
}

/// Packets the pod receives: decided by its ingress policy, unless both ends of a same-node
/// connection already passed it under the active generation (`trust`).
#[classifier]
pub fn fg_to_pod(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer, valid for the whole run.
    let mark = unsafe { (*skb).mark };
    if mark & trust::MASK != 0 {
        // SAFETY: as above; the mark is writable from TC programs.
        let from = unsafe {
            (*skb).mark = mark & !trust::MASK;
            (*skb).ingress_ifindex
        };
        // Forwarded from another interface (a pod's), not sent by the node itself.
        if mark & trust::MASK == trust::MASK && from != 0 {
            count(stats::PEER_JUDGED);
            return TC_ACT_OK;
        }
    }
    count(stats::JUDGED_AT_RECEIVER);
    decide(&ctx, DIR_INGRESS)
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = FG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; TC programs do not preempt each other on one CPU.
        unsafe { *n += 1 };
    }
}

/// Sets `trust::MASK` for `fg_to_pod`, keeping the mark's other bits; only `fg_from_pod` calls
/// it.
#[inline(always)]
fn trusted(ctx: &TcContext) {
    // SAFETY: `skb` is the program's context pointer; the mark is writable from TC programs.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark |= trust::MASK;
    }
}

/// A policy decision for one direction.
struct Decision {
    allow: bool,
    reason: u8,
    attribution: u32,
    identity: u32,
    /// `bpf_ktime_get_ns` when it was made: the one clock read of a decided packet, for its
    /// conntrack entry and its event.
    now: u64,
}

/// One end of a connection's entry (`CT_LO` or `CT_HI`).
#[inline(always)]
fn end_of(ct: *mut CtValue, end: usize) -> *mut CtEnd {
    // SAFETY: `ct` is a valid map value pointer; both indexes are in bounds (`end` is one of the
    // two constants), and the pointer is formed without a bounds-check branch the verifier
    // would have to follow.
    unsafe {
        if end == CT_HI {
            core::ptr::addr_of_mut!((*ct).ends[CT_HI])
        } else {
            core::ptr::addr_of_mut!((*ct).ends[CT_LO])
        }
    }
}

/// Whether an end allows the connection under `generation`, for the interface `ifindex`.
#[inline(always)]
fn end_current(end: *const CtEnd, ifindex: u32, generation: u32) -> bool {
    // SAFETY: a valid pointer into a map value; plain integer fields.
    unsafe {
        (*end).ifindex == ifindex
            && (*end).generation == generation
            && (*end).verdict != verdict::DENY
    }
}

/// The flow-cache slot of a connection: its key's words folded and mixed (Fibonacci hashing).
#[inline(always)]
fn cache_index(key: &ConnKey) -> u32 {
    let w = words(key);
    let folded = w[0] ^ w[1] ^ w[2] ^ w[3] ^ w[4] ^ w[5] ^ w[6] ^ w[7] ^ w[8] ^ w[9];
    folded.wrapping_mul(0x9e37_79b1) >> (32 - capacity::FLOW_CACHE.trailing_zeros())
}

/// A `ConnKey` as the ten words it is.
#[inline(always)]
fn words(key: &ConnKey) -> &[u32; 10] {
    // SAFETY: `ConnKey` is `repr(C, align(4))`, 40 bytes of integers (asserted in flowgate-abi).
    unsafe { &*core::ptr::from_ref(key).cast::<[u32; 10]>() }
}

/// A hit in the flow cache: the slot holds `key` under `generation` with this interface's end
/// allowing it. Gives the other end's interface (0: not a current local end). Every
/// `FLOW_CACHE_REFRESH`th hit is a miss, so that the conntrack lookup runs.
#[inline(always)]
fn cache_hit(
    slot: *mut FlowCacheSlot,
    key: &ConnKey,
    generation: u32,
    mine: usize,
    ifindex: u32,
) -> Option<u32> {
    // SAFETY: a valid per-CPU map value pointer; plain integer fields; TC programs do not
    // preempt each other on one CPU.
    unsafe {
        if (*slot).generation != generation {
            return None;
        }
        let (own, other) = if mine == CT_HI {
            ((*slot).ifindex[CT_HI], (*slot).ifindex[CT_LO])
        } else {
            ((*slot).ifindex[CT_LO], (*slot).ifindex[CT_HI])
        };
        if own != ifindex {
            return None;
        }
        let (cached, ours) = (words(&(*slot).key), words(key));
        if cached[1] != ours[1]
            || cached[5] != ours[5]
            || cached[9] != ours[9]
            || cached[0] != ours[0]
            || cached[2] != ours[2]
            || cached[3] != ours[3]
            || cached[4] != ours[4]
            || cached[6] != ours[6]
            || cached[7] != ours[7]
            || cached[8] != ours[8]
        {
            return None;
        }
        let hits = (*slot).hits.wrapping_add(1);
        (*slot).hits = hits;
        if hits & (FLOW_CACHE_REFRESH - 1) == 0 {
            return None;
        }
        Some(other)
    }
}

/// Fills the slot from the entry `ct`, whose end `mine` is current: only ends that allow
/// (`ALLOW`, not `AUDIT_DENY`) are cached.
#[inline(always)]
fn cache_fill(
    slot: *mut FlowCacheSlot,
    key: &ConnKey,
    generation: u32,
    ct: *mut CtValue,
    mine: usize,
    other_current: bool,
) {
    let (own, other) = (end_of(ct, mine), end_of(ct, CT_HI - mine));
    // SAFETY: valid map value pointers; plain integer fields; see `cache_hit`. `FlowCacheSlot`
    // is `repr(C)` with `key` (`ConnKey`, ten aligned words) at its start.
    unsafe {
        if (*own).verdict != verdict::ALLOW {
            return;
        }
        let other_ifindex = if other_current && (*other).verdict == verdict::ALLOW {
            (*other).ifindex
        } else {
            0
        };
        let ifindex = if mine == CT_HI {
            [other_ifindex, (*own).ifindex]
        } else {
            [(*own).ifindex, other_ifindex]
        };
        (*slot).generation = 0;
        // Word by word: a plain assignment of the 40-byte key compiled into a call of a
        // byte-copying `memmove` subprogram (a 40-iteration loop of eight instructions).
        let (from, to) = (
            words(key),
            core::ptr::addr_of_mut!((*slot).key).cast::<u32>(),
        );
        to.write_volatile(from[0]);
        to.add(1).write_volatile(from[1]);
        to.add(2).write_volatile(from[2]);
        to.add(3).write_volatile(from[3]);
        to.add(4).write_volatile(from[4]);
        to.add(5).write_volatile(from[5]);
        to.add(6).write_volatile(from[6]);
        to.add(7).write_volatile(from[7]);
        to.add(8).write_volatile(from[8]);
        to.add(9).write_volatile(from[9]);
        (*slot).ifindex = ifindex;
        (*slot).hits = 0;
        (*slot).generation = generation;
    }
}

#[inline(always)]
fn decide(ctx: &TcContext, dir: u8) -> i32 {
    // SAFETY: `skb` is the program's context pointer, valid for the whole run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(pkt) = parse(ctx, ifindex) else {
        // Not IP (ARP, ...) or truncated: not ours to judge.
        return TC_ACT_OK;
    };
    if pkt.kind == KIND_PASS {
        return TC_ACT_OK;
    }
    let Some(active) = FG_ACTIVE.get(0) else {
        return TC_ACT_OK;
    };
    let (generation, parity, audit) = (active.generation, active.parity, active.mode == MODE_AUDIT);
    if generation == 0 {
        // No snapshot applied yet.
        return TC_ACT_OK;
    }
    // The endpoint's view of the packet, and the connection's key: one key for both ends and
    // both directions.
    let view = if dir == DIR_EGRESS {
        View {
            local: pkt.src,
            remote: pkt.dst,
            local_port: pkt.src_port,
            remote_port: pkt.dst_port,
        }
    } else {
        View {
            local: pkt.dst,
            remote: pkt.src,
            local_port: pkt.dst_port,
            remote_port: pkt.src_port,
        }
    };
    let (key, mine) = conn_key(pkt.proto, &view);
    // A TCP SYN always opens a new connection (a reused 5-tuple must not pass silently as an old
    // one): it skips connection tracking and is decided, tracked and reported afresh.
    let syn = pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // The connection's entry decides an established packet, before anything else: as this
    // CPU's flow cache has it, else by one lookup.
    let mut stale: Option<u8> = None;
    if !syn {
        let slot = FG_FLOW_CACHE.get_ptr_mut(cache_index(&key));
        if let Some(slot) = slot
            && let Some(other) = cache_hit(slot, &key, generation, mine, ifindex)
        {
            if dir == DIR_EGRESS && other != 0 {
                trusted(ctx);
            }
            return TC_ACT_OK;
        }
        if let Some(ct) = FG_CONNTRACK.get_ptr_mut(&key) {
            let end = end_of(ct, mine);
            // Entries are only made for managed endpoints, and every change of the endpoints
            // is a new generation: a current end means a managed endpoint, without looking it
            // up. A connection denied under this generation stays denied in both directions
            // (only a new SYN or a new generation decides it again): re-checked below,
            // dropped, counted.
            if end_current(end, ifindex, generation) {
                let other = end_of(ct, CT_HI - mine);
                // SAFETY: as in `end_current`.
                let other_ifindex = unsafe { (*other).ifindex };
                let other_current =
                    other_ifindex != 0 && end_current(other, other_ifindex, generation);
                // Sent to a local endpoint whose end is current too: its `fg_to_pod` would
                // pass the packet on this entry, so it need not judge it again.
                if dir == DIR_EGRESS && other_current {
                    trusted(ctx);
                }
                if let Some(slot) = slot {
                    cache_fill(slot, &key, generation, ct, mine, other_current);
                }
                return TC_ACT_OK;
            }
            // SAFETY: as in `end_current`.
            unsafe {
                if (*end).ifindex == ifindex && (*end).generation != 0 {
                    stale = Some((*end).direction);
                }
            }
        }
    }
    let ep_key = endpoint_key(ifindex, parity);
    // SAFETY: the value is copied out at once.
    let Some(ep) = (unsafe { FG_ENDPOINTS.get(&ep_key) }) else {
        // Not a pod flowgate manages (or not yet): pass.
        return TC_ACT_OK;
    };
    let ep = *ep;
    let conn = Conn {
        key: &key,
        mine,
        ifindex,
    };

    if let Some(opened) = stale {
        // The policy changed since: re-check the connection in the direction it was opened.
        // Its remote end is the view's; the port asked for is the opened-to end's.
        let port = if opened == DIR_EGRESS {
            view.remote_port
        } else {
            view.local_port
        };
        let d = policy(&ep, opened, &pkt, as_bytes(&view.remote), port);
        return recheck(&conn, &ep, opened, dir, &pkt, &view, d, audit);
    }

    // A new flow. Into a pod: a flooded copy of a frame for another local pod is not ours.
    // SAFETY: the value is copied out at once.
    if dir == DIR_INGRESS
        && let Some(owner) = unsafe { FG_LOCAL_IPS.get(as_bytes(&pkt.dst)) }
        && *owner != ifindex
    {
        return TC_ACT_OK;
    }
    let mut d = policy(&ep, dir, &pkt, as_bytes(&view.remote), pkt.dst_port);
    if d.allow {
        track(&conn, &ep, dir, verdict::ALLOW, d.now);
        emit(&ep, dir, &pkt, verdict::ALLOW, &d, (1, pkt.len), 0, 0);
        return TC_ACT_OK;
    }
    if pkt.kind == KIND_FRAGMENT_UNKNOWN {
        d.reason = reason::FRAGMENT_UNKNOWN;
    }
    if audit {
        track(&conn, &ep, dir, verdict::AUDIT_DENY, d.now);
        emit(&ep, dir, &pkt, verdict::AUDIT_DENY, &d, (1, pkt.len), 0, 0);
        return TC_ACT_OK;
    }
    deny(&ep, dir, &pkt, &view, &d, 0);
    TC_ACT_SHOT
}

/// The connection's entry as one hook writes it: the key, the local endpoint's end, its
/// interface.
struct Conn<'a> {
    key: &'a ConnKey,
    mine: usize,
    ifindex: u32,
}

/// The result of re-checking an established connection after a policy change. `opened` is
/// the direction the connection was opened in (the decision's), `dir` the packet's; events of
/// a reply report the opening direction's addresses.
#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "all scalars or borrowed; a struct would cost BPF stack"
)]
fn recheck(
    conn: &Conn,
    ep: &EndpointInfo,
    opened: u8,
    dir: u8,
    pkt: &Packet,
    view: &View,
    mut d: Decision,
    audit: bool,
) -> i32 {
    if d.allow {
        track(conn, ep, opened, verdict::ALLOW, d.now);
        return TC_ACT_OK;
    }
    d.reason = reason::RECHECK_DENY;
    let flags = if opened != dir {
        event_flags::RECHECK | EVENT_REVERSED
    } else {
        event_flags::RECHECK
    };
    if audit {
        track(conn, ep, opened, verdict::AUDIT_DENY, d.now);
        emit(
            ep,
            opened,
            pkt,
            verdict::AUDIT_DENY,
            &d,
            (1, pkt.len),
            0,
            flags,
        );
        return TC_ACT_OK;
    }
    // Kept, as denied: a later packet of the connection, either way, is dropped too. Removing
    // it would let the other end's next packet open the connection afresh as a new flow.
    track(conn, ep, opened, verdict::DENY, d.now);
    deny(ep, opened, pkt, view, &d, flags);
    TC_ACT_SHOT
}

/// The policy decision for one direction of the endpoint: not isolated, or the LPM lookups.
#[inline(always)]
fn policy(ep: &EndpointInfo, dir: u8, pkt: &Packet, remote: &[u8; 16], port: u16) -> Decision {
    let (flag, table) = if dir == DIR_EGRESS {
        (ENDPOINT_EGRESS_ISOLATED, ep.egress_table)
    } else {
        (ENDPOINT_INGRESS_ISOLATED, ep.ingress_table)
    };
    let identity = match FG_IPCACHE.get(Key::new(128, *remote)) {
        Some(v) => v.identity,
        None => 0,
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if ep.flags & flag == 0 {
        return Decision {
            allow: true,
            reason: reason::NOT_ISOLATED,
            attribution: 0,
            identity,
            now,
        };
    }
    let data = policy_key(table, identity, pkt.proto, port);
    match FG_POLICY.get(Key::new(POLICY_PREFIX_FULL, data)) {
        Some(v) => Decision {
            allow: true,
            reason: reason::RULE_ALLOW,
            attribution: v.attribution,
            identity,
            now,
        },
        None => Decision {
            allow: false,
            reason: reason::DEFAULT_DENY,
            attribution: 0,
            identity,
            now,
        },
    }
}

/// Records this end's decision in the connection's entry. An entry already in the table (the
/// other end's, a re-check, or a new connection on a reused tuple) is written in place: an
/// insert into the LRU map takes a free element, locks the bucket and frees the replaced
/// element, and in traffic the first touch of a new entry is the largest cost of a new
/// connection. So a connection between two pods of the node is one entry, not two.
///
/// Each end is written only by its own endpoint's hooks. Concurrent writers of one end (a SYN
/// and a stray packet of the tuple's previous connection on another CPU) can interleave its
/// fields. That never allows more: the verdict written is always one that a decision for this
/// tuple under this generation made, and the generation, which makes the end count, is written
/// last. An end held under the current generation by another interface (a pod sending with
/// another local pod's address) is left alone: the packet was decided, it is not tracked.
#[inline(always)]
fn track(conn: &Conn, ep: &EndpointInfo, dir: u8, v: u8, now: u64) {
    let generation = ep.generation;
    if let Some(ct) = FG_CONNTRACK.get_ptr_mut(conn.key) {
        write_end(ct, conn, generation, dir, v, now);
        return;
    }
    let value = ct_value(conn.mine, conn.ifindex, generation, dir, v, now);
    if FG_CONNTRACK
        .insert(conn.key, &value, u64::from(BPF_NOEXIST))
        .is_err()
        && let Some(ct) = FG_CONNTRACK.get_ptr_mut(conn.key)
    {
        // The other end inserted the entry since the lookup: write this end into it.
        write_end(ct, conn, generation, dir, v, now);
    }
}

#[inline(always)]
fn write_end(ct: *mut CtValue, conn: &Conn, generation: u32, dir: u8, v: u8, now: u64) {
    let end = end_of(ct, conn.mine);
    // SAFETY: a valid pointer into a map value; plain integer fields.
    unsafe {
        let holder = (*end).ifindex;
        if holder != conn.ifindex && holder != 0 && (*end).generation == generation {
            return;
        }
        (*end).ifindex = conn.ifindex;
        (*end).direction = dir;
        (*end).verdict = v;
        (*ct).decided_ns = now;
        (*end).generation = generation;
    }
}

/// Reports a denied packet: the first of a (5-tuple, reason) at once, then at most one event per
/// window carrying the count of packets since the last one. Never sampled.
#[inline(always)]
fn deny(ep: &EndpointInfo, dir: u8, pkt: &Packet, view: &View, d: &Decision, flags: u8) {
    // The dedup key is the endpoint's view of the flow plus the reason (in the pad byte).
    let mut dkey = flow_key(pkt.ifindex, pkt.proto, view);
    dkey._pad[0] = d.reason;
    let dkey = &dkey;
    let now = d.now;
    match FG_DENY_DEDUP.get_ptr_mut(dkey) {
        Some(state) => {
            // SAFETY: a valid map value pointer; plain integer fields; races between CPUs can
            // only merge two counts into one event, never lose the event.
            let (last, pending, bytes, generation) = unsafe {
                (
                    (*state).last_emit_ns,
                    (*state).pending + 1,
                    (*state).pending_bytes.saturating_add(pkt.len),
                    (*state).generation,
                )
            };
            if now.wrapping_sub(last) >= DENY_WINDOW_NS || generation != ep.generation {
                // SAFETY: as above.
                unsafe {
                    (*state).last_emit_ns = now;
                    (*state).pending = 0;
                    (*state).pending_bytes = 0;
                    (*state).generation = ep.generation;
                }
                emit(
                    ep,
                    dir,
                    pkt,
                    verdict::DENY,
                    d,
                    (pending, bytes),
                    last,
                    flags | event_flags::DEDUPLICATED,
                );
            } else {
                // SAFETY: as above.
                unsafe {
                    (*state).pending = pending;
                    (*state).pending_bytes = bytes;
                }
            }
        }
        None => {
            let value = DedupValue {
                first_ns: now,
                last_emit_ns: now,
                pending: 0,
                pending_bytes: 0,
                generation: ep.generation,
                _pad: 0,
            };
            let _ = FG_DENY_DEDUP.insert(dkey, &value, 0);
            emit(ep, dir, pkt, verdict::DENY, d, (1, pkt.len), now, flags);
        }
    }
}

#[inline(always)]
#[allow(
    clippy::too_many_arguments,
    reason = "all scalars; a struct would cost stack in BPF"
)]
fn emit(
    ep: &EndpointInfo,
    dir: u8,
    pkt: &Packet,
    v: u8,
    d: &Decision,
    (count, bytes): (u32, u32),
    first_ns: u64,
    flags: u8,
) {
    let Some(mut entry) = FG_EVENTS.reserve::<FlowEvent>(0) else {
        let slot = match v {
            verdict::ALLOW => LOST_ALLOW,
            verdict::DENY => LOST_DENY,
            _ => LOST_AUDIT,
        };
        if let Some(lost) = FG_LOST.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot; TC programs do not preempt each other on one CPU.
            unsafe { *lost += 1 };
        }
        return;
    };
    let now = d.now;
    let ev = entry.as_mut_ptr();
    let reversed = flags & EVENT_REVERSED != 0;
    // SAFETY: `ev` points at the reserved record, sized and aligned for a FlowEvent; every field
    // is written (in place: building the struct on the stack would not fit the BPF stack).
    unsafe {
        (*ev).version = ABI_VERSION;
        (*ev).verdict = v;
        (*ev).reason = d.reason;
        (*ev).direction = dir;
        (*ev).proto = pkt.proto;
        (*ev).ip_version = pkt.ip_version;
        (*ev).tcp_flags = pkt.tcp_flags;
        (*ev).flags = flags & !EVENT_REVERSED;
        (*ev).ifindex = pkt.ifindex;
        (*ev).endpoint_id = ep.endpoint_id;
        (*ev).generation = ep.generation;
        (*ev).attribution = d.attribution;
        (*ev).identity = d.identity;
        (*ev).count = count;
        (*ev).bytes = bytes;
        if reversed {
            (*ev).src_port = pkt.dst_port;
            (*ev).dst_port = pkt.src_port;
            (*ev).src_addr = keys::bytes(pkt.dst);
            (*ev).dst_addr = keys::bytes(pkt.src);
        } else {
            (*ev).src_port = pkt.src_port;
            (*ev).dst_port = pkt.dst_port;
            (*ev).src_addr = keys::bytes(pkt.src);
            (*ev).dst_addr = keys::bytes(pkt.dst);
        }
        (*ev).timestamp_ns = now;
        (*ev).first_ns = if first_ns == 0 { now } else { first_ns };
    }
    // No wake-up per event: the reader drains on a timer (a wake-up costs ~3 us on this VM).
    entry.submit(u64::from(BPF_RB_NO_WAKEUP));
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible, so every helper is available.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
