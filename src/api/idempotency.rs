//! `Idempotency-Key` (SPEC §2): the same key with the same request answers
//! the first response again and changes nothing; with a different request it
//! is `422 idempotency_key_reused`. Responses are stored durably (through the
//! journal) before they are sent, for at least the configured retention.

use std::future::Future;

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, ResponseError};
use sha2::{Digest, Sha256};

use super::access::Caller;
use super::error::ApiError;
use crate::engine::{Engine, EngineError};
use crate::storage::records::IdempotencyRecord;

const KEY_LEN_MAX: usize = 255;

/// Marks an answer replayed for its `Idempotency-Key` (`true`): an earlier
/// request's answer, not this one's doing.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A JSON answer: status and body (one of the response structs in
/// `schema.rs`, serialized without building a `serde_json::Value` tree).
pub type Reply<B> = (StatusCode, B);

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value)
        .map_err(|error| ApiError::Unavailable(format!("could not encode the answer: {error}")))
}

pub fn key_of(request: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = request.headers().get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| {
            !k.is_empty() && k.len() <= KEY_LEN_MAX && k.bytes().all(|b| b.is_ascii_graphic())
        })
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Idempotency-Key must be 1-{KEY_LEN_MAX} visible ASCII characters"
            ))
        })?;
    let caller = request
        .extensions()
        .get::<std::sync::Arc<Caller>>()
        .cloned();
    Ok(Some(scoped_key(caller.as_deref(), key)))
}

/// A key as stored: per caller, so one API key can neither replay nor block
/// another's (`<key name>/<key>` for a configured key).
pub fn scoped_key(caller: Option<&Caller>, key: &str) -> String {
    match caller.filter(|caller| caller.is_configured()) {
        Some(caller) => format!("{}/{key}", caller.name),
        None => key.to_string(),
    }
}

fn respond(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let content_type = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    HttpResponse::build(status)
        .content_type(content_type)
        .body(body)
}

/// What a handler gets for a request with an `Idempotency-Key`.
pub struct Keyed {
    /// The key, scoped to the caller.
    pub key: String,
    /// What identifies the request (method, path, body).
    pub request_hash: Vec<u8>,
    /// Set by a handler that stored its answer itself, atomically with its
    /// change; [`run`] then does not store it again.
    pub stored: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Runs `handler` once per key; replays its stored response afterwards.
pub async fn run<F, Fut, B>(
    engine: &Engine,
    request: &HttpRequest,
    body: &[u8],
    handler: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(Option<Keyed>) -> Fut,
    Fut: Future<Output = Result<Reply<B>, ApiError>>,
    B: serde::Serialize,
{
    let Some(key) = key_of(request)? else {
        let (status, value) = handler(None).await?;
        return Ok(respond(status, encode(&value)?));
    };
    let mut hasher = Sha256::new();
    hasher.update(request.method().as_str().as_bytes());
    hasher.update([0]);
    hasher.update(request.path().as_bytes());
    hasher.update([0]);
    hasher.update(body);
    let hash = hasher.finalize().to_vec();
    if !engine.idempotency_begin(&key) {
        // Another request with the key: answered already, or still running.
        if let Some(replay) = stored_response(engine, &key, &hash)? {
            return Ok(replay);
        }
        return Err(EngineError::InvalidState(
            "a request with this Idempotency-Key is in progress".to_string(),
        )
        .into());
    }
    let _in_progress = InProgress { engine, key: &key };
    // Marked in progress first, then looked up once: an answer stored before
    // the mark is found here, and none can be stored after it but ours.
    if let Some(replay) = stored_response(engine, &key, &hash)? {
        return Ok(replay);
    }
    let stored = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keyed = Keyed {
        key: key.clone(),
        request_hash: hash.clone(),
        stored: stored.clone(),
    };
    let result = handler(Some(keyed)).await;
    let (status, bytes) = match &result {
        Ok((status, value)) => (*status, encode(value)?),
        Err(error) => (error.status_code(), error.body()),
    };
    let stored = result.is_ok() && stored.load(std::sync::atomic::Ordering::Acquire);
    // Server-side failures are not remembered: a retry may succeed.
    let outcome = if status.is_server_error() || stored {
        Ok(())
    } else {
        let record = IdempotencyRecord {
            request_hash: hash,
            status: status.as_u16(),
            body: bytes.clone(),
            created_at_ms: engine.now_ms(),
        };
        engine.idempotency_put(&key, &record).await
    };
    outcome?;
    Ok(respond(status, bytes))
}

/// The stored answer for `key`, if the same request was made before.
fn stored_response(
    engine: &Engine,
    key: &str,
    hash: &[u8],
) -> Result<Option<HttpResponse>, ApiError> {
    let Some(stored) = engine.idempotency_get(key)? else {
        return Ok(None);
    };
    if stored.request_hash != hash {
        return Err(ApiError::IdempotencyKeyReused);
    }
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = respond(status, stored.body);
    response.headers_mut().insert(
        actix_web::http::header::HeaderName::from_static(REPLAYED_HEADER),
        actix_web::http::header::HeaderValue::from_static("true"),
    );
    Ok(Some(response))
}

/// Marks a key in progress; cleared on drop, even if the request is cancelled.
struct InProgress<'a> {
    engine: &'a Engine,
    key: &'a str,
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.engine.idempotency_end(self.key);
    }
}
