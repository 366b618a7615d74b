//! The shipped record schema and SIEM mapping against the code that emits records.
//!
//! - Records built through the real path (manifests -> `compile` -> `Tables::from_snapshot` ->
//!   `Enricher::enrich` on kernel-shaped `FlowEvent`s, and gap records from `GapRecord::new` and
//!   from a `Fanout` whose sink is too slow) validate against docs/flow-record.schema.json.
//! - Broken records (a missing field, a wrong enum value, an extra field, ...) do not, so the
//!   schema really constrains what it documents.
//! - `ocsf::to_ocsf` of every record agrees with the tables in docs/siem-mappings.md, which
//!   this test reads; and every record field appears in those tables.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code: a panic is the failure report"
)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use flowgate_abi::{ABI_VERSION, DIR_EGRESS, DIR_INGRESS, FlowEvent, event_flags, reason, verdict};
use flowgate_flows::gap::{GapRecord, LostCounts, SeqRange, Stage};
use flowgate_flows::ocsf::{self, epoch_ms, to_ocsf};
use flowgate_flows::pipeline::MemorySink;
use flowgate_flows::record::{EndpointKind, Mode, Scope, Verdict};
use flowgate_flows::{Enricher, Fanout, Record, Tables};
use flowgate_policy::compile::{LocalEndpoint, Snapshot, compile};
use flowgate_policy::{Cluster, Manifests};
use serde_json::{Value, json};

const SCHEMA: &str = include_str!("../../../docs/flow-record.schema.json");
const MAPPINGS: &str = include_str!("../../../docs/siem-mappings.md");
const REFERENCE: &str = include_str!("../../../docs/flow-record.md");

/// 2026-11-28T18:00:00Z in ns: CLOCK_REALTIME - CLOCK_MONOTONIC for the enricher.
const REALTIME_OFFSET_NS: i128 = 1_795_888_800_000_000_000;

const CLUSTER: &str = r"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels:
    team: shop
---
apiVersion: v1
kind: Namespace
metadata:
  name: ops
---
apiVersion: v1
kind: Pod
metadata:
  name: frontend
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
    tier: frontend
spec:
  containers:
    - name: web
      image: nginx:1.27
      ports:
        - name: http
          containerPort: 80
          protocol: TCP
status:
  podIP: 10.0.0.10
  podIPs:
    - ip: 10.0.0.10
    - ip: fd00::10
---
apiVersion: v1
kind: Pod
metadata:
  name: backend
  namespace: shop
  labels:
    app.kubernetes.io/name: shop
    tier: backend
spec:
  containers:
    - name: api
      image: shop/api:1
      ports:
        - name: api
          containerPort: 8080
          protocol: TCP
status:
  podIP: 10.0.0.11
  podIPs:
    - ip: 10.0.0.11
    - ip: fd00::11
---
apiVersion: v1
kind: Pod
metadata:
  name: debug
  namespace: ops
spec:
  containers:
    - name: shell
      image: busybox:1.36
status:
  podIP: 10.0.0.20
  podIPs:
    - ip: 10.0.0.20
    - ip: fd00::20
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-ingress
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: backend-from-frontend
  namespace: shop
spec:
  podSelector:
    matchLabels:
      tier: backend
  ingress:
    - from:
        - podSelector:
            matchLabels:
              tier: frontend
      ports:
        - protocol: TCP
          port: 8080
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: frontend-egress
  namespace: shop
spec:
  podSelector:
    matchLabels:
      tier: frontend
  policyTypes: [Egress]
  egress:
    - to:
        - podSelector:
            matchLabels:
              tier: backend
      ports:
        - protocol: TCP
          port: 8080
";

include!("schema/enrich_path.rs");
include!("schema/record_schema.rs");
include!("schema/ocsf_mapping.rs");
