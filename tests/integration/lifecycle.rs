//! The reservation lifecycle over HTTP.

use serde_json::json;

use crate::harness::{position, Server};

#[test]
fn hold_allocate_ship_moves_the_counters() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 10);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-a", "location": "wh-east", "qty": 3}]}),
    );
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["status"], "held");
    let id = body["reservation_id"].as_str().expect("an id").to_string();
    assert_eq!(position(&server, "sku-a", "wh-east")["reserved"], 3);

    let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "allocated");
    assert_eq!(body["expires_at"], serde_json::Value::Null);
    let p = position(&server, "sku-a", "wh-east");
    assert_eq!(
        (p["reserved"].clone(), p["allocated"].clone()),
        (json!(0), json!(3))
    );

    let (status, body) = server.post(
        &format!("/v1/reservations/{id}/ship"),
        json!({"lines": [{"sku": "sku-a", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "shipped");
    let p = position(&server, "sku-a", "wh-east");
    assert_eq!(p["on_hand"], 8);
    assert_eq!(p["allocated"], 0);
    assert_eq!(p["available"], 8);

    let (status, body) = server.post(&format!("/v1/reservations/{id}/release"), json!({}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state");
}
