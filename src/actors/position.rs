//! One SKU-location: owns its [`Position`] and serializes every command on
//! it through its mailbox. A command is decided and evolved, its entries are
//! queued to the journal, and it is answered only once they are durable.
//! Appends are pipelined: the next command is decided while earlier appends
//! are in flight. That is safe because the journal is FIFO and fail-stop (an
//! entry is durable only if every entry queued before it is), and because
//! snapshots are written through the same queue, after the entries whose
//! effects they contain.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::messages::{Exec, ExecError, ExecOutcome, Finish, PositionReadout};

use super::{PositionKey, Shared};
use crate::domain::{EventKind, Position, Reject, ReservationId};
use crate::storage::records::{
    position_key, EntrySummary, ExceptionKind, ExceptionRecord, JournalRecord,
};
use crate::storage::replay::load_position;
use crate::storage::{codec, seq_key, Entry, Space, StorageError, Ticket};

/// A position without a live actor.
#[derive(Debug, Clone, Default)]
pub struct ColdEntry {
    pub position: Position,
    pub last_seq: u64,
    /// Changed since the last snapshot.
    pub dirty: bool,
}

/// What a position actor needs of the shard that owns it (and holds its
/// address): whether messages for it are still on their way, and where to
/// park its state when it passivates. A trait, so this module does not
/// depend on the shard's (the shard depends on this one).
pub(super) trait Parking {
    fn in_flight(&self, key: &PositionKey) -> u32;
    /// Called by a passivating actor: its state becomes cold again.
    fn park(&mut self, key: PositionKey, entry: ColdEntry);
}

pub struct PositionActor {
    key: PositionKey,
    position: Position,
    last_seq: u64,
    dirty: bool,
    /// In-memory state ran ahead of a failed journal write: refuse everything.
    poisoned: bool,
    /// Journal appends sent and not yet durable (pipelined); decremented by
    /// whoever awaits them.
    appends_in_flight: Arc<AtomicU32>,
    last_used_ms: i64,
    shared: Arc<Shared>,
    shard: Rc<RefCell<dyn Parking>>,
}

impl PositionActor {
    pub(super) fn new(
        key: PositionKey,
        entry: ColdEntry,
        shared: Arc<Shared>,
        shard: Rc<RefCell<dyn Parking>>,
    ) -> PositionActor {
        PositionActor {
            key,
            position: entry.position,
            last_seq: entry.last_seq,
            dirty: entry.dirty,
            poisoned: false,
            appends_in_flight: Arc::new(AtomicU32::new(0)),
            last_used_ms: shared.clock.now_ms(),
            shared,
            shard,
        }
    }

    pub(super) fn readout(&self, hold_of: Option<&ReservationId>) -> PositionReadout {
        readout(&self.key, &self.position, hold_of)
    }

    /// Decides and evolves `exec`, returning the encoded journal entries.
    fn prepare(&mut self, exec: &mut Exec) -> Result<(Vec<Entry>, ExecOutcome), ExecError> {
        let events = self.position.decide(&exec.command)?;
        // From here on state changes: any failure leaves memory ahead of
        // the journal, so the actor is poisoned until restarted.
        let result = self.apply_decided(exec, events);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn apply_decided(
        &mut self,
        exec: &mut Exec,
        events: Vec<crate::domain::Event>,
    ) -> Result<(Vec<Entry>, ExecOutcome), ExecError> {
        let was_oversold = self.position.is_oversold();
        let is_new = self.position.version == 0;
        let recorded_at_ms = self.shared.clock.now_ms();
        let mut entries = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            self.position.evolve(event).map_err(|error| {
                tracing::error!(%error, sku = %self.key.sku, "decided event did not apply");
                self.poisoned = true;
                ExecError::Storage(StorageError::Codec(error.to_string()))
            })?;
            let event_id = match index {
                0 => exec.meta.event_id.clone(),
                n => format!("{}.{n}", exec.meta.event_id),
            };
            let record = JournalRecord {
                sku: self.key.sku.to_string(),
                location: self.key.location.to_string(),
                event: event.clone(),
                version: self.position.version,
                counters: self.position.counters,
                event_id,
                source: exec.meta.source.to_string(),
                correlation_id: exec.meta.correlation_id.to_string(),
                occurred_at_ms: exec.meta.occurred_at_ms,
                recorded_at_ms,
                commitments: self
                    .position
                    .commitments
                    .iter()
                    .filter(|c| c.remaining() > 0)
                    .map(|c| (c.channel.clone(), c.remaining()))
                    .collect(),
            };
            let bytes = codec::encode(&record)?;
            let summary = EntrySummary {
                sku: self.key.sku.clone(),
                location: self.key.location.clone(),
                version: record.version,
                counters: record.counters,
                // The record is done with once encoded.
                commitments: record.commitments,
                recorded_at_ms,
            };
            entries.push(Entry {
                bytes,
                summary: Some(Arc::new(summary)),
            });
            if event.kind == EventKind::Oversold {
                self.record_oversold(exec, recorded_at_ms)?;
            }
        }
        if !events.is_empty() {
            self.dirty = true;
        }
        if exec.dedupe {
            let marker = codec::encode(&EventIdMarker {
                location: self.key.location.to_string(),
                version: self.position.version,
                content: exec.content,
            })?;
            exec.extra
                .put(Space::EventIds, exec.meta.event_id.as_bytes(), marker);
        }
        if is_new && !events.is_empty() {
            let total = self.shared.positions.fetch_add(1, Ordering::Relaxed) + 1;
            self.shared.metrics.positions.set(total);
        }
        let oversold = self.position.is_oversold();
        if oversold != was_oversold {
            let change = if oversold { 1 } else { -1 };
            let total = self
                .shared
                .oversold_positions
                .fetch_add(change, Ordering::Relaxed)
                + change;
            self.shared.metrics.oversold_positions.set(total);
        }
        let outcome = ExecOutcome {
            first_seq: None,
            events,
            counters: self.position.counters,
            version: self.position.version,
            duplicate: false,
        };
        Ok((entries, outcome))
    }

    /// Reloads this position from its snapshot and the journal (the
    /// supervisor's restart); stays poisoned if even that fails.
    fn restart_from_durable(&mut self) {
        if self.appends_in_flight.load(Ordering::Acquire) > 0 {
            // Durable state would miss the appends still in flight.
            tracing::error!(sku = %self.key.sku, "position actor failed with appends in flight; poisoned");
            self.poisoned = true;
            return;
        }
        match load_position(&*self.shared.store, &self.key.sku, &self.key.location) {
            Ok((position, last_seq)) => {
                tracing::error!(sku = %self.key.sku, location = %self.key.location, last_seq, "position actor failed, restarted from durable state");
                self.position = position;
                self.last_seq = last_seq;
                self.poisoned = false;
            }
            Err(error) => {
                tracing::error!(%error, sku = %self.key.sku, "position actor failed and could not reload");
                self.poisoned = true;
            }
        }
    }

    fn record_oversold(&self, exec: &mut Exec, at_ms: i64) -> Result<(), StorageError> {
        let id = self.shared.new_exception_id();
        let record = ExceptionRecord {
            id,
            sku: Some(self.key.sku.to_string()),
            location: Some(self.key.location.to_string()),
            event_id: Some(exec.meta.event_id.clone()),
            source: Some(exec.meta.source.to_string()),
            ..ExceptionRecord::new(
                ExceptionKind::Oversold,
                "oversold",
                format!(
                    "available is {} after {}",
                    self.position.available(),
                    exec.meta.event_id
                ),
                exec.meta.correlation_id.to_string(),
                at_ms,
            )
        };
        exec.extra
            .put(Space::Exceptions, seq_key(id), codec::encode(&record)?);
        Ok(())
    }

    /// True when `exec`'s event id was applied before with the same content
    /// (or content not known then); a refusal when it was applied with other
    /// content.
    fn is_duplicate(&self, exec: &Exec) -> Result<bool, ExecError> {
        if !exec.dedupe {
            return Ok(false);
        }
        let Some(marker) = self
            .shared
            .store
            .get(Space::EventIds, exec.meta.event_id.as_bytes())?
        else {
            return Ok(false);
        };
        // Markers written before fingerprints were kept do not decode as one
        // with a fingerprint: their content is not known.
        let before = codec::decode::<EventIdMarker>(&marker)
            .ok()
            .and_then(|m| m.content);
        match (before, exec.content) {
            (Some(before), Some(now)) if before != now => {
                Err(ExecError::Reject(Reject::InvalidState(format!(
                    "event id {} was applied before with other content",
                    exec.meta.event_id
                ))))
            }
            _ => Ok(true),
        }
    }

    fn unchanged(&self) -> ExecOutcome {
        ExecOutcome {
            first_seq: None,
            events: Vec::new(),
            counters: self.position.counters,
            version: self.position.version,
            duplicate: false,
        }
    }

    /// Stops the actor and parks its state in the shard when nothing is
    /// routed to it (`in_flight == 0`, so its mailbox is empty).
    fn passivate_if_idle(&mut self, ctx: &mut Context<Self>) {
        let idle_ms = self.shared.clock.now_ms() - self.last_used_ms;
        if self.poisoned || idle_ms < self.shared.passivate_after_ms as i64 {
            return;
        }
        let mut shard = self.shard.borrow_mut();
        if shard.in_flight(&self.key) > 0 {
            return;
        }
        shard.park(
            self.key.clone(),
            ColdEntry {
                position: std::mem::take(&mut self.position),
                last_seq: self.last_seq,
                dirty: self.dirty,
            },
        );
        ctx.stop();
    }
}

pub(super) fn readout(
    key: &PositionKey,
    position: &Position,
    hold_of: Option<&ReservationId>,
) -> PositionReadout {
    PositionReadout {
        location: key.location.clone(),
        counters: position.counters,
        version: position.version,
        commitments: position
            .commitments
            .iter()
            .map(|c| (c.channel.clone(), c.remaining()))
            .collect(),
        hold: hold_of.and_then(|id| position.holds.get(id).cloned()),
    }
}

impl Actor for PositionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Only the shard sends here, one message per routed request; the
        // shard's own bound (its mailbox) is what callers wait on.
        ctx.set_mailbox_capacity(1024);
        // On a manual clock the test asks ([`CheckIdle`]); no real-time timer.
        if !self.shared.clock.is_manual() {
            let check_every =
                Duration::from_millis((self.shared.passivate_after_ms / 4).clamp(50, 30_000));
            ctx.run_interval(check_every, |actor, ctx| actor.passivate_if_idle(ctx));
        }
    }
}

/// Passivate now if idle long enough (what the timer does on the system clock).
pub(super) struct CheckIdle;

impl Message for CheckIdle {
    type Result = ();
}

impl Handler<CheckIdle> for PositionActor {
    type Result = ();

    fn handle(&mut self, _: CheckIdle, ctx: &mut Context<Self>) {
        self.passivate_if_idle(ctx);
    }
}

/// What `Space::EventIds` keeps for an applied event id: where and at which
/// version it was applied, and its content's fingerprint (`None`: not kept).
#[derive(serde::Serialize, serde::Deserialize)]
struct EventIdMarker {
    location: String,
    version: u64,
    content: Option<u64>,
}

/// An [`Exec`] routed by the shard: answered at once with the decided outcome
/// and the append to await.
pub(super) struct Run(pub Exec);

impl Message for Run {
    type Result = Result<Pending, ExecError>;
}

impl Handler<Run> for PositionActor {
    type Result = MessageResult<Run>;

    fn handle(&mut self, Run(mut exec): Run, _ctx: &mut Context<Self>) -> Self::Result {
        self.last_used_ms = self.shared.clock.now_ms();
        MessageResult(self.execute(&mut exec))
    }
}

impl PositionActor {
    /// Decides, evolves and queues the append; the caller awaits the returned
    /// [`Pending`] for durability, so this actor never holds a future per append.
    fn execute(&mut self, exec: &mut Exec) -> Result<Pending, ExecError> {
        if self.poisoned {
            return Err(ExecError::Storage(StorageError::Poisoned));
        }
        if self.is_duplicate(exec)? {
            let mut outcome = self.unchanged();
            outcome.duplicate = true;
            return Ok(Pending::ready(outcome));
        }
        // Take a journal slot before touching state, so a full queue refuses
        // the command with the state unchanged.
        let shared = self.shared.clone();
        let permit = shared.journal.reserve()?;
        // A panic here is a bug; it must not take the shard's thread (and
        // every other position on it) down. The state may be half-changed,
        // so the actor restarts from its durable state.
        let prepared =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.prepare(exec)));
        let (entries, outcome) = match prepared {
            Ok(Ok(prepared)) => prepared,
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                drop(permit);
                self.restart_from_durable();
                return Err(ExecError::Storage(StorageError::Codec(
                    "internal error on this position; it was restarted from durable state"
                        .to_string(),
                )));
            }
        };
        if let Some(Finish(finish)) = exec.finish.take() {
            finish(&outcome, &mut exec.extra);
        }
        if entries.is_empty()
            && exec.extra.is_empty()
            && self.appends_in_flight.load(Ordering::Acquire) == 0
        {
            return Ok(Pending::ready(outcome));
        }
        // Appends are pipelined: the next command is decided on this state
        // while this append is in flight. The journal commits in order and is
        // fail-stop, so a later entry is durable only if this one is, and the
        // caller is answered only once it is. A no-op answered while earlier
        // appends are in flight goes through the journal too, to be answered
        // after them.
        let count = entries.len() as u64;
        self.appends_in_flight.fetch_add(1, Ordering::AcqRel);
        let ticket = permit.send(entries, std::mem::take(&mut exec.extra));
        Ok(Pending {
            outcome,
            durable: Some((ticket, count, self.appends_in_flight.clone())),
        })
    }
}

/// A decided command whose journal append may still be in flight: await
/// [`Pending::durable`] for the outcome. Must not be dropped unawaited by a
/// caller that answers anyone.
#[must_use = "a change is acknowledged only once durable"]
pub struct Pending {
    outcome: ExecOutcome,
    /// The append's ticket, its entry count, and the actor's count of appends
    /// in flight (decremented when it resolves).
    durable: Option<(Ticket, u64, Arc<AtomicU32>)>,
}

impl Pending {
    fn ready(outcome: ExecOutcome) -> Pending {
        Pending {
            outcome,
            durable: None,
        }
    }

    /// The outcome, once its entries are durable.
    pub async fn durable(self) -> Result<ExecOutcome, ExecError> {
        let mut outcome = self.outcome;
        let Some((ticket, count, in_flight)) = self.durable else {
            return Ok(outcome);
        };
        let result = ticket.await;
        in_flight.fetch_sub(1, Ordering::AcqRel);
        let first_seq = result?;
        if count > 0 {
            outcome.first_seq = Some(first_seq);
        }
        Ok(outcome)
    }
}

/// A read of this position (and optionally one reservation's hold on it).
pub(super) struct Read {
    pub hold_of: Option<ReservationId>,
}

impl Message for Read {
    type Result = PositionReadout;
}

impl Handler<Read> for PositionActor {
    type Result = MessageResult<Read>;

    fn handle(&mut self, read: Read, _ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.readout(read.hold_of.as_ref()))
    }
}

/// Copy the state for a snapshot if it changed since the last one.
pub(super) struct TakeSnapshot {
    pub full: bool,
}

/// `Err` for a poisoned actor: its state is not durable, so no snapshot may
/// claim to cover it.
impl Message for TakeSnapshot {
    type Result = Result<Option<(Position, u64)>, ()>;
}

impl Handler<TakeSnapshot> for PositionActor {
    type Result = MessageResult<TakeSnapshot>;

    fn handle(&mut self, take: TakeSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        if self.poisoned {
            return MessageResult(Err(()));
        }
        if !(self.dirty || take.full) {
            return MessageResult(Ok(None));
        }
        self.dirty = false;
        // Informational: the newest durable entry when the snapshot was taken.
        self.last_seq = self.last_seq.max(self.shared.journal.head());
        MessageResult(Ok(Some((self.position.clone(), self.last_seq))))
    }
}

/// The store key of this actor's position.
pub(super) fn store_key(key: &PositionKey) -> Vec<u8> {
    position_key(&key.sku, &key.location)
}
