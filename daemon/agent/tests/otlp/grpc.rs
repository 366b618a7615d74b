// Part of `otlp.rs` (brought in with `include!`): gRPC: the fake collector.

// ---------------------------------------------------------------------------------------------
// gRPC: the fake collector

#[test]
fn grpc_collector_gets_exactly_one_log_record_per_record() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();
    let mut config = fast_config(&collector.endpoint(), OtlpProtocol::Grpc);
    config.headers = vec![("x-flowgate-tenant".into(), "blue".into())];
    let mut sink = OtlpSink::new(config).unwrap();
    let records = sample();
    for r in &records {
        sink.write(r).unwrap();
    }
    // Nothing leaves before the flush (batch_delay is 10 minutes).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.stats().exported, 0);
    sink.flush().unwrap();
    let mut logs = rt.block_on(collector.exported_logs(4, Duration::from_secs(10)));
    // Nothing more arrives.
    logs.extend(rt.block_on(collector.exported_logs(1, Duration::from_millis(300))));
    assert_eq!(logs.len(), 4, "one log record per record: {logs:#?}");

    let by_seq = |seq: i64| -> &ExportedLog {
        let want = format!("{:?}", Some(i(seq)));
        logs.iter()
            .find(|l| l.attributes.get("flowgate.seq") == Some(&want))
            .unwrap_or_else(|| panic!("no log record with seq {seq}: {logs:#?}"))
    };
    for ((seq, record), (severity, text, body)) in (1..).zip(&records).zip(sample_heads()) {
        let log = by_seq(seq);
        assert_eq!(log.severity_number, severity, "seq {seq}");
        assert_eq!(log.severity_text, text, "seq {seq}");
        assert_eq!(log.body, Some(format!("{:?}", s(body))), "seq {seq}");
        assert_eq!(log.attributes, flat_mapping(record), "seq {seq}");
        assert_eq!(log.dropped_attributes_count, 0);
    }
    // The mapping itself, written out by hand for three of them.
    assert_eq!(by_seq(2).attributes, flat(&deny_attributes()));
    assert_eq!(by_seq(3).attributes, flat(&audit_attributes()));
    assert_eq!(by_seq(4).attributes, flat(&gap_attributes()));
    let allow = &by_seq(1).attributes;
    assert_eq!(
        allow.get("flowgate.policy.allowed_by"),
        Some(&format!("{:?}", Some(strs(&["shop/allow-web[0]"]))))
    );
    assert_eq!(
        allow.get("k8s.pod.name"),
        Some(&format!("{:?}", Some(s("frontend")))),
        "an egress record is reported by its source pod"
    );
    assert!(!allow.contains_key("flowgate.policy.isolated_by"));

    let stats = sink.shutdown();
    assert_eq!(
        (
            stats.accepted,
            stats.exported,
            stats.dropped(),
            stats.buffered
        ),
        (4, 4, 0, 0),
        "{stats:?}"
    );
    assert_eq!(stats.export_failures, 0);
    collector.abort();
}

/// Through the pipeline (`Fanout`): closing it drops the sink, which sends what is left.
#[test]
fn grpc_through_the_fanout_every_record_arrives_once() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut collector = rt.block_on(FakeCollectorServer::start()).unwrap();
    let mut config = OtlpConfig::new(&collector.endpoint(), OtlpProtocol::Grpc, "node-a");
    config.max_batch = 64;
    let sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let mut fanout = Fanout::new("node-a");
    fanout.add_sink(Box::new(sink), 4096).unwrap();
    let sent = 1_000u64;
    for seq in 1..=sent {
        let verdict = if seq % 3 == 0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        fanout.publish(flow(
            seq,
            verdict,
            Direction::Egress,
            pod("10.0.1.5", Some(40_000), "shop", "frontend"),
            external("203.0.113.5", Some(443)),
        ));
    }
    // The fake collector holds at most 64 log records until they are read: read concurrently.
    let reader = rt.spawn(async move {
        let mut logs = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while logs.len() < 1_000 && Instant::now() < deadline {
            logs.extend(collector.exported_logs(1, Duration::from_millis(50)).await);
        }
        // Anything beyond the records would show up here.
        logs.extend(collector.exported_logs(1, Duration::from_millis(200)).await);
        collector.abort();
        logs
    });
    let pipeline = fanout.close();
    assert_eq!((pipeline[0].delivered, pipeline[0].lost.total()), (sent, 0));
    let logs = rt.block_on(reader).unwrap();
    let stats = handle.stats();
    assert_eq!(logs.len() as u64, sent, "{stats:?}");
    let mut seqs: Vec<String> = logs.iter().map(seq_of).collect();
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len() as u64, sent, "each record exactly once");
    let warn = logs.iter().filter(|l| l.severity_text == "WARN").count();
    assert_eq!(warn as u64, sent / 3, "denies are WARN");
    assert_eq!(
        (stats.accepted, stats.exported, stats.dropped()),
        (sent, sent, 0)
    );
    assert!(
        stats.export_batches >= sent / 64,
        "batches of at most 64: {stats:?}"
    );
}
