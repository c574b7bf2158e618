//! stockwire: real-time inventory availability and reservations.
//!
//! The map (ARCHITECTURE.md has the flows and the invariants):
//! - [`domain`]: a position's pure state machine (decide, evolve), the
//!   reservation lifecycle and the transfer workflow (plan), no I/O.
//! - [`actors`]: shards and per-position actors, on the HTTP workers' threads.
//! - [`engine`]: what the API and the inbox call: reservations, events,
//!   transfers, reconciliation, the exception queue, recovery, snapshots.
//! - [`storage`]: the store (RocksDB, in memory), the journal, the codec, records.
//! - [`channels`]: publication: broadcaster, publishers, sinks (the ledger's
//!   records are in `storage::ledger`, written through the engine).
//! - [`api`]: actix-web routes, access, errors, OpenAPI, the console.
//! - [`ingest`]: the 3PL file inbox: per inbox a poll loop (worker), per file
//!   a job that reads rows (reader), applies them chunk by chunk with a
//!   durable progress record (progress) and writes the rejected rows
//!   (rejects); partner layouts (layout), directories and moves (files).
//! - [`input`]: input checks shared by the API and the inbox.
//! - [`codes`]: the one table of error codes.
//! - [`clock`]: the one place time is read (system, or manual for simulated-time tests).
//! - [`config`]: the config file (top-level settings, sections, env overrides,
//!   validation) and every limit with its range.
//! - [`metrics`], [`logging`]: Prometheus registry, buffered logging.
pub mod actors;
pub mod api;
pub mod channels;
pub mod clock;
pub mod cluster;
pub mod codes;
pub mod config;
pub mod domain;
pub mod engine;
pub mod ingest;
pub mod input;
pub mod logging;
pub mod metrics;
pub mod storage;
