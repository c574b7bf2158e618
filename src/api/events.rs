//! Systems of record post events here; subscribers read the ordered event
//! log (`GET /v1/events`, or live over Server-Sent Events); rejected events
//! are readable in the exception queue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::access::Caller;
use super::error::{from_json_error, ApiError};
use super::idempotency::{self, Reply};
use super::input::{check_id, parse_json, parse_rfc3339, read_body, rfc3339};
use super::schema::{
    EventPage, EventResult, EventResults, ExceptionItem, ExceptionPage, LogEntry, LogPosition,
    Resolution,
};
use super::{correlation_id, AppState};
use crate::codes::Code;
use crate::config::EVENT_TYPES;
use crate::domain::{transfer_of, AdjustReason, EventKind, QuarantineAction};
use crate::engine::{Engine, EventOutcome, EventStatus, ExceptionFilter, WarehouseEvent};
use crate::input::{validate_event, EventFields};
use crate::storage::records::{
    ExceptionRecord, ExceptionResolution, ExceptionStatus, JournalRecord,
};

/// Entries per SSE read from the journal.
const SSE_PAGE: usize = 500;
/// A comment line keeps idle streams (and proxies) alive. It is also how a
/// stream whose client has gone is noticed (the write fails), and its slot
/// freed: a closed connection is not otherwise seen while a response streams.
const SSE_KEEPALIVE: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    events: Vec<Value>,
}

/// The body of `POST /v1/events` as documented (decoded event by event, so
/// one bad event is rejected alone).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(super) struct EventsBody {
    /// Up to `batch_events_max` (1000) events.
    events: Vec<EventBody>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EventBody {
    /// Makes the event idempotent forever.
    event_id: String,
    /// receipt | adjustment | count | return | quarantine | in_transit | transfer_out | transfer_in
    #[serde(rename = "type")]
    kind: String,
    source: String,
    /// RFC 3339.
    occurred_at: Option<String>,
    sku: String,
    location: String,
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 1000000000)]
    qty: Option<serde_json::Number>,
    #[schema(value_type = Option<i64>, minimum = -1000000000, maximum = 1000000000)]
    delta: Option<serde_json::Number>,
    /// damage | shrink | found | correction | short_pick
    #[schema(value_type = Option<String>)]
    reason: Option<AdjustReason>,
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 1000000000)]
    counted: Option<serde_json::Number>,
    expected_version: Option<u64>,
    restockable: Option<bool>,
    /// hold | release | scrap
    #[schema(value_type = Option<String>)]
    action: Option<QuarantineAction>,
    transfer_id: Option<String>,
    to: Option<String>,
    from: Option<String>,
}

/// An event that did not validate, with what could be read of it (kept
/// with its rejection in the exception queue).
pub(super) struct Undecodable {
    event_id: String,
    /// A known event type, or `unknown` (bounded metric label).
    type_label: &'static str,
    /// A valid source id, or `unknown`.
    source: String,
    sku: Option<String>,
    location: Option<String>,
    payload: String,
    pub(super) error: ApiError,
}

/// Validates one raw event.
pub(super) fn decode(raw: Value) -> Result<WarehouseEvent, Box<Undecodable>> {
    let payload = raw.to_string();
    let text = |key: &str| raw.get(key).and_then(Value::as_str).map(str::to_string);
    let (event_id, sku, location) = (
        text("event_id").unwrap_or_default(),
        text("sku"),
        text("location"),
    );
    let type_label = text("type")
        .and_then(|t| EVENT_TYPES.iter().find(|known| **known == t).copied())
        .unwrap_or("unknown");
    let source = text("source")
        .filter(|s| check_id("source", s).is_ok())
        .unwrap_or_else(|| "unknown".to_string());
    let fail = |error| {
        Box::new(Undecodable {
            event_id: event_id.clone(),
            type_label,
            source: source.clone(),
            sku: sku.clone(),
            location: location.clone(),
            payload: payload.clone(),
            error,
        })
    };
    let body: EventBody = serde_json::from_value(raw).map_err(|e| fail(from_json_error(e)))?;
    let fields = EventFields {
        occurred_at_ms: body
            .occurred_at
            .as_deref()
            .map(|t| parse_rfc3339("occurred_at", t))
            .transpose(),
        event_id: body.event_id,
        kind: body.kind,
        source: body.source,
        sku: body.sku,
        location: body.location,
        qty: body.qty,
        delta: body.delta,
        reason: body.reason,
        counted: body.counted,
        expected_version: body.expected_version,
        restockable: body.restockable,
        action: body.action,
        transfer_id: body.transfer_id,
        to: body.to,
        from: body.from,
        payload: payload.clone(),
    };
    validate_event(fields).map_err(|error| fail(error.into()))
}

/// The answer for one event, as OpenAPI describes it.
pub(super) fn event_result(outcome: EventOutcome) -> EventResult {
    EventResult {
        status: match outcome.status {
            EventStatus::Applied => "applied",
            EventStatus::Duplicate => "duplicate",
            EventStatus::Rejected => "rejected",
        },
        event_id: outcome.event_id,
        seq: outcome.seq,
        code: outcome.code,
        detail: outcome.detail,
    }
}

/// A system key posts only at its locations (and, with `sources`, only as one
/// of them): a batch with any event outside that is refused whole (403),
/// before anything is applied.
pub(super) fn check_scope(caller: &Caller, events: &[Value]) -> Result<(), ApiError> {
    for event in events {
        let id = || event.get("event_id").and_then(Value::as_str).unwrap_or("?");
        if let Some(location) = event.get("location").and_then(Value::as_str) {
            caller
                .may_touch(location)
                .map_err(|error| ApiError::Forbidden(format!("event {}: {error}", id())))?;
        }
        if let Some(source) = event.get("source").and_then(Value::as_str) {
            caller
                .may_claim(source)
                .map_err(|error| ApiError::Forbidden(format!("event {}: {error}", id())))?;
        }
    }
    Ok(())
}

async fn apply_batch(
    engine: &Engine,
    caller: &Caller,
    body: &[u8],
    max: usize,
    correlation: Arc<str>,
) -> Result<Reply<EventResults>, ApiError> {
    let batch: BatchBody = parse_json(body)?;
    if batch.events.is_empty() || batch.events.len() > max {
        return Err(ApiError::BadRequest(format!(
            "a batch has 1..={max} events"
        )));
    }
    check_scope(caller, &batch.events)?;
    let mut slots: Vec<Option<EventOutcome>> = vec![None; batch.events.len()];
    let mut valid = Vec::new();
    let mut valid_index = Vec::new();
    for (index, raw) in batch.events.into_iter().enumerate() {
        match decode(raw) {
            Ok(event) => {
                valid_index.push(index);
                valid.push(event);
            }
            Err(bad) => {
                let (_, code) = bad.error.status_and_code();
                let detail = bad.error.to_string();
                let Undecodable {
                    event_id,
                    type_label,
                    source,
                    sku,
                    location,
                    payload,
                    ..
                } = *bad;
                engine
                    .record_rejection(
                        event_id.clone(),
                        type_label,
                        &source,
                        sku,
                        location,
                        payload,
                        &correlation,
                        code,
                        &detail,
                    )
                    .await;
                slots[index] = Some(EventOutcome::rejected(event_id, code, detail));
            }
        }
    }
    let outcomes = engine.apply_events(valid, correlation).await;
    // An event refused for lack of capacity is not the event's fault and is
    // not queued as an exception: the batch answers 503 so the sender
    // retries it (event ids make the retry safe; 5xx are not remembered
    // under an Idempotency-Key).
    if let Some(busy) = outcomes
        .iter()
        .find(|o| o.code == Some(Code::Unavailable.as_str()))
    {
        return Err(ApiError::Unavailable(format!(
            "event {} could not be applied now ({}); retry the batch: applied events answer duplicate",
            busy.event_id,
            busy.detail.clone().unwrap_or_default()
        )));
    }
    for (index, outcome) in valid_index.into_iter().zip(outcomes) {
        slots[index] = Some(outcome);
    }
    let results = slots.into_iter().flatten().map(event_result).collect();
    Ok((StatusCode::OK, EventResults { results }))
}

#[utoipa::path(post, path = "/v1/events", tag = "events",
    request_body = EventsBody, params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    responses((status = 200, description = "one result per event, in order", body = EventResults), super::schema::Errors))]
pub async fn post(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let max = state.config.batch_events_max;
    let correlation = correlation_id(&request);
    idempotency::run(engine, &request, &body, |_| {
        apply_batch(engine, &caller, &body, max, correlation)
    })
    .await
}

/// One event-log entry as subscribers see it (SPEC §2 "Subscribers"), as
/// OpenAPI describes it.
pub fn log_entry(seq: u64, record: &JournalRecord) -> LogEntry<'_> {
    let event = &record.event;
    let c = &record.counters;
    // A transfer's entries name the transfer; its hold's internal id and
    // channel are not shown.
    let transfer_id = event.reservation_id.as_deref().and_then(transfer_of);
    let (reservation_id, channel) = match transfer_id {
        Some(_) => (None, None),
        None => (event.reservation_id.as_deref(), event.channel.as_deref()),
    };
    LogEntry {
        seq,
        event_id: &record.event_id,
        kind: event.kind.type_name(),
        schema_version: 1,
        occurred_at: rfc3339(record.occurred_at_ms),
        recorded_at: rfc3339(record.recorded_at_ms),
        source: &record.source,
        correlation_id: &record.correlation_id,
        sku: &record.sku,
        location: &record.location,
        transfer_id,
        reservation_id,
        channel,
        delta: event.delta.nonzero().collect(),
        position: LogPosition {
            on_hand: c.on_hand,
            reserved: c.reserved,
            allocated: c.allocated,
            quarantined: c.quarantined,
            in_transit: c.in_transit,
            backordered: c.backordered,
            safety_stock: c.safety_stock,
            backorder_limit: c.backorder_limit,
            available: c.available(),
            version: record.version,
        },
        reason: match event.kind {
            EventKind::Adjusted(reason) => Some(reason),
            _ => None,
        },
        action: match event.kind {
            EventKind::Quarantined(action) => Some(action),
            _ => None,
        },
        restockable: match event.kind {
            EventKind::Returned { restockable } => Some(restockable),
            _ => None,
        },
        // A commitment entry always has its quantity (recovery refuses one
        // without), so `None` here is only ever "not a commitment entry".
        commitment: match event.kind {
            EventKind::CommitmentSet => event.commitment_qty,
            _ => None,
        },
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    after: Option<u64>,
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(LogQuery),
    responses((status = 200, description = "log entries after `after`", body = EventPage), super::schema::Errors))]
pub async fn list(
    state: web::Data<AppState>,
    _caller: Caller,
    query: web::Query<LogQuery>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, state.config.events_page_max);
    let entries = engine.read_log(query.after.unwrap_or(0), limit)?;
    let events = entries
        .iter()
        .map(|(seq, record)| log_entry(*seq, record))
        .collect();
    Ok(HttpResponse::Ok().json(EventPage {
        events,
        head: engine.journal().head(),
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    after: Option<u64>,
}

/// Releases an SSE slot (overall and the key's) when the stream is dropped
/// (client gone).
struct SseSlot {
    state: web::Data<AppState>,
    key: Arc<str>,
}

impl SseSlot {
    /// Takes a slot, or says why there is none: 503 when the server has no
    /// stream left, 429 when the key has used its own allowance.
    fn take(state: &web::Data<AppState>, key: Arc<str>) -> Result<SseSlot, ApiError> {
        let open = state.sse_connections.fetch_add(1, Ordering::AcqRel);
        {
            let mut mine = state.sse_per_key.entry(key.clone()).or_insert(0);
            *mine += 1;
        }
        let slot = SseSlot {
            state: state.clone(),
            key: key.clone(),
        };
        if open >= state.config.sse_connections_max {
            return Err(ApiError::Unavailable(
                "too many event streams open".to_string(),
            ));
        }
        let mine = state.sse_per_key.get(&key).map_or(0, |n| *n);
        if mine > state.config.sse_connections_per_key_max {
            state
                .metrics
                .rate_limited_total
                .with_label_values(&[&key])
                .inc();
            return Err(ApiError::RateLimited {
                key,
                // A stream its client closed is let go of when a write to it
                // fails: within about two keep-alives.
                retry_after: 2 * SSE_KEEPALIVE,
            });
        }
        Ok(slot)
    }
}

impl Drop for SseSlot {
    fn drop(&mut self) {
        self.state.sse_connections.fetch_sub(1, Ordering::AcqRel);
        self.state.sse_per_key.remove_if_mut(&self.key, |_, open| {
            *open = open.saturating_sub(1);
            *open == 0
        });
    }
}

#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(StreamQuery,
        ("Last-Event-ID" = Option<u64>, Header, description = "resume after this seq")),
    responses((status = 200, description = "Server-Sent Events: `id: seq`, `event: type`, `data: log entry`", body = String, content_type = "text/event-stream"), super::schema::Errors))]
/// Server-Sent Events: the log after `after` (or `Last-Event-ID`), then live.
pub async fn stream(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    query: web::Query<StreamQuery>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?.clone();
    // What the stream sent as an `id`, or a client's mistake: not a silent
    // replay from the start.
    // (`?after=` wins over it.)
    let resume = match (query.after, request.headers().get("last-event-id")) {
        (None, Some(value)) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::BadRequest("Last-Event-ID must be an event seq".to_string())
                })?,
        ),
        _ => None,
    };
    let after = query.after.or(resume).unwrap_or(0);
    let slot = SseSlot::take(&state, caller.name.clone())?;
    let head = engine.journal().subscribe();
    let stream = futures_util::stream::unfold(
        (engine, head, after, slot),
        |(engine, mut head, cursor, slot)| async move {
            loop {
                let page = match engine.read_log(cursor, SSE_PAGE) {
                    Ok(page) => page,
                    Err(error) => {
                        tracing::warn!(%error, "event stream read failed");
                        return None;
                    }
                };
                if let Some((last, _)) = page.last() {
                    let last = *last;
                    let mut text = Vec::new();
                    for (seq, record) in &page {
                        text.extend_from_slice(
                            format!(
                                "id: {seq}\nevent: {}\ndata: ",
                                record.event.kind.type_name()
                            )
                            .as_bytes(),
                        );
                        let entry = log_entry(*seq, record);
                        if let Err(error) = serde_json::to_writer(&mut text, &entry) {
                            // Strings and integers: not expected to happen.
                            tracing::warn!(%error, seq, "event log entry did not encode");
                        }
                        text.extend_from_slice(b"\n\n");
                    }
                    let chunk = web::Bytes::from(text);
                    return Some((Ok::<_, actix_web::Error>(chunk), (engine, head, last, slot)));
                }
                match tokio::time::timeout(SSE_KEEPALIVE, head.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return None,
                    Err(_) => {
                        let ping = web::Bytes::from_static(b": keep-alive\n\n");
                        return Some((Ok(ping), (engine, head, cursor, slot)));
                    }
                }
            }
        },
    );
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(stream))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExceptionQuery {
    /// The exception kind (`rejected_event`, `reconciliation_difference`, ...).
    kind: Option<String>,
    /// `open` or `resolved`.
    status: Option<String>,
    sku: Option<String>,
    location: Option<String>,
    /// The system of record (event `source`, reconciliation `source`).
    source: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// The answer for one exception: the OpenAPI document's `ExceptionItem`,
/// built as that struct so the two cannot drift apart.
pub(super) fn exception_item(
    record: &ExceptionRecord,
    resolution: Option<&ExceptionResolution>,
) -> ExceptionItem {
    ExceptionItem {
        id: record.id,
        kind: record.kind.clone(),
        status: record.status.clone(),
        code: record.code.clone(),
        detail: record.detail.clone(),
        sku: record.sku.clone(),
        location: record.location.clone(),
        event_id: record.event_id.clone(),
        source: record.source.clone(),
        payload: record
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<Value>(p).ok()),
        correlation_id: record.correlation_id.clone(),
        created_at: rfc3339(record.created_at_ms),
        resolution: resolution.map(|r| Resolution {
            note: r.note.clone(),
            by: r.by.clone(),
            at: rfc3339(r.at_ms),
            retried_event_id: r.retried_event_id.clone(),
            seq: r.seq,
            correlation_id: r.correlation_id.clone(),
        }),
    }
}

#[utoipa::path(get, path = "/v1/exceptions", tag = "events", params(ExceptionQuery),
    responses((status = 200, description = "the exception queue", body = ExceptionPage), super::schema::Errors))]
pub async fn exceptions(
    state: web::Data<AppState>,
    _caller: Caller,
    query: web::Query<ExceptionQuery>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let limit = query
        .limit
        .unwrap_or(100)
        .clamp(1, state.config.events_page_max);
    let filter = ExceptionFilter {
        kind: query.kind.as_deref(),
        status: query.status.as_deref(),
        sku: query.sku.as_deref(),
        location: query.location.as_deref(),
        source: query.source.as_deref(),
    };
    let found = engine.exceptions(query.after.unwrap_or(0), limit, &filter)?;
    let mut items = Vec::with_capacity(found.len());
    for record in &found {
        let resolution = if record.status() == ExceptionStatus::Resolved {
            engine.exception_resolution(record.id)?
        } else {
            None
        };
        items.push(exception_item(record, resolution.as_ref()));
    }
    Ok(HttpResponse::Ok().json(ExceptionPage { exceptions: items }))
}
