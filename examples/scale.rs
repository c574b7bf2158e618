//! Memory and recovery at scale: writes `EVENTS` receipts over `POSITIONS`
//! positions through the real engine (RocksDB, wal), stops without a
//! snapshot, then measures a cold recovery (snapshot + replay of every entry)
//! and the resident memory with every position loaded.
//!
//! ```sh
//! cargo run --release --example scale -- write 1000000 5000000 /tmp/scale-data
//! cargo run --release --example scale -- recover /tmp/scale-data
//! ```
//! (two processes, so the recovery's memory is measured in a fresh one)

use std::sync::Arc;
use std::time::Instant;

use futures_util::stream::{self, StreamExt};
use stockwire::actors::{Exec, Meta};
use stockwire::config::Config;
use stockwire::domain::{Command, Qty};
use stockwire::engine::{recover, Engine};
use stockwire::metrics::Metrics;
use stockwire::storage::{RocksStore, Store, WriteBatch};

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |n: usize, default: &str| args.get(n).cloned().unwrap_or_else(|| default.to_string());
    let config = |dir: &std::path::Path| {
        Arc::new(Config {
            data_dir: dir.to_path_buf(),
            snapshot_interval_seconds: 86_400,
            ..Config::default()
        })
    };
    match args.get(1).map(String::as_str) {
        Some("write") => {
            let positions: u64 = arg(2, "1000000").parse()?;
            let events: u64 = arg(3, "5000000").parse()?;
            let dir = std::path::PathBuf::from(arg(4, "/tmp/stockwire-scale"));
            let _ = std::fs::remove_dir_all(&dir);
            write(config(&dir), &dir, positions, events)
        }
        Some("recover") => {
            let dir = std::path::PathBuf::from(arg(2, "/tmp/stockwire-scale"));
            recover_and_measure(config(&dir), &dir)
        }
        _ => anyhow::bail!("usage: scale write POSITIONS EVENTS DIR | scale recover DIR"),
    }
}

fn write(
    config: Arc<Config>,
    dir: &std::path::Path,
    positions: u64,
    events: u64,
) -> anyhow::Result<()> {
    let locations = ["wh-east", "wh-west", "3pl-north"];
    let system = actix::System::new();
    system.block_on(async {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir)?);
        let recovered = recover(&*store)?;
        let engine = Engine::start(config.clone(), store, recovered, Arc::new(Metrics::new())).await;
        let started = Instant::now();
        let location_ids: Vec<Arc<str>> = locations.iter().map(|l| Arc::from(*l)).collect();
        let mut done = 0u64;
        stream::iter(0..events)
            .map(|n| {
                let position = n % positions;
                let exec = Exec {
                    sku: Arc::from(format!("sku-{:08}", position / 3).as_str()),
                    location: location_ids[(position % 3) as usize].clone(),
                    command: Command::Receipt { qty: Qty::new(1 + n % 7).expect("in range") },
                    meta: Meta {
                        event_id: format!("e{n}"),
                        source: Arc::from("scale"),
                        correlation_id: Arc::from("scale"),
                        occurred_at_ms: 0,
                    },
                    extra: WriteBatch::default(),
                    finish: None,
                    dedupe: false,
                    content: None,
                    create: true,
                };
                let engine = engine.clone();
                async move { engine.exec(exec).await }
            })
            .buffer_unordered(512)
            .for_each(|result| {
                if result.is_ok() {
                    done += 1;
                }
                if done.is_multiple_of(1_000_000) {
                    eprintln!("{done} events in {:.1} s", started.elapsed().as_secs_f64());
                }
                async {}
            })
            .await;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "wrote {done} events over {positions} positions in {seconds:.1} s ({:.0} events/s, in-process, wal)",
            done as f64 / seconds
        );
        // Stop without a snapshot: recovery must replay the whole journal.
        engine.stop(false).await;
        anyhow::Ok(())
    })
}

fn recover_and_measure(config: Arc<Config>, dir: &std::path::Path) -> anyhow::Result<()> {
    let system = actix::System::new();
    system.block_on(async {
        let rss_before = rss_bytes();
        let started = Instant::now();
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir)?);
        let recovered = recover(&*store)?;
        let replay_seconds = started.elapsed().as_secs_f64();
        let count = recovered.positions;
        let replayed = recovered.replayed;
        let engine = Engine::start(config.clone(), store, recovered, Arc::new(Metrics::new())).await;
        engine.finish_recovery().await;
        let ready_seconds = started.elapsed().as_secs_f64();
        let (live, resident) = engine.stats().await;
        let rss_after = rss_bytes();
        println!(
            "recovered {count} positions, replayed {replayed} journal entries: replay {replay_seconds:.1} s, ready {ready_seconds:.1} s"
        );
        println!(
            "resident positions {resident} (live actors {live}); RSS {:.0} MiB -> {:.0} MiB: {:.0} bytes per position",
            rss_before as f64 / 1048576.0,
            rss_after as f64 / 1048576.0,
            rss_after.saturating_sub(rss_before) as f64 / resident.max(1) as f64
        );
        engine.shutdown().await;
        anyhow::Ok(())
    })
}
