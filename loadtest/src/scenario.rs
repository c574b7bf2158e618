//! Scenario files (TOML): what to seed, how hard to drive, which requests in
//! which proportions, and (optionally) a restart command to run under load.
//! Strict: unknown keys and out-of-range values are errors naming the key.

use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Upper bounds, so a typo cannot make the runner eat the machine.
pub const SKUS_MAX: u64 = 1_000_000;
pub const CONCURRENCY_MAX: u64 = 1024;
pub const RATE_MAX: u64 = 1_000_000;
pub const DURATION_SECONDS_MAX: f64 = 3600.0;
pub const LINES_MAX: u32 = 100;
pub const BATCH_MAX: u32 = 1000;
pub const QUERY_SKUS_MAX: u32 = 1000;
pub const RESTARTS_MAX: u32 = 100;
/// A scenario's TTLs: the runner sleeps through the longest before judging expiry.
pub const TTL_SECONDS_MAX: u64 = 600;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: Seed,
    pub load: Load,
    pub mix: Vec<Op>,
    #[serde(default)]
    pub restart: Option<Restart>,
}

/// Stock put in place (by receipts) before the run. SKU names are
/// `<prefix>-<n>`; the runner adds a per-run prefix so runs never collide.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    pub skus: u64,
    pub locations: Vec<String>,
    /// Units received at every SKU-location.
    pub stock: u64,
    #[serde(default = "default_channel")]
    pub channel: String,
}

fn default_channel() -> String {
    "web".to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Requests are sent at `rate` whatever the answers' latency; latency is
    /// measured from each request's scheduled time (no coordinated omission).
    Open,
    /// `concurrency` workers each send the next request when the last is answered.
    Closed,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Load {
    pub mode: Mode,
    /// Requests per second over all connections (open loop only).
    #[serde(default)]
    pub rate: Option<u64>,
    /// Connections (open loop) or workers (closed loop), one keep-alive connection each.
    pub concurrency: u64,
    #[serde(default = "default_warmup")]
    pub warmup_seconds: f64,
    pub duration_seconds: f64,
}

fn default_warmup() -> f64 {
    2.0
}

/// One kind of request and its share of the mix.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// `POST /v1/reservations` with `lines` lines of `qty` on distinct SKUs,
    /// a client-chosen `reservation_id` (so an unanswered one can be looked up).
    Reserve {
        weight: u32,
        #[serde(default = "one_u32")]
        lines: u32,
        #[serde(default = "one_u64")]
        qty: u64,
        #[serde(default)]
        ttl_seconds: Option<u64>,
        /// Omit `location`: the server sources it from the channel's locations.
        #[serde(default)]
        sourced: bool,
    },
    /// `POST /v1/reservations/{id}/release` of one of this worker's held reservations.
    Release { weight: u32 },
    /// `GET /v1/availability/{sku}?channel=`.
    Availability { weight: u32 },
    /// `POST /v1/availability/query` with `skus` SKUs.
    Query {
        weight: u32,
        #[serde(default = "ten")]
        skus: u32,
    },
    /// `POST /v1/events`: a batch of `batch` receipts of `qty` (WMS/ERP traffic).
    Events {
        weight: u32,
        #[serde(default = "hundred")]
        batch: u32,
        #[serde(default = "one_u64")]
        qty: u64,
    },
    /// `GET /healthz`: a trivial endpoint, to show the runner's own ceiling.
    Healthz { weight: u32 },
}

fn one_u32() -> u32 {
    1
}
fn one_u64() -> u64 {
    1
}
fn ten() -> u32 {
    10
}
fn hundred() -> u32 {
    100
}

impl Op {
    pub fn weight(&self) -> u32 {
        match self {
            Op::Reserve { weight, .. }
            | Op::Release { weight }
            | Op::Availability { weight }
            | Op::Query { weight, .. }
            | Op::Events { weight, .. }
            | Op::Healthz { weight } => *weight,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Op::Reserve { .. } => "reserve",
            Op::Release { .. } => "release",
            Op::Availability { .. } => "availability",
            Op::Query { .. } => "query",
            Op::Events { .. } => "events",
            Op::Healthz { .. } => "healthz",
        }
    }
}

/// Kill and restart the server `count` times while the load runs.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Restart {
    /// Run with `sh -c`; must kill the server (e.g. `kill -9`) and start it again
    /// in the background, then return. `LOADTEST_TARGET` is set to the target.
    pub command: String,
    pub count: u32,
    pub every_seconds: f64,
    #[serde(default = "default_ready_timeout")]
    pub ready_timeout_seconds: f64,
}

fn default_ready_timeout() -> f64 {
    60.0
}

impl Scenario {
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading scenario {}", path.display()))?;
        Scenario::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let deserializer = toml::Deserializer::new(text);
        let scenario: Scenario = serde_path_to_error::deserialize(deserializer)
            .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner().message()))?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let seed = &self.seed;
        if !(1..=SKUS_MAX).contains(&seed.skus) {
            bail!("seed.skus: must be 1..={SKUS_MAX}");
        }
        if seed.locations.is_empty() {
            bail!("seed.locations: at least one");
        }
        if !(1..=1_000_000_000).contains(&seed.stock) {
            bail!("seed.stock: must be 1..=1000000000");
        }
        let weights: u64 = self.mix.iter().map(|op| u64::from(op.weight())).sum();
        if weights > u64::from(u32::MAX) {
            bail!("mix: the weights add up to more than {}", u32::MAX);
        }
        let load = &self.load;
        if !(1..=CONCURRENCY_MAX).contains(&load.concurrency) {
            bail!("load.concurrency: must be 1..={CONCURRENCY_MAX}");
        }
        match (load.mode, load.rate) {
            (Mode::Open, None) => bail!("load.rate: required in open mode"),
            (Mode::Open, Some(rate)) if !(1..=RATE_MAX).contains(&rate) => {
                bail!("load.rate: must be 1..={RATE_MAX}")
            }
            (Mode::Closed, Some(_)) => bail!("load.rate: only in open mode"),
            _ => {}
        }
        let seconds = |key: &str, value: f64, min: f64| -> anyhow::Result<()> {
            if !(min..=DURATION_SECONDS_MAX).contains(&value) {
                bail!("load.{key}: must be {min}..={DURATION_SECONDS_MAX}");
            }
            Ok(())
        };
        seconds("warmup_seconds", load.warmup_seconds, 0.0)?;
        seconds("duration_seconds", load.duration_seconds, 0.1)?;
        if self.mix.is_empty() || self.mix.iter().all(|op| op.weight() == 0) {
            bail!("mix: at least one op with a positive weight");
        }
        for (index, op) in self.mix.iter().enumerate() {
            match op {
                Op::Reserve {
                    lines,
                    qty,
                    ttl_seconds,
                    ..
                } => {
                    if ttl_seconds.is_some_and(|t| !(1..=TTL_SECONDS_MAX).contains(&t)) {
                        bail!("mix[{index}].ttl_seconds: must be 1..={TTL_SECONDS_MAX}");
                    }
                    if !(1..=LINES_MAX).contains(lines) || u64::from(*lines) > seed.skus {
                        bail!("mix[{index}].lines: must be 1..={LINES_MAX} and at most seed.skus");
                    }
                    if !(1..=1_000_000_000).contains(qty) {
                        bail!("mix[{index}].qty: must be 1..=1000000000");
                    }
                }
                Op::Query { skus, .. } if !(1..=QUERY_SKUS_MAX).contains(skus) => {
                    bail!("mix[{index}].skus: must be 1..={QUERY_SKUS_MAX}")
                }
                Op::Events { batch, qty, .. } => {
                    if !(1..=BATCH_MAX).contains(batch) {
                        bail!("mix[{index}].batch: must be 1..={BATCH_MAX}");
                    }
                    if !(1..=1_000_000).contains(qty) {
                        bail!("mix[{index}].qty: must be 1..=1000000");
                    }
                }
                _ => {}
            }
        }
        if let Some(restart) = &self.restart {
            if !(1..=RESTARTS_MAX).contains(&restart.count) {
                bail!("restart.count: must be 1..={RESTARTS_MAX}");
            }
            if !(0.1..=DURATION_SECONDS_MAX).contains(&restart.every_seconds) {
                bail!("restart.every_seconds: must be 0.1..={DURATION_SECONDS_MAX}");
            }
            if !(1.0..=DURATION_SECONDS_MAX).contains(&restart.ready_timeout_seconds) {
                bail!("restart.ready_timeout_seconds: must be 1..={DURATION_SECONDS_MAX}");
            }
            if restart.command.trim().is_empty() {
                bail!("restart.command: must not be empty");
            }
        }
        Ok(())
    }

    /// "A shortage leaves nothing unsold" only holds when no stock ever comes back:
    /// no releases, no TTLs of the scenario's own (the runner's default outlasts the
    /// run), no receipts, one line per reservation (a refused cart gives back the lines
    /// it held), and no restart (recovery undoes carts it interrupted).
    pub fn stock_only_goes_out(&self) -> bool {
        self.restart.is_none()
            && self.mix.iter().all(|op| match op {
                Op::Release { weight } => *weight == 0,
                Op::Reserve {
                    ttl_seconds, lines, ..
                } => ttl_seconds.is_none() && *lines == 1,
                Op::Events { weight, .. } => *weight == 0,
                _ => true,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_scenario_parses() {
        // At run time: the compile-time path is the clone that built this
        // test, which may be another one sharing the target dir.
        let root = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
        let dir = root.join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                Scenario::load(&path).unwrap_or_else(|e| panic!("{e:#}"));
                count += 1;
            }
        }
        assert!(count >= 5);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let base = "name = \"x\"\n[seed]\nskus = 10\nlocations = [\"wh-east\"]\nstock = 5\n\
                    [load]\nmode = \"closed\"\nconcurrency = 2\nduration_seconds = 1\n";
        let ok = format!("{base}[[mix]]\nop = \"reserve\"\nweight = 1\n");
        Scenario::parse(&ok).unwrap();
        let unknown = format!("{base}[[mix]]\nop = \"reserve\"\nweight = 1\nqtty = 2\n");
        let error = format!("{:#}", Scenario::parse(&unknown).unwrap_err());
        assert!(error.contains("qtty"), "{error}");
        let lines = format!("{base}[[mix]]\nop = \"reserve\"\nweight = 1\nlines = 11\n");
        let error = format!("{:#}", Scenario::parse(&lines).unwrap_err());
        assert!(error.contains("mix[0].lines"), "{error}");
        let rate = base.replace("mode = \"closed\"", "mode = \"open\"");
        let error = format!(
            "{:#}",
            Scenario::parse(&format!("{rate}[[mix]]\nop = \"healthz\"\nweight = 1\n")).unwrap_err()
        );
        assert!(error.contains("load.rate"), "{error}");
    }
}
