//! Operational routes: liveness, readiness, metrics, and the 404 fallback.

use actix_web::{web, HttpResponse};

use super::error::ApiError;
use super::schema::{Health, Ready};
use super::AppState;

#[utoipa::path(get, path = "/healthz", tag = "operations", security(()),
    responses((status = 200, description = "alive", body = Health)))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

#[utoipa::path(get, path = "/readyz", tag = "operations", security(()),
    responses((status = 200, description = "recovered and able to journal", body = Ready),
        (status = 503, description = "recovering, or the journal failed", body = super::schema::Problem, content_type = "application/problem+json")))]
/// 200 once recovered and able to journal, 503 before (or after a journal failure).
/// In cluster mode a follower is ready once it knows a live owner to forward to.
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let (head, role) = readiness(&state)?;
    Ok(HttpResponse::Ok().json(Ready {
        status: "ready",
        journal_head_seq: head,
        role,
    }))
}

/// What `/readyz` answers and `stockwire_ready` says: the journal head and the
/// cluster role, or why the node is not ready.
fn readiness(state: &AppState) -> Result<(u64, Option<&'static str>), ApiError> {
    if let Some(node) = state.cluster.get() {
        // With partition groups, a node just started may not know the other
        // groups' owners yet: it could not route their requests.
        if !node.knows_groups() {
            return Err(ApiError::Unavailable(format!(
                "cluster node {} has not heard every partition group's owner yet",
                node.config.node
            )));
        }
        if !node.is_owner() {
            if node.owner_address().is_none() {
                return Err(ApiError::Unavailable(format!(
                    "cluster node {} is {} and knows no live owner",
                    node.config.node,
                    node.role().as_str()
                )));
            }
            // A follower's store holds the owner's journal as far as it applied.
            return Ok((node.journal_head(), Some("follower")));
        }
    }
    let engine = state.engine()?;
    Ok((
        engine.journal().head(),
        state.cluster.get().map(|_| "owner"),
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "operations", security((), ("api_key" = [])),
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"), super::schema::Errors))]
pub async fn metrics(state: web::Data<AppState>, request: actix_web::HttpRequest) -> HttpResponse {
    // The middleware admitted a key when `protect_metrics` is on; without one
    // (a request it could not match) refuse rather than serve.
    if state.config.protect_metrics
        && actix_web::HttpMessage::extensions(&request)
            .get::<std::sync::Arc<super::access::Caller>>()
            .is_none()
    {
        return actix_web::ResponseError::error_response(&ApiError::Unauthorized(
            "/metrics needs an admin or observer key".to_string(),
        ));
    }
    let ready = readiness(&state);
    state.metrics.ready.set(i64::from(ready.is_ok()));
    if let Ok((head, _)) = ready {
        state.metrics.journal_head_seq.set(head as i64);
    }
    state.metrics.observe_log_drops();
    state.metrics.observe_cluster(state.config.partitions);
    if let Some(engine) = state.engine.get() {
        state
            .metrics
            .observe_journal(engine.journal(), engine.store_slowdowns());
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
