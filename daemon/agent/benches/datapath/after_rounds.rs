//! What the benchmark measures after the interleaved rounds, on fresh (b) and (c) nodes: setup
//! costs, the live maps, policy changes and pod relabels, and the programs' own run time in
//! traffic and per path (the diagnostics section of the report).

use super::*;

impl Bench {
    /// Everything measured after the rounds, on fresh (b) and (c) nodes.
    pub(super) fn after(&mut self, rss_start: u64, rss_clusters: u64) -> Result<String> {
        let mut out = String::new();
        out.push_str(&self.setup_costs());

        // A live (c) node: memory, changes, the programs' cost in traffic, map sizes.
        let mut node = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        let first = node.apply(&self.large)?;
        let rss_node = rss_now()?;
        let snapshot_line = {
            let snap = node.snapshot();
            format!(
                "  (c) snapshot: {} identities, {} IP-cache entries, {} tables, {} cells, {} attributions, {} endpoints (first apply: {} map ops)",
                thousands(snap.identities.len() as f64),
                thousands(snap.ipcache.len() as f64),
                thousands(snap.tables.len() as f64),
                thousands(snap.cell_count() as f64),
                thousands(snap.attributions.len() as f64),
                snap.endpoints.len(),
                thousands(first.ops as f64)
            )
        };
        let changes = self.changes(&mut node)?;
        let applies = 2 + 3 * self.args.changes.max(1);
        let rss_changed = rss_now()?;
        let (_, hwm) = kernel::rss_kib()?;
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        let _ = writeln!(
            out,
            "\nmemory (VmRSS after malloc_trim, so freed heap is not counted):"
        );
        let _ = writeln!(
            out,
            "  agent RSS: {} at start; {} with the clusters indexed (+{} for (c)'s 50,000-pod model); \
             {} with the (c) node live after its first apply (+{}: snapshot, event-enrichment tables, loaded object); \
             {} after {applies} applies in all (+{} more: the enricher keeps the tables of past generations); \
             peak VmHWM {}",
            mib(rss_start),
            mib(rss_clusters),
            mib(rss_clusters.saturating_sub(rss_start)),
            mib(rss_node),
            mib(rss_node.saturating_sub(rss_clusters)),
            mib(rss_changed),
            mib(rss_changed.saturating_sub(rss_node)),
            mib(hwm)
        );
        out.push_str(&snapshot_line);
        out.push('\n');
        let diag_c = self.diagnose(&mut node)?;
        out.push_str(&self.map_table()?);
        drop(node);
        let mut small = Node::on_lab(&self.lab, Mode::Enforce, "lab")?;
        small.apply(&self.small)?;
        let diag_b = self.diagnose(&mut small)?;
        drop(small);
        out.push_str(&changes);

        // Compile alone, in memory (no kernel), from an empty snapshot.
        let locals = self.locals();
        let mut compile_times = Vec::new();
        let mut diff_times = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            let snap = compile(&self.large, &locals, None);
            compile_times.push(started.elapsed());
            let started = Instant::now();
            let ops = diff(&Default::default(), &snap, Mode::Enforce);
            diff_times.push(started.elapsed());
            drop(ops);
        }
        let _ = writeln!(
            out,
            "\n(c) compile alone (in memory, no maps, from nothing): median {} over {}; diff from empty: {}",
            ms(median_duration(&compile_times)),
            compile_times.len(),
            ms(median_duration(&diff_times))
        );

        let paths_b = testrun::paths(&self.small, 200_000)?;
        let paths_c = testrun::paths(&self.large, 200_000)?;
        out.push_str(&self.diagnostics(
            &[('b', diag_b), ('c', diag_c)],
            &[('b', paths_b), ('c', paths_c)],
        ));
        Ok(out)
    }

    fn setup_costs(&self) -> String {
        let mut out = String::from("\nset-up costs (median over the rounds):\n");
        for (config, costs) in &self.costs {
            let setup = median_duration(&costs.setup);
            match config {
                'b' | 'c' => {
                    let compiles: Vec<Duration> = costs.applies.iter().map(|s| s.compile).collect();
                    let writes: Vec<Duration> = costs.applies.iter().map(|s| s.write).collect();
                    let last = costs.applies.last();
                    let _ = writeln!(
                        out,
                        "  ({config}) load + attach {}; first apply: compile + diff {}, write {} ({} map ops, {} cells)",
                        ms(setup),
                        ms(median_duration(&compiles)),
                        ms(median_duration(&writes)),
                        thousands(last.map_or(0, |s| s.ops) as f64),
                        thousands(last.map_or(0, |s| s.cells) as f64),
                    );
                }
                'd' => {
                    let _ = writeln!(
                        out,
                        "  (d) iptables-restore of {} rules: {}",
                        thousands(self.args.rules as f64),
                        ms(setup)
                    );
                }
                'e' => {
                    let _ = writeln!(
                        out,
                        "  (e) nft -f with a {}-element set: {}",
                        thousands(self.args.rules as f64),
                        ms(setup)
                    );
                }
                _ => {}
            }
        }
        for (config, costs) in &self.costs {
            if matches!(config, 'b' | 'c') {
                let _ = writeln!(
                    out,
                    "  ({config}) flow events drained during the runs: {} ({:.2} per new connection)",
                    thousands(costs.events as f64),
                    ratio(costs.events as f64, costs.connections as f64)
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  check: {note}");
        }
        out
    }

    /// The live node's maps, as the kernel has them.
    fn map_table(&self) -> Result<String> {
        let maps = kernel::maps("FG_")?;
        let header: Vec<String> = [
            "map of the (c) node, after the diagnostic traffic",
            "type",
            "max entries",
            "entries",
            "kernel memory",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let rows: Vec<Vec<String>> = maps
            .iter()
            .map(|m| {
                vec![
                    m.name.clone(),
                    map_type(m.map_type).to_owned(),
                    thousands(m.max_entries as f64),
                    thousands(m.entries as f64),
                    format!("{:.1} MiB", m.memlock as f64 / 1_048_576.0),
                ]
            })
            .collect();
        let mut out = String::from("\n");
        out.push_str(&report::table(&header, &rows));
        let total: u64 = maps.iter().map(|m| m.memlock).sum();
        let _ = writeln!(
            out,
            "  maps in all: {:.1} MiB of kernel memory (the kernel's memlock figure per map)",
            total as f64 / 1_048_576.0
        );
        Ok(out)
    }

    /// One policy change and one pod relabel (and a policy change elsewhere), each applied
    /// `changes` times (change, revert, ...) to the live (c) node, end to end as the
    /// Kubernetes-mode agent applies a watch event: the object replaced in the index
    /// (`upsert`), then compile + diff, the event-enrichment tables, and the map writes.
    fn changes(&mut self, node: &mut Node) -> Result<String> {
        let mut objects = cluster::large(self.args.pods, self.args.policies, self.args.namespaces)?;
        let started = Instant::now();
        let mut index = objects.cluster();
        let build = started.elapsed();
        // The node's snapshot is of another index (`self.large`): one full apply of this one
        // first, as after an agent start.
        let warm = node.apply(&index)?;
        type Mutate = fn(&mut Objects) -> Option<cluster::Changed>;
        let kinds: [(&str, Mutate); 3] = [
            (
                "policy selecting the server: a port added/removed",
                Objects::toggle_server_policy,
            ),
            (
                "pod relabel: a remote pod the server allows changes tier",
                Objects::toggle_remote_pod_label,
            ),
            (
                "policy selecting no local pod: a port added/removed",
                Objects::toggle_remote_policy,
            ),
        ];
        let header: Vec<String> = [
            "change on (c), applied to the live maps",
            "map ops",
            "index update",
            "compile + diff",
            "enrich tables",
            "write",
            "total (median)",
            "total (max)",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut rows = Vec::new();
        let mut targets = String::new();
        for (label, mutate) in kinds {
            let mut stats = Vec::new();
            let mut updates = Vec::new();
            for _ in 0..self.args.changes.max(1) {
                let Some(changed) = mutate(&mut objects) else {
                    bail!("the cluster has nothing to change for: {label}");
                };
                let started = Instant::now();
                if !changed.upsert(&mut index) {
                    bail!("the change left the index as it was: {label}");
                }
                updates.push(started.elapsed());
                stats.push(node.apply(&index)?);
            }
            let part =
                |f: fn(&ApplyStats) -> Duration| -> Vec<Duration> { stats.iter().map(f).collect() };
            let totals: Vec<Duration> = stats
                .iter()
                .zip(&updates)
                .map(|(s, u)| *u + s.compile + s.enrich + s.write)
                .collect();
            let ops: Vec<f64> = stats.iter().map(|s| s.ops as f64).collect();
            let total = median_duration(&totals);
            rows.push(vec![
                label.to_owned(),
                thousands(median(&ops)),
                ms(median_duration(&updates)),
                ms(median_duration(&part(|s| s.compile))),
                ms(median_duration(&part(|s| s.enrich))),
                ms(median_duration(&part(|s| s.write))),
                ms(total),
                ms(report::max_duration(&totals)),
            ]);
            let ok = total < Duration::from_millis(10);
            let what = format!(
                "{label}: index update + compile + enrich + write, median {} (target < 10 ms)",
                ms(total)
            );
            let _ = writeln!(targets, "  [{}] {what}", if ok { " ok " } else { "MISS" });
            self.targets.push((ok, what));
        }
        let mut out = format!(
            "\nchanges ({} applies each, alternating change and revert, after one full apply of the index: {} map ops, {}; \
             the whole index built from the objects for comparison: {}):\n",
            self.args.changes.max(1),
            thousands(warm.ops as f64),
            ms(warm.compile + warm.enrich + warm.write),
            ms(build),
        );
        out.push_str(&report::table(&header, &rows));
        out.push_str("targets:\n");
        out.push_str(&targets);
        Ok(out)
    }

    /// Request/response and new connections again with `kernel.bpf_stats_enabled`, for the
    /// programs' run counts and times. Not part of the table: counting costs time itself.
    fn diagnose(&self, node: &mut Node) -> Result<Diagnosis> {
        let secs = Duration::from_secs_f64(self.args.secs.clamp(0.5, 2.0));
        let stats = kernel::BpfStats::enable()?;
        let mut drain = || {
            node.drain();
        };
        let before = kernel::programs("fg_")?;
        let rr = traffic::request_response(&self.pair, RR_PORT, secs, &mut drain)?;
        let middle = kernel::programs("fg_")?;
        let crr = traffic::connect_rate(&self.pair, CRR_PORT, secs, &mut drain)?;
        let after = kernel::programs("fg_")?;
        let iperf_secs = self.args.iperf_secs.clamp(1, 2);
        let bits = traffic::iperf3(&self.pair, IPERF_PORT, iperf_secs, &mut drain)?;
        let after_bulk = kernel::programs("fg_")?;
        drop(stats);
        Ok(Diagnosis {
            rr: (rr, delta(&before, &middle)),
            crr: (crr, delta(&middle, &after)),
            // iperf3 sends for one omitted second plus the measured ones.
            bulk: (bits, f64::from(iperf_secs + 1), delta(&after, &after_bulk)),
        })
    }

    fn diagnostics(&self, runs: &[(char, Diagnosis)], paths: &[(char, testrun::Paths)]) -> String {
        let mut out = String::from(
            "\nwhere the time goes, 1: the programs in traffic (separate runs with kernel.bpf_stats_enabled=1, \
             which adds two clock reads per run):\n",
        );
        let a_rr = self.samples.median('a', Metric::RequestResponse);
        let a_crr = self.samples.median('a', Metric::NewConnections);
        let header: Vec<String> = [
            "run",
            "program",
            "runs / transaction",
            "ns / run",
            "ns / transaction",
            "vs (a)'s transaction time",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let mut rows = Vec::new();
        for (config, diagnosis) in runs {
            for (label, (rate, progs), base) in [
                ("request/response", &diagnosis.rr, a_rr),
                ("new connections", &diagnosis.crr, a_crr),
            ] {
                let per_txn_total: f64 = progs
                    .iter()
                    .map(|p| ratio(p.run_time_ns as f64, rate.count as f64))
                    .sum();
                for p in progs {
                    rows.push(vec![
                        format!("({config}) {label}"),
                        p.name.clone(),
                        format!("{:.2}", ratio(p.runs as f64, rate.count as f64)),
                        format!("{:.0}", ratio(p.run_time_ns as f64, p.runs as f64)),
                        format!("{:.0}", ratio(p.run_time_ns as f64, rate.count as f64)),
                        String::new(),
                    ]);
                }
                rows.push(vec![
                    format!("({config}) {label}"),
                    "both".to_owned(),
                    String::new(),
                    String::new(),
                    format!("{per_txn_total:.0}"),
                    format!("{:.1}%", per_txn_total * base / 1e9 * 100.0),
                ]);
            }
        }
        out.push_str(&report::table(&header, &rows));
        let _ = writeln!(
            out,
            "  (a)'s transaction time: request/response {:.2} us, new connection {:.2} us",
            ratio(1e6, a_rr),
            ratio(1e6, a_crr)
        );
        for (config, diagnosis) in runs {
            let (bits, secs, progs) = &diagnosis.bulk;
            let busy: f64 = progs.iter().map(|p| p.run_time_ns as f64).sum::<f64>() / (secs * 1e9);
            let each: Vec<String> = progs
                .iter()
                .map(|p| {
                    format!(
                        "{} {} runs/s at {:.0} ns",
                        p.name,
                        thousands(p.runs as f64 / secs),
                        ratio(p.run_time_ns as f64, p.runs as f64)
                    )
                })
                .collect();
            let _ = writeln!(
                out,
                "  ({config}) iperf3 at {:.2} Gbit/s: {}; the programs take {:.1}% of the one CPU that carries the transfer",
                bits / 1e9,
                each.join(", "),
                busy * 100.0
            );
        }

        let _ = writeln!(
            out,
            "\nwhere the time goes, 2: ns per run of each path, BPF_PROG_TEST_RUN of the real programs on crafted frames \
             (own maps filled for the cluster, warm caches, median of 5):"
        );
        let mut header = vec!["path".to_owned()];
        header.extend(paths.iter().map(|(c, _)| format!("({c}) maps")));
        let lines: [(&str, PathOf); 6] = [
            ("ARP: one load, not IP, pass", |p| p.not_ip),
            ("TCP before any snapshot: full parse + FG_ACTIVE", |p| {
                p.parse_only
            }),
            (
                "TCP established: parse + FG_ACTIVE + flow-cache hit + mark",
                |p| p.established,
            ),
            (
                "TCP reply, at the other hook: the same flow-cache slot",
                |p| p.reply,
            ),
            (
                "fg_to_pod, same-node packet both ends passed: the mark + a counter",
                |p| p.trusted,
            ),
            (
                "TCP SYN: parse + lookups + IP-cache LPM + policy LPM + conntrack update + event",
                |p| p.new_flow,
            ),
        ];
        let rows: Vec<Vec<String>> = lines
            .iter()
            .map(|(label, get)| {
                let mut row = vec![(*label).to_owned()];
                row.extend(paths.iter().map(|(_, p)| format!("{:.0}", get(p))));
                row
            })
            .collect();
        out.push_str(&report::table(&header, &rows));
        out
    }
}

/// Picks one path's figure.
type PathOf = fn(&testrun::Paths) -> f64;

#[derive(Debug)]
struct Diagnosis {
    rr: (Rate, Vec<kernel::ProgStat>),
    crr: (Rate, Vec<kernel::ProgStat>),
    /// Bits per second, seconds of traffic, and the programs' counters over the transfer.
    bulk: (f64, f64, Vec<kernel::ProgStat>),
}

fn delta(before: &[kernel::ProgStat], after: &[kernel::ProgStat]) -> Vec<kernel::ProgStat> {
    after
        .iter()
        .map(|a| {
            let b = before.iter().find(|b| b.name == a.name);
            kernel::ProgStat {
                name: a.name.clone(),
                runs: a.runs.saturating_sub(b.map_or(0, |b| b.runs)),
                run_time_ns: a.run_time_ns.saturating_sub(b.map_or(0, |b| b.run_time_ns)),
            }
        })
        .collect()
}

fn map_type(t: u64) -> &'static str {
    match t {
        1 => "hash",
        2 => "array",
        6 => "percpu array",
        9 => "lru hash",
        11 => "lpm trie",
        27 => "ring buffer",
        _ => "other",
    }
}
