//! The SRE kit checked with Prometheus's own tool (`promtool`, Debian's
//! `prometheus` package, installed by `make test`): a scrape taken after
//! exercising a real server lints clean and carries every SPEC §6 name with
//! its type; the alert rules and the scrape config check, and the alerts'
//! unit tests pass; every metric the dashboard and the alerts query is one
//! the server exposes.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::harness::{repo, Server, BASE_CONFIG};

/// promtool, which `make test` installs; a missing one fails the test (never skipped).
fn promtool() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = Path::new(dir).join("promtool");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "promtool not found on PATH: `make test` installs it (Debian's prometheus package, \
         scripts/install-deps.sh --test)"
    );
}

/// Runs promtool with `args` in `dir`, feeding `stdin`; panics with its output unless it succeeds.
fn run_promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new(promtool())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("promtool output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

pub(crate) fn scrape(server: &Server) -> String {
    ureq::get(&server.url("/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .expect("scrape")
        .into_string()
        .expect("text")
}

/// Metric family names and their `# TYPE`.
pub(crate) fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| {
            let mut parts = rest.split_whitespace();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect()
}

/// Every `stockwire_*` / `process_*` / `up` name a PromQL text mentions, as the
/// family it belongs to (histogram suffixes dropped).
pub(crate) fn names_in(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    while i < bytes.len() {
        let rest = &bytes[i..];
        let starts = [&b"stockwire_"[..], &b"process_"[..]]
            .iter()
            .any(|prefix| rest.starts_with(prefix));
        if starts && (i == 0 || !word(bytes[i - 1])) {
            let len = rest.iter().position(|b| !word(*b)).unwrap_or(rest.len());
            // ASCII only, so these byte offsets are char boundaries.
            let name = &text[i..i + len];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(family.to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// A server with a file-sink channel, a key, an inbox and a source-authority rule,
/// so every labelled family has a series, exercised through reservations and events.
fn exercised_server(feed: &Path) -> Server {
    let extra = format!(
        "[[channels]]\nid = \"feed\"\nlocations = [\"wh-east\"]\ncoalesce_ms = 0\n\
         sink = {{ kind = \"file\", dir = \"{}\", format = \"csv\" }}\n\
         [[keys]]\nname = \"ops-test\"\nkey = \"ops-test-secret\"\nrole = \"admin\"\n\
         [[inbox]]\ndir = \"{}\"\nsource = \"wms\"\n\
         [[source_authority]]\nsource = \"wms\"\n",
        feed.display(),
        feed.join("inbox").display()
    );
    let server = Server::start_with_base(BASE_CONFIG, &extra).with_token("ops-test-secret");
    server.receive("ops-1", "wh-east", 10);
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "ops-1", "location": "wh-east", "qty": 2}]}),
    );
    assert_eq!(status, 201, "{body}");
    let (status, body) = server.post(
        "/v1/reservations",
        json!({"channel": "web", "lines": [{"sku": "ops-1", "location": "wh-east", "qty": 99}]}),
    );
    assert_eq!(status, 409, "{body}");
    let (status, body) = server.post(
        "/v1/events",
        json!({"events": [{"event_id": "ops-bad", "type": "adjustment", "source": "wms",
            "sku": "ops-1", "location": "wh-east", "delta": -1000, "reason": "shrink"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "rejected", "{body}");
    let (status, _) = server.get("/v1/availability/ops-1");
    assert_eq!(status, 200);
    // Publication delivers and the gauges refresh (every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, channel) = server.get("/v1/channels/feed");
        let text = scrape(&server);
        let delivered = text.lines().any(|l| {
            l.starts_with("stockwire_channel_deliveries_total")
                && l.contains("outcome=\"delivered\"")
                && !l.ends_with(" 0")
        });
        if delivered
            && channel["cursor_seq"] != Value::Null
            && text.contains("stockwire_channel_pending{")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery: {channel}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

/// SPEC §6, with the type each must have.
const SPEC_METRICS: &[(&str, &str)] = &[
    ("stockwire_http_requests_total", "counter"),
    ("stockwire_http_request_duration_seconds", "histogram"),
    ("stockwire_reservations_total", "counter"),
    ("stockwire_events_applied_total", "counter"),
    ("stockwire_events_rejected_total", "counter"),
    ("stockwire_journal_head_seq", "gauge"),
    ("stockwire_journal_append_duration_seconds", "histogram"),
    ("stockwire_channel_lag_seconds", "gauge"),
    ("stockwire_channel_pending", "gauge"),
    ("stockwire_channel_deliveries_total", "counter"),
    ("stockwire_channel_dlq_depth", "gauge"),
    ("stockwire_channel_drift", "gauge"),
    ("stockwire_reconciliation_exceptions_total", "counter"),
    ("stockwire_positions", "gauge"),
    ("stockwire_oversold_positions", "gauge"),
    ("stockwire_rate_limited_total", "counter"),
    // Beyond SPEC §6: readiness, build and process.
    ("stockwire_ready", "gauge"),
    ("stockwire_build_info", "gauge"),
    ("stockwire_live_position_actors", "gauge"),
    ("stockwire_inbox_files_total", "counter"),
    ("stockwire_inbox_files_waiting", "gauge"),
    ("process_resident_memory_bytes", "gauge"),
    ("process_open_fds", "gauge"),
    ("process_cpu_seconds_total", "counter"),
];

#[test]
fn a_scrape_after_real_traffic_lints_clean_and_has_every_contract_metric() {
    let feed = tempfile::tempdir().expect("feed dir");
    let server = exercised_server(feed.path());
    let text = scrape(&server);
    let found = families(&text);
    for (name, kind) in SPEC_METRICS {
        let family = found.iter().find(|(n, _)| n == name);
        assert_eq!(
            family.map(|(_, k)| k.as_str()),
            Some(*kind),
            "{name} missing or of the wrong type in:\n{text}"
        );
    }
    assert!(text.contains(&format!(
        "stockwire_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(text.lines().any(|l| l == "stockwire_ready 1"), "{text}");
    // Bounded labels: no SKU or reservation id anywhere in the exposition.
    assert!(
        !text.contains("ops-1"),
        "a SKU leaked into a label:\n{text}"
    );
    assert!(
        !text.contains("res_"),
        "a reservation id leaked into a label"
    );
    run_promtool(&repo("."), &["check", "metrics"], Some(&text));
}

#[test]
fn alert_rules_and_scrape_config_check_and_their_unit_tests_pass() {
    let dir = repo("config/prometheus");
    let rules = run_promtool(&dir, &["check", "rules", "alerts.yml"], None);
    assert!(rules.contains("SUCCESS"), "{rules}");
    run_promtool(&dir, &["check", "config", "prometheus.yml"], None);
    let tests = run_promtool(&dir, &["test", "rules", "alerts_test.yml"], None);
    assert!(tests.contains("SUCCESS"), "{tests}");
}

#[test]
fn the_dashboard_and_the_alerts_query_only_metrics_the_server_exposes() {
    let dashboard_text =
        std::fs::read_to_string(repo("config/grafana/stockwire.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&dashboard_text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "stockwire");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let alerts = std::fs::read_to_string(repo("config/prometheus/alerts.yml")).expect("alerts");

    let feed = tempfile::tempdir().expect("feed dir");
    let server = exercised_server(feed.path());
    let exposed: BTreeSet<String> = families(&scrape(&server))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let queried: BTreeSet<String> = names_in(&dashboard_text)
        .into_iter()
        .chain(names_in(&alerts))
        .collect();
    assert!(queried.contains("stockwire_channel_lag_seconds"));
    // Cluster metrics exist in cluster mode only: `cluster.rs` checks them on a node.
    let unknown: Vec<&String> = queried
        .difference(&exposed)
        .filter(|name| !name.starts_with("stockwire_cluster_"))
        .collect();
    assert!(unknown.is_empty(), "queried but not exposed: {unknown:?}");
}

/// Logs are JSON when asked, at the configured level, and every line about a request
/// carries its correlation id and the name of the key that called, never the secret.
#[test]
fn request_logs_carry_the_correlation_id_and_the_key_name_but_no_secret() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = crate::harness::free_port();
    let config = crate::harness::config_file(
        dir.path(),
        port,
        "log_format = \"json\"\nlog_level = \"debug\"\n",
        "[[keys]]\nname = \"storefront\"\nkey = \"s3cret-token-value\"\nrole = \"admin\"\n",
    );
    // Logs go to standard output.
    let log_path = dir.path().join("stdout.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stockwire"))
        .args(["serve", "--config"])
        .arg(&config)
        .env_remove("STOCKWIRE_LOG")
        .stdout(std::fs::File::create(&log_path).expect("log file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start stockwire");
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while ureq::get(&url("/readyz")).call().is_err() {
        assert!(std::time::Instant::now() < deadline, "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let answer = ureq::post(&url("/v1/events"))
        .set("Authorization", "Bearer s3cret-token-value")
        .set("X-Correlation-Id", "corr-logs-1")
        .send_json(json!({"events": [{"event_id": "log-1", "type": "receipt",
            "source": "wms", "sku": "log-sku", "location": "wh-east", "qty": 3}]}));
    assert!(answer.is_ok(), "{answer:?}");
    let refused = ureq::post(&url("/v1/events"))
        .set("Authorization", "Bearer not-a-configured-key")
        .set("X-Correlation-Id", "corr-logs-3")
        .send_json(json!({"events": []}));
    assert!(
        matches!(refused, Err(ureq::Error::Status(401, _))),
        "{refused:?}"
    );
    let _ = ureq::get(&url("/v1/availability/log-sku"))
        .set("Authorization", "Bearer not-a-configured-key")
        .set("X-Correlation-Id", "corr-logs-2")
        .call();
    // The debug line is written after the answer: give it a moment.
    let mut lines = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        lines = std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        // Its "request done" line, the last written for it (a warning about
        // the key comes first).
        if lines
            .iter()
            .any(|l| l.contains("corr-logs-2") && l.contains("request done"))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = lines.join("\n");
    assert!(
        !text.contains("s3cret-token-value"),
        "a secret was logged:\n{text}"
    );
    let done: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .filter(|v| v["fields"]["message"] == "request done")
        .collect();
    let posted = done
        .iter()
        .find(|v| v["span"]["correlation_id"] == "corr-logs-1")
        .unwrap_or_else(|| panic!("no request line for corr-logs-1:\n{text}"));
    assert_eq!(posted["span"]["key"], "storefront", "{posted}");
    assert_eq!(posted["span"]["method"], "POST", "{posted}");
    assert_eq!(posted["fields"]["route"], "/v1/events", "{posted}");
    let read = done
        .iter()
        .find(|v| v["span"]["correlation_id"] == "corr-logs-2")
        .unwrap_or_else(|| panic!("no request line for corr-logs-2:\n{text}"));
    assert_eq!(read["span"]["key"], "unknown", "{read}");

    // The audit trail: one line per state-changing call, with who, the
    // correlation id and the outcome (reads are not audited).
    let audits: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "audit")
        .collect();
    let audit = |correlation: &str| {
        audits
            .iter()
            .find(|v| v["fields"]["correlation_id"] == correlation)
            .cloned()
            .unwrap_or_else(|| panic!("no audit line for {correlation}:\n{text}"))
    };
    let applied = audit("corr-logs-1");
    assert_eq!(applied["fields"]["key"], "storefront", "{applied}");
    assert_eq!(applied["fields"]["outcome"], "ok", "{applied}");
    assert_eq!(applied["fields"]["status"], 200, "{applied}");
    assert_eq!(applied["fields"]["route"], "/v1/events", "{applied}");
    let refused = audit("corr-logs-3");
    assert_eq!(refused["fields"]["key"], "unknown", "{refused}");
    assert_eq!(refused["fields"]["outcome"], "refused", "{refused}");
    assert_eq!(refused["fields"]["status"], 401, "{refused}");
    assert!(
        audits
            .iter()
            .all(|v| v["fields"]["correlation_id"] != "corr-logs-2"),
        "a read was audited"
    );
}
