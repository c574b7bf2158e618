//! A small open-loop HTTP load driver for stockwire reservations.
//!
//! Seeds `--skus` SKUs with `--stock` units at one location, then sends
//! single-line reservations at a fixed `--rate` over `--connections`
//! keep-alive connections for `--seconds`. Latency is measured from each
//! request's *scheduled* send time, so a stalled server shows up as latency
//! instead of a lower send rate (no coordinated omission). Afterwards it
//! checks correctness: the units reserved on the server equal the 201s seen,
//! and no position is oversold.
//!
//! `cargo run --release -p loadtest -- --target 127.0.0.1:8080 --rate 10000 --seconds 20`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

struct Options {
    target: String,
    rate: u64,
    seconds: u64,
    connections: u64,
    skus: u64,
    stock: u64,
    location: String,
    channel: String,
    prefix: String,
}

fn parse() -> anyhow::Result<Options> {
    let mut options = Options {
        target: "127.0.0.1:8080".into(),
        rate: 10_000,
        seconds: 20,
        connections: 32,
        skus: 1000,
        stock: 1_000_000,
        location: "wh-east".into(),
        channel: "web".into(),
        prefix: format!("lt{}", std::process::id()),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).cloned().context("missing value")?;
        match args[i].as_str() {
            "--target" => options.target = value,
            "--rate" => options.rate = value.parse()?,
            "--seconds" => options.seconds = value.parse()?,
            "--connections" => options.connections = value.parse()?,
            "--skus" => options.skus = value.parse()?,
            "--stock" => options.stock = value.parse()?,
            "--location" => options.location = value,
            "--channel" => options.channel = value,
            "--prefix" => options.prefix = value,
            other => bail!("unknown option {other}"),
        }
        i += 2;
    }
    if options.rate == 0 || options.connections == 0 || options.skus == 0 {
        bail!("rate, connections and skus must be positive");
    }
    Ok(options)
}

/// One keep-alive HTTP/1.1 connection.
struct Connection {
    reader: BufReader<TcpStream>,
    host: String,
}

impl Connection {
    fn open(target: &str) -> anyhow::Result<Connection> {
        let stream = TcpStream::connect(target)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Connection {
            reader: BufReader::new(stream),
            host: target.to_string(),
        })
    }

    fn request(&mut self, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .context("status line")?
            .parse()?;
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// A worker's latency histogram, status counts and requests measured.
type WorkerResult = (Histogram<u64>, Vec<(u16, u64)>, u64);

fn sku(options: &Options, n: u64) -> String {
    format!("{}-{n}", options.prefix)
}

fn seed(options: &Options) -> anyhow::Result<()> {
    let mut connection = Connection::open(&options.target)?;
    let all: Vec<u64> = (0..options.skus).collect();
    for chunk in all.chunks(1000) {
        let events: Vec<serde_json::Value> = chunk
            .iter()
            .map(|n| {
                serde_json::json!({"event_id": format!("seed-{}", sku(options, *n)), "type": "receipt",
                    "source": "loadtest", "sku": sku(options, *n), "location": options.location, "qty": options.stock})
            })
            .collect();
        let body = serde_json::json!({ "events": events }).to_string();
        let (status, answer) = connection.request("POST", "/v1/events", &body)?;
        if status != 200 {
            bail!("seeding failed: {status} {answer}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let options = Arc::new(parse()?);
    seed(&options)?;
    let per_connection_interval =
        Duration::from_secs_f64(options.connections as f64 / options.rate as f64);
    let warmup = Duration::from_secs(2);
    let created = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now() + Duration::from_millis(100);
    let mut workers = Vec::new();
    for worker in 0..options.connections {
        let options = options.clone();
        let created = created.clone();
        let stop = stop.clone();
        workers.push(std::thread::spawn(
            move || -> anyhow::Result<WorkerResult> {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
                let mut statuses: Vec<(u16, u64)> = Vec::new();
                let mut connection = Connection::open(&options.target)?;
                let offset =
                    per_connection_interval.mul_f64(worker as f64 / options.connections as f64);
                let end = started + warmup + Duration::from_secs(options.seconds);
                let mut sent = 0u64;
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let scheduled = started + offset + per_connection_interval.mul_f64(k as f64);
                    if scheduled >= end {
                        break;
                    }
                    let now = Instant::now();
                    if scheduled > now {
                        std::thread::sleep(scheduled - now);
                    }
                    let n = worker + k * options.connections;
                    k += 1;
                    let body = format!(
                        r#"{{"channel":"{}","lines":[{{"sku":"{}","location":"{}","qty":1}}]}}"#,
                        options.channel,
                        sku(&options, n % options.skus),
                        options.location
                    );
                    let (status, _) = connection.request("POST", "/v1/reservations", &body)?;
                    let latency_us = scheduled.elapsed().as_micros() as u64;
                    if status == 201 {
                        created.fetch_add(1, Ordering::Relaxed);
                    }
                    if scheduled >= started + warmup {
                        histogram.record(latency_us.max(1))?;
                        sent += 1;
                        match statuses.iter_mut().find(|(s, _)| *s == status) {
                            Some((_, count)) => *count += 1,
                            None => statuses.push((status, 1)),
                        }
                    }
                }
                Ok((histogram, statuses, sent))
            },
        ));
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut statuses: Vec<(u16, u64)> = Vec::new();
    let mut sent = 0;
    for worker in workers {
        let (h, s, n) = worker
            .join()
            .map_err(|_| anyhow::anyhow!("worker panicked"))??;
        histogram.add(h)?;
        sent += n;
        for (status, count) in s {
            match statuses.iter_mut().find(|(x, _)| *x == status) {
                Some((_, total)) => *total += count,
                None => statuses.push((status, count)),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let q = |p: f64| histogram.value_at_quantile(p) as f64 / 1000.0;
    println!(
        "target {}/s over {} connections for {} s (after {} s warm-up): {} requests, {:.0}/s",
        options.rate,
        options.connections,
        options.seconds,
        warmup.as_secs(),
        sent,
        sent as f64 / options.seconds as f64
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        histogram.max() as f64 / 1000.0
    );
    println!("statuses: {statuses:?}");
    // Correctness: units reserved on the server equal the 201s seen.
    let mut connection = Connection::open(&options.target)?;
    let mut reserved = 0u64;
    let mut oversold = 0u64;
    for n in 0..options.skus {
        let (status, body) =
            connection.request("GET", &format!("/v1/availability/{}", sku(&options, n)), "")?;
        if status != 200 {
            bail!("availability of {}: {status}", sku(&options, n));
        }
        let value: serde_json::Value = serde_json::from_str(&body)?;
        reserved += value["total"]["reserved"].as_u64().unwrap_or(0);
        if value["total"]["available"].as_i64().unwrap_or(0) < 0 {
            oversold += 1;
        }
    }
    let acknowledged = created.load(Ordering::Relaxed);
    let verdict = reserved == acknowledged && oversold == 0;
    println!(
        "verdict: {} (reserved on server {reserved}, acknowledged 201s {acknowledged}, oversold positions {oversold})",
        if verdict { "PASS" } else { "FAIL" }
    );
    if !verdict {
        std::process::exit(1);
    }
    Ok(())
}
