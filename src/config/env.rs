//! `STOCKWIRE_*` environment overrides of top-level config keys: which variables are
//! keys, how their values are read, and how an error on an overridden key names the
//! variable instead of the file.

use std::collections::BTreeMap;

// The keys, from the settings table.
use super::settings::ENV_KEYS;
use super::ConfigError;

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

/// How the value of a `STOCKWIRE_<KEY>` variable is read (the settings table says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EnvValueKind {
    /// Kept as a TOML string.
    Text,
    /// A TOML integer or boolean when it parses as one, else a string.
    Scalar,
}

/// One `STOCKWIRE_*` variable resolved to a top-level key.
#[derive(Debug, Clone)]
pub(super) struct EnvOverride {
    var: String,
    pub(super) key: &'static str,
    raw: String,
    pub(super) value: toml::Value,
}

/// The `STOCKWIRE_*` variables of `env` that override config keys, sorted by variable
/// name so the first error is deterministic.
pub(super) fn env_overrides(env: &[(String, String)]) -> Result<Vec<EnvOverride>, ConfigError> {
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
pub(super) fn attribute_to_env(error: ConfigError, overrides: &[EnvOverride]) -> ConfigError {
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
