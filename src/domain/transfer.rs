//! The transfer workflow (SPEC §4) as a pure decision: held -> shipped ->
//! received, held -> cancelled. The engine asks [`plan`] what a step does to
//! a transfer in its status and carries the answer out at the source and the
//! destination; nothing here does I/O, reads a clock or holds a lock.

use serde::{Deserialize, Serialize};

/// Where a transfer is (stored in its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferStatus {
    Held,
    Shipped,
    Received,
    Cancelled,
}

impl TransferStatus {
    pub const ALL: [TransferStatus; 4] = [
        TransferStatus::Held,
        TransferStatus::Shipped,
        TransferStatus::Received,
        TransferStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TransferStatus::Held => "held",
            TransferStatus::Shipped => "shipped",
            TransferStatus::Received => "received",
            TransferStatus::Cancelled => "cancelled",
        }
    }

    /// Still holding stock at the source or in transit.
    pub fn is_open(self) -> bool {
        matches!(self, TransferStatus::Held | TransferStatus::Shipped)
    }
}

/// What is asked of a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `POST /v1/transfers/{id}/cancel`.
    Cancel,
    /// The source's `transfer_out` event.
    Ship,
    /// The destination's `transfer_in` event.
    Receive,
}

/// The answer of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Already done (a repeated cancel): answer the transfer as it is.
    Unchanged,
    /// Carry the step out; the transfer becomes `to`.
    Change { to: TransferStatus },
}

/// A step the status does not allow (answered as `invalid_state`); it reads
/// after "transfer <id> ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has shipped: only a held transfer can be cancelled")]
    CancelAfterShipping,
    #[error("has already shipped")]
    AlreadyShipped,
    #[error("has not shipped")]
    NotShipped,
    #[error("was already received")]
    AlreadyReceived,
    #[error("is cancelled")]
    Cancelled,
}

/// What `step` does to a transfer in `status`.
pub fn plan(status: TransferStatus, step: Step) -> Result<Plan, Refusal> {
    use TransferStatus::*;
    let to = |to: TransferStatus| {
        // Forward only: an open transfer moves, to another status.
        debug_assert!(status.is_open() && to != status, "{status:?} -> {to:?}");
        Ok(Plan::Change { to })
    };
    match (step, status) {
        (Step::Cancel, Held) => to(Cancelled),
        (Step::Cancel, Cancelled) => Ok(Plan::Unchanged),
        (Step::Cancel, Shipped | Received) => Err(Refusal::CancelAfterShipping),
        (Step::Ship, Held) => to(Shipped),
        (Step::Ship, Shipped | Received) => Err(Refusal::AlreadyShipped),
        (Step::Ship, Cancelled) => Err(Refusal::Cancelled),
        (Step::Receive, Shipped) => to(Received),
        (Step::Receive, Held) => Err(Refusal::NotShipped),
        (Step::Receive, Received) => Err(Refusal::AlreadyReceived),
        (Step::Receive, Cancelled) => Err(Refusal::Cancelled),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferStatus::*;

    #[test]
    fn the_workflow_table() {
        let to = |to| Ok(Plan::Change { to });
        let cases = [
            (Step::Cancel, Held, to(Cancelled)),
            (Step::Cancel, Shipped, Err(Refusal::CancelAfterShipping)),
            (Step::Cancel, Received, Err(Refusal::CancelAfterShipping)),
            (Step::Cancel, Cancelled, Ok(Plan::Unchanged)),
            (Step::Ship, Held, to(Shipped)),
            (Step::Ship, Shipped, Err(Refusal::AlreadyShipped)),
            (Step::Ship, Received, Err(Refusal::AlreadyShipped)),
            (Step::Ship, Cancelled, Err(Refusal::Cancelled)),
            (Step::Receive, Held, Err(Refusal::NotShipped)),
            (Step::Receive, Shipped, to(Received)),
            (Step::Receive, Received, Err(Refusal::AlreadyReceived)),
            (Step::Receive, Cancelled, Err(Refusal::Cancelled)),
        ];
        assert_eq!(cases.len(), 3 * TransferStatus::ALL.len(), "every pair");
        for (step, status, expected) in cases {
            assert_eq!(plan(status, step), expected, "{step:?} on {status:?}");
        }
    }

    #[test]
    fn a_transfer_only_moves_forward_and_a_closed_one_never_changes() {
        let steps = [Step::Cancel, Step::Ship, Step::Receive];
        for status in TransferStatus::ALL {
            for step in steps {
                if let Ok(Plan::Change { to }) = plan(status, step) {
                    assert!(status.is_open(), "{status:?} is closed");
                    assert_ne!(to, Held, "nothing goes back to held");
                    if !to.is_open() {
                        for next in steps {
                            assert!(!matches!(plan(to, next), Ok(Plan::Change { .. })));
                        }
                    }
                }
            }
        }
    }
}
