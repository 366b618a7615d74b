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

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fake_apiserver::FakeApi;
use flowgate::lab::{Lab, LabProbe, LabSpec, ProbeEnd};
use flowgate_policy::evaluate::{Flow, Verdict, evaluate};
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};
use serde_json::{Value, json};

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const NODE: &str = "n1";

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "labels": {"app": app},
                        "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
           "spec": {"nodeName": node, "containers": [{"name": "c",
                    "ports": [{"name": "http", "containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// x/a accepts TCP 80 only from pods labelled app=c in namespace y.
fn allow_from_c() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "x", "name": "a-from-c"},
           "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                                           "podSelector": {"matchLabels": {"app": "c"}}}],
                                 "ports": [{"port": "http"}]}]}})
}

/// Every pod of namespace y: no ingress at all.
fn deny_y() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "y", "name": "deny-all"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

/// Namespaces x and y, the local pods x/a, x/b, y/c at `<prefix>.1`..`.3`, and x/a-from-c.
fn three_pods(prefix: &str) -> Vec<Value> {
    vec![
        namespace("x"),
        namespace("y"),
        pod("x", "a", NODE, &format!("{prefix}.1"), "a"),
        pod("x", "b", NODE, &format!("{prefix}.2"), "b"),
        pod("y", "c", NODE, &format!("{prefix}.3"), "c"),
        allow_from_c(),
    ]
}

macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, veths, eBPF, bpffs)");
            return;
        }
    };
}

/// The cluster the API holds, as the policy engine reads it (the oracle).
fn oracle(objects: &[Value]) -> Cluster {
    let mut m = Manifests::new();
    let text: Vec<String> = objects.iter().map(Value::to_string).collect();
    m.add_text("api.json", &text.join("\n---\n"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

struct Agent {
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    lines
}

/// `GET path` on the agent's API, from inside the node namespace: (status, body).
fn get(lab: &Lab, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let path = path.to_owned();
    lab.in_node(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    })
    .unwrap()
}

fn wait_for(what: &str, agent: &Agent, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "timed out after {timeout:?} waiting for {what}; agent log:\n{}",
        agent.log()
    );
}

fn metric(lab: &Lab, addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = get(lab, addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// How long a change through the API may take to show in the traffic: the debounce (at most
/// `--sync-max-interval-ms 300`) plus the apply, with a wide margin for a loaded machine.
const BOUND: Duration = Duration::from_secs(5);

/// Every ordered pair of the lab's pods on TCP 80 whose observed verdict differs from
/// `evaluate`.
fn wrong_probes(lab: &Lab, cluster: &Cluster, timeout: Duration) -> (usize, Vec<String>) {
    let pods: Vec<_> = cluster
        .pods()
        .filter(|(_, p)| p.node_name.as_deref() == Some(NODE))
        .map(|(id, p)| (id, p.key(), p.ips[0]))
        .collect();
    let mut flows = Vec::new();
    for (sid, skey, sip) in &pods {
        for (did, dkey, dip) in &pods {
            if sid != did {
                let flow = Flow {
                    src_ip: *sip,
                    src_pod: Some(*sid),
                    dst_ip: *dip,
                    dst_pod: Some(*did),
                    protocol: Protocol::Tcp,
                    port: Some(80),
                };
                flows.push((format!("{skey} -> {dkey}"), flow));
            }
        }
    }
    let probes: Vec<LabProbe> = flows
        .iter()
        .map(|(_, f)| LabProbe::new(ProbeEnd::Ip(f.src_ip), f.dst_ip, f.protocol, f.port))
        .collect();
    let seen = lab.probe_all(&probes, timeout);
    let mut wrong = Vec::new();
    for ((name, flow), obs) in flows.iter().zip(&seen) {
        let expected = evaluate(cluster, flow).verdict;
        let observed = if obs.outcome.delivered() {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        if observed != expected {
            wrong.push(format!(
                "{name}: observed {observed:?} ({:?}), expected {expected:?}",
                obs.outcome
            ));
        }
    }
    (flows.len(), wrong)
}

/// Every ordered pair of the lab's pods on TCP 80: observed verdicts equal `evaluate`.
fn check_traffic(lab: &Lab, cluster: &Cluster, what: &str, agent: &Agent) {
    let (probes, wrong) = wrong_probes(lab, cluster, Duration::from_millis(400));
    assert!(
        wrong.is_empty(),
        "{what}: {} of {probes} probes wrong:\n{}\nagent log:\n{}",
        wrong.len(),
        wrong.join("\n"),
        agent.log()
    );
}

/// Probes until the traffic agrees with `cluster` (the state just sent to the API), then once
/// more in full; returns the time since `since` and fails past `BOUND`.
fn converge(lab: &Lab, cluster: &Cluster, what: &str, agent: &Agent, since: Instant) -> Duration {
    loop {
        let (_, wrong) = wrong_probes(lab, cluster, Duration::from_millis(150));
        let took = since.elapsed();
        if wrong.is_empty() {
            eprintln!(
                "{what}: the traffic follows the API {:.0} ms after the change",
                took.as_secs_f64() * 1e3
            );
            check_traffic(lab, cluster, what, agent);
            return took;
        }
        assert!(
            took < BOUND,
            "{what}: still {} probes wrong after {took:?}:\n{}\nagent log:\n{}",
            wrong.len(),
            wrong.join("\n"),
            agent.log()
        );
    }
}

fn generation(lab: &Lab, addr: SocketAddr) -> f64 {
    metric(lab, addr, "flowgate_policy_generation").unwrap_or(0.0)
}

/// Serves `api` on loopback inside the lab's node namespace (where the agent runs).
fn serve(lab: &Lab, api: &FakeApi) -> SocketAddr {
    let listener = lab
        .in_node(|| TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let addr = listener.local_addr().unwrap();
    api.serve(listener);
    addr
}

/// A free loopback address in the lab's node namespace.
fn free_addr(lab: &Lab) -> SocketAddr {
    lab.in_node(|| {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    })
    .unwrap()
}

/// Starts `flowgate agent` in Kubernetes mode in the lab's node namespace (nsenter keeps /sys
/// as it is; `ip netns exec` remounts it), pointed at the fake API server by a kubeconfig.
fn start_agent(
    lab: &Lab,
    api_addr: SocketAddr,
    http_addr: SocketAddr,
    dir: &std::path::Path,
    extra: &[&str],
) -> Agent {
    std::fs::create_dir_all(dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: 'http://{api_addr}'}}\n\
             users:\n- name: agent\n  user: {{token: not-checked}}\ncontexts:\n- name: fake\n  context: {{cluster: fake, user: agent}}\n\
             current-context: fake\n"
        ),
    )
    .unwrap();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", lab.node_netns().display()))
        .arg(env!("CARGO_BIN_EXE_flowgate"))
        .args(["agent", "--kubeconfig"])
        .arg(&kubeconfig)
        .args(["--node-name", NODE, "--http-addr", &http_addr.to_string()])
        .args([
            "--sync-min-interval-ms",
            "50",
            "--sync-max-interval-ms",
            "300",
        ])
        .args(["--heartbeat-secs", "0", "--log-format", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter runs the agent");
    Agent {
        stdout: collect(child.stdout.take().unwrap()),
        stderr: collect(child.stderr.take().unwrap()),
        child,
    }
}

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
    let agent = start_agent(&lab, api_addr, http_addr, &dir, &[]);

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
    let agent = start_agent(&lab, api_addr, http_addr, &dir, &[]);
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

/// Detaches the BPF link pinned at `path` (BPF_OBJ_GET, then BPF_LINK_DETACH), as an
/// administrator's `bpftool link detach` would: the link stays, attached to nothing.
fn detach_pinned_link(path: &str) {
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_LINK_DETACH: libc::c_long = 34;
    let cpath = std::ffi::CString::new(path).unwrap();
    let mut attr = [0u64; 16];
    attr[0] = cpath.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr of 128 bytes with `pathname` set to a valid C string.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_OBJ_GET {path}: {}",
        std::io::Error::last_os_error()
    );
    let mut attr = [0u64; 16];
    attr[0] = u64::try_from(fd).unwrap();
    // SAFETY: `attr` is a zeroed bpf_attr with `link_detach.link_fd` set to the link's fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert_eq!(
        rc,
        0,
        "BPF_LINK_DETACH: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `fd` is the descriptor BPF_OBJ_GET returned, closed once.
    unsafe { libc::close(i32::try_from(fd).unwrap()) };
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

/// One probe, retried once if it did not get through/// One probe, retried once if it did not get through: a host TCP stall under load is not a
/// policy drop (a drop is deterministic, the retry fails too).
fn delivered(lab: &Lab, from: IpAddr, to: IpAddr) -> bool {
    let probe = [LabProbe::new(
        ProbeEnd::Ip(from),
        to,
        Protocol::Tcp,
        Some(80),
    )];
    (0..2).any(|_| {
        lab.probe_all(&probe, Duration::from_millis(400))[0]
            .outcome
            .delivered()
    })
}

/// Enforcement survives the agent: killed with SIGKILL during traffic, its pinned programs
/// keep the policy in force (denied stays denied, allowed stays allowed); the next agent
/// adopts them, says so with a `restart` gap record, and events resume. `--cleanup` then
/// removes everything, and the traffic is open again.
#[test]
fn a_killed_agent_leaves_enforcement_in_force_and_the_next_one_adopts_it() {
    require_root!();
    let objects = three_pods("10.63.0");
    let lab = Lab::build(&LabSpec::from_cluster(&oracle(&objects))).expect("the lab builds");
    let api = FakeApi::new();
    for o in &objects {
        api.set(o.clone());
    }
    let api_addr = serve(&lab, &api);
    let pins = format!("/sys/fs/bpf/flowgate-e2e-{}", std::process::id());
    assert!(
        std::path::Path::new("/sys/fs/bpf").exists(),
        "bpffs must be mounted at /sys/fs/bpf (scripts/bootstrap.sh mounts it)"
    );
    let dir = std::env::temp_dir().join(format!("flowgate-cluster-restart-{}", std::process::id()));
    let pin_args = ["--bpffs-dir", pins.as_str()];
    let (a, b, c): (IpAddr, IpAddr, IpAddr) = (
        "10.63.0.1".parse().unwrap(),
        "10.63.0.2".parse().unwrap(),
        "10.63.0.3".parse().unwrap(),
    );

    let http1 = free_addr(&lab);
    let mut agent1 = start_agent(&lab, api_addr, http1, &dir, &pin_args);
    wait_for("agent 1 ready", &agent1, Duration::from_secs(30), || {
        get(&lab, http1, "/readyz").is_some_and(|(status, _)| status == 200)
    });
    converge(&lab, &oracle(&objects), "agent 1", &agent1, Instant::now());

    // Traffic all along: b -> a is denied, c -> a allowed.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (leaks, blocked, rounds) = std::thread::scope(|scope| {
        let traffic = scope.spawn(|| {
            let (mut leaks, mut blocked, mut rounds) = (0, 0, 0);
            let probes = [
                LabProbe::new(ProbeEnd::Ip(b), a, Protocol::Tcp, Some(80)),
                LabProbe::new(ProbeEnd::Ip(c), a, Protocol::Tcp, Some(80)),
            ];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let seen = lab.probe_all(&probes, Duration::from_millis(300));
                leaks += usize::from(seen[0].outcome.delivered());
                blocked += usize::from(!seen[1].outcome.delivered() && !delivered(&lab, c, a));
                rounds += 1;
            }
            (leaks, blocked, rounds)
        });
        std::thread::sleep(Duration::from_millis(500));
        // SAFETY: kill(2) on our own child (nsenter execs the agent: same pid).
        unsafe { libc::kill(i32::try_from(agent1.child.id()).unwrap(), libc::SIGKILL) };
        agent1.child.wait().unwrap();
        // No agent at all for a while: the pinned programs alone decide.
        std::thread::sleep(Duration::from_millis(1500));
        let http2 = free_addr(&lab);
        let agent2 = start_agent(&lab, api_addr, http2, &dir, &pin_args);
        wait_for("agent 2 ready", &agent2, Duration::from_secs(30), || {
            get(&lab, http2, "/readyz").is_some_and(|(status, _)| status == 200)
        });
        std::thread::sleep(Duration::from_millis(500));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let counts = traffic.join().unwrap();

        assert!(
            agent2.log().contains("adopted the pinned datapath"),
            "{}",
            agent2.log()
        );
        let records: Vec<Value> = agent2
            .stdout
            .lock()
            .unwrap()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert_eq!(
            records
                .first()
                .map(|r| (r["record_type"].clone(), r["stage"].clone())),
            Some((json!("gap"), json!("restart"))),
            "the first record of the adopting agent is the restart gap"
        );
        // Events resume: new traffic is reported by the new agent, with attribution.
        let before = agent2.stdout.lock().unwrap().len();
        assert!(!delivered(&lab, b, a));
        wait_for(
            "agent 2's deny event",
            &agent2,
            Duration::from_secs(5),
            || {
                agent2.stdout.lock().unwrap()[before..].iter().any(|l| {
                    let r: Value = serde_json::from_str(l).unwrap_or_default();
                    r["verdict"] == "deny"
                        && r["policy"]["isolated_by"]
                            .as_array()
                            .is_some_and(|p| p.iter().any(|p| p["name"] == "a-from-c"))
                })
            },
        );
        converge(&lab, &oracle(&objects), "agent 2", &agent2, Instant::now());

        // The datapath taken away from outside (a link detached, as `bpftool link detach`
        // does): /healthz says so, naming the program and the interface.
        assert_eq!(get(&lab, http2, "/healthz").map(|(s, _)| s), Some(200));
        let a_if = lab
            .endpoints()
            .find(|e| e.key == "x/a")
            .map(|e| e.host_ifindex)
            .unwrap();
        detach_pinned_link(&format!("{pins}/links/{a_if}-ingress"));
        wait_for("/healthz to fail", &agent2, Duration::from_secs(10), || {
            get(&lab, http2, "/healthz").is_some_and(|(status, body)| {
                status == 503 && body.contains("fg_from_pod is no longer attached on")
            })
        });
        // ... and the agent attaches that pod afresh: healthy again.
        wait_for(
            "/healthz to recover",
            &agent2,
            Duration::from_secs(10),
            || get(&lab, http2, "/healthz").is_some_and(|(status, _)| status == 200),
        );
        converge(
            &lab,
            &oracle(&objects),
            "after re-attaching",
            &agent2,
            Instant::now(),
        );
        drop(agent2);
        counts
    });
    eprintln!(
        "restart under traffic: {rounds} rounds, {leaks} denied flows let through, {blocked} allowed flows blocked"
    );
    assert!(
        rounds >= 5,
        "traffic ran through the restart ({rounds} rounds)"
    );
    assert_eq!(
        leaks, 0,
        "b -> a stays denied through the kill, the gap and the adoption"
    );
    assert_eq!(
        blocked, 0,
        "c -> a stays allowed through the kill, the gap and the adoption"
    );

    // With both agents gone, the programs still enforce; --cleanup removes them.
    assert!(
        !delivered(&lab, b, a),
        "still enforced with no agent running"
    );
    let out = Command::new("nsenter")
        .arg(format!("--net={}", lab.node_netns().display()))
        .arg(env!("CARGO_BIN_EXE_flowgate"))
        .args(["agent", "--cleanup", "--bpffs-dir", &pins])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("pinned links (programs detached)"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&pins).exists(),
        "the pin directory is gone"
    );
    assert!(delivered(&lab, b, a), "nothing enforces after the cleanup");
    lab.teardown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
