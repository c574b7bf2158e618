//! Reservations across positions: all-or-nothing holds with compensation,
//! sourcing by the channel's location order, and the lifecycle
//! held -> allocated -> shipped, held -> released | expired, allocated -> released.
//!
//! A reservation touching one position is one journal append carrying both
//! the position's event and the reservation record. One touching several
//! writes the record with a `pending` marker in each hold's append (in its
//! own write first, for the other transitions), then the final record;
//! recovery finishes (or, for a creation, undoes) whatever a crash left
//! pending.

use std::sync::Arc;

use futures_util::future::join_all;
use sha2::{Digest, Sha256};

use super::registry::{Claim, Claimable};
use super::{Engine, EngineError};
use crate::actors::{Exec, ExecError, Finish, HoldFirstFit, Meta};
use crate::domain::reservation::{allocatable, plan, LineChange, Plan, Refusal, Transition};
use crate::domain::{Command, HoldMode, Qty, Reject};
use crate::storage::records::{
    CartPart, CartStage, IdempotencyRecord, PendingOp, ReservationLine, ReservationRecord,
    ReservationStatus,
};
use crate::storage::{codec, Space, StorageError, WriteBatch};

/// Reservations kept in memory (open, plus closed ones within retention).
/// At ~1 KiB each this bounds the registry to about 10 GiB; beyond it new
/// reservations are refused with 503 rather than growing without limit.
const RESERVATIONS_MAX: usize = 10_000_000;

#[derive(Debug, Clone)]
pub struct LineRequest {
    pub sku: String,
    pub location: Option<String>,
    pub qty: Qty,
}

#[derive(Debug, Clone)]
pub struct NewReservation {
    pub reservation_id: Option<String>,
    pub channel: String,
    pub order_ref: Option<String>,
    pub ttl_seconds: Option<u64>,
    pub lines: Vec<LineRequest>,
    pub split: bool,
    pub correlation_id: Arc<str>,
    /// When the request carried an `Idempotency-Key`, the generated id is
    /// derived from it so a retry after a crash finds the same reservation.
    pub idempotency_key: Option<String>,
    /// The key's answer, stored in the hold's own append when the
    /// reservation is one line.
    pub remember: Option<RememberAnswer>,
    /// A cart's part in a partition group (api::dispatch): held on a lease of
    /// this long, at whose end it asks its `siblings` (engine::carts) and
    /// keeps its TTL only if each holds its part (or sooner, if
    /// [`Engine::confirm_reservation`] gives it its TTL). Not part of the
    /// request's content (a retry may come with or without it).
    pub lease_seconds: Option<u64>,
    /// The cart's other partition groups, asked at the lease's end.
    pub siblings: Vec<u32>,
    /// The cart request's own number, the same in each of its parts.
    pub cart_nonce: u128,
}

/// An `Idempotency-Key`'s answer to a created reservation, written by the
/// engine in the same append as the hold (one append, not the hold and then
/// the answer). The caller stores every other answer itself.
#[derive(Debug, Clone)]
pub struct RememberAnswer {
    pub key: String,
    pub request_hash: Vec<u8>,
    /// The body answered (with 201) for the created reservation.
    pub render: fn(&ReservationView) -> Vec<u8>,
    /// Set once the answer is part of the hold's append: when the
    /// creation is answered, it is durable.
    pub stored: Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, Clone)]
pub struct ShipLine {
    pub sku: String,
    pub location: String,
    pub qty: Qty,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub sku: String,
    pub location: Option<String>,
    pub requested: u64,
    pub available: i64,
    /// No position of the SKU existed where the line was tried (not
    /// answered; it decides whether to look for the SKU anywhere).
    pub absent: bool,
}

/// A reservation as answered: the record plus, per line, the units still
/// backordered (read from the positions).
#[derive(Debug, Clone)]
pub struct ReservationView {
    pub record: ReservationRecord,
    pub backordered: Vec<u64>,
}

/// One position a line took stock from.
#[derive(Debug, Clone)]
struct Taken {
    location: Arc<str>,
    units: u64,
    backordered: u64,
}

impl Taken {
    fn of(location: Arc<str>, outcome: &crate::actors::ExecOutcome) -> Taken {
        let delta = outcome.events.first().map(|e| e.delta).unwrap_or_default();
        Taken {
            location,
            units: (delta.reserved + delta.backordered) as u64,
            backordered: delta.backordered as u64,
        }
    }
}

/// What every hold of one line shares.
#[derive(Clone)]
struct LineHold {
    sku: Arc<str>,
    reservation_id: Arc<str>,
    channel: Arc<str>,
    correlation_id: Arc<str>,
    /// Only for the one line of a reservation (`finished` given).
    remember: Option<RememberAnswer>,
    /// The encoded reservation record, pending, of a reservation with
    /// several holds: written with each.
    pending: Option<Arc<Vec<u8>>>,
    /// When the request was taken (stamped on the journal entries and the answer).
    now_ms: i64,
}

impl LineHold {
    /// The hold of `qty` at `location`; with `finished` (the reservation is
    /// this one line) the reservation record, finished with this line, is
    /// written in the same append.
    fn exec(
        &self,
        location: Arc<str>,
        qty: Qty,
        mode: HoldMode,
        finished: Option<ReservationRecord>,
    ) -> Result<Exec, ExecError> {
        let mut finish = None;
        let extra = match finished {
            Some(mut finished) => {
                finished.pending = None;
                finished.lines = vec![ReservationLine {
                    sku: self.sku.to_string(),
                    location: location.to_string(),
                    qty: qty.get(),
                }];
                let batch = record_batch(&finished).map_err(ExecError::Storage)?;
                if let Some(remember) = self.remember.clone() {
                    finish = Some(remember_answer(remember, finished, self.now_ms));
                }
                batch
            }
            None => {
                let mut batch = WriteBatch::default();
                if let Some(pending) = &self.pending {
                    let id = self.reservation_id.as_bytes();
                    batch.put(Space::Reservations, id, pending.to_vec());
                }
                batch
            }
        };
        Ok(Exec {
            sku: self.sku.clone(),
            location,
            command: Command::Hold {
                reservation_id: self.reservation_id.clone(),
                channel: self.channel.clone(),
                qty,
                mode,
            },
            meta: meta_shared(
                &self.reservation_id,
                self.correlation_id.clone(),
                "hold",
                self.now_ms,
            ),
            extra,
            finish,
            dedupe: false,
            content: None,
            create: false,
        })
    }
}

/// Adds the stored answer of the created reservation `finished` to the
/// hold's append, once the hold says what it backordered.
fn remember_answer(remember: RememberAnswer, finished: ReservationRecord, now_ms: i64) -> Finish {
    Finish(Box::new(move |outcome, batch| {
        let view = ReservationView {
            backordered: vec![outcome
                .events
                .first()
                .map_or(0, |event| event.delta.backordered as u64)],
            record: finished,
        };
        let record = IdempotencyRecord {
            request_hash: remember.request_hash,
            status: 201,
            body: (remember.render)(&view),
            created_at_ms: now_ms,
        };
        if let Ok(bytes) = codec::encode(&record) {
            batch.put(Space::Idempotency, remember.key.as_bytes(), bytes);
            remember
                .stored
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }))
}

fn not_found(id: &str) -> EngineError {
    EngineError::NotFound(format!("reservation {id} not found"))
}

/// A lifecycle refusal, as answered (`invalid_state`).
fn refused(id: &str, refusal: Refusal) -> EngineError {
    EngineError::InvalidState(format!("reservation {id} {refusal}"))
}

fn request_hash(request: &NewReservation) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(request.channel.as_bytes());
    hasher.update([0]);
    hasher.update(request.order_ref.as_deref().unwrap_or("").as_bytes());
    hasher.update([0]);
    hasher.update(request.ttl_seconds.unwrap_or(0).to_be_bytes());
    hasher.update([u8::from(request.split)]);
    for line in &request.lines {
        hasher.update(line.sku.as_bytes());
        hasher.update([0]);
        hasher.update(line.location.as_deref().unwrap_or("").as_bytes());
        hasher.update([0]);
        hasher.update(line.qty.get().to_be_bytes());
    }
    hasher.finalize().to_vec()
}

/// A reservation's id when the request names none: from its (caller-scoped)
/// `Idempotency-Key`, so a retry makes the same; else new. Also the id of a
/// cart over partition groups (api::dispatch), made before its parts.
pub fn new_reservation_id(idempotency_key: Option<&str>, now_ms: i64) -> String {
    match idempotency_key {
        Some(key) => {
            let digest = Sha256::digest(key.as_bytes());
            format!("res_{}", hex::encode(&digest[..12]))
        }
        // Time-ordered (milliseconds, then a counter), then random: new records
        // land next to each other in RocksDB's memtable instead of at random
        // places, which made each insert a full skip-list search.
        None => {
            static COUNTER: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
            let counter = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let millis = (now_ms as u64) & 0xffff_ffff_ffff;
            format!(
                "res_{millis:012x}{counter:04x}{}",
                hex::encode(rand::random::<[u8; 4]>())
            )
        }
    }
}

pub(super) fn record_batch(record: &ReservationRecord) -> Result<WriteBatch, StorageError> {
    let mut batch = WriteBatch::default();
    batch.put(
        Space::Reservations,
        record.id.as_bytes(),
        codec::encode(record)?,
    );
    Ok(batch)
}

/// Meta for the journal entries of a reservation change, carrying the
/// correlation id of the request that caused it.
fn meta(reservation_id: &str, correlation_id: &str, what: &str, now_ms: i64) -> Meta {
    meta_shared(reservation_id, Arc::from(correlation_id), what, now_ms)
}

/// [`meta`] with the request's correlation id shared, not copied.
fn meta_shared(reservation_id: &str, correlation_id: Arc<str>, what: &str, now_ms: i64) -> Meta {
    static API: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    Meta {
        event_id: format!(
            "{reservation_id}:{what}:{}",
            hex::encode(rand::random::<[u8; 6]>())
        ),
        source: API.get_or_init(|| Arc::from("api")).clone(),
        correlation_id,
        occurred_at_ms: now_ms,
    }
}

impl Claimable for ReservationRecord {
    const KIND: &'static str = "reservation";

    fn creating(&self) -> bool {
        self.pending == Some(PendingOp::Create)
    }

    fn taken_because(&self) -> Option<&'static str> {
        super::carts::is_taken_id(self).then_some(
            "was let go: its cart's parts were not all held within their lease; use a new id",
        )
    }

    fn request_hash(&self) -> &[u8] {
        &self.request_hash
    }
}

impl Engine {
    pub(super) fn install_reservations(&self, records: Vec<ReservationRecord>) {
        for record in records {
            let id: Arc<str> = Arc::from(record.id.as_str());
            if let (ReservationStatus::Held, Some(deadline)) = (record.status, record.expires_at_ms)
            {
                self.expiry.schedule(deadline, id.clone());
            }
            self.reservations.install(id, record);
        }
    }

    pub(super) fn schedule_expiry(&self, record: &ReservationRecord) {
        if let (ReservationStatus::Held, Some(deadline)) = (record.status, record.expires_at_ms) {
            self.expiry
                .schedule(deadline, Arc::from(record.id.as_str()));
        }
    }

    fn unschedule_expiry(&self, record: &ReservationRecord) {
        if let Some(deadline) = record.expires_at_ms {
            self.expiry.unschedule(deadline, &record.id);
        }
    }

    /// Creates a reservation. `Ok((view, true))` when created (201), `Ok((view,
    /// false))` when the id exists with the same content (200).
    pub async fn create_reservation(
        &self,
        request: NewReservation,
    ) -> Result<(ReservationView, bool), EngineError> {
        let channel = self.channel(&request.channel).cloned().ok_or_else(|| {
            EngineError::UnknownChannel(format!("unknown channel {}", request.channel))
        })?;
        let mut explicit = std::collections::HashSet::new();
        for line in &request.lines {
            if let Some(location) = &line.location {
                let Some(location) = self.location(location) else {
                    return Err(EngineError::UnknownLocation(format!(
                        "unknown location {location}"
                    )));
                };
                if !channel.locations.contains(location) {
                    return Err(EngineError::UnknownLocation(format!(
                        "location {location} is not a location of channel {}",
                        channel.id
                    )));
                }
                if !explicit.insert((line.sku.as_str(), location.clone())) {
                    return Err(EngineError::BadRequest(format!(
                        "two lines for {} at {location}",
                        line.sku
                    )));
                }
            }
        }
        if self.reservations.len() >= RESERVATIONS_MAX {
            return Err(EngineError::Unavailable(format!(
                "{RESERVATIONS_MAX} reservations are open or retained; retry after some close"
            )));
        }
        let hash = request_hash(&request);
        let now = self.now_ms();
        let id: Arc<str> = Arc::from(
            request
                .reservation_id
                .clone()
                .unwrap_or_else(|| new_reservation_id(request.idempotency_key.as_deref(), now))
                .as_str(),
        );
        let ttl_seconds = request
            .ttl_seconds
            .unwrap_or(self.config.default_ttl_seconds);
        let lease_seconds = request.lease_seconds.unwrap_or(u64::MAX);
        let deadline = |seconds: u64| now.saturating_add(seconds.saturating_mul(1000) as i64);
        // A part on a lease shorter than its TTL, with siblings to ask at its end.
        let cart =
            (lease_seconds < ttl_seconds && !request.siblings.is_empty()).then(|| CartPart {
                siblings: request.siblings.clone(),
                expires_at_ms: deadline(ttl_seconds),
                nonce: request.cart_nonce,
                stage: CartStage::Lease,
            });
        let record = ReservationRecord {
            id: id.to_string(),
            channel: channel.id.to_string(),
            order_ref: request.order_ref.clone(),
            status: ReservationStatus::Held,
            // Requested lines until the holds say where stock was taken:
            // undoing a failed creation needs the SKUs.
            lines: request
                .lines
                .iter()
                .map(|line| ReservationLine {
                    sku: line.sku.clone(),
                    location: line.location.clone().unwrap_or_default(),
                    qty: line.qty.get(),
                })
                .collect(),
            created_at_ms: now,
            updated_at_ms: now,
            expires_at_ms: Some(deadline(ttl_seconds.min(lease_seconds))),
            correlation_id: request.correlation_id.to_string(),
            request_hash: hash,
            pending: Some(PendingOp::Create),
            cart,
        };
        // Claim the id; a concurrent or earlier request with it waits for us.
        // The record is worked on in its cell, under the lock.
        let cell = Arc::new(tokio::sync::Mutex::new(record));
        let mut guard = cell.clone().lock_owned().await;
        match self
            .reservations
            .claim_new(&id, &cell, &guard.request_hash)
            .await?
        {
            Claim::New => self.create_claimed(&channel, &request, &mut guard).await,
            Claim::Repeat(record) => Ok((self.view(record).await, false)),
        }
    }

    async fn create_claimed(
        &self,
        channel: &super::ChannelInfo,
        request: &NewReservation,
        guard: &mut tokio::sync::OwnedMutexGuard<ReservationRecord>,
    ) -> Result<(ReservationView, bool), EngineError> {
        let outcome = self.hold_all(channel, request, guard).await;
        let record: &mut ReservationRecord = guard;
        match outcome {
            Ok(taken) => {
                record.pending = None;
                record.lines = record_lines(&taken);
                let backordered = taken.iter().map(|(_, t)| t.backordered).collect();
                self.schedule_expiry(record);
                channel.reservations_created.inc();
                Ok((
                    ReservationView {
                        record: record.clone(),
                        backordered,
                    },
                    true,
                ))
            }
            Err((error, undone)) => {
                // Still marked pending: a waiter on the id tries again.
                if undone {
                    self.reservations.remove(record.id.as_str());
                } else {
                    // Holds may remain: keep the id (readers see 404) and let
                    // the expiry loop finish the undo shortly.
                    let retry_at = self.now_ms() + 1000;
                    self.expiry
                        .schedule(retry_at, Arc::from(record.id.as_str()));
                }
                let outcome = match &error {
                    // Refused, as a shortage is: the caller asked for what is not there.
                    EngineError::Insufficient(_) | EngineError::UnknownSku(_) => "insufficient",
                    _ => "error",
                };
                self.metrics
                    .reservations_total
                    .with_label_values(&[&channel.id, outcome])
                    .inc();
                Err(error)
            }
        }
    }

    /// Holds every line; on any failure releases what was held and answers
    /// the failure (with every short line when it is a shortage), and
    /// whether the undo completed (false: holds may remain, see caller).
    async fn hold_all(
        &self,
        channel: &super::ChannelInfo,
        request: &NewReservation,
        record: &ReservationRecord,
    ) -> Result<Vec<(String, Taken)>, (EngineError, bool)> {
        let reservation_id: Arc<str> = Arc::from(record.id.as_str());
        let single =
            request.lines.len() == 1 && !(request.split && request.lines[0].location.is_none());
        // Several holds: the record, marked pending, rides in each hold's
        // append (any hold durable means the record is, so recovery can undo
        // a creation a crash interrupted) instead of being a write of its own
        // before them.
        let pending = if single {
            None
        } else {
            Some(Arc::new(
                codec::encode(record).map_err(|e| (e.into(), true))?,
            ))
        };
        let pending = pending.as_ref();
        let results =
            join_all(request.lines.iter().map(|line| {
                self.hold_line(channel, &reservation_id, line, request, record, pending)
            }))
            .await;
        let mut taken = Vec::new();
        let mut shortages = Vec::new();
        let mut failure = None;
        for (line, result) in request.lines.iter().zip(results) {
            match result {
                Ok(parts) => taken.extend(parts.into_iter().map(|t| (line.sku.clone(), t))),
                Err((parts, error)) => {
                    taken.extend(parts.into_iter().map(|t| (line.sku.clone(), t)));
                    match error {
                        EngineError::Insufficient(mut short) => shortages.append(&mut short),
                        other => failure = failure.or(Some(other)),
                    }
                }
            }
        }
        if shortages.is_empty() && failure.is_none() {
            // Two lines of one SKU may have landed on one position: the
            // reservation has one line per position.
            let taken = merge_taken(taken);
            if !single {
                let mut finished = record.clone();
                finished.pending = None;
                finished.lines = record_lines(&taken);
                let written = match record_batch(&finished) {
                    Ok(batch) => self.write(batch).await,
                    Err(error) => Err(error.into()),
                };
                if let Err(error) = written {
                    let undone = self
                        .compensate(&reservation_id, record, &taken, single)
                        .await;
                    return Err((error, undone));
                }
            }
            return Ok(taken);
        }
        let undone = self
            .compensate(&reservation_id, record, &taken, single)
            .await;
        if failure.is_none() {
            failure = self.unknown_sku(&shortages).await;
        }
        Err((
            failure.unwrap_or(EngineError::Insufficient(shortages)),
            undone,
        ))
    }

    /// `unknown_sku` (SPEC §9) for the first short line whose SKU has no
    /// position at any location: a catalogue mismatch, not an empty shelf.
    /// Only a line that found no position wherever it was tried is looked up
    /// further, so a sold-out SKU's refusals (a flash sale's) cost no read.
    async fn unknown_sku(&self, shortages: &[Shortage]) -> Option<EngineError> {
        for shortage in shortages.iter().filter(|s| s.absent) {
            let readouts = self.read_sku(&shortage.sku, None, None).await.ok()?;
            if readouts.is_empty() {
                return Some(EngineError::UnknownSku(shortage.sku.clone()));
            }
        }
        None
    }

    /// Releases every position a failed creation took stock from, retrying
    /// while the journal is merely busy, then deletes the pending record.
    /// Returns false when something could not be undone now.
    async fn compensate(
        &self,
        reservation_id: &Arc<str>,
        record: &ReservationRecord,
        taken: &[(String, Taken)],
        single: bool,
    ) -> bool {
        let mut released = std::collections::HashSet::new();
        for (sku, t) in taken {
            if !released.insert((sku.clone(), t.location.clone())) {
                continue;
            }
            let sku: Arc<str> = Arc::from(sku.as_str());
            let make = || Exec {
                sku: sku.clone(),
                location: t.location.clone(),
                command: Command::Release {
                    reservation_id: reservation_id.clone(),
                    expired: false,
                },
                meta: meta(
                    &record.id,
                    &record.correlation_id,
                    "compensate",
                    self.now_ms(),
                ),
                extra: WriteBatch::default(),
                finish: None,
                dedupe: false,
                content: None,
                create: false,
            };
            if let Err(error) = self.exec_retrying(make).await {
                tracing::error!(reservation = %record.id, %error, "compensation failed, will retry");
                return false;
            }
        }
        if !single {
            let mut batch = WriteBatch::default();
            batch.delete(Space::Reservations, record.id.as_bytes());
            if self.write(batch).await.is_err() {
                return false;
            }
        }
        true
    }

    /// Runs an exec, retrying (bounded) while the journal queue is full or a
    /// shard is briefly unreachable: for work that must not be refused.
    async fn exec_retrying(&self, make: impl Fn() -> Exec) -> Result<(), ExecError> {
        const ATTEMPTS_MAX: u32 = 200;
        const PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
        let mut attempt = 0;
        loop {
            match self.exec(make()).await {
                Ok(_) => return Ok(()),
                Err(
                    ExecError::Storage(crate::storage::StorageError::Overloaded)
                    | ExecError::Mailbox,
                ) if attempt < ATTEMPTS_MAX => {
                    attempt += 1;
                    tokio::time::sleep(PAUSE).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Holds one line, sourcing it when it has no location. With `single`
    /// (the reservation is this line), each hold carries the finished
    /// reservation record in its own append. On failure, returns what it had
    /// already taken (for compensation) and the error.
    async fn hold_line(
        &self,
        channel: &super::ChannelInfo,
        reservation_id: &Arc<str>,
        line: &LineRequest,
        request: &NewReservation,
        record: &ReservationRecord,
        pending: Option<&Arc<Vec<u8>>>,
    ) -> Result<Vec<Taken>, (Vec<Taken>, EngineError)> {
        let split = request.split;
        let single = pending.is_none();
        let line_hold = LineHold {
            sku: Arc::from(line.sku.as_str()),
            reservation_id: reservation_id.clone(),
            channel: channel.id.clone(),
            correlation_id: request.correlation_id.clone(),
            remember: request.remember.as_ref().filter(|_| single).cloned(),
            pending: pending.cloned(),
            now_ms: record.created_at_ms,
        };
        let hold = |location: Arc<str>, qty: u64, mode: HoldMode| {
            let exec = line_hold.exec(
                location.clone(),
                Qty::new(qty).unwrap_or(line.qty),
                mode,
                single.then(|| record.clone()),
            );
            async move {
                match async { self.exec(exec?).await }.await {
                    Ok(outcome) => Ok(Taken::of(location, &outcome)),
                    Err(ExecError::NotFound) => Err(EngineError::Insufficient(vec![Shortage {
                        sku: line.sku.clone(),
                        location: None,
                        requested: qty,
                        available: 0,
                        absent: true,
                    }])),
                    Err(error) => Err(EngineError::from(error)),
                }
            }
        };
        let short = |available: i64, location: Option<&str>, absent: bool| {
            EngineError::Insufficient(vec![Shortage {
                sku: line.sku.clone(),
                location: location.map(str::to_string),
                requested: line.qty.get(),
                available,
                absent,
            }])
        };
        // (available, no position there) of a refused hold; None: not a shortage.
        let shortage_of = |error: &EngineError| match error {
            EngineError::Insufficient(s) => s.first().map(|s| (s.available, s.absent)),
            _ => None,
        };
        let qty = line.qty.get();
        if let Some(location) = &line.location {
            let Some(location) = self.location(location).cloned() else {
                return Err((Vec::new(), EngineError::UnknownLocation(location.clone())));
            };
            let result = hold(
                location.clone(),
                qty,
                HoldMode::Whole {
                    allow_backorder: true,
                },
            )
            .await;
            return match result {
                Ok(taken) => Ok(vec![taken]),
                Err(error) => match shortage_of(&error) {
                    Some((available, absent)) => {
                        Err((Vec::new(), short(available, Some(&location), absent)))
                    }
                    None => Err((Vec::new(), error)),
                },
            };
        }
        if !split {
            // One message reads the positions and holds at the first
            // location that can fill the line, so the common case is one
            // round trip, not a read and then one attempt per location. The
            // read can be stale: the attempts below are the authority.
            let first_fit = HoldFirstFit {
                sku: line_hold.sku.clone(),
                channel: channel.id.clone(),
                locations: channel.locations.clone(),
                qty,
                make: {
                    let (line_hold, line_qty) = (line_hold.clone(), line.qty);
                    let finished = single.then(|| record.clone());
                    Box::new(move |location| {
                        let mode = HoldMode::Whole {
                            allow_backorder: false,
                        };
                        line_hold.exec(location, line_qty, mode, finished)
                    })
                },
            };
            let shard = self
                .shard_of(&line.sku)
                .map_err(|error| (Vec::new(), error.into()))?;
            let held = shard.send(first_fit).await;
            if let Ok(Ok(Some((location, outcome)))) = held {
                return Ok(vec![Taken::of(location, &outcome)]);
            }
            let (mut best, mut absent) = (0i64, true);
            for allow_backorder in [false, true] {
                for location in &channel.locations {
                    match hold(location.clone(), qty, HoldMode::Whole { allow_backorder }).await {
                        Ok(taken) => return Ok(vec![taken]),
                        Err(error) => match shortage_of(&error) {
                            Some((available, none_there)) => {
                                best = best.max(available);
                                absent &= none_there;
                            }
                            None => return Err((Vec::new(), error)),
                        },
                    }
                }
            }
            return Err((Vec::new(), short(best, None, absent)));
        }
        let mut taken: Vec<Taken> = Vec::new();
        let mut remaining = qty;
        let mut total_available = 0i64;
        let mut absent = true;
        for location in &channel.locations {
            if remaining == 0 {
                break;
            }
            match hold(location.clone(), remaining, HoldMode::UpTo).await {
                Ok(part) => {
                    remaining -= part.units;
                    total_available += part.units as i64;
                    absent = false;
                    taken.push(part);
                }
                Err(error) => match shortage_of(&error) {
                    Some((_, none_there)) => absent &= none_there,
                    None => return Err((taken, error)),
                },
            }
        }
        if remaining > 0 {
            for location in &channel.locations {
                match hold(
                    location.clone(),
                    remaining,
                    HoldMode::Whole {
                        allow_backorder: true,
                    },
                )
                .await
                {
                    Ok(part) => {
                        remaining = 0;
                        taken.push(part);
                        break;
                    }
                    Err(error) if shortage_of(&error).is_some() => {}
                    Err(error) => return Err((taken, error)),
                }
            }
        }
        if remaining > 0 {
            return Err((taken, short(total_available, None, absent)));
        }
        Ok(taken)
    }

    /// The reservation with its current per-line backorders.
    pub async fn get_reservation(&self, id: &str) -> Result<ReservationView, EngineError> {
        let record = self.reservation_record(id).await?;
        Ok(self.view(record).await)
    }

    /// The stored record only (who owns it, which lines), without asking the
    /// positions for their backorders as a view does.
    pub async fn reservation_record(&self, id: &str) -> Result<ReservationRecord, EngineError> {
        let record = self.lock_record(id).await?.clone();
        if record.pending == Some(PendingOp::Create) {
            return Err(not_found(id));
        }
        Ok(record)
    }

    /// `id`'s record, locked: the one way in for reads and changes by id.
    /// An id only taken (engine::carts, a cart's part never held here) is
    /// not found, as is an id never made.
    async fn lock_record(
        &self,
        id: &str,
    ) -> Result<tokio::sync::OwnedMutexGuard<ReservationRecord>, EngineError> {
        let cell = self.reservations.get(id).ok_or_else(|| not_found(id))?;
        let record = cell.lock_owned().await;
        if super::carts::is_taken_id(&record) {
            return Err(not_found(id));
        }
        Ok(record)
    }

    async fn view(&self, record: ReservationRecord) -> ReservationView {
        let mut backordered = Vec::with_capacity(record.lines.len());
        if record.status == ReservationStatus::Held {
            let id: Arc<str> = Arc::from(record.id.as_str());
            for line in &record.lines {
                let location: Arc<str> = Arc::from(line.location.as_str());
                let readouts = self
                    .read_sku(&line.sku, Some(&[location]), Some(id.clone()))
                    .await
                    .unwrap_or_default();
                let units = readouts
                    .first()
                    .and_then(|r| r.hold.as_ref())
                    .map_or(0, |hold| hold.backordered);
                backordered.push(units);
            }
        } else {
            backordered.resize(record.lines.len(), 0);
        }
        ReservationView {
            record,
            backordered,
        }
    }

    pub async fn release_reservation(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<ReservationView, EngineError> {
        self.transition(id, Transition::Release, correlation_id)
            .await
    }

    pub async fn allocate_reservation(
        &self,
        id: &str,
        correlation_id: &str,
    ) -> Result<ReservationView, EngineError> {
        self.transition(id, Transition::Allocate, correlation_id)
            .await
    }

    /// Expires a held reservation whose deadline passed; anything else is left alone.
    pub(super) async fn expire_reservation(&self, id: &str) -> Result<(), EngineError> {
        match self.transition(id, Transition::Expire, "expiry").await {
            Ok(_) | Err(EngineError::NotFound(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }

    /// Gives a held cart part (api::dispatch, "Carts over several groups") its
    /// full TTL, `ttl_seconds` from its creation, when a retried cart found it
    /// standing and every part is held: until then it is held on a lease of
    /// `lease_seconds`. The
    /// deadline only moves out, and only from the lease (a hold on another
    /// deadline is no cart part on its lease: `409 invalid_state`); a deadline
    /// already there, or allocated or shipped: unchanged (a retried
    /// confirmation); released or expired (the lease ran out first): `409
    /// invalid_state`.
    pub async fn confirm_reservation(
        &self,
        id: &str,
        ttl_seconds: u64,
        lease_seconds: u64,
    ) -> Result<ReservationView, EngineError> {
        let mut record = self.lock_record(id).await?;
        if record.pending == Some(PendingOp::Create) {
            return Err(not_found(id));
        }
        match record.status {
            ReservationStatus::Held => {
                if record
                    .cart
                    .as_ref()
                    .is_some_and(|cart| cart.stage == CartStage::LettingGo)
                {
                    return Err(EngineError::InvalidState(format!(
                        "reservation {id} is letting go: a part of its cart is not held"
                    )));
                }
                if let Some(unfinished) = &record.pending {
                    return Err(EngineError::InvalidState(format!(
                        "reservation {id} has an unfinished {unfinished:?}; repeat that request first"
                    )));
                }
                let from_creation = |seconds: u64| {
                    record
                        .created_at_ms
                        .saturating_add(seconds.saturating_mul(1000) as i64)
                };
                let deadline = from_creation(ttl_seconds);
                if record.expires_at_ms.is_some_and(|at| at < deadline) {
                    if record.expires_at_ms != Some(from_creation(lease_seconds)) {
                        return Err(EngineError::InvalidState(format!(
                            "reservation {id} is not a cart's part held on its lease"
                        )));
                    }
                    let mut confirmed = record.clone();
                    confirmed.expires_at_ms = Some(deadline);
                    if let Some(cart) = &mut confirmed.cart {
                        cart.stage = CartStage::Kept;
                    }
                    confirmed.updated_at_ms = self.now_ms();
                    self.write(record_batch(&confirmed)?).await?;
                    self.unschedule_expiry(&record);
                    self.schedule_expiry(&confirmed);
                    *record = confirmed;
                }
            }
            ReservationStatus::Allocated | ReservationStatus::Shipped => {}
            status => {
                return Err(EngineError::InvalidState(format!(
                    "reservation {id} is {}: there is nothing held to confirm",
                    status.as_str()
                )))
            }
        }
        let current = record.clone();
        drop(record);
        Ok(self.view(current).await)
    }

    async fn transition(
        &self,
        id: &str,
        transition: Transition,
        correlation_id: &str,
    ) -> Result<ReservationView, EngineError> {
        let mut record = self.lock_record(id).await?;
        if record.pending == Some(PendingOp::Create) {
            // A creation that failed and could not be undone at once: the
            // expiry loop finishes undoing it; to callers it does not exist.
            if transition == Transition::Expire {
                let failed = record.clone();
                drop(record);
                self.undo_creation(&failed).await?;
            }
            return Err(not_found(id));
        }
        if transition == Transition::Expire
            && record.status == ReservationStatus::Held
            && record.pending.is_none()
            && record
                .cart
                .as_ref()
                .is_some_and(|cart| cart.stage == CartStage::Lease)
        {
            // A cart's part on its lease settles with its siblings
            // (engine::carts) before it expires, at its deadline.
            self.schedule_expiry(&record);
            let current = record.clone();
            drop(record);
            return Ok(self.view(current).await);
        }
        if transition == Transition::Expire
            && record.pending.is_none()
            && record.expires_at_ms.is_some_and(|at| at > self.now_ms())
        {
            // Its deadline moved out (a cart part confirmed) after the expiry
            // loop took the old one, or the clock stepped back: look again
            // at the deadline it has.
            self.schedule_expiry(&record);
            let current = record.clone();
            drop(record);
            return Ok(self.view(current).await);
        }
        if transition == Transition::Allocate && record.status == ReservationStatus::Held {
            // Refuse before touching any line, so a refusal changes nothing.
            let view = self.view(record.clone()).await;
            allocatable(&view.backordered).map_err(|refusal| refused(id, refusal))?;
        }
        let (target, lines) = match plan(record.status, transition) {
            Ok(Plan::Change { to, lines }) => (to, lines),
            Ok(Plan::Unchanged) => {
                let current = record.clone();
                drop(record);
                return Ok(self.view(current).await);
            }
            Err(refusal) => return Err(refused(id, refusal)),
        };
        let op = match transition {
            Transition::Allocate => PendingOp::Allocate,
            Transition::Expire => PendingOp::Expire,
            _ => PendingOp::Release,
        };
        let reservation_id: Arc<str> = Arc::from(id);
        let command = |_: &ReservationLine| match lines {
            LineChange::Allocate => Command::Allocate {
                reservation_id: reservation_id.clone(),
            },
            LineChange::Release { expired } => Command::Release {
                reservation_id: reservation_id.clone(),
                expired,
            },
            // Shipping takes per-line quantities: `ship_quantities`, not here.
            LineChange::Ship => Command::Ship {
                reservation_id: reservation_id.clone(),
                qty: None,
            },
        };
        let mut finished = record.clone();
        finished.status = target;
        finished.pending = None;
        finished.expires_at_ms = None;
        finished.updated_at_ms = self.now_ms();
        self.run_on_lines(&mut record, op, finished, correlation_id, false, command)
            .await?;
        let current = record.clone();
        drop(record);
        Ok(self.view(current).await)
    }

    /// Ships an allocated reservation: `lines` (all when `None`) ship, the
    /// rest of each position's allocation is released.
    pub async fn ship_reservation(
        &self,
        id: &str,
        lines: Option<Vec<ShipLine>>,
        correlation_id: &str,
    ) -> Result<ReservationView, EngineError> {
        let record = self.lock_record(id).await?;
        let quantities: Vec<Option<u64>> = match &lines {
            None => vec![None; record.lines.len()],
            // No line named (a cart's part in a partition group whose lines the
            // ship did not name; the API refuses it from clients): every line
            // ships 0 and is released.
            Some(ship) if ship.is_empty() => vec![Some(0); record.lines.len()],
            Some(ship) => {
                let mut named = std::collections::HashSet::new();
                for wanted in ship {
                    // As for a new reservation: a repeated line is a client's
                    // mistake, not a second shipment.
                    if !named.insert((wanted.sku.as_str(), wanted.location.as_str())) {
                        return Err(EngineError::BadRequest(format!(
                            "two lines for {} at {}",
                            wanted.sku, wanted.location
                        )));
                    }
                    if !record
                        .lines
                        .iter()
                        .any(|l| l.sku == wanted.sku && l.location == wanted.location)
                    {
                        return Err(EngineError::BadRequest(format!(
                            "reservation {id} has no line {} at {}",
                            wanted.sku, wanted.location
                        )));
                    }
                }
                let mut quantities = Vec::with_capacity(record.lines.len());
                for line in &record.lines {
                    let total: u64 = ship
                        .iter()
                        .filter(|w| w.sku == line.sku && w.location == line.location)
                        .map(|w| w.qty.get())
                        .fold(0, u64::saturating_add);
                    if total > line.qty {
                        return Err(EngineError::QuantityOutOfRange(format!(
                            "cannot ship {total} of {} at {}: {} allocated",
                            line.sku, line.location, line.qty
                        )));
                    }
                    quantities.push(Some(total));
                }
                quantities
            }
        };
        drop(record);
        self.ship_quantities(id, quantities, correlation_id, false)
            .await
    }

    /// Ships `quantities[i]` of line `i` (`None`: all of it; `Some(0)`:
    /// release it). `resuming` finishes a shipment a crash interrupted.
    async fn ship_quantities(
        &self,
        id: &str,
        quantities: Vec<Option<u64>>,
        correlation_id: &str,
        resuming: bool,
    ) -> Result<ReservationView, EngineError> {
        let mut record = self.lock_record(id).await?;
        if record.pending == Some(PendingOp::Create) {
            return Err(not_found(id));
        }
        // Shipping is allowed (to `Shipped`) or refused; never a no-op.
        if let Err(refusal) = plan(record.status, Transition::Ship) {
            return Err(refused(id, refusal));
        }
        let mut finished = record.clone();
        finished.status = ReservationStatus::Shipped;
        finished.pending = None;
        finished.updated_at_ms = self.now_ms();
        let reservation_id: Arc<str> = Arc::from(id);
        let lines_in_order = record.lines.clone();
        let command = |line: &ReservationLine| {
            let index = lines_in_order.iter().position(|l| l == line).unwrap_or(0);
            match quantities.get(index).copied().flatten() {
                Some(0) => Command::Release {
                    reservation_id: reservation_id.clone(),
                    expired: false,
                },
                qty => Command::Ship {
                    reservation_id: reservation_id.clone(),
                    qty: qty.and_then(Qty::new),
                },
            }
        };
        let op = PendingOp::Ship(quantities.clone());
        self.run_on_lines(&mut record, op, finished, correlation_id, resuming, command)
            .await?;
        let current = record.clone();
        drop(record);
        Ok(self.view(current).await)
    }

    /// Runs `command_for(line)` on every line's position, journaling the
    /// reservation record with it: in one append for a single position,
    /// else with a pending marker before and the final record after.
    async fn run_on_lines(
        &self,
        record: &mut ReservationRecord,
        op: PendingOp,
        finished: ReservationRecord,
        correlation_id: &str,
        resuming: bool,
        command_for: impl Fn(&ReservationLine) -> Command,
    ) -> Result<(), EngineError> {
        // The same change again (a client retry after a failure part-way)
        // continues it; a different one waits until that one is finished.
        let resuming = resuming || record.pending.as_ref() == Some(&op);
        if let Some(unfinished) = &record.pending {
            if !resuming {
                return Err(EngineError::InvalidState(format!(
                    "reservation {} has an unfinished {unfinished:?}; repeat that request first",
                    record.id
                )));
            }
        }
        let single = record.lines.len() == 1;
        if !single {
            let mut pending = record.clone();
            pending.pending = Some(op);
            self.write(record_batch(&pending)?).await?;
            *record = pending;
        }
        let what = match finished.status {
            ReservationStatus::Allocated => "allocate",
            ReservationStatus::Shipped => "ship",
            ReservationStatus::Expired => "expire",
            _ => "release",
        };
        for line in record.lines.clone() {
            let extra = if single {
                record_batch(&finished)?
            } else {
                WriteBatch::default()
            };
            let exec = Exec {
                sku: Arc::from(line.sku.as_str()),
                location: Arc::from(line.location.as_str()),
                command: command_for(&line),
                meta: meta(&record.id, correlation_id, what, self.now_ms()),
                extra,
                finish: None,
                dedupe: false,
                content: None,
                create: false,
            };
            match self.exec(exec).await {
                Ok(_) => {}
                // Resuming: this line's hold is gone, so it shipped before the
                // interruption. Any other refusal (e.g. fewer units on hand
                // than allocated) stops the ship again: the line still holds.
                Err(ExecError::Reject(Reject::NoHold(_)))
                    if resuming && matches!(finished.status, ReservationStatus::Shipped) => {}
                Err(error) => return Err(error.into()),
            }
        }
        if !single {
            self.write(record_batch(&finished)?).await?;
        }
        self.unschedule_expiry(record);
        *record = finished;
        Ok(())
    }

    /// Finishes transitions a crash interrupted (creations are undone).
    pub(super) async fn complete_pending(&self) {
        let pending: Vec<_> = self
            .reservations
            .iter()
            .filter_map(|entry| {
                let cell = entry.value().clone();
                let record = cell.try_lock().ok()?.clone();
                record.pending.clone().map(|op| (record, op))
            })
            .collect();
        for (record, op) in pending {
            tracing::warn!(reservation = %record.id, ?op, "completing interrupted reservation change");
            let result = match op {
                PendingOp::Create => self.undo_creation(&record).await,
                PendingOp::Release => self
                    .release_reservation(&record.id, "recovery")
                    .await
                    .map(drop),
                PendingOp::Expire => self
                    .transition(&record.id, Transition::Expire, "recovery")
                    .await
                    .map(drop),
                PendingOp::Allocate => self
                    .allocate_reservation(&record.id, "recovery")
                    .await
                    .map(drop),
                PendingOp::Ship(quantities) => self
                    .ship_quantities(&record.id, quantities, "recovery", true)
                    .await
                    .map(drop),
            };
            if let Err(error) = result {
                tracing::error!(reservation = %record.id, %error, "could not complete reservation change");
            }
        }
    }

    async fn undo_creation(&self, record: &ReservationRecord) -> Result<(), EngineError> {
        let reservation_id: Arc<str> = Arc::from(record.id.as_str());
        let channel = self.channel(&record.channel).cloned();
        let locations = channel.map(|c| c.locations).unwrap_or_default();
        // The lines are not recorded before the holds: look at every
        // location of the channel for a hold of this reservation.
        let skus: Vec<String> = record.lines.iter().map(|l| l.sku.clone()).collect();
        for sku in skus {
            let sku: Arc<str> = Arc::from(sku.as_str());
            for location in &locations {
                let command = Command::Release {
                    reservation_id: reservation_id.clone(),
                    expired: false,
                };
                match self
                    .command(
                        &sku,
                        location,
                        command,
                        meta(
                            &record.id,
                            &record.correlation_id,
                            "compensate",
                            self.now_ms(),
                        ),
                        false,
                    )
                    .await
                {
                    Ok(_) | Err(ExecError::NotFound) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        let mut batch = WriteBatch::default();
        batch.delete(Space::Reservations, record.id.as_bytes());
        self.write(batch).await?;
        self.reservations.remove(record.id.as_str());
        Ok(())
    }
}

/// Merges parts taken at the same position: split sourcing may come back
/// to a location, and two lines of one SKU may land on one position; a
/// reservation has one line per position.
fn merge_taken(parts: Vec<(String, Taken)>) -> Vec<(String, Taken)> {
    let mut merged: Vec<(String, Taken)> = Vec::with_capacity(parts.len());
    for (sku, part) in parts {
        match merged
            .iter_mut()
            .find(|(s, t)| *s == sku && t.location == part.location)
        {
            Some((_, existing)) => {
                existing.units += part.units;
                existing.backordered += part.backordered;
            }
            None => merged.push((sku, part)),
        }
    }
    merged
}

fn record_lines(taken: &[(String, Taken)]) -> Vec<ReservationLine> {
    taken
        .iter()
        .map(|(sku, t)| ReservationLine {
            sku: sku.clone(),
            location: t.location.to_string(),
            qty: t.units,
        })
        .collect()
}
