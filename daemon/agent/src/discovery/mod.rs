//! Finding each local pod's host-side interface (the veth the datapath attaches to) from the
//! pod's IPs, the way the common CNIs wire pods, in the calling thread's network namespace.
//! Used by the agent in Kubernetes mode (through `InterfaceTracker`) and by the lab tests.
//!
//! - Routed CNIs (Calico, kindnet, ptp): the route to the pod IP points at the veth itself.
//! - Bridged CNIs (Flannel's `cni0`, the CNI bridge plugin): the route points at a bridge; the
//!   pod's MAC comes from the neighbour table (IP -> lladdr on the bridge), then the bridge's FDB
//!   gives the port (the veth) that MAC was learned on. A missing neighbour or FDB entry is
//!   `Pending`: resolution is triggered (an ARP/NDP solicitation sent by the kernel, never an IP
//!   packet to the pod) and the caller retries.
//! - Anything else (no route, a route via a gateway, a route to a vxlan/physical/dummy device)
//!   is an error naming the IP, the route found and why: the pod is then reported as NOT
//!   enforced, never left silently unenforced.
//!
//! Every lookup is a kernel lookup: the route is a route GET for the address (longest prefix
//! match and policy routing are the kernel's), then link, neighbour and FDB queries. Nothing is
//! guessed (no "the only veth on the bridge").
//!
//! ```no_run
//! # fn main() -> Result<(), flowgate::discovery::DiscoveryError> {
//! let found = flowgate::discovery::find_host_interface("10.244.5.2".parse().unwrap())?;
//! println!("attach to {} (ifindex {}), {:?}", found.ifname, found.ifindex, found.wiring);
//! # Ok(()) }
//! ```

mod netlink;
mod resolver;
mod tracker;

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

pub use resolver::Resolver;
pub use tracker::{InterfaceTracker, TrackerChanges};

/// A pod's host-side interface in the node's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostInterface {
    pub ifindex: u32,
    pub ifname: String,
    pub wiring: Wiring,
}

/// How the CNI wires the pod to the node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wiring {
    /// The route to the pod IP points at the veth (Calico, kindnet, ptp).
    Routed,
    /// The veth is a port of `bridge`, and the route to the pod IP points at the bridge
    /// (Flannel's `cni0`, the CNI bridge plugin).
    Bridged { bridge: String },
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// What a bridged pod's resolution is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PendingOn {
    /// The node has no usable neighbour entry for the pod IP on the bridge yet (`state` is the
    /// kernel's: none, incomplete, failed, ...). A solicitation was triggered unless one is
    /// already in progress.
    Neighbour { state: String },
    /// The pod's MAC is known but the bridge has not learned it on any port (yet, or any more:
    /// FDB entries age out). The kernel was asked to re-confirm the neighbour, which makes the
    /// pod answer, and the bridge learn its port — when the neighbour entry is a dynamic one.
    BridgePort { mac: MacAddr, triggered: bool },
}

impl fmt::Display for PendingOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Neighbour { state } => write!(
                f,
                "the node has no neighbour entry with a MAC for it yet (state {state}); an \
                 ARP/NDP solicitation was triggered"
            ),
            Self::BridgePort {
                mac,
                triggered: true,
            } => write!(
                f,
                "its MAC {mac} is not in the bridge's FDB yet; the neighbour is being re-confirmed"
            ),
            Self::BridgePort {
                mac,
                triggered: false,
            } => write!(
                f,
                "its MAC {mac} is not in the bridge's FDB, and its neighbour entry is static \
                 (nothing to trigger: the bridge learns the port when the pod sends)"
            ),
        }
    }
}

/// Why a pod IP has no host interface (yet). Every variant names the IP and what was found.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "no route to pod IP {ip} in the node's network namespace ({kernel}): the pod is not on \
         this node, or its CNI has not wired it yet"
    )]
    NoRoute { ip: IpAddr, kernel: String },

    #[error(
        "pod IP {ip} is routed via gateway {gateway} on {dev}: a pod behind a gateway is not on \
         this node (or its CNI wires it in a way flowgate does not know)"
    )]
    ViaGateway {
        ip: IpAddr,
        gateway: IpAddr,
        dev: String,
    },

    #[error(
        "pod IP {ip} has a {route_type} route in the node's network namespace, not a unicast \
         route to a pod's interface (a local route means it is an address of the node itself)"
    )]
    NotUnicast { ip: IpAddr, route_type: String },

    #[error(
        "pod IP {ip} is routed to {dev} (ifindex {ifindex}), a {kind} device, neither a veth \
         (routed CNIs) nor a bridge (bridged CNIs): the pod is not local (e.g. behind an overlay \
         or the uplink) or its wiring is unknown"
    )]
    UnsupportedDevice {
        ip: IpAddr,
        dev: String,
        ifindex: u32,
        kind: String,
    },

    #[error("pod IP {ip} is on bridge {bridge}, but {what}; retry shortly")]
    Pending {
        ip: IpAddr,
        bridge: String,
        what: PendingOn,
    },

    #[error(
        "pod IP {ip} (MAC {mac}) was learned on port {port} of bridge {bridge}, a {kind} device, \
         not a veth: the pod is not local (e.g. behind an overlay port of the bridge)"
    )]
    BridgePortNotVeth {
        ip: IpAddr,
        bridge: String,
        mac: MacAddr,
        port: String,
        kind: String,
    },

    #[error(
        "pod IP {ip} (MAC {mac}) was learned on several ports of bridge {bridge} ({}): refusing \
         to guess",
        ports.join(", ")
    )]
    AmbiguousBridgePort {
        ip: IpAddr,
        bridge: String,
        mac: MacAddr,
        ports: Vec<String>,
    },

    #[error(
        "the pod's IPs lead to different interfaces: {ip} to {ifname}, {other_ip} to \
         {other_ifname}; one pod has one interface"
    )]
    IpsDisagree {
        ip: IpAddr,
        ifname: String,
        other_ip: IpAddr,
        other_ifname: String,
    },

    #[error("the pod has no IP yet")]
    NoIp,

    #[error("netlink {operation}{}: {source}", ip.map(|ip| format!(" for pod IP {ip}")).unwrap_or_default())]
    Netlink {
        ip: Option<IpAddr>,
        operation: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
}

impl DiscoveryError {
    /// Whether the caller should simply retry later (a bridged pod whose neighbour or FDB entry
    /// is being resolved).
    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Pending { .. })
    }

    /// A short stable name for the kind of error, for metric labels and API fields.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoRoute { .. } => "no_route",
            Self::ViaGateway { .. } => "via_gateway",
            Self::NotUnicast { .. } => "not_unicast",
            Self::UnsupportedDevice { .. } => "unsupported_device",
            Self::Pending { .. } => "pending",
            Self::BridgePortNotVeth { .. } => "bridge_port_not_veth",
            Self::AmbiguousBridgePort { .. } => "ambiguous_bridge_port",
            Self::IpsDisagree { .. } => "ips_disagree",
            Self::NoIp => "no_ip",
            Self::Netlink { .. } => "netlink",
        }
    }
}

/// Finds the host-side interface of the pod with IP `ip`, in the calling thread's network
/// namespace. Opens a netlink socket per call; to resolve many pods, use one `Resolver`.
pub fn find_host_interface(ip: IpAddr) -> Result<HostInterface, DiscoveryError> {
    Resolver::open()?.resolve(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_ip_and_what_was_found() {
        let ip: IpAddr = "10.244.5.2".parse().unwrap();
        let text = DiscoveryError::ViaGateway {
            ip,
            gateway: "192.168.1.1".parse().unwrap(),
            dev: "eth0".into(),
        }
        .to_string();
        assert!(
            text.contains("10.244.5.2") && text.contains("192.168.1.1") && text.contains("eth0"),
            "{text}"
        );
        let pending = DiscoveryError::Pending {
            ip,
            bridge: "cni0".into(),
            what: PendingOn::BridgePort {
                mac: MacAddr([0x0a, 0, 0, 0, 0xbc, 1]),
                triggered: true,
            },
        };
        assert!(pending.is_pending());
        assert!(
            pending.to_string().contains("0a:00:00:00:bc:01"),
            "{pending}"
        );
        let netlink = DiscoveryError::Netlink {
            ip: Some(ip),
            operation: "route get",
            source: Arc::new(io::Error::from_raw_os_error(libc::EPERM)),
        };
        assert!(
            netlink
                .to_string()
                .starts_with("netlink route get for pod IP 10.244.5.2: "),
            "{netlink}"
        );
        assert_eq!(netlink.reason(), "netlink");
    }
}
