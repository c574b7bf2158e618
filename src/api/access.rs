//! Access control (SPEC §3): who is calling, what their role may do on each
//! route, and how fast.
//!
//! A request's `Authorization: Bearer <key>` is hashed (SHA-256) and compared
//! in constant time with every configured key's digest, so neither the
//! comparison nor the lookup leaks how much of a key was right. The matching
//! key becomes the request's [`Caller`]; its role is checked against the
//! route's [`Policy`] before the handler runs (403), and its token bucket
//! (governor's GCRA) before that (429). Scope — which channel, which
//! locations — depends on the body or the stored object, so handlers check it
//! with the `Caller`'s methods.
//!
//! A config without `[[keys]]` runs open: every request acts as an admin
//! (for local development; start-up warns).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Payload;
use actix_web::http::header::HeaderValue;
use actix_web::{FromRequest, HttpMessage, HttpRequest};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use crate::config::{Config, RateLimit, Role};
use crate::storage::records::ReservationRecord;

/// Longest bearer token looked at; longer ones are refused without hashing.
const TOKEN_LEN_MAX: usize = 4096;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// No key needed (`/healthz`, `/readyz`, `/v1/openapi.json`).
    Open,
    /// Open unless `protect_metrics`; then `admin` or `observer`.
    Metrics,
    /// A key with one of these roles (scope is the handler's to check).
    Roles(&'static [Role]),
}

/// Role sets the route table uses.
pub const ADMIN: &[Role] = &[Role::Admin];
pub const READERS: &[Role] = &[Role::Admin, Role::Observer];
pub const SYSTEMS: &[Role] = &[Role::Admin, Role::System];
pub const AVAILABILITY: &[Role] = &[Role::Admin, Role::Channel, Role::System, Role::Observer];
pub const SELLERS: &[Role] = &[Role::Admin, Role::Channel];
pub const FULFILMENT: &[Role] = &[Role::Admin, Role::Channel, Role::System];
pub const CHANNEL_STATUS: &[Role] = &[Role::Admin, Role::Observer, Role::Channel];

/// The key a request authenticated with.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id from config (`-` when the API runs open). Never the secret.
    pub name: Arc<str>,
    pub role: Role,
    /// `channel` role: the one channel it acts for.
    pub channel: Option<Arc<str>>,
    /// `system` role: the locations it may touch.
    pub locations: Arc<[String]>,
    /// `system` role: the sources it may post as (empty: any).
    pub sources: Arc<[String]>,
    /// Index of its rate limiter (`None` when the API runs open).
    slot: Option<usize>,
}

impl Caller {
    fn open() -> Caller {
        Caller {
            name: Arc::from("-"),
            role: Role::Admin,
            channel: None,
            locations: Arc::from([]),
            sources: Arc::from([]),
            slot: None,
        }
    }

    /// A key from config (not the open-mode stand-in): its name scopes its
    /// `Idempotency-Key`s.
    pub fn is_configured(&self) -> bool {
        self.slot.is_some()
    }

    /// A system key with `sources` posts only as one of them (events,
    /// reconciliations), so source authority cannot be claimed by another system.
    pub fn may_claim(&self, source: &str) -> Result<(), ApiError> {
        if self.role == Role::System
            && !self.sources.is_empty()
            && !self.sources.iter().any(|s| s == source)
        {
            return Err(ApiError::Forbidden(format!(
                "key {} may not post as source {source}",
                self.name
            )));
        }
        Ok(())
    }

    /// `Some(channel)` for a channel key: it sees only that channel's view.
    pub fn own_channel(&self) -> Option<&str> {
        match self.role {
            Role::Channel => self.channel.as_deref(),
            _ => None,
        }
    }

    /// A channel key may act only for its own channel.
    pub fn may_act_for(&self, channel: &str) -> Result<(), ApiError> {
        match self.own_channel() {
            Some(own) if own != channel => Err(ApiError::Forbidden(format!(
                "key {} acts for channel {own}, not {channel}",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// A system key may touch only its listed locations.
    pub fn may_touch(&self, location: &str) -> Result<(), ApiError> {
        if self.role == Role::System && !self.locations.iter().any(|l| l == location) {
            return Err(ApiError::Forbidden(format!(
                "key {} may not act at location {location}",
                self.name
            )));
        }
        Ok(())
    }

    /// A channel key touches only its own reservations; a system key only those
    /// whose every line is at one of its locations.
    pub fn may_see(&self, record: &ReservationRecord) -> Result<(), ApiError> {
        self.may_act_for(&record.channel)?;
        for line in &record.lines {
            self.may_touch(&line.location)?;
        }
        Ok(())
    }

    /// `true` when scope checks can be skipped (admin and observer see everything
    /// their role allows).
    pub fn is_unscoped(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Observer)
    }
}

/// Handlers take the caller as an argument (a clone is a few reference
/// counts: its lists are shared). A protected route always has one
/// (the middleware put it there); without one the request is refused, so a
/// route wired without a policy fails closed.
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Caller, ApiError>>;

    fn from_request(request: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            request
                .extensions()
                .get::<Arc<Caller>>()
                .map(|caller| Caller::clone(caller))
                .ok_or_else(|| ApiError::Unauthorized("this route needs an API key".to_string())),
        )
    }
}

struct KeyEntry {
    digest: [u8; 32],
    caller: Arc<Caller>,
    limiter: DefaultDirectRateLimiter,
}

/// What [`Keys::authenticate`] found.
pub enum Identity {
    /// No `Authorization` header.
    Anonymous,
    /// A header that names no configured key.
    Unknown,
    Known(Arc<Caller>),
}

impl Identity {
    /// The name logs and metrics use: the key's id, `-` or `unknown`.
    pub fn log_name(&self) -> Arc<str> {
        match self {
            Identity::Anonymous => Arc::from("-"),
            Identity::Unknown => Arc::from("unknown"),
            Identity::Known(caller) => caller.name.clone(),
        }
    }
}

/// The key last recognised on one connection (kept in its connection data,
/// on the worker thread that owns the connection).
#[derive(Default)]
pub struct TokenMemo(std::cell::RefCell<Option<Remembered>>);

/// A token as sent, and the key it named.
type Remembered = (Box<[u8]>, Arc<Caller>);

/// The configured keys, with a rate limiter each.
pub struct Keys {
    entries: Vec<KeyEntry>,
    /// No keys configured: every request is an admin.
    open: Arc<Caller>,
    protect_metrics: bool,
}

fn limiter(limit: RateLimit) -> DefaultDirectRateLimiter {
    // Config validation keeps both at least 1.
    let per_second = NonZeroU32::new(limit.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
    RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst))
}

impl Keys {
    pub fn new(config: &Config) -> Keys {
        let entries = config
            .keys
            .iter()
            .filter_map(|key| Some((key, key.secret_sha256()?)))
            .enumerate()
            .map(|(slot, (key, digest))| KeyEntry {
                digest,
                caller: Arc::new(Caller {
                    name: Arc::from(key.name.as_str()),
                    role: key.role,
                    channel: key.channel.as_deref().map(Arc::from),
                    locations: Arc::from(key.locations.as_slice()),
                    sources: Arc::from(key.sources.as_slice()),
                    slot: Some(slot),
                }),
                limiter: limiter(key.rate_limit.unwrap_or(config.default_rate_limit)),
            })
            .collect();
        Keys {
            entries,
            open: Arc::new(Caller::open()),
            protect_metrics: config.protect_metrics,
        }
    }

    /// No keys configured: the API is open.
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// The key a request's `Authorization: Bearer` header carries. Every
    /// configured digest is compared, in constant time, whatever matches.
    pub fn authenticate(&self, header: Option<&HeaderValue>) -> Identity {
        self.authenticate_memo(header, None)
    }

    /// [`Keys::authenticate`], remembering the last key found on this
    /// connection: a keep-alive connection that sends the same token again
    /// is recognised by a constant-time comparison with it, without hashing
    /// it and comparing digests with every configured key.
    pub fn authenticate_memo(
        &self,
        header: Option<&HeaderValue>,
        memo: Option<&TokenMemo>,
    ) -> Identity {
        if self.is_open() {
            return Identity::Known(self.open.clone());
        }
        let Some(header) = header else {
            return Identity::Anonymous;
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|token| !token.is_empty() && token.len() <= TOKEN_LEN_MAX);
        let Some(token) = token else {
            return Identity::Unknown;
        };
        if let Some(memo) = memo {
            if let Some((last, caller)) = &*memo.0.borrow() {
                // Lengths may differ in time; the bytes compare in constant time.
                if bool::from(last.as_ref().ct_eq(token.as_bytes())) {
                    return Identity::Known(caller.clone());
                }
            }
        }
        let identity = self.find(token);
        if let (Some(memo), Identity::Known(caller)) = (memo, &identity) {
            *memo.0.borrow_mut() = Some((Box::from(token.as_bytes()), caller.clone()));
        }
        identity
    }

    fn find(&self, token: &str) -> Identity {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry);
            }
        }
        match found {
            Some(entry) => Identity::Known(entry.caller.clone()),
            None => Identity::Unknown,
        }
    }

    /// Takes one token from the caller's bucket; `Err(wait)` when empty.
    pub fn take(&self, caller: &Caller) -> Result<(), Duration> {
        let Some(entry) = caller.slot.and_then(|slot| self.entries.get(slot)) else {
            return Ok(());
        };
        entry
            .limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// The caller `identity` is, if it may call a route with `policy` (its
    /// role is one of the route's), without taking from its rate limit: for a
    /// node that only passes the request on (partition groups), whose
    /// receivers admit it.
    pub fn caller_for(&self, policy: Option<Policy>, identity: &Identity) -> Option<Arc<Caller>> {
        let Identity::Known(caller) = identity else {
            return None;
        };
        let roles = match policy? {
            Policy::Open | Policy::Metrics => return None,
            Policy::Roles(roles) => roles,
        };
        roles.contains(&caller.role).then(|| caller.clone())
    }

    /// Whether `identity` may call a route with `policy`: `Ok(Some(caller))` to
    /// go on with that caller, `Ok(None)` for an open route, or the refusal.
    pub fn admit(
        &self,
        policy: Policy,
        identity: &Identity,
    ) -> Result<Option<Arc<Caller>>, ApiError> {
        let roles = match policy {
            Policy::Open => return Ok(None),
            Policy::Metrics if !self.protect_metrics => return Ok(None),
            Policy::Metrics => READERS,
            Policy::Roles(roles) => roles,
        };
        let caller = match identity {
            Identity::Anonymous => {
                return Err(ApiError::Unauthorized(
                    "send an API key: Authorization: Bearer <key>".to_string(),
                ))
            }
            Identity::Unknown => return Err(ApiError::Unauthorized("unknown API key".to_string())),
            Identity::Known(caller) => caller,
        };
        if let Err(wait) = self.take(caller) {
            return Err(ApiError::RateLimited {
                key: caller.name.clone(),
                retry_after: wait,
            });
        }
        if !roles.contains(&caller.role) {
            return Err(ApiError::Forbidden(format!(
                "a {} key may not call this route",
                caller.role.as_str()
            )));
        }
        Ok(Some(caller.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        let config = Config::from_toml_str(text, "test", &[]).expect("valid config");
        Keys::new(&config)
    }

    const CONFIG: &str = r#"
[[locations]]
id = "wh-east"
kind = "warehouse"

[[channels]]
id = "web"
locations = ["wh-east"]

[[keys]]
name = "shop"
key = "shop-secret"
role = "channel"
channel = "web"
rate_limit = { per_second = 1, burst = 2 }

[[keys]]
name = "wms"
key_sha256 = "8f8b1b0c7a1c1e3b2f7b6c3a8e5f5e0f7a2d8b9c1e4f6a3b5c7d9e1f2a4b6c8d"
role = "system"
locations = ["wh-east"]
"#;

    fn bearer(token: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header")
    }

    #[test]
    fn a_connection_remembers_only_the_key_it_sent_last() {
        let keys = keys(&format!(
            "{CONFIG}\n[[keys]]\nname = \"ops\"\nkey = \"ops-secret\"\nrole = \"admin\"\n"
        ));
        let memo = TokenMemo::default();
        let name = |identity: Identity| match identity {
            Identity::Known(caller) => caller.name.to_string(),
            Identity::Unknown => "unknown".to_string(),
            Identity::Anonymous => "-".to_string(),
        };
        let call = |token: &str| name(keys.authenticate_memo(Some(&bearer(token)), Some(&memo)));
        assert_eq!(call("shop-secret"), "shop");
        assert_eq!(call("shop-secret"), "shop", "recognised from the memo");
        // Another key on the same connection is that key, not the remembered one.
        assert_eq!(call("ops-secret"), "ops");
        assert_eq!(call("shop-secret"), "shop");
        // A prefix, an extension or a wrong secret of the remembered token is unknown.
        assert_eq!(call("shop-secre"), "unknown");
        assert_eq!(call("shop-secretx"), "unknown");
        assert_eq!(call("nobody"), "unknown");
        assert_eq!(call("shop-secret"), "shop");
        assert_eq!(
            name(keys.authenticate_memo(None, Some(&memo))),
            "-",
            "no header is anonymous whatever was remembered"
        );
    }

    #[test]
    fn keys_are_found_by_their_secret_only() {
        let keys = keys(CONFIG);
        assert!(!keys.is_open());
        match keys.authenticate(Some(&bearer("shop-secret"))) {
            Identity::Known(caller) => {
                assert_eq!(&*caller.name, "shop");
                assert_eq!(caller.own_channel(), Some("web"));
            }
            _ => panic!("the shop key is configured"),
        }
        assert!(matches!(
            keys.authenticate(Some(&bearer("shop-secre"))),
            Identity::Unknown
        ));
        assert!(matches!(
            keys.authenticate(Some(&HeaderValue::from_static("shop-secret"))),
            Identity::Unknown
        ));
        assert!(matches!(keys.authenticate(None), Identity::Anonymous));
        let huge = "x".repeat(TOKEN_LEN_MAX + 1);
        assert!(matches!(
            keys.authenticate(Some(&bearer(&huge))),
            Identity::Unknown
        ));
    }

    #[test]
    fn the_rate_limit_is_taken_before_the_role_is_checked() {
        let keys = keys(CONFIG);
        let shop = keys.authenticate(Some(&bearer("shop-secret")));
        // A refused call still spends a token: refusals cannot be used to probe
        // faster than the limit.
        assert!(matches!(
            keys.admit(Policy::Roles(ADMIN), &shop),
            Err(ApiError::Forbidden(_))
        ));
        assert!(keys.admit(Policy::Roles(SELLERS), &shop).is_ok());
        // The burst of 2 is spent: the third call waits about a second.
        match keys.admit(Policy::Roles(SELLERS), &shop) {
            Err(ApiError::RateLimited { key, retry_after }) => {
                assert_eq!(&*key, "shop");
                assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1));
            }
            other => panic!(
                "expected 429, got {:?}",
                other.map(|c| c.map(|c| c.name.clone()))
            ),
        }
        assert!(matches!(
            keys.admit(Policy::Roles(SELLERS), &Identity::Anonymous),
            Err(ApiError::Unauthorized(_))
        ));
        assert!(matches!(
            keys.admit(Policy::Open, &Identity::Unknown),
            Ok(None)
        ));
        assert!(matches!(
            keys.admit(Policy::Metrics, &Identity::Unknown),
            Ok(None)
        ));
    }

    #[test]
    fn without_keys_everyone_is_an_admin() {
        let keys = keys("");
        assert!(keys.is_open());
        let identity = keys.authenticate(None);
        let caller = keys
            .admit(Policy::Roles(ADMIN), &identity)
            .expect("open")
            .expect("a caller");
        assert_eq!(caller.role, Role::Admin);
    }

    #[test]
    fn scope_checks() {
        let keys = keys(CONFIG);
        let Identity::Known(shop) = keys.authenticate(Some(&bearer("shop-secret"))) else {
            panic!("configured")
        };
        assert!(shop.may_act_for("web").is_ok());
        assert!(matches!(
            shop.may_act_for("b2b"),
            Err(ApiError::Forbidden(_))
        ));
        let system = Caller {
            name: Arc::from("wms"),
            role: Role::System,
            channel: None,
            locations: Arc::from(["wh-east".to_string()]),
            sources: Arc::from(["wms".to_string()]),
            slot: None,
        };
        assert!(system.may_claim("wms").is_ok());
        assert!(matches!(
            system.may_claim("erp"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(system.may_touch("wh-east").is_ok());
        assert!(matches!(
            system.may_touch("wh-west"),
            Err(ApiError::Forbidden(_))
        ));
        assert!(system.may_act_for("anything").is_ok());
    }
}
