//! Who owns which lab namespace, so none outlives its owner: lab ids (`fglab-<pid>-<seq>`), the
//! registry of this process's live labs (for `remove_all_labs` and the Ctrl-C handler that
//! `install_interrupt_cleanup` installs), and removal of stale labs whose owner process is gone.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::fd::{IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::{Pid, pipe2};

use super::error::LabError;
use super::netns::{self, NETNS_DIR};

/// Every lab namespace name starts with this; then the owner's pid and a per-process sequence.
pub(super) const NETNS_PREFIX: &str = "fglab-";

/// Identifies one lab: the owning process and a sequence number within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LabId {
    pub pid: u32,
    pub seq: u32,
}

impl LabId {
    pub(super) fn next() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        Self {
            pid: std::process::id(),
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// The prefix of this lab's interface names: `fg` + the pid and the low byte of the
    /// sequence in hex (at most 10 bytes, leaving room for `h<index>` under IFNAMSIZ).
    pub(super) fn ifname_prefix(self) -> String {
        format!("fg{:x}{:02x}", self.pid, self.seq & 0xff)
    }
}

impl fmt::Display for LabId {
    /// The prefix of all of this lab's namespace names.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{NETNS_PREFIX}{}-{}", self.pid, self.seq)
    }
}

/// The pid that owns a lab namespace name, if the name is a lab's.
pub(super) fn owner_pid(netns_name: &str) -> Option<u32> {
    let rest = netns_name.strip_prefix(NETNS_PREFIX)?;
    let (pid, rest) = rest.split_once('-')?;
    let (seq, _) = rest.split_once('-')?;
    seq.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// The namespaces of this process's labs, by lab; registered before they are created.
static LIVE: Mutex<BTreeMap<LabId, Vec<String>>> = Mutex::new(BTreeMap::new());

/// Set once a signal started tearing every lab down: builds in flight stop at their next step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn live() -> MutexGuard<'static, BTreeMap<LabId, Vec<String>>> {
    // A poisoned registry is still the truth about what exists: keep using it.
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(super) fn register(id: LabId, names: Vec<String>) -> Result<(), LabError> {
    let mut live = live();
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(LabError::Interrupted);
    }
    live.insert(id, names);
    Ok(())
}

pub(super) fn unregister(id: LabId) {
    live().remove(&id);
}

pub(super) fn check_interrupted() -> Result<(), LabError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

/// Removes every namespace of every lab this process has built and not yet dropped, and
/// returns how many it removed. Safe to call from any ordinary thread, e.g. a Ctrl-C handler
/// of `tokio::signal` or `ctrlc` (NOT from inside a raw async signal handler: it takes a lock).
/// Interfaces and routes live inside those namespaces, so they go with them. The `Lab` values
/// stay usable only for being dropped afterwards (which is then quick and harmless).
pub fn remove_all_labs() -> usize {
    let names: Vec<String> = live().values().flatten().cloned().collect();
    names
        .iter()
        .filter(|name| matches!(netns::delete_netns(name), Ok(true)))
        .count()
}

/// Removes the namespaces of labs whose owner process no longer exists (a run that crashed or
/// was killed with SIGKILL). Labs of live processes, including this one, are left alone.
/// Returns the names it removed.
pub(super) fn remove_stale() -> Result<Vec<String>, LabError> {
    let entries = match fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(LabError::io("listing", NETNS_DIR, source)),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        if netns::delete_netns(&name)? {
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

fn process_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // Signal 0 checks existence; EPERM means it exists but belongs to someone else.
    !matches!(signal::kill(Pid::from_raw(raw), None), Err(Errno::ESRCH))
}

/// Write end of the self-pipe the signal handler writes the signal number into.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);
static INSTALLED: Mutex<bool> = Mutex::new(false);
const CLEANUP_SIGNALS: [Signal; 3] = [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP];

extern "C" fn on_signal(signum: libc::c_int) {
    // Only async-signal-safe work here: one write(2) to the self-pipe, errno preserved.
    let saved = Errno::last_raw();
    let fd = SIGNAL_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        let byte = u8::try_from(signum).unwrap_or(0);
        // SAFETY: `fd` is the write end of a pipe that is never closed; the buffer is one byte
        // on this stack frame.
        let _ = unsafe { libc::write(fd, std::ptr::from_ref(&byte).cast(), 1) };
    }
    Errno::set_raw(saved);
}

/// Installs handlers for SIGINT, SIGTERM and SIGHUP that remove every live lab of this process
/// (`remove_all_labs`) and then die of the same signal with the default action (so the exit
/// status still says "killed by SIGINT"). The handler itself only writes to a pipe; the work
/// runs on a dedicated thread. Call it once, early, from a program that has no signal handling
/// of its own; a program that already handles signals (tokio) should call `remove_all_labs`
/// from its handler instead, or just let its `Lab` drop. Idempotent.
pub fn install_interrupt_cleanup() -> Result<(), LabError> {
    let mut installed = INSTALLED
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if *installed {
        return Ok(());
    }
    let (read_end, write_end) = pipe2(OFlag::O_CLOEXEC)
        .map_err(|errno| LabError::sys("creating the signal pipe", "pipe2", errno))?;
    thread::Builder::new()
        .name("lab-signals".to_owned())
        .spawn(move || watch_signals(&read_end))
        .map_err(|source| LabError::Thread {
            name: "lab-signals",
            source,
        })?;
    // The write end stays open for the life of the process: the handler may fire any time.
    SIGNAL_PIPE.store(write_end.into_raw_fd(), Ordering::SeqCst);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for sig in CLEANUP_SIGNALS {
        // SAFETY: `on_signal` only calls async-signal-safe functions (write, errno access).
        unsafe { signal::sigaction(sig, &action) }
            .map_err(|errno| LabError::sys("installing a signal handler", sig.as_str(), errno))?;
    }
    *installed = true;
    Ok(())
}

fn watch_signals(read_end: &OwnedFd) {
    loop {
        let mut byte = [0u8; 1];
        match nix::unistd::read(read_end, &mut byte) {
            Ok(1) => {}
            Err(Errno::EINTR) => continue,
            // EOF or a broken pipe: nothing will ever arrive.
            Ok(_) | Err(_) => return,
        }
        let Ok(sig) = Signal::try_from(i32::from(byte[0])) else {
            continue;
        };
        {
            let _live = live();
            INTERRUPTED.store(true, Ordering::SeqCst);
        }
        remove_all_labs();
        // Die of the same signal, with its default action, so the exit status tells the truth.
        // SAFETY: restoring the default disposition installs no handler code.
        let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        let mut unblock = SigSet::empty();
        unblock.add(sig);
        let _ = unblock.thread_unblock();
        let _ = signal::raise(sig);
        // Still alive (the signal is ignored or blocked elsewhere): keep watching.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names_carry_their_owner() {
        let id = LabId {
            pid: 4_194_304,
            seq: 3,
        };
        assert_eq!(id.to_string(), "fglab-4194304-3");
        assert_eq!(owner_pid("fglab-4194304-3-node"), Some(4_194_304));
        assert_eq!(owner_pid("fglab-12-0-e1-shop-frontend"), Some(12));
        assert_eq!(owner_pid("fglab-x-0-node"), None);
        assert_eq!(owner_pid("cni-1234"), None);
        assert!(id.ifname_prefix().len() <= 10, "{}", id.ifname_prefix());
    }
}
