# The datapath benchmark on a lab node (root): iperf3 throughput, TCP request/response and new
# connections per second with no programs, flowgate at 10 and at 10,000 policies, an iptables
# chain, an nftables set and an empty program on the same hooks; then compile and update times,
# memory and where the time goes; and the ratio targets judged precisely: (c) against (a), (e)
# and (b), and (f) against (a), alternated every second on one live node. Method and results:
# docs/benchmarks.md, section "Datapath". About 23 minutes after the build.
#   make bench-datapath BENCH_DATAPATH_ARGS="--rounds 3 --secs 1"   shorter, noisier
#   make bench-datapath BENCH_DATAPATH_ARGS="--configs afc"         no programs, empty program, flowgate
#   make bench-datapath BENCH_DATAPATH_ARGS=--help                  every option
# Run it on an otherwise idle machine: anything else on the two vCPUs shows in the ratios.
CARGO ?= cargo
BENCH_DATAPATH_ARGS ?=

.PHONY: bench-datapath
bench-datapath: bootstrap ## datapath on a lab node: flowgate vs no programs, iptables, nftables (root, ~23 min)
	$(CARGO) bench --locked -p flowgate --bench datapath -- $(BENCH_DATAPATH_ARGS)
