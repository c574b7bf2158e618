//! `ApiError`: every failure the HTTP API answers, mapped in one table to a
//! status and a stable `code`, rendered as `application/problem+json`.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::schema::Problem;
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
    #[error("request body stalled: nothing of it for {} s", super::BODY_TIMEOUT.as_secs())]
    RequestTimeout,
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
            ApiError::RequestTimeout => Code::RequestTimeout,
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

    /// The problem+json answer, as OpenAPI describes it.
    pub fn problem(&self) -> Problem<'_> {
        let (status, code) = self.status_and_code();
        Problem {
            kind: format!("https://stockwire.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("error"),
            status: status.as_u16(),
            detail: self.to_string(),
            code,
            shortages: match self {
                ApiError::Engine(EngineError::Insufficient(shortages)) => {
                    Some(shortages.iter().map(shortage).collect())
                }
                _ => None,
            },
            retry_after_seconds: match self {
                ApiError::RateLimited { .. } => Some(self.retry_after_seconds()),
                _ => None,
            },
        }
    }

    /// The JSON of [`ApiError::problem`], as sent (and stored under an
    /// `Idempotency-Key`).
    pub fn body(&self) -> Vec<u8> {
        // Strings and integers: encoding it cannot fail.
        serde_json::to_vec(&self.problem()).unwrap_or_default()
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

fn shortage(shortage: &Shortage) -> super::schema::Shortage<'_> {
    super::schema::Shortage {
        sku: &shortage.sku,
        location: shortage.location.as_deref(),
        requested: shortage.requested,
        available: shortage.available,
    }
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
        response.body(self.body())
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn keys(error: &ApiError) -> Vec<String> {
        let body: Value = serde_json::from_slice(&error.body()).expect("JSON");
        let mut keys: Vec<String> = body.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    }

    /// The optional members are absent, not null, where they do not apply.
    #[test]
    fn problem_members_are_present_only_where_they_apply() {
        let plain = ["code", "detail", "status", "title", "type"];
        assert_eq!(keys(&ApiError::NotFound("gone".to_string())), plain);
        let limited = ApiError::RateLimited {
            key: std::sync::Arc::from("k"),
            retry_after: std::time::Duration::from_millis(1500),
        };
        let mut expected = plain.to_vec();
        expected.insert(2, "retry_after_seconds");
        assert_eq!(keys(&limited), expected);
        let body: Value = serde_json::from_slice(&limited.body()).expect("JSON");
        assert_eq!(body["retry_after_seconds"], 2);
        assert_eq!(body["status"], 429);
        assert_eq!(body["type"], "https://stockwire.dev/problems/rate_limited");

        let short = |location: Option<&str>| Shortage {
            sku: "sku-a".to_string(),
            location: location.map(str::to_string),
            requested: 3,
            available: -1,
            absent: false,
        };
        let insufficient = ApiError::Engine(EngineError::Insufficient(vec![
            short(None),
            short(Some("wh-east")),
        ]));
        let body: Value = serde_json::from_slice(&insufficient.body()).expect("JSON");
        assert!(body.get("retry_after_seconds").is_none(), "{body}");
        assert_eq!(
            body["shortages"],
            serde_json::json!([
                {"sku": "sku-a", "requested": 3, "available": -1},
                {"sku": "sku-a", "location": "wh-east", "requested": 3, "available": -1},
            ])
        );
    }
}
