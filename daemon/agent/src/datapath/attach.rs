//! Attaching a TC program to an interface: TCX links on kernels that have them
//! (>= 6.6), the legacy clsact qdisc + netlink filter otherwise.
//!
//! aya 0.14's own `SchedClassifier::attach` chooses by kernel version alone
//! (`KernelVersion::at_least(6, 6, 0)` -> TCX, else netlink) and never falls back, and
//! its netlink path needs the clsact qdisc to exist already. `attach` here tries TCX
//! and falls back to netlink only when the kernel rejects the TCX attach type.
use aya::{
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions, TcError},
    },
    sys::SyscallError,
};

/// Which attach mechanism to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcMode {
    /// TCX; netlink/clsact if the kernel does not support TCX.
    Auto,
    /// TCX only (kernel >= 6.6). Detaches cleanly, leaves nothing behind.
    Tcx,
    /// Legacy: add the clsact qdisc (if missing) and a direct-action filter.
    /// Detaching removes the filter but leaves the qdisc.
    Netlink,
}

/// The mechanism that was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    Tcx,
    Netlink,
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("attaching to {iface} ({attach_type:?}) with {mode:?}")]
    Attach {
        iface: String,
        attach_type: TcAttachType,
        mode: Attached,
        #[source]
        source: ProgramError,
    },
    #[error("adding the clsact qdisc to {iface}")]
    Clsact {
        iface: String,
        #[source]
        source: TcError,
    },
}

pub fn attach(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    mode: TcMode,
) -> Result<(SchedClassifierLinkId, Attached), AttachError> {
    attach_with(prog, iface, attach_type, mode, NlOptions::default())
}

/// `attach`, with the priority and handle a legacy filter gets (the kernel picks them when they
/// are 0; a pinned datapath fixes them so the next agent can replace its filters in place).
pub fn attach_with(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    mode: TcMode,
    filter: NlOptions,
) -> Result<(SchedClassifierLinkId, Attached), AttachError> {
    match mode {
        TcMode::Tcx => attach_tcx(prog, iface, attach_type).map(|id| (id, Attached::Tcx)),
        TcMode::Netlink => {
            attach_netlink(prog, iface, attach_type, filter).map(|id| (id, Attached::Netlink))
        }
        TcMode::Auto => match attach_tcx(prog, iface, attach_type) {
            Ok(id) => Ok((id, Attached::Tcx)),
            Err(AttachError::Attach { source, .. }) if tcx_unsupported(&source) => {
                attach_netlink(prog, iface, attach_type, filter).map(|id| (id, Attached::Netlink))
            }
            Err(e) => Err(e),
        },
    }
}

fn attach_tcx(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
) -> Result<SchedClassifierLinkId, AttachError> {
    // LinkOrder::default() == last(): run after programs already attached (e.g. a CNI's).
    prog.attach_with_options(
        iface,
        attach_type,
        TcAttachOptions::TcxOrder(LinkOrder::default()),
    )
    .map_err(|source| AttachError::Attach {
        iface: iface.to_owned(),
        attach_type,
        mode: Attached::Tcx,
        source,
    })
}

fn attach_netlink(
    prog: &mut SchedClassifier,
    iface: &str,
    attach_type: TcAttachType,
    filter: NlOptions,
) -> Result<SchedClassifierLinkId, AttachError> {
    // NLM_F_EXCL: EEXIST when the qdisc is already there, which is fine.
    if let Err(source) = tc::qdisc_add_clsact(iface) {
        let exists =
            matches!(&source, TcError::NetlinkError(e) if e.raw_os_error() == Some(libc::EEXIST));
        if !exists {
            return Err(AttachError::Clsact {
                iface: iface.to_owned(),
                source,
            });
        }
    }
    prog.attach_with_options(iface, attach_type, TcAttachOptions::Netlink(filter))
        .map_err(|source| AttachError::Attach {
            iface: iface.to_owned(),
            attach_type,
            mode: Attached::Netlink,
            source,
        })
}

/// What a kernel without TCX answers to `BPF_LINK_CREATE` with `BPF_TCX_*`.
fn tcx_unsupported(e: &ProgramError) -> bool {
    const ENOTSUPP: i32 = 524; // kernel-internal, can leak to userspace
    matches!(
        e,
        ProgramError::SyscallError(SyscallError { io_error, .. })
            if matches!(io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP))
    )
}
