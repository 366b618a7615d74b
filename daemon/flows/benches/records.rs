//! Records per second per core on the event path (`make bench-flows`; docs/benchmarks.md):
//! ring-buffer bytes -> decode -> enrich (generation tables, pod lookup, attribution) ->
//! serialize to a JSON line. Target: at least 1,000,000 records/s on one core, i.e. a median
//! under 1 µs per record. Baselines in the same run: decode alone, and copying the bytes.
//! `decode_enrich_serialize` returns a `String` per record (`Record::to_json`);
//! `decode_enrich_write_json` appends to a reused buffer, as the JSON-lines sink does.

use std::sync::LazyLock;

use divan::Bencher;
use divan::counter::ItemsCount;
use flowgate_abi::{ABI_VERSION, DIR_INGRESS, FlowEvent, verdict};
use flowgate_flows::decode::{decode, encode};
use flowgate_flows::enrich::{Enricher, Tables};
use flowgate_flows::pipeline::Record;
use flowgate_flows::record::Mode;
use flowgate_policy::compile::{LocalEndpoint, compile};
use flowgate_policy::{Cluster, Manifests};

fn main() {
    divan::main();
}

const PODS: usize = 200;
const EVENTS: usize = 10_000;

/// A namespace of `PODS` labelled pods, half of them local, with a policy allowing port 80.
static FIXTURE: LazyLock<(Tables, Vec<Vec<u8>>)> = LazyLock::new(|| {
    let mut yaml = String::new();
    for i in 0..PODS {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: shop, labels: {{app: a{}, tier: web, version: v1}}}}\nstatus: {{podIP: 10.1.{}.{}}}\n---\n",
            i % 7,
            i / 250,
            i % 250 + 1
        ));
    }
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: shop}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n");
    let mut m = Manifests::new();
    m.add_text("bench.yaml", &yaml);
    let cluster = Cluster::from_manifests(&mut m);
    let locals: Vec<LocalEndpoint> = (0..PODS / 2)
        .map(|i| LocalEndpoint {
            pod: format!("shop/p{i}"),
            ifindex: 10 + u32::try_from(i).unwrap_or(0),
        })
        .collect();
    let snap = compile(&cluster, &locals, None);
    let tables = Tables::from_snapshot(&cluster, &snap, Mode::Enforce);
    let endpoints: Vec<u32> = snap.endpoints.values().map(|e| e.endpoint_id).collect();
    let attribution = snap.attributions.keys().next().copied().unwrap_or(0);
    let events = (0..EVENTS)
        .map(|i| {
            let allow = i % 3 != 0;
            let src = std::net::Ipv4Addr::new(10, 1, 0, u8::try_from(i % 200 + 1).unwrap_or(1))
                .to_ipv6_mapped()
                .octets();
            let dst = std::net::Ipv4Addr::new(10, 1, 0, u8::try_from(i % 100 + 1).unwrap_or(1))
                .to_ipv6_mapped()
                .octets();
            encode(&FlowEvent {
                version: ABI_VERSION,
                verdict: if allow { verdict::ALLOW } else { verdict::DENY },
                reason: if allow { 1 } else { 2 },
                direction: DIR_INGRESS,
                proto: 6,
                ip_version: 4,
                tcp_flags: 2,
                endpoint_id: endpoints[i % endpoints.len()],
                generation: snap.generation,
                attribution: if allow { attribution } else { 0 },
                count: 1,
                src_port: 40_000,
                dst_port: if allow { 80 } else { 81 },
                src_addr: src,
                dst_addr: dst,
                timestamp_ns: 1_000_000 + i as u64,
                first_ns: 1_000_000 + i as u64,
                ..FlowEvent::default()
            })
        })
        .collect();
    (tables, events)
});

/// The whole path: bytes -> decode -> enrich -> JSON line.
#[divan::bench]
fn decode_enrich_serialize(bencher: Bencher) {
    let (tables, events) = &*FIXTURE;
    let mut enricher = Enricher::new("node-1", 0);
    enricher.push(tables.clone());
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let bytes = &events[i % events.len()];
        i += 1;
        let event = decode(bytes).unwrap_or_default();
        Record::Flow(enricher.enrich(&event)).to_json()
    });
}

/// Baseline: decode alone.
#[divan::bench]
fn decode_only(bencher: Bencher) {
    let (_, events) = &*FIXTURE;
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let bytes = &events[i % events.len()];
        i += 1;
        decode(bytes).unwrap_or_default()
    });
}

/// Baseline: copying the record's bytes.
#[divan::bench]
fn copy_bytes(bencher: Bencher) {
    let (_, events) = &*FIXTURE;
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let bytes = &events[i % events.len()];
        i += 1;
        bytes.to_vec()
    });
}

/// Decode + enrich, without serializing.
#[divan::bench]
fn decode_enrich(bencher: Bencher) {
    let (tables, events) = &*FIXTURE;
    let mut enricher = Enricher::new("node-1", 0);
    enricher.push(tables.clone());
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let bytes = &events[i % events.len()];
        i += 1;
        let event = decode(bytes).unwrap_or_default();
        enricher.enrich(&event)
    });
}

/// Serializing an enriched record alone.
#[divan::bench]
fn serialize(bencher: Bencher) {
    let (tables, events) = &*FIXTURE;
    let mut enricher = Enricher::new("node-1", 0);
    enricher.push(tables.clone());
    let records: Vec<Record> = events
        .iter()
        .take(1000)
        .map(|b| Record::Flow(enricher.enrich(&decode(b).unwrap_or_default())))
        .collect();
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let r = &records[i % records.len()];
        i += 1;
        r.to_json()
    });
}

/// The whole path as the JSON-lines sink runs it: bytes -> decode -> enrich -> JSON appended
/// to a reused batch buffer (`Record::write_json`; no `String` per record).
#[divan::bench]
fn decode_enrich_write_json(bencher: Bencher) {
    let (tables, events) = &*FIXTURE;
    let mut enricher = Enricher::new("node-1", 0);
    enricher.push(tables.clone());
    let mut batch = Vec::with_capacity(256 * 1024);
    let mut i = 0;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let bytes = &events[i % events.len()];
        i += 1;
        if batch.len() >= 256 * 1024 {
            batch.clear();
        }
        let event = decode(bytes).unwrap_or_default();
        Record::Flow(enricher.enrich(&event)).write_json(&mut batch);
        batch.push(b'\n');
    });
}
