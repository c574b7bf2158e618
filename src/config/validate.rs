//! The checks a config must pass at start-up beyond what serde's types say: ranges,
//! ids, references between sections (a channel's locations are declared, a key's
//! channel exists), and the rules of each sink and inbox layout. The first violation
//! is the error, named by file and key path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::RangeInclusive;

// Every limit and its range, and `Config`.
use super::settings::*;
use super::{
    invalid, is_valid_id, ChannelConfig, ConfigError, InboxColumn, InboxConfig, KeyConfig,
    LocationConfig, RateLimit, Role, SinkConfig, SourceAuthorityConfig,
};

/// Checks one config; `origin` names the file in errors.
pub(super) struct Validator<'a> {
    pub(super) origin: &'a str,
}

impl Validator<'_> {
    fn fail<T>(
        &self,
        path: impl Into<String>,
        message: impl Into<String>,
    ) -> Result<T, ConfigError> {
        Err(invalid(self.origin, path, message))
    }

    pub(super) fn range<T: PartialOrd + fmt::Display + Copy>(
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

    pub(super) fn config(&self, config: &Config) -> Result<(), ConfigError> {
        // Each top-level key: its range, then its own rule (generated from the settings
        // table in settings.rs).
        self.top_level(config)?;

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

    // The top-level rules that are not a range. The settings table names each one
    // (`check ...`) and `Validator::top_level` runs it right after the key's range check.

    pub(super) fn listen_address(&self, c: &Config) -> Result<(), ConfigError> {
        if !is_valid_listen(&c.listen) {
            return self.fail(
                "listen",
                format!("invalid address {:?}: expected host:port", c.listen),
            );
        }
        Ok(())
    }

    pub(super) fn data_dir_not_empty(&self, c: &Config) -> Result<(), ConfigError> {
        if c.data_dir.as_os_str().is_empty() {
            return self.fail("data_dir", "must not be empty");
        }
        Ok(())
    }

    pub(super) fn journal_batch_within_queue(&self, c: &Config) -> Result<(), ConfigError> {
        if c.journal_batch_max > c.journal_queue_max {
            return self.fail(
                "journal_batch_max",
                format!(
                    "must be at most journal_queue_max ({})",
                    c.journal_queue_max
                ),
            );
        }
        Ok(())
    }

    pub(super) fn default_rate_limit(&self, c: &Config) -> Result<(), ConfigError> {
        self.rate_limit("default_rate_limit", &c.default_rate_limit)
    }

    pub(super) fn cluster(&self, c: &Config) -> Result<(), ConfigError> {
        let Some(cluster) = &c.cluster else {
            return Ok(());
        };
        self.id("cluster.node", &cluster.node)?;
        if let Err(message) = crate::channels::sink::nats_target(&cluster.url) {
            return self.fail("cluster.url", message);
        }
        let stream_ok = !cluster.stream.is_empty()
            && cluster.own_stream().len() <= 64
            && cluster
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !stream_ok {
            return self.fail(
                "cluster.stream",
                "must be 1 to 64 characters from [A-Za-z0-9_-], with its group's -g<g> (a JetStream stream name)",
            );
        }
        let advertise = cluster.advertise.strip_prefix("http://").unwrap_or("");
        let authority_ok = !advertise.is_empty()
            && !advertise.contains(['/', '?', '#', '@', ' '])
            && advertise.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|port| port > 0)
            });
        if !authority_ok {
            return self.fail(
                "cluster.advertise",
                format!(
                    "{:?} is not http://host:port (how the other nodes reach this node's listener)",
                    cluster.advertise
                ),
            );
        }
        self.range(
            "cluster.replicas",
            cluster.replicas,
            &CLUSTER_REPLICAS_RANGE,
        )?;
        self.range(
            "cluster.heartbeat_ms",
            cluster.heartbeat_ms,
            &CLUSTER_HEARTBEAT_MS_RANGE,
        )?;
        self.range(
            "cluster.takeover_after_ms",
            cluster.takeover_after_ms,
            &CLUSTER_TAKEOVER_AFTER_MS_RANGE,
        )?;
        if cluster.takeover_after_ms < 3 * cluster.heartbeat_ms {
            return self.fail(
                "cluster.takeover_after_ms",
                "must be at least 3 heartbeats (cluster.heartbeat_ms), or one late heartbeat starts a takeover",
            );
        }
        self.range(
            "cluster.append_timeout_ms",
            cluster.append_timeout_ms,
            &CLUSTER_APPEND_TIMEOUT_MS_RANGE,
        )?;
        self.range(
            "cluster.stream_keep",
            cluster.stream_keep,
            &CLUSTER_STREAM_KEEP_RANGE,
        )?;
        self.range("cluster.groups", cluster.groups, &CLUSTER_GROUPS_RANGE)?;
        if cluster.groups > c.partitions {
            return self.fail(
                "cluster.groups",
                format!(
                    "must be at most partitions ({}): a group with no partition owns nothing",
                    c.partitions
                ),
            );
        }
        if cluster.group >= cluster.groups {
            return self.fail(
                "cluster.group",
                format!("must be below cluster.groups ({})", cluster.groups),
            );
        }
        self.range(
            "cluster.cart_lease_seconds",
            cluster.cart_lease_seconds,
            &CLUSTER_CART_LEASE_SECONDS_RANGE,
        )?;
        Ok(())
    }

    pub(super) fn log_filter(&self, c: &Config) -> Result<(), ConfigError> {
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
            &MAX_SHARE_PCT_RANGE,
        )?;
        self.range(
            &format!("{path}.coalesce_ms"),
            channel.coalesce_ms,
            &COALESCE_MS_RANGE,
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
                self.delivery(path, *timeout_ms, *max_attempts, *batch_max)?;
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
            SinkConfig::Nats {
                url,
                subject,
                secret,
                timeout_ms,
                max_attempts,
                batch_max,
                backoff_ms,
                backoff_max_ms,
                ..
            } => {
                if let Err(message) = crate::channels::sink::nats_target(url) {
                    return self.fail(format!("{path}.url"), message);
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
                if secret.as_deref() == Some("") {
                    return self.fail(
                        format!("{path}.secret"),
                        "must not be empty (omit it for unsigned messages)",
                    );
                }
                self.delivery(path, *timeout_ms, *max_attempts, *batch_max)?;
                self.backoff(path, *backoff_ms, *backoff_max_ms)?;
            }
        }
        Ok(())
    }

    /// A webhook's or nats sink's timeout, attempts and batch size.
    fn delivery(
        &self,
        path: &str,
        timeout_ms: u64,
        max_attempts: u32,
        batch_max: usize,
    ) -> Result<(), ConfigError> {
        self.range(
            &format!("{path}.timeout_ms"),
            timeout_ms,
            &WEBHOOK_TIMEOUT_MS_RANGE,
        )?;
        self.range(
            &format!("{path}.max_attempts"),
            max_attempts,
            &WEBHOOK_MAX_ATTEMPTS_RANGE,
        )?;
        self.range(
            &format!("{path}.batch_max"),
            batch_max,
            &WEBHOOK_BATCH_MAX_RANGE,
        )
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
