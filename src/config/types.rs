//! The parts of the config file below the top level: locations, keys and their roles,
//! channels and their sinks, inboxes and source-authority rules, with the serde
//! defaults of their optional keys; and the id and secret helpers the rest of the
//! crate shares. Plain data: the checks live in `validate.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

// The serde defaults of the numbers in sections (their table is in `settings.rs`).
use super::settings::{
    default_cluster_append_timeout_ms, default_cluster_cart_lease_seconds, default_cluster_groups,
    default_cluster_heartbeat_ms, default_cluster_replicas, default_cluster_stream_keep,
    default_cluster_takeover_after_ms, default_coalesce_ms, default_inbox_file_bytes_max,
    default_inbox_poll_interval_ms, default_inbox_stable_ms, default_max_share_pct,
    default_sink_backoff_max_ms, default_sink_backoff_ms, default_webhook_batch_max,
    default_webhook_max_attempts, default_webhook_timeout_ms,
};
use super::MAX_ID_LEN;

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
    /// Publishes each batch (the webhook's JSON body) to `subject` on a NATS server.
    Nats {
        /// `nats://host:port`; several servers of one cluster separated by commas.
        url: String,
        subject: String,
        /// Publish through JetStream and wait for the stream's acknowledgement (the
        /// subject must belong to a stream; `Nats-Msg-Id` dedupes a repeated batch).
        /// Otherwise core NATS: delivered once a round trip shows the server has it.
        #[serde(default)]
        jetstream: bool,
        /// HMAC key for the `X-Stockwire-Signature` header; unsigned when absent.
        #[serde(default)]
        secret: Option<String>,
        /// One attempt (connect, publish, flush or acknowledgement) gives up after this.
        #[serde(default = "default_webhook_timeout_ms")]
        timeout_ms: u64,
        #[serde(default = "default_webhook_max_attempts")]
        max_attempts: u32,
        /// Most updates per message.
        #[serde(default = "default_webhook_batch_max")]
        batch_max: usize,
        #[serde(default = "default_sink_backoff_ms")]
        backoff_ms: u64,
        #[serde(default = "default_sink_backoff_max_ms")]
        backoff_max_ms: u64,
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
            SinkConfig::Nats {
                url,
                subject,
                jetstream,
                secret,
                timeout_ms,
                max_attempts,
                batch_max,
                backoff_ms,
                backoff_max_ms,
            } => f
                .debug_struct("Nats")
                .field("url", &crate::channels::sink::redacted(url))
                .field("subject", subject)
                .field("jetstream", jetstream)
                .field("secret", &secret.as_ref().map(|_| "<redacted>"))
                .field("timeout_ms", timeout_ms)
                .field("max_attempts", max_attempts)
                .field("batch_max", batch_max)
                .field("backoff_ms", backoff_ms)
                .field("backoff_max_ms", backoff_max_ms)
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
    /// Partner transaction code -> one of
    /// [`INBOX_EVENT_TYPES`](super::INBOX_EVENT_TYPES) (`"RCV" = "receipt"`).
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
/// An empty list means "any". See
/// [`Config::source_may_post`](super::Config::source_may_post).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceAuthorityConfig {
    pub source: String,
    #[serde(default)]
    pub locations: Vec<String>,
    #[serde(default)]
    pub types: Vec<String>,
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

/// `[cluster]`: this node's part in a cluster on NATS JetStream (docs/CLUSTER.md). The
/// nodes of one cluster share `url` and `stream`; each has its own `node` and
/// `advertise`. `Debug` redacts credentials in `url`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster (an id as in SPEC §1). Successors are
    /// chosen in id order.
    pub node: String,
    /// The NATS servers, comma-separated `nats://[user:password@]host:port` (as a
    /// `nats` sink's `url`).
    pub url: String,
    /// The JetStream stream holding the journal; its subject is `<stream>.journal`.
    #[serde(default = "default_cluster_stream")]
    pub stream: String,
    /// Where the other nodes reach this node's HTTP listener to forward requests
    /// (`http://host:port`).
    pub advertise: String,
    #[serde(default = "default_cluster_replicas")]
    pub replicas: usize,
    #[serde(default = "default_cluster_heartbeat_ms")]
    pub heartbeat_ms: u64,
    #[serde(default = "default_cluster_takeover_after_ms")]
    pub takeover_after_ms: u64,
    #[serde(default = "default_cluster_append_timeout_ms")]
    pub append_timeout_ms: u64,
    #[serde(default = "default_cluster_stream_keep")]
    pub stream_keep: u64,
    /// Partition groups the partitions are spread over (docs/CLUSTER.md, "Partition
    /// groups"): partition `p` belongs to group `p % groups`. 1: one group, one
    /// stream, today's cluster.
    #[serde(default = "default_cluster_groups")]
    pub groups: u32,
    /// The group this process is a member of (`0..groups`).
    #[serde(default)]
    pub group: u32,
    /// How long a part of a cart over several groups is held before every part is
    /// (docs/CLUSTER.md, "Carts over several groups").
    #[serde(default = "default_cluster_cart_lease_seconds")]
    pub cart_lease_seconds: u64,
}

impl ClusterConfig {
    /// Group `g`'s journal stream: `stream` itself with one group, else
    /// `<stream>-g<g>`.
    pub fn group_stream(&self, group: u32) -> String {
        if self.groups <= 1 {
            self.stream.clone()
        } else {
            format!("{}-g{group}", self.stream)
        }
    }

    /// This process's journal stream.
    pub fn own_stream(&self) -> String {
        self.group_stream(self.group)
    }
}

fn default_cluster_stream() -> String {
    "STOCKWIRE".to_owned()
}

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node", &self.node)
            .field("url", &crate::channels::sink::redacted(&self.url))
            .field("stream", &self.stream)
            .field("advertise", &self.advertise)
            .field("replicas", &self.replicas)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("takeover_after_ms", &self.takeover_after_ms)
            .field("append_timeout_ms", &self.append_timeout_ms)
            .field("stream_keep", &self.stream_keep)
            .field("groups", &self.groups)
            .field("cart_lease_seconds", &self.cart_lease_seconds)
            .field("group", &self.group)
            .finish()
    }
}
