//! `ApiError`: every failure the HTTP API answers, mapped in one table to a
//! status and a stable `code`, rendered as `application/problem+json`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::engine::{error_code, EngineError, Shortage};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnknownField(String),
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    QuantityOutOfRange(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("this Idempotency-Key was used with a different request")]
    IdempotencyKeyReused,
    #[error("{0}")]
    Unavailable(String),
}

impl ApiError {
    /// The (status, code) table.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Engine(error) => {
                let status = match error {
                    EngineError::Insufficient(_)
                    | EngineError::InvalidState(_)
                    | EngineError::VersionConflict { .. } => StatusCode::CONFLICT,
                    EngineError::QuantityOutOfRange(_) | EngineError::BadRequest(_) => {
                        StatusCode::BAD_REQUEST
                    }
                    EngineError::NotFound(_) | EngineError::UnknownSku(_) => StatusCode::NOT_FOUND,
                    EngineError::UnknownLocation(_) | EngineError::UnknownChannel(_) => {
                        StatusCode::UNPROCESSABLE_ENTITY
                    }
                    EngineError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
                };
                (status, error_code(error))
            }
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::UnknownField(_) => (StatusCode::BAD_REQUEST, "unknown_field"),
            ApiError::InvalidId(_) => (StatusCode::BAD_REQUEST, "invalid_id"),
            ApiError::QuantityOutOfRange(_) => (StatusCode::BAD_REQUEST, "quantity_out_of_range"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::PayloadTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        }
    }

    pub fn body(&self) -> serde_json::Value {
        let (status, code) = self.status_and_code();
        let mut body = json!({
            "type": format!("https://stockwire.dev/problems/{code}"),
            "title": status.canonical_reason().unwrap_or("error"),
            "status": status.as_u16(),
            "detail": self.to_string(),
            "code": code,
        });
        if let ApiError::Engine(EngineError::Insufficient(shortages)) = self {
            body["shortages"] = shortages.iter().map(shortage_json).collect();
        }
        body
    }
}

fn shortage_json(shortage: &Shortage) -> serde_json::Value {
    let mut value = json!({
        "sku": shortage.sku,
        "requested": shortage.requested,
        "available": shortage.available,
    });
    if let Some(location) = &shortage.location {
        value["location"] = json!(location);
    }
    value
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status_and_code().0
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.content_type("application/problem+json");
        if self.status_code() == StatusCode::SERVICE_UNAVAILABLE {
            response.insert_header(("Retry-After", "1"));
        }
        response.body(self.body().to_string())
    }
}

/// Maps a serde_json error to `unknown_field` or `bad_request`.
pub fn from_json_error(error: serde_json::Error) -> ApiError {
    let message = error.to_string();
    if message.starts_with("unknown field") {
        ApiError::UnknownField(message)
    } else {
        ApiError::BadRequest(format!("invalid JSON body: {message}"))
    }
}
