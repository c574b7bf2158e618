//! Access control over real HTTP (SPEC §3): every route × every role, the
//! channel key's partner view, rate limits per key, per-key idempotency, the
//! SSE allowance per key. (The audit log is checked in ops.rs.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{call, rand_suffix, Server, BASE_CONFIG};

const KEYS: &str = r#"
[[keys]]
name = "ops-admin"
key = "admin-secret"
role = "admin"
rate_limit = { per_second = 100000, burst = 100000 }

[[keys]]
name = "shop"
key = "web-secret"
role = "channel"
channel = "web"
rate_limit = { per_second = 100000, burst = 100000 }

[[keys]]
name = "wms-east"
key_sha256 = "HASH_OF_SYSTEM_SECRET"
role = "system"
locations = ["wh-east"]
sources = ["wms"]
rate_limit = { per_second = 100000, burst = 100000 }

[[keys]]
name = "grafana"
key = "observer-secret"
role = "observer"
rate_limit = { per_second = 100000, burst = 100000 }

[[keys]]
name = "slow"
key = "slow-secret"
role = "channel"
channel = "marketplace"
rate_limit = { per_second = 1, burst = 3 }
"#;

const ADMIN: &str = "admin-secret";
const CHANNEL: &str = "web-secret";
const SYSTEM: &str = "system-secret";
const OBSERVER: &str = "observer-secret";

fn sha256_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

fn start() -> Server {
    let keys = KEYS.replace("HASH_OF_SYSTEM_SECRET", &sha256_hex(SYSTEM));
    let base = format!("sse_connections_per_key_max = 2\n{BASE_CONFIG}");
    Server::start_with_base(&base, &keys).with_token(ADMIN)
}

/// One call as `token` (`None`: no Authorization header).
fn send(
    server: &Server,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let mut request = ureq::request(method, &server.url(path));
    if let Some(token) = token {
        request = request.set("authorization", &format!("Bearer {token}"));
    }
    call(request, body.cloned())
}

fn reserve(server: &Server, id: &str, channel: &str, location: &str) {
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"reservation_id": id, "channel": channel,
               "lines": [{"sku": "acc-1", "location": location, "qty": 1}]}),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn every_route_answers_each_role_as_the_contract_says() {
    let server = start();
    server.receive("acc-1", "wh-east", 100);
    server.receive("acc-1", "wh-west", 100);
    let s = rand_suffix();
    // One fresh reservation per role for each transition, so each call finds it held.
    let ids =
        |what: &str| -> Vec<String> { (0..4).map(|role| format!("{what}-{role}-{s}")).collect() };
    let (releases, allocates, ships) = (ids("rel"), ids("alloc"), ids("ship"));
    for id in releases.iter().chain(&allocates).chain(&ships) {
        reserve(&server, id, "web", "wh-east");
    }
    let west = format!("west-{s}");
    reserve(&server, &west, "marketplace", "wh-west");
    for id in &ships {
        let (status, body) = server.post(&format!("/v1/reservations/{id}/allocate"), json!({}));
        assert_eq!(status, 200, "{body}");
    }

    let tokens = [Some(ADMIN), Some(CHANNEL), Some(SYSTEM), Some(OBSERVER)];
    let event = |location: &str| {
        json!({"events": [{"event_id": format!("ev-{location}-{}", rand_suffix()), "type": "receipt",
                           "source": "wms", "sku": "acc-1", "location": location, "qty": 1}]})
    };
    let reservation = |channel: &str| json!({"channel": channel, "lines": [{"sku": "acc-1", "location": "wh-east", "qty": 1}]});
    // (method, path, body, expected status for admin, channel(web), system(wh-east), observer)
    type Row = (&'static str, String, Option<Value>, [u16; 4]);
    let mut rows: Vec<Row> = vec![
        ("GET", "/healthz".into(), None, [200, 200, 200, 200]),
        ("GET", "/readyz".into(), None, [200, 200, 200, 200]),
        ("GET", "/metrics".into(), None, [200, 200, 200, 200]),
        ("GET", "/v1/openapi.json".into(), None, [200, 200, 200, 200]),
        (
            "GET",
            "/v1/availability/acc-1".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/availability/acc-1?channel=web".into(),
            None,
            [200, 200, 200, 200],
        ),
        (
            "GET",
            "/v1/availability/acc-1?channel=marketplace".into(),
            None,
            [200, 403, 200, 200],
        ),
        (
            "POST",
            "/v1/availability/query".into(),
            Some(json!({"skus": ["acc-1"]})),
            [200, 200, 200, 200],
        ),
        (
            "POST",
            "/v1/availability/query".into(),
            Some(json!({"skus": ["acc-1"], "channel": "marketplace"})),
            [200, 403, 200, 200],
        ),
        (
            "POST",
            "/v1/reservations".into(),
            Some(reservation("web")),
            [201, 201, 403, 403],
        ),
        (
            "POST",
            "/v1/reservations".into(),
            Some(reservation("marketplace")),
            [201, 403, 403, 403],
        ),
        (
            "GET",
            format!("/v1/reservations/{}", releases[0]),
            None,
            [200, 200, 200, 200],
        ),
        (
            "GET",
            format!("/v1/reservations/{west}"),
            None,
            [200, 403, 403, 200],
        ),
        (
            "POST",
            format!("/v1/reservations/{west}/release"),
            Some(json!({})),
            [0, 403, 403, 403],
        ),
        (
            "POST",
            format!("/v1/reservations/{west}/allocate"),
            Some(json!({})),
            [0, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/events".into(),
            Some(event("wh-east")),
            [200, 403, 200, 403],
        ),
        (
            "POST",
            "/v1/events".into(),
            Some(event("wh-west")),
            [200, 403, 403, 403],
        ),
        (
            "GET",
            "/v1/events?limit=5".into(),
            None,
            [200, 403, 403, 200],
        ),
        ("GET", "/v1/exceptions".into(), None, [200, 403, 403, 200]),
        ("GET", "/v1/channels".into(), None, [200, 200, 403, 200]),
        ("GET", "/v1/channels/web".into(), None, [200, 200, 403, 200]),
        (
            "GET",
            "/v1/channels/marketplace".into(),
            None,
            [200, 403, 403, 200],
        ),
        // `web` has no sink: an admin gets 409, everyone else is refused first.
        (
            "POST",
            "/v1/channels/web/pause".into(),
            Some(json!({})),
            [409, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/channels/web/resume".into(),
            Some(json!({})),
            [409, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/channels/web/resync".into(),
            Some(json!({})),
            [409, 403, 403, 403],
        ),
        (
            "POST",
            "/v1/channels/web/replay".into(),
            Some(json!({"from_seq": 1})),
            [409, 403, 403, 403],
        ),
        (
            "GET",
            "/v1/channels/web/published?sku=acc-1".into(),
            None,
            [200, 200, 403, 200],
        ),
        (
            "GET",
            "/v1/channels/marketplace/published?sku=acc-1".into(),
            None,
            [200, 403, 403, 200],
        ),
        (
            "PUT",
            "/v1/positions/acc-1/wh-east/settings".into(),
            Some(json!({"safety_stock": 0})),
            [200, 403, 403, 403],
        ),
        (
            "PUT",
            "/v1/positions/acc-1/wh-east/commitments/web".into(),
            Some(json!({"qty": 0})),
            [200, 403, 403, 403],
        ),
    ];
    // Transitions: each role on its own held reservation (channel web, wh-east).
    for (role, expected) in [200u16, 200, 403, 403].into_iter().enumerate() {
        rows.push((
            "POST",
            format!("/v1/reservations/{}/release", releases[role]),
            None,
            {
                let mut e = [0; 4];
                e[role] = expected;
                e
            },
        ));
    }
    for (role, expected) in [200u16, 200, 200, 403].into_iter().enumerate() {
        let mut e = [0; 4];
        e[role] = expected;
        rows.push((
            "POST",
            format!("/v1/reservations/{}/allocate", allocates[role]),
            None,
            e,
        ));
        rows.push((
            "POST",
            format!("/v1/reservations/{}/ship", ships[role]),
            None,
            e,
        ));
    }

    for (method, path, body, expected) in &rows {
        for (role, token) in tokens.iter().enumerate() {
            if expected[role] == 0 {
                continue;
            }
            let (status, answer) = send(&server, *token, method, path, body.as_ref());
            assert_eq!(
                status, expected[role],
                "{method} {path} as {token:?}: {answer}"
            );
            if status == 403 {
                assert_eq!(answer["code"], "forbidden", "{answer}");
            }
        }
        let open = path == "/healthz"
            || path == "/readyz"
            || path == "/metrics"
            || path == "/v1/openapi.json";
        for token in [None, Some("not-a-key")] {
            let (status, answer) = send(&server, token, method, path, body.as_ref());
            if open {
                assert_eq!(status, 200, "{method} {path} without a key: {answer}");
            } else {
                assert_eq!(status, 401, "{method} {path} with {token:?}: {answer}");
                assert_eq!(answer["code"], "unauthorized", "{answer}");
            }
        }
    }

    // Percent-encoded paths are routed decoded: they meet the same policy.
    for (method, path) in [
        ("PUT", "/v1/positions/acc-1/wh-east/%73ettings"),
        ("POST", "/v1/channels/web/pau%73e"),
        ("GET", "/v1/%65vents?after=0"),
        ("GET", "/v1/exc%65ptions"),
    ] {
        let body = (method != "GET").then(|| json!({"safety_stock": 0}));
        let (status, answer) = send(&server, None, method, path, body.as_ref());
        assert_eq!(status, 401, "{method} {path} without a key: {answer}");
        let (status, answer) = send(&server, Some(CHANNEL), method, path, body.as_ref());
        assert_eq!(status, 403, "{method} {path} as a channel: {answer}");
    }
    let (status, _) = send(&server, Some(OBSERVER), "GET", "/v1/%65vents?after=0", None);
    assert_eq!(status, 200);

    // A system key with `sources` posts only as them.
    let spoofed = json!({"events": [{"event_id": format!("spoof-{s}"), "type": "receipt",
        "source": "erp", "sku": "acc-1", "location": "wh-east", "qty": 1}]});
    let (status, answer) = send(&server, Some(SYSTEM), "POST", "/v1/events", Some(&spoofed));
    assert_eq!(status, 403, "{answer}");
    let snapshot = json!({"source": "erp", "positions": [{"sku": "acc-1", "location": "wh-east", "on_hand": 1}]});
    let (status, answer) = send(
        &server,
        Some(SYSTEM),
        "POST",
        "/v1/reconciliations",
        Some(&snapshot),
    );
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = send(
        &server,
        Some(ADMIN),
        "POST",
        "/v1/reconciliations",
        Some(&snapshot),
    );
    assert_eq!(status, 200, "{answer}");

    // The event stream: readers only.
    for (token, expected) in [
        (Some(ADMIN), 200),
        (Some(OBSERVER), 200),
        (Some(CHANNEL), 403),
        (Some(SYSTEM), 403),
        (None, 401),
    ] {
        let mut request =
            ureq::get(&server.url("/v1/events/stream")).timeout(Duration::from_secs(5));
        if let Some(token) = token {
            request = request.set("authorization", &format!("Bearer {token}"));
        }
        let status = match request.call() {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(status, _)) => status,
            Err(error) => panic!("stream: {error}"),
        };
        assert_eq!(status, expected, "stream as {token:?}");
    }
}

#[test]
fn a_channel_key_sees_only_its_own_view() {
    let server = start();
    server.receive("view-1", "wh-east", 40);
    server.receive("view-1", "wh-west", 2);
    let (status, view) = send(
        &server,
        Some(CHANNEL),
        "GET",
        "/v1/availability/view-1",
        None,
    );
    assert_eq!(status, 200, "{view}");
    let mut fields: Vec<&str> = view
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        ["available", "channel", "locations", "sku"],
        "{view}"
    );
    assert_eq!(view["channel"], "web");
    assert_eq!(view["available"], 42);
    for location in view["locations"].as_array().unwrap() {
        let mut fields: Vec<&str> = location
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        fields.sort_unstable();
        assert_eq!(fields, ["available", "location"], "{view}");
    }
    let (status, query) = send(
        &server,
        Some(CHANNEL),
        "POST",
        "/v1/availability/query",
        Some(&json!({"skus": ["view-1"]})),
    );
    assert_eq!(status, 200, "{query}");
    assert_eq!(query["items"][0]["channel"], "web", "{query}");
    assert!(query["items"][0].get("total").is_none(), "{query}");
    assert!(!query.to_string().contains("on_hand"), "{query}");
    // Its channel list holds only itself.
    let (status, list) = send(&server, Some(CHANNEL), "GET", "/v1/channels", None);
    assert_eq!(status, 200);
    let ids: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web"]);
    // The full view is the admin's.
    let (_, full) = server.get("/v1/availability/view-1");
    assert_eq!(full["total"]["on_hand"], 42, "{full}");
}

#[test]
fn over_its_rate_limit_a_key_gets_429_and_other_keys_do_not() {
    let server = start();
    server.receive("rl-1", "wh-east", 10);
    let mut limited = None;
    let mut ok = 0;
    // Burst 3 at 1/s: within 10 quick calls some must be refused.
    for _ in 0..10 {
        let request = ureq::get(&server.url("/v1/availability/rl-1"))
            .set("authorization", "Bearer slow-secret");
        match request.call() {
            Ok(_) => ok += 1,
            Err(ureq::Error::Status(429, response)) => {
                let retry_after: u64 = response
                    .header("retry-after")
                    .expect("Retry-After")
                    .parse()
                    .expect("seconds");
                assert!((1..=2).contains(&retry_after), "Retry-After {retry_after}");
                let body: Value = response.into_json().expect("problem");
                assert_eq!(body["code"], "rate_limited", "{body}");
                limited = Some(body);
            }
            Err(error) => panic!("{error}"),
        }
        // Other keys are not slowed down by it.
        let (status, _) = send(&server, Some(CHANNEL), "GET", "/v1/availability/rl-1", None);
        assert_eq!(status, 200);
    }
    assert!(limited.is_some(), "no 429 in 10 calls with burst 3");
    assert!(
        (3..=5).contains(&ok),
        "{ok} calls passed with a burst of 3 at 1/s"
    );
    let (_, _) = server.get("/healthz");
    let metrics = ureq::get(&server.url("/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("stockwire_rate_limited_total{key=\"slow\"}"))
        .expect("rate-limited series for the key");
    let count: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= 1.0, "{line}");
    assert!(!metrics.contains("slow-secret"));
    // After a second the bucket has refilled.
    std::thread::sleep(Duration::from_millis(1100));
    let (status, _) = send(
        &server,
        Some("slow-secret"),
        "GET",
        "/v1/availability/rl-1",
        None,
    );
    assert_eq!(status, 200);
}

#[test]
fn idempotency_keys_belong_to_the_key_that_used_them() {
    let server = start();
    server.receive("idem-acc", "wh-east", 10);
    let body =
        json!({"channel": "web", "lines": [{"sku": "idem-acc", "location": "wh-east", "qty": 1}]});
    let post = |token: &str| {
        let request = ureq::post(&server.url("/v1/reservations"))
            .set("authorization", &format!("Bearer {token}"))
            .set("idempotency-key", "same-key");
        call(request, Some(body.clone()))
    };
    let (first, a) = post(CHANNEL);
    let (again, b) = post(CHANNEL);
    assert_eq!((first, again), (201, 201));
    assert_eq!(a["reservation_id"], b["reservation_id"]);
    // The admin's use of the same header value is its own request, not a replay.
    let (status, c) = post(ADMIN);
    assert_eq!(status, 201, "{c}");
    assert_ne!(a["reservation_id"], c["reservation_id"]);
}

#[test]
fn a_key_holds_at_most_its_share_of_event_streams() {
    let server = start();
    let open = |token: &str| -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        write!(
            stream,
            "GET /v1/events/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        .unwrap();
        stream
    };
    let status_of = |stream: &mut TcpStream| -> String {
        let mut buf = [0u8; 64];
        let n = stream.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let mut first = open(OBSERVER);
    let mut second = open(OBSERVER);
    assert!(status_of(&mut first).contains("200"));
    assert!(status_of(&mut second).contains("200"));
    let mut third = open(OBSERVER);
    assert!(
        status_of(&mut third).contains("429"),
        "a third stream for one key"
    );
    // Another key still gets one.
    let mut other = open(ADMIN);
    assert!(status_of(&mut other).contains("200"));
    // Closing one frees its slot.
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut stream = open(OBSERVER);
        if status_of(&mut stream).contains("200") {
            again = Some(stream);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(again.is_some(), "the freed slot was never given back");
}

#[test]
fn protect_metrics_puts_metrics_behind_a_reader_key() {
    let keys = KEYS.replace("HASH_OF_SYSTEM_SECRET", &sha256_hex(SYSTEM));
    let base = format!("protect_metrics = true\n{BASE_CONFIG}");
    let server = Server::start_with_base(&base, &keys);
    let (status, answer) = send(&server, None, "GET", "/metrics", None);
    assert_eq!(status, 401, "{answer}");
    let (status, _) = send(&server, Some(CHANNEL), "GET", "/metrics", None);
    assert_eq!(status, 403);
    let (status, _) = send(&server, Some(SYSTEM), "GET", "/metrics", None);
    assert_eq!(status, 403);
    for token in [ADMIN, OBSERVER] {
        let response = ureq::get(&server.url("/metrics"))
            .set("authorization", &format!("Bearer {token}"))
            .call()
            .expect("metrics");
        assert_eq!(response.status(), 200);
        assert!(response.into_string().unwrap().contains("stockwire_ready"));
    }
    // Liveness and readiness stay open.
    assert_eq!(send(&server, None, "GET", "/healthz", None).0, 200);
    assert_eq!(send(&server, None, "GET", "/readyz", None).0, 200);
}

/// Sends one keep-alive request on `stream` and says whether an answer came
/// within `wait`.
fn answered(stream: &mut TcpStream, wait: Duration) -> bool {
    stream.set_read_timeout(Some(wait)).unwrap();
    if stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(stream.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200"))
}

#[test]
fn open_connections_are_capped_and_the_next_one_waits_its_turn() {
    let base = format!("connections_max = 2\n{BASE_CONFIG}");
    let server = Server::start_with_base(&base, "");
    // The server splits the cap over one worker per CPU, at least one each.
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let allowed = 2usize.div_ceil(workers).max(1) * workers;
    let mut held: Vec<TcpStream> = (0..allowed)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            assert!(
                answered(&mut stream, Duration::from_secs(5)),
                "within the cap"
            );
            stream
        })
        .collect();
    // One more is accepted by the kernel but not served while the others stay open.
    let mut waiting = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    assert!(
        !answered(&mut waiting, Duration::from_millis(1500)),
        "a connection over connections_max was served"
    );
    // Closing one lets it in.
    held.pop();
    let mut buf = [0u8; 512];
    waiting
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let n = waiting.read(&mut buf).unwrap_or(0);
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "the waiting request was never answered"
    );
}
