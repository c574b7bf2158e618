//! Configuration: loading and validating the TOML config file of SPEC §7 (with the
//! channel keys of §4, the inbox keys of §5 and the source-authority rules of §3), and
//! applying `STOCKWIRE_*` environment overrides on top of it.
//!
//! What it owns:
//! - the config schema ([`Config`] and its parts), strict: unknown keys are an error that
//!   names the file and the key path (`config/stockwire.toml: channels[0].bufer: ...`);
//! - every tunable limit of the engine (queues, batches, bodies, pages, connections) as a
//!   config key with a default, and the hard range each one is checked against at
//!   start-up, as named constants below (`*_DEFAULT`, `*_RANGE`, `*_MAX`);
//! - precedence: defaults < file < environment (`STOCKWIRE_DATA_DIR=...` overrides the
//!   top-level key `data_dir`). The CLI `--config` only picks the file.
//!
//! What it must not do: open sockets, create directories or read anything but the config
//! file. A validated [`Config`] is plain data; the modules that use a limit read it from
//! here and never re-check it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Names, defaults and limits
// ---------------------------------------------------------------------------------------

/// Where `serve` looks for the config file when `--config` is not given (SPEC §8).
pub const DEFAULT_CONFIG_PATH: &str = "config/stockwire.toml";

/// Prefix of the environment variables that override top-level config keys.
pub const ENV_PREFIX: &str = "STOCKWIRE_";

/// `STOCKWIRE_*` variables that are not config keys (read elsewhere) and are skipped here:
/// the config file path and the log filter.
pub const ENV_RESERVED: &[&str] = &[
    "STOCKWIRE_CONFIG",
    "STOCKWIRE_LOG",
    "STOCKWIRE_API_KEY",
    "STOCKWIRE_URL",
];

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

/// True when `s` is a valid id (SPEC §1): 1..=64 characters from `[A-Za-z0-9._:-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Lowercase hex SHA-256 of a secret, the form `key_sha256` is written in.
pub fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// Schema
// ---------------------------------------------------------------------------------------

/// `durability` (SPEC §8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Acknowledged once the change is in the write-ahead log (survives a process crash).
    Wal,
    /// Group-committed fsync before the acknowledgement (survives power loss).
    Fsync,
}

/// `log_format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `locations[].kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LocationKind {
    Warehouse,
    #[serde(rename = "3pl")]
    ThirdParty,
    Store,
}

impl LocationKind {
    /// The name used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            LocationKind::Warehouse => "warehouse",
            LocationKind::ThirdParty => "3pl",
            LocationKind::Store => "store",
        }
    }
}

/// `keys[].role` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Channel,
    System,
    Observer,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Channel, Role::System, Role::Observer];

    /// The role named `name` (as in config).
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    /// The name used in config and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Channel => "channel",
            Role::System => "system",
            Role::Observer => "observer",
        }
    }
}

/// `file` sink feed format (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Csv,
    Edi846,
}

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

/// `[[locations]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocationConfig {
    pub id: String,
    pub kind: LocationKind,
    /// Display name; optional (empty when absent).
    #[serde(default)]
    pub name: String,
}

/// `[[keys]]`: one API key (SPEC §3). Exactly one of `key` / `key_sha256` is set.
/// `Debug` redacts the plain secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Key id used in logs and metrics.
    pub name: String,
    /// Plain secret (development).
    #[serde(default)]
    pub key: Option<String>,
    /// Hex SHA-256 of the secret (64 hex digits, either case).
    #[serde(default)]
    pub key_sha256: Option<String>,
    pub role: Role,
    /// Channel role only: the channel this key acts for.
    #[serde(default)]
    pub channel: Option<String>,
    /// System role only: the locations this key may touch.
    #[serde(default)]
    pub locations: Vec<String>,
    /// System role only: the `source` values this key may post as (events,
    /// reconciliations). Empty: any source (then source authority trusts the
    /// caller's word for its source).
    #[serde(default)]
    pub sources: Vec<String>,
    /// `None`: the config's `default_rate_limit`.
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
}

impl KeyConfig {
    /// SHA-256 of the key's secret, from `key` or decoded from `key_sha256`. Always `Some`
    /// on a validated config. Compare a bearer token by hashing it the same way.
    pub fn secret_sha256(&self) -> Option<[u8; 32]> {
        match (&self.key, &self.key_sha256) {
            (Some(plain), None) => Some(Sha256::digest(plain.as_bytes()).into()),
            (None, Some(hashed)) => {
                let mut digest = [0u8; 32];
                hex::decode_to_slice(hashed, &mut digest).ok()?;
                Some(digest)
            }
            _ => None,
        }
    }
}

impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("name", &self.name)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("key_sha256", &self.key_sha256)
            .field("role", &self.role)
            .field("channel", &self.channel)
            .field("locations", &self.locations)
            .field("sources", &self.sources)
            .field("rate_limit", &self.rate_limit)
            .finish()
    }
}

/// `keys[].rate_limit`: token bucket, `per_second` refill, `burst` capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

/// `[[channels]]` (SPEC §4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelConfig {
    pub id: String,
    /// Locations this channel sells from, in sourcing order.
    pub locations: Vec<String>,
    /// Publish `view - buffer`.
    #[serde(default)]
    pub buffer: u64,
    /// Publish at most this share of the view.
    #[serde(default = "default_max_share_pct")]
    pub max_share_pct: u8,
    /// Never publish more than this.
    #[serde(default)]
    pub cap: Option<u64>,
    /// Below this, publish 0.
    #[serde(default)]
    pub min_publish: u64,
    /// Latest value per SKU wins within this window.
    #[serde(default = "default_coalesce_ms")]
    pub coalesce_ms: u64,
    /// Where publications go; `None`: the channel only serves reads.
    #[serde(default)]
    pub sink: Option<SinkConfig>,
    /// When the channel is healthy again after an outage, replay its dead letters
    /// (their SKUs at current values) so it converges without an operator.
    #[serde(default = "default_true")]
    pub replay_dead_letters_on_recovery: bool,
}

fn default_true() -> bool {
    true
}

/// `channels[].sink`, tagged by `kind`. `Debug` redacts the webhook secret.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum SinkConfig {
    Webhook {
        url: String,
        /// HMAC key for `X-Stockwire-Signature`; unsigned when absent.
        #[serde(default)]
        secret: Option<String>,
        #[serde(default = "default_webhook_timeout_ms")]
        timeout_ms: u64,
        /// After this many failed attempts the update is parked in the DLQ.
        #[serde(default = "default_webhook_max_attempts")]
        max_attempts: u32,
        /// Most updates per POST.
        #[serde(default = "default_webhook_batch_max")]
        batch_max: usize,
        #[serde(default = "default_sink_backoff_ms")]
        backoff_ms: u64,
        #[serde(default = "default_sink_backoff_max_ms")]
        backoff_max_ms: u64,
    },
    File {
        dir: PathBuf,
        format: FileFormat,
        /// Most updates per file.
        #[serde(default = "default_webhook_batch_max")]
        batch_max: usize,
        #[serde(default = "default_webhook_max_attempts")]
        max_attempts: u32,
        #[serde(default = "default_sink_backoff_ms")]
        backoff_ms: u64,
        #[serde(default = "default_sink_backoff_max_ms")]
        backoff_max_ms: u64,
        /// `edi846` only: interchange sender and receiver ids (ISA06/ISA08, GS02/GS03).
        #[serde(default = "default_edi_sender")]
        sender_id: String,
        #[serde(default = "default_edi_receiver")]
        receiver_id: String,
    },
    Nats {
        url: String,
        subject: String,
    },
}

impl SinkConfig {
    /// The `kind` name used in config.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkConfig::Webhook { .. } => "webhook",
            SinkConfig::File { .. } => "file",
            SinkConfig::Nats { .. } => "nats",
        }
    }
}

impl fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkConfig::Webhook {
                url,
                secret,
                timeout_ms,
                max_attempts,
                batch_max,
                backoff_ms,
                backoff_max_ms,
            } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", &secret.as_ref().map(|_| "<redacted>"))
                .field("timeout_ms", timeout_ms)
                .field("max_attempts", max_attempts)
                .field("batch_max", batch_max)
                .field("backoff_ms", backoff_ms)
                .field("backoff_max_ms", backoff_max_ms)
                .finish(),
            SinkConfig::File {
                dir,
                format,
                batch_max,
                max_attempts,
                backoff_ms,
                backoff_max_ms,
                sender_id,
                receiver_id,
            } => f
                .debug_struct("File")
                .field("dir", dir)
                .field("format", format)
                .field("batch_max", batch_max)
                .field("max_attempts", max_attempts)
                .field("backoff_ms", backoff_ms)
                .field("backoff_max_ms", backoff_max_ms)
                .field("sender_id", sender_id)
                .field("receiver_id", receiver_id)
                .finish(),
            SinkConfig::Nats { url, subject } => f
                .debug_struct("Nats")
                .field("url", url)
                .field("subject", subject)
                .finish(),
        }
    }
}

/// `[[inbox]]` (SPEC §5): a directory of partner CSV files and the partner's layout.
/// `docs/INBOX.md` describes the layout keys and what happens to a file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboxConfig {
    pub dir: PathBuf,
    /// `source` stamped on the events made from these files.
    pub source: String,
    /// Only `"csv"` (the default).
    #[serde(default = "default_inbox_format")]
    pub format: String,
    #[serde(default)]
    pub mapping: InboxMapping,
    /// Field separator: one ASCII character (`","`, `";"`, `"|"`, `"\t"`).
    #[serde(default = "default_inbox_delimiter")]
    pub delimiter: String,
    /// The first record names the columns. Without a header, columns are found by
    /// position (default `sku,location,type,qty,reason` = 1..=5).
    #[serde(default = "default_true")]
    pub has_header: bool,
    /// Where each field is: a header name (`sku = "Item"`) or a 1-based column
    /// position (`sku = 2`). Unnamed fields use the default layout.
    #[serde(default)]
    pub columns: InboxColumns,
    /// chrono `strftime` format of the `occurred_at` column (`"%d/%m/%Y %H:%M"`);
    /// RFC 3339 when absent. A time without an offset is UTC; a date alone is midnight UTC.
    #[serde(default)]
    pub date_format: Option<String>,
    /// The type of rows whose type cell is empty, or of every row when the file has no
    /// type column (e.g. `"count"` for a stock snapshot of `sku,location,qty`).
    #[serde(default)]
    pub default_type: Option<String>,
    /// Scan interval, the fallback for the directory watcher.
    #[serde(default = "default_inbox_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Size and mtime must be unchanged across two looks this far apart before a file
    /// is read.
    #[serde(default = "default_inbox_stable_ms")]
    pub stable_ms: u64,
    /// Larger files are rejected whole.
    #[serde(default = "default_inbox_file_bytes_max")]
    pub file_bytes_max: u64,
}

/// `inbox[].mapping`: partner codes to our ids. Codes without an entry are used as is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxMapping {
    /// Partner location code -> declared location id.
    pub locations: BTreeMap<String, String>,
    /// Partner SKU code -> our SKU id.
    pub skus: BTreeMap<String, String>,
    /// Partner transaction code -> one of [`INBOX_EVENT_TYPES`] (`"RCV" = "receipt"`).
    pub types: BTreeMap<String, String>,
}

/// One entry of `inbox[].columns`: a 1-based position or a header name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InboxColumn {
    Position(u32),
    Name(String),
}

/// `inbox[].columns`: where each field of a row is. `None`: the default layout's
/// column (header `sku`, `location`, `type`, `qty`, `reason`, `restockable`, `action`,
/// `occurred_at`, `expected_version`; without a header, positions 1..=5 for the first
/// five and absent for the rest).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InboxColumns {
    pub sku: Option<InboxColumn>,
    pub location: Option<InboxColumn>,
    #[serde(rename = "type")]
    pub kind: Option<InboxColumn>,
    /// The quantity; signed for `adjustment` and `in_transit`, the counted quantity for
    /// `count`.
    pub qty: Option<InboxColumn>,
    /// The type's qualifier: adjustment reason, quarantine action, or for returns
    /// `restockable` / `not_restockable`.
    pub reason: Option<InboxColumn>,
    pub restockable: Option<InboxColumn>,
    pub action: Option<InboxColumn>,
    pub occurred_at: Option<InboxColumn>,
    pub expected_version: Option<InboxColumn>,
}

impl InboxColumns {
    /// Every field with its name in config, in a fixed order.
    pub fn fields(&self) -> [(&'static str, Option<&InboxColumn>); 9] {
        [
            ("sku", self.sku.as_ref()),
            ("location", self.location.as_ref()),
            ("type", self.kind.as_ref()),
            ("qty", self.qty.as_ref()),
            ("reason", self.reason.as_ref()),
            ("restockable", self.restockable.as_ref()),
            ("action", self.action.as_ref()),
            ("occurred_at", self.occurred_at.as_ref()),
            ("expected_version", self.expected_version.as_ref()),
        ]
    }
}

impl InboxConfig {
    /// The delimiter byte (validated: one ASCII character).
    pub fn delimiter_byte(&self) -> u8 {
        self.delimiter.as_bytes().first().copied().unwrap_or(b',')
    }
}

/// `[[source_authority]]` (SPEC §3): `source` may post `types` at `locations`.
/// An empty list means "any". See [`Config::source_may_post`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAuthorityConfig {
    pub source: String,
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub types: Vec<String>,
}

fn default_max_share_pct() -> u8 {
    MAX_SHARE_PCT_DEFAULT
}
fn default_coalesce_ms() -> u64 {
    COALESCE_MS_DEFAULT
}
fn default_webhook_timeout_ms() -> u64 {
    WEBHOOK_TIMEOUT_MS_DEFAULT
}
fn default_webhook_max_attempts() -> u32 {
    WEBHOOK_MAX_ATTEMPTS_DEFAULT
}
fn default_webhook_batch_max() -> usize {
    WEBHOOK_BATCH_MAX_DEFAULT
}
fn default_sink_backoff_ms() -> u64 {
    SINK_BACKOFF_MS_DEFAULT
}
fn default_sink_backoff_max_ms() -> u64 {
    SINK_BACKOFF_MAX_MS_DEFAULT
}
fn default_edi_sender() -> String {
    "STOCKWIRE".to_owned()
}
fn default_edi_receiver() -> String {
    "PARTNER".to_owned()
}
fn default_inbox_format() -> String {
    "csv".to_owned()
}
fn default_inbox_delimiter() -> String {
    ",".to_owned()
}
fn default_inbox_poll_interval_ms() -> u64 {
    INBOX_POLL_INTERVAL_MS_DEFAULT
}
fn default_inbox_stable_ms() -> u64 {
    INBOX_STABLE_MS_DEFAULT
}
fn default_inbox_file_bytes_max() -> u64 {
    INBOX_FILE_BYTES_MAX_DEFAULT
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// A config that cannot be used. `Display` names the file (or the environment variable)
/// and the key path, e.g. `config/stockwire.toml: channels[1].max_share_pct: must be at
/// most 100`.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{origin}: cannot read config file: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{origin}: {message}")]
    Syntax { origin: String, message: String },
    /// A key has the wrong type, is unknown, or fails validation. `path` is `.` for the
    /// top-level table.
    #[error("{origin}: {path}: {message}")]
    Invalid {
        origin: String,
        path: String,
        message: String,
    },
    /// A `STOCKWIRE_*` variable is not a config key or its value is invalid.
    #[error("{var}: {message}")]
    Env { var: String, message: String },
}

fn invalid(origin: &str, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        path: path.into(),
        message: message.into(),
    }
}

// ---------------------------------------------------------------------------------------
// Environment overrides
// ---------------------------------------------------------------------------------------

/// Top-level scalar keys that `STOCKWIRE_<KEY>` may override, and whether the value is
/// always text (so `STOCKWIRE_LISTEN=8080` stays a string).
const ENV_KEYS: &[(&str, EnvValueKind)] = &[
    ("listen", EnvValueKind::Text),
    ("data_dir", EnvValueKind::Text),
    ("durability", EnvValueKind::Text),
    ("default_ttl_seconds", EnvValueKind::Scalar),
    ("max_body_bytes", EnvValueKind::Scalar),
    ("partitions", EnvValueKind::Scalar),
    ("shards", EnvValueKind::Scalar),
    ("snapshot_interval_seconds", EnvValueKind::Scalar),
    ("passivate_after_seconds", EnvValueKind::Scalar),
    ("idempotency_retention_hours", EnvValueKind::Scalar),
    ("reservation_retention_hours", EnvValueKind::Scalar),
    ("transfer_overdue_seconds", EnvValueKind::Scalar),
    ("transfer_retention_hours", EnvValueKind::Scalar),
    ("journal_queue_max", EnvValueKind::Scalar),
    ("journal_batch_max", EnvValueKind::Scalar),
    ("batch_events_max", EnvValueKind::Scalar),
    ("query_skus_max", EnvValueKind::Scalar),
    ("reservation_lines_max", EnvValueKind::Scalar),
    ("events_page_max", EnvValueKind::Scalar),
    ("sse_connections_max", EnvValueKind::Scalar),
    ("sse_connections_per_key_max", EnvValueKind::Scalar),
    ("connections_max", EnvValueKind::Scalar),
    ("max_header_bytes", EnvValueKind::Scalar),
    ("reconciliation_max_bytes", EnvValueKind::Scalar),
    ("reconciliation_rows_max", EnvValueKind::Scalar),
    ("protect_metrics", EnvValueKind::Scalar),
    ("publish_pending_max", EnvValueKind::Scalar),
    ("drift_check_seconds", EnvValueKind::Scalar),
    ("log_format", EnvValueKind::Text),
    ("log_level", EnvValueKind::Text),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnvValueKind {
    /// Kept as a TOML string.
    Text,
    /// A TOML integer or boolean when it parses as one, else a string.
    Scalar,
}

/// One `STOCKWIRE_*` variable resolved to a top-level key.
#[derive(Debug, Clone)]
struct EnvOverride {
    var: String,
    key: &'static str,
    raw: String,
    value: toml::Value,
}

/// The `STOCKWIRE_*` variables of `env` that override config keys, sorted by variable
/// name so the first error is deterministic.
fn env_overrides(env: &[(String, String)]) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut by_var: BTreeMap<&str, &str> = BTreeMap::new();
    for (var, raw) in env {
        if var.starts_with(ENV_PREFIX) && !ENV_RESERVED.contains(&var.as_str()) {
            by_var.insert(var, raw);
        }
    }
    let mut overrides = Vec::with_capacity(by_var.len());
    for (var, raw) in by_var {
        let wanted = var[ENV_PREFIX.len()..].to_ascii_lowercase();
        let Some(&(key, kind)) = ENV_KEYS.iter().find(|(key, _)| *key == wanted) else {
            let known: Vec<String> = ENV_KEYS
                .iter()
                .map(|(key, _)| format!("{ENV_PREFIX}{}", key.to_ascii_uppercase()))
                .collect();
            return Err(ConfigError::Env {
                var: var.to_owned(),
                message: format!(
                    "unknown variable: not a top-level config key; expected one of {}",
                    known.join(", ")
                ),
            });
        };
        let value = match kind {
            EnvValueKind::Text => toml::Value::String(raw.to_owned()),
            EnvValueKind::Scalar => parse_env_scalar(raw),
        };
        overrides.push(EnvOverride {
            var: var.to_owned(),
            key,
            raw: raw.to_owned(),
            value,
        });
    }
    Ok(overrides)
}

/// `raw` as a TOML integer or boolean (`900`, `1_048_576`, `0x40`, `true`), else a string.
fn parse_env_scalar(raw: &str) -> toml::Value {
    if let Ok(table) = format!("v = {raw}").parse::<toml::Table>() {
        if table.len() == 1 {
            if let Some(value @ (toml::Value::Integer(_) | toml::Value::Boolean(_))) =
                table.get("v")
            {
                return value.clone();
            }
        }
    }
    toml::Value::String(raw.to_owned())
}

/// The top-level key of a key path: `channels[1].buffer` -> `channels`.
fn top_level_key(path: &str) -> &str {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    &path[..end]
}

/// Re-labels an error on a key that came from the environment so it names the variable.
fn attribute_to_env(error: ConfigError, overrides: &[EnvOverride]) -> ConfigError {
    match error {
        ConfigError::Invalid {
            origin,
            path,
            message,
        } => match overrides.iter().find(|o| o.key == top_level_key(&path)) {
            Some(o) => ConfigError::Env {
                var: o.var.clone(),
                message: format!("invalid value `{}`: {message}", o.raw),
            },
            None => ConfigError::Invalid {
                origin,
                path,
                message,
            },
        },
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

impl Config {
    /// Reads the file at `path`, applies the `STOCKWIRE_*` overrides in `env` and validates.
    /// A missing file is an error unless `path_is_default` (no `--config` given): then the
    /// defaults are used (still with the env overrides).
    pub fn load(
        path: &Path,
        path_is_default: bool,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let origin = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if path_is_default && error.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %origin, "config file not found, using defaults");
                String::new()
            }
            Err(source) => return Err(ConfigError::Read { origin, source }),
        };
        Config::from_toml_str(&text, &origin, env)
    }

    /// Parses `text` (named `origin` in errors), applies the `STOCKWIRE_*` overrides in
    /// `env` on top of the file's top-level keys, deserializes strictly and validates.
    pub fn from_toml_str(
        text: &str,
        origin: &str,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table =
            text.parse()
                .map_err(|error: toml::de::Error| ConfigError::Syntax {
                    origin: origin.to_owned(),
                    message: error.to_string().trim_end().to_owned(),
                })?;
        let overrides = env_overrides(env)?;
        for o in &overrides {
            table.insert(o.key.to_owned(), o.value.clone());
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|error| {
                let path = error.path().to_string();
                let message = error.inner().message().trim_end().to_owned();
                let path = with_unknown_field(path, &message);
                attribute_to_env(invalid(origin, path, message), &overrides)
            })?;
        config
            .validate(origin)
            .map_err(|error| attribute_to_env(error, &overrides))?;
        Ok(config)
    }

    /// Checks every rule the types cannot express; returns the first violation, named by
    /// `origin` and key path.
    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        Validator { origin }.config(self)
    }

    /// The declared location `id`.
    pub fn location(&self, id: &str) -> Option<&LocationConfig> {
        self.locations.iter().find(|location| location.id == id)
    }

    /// The configured channel `id`.
    pub fn channel(&self, id: &str) -> Option<&ChannelConfig> {
        self.channels.iter().find(|channel| channel.id == id)
    }

    /// The configured key named `name`.
    pub fn key(&self, name: &str) -> Option<&KeyConfig> {
        self.keys.iter().find(|key| key.name == name)
    }

    /// Number of worker shards: `shards`, or the CPU count when 0; clamped to
    /// `1..=SHARDS_MAX` and never more than `partitions`.
    pub fn shard_count(&self) -> usize {
        let wanted = if self.shards == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            self.shards as usize
        };
        wanted
            .clamp(1, SHARDS_MAX as usize)
            .min(self.partitions.max(1) as usize)
    }

    /// Whether `source` is authoritative for on-hand at `location`, so its
    /// reconciliation may correct the engine: only by an explicit rule for it that
    /// covers the location and allows `count` or `adjustment` (or every type).
    pub fn source_authoritative_for_on_hand(&self, source: &str, location: &str) -> bool {
        self.source_authority
            .iter()
            .any(|rule| rule.allows(source, location, &["count", "adjustment"]))
    }

    /// Source-authority check (SPEC §3): without rules every source may post every event
    /// type (at the locations its key allows). With rules, a post is allowed only when a
    /// rule for `source` lists `location` (or no locations) and `event_type` (or no types).
    pub fn source_may_post(&self, source: &str, location: &str, event_type: &str) -> bool {
        self.source_authority.is_empty()
            || self
                .source_authority
                .iter()
                .any(|rule| rule.allows(source, location, &[event_type]))
    }
}

impl SourceAuthorityConfig {
    /// The rule is `source`'s, covers `location`, and allows one of `types`.
    fn allows(&self, source: &str, location: &str, types: &[&str]) -> bool {
        self.source == source
            && (self.locations.is_empty() || self.locations.iter().any(|l| l == location))
            && (self.types.is_empty() || self.types.iter().any(|t| types.contains(&t.as_str())))
    }
}

/// serde reports an unknown field at the path of the table that holds it; append the
/// field so the path points at the offending key (`channels[0].bufer`).
fn with_unknown_field(path: String, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return path;
    };
    let Some((field, _)) = rest.split_once('`') else {
        return path;
    };
    if path.ends_with(&format!(".{field}")) || path == field {
        path
    } else if path == "." || path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

// ---------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------

struct Validator<'a> {
    origin: &'a str,
}

impl Validator<'_> {
    fn fail<T>(
        &self,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(invalid(self.origin, path, message))
    }

    fn range<T: PartialOrd + fmt::Display + Copy>(
        &self,
        path: &str,
        value: T,
        range: &RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        if value < *range.start() {
            return self.fail(path, format!("must be at least {}", range.start()));
        }
        if value > *range.end() {
            return self.fail(path, format!("must be at most {}", range.end()));
        }
        Ok(())
    }

    fn id(&self, path: &str, value: &str) -> Result<(), ConfigError> {
        if !is_valid_id(value) {
            return self.fail(
                path,
                format!("invalid id {value:?}: must be 1 to {MAX_ID_LEN} characters from [A-Za-z0-9._:-]"),
            );
        }
        Ok(())
    }

    fn count(&self, path: &str, len: usize, max: usize) -> Result<(), ConfigError> {
        if len > max {
            return self.fail(path, format!("at most {max} entries allowed, found {len}"));
        }
        Ok(())
    }

    /// `value` must be a declared location.
    fn declared(
        &self,
        path: &str,
        value: &str,
        locations: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        if !locations.contains(value) {
            return self.fail(
                path,
                format!("unknown location {value:?}: not declared in [[locations]]"),
            );
        }
        Ok(())
    }

    /// Each entry of `values` is declared and appears once.
    fn location_list(
        &self,
        path: &str,
        values: &[String],
        locations: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for (index, value) in values.iter().enumerate() {
            let item = format!("{path}[{index}]");
            self.declared(&item, value, locations)?;
            if !seen.insert(value.as_str()) {
                return self.fail(item, format!("location {value:?} is listed twice"));
            }
        }
        Ok(())
    }

    fn config(&self, config: &Config) -> Result<(), ConfigError> {
        self.scalars(config)?;

        self.count("locations", config.locations.len(), LOCATIONS_MAX)?;
        let mut locations = BTreeSet::new();
        for (index, location) in config.locations.iter().enumerate() {
            self.location(index, location)?;
            if !locations.insert(location.id.as_str()) {
                return self.fail(
                    format!("locations[{index}].id"),
                    format!("duplicate location id {:?}", location.id),
                );
            }
        }

        self.count("channels", config.channels.len(), CHANNELS_MAX)?;
        let mut channels = BTreeSet::new();
        for (index, channel) in config.channels.iter().enumerate() {
            self.channel(index, channel, &locations)?;
            if !channels.insert(channel.id.as_str()) {
                return self.fail(
                    format!("channels[{index}].id"),
                    format!("duplicate channel id {:?}", channel.id),
                );
            }
        }

        self.count("keys", config.keys.len(), KEYS_MAX)?;
        let mut names = BTreeSet::new();
        let mut secrets: BTreeMap<[u8; 32], usize> = BTreeMap::new();
        for (index, key) in config.keys.iter().enumerate() {
            self.key(index, key, &locations, &channels)?;
            if !names.insert(key.name.as_str()) {
                return self.fail(
                    format!("keys[{index}].name"),
                    format!("duplicate key name {:?}", key.name),
                );
            }
            if let Some(digest) = key.secret_sha256() {
                if let Some(first) = secrets.insert(digest, index) {
                    return self.fail(
                        format!("keys[{index}]"),
                        format!("same secret as keys[{first}]: every key needs its own secret"),
                    );
                }
            }
        }

        self.count("inbox", config.inbox.len(), INBOXES_MAX)?;
        let mut dirs = BTreeSet::new();
        for (index, inbox) in config.inbox.iter().enumerate() {
            self.inbox(index, inbox, &locations)?;
            if !dirs.insert(inbox.dir.as_path()) {
                return self.fail(
                    format!("inbox[{index}].dir"),
                    format!("directory {} is used by another inbox", inbox.dir.display()),
                );
            }
        }

        self.count(
            "source_authority",
            config.source_authority.len(),
            SOURCE_AUTHORITY_RULES_MAX,
        )?;
        for (index, rule) in config.source_authority.iter().enumerate() {
            self.source_authority(index, rule, &locations)?;
        }
        Ok(())
    }

    fn scalars(&self, c: &Config) -> Result<(), ConfigError> {
        if !is_valid_listen(&c.listen) {
            return self.fail(
                "listen",
                format!("invalid address {:?}: expected host:port", c.listen),
            );
        }
        if c.data_dir.as_os_str().is_empty() {
            return self.fail("data_dir", "must not be empty");
        }
        self.range(
            "default_ttl_seconds",
            c.default_ttl_seconds,
            &DEFAULT_TTL_SECONDS_RANGE,
        )?;
        self.range("max_body_bytes", c.max_body_bytes, &MAX_BODY_BYTES_RANGE)?;
        self.range("partitions", c.partitions, &PARTITIONS_RANGE)?;
        self.range("shards", c.shards, &(0..=SHARDS_MAX))?;
        self.range(
            "snapshot_interval_seconds",
            c.snapshot_interval_seconds,
            &SNAPSHOT_INTERVAL_SECONDS_RANGE,
        )?;
        self.range(
            "passivate_after_seconds",
            c.passivate_after_seconds,
            &PASSIVATE_AFTER_SECONDS_RANGE,
        )?;
        self.range(
            "idempotency_retention_hours",
            c.idempotency_retention_hours,
            &IDEMPOTENCY_RETENTION_HOURS_RANGE,
        )?;
        self.range(
            "reservation_retention_hours",
            c.reservation_retention_hours,
            &RESERVATION_RETENTION_HOURS_RANGE,
        )?;
        self.range(
            "transfer_overdue_seconds",
            c.transfer_overdue_seconds,
            &TRANSFER_OVERDUE_SECONDS_RANGE,
        )?;
        self.range(
            "transfer_retention_hours",
            c.transfer_retention_hours,
            &TRANSFER_RETENTION_HOURS_RANGE,
        )?;
        self.range(
            "journal_queue_max",
            c.journal_queue_max,
            &JOURNAL_QUEUE_MAX_RANGE,
        )?;
        self.range(
            "journal_batch_max",
            c.journal_batch_max,
            &JOURNAL_BATCH_MAX_RANGE,
        )?;
        if c.journal_batch_max > c.journal_queue_max {
            return self.fail(
                "journal_batch_max",
                format!(
                    "must be at most journal_queue_max ({})",
                    c.journal_queue_max
                ),
            );
        }
        self.range(
            "batch_events_max",
            c.batch_events_max,
            &BATCH_EVENTS_MAX_RANGE,
        )?;
        self.range("query_skus_max", c.query_skus_max, &QUERY_SKUS_MAX_RANGE)?;
        self.range(
            "reservation_lines_max",
            c.reservation_lines_max,
            &RESERVATION_LINES_MAX_RANGE,
        )?;
        self.range("events_page_max", c.events_page_max, &EVENTS_PAGE_MAX_RANGE)?;
        self.range(
            "sse_connections_max",
            c.sse_connections_max,
            &SSE_CONNECTIONS_MAX_RANGE,
        )?;
        self.range(
            "sse_connections_per_key_max",
            c.sse_connections_per_key_max,
            &SSE_CONNECTIONS_PER_KEY_MAX_RANGE,
        )?;
        self.range("connections_max", c.connections_max, &CONNECTIONS_MAX_RANGE)?;
        self.range(
            "max_header_bytes",
            c.max_header_bytes,
            &MAX_HEADER_BYTES_RANGE,
        )?;
        self.range(
            "reconciliation_max_bytes",
            c.reconciliation_max_bytes,
            &RECONCILIATION_MAX_BYTES_RANGE,
        )?;
        self.range(
            "reconciliation_rows_max",
            c.reconciliation_rows_max,
            &RECONCILIATION_ROWS_MAX_RANGE,
        )?;
        self.rate_limit("default_rate_limit", &c.default_rate_limit)?;
        self.range(
            "publish_pending_max",
            c.publish_pending_max,
            &PUBLISH_PENDING_MAX_RANGE,
        )?;
        self.range(
            "drift_check_seconds",
            c.drift_check_seconds,
            &DRIFT_CHECK_SECONDS_RANGE,
        )?;
        if let Err(error) = tracing_subscriber::EnvFilter::try_new(&c.log_level) {
            return self.fail("log_level", format!("not a log filter: {error}"));
        }
        Ok(())
    }

    fn location(&self, index: usize, location: &LocationConfig) -> Result<(), ConfigError> {
        self.id(&format!("locations[{index}].id"), &location.id)?;
        if location.name.len() > NAME_LEN_MAX {
            return self.fail(
                format!("locations[{index}].name"),
                format!("must be at most {NAME_LEN_MAX} bytes"),
            );
        }
        Ok(())
    }

    fn channel(
        &self,
        index: usize,
        channel: &ChannelConfig,
        locations: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let path = format!("channels[{index}]");
        self.id(&format!("{path}.id"), &channel.id)?;
        if channel.locations.is_empty() {
            return self.fail(
                format!("{path}.locations"),
                "must list at least one location",
            );
        }
        self.location_list(&format!("{path}.locations"), &channel.locations, locations)?;
        self.range(
            &format!("{path}.max_share_pct"),
            channel.max_share_pct,
            &(0..=MAX_SHARE_PCT_MAX),
        )?;
        self.range(
            &format!("{path}.coalesce_ms"),
            channel.coalesce_ms,
            &(0..=COALESCE_MS_MAX),
        )?;
        if let Some(sink) = &channel.sink {
            self.sink(&format!("{path}.sink"), sink)?;
        }
        Ok(())
    }

    fn sink(&self, path: &str, sink: &SinkConfig) -> Result<(), ConfigError> {
        match sink {
            SinkConfig::Webhook {
                url,
                secret,
                timeout_ms,
                max_attempts,
                batch_max,
                backoff_ms,
                backoff_max_ms,
            } => {
                if url.starts_with("https://") {
                    return self.fail(
                        format!("{path}.url"),
                        format!("{url:?}: this build speaks plain http; put a TLS-terminating proxy in front of https endpoints"),
                    );
                }
                let has_host = url
                    .strip_prefix("http://")
                    .is_some_and(|rest| !rest.is_empty());
                if !has_host {
                    return self.fail(
                        format!("{path}.url"),
                        format!("invalid url {url:?}: must start with http://"),
                    );
                }
                self.backoff(path, *backoff_ms, *backoff_max_ms)?;
                if secret.as_deref() == Some("") {
                    return self.fail(
                        format!("{path}.secret"),
                        "must not be empty (omit it for unsigned posts)",
                    );
                }
                self.range(
                    &format!("{path}.timeout_ms"),
                    *timeout_ms,
                    &WEBHOOK_TIMEOUT_MS_RANGE,
                )?;
                self.range(
                    &format!("{path}.max_attempts"),
                    *max_attempts,
                    &WEBHOOK_MAX_ATTEMPTS_RANGE,
                )?;
                self.range(
                    &format!("{path}.batch_max"),
                    *batch_max,
                    &WEBHOOK_BATCH_MAX_RANGE,
                )?;
            }
            SinkConfig::File {
                dir,
                batch_max,
                max_attempts,
                backoff_ms,
                backoff_max_ms,
                sender_id,
                receiver_id,
                ..
            } => {
                if dir.as_os_str().is_empty() {
                    return self.fail(format!("{path}.dir"), "must not be empty");
                }
                self.range(
                    &format!("{path}.batch_max"),
                    *batch_max,
                    &WEBHOOK_BATCH_MAX_RANGE,
                )?;
                self.range(
                    &format!("{path}.max_attempts"),
                    *max_attempts,
                    &WEBHOOK_MAX_ATTEMPTS_RANGE,
                )?;
                self.backoff(path, *backoff_ms, *backoff_max_ms)?;
                let parties = [
                    ("sender_id", "sender", sender_id),
                    ("receiver_id", "receiver", receiver_id),
                ];
                for (field, role, value) in parties {
                    // The renderer's own rule, so a config that starts can always render.
                    if let Err(error) = crate::channels::feed::check_party(role, value) {
                        return self.fail(
                            format!("{path}.{field}"),
                            format!("not an X12 interchange id: {error}"),
                        );
                    }
                }
            }
            SinkConfig::Nats { url, subject } => {
                if url.trim().is_empty() {
                    return self.fail(format!("{path}.url"), "must not be empty");
                }
                let valid_subject = !subject.is_empty()
                    && subject.split('.').all(|token| {
                        !token.is_empty()
                            && !token
                                .chars()
                                .any(|c| c.is_whitespace() || c == '*' || c == '>')
                    });
                if !valid_subject {
                    return self.fail(
                        format!("{path}.subject"),
                        format!("invalid subject {subject:?}: dot-separated tokens without spaces or wildcards"),
                    );
                }
                return self.fail(
                    format!("{path}.kind"),
                    "nats is not built into this version (the sink trait is ready for it); use webhook or file",
                );
            }
        }
        Ok(())
    }

    fn backoff(&self, path: &str, backoff_ms: u64, backoff_max_ms: u64) -> Result<(), ConfigError> {
        self.range(
            &format!("{path}.backoff_ms"),
            backoff_ms,
            &SINK_BACKOFF_MS_RANGE,
        )?;
        self.range(
            &format!("{path}.backoff_max_ms"),
            backoff_max_ms,
            &SINK_BACKOFF_MAX_MS_RANGE,
        )?;
        if backoff_max_ms < backoff_ms {
            return self.fail(
                format!("{path}.backoff_max_ms"),
                format!("must be at least backoff_ms ({backoff_ms})"),
            );
        }
        Ok(())
    }

    fn key(
        &self,
        index: usize,
        key: &KeyConfig,
        locations: &BTreeSet<&str>,
        channels: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let path = format!("keys[{index}]");
        self.id(&format!("{path}.name"), &key.name)?;
        match (&key.key, &key.key_sha256) {
            (Some(_), Some(_)) => {
                return self.fail(path, "set exactly one of `key` and `key_sha256`, not both");
            }
            (None, None) => {
                return self.fail(path, "missing secret: set `key` or `key_sha256`");
            }
            (Some(plain), None) => {
                if plain.is_empty() {
                    return self.fail(format!("{path}.key"), "must not be empty");
                }
                if plain.len() > KEY_SECRET_LEN_MAX {
                    return self.fail(
                        format!("{path}.key"),
                        format!("must be at most {KEY_SECRET_LEN_MAX} bytes"),
                    );
                }
            }
            (None, Some(hashed)) => {
                if hashed.len() != 64 || !hashed.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return self.fail(
                        format!("{path}.key_sha256"),
                        "must be 64 hex digits (the SHA-256 of the key)",
                    );
                }
            }
        }
        if key.role != Role::System && !key.sources.is_empty() {
            return self.fail(format!("{path}.sources"), "only a `system` key has sources");
        }
        match key.role {
            Role::Channel => {
                let Some(channel) = &key.channel else {
                    return self.fail(
                        path,
                        "a `channel` key must name its channel (`channel = \"...\"`)",
                    );
                };
                if !channels.contains(channel.as_str()) {
                    return self.fail(
                        format!("{path}.channel"),
                        format!("unknown channel {channel:?}: not configured in [[channels]]"),
                    );
                }
                if !key.locations.is_empty() {
                    return self.fail(
                        format!("{path}.locations"),
                        "only a `system` key has locations",
                    );
                }
            }
            Role::System => {
                if key.channel.is_some() {
                    return self.fail(
                        format!("{path}.channel"),
                        "only a `channel` key has a channel",
                    );
                }
                if key.locations.is_empty() {
                    return self.fail(
                        format!("{path}.locations"),
                        "a `system` key must list at least one location",
                    );
                }
                self.location_list(&format!("{path}.locations"), &key.locations, locations)?;
                for (i, source) in key.sources.iter().enumerate() {
                    self.id(&format!("{path}.sources[{i}]"), source)?;
                }
            }
            Role::Admin | Role::Observer => {
                if key.channel.is_some() {
                    return self.fail(
                        format!("{path}.channel"),
                        "only a `channel` key has a channel",
                    );
                }
                if !key.locations.is_empty() {
                    return self.fail(
                        format!("{path}.locations"),
                        "only a `system` key has locations",
                    );
                }
            }
        }
        if let Some(limit) = &key.rate_limit {
            self.rate_limit(&format!("{path}.rate_limit"), limit)?;
        }
        Ok(())
    }

    fn rate_limit(&self, path: &str, limit: &RateLimit) -> Result<(), ConfigError> {
        self.range(
            &format!("{path}.per_second"),
            limit.per_second,
            &RATE_LIMIT_PER_SECOND_RANGE,
        )?;
        self.range(
            &format!("{path}.burst"),
            limit.burst,
            &RATE_LIMIT_BURST_RANGE,
        )
    }

    fn inbox(
        &self,
        index: usize,
        inbox: &InboxConfig,
        locations: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let path = format!("inbox[{index}]");
        if inbox.dir.as_os_str().is_empty() {
            return self.fail(format!("{path}.dir"), "must not be empty");
        }
        self.id(&format!("{path}.source"), &inbox.source)?;
        if inbox.format != "csv" {
            return self.fail(
                format!("{path}.format"),
                format!("unsupported format {:?}: only \"csv\"", inbox.format),
            );
        }
        let mapping = &inbox.mapping;
        self.count(
            &format!("{path}.mapping.locations"),
            mapping.locations.len(),
            INBOX_MAPPING_ENTRIES_MAX,
        )?;
        for (code, location) in &mapping.locations {
            let item = format!("{path}.mapping.locations.{code}");
            if code.is_empty() {
                return self.fail(item, "partner code must not be empty");
            }
            self.declared(&item, location, locations)?;
        }
        self.count(
            &format!("{path}.mapping.skus"),
            mapping.skus.len(),
            INBOX_MAPPING_ENTRIES_MAX,
        )?;
        for (code, sku) in &mapping.skus {
            let item = format!("{path}.mapping.skus.{code}");
            if code.is_empty() {
                return self.fail(item, "partner code must not be empty");
            }
            self.id(&item, sku)?;
        }
        self.count(
            &format!("{path}.mapping.types"),
            mapping.types.len(),
            INBOX_MAPPING_ENTRIES_MAX,
        )?;
        for (code, kind) in &mapping.types {
            let item = format!("{path}.mapping.types.{code}");
            if code.is_empty() {
                return self.fail(item, "partner code must not be empty");
            }
            self.inbox_type(&item, kind)?;
        }
        if let Some(kind) = &inbox.default_type {
            self.inbox_type(&format!("{path}.default_type"), kind)?;
        }
        self.inbox_layout(&path, inbox)?;
        self.range(
            &format!("{path}.poll_interval_ms"),
            inbox.poll_interval_ms,
            &INBOX_POLL_INTERVAL_MS_RANGE,
        )?;
        self.range(
            &format!("{path}.stable_ms"),
            inbox.stable_ms,
            &INBOX_STABLE_MS_RANGE,
        )?;
        self.range(
            &format!("{path}.file_bytes_max"),
            inbox.file_bytes_max,
            &INBOX_FILE_BYTES_MAX_RANGE,
        )?;
        Ok(())
    }

    fn inbox_type(&self, path: &str, kind: &str) -> Result<(), ConfigError> {
        if !INBOX_EVENT_TYPES.contains(&kind) {
            return self.fail(
                path,
                format!(
                    "event type {kind:?} cannot come from an inbox, expected one of {}",
                    INBOX_EVENT_TYPES.join(", ")
                ),
            );
        }
        Ok(())
    }

    /// Delimiter, columns and date format of an inbox's files.
    fn inbox_layout(&self, path: &str, inbox: &InboxConfig) -> Result<(), ConfigError> {
        let delimiter = inbox.delimiter.as_bytes();
        let usable = delimiter.len() == 1
            && delimiter[0].is_ascii()
            && !matches!(delimiter[0], b'"' | b'\n' | b'\r');
        if !usable {
            return self.fail(
                format!("{path}.delimiter"),
                format!(
                    "invalid delimiter {:?}: one ASCII character other than a quote or a line break",
                    inbox.delimiter
                ),
            );
        }
        // Which field sits where, so two fields never read one column.
        let mut taken: BTreeMap<String, &str> = BTreeMap::new();
        for (field, column) in inbox.columns.fields() {
            let Some(column) = column else { continue };
            let item = format!("{path}.columns.{field}");
            let slot = match column {
                InboxColumn::Position(position) => {
                    if !(1..=INBOX_COLUMN_POSITION_MAX).contains(position) {
                        return self.fail(
                            item,
                            format!("column position must be in 1..={INBOX_COLUMN_POSITION_MAX}"),
                        );
                    }
                    format!("#{position}")
                }
                InboxColumn::Name(name) => {
                    if !inbox.has_header {
                        return self.fail(
                            item,
                            "without a header row (has_header = false) columns are positions (1, 2, ...)",
                        );
                    }
                    let trimmed = name.trim();
                    if trimmed.is_empty() || name.len() > INBOX_COLUMN_NAME_LEN_MAX {
                        return self.fail(
                            item,
                            format!("header name must be 1 to {INBOX_COLUMN_NAME_LEN_MAX} bytes"),
                        );
                    }
                    trimmed.to_lowercase()
                }
            };
            if let Some(other) = taken.insert(slot, field) {
                return self.fail(item, format!("same column as columns.{other}"));
            }
        }
        let named_any = inbox.columns.fields().iter().any(|(_, c)| c.is_some());
        if !inbox.has_header && named_any {
            let columns = &inbox.columns;
            let needed = [
                ("sku", columns.sku.is_some()),
                ("location", columns.location.is_some()),
                ("qty", columns.qty.is_some()),
                (
                    "type",
                    columns.kind.is_some() || inbox.default_type.is_some(),
                ),
            ];
            for (field, present) in needed {
                if !present {
                    return self.fail(
                        format!("{path}.columns.{field}"),
                        "must be set: without a header row, only the columns named in `columns` are read (or name none for the default positions)",
                    );
                }
            }
        }
        if let Some(format) = &inbox.date_format {
            if let Err(message) = check_date_format(format) {
                return self.fail(format!("{path}.date_format"), message);
            }
        }
        Ok(())
    }

    fn source_authority(
        &self,
        index: usize,
        rule: &SourceAuthorityConfig,
        locations: &BTreeSet<&str>,
    ) -> Result<(), ConfigError> {
        let path = format!("source_authority[{index}]");
        self.id(&format!("{path}.source"), &rule.source)?;
        self.location_list(&format!("{path}.locations"), &rule.locations, locations)?;
        for (type_index, event_type) in rule.types.iter().enumerate() {
            if !EVENT_TYPES.contains(&event_type.as_str()) {
                return self.fail(
                    format!("{path}.types[{type_index}]"),
                    format!(
                        "unknown event type {event_type:?}, expected one of {}",
                        EVENT_TYPES.join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A chrono `strftime` format that can read back what it writes: a fixed instant
/// formatted with it must parse again as a date (with or without time and offset).
fn check_date_format(format: &str) -> Result<(), String> {
    use chrono::format::{Item, StrftimeItems};
    if format.trim().is_empty() {
        return Err("must not be empty".to_owned());
    }
    if StrftimeItems::new(format).any(|item| matches!(item, Item::Error)) {
        return Err(format!("{format:?} is not a strftime format"));
    }
    let sample = chrono::DateTime::from_timestamp(1_700_000_000, 0)
        .unwrap_or_default()
        .fixed_offset();
    let text = sample.format(format).to_string();
    let reads = chrono::DateTime::parse_from_str(&text, format).is_ok()
        || chrono::NaiveDateTime::parse_from_str(&text, format).is_ok()
        || chrono::NaiveDate::parse_from_str(&text, format).is_ok();
    if !reads {
        return Err(format!(
            "{format:?} does not name a full date (year, month and day, e.g. \"%Y-%m-%d %H:%M:%S\")"
        ));
    }
    Ok(())
}

/// `host:port` with a non-empty host and a numeric port (no name resolution here).
fn is_valid_listen(listen: &str) -> bool {
    match listen.rsplit_once(':') {
        Some((host, port)) => {
            !host.is_empty()
                && !host.chars().any(char::is_whitespace)
                && port.parse::<u16>().is_ok()
        }
        None => false,
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "config/stockwire.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, ORIGIN, &[])
    }

    #[test]
    fn the_shipped_embedded_default_loads() {
        let config = parse(include_str!("../config/stockwire.toml")).expect("shipped config");
        assert_eq!(config.listen, "127.0.0.1:8080");
        let edi = config.channels.iter().find(|c| c.id == "edi").expect("edi");
        assert!(matches!(
            edi.sink,
            Some(SinkConfig::File {
                format: FileFormat::Edi846,
                ..
            })
        ));
    }

    fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_toml_str(text, ORIGIN, &env)
    }

    fn error(text: &str) -> String {
        match parse(text) {
            Ok(config) => panic!("expected an error, got {config:?}"),
            Err(error) => error.to_string(),
        }
    }

    const LOCATIONS: &str = r#"
[[locations]]
id = "wh-east"
kind = "warehouse"
name = "Warehouse East"

[[locations]]
id = "wh-west"
kind = "warehouse"
name = "Warehouse West"

[[locations]]
id = "3pl-north"
kind = "3pl"
name = "3PL North"
"#;

    /// SPEC §7 with the channels of §4, an inbox (§5) and source authority (§3).
    const FULL: &str = r#"
listen = "127.0.0.1:8080"
data_dir = "./data"
durability = "wal"            # or "fsync"
default_ttl_seconds = 900
max_body_bytes = 1048576

[[locations]]
id = "wh-east"
kind = "warehouse"            # warehouse | 3pl | store
name = "Warehouse East"

[[locations]]
id = "wh-west"
kind = "warehouse"
name = "Warehouse West"

[[locations]]
id = "3pl-north"
kind = "3pl"
name = "3PL North"

[[locations]]
id = "store-1"
kind = "store"
name = "Flagship"

[[keys]]
name = "storefront"           # the key id used in logs and metrics
key = "dev-only-plain-secret" # or key_sha256 = "<hex>"
role = "channel"              # admin | channel | system | observer
channel = "web"               # channel role only
rate_limit = { per_second = 500, burst = 1000 }

[[keys]]
name = "erp"
key_sha256 = "5E884898DA28047151D0E56F8DC6292773603D0D6AABBDD62A11EF721D1542D8"
role = "system"
locations = ["wh-east"]       # system role only

[[keys]]
name = "ops"
key = "admin-secret"
role = "admin"

[[keys]]
name = "grafana"
key = "observer-secret"
role = "observer"

[[channels]]
id = "web"
locations = ["wh-east", "wh-west"]

[[channels]]
id = "marketplace"
locations = ["wh-east", "wh-west", "3pl-north"]   # sourcing order too
buffer = 5            # publish available - buffer
max_share_pct = 40    # publish at most this share of available
cap = 500             # never publish more than this
min_publish = 2       # below this, publish 0
coalesce_ms = 1000    # latest value per SKU wins within this window
sink = { kind = "webhook", url = "http://127.0.0.1:9101/stock", secret = "...", timeout_ms = 2000, max_attempts = 12 }

[[channels]]
id = "edi-retailer"
locations = ["3pl-north"]
sink = { kind = "file", dir = "./feeds/edi", format = "edi846" }

[[channels]]
id = "b2b"
locations = ["store-1"]
sink = { kind = "file", dir = "./feeds/b2b", format = "csv" }

[[inbox]]
dir = "./inbox/north"
source = "3pl-north"
format = "csv"
mapping = { locations = { "PARTNER-CODE" = "3pl-north" }, skus = { "P-100" = "SKU-100" } }

[[source_authority]]
source = "erp"
locations = ["wh-east"]
types = ["receipt", "adjustment", "count", "transfer_out", "transfer_in"]
"#;

    #[test]
    fn empty_file_gives_defaults() {
        let config = parse("").expect("empty config is valid");
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.data_dir, PathBuf::from("./data"));
        assert_eq!(config.durability, Durability::Wal);
        assert_eq!(config.default_ttl_seconds, 900);
        assert_eq!(config.max_body_bytes, 1_048_576);
        assert_eq!(config.partitions, 64);
        assert_eq!(config.shards, 0);
        assert_eq!(config.snapshot_interval_seconds, 60);
        assert_eq!(config.passivate_after_seconds, 300);
        assert_eq!(config.idempotency_retention_hours, 24);
        assert_eq!(config.reservation_retention_hours, 24);
        assert_eq!(config.transfer_overdue_seconds, 604_800);
        assert_eq!(config.transfer_retention_hours, 168);
        assert_eq!(config.journal_queue_max, 65_536);
        assert_eq!(config.journal_batch_max, 1024);
        assert_eq!(config.batch_events_max, 1000);
        assert_eq!(config.query_skus_max, 1000);
        assert_eq!(config.reservation_lines_max, 100);
        assert_eq!(config.events_page_max, 1000);
        assert_eq!(config.sse_connections_max, 256);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.locations.is_empty());
        assert!(config.keys.is_empty());
        assert!(config.channels.is_empty());
        assert!(config.inbox.is_empty());
        assert!(config.source_authority.is_empty());
        Config::default()
            .validate(ORIGIN)
            .expect("defaults are valid");
    }

    #[test]
    fn full_example_parses() {
        let config = parse(FULL).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.locations.len(), 4);
        assert_eq!(
            config.location("3pl-north").map(|l| l.kind),
            Some(LocationKind::ThirdParty)
        );
        assert_eq!(
            config.location("store-1").map(|l| l.kind),
            Some(LocationKind::Store)
        );
        assert!(config.location("nowhere").is_none());

        let marketplace = config.channel("marketplace").expect("channel");
        assert_eq!(marketplace.locations, ["wh-east", "wh-west", "3pl-north"]);
        assert_eq!(marketplace.buffer, 5);
        assert_eq!(marketplace.max_share_pct, 40);
        assert_eq!(marketplace.cap, Some(500));
        assert_eq!(marketplace.min_publish, 2);
        assert_eq!(marketplace.coalesce_ms, 1000);
        assert_eq!(
            marketplace.sink,
            Some(SinkConfig::Webhook {
                url: "http://127.0.0.1:9101/stock".to_owned(),
                secret: Some("...".to_owned()),
                timeout_ms: 2000,
                max_attempts: 12,
                batch_max: WEBHOOK_BATCH_MAX_DEFAULT,
                backoff_ms: SINK_BACKOFF_MS_DEFAULT,
                backoff_max_ms: SINK_BACKOFF_MAX_MS_DEFAULT,
            })
        );
        let web = config.channel("web").expect("channel");
        assert_eq!((web.buffer, web.max_share_pct, web.cap), (0, 100, None));
        assert_eq!((web.min_publish, web.coalesce_ms), (0, 1000));
        assert!(web.sink.is_none());
        assert_eq!(
            config.channel("edi-retailer").and_then(|c| c.sink.clone()),
            Some(SinkConfig::File {
                dir: PathBuf::from("./feeds/edi"),
                format: FileFormat::Edi846,
                batch_max: WEBHOOK_BATCH_MAX_DEFAULT,
                max_attempts: WEBHOOK_MAX_ATTEMPTS_DEFAULT,
                backoff_ms: SINK_BACKOFF_MS_DEFAULT,
                backoff_max_ms: SINK_BACKOFF_MAX_MS_DEFAULT,
                sender_id: "STOCKWIRE".to_owned(),
                receiver_id: "PARTNER".to_owned(),
            })
        );
        assert_eq!(
            config
                .channel("b2b")
                .and_then(|c| c.sink.as_ref().map(SinkConfig::kind)),
            Some("file")
        );
        // SPEC §4 names a nats sink; this build refuses it clearly at start-up.
        let nats = FULL.replace(
            r#"sink = { kind = "file", dir = "./feeds/b2b", format = "csv" }"#,
            r#"sink = { kind = "nats", url = "nats://127.0.0.1:4222", subject = "stock.b2b" }"#,
        );
        assert!(error(&nats).contains(".sink.kind: nats is not built into this version"));
        let https = FULL.replace("http://127.0.0.1:9101/stock", "https://hooks.example/stock");
        assert!(error(&https).contains("plain http"));

        let storefront = config.key("storefront").expect("key");
        assert_eq!(storefront.role, Role::Channel);
        assert_eq!(storefront.channel.as_deref(), Some("web"));
        assert_eq!(
            storefront.rate_limit,
            Some(RateLimit {
                per_second: 500,
                burst: 1000
            })
        );
        let erp = config.key("erp").expect("key");
        assert_eq!(erp.role, Role::System);
        assert_eq!(erp.locations, ["wh-east"]);

        let inbox = &config.inbox[0];
        assert_eq!(inbox.format, "csv");
        assert_eq!(
            inbox
                .mapping
                .locations
                .get("PARTNER-CODE")
                .map(String::as_str),
            Some("3pl-north")
        );
        assert_eq!(
            inbox.mapping.skus.get("P-100").map(String::as_str),
            Some("SKU-100")
        );

        assert!(config.source_may_post("erp", "wh-east", "receipt"));
        assert!(!config.source_may_post("erp", "wh-east", "return"));
        assert!(!config.source_may_post("erp", "wh-west", "receipt"));
        assert!(!config.source_may_post("wms", "wh-east", "receipt"));
        assert!(Config::default().source_may_post("anyone", "anywhere", "count"));
    }

    #[test]
    fn unknown_key_names_file_and_path() {
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\nbufer = 5\n"
        );
        let message = error(&text);
        assert!(
            message.starts_with("config/stockwire.toml: channels[0].bufer: unknown field `bufer`"),
            "{message}"
        );
        assert!(message.contains("expected one of"), "{message}");

        let message = error("listne = \"0.0.0.0:1\"\n");
        assert!(
            message.starts_with("config/stockwire.toml: listne: unknown field `listne`"),
            "{message}"
        );

        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             sink = {{ kind = \"webhook\", url = \"http://x/\", retries = 3 }}\n"
        );
        let message = error(&text);
        assert!(message.contains("channels[0].sink"), "{message}");
        assert!(message.contains("retries"), "{message}");

        let text = "[[keys]]\nname = \"a\"\nkey = \"s\"\nrole = \"admin\"\nrate_limit = { per_second = 1, brust = 2 }\n";
        let message = error(text);
        assert!(
            message.contains("keys[0].rate_limit.brust: unknown field"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_path() {
        let message = error("[[locations]]\nid = \"a\"\nkind = \"depot\"\n");
        assert!(
            message.starts_with("config/stockwire.toml: locations[0].kind: "),
            "{message}"
        );
        let message = error("partitions = \"many\"\n");
        assert!(
            message.starts_with("config/stockwire.toml: partitions: "),
            "{message}"
        );
    }

    #[test]
    fn syntax_error_names_file() {
        let message = error("listen = \n");
        assert!(message.starts_with("config/stockwire.toml: "), "{message}");
    }

    #[test]
    fn bad_channel_location_is_rejected_with_path() {
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             [[channels]]\nid = \"mp\"\nlocations = [\"wh-east\", \"wh-south\"]\n"
        );
        let message = error(&text);
        assert!(
            message.starts_with(
                "config/stockwire.toml: channels[1].locations[1]: unknown location \"wh-south\""
            ),
            "{message}"
        );

        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\", \"wh-east\"]\n"
        );
        assert!(
            error(&text).contains("channels[0].locations[1]: location \"wh-east\" is listed twice")
        );

        let text = format!("{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = []\n");
        assert!(error(&text).contains("channels[0].locations: must list at least one location"));
    }

    #[test]
    fn channel_policy_ranges() {
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             [[channels]]\nid = \"mp\"\nlocations = [\"wh-east\"]\nmax_share_pct = 101\n"
        );
        assert_eq!(
            error(&text),
            "config/stockwire.toml: channels[1].max_share_pct: must be at most 100"
        );
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\ncoalesce_ms = 3600001\n"
        );
        assert!(error(&text).contains("channels[0].coalesce_ms: must be at most 3600000"));
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             sink = {{ kind = \"webhook\", url = \"ftp://x\" }}\n"
        );
        assert!(error(&text).contains("channels[0].sink.url: invalid url"));
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             [[channels]]\nid = \"web\"\nlocations = [\"wh-west\"]\n"
        );
        assert!(error(&text).contains("channels[1].id: duplicate channel id \"web\""));
    }

    #[test]
    fn locations_kinds_and_ids() {
        let config = parse(LOCATIONS).expect("valid");
        let kinds: Vec<LocationKind> = config.locations.iter().map(|l| l.kind).collect();
        assert_eq!(
            kinds,
            [
                LocationKind::Warehouse,
                LocationKind::Warehouse,
                LocationKind::ThirdParty
            ]
        );
        assert_eq!(LocationKind::ThirdParty.as_str(), "3pl");

        let message = error("[[locations]]\nid = \"wh east\"\nkind = \"store\"\n");
        assert!(message.contains("locations[0].id: invalid id"), "{message}");
        let text = format!("{LOCATIONS}\n[[locations]]\nid = \"wh-west\"\nkind = \"store\"\n");
        assert!(error(&text).contains("locations[3].id: duplicate location id \"wh-west\""));
    }

    #[test]
    fn ids() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("SKU-1.2_3:x"));
        assert!(is_valid_id(&"x".repeat(MAX_ID_LEN)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id(&"x".repeat(MAX_ID_LEN + 1)));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn env_overrides_data_dir_and_ttl() {
        let config = parse_env(
            "data_dir = \"/from/file\"\ndefault_ttl_seconds = 60\n",
            &[
                ("STOCKWIRE_DATA_DIR", "/var/lib/stockwire"),
                ("STOCKWIRE_DEFAULT_TTL_SECONDS", "120"),
                ("STOCKWIRE_CONFIG", "ignored.toml"),
                ("STOCKWIRE_LOG", "debug"),
                ("PATH", "/usr/bin"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/stockwire"));
        assert_eq!(config.default_ttl_seconds, 120);

        let config = parse_env(
            "",
            &[
                ("STOCKWIRE_LISTEN", "0.0.0.0:9000"),
                ("STOCKWIRE_DURABILITY", "fsync"),
                ("STOCKWIRE_LOG_FORMAT", "json"),
                ("STOCKWIRE_MAX_BODY_BYTES", "2_097_152"),
            ],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.listen, "0.0.0.0:9000");
        assert_eq!(config.durability, Durability::Fsync);
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.max_body_bytes, 2 * 1024 * 1024);
    }

    #[test]
    fn env_errors_name_the_variable() {
        let message = match parse_env("", &[("STOCKWIRE_FOO", "1")]) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("STOCKWIRE_FOO accepted"),
        };
        assert!(
            message.starts_with("STOCKWIRE_FOO: unknown variable"),
            "{message}"
        );

        // A list is not a scalar key.
        assert!(parse_env("", &[("STOCKWIRE_CHANNELS", "x")]).is_err());

        let message = match parse_env("", &[("STOCKWIRE_DEFAULT_TTL_SECONDS", "soon")]) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(
            message.starts_with("STOCKWIRE_DEFAULT_TTL_SECONDS: invalid value `soon`"),
            "{message}"
        );

        let message = match parse_env("", &[("STOCKWIRE_DEFAULT_TTL_SECONDS", "0")]) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert_eq!(
            message,
            "STOCKWIRE_DEFAULT_TTL_SECONDS: invalid value `0`: must be at least 1"
        );

        let config = parse_env("", &[("STOCKWIRE_TRANSFER_OVERDUE_SECONDS", "2")])
            .expect("a valid override");
        assert_eq!(config.transfer_overdue_seconds, 2);

        let message = match parse_env("", &[("STOCKWIRE_DURABILITY", "sometimes")]) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("accepted"),
        };
        assert!(
            message.starts_with("STOCKWIRE_DURABILITY: invalid value"),
            "{message}"
        );
    }

    #[test]
    fn env_keys_are_exactly_the_top_level_scalars() {
        // serde lists every field of `Config` when it meets an unknown top-level key.
        let message = error("no_such_key = 1");
        let (_, fields) = message.split_once("expected one of ").expect("field list");
        let scalars: BTreeSet<&str> = fields
            .split(", ")
            .map(|field| field.trim_matches('`'))
            .filter(|field| {
                ![
                    "locations",
                    "keys",
                    "channels",
                    "inbox",
                    "source_authority",
                    "default_rate_limit",
                ]
                .contains(field)
            })
            .collect();
        let env_keys: BTreeSet<&str> = ENV_KEYS.iter().map(|(key, _)| *key).collect();
        assert_eq!(scalars, env_keys);

        let defaults = Config::default();
        for (key, kind) in ENV_KEYS {
            let value = match (*key, kind) {
                ("listen", _) => defaults.listen.clone(),
                ("durability", _) => "wal".to_owned(),
                ("log_format", _) => "text".to_owned(),
                ("log_level", _) => "debug".to_owned(),
                ("protect_metrics", _) => "true".to_owned(),
                (_, EnvValueKind::Text) => "./somewhere".to_owned(),
                (_, EnvValueKind::Scalar) => "100000000".to_owned(),
            };
            let var = format!("STOCKWIRE_{}", key.to_ascii_uppercase());
            // Accepted, or rejected for its range: never an unknown key or a type error.
            if let Err(error) = parse_env("", &[(&var, &value)]) {
                let message = error.to_string();
                assert!(
                    message.contains("must be at most"),
                    "{var}={value}: {message}"
                );
            }
        }
    }

    #[test]
    fn only_system_keys_have_sources_and_they_are_ids() {
        let key = |role: &str, extra: &str| {
            format!(
                "[[locations]]\nid = \"wh\"\nkind = \"warehouse\"\n[[keys]]\nname = \"k\"\nkey = \"s\"\nrole = \"{role}\"\n{extra}\n"
            )
        };
        let config =
            parse(&key("system", "locations = [\"wh\"]\nsources = [\"wms\"]")).expect("valid");
        assert_eq!(config.keys[0].sources, ["wms"]);
        let message = error(&key("admin", "sources = [\"wms\"]"));
        assert!(
            message.contains("keys[0].sources: only a `system` key"),
            "{message}"
        );
        let message = error(&key(
            "system",
            "locations = [\"wh\"]\nsources = [\"not ok\"]",
        ));
        assert!(message.contains("keys[0].sources[0]"), "{message}");
    }

    #[test]
    fn key_sha256_validation() {
        let base = |extra: &str| format!("[[keys]]\nname = \"ops\"\nrole = \"admin\"\n{extra}\n");
        let hash = sha256_hex("s3cret");
        let config = parse(&base(&format!("key_sha256 = \"{hash}\""))).expect("valid");
        let plain = parse(&base("key = \"s3cret\"")).expect("valid");
        assert_eq!(
            config.keys[0].secret_sha256(),
            plain.keys[0].secret_sha256()
        );
        assert!(config.keys[0].secret_sha256().is_some());

        let upper =
            parse(&base(&format!("key_sha256 = \"{}\"", hash.to_uppercase()))).expect("valid");
        assert_eq!(upper.keys[0].secret_sha256(), plain.keys[0].secret_sha256());

        assert!(error(&base("key_sha256 = \"abc\""))
            .contains("keys[0].key_sha256: must be 64 hex digits"));
        let not_hex = "g".repeat(64);
        assert!(error(&base(&format!("key_sha256 = \"{not_hex}\""))).contains("keys[0].key_sha256"));
        assert!(
            error(&base(&format!("key = \"x\"\nkey_sha256 = \"{hash}\"")))
                .contains("keys[0]: set exactly one")
        );
        assert!(error(&base("")).contains("keys[0]: missing secret"));
        assert!(error(&base("key = \"\"")).contains("keys[0].key: must not be empty"));
    }

    #[test]
    fn key_role_rules() {
        let with_channel =
            format!("{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n");
        let key = |body: &str| {
            format!("{with_channel}\n[[keys]]\nname = \"k\"\nkey = \"secret\"\n{body}\n")
        };

        parse(&key("role = \"channel\"\nchannel = \"web\"")).expect("valid channel key");
        parse(&key(
            "role = \"system\"\nlocations = [\"wh-east\", \"3pl-north\"]",
        ))
        .expect("valid system key");
        parse(&key("role = \"observer\"")).expect("valid observer key");

        assert!(error(&key("role = \"channel\""))
            .contains("keys[0]: a `channel` key must name its channel"));
        assert!(error(&key("role = \"channel\"\nchannel = \"nope\""))
            .contains("keys[0].channel: unknown channel"));
        assert!(error(&key(
            "role = \"channel\"\nchannel = \"web\"\nlocations = [\"wh-east\"]"
        ))
        .contains("keys[0].locations: only a `system` key"));
        assert!(error(&key("role = \"system\""))
            .contains("keys[0].locations: a `system` key must list"));
        assert!(error(&key("role = \"system\"\nlocations = [\"mars\"]"))
            .contains("keys[0].locations[0]: unknown location"));
        assert!(error(&key("role = \"admin\"\nchannel = \"web\""))
            .contains("keys[0].channel: only a `channel` key"));
        assert!(
            error(&key("role = \"observer\"\nlocations = [\"wh-east\"]"))
                .contains("keys[0].locations: only a `system` key")
        );
        assert!(error(&key(
            "role = \"admin\"\nrate_limit = { per_second = 0, burst = 1 }"
        ))
        .contains("keys[0].rate_limit.per_second: must be at least 1"));
        assert!(error(&key(
            "role = \"admin\"\nrate_limit = { per_second = 1, burst = 0 }"
        ))
        .contains("keys[0].rate_limit.burst: must be at least 1"));

        let two = format!(
            "{with_channel}\n[[keys]]\nname = \"a\"\nkey = \"same\"\nrole = \"admin\"\n\
             [[keys]]\nname = \"a\"\nkey = \"other\"\nrole = \"admin\"\n"
        );
        assert!(error(&two).contains("keys[1].name: duplicate key name \"a\""));
        let shared = format!(
            "{with_channel}\n[[keys]]\nname = \"a\"\nkey = \"same\"\nrole = \"admin\"\n\
             [[keys]]\nname = \"b\"\nkey_sha256 = \"{}\"\nrole = \"observer\"\n",
            sha256_hex("same")
        );
        assert!(error(&shared).contains("keys[1]: same secret as keys[0]"));
    }

    #[test]
    fn key_debug_redacts_secrets() {
        let text = format!(
            "{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\n\
             sink = {{ kind = \"webhook\", url = \"http://x/\", secret = \"hook-secret\" }}\n\
             [[keys]]\nname = \"a\"\nkey = \"plain-secret\"\nrole = \"admin\"\n"
        );
        let debug = format!("{:?}", parse(&text).expect("valid"));
        assert!(!debug.contains("plain-secret"), "{debug}");
        assert!(!debug.contains("hook-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn inbox_rules() {
        let inbox = |body: &str| {
            format!("{LOCATIONS}\n[[inbox]]\ndir = \"./in\"\nsource = \"3pl-north\"\n{body}\n")
        };
        let config = parse(&inbox("")).expect("valid");
        assert_eq!(config.inbox[0].format, "csv");
        assert!(config.inbox[0].mapping.locations.is_empty());
        assert!(error(&inbox("format = \"xml\"")).contains("inbox[0].format: unsupported format"));
        assert!(
            error(&inbox("mapping = { locations = { \"P1\" = \"mars\" } }"))
                .contains("inbox[0].mapping.locations.P1: unknown location \"mars\"")
        );
        assert!(
            error(&inbox("mapping = { skus = { \"P1\" = \"bad sku\" } }"))
                .contains("inbox[0].mapping.skus.P1: invalid id")
        );
        assert!(error(&inbox("mapping = { colours = {} }"))
            .contains("inbox[0].mapping.colours: unknown field"));
        let twice = format!(
            "{}\n[[inbox]]\ndir = \"./in\"\nsource = \"other\"\n",
            inbox("")
        );
        assert!(error(&twice).contains("inbox[1].dir"));
    }

    #[test]
    fn inbox_layout_defaults() {
        let text = format!("{LOCATIONS}\n[[inbox]]\ndir = \"./in\"\nsource = \"3pl-north\"\n");
        let inbox = parse(&text).expect("valid").inbox.remove(0);
        assert_eq!(inbox.delimiter, ",");
        assert_eq!(inbox.delimiter_byte(), b',');
        assert!(inbox.has_header);
        assert_eq!(inbox.columns, InboxColumns::default());
        assert_eq!(inbox.date_format, None);
        assert_eq!(inbox.default_type, None);
        assert_eq!(inbox.poll_interval_ms, INBOX_POLL_INTERVAL_MS_DEFAULT);
        assert_eq!(inbox.stable_ms, INBOX_STABLE_MS_DEFAULT);
        assert_eq!(inbox.file_bytes_max, INBOX_FILE_BYTES_MAX_DEFAULT);
        assert!(inbox.mapping.types.is_empty());
    }

    #[test]
    fn inbox_partner_layout_parses() {
        let text = format!(
            r#"{LOCATIONS}
[[inbox]]
dir = "./in"
source = "3pl-north"
delimiter = ";"
has_header = true
columns = {{ sku = "Item", location = "Whse", type = "Txn", qty = 4, occurred_at = "Date" }}
date_format = "%d/%m/%Y %H:%M"
default_type = "count"
poll_interval_ms = 250
stable_ms = 0
file_bytes_max = 1048576
mapping = {{ types = {{ "RCV" = "receipt", "CNT" = "count" }} }}
"#
        );
        let inbox = parse(&text)
            .unwrap_or_else(|e| panic!("{e}"))
            .inbox
            .remove(0);
        assert_eq!(inbox.delimiter_byte(), b';');
        assert_eq!(
            inbox.columns.sku,
            Some(InboxColumn::Name("Item".to_owned()))
        );
        assert_eq!(
            inbox.columns.kind,
            Some(InboxColumn::Name("Txn".to_owned()))
        );
        assert_eq!(inbox.columns.qty, Some(InboxColumn::Position(4)));
        assert_eq!(inbox.columns.reason, None);
        assert_eq!(inbox.date_format.as_deref(), Some("%d/%m/%Y %H:%M"));
        assert_eq!(inbox.default_type.as_deref(), Some("count"));
        assert_eq!((inbox.poll_interval_ms, inbox.stable_ms), (250, 0));
        assert_eq!(inbox.file_bytes_max, 1_048_576);
        assert_eq!(
            inbox.mapping.types.get("RCV").map(String::as_str),
            Some("receipt")
        );
        // Tab-separated, positional.
        let tsv = format!(
            "{LOCATIONS}\n[[inbox]]\ndir = \"./in\"\nsource = \"s\"\ndelimiter = \"\\t\"\n\
             has_header = false\ncolumns = {{ sku = 3, location = 1, type = 2, qty = 4 }}\n"
        );
        let inbox = parse(&tsv)
            .unwrap_or_else(|e| panic!("{e}"))
            .inbox
            .remove(0);
        assert_eq!(inbox.delimiter_byte(), b'\t');
        assert!(!inbox.has_header);
    }

    #[test]
    fn inbox_layout_rules() {
        let inbox = |body: &str| {
            format!("{LOCATIONS}\n[[inbox]]\ndir = \"./in\"\nsource = \"3pl-north\"\n{body}\n")
        };
        for (body, expected) in [
            ("delimiter = \"\"", "inbox[0].delimiter: invalid delimiter"),
            (
                "delimiter = \";;\"",
                "inbox[0].delimiter: invalid delimiter",
            ),
            (
                "delimiter = \"\\\"\"",
                "inbox[0].delimiter: invalid delimiter",
            ),
            (
                "delimiter = \"\\n\"",
                "inbox[0].delimiter: invalid delimiter",
            ),
            ("delimiter = \"é\"", "inbox[0].delimiter: invalid delimiter"),
            (
                "columns = { sku = 0 }",
                "inbox[0].columns.sku: column position must be in 1..=1024",
            ),
            (
                "columns = { qty = 1025 }",
                "inbox[0].columns.qty: column position must be in 1..=1024",
            ),
            (
                "columns = { sku = \" \" }",
                "inbox[0].columns.sku: header name must be 1 to 256 bytes",
            ),
            (
                "columns = { sku = \"Item\", location = \"item\" }",
                "inbox[0].columns.location: same column as columns.sku",
            ),
            (
                "columns = { sku = 2, qty = 2 }",
                "inbox[0].columns.qty: same column as columns.sku",
            ),
            (
                "has_header = false\ncolumns = { sku = \"Item\" }",
                "inbox[0].columns.sku: without a header row",
            ),
            (
                "has_header = false\ncolumns = { sku = 1, location = 2, type = 3 }",
                "inbox[0].columns.qty: must be set",
            ),
            (
                "has_header = false\ncolumns = { sku = 1, location = 2, qty = 3 }",
                "inbox[0].columns.type: must be set",
            ),
            (
                "columns = { colour = \"c\" }",
                "inbox[0].columns.colour: unknown field",
            ),
            (
                "date_format = \"%Q\"",
                "inbox[0].date_format: \"%Q\" is not a strftime format",
            ),
            (
                "date_format = \"%H:%M\"",
                "inbox[0].date_format: \"%H:%M\" does not name a full date",
            ),
            (
                "date_format = \"\"",
                "inbox[0].date_format: must not be empty",
            ),
            (
                "default_type = \"transfer_out\"",
                "inbox[0].default_type: event type \"transfer_out\" cannot come from an inbox",
            ),
            (
                "mapping = { types = { \"X\" = \"teleport\" } }",
                "inbox[0].mapping.types.X: event type \"teleport\"",
            ),
            (
                "mapping = { types = { \"\" = \"receipt\" } }",
                "inbox[0].mapping.types.: partner code must not be empty",
            ),
            (
                "poll_interval_ms = 9",
                "inbox[0].poll_interval_ms: must be at least 10",
            ),
            (
                "stable_ms = 3600001",
                "inbox[0].stable_ms: must be at most 3600000",
            ),
            (
                "file_bytes_max = 0",
                "inbox[0].file_bytes_max: must be at least 1",
            ),
        ] {
            let message = error(&inbox(body));
            assert!(message.contains(expected), "{body}: {message}");
        }
        parse(&inbox(
            "has_header = false\ncolumns = { sku = 1, location = 2, qty = 3 }\ndefault_type = \"count\"",
        ))
        .expect("a headerless count snapshot");
        for format in [
            "%Y-%m-%d",
            "%Y-%m-%dT%H:%M:%S%z",
            "%m/%d/%Y %I:%M %p",
            "%Y%m%d%H%M%S",
        ] {
            parse(&inbox(&format!("date_format = \"{format}\"")))
                .unwrap_or_else(|e| panic!("{format}: {e}"));
        }
        for delimiter in [",", ";", "|", "\\t", " "] {
            parse(&inbox(&format!("delimiter = \"{delimiter}\"")))
                .unwrap_or_else(|e| panic!("{delimiter:?}: {e}"));
        }
    }

    #[test]
    fn source_authority_rules() {
        let rule =
            |body: &str| format!("{LOCATIONS}\n[[source_authority]]\nsource = \"wms\"\n{body}\n");
        parse(&rule(
            "locations = [\"wh-east\"]\ntypes = [\"count\", \"in_transit\"]",
        ))
        .expect("valid");
        assert!(error(&rule("types = [\"teleport\"]"))
            .contains("source_authority[0].types[0]: unknown event type"));
        assert!(error(&rule("locations = [\"mars\"]"))
            .contains("source_authority[0].locations[0]: unknown location"));
        let config = parse(&rule("types = [\"count\"]")).expect("valid");
        assert!(config.source_may_post("wms", "wh-west", "count"));
        assert!(!config.source_may_post("wms", "wh-west", "receipt"));
    }

    #[test]
    fn numeric_ranges() {
        assert!(
            error("default_ttl_seconds = 0").contains("default_ttl_seconds: must be at least 1")
        );
        assert!(error("default_ttl_seconds = 2592001")
            .contains("default_ttl_seconds: must be at most 2592000"));
        assert!(error("max_body_bytes = 1023").contains("max_body_bytes: must be at least 1024"));
        assert!(error("partitions = 4097").contains("partitions: must be at most 4096"));
        assert!(error("shards = 257").contains("shards: must be at most 256"));
        assert!(error("idempotency_retention_hours = 23")
            .contains("idempotency_retention_hours: must be at least 24"));
        assert!(error("journal_queue_max = 15").contains("journal_queue_max: must be at least 16"));
        assert!(error("journal_queue_max = 16")
            .contains("journal_batch_max: must be at most journal_queue_max (16)"));
        assert!(
            error("batch_events_max = 10001").contains("batch_events_max: must be at most 10000")
        );
        assert!(error("reservation_lines_max = 0")
            .contains("reservation_lines_max: must be at least 1"));
        assert!(error("transfer_overdue_seconds = 0")
            .contains("transfer_overdue_seconds: must be at least 1"));
        assert!(error("transfer_overdue_seconds = 7776001")
            .contains("transfer_overdue_seconds: must be at most 7776000"));
        assert!(error("transfer_retention_hours = 0")
            .contains("transfer_retention_hours: must be at least 1"));
        assert!(error("transfer_retention_hours = 2161")
            .contains("transfer_retention_hours: must be at most 2160"));
        assert!(error("default_ttl_seconds = -1").contains("default_ttl_seconds: "));
        assert!(error("listen = \"8080\"").contains("listen: invalid address"));
        parse("listen = \"[::1]:8080\"").expect("ipv6 listen");
    }

    #[test]
    fn shard_count_is_clamped() {
        let mut config = Config::default();
        let cpus = config.shard_count();
        assert!((1..=SHARDS_MAX as usize).contains(&cpus));
        config.shards = 8;
        config.partitions = 4;
        assert_eq!(config.shard_count(), 4);
        config.partitions = 64;
        assert_eq!(config.shard_count(), 8);
    }

    #[test]
    fn load_missing_default_file_uses_defaults() {
        let missing = std::env::temp_dir().join("stockwire-config-test-does-not-exist.toml");
        let env = vec![("STOCKWIRE_PARTITIONS".to_owned(), "8".to_owned())];
        let config = Config::load(&missing, true, &env).expect("defaults");
        assert_eq!(config.partitions, 8);
        let message = match Config::load(&missing, false, &[]) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("missing explicit file accepted"),
        };
        assert!(
            message.contains("stockwire-config-test-does-not-exist.toml"),
            "{message}"
        );
    }
}
