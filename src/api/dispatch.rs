//! Partition groups (docs/CLUSTER.md, "Partition groups"): with `[cluster]
//! groups > 1` the partitions are spread over several owners, one per group,
//! each with its own journal stream. Every process takes every route. This
//! module sends a request, or each part of it, to the owner of the group its
//! SKUs are in, and merges the parts' answers in request order.
//!
//! - A protected route goes on only for a key that may call it; otherwise the
//!   receiving process answers (401, 403) as any node does.
//! - A route of one SKU (availability, positions, `published?sku=`, a transfer,
//!   a cart whose lines are all in one group) goes to that group's owner.
//! - `POST /v1/events` and `POST /v1/availability/query` are split by group and
//!   their results merged back in request order; one refused whole (its size,
//!   an event outside the key's scope) goes whole to one group, which refuses
//!   it before anything is applied. A cart over several groups is held in each
//!   group, under the cart's id, and released again where this request held it
//!   if any part is refused.
//! - A reservation or transfer by id is asked of every group; the groups that
//!   have it answer (a cart's parts merged), unless one refused or did not
//!   answer.
//! - Exceptions go to the group their id names, and are listed merged; channel
//!   state is merged, and its actions go to every group; a reconciliation's
//!   body is streamed to every group, each taking its SKUs' rows.
//! - Everything else (the event log and its stream) is one group's: the one
//!   `X-Stockwire-Group` names, else this process's own.
//!
//! Parts carry `X-Stockwire-Forwarded-By`, so their receiver serves them if it
//! owns its group and refuses them (503) if it does not; they are never sent on.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::access::{Caller, Policy};
use super::error::ApiError;
use super::forward::{forward, outgoing, refusal};
use super::AppState;
use crate::actors::group_of;
use crate::cluster::Node;
use crate::config::{Config, CLUSTER_CART_LEASE_SECONDS_RANGE};

/// Names the group a request of no SKU is for (the event log, exceptions,
/// channel state, reconciliations); without it, this process's own group.
pub const GROUP_HEADER: &str = "x-stockwire-group";

/// Marks a request as one group's part of a request this cluster split (a
/// cart's ship may then name none of the part's lines).
const PART_HEADER: &str = "x-stockwire-part";

/// Holds a cart's part on a lease of this many seconds (`cart_lease_seconds`
/// of the process that sent it) instead of the cart's TTL, until it settles
/// with its siblings (engine::carts) or is confirmed.
const LEASE_HEADER: &str = "x-stockwire-lease";

/// With [`LEASE_HEADER`]: the cart's other groups, each holding a part under
/// the same id, which the part asks at its lease's end.
const SIBLINGS_HEADER: &str = "x-stockwire-siblings";

/// With [`LEASE_HEADER`]: the cart request's own number (32 hex digits), the
/// same in each of its parts, so a part asks its siblings about its own
/// cart's parts and not another request's under the same id.
const CART_HEADER: &str = "x-stockwire-cart";

/// What a cart's part is held on: its lease (seconds), the cart's other
/// groups, and the cart request's number.
pub type PartLease = (u64, Vec<u32>, u128);

/// The lease a cart's part is held on, its sibling groups and its cart's
/// number (a group's part only; a client's headers are not looked at).
pub fn part_lease(request: &HttpRequest) -> Result<Option<PartLease>, ApiError> {
    if !is_group_part(request) {
        return Ok(None);
    }
    let Some(value) = request.headers().get(LEASE_HEADER) else {
        return Ok(None);
    };
    let lease = value
        .to_str()
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|lease| CLUSTER_CART_LEASE_SECONDS_RANGE.contains(lease))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{LEASE_HEADER}: seconds in {CLUSTER_CART_LEASE_SECONDS_RANGE:?}"
            ))
        })?;
    let (groups, own) = request
        .app_data::<web::Data<AppState>>()
        .and_then(|state| state.config.cluster.as_ref())
        .map_or((1, 0), |cluster| (cluster.groups, cluster.group));
    let mut siblings = match request.headers().get(SIBLINGS_HEADER) {
        None => Vec::new(),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| {
                if v.trim().is_empty() {
                    return Some(Vec::new());
                }
                v.split(',')
                    .map(|g| g.trim().parse::<u32>().ok().filter(|g| *g < groups))
                    .collect::<Option<Vec<u32>>>()
            })
            .ok_or_else(|| {
                ApiError::BadRequest(format!("{SIBLINGS_HEADER}: groups below {groups}"))
            })?,
    };
    siblings.retain(|g| *g != own);
    siblings.sort_unstable();
    siblings.dedup();
    let nonce = match request.headers().get(CART_HEADER) {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| v.len() == 32)
            .and_then(|v| u128::from_str_radix(v, 16).ok())
            .ok_or_else(|| ApiError::BadRequest(format!("{CART_HEADER}: 32 hex digits")))?,
    };
    Ok(Some((lease, siblings, nonce)))
}

/// Whether `request` is a group's part of a request split by [`route`].
pub fn is_group_part(request: &HttpRequest) -> bool {
    // The headers first: a client's request (every one on a single node) has
    // neither, and is answered without looking further.
    request.headers().contains_key(PART_HEADER)
        && request
            .headers()
            .contains_key(super::forward::FORWARDED_HEADER)
        && request
            .app_data::<web::Data<AppState>>()
            .and_then(|state| state.config.cluster.as_ref())
            .is_some_and(|cluster| cluster.groups > 1)
}

/// A part's `Idempotency-Key`: `<key>:g<group>`, or for a key too long for
/// that, a digest of it with the suffix (still within the 255 a key may have).
fn part_key(key: &str, group: u32) -> String {
    let part = format!("{key}:g{group}");
    if part.len() <= 255 {
        return part;
    }
    use sha2::{Digest, Sha256};
    format!(
        "sha256-{}:g{group}",
        hex::encode(Sha256::digest(key.as_bytes()))
    )
}

/// What one request's parts' answers may hold together (a merged answer is
/// their sum), shared among the groups: an events batch of 1,000 results or a
/// query of 1,000 SKUs is far below it.
const PART_ANSWER_BYTES_MAX: usize = 32 * 1024 * 1024;

/// The least a part's answer may hold however many groups share the budget
/// above (so one request holds at most 64 of these: 256 MiB).
const PART_ANSWER_BYTES_MIN: usize = 4 * 1024 * 1024;

/// How a request is sent on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// One group's owner answers it.
    Group(u32),
    /// `POST /v1/events`: split by the events' SKUs.
    Events,
    /// `POST /v1/availability/query`: split by SKU.
    Query,
    /// `POST /v1/reservations`: to the group of its lines, split if several.
    Reservation,
    /// `POST /v1/transfers`: to the group of its SKU.
    Transfer,
    /// By id: asked of every group, answered by those that have it.
    Find,
    /// A channel action, sent to every group; all must succeed.
    Every,
    /// `GET /v1/exceptions`: every group's, merged in id order.
    Exceptions,
    /// `GET /v1/channels`, `GET /v1/channels/{id}`: every group's state of
    /// each channel, merged.
    Channels,
    /// `POST /v1/reconciliations`: the body streamed to every group, each
    /// taking its SKUs' rows; the reports summed.
    Reconcile,
}

/// Where an item of a split body names its SKU.
type SkuOf = fn(&Value) -> Option<&str>;

/// Sends `request` where its SKUs are owned (see the module's doc).
pub async fn route(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    node: Arc<Node>,
    id: String,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = request.app_data::<web::Data<AppState>>().cloned() else {
        return to_group(request, next, &node, &id, node.config.group, None).await;
    };
    // A protected route is passed on only for a key that may call it; any
    // other request is answered here, as any node answers it (401, 403). Its
    // receivers admit it again, rate limit included.
    let (_, policy) = super::route_of(request.method(), request.match_info().as_str());
    let caller = match policy {
        Some(Policy::Roles(_)) => {
            // With the connection's memo: the owner's own admission of this
            // request then compares, without hashing the key again.
            let identity = super::identity_of(&request, &state.keys);
            match state.keys.caller_for(policy, &identity) {
                Some(caller) => Some(caller),
                None => return Ok(next.call(request).await?.map_into_boxed_body()),
            }
        }
        _ => None,
    };
    let plan = match plan(&request, &node, &state.config) {
        Ok(plan) => plan,
        Err(error) => return Ok(request.into_response(refusal(&error, &id))),
    };
    if let Plan::Group(group) = plan {
        return to_group(request, next, &node, &id, group, None).await;
    }
    if plan == Plan::Reconcile {
        return Ok(reconcile(request, &node, &state.config, &id).await);
    }
    let body = match read_body(&mut request, state.config.max_body_bytes).await {
        Ok(body) => body,
        Err(error) => return Ok(request.into_response(refusal(&error, &id))),
    };
    let own = node.config.group;
    let config = &state.config;
    let group_of = |sku: &str| group_of(sku, config);
    // Only the plans that look at the body's SKUs parse it.
    let parsed = || serde_json::from_slice::<Value>(&body).ok();
    // A change with an Idempotency-Key a single node refuses (too long, not
    // visible ASCII) goes whole to one group, whose handler refuses it, rather
    // than into parts' keys. (A query takes no key.)
    let bad_key = plan != Plan::Query
        && request.method() == Method::POST
        && super::idempotency::key_of(request.request()).is_err();
    let single = match plan {
        _ if bad_key => Some(own),
        Plan::Transfer => Some(
            parsed()
                .as_ref()
                .and_then(|v| v.get("sku"))
                .and_then(Value::as_str)
                .map_or(own, group_of),
        ),
        Plan::Events | Plan::Query | Plan::Reservation => {
            let (field, max, sku_of): (&str, usize, SkuOf) = match plan {
                Plan::Events => ("events", state.config.batch_events_max, |item| {
                    item.get("sku").and_then(Value::as_str)
                }),
                Plan::Query => ("skus", state.config.query_skus_max, Value::as_str),
                _ => ("lines", state.config.reservation_lines_max, |item| {
                    item.get("sku").and_then(Value::as_str)
                }),
            };
            let parsed = parsed();
            let items = parsed
                .as_ref()
                .and_then(|v| v.get(field))
                .and_then(Value::as_array);
            // A request refused whole (its shape, its size, an event outside the
            // key's scope) goes whole to one group, whose handler refuses it
            // before anything is applied, as a single node does.
            let whole_refusal = items.is_none_or(|items| items.is_empty() || items.len() > max)
                || (plan == Plan::Events
                    && caller.as_ref().zip(items).is_some_and(|(caller, items)| {
                        super::events::check_scope(caller, items).is_err()
                    }));
            match items.filter(|_| !whole_refusal) {
                None => Some(own),
                Some(items) => {
                    let mut groups = items.iter().map(|item| sku_of(item).map_or(own, group_of));
                    let first = groups.next().unwrap_or(own);
                    groups.all(|g| g == first).then_some(first)
                }
            }
        }
        Plan::Group(group) => Some(group),
        Plan::Find | Plan::Every | Plan::Exceptions | Plan::Channels | Plan::Reconcile => None,
    };
    if let Some(group) = single {
        return to_group(request, next, &node, &id, group, Some(body)).await;
    }
    let (http_request, _) = request.into_parts();
    let parts = Parts {
        request: &http_request,
        node: &node,
        config,
        id: &id,
    };
    let response = match plan {
        Plan::Events => {
            parts
                .split(&body, "events", "results", |item| {
                    item.get("sku").and_then(Value::as_str).map(group_of)
                })
                .await
        }
        Plan::Query => {
            parts
                .split(&body, "skus", "items", |item| item.as_str().map(group_of))
                .await
        }
        Plan::Reservation => parts.cart(&body, group_of, caller.as_deref()).await,
        Plan::Find => Ok(parts.find(&body).await),
        Plan::Every | Plan::Channels => Ok(parts.channels(&body).await),
        Plan::Exceptions => {
            // The page, as each group clamps it.
            let limit =
                web::Query::<BTreeMap<String, String>>::from_query(http_request.query_string())
                    .ok()
                    .and_then(|q| q.get("limit").and_then(|l| l.parse::<usize>().ok()))
                    .unwrap_or(100)
                    .clamp(1, config.events_page_max);
            Ok(parts.exceptions(&body, limit).await)
        }
        // Sent to one group, or streamed, above.
        Plan::Group(_) | Plan::Transfer | Plan::Reconcile => Err(ApiError::Unavailable(
            "dispatch: this route was not planned".to_string(),
        )),
    };
    let response = response.unwrap_or_else(|error| refusal(&error, &id));
    Ok(ServiceResponse::new(http_request, response))
}

/// Which plan a request takes, from its method and path (and, for a route of no
/// SKU, the group header).
fn plan(request: &ServiceRequest, node: &Node, config: &Config) -> Result<Plan, ApiError> {
    let group_of = |sku: &str| group_of(sku, config);
    // The decoded path, as actix routes on it.
    let path = request.match_info().as_str();
    let segments: Vec<&str> = path
        .strip_prefix("/v1/")
        .map(|rest| rest.split('/').collect())
        .unwrap_or_default();
    let post = request.method() == Method::POST;
    let plan = match (segments.as_slice(), post) {
        (["availability", "query"], true) => Plan::Query,
        (["availability", sku], false) => Plan::Group(group_of(sku)),
        (["positions", sku, ..], _) => Plan::Group(group_of(sku)),
        (["reservations"], true) => Plan::Reservation,
        // The nodes' own step of a cart (reservations::confirm).
        (["reservations", _, "confirm"], _) => {
            return Err(ApiError::NotFound("no such route".to_string()))
        }
        (["reservations", _, ..], _) => Plan::Find,
        (["transfers"], true) => Plan::Transfer,
        (["transfers", _, ..], _) => Plan::Find,
        (["events"], true) => Plan::Events,
        (["channels", _, "pause" | "resume" | "resync" | "replay"], true) => Plan::Every,
        (["channels"] | ["channels", _], false) => Plan::Channels,
        (["exceptions"], false) => Plan::Exceptions,
        (["reconciliations"], true) => Plan::Reconcile,
        // An exception's id says its group (`Shared::new_exception_id`).
        (["exceptions", id, ..], _) => match id.parse::<u64>() {
            Ok(id) if id > 0 => Plan::Group(((id - 1) % u64::from(node.config.groups)) as u32),
            _ => Plan::Group(node.config.group),
        },
        (["channels", _, "published"], false) => {
            let sku = web::Query::<BTreeMap<String, String>>::from_query(request.query_string())
                .ok()
                .and_then(|query| query.get("sku").cloned());
            match sku {
                Some(sku) => Plan::Group(group_of(&sku)),
                None => Plan::Group(named_group(request, node)?),
            }
        }
        _ => Plan::Group(named_group(request, node)?),
    };
    Ok(plan)
}

/// The group `X-Stockwire-Group` names, else this process's own.
fn named_group(request: &ServiceRequest, node: &Node) -> Result<u32, ApiError> {
    let mut values = request.headers().get_all(GROUP_HEADER);
    let Some(value) = values.next() else {
        return Ok(node.config.group);
    };
    // One value, in plain decimal: "01", "+1" or a second header is refused,
    // not read as some group.
    let plain = |v: &&str| {
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (*v == "0" || !v.starts_with('0'))
    };
    value
        .to_str()
        .ok()
        .filter(|_| values.next().is_none())
        .filter(plain)
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|g| *g < node.config.groups)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{GROUP_HEADER} must be a partition group, 0 to {}",
                node.config.groups - 1
            ))
        })
}

/// Reads the whole body, at most `max` bytes (413 above), within the body's
/// stall limit (408).
async fn read_body(request: &mut ServiceRequest, max: usize) -> Result<web::Bytes, ApiError> {
    let stalled = super::limit_forwarded_body_time(request);
    let mut payload = actix_web::HttpMessage::take_payload(request);
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|error| {
            if stalled
                .as_ref()
                .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed))
            {
                ApiError::RequestTimeout
            } else {
                ApiError::BadRequest(format!("reading the body: {error}"))
            }
        })?;
        if body.len() + chunk.len() > max {
            return Err(ApiError::PayloadTooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// One group's request: served here if this process owns the group, else sent
/// to the group's owner.
async fn to_group(
    mut request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
    node: &Node,
    id: &str,
    group: u32,
    body: Option<web::Bytes>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if group == node.config.group && node.is_owner() {
        if let Some(body) = body {
            request.set_payload(actix_web::dev::Payload::from(body));
        }
        return Ok(next.call(request).await?.map_into_boxed_body());
    }
    Ok(match node.group_owner_address(group) {
        Some((owner, address)) => forward(request, node, id, &owner, &address, body).await,
        None => request.into_response(refusal(&no_owner(group), id)),
    })
}

fn no_owner(group: u32) -> ApiError {
    ApiError::Unavailable(format!(
        "no node owns partition group {group} yet (a takeover is under way)"
    ))
}

/// A part's body: read whole, or streamed as it arrives.
enum PartBody {
    Whole(web::Bytes),
    Stream(futures_util::stream::BoxStream<'static, Result<web::Bytes, std::io::Error>>),
}

/// How a part is sent: with the client's `Idempotency-Key` made the part's
/// (its own request) or with none (a step of this node's own), and how long
/// its answer may take (`None`: the forward's own timeout).
#[derive(Clone, Copy)]
struct Manner {
    client_key: bool,
    timeout: Option<std::time::Duration>,
    /// A cart's part: held on this lease, then settled with its siblings.
    lease: Option<Lease>,
}

const _: () = assert!(
    *crate::config::CLUSTER_GROUPS_RANGE.end() <= 64,
    "a cart's groups are a 64-bit mask"
);

/// A cart's parts' lease: its length and the cart's groups (a bit each; at
/// most 64 groups), each part told the others.
#[derive(Clone, Copy)]
struct Lease {
    seconds: u64,
    groups: u64,
    /// This cart request's number ([`CART_HEADER`]).
    nonce: u128,
}

impl Lease {
    /// The cart's groups but `group`, as [`SIBLINGS_HEADER`] says them.
    fn siblings_of(&self, group: u32) -> String {
        (0..64u32)
            .filter(|g| *g != group && self.groups & (1u64 << g) != 0)
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Manner {
    const CLIENT: Manner = Manner {
        client_key: true,
        timeout: None,
        lease: None,
    };
}

/// How many chunks of a reconciliation's body may wait for the slowest group.
const TEE_CHUNKS: usize = 8;

/// `POST /v1/reconciliations` with partition groups: the body, as it arrives,
/// to every group's owner at once (each takes the rows of its SKUs, a row
/// keeping its number in the whole body), at the pace of the slowest. The
/// reports are summed; a group's refusal is the answer (running a
/// reconciliation again is safe).
async fn reconcile(
    request: ServiceRequest,
    node: &Node,
    config: &Config,
    id: &str,
) -> ServiceResponse<BoxBody> {
    let mut request = request;
    let stalled = super::limit_forwarded_body_time(&mut request);
    let (http_request, mut payload) = request.into_parts();
    let parts = Parts {
        request: &http_request,
        node,
        config,
        id,
    };
    let path = parts.path();
    let mut senders = Vec::new();
    let mut sends = Vec::new();
    for group in 0..node.config.groups {
        let (sender, receiver) = tokio::sync::mpsc::channel(TEE_CHUNKS);
        senders.push(sender);
        let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|chunk| (chunk, receiver))
        });
        let (parts, path) = (&parts, &path);
        sends.push(async move {
            parts
                .send_part(
                    group,
                    &Method::POST,
                    path,
                    PartBody::Stream(Box::pin(stream)),
                    Manner::CLIENT,
                )
                .await
        });
    }
    let pump = async move {
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|error| std::io::Error::other(error.to_string()));
            let failed = chunk.is_err();
            for sender in &senders {
                // A group that stopped reading (it answered already) is left out.
                let _ = sender
                    .send(
                        chunk
                            .as_ref()
                            .map(web::Bytes::clone)
                            .map_err(|e| std::io::Error::other(e.to_string())),
                    )
                    .await;
            }
            if failed {
                break;
            }
        }
    };
    let ((), answers) =
        futures_util::future::join(pump, futures_util::future::join_all(sends)).await;
    if stalled.is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed)) {
        let mut answer = refusal(&ApiError::RequestTimeout, id);
        answer
            .head_mut()
            .set_connection_type(actix_web::http::ConnectionType::Close);
        return ServiceResponse::new(http_request, answer);
    }
    let response = merge_reports(&answers, id);
    ServiceResponse::new(http_request, response)
}

/// The groups' reconciliation reports as one: counts summed, differences and
/// row errors together (row errors in row order), each list cut at the first
/// 10,000 as one group's is.
fn merge_reports(answers: &[Answer], id: &str) -> HttpResponse {
    const LIST_MAX: usize = 10_000;
    if let Some(refused) = answers.iter().find(|a| a.status != StatusCode::OK) {
        return refused.relay();
    }
    let Some(reports) = answers
        .iter()
        .map(Answer::json)
        .collect::<Option<Vec<Value>>>()
    else {
        return answers[0].relay();
    };
    let mut merged = reports[0].clone();
    for field in [
        "checked",
        "matched",
        "differences",
        "applied",
        "rejected_rows",
    ] {
        merged[field] = json!(reports
            .iter()
            .filter_map(|r| r[field].as_u64())
            .sum::<u64>());
    }
    let mut truncated = reports.iter().any(|r| r["truncated"] == true);
    for (field, by_row) in [("exceptions", false), ("errors", true)] {
        let mut items: Vec<Value> = reports
            .iter()
            .flat_map(|r| r[field].as_array().cloned().unwrap_or_default())
            .collect();
        if by_row {
            items.sort_by_key(|item| item["row"].as_u64().unwrap_or(0));
        }
        if items.len() > LIST_MAX {
            items.truncate(LIST_MAX);
            truncated = true;
        }
        merged[field] = Value::Array(items);
    }
    merged["truncated"] = json!(truncated);
    json(StatusCode::OK, &merged, id)
}

/// A part's answer, read whole.
struct Answer {
    status: StatusCode,
    headers: Vec<(header::HeaderName, header::HeaderValue)>,
    body: web::Bytes,
}

impl Answer {
    fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// An earlier request's answer, replayed for its `Idempotency-Key`.
    fn replayed(&self) -> bool {
        self.headers
            .iter()
            .any(|(name, _)| name.as_str() == super::idempotency::REPLAYED_HEADER)
    }

    /// A refusal of the request's content (400, 404, 422, a shortage), which
    /// its retry gets again; not one that says "not now" (5xx, 429, or 409
    /// `invalid_state`: the same key in progress, an unfinished change).
    fn refused_for_good(&self) -> bool {
        let code = || {
            self.json()
                .and_then(|v| v["code"].as_str().map(str::to_owned))
        };
        self.status.is_client_error()
            && self.status != StatusCode::TOO_MANY_REQUESTS
            && !(self.status == StatusCode::CONFLICT && code().as_deref() == Some("invalid_state"))
    }

    /// The part's answer as this request's.
    fn relay(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        for (name, value) in &self.headers {
            if *name != header::CONTENT_LENGTH && *name != header::TRANSFER_ENCODING {
                response.append_header((name.clone(), value.clone()));
            }
        }
        response.body(self.body.clone())
    }

    /// A refusal made here, as an answer among the parts'.
    fn of(error: &ApiError, id: &str) -> Answer {
        let response = refusal(error, id);
        Answer {
            status: response.status(),
            headers: response
                .headers()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body: web::Bytes::from(error.body()),
        }
    }
}

/// Sends the parts of one request to their groups' owners.
struct Parts<'a> {
    request: &'a HttpRequest,
    node: &'a Node,
    config: &'a Config,
    id: &'a str,
}

impl Parts<'_> {
    /// Where group `group` is served: this process, if it owns it (over its own
    /// listener, as any part), else the group's owner.
    fn target(&self, group: u32) -> Result<(String, String), ApiError> {
        self.node
            .group_owner_address(group)
            .ok_or_else(|| no_owner(group))
    }

    /// Sends one part: this request's method, path and headers, with `body`. An
    /// `Idempotency-Key` becomes the part's own, `<key>:g<group>`.
    async fn send(&self, group: u32, method: &Method, path: &str, body: web::Bytes) -> Answer {
        self.send_part(group, method, path, PartBody::Whole(body), Manner::CLIENT)
            .await
    }

    /// Sends a step of this node's own in the request's name (a cart's
    /// confirmation or undo), without the client's `Idempotency-Key`: that key
    /// belongs to the client's request, on another route.
    async fn send_step(&self, group: u32, method: &Method, path: &str, body: web::Bytes) -> Answer {
        let manner = Manner {
            client_key: false,
            ..Manner::CLIENT
        };
        self.send_part(group, method, path, PartBody::Whole(body), manner)
            .await
    }

    async fn send_part(
        &self,
        group: u32,
        method: &Method,
        path: &str,
        body: PartBody,
        manner: Manner,
    ) -> Answer {
        let (owner, address) = match self.target(group) {
            Ok(target) => target,
            Err(error) => return Answer::of(&error, self.id),
        };
        let url = format!("{address}{path}");
        let mut outgoing = outgoing(self.request, method, &url, self.node, self.id);
        let key = self
            .request
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok());
        match key {
            Some(key) if manner.client_key => {
                outgoing = outgoing.insert_header(("idempotency-key", part_key(key, group)));
            }
            _ => {
                outgoing.headers_mut().remove("idempotency-key");
            }
        }
        if let Some(timeout) = manner.timeout {
            outgoing = outgoing.timeout(timeout);
        }
        match manner.lease {
            Some(lease) => {
                outgoing = outgoing
                    .insert_header((LEASE_HEADER, lease.seconds.to_string()))
                    .insert_header((SIBLINGS_HEADER, lease.siblings_of(group)))
                    .insert_header((CART_HEADER, format!("{:032x}", lease.nonce)));
            }
            None => {
                outgoing.headers_mut().remove(LEASE_HEADER);
                outgoing.headers_mut().remove(SIBLINGS_HEADER);
                outgoing.headers_mut().remove(CART_HEADER);
            }
        }
        outgoing = outgoing.insert_header((PART_HEADER, group.to_string()));
        let unanswered = || {
            ApiError::Unavailable(format!(
                "the owner of partition group {group} ({owner}) did not answer"
            ))
        };
        let sent = match body {
            PartBody::Whole(body) => outgoing.send_body(body).await,
            PartBody::Stream(stream) => outgoing.send_stream(stream).await,
        };
        let mut answer = match sent {
            Ok(answer) => answer,
            Err(error) => {
                tracing::debug!(%owner, %error, group, "a part's owner did not answer");
                return Answer::of(&unanswered(), self.id);
            }
        };
        // The parts' answers are held together: each gets its share of the
        // whole, and never less than a query of 1,000 SKUs needs.
        let limit = (PART_ANSWER_BYTES_MAX / self.node.config.groups.max(1) as usize)
            .max(PART_ANSWER_BYTES_MIN);
        let Ok(bytes) = answer.body().limit(limit).await else {
            return Answer::of(&unanswered(), self.id);
        };
        Answer {
            status: answer.status(),
            headers: answer
                .headers()
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body: bytes,
        }
    }

    fn path(&self) -> String {
        self.request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string()
    }

    /// Every group's answer to this request, in group order.
    async fn all(&self, body: &web::Bytes) -> Vec<Answer> {
        let path = self.path();
        let method = self.request.method().clone();
        let groups = 0..self.node.config.groups;
        futures_util::future::join_all(
            groups.map(|group| self.send(group, &method, &path, body.clone())),
        )
        .await
    }

    /// `body[field]` split by group (`group_of` an item; `None`: this
    /// process's group), each part sent, and the parts' `answer_field`s merged
    /// back in request order. A part that is not 200 is the answer.
    async fn split(
        &self,
        body: &web::Bytes,
        field: &str,
        answer_field: &str,
        group_of: impl Fn(&Value) -> Option<u32>,
    ) -> Result<HttpResponse, ApiError> {
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|error| ApiError::BadRequest(format!("body: {error}")))?;
        let items = value
            .get_mut(field)
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .ok_or_else(|| ApiError::BadRequest(format!("body: no {field} array")))?;
        let count = items.len();
        let mut by_group: BTreeMap<u32, (Vec<usize>, Vec<Value>)> = BTreeMap::new();
        for (index, item) in items.into_iter().enumerate() {
            let group = group_of(&item).unwrap_or(self.node.config.group);
            let part = by_group.entry(group).or_default();
            part.0.push(index);
            part.1.push(item);
        }
        let path = self.path();
        let method = self.request.method().clone();
        let mut sends = Vec::with_capacity(by_group.len());
        let mut indices = Vec::with_capacity(by_group.len());
        for (group, (index, part)) in by_group {
            value[field] = Value::Array(part);
            let part_body = web::Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            sends.push(self.send(group, &method, &path, part_body));
            indices.push(index);
        }
        let answers = futures_util::future::join_all(sends).await;
        if let Some(refused) = answers.iter().find(|a| a.status != StatusCode::OK) {
            return Ok(refused.relay());
        }
        let mut merged = vec![Value::Null; count];
        for (answer, index) in answers.iter().zip(indices) {
            let results = answer
                .json()
                .and_then(|mut v| v.get_mut(answer_field).map(Value::take))
                .and_then(|v| match v {
                    Value::Array(items) => Some(items),
                    _ => None,
                })
                .filter(|items| items.len() == index.len())
                .ok_or_else(|| {
                    ApiError::Unavailable(format!(
                        "a partition group answered without its {answer_field}"
                    ))
                })?;
            for (at, result) in index.into_iter().zip(results) {
                merged[at] = result;
            }
        }
        let mut object = serde_json::Map::new();
        object.insert(answer_field.to_string(), Value::Array(merged));
        let mut response = json(StatusCode::OK, &Value::Object(object), self.id);
        if answers.iter().all(Answer::replayed) {
            mark_replayed(&mut response);
        }
        Ok(response)
    }

    /// A reservation or transfer by id: asked of every group. The groups that
    /// have it answer (a cart's parts merged); else the most telling refusal.
    async fn find(&self, body: &web::Bytes) -> HttpResponse {
        if let Some(refused) = self.parts_not_ready().await {
            return refused;
        }
        let ship = self
            .request
            .path()
            .ends_with("/ship")
            .then(|| serde_json::from_slice::<Value>(body).ok())
            .flatten()
            .filter(|v| v.get("lines").is_some_and(Value::is_array));
        let answers = if let Some(ship) = ship {
            // A ship names lines: each group gets its own (none named: that
            // group's part ships nothing, as for any line not named).
            let own = self.node.config.group;
            let path = self.path();
            let method = self.request.method().clone();
            let sends = (0..self.node.config.groups).map(|group| {
                let mut part = ship.clone();
                if let Some(lines) = part.get_mut("lines").and_then(Value::as_array_mut) {
                    lines.retain(|line| {
                        line.get("sku")
                            .and_then(Value::as_str)
                            .map_or(own, |sku| group_of(sku, self.config))
                            == group
                    });
                }
                let part = web::Bytes::from(serde_json::to_vec(&part).unwrap_or_default());
                let (method, path) = (&method, &path);
                async move { self.send(group, method, path, part).await }
            });
            futures_util::future::join_all(sends).await
        } else {
            self.all(body).await
        };
        // A group that refused it, or did not answer, is the answer even when
        // another group's part succeeded: a cart allocated, shipped or read
        // only in part must not look whole. Not answering comes first (retry).
        let failed = answers
            .iter()
            .filter(|a| !a.status.is_success() && a.status != StatusCode::NOT_FOUND)
            .min_by_key(|a| !a.status.is_server_error());
        if let Some(failed) = failed {
            return failed.relay();
        }
        let found: Vec<&Answer> = answers.iter().filter(|a| a.status.is_success()).collect();
        match found.as_slice() {
            [] => answers
                .first()
                .map_or_else(|| refusal(&no_owner(0), self.id), Answer::relay),
            [one] => one.relay(),
            parts => merge_reservations(parts, self.id, None),
        }
    }

    /// Before a cart's allocate or ship: every part must be in a state the
    /// action takes (allocate: held or allocated; ship: allocated or shipped),
    /// else nothing is changed and the answer is `409 invalid_state`. Without
    /// this, a cart whose parts differ (one released after a refused attempt)
    /// would be allocated in one group and refused in another. `None`: go on.
    async fn parts_not_ready(&self) -> Option<HttpResponse> {
        let path = self.request.path();
        let (id, allowed): (&str, &[&str]) = if let Some(id) = path
            .strip_prefix("/v1/reservations/")
            .and_then(|rest| rest.strip_suffix("/allocate"))
        {
            (id, &["held", "allocated"])
        } else if let Some(id) = path
            .strip_prefix("/v1/reservations/")
            .and_then(|rest| rest.strip_suffix("/ship"))
        {
            (id, &["allocated", "shipped"])
        } else {
            return None;
        };
        let read = format!("/v1/reservations/{id}");
        let reads = (0..self.node.config.groups)
            .map(|group| self.send_step(group, &Method::GET, &read, web::Bytes::new()));
        let answers = futures_util::future::join_all(reads).await;
        if let Some(unanswered) = answers.iter().find(|a| a.status.is_server_error()) {
            return Some(unanswered.relay());
        }
        let statuses: Vec<String> = answers
            .iter()
            .filter(|a| a.status.is_success())
            .filter_map(|a| a.json()?.get("status")?.as_str().map(str::to_owned))
            .collect();
        if statuses.len() < 2 || statuses.iter().all(|s| allowed.contains(&s.as_str())) {
            return None;
        }
        let refused = ApiError::Engine(crate::engine::EngineError::InvalidState(format!(
            "reservation {id} has parts in partition groups whose states are {}: nothing was changed",
            statuses.join(", ")
        )));
        Some(refusal(&refused, self.id))
    }

    /// A channel read or action, from every group (an action must succeed in
    /// all): each channel's states merged (see [`merge_channel`]); a queued
    /// resync or replay (202) adds up the SKUs each group queued; the first
    /// refusal if one refused.
    async fn channels(&self, body: &web::Bytes) -> HttpResponse {
        let answers = self.all(body).await;
        if let Some(refused) = answers.iter().find(|a| !a.status.is_success()) {
            return refused.relay();
        }
        let Some(values) = answers
            .iter()
            .map(Answer::json)
            .collect::<Option<Vec<Value>>>()
        else {
            return answers[0].relay();
        };
        if answers[0].status == StatusCode::ACCEPTED {
            // A queued resync or replay: not a channel's state.
            if values[0].get("queued_skus").is_none() {
                return answers[0].relay();
            }
            let mut merged = values[0].clone();
            merged["queued_skus"] = json!(values
                .iter()
                .filter_map(|v| v["queued_skus"].as_u64())
                .sum::<u64>());
            return json(answers[0].status, &merged, self.id);
        }
        let merged = if values[0].get("channels").is_some() {
            // The list: each group lists the same channels, in config order.
            let lists: Vec<Vec<Value>> = values
                .iter()
                .map(|v| v["channels"].as_array().cloned().unwrap_or_default())
                .collect();
            let channels = (0..lists[0].len())
                .map(|i| merge_channel(lists.iter().filter_map(|list| list.get(i)).collect()))
                .collect();
            json!({ "channels": Value::Array(channels) })
        } else {
            merge_channel(values.iter().collect())
        };
        json(StatusCode::OK, &merged, self.id)
    }

    /// `GET /v1/exceptions` from every group: the pages merged in id order and
    /// cut at `limit`. Each group's page holds its first `limit` after the
    /// cursor, so the merged page misses none (the next page starts after its
    /// last id).
    async fn exceptions(&self, body: &web::Bytes, limit: usize) -> HttpResponse {
        let answers = self.all(body).await;
        if let Some(refused) = answers.iter().find(|a| !a.status.is_success()) {
            return refused.relay();
        }
        let mut items: Vec<Value> = answers
            .iter()
            .filter_map(Answer::json)
            .flat_map(|v| v["exceptions"].as_array().cloned().unwrap_or_default())
            .collect();
        items.sort_by_key(|item| item["id"].as_u64().unwrap_or(0));
        items.truncate(limit);
        json(StatusCode::OK, &json!({ "exceptions": items }), self.id)
    }

    /// A cart whose lines are in several groups: each group holds its lines
    /// under the cart's id, all at once, on a short lease
    /// (`cart_lease_seconds`), told the cart's other groups; once every part
    /// is held the cart is answered. At its lease's end each part asks the
    /// others and keeps the cart's TTL only if they hold theirs
    /// (engine::carts), so a cart never whole (this process died, or a group
    /// did not answer and the client never retried) lets go of its stock. If
    /// any part is refused for good, the parts this request held are released
    /// and the refusals are the answer (their shortages together). A retry
    /// that found a part standing confirms every part first ([`Parts::confirm`]).
    async fn cart(
        &self,
        body: &web::Bytes,
        group_of: impl Fn(&str) -> u32,
        caller: Option<&Caller>,
    ) -> Result<HttpResponse, ApiError> {
        let mut value: Value = serde_json::from_slice(body)
            .map_err(|error| ApiError::BadRequest(format!("body: {error}")))?;
        // Every part has the cart's id: one is made here if the cart has none,
        // from its Idempotency-Key (scoped to the caller) as a single group
        // would, so a retry makes the same; else new.
        if value.get("reservation_id").is_none() {
            let key = self
                .request
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(|key| super::idempotency::scoped_key(caller, key));
            value["reservation_id"] = Value::String(crate::engine::new_reservation_id(
                key.as_deref(),
                chrono::Utc::now().timestamp_millis(),
            ));
        }
        let id = value["reservation_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ApiError::BadRequest("reservation_id must be a string".into()))?;
        // The parts hold on the lease (a header: the body, and so the part's
        // content, is the client's), and keep the TTL asked for once settled.
        // A TTL no longer than the lease, or one the parts refuse (400): no
        // lease.
        let lease = self.node.config.cart_lease_seconds;
        let ttl = match value.get("ttl_seconds").filter(|ttl| !ttl.is_null()) {
            None => Some(self.config.default_ttl_seconds),
            Some(ttl) => ttl.as_u64(),
        };
        let confirm_ttl =
            ttl.filter(|ttl| *ttl > lease && *ttl <= super::reservations::TTL_SECONDS_MAX);
        // A part answers within a third of its lease (10 s at most), or is
        // taken as not answering: a confirmation then comes well before the
        // lease ends.
        let mut manner = Manner {
            client_key: true,
            timeout: Some(step_timeout(lease)),
            lease: None,
        };
        let lines = value
            .get_mut("lines")
            .and_then(Value::as_array_mut)
            .map(std::mem::take)
            .unwrap_or_default();
        // The SKUs in request order: the merged lines come back in it.
        let mut order: Vec<String> = Vec::new();
        let mut by_group: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
        for line in lines {
            let sku = line.get("sku").and_then(Value::as_str);
            if let Some(sku) = sku.filter(|sku| !order.iter().any(|o| o == sku)) {
                order.push(sku.to_string());
            }
            let group = sku.map_or(self.node.config.group, &group_of);
            by_group.entry(group).or_default().push(line);
        }
        if confirm_ttl.is_some() {
            manner.lease = Some(Lease {
                seconds: lease,
                groups: by_group.keys().fold(0, |mask, g| mask | 1u64 << g),
                nonce: rand::random(),
            });
        }
        let path = self.path();
        let method = self.request.method().clone();
        let mut sends = Vec::with_capacity(by_group.len());
        let mut groups = Vec::with_capacity(by_group.len());
        for (group, part) in by_group {
            value["lines"] = Value::Array(part);
            let part_body = web::Bytes::from(serde_json::to_vec(&value).unwrap_or_default());
            sends.push(self.send_part(group, &method, &path, PartBody::Whole(part_body), manner));
            groups.push(group);
        }
        let mut answers = futures_util::future::join_all(sends).await;
        // The parts this request held (a 201 that is not an earlier request's
        // answer replayed for its Idempotency-Key): the only ones it undoes.
        let fresh: Vec<u32> = groups
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.status == StatusCode::CREATED && !a.replayed())
            .map(|(group, _)| *group)
            .collect();
        let all_held = answers.iter().all(|a| a.status.is_success());
        let statuses: Vec<Option<Value>> = answers
            .iter()
            .map(|a| a.json().and_then(|v| v.get("status").cloned()))
            .collect();
        // Every part answered, but not all as held (a part released after an
        // earlier attempt of this id was refused, or whose lease ran out,
        // answered 200 as it stands): the id is spent. A single node answers a
        // retry of a released id with the released reservation; here that
        // would hold only some lines.
        let mixed = all_held && statuses.iter().any(|s| s != &statuses[0]);
        if all_held && !mixed {
            // Parts this request created, all of them, settle with each other
            // at their leases' end: each finds the others held (the same
            // request's). A cart with a part that stood already (200, a
            // replayed 201: an earlier attempt's, which may have let go since)
            // has every part confirmed before it is answered, and so does one
            // with a part held without a lease (its owner, of an earlier
            // version, took no siblings and would let it go).
            let held = statuses[0].as_ref().and_then(Value::as_str) == Some("held");
            let settles = groups.iter().zip(&answers).all(|(group, answer)| {
                fresh.contains(group)
                    && answer
                        .json()
                        .is_some_and(|part| part.get("lease_expires_at").is_some())
            });
            if let Some(ttl) = confirm_ttl.filter(|_| held && !settles) {
                if let Err(refused) = self.confirm(&id, &groups, ttl, &mut answers).await {
                    return Ok(refused);
                }
            }
            let parts: Vec<&Answer> = answers.iter().collect();
            return Ok(merge_reservations(&parts, self.id, Some(&order)));
        }
        if mixed {
            self.release_parts(&id, &fresh).await;
            return Err(ApiError::Engine(crate::engine::EngineError::InvalidState(
                format!(
                    "reservation {id} exists with parts in other states (a cart refused, \
                 released or let go before); use a new reservation_id"
                ),
            )));
        }
        // A part refused for its content (short, unknown SKU, a bad line): the
        // cart cannot be held. What this request held is released at once:
        // the parts it created, and those that did not answer (they may have
        // been held; a release of what does not exist is 404). A part that
        // already stood (200, a replayed 201) is left as it is.
        let for_good: Vec<&Answer> = answers.iter().filter(|a| a.refused_for_good()).collect();
        if !for_good.is_empty() {
            let mut undo = fresh;
            undo.extend(
                groups
                    .iter()
                    .zip(&answers)
                    .filter(|(_, a)| a.status.is_server_error())
                    .map(|(group, _)| *group),
            );
            self.release_parts(&id, &undo).await;
            return Ok(merge_refusals(&for_good, &order));
        }
        // Only refusals that say "not now" (a group that did not answer, a rate
        // limit, the same key in progress): nothing is undone, and the answer
        // is that refusal, one that did not answer first. The client's retry
        // with the same id within the lease finds the parts held so far (200)
        // and holds the rest; a cart never retried has its parts let go at the
        // lease's end.
        let not_now = answers
            .iter()
            .filter(|a| !a.status.is_success())
            .min_by_key(|a| !a.status.is_server_error());
        match not_now {
            Some(refusal) => Ok(refusal.relay()),
            None => Err(ApiError::Unavailable(
                "dispatch: a cart's parts".to_string(),
            )),
        }
    }

    /// Confirms every part of a cart that will not settle by itself (a retry
    /// found a part standing, or an owner took no lease) for `ttl_seconds`;
    /// the answers' bodies become the confirmed parts'. `Err`: the cart's answer.
    /// A part that does not answer (or answers 429) is asked again (each
    /// confirmation is idempotent) until [`step_timeout`] has passed, then the
    /// answer is its refusal with nothing undone: the client's retry confirms
    /// again, else each part settles with the others at its lease's end. A
    /// part let go already (`409 invalid_state`) means the cart cannot be
    /// whole: every part is released and that is the answer. Any
    /// other refusal is the answer at once, nothing undone.
    async fn confirm(
        &self,
        id: &str,
        groups: &[u32],
        ttl_seconds: u64,
        answers: &mut [Answer],
    ) -> Result<(), HttpResponse> {
        let path = format!("/v1/reservations/{}/confirm", urlencode(id));
        let body = web::Bytes::from(json!({ "ttl_seconds": ttl_seconds }).to_string());
        let mut pending: Vec<usize> = (0..groups.len()).collect();
        let mut last_refusal = None;
        let mut steps = self.steps();
        while let Some(manner) = steps.next().await {
            let confirms = pending.iter().map(|&at| {
                self.send_part(
                    groups[at],
                    &Method::POST,
                    &path,
                    PartBody::Whole(body.clone()),
                    manner,
                )
            });
            let confirmed = futures_util::future::join_all(confirms).await;
            let mut again = Vec::new();
            for (at, confirmed) in pending.into_iter().zip(confirmed) {
                if confirmed.status.is_success() {
                    answers[at].body = confirmed.body;
                } else if confirmed.status == StatusCode::CONFLICT {
                    self.release_parts(id, groups).await;
                    return Err(confirmed.relay());
                } else if confirmed.refused_for_good() {
                    return Err(confirmed.relay());
                } else {
                    again.push(at);
                    last_refusal = Some(confirmed);
                }
            }
            pending = again;
            if pending.is_empty() {
                return Ok(());
            }
        }
        Err(last_refusal.map_or_else(
            || {
                refusal(
                    &ApiError::Unavailable("a cart part's confirmation".into()),
                    self.id,
                )
            },
            |refusal| refusal.relay(),
        ))
    }

    /// Releases the cart `id`'s parts in `groups` (a part not there is 404),
    /// asking again those that do not answer until [`step_timeout`] has
    /// passed. One still held then settles at its lease's end, finding a
    /// sibling let go (or at its TTL's, if it was confirmed).
    async fn release_parts(&self, id: &str, groups: &[u32]) {
        let release = format!("/v1/reservations/{}/release", urlencode(id));
        let mut pending = groups.to_vec();
        let mut failed = None;
        let mut steps = self.steps();
        while let Some(manner) = steps.next().await {
            let undo = pending.iter().map(|group| {
                let body = PartBody::Whole(web::Bytes::new());
                self.send_part(*group, &Method::POST, &release, body, manner)
            });
            let undone = futures_util::future::join_all(undo).await;
            let mut again = Vec::new();
            for (group, answer) in pending.into_iter().zip(undone) {
                if !answer.status.is_success() && answer.status != StatusCode::NOT_FOUND {
                    failed = Some(answer.status);
                    if !answer.refused_for_good() {
                        again.push(group);
                    }
                }
            }
            pending = again;
            if pending.is_empty() {
                break;
            }
        }
        if let Some(status) = failed {
            tracing::warn!(reservation = %id, %status,
                "a cart part could not be released after the cart was refused; it lets go at its deadline");
        }
    }

    /// The rounds of a node's own step (a confirmation, an undo).
    fn steps(&self) -> Steps {
        let now = std::time::Instant::now();
        Steps {
            until: now + step_timeout(self.node.config.cart_lease_seconds),
            delay: None,
        }
    }
}

/// The rounds of a node's own step: the first at once, each later one after
/// a pause (100 ms, doubling to 1 s), each sent without the client's key and
/// waiting only for what is left of [`step_timeout`] from the first.
struct Steps {
    until: std::time::Instant,
    /// `None` before the first round.
    delay: Option<std::time::Duration>,
}

impl Steps {
    async fn next(&mut self) -> Option<Manner> {
        if let Some(delay) = self.delay {
            if std::time::Instant::now() + delay >= self.until {
                return None;
            }
            tokio::time::sleep(delay).await;
        }
        let next = self
            .delay
            .map_or(std::time::Duration::from_millis(100), |d| d * 2);
        self.delay = Some(next.min(std::time::Duration::from_secs(1)));
        Some(Manner {
            client_key: false,
            timeout: Some(
                self.until
                    .saturating_duration_since(std::time::Instant::now()),
            ),
            lease: None,
        })
    }
}

/// How long a cart's part, or a node's own step for it, may take: a third of
/// the lease, at most 10 s (so the confirmation lands well inside the lease,
/// and a request never waits long on one group).
fn step_timeout(lease_seconds: u64) -> std::time::Duration {
    (std::time::Duration::from_secs(lease_seconds) / 3).min(std::time::Duration::from_secs(10))
}

/// One channel as every group reports it: the worst state (down, degraded,
/// paused, healthy), the largest lag, the summed depths, the latest delivery,
/// and each group's own figures under `groups` (a cursor is a group's seq).
fn merge_channel(parts: Vec<&Value>) -> Value {
    let Some(first) = parts.first() else {
        return Value::Null;
    };
    let mut merged = (*first).clone();
    let rank = |state: &Value| match state.as_str() {
        Some("down") => 0,
        Some("degraded") => 1,
        Some("paused") => 2,
        _ => 3,
    };
    if let Some(worst) = parts.iter().map(|p| &p["state"]).min_by_key(|s| rank(s)) {
        merged["state"] = worst.clone();
    }
    let max_f64 = |field: &str| {
        parts
            .iter()
            .filter_map(|p| p[field].as_f64())
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))))
    };
    if let Some(lag) = max_f64("lag_seconds") {
        merged["lag_seconds"] = json!(lag);
    }
    for field in ["pending", "dlq_depth", "drift"] {
        if parts.iter().all(|p| p[field].is_u64()) {
            merged[field] = json!(parts.iter().filter_map(|p| p[field].as_u64()).sum::<u64>());
        }
    }
    if let Some(error) = parts
        .iter()
        .map(|p| &p["last_error"])
        .find(|e| !e.is_null())
    {
        merged["last_error"] = error.clone();
    }
    if let Some(latest) = parts
        .iter()
        .filter_map(|p| p["last_delivery_at"].as_str())
        .max()
    {
        merged["last_delivery_at"] = json!(latest);
    }
    merged["groups"] = Value::Array(
        parts
            .iter()
            .enumerate()
            .map(|(group, p)| {
                json!({"group": group, "state": p["state"], "cursor_seq": p["cursor_seq"],
                       "lag_seconds": p["lag_seconds"], "pending": p["pending"],
                       "dlq_depth": p["dlq_depth"]})
            })
            .collect(),
    );
    merged
}

/// A reservation of several groups: the first part's fields, every part's
/// lines (in `order` of their SKUs when given: the cart's request order); 201
/// if any part was created now.
fn merge_reservations(parts: &[&Answer], id: &str, order: Option<&[String]>) -> HttpResponse {
    let Some(mut merged) = parts[0].json() else {
        return parts[0].relay();
    };
    let mut lines = Vec::new();
    let mut statuses = Vec::new();
    // The cart was created with its first part, changed with its last, and
    // holds whole until its first part's deadline (each counts from its own
    // creation; a retry's new part from the retry). The timestamps are all
    // of one width (RFC 3339, milliseconds, UTC): as text, in time order.
    let mut created_at: Option<String> = None;
    let mut updated_at: Option<String> = None;
    let mut expires_at: Option<String> = None;
    let mut every_deadline = true;
    for part in parts {
        let Some(mut value) = part.json() else {
            return part.relay();
        };
        let at = |field: &str| value.get(field).and_then(Value::as_str).map(str::to_owned);
        let earliest = |kept: &mut Option<String>, at: Option<String>| {
            if let Some(at) = at {
                if kept.as_ref().is_none_or(|first| at < *first) {
                    *kept = Some(at);
                }
            }
        };
        earliest(&mut created_at, at("created_at"));
        if let Some(updated) = at("updated_at") {
            if updated_at.as_ref().is_none_or(|last| updated > *last) {
                updated_at = Some(updated);
            }
        }
        match at("expires_at") {
            Some(deadline) => earliest(&mut expires_at, Some(deadline)),
            None => every_deadline = false,
        }
        if let Some(Value::Array(part_lines)) = value.get_mut("lines").map(Value::take) {
            lines.extend(part_lines);
        }
        if let Some(status) = value.get("status").cloned() {
            if !statuses.contains(&status) {
                statuses.push(status);
            }
        }
    }
    if let Some(order) = order {
        sort_by_sku(&mut lines, order);
    }
    merged["lines"] = Value::Array(lines);
    for (field, at) in [
        ("created_at", created_at),
        ("updated_at", updated_at),
        ("expires_at", expires_at.filter(|_| every_deadline)),
    ] {
        if let Some(at) = at {
            merged[field] = Value::String(at);
        }
    }
    // The parts' lease is theirs: the cart's deadline is `expires_at`.
    if let Some(fields) = merged.as_object_mut() {
        fields.remove("lease_expires_at");
    }
    // Parts move together; one that has not (a ship stopped part-way in one
    // group, a part released after a refused attempt) is shown: every part's
    // status, in group order, and as `status` the first that still holds
    // stock (held, allocated), so a cart with stock held never reads as done.
    if statuses.len() > 1 {
        if let Some(active) = statuses
            .iter()
            .find(|s| matches!(s.as_str(), Some("held" | "allocated")))
        {
            merged["status"] = active.clone();
        }
        merged["part_statuses"] = Value::Array(statuses);
    }
    let status = if parts.iter().any(|p| p.status == StatusCode::CREATED) {
        StatusCode::CREATED
    } else {
        parts[0].status
    };
    let mut response = json(status, &merged, id);
    if parts.iter().all(|p| p.replayed()) {
        mark_replayed(&mut response);
    }
    response
}

/// Every part was an earlier request's answer replayed for its
/// `Idempotency-Key`: so is the whole.
fn mark_replayed(response: &mut HttpResponse) {
    response.headers_mut().insert(
        header::HeaderName::from_static(super::idempotency::REPLAYED_HEADER),
        header::HeaderValue::from_static("true"),
    );
}

/// Sorts items with a `sku` by the SKU's place in `order` (stable).
fn sort_by_sku(items: &mut [Value], order: &[String]) {
    items.sort_by_key(|item| {
        item.get("sku")
            .and_then(Value::as_str)
            .and_then(|sku| order.iter().position(|o| o == sku))
            .unwrap_or(usize::MAX)
    });
}

/// The refusals of a cart's parts: one is relayed; several 409s with
/// shortages become one 409 with all of them.
fn merge_refusals(refused: &[&Answer], order: &[String]) -> HttpResponse {
    let shortages: Option<Vec<Value>> = refused
        .iter()
        .map(|a| {
            (a.status == StatusCode::CONFLICT)
                .then(|| a.json())
                .flatten()
                .and_then(|v| v.get("shortages").and_then(Value::as_array).cloned())
        })
        .collect::<Option<Vec<Vec<Value>>>>()
        .map(|all| {
            let mut shortages: Vec<Value> = all.into_iter().flatten().collect();
            sort_by_sku(&mut shortages, order);
            shortages
        });
    match (shortages, refused.first()) {
        (Some(shortages), Some(first)) if refused.len() > 1 => {
            let mut problem = first.json().unwrap_or_default();
            problem["shortages"] = Value::Array(shortages);
            let id = first
                .headers
                .iter()
                .find(|(n, _)| n.as_str() == super::CORRELATION_HEADER)
                .and_then(|(_, v)| v.to_str().ok())
                .unwrap_or("");
            let mut response = json(StatusCode::CONFLICT, &problem, id);
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/problem+json"),
            );
            response
        }
        (_, Some(first)) => first.relay(),
        (_, None) => HttpResponse::InternalServerError().finish(),
    }
}

fn json(status: StatusCode, value: &Value, id: &str) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Ok(value) = header::HeaderValue::from_str(id) {
        response.insert_header((
            header::HeaderName::from_static(super::CORRELATION_HEADER),
            value,
        ));
    }
    response
        .content_type("application/json")
        .body(serde_json::to_vec(value).unwrap_or_default())
}

/// `id` as one path segment.
fn urlencode(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_keys_stay_valid_keys_and_differ_per_group() {
        assert_eq!(part_key("order-1", 2), "order-1:g2");
        let long = "k".repeat(255);
        let (a, b) = (part_key(&long, 0), part_key(&long, 1));
        assert!(a.len() <= 255 && b.len() <= 255, "{a} {b}");
        assert_ne!(a, b);
        assert_eq!(
            a,
            part_key(&long, 0),
            "the same key gives the same part key"
        );
    }

    #[test]
    fn a_channel_merges_to_its_worst_state_and_summed_depths() {
        let g0 = json!({"id": "web", "state": "healthy", "lag_seconds": 0.5, "pending": 2,
                        "dlq_depth": 0, "drift": 0, "cursor_seq": 10, "last_error": null,
                        "last_delivery_at": "2026-12-07T10:00:00.000Z"});
        let g1 = json!({"id": "web", "state": "down", "lag_seconds": 7.0, "pending": 3,
                        "dlq_depth": 4, "drift": 1, "cursor_seq": 3, "last_error": "timeout",
                        "last_delivery_at": "2026-12-07T09:00:00.000Z"});
        let merged = merge_channel(vec![&g0, &g1]);
        assert_eq!(merged["state"], "down");
        assert_eq!(merged["lag_seconds"], 7.0);
        assert_eq!(
            (&merged["pending"], &merged["dlq_depth"], &merged["drift"]),
            (&json!(5), &json!(4), &json!(1))
        );
        assert_eq!(merged["last_error"], "timeout");
        assert_eq!(merged["last_delivery_at"], "2026-12-07T10:00:00.000Z");
        assert_eq!(merged["groups"][1]["cursor_seq"], 3);
    }

    #[test]
    fn items_sort_by_their_skus_request_order() {
        let mut items = vec![
            json!({"sku": "a"}),
            json!({"sku": "c"}),
            json!({"sku": "b"}),
        ];
        sort_by_sku(
            &mut items,
            &["b".to_string(), "a".to_string(), "c".to_string()],
        );
        let skus: Vec<&str> = items.iter().filter_map(|i| i["sku"].as_str()).collect();
        assert_eq!(skus, ["b", "a", "c"]);
    }
}
