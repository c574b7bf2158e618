//! Reservation routes: create, read, release, allocate, ship, and the nodes'
//! own confirmation of a cart part (partition groups).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{
    check_id, parse_json, parse_optional_json, qty, read_body, reject_body, rfc3339,
};
use super::schema::{Reservation, ReservationLine};
use super::{correlation_id, AppState};
use crate::engine::{LineRequest, NewReservation, RememberAnswer, ReservationView, ShipLine};

/// Longest `ttl_seconds` a hold may ask for (30 days).
pub(super) const TTL_SECONDS_MAX: u64 = 30 * 24 * 3600;
const ORDER_REF_LEN_MAX: usize = 128;

/// A `ttl_seconds` as given: an integer in 1..=[`TTL_SECONDS_MAX`].
fn ttl_seconds(number: &serde_json::Number) -> Result<u64, ApiError> {
    number
        .as_u64()
        .filter(|t| (1..=TTL_SECONDS_MAX).contains(t))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "ttl_seconds must be an integer in 1..={TTL_SECONDS_MAX}"
            ))
        })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct LineBody {
    sku: String,
    /// Without it, sourced from the channel's locations in order.
    location: Option<String>,
    #[schema(value_type = u64, minimum = 1, maximum = 1000000000)]
    qty: serde_json::Number,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// Named apart: both routes' bodies are `CreateBody` here, one component there.
#[schema(as = NewReservation)]
pub(super) struct CreateBody {
    reservation_id: Option<String>,
    channel: String,
    order_ref: Option<String>,
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 2592000)]
    ttl_seconds: Option<serde_json::Number>,
    lines: Vec<LineBody>,
    #[serde(default)]
    split: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ShipLineBody {
    sku: String,
    location: String,
    #[schema(value_type = u64, minimum = 1, maximum = 1000000000)]
    qty: serde_json::Number,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfirmBody {
    /// The cart's TTL, counted from the part's creation.
    #[schema(value_type = u64, minimum = 1, maximum = 2592000)]
    ttl_seconds: serde_json::Number,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ShipBody {
    /// Without lines, everything allocated ships.
    lines: Option<Vec<ShipLineBody>>,
}

/// The answer of every reservation route, as OpenAPI describes it.
pub fn answer(view: &ReservationView) -> Reservation<'_> {
    let record = &view.record;
    let on_lease = record.cart.as_ref().filter(|cart| {
        cart.stage == crate::storage::records::CartStage::Lease
            && record.status == crate::domain::reservation::ReservationStatus::Held
    });
    Reservation {
        reservation_id: &record.id,
        channel: &record.channel,
        order_ref: record.order_ref.as_deref(),
        status: record.status.as_str(),
        created_at: rfc3339(record.created_at_ms),
        updated_at: rfc3339(record.updated_at_ms),
        // A cart's part on its lease: the cart's deadline, and the lease's end
        // apart (docs/CLUSTER.md, "Carts over several groups").
        expires_at: on_lease
            .map(|cart| cart.expires_at_ms)
            .or(record.expires_at_ms)
            .map(rfc3339),
        lease_expires_at: on_lease.and(record.expires_at_ms).map(rfc3339),
        correlation_id: &record.correlation_id,
        lines: record
            .lines
            .iter()
            .zip(&view.backordered)
            .map(|(line, backordered)| ReservationLine {
                sku: &line.sku,
                location: &line.location,
                qty: line.qty,
                backordered: *backordered,
            })
            .collect(),
    }
}

/// The JSON of [`answer`], as sent (and stored under an `Idempotency-Key`).
fn answer_bytes(view: &ReservationView) -> Vec<u8> {
    // The answer is strings and integers: encoding it cannot fail.
    serde_json::to_vec(&answer(view)).unwrap_or_default()
}

/// A reservation answered by [`idempotency::run`]: serialized through
/// [`answer`] when it is sent (and stored, under an `Idempotency-Key`).
pub struct Answer(pub ReservationView);

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        answer(&self.0).serialize(serializer)
    }
}

/// The body of `POST /v1/reservations`, decoded strictly and validated (public for
/// the JSON benches: this is the hot route's decoding).
pub fn decode_create(body: &[u8], max_lines: usize) -> Result<NewReservation, ApiError> {
    validate(parse_json(body)?, max_lines)
}

fn validate(body: CreateBody, max_lines: usize) -> Result<NewReservation, ApiError> {
    if let Some(id) = &body.reservation_id {
        check_id("reservation_id", id)?;
    }
    check_id("channel", &body.channel)?;
    if body.lines.is_empty() || body.lines.len() > max_lines {
        return Err(ApiError::BadRequest(format!(
            "a reservation has 1..={max_lines} lines"
        )));
    }
    if let Some(order_ref) = &body.order_ref {
        if order_ref.is_empty() || order_ref.len() > ORDER_REF_LEN_MAX {
            return Err(ApiError::BadRequest(format!(
                "order_ref must be 1-{ORDER_REF_LEN_MAX} bytes"
            )));
        }
    }
    let ttl_seconds = body.ttl_seconds.as_ref().map(ttl_seconds).transpose()?;
    let mut lines = Vec::with_capacity(body.lines.len());
    for line in body.lines {
        check_id("sku", &line.sku)?;
        if let Some(location) = &line.location {
            check_id("location", location)?;
        }
        lines.push(LineRequest {
            qty: qty("qty", &line.qty)?,
            sku: line.sku,
            location: line.location,
        });
    }
    Ok(NewReservation {
        reservation_id: body.reservation_id,
        channel: body.channel,
        order_ref: body.order_ref,
        ttl_seconds,
        lines,
        split: body.split,
        correlation_id: std::sync::Arc::from(""),
        idempotency_key: None,
        remember: None,
        lease_seconds: None,
        siblings: Vec::new(),
        cart_nonce: 0,
    })
}

#[utoipa::path(post, path = "/v1/reservations", tag = "reservations",
    request_body = CreateBody, params(("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    responses((status = 201, description = "held", body = Reservation),
        (status = 200, description = "this reservation_id exists with the same content", body = Reservation),
        super::schema::Errors))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let (state_ref, request_ref, body_ref, caller) = (&state, &request, &body, &caller);
    idempotency::run(engine, &request, &body, |key| async move {
        let (state, request, body) = (state_ref, request_ref, body_ref);
        let mut reservation = decode_create(body, state.config.reservation_lines_max)?;
        caller.may_act_for(&reservation.channel)?;
        reservation.correlation_id = correlation_id(request);
        if let Some((lease, siblings, nonce)) = super::dispatch::part_lease(request)? {
            reservation.lease_seconds = Some(lease);
            reservation.siblings = siblings;
            reservation.cart_nonce = nonce;
        }
        if let Some(keyed) = key {
            reservation.idempotency_key = Some(keyed.key.clone());
            reservation.remember = Some(RememberAnswer {
                key: keyed.key,
                request_hash: keyed.request_hash,
                render: answer_bytes,
                stored: keyed.stored,
            });
        }
        let (view, created) = engine.create_reservation(reservation).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok::<Reply<Answer>, ApiError>((status, Answer(view)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = String, Path, description = "reservation id")),
    responses((status = 200, description = "the reservation", body = Reservation), super::schema::Errors))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("reservation id", &id)?;
    let view = engine.get_reservation(id).await?;
    caller.may_see(&view.record)?;
    Ok(HttpResponse::Ok().json(answer(&view)))
}

#[derive(Clone, Copy)]
enum Action {
    Release,
    Allocate,
    Ship,
}

/// Release, allocate and ship share the shape: optional body, idempotent.
async fn transition(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    action: Action,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("reservation id", &id)?.to_string();
    // A reservation's channel and lines never change, so checking them before
    // the transition is as good as checking them in it.
    // (A reservation not there yet is 404 now, not checked later: one created
    // meanwhile by another channel must not be touched unchecked.)
    if !caller.is_unscoped() {
        caller.may_see(&engine.reservation_record(&id).await?)?;
    }
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let correlation = correlation_id(&request);
    let (id_ref, body_ref, correlation, request_ref) = (&id, &body, &*correlation, &request);
    idempotency::run(engine, &request, &body, |_| async move {
        let (id, body) = (id_ref, body_ref);
        let view = match action {
            Action::Release => {
                reject_body(body)?;
                engine.release_reservation(id, correlation).await?
            }
            Action::Allocate => {
                reject_body(body)?;
                engine.allocate_reservation(id, correlation).await?
            }
            Action::Ship => {
                let lines = match parse_optional_json::<ShipBody>(body)?.and_then(|b| b.lines) {
                    None => None,
                    // Only a partition group's part of a cart's ship names none
                    // of its lines (api::dispatch): they ship 0 and are released.
                    Some(lines)
                        if lines.is_empty() && !super::dispatch::is_group_part(request_ref) =>
                    {
                        return Err(ApiError::BadRequest(
                            "lines, when given, names at least one line; release ships nothing"
                                .to_string(),
                        ))
                    }
                    Some(lines) => {
                        let mut ship = Vec::with_capacity(lines.len());
                        for line in lines {
                            check_id("sku", &line.sku)?;
                            check_id("location", &line.location)?;
                            ship.push(ShipLine {
                                qty: qty("qty", &line.qty)?,
                                sku: line.sku,
                                location: line.location,
                            });
                        }
                        Some(ship)
                    }
                };
                engine.ship_reservation(id, lines, correlation).await?
            }
        };
        Ok::<Reply<Answer>, ApiError>((StatusCode::OK, Answer(view)))
    })
    .await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/release", tag = "reservations",
    params(("id" = String, Path, description = "reservation id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 200, description = "released (a no-op when already released or expired)", body = Reservation), super::schema::Errors))]
pub async fn release(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    transition(state, caller, request, id, payload, Action::Release).await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/allocate", tag = "reservations",
    params(("id" = String, Path, description = "reservation id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 200, description = "allocated: no more expiry", body = Reservation), super::schema::Errors))]
pub async fn allocate(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    transition(state, caller, request, id, payload, Action::Allocate).await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/ship", tag = "reservations",
    params(("id" = String, Path, description = "reservation id"), ("Idempotency-Key" = Option<String>, Header, description = "replay-safe retries: the same key and body answer the first response again")),
    request_body(content = Option<ShipBody>, description = "no body ships everything"),
    responses((status = 200, description = "shipped (a short shipment releases the rest)", body = Reservation), super::schema::Errors))]
pub async fn ship(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    transition(state, caller, request, id, payload, Action::Ship).await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/confirm", tag = "reservations",
    params(("id" = String, Path, description = "reservation id")),
    request_body(content = ConfirmBody, description = "the cart's TTL"),
    responses((status = 200, description = "the part holds for the cart's TTL (docs/CLUSTER.md, \"Carts over several groups\"); only a partition group's part sent by another node: `404` otherwise", body = Reservation), super::schema::Errors))]
pub async fn confirm(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    // The nodes' own step of a cart over several groups (api::dispatch), not a
    // client's: a client gets what an unknown route gets.
    if !super::dispatch::is_group_part(&request) {
        return Err(ApiError::NotFound("no such route".to_string()));
    }
    let engine = state.engine()?;
    let id = check_id("reservation id", &id)?;
    if !caller.is_unscoped() {
        caller.may_see(&engine.reservation_record(id).await?)?;
    }
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let body: ConfirmBody = parse_json(&body)?;
    let ttl_seconds = ttl_seconds(&body.ttl_seconds)?;
    let lease = state
        .config
        .cluster
        .as_ref()
        .map_or(0, |cluster| cluster.cart_lease_seconds);
    let view = engine.confirm_reservation(id, ttl_seconds, lease).await?;
    Ok(HttpResponse::Ok().json(answer(&view)))
}
