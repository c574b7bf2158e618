//! The HTTP API (SPEC §2) on actix-web: routes, the correlation-id and
//! metrics middleware, and `Idempotency-Key` handling. Handlers decode and
//! validate, call the engine, and encode; they hold no state of their own.

mod availability;
mod channels;
mod error;
mod event_input;
mod events;
mod idempotency;
mod input;
mod ops;
mod positions;
mod reservations;

pub use reservations::{decode_create, view_json};

pub use error::ApiError;
pub use event_input::{validate_event, EventFields};

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::channels::Channels;
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;

pub const CORRELATION_HEADER: &str = "x-correlation-id";
const CORRELATION_ID_LEN_MAX: usize = 128;

/// Shared by all workers. The engine appears once recovery is done; until
/// then the API answers 503 and `/readyz` says not ready.
pub struct AppState {
    pub engine: OnceLock<Arc<Engine>>,
    /// Channel publication, started right after recovery.
    pub channels: OnceLock<Arc<Channels>>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Open event streams (bounded by `sse_connections_max`).
    pub sse_connections: AtomicUsize,
    /// SHA-256 of each configured key's secret -> its name, to say in logs who
    /// called (the secret itself is never logged). Enforcement is issue 5's.
    key_names: HashMap<[u8; 32], Arc<str>>,
}

impl AppState {
    /// The name of the configured key a request's `Authorization: Bearer` carries:
    /// `-` without one, `unknown` for a key not in config.
    pub fn key_name(&self, request: &ServiceRequest) -> Arc<str> {
        let token = request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match token {
            None => Arc::from("-"),
            Some(token) => {
                let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
                self.key_names
                    .get(&digest)
                    .cloned()
                    .unwrap_or_else(|| Arc::from("unknown"))
            }
        }
    }

    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> AppState {
        let key_names = config
            .keys
            .iter()
            .filter_map(|k| Some((k.secret_sha256()?, Arc::from(k.name.as_str()))))
            .collect();
        AppState {
            engine: OnceLock::new(),
            channels: OnceLock::new(),
            config,
            sse_connections: AtomicUsize::new(0),
            key_names,
            metrics,
        }
    }

    pub fn engine(&self) -> Result<&Arc<Engine>, ApiError> {
        match self.engine.get() {
            Some(engine) if engine.is_ready() => Ok(engine),
            Some(_) => Err(ApiError::Unavailable("journal unavailable".to_string())),
            None => Err(ApiError::Unavailable(
                "recovering, not ready yet".to_string(),
            )),
        }
    }
}

/// The request's correlation id (set by the middleware).
#[derive(Clone)]
pub struct CorrelationId(pub Arc<str>);

pub fn correlation_id(request: &HttpRequest) -> Arc<str> {
    request
        .extensions()
        .get::<CorrelationId>()
        .map(|c| c.0.clone())
        .unwrap_or_else(|| Arc::from(new_correlation_id().as_str()))
}

fn new_correlation_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn acceptable_correlation_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= CORRELATION_ID_LEN_MAX
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// Echoes or assigns `X-Correlation-Id` and records HTTP metrics by route pattern.
pub async fn edge_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let id = request
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_correlation_id(v))
        .map(str::to_string)
        .unwrap_or_else(new_correlation_id);
    request
        .extensions_mut()
        .insert(CorrelationId(Arc::from(id.as_str())));
    let state = request.app_data::<web::Data<AppState>>().cloned();
    let metrics = state.as_ref().map(|state| state.metrics.clone());
    let key = state
        .as_ref()
        .map_or_else(|| Arc::from("-"), |s| s.key_name(&request));
    // Every line logged while handling the request carries its correlation id and
    // the name of the key that called.
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        key = %key,
        method = %request.method(),
        path = %request.path(),
    );
    let mut response = next.call(request).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), value);
    }
    if let Some(metrics) = metrics {
        let route = response
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_string());
        let method = response.request().method().as_str().to_string();
        let status = response.status().as_u16().to_string();
        metrics
            .http_requests_total
            .with_label_values(&[&route, &method, &status])
            .inc();
        metrics
            .http_request_duration_seconds
            .with_label_values(&[&route, &method])
            .observe(started.elapsed().as_secs_f64());
        span.in_scope(|| {
            tracing::debug!(
                %route,
                status = response.status().as_u16(),
                elapsed_us = started.elapsed().as_micros() as u64,
                "request done"
            )
        });
    }
    Ok(response)
}

/// Every route of the API.
pub fn routes(config: &mut web::ServiceConfig) {
    // Query strings and paths that do not decode answer problem+json too.
    let query = web::QueryConfig::default().error_handler(|error, _| {
        let message = error.to_string();
        let error = if message.contains("unknown field") {
            ApiError::UnknownField(message)
        } else {
            ApiError::BadRequest(message)
        };
        error.into()
    });
    let path = web::PathConfig::default()
        .error_handler(|error, _| ApiError::BadRequest(error.to_string()).into());
    config
        .app_data(query)
        .app_data(path)
        .route("/healthz", web::get().to(ops::healthz))
        .route("/readyz", web::get().to(ops::readyz))
        .route("/metrics", web::get().to(ops::metrics))
        .service(
            web::scope("/v1")
                .route("/availability/query", web::post().to(availability::query))
                .route("/availability/{sku}", web::get().to(availability::get))
                .route("/reservations", web::post().to(reservations::create))
                .route("/reservations/{id}", web::get().to(reservations::get))
                .route(
                    "/reservations/{id}/release",
                    web::post().to(reservations::release),
                )
                .route(
                    "/reservations/{id}/allocate",
                    web::post().to(reservations::allocate),
                )
                .route(
                    "/reservations/{id}/ship",
                    web::post().to(reservations::ship),
                )
                .route("/events", web::post().to(events::post))
                .route("/events", web::get().to(events::list))
                .route("/events/stream", web::get().to(events::stream))
                .route("/exceptions", web::get().to(events::exceptions))
                .route("/channels", web::get().to(channels::list))
                .route("/channels/{id}", web::get().to(channels::get))
                .route("/channels/{id}/pause", web::post().to(channels::pause))
                .route("/channels/{id}/resume", web::post().to(channels::resume))
                .route("/channels/{id}/resync", web::post().to(channels::resync))
                .route("/channels/{id}/replay", web::post().to(channels::replay))
                .route(
                    "/channels/{id}/published",
                    web::get().to(channels::published),
                )
                .route(
                    "/positions/{sku}/{location}/settings",
                    web::put().to(positions::settings),
                )
                .route(
                    "/positions/{sku}/{location}/commitments/{channel}",
                    web::put().to(positions::commitment),
                ),
        )
        .default_service(web::to(ops::not_found));
}
