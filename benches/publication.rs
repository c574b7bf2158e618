//! Reservation throughput with channel publication running, against none.
//!
//! Same in-process round trip as `reserve` (shard -> position actor -> RocksDB journal
//! -> reply, 256 holds in flight over 1,000 SKUs), on two fresh engines: one with no
//! channels, one with three channels publishing every change: a CSV file feed, an
//! EDI 846 file feed, and a webhook whose endpoint refuses connections (a channel that
//! is down). The claim checked: the hot path never waits on publication, so the second
//! is within 10% of the first.
//!
//! `cargo bench --bench publication`. Under `cargo test` each bench runs once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

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
        dedupe: false,
        create: n == 0,
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

fn run(c: &mut Criterion, name: &str, channels: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let system = actix::System::new();
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
    let counter = AtomicU64::new(1);
    let mut group = c.benchmark_group("reserve_with_publication");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function(name, |b| {
        b.iter(|| {
            system.block_on(async {
                let holds = (0..CONCURRENT).map(|i| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sku = &skus[(n as usize + i as usize) % skus.len()];
                    engine.exec(exec(sku, &location, n, hold(n)))
                });
                for result in futures_util::future::join_all(holds).await {
                    result.expect("held");
                }
            })
        })
    });
    group.finish();
    publication.stop();
    system.block_on(engine.shutdown());
}

fn publication(c: &mut Criterion) {
    run(c, "no_channels", false);
    run(c, "three_channels_one_down", true);
}

criterion_group!(benches, publication);
criterion_main!(benches);
