//! Crafted frames for `BPF_PROG_TEST_RUN`: Ethernet, IPv4 (optionally with IP options) or IPv6
//! (optionally with a fragment header), and a TCP, UDP, SCTP or ICMP header.

use std::net::IpAddr;

/// A crafted frame: Ethernet, IPv4 or IPv6 (with an optional fragment), and an L4 header.
#[derive(Clone, Copy)]
pub struct Frame {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    tcp_flags: u8,
    /// (id, offset in 8-byte units, more fragments).
    frag: Option<(u32, u16, bool)>,
    /// IPv4 only: 4 bytes of IP options (IHL 6), so the L4 header is not at its usual offset.
    ip_options: bool,
}

pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8) -> Frame {
    Frame {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 6,
        sport,
        dport,
        tcp_flags: flags,
        frag: None,
        ip_options: false,
    }
}

impl Frame {
    pub fn proto(mut self, proto: u8) -> Self {
        self.proto = proto;
        self
    }

    pub fn ip_options(mut self) -> Self {
        self.ip_options = true;
        self
    }

    pub fn frag(mut self, id: u32, offset: u16, more: bool) -> Self {
        self.frag = Some((id, offset, more));
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            1 | 58 => {
                let kind = if self.proto == 1 { 8 } else { 128 };
                l4.extend_from_slice(&[kind, 0, 0, 0]);
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&[0, 1]);
            }
            _ => {
                l4.extend_from_slice(&self.sport.to_be_bytes());
                l4.extend_from_slice(&self.dport.to_be_bytes());
                l4.extend_from_slice(&[
                    0,
                    0,
                    0,
                    1,
                    0,
                    0,
                    0,
                    0,
                    0x50,
                    self.tcp_flags,
                    0xfa,
                    0xf0,
                    0,
                    0,
                    0,
                    0,
                ]);
            }
        }
        let first = self.frag.is_none_or(|(_, off, _)| off == 0);
        let payload: Vec<u8> = if first { l4 } else { vec![0xab; 24] };
        let mut p = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                p.extend_from_slice(&0x0800u16.to_be_bytes());
                let options: &[u8] = if self.ip_options { &[1, 1, 1, 0] } else { &[] };
                let total = u16::try_from(20 + options.len() + payload.len()).unwrap();
                let (id, frag) = match self.frag {
                    None => (1u16, 0x4000u16),
                    Some((id, off, more)) => (
                        u16::try_from(id).unwrap(),
                        off | if more { 0x2000 } else { 0 },
                    ),
                };
                p.extend_from_slice(&[0x45 + u8::from(self.ip_options), 0]);
                p.extend_from_slice(&total.to_be_bytes());
                p.extend_from_slice(&id.to_be_bytes());
                p.extend_from_slice(&frag.to_be_bytes());
                p.extend_from_slice(&[64, self.proto, 0, 0]);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                p.extend_from_slice(options);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                p.extend_from_slice(&0x86ddu16.to_be_bytes());
                let ext = if self.frag.is_some() { 8 } else { 0 };
                let len = u16::try_from(payload.len() + ext).unwrap();
                p.extend_from_slice(&[0x60, 0, 0, 0]);
                p.extend_from_slice(&len.to_be_bytes());
                p.push(if self.frag.is_some() { 44 } else { self.proto });
                p.push(64);
                p.extend_from_slice(&s.octets());
                p.extend_from_slice(&d.octets());
                if let Some((id, off, more)) = self.frag {
                    p.extend_from_slice(&[self.proto, 0]);
                    p.extend_from_slice(&((off << 3) | u16::from(more)).to_be_bytes());
                    p.extend_from_slice(&id.to_be_bytes());
                }
            }
            _ => panic!("mixed address families"),
        }
        p.extend_from_slice(&payload);
        p
    }
}
