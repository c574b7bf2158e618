//! The reservation lifecycle (SPEC §3) as a pure decision: held -> allocated
//! -> shipped, held -> released | expired, allocated -> released. The engine
//! asks [`plan`] what a transition does to a reservation in its status and
//! carries the answer out on the reservation's positions; nothing here does
//! I/O, reads a clock or holds a lock.

use serde::{Deserialize, Serialize};

/// Where a reservation is in its lifecycle (stored in its record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReservationStatus {
    Held,
    Allocated,
    Shipped,
    Released,
    Expired,
}

impl ReservationStatus {
    pub const ALL: [ReservationStatus; 5] = [
        ReservationStatus::Held,
        ReservationStatus::Allocated,
        ReservationStatus::Shipped,
        ReservationStatus::Released,
        ReservationStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ReservationStatus::Held => "held",
            ReservationStatus::Allocated => "allocated",
            ReservationStatus::Shipped => "shipped",
            ReservationStatus::Released => "released",
            ReservationStatus::Expired => "expired",
        }
    }

    /// Still holding stock at its positions.
    pub fn is_open(self) -> bool {
        matches!(self, ReservationStatus::Held | ReservationStatus::Allocated)
    }
}

/// What a caller (or the expiry timer) asks of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Release,
    /// The TTL ran out.
    Expire,
    Allocate,
    /// Ship (some of) what is allocated; the rest is released.
    Ship,
}

/// What every line's position is told to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineChange {
    Release {
        expired: bool,
    },
    Allocate,
    /// Per line: ship a quantity, or release the line (quantity 0).
    Ship,
}

/// The answer of [`plan`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Already done (a repeated release or allocation, an expiry that came
    /// after a release): answer the reservation as it is, change nothing.
    Unchanged,
    /// Change every line, then record the reservation as `to`.
    Change {
        to: ReservationStatus,
        lines: LineChange,
    },
}

/// A transition the status does not allow (answered as `invalid_state`);
/// it reads after "reservation <id> ".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("has shipped")]
    Shipped,
    #[error("is held: allocate it before shipping")]
    NotAllocated,
    #[error("is {}", .0.as_str())]
    Closed(ReservationStatus),
    #[error("has {0} units still backordered")]
    Backordered(u64),
}

/// What `transition` does to a reservation in `status`.
pub fn plan(status: ReservationStatus, transition: Transition) -> Result<Plan, Refusal> {
    use ReservationStatus::*;
    let change = |to: ReservationStatus, lines| {
        // Forward only: an open reservation moves, to another status.
        debug_assert!(status.is_open() && to != status, "{status:?} -> {to:?}");
        Ok(Plan::Change { to, lines })
    };
    match (transition, status) {
        (Transition::Release, Held | Allocated) => {
            change(Released, LineChange::Release { expired: false })
        }
        (Transition::Release, Released | Expired) => Ok(Plan::Unchanged),
        (Transition::Release, Shipped) => Err(Refusal::Shipped),
        (Transition::Expire, Held) => change(Expired, LineChange::Release { expired: true }),
        // An allocated reservation no longer expires; a closed one is done.
        (Transition::Expire, Allocated | Shipped | Released | Expired) => Ok(Plan::Unchanged),
        (Transition::Allocate, Held) => change(Allocated, LineChange::Allocate),
        (Transition::Allocate, Allocated) => Ok(Plan::Unchanged),
        (Transition::Allocate, Shipped | Released | Expired) => Err(Refusal::Closed(status)),
        (Transition::Ship, Allocated) => change(Shipped, LineChange::Ship),
        (Transition::Ship, Held) => Err(Refusal::NotAllocated),
        (Transition::Ship, Shipped | Released | Expired) => Err(Refusal::Closed(status)),
    }
}

/// A held reservation is allocated only once nothing of it is backordered:
/// allocating promises the warehouse the units are there.
pub fn allocatable(backordered: &[u64]) -> Result<(), Refusal> {
    match backordered.iter().find(|units| **units > 0) {
        Some(units) => Err(Refusal::Backordered(*units)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationStatus::*;

    #[test]
    fn the_lifecycle_table() {
        let release = LineChange::Release { expired: false };
        let expire = LineChange::Release { expired: true };
        let change = |to, lines| Ok(Plan::Change { to, lines });
        let cases = [
            (Transition::Release, Held, change(Released, release)),
            (Transition::Release, Allocated, change(Released, release)),
            (Transition::Release, Shipped, Err(Refusal::Shipped)),
            (Transition::Release, Released, Ok(Plan::Unchanged)),
            (Transition::Release, Expired, Ok(Plan::Unchanged)),
            (Transition::Expire, Held, change(Expired, expire)),
            (Transition::Expire, Allocated, Ok(Plan::Unchanged)),
            (Transition::Expire, Shipped, Ok(Plan::Unchanged)),
            (Transition::Expire, Released, Ok(Plan::Unchanged)),
            (Transition::Expire, Expired, Ok(Plan::Unchanged)),
            (
                Transition::Allocate,
                Held,
                change(Allocated, LineChange::Allocate),
            ),
            (Transition::Allocate, Allocated, Ok(Plan::Unchanged)),
            (Transition::Allocate, Shipped, Err(Refusal::Closed(Shipped))),
            (
                Transition::Allocate,
                Released,
                Err(Refusal::Closed(Released)),
            ),
            (Transition::Allocate, Expired, Err(Refusal::Closed(Expired))),
            (Transition::Ship, Held, Err(Refusal::NotAllocated)),
            (
                Transition::Ship,
                Allocated,
                change(Shipped, LineChange::Ship),
            ),
            (Transition::Ship, Shipped, Err(Refusal::Closed(Shipped))),
            (Transition::Ship, Released, Err(Refusal::Closed(Released))),
            (Transition::Ship, Expired, Err(Refusal::Closed(Expired))),
        ];
        assert_eq!(cases.len(), 4 * ReservationStatus::ALL.len(), "every pair");
        for (transition, status, expected) in cases {
            assert_eq!(
                plan(status, transition),
                expected,
                "{transition:?} on {status:?}"
            );
        }
    }

    #[test]
    fn every_change_leads_forward_and_only_open_reservations_change() {
        let transitions = [
            Transition::Release,
            Transition::Expire,
            Transition::Allocate,
            Transition::Ship,
        ];
        for status in ReservationStatus::ALL {
            for transition in transitions {
                if let Ok(Plan::Change { to, .. }) = plan(status, transition) {
                    assert!(status.is_open(), "{status:?} is closed");
                    assert_ne!(to, status);
                    assert_ne!(to, Held, "nothing goes back to held");
                    // A closed reservation never changes again.
                    if !to.is_open() {
                        for next in transitions {
                            assert!(!matches!(plan(to, next), Ok(Plan::Change { .. })));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn allocating_needs_nothing_backordered() {
        assert_eq!(allocatable(&[0, 0]), Ok(()));
        assert_eq!(allocatable(&[0, 3]), Err(Refusal::Backordered(3)));
        assert_eq!(
            Refusal::Backordered(3).to_string(),
            "has 3 units still backordered"
        );
    }
}
