//! `InterfaceTracker`: which host interface each local pod has, kept true as pods come and go
//! and veths are recreated. The agent calls `reconcile` with the pods it wants enforced and
//! attaches/detaches the datapath as the returned changes say; the tracker does no eBPF.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::{DiscoveryError, HostInterface, Resolver};

/// What changed in one `reconcile` pass. Apply `detach` before `attach`: a pod whose veth was
/// recreated appears in both (old interface, new interface).
#[derive(Debug, Default)]
pub struct TrackerChanges {
    /// Pods to attach the datapath to, with their (new) interface.
    pub attach: Vec<(String, HostInterface)>,
    /// Pods to detach from an interface they no longer have (removed, recreated, unresolvable).
    pub detach: Vec<(String, HostInterface)>,
    /// Desired pods without an interface: NOT enforced. `Pending` ones are normal for a moment
    /// (bridged pods before their first frame); every one is retried on the next pass.
    pub unresolved: Vec<(String, DiscoveryError)>,
}

impl TrackerChanges {
    /// Nothing to attach or detach, and no pod unresolved.
    pub fn is_empty(&self) -> bool {
        self.attach.is_empty() && self.detach.is_empty() && self.unresolved.is_empty()
    }
}

/// The kernel lookups the tracker needs; `Resolver` in production, a table in unit tests.
trait Lookup {
    fn resolve_pod(&mut self, ips: &[IpAddr]) -> Result<HostInterface, DiscoveryError>;
    fn interface_exists(&mut self, interface: &HostInterface) -> Result<bool, DiscoveryError>;
}

impl Lookup for Resolver {
    fn resolve_pod(&mut self, ips: &[IpAddr]) -> Result<HostInterface, DiscoveryError> {
        Resolver::resolve_pod(self, ips)
    }

    fn interface_exists(&mut self, interface: &HostInterface) -> Result<bool, DiscoveryError> {
        Resolver::interface_exists(self, interface)
    }
}

#[derive(Debug, Clone)]
struct Tracked {
    ips: Vec<IpAddr>,
    interface: HostInterface,
}

/// Pod key (`namespace/name`) -> its IPs and host interface, for the pods resolved so far.
#[derive(Debug, Default)]
pub struct InterfaceTracker {
    pods: BTreeMap<String, Tracked>,
}

impl InterfaceTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// One pass, in the calling thread's network namespace: `desired` is every local pod to
    /// enforce (key, IPs). New pods are resolved; tracked pods are re-resolved, so a veth that
    /// was recreated (new ifindex) or a pod that moved is noticed; pods no longer desired are
    /// dropped. A tracked pod whose re-resolution is merely `Pending` (a bridge's FDB entry
    /// aged out) keeps its interface while that interface still exists with the same ifindex
    /// and name. Unresolved pods are retried on every pass.
    pub fn reconcile(&mut self, desired: &[(String, Vec<IpAddr>)]) -> TrackerChanges {
        match Resolver::open() {
            Ok(mut resolver) => self.reconcile_with(&mut resolver, desired),
            Err(error) => self.reconcile_with(&mut Unavailable(error), desired),
        }
    }

    fn reconcile_with(
        &mut self,
        lookup: &mut impl Lookup,
        desired: &[(String, Vec<IpAddr>)],
    ) -> TrackerChanges {
        let mut changes = TrackerChanges::default();
        let wanted: BTreeSet<&str> = desired.iter().map(|(pod, _)| pod.as_str()).collect();
        let gone: Vec<String> = self
            .pods
            .keys()
            .filter(|pod| !wanted.contains(pod.as_str()))
            .cloned()
            .collect();
        for pod in gone {
            if let Some(tracked) = self.pods.remove(&pod) {
                changes.detach.push((pod, tracked.interface));
            }
        }

        let mut seen = BTreeSet::new();
        for (pod, ips) in desired {
            if !seen.insert(pod.as_str()) {
                continue;
            }
            let result = if ips.is_empty() {
                Err(DiscoveryError::NoIp)
            } else {
                lookup.resolve_pod(ips)
            };
            let tracked = self.pods.get(pod);
            match (tracked, result) {
                (None, Ok(interface)) => {
                    changes.attach.push((pod.clone(), interface.clone()));
                    self.track(pod, ips, interface);
                }
                (None, Err(error)) => changes.unresolved.push((pod.clone(), error)),
                (Some(old), Ok(interface)) if old.interface == interface => {
                    self.track(pod, ips, interface);
                }
                (Some(old), Ok(interface)) => {
                    changes.detach.push((pod.clone(), old.interface.clone()));
                    changes.attach.push((pod.clone(), interface.clone()));
                    self.track(pod, ips, interface);
                }
                (Some(old), Err(error))
                    if old.ips == *ips && keeps(lookup, &old.interface, &error) => {}
                (Some(old), Err(error)) => {
                    changes.detach.push((pod.clone(), old.interface.clone()));
                    changes.unresolved.push((pod.clone(), error));
                    self.pods.remove(pod);
                }
            }
        }
        changes
    }

    fn track(&mut self, pod: &str, ips: &[IpAddr], interface: HostInterface) {
        self.pods.insert(
            pod.to_owned(),
            Tracked {
                ips: ips.to_vec(),
                interface,
            },
        );
    }

    /// Forgets `pod` (e.g. after attaching the datapath to its interface failed): the next pass
    /// resolves it afresh and lists it in `attach` again. Returns the interface it had.
    pub fn forget(&mut self, pod: &str) -> Option<HostInterface> {
        self.pods.remove(pod).map(|tracked| tracked.interface)
    }

    /// The interface of `pod`, if resolved.
    pub fn get(&self, pod: &str) -> Option<&HostInterface> {
        self.pods.get(pod).map(|tracked| &tracked.interface)
    }

    /// Every resolved pod with its interface, by pod key.
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, &HostInterface)> {
        self.pods
            .iter()
            .map(|(pod, tracked)| (pod.as_str(), &tracked.interface))
    }

    pub fn len(&self) -> usize {
        self.pods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pods.is_empty()
    }
}

/// Whether a tracked pod keeps `interface` although its re-resolution failed with `error`: a
/// bridged pod is `Pending` again when the bridge's FDB entry ages out, and a netlink failure
/// says nothing about the pod; both keep an interface that still exists (or may: netlink down).
fn keeps(lookup: &mut impl Lookup, interface: &HostInterface, error: &DiscoveryError) -> bool {
    match error {
        DiscoveryError::Pending { .. } => matches!(lookup.interface_exists(interface), Ok(true)),
        DiscoveryError::Netlink { .. } => !matches!(lookup.interface_exists(interface), Ok(false)),
        _ => false,
    }
}

/// No netlink socket could be opened: nothing resolves, tracked pods are kept as they are.
struct Unavailable(DiscoveryError);

impl Lookup for Unavailable {
    fn resolve_pod(&mut self, _: &[IpAddr]) -> Result<HostInterface, DiscoveryError> {
        Err(self.0.clone())
    }

    fn interface_exists(&mut self, _: &HostInterface) -> Result<bool, DiscoveryError> {
        Err(self.0.clone())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::io;
    use std::sync::Arc;

    use super::super::{MacAddr, PendingOn, Wiring};
    use super::*;

    /// The node as a table: IP -> what resolving it gives, and the interfaces that exist.
    #[derive(Default)]
    struct Table {
        ips: BTreeMap<IpAddr, Result<HostInterface, DiscoveryError>>,
        links: BTreeSet<(u32, String)>,
        netlink_down: bool,
    }

    impl Lookup for Table {
        fn resolve_pod(&mut self, ips: &[IpAddr]) -> Result<HostInterface, DiscoveryError> {
            if self.netlink_down {
                return Err(netlink_down());
            }
            let ip = ips[0];
            self.ips
                .get(&ip)
                .cloned()
                .unwrap_or(Err(DiscoveryError::NoRoute {
                    ip,
                    kernel: "Network is unreachable".into(),
                }))
        }

        fn interface_exists(&mut self, interface: &HostInterface) -> Result<bool, DiscoveryError> {
            if self.netlink_down {
                return Err(netlink_down());
            }
            Ok(self
                .links
                .contains(&(interface.ifindex, interface.ifname.clone())))
        }
    }

    fn netlink_down() -> DiscoveryError {
        DiscoveryError::Netlink {
            ip: None,
            operation: "socket",
            source: Arc::new(io::Error::from_raw_os_error(libc::EMFILE)),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn veth(ifindex: u32, name: &str) -> HostInterface {
        HostInterface {
            ifindex,
            ifname: name.to_owned(),
            wiring: Wiring::Bridged {
                bridge: "cni0".into(),
            },
        }
    }

    impl Table {
        fn wire(&mut self, address: &str, interface: &HostInterface) {
            self.links
                .insert((interface.ifindex, interface.ifname.clone()));
            self.ips.insert(ip(address), Ok(interface.clone()));
        }

        fn pending(&mut self, address: &str) {
            self.ips.insert(
                ip(address),
                Err(DiscoveryError::Pending {
                    ip: ip(address),
                    bridge: "cni0".into(),
                    what: PendingOn::BridgePort {
                        mac: MacAddr([2, 0, 0, 0, 0, 1]),
                        triggered: true,
                    },
                }),
            );
        }
    }

    fn desired(pods: &[(&str, &str)]) -> Vec<(String, Vec<IpAddr>)> {
        pods.iter()
            .map(|(pod, address)| ((*pod).to_owned(), vec![ip(address)]))
            .collect()
    }

    fn pods<T>(list: &[(String, T)]) -> Vec<&str> {
        list.iter().map(|(pod, _)| pod.as_str()).collect()
    }

    #[test]
    fn first_pass_attaches_and_a_quiet_pass_changes_nothing() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        table.wire("10.0.0.2", &veth(6, "veth-b"));
        let mut tracker = InterfaceTracker::new();
        let want = desired(&[("x/a", "10.0.0.1"), ("x/b", "10.0.0.2")]);
        let first = tracker.reconcile_with(&mut table, &want);
        assert_eq!(pods(&first.attach), ["x/a", "x/b"], "{first:?}");
        assert!(first.detach.is_empty() && first.unresolved.is_empty());
        assert_eq!(tracker.get("x/b"), Some(&veth(6, "veth-b")));
        let second = tracker.reconcile_with(&mut table, &want);
        assert!(second.is_empty(), "nothing changed: {second:?}");
    }

    #[test]
    fn a_recreated_interface_is_detached_and_the_new_one_attached() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        let mut tracker = InterfaceTracker::new();
        let want = desired(&[("x/a", "10.0.0.1")]);
        tracker.reconcile_with(&mut table, &want);
        table.links.clear();
        table.wire("10.0.0.1", &veth(9, "veth-a"));
        let changes = tracker.reconcile_with(&mut table, &want);
        assert_eq!(changes.detach, [("x/a".to_owned(), veth(5, "veth-a"))]);
        assert_eq!(changes.attach, [("x/a".to_owned(), veth(9, "veth-a"))]);
        assert!(changes.unresolved.is_empty());
    }

    #[test]
    fn a_removed_pod_is_detached() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        table.wire("10.0.0.2", &veth(6, "veth-b"));
        let mut tracker = InterfaceTracker::new();
        tracker.reconcile_with(
            &mut table,
            &desired(&[("x/a", "10.0.0.1"), ("x/b", "10.0.0.2")]),
        );
        let changes = tracker.reconcile_with(&mut table, &desired(&[("x/b", "10.0.0.2")]));
        assert_eq!(changes.detach, [("x/a".to_owned(), veth(5, "veth-a"))]);
        assert!(changes.attach.is_empty() && changes.unresolved.is_empty());
        assert_eq!(tracker.len(), 1);
    }

    #[test]
    fn an_unresolved_pod_is_retried_until_it_resolves() {
        let mut table = Table::default();
        let mut tracker = InterfaceTracker::new();
        let want = desired(&[("x/a", "10.0.0.1")]);
        let first = tracker.reconcile_with(&mut table, &want);
        assert!(matches!(
            first.unresolved.as_slice(),
            [(pod, DiscoveryError::NoRoute { .. })] if pod == "x/a"
        ));
        table.pending("10.0.0.1");
        let second = tracker.reconcile_with(&mut table, &want);
        assert!(second.unresolved[0].1.is_pending(), "{second:?}");
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        let third = tracker.reconcile_with(&mut table, &want);
        assert_eq!(third.attach, [("x/a".to_owned(), veth(5, "veth-a"))]);
        assert!(third.unresolved.is_empty());
    }

    #[test]
    fn pending_keeps_an_interface_that_still_exists_and_only_that() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        let mut tracker = InterfaceTracker::new();
        let want = desired(&[("x/a", "10.0.0.1")]);
        tracker.reconcile_with(&mut table, &want);
        // The bridge's FDB entry aged out: pending, but the veth is still there.
        table.pending("10.0.0.1");
        let aged = tracker.reconcile_with(&mut table, &want);
        assert!(aged.is_empty(), "kept: {aged:?}");
        assert_eq!(tracker.get("x/a"), Some(&veth(5, "veth-a")));
        // The veth is gone too: detach, and report the pod as unresolved.
        table.links.clear();
        let gone = tracker.reconcile_with(&mut table, &want);
        assert_eq!(gone.detach, [("x/a".to_owned(), veth(5, "veth-a"))]);
        assert!(gone.unresolved[0].1.is_pending());
        assert!(tracker.is_empty());
    }

    #[test]
    fn a_hard_error_on_a_tracked_pod_detaches_it() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        let mut tracker = InterfaceTracker::new();
        let want = desired(&[("x/a", "10.0.0.1")]);
        tracker.reconcile_with(&mut table, &want);
        table.ips.remove(&ip("10.0.0.1"));
        let changes = tracker.reconcile_with(&mut table, &want);
        assert_eq!(pods(&changes.detach), ["x/a"]);
        assert_eq!(changes.unresolved[0].1.reason(), "no_route");
    }

    #[test]
    fn without_netlink_tracked_pods_stay_and_new_ones_are_unresolved() {
        let mut table = Table::default();
        table.wire("10.0.0.1", &veth(5, "veth-a"));
        let mut tracker = InterfaceTracker::new();
        tracker.reconcile_with(&mut table, &desired(&[("x/a", "10.0.0.1")]));
        table.netlink_down = true;
        let changes = tracker.reconcile_with(
            &mut table,
            &desired(&[
                ("x/a", "10.0.0.1"),
                ("x/b", "10.0.0.2"),
                ("x/c", "10.0.0.3"),
            ]),
        );
        assert!(
            changes.detach.is_empty() && changes.attach.is_empty(),
            "{changes:?}"
        );
        assert_eq!(pods(&changes.unresolved), ["x/b", "x/c"]);
        let no_ip = tracker.reconcile_with(&mut table, &[("x/d".to_owned(), Vec::new())]);
        assert_eq!(pods(&no_ip.detach), ["x/a"], "x/a is no longer desired");
        assert_eq!(no_ip.unresolved[0].1.reason(), "no_ip");
    }
}
