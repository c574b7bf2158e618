//! What a partition journal on NATS JetStream would cost an append (issue 13's
//! groundwork): each of `--partitions` streams (R3 on a 3-server cluster, e.g.
//! `scripts/nats-cluster.sh start DIR`) takes `--appends` messages of `--bytes`
//! one after the other, as a partition's group commits would, each written with
//! `Nats-Expected-Last-Sequence` (the fence a stale owner's write fails on) and a
//! `Nats-Msg-Id`. It prints the time from publish to the stream's ack (p50, p99,
//! max), then the same appends as local RocksDB writes (the embedded journal), and
//! checks that a write with a stale expectation is refused.
//!
//! ```text
//! scripts/nats-cluster.sh start /tmp/nats-cluster
//! cargo run --release --example jetstream_latency -- \
//!     --url nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
//! scripts/nats-cluster.sh stop /tmp/nats-cluster
//! ```

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use stockwire::storage::{RocksStore, Space, Store, WriteBatch};

struct Args {
    url: String,
    partitions: usize,
    appends: usize,
    bytes: usize,
    replicas: usize,
}

fn args() -> Args {
    let mut args = Args {
        url: "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224".to_string(),
        partitions: 4,
        appends: 2000,
        bytes: 2048,
        replicas: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let number = || {
            value
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{flag}: a number"))
        };
        match flag.as_str() {
            "--url" => args.url = value.clone(),
            "--partitions" => args.partitions = number().clamp(1, 256),
            "--appends" => args.appends = number().clamp(1, 1_000_000),
            "--bytes" => args.bytes = number().clamp(1, 1 << 20),
            "--replicas" => args.replicas = number().clamp(1, 5),
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(what: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort_unstable();
    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{what}: {} appends in {:.2} s ({:.0}/s): p50 {:.0} µs, p99 {:.0} µs, max {:.0} µs",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        micros(percentile(&latencies, 0.50)),
        micros(percentile(&latencies, 0.99)),
        micros(*latencies.last().expect("some appends")),
    );
}

/// One partition's appends, each after the previous one's ack.
async fn partition(
    js: jetstream::Context,
    subject: String,
    appends: usize,
    payload: bytes::Bytes,
) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(appends);
    let mut last = 0u64;
    for n in 0..appends {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
        headers.insert("Nats-Msg-Id", format!("{subject}:{n}").as_str());
        let started = Instant::now();
        let ack = js
            .publish_with_headers(subject.clone(), headers, payload.clone())
            .await
            .expect("published")
            .await
            .expect("acknowledged");
        latencies.push(started.elapsed());
        last = ack.sequence;
    }
    latencies
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = args();
    let servers: Vec<async_nats::ServerAddr> = args
        .url
        .split(',')
        .map(|s| s.trim().parse().expect("a nats:// url"))
        .collect();
    let client = async_nats::connect(servers).await.expect("connects");
    let js = jetstream::new(client);
    let payload = bytes::Bytes::from(vec![b'x'; args.bytes]);
    let mut subjects = Vec::new();
    for p in 0..args.partitions {
        let name = format!("SW_LATENCY_P{p}");
        let _ = js.delete_stream(&name).await;
        let subject = format!("sw.latency.p{p}");
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            num_replicas: args.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("stream created (a cluster of at least --replicas servers?)");
        subjects.push(subject);
    }
    println!(
        "{} partitions x {} appends of {} bytes, R{} streams",
        args.partitions, args.appends, args.bytes, args.replicas
    );

    let started = Instant::now();
    let runs = subjects
        .iter()
        .map(|subject| partition(js.clone(), subject.clone(), args.appends, payload.clone()));
    let latencies: Vec<Duration> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    report("jetstream", latencies, started.elapsed());

    // The fence: a write expecting an older last sequence is refused.
    // (The stream holds at least one message, so expecting 0 is stale.)
    let mut stale = HeaderMap::new();
    stale.insert("Nats-Expected-Last-Sequence", "0");
    let refusal = match js
        .publish_with_headers(subjects[0].clone(), stale, payload.clone())
        .await
    {
        Ok(ack) => ack.await.err().map(|e| e.to_string()),
        Err(error) => Some(error.to_string()),
    };
    let refusal = refusal.expect("a write with a stale expected sequence must be refused");
    assert!(refusal.contains("wrong last sequence"), "{refusal}");
    println!("a write with a stale expected sequence is refused: {refusal}");
    for p in 0..args.partitions {
        let _ = js.delete_stream(format!("SW_LATENCY_P{p}")).await;
    }

    // The same appends as local RocksDB writes (the embedded journal's `wal` mode).
    let dir = std::env::temp_dir().join(format!("sw-latency-{}", std::process::id()));
    let store = RocksStore::open(&dir).expect("rocksdb");
    let mut latencies = Vec::with_capacity(args.appends * args.partitions);
    let started = Instant::now();
    for n in 0..args.appends * args.partitions {
        let mut batch = WriteBatch::default();
        batch.put(Space::Journal, (n as u64).to_be_bytes(), payload.to_vec());
        let began = Instant::now();
        store.write(batch, false).expect("written");
        latencies.push(began.elapsed());
    }
    report("rocksdb (wal, one thread)", latencies, started.elapsed());
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
