//! The HTTP API (SPEC §2) on actix-web: routes, the correlation-id and
//! metrics middleware, and `Idempotency-Key` handling. Handlers decode and
//! validate, call the engine, and encode; they hold no state of their own.

pub mod access;
mod availability;
mod channels;
mod cluster;
mod console;
pub mod dispatch;
mod error;
mod events;
mod exceptions;
pub mod forward;
#[cfg(test)]
mod fuzz_tests;
mod idempotency;
mod input;
mod openapi;
mod ops;
mod positions;
mod reconciliations;
mod reservations;
mod route_metrics;
mod schema;
mod transfers;

pub use reservations::{answer as reservation_answer, decode_create};

pub use error::ApiError;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::body::EitherBody;
use actix_web::body::MessageBody;
use actix_web::dev::ResourceDef;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::http::{ConnectionType, Method};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpRequest};
use tracing::Instrument;

use access::{Identity, Keys, Policy};

use crate::channels::Channels;
use crate::config::{Config, Role};
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
    /// Cluster mode: this node's part (absent without `[cluster]`).
    pub cluster: OnceLock<Arc<crate::cluster::Node>>,
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    /// Open event streams (bounded by `sse_connections_max`).
    pub sse_connections: AtomicUsize,
    /// Open event streams per key (bounded by `sse_connections_per_key_max`).
    pub sse_per_key: dashmap::DashMap<Arc<str>, usize>,
    /// The configured API keys and their rate limiters.
    pub keys: Keys,
    /// Each route's HTTP metric handles, resolved once.
    route_metrics: route_metrics::RouteMetrics,
    /// Requests being handled (what a SIGTERM waits for before the snapshot).
    in_flight: AtomicUsize,
    /// Requests ever admitted to the middleware (how a drain sees quiet).
    started: AtomicU64,
    /// Open client connections (counted by [`Connection`]).
    connections: Arc<AtomicUsize>,
    /// Set on SIGTERM: every answer closes its connection, so clients on
    /// keep-alive connections leave instead of sending into the shutdown.
    draining: AtomicBool,
}

impl AppState {
    pub fn new(config: Arc<Config>, metrics: Arc<Metrics>) -> AppState {
        AppState {
            engine: OnceLock::new(),
            channels: OnceLock::new(),
            cluster: OnceLock::new(),
            keys: Keys::new(&config),
            route_metrics: route_metrics::RouteMetrics::new(),
            config,
            sse_connections: AtomicUsize::new(0),
            sse_per_key: dashmap::DashMap::new(),
            metrics,
            in_flight: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            connections: Arc::new(AtomicUsize::new(0)),
            draining: AtomicBool::new(false),
        }
    }

    pub fn requests_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests admitted so far (a drain waits until this stops moving).
    pub fn requests_started(&self) -> u64 {
        self.started.load(Ordering::Acquire)
    }

    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// A guard to keep in the connection's data (`HttpServer::on_connect`):
    /// the connection counts as open while it lives.
    pub fn connection_opened(&self) -> Connection {
        self.connections.fetch_add(1, Ordering::AcqRel);
        Connection {
            open: self.connections.clone(),
            token: access::TokenMemo::default(),
        }
    }

    /// From now on every answer carries `Connection: close`.
    pub fn begin_drain(&self) {
        self.draining.store(true, Ordering::Release);
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

/// How long a request's body may stall: no byte for this long and it is
/// answered 408 `request_timeout` (and the connection closed). An idle limit,
/// not a total one: a large CSV reconciliation is read as fast as its rows are
/// applied.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A request body that must not stall for [`BODY_TIMEOUT`]. The timer is set
/// only when the body is not all there when read (most are: they come with the
/// head).
struct BodyDeadline {
    body: actix_web::dev::Payload,
    /// When the head or the last part came.
    moved: tokio::time::Instant,
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    expired: bool,
    /// Told of the expiry: a cluster follower, which must answer it itself.
    watcher: Option<Arc<AtomicBool>>,
}

impl futures_util::Stream for BodyDeadline {
    type Item = Result<web::Bytes, actix_web::error::PayloadError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = &mut *self;
        if this.expired {
            return Poll::Ready(None);
        }
        match std::pin::Pin::new(&mut this.body).poll_next(cx) {
            Poll::Ready(Some(Ok(part))) => {
                this.moved = tokio::time::Instant::now();
                return Poll::Ready(Some(Ok(part)));
            }
            Poll::Ready(other) => return Poll::Ready(other),
            Poll::Pending => {}
        }
        let due = this.moved + BODY_TIMEOUT;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if timer.deadline() != due {
            timer.as_mut().reset(due);
        }
        if timer.as_mut().poll(cx).is_ready() {
            this.expired = true;
            if let Some(watcher) = &this.watcher {
                watcher.store(true, Ordering::Relaxed);
            }
            // actix drains the rest of a chunked body whose reader is gone before
            // it closes; held a moment longer, the reader makes it close right
            // after the 408 instead of waiting on a silent client.
            let body = std::mem::replace(&mut this.body, actix_web::dev::Payload::None);
            actix_web::rt::spawn(async move {
                actix_web::rt::time::sleep(Duration::from_secs(1)).await;
                drop(body);
            });
            let stalled = std::io::Error::new(std::io::ErrorKind::TimedOut, "request body stalled");
            return Poll::Ready(Some(Err(actix_web::error::PayloadError::Io(stalled))));
        }
        Poll::Pending
    }
}

/// Puts [`BODY_TIMEOUT`] on `request`'s body, if it has one (true).
fn limit_body_time(request: &mut ServiceRequest, watcher: Option<Arc<AtomicBool>>) -> bool {
    use actix_web::http::header;
    let headers = request.headers();
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
    if !has_body {
        return false;
    }
    let body = actix_web::HttpMessage::take_payload(request);
    let limited: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = Result<web::Bytes, actix_web::error::PayloadError>>>,
    > = Box::pin(BodyDeadline {
        body,
        moved: tokio::time::Instant::now(),
        timer: None,
        expired: false,
        watcher,
    });
    request.set_payload(actix_web::dev::Payload::from(limited));
    true
}

/// [`limit_body_time`] for a body this node forwards: the flag says whether
/// it ran out.
pub(crate) fn limit_forwarded_body_time(request: &mut ServiceRequest) -> Option<Arc<AtomicBool>> {
    let expired = Arc::new(AtomicBool::new(false));
    limit_body_time(request, Some(expired.clone())).then_some(expired)
}

/// The key `request` carries, remembered per connection (see
/// [`access::Keys::authenticate_memo`]).
pub(crate) fn identity_of(request: &ServiceRequest, keys: &access::Keys) -> Identity {
    keys.authenticate_memo(
        request
            .headers()
            .get(actix_web::http::header::AUTHORIZATION),
        request
            .conn_data::<Connection>()
            .map(|connection| &connection.token),
    )
}

/// The correlation id a request carries, if acceptable, else a new one.
pub fn correlation_of(headers: &actix_web::http::header::HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_correlation_id(v))
        .map(str::to_string)
        .unwrap_or_else(new_correlation_id)
}

fn new_correlation_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

fn acceptable_correlation_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= CORRELATION_ID_LEN_MAX
        && value.bytes().all(|b| b.is_ascii_graphic())
}

/// One route of the API: method, path pattern and who may call it.
#[derive(Debug, Clone, Copy)]
pub struct RouteSpec {
    /// Lower case, as in `web::get()`.
    pub method: &'static str,
    pub path: &'static str,
    pub policy: Policy,
}

/// The route table: the one place a route is declared. It registers the
/// handlers, gives the access middleware each route's policy, and is what the
/// OpenAPI test compares the document with.
macro_rules! route_table {
    ($( $method:ident $path:literal => $handler:path, $policy:expr; )*) => {
        /// Every route, in registration (and so matching) order.
        pub const ROUTES: &[RouteSpec] = &[
            $( RouteSpec { method: stringify!($method), path: $path, policy: $policy }, )*
        ];

        fn register(config: &mut web::ServiceConfig) {
            $( config.route($path, web::$method().to($handler)); )*
        }
    };
}

use access::{ADMIN, AVAILABILITY, CHANNEL_STATUS, FULFILMENT, READERS, SELLERS, SYSTEMS};

route_table! {
    get "/healthz" => ops::healthz, Policy::Open;
    get "/readyz" => ops::readyz, Policy::Open;
    get "/metrics" => ops::metrics, Policy::Metrics;
    get "/v1/cluster" => cluster::get, Policy::Roles(READERS);
    get "/v1/openapi.json" => openapi::openapi, Policy::Open;
    post "/v1/availability/query" => availability::query, Policy::Roles(AVAILABILITY);
    get "/v1/availability/{sku}" => availability::get, Policy::Roles(AVAILABILITY);
    post "/v1/reservations" => reservations::create, Policy::Roles(SELLERS);
    get "/v1/reservations/{id}" => reservations::get, Policy::Roles(&[Role::Admin, Role::Channel, Role::System, Role::Observer]);
    post "/v1/reservations/{id}/release" => reservations::release, Policy::Roles(SELLERS);
    post "/v1/reservations/{id}/allocate" => reservations::allocate, Policy::Roles(FULFILMENT);
    post "/v1/reservations/{id}/ship" => reservations::ship, Policy::Roles(FULFILMENT);
    post "/v1/reservations/{id}/confirm" => reservations::confirm, Policy::Roles(SELLERS);
    post "/v1/transfers" => transfers::create, Policy::Roles(SYSTEMS);
    get "/v1/transfers/{id}" => transfers::get, Policy::Roles(&[Role::Admin, Role::System, Role::Observer]);
    post "/v1/transfers/{id}/cancel" => transfers::cancel, Policy::Roles(SYSTEMS);
    post "/v1/events" => events::post, Policy::Roles(SYSTEMS);
    get "/v1/events" => events::list, Policy::Roles(READERS);
    get "/v1/events/stream" => events::stream, Policy::Roles(READERS);
    get "/v1/exceptions" => events::exceptions, Policy::Roles(READERS);
    get "/v1/exceptions/{id}" => exceptions::get, Policy::Roles(&[Role::Admin, Role::System, Role::Observer]);
    post "/v1/exceptions/{id}/retry" => exceptions::retry, Policy::Roles(SYSTEMS);
    post "/v1/exceptions/{id}/resolve" => exceptions::resolve, Policy::Roles(SYSTEMS);
    get "/v1/channels" => channels::list, Policy::Roles(CHANNEL_STATUS);
    get "/v1/channels/{id}" => channels::get, Policy::Roles(CHANNEL_STATUS);
    post "/v1/channels/{id}/pause" => channels::pause, Policy::Roles(ADMIN);
    post "/v1/channels/{id}/resume" => channels::resume, Policy::Roles(ADMIN);
    post "/v1/channels/{id}/resync" => channels::resync, Policy::Roles(ADMIN);
    post "/v1/channels/{id}/replay" => channels::replay, Policy::Roles(ADMIN);
    get "/v1/channels/{id}/published" => channels::published, Policy::Roles(CHANNEL_STATUS);
    put "/v1/positions/{sku}/{location}/settings" => positions::settings, Policy::Roles(ADMIN);
    put "/v1/positions/{sku}/{location}/commitments/{channel}" => positions::commitment, Policy::Roles(ADMIN);
    post "/v1/reconciliations" => reconciliations::post, Policy::Roles(SYSTEMS);
    // Last: the policy lookup walks the table in order, and these are rare.
    get "/console" => console::page, Policy::Open;
    get "/console/{asset}" => console::asset, Policy::Open;
    get "/v1/whoami" => console::whoami, Policy::Roles(&Role::ALL);
}

/// Where a request lands in [`ROUTES`]: the index of the route actix will
/// call (the first, in table order, with the request's method whose pattern
/// matches the path) and its policy; without one, the first route whose
/// pattern matches whatever its method (the request ends in a 404 or 405
/// without a handler). The index is the metrics' `route` label, the pattern
/// actix's `match_pattern()` reports; `None`: `unmatched`.
pub(crate) fn route_of(method: &Method, path: &str) -> (Option<usize>, Option<Policy>) {
    static DEFS: OnceLock<Vec<ResourceDef>> = OnceLock::new();
    let defs = DEFS.get_or_init(|| ROUTES.iter().map(|r| ResourceDef::new(r.path)).collect());
    let mut other_method = None;
    for (index, (route, def)) in ROUTES.iter().zip(defs).enumerate() {
        let same_method = route.method.eq_ignore_ascii_case(method.as_str());
        if (same_method || other_method.is_none()) && def.is_match(path) {
            if same_method {
                return (Some(index), Some(route.policy));
            }
            other_method = Some(index);
        }
    }
    (other_method, None)
}

/// Echoes or assigns `X-Correlation-Id`, authenticates the caller and checks
/// the route's policy (401/429/403 before any handler runs), logs an audit
/// line for every state-changing call, and records HTTP metrics by route
/// pattern.
pub async fn edge_middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let started = Instant::now();
    let mut request = request;
    limit_body_time(&mut request, None);
    let id = correlation_of(request.headers());
    request
        .extensions_mut()
        .insert(CorrelationId(Arc::from(id.as_str())));
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError(
            "application state missing",
        ));
    };
    let _in_flight = InFlight::enter(&state);
    let head_bytes = request.path().len()
        + request.query_string().len()
        + request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum::<usize>();
    let too_large = head_bytes > state.config.max_header_bytes;
    // An oversized head is refused before its token is hashed.
    let identity = if too_large {
        Identity::Anonymous
    } else {
        identity_of(&request, &state.keys)
    };
    let key = identity.log_name();
    // Every line logged while handling the request carries its correlation id and
    // the name of the key that called (never the secret).
    let span = tracing::info_span!(
        "request",
        correlation_id = %id,
        key = %key,
        method = %request.method(),
        path = %request.path(),
    );
    // The decoded path, which is what actix routes on: matching the raw
    // one would let `/v1/%65vents` past the table to the `/v1/events` handler.
    let (route, policy) = route_of(request.method(), request.match_info().as_str());
    let admitted = if too_large {
        Err(ApiError::HeadersTooLarge(state.config.max_header_bytes))
    } else {
        match policy {
            Some(policy) => state.keys.admit(policy, &identity),
            None => Ok(None),
        }
    };
    let mut response = match admitted {
        Ok(caller) => {
            if let Some(caller) = caller {
                request.extensions_mut().insert(caller);
            }
            next.call(request)
                .instrument(span.clone())
                .await?
                .map_into_left_body()
        }
        Err(error) => {
            if let ApiError::RateLimited { key, .. } = &error {
                state
                    .metrics
                    .rate_limited_total
                    .with_label_values(&[key])
                    .inc();
            }
            if matches!(identity, Identity::Unknown) {
                span.in_scope(|| tracing::warn!("unknown API key refused"));
            }
            request.error_response(error).map_into_right_body()
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(CORRELATION_HEADER), value);
    }
    // Draining; or a stalled body, whose rest (if it ever comes) is not read.
    if state.draining.load(Ordering::Acquire)
        || response.status() == actix_web::http::StatusCode::REQUEST_TIMEOUT
    {
        response
            .response_mut()
            .head_mut()
            .set_connection_type(ConnectionType::Close);
    }
    let method = response.request().method().clone();
    let status = response.status();
    state.route_metrics.record(
        &state.metrics,
        route,
        &method,
        status,
        started.elapsed().as_secs_f64(),
    );
    let route = route.map_or("unmatched", |index| ROUTES[index].path);
    span.in_scope(|| {
        if method != Method::GET && method != Method::HEAD {
            // The audit trail: who changed (or tried to change) what, and how it ended.
            let outcome = if status.is_success() {
                "ok"
            } else if status.is_client_error() {
                "refused"
            } else {
                "failed"
            };
            tracing::info!(
                target: "stockwire::audit",
                key = %key,
                correlation_id = %id,
                %route,
                status = status.as_u16(),
                outcome,
                "audit"
            );
        }
        tracing::debug!(
            %route,
            status = status.as_u16(),
            elapsed_us = started.elapsed().as_micros() as u64,
            "request done"
        )
    });
    Ok(response)
}

/// One open client connection, counted in [`AppState::open_connections`]
/// until the connection (and with it this guard) is dropped, and the key it
/// last authenticated with.
pub struct Connection {
    open: Arc<AtomicUsize>,
    token: access::TokenMemo,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request in [`AppState::requests_in_flight`] while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(state: &'a AppState) -> InFlight<'a> {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        state.started.fetch_add(1, Ordering::AcqRel);
        InFlight(&state.in_flight)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
    config.app_data(query).app_data(path);
    register(config);
    config.default_service(web::to(ops::not_found));
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App};

    /// The metrics' `route` label taken from the table is the pattern actix
    /// itself reports for the request, for every route and for requests
    /// with another method or no route at all.
    #[actix_web::test]
    async fn route_labels_are_actix_match_patterns() {
        let app = test::init_service(App::new().configure(routes)).await;
        let mut requests: Vec<(Method, String)> = Vec::new();
        for route in ROUTES {
            let path = route
                .path
                .split('/')
                .map(|segment| {
                    if segment.starts_with('{') {
                        "query"
                    } else {
                        segment
                    }
                })
                .collect::<Vec<_>>()
                .join("/");
            for method in [Method::GET, Method::POST, Method::PUT, Method::DELETE] {
                requests.push((method, path.clone()));
            }
        }
        requests.push((Method::GET, "/v1/nothing/here".to_string()));
        requests.push((Method::GET, "/v1/reservations/a/b/c".to_string()));
        for (method, path) in requests {
            let request = test::TestRequest::default()
                .method(method.clone())
                .uri(&path)
                .to_request();
            let response = test::call_service(&app, request).await;
            let actix = response.request().match_pattern();
            let (label, policy) = route_of(&method, &path);
            assert_eq!(
                label.map(|index| ROUTES[index].path.to_string()),
                actix,
                "{method} {path}"
            );
            let expected = ROUTES.iter().find(|route| {
                route.method.eq_ignore_ascii_case(method.as_str())
                    && ResourceDef::new(route.path).is_match(&path)
            });
            assert_eq!(policy.is_some(), expected.is_some(), "{method} {path}");
        }
    }
}
