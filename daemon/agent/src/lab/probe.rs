//! Probes: one real connection attempt from an endpoint's namespace, and its observed outcome.
//! TCP connects; UDP sends a token and waits for the echo; SCTP sends an INIT in a raw packet
//! and waits for the INIT-ACK or ABORT; ICMP sends an echo request on a raw socket. Every
//! attempt is bounded by its timeout; `run_all` runs many on a bounded pool of threads.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use flowgate_policy::model::Protocol;
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrLike, SockaddrStorage, bind,
    connect, getsockname, getsockopt, recv, send, setsockopt, socket, sockopt,
};

use super::error::ProbeFailure;
use super::netns::Netns;
use super::packet::{self, CHUNK_ABORT, CHUNK_INIT_ACK, IcmpAnswer, IcmpFamily, InitParams};
use super::servers::raw_socket;

/// How many probes `Lab::probe_all` runs at once at most (each on its own thread).
pub const PROBE_PARALLELISM: usize = 32;

/// Datagram probes (UDP, SCTP INIT, ICMP echo) are sent again after this long without an
/// answer, like TCP's first SYN retransmission; same socket, same ports, same flow.
const RESEND_INTERVAL: Duration = Duration::from_secs(1);

/// Where a probe starts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProbeEnd {
    /// A pod, by `namespace/name`; it sends from its first address of the destination's family.
    Pod(String),
    /// Whichever endpoint (pod or external) owns this address; it sends from this address.
    Ip(IpAddr),
}

impl ProbeEnd {
    /// Reads `namespace/name` or an IP, as in a probe file.
    pub fn parse(text: &str) -> Self {
        text.parse()
            .map_or_else(|_| Self::Pod(text.to_owned()), Self::Ip)
    }
}

impl fmt::Display for ProbeEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pod(key) => f.write_str(key),
            Self::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One probe for `Lab::probe_all`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabProbe {
    pub from: ProbeEnd,
    pub to: IpAddr,
    pub protocol: Protocol,
    /// Required for TCP, UDP and SCTP; ignored for ICMP.
    pub port: Option<u16>,
}

impl LabProbe {
    pub fn new(from: ProbeEnd, to: IpAddr, protocol: Protocol, port: Option<u16>) -> Self {
        Self {
            from,
            to,
            protocol,
            port,
        }
    }
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination answered as a server does: TCP handshake completed, UDP echo received,
    /// SCTP INIT-ACK received, ICMP echo reply received.
    Reached,
    /// The destination's stack answered that nothing serves the port: TCP RST, ICMP port
    /// unreachable (UDP), SCTP ABORT, ICMP protocol unreachable.
    Refused,
    /// An ICMP error said the destination cannot be reached (no route, host unreachable,
    /// administratively prohibited).
    Unreachable,
    /// Nothing came back before the timeout: what a silent drop looks like.
    TimedOut,
    /// The probe could not be attempted.
    Failed(ProbeFailure),
}

impl Outcome {
    /// Whether the probe's packets reached the destination's stack (`Reached` or `Refused`).
    pub fn delivered(&self) -> bool {
        matches!(self, Self::Reached | Self::Refused)
    }
}

/// The result of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub outcome: Outcome,
    /// From the first packet sent to the outcome (or to the timeout).
    pub elapsed: Duration,
    /// The source address used; `None` if the probe could not start.
    pub src: Option<IpAddr>,
    /// The source port (TCP, UDP, SCTP) or the echo identifier (ICMP), to find the flow in
    /// datapath events; `None` if the probe could not start.
    pub src_port: Option<u16>,
}

impl Observed {
    pub(super) fn failed(failure: ProbeFailure) -> Self {
        Self {
            outcome: Outcome::Failed(failure),
            elapsed: Duration::ZERO,
            src: None,
            src_port: None,
        }
    }
}

/// A probe resolved against a lab: where to run it and with which source address.
#[derive(Debug)]
pub(super) struct Job<'lab> {
    pub netns: &'lab Netns,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub timeout: Duration,
}

/// Runs every job, at most `parallelism` at a time, each on a worker thread that enters the
/// job's namespace; results come back in input order.
pub(super) fn run_all(jobs: &[Result<Job<'_>, ProbeFailure>], parallelism: usize) -> Vec<Observed> {
    let next = AtomicUsize::new(0);
    let workers = parallelism.clamp(1, jobs.len().max(1));
    let mut results: Vec<Option<Observed>> = vec![None; jobs.len()];
    thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .filter_map(|_| {
                thread::Builder::new()
                    .name("lab-probe".to_owned())
                    .spawn_scoped(scope, || worker(jobs, &next))
                    .ok()
            })
            .collect();
        for handle in handles {
            match handle.join() {
                Ok(done) => {
                    for (index, observed) in done {
                        if let Some(slot) = results.get_mut(index) {
                            *slot = Some(observed);
                        }
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    results
        .into_iter()
        .map(|result| result.unwrap_or_else(|| Observed::failed(ProbeFailure::Thread)))
        .collect()
}

fn worker(jobs: &[Result<Job<'_>, ProbeFailure>], next: &AtomicUsize) -> Vec<(usize, Observed)> {
    let mut done = Vec::new();
    let mut inside: Option<&str> = None;
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        let Some(job) = jobs.get(index) else {
            return done;
        };
        let observed = match job {
            Err(failure) => Observed::failed(failure.clone()),
            Ok(job) => {
                if inside == Some(job.netns.name.as_str()) {
                    attempt(job)
                } else {
                    match job.netns.enter() {
                        Ok(()) => {
                            inside = Some(job.netns.name.as_str());
                            attempt(job)
                        }
                        Err(errno) => Observed::failed(ProbeFailure::Socket { op: "setns", errno }),
                    }
                }
            }
        };
        done.push((index, observed));
    }
}

/// One attempt, from the calling thread's namespace.
pub(super) fn attempt(job: &Job<'_>) -> Observed {
    let started = Instant::now();
    let deadline = started + job.timeout;
    let dst = SocketAddr::new(job.dst, job.port);
    let result = match job.protocol {
        Protocol::Tcp => tcp(job.src, dst, deadline),
        Protocol::Udp => udp(job.src, dst, deadline),
        Protocol::Sctp => sctp(job.src, dst, deadline),
        Protocol::Icmp => icmp(job.src, job.dst, deadline),
    };
    match result {
        Ok((outcome, src_port)) => Observed {
            outcome,
            elapsed: started.elapsed(),
            src: Some(job.src),
            src_port: Some(src_port),
        },
        Err(failure) => Observed {
            elapsed: started.elapsed(),
            ..Observed::failed(failure)
        },
    }
}

type Attempt = Result<(Outcome, u16), ProbeFailure>;

fn fail(op: &'static str) -> impl Fn(Errno) -> ProbeFailure {
    move |errno| ProbeFailure::Socket { op, errno }
}

/// What an error from a socket says about the destination.
fn classify(op: &'static str, errno: Errno) -> Outcome {
    match errno {
        Errno::ECONNREFUSED | Errno::ECONNRESET | Errno::ENOPROTOOPT => Outcome::Refused,
        Errno::EHOSTUNREACH
        | Errno::ENETUNREACH
        | Errno::EHOSTDOWN
        | Errno::ENETDOWN
        | Errno::EACCES => Outcome::Unreachable,
        Errno::ETIMEDOUT => Outcome::TimedOut,
        errno => Outcome::Failed(ProbeFailure::Socket { op, errno }),
    }
}

fn address_family(ip: IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn local_port(socket: &OwnedFd) -> u16 {
    getsockname::<SockaddrStorage>(socket.as_raw_fd())
        .ok()
        .and_then(|addr| {
            addr.as_sockaddr_in()
                .map(|v4| v4.port())
                .or_else(|| addr.as_sockaddr_in6().map(|v6| v6.port()))
        })
        .unwrap_or(0)
}

/// Waits until `socket` has `events` or `deadline` passes; `Ok(false)` on timeout.
fn wait(socket: &OwnedFd, events: PollFlags, deadline: Instant) -> Result<bool, Errno> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        // Round up so a sub-millisecond remainder still waits instead of spinning.
        let millis = u32::try_from(left.as_millis().saturating_add(1)).unwrap_or(u32::MAX);
        let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(socket.as_fd(), events)];
        match poll(&mut fds, timeout) {
            Ok(0) => {}
            Ok(_) => return Ok(true),
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno),
        }
    }
}

fn tcp(src: IpAddr, dst: SocketAddr, deadline: Instant) -> Attempt {
    let socket = socket(
        address_family(dst.ip()),
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(fail("socket"))?;
    bind(
        socket.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(src, 0)),
    )
    .map_err(fail("bind"))?;
    let port = local_port(&socket);
    let outcome = match connect(socket.as_raw_fd(), &SockaddrStorage::from(dst)) {
        Ok(()) => Outcome::Reached,
        Err(Errno::EINPROGRESS) => match wait(&socket, PollFlags::POLLOUT, deadline) {
            Ok(false) => Outcome::TimedOut,
            Ok(true) => match getsockopt(&socket, sockopt::SocketError) {
                Ok(0) => Outcome::Reached,
                Ok(raw) => classify("connect", Errno::from_raw(raw)),
                Err(errno) => classify("getsockopt", errno),
            },
            Err(errno) => classify("poll", errno),
        },
        Err(errno) => classify("connect", errno),
    };
    Ok((outcome, port))
}

/// A connected, non-blocking datagram or raw socket from `src` to `dst`, reporting ICMP errors
/// about its packets as socket errors (IP_RECVERR).
fn datagram_socket(
    src: IpAddr,
    dst: SocketAddr,
    kind: SockType,
    protocol: Option<SockProtocol>,
) -> Result<OwnedFd, ProbeFailure> {
    let socket = match (kind, protocol) {
        (SockType::Raw, Some(protocol)) => raw_socket(src, protocol).map_err(fail("socket"))?,
        _ => {
            let socket = socket(
                address_family(src),
                kind,
                SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
                protocol,
            )
            .map_err(fail("socket"))?;
            bind(
                socket.as_raw_fd(),
                &SockaddrStorage::from(SocketAddr::new(src, 0)),
            )
            .map_err(fail("bind"))?;
            socket
        }
    };
    if src.is_ipv4() {
        setsockopt(&socket, sockopt::Ipv4RecvErr, &true).map_err(fail("IP_RECVERR"))?;
    } else {
        setsockopt(&socket, sockopt::Ipv6RecvErr, &true).map_err(fail("IPV6_RECVERR"))?;
    }
    let dst = SockaddrStorage::from(dst);
    connect(socket.as_raw_fd(), &dst as &dyn SockaddrLike).map_err(fail("connect"))?;
    Ok(socket)
}

/// Sends `request` (again every RESEND_INTERVAL) and reads until `judge` recognises an answer,
/// a socket error says what happened, or `deadline` passes.
fn exchange(
    socket: &OwnedFd,
    request: &[u8],
    deadline: Instant,
    mut judge: impl FnMut(&[u8]) -> Option<Outcome>,
) -> Outcome {
    let mut buf = [0u8; 4096];
    let mut next_send = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Outcome::TimedOut;
        }
        if now >= next_send {
            if let Err(errno) = send(socket.as_raw_fd(), request, MsgFlags::empty()) {
                return classify("send", errno);
            }
            next_send = now + RESEND_INTERVAL;
        }
        match wait(socket, PollFlags::POLLIN, deadline.min(next_send)) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(errno) => return classify("poll", errno),
        }
        loop {
            match recv(socket.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(len) => {
                    if let Some(outcome) = judge(buf.get(..len).unwrap_or_default()) {
                        return outcome;
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => break,
                Err(errno) => return classify("recv", errno),
            }
        }
    }
}

fn token() -> [u8; 16] {
    let mut token = [0u8; 16];
    token[..8].copy_from_slice(&packet::nonce().to_be_bytes());
    token[8..].copy_from_slice(b"flowgate");
    token
}

fn udp(src: IpAddr, dst: SocketAddr, deadline: Instant) -> Attempt {
    let socket = datagram_socket(src, dst, SockType::Datagram, None)?;
    let port = local_port(&socket);
    let token = token();
    let outcome = exchange(&socket, &token, deadline, |reply| {
        (reply == token).then_some(Outcome::Reached)
    });
    Ok((outcome, port))
}

fn sctp(src: IpAddr, dst: SocketAddr, deadline: Instant) -> Attempt {
    let socket = datagram_socket(
        src,
        SocketAddr::new(dst.ip(), 0),
        SockType::Raw,
        Some(SockProtocol::Sctp),
    )?;
    let nonce = packet::nonce();
    // No kernel SCTP owns ports here: any port works; keep it in the ephemeral range.
    let port = 32_768 + u16::try_from(nonce % 28_000).unwrap_or(0);
    let params = InitParams::new(
        u32::try_from(nonce >> 32).unwrap_or(1),
        u32::try_from(nonce & 0xffff_ffff).unwrap_or(0),
    );
    let init = packet::sctp_init(port, dst.port(), &params);
    let outcome = exchange(&socket, &init, deadline, |received| {
        let sctp = if src.is_ipv4() {
            packet::ipv4_payload(received)?
        } else {
            received
        };
        let answer = packet::parse_sctp(sctp)?;
        let ours = answer.src_port == dst.port()
            && answer.dst_port == port
            && answer.vtag == params.initiate_tag;
        match answer.chunk {
            CHUNK_INIT_ACK if ours => Some(Outcome::Reached),
            CHUNK_ABORT if ours => Some(Outcome::Refused),
            _ => None,
        }
    });
    Ok((outcome, port))
}

fn icmp(src: IpAddr, dst: IpAddr, deadline: Instant) -> Attempt {
    let (family, protocol) = if src.is_ipv4() {
        (IcmpFamily::V4, SockProtocol::Icmp)
    } else {
        (IcmpFamily::V6, SockProtocol::IcmpV6)
    };
    let socket = datagram_socket(src, SocketAddr::new(dst, 0), SockType::Raw, Some(protocol))?;
    let id = u16::try_from(packet::nonce() & 0xffff).unwrap_or(1);
    let payload = token();
    let request = packet::icmp_echo_request(family, id, 1, &payload);
    let outcome = exchange(&socket, &request, deadline, |received| {
        let message = match family {
            IcmpFamily::V4 => packet::ipv4_payload(received)?,
            IcmpFamily::V6 => received,
        };
        match packet::parse_icmp(family, message, id, &payload)? {
            IcmpAnswer::Reply => Some(Outcome::Reached),
            IcmpAnswer::Unreachable { .. } => Some(Outcome::Unreachable),
        }
    });
    Ok((outcome, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_ends_parse_like_probe_files() {
        assert_eq!(
            ProbeEnd::parse("shop/db"),
            ProbeEnd::Pod("shop/db".to_owned())
        );
        assert_eq!(
            ProbeEnd::parse("fd00::1"),
            ProbeEnd::Ip("fd00::1".parse().unwrap())
        );
        assert_eq!(ProbeEnd::parse("10.0.0.1").to_string(), "10.0.0.1");
    }

    #[test]
    fn socket_errors_map_to_outcomes() {
        assert_eq!(classify("x", Errno::ECONNREFUSED), Outcome::Refused);
        assert_eq!(classify("x", Errno::EHOSTUNREACH), Outcome::Unreachable);
        assert_eq!(classify("x", Errno::ETIMEDOUT), Outcome::TimedOut);
        assert!(matches!(classify("x", Errno::EBADF), Outcome::Failed(_)));
        assert!(Outcome::Refused.delivered() && !Outcome::TimedOut.delivered());
    }
}
