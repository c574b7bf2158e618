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
