//! A sniffer on every interface of the host namespace (an AF_PACKET socket), for the test
//! that no lab packet ever shows up outside the lab.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, recv, socket};

/// Sees every frame on every interface of the host namespace while it runs.
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<(Vec<String>, usize)>,
}

fn frame_ips(frame: &[u8]) -> Option<(IpAddr, IpAddr, &[u8])> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let packet = frame.get(14..)?;
    let v4 = |b: &[u8]| IpAddr::from(<[u8; 4]>::try_from(b).unwrap());
    let v6 = |b: &[u8]| IpAddr::from(<[u8; 16]>::try_from(b).unwrap());
    match ethertype {
        0x0800 => Some((
            v4(packet.get(12..16)?),
            v4(packet.get(16..20)?),
            packet.get(20..)?,
        )),
        0x86dd => Some((
            v6(packet.get(8..24)?),
            v6(packet.get(24..40)?),
            packet.get(40..)?,
        )),
        0x0806 => Some((v4(packet.get(14..18)?), v4(packet.get(24..28)?), &[])),
        _ => None,
    }
}

impl Sniffer {
    /// Records frames to or from `watched` addresses, and counts UDP datagrams to
    /// 127.0.0.1:`control_port` (proof that the sniffer sees traffic at all).
    pub fn start(watched: BTreeSet<IpAddr>, control_port: u16) -> Self {
        let socket = socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::EthAll,
        )
        .expect("an AF_PACKET socket in the host namespace");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let (mut leaked, mut control) = (Vec::new(), 0);
            let mut buf = vec![0u8; 65_536];
            while !stopped.load(Ordering::SeqCst) {
                let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(50u16)).unwrap_or(0) == 0 {
                    continue;
                }
                let Ok(len) = recv(socket.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) else {
                    continue;
                };
                let Some((src, dst, rest)) = frame_ips(&buf[..len]) else {
                    continue;
                };
                if watched.contains(&src) || watched.contains(&dst) {
                    leaked.push(format!("{src} -> {dst}"));
                }
                let control_dst = rest.get(2..4).map(|p| u16::from_be_bytes([p[0], p[1]]));
                if dst == IpAddr::from(Ipv4Addr::LOCALHOST) && control_dst == Some(control_port) {
                    control += 1;
                }
            }
            (leaked, control)
        });
        Self { stop, handle }
    }

    pub fn finish(self) -> (Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}
