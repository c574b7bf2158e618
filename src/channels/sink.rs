//! Where a channel's publications go. A [`Sink`] delivers one batch and says whether
//! the channel took it; publishers know nothing else about sinks, so another transport
//! (NATS, say) is one more implementation of this trait and a config variant.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::feed::{self, Envelope, FeedLine};
use super::Update;
use crate::clock::Clock;
use crate::config::{FileFormat, SinkConfig};

/// Signature header of webhook posts: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Stockwire-Signature";

/// One delivery: a channel's updates, at most `batch_max` of them.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Per-channel batch number (1, 2, ...), durable: file names, X12 control numbers.
    pub id: u64,
    pub channel: String,
    pub updates: Vec<Update>,
}

/// Retry settings shared by every sink.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub batch_max: usize,
}

impl Retry {
    /// Delay before attempt `attempt + 1` after `attempt` failures: exponential, capped,
    /// with jitter over the upper half so retries of many channels do not align.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let base = self
            .backoff
            .saturating_mul(1u32 << exponent)
            .min(self.backoff_max);
        let half = base / 2;
        let jitter = rand::random::<f64>();
        half + half.mul_f64(jitter)
    }
}

pub trait Sink {
    /// Delivers `batch`; `Err` carries a short reason for `last_error`.
    fn deliver(&self, batch: Batch) -> LocalBoxFuture<'static, Result<(), String>>;
}

/// Checks a sink's config can run here (creates a file sink's directory) and returns
/// its retry settings.
pub fn prepare(config: &SinkConfig) -> Result<Retry, String> {
    let (max_attempts, batch_max, backoff_ms, backoff_max_ms) = match config {
        SinkConfig::Webhook {
            max_attempts,
            batch_max,
            backoff_ms,
            backoff_max_ms,
            ..
        }
        | SinkConfig::Nats {
            max_attempts,
            batch_max,
            backoff_ms,
            backoff_max_ms,
            ..
        } => (max_attempts, batch_max, backoff_ms, backoff_max_ms),
        SinkConfig::File {
            dir,
            max_attempts,
            batch_max,
            backoff_ms,
            backoff_max_ms,
            ..
        } => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            (max_attempts, batch_max, backoff_ms, backoff_max_ms)
        }
    };
    Ok(Retry {
        max_attempts: *max_attempts,
        backoff: Duration::from_millis(*backoff_ms),
        backoff_max: Duration::from_millis(*backoff_max_ms),
        batch_max: *batch_max,
    })
}

/// Builds the sink (on the thread that will use it: HTTP clients are thread-local).
pub fn build(config: &SinkConfig, clock: Clock) -> Box<dyn Sink> {
    match config {
        SinkConfig::Webhook {
            url,
            secret,
            timeout_ms,
            ..
        } => Box::new(Webhook::new(
            url.clone(),
            secret.clone(),
            Duration::from_millis(*timeout_ms),
        )),
        SinkConfig::File {
            dir,
            format,
            sender_id,
            receiver_id,
            ..
        } => Box::new(FileSink {
            dir: dir.clone(),
            format: *format,
            sender_id: sender_id.clone(),
            receiver_id: receiver_id.clone(),
            clock,
        }),
        SinkConfig::Nats {
            url,
            subject,
            jetstream,
            secret,
            timeout_ms,
            ..
        } => Box::new(NatsSink {
            // Validated with the config: an error here would be a bug; it then
            // fails every attempt with the reason.
            target: nats_target(url),
            shown: redacted(url),
            subject: subject.clone(),
            jetstream: *jetstream,
            secret: secret.clone(),
            timeout: Duration::from_millis(*timeout_ms),
            connection: Rc::new(RefCell::new(None)),
        }),
    }
}

#[derive(Serialize)]
struct WebhookBody<'a> {
    channel: &'a str,
    updates: Vec<WebhookUpdate<'a>>,
}

#[derive(Serialize)]
struct WebhookUpdate<'a> {
    sku: &'a str,
    available: u64,
    seq: u64,
    at: String,
}

/// The JSON body of a webhook post (SPEC §4).
pub fn webhook_body(batch: &Batch) -> Vec<u8> {
    let body = WebhookBody {
        channel: &batch.channel,
        updates: batch
            .updates
            .iter()
            .map(|u| WebhookUpdate {
                sku: &u.sku,
                available: u.available,
                seq: u.seq,
                at: rfc3339_ms(u.at_ms),
            })
            .collect(),
    };
    serde_json::to_vec(&body).unwrap_or_default()
}

/// `sha256=<hex>` of `body` under `secret`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub fn rfc3339_ms(at_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

struct Webhook {
    url: String,
    secret: Option<String>,
    client: awc::Client,
}

impl Webhook {
    fn new(url: String, secret: Option<String>, timeout: Duration) -> Webhook {
        let client = awc::Client::builder()
            .timeout(timeout)
            .disable_redirects()
            .finish();
        Webhook {
            url,
            secret,
            client,
        }
    }
}

impl Sink for Webhook {
    fn deliver(&self, batch: Batch) -> LocalBoxFuture<'static, Result<(), String>> {
        let body = webhook_body(&batch);
        let mut request = self
            .client
            .post(&self.url)
            .insert_header(("content-type", "application/json"));
        if let Some(secret) = &self.secret {
            request = request.insert_header((SIGNATURE_HEADER, signature(secret, &body)));
        }
        Box::pin(async move {
            let response = request.send_body(body).await.map_err(|e| e.to_string())?;
            let status = response.status();
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("http status {}", status.as_u16()))
            }
        })
    }
}

struct FileSink {
    dir: PathBuf,
    format: FileFormat,
    sender_id: String,
    receiver_id: String,
    /// Dates the EDI envelope.
    clock: Clock,
}

impl Sink for FileSink {
    fn deliver(&self, batch: Batch) -> LocalBoxFuture<'static, Result<(), String>> {
        let lines: Vec<FeedLine> = batch
            .updates
            .iter()
            .map(|u| FeedLine {
                sku: u.sku.to_string(),
                available: u.available,
                seq: u.seq,
                at_ms: u.at_ms,
            })
            .collect();
        let rendered = match self.format {
            FileFormat::Csv => feed::render_csv(&lines)
                .map(|bytes| (bytes, "csv"))
                .map_err(|e| e.to_string()),
            FileFormat::Edi846 => {
                // A SKU the 846 cannot carry (over 48 characters) would fail every
                // attempt of the whole batch: it is left out, loudly, and the rest go.
                let (lines, refused): (Vec<FeedLine>, Vec<FeedLine>) = lines
                    .into_iter()
                    .partition(|l| feed::check_x12_line(l).is_ok());
                for line in &refused {
                    tracing::error!(
                        channel = %batch.channel,
                        sku = %line.sku,
                        "sku left out of the edi 846 feed: it cannot be carried by X12"
                    );
                }
                if lines.is_empty() {
                    return Box::pin(async { Ok(()) });
                }
                let envelope = Envelope {
                    sender_id: self.sender_id.clone(),
                    receiver_id: self.receiver_id.clone(),
                    control_number: u32::try_from(batch.id.saturating_sub(1) % 999_999_999)
                        .unwrap_or(0)
                        + 1,
                    at_ms: self.clock.now_ms(),
                    test: false,
                };
                feed::render_edi846(&lines, &envelope)
                    .map(|text| (text.into_bytes(), "edi"))
                    .map_err(|e| e.to_string())
            }
        };
        let dir = self.dir.clone();
        Box::pin(async move {
            let (bytes, extension) = rendered?;
            let name = format!("{}-{:012}.{extension}", batch.channel, batch.id);
            tokio::task::spawn_blocking(move || write_atomically(&dir, &name, &bytes))
                .await
                .map_err(|e| e.to_string())?
        })
    }
}

/// Writes `name` so a reader polling `dir` never sees a partial file: write a hidden
/// temporary, fsync it, rename.
fn write_atomically(dir: &std::path::Path, name: &str, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let temporary = dir.join(format!(".{name}.tmp"));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, dir.join(name))
    })();
    result.map_err(|e| format!("{}: {e}", dir.join(name).display()))
}

/// Header naming the batch of a NATS message: `<channel>:<batch id>:<digest>`, the
/// digest being the first 16 hex digits of the body's SHA-256. JetStream drops a
/// message whose id it stored within its duplicate window: a retry of the same batch
/// with the same values; a retry carrying newer values has a new id and is stored.
pub const NATS_MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// Room left for the headers when a body is held to the server's `max_payload`.
const NATS_HEADER_ALLOWANCE: usize = 512;

/// How a `nats` sink signs in: taken out of its `url`, because the client does not
/// read credentials from a URL.
#[derive(Clone, PartialEq, Eq)]
pub enum NatsAuth {
    None,
    Token(String),
    UserPassword(String, String),
}

/// A `nats` sink's servers (without credentials) and how it signs in.
#[derive(Clone)]
pub struct NatsTarget {
    pub servers: Vec<async_nats::ServerAddr>,
    pub auth: NatsAuth,
}

/// Credentials are not shown.
impl std::fmt::Debug for NatsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match self.auth {
            NatsAuth::None => "none",
            NatsAuth::Token(_) => "token",
            NatsAuth::UserPassword(..) => "user and password",
        };
        f.debug_struct("NatsTarget")
            .field("servers", &self.servers)
            .field("auth", &auth)
            .finish()
    }
}

/// `%XX` sequences of a URL's user or password, decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| {
            bytes
                .get(at)
                .and_then(|b| (*b as char).to_digit(16))
                .map(|d| d as u8)
        };
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push(high * 16 + low);
                i += 3;
            }
            (byte, ..) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The servers of a `nats` sink's `url` (comma-separated `nats://` or `tls://`
/// addresses) and its credentials (`user:password@` or `token@`, the same on every
/// server that has them).
pub fn nats_target(url: &str) -> Result<NatsTarget, String> {
    let mut servers = Vec::new();
    let mut auth = NatsAuth::None;
    for server in url.split(',').map(str::trim) {
        if server.is_empty() {
            return Err("must name at least one server, none empty".to_string());
        }
        let invalid = |why: String| format!("invalid server {:?}: {why}", redacted(server));
        let addr = server
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| invalid(format!("{e} (expected nats://host:port)")))?;
        if addr.is_websocket() {
            return Err(invalid(
                "websockets are not built in: use nats:// or tls://".into(),
            ));
        }
        let found = match (addr.username(), addr.password()) {
            (None, _) => NatsAuth::None,
            (Some(token), None) => NatsAuth::Token(percent_decoded(token)),
            (Some(user), Some(password)) => {
                NatsAuth::UserPassword(percent_decoded(user), percent_decoded(password))
            }
        };
        if found != NatsAuth::None {
            if auth != NatsAuth::None && auth != found {
                return Err(invalid("other credentials than an earlier server's".into()));
            }
            auth = found;
        }
        let mut bare = addr.into_inner();
        let _ = bare.set_username("");
        let _ = bare.set_password(None);
        servers.push(async_nats::ServerAddr::from_url(bare).map_err(|e| invalid(e.to_string()))?);
    }
    Ok(NatsTarget { servers, auth })
}

/// The client options stockwire connects with (a `nats` sink, cluster mode): signed
/// in with `auth`, and back within a second of a server's return (the client's
/// default waits up to several seconds between tries).
pub fn nats_options(
    name: &str,
    auth: NatsAuth,
    connection_timeout: Duration,
    request_timeout: Duration,
) -> async_nats::ConnectOptions {
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(connection_timeout)
        .request_timeout(Some(request_timeout))
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis((attempts as u64).saturating_mul(100).min(1000))
        });
    match auth {
        NatsAuth::None => options,
        NatsAuth::Token(token) => options.token(token),
        NatsAuth::UserPassword(user, password) => options.user_and_password(user, password),
    }
}

/// `url` with whatever stands between `://` and the last `@` of each server replaced
/// by `***` (it may hold a password, with any characters in it), for messages and logs.
pub fn redacted(url: &str) -> String {
    url.split(',')
        .map(|server| {
            let (scheme, rest) = match server.find("://") {
                Some(at) => server.split_at(at + 3),
                None => ("", server),
            };
            match rest.rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => server.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Publishes each batch, the webhook's JSON body, to one subject. One batch at a time
/// (the publisher waits for each), so a SKU's updates arrive in `seq` order.
struct NatsSink {
    target: Result<NatsTarget, String>,
    /// The url without credentials.
    shown: String,
    subject: String,
    jetstream: bool,
    secret: Option<String>,
    /// Of one attempt: connecting, publishing and the confirmation or acknowledgement.
    timeout: Duration,
    /// Connected on first use and kept, also across failed attempts: one connection
    /// sends in order, so whatever a failed attempt left queued in the client goes out
    /// before the retry, never after it. The client reconnects by itself.
    connection: Rc<RefCell<Option<NatsConnection>>>,
}

#[derive(Clone)]
struct NatsConnection {
    client: async_nats::Client,
    jetstream: async_nats::jetstream::Context,
    /// The round trip that confirms core publishes (see [`Confirm`]).
    confirm: Rc<tokio::sync::Mutex<Confirm>>,
}

/// A subscription to this connection's own inbox: a message sent there comes back
/// only after the server processed everything this connection sent before it. No
/// other subscriber, permission on other subjects or server setting changes that.
struct Confirm {
    inbox: String,
    subscriber: async_nats::Subscriber,
    /// Number of the next round trip; echoes of earlier ones (an attempt that gave
    /// up) are skipped.
    next: u64,
}

impl Confirm {
    async fn round_trip(&mut self, client: &async_nats::Client) -> Result<(), String> {
        use futures_util::StreamExt;
        let number = self.next;
        self.next += 1;
        client
            .publish(self.inbox.clone(), number.to_string().into())
            .await
            .map_err(|e| format!("nats confirm: {e}"))?;
        while let Some(echo) = self.subscriber.next().await {
            if echo.payload.as_ref() == number.to_string().as_bytes() {
                return Ok(());
            }
        }
        Err("nats confirm: the subscription closed".to_string())
    }
}

impl NatsSink {
    async fn connect(
        target: NatsTarget,
        shown: &str,
        timeout: Duration,
    ) -> Result<NatsConnection, String> {
        // Per server, so one that does not answer leaves time for the next.
        let per_server =
            (timeout / target.servers.len().max(1) as u32).max(Duration::from_millis(50));
        // The publisher's own back-off paces the batches while it reconnects.
        let client = nats_options("stockwire", target.auth, per_server, timeout)
            .connect(target.servers)
            .await
            .map_err(|e| format!("nats connect {shown}: {e}"))?;
        let inbox = client.new_inbox();
        let subscriber = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| format!("nats subscribe {shown}: {e}"))?;
        let jetstream = async_nats::jetstream::context::ContextBuilder::new()
            .timeout(timeout)
            .ack_timeout(timeout)
            .build(client.clone());
        Ok(NatsConnection {
            client,
            jetstream,
            confirm: Rc::new(tokio::sync::Mutex::new(Confirm {
                inbox,
                subscriber,
                next: 0,
            })),
        })
    }

    /// One attempt: publish `body` and wait until the server (core) or the
    /// stream (JetStream) has it.
    async fn attempt(
        nats: &NatsConnection,
        subject: String,
        headers: async_nats::HeaderMap,
        body: Vec<u8>,
        jetstream: bool,
    ) -> Result<(), String> {
        let max_payload = nats.client.server_info().max_payload;
        if max_payload > 0 && body.len() + NATS_HEADER_ALLOWANCE > max_payload {
            return Err(format!(
                "a batch of {} bytes is too large for the server's max_payload of {max_payload}: lower batch_max",
                body.len()
            ));
        }
        if jetstream {
            let ack = nats
                .jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|e| format!("jetstream publish: {e}"))?;
            // `duplicate`: the stream already holds this very message.
            ack.await.map_err(|e| format!("jetstream ack: {e}"))?;
            return Ok(());
        }
        nats.client
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| format!("nats publish: {e}"))?;
        nats.confirm.lock().await.round_trip(&nats.client).await
    }
}

impl Sink for NatsSink {
    fn deliver(&self, batch: Batch) -> LocalBoxFuture<'static, Result<(), String>> {
        let body = webhook_body(&batch);
        let mut headers = async_nats::HeaderMap::new();
        let digest = hex::encode(&Sha256::digest(&body)[..8]);
        headers.insert(
            NATS_MSG_ID_HEADER,
            format!("{}:{}:{digest}", batch.channel, batch.id).as_str(),
        );
        if let Some(secret) = &self.secret {
            headers.insert(SIGNATURE_HEADER, signature(secret, &body).as_str());
        }
        let target = self.target.clone();
        let (shown, subject, jetstream, timeout) = (
            self.shown.clone(),
            self.subject.clone(),
            self.jetstream,
            self.timeout,
        );
        let connection = self.connection.clone();
        Box::pin(async move {
            let attempt = async {
                let cached = connection.borrow().clone();
                let nats = match cached {
                    Some(nats) => nats,
                    None => {
                        let nats = NatsSink::connect(target?, &shown, timeout).await?;
                        *connection.borrow_mut() = Some(nats.clone());
                        nats
                    }
                };
                NatsSink::attempt(&nats, subject, headers, body, jetstream).await
            };
            match tokio::time::timeout(timeout, attempt).await {
                Ok(result) => result,
                Err(_) => Err(format!("nats: no answer within {} ms", timeout.as_millis())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let retry = Retry {
            max_attempts: 10,
            backoff: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            batch_max: 10,
        };
        for _ in 0..50 {
            let first = retry.delay(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = retry.delay(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = retry.delay(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }

    #[test]
    fn signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn webhook_body_matches_spec_shape() {
        let batch = Batch {
            id: 1,
            channel: "web".into(),
            updates: vec![Update {
                sku: "sku-1".into(),
                available: 7,
                seq: 42,
                first_seq: 40,
                owed: false,
                at_ms: 0,
            }],
        };
        let body: serde_json::Value = serde_json::from_slice(&webhook_body(&batch)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"channel": "web", "updates": [
                {"sku": "sku-1", "available": 7, "seq": 42, "at": "1970-01-01T00:00:00.000Z"}
            ]})
        );
    }

    #[test]
    fn nats_urls_are_parsed_per_server_and_shown_without_credentials() {
        let target = nats_target("nats://127.0.0.1:4222, nats://127.0.0.1:4223").expect("valid");
        assert_eq!(
            (target.servers.len(), target.auth == NatsAuth::None),
            (2, true)
        );
        assert!(nats_target("nats://a:4222,").is_err());
        assert!(nats_target("nats://a:b:c").is_err());
        assert!(nats_target("ws://a:4222")
            .unwrap_err()
            .contains("websockets"));
        assert!(nats_target("nats://[::1]:4222").is_ok());
        let signed = nats_target("nats://u:p%40ss@a:4222,b:4223").expect("valid");
        assert!(signed.auth == NatsAuth::UserPassword("u".into(), "p@ss".into()));
        assert!(signed
            .servers
            .iter()
            .all(|s| !s.as_url_str().contains('u') || !s.as_url_str().contains("p%40ss")));
        assert!(signed.servers.iter().all(|s| s.username().is_none()));
        assert!(nats_target("tls://tok@a").expect("valid").auth == NatsAuth::Token("tok".into()));
        assert!(nats_target("nats://u:p@a,nats://v:q@b")
            .unwrap_err()
            .contains("other credentials"));
        assert_eq!(
            redacted("nats://u:p@h:4222,nats://h2:4222"),
            "nats://***@h:4222,nats://h2:4222"
        );
        assert_eq!(redacted("tls://token@h"), "tls://***@h");
        assert_eq!(redacted("nats://u:se/cr#et@h:4222"), "nats://***@h:4222");
        assert_eq!(redacted("h:4222"), "h:4222");
        for bad in [
            "nats://user:secret@a:b:c",
            "ws://u:secret@h",
            "nats://u:se/cret@[x",
        ] {
            let shown = nats_target(bad).unwrap_err();
            assert!(!shown.contains("secret"), "{shown}");
        }
    }
}
