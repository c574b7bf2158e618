//! Operational routes: liveness, readiness, metrics, and the 404 fallback.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::AppState;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// 200 once recovered and able to journal, 503 before (or after a journal failure).
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let engine = state.engine()?;
    Ok(HttpResponse::Ok().json(json!({
        "status": "ready",
        "journal_head_seq": engine.journal().head(),
    })))
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state.metrics.ready.set(i64::from(state.engine().is_ok()));
    if let Some(engine) = state.engine.get() {
        state
            .metrics
            .journal_head_seq
            .set(engine.journal().head() as i64);
        let (live, _) = engine.stats().await;
        state.metrics.live_position_actors.set(live as i64);
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}

pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound("no such route".to_string()))
}
