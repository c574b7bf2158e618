//! `loadtest SCENARIO.toml --target http://127.0.0.1:8080 [--json F] [--html F]`:
//! runs a scenario against a running stockwire, prints throughput, latency
//! percentiles, outcomes and the correctness verdict; exits 1 when it fails.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use loadtest::scenario::Mode;
use loadtest::{http, run, RunOptions, Scenario};

#[derive(Parser)]
#[command(about = "Drive a running stockwire with a scenario and judge the result")]
struct Cli {
    /// Scenario file (TOML), e.g. loadtest/scenarios/flash-sale.toml.
    scenario: PathBuf,
    /// The server: http://HOST:PORT or HOST:PORT.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Override the scenario's rate (open loop) ...
    #[arg(long)]
    rate: Option<u64>,
    /// ... its connections / workers ...
    #[arg(long)]
    concurrency: Option<u64>,
    /// ... its measured duration ...
    #[arg(long)]
    duration: Option<f64>,
    /// ... its warm-up.
    #[arg(long)]
    warmup: Option<f64>,
    /// Run closed loop (as fast as `concurrency` workers go) whatever the scenario says.
    #[arg(long)]
    closed: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long)]
    html: Option<PathBuf>,
    /// Prefix of every id this run creates (default: a fresh one per run).
    #[arg(long)]
    prefix: Option<String>,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// No progress line.
    #[arg(long)]
    quiet: bool,
    /// API key (an admin key), sent as `Authorization: Bearer`. Not needed when
    /// the server has no `[[keys]]`.
    #[arg(long, env = "LOADTEST_TOKEN")]
    token: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut scenario = Scenario::load(&cli.scenario)?;
    if let Some(rate) = cli.rate {
        scenario.load.mode = Mode::Open;
        scenario.load.rate = Some(rate);
    }
    if cli.closed {
        scenario.load.mode = Mode::Closed;
        scenario.load.rate = None;
    }
    if let Some(concurrency) = cli.concurrency {
        scenario.load.concurrency = concurrency;
    }
    if let Some(duration) = cli.duration {
        scenario.load.duration_seconds = duration;
    }
    if let Some(warmup) = cli.warmup {
        scenario.load.warmup_seconds = warmup;
    }
    let prefix = cli
        .prefix
        .unwrap_or_else(|| format!("lt{:08x}", rand::random::<u32>()));
    let options = RunOptions {
        target: http::authority(&cli.target)?,
        prefix,
        progress: !cli.quiet,
        timeout: Duration::from_millis(cli.timeout_ms),
        token: cli.token,
    };
    let report = run(&scenario, options)?;
    print!("{}", report.text());
    if let Some(path) = &cli.json {
        std::fs::write(path, report.json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &cli.html {
        std::fs::write(path, report.html())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if !report.passed {
        std::process::exit(1);
    }
    Ok(())
}
