//! Messages between the engine, shards and position actors.

use std::sync::Arc;

use actix::Message;

use crate::domain::{
    channel_view, ChannelId, Command, Counters, Event, Hold, Reject, ReservationId,
};
use crate::storage::{StorageError, WriteBatch};

/// Who and what caused a change; stored on every journal entry.
#[derive(Debug, Clone)]
pub struct Meta {
    /// Event id of the first journal entry; later ones get `.1`, `.2`, ...
    pub event_id: String,
    pub source: Arc<str>,
    pub correlation_id: Arc<str>,
    pub occurred_at_ms: i64,
}

/// Run one command on one position and journal its events.
#[derive(Debug)]
pub struct Exec {
    pub sku: Arc<str>,
    pub location: Arc<str>,
    pub command: Command,
    pub meta: Meta,
    /// Writes that must land atomically with the events (reservation records).
    pub extra: WriteBatch,
    /// Writes that depend on the decision, added to `extra` once the command
    /// is decided (before the append): the stored answer of a reservation
    /// that is only known once its hold is.
    pub finish: Option<Finish>,
    /// Refuse the command as a duplicate if `meta.event_id` was applied before.
    pub dedupe: bool,
    /// With `dedupe`: a fingerprint of the event's content, kept with its id.
    /// The same id again with another fingerprint is not a duplicate but a
    /// reused id (`invalid_state`).
    pub content: Option<u64>,
    /// Create the position when it does not exist yet.
    pub create: bool,
}

/// Called with a decided command's outcome to add writes to its append.
pub struct Finish(pub Box<FinishFn>);

pub type FinishFn = dyn FnOnce(&ExecOutcome, &mut WriteBatch) + Send;

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finish(..)")
    }
}

/// What the shard answers: the outcome once durable.
impl Message for Exec {
    type Result = Result<ExecOutcome, ExecError>;
}

#[derive(Debug, Clone)]
pub struct ExecOutcome {
    /// `seq` of the first journal entry; `None` for a no-op or a duplicate.
    pub first_seq: Option<u64>,
    pub events: Vec<Event>,
    pub counters: Counters,
    pub version: u64,
    pub duplicate: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Reject(#[from] Reject),
    #[error("position does not exist")]
    NotFound,
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("shard unavailable")]
    Mailbox,
    /// The SKU's partition is in another partition group (cluster mode): a
    /// request that missed dispatch, refused rather than served from the
    /// wrong group's store.
    #[error("the SKU's partition is in partition group {0}, not this node's")]
    OtherGroup(u32),
}

/// A position's counters and channel commitments, for reads.
#[derive(Debug, Clone)]
pub struct PositionReadout {
    pub location: Arc<str>,
    pub counters: Counters,
    pub version: u64,
    /// `(channel, remaining commitment)`.
    pub commitments: Vec<(ChannelId, u64)>,
    pub hold: Option<Hold>,
}

impl PositionReadout {
    pub fn available(&self) -> i64 {
        self.counters.available()
    }

    /// What `channel` may sell here (SPEC §1 "Channel view"), may be negative.
    pub fn channel_view(&self, channel: &str) -> i64 {
        let total: u64 = self
            .commitments
            .iter()
            .map(|(_, r)| *r)
            .fold(0, u64::saturating_add);
        let own = self
            .commitments
            .iter()
            .find(|(c, _)| &**c == channel)
            .map_or(0, |(_, r)| *r);
        channel_view(
            self.available(),
            own,
            i64::try_from(total).unwrap_or(i64::MAX),
        )
    }
}

/// Read the existing positions of one SKU at the given locations.
pub struct ReadSku {
    pub sku: Arc<str>,
    pub locations: Vec<Arc<str>>,
    /// Also return this reservation's hold at each position.
    pub hold_of: Option<ReservationId>,
}

impl Message for ReadSku {
    type Result = Vec<PositionReadout>;
}
