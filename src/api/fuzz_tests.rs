//! Property-driven fuzzing of request decoding (reservations and warehouse
//! events; the domain commands have their own model tests in
//! `domain::model_tests`): arbitrary bytes, arbitrary
//! JSON built from the API's own field names, and mutations of valid bodies
//! must never panic, and every refusal must be a 4xx with a stable code.
//! Longer runs: `PROPTEST_CASES=200000 cargo test --lib api::fuzz_tests`.

use proptest::prelude::*;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::events::decode as decode_event;
use super::reservations::decode_create;
use crate::config::is_valid_id;
use crate::domain::QTY_MAX;

const FIELDS: &[&str] = &[
    "reservation_id",
    "channel",
    "order_ref",
    "ttl_seconds",
    "lines",
    "split",
    "sku",
    "location",
    "qty",
    "events",
    "event_id",
    "type",
    "source",
    "delta",
    "reason",
    "counted",
    "skus",
    "restockable",
    "action",
    "transfer_id",
    "to",
    "from",
    "occurred_at",
    "expected_version",
    "x",
];

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        (0u64..=QTY_MAX + 2).prop_map(Value::from),
        Just(json!(0)),
        Just(json!(-1)),
    ]
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        "[A-Za-z0-9._:-]{0,70}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ]
}

/// JSON whose objects use the API's field names, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(FIELDS), inner), 0..8).prop_map(
                |entries| {
                    Value::Object(
                        entries
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v))
                            .collect::<Map<_, _>>(),
                    )
                }
            ),
        ]
    })
}

fn valid_create() -> Value {
    json!({"reservation_id": "r-1", "channel": "web", "order_ref": "o-1", "ttl_seconds": 60,
           "lines": [{"sku": "s-1", "location": "wh-east", "qty": 2}, {"sku": "s-2", "qty": 1}],
           "split": true})
}

fn assert_client_error(error: &ApiError) {
    let (status, code) = error.status_and_code();
    assert!(status.is_client_error(), "{status} {code}: {error}");
    assert!(!code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
}

fn check_create(body: &[u8]) {
    match decode_create(body, 100) {
        Ok(reservation) => {
            assert!(is_valid_id(&reservation.channel));
            assert!((1..=100).contains(&reservation.lines.len()));
            for line in &reservation.lines {
                assert!(is_valid_id(&line.sku));
                assert!((1..=QTY_MAX).contains(&line.qty.get()));
            }
        }
        Err(error) => assert_client_error(&error),
    }
}

/// 2,048 cases per property in `make test`; `PROPTEST_CASES` for longer runs.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048)
}

fn valid_event() -> Value {
    json!({"event_id": "e-1", "type": "adjustment", "source": "wms", "sku": "s-1",
           "location": "wh-east", "delta": -3, "reason": "damage",
           "occurred_at": "2026-12-01T10:00:00Z"})
}

/// An event decodes to a validated `WarehouseEvent` or a 4xx with a code.
fn check_event(value: Value) {
    match decode_event(value) {
        Ok(event) => {
            assert!(is_valid_id(&event.event_id) && is_valid_id(&event.sku));
            assert!(is_valid_id(&event.location) && is_valid_id(&event.source));
        }
        Err(bad) => assert_client_error(&bad.error),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        check_create(&body);
    }

    #[test]
    fn arbitrary_api_shaped_json_never_panics(value in json_value()) {
        check_create(value.to_string().as_bytes());
        let mut wrapped = valid_create();
        wrapped["lines"][0] = value.clone();
        check_create(wrapped.to_string().as_bytes());
    }

    #[test]
    fn arbitrary_events_never_panic(value in json_value(), field in prop::sample::select(FIELDS)) {
        check_event(value.clone());
        // A valid event with one field replaced by anything.
        let mut event = valid_event();
        event[field] = value;
        check_event(event);
    }

    #[test]
    fn mutated_valid_bodies_never_panic(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut body = valid_create().to_string().into_bytes();
        for (at, byte) in flips {
            let i = at.index(body.len());
            body[i] = byte;
        }
        check_create(&body);
        let end = cut.index(body.len());
        check_create(&body[..end]);
    }
}

#[test]
fn deep_nesting_is_a_clear_error() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let error = decode_create(deep.as_bytes(), 100).expect_err("not a reservation");
    assert_client_error(&error);
    let deep = format!("{{\"lines\":{}1{}}}", "[".repeat(5000), "]".repeat(5000));
    assert_client_error(&decode_create(deep.as_bytes(), 100).expect_err("too deep"));
}
