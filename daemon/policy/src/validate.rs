//! Validation of k8s-openapi objects into the model, rejecting what the API server would reject
//! (after pkg/apis/networking/validation and apimachinery's label validation) with a field path.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::model::{
    ContainerPort, IpBlock, Labels, Namespace, NamespaceScope, Peer, Pod, Policy, PortMatch,
    PortSpec, Protocol, Requirement, Rule, Selector,
};

pub const DEFAULT_NAMESPACE: &str = "default";

/// A rejection with the field it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Option<String>,
    pub message: String,
}

impl FieldError {
    fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, FieldError>;

fn decode<T: serde::de::DeserializeOwned>(value: Value) -> Result<T> {
    // Fast path without path tracking; on failure, decode again to name the field.
    if let Ok(decoded) = T::deserialize(&value) {
        return Ok(decoded);
    }
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let field = (path != ".").then_some(path);
        FieldError {
            field,
            message: error.into_inner().to_string(),
        }
    })
}

type ObjectMeta = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

const DNS_LABEL: &str =
    "a DNS label (at most 63 lowercase alphanumerics or '-', starting and ending alphanumeric)";
const DNS_SUBDOMAIN: &str = "a DNS subdomain (at most 253 lowercase alphanumerics, '-' or '.', \
     starting and ending alphanumeric)";

/// `metadata.name`: required; a DNS subdomain (Pods, NetworkPolicies) or label (Namespaces).
fn name_of(meta: &ObjectMeta, dns_label: bool) -> Result<String> {
    let Some(name) = meta.name.as_deref().filter(|n| !n.is_empty()) else {
        return Err(FieldError::at("metadata.name", "required"));
    };
    let (ok, what) = if dns_label {
        (is_dns_label(name), DNS_LABEL)
    } else {
        (is_dns_subdomain(name), DNS_SUBDOMAIN)
    };
    if ok {
        Ok(name.to_owned())
    } else {
        Err(FieldError::at(
            "metadata.name",
            format!("invalid name {name:?}: must be {what}"),
        ))
    }
}

/// `metadata.namespace`: absent or empty means `default`; otherwise a DNS label.
fn namespace_of(meta: &ObjectMeta) -> Result<String> {
    match meta.namespace.as_deref() {
        None | Some("") => Ok(DEFAULT_NAMESPACE.to_owned()),
        Some(ns) if is_dns_label(ns) => Ok(ns.to_owned()),
        Some(ns) => Err(FieldError::at(
            "metadata.namespace",
            format!("invalid namespace {ns:?}: must be {DNS_LABEL}"),
        )),
    }
}

fn labels_of(
    labels: Option<&std::collections::BTreeMap<String, String>>,
    field: &str,
) -> Result<Labels> {
    let labels = labels.cloned().unwrap_or_default();
    for (key, value) in &labels {
        check_label_key(key, &format!("{field}[{key}]"))?;
        check_label_value(value, &format!("{field}[{key}]"))?;
    }
    Ok(labels)
}

pub fn namespace(value: Value) -> Result<Namespace> {
    namespace_object(decode(value)?)
}

/// `namespace` for an already decoded object (as a Kubernetes watch delivers it).
pub fn namespace_object(ns: core::Namespace) -> Result<Namespace> {
    let name = name_of(&ns.metadata, true)?;
    let labels = labels_of(ns.metadata.labels.as_ref(), "metadata.labels")?;
    Ok(Namespace::new(&name, labels, false))
}

pub fn pod(value: Value) -> Result<Pod> {
    pod_object(decode(value)?)
}

/// `pod` for an already decoded object (as a Kubernetes watch delivers it).
pub fn pod_object(pod: core::Pod) -> Result<Pod> {
    let name = name_of(&pod.metadata, false)?;
    let namespace = namespace_of(&pod.metadata)?;
    let labels = labels_of(pod.metadata.labels.as_ref(), "metadata.labels")?;
    let spec = pod.spec.unwrap_or_default();
    let mut ports = Vec::new();
    for (ci, container) in spec.containers.iter().enumerate() {
        let mut names: Vec<&str> = Vec::new();
        for (pi, port) in container.ports.iter().flatten().enumerate() {
            let field = format!("spec.containers[{ci}].ports[{pi}]");
            if let Some(name) = port.name.as_deref() {
                if names.contains(&name) {
                    return Err(FieldError::at(
                        format!("{field}.name"),
                        format!("duplicate value {name:?}"),
                    ));
                }
                names.push(name);
            }
            ports.push(container_port(port, &field)?);
        }
    }
    let mut ips: Vec<IpAddr> = Vec::new();
    let status = pod.status.unwrap_or_default();
    for (i, pod_ip) in status.pod_ips.iter().flatten().enumerate() {
        let ip = parse_ip(&pod_ip.ip, &format!("status.podIPs[{i}].ip"))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if let Some(pod_ip) = status.pod_ip.as_deref().filter(|s| !s.is_empty()) {
        let ip = parse_ip(pod_ip, "status.podIP")?;
        if !ips.contains(&ip) {
            // podIP is podIPs[0] by contract; keep it first if podIPs was absent.
            ips.insert(0, ip);
        }
    }
    Ok(Pod {
        namespace,
        name,
        labels,
        ips,
        ports,
        host_network: spec.host_network.unwrap_or(false),
        node_name: spec.node_name,
        owner: pod
            .metadata
            .owner_references
            .as_ref()
            .and_then(|refs| {
                refs.iter()
                    .find(|r| r.controller == Some(true))
                    .or_else(|| refs.first())
            })
            .map(|r| (r.kind.clone(), r.name.clone())),
    })
}

fn parse_ip(text: &str, field: &str) -> Result<IpAddr> {
    IpAddr::from_str(text)
        .map_err(|_| FieldError::at(field, format!("invalid IP address {text:?}")))
}

fn container_port(port: &core::ContainerPort, field: &str) -> Result<ContainerPort> {
    let number = port_number(port.container_port, &format!("{field}.containerPort"))?;
    let protocol = protocol(port.protocol.as_deref(), &format!("{field}.protocol"))?;
    if let Some(name) = &port.name {
        check_port_name(name, &format!("{field}.name"))?;
    }
    Ok(ContainerPort {
        name: port.name.clone(),
        port: number,
        protocol,
    })
}

fn port_number(value: i32, field: &str) -> Result<u16> {
    match u16::try_from(value) {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(FieldError::at(
            field,
            format!("must be between 1 and 65535, inclusive (got {value})"),
        )),
    }
}

fn protocol(value: Option<&str>, field: &str) -> Result<Protocol> {
    match value {
        None => Ok(Protocol::Tcp),
        Some(name) => Protocol::from_k8s(name).ok_or_else(|| {
            FieldError::at(
                field,
                format!(
                    "unsupported value {name:?}: supported values are \"TCP\", \"UDP\", \"SCTP\""
                ),
            )
        }),
    }
}

pub fn network_policy(value: Value) -> Result<Policy> {
    network_policy_object(decode(value)?)
}

/// `network_policy` for an already decoded object (as a Kubernetes watch delivers it).
pub fn network_policy_object(policy: net::NetworkPolicy) -> Result<Policy> {
    let name = name_of(&policy.metadata, false)?;
    let namespace = namespace_of(&policy.metadata)?;
    let spec = policy.spec.unwrap_or_default();
    let pod_selector = selector(spec.pod_selector.as_ref(), "spec.podSelector")?;

    let mut isolates_ingress = false;
    let mut isolates_egress = false;
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => {
            if types.len() > 2 {
                return Err(FieldError::at(
                    "spec.policyTypes",
                    "may not have more than 2 entries",
                ));
            }
            for (i, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => isolates_ingress = true,
                    "Egress" => isolates_egress = true,
                    other => {
                        return Err(FieldError::at(
                            format!("spec.policyTypes[{i}]"),
                            format!(
                                "unsupported value {other:?}: supported values are \"Ingress\", \"Egress\""
                            ),
                        ));
                    }
                }
            }
        }
        // Defaulting: Ingress always, Egress when there are egress rules.
        _ => {
            isolates_ingress = true;
            isolates_egress = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
        }
    }

    let mut ingress = Vec::new();
    for (i, r) in spec.ingress.iter().flatten().enumerate() {
        let field = format!("spec.ingress[{i}]");
        ingress.push(rule(
            &namespace,
            r.from.as_deref(),
            "from",
            r.ports.as_deref(),
            &field,
        )?);
    }
    let mut egress = Vec::new();
    for (i, r) in spec.egress.iter().flatten().enumerate() {
        let field = format!("spec.egress[{i}]");
        egress.push(rule(
            &namespace,
            r.to.as_deref(),
            "to",
            r.ports.as_deref(),
            &field,
        )?);
    }
    Ok(Policy {
        namespace,
        name,
        pod_selector,
        isolates_ingress,
        isolates_egress,
        ingress,
        egress,
    })
}

fn rule(
    namespace: &str,
    peers: Option<&[net::NetworkPolicyPeer]>,
    peers_key: &str,
    ports: Option<&[net::NetworkPolicyPort]>,
    field: &str,
) -> Result<Rule> {
    let peers = match peers {
        None | Some([]) => None,
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for (j, p) in list.iter().enumerate() {
                out.push(peer(namespace, p, &format!("{field}.{peers_key}[{j}]"))?);
            }
            Some(out)
        }
    };
    let mut specs = Vec::new();
    for (k, p) in ports.unwrap_or_default().iter().enumerate() {
        specs.push(port_spec(p, &format!("{field}.ports[{k}]"))?);
    }
    Ok(Rule {
        peers,
        ports: specs,
    })
}

fn peer(namespace: &str, p: &net::NetworkPolicyPeer, field: &str) -> Result<Peer> {
    match (&p.ip_block, &p.namespace_selector, &p.pod_selector) {
        (None, None, None) => Err(FieldError::at(field, "must specify a peer")),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(FieldError::at(
            field,
            "may not specify both ipBlock and another peer",
        )),
        (Some(block), None, None) => {
            Ok(Peer::IpBlock(ip_block(block, &format!("{field}.ipBlock"))?))
        }
        (None, ns, pods) => {
            let namespaces = match ns {
                Some(s) => NamespaceScope::Selected(selector(
                    Some(s),
                    &format!("{field}.namespaceSelector"),
                )?),
                None => NamespaceScope::Own(namespace.to_owned()),
            };
            let pods = selector(pods.as_ref(), &format!("{field}.podSelector"))?;
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(text: &str, field: &str) -> Result<(IpNet, bool)> {
    let net = IpNet::from_str(text).map_err(|_| {
        FieldError::at(field, format!("invalid CIDR {text:?}: must be an IP address and prefix length, e.g. 10.0.0.0/8 or 2001:db8::/32"))
    })?;
    let network = net.trunc();
    Ok((network, network != net))
}

fn ip_block(block: &net::IPBlock, field: &str) -> Result<IpBlock> {
    let cidr_field = format!("{field}.cidr");
    if block.cidr.is_empty() {
        return Err(FieldError::at(cidr_field, "required"));
    }
    let (cidr, host_bits_set) = parse_cidr(&block.cidr, &cidr_field)?;
    let mut except = Vec::new();
    for (i, text) in block.except.iter().flatten().enumerate() {
        let except_field = format!("{field}.except[{i}]");
        let (net, _) = parse_cidr(text, &except_field)?;
        let strict_subset = cidr.contains(&net) && net.prefix_len() > cidr.prefix_len();
        if !strict_subset {
            return Err(FieldError::at(
                except_field,
                format!(
                    "{text:?} must be a strict subset of `cidr` {:?}",
                    block.cidr
                ),
            ));
        }
        except.push(net);
    }
    Ok(IpBlock {
        cidr,
        except,
        host_bits_set,
    })
}

fn port_spec(p: &net::NetworkPolicyPort, field: &str) -> Result<PortSpec> {
    let protocol = protocol(p.protocol.as_deref(), &format!("{field}.protocol"))?;
    let port = match (&p.port, p.end_port) {
        (None, None) => PortMatch::Any,
        (None, Some(_)) => {
            return Err(FieldError::at(
                format!("{field}.endPort"),
                "may not be specified when `port` is not specified",
            ));
        }
        (Some(IntOrString::String(name)), end) => {
            if end.is_some() {
                return Err(FieldError::at(
                    format!("{field}.endPort"),
                    "may not be specified when `port` is non-numeric",
                ));
            }
            check_port_name(name, &format!("{field}.port"))?;
            PortMatch::Named(name.clone())
        }
        (Some(IntOrString::Int(n)), end) => {
            let start = port_number(*n, &format!("{field}.port"))?;
            let end = match end {
                None => start,
                Some(e) => {
                    let end_field = format!("{field}.endPort");
                    let end = port_number(e, &end_field)?;
                    if end < start {
                        return Err(FieldError::at(
                            end_field,
                            format!("must be greater than or equal to `port` ({end} < {start})"),
                        ));
                    }
                    end
                }
            };
            PortMatch::Range(start, end)
        }
    };
    Ok(PortSpec { protocol, port })
}

fn selector(sel: Option<&LabelSelector>, field: &str) -> Result<Selector> {
    let Some(sel) = sel else {
        return Ok(Selector::default());
    };
    let mut out = Selector::default();
    for (key, value) in sel.match_labels.iter().flatten() {
        let f = format!("{field}.matchLabels[{key}]");
        check_label_key(key, &f)?;
        check_label_value(value, &f)?;
        out.match_labels.push((key.clone(), value.clone()));
    }
    for (i, expr) in sel.match_expressions.iter().flatten().enumerate() {
        let f = format!("{field}.matchExpressions[{i}]");
        check_label_key(&expr.key, &format!("{f}.key"))?;
        let values = expr.values.clone().unwrap_or_default();
        let needs_values = matches!(expr.operator.as_str(), "In" | "NotIn");
        match expr.operator.as_str() {
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(FieldError::at(
                    format!("{f}.operator"),
                    format!(
                        "{other:?} is not a valid selector operator (In, NotIn, Exists, DoesNotExist)"
                    ),
                ));
            }
        }
        if needs_values && values.is_empty() {
            return Err(FieldError::at(
                format!("{f}.values"),
                format!("must be specified when `operator` is '{}'", expr.operator),
            ));
        }
        if !needs_values && !values.is_empty() {
            return Err(FieldError::at(
                format!("{f}.values"),
                format!(
                    "may not be specified when `operator` is '{}'",
                    expr.operator
                ),
            ));
        }
        for (j, v) in values.iter().enumerate() {
            check_label_value(v, &format!("{f}.values[{j}]"))?;
        }
        out.match_expressions.push(match expr.operator.as_str() {
            "In" => Requirement::In(expr.key.clone(), values),
            "NotIn" => Requirement::NotIn(expr.key.clone(), values),
            "Exists" => Requirement::Exists(expr.key.clone()),
            _ => Requirement::DoesNotExist(expr.key.clone()),
        });
    }
    Ok(out)
}

fn is_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_chars(s)
}

/// RFC 1123 label characters, without the length limit (subdomain parts have none of their own).
fn is_dns_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !s.is_empty()
        && b.first()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.last()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !label.is_empty()
                && b.first()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.last()
                    .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

fn check_label_key(key: &str, field: &str) -> Result<()> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(is_dns_subdomain);
    if prefix_ok && is_name_part(name) {
        Ok(())
    } else {
        Err(FieldError::at(
            field,
            format!(
                "invalid label key {key:?}: a name of at most 63 alphanumeric characters, '-', '_' or '.', starting and ending alphanumeric, with an optional DNS subdomain prefix and '/'"
            ),
        ))
    }
}

fn check_label_value(value: &str, field: &str) -> Result<()> {
    if value.is_empty() || is_name_part(value) {
        Ok(())
    } else {
        Err(FieldError::at(
            field,
            format!(
                "invalid label value {value:?}: at most 63 alphanumeric characters, '-', '_' or '.', starting and ending alphanumeric (or empty)"
            ),
        ))
    }
}

/// IANA_SVC_NAME: 1-15 lowercase alphanumerics or '-', at least one letter, no leading, trailing
/// or double hyphen.
fn check_port_name(name: &str, field: &str) -> Result<()> {
    let b = name.as_bytes();
    let ok = !name.is_empty()
        && name.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(FieldError::at(
            field,
            format!(
                "invalid port name {name:?}: 1-15 lowercase letters, digits or '-', at least one letter, no leading, trailing or double '-'"
            ),
        ))
    }
}
