//! Transfers between locations over HTTP (SPEC §2): create holds stock at
//! the source, `transfer_out` ships it into the destination's in_transit,
//! `transfer_in` puts it on hand there; cancel, duplicates, rejections,
//! discrepancies, overdue transfers, and `kill -9` part-way through.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{exceptions, position, Server, BASE_CONFIG};

/// `(on_hand, reserved, in_transit, available)` of one position (zeros
/// when it does not exist).
fn counters(server: &Server, sku: &str, location: &str) -> (i64, i64, i64, i64) {
    let p = position(server, sku, location);
    if p.is_null() {
        return (0, 0, 0, 0);
    }
    let n = |k: &str| p[k].as_i64().unwrap_or_else(|| panic!("{k} in {p}"));
    (n("on_hand"), n("reserved"), n("in_transit"), n("available"))
}

/// What `channel` may sell of `sku` over all its locations.
fn channel_available(server: &Server, sku: &str, channel: &str) -> i64 {
    let (status, body) = server.get(&format!("/v1/availability/{sku}?channel={channel}"));
    assert_eq!(status, 200, "{body}");
    body["available"].as_i64().expect("available")
}

fn create(server: &Server, id: &str, sku: &str, from: &str, to: &str, qty: u64) -> (u16, Value) {
    server.post(
        "/v1/transfers",
        json!({"transfer_id": id, "sku": sku, "from": from, "to": to, "qty": qty}),
    )
}

fn get_transfer(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/transfers/{id}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn post_events(server: &Server, events: Value) -> Vec<Value> {
    let (status, body) = server.post("/v1/events", json!({ "events": events }));
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().expect("results").clone()
}

fn ship_event(event_id: &str, id: &str, sku: &str, from: &str, to: &str, qty: u64) -> Value {
    json!({"event_id": event_id, "type": "transfer_out", "source": "wms", "sku": sku,
           "location": from, "transfer_id": id, "to": to, "qty": qty})
}

fn receive_event(event_id: &str, id: &str, sku: &str, from: &str, to: &str, qty: u64) -> Value {
    json!({"event_id": event_id, "type": "transfer_in", "source": "wms", "sku": sku,
           "location": to, "transfer_id": id, "from": from, "qty": qty})
}

/// Ships `qty` of transfer `id` (wh-east -> wh-west); returns the result.
fn ship(server: &Server, event_id: &str, id: &str, sku: &str, qty: u64) -> Value {
    let event = ship_event(event_id, id, sku, "wh-east", "wh-west", qty);
    post_events(server, json!([event])).remove(0)
}

/// Receives `qty` of transfer `id` at wh-west; returns the result.
fn receive(server: &Server, event_id: &str, id: &str, sku: &str, qty: u64) -> Value {
    let event = receive_event(event_id, id, sku, "wh-east", "wh-west", qty);
    post_events(server, json!([event])).remove(0)
}

fn assert_applied(result: &Value) {
    assert_eq!(result["status"], "applied", "{result}");
    assert!(result["seq"].as_u64().is_some_and(|s| s > 0), "{result}");
}

fn assert_rejected(result: &Value, code: &str) {
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], code, "{result}");
}

fn steps(transfer: &Value) -> Vec<String> {
    transfer["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|s| s["step"].as_str().expect("step").to_string())
        .collect()
}

/// Creates `id` (wh-east -> wh-west) and checks the answer.
fn create_held(server: &Server, id: &str, sku: &str, qty: u64) -> Value {
    let (status, body) = create(server, id, sku, "wh-east", "wh-west", qty);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "held", "{body}");
    body
}

#[test]
fn a_transfer_holds_ships_and_receives_through_in_transit() {
    let server = Server::start("");
    server.receive("sku-t", "wh-east", 10);
    assert_eq!(channel_available(&server, "sku-t", "web"), 10);

    let (status, body) = server.post_with(
        "/v1/transfers",
        json!({"transfer_id": "t-1", "sku": "sku-t", "from": "wh-east", "to": "wh-west", "qty": 4}),
        &[("X-Correlation-Id", "corr-create")],
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["transfer_id"], "t-1");
    assert_eq!(body["sku"], "sku-t");
    assert_eq!(
        (&body["from"], &body["to"]),
        (&json!("wh-east"), &json!("wh-west"))
    );
    assert_eq!(body["qty"], 4);
    assert_eq!(body["status"], "held");
    assert_eq!(body["correlation_id"], "corr-create");
    assert!(
        body["shipped_qty"].is_null() && body["due_at"].is_null(),
        "{body}"
    );
    assert_eq!(steps(&body), ["held"]);
    assert_eq!(get_transfer(&server, "t-1"), body);

    // Held like a reservation: available and every channel's view drop.
    assert_eq!(counters(&server, "sku-t", "wh-east"), (10, 4, 0, 6));
    assert_eq!(channel_available(&server, "sku-t", "web"), 6);
    assert_eq!(channel_available(&server, "sku-t", "marketplace"), 6);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-t", "location": "wh-east", "qty": 7}]}),
    );
    assert_eq!(status, 409, "channels cannot sell held stock: {body}");

    // transfer_out: off hand at the source, in transit at the destination.
    let result = ship(&server, "t1-out", "t-1", "sku-t", 4);
    assert_applied(&result);
    assert_eq!(counters(&server, "sku-t", "wh-east"), (6, 0, 0, 6));
    assert_eq!(counters(&server, "sku-t", "wh-west"), (0, 0, 4, 0));
    let shipped = get_transfer(&server, "t-1");
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(shipped["shipped_qty"], 4);
    assert!(shipped["shipped_at"].is_string() && shipped["due_at"].is_string());
    assert_eq!(steps(&shipped), ["held", "shipped", "in_transit"]);
    let history = shipped["history"].as_array().expect("history");
    assert_eq!(history[1]["event_id"], "t1-out");
    assert_eq!(history[1]["location"], "wh-east");
    assert_eq!(history[2]["location"], "wh-west");
    // A shipped transfer cannot be cancelled.
    let (status, body) = server.post("/v1/transfers/t-1/cancel", json!({}));
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );

    // transfer_in: on hand at the destination, out of in transit.
    let result = receive(&server, "t1-in", "t-1", "sku-t", 4);
    assert_applied(&result);
    assert_eq!(counters(&server, "sku-t", "wh-west"), (4, 0, 0, 4));
    assert_eq!(counters(&server, "sku-t", "wh-east"), (6, 0, 0, 6));
    assert_eq!(channel_available(&server, "sku-t", "web"), 10);
    let received = get_transfer(&server, "t-1");
    assert_eq!(received["status"], "received");
    assert_eq!(received["received_qty"], 4);
    assert!(received["discrepancy"].is_null(), "{received}");
    assert_eq!(
        steps(&received),
        ["held", "shipped", "in_transit", "received"]
    );

    // The log names the transfer on each of its entries.
    let (events, _) = server.event_log(1000);
    let transfer_entries: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["transfer_id"] == "t-1")
        .map(|e| {
            assert!(
                e.get("reservation_id").is_none() && e.get("channel").is_none(),
                "{e}"
            );
            (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["location"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = [
        ("transfer.held", "wh-east"),
        ("transfer.shipped", "wh-east"),
        ("transfer.shipped", "wh-west"),
        ("transfer.received", "wh-west"),
    ]
    .iter()
    .map(|(t, l)| (t.to_string(), l.to_string()))
    .collect();
    assert_eq!(transfer_entries, expected);
    let out = events
        .iter()
        .find(|e| e["event_id"] == "t1-out")
        .expect("the shipment's entry");
    assert_eq!(out["delta"], json!({"on_hand": -4, "reserved": -4}));
    let inbound = events
        .iter()
        .find(|e| e["event_id"] == "t1-out.wh-west")
        .expect("the destination's entry of the shipment");
    assert_eq!(inbound["delta"], json!({"in_transit": 4}));

    // Duplicate event ids change nothing; the same create answers 200 with
    // the current state; other content under the id is refused.
    let head = server.event_log(1000).1;
    assert_eq!(
        ship(&server, "t1-out", "t-1", "sku-t", 4)["status"],
        "duplicate"
    );
    assert_eq!(
        receive(&server, "t1-in", "t-1", "sku-t", 4)["status"],
        "duplicate"
    );
    assert_eq!(server.event_log(1000).1, head);
    let (status, body) = create(&server, "t-1", "sku-t", "wh-east", "wh-west", 4);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, received);
    let (status, body) = create(&server, "t-1", "sku-t", "wh-east", "wh-west", 5);
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );
    assert_eq!(counters(&server, "sku-t", "wh-west"), (4, 0, 0, 4));
    assert_eq!(counters(&server, "sku-t", "wh-east"), (6, 0, 0, 6));
}

#[test]
fn cancel_before_shipping_releases_the_hold() {
    let server = Server::start("");
    server.receive("sku-c", "wh-east", 5);
    create_held(&server, "t-c", "sku-c", 3);
    assert_eq!(channel_available(&server, "sku-c", "web"), 2);

    let (status, body) = server.post("/v1/transfers/t-c/cancel", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(steps(&body), ["held", "cancelled"]);
    assert_eq!(counters(&server, "sku-c", "wh-east"), (5, 0, 0, 5));
    assert_eq!(channel_available(&server, "sku-c", "web"), 5);
    let head = server.event_log(1000).1;

    // Cancelling again changes nothing; a cancelled transfer does not ship.
    let (status, again) = server.post_raw("/v1/transfers/t-c/cancel", b"");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, body);
    assert_eq!(server.event_log(1000).1, head);
    assert_rejected(&ship(&server, "tc-out", "t-c", "sku-c", 3), "invalid_state");
    assert_eq!(counters(&server, "sku-c", "wh-east"), (5, 0, 0, 5));

    let (status, body) = server.post("/v1/transfers/nope/cancel", json!({}));
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    let (status, body) = server.post("/v1/transfers/t-c/cancel", json!({"why": 1}));
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("unknown_field")),
        "{body}"
    );
}

#[test]
fn a_short_shipment_releases_the_rest_and_bad_steps_are_rejected_and_queued() {
    let server = Server::start("");
    server.receive("sku-s", "wh-east", 10);
    create_held(&server, "t-s", "sku-s", 5);
    let rejected = post_events(
        &server,
        json!([
            ship_event("bad-1", "unknown", "sku-s", "wh-east", "wh-west", 1),
            ship_event("bad-2", "t-s", "sku-s", "wh-east", "3pl-north", 1),
            ship_event("bad-3", "t-s", "sku-s", "wh-east", "wh-west", 6),
            ship_event("bad-4", "t-s", "sku-s", "wh-west", "wh-east", 1),
            ship_event("bad-5", "t-s", "sku-s", "wh-east", "mars", 1),
            receive_event("bad-6", "t-s", "sku-s", "wh-east", "wh-west", 5),
            {"event_id": "bad-7", "type": "transfer_out", "source": "wms", "sku": "sku-s",
             "location": "wh-east", "transfer_id": "t-s", "qty": 1},
            {"event_id": "bad-8", "type": "transfer_out", "source": "wms", "sku": "sku-s",
             "location": "wh-east", "transfer_id": "t-s", "to": "wh-west", "from": "wh-east",
             "qty": 1},
        ]),
    );
    let codes: Vec<&str> = rejected
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "rejected", "{r}");
            r["code"].as_str().expect("code")
        })
        .collect();
    assert_eq!(
        codes,
        [
            "not_found",
            "invalid_state",
            "quantity_out_of_range",
            "invalid_state",
            "unknown_location",
            "invalid_state",
            "bad_request",
            "unknown_field"
        ]
    );
    let queued: Vec<String> = exceptions(&server, "kind=rejected_event")
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or_default().to_string())
        .collect();
    for n in 1..=8 {
        assert!(
            queued.contains(&format!("bad-{n}")),
            "bad-{n} in {queued:?}"
        );
    }
    assert_eq!(counters(&server, "sku-s", "wh-east"), (10, 5, 0, 5));

    // Ship 3 of the 5 held: the other 2 are released.
    assert_applied(&ship(&server, "ts-out", "t-s", "sku-s", 3));
    assert_eq!(counters(&server, "sku-s", "wh-east"), (7, 0, 0, 7));
    assert_eq!(counters(&server, "sku-s", "wh-west"), (0, 0, 3, 0));
    let shipped = get_transfer(&server, "t-s");
    assert_eq!(shipped["shipped_qty"], 3);
    assert_eq!(
        steps(&shipped),
        ["held", "shipped", "released", "in_transit"]
    );
    assert_eq!(shipped["history"][2]["qty"], 2);
    // Shipping twice is refused (under a new event id).
    assert_rejected(
        &ship(&server, "ts-out-2", "t-s", "sku-s", 1),
        "invalid_state",
    );
    assert_applied(&receive(&server, "ts-in", "t-s", "sku-s", 3));
    assert_eq!(counters(&server, "sku-s", "wh-west"), (3, 0, 0, 3));
    assert!(exceptions(&server, "kind=transfer_discrepancy").is_empty());
}

#[test]
fn a_receipt_that_differs_from_the_shipment_raises_a_discrepancy() {
    let server = Server::start("");
    server.receive("sku-d", "wh-east", 8);
    create_held(&server, "t-d", "sku-d", 5);
    assert_applied(&ship(&server, "td-out", "t-d", "sku-d", 5));
    let event = receive_event("td-in", "t-d", "sku-d", "wh-east", "wh-west", 3);
    let (status, body) = server.post_with(
        "/v1/events",
        json!({ "events": [event] }),
        &[("X-Correlation-Id", "corr-receipt")],
    );
    assert_eq!(status, 200, "{body}");
    assert_applied(&body["results"][0]);

    // What arrived is on hand; the whole shipment left in_transit.
    assert_eq!(counters(&server, "sku-d", "wh-west"), (3, 0, 0, 3));
    assert_eq!(counters(&server, "sku-d", "wh-east"), (3, 0, 0, 3));
    let transfer = get_transfer(&server, "t-d");
    assert_eq!(transfer["status"], "received");
    assert_eq!(transfer["received_qty"], 3);
    assert_eq!(transfer["discrepancy"], -2);
    assert_eq!(
        steps(&transfer),
        ["held", "shipped", "in_transit", "received", "discrepancy"]
    );

    let found = exceptions(&server, "kind=transfer_discrepancy");
    assert_eq!(found.len(), 1, "{found:?}");
    let exception = &found[0];
    assert_eq!(exception["code"], "transfer_discrepancy");
    assert_eq!(exception["status"], "open");
    assert_eq!(exception["sku"], "sku-d");
    assert_eq!(exception["location"], "wh-west");
    assert_eq!(exception["event_id"], "td-in");
    assert_eq!(exception["correlation_id"], "corr-receipt");
    assert_eq!(exception["payload"]["transfer_id"], "t-d");
    assert!(
        exception["detail"]
            .as_str()
            .is_some_and(|d| d.contains("(-2)")),
        "{exception}"
    );
    // Not a rejected event.
    assert!(exceptions(&server, "kind=rejected_event").is_empty());
}

#[test]
fn a_transfer_not_received_in_time_is_overdue_once() {
    // A top-level key: before the tables of the base config.
    let base = format!("transfer_overdue_seconds = 1\n{BASE_CONFIG}");
    let server = Server::start_with_base(&base, "");
    server.receive("sku-o", "wh-east", 4);
    create_held(&server, "t-o", "sku-o", 4);
    // Held transfers are never overdue: only the shipped ones.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(exceptions(&server, "kind=transfer_overdue").is_empty());
    assert_applied(&ship(&server, "to-out", "t-o", "sku-o", 4));
    assert_eq!(get_transfer(&server, "t-o")["status"], "shipped");

    let started = Instant::now();
    let found = loop {
        let found = exceptions(&server, "kind=transfer_overdue");
        if !found.is_empty() || started.elapsed() > Duration::from_secs(10) {
            break found;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(found[0]["sku"], "sku-o");
    assert_eq!(found[0]["location"], "wh-west");
    assert_eq!(found[0]["event_id"], "to-out");
    let transfer = get_transfer(&server, "t-o");
    assert_eq!(transfer["status"], "overdue");
    assert_eq!(transfer["overdue"], true);
    assert_eq!(
        steps(&transfer),
        ["held", "shipped", "in_transit", "overdue"]
    );

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        exceptions(&server, "kind=transfer_overdue").len(),
        1,
        "only once"
    );
    // A late receipt still completes it.
    assert_applied(&receive(&server, "to-in", "t-o", "sku-o", 4));
    let transfer = get_transfer(&server, "t-o");
    assert_eq!(
        (&transfer["status"], &transfer["overdue"]),
        (&json!("received"), &json!(true))
    );
    assert_eq!(counters(&server, "sku-o", "wh-west"), (4, 0, 0, 4));
}

#[test]
fn a_restart_after_create_and_after_ship_continues_the_transfer() {
    let mut server = Server::start("");
    server.receive("sku-r", "wh-east", 10);
    let (status, created) = server.post_with(
        "/v1/transfers",
        json!({"transfer_id": "t-r", "sku": "sku-r", "from": "wh-east", "to": "wh-west", "qty": 6}),
        &[("Idempotency-Key", "create-t-r")],
    );
    assert_eq!(status, 201, "{created}");
    create_held(&server, "t-cancel", "sku-r", 1);

    server.kill();
    server.spawn();
    assert_eq!(get_transfer(&server, "t-r"), created);
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 7, 0, 3));
    // The same key after the restart answers the first response again.
    let (status, again) = server.post_with(
        "/v1/transfers",
        json!({"transfer_id": "t-r", "sku": "sku-r", "from": "wh-east", "to": "wh-west", "qty": 6}),
        &[("Idempotency-Key", "create-t-r")],
    );
    assert_eq!((status, &again), (201, &created));
    let (status, body) = server.post("/v1/transfers/t-cancel/cancel", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 6, 0, 4));
    // Through a snapshot too (SIGTERM writes one): the hold is in it.
    assert_eq!(server.terminate(), Some(0));
    server.spawn();
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 6, 0, 4));
    assert_eq!(get_transfer(&server, "t-r")["status"], "held");

    assert_applied(&ship(&server, "tr-out", "t-r", "sku-r", 6));
    server.kill();
    server.spawn();
    let shipped = get_transfer(&server, "t-r");
    assert_eq!(shipped["status"], "shipped");
    assert_eq!(steps(&shipped), ["held", "shipped", "in_transit"]);
    assert_eq!(get_transfer(&server, "t-cancel")["status"], "cancelled");
    assert_eq!(counters(&server, "sku-r", "wh-east"), (4, 0, 0, 4));
    assert_eq!(counters(&server, "sku-r", "wh-west"), (0, 0, 6, 0));
    assert_eq!(
        ship(&server, "tr-out", "t-r", "sku-r", 6)["status"],
        "duplicate"
    );

    assert_applied(&receive(&server, "tr-in", "t-r", "sku-r", 6));
    server.kill();
    server.spawn();
    assert_eq!(get_transfer(&server, "t-r")["status"], "received");
    assert_eq!(counters(&server, "sku-r", "wh-east"), (4, 0, 0, 4));
    assert_eq!(counters(&server, "sku-r", "wh-west"), (6, 0, 0, 6));
    assert_eq!(
        receive(&server, "tr-in", "t-r", "sku-r", 6)["status"],
        "duplicate"
    );
    assert_eq!(counters(&server, "sku-r", "wh-west"), (6, 0, 0, 6));
}

#[test]
fn creation_is_validated_and_honours_idempotency_keys() {
    let server = Server::start("");
    server.receive("sku-v", "wh-east", 3);
    let cases = [
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "wh-east", "qty": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "mars", "qty": 1}),
            422,
            "unknown_location",
        ),
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 0}),
            400,
            "quantity_out_of_range",
        ),
        (
            json!({"transfer_id": "v v", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 1}),
            400,
            "invalid_id",
        ),
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 1, "note": "x"}),
            400,
            "unknown_field",
        ),
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "qty": 1}),
            400,
            "bad_request",
        ),
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 4}),
            409,
            "insufficient_available",
        ),
        // Known elsewhere, absent at the source: short there.
        (
            json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-west", "to": "wh-east", "qty": 1}),
            409,
            "insufficient_available",
        ),
        // No position anywhere: a catalogue mismatch, as for a reservation line.
        (
            json!({"transfer_id": "v", "sku": "other", "from": "wh-east", "to": "wh-west", "qty": 1}),
            404,
            "unknown_sku",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = server.post("/v1/transfers", body.clone());
        assert_eq!(
            (got, &answer["code"]),
            (status, &json!(code)),
            "{body}: {answer}"
        );
    }
    let (_, short) = create(&server, "v", "sku-v", "wh-east", "wh-west", 4);
    assert_eq!(
        short["shortages"],
        json!([{"sku": "sku-v", "location": "wh-east", "requested": 4, "available": 3}])
    );
    // Nothing was kept of the refusals.
    let (status, body) = server.get("/v1/transfers/v");
    assert_eq!(
        (status, &body["code"]),
        (404, &json!("not_found")),
        "{body}"
    );
    assert_eq!(counters(&server, "sku-v", "wh-east"), (3, 0, 0, 3));

    let key = [("Idempotency-Key", "k-v")];
    let body =
        json!({"transfer_id": "v", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 2});
    let (status, first) = server.post_with("/v1/transfers", body.clone(), &key);
    assert_eq!(status, 201, "{first}");
    let (status, replay) = server.post_with("/v1/transfers", body, &key);
    assert_eq!((status, &replay), (201, &first));
    let other =
        json!({"transfer_id": "v2", "sku": "sku-v", "from": "wh-east", "to": "wh-west", "qty": 1});
    let (status, reused) = server.post_with("/v1/transfers", other, &key);
    assert_eq!(
        (status, &reused["code"]),
        (422, &json!("idempotency_key_reused"))
    );
    assert_eq!(counters(&server, "sku-v", "wh-east"), (3, 2, 0, 1));
}

#[test]
fn shipment_and_receipt_in_one_batch_apply_in_order() {
    let server = Server::start("");
    server.receive("sku-b", "wh-east", 5);
    create_held(&server, "t-b", "sku-b", 5);
    // The receipt is grouped with the shipment (it touches the same two
    // positions), so it runs after it, and the adjustment at the
    // destination after the receipt.
    let results = post_events(
        &server,
        json!([
            ship_event("tb-out", "t-b", "sku-b", "wh-east", "wh-west", 5),
            receive_event("tb-in", "t-b", "sku-b", "wh-east", "wh-west", 5),
            {"event_id": "tb-adj", "type": "adjustment", "source": "wms", "sku": "sku-b",
             "location": "wh-west", "delta": -2, "reason": "damage"},
        ]),
    );
    for result in &results {
        assert_applied(result);
    }
    assert_eq!(counters(&server, "sku-b", "wh-west"), (3, 0, 0, 3));
    assert_eq!(counters(&server, "sku-b", "wh-east"), (0, 0, 0, 0));
    assert_eq!(get_transfer(&server, "t-b")["status"], "received");
}
