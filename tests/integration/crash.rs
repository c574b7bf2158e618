//! Durability: `kill -9` under load, idempotency keys, TTL deadlines and
//! snapshots across restarts, and a clean SIGTERM.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{position, try_call, Server, BASE_CONFIG};

/// What one loader thread saw before the server went away.
#[derive(Default)]
struct Loaded {
    acked: Vec<String>,
    /// Sent, but no answer came back (the kill): may or may not have landed.
    in_flight: Vec<String>,
    /// Answers other than 2xx (none expected).
    refused: Vec<(String, u16, Value)>,
}

/// SIGTERM; the server must exit by itself, with code 0 (SPEC §8), well
/// within the drain timeout.
fn terminate_leniently(server: &mut Server) {
    let started = Instant::now();
    let code = server.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "SIGTERM: no exit after {:?}",
        started.elapsed()
    );
    match code {
        Some(0) => {}
        None => panic!("SIGTERM: the process died of a signal"),
        Some(code) => panic!("SIGTERM exit code {code}"),
    }
}

/// How the server goes down under load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// `kill -9`.
    Kill,
    /// SIGTERM (see [`terminate_leniently`]).
    Term,
}

/// Reserves from `threads` clients (ids `t{thread}-{n}`, one unit of every
/// SKU in `skus` at wh-east) until the server stops answering; stops it
/// `after` into the load. Returns what the clients saw.
fn load_then_stop(
    server: &mut Server,
    skus: &[&str],
    threads: usize,
    after: Duration,
    stop: Stop,
) -> Vec<Loaded> {
    let url = server.url("/v1/reservations");
    let lines: Vec<Value> = skus
        .iter()
        .map(|sku| json!({"sku": sku, "location": "wh-east", "qty": 1}))
        .collect();
    let handles: Vec<_> = (0..threads)
        .map(|thread| {
            let (url, lines) = (url.clone(), lines.clone());
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(5))
                    .build();
                let mut loaded = Loaded::default();
                let deadline = Instant::now() + Duration::from_secs(20);
                for n in 0..1_000_000 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let id = format!("t{thread}-{n}");
                    let body = json!({"reservation_id": id, "channel": "web", "lines": lines});
                    match try_call(agent.post(&url), Some(body)) {
                        Ok((200..=299, _)) => loaded.acked.push(id),
                        Ok((status, answer)) => {
                            loaded.refused.push((id, status, answer));
                            break;
                        }
                        Err(_) => {
                            loaded.in_flight.push(id);
                            break;
                        }
                    }
                }
                loaded
            })
        })
        .collect();
    std::thread::sleep(after);
    match stop {
        Stop::Kill => server.kill(),
        Stop::Term => terminate_leniently(server),
    }
    let loaded: Vec<Loaded> = handles
        .into_iter()
        .map(|h| h.join().expect("loader thread"))
        .collect();
    loaded
}

fn assert_gap_free(events: &[Value], head: u64) {
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), events.len(), "every entry has a seq");
    assert_eq!(
        seqs.first().copied(),
        (head > 0).then_some(1),
        "seq starts at 1"
    );
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "seq has a gap or is out of order");
    }
    assert_eq!(
        seqs.last().copied().unwrap_or(0),
        head,
        "last entry is the head"
    );
}

/// Reserving under load, `stop`, restart: every acknowledged reservation is
/// there and the counters and the log agree with what landed.
fn acknowledged_reservations_survive(skus: &[&str], stop: Stop) {
    let mut server = Server::start("");
    for sku in skus {
        server.receive(sku, "wh-east", 1_000_000);
    }
    let started = Instant::now();
    let loaded = load_then_stop(&mut server, skus, 4, Duration::from_millis(300), stop);
    let load_time = started.elapsed();
    let refused: Vec<_> = loaded.iter().flat_map(|l| &l.refused).collect();
    assert!(
        refused.is_empty(),
        "non-2xx answers under load: {refused:?}"
    );
    let acked: Vec<&String> = loaded.iter().flat_map(|l| &l.acked).collect();
    let in_flight: Vec<&String> = loaded.iter().flat_map(|l| &l.in_flight).collect();
    eprintln!(
        "{stop:?} under load ({} line(s)): {} acknowledged in {:.0} ms, {} in flight at the stop",
        skus.len(),
        acked.len(),
        load_time.as_secs_f64() * 1000.0,
        in_flight.len()
    );
    assert!(acked.len() >= 4, "the load got going before the kill");

    server.spawn();
    let recovered_at = Instant::now();

    for id in &acked {
        let (status, body) = server.get(&format!("/v1/reservations/{id}"));
        assert_eq!(status, 200, "acknowledged {id} lost: {body}");
        assert_eq!(body["status"], "held", "{body}");
        assert_eq!(
            body["lines"].as_array().map(Vec::len),
            Some(skus.len()),
            "{body}"
        );
    }
    // In flight at the kill: wholly there (held, every line) or wholly absent.
    let mut landed_in_flight = 0;
    for id in &in_flight {
        let (status, body) = server.get(&format!("/v1/reservations/{id}"));
        match status {
            200 => {
                landed_in_flight += 1;
                assert_eq!(body["status"], "held", "{body}");
                assert_eq!(
                    body["lines"].as_array().map(Vec::len),
                    Some(skus.len()),
                    "{body}"
                );
            }
            404 => {}
            _ => panic!("GET in-flight {id}: {status} {body}"),
        }
    }
    let landed = acked.len() + landed_in_flight;

    let (events, head) = server.event_log(1000);
    assert_gap_free(&events, head);
    let known: HashSet<&str> = acked
        .iter()
        .chain(&in_flight)
        .map(|id| id.as_str())
        .collect();
    for sku in skus {
        let p = position(&server, sku, "wh-east");
        let reserved = p["reserved"].as_i64().expect("reserved");
        assert!(
            reserved >= acked.len() as i64,
            "{sku}: reserved {reserved} < {} acknowledged",
            acked.len()
        );
        assert_eq!(
            reserved, landed as i64,
            "{sku}: reserved vs reservations present"
        );
        assert_eq!(p["on_hand"], 1_000_000, "{p}");
        let of_sku: Vec<&Value> = events.iter().filter(|e| e["sku"] == *sku).collect();
        let net: i64 = of_sku
            .iter()
            .filter_map(|e| e["delta"]["reserved"].as_i64())
            .sum();
        assert_eq!(
            net, reserved,
            "{sku}: the log's net reserved vs the position"
        );
        let holds: Vec<&str> = of_sku
            .iter()
            .filter(|e| e["type"] == "inventory.reserved")
            .filter_map(|e| e["reservation_id"].as_str())
            .collect();
        if skus.len() == 1 {
            assert_eq!(holds.len() as i64, reserved, "inventory.reserved entries");
        }
        for id in holds {
            assert!(known.contains(id), "a hold for {id}, which nobody sent");
        }
    }
    // Every hold the log shows as still standing is a GET-able reservation.
    let mut standing: BTreeMap<&str, i64> = BTreeMap::new();
    for event in &events {
        if let Some(id) = event["reservation_id"].as_str() {
            *standing.entry(id).or_default() += event["delta"]["reserved"].as_i64().unwrap_or(0);
        }
    }
    for (id, units) in standing.iter().filter(|(_, units)| **units != 0) {
        assert_eq!(*units, skus.len() as i64, "{id} holds part of its lines");
        let (status, body) = server.get(&format!("/v1/reservations/{id}"));
        assert_eq!(status, 200, "{id} holds stock but is not GET-able: {body}");
    }

    // And the server goes on from there.
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": skus.iter().map(|s| json!({"sku": s, "location": "wh-east", "qty": 1})).collect::<Vec<_>>()}),
    );
    assert_eq!(status, 201, "{body}");
    let (events, head_after) = server.event_log(1000);
    assert_gap_free(&events, head_after);
    assert!(head_after > head);
    eprintln!(
        "  recovered: {} of {} in flight had landed; head {head}; checks took {:.0} ms",
        landed_in_flight,
        in_flight.len(),
        recovered_at.elapsed().as_secs_f64() * 1000.0
    );
}

#[test]
fn kill_9_under_load_keeps_every_acknowledged_reservation() {
    acknowledged_reservations_survive(&["crash-load"], Stop::Kill);
}

#[test]
fn kill_9_under_load_keeps_multi_line_reservations_whole() {
    acknowledged_reservations_survive(&["crash-multi-a", "crash-multi-b"], Stop::Kill);
}

#[test]
fn sigterm_under_load_drains_and_keeps_every_acknowledged_reservation() {
    acknowledged_reservations_survive(&["term-load-a", "term-load-b"], Stop::Term);
}

#[test]
fn idempotency_keys_survive_kill_9() {
    let mut server = Server::start("");
    server.receive("crash-idem", "wh-east", 10);
    let body = json!({"channel": "web", "lines": [{"sku": "crash-idem", "location": "wh-east", "qty": 4}]});
    let (status, first) = server.post_with(
        "/v1/reservations",
        body.clone(),
        &[("Idempotency-Key", "k1")],
    );
    assert_eq!(status, 201, "{first}");

    server.kill();
    server.spawn();

    let (status, again) = server.post_with("/v1/reservations", body, &[("Idempotency-Key", "k1")]);
    assert_eq!(status, 201, "the first status again: {again}");
    assert_eq!(again, first, "the first body again");
    let p = position(&server, "crash-idem", "wh-east");
    assert_eq!(p["reserved"], 4, "the replay changed nothing: {p}");

    let other = json!({"channel": "web", "lines": [{"sku": "crash-idem", "location": "wh-east", "qty": 5}]});
    let (status, answer) =
        server.post_with("/v1/reservations", other, &[("Idempotency-Key", "k1")]);
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["code"], "idempotency_key_reused", "{answer}");
    let p = position(&server, "crash-idem", "wh-east");
    assert_eq!(p["reserved"], 4, "{p}");
}

#[test]
fn ttl_deadlines_survive_kill_9() {
    let mut server = Server::start("");
    let sku = "crash-ttl";
    server.receive(sku, "wh-east", 10);
    let (status, short) = server.post(
        "/v1/reservations",
        json!({"reservation_id": "ttl-short", "channel": "web", "ttl_seconds": 2,
               "lines": [{"sku": sku, "location": "wh-east", "qty": 3}]}),
    );
    assert_eq!(status, 201, "{short}");
    let (status, long) = server.post(
        "/v1/reservations",
        json!({"reservation_id": "ttl-long", "channel": "web", "ttl_seconds": 60,
               "lines": [{"sku": sku, "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{long}");
    server.kill();
    let killed_at = Instant::now();

    std::thread::sleep(Duration::from_secs(3));
    server.spawn();
    let ready_at = Instant::now();

    let mut last = Value::Null;
    let mut expired_after = None;
    while ready_at.elapsed() < Duration::from_secs(2) {
        let (status, body) = server.get("/v1/reservations/ttl-short");
        assert_eq!(status, 200, "{body}");
        if body["status"] == "expired" {
            expired_after = Some(ready_at.elapsed());
            break;
        }
        last = body;
        std::thread::sleep(Duration::from_millis(50));
    }
    let expired_after =
        expired_after.unwrap_or_else(|| panic!("not expired 2 s after recovery: {last}"));
    eprintln!(
        "ttl: expired {:.0} ms after readiness ({:.1} s after the kill)",
        expired_after.as_secs_f64() * 1000.0,
        killed_at.elapsed().as_secs_f64()
    );
    let p = position(&server, sku, "wh-east");
    assert_eq!(p["reserved"], 2, "the expired units are back: {p}");
    assert_eq!(p["available"], 8, "{p}");

    let (status, body) = server.get("/v1/reservations/ttl-long");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "held", "{body}");
    assert_eq!(body["expires_at"], long["expires_at"], "deadline not reset");

    let (events, head) = server.event_log(1000);
    assert_gap_free(&events, head);
    let expiries: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "reservation.expired")
        .collect();
    assert_eq!(expiries.len(), 1, "{expiries:?}");
    assert_eq!(expiries[0]["reservation_id"], "ttl-short");
}

/// Full availability of each SKU.
fn availability(server: &Server, skus: &[&str]) -> Vec<Value> {
    skus.iter()
        .map(|sku| {
            let (status, body) = server.get(&format!("/v1/availability/{sku}"));
            assert_eq!(status, 200, "{sku}: {body}");
            body
        })
        .collect()
}

fn reservations(server: &Server, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| {
            let (status, body) = server.get(&format!("/v1/reservations/{id}"));
            assert_eq!(status, 200, "{id}: {body}");
            body
        })
        .collect()
}

fn reserve(server: &Server, lines: Value) -> String {
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": lines}),
    );
    assert_eq!(status, 201, "{body}");
    body["reservation_id"].as_str().expect("an id").to_string()
}

fn event(server: &Server, event: Value) {
    let (status, body) = server.post("/v1/events", json!({ "events": [event] }));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "applied", "{body}");
}

/// A mix of changes over `skus`: receipts at several locations, single- and
/// multi-line holds, allocation, a shipment, a release, an adjustment and a
/// quarantine hold. Returns the reservation ids it made.
fn churn(server: &Server, skus: &[&str], tag: &str) -> Vec<String> {
    let mut ids = Vec::new();
    for (i, sku) in skus.iter().enumerate() {
        server.receive(sku, "wh-east", 50 + i as u64);
        server.receive(sku, "wh-west", 20);
        ids.push(reserve(
            server,
            json!([{"sku": sku, "location": "wh-east", "qty": 3}]),
        ));
        ids.push(reserve(server, json!([{"sku": sku, "qty": 2}])));
    }
    ids.push(reserve(
        server,
        json!(skus
            .iter()
            .map(|s| json!({"sku": s, "location": "wh-west", "qty": 1}))
            .collect::<Vec<_>>()),
    ));
    let (status, body) = server.post(&format!("/v1/reservations/{}/allocate", ids[0]), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(&format!("/v1/reservations/{}/allocate", ids[2]), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(&format!("/v1/reservations/{}/ship", ids[2]), json!({}));
    assert_eq!(status, 200, "{body}");
    let (status, body) = server.post(&format!("/v1/reservations/{}/release", ids[1]), json!({}));
    assert_eq!(status, 200, "{body}");
    event(
        server,
        json!({"event_id": format!("adj-{tag}"), "type": "adjustment", "source": "wms",
               "sku": skus[0], "location": "wh-west", "delta": -4, "reason": "damage"}),
    );
    event(
        server,
        json!({"event_id": format!("qh-{tag}"), "type": "quarantine", "source": "wms",
               "sku": skus[skus.len() - 1], "location": "wh-east", "qty": 5, "action": "hold"}),
    );
    ids
}

/// Reads the snapshot's journal seq from a copy of a stopped server's data
/// dir (white box: `meta/snapshot_seq`), leaving the original untouched.
fn snapshot_seq_on_disk(data: &Path) -> u64 {
    use stockwire::storage::records::META_SNAPSHOT_SEQ;
    use stockwire::storage::{codec, RocksStore, Space, Store};
    let copy = tempfile::tempdir().expect("temp dir");
    for entry in std::fs::read_dir(data).expect("data dir") {
        let entry = entry.expect("entry");
        if entry.file_type().map(|t| t.is_file()).unwrap_or(false) && entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), copy.path().join(entry.file_name())).expect("copy");
        }
    }
    let store = RocksStore::open(copy.path()).expect("open the copy");
    match store
        .get(Space::Meta, META_SNAPSHOT_SEQ)
        .expect("read meta")
    {
        Some(bytes) => codec::decode::<u64>(&bytes).expect("decode"),
        None => 0,
    }
}

#[test]
fn sigterm_then_restart_keeps_everything() {
    let mut server = Server::start("");
    let skus = ["term-a", "term-b", "term-c"];
    let ids = churn(&server, &skus, "term");
    let before = availability(&server, &skus);
    let held_before = reservations(&server, &ids);
    let (log_before, head) = server.event_log(1000);
    assert_gap_free(&log_before, head);

    terminate_leniently(&mut server);

    server.spawn();
    let (status, ready) = server.get("/readyz");
    assert_eq!(status, 200, "{ready}");
    assert_eq!(availability(&server, &skus), before);
    assert_eq!(reservations(&server, &ids), held_before);
    let (log_after, head_after) = server.event_log(1000);
    assert_eq!(head_after, head, "journal head unchanged");
    assert_eq!(log_after, log_before, "the log is unchanged");
}

#[test]
fn sigterm_exits_0_with_a_final_snapshot() {
    // BASE_CONFIG has snapshot_interval_seconds = 3600: the only snapshot is
    // the one SIGTERM writes. Several rounds, as the failure is a race.
    let mut server = Server::start("");
    let skus = ["final-a", "final-b", "final-c"];
    for round in 0..5 {
        let ids = churn(&server, &skus, &format!("final-{round}"));
        let before = availability(&server, &skus);
        let held_before = reservations(&server, &ids);
        let (_, head) = server.event_log(1000);

        assert_eq!(
            server.terminate(),
            Some(0),
            "round {round}: SIGTERM exit code"
        );
        assert_eq!(
            snapshot_seq_on_disk(server.data_dir()),
            head,
            "round {round}: the SIGTERM snapshot covers the whole journal"
        );

        server.spawn();
        assert_eq!(availability(&server, &skus), before, "round {round}");
        assert_eq!(reservations(&server, &ids), held_before, "round {round}");
        let (_, head_after) = server.event_log(1000);
        assert_eq!(head_after, head, "round {round}: journal head unchanged");
    }
}

#[test]
fn kill_9_after_a_snapshot_recovers_snapshot_plus_journal() {
    let base = BASE_CONFIG.replace(
        "snapshot_interval_seconds = 3600",
        "snapshot_interval_seconds = 1",
    );
    assert_ne!(base, BASE_CONFIG);
    let mut server = Server::start_with_base(&base, "");
    let ready_at = Instant::now();
    let skus = ["snap-a", "snap-b", "snap-c", "snap-d"];
    let mut ids = churn(&server, &skus[..3], "one");
    let (_, head_one) = server.event_log(1000);
    // Snapshots tick every second from readiness: by 2.3 s at least one has
    // covered the first round; the second round then fits before the next.
    let wait = Duration::from_millis(2300).saturating_sub(ready_at.elapsed());
    std::thread::sleep(wait.max(Duration::from_millis(1500)));
    let round_two = Instant::now();
    ids.extend(churn(&server, &skus[1..], "two"));
    let (status, body) = server.post(&format!("/v1/reservations/{}/release", ids[3]), json!({}));
    assert_eq!(status, 200, "{body}");
    let before = availability(&server, &skus);
    let held_before = reservations(&server, &ids);
    let (log_before, head) = server.event_log(1000);
    assert_gap_free(&log_before, head);
    server.kill();
    let round_two = round_two.elapsed();

    let snapshot_seq = snapshot_seq_on_disk(server.data_dir());
    eprintln!(
        "snapshot: covers seq {snapshot_seq}; first round ended at {head_one}, head {head}; second round + kill took {:.0} ms",
        round_two.as_secs_f64() * 1000.0
    );
    assert!(
        snapshot_seq >= head_one,
        "a snapshot covered the first round ({snapshot_seq} < {head_one})"
    );
    if snapshot_seq >= head {
        eprintln!("  (a snapshot also covered the second round: no replay exercised this run)");
    }

    server.spawn();
    assert_eq!(availability(&server, &skus), before);
    assert_eq!(reservations(&server, &ids), held_before);
    let (log_after, head_after) = server.event_log(1000);
    assert_eq!(head_after, head);
    assert_eq!(log_after, log_before);
}

#[test]
fn readyz_and_the_api_wait_for_recovery() {
    let mut server = Server::start("");
    // Enough journal to make recovery take a moment.
    for batch in 0..5 {
        let events: Vec<Value> = (0..1000)
            .map(|i| {
                json!({"event_id": format!("r-{batch}-{i}"), "type": "receipt", "source": "wms",
                       "sku": format!("ready-{i}"), "location": "wh-east", "qty": batch + 1})
            })
            .collect();
        let (status, body) = server.post("/v1/events", json!({ "events": events }));
        assert_eq!(status, 200, "{body}");
    }
    let expected = availability(&server, &["ready-0", "ready-999"]);
    let (_, head) = server.event_log(1000);
    server.kill();

    // Watch /readyz and the API while the server comes back.
    let (ready_url, api_url) = (
        server.url("/readyz"),
        server.url("/v1/availability/ready-999"),
    );
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let done = done.clone();
        std::thread::spawn(move || {
            let agent = ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(2))
                .build();
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                let ready = try_call(agent.get(&ready_url), None).ok();
                let api = try_call(agent.get(&api_url), None).ok();
                seen.push((ready, api));
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        })
    };
    server.spawn();
    done.store(true, Ordering::Relaxed);
    let seen = watcher.join().expect("watcher");

    let mut ready_seen = false;
    let mut unavailable = 0;
    for (ready, api) in &seen {
        match ready {
            Some((200, body)) => {
                ready_seen = true;
                assert_eq!(
                    body["journal_head_seq"].as_u64().unwrap_or(head),
                    head,
                    "{body}"
                );
            }
            Some((503, _)) => {
                assert!(!ready_seen, "/readyz went back to 503 after 200");
                unavailable += 1;
            }
            None => assert!(!ready_seen, "stopped listening after ready"),
            Some((status, body)) => panic!("/readyz answered {status}: {body}"),
        }
        match api {
            None => {}
            Some((503, body)) => assert_eq!(body["code"], "unavailable", "{body}"),
            Some((200, body)) => assert_eq!(body, &expected[1], "served partial state"),
            Some((status, body)) => panic!("API during recovery: {status} {body}"),
        }
    }
    eprintln!(
        "readyz: {} probes, {unavailable} x 503 before 200",
        seen.len()
    );
    let (status, body) = server.get("/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(availability(&server, &["ready-0", "ready-999"]), expected);
}

#[test]
fn fsync_durability_keeps_acknowledged_reservations_across_kill_9() {
    let base = BASE_CONFIG.replace("durability = \"wal\"", "durability = \"fsync\"");
    let mut server = Server::start_with_base(&base, "");
    server.receive("fsync-a", "wh-east", 50);
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let id = format!("fsync-{n}");
        let (status, body) = server.post(
            "/v1/reservations",
            json!({"reservation_id": id, "channel": "web",
                   "lines": [{"sku": "fsync-a", "location": "wh-east", "qty": 2}]}),
        );
        assert_eq!(status, 201, "{body}");
        acknowledged.push(id);
    }
    server.kill();
    server.spawn();
    for id in &acknowledged {
        let (status, body) = server.get(&format!("/v1/reservations/{id}"));
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["status"], "held");
    }
    assert_eq!(position(&server, "fsync-a", "wh-east")["reserved"], 40);
}
