//! Channel publication routes (SPEC §2 "Channel publication"): status, pause, resume,
//! resync, replay and the publication ledger.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{check_id, parse_json, read_body, reject_body};
use super::schema::{ChannelList, ChannelStatus, Published, Queued};
use super::AppState;
use crate::channels::runtime::ChannelReport;
use crate::channels::sink::rfc3339_ms;
use crate::channels::{ChannelError, Channels, ReplayFrom};
use crate::engine::EngineError;

/// A channel's status, as OpenAPI describes it.
fn status(report: ChannelReport) -> ChannelStatus {
    ChannelStatus {
        id: report.id,
        sink: report.sink,
        state: report.state,
        lag_seconds: report.lag_seconds,
        pending: report.pending as u64,
        dlq_depth: report.dlq_depth,
        cursor_seq: report.cursor_seq,
        drift: report.drift,
        last_error: report.last_error,
        last_delivery_at: (report.last_delivery_ms > 0)
            .then(|| rfc3339_ms(report.last_delivery_ms)),
    }
}

impl From<ChannelError> for ApiError {
    fn from(error: ChannelError) -> ApiError {
        match error {
            ChannelError::UnknownChannel(_) => ApiError::NotFound(error.to_string()),
            ChannelError::NoSink(_) | ChannelError::Busy(_) => {
                EngineError::InvalidState(error.to_string()).into()
            }
            ChannelError::Storage(storage) => EngineError::from(storage).into(),
            ChannelError::Unavailable(message) => ApiError::Unavailable(message),
        }
    }
}

fn channels(state: &AppState) -> Result<&Channels, ApiError> {
    state.engine()?;
    state
        .channels
        .get()
        .map(|c| &**c)
        .ok_or_else(|| ApiError::Unavailable("channel publication is starting".to_string()))
}

#[utoipa::path(get, path = "/v1/channels", tag = "channels",
    responses((status = 200, description = "every channel (a channel key: its own)", body = ChannelList), super::schema::Errors))]
/// A channel key sees only its own channel.
pub async fn list(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let reports = channels(&state)?.reports();
    let channels = reports
        .into_iter()
        .filter(|report| caller.may_act_for(&report.id).is_ok())
        .map(status)
        .collect();
    Ok(HttpResponse::Ok().json(ChannelList { channels }))
}

#[utoipa::path(get, path = "/v1/channels/{id}", tag = "channels", params(("id" = String, Path, description = "channel id")),
    responses((status = 200, description = "the channel's status", body = ChannelStatus), super::schema::Errors))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    check_id("channel", &id)?;
    caller.may_act_for(&id)?;
    let report = channels(&state)?.report(&id)?;
    Ok(HttpResponse::Ok().json(status(report)))
}

async fn control(
    state: web::Data<AppState>,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    paused: bool,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let channels = channels(&state)?;
    let id = path.into_inner();
    check_id("channel", &id)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| async {
        reject_body(&body)?;
        let report = channels.set_paused(&id, paused).await?;
        Ok::<Reply<ChannelStatus>, ApiError>((StatusCode::OK, status(report)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/channels/{id}/pause", tag = "channels", params(("id" = String, Path, description = "channel id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 200, description = "the channel's status", body = ChannelStatus), super::schema::Errors))]
pub async fn pause(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    control(state, request, path, payload, true).await
}

#[utoipa::path(post, path = "/v1/channels/{id}/resume", tag = "channels", params(("id" = String, Path, description = "channel id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 200, description = "the channel's status", body = ChannelStatus), super::schema::Errors))]
pub async fn resume(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    control(state, request, path, payload, false).await
}

#[utoipa::path(post, path = "/v1/channels/{id}/resync", tag = "channels", params(("id" = String, Path, description = "channel id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 202, description = "every SKU's view queued for publication", body = Queued), super::schema::Errors))]
pub async fn resync(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let channels = channels(&state)?;
    let id = path.into_inner();
    check_id("channel", &id)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| async {
        reject_body(&body)?;
        let queued = channels.resync(&id).await?;
        Ok::<Reply<Queued>, ApiError>((
            StatusCode::ACCEPTED,
            Queued {
                channel: id.clone(),
                from_seq: None,
                from: None,
                queued_skus: Some(queued as u64),
            },
        ))
    })
    .await
}

/// `{"from_seq": N}` replays the log after N; `{"from": "dead_letters"}` the DLQ.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayBody {
    #[schema(value_type = Option<u64>)]
    from_seq: Option<serde_json::Number>,
    /// `"dead_letters"`
    from: Option<String>,
}

#[utoipa::path(post, path = "/v1/channels/{id}/replay", tag = "channels", params(("id" = String, Path, description = "channel id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body = ReplayBody,
    responses((status = 202, description = "re-delivery queued", body = Queued), super::schema::Errors))]
pub async fn replay(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let channels = channels(&state)?;
    let id = path.into_inner();
    check_id("channel", &id)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| async {
        let parsed: ReplayBody = parse_json(&body)?;
        let from = match (&parsed.from_seq, parsed.from.as_deref()) {
            (Some(seq), None) => ReplayFrom::Seq(seq.as_u64().ok_or_else(|| {
                ApiError::BadRequest("from_seq must be a non-negative integer".to_string())
            })?),
            (None, Some("dead_letters")) => ReplayFrom::DeadLetters,
            (None, Some(other)) => {
                return Err(ApiError::BadRequest(format!(
                    "from must be \"dead_letters\", not {other:?}"
                )))
            }
            _ => {
                return Err(ApiError::BadRequest(
                    "give exactly one of from_seq (replay the log) or from = \"dead_letters\""
                        .to_string(),
                ))
            }
        };
        let queued = channels.replay(&id, from).await?;
        let body = match from {
            ReplayFrom::Seq(seq) => Queued {
                channel: id.clone(),
                from_seq: Some(seq),
                from: None,
                queued_skus: None,
            },
            ReplayFrom::DeadLetters => Queued {
                channel: id.clone(),
                from_seq: None,
                from: Some("dead_letters"),
                queued_skus: queued.map(|skus| skus as u64),
            },
        };
        Ok::<Reply<Queued>, ApiError>((StatusCode::ACCEPTED, body))
    })
    .await
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PublishedQuery {
    sku: String,
}

#[utoipa::path(get, path = "/v1/channels/{id}/published", tag = "channels", params(("id" = String, Path, description = "channel id"), PublishedQuery),
    responses((status = 200, description = "the last value the channel acknowledged", body = Published), super::schema::Errors))]
pub async fn published(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PublishedQuery>,
) -> Result<HttpResponse, ApiError> {
    let channels = channels(&state)?;
    let id = path.into_inner();
    check_id("channel", &id)?;
    caller.may_act_for(&id)?;
    check_id("sku", &query.sku)?;
    let record = channels.published(&id, &query.sku)?;
    let current = channels.current_value(&id, &query.sku).await?;
    let query = query.into_inner();
    Ok(HttpResponse::Ok().json(Published {
        channel: id,
        sku: query.sku,
        available: record.as_ref().map(|record| record.available),
        seq: record.as_ref().map(|record| record.seq),
        at: record.as_ref().map(|record| rfc3339_ms(record.acked_at_ms)),
        current,
        // Nothing acknowledged yet: in sync while there is nothing to publish.
        in_sync: record.as_ref().map_or(0, |record| record.available) == current,
    }))
}
