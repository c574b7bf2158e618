//! `ApiError`: every failure the HTTP API answers, mapped in one table to a
//! status and a stable `code`, rendered as `application/problem+json`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::codes::Code;
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
    #[error("request line and headers are larger than {0} bytes")]
    HeadersTooLarge(usize),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    /// Over the key's rate limit (or its event-stream allowance).
    #[error("key {key} is over its rate limit; retry after {retry_after:?}")]
    RateLimited {
        key: std::sync::Arc<str>,
        retry_after: std::time::Duration,
    },
}

impl From<crate::input::InputError> for ApiError {
    fn from(error: crate::input::InputError) -> ApiError {
        let detail = error.detail;
        match error.code {
            Code::UnknownField => ApiError::UnknownField(detail),
            Code::InvalidId => ApiError::InvalidId(detail),
            Code::QuantityOutOfRange => ApiError::QuantityOutOfRange(detail),
            _ => ApiError::BadRequest(detail),
        }
    }
}

impl ApiError {
    /// Its code; the status comes with the code (`crate::codes::TABLE`).
    pub fn code(&self) -> Code {
        match self {
            ApiError::Engine(error) => error_code(error),
            ApiError::BadRequest(_) => Code::BadRequest,
            ApiError::UnknownField(_) => Code::UnknownField,
            ApiError::InvalidId(_) => Code::InvalidId,
            ApiError::QuantityOutOfRange(_) => Code::QuantityOutOfRange,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::PayloadTooLarge(_) => Code::PayloadTooLarge,
            ApiError::IdempotencyKeyReused => Code::IdempotencyKeyReused,
            ApiError::Unavailable(_) => Code::Unavailable,
            ApiError::HeadersTooLarge(_) => Code::HeadersTooLarge,
            ApiError::Unauthorized(_) => Code::Unauthorized,
            ApiError::Forbidden(_) => Code::Forbidden,
            ApiError::RateLimited { .. } => Code::RateLimited,
        }
    }

    /// The HTTP status and the `code` of the problem+json answer.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let code = self.code();
        // A code without an HTTP status of its own never reaches here from
        // the API; answered, it is a bad request.
        let status = code
            .status()
            .and_then(|status| StatusCode::from_u16(status).ok())
            .unwrap_or(StatusCode::BAD_REQUEST);
        (status, code.as_str())
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
        match self {
            ApiError::Engine(EngineError::Insufficient(shortages)) => {
                body["shortages"] = shortages.iter().map(shortage_json).collect();
            }
            ApiError::RateLimited { .. } => {
                body["retry_after_seconds"] = json!(self.retry_after_seconds());
            }
            _ => {}
        }
        body
    }
}

impl ApiError {
    /// Whole seconds a client should wait (`Retry-After`), at least 1.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            ApiError::RateLimited { retry_after, .. } => {
                retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0)
            }
            _ => 1,
        }
        .max(1)
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
        match self.status_code() {
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => {
                response.insert_header(("Retry-After", self.retry_after_seconds().to_string()));
            }
            StatusCode::UNAUTHORIZED => {
                response.insert_header(("WWW-Authenticate", "Bearer"));
            }
            _ => {}
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
