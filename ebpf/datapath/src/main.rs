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
    bindings::{BPF_RB_NO_WAKEUP, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map},
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::TcContext,
};
use flowgate_abi::{
    ABI_VERSION, Active, CtKey, CtValue, DENY_WINDOW_NS, DIR_EGRESS, DIR_INGRESS, DedupValue,
    ENDPOINT_EGRESS_ISOLATED, ENDPOINT_INGRESS_ISOLATED, EndpointInfo, EndpointKey, FlowEvent,
    FragKey, FragValue, IpCacheValue, LOST_ALLOW, LOST_AUDIT, LOST_DENY, LOST_SLOTS, MODE_AUDIT,
    POLICY_PREFIX_FULL, PROTO_TCP, PolicyKeyData, PolicyValue, capacity, event_flags, reason,
    stats, trust, verdict,
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
static FG_CONNTRACK: LruHashMap<CtKey, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

#[map]
static FG_FRAGS: LruHashMap<FragKey, FragValue> =
    LruHashMap::with_max_entries(capacity::FRAGMENTS, 0);

/// Keyed by the flow with the deny reason in `_pad[0]`.
#[map]
static FG_DENY_DEDUP: LruHashMap<CtKey, DedupValue> =
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

use keys::{as_bytes, ct_key, ct_value, endpoint_key, policy_key};
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
    decide(&ctx, DIR_EGRESS, false)
}

/// Packets the pod receives: decided by its ingress policy, unless both ends of a same-node
/// connection already passed it under the active generation (`trust`).
#[classifier]
pub fn fg_to_pod(ctx: TcContext) -> i32 {
    let skb = ctx.skb.skb;
    // SAFETY: `skb` is the program's context pointer, valid for the whole run.
    let mark = unsafe { (*skb).mark };
    let mut sent_by_endpoint = false;
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
        sent_by_endpoint = mark & trust::SENT_BY_ENDPOINT != 0;
    }
    count(stats::JUDGED_AT_RECEIVER);
    decide(&ctx, DIR_INGRESS, sent_by_endpoint)
}

#[inline(always)]
fn count(slot: u32) {
    if let Some(n) = FG_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; TC programs do not preempt each other on one CPU.
        unsafe { *n += 1 };
    }
}

/// Sets the hint `fg_to_pod` reads (`trust`), keeping the mark's other bits; only
/// `fg_from_pod` calls it.
#[inline(always)]
fn hint(ctx: &TcContext, value: u32) {
    // SAFETY: `skb` is the program's context pointer; the mark is writable from TC programs.
    unsafe {
        let skb = ctx.skb.skb;
        (*skb).mark = ((*skb).mark & !trust::MASK) | value;
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

/// `sent_by_endpoint` (`fg_to_pod` only): the packet came from a local endpoint whose
/// `fg_from_pod` judged it; when this hook passes it, the sender's entry learns that.
#[inline(always)]
fn decide(ctx: &TcContext, dir: u8, sent_by_endpoint: bool) -> i32 {
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
    // The endpoint's view of the connection: one key for both directions. One key on the
    // stack, reused below (the BPF stack is 512 bytes, and everything here is inlined into one
    // frame).
    let mut key = if dir == DIR_EGRESS {
        ct_key(
            ifindex,
            pkt.proto,
            pkt.src_port,
            pkt.dst_port,
            pkt.src,
            pkt.dst,
        )
    } else {
        ct_key(
            ifindex,
            pkt.proto,
            pkt.dst_port,
            pkt.src_port,
            pkt.dst,
            pkt.src,
        )
    };
    // A TCP SYN always opens a new connection (a reused 5-tuple must not pass silently as an old
    // one): it skips connection tracking and is decided, tracked and reported afresh.
    let syn = pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    // The connection's entry: one lookup decides an established packet, before anything else.
    let mut stale: Option<u8> = None;
    if !syn && let Some(ct) = FG_CONNTRACK.get_ptr_mut(&key) {
        // SAFETY: a valid map value pointer; plain integer fields.
        let (ct_generation, opened, ct_verdict, peer_generation) = unsafe {
            (
                (*ct).generation,
                (*ct).direction,
                (*ct).verdict,
                (*ct).peer_generation,
            )
        };
        // Entries are only made for managed endpoints, and every change of the endpoints is a
        // new generation: a current entry means a managed endpoint, without looking it up. A
        // connection denied under this generation stays denied in both directions (only a new
        // SYN or a new generation decides it again): re-checked below, dropped, counted.
        if ct_generation == generation && ct_verdict != verdict::DENY {
            if dir == DIR_EGRESS {
                if peer_generation == generation {
                    hint(ctx, trust::MASK);
                } else {
                    hint(ctx, trust::SENT_BY_ENDPOINT);
                }
            } else if sent_by_endpoint {
                if peer_generation != generation {
                    // The sender's hook passed it: it will pass this end's packets too.
                    // SAFETY: as above.
                    unsafe { (*ct).peer_generation = generation };
                }
                note_peer(ctx, &pkt, &mut key, generation);
            }
            return TC_ACT_OK;
        }
        stale = Some(opened);
    }
    let ep_key = endpoint_key(ifindex, parity);
    // SAFETY: the value is copied out at once.
    let Some(ep) = (unsafe { FG_ENDPOINTS.get(&ep_key) }) else {
        // Not a pod flowgate manages (or not yet): pass.
        return TC_ACT_OK;
    };
    let ep = *ep;

    if let Some(opened) = stale {
        // The policy changed since: re-check the connection in the direction it was opened.
        // Its remote end is `remote_addr`; the port asked for is the opened-to end's.
        let port = if opened == DIR_EGRESS {
            key.remote_port
        } else {
            key.local_port
        };
        let d = policy(&ep, opened, &pkt, &key.remote_addr, port);
        return recheck(
            ctx,
            &ep,
            opened,
            dir,
            &pkt,
            &mut key,
            d,
            audit,
            sent_by_endpoint,
        );
    }

    // A new flow. Into a pod: a flooded copy of a frame for another local pod is not ours.
    // SAFETY: the value is copied out at once.
    if dir == DIR_INGRESS
        && let Some(owner) = unsafe { FG_LOCAL_IPS.get(as_bytes(&pkt.dst)) }
        && *owner != ifindex
    {
        return TC_ACT_OK;
    }
    let mut d = policy(&ep, dir, &pkt, &key.remote_addr, pkt.dst_port);
    if d.allow {
        track(
            &key,
            &ep,
            dir,
            verdict::ALLOW,
            peer(dir, &ep, sent_by_endpoint),
            d.now,
        );
        emit(&ep, dir, &pkt, verdict::ALLOW, &d, (1, pkt.len), 0, 0);
        passed(ctx, dir, &pkt, &mut key, ep.generation, sent_by_endpoint);
        return TC_ACT_OK;
    }
    if pkt.kind == KIND_FRAGMENT_UNKNOWN {
        d.reason = reason::FRAGMENT_UNKNOWN;
    }
    if audit {
        track(
            &key,
            &ep,
            dir,
            verdict::AUDIT_DENY,
            peer(dir, &ep, sent_by_endpoint),
            d.now,
        );
        emit(&ep, dir, &pkt, verdict::AUDIT_DENY, &d, (1, pkt.len), 0, 0);
        passed(ctx, dir, &pkt, &mut key, ep.generation, sent_by_endpoint);
        return TC_ACT_OK;
    }
    deny(&ep, dir, &pkt, &mut key, &d, 0);
    TC_ACT_SHOT
}

/// The `peer_generation` of an entry a hook writes as it passes a packet: a packet into a pod
/// that another local pod's `fg_from_pod` passed (`SENT_BY_ENDPOINT`: that end's entry is
/// current and not denied) means the other end's `fg_to_pod` passes this end's packets too.
#[inline(always)]
fn peer(dir: u8, ep: &EndpointInfo, sent_by_endpoint: bool) -> u32 {
    if dir == DIR_INGRESS && sent_by_endpoint {
        ep.generation
    } else {
        0
    }
}

/// After a hook passed a packet it judged: the sending hook marks it for the receiving one;
/// the receiving hook records the pass in the sender's entry.
#[inline(always)]
fn passed(
    ctx: &TcContext,
    dir: u8,
    pkt: &Packet,
    key: &mut CtKey,
    generation: u32,
    sent_by_endpoint: bool,
) {
    if dir == DIR_EGRESS {
        hint(ctx, trust::SENT_BY_ENDPOINT);
    } else if sent_by_endpoint {
        note_peer(ctx, pkt, key, generation);
    }
}

/// `fg_to_pod` passed a packet that another local endpoint sent (it came in through that
/// endpoint's interface, `ingress_ifindex`): in the sender's entry for the connection, record
/// that this end passed it under `generation`. The sender's later packets then carry
/// `trust::MASK`. `key` is this endpoint's key, overwritten with the sender's (the packet as
/// the sender's egress sees it).
#[inline(always)]
fn note_peer(ctx: &TcContext, pkt: &Packet, key: &mut CtKey, generation: u32) {
    // SAFETY: `skb` is the program's context pointer.
    let sender = unsafe { (*ctx.skb.skb).ingress_ifindex };
    *key = ct_key(
        sender,
        pkt.proto,
        pkt.src_port,
        pkt.dst_port,
        pkt.src,
        pkt.dst,
    );
    if let Some(ct) = FG_CONNTRACK.get_ptr_mut(&*key) {
        // SAFETY: a valid map value pointer; plain integer fields. A race with the sender's
        // own update can only leave the hint unset (the sender re-stamps its entry afresh).
        unsafe {
            if (*ct).generation == generation && (*ct).verdict != verdict::DENY {
                (*ct).peer_generation = generation;
            }
        }
    }
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
    ctx: &TcContext,
    ep: &EndpointInfo,
    opened: u8,
    dir: u8,
    pkt: &Packet,
    ct_key: &mut CtKey,
    mut d: Decision,
    audit: bool,
    sent_by_endpoint: bool,
) -> i32 {
    if d.allow {
        track(
            ct_key,
            ep,
            opened,
            verdict::ALLOW,
            peer(dir, ep, sent_by_endpoint),
            d.now,
        );
        passed(ctx, dir, pkt, ct_key, ep.generation, sent_by_endpoint);
        return TC_ACT_OK;
    }
    d.reason = reason::RECHECK_DENY;
    let flags = if opened != dir {
        event_flags::RECHECK | EVENT_REVERSED
    } else {
        event_flags::RECHECK
    };
    if audit {
        track(
            ct_key,
            ep,
            opened,
            verdict::AUDIT_DENY,
            peer(dir, ep, sent_by_endpoint),
            d.now,
        );
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
        passed(ctx, dir, pkt, ct_key, ep.generation, sent_by_endpoint);
        return TC_ACT_OK;
    }
    // Kept, as denied: a later packet of the connection, either way, is dropped too. Removing
    // it would let the other end's next packet open the connection afresh as a new flow.
    track(ct_key, ep, opened, verdict::DENY, 0, d.now);
    deny(ep, opened, pkt, ct_key, &d, flags);
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

/// Records the connection's decision. An entry still in the table for the same key (a re-check,
/// or a new connection on a reused tuple) is rewritten in place: an insert into the LRU map
/// takes a free element, locks the bucket and frees the replaced element, and in traffic that
/// was the largest cost of a new connection.
///
/// Concurrent writers of one entry (a SYN and a stray packet of the tuple's previous connection
/// on another CPU) can interleave their fields. That never allows more: the verdict written is
/// always one that a decision for this tuple under this generation made, and the generation,
/// which makes the entry count, is written last.
#[inline(always)]
fn track(key: &CtKey, ep: &EndpointInfo, dir: u8, v: u8, peer_generation: u32, now: u64) {
    if let Some(ct) = FG_CONNTRACK.get_ptr_mut(key) {
        // SAFETY: a valid map value pointer; plain integer fields.
        unsafe {
            (*ct).direction = dir;
            (*ct).verdict = v;
            (*ct).peer_generation = peer_generation;
            (*ct).created_ns = now;
            (*ct).generation = ep.generation;
        }
        return;
    }
    let value = ct_value(ep.generation, dir, v, peer_generation, now);
    let _ = FG_CONNTRACK.insert(key, &value, 0);
}

/// Reports a denied packet: the first of a (5-tuple, reason) at once, then at most one event per
/// window carrying the count of packets since the last one. Never sampled.
#[inline(always)]
fn deny(ep: &EndpointInfo, dir: u8, pkt: &Packet, key: &mut CtKey, d: &Decision, flags: u8) {
    // The dedup key is the flow plus the reason (in the pad byte); `key` is not used after this.
    key._pad[0] = d.reason;
    let dkey = &*key;
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
