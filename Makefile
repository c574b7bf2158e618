# Fresh-machine entry points: `make run` and `make test` install what is missing.
# On Debian/Ubuntu we link the system librocksdb (minutes, not half an hour);
# elsewhere plain `cargo build` compiles the bundled RocksDB (see README).
SYSLIB ?= /usr/lib/x86_64-linux-gnu
export ROCKSDB_LIB_DIR ?= $(SYSLIB)
export SNAPPY_LIB_DIR ?= $(SYSLIB)
export ROCKSDB_INCLUDE_DIR ?= /usr/include

.PHONY: deps run test build bench lint

deps:
	@./scripts/install-deps.sh

build: deps
	cargo build --release

run: deps
	cargo run --release -- serve

# Formatting and lints, then unit, property and integration tests (real
# binary, real RocksDB, loopback) and a one-shot run of every bench.
test: deps
	@./scripts/install-deps.sh --test
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo test --workspace --lib --bins --examples --benches
	cargo test --workspace --test integration
	./scripts/schemathesis.sh

bench: deps
	cargo bench --bench reserve
	cargo bench --bench publication

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
