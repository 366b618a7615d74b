//! A connection that stays open across policy changes and restarts: our own TCP echo server in
//! one lab pod and a connected client socket in another. Shared by the lab and restart tests
//! (brought in with `#[path]`).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use flowgate::lab::Lab;

/// Starts an echo server on `server` (a pod key) at `addr`, and connects to it from `client`
/// within `timeout`; the returned stream reads with `read_timeout`.
pub fn open_echo_connection(
    lab: &Lab,
    server: &str,
    addr: SocketAddr,
    client: &str,
    timeout: Duration,
    read_timeout: Duration,
) -> TcpStream {
    let listener = lab
        .in_endpoint(server, || TcpListener::bind(addr))
        .unwrap()
        .unwrap_or_else(|e| panic!("echo server on {server} {addr}: {e}"));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = stream;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let stream = lab
        .in_endpoint(client, || TcpStream::connect_timeout(&addr, timeout))
        .unwrap()
        .unwrap_or_else(|e| panic!("{client} connects to {server} {addr}: {e}"));
    stream.set_read_timeout(Some(read_timeout)).unwrap();
    stream
}
