//! Is the datapath still there? The generation in `FG_ACTIVE` must be the one the agent
//! applied last (the maps are alive and nobody reset them), and both programs must still be
//! attached (TCX) on every interface the agent enforces on: a `bpftool link detach` or a
//! CNI that replaces the hooks would otherwise leave a pod silently open. Called by the
//! Kubernetes control loop for `/healthz`.

use aya::programs::{SchedClassifier, TcAttachType};
use flowgate_abi::programs;

use super::{Datapath, DatapathError, map_err};

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// `FG_ACTIVE` holds another generation than the one applied last.
    Generation { found: u32, applied: u32 },
    /// A program is not attached on an enforced interface (it was detached from outside).
    Detached {
        ifindex: u32,
        ifname: String,
        program: &'static str,
    },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Generation { found, applied } => write!(
                f,
                "FG_ACTIVE holds generation {found}, the agent applied {applied}: the maps were changed from outside"
            ),
            Self::Detached {
                ifname, program, ..
            } => write!(f, "{program} is no longer attached on {ifname}"),
        }
    }
}

fn ifname_of(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if name.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

impl Datapath {
    /// Checks the active generation and the TCX attachments on `ifindexes` (in the calling
    /// thread's network namespace). An interface that no longer exists is not a problem here:
    /// the pod went, and interface discovery sees to it.
    pub fn health(
        &mut self,
        applied: u32,
        ifindexes: &[u32],
    ) -> Result<Vec<Problem>, DatapathError> {
        let mut problems = Vec::new();
        let active = self
            .active
            .get(&0, 0)
            .map_err(map_err(flowgate_abi::maps::ACTIVE))?;
        if active.generation != applied {
            problems.push(Problem::Generation {
                found: active.generation,
                applied,
            });
        }
        let ids = [
            (programs::FROM_POD, TcAttachType::Ingress),
            (programs::TO_POD, TcAttachType::Egress),
        ]
        .map(|(name, hook)| {
            let id = self
                .program(name)
                .ok()
                .and_then(|p| p.info().ok())
                .map(|i| i.id());
            (name, hook, id)
        });
        for ifindex in ifindexes {
            let Some(ifname) = ifname_of(*ifindex) else {
                continue;
            };
            for (program, hook, id) in &ids {
                // Without TCX (legacy tc filters) there is nothing to query this way.
                let Ok((_, attached)) = SchedClassifier::query_tcx(&ifname, *hook) else {
                    continue;
                };
                if !attached.iter().any(|p| Some(p.id()) == *id) {
                    problems.push(Problem::Detached {
                        ifindex: *ifindex,
                        ifname: ifname.clone(),
                        program,
                    });
                }
            }
        }
        Ok(problems)
    }
}
