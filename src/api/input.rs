//! Request decoding and validation shared by the handlers: bounded bodies,
//! strict JSON, ids and quantities checked once at the edge.

use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::{from_json_error, ApiError};
use crate::config::is_valid_id;
use crate::domain::{Qty, QTY_MAX};

/// Reads the body, refusing more than `limit` bytes with 413.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| match e {
            actix_web::error::PayloadError::Overflow => ApiError::PayloadTooLarge(limit),
            other => ApiError::BadRequest(format!("could not read body: {other}")),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Strict JSON: unknown fields are `unknown_field`, anything else malformed `bad_request`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("a JSON body is required".to_string()));
    }
    serde_json::from_slice(body).map_err(from_json_error)
}

pub fn check_id<'a>(what: &str, id: &'a str) -> Result<&'a str, ApiError> {
    if is_valid_id(id) {
        Ok(id)
    } else {
        Err(ApiError::InvalidId(format!(
            "{what} must be 1-64 characters from [A-Za-z0-9._:-]"
        )))
    }
}

/// For routes that take no body: nothing, whitespace or `{}`.
pub fn reject_body(body: &[u8]) -> Result<(), ApiError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}
    parse_optional_json::<Empty>(body).map(drop)
}

/// A body that may be absent (empty or whitespace: `None`), else strict JSON.
pub fn parse_optional_json<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    parse_json(body).map(Some)
}

/// A quantity in `1..=QTY_MAX`; any other number (zero, negative, fraction,
/// huge) is `quantity_out_of_range`.
pub fn qty(what: &str, number: &serde_json::Number) -> Result<Qty, ApiError> {
    number.as_u64().and_then(Qty::new).ok_or_else(|| {
        ApiError::QuantityOutOfRange(format!("{what} must be an integer in 1..={QTY_MAX}"))
    })
}

/// A non-zero delta within `±QTY_MAX`.
pub fn delta(what: &str, number: &serde_json::Number) -> Result<i64, ApiError> {
    number
        .as_i64()
        .filter(|d| *d != 0 && d.unsigned_abs() <= QTY_MAX)
        .ok_or_else(|| {
            ApiError::QuantityOutOfRange(format!(
                "{what} must be a non-zero integer within ±{QTY_MAX}"
            ))
        })
}

/// A setting or count in `0..=QTY_MAX`.
pub fn amount(what: &str, number: &serde_json::Number) -> Result<u64, ApiError> {
    number.as_u64().filter(|n| *n <= QTY_MAX).ok_or_else(|| {
        ApiError::QuantityOutOfRange(format!("{what} must be an integer in 0..={QTY_MAX}"))
    })
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

pub fn parse_rfc3339(what: &str, text: &str) -> Result<i64, ApiError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| ApiError::BadRequest(format!("{what} must be an RFC 3339 timestamp")))
}
