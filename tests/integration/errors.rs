//! Every error code the API can answer, each as `application/problem+json`
//! with `type`, `title`, `status`, `detail` and `code`; malformed and
//! hostile bodies answer 4xx and leave the server up.

use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{position, Server};

struct Reply {
    status: u16,
    content_type: String,
    body: Value,
}

/// Sends `body` as is (no JSON encoding) and reads the answer's headers too.
fn send(server: &Server, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
    let request = ureq::request(method, &server.url(path))
        .set("content-type", "application/json")
        .timeout(Duration::from_secs(20));
    let result = match body {
        Some(bytes) => request.send_bytes(bytes),
        None => request.call(),
    };
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(error) => panic!("{method} {path}: {error}"),
    };
    let status = response.status();
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let text = response.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Reply {
        status,
        content_type,
        body,
    }
}

fn send_json(server: &Server, method: &str, path: &str, body: Value) -> Reply {
    send(server, method, path, Some(body.to_string().as_bytes()))
}

/// Asserts a problem answer with `status` and `code`; returns its body.
fn problem(reply: Reply, status: u16, code: &str) -> Value {
    let body = reply.body;
    assert_eq!(reply.status, status, "{body}");
    assert!(
        reply.content_type.starts_with("application/problem+json"),
        "content type {:?} for {body}",
        reply.content_type
    );
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status, "{body}");
    assert!(
        body["type"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(
        body["title"].as_str().is_some_and(|t| !t.is_empty()),
        "{body}"
    );
    assert!(body["detail"].is_string(), "{body}");
    body
}

fn reserve(server: &Server, body: Value) -> Reply {
    send_json(server, "POST", "/v1/reservations", body)
}

fn line(sku: Value, location: Value, qty: Value) -> Value {
    json!({"channel": "web", "lines": [{"sku": sku, "location": location, "qty": qty}]})
}

/// Posts one event; returns its result.
fn event_result(server: &Server, event: Value) -> Value {
    let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
    assert_eq!(status, 200, "{body}");
    body["results"][0].clone()
}

fn assert_still_up(server: &Server) {
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");
    let (status, _) = server.get("/healthz");
    assert_eq!(status, 200);
}

#[test]
fn malformed_json_and_wrong_types_are_bad_request() {
    let server = Server::start("");
    for body in [
        &b"{\"channel\": "[..],
        b"not json at all",
        b"",
        b"[1, 2",
        b"{\"channel\": \"web\", \"lines\": [{\"sku\": \"a\", \"qty\": 1}],}",
    ] {
        let reply = send(&server, "POST", "/v1/reservations", Some(body));
        problem(reply, 400, "bad_request");
    }
    for body in [
        json!({"channel": 5, "lines": [{"sku": "a", "qty": 1}]}),
        json!({"channel": "web", "lines": "sku-a"}),
        json!({"channel": "web", "lines": [{"sku": "a", "qty": "3"}]}),
        json!({"channel": "web", "lines": [{"sku": 7, "qty": 3}]}),
        json!({"channel": "web", "split": "yes", "lines": [{"sku": "a", "qty": 3}]}),
        json!({"lines": [{"sku": "a", "qty": 3}]}),
        json!({"channel": "web", "lines": []}),
        json!([1, 2, 3]),
        json!("a string"),
    ] {
        problem(reserve(&server, body), 400, "bad_request");
    }
    for body in [
        json!({"events": {"event_id": "x"}}),
        json!({"events": "none"}),
        json!({}),
    ] {
        problem(
            send_json(&server, "POST", "/v1/events", body),
            400,
            "bad_request",
        );
    }
    problem(
        send_json(
            &server,
            "POST",
            "/v1/availability/query",
            json!({"skus": "a"}),
        ),
        400,
        "bad_request",
    );
    problem(
        send_json(
            &server,
            "PUT",
            "/v1/positions/sku-a/wh-east/settings",
            json!({"safety_stock": "3"}),
        ),
        400,
        "bad_request",
    );
    let skus: Vec<String> = (0..1001).map(|i| format!("sku-{i}")).collect();
    problem(
        send_json(
            &server,
            "POST",
            "/v1/availability/query",
            json!({ "skus": skus }),
        ),
        400,
        "bad_request",
    );
    let result = event_result(
        &server,
        json!({"event_id": "e-when", "type": "receipt", "source": "wms",
               "occurred_at": "yesterday", "sku": "a", "location": "wh-east", "qty": 3}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "bad_request", "{result}");
    // Within an event, a wrong type rejects that event with the code.
    let result = event_result(
        &server,
        json!({"event_id": "e-1", "type": "receipt", "source": "wms",
               "sku": "a", "location": "wh-east", "qty": "3"}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "bad_request", "{result}");
    assert_still_up(&server);
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    // Top level.
    let body = problem(
        reserve(
            &server,
            json!({"channel": "web", "lines": [{"sku": "sku-a", "qty": 1}], "priority": 1}),
        ),
        400,
        "unknown_field",
    );
    assert!(
        body["detail"].as_str().unwrap_or("").contains("priority"),
        "{body}"
    );
    // Inside a line.
    problem(
        reserve(
            &server,
            json!({"channel": "web", "lines": [{"sku": "sku-a", "qty": 1, "colour": "red"}]}),
        ),
        400,
        "unknown_field",
    );
    // Top level of an event batch.
    problem(
        send_json(
            &server,
            "POST",
            "/v1/events",
            json!({"events": [], "batch_id": "b-1"}),
        ),
        400,
        "unknown_field",
    );
    // Inside an event: that event is rejected with the code.
    let result = event_result(
        &server,
        json!({"event_id": "e-uf", "type": "receipt", "source": "wms",
               "sku": "sku-a", "location": "wh-east", "qty": 1, "lot": "L7"}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "unknown_field", "{result}");
    // A field of another event type.
    let result = event_result(
        &server,
        json!({"event_id": "e-uf2", "type": "receipt", "source": "wms",
               "sku": "sku-a", "location": "wh-east", "qty": 1, "reason": "found"}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "unknown_field", "{result}");
    // Other bodies.
    problem(
        send_json(
            &server,
            "PUT",
            "/v1/positions/sku-a/wh-east/settings",
            json!({"safety_stock": 1, "reorder_point": 4}),
        ),
        400,
        "unknown_field",
    );
    problem(
        send_json(
            &server,
            "PUT",
            "/v1/positions/sku-a/wh-east/commitments/web",
            json!({"qty": 1, "until": "tomorrow"}),
        ),
        400,
        "unknown_field",
    );
    problem(
        send_json(
            &server,
            "POST",
            "/v1/availability/query",
            json!({"skus": ["sku-a"], "fields": ["on_hand"]}),
        ),
        400,
        "unknown_field",
    );
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-a", "location": "wh-east", "qty": 1}]}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    problem(
        send_json(
            &server,
            "POST",
            &format!("/v1/reservations/{id}/release"),
            json!({"reason": "changed mind"}),
        ),
        400,
        "unknown_field",
    );
    assert_eq!(position(&server, "sku-a", "wh-east")["reserved"], 1);
    assert_eq!(position(&server, "sku-a", "wh-east")["on_hand"], 5);
}

#[test]
fn bad_ids_are_invalid_id() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    let long = "a".repeat(65);
    let max = "b".repeat(64);
    for sku in [
        json!("sku a"),
        json!(long),
        json!(""),
        json!("sku/a"),
        json!("skü"),
    ] {
        problem(
            reserve(&server, line(sku, json!("wh-east"), json!(1))),
            400,
            "invalid_id",
        );
    }
    problem(
        reserve(
            &server,
            json!({"reservation_id": "my order", "channel": "web",
                   "lines": [{"sku": "sku-a", "qty": 1}]}),
        ),
        400,
        "invalid_id",
    );
    problem(
        send(&server, "GET", "/v1/availability/sku%20a", None),
        400,
        "invalid_id",
    );
    problem(
        send(&server, "GET", &format!("/v1/availability/{long}"), None),
        400,
        "invalid_id",
    );
    problem(
        send(&server, "GET", &format!("/v1/reservations/{long}"), None),
        400,
        "invalid_id",
    );
    problem(
        send_json(
            &server,
            "POST",
            "/v1/availability/query",
            json!({"skus": ["sku-a", "bad sku"]}),
        ),
        400,
        "invalid_id",
    );
    // 64 characters are fine: an unknown but valid sku.
    problem(
        send(&server, "GET", &format!("/v1/availability/{max}"), None),
        404,
        "unknown_sku",
    );
    // Inside an event.
    let result = event_result(
        &server,
        json!({"event_id": "e-id", "type": "receipt", "source": "wms",
               "sku": "has space", "location": "wh-east", "qty": 1}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "invalid_id", "{result}");
    let (status, _) = server.get("/v1/availability/has%20space");
    assert_eq!(status, 400);
    assert_eq!(position(&server, "sku-a", "wh-east")["reserved"], 0);
}

#[test]
fn quantities_outside_1_to_a_billion_are_quantity_out_of_range() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    for qty in ["0", "-1", "1.5", "1e12", "1000000001", "1.0", "-1000000000"] {
        let body = format!(
            r#"{{"channel": "web", "lines": [{{"sku": "sku-a", "location": "wh-east", "qty": {qty}}}]}}"#
        );
        let reply = send(&server, "POST", "/v1/reservations", Some(body.as_bytes()));
        problem(reply, 400, "quantity_out_of_range");
    }
    // The upper bound itself is a quantity (here simply not available).
    let reply = reserve(
        &server,
        line(json!("sku-a"), json!("wh-east"), json!(1_000_000_000)),
    );
    problem(reply, 409, "insufficient_available");

    // Events: per event, with the code.
    for (event_id, fields) in [
        ("q-0", json!({"type": "receipt", "qty": 0})),
        ("q-big", json!({"type": "receipt", "qty": 1_000_000_001u64})),
        ("q-frac", json!({"type": "receipt", "qty": 2.5})),
        ("q-neg", json!({"type": "receipt", "qty": -4})),
        (
            "q-d0",
            json!({"type": "adjustment", "delta": 0, "reason": "found"}),
        ),
        (
            "q-dbig",
            json!({"type": "adjustment", "delta": -1_000_000_001i64, "reason": "damage"}),
        ),
        ("q-cnt", json!({"type": "count", "counted": -1})),
        (
            "q-ret",
            json!({"type": "return", "qty": 0, "restockable": true}),
        ),
    ] {
        let mut event = json!({"event_id": event_id, "source": "wms",
                               "sku": "sku-a", "location": "wh-east"});
        for (key, value) in fields.as_object().expect("fields") {
            event[key] = value.clone();
        }
        let result = event_result(&server, event);
        assert_eq!(result["status"], "rejected", "{result}");
        assert_eq!(result["code"], "quantity_out_of_range", "{result}");
    }
    // Settings and commitments take 0..=1e9.
    for body in [
        json!({"safety_stock": -1}),
        json!({"backorder_limit": 1_000_000_001u64}),
        json!({"safety_stock": 0.5}),
    ] {
        problem(
            send_json(&server, "PUT", "/v1/positions/sku-a/wh-east/settings", body),
            400,
            "quantity_out_of_range",
        );
    }
    problem(
        send_json(
            &server,
            "PUT",
            "/v1/positions/sku-a/wh-east/commitments/web",
            json!({"qty": 1_000_000_001u64}),
        ),
        400,
        "quantity_out_of_range",
    );
    let p = position(&server, "sku-a", "wh-east");
    assert_eq!(
        (
            p["on_hand"].clone(),
            p["reserved"].clone(),
            p["safety_stock"].clone()
        ),
        (json!(5), json!(0), json!(0))
    );
}

#[test]
fn unknown_things_are_not_found_or_unknown() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    problem(
        send(&server, "GET", "/v1/reservations/res_nope", None),
        404,
        "not_found",
    );
    for action in ["release", "allocate", "ship"] {
        problem(
            send(
                &server,
                "POST",
                &format!("/v1/reservations/res_nope/{action}"),
                Some(b"{}"),
            ),
            404,
            "not_found",
        );
    }
    problem(
        send(&server, "GET", "/v1/nothing-here", None),
        404,
        "not_found",
    );
    problem(send(&server, "GET", "/nothing", None), 404, "not_found");
    problem(
        send(&server, "POST", "/v2/reservations", Some(b"{}")),
        404,
        "not_found",
    );

    problem(
        send(&server, "GET", "/v1/availability/never-received", None),
        404,
        "unknown_sku",
    );

    // A location that does not exist, or is not one of the channel's.
    problem(
        reserve(&server, line(json!("sku-a"), json!("wh-mars"), json!(1))),
        422,
        "unknown_location",
    );
    problem(
        reserve(
            &server,
            json!({"channel": "marketplace",
                   "lines": [{"sku": "sku-a", "location": "3pl-north", "qty": 1}]}),
        ),
        422,
        "unknown_location",
    );
    problem(
        send_json(
            &server,
            "PUT",
            "/v1/positions/sku-a/wh-mars/settings",
            json!({"safety_stock": 1}),
        ),
        422,
        "unknown_location",
    );
    let result = event_result(
        &server,
        json!({"event_id": "e-mars", "type": "receipt", "source": "wms",
               "sku": "sku-a", "location": "wh-mars", "qty": 1}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "unknown_location", "{result}");

    // An unknown channel is refused too (422, a problem answer).
    let reply = reserve(
        &server,
        json!({"channel": "fax", "lines": [{"sku": "sku-a", "qty": 1}]}),
    );
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(reply.content_type.starts_with("application/problem+json"));
    let reply = send(&server, "GET", "/v1/availability/sku-a?channel=fax", None);
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert_eq!(position(&server, "sku-a", "wh-east")["reserved"], 0);
}

#[test]
fn conflicts_are_409_with_their_code() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    let body = problem(
        reserve(&server, line(json!("sku-a"), json!("wh-east"), json!(6))),
        409,
        "insufficient_available",
    );
    assert_eq!(
        body["shortages"],
        json!([{"sku": "sku-a", "location": "wh-east", "requested": 6, "available": 5}])
    );

    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-a", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{body}");
    let id = body["reservation_id"].as_str().expect("id").to_string();
    problem(
        send(
            &server,
            "POST",
            &format!("/v1/reservations/{id}/ship"),
            Some(b"{}"),
        ),
        409,
        "invalid_state",
    );
    // A ship that names one line twice is refused, not summed: nothing ships.
    let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
    assert_eq!(status, 200, "{body}");
    let twice = json!({"lines": [{"sku": "sku-a", "location": "wh-east", "qty": 1},
                                 {"sku": "sku-a", "location": "wh-east", "qty": 1}]});
    problem(
        send(
            &server,
            "POST",
            &format!("/v1/reservations/{id}/ship"),
            Some(twice.to_string().as_bytes()),
        ),
        400,
        "bad_request",
    );
    let (_, body) = server.get(&format!("/v1/reservations/{id}"));
    assert_eq!(body["status"], "allocated", "{body}");
    assert_eq!(position(&server, "sku-a", "wh-east")["on_hand"], 5);
    let (status, body) = server.post(&format!("/v1/reservations/{id}/release"), json!({}));
    assert_eq!(status, 200, "{body}");

    // version_conflict: reported per event in the results.
    let version = position(&server, "sku-a", "wh-east")["version"]
        .as_u64()
        .expect("version");
    let result = event_result(
        &server,
        json!({"event_id": "cnt-stale", "type": "count", "source": "wms",
               "sku": "sku-a", "location": "wh-east", "counted": 9,
               "expected_version": version - 1}),
    );
    assert_eq!(result["status"], "rejected", "{result}");
    assert_eq!(result["code"], "version_conflict", "{result}");
    assert_eq!(position(&server, "sku-a", "wh-east")["on_hand"], 5);
}

#[test]
fn a_reused_idempotency_key_is_422() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    let send_keyed = |qty: u64| {
        let request = ureq::post(&server.url("/v1/reservations"))
            .set("Idempotency-Key", "reused-key")
            .timeout(Duration::from_secs(10));
        let body = line(json!("sku-a"), json!("wh-east"), json!(qty));
        let response = match request.send_json(body) {
            Ok(response) => response,
            Err(ureq::Error::Status(_, response)) => response,
            Err(error) => panic!("{error}"),
        };
        Reply {
            status: response.status(),
            content_type: response.header("content-type").unwrap_or("").to_string(),
            body: response.into_json().unwrap_or(Value::Null),
        }
    };
    assert_eq!(send_keyed(1).status, 201);
    problem(send_keyed(2), 422, "idempotency_key_reused");
    assert_eq!(position(&server, "sku-a", "wh-east")["reserved"], 1);
}

/// A body that stops arriving is answered `408 request_timeout` once nothing of
/// it has come for 30 s, instead of holding its connection open for ever, and
/// the connection is closed (also for a chunked body, whose rest actix would
/// otherwise wait for); the server goes on answering.
#[test]
fn a_body_that_stops_arriving_is_408_and_its_connection_closed() {
    use std::io::{Read, Write};
    let server = Server::start("");
    let heads = [
        "Content-Length: 100\r\n\r\n{\"events\": [",
        "Transfer-Encoding: chunked\r\n\r\nc\r\n{\"events\": [\r\n",
    ];
    let port = server.port;
    let stall = move |head: &str| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(90)))
            .expect("timeout");
        let request = format!(
            "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\n{head}"
        );
        stream.write_all(request.as_bytes()).expect("write");
        let sent = std::time::Instant::now();
        // Everything the server sends until it closes.
        let mut answer = Vec::new();
        let closed = stream.read_to_end(&mut answer).is_ok();
        (
            sent.elapsed(),
            String::from_utf8_lossy(&answer).to_string(),
            closed,
        )
    };
    // Both at once.
    let answers: Vec<_> = std::thread::scope(|scope| {
        let running: Vec<_> = heads
            .iter()
            .map(|head| scope.spawn(move || stall(head)))
            .collect();
        running
            .into_iter()
            .map(|client| client.join().expect("client thread"))
            .collect()
    });
    for (took, answer, closed) in answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
        assert!(closed, "the connection was not closed: {answer}");
        assert!(took >= std::time::Duration::from_secs(29), "{took:?}");
    }
    assert_still_up(&server);
}

/// The limit is on a stall, not on the whole body: a body whose parts keep
/// coming, 12 s apart, 36 s in all, is read and applied.
#[test]
fn a_slow_body_that_keeps_coming_is_read() {
    use std::io::Write;
    let server = Server::start("");
    let body = r#"{"events": [{"event_id": "slow-1", "type": "receipt", "source": "wms", "sku": "slow", "location": "wh-east", "qty": 3}]}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .expect("timeout");
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("head");
    let third = body.len() / 3;
    for part in [&body[..third], &body[third..2 * third], &body[2 * third..]] {
        std::thread::sleep(std::time::Duration::from_secs(12));
        stream.write_all(part.as_bytes()).expect("part");
    }
    let mut reader = std::io::BufReader::new(stream);
    let mut status = String::new();
    std::io::BufRead::read_line(&mut reader, &mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(position(&server, "slow", "wh-east")["on_hand"], 3);
}

#[test]
fn a_body_over_the_limit_is_413() {
    let server = Server::start("");
    // Valid JSON, padded past 1 MiB.
    let mut body = b"{\"events\": [".to_vec();
    body.resize(body.len() + (1 << 20), b' ');
    body.extend_from_slice(b"]}");
    problem(
        send(&server, "POST", "/v1/events", Some(&body)),
        413,
        "payload_too_large",
    );
    let mut body = b"{\"channel\": \"web\", \"order_ref\": \"".to_vec();
    body.resize(body.len() + (1 << 20) + 1, b'x');
    body.extend_from_slice(b"\", \"lines\": [{\"sku\": \"a\", \"qty\": 1}]}");
    problem(
        send(&server, "POST", "/v1/reservations", Some(&body)),
        413,
        "payload_too_large",
    );
    assert_still_up(&server);
    // Just under the limit is read (and judged on its content).
    let mut body = b"{\"events\": [".to_vec();
    body.resize((1 << 20) - 2, b' ');
    body.extend_from_slice(b"]}");
    problem(
        send(&server, "POST", "/v1/events", Some(&body)),
        400,
        "bad_request",
    );
}

#[test]
fn invalid_utf8_and_deep_nesting_are_4xx_and_the_server_stays_up() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 5);
    let invalid_utf8 =
        b"{\"channel\": \"we\xff\xfe\", \"lines\": [{\"sku\": \"sku-a\", \"qty\": 1}]}";
    let reply = send(&server, "POST", "/v1/reservations", Some(invalid_utf8));
    problem(reply, 400, "bad_request");
    let invalid_utf8 = b"{\"events\": [{\"event_id\": \"\xc3\x28\", \"type\": \"receipt\"}]}";
    let reply = send(&server, "POST", "/v1/events", Some(invalid_utf8));
    assert!((400..500).contains(&reply.status), "{}", reply.body);
    assert_still_up(&server);

    let depth = 10_000;
    let arrays = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
    for nested in [&arrays, &objects] {
        for (path, body) in [
            ("/v1/reservations", nested.clone()),
            ("/v1/events", nested.clone()),
            ("/v1/events", format!("{{\"events\": [{nested}]}}")),
            ("/v1/availability/query", nested.clone()),
            (
                "/v1/reservations",
                format!("{{\"channel\": \"web\", \"lines\": {nested}}}"),
            ),
        ] {
            let reply = send(&server, "POST", path, Some(body.as_bytes()));
            assert!(
                (400..500).contains(&reply.status),
                "{path}: {} {}",
                reply.status,
                reply.body
            );
            assert_still_up(&server);
        }
    }
    // Unmatched deep nesting, unterminated.
    let reply = send(
        &server,
        "POST",
        "/v1/events",
        Some("[".repeat(100_000).as_bytes()),
    );
    assert!((400..500).contains(&reply.status), "{}", reply.body);
    assert_still_up(&server);
    assert_eq!(position(&server, "sku-a", "wh-east")["on_hand"], 5);
}

#[test]
fn a_wrong_method_is_a_problem_answer() {
    let server = Server::start("");
    let reply = send(&server, "DELETE", "/v1/reservations/res_1", None);
    assert!((400..500).contains(&reply.status), "{}", reply.body);
    assert!(
        reply.content_type.starts_with("application/problem+json"),
        "{} {:?} {}",
        reply.status,
        reply.content_type,
        reply.body
    );
    assert!(reply.body["code"].is_string(), "{}", reply.body);
}

#[test]
fn a_bad_query_string_is_a_problem_answer() {
    let server = Server::start("");
    server.receive("sku-a", "wh-east", 1);
    for (path, code) in [
        ("/v1/events?after=abc", "bad_request"),
        ("/v1/events?limit=-1", "bad_request"),
        ("/v1/events?after=0&colour=red", "unknown_field"),
        ("/v1/availability/sku-a?chanel=web", "unknown_field"),
        ("/v1/exceptions?after=x", "bad_request"),
        ("/v1/events/stream?after=x", "bad_request"),
    ] {
        let reply = send(&server, "GET", path, None);
        assert_eq!(reply.status, 400, "{path}: {}", reply.body);
        assert!(
            reply.content_type.starts_with("application/problem+json"),
            "{path}: {:?} {}",
            reply.content_type,
            reply.body
        );
        assert_eq!(reply.body["code"], code, "{path}: {}", reply.body);
    }
}

/// Sends raw bytes and returns the status line and body of the answer.
fn raw_exchange(server: &Server, request: &[u8]) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the head and a Content-Length body are in (or the peer closes).
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if body.len() >= length {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

#[test]
fn oversized_and_too_many_headers_are_431_and_the_server_stays_up() {
    let server = Server::start("");
    // Over max_header_bytes (16 KiB): a problem answer with its own code.
    let big = format!(
        "GET /v1/availability/s HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let (status, body) = raw_exchange(&server, big.as_bytes());
    assert!(status.contains(" 431 "), "{status}");
    let problem: Value = serde_json::from_str(&body).expect("problem+json");
    assert_eq!(problem["code"], "headers_too_large", "{problem}");
    // A very long path counts too.
    let long_path = format!(
        "GET /v1/availability/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "p".repeat(20_000)
    );
    let (status, _) = raw_exchange(&server, long_path.as_bytes());
    assert!(status.contains(" 431 "), "{status}");
    // More headers than the HTTP parser takes (96) or a head over 128 KiB: actix's own 431.
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw_exchange(
        &server,
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    );
    assert!(status.contains(" 431 "), "{status}");
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n",
        "a".repeat(300_000)
    );
    let (status, _) = raw_exchange(&server, huge.as_bytes());
    assert!(status.contains(" 431 ") || status.is_empty(), "{status}");
    assert_still_up(&server);
}

/// SPEC §9: a line whose SKU has no position anywhere is `404 unknown_sku` (a
/// catalogue mismatch); a SKU that exists but is short, here or elsewhere, is
/// `409 insufficient_available`. Either way nothing stays held.
#[test]
fn a_sku_with_no_position_anywhere_is_unknown_not_short() {
    let server = Server::start("");
    server.receive("known", "wh-west", 5);
    let unknown = |body: Value| {
        let found = problem(reserve(&server, body), 404, "unknown_sku");
        assert!(
            found["detail"]
                .as_str()
                .is_some_and(|d| d.contains("never-seen")),
            "{found}"
        );
    };
    // Located, sourced, and sourced with split.
    unknown(line(json!("never-seen"), json!("wh-east"), json!(1)));
    unknown(json!({"channel": "web", "lines": [{"sku": "never-seen", "qty": 1}]}));
    unknown(json!({"channel": "web", "split": true, "lines": [{"sku": "never-seen", "qty": 1}]}));
    // With a line that could be held: the whole cart is refused, nothing held.
    unknown(json!({"channel": "web", "lines": [
        {"sku": "known", "location": "wh-west", "qty": 2},
        {"sku": "never-seen", "location": "wh-east", "qty": 1}
    ]}));
    assert_eq!(position(&server, "known", "wh-west")["reserved"], 0);

    // Known at wh-west only: asking at wh-east is a shortage, not a catalogue miss.
    let short = problem(
        reserve(&server, line(json!("known"), json!("wh-east"), json!(1))),
        409,
        "insufficient_available",
    );
    assert_eq!(
        short["shortages"],
        json!([{"sku": "known", "location": "wh-east", "requested": 1, "available": 0}])
    );
    problem(
        reserve(&server, line(json!("known"), json!("wh-west"), json!(6))),
        409,
        "insufficient_available",
    );
}
