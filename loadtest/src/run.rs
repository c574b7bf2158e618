//! Running a scenario: seed, drive (open or closed loop) with a warm-up and a
//! progress line, optionally restart the server under load, then read the
//! server back and judge correctness.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::http::Connection;
use crate::report::{Check, OpStats, Report, Second};
use crate::scenario::{Mode, Op, Scenario};

/// Latencies are recorded in microseconds, up to 60 s.
const LATENCY_MAX_US: u64 = 60_000_000;
/// Acknowledged reservations remembered per run (for the verdict); past this the
/// run stops recording and the verdict says it is incomplete.
const ACKED_MAX: usize = 4_000_000;
/// Connections used to read the server back after the run.
const VERIFY_CONNECTIONS: usize = 8;

pub struct RunOptions {
    /// `host:port`.
    pub target: String,
    /// Prefix of every SKU, reservation and event id of this run.
    pub prefix: String,
    /// Print a progress line to stderr every second.
    pub progress: bool,
    /// Per-request timeout.
    pub timeout: Duration,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds")
}

/// A reservation the runner knows was (or may have been) created.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    released: bool,
}

/// What one worker saw.
struct WorkerOutcome {
    total: Histogram<u64>,
    per_op: Vec<Histogram<u64>>,
    per_second: Vec<Histogram<u64>>,
    /// (op, status, code) -> count; status 0 is a connection error.
    outcomes: HashMap<(&'static str, u16, String), u64>,
    acked: Vec<Known>,
    /// Reservation ids whose request got no answer (may or may not exist).
    uncertain: Vec<String>,
    /// Event batches that got no answer: re-posted after the run (idempotent).
    uncertain_events: Vec<Vec<u8>>,
    /// (sku index, location index) -> units received by acknowledged events.
    received: HashMap<(u64, usize), u64>,
    /// (sku, location, requested) of every shortage line answered.
    shortages: Vec<(String, String, u64)>,
    overflow: bool,
}

struct Shared {
    scenario: Scenario,
    options: RunOptions,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    stop: AtomicBool,
    /// Restarts still to come: the load goes on past its duration until they are done.
    restarting: AtomicBool,
}

impl Shared {
    fn sku(&self, n: u64) -> String {
        format!("{}-{n}", self.options.prefix)
    }
}

#[derive(Deserialize)]
struct ReservationAnswer {
    reservation_id: String,
    status: String,
    lines: Vec<LineAnswer>,
}

#[derive(Deserialize)]
struct LineAnswer {
    sku: String,
    location: String,
    qty: u64,
    #[serde(default)]
    backordered: u64,
}

#[derive(Deserialize)]
struct Problem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    shortages: Vec<Shortage>,
}

#[derive(Deserialize)]
struct Shortage {
    sku: String,
    #[serde(default)]
    location: Option<String>,
    requested: u64,
}

fn wait_ready(connection: &mut Connection, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, _)) = connection.call("GET", "/readyz", b"") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the server was not ready within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn seed(shared: &Shared) -> anyhow::Result<()> {
    let seed = &shared.scenario.seed;
    let mut connection = Connection::new(&shared.options.target, shared.options.timeout);
    wait_ready(&mut connection, Duration::from_secs(60))?;
    let mut events = Vec::new();
    let mut flush = |events: &mut Vec<serde_json::Value>| -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let body = serde_json::to_vec(&serde_json::json!({ "events": events }))?;
        let (status, answer) = connection.call("POST", "/v1/events", &body)?;
        if status != 200 {
            bail!("seeding: {status} {}", String::from_utf8_lossy(&answer));
        }
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        for result in answer["results"].as_array().into_iter().flatten() {
            if result["status"] == "rejected" {
                bail!("seeding: an event was rejected: {result}");
            }
        }
        events.clear();
        Ok(())
    };
    for n in 0..seed.skus {
        for location in &seed.locations {
            let sku = shared.sku(n);
            events.push(serde_json::json!({
                "event_id": format!("{sku}-seed-{location}"), "type": "receipt",
                "source": "loadtest", "sku": sku, "location": location, "qty": seed.stock,
            }));
            if events.len() == 1000 {
                flush(&mut events)?;
            }
        }
    }
    flush(&mut events)
}

/// Cumulative weights of the mix, for picking an op.
fn picker(mix: &[Op]) -> Vec<(u32, usize)> {
    let mut total = 0;
    mix.iter()
        .enumerate()
        .filter(|(_, op)| op.weight() > 0)
        .map(|(index, op)| {
            total += op.weight();
            (total, index)
        })
        .collect()
}

fn record_outcome(outcome: &mut WorkerOutcome, op: &'static str, status: u16, body: &[u8]) {
    let code = if status >= 400 {
        serde_json::from_slice::<Problem>(body)
            .map(|p| p.code)
            .unwrap_or_default()
    } else {
        String::new()
    };
    *outcome.outcomes.entry((op, status, code)).or_default() += 1;
}

fn worker(shared: Arc<Shared>, index: u64, start: Instant) -> WorkerOutcome {
    let scenario = &shared.scenario;
    let load = &scenario.load;
    let seed = &scenario.seed;
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + index);
    let mut connection = Connection::new(&shared.options.target, shared.options.timeout);
    let picks = picker(&scenario.mix);
    let total_weight = picks.last().map_or(1, |(w, _)| *w);
    let warmup = Duration::from_secs_f64(load.warmup_seconds);
    let measure_from = start + warmup;
    let end = measure_from + Duration::from_secs_f64(load.duration_seconds);
    // Open loop: this connection's share of the rate, offset so connections interleave.
    let interval = load
        .rate
        .map(|rate| Duration::from_secs_f64(load.concurrency as f64 / rate as f64));
    let offset = interval.map_or(Duration::ZERO, |i| {
        i.mul_f64(index as f64 / load.concurrency as f64)
    });
    let mut outcome = WorkerOutcome {
        total: histogram(),
        per_op: scenario.mix.iter().map(|_| histogram()).collect(),
        per_second: Vec::new(),
        outcomes: HashMap::new(),
        acked: Vec::new(),
        uncertain: Vec::new(),
        uncertain_events: Vec::new(),
        received: HashMap::new(),
        shortages: Vec::new(),
        overflow: false,
    };
    let mut held: Vec<usize> = Vec::new();
    let mut k: u64 = 0;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        let scheduled = match (load.mode, interval) {
            (Mode::Open, Some(interval)) => {
                let at = start + offset + interval.mul_f64(k as f64);
                if at >= end && !shared.restarting.load(Ordering::Relaxed) {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                at
            }
            _ => {
                let now = Instant::now();
                if now >= end && !shared.restarting.load(Ordering::Relaxed) {
                    break;
                }
                now
            }
        };
        k += 1;
        let roll = rng.gen_range(0..total_weight);
        let op_index = picks
            .iter()
            .find(|(cumulative, _)| roll < *cumulative)
            .map_or(0, |(_, i)| *i);
        let op = &scenario.mix[op_index];
        let name = op.name();
        let sku_n = rng.gen_range(0..seed.skus);
        let location_index = rng.gen_range(0..seed.locations.len());
        let mut releasing = None;
        let availability = format!(
            "/v1/availability/{}?channel={}",
            shared.sku(sku_n),
            seed.channel
        );
        let (method, path, body): (&str, String, Vec<u8>) = match op {
            Op::Reserve {
                lines,
                qty,
                ttl_seconds,
                sourced,
                ..
            } => {
                let id = format!("{}-r{index}-{k}", shared.options.prefix);
                let mut text = format!(
                    r#"{{"reservation_id":"{id}","channel":"{}","lines":["#,
                    seed.channel
                );
                let step = (seed.skus / u64::from(*lines)).max(1);
                for line in 0..u64::from(*lines) {
                    if line > 0 {
                        text.push(',');
                    }
                    let sku = shared.sku((sku_n + line * step) % seed.skus);
                    if *sourced {
                        text.push_str(&format!(r#"{{"sku":"{sku}","qty":{qty}}}"#));
                    } else {
                        let location = &seed.locations[location_index];
                        text.push_str(&format!(
                            r#"{{"sku":"{sku}","location":"{location}","qty":{qty}}}"#
                        ));
                    }
                }
                text.push(']');
                if let Some(ttl) = ttl_seconds {
                    text.push_str(&format!(r#","ttl_seconds":{ttl}"#));
                }
                text.push('}');
                ("POST", "/v1/reservations".to_string(), text.into_bytes())
            }
            Op::Release { .. } => match held.pop() {
                Some(known) => {
                    releasing = Some(known);
                    (
                        "POST",
                        format!("/v1/reservations/{}/release", outcome.acked[known].id),
                        Vec::new(),
                    )
                }
                // Nothing of ours to release yet: read availability instead.
                None => ("GET", availability, Vec::new()),
            },
            Op::Availability { .. } => ("GET", availability, Vec::new()),
            Op::Query { skus, .. } => {
                let list: Vec<String> = (0..u64::from(*skus))
                    .map(|i| format!("\"{}\"", shared.sku((sku_n + i) % seed.skus)))
                    .collect();
                let text = format!(
                    r#"{{"skus":[{}],"channel":"{}"}}"#,
                    list.join(","),
                    seed.channel
                );
                (
                    "POST",
                    "/v1/availability/query".to_string(),
                    text.into_bytes(),
                )
            }
            Op::Events { batch, qty, .. } => {
                let mut text = String::from(r#"{"events":["#);
                for i in 0..u64::from(*batch) {
                    if i > 0 {
                        text.push(',');
                    }
                    let n = (sku_n + i) % seed.skus;
                    let location =
                        &seed.locations[(location_index + i as usize) % seed.locations.len()];
                    text.push_str(&format!(
                        r#"{{"event_id":"{}-e{index}-{k}-{i}","type":"receipt","source":"loadtest","sku":"{}","location":"{location}","qty":{qty}}}"#,
                        shared.options.prefix,
                        shared.sku(n)
                    ));
                }
                text.push_str("]}");
                ("POST", "/v1/events".to_string(), text.into_bytes())
            }
            Op::Healthz { .. } => ("GET", "/healthz".to_string(), Vec::new()),
        };
        shared.sent.fetch_add(1, Ordering::Relaxed);
        let result = connection.call(method, &path, &body);
        let latency_us = (scheduled.elapsed().as_micros() as u64).clamp(1, LATENCY_MAX_US);
        let measured = scheduled >= measure_from;
        let status = match &result {
            Ok((status, _)) => *status,
            Err(_) => 0,
        };
        if (200..300).contains(&status) {
            shared.ok.fetch_add(1, Ordering::Relaxed);
        } else {
            shared.failed.fetch_add(1, Ordering::Relaxed);
        }
        // What the answer means for the verdict, measured or not.
        match (op, &result) {
            (Op::Reserve { .. }, Ok((201 | 200, answer))) => {
                if outcome.acked.len() >= ACKED_MAX {
                    outcome.overflow = true;
                } else if let Ok(answer) = serde_json::from_slice::<ReservationAnswer>(answer) {
                    outcome.acked.push(Known {
                        id: answer.reservation_id,
                        released: false,
                    });
                    if answer.status == "held" {
                        held.push(outcome.acked.len() - 1);
                    }
                }
            }
            (Op::Reserve { .. }, Ok((409, answer))) => {
                if let Ok(problem) = serde_json::from_slice::<Problem>(answer) {
                    for s in problem.shortages {
                        if let Some(location) = s.location {
                            outcome.shortages.push((s.sku, location, s.requested));
                        }
                    }
                }
            }
            (Op::Reserve { .. }, Ok((status, _))) if *status >= 500 => {
                outcome
                    .uncertain
                    .push(format!("{}-r{index}-{k}", shared.options.prefix));
            }
            (Op::Reserve { .. }, Err(_)) => {
                outcome
                    .uncertain
                    .push(format!("{}-r{index}-{k}", shared.options.prefix));
            }
            (Op::Release { .. }, Ok((200, _))) => {
                if let Some(known) = releasing {
                    outcome.acked[known].released = true;
                }
            }
            (Op::Events { batch, qty, .. }, Ok((200, answer))) => {
                if let Ok(answer) = serde_json::from_slice::<serde_json::Value>(answer) {
                    for (i, result) in answer["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .enumerate()
                    {
                        if result["status"] == "applied" && (i as u32) < *batch {
                            let n = (sku_n + i as u64) % seed.skus;
                            let location = (location_index + i) % seed.locations.len();
                            *outcome.received.entry((n, location)).or_default() += qty;
                        }
                    }
                }
            }
            (Op::Events { .. }, _) => outcome.uncertain_events.push(body.clone()),
            _ => {}
        }
        if measured {
            outcome.total.saturating_record(latency_us);
            outcome.per_op[op_index].saturating_record(latency_us);
            let second = (scheduled - measure_from).as_secs() as usize;
            while outcome.per_second.len() <= second {
                outcome.per_second.push(coarse_histogram());
            }
            outcome.per_second[second].saturating_record(latency_us);
            let answer: &[u8] = result.as_ref().map(|(_, b)| b.as_slice()).unwrap_or(b"");
            record_outcome(&mut outcome, name, status, answer);
        }
        if status == 0 {
            // The server is gone (a restart): do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    outcome
}

fn restarter(shared: Arc<Shared>, done: Arc<AtomicU64>) -> anyhow::Result<()> {
    let Some(restart) = shared.scenario.restart.clone() else {
        return Ok(());
    };
    let mut connection = Connection::new(&shared.options.target, shared.options.timeout);
    for round in 1..=restart.count {
        let wait = Duration::from_secs_f64(restart.every_seconds);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if shared.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(&restart.command)
            .env("LOADTEST_TARGET", &shared.options.target)
            .status()
            .context("running the restart command")?;
        if !status.success() {
            bail!("restart command failed ({status})");
        }
        eprintln!("restart {round}/{}: done, waiting for ready", restart.count);
        wait_ready(
            &mut connection,
            Duration::from_secs_f64(restart.ready_timeout_seconds),
        )?;
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn progress(shared: Arc<Shared>, start: Instant) {
    let mut last = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_secs(1));
        let sent = shared.sent.load(Ordering::Relaxed);
        eprintln!(
            "[{:>5.1}s] sent {sent:>9}  ok {:>9}  failed {:>7}  {:>7}/s",
            start.elapsed().as_secs_f64(),
            shared.ok.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
            sent - last
        );
        last = sent;
    }
}

pub fn run(scenario: &Scenario, options: RunOptions) -> anyhow::Result<Report> {
    scenario.validate()?;
    let shared = Arc::new(Shared {
        scenario: scenario.clone(),
        options,
        sent: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        restarting: AtomicBool::new(scenario.restart.is_some()),
    });
    let seeding = Instant::now();
    seed(&shared)?;
    let seed_seconds = seeding.elapsed().as_secs_f64();
    let start = Instant::now() + Duration::from_millis(50);
    let workers: Vec<_> = (0..scenario.load.concurrency)
        .map(|index| {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || worker(shared, index, start))
        })
        .collect::<Result<_, _>>()?;
    let restarts = Arc::new(AtomicU64::new(0));
    let restart_thread = {
        let (shared, restarts) = (shared.clone(), restarts.clone());
        std::thread::spawn(move || {
            let result = restarter(shared.clone(), restarts);
            shared.restarting.store(false, Ordering::Relaxed);
            result
        })
    };
    let progress_thread = shared.options.progress.then(|| {
        let shared = shared.clone();
        std::thread::spawn(move || progress(shared, start))
    });
    let mut outcomes = Vec::new();
    let measure_from = start + Duration::from_secs_f64(scenario.load.warmup_seconds);
    for worker in workers {
        outcomes.push(
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("a load worker panicked"))?,
        );
    }
    shared.stop.store(true, Ordering::Relaxed);
    let restart_result = restart_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the restart thread panicked"))?;
    if let Some(thread) = progress_thread {
        let _ = thread.join();
    }
    restart_result?;
    // The measured window: as long as the scenario says, or longer if restarts took it.
    let measured_seconds = measure_from
        .elapsed()
        .as_secs_f64()
        .max(scenario.load.duration_seconds);
    let mut report = Report::new(scenario, &shared.options.target, seed_seconds);
    report.duration_seconds = measured_seconds;
    report.restarts = restarts.load(Ordering::Relaxed);
    merge(&mut report, scenario, &outcomes, measured_seconds)?;
    report.verdict = verify(&shared, &outcomes)?;
    report.passed = report.verdict.iter().all(|c| c.passed);
    Ok(report)
}

fn merge(
    report: &mut Report,
    scenario: &Scenario,
    outcomes: &[WorkerOutcome],
    seconds: f64,
) -> anyhow::Result<()> {
    let mut total = histogram();
    let mut per_second: Vec<Histogram<u64>> = Vec::new();
    let mut statuses: HashMap<String, u64> = HashMap::new();
    for outcome in outcomes {
        total.add(&outcome.total)?;
        for (second, h) in outcome.per_second.iter().enumerate() {
            while per_second.len() <= second {
                per_second.push(coarse_histogram());
            }
            per_second[second].add(h)?;
        }
        for ((op, status, code), count) in &outcome.outcomes {
            let key = match (status, code.as_str()) {
                (0, _) => format!("{op} connection_error"),
                (s, "") => format!("{op} {s}"),
                (s, c) => format!("{op} {s} {c}"),
            };
            *statuses.entry(key).or_default() += count;
        }
    }
    for (index, op) in scenario.mix.iter().enumerate() {
        let mut h = histogram();
        for outcome in outcomes {
            h.add(&outcome.per_op[index])?;
        }
        if !h.is_empty() {
            report.ops.push(OpStats::of(op.name(), &h, seconds));
        }
    }
    report.set_latency(&total, seconds);
    report.timeline = per_second
        .iter()
        .enumerate()
        .map(|(second, h)| Second {
            second: second as u64,
            requests: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
        })
        .collect();
    let mut statuses: Vec<(String, u64)> = statuses.into_iter().collect();
    statuses.sort();
    report.outcomes = statuses;
    Ok(())
}

/// A reservation as the server reports it after the run.
struct ServerReservation {
    status: String,
    lines: Vec<LineAnswer>,
}

fn get_reservations(
    target: &str,
    timeout: Duration,
    ids: Vec<String>,
) -> anyhow::Result<Vec<(String, Option<ServerReservation>)>> {
    let chunk = ids.len().div_ceil(VERIFY_CONNECTIONS).max(1);
    let threads: Vec<_> = ids
        .chunks(chunk)
        .map(|slice| {
            let slice = slice.to_vec();
            let target = target.to_string();
            std::thread::spawn(
                move || -> anyhow::Result<Vec<(String, Option<ServerReservation>)>> {
                    let mut connection = Connection::new(&target, timeout);
                    let mut found = Vec::with_capacity(slice.len());
                    for id in slice {
                        let (status, body) = retry(|| {
                            connection.call("GET", &format!("/v1/reservations/{id}"), b"")
                        })?;
                        let reservation = match status {
                            200 => {
                                let answer: ReservationAnswer = serde_json::from_slice(&body)
                                    .with_context(|| format!("reservation {id}"))?;
                                Some(ServerReservation {
                                    status: answer.status,
                                    lines: answer.lines,
                                })
                            }
                            404 => None,
                            other => bail!("GET reservation {id}: {other}"),
                        };
                        found.push((id, reservation));
                    }
                    Ok(found)
                },
            )
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        all.extend(
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("verifier panicked"))??,
        );
    }
    Ok(all)
}

/// Retries a call a few times across connection errors and 503s.
fn retry(
    mut call: impl FnMut() -> anyhow::Result<(u16, Vec<u8>)>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut last = None;
    for _ in 0..50 {
        match call() {
            Ok((503, body)) => last = Some(Ok((503, body))),
            Ok(answer) => return Ok(answer),
            Err(error) => last = Some(Err(error)),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    last.unwrap_or_else(|| bail!("no answer"))
}

fn verify(shared: &Shared, outcomes: &[WorkerOutcome]) -> anyhow::Result<Vec<Check>> {
    let scenario = &shared.scenario;
    let seed = &scenario.seed;
    let target = &shared.options.target;
    let timeout = shared.options.timeout;
    let mut connection = Connection::new(target, timeout);
    wait_ready(&mut connection, Duration::from_secs(60))?;
    let mut checks = Vec::new();
    // With TTLs, let every hold made run out first: then the server must show them
    // all expired (or released), and nothing expires while it is being read.
    let ttl_max = scenario
        .mix
        .iter()
        .filter_map(|op| match op {
            Op::Reserve { ttl_seconds, .. } => *ttl_seconds,
            _ => None,
        })
        .max();
    if let Some(ttl) = ttl_max {
        std::thread::sleep(Duration::from_secs(ttl) + Duration::from_millis(1500));
    }

    // Unanswered event batches: post them again (idempotent by event id).
    let mut received: HashMap<(u64, usize), u64> = HashMap::new();
    for outcome in outcomes {
        for (key, units) in &outcome.received {
            *received.entry(*key).or_default() += units;
        }
    }
    let mut reposted = 0;
    for body in outcomes.iter().flat_map(|o| o.uncertain_events.iter()) {
        let (status, answer) = retry(|| connection.call("POST", "/v1/events", body))?;
        if status != 200 {
            bail!("re-posting an event batch: {status}");
        }
        let sent: serde_json::Value = serde_json::from_slice(body)?;
        let answer: serde_json::Value = serde_json::from_slice(&answer)?;
        let results = answer["results"].as_array().cloned().unwrap_or_default();
        for (event, result) in sent["events"].as_array().into_iter().flatten().zip(results) {
            if result["status"] == "rejected" {
                continue;
            }
            let sku = event["sku"].as_str().unwrap_or_default();
            let location = event["location"].as_str().unwrap_or_default();
            let n = sku
                .rsplit('-')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .context("event sku")?;
            let l = seed
                .locations
                .iter()
                .position(|x| x == location)
                .context("event location")?;
            *received.entry((n, l)).or_default() += event["qty"].as_u64().unwrap_or(0);
        }
        reposted += 1;
    }

    // Every acknowledged reservation is there, with the state the runner left it in.
    let acked: Vec<&Known> = outcomes.iter().flat_map(|o| o.acked.iter()).collect();
    let released: HashMap<&str, bool> = acked.iter().map(|k| (k.id.as_str(), k.released)).collect();
    let mut ids: Vec<String> = acked.iter().map(|k| k.id.clone()).collect();
    let uncertain: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.uncertain.iter().cloned())
        .collect();
    ids.extend(uncertain.iter().cloned());
    let found = get_reservations(target, timeout, ids)?;
    let mut missing = Vec::new();
    let mut wrong_state = Vec::new();
    let mut expected_reserved: HashMap<(String, String), u64> = HashMap::new();
    let mut uncertain_created = 0;
    for (id, reservation) in &found {
        let acknowledged = released.get(id.as_str());
        match (reservation, acknowledged) {
            (None, Some(_)) => missing.push(id.clone()),
            (None, None) => {}
            (Some(r), acknowledged) => {
                if acknowledged.is_none() {
                    uncertain_created += 1;
                }
                if acknowledged == Some(&true) && r.status != "released" {
                    wrong_state.push(format!(
                        "{id}: released by the runner, {} on the server",
                        r.status
                    ));
                }
                if r.status == "held" {
                    for line in &r.lines {
                        *expected_reserved
                            .entry((line.sku.clone(), line.location.clone()))
                            .or_default() += line.qty - line.backordered.min(line.qty);
                    }
                }
            }
        }
    }
    let overflow = outcomes.iter().any(|o| o.overflow);
    checks.push(Check::new(
        "every acknowledged reservation is present",
        missing.is_empty() && !overflow,
        format!(
            "{} acknowledged, {} missing{}{}; {} unanswered requests, {} of them created",
            acked.len(),
            missing.len(),
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (first: {})", missing[0])
            },
            if overflow {
                format!("; more than {ACKED_MAX} acknowledged, the rest not checked")
            } else {
                String::new()
            },
            uncertain.len(),
            uncertain_created
        ),
    ));
    let all_ttl = scenario.mix.iter().all(|op| match op {
        Op::Reserve { ttl_seconds, .. } => ttl_seconds.is_some(),
        _ => true,
    });
    if let (Some(ttl), true) = (ttl_max, all_ttl) {
        let still_held = found
            .iter()
            .filter(|(_, r)| r.as_ref().is_some_and(|r| r.status == "held"))
            .count();
        checks.push(Check::new(
            "every hold expired within its TTL plus 1.5 s",
            still_held == 0,
            format!("{still_held} still held {ttl} s + 1.5 s after the last was made"),
        ));
    }
    checks.push(Check::new(
        "released reservations are released",
        wrong_state.is_empty(),
        match wrong_state.first() {
            None => "ok".to_string(),
            Some(first) => format!("{} wrong, first: {first}", wrong_state.len()),
        },
    ));

    // Positions: never oversold, reserved = what held reservations hold, on hand = seed + receipts.
    let mut oversold = Vec::new();
    let mut reserved_mismatch = Vec::new();
    let mut on_hand_mismatch = Vec::new();
    let mut available: HashMap<(String, String), i64> = HashMap::new();
    for n in 0..seed.skus {
        let sku = shared.sku(n);
        let (status, body) =
            retry(|| connection.call("GET", &format!("/v1/availability/{sku}"), b""))?;
        if status != 200 {
            bail!("GET availability {sku}: {status}");
        }
        let answer: serde_json::Value = serde_json::from_slice(&body)?;
        for position in answer["locations"].as_array().into_iter().flatten() {
            let location = position["location"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let Some(l) = seed.locations.iter().position(|x| *x == location) else {
                continue;
            };
            let key = (sku.clone(), location.clone());
            let value = position["available"].as_i64().unwrap_or(0);
            available.insert(key.clone(), value);
            if value < 0 {
                oversold.push(format!("{sku}@{location}: available {value}"));
            }
            let reserved = position["reserved"].as_u64().unwrap_or(0);
            let expected = expected_reserved.get(&key).copied().unwrap_or(0);
            if reserved != expected {
                reserved_mismatch.push(format!(
                    "{sku}@{location}: reserved {reserved}, held reservations {expected}"
                ));
            }
            let on_hand = position["on_hand"].as_u64().unwrap_or(0);
            let expected_on_hand = seed.stock + received.get(&(n, l)).copied().unwrap_or(0);
            if on_hand != expected_on_hand {
                on_hand_mismatch.push(format!(
                    "{sku}@{location}: on hand {on_hand}, expected {expected_on_hand}"
                ));
            }
        }
    }
    let first = |list: &[String]| list.first().cloned().unwrap_or_else(|| "ok".to_string());
    checks.push(Check::new(
        "no position oversold",
        oversold.is_empty(),
        format!("{} oversold; {}", oversold.len(), first(&oversold)),
    ));
    checks.push(Check::new(
        "reserved on the server equals what held reservations hold",
        reserved_mismatch.is_empty(),
        format!(
            "{} positions differ; {}",
            reserved_mismatch.len(),
            first(&reserved_mismatch)
        ),
    ));
    checks.push(Check::new(
        "on hand equals the seed plus acknowledged receipts",
        on_hand_mismatch.is_empty(),
        format!(
            "{} positions differ ({reposted} unanswered event batches re-posted); {}",
            on_hand_mismatch.len(),
            first(&on_hand_mismatch)
        ),
    ));
    if scenario.stock_only_goes_out() {
        // A shortage is only right if what was left could not fill the line.
        let mut unsold = Vec::new();
        for (sku, location, requested) in outcomes.iter().flat_map(|o| o.shortages.iter()) {
            let left = available
                .get(&(sku.clone(), location.clone()))
                .copied()
                .unwrap_or(0);
            if left >= *requested as i64 {
                unsold.push(format!(
                    "{sku}@{location}: refused {requested}, {left} left unsold"
                ));
            }
        }
        checks.push(Check::new(
            "no sale refused while the stock was there",
            unsold.is_empty(),
            format!(
                "{} refusals with stock left; {}",
                unsold.len(),
                first(&unsold)
            ),
        ));
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picker_follows_the_weights() {
        let mix = vec![
            Op::Healthz { weight: 3 },
            Op::Availability { weight: 0 },
            Op::Release { weight: 1 },
        ];
        assert_eq!(picker(&mix), vec![(3, 0), (4, 2)]);
    }
}
