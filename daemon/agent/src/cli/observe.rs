//! `flowgate observe`: follow an agent's flow records from its HTTP API (`/v1/flows`, server-sent
//! events), filtered on the server, printed one line per flow (like `hubble observe`), as JSON
//! lines, or as a table.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use flowgate_flows::compact::{compact, deciders};
use flowgate_flows::pipeline::Record;
use flowgate_flows::record::FlowRecord;

use super::{Exit, emit};
use crate::http::FlowQuery;

/// Show the flows an agent reports: what is allowed and dropped, and by which policy and rule.
///
/// Reads the agent's /v1/flows stream (server-sent events). Filters are applied by the agent.
/// Examples:
///   flowgate observe --follow --verdict deny
///   flowgate observe --last 50 --namespace shop -o json
///   flowgate observe --follow --policy shop/default-deny-ingress --since 5m
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The agent's HTTP API.
    #[arg(long, default_value = "http://127.0.0.1:9090", env = "FLOWGATE_SERVER")]
    pub server: String,

    /// File holding the bearer token (needed when the agent listens off loopback).
    #[arg(long, env = "FLOWGATE_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// Keep following new flows.
    #[arg(long, short = 'f', env = "FLOWGATE_FOLLOW")]
    pub follow: bool,

    /// Show this many recent flows first (default 20; 0 with --follow).
    #[arg(long, env = "FLOWGATE_LAST")]
    pub last: Option<usize>,

    /// Only this verdict: allow, deny or audit_deny.
    #[arg(long, env = "FLOWGATE_VERDICT")]
    pub verdict: Option<String>,

    /// Only flows with an end in this namespace.
    #[arg(long, short = 'n', env = "FLOWGATE_NAMESPACE")]
    pub namespace: Option<String>,

    /// Only flows from this pod (namespace/name or name).
    #[arg(long, env = "FLOWGATE_FROM_POD")]
    pub from_pod: Option<String>,

    /// Only flows to this pod (namespace/name or name).
    #[arg(long, env = "FLOWGATE_TO_POD")]
    pub to_pod: Option<String>,

    /// Only flows this policy (namespace/name) allowed or isolated.
    #[arg(long, env = "FLOWGATE_POLICY")]
    pub policy: Option<String>,

    /// Only ingress or egress verdicts.
    #[arg(long, env = "FLOWGATE_DIRECTION")]
    pub direction: Option<String>,

    /// Only flows since then: a duration ago (30s, 5m, 2h, 1d) or an RFC 3339 UTC time.
    #[arg(long, env = "FLOWGATE_SINCE")]
    pub since: Option<String>,

    /// Output: compact (one colored line per flow), json (the records), table.
    #[arg(
        long,
        short = 'o',
        value_enum,
        default_value = "compact",
        env = "FLOWGATE_OUTPUT"
    )]
    pub output: ObserveOutput,

    /// No colors in compact output.
    #[arg(long, env = "FLOWGATE_NO_COLOR")]
    pub no_color: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ObserveOutput {
    Compact,
    Json,
    Table,
}

/// `5m` -> an RFC 3339 time five minutes ago; RFC 3339 passes through.
pub fn since(text: &str, now: SystemTime) -> anyhow::Result<String> {
    if text.contains('T') {
        return Ok(text.to_owned());
    }
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number.parse().with_context(|| {
        format!("--since {text:?}: expected e.g. 30s, 5m, 2h, 1d or an RFC 3339 time")
    })?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        other => bail!("--since {text:?}: unknown unit {other:?} (use s, m, h or d)"),
    };
    let now_ns = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let then = i128::try_from(now_ns).unwrap_or(i128::MAX) - i128::from(secs) * 1_000_000_000;
    Ok(flowgate_flows::enrich::rfc3339(then))
}

fn query_string(args: &Args) -> anyhow::Result<String> {
    let query = FlowQuery {
        namespace: args.namespace.clone(),
        pod: None,
        from_pod: args.from_pod.clone(),
        to_pod: args.to_pod.clone(),
        direction: args.direction.clone(),
        verdict: args.verdict.clone(),
        policy: args.policy.clone(),
        since: args
            .since
            .as_deref()
            .map(|s| since(s, SystemTime::now()))
            .transpose()?,
        last: args.last,
        follow: args.follow.then_some(true),
    };
    query.validate().map_err(|e| anyhow::anyhow!("{e}"))?;
    let value = serde_json::to_value(&query)?;
    let mut parts = Vec::new();
    for (k, v) in value.as_object().into_iter().flatten() {
        let v = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        parts.push(format!("{k}={}", percent_encode(&v)));
    }
    Ok(parts.join("&"))
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn table_row(f: &FlowRecord) -> String {
    let end = |e: &flowgate_flows::record::Endpoint| match (&e.namespace, &e.pod) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
        _ => e.ip.to_string(),
    };
    let name = |v: serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    format!(
        "{:<24} {:<10} {:<7} {:<32} {:<32} {:<11} {:<12} {}",
        f.time.get(..23).unwrap_or(&f.time),
        name(serde_json::to_value(f.verdict).unwrap_or_default()),
        name(serde_json::to_value(f.direction).unwrap_or_default()),
        end(&f.source),
        end(&f.destination),
        format!(
            "{}/{}",
            f.destination
                .port
                .map(|p| p.to_string())
                .unwrap_or_default(),
            f.network.transport
        ),
        name(serde_json::to_value(f.reason).unwrap_or_default()),
        deciders(f)
    )
}

pub fn run(args: &Args) -> anyhow::Result<Exit> {
    let Some(rest) = args.server.strip_prefix("http://") else {
        bail!(
            "--server {}: only http:// is supported (put TLS in front of the agent)",
            args.server
        );
    };
    let host = rest.trim_end_matches('/');
    let query = query_string(args)?;
    let token = match &args.token_file {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read --token-file {}", p.display()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let addr = host
        .to_socket_addrs()
        .with_context(|| format!("--server {}: cannot resolve {host}", args.server))?
        .next();
    let Some(addr) = addr else {
        bail!("--server {}: no address for {host}", args.server)
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).with_context(|| {
            format!(
                "cannot connect to the agent at {} (is `flowgate agent` running?)",
                args.server
            )
        })?;
    // HTTP/1.0: the body comes close-delimited, no chunked encoding to undo.
    let mut request =
        format!("GET /v1/flows?{query} HTTP/1.0\r\nHost: {host}\r\nAccept: text/event-stream\r\n");
    if let Some(t) = &token {
        request.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // Skip the headers.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
    if code != 200 {
        let mut body = String::new();
        std::io::Read::read_to_string(&mut reader, &mut body)?;
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        eprintln!("error: the agent answered {code}: {}", message.trim());
        return Ok(Exit::Failed);
    }
    let color = !args.no_color
        && args.output == ObserveOutput::Compact
        && std::io::IsTerminal::is_terminal(&std::io::stdout());
    if args.output == ObserveOutput::Table {
        emit(&format!(
            "{:<24} {:<10} {:<7} {:<32} {:<32} {:<11} {:<12} {}\n",
            "TIME", "VERDICT", "DIR", "SOURCE", "DESTINATION", "PORT", "REASON", "POLICY"
        ))?;
    }
    let mut event = String::new();
    let mut data = String::new();
    for line in reader.lines() {
        let line = line?;
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_owned();
        } else if let Some(v) = line.strip_prefix("data: ") {
            data.push_str(v);
        } else if line.is_empty() && !data.is_empty() {
            let text = std::mem::take(&mut data);
            if event == "notice" {
                eprintln!("notice: {text}");
            } else {
                print_record(&text, args.output, color)?;
            }
        }
    }
    Ok(Exit::Ok)
}

fn print_record(json: &str, output: ObserveOutput, color: bool) -> anyhow::Result<()> {
    if output == ObserveOutput::Json {
        return emit(&format!("{json}\n"));
    }
    let value: serde_json::Value = serde_json::from_str(json)?;
    let record = parse_record(&value);
    let line = match (&record, output) {
        (Some(r), ObserveOutput::Compact) => compact(r, color),
        (Some(Record::Flow(f)), ObserveOutput::Table) => table_row(f),
        (Some(r), _) => compact(r, false),
        (None, _) => json.to_owned(),
    };
    emit(&format!("{line}\n"))
}

/// Records as the agent serializes them, read back for display.
fn parse_record(value: &serde_json::Value) -> Option<Record> {
    match value["record_type"].as_str()? {
        "flow" => serde_json::from_value::<FlowRecord>(value.clone())
            .ok()
            .map(Record::Flow),
        "gap" => serde_json::from_value::<flowgate_flows::gap::GapRecord>(value.clone())
            .ok()
            .map(Record::Gap),
        "heartbeat" | "policy_snapshot" => {
            serde_json::from_value::<flowgate_flows::node_record::NodeRecord>(value.clone())
                .ok()
                .map(Record::Node)
        }
        _ => None,
    }
}
