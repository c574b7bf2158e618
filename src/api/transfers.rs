//! Transfer routes: create (holds stock at the source), read, cancel. The
//! shipment and the receipt arrive as `transfer_out` / `transfer_in` events
//! (`POST /v1/events`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::access::Caller;
use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{check_id, parse_json, qty, read_body, reject_body, rfc3339};
use super::schema::{Transfer, TransferStep};
use super::{correlation_id, AppState};
use crate::engine::{NewTransfer, TransferView};

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
// Named apart: both routes' bodies are `CreateBody` here, one component there.
#[schema(as = NewTransfer)]
pub(super) struct CreateBody {
    transfer_id: String,
    sku: String,
    /// Source location (the stock is held there).
    from: String,
    /// Destination location.
    to: String,
    #[schema(value_type = u64, minimum = 1, maximum = 1000000000)]
    qty: serde_json::Number,
}

/// A system key works on transfers that start or end at one of its locations.
fn may_see(caller: &Caller, view: &TransferView) -> Result<(), ApiError> {
    caller
        .may_touch(&view.record.from)
        .or_else(|_| caller.may_touch(&view.record.to))
}

/// The answer of every transfer route, as OpenAPI describes it.
pub fn answer(view: &TransferView) -> Transfer<'_> {
    let record = &view.record;
    let discrepancy = match (record.shipped_qty, record.received_qty) {
        (Some(shipped), Some(received)) if shipped != received => {
            Some(received as i64 - shipped as i64)
        }
        _ => None,
    };
    Transfer {
        transfer_id: &record.id,
        sku: &record.sku,
        from: &record.from,
        to: &record.to,
        qty: record.qty,
        status: view.status_name(),
        shipped_qty: record.shipped_qty,
        received_qty: record.received_qty,
        discrepancy,
        overdue: record.overdue_at_ms.is_some(),
        created_at: rfc3339(record.created_at_ms),
        updated_at: rfc3339(record.updated_at_ms),
        shipped_at: record.shipped_at_ms.map(rfc3339),
        due_at: view.due_at_ms.map(rfc3339),
        received_at: record.received_at_ms.map(rfc3339),
        correlation_id: &record.correlation_id,
        history: record
            .history
            .iter()
            .map(|step| TransferStep {
                step: step.kind.as_str(),
                at: rfc3339(step.at_ms),
                qty: step.qty,
                location: &step.location,
                event_id: &step.event_id,
                source: &step.source,
                correlation_id: &step.correlation_id,
            })
            .collect(),
    }
}

/// A transfer answered by [`idempotency::run`], serialized through [`answer`].
pub struct Answer(pub TransferView);

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        answer(&self.0).serialize(serializer)
    }
}

fn decode_create(body: &[u8]) -> Result<NewTransfer, ApiError> {
    let body: CreateBody = parse_json(body)?;
    check_id("transfer_id", &body.transfer_id)?;
    check_id("sku", &body.sku)?;
    check_id("from", &body.from)?;
    check_id("to", &body.to)?;
    Ok(NewTransfer {
        qty: qty("qty", &body.qty)?,
        transfer_id: body.transfer_id,
        sku: body.sku,
        from: body.from,
        to: body.to,
        correlation_id: std::sync::Arc::from(""),
    })
}

const IDEMPOTENCY: &str =
    "replay-safe retries: the same key and body answer the first response again";

#[utoipa::path(post, path = "/v1/transfers", tag = "transfers", request_body = CreateBody,
    params(("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY)),
    responses((status = 201, description = "stock held at the source", body = Transfer),
        (status = 200, description = "this transfer_id exists with the same content", body = Transfer),
        super::schema::Errors))]
pub async fn create(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let (request_ref, body_ref, caller) = (&request, &body, &caller);
    idempotency::run(engine, &request, &body, |_| async move {
        let mut transfer = decode_create(body_ref)?;
        // The system that holds the stock starts the transfer.
        caller.may_touch(&transfer.from)?;
        transfer.correlation_id = correlation_id(request_ref);
        let (view, created) = engine.create_transfer(transfer).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok::<Reply<Answer>, ApiError>((status, Answer(view)))
    })
    .await
}

#[utoipa::path(get, path = "/v1/transfers/{id}", tag = "transfers",
    params(("id" = String, Path, description = "transfer id")),
    responses((status = 200, description = "its state and history", body = Transfer), super::schema::Errors))]
pub async fn get(
    state: web::Data<AppState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("transfer id", &id)?;
    let view = engine.get_transfer(id).await?;
    may_see(&caller, &view)?;
    Ok(HttpResponse::Ok().json(answer(&view)))
}

/// Takes no body (`{}` accepted).
#[utoipa::path(post, path = "/v1/transfers/{id}/cancel", tag = "transfers",
    params(("id" = String, Path, description = "transfer id"), ("Idempotency-Key" = Option<String>, Header, description = IDEMPOTENCY)),
    request_body(content = Object, description = "no body, or `{}`"),
    responses((status = 200, description = "cancelled: the hold is released", body = Transfer), super::schema::Errors))]
pub async fn cancel(
    state: web::Data<AppState>,
    caller: Caller,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("transfer id", &id)?.to_string();
    if !caller.is_unscoped() {
        let view = engine.get_transfer(&id).await?;
        caller.may_touch(&view.record.from)?;
    }
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let correlation = correlation_id(&request);
    let (id_ref, body_ref, correlation) = (&id, &body, &*correlation);
    idempotency::run(engine, &request, &body, |_| async move {
        reject_body(body_ref)?;
        let view = engine.cancel_transfer(id_ref, correlation).await?;
        Ok::<Reply<Answer>, ApiError>((StatusCode::OK, Answer(view)))
    })
    .await
}
