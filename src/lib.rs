//! stockwire: real-time inventory availability and reservations.
pub mod domain;
pub mod storage;
