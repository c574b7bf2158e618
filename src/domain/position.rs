//! One SKU at one location: its counters, settings, channel commitments and the
//! holds that reservations and transfers have on it.
//!
//! `decide` checks a command against the current state and returns the events
//! it causes; `evolve` applies one event. Counters never go negative and never
//! pass `COUNTER_MAX`; only `available` (a derived number) may be negative,
//! which is an *oversold* position, reported rather than asserted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ChannelId, Qty, Reject, ReservationId, QTY_MAX};

/// Counters stay within `i64` so that every delta between two of them fits an
/// `i64` and `available` never wraps.
pub const COUNTER_MAX: u64 = i64::MAX as u64;

/// The counters of SPEC §1, all non-negative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub on_hand: u64,
    pub reserved: u64,
    pub allocated: u64,
    pub quarantined: u64,
    pub in_transit: u64,
    pub backordered: u64,
    pub safety_stock: u64,
    pub backorder_limit: u64,
}

/// A signed change to each counter. Zero fields are omitted from the event log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    pub on_hand: i64,
    pub reserved: i64,
    pub allocated: i64,
    pub quarantined: i64,
    pub in_transit: i64,
    pub backordered: i64,
    pub safety_stock: i64,
    pub backorder_limit: i64,
}

impl Delta {
    /// `(name, change)` for every non-zero counter, in a stable order.
    pub fn nonzero(&self) -> impl Iterator<Item = (&'static str, i64)> {
        [
            ("on_hand", self.on_hand),
            ("reserved", self.reserved),
            ("allocated", self.allocated),
            ("quarantined", self.quarantined),
            ("in_transit", self.in_transit),
            ("backordered", self.backordered),
            ("safety_stock", self.safety_stock),
            ("backorder_limit", self.backorder_limit),
        ]
        .into_iter()
        .filter(|(_, change)| *change != 0)
    }

    fn plus(self, other: Delta) -> Delta {
        Delta {
            on_hand: self.on_hand.saturating_add(other.on_hand),
            reserved: self.reserved.saturating_add(other.reserved),
            allocated: self.allocated.saturating_add(other.allocated),
            quarantined: self.quarantined.saturating_add(other.quarantined),
            in_transit: self.in_transit.saturating_add(other.in_transit),
            backordered: self.backordered.saturating_add(other.backordered),
            safety_stock: self.safety_stock.saturating_add(other.safety_stock),
            backorder_limit: self.backorder_limit.saturating_add(other.backorder_limit),
        }
    }
}

fn add_signed(value: u64, change: i64) -> Option<u64> {
    let result = value.checked_add_signed(change)?;
    (result <= COUNTER_MAX).then_some(result)
}

impl Counters {
    /// `on_hand - reserved - allocated - quarantined - safety_stock`, saturated to `i64`.
    pub fn available(&self) -> i64 {
        let value = i128::from(self.on_hand)
            - i128::from(self.reserved)
            - i128::from(self.allocated)
            - i128::from(self.quarantined)
            - i128::from(self.safety_stock);
        value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The counters after `delta`, or `None` if any would leave `0..=COUNTER_MAX`.
    pub fn apply(&self, delta: &Delta) -> Option<Counters> {
        Some(Counters {
            on_hand: add_signed(self.on_hand, delta.on_hand)?,
            reserved: add_signed(self.reserved, delta.reserved)?,
            allocated: add_signed(self.allocated, delta.allocated)?,
            quarantined: add_signed(self.quarantined, delta.quarantined)?,
            in_transit: add_signed(self.in_transit, delta.in_transit)?,
            backordered: add_signed(self.backordered, delta.backordered)?,
            safety_stock: add_signed(self.safety_stock, delta.safety_stock)?,
            backorder_limit: add_signed(self.backorder_limit, delta.backorder_limit)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReason {
    Damage,
    Shrink,
    Found,
    Correction,
    ShortPick,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineAction {
    Hold,
    Release,
    Scrap,
}

/// How a reservation line takes stock at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldMode {
    /// The whole quantity or nothing; with `allow_backorder`, the part beyond
    /// the channel's view may go to `backordered` within `backorder_limit`.
    Whole { allow_backorder: bool },
    /// As much as the channel's view allows, at least one unit (split sourcing).
    UpTo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Hold {
        reservation_id: ReservationId,
        channel: ChannelId,
        qty: Qty,
        mode: HoldMode,
    },
    /// Drop a reservation's hold; a missing hold is a no-op (already released).
    Release {
        reservation_id: ReservationId,
        expired: bool,
    },
    Allocate {
        reservation_id: ReservationId,
    },
    /// Ship `qty` of the allocated units (all when `None`); the rest is released.
    Ship {
        reservation_id: ReservationId,
        qty: Option<Qty>,
    },
    Receipt {
        qty: Qty,
    },
    /// `delta` is non-zero with `|delta| <= QTY_MAX` (checked at the edge).
    Adjust {
        delta: i64,
        reason: AdjustReason,
    },
    Count {
        counted: u64,
        expected_version: Option<u64>,
    },
    /// Reconciliation: set `on_hand` to a system of record's figure, as a
    /// `correction` adjustment of the difference (none when equal). The delta is
    /// taken here, against the position's current state, and refused when the
    /// position changed since `expected_version`.
    Correct {
        on_hand: u64,
        expected_version: Option<u64>,
    },
    Return {
        qty: Qty,
        restockable: bool,
    },
    Quarantine {
        qty: Qty,
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
        channel: ChannelId,
        qty: u64,
    },
    /// Source of a transfer: hold `qty` of the uncommitted available under
    /// `transfer` (a [`transfer_hold_id`]), whole or not at all.
    TransferHold {
        transfer: ReservationId,
        qty: Qty,
    },
    /// Source: drop the transfer's hold (cancel); a missing hold is a no-op.
    TransferRelease {
        transfer: ReservationId,
    },
    /// Source: `qty` of the transfer's hold leaves on hand; the rest of the
    /// hold is released (a short shipment).
    TransferShip {
        transfer: ReservationId,
        qty: Qty,
    },
    /// Destination: `qty` shipped towards here is in transit.
    TransferInbound {
        transfer: ReservationId,
        qty: Qty,
    },
    /// Destination: `received` arrives on hand and the transfer's `shipped`
    /// units leave `in_transit` (as far as it has them), whatever arrived.
    /// Fills backorders like a receipt.
    TransferReceive {
        transfer: ReservationId,
        received: Qty,
        shipped: u64,
    },
}

/// Transfer holds sit among reservation holds under this prefix: reservation
/// ids are `[A-Za-z0-9._:-]`, so none contains `/` and the two never collide.
pub const TRANSFER_HOLD_PREFIX: &str = "transfer/";

/// The channel a transfer hold is recorded under. No configured channel can
/// have this id (`/` again), so it has no commitment: a transfer takes only
/// uncommitted available, never units ring-fenced for a channel.
pub const TRANSFER_CHANNEL: &str = "transfer/";

/// The hold (and event) id of transfer `transfer_id`.
pub fn transfer_hold_id(transfer_id: &str) -> ReservationId {
    ReservationId::from(format!("{TRANSFER_HOLD_PREFIX}{transfer_id}"))
}

/// The transfer id of a hold id made by [`transfer_hold_id`].
pub fn transfer_of(hold_id: &str) -> Option<&str> {
    hold_id.strip_prefix(TRANSFER_HOLD_PREFIX)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Received,
    Adjusted(AdjustReason),
    Counted,
    Returned { restockable: bool },
    Quarantined(QuarantineAction),
    InTransit,
    Reserved,
    BackorderFilled,
    Released,
    Expired,
    Allocated,
    Shipped,
    SettingsChanged,
    CommitmentSet,
    Oversold,
    // Transfers (new kinds go last: the journal stores kinds by index). At
    // the source: held (`reserved` up), released (cancelled, or the unshipped
    // rest), shipped (off `on_hand` and the hold). At the destination:
    // inbound (`in_transit` up), received (on hand, out of `in_transit`).
    TransferHeld,
    TransferReleased,
    TransferShipped,
    TransferInbound,
    TransferReceived,
}

impl EventKind {
    /// The event-log type name (SPEC §2 "Subscribers").
    pub fn type_name(self) -> &'static str {
        match self {
            EventKind::Received => "inventory.received",
            EventKind::Adjusted(_) => "inventory.adjusted",
            EventKind::Counted => "inventory.counted",
            EventKind::Returned { .. } => "inventory.returned",
            EventKind::Quarantined(_) => "inventory.quarantined",
            EventKind::InTransit => "inventory.in_transit",
            EventKind::Reserved => "inventory.reserved",
            EventKind::BackorderFilled => "inventory.backorder_filled",
            EventKind::Released => "inventory.released",
            EventKind::Expired => "reservation.expired",
            EventKind::Allocated => "inventory.allocated",
            EventKind::Shipped => "inventory.shipped",
            EventKind::SettingsChanged => "position.settings_changed",
            EventKind::CommitmentSet => "position.commitment_set",
            EventKind::Oversold => "inventory.oversold",
            EventKind::TransferHeld => "transfer.held",
            EventKind::TransferReleased => "transfer.released",
            // Both legs of a shipment: on_hand down at the source, in_transit
            // up at the destination.
            EventKind::TransferShipped | EventKind::TransferInbound => "transfer.shipped",
            EventKind::TransferReceived => "transfer.received",
        }
    }

    /// Whether the event changes the hold named by its `reservation_id`. The
    /// destination's transfer events name the transfer but hold nothing.
    fn changes_hold(self) -> bool {
        !matches!(
            self,
            EventKind::TransferInbound | EventKind::TransferReceived
        )
    }

    /// Whether the event creates the hold it names when there is none yet.
    fn creates_hold(self) -> bool {
        matches!(self, EventKind::Reserved | EventKind::TransferHeld)
    }
}

/// One applied change to one position. Events are what the journal stores and
/// what replay evolves, so everything `evolve` needs is in here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub reservation_id: Option<ReservationId>,
    pub channel: Option<ChannelId>,
    pub delta: Delta,
    /// Change to the channel's used commitment (and to the hold's share of it).
    pub commitment_used: i64,
    /// `CommitmentSet` only: the channel's new ring-fenced quantity.
    pub commitment_qty: Option<u64>,
}

impl Event {
    fn plain(kind: EventKind, delta: Delta) -> Event {
        Event {
            kind,
            reservation_id: None,
            channel: None,
            delta,
            commitment_used: 0,
            commitment_qty: None,
        }
    }

    fn for_hold(
        kind: EventKind,
        reservation_id: &ReservationId,
        hold: &Hold,
        delta: Delta,
    ) -> Event {
        Event {
            kind,
            reservation_id: Some(reservation_id.clone()),
            channel: Some(hold.channel.clone()),
            delta,
            commitment_used: 0,
            commitment_qty: None,
        }
    }
}

/// Units a channel has ring-fenced at this position, and how many of them its
/// reservations have used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commitment {
    pub channel: ChannelId,
    pub qty: u64,
    pub used: u64,
}

impl Commitment {
    pub fn remaining(&self) -> u64 {
        self.qty.saturating_sub(self.used)
    }
}

/// What one reservation holds at this position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub channel: ChannelId,
    pub reserved: u64,
    pub backordered: u64,
    pub allocated: u64,
    /// Units of `reserved + allocated` taken from the channel's commitment.
    pub from_commitment: u64,
}

impl Hold {
    fn is_empty(&self) -> bool {
        self.reserved == 0 && self.backordered == 0 && self.allocated == 0
    }
}

/// Kept small: millions of positions are resident. The maps and vectors
/// below allocate nothing while empty, which they are for most positions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub counters: Counters,
    /// Increments by one on every event.
    pub version: u64,
    pub commitments: Vec<Commitment>,
    /// Reservations' holds, and transfers' under [`transfer_hold_id`].
    pub holds: BTreeMap<ReservationId, Hold>,
    /// Reservations with backordered units here, oldest first (may hold ids
    /// whose backorder is gone; they are skipped and pruned).
    pub backorder_queue: Vec<ReservationId>,
}

/// An event that cannot be applied: only possible with a corrupt journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("event {kind:?} cannot apply at version {version}: {why}")]
pub struct EvolveError {
    pub kind: EventKind,
    pub version: u64,
    pub why: &'static str,
}

impl Position {
    pub fn available(&self) -> i64 {
        self.counters.available()
    }

    pub fn is_oversold(&self) -> bool {
        self.available() < 0
    }

    fn commitment(&self, channel: &str) -> Option<&Commitment> {
        self.commitments.iter().find(|c| &*c.channel == channel)
    }

    fn remaining_commitments(&self) -> i64 {
        let total: u64 = self
            .commitments
            .iter()
            .map(Commitment::remaining)
            .fold(0, u64::saturating_add);
        i64::try_from(total).unwrap_or(i64::MAX)
    }

    /// What `channel` may sell here: its remaining commitment plus the
    /// uncommitted available (may be negative).
    pub fn channel_view(&self, channel: &str) -> i64 {
        let own = self.commitment(channel).map_or(0, Commitment::remaining);
        channel_view(self.available(), own, self.remaining_commitments())
    }

    /// Checks `command` and returns the events it causes, in order. An empty
    /// list is a no-op (the version does not move).
    pub fn decide(&self, command: &Command) -> Result<Vec<Event>, Reject> {
        let mut events = match command {
            Command::Hold {
                reservation_id,
                channel,
                qty,
                mode,
            } => vec![self.decide_hold(reservation_id, channel, qty.get(), *mode)?],
            Command::Release {
                reservation_id,
                expired,
            } => self.decide_release(reservation_id, *expired),
            Command::Allocate { reservation_id } => self.decide_allocate(reservation_id)?,
            Command::Ship {
                reservation_id,
                qty,
            } => self.decide_ship(reservation_id, *qty)?,
            Command::Receipt { qty } => self.decide_receipt(qty.get()),
            Command::Adjust { delta, reason } => {
                check_delta(*delta)?;
                vec![self.on_hand_change(EventKind::Adjusted(*reason), *delta)?]
            }
            Command::Correct {
                on_hand,
                expected_version,
            } => match self.delta_to("on_hand", *on_hand, *expected_version)? {
                0 => Vec::new(),
                delta => {
                    vec![self.on_hand_change(EventKind::Adjusted(AdjustReason::Correction), delta)?]
                }
            },
            Command::Count {
                counted,
                expected_version,
            } => {
                let delta = self.delta_to("counted", *counted, *expected_version)?;
                vec![self.on_hand_change(EventKind::Counted, delta)?]
            }
            Command::Return { qty, restockable } => {
                let qty = qty.get() as i64;
                let delta = Delta {
                    on_hand: qty,
                    quarantined: if *restockable { 0 } else { qty },
                    ..Delta::default()
                };
                vec![Event::plain(
                    EventKind::Returned {
                        restockable: *restockable,
                    },
                    delta,
                )]
            }
            Command::Quarantine { qty, action } => {
                vec![self.decide_quarantine(qty.get(), *action)?]
            }
            Command::InTransit { delta } => {
                check_delta(*delta)?;
                if add_signed(self.counters.in_transit, *delta).is_none() {
                    return Err(Reject::InvalidState(format!(
                        "in_transit is {} and cannot change by {delta}",
                        self.counters.in_transit
                    )));
                }
                let delta = Delta {
                    in_transit: *delta,
                    ..Delta::default()
                };
                vec![Event::plain(EventKind::InTransit, delta)]
            }
            Command::Settings {
                safety_stock,
                backorder_limit,
            } => self.decide_settings(*safety_stock, *backorder_limit)?,
            Command::SetCommitment { channel, qty } => self.decide_commitment(channel, *qty)?,
            Command::TransferHold { transfer, qty } => {
                vec![self.decide_transfer_hold(transfer, qty.get())?]
            }
            Command::TransferRelease { transfer } => self.decide_transfer_release(transfer),
            Command::TransferShip { transfer, qty } => {
                self.decide_transfer_ship(transfer, qty.get())?
            }
            Command::TransferInbound { transfer, qty } => vec![Event {
                kind: EventKind::TransferInbound,
                reservation_id: Some(transfer.clone()),
                channel: None,
                delta: Delta {
                    in_transit: qty.get() as i64,
                    ..Delta::default()
                },
                commitment_used: 0,
                commitment_qty: None,
            }],
            Command::TransferReceive {
                transfer,
                received,
                shipped,
            } => {
                let from_transit = (*shipped).min(self.counters.in_transit);
                let mut events = self.decide_receipt(received.get());
                let arrival = &mut events[0];
                arrival.kind = EventKind::TransferReceived;
                arrival.reservation_id = Some(transfer.clone());
                arrival.delta.in_transit = -(from_transit as i64);
                events
            }
        };
        self.check_totals(&mut events)?;
        Ok(events)
    }

    /// Rejects a command whose events would overflow a counter, and appends an
    /// `Oversold` event when it pushes `available` below zero.
    fn check_totals(&self, events: &mut Vec<Event>) -> Result<(), Reject> {
        let total = events
            .iter()
            .fold(Delta::default(), |sum, event| sum.plus(event.delta));
        let after = self.counters.apply(&total).ok_or_else(|| {
            Reject::QuantityOutOfRange(format!("a counter would leave 0..={COUNTER_MAX}"))
        })?;
        let before = self.available();
        if after.available() < 0 && after.available() < before {
            events.push(Event::plain(EventKind::Oversold, Delta::default()));
        }
        Ok(())
    }

    fn decide_hold(
        &self,
        reservation_id: &ReservationId,
        channel: &ChannelId,
        qty: u64,
        mode: HoldMode,
    ) -> Result<Event, Reject> {
        if let Some(existing) = self.holds.get(reservation_id) {
            if existing.channel != *channel {
                return Err(Reject::InvalidState(format!(
                    "reservation {reservation_id} belongs to channel {}",
                    existing.channel
                )));
            }
        }
        let view = self.channel_view(channel);
        let fillable = u64::try_from(view.max(0)).unwrap_or(0);
        let (reserved, backordered) = match mode {
            HoldMode::Whole { .. } if qty <= fillable => (qty, 0),
            HoldMode::Whole {
                allow_backorder: true,
            } if self.counters.backordered.saturating_add(qty - fillable)
                <= self.counters.backorder_limit =>
            {
                (fillable, qty - fillable)
            }
            HoldMode::UpTo if fillable > 0 => (qty.min(fillable), 0),
            _ => {
                return Err(Reject::Insufficient {
                    requested: qty,
                    available: view.max(0),
                })
            }
        };
        let own_remaining = self.commitment(channel).map_or(0, Commitment::remaining);
        let from_commitment = reserved.min(own_remaining);
        Ok(Event {
            kind: EventKind::Reserved,
            reservation_id: Some(reservation_id.clone()),
            channel: Some(channel.clone()),
            delta: Delta {
                reserved: reserved as i64,
                backordered: backordered as i64,
                ..Delta::default()
            },
            commitment_used: from_commitment as i64,
            commitment_qty: None,
        })
    }

    fn decide_release(&self, reservation_id: &ReservationId, expired: bool) -> Vec<Event> {
        let Some(hold) = self.holds.get(reservation_id) else {
            return Vec::new();
        };
        let kind = if expired {
            EventKind::Expired
        } else {
            EventKind::Released
        };
        let mut event = Event::for_hold(
            kind,
            reservation_id,
            hold,
            Delta {
                reserved: -(hold.reserved as i64),
                allocated: -(hold.allocated as i64),
                backordered: -(hold.backordered as i64),
                ..Delta::default()
            },
        );
        event.commitment_used = -(hold.from_commitment as i64);
        vec![event]
    }

    fn hold(&self, reservation_id: &ReservationId) -> Result<&Hold, Reject> {
        self.holds
            .get(reservation_id)
            .ok_or_else(|| match transfer_of(reservation_id) {
                Some(transfer) => Reject::NoHold(format!("transfer {transfer} holds nothing here")),
                None => Reject::NoHold(format!("reservation {reservation_id} holds nothing here")),
            })
    }

    fn decide_allocate(&self, reservation_id: &ReservationId) -> Result<Vec<Event>, Reject> {
        let hold = self.hold(reservation_id)?;
        if hold.backordered > 0 {
            return Err(Reject::InvalidState(format!(
                "{} units are still backordered",
                hold.backordered
            )));
        }
        if hold.reserved == 0 {
            return Ok(Vec::new());
        }
        let units = hold.reserved as i64;
        Ok(vec![Event::for_hold(
            EventKind::Allocated,
            reservation_id,
            hold,
            Delta {
                reserved: -units,
                allocated: units,
                ..Delta::default()
            },
        )])
    }

    fn decide_ship(
        &self,
        reservation_id: &ReservationId,
        qty: Option<Qty>,
    ) -> Result<Vec<Event>, Reject> {
        let hold = self.hold(reservation_id)?;
        if hold.reserved > 0 || hold.backordered > 0 {
            return Err(Reject::InvalidState(
                "only allocated units can ship".to_string(),
            ));
        }
        let shipped = qty.map_or(hold.allocated, Qty::get);
        if shipped > hold.allocated {
            return Err(Reject::QuantityOutOfRange(format!(
                "cannot ship {shipped}: {} allocated",
                hold.allocated
            )));
        }
        if shipped > self.counters.on_hand {
            return Err(Reject::InvalidState(format!(
                "cannot ship {shipped}: {} on hand",
                self.counters.on_hand
            )));
        }
        let mut events = Vec::with_capacity(2);
        if shipped > 0 {
            let on_hand_after = self.counters.on_hand - shipped;
            let quarantined_cut = self.counters.quarantined.saturating_sub(on_hand_after);
            events.push(Event::for_hold(
                EventKind::Shipped,
                reservation_id,
                hold,
                Delta {
                    on_hand: -(shipped as i64),
                    allocated: -(shipped as i64),
                    quarantined: -(quarantined_cut as i64),
                    ..Delta::default()
                },
            ));
        }
        let rest = hold.allocated - shipped;
        if rest > 0 {
            let mut event = Event::for_hold(
                EventKind::Released,
                reservation_id,
                hold,
                Delta {
                    allocated: -(rest as i64),
                    ..Delta::default()
                },
            );
            event.commitment_used = -(hold.from_commitment.saturating_sub(shipped) as i64);
            events.push(event);
        }
        Ok(events)
    }

    fn decide_transfer_hold(&self, transfer: &ReservationId, qty: u64) -> Result<Event, Reject> {
        if self.holds.contains_key(transfer) {
            return Err(Reject::InvalidState(format!(
                "transfer {} already holds stock here",
                transfer_of(transfer).unwrap_or(transfer)
            )));
        }
        // What no channel has ring-fenced: the view of a channel without a
        // commitment. `qty <= QTY_MAX` (a `Qty`), so it fits an i64.
        let uncommitted = self.channel_view(TRANSFER_CHANNEL);
        if qty as i64 > uncommitted {
            return Err(Reject::Insufficient {
                requested: qty,
                available: uncommitted.max(0),
            });
        }
        Ok(Event {
            kind: EventKind::TransferHeld,
            reservation_id: Some(transfer.clone()),
            channel: Some(ChannelId::from(TRANSFER_CHANNEL)),
            delta: Delta {
                reserved: qty as i64,
                ..Delta::default()
            },
            commitment_used: 0,
            commitment_qty: None,
        })
    }

    fn decide_transfer_release(&self, transfer: &ReservationId) -> Vec<Event> {
        let Some(hold) = self.holds.get(transfer) else {
            return Vec::new();
        };
        vec![Event::for_hold(
            EventKind::TransferReleased,
            transfer,
            hold,
            Delta {
                reserved: -(hold.reserved as i64),
                ..Delta::default()
            },
        )]
    }

    fn decide_transfer_ship(
        &self,
        transfer: &ReservationId,
        shipped: u64,
    ) -> Result<Vec<Event>, Reject> {
        let hold = self.hold(transfer)?;
        if shipped > hold.reserved {
            return Err(Reject::QuantityOutOfRange(format!(
                "cannot ship {shipped}: {} held",
                hold.reserved
            )));
        }
        if shipped > self.counters.on_hand {
            return Err(Reject::InvalidState(format!(
                "cannot ship {shipped}: {} on hand",
                self.counters.on_hand
            )));
        }
        let on_hand_after = self.counters.on_hand - shipped;
        let quarantined_cut = self.counters.quarantined.saturating_sub(on_hand_after);
        let mut events = vec![Event::for_hold(
            EventKind::TransferShipped,
            transfer,
            hold,
            Delta {
                on_hand: -(shipped as i64),
                reserved: -(shipped as i64),
                quarantined: -(quarantined_cut as i64),
                ..Delta::default()
            },
        )];
        let rest = hold.reserved - shipped;
        if rest > 0 {
            events.push(Event::for_hold(
                EventKind::TransferReleased,
                transfer,
                hold,
                Delta {
                    reserved: -(rest as i64),
                    ..Delta::default()
                },
            ));
        }
        Ok(events)
    }

    fn decide_receipt(&self, qty: u64) -> Vec<Event> {
        let mut events = vec![Event::plain(
            EventKind::Received,
            Delta {
                on_hand: qty as i64,
                ..Delta::default()
            },
        )];
        let available_after = self.available().saturating_add(qty as i64);
        let mut budget = qty.min(u64::try_from(available_after.max(0)).unwrap_or(0));
        let mut seen: Vec<&ReservationId> = Vec::new();
        // Filled units consume the channel's commitment first, like any hold.
        let mut commitment_left: Vec<(&str, u64)> = self
            .commitments
            .iter()
            .map(|c| (&*c.channel, c.remaining()))
            .collect();
        for reservation_id in &self.backorder_queue {
            if budget == 0 {
                break;
            }
            if seen.contains(&reservation_id) {
                continue;
            }
            seen.push(reservation_id);
            let Some(hold) = self.holds.get(reservation_id) else {
                continue;
            };
            let filled = hold.backordered.min(budget);
            if filled == 0 {
                continue;
            }
            budget -= filled;
            let mut event = Event::for_hold(
                EventKind::BackorderFilled,
                reservation_id,
                hold,
                Delta {
                    backordered: -(filled as i64),
                    reserved: filled as i64,
                    ..Delta::default()
                },
            );
            if let Some((_, left)) = commitment_left
                .iter_mut()
                .find(|(channel, _)| *channel == &*hold.channel)
            {
                let used = filled.min(*left);
                *left -= used;
                event.commitment_used = used as i64;
            }
            events.push(event);
        }
        events
    }

    /// The change that sets `on_hand` to `target` (a count or a correction),
    /// refused when the position moved past `expected_version`.
    fn delta_to(
        &self,
        what: &str,
        target: u64,
        expected_version: Option<u64>,
    ) -> Result<i64, Reject> {
        if let Some(expected) = expected_version {
            if expected != self.version {
                return Err(Reject::VersionConflict {
                    expected,
                    actual: self.version,
                });
            }
        }
        if target > QTY_MAX {
            return Err(Reject::QuantityOutOfRange(format!(
                "{what} must be at most {QTY_MAX}"
            )));
        }
        Ok(target as i64 - self.counters.on_hand as i64)
    }

    /// A change of `on_hand` by the physical world: applied even below the
    /// holds, never below zero; `quarantined` is cut so it never exceeds `on_hand`.
    fn on_hand_change(&self, kind: EventKind, delta: i64) -> Result<Event, Reject> {
        let Some(on_hand_after) = add_signed(self.counters.on_hand, delta) else {
            return Err(Reject::InvalidState(format!(
                "on_hand is {} and cannot change by {delta}",
                self.counters.on_hand
            )));
        };
        let quarantined_cut = self.counters.quarantined.saturating_sub(on_hand_after);
        Ok(Event::plain(
            kind,
            Delta {
                on_hand: delta,
                quarantined: -(quarantined_cut as i64),
                ..Delta::default()
            },
        ))
    }

    fn decide_quarantine(&self, qty: u64, action: QuarantineAction) -> Result<Event, Reject> {
        let counters = &self.counters;
        let (limit, delta) = match action {
            QuarantineAction::Hold => (
                counters.on_hand - counters.quarantined.min(counters.on_hand),
                Delta {
                    quarantined: qty as i64,
                    ..Delta::default()
                },
            ),
            QuarantineAction::Release => (
                counters.quarantined,
                Delta {
                    quarantined: -(qty as i64),
                    ..Delta::default()
                },
            ),
            QuarantineAction::Scrap => (
                counters.quarantined,
                Delta {
                    quarantined: -(qty as i64),
                    on_hand: -(qty as i64),
                    ..Delta::default()
                },
            ),
        };
        if qty > limit {
            return Err(Reject::InvalidState(format!(
                "quarantine {action:?} of {qty}: only {limit} units qualify"
            )));
        }
        Ok(Event::plain(EventKind::Quarantined(action), delta))
    }

    fn decide_settings(
        &self,
        safety_stock: Option<u64>,
        backorder_limit: Option<u64>,
    ) -> Result<Vec<Event>, Reject> {
        let change = |new: Option<u64>, old: u64| -> Result<i64, Reject> {
            match new {
                None => Ok(0),
                Some(value) if value > QTY_MAX => Err(Reject::QuantityOutOfRange(format!(
                    "settings must be at most {QTY_MAX}"
                ))),
                Some(value) => Ok(value as i64 - old as i64),
            }
        };
        let delta = Delta {
            safety_stock: change(safety_stock, self.counters.safety_stock)?,
            backorder_limit: change(backorder_limit, self.counters.backorder_limit)?,
            ..Delta::default()
        };
        if delta == Delta::default() {
            return Ok(Vec::new());
        }
        Ok(vec![Event::plain(EventKind::SettingsChanged, delta)])
    }

    fn decide_commitment(&self, channel: &ChannelId, qty: u64) -> Result<Vec<Event>, Reject> {
        if qty > QTY_MAX {
            return Err(Reject::QuantityOutOfRange(format!(
                "commitments must be at most {QTY_MAX}"
            )));
        }
        if self.commitment(channel).map_or(0, |c| c.qty) == qty {
            return Ok(Vec::new());
        }
        Ok(vec![Event {
            kind: EventKind::CommitmentSet,
            reservation_id: None,
            channel: Some(channel.clone()),
            delta: Delta::default(),
            commitment_used: 0,
            commitment_qty: Some(qty),
        }])
    }

    /// Applies one event. Errors only on an event that this position could
    /// not have produced (a corrupt journal), leaving the state untouched.
    pub fn evolve(&mut self, event: &Event) -> Result<(), EvolveError> {
        let version = self.version;
        let fail = |why| EvolveError {
            kind: event.kind,
            version,
            why,
        };
        let counters = self
            .counters
            .apply(&event.delta)
            .ok_or_else(|| fail("counter out of range"))?;
        // Cheap invariants, checked in release too, before anything changes.
        if counters.quarantined > counters.on_hand {
            return Err(fail("invariant: quarantined above on hand"));
        }
        if let Some(reservation_id) = event
            .reservation_id
            .as_ref()
            .filter(|_| event.kind.changes_hold())
        {
            self.evolve_hold(reservation_id, event, &counters)
                .map_err(fail)?;
        } else if event.kind == EventKind::CommitmentSet {
            let channel = event.channel.clone().ok_or_else(|| fail("no channel"))?;
            let qty = event.commitment_qty.ok_or_else(|| fail("no quantity"))?;
            match self.commitments.iter_mut().find(|c| c.channel == channel) {
                Some(commitment) => commitment.qty = qty,
                None => self.commitments.push(Commitment {
                    channel,
                    qty,
                    used: 0,
                }),
            }
        }
        self.counters = counters;
        self.version += 1;
        // The whole check is O(holds): debug builds, and positions small enough.
        if cfg!(debug_assertions) && self.holds.len() <= INVARIANT_CHECK_HOLDS_MAX {
            if let Err(why) = self.check_invariants() {
                panic!("position invariant broken by {:?}: {why}", event.kind);
            }
        }
        Ok(())
    }

    fn evolve_hold(
        &mut self,
        reservation_id: &ReservationId,
        event: &Event,
        counters: &Counters,
    ) -> Result<(), &'static str> {
        let delta = &event.delta;
        let channel = event.channel.clone().ok_or("no channel")?;
        let hold = match self.holds.get(reservation_id) {
            Some(hold) => hold.clone(),
            None if event.kind.creates_hold() => Hold {
                channel: channel.clone(),
                reserved: 0,
                backordered: 0,
                allocated: 0,
                from_commitment: 0,
            },
            None => return Err("no hold for reservation"),
        };
        let mut updated = Hold {
            reserved: add_signed(hold.reserved, delta.reserved).ok_or("hold reserved")?,
            allocated: add_signed(hold.allocated, delta.allocated).ok_or("hold allocated")?,
            backordered: add_signed(hold.backordered, delta.backordered)
                .ok_or("hold backordered")?,
            from_commitment: add_signed(hold.from_commitment, event.commitment_used)
                .ok_or("hold commitment")?,
            ..hold
        };
        // One hold never holds more than the position's counters say is held.
        if updated.reserved > counters.reserved
            || updated.allocated > counters.allocated
            || updated.backordered > counters.backordered
        {
            return Err("invariant: a hold above the position's counters");
        }
        if event.kind == EventKind::Shipped {
            // Shipped units consume the commitment for good.
            let shipped = delta.allocated.unsigned_abs();
            updated.from_commitment = updated.from_commitment.saturating_sub(shipped);
        }
        if event.commitment_used != 0 {
            let commitment = self
                .commitments
                .iter_mut()
                .find(|c| c.channel == channel)
                .ok_or("no commitment for channel")?;
            commitment.used =
                add_signed(commitment.used, event.commitment_used).ok_or("commitment used")?;
        }
        if delta.backordered > 0 {
            self.backorder_queue.push(reservation_id.clone());
        }
        if updated.is_empty() {
            self.holds.remove(reservation_id);
        } else {
            self.holds.insert(reservation_id.clone(), updated);
        }
        if delta.backordered < 0 {
            let holds = &self.holds;
            self.backorder_queue
                .retain(|id| holds.get(id).is_some_and(|h| h.backordered > 0));
        }
        Ok(())
    }

    /// The holds add up to the counters. O(holds): for tests and debug builds.
    pub fn check_invariants(&self) -> Result<(), String> {
        let (mut reserved, mut allocated, mut backordered) = (0u64, 0u64, 0u64);
        for hold in self.holds.values() {
            reserved += hold.reserved;
            allocated += hold.allocated;
            backordered += hold.backordered;
            if hold.from_commitment > hold.reserved + hold.allocated {
                return Err(format!("hold uses more commitment than it holds: {hold:?}"));
            }
        }
        let c = &self.counters;
        if (reserved, allocated, backordered) != (c.reserved, c.allocated, c.backordered) {
            return Err(format!(
                "holds sum to reserved={reserved} allocated={allocated} backordered={backordered}, counters are {c:?}"
            ));
        }
        if c.quarantined > c.on_hand {
            return Err(format!(
                "quarantined {} > on_hand {}",
                c.quarantined, c.on_hand
            ));
        }
        Ok(())
    }
}

/// Positions with at most this many holds check every invariant after each
/// event in debug builds (the check walks the holds).
const INVARIANT_CHECK_HOLDS_MAX: usize = 256;

/// SPEC §1: a channel's remaining commitment plus the uncommitted available
/// (`available` minus every channel's remaining commitment). May be negative.
pub fn channel_view(available: i64, own_remaining: u64, all_remaining: i64) -> i64 {
    let own = i64::try_from(own_remaining).unwrap_or(i64::MAX);
    own.saturating_add(available.saturating_sub(all_remaining))
}

fn check_delta(delta: i64) -> Result<(), Reject> {
    if delta == 0 || delta.unsigned_abs() > QTY_MAX {
        return Err(Reject::QuantityOutOfRange(format!(
            "delta must be non-zero and within ±{QTY_MAX}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
