//! The servers inside every endpoint namespace: per (address, port) a TCP listener that accepts
//! and closes and a UDP socket that echoes; per address a raw SCTP socket that answers an INIT
//! with an INIT-ACK on a serving port and with an ABORT on any other (as a real SCTP stack
//! would). The sockets are opened by a thread inside each namespace (`open`); one thread then
//! polls them all (`Servers`), until the lab stops it.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::thread::{self, JoinHandle};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrStorage, bind, recvfrom,
    sendto, socket,
};
use nix::unistd::pipe2;

use super::error::LabError;
use super::packet::{self, CHUNK_INIT, InitParams};
use super::spec::EndpointPlan;

/// One server socket, already bound inside its endpoint's namespace.
#[derive(Debug)]
pub(super) enum ServerSocket {
    Tcp(TcpListener),
    Udp(UdpSocket),
    Sctp {
        socket: OwnedFd,
        local: IpAddr,
        ports: BTreeSet<u16>,
    },
}

impl ServerSocket {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(listener) => listener.as_fd(),
            Self::Udp(socket) => socket.as_fd(),
            Self::Sctp { socket, .. } => socket.as_fd(),
        }
    }

    /// Handles everything pending on the socket, without blocking.
    fn serve(&self, buf: &mut [u8]) {
        match self {
            Self::Tcp(listener) => {
                // The handshake is what a probe waits for: accept and close at once.
                while let Ok((stream, _)) = listener.accept() {
                    drop(stream);
                }
            }
            Self::Udp(socket) => {
                while let Ok((len, peer)) = socket.recv_from(buf) {
                    let _ = socket.send_to(buf.get(..len).unwrap_or_default(), peer);
                }
            }
            Self::Sctp {
                socket,
                local,
                ports,
            } => serve_sctp(socket, *local, ports, buf),
        }
    }
}

fn serve_sctp(socket: &OwnedFd, local: IpAddr, ports: &BTreeSet<u16>, buf: &mut [u8]) {
    loop {
        let (len, peer) = match recvfrom::<SockaddrStorage>(socket.as_raw_fd(), buf) {
            Ok((len, Some(peer))) => (len, peer),
            Ok((_, None)) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        let received = buf.get(..len).unwrap_or_default();
        // An AF_INET raw socket hands over the IP header too; an AF_INET6 one does not.
        let sctp = if local.is_ipv4() {
            packet::ipv4_payload(received)
        } else {
            Some(received)
        };
        let Some(request) = sctp.and_then(packet::parse_sctp) else {
            continue;
        };
        // Only an INIT opens an association; everything else (our own INIT-ACKs and ABORTs
        // seen by this socket, a client's answers) is none of the server's business.
        if request.chunk != CHUNK_INIT || request.init.is_none() {
            continue;
        }
        let reply = if ports.contains(&request.dst_port) {
            let nonce = packet::nonce();
            let tag = u32::try_from(nonce >> 32).unwrap_or(1);
            let tsn = u32::try_from(nonce & 0xffff_ffff).unwrap_or(0);
            packet::sctp_init_ack(&request, &InitParams::new(tag, tsn), packet::nonce())
        } else {
            packet::sctp_abort(&request)
        };
        let _ = sendto(socket.as_raw_fd(), &reply, &peer, MsgFlags::empty());
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// A raw socket of `protocol` bound to `local`, non-blocking: receives every packet of that
/// protocol addressed to `local` in the calling thread's namespace.
pub(super) fn raw_socket(local: IpAddr, protocol: SockProtocol) -> Result<OwnedFd, Errno> {
    let socket = socket(
        family(local),
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        protocol,
    )?;
    bind(
        socket.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(local, 0)),
    )?;
    Ok(socket)
}

/// Opens the servers of `endpoint`. Must run on a thread inside the endpoint's namespace.
pub(super) fn open(endpoint: &EndpointPlan) -> Result<Vec<ServerSocket>, LabError> {
    let mut sockets = Vec::new();
    for &ip in &endpoint.ips {
        for &port in &endpoint.tcp {
            let addr = SocketAddr::new(ip, port);
            let listener = TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|source| bind_error("TCP", &endpoint.key, addr, source))?;
            sockets.push(ServerSocket::Tcp(listener));
        }
        for &port in &endpoint.udp {
            let addr = SocketAddr::new(ip, port);
            let udp = UdpSocket::bind(addr)
                .and_then(|s| s.set_nonblocking(true).map(|()| s))
                .map_err(|source| bind_error("UDP", &endpoint.key, addr, source))?;
            sockets.push(ServerSocket::Udp(udp));
        }
        // Always, even without SCTP ports: an INIT to a closed port gets an ABORT, as from a
        // real stack, instead of an ICMP "protocol unreachable".
        let socket = raw_socket(ip, SockProtocol::Sctp).map_err(|errno| {
            LabError::sys(
                "opening the raw SCTP socket",
                format!("{} {ip}", endpoint.key),
                errno,
            )
        })?;
        sockets.push(ServerSocket::Sctp {
            socket,
            local: ip,
            ports: endpoint.sctp.clone(),
        });
    }
    Ok(sockets)
}

fn bind_error(what: &str, key: &str, addr: SocketAddr, source: std::io::Error) -> LabError {
    let errno = source
        .raw_os_error()
        .map_or(Errno::UnknownErrno, Errno::from_raw);
    LabError::sys(
        "binding a server socket",
        format!("{what} {key} {addr}"),
        errno,
    )
}

/// The thread serving every socket of a lab.
#[derive(Debug)]
pub(super) struct Servers {
    /// Closing it wakes the thread up and makes it exit.
    stop: Option<OwnedFd>,
    thread: Option<JoinHandle<()>>,
}

impl Servers {
    pub(super) fn start(sockets: Vec<ServerSocket>) -> Result<Self, LabError> {
        let (stop_read, stop_write) = pipe2(OFlag::O_CLOEXEC)
            .map_err(|errno| LabError::sys("creating the stop pipe", "pipe2", errno))?;
        let thread = thread::Builder::new()
            .name("lab-servers".to_owned())
            .spawn(move || serve_all(&sockets, &stop_read))
            .map_err(|source| LabError::Thread {
                name: "lab-servers",
                source,
            })?;
        Ok(Self {
            stop: Some(stop_write),
            thread: Some(thread),
        })
    }

    /// Stops the thread and closes every socket (which lets the namespaces go).
    pub(super) fn stop(&mut self) {
        self.stop = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve_all(sockets: &[ServerSocket], stop: &OwnedFd) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let mut fds: Vec<PollFd<'_>> = sockets
            .iter()
            .map(|socket| PollFd::new(socket.fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(stop.as_fd(), PollFlags::POLLIN));
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(_) => return,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|fd| fd.revents().is_some_and(|events| !events.is_empty()))
            .collect();
        drop(fds);
        if ready.last().copied().unwrap_or(true) {
            return;
        }
        for (socket, _) in sockets.iter().zip(&ready).filter(|(_, ready)| **ready) {
            socket.serve(&mut buf);
        }
    }
}
