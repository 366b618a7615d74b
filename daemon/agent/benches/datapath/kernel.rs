//! What the kernel says about this process: resident memory (`/proc/self/status`), the eBPF maps
//! and programs it holds (`/proc/self/fdinfo`: ids, sizes, memory, and with `bpf_stats_enabled`
//! the programs' run counts and times), and the entry count of each map (walked with
//! `BPF_MAP_GET_NEXT_KEY`).

use std::collections::BTreeMap;
use std::fs;
use std::os::fd::RawFd;

use anyhow::{Context, Result};

/// `VmRSS` and `VmHWM` of this process, in KiB.
pub fn rss_kib() -> Result<(u64, u64)> {
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// One eBPF object this process holds a descriptor for.
#[derive(Debug, Clone)]
struct Object {
    fd: RawFd,
    fields: BTreeMap<String, String>,
}

impl Object {
    fn number(&self, key: &str) -> u64 {
        self.fields
            .get(key)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The eBPF objects (`anon_inode:bpf-map` or `anon_inode:bpf-prog`) behind this process's
/// descriptors, one per object id.
fn objects(kind: &str) -> Result<Vec<Object>> {
    let link = format!("anon_inode:{kind}");
    let mut found: BTreeMap<u64, Object> = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let Ok(entry) = entry else { continue };
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<RawFd>().ok())
        else {
            continue;
        };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_str() != Some(link.as_str()) {
            continue;
        }
        let Ok(info) = fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
            continue;
        };
        let fields: BTreeMap<String, String> = info
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let object = Object { fd, fields };
        let id = object.number(if kind == "bpf-map" {
            "map_id"
        } else {
            "prog_id"
        });
        found.entry(id).or_insert(object);
    }
    Ok(found.into_values().collect())
}

/// One map of the loaded datapath.
#[derive(Debug, Clone)]
pub struct MapStat {
    pub name: String,
    pub map_type: u64,
    pub max_entries: u64,
    /// Keys present (for arrays: every slot; for the ring buffer: 0).
    pub entries: u64,
    /// The kernel's `memlock` figure for the map, in bytes.
    pub memlock: u64,
}

const BPF_MAP_TYPE_ARRAY: u64 = 2;
const BPF_MAP_TYPE_PERCPU_ARRAY: u64 = 6;
const BPF_MAP_TYPE_RINGBUF: u64 = 27;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// `union bpf_attr` as `BPF_MAP_GET_NEXT_KEY` reads it.
#[repr(C)]
struct NextKeyAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

/// Counts the keys of a map by walking it with `BPF_MAP_GET_NEXT_KEY`.
fn count_keys(fd: RawFd, key_size: usize) -> u64 {
    let Ok(map_fd) = u32::try_from(fd) else {
        return 0;
    };
    let mut key = vec![0u8; key_size.max(1)];
    let mut next = vec![0u8; key_size.max(1)];
    let mut count = 0u64;
    let mut first = true;
    loop {
        let attr = NextKeyAttr {
            map_fd,
            _pad: 0,
            // A null key asks for the first key.
            key: if first { 0 } else { key.as_ptr() as u64 },
            next_key: next.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for this command; `key` and `next` are
        // live buffers of the map's key size; the kernel writes at most `key_size` bytes.
        let result = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_GET_NEXT_KEY,
                std::ptr::from_ref(&attr),
                std::mem::size_of::<NextKeyAttr>(),
            )
        };
        if result != 0 {
            return count;
        }
        count += 1;
        first = false;
        std::mem::swap(&mut key, &mut next);
    }
}

/// Every map of this process whose name starts with `prefix`, with its entry count.
pub fn maps(prefix: &str) -> Result<Vec<MapStat>> {
    let mut out = Vec::new();
    for object in objects("bpf-map")? {
        let id = u32::try_from(object.number("map_id")).unwrap_or(0);
        let name = aya::maps::MapInfo::from_id(id)
            .ok()
            .and_then(|info| info.name_as_str().map(str::to_owned))
            .unwrap_or_default();
        if !name.starts_with(prefix) {
            continue;
        }
        let map_type = object.number("map_type");
        let max_entries = object.number("max_entries");
        let entries = match map_type {
            BPF_MAP_TYPE_ARRAY | BPF_MAP_TYPE_PERCPU_ARRAY => max_entries,
            BPF_MAP_TYPE_RINGBUF => 0,
            _ => count_keys(
                object.fd,
                usize::try_from(object.number("key_size")).unwrap_or(0),
            ),
        };
        out.push(MapStat {
            name,
            map_type,
            max_entries,
            entries,
            memlock: object.number("memlock"),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Run statistics of one program (counted only while `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgStat {
    pub name: String,
    pub runs: u64,
    pub run_time_ns: u64,
}

/// Run counts and times of this process's programs whose name starts with `prefix`.
pub fn programs(prefix: &str) -> Result<Vec<ProgStat>> {
    let names: BTreeMap<u32, String> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter_map(|info| Some((info.id(), info.name_as_str()?.to_owned())))
        .collect();
    let mut out = Vec::new();
    for object in objects("bpf-prog")? {
        let id = u32::try_from(object.number("prog_id")).unwrap_or(0);
        let Some(name) = names.get(&id) else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        out.push(ProgStat {
            name: name.clone(),
            runs: object.number("run_cnt"),
            run_time_ns: object.number("run_time_ns"),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is restored on drop. Counting
/// costs a little per program run, so it is on only for the diagnostic runs.
#[derive(Debug)]
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous =
            fs::read_to_string(BPF_STATS).with_context(|| format!("reading {BPF_STATS}"))?;
        fs::write(BPF_STATS, "1").with_context(|| format!("writing {BPF_STATS}"))?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        // Nothing to report to from a destructor; the value is shown in the output anyway.
        let _ = fs::write(BPF_STATS, &self.previous);
    }
}
