# Benchmarks of the policy model at cluster scale; method and results: docs/benchmarks.md.
# Included from the top-level Makefile (which defines `bootstrap`). Extra arguments go to divan:
#   make bench BENCH_ARGS=per_flow     only the per-flow evaluation benchmarks
#   make bench BENCH_ARGS=--test       run every benchmark once, as a smoke test
# FLOWGATE_BENCH_DUMP=DIR also writes the generated manifests to DIR (to try the CLI on them).
CARGO ?= cargo
BENCH_ARGS ?=

.PHONY: bench
bench: bootstrap ## policy model at 2,000 namespaces / 50,000 pods / 10,000 policies: load and evaluate
	nice $(CARGO) bench --locked -p flowgate-policy --bench evaluate -- $(BENCH_ARGS)

.PHONY: bench-events
bench-events: bootstrap ## event path (root): kernel ring buffer -> fan-out -> JSON lines at 100k-1M events/s; RSS at a 100k ring
	nice $(CARGO) bench --locked -p flowgate --bench event_path

.PHONY: bench-flows
bench-flows: bootstrap ## flow records: decode + enrich + serialize per record on one core
	nice $(CARGO) bench --locked -p flowgate-flows --bench records

.PHONY: bench-source
bench-source: bootstrap ## Kubernetes-mode cluster store at 50,000 pods: watch event ingest and memory vs kube's reflector
	nice $(CARGO) bench --locked -p flowgate --bench cluster_source
