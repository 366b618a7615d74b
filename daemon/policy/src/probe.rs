//! Probes: the user's description of a flow (`{"from": "ns/pod" | IP, "to": ..., "port", "protocol"}`),
//! resolved against a cluster into a `Flow`, and the per-probe result `flowgate verdicts` prints.

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::cluster::{Cluster, PodId};
use crate::evaluate::{Decision, Flow, SideDecision, Verdict, evaluate};
use crate::model::Protocol;

/// A destination port as the user wrote it: a number or a named port of the destination pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortRef {
    Number(i64),
    Name(String),
}

/// One probe from a probe file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub from: String,
    pub to: String,
    /// Required except for ICMP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortRef>,
    /// `TCP` (default), `UDP`, `SCTP` or `ICMP`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The verdict the author expects; a mismatch is reported and fails the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<Verdict>,
}

fn default_protocol() -> String {
    "TCP".to_owned()
}

/// Why a probe could not be evaluated. Never turned into a silent deny.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("unknown pod {0:?}: no such pod in the manifests")]
    UnknownPod(String),
    #[error("pod {0} has no IP address (status.podIP is not set)")]
    PodWithoutIp(String),
    #[error("pod {pod} has no IPv{family} address to reach {other}")]
    NoAddressInFamily {
        pod: String,
        family: u8,
        other: IpAddr,
    },
    #[error("{0:?} is neither \"namespace/pod\" nor an IP address")]
    BadEndpoint(String),
    #[error("unknown protocol {0:?}: use TCP, UDP, SCTP or ICMP")]
    BadProtocol(String),
    #[error("port {0} is out of range 1-65535")]
    PortOutOfRange(i64),
    #[error("a {0} probe needs a port")]
    MissingPort(Protocol),
    #[error("an ICMP probe has no port")]
    UnexpectedPort,
    #[error("named port {name:?} needs a pod as destination, not {to}")]
    NamedPortOutsideCluster { name: String, to: String },
    #[error("pod {pod} has no containerPort named {name:?} with protocol {protocol}{}", known_ports(.known))]
    UnknownNamedPort {
        pod: String,
        name: String,
        protocol: Protocol,
        known: Vec<String>,
    },
    #[error("IPv4 and IPv6 endpoints cannot be mixed ({0} -> {1})")]
    MixedFamilies(IpAddr, IpAddr),
}

fn known_ports(known: &[String]) -> String {
    if known.is_empty() {
        " (it has no named ports)".into()
    } else {
        format!(" (it has: {})", known.join(", "))
    }
}

enum End {
    Pod(PodId),
    Ip(IpAddr),
}

fn parse_end(cluster: &Cluster, text: &str) -> Result<End, ProbeError> {
    if let Ok(ip) = IpAddr::from_str(text) {
        return Ok(cluster.pod_by_ip(ip).map_or(End::Ip(ip), End::Pod));
    }
    let Some((ns, name)) = text.split_once('/') else {
        return Err(ProbeError::BadEndpoint(text.into()));
    };
    if ns.is_empty() || name.is_empty() || name.contains('/') {
        return Err(ProbeError::BadEndpoint(text.into()));
    }
    cluster
        .pod_by_name(ns, name)
        .map(End::Pod)
        .ok_or_else(|| ProbeError::UnknownPod(text.into()))
}

/// Picks the pod's address in the family of `other` (or its primary address).
fn pod_ip(cluster: &Cluster, pod: PodId, other: Option<IpAddr>) -> Result<IpAddr, ProbeError> {
    let p = cluster.pod(pod);
    let first = *p
        .ips
        .first()
        .ok_or_else(|| ProbeError::PodWithoutIp(p.key()))?;
    match other {
        None => Ok(first),
        Some(o) => p
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv4() == o.is_ipv4())
            .ok_or(ProbeError::NoAddressInFamily {
                pod: p.key(),
                family: if o.is_ipv4() { 4 } else { 6 },
                other: o,
            }),
    }
}

/// Resolves a probe to a flow: endpoints to pods or external IPs, named ports on the destination.
pub fn resolve(cluster: &Cluster, probe: &Probe) -> Result<Flow, ProbeError> {
    let protocol = Protocol::from_probe(&probe.protocol)
        .ok_or_else(|| ProbeError::BadProtocol(probe.protocol.clone()))?;
    let from = parse_end(cluster, &probe.from)?;
    let to = parse_end(cluster, &probe.to)?;
    let (src_ip, dst_ip) = match (&from, &to) {
        (End::Ip(a), End::Ip(b)) => (*a, *b),
        (End::Pod(p), End::Ip(b)) => (pod_ip(cluster, *p, Some(*b))?, *b),
        (End::Ip(a), End::Pod(p)) => (*a, pod_ip(cluster, *p, Some(*a))?),
        (End::Pod(a), End::Pod(b)) => {
            let src = pod_ip(cluster, *a, None)?;
            (src, pod_ip(cluster, *b, Some(src))?)
        }
    };
    if src_ip.is_ipv4() != dst_ip.is_ipv4() {
        return Err(ProbeError::MixedFamilies(src_ip, dst_ip));
    }
    let dst_pod = match to {
        End::Pod(p) => Some(p),
        End::Ip(_) => None,
    };
    let port = match (&probe.port, protocol.has_ports()) {
        (None, true) => return Err(ProbeError::MissingPort(protocol)),
        (None, false) => None,
        (Some(_), false) => return Err(ProbeError::UnexpectedPort),
        (Some(PortRef::Number(n)), true) => Some(
            u16::try_from(*n)
                .ok()
                .filter(|p| *p > 0)
                .ok_or(ProbeError::PortOutOfRange(*n))?,
        ),
        (Some(PortRef::Name(name)), true) => {
            let Some(pod) = dst_pod.map(|id| cluster.pod(id)) else {
                return Err(ProbeError::NamedPortOutsideCluster {
                    name: name.clone(),
                    to: probe.to.clone(),
                });
            };
            Some(pod.named_port(name, protocol).ok_or_else(|| {
                ProbeError::UnknownNamedPort {
                    pod: pod.key(),
                    name: name.clone(),
                    protocol,
                    known: pod
                        .ports
                        .iter()
                        .filter_map(|p| Some(format!("{}/{}", p.name.as_deref()?, p.protocol)))
                        .collect(),
                }
            })?)
        }
    };
    let src_pod = match from {
        End::Pod(p) => Some(p),
        End::Ip(_) => None,
    };
    Ok(Flow {
        src_ip,
        src_pod,
        dst_ip,
        dst_pod,
        protocol,
        port,
    })
}

/// One element of `flowgate verdicts` output: the probe, then the decision or the error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeResult {
    #[serde(flatten)]
    pub probe: Probe,
    /// The number a named port resolved to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resolved_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<Verdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<SideDecision>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<SideDecision>,
    /// Set when the probe could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `false` when the probe's `expect` differs from the verdict.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expectation_met: Option<bool>,
}

impl ProbeResult {
    pub fn failed(&self) -> bool {
        self.error.is_some() || self.expectation_met == Some(false)
    }
}

/// Resolves and evaluates one probe.
pub fn run(cluster: &Cluster, probe: &Probe) -> ProbeResult {
    match resolve(cluster, probe) {
        Ok(flow) => {
            let Decision {
                verdict,
                egress,
                ingress,
            } = evaluate(cluster, &flow);
            let resolved_port = matches!(probe.port, Some(PortRef::Name(_)))
                .then_some(flow.port)
                .flatten();
            ProbeResult {
                probe: probe.clone(),
                resolved_port,
                src_ip: Some(flow.src_ip),
                dst_ip: Some(flow.dst_ip),
                verdict: Some(verdict),
                egress: Some(egress),
                ingress: Some(ingress),
                error: None,
                expectation_met: probe.expect.map(|e| e == verdict),
            }
        }
        Err(error) => ProbeResult {
            probe: probe.clone(),
            resolved_port: None,
            src_ip: None,
            dst_ip: None,
            verdict: None,
            egress: None,
            ingress: None,
            error: Some(error.to_string()),
            expectation_met: None,
        },
    }
}

/// Parses a probe file: a JSON array of probes.
pub fn parse_probes(text: &str) -> Result<Vec<Probe>, serde_json::Error> {
    serde_json::from_str(text)
}
