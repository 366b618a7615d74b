//! The JSON line of a record, written by hand into a reusable buffer: the same JSON as the serde
//! derives of `record` and `gap` (which stay the reference, and are what deserializes), the same
//! key order and the same escaping as `serde_json::to_writer`, in a fraction of the time.
//! `tests/json_equivalence.rs` checks the two agree, value for value and byte for byte.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};

use crate::gap::GapRecord;
use crate::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, Scope, Verdict,
};

/// Appends the JSON of a flow record to `out` (no newline).
pub fn write_flow(out: &mut Vec<u8>, f: &FlowRecord) {
    out.extend_from_slice(b"{\"schema\":");
    string(out, f.schema);
    out.extend_from_slice(b",\"record_type\":\"");
    out.extend_from_slice(record_type(f.record_type));
    out.extend_from_slice(b"\",\"time\":");
    string(out, &f.time);
    out.extend_from_slice(b",\"seq\":");
    uint(out, f.seq);
    out.extend_from_slice(b",\"node\":");
    string(out, &f.node);
    out.extend_from_slice(b",\"verdict\":\"");
    out.extend_from_slice(verdict(f.verdict));
    out.extend_from_slice(b"\",\"mode\":\"");
    out.extend_from_slice(mode(f.mode));
    out.extend_from_slice(b"\",\"reason\":\"");
    out.extend_from_slice(reason(f.reason));
    out.extend_from_slice(b"\",\"direction\":\"");
    out.extend_from_slice(direction(f.direction));
    out.extend_from_slice(b"\",\"reporter\":\"");
    out.extend_from_slice(reporter(f.reporter));
    out.extend_from_slice(b"\",\"source\":");
    endpoint(out, &f.source);
    out.extend_from_slice(b",\"destination\":");
    endpoint(out, &f.destination);
    out.extend_from_slice(b",\"network\":");
    network(out, &f.network);
    out.extend_from_slice(b",\"policy\":");
    policy(out, &f.policy);
    out.extend_from_slice(b",\"counters\":");
    counters(out, &f.counters);
    if !f.tags.is_empty() {
        out.extend_from_slice(b",\"tags\":[");
        for (i, tag) in f.tags.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, tag);
        }
        out.push(b']');
    }
    out.push(b'}');
}

/// Appends the JSON of a gap record to `out` (no newline).
pub fn write_gap(out: &mut Vec<u8>, g: &GapRecord) {
    out.extend_from_slice(b"{\"schema\":");
    string(out, g.schema);
    out.extend_from_slice(b",\"record_type\":");
    string(out, g.record_type);
    out.extend_from_slice(b",\"time\":");
    string(out, &g.time);
    out.extend_from_slice(b",\"seq\":");
    uint(out, g.seq);
    out.extend_from_slice(b",\"node\":");
    string(out, &g.node);
    out.extend_from_slice(b",\"stage\":");
    string(out, &g.stage);
    out.extend_from_slice(b",\"lost\":{\"allow\":");
    uint(out, g.lost.allow);
    out.extend_from_slice(b",\"deny\":");
    uint(out, g.lost.deny);
    out.extend_from_slice(b",\"audit\":");
    uint(out, g.lost.audit);
    out.push(b'}');
    if let Some(range) = g.lost_seq {
        out.extend_from_slice(b",\"lost_seq\":{\"first\":");
        uint(out, range.first);
        out.extend_from_slice(b",\"last\":");
        uint(out, range.last);
        out.push(b'}');
    }
    out.push(b'}');
}

fn endpoint(out: &mut Vec<u8>, e: &Endpoint) {
    out.extend_from_slice(b"{\"ip\":\"");
    ip(out, e.ip);
    out.push(b'"');
    if let Some(port) = e.port {
        out.extend_from_slice(b",\"port\":");
        uint(out, u64::from(port));
    }
    out.extend_from_slice(b",\"kind\":\"");
    out.extend_from_slice(match e.kind {
        EndpointKind::Pod => b"pod",
        EndpointKind::External => b"external",
    });
    out.push(b'"');
    if let Some(namespace) = &e.namespace {
        out.extend_from_slice(b",\"namespace\":");
        string(out, namespace);
    }
    if let Some(pod) = &e.pod {
        out.extend_from_slice(b",\"pod\":");
        string(out, pod);
    }
    if !e.labels.is_empty() {
        out.extend_from_slice(b",\"labels\":{");
        for (i, (key, value)) in e.labels.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(out, key);
            out.push(b':');
            string(out, value);
        }
        out.push(b'}');
    }
    if let Some(scope) = e.scope {
        out.extend_from_slice(match scope {
            Scope::Private => b",\"scope\":\"private\"",
            Scope::Public => b",\"scope\":\"public\"",
        });
    }
    if let Some(node) = &e.node {
        out.extend_from_slice(b",\"node\":");
        string(out, node);
    }
    if let Some(w) = &e.workload {
        out.extend_from_slice(b",\"workload\":{\"kind\":");
        string(out, &w.kind);
        out.extend_from_slice(b",\"name\":");
        string(out, &w.name);
        out.push(b'}');
    }
    out.push(b'}');
}

fn network(out: &mut Vec<u8>, n: &Network) {
    out.extend_from_slice(b"{\"transport\":");
    string(out, &n.transport);
    out.extend_from_slice(b",\"ip_version\":");
    uint(out, u64::from(n.ip_version));
    if let Some(flags) = &n.tcp_flags {
        out.extend_from_slice(b",\"tcp_flags\":");
        string(out, flags);
    }
    out.push(b'}');
}

fn policy(out: &mut Vec<u8>, p: &PolicyInfo) {
    out.extend_from_slice(b"{\"generation\":");
    uint(out, u64::from(p.generation));
    if !p.allowed_by.is_empty() {
        out.extend_from_slice(b",\"allowed_by\":[");
        for (i, r) in p.allowed_by.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            rule_ref(out, r);
        }
        out.push(b']');
    }
    if !p.isolated_by.is_empty() {
        out.extend_from_slice(b",\"isolated_by\":[");
        for (i, r) in p.isolated_by.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            policy_ref(out, r);
        }
        out.push(b']');
    }
    if p.unresolved {
        out.extend_from_slice(b",\"unresolved\":true");
    }
    out.push(b'}');
}

fn rule_ref(out: &mut Vec<u8>, r: &RuleRef) {
    out.extend_from_slice(b"{\"namespace\":");
    string(out, &r.namespace);
    out.extend_from_slice(b",\"name\":");
    string(out, &r.name);
    out.extend_from_slice(b",\"rule\":");
    uint(out, r.rule as u64);
    if let Some(peer) = r.peer {
        out.extend_from_slice(b",\"peer\":");
        uint(out, peer as u64);
    }
    if let Some(port) = r.port {
        out.extend_from_slice(b",\"port\":");
        uint(out, port as u64);
    }
    out.push(b'}');
}

fn policy_ref(out: &mut Vec<u8>, p: &PolicyRef) {
    out.extend_from_slice(b"{\"namespace\":");
    string(out, &p.namespace);
    out.extend_from_slice(b",\"name\":");
    string(out, &p.name);
    out.push(b'}');
}

fn counters(out: &mut Vec<u8>, c: &Counters) {
    out.extend_from_slice(b"{\"packets\":");
    uint(out, c.packets);
    out.extend_from_slice(b",\"bytes\":");
    uint(out, c.bytes);
    out.extend_from_slice(b",\"dedup_count\":");
    uint(out, c.dedup_count);
    out.extend_from_slice(b",\"first_seen\":");
    string(out, &c.first_seen);
    out.extend_from_slice(b",\"last_seen\":");
    string(out, &c.last_seen);
    out.push(b'}');
}

fn record_type(t: RecordType) -> &'static [u8] {
    match t {
        RecordType::Flow => b"flow",
    }
}

fn verdict(v: Verdict) -> &'static [u8] {
    match v {
        Verdict::Allow => b"allow",
        Verdict::Deny => b"deny",
        Verdict::AuditDeny => b"audit_deny",
    }
}

fn mode(m: Mode) -> &'static [u8] {
    match m {
        Mode::Enforce => b"enforce",
        Mode::Audit => b"audit",
    }
}

fn reason(r: Reason) -> &'static [u8] {
    match r {
        Reason::NotIsolated => b"not_isolated",
        Reason::RuleAllow => b"rule_allow",
        Reason::DefaultDeny => b"default_deny",
        Reason::RecheckDeny => b"recheck_deny",
        Reason::FragmentUnknown => b"fragment_unknown",
        Reason::Unknown => b"unknown",
    }
}

fn direction(d: Direction) -> &'static [u8] {
    match d {
        Direction::Ingress => b"ingress",
        Direction::Egress => b"egress",
    }
}

fn reporter(r: Reporter) -> &'static [u8] {
    match r {
        Reporter::Src => b"src",
        Reporter::Dst => b"dst",
    }
}

/// An address as its `Display` text (what serde writes for human-readable formats).
fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => ipv4(out, v4),
        // Writing to a Vec cannot fail.
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn ipv4(out: &mut Vec<u8>, v4: Ipv4Addr) {
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        if octet >= 100 {
            out.push(b'0' + octet / 100);
        }
        if octet >= 10 {
            out.push(b'0' + octet / 10 % 10);
        }
        out.push(b'0' + octet % 10);
    }
}

/// An unsigned integer in decimal.
fn uint(out: &mut Vec<u8>, value: u64) {
    if value < 10 {
        out.push(b'0' + (value % 10) as u8);
        return;
    }
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut v = value;
    while v > 0 {
        at -= 1;
        buf[at] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[at..]);
}

/// Whether a byte must be escaped in a JSON string: `"`, `\` and the control characters.
const fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// `needs_escape` of every byte, 8 bytes at a time: a byte below 0x20, or equal to `"` or `\`
/// (each test sets the high bit of the bytes it finds; the last 8 or fewer one by one).
fn any_needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let below_space = x.wrapping_sub(ONES * 0x20) & !x & HIGH;
        if below_space
            | zero_byte(x ^ (ONES * u64::from(b'"')))
            | zero_byte(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks.remainder().iter().any(|b| needs_escape(*b))
}

/// A JSON string: copied as is when nothing needs escaping, escaped like serde_json otherwise
/// (`\"`, `\\`, `\b`, `\t`, `\n`, `\f`, `\r`, `\u00XX` for other control characters; everything
/// else, non-ASCII included, verbatim).
fn string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    out.push(b'"');
    if !any_needs_escape(bytes) {
        out.extend_from_slice(bytes);
    } else {
        escaped(out, bytes);
    }
    out.push(b'"');
}

#[cold]
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs_escape(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(f: impl Fn(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_escape_like_serde_json() {
        let mut all = String::new();
        for c in (0u32..0x80).chain([0xe9, 0x2028, 0x1f600]) {
            all.push(char::from_u32(c).unwrap());
        }
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\u{0}\u{1f}\u{7f}",
            "tab\there",
            &all,
        ] {
            assert_eq!(
                text(|o| string(o, s)),
                serde_json::to_string(s).unwrap(),
                "{s:?}"
            );
        }
    }

    /// The word-at-a-time scan finds every byte that needs escaping, at every position of
    /// strings of 1 to 24 bytes, and nothing else.
    #[test]
    fn the_escape_scan_finds_every_special_byte() {
        for len in 1..=24 {
            for at in 0..len {
                for b in 0..=u8::MAX {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(
                        any_needs_escape(&bytes),
                        needs_escape(b),
                        "byte {b:#x} at {at} of {len}"
                    );
                }
            }
        }
        assert!(!any_needs_escape(b""));
        assert!(!any_needs_escape("ñ€😀 /\u{7f}~".as_bytes()));
    }

    #[test]
    fn numbers_and_addresses_match_std() {
        for v in [0, 1, 9, 10, 99, 100, 65_535, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(text(|o| uint(o, v)), v.to_string());
        }
        for a in [
            "0.0.0.0",
            "10.1.0.200",
            "255.255.255.255",
            "1.20.100.9",
            "::",
            "::1",
            "fd00::10",
            "::ffff:10.0.0.1",
            "2001:db8:0:0:1:0:0:1",
        ] {
            let addr: IpAddr = a.parse().unwrap();
            assert_eq!(text(|o| ip(o, addr)), addr.to_string());
        }
    }
}
