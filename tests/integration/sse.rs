//! `GET /v1/events/stream`: Server-Sent Events, replay then live.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{Server, BASE_CONFIG};

/// The longest a test waits for one event.
const WAIT: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct SseEvent {
    id: Option<u64>,
    event: Option<String>,
    data: Value,
}

/// An open event stream, read by a thread (it ends when the server goes).
struct Stream {
    content_type: String,
    events: Receiver<SseEvent>,
}

fn open(server: &Server, path: &str, headers: &[(&str, &str)]) -> Stream {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(5))
        .build();
    let mut request = agent.get(&server.url(path));
    for (name, value) in headers {
        request = request.set(name, value);
    }
    let response = request.call().expect("open the event stream");
    assert_eq!(response.status(), 200);
    let content_type = response.header("content-type").unwrap_or("").to_string();
    let (sender, events) = mpsc::channel();
    let reader = BufReader::new(response.into_reader());
    std::thread::spawn(move || {
        let (mut id, mut event, mut data) = (None, None, String::new());
        for line in reader.lines() {
            let Ok(line) = line else { return };
            if line.is_empty() {
                if !data.is_empty() {
                    let parsed = serde_json::from_str(&data).unwrap_or(Value::String(data.clone()));
                    let message = SseEvent {
                        id: id.take(),
                        event: event.take(),
                        data: parsed,
                    };
                    if sender.send(message).is_err() {
                        return;
                    }
                }
                data.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = value.parse().ok(),
                "event" => event = Some(value.to_string()),
                "data" => {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(value);
                }
                _ => {}
            }
        }
    });
    Stream {
        content_type,
        events,
    }
}

impl Stream {
    /// The next `count` events, each within `WAIT`.
    fn take(&self, count: usize) -> Vec<SseEvent> {
        let mut found = Vec::with_capacity(count);
        for _ in 0..count {
            match self.events.recv_timeout(WAIT) {
                Ok(event) => found.push(event),
                Err(error) => panic!("event {} of {count}: {error}; had {found:?}", found.len()),
            }
        }
        found
    }

    /// Nothing more arrives within `wait`.
    fn assert_quiet(&self, wait: Duration) {
        if let Ok(event) = self.events.recv_timeout(wait) {
            panic!("unexpected event {event:?}");
        }
    }
}

fn assert_entry(event: &SseEvent, seq: u64, kind: &str) {
    assert_eq!(event.id, Some(seq), "{event:?}");
    assert_eq!(event.event.as_deref(), Some(kind), "{event:?}");
    assert_eq!(event.data["seq"], seq, "{event:?}");
    assert_eq!(event.data["type"], kind, "{event:?}");
    assert_eq!(event.data["schema_version"], 1, "{event:?}");
}

#[test]
fn the_stream_replays_the_log_then_delivers_live_events() {
    let server = Server::start("");
    server.receive("sku-sse", "wh-east", 5);
    server.receive("sku-sse", "wh-west", 3);

    let stream = open(&server, "/v1/events/stream?after=0", &[]);
    assert!(
        stream.content_type.starts_with("text/event-stream"),
        "{}",
        stream.content_type
    );
    let replayed = stream.take(2);
    assert_entry(&replayed[0], 1, "inventory.received");
    assert_entry(&replayed[1], 2, "inventory.received");
    assert_eq!(replayed[0].data["location"], "wh-east");
    assert_eq!(replayed[1].data["location"], "wh-west");
    assert_eq!(replayed[1].data["position"]["on_hand"], 3);

    // Live: a receipt posted after connecting arrives promptly.
    let posted = Instant::now();
    server.receive("sku-sse", "3pl-north", 7);
    let live = stream.take(1);
    assert!(posted.elapsed() < WAIT);
    assert_entry(&live[0], 3, "inventory.received");
    assert_eq!(live[0].data["sku"], "sku-sse");
    assert_eq!(live[0].data["location"], "3pl-north");
    assert_eq!(live[0].data["delta"], json!({"on_hand": 7}));

    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "sku-sse", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{body}");
    let live = stream.take(1);
    assert_entry(&live[0], 4, "inventory.reserved");
    assert_eq!(live[0].data["reservation_id"], body["reservation_id"]);
    stream.assert_quiet(Duration::from_millis(200));
}

#[test]
fn the_stream_resumes_after_a_seq_or_last_event_id() {
    let server = Server::start("");
    for qty in 1..=4 {
        server.receive("sku-resume", "wh-east", qty);
    }
    let stream = open(&server, "/v1/events/stream?after=2", &[]);
    let events = stream.take(2);
    assert_entry(&events[0], 3, "inventory.received");
    assert_entry(&events[1], 4, "inventory.received");
    stream.assert_quiet(Duration::from_millis(200));

    let resumed = open(&server, "/v1/events/stream", &[("Last-Event-ID", "3")]);
    let events = resumed.take(1);
    assert_entry(&events[0], 4, "inventory.received");
    // An id the stream never sent is refused, not a replay from the start.
    match ureq::get(&server.url("/v1/events/stream"))
        .set("Last-Event-ID", "abc")
        .timeout(Duration::from_secs(5))
        .call()
    {
        Err(ureq::Error::Status(400, response)) => {
            let body: Value = response.into_json().expect("a problem body");
            assert_eq!(body["code"], "bad_request", "{body}");
        }
        other => panic!("Last-Event-ID abc: {other:?}"),
    }

    // Both streams see the next entry.
    server.receive("sku-resume", "wh-west", 1);
    assert_entry(&stream.take(1)[0], 5, "inventory.received");
    assert_entry(&resumed.take(1)[0], 5, "inventory.received");
}

#[test]
fn a_stream_opened_on_an_empty_log_waits_for_the_first_entry() {
    let server = Server::start("");
    let stream = open(&server, "/v1/events/stream?after=0", &[]);
    stream.assert_quiet(Duration::from_millis(200));
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [
            {"event_id": "s-1", "type": "receipt", "source": "wms",
             "sku": "sku-first", "location": "wh-east", "qty": 2},
            {"event_id": "s-2", "type": "adjustment", "source": "wms",
             "sku": "sku-first", "location": "wh-east", "delta": -1, "reason": "damage"}
        ]}),
    );
    assert_eq!(status, 200, "{body}");
    let events = stream.take(2);
    assert_entry(&events[0], 1, "inventory.received");
    assert_eq!(events[0].data["event_id"], "s-1");
    assert_entry(&events[1], 2, "inventory.adjusted");
    assert_eq!(events[1].data["event_id"], "s-2");
    assert_eq!(events[1].data["position"]["on_hand"], 1);
}

#[test]
fn a_long_log_replays_in_order_across_pages() {
    let server = Server::start("");
    let mut total = 0;
    for (batch, count) in [(0, 1000), (1, 234)] {
        let events: Vec<Value> = (0..count)
            .map(|i| {
                json!({"event_id": format!("long-{batch}-{i}"), "type": "receipt",
                       "source": "wms", "sku": format!("sku-{}", i % 37),
                       "location": "wh-east", "qty": 1})
            })
            .collect();
        let (status, body) = server.post("/v1/events", json!({ "events": events }));
        assert_eq!(status, 200, "{body}");
        total += count;
    }
    let stream = open(&server, "/v1/events/stream?after=0", &[]);
    let events = stream.take(total);
    let ids: Vec<u64> = events.iter().filter_map(|e| e.id).collect();
    assert_eq!(ids, (1..=total as u64).collect::<Vec<u64>>());
    assert!(events.iter().all(|e| e.data["seq"] == json!(e.id)));
    stream.assert_quiet(Duration::from_millis(200));
}

#[test]
fn streams_beyond_the_limit_are_refused_with_503() {
    let server = Server::start_with_base(&format!("sse_connections_max = 2\n{BASE_CONFIG}"), "");
    server.receive("sku-lim", "wh-east", 1);
    let first = open(&server, "/v1/events/stream?after=0", &[]);
    let second = open(&server, "/v1/events/stream?after=0", &[]);
    assert_entry(&first.take(1)[0], 1, "inventory.received");
    assert_entry(&second.take(1)[0], 1, "inventory.received");

    let response = match ureq::get(&server.url("/v1/events/stream?after=0"))
        .timeout(Duration::from_secs(5))
        .call()
    {
        Err(ureq::Error::Status(_, response)) => response,
        Ok(response) => panic!("a third stream opened: {}", response.status()),
        Err(error) => panic!("{error}"),
    };
    assert_eq!(response.status(), 503);
    assert!(response.header("retry-after").is_some());
    assert!(response
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/problem+json"));
    let body: Value = response.into_json().expect("a problem body");
    assert_eq!(body["code"], "unavailable", "{body}");
    assert_eq!(body["status"], 503, "{body}");
    // The open streams still work.
    server.receive("sku-lim", "wh-west", 1);
    assert_entry(&first.take(1)[0], 2, "inventory.received");
    assert_entry(&second.take(1)[0], 2, "inventory.received");
}

/// A stream whose client has gone gives its slot back once the server notices
/// (its next keep-alive write fails), and every stream refused meanwhile for the
/// key's allowance is counted in `stockwire_rate_limited_total`.
#[test]
fn a_closed_streams_slot_is_given_back_and_the_refusals_are_counted() {
    let server = Server::start_with_base(
        &format!("sse_connections_per_key_max = 1\n{BASE_CONFIG}"),
        "",
    );
    let mut client = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    client
        .write_all(b"GET /v1/events/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .expect("request sent");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        client.read_exact(&mut byte).expect("the answer's head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    drop(client);

    let rate_limited = || -> u64 {
        let metrics = ureq::get(&server.url("/metrics"))
            .call()
            .expect("metrics")
            .into_string()
            .expect("text");
        metrics
            .lines()
            .filter(|line| line.starts_with("stockwire_rate_limited_total{"))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let before = rate_limited();
    // Nothing is written to an idle stream before its first keep-alive, so
    // the first try is refused; a bounded number of tries later one opens.
    let mut refused = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ureq::get(&server.url("/v1/events/stream"))
            .timeout(Duration::from_secs(5))
            .call()
        {
            Ok(response) => {
                assert_eq!(response.status(), 200);
                break;
            }
            Err(ureq::Error::Status(429, response)) => {
                assert!(response.header("retry-after").is_some());
                refused += 1;
            }
            Err(error) => panic!("{error}"),
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was never given back"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(refused >= 1, "the slot was free at once");
    assert_eq!(rate_limited() - before, refused);
}
