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
    /// API key sent as `Authorization: Bearer` (an admin key: the verdict reads
    /// reservations and full positions).
    pub token: Option<String>,
}

impl RunOptions {
    fn connection(&self) -> Connection {
        Connection::new(&self.target, self.timeout).with_token(self.token.as_deref())
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

fn coarse_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 2).expect("valid histogram bounds")
}

/// What became of the runner's release of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Not released by the runner.
    No,
    /// Answered 200 with this status (`released`, or `expired` if it ran out first).
    Answered(&'static str),
    /// Sent, answer lost (error or 5xx): either outcome is right.
    Unknown,
}

/// A reservation the server acknowledged (201/200), as the runner saw it.
#[derive(Debug, Clone)]
struct Known {
    id: String,
    /// `(sku, location, qty, backordered)` as acknowledged.
    lines: Vec<(String, String, u64, u64)>,
    /// When the hold runs out (runner's clock; every reservation carries a TTL).
    deadline: Instant,
    release: Release,
}

/// What one worker saw.
struct WorkerOutcome {
    total: Histogram<u64>,
    per_op: Vec<Histogram<u64>>,
    /// The second being recorded; earlier ones are merged into `Shared::timeline`.
    this_second: Option<(usize, Histogram<u64>)>,
    /// (op, status, code) -> count; status 0 is a connection error.
    outcomes: HashMap<(&'static str, u16, String), u64>,
    acked: Vec<Known>,
    /// Reservation ids whose request got no answer (may or may not exist).
    uncertain: Vec<String>,
    /// Reservation ids refused for shortage (at most REFUSED_MAX in all): nothing of
    /// them may stay held, a GET must be 404 (SPEC §1).
    refused: Vec<String>,
    /// Event batches that got no answer: re-posted after the run (idempotent).
    uncertain_events: Vec<Vec<u8>>,
    /// (sku index, location index) -> units received by acknowledged events.
    received: HashMap<(u64, usize), u64>,
    /// (sku, location) -> the smallest quantity refused there for shortage.
    shortages: HashMap<(String, String), u64>,
    overflow: bool,
}

struct Shared {
    scenario: Scenario,
    options: RunOptions,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// Acknowledged reservations remembered, all workers (bounded by ACKED_MAX).
    acked: AtomicU64,
    /// Unanswered event batches kept for re-posting, all workers.
    uncertain_events: AtomicU64,
    /// Refused reservation ids remembered, all workers.
    refused: AtomicU64,
    stop: AtomicBool,
    /// Latency per second of the measured window, all workers merged (one
    /// histogram a second, however many workers).
    timeline: std::sync::Mutex<Vec<Histogram<u64>>>,
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

/// Unanswered event batches kept at most (each is re-posted after the run).
const UNCERTAIN_EVENTS_MAX: u64 = 100_000;

/// Refused reservation ids looked up after the run, at most.
const REFUSED_MAX: u64 = 20_000;

/// The TTL the runner gives reservations whose op names none: longer than the run
/// and its verification, so nothing expires that the runner does not expect to.
fn default_ttl_seconds(scenario: &Scenario) -> u64 {
    let run = scenario.load.warmup_seconds + scenario.load.duration_seconds;
    ((run as u64) + 3600).min(2_592_000)
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
    let mut connection = shared.options.connection();
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
            if result["status"] != "applied" {
                // A duplicate means this prefix was used before: the run's arithmetic
                // would start from someone else's stock.
                bail!("seeding: an event was not applied (prefix used before?): {result}");
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

fn flush_second(shared: &Shared, outcome: &mut WorkerOutcome) {
    let Some((second, histogram)) = outcome.this_second.take() else {
        return;
    };
    if let Ok(mut timeline) = shared.timeline.lock() {
        while timeline.len() <= second {
            timeline.push(coarse_histogram());
        }
        let _ = timeline[second].add(&histogram);
    }
}

fn worker(shared: Arc<Shared>, index: u64, start: Instant) -> WorkerOutcome {
    let scenario = &shared.scenario;
    let load = &scenario.load;
    let seed = &scenario.seed;
    let mut rng = StdRng::seed_from_u64(0x5eed_0000 + index);
    let mut connection = shared.options.connection();
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
        this_second: None,
        outcomes: HashMap::new(),
        acked: Vec::new(),
        uncertain: Vec::new(),
        refused: Vec::new(),
        uncertain_events: Vec::new(),
        received: HashMap::new(),
        shortages: HashMap::new(),
        overflow: false,
    };
    let mut held: Vec<usize> = Vec::new();
    let mut k: u64 = 0;
    let default_ttl = default_ttl_seconds(scenario);
    let ttl_of = |op: &Op| match op {
        Op::Reserve { ttl_seconds, .. } => ttl_seconds.unwrap_or(default_ttl),
        _ => default_ttl,
    };
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
                let ttl = ttl_seconds.unwrap_or(default_ttl);
                text.push_str(&format!(r#","ttl_seconds":{ttl}}}"#));
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
        let sent_at = Instant::now();
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
                if shared.acked.fetch_add(1, Ordering::Relaxed) >= ACKED_MAX as u64 {
                    outcome.overflow = true;
                } else if let Ok(answer) = serde_json::from_slice::<ReservationAnswer>(answer) {
                    outcome.acked.push(Known {
                        id: answer.reservation_id,
                        lines: answer
                            .lines
                            .into_iter()
                            .map(|l| (l.sku, l.location, l.qty, l.backordered))
                            .collect(),
                        // Counted from the send: the server's deadline is no earlier.
                        deadline: scheduled.max(sent_at) + Duration::from_secs(ttl_of(op)),
                        release: Release::No,
                    });
                    if answer.status == "held" {
                        held.push(outcome.acked.len() - 1);
                    }
                }
            }
            (Op::Reserve { .. }, Ok((409, answer))) => {
                if shared.refused.fetch_add(1, Ordering::Relaxed) < REFUSED_MAX {
                    outcome
                        .refused
                        .push(format!("{}-r{index}-{k}", shared.options.prefix));
                }
                if let Ok(problem) = serde_json::from_slice::<Problem>(answer) {
                    for s in problem.shortages {
                        if let Some(location) = s.location {
                            let least = outcome
                                .shortages
                                .entry((s.sku, location))
                                .or_insert(s.requested);
                            *least = (*least).min(s.requested);
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
            (Op::Release { .. }, Ok((200, answer))) => {
                if let Some(known) = releasing {
                    let status = serde_json::from_slice::<ReservationAnswer>(answer)
                        .map(|a| a.status)
                        .unwrap_or_default();
                    outcome.acked[known].release = match status.as_str() {
                        "released" => Release::Answered("released"),
                        "expired" => Release::Answered("expired"),
                        _ => Release::Unknown,
                    };
                }
            }
            (Op::Release { .. }, _) => {
                if let Some(known) = releasing {
                    outcome.acked[known].release = Release::Unknown;
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
            (Op::Events { .. }, _) => {
                if shared.uncertain_events.fetch_add(1, Ordering::Relaxed) < UNCERTAIN_EVENTS_MAX {
                    outcome.uncertain_events.push(body.clone());
                } else {
                    outcome.overflow = true;
                }
            }
            _ => {}
        }
        // A release with nothing of ours to release was an availability read.
        let name = if op.name() == "release" && releasing.is_none() {
            "availability"
        } else {
            name
        };
        // Latency of answers only: a connection error has none (it is counted).
        if measured && status != 0 {
            outcome.total.saturating_record(latency_us);
            outcome.per_op[op_index].saturating_record(latency_us);
            let second = (scheduled - measure_from).as_secs() as usize;
            if outcome
                .this_second
                .as_ref()
                .is_some_and(|(s, _)| *s != second)
            {
                flush_second(&shared, &mut outcome);
            }
            outcome
                .this_second
                .get_or_insert_with(|| (second, coarse_histogram()))
                .1
                .saturating_record(latency_us);
        }
        if measured {
            let answer: &[u8] = result.as_ref().map(|(_, b)| b.as_slice()).unwrap_or(b"");
            record_outcome(&mut outcome, name, status, answer);
        }
        if status == 0 || status == 503 {
            // The server is gone (a restart): do not spin.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    flush_second(&shared, &mut outcome);
    outcome
}

fn restarter(shared: Arc<Shared>, done: Arc<AtomicU64>) -> anyhow::Result<()> {
    let Some(restart) = shared.scenario.restart.clone() else {
        return Ok(());
    };
    let mut connection = shared.options.connection();
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
        acked: AtomicU64::new(0),
        uncertain_events: AtomicU64::new(0),
        refused: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        timeline: std::sync::Mutex::new(Vec::new()),
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
    let measured_seconds = measure_from
        .elapsed()
        .as_secs_f64()
        .max(scenario.load.duration_seconds);
    shared.stop.store(true, Ordering::Relaxed);
    let restart_result = restart_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the restart thread panicked"))?;
    if let Some(thread) = progress_thread {
        let _ = thread.join();
    }
    restart_result?;
    // The measured window (taken when the workers stopped): as long as the scenario
    // says, or longer if restarts took it.
    let mut report = Report::new(scenario, &shared.options.target, seed_seconds);
    report.duration_seconds = measured_seconds;
    report.restarts = restarts.load(Ordering::Relaxed);
    merge(&mut report, &shared, &outcomes, measured_seconds)?;
    report.verdict = verify(&shared, &outcomes)?;
    report.passed = report.verdict.iter().all(|c| c.passed);
    Ok(report)
}

fn merge(
    report: &mut Report,
    shared: &Shared,
    outcomes: &[WorkerOutcome],
    seconds: f64,
) -> anyhow::Result<()> {
    let scenario = &shared.scenario;
    let per_second = shared
        .timeline
        .lock()
        .map_err(|_| anyhow::anyhow!("timeline lock poisoned"))?;
    let mut total = histogram();
    let mut statuses: HashMap<String, u64> = HashMap::new();
    for outcome in outcomes {
        total.add(&outcome.total)?;
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
    options: &RunOptions,
    ids: Vec<String>,
) -> anyhow::Result<Vec<(String, Option<ServerReservation>)>> {
    let chunk = ids.len().div_ceil(VERIFY_CONNECTIONS).max(1);
    let threads: Vec<_> = ids
        .chunks(chunk)
        .map(|slice| {
            let slice = slice.to_vec();
            let mut connection = options.connection();
            std::thread::spawn(
                move || -> anyhow::Result<Vec<(String, Option<ServerReservation>)>> {
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
    let mut connection = shared.options.connection();
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

    // Every acknowledged reservation is there, with the lines the runner was given and
    // the status the runner's own record says it must have. `reserved` per position is
    // then what the runner expects, not what the server says its reservations hold.
    let acked: Vec<&Known> = outcomes.iter().flat_map(|o| o.acked.iter()).collect();
    let by_id: HashMap<&str, &Known> = acked.iter().map(|k| (k.id.as_str(), *k)).collect();
    let mut ids: Vec<String> = acked.iter().map(|k| k.id.clone()).collect();
    let uncertain: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.uncertain.iter().cloned())
        .collect();
    ids.extend(uncertain.iter().cloned());
    let verified_at = Instant::now();
    let found = get_reservations(&shared.options, ids)?;
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    let mut expected_reserved: HashMap<(String, String), u64> = HashMap::new();
    let mut uncertain_created = 0;
    // A deadline this close to the reads may have passed on either side.
    let margin = Duration::from_secs(2);
    for (id, reservation) in &found {
        let Some(r) = reservation else {
            if by_id.contains_key(id.as_str()) {
                missing.push(id.clone());
            }
            continue;
        };
        let held_units = |lines: &[LineAnswer]| -> Vec<((String, String), u64)> {
            lines
                .iter()
                .map(|l| {
                    (
                        (l.sku.clone(), l.location.clone()),
                        l.qty - l.backordered.min(l.qty),
                    )
                })
                .collect()
        };
        let Some(known) = by_id.get(id.as_str()) else {
            // Unanswered, but it exists: the server's word is all there is.
            uncertain_created += 1;
            if r.status == "held" {
                for (key, units) in held_units(&r.lines) {
                    *expected_reserved.entry(key).or_default() += units;
                }
            }
            continue;
        };
        let mut server_lines: Vec<(String, String, u64, u64)> = r
            .lines
            .iter()
            .map(|l| (l.sku.clone(), l.location.clone(), l.qty, l.backordered))
            .collect();
        let mut acked_lines = known.lines.clone();
        server_lines.sort();
        acked_lines.sort();
        if server_lines != acked_lines {
            wrong.push(format!(
                "{id}: lines {server_lines:?}, acknowledged {acked_lines:?}"
            ));
        }
        let expired_by_now = verified_at > known.deadline + margin;
        let maybe_expired = verified_at + margin >= known.deadline;
        let allowed: &[&str] = match known.release {
            Release::Answered("expired") => &["expired"],
            Release::Answered(_) => &["released"],
            Release::Unknown if maybe_expired => &["held", "released", "expired"],
            Release::Unknown => &["held", "released"],
            Release::No if expired_by_now => &["expired"],
            Release::No if maybe_expired => &["held", "expired"],
            Release::No => &["held"],
        };
        if !allowed.contains(&r.status.as_str()) {
            wrong.push(format!(
                "{id}: {} on the server, expected one of {allowed:?}",
                r.status
            ));
        }
        // Held by the runner's account; the server's status decides only where the
        // runner cannot know (a lost release answer, a deadline at the edge).
        let held = match allowed {
            ["held"] => true,
            _ => r.status == "held",
        };
        if held {
            for (sku, location, qty, backordered) in &known.lines {
                *expected_reserved
                    .entry((sku.clone(), location.clone()))
                    .or_default() += qty - (*backordered).min(*qty);
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
                format!("; over {ACKED_MAX} acknowledged or {UNCERTAIN_EVENTS_MAX} unanswered event batches: the rest not checked")
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
    let refused: Vec<String> = outcomes
        .iter()
        .flat_map(|o| o.refused.iter().cloned())
        .collect();
    let refused_count = refused.len();
    let left_behind: Vec<String> = get_reservations(&shared.options, refused)?
        .into_iter()
        .filter(|(_, r)| r.is_some())
        .map(|(id, _)| id)
        .collect();
    checks.push(Check::new(
        "a refused reservation leaves nothing behind (GET is 404)",
        left_behind.is_empty(),
        format!(
            "{refused_count} refused looked up, {} exist{}",
            left_behind.len(),
            left_behind
                .first()
                .map(|id| format!(" (first: {id})"))
                .unwrap_or_default()
        ),
    ));
    checks.push(Check::new(
        "acknowledged reservations have their lines and the status the runner expects",
        wrong.is_empty(),
        match wrong.first() {
            None => "ok".to_string(),
            Some(first) => format!("{} wrong, first: {first}", wrong.len()),
        },
    ));

    // Positions: every seeded one is there, never oversold, `reserved` as the runner
    // expects, on hand = seed + receipts.
    let mut absent = Vec::new();
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
        let positions = answer["locations"].as_array().cloned().unwrap_or_default();
        for (l, location) in seed.locations.iter().enumerate() {
            let key = (sku.clone(), location.clone());
            let Some(position) = positions
                .iter()
                .find(|p| p["location"] == location.as_str())
            else {
                absent.push(format!("{sku}@{location}"));
                continue;
            };
            let field = |name: &str| position[name].as_i64();
            let (Some(value), Some(reserved), Some(on_hand)) =
                (field("available"), field("reserved"), field("on_hand"))
            else {
                absent.push(format!("{sku}@{location}: counters missing"));
                continue;
            };
            available.insert(key.clone(), value);
            if value < 0 {
                oversold.push(format!("{sku}@{location}: available {value}"));
            }
            let expected = expected_reserved.remove(&key).unwrap_or(0) as i64;
            if reserved != expected {
                reserved_mismatch.push(format!(
                    "{sku}@{location}: reserved {reserved}, the runner expects {expected}"
                ));
            }
            let expected_on_hand =
                (seed.stock + received.get(&(n, l)).copied().unwrap_or(0)) as i64;
            if on_hand != expected_on_hand {
                on_hand_mismatch.push(format!(
                    "{sku}@{location}: on hand {on_hand}, expected {expected_on_hand}"
                ));
            }
        }
    }
    // Holds the runner expects at positions it did not seed.
    for ((sku, location), units) in expected_reserved {
        reserved_mismatch.push(format!(
            "{sku}@{location}: {units} expected held, not seeded"
        ));
    }
    let first = |list: &[String]| list.first().cloned().unwrap_or_else(|| "ok".to_string());
    checks.push(Check::new(
        "every seeded position is there",
        absent.is_empty(),
        format!("{} absent; {}", absent.len(), first(&absent)),
    ));
    checks.push(Check::new(
        "no position oversold",
        oversold.is_empty(),
        format!("{} oversold; {}", oversold.len(), first(&oversold)),
    ));
    checks.push(Check::new(
        "reserved on the server equals what the runner's acknowledged holds add up to",
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
        let mut shortages: HashMap<(String, String), u64> = HashMap::new();
        for (key, requested) in outcomes.iter().flat_map(|o| o.shortages.iter()) {
            let least = shortages.entry(key.clone()).or_insert(*requested);
            *least = (*least).min(*requested);
        }
        let mut unsold = Vec::new();
        for ((sku, location), requested) in &shortages {
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
