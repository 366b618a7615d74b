//! The watchers: one kube-rs `watcher` per kind (Pods cluster-wide, since peers are selected by
//! labels anywhere; Namespaces; NetworkPolicies), with watch bookmarks and kube's default
//! backoff, each feeding the shared `ClusterStore`. A relist (first start, `410 Gone`, a broken
//! watch) comes as `Init` .. `InitDone` and replaces that kind atomically. An object that fails
//! validation is logged with kind/namespace/name, counted, and skipped; a failing watch is
//! logged, counted, and retried with backoff: nothing here can wedge the agent.

use std::fmt::Debug;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, watcher};
use kube::{Api, Client};
use serde::de::DeserializeOwned;

use super::store::{ClusterStore, Kind, Watched};

/// What the watchers tell the control loop besides the store's content.
pub trait SourceEvents: Send + Sync + 'static {
    /// An object was rejected (already counted in the store).
    fn rejected(&self, kind: Kind);
    /// A list or watch request failed; the watcher backs off and retries.
    fn watch_error(&self, kind: Kind);
}

/// The store shared by the watchers (writers) and the control loop (reader).
#[derive(Debug, Default)]
pub struct Source {
    pub store: Mutex<ClusterStore>,
}

impl Source {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Locks the store (a panicked watcher task cannot poison it for the rest).
    pub fn lock(&self) -> std::sync::MutexGuard<'_, ClusterStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A client from `--kubeconfig`, or inferred: `$KUBECONFIG` / `~/.kube/config`, else the
/// in-cluster service account (what a DaemonSet pod has).
pub async fn client(kubeconfig: Option<&Path>) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}: cannot read it", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("--kubeconfig {}: not usable", path.display()))?
        }
        None => kube::Config::infer().await.context(
            "no Kubernetes configuration: not in a cluster (no service account) and no kubeconfig; give --kubeconfig",
        )?,
    };
    Client::try_from(config).context("cannot create the Kubernetes client")
}

/// Starts the three watchers on the current tokio runtime.
pub fn spawn(client: &Client, source: &Arc<Source>, events: Arc<dyn SourceEvents>) {
    tokio::spawn(run::<core::Namespace>(
        client.clone(),
        Arc::clone(source),
        Arc::clone(&events),
    ));
    tokio::spawn(run::<core::Pod>(
        client.clone(),
        Arc::clone(source),
        Arc::clone(&events),
    ));
    tokio::spawn(run::<net::NetworkPolicy>(
        client.clone(),
        Arc::clone(source),
        events,
    ));
}

/// One watcher of kind `K`, forever: events into the store, errors logged and counted. The
/// watch itself is untyped (`DynamicObject`): each object is decoded on its own, so one that
/// the typed decoder cannot read is rejected alone instead of failing the whole list (which
/// would relist forever and never sync).
pub async fn run<K>(client: Client, source: Arc<Source>, events: Arc<dyn SourceEvents>)
where
    K: Watched + DeserializeOwned + Debug + Send + 'static,
{
    let kind = K::KIND;
    let api: Api<DynamicObject> = Api::all_with(client, &ApiResource::erase::<K>(&()));
    let mut stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut failing = false;
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                failing = false;
                let applied = source.lock().handle_dynamic::<K>(event, Instant::now());
                if let Some(rejected) = applied.rejected {
                    eprintln!("flowgate agent: skipped {rejected}");
                    events.rejected(kind);
                }
                if applied.synced {
                    let (ns, pods, policies) = source.lock().counts();
                    eprintln!(
                        "flowgate agent: {kind} watch synced ({ns} namespaces, {pods} pods, {policies} network policies held)"
                    );
                }
            }
            Err(error) => {
                events.watch_error(kind);
                // One line per failure streak, not per retry.
                if !failing {
                    eprintln!(
                        "flowgate agent: {kind} watch failed: {error}; retrying with backoff"
                    );
                }
                failing = true;
            }
        }
    }
}
