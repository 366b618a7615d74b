//! The lab node: a Kubernetes node built in network namespaces, wired like a routed,
//! Calico-style CNI or (`LabWiring::Bridged`) a bridged, Flannel-style one (see `topology`),
//! with real servers in every pod and real probes between them, for `flowgate lab` and the lab
//! tests. Owns the `Lab` lifecycle (build, enter, probe, tear down); the datapath attaches to it.
//!
//! ```no_run
//! # use flowgate::lab::{Lab, LabSpec, LabPod, ProbeEnd, Outcome};
//! # use flowgate_policy::model::Protocol;
//! # use std::time::Duration;
//! # fn main() -> Result<(), flowgate::lab::LabError> {
//! let spec = LabSpec {
//!     pods: vec![
//!         LabPod { key: "x/a".into(), ips: vec!["10.0.0.1".parse().unwrap()], ports: vec![(Protocol::Tcp, 80)] },
//!         LabPod { key: "x/b".into(), ips: vec!["10.0.0.2".parse().unwrap()], ports: vec![(Protocol::Tcp, 80)] },
//!     ],
//!     ..LabSpec::default()
//! };
//! let lab = Lab::build(&spec)?;                 // everything lives under /run/netns/fglab-<pid>-<seq>-*
//! let _ifindex = lab.host_ifindex("x/b");       // attach the datapath here, inside lab.node_netns()
//! let seen = lab.probe(&ProbeEnd::parse("x/a"), "10.0.0.2".parse().unwrap(), Protocol::Tcp, Some(80), Duration::from_secs(2));
//! assert_eq!(seen.outcome, Outcome::Reached);
//! drop(lab);                                    // removes every namespace, veth and route it made
//! # Ok(()) }
//! ```
//!
//! Cleanup: `Drop` (and `teardown`, which reports errors) removes everything; a failed `build`
//! removes what it made; `build` first removes stale labs whose owner process died (SIGKILL,
//! crash); for Ctrl-C, call `install_interrupt_cleanup()` once at start-up, or call
//! `remove_all_labs()` from your own signal handling thread (see their docs).

mod error;
mod netns;
mod packet;
mod probe;
mod registry;
mod servers;
mod spec;
mod topology;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flowgate_policy::model::Protocol;
use nix::net::if_::if_nametoindex;

pub use error::{LabError, ProbeFailure};
pub use probe::{LabProbe, Observed, Outcome, PROBE_PARALLELISM, ProbeEnd};
pub use registry::{LabId, install_interrupt_cleanup, remove_all_labs};
pub use spec::{
    BRIDGE, EndpointKind, GATEWAY_V4, GATEWAY_V6, LabPod, LabSpec, LabWiring, MAX_BRIDGE_PORTS,
    MAX_ENDPOINTS,
};

use netns::Netns;
use probe::Job;
use servers::Servers;
use spec::{EndpointPlan, Plan};

/// A lab node with its pods and external endpoints, their servers running. Dropping it removes
/// every namespace (and with them every interface and route) it created.
#[derive(Debug)]
pub struct Lab {
    id: LabId,
    wiring: LabWiring,
    node_name: String,
    node_path: PathBuf,
    node: Option<Netns>,
    endpoints: Vec<Endpoint>,
    servers: Option<Servers>,
    /// Every namespace this lab may have created; emptied once removed.
    netns_names: Vec<String>,
    stale_removed: Vec<String>,
    skipped: Vec<String>,
}

#[derive(Debug)]
struct Endpoint {
    plan: EndpointPlan,
    netns: Netns,
    host_ifindex: u32,
}

/// One endpoint of a lab, as callers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointInfo<'lab> {
    /// `namespace/name` for a pod, the address for an external endpoint.
    pub key: &'lab str,
    pub kind: EndpointKind,
    pub ips: &'lab [IpAddr],
    /// Its network namespace, e.g. for `ip netns exec` or `setns`.
    pub netns: &'lab Path,
    /// The host side of its veth pair, in the node namespace (a port of the bridge for the
    /// pods of a bridged lab).
    pub host_ifname: &'lab str,
    pub host_ifindex: u32,
}

impl Lab {
    /// Builds a routed (Calico-style) lab: `build_wired(spec, LabWiring::Routed)`.
    pub fn build(spec: &LabSpec) -> Result<Self, LabError> {
        Self::build_wired(spec, LabWiring::Routed)
    }

    /// Builds the lab: validates `spec`, removes stale labs of dead processes, creates the node
    /// and endpoint namespaces, wires them as `wiring` says, and starts the servers. Refuses
    /// without root (CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN). On any error, whatever was
    /// created is removed.
    pub fn build_wired(spec: &LabSpec, wiring: LabWiring) -> Result<Self, LabError> {
        netns::check_privileges()?;
        let id = LabId::next();
        let plan = spec::plan(spec, id, wiring)?;
        let stale_removed = registry::remove_stale()?;
        let names = plan.netns_names();
        // Registered before anything exists, so a signal during the build still cleans up.
        registry::register(id, names.clone())?;
        let mut lab = Self {
            id,
            wiring,
            node_path: netns::netns_path(&plan.node_netns),
            node_name: plan.node_netns.clone(),
            node: None,
            endpoints: Vec::new(),
            servers: None,
            netns_names: names,
            stale_removed,
            skipped: plan.skipped.clone(),
        };
        // On error `lab` is dropped here, which removes every namespace it may have created.
        lab.wire(plan)?;
        Ok(lab)
    }

    fn wire(&mut self, plan: Plan) -> Result<(), LabError> {
        netns::ip_batch(None, &topology::netns_add_script(&plan))?;
        registry::check_interrupted()?;
        let node = Netns::open(&plan.node_netns)?;
        let namespaces = plan
            .endpoints
            .iter()
            .map(|endpoint| Netns::open(&endpoint.netns))
            .collect::<Result<Vec<_>, _>>()?;

        // Sysctls before any interface exists, so the namespaces' defaults apply to them.
        node.run(|| -> Result<(), LabError> {
            write_all(topology::NODE_SYSCTLS, "")?;
            for netns in &namespaces {
                netns.enter().map_err(|errno| {
                    LabError::sys("entering network namespace", &netns.name, errno)
                })?;
                write_all(topology::ENDPOINT_SYSCTLS, "")?;
            }
            Ok(())
        })??;

        netns::ip_batch(Some(&plan.node_netns), &topology::node_script(&plan))?;
        let ifindexes = node.run(|| {
            if plan
                .endpoints
                .iter()
                .any(|endpoint| plan.on_bridge(endpoint))
            {
                write_all(topology::BRIDGE_SYSCTLS, BRIDGE)?;
            }
            plan.endpoints
                .iter()
                .map(|endpoint| {
                    if !plan.on_bridge(endpoint) {
                        write_all(topology::HOST_IF_SYSCTLS, &endpoint.host_if)?;
                    }
                    if_nametoindex(endpoint.host_if.as_str()).map_err(|errno| {
                        LabError::sys("looking up", endpoint.host_if.clone(), errno)
                    })
                })
                .collect::<Result<Vec<u32>, LabError>>()
        })??;
        for endpoint in &plan.endpoints {
            registry::check_interrupted()?;
            netns::ip_batch(
                Some(&endpoint.netns),
                &topology::endpoint_script(&plan, endpoint),
            )?;
        }

        let mut sockets = Vec::new();
        for (endpoint, netns) in plan.endpoints.iter().zip(&namespaces) {
            sockets.extend(netns.run(|| servers::open(endpoint))??);
        }
        self.servers = Some(Servers::start(sockets)?);
        self.node = Some(node);
        self.endpoints = plan
            .endpoints
            .into_iter()
            .zip(namespaces)
            .zip(ifindexes)
            .map(|((plan, netns), host_ifindex)| Endpoint {
                plan,
                netns,
                host_ifindex,
            })
            .collect();
        Ok(())
    }

    pub fn id(&self) -> LabId {
        self.id
    }

    /// How the node wires its pods.
    pub fn wiring(&self) -> LabWiring {
        self.wiring
    }

    /// The bridge the pods are ports of (`cni0`), in a bridged lab with pods.
    pub fn bridge(&self) -> Option<&'static str> {
        let pods = self
            .endpoints
            .iter()
            .any(|endpoint| endpoint.plan.kind == EndpointKind::Pod);
        (self.wiring == LabWiring::Bridged && pods).then_some(BRIDGE)
    }

    /// The node's network namespace (`/run/netns/fglab-<pid>-<seq>-node`): where the host
    /// veths are and where the datapath attaches.
    pub fn node_netns(&self) -> &Path {
        &self.node_path
    }

    /// The node namespace's name, for `ip -n <name> ...` and `ip netns exec <name> ...`.
    pub fn node_netns_name(&self) -> &str {
        &self.node_name
    }

    /// Every endpoint (pods, then externals), in build order.
    pub fn endpoints(&self) -> impl Iterator<Item = EndpointInfo<'_>> {
        self.endpoints.iter().map(|endpoint| EndpointInfo {
            key: &endpoint.plan.key,
            kind: endpoint.plan.kind,
            ips: &endpoint.plan.ips,
            netns: &endpoint.netns.path,
            host_ifname: &endpoint.plan.host_if,
            host_ifindex: endpoint.host_ifindex,
        })
    }

    /// The endpoint `key` (`namespace/name`, or an external endpoint's address).
    pub fn endpoint(&self, key: &str) -> Option<EndpointInfo<'_>> {
        self.endpoints().find(|endpoint| endpoint.key == key)
    }

    /// The ifindex, in the node namespace, of the host side of `key`'s veth.
    pub fn host_ifindex(&self, key: &str) -> Option<u32> {
        self.endpoint(key).map(|endpoint| endpoint.host_ifindex)
    }

    /// The name, in the node namespace, of the host side of `key`'s veth.
    pub fn host_ifname(&self, key: &str) -> Option<&str> {
        self.endpoint(key).map(|endpoint| endpoint.host_ifname)
    }

    /// Labs of dead processes that this build removed.
    pub fn stale_removed(&self) -> &[String] {
        &self.stale_removed
    }

    /// Pods of the spec left out because they have no IP.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// Runs `f` on a new thread inside the node namespace (e.g. to load and attach eBPF
    /// programs to the host veths); the calling thread stays where it is.
    pub fn in_node<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, LabError> {
        match &self.node {
            Some(node) => node.run(f),
            None => Err(LabError::UnknownEndpoint {
                key: self.node_name.clone(),
            }),
        }
    }

    /// Runs `f` on a new thread inside endpoint `key`'s namespace.
    pub fn in_endpoint<T: Send>(
        &self,
        key: &str,
        f: impl FnOnce() -> T + Send,
    ) -> Result<T, LabError> {
        match self
            .endpoints
            .iter()
            .find(|endpoint| endpoint.plan.key == key)
        {
            Some(endpoint) => endpoint.netns.run(f),
            None => Err(LabError::UnknownEndpoint {
                key: key.to_owned(),
            }),
        }
    }

    /// One real attempt from `from` to `to`, bounded by `timeout`.
    pub fn probe(
        &self,
        from: &ProbeEnd,
        to: IpAddr,
        protocol: Protocol,
        port: Option<u16>,
        timeout: Duration,
    ) -> Observed {
        let probe = LabProbe::new(from.clone(), to, protocol, port);
        self.probe_all(std::slice::from_ref(&probe), timeout)
            .pop()
            .unwrap_or_else(|| Observed::failed(ProbeFailure::Thread))
    }

    /// Runs every probe, up to `PROBE_PARALLELISM` at once, each bounded by `timeout`; the
    /// results are in the order of `probes`. Takes about `timeout` per wave of probes that
    /// time out, much less when they are answered.
    pub fn probe_all(&self, probes: &[LabProbe], timeout: Duration) -> Vec<Observed> {
        let jobs: Vec<_> = probes
            .iter()
            .map(|probe| self.resolve(probe, timeout))
            .collect();
        probe::run_all(&jobs, PROBE_PARALLELISM)
    }

    fn resolve(&self, probe: &LabProbe, timeout: Duration) -> Result<Job<'_>, ProbeFailure> {
        let same_family = |ip: &&IpAddr| ip.is_ipv4() == probe.to.is_ipv4();
        let (endpoint, src) = match &probe.from {
            ProbeEnd::Pod(key) => {
                let endpoint = self
                    .endpoints
                    .iter()
                    .find(|endpoint| &endpoint.plan.key == key);
                let src = endpoint.and_then(|e| e.plan.ips.iter().find(same_family).copied());
                (endpoint, src)
            }
            ProbeEnd::Ip(ip) => {
                let endpoint = self
                    .endpoints
                    .iter()
                    .find(|endpoint| endpoint.plan.ips.contains(ip));
                (endpoint, Some(*ip).filter(|ip| same_family(&ip)))
            }
        };
        let endpoint = endpoint.ok_or_else(|| ProbeFailure::UnknownSource {
            key: probe.from.to_string(),
        })?;
        let src = src.ok_or_else(|| ProbeFailure::NoSourceAddress {
            from: probe.from.to_string(),
            family: if probe.to.is_ipv4() { 4 } else { 6 },
            to: probe.to,
        })?;
        let port = match (probe.protocol, probe.port) {
            (Protocol::Icmp, _) => 0,
            (_, Some(port)) => port,
            (protocol, None) => return Err(ProbeFailure::MissingPort { protocol }),
        };
        Ok(Job {
            netns: &endpoint.netns,
            src,
            dst: probe.to,
            protocol: probe.protocol,
            port,
            timeout,
        })
    }

    /// Reads a sysctl (path below `/proc/sys`, e.g. `net/ipv4/ip_forward`) of the node
    /// namespace.
    pub fn node_sysctl(&self, key: &str) -> Result<String, LabError> {
        self.in_node(|| netns::read_sysctl(key))?
    }

    /// Reads a sysctl of endpoint `endpoint`'s namespace.
    pub fn endpoint_sysctl(&self, endpoint: &str, key: &str) -> Result<String, LabError> {
        self.in_endpoint(endpoint, || netns::read_sysctl(key))?
    }

    /// Tears the lab down now, reporting the first error (`Drop` does the same silently).
    pub fn teardown(mut self) -> Result<(), LabError> {
        self.remove()
    }

    fn remove(&mut self) -> Result<(), LabError> {
        // Sockets and namespace handles first: they keep the namespaces alive in the kernel.
        if let Some(mut servers) = self.servers.take() {
            servers.stop();
        }
        self.endpoints.clear();
        self.node = None;
        let mut first_error = None;
        for name in std::mem::take(&mut self.netns_names) {
            if let Err(error) = netns::delete_netns(&name) {
                first_error.get_or_insert(error);
            }
        }
        registry::unregister(self.id);
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Nothing to report to from a destructor; `teardown` reports.
        let _ = self.remove();
    }
}

/// Writes `sysctls` in the calling thread's namespace, `{if}` replaced by `ifname`.
fn write_all(sysctls: &[(&str, &str)], ifname: &str) -> Result<(), LabError> {
    for (key, value) in sysctls {
        netns::write_sysctl(&key.replace("{if}", ifname), value)?;
    }
    Ok(())
}
