//! Warehouse events (SPEC §2 "Systems of record"): each applied at most once
//! per `event_id`, rejected ones kept in the exception queue. A batch is
//! grouped by position: positions run concurrently, events of one position
//! in their batch order. `transfer_out` / `transfer_in` are steps of a
//! transfer (`super::transfers`) and touch two positions, so they join the
//! groups of both.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;

use super::{Engine, EngineError};
use crate::actors::{Exec, Meta};
use crate::codes::Code;
use crate::domain::{Command, Qty};
use crate::storage::records::{
    exception_resolution_key, ExceptionKind, ExceptionRecord, ExceptionResolution, ExceptionStatus,
    InboxFileRecord,
};
use crate::storage::{codec, seq_key, Space, WriteBatch};

/// Another partition group's owner (`cluster::apply`), asked by this one.
pub trait RemoteApply: Send + Sync {
    /// Applies events of that group's SKUs, as
    /// [`Engine::apply_local_events_in_order`] would there: one outcome per
    /// event, `None` for one not tried after its position stopped.
    fn apply(
        &self,
        group: u32,
        events: Vec<WarehouseEvent>,
        correlation_id: Arc<str>,
    ) -> futures_util::future::BoxFuture<'static, Vec<Option<EventOutcome>>>;

    /// Whether that group holds its part of each cart in `parts` (id and
    /// the cart request's nonce; [`Engine::cart_part_state`] there; `None` for
    /// one it could not say yet); `None` when the group's owner did not answer.
    fn part_states(
        &self,
        group: u32,
        parts: Vec<(Arc<str>, u128)>,
    ) -> futures_util::future::BoxFuture<'static, Option<Vec<Option<super::PartState>>>>;
}

/// A validated event, ready for its position.
#[derive(Debug, Clone)]
pub struct WarehouseEvent {
    pub event_id: String,
    /// SPEC type name (`receipt`, `adjustment`, ...), for metrics and errors.
    pub type_name: &'static str,
    pub source: String,
    pub occurred_at_ms: Option<i64>,
    pub sku: String,
    pub location: String,
    pub command: EventCommand,
    /// The event as received, kept with a rejection.
    pub payload: String,
}

impl WarehouseEvent {
    /// A fingerprint of what the event says (type, source, SKU, location and
    /// what it does; not its id or when it occurred), kept with its id so the
    /// same id with other content is told from a repeat.
    pub fn content_fingerprint(&self) -> u64 {
        use sha2::{Digest, Sha256};
        let content = format!(
            "{}\0{}\0{}\0{}\0{:?}",
            self.type_name, self.source, self.sku, self.location, self.command
        );
        let digest = Sha256::digest(content.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    }
}

/// What a warehouse event does: change its position, or take a transfer one
/// step (at `location`: the source for `TransferOut`, the destination for
/// `TransferIn`).
#[derive(Debug, Clone)]
pub enum EventCommand {
    Position(Command),
    TransferOut {
        transfer_id: String,
        to: String,
        qty: Qty,
    },
    TransferIn {
        transfer_id: String,
        from: String,
        qty: Qty,
    },
}

impl From<Command> for EventCommand {
    fn from(command: Command) -> Self {
        EventCommand::Position(command)
    }
}

impl EventCommand {
    /// The position command, for an event that is one.
    pub fn position(&self) -> Option<&Command> {
        match self {
            EventCommand::Position(command) => Some(command),
            _ => None,
        }
    }

    /// The location at the other end of a transfer step.
    fn other_location(&self) -> Option<&str> {
        match self {
            EventCommand::Position(_) => None,
            EventCommand::TransferOut { to, .. } => Some(to),
            EventCommand::TransferIn { from, .. } => Some(from),
        }
    }
}

/// What applying one event did.
#[derive(Debug, Clone, Copy)]
pub(super) struct Applied {
    pub duplicate: bool,
    /// `seq` of the first journal entry it produced.
    pub first_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    Applied,
    Duplicate,
    Rejected,
}

#[derive(Debug, Clone)]
pub struct EventOutcome {
    pub event_id: String,
    pub status: EventStatus,
    pub seq: Option<u64>,
    pub code: Option<&'static str>,
    pub detail: Option<String>,
}

impl EventOutcome {
    pub fn rejected(event_id: String, code: &'static str, detail: String) -> EventOutcome {
        EventOutcome {
            event_id,
            status: EventStatus::Rejected,
            seq: None,
            code: Some(code),
            detail: Some(detail),
        }
    }
}

/// A rejected event, for the exception queue.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub event_id: String,
    /// A known event type or `unknown` (a bounded metric label).
    pub type_name: &'static str,
    pub source: String,
    pub sku: Option<String>,
    pub location: Option<String>,
    /// The offending input as JSON text.
    pub payload: String,
    pub code: &'static str,
    pub detail: String,
}

/// One event tried on its position: an outcome to answer, or refused for the
/// event's own fault (to be queued as an exception).
enum Attempt {
    Outcome(EventOutcome),
    Refused { code: &'static str, detail: String },
}

/// The stable error code of an engine error (its HTTP status comes with it,
/// from [`crate::codes`]).
pub fn error_code(error: &EngineError) -> Code {
    match error {
        EngineError::Insufficient(_) => Code::InsufficientAvailable,
        EngineError::InvalidState(_) => Code::InvalidState,
        EngineError::VersionConflict { .. } => Code::VersionConflict,
        EngineError::QuantityOutOfRange(_) => Code::QuantityOutOfRange,
        EngineError::NotFound(_) => Code::NotFound,
        EngineError::UnknownSku(_) => Code::UnknownSku,
        EngineError::UnknownLocation(_) => Code::UnknownLocation,
        EngineError::UnknownChannel(_) => Code::UnknownChannel,
        EngineError::BadRequest(_) => Code::BadRequest,
        EngineError::Unavailable(_) => Code::Unavailable,
    }
}

impl Engine {
    /// Applies a batch of validated events, in order per position.
    pub async fn apply_events(
        &self,
        events: Vec<WarehouseEvent>,
        correlation_id: Arc<str>,
    ) -> Vec<EventOutcome> {
        let count = events.len();
        // Union-find over positions: a transfer step joins the group of its
        // other end, so every position sees its events in batch order.
        fn root(parent: &mut [usize], mut at: usize) -> usize {
            while parent[at] != at {
                parent[at] = parent[parent[at]];
                at = parent[at];
            }
            at
        }
        let mut slot_of: HashMap<(&str, &str), usize> = HashMap::new();
        let mut parent: Vec<usize> = Vec::new();
        let mut slot = |key, parent: &mut Vec<usize>| {
            *slot_of.entry(key).or_insert_with(|| {
                parent.push(parent.len());
                parent.len() - 1
            })
        };
        let mut slots = Vec::with_capacity(count);
        for event in &events {
            let own = slot((event.sku.as_str(), event.location.as_str()), &mut parent);
            if let Some(other) = event.command.other_location() {
                let other = slot((event.sku.as_str(), other), &mut parent);
                let (a, b) = (root(&mut parent, own), root(&mut parent, other));
                parent[b] = a;
            }
            slots.push(own);
        }
        let mut groups: HashMap<usize, Vec<(usize, WarehouseEvent)>> = HashMap::new();
        let roots: Vec<usize> = slots.iter().map(|s| root(&mut parent, *s)).collect();
        for (index, (event, group)) in events.into_iter().zip(roots).enumerate() {
            groups.entry(group).or_default().push((index, event));
        }
        let runs = groups.into_values().map(|group| {
            let correlation_id = correlation_id.clone();
            async move {
                let mut results = Vec::with_capacity(group.len());
                for (index, event) in group {
                    results.push((index, self.apply_event(event, &correlation_id).await));
                }
                results
            }
        });
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; count];
        for results in join_all(runs).await {
            for (index, outcome) in results {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes.into_iter().flatten().collect()
    }

    /// Applies events in order per position, stopping a position at its first event
    /// that is not applied (or a duplicate): the events after it answer `None`, not
    /// tried, so a caller that retries or records the stopped one first keeps every
    /// position's events in their order (3PL files: a row must not overtake an
    /// earlier row of its position). Unlike [`Engine::apply_events`], rejections are
    /// answered but not queued: the caller queues them ([`Engine::record_rejections`])
    /// together with its own progress. An outcome with code `unavailable` is not the
    /// event's fault; retry it.
    ///
    /// With partition groups, events of another group's SKUs are applied by
    /// that group's owner ([`RemoteApply`]), each group's in order.
    pub async fn apply_events_in_order(
        &self,
        events: &[WarehouseEvent],
        correlation_id: Arc<str>,
    ) -> Vec<Option<EventOutcome>> {
        let (Some((_, group)), Some(remote)) = (self.group, self.remote.get()) else {
            return self
                .apply_local_events_in_order(events, correlation_id)
                .await;
        };
        let mut by_group: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
        for (index, event) in events.iter().enumerate() {
            let of = crate::actors::group_of(&event.sku, &self.config);
            by_group.entry(of).or_default().push(index);
        }
        let runs = by_group.into_iter().map(|(of, indices)| {
            let part: Vec<WarehouseEvent> = indices.iter().map(|i| events[*i].clone()).collect();
            let correlation_id = correlation_id.clone();
            async move {
                let outcomes = if of == group {
                    self.apply_local_events_in_order(&part, correlation_id)
                        .await
                } else {
                    remote.apply(of, part, correlation_id).await
                };
                indices.into_iter().zip(outcomes).collect::<Vec<_>>()
            }
        });
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; events.len()];
        for results in join_all(runs).await {
            for (index, outcome) in results {
                outcomes[index] = outcome;
            }
        }
        outcomes
    }

    /// [`Engine::apply_events_in_order`] for this process's own SKUs only.
    pub async fn apply_local_events_in_order(
        &self,
        events: &[WarehouseEvent],
        correlation_id: Arc<str>,
    ) -> Vec<Option<EventOutcome>> {
        let mut groups: HashMap<(&str, &str), Vec<usize>> = HashMap::new();
        for (index, event) in events.iter().enumerate() {
            groups
                .entry((event.sku.as_str(), event.location.as_str()))
                .or_default()
                .push(index);
        }
        let runs = groups.into_values().map(|group| {
            let correlation_id = correlation_id.clone();
            async move {
                let mut results = Vec::with_capacity(group.len());
                for index in group {
                    let event = &events[index];
                    let outcome = match self.attempt_event(event, &correlation_id).await {
                        Attempt::Outcome(outcome) => outcome,
                        Attempt::Refused { code, detail } => {
                            EventOutcome::rejected(event.event_id.clone(), code, detail)
                        }
                    };
                    let stop = outcome.status == EventStatus::Rejected;
                    results.push((index, outcome));
                    if stop {
                        break;
                    }
                }
                results
            }
        });
        let mut outcomes: Vec<Option<EventOutcome>> = vec![None; events.len()];
        for results in join_all(runs).await {
            for (index, outcome) in results {
                outcomes[index] = Some(outcome);
            }
        }
        outcomes
    }

    async fn apply_event(&self, event: WarehouseEvent, correlation_id: &Arc<str>) -> EventOutcome {
        match self.attempt_event(&event, correlation_id).await {
            Attempt::Outcome(outcome) => outcome,
            Attempt::Refused { code, detail } => {
                self.reject_event(&event, correlation_id, code, detail)
                    .await
            }
        }
    }

    async fn attempt_event(&self, event: &WarehouseEvent, correlation_id: &Arc<str>) -> Attempt {
        // SPEC §3 source authority: with rules, a source posts only the types it
        // is authoritative for, only where it is.
        if !self
            .config
            .source_may_post(&event.source, &event.location, event.type_name)
        {
            return Attempt::Refused {
                code: Code::SourceNotAuthoritative.as_str(),
                detail: format!(
                    "source {} may not post {} at {} (source_authority)",
                    event.source, event.type_name, event.location
                ),
            };
        }
        let Some(location) = self.location(&event.location).cloned() else {
            let detail = format!("unknown location {}", event.location);
            return Attempt::Refused {
                code: Code::UnknownLocation.as_str(),
                detail,
            };
        };
        // One event id in flight at a time, engine-wide: the duplicate check
        // runs in the position actor, so the same id sent to two positions at
        // once would otherwise pass both checks.
        let Some(_claim) = self.claim_event_id(&event.event_id).await else {
            let error = EngineError::Unavailable("event id busy, retry".to_string());
            return Attempt::Outcome(EventOutcome::rejected(
                event.event_id.clone(),
                Code::Unavailable.as_str(),
                error.to_string(),
            ));
        };
        let result = match &event.command {
            EventCommand::Position(command) => {
                let exec = Exec {
                    sku: Arc::from(event.sku.as_str()),
                    location,
                    command: command.clone(),
                    meta: Meta {
                        event_id: event.event_id.clone(),
                        source: Arc::from(event.source.as_str()),
                        correlation_id: correlation_id.clone(),
                        occurred_at_ms: event.occurred_at_ms.unwrap_or_else(|| self.now_ms()),
                    },
                    extra: WriteBatch::default(),
                    finish: None,
                    dedupe: true,
                    content: Some(event.content_fingerprint()),
                    create: true,
                };
                self.exec(exec)
                    .await
                    .map(|outcome| Applied {
                        duplicate: outcome.duplicate,
                        first_seq: outcome.first_seq,
                    })
                    .map_err(EngineError::from)
            }
            EventCommand::TransferOut { .. } | EventCommand::TransferIn { .. } => {
                self.apply_transfer_event(event, correlation_id).await
            }
        };
        match result {
            Ok(outcome) if outcome.duplicate => Attempt::Outcome(EventOutcome {
                event_id: event.event_id.clone(),
                status: EventStatus::Duplicate,
                seq: None,
                code: None,
                detail: None,
            }),
            Ok(outcome) => {
                self.metrics
                    .events_applied_total
                    .with_label_values(&[event.type_name, self.source_label(&event.source)])
                    .inc();
                Attempt::Outcome(EventOutcome {
                    event_id: event.event_id.clone(),
                    status: EventStatus::Applied,
                    seq: outcome.first_seq,
                    code: None,
                    detail: None,
                })
            }
            Err(error @ EngineError::Unavailable(_)) => {
                // Not the event's fault (journal full or failed, shard gone):
                // answer it, but do not queue it as an exception.
                Attempt::Outcome(EventOutcome::rejected(
                    event.event_id.clone(),
                    Code::Unavailable.as_str(),
                    error.to_string(),
                ))
            }
            Err(error) => {
                let code = error_code(&error).as_str();
                let detail = match &error {
                    EngineError::Insufficient(s) => format!(
                        "insufficient: requested {}, available {}",
                        s.first().map_or(0, |s| s.requested),
                        s.first().map_or(0, |s| s.available)
                    ),
                    other => other.to_string(),
                };
                Attempt::Refused { code, detail }
            }
        }
    }

    /// Waits (bounded) until no other request is applying `event_id`, then
    /// holds it until the returned claim is dropped.
    async fn claim_event_id(&self, event_id: &str) -> Option<EventIdClaim<'_>> {
        const CLAIM_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);
        let started = std::time::Instant::now();
        loop {
            if self
                .events_in_flight
                .insert(event_id.to_string(), ())
                .is_none()
            {
                return Some(EventIdClaim {
                    engine: self,
                    event_id: event_id.to_string(),
                });
            }
            if started.elapsed() > CLAIM_WAIT_MAX {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Records a rejected event in the exception queue and answers it.
    pub async fn reject_event(
        &self,
        event: &WarehouseEvent,
        correlation_id: &Arc<str>,
        code: &'static str,
        detail: String,
    ) -> EventOutcome {
        self.record_rejection(
            event.event_id.clone(),
            event.type_name,
            &event.source,
            Some(event.sku.clone()),
            Some(event.location.clone()),
            event.payload.clone(),
            correlation_id,
            code,
            &detail,
        )
        .await;
        EventOutcome::rejected(event.event_id.clone(), code, detail)
    }

    /// Queues a rejected (possibly unparsable) event as an exception.
    #[allow(clippy::too_many_arguments)]
    pub async fn record_rejection(
        &self,
        event_id: String,
        type_name: &'static str,
        source: &str,
        sku: Option<String>,
        location: Option<String>,
        payload: String,
        correlation_id: &Arc<str>,
        code: &'static str,
        detail: &str,
    ) {
        let rejection = Rejection {
            event_id,
            type_name,
            source: source.to_string(),
            sku,
            location,
            payload,
            code,
            detail: detail.to_string(),
        };
        let written = self
            .record_rejections(vec![rejection], correlation_id, None)
            .await;
        if let Err(error) = written {
            tracing::error!(%error, "could not queue rejected event");
        }
    }

    /// Queues rejected events as exceptions in one atomic write, with an inbox
    /// file's progress in it when given (both durable or neither, so a restart
    /// neither loses nor repeats them), and counts them in
    /// `stockwire_events_rejected_total` once written.
    pub async fn record_rejections(
        &self,
        rejections: Vec<Rejection>,
        correlation_id: &Arc<str>,
        inbox_file: Option<(&[u8; 32], &InboxFileRecord)>,
    ) -> Result<(), EngineError> {
        let extra = match inbox_file {
            Some((key, record)) => super::inbox::inbox_batch(key, record)?,
            None => WriteBatch::default(),
        };
        let mut batch = WriteBatch::default();
        let created_at_ms = self.now_ms();
        let mut labels = Vec::with_capacity(rejections.len());
        for rejection in rejections {
            let id = self.shared.new_exception_id();
            labels.push((
                rejection.type_name,
                rejection.source.clone(),
                rejection.code,
            ));
            let record = ExceptionRecord {
                id,
                sku: rejection.sku,
                location: rejection.location,
                event_id: Some(rejection.event_id),
                source: Some(rejection.source),
                payload: Some(rejection.payload),
                ..ExceptionRecord::new(
                    ExceptionKind::RejectedEvent,
                    rejection.code,
                    rejection.detail,
                    correlation_id.to_string(),
                    created_at_ms,
                )
            };
            match codec::encode(&record) {
                Ok(bytes) => batch.put(Space::Exceptions, seq_key(id), bytes),
                Err(error) => tracing::error!(%error, "exception record did not encode"),
            }
        }
        batch.append(extra);
        self.write(batch).await?;
        for (type_name, source, code) in labels {
            self.metrics
                .events_rejected_total
                .with_label_values(&[type_name, self.source_label(&source), code])
                .inc();
        }
        Ok(())
    }

    /// Queues an exception that is not one event's (e.g. a 3PL file that could not be
    /// read at all).
    pub async fn record_exception(&self, record: ExceptionRecord) -> Result<u64, EngineError> {
        let (id, batch) = self.exception_batch(record)?;
        self.write(batch).await?;
        Ok(id)
    }

    /// The write that queues `record` under a fresh id.
    pub(super) fn exception_batch(
        &self,
        mut record: ExceptionRecord,
    ) -> Result<(u64, WriteBatch), EngineError> {
        record.id = self.shared.new_exception_id();
        let mut batch = WriteBatch::default();
        batch.put(
            Space::Exceptions,
            seq_key(record.id),
            codec::encode(&record)?,
        );
        Ok((record.id, batch))
    }

    /// Claims exception `id` for one retry or resolution at a time: two
    /// corrected events for one exception must not both apply. `None` while
    /// another holds it.
    pub fn claim_exception(&self, id: u64) -> Option<ExceptionClaim<'_>> {
        self.exceptions_in_flight
            .insert(id, ())
            .is_none()
            .then_some(ExceptionClaim { engine: self, id })
    }

    /// One exception, with its resolution when it has one.
    pub fn exception(
        &self,
        id: u64,
    ) -> Result<Option<(ExceptionRecord, Option<ExceptionResolution>)>, EngineError> {
        let Some(bytes) = self.shared.store.get(Space::Exceptions, &seq_key(id))? else {
            return Ok(None);
        };
        let record: ExceptionRecord = codec::decode(&bytes)?;
        Ok(Some((record, self.exception_resolution(id)?)))
    }

    pub fn exception_resolution(
        &self,
        id: u64,
    ) -> Result<Option<ExceptionResolution>, EngineError> {
        match self
            .shared
            .store
            .get(Space::Meta, &exception_resolution_key(id))?
        {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Marks an exception resolved, with who, why and (for a retry) what was
    /// applied instead; durable before it returns. Resolving a resolved
    /// exception changes nothing.
    pub async fn resolve_exception(
        &self,
        id: u64,
        resolution: ExceptionResolution,
    ) -> Result<(ExceptionRecord, Option<ExceptionResolution>), EngineError> {
        self.resolve_exception_with(id, resolution, WriteBatch::default())
            .await
    }

    /// [`Engine::resolve_exception`], atomically with `extra`.
    pub(super) async fn resolve_exception_with(
        &self,
        id: u64,
        resolution: ExceptionResolution,
        extra: WriteBatch,
    ) -> Result<(ExceptionRecord, Option<ExceptionResolution>), EngineError> {
        let Some((mut record, existing)) = self.exception(id)? else {
            return Err(EngineError::NotFound(format!("exception {id} not found")));
        };
        if record.status() == ExceptionStatus::Resolved {
            return Ok((record, existing));
        }
        record.set_status(ExceptionStatus::Resolved);
        let mut batch = WriteBatch::default();
        batch.put(Space::Exceptions, seq_key(id), codec::encode(&record)?);
        batch.put(
            Space::Meta,
            exception_resolution_key(id),
            codec::encode(&resolution)?,
        );
        batch.append(extra);
        self.write(batch).await?;
        Ok((record, Some(resolution)))
    }

    /// Up to `limit` exceptions with id > `after` that `filter` matches.
    pub fn exceptions(
        &self,
        after: u64,
        limit: usize,
        filter: &ExceptionFilter<'_>,
    ) -> Result<Vec<ExceptionRecord>, EngineError> {
        let mut found = Vec::new();
        let mut failure = None;
        self.shared.store.scan(
            Space::Exceptions,
            &seq_key(after.saturating_add(1)),
            &mut |_, value| match codec::decode::<ExceptionRecord>(value) {
                Ok(record) => {
                    if filter.matches(&record) {
                        found.push(record);
                    }
                    found.len() < limit
                }
                Err(error) => {
                    failure = Some(error);
                    false
                }
            },
        )?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(found),
        }
    }

    /// Source label for metrics: free-form sources are bounded to the first
    /// `SOURCE_LABELS_MAX` seen; later ones count as `other`.
    pub(super) fn source_label<'a>(&self, source: &'a str) -> &'a str {
        const SOURCE_LABELS_MAX: usize = 64;
        let known = self.source_labels.contains_key(source);
        if known {
            return source;
        }
        if self.source_labels.len() < SOURCE_LABELS_MAX {
            self.source_labels.insert(source.to_string(), ());
            return source;
        }
        "other"
    }
}

/// An exception being retried or resolved; released on drop.
pub struct ExceptionClaim<'a> {
    engine: &'a Engine,
    id: u64,
}

impl Drop for ExceptionClaim<'_> {
    fn drop(&mut self) {
        self.engine.exceptions_in_flight.remove(&self.id);
    }
}

/// An event id being applied; released on drop.
struct EventIdClaim<'a> {
    engine: &'a Engine,
    event_id: String,
}

impl Drop for EventIdClaim<'_> {
    fn drop(&mut self) {
        self.engine.events_in_flight.remove(&self.event_id);
    }
}

/// Which exceptions a listing returns: every given field must be equal.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExceptionFilter<'a> {
    pub kind: Option<&'a str>,
    pub status: Option<&'a str>,
    pub sku: Option<&'a str>,
    pub location: Option<&'a str>,
    pub source: Option<&'a str>,
}

impl ExceptionFilter<'_> {
    pub fn matches(&self, record: &ExceptionRecord) -> bool {
        let same =
            |wanted: Option<&str>, have: Option<&str>| wanted.is_none_or(|w| have == Some(w));
        same(self.kind, Some(&record.kind))
            && same(self.status, Some(&record.status))
            && same(self.sku, record.sku.as_deref())
            && same(self.location, record.location.as_deref())
            && same(self.source, record.source.as_deref())
    }
}
