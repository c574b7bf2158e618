//! Criterion benches: the domain core, the journal, RocksDB's own breakdown of
//! a write (perf context), and the in-process
//! reserve round trip (message to the shard -> position actor -> journaled
//! in RocksDB -> reply), on one position and across many.
//!
//! `cargo bench --bench reserve` (or `make bench`). Under `cargo test` each
//! bench runs once as a smoke test.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

use stockwire::actors::{Exec, Meta};
use stockwire::clock::Clock;
use stockwire::config::{Config, Durability};
use stockwire::domain::{Command, HoldMode, Position, Qty};
use stockwire::engine::{recover, Engine};
use stockwire::metrics::Metrics;
use stockwire::storage::{Journal, JournalOptions, RocksStore, Store, WriteBatch};

fn qty(n: u64) -> Qty {
    Qty::new(n).expect("bench quantity in range")
}

fn domain(c: &mut Criterion) {
    let mut group = c.benchmark_group("domain");
    let mut position = Position::default();
    let receipt = Command::Receipt {
        qty: qty(1_000_000_000),
    };
    for event in position.decide(&receipt).expect("receipt") {
        position.evolve(&event).expect("evolve");
    }
    let reservation: Arc<str> = Arc::from("r-1");
    let channel: Arc<str> = Arc::from("web");
    let hold = Command::Hold {
        reservation_id: reservation.clone(),
        channel,
        qty: qty(2),
        mode: HoldMode::Whole {
            allow_backorder: true,
        },
    };
    let release = Command::Release {
        reservation_id: reservation,
        expired: false,
    };
    group.bench_function("hold_then_release (decide + evolve)", |b| {
        b.iter(|| {
            for command in [&hold, &release] {
                let events = position.decide(command).expect("decides");
                for event in &events {
                    position.evolve(event).expect("evolves");
                }
            }
        })
    });
    group.finish();
}

fn journal(c: &mut Criterion) {
    let mut group = c.benchmark_group("journal_append");
    group.measurement_time(Duration::from_secs(5));
    for (name, sync) in [("wal", false), ("fsync", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).expect("rocksdb"));
        let journal = Arc::new(Journal::start(
            store,
            0,
            JournalOptions {
                sync,
                queue_max: 65_536,
                batch_max: 1024,
                on_write: None,
            },
        ));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let entry = vec![0u8; 200];
        for concurrent in [1usize, 64] {
            group.throughput(Throughput::Elements(concurrent as u64));
            group.bench_with_input(
                BenchmarkId::new(name, concurrent),
                &concurrent,
                |b, &concurrent| {
                    b.iter(|| {
                        runtime.block_on(async {
                            let tickets: Vec<_> = (0..concurrent)
                                .map(|_| {
                                    journal
                                        .append(vec![entry.clone().into()], WriteBatch::default())
                                        .expect("queued")
                                })
                                .collect();
                            for ticket in tickets {
                                ticket.await.expect("durable");
                            }
                        })
                    })
                },
            );
        }
        journal.shutdown();
    }
    group.finish();
}

/// Where the time of one RocksDB write goes, from RocksDB's perf context (WAL,
/// memtable, write delay, the rest): a tick's batch of `n` reservations, each
/// a journal entry and a reservation record, as the server writes them.
/// Prints the breakdown per write after the timing.
fn write_breakdown(c: &mut Criterion) {
    use rocksdb::perf::{set_perf_stats, PerfContext, PerfMetric, PerfStatsLevel};
    use std::cell::Cell;
    use stockwire::storage::Space;
    let mut group = c.benchmark_group("rocksdb_write");
    group.measurement_time(Duration::from_secs(4));
    let metrics = [
        ("wal", PerfMetric::WriteWalTime),
        ("memtable", PerfMetric::WriteMemtableTime),
        ("delay", PerfMetric::WriteDelayTime),
        ("pre/post", PerfMetric::WritePreAndPostProcessTime),
    ];
    for (name, sync) in [("wal", false), ("fsync", true)] {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = RocksStore::open(dir.path()).expect("rocksdb");
        let key = Cell::new(0u64);
        for per_tick in [1u64, 16] {
            let sums = Cell::new([0u64; 5]); // total ns, then each metric in ns
            let writes = Cell::new(0u64);
            group.throughput(Throughput::Elements(per_tick));
            group.bench_function(BenchmarkId::new(name, per_tick), |b| {
                b.iter_custom(|iters| {
                    set_perf_stats(PerfStatsLevel::EnableTime);
                    let mut context = PerfContext::default();
                    context.reset();
                    let started = Instant::now();
                    for _ in 0..iters {
                        let mut batch = WriteBatch::default();
                        for _ in 0..per_tick {
                            let n = key.get() + 1;
                            key.set(n);
                            batch.put(Space::Journal, n.to_be_bytes().to_vec(), vec![7u8; 200]);
                            let id = format!("res_{n:016x}");
                            batch.put(Space::Reservations, id.into_bytes(), vec![9u8; 300]);
                        }
                        store.write(batch, sync).expect("write");
                    }
                    let took = started.elapsed();
                    let mut sum = sums.get();
                    sum[0] += took.as_nanos() as u64;
                    for (i, (_, metric)) in metrics.iter().enumerate() {
                        sum[i + 1] += context.metric(*metric);
                    }
                    sums.set(sum);
                    writes.set(writes.get() + iters);
                    set_perf_stats(PerfStatsLevel::Disable);
                    took
                })
            });
            let (sum, n) = (sums.get(), writes.get().max(1) as f64);
            let mut line = format!(
                "rocksdb_write/{name}/{per_tick}: per write {:.1} µs",
                sum[0] as f64 / n / 1000.0
            );
            for (i, (label, _)) in metrics.iter().enumerate() {
                line.push_str(&format!(
                    ", {label} {:.1} µs",
                    sum[i + 1] as f64 / n / 1000.0
                ));
            }
            println!("{line}");
        }
    }
    group.finish();
}

fn hold(sku: &Arc<str>, location: &Arc<str>, n: u64) -> Exec {
    Exec {
        sku: sku.clone(),
        location: location.clone(),
        command: Command::Hold {
            reservation_id: Arc::from(format!("r-{n}").as_str()),
            channel: Arc::from("web"),
            qty: qty(1),
            mode: HoldMode::Whole {
                allow_backorder: false,
            },
        },
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
        create: false,
    }
}

fn stock(sku: &Arc<str>, location: &Arc<str>) -> Exec {
    let mut exec = hold(sku, location, 0);
    exec.command = Command::Receipt {
        qty: qty(1_000_000_000),
    };
    exec.create = true;
    exec.meta.event_id = format!("stock-{sku}");
    exec
}

/// The reserve round trip through shard, actor and journal (RocksDB, wal), with
/// the shard on the caller's own arbiter as the server places it (a request for
/// a SKU its HTTP worker owns never leaves the thread).
fn reserve(c: &mut Criterion) {
    let mut group = c.benchmark_group("reserve_round_trip");
    group.measurement_time(Duration::from_secs(8));
    let dir = tempfile::tempdir().expect("temp dir");
    let system = actix::System::new();
    let config = Arc::new(Config {
        durability: Durability::Wal,
        data_dir: dir.path().to_path_buf(),
        ..Config::default()
    });
    let engine = system.block_on(async {
        let store: Arc<dyn Store> = Arc::new(RocksStore::open(dir.path()).expect("rocksdb"));
        let recovered = recover(&*store).expect("recover");
        let here = vec![actix::Arbiter::current()];
        let metrics = Arc::new(Metrics::new());
        Engine::start_on(config, store, recovered, metrics, here, Clock::system()).await
    });
    let location: Arc<str> = Arc::from("wh-east");
    let skus: Vec<Arc<str>> = (0..1000)
        .map(|i| Arc::from(format!("sku-{i}").as_str()))
        .collect();
    system.block_on(async {
        for sku in &skus {
            engine.exec(stock(sku, &location)).await.expect("stocked");
        }
    });
    let counter = AtomicU64::new(1);
    group.bench_function("one_position", |b| {
        b.iter_custom(|iters| {
            system.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    engine
                        .exec(hold(&skus[0], &location, n))
                        .await
                        .expect("held");
                }
                started.elapsed()
            })
        })
    });
    const CONCURRENT: u64 = 256;
    group.throughput(Throughput::Elements(CONCURRENT));
    group.bench_function("many_positions_256_in_flight", |b| {
        b.iter(|| {
            system.block_on(async {
                let holds = (0..CONCURRENT).map(|i| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let sku = &skus[(n as usize + i as usize) % skus.len()];
                    engine.exec(hold(sku, &location, n))
                });
                for result in futures_util::future::join_all(holds).await {
                    result.expect("held");
                }
            })
        })
    });
    group.finish();
    system.block_on(engine.shutdown());
}

/// JSON of the hot route: decoding (strict, validated) a reservation request and
/// encoding the reservation answer, as the handlers do.
fn json(c: &mut Criterion) {
    use stockwire::engine::ReservationView;
    use stockwire::storage::records::{ReservationLine, ReservationRecord, ReservationStatus};
    let mut group = c.benchmark_group("json");
    let one = br#"{"reservation_id":"order-42","channel":"web","order_ref":"42","ttl_seconds":900,
        "lines":[{"sku":"sku-123","location":"wh-east","qty":2}]}"#;
    let three = br#"{"channel":"web","lines":[{"sku":"sku-1","qty":1},{"sku":"sku-2","qty":3},
        {"sku":"sku-3","location":"wh-west","qty":1}],"split":true}"#;
    group.bench_function("decode_reservation_request/1_line", |b| {
        b.iter(|| stockwire::api::decode_create(std::hint::black_box(one), 100).expect("valid"))
    });
    group.bench_function("decode_reservation_request/3_lines", |b| {
        b.iter(|| stockwire::api::decode_create(std::hint::black_box(three), 100).expect("valid"))
    });
    let view = ReservationView {
        record: ReservationRecord {
            id: "res_0123456789abcdef".into(),
            channel: "web".into(),
            order_ref: Some("42".into()),
            status: ReservationStatus::Held,
            lines: vec![ReservationLine {
                sku: "sku-123".into(),
                location: "wh-east".into(),
                qty: 2,
            }],
            created_at_ms: 1_764_000_000_000,
            updated_at_ms: 1_764_000_000_000,
            expires_at_ms: Some(1_764_000_900_000),
            correlation_id: "c0ffee".into(),
            request_hash: vec![0; 32],
            pending: None,
            cart: None,
        },
        backordered: vec![0],
    };
    group.bench_function("encode_reservation_answer/1_line", |b| {
        b.iter(|| {
            serde_json::to_vec(&stockwire::api::reservation_answer(std::hint::black_box(
                &view,
            )))
            .expect("json")
        })
    });
    group.finish();
}

criterion_group!(benches, domain, journal, write_breakdown, reserve, json);
criterion_main!(benches);
