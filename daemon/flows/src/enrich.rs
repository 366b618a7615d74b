//! `FlowEvent` -> `FlowRecord`: resolves the endpoint, the remote pod, the attribution id and
//! the isolating policies with the lookup tables of the generation the kernel decided with (a
//! later policy edit never rewrites history), converts kernel time to wall-clock time, and
//! numbers records per node.
//!
//! Per event this allocates only the time strings (and tags, rarely): names, labels and
//! attribution lists are built once per generation and shared with the records (`Arc`).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use flowgate_abi::{DIR_EGRESS, FlowEvent, event_flags, reason, verdict};

use crate::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Scope, SharedLabels, Verdict,
};

mod tables;

pub use tables::{LocalInfo, PodInfo, Tables};

/// How many generations are kept to resolve late events.
pub const HISTORY: usize = 16;

#[derive(Debug)]
pub struct Enricher {
    node: Arc<str>,
    history: VecDeque<Tables>,
    seq: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns), in ns.
    realtime_offset_ns: i128,
    clock: Clock,
    /// Shared empty values, so records without labels or attribution allocate nothing.
    no_labels: SharedLabels,
    no_rules: Arc<[RuleRef]>,
    no_policies: Arc<[PolicyRef]>,
}

impl Enricher {
    pub fn new(node: &str, realtime_offset_ns: i128) -> Self {
        Self {
            node: Arc::from(node),
            history: VecDeque::new(),
            seq: 0,
            realtime_offset_ns,
            clock: Clock::default(),
            no_labels: Arc::new(BTreeMap::new()),
            no_rules: Arc::from(Vec::new()),
            no_policies: Arc::from(Vec::new()),
        }
    }

    /// Adds the tables of a generation now in the datapath.
    /// Generations share what did not change: the pod table when the pods are the same, and
    /// each pod's entry otherwise, so memory stays flat over many policy updates.
    pub fn push(&mut self, mut tables: Tables) {
        if let Some(last) = self.history.back() {
            if Arc::ptr_eq(&last.pods_by_ip, &tables.pods_by_ip) {
                // Derived from the last tables (`Tables::after`): shared already.
            } else if *last.pods_by_ip == *tables.pods_by_ip {
                tables.pods_by_ip = Arc::clone(&last.pods_by_ip);
            } else {
                let previous = Arc::clone(&last.pods_by_ip);
                for (ip, info) in Arc::make_mut(&mut tables.pods_by_ip).iter_mut() {
                    if let Some(old) = previous.get(ip)
                        && old == info
                    {
                        info.clone_from(old);
                    }
                }
            }
            for (id, info) in &mut tables.endpoints {
                if let Some(old) = last.endpoints.get(id)
                    && old == info
                {
                    info.clone_from(old);
                }
            }
        }
        self.history.retain(|t| t.generation != tables.generation);
        self.history.push_back(tables);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
    }

    /// The tables of the newest generation pushed.
    pub fn latest(&self) -> Option<&Tables> {
        self.history.back()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    /// The next sequence number (records and gap/heartbeat records share it).
    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn enrich(&mut self, ev: &FlowEvent) -> FlowRecord {
        let seq = self.next_seq();
        let tables = self
            .history
            .iter()
            .rev()
            .find(|t| t.generation == ev.generation);
        let src_ip = addr(ev.src_addr, ev.ip_version);
        let dst_ip = addr(ev.dst_addr, ev.ip_version);
        let egress = ev.direction == DIR_EGRESS;
        let has_ports = !matches!(ev.proto, 1 | 58);
        let local = tables.and_then(|t| t.endpoints.get(&ev.endpoint_id));
        let no_labels = &self.no_labels;
        let endpoint = |ip: IpAddr, p: u16, is_local: bool| -> Endpoint {
            let pod = if is_local {
                local.map(|l| (&l.namespace, &l.pod, &l.labels, &l.node, &l.workload))
            } else {
                tables
                    .and_then(|t| t.pod(ip))
                    .map(|p| (&p.namespace, &p.pod, &p.labels, &p.node, &p.workload))
            };
            let port = has_ports.then_some(p);
            match pod {
                Some((namespace, pod, labels, node, workload)) => Endpoint {
                    ip,
                    port,
                    kind: EndpointKind::Pod,
                    namespace: Some(Arc::clone(namespace)),
                    pod: Some(Arc::clone(pod)),
                    labels: Arc::clone(labels),
                    scope: None,
                    node: node.clone(),
                    workload: workload.clone(),
                },
                None => Endpoint {
                    ip,
                    port,
                    kind: EndpointKind::External,
                    namespace: None,
                    pod: None,
                    labels: Arc::clone(no_labels),
                    scope: Some(scope(ip)),
                    node: None,
                    workload: None,
                },
            }
        };
        let source = endpoint(src_ip, ev.src_port, egress);
        let destination = endpoint(dst_ip, ev.dst_port, !egress);
        let v = match ev.verdict {
            verdict::ALLOW => Verdict::Allow,
            verdict::AUDIT_DENY => Verdict::AuditDeny,
            _ => Verdict::Deny,
        };
        let r = match ev.reason {
            reason::NOT_ISOLATED => Reason::NotIsolated,
            reason::RULE_ALLOW => Reason::RuleAllow,
            reason::DEFAULT_DENY => Reason::DefaultDeny,
            reason::RECHECK_DENY => Reason::RecheckDeny,
            reason::FRAGMENT_UNKNOWN => Reason::FragmentUnknown,
            _ => Reason::Unknown,
        };
        let allowed_by = Arc::clone(
            tables
                .filter(|_| ev.attribution != 0)
                .and_then(|t| t.attributions.get(&ev.attribution))
                .unwrap_or(&self.no_rules),
        );
        let isolated_by = Arc::clone(local.filter(|_| v != Verdict::Allow).map_or(
            &self.no_policies,
            |l| {
                if egress {
                    &l.isolated_by_egress
                } else {
                    &l.isolated_by_ingress
                }
            },
        ));
        let mut tags = Vec::new();
        if egress
            && destination.kind == EndpointKind::External
            && destination.scope == Some(Scope::Public)
        {
            tags.push(Cow::Borrowed("egress_to_world"));
        }
        if ev.flags & event_flags::RECHECK != 0 {
            tags.push(Cow::Borrowed("recheck"));
        }
        let time = self.clock.format(self.wall(ev.timestamp_ns));
        let first = if ev.first_ns == ev.timestamp_ns {
            Arc::clone(&time)
        } else {
            self.clock.format(self.wall(ev.first_ns))
        };
        FlowRecord {
            schema: SCHEMA,
            record_type: RecordType::Flow,
            time: Arc::clone(&time),
            seq,
            node: Arc::clone(&self.node),
            verdict: v,
            mode: tables.map_or(Mode::Enforce, |t| t.mode),
            reason: r,
            direction: if egress {
                Direction::Egress
            } else {
                Direction::Ingress
            },
            reporter: if egress { Reporter::Src } else { Reporter::Dst },
            source,
            destination,
            network: Network {
                transport: transport(ev.proto),
                ip_version: ev.ip_version,
                tcp_flags: (ev.proto == 6).then(|| Cow::Borrowed(tcp_flag_names(ev.tcp_flags))),
            },
            policy: PolicyInfo {
                generation: ev.generation,
                allowed_by,
                isolated_by,
                unresolved: tables.is_none(),
            },
            counters: Counters {
                bytes: u64::from(ev.bytes),
                packets: u64::from(ev.count),
                dedup_count: u64::from(ev.count.saturating_sub(1)),
                first_seen: first,
                last_seen: time,
            },
            tags,
        }
    }

    fn wall(&self, monotonic_ns: u64) -> i128 {
        i128::from(monotonic_ns) + self.realtime_offset_ns
    }
}

fn addr(bytes: [u8; 16], ip_version: u8) -> IpAddr {
    let v6 = Ipv6Addr::from(bytes);
    match (ip_version, v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    }
}

fn transport(proto: u8) -> Cow<'static, str> {
    match proto {
        6 => Cow::Borrowed("tcp"),
        17 => Cow::Borrowed("udp"),
        132 => Cow::Borrowed("sctp"),
        1 => Cow::Borrowed("icmp"),
        58 => Cow::Borrowed("icmpv6"),
        other => Cow::Owned(other.to_string()),
    }
}

/// `tcp_flags(f)` for every combination of the six named flags (the index is `flags & 0x3f`).
const TCP_FLAG_NAMES: [&str; 64] = [
    "",
    "FIN",
    "SYN",
    "SYN|FIN",
    "RST",
    "FIN|RST",
    "SYN|RST",
    "SYN|FIN|RST",
    "PSH",
    "FIN|PSH",
    "SYN|PSH",
    "SYN|FIN|PSH",
    "RST|PSH",
    "FIN|RST|PSH",
    "SYN|RST|PSH",
    "SYN|FIN|RST|PSH",
    "ACK",
    "ACK|FIN",
    "SYN|ACK",
    "SYN|ACK|FIN",
    "ACK|RST",
    "ACK|FIN|RST",
    "SYN|ACK|RST",
    "SYN|ACK|FIN|RST",
    "ACK|PSH",
    "ACK|FIN|PSH",
    "SYN|ACK|PSH",
    "SYN|ACK|FIN|PSH",
    "ACK|RST|PSH",
    "ACK|FIN|RST|PSH",
    "SYN|ACK|RST|PSH",
    "SYN|ACK|FIN|RST|PSH",
    "URG",
    "FIN|URG",
    "SYN|URG",
    "SYN|FIN|URG",
    "RST|URG",
    "FIN|RST|URG",
    "SYN|RST|URG",
    "SYN|FIN|RST|URG",
    "PSH|URG",
    "FIN|PSH|URG",
    "SYN|PSH|URG",
    "SYN|FIN|PSH|URG",
    "RST|PSH|URG",
    "FIN|RST|PSH|URG",
    "SYN|RST|PSH|URG",
    "SYN|FIN|RST|PSH|URG",
    "ACK|URG",
    "ACK|FIN|URG",
    "SYN|ACK|URG",
    "SYN|ACK|FIN|URG",
    "ACK|RST|URG",
    "ACK|FIN|RST|URG",
    "SYN|ACK|RST|URG",
    "SYN|ACK|FIN|RST|URG",
    "ACK|PSH|URG",
    "ACK|FIN|PSH|URG",
    "SYN|ACK|PSH|URG",
    "SYN|ACK|FIN|PSH|URG",
    "ACK|RST|PSH|URG",
    "ACK|FIN|RST|PSH|URG",
    "SYN|ACK|RST|PSH|URG",
    "SYN|ACK|FIN|RST|PSH|URG",
];

/// The names of the set flags among SYN, ACK, FIN, RST, PSH and URG, joined by `|`.
fn tcp_flag_names(flags: u8) -> &'static str {
    TCP_FLAG_NAMES[usize::from(flags & 0x3f)]
}

#[cfg(test)]
fn tcp_flags(flags: u8) -> String {
    const NAMES: [(u8, &str); 6] = [
        (0x02, "SYN"),
        (0x10, "ACK"),
        (0x01, "FIN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x20, "URG"),
    ];
    let set: Vec<&str> = NAMES
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, n)| *n)
        .collect();
    set.join("|")
}

/// Private: RFC 1918, shared (100.64/10), loopback, link-local, IPv6 ULA and link-local.
pub fn scope(ip: IpAddr) -> Scope {
    let private = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (o[0] == 100 && (64..128).contains(&o[1]))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80
        }
    };
    if private {
        Scope::Private
    } else {
        Scope::Public
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
const STAMP_LEN: usize = 30;
const NS_PER_S: i64 = 1_000_000_000;

/// `YYYY-MM-DDTHH:MM:SS` of a second since the Unix epoch; `None` for years outside 0..=9999.
fn date_time(secs: i64) -> Option<[u8; 19]> {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days.checked_add(719_468)?;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let year = u32::try_from(year).ok().filter(|y| *y <= 9999)?;
    let mut out = *b"0000-00-00T00:00:00";
    let mut put = |at: usize, width: usize, value: u32| {
        let mut v = value;
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    // Every value below is within its width: month 1..=12, day 1..=31, and rem < 86,400.
    let part = |v: i64| u32::try_from(v).unwrap_or(0);
    put(0, 4, year);
    put(5, 2, part(month));
    put(8, 2, part(day));
    put(11, 2, part(rem / 3600));
    put(14, 2, part(rem % 3600 / 60));
    put(17, 2, part(rem % 60));
    Some(out)
}

/// The whole stamp from the date-time part and the nanoseconds (< 10^9).
fn stamp(date_time: &[u8; 19], nanos: u32) -> [u8; STAMP_LEN] {
    let mut out = [0u8; STAMP_LEN];
    out[..19].copy_from_slice(date_time);
    out[19] = b'.';
    let mut v = nanos;
    for b in out[20..29].iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out[29] = b'Z';
    out
}

/// Seconds and nanoseconds of an epoch time in ns, when it fits in an `i64`.
fn split(epoch_ns: i128) -> Option<(i64, u32)> {
    let ns = i64::try_from(epoch_ns).ok()?;
    let nanos = u32::try_from(ns.rem_euclid(NS_PER_S)).ok()?;
    Some((ns.div_euclid(NS_PER_S), nanos))
}

/// Nanoseconds since the Unix epoch -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339(epoch_ns: i128) -> String {
    let fast = split(epoch_ns).and_then(|(secs, nanos)| Some(stamp(&date_time(secs)?, nanos)));
    match fast.as_ref().map(|s| std::str::from_utf8(s)) {
        Some(Ok(s)) => s.to_owned(),
        _ => rfc3339_general(epoch_ns),
    }
}

/// `rfc3339` for any time, including years that do not have four digits.
fn rfc3339_general(epoch_ns: i128) -> String {
    let secs = epoch_ns.div_euclid(1_000_000_000);
    let nanos = epoch_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Formats record times, keeping the date-time part of the last second seen (events come in
/// time order, so most share it).
#[derive(Debug, Default)]
struct Clock {
    /// The second `date_time` is of, if any.
    secs: Option<i64>,
    date_time: [u8; 19],
}

impl Clock {
    fn format(&mut self, epoch_ns: i128) -> Arc<str> {
        if let Some((secs, nanos)) = split(epoch_ns) {
            if self.secs != Some(secs)
                && let Some(dt) = date_time(secs)
            {
                self.secs = Some(secs);
                self.date_time = dt;
            }
            if self.secs == Some(secs)
                && let Ok(s) = std::str::from_utf8(&stamp(&self.date_time, nanos))
            {
                return Arc::from(s);
            }
        }
        Arc::from(rfc3339_general(epoch_ns))
    }
}

#[cfg(test)]
mod tests {
    use flowgate_policy::Cluster;

    use super::*;

    #[test]
    fn formats_time_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2026-11-28T18:00:00.5Z
        assert_eq!(
            rfc3339(1_795_888_800_500_000_000),
            "2026-11-28T18:00:00.500000000Z"
        );
        assert_eq!(
            rfc3339(951_782_400_000_000_000),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn scopes_and_flags() {
        assert_eq!(scope("10.1.2.3".parse().unwrap()), Scope::Private);
        assert_eq!(scope("100.100.0.1".parse().unwrap()), Scope::Private);
        assert_eq!(scope("fd00::1".parse().unwrap()), Scope::Private);
        assert_eq!(scope("203.0.113.5".parse().unwrap()), Scope::Public);
        assert_eq!(scope("2001:db8::1".parse().unwrap()), Scope::Public);
        assert_eq!(tcp_flags(0x12), "SYN|ACK");
        for flags in 0..=u8::MAX {
            assert_eq!(tcp_flag_names(flags), tcp_flags(flags), "flags {flags:#x}");
        }
    }

    /// The fast formatter, with and without its per-second cache, agrees with the general
    /// one everywhere: epoch, leap days, year ends, before 1970, and far past and future.
    #[test]
    fn fast_time_formatting_matches_the_general_formatter() {
        let mut clock = Clock::default();
        let mut times: Vec<i128> = vec![
            0,
            -1,
            1,
            999_999_999,
            1_000_000_000,
            -1_000_000_000,
            951_782_400_000_000_000,
            1_795_888_800_500_000_000,
            253_402_300_799_999_999_999,
            253_402_300_800_000_000_000,
            -62_167_219_200_000_000_000,
            -62_167_219_200_000_000_001,
            i128::from(i64::MAX),
            i128::from(i64::MIN),
            i128::from(i64::MAX) + 1,
            i128::from(u64::MAX) * 3,
            -i128::from(u64::MAX) * 3,
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            times.push(i128::from(x % 8_000_000_000_000_000_000) - 2_000_000_000_000_000_000);
        }
        let base = 1_795_888_799_000_000_000i128;
        times.extend((0..3000).map(|i| base + i * 1_000_000));
        for t in times {
            let want = rfc3339_general(t);
            assert_eq!(rfc3339(t), want, "{t}");
            assert_eq!(&*clock.format(t), want, "{t}");
        }
    }

    /// A policy-only change shares the pod table with the previous generation: memory does
    /// not grow with the number of updates.
    #[test]
    fn generations_share_unchanged_pod_tables() {
        let mut m = flowgate_policy::Manifests::new();
        m.add_text("t.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: n}\nstatus: {podIP: 10.0.0.1}\n");
        let cluster = Cluster::from_manifests(&mut m);
        let locals = [flowgate_policy::compile::LocalEndpoint {
            pod: "n/a".into(),
            ifindex: 1,
        }];
        let first = flowgate_policy::compile::compile(&cluster, &locals, None);
        let second = flowgate_policy::compile::compile(&cluster, &locals, Some(&first));
        let mut e = Enricher::new("n1", 0);
        e.push(Tables::from_snapshot(&cluster, &first, Mode::Enforce));
        e.push(Tables::from_snapshot(&cluster, &second, Mode::Enforce));
        let [a, b] = [&e.history[0], &e.history[1]];
        assert!(
            Arc::ptr_eq(&a.pods_by_ip, &b.pods_by_ip),
            "the unchanged pod table is shared"
        );
        for _ in 0..(HISTORY * 2) {
            let g = e.history.back().map_or(1, |t| t.generation + 1);
            let mut t = Tables::from_snapshot(&cluster, &second, Mode::Enforce);
            t.generation = g;
            e.push(t);
        }
        assert_eq!(e.history.len(), HISTORY, "the history is bounded");
    }

    #[test]
    fn unknown_generation_is_marked_unresolved_not_guessed() {
        let mut e = Enricher::new("n1", 0);
        let ev = FlowEvent {
            version: flowgate_abi::ABI_VERSION,
            generation: 9,
            attribution: 3,
            ip_version: 4,
            ..FlowEvent::default()
        };
        let r = e.enrich(&ev);
        assert!(r.policy.unresolved && r.policy.allowed_by.is_empty());
        assert_eq!(
            (r.seq, e.enrich(&ev).seq),
            (1, 2),
            "sequence numbers increase"
        );
    }
}
