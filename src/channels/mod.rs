//! Channel publication (SPEC §4): every channel converges to what it may sell.
//!
//! ```text
//!  journal (seq order) ──> Broadcaster ──Offer──> Publisher(web) ──> Sink (webhook)
//!      ▲   reads entries,      │  (bounded     Publisher(edi) ──> Sink (file, 846)
//!      │   keeps a bounded     │   mailboxes)       │
//!  positions  mirror of views  │                    ├─ coalesces per SKU (latest wins)
//!                              │                    ├─ retries, backoff, circuit state
//!                              │                    └─ ledger, cursor, dead letters (RocksDB)
//! ```
//!
//! The broadcaster tails the journal from each channel's durable cursor, so nothing is
//! skipped and per-SKU order is the log's. It computes each channel's view of every
//! changed SKU and offers only real changes to that channel's publisher. A publisher
//! that is full (pending SKUs at `publish_pending_max`, or its mailbox) is simply not
//! offered more: the broadcaster keeps that channel's read position where it was and
//! catches it up from the journal later. Reservations never wait on any of this.

pub mod feed;
pub mod policy;
pub mod sink;

mod broadcaster;
mod publisher;
pub mod runtime;
mod status;

pub use broadcaster::Broadcaster;
pub use publisher::Publisher;
pub use runtime::{ChannelError, Channels, ReplayFrom};
pub use status::{ChannelState, ChannelStatus};

use std::sync::Arc;

/// One SKU's new value for one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub sku: Arc<str>,
    /// What the channel may sell (after its policy).
    pub available: u64,
    /// Journal `seq` of the latest change this value reflects.
    pub seq: u64,
    /// Oldest journal `seq` this update covers that the channel has not acknowledged
    /// (0 for refreshes, which are not tied to the cursor).
    pub first_seq: u64,
    /// When that change was recorded (ms since the epoch).
    pub at_ms: i64,
    /// A resync or dead-letter replay recorded this SKU as owed (a durable owed mark): its
    /// delivery (or parking) clears that record.
    pub owed: bool,
}
