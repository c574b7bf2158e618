//! Reservation throughput with channel publication running, against none.
//!
//! The in-process round trip of `reserve` (shard -> position actor -> RocksDB journal
//! -> reply), 256 commands in flight over 1,000 SKUs, each a hold or the release of an
//! earlier hold (so positions stay the same size however long it runs), on two engines
//! started side by side: one with no channels, one with three channels publishing every
//! change: a CSV file feed, an EDI 846 file feed, and a webhook whose endpoint refuses
//! connections (a channel that is down). The claim checked: the hot path never waits on
//! publication, so the second is within 10% of the first.
//!
//! The machine is shared and noisy, so the two are measured in alternating rounds
//! (only one engine is driven at a time) and the report is the median of each and the
//! median of the per-round ratios.
//!
//! `cargo bench --bench publication [-- ROUNDS SECONDS_PER_ROUND]` (default 10 × 2 s).
//! Under `cargo test` it runs one short round as a smoke test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use stockwire::actors::{Exec, Meta};
use stockwire::channels::Channels;
use stockwire::config::{Config, Durability};
use stockwire::domain::{Command, HoldMode, Qty};
use stockwire::engine::{recover, Engine};
use stockwire::metrics::Metrics;
use stockwire::storage::{RocksStore, Store, WriteBatch};

const CONCURRENT: u64 = 256;

fn exec(sku: &Arc<str>, location: &Arc<str>, n: u64, command: Command) -> Exec {
    Exec {
        sku: sku.clone(),
        location: location.clone(),
        command,
        meta: Meta {
            event_id: format!("bench-{n}"),
            source: Arc::from("bench"),
            correlation_id: Arc::from("bench"),
            occurred_at_ms: 0,
        },
        extra: WriteBatch::default(),
        finish: None,
        dedupe: false,
        content: None,
        create: n == 0,
    }
}

fn release(n: u64) -> Command {
    Command::Release {
        reservation_id: Arc::from(format!("r-{n}").as_str()),
        expired: false,
    }
}

fn hold(n: u64) -> Command {
    Command::Hold {
        reservation_id: Arc::from(format!("r-{n}").as_str()),
        channel: Arc::from("web"),
        qty: Qty::new(1).expect("in range"),
        mode: HoldMode::Whole {
            allow_backorder: false,
        },
    }
}

fn config(dir: &std::path::Path, channels: bool) -> Config {
    let mut text = String::from(
        "[[locations]]\nid = \"wh-east\"\nkind = \"warehouse\"\n\
         [[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n",
    );
    if channels {
        let feeds = dir.join("feeds");
        text.push_str(&format!(
            "sink = {{ kind = \"file\", dir = \"{}\", format = \"csv\" }}\n\
             [[channels]]\nid = \"edi\"\nlocations = [\"wh-east\"]\nbuffer = 2\n\
             sink = {{ kind = \"file\", dir = \"{}\", format = \"edi846\" }}\n\
             [[channels]]\nid = \"down\"\nlocations = [\"wh-east\"]\n\
             sink = {{ kind = \"webhook\", url = \"http://127.0.0.1:9/stock\", timeout_ms = 200 }}\n",
            feeds.join("csv").display(),
            feeds.join("edi").display(),
        ));
    }
    let mut config = Config::from_toml_str(&text, "bench", &[]).expect("bench config");
    config.durability = Durability::Wal;
    config.data_dir = dir.join("data");
    config
}

struct Bench {
    _dir: tempfile::TempDir,
    engine: Arc<Engine>,
    publication: Arc<Channels>,
    skus: Vec<Arc<str>>,
    next: AtomicU64,
}

fn start(system: &actix::SystemRunner, channels: bool) -> Bench {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = Arc::new(config(dir.path(), channels));
    let (engine, publication) = system.block_on(async {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(&config.data_dir).expect("rocksdb"));
        let recovered = recover(&*store).expect("recover");
        let engine =
            Engine::start(config.clone(), store, recovered, Arc::new(Metrics::new())).await;
        engine.finish_recovery().await;
        let publication = Channels::start(engine.clone()).expect("channels");
        (engine, publication)
    });
    let location: Arc<str> = Arc::from("wh-east");
    let skus: Vec<Arc<str>> = (0..1000)
        .map(|i| Arc::from(format!("sku-{i}").as_str()))
        .collect();
    system.block_on(async {
        for sku in &skus {
            let receipt = Command::Receipt {
                qty: Qty::new(1_000_000_000).expect("in range"),
            };
            let mut stock = exec(sku, &location, 0, receipt);
            stock.meta.event_id = format!("stock-{sku}");
            engine.exec(stock).await.expect("stocked");
        }
    });
    Bench {
        _dir: dir,
        engine,
        publication,
        skus,
        next: AtomicU64::new(0),
    }
}

/// Drives `bench` for `duration`; returns commands per second. Batches alternate: one
/// holds `CONCURRENT` new reservations, the next releases them; a round ends after a
/// release, so every round starts from the same state.
fn drive(system: &actix::SystemRunner, bench: &Bench, duration: Duration) -> f64 {
    let location: Arc<str> = Arc::from("wh-east");
    let started = Instant::now();
    let mut done = 0u64;
    while started.elapsed() < duration || bench.next.load(Ordering::Relaxed) % 2 == 1 {
        let batch = bench.next.fetch_add(1, Ordering::Relaxed);
        let holding = batch.is_multiple_of(2);
        let first_id = (batch - u64::from(!holding)) * CONCURRENT;
        system.block_on(async {
            let commands = (first_id..first_id + CONCURRENT).map(|id| {
                let sku = &bench.skus[id as usize % bench.skus.len()];
                let command = if holding { hold(id) } else { release(id) };
                bench.engine.exec(exec(sku, &location, id + 1, command))
            });
            for result in futures_util::future::join_all(commands).await {
                result.expect("applied");
            }
        });
        done += CONCURRENT;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let benching = args.iter().any(|a| a == "--bench");
    let numbers: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let (rounds, seconds) = match (benching, numbers.as_slice()) {
        (false, _) => (1, 0.2),
        (true, [rounds, seconds, ..]) => (*rounds as usize, *seconds as f64),
        (true, [rounds]) => (*rounds as usize, 2.0),
        (true, []) => (10, 2.0),
    };
    let round = Duration::from_secs_f64(seconds);
    let system = actix::System::new();
    let none = start(&system, false);
    let three = start(&system, true);
    // Warm-up: both engines' caches and the file sinks' directories.
    drive(&system, &none, round / 2);
    drive(&system, &three, round / 2);
    let (mut base, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for index in 0..rounds {
        // Alternate which goes first, so a drift in machine load hits both alike.
        let (a, b) = if index % 2 == 0 {
            let a = drive(&system, &none, round);
            (a, drive(&system, &three, round))
        } else {
            let b = drive(&system, &three, round);
            (drive(&system, &none, round), b)
        };
        println!(
            "round {:>2}: no channels {:>9.0}/s, three channels (one down) {:>9.0}/s, ratio {:.3}",
            index + 1,
            a,
            b,
            b / a
        );
        base.push(a);
        with.push(b);
        ratios.push(b / a);
    }
    println!(
        "median over {rounds} rounds of {seconds} s: no channels {:.0}/s, three channels (one down) {:.0}/s, median ratio {:.3}",
        median(&mut base),
        median(&mut with),
        median(&mut ratios)
    );
    for bench in [none, three] {
        bench.publication.stop();
        system.block_on(bench.engine.shutdown());
    }
}
