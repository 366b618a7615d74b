//! What a lab is built from (`LabSpec`: pods, external IPs, extra ports; by hand or from a policy
//! `Cluster`), its validation, and the plan `Lab::build` follows: every endpoint with its
//! addresses, the ports its servers open, and its namespace and host interface names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use flowgate_policy::Cluster;
use flowgate_policy::model::{Pod, Protocol};

use super::error::LabError;
use super::registry::LabId;

/// The pods' IPv4 default gateway: a link-local address answered by proxy ARP on the host veth
/// (as Calico does).
pub const GATEWAY_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The pods' IPv6 default gateway: a link-local address set on every host veth.
pub const GATEWAY_V6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);

/// Most endpoints one lab holds (keeps interface names under the kernel's 15 bytes).
pub const MAX_ENDPOINTS: usize = 4096;

/// The bridge of a bridged lab node, named as Flannel and the CNI bridge plugin name theirs.
pub const BRIDGE: &str = "cni0";

/// Most pods a bridged lab holds: a Linux bridge numbers its ports 1..=1023.
pub const MAX_BRIDGE_PORTS: usize = 1023;

/// How the lab node wires its pods, like one of the two families of CNIs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LabWiring {
    /// Calico-style: a host route per pod IP to the pod's veth, proxy ARP, a link-local gateway.
    #[default]
    Routed,
    /// Flannel-style: every pod's host veth is a port of the bridge `cni0`, and the pod subnets
    /// are routed to the bridge; pods of one subnet talk through the bridge at layer 2.
    Bridged,
}

impl LabWiring {
    /// `routed` or `bridged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Routed => "routed",
            Self::Bridged => "bridged",
        }
    }
}

impl std::fmt::Display for LabWiring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to build: pods, external endpoints and ports every endpoint also listens on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabSpec {
    pub pods: Vec<LabPod>,
    /// IPs outside the cluster (the peers of `ipBlock` rules); each gets a namespace of its own.
    pub externals: Vec<IpAddr>,
    /// Ports every endpoint (pods and externals) serves in addition to its own, e.g. a port no
    /// containerPort declares but a probe uses.
    pub extra_ports: Vec<(Protocol, u16)>,
}

/// One pod of the lab.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabPod {
    /// `namespace/name`.
    pub key: String,
    /// Its IPs (IPv4 and/or IPv6); a pod without any is left out of the lab.
    pub ips: Vec<IpAddr>,
    /// Its containerPorts. ICMP entries are ignored: the kernel answers echo requests itself.
    pub ports: Vec<(Protocol, u16)>,
}

impl LabPod {
    pub fn from_pod(pod: &Pod) -> Self {
        Self {
            key: pod.key(),
            ips: pod.ips.clone(),
            ports: pod.ports.iter().map(|p| (p.protocol, p.port)).collect(),
        }
    }
}

impl LabSpec {
    /// Every pod of `cluster` with an IP that is not on the host network (NetworkPolicy does
    /// not apply to those); no externals, no extra ports.
    pub fn from_cluster(cluster: &Cluster) -> Self {
        let pods = cluster
            .pods()
            .filter(|(_, pod)| !pod.host_network && !pod.ips.is_empty())
            .map(|(_, pod)| LabPod::from_pod(pod))
            .collect();
        Self {
            pods,
            ..Self::default()
        }
    }
}

/// A pod or an external endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointKind {
    Pod,
    External,
}

/// One endpoint as the lab builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EndpointPlan {
    /// `namespace/name` for a pod, the IP's text for an external endpoint.
    pub key: String,
    pub kind: EndpointKind,
    pub ips: Vec<IpAddr>,
    pub tcp: BTreeSet<u16>,
    pub udp: BTreeSet<u16>,
    pub sctp: BTreeSet<u16>,
    pub netns: String,
    /// The host side of its veth pair, in the node namespace.
    pub host_if: String,
}

/// The whole lab, named and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Plan {
    pub wiring: LabWiring,
    pub node_netns: String,
    pub endpoints: Vec<EndpointPlan>,
    /// Pods left out because they have no IP.
    pub skipped: Vec<String>,
}

impl Plan {
    /// Whether `endpoint` is a port of the bridge (the pods of a bridged lab; externals stay
    /// routed: they stand for hosts outside the cluster, not pods).
    pub(super) fn on_bridge(&self, endpoint: &EndpointPlan) -> bool {
        self.wiring == LabWiring::Bridged && endpoint.kind == EndpointKind::Pod
    }

    /// The bridged pods' subnets, without duplicates, IPv4 first: each pod address's /24 or /64.
    pub(super) fn pod_subnets(&self) -> Vec<(IpAddr, u8)> {
        let subnets: BTreeSet<(IpAddr, u8)> = self
            .endpoints
            .iter()
            .filter(|endpoint| self.on_bridge(endpoint))
            .flat_map(|endpoint| endpoint.ips.iter().map(|ip| pod_subnet(*ip)))
            .collect();
        subnets.into_iter().collect()
    }

    pub(super) fn netns_names(&self) -> Vec<String> {
        std::iter::once(self.node_netns.clone())
            .chain(self.endpoints.iter().map(|e| e.netns.clone()))
            .collect()
    }
}

/// Why an address cannot be an endpoint's address in the lab, if it cannot.
fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return Some("unspecified, loopback and multicast addresses cannot be assigned");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address cannot be assigned"),
        IpAddr::V4(v4) if v4 == GATEWAY_V4 => Some("it is the pods' gateway address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("IPv6 link-local addresses are reserved for the gateway")
        }
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => {
            Some("an IPv4-mapped IPv6 address; write it as IPv4")
        }
        _ => None,
    }
}

/// The subnet a bridged pod's address sits in (its prefix on the pod's `eth0`, routed to the
/// bridge on the node): the /24 of an IPv4 address, the /64 of an IPv6 one.
pub(super) fn pod_subnet(ip: IpAddr) -> (IpAddr, u8) {
    match ip {
        IpAddr::V4(v4) => (IpAddr::V4(Ipv4Addr::from(v4.to_bits() & !0xff)), 24),
        IpAddr::V6(v6) => (
            IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
            64,
        ),
    }
}

/// Whether `ip` is the network or broadcast address of the bridged pod subnet `subnet`.
fn is_subnet_edge(ip: IpAddr, subnet: (IpAddr, u8)) -> bool {
    match ip {
        IpAddr::V4(v4) => pod_subnet(ip) == subnet && matches!(v4.octets()[3], 0 | 255),
        IpAddr::V6(_) => false,
    }
}

/// Keeps `[a-z0-9]` of a pod key and turns the rest into `-`, for readable namespace names.
fn slug(key: &str) -> String {
    let slug: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    slug.trim_matches('-').to_owned()
}

/// Validates `spec` and names everything for lab `id`, wired as `wiring` says.
pub(super) fn plan(spec: &LabSpec, id: LabId, wiring: LabWiring) -> Result<Plan, LabError> {
    let mut owners: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut claim = |ip: IpAddr, endpoint: &str| -> Result<(), LabError> {
        if let Some(why) = unusable(ip) {
            return Err(LabError::UnusableIp {
                endpoint: endpoint.to_owned(),
                ip,
                why,
            });
        }
        match owners.get(&ip) {
            Some(first) => Err(LabError::DuplicateIp {
                ip,
                first: first.clone(),
                second: endpoint.to_owned(),
            }),
            None => {
                owners.insert(ip, endpoint.to_owned());
                Ok(())
            }
        }
    };

    let mut extra: [BTreeSet<u16>; 3] = Default::default();
    for &(protocol, port) in &spec.extra_ports {
        add_port(&mut extra, protocol, port, "extra_ports")?;
    }

    let mut keys = BTreeSet::new();
    let mut skipped = Vec::new();
    let mut endpoints = Vec::new();
    for pod in &spec.pods {
        let well_formed = pod
            .key
            .split_once('/')
            .is_some_and(|(ns, name)| !ns.is_empty() && !name.is_empty() && !name.contains('/'));
        if !well_formed {
            return Err(LabError::BadPodKey {
                key: pod.key.clone(),
            });
        }
        if !keys.insert(pod.key.as_str()) {
            return Err(LabError::DuplicatePod {
                key: pod.key.clone(),
            });
        }
        if pod.ips.is_empty() {
            skipped.push(pod.key.clone());
            continue;
        }
        let mut ports = extra.clone();
        for &(protocol, port) in &pod.ports {
            add_port(&mut ports, protocol, port, &pod.key)?;
        }
        let mut ips = Vec::new();
        for &ip in &pod.ips {
            if !ips.contains(&ip) {
                claim(ip, &pod.key)?;
                ips.push(ip);
            }
        }
        endpoints.push((pod.key.clone(), EndpointKind::Pod, ips, ports));
    }
    let mut externals: Vec<IpAddr> = spec.externals.clone();
    externals.sort();
    externals.dedup();
    for ip in externals {
        let key = ip.to_string();
        claim(ip, &key)?;
        endpoints.push((key, EndpointKind::External, vec![ip], extra.clone()));
    }
    if endpoints.len() > MAX_ENDPOINTS {
        return Err(LabError::TooManyEndpoints {
            count: endpoints.len(),
            max: MAX_ENDPOINTS,
        });
    }

    let ifname_prefix = id.ifname_prefix();
    let endpoints: Vec<EndpointPlan> = endpoints
        .into_iter()
        .enumerate()
        .map(|(index, (key, kind, ips, [tcp, udp, sctp]))| EndpointPlan {
            netns: format!("{id}-e{index}-{}", slug(&key)),
            host_if: format!("{ifname_prefix}h{index:x}"),
            key,
            kind,
            ips,
            tcp,
            udp,
            sctp,
        })
        .collect();
    if wiring == LabWiring::Bridged {
        check_bridged(&endpoints)?;
    }
    Ok(Plan {
        wiring,
        node_netns: format!("{id}-node"),
        endpoints,
        skipped,
    })
}

/// What only a bridged lab refuses: more pods than a bridge has ports, and addresses that are
/// the network or broadcast address of a pod's /24 (pods of a subnet share it on the bridge).
fn check_bridged(endpoints: &[EndpointPlan]) -> Result<(), LabError> {
    let pods = endpoints
        .iter()
        .filter(|endpoint| endpoint.kind == EndpointKind::Pod);
    let count = pods.clone().count();
    if count > MAX_BRIDGE_PORTS {
        return Err(LabError::TooManyBridgePorts {
            count,
            max: MAX_BRIDGE_PORTS,
        });
    }
    let subnets: BTreeSet<(IpAddr, u8)> = pods
        .flat_map(|endpoint| endpoint.ips.iter().map(|ip| pod_subnet(*ip)))
        .collect();
    for endpoint in endpoints {
        if let Some(&ip) = endpoint
            .ips
            .iter()
            .find(|ip| subnets.iter().any(|subnet| is_subnet_edge(**ip, *subnet)))
        {
            return Err(LabError::UnusableIp {
                endpoint: endpoint.key.clone(),
                ip,
                why: "in a bridged lab it is the network or broadcast address of a pod's /24",
            });
        }
    }
    Ok(())
}

fn add_port(
    ports: &mut [BTreeSet<u16>; 3],
    protocol: Protocol,
    port: u16,
    endpoint: &str,
) -> Result<(), LabError> {
    if port == 0 {
        return Err(LabError::PortZero {
            endpoint: endpoint.to_owned(),
        });
    }
    let [tcp, udp, sctp] = ports;
    match protocol {
        Protocol::Tcp => tcp.insert(port),
        Protocol::Udp => udp.insert(port),
        Protocol::Sctp => sctp.insert(port),
        Protocol::Icmp => false,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn pod(key: &str, ips: &[&str]) -> LabPod {
        LabPod {
            key: key.to_owned(),
            ips: ips.iter().map(|s| ip(s)).collect(),
            ports: vec![(Protocol::Tcp, 80), (Protocol::Sctp, 80)],
        }
    }

    const ID: LabId = LabId { pid: 77, seq: 1 };

    #[test]
    fn plan_names_every_endpoint_and_merges_extra_ports() {
        let spec = LabSpec {
            pods: vec![pod("x/a", &["10.0.0.1", "fd00::1"]), pod("x/none", &[])],
            externals: vec![ip("203.0.113.9"), ip("203.0.113.9")],
            extra_ports: vec![(Protocol::Udp, 53), (Protocol::Icmp, 7)],
        };
        let plan = plan(&spec, ID, LabWiring::Routed).unwrap();
        assert_eq!(plan.node_netns, "fglab-77-1-node");
        assert_eq!(plan.skipped, vec!["x/none".to_owned()]);
        assert_eq!(
            plan.endpoints.len(),
            2,
            "one pod with IPs + one deduplicated external"
        );
        let a = &plan.endpoints[0];
        assert_eq!(a.netns, "fglab-77-1-e0-x-a");
        assert_eq!(a.host_if, "fg4d01h0");
        assert_eq!(a.tcp, BTreeSet::from([80]));
        assert_eq!(a.udp, BTreeSet::from([53]));
        assert_eq!(a.sctp, BTreeSet::from([80]));
        let external = &plan.endpoints[1];
        assert_eq!(
            (external.key.as_str(), external.kind),
            ("203.0.113.9", EndpointKind::External)
        );
        assert_eq!(
            external.tcp,
            BTreeSet::new(),
            "externals get only the extra ports"
        );
        assert!(plan.endpoints.iter().all(|e| e.host_if.len() <= 15));
    }

    #[test]
    fn conflicting_or_unusable_addresses_are_refused() {
        let twice = LabSpec {
            pods: vec![pod("x/a", &["10.0.0.1"]), pod("x/b", &["10.0.0.1"])],
            ..LabSpec::default()
        };
        assert!(matches!(
            plan(&twice, ID, LabWiring::Routed),
            Err(LabError::DuplicateIp { .. })
        ));
        let external_is_pod = LabSpec {
            pods: vec![pod("x/a", &["10.0.0.1"])],
            externals: vec![ip("10.0.0.1")],
            ..LabSpec::default()
        };
        assert!(matches!(
            plan(&external_is_pod, ID, LabWiring::Routed),
            Err(LabError::DuplicateIp { .. })
        ));
        for bad in [
            "169.254.1.1",
            "127.0.0.1",
            "fe80::5",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            let spec = LabSpec {
                pods: vec![pod("x/a", &[bad])],
                ..LabSpec::default()
            };
            assert!(
                matches!(
                    plan(&spec, ID, LabWiring::Routed),
                    Err(LabError::UnusableIp { .. })
                ),
                "{bad} must be refused"
            );
        }
        let zero = LabSpec {
            extra_ports: vec![(Protocol::Tcp, 0)],
            ..LabSpec::default()
        };
        assert!(matches!(
            plan(&zero, ID, LabWiring::Routed),
            Err(LabError::PortZero { .. })
        ));
        let bad_key = LabSpec {
            pods: vec![pod("a", &["10.0.0.1"])],
            ..LabSpec::default()
        };
        assert!(matches!(
            plan(&bad_key, ID, LabWiring::Routed),
            Err(LabError::BadPodKey { .. })
        ));
    }
}
