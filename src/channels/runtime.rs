//! Starting publication, and what the API asks of it: status, pause/resume, resync,
//! replay, the publication ledger. Also the lag gauges and the periodic drift check.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use super::broadcaster::{Broadcaster, Refresh, Rewind, Target};
use super::policy::{summed_view, Policy, PositionView};
use super::publisher::{Publisher, SetPaused, TakeDeadLetters};
use super::sink::{self, Retry};
use super::status::{ChannelState, ChannelStatus};
use crate::config::{ChannelConfig, SinkConfig};
use crate::engine::Engine;
use crate::storage::ledger::{LedgerWrite, PublishedRecord};
use crate::storage::records::JournalRecord;
use crate::storage::StorageError;

/// How often lag, pending and dead-letter gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// The shortest quiet before a channel that is not healthy sends its dead
/// letters as the probe: they stay parked (and `dlq_depth` shows them) at
/// least this long between tries, however short the sink's back-off.
const PROBE_QUIET_MIN: Duration = Duration::from_secs(10);

/// SKUs read concurrently by a drift check.
const DRIFT_READS: usize = 64;

/// Owed-SKU records written per journal append by a resync.
const OWED_WRITE_MAX: usize = 10_000;

/// Longest pause between two slices of a drift check.
const DRIFT_PAUSE_MAX: Duration = Duration::from_millis(100);

/// Drifting SKUs remembered per channel (with when they started drifting).
const DRIFT_TRACKED_MAX: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("unknown channel {0:?}")]
    UnknownChannel(String),
    #[error("channel {0:?} has no sink: there is nothing to publish to")]
    NoSink(String),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("publication is unavailable: {0}")]
    Unavailable(String),
    #[error("channel {0:?} is already resyncing or replaying its dead letters; try again when it is done")]
    Busy(String),
}

/// Where `POST /v1/channels/{id}/replay` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayFrom {
    /// Every SKU changed after this journal `seq`.
    Seq(u64),
    /// The SKUs parked in the dead-letter queue.
    DeadLetters,
}

/// One channel as `GET /v1/channels` reports it.
#[derive(Debug, Clone)]
pub struct ChannelReport {
    pub id: Arc<str>,
    pub sink: &'static str,
    pub state: &'static str,
    pub lag_seconds: f64,
    pub pending: usize,
    pub dlq_depth: u64,
    pub cursor_seq: u64,
    pub drift: u64,
    pub last_error: Option<String>,
    pub last_delivery_ms: i64,
}

struct Channel {
    config: ChannelConfig,
    status: Arc<ChannelStatus>,
    /// With a sink: its publisher and its index among the broadcaster's targets.
    publisher: Option<(Addr<Publisher>, usize)>,
    /// How long a difference may last before it counts as drift.
    drift_grace_ms: i64,
    /// When (engine ms) it was last busy or probed while not healthy, and how
    /// long it must then be quiet before its dead letters are the probe (its
    /// sink's `backoff_max_ms`, at least [`PROBE_QUIET_MIN`]).
    probed_ms: std::sync::atomic::AtomicI64,
    probe_every_ms: i64,
}

/// Publication, started once the engine has recovered.
pub struct Channels {
    engine: Arc<Engine>,
    channels: Vec<Channel>,
    broadcaster: Option<Addr<Broadcaster>>,
    arbiters: Vec<Arbiter>,
}

impl Channels {
    /// Starts one publisher per channel with a sink and the broadcaster, each channel
    /// resuming from its durable cursor. Must run inside an actix system.
    pub fn start(engine: Arc<Engine>) -> Result<Arc<Channels>, ChannelError> {
        let config = engine.config.clone();
        let publishers = Arbiter::new();
        let broadcasting = Arbiter::new();
        let mut channels = Vec::new();
        let mut targets = Vec::new();
        let mut owed_by_channel = Vec::new();
        for channel in &config.channels {
            let id: Arc<str> = Arc::from(channel.id.as_str());
            let kind = channel.sink.as_ref().map_or("none", SinkConfig::kind);
            let status = Arc::new(ChannelStatus::new(id.clone(), kind));
            let mut drift_grace_ms = i64::try_from(channel.coalesce_ms).unwrap_or(i64::MAX);
            let mut probe_every_ms = 0;
            let publisher = match &channel.sink {
                None => None,
                Some(sink_config) => {
                    let retry = sink::prepare(sink_config).map_err(ChannelError::Unavailable)?;
                    drift_grace_ms =
                        drift_grace_ms.saturating_add(retry_budget_ms(&retry, sink_config));
                    probe_every_ms =
                        i64::try_from(retry.backoff_max.max(PROBE_QUIET_MIN).as_millis())
                            .unwrap_or(i64::MAX);
                    let stored_cursor = engine.channel_cursor(&id)?;
                    let cursor = stored_cursor.unwrap_or_default();
                    // Shown at once: the publisher starts on its own arbiter a
                    // moment later, and until then `GET /v1/channels` would
                    // answer a cursor of 0 after a restart.
                    status.set_cursor(cursor.cursor_seq);
                    let owed = engine.owed_skus(&id)?;
                    if !owed.is_empty() {
                        tracing::info!(channel = %id, skus = owed.len(), "re-offering owed skus");
                        owed_by_channel.push((channels.len(), owed));
                    }
                    status.add_dlq_depth(engine.count_dead_letters(&id)?);
                    let coalesce = Duration::from_millis(channel.coalesce_ms);
                    let (engine_p, status_p) = (engine.clone(), status.clone());
                    let sink_config = sink_config.clone();
                    let clock = engine.clock().clone();
                    let addr = Publisher::start_in_arbiter(&publishers.handle(), move |_| {
                        let sink = sink::build(&sink_config, clock);
                        Publisher::new(status_p, engine_p, sink, retry, coalesce, stored_cursor)
                    });
                    let index = targets.len();
                    targets.push(Target {
                        id: id.clone(),
                        locations: channel
                            .locations
                            .iter()
                            .filter_map(|l| engine.location(l).cloned())
                            .collect(),
                        policy: Policy::of(channel),
                        status: status.clone(),
                        publisher: addr.clone(),
                        pending_max: config.publish_pending_max,
                        coalesce,
                        next_seq: cursor.cursor_seq,
                        force_through: 0,
                    });
                    Some((addr, index))
                }
            };
            channels.push(Channel {
                config: channel.clone(),
                status,
                publisher,
                drift_grace_ms,
                probed_ms: std::sync::atomic::AtomicI64::new(engine.now_ms()),
                probe_every_ms,
            });
        }
        let broadcaster = if targets.is_empty() {
            None
        } else {
            let engine_b = engine.clone();
            Some(Broadcaster::start_in_arbiter(
                &broadcasting.handle(),
                move |_| Broadcaster::new(engine_b, targets),
            ))
        };
        let channels = Arc::new(Channels {
            engine,
            channels,
            broadcaster,
            arbiters: vec![publishers, broadcasting],
        });
        channels.clone().spawn_background();
        // Resyncs and dead-letter replays accepted before the restart and not delivered.
        let resume = channels.clone();
        actix::spawn(async move {
            for (index, skus) in owed_by_channel {
                let channel = &resume.channels[index];
                let Some((_, target)) = channel.publisher else {
                    continue;
                };
                let skus: Vec<Arc<str>> = skus.iter().map(|s| Arc::from(s.as_str())).collect();
                let result = resume
                    .claimed(channel, || async { resume.refresh(target, skus).await })
                    .await;
                if let Err(error) = result {
                    tracing::error!(%error, "owed skus not re-offered");
                }
            }
        });
        Ok(channels)
    }

    fn spawn_background(self: Arc<Self>) {
        let gauges = self.clone();
        actix::spawn(async move {
            let mut tick = tokio::time::interval(GAUGE_INTERVAL);
            loop {
                tick.tick().await;
                gauges.update_gauges();
                gauges.replay_after_recovery().await;
            }
        });
        let drift = self;
        actix::spawn(async move {
            let period = Duration::from_secs(drift.engine.config.drift_check_seconds);
            let mut tracked: Vec<HashMap<Arc<str>, i64>> =
                drift.channels.iter().map(|_| HashMap::new()).collect();
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                for (index, seen) in tracked.iter_mut().enumerate() {
                    if let Err(error) = drift.check_drift(index, seen).await {
                        tracing::warn!(%error, "drift check failed");
                    }
                }
            }
        });
    }

    /// Once a channel that parked batches is healthy again (or at start-up, with
    /// letters from before), its dead letters are replayed, a slice per tick, so it
    /// converges without an operator.
    ///
    /// A channel that is not healthy only becomes healthy by a delivery that
    /// succeeds, and one with nothing new to send would never try one: its dead
    /// letters are then replayed as the probe once it has been quiet for its
    /// `backoff_max_ms`, at least [`PROBE_QUIET_MIN`] (they park again if it is
    /// still down).
    async fn replay_after_recovery(&self) {
        for channel in &self.channels {
            let status = &channel.status;
            if channel.publisher.is_none()
                || !channel.config.replay_dead_letters_on_recovery
                || status.is_paused()
            {
                continue;
            }
            if status.state() != ChannelState::Healthy {
                self.probe_with_dead_letters(channel).await;
                continue;
            }
            if !status.parked_since_replay.load(Ordering::Relaxed) {
                continue;
            }
            if status.dlq_depth() == 0 {
                status.parked_since_replay.store(false, Ordering::Relaxed);
                continue;
            }
            self.replay_dead_letters(channel, "channel healthy: replaying its dead letters")
                .await;
        }
    }

    /// Replays a slice of `channel`'s dead letters, saying `why` in the log.
    async fn replay_dead_letters(&self, channel: &Channel, why: &str) {
        let status = &channel.status;
        match self
            .replay(&channel.config.id, ReplayFrom::DeadLetters)
            .await
        {
            Ok(count) => tracing::info!(channel = %status.id, skus = count.unwrap_or(0), "{why}"),
            Err(ChannelError::Busy(_)) => {}
            Err(error) => {
                tracing::warn!(channel = %status.id, %error, "dead-letter replay failed")
            }
        }
    }

    /// Replays `channel`'s dead letters when it is not healthy and has been
    /// quiet (nothing to send, nothing probed) for its probe interval.
    async fn probe_with_dead_letters(&self, channel: &Channel) {
        let status = &channel.status;
        let now = self.engine.now_ms();
        if status.pending() > 0 {
            // Still trying what it has: the quiet starts when that is parked.
            channel.probed_ms.store(now, Ordering::Relaxed);
            return;
        }
        if status.dlq_depth() == 0
            || now - channel.probed_ms.load(Ordering::Relaxed) < channel.probe_every_ms
        {
            return;
        }
        channel.probed_ms.store(now, Ordering::Relaxed);
        self.replay_dead_letters(
            channel,
            "channel not healthy with nothing to send: its dead letters are the probe",
        )
        .await;
    }

    /// Runs `refresh` as the channel's one resync or dead-letter replay: refused while
    /// another runs; the broadcaster releases the claim once the last slice is offered,
    /// and it is released here if `refresh` fails before that.
    async fn claimed<T, F, Fut>(&self, channel: &Channel, refresh: F) -> Result<T, ChannelError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, ChannelError>>,
    {
        if !channel.status.start_refreshing() {
            return Err(ChannelError::Busy(channel.config.id.clone()));
        }
        let result = refresh().await;
        if result.is_err() {
            channel.status.set_refreshing(false);
        }
        result
    }

    pub fn stop(&self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }

    fn find(&self, id: &str) -> Result<&Channel, ChannelError> {
        self.channels
            .iter()
            .find(|c| c.config.id == id)
            .ok_or_else(|| ChannelError::UnknownChannel(id.to_string()))
    }

    fn publisher(&self, id: &str) -> Result<(&Channel, &Addr<Publisher>, usize), ChannelError> {
        let channel = self.find(id)?;
        match &channel.publisher {
            Some((addr, index)) => Ok((channel, addr, *index)),
            None => Err(ChannelError::NoSink(id.to_string())),
        }
    }

    /// Seconds since the oldest change a channel has not had delivered (0 when caught up).
    fn lag_seconds(&self, status: &ChannelStatus) -> f64 {
        let cursor = status.cursor();
        if cursor >= self.engine.journal().head() {
            return 0.0;
        }
        match self.engine.read_log(cursor, 1) {
            Ok(entries) => entries
                .first()
                .map_or(0.0, |(_, record): &(u64, JournalRecord)| {
                    ((self.engine.now_ms() - record.recorded_at_ms).max(0) as f64) / 1000.0
                }),
            Err(_) => 0.0,
        }
    }

    pub fn reports(&self) -> Vec<ChannelReport> {
        self.channels
            .iter()
            .map(|c| {
                let status = &c.status;
                let with_sink = c.publisher.is_some();
                ChannelReport {
                    id: status.id.clone(),
                    sink: status.sink,
                    state: status.state_name(),
                    lag_seconds: if with_sink {
                        self.lag_seconds(status)
                    } else {
                        0.0
                    },
                    pending: status.pending(),
                    dlq_depth: status.dlq_depth(),
                    cursor_seq: if with_sink {
                        status.cursor()
                    } else {
                        self.engine.journal().head()
                    },
                    drift: status.drift(),
                    last_error: status.last_error(),
                    last_delivery_ms: status.last_delivery_ms(),
                }
            })
            .collect()
    }

    pub fn report(&self, id: &str) -> Result<ChannelReport, ChannelError> {
        self.find(id)?;
        Ok(self
            .reports()
            .into_iter()
            .find(|r| &*r.id == id)
            .expect("found above"))
    }

    fn update_gauges(&self) {
        let metrics = &self.engine.metrics;
        for channel in self.channels.iter().filter(|c| c.publisher.is_some()) {
            let status = &channel.status;
            let id = &*status.id;
            metrics
                .channel_lag_seconds
                .with_label_values(&[id])
                .set(self.lag_seconds(status).round() as i64);
            metrics
                .channel_pending
                .with_label_values(&[id])
                .set(i64::try_from(status.pending()).unwrap_or(i64::MAX));
            metrics
                .channel_dlq_depth
                .with_label_values(&[id])
                .set(i64::try_from(status.dlq_depth()).unwrap_or(i64::MAX));
            metrics
                .channel_drift
                .with_label_values(&[id])
                .set(i64::try_from(status.drift()).unwrap_or(i64::MAX));
        }
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<ChannelReport, ChannelError> {
        let (_, publisher, _) = self.publisher(id)?;
        publisher
            .send(SetPaused(paused))
            .await
            .map_err(|e| ChannelError::Unavailable(e.to_string()))?;
        self.report(id)
    }

    /// Publishes every SKU's current view to the channel (onboarding, repair).
    /// Returns how many SKUs were queued.
    pub async fn resync(&self, id: &str) -> Result<usize, ChannelError> {
        let (channel, _, index) = self.publisher(id)?;
        self.claimed(channel, || self.resync_claimed(channel, id, index))
            .await
    }

    async fn resync_claimed(
        &self,
        channel: &Channel,
        id: &str,
        index: usize,
    ) -> Result<usize, ChannelError> {
        let locations: Vec<Arc<str>> = channel
            .config
            .locations
            .iter()
            .filter_map(|l| self.engine.location(l).cloned())
            .collect();
        let skus = self
            .engine
            .list_skus(&locations)
            .await
            .map_err(|e| ChannelError::Unavailable(e.to_string()))?;
        let count = skus.len();
        // Durable before it is answered: a crash before delivery re-offers them.
        for slice in skus.chunks(OWED_WRITE_MAX) {
            let mut write = LedgerWrite::new();
            for sku in slice {
                write.owed(id, sku);
            }
            self.engine
                .try_write_ledger(write)
                .await
                .map_err(|e| ChannelError::Unavailable(e.to_string()))?;
        }
        self.refresh(index, skus).await?;
        Ok(count)
    }

    /// Re-delivers from the log (every SKU changed at `from_seq` or later, at its
    /// current value) or the dead-letter queue (its SKUs, at their current values).
    /// Either is durable before this returns: a crash before delivery resumes it.
    /// Returns the SKUs queued for dead letters, `None` for a log replay.
    pub async fn replay(&self, id: &str, from: ReplayFrom) -> Result<Option<usize>, ChannelError> {
        let (channel, publisher, index) = self.publisher(id)?;
        let broadcaster = self.broadcaster()?;
        match from {
            ReplayFrom::Seq(from_seq) => {
                broadcaster
                    .send(Rewind {
                        target: index,
                        after_seq: from_seq.saturating_sub(1),
                    })
                    .await
                    .map_err(|e| ChannelError::Unavailable(e.to_string()))?
                    .map_err(ChannelError::Unavailable)?;
                Ok(None)
            }
            ReplayFrom::DeadLetters => {
                self.claimed(channel, || async {
                    let skus = publisher
                        .send(TakeDeadLetters)
                        .await
                        .map_err(|e| ChannelError::Unavailable(e.to_string()))?
                        .map_err(ChannelError::Unavailable)?;
                    let count = skus.len();
                    self.refresh(index, skus).await?;
                    Ok(Some(count))
                })
                .await
            }
        }
    }

    fn broadcaster(&self) -> Result<&Addr<Broadcaster>, ChannelError> {
        self.broadcaster
            .as_ref()
            .ok_or_else(|| ChannelError::Unavailable("no channel has a sink".into()))
    }

    async fn refresh(&self, target: usize, skus: Vec<Arc<str>>) -> Result<(), ChannelError> {
        self.broadcaster()?
            .send(Refresh { target, skus })
            .await
            .map_err(|e| ChannelError::Unavailable(e.to_string()))
    }

    /// The publication ledger: what the channel last acknowledged for `sku`.
    pub fn published(&self, id: &str, sku: &str) -> Result<Option<PublishedRecord>, ChannelError> {
        self.find(id)?;
        Ok(self.engine.published(id, sku)?)
    }

    /// The value the channel should have for `sku` now.
    pub async fn current_value(&self, id: &str, sku: &str) -> Result<u64, ChannelError> {
        let channel = self.find(id)?;
        self.value_of(&channel.config, sku).await
    }

    async fn value_of(&self, config: &ChannelConfig, sku: &str) -> Result<u64, ChannelError> {
        let locations: Vec<Arc<str>> = config
            .locations
            .iter()
            .filter_map(|l| self.engine.location(l).cloned())
            .collect();
        let readouts = self
            .engine
            .read_sku(sku, Some(&locations), None)
            .await
            .map_err(|e| ChannelError::Unavailable(e.to_string()))?;
        let views: Vec<PositionView> = readouts
            .iter()
            .map(|r| PositionView {
                version: r.version,
                available: r.available(),
                commitments: r.commitments.clone(),
            })
            .collect();
        Ok(Policy::of(config).apply(summed_view(&config.id, &views)))
    }

    /// Compares the ledger with the current view of every SKU the channel sells and
    /// counts SKUs that have differed for longer than the channel's grace period.
    async fn check_drift(
        &self,
        index: usize,
        seen: &mut HashMap<Arc<str>, i64>,
    ) -> Result<(), ChannelError> {
        let channel = &self.channels[index];
        if channel.publisher.is_none() {
            return Ok(());
        }
        let locations: Vec<Arc<str>> = channel
            .config
            .locations
            .iter()
            .filter_map(|l| self.engine.location(l).cloned())
            .collect();
        let skus = self
            .engine
            .list_skus(&locations)
            .await
            .map_err(|e| ChannelError::Unavailable(e.to_string()))?;
        let now = self.engine.now_ms();
        let mut drifting: HashMap<Arc<str>, i64> = HashMap::new();
        // Spread over up to half the period, so a large catalogue's check is a trickle
        // of reads beside reservations, not a burst.
        let slices = skus.len().div_ceil(DRIFT_READS).max(1) as u32;
        let half_period = Duration::from_secs(self.engine.config.drift_check_seconds) / 2;
        let pause = (half_period / slices).min(DRIFT_PAUSE_MAX);
        for (index, slice) in skus.chunks(DRIFT_READS).enumerate() {
            if index > 0 {
                tokio::time::sleep(pause).await;
            }
            let values =
                join_all(slice.iter().map(|sku| self.value_of(&channel.config, sku))).await;
            for (sku, value) in slice.iter().zip(values) {
                let value = value?;
                let published = self.published(&channel.config.id, sku)?;
                let differs = match published {
                    Some(record) => record.available != value,
                    None => value > 0,
                };
                if differs && drifting.len() < DRIFT_TRACKED_MAX {
                    let since = seen.get(sku).copied().unwrap_or(now);
                    drifting.insert(sku.clone(), since);
                }
            }
        }
        let count = drifting
            .values()
            .filter(|since| now - **since >= channel.drift_grace_ms)
            .count();
        *seen = drifting;
        channel.status.drift.store(count as u64, Ordering::Relaxed);
        self.engine
            .metrics
            .channel_drift
            .with_label_values(&[&channel.config.id])
            .set(count as i64);
        Ok(())
    }
}

/// How long a sink may keep retrying one batch before parking it: every backoff plus
/// every timeout.
fn retry_budget_ms(retry: &Retry, sink: &SinkConfig) -> i64 {
    let timeout = match sink {
        SinkConfig::Webhook { timeout_ms, .. } | SinkConfig::Nats { timeout_ms, .. } => *timeout_ms,
        SinkConfig::File { .. } => 0,
    };
    let mut total = Duration::ZERO;
    for attempt in 1..retry.max_attempts {
        let exponent = (attempt - 1).min(30);
        total += retry
            .backoff
            .saturating_mul(1u32 << exponent)
            .min(retry.backoff_max);
    }
    total += Duration::from_millis(timeout).saturating_mul(retry.max_attempts);
    i64::try_from(total.as_millis()).unwrap_or(i64::MAX)
}
