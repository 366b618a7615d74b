//! `FlowEvent` -> `FlowRecord`: resolves the endpoint, the remote pod, the attribution id and
//! the isolating policies with the lookup tables of the generation the kernel decided with (a
//! later policy edit never rewrites history), converts kernel time to wall-clock time, and
//! numbers records per node.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};

use flowgate_abi::{DIR_EGRESS, FlowEvent, event_flags, reason, verdict};
use flowgate_policy::Cluster;
use flowgate_policy::compile::Snapshot;
use flowgate_policy::model::Labels;

use crate::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Scope, Verdict,
};

/// A local pod the datapath reports for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalInfo {
    pub namespace: String,
    pub pod: String,
    pub labels: Labels,
    pub isolated_by_ingress: Vec<PolicyRef>,
    pub isolated_by_egress: Vec<PolicyRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub pod: String,
    pub labels: Labels,
}

/// What one policy generation needs to explain its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tables {
    pub generation: u32,
    pub mode: Mode,
    /// By endpoint id.
    pub endpoints: HashMap<u32, LocalInfo>,
    pub attributions: HashMap<u32, Vec<RuleRef>>,
    pub pods_by_ip: HashMap<IpAddr, PodInfo>,
}

impl Tables {
    /// The tables of a compiled snapshot of a cluster.
    pub fn from_snapshot(cluster: &Cluster, snap: &Snapshot, mode: Mode) -> Self {
        let policy_refs = |refs: &[flowgate_policy::PolicyRef]| -> Vec<PolicyRef> {
            refs.iter()
                .map(|p| PolicyRef {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                })
                .collect()
        };
        let mut endpoints = HashMap::new();
        for state in snap.endpoints.values() {
            let (namespace, pod) = state.pod.split_once('/').unwrap_or(("", &state.pod));
            let labels = cluster
                .pod_by_name(namespace, pod)
                .map(|id| cluster.pod(id).labels.clone())
                .unwrap_or_default();
            endpoints.insert(
                state.endpoint_id,
                LocalInfo {
                    namespace: namespace.to_owned(),
                    pod: pod.to_owned(),
                    labels,
                    isolated_by_ingress: policy_refs(&state.ingress.isolated_by),
                    isolated_by_egress: policy_refs(&state.egress.isolated_by),
                },
            );
        }
        let attributions = snap
            .attributions
            .iter()
            .map(|(id, refs)| {
                let refs = refs
                    .iter()
                    .map(|r| RuleRef {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        rule: r.rule,
                        peer: r.peer,
                        port: r.port,
                    })
                    .collect();
                (*id, refs)
            })
            .collect();
        let mut pods_by_ip = HashMap::new();
        for (_, pod) in cluster.pods() {
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                let info = PodInfo {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    labels: pod.labels.clone(),
                };
                pods_by_ip.insert(*ip, info);
            }
        }
        Self {
            generation: snap.generation,
            mode,
            endpoints,
            attributions,
            pods_by_ip,
        }
    }
}

/// How many generations are kept to resolve late events.
pub const HISTORY: usize = 32;

#[derive(Debug)]
pub struct Enricher {
    node: String,
    history: VecDeque<Tables>,
    seq: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC (the kernel's bpf_ktime_get_ns), in ns.
    realtime_offset_ns: i128,
}

impl Enricher {
    pub fn new(node: &str, realtime_offset_ns: i128) -> Self {
        Self {
            node: node.to_owned(),
            history: VecDeque::new(),
            seq: 0,
            realtime_offset_ns,
        }
    }

    /// Adds the tables of a generation now in the datapath.
    pub fn push(&mut self, tables: Tables) {
        self.history.retain(|t| t.generation != tables.generation);
        self.history.push_back(tables);
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
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
        let port = |p: u16| has_ports.then_some(p);
        let local = tables.and_then(|t| t.endpoints.get(&ev.endpoint_id));
        let endpoint = |ip: IpAddr, p: u16, is_local: bool| -> Endpoint {
            let pod = if is_local {
                local.map(|l| PodInfo {
                    namespace: l.namespace.clone(),
                    pod: l.pod.clone(),
                    labels: l.labels.clone(),
                })
            } else {
                tables.and_then(|t| t.pods_by_ip.get(&ip)).cloned()
            };
            match pod {
                Some(p2) => Endpoint {
                    ip,
                    port: port(p),
                    kind: EndpointKind::Pod,
                    namespace: Some(p2.namespace),
                    pod: Some(p2.pod),
                    labels: p2.labels.into_iter().collect::<BTreeMap<_, _>>(),
                    scope: None,
                },
                None => Endpoint {
                    ip,
                    port: port(p),
                    kind: EndpointKind::External,
                    namespace: None,
                    pod: None,
                    labels: BTreeMap::new(),
                    scope: Some(scope(ip)),
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
        let allowed_by = if ev.attribution != 0 {
            tables
                .and_then(|t| t.attributions.get(&ev.attribution))
                .cloned()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let isolated_by = if v == Verdict::Allow {
            Vec::new()
        } else {
            local
                .map(|l| {
                    if egress {
                        l.isolated_by_egress.clone()
                    } else {
                        l.isolated_by_ingress.clone()
                    }
                })
                .unwrap_or_default()
        };
        let mut tags = Vec::new();
        if egress
            && destination.kind == EndpointKind::External
            && destination.scope == Some(Scope::Public)
        {
            tags.push("egress_to_world".to_owned());
        }
        if ev.flags & event_flags::RECHECK != 0 {
            tags.push("recheck".to_owned());
        }
        let time = rfc3339(self.wall(ev.timestamp_ns));
        let first = rfc3339(self.wall(ev.first_ns));
        FlowRecord {
            schema: SCHEMA,
            record_type: RecordType::Flow,
            time: time.clone(),
            seq,
            node: self.node.clone(),
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
                tcp_flags: (ev.proto == 6).then(|| tcp_flags(ev.tcp_flags)),
            },
            policy: PolicyInfo {
                generation: ev.generation,
                allowed_by,
                isolated_by,
                unresolved: tables.is_none(),
            },
            counters: Counters {
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

fn transport(proto: u8) -> String {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        132 => "sctp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        other => other.to_string(),
    }
}

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

/// Nanoseconds since the Unix epoch -> `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub fn rfc3339(epoch_ns: i128) -> String {
    let secs = epoch_ns.div_euclid(1_000_000_000);
    let nanos = epoch_ns.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
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

#[cfg(test)]
mod tests {
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
