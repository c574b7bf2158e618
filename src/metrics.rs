//! Prometheus metrics. Names and labels are part of the contract (SPEC §6);
//! labels are bounded sets (routes, channels, event types, outcomes, key
//! names), never SKUs or reservation ids.

use prometheus::{
    exponential_buckets, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Outcomes of `stockwire_inbox_files_total`: filed in `processed/`, the same file
/// again (nothing applied), or unreadable and filed in `rejected/` whole.
pub const INBOX_FILE_OUTCOMES: [&str; 3] = ["processed", "duplicate", "rejected"];

/// Latency buckets from 25 µs up to ~1.6 s (SPEC §6).
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.000_025, 2.0, 17).unwrap_or_default()
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
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
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
