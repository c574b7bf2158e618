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

# Unit, property and integration tests (real binary, real RocksDB, loopback),
# then formatting and lints.
test: deps
	cargo test --workspace --all-targets
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: deps
	cargo bench --bench reserve

lint: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
