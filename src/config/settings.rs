//! The top-level settings of the config file ([`Config`] and its defaults) and every
//! limit of the engine: each tunable limit is a config key with a `*_DEFAULT` and a
//! `*_RANGE` it is checked against at start-up; fixed limits are plain `*_MAX`s.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use serde::Deserialize;

use super::{
    ChannelConfig, Durability, InboxConfig, KeyConfig, LocationConfig, LogFormat, RateLimit,
    SourceAuthorityConfig,
};

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

pub const LISTEN_DEFAULT: &str = "127.0.0.1:8080";
pub const DATA_DIR_DEFAULT: &str = "./data";

/// Default reservation TTL; at most 30 days so an abandoned hold cannot pin stock forever.
pub const DEFAULT_TTL_SECONDS_DEFAULT: u64 = 900;
pub const DEFAULT_TTL_SECONDS_RANGE: RangeInclusive<u64> = 1..=30 * 24 * 3600;

/// Request body cap (SPEC §3: default 1 MiB, 413 above it).
pub const MAX_BODY_BYTES_DEFAULT: usize = 1024 * 1024;
pub const MAX_BODY_BYTES_RANGE: RangeInclusive<usize> = 1024..=64 * 1024 * 1024;

/// Fixed number of partitions SKU-locations hash into. Changing it re-partitions the data.
pub const PARTITIONS_DEFAULT: u32 = 64;
pub const PARTITIONS_RANGE: RangeInclusive<u32> = 1..=4096;

/// `shards = 0` means "one per CPU"; explicit values are capped here.
pub const SHARDS_DEFAULT: u32 = 0;
pub const SHARDS_MAX: u32 = 256;

pub const SNAPSHOT_INTERVAL_SECONDS_DEFAULT: u64 = 60;
pub const SNAPSHOT_INTERVAL_SECONDS_RANGE: RangeInclusive<u64> = 1..=86_400;

/// Idle position actors are stopped after this many seconds (their state is in the journal).
pub const PASSIVATE_AFTER_SECONDS_DEFAULT: u64 = 300;
pub const PASSIVATE_AFTER_SECONDS_RANGE: RangeInclusive<u64> = 1..=86_400;

/// SPEC §2: idempotency keys are remembered for at least 24 h.
pub const IDEMPOTENCY_RETENTION_HOURS_DEFAULT: u64 = 24;
pub const IDEMPOTENCY_RETENTION_HOURS_RANGE: RangeInclusive<u64> = 24..=720;

/// How long terminal (released, expired, shipped) reservations stay readable.
pub const RESERVATION_RETENTION_HOURS_DEFAULT: u64 = 24;
pub const RESERVATION_RETENTION_HOURS_RANGE: RangeInclusive<u64> = 1..=720;

/// A shipped transfer not received within this is overdue (one `transfer_overdue`
/// exception). Default 7 days; at most 90.
pub const TRANSFER_OVERDUE_SECONDS_DEFAULT: u64 = 7 * 24 * 3600;
pub const TRANSFER_OVERDUE_SECONDS_RANGE: RangeInclusive<u64> = 1..=90 * 24 * 3600;

/// How long received and cancelled transfers stay readable (and in memory).
pub const TRANSFER_RETENTION_HOURS_DEFAULT: u64 = 7 * 24;
pub const TRANSFER_RETENTION_HOURS_RANGE: RangeInclusive<u64> = 1..=90 * 24;

/// Bounded queue in front of the journal writer; when full, writers get back-pressure.
pub const JOURNAL_QUEUE_MAX_DEFAULT: usize = 65_536;
pub const JOURNAL_QUEUE_MAX_RANGE: RangeInclusive<usize> = 16..=1_048_576;

/// Most appends in one group commit.
pub const JOURNAL_BATCH_MAX_DEFAULT: usize = 1024;
pub const JOURNAL_BATCH_MAX_RANGE: RangeInclusive<usize> = 1..=65_536;

/// Most events in one `POST /v1/events` (SPEC §2: up to 1000 by default).
pub const BATCH_EVENTS_MAX_DEFAULT: usize = 1000;
pub const BATCH_EVENTS_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Most SKUs in one `POST /v1/availability/query` (SPEC §2: up to 1000 by default).
pub const QUERY_SKUS_MAX_DEFAULT: usize = 1000;
pub const QUERY_SKUS_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Most lines in one reservation.
pub const RESERVATION_LINES_MAX_DEFAULT: usize = 100;
pub const RESERVATION_LINES_MAX_RANGE: RangeInclusive<usize> = 1..=1000;

/// Cap on `GET /v1/events?limit=`.
pub const EVENTS_PAGE_MAX_DEFAULT: usize = 1000;
pub const EVENTS_PAGE_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Concurrent `GET /v1/events/stream` connections.
pub const SSE_CONNECTIONS_MAX_DEFAULT: usize = 256;
pub const SSE_CONNECTIONS_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Concurrent `GET /v1/events/stream` connections of one API key.
pub const SSE_CONNECTIONS_PER_KEY_MAX_DEFAULT: usize = 16;
pub const SSE_CONNECTIONS_PER_KEY_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Open HTTP connections over all workers; beyond it new ones wait in the accept backlog.
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
pub const CONNECTIONS_MAX_RANGE: RangeInclusive<usize> = 1..=1_000_000;

/// Request line plus headers, in bytes; above it: 431. (actix-web itself stops at
/// 128 KiB and 96 headers.)
pub const MAX_HEADER_BYTES_DEFAULT: usize = 16 * 1024;
pub const MAX_HEADER_BYTES_RANGE: RangeInclusive<usize> = 1024..=131_072;

/// A CSV reconciliation upload: most bytes and rows (it is streamed, never held whole).
pub const RECONCILIATION_MAX_BYTES_DEFAULT: usize = 1 << 30;
pub const RECONCILIATION_MAX_BYTES_RANGE: RangeInclusive<usize> = 1024..=(1 << 36);
pub const RECONCILIATION_ROWS_MAX_DEFAULT: u64 = 20_000_000;
pub const RECONCILIATION_ROWS_MAX_RANGE: RangeInclusive<u64> = 1..=1_000_000_000;

/// Rate limit of a key without its own `rate_limit`.
pub const DEFAULT_RATE_LIMIT: RateLimit = RateLimit {
    per_second: 1000,
    burst: 2000,
};

/// Channel publication policy (SPEC §4).
pub const MAX_SHARE_PCT_DEFAULT: u8 = 100;
pub const MAX_SHARE_PCT_MAX: u8 = 100;
pub const COALESCE_MS_DEFAULT: u64 = 1000;
pub const COALESCE_MS_MAX: u64 = 3_600_000;

/// Webhook sink delivery (SPEC §4).
pub const WEBHOOK_TIMEOUT_MS_DEFAULT: u64 = 2000;
pub const WEBHOOK_TIMEOUT_MS_RANGE: RangeInclusive<u64> = 1..=300_000;
pub const WEBHOOK_MAX_ATTEMPTS_DEFAULT: u32 = 12;
pub const WEBHOOK_MAX_ATTEMPTS_RANGE: RangeInclusive<u32> = 1..=100;
pub const WEBHOOK_BATCH_MAX_DEFAULT: usize = 500;
pub const WEBHOOK_BATCH_MAX_RANGE: RangeInclusive<usize> = 1..=10_000;

/// Retry back-off of every sink: the first retry waits about `backoff_ms`, each next one
/// twice as long (with jitter), never more than `backoff_max_ms`.
pub const SINK_BACKOFF_MS_DEFAULT: u64 = 250;
pub const SINK_BACKOFF_MS_RANGE: RangeInclusive<u64> = 1..=600_000;
pub const SINK_BACKOFF_MAX_MS_DEFAULT: u64 = 30_000;
pub const SINK_BACKOFF_MAX_MS_RANGE: RangeInclusive<u64> = 1..=3_600_000;

/// Most SKUs one channel's publisher keeps pending (coalesced); beyond it the channel
/// falls behind and catches up from its durable cursor and the journal.
pub const PUBLISH_PENDING_MAX_DEFAULT: usize = 100_000;
pub const PUBLISH_PENDING_MAX_RANGE: RangeInclusive<usize> = 16..=10_000_000;

/// Log filter when neither `log_level` nor `STOCKWIRE_LOG` says otherwise.
pub const LOG_LEVEL_DEFAULT: &str = "info";

/// Seconds between two drift checks of the publication ledger.
pub const DRIFT_CHECK_SECONDS_DEFAULT: u64 = 30;
pub const DRIFT_CHECK_SECONDS_RANGE: RangeInclusive<u64> = 1..=86_400;

/// Per-key rate limit bounds (requests per second and burst).
pub const RATE_LIMIT_PER_SECOND_RANGE: RangeInclusive<u32> = 1..=1_000_000;
pub const RATE_LIMIT_BURST_RANGE: RangeInclusive<u32> = 1..=1_000_000;

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

/// How often an inbox directory is scanned. The scan is the fallback for the directory
/// watcher (and catches anything it misses); with no watcher it is the only trigger.
pub const INBOX_POLL_INTERVAL_MS_DEFAULT: u64 = 1000;
pub const INBOX_POLL_INTERVAL_MS_RANGE: RangeInclusive<u64> = 10..=3_600_000;

/// A file is read only once two looks at least this far apart saw the same size and
/// modification time (a partner that writes in place is done writing).
pub const INBOX_STABLE_MS_DEFAULT: u64 = 1000;
pub const INBOX_STABLE_MS_RANGE: RangeInclusive<u64> = 0..=3_600_000;

/// Larger files are rejected whole, unread.
pub const INBOX_FILE_BYTES_MAX_DEFAULT: u64 = 256 * 1024 * 1024;
pub const INBOX_FILE_BYTES_MAX_RANGE: RangeInclusive<u64> = 1..=64 * 1024 * 1024 * 1024;

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

const fn in_range_u64(value: u64, range: &RangeInclusive<u64>) -> bool {
    value >= *range.start() && value <= *range.end()
}
const fn in_range_usize(value: usize, range: &RangeInclusive<usize>) -> bool {
    value >= *range.start() && value <= *range.end()
}

// Defaults must be valid on their own: an empty file is a valid config.
const _: () = assert!(in_range_u64(
    DEFAULT_TTL_SECONDS_DEFAULT,
    &DEFAULT_TTL_SECONDS_RANGE
));
const _: () = assert!(in_range_usize(
    MAX_BODY_BYTES_DEFAULT,
    &MAX_BODY_BYTES_RANGE
));
const _: () = assert!(PARTITIONS_DEFAULT >= *PARTITIONS_RANGE.start());
const _: () = assert!(PARTITIONS_DEFAULT <= *PARTITIONS_RANGE.end());
const _: () = assert!(in_range_u64(
    SNAPSHOT_INTERVAL_SECONDS_DEFAULT,
    &SNAPSHOT_INTERVAL_SECONDS_RANGE
));
const _: () = assert!(in_range_u64(
    PASSIVATE_AFTER_SECONDS_DEFAULT,
    &PASSIVATE_AFTER_SECONDS_RANGE
));
const _: () = assert!(in_range_u64(
    IDEMPOTENCY_RETENTION_HOURS_DEFAULT,
    &IDEMPOTENCY_RETENTION_HOURS_RANGE
));
const _: () = assert!(*IDEMPOTENCY_RETENTION_HOURS_RANGE.start() >= 24);
const _: () = assert!(in_range_u64(
    RESERVATION_RETENTION_HOURS_DEFAULT,
    &RESERVATION_RETENTION_HOURS_RANGE
));
const _: () = assert!(in_range_usize(
    JOURNAL_QUEUE_MAX_DEFAULT,
    &JOURNAL_QUEUE_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    JOURNAL_BATCH_MAX_DEFAULT,
    &JOURNAL_BATCH_MAX_RANGE
));
const _: () = assert!(JOURNAL_BATCH_MAX_DEFAULT <= JOURNAL_QUEUE_MAX_DEFAULT);
// A group commit never needs more than the whole queue.
const _: () = assert!(*JOURNAL_BATCH_MAX_RANGE.end() <= *JOURNAL_QUEUE_MAX_RANGE.end());
const _: () = assert!(in_range_usize(
    BATCH_EVENTS_MAX_DEFAULT,
    &BATCH_EVENTS_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    QUERY_SKUS_MAX_DEFAULT,
    &QUERY_SKUS_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    RESERVATION_LINES_MAX_DEFAULT,
    &RESERVATION_LINES_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    EVENTS_PAGE_MAX_DEFAULT,
    &EVENTS_PAGE_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    SSE_CONNECTIONS_MAX_DEFAULT,
    &SSE_CONNECTIONS_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    SSE_CONNECTIONS_PER_KEY_MAX_DEFAULT,
    &SSE_CONNECTIONS_PER_KEY_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    MAX_HEADER_BYTES_DEFAULT,
    &MAX_HEADER_BYTES_RANGE
));
const _: () = assert!(in_range_usize(
    RECONCILIATION_MAX_BYTES_DEFAULT,
    &RECONCILIATION_MAX_BYTES_RANGE
));
const _: () = assert!(in_range_u64(
    RECONCILIATION_ROWS_MAX_DEFAULT,
    &RECONCILIATION_ROWS_MAX_RANGE
));
const _: () = assert!(in_range_usize(
    CONNECTIONS_MAX_DEFAULT,
    &CONNECTIONS_MAX_RANGE
));
const _: () = assert!(MAX_SHARE_PCT_DEFAULT <= MAX_SHARE_PCT_MAX);
const _: () = assert!(COALESCE_MS_DEFAULT <= COALESCE_MS_MAX);
const _: () = assert!(in_range_u64(
    WEBHOOK_TIMEOUT_MS_DEFAULT,
    &WEBHOOK_TIMEOUT_MS_RANGE
));
const _: () = assert!(WEBHOOK_MAX_ATTEMPTS_DEFAULT >= *WEBHOOK_MAX_ATTEMPTS_RANGE.start());
const _: () = assert!(WEBHOOK_MAX_ATTEMPTS_DEFAULT <= *WEBHOOK_MAX_ATTEMPTS_RANGE.end());
const _: () = assert!(in_range_usize(
    WEBHOOK_BATCH_MAX_DEFAULT,
    &WEBHOOK_BATCH_MAX_RANGE
));
const _: () = assert!(in_range_u64(
    INBOX_POLL_INTERVAL_MS_DEFAULT,
    &INBOX_POLL_INTERVAL_MS_RANGE
));
const _: () = assert!(in_range_u64(
    INBOX_STABLE_MS_DEFAULT,
    &INBOX_STABLE_MS_RANGE
));
const _: () = assert!(in_range_u64(
    INBOX_FILE_BYTES_MAX_DEFAULT,
    &INBOX_FILE_BYTES_MAX_RANGE
));

/// The whole config file (SPEC §7). Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address, `host:port`.
    pub listen: String,
    /// RocksDB journal, snapshots and cursors live here.
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// TTL of a held reservation when the request has no `ttl_seconds`.
    pub default_ttl_seconds: u64,
    /// Request body cap; above it: 413.
    pub max_body_bytes: usize,
    /// Fixed partition count for SKU-locations.
    pub partitions: u32,
    /// Worker shards; 0 means one per CPU (see [`Config::shard_count`]).
    pub shards: u32,
    pub snapshot_interval_seconds: u64,
    /// Idle position actors are stopped after this.
    pub passivate_after_seconds: u64,
    /// How long `Idempotency-Key`s are remembered (SPEC: at least 24 h).
    pub idempotency_retention_hours: u64,
    /// How long terminal reservations stay readable.
    pub reservation_retention_hours: u64,
    /// A shipped transfer not received within this many seconds raises one
    /// `transfer_overdue` exception.
    pub transfer_overdue_seconds: u64,
    /// How long received and cancelled transfers stay readable.
    pub transfer_retention_hours: u64,
    /// Capacity of the bounded queue to the journal writer: a full queue is back-pressure
    /// (503), never unbounded memory.
    pub journal_queue_max: usize,
    /// Group commit batch size.
    pub journal_batch_max: usize,
    /// Most events per `POST /v1/events`.
    pub batch_events_max: usize,
    /// Most SKUs per `POST /v1/availability/query`.
    pub query_skus_max: usize,
    /// Most lines per reservation.
    pub reservation_lines_max: usize,
    /// Cap on `GET /v1/events?limit=`.
    pub events_page_max: usize,
    /// Concurrent SSE streams; one more gets 503.
    pub sse_connections_max: usize,
    /// Concurrent SSE streams of one key; one more gets 429.
    pub sse_connections_per_key_max: usize,
    /// Open HTTP connections, over all workers.
    pub connections_max: usize,
    /// Request line plus headers; above it: 431.
    pub max_header_bytes: usize,
    /// Most bytes of one CSV reconciliation upload (413 beyond).
    pub reconciliation_max_bytes: usize,
    /// Most rows of one reconciliation (413 beyond).
    pub reconciliation_rows_max: u64,
    /// `/metrics` needs an `admin` or `observer` key (default: open, SPEC §3).
    pub protect_metrics: bool,
    /// Rate limit of every key without its own `rate_limit`.
    pub default_rate_limit: RateLimit,
    /// SKUs each channel publisher holds pending before it falls behind (bounded memory).
    pub publish_pending_max: usize,
    /// Seconds between drift checks of the publication ledger.
    pub drift_check_seconds: u64,
    pub log_format: LogFormat,
    /// Log filter, tracing's `EnvFilter` syntax (`info`, `warn,stockwire=debug`).
    /// `STOCKWIRE_LOG` (or `STOCKWIRE_LOG_LEVEL`) overrides it.
    pub log_level: String,
    pub locations: Vec<LocationConfig>,
    pub keys: Vec<KeyConfig>,
    pub channels: Vec<ChannelConfig>,
    pub inbox: Vec<InboxConfig>,
    pub source_authority: Vec<SourceAuthorityConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: LISTEN_DEFAULT.to_owned(),
            data_dir: PathBuf::from(DATA_DIR_DEFAULT),
            durability: Durability::Wal,
            default_ttl_seconds: DEFAULT_TTL_SECONDS_DEFAULT,
            max_body_bytes: MAX_BODY_BYTES_DEFAULT,
            partitions: PARTITIONS_DEFAULT,
            shards: SHARDS_DEFAULT,
            snapshot_interval_seconds: SNAPSHOT_INTERVAL_SECONDS_DEFAULT,
            passivate_after_seconds: PASSIVATE_AFTER_SECONDS_DEFAULT,
            idempotency_retention_hours: IDEMPOTENCY_RETENTION_HOURS_DEFAULT,
            reservation_retention_hours: RESERVATION_RETENTION_HOURS_DEFAULT,
            transfer_overdue_seconds: TRANSFER_OVERDUE_SECONDS_DEFAULT,
            transfer_retention_hours: TRANSFER_RETENTION_HOURS_DEFAULT,
            journal_queue_max: JOURNAL_QUEUE_MAX_DEFAULT,
            journal_batch_max: JOURNAL_BATCH_MAX_DEFAULT,
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            query_skus_max: QUERY_SKUS_MAX_DEFAULT,
            reservation_lines_max: RESERVATION_LINES_MAX_DEFAULT,
            events_page_max: EVENTS_PAGE_MAX_DEFAULT,
            sse_connections_max: SSE_CONNECTIONS_MAX_DEFAULT,
            sse_connections_per_key_max: SSE_CONNECTIONS_PER_KEY_MAX_DEFAULT,
            connections_max: CONNECTIONS_MAX_DEFAULT,
            max_header_bytes: MAX_HEADER_BYTES_DEFAULT,
            reconciliation_max_bytes: RECONCILIATION_MAX_BYTES_DEFAULT,
            reconciliation_rows_max: RECONCILIATION_ROWS_MAX_DEFAULT,
            protect_metrics: false,
            default_rate_limit: DEFAULT_RATE_LIMIT,
            publish_pending_max: PUBLISH_PENDING_MAX_DEFAULT,
            drift_check_seconds: DRIFT_CHECK_SECONDS_DEFAULT,
            log_format: LogFormat::Text,
            log_level: LOG_LEVEL_DEFAULT.to_owned(),
            locations: Vec::new(),
            keys: Vec::new(),
            channels: Vec::new(),
            inbox: Vec::new(),
            source_authority: Vec::new(),
        }
    }
}
