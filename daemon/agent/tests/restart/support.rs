//! The restart tests' node: three pods and y's policy, a lab of them, a pin directory of each
//! test's own, the agents' steps (attach, plan + apply), probes, and what the kernel shows (TCX
//! programs, pinned link ids, tc filters, events).

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{SchedClassifier, TcAttachType};
use flowgate::datapath::{Attached, Datapath, LoadOptions, TcMode, events};
use flowgate::lab::{Lab, LabProbe, LabSpec, ProbeEnd};
use flowgate_abi::{FlowEvent, verdict};
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::maps::Mode;
use flowgate_policy::model::Protocol;
use flowgate_policy::{Cluster, Manifests};

pub const PODS: &str = r"
apiVersion: v1
kind: Pod
metadata: {name: x, namespace: app, labels: {app: x}}
status: {podIP: 10.71.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: y, namespace: app, labels: {app: y}}
spec: {containers: [{name: c, ports: [{containerPort: 7000}]}]}
status: {podIP: 10.71.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: z, namespace: app, labels: {app: z}}
status: {podIP: 10.71.0.3}
";

/// y admits z on 7000 and 7100 only, and opens nothing itself.
pub const POLICY: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: y}}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: z}}}], ports: [{port: 7000}, {port: 7100}]}]
  egress: []
";

/// What agent 1 applies first (so the adopted generation is 2, not 1).
pub const DENY_ALL: &str = r"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-in, namespace: app}
spec:
  podSelector: {matchLabels: {app: y}}
  policyTypes: [Ingress, Egress]
  ingress: []
  egress: []
";

pub const Y: &str = "10.71.0.2";

pub const TIMEOUT: Duration = Duration::from_millis(250);

pub fn cluster(policies: &str) -> Cluster {
    let mut m = Manifests::new();
    m.add_text("test.yaml", &format!("{PODS}\n---\n{policies}"));
    assert!(m.errors.is_empty(), "{:#?}", m.errors);
    Cluster::from_manifests(&mut m)
}

pub fn build_lab() -> Lab {
    Lab::build(&LabSpec::from_cluster(&cluster(POLICY))).expect("the lab builds")
}

/// (pod, host ifname, host ifindex) of every pod.
pub fn pods(lab: &Lab) -> Vec<(String, String, u32)> {
    ["app/x", "app/y", "app/z"]
        .iter()
        .map(|p| {
            (
                (*p).to_owned(),
                lab.host_ifname(p).unwrap().to_owned(),
                lab.host_ifindex(p).unwrap(),
            )
        })
        .collect()
}

pub fn locals(pods: &[(String, String, u32)]) -> Vec<LocalEndpoint> {
    pods.iter()
        .map(|(pod, _, ifindex)| LocalEndpoint {
            pod: pod.clone(),
            ifindex: *ifindex,
        })
        .collect()
}

/// Sets the flag when dropped.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A pin directory of its own on bpffs, removed (links detached) when the test ends, even on
/// failure; those of test processes that were killed are removed by the next run.
pub struct PinDir {
    pub path: PathBuf,
    node_netns: PathBuf,
}

impl PinDir {
    pub fn new(lab: &Lab) -> Self {
        let fs = nix::sys::statfs::statfs("/sys/fs/bpf").expect("statfs /sys/fs/bpf");
        assert_eq!(
            i128::from(fs.filesystem_type().0),
            0xcafe_4a11,
            "bpffs is not mounted at /sys/fs/bpf: run `make bootstrap` or `mount -t bpf bpf /sys/fs/bpf`"
        );
        for stale in std::fs::read_dir("/sys/fs/bpf")
            .unwrap()
            .filter_map(Result::ok)
        {
            let name = stale.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("flowgate-test-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = Datapath::unpin_all(&stale.path());
            }
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = PathBuf::from(format!(
            "/sys/fs/bpf/flowgate-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        Self {
            path,
            node_netns: lab.node_netns().to_path_buf(),
        }
    }

    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            pin_dir: Some(self.path.clone()),
            ..LoadOptions::default()
        }
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        // In the node namespace, where legacy filters are.
        let (path, netns) = (self.path.clone(), self.node_netns.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(ns) = std::fs::File::open(&netns) {
                let _ = nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET);
            }
            let _ = Datapath::unpin_all(&path);
        })
        .join();
    }
}

/// Attaches to every pod's interface (in the node namespace).
pub fn attach_all(
    lab: &Lab,
    dp: &mut Datapath,
    pods: &[(String, String, u32)],
    tc: TcMode,
) -> Attached {
    lab.in_node(|| {
        let mut how = None;
        for (_, ifname, _) in pods {
            how = Some(dp.attach_pod_interface(ifname, tc).expect("attaches"));
        }
        how.unwrap()
    })
    .unwrap()
}

/// Compiles `policies` for the pods and applies it through `Datapath::plan` (a takeover after an
/// adoption), as the agent does; returns the snapshot now in force.
pub fn apply(
    dp: &mut Datapath,
    policies: &str,
    locals: &[LocalEndpoint],
    old: &Snapshot,
) -> Snapshot {
    let mut next = compile(&cluster(policies), locals, Some(old));
    let ops = dp.plan(old, &mut next, Mode::Enforce).expect("a plan");
    dp.apply(&ops).expect("the plan applies");
    next
}

/// (program id, name) of what runs at each hook of each pod interface (TCX).
pub fn tcx_programs(lab: &Lab, pods: &[(String, String, u32)]) -> Vec<Vec<(u32, String)>> {
    lab.in_node(|| {
        let mut out = Vec::new();
        for (_, ifname, _) in pods {
            for attach in [TcAttachType::Ingress, TcAttachType::Egress] {
                let (_, progs) = SchedClassifier::query_tcx(ifname, attach).unwrap();
                out.push(
                    progs
                        .iter()
                        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_owned()))
                        .collect(),
                );
            }
        }
        out
    })
    .unwrap()
}

/// The kernel ids of the pinned links, by pin name.
pub fn link_ids(pins: &PinDir) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = std::fs::read_dir(pins.path.join("links"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link: FdLink = PinnedLink::from_pin(e.path()).unwrap().into();
            (
                e.file_name().to_string_lossy().into_owned(),
                link.info().unwrap().id(),
            )
        })
        .collect();
    out.sort();
    out
}

/// One probe from `from` to y on 7000.
pub fn probe_y(lab: &Lab, from: &str, timeout: Duration) -> flowgate::lab::Observed {
    lab.probe_all(&[to_y(from, 7000)], timeout).remove(0)
}

/// One round of probes while no agent runs: x -> y on port 7001 + `round` (denied whatever the
/// port; a port of its own so the deny is not folded into an earlier one's deduplication
/// window) and z -> y on 7100 (the probes of the adoption use 7000). Returns each one's flow and
/// expected (allows, denies): x -> y gives an allow (x's egress) and a deny (y's ingress), z -> y
/// two allows. (A source port may come round again: add up by flow.)
pub fn round_without_agent(lab: &Lab, round: u16) -> [(Tuple, (usize, usize)); 2] {
    let probes = [to_y("app/x", 7001 + round), to_y("app/z", 7100)];
    let seen = lab.probe_all(&probes, TIMEOUT);
    assert_eq!(
        (seen[0].outcome.delivered(), seen[1].outcome.delivered()),
        (false, true),
        "no agent, round {round}: x -> y must be denied and z -> y allowed"
    );
    let tuple = |i: usize| Tuple {
        src: mapped(seen[i].src.unwrap()),
        src_port: seen[i].src_port.unwrap(),
        dst_port: probes[i].port.unwrap(),
    };
    [(tuple(0), (1, 1)), (tuple(1), (2, 0))]
}

/// A probe's flow as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub src: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
}

impl Tuple {
    pub fn of(e: &FlowEvent) -> Self {
        Self {
            src: e.src_addr,
            src_port: e.src_port,
            dst_port: e.dst_port,
        }
    }
}

pub fn mapped(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Whether x reaches y and z reaches y on 7000 (x -> y must be denied, z -> y allowed).
pub fn verdicts(lab: &Lab) -> (bool, bool) {
    let seen = lab.probe_all(&[to_y("app/x", 7000), to_y("app/z", 7000)], TIMEOUT);
    (seen[0].outcome.delivered(), seen[1].outcome.delivered())
}

/// A TCP probe from pod `from` to y on `port`.
pub fn to_y(from: &str, port: u16) -> LabProbe {
    LabProbe::new(ProbeEnd::Pod(from.into()), ip(Y), Protocol::Tcp, Some(port))
}

pub fn assert_enforced(lab: &Lab, when: &str) {
    assert_eq!(
        verdicts(lab),
        (false, true),
        "{when}: x -> y must be denied and z -> y allowed"
    );
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// An echo server on y:7100 and a connection to it from z that stays open.
pub fn open_connection(lab: &Lab) -> TcpStream {
    super::echo::open_echo_connection(
        lab,
        "app/y",
        format!("{Y}:7100").parse().unwrap(),
        "app/z",
        TIMEOUT,
        Duration::from_secs(2),
    )
}

pub fn echo(stream: &mut TcpStream, byte: u8) -> bool {
    stream.write_all(&[byte]).unwrap();
    let mut buf = [0u8; 1];
    matches!(stream.read(&mut buf), Ok(1) if buf[0] == byte)
}

pub fn drain(ring: &mut RingBuf<MapData>) -> Vec<FlowEvent> {
    let mut out = Vec::new();
    let mut stats = events::ReaderStats::default();
    events::drain(ring, &mut out, &mut stats);
    assert_eq!(stats.malformed, 0, "every event decodes");
    out
}

/// (allow, deny) events.
pub fn classes(events: &[FlowEvent]) -> (u64, u64) {
    let count = |v| events.iter().filter(|e| e.verdict == v).count() as u64;
    (count(verdict::ALLOW), count(verdict::DENY))
}

pub fn assert_schema_valid(json: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("docs/flow-record.schema.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the shipped schema compiles");
    let record: serde_json::Value = serde_json::from_str(json).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&record)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{json}: {errors:?}");
}

/// A lab, its pin directory, and its pods, after an agent in this process loaded pinned,
/// attached, applied DENY_ALL then POLICY (generation 2), and stopped cleanly (pins stay).
pub fn after_a_stopped_agent(
    ring_bytes: u32,
    tc: TcMode,
) -> (Lab, PinDir, Vec<(String, String, u32)>) {
    let lab = build_lab();
    let pins = PinDir::new(&lab);
    let pods = pods(&lab);
    let mut dp = Datapath::load(&LoadOptions {
        ring_bytes,
        ..pins.options()
    })
    .unwrap();
    attach_all(&lab, &mut dp, &pods, tc);
    let first = apply(&mut dp, DENY_ALL, &locals(&pods), &Snapshot::default());
    apply(&mut dp, POLICY, &locals(&pods), &first);
    drop(dp);
    (lab, pins, pods)
}

/// `tc filter show` of one hook in the node namespace.
pub fn filters(lab: &Lab, ifname: &str, hook: &str) -> String {
    let out = Command::new("tc")
        .args([
            "-n",
            lab.node_netns_name(),
            "filter",
            "show",
            "dev",
            ifname,
            hook,
        ])
        .output()
        .expect("tc runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The program on each hook of each pod interface: TCX's, else our tc filter's.
pub fn hook_programs(lab: &Lab, pods: &[(String, String, u32)]) -> Vec<Option<u32>> {
    let tcx = tcx_programs(lab, pods);
    let hooks = pods
        .iter()
        .flat_map(|(_, ifname, _)| [(ifname, "ingress"), (ifname, "egress")]);
    tcx.iter()
        .zip(hooks)
        .map(|(tcx, (ifname, hook))| match tcx.as_slice() {
            [] => {
                let text = filters(lab, ifname, hook);
                let ours = text.lines().filter(|l| l.contains("fg_")).count();
                assert!(
                    ours <= 1,
                    "{ifname} {hook}: more than one filter of ours: {text}"
                );
                filter_program(&text)
            }
            [(id, _)] => Some(*id),
            more => panic!("{ifname} {hook}: more than one program: {more:?}"),
        })
        .collect()
}

/// The program id in a `tc filter show` line of ours.
pub fn filter_program(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.contains("fg_"))?;
    let (_, after) = line.split_once(" id ")?;
    after.split_whitespace().next()?.parse().ok()
}
