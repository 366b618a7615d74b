//! What the Kubernetes-mode end-to-end tests share: the objects the fake API server holds, the
//! agent binary started in a lab's node namespace against it, HTTP and metrics from inside
//! that namespace, and traffic checked against `evaluate` on every pod pair.

#![allow(dead_code, reason = "each test binary uses a part")]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flowgate::lab::{Lab, LabProbe, ProbeEnd};
use flowgate_policy::evaluate::{Flow, Verdict, evaluate};
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};
use serde_json::{Value, json};

use super::fake_apiserver::FakeApi;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Returns from the test, saying so, when it cannot run (not root).
macro_rules! require_root {
    () => {
        if !is_root() {
            eprintln!("skipped: needs root (network namespaces, veths, eBPF, bpffs)");
            return;
        }
    };
}
pub(crate) use require_root;

pub const NODE: &str = "n1";

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, app: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"namespace": ns, "name": name, "labels": {"app": app},
                        "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
           "spec": {"nodeName": node, "containers": [{"name": "c",
                    "ports": [{"name": "http", "containerPort": 80}]}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

/// x/a accepts TCP 80 only from pods labelled app=c in namespace y.
pub fn allow_from_c() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "x", "name": "a-from-c"},
           "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                                           "podSelector": {"matchLabels": {"app": "c"}}}],
                                 "ports": [{"port": "http"}]}]}})
}

/// Every pod of namespace y: no ingress at all.
pub fn deny_y() -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"namespace": "y", "name": "deny-all"},
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

/// Namespaces x and y, the local pods x/a, x/b, y/c at `<prefix>.1`..`.3`, and x/a-from-c.
pub fn three_pods(prefix: &str) -> Vec<Value> {
    vec![
        namespace("x"),
        namespace("y"),
        pod("x", "a", NODE, &format!("{prefix}.1"), "a"),
        pod("x", "b", NODE, &format!("{prefix}.2"), "b"),
        pod("y", "c", NODE, &format!("{prefix}.3"), "c"),
        allow_from_c(),
    ]
}

/// The cluster the API holds, as the policy engine reads it (the oracle).
pub fn oracle(objects: &[Value]) -> Cluster {
    let mut m = Manifests::new();
    let text: Vec<String> = objects.iter().map(Value::to_string).collect();
    m.add_text("api.json", &text.join("\n---\n"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

pub struct Agent {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl Agent {
    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn collect(reader: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
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
pub fn get(lab: &Lab, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
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

pub fn wait_for(what: &str, agent: &Agent, timeout: Duration, mut ok: impl FnMut() -> bool) {
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

pub fn metric(lab: &Lab, addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = get(lab, addr, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// How long a change through the API may take to show in the traffic: the debounce (at most
/// `--sync-max-interval-ms 300`) plus the apply, with a wide margin for a loaded machine.
pub const BOUND: Duration = Duration::from_secs(5);

/// Every ordered pair of the lab's pods on TCP 80 whose observed verdict differs from
/// `evaluate`.
pub fn wrong_probes(lab: &Lab, cluster: &Cluster, timeout: Duration) -> (usize, Vec<String>) {
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
pub fn check_traffic(lab: &Lab, cluster: &Cluster, what: &str, agent: &Agent) {
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
pub fn converge(
    lab: &Lab,
    cluster: &Cluster,
    what: &str,
    agent: &Agent,
    since: Instant,
) -> Duration {
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

pub fn generation(lab: &Lab, addr: SocketAddr) -> f64 {
    metric(lab, addr, "flowgate_policy_generation").unwrap_or(0.0)
}

/// Serves `api` on loopback inside the lab's node namespace (where the agent runs).
pub fn serve(lab: &Lab, api: &FakeApi) -> SocketAddr {
    let listener = lab
        .in_node(|| TcpListener::bind("127.0.0.1:0").unwrap())
        .unwrap();
    let addr = listener.local_addr().unwrap();
    api.serve(listener);
    addr
}

/// A free loopback address in the lab's node namespace.
pub fn free_addr(lab: &Lab) -> SocketAddr {
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
pub fn start_agent(
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
