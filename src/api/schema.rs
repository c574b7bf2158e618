//! The bodies the API answers with, as the handlers build them: each is
//! serialized straight to bytes and described to `/v1/openapi.json` by its
//! `ToSchema` (the document itself is `openapi.rs`, which lists the handlers;
//! the handlers import only this module, so the two do not import each
//! other). A field absent when it has no value is `skip_serializing_if` and
//! not nullable; one sent as `null` is nullable.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use utoipa::openapi::{ContentBuilder, RefOr, Response, ResponseBuilder};
use utoipa::{IntoResponses, PartialSchema, ToSchema};

use crate::domain::{AdjustReason, QuarantineAction};

// Built by `ApiError::problem`.
/// Every error body: `application/problem+json` with a stable `code`.
#[derive(Serialize, ToSchema)]
pub struct Problem<'a> {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// Stable snake_case code (SPEC §2).
    pub code: &'static str,
    /// `insufficient_available` only: the short lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub shortages: Option<Vec<Shortage<'a>>>,
    /// `rate_limited` only (also in `Retry-After`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub retry_after_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Shortage<'a> {
    pub sku: &'a str,
    /// Absent for a line that named no location.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub location: Option<&'a str>,
    pub requested: u64,
    pub available: i64,
}

/// The error answers every protected route may give.
pub struct Errors;

impl IntoResponses for Errors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        let problem = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/problem+json",
                    ContentBuilder::new()
                        .schema(Some(Problem::schema()))
                        .build(),
                )
                .build()
                .into()
        };
        // Derived from the one code table: each status lists its codes.
        crate::codes::by_status()
            .into_iter()
            .map(|(status, codes)| {
                let reason = actix_web::http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or("error");
                (status, format!("{reason}: {}", codes.join(", ")))
            })
            .map(|(status, description)| (status.to_string(), problem(&description)))
            .collect()
    }
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`
    pub status: &'static str,
    pub journal_head_seq: u64,
    /// Cluster mode only: `owner` or `follower` (a follower forwards to the owner).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub role: Option<&'static str>,
}

/// `GET /v1/cluster`.
#[derive(Serialize, ToSchema)]
pub struct ClusterView {
    pub node: String,
    /// `starting`, `follower`, `recovering`, `owner`, `stepped_down`, `behind` or
    /// `seeding`.
    pub role: &'static str,
    /// The JetStream stream holding the journal.
    pub stream: String,
    pub replicas: usize,
    /// The fixed partition count, spread over `groups` partition groups
    /// (partition `p` is in group `p % groups`), each with its own owner
    /// (docs/CLUSTER.md).
    pub partitions: u32,
    /// Partition groups (`[cluster] groups`; 1: one owner holds every partition).
    pub groups: u32,
    /// The group this node is a member of.
    pub group: u32,
    /// Partitions this node owns and serves.
    pub owned_partitions: u32,
    /// The owner's node id; null while none is known.
    #[schema(required = true)]
    pub owner: Option<String>,
    /// Stream sequence of the owner's takeover marker.
    pub epoch: u64,
    /// Last stream sequence in this node's store.
    pub applied_seq: u64,
    /// The stream's last sequence, when last asked.
    pub stream_last_seq: u64,
    /// `stream_last_seq - applied_seq`: how far this node is behind.
    pub lag: u64,
    /// Ownership changes seen since this node started.
    pub failovers: u64,
    /// Requests this node forwarded to the owner.
    pub forwarded: u64,
    /// This node's last takeover, from deciding to owning (ms; 0: none).
    pub last_takeover_ms: u64,
    /// Copies of the owner's store this node made since it started (the stream
    /// had been purged past its own).
    pub seeds: u64,
    /// Chunks of the owner's store those copies took.
    pub seed_chunks: u64,
    /// The stream sequence the last finished copy started from: the node
    /// applied every write after it from the stream (0: no copy).
    pub seeded_from: u64,
    /// The other nodes of this node's group heard in the last minute.
    pub peers: Vec<ClusterPeer>,
    /// Every partition group's owner as this node knows it, its own group's
    /// included (`groups` entries).
    pub group_owners: Vec<GroupOwner>,
}

/// One partition group's owner, in `GET /v1/cluster`.
#[derive(Serialize, ToSchema)]
pub struct GroupOwner {
    pub group: u32,
    /// Partitions of the group.
    pub partitions: u32,
    /// The owner's node id; null while none is heard (a takeover under way).
    #[schema(required = true)]
    pub owner: Option<String>,
    /// Where the owner's listener is (its `advertise`).
    #[schema(required = true)]
    pub advertise: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ClusterPeer {
    pub node: String,
    pub advertise: String,
    pub role: &'static str,
    pub applied_seq: u64,
    pub heard_ms_ago: u64,
}

// The availability answers borrow from the readouts and are serialized
// straight to bytes, as the reservation answers are.

/// One position's counters (full view).
#[derive(Serialize, ToSchema)]
pub struct LocationCounters<'a> {
    pub location: &'a str,
    pub on_hand: u64,
    pub reserved: u64,
    pub allocated: u64,
    pub quarantined: u64,
    pub in_transit: u64,
    pub backordered: u64,
    pub safety_stock: u64,
    pub backorder_limit: u64,
    /// May be negative: an oversold position.
    pub available: i64,
    pub version: u64,
}

/// Sums over the locations (exact: a sum of counters may pass `i64`).
#[derive(Serialize, ToSchema)]
pub struct Totals {
    #[schema(value_type = i64)]
    pub on_hand: i128,
    #[schema(value_type = i64)]
    pub reserved: i128,
    #[schema(value_type = i64)]
    pub allocated: i128,
    #[schema(value_type = i64)]
    pub quarantined: i128,
    #[schema(value_type = i64)]
    pub in_transit: i128,
    #[schema(value_type = i64)]
    pub backordered: i128,
    #[schema(value_type = i64)]
    pub safety_stock: i128,
    #[schema(value_type = i64)]
    pub available: i128,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelAvailable<'a> {
    pub channel: &'a str,
    pub available: i64,
}

/// Admin, system and observer keys: every counter at every location.
#[derive(Serialize, ToSchema)]
pub struct FullAvailability<'a> {
    pub sku: &'a str,
    pub locations: Vec<LocationCounters<'a>>,
    pub total: Totals,
    pub channels: Vec<ChannelAvailable<'a>>,
}

#[derive(Serialize, ToSchema)]
pub struct LocationAvailable<'a> {
    pub location: &'a str,
    pub available: i64,
}

/// A channel key (or `?channel=`): only what that channel may sell.
#[derive(Serialize, ToSchema)]
pub struct ChannelAvailability<'a> {
    pub sku: &'a str,
    pub channel: &'a str,
    pub available: i64,
    pub locations: Vec<LocationAvailable<'a>>,
}

#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Availability<'a> {
    Full(FullAvailability<'a>),
    Channel(ChannelAvailability<'a>),
}

#[derive(Serialize, ToSchema)]
pub struct AvailabilityItems<'a> {
    pub items: Vec<Availability<'a>>,
}

// Borrowed from the record: the reservation routes build these structs and
// serialize them straight to bytes (no `serde_json::Value` tree).
#[derive(Serialize, ToSchema)]
pub struct ReservationLine<'a> {
    pub sku: &'a str,
    pub location: &'a str,
    pub qty: u64,
    pub backordered: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Reservation<'a> {
    pub reservation_id: &'a str,
    pub channel: &'a str,
    #[schema(required = true)]
    pub order_ref: Option<&'a str>,
    /// held | allocated | shipped | released | expired
    pub status: &'static str,
    pub created_at: String,
    pub updated_at: String,
    #[schema(required = true)]
    pub expires_at: Option<String>,
    /// Only on a cart's part in one partition group, read from that group
    /// while it is on its lease: when it lets go unless every other group
    /// holds its part of the cart (docs/CLUSTER.md). A cart's own answer
    /// never has it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub lease_expires_at: Option<String>,
    pub correlation_id: &'a str,
    pub lines: Vec<ReservationLine<'a>>,
}

/// What became of one posted event (fields without a value are absent).
#[derive(Serialize, ToSchema)]
pub struct EventResult {
    pub event_id: String,
    /// applied | duplicate | rejected
    pub status: &'static str,
    /// The log entry of an applied event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seq: Option<u64>,
    /// Why it was rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub detail: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct EventResults {
    pub results: Vec<EventResult>,
}

/// A position's counters after a log entry's change.
#[derive(Serialize, ToSchema)]
pub struct LogPosition {
    pub on_hand: u64,
    pub reserved: u64,
    pub allocated: u64,
    pub quarantined: u64,
    pub in_transit: u64,
    pub backordered: u64,
    pub safety_stock: u64,
    pub backorder_limit: u64,
    /// May be negative: an oversold position.
    pub available: i64,
    pub version: u64,
}

/// One entry of the ordered event log (`GET /v1/events`, and each SSE
/// `data:`), borrowed from the journal record. Fields that do not apply to
/// the entry's type are absent.
#[derive(Serialize, ToSchema)]
pub struct LogEntry<'a> {
    pub seq: u64,
    pub event_id: &'a str,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub schema_version: u32,
    pub occurred_at: String,
    pub recorded_at: String,
    pub source: &'a str,
    pub correlation_id: &'a str,
    pub sku: &'a str,
    pub location: &'a str,
    /// A transfer's entries name the transfer (not its hold).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub transfer_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub reservation_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub channel: Option<&'a str>,
    /// Counter name -> change (the counters that changed).
    #[schema(value_type = BTreeMap<String, i64>)]
    pub delta: BTreeMap<&'static str, i64>,
    pub position: LogPosition,
    /// Adjustments: damage | shrink | found | correction | short_pick
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub reason: Option<AdjustReason>,
    /// Quarantine entries: hold | release | scrap
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, nullable = false)]
    pub action: Option<QuarantineAction>,
    /// Returns only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub restockable: Option<bool>,
    /// Commitment entries: the channel's new ring-fenced quantity.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub commitment: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct EventPage<'a> {
    pub events: Vec<LogEntry<'a>>,
    pub head: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ExceptionItem {
    pub id: u64,
    pub kind: String,
    pub status: String,
    pub code: String,
    pub detail: String,
    #[schema(required = true)]
    pub sku: Option<String>,
    #[schema(required = true)]
    pub location: Option<String>,
    #[schema(required = true)]
    pub event_id: Option<String>,
    #[schema(required = true)]
    pub source: Option<String>,
    /// The event, row or file as received (any JSON; null when there is
    /// none). Free-form: kept as the sender's text and parsed back, so no
    /// struct describes it.
    #[schema(required = true, value_type = Option<serde_json::Value>)]
    pub payload: Option<serde_json::Value>,
    pub correlation_id: String,
    pub created_at: String,
    #[schema(required = true)]
    pub resolution: Option<Resolution>,
}

#[derive(Serialize, ToSchema)]
pub struct Resolution {
    pub note: String,
    /// The key that resolved it.
    pub by: String,
    pub at: String,
    #[schema(required = true)]
    pub retried_event_id: Option<String>,
    #[schema(required = true)]
    pub seq: Option<u64>,
    pub correlation_id: String,
}

#[derive(Serialize, ToSchema)]
pub struct RetryOutcome {
    pub exception: ExceptionItem,
    pub result: EventResult,
}

#[derive(Serialize, ToSchema)]
pub struct ExceptionPage {
    pub exceptions: Vec<ExceptionItem>,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelStatus {
    #[schema(value_type = String)]
    pub id: Arc<str>,
    pub sink: &'static str,
    /// healthy | degraded | down | paused
    pub state: &'static str,
    pub lag_seconds: f64,
    pub pending: u64,
    pub dlq_depth: u64,
    pub cursor_seq: u64,
    pub drift: u64,
    #[schema(required = true)]
    pub last_error: Option<String>,
    #[schema(required = true)]
    pub last_delivery_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelStatus>,
}

/// What a resync or replay queued (fields that do not apply are absent).
#[derive(Serialize, ToSchema)]
pub struct Queued {
    pub channel: String,
    /// A log replay: where it starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub from_seq: Option<u64>,
    /// `dead_letters`: a replay of the dead-letter queue.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub from: Option<&'static str>,
    /// A resync or a dead-letter replay: the SKUs queued.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub queued_skus: Option<u64>,
}

/// What the channel last acknowledged for a SKU (all null before its first).
#[derive(Serialize, ToSchema)]
pub struct Published {
    pub channel: String,
    pub sku: String,
    #[schema(required = true)]
    pub available: Option<u64>,
    #[schema(required = true)]
    pub seq: Option<u64>,
    #[schema(required = true)]
    pub at: Option<String>,
    /// The value the channel should have now.
    pub current: u64,
    pub in_sync: bool,
}

#[derive(Serialize, ToSchema)]
pub struct PositionSettings {
    pub sku: String,
    pub location: String,
    pub safety_stock: u64,
    pub backorder_limit: u64,
    pub available: i64,
    pub version: u64,
    /// The change's log entry (null when nothing changed).
    #[schema(required = true)]
    pub seq: Option<u64>,
    /// Commitment routes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub channel: Option<String>,
    /// Commitment routes only.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub commitment: Option<u64>,
}

#[derive(Serialize, ToSchema)]
pub struct ReconciliationDifference {
    pub sku: String,
    pub location: String,
    pub engine_on_hand: u64,
    pub source_on_hand: u64,
    pub diff: i64,
    pub applied: bool,
    /// The correction's log entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub seq: Option<u64>,
    /// Why it was not corrected (`source_not_authoritative`, `version_conflict`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<&'static str>,
}

#[derive(Serialize, ToSchema)]
pub struct RowProblem {
    pub row: u64,
    pub code: &'static str,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
pub struct ReconciliationReport {
    pub source: String,
    pub apply: bool,
    pub checked: u64,
    pub matched: u64,
    pub differences: u64,
    pub applied: u64,
    /// The first 10,000 differences (all are in the exception queue).
    pub exceptions: Vec<ReconciliationDifference>,
    pub rejected_rows: u64,
    pub errors: Vec<RowProblem>,
    /// More differences or row errors than listed.
    pub truncated: bool,
}

// Borrowed from the record, as the reservation structs are.
#[derive(Serialize, ToSchema)]
pub struct TransferStep<'a> {
    /// held | shipped | received | released | ...
    pub step: &'static str,
    pub at: String,
    pub qty: u64,
    pub location: &'a str,
    pub event_id: &'a str,
    pub source: &'a str,
    pub correlation_id: &'a str,
}

#[derive(Serialize, ToSchema)]
pub struct Transfer<'a> {
    pub transfer_id: &'a str,
    pub sku: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub qty: u64,
    /// held | shipped | received | cancelled (see API.md)
    pub status: &'static str,
    #[schema(required = true)]
    pub shipped_qty: Option<u64>,
    #[schema(required = true)]
    pub received_qty: Option<u64>,
    /// received - shipped, when they differ.
    #[schema(required = true)]
    pub discrepancy: Option<i64>,
    pub overdue: bool,
    pub created_at: String,
    pub updated_at: String,
    #[schema(required = true)]
    pub shipped_at: Option<String>,
    #[schema(required = true)]
    pub due_at: Option<String>,
    #[schema(required = true)]
    pub received_at: Option<String>,
    pub correlation_id: &'a str,
    pub history: Vec<TransferStep<'a>>,
}
