//! Integration tests: the real `stockwire` binary on 127.0.0.1 with a
//! RocksDB in a temp dir, driven over HTTP. One test binary, one module per
//! area (see `integration/`).

#[path = "integration/harness.rs"]
mod harness;

#[path = "integration/lifecycle.rs"]
mod lifecycle;

#[path = "integration/api.rs"]
mod api;

#[path = "integration/events.rs"]
mod events;

#[path = "integration/errors.rs"]
mod errors;

#[path = "integration/sse.rs"]
mod sse;

#[path = "integration/concurrency.rs"]
mod concurrency;

#[path = "integration/crash.rs"]
mod crash;

#[path = "integration/channels.rs"]
mod channels;

#[path = "integration/nats.rs"]
mod nats;

#[path = "integration/cluster.rs"]
mod cluster;

#[path = "integration/groups.rs"]
mod groups;

#[path = "integration/ops.rs"]
mod ops;

#[path = "integration/loadtest.rs"]
mod loadtest;

// Keys, roles, scopes, rate limits (SPEC §3).
#[path = "integration/access.rs"]
mod access;

#[path = "integration/transfers.rs"]
mod transfers;

#[path = "integration/inbox.rs"]
mod inbox;

// Reconciliation, source authority, the exception queue (SPEC §2 systems of record).
#[path = "integration/records.rs"]
mod records;

#[path = "integration/console.rs"]
mod console;

#[path = "integration/prometheus.rs"]
mod prometheus;
