//! Configuration: loading and validating the TOML config file of SPEC §7 (with the
//! channel keys of §4, the inbox keys of §5 and the source-authority rules of §3), and
//! applying `STOCKWIRE_*` environment overrides on top of it.
//!
//! What it owns:
//! - the config schema ([`Config`] and its parts), strict: unknown keys are an error that
//!   names the file and the key path (`config/stockwire.toml: channels[0].bufer: ...`);
//! - every tunable limit of the engine (queues, batches, bodies, pages, connections) as a
//!   config key with a default, and the hard range each one is checked against at
//!   start-up, as named constants (`*_DEFAULT`, `*_RANGE`, `*_MAX`);
//! - precedence: defaults < file < environment (`STOCKWIRE_DATA_DIR=...` overrides the
//!   top-level key `data_dir`). The CLI `--config` only picks the file.
//!
//! What it must not do: open sockets, create directories or read anything but the config
//! file. A validated [`Config`] is plain data; the modules that use a limit read it from
//! here and never re-check it.
//!
//! The files (their public items are re-exported here: every one is
//! `crate::config::Name`):
//! - `settings.rs`: the table of top-level settings, one row each (the fields of
//!   [`Config`], defaults, ranges, env overrides), and every other limit;
//! - `table.rs`: the two macros that turn the tables of `settings.rs` into code;
//! - `types.rs`: the parts of the file (locations, keys, channels, sinks, inbox, source
//!   authority) and the id and secret helpers;
//! - `env.rs`: `STOCKWIRE_*` overrides of top-level keys;
//! - `validate.rs`: every rule the types cannot express;
//! - this file: loading, errors and the lookups a validated [`Config`] answers.

use std::path::Path;

mod env;
mod settings;
mod table;
mod types;
mod validate;

#[cfg(test)]
mod tests;

pub use env::{ENV_PREFIX, ENV_RESERVED};
pub use settings::*;
pub use types::*;

use env::{attribute_to_env, env_overrides};
use validate::Validator;

// For the tests (`use super::*`).
#[cfg(test)]
use env::EnvValueKind;
#[cfg(test)]
use settings::{ENV_KEYS, SETTINGS};

/// Where `serve` looks for the config file when `--config` is not given (SPEC §8).
pub const DEFAULT_CONFIG_PATH: &str = "config/stockwire.toml";

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

/// A [`ConfigError::Invalid`] at `path` of the file named `origin`.
fn invalid(origin: &str, path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        path: path.into(),
        message: message.into(),
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
