//! Cluster mode (docs/CLUSTER.md) with real processes on loopback: a 3-server
//! nats-server cluster with JetStream, 3 stockwire nodes on one R3 journal
//! stream, reservation load through all three, and `kill -9` of the owner, of a
//! nats-server, then of the next owner. After each: every acknowledged
//! reservation is there, no position is oversold or held twice, the event log is
//! gap-free, the channel converges. And a stale owner (stopped with SIGSTOP
//! while its successor took over) is fenced and steps down when it resumes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::channels::{wait_converged, wait_for, webhook_channel, Receiver};
use crate::harness::{call, rand_suffix, try_call, Server};
use crate::nats::NatsCluster;

const ON_HAND: u64 = 2000;

/// One stockwire node of the cluster: `[cluster]` on `nats`, `web` published
/// to `receiver`.
fn node(i: usize, nats: &str, stream: &str, receiver: &Receiver) -> Server {
    let channel = webhook_channel("web", receiver, "coalesce_ms = 50", "batch_max = 500");
    Server::prepare(|port, data| {
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndurability = \"wal\"\n\
             snapshot_interval_seconds = 5\ndrift_check_seconds = 1\n\
             [[locations]]\nid = \"wh-east\"\nkind = \"warehouse\"\n\
             [[locations]]\nid = \"wh-west\"\nkind = \"warehouse\"\n\
             {channel}\n\
             [cluster]\nnode = \"n{i}\"\nurl = \"{nats}\"\nstream = \"{stream}\"\n\
             advertise = \"http://127.0.0.1:{port}\"\nheartbeat_ms = 100\ntakeover_after_ms = 1000\n",
            data.display()
        )
    })
}

fn cluster_view(server: &Server) -> Option<Value> {
    match try_call(server.request("GET", "/v1/cluster"), None) {
        Ok((200, body)) => Some(body),
        _ => None,
    }
}

/// The node of `nodes` that owns the journal and serves, waiting for one.
fn owner(nodes: &[Server]) -> usize {
    wait_for("an owner", Duration::from_secs(30), || {
        nodes.iter().position(|node| {
            node.child.is_some() && cluster_view(node).is_some_and(|view| view["role"] == "owner")
        })
    })
}

/// What the load threads saw: each attempt's id, SKU and answer.
#[derive(Default)]
struct Attempts {
    acknowledged: BTreeMap<String, String>,
    /// Answered otherwise than 201 or 409, or not answered: may have landed.
    unknown: BTreeMap<String, String>,
    refused: usize,
}

/// Reservation load through every node in turn, until `stop`.
fn load(
    ports: Vec<u16>,
    skus: Vec<String>,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Attempts>>,
    thread: usize,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut n = 0usize;
        // Bounded: the test stops it long before.
        while !stop.load(Ordering::Relaxed) && n < 200_000 {
            n += 1;
            let port = ports[n % ports.len()];
            let sku = skus[(n * 7 + thread) % skus.len()].clone();
            let id = format!("t{thread}-{n}");
            let request = ureq::post(&format!("http://127.0.0.1:{port}/v1/reservations"))
                .timeout(Duration::from_secs(20));
            let body = json!({"reservation_id": id, "channel": "web",
                              "lines": [{"sku": sku, "location": "wh-east", "qty": 1}]});
            let answer = try_call(request, Some(body));
            let mut attempts = attempts.lock().unwrap();
            match answer {
                Ok((201, _)) => {
                    attempts.acknowledged.insert(id, sku);
                }
                Ok((409, _)) => attempts.refused += 1,
                _ => {
                    attempts.unknown.insert(id, sku);
                    drop(attempts);
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    })
}

/// How long until a reservation through `via` is acknowledged again.
fn time_to_serve(via: &Server, sku: &str) -> Duration {
    let started = Instant::now();
    wait_for("serving again", Duration::from_secs(40), || {
        let body = json!({"reservation_id": format!("probe-{}", rand_suffix()), "channel": "web",
                          "lines": [{"sku": sku, "location": "wh-west", "qty": 1}]});
        match try_call(via.request("POST", "/v1/reservations"), Some(body)) {
            Ok((201, _)) => Some(started.elapsed()),
            _ => None,
        }
    })
}

/// Every acknowledged reservation is held; each SKU's `reserved` is the sum of the
/// reservations that exist (none held twice), never above on hand; the event log
/// read through `via` is gap-free.
fn check(via: &Server, skus: &[String], attempts: &Attempts) {
    for (id, sku) in &attempts.acknowledged {
        let (status, body) = via.get(&format!("/v1/reservations/{id}"));
        assert_eq!(
            status, 200,
            "acknowledged reservation {id} ({sku}) lost: {body}"
        );
        assert_eq!(body["status"], "held", "{body}");
    }
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, sku) in attempts.acknowledged.iter().chain(&attempts.unknown) {
        let (status, _) = via.get(&format!("/v1/reservations/{id}"));
        if status == 200 {
            *held.entry(sku.as_str()).or_default() += 1;
        }
    }
    for sku in skus {
        let (status, body) = via.get(&format!("/v1/availability/{sku}"));
        assert_eq!(status, 200, "{body}");
        let east = body["locations"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["location"] == "wh-east"))
            .cloned()
            .expect("wh-east");
        let reserved = east["reserved"].as_u64().expect("reserved");
        assert_eq!(east["on_hand"], ON_HAND, "{body}");
        assert!(reserved <= ON_HAND, "{sku} oversold: {body}");
        assert_eq!(
            reserved,
            held.get(sku.as_str()).copied().unwrap_or(0),
            "{sku}: reserved is not the sum of its reservations: {body}"
        );
    }
    let (events, head) = via.event_log(1000);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "the event log has gaps"
    );
}

/// Every running follower has applied the whole stream.
fn followers_caught_up(nodes: &[Server]) {
    wait_for("followers caught up", Duration::from_secs(20), || {
        let views: Vec<Value> = nodes
            .iter()
            .filter(|n| n.child.is_some())
            .filter_map(cluster_view)
            .collect();
        let last = views
            .iter()
            .filter_map(|v| v["applied_seq"].as_u64())
            .max()?;
        views
            .iter()
            .all(|v| v["applied_seq"].as_u64() == Some(last) && v["lag"] == 0)
            .then_some(())
    });
}

#[test]
fn three_nodes_keep_every_acknowledged_reservation_through_node_and_nats_server_kills() {
    let mut nats = NatsCluster::start();
    let receiver = Receiver::ok();
    let url = nats.urls.join(",");
    let stream = format!("SWT{}", rand_suffix());
    let mut nodes: Vec<Server> = (1..=3).map(|i| node(i, &url, &stream, &receiver)).collect();
    for node in &mut nodes {
        node.spawn();
    }
    let first = owner(&nodes);
    assert_eq!(first, 0, "the lowest node id takes the journal first");
    let view = cluster_view(&nodes[1]).expect("a view");
    assert_eq!(view["role"], "follower", "{view}");
    assert_eq!(view["owner"], "n1", "{view}");
    assert_eq!(view["owned_partitions"], 0, "{view}");
    assert_eq!(view["peers"].as_array().map(Vec::len), Some(2), "{view}");

    // Stock, posted through a follower (forwarded to the owner).
    let skus: Vec<String> = (0..6).map(|i| format!("c-{i}")).collect();
    let events: Vec<Value> = skus
        .iter()
        .flat_map(|sku| {
            ["wh-east", "wh-west"].map(|location| {
                json!({"event_id": format!("rcv-{sku}-{location}"), "type": "receipt",
                       "source": "wms", "sku": sku, "location": location, "qty": ON_HAND})
            })
        })
        .collect();
    let (status, body) = nodes[2].post("/v1/events", json!({ "events": events }));
    assert_eq!(status, 200, "{body}");
    assert!(
        body["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "applied"),
        "{body}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
    let threads: Vec<_> = (0..3)
        .map(|t| {
            load(
                ports.clone(),
                skus.clone(),
                stop.clone(),
                attempts.clone(),
                t,
            )
        })
        .collect();
    std::thread::sleep(Duration::from_secs(2));

    // 1. kill -9 of the owner (n1); n2 takes over.
    nodes[0].kill();
    let failover = time_to_serve(&nodes[2], &skus[0]);
    let second = owner(&nodes);
    assert_eq!(second, 1, "n2, the lowest live id, succeeds n1");
    eprintln!("cluster: serving again {failover:?} after kill -9 of the owner");
    nodes[0].spawn();
    std::thread::sleep(Duration::from_secs(2));

    // 2. kill -9 of a nats-server (maybe the stream's leader), then back.
    nats.kill(0);
    std::thread::sleep(Duration::from_secs(3));
    let during = time_to_serve(&nodes[0], &skus[1]);
    eprintln!("cluster: a reservation {during:?} after kill -9 of a nats-server");
    nats.restart(0);
    std::thread::sleep(Duration::from_secs(2));

    // 3. kill -9 of the new owner (n2): n1, restarted as a follower, succeeds it.
    nodes[1].kill();
    let failover = time_to_serve(&nodes[2], &skus[2]);
    assert_eq!(owner(&nodes), 0, "n1 succeeds n2");
    eprintln!("cluster: serving again {failover:?} after kill -9 of the second owner");
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    nodes[1].spawn();

    let attempts = attempts.lock().unwrap();
    eprintln!(
        "cluster: {} acknowledged, {} unknown, {} refused",
        attempts.acknowledged.len(),
        attempts.unknown.len(),
        attempts.refused
    );
    assert!(
        attempts.acknowledged.len() > 100,
        "too little load got through"
    );
    // Read through each node: a follower forwards, the owner answers.
    for via in &nodes {
        check(via, &skus, &attempts);
    }
    followers_caught_up(&nodes);
    let owner = owner(&nodes);
    wait_converged(&nodes[owner], "web", Some(&receiver), &skus);
    let view = cluster_view(&nodes[2]).expect("a view");
    assert!(view["failovers"].as_u64().unwrap() >= 2, "{view}");
}

#[test]
fn a_stale_owner_is_fenced_and_steps_down() {
    let nats = NatsCluster::start();
    let receiver = Receiver::ok();
    let url = nats.urls.join(",");
    let stream = format!("SWT{}", rand_suffix());
    let mut nodes: Vec<Server> = (1..=2).map(|i| node(i, &url, &stream, &receiver)).collect();
    for node in &mut nodes {
        node.spawn();
    }
    assert_eq!(owner(&nodes), 0);
    let (status, body) = nodes[1].post(
        "/v1/events",
        json!({"events": [{"event_id": "rcv-f", "type": "receipt", "source": "wms",
                            "sku": "f-1", "location": "wh-east", "qty": 10},
                           {"event_id": "rcv-f-w", "type": "receipt", "source": "wms",
                            "sku": "f-1", "location": "wh-west", "qty": 10}]}),
    );
    assert_eq!(status, 200, "{body}");
    // The owner stops (as in a long pause) while still holding its connections.
    let pid = nodes[0].child.as_ref().unwrap().id().to_string();
    let signal = |name: &str| {
        assert!(std::process::Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success());
    };
    signal("-STOP");
    time_to_serve(&nodes[1], "f-1");
    assert_eq!(cluster_view(&nodes[1]).unwrap()["role"], "owner");
    // It resumes: the first thing it writes is refused, or it notices it was cut off;
    // either way it exits with the step-down status instead of serving.
    signal("-CONT");
    let mut child = nodes[0].child.take().unwrap();
    let code = wait_for("the stale owner to exit", Duration::from_secs(20), || {
        child.try_wait().unwrap().map(|status| status.code())
    });
    assert_eq!(code, Some(3), "a stale owner exits with status 3");
    // Everything acknowledged is there on the new owner.
    let (status, body) = call(nodes[1].request("GET", "/v1/availability/f-1"), None);
    assert_eq!(status, 200, "{body}");
    let east = body["locations"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["location"] == "wh-east"))
        .cloned()
        .expect("wh-east");
    let reserved = east["reserved"].as_u64().unwrap();
    let (events, head) = nodes[1].event_log(100);
    assert_eq!(events.len() as u64, head);
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(ids.contains("rcv-f"));
    assert_eq!(reserved, 0, "{body}");
}
