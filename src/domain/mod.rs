//! The pure inventory state machine: positions, their commands and events,
//! the reservation lifecycle (`reservation`) and the transfer workflow
//! (`transfer`).
//!
//! Nothing in here does I/O, reads a clock or knows about actors: every
//! function is synchronous and deterministic, and time is passed in. A command
//! is first *decided* (`Position::decide`, which checks it and returns the
//! events it causes, or a [`Reject`]) and then *evolved* (`Position::evolve`,
//! which applies one event). Live traffic and journal replay both go through
//! `evolve`, so replay rebuilds exactly the state that was acknowledged.

mod position;
mod quantity;
pub mod reservation;
pub mod transfer;

pub use position::{
    channel_view, transfer_hold_id, transfer_of, AdjustReason, Command, Commitment, Counters,
    Delta, Event, EventKind, Hold, HoldMode, Position, QuarantineAction, TRANSFER_CHANNEL,
    TRANSFER_HOLD_PREFIX,
};
pub use quantity::{Qty, QTY_MAX};

use std::sync::Arc;

/// Reservation ids are shared between a position's holds and the registry.
pub type ReservationId = Arc<str>;
/// Channel ids come from config; shared, never copied per hold.
pub type ChannelId = Arc<str>;

/// A business outcome that refuses a command. Not an error of the engine:
/// it is answered to the caller and never logged as a failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("insufficient available: requested {requested}, available {available}")]
    Insufficient { requested: u64, available: i64 },
    #[error("{0}")]
    InvalidState(String),
    /// The reservation or transfer holds nothing at this position (answered
    /// as `invalid_state`; told apart so a resumed ship can skip exactly the
    /// lines that shipped before, and nothing else).
    #[error("{0}")]
    NoHold(String),
    #[error("expected version {expected}, position is at version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("{0}")]
    QuantityOutOfRange(String),
}

#[cfg(test)]
mod model_tests;
