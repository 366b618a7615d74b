# flowgate: the README's commands. `make demo` runs the main job, `make test` the whole suite.
# Every target bootstraps first (idempotent), so a fresh machine needs nothing else.

SHELL := /bin/bash
CARGO ?= cargo
FLOWGATE := target/debug/flowgate
EXAMPLE ?= examples/three-tier

.PHONY: help bootstrap build demo test fmt lint unit bench

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

bootstrap: ## install what the build needs (idempotent)
	@bash scripts/bootstrap.sh

build: bootstrap ## build the flowgate binary
	$(CARGO) build --locked -p flowgate

demo: build ## the main job: the agent enforcing examples/three-tier on a lab node, real traffic, flow events (root)
	@echo "== flowgate agent on a lab node built from $(EXAMPLE), built-in traffic: one line per verdict"
	@$(FLOWGATE) agent --lab --manifests $(EXAMPLE) --traffic $(EXAMPLE)/probes.json --traffic-interval-ms 1500 \
	  --duration-secs 6 --log-format compact --http-addr 127.0.0.1:9090 & agent=$$!; sleep 3; \
	echo; echo "== flowgate observe: the denies so far, from the agent's API (/v1/flows)"; \
	$(FLOWGATE) observe --server http://127.0.0.1:9090 --verdict deny --last 4 --no-color; \
	echo; echo "== /metrics: verdicts by policy and rule (Prometheus, OpenMetrics)"; \
	exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && grep '^flowgate_verdicts_total' <&3 | head -n 6; \
	echo; wait $$agent
	@echo
	@echo "== one flow record as JSON (schema flowgate.flow/v1), as shipped to a SIEM"
	$(FLOWGATE) agent --lab --manifests $(EXAMPLE) --traffic $(EXAMPLE)/probes.json --traffic-rounds 1 --duration-secs 1 --http-addr 127.0.0.1:0 2>/dev/null | grep '"verdict":"deny"' | head -n 1
	@echo
	@echo "== flowgate lab: every probe as real traffic; observed vs expected, with the events"
	$(FLOWGATE) lab --manifests $(EXAMPLE) --probes $(EXAMPLE)/probes.json
	@echo
	@echo "== flowgate explain (offline): why the frontend cannot reach the database"
	$(FLOWGATE) explain --manifests $(EXAMPLE) --from shop/frontend --to shop/database --port 5432
	@echo
	@echo "== flowgate lint (offline): the AND/OR trap example"
	$(FLOWGATE) lint --manifests examples/and-or-trap

fmt: ## format the code
	$(CARGO) fmt --all

lint: bootstrap ## formatting and clippy (userspace, and the eBPF crate for its own target)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	cd ebpf/datapath && $(CARGO) clippy --locked --release -- -D warnings

unit: bootstrap ## all tests of the default members (the eBPF crate is tested through the agent)
	$(CARGO) test --locked

test: lint unit ## the whole suite: what CI runs

-include mk/bench.mk
-include mk/bench-datapath.mk
