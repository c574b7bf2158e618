//! A real Prometheus (Debian's `prometheus`, which `make test` installs)
//! scraping a real server with the shipped `config/prometheus/prometheus.yml`
//! and `alerts.yml`: the target is up, every rule is loaded and evaluates,
//! every Grafana panel's query is accepted by Prometheus, and an alert goes
//! from pending to firing after its `for:` window (a channel whose webhook
//! always fails fills its dead-letter queue: `StockwireChannelDeadLetters`,
//! `for: 1m`). The copy of prometheus.yml differs only in loopback ports,
//! 1 s intervals and the rule file's absolute path.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{free_port, repo, Server};

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// The shipped config with `replacements` applied (each must apply once).
    fn start(replacements: &[(&str, String)]) -> Prometheus {
        let dir = tempfile::tempdir().expect("prometheus dir");
        let mut config = std::fs::read_to_string(repo("config/prometheus/prometheus.yml"))
            .expect("prometheus.yml");
        for (from, to) in replacements {
            assert_eq!(
                config.matches(from).count(),
                1,
                "prometheus.yml no longer has {from:?} once: update this test"
            );
            config = config.replace(from, to);
        }
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).expect("write config");
        let port = free_port();
        let log_path = dir.path().join("prometheus.log");
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus: `make test` installs Debian's prometheus package");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log: log_path,
            _dir: dir,
        }
    }

    /// `GET /api/v1/<path>` with `query` parameters; the `data` of a success.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, String> {
        let mut request =
            ureq::get(&format!("{}/api/v1/{path}", self.url)).timeout(Duration::from_secs(5));
        for (name, value) in query {
            request = request.query(name, value);
        }
        let body: Value = match request.call() {
            Ok(response) => response.into_json().map_err(|e| e.to_string())?,
            Err(ureq::Error::Status(code, response)) => {
                let text = response.into_string().unwrap_or_default();
                return Err(format!("{code}: {text}"));
            }
            Err(error) => return Err(error.to_string()),
        };
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"].clone())
    }

    /// Polls `check` every 250 ms until it gives a value, for at most
    /// `limit`; fails at once, with Prometheus's log, if Prometheus exited
    /// (e.g. its port was taken between choosing and binding it).
    fn wait_for<T>(
        &mut self,
        what: &str,
        limit: Duration,
        check: impl Fn(&Prometheus) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(value) = check(self) {
                return value;
            }
            let exited = self.child.try_wait().ok().flatten();
            let log = || std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(
                exited.is_none(),
                "prometheus exited ({exited:?}):\n{}",
                log()
            );
            assert!(
                Instant::now() < deadline,
                "prometheus: {what} not within {limit:?}; its log:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The state (`pending` / `firing`) of alert `name`, if it is active.
    fn alert_state(&self, name: &str) -> Option<String> {
        let data = self.api("alerts", &[]).ok()?;
        data["alerts"]
            .as_array()?
            .iter()
            .find(|alert| alert["labels"]["alertname"] == name)
            .and_then(|alert| alert["state"].as_str().map(str::to_string))
    }
}

/// Every PromQL expression of the Grafana dashboard, with its variables set.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo("config/grafana/stockwire.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr
                .replace("$__rate_interval", "1m")
                .replace("$job", "stockwire")
                .replace("$channel", ".*");
            assert!(
                !expr.contains('$'),
                "a dashboard variable this test does not set: {expr}"
            );
            queries.push((panel["title"].as_str().unwrap_or("?").to_string(), expr));
        }
    }
    queries
}

#[test]
fn a_real_prometheus_scrapes_loads_every_rule_runs_every_panel_and_fires_an_alert() {
    // A webhook nobody listens on: every delivery fails, and with one attempt
    // the first batch goes to the dead-letter queue at once.
    let dead = free_port();
    let mut server = Server::start(&format!(
        "[[channels]]\nid = \"dlq\"\nlocations = [\"wh-east\"]\ncoalesce_ms = 0\n\
         sink = {{ kind = \"webhook\", url = \"http://127.0.0.1:{dead}/stock\", timeout_ms = 200, \
         max_attempts = 1, backoff_ms = 10, backoff_max_ms = 50 }}\n"
    ));
    let alerts_path = repo("config/prometheus/alerts.yml");
    let mut prometheus = Prometheus::start(&[
        (
            "scrape_interval: 5s\n  evaluation_interval: 5s",
            "scrape_interval: 1s\n  evaluation_interval: 1s".to_string(),
        ),
        (
            "    scrape_interval: 5s\n    scrape_timeout: 4s",
            "    scrape_interval: 1s\n    scrape_timeout: 1s".to_string(),
        ),
        ("  - alerts.yml", format!("  - {}", alerts_path.display())),
        (
            "[\"127.0.0.1:8080\"]",
            format!("[\"127.0.0.1:{}\"]", server.port),
        ),
    ]);

    // The target is up.
    prometheus.wait_for("the stockwire target up", Duration::from_secs(60), |p| {
        let data = p.api("targets", &[]).ok()?;
        let targets = data["activeTargets"].as_array()?;
        (targets.len() == 1
            && targets[0]["health"] == "up"
            && targets[0]["labels"]["job"] == "stockwire")
            .then_some(())
    });

    // Every rule of alerts.yml is loaded and has evaluated without error.
    let declared = std::fs::read_to_string(&alerts_path)
        .expect("alerts.yml")
        .lines()
        .filter(|line| line.trim_start().starts_with("- alert:"))
        .count();
    assert!(declared >= 10, "{declared} alerts declared");
    prometheus.wait_for(
        "every rule loaded and healthy",
        Duration::from_secs(30),
        |p| {
            let data = p.api("rules", &[]).ok()?;
            let rules: Vec<&Value> = data["groups"]
                .as_array()?
                .iter()
                .flat_map(|group| group["rules"].as_array().into_iter().flatten())
                .collect();
            let bad: Vec<String> = rules
                .iter()
                .filter(|rule| rule["health"] != "ok")
                .map(|rule| format!("{} {} {}", rule["name"], rule["health"], rule["lastError"]))
                .collect();
            (rules.len() == declared && bad.is_empty()).then_some(())
        },
    );

    // Every panel of the dashboard is a query Prometheus accepts and runs.
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "{} queries", queries.len());
    for (title, expr) in &queries {
        if let Err(error) = prometheus.api("query", &[("query", expr)]) {
            panic!("panel {title:?}: {expr}: {error}");
        }
    }

    // A channel goes to its dead-letter queue: the alert is pending, then firing
    // once it has held for its `for: 1m`.
    server.receive("dlq-sku", "wh-east", 5);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, channel) = server.get("/v1/channels/dlq");
        if channel["dlq_depth"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no dead letter: {channel}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let name = "StockwireChannelDeadLetters";
    prometheus.wait_for("the alert pending", Duration::from_secs(30), |p| {
        (p.alert_state(name).as_deref() == Some("pending")).then_some(())
    });
    let pending_at = Instant::now();
    prometheus.wait_for("the alert firing", Duration::from_secs(100), |p| {
        (p.alert_state(name).as_deref() == Some("firing")).then_some(())
    });
    let held = pending_at.elapsed();
    assert!(
        held >= Duration::from_secs(55),
        "fired after {held:?} pending: before its `for: 1m`"
    );
    let alerts = prometheus.api("alerts", &[]).expect("alerts");
    let fired = alerts["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .find(|a| a["labels"]["alertname"] == name)
        .cloned()
        .expect("the alert");
    assert_eq!(fired["labels"]["channel"], "dlq", "{fired}");
    assert_eq!(fired["labels"]["severity"], "warning", "{fired}");
    assert!(
        fired["annotations"]["runbook_url"]
            .as_str()
            .is_some_and(|url| url.starts_with("docs/RUNBOOK.md#")),
        "{fired}"
    );

    // The server dies: its target goes down and StockwireNotReady is pending.
    server.kill();
    prometheus.wait_for("the target down", Duration::from_secs(30), |p| {
        let data = p.api("targets", &[]).ok()?;
        (data["activeTargets"][0]["health"] == "down").then_some(())
    });
    prometheus.wait_for("StockwireNotReady pending", Duration::from_secs(30), |p| {
        p.alert_state("StockwireNotReady").map(|_| ())
    });
}
