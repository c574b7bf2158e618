//! The exception queue's actions (SPEC §2, issue "exception queue"): read one,
//! retry it (re-submit the corrected event, or the original once its cause is
//! fixed), or resolve it with a note. Listing is `GET /v1/exceptions`
//! (events.rs).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;

use super::access::Caller;
use super::error::ApiError;
use super::events::{decode, event_result, exception_item};
use super::idempotency::{self, Reply};
use super::input::{parse_json, parse_optional_json, read_body};
use super::schema::{ExceptionItem, RetryOutcome};
use super::{correlation_id, AppState};
use crate::codes::Code;
use crate::engine::{Engine, EngineError, EventStatus};
use crate::storage::records::{
    ExceptionKind, ExceptionRecord, ExceptionResolution, ExceptionStatus,
};

const NOTE_LEN_MAX: usize = 2000;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    /// Why it is closed (1-2000 bytes).
    note: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RetryBody {
    /// The corrected event (same shape as in `POST /v1/events`). Without it the
    /// original event is submitted again.
    #[schema(value_type = Option<Object>)]
    event: Option<Value>,
}

/// The exception, held against a concurrent retry or resolution (409).
fn claim(engine: &Engine, id: u64) -> Result<crate::engine::ExceptionClaim<'_>, ApiError> {
    engine.claim_exception(id).ok_or_else(|| {
        EngineError::InvalidState(format!("exception {id} is being retried or resolved")).into()
    })
}

fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse::<u64>()
        .map_err(|_| ApiError::BadRequest("an exception id is a non-negative integer".to_string()))
}

/// The exception, after checking the caller may act on it (a system key: one
/// at its locations).
fn load(
    engine: &Engine,
    caller: &Caller,
    id: u64,
) -> Result<(ExceptionRecord, Option<ExceptionResolution>), ApiError> {
    let (record, resolution) = engine
        .exception(id)?
        .ok_or_else(|| ApiError::NotFound(format!("exception {id} not found")))?;
    match &record.location {
        Some(location) => caller.may_touch(location)?,
        // Not tied to a location (a whole inbox file, an unparsable event):
        // only unscoped keys may see or act on it.
        None if caller.role == crate::config::Role::System => {
            return Err(ApiError::Forbidden(format!(
                "exception {id} is not at one of key {}'s locations",
                caller.name
            )))
        }
        None => {}
    }
    Ok((record, resolution))
}

#[utoipa::path(get, path = "/v1/exceptions/{id}", tag = "exceptions",
    params(("id" = u64, Path, description = "exception id")),
    responses((status = 200, description = "the exception and how it was resolved", body = ExceptionItem), super::schema::Errors))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let (record, resolution) = load(engine, &caller, parse_id(&id)?)?;
    Ok(HttpResponse::Ok().json(exception_item(&record, resolution.as_ref())))
}

#[utoipa::path(post, path = "/v1/exceptions/{id}/resolve", tag = "exceptions",
    params(("id" = u64, Path, description = "exception id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries")),
    request_body = ResolveBody,
    responses((status = 200, description = "resolved (already resolved: unchanged)", body = ExceptionItem), super::schema::Errors))]
pub async fn resolve(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = parse_id(&id)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let correlation = correlation_id(&request);
    let (caller, body_ref) = (&caller, &body);
    idempotency::run(engine, &request, &body, |_| async move {
        let parsed: ResolveBody = parse_json(body_ref)?;
        if parsed.note.trim().is_empty() || parsed.note.len() > NOTE_LEN_MAX {
            return Err(ApiError::BadRequest(format!(
                "note must be 1-{NOTE_LEN_MAX} bytes"
            )));
        }
        load(engine, caller, id)?;
        let _claim = claim(engine, id)?;
        let (record, resolution) = engine
            .resolve_exception(
                id,
                ExceptionResolution {
                    note: parsed.note,
                    by: caller.name.to_string(),
                    at_ms: engine.now_ms(),
                    retried_event_id: None,
                    seq: None,
                    correlation_id: correlation.to_string(),
                },
            )
            .await?;
        Ok::<Reply<ExceptionItem>, ApiError>((
            StatusCode::OK,
            exception_item(&record, resolution.as_ref()),
        ))
    })
    .await
}

#[utoipa::path(post, path = "/v1/exceptions/{id}/retry", tag = "exceptions",
    params(("id" = u64, Path, description = "exception id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries")),
    request_body(content = Option<RetryBody>, description = "the corrected event, or nothing to re-submit the original"),
    responses((status = 200, description = "what became of the event; applied (or already applied) resolves the exception", body = RetryOutcome), super::schema::Errors))]
pub async fn retry(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = parse_id(&id)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let correlation = correlation_id(&request);
    let (caller, body_ref) = (&caller, &body);
    idempotency::run(engine, &request, &body, |_| async move {
        let (record, _) = load(engine, caller, id)?;
        if record.status() == ExceptionStatus::Resolved {
            return Err(
                EngineError::InvalidState(format!("exception {id} is already resolved")).into(),
            );
        }
        let given = parse_optional_json::<RetryBody>(body_ref)?.and_then(|b| b.event);
        let raw = match given {
            Some(event) => event,
            None => record
                .payload
                .as_deref()
                .filter(|_| record.kind() == Some(ExceptionKind::RejectedEvent))
                .and_then(|p| serde_json::from_str::<Value>(p).ok())
                .ok_or_else(|| {
                    ApiError::BadRequest(format!(
                        "exception {id} ({}) has no event to submit again: send {{\"event\": ...}}",
                        record.kind
                    ))
                })?,
        };
        let event = decode(raw).map_err(|bad| bad.error)?;
        caller.may_touch(&event.location)?;
        caller.may_claim(&event.source)?;
        // One retry or resolution of an exception at a time: two corrected
        // events for one exception must not both apply.
        let _claim = claim(engine, id)?;
        if engine.exception_resolution(id)?.is_some() {
            return Err(
                EngineError::InvalidState(format!("exception {id} is already resolved")).into(),
            );
        }
        let outcome = engine
            .apply_events_in_order(std::slice::from_ref(&event), correlation.clone())
            .await
            .into_iter()
            .flatten()
            .next()
            .ok_or_else(|| ApiError::Unavailable("the event was not tried".to_string()))?;
        if outcome.code == Some(Code::Unavailable.as_str()) {
            return Err(ApiError::Unavailable(
                outcome.detail.unwrap_or_else(|| "retry later".to_string()),
            ));
        }
        let exception = if outcome.status == EventStatus::Rejected {
            // Still wrong: the exception stays open, the answer says why.
            exception_item(&record, None)
        } else {
            let (record, resolution) = engine
                .resolve_exception(
                    id,
                    ExceptionResolution {
                        note: format!("retried as event {}", event.event_id),
                        by: caller.name.to_string(),
                        at_ms: engine.now_ms(),
                        retried_event_id: Some(event.event_id.clone()),
                        seq: outcome.seq,
                        correlation_id: correlation.to_string(),
                    },
                )
                .await?;
            exception_item(&record, resolution.as_ref())
        };
        Ok::<Reply<RetryOutcome>, ApiError>((
            StatusCode::OK,
            RetryOutcome {
                exception,
                result: event_result(outcome),
            },
        ))
    })
    .await
}
