//! Partition groups (docs/CLUSTER.md, "Partition groups"): the partitions
//! spread over two owners, each group with its own R3 stream, on a 3-server
//! nats-server cluster on loopback. Two "machines", `a` and `b`, each run one
//! process per group; `a` owns group 0 and `b` group 1. Every route is taken
//! by every process: a SKU's requests reach its group's owner, an events batch
//! and an availability query are split and merged, a cart over both groups is
//! held in both (and released in both when a part is short), and after a
//! `kill -9` of a group's owner its other member serves that group, with every
//! acknowledged hold still there and the channel converged.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::channels::{wait_converged, wait_for, webhook_channel, Receiver};
use crate::cluster::{load, verdict, Attempts, Verdict};
use crate::harness::{rand_suffix, try_call, Server};
use crate::nats::NatsCluster;

const PARTITIONS: u32 = 64;
const KEY: &str = crate::cluster::LOAD_KEY;
/// How long a cart's part is held before the cart is whole (30 by default).
const CART_LEASE_SECONDS: i64 = 10;

/// The process of partition group `group` on machine `machine` (its node id).
fn member(
    machine: &str,
    group: u32,
    nats: &str,
    stream: &str,
    receiver: &Receiver,
    inbox: &std::path::Path,
) -> Server {
    let channel = webhook_channel("web", receiver, "coalesce_ms = 50", "batch_max = 500");
    // Every member has the inbox (shared storage in real life); group 0's
    // owner runs it.
    let inbox = crate::inbox::inbox_config(inbox, "");
    let mut server = Server::prepare(|port, data| {
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndurability = \"wal\"\n\
             partitions = {PARTITIONS}\n\
             [[locations]]\nid = \"wh-east\"\nkind = \"warehouse\"\n\
             [[locations]]\nid = \"wh-west\"\nkind = \"warehouse\"\n\
             {channel}\n{inbox}\n\
             [[keys]]\nname = \"admin\"\nkey = \"{KEY}\"\nrole = \"admin\"\n\
             rate_limit = {{ per_second = 100000, burst = 100000 }}\n\
             [cluster]\nnode = \"{machine}\"\nurl = \"{nats}\"\nstream = \"{stream}\"\n\
             advertise = \"http://127.0.0.1:{port}\"\nheartbeat_ms = 100\ntakeover_after_ms = 1000\n\
             groups = 2\ngroup = {group}\ncart_lease_seconds = {CART_LEASE_SECONDS}\n",
            data.display()
        )
    });
    server.token = Some(KEY.to_string());
    server
}

fn view(server: &Server) -> Option<Value> {
    match try_call(server.request("GET", "/v1/cluster"), None) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// A SKU of partition group `group`, named after `prefix`.
fn sku_in(group: u32, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|sku| stockwire::actors::partition_of(sku, PARTITIONS) % 2 == group)
        .expect("a SKU of the group")
}

fn send(server: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    try_call(server.request(method, path), body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// [`verdict`]'s position checks through `server`.
fn verdict_via(server: &Server, skus: &[String], attempts: &Attempts) -> Verdict {
    verdict(server, std::slice::from_ref(server), skus, attempts)
}

/// A reservation's `expires_at - created_at`, in seconds.
fn ttl_of(reservation: &Value) -> i64 {
    let at = |field: &str| {
        let text = reservation[field]
            .as_str()
            .unwrap_or_else(|| panic!("{reservation}"));
        chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339")
    };
    (at("expires_at") - at("created_at")).num_seconds()
}

/// A cart part's `lease_expires_at - created_at`, in seconds (0 without one).
fn lease_of(part: &Value) -> i64 {
    let Some(lease) = part["lease_expires_at"].as_str() else {
        return 0;
    };
    let at = |text: &str| chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339");
    let created = part["created_at"]
        .as_str()
        .unwrap_or_else(|| panic!("{part}"));
    (at(lease) - at(created)).num_seconds()
}

/// Group 0's part of reservation `id`, read from its owner `a0` directly (as
/// a node's part is), whatever the other group's state.
fn part_of_group_0(a0: &Server, id: &str) -> (u16, Value) {
    let part = a0
        .request("GET", &format!("/v1/reservations/{id}"))
        .set("X-Stockwire-Forwarded-By", "test");
    try_call(part, None).expect("answer")
}

fn reserved(server: &Server, sku: &str) -> u64 {
    let (status, body) = send(server, "GET", &format!("/v1/availability/{sku}"), None);
    assert_eq!(status, 200, "{body}");
    body["total"]["reserved"].as_u64().expect("reserved")
}

#[test]
fn partition_groups_spread_over_nodes_and_every_route_works_on_every_node() {
    let nats = NatsCluster::start();
    let receiver = Receiver::ok();
    let stream = format!("SWG{}", rand_suffix());
    let url = nats.urls.join(",");
    let inbox = tempfile::tempdir().expect("inbox dir");
    let member = |machine, group| member(machine, group, &url, &stream, &receiver, inbox.path());
    // Started in this order, `a` owns group 0 and `b` group 1.
    let mut a0 = member("a", 0);
    let mut b1 = member("b", 1);
    let mut b0 = member("b", 0);
    let mut a1 = member("a", 1);
    for server in [&mut a0, &mut b1, &mut b0, &mut a1] {
        server.spawn();
    }
    // Every process knows both groups' owners.
    for server in [&a0, &b1, &b0, &a1] {
        let owners = wait_for("both groups' owners", Duration::from_secs(20), || {
            let view = view(server)?;
            let owners: Vec<String> = view["group_owners"]
                .as_array()?
                .iter()
                .map(|g| g["owner"].as_str().map(str::to_owned))
                .collect::<Option<_>>()?;
            (owners.len() == 2).then_some(owners)
        });
        assert_eq!(owners, ["a", "b"], "group 0 on a, group 1 on b");
    }
    for server in [&a0, &b1, &b0, &a1] {
        let text = crate::ops::scrape(server);
        assert!(
            text.lines()
                .any(|l| l == "stockwire_cluster_groups_unowned 0"),
            "{text}"
        );
    }
    let (va0, vb1) = (view(&a0).unwrap(), view(&b1).unwrap());
    assert_eq!(va0["owned_partitions"], 32);
    assert_eq!(vb1["owned_partitions"], 32);
    assert_eq!(view(&b0).unwrap()["owned_partitions"], 0);
    assert_ne!(va0["stream"], vb1["stream"], "a stream per group");

    let (s0, s1) = (sku_in(0, "g"), sku_in(1, "g"));
    // One batch over both groups, through a follower: split, answered in order.
    let events: Vec<Value> = [(&s1, 10), (&s0, 20), (&s1, 5)]
        .iter()
        .enumerate()
        .map(|(i, (sku, qty))| {
            json!({"event_id": format!("rcv-{i}"), "type": "receipt", "source": "wms",
                   "sku": sku, "location": "wh-east", "qty": qty})
        })
        .collect();
    let (status, body) = send(&b0, "POST", "/v1/events", Some(json!({ "events": events })));
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    let ids: Vec<&str> = results
        .iter()
        .filter_map(|r| r["event_id"].as_str())
        .collect();
    assert_eq!(ids, ["rcv-0", "rcv-1", "rcv-2"], "{body}");
    assert!(results.iter().all(|r| r["status"] == "applied"), "{body}");
    // Each group's journal has its own events: group 1's first two, group 0's one.
    assert_eq!(results[0]["seq"], 1, "{body}");
    assert_eq!(results[1]["seq"], 1, "{body}");
    assert_eq!(results[2]["seq"], 2, "{body}");

    // A SKU's read from every process, whichever group it is in.
    for server in [&a0, &b1, &b0, &a1] {
        let (status, body) = send(server, "GET", &format!("/v1/availability/{s1}"), None);
        assert_eq!(
            (status, &body["total"]["on_hand"]),
            (200, &json!(15)),
            "{body}"
        );
        let (status, body) = send(
            server,
            "POST",
            "/v1/availability/query",
            Some(json!({"skus": [s1, "never-seen", s0]})),
        );
        assert_eq!(status, 200, "{body}");
        let skus: Vec<&str> = body["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|i| i["sku"].as_str())
            .collect();
        assert_eq!(skus, [s1.as_str(), "never-seen", s0.as_str()], "{body}");
    }

    // A request that reaches the wrong group's owner without dispatch (as a
    // forwarded one) is refused, not served from the wrong store.
    let misdirected = a0
        .request("GET", &format!("/v1/availability/{s1}"))
        .set("X-Stockwire-Forwarded-By", "test");
    let (status, body) = try_call(misdirected, None).expect("answer");
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("partition group 1"),
        "{body}"
    );

    // A cart over both groups, through group 1's follower: held in both.
    let cart = json!({"reservation_id": "cart-1", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 2},
        {"sku": s1, "location": "wh-east", "qty": 3}]});
    let (status, body) = send(&a1, "POST", "/v1/reservations", Some(cart.clone()));
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["lines"].as_array().map(Vec::len), Some(2), "{body}");
    // Held on the lease until both parts were, then confirmed for the TTL.
    assert_eq!(ttl_of(&body), 900, "{body}");
    assert_eq!(ttl_of(&part_of_group_0(&a0, "cart-1").1), 900);
    // That confirmation is the nodes' own step, not a client's route.
    for server in [&a0, &b1] {
        let (status, body) = send(
            server,
            "POST",
            "/v1/reservations/cart-1/confirm",
            Some(json!({"ttl_seconds": 5})),
        );
        assert_eq!(
            (status, &body["code"]),
            (404, &json!("not_found")),
            "{body}"
        );
    }
    // Retried: the same answer, nothing held twice.
    let (status, body) = send(&b0, "POST", "/v1/reservations", Some(cart.clone()));
    assert_eq!(status, 200, "{body}");
    assert_eq!((reserved(&a0, &s0), reserved(&a0, &s1)), (2, 3));
    // With another TTL it is another cart under the same id, as on one node.
    let mut other = cart;
    other["ttl_seconds"] = json!(600);
    let (status, body) = send(&b1, "POST", "/v1/reservations", Some(other));
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );
    // A keyed cart and its keyed retry: the parts' first answers replayed
    // (marked so), nothing released or held twice.
    let keyed_cart = json!({"reservation_id": "cart-kr", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 1}]});
    for (server, replayed) in [(&a1, None), (&b0, Some("true"))] {
        let keyed = server
            .request("POST", "/v1/reservations")
            .set("Idempotency-Key", "cart-kr-key")
            .timeout(Duration::from_secs(10));
        let answer = keyed.send_json(keyed_cart.clone()).expect("201");
        assert_eq!(answer.header("idempotent-replayed"), replayed);
        let status = answer.status();
        let body: Value = answer.into_json().expect("JSON");
        assert_eq!((status, &body["status"]), (201, &json!("held")), "{body}");
        assert_eq!(ttl_of(&body), 900, "{body}");
    }
    assert_eq!((reserved(&a0, &s0), reserved(&a0, &s1)), (3, 4));
    // A key a single node refuses (over 255 characters) is refused whole, as
    // there: nothing held, no events applied.
    let long_key = "k".repeat(256);
    let (status, body) = try_call(
        b0.request("POST", "/v1/reservations")
            .set("Idempotency-Key", &long_key),
        Some(
            json!({"reservation_id": "cart-long", "channel": "web", "lines": [
            {"sku": s0, "location": "wh-east", "qty": 1},
            {"sku": s1, "location": "wh-east", "qty": 1}]}),
        ),
    )
    .expect("answer");
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    let events = json!({"events": [
        {"event_id": "long-0", "type": "receipt", "source": "wms", "sku": s0, "location": "wh-west", "qty": 1},
        {"event_id": "long-1", "type": "receipt", "source": "wms", "sku": s1, "location": "wh-west", "qty": 1}]});
    let (status, body) = try_call(
        a1.request("POST", "/v1/events")
            .set("Idempotency-Key", &long_key),
        Some(events),
    )
    .expect("answer");
    assert_eq!(
        (status, &body["code"]),
        (400, &json!("bad_request")),
        "{body}"
    );
    // A query takes no key: one sent anyway changes nothing, as on one node.
    let (status, body) = try_call(
        b0.request("POST", "/v1/availability/query")
            .set("Idempotency-Key", &long_key),
        Some(json!({"skus": [s0, s1]})),
    )
    .expect("answer");
    assert_eq!(status, 200, "{body}");
    let on_hand: Vec<&Value> = body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| &item["total"]["on_hand"])
        .collect();
    assert_eq!(on_hand, [&json!(20), &json!(15)], "{body}");
    assert_eq!((reserved(&a0, &s0), reserved(&a0, &s1)), (3, 4));
    let (status, body) = send(&a0, "POST", "/v1/reservations/cart-kr/release", None);
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("released")),
        "{body}"
    );
    assert_eq!((reserved(&a0, &s0), reserved(&a0, &s1)), (2, 3));
    for server in [&a0, &b1, &b0, &a1] {
        let (status, body) = send(server, "GET", "/v1/reservations/cart-1", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "held", "{body}");
        assert_eq!(body["lines"].as_array().map(Vec::len), Some(2), "{body}");
    }
    // A single-group reservation is that group's alone.
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/reservations",
        Some(json!({"reservation_id": "one-1", "channel": "web",
                    "lines": [{"sku": s1, "location": "wh-east", "qty": 1}]})),
    );
    assert_eq!(status, 201, "{body}");

    // A node's confirmation sent by a client with the nodes' headers moves
    // no deadline but a cart part's on its lease.
    let forged = b1
        .request("POST", "/v1/reservations/one-1/confirm")
        .set("X-Stockwire-Forwarded-By", "test")
        .set("X-Stockwire-Part", "1");
    let (status, body) = try_call(forged, Some(json!({"ttl_seconds": 2_000_000}))).expect("answer");
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );

    // A cart short in one group: refused, and the other group's part released.
    let (status, body) = send(
        &b1,
        "POST",
        "/v1/reservations",
        Some(
            json!({"reservation_id": "cart-2", "channel": "web", "lines": [
            {"sku": s0, "location": "wh-east", "qty": 1},
            {"sku": s1, "location": "wh-east", "qty": 100}]}),
        ),
    );
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "insufficient_available", "{body}");
    assert_eq!(body["shortages"][0]["sku"], s1.as_str(), "{body}");
    assert_eq!((reserved(&b0, &s0), reserved(&b0, &s1)), (2, 4));
    let (_, body) = send(&a1, "GET", "/v1/reservations/cart-2", None);
    assert_eq!(body["status"], "released", "{body}");
    // The same with an Idempotency-Key: the release of the held part is the
    // node's own step, not a reuse of the client's key on another route.
    let keyed = b0
        .request("POST", "/v1/reservations")
        .set("Idempotency-Key", "cart-k-key");
    let cart_k = json!({"reservation_id": "cart-k", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 100}]});
    let (status, body) = try_call(keyed, Some(cart_k)).expect("answer");
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("insufficient_available")),
        "{body}"
    );
    let (_, body) = send(&a1, "GET", "/v1/reservations/cart-k", None);
    assert_eq!(body["status"], "released", "{body}");
    assert_eq!((reserved(&b0, &s0), reserved(&b0, &s1)), (2, 4));

    // Retrying that cart's id once it fits holds nothing: its first part was
    // released, so the id is spent (a single node answers the released one).
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/reservations",
        Some(
            json!({"reservation_id": "cart-2", "channel": "web", "lines": [
            {"sku": s0, "location": "wh-east", "qty": 1},
            {"sku": s1, "location": "wh-east", "qty": 2}]}),
        ),
    );
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );
    assert_eq!((reserved(&b0, &s0), reserved(&b0, &s1)), (2, 4));

    // A part made later under a refused cart's id (a body with only group 1's
    // line): the cart's parts now differ, so allocate and ship change nothing.
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/reservations",
        Some(
            json!({"reservation_id": "cart-m", "channel": "web", "lines": [
            {"sku": s0, "location": "wh-east", "qty": 1},
            {"sku": s1, "location": "wh-east", "qty": 100}]}),
        ),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/reservations",
        Some(json!({"reservation_id": "cart-m", "channel": "web",
                    "lines": [{"sku": s1, "location": "wh-east", "qty": 1}]})),
    );
    assert_eq!(status, 201, "{body}");
    for action in ["allocate", "ship"] {
        let (status, body) = send(
            &b1,
            "POST",
            &format!("/v1/reservations/cart-2/{action}"),
            None,
        );
        assert_eq!(
            (status, &body["code"]),
            (409, &json!("invalid_state")),
            "{action}: {body}"
        );
    }
    let (_, body) = send(&a1, "GET", "/v1/reservations/cart-m", None);
    assert_eq!(body["status"], "held", "the part holding stock: {body}");
    assert_eq!(body["part_statuses"], json!(["released", "held"]), "{body}");
    let (status, body) = send(&a1, "POST", "/v1/reservations/cart-m/release", None);
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("released")),
        "{body}"
    );
    assert_eq!((reserved(&b0, &s0), reserved(&b0, &s1)), (2, 4));
    for bad in ["01", "+1", "2", "x"] {
        let request = b0
            .request("GET", "/v1/events")
            .set("X-Stockwire-Group", bad);
        let (status, body) = try_call(request, None).expect("answer");
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Allocated and shipped across groups; a ship naming only one group's line
    // ships the other's 0 and releases it, as for any line not named.
    let (status, body) = send(
        &b1,
        "POST",
        "/v1/reservations",
        Some(
            json!({"reservation_id": "cart-3", "channel": "web", "lines": [
            {"sku": s1, "location": "wh-east", "qty": 1},
            {"sku": s0, "location": "wh-east", "qty": 1}]}),
        ),
    );
    assert_eq!(status, 201, "{body}");
    let skus: Vec<&str> = body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["sku"].as_str())
        .collect();
    assert_eq!(
        skus,
        [s1.as_str(), s0.as_str()],
        "lines in request order: {body}"
    );
    let (status, body) = send(&a1, "POST", "/v1/reservations/cart-3/allocate", None);
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("allocated")),
        "{body}"
    );
    let (status, body) = send(
        &b0,
        "POST",
        "/v1/reservations/cart-3/ship",
        Some(json!({"lines": [{"sku": s0, "location": "wh-east", "qty": 1}]})),
    );
    assert_eq!(
        (status, &body["status"]),
        (200, &json!("shipped")),
        "{body}"
    );
    assert_eq!((reserved(&b0, &s0), reserved(&b0, &s1)), (2, 4));
    let allocated = |sku: &str| {
        let (_, body) = send(&a0, "GET", &format!("/v1/availability/{sku}"), None);
        body["total"]["allocated"].clone()
    };
    assert_eq!((allocated(&s0), allocated(&s1)), (json!(0), json!(0)));

    // Refused whole, as on one node, before any group applies a part: too many
    // events over two groups.
    let too_many: Vec<Value> = (0..1001)
        .map(|i| {
            json!({"event_id": format!("many-{i}"), "type": "receipt", "source": "wms",
                   "sku": if i % 2 == 0 { &s0 } else { &s1 }, "location": "wh-east", "qty": 1})
        })
        .collect();
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/events",
        Some(json!({ "events": too_many })),
    );
    assert_eq!(status, 400, "{body}");
    let (_, body) = send(&a1, "GET", &format!("/v1/availability/{s1}"), None);
    assert_eq!(body["total"]["on_hand"], 15, "{body}");
    // Without a key a process that is no owner answers 401 itself.
    let anonymous = ureq::get(&format!(
        "http://127.0.0.1:{}/v1/availability/{s1}",
        b0.port
    ));
    let (status, _) = try_call(anonymous, None).expect("answer");
    assert_eq!(status, 401);

    // The event log is each group's own (X-Stockwire-Group), gap-free.
    for (group, expected) in [(0, vec!["rcv-1"]), (1, vec!["rcv-0", "rcv-2"])] {
        let request = b0
            .request("GET", "/v1/events?after=0")
            .set("X-Stockwire-Group", &group.to_string());
        let (status, body) = try_call(request, None).expect("events");
        assert_eq!(status, 200, "{body}");
        let receipts: Vec<&str> = body["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| e["type"] == "inventory.received")
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        assert_eq!(receipts, expected, "group {group}: {body}");
    }

    // Exceptions: numbered apart per group, listed together, each found by
    // its id from any process.
    let rejected: Vec<Value> = [&s0, &s1]
        .iter()
        .map(|sku| {
            json!({"event_id": format!("bad-{sku}"), "type": "receipt", "source": "wms",
                   "sku": sku, "location": "nowhere", "qty": 1})
        })
        .collect();
    let (status, body) = send(
        &a1,
        "POST",
        "/v1/events",
        Some(json!({ "events": rejected })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(&b0, "GET", "/v1/exceptions?limit=10", None);
    assert_eq!(status, 200, "{body}");
    let listed = body["exceptions"].as_array().expect("exceptions").clone();
    let ids: Vec<u64> = listed.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert_eq!(ids.len(), 2, "{body}");
    assert!(
        ids[0] < ids[1] && ids[0] % 2 != ids[1] % 2,
        "ids apart per group: {ids:?}"
    );
    for exception in &listed {
        let path = format!("/v1/exceptions/{}", exception["id"]);
        let (status, found) = send(&a0, "GET", &path, None);
        assert_eq!((status, &found["sku"]), (200, &exception["sku"]), "{found}");
    }
    let (_, page) = send(
        &a1,
        "GET",
        &format!("/v1/exceptions?limit=1&after={}", ids[0]),
        None,
    );
    assert_eq!(page["exceptions"][0]["id"], ids[1], "{page}");

    // A reconciliation over both groups, JSON and CSV (cart-3 shipped one of
    // s0: 19 on hand): every row checked once,
    // a row error keeps its row number.
    let (status, body) = send(
        &b1,
        "POST",
        "/v1/reconciliations",
        Some(json!({"source": "erp", "positions": [
            {"sku": s0, "location": "wh-east", "on_hand": 19},
            {"sku": s1, "location": "wh-east", "on_hand": 14},
            {"sku": s1, "location": "nowhere", "on_hand": 1}]})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["checked"],
            &body["matched"],
            &body["differences"],
            &body["rejected_rows"]
        ),
        (&json!(2), &json!(1), &json!(1), &json!(1)),
        "{body}"
    );
    assert_eq!(body["exceptions"][0]["sku"], s1.as_str(), "{body}");
    assert_eq!(body["errors"][0]["row"], 3, "{body}");
    let csv = format!("sku,location,on_hand\n{s1},wh-east,15\n{s0},wh-east,21\n{s0},wh-west,0\n");
    let request = a0
        .request("POST", "/v1/reconciliations?source=erp")
        .set("Content-Type", "text/csv");
    let answer = request.send_string(&csv).expect("reconciliation");
    let body: Value = answer.into_json().expect("json");
    assert_eq!(
        (&body["checked"], &body["matched"], &body["differences"]),
        (&json!(3), &json!(2), &json!(1)),
        "{body}"
    );

    // The channel's state from every group, merged; a resync queues every
    // group's SKUs.
    let (status, body) = send(&a1, "GET", "/v1/channels/web", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["groups"].as_array().map(Vec::len), Some(2), "{body}");
    let (status, body) = send(&b0, "POST", "/v1/channels/web/resync", None);
    assert_eq!(status, 202, "{body}");
    assert!(body["queued_skus"].as_u64() >= Some(2), "{body}");

    // A 3PL file with rows of both groups: group 0's owner reads it and has
    // group 1's rows applied by group 1's owner.
    let csv = format!(
        "sku,location,type,qty,reason\n{s1},wh-west,receipt,4,\n{s0},wh-west,receipt,6,\n\
         {s1},mars,receipt,1,\n{s1},wh-west,adjustment,-1,damage\n"
    );
    crate::inbox::drop_file(inbox.path(), "stock.csv", csv.as_bytes());
    let result = crate::inbox::processed(inbox.path(), "stock.csv");
    assert_eq!(result["status"], "processed", "{result}");
    assert_eq!(
        (&result["applied"], &result["rejected"]),
        (&json!(3), &json!(1)),
        "{result}"
    );
    let west = |sku: &str| {
        let (_, body) = send(&b1, "GET", &format!("/v1/availability/{sku}"), None);
        crate::cluster::location(&body, "wh-west")["on_hand"].clone()
    };
    assert_eq!((west(&s0), west(&s1)), (json!(6), json!(3)));

    // kill -9 of group 1's owner under reservation load through all four
    // processes, on SKUs of both groups: its other member serves group 1, from
    // every process; what was held in group 1 is still held, nothing is held
    // twice or oversold.
    let load_skus: Vec<String> = (0..4).map(|i| sku_in(i % 2, &format!("load{i}"))).collect();
    let seed: Vec<Value> = load_skus
        .iter()
        .map(|sku| {
            json!({"event_id": format!("seed-{sku}"), "type": "receipt", "source": "wms",
                   "sku": sku, "location": "wh-east", "qty": 100_000})
        })
        .collect();
    let (status, body) = send(&a0, "POST", "/v1/events", Some(json!({ "events": seed })));
    assert_eq!(status, 200, "{body}");
    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    let ports: Vec<u16> = [&a0, &b1, &b0, &a1].iter().map(|s| s.port).collect();
    let threads: Vec<_> = (0..2)
        .map(|t| {
            load(
                ports.clone(),
                load_skus.clone(),
                stop.clone(),
                attempts.clone(),
                t,
            )
        })
        .collect();
    let before = (reserved(&a0, &s0), reserved(&a0, &s1));
    std::thread::sleep(Duration::from_secs(2));
    b1.kill();
    // A cart over both groups while group 1 has no owner: answered 503 (or,
    // once served again, 201); retried with its id until held, it holds each
    // line once.
    let cart = json!({"reservation_id": "cart-fo", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 1}]});
    let held = wait_for(
        "the cart held after the failover",
        Duration::from_secs(30),
        || match try_call(a0.request("POST", "/v1/reservations"), Some(cart.clone())) {
            Ok((status @ (200 | 201), body)) => Some((status, body)),
            Ok((503, _)) | Err(_) => None,
            Ok((status, body)) => panic!("cart during failover: {status} {body}"),
        },
    );
    assert_eq!(held.1["status"], "held", "{held:?}");
    assert_eq!(
        (reserved(&a0, &s0), reserved(&a0, &s1)),
        (before.0 + 1, before.1 + 1)
    );
    let (status, body) = send(&a0, "POST", "/v1/reservations/cart-fo/release", None);
    assert_eq!(status, 200, "{body}");
    wait_for("group 1 served again", Duration::from_secs(20), || {
        let body = json!({"reservation_id": format!("after-{}", rand_suffix()), "channel": "web",
                          "lines": [{"sku": s1, "location": "wh-east", "qty": 1}]});
        matches!(
            try_call(a0.request("POST", "/v1/reservations"), Some(body)),
            Ok((201, _))
        )
        .then_some(())
    });
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let owners = view(&a0).unwrap()["group_owners"].clone();
    assert_eq!(owners[1]["owner"], "a", "{owners}");
    let attempts = attempts.lock().unwrap();
    assert!(
        attempts.acknowledged.len() > 50,
        "load ran: {}",
        attempts.acknowledged.len()
    );
    let running = [&a0, &b0, &a1];
    let verdict = verdict(&b0, &[], &load_skus, &attempts);
    assert_eq!(
        (verdict.lost, verdict.oversold, verdict.miscounted),
        (0, 0, 0)
    );
    for server in running {
        let verdict = verdict_via(server, &load_skus, &attempts);
        assert_eq!((verdict.oversold, verdict.miscounted), (0, 0));
    }
    let (status, body) = send(&b0, "GET", "/v1/reservations/cart-1", None);
    assert_eq!(
        (status, body["lines"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{body}"
    );
    let (status, body) = send(&b0, "GET", "/v1/reservations/one-1", None);
    assert_eq!((status, &body["status"]), (200, &json!("held")), "{body}");
    assert_eq!(reserved(&b0, &s1), 5);

    // Released through any process: both parts.
    let (status, body) = send(&b0, "POST", "/v1/reservations/cart-1/release", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "released", "{body}");
    assert_eq!((reserved(&a1, &s0), reserved(&a1, &s1)), (0, 2));

    // Each group's owner publishes its SKUs; the channel converges on both.
    wait_converged(&a0, "web", Some(&receiver), std::slice::from_ref(&s0));
    wait_converged(&a1, "web", Some(&receiver), std::slice::from_ref(&s1));

    // b's group-1 process comes back as a follower; once it has been caught up
    // for a while, a hands group 1 back to it (a's process steps down and exits
    // 3, for its supervisor to start it again as a follower).
    b1.spawn();
    let handed = wait_for("group 1 handed back to b", Duration::from_secs(30), || {
        let owners = view(&a0)?["group_owners"].clone();
        (owners[1]["owner"] == "b").then_some(owners)
    });
    assert_eq!(handed[0]["owner"], "a", "{handed}");
    let status = wait_for("a's group-1 process exits", Duration::from_secs(10), || {
        a1.child.as_mut()?.try_wait().ok().flatten()
    });
    assert_eq!(status.code(), Some(3), "stepped down");
    a1.spawn();
    let (status, body) = send(&a1, "GET", "/v1/reservations/one-1", None);
    assert_eq!((status, &body["status"]), (200, &json!("held")), "{body}");
    assert_eq!(view(&a1).unwrap()["role"], "follower");
    assert_eq!(reserved(&a1, &s1), 2);

    // A split batch posted again with its key: every part replayed, so the
    // merged answer says so.
    let keyed_events = json!({"events": [
        {"event_id": "kev-0", "type": "receipt", "source": "wms", "sku": s0, "location": "wh-east", "qty": 1},
        {"event_id": "kev-1", "type": "receipt", "source": "wms", "sku": s1, "location": "wh-east", "qty": 1}]});
    for replayed in [None, Some("true")] {
        let answer = a1
            .request("POST", "/v1/events")
            .set("Idempotency-Key", "kev-key")
            .timeout(Duration::from_secs(10))
            .send_json(keyed_events.clone())
            .expect("200");
        assert_eq!(answer.header("idempotent-replayed"), replayed);
    }

    // A cart whose coordinator dies after one part is held and before the
    // other answered: group 1's owner (b) is stopped, a cart goes through a's
    // group-1 process, which is killed once group 0's part is held (so no one
    // can take group 1 over meanwhile); b is killed too, the part it was sent
    // never read. Group 0's part, at its lease's end, asks group 1, which has
    // no owner: it keeps asking, and holds meanwhile.
    let before = (reserved(&a0, &s0), reserved(&a0, &s1));
    let pid = b1.child.as_ref().expect("b1 runs").id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill")
        .success());
    let cart = json!({"reservation_id": "cart-cd", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 1}]});
    let request = a1.request("POST", "/v1/reservations");
    let coordinator = std::thread::spawn(move || try_call(request, Some(cart)));
    wait_for("group 0's part held", Duration::from_secs(10), || {
        (reserved(&a0, &s0) == before.0 + 1).then_some(())
    });
    a1.kill();
    b1.kill();
    // No answer from the killed coordinator (or, had it waited out its third
    // of the lease for b first, a 503): never a 201.
    let answered = coordinator.join().expect("the client thread");
    assert!(
        matches!(answered, Err(_) | Ok((503, _))),
        "a cart not whole is never acknowledged: {answered:?}"
    );
    let (status, part) = part_of_group_0(&a0, "cart-cd");
    assert_eq!((status, &part["status"]), (200, &json!("held")), "{part}");
    assert_eq!(ttl_of(&part), 900, "the cart's deadline: {part}");
    assert_eq!(
        lease_of(&part),
        CART_LEASE_SECONDS,
        "held on its lease: {part}"
    );

    // A cart answered 503 and never retried, its coordinator then gone too:
    // with group 1 down, a cart through b0 holds group 0's part on its lease
    // and is answered 503; b0 is killed.
    let cart = json!({"reservation_id": "cart-nr", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 1}]});
    let (status, body) = send(&b0, "POST", "/v1/reservations", Some(cart));
    assert_eq!(status, 503, "{body}");
    b0.kill();
    let (status, part) = part_of_group_0(&a0, "cart-nr");
    assert_eq!((status, &part["status"]), (200, &json!("held")), "{part}");
    assert_eq!(lease_of(&part), CART_LEASE_SECONDS, "{part}");
    assert_eq!(reserved(&a0, &s0), before.0 + 2);

    // Past both leases, with group 1 still down: not let go on a guess.
    std::thread::sleep(Duration::from_secs(CART_LEASE_SECONDS as u64 + 2));
    for id in ["cart-cd", "cart-nr"] {
        let (_, part) = part_of_group_0(&a0, id);
        assert_eq!(part["status"], "held", "{part}");
    }
    // Group 1 served again (b restarted): it has neither part, takes both
    // ids, and group 0's parts let go.
    b1.spawn();
    for id in ["cart-cd", "cart-nr"] {
        let (_, part) = wait_for(
            "a part whose sibling never held let go",
            Duration::from_secs(30),
            || {
                let (status, part) = part_of_group_0(&a0, id);
                (part["status"] == "expired").then_some((status, part))
            },
        );
        assert_eq!(part["lines"][0]["sku"], s0.as_str(), "{part}");
    }
    assert_eq!(
        reserved(&a0, &s0),
        before.0,
        "group 0's stock is free again"
    );
    assert_eq!(reserved(&a0, &s1), before.1, "group 1 held nothing");
    // The cart's part for group 1, coming late, is refused: the id is taken.
    let late = b1
        .request("POST", "/v1/reservations")
        .set("X-Stockwire-Forwarded-By", "test")
        .set("X-Stockwire-Part", "1")
        .set("X-Stockwire-Lease", &CART_LEASE_SECONDS.to_string())
        .set("X-Stockwire-Siblings", "0");
    let late_part = json!({"reservation_id": "cart-cd", "channel": "web", "lines": [
        {"sku": s1, "location": "wh-east", "qty": 1}]});
    let (status, body) = try_call(late, Some(late_part)).expect("answer");
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("invalid_state")),
        "{body}"
    );
    assert_eq!(reserved(&a0, &s1), before.1);

    // A cart under the id of a reservation of group 1 alone: group 1 refuses
    // its part (409), and group 0's part, at its lease's end, finds in group 1
    // no part of this cart and lets go.
    let (status, body) = send(
        &a0,
        "POST",
        "/v1/reservations",
        Some(json!({"reservation_id": "reused", "channel": "web",
                    "lines": [{"sku": s1, "location": "wh-east", "qty": 1}]})),
    );
    assert_eq!(status, 201, "{body}");
    let cart = json!({"reservation_id": "reused", "channel": "web", "lines": [
        {"sku": s0, "location": "wh-east", "qty": 1},
        {"sku": s1, "location": "wh-east", "qty": 2}]});
    let (status, body) = send(&b1, "POST", "/v1/reservations", Some(cart));
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        (reserved(&a0, &s0), reserved(&a0, &s1)),
        (before.0 + 1, before.1 + 1),
        "group 0's part held on its lease, group 1's own reservation"
    );

    // Both parts held, the answer lost: sent as a coordinator sends them, to
    // each group's owner, and never answered to anyone. At the lease's end
    // each finds the other held, and both keep their stock to the cart's TTL.
    for (server, sku, group, sibling) in [(&a0, &s0, "0", "1"), (&b1, &s1, "1", "0")] {
        let part = server
            .request("POST", "/v1/reservations")
            .set("X-Stockwire-Forwarded-By", "test")
            .set("X-Stockwire-Part", group)
            .set("X-Stockwire-Lease", &CART_LEASE_SECONDS.to_string())
            .set("X-Stockwire-Siblings", sibling)
            .set("X-Stockwire-Cart", "0123456789abcdef0123456789abcdef");
        let body = json!({"reservation_id": "cart-lost", "channel": "web",
                          "ttl_seconds": 600,
                          "lines": [{"sku": sku, "location": "wh-east", "qty": 1}]});
        let (status, body) = try_call(part, Some(body)).expect("answer");
        assert_eq!(status, 201, "{body}");
        assert_eq!(lease_of(&body), CART_LEASE_SECONDS, "{body}");
    }
    let (_, whole) = wait_for(
        "both parts kept",
        Duration::from_secs(CART_LEASE_SECONDS as u64 + 20),
        || {
            let (status, body) = send(&a0, "GET", "/v1/reservations/cart-lost", None);
            let kept = status == 200
                && body["status"] == "held"
                && body["lines"].as_array().map(Vec::len) == Some(2)
                && [&a0, &b1].iter().all(|server| {
                    let read = server
                        .request("GET", "/v1/reservations/cart-lost")
                        .set("X-Stockwire-Forwarded-By", "test");
                    try_call(read, None)
                        .is_ok_and(|(_, part)| part.get("lease_expires_at").is_none())
                });
            kept.then_some((status, body))
        },
    );
    assert_eq!(ttl_of(&whole), 600, "{whole}");
    let (_, reused) = wait_for(
        "the refused cart's part let go",
        Duration::from_secs(10),
        || {
            let (status, part) = part_of_group_0(&a0, "reused");
            (part["status"] == "expired").then_some((status, part))
        },
    );
    assert_eq!(reused["lines"][0]["sku"], s0.as_str(), "{reused}");
    let (status, own) = send(&b1, "GET", "/v1/reservations/reused", None);
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["status"], "held", "group 1's own reservation: {own}");
    assert_eq!(
        (reserved(&a0, &s0), reserved(&a0, &s1)),
        (before.0 + 1, before.1 + 2),
        "the lost answer's cart, and group 1's own reservation"
    );
}
