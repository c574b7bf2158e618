//! Transfer routes: create (holds stock at the source), read, cancel. The
//! shipment and the receipt arrive as `transfer_out` / `transfer_in` events
//! (`POST /v1/events`).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::idempotency::{self, Reply};
use super::input::{check_id, parse_json, qty, read_body, reject_body, rfc3339};
use super::{correlation_id, AppState};
use crate::engine::{NewTransfer, TransferView};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    transfer_id: String,
    sku: String,
    from: String,
    to: String,
    qty: serde_json::Number,
}

pub fn view_json(view: &TransferView) -> Value {
    let record = &view.record;
    let history: Vec<Value> = record
        .history
        .iter()
        .map(|step| {
            json!({
                "step": step.kind.as_str(),
                "at": rfc3339(step.at_ms),
                "qty": step.qty,
                "location": step.location,
                "event_id": step.event_id,
                "source": step.source,
                "correlation_id": step.correlation_id,
            })
        })
        .collect();
    let discrepancy = match (record.shipped_qty, record.received_qty) {
        (Some(shipped), Some(received)) if shipped != received => {
            Some(received as i64 - shipped as i64)
        }
        _ => None,
    };
    json!({
        "transfer_id": record.id,
        "sku": record.sku,
        "from": record.from,
        "to": record.to,
        "qty": record.qty,
        "status": view.status_name(),
        "shipped_qty": record.shipped_qty,
        "received_qty": record.received_qty,
        "discrepancy": discrepancy,
        "overdue": record.overdue_at_ms.is_some(),
        "created_at": rfc3339(record.created_at_ms),
        "updated_at": rfc3339(record.updated_at_ms),
        "shipped_at": record.shipped_at_ms.map(rfc3339),
        "due_at": view.due_at_ms.map(rfc3339),
        "received_at": record.received_at_ms.map(rfc3339),
        "correlation_id": record.correlation_id,
        "history": history,
    })
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

pub async fn create(
    state: web::Data<AppState>,
    request: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let (request_ref, body_ref) = (&request, &body);
    idempotency::run(engine, &request, &body, |_| async move {
        let mut transfer = decode_create(body_ref)?;
        transfer.correlation_id = correlation_id(request_ref);
        let (view, created) = engine.create_transfer(transfer).await?;
        let status = if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        };
        Ok::<Reply, ApiError>((status, view_json(&view)))
    })
    .await
}

pub async fn get(
    state: web::Data<AppState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("transfer id", &id)?;
    let view = engine.get_transfer(id).await?;
    Ok(HttpResponse::Ok().json(view_json(&view)))
}

/// Takes no body (`{}` accepted).
pub async fn cancel(
    state: web::Data<AppState>,
    request: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    let id = check_id("transfer id", &id)?.to_string();
    let body = read_body(payload, state.config.max_body_bytes).await?;
    let correlation = correlation_id(&request);
    let (id_ref, body_ref, correlation) = (&id, &body, &*correlation);
    idempotency::run(engine, &request, &body, |_| async move {
        reject_body(body_ref)?;
        let view = engine.cancel_transfer(id_ref, correlation).await?;
        Ok::<Reply, ApiError>((StatusCode::OK, view_json(&view)))
    })
    .await
}
