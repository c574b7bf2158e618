//! Channel publication (SPEC §2 "Channel publication", §4): webhook and file
//! sinks against a real server, with a test webhook receiver on loopback that
//! can answer 200, answer 500 or hang. Signatures, policy values, coalescing,
//! outages (failing and hanging endpoints), pause/resume, resync, dead letters
//! and replay, a kill -9 in the middle of an outage, EDI 846 and CSV feed
//! files, the publication ledger and bad input.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{call, head, metric, rand_suffix, texts, Server};

/// How long any wait for convergence may take on a noisy machine.
pub(crate) const CONVERGE: Duration = Duration::from_secs(30);

/// How long a "wait until it shows" may take.
pub(crate) const SHOWS: Duration = Duration::from_secs(20);

pub(crate) const SECRET: &str = "test-secret-0123";

// ---------------------------------------------------------------------------------------
// A webhook receiver on 127.0.0.1:0
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// 200.
    Ok,
    /// 500.
    Fail,
    /// Read the request, answer nothing for `hang`, then drop the connection.
    Hang,
}

/// One request the receiver read.
#[derive(Debug, Clone)]
struct Post {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Answered 200 (the sender saw a success, unless it gave up first).
    acked: bool,
}

impl Post {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "webhook body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// `(sku, available, seq)` of every update.
    fn updates(&self) -> Vec<(String, u64, u64)> {
        updates_of(&self.json())
    }
}

/// `(sku, available, seq)` of each update of a sink's JSON body (webhook, nats).
pub(crate) fn updates_of(body: &Value) -> Vec<(String, u64, u64)> {
    body["updates"]
        .as_array()
        .unwrap_or_else(|| panic!("no updates in {body}"))
        .iter()
        .map(|u| {
            (
                u["sku"].as_str().expect("sku").to_string(),
                u["available"].as_u64().expect("available"),
                u["seq"].as_u64().expect("seq"),
            )
        })
        .collect()
}

struct Shared {
    mode: Mutex<Mode>,
    posts: Mutex<Vec<Post>>,
    stop: AtomicBool,
    hang: Duration,
    /// Close each connection this long after answering (an idle keep-alive timeout).
    close_after: Mutex<Option<Duration>>,
}

pub(crate) struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Receiver {
    /// A receiver that answers 200 to every post.
    pub(crate) fn ok() -> Receiver {
        Receiver::start(Mode::Ok, Duration::from_secs(1))
    }

    /// A receiver whose `Hang` mode holds a request for `hang` before dropping it.
    fn start(mode: Mode, hang: Duration) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            posts: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
            hang,
            close_after: Mutex::new(None),
        });
        let accepting = shared.clone();
        let accept = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if accepting.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(stream) = stream {
                    let shared = accepting.clone();
                    std::thread::spawn(move || serve(stream, &shared));
                }
            }
        });
        Receiver {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn posts(&self) -> Vec<Post> {
        self.shared.posts.lock().unwrap().clone()
    }

    fn acked(&self) -> Vec<Post> {
        self.posts().into_iter().filter(|p| p.acked).collect()
    }

    /// The last acknowledged value of each SKU, with its seq.
    fn last_values(&self) -> HashMap<String, (u64, u64)> {
        let mut last = HashMap::new();
        for post in self.acked() {
            for (sku, available, seq) in post.updates() {
                last.insert(sku, (available, seq));
            }
        }
        last
    }

    /// Acknowledged deliveries of `sku`, in order: `(available, seq)`.
    fn deliveries_of(&self, sku: &str) -> Vec<(u64, u64)> {
        self.acked()
            .iter()
            .flat_map(|p| p.updates())
            .filter(|(s, ..)| s == sku)
            .map(|(_, available, seq)| (available, seq))
            .collect()
    }

    /// Every post (acknowledged or not) is a well-formed, correctly signed
    /// publication for `channel`.
    fn check_every_post(&self, channel: &str) {
        let posts = self.posts();
        for post in &posts {
            assert_eq!(post.path, format!("/hook/{channel}"));
            assert_eq!(
                post.header("content-type"),
                Some("application/json"),
                "{post:?}"
            );
            let expected = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &post.body));
            assert_eq!(
                post.header("x-stockwire-signature"),
                Some(expected.as_str()),
                "signature of {:?}",
                String::from_utf8_lossy(&post.body)
            );
            let body = post.json();
            let object = body.as_object().expect("an object");
            assert_eq!(
                object.keys().collect::<Vec<_>>(),
                ["channel", "updates"],
                "{body}"
            );
            assert_eq!(body["channel"], channel, "{body}");
            let updates = body["updates"].as_array().expect("updates");
            assert!(!updates.is_empty(), "an empty batch was posted: {body}");
            for update in updates {
                let keys: Vec<&String> = update.as_object().expect("an object").keys().collect();
                assert_eq!(keys, ["at", "available", "seq", "sku"], "{update}");
                assert!(update["sku"].is_string(), "{update}");
                assert!(update["available"].is_u64(), "{update}");
                assert!(update["seq"].as_u64().is_some_and(|s| s > 0), "{update}");
                let at = update["at"].as_str().expect("at");
                assert!(
                    at.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(at).is_ok(),
                    "at {at:?} is not RFC 3339 UTC"
                );
            }
        }
    }

    /// Acknowledged deliveries of each SKU come in non-decreasing `seq` order.
    fn check_seq_order(&self) {
        let mut last: HashMap<String, u64> = HashMap::new();
        for post in self.acked() {
            for (sku, available, seq) in post.updates() {
                let before = last.insert(sku.clone(), seq).unwrap_or(0);
                assert!(
                    seq >= before,
                    "{sku}: seq {seq} (available {available}) delivered after seq {before}"
                );
            }
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// A request's head: its length in bytes, path, headers and body length.
struct Head {
    len: usize,
    path: String,
    headers: Vec<(String, String)>,
    content_length: usize,
}

/// The head of the first request in `buf`, once `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Option<Head> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let text = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let mut headers = Vec::new();
    let mut length = 0;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim().to_string(), value.trim().to_string());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            }
            assert!(
                !name.eq_ignore_ascii_case("transfer-encoding"),
                "the test receiver only reads Content-Length bodies"
            );
            headers.push((name, value));
        }
    }
    Some(Head {
        len: end + 4,
        path,
        headers,
        content_length: length,
    })
}

/// One connection, HTTP/1.1 keep-alive: requests are read one after the other.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        while let Some(Head {
            len: head,
            path,
            headers,
            content_length: length,
        }) = parse_head(&buf)
        {
            if buf.len() < head + length {
                break;
            }
            let body = buf[head..head + length].to_vec();
            buf.drain(..head + length);
            let mode = *shared.mode.lock().unwrap();
            shared.posts.lock().unwrap().push(Post {
                path,
                headers,
                body,
                acked: mode == Mode::Ok,
            });
            let answer: &[u8] = match mode {
                Mode::Ok => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
                Mode::Fail => b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\ncontent-length: 4\r\n\r\nfail",
                Mode::Hang => {
                    let until = Instant::now() + shared.hang;
                    while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    return;
                }
            };
            if stream
                .write_all(answer)
                .and_then(|_| stream.flush())
                .is_err()
            {
                return;
            }
            let close_after = *shared.close_after.lock().unwrap();
            if let Some(idle) = close_after {
                std::thread::sleep(idle);
                return;
            }
        }
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// HMAC-SHA256, computed here independently of the server's code.
pub(crate) fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

// ---------------------------------------------------------------------------------------
// Servers, channels and what they report
// ---------------------------------------------------------------------------------------

const LOCATIONS: &str = r#"
[[locations]]
id = "wh-east"
kind = "warehouse"
name = "East"

[[locations]]
id = "wh-west"
kind = "warehouse"
name = "West"

[[locations]]
id = "3pl-north"
kind = "3pl"
name = "North"
"#;

/// A server with `top` (top-level keys) and `channels` (`[[channels]]` tables).
pub(crate) fn start(top: &str, channels: &str) -> Server {
    let base = format!(
        "durability = \"wal\"\ndefault_ttl_seconds = 900\nsnapshot_interval_seconds = 3600\n\
         drift_check_seconds = 1\n{top}\n{LOCATIONS}\n{channels}\n"
    );
    Server::start_with_base(&base, "")
}

/// A `[[channels]]` table with a webhook sink to `receiver`'s `/hook/{id}`.
pub(crate) fn webhook_channel(id: &str, receiver: &Receiver, policy: &str, sink: &str) -> String {
    format!(
        "[[channels]]\nid = \"{id}\"\nlocations = [\"wh-east\", \"wh-west\"]\n{policy}\n\
         sink = {{ kind = \"webhook\", url = \"{}\", secret = \"{SECRET}\", {sink} }}\n",
        receiver.url(&format!("/hook/{id}"))
    )
}

/// The publication policy, as the test computes it (SPEC §7).
#[derive(Debug, Clone, Copy)]
struct Policy {
    buffer: u64,
    share: u64,
    cap: Option<u64>,
    min_publish: u64,
}

impl Policy {
    const PLAIN: Policy = Policy {
        buffer: 0,
        share: 100,
        cap: None,
        min_publish: 0,
    };

    fn apply(&self, view: i64) -> u64 {
        if view <= 0 {
            return 0;
        }
        let view = view as u64;
        let v = view
            .saturating_sub(self.buffer)
            .min(view * self.share / 100)
            .min(self.cap.unwrap_or(u64::MAX));
        if v < self.min_publish {
            0
        } else {
            v
        }
    }
}

pub(crate) fn report(server: &Server, channel: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/channels/{channel}"));
    assert_eq!(status, 200, "{body}");
    body
}

pub(crate) fn published(server: &Server, channel: &str, sku: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/channels/{channel}/published?sku={sku}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The engine's (unpolicied) view of `sku` for `channel`, from the availability route.
fn engine_view(server: &Server, sku: &str, channel: &str) -> i64 {
    let (status, body) = server.get(&format!("/v1/availability/{sku}"));
    assert_eq!(status, 200, "{body}");
    body["channels"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["channel"] == channel))
        .and_then(|c| c["available"].as_i64())
        .unwrap_or_else(|| panic!("no channel {channel} in {body}"))
}

fn post_events(server: &Server, events: Vec<Value>) {
    let (status, body) = server.post("/v1/events", json!({ "events": events }));
    assert_eq!(status, 200, "{body}");
    for result in body["results"].as_array().expect("results") {
        assert_eq!(result["status"], "applied", "{body}");
    }
}

fn receipt(sku: &str, location: &str, qty: u64) -> Value {
    json!({"event_id": format!("rcv-{sku}-{}", rand_suffix()), "type": "receipt",
           "source": "wms", "sku": sku, "location": location, "qty": qty})
}

fn adjustment(sku: &str, location: &str, delta: i64) -> Value {
    json!({"event_id": format!("adj-{sku}-{}", rand_suffix()), "type": "adjustment",
           "source": "wms", "sku": sku, "location": location, "delta": delta,
           "reason": "damage"})
}

/// Reserves `qty` of `sku` at `location` for `channel`; the answer must come within a second.
pub(crate) fn reserve_quickly(server: &Server, channel: &str, sku: &str, location: &str, qty: u64) {
    let started = Instant::now();
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": channel, "lines": [{"sku": sku, "location": location, "qty": qty}]}),
    );
    let took = started.elapsed();
    assert_eq!(status, 201, "{body}");
    assert!(
        took < Duration::from_secs(1),
        "a reservation took {took:?} while the channel's endpoint was out"
    );
}

/// Waits until `channel` has nothing pending, the ledger is in sync for every SKU of
/// `skus` at the engine's current value, and (with a receiver) the receiver's last
/// acknowledged value of each SKU is that value. Returns the current values.
pub(crate) fn wait_converged(
    server: &Server,
    channel: &str,
    receiver: Option<&Receiver>,
    skus: &[String],
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + CONVERGE;
    let mut why = String::new();
    while Instant::now() < deadline {
        match converged(server, channel, receiver, skus) {
            Ok(values) => return values,
            Err(reason) => why = reason,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "channel {channel} did not converge within {CONVERGE:?}: {why}\nreport: {}",
        report(server, channel)
    );
}

fn converged(
    server: &Server,
    channel: &str,
    receiver: Option<&Receiver>,
    skus: &[String],
) -> Result<BTreeMap<String, u64>, String> {
    let status = report(server, channel);
    if status["pending"] != 0 {
        return Err(format!("pending {}", status["pending"]));
    }
    let last = receiver.map(Receiver::last_values).unwrap_or_default();
    let mut values = BTreeMap::new();
    for sku in skus {
        let ledger = published(server, channel, sku);
        let current = ledger["current"].as_u64().expect("current");
        if ledger["in_sync"] != true {
            return Err(format!("not in sync: {ledger}"));
        }
        let acknowledged = ledger["available"].as_u64();
        if acknowledged.unwrap_or(0) != current || (acknowledged.is_none() && current != 0) {
            return Err(format!("ledger behind: {ledger}"));
        }
        if receiver.is_some() {
            let received = last.get(sku.as_str()).map(|(available, _)| *available);
            if received.unwrap_or(0) != current || (received.is_none() && current != 0) {
                return Err(format!(
                    "receiver has {received:?} for {sku}, current is {current}"
                ));
            }
            if let (Some((_, seq)), Some(ledger_seq)) =
                (last.get(sku.as_str()), ledger["seq"].as_u64())
            {
                if *seq != ledger_seq {
                    return Err(format!("receiver's seq {seq} for {sku}, ledger's {ledger}"));
                }
            }
        }
        values.insert(sku.clone(), current);
    }
    Ok(values)
}

/// Polls `check` until it returns `Some` or `limit` passes.
pub(crate) fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn skus(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Signed, well-formed posts carrying the policy's numbers: buffer, share, cap and
/// min_publish each decide one SKU; another channel's commitment, an oversold
/// location and a location outside the channel are accounted for.
#[test]
fn webhook_posts_are_signed_and_carry_the_policy_values() {
    // The HMAC used to check signatures, against RFC 4231 test case 2, and the
    // server library's own signer against it.
    let rfc4231 = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    assert_eq!(
        hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
        rfc4231
    );
    assert_eq!(
        stockwire::channels::sink::signature("Jefe", b"what do ya want for nothing?"),
        format!("sha256={rfc4231}")
    );

    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let policy = Policy {
        buffer: 5,
        share: 40,
        cap: Some(30),
        min_publish: 2,
    };
    let channels = format!(
        "{}\n[[channels]]\nid = \"other\"\nlocations = [\"wh-west\", \"wh-east\"]\n",
        webhook_channel(
            "mp",
            &receiver,
            "buffer = 5\nmax_share_pct = 40\ncap = 30\nmin_publish = 2\ncoalesce_ms = 50",
            "timeout_ms = 2000, max_attempts = 5, backoff_ms = 50, backoff_max_ms = 200",
        )
    );
    let server = start("", &channels);

    // Phase 1, receipts only.
    // sku-a: 100 -> min(95, 40, 30) = 30 (cap); 3pl-north is not the channel's.
    post_events(
        &server,
        vec![
            receipt("sku-a", "wh-east", 100),
            receipt("sku-a", "3pl-north", 50),
        ],
    );
    // sku-b: 10 -> min(5, 4, 30) = 4 (share).
    server.receive("sku-b", "wh-east", 10);
    // sku-c: 6 -> min(1, 2, 30) = 1 < min_publish -> 0.
    server.receive("sku-c", "wh-west", 6);
    // sku-d: 20 + 30 over two locations -> min(45, 20, 30) = 20.
    post_events(
        &server,
        vec![
            receipt("sku-d", "wh-east", 20),
            receipt("sku-d", "wh-west", 30),
        ],
    );
    // sku-e: 8 -> min(3, 3, 30) = 3 (buffer and share agree).
    server.receive("sku-e", "wh-west", 8);
    // sku-f: 100 -> 30; sku-g: 60 -> 24; sku-h: 60 -> 24; sku-i: 40 -> 16.
    post_events(
        &server,
        vec![
            receipt("sku-f", "wh-east", 100),
            receipt("sku-g", "wh-east", 50),
            receipt("sku-g", "wh-west", 10),
            receipt("sku-h", "wh-east", 60),
            receipt("sku-i", "wh-east", 10),
            receipt("sku-i", "wh-west", 30),
        ],
    );
    let all: Vec<String> = [
        "sku-a", "sku-b", "sku-c", "sku-d", "sku-e", "sku-f", "sku-g", "sku-h", "sku-i",
    ]
    .map(String::from)
    .to_vec();
    let expected = |values: &[u64]| -> BTreeMap<String, u64> {
        all.iter().cloned().zip(values.iter().copied()).collect()
    };
    let values = wait_converged(&server, "mp", Some(&receiver), &all);
    assert_eq!(values, expected(&[30, 4, 0, 20, 3, 30, 24, 24, 16]));

    // Phase 2: holds, commitments, settings and an oversold position change the views.
    let put = |path: &str, body: Value| {
        let (status, answer) = server.put(path, body);
        assert_eq!(status, 200, "{path}: {answer}");
    };
    // sku-b: safety stock 2 -> 8 -> min(3, 3, 30) = 3.
    put(
        "/v1/positions/sku-b/wh-east/settings",
        json!({"safety_stock": 2}),
    );
    // sku-f: 60 committed to "other" -> view 40 -> min(35, 16, 30) = 16.
    put(
        "/v1/positions/sku-f/wh-east/commitments/other",
        json!({"qty": 60}),
    );
    // sku-g: wh-west oversold (-5) counts 0 -> view 50 -> min(45, 20, 30) = 20.
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "other", "lines": [{"sku": "sku-g", "location": "wh-west", "qty": 10}]}),
    );
    assert_eq!(status, 201, "{body}");
    post_events(&server, vec![adjustment("sku-g", "wh-west", -5)]);
    // sku-h: 40 committed to mp, 15 to "other" -> 40 + (60 - 55) = 45 -> min(40, 18, 30) = 18.
    put(
        "/v1/positions/sku-h/wh-east/commitments/mp",
        json!({"qty": 40}),
    );
    put(
        "/v1/positions/sku-h/wh-east/commitments/other",
        json!({"qty": 15}),
    );
    // sku-i: "other" holds 20 of wh-east's 10 -> that location counts 0 -> 30 -> 12.
    put(
        "/v1/positions/sku-i/wh-east/commitments/other",
        json!({"qty": 20}),
    );
    let values = wait_converged(&server, "mp", Some(&receiver), &all);
    let expected = expected(&[30, 3, 0, 20, 3, 16, 20, 18, 12]);
    assert_eq!(values, expected);

    // The engine's own view, through the policy, agrees.
    for (sku, value) in &expected {
        assert_eq!(
            policy.apply(engine_view(&server, sku, "mp")),
            *value,
            "{sku}"
        );
    }

    // Phase 3: a hold that expires is published, and so is its expiry.
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "mp", "ttl_seconds": 3,
               "lines": [{"sku": "sku-d", "location": "wh-east", "qty": 10}]}),
    );
    assert_eq!(status, 201, "{body}");
    // 40 -> min(35, 16, 30) = 16, then back to 20.
    wait_for("the held value delivered", SHOWS, || {
        receiver
            .deliveries_of("sku-d")
            .iter()
            .any(|(available, _)| *available == 16)
            .then_some(())
    });
    wait_for("the hold expired", SHOWS, || {
        (engine_view(&server, "sku-d", "mp") == 50).then_some(())
    });
    let values = wait_converged(&server, "mp", Some(&receiver), &all);
    assert_eq!(values, expected);
    let held: Vec<u64> = receiver
        .deliveries_of("sku-d")
        .iter()
        .map(|d| d.0)
        .collect();
    assert!(held.ends_with(&[20, 16, 20]), "{held:?}");

    receiver.check_every_post("mp");
    receiver.check_seq_order();
    // The ledger records what was acknowledged, with its seq and time.
    let last = receiver.last_values();
    let head = head(&server);
    for sku in [
        "sku-a", "sku-b", "sku-d", "sku-e", "sku-f", "sku-g", "sku-h", "sku-i",
    ] {
        let ledger = published(&server, "mp", sku);
        assert_eq!(ledger["channel"], "mp");
        assert_eq!(ledger["sku"], sku);
        assert_eq!(ledger["available"], expected[sku], "{ledger}");
        assert_eq!(ledger["current"], expected[sku], "{ledger}");
        assert_eq!(ledger["in_sync"], true, "{ledger}");
        let seq = ledger["seq"].as_u64().expect("seq");
        assert_eq!(seq, last[sku].1, "{ledger}");
        assert!(seq > 0 && seq <= head, "{ledger}");
        let at = ledger["at"].as_str().expect("at");
        assert!(chrono::DateTime::parse_from_rfc3339(at).is_ok(), "{ledger}");
    }

    let status = wait_for("cursor at the head", SHOWS, || {
        let status = report(&server, "mp");
        (status["cursor_seq"].as_u64() == Some(head)).then_some(status)
    });
    assert_eq!(status["id"], "mp");
    assert_eq!(status["sink"], "webhook");
    assert_eq!(status["state"], "healthy", "{status}");
    assert_eq!(status["pending"], 0, "{status}");
    assert_eq!(status["dlq_depth"], 0, "{status}");
    assert_eq!(status["last_error"], Value::Null, "{status}");
    assert_eq!(status["lag_seconds"], 0.0, "{status}");
    assert!(status["last_delivery_at"].is_string(), "{status}");
    let (code, list) = server.get("/v1/channels");
    assert_eq!(code, 200, "{list}");
    assert_eq!(texts(&list["channels"], "id"), ["mp", "other"]);
    assert!(
        metric(
            &server,
            "stockwire_channel_deliveries_total",
            &[("channel", "mp"), ("outcome", "delivered")]
        )
        .is_some_and(|v| v >= 1.0),
        "deliveries counted"
    );
}

/// A thousand quick changes to one SKU go out in a handful of batches, each newer than
/// the last, ending at the engine's value.
#[test]
fn quick_changes_are_coalesced_and_the_latest_value_wins() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel(
        "co",
        &receiver,
        "coalesce_ms = 500",
        "timeout_ms = 2000, max_attempts = 10, backoff_ms = 50, backoff_max_ms = 200",
    );
    let server = start("", &channels);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let url = server.url("/v1/events");

    let started = Instant::now();
    for i in 0..1000 {
        let (status, body) = call(
            agent.post(&url),
            Some(json!({"events": [{
                "event_id": format!("hot-{i}"), "type": "receipt", "source": "wms",
                "sku": "hot", "location": if i % 2 == 0 { "wh-east" } else { "wh-west" },
                "qty": 1
            }]})),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["status"], "applied", "{body}");
    }
    let values = wait_converged(&server, "co", Some(&receiver), &["hot".to_string()]);
    let elapsed = started.elapsed();
    assert_eq!(values["hot"], 1000);
    assert_eq!(engine_view(&server, "hot", "co"), 1000);

    let deliveries = receiver.deliveries_of("hot");
    // At most one batch per 500 ms (after the first), far fewer than the changes.
    let bound = (elapsed.as_secs_f64() / 0.5) as usize + 3;
    assert!(
        deliveries.len() < 100 && deliveries.len() <= bound,
        "{} deliveries of 1,000 changes in {elapsed:?}",
        deliveries.len()
    );
    // Each delivery is newer and larger than the one before: latest value wins, in order.
    for pair in deliveries.windows(2) {
        assert!(
            pair[1].1 > pair[0].1 && pair[1].0 > pair[0].0,
            "{deliveries:?}"
        );
    }
    assert_eq!(deliveries.last().map(|d| d.0), Some(1000));
    receiver.check_every_post("co");
    eprintln!(
        "coalescing: 1,000 changes in {} deliveries over {elapsed:?}",
        deliveries.len()
    );
}

/// An endpoint that fails, then hangs, while stock keeps changing: reservations stay
/// fast, the channel reports the outage, and once the endpoint is back every SKU
/// converges (also past `publish_pending_max`, with small batches).
#[test]
fn an_outage_never_blocks_reservations_and_the_channel_converges_after_it() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_millis(1200));
    let channels = format!(
        "{}\n[[channels]]\nid = \"shop\"\nlocations = [\"wh-east\", \"wh-west\"]\n",
        webhook_channel(
            "out",
            &receiver,
            "coalesce_ms = 100",
            "timeout_ms = 300, max_attempts = 100, batch_max = 10, backoff_ms = 50, \
             backoff_max_ms = 500",
        )
    );
    let server = start("publish_pending_max = 16", &channels);
    let all = skus("o", 24);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 50)).collect(),
    );
    wait_converged(&server, "out", Some(&receiver), &all);
    let delivered_before = receiver.acked().len();

    // Failing endpoint.
    receiver.set_mode(Mode::Fail);
    let (mut saw_down, mut saw_pending, mut saw_lag) = (false, false, false);
    let mut fail_error = None;
    let deadline = Instant::now() + SHOWS;
    let mut round = 0;
    while Instant::now() < deadline {
        let sku = &all[round % all.len()];
        reserve_quickly(&server, "shop", sku, "wh-east", 1);
        post_events(&server, vec![receipt(sku, "wh-west", 2)]);
        round += 1;
        let status = report(&server, "out");
        assert!(
            ["healthy", "degraded", "down"].contains(&status["state"].as_str().unwrap_or("")),
            "{status}"
        );
        saw_down |= status["state"] == "down";
        saw_pending |= status["pending"].as_u64().is_some_and(|p| p > 0);
        saw_lag |= status["lag_seconds"].as_f64().is_some_and(|l| l > 0.0);
        if status["last_error"].is_string() {
            fail_error = Some(status["last_error"].clone());
        }
        if saw_down && saw_pending && saw_lag && fail_error.is_some() && round >= all.len() {
            break;
        }
    }
    assert!(saw_down, "never down: {}", report(&server, "out"));
    assert!(saw_pending && saw_lag, "{}", report(&server, "out"));
    let fail_error = fail_error.expect("last_error during the failures");
    let lag_metric = metric(
        &server,
        "stockwire_channel_lag_seconds",
        &[("channel", "out")],
    );
    assert!(lag_metric.is_some(), "the lag gauge exists");

    // Hanging endpoint: attempts time out.
    receiver.set_mode(Mode::Hang);
    let hung_before = receiver.posts().len();
    let deadline = Instant::now() + SHOWS;
    let mut timed_out = false;
    while Instant::now() < deadline {
        let sku = &all[round % all.len()];
        reserve_quickly(&server, "shop", sku, "wh-east", 1);
        post_events(&server, vec![receipt(sku, "wh-west", 3)]);
        round += 1;
        let status = report(&server, "out");
        assert_ne!(status["state"], "healthy", "{status}");
        if status["last_error"].is_string()
            && status["last_error"] != fail_error
            && receiver.posts().len() > hung_before
        {
            timed_out = true;
            break;
        }
    }
    assert!(
        timed_out,
        "no timed-out attempt: {}",
        report(&server, "out")
    );
    assert_eq!(
        receiver.acked().len(),
        delivered_before,
        "nothing acknowledged"
    );

    // Back: everything converges to the engine's values.
    receiver.set_mode(Mode::Ok);
    let values = wait_converged(&server, "out", Some(&receiver), &all);
    for sku in all.iter().take(4) {
        assert_eq!(
            Policy::PLAIN.apply(engine_view(&server, sku, "out")),
            values[sku]
        );
    }
    let status = wait_for("healthy after the outage", SHOWS, || {
        let status = report(&server, "out");
        (status["state"] == "healthy" && status["cursor_seq"].as_u64() == Some(head(&server)))
            .then_some(status)
    });
    assert_eq!(status["dlq_depth"], 0, "{status}");
    assert!(
        metric(
            &server,
            "stockwire_channel_deliveries_total",
            &[("channel", "out"), ("outcome", "failed")]
        )
        .is_some_and(|v| v >= 3.0),
        "failed attempts counted"
    );
    receiver.check_every_post("out");
    receiver.check_seq_order();
    eprintln!(
        "outage: {round} rounds of changes, {} posts ({} acknowledged)",
        receiver.posts().len(),
        receiver.acked().len()
    );
}

/// A paused channel delivers nothing (its ledger drifts), a resumed one converges.
#[test]
fn a_paused_channel_holds_its_updates_until_resumed() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel(
        "pz",
        &receiver,
        "coalesce_ms = 50",
        "timeout_ms = 500, max_attempts = 1",
    );
    let server = start("", &channels);
    let all = skus("p", 3);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 10)).collect(),
    );
    wait_converged(&server, "pz", Some(&receiver), &all);

    let (status, body) = server.post("/v1/channels/pz/pause", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], "pz");
    assert_eq!(body["state"], "paused", "{body}");
    assert_eq!(report(&server, "pz")["state"], "paused");
    let posts_at_pause = receiver.posts().len();

    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-west", 5)).collect(),
    );
    // The changes reach the channel and wait there.
    wait_for("pending updates while paused", SHOWS, || {
        (report(&server, "pz")["pending"].as_u64() == Some(3)).then_some(())
    });
    // Long enough for the ledger to count as drifting (grace: coalesce + one timeout).
    let status = wait_for("drift while paused", SHOWS, || {
        let status = report(&server, "pz");
        (status["drift"].as_u64() == Some(3)).then_some(status)
    });
    assert_eq!(status["state"], "paused", "{status}");
    assert_eq!(
        receiver.posts().len(),
        posts_at_pause,
        "delivered while paused"
    );
    for sku in &all {
        let ledger = published(&server, "pz", sku);
        assert_eq!(ledger["available"], 10, "{ledger}");
        assert_eq!(ledger["current"], 15, "{ledger}");
        assert_eq!(ledger["in_sync"], false, "{ledger}");
    }
    // Pausing again is harmless.
    let (status, body) = server.post_raw("/v1/channels/pz/pause", b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "paused", "{body}");

    let (status, body) = server.post_raw("/v1/channels/pz/resume", b"");
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["state"], "paused", "{body}");
    let values = wait_converged(&server, "pz", Some(&receiver), &all);
    assert!(values.values().all(|v| *v == 15), "{values:?}");
    assert_eq!(report(&server, "pz")["state"], "healthy");
    wait_for("no drift after resume", SHOWS, || {
        (report(&server, "pz")["drift"] == 0).then_some(())
    });
    receiver.check_every_post("pz");
    receiver.check_seq_order();
}

/// Resync publishes every SKU's current value again, changed or not.
#[test]
fn resync_publishes_every_sku_again() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel(
        "rs",
        &receiver,
        "coalesce_ms = 50\nbuffer = 1",
        "timeout_ms = 2000, max_attempts = 5, backoff_ms = 50, backoff_max_ms = 200",
    );
    let server = start("", &channels);
    let all = skus("r", 4);
    post_events(
        &server,
        all.iter()
            .enumerate()
            .map(|(i, s)| receipt(s, "wh-east", 10 + i as u64))
            .collect(),
    );
    let before = wait_converged(&server, "rs", Some(&receiver), &all);
    let counts: Vec<usize> = all
        .iter()
        .map(|s| receiver.deliveries_of(s).len())
        .collect();
    assert!(counts.iter().all(|c| *c >= 1), "{counts:?}");

    let (status, body) = server.post("/v1/channels/rs/resync", json!({}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["channel"], "rs");
    assert_eq!(body["queued_skus"], all.len(), "{body}");
    wait_for("every SKU delivered again", SHOWS, || {
        all.iter()
            .zip(&counts)
            .all(|(s, c)| receiver.deliveries_of(s).len() > *c)
            .then_some(())
    });
    for (sku, count) in all.iter().zip(&counts) {
        let deliveries = receiver.deliveries_of(sku);
        assert_eq!(
            deliveries[*count].0, before[sku],
            "{sku}: the same value again"
        );
    }
    let after = wait_converged(&server, "rs", Some(&receiver), &all);
    assert_eq!(before, after);
    assert_eq!(after["r-03"], 12);
    receiver.check_every_post("rs");
}

/// After `max_attempts` a batch is parked; replaying the dead letters delivers the
/// current values and empties the queue; replaying the log re-delivers.
#[test]
fn dead_letters_then_replay() {
    let receiver = Receiver::start(Mode::Fail, Duration::from_secs(1));
    let channels = webhook_channel(
        "dl",
        &receiver,
        "coalesce_ms = 0\nreplay_dead_letters_on_recovery = false",
        "timeout_ms = 1000, max_attempts = 2, backoff_ms = 20, backoff_max_ms = 50",
    );
    let server = start("", &channels);
    let all = skus("d", 3);
    for (i, sku) in all.iter().enumerate() {
        server.receive(sku, "wh-east", 5 + i as u64);
    }
    let parked = wait_for("everything parked", SHOWS, || {
        let status = report(&server, "dl");
        (status["dlq_depth"].as_u64().is_some_and(|d| d > 0)
            && status["pending"] == 0
            && status["cursor_seq"].as_u64() == Some(head(&server)))
        .then_some(status)
    });
    assert!(parked["last_error"].is_string(), "{parked}");
    assert!(
        ["degraded", "down"].contains(&parked["state"].as_str().unwrap_or("")),
        "{parked}"
    );
    assert!(
        metric(
            &server,
            "stockwire_channel_deliveries_total",
            &[("channel", "dl"), ("outcome", "dead_lettered")]
        )
        .is_some_and(|v| v >= 1.0),
        "dead letters counted"
    );
    wait_for("the dlq gauge", SHOWS, || {
        metric(&server, "stockwire_channel_dlq_depth", &[("channel", "dl")]).filter(|v| *v >= 1.0)
    });
    for sku in &all {
        let ledger = published(&server, "dl", sku);
        assert_eq!(ledger["available"], Value::Null, "{ledger}");
        assert_eq!(ledger["in_sync"], false, "{ledger}");
    }
    // Parked batches are not retried.
    let posts = receiver.posts().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.posts().len(), posts, "parked batches were retried");

    receiver.set_mode(Mode::Ok);
    // One more change while the queue is parked, so current values differ from parked ones.
    server.receive("d-00", "wh-west", 100);
    let (status, body) = server.post("/v1/channels/dl/replay", json!({"from": "dead_letters"}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["channel"], "dl");
    assert_eq!(body["queued_skus"], all.len(), "{body}");
    assert_eq!(report(&server, "dl")["dlq_depth"], 0);
    let values = wait_converged(&server, "dl", Some(&receiver), &all);
    assert_eq!(values["d-00"], 105);
    assert_eq!(values["d-02"], 7);
    wait_for("the dlq gauge back at 0", SHOWS, || {
        metric(&server, "stockwire_channel_dlq_depth", &[("channel", "dl")]).filter(|v| *v == 0.0)
    });
    // Replaying an empty queue queues nothing.
    let (status, body) = server.post("/v1/channels/dl/replay", json!({"from": "dead_letters"}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued_skus"], 0, "{body}");

    // Replaying the log from the start re-delivers every SKU at its current value.
    let counts: Vec<usize> = all
        .iter()
        .map(|s| receiver.deliveries_of(s).len())
        .collect();
    let (status, body) = server.post("/v1/channels/dl/replay", json!({"from_seq": 0}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["channel"], "dl");
    wait_for("every SKU re-delivered", SHOWS, || {
        all.iter()
            .zip(&counts)
            .all(|(s, c)| receiver.deliveries_of(s).len() > *c)
            .then_some(())
    });
    for sku in &all {
        assert_eq!(
            receiver.deliveries_of(sku).last().map(|d| d.0),
            Some(values[sku])
        );
    }
    assert_eq!(report(&server, "dl")["state"], "healthy");
    receiver.check_every_post("dl");
}

/// kill -9 while the endpoint is failing; the restarted server resumes from its
/// durable cursor and converges once the endpoint is back.
#[test]
fn a_crash_during_an_outage_resumes_from_the_durable_cursor() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel(
        "rx",
        &receiver,
        "coalesce_ms = 50",
        "timeout_ms = 500, max_attempts = 100, backoff_ms = 50, backoff_max_ms = 300",
    );
    let mut server = start("", &channels);
    let all = skus("x", 5);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 20)).collect(),
    );
    wait_converged(&server, "rx", Some(&receiver), &all);
    let cursor = wait_for("the cursor at the head", SHOWS, || {
        let cursor = report(&server, "rx")["cursor_seq"].as_u64()?;
        (cursor == head(&server)).then_some(cursor)
    });
    assert!(cursor > 0);

    receiver.set_mode(Mode::Fail);
    for sku in &all {
        reserve_quickly(&server, "rx", sku, "wh-east", 3);
    }
    post_events(&server, vec![receipt("x-00", "wh-west", 7)]);
    wait_for("the outage shows", SHOWS, || {
        let status = report(&server, "rx");
        (status["state"] != "healthy" && status["pending"].as_u64().is_some_and(|p| p > 0))
            .then_some(())
    });
    // Let the cursor flush run at least once with the batch failing.
    std::thread::sleep(Duration::from_millis(600));
    server.kill();
    let posts_before_restart = receiver.posts().len();
    server.spawn();

    let status = report(&server, "rx");
    let restarted_cursor = status["cursor_seq"].as_u64().expect("cursor_seq");
    assert!(
        restarted_cursor >= cursor,
        "cursor went back from {cursor} to {restarted_cursor} after the restart: {status}"
    );
    // Still failing: the restarted publisher tries again.
    wait_for("attempts after the restart", SHOWS, || {
        (receiver.posts().len() > posts_before_restart).then_some(())
    });
    receiver.set_mode(Mode::Ok);
    let values = wait_converged(&server, "rx", Some(&receiver), &all);
    assert_eq!(values["x-00"], 24);
    assert_eq!(values["x-04"], 17);
    let status = wait_for("the cursor at the head after the restart", SHOWS, || {
        let status = report(&server, "rx");
        (status["cursor_seq"].as_u64() == Some(head(&server))).then_some(status)
    });
    assert_eq!(status["state"], "healthy", "{status}");
    receiver.check_every_post("rx");
    receiver.check_seq_order();
}

/// Files in `dir` that are not hidden temporaries, sorted by name.
fn feed_files(dir: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut hidden = Vec::new();
    for entry in std::fs::read_dir(dir).expect("feed dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with('.') {
            hidden.push(path);
        } else {
            files.push(path);
        }
    }
    files.sort();
    (files, hidden)
}

/// The batch id in `<channel>-<12 digits>.<extension>`.
fn batch_id(path: &Path, channel: &str, extension: &str) -> u64 {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let digits = name
        .strip_prefix(&format!("{channel}-"))
        .and_then(|rest| rest.strip_suffix(&format!(".{extension}")))
        .unwrap_or_else(|| panic!("unexpected feed file name {name}"));
    assert_eq!(digits.len(), 12, "{name}");
    digits.parse().expect("a batch id")
}

/// EDI 846 and CSV feed files: atomic, numbered, parseable, with the policy values.
#[test]
fn file_sinks_write_edi846_and_csv_feeds() {
    use stockwire::channels::feed::{parse_csv, parse_edi846};

    let feeds = tempfile::tempdir().expect("feed dir");
    let edi_dir = feeds.path().join("edi");
    let csv_dir = feeds.path().join("csv");
    let channels = format!(
        "[[channels]]\nid = \"edi\"\nlocations = [\"wh-east\", \"wh-west\"]\nbuffer = 2\n\
         coalesce_ms = 200\nsink = {{ kind = \"file\", dir = \"{}\", format = \"edi846\", \
         batch_max = 100, max_attempts = 3, sender_id = \"SWTEST\", receiver_id = \"RETAILER1\" }}\n\
         [[channels]]\nid = \"csvc\"\nlocations = [\"wh-east\"]\nmax_share_pct = 50\ncap = 25\n\
         coalesce_ms = 200\nsink = {{ kind = \"file\", dir = \"{}\", format = \"csv\" }}\n",
        edi_dir.display(),
        csv_dir.display()
    );
    let server = start("", &channels);
    let (edi, csv) = ("edi", "csvc");
    let a = vec!["fa".to_string()];
    let abc: Vec<String> = ["fa", "fb", "fc"].map(String::from).to_vec();

    server.receive("fa", "wh-east", 100);
    wait_converged(&server, edi, None, &a);
    wait_converged(&server, csv, None, &a);
    post_events(
        &server,
        vec![receipt("fb", "wh-east", 7), receipt("fc", "wh-east", 1)],
    );
    wait_converged(&server, edi, None, &abc);
    wait_converged(&server, csv, None, &abc);
    // 100 -> 90: the EDI channel's value changes, the CSV channel's (cap 25) does not.
    post_events(&server, vec![adjustment("fa", "wh-east", -10)]);
    let edi_values = wait_converged(&server, edi, None, &abc);
    let csv_values = wait_converged(&server, csv, None, &abc);
    assert_eq!(
        edi_values,
        [("fa", 88), ("fb", 5), ("fc", 0)]
            .into_iter()
            .map(|(s, v)| (s.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    );
    assert_eq!(
        csv_values,
        [("fa", 25), ("fb", 3), ("fc", 0)]
            .into_iter()
            .map(|(s, v)| (s.to_string(), v))
            .collect::<BTreeMap<_, _>>()
    );

    // EDI: one interchange per batch, control numbers 1, 2, ... as the file names.
    let (files, hidden) = feed_files(&edi_dir);
    assert!(hidden.is_empty(), "temporaries left: {hidden:?}");
    assert!(files.len() >= 3, "{files:?}");
    let mut last: HashMap<String, u64> = HashMap::new();
    for (index, path) in files.iter().enumerate() {
        let number = index as u64 + 1;
        assert_eq!(batch_id(path, edi, "edi"), number, "{files:?}");
        let text = std::fs::read_to_string(path).expect("read the 846");
        assert!(text.starts_with("ISA*"), "{text}");
        let parsed = parse_edi846(&text).unwrap_or_else(|e| panic!("{path:?}: {e}\n{text}"));
        assert_eq!(u64::from(parsed.interchange_control), number, "{text}");
        assert_eq!(u64::from(parsed.group_control), number, "{text}");
        assert_eq!(parsed.transaction_control, format!("{number:04}"), "{text}");
        assert_eq!(parsed.sender_id, "SWTEST");
        assert_eq!(parsed.receiver_id, "RETAILER1");
        assert!(!parsed.lines.is_empty());
        // ST, BIA, a LIN and a QTY per line, CTT, SE.
        assert_eq!(parsed.segment_count, 2 * parsed.lines.len() + 4, "{text}");
        for (sku, qty) in parsed.lines {
            last.insert(sku, qty);
        }
    }
    // The last quantity in the feed for each SKU is its value (a SKU at 0 may never
    // have been written).
    assert!(
        last.keys().all(|sku| edi_values.contains_key(sku)),
        "{last:?}"
    );
    for (sku, value) in &edi_values {
        assert_eq!(
            last.get(sku).copied().unwrap_or(0),
            *value,
            "{sku}: {last:?}"
        );
    }

    // CSV: header and rows, seq order per SKU, fa published once (25 both times).
    let (files, hidden) = feed_files(&csv_dir);
    assert!(hidden.is_empty(), "temporaries left: {hidden:?}");
    assert!(!files.is_empty());
    let mut last: HashMap<String, (u64, u64)> = HashMap::new();
    let mut fa_rows = 0;
    for (index, path) in files.iter().enumerate() {
        assert_eq!(batch_id(path, csv, "csv"), index as u64 + 1, "{files:?}");
        let bytes = std::fs::read(path).expect("read the csv");
        assert!(bytes.starts_with(b"sku,available,seq,at\n"), "{path:?}");
        let lines = parse_csv(&bytes).unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert!(!lines.is_empty(), "{path:?}");
        for line in lines {
            fa_rows += usize::from(line.sku == "fa");
            let before = last.insert(line.sku.clone(), (line.available, line.seq));
            assert!(
                before.is_none_or(|(_, seq)| seq <= line.seq),
                "{line:?} after {before:?}"
            );
            assert!(line.at_ms > 0);
        }
    }
    assert_eq!(fa_rows, 1, "an unchanged value was published again");
    assert!(
        last.keys().all(|sku| csv_values.contains_key(sku)),
        "{last:?}"
    );
    for (sku, value) in &csv_values {
        let got = last.get(sku).map_or(0, |(available, _)| *available);
        assert_eq!(got, *value, "{sku}: {last:?}");
    }
    for channel in [edi, csv] {
        let status = report(&server, channel);
        assert_eq!(status["sink"], "file", "{status}");
        assert_eq!(status["state"], "healthy", "{status}");
    }
}

/// The publication ledger and the routes' errors: unknown channel, no sink, unknown SKU.
#[test]
fn ledger_lookups_and_channel_errors() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = format!(
        "{}\n[[channels]]\nid = \"plain\"\nlocations = [\"wh-east\"]\n",
        webhook_channel("hook", &receiver, "coalesce_ms = 50", "timeout_ms = 2000")
    );
    let server = start("", &channels);

    let ledger = published(&server, "hook", "never-seen");
    assert_eq!(
        ledger,
        json!({"channel": "hook", "sku": "never-seen", "available": null, "seq": null,
               "at": null, "current": 0, "in_sync": true})
    );

    for (method, path) in [
        ("GET", "/v1/channels/nope"),
        ("GET", "/v1/channels/nope/published?sku=a"),
        ("POST", "/v1/channels/nope/pause"),
        ("POST", "/v1/channels/nope/resume"),
        ("POST", "/v1/channels/nope/resync"),
    ] {
        let (status, body) = if method == "GET" {
            server.get(path)
        } else {
            server.post_raw(path, b"")
        };
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(body["code"], "not_found", "{method} {path}: {body}");
    }
    let (status, body) = server.post("/v1/channels/nope/replay", json!({"from_seq": 0}));
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "not_found", "{body}");

    // A channel without a sink has nothing to pause, resync or replay.
    for path in [
        "/v1/channels/plain/pause",
        "/v1/channels/plain/resume",
        "/v1/channels/plain/resync",
    ] {
        let (status, body) = server.post_raw(path, b"");
        assert_eq!(status, 409, "{path}: {body}");
        assert_eq!(body["code"], "invalid_state", "{path}: {body}");
    }
    let (status, body) = server.post("/v1/channels/plain/replay", json!({"from": "dead_letters"}));
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "invalid_state", "{body}");
    let status = report(&server, "plain");
    assert_eq!(status["state"], "healthy", "{status}");

    // A SKU the channel does not sell from its locations reads as 0.
    server.receive("elsewhere", "3pl-north", 10);
    let ledger = published(&server, "hook", "elsewhere");
    assert_eq!(ledger["current"], 0, "{ledger}");
    assert_eq!(ledger["available"], Value::Null, "{ledger}");
    // A delivered SKU reads back, with its seq and time.
    server.receive("here", "wh-east", 10);
    wait_converged(&server, "hook", Some(&receiver), &["here".to_string()]);
    let ledger = published(&server, "hook", "here");
    assert_eq!(ledger["available"], 10, "{ledger}");
    assert!(
        ledger["seq"].as_u64().is_some() && ledger["at"].is_string(),
        "{ledger}"
    );

    // Ids are checked.
    let (status, body) = server.get("/v1/channels/hook/published?sku=bad%20sku");
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], "invalid_id", "{body}");
}

/// Replay and control bodies are strict.
#[test]
fn replay_and_control_bodies_are_validated() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel("hook", &receiver, "coalesce_ms = 50", "timeout_ms = 2000");
    let server = start("", &channels);
    let replay = "/v1/channels/hook/replay";

    for body in [
        json!({"from_seq": 0, "from": "dead_letters"}),
        json!({}),
        json!({"from": "yesterday"}),
        json!({"from_seq": -1}),
        json!({"from_seq": 1.5}),
        json!({"from_seq": "3"}),
    ] {
        let (status, answer) = server.post(replay, body.clone());
        assert_eq!(status, 400, "{body}: {answer}");
        assert_eq!(answer["code"], "bad_request", "{body}: {answer}");
    }
    let (status, answer) = server.post_raw(replay, b"");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "bad_request", "{answer}");
    let (status, answer) = server.post_raw(replay, b"{\"from_seq\": ");
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "bad_request", "{answer}");

    let (status, answer) = server.post(replay, json!({"from_seq": 0, "to_seq": 9}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "unknown_field", "{answer}");
    for path in [
        "/v1/channels/hook/pause",
        "/v1/channels/hook/resume",
        "/v1/channels/hook/resync",
    ] {
        let (status, answer) = server.post(path, json!({"now": true}));
        assert_eq!(status, 400, "{path}: {answer}");
        assert_eq!(answer["code"], "unknown_field", "{path}: {answer}");
    }
    // Nothing was paused by the rejected requests.
    assert_eq!(report(&server, "hook")["state"], "healthy");
    let (status, answer) = server.post("/v1/channels/bad%20id/pause", json!({}));
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["code"], "invalid_id", "{answer}");
}

/// An endpoint that closes idle keep-alive connections (as most servers do after
/// their keep-alive timeout) costs no failed attempts: the client does not reuse a
/// connection the peer closed.
#[test]
fn an_endpoint_closing_idle_connections_costs_no_failed_attempts() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    *receiver.shared.close_after.lock().unwrap() = Some(Duration::from_millis(10));
    let channels = webhook_channel(
        "ka",
        &receiver,
        "coalesce_ms = 50",
        "timeout_ms = 2000, max_attempts = 10, backoff_ms = 50, backoff_max_ms = 100",
    );
    let server = start("", &channels);
    let sku = ["k".to_string()];
    for round in 1..=5 {
        server.receive("k", "wh-east", 1);
        let values = wait_converged(&server, "ka", Some(&receiver), &sku);
        assert_eq!(values["k"], round);
        // Pacing, not an assertion: the receiver has closed the connection by now.
        std::thread::sleep(Duration::from_millis(100));
    }
    let failed = metric(
        &server,
        "stockwire_channel_deliveries_total",
        &[("channel", "ka"), ("outcome", "failed")],
    );
    assert!(
        failed.is_none_or(|f| f == 0.0),
        "failed attempts: {failed:?}"
    );
    assert_eq!(report(&server, "ka")["state"], "healthy");
    assert_eq!(receiver.posts().len(), 5);
    receiver.check_every_post("ka");
}

/// An EDI interchange id the 846 renderer refuses (a trailing space is lost in the
/// padded ISA field) must not be accepted by the config, where it would dead-letter
/// every batch: either start-up refuses it naming the key, or the feed is written.
#[test]
fn an_edi_id_the_feed_cannot_carry_is_refused_at_start_up() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = crate::harness::free_port();
    let feed = dir.path().join("edi");
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{LOCATIONS}\n\
         [[channels]]\nid = \"edi\"\nlocations = [\"wh-east\"]\ncoalesce_ms = 0\n\
         sink = {{ kind = \"file\", dir = \"{}\", format = \"edi846\", max_attempts = 2, \
         backoff_ms = 10, backoff_max_ms = 20, sender_id = \"SWTEST \" }}\n",
        dir.path().join("data").display(),
        feed.display()
    );
    let config_path = dir.path().join("stockwire.toml");
    std::fs::write(&config_path, config).expect("write config");
    let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .env("STOCKWIRE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("start stockwire");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let text = std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
            break Err((status, text));
        }
        if ureq::get(&url("/readyz"))
            .timeout(Duration::from_secs(1))
            .call()
            .is_ok()
        {
            break Ok(());
        }
        assert!(Instant::now() < deadline, "neither ready nor exited");
        std::thread::sleep(Duration::from_millis(50));
    };
    match outcome {
        Err((status, text)) => {
            assert!(!status.success(), "{text}");
            assert!(text.contains("channels[0].sink.sender_id"), "{text}");
        }
        Ok(()) => {
            let result = call(
                ureq::post(&url("/v1/events")),
                Some(json!({"events": [receipt("e", "wh-east", 5)]})),
            );
            assert_eq!(result.0, 200, "{}", result.1);
            let status = wait_for("a feed file or a failure", SHOWS, || {
                let (_, status) = call(ureq::get(&url("/v1/channels/edi")), None);
                let files = std::fs::read_dir(&feed).map_or(0, |d| d.count());
                (files > 0 || status["dlq_depth"].as_u64().is_some_and(|d| d > 0)).then_some(status)
            });
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(status["dlq_depth"], 0, "every batch fails: {status}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Dead letters taken out for a replay are still owed to the channel after a crash:
/// kill -9 before the replayed values are delivered (pause keeps them undelivered),
/// and after the restart they are either delivered or back in the dead-letter queue.
#[test]
fn replayed_dead_letters_survive_a_crash_before_delivery() {
    let receiver = Receiver::start(Mode::Fail, Duration::from_secs(1));
    let channels = webhook_channel(
        "dc",
        &receiver,
        "coalesce_ms = 0\nreplay_dead_letters_on_recovery = false",
        "timeout_ms = 1000, max_attempts = 2, backoff_ms = 20, backoff_max_ms = 50",
    );
    let mut server = start("", &channels);
    let all = skus("q", 3);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 9)).collect(),
    );
    wait_for("everything parked", SHOWS, || {
        let status = report(&server, "dc");
        (status["dlq_depth"].as_u64().is_some_and(|d| d > 0)
            && status["pending"] == 0
            && status["cursor_seq"].as_u64() == Some(head(&server)))
        .then_some(())
    });
    let (status, body) = server.post("/v1/channels/dc/pause", json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post("/v1/channels/dc/replay", json!({"from": "dead_letters"}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued_skus"], all.len(), "{body}");
    wait_for("the replayed values queued", SHOWS, || {
        (report(&server, "dc")["pending"].as_u64() == Some(all.len() as u64)).then_some(())
    });
    // Let any periodic flush happen before the crash.
    std::thread::sleep(Duration::from_millis(700));
    server.kill();
    server.spawn();
    receiver.set_mode(Mode::Ok);
    if report(&server, "dc")["state"] == "paused" {
        let (status, body) = server.post("/v1/channels/dc/resume", json!({}));
        assert_eq!(status, 200, "{body}");
    }
    // Owed values are delivered on their own, or can be replayed from the queue.
    let parked = wait_for("delivered or parked again", SHOWS, || {
        if converged(&server, "dc", Some(&receiver), &all).is_ok() {
            return Some(false);
        }
        report(&server, "dc")["dlq_depth"]
            .as_u64()
            .is_some_and(|d| d > 0)
            .then_some(true)
    });
    if parked {
        let (status, body) = server.post("/v1/channels/dc/replay", json!({"from": "dead_letters"}));
        assert_eq!(status, 202, "{body}");
    }
    let values = wait_converged(&server, "dc", Some(&receiver), &all);
    assert!(values.values().all(|v| *v == 9), "{values:?}");
}

/// A resync and a log replay are durable once accepted (202): kill -9 before the
/// channel has them (pause keeps them undelivered), and after the restart every SKU
/// is delivered again anyway. Without a durable record of the request, the restarted
/// server would be at its cursor with nothing to send.
#[test]
fn an_accepted_resync_or_replay_survives_a_crash_before_delivery() {
    let receiver = Receiver::start(Mode::Ok, Duration::from_secs(1));
    let channels = webhook_channel(
        "rc",
        &receiver,
        "coalesce_ms = 0",
        "timeout_ms = 1000, max_attempts = 5, backoff_ms = 20, backoff_max_ms = 50",
    );
    let mut server = start("", &channels);
    let all = skus("c", 3);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 4)).collect(),
    );
    wait_converged(&server, "rc", Some(&receiver), &all);
    for request in [json!(null), json!({"from_seq": 1})] {
        wait_for("the cursor at the head", SHOWS, || {
            (report(&server, "rc")["cursor_seq"].as_u64() == Some(head(&server))).then_some(())
        });
        let counts: Vec<usize> = all
            .iter()
            .map(|s| receiver.deliveries_of(s).len())
            .collect();
        let (status, body) = server.post("/v1/channels/rc/pause", json!({}));
        assert_eq!(status, 200, "{body}");
        let (status, body) = if request.is_null() {
            server.post("/v1/channels/rc/resync", json!({}))
        } else {
            server.post("/v1/channels/rc/replay", request.clone())
        };
        assert_eq!(status, 202, "{request}: {body}");
        server.kill();
        server.spawn();
        if report(&server, "rc")["state"] == "paused" {
            let (status, body) = server.post("/v1/channels/rc/resume", json!({}));
            assert_eq!(status, 200, "{body}");
        }
        wait_for("every SKU delivered again after the restart", SHOWS, || {
            all.iter()
                .zip(&counts)
                .all(|(s, c)| receiver.deliveries_of(s).len() > *c)
                .then_some(())
        });
        let values = wait_converged(&server, "rc", Some(&receiver), &all);
        assert!(values.values().all(|v| *v == 4), "{request}: {values:?}");
    }
    receiver.check_every_post("rc");
}

/// A server whose channel `id` posts to the failing `receiver`, and four SKUs
/// (prefix `prefix`) received at 6 each whose every delivery has been parked.
fn parked_during_an_outage(
    receiver: &Receiver,
    id: &str,
    prefix: &str,
    backoff_max_ms: u64,
) -> (Server, Vec<String>) {
    let retry = format!(
        "timeout_ms = 1000, max_attempts = 2, backoff_ms = 20, backoff_max_ms = {backoff_max_ms}"
    );
    let channels = webhook_channel(id, receiver, "coalesce_ms = 0", &retry);
    let server = start("", &channels);
    let all = skus(prefix, 4);
    post_events(
        &server,
        all.iter().map(|s| receipt(s, "wh-east", 6)).collect(),
    );
    wait_for("everything parked", SHOWS, || {
        let status = report(&server, id);
        (status["dlq_depth"].as_u64().is_some_and(|d| d > 0) && status["pending"] == 0)
            .then_some(())
    });
    (server, all)
}

/// After an outage long enough to park batches, the channel converges by itself once
/// its endpoint is back: the first success replays its dead letters (SPEC §4: after
/// an outage every channel converges to the engine's current values).
#[test]
fn a_recovered_channel_replays_its_dead_letters_by_itself() {
    let receiver = Receiver::start(Mode::Fail, Duration::from_secs(1));
    let (server, all) = parked_during_an_outage(&receiver, "ar", "a", 50);
    receiver.set_mode(Mode::Ok);
    // One live change: its delivery is the first success.
    server.receive("a-new", "wh-east", 1);
    let mut everything = all.clone();
    everything.push("a-new".to_string());
    let values = wait_converged(&server, "ar", Some(&receiver), &everything);
    assert!(all.iter().all(|s| values[s] == 6), "{values:?}");
    wait_for("the dead-letter queue empty", SHOWS, || {
        (report(&server, "ar")["dlq_depth"] == 0).then_some(())
    });
    receiver.check_every_post("ar");
}

/// The same with nothing changing after the outage: no new delivery would ever
/// find the endpoint back, so the parked letters themselves are sent as the
/// probe (once the channel has been quiet for 10 s, however short its
/// `backoff_max_ms`), and the channel converges.
#[test]
fn a_recovered_channel_with_nothing_new_to_send_converges_by_itself() {
    let receiver = Receiver::start(Mode::Fail, Duration::from_secs(1));
    let (server, all) = parked_during_an_outage(&receiver, "aq", "q", 200);
    receiver.set_mode(Mode::Ok);
    let values = wait_converged(&server, "aq", Some(&receiver), &all);
    assert!(all.iter().all(|s| values[s] == 6), "{values:?}");
    wait_for(
        "the dead-letter queue empty and the channel healthy",
        SHOWS,
        || {
            let status = report(&server, "aq");
            (status["dlq_depth"] == 0 && status["state"] == "healthy").then_some(())
        },
    );
    receiver.check_every_post("aq");
}

/// X12 can carry SKUs of at most 48 characters: a longer one (valid for stockwire)
/// is left out of the 846 and the rest of its batch is still written. After a
/// kill -9, batch numbers (file names and control numbers) go on without repeating.
#[test]
fn an_edi_feed_skips_what_x12_cannot_carry_and_never_reuses_a_control_number() {
    let dir = tempfile::tempdir().expect("temp dir");
    let edi_dir = dir.path().join("edi");
    let channels = format!(
        "[[channels]]\nid = \"edx\"\nlocations = [\"wh-east\"]\ncoalesce_ms = 0\n\
         sink = {{ kind = \"file\", dir = \"{}\", format = \"edi846\", max_attempts = 2, \
         backoff_ms = 10, backoff_max_ms = 20 }}\n",
        edi_dir.display()
    );
    let mut server = start("", &channels);
    let long = "L".repeat(50);
    post_events(
        &server,
        vec![
            receipt(&long, "wh-east", 3),
            receipt("short-1", "wh-east", 4),
        ],
    );
    let values = wait_converged(&server, "edx", None, &["short-1".to_string()]);
    assert_eq!(values["short-1"], 4);
    let status = report(&server, "edx");
    assert_eq!(status["dlq_depth"], 0, "{status}");
    let numbers = |dir: &Path| -> Vec<u64> {
        let (files, _) = feed_files(dir);
        files.iter().map(|p| batch_id(p, "edx", "edi")).collect()
    };
    let before = numbers(&edi_dir);
    assert!(!before.is_empty());
    for path in feed_files(&edi_dir).0 {
        let text = std::fs::read_to_string(&path).expect("846");
        assert!(!text.contains(&long), "the long SKU was written: {text}");
        stockwire::channels::feed::parse_edi846(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
    server.kill();
    server.spawn();
    server.receive("short-2", "wh-east", 5);
    wait_converged(&server, "edx", None, &["short-2".to_string()]);
    let after = numbers(&edi_dir);
    let max_before = before.iter().max().copied().unwrap_or(0);
    let new: Vec<u64> = after
        .iter()
        .filter(|n| !before.contains(n))
        .copied()
        .collect();
    assert!(!new.is_empty(), "{after:?}");
    assert!(
        new.iter().all(|n| *n > max_before),
        "reused: {before:?} -> {after:?}"
    );
}
