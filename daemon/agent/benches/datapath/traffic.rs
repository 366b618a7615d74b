//! The traffic: TCP request/response (1-byte ping-pong over one connection, like netperf
//! TCP_RR), new connections (connect, 1-byte request/response, close, like TCP_CRR) and iperf3
//! bulk throughput, from the client pod to the server pod of the lab.
//!
//! Request/response and new connections run a client thread in the client pod's namespace and a
//! server thread in the server pod's, both pinned to one and the same CPU: on this VM, a wake-up
//! across vCPUs costs more than the whole network path. The iperf3 client and server are pinned
//! to that CPU too (across two vCPUs, iperf3 results here varied by 2x from run to run). While they run, the calling thread (the
//! agent, pinned elsewhere) drains flow events on a 20 ms timer, as the agent does.

use std::fs::File;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;
use nix::unistd::Pid;

/// How often the events are drained while traffic runs.
const DRAIN_EVERY: Duration = Duration::from_millis(20);
/// Bounds every blocking socket call, so a broken path fails the run instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The first byte of the connection that tells a new-connections server to stop.
const QUIT: u8 = 0xff;

/// The two lab pods the traffic runs between.
#[derive(Debug, Clone)]
pub struct Pair {
    pub client_netns: PathBuf,
    pub server_netns: PathBuf,
    pub client_ip: Ipv4Addr,
    pub server_ip: Ipv4Addr,
    /// The CPU the client and server (threads, or iperf3 processes) run on.
    pub cpu: usize,
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {}", path.display()))
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

/// Runs `f` on a thread of its own that has entered the network namespace at `netns`.
pub fn in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(move || -> Result<T> {
                enter(netns)?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("the thread in {} panicked", netns.display()))?
    })
}

/// Writes sysctls (paths below `/proc/sys`) inside the namespace at `netns`.
pub fn sysctls(netns: &Path, values: &[(&str, &str)]) -> Result<()> {
    in_netns(netns, || {
        for (key, value) in values {
            let path = Path::new("/proc/sys").join(key);
            std::fs::write(&path, value).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    })
}

/// Result of one timed run.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Transactions (or connections) per second.
    pub per_sec: f64,
    pub count: u64,
}

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    // accept(2) honours SO_RCVTIMEO.
    setsockopt(
        &listener,
        sockopt::ReceiveTimeout,
        &TimeVal::new(i64::try_from(IO_TIMEOUT.as_secs()).unwrap_or(5), 0),
    )
    .context("SO_RCVTIMEO on the listener")?;
    Ok(listener)
}

/// Runs `server` (given a bound listener) in the server pod and `client` in the client pod,
/// both pinned to `pair.cpu`, calling `drain` every `DRAIN_EVERY` until the client is done.
fn run_pair<S, C>(
    pair: &Pair,
    port: u16,
    drain: &mut dyn FnMut(),
    server: S,
    client: C,
) -> Result<Rate>
where
    S: FnOnce(TcpListener) -> Result<()> + Send,
    C: FnOnce(SocketAddr) -> Result<Rate> + Send,
{
    let addr = SocketAddr::from((pair.server_ip, port));
    thread::scope(|scope| {
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let server_thread = scope.spawn(move || -> Result<()> {
            enter(&pair.server_netns)?;
            pin(pair.cpu)?;
            let bound = listener(addr)?;
            ready_tx.send(()).map_err(|_| anyhow!("client gone"))?;
            server(bound)
        });
        let client_thread = scope.spawn(move || -> Result<Rate> {
            ready_rx
                .recv()
                .map_err(|_| anyhow!("the server did not start"))?;
            enter(&pair.client_netns)?;
            pin(pair.cpu)?;
            client(addr)
        });
        while !client_thread.is_finished() {
            thread::sleep(DRAIN_EVERY);
            drain();
        }
        drain();
        let rate = client_thread
            .join()
            .map_err(|_| anyhow!("client thread panicked"))?;
        let served = server_thread
            .join()
            .map_err(|_| anyhow!("server thread panicked"))?;
        let rate = rate.context("client")?;
        served.context("server")?;
        Ok(rate)
    })
}

/// 1-byte request/response over one connection for `duration` (after `warmup` transactions).
pub fn request_response(
    pair: &Pair,
    port: u16,
    duration: Duration,
    drain: &mut dyn FnMut(),
) -> Result<Rate> {
    let server = |listener: TcpListener| -> Result<()> {
        let (mut stream, _) = listener.accept().context("accept")?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Ok(()),
                Ok(_) => stream.write_all(&byte).context("server write")?,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("server read"),
            }
        }
    };
    let client = move |addr: SocketAddr| -> Result<Rate> {
        let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut byte = [1u8; 1];
        let mut one = || -> Result<()> {
            stream.write_all(&byte).context("client write")?;
            stream.read_exact(&mut byte).context("client read")?;
            Ok(())
        };
        for _ in 0..2_000 {
            one()?;
        }
        let started = Instant::now();
        let mut count = 0u64;
        loop {
            for _ in 0..256 {
                one()?;
            }
            count += 256;
            if started.elapsed() >= duration {
                break;
            }
        }
        let secs = started.elapsed().as_secs_f64();
        Ok(Rate {
            per_sec: count as f64 / secs,
            count,
        })
    };
    run_pair(pair, port, drain, server, client)
}

/// New connections for `duration`: connect, 1-byte request, 1-byte response, the server closes,
/// the client reads the end and closes (so the TIME_WAIT is the server's and the client's
/// ephemeral ports never run out).
pub fn connect_rate(
    pair: &Pair,
    port: u16,
    duration: Duration,
    drain: &mut dyn FnMut(),
) -> Result<Rate> {
    let server = |listener: TcpListener| -> Result<()> {
        let mut byte = [0u8; 1];
        loop {
            let (mut stream, _) = listener.accept().context("accept")?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.read_exact(&mut byte).context("server read")?;
            if byte[0] == QUIT {
                return Ok(());
            }
            stream.write_all(&byte).context("server write")?;
        }
    };
    let client = move |addr: SocketAddr| -> Result<Rate> {
        let one = |request: u8| -> Result<()> {
            let mut stream =
                TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
            stream.set_read_timeout(Some(IO_TIMEOUT))?;
            stream.write_all(&[request]).context("client write")?;
            if request == QUIT {
                return Ok(());
            }
            let mut buf = [0u8; 8];
            let mut got = 0;
            loop {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).context("client read"),
                }
            }
            if got != 1 {
                bail!("expected a 1-byte response, got {got} bytes");
            }
            Ok(())
        };
        let run = || -> Result<Rate> {
            for _ in 0..200 {
                one(1)?;
            }
            let started = Instant::now();
            let mut count = 0u64;
            loop {
                for _ in 0..32 {
                    one(1)?;
                }
                count += 32;
                if started.elapsed() >= duration {
                    break;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            Ok(Rate {
                per_sec: count as f64 / secs,
                count,
            })
        };
        let result = run();
        // Stop the server even when the run failed (it would otherwise wait for IO_TIMEOUT).
        let quit = one(QUIT);
        let rate = result?;
        quit?;
        Ok(rate)
    };
    run_pair(pair, port, drain, server, client)
}

/// The name under /run/netns of a namespace path, for `ip netns exec`.
fn netns_name(path: &Path) -> Result<&str> {
    path.file_name()
        .and_then(|name| name.to_str())
        .ok_or_else(|| anyhow!("no namespace name in {}", path.display()))
}

/// An iperf3 server that is killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn listening(netns: &str, port: u16) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ss", "-Hltn"])
        .arg(format!("sport = :{port}"))
        .output()
        .is_ok_and(|out| !out.stdout.is_empty())
}

/// One iperf3 TCP run of `secs` seconds (after one omitted second), client -> server; returns
/// the receiver's bits per second.
pub fn iperf3(pair: &Pair, port: u16, secs: u32, drain: &mut dyn FnMut()) -> Result<f64> {
    let server_ns = netns_name(&pair.server_netns)?;
    let client_ns = netns_name(&pair.client_netns)?;
    let server = Server(
        Command::new("ip")
            .args(["netns", "exec", server_ns, "iperf3", "-s", "-1"])
            .args(["-B", &pair.server_ip.to_string(), "-p", &port.to_string()])
            .args(["-A", &pair.cpu.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the iperf3 server")?,
    );
    let deadline = Instant::now() + IO_TIMEOUT;
    while !listening(server_ns, port) {
        if Instant::now() > deadline {
            bail!("the iperf3 server did not start listening");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut client = Command::new("ip")
        .args([
            "netns",
            "exec",
            client_ns,
            "iperf3",
            "-c",
            &pair.server_ip.to_string(),
        ])
        .args(["-p", &port.to_string(), "-B", &pair.client_ip.to_string()])
        .args(["-t", &secs.to_string(), "-O", "1", "-J"])
        .args(["-A", &pair.cpu.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the iperf3 client")?;
    let mut stdout = String::new();
    let mut out = client
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no iperf3 stdout"))?;
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    loop {
        if client.try_wait().context("waiting for iperf3")?.is_some() {
            break;
        }
        thread::sleep(DRAIN_EVERY);
        drain();
    }
    drain();
    stdout.push_str(
        &reader
            .join()
            .map_err(|_| anyhow!("iperf3 reader panicked"))?,
    );
    let status = client.wait().context("waiting for iperf3")?;
    drop(server);
    let json: serde_json::Value = serde_json::from_str(&stdout)
        .with_context(|| format!("iperf3 output is not JSON (exit {status}): {stdout}"))?;
    if let Some(error) = json.get("error").and_then(|e| e.as_str()) {
        bail!("iperf3: {error}");
    }
    json.pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .ok_or_else(|| anyhow!("iperf3 output has no end.sum_received.bits_per_second"))
}
