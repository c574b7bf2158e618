//! Every route works on every node: a follower forwards each request (but its
//! own operations routes) to the owner's HTTP listener and streams the answer
//! back as it came, status, headers and body. The owner checks the key, the rate
//! limit and the role, as for a request of its own.

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderName};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse, ResponseError};

use super::error::ApiError;
use super::AppState;
use crate::cluster::Node;

/// Set on a forwarded request: its receiver never forwards it again, so two
/// nodes that each take the other for the owner cannot bounce a request.
pub const FORWARDED_HEADER: &str = "x-stockwire-forwarded-by";

/// Routes a follower answers itself: its own health, metrics and cluster view.
fn is_local(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics" | "/v1/cluster")
}

/// Headers of one hop, not of the request (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "host"
            | "content-length"
    )
}

thread_local! {
    /// One client per worker thread (awc's client is not `Send`); its pool
    /// keeps connections to the owner open.
    static CLIENT: awc::Client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .disable_redirects()
        // No pool limit of its own: each forwarded call holds one incoming
        // connection, which `connections_max` bounds (an SSE stream holds its
        // connection for as long as it runs; awc's default of 100 would make
        // the 101st wait).
        .connector(awc::Connector::new().limit(0))
        .finish();
}

pub async fn middleware(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let node = request
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.cluster.get().cloned());
    let Some(node) = node else {
        return Ok(next.call(request).await?.map_into_boxed_body());
    };
    let grouped = node.config.groups > 1;
    if (!grouped && node.is_owner()) || is_local(request.path()) {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    let forwarded = request.headers().contains_key(FORWARDED_HEADER);
    // The owner gets the same id (generated here if need be), and an answer
    // made here carries it too.
    let id = super::correlation_of(request.headers());
    if grouped && !forwarded {
        return super::dispatch::route(request, next, node, id).await;
    }
    if node.is_owner() {
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    if forwarded {
        let refused = ApiError::Unavailable(format!(
            "forwarded here, but node {} does not own the journal",
            node.config.node
        ));
        return Ok(request.into_response(refusal(&refused, &id)));
    }
    let Some((owner, address)) = node.owner_address() else {
        let refused = ApiError::Unavailable(
            "no node owns the journal yet (a takeover is under way)".to_string(),
        );
        return Ok(request.into_response(refusal(&refused, &id)));
    };
    Ok(forward(request, &node, &id, &owner, &address, None).await)
}

/// Sends `request` to `address` (the owner `owner`'s listener) and streams its
/// answer back. `body` is the request's body when it was read already.
pub(super) async fn forward(
    request: ServiceRequest,
    node: &Node,
    id: &str,
    owner: &str,
    address: &str,
    body: Option<web::Bytes>,
) -> ServiceResponse<BoxBody> {
    node.forwarded
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path_and_query = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{address}{path_and_query}");
    // The body's stall limit applies here too: the owner's 408 would come
    // only after the follower had sent the whole body.
    let mut request = request;
    let stalled = if body.is_none() {
        super::limit_forwarded_body_time(&mut request)
    } else {
        None
    };
    let (http_request, payload) = request.into_parts();
    let outgoing = outgoing(&http_request, http_request.method(), &url, node, id);
    let has_body = http_request.headers().contains_key(header::CONTENT_LENGTH)
        || http_request
            .headers()
            .contains_key(header::TRANSFER_ENCODING);
    let sent = match body {
        Some(body) => outgoing.send_body(body).await,
        None if has_body => outgoing.send_stream(payload).await,
        None => outgoing.send().await,
    };
    let answer = match sent {
        Ok(answer) => answer,
        Err(_) if stalled.is_some_and(|stalled| stalled.load(Ordering::Relaxed)) => {
            let mut answer = refusal(&ApiError::RequestTimeout, id);
            answer
                .head_mut()
                .set_connection_type(actix_web::http::ConnectionType::Close);
            return ServiceResponse::new(http_request, answer);
        }
        Err(error) => {
            // Each failed call is answered 503; a log line each would flood the log
            // while an owner is down (the failover itself is logged).
            tracing::debug!(%owner, %error, "forwarding to the owner failed");
            let refused = ApiError::Unavailable(format!("the owner ({owner}) did not answer"));
            return ServiceResponse::new(http_request, refusal(&refused, id));
        }
    };
    let mut response = HttpResponse::build(answer.status());
    for (name, value) in answer.headers() {
        if !is_hop_by_hop(name) {
            response.append_header((name.clone(), value.clone()));
        }
    }
    let length = answer
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(length) = length {
        response.no_chunking(length);
    }
    ServiceResponse::new(http_request, response.streaming(answer))
}

/// A request to `url` with `request`'s end-to-end headers, marked forwarded by
/// this node, with the correlation id `id`.
pub(super) fn outgoing(
    request: &actix_web::HttpRequest,
    method: &actix_web::http::Method,
    url: &str,
    node: &Node,
    id: &str,
) -> awc::ClientRequest {
    CLIENT.with(|client| {
        let mut outgoing = client.request(method.clone(), url);
        for (name, value) in request.headers() {
            if !is_hop_by_hop(name) {
                outgoing = outgoing.append_header((name.clone(), value.clone()));
            }
        }
        let outgoing = outgoing
            .insert_header((FORWARDED_HEADER, node.config.node.as_str()))
            .insert_header((super::CORRELATION_HEADER, id));
        // Appended to what the client sent (the header's own convention).
        match request.peer_addr() {
            Some(peer) => {
                let chain = match request.headers().get("x-forwarded-for") {
                    Some(sent) => format!("{}, {}", sent.to_str().unwrap_or(""), peer.ip()),
                    None => peer.ip().to_string(),
                };
                outgoing.insert_header(("x-forwarded-for", chain))
            }
            None => outgoing,
        }
    })
}

/// An answer this node makes itself, with the request's correlation id.
pub(super) fn refusal(error: &ApiError, id: &str) -> HttpResponse {
    let mut response = error.error_response();
    if let Ok(value) = header::HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(super::CORRELATION_HEADER), value);
    }
    response
}
