//! Network namespaces for the lab: the privilege check, running iproute2 batches (in the host or
//! inside a named namespace), deleting named namespaces, entering one on a thread with `setns`,
//! and writing a namespace's sysctls. Used by `Lab::build`/`Drop` and by the probe workers.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread;

use nix::errno::Errno;
use nix::mount::{MntFlags, umount2};
use nix::sched::{CloneFlags, setns};

use super::error::LabError;

/// Where iproute2 (`ip netns add`) bind-mounts named network namespaces.
pub(super) const NETNS_DIR: &str = "/run/netns";

/// Capabilities the lab needs, with their bit in `CapEff`: namespaces and mounts need
/// CAP_SYS_ADMIN, links/routes/sysctls CAP_NET_ADMIN, the SCTP and ICMP sockets CAP_NET_RAW.
const NEEDED_CAPS: [(&str, u32); 3] = [
    ("CAP_NET_ADMIN", 12),
    ("CAP_NET_RAW", 13),
    ("CAP_SYS_ADMIN", 21),
];

/// Refuses early, with a message saying what is missing, when the process cannot build a lab.
pub(super) fn check_privileges() -> Result<(), LabError> {
    let status_path = "/proc/self/status";
    let status = fs::read_to_string(status_path)
        .map_err(|source| LabError::io("reading", status_path, source))?;
    let missing = missing_capabilities(&status);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(LabError::NotPrivileged { missing })
    }
}

/// The needed capabilities absent from the `CapEff` line of a `/proc/<pid>/status` text.
fn missing_capabilities(status: &str) -> Vec<&'static str> {
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    NEEDED_CAPS
        .iter()
        .filter(|(_, bit)| effective & (1u64 << bit) == 0)
        .map(|(name, _)| *name)
        .collect()
}

/// The path of the named namespace `name`.
pub(super) fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// iproute2's `ip`: from PATH, else from the usual sbin directories (sudo and CI may run with a
/// PATH without them).
fn ip_binary() -> Result<&'static Path, LabError> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    const FALLBACKS: [&str; 4] = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"];
    let found = FOUND.get_or_init(|| {
        let in_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("ip"))
                .find(|candidate| candidate.is_file())
        });
        in_path.or_else(|| {
            FALLBACKS
                .iter()
                .map(PathBuf::from)
                .find(|candidate| candidate.is_file())
        })
    });
    found.as_deref().ok_or_else(|| LabError::IpNotFound {
        tried: FALLBACKS.iter().map(PathBuf::from).collect(),
    })
}

/// Runs `ip [-n NETNS] -batch -` with one command per line; stops at the first failing line.
pub(super) fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), LabError> {
    if lines.is_empty() {
        return Ok(());
    }
    let program = ip_binary()?;
    let mut command = Command::new(program);
    if let Some(name) = netns {
        command.args(["-n", name]);
    }
    command
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_error = |source| LabError::Spawn {
        program: program.to_path_buf(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let mut script = lines.join("\n");
    script.push('\n');
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(spawn_error)?;
    }
    let output = child.wait_with_output().map_err(spawn_error)?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    Err(LabError::IpFailed {
        netns: netns.map(str::to_owned),
        status: output.status.to_string(),
        line: failed_line(&stderr).and_then(|n| lines.get(n.checked_sub(1)?).cloned()),
        stderr,
        script,
    })
}

/// The 1-based number of the failing line, from `ip -batch`'s "Command failed -:N".
fn failed_line(stderr: &str) -> Option<usize> {
    let (_, number) = stderr.rsplit_once("Command failed -:")?;
    number.split_whitespace().next()?.parse().ok()
}

/// Deletes the named namespace the way `ip netns delete` does (lazy unmount, then unlink).
/// Returns whether it existed. The kernel frees the namespace, and every interface in it,
/// once nothing holds it any more (no socket, no open handle, no process inside).
pub(super) fn delete_netns(name: &str) -> Result<bool, LabError> {
    let path = netns_path(name);
    match umount2(&path, MntFlags::MNT_DETACH) {
        // EINVAL: not a mount point (a half-created entry): still remove the file.
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => return Ok(false),
        Err(errno) => {
            return Err(LabError::sys(
                "unmounting",
                path.display().to_string(),
                errno,
            ));
        }
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(LabError::io("removing", path, source)),
    }
}

/// An open handle on a named namespace: what `setns` needs.
#[derive(Debug)]
pub(super) struct Netns {
    pub name: String,
    pub path: PathBuf,
    pub file: File,
}

impl Netns {
    pub(super) fn open(name: &str) -> Result<Self, LabError> {
        let path = netns_path(name);
        let file = File::open(&path).map_err(|source| LabError::io("opening", &path, source))?;
        Ok(Self {
            name: name.to_owned(),
            path,
            file,
        })
    }

    /// Moves the calling thread into this namespace. Only for threads the lab owns.
    pub(super) fn enter(&self) -> Result<(), Errno> {
        setns(&self.file, CloneFlags::CLONE_NEWNET)
    }

    /// Runs `f` on a new thread inside this namespace; the caller's thread is untouched.
    /// A panic in `f` is propagated to the caller.
    pub(super) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        thread::scope(|scope| {
            let handle = thread::Builder::new()
                .name(format!("lab-{}", short(&self.name)))
                .spawn_scoped(scope, || {
                    self.enter().map_err(|errno| {
                        LabError::sys("entering network namespace", &self.name, errno)
                    })?;
                    Ok(f())
                })
                .map_err(|source| LabError::Thread {
                    name: "lab-netns",
                    source,
                })?;
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

/// The tail of a namespace name, to name threads (the kernel keeps 15 bytes of a thread name).
fn short(name: &str) -> &str {
    let start = name.len().saturating_sub(10);
    name.get(start..).unwrap_or(name)
}

/// Writes a sysctl of the calling thread's network namespace (`/proc/sys/net` follows the
/// namespace of the thread that opens it). `key` is the path below `/proc/sys`. IPv6 keys are
/// skipped on a kernel without IPv6 (an IPv4-only lab still works there).
pub(super) fn write_sysctl(key: &str, value: &str) -> Result<(), LabError> {
    let path = Path::new("/proc/sys").join(key);
    match fs::write(&path, value) {
        Ok(()) => Ok(()),
        Err(error)
            if error.kind() == ErrorKind::NotFound
                && key.starts_with("net/ipv6/")
                && !Path::new("/proc/sys/net/ipv6").exists() =>
        {
            Ok(())
        }
        Err(source) => Err(LabError::io("writing sysctl", path, source)),
    }
}

/// Reads a sysctl of the calling thread's network namespace.
pub(super) fn read_sysctl(key: &str) -> Result<String, LabError> {
    let path = Path::new("/proc/sys").join(key);
    fs::read_to_string(&path)
        .map(|value| value.trim().to_owned())
        .map_err(|source| LabError::io("reading sysctl", path, source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_read_from_cap_eff() {
        let root = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert!(missing_capabilities(root).is_empty());
        let net_admin_only = "CapEff:\t0000000000001000\n";
        assert_eq!(
            missing_capabilities(net_admin_only),
            vec!["CAP_NET_RAW", "CAP_SYS_ADMIN"]
        );
        assert_eq!(missing_capabilities("garbage").len(), 3);
    }

    #[test]
    fn the_failing_batch_line_is_found() {
        let stderr =
            "Cannot create namespace file \"/run/netns/x\": File exists\nCommand failed -:3";
        assert_eq!(failed_line(stderr), Some(3));
        assert_eq!(failed_line("RTNETLINK answers: File exists"), None);
    }
}
