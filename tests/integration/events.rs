//! Systems of record: every warehouse event type and its effect on the
//! counters, duplicates, rejections in the exception queue, and the pull
//! event log.

use serde_json::{json, Value};

use crate::harness::{exceptions, head, num, position, texts, Server};

/// Posts one event; returns its result.
fn post_event(server: &Server, event: Value) -> Value {
    let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{body}");
    results[0].clone()
}

/// Posts one event with `source = "wms"` at `sku`/`location` plus `fields`.
fn apply(server: &Server, event_id: &str, sku: &str, location: &str, fields: Value) -> Value {
    let mut event =
        json!({"event_id": event_id, "source": "wms", "sku": sku, "location": location});
    for (key, value) in fields.as_object().expect("fields") {
        event[key] = value.clone();
    }
    post_event(server, event)
}

fn assert_applied(result: &Value) {
    assert_eq!(result["status"], "applied", "{result}");
    assert!(result["seq"].as_u64().is_some_and(|s| s > 0), "{result}");
}

fn assert_rejected(result: &Value, code: &str) {
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], code, "{result}");
    assert!(result["detail"].is_string(), "{result}");
    assert!(result.get("seq").is_none(), "{result}");
}

/// `(on_hand, quarantined, in_transit, available, version)`.
fn counters(server: &Server, sku: &str, location: &str) -> (i64, i64, i64, i64, i64) {
    let p = position(server, sku, location);
    (
        num(&p, "on_hand"),
        num(&p, "quarantined"),
        num(&p, "in_transit"),
        num(&p, "available"),
        num(&p, "version"),
    )
}

fn log(server: &Server, after: u64, limit: u64) -> Value {
    let (status, body) = server.get(&format!("/v1/events?after={after}&limit={limit}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn entries(server: &Server) -> Vec<Value> {
    log(server, 0, 1000)["events"]
        .as_array()
        .expect("events")
        .clone()
}

#[test]
fn receipt_and_every_adjustment_reason_change_on_hand() {
    let server = Server::start("");
    assert_applied(&apply(
        &server,
        "rc-1",
        "sku-e",
        "wh-east",
        json!({"type": "receipt", "qty": 20}),
    ));
    assert_eq!(counters(&server, "sku-e", "wh-east"), (20, 0, 0, 20, 1));

    let steps = [
        ("damage", -2, 18),
        ("shrink", -1, 17),
        ("found", 4, 21),
        ("correction", -6, 15),
        ("short_pick", -3, 12),
        ("correction", 1, 13),
    ];
    for (index, (reason, delta, on_hand)) in steps.into_iter().enumerate() {
        let event_id = format!("adj-{index}");
        let result = apply(
            &server,
            &event_id,
            "sku-e",
            "wh-east",
            json!({"type": "adjustment", "delta": delta, "reason": reason}),
        );
        assert_applied(&result);
        let (have, _, _, available, version) = counters(&server, "sku-e", "wh-east");
        assert_eq!(
            (have, available),
            (on_hand, on_hand),
            "after {reason} {delta}"
        );
        assert_eq!(version, index as i64 + 2);
        let entry = entries(&server)
            .into_iter()
            .find(|e| e["event_id"] == event_id.as_str())
            .expect("a log entry");
        assert_eq!(entry["type"], "inventory.adjusted");
        assert_eq!(entry["delta"], json!({ "on_hand": delta }), "{entry}");
        assert_eq!(entry["position"]["on_hand"], on_hand, "{entry}");
    }

    // An unknown reason is rejected, and so is going below zero.
    let result = apply(
        &server,
        "adj-bad-reason",
        "sku-e",
        "wh-east",
        json!({"type": "adjustment", "delta": -1, "reason": "stolen"}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    let result = apply(
        &server,
        "adj-below-zero",
        "sku-e",
        "wh-east",
        json!({"type": "adjustment", "delta": -14, "reason": "shrink"}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(counters(&server, "sku-e", "wh-east").0, 13);
}

#[test]
fn count_sets_on_hand_and_checks_expected_version() {
    let server = Server::start("");
    server.receive("sku-n", "wh-east", 10);
    // Without expected_version.
    assert_applied(&apply(
        &server,
        "cnt-1",
        "sku-n",
        "wh-east",
        json!({"type": "count", "counted": 7}),
    ));
    assert_eq!(counters(&server, "sku-n", "wh-east"), (7, 0, 0, 7, 2));

    // With the current version.
    assert_applied(&apply(
        &server,
        "cnt-2",
        "sku-n",
        "wh-east",
        json!({"type": "count", "counted": 12, "expected_version": 2}),
    ));
    assert_eq!(counters(&server, "sku-n", "wh-east"), (12, 0, 0, 12, 3));

    // With a stale version: rejected, nothing changes, kept as an exception.
    let result = apply(
        &server,
        "cnt-stale",
        "sku-n",
        "wh-east",
        json!({"type": "count", "counted": 1, "expected_version": 2}),
    );
    assert_rejected(&result, "version_conflict");
    assert_eq!(counters(&server, "sku-n", "wh-east"), (12, 0, 0, 12, 3));
    let queued = exceptions(&server, "");
    let exception = queued
        .iter()
        .find(|e| e["event_id"] == "cnt-stale")
        .expect("the stale count in the exception queue");
    assert_eq!(exception["code"], "version_conflict");
    assert_eq!(exception["sku"], "sku-n");
    assert_eq!(exception["location"], "wh-east");

    // Counting to zero is allowed; a count on a new position creates it.
    assert_applied(&apply(
        &server,
        "cnt-zero",
        "sku-n",
        "wh-east",
        json!({"type": "count", "counted": 0}),
    ));
    assert_eq!(counters(&server, "sku-n", "wh-east").0, 0);
    assert_applied(&apply(
        &server,
        "cnt-new",
        "sku-n",
        "wh-west",
        json!({"type": "count", "counted": 4, "expected_version": 0}),
    ));
    assert_eq!(counters(&server, "sku-n", "wh-west"), (4, 0, 0, 4, 1));
    let entry = entries(&server)
        .into_iter()
        .find(|e| e["event_id"] == "cnt-1")
        .expect("entry");
    assert_eq!(entry["type"], "inventory.counted");
    assert_eq!(entry["delta"], json!({"on_hand": -3}));
}

#[test]
fn returns_restockable_or_not() {
    let server = Server::start("");
    server.receive("sku-rt", "wh-east", 5);
    assert_applied(&apply(
        &server,
        "ret-1",
        "sku-rt",
        "wh-east",
        json!({"type": "return", "qty": 2, "restockable": true}),
    ));
    assert_eq!(counters(&server, "sku-rt", "wh-east"), (7, 0, 0, 7, 2));
    assert_applied(&apply(
        &server,
        "ret-2",
        "sku-rt",
        "wh-east",
        json!({"type": "return", "qty": 3, "restockable": false}),
    ));
    assert_eq!(counters(&server, "sku-rt", "wh-east"), (10, 3, 0, 7, 3));
    let log = entries(&server);
    let entry = log
        .iter()
        .find(|e| e["event_id"] == "ret-2")
        .expect("entry");
    assert_eq!(entry["type"], "inventory.returned");
    assert_eq!(entry["delta"], json!({"on_hand": 3, "quarantined": 3}));
    // `restockable` is required.
    let result = apply(
        &server,
        "ret-3",
        "sku-rt",
        "wh-east",
        json!({"type": "return", "qty": 1}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(counters(&server, "sku-rt", "wh-east").0, 10);
}

#[test]
fn quarantine_hold_release_and_scrap() {
    let server = Server::start("");
    server.receive("sku-qt", "wh-east", 10);
    let quarantine = |event_id: &str, qty: u64, action: &str| {
        apply(
            &server,
            event_id,
            "sku-qt",
            "wh-east",
            json!({"type": "quarantine", "qty": qty, "action": action}),
        )
    };
    assert_applied(&quarantine("q-1", 4, "hold"));
    assert_eq!(counters(&server, "sku-qt", "wh-east"), (10, 4, 0, 6, 2));
    assert_applied(&quarantine("q-2", 1, "release"));
    assert_eq!(counters(&server, "sku-qt", "wh-east"), (10, 3, 0, 7, 3));
    assert_applied(&quarantine("q-3", 2, "scrap"));
    assert_eq!(counters(&server, "sku-qt", "wh-east"), (8, 1, 0, 7, 4));

    // More than qualifies: rejected, nothing changes.
    let result = quarantine("q-4", 2, "release");
    assert_eq!(result["status"], "rejected", "{result}");
    let result = quarantine("q-5", 2, "scrap");
    assert_eq!(result["status"], "rejected", "{result}");
    let result = quarantine("q-6", 8, "hold");
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(counters(&server, "sku-qt", "wh-east"), (8, 1, 0, 7, 4));
    let codes: Vec<Value> = exceptions(&server, "")
        .into_iter()
        .filter(|e| {
            e["event_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("q-"))
        })
        .map(|e| e["code"].clone())
        .collect();
    assert_eq!(codes.len(), 3, "{codes:?}");

    let entry = entries(&server)
        .into_iter()
        .find(|e| e["event_id"] == "q-3")
        .expect("entry");
    assert_eq!(entry["type"], "inventory.quarantined");
    assert_eq!(entry["delta"], json!({"on_hand": -2, "quarantined": -2}));
}

#[test]
fn in_transit_takes_a_quantity_or_a_signed_delta() {
    let server = Server::start("");
    assert_applied(&apply(
        &server,
        "it-1",
        "sku-it",
        "wh-west",
        json!({"type": "in_transit", "qty": 12}),
    ));
    assert_eq!(counters(&server, "sku-it", "wh-west"), (0, 0, 12, 0, 1));
    assert_applied(&apply(
        &server,
        "it-2",
        "sku-it",
        "wh-west",
        json!({"type": "in_transit", "delta": -5}),
    ));
    assert_eq!(counters(&server, "sku-it", "wh-west"), (0, 0, 7, 0, 2));
    assert_applied(&apply(
        &server,
        "it-3",
        "sku-it",
        "wh-west",
        json!({"type": "in_transit", "delta": 3}),
    ));
    assert_eq!(counters(&server, "sku-it", "wh-west"), (0, 0, 10, 0, 3));
    // Below zero, both fields, or neither: rejected.
    for (event_id, fields) in [
        ("it-4", json!({"type": "in_transit", "delta": -11})),
        ("it-5", json!({"type": "in_transit", "qty": 1, "delta": 1})),
        ("it-6", json!({"type": "in_transit"})),
        ("it-7", json!({"type": "in_transit", "delta": 0})),
    ] {
        let result = apply(&server, event_id, "sku-it", "wh-west", fields);
        assert_eq!(result["status"], "rejected", "{result}");
    }
    assert_eq!(counters(&server, "sku-it", "wh-west"), (0, 0, 10, 0, 3));
    // In transit is not available.
    let (_, view) = server.get("/v1/availability/sku-it");
    assert_eq!(view["total"]["in_transit"], 10);
    assert_eq!(view["total"]["available"], 0);
}

#[test]
fn a_duplicate_event_id_changes_nothing() {
    let server = Server::start("");
    let event = json!({"event_id": "dup-1", "type": "receipt", "source": "wms",
                       "sku": "sku-d", "location": "wh-east", "qty": 5});
    assert_applied(&post_event(&server, event.clone()));
    let before = counters(&server, "sku-d", "wh-east");
    let head_before = head(&server);

    let result = post_event(&server, event);
    assert_eq!(result["status"], "duplicate", "{result}");
    assert_eq!(result["event_id"], "dup-1");
    // The same content sent again later (another occurred_at) is a repeat too.
    let result = post_event(
        &server,
        json!({"event_id": "dup-1", "type": "receipt", "source": "wms",
               "sku": "sku-d", "location": "wh-east", "qty": 5,
               "occurred_at": "2026-01-02T03:04:05Z"}),
    );
    assert_eq!(result["status"], "duplicate", "{result}");
    // The id with other content is not a repeat: refused and queued, so the
    // change it carries is not lost unseen.
    let result = post_event(
        &server,
        json!({"event_id": "dup-1", "type": "receipt", "source": "wms",
               "sku": "sku-d", "location": "wh-east", "qty": 50}),
    );
    assert_rejected(&result, "invalid_state");
    // Also at another position.
    let result = post_event(
        &server,
        json!({"event_id": "dup-1", "type": "receipt", "source": "wms",
               "sku": "sku-d2", "location": "wh-west", "qty": 50}),
    );
    assert_rejected(&result, "invalid_state");
    let (status, _) = server.get("/v1/availability/sku-d2");
    assert_eq!(status, 404, "the refused event created no position");
    let (status, queued) = server.get("/v1/exceptions?kind=rejected_event&sku=sku-d");
    assert_eq!(status, 200, "{queued}");
    assert_eq!(
        texts(&queued["exceptions"], "code"),
        ["invalid_state"],
        "{queued}"
    );

    // Twice in one batch at the same position: the second is the duplicate.
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            {"event_id": "dup-2", "type": "receipt", "source": "wms",
             "sku": "sku-d", "location": "wh-east", "qty": 1},
            {"event_id": "dup-2", "type": "receipt", "source": "wms",
             "sku": "sku-d", "location": "wh-east", "qty": 1}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "applied", "{body}");
    assert_eq!(body["results"][1]["status"], "duplicate", "{body}");
    let after = counters(&server, "sku-d", "wh-east");
    assert_eq!(after.0, before.0 + 1);
    assert_eq!(after.4, before.4 + 1);
    assert_eq!(head(&server), head_before + 1);
}

#[test]
fn one_event_id_at_two_positions_in_one_batch_applies_once() {
    let server = Server::start("");
    for round in 0..20 {
        let event_id = format!("twin-{round}");
        let (status, body) = server.post(
            "/v1/events",
            json!({"events": [
                {"event_id": event_id, "type": "receipt", "source": "wms",
                 "sku": format!("sku-t{round}"), "location": "wh-east", "qty": 1},
                {"event_id": event_id, "type": "receipt", "source": "wms",
                 "sku": format!("sku-u{round}"), "location": "wh-west", "qty": 1}
            ]}),
        );
        assert_eq!(status, 200, "{body}");
        let statuses = texts(&body["results"], "status");
        let applied = statuses.iter().filter(|s| **s == "applied").count();
        assert_eq!(applied, 1, "round {round}: {body}");
    }
}

#[test]
fn rejected_events_are_kept_in_the_exception_queue_with_their_code() {
    let server = Server::start("");
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            {"event_id": "ok-1", "type": "receipt", "source": "erp",
             "sku": "sku-x", "location": "wh-east", "qty": 3},
            {"event_id": "bad-loc", "type": "receipt", "source": "erp",
             "sku": "sku-x", "location": "wh-mars", "qty": 3},
            {"event_id": "bad-qty", "type": "receipt", "source": "erp",
             "sku": "sku-x", "location": "wh-east", "qty": 0},
            {"event_id": "bad-field", "type": "receipt", "source": "erp",
             "sku": "sku-x", "location": "wh-east", "qty": 1, "colour": "red"},
            {"event_id": "bad-type", "type": "teleport", "source": "erp",
             "sku": "sku-x", "location": "wh-east", "qty": 1},
            {"event_id": "bad-scrap", "type": "quarantine", "source": "erp",
             "sku": "sku-x", "location": "wh-east", "qty": 1, "action": "scrap"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 6, "one result per event, in order: {body}");
    let ids = texts(&body["results"], "event_id");
    assert_eq!(
        ids,
        [
            "ok-1",
            "bad-loc",
            "bad-qty",
            "bad-field",
            "bad-type",
            "bad-scrap"
        ]
    );
    assert_applied(&results[0]);
    assert_rejected(&results[1], "unknown_location");
    assert_rejected(&results[2], "quantity_out_of_range");
    assert_rejected(&results[3], "unknown_field");
    assert_rejected(&results[4], "bad_request");
    assert_rejected(&results[5], "invalid_state");
    assert_eq!(counters(&server, "sku-x", "wh-east"), (3, 0, 0, 3, 1));

    let queued = exceptions(&server, "");
    for (event_id, code) in [
        ("bad-loc", "unknown_location"),
        ("bad-qty", "quantity_out_of_range"),
        ("bad-field", "unknown_field"),
        ("bad-type", "bad_request"),
        ("bad-scrap", "invalid_state"),
    ] {
        let found = queued
            .iter()
            .find(|e| e["event_id"] == event_id)
            .unwrap_or_else(|| panic!("{event_id} not in the exception queue: {queued:?}"));
        assert_eq!(found["code"], code, "{found}");
        assert_eq!(found["kind"], "rejected_event", "{found}");
        assert_eq!(found["status"], "open", "{found}");
        assert_eq!(found["source"], "erp", "{found}");
        assert!(found["payload"].is_object(), "the event is kept: {found}");
        assert_eq!(found["payload"]["event_id"], event_id, "{found}");
    }
    assert!(!queued.iter().any(|e| e["event_id"] == "ok-1"));
    let (status, body) = server.get("/v1/exceptions?kind=rejected_event");
    assert_eq!(status, 200);
    assert_eq!(body["exceptions"].as_array().map(Vec::len), Some(5));

    // Counted in the metrics, by type, source and code.
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    let metrics = metrics.as_str().expect("metrics text").to_string();
    let sample = |name: &str, labels: &[&str]| -> Option<f64> {
        metrics.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix('{')?;
            let (set, value) = rest.split_once("} ")?;
            labels
                .iter()
                .all(|l| set.split(',').any(|p| p == *l))
                .then(|| value.trim().parse().ok())?
        })
    };
    assert_eq!(
        sample(
            "stockwire_events_applied_total",
            &["type=\"receipt\"", "source=\"erp\""]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            "stockwire_events_rejected_total",
            &[
                "type=\"receipt\"",
                "source=\"erp\"",
                "code=\"unknown_location\""
            ]
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            "stockwire_events_rejected_total",
            &[
                "type=\"quarantine\"",
                "source=\"erp\"",
                "code=\"invalid_state\""
            ]
        ),
        Some(1.0),
        "{metrics}"
    );

    // A rejected event id is not burnt: fixed, it applies.
    assert_applied(&post_event(
        &server,
        json!({"event_id": "bad-qty", "type": "receipt", "source": "erp",
               "sku": "sku-x", "location": "wh-east", "qty": 2}),
    ));
    assert_eq!(counters(&server, "sku-x", "wh-east").0, 5);
}

#[test]
fn the_event_log_is_gap_free_ascending_from_1_with_the_contract_fields() {
    let server = Server::start("");
    let occurred = "2024-05-01T10:00:00.000Z";
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            {"event_id": "log-1", "type": "receipt", "source": "wms", "occurred_at": occurred,
             "sku": "sku-l", "location": "wh-east", "qty": 10},
            {"event_id": "log-2", "type": "adjustment", "source": "wms",
             "sku": "sku-l", "location": "wh-east", "delta": -1, "reason": "damage"},
            {"event_id": "log-3", "type": "receipt", "source": "erp",
             "sku": "sku-l2", "location": "wh-west", "qty": 4}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-l", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{body}");
    let reservation = body["reservation_id"].as_str().expect("id").to_string();
    let (status, body) = server.post(
        &format!("/v1/reservations/{reservation}/release"),
        json!({}),
    );
    assert_eq!(status, 200, "{body}");
    server.receive("sku-l", "3pl-north", 1);

    let all = entries(&server);
    assert_eq!(all.len(), 6, "{all:?}");
    let seqs: Vec<u64> = all.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=6).collect::<Vec<u64>>());
    assert_eq!(head(&server), 6);
    for entry in &all {
        for key in [
            "seq",
            "event_id",
            "type",
            "schema_version",
            "occurred_at",
            "recorded_at",
            "source",
            "correlation_id",
            "sku",
            "location",
            "delta",
            "position",
        ] {
            assert!(entry.get(key).is_some(), "{key} missing in {entry}");
        }
        assert_eq!(entry["schema_version"], 1, "{entry}");
        assert!(entry["delta"].is_object(), "{entry}");
        assert!(entry["recorded_at"].is_string(), "{entry}");
        assert!(entry["correlation_id"].is_string(), "{entry}");
        for counter in [
            "on_hand",
            "reserved",
            "allocated",
            "quarantined",
            "in_transit",
            "available",
            "version",
        ] {
            assert!(
                entry["position"][counter].is_i64(),
                "{counter} missing in {entry}"
            );
        }
    }
    let first = all
        .iter()
        .find(|e| e["event_id"] == "log-1")
        .expect("log-1");
    assert_eq!(first["type"], "inventory.received");
    assert_eq!(first["occurred_at"], occurred);
    assert_eq!(first["source"], "wms");
    assert_eq!(first["sku"], "sku-l");
    assert_eq!(first["location"], "wh-east");
    assert_eq!(first["delta"], json!({"on_hand": 10}));
    assert_eq!(first["position"]["on_hand"], 10);
    assert_eq!(first["position"]["available"], 10);
    assert_eq!(first["position"]["version"], 1);
    assert!(first.get("reservation_id").is_none(), "{first}");
    let reserved = all
        .iter()
        .find(|e| e["type"] == "inventory.reserved")
        .expect("inventory.reserved");
    assert_eq!(reserved["reservation_id"], reservation.as_str());
    assert_eq!(reserved["delta"], json!({"reserved": 2}));
    assert_eq!(reserved["position"]["available"], 7);
    let released = all
        .iter()
        .find(|e| e["type"] == "inventory.released")
        .expect("inventory.released");
    assert_eq!(released["reservation_id"], reservation.as_str());
    assert_eq!(released["delta"], json!({"reserved": -2}));
    assert_eq!(released["position"]["available"], 9);

    // Pages: `after` is exclusive, `limit` caps, and they add up to the whole.
    let mut paged = Vec::new();
    let mut after = 0;
    for _ in 0..10 {
        let page = log(&server, after, 4)["events"]
            .as_array()
            .expect("events")
            .clone();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 4);
        after = page.last().and_then(|e| e["seq"].as_u64()).expect("seq");
        paged.extend(page);
    }
    assert_eq!(paged, all);
    let page = log(&server, 2, 2)["events"]
        .as_array()
        .expect("events")
        .clone();
    let seqs: Vec<u64> = page.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, [3, 4]);
    assert_eq!(log(&server, 6, 100)["events"], json!([]));
    assert_eq!(log(&server, 600, 100)["events"], json!([]));
}

#[test]
fn a_batch_of_more_than_1000_events_is_refused_whole() {
    let server = Server::start("");
    let batch = |count: usize, prefix: &str| {
        let events: Vec<Value> = (0..count)
            .map(|i| {
                json!({"event_id": format!("{prefix}-{i}"), "type": "receipt", "source": "wms",
                       "sku": format!("sku-b{}", i % 50), "location": "wh-east", "qty": 1})
            })
            .collect();
        json!({ "events": events })
    };
    let (status, body) = server.post("/v1/events", batch(1001, "big"));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");
    assert_eq!(head(&server), 0, "nothing applied");

    let (status, body) = server.post("/v1/events", json!({"events": []}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "bad_request");

    let (status, body) = server.post("/v1/events", batch(1000, "max"));
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == "applied"), "{body}");
    assert_eq!(head(&server), 1000);
    assert_eq!(position(&server, "sku-b7", "wh-east")["on_hand"], 20);
}

#[test]
fn a_rejected_event_creates_no_sku() {
    let server = Server::start("");
    for (event_id, sku, fields) in [
        (
            "r-scrap",
            "sku-ghost1",
            json!({"type": "quarantine", "qty": 1, "action": "scrap"}),
        ),
        (
            "r-adj",
            "sku-ghost2",
            json!({"type": "adjustment", "delta": -1, "reason": "shrink"}),
        ),
        (
            "r-cnt",
            "sku-ghost3",
            json!({"type": "count", "counted": 3, "expected_version": 4}),
        ),
        (
            "r-it",
            "sku-ghost4",
            json!({"type": "in_transit", "delta": -2}),
        ),
    ] {
        let result = apply(&server, event_id, sku, "wh-east", fields);
        assert_eq!(result["status"], "rejected", "{result}");
        let (status, body) = server.get(&format!("/v1/availability/{sku}"));
        assert_eq!(status, 404, "{sku} exists after a rejected event: {body}");
        assert_eq!(body["code"], "unknown_sku", "{body}");
    }
    assert_eq!(head(&server), 0);
}
