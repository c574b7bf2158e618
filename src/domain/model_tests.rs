//! Model-based tests of the position state machine.
//!
//! `Model` is a deliberately plain reference implementation of SPEC §1: wide
//! signed counters, a map of holds and a map of commitments, written from the
//! SPEC without calling into `position.rs`. Random command sequences are fed to
//! both; after every step the outcomes, the event kinds, the counters, the
//! holds, the commitments and the channel views must agree, and a set of
//! model-independent properties (versions, invariants, oversold reporting,
//! replay) must hold on the real `Position`.
//!
//! Where the SPEC is silent the model follows `position.rs`; those choices are
//! marked `SPEC silent` below.

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;

use super::{
    transfer_hold_id, transfer_of, AdjustReason, Command, Event, EventKind, HoldMode, Position,
    Qty, QuarantineAction, Reject, QTY_MAX, TRANSFER_CHANNEL,
};

const CHANNELS: [&str; 3] = ["web", "marketplace", "b2b"];
/// A channel that never gets a commitment nor a hold.
const STRANGER: &str = "edi";
const RESERVATIONS: usize = 6;
const TRANSFERS: usize = 3;
/// Counters are kept within `i64` (position.rs `COUNTER_MAX`).
const COUNTER_LIMIT: i128 = i64::MAX as i128;

fn qty(n: u64) -> Qty {
    Qty::new(n).expect("generated quantity in range")
}

fn rid(index: usize) -> String {
    format!("r{index}")
}

fn tid(index: usize) -> Arc<str> {
    transfer_hold_id(&format!("t{index}"))
}

// ---------------------------------------------------------------------------
// The reference model
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelHold {
    channel: String,
    reserved: i128,
    backordered: i128,
    allocated: i128,
    /// Units of `reserved + allocated` taken from the channel's commitment.
    from_commitment: i128,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ModelCommitment {
    qty: i128,
    used: i128,
}

#[derive(Debug, Clone, Default)]
struct Model {
    on_hand: i128,
    reserved: i128,
    allocated: i128,
    quarantined: i128,
    in_transit: i128,
    backordered: i128,
    safety_stock: i128,
    backorder_limit: i128,
    version: u64,
    holds: BTreeMap<String, ModelHold>,
    commitments: BTreeMap<String, ModelCommitment>,
    /// Reservations with backordered units, in the order they first backordered.
    backorder_queue: Vec<String>,
}

/// A rejection, as far as the model can tell them apart.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Insufficient { requested: u64, available: i64 },
    InvalidState,
    VersionConflict { expected: u64, actual: u64 },
    OutOfRange,
}

fn refusal(reject: &Reject) -> Refusal {
    match reject {
        Reject::Insufficient {
            requested,
            available,
        } => Refusal::Insufficient {
            requested: *requested,
            available: *available,
        },
        Reject::InvalidState(_) | Reject::NoHold(_) => Refusal::InvalidState,
        Reject::VersionConflict { expected, actual } => Refusal::VersionConflict {
            expected: *expected,
            actual: *actual,
        },
        Reject::QuantityOutOfRange(_) => Refusal::OutOfRange,
    }
}

impl Model {
    fn available(&self) -> i128 {
        self.on_hand - self.reserved - self.allocated - self.quarantined - self.safety_stock
    }

    fn remaining(&self, channel: &str) -> i128 {
        self.commitments
            .get(channel)
            .map_or(0, |c| (c.qty - c.used).max(0))
    }

    fn remaining_total(&self) -> i128 {
        self.commitments
            .values()
            .map(|c| (c.qty - c.used).max(0))
            .sum()
    }

    /// SPEC §1: remaining commitment + (available - all remaining commitments).
    fn view(&self, channel: &str) -> i128 {
        self.remaining(channel) + (self.available() - self.remaining_total())
    }

    fn commitment_of(&self, channel: &str) -> ModelCommitment {
        self.commitments.get(channel).copied().unwrap_or_default()
    }

    fn drop_from_queue_if_filled(&mut self) {
        let holds = &self.holds;
        self.backorder_queue
            .retain(|id| holds.get(id).is_some_and(|h| h.backordered > 0));
    }

    /// The next model state and the kinds of the events the command causes,
    /// or why it is refused. Never changes `self`.
    fn decide(&self, command: &Command) -> Result<(Model, Vec<EventKind>), Refusal> {
        let mut next = self.clone();
        let mut kinds = Vec::new();
        match command {
            Command::Hold {
                reservation_id,
                channel,
                qty,
                mode,
            } => {
                let id = reservation_id.to_string();
                let channel = channel.to_string();
                let q = i128::from(qty.get());
                if let Some(existing) = self.holds.get(&id) {
                    // SPEC §1: a reservation belongs to one channel.
                    if existing.channel != channel {
                        return Err(Refusal::InvalidState);
                    }
                }
                let view = self.view(&channel);
                let fillable = view.max(0);
                let (reserved, backordered) = match mode {
                    HoldMode::Whole { .. } if q <= fillable => (q, 0),
                    // SPEC: up to backorder_limit units in total beyond what the
                    // line can take (SPEC says "beyond available"; the channel
                    // view is what this channel can take).
                    HoldMode::Whole {
                        allow_backorder: true,
                    } if self.backordered + (q - fillable) <= self.backorder_limit => {
                        (fillable, q - fillable)
                    }
                    HoldMode::UpTo if fillable > 0 => (q.min(fillable), 0),
                    _ => {
                        return Err(Refusal::Insufficient {
                            requested: qty.get(),
                            available: i64::try_from(fillable).expect("small"),
                        })
                    }
                };
                // Reservations by a channel consume its commitment first.
                let from_commitment = reserved.min(self.remaining(&channel));
                if from_commitment > 0 {
                    next.commitments
                        .get_mut(&channel)
                        .expect("remaining > 0 means committed")
                        .used += from_commitment;
                }
                let hold = next.holds.entry(id.clone()).or_insert(ModelHold {
                    channel,
                    reserved: 0,
                    backordered: 0,
                    allocated: 0,
                    from_commitment: 0,
                });
                hold.reserved += reserved;
                hold.backordered += backordered;
                hold.from_commitment += from_commitment;
                next.reserved += reserved;
                next.backordered += backordered;
                if backordered > 0 && !next.backorder_queue.contains(&id) {
                    next.backorder_queue.push(id);
                }
                kinds.push(EventKind::Reserved);
            }
            Command::Release {
                reservation_id,
                expired,
            } => {
                // Releasing a released or expired reservation changes nothing.
                let Some(hold) = next.holds.remove(&**reservation_id) else {
                    return Ok((next, kinds));
                };
                next.reserved -= hold.reserved;
                next.allocated -= hold.allocated;
                next.backordered -= hold.backordered;
                if hold.from_commitment > 0 {
                    next.commitments
                        .get_mut(&hold.channel)
                        .expect("commitment used")
                        .used -= hold.from_commitment;
                }
                next.drop_from_queue_if_filled();
                kinds.push(if *expired {
                    EventKind::Expired
                } else {
                    EventKind::Released
                });
            }
            Command::Allocate { reservation_id } => {
                let Some(hold) = next.holds.get_mut(&**reservation_id) else {
                    return Err(Refusal::InvalidState);
                };
                // SPEC silent: backordered units cannot be allocated yet.
                if hold.backordered > 0 {
                    return Err(Refusal::InvalidState);
                }
                // SPEC silent: allocating an allocated hold again is a no-op.
                if hold.reserved == 0 {
                    return Ok((next, kinds));
                }
                next.reserved -= hold.reserved;
                next.allocated += hold.reserved;
                hold.allocated += hold.reserved;
                hold.reserved = 0;
                kinds.push(EventKind::Allocated);
            }
            Command::Ship {
                reservation_id,
                qty,
            } => {
                let Some(hold) = next.holds.remove(&**reservation_id) else {
                    return Err(Refusal::InvalidState);
                };
                // held → allocated → shipped: only allocated units ship.
                if hold.reserved > 0 || hold.backordered > 0 {
                    return Err(Refusal::InvalidState);
                }
                let shipped = qty.map_or(hold.allocated, |q| i128::from(q.get()));
                if shipped > hold.allocated {
                    return Err(Refusal::OutOfRange);
                }
                if shipped > self.on_hand {
                    return Err(Refusal::InvalidState);
                }
                if shipped > 0 {
                    next.on_hand -= shipped;
                    next.allocated -= shipped;
                    next.quarantined = next.quarantined.min(next.on_hand);
                    kinds.push(EventKind::Shipped);
                }
                // SPEC silent: shipped units consume the commitment for good,
                // committed units first; the rest of the hold is released.
                let rest = hold.allocated - shipped;
                if rest > 0 {
                    next.allocated -= rest;
                    let returned = (hold.from_commitment - shipped).max(0);
                    if returned > 0 {
                        next.commitments
                            .get_mut(&hold.channel)
                            .expect("commitment used")
                            .used -= returned;
                    }
                    kinds.push(EventKind::Released);
                }
            }
            Command::Receipt { qty } => {
                next.on_hand += i128::from(qty.get());
                kinds.push(EventKind::Received);
                next.fill_backorders(i128::from(qty.get()), &mut kinds);
            }
            Command::Adjust { delta, reason } => {
                next.physical_change(*delta)?;
                kinds.push(EventKind::Adjusted(*reason));
            }
            Command::Count {
                counted,
                expected_version,
            } => {
                self.check_target(*counted, *expected_version)?;
                next.set_on_hand(*counted);
                // SPEC silent: a count that matches is still an event.
                kinds.push(EventKind::Counted);
            }
            Command::Correct {
                on_hand,
                expected_version,
            } => {
                self.check_target(*on_hand, *expected_version)?;
                if i128::from(*on_hand) != next.on_hand {
                    next.set_on_hand(*on_hand);
                    kinds.push(EventKind::Adjusted(AdjustReason::Correction));
                }
            }
            Command::Return { qty, restockable } => {
                let q = i128::from(qty.get());
                next.on_hand += q;
                if !restockable {
                    next.quarantined += q;
                }
                // SPEC silent: a return does not fill backorders.
                kinds.push(EventKind::Returned {
                    restockable: *restockable,
                });
            }
            Command::Quarantine { qty, action } => {
                let q = i128::from(qty.get());
                match action {
                    QuarantineAction::Hold => {
                        if q > self.on_hand - self.quarantined {
                            return Err(Refusal::InvalidState);
                        }
                        next.quarantined += q;
                    }
                    QuarantineAction::Release => {
                        if q > self.quarantined {
                            return Err(Refusal::InvalidState);
                        }
                        next.quarantined -= q;
                    }
                    QuarantineAction::Scrap => {
                        if q > self.quarantined {
                            return Err(Refusal::InvalidState);
                        }
                        next.quarantined -= q;
                        next.on_hand -= q;
                    }
                }
                kinds.push(EventKind::Quarantined(*action));
            }
            Command::InTransit { delta } => {
                next.check_delta(*delta)?;
                next.in_transit += i128::from(*delta);
                if !(0..=COUNTER_LIMIT).contains(&next.in_transit) {
                    return Err(Refusal::InvalidState);
                }
                kinds.push(EventKind::InTransit);
            }
            Command::Settings {
                safety_stock,
                backorder_limit,
            } => {
                // Settings accept 0.
                if safety_stock.is_some_and(|v| v > QTY_MAX)
                    || backorder_limit.is_some_and(|v| v > QTY_MAX)
                {
                    return Err(Refusal::OutOfRange);
                }
                if let Some(value) = safety_stock {
                    next.safety_stock = i128::from(*value);
                }
                if let Some(value) = backorder_limit {
                    next.backorder_limit = i128::from(*value);
                }
                if (next.safety_stock, next.backorder_limit)
                    == (self.safety_stock, self.backorder_limit)
                {
                    return Ok((next, kinds));
                }
                kinds.push(EventKind::SettingsChanged);
            }
            Command::TransferHold { transfer, qty } => {
                let id = transfer.to_string();
                // SPEC silent: one hold per transfer, of what no channel has
                // ring-fenced, whole or nothing.
                if self.holds.contains_key(&id) {
                    return Err(Refusal::InvalidState);
                }
                let q = i128::from(qty.get());
                let uncommitted = self.available() - self.remaining_total();
                if q > uncommitted {
                    return Err(Refusal::Insufficient {
                        requested: qty.get(),
                        available: i64::try_from(uncommitted.max(0)).expect("small"),
                    });
                }
                next.holds.insert(
                    id,
                    ModelHold {
                        channel: TRANSFER_CHANNEL.to_string(),
                        reserved: q,
                        backordered: 0,
                        allocated: 0,
                        from_commitment: 0,
                    },
                );
                next.reserved += q;
                kinds.push(EventKind::TransferHeld);
            }
            Command::TransferRelease { transfer } => {
                let Some(hold) = next.holds.remove(&**transfer) else {
                    return Ok((next, kinds));
                };
                next.reserved -= hold.reserved;
                kinds.push(EventKind::TransferReleased);
            }
            Command::TransferShip { transfer, qty } => {
                let Some(hold) = next.holds.remove(&**transfer) else {
                    return Err(Refusal::InvalidState);
                };
                let q = i128::from(qty.get());
                if q > hold.reserved {
                    return Err(Refusal::OutOfRange);
                }
                if q > self.on_hand {
                    return Err(Refusal::InvalidState);
                }
                next.on_hand -= q;
                next.reserved -= q;
                next.quarantined = next.quarantined.min(next.on_hand);
                kinds.push(EventKind::TransferShipped);
                // A short shipment releases the rest.
                let rest = hold.reserved - q;
                if rest > 0 {
                    next.reserved -= rest;
                    kinds.push(EventKind::TransferReleased);
                }
            }
            Command::TransferInbound { qty, .. } => {
                next.in_transit += i128::from(qty.get());
                kinds.push(EventKind::TransferInbound);
            }
            Command::TransferReceive {
                received, shipped, ..
            } => {
                // What arrived goes on hand; the whole shipment leaves
                // in_transit (as far as it is there), whatever arrived.
                next.in_transit -= i128::from(*shipped).min(self.in_transit);
                next.on_hand += i128::from(received.get());
                kinds.push(EventKind::TransferReceived);
                next.fill_backorders(i128::from(received.get()), &mut kinds);
            }
            Command::SetCommitment { channel, qty } => {
                if *qty > QTY_MAX {
                    return Err(Refusal::OutOfRange);
                }
                let q = i128::from(*qty);
                if self.commitment_of(channel).qty == q {
                    return Ok((next, kinds));
                }
                next.commitments.entry(channel.to_string()).or_default().qty = q;
                kinds.push(EventKind::CommitmentSet);
            }
        }
        let counters = [
            next.on_hand,
            next.reserved,
            next.allocated,
            next.quarantined,
            next.in_transit,
            next.backordered,
            next.safety_stock,
            next.backorder_limit,
        ];
        if counters.iter().any(|c| !(0..=COUNTER_LIMIT).contains(c)) {
            return Err(Refusal::OutOfRange);
        }
        // SPEC silent on repeat offences: every change that leaves available
        // negative and lower than before is reported as oversold.
        if next.available() < 0 && next.available() < self.available() {
            kinds.push(EventKind::Oversold);
        }
        next.version += kinds.len() as u64;
        Ok((next, kinds))
    }

    /// A receipt of `q` fills backorders first, oldest first, as far as the
    /// position stays not oversold; filled units draw on the channel's
    /// commitment first, like any hold.
    fn fill_backorders(&mut self, q: i128, kinds: &mut Vec<EventKind>) {
        let mut budget = q.min(self.available().max(0));
        for id in self.backorder_queue.clone() {
            if budget == 0 {
                break;
            }
            let hold = self.holds.get_mut(&id).expect("queued hold exists");
            let filled = hold.backordered.min(budget);
            if filled == 0 {
                continue;
            }
            budget -= filled;
            hold.backordered -= filled;
            hold.reserved += filled;
            let channel = hold.channel.clone();
            if let Some(commitment) = self.commitments.get_mut(&channel) {
                let used = filled.min((commitment.qty - commitment.used).max(0));
                commitment.used += used;
                if let Some(hold) = self.holds.get_mut(&id) {
                    hold.from_commitment += used;
                }
            }
            self.backordered -= filled;
            self.reserved += filled;
            kinds.push(EventKind::BackorderFilled);
        }
        self.drop_from_queue_if_filled();
    }

    fn check_delta(&self, delta: i64) -> Result<(), Refusal> {
        if delta == 0 || delta.unsigned_abs() > QTY_MAX {
            return Err(Refusal::OutOfRange);
        }
        Ok(())
    }

    /// The physical world wins: on_hand moves even below the holds, never
    /// below zero; quarantined units never exceed on_hand.
    /// A count's or a correction's target: the version it expects, and in range.
    fn check_target(&self, target: u64, expected_version: Option<u64>) -> Result<(), Refusal> {
        if let Some(expected) = expected_version {
            if expected != self.version {
                return Err(Refusal::VersionConflict {
                    expected,
                    actual: self.version,
                });
            }
        }
        if target > QTY_MAX {
            return Err(Refusal::OutOfRange);
        }
        Ok(())
    }

    fn set_on_hand(&mut self, on_hand: u64) {
        self.on_hand = i128::from(on_hand);
        self.quarantined = self.quarantined.min(self.on_hand);
    }

    fn physical_change(&mut self, delta: i64) -> Result<(), Refusal> {
        self.check_delta(delta)?;
        let on_hand = self.on_hand + i128::from(delta);
        if !(0..=COUNTER_LIMIT).contains(&on_hand) {
            return Err(Refusal::InvalidState);
        }
        self.on_hand = on_hand;
        self.quarantined = self.quarantined.min(on_hand);
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Generated operations
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Expect {
    Nothing,
    Current,
    Stale(u64),
}

/// Which reservation a release, allocation or shipment is for.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// `r{n}`, whatever it holds.
    Id(usize),
    /// The n-th (modulo) reservation holding anything here.
    Live(usize),
    /// The n-th (modulo) reservation with reserved units and no backorder.
    Allocatable(usize),
    /// The n-th (modulo) reservation that holds only allocated units.
    Ready(usize),
}

impl Target {
    fn resolve(self, position: &Position) -> Arc<str> {
        let pick = |n: usize, wanted: fn(&super::Hold) -> bool| {
            let mut ids: Vec<&Arc<str>> = position
                .holds
                .iter()
                .filter(|(id, h)| transfer_of(id).is_none() && wanted(h))
                .map(|(id, _)| id)
                .collect();
            ids.sort();
            if ids.is_empty() {
                Arc::from(rid(n % RESERVATIONS).as_str())
            } else {
                ids[n % ids.len()].clone()
            }
        };
        match self {
            Target::Id(n) => Arc::from(rid(n).as_str()),
            Target::Live(n) => pick(n, |_| true),
            Target::Allocatable(n) => pick(n, |h| h.reserved > 0 && h.backordered == 0),
            Target::Ready(n) => pick(n, |h| h.reserved == 0 && h.backordered == 0),
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Hold {
        reservation: usize,
        channel: usize,
        qty: u64,
        mode: HoldMode,
    },
    Release {
        target: Target,
        expired: bool,
    },
    Allocate {
        target: Target,
    },
    Ship {
        target: Target,
        qty: Option<u64>,
    },
    Receipt {
        qty: u64,
    },
    Adjust {
        delta: i64,
        reason: AdjustReason,
    },
    Count {
        counted: u64,
        expect: Expect,
    },
    Correct {
        on_hand: u64,
        expect: Expect,
    },
    Return {
        qty: u64,
        restockable: bool,
    },
    Quarantine {
        qty: u64,
        action: QuarantineAction,
    },
    InTransit {
        delta: i64,
    },
    Settings {
        safety_stock: Option<u64>,
        backorder_limit: Option<u64>,
    },
    SetCommitment {
        channel: usize,
        qty: u64,
    },
    TransferHold {
        transfer: usize,
        qty: u64,
    },
    TransferRelease {
        transfer: usize,
    },
    TransferShip {
        transfer: usize,
        qty: u64,
    },
    TransferInbound {
        transfer: usize,
        qty: u64,
    },
    TransferReceive {
        transfer: usize,
        received: u64,
        shipped: u64,
    },
}

impl Op {
    /// The command for the position's current state (versions and live
    /// reservations are only known while running).
    fn command(&self, position: &Position) -> Command {
        let version = position.version;
        let reservation_id = |r: usize| Arc::from(rid(r).as_str());
        match self.clone() {
            Op::Hold {
                reservation,
                channel,
                qty: n,
                mode,
            } => Command::Hold {
                reservation_id: reservation_id(reservation),
                channel: Arc::from(CHANNELS[channel]),
                qty: qty(n),
                mode,
            },
            Op::Release { target, expired } => Command::Release {
                reservation_id: target.resolve(position),
                expired,
            },
            Op::Allocate { target } => Command::Allocate {
                reservation_id: target.resolve(position),
            },
            Op::Ship { target, qty: n } => Command::Ship {
                reservation_id: target.resolve(position),
                qty: n.map(qty),
            },
            Op::Receipt { qty: n } => Command::Receipt { qty: qty(n) },
            Op::Adjust { delta, reason } => Command::Adjust { delta, reason },
            Op::Count { counted, expect } => Command::Count {
                counted,
                expected_version: match expect {
                    Expect::Nothing => None,
                    Expect::Current => Some(version),
                    Expect::Stale(k) if version >= k => Some(version - k),
                    Expect::Stale(k) => Some(version + k),
                },
            },
            Op::Correct { on_hand, expect } => Command::Correct {
                on_hand,
                expected_version: match expect {
                    Expect::Nothing => None,
                    Expect::Current => Some(version),
                    Expect::Stale(k) if version >= k => Some(version - k),
                    Expect::Stale(k) => Some(version + k),
                },
            },
            Op::Return {
                qty: n,
                restockable,
            } => Command::Return {
                qty: qty(n),
                restockable,
            },
            Op::Quarantine { qty: n, action } => Command::Quarantine {
                qty: qty(n),
                action,
            },
            Op::InTransit { delta } => Command::InTransit { delta },
            Op::Settings {
                safety_stock,
                backorder_limit,
            } => Command::Settings {
                safety_stock,
                backorder_limit,
            },
            Op::SetCommitment { channel, qty } => Command::SetCommitment {
                channel: Arc::from(CHANNELS[channel]),
                qty,
            },
            Op::TransferHold { transfer, qty: n } => Command::TransferHold {
                transfer: tid(transfer),
                qty: qty(n),
            },
            Op::TransferRelease { transfer } => Command::TransferRelease {
                transfer: tid(transfer),
            },
            Op::TransferShip { transfer, qty: n } => Command::TransferShip {
                transfer: tid(transfer),
                qty: qty(n),
            },
            Op::TransferInbound { transfer, qty: n } => Command::TransferInbound {
                transfer: tid(transfer),
                qty: qty(n),
            },
            Op::TransferReceive {
                transfer,
                received,
                shipped,
            } => Command::TransferReceive {
                transfer: tid(transfer),
                received: qty(received),
                shipped,
            },
        }
    }
}

/// Mostly small so that holds, stock and limits collide; sometimes huge.
fn quantity() -> impl Strategy<Value = u64> {
    prop_oneof![
        16 => 1..=20u64,
        1 => 1..=QTY_MAX,
        1 => Just(QTY_MAX),
    ]
}

/// Non-zero within ±QTY_MAX, sometimes out of range.
fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        10 => quantity().prop_map(|q| q as i64),
        10 => quantity().prop_map(|q| -(q as i64)),
        1 => Just(0i64),
        1 => Just(QTY_MAX as i64 + 1),
        1 => Just(-(QTY_MAX as i64) - 1),
    ]
}

/// Settings and commitments: 0 allowed, sometimes out of range.
fn setting() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        12 => 1..=20u64,
        1 => 1..=QTY_MAX,
        1 => Just(QTY_MAX + 1),
    ]
}

fn counted() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => Just(0u64),
        12 => 0..=30u64,
        1 => 0..=QTY_MAX,
        1 => Just(QTY_MAX + 1),
    ]
}

fn mode() -> impl Strategy<Value = HoldMode> {
    prop_oneof![
        Just(HoldMode::Whole {
            allow_backorder: true
        }),
        Just(HoldMode::Whole {
            allow_backorder: false
        }),
        Just(HoldMode::UpTo),
    ]
}

fn reason() -> impl Strategy<Value = AdjustReason> {
    prop_oneof![
        Just(AdjustReason::Damage),
        Just(AdjustReason::Shrink),
        Just(AdjustReason::Found),
        Just(AdjustReason::Correction),
        Just(AdjustReason::ShortPick),
    ]
}

fn action() -> impl Strategy<Value = QuarantineAction> {
    prop_oneof![
        Just(QuarantineAction::Hold),
        Just(QuarantineAction::Release),
        Just(QuarantineAction::Scrap),
    ]
}

fn expect() -> impl Strategy<Value = Expect> {
    prop_oneof![
        2 => Just(Expect::Nothing),
        2 => Just(Expect::Current),
        1 => (1..=3u64).prop_map(Expect::Stale),
    ]
}

fn live() -> impl Strategy<Value = Target> {
    prop_oneof![
        (0..RESERVATIONS).prop_map(Target::Id),
        any::<usize>().prop_map(Target::Live),
    ]
}

fn ready() -> impl Strategy<Value = Target> {
    prop_oneof![
        1 => (0..RESERVATIONS).prop_map(Target::Id),
        3 => any::<usize>().prop_map(Target::Ready),
    ]
}

/// One operation. A reservation always holds through the same channel
/// (`r % 3`), as the registry guarantees.
fn op() -> impl Strategy<Value = Op> {
    let reservation = 0..RESERVATIONS;
    prop_oneof![
        8 => (reservation.clone(), quantity(), mode()).prop_map(|(reservation, qty, mode)| {
            Op::Hold {
                reservation,
                channel: reservation % CHANNELS.len(),
                qty,
                mode,
            }
        }),
        3 => (live(), any::<bool>())
            .prop_map(|(target, expired)| Op::Release { target, expired }),
        4 => prop_oneof![live(), any::<usize>().prop_map(Target::Allocatable)]
            .prop_map(|target| Op::Allocate { target }),
        4 => (ready(), proptest::option::weighted(0.5, quantity()))
            .prop_map(|(target, qty)| Op::Ship { target, qty }),
        6 => quantity().prop_map(|qty| Op::Receipt { qty }),
        3 => (delta(), reason()).prop_map(|(delta, reason)| Op::Adjust { delta, reason }),
        2 => (counted(), expect()).prop_map(|(counted, expect)| Op::Count { counted, expect }),
        2 => (counted(), expect()).prop_map(|(on_hand, expect)| Op::Correct { on_hand, expect }),
        2 => (quantity(), any::<bool>())
            .prop_map(|(qty, restockable)| Op::Return { qty, restockable }),
        3 => (quantity(), action()).prop_map(|(qty, action)| Op::Quarantine { qty, action }),
        1 => delta().prop_map(|delta| Op::InTransit { delta }),
        3 => (
            proptest::option::weighted(0.6, setting()),
            proptest::option::weighted(0.6, setting())
        )
            .prop_map(|(safety_stock, backorder_limit)| Op::Settings {
                safety_stock,
                backorder_limit,
            }),
        3 => (0..CHANNELS.len(), setting())
            .prop_map(|(channel, qty)| Op::SetCommitment { channel, qty }),
        3 => (0..TRANSFERS, quantity()).prop_map(|(transfer, qty)| Op::TransferHold { transfer, qty }),
        1 => (0..TRANSFERS).prop_map(|transfer| Op::TransferRelease { transfer }),
        // Mostly within what a transfer holds, so that shipments happen.
        3 => (0..TRANSFERS, prop_oneof![4 => 1..=5u64, 1 => quantity()])
            .prop_map(|(transfer, qty)| Op::TransferShip { transfer, qty }),
        1 => (0..TRANSFERS, quantity())
            .prop_map(|(transfer, qty)| Op::TransferInbound { transfer, qty }),
        1 => (0..TRANSFERS, quantity(), counted()).prop_map(|(transfer, received, shipped)| {
            Op::TransferReceive { transfer, received, shipped }
        }),
    ]
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(op(), 1..=60)
}

// ---------------------------------------------------------------------------
// Running both side by side
// ---------------------------------------------------------------------------

fn as_u64(value: i128) -> u64 {
    u64::try_from(value).expect("model counter is non-negative")
}

fn as_i64(value: i128) -> i64 {
    i64::try_from(value).expect("model value fits i64")
}

fn remaining(position: &Position, channel: &str) -> i64 {
    position
        .commitments
        .iter()
        .find(|c| &*c.channel == channel)
        .map_or(0, |c| c.remaining() as i64)
}

fn remaining_total(position: &Position) -> i64 {
    position
        .commitments
        .iter()
        .map(|c| c.remaining() as i64)
        .sum()
}

/// The whole observable state of the position equals the model's.
fn assert_same(position: &Position, model: &Model) -> Result<(), TestCaseError> {
    let c = &position.counters;
    prop_assert_eq!(
        [
            c.on_hand,
            c.reserved,
            c.allocated,
            c.quarantined,
            c.in_transit,
            c.backordered,
            c.safety_stock,
            c.backorder_limit,
        ],
        [
            as_u64(model.on_hand),
            as_u64(model.reserved),
            as_u64(model.allocated),
            as_u64(model.quarantined),
            as_u64(model.in_transit),
            as_u64(model.backordered),
            as_u64(model.safety_stock),
            as_u64(model.backorder_limit),
        ],
        "counters [on_hand, reserved, allocated, quarantined, in_transit, backordered, safety_stock, backorder_limit]"
    );
    prop_assert_eq!(position.version, model.version, "version");
    prop_assert_eq!(position.available(), as_i64(model.available()), "available");
    prop_assert_eq!(position.is_oversold(), model.available() < 0);

    // The holds, reservation by reservation.
    let holds: BTreeMap<String, ModelHold> = position
        .holds
        .iter()
        .map(|(id, h)| {
            (
                id.to_string(),
                ModelHold {
                    channel: h.channel.to_string(),
                    reserved: i128::from(h.reserved),
                    backordered: i128::from(h.backordered),
                    allocated: i128::from(h.allocated),
                    from_commitment: i128::from(h.from_commitment),
                },
            )
        })
        .collect();
    prop_assert_eq!(&holds, &model.holds, "holds");
    // The counters are exactly what the holds add up to.
    let sum = |f: fn(&ModelHold) -> i128| model.holds.values().map(f).sum::<i128>();
    prop_assert_eq!(model.reserved, sum(|h| h.reserved));
    prop_assert_eq!(model.allocated, sum(|h| h.allocated));
    prop_assert_eq!(model.backordered, sum(|h| h.backordered));
    prop_assert!(model.quarantined <= model.on_hand);

    // Commitments, channel by channel.
    let commitments: BTreeMap<String, ModelCommitment> = position
        .commitments
        .iter()
        .map(|c| {
            (
                c.channel.to_string(),
                ModelCommitment {
                    qty: i128::from(c.qty),
                    used: i128::from(c.used),
                },
            )
        })
        .collect();
    prop_assert_eq!(
        commitments.len(),
        position.commitments.len(),
        "one entry per channel"
    );
    prop_assert_eq!(&commitments, &model.commitments, "commitments");
    for channel in CHANNELS {
        let used_by_holds: i128 = model
            .holds
            .values()
            .filter(|h| h.channel == channel)
            .map(|h| h.from_commitment)
            .sum();
        prop_assert!(used_by_holds <= model.commitment_of(channel).used);
    }

    // Channel views: SPEC §1 formula, and never more than available.
    for channel in CHANNELS.into_iter().chain([STRANGER]) {
        let view = position.channel_view(channel);
        prop_assert_eq!(view, as_i64(model.view(channel)), "view of {}", channel);
        prop_assert_eq!(
            view,
            remaining(position, channel) + (position.available() - remaining_total(position))
        );
        prop_assert!(view <= position.available());
    }

    // Backorders are filled in the order they were taken.
    let mut queue: Vec<String> = Vec::new();
    for id in &position.backorder_queue {
        let id = id.to_string();
        let live = position
            .holds
            .get(id.as_str())
            .is_some_and(|h| h.backordered > 0);
        if live && !queue.contains(&id) {
            queue.push(id);
        }
    }
    prop_assert_eq!(&queue, &model.backorder_queue, "backorder order");
    Ok(())
}

/// Decides and evolves `command` on the position, decides it on the model,
/// and checks that both agree and that every property holds.
fn step(
    position: &mut Position,
    model: &mut Model,
    command: &Command,
    journal: &mut Vec<Event>,
) -> Result<(), TestCaseError> {
    let before = position.clone();
    let available_before = position.available();
    let expected = model.decide(command);
    let actual = position.decide(command);
    prop_assert_eq!(&*position, &before, "decide changes nothing");
    let events = match (expected, actual) {
        (Err(expected), Err(actual)) => {
            prop_assert_eq!(refusal(&actual), expected, "rejection of {:?}", command);
            return assert_same(position, model);
        }
        (Ok((next, kinds)), Ok(events)) => {
            let actual_kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
            prop_assert_eq!(actual_kinds, kinds, "events of {:?}", command);
            *model = next;
            events
        }
        (expected, actual) => {
            return Err(TestCaseError::fail(format!(
                "model and position disagree on {command:?}: model {:?}, position {actual:?}",
                expected.map(|(_, kinds)| kinds)
            )));
        }
    };
    for event in &events {
        if let Err(error) = position.evolve(event) {
            return Err(TestCaseError::fail(format!(
                "decided event does not evolve: {error}"
            )));
        }
    }
    journal.extend(events.iter().cloned());

    // Versions: one per event; a no-op keeps the version.
    prop_assert_eq!(position.version, before.version + events.len() as u64);
    if events.is_empty() {
        prop_assert_eq!(&*position, &before, "a no-op changes nothing");
    }
    if let Err(why) = position.check_invariants() {
        return Err(TestCaseError::fail(why));
    }
    assert_same(position, model)?;

    // Oversold is reported exactly when available drops below zero.
    let available_after = position.available();
    let oversold_reported = events.last().map(|e| e.kind) == Some(EventKind::Oversold);
    if available_before >= 0 && available_after < 0 {
        prop_assert!(oversold_reported, "oversold not reported for {:?}", command);
    }
    if oversold_reported {
        prop_assert!(available_after < 0 && available_after < available_before);
    }
    prop_assert!(
        events
            .iter()
            .rev()
            .skip(1)
            .all(|e| e.kind != EventKind::Oversold),
        "Oversold only ever comes last"
    );

    match command {
        Command::Hold { mode, qty, .. } => {
            // A hold never oversells and never lowers an oversold available.
            if available_before >= 0 {
                prop_assert!(available_after >= 0, "hold oversold the position");
            } else {
                prop_assert_eq!(available_after, available_before);
            }
            let delta = events[0].delta;
            prop_assert!(delta.reserved >= 0 && delta.backordered >= 0);
            if delta.backordered > 0 {
                prop_assert_eq!(
                    *mode,
                    HoldMode::Whole {
                        allow_backorder: true
                    }
                );
                prop_assert!(
                    position.counters.backordered <= position.counters.backorder_limit,
                    "a hold pushed backordered over the limit"
                );
            }
            if let HoldMode::Whole { .. } = mode {
                prop_assert_eq!((delta.reserved + delta.backordered) as u64, qty.get());
            }
        }
        Command::TransferHold { qty, .. } => {
            // A transfer takes only uncommitted available: it never oversells
            // and leaves every channel a view of at least zero.
            prop_assert!(available_after >= 0, "transfer hold oversold the position");
            prop_assert_eq!(events[0].delta.reserved as u64, qty.get());
            for channel in CHANNELS.into_iter().chain([STRANGER]) {
                prop_assert!(position.channel_view(channel) >= 0, "view of {}", channel);
            }
        }
        Command::Release { .. }
        | Command::Allocate { .. }
        | Command::Ship { .. }
        | Command::TransferRelease { .. }
        | Command::TransferShip { .. }
        | Command::TransferInbound { .. }
        | Command::TransferReceive { .. }
        | Command::Receipt { .. }
        | Command::Return { .. }
        | Command::InTransit { .. }
        | Command::SetCommitment { .. }
        | Command::Quarantine {
            action: QuarantineAction::Release | QuarantineAction::Scrap,
            ..
        } => {
            prop_assert!(
                available_after >= available_before.min(0),
                "{:?} made available negative",
                command
            );
            prop_assert!(!oversold_reported);
        }
        Command::Adjust { .. }
        | Command::Correct { .. }
        | Command::Count { .. }
        | Command::Quarantine { .. }
        | Command::Settings { .. } => {}
    }
    // A receipt fills backorders with its units as far as available allows.
    let received = match command {
        Command::Receipt { qty } => Some(qty),
        Command::TransferReceive { received, .. } => Some(received),
        _ => None,
    };
    if let Some(qty) = received {
        let filled: i64 = events[1..]
            .iter()
            .filter(|e| e.kind == EventKind::BackorderFilled)
            .map(|e| e.delta.reserved)
            .sum();
        let room = (available_before + qty.get() as i64)
            .max(0)
            .min(qty.get() as i64);
        if position.counters.backordered > 0 {
            prop_assert_eq!(filled, room, "receipt left backorders unfilled");
        }
        prop_assert!(filled <= room && position.available() >= available_before.min(0));
    }
    Ok(())
}

/// Runs every op; returns the position, the model and the journal.
fn run_all(ops: &[Op]) -> Result<(Position, Model, Vec<Event>), TestCaseError> {
    let mut position = Position::default();
    let mut model = Model::default();
    let mut journal = Vec::new();
    for op in ops {
        let command = op.command(&position);
        step(&mut position, &mut model, &command, &mut journal)?;
    }
    Ok((position, model, journal))
}

fn probe_hold(channel: &str, n: u64, mode: HoldMode) -> Command {
    Command::Hold {
        reservation_id: Arc::from(format!("probe-{channel}").as_str()),
        channel: Arc::from(channel),
        qty: qty(n),
        mode,
    }
}

fn apply(position: &mut Position, command: &Command) -> Result<Vec<Event>, Reject> {
    let events = position.decide(command)?;
    for event in &events {
        position.evolve(event).expect("decided events apply");
    }
    Ok(events)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The position agrees with the model after every command, and replaying
    /// the journal onto an empty position rebuilds it exactly.
    #[test]
    fn position_follows_the_model_and_replays(ops in ops()) {
        let (position, _, journal) = run_all(&ops)?;
        let mut replayed = Position::default();
        for event in &journal {
            replayed.evolve(event).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        prop_assert_eq!(replayed.version, journal.len() as u64);
        prop_assert_eq!(&replayed, &position);
    }

    /// A channel can take exactly its view, not one unit more; a hold within
    /// the channel's remaining commitment leaves every other view unchanged,
    /// and beyond it lowers them by the excess.
    #[test]
    fn channel_views_bound_holds(
        ops in ops(),
        channel in 0..CHANNELS.len(),
        fraction in 0.0..=1.0f64,
    ) {
        let (position, _, _) = run_all(&ops)?;
        let name = CHANNELS[channel];
        let view = position.channel_view(name);
        let fillable = view.max(0) as u64;
        if fillable < QTY_MAX {
            let refused = position
                .decide(&probe_hold(name, fillable + 1, HoldMode::Whole { allow_backorder: false }))
                .unwrap_err();
            prop_assert_eq!(
                refused,
                Reject::Insufficient { requested: fillable + 1, available: fillable as i64 }
            );
        }
        if fillable == 0 {
            let refused = position.decide(&probe_hold(name, 1, HoldMode::UpTo));
            prop_assert!(refused.is_err(), "nothing to take, yet UpTo took something");
            return Ok(());
        }
        let x = ((fillable as f64 * fraction).ceil() as u64).clamp(1, fillable.min(QTY_MAX));
        let own_remaining = remaining(&position, name);
        let mut held = position.clone();
        apply(&mut held, &probe_hold(name, x, HoldMode::Whole { allow_backorder: false }))
            .map_err(|e| TestCaseError::fail(format!("hold of {x} within view {view}: {e}")))?;
        prop_assert_eq!(held.channel_view(name), view - x as i64);
        let excess = (x as i64 - own_remaining).max(0);
        for other in CHANNELS.into_iter().chain([STRANGER]).filter(|c| *c != name) {
            prop_assert_eq!(
                held.channel_view(other),
                position.channel_view(other) - excess,
                "view of {} after {} held {}", other, name, x
            );
        }
        prop_assert_eq!(remaining(&held, name), (own_remaining - x as i64).max(0));
    }

    /// All channels together can never hold more than available; when the
    /// available stock covers every remaining commitment they can hold all of
    /// it, and each channel gets at least its remaining commitment.
    #[test]
    fn channels_together_hold_at_most_available(
        ops in ops(),
        order in Just(vec![0usize, 1, 2]).prop_shuffle(),
    ) {
        let (position, _, _) = run_all(&ops)?;
        let available = position.available();
        let committed = remaining_total(&position);
        let mut swept = position.clone();
        let mut total: i64 = 0;
        for channel in order {
            let name = CHANNELS[channel];
            let own_remaining = remaining(&swept, name);
            let uncommitted = swept.available() - remaining_total(&swept);
            let mut taken: i64 = 0;
            while let Ok(events) = apply(&mut swept, &probe_hold(name, QTY_MAX, HoldMode::UpTo)) {
                prop_assert!(events[0].delta.reserved > 0);
                taken += events[0].delta.reserved;
                prop_assert!(taken <= available.max(0), "channels took more than available");
            }
            prop_assert!(swept.channel_view(name) <= 0);
            if uncommitted >= 0 {
                prop_assert_eq!(taken, own_remaining + uncommitted);
            }
            total += taken;
        }
        prop_assert!(total <= available.max(0));
        if available >= committed {
            prop_assert_eq!(total, available);
        }
        prop_assert!(swept.available() >= 0 || swept.available() == available);
        for channel in CHANNELS.into_iter().chain([STRANGER]) {
            prop_assert!(swept.channel_view(channel) <= 0);
        }
        if let Err(why) = swept.check_invariants() {
            return Err(TestCaseError::fail(why));
        }
    }
}

// ---------------------------------------------------------------------------
// Disagreements with the SPEC the model found (fixed; kept as regressions)
// ---------------------------------------------------------------------------

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn run(position: &mut Position, command: Command) -> Vec<Event> {
    apply(position, &command).expect("command accepted")
}

/// SPEC §1: "Reservations by a channel consume its commitment first." A
/// backordered unit of a web reservation that a receipt fills becomes a
/// reserved unit of that reservation, so it should use web's commitment
/// like a unit reserved straight away. `decide_receipt` emits
/// `BackorderFilled` with `commitment_used: 0`, so the commitment stays
/// untouched and web ends up with its backorder *plus* its full ring fence,
/// taken out of every other channel's view.
#[test]
fn filled_backorders_consume_the_channels_commitment_first() {
    let mut p = Position::default();
    run(
        &mut p,
        Command::SetCommitment {
            channel: id("web"),
            qty: 10,
        },
    );
    run(
        &mut p,
        Command::Settings {
            safety_stock: None,
            backorder_limit: Some(5),
        },
    );
    let events = run(
        &mut p,
        Command::Hold {
            reservation_id: id("r1"),
            channel: id("web"),
            qty: qty(5),
            mode: HoldMode::Whole {
                allow_backorder: true,
            },
        },
    );
    assert_eq!(events[0].delta.backordered, 5);
    run(&mut p, Command::Receipt { qty: qty(20) });
    assert_eq!(p.counters.reserved, 5);
    // Web's 5 reserved units came out of its 10 ring-fenced ones: 5 remain,
    // and the other 10 units on hand are uncommitted.
    assert_eq!(
        remaining(&p, "web"),
        5,
        "commitment used by the filled backorder"
    );
    assert_eq!(p.channel_view("marketplace"), 10);
    assert_eq!(p.channel_view("web"), 15);
}

/// SPEC §1: a reservation has one `channel`. `decide_hold` accepts a hold
/// for an existing reservation through another channel; `evolve_hold` keeps
/// the hold's first channel but books `commitment_used` on the new one, so
/// the later release gives the units back to the wrong channel and its
/// event cannot even be evolved ("commitment used" underflow): the actor
/// would be stuck with a decided event it cannot apply. Either reject the
/// second hold or account it per channel.
#[test]
fn a_reservation_cannot_switch_channels() {
    let mut p = Position::default();
    run(&mut p, Command::Receipt { qty: qty(20) });
    for channel in ["web", "marketplace"] {
        run(
            &mut p,
            Command::SetCommitment {
                channel: id(channel),
                qty: 5,
            },
        );
    }
    let hold = |channel: &str, n: u64| Command::Hold {
        reservation_id: id("r1"),
        channel: id(channel),
        qty: qty(n),
        mode: HoldMode::Whole {
            allow_backorder: false,
        },
    };
    run(&mut p, hold("web", 3));
    // Either refused, or accounted so that a release gives everything back.
    if let Ok(events) = p.decide(&hold("marketplace", 2)) {
        for event in &events {
            p.evolve(event).expect("decided event applies");
        }
    }
    let release = p
        .decide(&Command::Release {
            reservation_id: id("r1"),
            expired: false,
        })
        .expect("release is accepted");
    for event in &release {
        p.evolve(event).expect("decided release applies");
    }
    p.check_invariants().expect("invariants hold");
    assert!(p.holds.is_empty());
    assert!(
        p.commitments.iter().all(|c| c.used == 0),
        "{:?}",
        p.commitments
    );
}
