//! Transfers between two locations (SPEC §2) as a journaled workflow:
//!
//! ```text
//! held --transfer_out--> shipped --transfer_in--> received
//!   `--cancel--> cancelled          `--(not received in time)--> overdue (still shipped)
//! ```
//!
//! The source's hold is an ordinary position hold (`reserved`, so channels
//! cannot sell it), keyed by [`transfer_hold_id`] so it never meets a
//! reservation; it takes only uncommitted available (see `domain`).
//!
//! Every step is one position change journaled in one append together with
//! the transfer record (and, for a receipt that differs from the shipment,
//! its `transfer_discrepancy` exception), so the record never says more or
//! less than the positions. Shipping changes two positions: the source's
//! append writes the record with `pending: Inbound`, the destination's
//! append (its `in_transit`) clears it. A crash in between leaves the
//! marker; recovery, or the maintenance tick after a refused append, runs
//! the destination step. The same tick raises the one `transfer_overdue`
//! exception of a transfer shipped and not received within
//! `transfer_overdue_seconds`; its deadline is derived from `shipped_at`, so
//! it survives restarts.
//!
//! Each transfer has an async lock, held while a step runs, so steps of one
//! transfer serialize; `transfer_out` / `transfer_in` also hold their event
//! id's claim (`super::events`), and their `event_id` marker lands with the
//! step, so a repeated event is a duplicate forever.

use std::sync::Arc;

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::events::{Applied, EventCommand, WarehouseEvent};
use super::registry::{Claim, Claimable};
use super::{Engine, EngineError, Shortage};
use crate::actors::{Exec, Meta};
use crate::domain::transfer::{plan, Plan, Refusal, Step};
use crate::domain::{transfer_hold_id, Command, Qty};
use crate::storage::records::{
    ExceptionKind, ExceptionRecord, TransferPending, TransferRecord, TransferStatus, TransferStep,
    TransferStepKind,
};
use crate::storage::{codec, seq_key, Space, WriteBatch};

/// Transfers kept in memory: open ones, plus closed ones within
/// `transfer_retention_hours`. At ~1 KiB each, about 1 GiB; beyond it new
/// transfers are refused with 503 rather than growing without limit.
const TRANSFERS_MAX: usize = 1_000_000;
/// A record holds at most one step of each kind (`push_step`): this many.
const HISTORY_MAX: usize = 8;
/// Timers (overdue checks, retries) handled per tick; the rest wait.
const TIMERS_PER_TICK_MAX: usize = 10_000;
/// Timers running at once.
const TIMERS_IN_FLIGHT_MAX: usize = 64;
/// A step the journal refused is retried after this.
const RETRY_AFTER_MS: i64 = 1000;

/// `POST /v1/transfers`, validated at the edge.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub transfer_id: String,
    pub sku: String,
    pub from: String,
    pub to: String,
    pub qty: Qty,
    pub correlation_id: Arc<str>,
}

/// A transfer as answered.
#[derive(Debug, Clone)]
pub struct TransferView {
    pub record: TransferRecord,
    /// When a shipped transfer becomes overdue (`shipped_at` plus the
    /// configured `transfer_overdue_seconds`).
    pub due_at_ms: Option<i64>,
}

impl TransferView {
    /// `held`, `shipped`, `overdue` (shipped, found overdue, not received),
    /// `received` or `cancelled`.
    pub fn status_name(&self) -> &'static str {
        match self.record.status {
            TransferStatus::Shipped if self.record.overdue_at_ms.is_some() => "overdue",
            status => status.as_str(),
        }
    }
}

/// Which end a warehouse event moves, with the location at the other end.
#[derive(Clone, Copy)]
enum Leg<'a> {
    Out { to: &'a str },
    In { from: &'a str },
}

/// Who caused a step: the warehouse event, or the API request.
#[derive(Debug, Clone)]
struct StepMeta {
    event_id: String,
    source: String,
    correlation_id: String,
    occurred_at_ms: i64,
}

impl StepMeta {
    fn api(transfer_id: &str, what: &str, correlation_id: &str, now_ms: i64) -> StepMeta {
        StepMeta {
            event_id: format!("transfer:{transfer_id}:{what}"),
            source: "api".to_string(),
            correlation_id: correlation_id.to_string(),
            occurred_at_ms: now_ms,
        }
    }

    fn meta(&self) -> Meta {
        Meta {
            event_id: self.event_id.clone(),
            source: Arc::from(self.source.as_str()),
            correlation_id: Arc::from(self.correlation_id.as_str()),
            occurred_at_ms: self.occurred_at_ms,
        }
    }
}

/// Appends a step; each kind happens once, which bounds the history.
fn push_step(
    record: &mut TransferRecord,
    kind: TransferStepKind,
    qty: u64,
    location: &str,
    by: &StepMeta,
    at_ms: i64,
) {
    debug_assert!(
        record.history.iter().all(|step| step.kind != kind),
        "step {kind:?} twice in transfer {}",
        record.id
    );
    if record.history.len() >= HISTORY_MAX || record.history.iter().any(|s| s.kind == kind) {
        return;
    }
    record.history.push(TransferStep {
        kind,
        at_ms,
        qty,
        location: location.to_string(),
        event_id: by.event_id.clone(),
        source: by.source.clone(),
        correlation_id: by.correlation_id.clone(),
    });
}

/// A workflow refusal, as answered (`invalid_state`).
fn refused(id: &str, refusal: Refusal) -> EngineError {
    EngineError::InvalidState(format!("transfer {id} {refusal}"))
}

fn request_hash(request: &NewTransfer) -> Vec<u8> {
    let mut hasher = Sha256::new();
    for part in [&request.sku, &request.from, &request.to] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hasher.update(request.qty.get().to_be_bytes());
    hasher.finalize().to_vec()
}

fn record_batch(record: &TransferRecord) -> Result<WriteBatch, EngineError> {
    let mut batch = WriteBatch::default();
    batch.put(
        Space::Transfers,
        record.id.as_bytes(),
        codec::encode(record)?,
    );
    Ok(batch)
}

impl Claimable for TransferRecord {
    const KIND: &'static str = "transfer";

    fn creating(&self) -> bool {
        self.pending == Some(TransferPending::Create)
    }

    fn request_hash(&self) -> &[u8] {
        &self.request_hash
    }
}

impl Engine {
    pub(super) fn install_transfers(&self, records: Vec<TransferRecord>) {
        let overdue_ms = self.transfer_overdue_ms();
        for record in records {
            let id: Arc<str> = Arc::from(record.id.as_str());
            if record.pending == Some(TransferPending::Inbound) {
                self.schedule_transfer(&id, self.now_ms());
            } else if let (TransferStatus::Shipped, None, Some(shipped_at)) =
                (record.status, record.overdue_at_ms, record.shipped_at_ms)
            {
                // Absolute: a deadline that passed while down fires on the first tick.
                self.schedule_transfer(&id, shipped_at.saturating_add(overdue_ms));
            }
            self.transfers.install(id, record);
        }
    }

    fn transfer_overdue_ms(&self) -> i64 {
        self.config.transfer_overdue_seconds.saturating_mul(1000) as i64
    }

    fn schedule_transfer(&self, id: &Arc<str>, at_ms: i64) {
        self.transfer_timers.schedule(at_ms, id.clone());
    }

    fn transfer_cell(
        &self,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<TransferRecord>>, EngineError> {
        self.transfers
            .get(id)
            .ok_or_else(|| EngineError::NotFound(format!("transfer {id} not found")))
    }

    fn transfer_view(&self, record: TransferRecord) -> TransferView {
        let due_at_ms = record
            .shipped_at_ms
            .map(|shipped_at| shipped_at.saturating_add(self.transfer_overdue_ms()));
        TransferView { record, due_at_ms }
    }

    fn configured(&self, location: &str) -> Result<Arc<str>, EngineError> {
        self.location(location)
            .cloned()
            .ok_or_else(|| EngineError::UnknownLocation(format!("unknown location {location}")))
    }

    /// Runs one step on one position of `updated`'s SKU, with `updated` (and
    /// `extra`) in the same append. `dedupe`: the step is a warehouse event,
    /// whose id is marked applied with it.
    async fn exec_step(
        &self,
        updated: &TransferRecord,
        location: &str,
        command: Command,
        by: &StepMeta,
        extra: WriteBatch,
        dedupe: bool,
    ) -> Result<Applied, EngineError> {
        let mut batch = record_batch(updated)?;
        batch.append(extra);
        let outcome = self
            .exec(Exec {
                sku: Arc::from(updated.sku.as_str()),
                location: self.configured(location)?,
                command,
                meta: by.meta(),
                extra: batch,
                finish: None,
                dedupe,
                content: None,
                // The destination may see this SKU for the first time; the
                // source has the stock, so it exists.
                create: location == updated.to,
            })
            .await?;
        Ok(Applied {
            duplicate: outcome.duplicate,
            first_seq: outcome.first_seq,
        })
    }

    /// Creates a transfer: holds `qty` at the source. `Ok((view, true))` when
    /// created (201), `Ok((view, false))` for an existing id with the same
    /// content (200, its current state).
    pub async fn create_transfer(
        &self,
        request: NewTransfer,
    ) -> Result<(TransferView, bool), EngineError> {
        self.configured(&request.from)?;
        self.configured(&request.to)?;
        if request.from == request.to {
            return Err(EngineError::BadRequest(
                "from and to must be different locations".to_string(),
            ));
        }
        if self.transfers.len() >= TRANSFERS_MAX {
            return Err(EngineError::Unavailable(format!(
                "{TRANSFERS_MAX} transfers are open or retained; retry after some close"
            )));
        }
        let hash = request_hash(&request);
        let id: Arc<str> = Arc::from(request.transfer_id.as_str());
        let now = self.now_ms();
        let record = TransferRecord {
            id: id.to_string(),
            sku: request.sku.clone(),
            from: request.from.clone(),
            to: request.to.clone(),
            qty: request.qty.get(),
            status: TransferStatus::Held,
            shipped_qty: None,
            received_qty: None,
            created_at_ms: now,
            updated_at_ms: now,
            shipped_at_ms: None,
            received_at_ms: None,
            overdue_at_ms: None,
            correlation_id: request.correlation_id.to_string(),
            request_hash: hash.clone(),
            pending: Some(TransferPending::Create),
            history: Vec::new(),
        };
        // Claim the id; a concurrent request with it waits for this one.
        let cell = Arc::new(tokio::sync::Mutex::new(record.clone()));
        let mut guard = cell.clone().lock_owned().await;
        match self.transfers.claim_new(&id, &cell, &hash).await? {
            Claim::New => match self.hold_for_transfer(&record, &request).await {
                Ok(held) => {
                    *guard = held.clone();
                    Ok((self.transfer_view(held), true))
                }
                Err(error) => {
                    // Nothing is durable: forget the id (waiters retry).
                    self.transfers.remove(&id);
                    Err(error)
                }
            },
            Claim::Repeat(current) => Ok((self.transfer_view(current), false)),
        }
    }

    /// The source's hold and the record, in one append.
    async fn hold_for_transfer(
        &self,
        record: &TransferRecord,
        request: &NewTransfer,
    ) -> Result<TransferRecord, EngineError> {
        let by = StepMeta::api(&record.id, "hold", &record.correlation_id, self.now_ms());
        let mut held = record.clone();
        held.pending = None;
        push_step(
            &mut held,
            TransferStepKind::Held,
            record.qty,
            &record.from,
            &by,
            record.created_at_ms,
        );
        let command = Command::TransferHold {
            transfer: transfer_hold_id(&record.id),
            qty: request.qty,
        };
        let short = |available: i64| {
            EngineError::Insufficient(vec![Shortage {
                sku: record.sku.clone(),
                location: Some(record.from.clone()),
                requested: record.qty,
                available,
                absent: false,
            }])
        };
        match self
            .exec_step(
                &held,
                &record.from,
                command,
                &by,
                WriteBatch::default(),
                false,
            )
            .await
        {
            Ok(_) => Ok(held),
            // No position at the source: nothing to hold; and a SKU with no
            // position anywhere is `unknown_sku`, as for a reservation line.
            Err(EngineError::NotFound(_)) => match self.read_sku(&record.sku, None, None).await {
                Ok(readouts) if readouts.is_empty() => {
                    Err(EngineError::UnknownSku(record.sku.clone()))
                }
                Ok(_) => Err(short(0)),
                Err(error) => Err(error),
            },
            Err(EngineError::Insufficient(shortages)) => {
                Err(short(shortages.first().map_or(0, |s| s.available)))
            }
            Err(error) => Err(error),
        }
    }

    pub async fn get_transfer(&self, id: &str) -> Result<TransferView, EngineError> {
        let record = self.transfer_cell(id)?.lock().await.clone();
        if record.pending == Some(TransferPending::Create) {
            return Err(EngineError::NotFound(format!("transfer {id} not found")));
        }
        Ok(self.transfer_view(record))
    }

    /// Cancels a held transfer (its hold is released). Cancelling a
    /// cancelled one changes nothing; one that shipped is `invalid_state`.
    pub async fn cancel_transfer(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<TransferView, EngineError> {
        let cell = self.transfer_cell(id)?;
        let mut record = cell.lock().await;
        if record.pending == Some(TransferPending::Create) {
            return Err(EngineError::NotFound(format!("transfer {id} not found")));
        }
        match plan(record.status, Step::Cancel) {
            Ok(Plan::Change { .. }) => {}
            Ok(Plan::Unchanged) => return Ok(self.transfer_view(record.clone())),
            Err(refusal) => return Err(refused(id, refusal)),
        }
        let by = StepMeta::api(id, "cancel", correlation_id, self.now_ms());
        let now = self.now_ms();
        let mut cancelled = record.clone();
        cancelled.status = TransferStatus::Cancelled;
        cancelled.updated_at_ms = now;
        push_step(
            &mut cancelled,
            TransferStepKind::Cancelled,
            record.qty,
            &record.from,
            &by,
            now,
        );
        let command = Command::TransferRelease {
            transfer: transfer_hold_id(id),
        };
        self.exec_step(
            &cancelled,
            &record.from,
            command,
            &by,
            WriteBatch::default(),
            false,
        )
        .await?;
        *record = cancelled;
        Ok(self.transfer_view(record.clone()))
    }

    /// `transfer_out` (at the source) or `transfer_in` (at the destination).
    pub(super) async fn apply_transfer_event(
        &self,
        event: &WarehouseEvent,
        correlation_id: &Arc<str>,
    ) -> Result<Applied, EngineError> {
        // Before the state checks: a repeated event is a duplicate, not a
        // step out of order.
        if self
            .shared
            .store
            .get(Space::EventIds, event.event_id.as_bytes())?
            .is_some()
        {
            return Ok(Applied {
                duplicate: true,
                first_seq: None,
            });
        }
        let (transfer_id, qty, leg) = match &event.command {
            EventCommand::TransferOut {
                transfer_id,
                to,
                qty,
            } => (transfer_id, *qty, Leg::Out { to }),
            EventCommand::TransferIn {
                transfer_id,
                from,
                qty,
            } => (transfer_id, *qty, Leg::In { from }),
            EventCommand::Position(_) => {
                return Err(EngineError::BadRequest("not a transfer event".to_string()))
            }
        };
        match leg {
            Leg::Out { to: other } | Leg::In { from: other } => self.configured(other)?,
        };
        let cell = self.transfer_cell(transfer_id)?;
        let mut record = cell.lock().await;
        let id = record.id.clone();
        if record.pending == Some(TransferPending::Create) {
            return Err(EngineError::NotFound(format!("transfer {id} not found")));
        }
        if record.sku != event.sku {
            return Err(EngineError::InvalidState(format!(
                "transfer {id} moves sku {}, not {}",
                record.sku, event.sku
            )));
        }
        let by = StepMeta {
            event_id: event.event_id.clone(),
            source: event.source.clone(),
            correlation_id: correlation_id.to_string(),
            occurred_at_ms: event.occurred_at_ms.unwrap_or_else(|| self.now_ms()),
        };
        match leg {
            Leg::Out { to } => {
                if event.location != record.from {
                    return Err(EngineError::InvalidState(format!(
                        "transfer {id} ships from {}, not {}",
                        record.from, event.location
                    )));
                }
                if to != record.to {
                    return Err(EngineError::InvalidState(format!(
                        "transfer {id} goes to {}, not {to}",
                        record.to
                    )));
                }
                // Shipping always changes the transfer or is refused.
                plan(record.status, Step::Ship).map_err(|refusal| refused(&id, refusal))?;
                if qty.get() > record.qty {
                    return Err(EngineError::QuantityOutOfRange(format!(
                        "cannot ship {}: transfer {id} holds {}",
                        qty.get(),
                        record.qty
                    )));
                }
                self.ship_transfer(&mut record, qty, &by).await
            }
            Leg::In { from } => {
                if event.location != record.to {
                    return Err(EngineError::InvalidState(format!(
                        "transfer {id} arrives at {}, not {}",
                        record.to, event.location
                    )));
                }
                if from != record.from {
                    return Err(EngineError::InvalidState(format!(
                        "transfer {id} comes from {}, not {from}",
                        record.from
                    )));
                }
                // Receiving always changes the transfer or is refused.
                plan(record.status, Step::Receive).map_err(|refusal| refused(&id, refusal))?;
                // The destination's in_transit first, if a crash or a full
                // journal left it behind.
                self.run_inbound(&mut record).await?;
                self.receive_transfer(&mut record, qty, &by, &event.payload)
                    .await
            }
        }
    }

    /// Source: ship `qty` (the rest of the hold is released), then the
    /// destination's `in_transit`.
    async fn ship_transfer(
        &self,
        record: &mut TransferRecord,
        qty: Qty,
        by: &StepMeta,
    ) -> Result<Applied, EngineError> {
        let now = self.now_ms();
        let mut shipped = record.clone();
        shipped.status = TransferStatus::Shipped;
        shipped.shipped_qty = Some(qty.get());
        shipped.shipped_at_ms = Some(now);
        shipped.updated_at_ms = now;
        shipped.pending = Some(TransferPending::Inbound);
        push_step(
            &mut shipped,
            TransferStepKind::Shipped,
            qty.get(),
            &record.from,
            by,
            now,
        );
        let rest = record.qty - qty.get();
        if rest > 0 {
            push_step(
                &mut shipped,
                TransferStepKind::Released,
                rest,
                &record.from,
                by,
                now,
            );
        }
        let command = Command::TransferShip {
            transfer: transfer_hold_id(&record.id),
            qty,
        };
        let applied = self
            .exec_step(
                &shipped,
                &record.from,
                command,
                by,
                WriteBatch::default(),
                true,
            )
            .await?;
        *record = shipped;
        let id: Arc<str> = Arc::from(record.id.as_str());
        self.schedule_transfer(&id, now.saturating_add(self.transfer_overdue_ms()));
        if let Err(error) = self.run_inbound(record).await {
            // Shipped at the source (durable, answered as applied): the
            // destination follows on a later tick, or after a restart.
            tracing::warn!(transfer = %record.id, %error, "destination in_transit not written yet, will retry");
            self.schedule_transfer(&id, self.now_ms().saturating_add(RETRY_AFTER_MS));
        }
        Ok(applied)
    }

    /// Destination: the shipped units into `in_transit`, when still pending.
    async fn run_inbound(&self, record: &mut TransferRecord) -> Result<(), EngineError> {
        if record.pending != Some(TransferPending::Inbound) {
            return Ok(());
        }
        let qty = record.shipped_qty.and_then(Qty::new).ok_or_else(|| {
            EngineError::InvalidState(format!("transfer {} has no shipped quantity", record.id))
        })?;
        // The destination's entry is the shipment's too: same source and
        // correlation, event id `<shipping event>.<destination>`.
        let shipping = record
            .history
            .iter()
            .find(|step| step.kind == TransferStepKind::Shipped);
        let by = StepMeta {
            event_id: format!(
                "{}.{}",
                shipping.map_or("transfer", |s| s.event_id.as_str()),
                record.to
            ),
            source: shipping.map_or_else(|| "api".to_string(), |s| s.source.clone()),
            correlation_id: shipping.map_or_else(
                || record.correlation_id.clone(),
                |s| s.correlation_id.clone(),
            ),
            occurred_at_ms: shipping.map_or_else(|| self.now_ms(), |s| s.at_ms),
        };
        let now = self.now_ms();
        let mut arrived = record.clone();
        arrived.pending = None;
        arrived.updated_at_ms = now;
        push_step(
            &mut arrived,
            TransferStepKind::InTransit,
            qty.get(),
            &record.to,
            &by,
            now,
        );
        let command = Command::TransferInbound {
            transfer: transfer_hold_id(&record.id),
            qty,
        };
        self.exec_step(
            &arrived,
            &record.to,
            command,
            &by,
            WriteBatch::default(),
            false,
        )
        .await?;
        *record = arrived;
        Ok(())
    }

    /// Destination: `received` on hand, the shipment out of `in_transit`;
    /// a quantity other than the shipped one raises `transfer_discrepancy`.
    async fn receive_transfer(
        &self,
        record: &mut TransferRecord,
        received: Qty,
        by: &StepMeta,
        payload: &str,
    ) -> Result<Applied, EngineError> {
        let shipped = record.shipped_qty.unwrap_or(0);
        let now = self.now_ms();
        let mut done = record.clone();
        done.status = TransferStatus::Received;
        done.received_qty = Some(received.get());
        done.received_at_ms = Some(now);
        done.updated_at_ms = now;
        push_step(
            &mut done,
            TransferStepKind::Received,
            received.get(),
            &record.to,
            by,
            now,
        );
        let mut extra = WriteBatch::default();
        if received.get() != shipped {
            push_step(
                &mut done,
                TransferStepKind::Discrepancy,
                received.get(),
                &record.to,
                by,
                now,
            );
            let difference = received.get() as i64 - shipped as i64;
            let exception = self.transfer_exception(
                record,
                ExceptionKind::TransferDiscrepancy,
                format!(
                    "transfer {} shipped {shipped} from {}, {} received at {} ({difference:+})",
                    record.id,
                    record.from,
                    received.get(),
                    record.to
                ),
                by,
                Some(payload.to_string()),
                now,
            );
            extra.put(
                Space::Exceptions,
                seq_key(exception.id),
                codec::encode(&exception)?,
            );
        }
        let command = Command::TransferReceive {
            transfer: transfer_hold_id(&record.id),
            received,
            shipped,
        };
        let applied = self
            .exec_step(&done, &record.to, command, by, extra, true)
            .await?;
        *record = done;
        Ok(applied)
    }

    fn transfer_exception(
        &self,
        record: &TransferRecord,
        kind: ExceptionKind,
        detail: String,
        by: &StepMeta,
        payload: Option<String>,
        at_ms: i64,
    ) -> ExceptionRecord {
        let id = self.shared.new_exception_id();
        ExceptionRecord {
            id,
            sku: Some(record.sku.clone()),
            location: Some(record.to.clone()),
            event_id: Some(by.event_id.clone()),
            source: Some(by.source.clone()),
            payload,
            ..ExceptionRecord::new(
                kind,
                kind.as_str(),
                detail,
                by.correlation_id.clone(),
                at_ms,
            )
        }
    }

    /// Runs due transfer timers: pending destination steps and overdue checks.
    pub async fn transfer_timers_due(&self) {
        let now = self.now_ms();
        let due = self.transfer_timers.take_due(now, TIMERS_PER_TICK_MAX);
        futures_util::stream::iter(due)
            .for_each_concurrent(TIMERS_IN_FLIGHT_MAX, |id| async move {
                if let Err(error) = self.check_transfer(&id).await {
                    tracing::warn!(transfer = %id, %error, "transfer check failed, will retry");
                    self.schedule_transfer(&id, self.now_ms().saturating_add(RETRY_AFTER_MS));
                }
            })
            .await;
    }

    /// Finishes a pending step; raises the overdue exception when due, even
    /// when the pending step keeps failing (a destination that cannot take the
    /// shipment must not hide that it never arrived). The step's error is
    /// returned after, so it is retried.
    async fn check_transfer(&self, id: &Arc<str>) -> Result<(), EngineError> {
        let Ok(cell) = self.transfer_cell(id) else {
            return Ok(());
        };
        let mut record = cell.lock().await;
        let inbound = self.run_inbound(&mut record).await;
        let (TransferStatus::Shipped, None, Some(shipped_at)) =
            (record.status, record.overdue_at_ms, record.shipped_at_ms)
        else {
            return inbound;
        };
        let due = shipped_at.saturating_add(self.transfer_overdue_ms());
        let now = self.now_ms();
        if now < due {
            self.schedule_transfer(id, due);
            return inbound;
        }
        let shipping = record
            .history
            .iter()
            .find(|step| step.kind == TransferStepKind::Shipped);
        let by = StepMeta {
            event_id: shipping.map_or_else(String::new, |s| s.event_id.clone()),
            source: "engine".to_string(),
            correlation_id: shipping.map_or_else(
                || record.correlation_id.clone(),
                |s| s.correlation_id.clone(),
            ),
            occurred_at_ms: now,
        };
        let shipped = record.shipped_qty.unwrap_or(0);
        let mut flagged = record.clone();
        flagged.overdue_at_ms = Some(now);
        flagged.updated_at_ms = now;
        push_step(
            &mut flagged,
            TransferStepKind::Overdue,
            shipped,
            &record.to,
            &by,
            now,
        );
        let exception = self.transfer_exception(
            &record,
            ExceptionKind::TransferOverdue,
            format!(
                "transfer {} shipped {shipped} from {} and was not received at {} within {} s",
                record.id, record.from, record.to, self.config.transfer_overdue_seconds
            ),
            &by,
            None,
            now,
        );
        let mut batch = record_batch(&flagged)?;
        batch.put(
            Space::Exceptions,
            seq_key(exception.id),
            codec::encode(&exception)?,
        );
        self.write(batch).await?;
        *record = flagged;
        tracing::warn!(transfer = %record.id, "transfer overdue");
        inbound
    }

    /// Runs the destination step of every transfer a crash left pending.
    pub(super) async fn complete_pending_transfers(&self) {
        let pending: Vec<Arc<str>> = self
            .transfers
            .iter()
            .filter(|entry| {
                entry
                    .value()
                    .try_lock()
                    .is_ok_and(|r| r.pending == Some(TransferPending::Inbound))
            })
            .map(|entry| entry.key().clone())
            .collect();
        for id in pending {
            tracing::warn!(transfer = %id, "completing interrupted transfer shipment");
            if let Err(error) = self.check_transfer(&id).await {
                tracing::error!(transfer = %id, %error, "could not complete transfer shipment, will retry");
                self.schedule_transfer(&id, self.now_ms().saturating_add(RETRY_AFTER_MS));
            }
        }
    }
}
