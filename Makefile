# Fresh-machine entry points: `make run` and `make test` install what is missing.
# On Debian/Ubuntu we link the system librocksdb (minutes, not half an hour);
# elsewhere plain `cargo build` compiles the bundled RocksDB (see README).
SYSLIB ?= /usr/lib/x86_64-linux-gnu
export ROCKSDB_LIB_DIR ?= $(SYSLIB)
export SNAPPY_LIB_DIR ?= $(SYSLIB)
export ROCKSDB_INCLUDE_DIR ?= /usr/include

.PHONY: deps run test build bench bench-peers bench-open-loop lint docs-check browser-test cluster cluster-soak bench-cluster

deps:
	@./scripts/install-deps.sh

build: deps
	cargo build --release

run: deps
	cargo run --release -- serve

# Formatting and lints, then unit, property and integration tests (real
# binary, real RocksDB, loopback) and a one-shot run of every bench; the
# loadtest crate built on its own (its own features, not the workspace's);
# the console and the load-test report in headless Chromium; schemathesis;
# and every command the docs show (scripts/doc-commands.py).
test: deps
	@./scripts/install-deps.sh --test
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	# The shipped build too: --all-targets turns on test-support (the feed parsers).
	cargo clippy --workspace --lib --bins -- -D warnings
	cargo test --workspace --lib --bins --examples --benches
	cargo test --workspace --test integration
	cargo build -p loadtest
	./scripts/browser-tests.sh
	./scripts/schemathesis.sh
	./scripts/doc-commands.py --self-test
	./scripts/doc-commands.py

bench: deps
	cargo bench --bench reserve
	cargo bench --bench publication

# stockwire vs an actix-web + DashMap server and Redis 7 (Lua), on the same
# reservation work in alternating rounds; prints medians and ratios last.
# PEER_SECONDS (30), PEER_ROUNDS (2); smoke: make bench-peers PEER_SECONDS=3 PEER_ROUNDS=1
bench-peers: deps
	./scripts/bench-peers.sh

# Open-loop latency at fixed rates, stockwire beside peer-actix, one oha client
# thread (installs oha with cargo once if missing; minutes).
# OPEN_RATES ("2000 5000 10000 20000"), OPEN_SECONDS (15), OPEN_ROUNDS (1)
bench-open-loop: deps
	./scripts/bench-open-loop.sh

# Cluster mode on this machine (docs/CLUSTER.md): 3 nats-servers with JetStream and
# 3 stockwire nodes (127.0.0.1:8081-8083), each restarted by a supervisor loop; data
# in ./data-cluster; Ctrl-C stops it all.
cluster: deps
	@./scripts/install-deps.sh --test
	cargo build --release
	./scripts/cluster.sh run ./data-cluster

# Cluster mode's latency and CPU per reservation next to a single node, at one
# offered rate (CLUSTER_RATE 2000, CLUSTER_SECONDS 15, CLUSTER_ROUNDS 1); minutes.
bench-cluster: deps
	@./scripts/install-deps.sh --test
	./scripts/bench-cluster.sh

# The long cluster soak: 20 kill -9 of the owner, 5 of them after a kill -9 of the
# stream's leader nats-server, under reservation load. Its last line:
# kills K, acknowledged A, lost L, oversold O, failover p50 X s max Y s
cluster-soak: deps
	@./scripts/install-deps.sh --test
	CLUSTER_SOAK_NODE_KILLS=20 CLUSTER_SOAK_NATS_KILLS=5 cargo test --test integration \
		cluster::three_nodes_keep -- --nocapture --test-threads 1 2>&1 | tee cluster-soak.log | grep -v '^test result'
	@grep '^kills ' cluster-soak.log | tail -1

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --workspace --lib --bins -- -D warnings

# The docs' commands alone (part of `make test`): DOCS="README.md" for one file.
docs-check: deps
	@./scripts/install-deps.sh --test
	./scripts/doc-commands.py $(DOCS)

# The browser tests alone (part of `make test`): screenshots in
# $$CARGO_TARGET_DIR/test-output/browser (or target/test-output/browser).
browser-test: deps
	@./scripts/install-deps.sh --test
	./scripts/browser-tests.sh
