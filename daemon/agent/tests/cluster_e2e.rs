//! Kubernetes mode end to end without a cluster: the real `flowgate agent` binary watches a
//! fake API server that speaks the real list/watch protocol, finds its pods' interfaces on a
//! lab node, enforces on real traffic, and follows the cluster: a policy edit, a label change,
//! a watch that expires (410 Gone, relist, a delete it missed), a malformed object, a local pod
//! whose interface does not exist. Needs root; CI runs as root.
//!
//! ```text
//!   netns fglab-..-node (the agent's "host")                 pod netns x/a, x/b, y/c
//!   +--------------------------------------------------+    +-----------------+
//!   | fake API server 127.0.0.1:<api>  <── list/watch ──┐   | 10.61.0.{1,2,3} |
//!   | flowgate agent --kubeconfig --node-name n1 ───────┘   |  servers :80    |
//!   |   HTTP 127.0.0.1:<http>; TC on fg..h0/h1/h2 ──────────── veths ───────────|
//!   +--------------------------------------------------+    +-----------------+
//!   y/remote (10.61.9.9, node n2) exists only in the API: a peer, not a local pod.
//! ```

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

mod fake_apiserver;
#[path = "cluster_e2e/harness.rs"]
mod harness;

use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApi;
use flowgate::lab::{Lab, LabSpec};
use harness::*;
use serde_json::{Value, json};

#[test]
fn the_agent_follows_the_api_server_and_enforces_on_real_traffic() {
    require_root!();
    let mut objects = three_pods("10.61.0");
    objects.push(pod("y", "remote", "n2", "10.61.9.9", "c"));
    // The lab holds this node's pods only; the remote pod exists only in the API.
    let local: Vec<Value> = objects
        .iter()
        .filter(|o| o["kind"] != "Pod" || o["spec"]["nodeName"] == NODE)
        .cloned()
        .collect();
    let lab = Lab::build(&LabSpec::from_cluster(&oracle(&local))).expect("the lab builds");

    let api = FakeApi::new();
    for o in &objects {
        api.set(o.clone());
    }
    // The NetworkPolicy list is held: the agent must not call itself ready (nor apply a
    // snapshot built without the policies) until it has them.
    api.hold_lists_of(&["NetworkPolicy"]);
    // One pod the typed decoder cannot read (a port as a word) must cost only itself, not the
    // whole pod list: the agent still syncs, and says which object it skipped.
    let mut garbled = pod("x", "garbled", NODE, "10.61.7.7", "a");
    garbled["spec"]["containers"][0]["ports"] = json!([{"containerPort": "eighty"}]);
    api.set(garbled);
    let api_addr = serve(&lab, &api);
    let http_addr = free_addr(&lab);
    let dir = std::env::temp_dir().join(format!("flowgate-cluster-e2e-{}", std::process::id()));
    let agent = start_agent(&lab, api_addr, http_addr, &dir, &["--no-pin"]);

    // Not ready while a watch has not synced, and nothing applied.
    wait_for(
        "/readyz naming the watch it waits for",
        &agent,
        Duration::from_secs(30),
        || {
            get(&lab, http_addr, "/readyz").is_some_and(|(status, body)| {
                status == 503 && body.contains("waiting for the NetworkPolicy watch to sync")
            })
        },
    );
    assert_eq!(
        generation(&lab, http_addr),
        0.0,
        "nothing applied before every watch synced"
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = get(&lab, http_addr, "/readyz").unwrap();
    assert_eq!(
        status, 503,
        "still not ready while the policies are not listed"
    );
    // Ready: every watch synced and the first snapshot applied.
    let released = Instant::now();
    api.release_lists();
    wait_for("/readyz", &agent, Duration::from_secs(30), || {
        get(&lab, http_addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    eprintln!(
        "ready {:.0} ms after the last list was answered",
        released.elapsed().as_secs_f64() * 1e3
    );
    assert!(
        agent
            .log()
            .contains("skipped Pod x/garbled: cannot be decoded as a Pod"),
        "{}",
        agent.log()
    );
    let first = generation(&lab, http_addr);
    assert!(first >= 1.0, "a generation is applied when ready");
    for kind in ["Namespace", "Pod", "NetworkPolicy"] {
        assert!(
            api.lists_of(kind) >= 1,
            "{kind} was listed: {:?}",
            api.requests()
        );
        assert!(
            api.requests()
                .iter()
                .any(|(k, w, rv)| k == kind && w == "watch" && rv.is_some()),
            "{kind} is watched from the listed resourceVersion: {:?}",
            api.requests()
        );
    }
    converge(&lab, &oracle(&objects), "initial state", &agent, released);
    let (_, policies) = get(&lab, http_addr, "/v1/policies").unwrap();
    let policies: Value = serde_json::from_str(&policies).unwrap();
    let enforced: Vec<&str> = policies["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pod"].as_str().unwrap())
        .collect();
    assert_eq!(
        enforced,
        ["x/a", "x/b", "y/c"],
        "the local pods, not y/remote"
    );
    assert_eq!(
        metric(
            &lab,
            http_addr,
            r#"flowgate_map_entries{map="FG_ENDPOINTS"}"#
        ),
        Some(3.0),
        "map fill counts the three local endpoints"
    );
    assert!(
        metric(&lab, http_addr, r#"flowgate_map_capacity{map="FG_POLICY"}"#)
            .is_some_and(|c| c >= 1024.0)
    );

    // A policy added through the API: y is closed to everyone.
    objects.push(deny_y());
    let changed = Instant::now();
    api.set(deny_y());
    converge(
        &lab,
        &oracle(&objects),
        "NetworkPolicy y/deny-all created",
        &agent,
        changed,
    );
    let synced = metric(&lab, http_addr, "flowgate_policy_sync_seconds_count").unwrap();
    assert!(synced >= 1.0, "API event to maps is measured");

    // A label change: y/c loses app=c, so it may no longer reach x/a.
    let mut relabelled = None;
    for o in &mut objects {
        if o["kind"] == "Pod" && o["metadata"]["name"] == "c" {
            o["metadata"]["labels"]["app"] = json!("z");
            relabelled = Some(o.clone());
        }
    }
    let changed = Instant::now();
    api.set(relabelled.unwrap());
    converge(
        &lab,
        &oracle(&objects),
        "Pod y/c relabelled",
        &agent,
        changed,
    );

    // x/a's veth is deleted and recreated, as a CNI does when a sandbox is recreated: a new
    // ifindex under the same name. The agent must attach to the new interface; until it has,
    // b -> a would pass (nothing on the new veth), so the probes show when it did.
    let changed = Instant::now();
    recreate_veth(&lab, "x/a");
    converge(
        &lab,
        &oracle(&objects),
        "x/a's veth recreated",
        &agent,
        changed,
    );

    // The watch history is compacted and the watches cut: the agent resumes from an expired
    // resourceVersion, gets 410 Gone, relists, and sees the delete it missed meanwhile.
    let pod_lists = api.lists_of("Pod");
    let policy_lists = api.lists_of("NetworkPolicy");
    api.hold_watches();
    api.cut_watches();
    api.delete("NetworkPolicy", "y", "deny-all");
    objects.retain(|o| o["metadata"]["name"] != "deny-all");
    api.compact();
    api.release_watches();
    wait_for(
        "the relist after 410",
        &agent,
        Duration::from_secs(30),
        || api.lists_of("NetworkPolicy") > policy_lists && api.lists_of("Pod") > pod_lists,
    );
    wait_for(
        "the missed delete applied",
        &agent,
        Duration::from_secs(10),
        || get(&lab, http_addr, "/v1/policies").is_some_and(|(_, body)| !body.contains("deny-all")),
    );
    check_traffic(&lab, &oracle(&objects), "after the relist", &agent);

    // A malformed policy (the API server would not have it; a version skew could): logged with
    // its name, counted, skipped; everything else goes on.
    let mut bad = allow_from_c();
    bad["metadata"]["name"] = json!("broken");
    bad["spec"]["ingress"][0]["from"] = json!([{"ipBlock": {"cidr": "10.0.0.0/33"}}]);
    api.set(bad);
    wait_for(
        "the rejection counted",
        &agent,
        Duration::from_secs(10),
        || {
            metric(
                &lab,
                http_addr,
                r#"flowgate_source_objects_rejected_total{kind="NetworkPolicy"}"#,
            ) == Some(1.0)
                // The garbled pod, once per list (the relist after 410 saw it again).
                && metric(
                    &lab,
                    http_addr,
                    r#"flowgate_source_objects_rejected_total{kind="Pod"}"#,
                )
                .is_some_and(|n| n >= 1.0)
        },
    );
    assert!(
        agent
            .log()
            .contains("NetworkPolicy x/broken: spec.ingress[0].from[0].ipBlock.cidr"),
        "the log names the object and field:\n{}",
        agent.log()
    );
    check_traffic(
        &lab,
        &oracle(&objects),
        "after the malformed policy",
        &agent,
    );

    // A NetworkPolicy deleted (a live DELETED event): x/a is open again.
    objects.retain(|o| o["metadata"]["name"] != "a-from-c");
    let changed = Instant::now();
    api.delete("NetworkPolicy", "x", "a-from-c");
    converge(
        &lab,
        &oracle(&objects),
        "NetworkPolicy x/a-from-c deleted",
        &agent,
        changed,
    );

    // A local pod whose interface does not exist on this node: reported, never silently open.
    api.set(pod("x", "ghost", NODE, "10.61.5.5", "a"));
    wait_for(
        "the unenforced pod reported",
        &agent,
        Duration::from_secs(10),
        || {
            get(&lab, http_addr, "/v1/policies").is_some_and(|(_, body)| {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                v["unenforced"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|p| p["pod"] == "x/ghost"))
            })
        },
    );
    let unenforced: f64 = get(&lab, http_addr, "/metrics")
        .unwrap()
        .1
        .lines()
        .filter(|l| l.starts_with("flowgate_pods_unenforced{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(unenforced, 1.0, "one pod unenforced");
    assert!(
        agent.log().contains("pod x/ghost is NOT enforced"),
        "{}",
        agent.log()
    );

    // Flow records name the policy that decided.
    let records = agent.stdout.lock().unwrap().clone();
    let denies: Vec<Value> = records
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["record_type"] == "flow" && r["verdict"] == "deny")
        .collect();
    assert!(
        denies.iter().any(|r| r["policy"]["isolated_by"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "a-from-c"))),
        "a deny names the isolating policy; {} records",
        records.len()
    );

    // SIGTERM: a clean stop.
    let mut agent = agent;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(i32::try_from(agent.child.id()).unwrap(), libc::SIGTERM) };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = agent.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent stops on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit {status:?}:\n{}", agent.log());
    drop(agent);
    lab.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let _: Option<IpAddr> = None;
}

/// Flannel-style node: the pods are ports of the bridge cni0. The agent must find each pod's
/// veth through the bridge's neighbour and forwarding tables (resolving a MAC it has not seen
/// yet without sending the pod a packet), and enforce there.
#[test]
fn on_a_bridged_node_the_agent_finds_the_pods_behind_the_bridge_and_enforces() {
    require_root!();
    let mut objects = three_pods("10.62.0");
    let lab = Lab::build_wired(
        &LabSpec::from_cluster(&oracle(&objects)),
        flowgate::lab::LabWiring::Bridged,
    )
    .expect("the bridged lab builds");
    let api = FakeApi::new();
    for o in &objects {
        api.set(o.clone());
    }
    let api_addr = serve(&lab, &api);
    let http_addr = free_addr(&lab);
    let dir = std::env::temp_dir().join(format!("flowgate-cluster-bridged-{}", std::process::id()));
    let agent = start_agent(&lab, api_addr, http_addr, &dir, &["--no-pin"]);
    let started = Instant::now();
    wait_for("/readyz", &agent, Duration::from_secs(30), || {
        get(&lab, http_addr, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    // Every local pod enforced (none left pending behind the bridge).
    wait_for(
        "every pod attached",
        &agent,
        Duration::from_secs(20),
        || {
            get(&lab, http_addr, "/v1/policies").is_some_and(|(_, body)| {
                let v: Value = serde_json::from_str(&body).unwrap_or_default();
                v["endpoints"].as_array().is_some_and(|e| e.len() == 3)
                    && v["unenforced"].as_array().is_some_and(Vec::is_empty)
            })
        },
    );
    converge(
        &lab,
        &oracle(&objects),
        "bridged: initial state",
        &agent,
        started,
    );
    objects.push(deny_y());
    let changed = Instant::now();
    api.set(deny_y());
    converge(
        &lab,
        &oracle(&objects),
        "bridged: y/deny-all created",
        &agent,
        changed,
    );
    drop(agent);
    lab.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Deletes and recreates the veth pair of a routed lab pod (same names and addresses, a new
/// ifindex), wired as the lab wires it.
fn recreate_veth(lab: &Lab, pod: &str) {
    let e = lab.endpoints().find(|e| e.key == pod).unwrap();
    let pod_netns = e.netns.file_name().unwrap().to_str().unwrap().to_owned();
    let (host_if, ip) = (e.host_ifname.to_owned(), e.ips[0]);
    let ip_batch = |netns: &str, script: &str| {
        let mut batch = Command::new("ip")
            .args(["-n", netns, "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        batch
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(batch.wait().unwrap().success(), "ip -n {netns}: {script}");
    };
    let node = lab.node_netns_name().to_owned();
    ip_batch(&node, &format!("link del {host_if}\n"));
    ip_batch(
        &node,
        &format!(
            "link add {host_if} type veth peer name eth0 netns {pod_netns}\nlink set {host_if} up\n\
             route add {ip}/32 dev {host_if}\n"
        ),
    );
    lab.in_node(|| {
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{host_if}/proxy_arp"), "1").unwrap();
        std::fs::write(
            format!("/proc/sys/net/ipv4/neigh/{host_if}/proxy_delay"),
            "0",
        )
        .unwrap();
    })
    .unwrap();
    ip_batch(
        &pod_netns,
        &format!(
            "link set eth0 up\naddress add {ip}/32 dev eth0\n\
             route add 169.254.1.1/32 dev eth0 scope link\nroute add 0.0.0.0/0 via 169.254.1.1 dev eth0\n"
        ),
    );
}
