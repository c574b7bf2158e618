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
use crate::ops::{families, names_in, scrape};

/// Stock of each SKU at each location; the first SKU's is small, so its stock runs
/// out under the load and it stays contended (never oversold) through the kills.
const ON_HAND: u64 = 100_000;
const ON_HAND_SHORT: u64 = 300;

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
pub(crate) struct Attempts {
    pub(crate) acknowledged: BTreeMap<String, String>,
    /// Answered otherwise than 201 or 409, or not answered: may have landed.
    unknown: BTreeMap<String, String>,
    refused: usize,
}

/// The key the load sends: ignored by nodes that run the API open (these
/// tests'), the admin key of `groups.rs`'s.
pub(crate) const LOAD_KEY: &str = "groups-admin-secret";

/// Reservation load through every node in turn, until `stop`.
pub(crate) fn load(
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
                .set("Authorization", &format!("Bearer {LOAD_KEY}"))
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

/// One location of a `GET /v1/availability/{sku}` answer.
pub(crate) fn location(body: &Value, id: &str) -> Value {
    body["locations"]
        .as_array()
        .and_then(|l| l.iter().find(|l| l["location"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no {id} in {body}"))
}

/// What the final reading found.
pub(crate) struct Verdict {
    pub(crate) lost: usize,
    pub(crate) oversold: usize,
    /// SKUs whose `reserved` is not the sum of the reservations that exist.
    pub(crate) miscounted: usize,
}

/// Reads every attempted reservation through `via` (a follower forwards), and each
/// SKU's position through every node: every acknowledged reservation must be held,
/// each SKU's `reserved` the sum of the reservations that exist (none held twice),
/// never above on hand.
pub(crate) fn verdict(
    via: &Server,
    nodes: &[Server],
    skus: &[String],
    attempts: &Attempts,
) -> Verdict {
    let mut lost = 0;
    for (id, sku) in &attempts.acknowledged {
        let (status, body) = via.get(&format!("/v1/reservations/{id}"));
        if status != 200 || body["status"] != "held" {
            eprintln!("acknowledged reservation {id} ({sku}) lost: {status} {body}");
            lost += 1;
        }
    }
    let mut held: BTreeMap<&str, u64> = BTreeMap::new();
    for (id, sku) in attempts.acknowledged.iter().chain(&attempts.unknown) {
        let (status, _) = via.get(&format!("/v1/reservations/{id}"));
        if status == 200 {
            *held.entry(sku.as_str()).or_default() += 1;
        }
    }
    let (mut oversold, mut miscounted) = (0, 0);
    for node in nodes.iter().filter(|n| n.child.is_some()) {
        for sku in skus {
            let (status, body) = node.get(&format!("/v1/availability/{sku}"));
            assert_eq!(status, 200, "{body}");
            let east = location(&body, "wh-east");
            let reserved = east["reserved"].as_u64().expect("reserved");
            let on_hand = east["on_hand"].as_u64().expect("on_hand");
            if reserved > on_hand || east["available"].as_i64().unwrap_or(-1) < 0 {
                eprintln!("{sku} oversold: {body}");
                oversold += 1;
            }
            if reserved != held.get(sku.as_str()).copied().unwrap_or(0) {
                eprintln!("{sku}: reserved is not the sum of its reservations: {body}");
                miscounted += 1;
            }
        }
    }
    Verdict {
        lost,
        oversold,
        miscounted,
    }
}

/// The event log read through `via` is gap-free from 1 to its head.
fn gap_free(via: &Server) {
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

/// The index in `nats` of the server leading `stream` (its `server_name` is `n<i>`).
fn stream_leader(nats: &NatsCluster, stream: &str) -> Option<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    runtime.block_on(async {
        let servers: Vec<async_nats::ServerAddr> =
            nats.urls.iter().filter_map(|u| u.parse().ok()).collect();
        let client = tokio::time::timeout(Duration::from_secs(5), async_nats::connect(servers))
            .await
            .ok()?
            .ok()?;
        let js = async_nats::jetstream::new(client);
        let mut found = js.get_stream(stream).await.ok()?;
        let info = found.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.clone()?;
        leader.strip_prefix('n')?.parse().ok()
    })
}

/// Purges `stream` down to its last `keep` messages, as an operator (or a purge
/// that did not wait for a node that was down) would.
fn purge_stream(nats: &NatsCluster, stream: &str, keep: u64) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let servers: Vec<async_nats::ServerAddr> =
            nats.urls.iter().filter_map(|u| u.parse().ok()).collect();
        let client = async_nats::connect(servers).await.expect("nats connects");
        let js = async_nats::jetstream::new(client);
        let mut found = js.get_stream(stream).await.expect("the journal stream");
        found.purge().keep(keep).await.expect("purged");
        found
            .info()
            .await
            .expect("stream info")
            .state
            .first_sequence
    })
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

/// 3 nats-servers, 3 nodes, reservation load through all of them, `node_kills`
/// rounds of `kill -9` of the owner (restarted once its successor serves), and
/// `nats_kills` of those rounds begin with a `kill -9` of the stream's leader.
/// Prints the soak's line, then checks it.
fn soak(node_kills: usize, nats_kills: usize) {
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
        .enumerate()
        .flat_map(|(i, sku)| {
            let qty = if i == 0 { ON_HAND_SHORT } else { ON_HAND };
            ["wh-east", "wh-west"].map(|location| {
                json!({"event_id": format!("rcv-{sku}-{location}"), "type": "receipt",
                       "source": "wms", "sku": sku, "location": location, "qty": qty})
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
    let mut failovers = Vec::new();
    let mut nats_outages = Vec::new();
    let nats_every = node_kills
        .checked_div(nats_kills)
        .map_or(usize::MAX, |every| every.max(1));
    let mut nats_done = 0;
    for round in 0..node_kills {
        std::thread::sleep(Duration::from_millis(1500));
        let serving = owner(&nodes);
        if round % nats_every == 0 && nats_done < nats_kills {
            // The stream's leader when it can be found, else any server.
            let victim = stream_leader(&nats, &stream).unwrap_or(round % 3);
            nats.kill(victim);
            let via = &nodes[(serving + 1) % 3];
            let outage = time_to_serve(via, &skus[1 + round % (skus.len() - 1)]);
            eprintln!("cluster: round {round}: a reservation {outage:?} after kill -9 of nats-server n{victim}");
            nats_outages.push(outage);
            nats.restart(victim);
            nats_done += 1;
            std::thread::sleep(Duration::from_secs(2));
        }
        let victim = owner(&nodes);
        nodes[victim].kill();
        let via = &nodes[(victim + 1) % 3];
        let failover = time_to_serve(via, &skus[1 + round % (skus.len() - 1)]);
        eprintln!(
            "cluster: round {round}: serving again {failover:?} after kill -9 of owner n{}",
            victim + 1
        );
        failovers.push(failover);
        nodes[victim].spawn();
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let attempts = attempts.lock().unwrap();
    let serving = owner(&nodes);
    let via = &nodes[(serving + 1) % 3];
    let verdict = verdict(via, &nodes, &skus, &attempts);
    let max = failovers.iter().max().copied().unwrap_or_default();
    let p50 = median(&mut failovers);
    let nats_max = nats_outages.iter().max().copied().unwrap_or_default();
    eprintln!(
        "cluster: {} acknowledged, {} unknown (may have landed), {} refused; nats-server kills: longest wait {nats_max:?}",
        attempts.acknowledged.len(),
        attempts.unknown.len(),
        attempts.refused
    );
    println!(
        "kills {}, acknowledged {}, lost {}, oversold {}, failover p50 {:.2} s max {:.2} s",
        node_kills + nats_done,
        attempts.acknowledged.len(),
        verdict.lost,
        verdict.oversold,
        p50.as_secs_f64(),
        max.as_secs_f64()
    );
    assert_eq!(verdict.lost, 0, "acknowledged reservations lost");
    assert_eq!(verdict.oversold, 0, "positions oversold");
    assert_eq!(
        verdict.miscounted, 0,
        "a reservation held twice, or a hold without one"
    );
    assert!(
        attempts.acknowledged.len() > 100,
        "too little load got through"
    );
    gap_free(via);
    followers_caught_up(&nodes);
    wait_converged(&nodes[serving], "web", Some(&receiver), &skus);
    let view = cluster_view(via).expect("a view");
    assert!(view["failovers"].as_u64().unwrap() >= 1, "{view}");
}

#[test]
fn three_nodes_keep_every_acknowledged_reservation_through_node_and_nats_server_kills() {
    // `make cluster-soak` sets these higher (20 and 5); the default keeps CI short.
    let count = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    soak(
        count("CLUSTER_SOAK_NODE_KILLS", 2),
        count("CLUSTER_SOAK_NATS_KILLS", 1),
    );
}

/// The `(server, cid)` of each connection named `name` on `nats`, open or
/// (`state = "closed"`) closed, with the reason a closed one gave.
fn connections(nats: &NatsCluster, name: &str, state: &str) -> Vec<(usize, u64, String)> {
    let mut found = Vec::new();
    for (server, port) in nats.monitors.iter().enumerate() {
        let url = format!("http://127.0.0.1:{port}/connz?state={state}&limit=1024");
        let body: Value = ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()
            .expect("connz answers")
            .into_json()
            .expect("connz is JSON");
        for connection in body["connections"].as_array().into_iter().flatten() {
            if connection["name"] == name {
                let reason = connection["reason"].as_str().unwrap_or("").to_string();
                found.push((server, connection["cid"].as_u64().unwrap_or(0), reason));
            }
        }
    }
    found
}

/// The owner's journal appends have a connection of their own that only a
/// writing thread drives (docs/CLUSTER.md): while the owner is idle, a keeper
/// drives it, so it answers the servers' pings and is not dropped as stale. The
/// servers here ping every second and drop a client after two unanswered pings.
#[test]
fn an_idle_owners_journal_connection_stays_up() {
    let nats = NatsCluster::start_with("ping_interval: \"1s\"\nping_max: 2");
    let receiver = Receiver::ok();
    let stream = format!("SWI{}", rand_suffix());
    let mut nodes = vec![node(1, &nats.urls.join(","), &stream, &receiver)];
    nodes[0].spawn();
    assert_eq!(owner(&nodes), 0);
    let reserve = |id: &str| {
        let body = json!({"reservation_id": id, "channel": "web",
                          "lines": [{"sku": "idle-1", "location": "wh-east", "qty": 1}]});
        call(nodes[0].request("POST", "/v1/reservations"), Some(body))
    };
    call(
        nodes[0].request("POST", "/v1/events"),
        Some(
            json!({"events": [{"event_id": "idle-rcv", "type": "receipt", "source": "wms",
                                "sku": "idle-1", "location": "wh-east", "qty": 10}]}),
        ),
    );
    assert_eq!(reserve("idle-a").0, 201);
    let before = connections(&nats, "stockwire-journal", "open");
    assert_eq!(before.len(), 1, "one journal connection: {before:?}");
    // Five ping intervals with nothing to write.
    std::thread::sleep(Duration::from_secs(5));
    let closed = connections(&nats, "stockwire-journal", "closed");
    assert!(closed.is_empty(), "journal connection dropped: {closed:?}");
    assert_eq!(connections(&nats, "stockwire-journal", "open"), before);
    assert_eq!(reserve("idle-b").0, 201);
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
    // The cluster metrics: each one the alerts query is exposed, owner 1 on the owner.
    let alerts = std::fs::read_to_string(crate::harness::repo("config/prometheus/alerts.yml"))
        .expect("alerts");
    for (i, node) in nodes.iter().enumerate() {
        let text = scrape(node);
        let exposed: BTreeSet<String> = families(&text).into_iter().map(|(name, _)| name).collect();
        for name in names_in(&alerts)
            .iter()
            .filter(|n| n.starts_with("stockwire_cluster_"))
        {
            assert!(exposed.contains(name), "{name} not exposed by node {i}");
        }
        let owner_line = format!("stockwire_cluster_owner {}", u8::from(i == 0));
        assert!(
            text.lines().any(|l| l == owner_line),
            "no {owner_line:?} in {text}"
        );
        // Ready as /readyz says: a follower that knows the owner is.
        assert_eq!(call(node.request("GET", "/readyz"), None).0, 200);
        assert!(
            text.lines().any(|l| l == "stockwire_ready 1"),
            "node {i} not ready in {text}"
        );
    }
    // Answers a follower makes itself carry the request's correlation id, and
    // a forwarded call reaches the owner with it.
    let refused = nodes[1]
        .request("GET", "/v1/availability/f-1")
        .set("X-Stockwire-Forwarded-By", "n9")
        .set("X-Correlation-Id", "cid-refused")
        .call();
    let Err(ureq::Error::Status(503, refused)) = refused else {
        panic!("a forwarded call to a follower is refused: {refused:?}")
    };
    assert_eq!(refused.header("x-correlation-id"), Some("cid-refused"));
    let forwarded = match nodes[1]
        .request("GET", "/v1/availability/no-such-sku")
        .set("X-Correlation-Id", "cid-forwarded")
        .call()
    {
        Err(ureq::Error::Status(404, answer)) => answer,
        other => panic!("the owner's 404 through the follower: {other:?}"),
    };
    assert_eq!(forwarded.header("x-correlation-id"), Some("cid-forwarded"));
    // A body that stalls through a follower is 408 from the follower itself
    // (the owner's would come only after the whole body), and closed.
    {
        use std::io::{Read, Write};
        let mut client =
            std::net::TcpStream::connect(("127.0.0.1", nodes[1].port)).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(90)))
            .expect("timeout");
        client
            .write_all(
                b"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\
                  Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"events\"",
            )
            .expect("write");
        let mut answer = Vec::new();
        let closed = client.read_to_end(&mut answer).is_ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
        assert!(closed, "{answer}");
    }
    let (status, body) = nodes[1].post(
        "/v1/events",
        json!({"events": [{"event_id": "rcv-f", "type": "receipt", "source": "wms",
                            "sku": "f-1", "location": "wh-east", "qty": 10},
                           {"event_id": "rcv-f-w", "type": "receipt", "source": "wms",
                            "sku": "f-1", "location": "wh-west", "qty": 10}]}),
    );
    assert_eq!(status, 200, "{body}");
    // A reservation through the follower, held by the owner before it stops.
    let (status, body) = nodes[1].post(
        "/v1/reservations",
        json!({"reservation_id": "f-order", "channel": "web",
               "lines": [{"sku": "f-1", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{body}");
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
    let east = location(&body, "wh-east");
    let reserved = east["reserved"].as_u64().unwrap();
    let (events, head) = nodes[1].event_log(100);
    assert_eq!(events.len() as u64, head);
    let ids: BTreeSet<String> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(ids.contains("rcv-f"));
    assert_eq!(reserved, 2, "the reservation held before the pause: {body}");
    let (status, body) = nodes[1].get("/v1/reservations/f-order");
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("held")),
        "{body}"
    );
    // Restarted, it follows; SIGTERM stops a follower at once (it waits for no
    // ownership), with status 0.
    nodes[0].spawn();
    assert_eq!(cluster_view(&nodes[0]).unwrap()["role"], "follower");
    let asked = Instant::now();
    assert_eq!(
        nodes[0].terminate(),
        Some(0),
        "a follower stops cleanly on SIGTERM"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "took {:?}",
        asked.elapsed()
    );
}

/// A node that was down while the stream was purged past its store copies the
/// owner's store when it starts again (docs/CLUSTER.md, "Re-seeding"), in many
/// chunks (the servers' `max_payload` is small) while reservations go on landing,
/// follows the stream from where the copy began, and can then take over with
/// everything.
#[test]
fn a_node_the_stream_was_purged_past_copies_the_owners_store_and_can_take_over() {
    let nats = NatsCluster::start_with("max_payload: 65536");
    let receiver = Receiver::ok();
    let url = nats.urls.join(",");
    let stream = format!("SWS{}", rand_suffix());
    let mut nodes: Vec<Server> = (1..=2).map(|i| node(i, &url, &stream, &receiver)).collect();
    for node in &mut nodes {
        node.spawn();
    }
    assert_eq!(owner(&nodes), 0);
    let skus = vec!["seed-1".to_string(), "seed-2".to_string()];
    let events: Vec<Value> = skus
        .iter()
        .map(|sku| {
            json!({"event_id": format!("rcv-{sku}"), "type": "receipt", "source": "wms",
                          "sku": sku, "location": "wh-east", "qty": ON_HAND})
        })
        .collect();
    call(
        nodes[0].request("POST", "/v1/events"),
        Some(json!({ "events": events })),
    );
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    let run = |ports: Vec<u16>, thread: usize, until: &mut dyn FnMut() -> bool| {
        let stop = Arc::new(AtomicBool::new(false));
        let worker = load(ports, skus.clone(), stop.clone(), attempts.clone(), thread);
        until();
        stop.store(true, Ordering::Relaxed);
        worker.join().unwrap();
    };
    let acknowledged = || attempts.lock().unwrap().acknowledged.len();
    // Through n2 (forwarded), then through n1 while n2 is down.
    run(vec![nodes[1].port], 1, &mut || {
        wait_for("reservations", Duration::from_secs(30), || {
            (acknowledged() >= 50).then_some(())
        });
        true
    });
    followers_caught_up(&nodes);
    let held_by_n2 = cluster_view(&nodes[1]).unwrap()["applied_seq"]
        .as_u64()
        .unwrap();
    assert_eq!(nodes[1].terminate(), Some(0));
    run(vec![nodes[0].port], 2, &mut || {
        wait_for("reservations", Duration::from_secs(60), || {
            (acknowledged() >= 1_500).then_some(())
        });
        true
    });
    let first = purge_stream(&nats, &stream, 5);
    assert!(
        first > held_by_n2 + 1,
        "purged to {first}, n2 holds {held_by_n2}"
    );
    // n2 starts and copies while reservations go on landing on n1.
    let n1 = nodes[0].port;
    let (before, copied) = (acknowledged(), Mutex::new(None));
    run(vec![n1], 3, &mut || {
        nodes[1].spawn();
        let view = wait_for(
            "n2 copied the owner's store",
            Duration::from_secs(60),
            || {
                cluster_view(&nodes[1])
                    .filter(|view| view["seeds"] == 1 && view["role"] == "follower")
            },
        );
        *copied.lock().unwrap() = Some(view);
        true
    });
    assert!(
        acknowledged() > before,
        "reservations landed during the copy"
    );
    let copied = copied.into_inner().unwrap().unwrap();
    eprintln!("cluster: re-seeded n2: {copied}");
    // In many chunks (max_payload 64 KiB), with writes after the copy began
    // that n2 then took from the stream.
    let chunks = copied["seed_chunks"].as_u64().unwrap();
    assert!(chunks >= 5, "{chunks} chunks");
    let from = copied["seeded_from"].as_u64().unwrap();
    assert!(
        from >= first,
        "copied from {from}, the stream starts at {first}"
    );
    assert!(
        copied["applied_seq"].as_u64().unwrap() > from,
        "writes after the copy's start: {copied}"
    );
    // It follows the stream from where its copy began, and forwards.
    run(vec![nodes[1].port], 4, &mut || {
        let target = acknowledged() + 50;
        wait_for("reservations", Duration::from_secs(30), || {
            (acknowledged() >= target).then_some(())
        });
        true
    });
    followers_caught_up(&nodes);
    // And it holds everything: the owner goes, n2 takes over and serves it all.
    nodes[0].kill();
    assert_eq!(owner(&nodes), 1);
    let attempts = attempts.lock().unwrap();
    let verdict = verdict(&nodes[1], &nodes, &skus, &attempts);
    assert_eq!(
        (verdict.lost, verdict.oversold, verdict.miscounted),
        (0, 0, 0),
        "lost, oversold, miscounted"
    );
    gap_free(&nodes[1]);
}
