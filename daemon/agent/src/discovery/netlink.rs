//! A small synchronous rtnetlink client for discovery: one `NETLINK_ROUTE` socket, opened in the
//! calling thread's network namespace, that sends one request at a time and collects its answer
//! (a single reply, an acknowledgement or a dump). Used by `discovery::Resolver` only.

use std::io;
use std::time::Duration;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

/// A dump of a busy node's FDB or neighbour table comes in datagrams of up to 32 KiB.
const RECV_BUFFER: usize = 64 * 1024;

/// The kernel answers rtnetlink requests synchronously; a reply that takes longer than this is
/// a broken socket, not a slow kernel.
const RECV_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel refused the request with this errno (positive, e.g. `libc::ENOENT`).
    #[error("the kernel answered: {}", io::Error::from_raw_os_error(*errno))]
    Kernel { errno: i32 },
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    #[error("netlink: {0}")]
    Protocol(String),
}

impl NetlinkError {
    /// The kernel's errno, if the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno } => Some(*errno),
            _ => None,
        }
    }

    /// As an `io::Error`, for error sources.
    pub fn into_io(self) -> io::Error {
        match self {
            Self::Kernel { errno } => io::Error::from_raw_os_error(errno),
            Self::Io(error) => error,
            Self::Protocol(text) => io::Error::new(io::ErrorKind::InvalidData, text),
        }
    }
}

/// An rtnetlink socket bound to the network namespace of the thread that opened it.
pub struct Rtnl {
    socket: Socket,
    sequence: u32,
    buffer: Vec<u8>,
}

impl std::fmt::Debug for Rtnl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rtnl")
            .field("sequence", &self.sequence)
            .finish_non_exhaustive()
    }
}

impl Rtnl {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        let timeout = TimeVal::new(i64::try_from(RECV_TIMEOUT.as_secs()).unwrap_or(5), 0);
        setsockopt(&socket, ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(Self {
            socket,
            sequence: 0,
            buffer: vec![0; RECV_BUFFER],
        })
    }

    /// Sends a request that is not a dump (a GET of one object, a NEW, ...) with an
    /// acknowledgement requested, and returns the messages that came before the acknowledgement.
    pub fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_ACK | flags, false)
    }

    /// Sends a dump request and returns every message of the dump. Messages this crate cannot
    /// decode are left out (they are nothing discovery looks for, or discovery reports the
    /// object it looked for as missing, never a wrong one).
    pub fn dump(
        &mut self,
        message: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.exchange(message, NLM_F_REQUEST | NLM_F_DUMP, true)
    }

    fn exchange(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
        dump: bool,
    ) -> Result<Vec<RouteNetlinkMessage>, NetlinkError> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::from(message));
        request.finalize();
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        self.socket.send(&bytes, 0)?;

        let mut answers = Vec::new();
        loop {
            let received = self
                .socket
                .recv(&mut &mut self.buffer[..], libc::MSG_TRUNC)?;
            if received > self.buffer.len() {
                return Err(NetlinkError::Protocol(format!(
                    "a {received}-byte datagram does not fit the {}-byte buffer",
                    self.buffer.len()
                )));
            }
            let mut offset = 0;
            while offset < received {
                let Some(datagram) = self.buffer.get(offset..received) else {
                    break;
                };
                let frame = NetlinkBuffer::new_checked(datagram)
                    .map_err(|error| NetlinkError::Protocol(error.to_string()))?;
                let length = usize::try_from(frame.length()).unwrap_or(usize::MAX);
                let aligned = length.div_ceil(4).saturating_mul(4);
                if length == 0 {
                    return Err(NetlinkError::Protocol("a zero-length message".to_owned()));
                }
                let current = frame.sequence_number() == sequence;
                let parsed = datagram
                    .get(..length)
                    .map(NetlinkMessage::<RouteNetlinkMessage>::deserialize);
                offset = offset.saturating_add(aligned);
                if !current {
                    // A late answer to an earlier request (e.g. one that timed out).
                    continue;
                }
                let message = match parsed {
                    Some(Ok(message)) => message,
                    Some(Err(_)) if dump => continue,
                    Some(Err(error)) => return Err(NetlinkError::Protocol(error.to_string())),
                    None => return Err(NetlinkError::Protocol("a truncated message".to_owned())),
                };
                match message.payload {
                    NetlinkPayload::InnerMessage(inner) => answers.push(inner),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(answers),
                            Some(code) => Err(NetlinkError::Kernel {
                                errno: code.get().saturating_abs(),
                            }),
                        };
                    }
                    NetlinkPayload::Done(done) => {
                        return if done.code == 0 {
                            Ok(answers)
                        } else {
                            Err(NetlinkError::Kernel {
                                errno: done.code.saturating_abs(),
                            })
                        };
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(NetlinkError::Protocol("the kernel overran".to_owned()));
                    }
                    _ => {}
                }
            }
        }
    }
}
