//! One actor per channel with a sink: coalesces pending updates per SKU, delivers one
//! batch at a time (so per-SKU order holds), retries with backoff, parks a batch in the
//! dead-letter queue after `max_attempts`, and records what the channel acknowledged.

// foldhash: a fast, randomly seeded hasher; these maps are keyed by SKU and touched
// once or more per journal entry, where SipHash showed in profiles.
use foldhash::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::sink::{Batch, Retry, Sink};
use super::status::{ChannelState, ChannelStatus};
use super::Update;
use crate::engine::Engine;
use crate::storage::ledger::{Cursor, DeadLetter, LedgerWrite, PublishedRecord};

/// Offers queued in a publisher's mailbox at most; a full mailbox makes the
/// broadcaster hold that channel back (it catches up from the journal).
pub const MAILBOX_CAPACITY: usize = 64;

/// Consecutive failed attempts after which a channel is `down` (before: `degraded`).
const DOWN_AFTER_FAILURES: u32 = 3;

/// How often the cursor is made durable when only `received_through` moved.
const CURSOR_FLUSH: Duration = Duration::from_millis(500);

/// SKUs taken out of the dead-letter queue per replay request (whole letters, at least
/// one), so one replay is one bounded write.
pub const DLQ_REPLAY_SKUS_MAX: usize = 10_000;

/// After a restart batch numbers (file names, X12 control numbers) skip this far ahead:
/// a batch handed to its sink just before a crash may not have its number on disk yet,
/// and a number must never be used twice.
pub const RESTART_BATCH_GAP: u64 = 16;

/// New values for a channel, in journal order; `through_seq` is the last journal entry
/// the broadcaster has looked at for this channel (0 for refreshes).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Offer {
    pub through_seq: u64,
    pub updates: Vec<Update>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SetPaused(pub bool);

/// The broadcaster re-reads the journal after `after_seq` for this channel (replay):
/// the durable cursor moves back there, so a crash before the replay is delivered
/// resumes it rather than losing it.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Rewound {
    pub after_seq: u64,
}

/// Takes dead letters (about [`DLQ_REPLAY_SKUS_MAX`] SKUs) out of the queue and returns their SKUs
/// (the caller re-publishes their current values).
#[derive(Message)]
#[rtype(result = "Result<Vec<Arc<str>>, String>")]
pub struct TakeDeadLetters;

struct InFlight {
    batch: Batch,
    attempts: u32,
    sending: bool,
    retry_at: Option<Instant>,
}

pub struct Publisher {
    status: Arc<ChannelStatus>,
    engine: Arc<Engine>,
    sink: Box<dyn Sink>,
    retry: Retry,
    coalesce: Duration,
    pending: HashMap<Arc<str>, Update>,
    in_flight: Option<InFlight>,
    received_through: u64,
    cursor: Cursor,
    cursor_written: Instant,
    /// When the current coalescing round started: a round sends what was pending at
    /// its start, in batches of at most `batch_max`, back to back; the next round
    /// starts `coalesce` after this one did. So each SKU is sent at most once per
    /// window, however many SKUs change.
    round_started: Option<Instant>,
    /// SKUs of the current round not yet taken into a batch.
    round_left: usize,
    consecutive_failures: u32,
    wake: Option<(Instant, SpawnHandle)>,
}

impl Publisher {
    pub fn new(
        status: Arc<ChannelStatus>,
        engine: Arc<Engine>,
        sink: Box<dyn Sink>,
        retry: Retry,
        coalesce: Duration,
        stored: Option<Cursor>,
    ) -> Publisher {
        // Resumed: batch numbers skip ahead (see RESTART_BATCH_GAP). New: the cursor is
        // written before the first batch (`started`), so a crash always finds one.
        let cursor = match stored {
            Some(cursor) => Cursor {
                batches: cursor.batches.saturating_add(RESTART_BATCH_GAP),
                ..cursor
            },
            None => Cursor::default(),
        };
        Publisher {
            status,
            engine,
            sink,
            retry,
            coalesce,
            pending: HashMap::default(),
            in_flight: None,
            received_through: cursor.cursor_seq,
            cursor,
            cursor_written: Instant::now(),
            round_started: None,
            round_left: 0,
            consecutive_failures: 0,
            wake: None,
        }
    }

    fn id(&self) -> &str {
        &self.status.id
    }

    fn merge(&mut self, update: Update) {
        match self.pending.get_mut(&update.sku) {
            Some(existing) => {
                let first_seq = match (existing.first_seq, update.first_seq) {
                    (0, b) => b,
                    (a, 0) => a,
                    (a, b) => a.min(b),
                };
                let owed = existing.owed || update.owed;
                if update.seq >= existing.seq {
                    *existing = update;
                }
                existing.first_seq = first_seq;
                existing.owed = owed;
            }
            None => {
                self.pending.insert(update.sku.clone(), update);
            }
        }
    }

    fn publish_counts(&self) {
        let in_flight = self.in_flight.as_ref().map_or(0, |f| f.batch.updates.len());
        self.status.set_pending(self.pending.len() + in_flight);
    }

    /// Every change up to here is delivered, superseded or parked.
    fn low_watermark(&self) -> u64 {
        let in_flight = self.in_flight.iter().flat_map(|f| f.batch.updates.iter());
        self.pending
            .values()
            .chain(in_flight)
            .filter(|u| u.first_seq > 0)
            .map(|u| u.first_seq - 1)
            .fold(self.received_through, u64::min)
    }

    /// Schedules `poll` at `at` (keeping the earliest wake-up).
    fn wake_at(&mut self, at: Instant, ctx: &mut Context<Self>) {
        if let Some((when, handle)) = self.wake {
            if when <= at {
                return;
            }
            ctx.cancel_future(handle);
        }
        let delay = at.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(delay, |act, ctx| {
            act.wake = None;
            act.poll(ctx);
        });
        self.wake = Some((at, handle));
    }

    /// Starts the next attempt if there is something to send and nothing stops it.
    fn poll(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let paused = self.status.is_paused();
        if let Some(in_flight) = &self.in_flight {
            if in_flight.sending || paused {
                return;
            }
            if let Some(at) = in_flight.retry_at.filter(|at| *at > now) {
                self.wake_at(at, ctx);
                return;
            }
            self.refresh_in_flight();
            self.attempt(ctx);
            return;
        }
        if paused || self.pending.is_empty() {
            return;
        }
        // A retry may have taken SKUs out of `pending` into its batch.
        self.round_left = self.round_left.min(self.pending.len());
        if self.round_left == 0 {
            if let Some(started) = self.round_started {
                let due = started + self.coalesce;
                if due > now {
                    self.wake_at(due, ctx);
                    return;
                }
            }
            self.round_started = Some(now);
            self.round_left = self.pending.len();
        }
        let batch = self.take_batch();
        self.round_left = self.round_left.saturating_sub(batch.updates.len());
        // Circuit open (down): a new batch is the next probe, at the capped back-off.
        let retry_at =
            (self.status.state() == ChannelState::Down).then(|| now + self.retry.backoff_max);
        self.in_flight = Some(InFlight {
            batch,
            attempts: 0,
            sending: false,
            retry_at,
        });
        match retry_at {
            Some(at) => self.wake_at(at, ctx),
            None => self.attempt(ctx),
        }
    }

    /// The oldest pending updates (by first unacknowledged seq), at most `batch_max`.
    fn take_batch(&mut self) -> Batch {
        let mut skus: Vec<(u64, Arc<str>)> = self
            .pending
            .values()
            .map(|u| (u.first_seq, u.sku.clone()))
            .collect();
        if skus.len() > self.retry.batch_max {
            skus.select_nth_unstable(self.retry.batch_max - 1);
            skus.truncate(self.retry.batch_max);
        }
        skus.sort_unstable();
        let updates = skus
            .into_iter()
            .filter_map(|(_, sku)| self.pending.remove(&sku))
            .collect();
        self.cursor.batches += 1;
        // With partition groups each group's owner publishes its own SKUs and
        // counts its own batches: group g of G numbers them n * G + g, so two
        // groups never send one id (file names, X12 control numbers).
        let (groups, group) = self
            .engine
            .config
            .cluster
            .as_ref()
            .map_or((1, 0), |c| (u64::from(c.groups.max(1)), u64::from(c.group)));
        Batch {
            id: self
                .cursor
                .batches
                .saturating_mul(groups)
                .saturating_add(group),
            channel: self.status.id.to_string(),
            updates,
        }
    }

    /// Before a retry, newer values of the batch's SKUs replace the stale ones:
    /// availability is a level, re-sending an old value helps nobody.
    fn refresh_in_flight(&mut self) {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        for update in &mut in_flight.batch.updates {
            if let Some(newer) = self.pending.remove(&update.sku) {
                let first_seq = update.first_seq;
                let owed = update.owed || newer.owed;
                *update = newer;
                update.owed = owed;
                if first_seq > 0 && (update.first_seq == 0 || first_seq < update.first_seq) {
                    update.first_seq = first_seq;
                }
            }
        }
    }

    fn attempt(&mut self, ctx: &mut Context<Self>) {
        let Some(in_flight) = self.in_flight.as_mut() else {
            return;
        };
        in_flight.sending = true;
        in_flight.attempts += 1;
        let delivery = self.sink.deliver(in_flight.batch.clone());
        self.publish_counts();
        ctx.spawn(
            delivery
                .into_actor(self)
                .map(|result, act, ctx| act.delivered(result, ctx)),
        );
    }

    fn delivered(&mut self, result: Result<(), String>, ctx: &mut Context<Self>) {
        let Some(mut in_flight) = self.in_flight.take() else {
            return;
        };
        in_flight.sending = false;
        let metrics = &self.engine.metrics;
        match result {
            Ok(()) => {
                metrics
                    .channel_deliveries_total
                    .with_label_values(&[self.id(), "delivered"])
                    .inc();
                self.consecutive_failures = 0;
                self.status.set_state(ChannelState::Healthy);
                self.status.set_last_delivery(self.engine.now_ms());
                let acked_at_ms = self.engine.now_ms();
                let mut write = LedgerWrite::new();
                for update in &in_flight.batch.updates {
                    let record = PublishedRecord {
                        available: update.available,
                        seq: update.seq,
                        acked_at_ms,
                    };
                    if let Err(error) = write.published(self.id(), &update.sku, &record) {
                        tracing::error!(channel = self.id(), %error, "ledger record not encoded");
                    }
                    if update.owed {
                        write.paid(self.id(), &update.sku);
                    }
                }
                self.persist(write, ctx);
            }
            Err(error) => {
                metrics
                    .channel_deliveries_total
                    .with_label_values(&[self.id(), "failed"])
                    .inc();
                self.consecutive_failures += 1;
                let state = if self.consecutive_failures >= DOWN_AFTER_FAILURES {
                    ChannelState::Down
                } else {
                    ChannelState::Degraded
                };
                self.status.set_state(state);
                self.status.set_last_error(Some(error.clone()));
                tracing::warn!(
                    channel = self.id(),
                    attempt = in_flight.attempts,
                    batch = in_flight.batch.id,
                    %error,
                    "delivery failed"
                );
                if in_flight.attempts >= self.retry.max_attempts {
                    self.park(in_flight, error, ctx);
                } else {
                    in_flight.retry_at =
                        Some(Instant::now() + self.retry.delay(in_flight.attempts));
                    self.in_flight = Some(in_flight);
                }
            }
        }
        self.publish_counts();
        self.poll(ctx);
    }

    /// Parks a batch that failed `max_attempts` times in the dead-letter queue.
    fn park(&mut self, in_flight: InFlight, error: String, ctx: &mut Context<Self>) {
        self.engine
            .metrics
            .channel_deliveries_total
            .with_label_values(&[self.id(), "dead_lettered"])
            .inc();
        self.cursor.dead_letters += 1;
        let letter = DeadLetter {
            updates: in_flight
                .batch
                .updates
                .iter()
                .map(|u| (u.sku.to_string(), u.available, u.seq, u.at_ms))
                .collect(),
            attempts: in_flight.attempts,
            last_error: error,
            parked_at_ms: self.engine.now_ms(),
        };
        let mut write = LedgerWrite::new();
        match write.dead_letter(self.id(), self.cursor.dead_letters, &letter) {
            Ok(()) => {
                self.status.add_dlq_depth(1);
                // The letter now carries what was owed: one durable debt, not two.
                for update in in_flight.batch.updates.iter().filter(|u| u.owed) {
                    write.paid(self.id(), &update.sku);
                }
            }
            Err(error) => tracing::error!(channel = self.id(), %error, "dead letter not encoded"),
        }
        tracing::error!(
            channel = self.id(),
            batch = in_flight.batch.id,
            updates = letter.updates.len(),
            "batch parked in the dead-letter queue"
        );
        self.persist(write, ctx);
    }

    /// Writes `write` with the current cursor, through the journal (ordered, durable).
    /// The publisher handles nothing else until it is written (`ctx.wait`), so no later
    /// cursor write can make a cursor durable past a ledger or dead-letter write that
    /// has not landed.
    fn persist(&mut self, write: LedgerWrite, ctx: &mut Context<Self>) {
        let written = self.cursor_write(write);
        ctx.wait(
            async move {
                if let Err(error) = written.await {
                    tracing::error!(%error, "publication ledger write failed");
                }
            }
            .into_actor(self),
        );
    }

    /// Adds the current cursor to `write`; the returned future writes it.
    fn cursor_write(
        &mut self,
        mut write: LedgerWrite,
    ) -> impl std::future::Future<Output = Result<(), String>> + 'static {
        self.cursor.cursor_seq = self.low_watermark().max(self.cursor.cursor_seq);
        let encoded = write.cursor(self.id(), &self.cursor);
        self.status.set_cursor(self.cursor.cursor_seq);
        self.cursor_written = Instant::now();
        let engine = self.engine.clone();
        let channel = self.status.id.clone();
        async move {
            encoded.map_err(|e| format!("channel {channel}: cursor not encoded: {e}"))?;
            engine
                .write_ledger(write)
                .await
                .map_err(|e| format!("channel {channel}: {e}"))
        }
    }
}

impl Actor for Publisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        self.status.set_cursor(self.cursor.cursor_seq);
        // Durable before any batch: the batch numbers start from here after a crash.
        self.persist(LedgerWrite::new(), ctx);
        ctx.run_interval(CURSOR_FLUSH, |act, ctx| {
            let low = act.low_watermark();
            if low > act.cursor.cursor_seq && act.cursor_written.elapsed() >= CURSOR_FLUSH {
                act.persist(LedgerWrite::new(), ctx);
            }
            act.poll(ctx);
        });
    }
}

impl Handler<Offer> for Publisher {
    type Result = ();

    fn handle(&mut self, offer: Offer, ctx: &mut Context<Self>) {
        self.received_through = self.received_through.max(offer.through_seq);
        for update in offer.updates {
            self.merge(update);
        }
        self.publish_counts();
        self.poll(ctx);
    }
}

impl Handler<SetPaused> for Publisher {
    type Result = ();

    fn handle(&mut self, SetPaused(paused): SetPaused, ctx: &mut Context<Self>) {
        self.status.set_paused(paused);
        if !paused {
            if let Some(in_flight) = self.in_flight.as_mut() {
                in_flight.retry_at = None;
            }
            self.poll(ctx);
        }
    }
}

impl Handler<Rewound> for Publisher {
    type Result = ResponseFuture<Result<(), String>>;

    fn handle(&mut self, Rewound { after_seq }: Rewound, _ctx: &mut Context<Self>) -> Self::Result {
        // Both, always: the broadcaster re-reads from `after_seq`, so nothing after it
        // may count as received, even when the cursor is already further back.
        self.received_through = self.received_through.min(after_seq);
        self.cursor.cursor_seq = self.cursor.cursor_seq.min(after_seq);
        // Written even when nothing moved, so the answer means "durable".
        Box::pin(self.cursor_write(LedgerWrite::new()))
    }
}

impl Handler<TakeDeadLetters> for Publisher {
    type Result = ResponseFuture<Result<Vec<Arc<str>>, String>>;

    fn handle(&mut self, _: TakeDeadLetters, _ctx: &mut Context<Self>) -> Self::Result {
        let engine = self.engine.clone();
        let status = self.status.clone();
        Box::pin(async move {
            let mut letters = Vec::new();
            let mut sku_count = 0;
            let mut after = 0;
            // A few letters at a time, until about DLQ_REPLAY_SKUS_MAX SKUs.
            'reading: while sku_count < DLQ_REPLAY_SKUS_MAX {
                let page = engine
                    .dead_letters(&status.id, after, 64)
                    .map_err(|e| e.to_string())?;
                if page.is_empty() {
                    break;
                }
                for (id, letter) in page {
                    if sku_count > 0 && sku_count + letter.updates.len() > DLQ_REPLAY_SKUS_MAX {
                        break 'reading;
                    }
                    after = id;
                    sku_count += letter.updates.len();
                    letters.push((id, letter));
                }
            }
            let mut write = LedgerWrite::new();
            let mut skus: Vec<Arc<str>> = Vec::new();
            // In one atomic write, each letter becomes an owed SKU: a crash before the
            // replayed values are delivered re-offers them after the restart.
            for (id, letter) in &letters {
                write.remove_dead_letter(&status.id, *id);
                for (sku, ..) in &letter.updates {
                    write.owed(&status.id, sku);
                    skus.push(Arc::from(sku.as_str()));
                }
            }
            if !write.is_empty() {
                engine
                    .write_ledger(write)
                    .await
                    .map_err(|e| e.to_string())?;
                status.sub_dlq_depth(letters.len() as u64);
            }
            skus.sort_unstable();
            skus.dedup();
            Ok(skus)
        })
    }
}
