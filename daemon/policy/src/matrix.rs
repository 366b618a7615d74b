//! The pod-to-pod truth table (`flowgate verdicts --matrix`), like the upstream e2e reachability
//! tables: one grid per (protocol, port), rows are sources, columns destinations.

use std::fmt::Write as _;

use serde::Serialize;

use crate::cluster::{Cluster, PodId};
use crate::evaluate::{Flow, Verdict, evaluate};
use crate::model::Protocol;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// `namespace/name` of every pod with an IP (host-network pods excluded), sorted.
    pub pods: Vec<String>,
    pub tables: Vec<Table>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub protocol: Protocol,
    pub port: u16,
    /// `verdicts[from][to]`, indexes into `Matrix::pods`.
    pub verdicts: Vec<Vec<Verdict>>,
}

/// Evaluates every pod pair for every (protocol, port). Pods without an IP cannot be probed and are
/// left out, as are host-network pods (NetworkPolicy does not apply to them).
pub fn matrix(cluster: &Cluster, protocols: &[Protocol], ports: &[u16]) -> Matrix {
    let pods: Vec<(PodId, String)> = cluster
        .pods()
        .filter(|(_, p)| !p.host_network && !p.ips.is_empty())
        .map(|(id, p)| (id, p.key()))
        .collect();
    let mut tables = Vec::new();
    for &protocol in protocols {
        for &port in ports {
            let verdicts = pods
                .iter()
                .map(|&(src, _)| {
                    pods.iter()
                        .map(|&(dst, _)| pair_verdict(cluster, src, dst, protocol, port))
                        .collect()
                })
                .collect();
            tables.push(Table {
                protocol,
                port,
                verdicts,
            });
        }
    }
    Matrix {
        pods: pods.into_iter().map(|(_, k)| k).collect(),
        tables,
    }
}

fn pair_verdict(
    cluster: &Cluster,
    src: PodId,
    dst: PodId,
    protocol: Protocol,
    port: u16,
) -> Verdict {
    let src_ip = cluster.pod(src).ips[0];
    // Same family as the source when the destination is dual-stack.
    let dst_ips = &cluster.pod(dst).ips;
    let Some(dst_ip) = dst_ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == src_ip.is_ipv4())
    else {
        return Verdict::Deny;
    };
    let flow = Flow {
        src_ip,
        src_pod: Some(src),
        dst_ip,
        dst_pod: Some(dst),
        protocol,
        port: Some(port),
    };
    evaluate(cluster, &flow).verdict
}

impl Matrix {
    /// The grid as text: `.` allow, `X` deny; tables separated by a blank line.
    pub fn to_table(&self) -> String {
        let width = self
            .pods
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(0)
            .max("from\\to".len());
        let mut out = String::new();
        for (t, table) in self.tables.iter().enumerate() {
            if t > 0 {
                out.push('\n');
            }
            let _ = writeln!(
                out,
                "{}/{} (rows: from, columns: to; . allow, X deny)",
                table.protocol, table.port
            );
            let _ = write!(out, "{:<width$}", "from\\to");
            for pod in &self.pods {
                let _ = write!(out, "  {pod}");
            }
            out.push('\n');
            for (row, name) in table.verdicts.iter().zip(&self.pods) {
                let _ = write!(out, "{name:<width$}");
                for (cell, col) in row.iter().zip(&self.pods) {
                    let mark = if *cell == Verdict::Allow { "." } else { "X" };
                    let _ = write!(out, "  {mark:<w$}", w = col.len());
                }
                // No trailing blanks.
                let trimmed = out.trim_end_matches(' ').len();
                out.truncate(trimmed);
                out.push('\n');
            }
        }
        out
    }
}
