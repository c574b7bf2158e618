//! Starts and stops real servers for tests, and talks to them over HTTP.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The default test config: three locations, two channels.
pub const BASE_CONFIG: &str = r#"
durability = "wal"
default_ttl_seconds = 900
snapshot_interval_seconds = 3600

[[locations]]
id = "wh-east"
kind = "warehouse"
name = "East"

[[locations]]
id = "wh-west"
kind = "warehouse"
name = "West"

[[locations]]
id = "3pl-north"
kind = "3pl"
name = "North"

[[channels]]
id = "web"
locations = ["wh-east", "wh-west", "3pl-north"]

[[channels]]
id = "marketplace"
locations = ["wh-east", "wh-west"]
"#;

/// `path` in this checkout. Read at run time (cargo sets CARGO_MANIFEST_DIR
/// for the tests it runs): the compile-time value is the path of whichever
/// clone built this binary, and clones sharing one CARGO_TARGET_DIR (as
/// `.ci/run` does) share its units, so it can name another clone, or one
/// that is gone.
pub fn repo(path: &str) -> PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    root.join(path)
}

/// `value[key]` as an integer; panics, showing `value`, when it is not one.
pub fn num(value: &Value, key: &str) -> i64 {
    value[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no integer {key} in {value}"))
}

/// The event log's head seq.
pub fn head(server: &Server) -> u64 {
    let (status, body) = server.get("/v1/events?after=0&limit=1");
    assert_eq!(status, 200, "{body}");
    body["head"].as_u64().expect("head")
}

/// The exception queue, filtered by `query` (e.g. `kind=oversold`; "" for all).
pub fn exceptions(server: &Server, query: &str) -> Vec<Value> {
    let (status, body) = server.get(&format!("/v1/exceptions?limit=1000&{query}"));
    assert_eq!(status, 200, "{body}");
    body["exceptions"].as_array().expect("exceptions").clone()
}

/// A metric's value from `/metrics`: the first sample of family `name` that
/// has every one of `labels`; `None` when there is none.
pub fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let (status, body) = server.get("/metrics");
    assert_eq!(status, 200);
    let text = body.as_str().expect("metrics are text").to_string();
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            return None;
        }
        let (key, value) = line.rsplit_once(' ')?;
        labels
            .iter()
            .all(|(k, v)| key.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse::<f64>().ok())?
    })
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on loopback")
}

/// A running server process with its own data dir.
pub struct Server {
    pub child: Option<Child>,
    pub port: u16,
    pub data: PathBuf,
    pub config_path: PathBuf,
    /// API key the helpers below send (`None`: the server has no `[[keys]]`).
    pub token: Option<String>,
    /// More environment for the process.
    pub env: Vec<(String, String)>,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts a server with `BASE_CONFIG` plus `extra` config text.
    pub fn start(extra: &str) -> Server {
        Server::start_with_base(BASE_CONFIG, extra)
    }

    /// Starts the binary on this server's config and waits until ready.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(
            self.config_path
                .with_extension(format!("log.{}", self.port)),
        )
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null());
        let child = Command::new(env!("CARGO_BIN_EXE_stockwire"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("STOCKWIRE_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start stockwire");
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    pub fn wait_ready(&self, limit: Duration) {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Ok(response) = ureq::get(&self.url("/readyz"))
                .timeout(Duration::from_secs(1))
                .call()
            {
                if response.status() == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server on port {} not ready after {limit:?}", self.port);
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Sends this server's token from now on.
    pub fn with_token(mut self, token: &str) -> Server {
        self.token = Some(token.to_string());
        self
    }

    /// A request carrying this server's token, if any.
    pub fn request(&self, method: &str, path: &str) -> ureq::Request {
        let request = ureq::request(method, &self.url(path));
        match &self.token {
            Some(token) => request.set("authorization", &format!("Bearer {token}")),
            None => request,
        }
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        call(self.request("GET", path), None)
    }

    pub fn post(&self, path: &str, body: Value) -> (u16, Value) {
        call(self.request("POST", path), Some(body))
    }

    pub fn put(&self, path: &str, body: Value) -> (u16, Value) {
        call(self.request("PUT", path), Some(body))
    }

    /// POST with extra headers.
    pub fn post_with(&self, path: &str, body: Value, headers: &[(&str, &str)]) -> (u16, Value) {
        let mut request = self.request("POST", path);
        for (name, value) in headers {
            request = request.set(name, value);
        }
        call(request, Some(body))
    }

    /// POST a raw body (for malformed input tests).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let request = self
            .request("POST", path)
            .set("content-type", "application/json")
            .timeout(Duration::from_secs(10));
        match request.send_bytes(body) {
            Ok(response) => decode(response),
            Err(ureq::Error::Status(_, response)) => decode(response),
            Err(error) => panic!("POST {path}: {error}"),
        }
    }

    /// Receives `qty` of `sku` at `location` through an event.
    pub fn receive(&self, sku: &str, location: &str, qty: u64) {
        let event_id = format!("rcv-{sku}-{location}-{}", rand_suffix());
        let (status, body) = self.post(
            "/v1/events",
            serde_json::json!({"events": [{
                "event_id": event_id, "type": "receipt", "source": "wms",
                "sku": sku, "location": location, "qty": qty
            }]}),
        );
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["status"], "applied", "{body}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn decode(response: ureq::Response) -> (u16, Value) {
    let status = response.status();
    let text = response.into_string().unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

pub fn call(request: ureq::Request, body: Option<Value>) -> (u16, Value) {
    let request = request.timeout(Duration::from_secs(10));
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match result {
        Ok(response) => decode(response),
        Err(ureq::Error::Status(_, response)) => decode(response),
        Err(error) => panic!("request failed: {error}"),
    }
}

/// The text `field` of each item of the array `items` (items without it are
/// left out).
pub fn texts<'a>(items: &'a Value, field: &str) -> Vec<&'a str> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item[field].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// One position's counters from the full availability view.
pub fn position(server: &Server, sku: &str, location: &str) -> Value {
    let (status, body) = server.get(&format!("/v1/availability/{sku}"));
    assert_eq!(status, 200, "{body}");
    body["locations"]
        .as_array()
        .and_then(|l| l.iter().find(|p| p["location"] == location).cloned())
        .unwrap_or(Value::Null)
}

// ---- Added for the concurrency and crash tests ----

impl Server {
    /// Like [`Server::start`], but with `base` in place of `BASE_CONFIG`
    /// (e.g. `BASE_CONFIG` with one setting changed).
    pub fn start_with_base(base: &str, extra: &str) -> Server {
        let mut server = Server::prepare(|port, data| {
            format!(
                "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{base}\n{extra}\n",
                data.display()
            )
        });
        server.spawn();
        server
    }

    /// A server not started yet: its port picked, `config(port, data_dir)` written
    /// as its config file. [`Server::spawn`] starts it.
    pub fn prepare(config: impl FnOnce(u16, &Path) -> String) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let config_path = dir.path().join("stockwire.toml");
        let port = free_port();
        std::fs::write(&config_path, config(port, &data)).expect("write config");
        Server {
            child: None,
            port,
            data,
            config_path,
            token: None,
            env: Vec::new(),
            _dir: Some(dir),
        }
    }

    /// Every entry of the event log, read page by page (`limit` per page),
    /// plus the `head` the last page reported (the last seq when absent).
    pub fn event_log(&self, limit: usize) -> (Vec<Value>, u64) {
        let mut events = Vec::new();
        let mut after = 0u64;
        let mut head = None;
        for _ in 0..100_000 {
            let (status, body) = self.get(&format!("/v1/events?after={after}&limit={limit}"));
            assert_eq!(status, 200, "GET /v1/events?after={after}: {body}");
            head = body["head"].as_u64().or(head);
            let page = body["events"].as_array().cloned().unwrap_or_default();
            if page.is_empty() {
                break;
            }
            after = page.last().and_then(|e| e["seq"].as_u64()).expect("a seq");
            events.extend(page);
        }
        let last = events.last().and_then(|e| e["seq"].as_u64()).unwrap_or(0);
        (events, head.unwrap_or(last))
    }
}

/// Like [`call`], but a transport failure (refused, reset, timeout) is an
/// `Err` instead of a panic: for requests racing a crash.
pub fn try_call(request: ureq::Request, body: Option<Value>) -> Result<(u16, Value), String> {
    let request = request.timeout(Duration::from_secs(10));
    let result = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match result {
        Ok(response) => Ok(decode(response)),
        Err(ureq::Error::Status(_, response)) => Ok(decode(response)),
        Err(error) => Err(error.to_string()),
    }
}

/// Writes `dir/stockwire.toml`: loopback on `port`, data in `dir/data`, the
/// top-level keys `top`, then `BASE_CONFIG`, then the tables `tables` (for tests
/// that start the binary themselves).
pub fn config_file(dir: &Path, port: u16, top: &str, tables: &str) -> PathBuf {
    let path = dir.join("stockwire.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{top}\n{BASE_CONFIG}\n{tables}\n",
        dir.join("data").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}
