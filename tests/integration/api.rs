//! Channels' calls: reservations (all-or-nothing, sourcing, split, ids),
//! availability views, commitments, settings, backorders, oversold
//! positions, `Idempotency-Key` and `X-Correlation-Id`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{head, metric, num, position, Server};

fn reserve(server: &Server, body: Value) -> (u16, Value) {
    server.post("/v1/reservations", body)
}

/// `(on_hand, reserved, available)`, or zeros for a position that does not exist.
fn short_counters(server: &Server, sku: &str, location: &str) -> (i64, i64, i64) {
    let p = position(server, sku, location);
    if p.is_null() {
        return (0, 0, 0);
    }
    (
        num(&p, "on_hand"),
        num(&p, "reserved"),
        num(&p, "available"),
    )
}

fn log(server: &Server) -> Vec<Value> {
    let (status, body) = server.get("/v1/events?after=0&limit=1000");
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().expect("events").clone()
}

fn channel_available(view: &Value, channel: &str) -> i64 {
    view["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == channel))
        .map(|c| num(c, "available"))
        .unwrap_or_else(|| panic!("no channel {channel} in {view}"))
}

fn channel_view(server: &Server, sku: &str, channel: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/availability/{sku}?channel={channel}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn event(server: &Server, event: Value) -> Value {
    let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
    assert_eq!(status, 200, "{body}");
    body["results"][0].clone()
}

#[test]
fn a_short_line_fails_the_whole_reservation_and_nothing_stays_held() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 10);
    server.receive("sku-b", "wh-east", 2);
    server.receive("sku-c", "wh-west", 4);
    let (status, body) = reserve(
        &server,
        json!({"reservation_id": "order-77", "channel": "web", "lines": [
            {"sku": "sku-a", "location": "wh-east", "qty": 5},
            {"sku": "sku-b", "location": "wh-east", "qty": 3},
            {"sku": "sku-c", "qty": 4}
        ]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available");
    assert_eq!(
        body["shortages"],
        json!([{"sku": "sku-b", "location": "wh-east", "requested": 3, "available": 2}]),
        "only the short line is listed"
    );
    assert_eq!(short_counters(&server, "sku-a", "wh-east"), (10, 0, 10));
    assert_eq!(short_counters(&server, "sku-b", "wh-east"), (2, 0, 2));
    assert_eq!(short_counters(&server, "sku-c", "wh-west"), (4, 0, 4));
    let (status, body) = server.get("/v1/reservations/order-77");
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found");

    // The id is free again: the same id with content that fits is created.
    let (status, body) = reserve(
        &server,
        json!({"reservation_id": "order-77", "channel": "web", "lines": [
            {"sku": "sku-a", "location": "wh-east", "qty": 5},
            {"sku": "sku-b", "location": "wh-east", "qty": 2}
        ]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["reservation_id"], "order-77");
    assert_eq!(short_counters(&server, "sku-a", "wh-east"), (10, 5, 5));
    assert_eq!(short_counters(&server, "sku-b", "wh-east"), (2, 2, 0));
}

#[test]
fn a_short_sourced_line_is_listed_without_a_location() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 10);
    server.receive("sku-b", "wh-east", 2);
    server.receive("sku-b", "wh-west", 2);
    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "lines": [
            {"sku": "sku-a", "qty": 1},
            {"sku": "sku-b", "qty": 3}
        ]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available");
    let shortages = body["shortages"].as_array().expect("shortages");
    assert_eq!(shortages.len(), 1, "{body}");
    assert_eq!(shortages[0]["sku"], "sku-b");
    assert_eq!(shortages[0]["requested"], 3);
    assert!(shortages[0].get("location").is_none(), "{body}");
    assert_eq!(short_counters(&server, "sku-a", "wh-east"), (10, 0, 10));
    assert_eq!(short_counters(&server, "sku-b", "wh-east"), (2, 0, 2));
    assert_eq!(short_counters(&server, "sku-b", "wh-west"), (2, 0, 2));
}

#[test]
fn a_line_without_location_takes_the_first_location_that_fills_it() {
    let server = Server::start("");
    server.receive("sku-s", "wh-east", 2);
    server.receive("sku-s", "wh-west", 5);
    server.receive("sku-s", "3pl-north", 10);

    let sourced = |channel: &str, qty: u64| {
        let (status, body) = reserve(
            &server,
            json!({"channel": channel, "lines": [{"sku": "sku-s", "qty": qty}]}),
        );
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["lines"].as_array().map(Vec::len), Some(1), "{body}");
        body["lines"][0]["location"]
            .as_str()
            .expect("location")
            .to_string()
    };
    // wh-east cannot fill 4: wh-west, the next in the web order, can.
    assert_eq!(sourced("web", 4), "wh-west");
    // Neither wh-east (2) nor wh-west (1 left) can fill 8: 3pl-north.
    assert_eq!(sourced("web", 8), "3pl-north");
    assert_eq!(sourced("web", 2), "wh-east");
    assert_eq!(short_counters(&server, "sku-s", "wh-east"), (2, 2, 0));
    assert_eq!(short_counters(&server, "sku-s", "wh-west"), (5, 4, 1));
    assert_eq!(short_counters(&server, "sku-s", "3pl-north"), (10, 8, 2));

    // The marketplace does not source from 3pl-north: nothing fits 2.
    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "lines": [{"sku": "sku-s", "qty": 2}]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available");
    assert_eq!(short_counters(&server, "sku-s", "wh-west"), (5, 4, 1));
    assert_eq!(short_counters(&server, "sku-s", "3pl-north"), (10, 8, 2));
}

#[test]
fn split_fills_greedily_in_the_channel_order() {
    let server = Server::start("");
    server.receive("sku-p", "wh-east", 2);
    server.receive("sku-p", "wh-west", 5);
    server.receive("sku-p", "3pl-north", 10);
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "split": true, "lines": [{"sku": "sku-p", "qty": 9}]}),
    );
    assert_eq!(status, 201, "{body}");
    let mut lines: Vec<(String, u64)> = body["lines"]
        .as_array()
        .expect("lines")
        .iter()
        .map(|l| {
            (
                l["location"].as_str().unwrap_or_default().to_string(),
                l["qty"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            ("3pl-north".to_string(), 2),
            ("wh-east".to_string(), 2),
            ("wh-west".to_string(), 5)
        ],
        "{body}"
    );
    assert_eq!(short_counters(&server, "sku-p", "wh-east"), (2, 2, 0));
    assert_eq!(short_counters(&server, "sku-p", "wh-west"), (5, 5, 0));
    assert_eq!(short_counters(&server, "sku-p", "3pl-north"), (10, 2, 8));

    // Split across the marketplace's locations: only 0 left there, so short;
    // and nothing of the attempt stays held.
    server.receive("sku-p", "wh-west", 1);
    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "split": true, "lines": [{"sku": "sku-p", "qty": 2}]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available");
    assert_eq!(short_counters(&server, "sku-p", "wh-west"), (6, 5, 1));

    // Releasing a split reservation releases every location.
    let id = body_id(&server, "web", 8);
    let (status, body) = server.post(&format!("/v1/reservations/{id}/release"), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(short_counters(&server, "sku-p", "3pl-north"), (10, 2, 8));
    assert_eq!(short_counters(&server, "sku-p", "wh-west"), (6, 5, 1));
}

/// A split reservation of `qty` of `sku-p` for `channel`; returns its id.
fn body_id(server: &Server, channel: &str, qty: u64) -> String {
    let (status, body) = reserve(
        server,
        json!({"channel": channel, "split": true, "lines": [{"sku": "sku-p", "qty": qty}]}),
    );
    assert_eq!(status, 201, "{body}");
    body["reservation_id"].as_str().expect("id").to_string()
}

#[test]
fn an_existing_reservation_id_answers_200_with_same_content_and_409_with_other() {
    let server = Server::start("");
    server.receive("sku-i", "wh-east", 10);
    let request = json!({"reservation_id": "cart-1", "channel": "web",
                         "lines": [{"sku": "sku-i", "location": "wh-east", "qty": 3}]});
    let (status, first) = reserve(&server, request.clone());
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["reservation_id"], "cart-1");
    let (status, again) = reserve(&server, request);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first);
    assert_eq!(short_counters(&server, "sku-i", "wh-east"), (10, 3, 7));

    let (status, body) = reserve(
        &server,
        json!({"reservation_id": "cart-1", "channel": "web",
               "lines": [{"sku": "sku-i", "location": "wh-east", "qty": 4}]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(short_counters(&server, "sku-i", "wh-east"), (10, 3, 7));

    // After a release the same content answers 200 with the current state.
    let (status, _) = server.post("/v1/reservations/cart-1/release", json!({}));
    assert_eq!(status, 200);
    let (status, body) = reserve(
        &server,
        json!({"reservation_id": "cart-1", "channel": "web",
               "lines": [{"sku": "sku-i", "location": "wh-east", "qty": 3}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "released");
    assert_eq!(short_counters(&server, "sku-i", "wh-east"), (10, 0, 10));
}

#[test]
fn full_and_channel_availability_views_have_the_contract_shape() {
    let server = Server::start("");
    server.receive("sku-v", "wh-east", 10);
    server.receive("sku-v", "wh-west", 4);
    server.receive("sku-v", "3pl-north", 3);
    let (status, _) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-v", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201);

    let (status, view) = server.get("/v1/availability/sku-v");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["sku"], "sku-v");
    let locations = view["locations"].as_array().expect("locations");
    assert_eq!(locations.len(), 3, "{view}");
    for location in locations {
        for key in [
            "location",
            "on_hand",
            "reserved",
            "allocated",
            "quarantined",
            "in_transit",
            "safety_stock",
            "available",
            "version",
        ] {
            assert!(location.get(key).is_some(), "{key} missing in {location}");
        }
    }
    let east = position(&server, "sku-v", "wh-east");
    assert_eq!(
        (
            num(&east, "on_hand"),
            num(&east, "reserved"),
            num(&east, "available")
        ),
        (10, 2, 8)
    );
    assert_eq!(num(&east, "version"), 2);
    let total = &view["total"];
    for key in [
        "on_hand",
        "reserved",
        "allocated",
        "quarantined",
        "in_transit",
        "safety_stock",
        "available",
    ] {
        assert!(total.get(key).is_some(), "{key} missing in total {total}");
    }
    assert_eq!(num(total, "on_hand"), 17);
    assert_eq!(num(total, "reserved"), 2);
    assert_eq!(num(total, "available"), 15);
    assert_eq!(view["channels"].as_array().map(Vec::len), Some(2), "{view}");
    assert_eq!(channel_available(&view, "web"), 15);
    assert_eq!(channel_available(&view, "marketplace"), 12);

    let market = channel_view(&server, "sku-v", "marketplace");
    assert_eq!(market["sku"], "sku-v");
    assert_eq!(market["channel"], "marketplace");
    assert_eq!(market["available"], 12);
    assert_eq!(
        market["locations"],
        json!([{"location": "wh-east", "available": 8}, {"location": "wh-west", "available": 4}])
    );
    assert!(market.get("total").is_none(), "{market}");
    assert!(market.get("channels").is_none(), "{market}");
    let web = channel_view(&server, "sku-v", "web");
    assert_eq!(web["available"], 15);
    assert_eq!(web["locations"].as_array().map(Vec::len), Some(3), "{web}");
}

#[test]
fn availability_query_answers_every_sku_in_order_and_unknown_ones_as_zero() {
    let server = Server::start("");
    server.receive("sku-q1", "wh-east", 7);
    server.receive("sku-q2", "3pl-north", 5);
    let (status, body) = server.post(
        "/v1/availability/query",
        json!({"skus": ["sku-q2", "never-seen", "sku-q1"]}),
    );
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{body}");
    assert_eq!(items[0]["sku"], "sku-q2");
    assert_eq!(items[1]["sku"], "never-seen");
    assert_eq!(items[2]["sku"], "sku-q1");
    assert_eq!(num(&items[0]["total"], "on_hand"), 5);
    assert_eq!(channel_available(&items[0], "web"), 5);
    assert_eq!(channel_available(&items[0], "marketplace"), 0);
    assert_eq!(num(&items[2]["total"], "available"), 7);
    let unknown = &items[1];
    assert_eq!(num(&unknown["total"], "on_hand"), 0);
    assert_eq!(num(&unknown["total"], "available"), 0);
    assert_eq!(channel_available(unknown, "web"), 0);
    assert_eq!(channel_available(unknown, "marketplace"), 0);

    let (status, body) = server.post(
        "/v1/availability/query",
        json!({"skus": ["sku-q2", "never-seen", "sku-q1"], "channel": "marketplace"}),
    );
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert_eq!(items.len(), 3, "{body}");
    assert_eq!(items[0]["channel"], "marketplace");
    assert_eq!(items[0]["available"], 0);
    assert_eq!(items[1]["available"], 0);
    assert_eq!(items[2]["available"], 7);
    assert_eq!(
        items[2]["locations"],
        json!([{"location": "wh-east", "available": 7}])
    );

    let (status, body) = server.post("/v1/availability/query", json!({"skus": []}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["items"], json!([]));
}

#[test]
fn a_commitment_ring_fences_units_for_one_channel() {
    let server = Server::start("");
    server.receive("sku-c", "wh-east", 10);
    let (status, body) = server.put(
        "/v1/positions/sku-c/wh-east/commitments/web",
        json!({"qty": 6}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["commitment"], 6);
    assert_eq!(channel_view(&server, "sku-c", "web")["available"], 10);
    assert_eq!(
        channel_view(&server, "sku-c", "marketplace")["available"],
        4
    );
    // Commitments do not change the counters.
    assert_eq!(short_counters(&server, "sku-c", "wh-east"), (10, 0, 10));

    // The marketplace cannot take the web's units.
    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "lines": [{"sku": "sku-c", "location": "wh-east", "qty": 5}]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available");
    assert_eq!(body["shortages"][0]["available"], 4, "{body}");
    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "lines": [{"sku": "sku-c", "location": "wh-east", "qty": 4}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        channel_view(&server, "sku-c", "marketplace")["available"],
        0
    );
    // The web still has all six committed units.
    assert_eq!(channel_view(&server, "sku-c", "web")["available"], 6);
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-c", "location": "wh-east", "qty": 6}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(short_counters(&server, "sku-c", "wh-east"), (10, 10, 0));
    assert_eq!(channel_view(&server, "sku-c", "web")["available"], 0);

    // A commitment of 0 is accepted and removes the fence.
    let (status, body) = server.put(
        "/v1/positions/sku-c/wh-east/commitments/web",
        json!({"qty": 0}),
    );
    assert_eq!(status, 200, "{body}");
    server.receive("sku-c", "wh-east", 3);
    assert_eq!(
        channel_view(&server, "sku-c", "marketplace")["available"],
        3
    );
    assert_eq!(channel_view(&server, "sku-c", "web")["available"], 3);

    // Only at one of the channel's locations: the marketplace does not sell
    // from 3pl-north (422, nothing changed); clearing is always allowed.
    let (status, body) = server.put(
        "/v1/positions/sku-c/3pl-north/commitments/marketplace",
        json!({"qty": 2}),
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "unknown_location", "{body}");
    let (status, body) = server.put(
        "/v1/positions/sku-c/3pl-north/commitments/marketplace",
        json!({"qty": 0}),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn safety_stock_reduces_available() {
    let server = Server::start("");
    server.receive("sku-ss", "wh-east", 10);
    let (status, body) = server.put(
        "/v1/positions/sku-ss/wh-east/settings",
        json!({"safety_stock": 3}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["available"], 7, "{body}");
    let p = position(&server, "sku-ss", "wh-east");
    assert_eq!(num(&p, "safety_stock"), 3);
    assert_eq!(num(&p, "available"), 7);
    assert_eq!(channel_view(&server, "sku-ss", "web")["available"], 7);

    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-ss", "location": "wh-east", "qty": 8}]}),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["shortages"][0]["available"], 7, "{body}");
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-ss", "location": "wh-east", "qty": 7}]}),
    );
    assert_eq!(status, 201, "{body}");

    let (status, body) = server.put(
        "/v1/positions/sku-ss/wh-east/settings",
        json!({"safety_stock": 0}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(num(&position(&server, "sku-ss", "wh-east"), "available"), 3);
}

#[test]
fn backorder_limit_lets_a_hold_go_beyond_available_and_a_receipt_fills_it() {
    let server = Server::start("");
    server.receive("sku-bo", "wh-east", 5);
    let (status, body) = server.put(
        "/v1/positions/sku-bo/wh-east/settings",
        json!({"backorder_limit": 3}),
    );
    assert_eq!(status, 200, "{body}");

    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-bo", "location": "wh-east", "qty": 8}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["lines"][0]["qty"], 8, "{body}");
    assert_eq!(body["lines"][0]["backordered"], 3, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    let p = position(&server, "sku-bo", "wh-east");
    assert_eq!(
        (
            num(&p, "on_hand"),
            num(&p, "reserved"),
            num(&p, "backordered"),
            num(&p, "available")
        ),
        (5, 5, 3, 0),
        "{p}"
    );
    // Backorders never make a position oversold.
    assert_eq!(
        metric(&server, "stockwire_oversold_positions", &[]),
        Some(0.0)
    );

    // The limit is used up.
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-bo", "location": "wh-east", "qty": 1}]}),
    );
    assert_eq!(status, 409, "{body}");

    // A receipt fills the backorder first.
    server.receive("sku-bo", "wh-east", 2);
    let p = position(&server, "sku-bo", "wh-east");
    assert_eq!(
        (
            num(&p, "on_hand"),
            num(&p, "reserved"),
            num(&p, "backordered"),
            num(&p, "available")
        ),
        (7, 7, 1, 0),
        "{p}"
    );
    let (status, body) = server.get(&format!("/v1/reservations/{id}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["lines"][0]["backordered"], 1, "{body}");

    server.receive("sku-bo", "wh-east", 5);
    let p = position(&server, "sku-bo", "wh-east");
    assert_eq!(
        (
            num(&p, "on_hand"),
            num(&p, "reserved"),
            num(&p, "backordered"),
            num(&p, "available")
        ),
        (12, 8, 0, 4),
        "{p}"
    );
    let (_, body) = server.get(&format!("/v1/reservations/{id}"));
    assert_eq!(body["lines"][0]["backordered"], 0, "{body}");
    // Fully filled, it can be allocated.
    let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
    assert_eq!(status, 200, "{body}");
    let p = position(&server, "sku-bo", "wh-east");
    assert_eq!((num(&p, "allocated"), num(&p, "available")), (8, 4));
}

#[test]
fn a_negative_adjustment_below_the_holds_makes_an_oversold_position() {
    let server = Server::start("");
    server.receive("sku-os", "wh-east", 10);
    server.receive("sku-os", "wh-west", 4);
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-os", "location": "wh-east", "qty": 8}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        metric(&server, "stockwire_oversold_positions", &[]),
        Some(0.0)
    );

    let result = event(
        &server,
        json!({"event_id": "adj-os-1", "type": "adjustment", "source": "wms",
               "sku": "sku-os", "location": "wh-east", "delta": -5, "reason": "damage"}),
    );
    assert_eq!(result["status"], "applied", "{result}");
    let p = position(&server, "sku-os", "wh-east");
    assert_eq!(
        (
            num(&p, "on_hand"),
            num(&p, "reserved"),
            num(&p, "available")
        ),
        (5, 8, -3),
        "{p}"
    );

    let (status, body) = server.get("/v1/exceptions?kind=oversold");
    assert_eq!(status, 200, "{body}");
    let found = body["exceptions"].as_array().expect("exceptions");
    assert_eq!(found.len(), 1, "{body}");
    assert_eq!(found[0]["kind"], "oversold");
    assert_eq!(found[0]["sku"], "sku-os");
    assert_eq!(found[0]["location"], "wh-east");

    // Channels see 0 there, not a negative number, and the other location is intact.
    let (_, view) = server.get("/v1/availability/sku-os");
    assert_eq!(channel_available(&view, "web"), 4, "{view}");
    assert_eq!(channel_available(&view, "marketplace"), 4, "{view}");
    let web = channel_view(&server, "sku-os", "web");
    assert_eq!(web["available"], 4, "{web}");
    assert_eq!(web["locations"][0]["location"], "wh-east");
    assert_eq!(web["locations"][0]["available"], 0, "{web}");

    assert_eq!(
        metric(&server, "stockwire_oversold_positions", &[]),
        Some(1.0)
    );
    assert!(
        log(&server)
            .iter()
            .any(|e| e["type"] == "inventory.oversold"
                && e["sku"] == "sku-os"
                && e["location"] == "wh-east"),
        "an inventory.oversold entry"
    );

    // A receipt that covers the holds clears it.
    server.receive("sku-os", "wh-east", 3);
    assert_eq!(num(&position(&server, "sku-os", "wh-east"), "available"), 0);
    assert_eq!(
        metric(&server, "stockwire_oversold_positions", &[]),
        Some(0.0)
    );
}

#[test]
fn an_idempotency_key_replays_the_first_answer_and_changes_nothing() {
    let server = Server::start("");
    server.receive("sku-ik", "wh-east", 10);
    let request = json!({"channel": "web",
                         "lines": [{"sku": "sku-ik", "location": "wh-east", "qty": 2}]});
    let key = [("Idempotency-Key", "key-create-1")];
    let (status, first) = server.post_with("/v1/reservations", request.clone(), &key);
    assert_eq!(status, 201, "{first}");
    let version = position(&server, "sku-ik", "wh-east")["version"].clone();
    let head_before = head(&server);

    for _ in 0..2 {
        let (status, again) = server.post_with("/v1/reservations", request.clone(), &key);
        assert_eq!(status, 201, "{again}");
        assert_eq!(again, first);
    }
    assert_eq!(short_counters(&server, "sku-ik", "wh-east"), (10, 2, 8));
    assert_eq!(position(&server, "sku-ik", "wh-east")["version"], version);
    assert_eq!(head(&server), head_before);

    let (status, body) = server.post_with(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-ik", "location": "wh-east", "qty": 3}]}),
        &key,
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(short_counters(&server, "sku-ik", "wh-east"), (10, 2, 8));
    assert_eq!(head(&server), head_before);

    // A line without a location (its answer stored with the hold, by the
    // engine) and two lines (stored after the holds, by the API) alike.
    server.receive("sku-ik2", "wh-east", 10);
    for (key, lines) in [
        ("key-create-2", json!([{"sku": "sku-ik", "qty": 1}])),
        (
            "key-create-3",
            json!([{"sku": "sku-ik", "qty": 1}, {"sku": "sku-ik2", "qty": 1}]),
        ),
    ] {
        let request = json!({"channel": "web", "lines": lines});
        let key = [("Idempotency-Key", key)];
        let (status, first) = server.post_with("/v1/reservations", request.clone(), &key);
        assert_eq!(status, 201, "{first}");
        let head_before = head(&server);
        let (status, again) = server.post_with("/v1/reservations", request, &key);
        assert_eq!((status, &again), (201, &first));
        assert_eq!(head(&server), head_before);
    }
    assert_eq!(short_counters(&server, "sku-ik", "wh-east"), (10, 4, 6));

    // An error answer is replayed too (same status and body).
    let short = json!({"channel": "web",
                       "lines": [{"sku": "sku-ik", "location": "wh-east", "qty": 50}]});
    let key = [("Idempotency-Key", "key-short")];
    let (status, first) = server.post_with("/v1/reservations", short.clone(), &key);
    assert_eq!(status, 409, "{first}");
    let (status, again) = server.post_with("/v1/reservations", short, &key);
    assert_eq!(status, 409, "{again}");
    assert_eq!(again, first);
}

#[test]
fn an_idempotency_key_on_events_and_transitions_replays_without_effect() {
    let server = Server::start("");
    let batch = json!({"events": [{"event_id": "e-ik-1", "type": "receipt", "source": "wms",
                                   "sku": "sku-ie", "location": "wh-east", "qty": 5}]});
    let key = [("Idempotency-Key", "key-events-1")];
    let (status, first) = server.post_with("/v1/events", batch.clone(), &key);
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["results"][0]["status"], "applied");
    let head_before = head(&server);
    let (status, again) = server.post_with("/v1/events", batch, &key);
    assert_eq!(status, 200, "{again}");
    assert_eq!(again, first, "the first answer, not `duplicate`");
    assert_eq!(head(&server), head_before);
    assert_eq!(short_counters(&server, "sku-ie", "wh-east"), (5, 0, 5));

    let other = json!({"events": [{"event_id": "e-ik-2", "type": "receipt", "source": "wms",
                                   "sku": "sku-ie", "location": "wh-east", "qty": 5}]});
    let (status, body) = server.post_with("/v1/events", other, &key);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(short_counters(&server, "sku-ie", "wh-east"), (5, 0, 5));

    // The same key on another route is a different request.
    let (status, body) = server.post_with(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-ie", "location": "wh-east", "qty": 1}]}),
        &key,
    );
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(short_counters(&server, "sku-ie", "wh-east"), (5, 0, 5));

    // Settings (PUT) with a key.
    let put = |qty: u64| {
        let request = ureq::put(&server.url("/v1/positions/sku-ie/wh-east/settings"))
            .set("Idempotency-Key", "key-settings")
            .timeout(Duration::from_secs(10));
        crate::harness::call(request, Some(json!({ "safety_stock": qty })))
    };
    let (status, first) = put(1);
    assert_eq!(status, 200, "{first}");
    let (status, again) = put(1);
    assert_eq!((status, &again), (200, &first));
    let (status, body) = put(2);
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["code"], "idempotency_key_reused");
    assert_eq!(
        num(&position(&server, "sku-ie", "wh-east"), "safety_stock"),
        1
    );
}

fn post_with_headers(
    server: &Server,
    path: &str,
    body: Value,
    correlation: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = ureq::post(&server.url(path)).timeout(Duration::from_secs(10));
    if let Some(id) = correlation {
        request = request.set("X-Correlation-Id", id);
    }
    let response = match request.send_json(body) {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("POST {path}: {error}"),
    };
    let status = response.status();
    let header = response.header("x-correlation-id").map(str::to_string);
    let text = response.into_string().unwrap_or_default();
    (
        status,
        header,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[test]
fn the_correlation_id_is_echoed_generated_and_stored_on_events() {
    let server = Server::start("");
    let (status, echoed, body) = post_with_headers(
        &server,
        "/v1/events",
        json!({"events": [{"event_id": "e-corr-1", "type": "receipt", "source": "wms",
                           "sku": "sku-co", "location": "wh-east", "qty": 5}]}),
        Some("corr-receipt-1"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed.as_deref(), Some("corr-receipt-1"));

    let (status, generated, body) = post_with_headers(
        &server,
        "/v1/events",
        json!({"events": [{"event_id": "e-corr-2", "type": "receipt", "source": "wms",
                           "sku": "sku-co", "location": "wh-east", "qty": 1}]}),
        None,
    );
    assert_eq!(status, 200, "{body}");
    let generated = generated.expect("a generated correlation id");
    assert!(!generated.is_empty());

    // Errors carry it too; GETs as well.
    let (status, echoed, _) = post_with_headers(
        &server,
        "/v1/reservations",
        json!({"nonsense": true}),
        Some("corr-bad"),
    );
    assert_eq!(status, 400);
    assert_eq!(echoed.as_deref(), Some("corr-bad"));
    let response = ureq::get(&server.url("/v1/availability/sku-co"))
        .set("X-Correlation-Id", "corr-get")
        .call()
        .expect("GET availability");
    assert_eq!(response.header("x-correlation-id"), Some("corr-get"));

    let (status, echoed, body) = post_with_headers(
        &server,
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-co", "location": "wh-east", "qty": 2}]}),
        Some("corr-reserve-1"),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(echoed.as_deref(), Some("corr-reserve-1"));
    let id = body["reservation_id"].as_str().expect("id").to_string();

    let entries = log(&server);
    let by_event = |event_id: &str| {
        entries
            .iter()
            .find(|e| e["event_id"] == event_id)
            .unwrap_or_else(|| panic!("no log entry {event_id}"))
            .clone()
    };
    assert_eq!(by_event("e-corr-1")["correlation_id"], "corr-receipt-1");
    assert_eq!(by_event("e-corr-2")["correlation_id"], generated.as_str());
    let reserved = entries
        .iter()
        .find(|e| e["type"] == "inventory.reserved" && e["reservation_id"] == id.as_str())
        .expect("an inventory.reserved entry");
    assert_eq!(reserved["correlation_id"], "corr-reserve-1");
}

#[test]
fn a_transition_stores_its_own_correlation_id_on_the_events_it_causes() {
    let server = Server::start("");
    server.receive("sku-ct", "wh-east", 5);
    let (status, _, body) = post_with_headers(
        &server,
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-ct", "location": "wh-east", "qty": 2}]}),
        Some("corr-create"),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    let (status, echoed, body) = post_with_headers(
        &server,
        &format!("/v1/reservations/{id}/release"),
        json!({}),
        Some("corr-release"),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(echoed.as_deref(), Some("corr-release"));
    let released = log(&server)
        .into_iter()
        .find(|e| e["type"] == "inventory.released")
        .expect("an inventory.released entry");
    assert_eq!(released["correlation_id"], "corr-release", "{released}");

    // Allocate and ship too.
    let (status, _, body) = post_with_headers(
        &server,
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-ct", "location": "wh-east", "qty": 1}]}),
        Some("corr-create-2"),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    for (action, correlation) in [("allocate", "corr-allocate"), ("ship", "corr-ship")] {
        let (status, _, body) = post_with_headers(
            &server,
            &format!("/v1/reservations/{id}/{action}"),
            json!({}),
            Some(correlation),
        );
        assert_eq!(status, 200, "{body}");
    }
    let entries = log(&server);
    let of_type = |kind: &str| {
        entries
            .iter()
            .find(|e| e["type"] == kind && e["reservation_id"] == id.as_str())
            .unwrap_or_else(|| panic!("no {kind} entry"))
            .clone()
    };
    assert_eq!(
        of_type("inventory.reserved")["correlation_id"],
        "corr-create-2"
    );
    assert_eq!(
        of_type("inventory.allocated")["correlation_id"],
        "corr-allocate"
    );
    assert_eq!(of_type("inventory.shipped")["correlation_id"], "corr-ship");
}

#[test]
fn releasing_a_backordered_reservation_drops_its_backorder() {
    let server = Server::start("");
    server.receive("sku-bor", "wh-east", 2);
    let (status, body) = server.put(
        "/v1/positions/sku-bor/wh-east/settings",
        json!({"backorder_limit": 5}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-bor", "location": "wh-east", "qty": 6}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["lines"][0]["backordered"], 4, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    // Not allocatable while units are backordered.
    let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");

    let (status, body) = server.post(&format!("/v1/reservations/{id}/release"), json!({}));
    assert_eq!(status, 200, "{body}");
    let p = position(&server, "sku-bor", "wh-east");
    assert_eq!(
        (
            num(&p, "reserved"),
            num(&p, "backordered"),
            num(&p, "available")
        ),
        (0, 0, 2),
        "{p}"
    );
    // A later receipt fills nothing: it is all available.
    server.receive("sku-bor", "wh-east", 3);
    let p = position(&server, "sku-bor", "wh-east");
    assert_eq!(
        (
            num(&p, "reserved"),
            num(&p, "backordered"),
            num(&p, "available")
        ),
        (0, 0, 5),
        "{p}"
    );
}

#[test]
fn a_channel_uses_its_commitment_first_and_gets_it_back_on_release() {
    let server = Server::start("");
    server.receive("sku-cu", "wh-west", 10);
    let (status, body) = server.put(
        "/v1/positions/sku-cu/wh-west/commitments/web",
        json!({"qty": 6}),
    );
    assert_eq!(status, 200, "{body}");
    let views = |server: &Server| {
        (
            num(&channel_view(server, "sku-cu", "web"), "available"),
            num(&channel_view(server, "sku-cu", "marketplace"), "available"),
        )
    };
    assert_eq!(views(&server), (10, 4));

    // 4 units of the web's 6 committed: the marketplace keeps its 4.
    let (status, body) = reserve(
        &server,
        json!({"channel": "web", "lines": [{"sku": "sku-cu", "location": "wh-west", "qty": 4}]}),
    );
    assert_eq!(status, 201, "{body}");
    let web_id = body["reservation_id"].as_str().expect("id").to_string();
    assert_eq!(views(&server), (6, 4));

    let (status, body) = reserve(
        &server,
        json!({"channel": "marketplace", "lines": [{"sku": "sku-cu", "location": "wh-west", "qty": 4}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(views(&server), (2, 0));

    let (status, body) = server.post(&format!("/v1/reservations/{web_id}/release"), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(views(&server), (6, 0));
    assert_eq!(short_counters(&server, "sku-cu", "wh-west"), (10, 4, 6));
}

/// Issue 14's suspected bug: a multi-line ship that stops part-way (one line
/// cannot ship: a count left fewer units on hand than it allocated) and is
/// repeated must not call itself shipped while that line's units are still
/// allocated. Only a line whose hold is gone (it shipped before) is skipped.
#[test]
fn a_repeated_multi_line_ship_does_not_skip_a_line_that_still_cannot_ship() {
    let server = Server::start("");
    server.receive("ship-a", "wh-east", 5);
    server.receive("ship-b", "wh-east", 5);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [
            {"sku": "ship-a", "location": "wh-east", "qty": 2},
            {"sku": "ship-b", "location": "wh-east", "qty": 3}
        ]}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
    assert_eq!(status, 200, "{body}");
    // The shelf holds 1 of ship-b: 3 allocated cannot ship.
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [{"event_id": "ship-b-count", "type": "count", "source": "wms",
                           "sku": "ship-b", "location": "wh-east", "counted": 1}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "applied", "{body}");

    for attempt in 0..3 {
        let (status, body) = server.post(&format!("/v1/reservations/{id}/ship"), json!({}));
        assert_eq!(status, 409, "attempt {attempt}: {body}");
        assert_eq!(body["code"], "invalid_state", "attempt {attempt}: {body}");
        let (_, reservation) = server.get(&format!("/v1/reservations/{id}"));
        assert_eq!(
            reservation["status"], "allocated",
            "attempt {attempt}: {reservation}"
        );
        let b = position(&server, "ship-b", "wh-east");
        assert_eq!(b["allocated"], 3, "attempt {attempt}: {b}");
        assert_eq!(b["on_hand"], 1, "attempt {attempt}: {b}");
    }
    // ship-a shipped on the first attempt, once.
    let a = position(&server, "ship-a", "wh-east");
    assert_eq!(
        (a["on_hand"].as_i64(), a["allocated"].as_i64()),
        (Some(3), Some(0)),
        "{a}"
    );

    // Stock found: the repeated ship finishes, shipping ship-b and not ship-a again.
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [{"event_id": "ship-b-found", "type": "receipt", "source": "wms",
                           "sku": "ship-b", "location": "wh-east", "qty": 4}]}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(&format!("/v1/reservations/{id}/ship"), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped", "{body}");
    let b = position(&server, "ship-b", "wh-east");
    assert_eq!(
        (b["on_hand"].as_i64(), b["allocated"].as_i64()),
        (Some(2), Some(0)),
        "{b}"
    );
    let a = position(&server, "ship-a", "wh-east");
    assert_eq!(a["on_hand"], 3, "{a}");
}
