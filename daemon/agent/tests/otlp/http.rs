// Part of `otlp.rs` (brought in with `include!`): HTTP: a minimal OTLP/HTTP receiver.

// ---------------------------------------------------------------------------------------------
// HTTP: a minimal OTLP/HTTP receiver

#[derive(Debug)]
struct Received {
    path: String,
    headers: BTreeMap<String, String>,
    request: ExportLogsServiceRequest,
}

struct HttpCollector {
    endpoint: String,
    received: Arc<Mutex<Vec<Received>>>,
    /// While set, every request is answered 503 and not kept.
    failing: Arc<AtomicBool>,
}

impl HttpCollector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let (r, f) = (Arc::clone(&received), Arc::clone(&failing));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let (r, f) = (Arc::clone(&r), Arc::clone(&f));
                std::thread::spawn(move || serve(stream, &r, &f));
            }
        });
        Self {
            endpoint,
            received,
            failing,
        }
    }

    fn log_records(&self) -> Vec<opentelemetry_proto::tonic::logs::v1::LogRecord> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| r.request.resource_logs.iter())
            .flat_map(|rl| rl.scope_logs.iter())
            .flat_map(|sl| sl.log_records.iter().cloned())
            .collect()
    }

    fn wait_for(&self, n: usize, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.log_records().len();
            if got >= n || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// HTTP/1.1 with keep-alive and content-length bodies (what the exporter's hyper client sends).
fn serve(stream: TcpStream, received: &Mutex<Vec<Received>>, failing: &AtomicBool) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let response: &[u8] = if failing.load(Ordering::SeqCst) {
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
        } else {
            let request = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
            received.lock().unwrap().push(Received {
                path,
                headers,
                request,
            });
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        };
        if writer.write_all(response).is_err() {
            return;
        }
    }
}

fn kv_map(kvs: &[KeyValue]) -> BTreeMap<String, AnyValue> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

fn seq_value(r: &opentelemetry_proto::tonic::logs::v1::LogRecord) -> i64 {
    match kv_map(&r.attributes)
        .get("flowgate.seq")
        .and_then(|v| v.value.clone())
    {
        Some(Value::IntValue(v)) => v,
        other => panic!("flowgate.seq: {other:?}"),
    }
}

#[test]
fn http_protobuf_receiver_gets_the_records_with_timestamps_resource_and_headers() {
    let collector = HttpCollector::start();
    let mut config = fast_config(&collector.endpoint, OtlpProtocol::HttpProtobuf);
    config.headers = vec![("X-Flowgate-Tenant".into(), "blue".into())];
    let mut sink = OtlpSink::new(config).unwrap();
    let records = sample();
    for r in &records {
        sink.write(r).unwrap();
    }
    sink.flush().unwrap();
    assert_eq!(collector.wait_for(4, Duration::from_secs(10)), 4);
    assert!(sink.handle().wait_idle(Duration::from_secs(5)));

    let received = collector.received.lock().unwrap();
    assert_eq!(received.len(), 1, "one request for one flushed batch");
    let req = &received[0];
    assert_eq!(req.path, "/v1/logs");
    assert_eq!(
        req.headers.get("content-type").map(String::as_str),
        Some("application/x-protobuf")
    );
    assert_eq!(
        req.headers.get("x-flowgate-tenant").map(String::as_str),
        Some("blue")
    );
    let [rl] = req.request.resource_logs.as_slice() else {
        panic!("one resource: {:?}", req.request)
    };
    let resource = kv_map(&rl.resource.as_ref().unwrap().attributes);
    assert_eq!(resource["service.name"], s("flowgate"));
    assert_eq!(resource["k8s.node.name"], s("node-a"));
    assert_eq!(resource["host.name"], s("node-a"));
    assert_eq!(resource["service.version"], s(env!("CARGO_PKG_VERSION")));
    let [sl] = rl.scope_logs.as_slice() else {
        panic!("one scope")
    };
    assert_eq!(sl.scope.as_ref().unwrap().name, "flowgate");
    assert_eq!(sl.log_records.len(), 4);
    for (record, (log, (severity, text, body))) in records
        .iter()
        .zip(sl.log_records.iter().zip(sample_heads()))
    {
        let want_ns = parse_rfc3339(record.time())
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        assert_eq!(
            u128::from(log.time_unix_nano),
            want_ns,
            "time from record.time"
        );
        assert!(log.observed_time_unix_nano > 0);
        assert_eq!(
            (log.severity_number, log.severity_text.as_str()),
            (severity, text)
        );
        assert_eq!(log.body, Some(s(body)));
        let event = if matches!(record, Record::Gap(_)) {
            "flowgate.gap"
        } else {
            "flowgate.flow"
        };
        assert_eq!(log.event_name, event);
        let got = kv_map(&log.attributes);
        let want: BTreeMap<String, AnyValue> = log_fields(record)
            .attributes
            .into_iter()
            .map(|(k, v)| (k.to_owned(), AnyValue::from(v)))
            .collect();
        assert_eq!(got, want, "seq {}", record.seq());
        assert_eq!(got.len(), log.attributes.len(), "no duplicate keys");
    }
    assert_eq!(
        kv_map(&sl.log_records[1].attributes),
        deny_attributes()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    );
    drop(received);
    let stats = sink.shutdown();
    assert_eq!((stats.exported, stats.dropped()), (4, 0), "{stats:?}");
}

/// The collector refuses for a while: batches are given up, the buffer stays bounded, and once
/// the collector is back its stream accounts for every record (received + reported lost).
#[test]
fn http_outage_loss_is_bounded_counted_and_reported_in_the_stream() {
    let collector = HttpCollector::start();
    collector.failing.store(true, Ordering::SeqCst);
    let mut config = fast_config(&collector.endpoint, OtlpProtocol::HttpProtobuf);
    config.buffer_capacity = 8;
    config.max_batch = 4;
    config.max_attempts = 1;
    config.retry_backoff = Duration::from_millis(1);
    config.max_backoff = Duration::from_millis(1);
    let mut sink = OtlpSink::new(config).unwrap();
    let handle = sink.handle();
    let deny = |seq| {
        flow(
            seq,
            if seq % 2 == 0 {
                Verdict::Deny
            } else {
                Verdict::Allow
            },
            Direction::Ingress,
            external("203.0.113.5", Some(50_000)),
            pod("10.0.3.9", Some(5432), "shop", "database"),
        )
    };
    let mut refused = 0u64;
    for seq in 1..=40 {
        if sink.write(&deny(seq)).is_err() {
            refused += 1;
        }
        let _ = sink.flush();
        assert!(handle.stats().buffered <= 8);
    }
    // Let the export thread give up what it holds.
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().dropped_export.total() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let during = handle.stats();
    assert!(
        refused > 0 && during.dropped_full.total() == refused,
        "{during:?}"
    );
    assert!(
        during.export_failures > 0 && during.dropped_export.total() > 0,
        "{during:?}"
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(sink.flush().is_err(), "flush reports the failed exports");

    // The collector is back: what the buffer holds (a gap record standing for the given-up
    // batches) goes out, then new records are taken again.
    collector.failing.store(false, Ordering::SeqCst);
    assert!(
        handle.wait_idle(Duration::from_secs(10)),
        "{:?}",
        handle.stats()
    );
    for seq in 41..=45 {
        sink.write(&deny(seq)).unwrap();
    }
    sink.flush().unwrap();
    assert!(
        handle.wait_idle(Duration::from_secs(10)),
        "{:?}",
        handle.stats()
    );
    let stats = sink.shutdown();

    let logs = collector.log_records();
    let mut flows = 0u64;
    let mut lost = 0u64;
    let mut stages = Vec::new();
    for log in &logs {
        let attrs = kv_map(&log.attributes);
        if attrs["flowgate.record_type"] == s("gap") {
            let Some(Value::IntValue(n)) = attrs["flowgate.gap.lost.total"].value.clone() else {
                panic!("lost.total")
            };
            lost += u64::try_from(n).unwrap();
            stages.push(attrs["flowgate.gap.stage"].clone());
        } else {
            flows += 1;
        }
    }
    eprintln!(
        "received {flows} flow records and gap records for {lost} lost: {stages:?}; {stats:?}"
    );
    assert!(stages.contains(&s("sink_otlp_export")), "{stages:?}");
    assert!(flows > 0);
    // Records refused at the very end have no later record to carry their gap; none here.
    assert_eq!(
        flows + lost,
        45,
        "received + reported lost = sent ({flows} + {lost}); {stats:?}"
    );
    let seqs: Vec<i64> = logs.iter().map(seq_value).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "the stream stays in order: {seqs:?}"
    );
    assert_eq!(
        stats.accepted + stats.gap_records,
        stats.exported + stats.dropped_export.total() + stats.buffered as u64,
        "{stats:?}"
    );
    assert_eq!(stats.exported, logs.len() as u64);
}
