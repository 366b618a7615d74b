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

use std::net::IpAddr;

use super::spec::{EndpointPlan, GATEWAY_V4, GATEWAY_V6, Plan};

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
/// in the endpoint's namespace), the host side up with the IPv6 gateway address, and a host
/// route per endpoint address.
pub(super) fn node_script(plan: &Plan) -> Vec<String> {
    let mut lines = vec![
        "link set lo up".to_owned(),
        format!("route add {GATEWAY_V4}/32 dev lo"),
    ];
    for endpoint in &plan.endpoints {
        let host = &endpoint.host_if;
        lines.push(format!(
            "link add {host} type veth peer name eth0 netns {}",
            endpoint.netns
        ));
        lines.push(format!("link set {host} up"));
        if endpoint.ips.iter().any(IpAddr::is_ipv6) {
            lines.push(format!("address add {GATEWAY_V6}/64 dev {host} nodad"));
        }
        for ip in &endpoint.ips {
            lines.push(format!("route add {ip}/{} dev {host}", host_prefix(*ip)));
        }
    }
    lines
}

/// `ip -n <endpoint> -batch` lines: `eth0` up with the endpoint's addresses as /32 and /128 and
/// default routes via the link-local gateways.
pub(super) fn endpoint_script(endpoint: &EndpointPlan) -> Vec<String> {
    let mut lines = vec!["link set lo up".to_owned(), "link set eth0 up".to_owned()];
    for ip in &endpoint.ips {
        let flags = if ip.is_ipv6() { " nodad" } else { "" };
        lines.push(format!(
            "address add {ip}/{} dev eth0{flags}",
            host_prefix(*ip)
        ));
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
    use super::super::spec::{LabPod, LabSpec, plan};
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
        let plan = plan(&spec, LabId { pid: 1, seq: 0 }).unwrap();
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
        let pod = endpoint_script(&plan.endpoints[0]);
        assert!(pod.contains(&"route add 0.0.0.0/0 via 169.254.1.1 dev eth0".to_owned()));
        assert!(pod.contains(&"route add ::/0 via fe80::1 dev eth0".to_owned()));
        assert!(pod.contains(&"address add fd00::1/128 dev eth0 nodad".to_owned()));
    }
}
