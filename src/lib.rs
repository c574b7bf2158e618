//! stockwire: real-time inventory availability and reservations.
pub mod actors;
pub mod api;
pub mod channels;
pub mod codes;
pub mod config;
pub mod domain;
pub mod engine;
pub mod ingest;
pub mod input;
pub mod logging;
pub mod metrics;
pub mod storage;
