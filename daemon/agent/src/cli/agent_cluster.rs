//! `flowgate agent` in Kubernetes mode: the watchers fill the cluster store; this loop finds
//! the host interface of each local pod (`discovery`), attaches the datapath to it, and
//! recompiles when the debounce says so. `/readyz` turns ready once every watch has synced and
//! the first snapshot is in the maps; until then nothing is applied (on a restart the pinned
//! maps keep the previous policy in force meanwhile). Pods whose interface cannot be found are
//! reported (log, `flowgate_pods_unenforced`, `/v1/policies`), never silently unenforced.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use flowgate_policy::maps::Mode;

use super::Exit;
use super::agent::{Args, Pump, Services};
use crate::datapath::LoadOptions;
use crate::datapath::health::Problem;
use crate::discovery::{HostInterface, InterfaceTracker};
use crate::http::Unenforced;
use crate::k8s::debounce::Debounce;
use crate::k8s::store::Kind;
use crate::k8s::watch::{self, Source, SourceEvents};
use crate::metrics::AgentMetrics;
use crate::node::Node;

/// How often local pods' interfaces are re-checked when nothing changed (a recreated
/// interface, a pod whose interface was not there yet).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
/// ... and while a pod waits for the kernel (a bridged pod's MAC being resolved).
const RECONCILE_PENDING: Duration = Duration::from_millis(100);
/// After adopting a pinned datapath, how long the first apply waits for pods still pending.
const ADOPT_GRACE: Duration = Duration::from_secs(5);
/// How often the datapath is checked for `/healthz` (maps alive, programs attached).
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Watcher errors and rejections go to the metrics.
struct Events(AgentMetrics);

impl SourceEvents for Events {
    fn rejected(&self, kind: Kind) {
        self.0.flows().source_rejected(kind.as_str());
    }

    fn watch_error(&self, kind: Kind) {
        self.0.flows().source_watch_error(kind.as_str());
    }
}

/// SIGTERM (the kubelet stopping the pod) and SIGINT end the loop.
fn stop_on_signals(runtime: &tokio::runtime::Runtime) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("flowgate agent: cannot install the SIGTERM/SIGINT handlers");
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

pub fn run(args: &Args, token: Option<String>) -> anyhow::Result<Exit> {
    let node_name = args.node().to_owned();
    let services = Services::start(args, token)?;
    let client = services
        .runtime
        .block_on(watch::client(args.kubeconfig.as_deref()))?;
    let stop = stop_on_signals(&services.runtime);
    let source = Source::new();
    {
        let _entered = services.runtime.enter();
        watch::spawn(&client, &source, Arc::new(Events(services.metrics.clone())));
    }
    let options = LoadOptions {
        pin_dir: (!args.no_pin).then(|| args.bpffs_dir.clone()),
        ..LoadOptions::default()
    };
    let mut node = Node::on_host(Mode::from(args.mode), &node_name, &options)
        .context("loading the datapath")?;
    node.record_labels.clone_from(&args.record_labels);
    if let Some(why) = node.replaced() {
        eprintln!("flowgate agent: {why}");
    }
    let adopted = node.adopted();
    if let Some((dir, generation)) = &adopted {
        eprintln!(
            "flowgate agent: adopted the pinned datapath at {}: generation {generation} stays in force until this agent's first apply",
            dir.display()
        );
    }
    // The first record says that events may have been missed while no agent was reading.
    if let Some(gap) = node.restart_gap() {
        services.fanout.publish(flowgate_flows::Record::Gap(gap));
    }
    eprintln!(
        "flowgate agent: node {node_name}, mode {:?}: watching the API; API on http://{}",
        node.mode(),
        args.http_addr
    );

    let debounce = Debounce {
        min: Duration::from_millis(args.sync_min_interval_ms),
        max: Duration::from_millis(args.sync_max_interval_ms),
    };
    let mut pump = Pump::new(args.heartbeat_secs);
    let mut last_health = Instant::now();
    let mut tracker = InterfaceTracker::new();
    let mut failed: BTreeMap<String, HostInterface> = BTreeMap::new();
    let mut reported: BTreeMap<String, String> = BTreeMap::new();
    let mut last_reconcile: Option<Instant> = None;
    let mut waiting_pods = false;
    let mut need_apply = true;
    let mut ready = false;
    let started = Instant::now();
    let deadline = args.duration_secs.map(|s| started + Duration::from_secs(s));
    while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
        pump.tick(&mut node, &services)?;
        std::thread::sleep(Duration::from_millis(20));
        if last_health.elapsed() >= HEALTH_EVERY {
            last_health = Instant::now();
            let problem = match node.check_datapath() {
                Ok(problems) if problems.is_empty() => None,
                Ok(problems) => {
                    // A program detached from outside: attach that pod afresh on the next pass
                    // (the stale link pin is replaced); /healthz says so until then.
                    for p in &problems {
                        if let Problem::Detached { ifindex, .. } = p
                            && let Some(pod) = node.pod_on(*ifindex)
                        {
                            tracker.forget(&pod);
                            node.forget_local(&pod);
                            last_reconcile = None;
                        }
                    }
                    Some(
                        problems
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; "),
                    )
                }
                Err(e) => Some(format!("the datapath cannot be read: {e:#}")),
            };
            if let Some(p) = &problem
                && services.api.healthy.load(Ordering::Relaxed)
            {
                eprintln!("flowgate agent: datapath unhealthy: {p}");
            }
            services.api.set_health(problem);
        }
        let (waiting, pending) = {
            let store = source.lock();
            (store.waiting_for(), store.pending())
        };
        if !waiting.is_empty() {
            let kinds: Vec<&str> = waiting.iter().map(|k| k.as_str()).collect();
            services.api.set_not_ready(format!(
                "waiting for the {} watch to sync with the API server",
                kinds.join(", ")
            ));
            continue;
        }
        // Local pods and their interfaces: after a change, and every second regardless (more
        // often while a pod is pending).
        let every = if waiting_pods {
            RECONCILE_PENDING
        } else {
            RECONCILE_EVERY
        };
        let due = last_reconcile
            .is_none_or(|t| t.elapsed() >= every || pending.1.is_some_and(|change| change > t));
        if due {
            last_reconcile = Some(Instant::now());
            let desired = source.lock().local_pods(&node_name);
            let pass = reconcile(
                &mut node,
                &mut tracker,
                &mut failed,
                &desired,
                &services,
                &mut reported,
            );
            need_apply |= pass.changed;
            waiting_pods = pass.pending;
        }
        if !(need_apply || debounce.due(pending.0, pending.1, Instant::now())) {
            continue;
        }
        // Taking over from a previous agent removes the entries of pods not attached yet: give
        // pods still being resolved (bridged, MAC pending) a moment before the first apply.
        if !ready && adopted.is_some() && waiting_pods && started.elapsed() < ADOPT_GRACE {
            continue;
        }
        // The index is applied where it lives, under the lock: watch events wait for the
        // apply (a few ms when little changed) instead of the index being copied or rebuilt.
        let (applied, since, policies) = {
            let mut store = source.lock();
            let since = store.take_pending();
            let cluster = store.cluster();
            let applied = node.apply(cluster);
            if let Ok(stats) = &applied {
                services.applied(&mut node, cluster, stats);
            }
            (applied, since, cluster.policies().count())
        };
        match applied {
            Ok(stats) => {
                if let Some(since) = since {
                    services
                        .metrics
                        .flows()
                        .observe_policy_sync(since.elapsed());
                }
                need_apply = false;
                // Pins of interfaces that are no longer local pods' (deleted veths).
                match node.prune_links() {
                    Ok(removed) if !removed.is_empty() => eprintln!(
                        "flowgate agent: removed the pinned links of gone interfaces: {}",
                        removed.join(", ")
                    ),
                    Ok(_) => {}
                    Err(e) => eprintln!("flowgate agent: pruning pinned links failed: {e:#}"),
                }
                if !ready {
                    ready = true;
                    services.api.ready.store(true, Ordering::Relaxed);
                }
                eprintln!(
                    "flowgate agent: generation {} applied: {} local pods, {} policies, {} map ops, compile {:.1} ms, write {:.1} ms",
                    stats.generation,
                    node.snapshot().endpoints.len(),
                    policies,
                    stats.ops,
                    stats.compile.as_secs_f64() * 1e3,
                    stats.write.as_secs_f64() * 1e3
                );
            }
            Err(e) => {
                // The previous generation stays in force; try again on the next pass.
                need_apply = true;
                eprintln!("flowgate agent: applying the cluster state failed: {e:#}; retrying");
            }
        }
    }
    services.finish(&mut node, &pump, started)?;
    Ok(Exit::Ok)
}

/// What one reconcile pass found.
struct Pass {
    /// The set of enforced pods changed: a recompile is due.
    changed: bool,
    /// Some pod waits for the kernel (retry soon).
    pending: bool,
}

/// Brings the attached interfaces in line with the local pods.
fn reconcile(
    node: &mut Node,
    tracker: &mut InterfaceTracker,
    failed: &mut BTreeMap<String, HostInterface>,
    desired: &[(String, Vec<std::net::IpAddr>)],
    services: &Services,
    reported: &mut BTreeMap<String, String>,
) -> Pass {
    let changes = tracker.reconcile(desired);
    let pending = changes.unresolved.iter().any(|(_, e)| e.is_pending());
    let mut changed = false;
    for (pod, _) in &changes.detach {
        node.forget_local(pod);
        changed = true;
    }
    let mut unenforced: Vec<Unenforced> = changes
        .unresolved
        .iter()
        .map(|(pod, error)| Unenforced {
            pod: pod.clone(),
            reason: error.reason().to_owned(),
            detail: error.to_string(),
        })
        .collect();
    // New interfaces, and the ones an attach failed on before (still the pod's interface).
    for (pod, _) in &changes.detach {
        failed.remove(pod);
    }
    let retry: Vec<(String, HostInterface)> = std::mem::take(failed)
        .into_iter()
        .filter(|(pod, iface)| tracker.get(pod) == Some(iface))
        .collect();
    for (pod, iface) in changes.attach.iter().chain(&retry) {
        let ips = desired
            .iter()
            .find(|(p, _)| p == pod)
            .map_or(&[][..], |(_, ips)| ips.as_slice());
        match node.attach_local(pod, ips, &iface.ifname, iface.ifindex) {
            Ok(()) => changed = true,
            Err(e) => {
                unenforced.push(Unenforced {
                    pod: pod.clone(),
                    reason: "attach_failed".into(),
                    detail: format!("attaching to {}: {e:#}", iface.ifname),
                });
                failed.insert(pod.clone(), iface.clone());
            }
        }
    }
    // One log line per pod and problem, and one when it is solved.
    let now: BTreeMap<String, String> = unenforced
        .iter()
        .map(|u| (u.pod.clone(), u.detail.clone()))
        .collect();
    for (pod, detail) in &now {
        if reported.get(pod) != Some(detail) {
            eprintln!("flowgate agent: pod {pod} is NOT enforced: {detail}");
        }
    }
    for pod in reported.keys() {
        if !now.contains_key(pod) && desired.iter().any(|(p, _)| p == pod) {
            eprintln!("flowgate agent: pod {pod} is enforced now");
        }
    }
    *reported = now;
    let mut by_reason: BTreeMap<&str, u64> = BTreeMap::new();
    for u in &unenforced {
        *by_reason.entry(u.reason.as_str()).or_default() += 1;
    }
    let by_reason: Vec<(&str, u64)> = by_reason.into_iter().collect();
    services.metrics.flows().set_pods_unenforced(&by_reason);
    services.api.set_unenforced(unenforced);
    Pass { changed, pending }
}
