//! Configuration (f): a program that returns `TC_ACT_OK` at once, attached with TCX to the
//! same two hooks of both pods' host veths as flowgate's programs. It measures what the hooks
//! themselves cost on this kernel, whatever a program does: the floor under any TC datapath.
//!
//! Loaded with raw `bpf(2)` calls (two instructions, `BPF_PROG_LOAD` and `BPF_LINK_CREATE`), so
//! that nothing of it is in flowgate's object. The links detach when their descriptors close.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use crate::traffic;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
pub(crate) const BPF_TCX_INGRESS: u32 = 46;
pub(crate) const BPF_TCX_EGRESS: u32 = 47;

/// The attached empty program; dropping it detaches it.
pub struct EmptyPrograms {
    _links: Vec<OwnedFd>,
    _program: OwnedFd,
}

/// `bpf(2)` with a zero-padded attribute block: its return value and the block as the kernel
/// left it (some commands write their answer into it).
pub(crate) fn bpf_block(
    cmd: libc::c_long,
    attr: &[u8],
) -> std::io::Result<(libc::c_long, [u8; 128])> {
    const SIZE: libc::c_uint = 128;
    let mut block = [0u8; SIZE as usize];
    block[..attr.len()].copy_from_slice(attr);
    // SAFETY: `block` is a valid, writable bpf_attr of the size passed.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, block.as_mut_ptr(), SIZE) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((ret, block))
}

/// `bpf(2)` for a command that returns nothing but success.
pub(crate) fn bpf_call(cmd: libc::c_long, attr: &[u8]) -> std::io::Result<()> {
    bpf_block(cmd, attr).map(|_| ())
}

/// `bpf(2)` for a command that returns a new descriptor.
pub(crate) fn bpf(cmd: libc::c_long, attr: &[u8]) -> std::io::Result<OwnedFd> {
    let (fd, _) = bpf_block(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn load() -> Result<OwnedFd> {
    // struct bpf_insn {code, regs, off, imm}: r0 = 0 (TC_ACT_OK), then exit.
    let insns: [[u8; 8]; 2] = [[0xb7, 0, 0, 0, 0, 0, 0, 0], [0x95, 0, 0, 0, 0, 0, 0, 0]];
    let license = b"GPL\0";
    let mut attr = Vec::with_capacity(48);
    attr.extend_from_slice(&BPF_PROG_TYPE_SCHED_CLS.to_ne_bytes());
    attr.extend_from_slice(&2u32.to_ne_bytes());
    attr.extend_from_slice(&(insns.as_ptr() as u64).to_ne_bytes());
    attr.extend_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    bpf(BPF_PROG_LOAD, &attr).context("BPF_PROG_LOAD of the empty program")
}

/// A TCX link of `program` on `ifindex` (in the calling thread's network namespace).
pub(crate) fn link(program: &OwnedFd, ifindex: u32, attach_type: u32) -> Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let prog_fd = u32::try_from(program.as_raw_fd()).map_err(|_| anyhow!("negative fd"))?;
    let mut attr = Vec::with_capacity(16);
    attr.extend_from_slice(&prog_fd.to_ne_bytes());
    attr.extend_from_slice(&ifindex.to_ne_bytes());
    attr.extend_from_slice(&attach_type.to_ne_bytes());
    attr.extend_from_slice(&0u32.to_ne_bytes());
    bpf(BPF_LINK_CREATE, &attr)
        .with_context(|| format!("BPF_LINK_CREATE (TCX {attach_type}) on ifindex {ifindex}"))
}

/// Attaches the empty program to TC ingress and egress (TCX) of each interface (ifindexes in
/// the network namespace at `netns`).
pub fn attach(netns: &Path, ifindexes: &[u32]) -> Result<EmptyPrograms> {
    traffic::in_netns(netns, || {
        let program = load()?;
        let mut links = Vec::new();
        for &ifindex in ifindexes {
            links.push(link(&program, ifindex, BPF_TCX_INGRESS)?);
            links.push(link(&program, ifindex, BPF_TCX_EGRESS)?);
        }
        Ok(EmptyPrograms {
            _links: links,
            _program: program,
        })
    })
}
