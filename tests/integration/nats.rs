//! The `nats` sink (SPEC §4) against Debian's real `nats-server` on a loopback
//! port: core NATS (signed batches, per-SKU `seq` order, the batch's
//! `Nats-Msg-Id`, a `url` of two servers of which one is down), JetStream
//! through a `kill -9` of the server (reservations never wait for it; the
//! channel converges once it is back, the stream's last message of each SKU is
//! the engine's value), and dead letters while no server is there, replayed
//! once one is.

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::channels::{
    hmac_sha256_hex, published, report, reserve_quickly, skus, start, updates_of, wait_converged,
    wait_for, SECRET, SHOWS,
};
use crate::harness::{free_port, Server};

const SIGNATURE: &str = "X-Stockwire-Signature";

/// A `nats-server` child on 127.0.0.1, stopped (killed) when dropped.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    /// The JetStream store, kept across a restart.
    store: tempfile::TempDir,
    jetstream: bool,
    /// More command-line arguments (e.g. `--user`, `--pass`).
    args: Vec<String>,
}

fn nats_binary() -> PathBuf {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

impl NatsServer {
    fn start(jetstream: bool) -> NatsServer {
        NatsServer::start_with(jetstream, &[])
    }

    fn start_with(jetstream: bool, args: &[&str]) -> NatsServer {
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("temp dir"),
            jetstream,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        server.run();
        server
    }

    fn run(&mut self) {
        let log = self.store.path().join("nats.log");
        let mut command = Command::new(nats_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-l")
            .arg(&log)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.jetstream {
            command
                .arg("-js")
                .arg("-sd")
                .arg(self.store.path().join("js"));
        }
        command.args(&self.args);
        let child = command
            .spawn()
            .expect("nats-server runs (install-deps.sh --test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("nats-server exited with {status}: {}", read_log(&log));
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen: {}",
                read_log(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `kill -9`: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Hex SHA-256 of `body`.
fn hmac_free_sha256_hex(body: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(body))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// A message as a subscriber or the stream saw it.
#[derive(Debug, Clone)]
struct Message {
    headers: BTreeMap<String, String>,
    body: Vec<u8>,
}

impl Message {
    fn of(headers: Option<&async_nats::HeaderMap>, body: &[u8]) -> Message {
        let headers = headers
            .map(|map| {
                map.iter()
                    .map(|(name, values)| {
                        let value = values.first().map(|v| v.as_str().to_string());
                        (name.to_string(), value.unwrap_or_default())
                    })
                    .collect()
            })
            .unwrap_or_default();
        Message {
            headers,
            body: body.to_vec(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    /// `(sku, available, seq)` of each update.
    fn updates(&self) -> Vec<(String, u64, u64)> {
        updates_of(&self.json())
    }

    /// Signed with the channel's secret, named `<channel>:<batch>:<digest>`, for
    /// `channel`.
    fn check(&self, channel: &str) {
        let expected = format!("sha256={}", hmac_sha256_hex(SECRET.as_bytes(), &self.body));
        assert_eq!(self.headers.get(SIGNATURE), Some(&expected), "{self:?}");
        let id = self.headers.get("Nats-Msg-Id").expect("Nats-Msg-Id");
        let rest = id
            .strip_prefix(&format!("{channel}:"))
            .expect("<channel>:...");
        let (batch, digest) = rest.split_once(':').expect("<batch>:<digest>");
        assert!(batch.parse::<u64>().is_ok_and(|n| n > 0), "{id}");
        let sha = hmac_free_sha256_hex(&self.body);
        assert_eq!(digest, &sha[..16], "{id}: the body's digest");
        assert_eq!(self.json()["channel"], channel);
    }
}

/// The last value and seq each SKU was published with, checking that each SKU's
/// `seq`s only grow from message to message.
fn last_values(messages: &[Message]) -> BTreeMap<String, (u64, u64)> {
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for message in messages {
        for (sku, available, seq) in message.updates() {
            if let Some((_, before)) = last.get(&sku) {
                assert!(seq >= *before, "{sku}: seq {seq} after {before}");
            }
            last.insert(sku, (available, seq));
        }
    }
    last
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A core NATS subscription, read on its own thread into a list.
struct Subscriber {
    messages: Arc<Mutex<Vec<Message>>>,
}

impl Subscriber {
    fn start(url: &str, subject: &str) -> Subscriber {
        Subscriber::start_with(async_nats::ConnectOptions::new(), url, subject)
    }

    /// Signed in (or trusting a CA) by `options`.
    fn start_with(options: async_nats::ConnectOptions, url: &str, subject: &str) -> Subscriber {
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (url, subject, into) = (url.to_string(), subject.to_string(), messages.clone());
        std::thread::spawn(move || {
            runtime().block_on(async move {
                let client = options.connect(url).await.expect("subscriber connects");
                let mut subscription = client.subscribe(subject).await.expect("subscribes");
                client.flush().await.expect("subscription registered");
                let _ = ready_tx.send(());
                while let Some(message) = subscription.next().await {
                    let seen = Message::of(message.headers.as_ref(), &message.payload);
                    into.lock().expect("lock").push(seen);
                }
            });
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the subscriber is ready");
        Subscriber { messages }
    }

    fn messages(&self) -> Vec<Message> {
        self.messages.lock().expect("lock").clone()
    }
}

/// A `[[channels]]` table with a nats sink.
fn nats_channel(id: &str, url: &str, subject: &str, sink: &str) -> String {
    format!(
        "[[channels]]\nid = \"{id}\"\nlocations = [\"wh-east\", \"wh-west\"]\ncoalesce_ms = 0\n\
         replay_dead_letters_on_recovery = false\n\
         sink = {{ kind = \"nats\", url = \"{url}\", subject = \"{subject}\", secret = \"{SECRET}\", {sink} }}\n"
    )
}

/// Every message of `stream`, oldest first.
fn stream_messages(url: &str, stream: &str) -> Vec<Message> {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connects");
        let jetstream = async_nats::jetstream::new(client);
        let mut stream = jetstream.get_stream(stream).await.expect("stream");
        let info = stream.info().await.expect("info").clone();
        let mut out = Vec::new();
        for seq in info.state.first_sequence..=info.state.last_sequence {
            if let Ok(raw) = stream.get_raw_message(seq).await {
                out.push(Message::of(Some(&raw.headers), &raw.payload));
            }
        }
        out
    })
}

fn create_stream(url: &str, name: &str, subjects: &[&str]) {
    runtime().block_on(async {
        let client = async_nats::connect(url).await.expect("connects");
        let jetstream = async_nats::jetstream::new(client);
        jetstream
            .create_stream(async_nats::jetstream::stream::Config {
                name: name.to_string(),
                subjects: subjects.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .expect("stream created");
    });
}

fn channel_state(server: &Server, channel: &str) -> String {
    report(server, channel)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_nats_channel_publishes_signed_batches_in_seq_order() {
    let nats = NatsServer::start(false);
    let subscriber = Subscriber::start(&nats.url(), "stock.web");
    // Someone listening to everything, answering nothing, changes nothing.
    let _everything = Subscriber::start(&nats.url(), ">");
    // Two servers of a cluster, the first one not there: the client finds the other.
    let servers = format!("nats://127.0.0.1:{}, {}", free_port(), nats.url());
    let server = start(
        "",
        &nats_channel("nw", &servers, "stock.web", "batch_max = 2"),
    );
    let all = skus("n", 5);
    for (i, sku) in all.iter().enumerate() {
        server.receive(sku, "wh-east", 3 + i as u64);
    }
    server.receive("n-00", "wh-west", 10);
    let values = wait_converged(&server, "nw", None, &all);
    assert_eq!(values["n-00"], 13);
    let messages = wait_for("every value on the subject", SHOWS, || {
        let messages = subscriber.messages();
        let last = last_values(&messages);
        all.iter()
            .all(|sku| last.get(sku).map(|(available, _)| *available) == Some(values[sku]))
            .then_some(messages)
    });
    for message in &messages {
        message.check("nw");
        assert!(message.updates().len() <= 2, "batch_max: {message:?}");
    }
    let ledger = published(&server, "nw", "n-04");
    assert_eq!(ledger["available"], 7, "{ledger}");
    assert_eq!(channel_state(&server, "nw"), "healthy");
}

#[test]
fn a_jetstream_channel_rides_out_a_killed_nats_server_and_converges() {
    let mut nats = NatsServer::start(true);
    create_stream(&nats.url(), "STOCK", &["stock.>"]);
    let server = start(
        "",
        &nats_channel(
            "js",
            &nats.url(),
            "stock.marketplace",
            "jetstream = true, timeout_ms = 500, max_attempts = 100, backoff_ms = 20, backoff_max_ms = 200",
        ),
    );
    let all = skus("j", 4);
    for (i, sku) in all.iter().enumerate() {
        server.receive(sku, "wh-east", 10 + i as u64);
    }
    wait_converged(&server, "js", None, &all);

    nats.kill();
    // Reservations do not wait for the channel, and changes keep coming.
    for sku in &all {
        reserve_quickly(&server, "js", sku, "wh-east", 2);
    }
    server.receive("j-01", "wh-west", 5);
    wait_for("the channel to notice", SHOWS, || {
        ["degraded", "down"]
            .contains(&channel_state(&server, "js").as_str())
            .then_some(())
    });
    assert!(
        report(&server, "js")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("nats") || e.contains("jetstream")),
        "{}",
        report(&server, "js")
    );

    nats.run();
    let values = wait_converged(&server, "js", None, &all);
    assert_eq!(values["j-00"], 8);
    assert_eq!(values["j-01"], 14);
    let messages = stream_messages(&nats.url(), "STOCK");
    for message in &messages {
        message.check("js");
    }
    let last = last_values(&messages);
    for sku in &all {
        assert_eq!(
            last.get(sku).map(|(available, _)| *available),
            Some(values[sku]),
            "the stream's last value of {sku}"
        );
    }
    assert_eq!(channel_state(&server, "js"), "healthy");
}

#[test]
fn with_no_nats_server_batches_are_dead_lettered_then_replayed_once_it_is_up() {
    // The port is held (never answering) until the server takes it, so no other
    // test's process can take it meanwhile: until then every connect times out.
    let placeholder = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("a port");
    let port = placeholder.local_addr().expect("bound").port();
    let url = format!("nats://127.0.0.1:{port}");
    let server = start(
        "",
        &nats_channel(
            "dl",
            &url,
            "stock.dl",
            "timeout_ms = 300, max_attempts = 2, backoff_ms = 20, backoff_max_ms = 50",
        ),
    );
    let all = skus("q", 3);
    for (i, sku) in all.iter().enumerate() {
        server.receive(sku, "wh-east", 4 + i as u64);
    }
    let parked = wait_for("everything parked", SHOWS, || {
        let status = report(&server, "dl");
        (status["dlq_depth"].as_u64().is_some_and(|d| d > 0) && status["pending"] == 0)
            .then_some(status)
    });
    assert!(
        parked["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("nats")),
        "{parked}"
    );

    let mut nats = NatsServer {
        child: None,
        port,
        store: tempfile::tempdir().expect("temp dir"),
        jetstream: false,
        args: Vec::new(),
    };
    drop(placeholder);
    nats.run();
    let subscriber = Subscriber::start(&url, "stock.dl");
    let (status, body) = server.post("/v1/channels/dl/replay", json!({"from": "dead_letters"}));
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued_skus"], all.len(), "{body}");
    let values = wait_converged(&server, "dl", None, &all);
    wait_for("the replayed values on the subject", SHOWS, || {
        let last = last_values(&subscriber.messages());
        all.iter()
            .all(|sku| last.get(sku).map(|(available, _)| *available) == Some(values[sku]))
            .then_some(())
    });
    assert_eq!(report(&server, "dl")["dlq_depth"], 0);
}

/// A 3-server JetStream cluster on loopback (what `scripts/nats-cluster.sh` starts),
/// killed when dropped.
pub(crate) struct NatsCluster {
    children: Vec<Child>,
    pub(crate) urls: Vec<String>,
    /// Each server's monitoring port (`/connz`, `/jsz`).
    pub(crate) monitors: Vec<u16>,
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// `kill -9` of server `i`.
    pub(crate) fn kill(&mut self, i: usize) {
        let _ = self.children[i].kill();
        let _ = self.children[i].wait();
    }

    /// Starts server `i` again on its config and store (after [`NatsCluster::kill`]).
    pub(crate) fn restart(&mut self, i: usize) {
        self.children[i] = NatsCluster::spawn(self._dir.path(), i);
    }

    /// Server `i` on `dir/n<i>.conf`, logging to `dir/n<i>.log`, on its third of
    /// the cores (as `scripts/nats-cluster.sh` runs them).
    fn spawn(dir: &Path, i: usize) -> Child {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Command::new(nats_binary())
            .env("GOMAXPROCS", (cores / 3).max(1).to_string())
            .arg("-c")
            .arg(dir.join(format!("n{i}.conf")))
            .arg("-l")
            .arg(dir.join(format!("n{i}.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs")
    }

    pub(crate) fn start() -> NatsCluster {
        NatsCluster::start_with("")
    }

    /// With `extra` added to each server's config. Started again on other
    /// ports when a server exits before it listens: a port picked free can be
    /// taken before the server binds it (by another test's connection).
    pub(crate) fn start_with(extra: &str) -> NatsCluster {
        for _ in 0..3 {
            if let Some(cluster) = NatsCluster::try_start(extra) {
                return cluster;
            }
        }
        panic!("the NATS cluster did not start three times");
    }

    fn try_start(extra: &str) -> Option<NatsCluster> {
        let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let monitors: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let route: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes: Vec<String> = route
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect();
        // Each child is in `cluster` as soon as it runs: a failure later kills it.
        let mut cluster = NatsCluster {
            children: Vec::new(),
            urls: client
                .iter()
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect(),
            monitors: monitors.clone(),
            _dir: tempfile::tempdir().expect("temp dir"),
        };
        let dir = cluster._dir.path().to_path_buf();
        for i in 0..3 {
            let conf = dir.join(format!("n{i}.conf"));
            let store = dir.join(format!("n{i}"));
            std::fs::write(
                &conf,
                format!(
                    "server_name: n{i}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{ store_dir: \"{}\" }}\n\
                     cluster {{ name: test, listen: 127.0.0.1:{}, routes: [{}] }}\n{extra}\n",
                    client[i],
                    monitors[i],
                    store.display(),
                    route[i],
                    routes.join(", ")
                ),
            )
            .expect("config written");
            cluster.children.push(NatsCluster::spawn(&dir, i));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for (i, port) in client.iter().enumerate() {
            while TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(Instant::now() < deadline, "the cluster did not listen");
                if !matches!(cluster.children[i].try_wait(), Ok(None)) {
                    let log = std::fs::read_to_string(dir.join(format!("n{i}.log")));
                    eprintln!("nats-server n{i} exited: {}", log.unwrap_or_default());
                    return None;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Some(cluster)
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Cluster mode's fence (issue 13), on the nats-server this machine has: two
/// writers that both believe they own a partition race each append with the same
/// `Nats-Expected-Last-Sequence` on an R3 stream; exactly one wins every round and
/// the other is refused by the stream for the wrong last sequence (compare-and-set
/// under concurrent writers; a leader failover in the middle is not exercised here).
#[test]
fn on_an_r3_stream_two_writers_with_one_expectation_never_both_land() {
    const ROUNDS: u64 = 100;
    let cluster = NatsCluster::start();
    let urls = cluster.urls.clone();
    runtime().block_on(async move {
        let servers: Vec<async_nats::ServerAddr> =
            urls.iter().map(|u| u.parse().expect("url")).collect();
        let connect = || async_nats::connect(servers.clone());
        let (a, b) = (connect().await.expect("a"), connect().await.expect("b"));
        let (a, b) = (async_nats::jetstream::new(a), async_nats::jetstream::new(b));
        // The meta leader is elected a moment after the servers listen.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut stream = loop {
            let created = a
                .create_stream(async_nats::jetstream::stream::Config {
                    name: "P0".to_string(),
                    subjects: vec!["p0".to_string()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await;
            match created {
                Ok(stream) => break stream,
                Err(error) => {
                    assert!(Instant::now() < deadline, "no R3 stream: {error}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        // `Ok` when the write landed, else the stream's reason.
        let write = |js: async_nats::jetstream::Context, last: u64, who: &'static str| async move {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
            match js.publish_with_headers("p0", headers, who.into()).await {
                Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            }
        };
        for round in 0..ROUNDS {
            let (a_wrote, b_wrote) =
                tokio::join!(write(a.clone(), round, "a"), write(b.clone(), round, "b"));
            let refusal = match (&a_wrote, &b_wrote) {
                (Ok(()), Err(why)) | (Err(why), Ok(())) => why.clone(),
                _ => panic!("round {round}: a {a_wrote:?}, b {b_wrote:?}"),
            };
            // The stream's own refusal (10071), not a lost connection or a timeout.
            assert!(
                refusal.contains("wrong last sequence"),
                "round {round}: {refusal}"
            );
        }
        // A retry of a write that landed (its ack lost): the same Nats-Msg-Id and the
        // same, now stale, expectation. The stream checks the id first and answers
        // it as a duplicate with the sequence it landed at; cluster mode's appends
        // rely on that. Another write with that expectation is still refused.
        let append = |id: &'static str| {
            let js = a.clone();
            async move {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Expected-Last-Sequence", ROUNDS.to_string().as_str());
                headers.insert("Nats-Msg-Id", id);
                match js.publish_with_headers("p0", headers, id.into()).await {
                    Ok(ack) => ack.await.map_err(|e| e.to_string()),
                    Err(error) => Err(error.to_string()),
                }
            }
        };
        let first = append("retry-1").await.expect("the first write lands");
        assert_eq!((first.sequence, first.duplicate), (ROUNDS + 1, false));
        let again = append("retry-1").await.expect("the retry is answered");
        assert_eq!(
            (again.sequence, again.duplicate),
            (ROUNDS + 1, true),
            "{again:?}"
        );
        let other = append("other")
            .await
            .expect_err("a stale expectation is refused");
        assert!(other.contains("wrong last sequence"), "{other}");
        let info = stream.info().await.expect("info");
        assert_eq!(
            info.state.messages,
            ROUNDS + 1,
            "one write per round and the retried one"
        );
        assert_eq!(info.config.num_replicas, 3);
        let replicas = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
        assert_eq!(replicas, 2, "a leader and two replicas");
    });
}

/// A server that wants a user and password: the sink signs in with the ones in
/// its `url` (percent-encoded there), and a wrong password is never shown.
#[test]
fn a_nats_server_with_a_password_is_signed_into_and_the_password_never_shown() {
    let nats = NatsServer::start_with(false, &["--user", "stock", "--pass", "s3/cr@t"]);
    let with = |password: &str| format!("nats://stock:{password}@127.0.0.1:{}", nats.port);
    let subscriber = Subscriber::start_with(
        async_nats::ConnectOptions::new().user_and_password("stock".into(), "s3/cr@t".into()),
        &nats.url(),
        "stock.pw",
    );
    let channels = format!(
        "{}{}",
        nats_channel("pw", &with("s3%2Fcr%40t"), "stock.pw", "timeout_ms = 500"),
        nats_channel(
            "wrong",
            &with("not-the-s3cret"),
            "stock.wrong",
            "timeout_ms = 300, max_attempts = 100, backoff_ms = 20, backoff_max_ms = 50"
        ),
    );
    let server = start("", &channels);
    let all = skus("w", 2);
    for sku in &all {
        server.receive(sku, "wh-east", 6);
    }
    let values = wait_converged(&server, "pw", None, &all);
    wait_for("the values on the subject", SHOWS, || {
        let last = last_values(&subscriber.messages());
        all.iter()
            .all(|sku| last.get(sku).map(|(available, _)| *available) == Some(values[sku]))
            .then_some(())
    });
    let refused = wait_for("the wrong password refused", SHOWS, || {
        let status = report(&server, "wrong");
        status["last_error"].is_string().then_some(status)
    });
    let (_, every) = server.get("/v1/channels");
    for shown in [refused.to_string(), every.to_string()] {
        assert!(!shown.contains("not-the-s3cret"), "{shown}");
        assert!(!shown.contains("s3%2Fcr"), "{shown}");
    }
}

/// A CA, and a certificate for 127.0.0.1 it signed, made by openssl in `dir`:
/// (CA, certificate, key).
fn tls_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (install-deps.sh --test installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=stockwire test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A nats-server that speaks TLS only: a node whose `url` is `tls://` journals
/// through it in cluster mode and its `nats` sink publishes through it, trusting
/// the CA named by `SSL_CERT_FILE` (rustls-native-certs reads it); a client
/// that does not trust that CA is refused.
#[test]
fn over_tls_a_cluster_node_journals_and_its_nats_sink_publishes() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = tls_files(certs.path());
    let (cert, key) = (cert.display().to_string(), key.display().to_string());
    let nats = NatsServer::start_with(true, &["--tls", "--tlscert", &cert, "--tlskey", &key]);
    let url = format!("tls://127.0.0.1:{}", nats.port);
    // Without the CA the server's certificate is not trusted.
    let refused = runtime().block_on(async_nats::connect(url.clone()));
    assert!(refused.is_err(), "a client without the CA connected");
    let subscriber = Subscriber::start_with(
        async_nats::ConnectOptions::new()
            .add_root_certificates(ca.clone())
            .require_tls(true),
        &url,
        "stock.tls",
    );
    let stream = format!("SWTLS{}", crate::harness::rand_suffix().replace('-', ""));
    let channel = nats_channel("tls", &url, "stock.tls", "timeout_ms = 2000");
    let mut server = Server::prepare(|port, data| {
        format!(
            "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\ndurability = \"wal\"\n\
             drift_check_seconds = 1\n\
             [[locations]]\nid = \"wh-east\"\nkind = \"warehouse\"\n\
             [[locations]]\nid = \"wh-west\"\nkind = \"warehouse\"\n\
             {channel}\n\
             [cluster]\nnode = \"n1\"\nurl = \"{url}\"\nstream = \"{stream}\"\nreplicas = 1\n\
             advertise = \"http://127.0.0.1:{port}\"\nheartbeat_ms = 100\ntakeover_after_ms = 1000\n",
            data.display()
        )
    });
    server
        .env
        .push(("SSL_CERT_FILE".into(), ca.display().to_string()));
    server.spawn();
    let all = skus("t", 3);
    for (i, sku) in all.iter().enumerate() {
        server.receive(sku, "wh-east", 4 + i as u64);
    }
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "tls", "lines": [{"sku": "t-00", "location": "wh-east", "qty": 1}]}),
    );
    assert_eq!(status, 201, "{body}");
    let values = wait_converged(&server, "tls", None, &all);
    assert_eq!(values["t-00"], 3);
    wait_for("every value on the TLS subject", SHOWS, || {
        let last = last_values(&subscriber.messages());
        all.iter()
            .all(|sku| last.get(sku).map(|(available, _)| *available) == Some(values[sku]))
            .then_some(())
    });
    // The journal went to the stream over the same TLS connection.
    let (_, view) = server.get("/v1/cluster");
    assert_eq!(view["role"], "owner", "{view}");
    assert!(view["applied_seq"].as_u64().unwrap_or(0) >= 5, "{view}");
}
