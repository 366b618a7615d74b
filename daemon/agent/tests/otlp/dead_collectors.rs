// Part of `otlp.rs` (brought in with `include!`): Dead collectors.

// ---------------------------------------------------------------------------------------------
// Dead collectors

/// A loopback port nothing listens on.
fn closed_port_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Accepts connections and never answers (a hung collector).
fn black_hole_endpoint() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    format!("http://{addr}")
}

/// Writes many records at a dead collector: no call waits, the buffer never exceeds its
/// bound, losses are counted, and dropping the sink is bounded too.
fn dead_collector_neither_blocks_nor_grows(endpoint: &str, protocol: OtlpProtocol) -> OtlpStats {
    let mut config = OtlpConfig::new(endpoint, protocol, "node-a");
    config.buffer_capacity = 256;
    config.max_batch = 64;
    config.batch_delay = Duration::from_millis(20);
    config.export_timeout = Duration::from_secs(1);
    config.max_attempts = 2;
    config.retry_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(20);
    config.shutdown_timeout = Duration::from_secs(1);
    let mut sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let sent = 20_000u64;
    let mut refused = 0u64;
    let mut slowest = Duration::ZERO;
    let mut max_buffered = 0;
    let started = Instant::now();
    for seq in 1..=sent {
        let record = flow(
            seq,
            Verdict::Deny,
            Direction::Egress,
            pod("10.0.1.5", Some(40_000), "shop", "frontend"),
            external("203.0.113.5", Some(443)),
        );
        let t = Instant::now();
        if sink.write(&record).is_err() {
            refused += 1;
        }
        if seq % 100 == 0 {
            let _ = sink.flush();
        }
        slowest = slowest.max(t.elapsed());
        if seq % 100 == 0 {
            max_buffered = max_buffered.max(handle.stats().buffered);
            // Spread the writes over about a second, so exports are attempted meanwhile.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let writing = started.elapsed();
    assert!(
        writing < Duration::from_secs(5),
        "{protocol}: writes took {writing:?}"
    );
    assert!(
        // Far below the export timeout (1 s): no call waits for an export. (Not tighter: on a
        // loaded 2-core machine the export thread can be preempted while it holds the lock.)
        slowest < Duration::from_millis(500),
        "{protocol}: slowest write/flush {slowest:?}"
    );
    let stats = handle.stats();
    assert!(
        max_buffered <= 256 && stats.buffered <= 256,
        "{protocol}: {stats:?}"
    );
    assert_eq!(stats.accepted + stats.dropped_full.total(), sent);
    assert_eq!(stats.dropped_full.total(), refused);
    assert_eq!(stats.dropped_full.deny, refused, "counted by verdict class");
    assert!(refused > sent / 2, "{protocol}: {stats:?}");
    assert!(stats.export_failures > 0, "{protocol}: {stats:?}");
    assert!(stats.last_error.is_some());
    assert_eq!(stats.exported, 0);

    let t = Instant::now();
    drop(sink);
    let stopping = t.elapsed();
    assert!(
        stopping < Duration::from_secs(4),
        "{protocol}: dropping the sink took {stopping:?}"
    );
    let stats = handle.stats();
    eprintln!(
        "{protocol} at {endpoint}: writes {writing:?} (slowest {slowest:?}), drop {stopping:?}; {stats:?}"
    );
    assert_eq!(stats.buffered, 0);
    assert_eq!(
        stats.accepted + stats.gap_records,
        stats.dropped_export.total(),
        "{protocol}: every record taken is accounted for: {stats:?}"
    );
    stats
}

#[test]
fn unreachable_grpc_collector_neither_blocks_nor_grows() {
    let stats =
        dead_collector_neither_blocks_nor_grows(&closed_port_endpoint(), OtlpProtocol::Grpc);
    assert!(stats.gap_records > 0, "{stats:?}");
}

#[test]
fn unreachable_http_collector_neither_blocks_nor_grows() {
    let stats = dead_collector_neither_blocks_nor_grows(
        &closed_port_endpoint(),
        OtlpProtocol::HttpProtobuf,
    );
    assert!(stats.gap_records > 0, "{stats:?}");
}

#[test]
fn hung_collector_neither_blocks_nor_grows() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let stats = dead_collector_neither_blocks_nor_grows(&black_hole_endpoint(), protocol);
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("export timed out")),
            "{protocol}: {stats:?}"
        );
    }
}

#[test]
fn tls_endpoints_and_bad_headers_are_refused_up_front() {
    let err = OtlpSink::new(OtlpConfig::new(
        "https://collector:4317",
        OtlpProtocol::Grpc,
        "n",
    ))
    .unwrap_err();
    assert!(err.to_string().contains("plain http://"), "{err}");
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let mut config = OtlpConfig::new("http://127.0.0.1:4317", protocol, "n");
        config.headers = vec![("bad header".into(), "v".into())];
        assert!(OtlpSink::new(config).is_err(), "{protocol}");
    }
}
