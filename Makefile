# flowgate: the README's commands. `make demo` runs the main job, `make test` the whole suite.
# Every target bootstraps first (idempotent), so a fresh machine needs nothing else.

CARGO ?= cargo
FLOWGATE := target/debug/flowgate
EXAMPLE ?= examples/three-tier

.PHONY: help bootstrap build demo test fmt lint unit bench

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | sort

bootstrap: ## install what the build needs (idempotent)
	@bash scripts/bootstrap.sh

build: bootstrap ## build the flowgate binary
	$(CARGO) build --locked -p flowgate

demo: build ## the main job: verdicts, matrix, explain and lint on the three-tier example
	@echo "== flowgate verdicts: every probe with its verdict and the policy/rule behind it"
	$(FLOWGATE) verdicts --manifests $(EXAMPLE) --probes $(EXAMPLE)/probes.json
	@echo
	@echo "== flowgate verdicts --matrix: the pod-to-pod truth table"
	$(FLOWGATE) verdicts --matrix --manifests $(EXAMPLE) --ports 80,8080,5432
	@echo
	@echo "== flowgate explain: why the frontend cannot reach the database"
	$(FLOWGATE) explain --manifests $(EXAMPLE) --from shop/frontend --to shop/database --port 5432
	@echo
	@echo "== flowgate lint: the AND/OR trap example"
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
