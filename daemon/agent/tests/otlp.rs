//! The OTLP logs sink against collectors in this process: the fake OpenTelemetry collector
//! (gRPC), a minimal OTLP/HTTP receiver (protobuf bodies decoded with the OTLP messages), and
//! dead ones (a closed port, a listener that never answers). Loopback only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fake_opentelemetry_collector::{ExportedLog, FakeCollectorServer};
use flowgate::otlp::{OtlpConfig, OtlpProtocol, OtlpSink, OtlpStats, log_fields, parse_rfc3339};
use flowgate_flows::gap::{GapRecord, LostCounts, Stage};
use flowgate_flows::pipeline::{Fanout, Record, Sink};
use flowgate_flows::record::{
    Counters, Direction, Endpoint, EndpointKind, FlowRecord, Mode, Network, PolicyInfo, PolicyRef,
    Reason, RecordType, Reporter, RuleRef, SCHEMA, Verdict,
};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, KeyValue, any_value::Value};
use prost::Message;

include!("otlp/records.rs");
include!("otlp/expected.rs");
include!("otlp/grpc.rs");
include!("otlp/http.rs");
include!("otlp/dead_collectors.rs");
