//! Prometheus metrics. Names and labels are part of the contract (SPEC §6);
//! labels are bounded sets (routes, channels, event types, outcomes, key
//! names), never SKUs or reservation ids.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Outcomes of `stockwire_inbox_files_total`: filed in `processed/`, the same file
/// again (nothing applied), or unreadable and filed in `rejected/` whole.
pub const INBOX_FILE_OUTCOMES: [&str; 3] = ["processed", "duplicate", "rejected"];

/// Latency buckets from 1 µs to 2.5 s, three per decade (1, 2.5, 5): fine
/// enough to see a journal write of a few µs, and 25 µs (SPEC §6) is one.
fn latency_buckets() -> Vec<f64> {
    let mut buckets = Vec::with_capacity(20);
    let mut decade = 0.000_001;
    while decade < 10.0 {
        for step in [1.0, 2.5, 5.0] {
            let bucket = decade * step;
            if bucket <= 2.5 {
                buckets.push(bucket);
            }
        }
        decade *= 10.0;
    }
    buckets
}

/// Raises `counter` to `value` (a count kept elsewhere, read at scrape time).
/// Callers hold [`Metrics::scrape`]'s lock, so two scrapes do not both add.
fn raise_to(counter: &IntCounter, value: u64) {
    let current = counter.get();
    if value > current {
        counter.inc_by(value - current);
    }
}

pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub reservations_total: IntCounterVec,
    pub events_applied_total: IntCounterVec,
    pub events_rejected_total: IntCounterVec,
    pub journal_head_seq: IntGauge,
    pub journal_append_duration_seconds: Histogram,
    pub channel_lag_seconds: IntGaugeVec,
    pub channel_pending: IntGaugeVec,
    pub channel_deliveries_total: IntCounterVec,
    pub channel_dlq_depth: IntGaugeVec,
    pub channel_drift: IntGaugeVec,
    pub reconciliation_exceptions_total: IntCounterVec,
    pub positions: IntGauge,
    pub oversold_positions: IntGauge,
    pub rate_limited_total: IntCounterVec,
    pub live_position_actors: IntGauge,
    /// 3PL inbox files filed, by source and outcome ([`INBOX_FILE_OUTCOMES`]).
    pub inbox_files_total: IntCounterVec,
    /// Files in an inbox directory not yet claimed (settling or ready), per source.
    pub inbox_files_waiting: IntGaugeVec,
    /// 1 once recovered and able to journal, else 0 (set at scrape time).
    pub ready: IntGauge,
    /// Journal counters, copied from the journal at scrape time.
    pub journal_commits_total: IntCounter,
    pub journal_appends_total: IntCounter,
    pub journal_stalls_total: IntCounter,
    pub journal_slowdowns_total: IntCounter,
    /// Age of the journal write in progress once it is a stall, else 0.
    pub journal_write_stalled_seconds: Gauge,
    /// Log lines dropped because the logging thread fell behind.
    pub log_lines_dropped_total: IntCounter,
    /// Held while scrape-time values are copied in (see `raise_to`).
    scrape: std::sync::Mutex<()>,
    /// Where the count of dropped log lines comes from (the logging thread).
    log_drops: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// Cluster mode only: registered by [`Metrics::watch_cluster`].
    cluster: std::sync::OnceLock<ClusterMetrics>,
}

/// `stockwire_cluster_*`, copied from the node at scrape time.
struct ClusterMetrics {
    node: std::sync::Arc<crate::cluster::Node>,
    owner: IntGauge,
    owned_partitions: IntGauge,
    applied_seq: IntGauge,
    lag: IntGauge,
    peers: IntGauge,
    groups_unowned: IntGauge,
    failovers_total: IntCounter,
    forwarded_total: IntCounter,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Metrics {
    // The metric definitions are constants: registering them can only fail on
    // a programming error (a duplicate name), caught by every test run.
    #[allow(clippy::expect_used)]
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let http_request_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "stockwire_http_request_duration_seconds",
                "HTTP request latency by route pattern",
            )
            .buckets(latency_buckets()),
            &["route", "method"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_request_duration_seconds.clone()))
            .expect("unique metric");
        let journal_append_duration_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "stockwire_journal_append_duration_seconds",
                "Duration of one group-committed journal write",
            )
            .buckets(latency_buckets()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(journal_append_duration_seconds.clone()))
            .expect("unique metric");
        // Process RSS, open fds, CPU seconds, threads, start time (Linux /proc).
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("unique metric");
        gauge_vec(
            r,
            "stockwire_build_info",
            "Always 1; the build's version as a label",
            &["version"],
        )
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
        Metrics {
            http_requests_total: counter(
                r,
                "stockwire_http_requests_total",
                "HTTP requests by route pattern, method and status",
                &["route", "method", "status"],
            ),
            http_request_duration_seconds,
            reservations_total: counter(
                r,
                "stockwire_reservations_total",
                "Reservation attempts by channel and outcome",
                &["channel", "outcome"],
            ),
            events_applied_total: counter(
                r,
                "stockwire_events_applied_total",
                "Warehouse events applied, by type and source",
                &["type", "source"],
            ),
            events_rejected_total: counter(
                r,
                "stockwire_events_rejected_total",
                "Warehouse events rejected, by type, source and code",
                &["type", "source", "code"],
            ),
            journal_head_seq: gauge(r, "stockwire_journal_head_seq", "Last durable journal seq"),
            journal_append_duration_seconds,
            channel_lag_seconds: gauge_vec(
                r,
                "stockwire_channel_lag_seconds",
                "Age of the oldest undelivered change per channel",
                &["channel"],
            ),
            channel_pending: gauge_vec(
                r,
                "stockwire_channel_pending",
                "Changes waiting to be delivered per channel",
                &["channel"],
            ),
            channel_deliveries_total: counter(
                r,
                "stockwire_channel_deliveries_total",
                "Channel delivery attempts by outcome",
                &["channel", "outcome"],
            ),
            channel_dlq_depth: gauge_vec(
                r,
                "stockwire_channel_dlq_depth",
                "Batches parked in the dead-letter queue per channel",
                &["channel"],
            ),
            channel_drift: gauge_vec(
                r,
                "stockwire_channel_drift",
                "SKUs whose published value differs from the channel view",
                &["channel"],
            ),
            reconciliation_exceptions_total: counter(
                r,
                "stockwire_reconciliation_exceptions_total",
                "Differences found by reconciliations, by source",
                &["source"],
            ),
            positions: gauge(r, "stockwire_positions", "Resident SKU-location positions"),
            oversold_positions: gauge(
                r,
                "stockwire_oversold_positions",
                "Positions whose available is negative",
            ),
            rate_limited_total: counter(
                r,
                "stockwire_rate_limited_total",
                "Requests refused by rate limiting, by key name",
                &["key"],
            ),
            live_position_actors: gauge(
                r,
                "stockwire_live_position_actors",
                "Position actors currently active (the rest are passivated)",
            ),
            inbox_files_total: counter(
                r,
                "stockwire_inbox_files_total",
                "3PL inbox files filed, by source and outcome",
                &["source", "outcome"],
            ),
            inbox_files_waiting: gauge_vec(
                r,
                "stockwire_inbox_files_waiting",
                "Files in an inbox directory not yet claimed, by source",
                &["source"],
            ),
            ready: gauge(
                r,
                "stockwire_ready",
                "1 once recovered and able to journal (what /readyz answers 200 for), else 0",
            ),
            journal_commits_total: plain_counter(
                r,
                "stockwire_journal_commits_total",
                "Atomic journal writes (each commits one or more appends)",
            ),
            journal_appends_total: plain_counter(
                r,
                "stockwire_journal_appends_total",
                "Journal appends committed",
            ),
            journal_stalls_total: plain_counter(
                r,
                "stockwire_journal_stalls_total",
                "Journal writes that took 500 ms or more",
            ),
            journal_slowdowns_total: plain_counter(
                r,
                "stockwire_journal_slowdowns_total",
                "Journal writes RocksDB would have delayed (write stall), retried waiting",
            ),
            journal_write_stalled_seconds: {
                let metric = Gauge::new(
                    "stockwire_journal_write_stalled_seconds",
                    "Age of the journal write in progress once it is stalled (500 ms or more), else 0",
                )
                .expect("valid metric");
                registry
                    .register(Box::new(metric.clone()))
                    .expect("unique metric");
                metric
            },
            log_lines_dropped_total: plain_counter(
                r,
                "stockwire_log_lines_dropped_total",
                "Log lines dropped because the logging thread's queue was full",
            ),
            scrape: std::sync::Mutex::new(()),
            log_drops: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            registry,
        }
    }

    /// Creates the series whose label values config already names, at zero, so a
    /// scrape shows them (and `rate()`-based alerts have a baseline) before the first
    /// event: deliveries per channel with a sink, rate limiting per key,
    /// reconciliation exceptions per source named by inboxes or source authority,
    /// and inbox files per inbox source.
    pub fn prepare(&self, config: &crate::config::Config) {
        for channel in config.channels.iter().filter(|c| c.sink.is_some()) {
            for outcome in ["delivered", "failed", "dead_lettered"] {
                self.channel_deliveries_total
                    .with_label_values(&[&channel.id, outcome]);
            }
        }
        for key in &config.keys {
            self.rate_limited_total.with_label_values(&[&key.name]);
        }
        for inbox in &config.inbox {
            for outcome in INBOX_FILE_OUTCOMES {
                self.inbox_files_total
                    .with_label_values(&[&inbox.source, outcome]);
            }
            self.inbox_files_waiting.with_label_values(&[&inbox.source]);
        }
        let sources = config
            .inbox
            .iter()
            .map(|i| &i.source)
            .chain(config.source_authority.iter().map(|a| &a.source));
        for source in sources {
            self.reconciliation_exceptions_total
                .with_label_values(&[source]);
        }
    }

    /// Copies the journal's own counters into their metrics (at scrape time).
    pub fn observe_journal(&self, journal: &crate::storage::Journal, slowdowns: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let stats = journal.stats();
        raise_to(&self.journal_commits_total, stats.batches.load(Relaxed));
        raise_to(&self.journal_appends_total, stats.appends.load(Relaxed));
        raise_to(&self.journal_stalls_total, stats.stalls.load(Relaxed));
        raise_to(&self.journal_slowdowns_total, slowdowns);
        let stalled = journal
            .write_in_progress()
            .filter(|age| *age >= crate::storage::STALL_AFTER)
            .map_or(0.0, |age| age.as_secs_f64());
        self.journal_write_stalled_seconds.set(stalled);
    }

    /// Names where `stockwire_log_lines_dropped_total` is read from.
    pub fn count_log_drops_from(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.log_drops.set(Box::new(source));
    }

    /// Copies the logging thread's count of dropped lines (at scrape time).
    pub fn observe_log_drops(&self) {
        let Some(source) = self.log_drops.get() else {
            return;
        };
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        raise_to(&self.log_lines_dropped_total, source());
    }

    /// Cluster mode: registers `stockwire_cluster_*` and reads them from `node`
    /// at each scrape.
    #[allow(clippy::expect_used)]
    pub fn watch_cluster(&self, node: std::sync::Arc<crate::cluster::Node>) {
        let r = &self.registry;
        let metrics = ClusterMetrics {
            node,
            owner: gauge(
                r,
                "stockwire_cluster_owner",
                "1 if this node owns its partition group's journal (every partition without groups) and serves",
            ),
            owned_partitions: gauge(
                r,
                "stockwire_cluster_owned_partitions",
                "Partitions this node owns",
            ),
            applied_seq: gauge(
                r,
                "stockwire_cluster_applied_seq",
                "Last journal stream sequence in this node's store",
            ),
            lag: gauge(
                r,
                "stockwire_cluster_lag",
                "Journal stream messages this node has not applied yet",
            ),
            peers: gauge(
                r,
                "stockwire_cluster_peers",
                "Other nodes heard within the takeover window",
            ),
            groups_unowned: gauge(
                r,
                "stockwire_cluster_groups_unowned",
                "Partition groups (this node's included) with no live owner this node knows of",
            ),
            failovers_total: plain_counter(
                r,
                "stockwire_cluster_failovers_total",
                "Ownership changes of the journal seen by this node",
            ),
            forwarded_total: plain_counter(
                r,
                "stockwire_cluster_forwarded_total",
                "Requests this node forwarded to the owner",
            ),
        };
        let _ = self.cluster.set(metrics);
    }

    /// Copies the cluster node's state (at scrape time).
    pub fn observe_cluster(&self, partitions: u32) {
        use std::sync::atomic::Ordering;
        let Some(m) = self.cluster.get() else {
            return;
        };
        let node = &m.node;
        m.owner.set(i64::from(node.is_owner()));
        m.owned_partitions
            .set(i64::from(node.owned_partitions(partitions)));
        let (applied, _, lag) = node.lag();
        m.applied_seq.set(applied as i64);
        m.lag.set(lag as i64);
        m.peers.set(node.live_peer_count() as i64);
        m.groups_unowned.set(i64::from(node.unowned_groups()));
        let _scrape = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        raise_to(&m.failovers_total, node.failovers.load(Ordering::Relaxed));
        raise_to(&m.forwarded_total, node.forwarded.load(Ordering::Relaxed));
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "metrics encoding failed");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
