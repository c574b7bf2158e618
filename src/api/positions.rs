//! Position settings and channel commitments (`PUT /v1/positions/...`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{amount, check_id, parse_json, read_body};
use super::schema::PositionSettings;
use super::{correlation_id, AppState};
use crate::actors::{ExecOutcome, Meta};
use crate::domain::Command;
use crate::engine::{Engine, EngineError};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SettingsBody {
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 1000000000)]
    safety_stock: Option<serde_json::Number>,
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 1000000000)]
    backorder_limit: Option<serde_json::Number>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CommitmentBody {
    #[schema(value_type = u64, minimum = 0, maximum = 1000000000)]
    qty: serde_json::Number,
}

/// The position after a change, as OpenAPI describes it (the commitment
/// route adds its channel and quantity).
fn settings_answer(sku: String, location: String, outcome: &ExecOutcome) -> PositionSettings {
    let c = &outcome.counters;
    PositionSettings {
        sku,
        location,
        safety_stock: c.safety_stock,
        backorder_limit: c.backorder_limit,
        available: c.available(),
        version: outcome.version,
        seq: outcome.first_seq,
        channel: None,
        commitment: None,
    }
}

async fn apply(
    engine: &Engine,
    request: &HttpRequest,
    sku: &str,
    location: &str,
    command: Command,
) -> Result<ExecOutcome, ApiError> {
    let location = engine
        .location(location)
        .cloned()
        .ok_or_else(|| EngineError::UnknownLocation(format!("unknown location {location}")))?;
    let meta = Meta {
        event_id: format!("set:{}", hex::encode(rand::random::<[u8; 12]>())),
        source: std::sync::Arc::from("api"),
        correlation_id: correlation_id(request),
        occurred_at_ms: engine.now_ms(),
    };
    // Settings may be made before the first receipt: they create the position.
    let outcome = engine
        .command(&std::sync::Arc::from(sku), &location, command, meta, true)
        .await
        .map_err(EngineError::from)?;
    Ok(outcome)
}

#[utoipa::path(put, path = "/v1/positions/{sku}/{location}/settings", tag = "positions",
    params(("sku" = String, Path, description = "SKU id"), ("location" = String, Path, description = "location id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")), request_body = SettingsBody,
    responses((status = 200, description = "the position's settings after the change", body = PositionSettings), super::schema::Errors))]
pub async fn settings(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let (sku, location) = path.into_inner();
    check_id("sku", &sku)?;
    check_id("location", &location)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| async {
        let parsed: SettingsBody = parse_json(&body)?;
        if parsed.safety_stock.is_none() && parsed.backorder_limit.is_none() {
            return Err(ApiError::BadRequest(
                "give safety_stock, backorder_limit or both".to_string(),
            ));
        }
        let command = Command::Settings {
            safety_stock: parsed
                .safety_stock
                .as_ref()
                .map(|n| amount("safety_stock", n))
                .transpose()?,
            backorder_limit: parsed
                .backorder_limit
                .as_ref()
                .map(|n| amount("backorder_limit", n))
                .transpose()?,
        };
        let outcome = apply(engine, &request, &sku, &location, command).await?;
        Ok::<Reply<PositionSettings>, ApiError>((
            StatusCode::OK,
            settings_answer(sku.clone(), location.clone(), &outcome),
        ))
    })
    .await
}

#[utoipa::path(put, path = "/v1/positions/{sku}/{location}/commitments/{channel}", tag = "positions",
    params(("sku" = String, Path, description = "SKU id"), ("location" = String, Path, description = "location id"), ("channel" = String, Path, description = "channel id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")), request_body = CommitmentBody,
    responses((status = 200, description = "the position after the change", body = PositionSettings), super::schema::Errors))]
pub async fn commitment(
    state: web::Data<AppState>,
    _caller: Caller,
    request: HttpRequest,
    path: web::Path<(String, String, String)>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let (sku, location, channel) = path.into_inner();
    check_id("sku", &sku)?;
    check_id("location", &location)?;
    check_id("channel", &channel)?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    idempotency::run(engine, &request, &body, |_| async {
        let parsed: CommitmentBody = parse_json(&body)?;
        let channel_info = engine
            .channel(&channel)
            .ok_or_else(|| EngineError::UnknownChannel(format!("unknown channel {channel}")))?;
        let qty = amount("qty", &parsed.qty)?;
        // Ring-fenced stock only a channel's own locations can sell from;
        // clearing one is always allowed.
        if qty > 0 && !channel_info.locations.iter().any(|l| **l == *location) {
            return Err(EngineError::UnknownLocation(format!(
                "location {location} is not one of channel {channel}'s"
            ))
            .into());
        }
        let command = Command::SetCommitment {
            channel: channel_info.id.clone(),
            qty,
        };
        let outcome = apply(engine, &request, &sku, &location, command).await?;
        let body = PositionSettings {
            channel: Some(channel.clone()),
            commitment: Some(qty),
            ..settings_answer(sku.clone(), location.clone(), &outcome)
        };
        Ok::<Reply<PositionSettings>, ApiError>((StatusCode::OK, body))
    })
    .await
}
