//! The netfilter comparison configurations, in the lab's node namespace (where a node's
//! FORWARD path runs), without eBPF:
//!
//! - (d) iptables: the FORWARD chain holds `rules - 1` rules that match no benchmark packet
//!   (`-s A -d B -p tcp --dport P -j DROP` for other pods), then the one rule that drops the
//!   client's flows to `DENIED_PORT`, then the ACCEPTs for the client/server flows; policy DROP.
//!   Every forwarded packet walks the whole list, as in an iptables enforcer without a
//!   conntrack shortcut. `iptables` is Debian's default, the nf_tables backend.
//! - (e) nftables: one set of `rules` (source, destination, port) elements, the denied flow among
//!   them, and one rule looking the packet up in it; then the same ACCEPTs.
//!
//! Both are removed with `nft flush ruleset` (iptables-nft keeps its tables in nf_tables).

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cluster::{CLIENT_IP, DENIED_PORT, SERVER_IP};

/// A (source, destination, port) that no benchmark packet carries.
fn noise(index: usize) -> (Ipv4Addr, Ipv4Addr, u16) {
    let i = u32::try_from(index).unwrap_or(u32::MAX);
    let base = u32::from(Ipv4Addr::new(10, 64, 0, 0));
    let src = Ipv4Addr::from(base + (i.wrapping_mul(7919) % 200_000) + 1);
    let dst = Ipv4Addr::from(base + (i.wrapping_mul(104_729) % 200_000) + 2);
    let port = u16::try_from(1024 + (i % 60_000)).unwrap_or(1024);
    (src, dst, port)
}

/// The iptables-restore input of configuration (d).
pub fn iptables_script(rules: usize) -> String {
    let mut script = String::from("*filter\n:FORWARD DROP [0:0]\n");
    for i in 0..rules.saturating_sub(1) {
        let (src, dst, port) = noise(i);
        let _ = writeln!(
            script,
            "-A FORWARD -s {src}/32 -d {dst}/32 -p tcp -m tcp --dport {port} -j DROP"
        );
    }
    let _ = writeln!(
        script,
        "-A FORWARD -s {CLIENT_IP}/32 -d {SERVER_IP}/32 -p tcp -m tcp --dport {DENIED_PORT} -j DROP"
    );
    let _ = writeln!(
        script,
        "-A FORWARD -s {CLIENT_IP}/32 -d {SERVER_IP}/32 -j ACCEPT"
    );
    let _ = writeln!(
        script,
        "-A FORWARD -s {SERVER_IP}/32 -d {CLIENT_IP}/32 -j ACCEPT"
    );
    script.push_str("COMMIT\n");
    script
}

/// The `nft -f` input of configuration (e).
pub fn nft_script(elements: usize) -> String {
    let mut script = String::from(
        "table ip fgbench {\n  set denied {\n    type ipv4_addr . ipv4_addr . inet_service\n    elements = {\n",
    );
    for i in 0..elements.saturating_sub(1) {
        let (src, dst, port) = noise(i);
        let _ = writeln!(script, "      {src} . {dst} . {port},");
    }
    let _ = writeln!(script, "      {CLIENT_IP} . {SERVER_IP} . {DENIED_PORT}");
    script.push_str("    }\n  }\n");
    let _ = write!(
        script,
        "  chain forward {{\n    type filter hook forward priority filter; policy drop;\n    \
         ip saddr . ip daddr . tcp dport @denied drop\n    \
         ip saddr {CLIENT_IP} ip daddr {SERVER_IP} accept\n    \
         ip saddr {SERVER_IP} ip daddr {CLIENT_IP} accept\n  }}\n}}\n"
    );
    script
}

/// Runs `ip netns exec <netns> <program> <args>` with `input` on stdin; fails on a non-zero exit.
pub fn run_in(netns: &str, program: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, program])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running ip netns exec {netns} {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("writing to {program}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {args:?} in {netns}: {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Loads configuration (d) into the node namespace; returns the number of FORWARD rules.
pub fn load_iptables(node_netns: &str, rules: usize) -> Result<usize> {
    run_in(node_netns, "iptables-restore", &[], &iptables_script(rules))?;
    let listed = run_in(node_netns, "iptables", &["-S", "FORWARD"], "")?;
    Ok(listed
        .lines()
        .filter(|l| l.starts_with("-A FORWARD"))
        .count())
}

/// Loads configuration (e) into the node namespace; returns the number of set elements.
pub fn load_nft(node_netns: &str, elements: usize) -> Result<usize> {
    run_in(node_netns, "nft", &["-f", "-"], &nft_script(elements))?;
    let listed = run_in(
        node_netns,
        "nft",
        &["list", "set", "ip", "fgbench", "denied"],
        "",
    )?;
    // Elements are listed comma-separated, possibly several per line, after the set's type.
    let elements = listed.split_once("elements").map_or("", |(_, rest)| rest);
    Ok(elements.matches(" . ").count() / 2)
}

/// Removes every netfilter table of the node namespace.
pub fn flush(node_netns: &str) -> Result<()> {
    run_in(node_netns, "nft", &["flush", "ruleset"], "")?;
    Ok(())
}
