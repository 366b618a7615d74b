//! The wiring of a lab, as data: the sysctls of each namespace and the iproute2 scripts for the
//! node and every endpoint. `Lab::build` runs them; nothing here touches the system.
//!
//! A routed, Calico-style node with no way out:
//!
//! ```text
//!   netns fglab-<pid>-<seq>-e0-x-a        netns fglab-<pid>-<seq>-e1-203-0-113-9
//!  +--------------------------------+    +-----------------------------------+
//!  | eth0 10.0.0.1/32, fd00::1/128  |    | eth0 203.0.113.9/32  (external)   |
//!  | default via 169.254.1.1 (v4)   |    | default via 169.254.1.1           |
//!  | default via fe80::1     (v6)   |    |                                   |
//!  | servers: TCP, UDP echo, SCTP   |    | servers on the extra ports        |
//!  +-------------|------------------+    +----------------|------------------+
//!                | veth                                   | veth
//!  +-------------|----------------------------------------|------------------+
//!  |   fg<id>h0: proxy_arp, fe80::1/64      fg<id>h1: proxy_arp, fe80::1/64   |
//!  |   10.0.0.1/32 dev fg<id>h0             203.0.113.9/32 dev fg<id>h1       |
//!  |   fd00::1/128 dev fg<id>h0             169.254.1.1/32 dev lo (see below) |
//!  |   forwarding on; no default route; no interface but lo and the veths      |
//!  |                      netns fglab-<pid>-<seq>-node                          |
//!  +---------------------------------------------------------------------------+
//! ```
//!
//! The host namespace is never touched: the node is a namespace of its own with no link to any
//! real interface, so no packet can leave the lab. Proxy ARP only answers for an address the
//! node has a unicast route to; Calico hosts have a default route, the lab node must not, so the
//! node routes the gateway address 169.254.1.1/32 to its own `lo` (a packet sent to the gateway
//! itself dies there by TTL; nothing is ever sent to it but ARP requests).
//!
//! A bridged, Flannel-style node (`LabWiring::Bridged`), with the same externals and no way out:
//!
//! ```text
//!   netns ...-e0-x-a                  netns ...-e1-x-b                netns ...-e2-203-0-113-9
//!  +--------------------------+      +--------------------------+    +----------------------+
//!  | eth0 10.244.5.2/24       |      | eth0 10.244.5.3/24       |    | eth0 203.0.113.9/32  |
//!  |      fd00::2/64          |      | default via 169.254.1.1  |    | (external: routed as |
//!  | default via 169.254.1.1  |      +------------|-------------+    |  above, not bridged) |
//!  | default via fe80::1      |                   | veth             +----------|-----------+
//!  +------------|-------------+                   |                            | veth
//!               | veth                            |                            |
//!  +------------|---------------------------------|----------------------------|-----------+
//!  |   fg<id>h0 (port)                  fg<id>h1 (port)               fg<id>h2: proxy_arp  |
//!  |   +-------------------------------------------------+          203.0.113.9/32 dev h2  |
//!  |   | cni0 (bridge): 169.254.1.1/32, fe80::1/64        |                                 |
//!  |   |   proxy_arp (answers for the externals)          |                                 |
//!  |   +-------------------------------------------------+                                 |
//!  |   10.244.5.0/24 dev cni0     fd00::/64 dev cni0   (one on-link route per pod subnet)  |
//!  |   forwarding on; no default route; no interface but lo, cni0 and the veths            |
//!  |                           netns fglab-<pid>-<seq>-node                                |
//!  +---------------------------------------------------------------------------------------+
//! ```
//!
//! Flannel gives `cni0` the first address of the node's pod /24 and every pod an address in
//! it. Lab pod IPs come from manifests and may be anything (10.0.0.1, 10.1.0.7, fd00::1), so
//! the lab keeps Flannel's picture and makes it work for arbitrary addresses: each pod gets its
//! address with the prefix of its /24 (IPv6: /64), so pods of one subnet reach each other
//! through the bridge at layer 2, never through the node's IP stack; the node routes every pod
//! subnet on-link to `cni0` (what `ip route get <pod IP>` shows on a Flannel node); and `cni0`
//! holds the same link-local gateways as the routed lab instead of an address inside a pod
//! subnet (which might be a pod's), so pods of different subnets, and externals, are reached
//! via the gateway. `cni0` answers ARP for externals inside a pod /24 by proxy ARP, and NDP for
//! those inside a pod /64 by a proxy entry each. The datapath attaches to the host veths, the
//! bridge's ports: TC on a port sees every frame the pod sends or receives, bridged or routed.
//! The bridge snoops no multicast (`mcast_snooping 0`): it sends nothing the lab did not ask
//! for (no IGMP/MLD queries towards the pods), and floods neighbour discovery like a hub.

use std::net::IpAddr;

use super::spec::{BRIDGE, EndpointPlan, GATEWAY_V4, GATEWAY_V6, Plan, pod_subnet};

/// Sysctls of the node namespace (path below `/proc/sys`, value), in order: `ip_forward` first,
/// since setting it resets per-interface settings.
pub(super) const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/ipv6/conf/default/forwarding", "1"),
    // IPv4 settings of a new namespace are copied from the host's: pin the ones we rely on.
    ("net/ipv4/conf/all/rp_filter", "0"),
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/conf/all/arp_ignore", "0"),
    ("net/ipv4/conf/default/proxy_arp", "1"),
    // No duplicate address detection: addresses are usable the moment they are added.
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    // Unreachable errors are results of probes: never rate-limit them away.
    ("net/ipv4/icmp_ratelimit", "0"),
    ("net/ipv6/icmp/ratelimit", "0"),
];

/// Sysctls of each host veth in the node namespace, `{if}` standing for its name. Calico sets
/// the same: answer ARP for the gateway at once instead of after a random delay of up to 0.8 s.
pub(super) const HOST_IF_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/{if}/proxy_arp", "1"),
    ("net/ipv4/neigh/{if}/proxy_delay", "0"),
];

/// Sysctls of a bridged node's `cni0`, written once it exists: proxy ARP (at once) for the
/// externals inside a pod /24, and proxy NDP for the entries the node script adds.
pub(super) const BRIDGE_SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/conf/{if}/proxy_arp", "1"),
    ("net/ipv4/neigh/{if}/proxy_delay", "0"),
    ("net/ipv6/conf/{if}/proxy_ndp", "1"),
    ("net/ipv6/neigh/{if}/proxy_delay", "0"),
];

/// Sysctls of each endpoint namespace, written before its `eth0` exists (so `default` applies).
pub(super) const ENDPOINT_SYSCTLS: &[(&str, &str)] = &[
    // Forwarding is the node's job only (a host with ip_forward=1 would otherwise pass it on).
    ("net/ipv4/ip_forward", "0"),
    ("net/ipv6/conf/all/disable_ipv6", "0"),
    ("net/ipv6/conf/default/disable_ipv6", "0"),
    ("net/ipv6/conf/all/forwarding", "0"),
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
    ("net/ipv4/icmp_echo_ignore_all", "0"),
    ("net/ipv6/icmp/echo_ignore_all", "0"),
    ("net/ipv4/icmp_ratelimit", "0"),
    ("net/ipv6/icmp/ratelimit", "0"),
];

/// `ip -batch` lines (host namespace) creating every namespace of the lab.
pub(super) fn netns_add_script(plan: &Plan) -> Vec<String> {
    plan.netns_names()
        .iter()
        .map(|name| format!("netns add {name}"))
        .collect()
}

/// `ip -n <node> -batch` lines: one veth pair per endpoint (the peer created directly as `eth0`
/// in the endpoint's namespace), the host side up. Routed endpoints get a host route per address
/// (and the IPv6 gateway address on their veth); a bridged lab's pods become ports of `cni0`,
/// with their subnets routed to it.
pub(super) fn node_script(plan: &Plan) -> Vec<String> {
    let mut lines = vec![
        "link set lo up".to_owned(),
        format!("route add {GATEWAY_V4}/32 dev lo"),
    ];
    let bridged: Vec<&EndpointPlan> = plan
        .endpoints
        .iter()
        .filter(|endpoint| plan.on_bridge(endpoint))
        .collect();
    if !bridged.is_empty() {
        lines.push(format!(
            "link add {BRIDGE} type bridge forward_delay 0 mcast_snooping 0"
        ));
        lines.push(format!("link set {BRIDGE} up"));
        let ips = || bridged.iter().flat_map(|endpoint| endpoint.ips.iter());
        if ips().any(IpAddr::is_ipv4) {
            lines.push(format!("address add {GATEWAY_V4}/32 dev {BRIDGE}"));
        }
        if ips().any(IpAddr::is_ipv6) {
            lines.push(format!("address add {GATEWAY_V6}/64 dev {BRIDGE} nodad"));
        }
    }
    for endpoint in &plan.endpoints {
        let host = &endpoint.host_if;
        lines.push(format!(
            "link add {host} type veth peer name eth0 netns {}",
            endpoint.netns
        ));
        if plan.on_bridge(endpoint) {
            lines.push(format!("link set {host} master {BRIDGE}"));
            lines.push(format!("link set {host} up"));
            continue;
        }
        lines.push(format!("link set {host} up"));
        if endpoint.ips.iter().any(IpAddr::is_ipv6) {
            lines.push(format!("address add {GATEWAY_V6}/64 dev {host} nodad"));
        }
        for ip in &endpoint.ips {
            lines.push(format!("route add {ip}/{} dev {host}", host_prefix(*ip)));
        }
    }
    let subnets = plan.pod_subnets();
    for (network, prefix) in &subnets {
        lines.push(format!("route add {network}/{prefix} dev {BRIDGE}"));
    }
    // Routed endpoints (externals) inside a pod /64: the pods solicit them on the bridge.
    for endpoint in plan.endpoints.iter().filter(|e| !plan.on_bridge(e)) {
        for ip in endpoint.ips.iter().filter(|ip| ip.is_ipv6()) {
            if subnets.contains(&pod_subnet(*ip)) {
                lines.push(format!("neigh add proxy {ip} dev {BRIDGE}"));
            }
        }
    }
    lines
}

/// `ip -n <endpoint> -batch` lines: `eth0` up with the endpoint's addresses (routed: /32 and
/// /128; on a bridge: the prefix of their subnet) and default routes via the link-local
/// gateways.
pub(super) fn endpoint_script(plan: &Plan, endpoint: &EndpointPlan) -> Vec<String> {
    let mut lines = vec!["link set lo up".to_owned(), "link set eth0 up".to_owned()];
    for ip in &endpoint.ips {
        let flags = if ip.is_ipv6() { " nodad" } else { "" };
        let prefix = if plan.on_bridge(endpoint) {
            pod_subnet(*ip).1
        } else {
            host_prefix(*ip)
        };
        lines.push(format!("address add {ip}/{prefix} dev eth0{flags}"));
    }
    if endpoint.ips.iter().any(IpAddr::is_ipv4) {
        lines.push(format!("route add {GATEWAY_V4}/32 dev eth0 scope link"));
        lines.push(format!("route add 0.0.0.0/0 via {GATEWAY_V4} dev eth0"));
    }
    if endpoint.ips.iter().any(IpAddr::is_ipv6) {
        lines.push(format!("route add ::/0 via {GATEWAY_V6} dev eth0"));
    }
    lines
}

fn host_prefix(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

#[cfg(test)]
mod tests {
    use super::super::registry::LabId;
    use super::super::spec::{LabPod, LabSpec, LabWiring, plan};
    use super::*;

    #[test]
    fn scripts_wire_a_dual_stack_pod_through_the_node() {
        let spec = LabSpec {
            pods: vec![LabPod {
                key: "x/a".to_owned(),
                ips: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
                ports: vec![],
            }],
            ..LabSpec::default()
        };
        let plan = plan(&spec, LabId { pid: 1, seq: 0 }, LabWiring::Routed).unwrap();
        let node = node_script(&plan);
        assert!(node.contains(
            &"link add fg100h0 type veth peer name eth0 netns fglab-1-0-e0-x-a".to_owned()
        ));
        assert!(node.contains(&"route add 10.0.0.1/32 dev fg100h0".to_owned()));
        assert!(node.contains(&"route add fd00::1/128 dev fg100h0".to_owned()));
        assert!(node.contains(&"address add fe80::1/64 dev fg100h0 nodad".to_owned()));
        assert!(
            !node
                .iter()
                .any(|line| line.contains("default") || line.contains("0.0.0.0/0")),
            "the node must never get a default route: {node:?}"
        );
        let pod = endpoint_script(&plan, &plan.endpoints[0]);
        assert!(pod.contains(&"route add 0.0.0.0/0 via 169.254.1.1 dev eth0".to_owned()));
        assert!(pod.contains(&"route add ::/0 via fe80::1 dev eth0".to_owned()));
        assert!(pod.contains(&"address add fd00::1/128 dev eth0 nodad".to_owned()));
    }

    #[test]
    fn bridged_scripts_make_pods_ports_of_cni0_and_keep_externals_routed() {
        let pod = |key: &str, ips: &[&str]| LabPod {
            key: key.to_owned(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            ports: vec![],
        };
        let spec = LabSpec {
            pods: vec![
                pod("x/a", &["10.244.5.2", "fd00::2"]),
                pod("x/b", &["10.244.5.3"]),
                pod("y/c", &["10.1.0.7"]),
            ],
            externals: vec!["10.244.5.99".parse().unwrap(), "fd00::99".parse().unwrap()],
            ..LabSpec::default()
        };
        let plan = plan(&spec, LabId { pid: 1, seq: 0 }, LabWiring::Bridged).unwrap();
        let node = node_script(&plan);
        for line in [
            "link add cni0 type bridge forward_delay 0 mcast_snooping 0",
            "address add 169.254.1.1/32 dev cni0",
            "address add fe80::1/64 dev cni0 nodad",
            "link set fg100h0 master cni0",
            "link set fg100h2 master cni0",
            "route add 10.244.5.0/24 dev cni0",
            "route add 10.1.0.0/24 dev cni0",
            "route add fd00::/64 dev cni0",
            // The externals stay routed, and the one inside a pod /64 is answered by proxy.
            "route add 10.244.5.99/32 dev fg100h3",
            "route add fd00::99/128 dev fg100h4",
            "neigh add proxy fd00::99 dev cni0",
        ] {
            assert!(
                node.contains(&line.to_owned()),
                "missing {line:?} in {node:#?}"
            );
        }
        assert!(
            !node
                .iter()
                .any(|line| line.contains("route add 10.244.5.2")),
            "no host route per bridged pod: {node:#?}"
        );
        assert!(
            !node
                .iter()
                .any(|line| line.contains("default") || line.contains("0.0.0.0/0")),
            "the node must never get a default route: {node:?}"
        );
        let a = endpoint_script(&plan, &plan.endpoints[0]);
        assert!(
            a.contains(&"address add 10.244.5.2/24 dev eth0".to_owned()),
            "{a:?}"
        );
        assert!(
            a.contains(&"address add fd00::2/64 dev eth0 nodad".to_owned()),
            "{a:?}"
        );
        assert!(a.contains(&"route add 0.0.0.0/0 via 169.254.1.1 dev eth0".to_owned()));
        let external = endpoint_script(&plan, &plan.endpoints[3]);
        assert!(external.contains(&"address add 10.244.5.99/32 dev eth0".to_owned()));
    }

    #[test]
    fn a_bridged_lab_refuses_the_edges_of_a_pod_subnet() {
        for (pods, externals) in [
            (vec!["10.244.5.255"], vec![]),
            (vec!["10.244.5.2"], vec!["10.244.5.0"]),
        ] {
            let spec = LabSpec {
                pods: vec![LabPod {
                    key: "x/a".to_owned(),
                    ips: pods.iter().map(|ip| ip.parse().unwrap()).collect(),
                    ports: vec![],
                }],
                externals: externals.iter().map(|ip| ip.parse().unwrap()).collect(),
                ..LabSpec::default()
            };
            let id = LabId { pid: 1, seq: 0 };
            assert!(
                matches!(
                    plan(&spec, id, LabWiring::Bridged),
                    Err(crate::lab::LabError::UnusableIp { .. })
                ),
                "{pods:?} {externals:?} must be refused when bridged"
            );
            assert!(
                plan(&spec, id, LabWiring::Routed).is_ok(),
                "routed takes them"
            );
        }
    }
}
