//! Request decoding and validation shared by the handlers: bounded bodies,
//! strict JSON, ids and quantities checked once at the edge.

use actix_web::web;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::error::{from_json_error, ApiError};
// The checks themselves have no HTTP in them (ingest uses them too); their
// InputError becomes an ApiError with the same code.
pub use crate::input::{amount, check_id, parse_rfc3339, qty, rfc3339};

/// Reads the body, refusing more than `limit` bytes with 413.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::Bytes, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| body_error(e, limit))?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::PayloadTooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// What a body that could not be read is answered with.
pub fn body_error(error: actix_web::error::PayloadError, limit: usize) -> ApiError {
    use actix_web::error::PayloadError;
    match error {
        PayloadError::Overflow => ApiError::PayloadTooLarge(limit),
        PayloadError::Io(error) if error.kind() == std::io::ErrorKind::TimedOut => {
            ApiError::RequestTimeout
        }
        other => ApiError::BadRequest(format!("could not read body: {other}")),
    }
}

/// Strict JSON: unknown fields are `unknown_field`, anything else malformed `bad_request`.
pub fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("a JSON body is required".to_string()));
    }
    serde_json::from_slice(body).map_err(from_json_error)
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
