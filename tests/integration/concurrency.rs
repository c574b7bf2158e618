//! Many clients racing for the last units: never more holds than stock,
//! every acknowledged hold is real, and a multi-line hold is all-or-nothing.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::harness::{position, try_call, Server};

const THREADS: usize = 16;
/// 409s a client must see (with the stock gone) before it stops.
const SOLD_OUT_SEEN: usize = 3;
/// Upper bound on requests per client, whatever happens.
const REQUESTS_PER_THREAD_MAX: usize = 2_000;

/// What one client thread saw.
#[derive(Default)]
struct Outcome {
    created: Vec<String>,
    insufficient: usize,
    unexpected: Vec<(u16, Value)>,
    requests: usize,
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_idle_connections_per_host(2)
        .build()
}

/// Each client POSTs `body_of(thread)` until it has seen `sold_out(agent)`
/// true after a 409 `SOLD_OUT_SEEN` times (or hits the request bound).
fn race(
    server: &Server,
    body_of: impl Fn(usize) -> Value + Send + Sync + 'static,
    sold_out: impl Fn(&ureq::Agent) -> bool + Send + Sync + 'static,
) -> (Vec<Outcome>, Duration) {
    let url = server.url("/v1/reservations");
    let body_of = Arc::new(body_of);
    let sold_out = Arc::new(sold_out);
    let barrier = Arc::new(Barrier::new(THREADS + 1));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let (url, body_of, sold_out, barrier) = (
                url.clone(),
                body_of.clone(),
                sold_out.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                let agent = agent();
                let body = body_of(thread);
                let mut outcome = Outcome::default();
                let mut seen_sold_out = 0;
                barrier.wait();
                while outcome.requests < REQUESTS_PER_THREAD_MAX && seen_sold_out < SOLD_OUT_SEEN {
                    outcome.requests += 1;
                    let (status, answer) = match try_call(agent.post(&url), Some(body.clone())) {
                        Ok(reply) => reply,
                        Err(error) => {
                            outcome.unexpected.push((0, json!(error)));
                            break;
                        }
                    };
                    match status {
                        201 => match answer["reservation_id"].as_str() {
                            Some(id) => outcome.created.push(id.to_string()),
                            None => outcome.unexpected.push((status, answer)),
                        },
                        409 if answer["code"] == "insufficient_available" => {
                            outcome.insufficient += 1;
                            if sold_out(&agent) {
                                seen_sold_out += 1;
                            }
                        }
                        _ => outcome.unexpected.push((status, answer)),
                    }
                }
                outcome
            })
        })
        .collect();
    barrier.wait();
    let started = Instant::now();
    let outcomes: Vec<Outcome> = handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect();
    (outcomes, started.elapsed())
}

/// `available` of every `(sku, location)` through the given agent.
fn available_all(agent: &ureq::Agent, base: &str, positions: &[(&str, &str)]) -> Option<Vec<i64>> {
    positions
        .iter()
        .map(|(sku, location)| {
            let (status, body) =
                try_call(agent.get(&format!("{base}/v1/availability/{sku}")), None).ok()?;
            if status != 200 {
                return None;
            }
            body["locations"]
                .as_array()?
                .iter()
                .find(|p| p["location"] == *location)?["available"]
                .as_i64()
        })
        .collect()
}

fn report(name: &str, outcomes: &[Outcome], elapsed: Duration) -> (Vec<String>, usize) {
    let created: Vec<String> = outcomes.iter().flat_map(|o| o.created.clone()).collect();
    let requests: usize = outcomes.iter().map(|o| o.requests).sum();
    let insufficient: usize = outcomes.iter().map(|o| o.insufficient).sum();
    let unexpected: Vec<&(u16, Value)> = outcomes.iter().flat_map(|o| &o.unexpected).collect();
    eprintln!(
        "{name}: {THREADS} clients, {requests} requests ({} created, {insufficient} x 409) in {:.0} ms: {:.0} requests/s, {:.0} reservations/s",
        created.len(),
        elapsed.as_secs_f64() * 1000.0,
        requests as f64 / elapsed.as_secs_f64(),
        created.len() as f64 / elapsed.as_secs_f64(),
    );
    assert!(
        unexpected.is_empty(),
        "{name}: unexpected answers: {:?}",
        &unexpected[..unexpected.len().min(5)]
    );
    (created, requests)
}

#[test]
fn sixteen_clients_take_exactly_the_stock_of_one_position() {
    let server = Server::start("");
    let sku = "conc-single";
    server.receive(sku, "wh-east", 500);
    let base = server.url("");
    let (outcomes, elapsed) = race(
        &server,
        move |_| json!({"channel": "web", "lines": [{"sku": sku, "location": "wh-east", "qty": 1}]}),
        move |agent| available_all(agent, &base, &[(sku, "wh-east")]) == Some(vec![0]),
    );
    let (created, _) = report("single-line", &outcomes, elapsed);
    assert_eq!(created.len(), 500, "exactly the stock is reserved");
    let unique: HashSet<&String> = created.iter().collect();
    assert_eq!(unique.len(), 500, "every 201 has its own reservation id");
    for outcome in &outcomes {
        assert!(
            outcome.insufficient >= SOLD_OUT_SEEN,
            "every client stopped on a shortage"
        );
    }

    let p = position(&server, sku, "wh-east");
    assert_eq!(p["on_hand"], 500, "{p}");
    assert_eq!(p["reserved"], 500, "{p}");
    assert_eq!(p["available"], 0, "{p}");

    let agent = agent();
    for id in &created {
        let (status, body) = try_call(
            agent.get(&server.url(&format!("/v1/reservations/{id}"))),
            None,
        )
        .expect("GET reservation");
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["status"], "held", "{body}");
        assert_eq!(
            body["lines"],
            json!([{"sku": sku, "location": "wh-east", "qty": 1, "backordered": 0}]),
            "{body}"
        );
    }

    // The log agrees: one inventory.reserved per hold, no more.
    let (events, head) = server.event_log(1000);
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "gap-free seq");
    let reserved_ids: HashSet<&str> = events
        .iter()
        .filter(|e| e["type"] == "inventory.reserved")
        .filter_map(|e| e["reservation_id"].as_str())
        .collect();
    assert_eq!(reserved_ids.len(), 500);
    assert_eq!(reserved_ids, created.iter().map(String::as_str).collect());
}

#[test]
fn multi_line_holds_are_all_or_nothing_under_contention() {
    let server = Server::start("");
    let (a, b) = ("conc-multi-a", "conc-multi-b");
    server.receive(a, "wh-east", 100);
    server.receive(b, "wh-east", 100);
    let base = server.url("");
    let (outcomes, elapsed) = race(
        &server,
        // Half the clients list the lines the other way round.
        move |thread| {
            let (first, second) = if thread % 2 == 0 { (a, b) } else { (b, a) };
            json!({"channel": "web", "lines": [
                {"sku": first, "location": "wh-east", "qty": 1},
                {"sku": second, "location": "wh-east", "qty": 1},
            ]})
        },
        move |agent| {
            available_all(agent, &base, &[(a, "wh-east"), (b, "wh-east")]) == Some(vec![0, 0])
        },
    );
    let (created, _) = report("multi-line", &outcomes, elapsed);

    let pa = position(&server, a, "wh-east");
    let pb = position(&server, b, "wh-east");
    assert_eq!(
        pa["reserved"], pb["reserved"],
        "one line held without the other: {pa} / {pb}"
    );
    assert_eq!(created.len(), 100, "exactly the stock is reserved");
    assert_eq!(pa["reserved"], 100, "{pa}");
    assert_eq!(pa["available"], 0, "{pa}");
    assert_eq!(pb["available"], 0, "{pb}");

    let agent = agent();
    for id in &created {
        let (status, body) = try_call(
            agent.get(&server.url(&format!("/v1/reservations/{id}"))),
            None,
        )
        .expect("GET reservation");
        assert_eq!(status, 200, "{id}: {body}");
        assert_eq!(body["status"], "held", "{body}");
        let mut skus: Vec<&str> = body["lines"]
            .as_array()
            .map(|l| l.iter().filter_map(|l| l["sku"].as_str()).collect())
            .unwrap_or_default();
        skus.sort_unstable();
        assert_eq!(skus, vec![a, b], "{body}");
    }

    // Per reservation id, what the log says it still holds at each SKU:
    // equal on both, 1 for the created ones and 0 for the compensated ones.
    let (events, head) = server.event_log(1000);
    let seqs: Vec<u64> = events.iter().filter_map(|e| e["seq"].as_u64()).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<_>>(), "gap-free seq");
    let mut net: HashMap<String, (i64, i64)> = HashMap::new();
    for event in &events {
        let Some(id) = event["reservation_id"].as_str() else {
            continue;
        };
        let change = event["delta"]["reserved"].as_i64().unwrap_or(0);
        let entry = net.entry(id.to_string()).or_default();
        if event["sku"] == a {
            entry.0 += change;
        } else {
            entry.1 += change;
        }
    }
    let created: HashSet<&str> = created.iter().map(String::as_str).collect();
    for (id, (on_a, on_b)) in &net {
        let expected = i64::from(created.contains(id.as_str()));
        assert_eq!(
            (*on_a, *on_b),
            (expected, expected),
            "reservation {id} in the log"
        );
    }
    let compensated = net.len() - created.len();
    eprintln!("multi-line: {compensated} attempts held one line and were compensated");
}
