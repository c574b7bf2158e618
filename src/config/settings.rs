//! The top-level settings of the config file and every limit of the engine, each stated
//! once. A tunable limit is a config key with a `*_DEFAULT` and the `*_RANGE` it is
//! checked against at start-up; a fixed limit is a plain `*_MAX`.
//!
//! The two tables below are read by the macros of `table.rs`: a row of the first one is
//! a top-level key (its field of [`Config`], default, range and environment override), a
//! row of the second one is a defaulted number inside a section.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::table::{section_limits, top_level_settings};
use super::{
    ChannelConfig, ClusterConfig, Durability, InboxConfig, KeyConfig, LocationConfig, LogFormat,
    RateLimit, SourceAuthorityConfig,
};

// ---------------------------------------------------------------------------------------
// Fixed limits
// ---------------------------------------------------------------------------------------

/// Longest SKU, location, channel, key or source id (SPEC §1: 1–64 characters).
pub const MAX_ID_LEN: usize = 64;

/// Longest free-text name (location `name`).
pub const NAME_LEN_MAX: usize = 256;

/// Longest plain-text key secret.
pub const KEY_SECRET_LEN_MAX: usize = 1024;

/// Event types a system may post (SPEC §2), the values allowed in `source_authority.types`.
pub const EVENT_TYPES: &[&str] = &[
    "receipt",
    "adjustment",
    "count",
    "return",
    "quarantine",
    "in_transit",
    "transfer_out",
    "transfer_in",
];

/// Event types an inbox file may carry (SPEC §5): every type of §2 except the transfer
/// pair, which belongs to the transfer workflow.
pub const INBOX_EVENT_TYPES: &[&str] = &[
    "receipt",
    "adjustment",
    "count",
    "return",
    "quarantine",
    "in_transit",
];

/// Highest column position `inbox[].columns` may name (1-based).
pub const INBOX_COLUMN_POSITION_MAX: u32 = 1024;
/// Longest header name `inbox[].columns` may name.
pub const INBOX_COLUMN_NAME_LEN_MAX: usize = 256;

/// Most entries of each list in the file, so a mistaken generator cannot blow up start-up.
pub const LOCATIONS_MAX: usize = 4096;
pub const CHANNELS_MAX: usize = 256;
pub const KEYS_MAX: usize = 4096;
pub const INBOXES_MAX: usize = 256;
pub const SOURCE_AUTHORITY_RULES_MAX: usize = 4096;
pub const INBOX_MAPPING_ENTRIES_MAX: usize = 1_000_000;

/// `shards = 0` means "one per CPU"; explicit values are capped here.
pub const SHARDS_MAX: u32 = 256;

/// Per-key rate limit bounds (requests per second and burst).
pub const RATE_LIMIT_PER_SECOND_RANGE: RangeInclusive<u32> = 1..=1_000_000;
pub const RATE_LIMIT_BURST_RANGE: RangeInclusive<u32> = 1..=1_000_000;

/// Channel publication policy bounds (SPEC §4): a share is a percentage, a coalescing
/// window at most an hour.
pub const MAX_SHARE_PCT_MAX: u8 = 100;
pub const COALESCE_MS_MAX: u64 = 3_600_000;

// ---------------------------------------------------------------------------------------
// Top-level settings
// ---------------------------------------------------------------------------------------

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATA_DIR_DEFAULT: &str = "./data";
/// Log filter when neither `log_level` nor `STOCKWIRE_LOG` says otherwise.
pub const LOG_LEVEL_DEFAULT: &str = "info";

/// Rate limit of a key without its own `rate_limit`.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_second: 1000,
    burst: 2000,
};

// Each row: `key: Type = default`, then optionally `env text|scalar` (STOCKWIRE_<KEY>
// overrides it), `check method` (a rule of `Validator` that is not a range) and
// `const NAME_DEFAULT, NAME_RANGE = range`. Rows are in the order of the file's keys,
// which is also the order of the checks. `table.rs` says what each part becomes.
top_level_settings! {
    /// HTTP listen address, `host:port`.
    listen: String = LISTEN_DEFAULT.to_owned(), env text, check listen_address;
    /// RocksDB journal, snapshots and cursors live here.
    data_dir: PathBuf = PathBuf::from(DATA_DIR_DEFAULT), env text, check data_dir_not_empty;
    /// `wal` or `fsync` (SPEC §8), see [`Durability`].
    durability: Durability = Durability::Wal, env text;
    /// TTL of a held reservation when the request has no `ttl_seconds`. At most 30 days,
    /// so an abandoned hold cannot pin stock forever.
    default_ttl_seconds: u64 = 900, env scalar,
        const DEFAULT_TTL_SECONDS_DEFAULT, DEFAULT_TTL_SECONDS_RANGE = 1..=30 * 24 * 3600;
    /// Request body cap; above it: 413 (SPEC §3: default 1 MiB).
    max_body_bytes: usize = 1024 * 1024, env scalar,
        const MAX_BODY_BYTES_DEFAULT, MAX_BODY_BYTES_RANGE = 1024..=64 * 1024 * 1024;
    /// Fixed number of partitions SKU-locations hash into. Changing it re-partitions the
    /// data.
    partitions: u32 = 64, env scalar,
        const PARTITIONS_DEFAULT, PARTITIONS_RANGE = 1..=4096;
    /// Worker shards; 0 means one per CPU (see [`Config::shard_count`]).
    shards: u32 = 0, env scalar,
        const SHARDS_DEFAULT, SHARDS_RANGE = 0..=SHARDS_MAX;
    /// Seconds between two snapshots.
    snapshot_interval_seconds: u64 = 60, env scalar,
        const SNAPSHOT_INTERVAL_SECONDS_DEFAULT, SNAPSHOT_INTERVAL_SECONDS_RANGE = 1..=86_400;
    /// Idle position actors are stopped after this many seconds (their state is in the
    /// journal).
    passivate_after_seconds: u64 = 300, env scalar,
        const PASSIVATE_AFTER_SECONDS_DEFAULT, PASSIVATE_AFTER_SECONDS_RANGE = 1..=86_400;
    /// How long `Idempotency-Key`s are remembered (SPEC §2: at least 24 h).
    idempotency_retention_hours: u64 = 24, env scalar,
        const IDEMPOTENCY_RETENTION_HOURS_DEFAULT, IDEMPOTENCY_RETENTION_HOURS_RANGE = 24..=720;
    /// How long terminal (released, expired, shipped) reservations stay readable.
    reservation_retention_hours: u64 = 24, env scalar,
        const RESERVATION_RETENTION_HOURS_DEFAULT, RESERVATION_RETENTION_HOURS_RANGE = 1..=720;
    /// A shipped transfer not received within this many seconds raises one
    /// `transfer_overdue` exception. Default 7 days; at most 90.
    transfer_overdue_seconds: u64 = 7 * 24 * 3600, env scalar,
        const TRANSFER_OVERDUE_SECONDS_DEFAULT,
        TRANSFER_OVERDUE_SECONDS_RANGE = 1..=90 * 24 * 3600;
    /// How long received and cancelled transfers stay readable (and in memory).
    transfer_retention_hours: u64 = 7 * 24, env scalar,
        const TRANSFER_RETENTION_HOURS_DEFAULT, TRANSFER_RETENTION_HOURS_RANGE = 1..=90 * 24;
    /// Capacity of the bounded queue to the journal writer: a full queue is back-pressure
    /// (503), never unbounded memory.
    journal_queue_max: usize = 65_536, env scalar,
        const JOURNAL_QUEUE_MAX_DEFAULT, JOURNAL_QUEUE_MAX_RANGE = 16..=1_048_576;
    /// Most appends in one group commit; at most `journal_queue_max`.
    journal_batch_max: usize = 1024, env scalar, check journal_batch_within_queue,
        const JOURNAL_BATCH_MAX_DEFAULT, JOURNAL_BATCH_MAX_RANGE = 1..=65_536;
    /// Most events per `POST /v1/events` (SPEC §2: up to 1000 by default).
    batch_events_max: usize = 1000, env scalar,
        const BATCH_EVENTS_MAX_DEFAULT, BATCH_EVENTS_MAX_RANGE = 1..=10_000;
    /// Most SKUs per `POST /v1/availability/query` (SPEC §2: up to 1000 by default).
    query_skus_max: usize = 1000, env scalar,
        const QUERY_SKUS_MAX_DEFAULT, QUERY_SKUS_MAX_RANGE = 1..=10_000;
    /// Most lines per reservation.
    reservation_lines_max: usize = 100, env scalar,
        const RESERVATION_LINES_MAX_DEFAULT, RESERVATION_LINES_MAX_RANGE = 1..=1000;
    /// Cap on `GET /v1/events?limit=`.
    events_page_max: usize = 1000, env scalar,
        const EVENTS_PAGE_MAX_DEFAULT, EVENTS_PAGE_MAX_RANGE = 1..=10_000;
    /// Concurrent `GET /v1/events/stream` connections; one more gets 503.
    sse_connections_max: usize = 256, env scalar,
        const SSE_CONNECTIONS_MAX_DEFAULT, SSE_CONNECTIONS_MAX_RANGE = 1..=10_000;
    /// Concurrent `GET /v1/events/stream` connections of one API key; one more gets 429.
    sse_connections_per_key_max: usize = 16, env scalar,
        const SSE_CONNECTIONS_PER_KEY_MAX_DEFAULT, SSE_CONNECTIONS_PER_KEY_MAX_RANGE = 1..=10_000;
    /// Open HTTP connections over all workers; beyond it new ones wait in the accept
    /// backlog.
    connections_max: usize = 10_000, env scalar,
        const CONNECTIONS_MAX_DEFAULT, CONNECTIONS_MAX_RANGE = 1..=1_000_000;
    /// Request line plus headers, in bytes; above it: 431. (actix-web itself stops at
    /// 128 KiB and 96 headers.)
    max_header_bytes: usize = 16 * 1024, env scalar,
        const MAX_HEADER_BYTES_DEFAULT, MAX_HEADER_BYTES_RANGE = 1024..=131_072;
    /// Most bytes of one CSV reconciliation upload (413 beyond). It is streamed, never
    /// held whole.
    reconciliation_max_bytes: usize = 1 << 30, env scalar,
        const RECONCILIATION_MAX_BYTES_DEFAULT, RECONCILIATION_MAX_BYTES_RANGE = 1024..=(1 << 36);
    /// Most rows of one reconciliation (413 beyond).
    reconciliation_rows_max: u64 = 20_000_000, env scalar,
        const RECONCILIATION_ROWS_MAX_DEFAULT, RECONCILIATION_ROWS_MAX_RANGE = 1..=1_000_000_000;
    /// `/metrics` needs an `admin` or `observer` key (default: open, SPEC §3).
    protect_metrics: bool = false, env scalar;
    /// Rate limit of every key without its own `rate_limit`.
    default_rate_limit: RateLimit = DEFAULT_RATE_LIMIT, check default_rate_limit;
    /// SKUs each channel publisher holds pending (coalesced) before it falls behind and
    /// catches up from its durable cursor and the journal (bounded memory).
    publish_pending_max: usize = 100_000, env scalar,
        const PUBLISH_PENDING_MAX_DEFAULT, PUBLISH_PENDING_MAX_RANGE = 16..=10_000_000;
    /// Seconds between two drift checks of the publication ledger.
    drift_check_seconds: u64 = 30, env scalar,
        const DRIFT_CHECK_SECONDS_DEFAULT, DRIFT_CHECK_SECONDS_RANGE = 1..=86_400;
    /// `text` or `json`.
    log_format: LogFormat = LogFormat::Text, env text;
    /// Log filter, tracing's `EnvFilter` syntax (`info`, `warn,stockwire=debug`).
    /// `STOCKWIRE_LOG` (or `STOCKWIRE_LOG_LEVEL`) overrides it.
    log_level: String = LOG_LEVEL_DEFAULT.to_owned(), env text, check log_filter;
    /// `[[locations]]`.
    locations: Vec<LocationConfig> = Vec::new();
    /// `[[keys]]`: the API keys.
    keys: Vec<KeyConfig> = Vec::new();
    /// `[[channels]]`.
    channels: Vec<ChannelConfig> = Vec::new();
    /// `[[inbox]]`: partner file inboxes.
    inbox: Vec<InboxConfig> = Vec::new();
    /// `[[source_authority]]`: which source may post what, where.
    source_authority: Vec<SourceAuthorityConfig> = Vec::new();
    /// `[cluster]`: opt-in cluster mode on NATS JetStream (docs/CLUSTER.md). Absent: one
    /// process, nothing else changes.
    cluster: Option<ClusterConfig> = None, check cluster;
}

// SPEC §2: idempotency keys are remembered for at least 24 h, whatever the config says.
const _: () = assert!(*IDEMPOTENCY_RETENTION_HOURS_RANGE.start() >= 24);
// The default group commit fits the default queue, and no group commit ever needs more
// than the whole queue.
const _: () = assert!(JOURNAL_BATCH_MAX_DEFAULT <= JOURNAL_QUEUE_MAX_DEFAULT);
const _: () = assert!(*JOURNAL_BATCH_MAX_RANGE.end() <= *JOURNAL_QUEUE_MAX_RANGE.end());
// The cluster defaults pass their own rule (a takeover window of at least 3 heartbeats).
const _: () = assert!(CLUSTER_TAKEOVER_AFTER_MS_DEFAULT >= 3 * CLUSTER_HEARTBEAT_MS_DEFAULT);

// ---------------------------------------------------------------------------------------
// Defaulted numbers inside sections
// ---------------------------------------------------------------------------------------

// Each row: the serde default function of the key, its type and default, and the names
// of its default and range. `validate.rs` checks each key against its range.
section_limits! {
    /// `channels[].max_share_pct` (SPEC §4): publish at most this share of the view.
    fn default_max_share_pct() -> u8 = 100,
        const MAX_SHARE_PCT_DEFAULT, MAX_SHARE_PCT_RANGE = 0..=MAX_SHARE_PCT_MAX;
    /// `channels[].coalesce_ms` (SPEC §4): the latest value per SKU wins within this
    /// window.
    fn default_coalesce_ms() -> u64 = 1000,
        const COALESCE_MS_DEFAULT, COALESCE_MS_RANGE = 0..=COALESCE_MS_MAX;
    /// `channels[].sink.timeout_ms` of a webhook: the timeout of one POST.
    fn default_webhook_timeout_ms() -> u64 = 2000,
        const WEBHOOK_TIMEOUT_MS_DEFAULT, WEBHOOK_TIMEOUT_MS_RANGE = 1..=300_000;
    /// `channels[].sink.max_attempts` of a webhook or file sink: after this many failed
    /// attempts the update is parked in the DLQ.
    fn default_webhook_max_attempts() -> u32 = 12,
        const WEBHOOK_MAX_ATTEMPTS_DEFAULT, WEBHOOK_MAX_ATTEMPTS_RANGE = 1..=100;
    /// `channels[].sink.batch_max`: most updates per webhook POST or per file.
    fn default_webhook_batch_max() -> usize = 500,
        const WEBHOOK_BATCH_MAX_DEFAULT, WEBHOOK_BATCH_MAX_RANGE = 1..=10_000;
    /// `channels[].sink.backoff_ms`, the retry back-off of every sink: the first retry
    /// waits about `backoff_ms`, each next one twice as long (with jitter), never more
    /// than `backoff_max_ms`.
    fn default_sink_backoff_ms() -> u64 = 250,
        const SINK_BACKOFF_MS_DEFAULT, SINK_BACKOFF_MS_RANGE = 1..=600_000;
    /// `channels[].sink.backoff_max_ms`: the longest wait between two attempts.
    fn default_sink_backoff_max_ms() -> u64 = 30_000,
        const SINK_BACKOFF_MAX_MS_DEFAULT, SINK_BACKOFF_MAX_MS_RANGE = 1..=3_600_000;
    /// `inbox[].poll_interval_ms`: how often an inbox directory is scanned. The scan is
    /// the fallback for the directory watcher (and catches anything it misses); with no
    /// watcher it is the only trigger.
    fn default_inbox_poll_interval_ms() -> u64 = 1000,
        const INBOX_POLL_INTERVAL_MS_DEFAULT, INBOX_POLL_INTERVAL_MS_RANGE = 10..=3_600_000;
    /// `inbox[].stable_ms`: a file is read only once two looks at least this far apart
    /// saw the same size and modification time (a partner that writes in place is done
    /// writing).
    fn default_inbox_stable_ms() -> u64 = 1000,
        const INBOX_STABLE_MS_DEFAULT, INBOX_STABLE_MS_RANGE = 0..=3_600_000;
    /// `inbox[].file_bytes_max`: larger files are rejected whole, unread.
    fn default_inbox_file_bytes_max() -> u64 = 256 * 1024 * 1024,
        const INBOX_FILE_BYTES_MAX_DEFAULT,
        INBOX_FILE_BYTES_MAX_RANGE = 1..=64 * 1024 * 1024 * 1024;
    /// `cluster.replicas`: servers each journal stream is stored on (JetStream R).
    fn default_cluster_replicas() -> usize = 3,
        const CLUSTER_REPLICAS_DEFAULT, CLUSTER_REPLICAS_RANGE = 1..=5;
    /// `cluster.heartbeat_ms`: how often a node says it is alive (core NATS).
    fn default_cluster_heartbeat_ms() -> u64 = 200,
        const CLUSTER_HEARTBEAT_MS_DEFAULT, CLUSTER_HEARTBEAT_MS_RANGE = 10..=10_000;
    /// `cluster.takeover_after_ms`: an owner unheard this long is taken over by its
    /// successor. It decides only *when*: the stream's sequence fence decides whether a
    /// write lands.
    fn default_cluster_takeover_after_ms() -> u64 = 1000,
        const CLUSTER_TAKEOVER_AFTER_MS_DEFAULT,
        CLUSTER_TAKEOVER_AFTER_MS_RANGE = 100..=600_000;
    /// `cluster.append_timeout_ms`: how long one journal append keeps retrying its
    /// stream write (a JetStream leader election takes 4-9 s) before it is refused
    /// (503) and the node steps down.
    fn default_cluster_append_timeout_ms() -> u64 = 15_000,
        const CLUSTER_APPEND_TIMEOUT_MS_DEFAULT,
        CLUSTER_APPEND_TIMEOUT_MS_RANGE = 100..=600_000;
    /// `cluster.stream_keep`: journal messages the stream keeps (older ones are purged
    /// by the owner; a node further behind copies the owner's store, docs/CLUSTER.md).
    fn default_cluster_stream_keep() -> u64 = 1_000_000,
        const CLUSTER_STREAM_KEEP_DEFAULT, CLUSTER_STREAM_KEEP_RANGE = 1000..=1_000_000_000;
    /// `cluster.groups`: partition groups, each with its own stream and owner; at most
    /// `partitions` (a group with no partition would own nothing).
    fn default_cluster_groups() -> u32 = 1,
        const CLUSTER_GROUPS_DEFAULT, CLUSTER_GROUPS_RANGE = 1..=64;
    /// `cluster.cart_lease_seconds`: a cart over several partition groups holds each
    /// part on this lease; at its end each part keeps the cart's TTL if every other
    /// group holds its part, and lets go otherwise (a cart whose coordinating process
    /// died before every part was held, or that was answered 503 and never retried).
    fn default_cluster_cart_lease_seconds() -> u64 = 30,
        const CLUSTER_CART_LEASE_SECONDS_DEFAULT, CLUSTER_CART_LEASE_SECONDS_RANGE = 3..=3600;
}
