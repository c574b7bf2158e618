use std::sync::Arc;

use super::*;

fn id(s: &str) -> Arc<str> {
    Arc::from(s)
}

fn qty(n: u64) -> Qty {
    Qty::new(n).expect("test quantity in range")
}

/// Decides and evolves, as the actor does.
fn run(position: &mut Position, command: Command) -> Result<Vec<Event>, Reject> {
    let events = position.decide(&command)?;
    for event in &events {
        position.evolve(event).expect("decided events apply");
    }
    position.check_invariants().expect("invariants hold");
    Ok(events)
}

fn hold(reservation: &str, channel: &str, n: u64) -> Command {
    Command::Hold {
        reservation_id: id(reservation),
        channel: id(channel),
        qty: qty(n),
        mode: HoldMode::Whole {
            allow_backorder: true,
        },
    }
}

fn stocked(n: u64) -> Position {
    let mut position = Position::default();
    run(&mut position, Command::Receipt { qty: qty(n) }).expect("receipt");
    position
}

#[test]
fn available_subtracts_every_hold_and_setting() {
    let mut p = stocked(100);
    run(&mut p, hold("r1", "web", 10)).unwrap();
    run(
        &mut p,
        Command::Allocate {
            reservation_id: id("r1"),
        },
    )
    .unwrap();
    run(&mut p, hold("r2", "web", 5)).unwrap();
    run(
        &mut p,
        Command::Quarantine {
            qty: qty(3),
            action: QuarantineAction::Hold,
        },
    )
    .unwrap();
    run(
        &mut p,
        Command::Settings {
            safety_stock: Some(2),
            backorder_limit: None,
        },
    )
    .unwrap();
    assert_eq!(p.available(), 100 - 10 - 5 - 3 - 2);
    assert_eq!(p.version, 6);
}

#[test]
fn hold_beyond_view_is_rejected_and_changes_nothing() {
    let mut p = stocked(5);
    let before = p.clone();
    let err = run(&mut p, hold("r1", "web", 6)).unwrap_err();
    assert_eq!(
        err,
        Reject::Insufficient {
            requested: 6,
            available: 5
        }
    );
    assert_eq!(p, before);
}

#[test]
fn commitments_ring_fence_units_for_one_channel() {
    let mut p = stocked(100);
    run(
        &mut p,
        Command::SetCommitment {
            channel: id("web"),
            qty: 20,
        },
    )
    .unwrap();
    assert_eq!(p.channel_view("web"), 100);
    assert_eq!(p.channel_view("marketplace"), 80);
    run(&mut p, hold("r1", "web", 5)).unwrap();
    assert_eq!(
        (p.channel_view("web"), p.channel_view("marketplace")),
        (95, 80)
    );
    run(&mut p, hold("r2", "marketplace", 10)).unwrap();
    assert_eq!(
        (p.channel_view("web"), p.channel_view("marketplace")),
        (85, 70)
    );
    assert!(run(&mut p, hold("r3", "marketplace", 71)).is_err());
    run(
        &mut p,
        Command::Release {
            reservation_id: id("r1"),
            expired: false,
        },
    )
    .unwrap();
    assert_eq!(p.commitments[0].used, 0);
    assert_eq!(p.channel_view("web"), 90);
}

#[test]
fn negative_adjustment_below_holds_oversells() {
    let mut p = stocked(10);
    run(&mut p, hold("r1", "web", 8)).unwrap();
    let events = run(
        &mut p,
        Command::Adjust {
            delta: -5,
            reason: AdjustReason::Shrink,
        },
    )
    .unwrap();
    assert_eq!(events.last().map(|e| e.kind), Some(EventKind::Oversold));
    assert_eq!(p.available(), -3);
    assert!(p.is_oversold());
    assert!(run(
        &mut p,
        Command::Adjust {
            delta: -6,
            reason: AdjustReason::Damage
        }
    )
    .is_err());
}

#[test]
fn backorders_take_the_limit_then_receipts_fill_them_first() {
    let mut p = stocked(3);
    run(
        &mut p,
        Command::Settings {
            safety_stock: None,
            backorder_limit: Some(5),
        },
    )
    .unwrap();
    let events = run(&mut p, hold("r1", "web", 7)).unwrap();
    assert_eq!(events[0].delta.reserved, 3);
    assert_eq!(events[0].delta.backordered, 4);
    assert!(!p.is_oversold());
    assert!(
        run(&mut p, hold("r2", "web", 2)).is_err(),
        "only 1 backorder unit left"
    );
    let events = run(&mut p, Command::Receipt { qty: qty(10) }).unwrap();
    assert_eq!(events[1].kind, EventKind::BackorderFilled);
    assert_eq!(p.counters.backordered, 0);
    assert_eq!(p.counters.reserved, 7);
    assert_eq!(p.available(), 6);
    assert!(p.backorder_queue.is_empty());
}

#[test]
fn release_twice_is_a_noop_with_the_same_version() {
    let mut p = stocked(10);
    run(&mut p, hold("r1", "web", 4)).unwrap();
    run(
        &mut p,
        Command::Release {
            reservation_id: id("r1"),
            expired: true,
        },
    )
    .unwrap();
    let version = p.version;
    assert!(run(
        &mut p,
        Command::Release {
            reservation_id: id("r1"),
            expired: false
        }
    )
    .unwrap()
    .is_empty());
    assert_eq!(p.version, version);
}

#[test]
fn short_shipment_releases_the_rest() {
    let mut p = stocked(10);
    run(&mut p, hold("r1", "web", 4)).unwrap();
    assert!(run(
        &mut p,
        Command::Ship {
            reservation_id: id("r1"),
            qty: None
        }
    )
    .is_err());
    run(
        &mut p,
        Command::Allocate {
            reservation_id: id("r1"),
        },
    )
    .unwrap();
    let events = run(
        &mut p,
        Command::Ship {
            reservation_id: id("r1"),
            qty: Some(qty(3)),
        },
    )
    .unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Shipped, EventKind::Released]
    );
    assert_eq!(p.counters.on_hand, 7);
    assert_eq!(p.counters.allocated, 0);
    assert_eq!(p.available(), 7);
    assert!(p.holds.is_empty());
}

#[test]
fn count_checks_the_expected_version() {
    let mut p = stocked(10);
    let err = run(
        &mut p,
        Command::Count {
            counted: 4,
            expected_version: Some(0),
        },
    )
    .unwrap_err();
    assert_eq!(
        err,
        Reject::VersionConflict {
            expected: 0,
            actual: 1
        }
    );
    run(
        &mut p,
        Command::Count {
            counted: 4,
            expected_version: Some(1),
        },
    )
    .unwrap();
    assert_eq!(p.counters.on_hand, 4);
}

#[test]
fn returns_and_quarantine_follow_the_spec() {
    let mut p = stocked(10);
    run(
        &mut p,
        Command::Return {
            qty: qty(2),
            restockable: false,
        },
    )
    .unwrap();
    assert_eq!((p.counters.on_hand, p.counters.quarantined), (12, 2));
    run(
        &mut p,
        Command::Quarantine {
            qty: qty(1),
            action: QuarantineAction::Release,
        },
    )
    .unwrap();
    run(
        &mut p,
        Command::Quarantine {
            qty: qty(1),
            action: QuarantineAction::Scrap,
        },
    )
    .unwrap();
    assert_eq!((p.counters.on_hand, p.counters.quarantined), (11, 0));
    assert!(run(
        &mut p,
        Command::Quarantine {
            qty: qty(1),
            action: QuarantineAction::Scrap
        }
    )
    .is_err());
    assert!(run(
        &mut p,
        Command::Quarantine {
            qty: qty(12),
            action: QuarantineAction::Hold
        }
    )
    .is_err());
}

#[test]
fn counters_never_wrap() {
    let mut p = Position::default();
    p.counters.on_hand = COUNTER_MAX - 1;
    let err = p.decide(&Command::Receipt { qty: qty(2) }).unwrap_err();
    assert!(matches!(err, Reject::QuantityOutOfRange(_)));
    assert!(p
        .decide(&Command::Adjust {
            delta: 0,
            reason: AdjustReason::Found
        })
        .is_err());
    assert!(p.decide(&Command::InTransit { delta: -1 }).is_err());
}

#[test]
fn split_mode_takes_what_the_view_allows() {
    let mut p = stocked(3);
    let events = run(
        &mut p,
        Command::Hold {
            reservation_id: id("r1"),
            channel: id("web"),
            qty: qty(5),
            mode: HoldMode::UpTo,
        },
    )
    .unwrap();
    assert_eq!(events[0].delta.reserved, 3);
    let err = p
        .decide(&Command::Hold {
            reservation_id: id("r2"),
            channel: id("web"),
            qty: qty(1),
            mode: HoldMode::UpTo,
        })
        .unwrap_err();
    assert_eq!(
        err,
        Reject::Insufficient {
            requested: 1,
            available: 0
        }
    );
}

fn transfer_hold(transfer: &str, n: u64) -> Command {
    Command::TransferHold {
        transfer: transfer_hold_id(transfer),
        qty: qty(n),
    }
}

#[test]
fn a_transfer_hold_is_a_hold_channels_cannot_sell_and_takes_no_commitment() {
    let mut p = stocked(10);
    run(
        &mut p,
        Command::SetCommitment {
            channel: id("web"),
            qty: 4,
        },
    )
    .unwrap();
    // Six units are uncommitted: a transfer may take those, not web's four.
    let refused = p.decide(&transfer_hold("t1", 7)).unwrap_err();
    assert_eq!(
        refused,
        Reject::Insufficient {
            requested: 7,
            available: 6
        }
    );
    let events = run(&mut p, transfer_hold("t1", 6)).unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::TransferHeld);
    assert_eq!(events[0].kind.type_name(), "transfer.held");
    assert_eq!((p.counters.reserved, p.available()), (6, 4));
    assert_eq!(
        (p.channel_view("web"), p.channel_view("marketplace")),
        (4, 0)
    );
    assert_eq!(p.commitments[0].used, 0);
    let held = &p.holds[&transfer_hold_id("t1")];
    assert_eq!((held.reserved, held.from_commitment), (6, 0));
    assert_eq!(&*held.channel, TRANSFER_CHANNEL);
    // One hold per transfer.
    assert!(matches!(
        p.decide(&transfer_hold("t1", 1)),
        Err(Reject::InvalidState(_))
    ));
    // A reservation of the same name is another hold.
    run(&mut p, hold("t1", "web", 4)).unwrap();
    assert_eq!(p.holds.len(), 2);
}

#[test]
fn cancelling_a_transfer_releases_its_hold_once() {
    let mut p = stocked(10);
    run(&mut p, transfer_hold("t1", 4)).unwrap();
    let release = Command::TransferRelease {
        transfer: transfer_hold_id("t1"),
    };
    let events = run(&mut p, release.clone()).unwrap();
    assert_eq!(events[0].kind, EventKind::TransferReleased);
    assert_eq!((p.counters.reserved, p.available()), (0, 10));
    let version = p.version;
    assert!(run(&mut p, release).unwrap().is_empty());
    assert_eq!(p.version, version);
}

#[test]
fn a_short_transfer_shipment_releases_the_rest_of_the_hold() {
    let mut p = stocked(10);
    run(&mut p, transfer_hold("t1", 5)).unwrap();
    let ship = |n| Command::TransferShip {
        transfer: transfer_hold_id("t1"),
        qty: qty(n),
    };
    assert!(matches!(
        p.decide(&ship(6)),
        Err(Reject::QuantityOutOfRange(_))
    ));
    let events = run(&mut p, ship(3)).unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::TransferShipped, EventKind::TransferReleased]
    );
    assert_eq!(events[0].kind.type_name(), "transfer.shipped");
    assert_eq!(
        (events[0].delta.on_hand, events[0].delta.reserved),
        (-3, -3)
    );
    assert_eq!(events[1].delta.reserved, -2);
    assert_eq!(
        (p.counters.on_hand, p.counters.reserved, p.available()),
        (7, 0, 7)
    );
    assert!(p.holds.is_empty());
    assert!(matches!(p.decide(&ship(1)), Err(Reject::NoHold(_))));
}

#[test]
fn a_transfer_cannot_ship_more_than_is_on_hand() {
    let mut p = stocked(5);
    run(&mut p, transfer_hold("t1", 5)).unwrap();
    run(
        &mut p,
        Command::Adjust {
            delta: -3,
            reason: AdjustReason::Damage,
        },
    )
    .unwrap();
    let refused = p
        .decide(&Command::TransferShip {
            transfer: transfer_hold_id("t1"),
            qty: qty(5),
        })
        .unwrap_err();
    assert!(matches!(refused, Reject::InvalidState(_)), "{refused:?}");
}

#[test]
fn the_destination_gets_in_transit_then_on_hand_and_receipts_fill_backorders() {
    let mut p = Position::default();
    run(
        &mut p,
        Command::Settings {
            safety_stock: None,
            backorder_limit: Some(3),
        },
    )
    .unwrap();
    run(&mut p, hold("r1", "web", 2)).unwrap();
    assert_eq!(p.counters.backordered, 2);
    let events = run(
        &mut p,
        Command::TransferInbound {
            transfer: transfer_hold_id("t1"),
            qty: qty(5),
        },
    )
    .unwrap();
    assert_eq!(events[0].kind.type_name(), "transfer.shipped");
    assert_eq!(p.counters.in_transit, 5);
    assert_eq!(
        p.holds.len(),
        1,
        "the destination holds nothing for the transfer"
    );
    // 4 of the 5 shipped arrive: all 5 leave in_transit.
    let events = run(
        &mut p,
        Command::TransferReceive {
            transfer: transfer_hold_id("t1"),
            received: qty(4),
            shipped: 5,
        },
    )
    .unwrap();
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [EventKind::TransferReceived, EventKind::BackorderFilled]
    );
    assert_eq!(events[0].kind.type_name(), "transfer.received");
    assert_eq!(events[0].reservation_id, Some(transfer_hold_id("t1")));
    assert_eq!(
        (events[0].delta.on_hand, events[0].delta.in_transit),
        (4, -5)
    );
    assert_eq!(
        (
            p.counters.on_hand,
            p.counters.in_transit,
            p.counters.reserved
        ),
        (4, 0, 2)
    );
    assert_eq!(p.counters.backordered, 0);

    // in_transit changed by hand meanwhile: only what is there leaves.
    let mut q = Position::default();
    run(&mut q, Command::InTransit { delta: 2 }).unwrap();
    let events = run(
        &mut q,
        Command::TransferReceive {
            transfer: transfer_hold_id("t2"),
            received: qty(5),
            shipped: 5,
        },
    )
    .unwrap();
    assert_eq!(events[0].delta.in_transit, -2);
    assert_eq!((q.counters.on_hand, q.counters.in_transit), (5, 0));
}

#[test]
fn transfer_events_replay_to_the_same_position() {
    let mut source = stocked(10);
    let mut journal = source_events(&mut source);
    let mut replayed = Position::default();
    journal.insert(
        0,
        Event::plain(
            EventKind::Received,
            Delta {
                on_hand: 10,
                ..Delta::default()
            },
        ),
    );
    for event in &journal {
        replayed.evolve(event).expect("replays");
    }
    assert_eq!(replayed, source);
}

fn source_events(p: &mut Position) -> Vec<Event> {
    let mut events = run(p, transfer_hold("t1", 4)).unwrap();
    events.extend(
        run(
            p,
            Command::TransferShip {
                transfer: transfer_hold_id("t1"),
                qty: qty(3),
            },
        )
        .unwrap(),
    );
    events.extend(run(p, transfer_hold("t2", 2)).unwrap());
    events.extend(
        run(
            p,
            Command::TransferRelease {
                transfer: transfer_hold_id("t2"),
            },
        )
        .unwrap(),
    );
    events
}
