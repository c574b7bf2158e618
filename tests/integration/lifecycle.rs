//! The reservation lifecycle over HTTP: held -> allocated -> shipped,
//! held -> released | expired, allocated -> released.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{position, Server};

/// Holds `qty` of `sku` at `location` for the `web` channel; returns the id.
fn hold(server: &Server, sku: &str, location: &str, qty: u64, ttl: Option<u64>) -> String {
    let mut body = json!({
        "channel": "web",
        "lines": [{"sku": sku, "location": location, "qty": qty}]
    });
    if let Some(ttl) = ttl {
        body["ttl_seconds"] = json!(ttl);
    }
    let (status, body) = server.post("/v1/reservations", body);
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "held", "{body}");
    body["reservation_id"]
        .as_str()
        .expect("a reservation id")
        .to_string()
}

fn get_reservation(server: &Server, id: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/reservations/{id}"));
    assert_eq!(status, 200, "{body}");
    body
}

fn act(server: &Server, id: &str, action: &str) -> (u16, Value) {
    server.post(&format!("/v1/reservations/{id}/{action}"), json!({}))
}

/// `(on_hand, reserved, allocated, available)` of one position.
fn counters(server: &Server, sku: &str, location: &str) -> (i64, i64, i64, i64) {
    let p = position(server, sku, location);
    let n = |k: &str| p[k].as_i64().unwrap_or_else(|| panic!("{k} in {p}"));
    (n("on_hand"), n("reserved"), n("allocated"), n("available"))
}

fn log_types(server: &Server) -> Vec<String> {
    let (status, body) = server.get("/v1/events?after=0&limit=1000");
    assert_eq!(status, 200, "{body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn hold_allocate_ship_moves_the_counters() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 10);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "order_ref": "order-1",
               "lines": [{"sku": "sku-a", "location": "wh-east", "qty": 3}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "held");
    assert_eq!(body["channel"], "web");
    assert_eq!(body["order_ref"], "order-1");
    assert!(body["expires_at"].is_string(), "{body}");
    assert_eq!(
        body["lines"],
        json!([{"sku": "sku-a", "location": "wh-east", "qty": 3, "backordered": 0}])
    );
    let id = body["reservation_id"].as_str().expect("an id").to_string();
    assert_eq!(get_reservation(&server, &id), body);
    assert_eq!(counters(&server, "sku-a", "wh-east"), (10, 3, 0, 7));

    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "allocated");
    assert_eq!(body["expires_at"], Value::Null);
    assert_eq!(get_reservation(&server, &id)["status"], "allocated");
    assert_eq!(counters(&server, "sku-a", "wh-east"), (10, 0, 3, 7));

    let (status, body) = server.post(
        &format!("/v1/reservations/{id}/ship"),
        json!({"lines": [{"sku": "sku-a", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    assert_eq!(get_reservation(&server, &id)["status"], "shipped");
    // Short shipment: the third unit is released back to available.
    assert_eq!(counters(&server, "sku-a", "wh-east"), (8, 0, 0, 8));

    let (status, body) = act(&server, &id, "release");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
    assert_eq!(counters(&server, "sku-a", "wh-east"), (8, 0, 0, 8));

    let types = log_types(&server);
    for wanted in [
        "inventory.received",
        "inventory.reserved",
        "inventory.allocated",
        "inventory.shipped",
        "inventory.released",
    ] {
        assert!(types.iter().any(|t| t == wanted), "{wanted} in {types:?}");
    }
}

#[test]
fn release_of_a_held_reservation_gives_the_units_back_and_twice_is_a_no_op() {
    let server = Server::start("");
    server.receive("sku-r", "wh-east", 10);
    let id = hold(&server, "sku-r", "wh-east", 4, None);
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 4, 0, 6));

    let (status, body) = act(&server, &id, "release");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "released");
    assert_eq!(body["expires_at"], Value::Null);
    assert_eq!(get_reservation(&server, &id)["status"], "released");
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 0, 0, 10));
    let version = position(&server, "sku-r", "wh-east")["version"].clone();

    // Releasing again (empty body and `{}` both) changes nothing.
    let (status, again) = act(&server, &id, "release");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "released");
    let (status, again) = server.post_raw(&format!("/v1/reservations/{id}/release"), b"");
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "released");
    assert_eq!(position(&server, "sku-r", "wh-east")["version"], version);
    assert_eq!(counters(&server, "sku-r", "wh-east"), (10, 0, 0, 10));

    // A released reservation cannot be allocated or shipped.
    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
    let (status, body) = act(&server, &id, "ship");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
}

#[test]
fn allocate_then_release_gives_the_units_back() {
    let server = Server::start("");
    server.receive("sku-al", "wh-west", 6);
    let id = hold(&server, "sku-al", "wh-west", 5, None);

    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(counters(&server, "sku-al", "wh-west"), (6, 0, 5, 1));
    // Allocating again is a no-op.
    let version = position(&server, "sku-al", "wh-west")["version"].clone();
    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "allocated");
    assert_eq!(position(&server, "sku-al", "wh-west")["version"], version);

    let (status, body) = act(&server, &id, "release");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "released");
    assert_eq!(get_reservation(&server, &id)["status"], "released");
    assert_eq!(counters(&server, "sku-al", "wh-west"), (6, 0, 0, 6));
}

#[test]
fn short_shipment_releases_the_rest_and_full_shipment_ships_everything() {
    let server = Server::start("");
    server.receive("sku-s", "wh-east", 10);
    let short = hold(&server, "sku-s", "wh-east", 5, None);
    let full = hold(&server, "sku-s", "wh-east", 2, None);
    for id in [&short, &full] {
        let (status, body) = act(&server, id, "allocate");
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(counters(&server, "sku-s", "wh-east"), (10, 0, 7, 3));

    let (status, body) = server.post(
        &format!("/v1/reservations/{short}/ship"),
        json!({"lines": [{"sku": "sku-s", "location": "wh-east", "qty": 3}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    // 3 left the building, 2 went back to available.
    assert_eq!(counters(&server, "sku-s", "wh-east"), (7, 0, 2, 5));

    // No body: the whole allocation ships.
    let (status, body) = server.post_raw(&format!("/v1/reservations/{full}/ship"), b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    assert_eq!(get_reservation(&server, &full)["status"], "shipped");
    assert_eq!(counters(&server, "sku-s", "wh-east"), (5, 0, 0, 5));

    // Shipping twice is refused.
    let (status, body) = act(&server, &full, "ship");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
    assert_eq!(counters(&server, "sku-s", "wh-east"), (5, 0, 0, 5));
}

#[test]
fn shipping_more_than_allocated_is_refused_and_changes_nothing() {
    let server = Server::start("");
    server.receive("sku-o", "wh-east", 10);
    let id = hold(&server, "sku-o", "wh-east", 2, None);
    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(
        &format!("/v1/reservations/{id}/ship"),
        json!({"lines": [{"sku": "sku-o", "location": "wh-east", "qty": 3}]}),
    );
    assert!((400..500).contains(&status), "{status} {body}");
    assert_eq!(get_reservation(&server, &id)["status"], "allocated");
    assert_eq!(counters(&server, "sku-o", "wh-east"), (10, 0, 2, 8));
}

#[test]
fn shipping_a_held_reservation_is_invalid_state() {
    let server = Server::start("");
    server.receive("sku-h", "wh-east", 10);
    let id = hold(&server, "sku-h", "wh-east", 3, None);
    let version = position(&server, "sku-h", "wh-east")["version"].clone();
    let (status, body) = act(&server, &id, "ship");
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
    assert_eq!(
        body["type"], "https://stockwire.dev/problems/invalid_state",
        "{body}"
    );
    assert_eq!(get_reservation(&server, &id)["status"], "held");
    assert_eq!(counters(&server, "sku-h", "wh-east"), (10, 3, 0, 7));
    assert_eq!(position(&server, "sku-h", "wh-east")["version"], version);
}

#[test]
fn a_held_reservation_expires_on_time_and_gives_the_units_back() {
    let server = Server::start("");
    server.receive("sku-x", "wh-east", 10);
    let created = Instant::now();
    let id = hold(&server, "sku-x", "wh-east", 4, Some(1));
    assert_eq!(counters(&server, "sku-x", "wh-east"), (10, 4, 0, 6));

    let mut status = String::new();
    while created.elapsed() < Duration::from_millis(2500) {
        status = get_reservation(&server, &id)["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if status == "expired" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        status,
        "expired",
        "not expired {:?} after creation",
        created.elapsed()
    );
    let body = get_reservation(&server, &id);
    assert_eq!(body["expires_at"], Value::Null, "{body}");
    assert_eq!(counters(&server, "sku-x", "wh-east"), (10, 0, 0, 10));
    assert!(log_types(&server)
        .iter()
        .any(|t| t == "reservation.expired"));

    // Releasing an expired reservation is a no-op 200.
    let version = position(&server, "sku-x", "wh-east")["version"].clone();
    let (code, body) = act(&server, &id, "release");
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "expired");
    assert_eq!(position(&server, "sku-x", "wh-east")["version"], version);
    // And it cannot be allocated any more.
    let (code, body) = act(&server, &id, "allocate");
    assert_eq!(code, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
}

#[test]
fn an_allocated_reservation_does_not_expire() {
    let server = Server::start("");
    server.receive("sku-k", "wh-east", 10);
    let id = hold(&server, "sku-k", "wh-east", 4, Some(1));
    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    // Past the deadline plus the expiry tolerance.
    std::thread::sleep(Duration::from_millis(1800));
    let body = get_reservation(&server, &id);
    assert_eq!(body["status"], "allocated", "{body}");
    assert_eq!(counters(&server, "sku-k", "wh-east"), (10, 0, 4, 6));
    assert!(!log_types(&server)
        .iter()
        .any(|t| t == "reservation.expired"));
}

#[test]
fn a_multi_line_reservation_moves_every_position() {
    let server = Server::start("");
    server.receive("sku-m1", "wh-east", 5);
    server.receive("sku-m2", "wh-west", 5);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [
            {"sku": "sku-m1", "location": "wh-east", "qty": 2},
            {"sku": "sku-m2", "location": "wh-west", "qty": 3}
        ]}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    assert_eq!(body["lines"].as_array().map(Vec::len), Some(2), "{body}");
    assert_eq!(counters(&server, "sku-m1", "wh-east"), (5, 2, 0, 3));
    assert_eq!(counters(&server, "sku-m2", "wh-west"), (5, 3, 0, 2));

    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(counters(&server, "sku-m1", "wh-east"), (5, 0, 2, 3));
    assert_eq!(counters(&server, "sku-m2", "wh-west"), (5, 0, 3, 2));

    // Ship only one line: the other line is released.
    let (status, body) = server.post(
        &format!("/v1/reservations/{id}/ship"),
        json!({"lines": [{"sku": "sku-m1", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    assert_eq!(counters(&server, "sku-m1", "wh-east"), (3, 0, 0, 3));
    assert_eq!(counters(&server, "sku-m2", "wh-west"), (5, 0, 0, 5));
}

#[test]
fn two_sourced_lines_of_one_sku_at_one_position_ship_like_one() {
    let server = Server::start("");
    server.receive("sku-2l", "wh-east", 10);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [
            {"sku": "sku-2l", "qty": 2},
            {"sku": "sku-2l", "qty": 3}
        ]}),
    );
    if status == 400 {
        // Refusing the duplicate SKU up front is consistent too.
        assert_eq!(body["code"], "bad_request", "{body}");
        return;
    }
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    assert_eq!(counters(&server, "sku-2l", "wh-east"), (10, 5, 0, 5));
    let (status, body) = act(&server, &id, "allocate");
    assert_eq!(status, 200, "{body}");
    assert_eq!(counters(&server, "sku-2l", "wh-east"), (10, 0, 5, 5));
    // 5 units of sku-2l are allocated at wh-east: shipping 4 of them works.
    let (status, body) = server.post(
        &format!("/v1/reservations/{id}/ship"),
        json!({"lines": [{"sku": "sku-2l", "location": "wh-east", "qty": 4}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    assert_eq!(counters(&server, "sku-2l", "wh-east"), (6, 0, 0, 6));
}
