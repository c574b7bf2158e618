//! The load-test runner (`loadtest/`) against a real stockwire: a short scenario
//! passes its verdict, a server seeded behind the runner's back fails it, and a
//! restart under load (kill -9, twice) loses nothing acknowledged.

use std::time::Duration;

use loadtest::scenario::Scenario;
use loadtest::{run, RunOptions};

use crate::harness::{repo, Server, BASE_CONFIG};

fn scenario(name: &str) -> Scenario {
    let path = repo("loadtest/scenarios").join(format!("{name}.toml"));
    Scenario::load(&path).expect("scenario")
}

/// Names of the verdict's failed checks.
fn failed_checks(report: &loadtest::Report) -> Vec<&str> {
    report
        .verdict
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name.as_str())
        .collect()
}

fn options(server_port: u16, prefix: &str) -> RunOptions {
    RunOptions {
        target: format!("127.0.0.1:{server_port}"),
        prefix: prefix.to_string(),
        progress: false,
        timeout: Duration::from_secs(10),
        token: None,
    }
}

#[test]
fn the_ci_scenario_drives_every_request_kind_and_passes_its_verdict() {
    let server = Server::start_with_base(BASE_CONFIG, "");
    let report = run(&scenario("ci-smoke"), options(server.port, "smoke")).expect("run");
    let text = report.text();
    assert!(report.passed, "{text}");
    assert!(report.requests > 100, "{text}");
    for op in [
        "reserve",
        "release",
        "availability",
        "query",
        "events",
        "healthz",
    ] {
        assert!(
            report.ops.iter().any(|o| o.op == op),
            "{op} missing: {text}"
        );
    }
    assert!(report.count("reserve 201") > 0, "{text}");
    assert!(report.count("release 200") > 0, "{text}");
    assert!(report.count("events 200") > 0, "{text}");
    assert!(report.latency.p50_us > 0 && report.latency.p99_us >= report.latency.p50_us);
    assert!(report.verdict.len() >= 5, "{text}");
    // The reports: JSON that parses back, HTML with both charts.
    let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
    assert_eq!(json["scenario"], "ci-smoke");
    assert_eq!(json["passed"], true);
    let html = report.html();
    assert!(html.contains("Latency over time") && html.contains("Latency distribution"));
    assert_eq!(html.matches("<svg").count(), 2);
}

/// The flash-sale scenario, two seconds of it, with `stock` units, at `rate`/s.
fn short_flash(stock: u64, rate: u64, concurrency: u64) -> Scenario {
    let mut flash = scenario("flash-sale");
    flash.seed.stock = stock;
    flash.load.rate = Some(rate);
    flash.load.concurrency = concurrency;
    flash.load.warmup_seconds = 0.0;
    flash.load.duration_seconds = 2.0;
    flash
}

#[test]
fn a_flash_sale_sells_exactly_the_stock() {
    let server = Server::start_with_base(BASE_CONFIG, "");
    let flash = short_flash(300, 400, 8);
    let report = run(&flash, options(server.port, "flash")).expect("run");
    let text = report.text();
    assert!(report.passed, "{text}");
    assert_eq!(report.count("reserve 201"), 300, "{text}");
    assert!(
        report.count("reserve 409 insufficient_available") > 0,
        "{text}"
    );
    assert!(report
        .verdict
        .iter()
        .any(|c| c.name.contains("refused while the stock")));
}

#[test]
fn the_verdict_fails_when_the_server_holds_what_the_runner_did_not_do() {
    let server = Server::start_with_base(BASE_CONFIG, "");
    // Stock the runner does not know about, on one of the SKUs it will seed.
    server.receive("mismatch-0", "wh-east", 7);
    let report = run(&scenario("ci-smoke"), options(server.port, "mismatch")).expect("run");
    let text = report.text();
    assert!(!report.passed, "{text}");
    let failed = failed_checks(&report);
    assert_eq!(
        failed,
        ["on hand equals the seed plus acknowledged receipts"],
        "{text}"
    );
}

#[test]
fn a_restart_under_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = crate::harness::free_port();
    let config = crate::harness::config_file(dir.path(), port, "", "");
    let pid_file = dir.path().join("pid");
    let serve = format!(
        "{} serve --config {}",
        env!("CARGO_BIN_EXE_stockwire"),
        config.display()
    );
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("STOCKWIRE_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start stockwire");
    std::fs::write(&pid_file, child.id().to_string()).expect("pid file");
    // The scenario's own restart script (tests run from the repository root), told
    // where the pid is and how to serve; not through this process's environment,
    // which every test's servers inherit.
    let mut restart = scenario("restart-under-load");
    restart.seed.skus = 50;
    restart.load.rate = Some(300);
    restart.load.concurrency = 8;
    restart.load.duration_seconds = 4.0;
    if let Some(r) = restart.restart.as_mut() {
        r.command = format!(
            "LOADTEST_PID_FILE='{}' LOADTEST_SERVE='{serve}' STOCKWIRE_LOG=warn {}",
            pid_file.display(),
            r.command
        );
        r.count = 2;
        r.every_seconds = 1.2;
    }
    let result = run(&restart, options(port, "restart"));
    // Whatever happened, stop the last server.
    let last_pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    drop(child);
    if let Ok(pid) = last_pid.trim().parse::<i32>() {
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    }
    let report = result.expect("run");
    let text = report.text();
    assert_eq!(report.restarts, 2, "{text}");
    assert!(report.passed, "{text}");
    assert!(report.count("reserve 201") > 100, "{text}");
    assert!(
        report.count("reserve connection_error") > 0,
        "no request saw a restart: {text}"
    );
}

/// The verdict holds the server to what it acknowledged, not to what it says now: a
/// reservation released behind the runner's back is caught (status and `reserved`).
#[test]
fn the_verdict_catches_a_hold_that_vanished_behind_the_runners_back() {
    let server = Server::start_with_base(BASE_CONFIG, "");
    let flash = short_flash(1000, 200, 2);
    let port = server.port;
    let meddler = std::thread::spawn(move || {
        // Worker 0's first reservation exists well before the run ends.
        std::thread::sleep(Duration::from_millis(1000));
        let url = format!("http://127.0.0.1:{port}/v1/reservations/vanish-r0-1/release");
        ureq::post(&url).send_string("").ok().map(|r| r.status())
    });
    let report = run(&flash, options(server.port, "vanish")).expect("run");
    assert_eq!(meddler.join().expect("meddler"), Some(200));
    let text = report.text();
    assert!(!report.passed, "{text}");
    let failed = failed_checks(&report);
    assert!(
        failed.contains(
            &"acknowledged reservations have their lines and the status the runner expects"
        ) && failed.contains(
            &"reserved on the server equals what the runner's acknowledged holds add up to"
        ),
        "{text}"
    );
}
