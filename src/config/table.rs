//! The two macros that turn the tables of `settings.rs` into code. Without them each
//! setting was written six times (field, `Default`, `*_DEFAULT`, `*_RANGE`, the
//! compile-time range check, the env table and the validator); with them a setting is
//! one row. They generate only what a reader could write out by hand, and nothing else
//! goes through them: rules that are not a plain range stay explicit in `validate.rs`.

/// The table of top-level settings. One row per key, in the order of the file's keys:
///
/// ```text
/// /// Doc comment of the field.
/// key: Type = default                           // the `Default` value
///     , env text | , env scalar                 // optional: `STOCKWIRE_<KEY>` overrides it
///     , check method                            // optional: `Validator::method`, a rule
///                                               //   that is not a range
///     , const NAME_DEFAULT, NAME_RANGE = range; // optional: the range the value must be in
/// ```
///
/// `env text` keeps the variable's value a string (`STOCKWIRE_LISTEN=8080`); `env scalar`
/// reads it as a TOML integer or boolean when it is one (see `env.rs`). A key without
/// `env` (a list, a table) cannot come from the environment.
///
/// From the rows it generates, in row order:
/// - `pub struct Config` with one documented `pub` field per row, and `impl Default`;
/// - for a row with `const`: `pub const NAME_DEFAULT: Type = default`,
///   `pub const NAME_RANGE: RangeInclusive<Type> = range` and a compile-time assertion
///   that the default is in the range (an empty file is a valid config);
/// - `ENV_KEYS`, the keys `STOCKWIRE_*` may override, for `env.rs`;
/// - `Validator::top_level`: per row, the range check, then the `check` method; so the
///   first error reported is the first in the table, as it would be by hand;
/// - in tests, `SETTINGS`: every row as data, for the tests to walk.
macro_rules! top_level_settings {
    (@env text) => {
        $crate::config::env::EnvValueKind::Text
    };
    (@env scalar) => {
        $crate::config::env::EnvValueKind::Scalar
    };
    (@option $value:expr) => {
        Some($value)
    };
    (@option) => {
        None
    };
    (
        $(
            $(#[doc = $doc:literal])*
            $key:ident: $ty:ty = $default:expr
            $(, env $env:ident)?
            $(, check $check:ident)?
            $(, const $DEFAULT:ident, $RANGE:ident = $range:expr)?;
        )*
    ) => {
        /// The whole config file (SPEC §7). Every field has a default, so an empty file is
        /// valid.
        #[derive(Debug, Clone, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Config {
            $(
                $(#[doc = $doc])*
                pub $key: $ty,
            )*
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($key: $default,)*
                }
            }
        }

        $($(
            #[doc = concat!("Default of [`Config::", stringify!($key), "`].")]
            pub const $DEFAULT: $ty = $default;
            #[doc = concat!("Range of [`Config::", stringify!($key), "`], checked at start-up.")]
            pub const $RANGE: std::ops::RangeInclusive<$ty> = $range;
            const _: () = assert!($DEFAULT >= *$RANGE.start() && $DEFAULT <= *$RANGE.end());
        )?)*

        /// Top-level keys that `STOCKWIRE_<KEY>` may override, and whether the value is
        /// always text (so `STOCKWIRE_LISTEN=8080` stays a string).
        pub(super) const ENV_KEYS: &[(&str, $crate::config::env::EnvValueKind)] = &[
            $($((stringify!($key), top_level_settings!(@env $env)),)?)*
        ];

        impl $crate::config::validate::Validator<'_> {
            /// Every top-level setting in table order: its range, then its own rule.
            pub(super) fn top_level(
                &self,
                config: &Config,
            ) -> Result<(), $crate::config::ConfigError> {
                $(
                    $(self.range(stringify!($key), config.$key, &$RANGE)?;)?
                    $(self.$check(config)?;)?
                )*
                Ok(())
            }
        }

        /// Every row of the table, for the tests to walk.
        #[cfg(test)]
        pub(super) const SETTINGS: &[$crate::config::table::Setting] = &[
            $($crate::config::table::Setting {
                key: stringify!($key),
                env: top_level_settings!(@option $(top_level_settings!(@env $env))?),
                range: top_level_settings!(@option $(
                    [$DEFAULT as u64, *$RANGE.start() as u64, *$RANGE.end() as u64]
                )?),
            },)*
        ];
    };
}

/// The defaulted numbers inside sections (`[[channels]]`, their `sink`, `[[inbox]]`).
/// One row per number:
///
/// ```text
/// /// Doc comment of the default.
/// fn serde_default_fn() -> Type = default, const NAME_DEFAULT, NAME_RANGE = range;
/// ```
///
/// generates `pub const NAME_DEFAULT`, `pub const NAME_RANGE`, the compile-time assertion
/// that the default is in the range, and `fn serde_default_fn()` for the section's
/// `#[serde(default = "serde_default_fn")]`. `validate.rs` checks the key against
/// `NAME_RANGE`.
macro_rules! section_limits {
    ($(
        $(#[doc = $doc:literal])*
        fn $default_fn:ident() -> $ty:ty = $default:expr,
            const $DEFAULT:ident, $RANGE:ident = $range:expr;
    )*) => {$(
        $(#[doc = $doc])*
        pub const $DEFAULT: $ty = $default;
        #[doc = concat!("Range of the key that defaults to [`", stringify!($DEFAULT), "`].")]
        pub const $RANGE: std::ops::RangeInclusive<$ty> = $range;
        const _: () = assert!($DEFAULT >= *$RANGE.start() && $DEFAULT <= *$RANGE.end());
        pub(super) fn $default_fn() -> $ty {
            $DEFAULT
        }
    )*};
}

pub(super) use section_limits;
pub(super) use top_level_settings;

/// One row of the top-level table as data (tests only): its key, how the environment
/// may override it, and for a ranged number `[default, start, end]`.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(super) struct Setting {
    pub(super) key: &'static str,
    pub(super) env: Option<super::env::EnvValueKind>,
    pub(super) range: Option<[u64; 3]>,
}
