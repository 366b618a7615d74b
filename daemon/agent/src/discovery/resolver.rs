//! `Resolver`: one pod IP -> its host interface, by kernel lookups over one rtnetlink socket
//! (route GET, link GET, neighbour GET, the bridge FDB), and the two kernel-side triggers for a
//! bridged pod that is not resolved yet (a neighbour solicitation, a neighbour re-probe).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteType, RouteVia,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::netlink::{NetlinkError, Rtnl};
use super::{DiscoveryError, HostInterface, MacAddr, PendingOn, Wiring};

/// Resolves pod IPs in the network namespace of the thread that opened it. Each resolver reads
/// a bridge's FDB at most once (it stands for one pass over the pods); open a new one for the
/// next pass.
#[derive(Debug)]
pub struct Resolver {
    rtnl: Rtnl,
    /// Bridge ifindex -> its FDB entries (port ifindex, MAC), read once per resolver.
    fdb: HashMap<u32, Vec<(u32, MacAddr)>>,
}

/// A link as discovery needs it.
#[derive(Debug, Clone)]
struct Link {
    ifindex: u32,
    name: String,
    kind: Option<InfoKind>,
}

impl Link {
    fn kind_name(&self) -> String {
        match &self.kind {
            Some(kind) => kind.to_string(),
            None => "kindless (physical or loopback)".to_owned(),
        }
    }
}

/// What the route GET answered.
#[derive(Debug)]
struct Route {
    kind: RouteType,
    oif: Option<u32>,
    gateway: Option<IpAddr>,
}

/// The node's neighbour entry for a pod IP.
#[derive(Debug)]
struct Neighbour {
    state: NeighbourState,
    mac: Option<MacAddr>,
}

fn netlink_error(
    ip: Option<IpAddr>,
    operation: &'static str,
    error: NetlinkError,
) -> DiscoveryError {
    DiscoveryError::Netlink {
        ip,
        operation,
        source: Arc::new(error.into_io()),
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// The kernel's refusal of a route GET, with the kind of route that gives it.
fn no_route_text(error: &NetlinkError) -> String {
    let hint = match error.errno() {
        Some(libc::EINVAL) => ", as for a blackhole route",
        Some(libc::EACCES) => ", as for a prohibit route",
        Some(libc::EHOSTUNREACH) => ", as for an unreachable route",
        _ => "",
    };
    format!("{error}{hint}")
}

fn state_name(state: NeighbourState) -> String {
    format!("{state:?}").to_lowercase()
}

impl Resolver {
    /// Opens an rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, DiscoveryError> {
        let rtnl = Rtnl::open().map_err(|source| DiscoveryError::Netlink {
            ip: None,
            operation: "socket",
            source: Arc::new(source),
        })?;
        Ok(Self {
            rtnl,
            fdb: HashMap::new(),
        })
    }

    /// The host interface of the pod with IP `ip`.
    pub fn resolve(&mut self, ip: IpAddr) -> Result<HostInterface, DiscoveryError> {
        let route = self.route_get(ip)?;
        if route.kind != RouteType::Unicast {
            let route_type = format!("{:?}", route.kind).to_lowercase();
            return Err(match route.kind {
                RouteType::BlackHole | RouteType::Unreachable | RouteType::Prohibit => {
                    DiscoveryError::NoRoute {
                        ip,
                        kernel: format!("the route found is a {route_type} route"),
                    }
                }
                _ => DiscoveryError::NotUnicast { ip, route_type },
            });
        }
        let oif = route.oif.ok_or_else(|| DiscoveryError::NoRoute {
            ip,
            kernel: "the route found names no output interface".to_owned(),
        })?;
        let link = self
            .link(oif)
            .map_err(|error| netlink_error(Some(ip), "link get", error))?
            .ok_or_else(|| DiscoveryError::NoRoute {
                ip,
                kernel: format!("the route's interface (ifindex {oif}) is gone"),
            })?;
        if let Some(gateway) = route.gateway {
            return Err(DiscoveryError::ViaGateway {
                ip,
                gateway,
                dev: link.name,
            });
        }
        match link.kind {
            Some(InfoKind::Veth) => Ok(HostInterface {
                ifindex: link.ifindex,
                ifname: link.name,
                wiring: Wiring::Routed,
            }),
            Some(InfoKind::Bridge) => self.bridge_port(ip, &link),
            _ => Err(DiscoveryError::UnsupportedDevice {
                ip,
                kind: link.kind_name(),
                ifindex: link.ifindex,
                dev: link.name,
            }),
        }
    }

    /// The host interface of a pod with several IPs (dual stack): every IP must lead to the
    /// same interface. A hard error of any IP wins over a pending one.
    pub fn resolve_pod(&mut self, ips: &[IpAddr]) -> Result<HostInterface, DiscoveryError> {
        let results: Vec<_> = ips.iter().map(|&ip| (ip, self.resolve(ip))).collect();
        combine(results)
    }

    /// Whether `interface` still exists with the same ifindex and name (a recreated veth gets a
    /// new ifindex; a reused ifindex would have another name).
    pub fn interface_exists(&mut self, interface: &HostInterface) -> Result<bool, DiscoveryError> {
        let link = self
            .link(interface.ifindex)
            .map_err(|error| netlink_error(None, "link get", error))?;
        Ok(link.is_some_and(|link| link.name == interface.ifname))
    }

    /// `ip route get <ip>`: the kernel's own lookup (policy rules, longest prefix match).
    fn route_get(&mut self, ip: IpAddr) -> Result<Route, DiscoveryError> {
        let mut request = RouteMessage::default();
        request.header.address_family = family(ip);
        request.header.destination_prefix_length = if ip.is_ipv4() { 32 } else { 128 };
        request
            .attributes
            .push(RouteAttribute::Destination(RouteAddress::from(ip)));
        let answers = match self.rtnl.request(RouteNetlinkMessage::GetRoute(request), 0) {
            Ok(answers) => answers,
            Err(error) => {
                return Err(match error.errno() {
                    Some(
                        libc::ENETUNREACH
                        | libc::EHOSTUNREACH
                        | libc::EACCES
                        | libc::EINVAL
                        | libc::ESRCH,
                    ) => DiscoveryError::NoRoute {
                        ip,
                        kernel: no_route_text(&error),
                    },
                    _ => netlink_error(Some(ip), "route get", error),
                });
            }
        };
        let Some(route) = answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewRoute(route) => Some(route),
            _ => None,
        }) else {
            return Err(DiscoveryError::NoRoute {
                ip,
                kernel: "the kernel answered the route GET without a route".to_owned(),
            });
        };
        let mut found = Route {
            kind: route.header.kind,
            oif: None,
            gateway: None,
        };
        for attribute in route.attributes {
            match attribute {
                RouteAttribute::Oif(oif) => found.oif = Some(oif),
                RouteAttribute::Gateway(RouteAddress::Inet(v4)) => {
                    found.gateway = Some(IpAddr::V4(v4));
                }
                RouteAttribute::Gateway(RouteAddress::Inet6(v6)) => {
                    found.gateway = Some(IpAddr::V6(v6));
                }
                RouteAttribute::Via(RouteVia::Inet(v4)) => found.gateway = Some(IpAddr::V4(v4)),
                RouteAttribute::Via(RouteVia::Inet6(v6)) => found.gateway = Some(IpAddr::V6(v6)),
                _ => {}
            }
        }
        Ok(found)
    }

    /// The link with index `ifindex`, or `None` if there is none.
    fn link(&mut self, ifindex: u32) -> Result<Option<Link>, NetlinkError> {
        let mut request = LinkMessage::default();
        request.header.index = ifindex;
        let answers = match self.rtnl.request(RouteNetlinkMessage::GetLink(request), 0) {
            Ok(answers) => answers,
            Err(error) if error.errno() == Some(libc::ENODEV) => return Ok(None),
            Err(error) => return Err(error),
        };
        let Some(link) = answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewLink(link) if link.header.index == ifindex => Some(link),
            _ => None,
        }) else {
            return Ok(None);
        };
        let mut found = Link {
            ifindex,
            name: String::new(),
            kind: None,
        };
        for attribute in link.attributes {
            match attribute {
                LinkAttribute::IfName(name) => found.name = name,
                LinkAttribute::LinkInfo(infos) => {
                    found.kind = infos.into_iter().find_map(|info| match info {
                        LinkInfo::Kind(kind) => Some(kind),
                        _ => None,
                    });
                }
                _ => {}
            }
        }
        Ok(Some(found))
    }

    /// A bridged pod: its MAC from the neighbour table, then the port from the bridge's FDB.
    fn bridge_port(&mut self, ip: IpAddr, bridge: &Link) -> Result<HostInterface, DiscoveryError> {
        let pending = |what| DiscoveryError::Pending {
            ip,
            bridge: bridge.name.clone(),
            what,
        };
        let neighbour = self.neighbour(ip, bridge.ifindex)?;
        let state = neighbour.as_ref().map_or(NeighbourState::None, |n| n.state);
        let mac = match neighbour {
            Some(Neighbour {
                mac: Some(mac),
                state:
                    NeighbourState::Reachable
                    | NeighbourState::Stale
                    | NeighbourState::Delay
                    | NeighbourState::Probe
                    | NeighbourState::Permanent
                    | NeighbourState::Noarp,
            }) => mac,
            // A solicitation is under way: nothing to add.
            Some(Neighbour {
                state: NeighbourState::Incomplete,
                ..
            }) => {
                return Err(pending(PendingOn::Neighbour {
                    state: state_name(state),
                }));
            }
            _ => {
                self.solicit(ip, bridge.ifindex)?;
                return Err(pending(PendingOn::Neighbour {
                    state: state_name(state),
                }));
            }
        };

        let ports = self.fdb_ports(ip, bridge.ifindex, mac)?;
        let port = match ports.as_slice() {
            [] => {
                // A dynamic entry can be re-confirmed now (a unicast ARP/NDP probe the pod
                // answers, so the bridge learns its port); a static one cannot.
                let dynamic = matches!(
                    state,
                    NeighbourState::Reachable | NeighbourState::Stale | NeighbourState::Delay
                );
                if dynamic {
                    self.reprobe(ip, bridge.ifindex)?;
                }
                return Err(pending(PendingOn::BridgePort {
                    mac,
                    triggered: dynamic || state == NeighbourState::Probe,
                }));
            }
            [port] => *port,
            several => {
                let mut names = Vec::new();
                for &port in several {
                    let name = self
                        .link(port)
                        .map_err(|error| netlink_error(Some(ip), "link get", error))?
                        .map_or_else(|| format!("ifindex {port}"), |link| link.name);
                    names.push(name);
                }
                return Err(DiscoveryError::AmbiguousBridgePort {
                    ip,
                    bridge: bridge.name.clone(),
                    mac,
                    ports: names,
                });
            }
        };
        let Some(link) = self
            .link(port)
            .map_err(|error| netlink_error(Some(ip), "link get", error))?
        else {
            // The port went away between the FDB read and now: the next pass sees the truth.
            return Err(pending(PendingOn::BridgePort {
                mac,
                triggered: false,
            }));
        };
        if link.kind != Some(InfoKind::Veth) {
            return Err(DiscoveryError::BridgePortNotVeth {
                ip,
                bridge: bridge.name.clone(),
                mac,
                kind: link.kind_name(),
                port: link.name,
            });
        }
        Ok(HostInterface {
            ifindex: link.ifindex,
            ifname: link.name,
            wiring: Wiring::Bridged {
                bridge: bridge.name.clone(),
            },
        })
    }

    /// `ip neigh get <ip> dev <bridge>`; `None` if the node has no entry.
    fn neighbour(&mut self, ip: IpAddr, bridge: u32) -> Result<Option<Neighbour>, DiscoveryError> {
        let mut request = NeighbourMessage::default();
        request.header.family = family(ip);
        request.header.ifindex = bridge;
        request
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        let answers = match self
            .rtnl
            .request(RouteNetlinkMessage::GetNeighbour(request), 0)
        {
            Ok(answers) => answers,
            Err(error) if error.errno() == Some(libc::ENOENT) => return Ok(None),
            Err(error) => return Err(netlink_error(Some(ip), "neighbour get", error)),
        };
        Ok(answers.into_iter().find_map(|answer| match answer {
            RouteNetlinkMessage::NewNeighbour(entry) => Some(Neighbour {
                state: entry.header.state,
                mac: lladdr(&entry),
            }),
            _ => None,
        }))
    }

    /// Asks the kernel to resolve `ip` on the bridge as if a packet were waiting for it
    /// (RTM_NEWNEIGH with NTF_USE, creating a NUD_NONE entry if none exists): the kernel sends
    /// an ARP request or an NDP neighbour solicitation, and no IP packet goes to the pod. The
    /// entry is an ordinary one, garbage-collected like any other.
    fn solicit(&mut self, ip: IpAddr, bridge: u32) -> Result<(), DiscoveryError> {
        let mut request = NeighbourMessage::default();
        request.header.family = family(ip);
        request.header.ifindex = bridge;
        request.header.state = NeighbourState::None;
        request.header.flags = NeighbourFlags::Use;
        request
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        self.rtnl
            .request(RouteNetlinkMessage::NewNeighbour(request), NLM_F_CREATE)
            .map(drop)
            .map_err(|error| netlink_error(Some(ip), "neighbour solicit (NTF_USE)", error))
    }

    /// Moves a dynamic neighbour entry to PROBE, keeping its MAC (`ip neigh change <ip> dev
    /// <bridge> nud probe`): the kernel sends a unicast ARP request / neighbour solicitation at
    /// once, the pod answers, and the bridge learns the pod's port from the answer.
    fn reprobe(&mut self, ip: IpAddr, bridge: u32) -> Result<(), DiscoveryError> {
        let mut request = NeighbourMessage::default();
        request.header.family = family(ip);
        request.header.ifindex = bridge;
        request.header.state = NeighbourState::Probe;
        request
            .attributes
            .push(NeighbourAttribute::Destination(neighbour_address(ip)));
        match self
            .rtnl
            .request(RouteNetlinkMessage::NewNeighbour(request), NLM_F_REPLACE)
        {
            // ENOENT: the entry was removed meanwhile; the next pass solicits afresh.
            Err(error) if error.errno() != Some(libc::ENOENT) => Err(netlink_error(
                Some(ip),
                "neighbour re-probe (NUD_PROBE)",
                error,
            )),
            _ => Ok(()),
        }
    }

    /// The ports (ifindexes) of `bridge` on which its FDB has `mac`, the bridge's own entries
    /// and the devices' own (`self`) entries left out.
    fn fdb_ports(
        &mut self,
        ip: IpAddr,
        bridge: u32,
        mac: MacAddr,
    ) -> Result<Vec<u32>, DiscoveryError> {
        if !self.fdb.contains_key(&bridge) {
            let entries = self
                .read_fdb(bridge)
                .map_err(|error| netlink_error(Some(ip), "bridge FDB dump", error))?;
            self.fdb.insert(bridge, entries);
        }
        let mut ports: Vec<u32> = self
            .fdb
            .get(&bridge)
            .into_iter()
            .flatten()
            .filter(|(_, entry)| *entry == mac)
            .map(|(port, _)| *port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        Ok(ports)
    }

    fn read_fdb(&mut self, bridge: u32) -> Result<Vec<(u32, MacAddr)>, NetlinkError> {
        let mut request = NeighbourMessage::default();
        request.header.family = AddressFamily::Bridge;
        let answers = self.rtnl.dump(RouteNetlinkMessage::GetNeighbour(request))?;
        Ok(answers
            .into_iter()
            .filter_map(|answer| match answer {
                RouteNetlinkMessage::NewNeighbour(entry) => Some(entry),
                _ => None,
            })
            .filter(|entry| {
                entry.header.family == AddressFamily::Bridge
                    && entry.header.ifindex != bridge
                    && !entry.header.flags.contains(NeighbourFlags::Own)
                    && entry
                        .attributes
                        .contains(&NeighbourAttribute::Controller(bridge))
            })
            .filter_map(|entry| Some((entry.header.ifindex, lladdr(&entry)?)))
            .collect())
    }
}

/// One pod's interface from its IPs' results: the first hard error, else the first pending one,
/// else the interface they all agree on.
fn combine(
    results: Vec<(IpAddr, Result<HostInterface, DiscoveryError>)>,
) -> Result<HostInterface, DiscoveryError> {
    let mut found: Option<(IpAddr, HostInterface)> = None;
    let mut pending = None;
    for (ip, result) in results {
        match result {
            Ok(interface) => match &found {
                Some((first_ip, first)) if first.ifindex != interface.ifindex => {
                    return Err(DiscoveryError::IpsDisagree {
                        ip: *first_ip,
                        ifname: first.ifname.clone(),
                        other_ip: ip,
                        other_ifname: interface.ifname,
                    });
                }
                Some(_) => {}
                None => found = Some((ip, interface)),
            },
            Err(error) if error.is_pending() => {
                pending.get_or_insert(error);
            }
            Err(error) => return Err(error),
        }
    }
    match (pending, found) {
        (Some(error), _) => Err(error),
        (None, Some((_, interface))) => Ok(interface),
        (None, None) => Err(DiscoveryError::NoIp),
    }
}

/// The Ethernet address of a neighbour or FDB entry.
fn lladdr(entry: &NeighbourMessage) -> Option<MacAddr> {
    entry
        .attributes
        .iter()
        .find_map(|attribute| match attribute {
            NeighbourAttribute::LinkLayerAddress(bytes) => {
                <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            _ => None,
        })
}

fn neighbour_address(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
        IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(ifindex: u32, name: &str) -> HostInterface {
        HostInterface {
            ifindex,
            ifname: name.to_owned(),
            wiring: Wiring::Routed,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_dual_stack_pod_resolves_to_one_interface_or_to_an_error() {
        let agree = combine(vec![
            (ip("10.0.0.1"), Ok(veth(5, "a"))),
            (ip("fd00::1"), Ok(veth(5, "a"))),
        ]);
        assert_eq!(agree.unwrap(), veth(5, "a"));
        let disagree = combine(vec![
            (ip("10.0.0.1"), Ok(veth(5, "a"))),
            (ip("fd00::1"), Ok(veth(6, "b"))),
        ]);
        assert!(
            matches!(&disagree, Err(DiscoveryError::IpsDisagree { ifname, other_ifname, .. })
                if ifname == "a" && other_ifname == "b"),
            "{disagree:?}"
        );
        let pending = DiscoveryError::Pending {
            ip: ip("fd00::1"),
            bridge: "cni0".into(),
            what: PendingOn::Neighbour {
                state: "none".into(),
            },
        };
        let no_route = DiscoveryError::NoRoute {
            ip: ip("10.0.0.1"),
            kernel: "Network is unreachable".into(),
        };
        let half = combine(vec![
            (ip("10.0.0.1"), Ok(veth(5, "a"))),
            (ip("fd00::1"), Err(pending.clone())),
        ]);
        assert!(
            half.unwrap_err().is_pending(),
            "one IP pending: the pod is pending"
        );
        let hard = combine(vec![
            (ip("fd00::1"), Err(pending)),
            (ip("10.0.0.1"), Err(no_route)),
        ]);
        assert_eq!(hard.unwrap_err().reason(), "no_route", "a hard error wins");
        assert_eq!(combine(Vec::new()).unwrap_err().reason(), "no_ip");
    }
}
