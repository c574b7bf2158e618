use std::collections::BTreeSet;
use std::path::PathBuf;

use super::*;

const ORIGIN: &str = "config/stockwire.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text, ORIGIN, &[])
}

#[test]
fn the_shipped_embedded_default_loads() {
    let config = parse(include_str!("../../config/stockwire.toml")).expect("shipped config");
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
    // The nats sink (SPEC §4): its defaults, and what it refuses.
    let nats_sink = |sink: &str| {
        FULL.replace(
            r#"sink = { kind = "file", dir = "./feeds/b2b", format = "csv" }"#,
            &format!("sink = {{ kind = \"nats\", {sink} }}"),
        )
    };
    let nats = Config::from_toml_str(
        &nats_sink(r#"url = "nats://127.0.0.1:4222", subject = "stock.b2b""#),
        "test",
        &[],
    )
    .expect("a nats sink is valid");
    assert_eq!(
        nats.channel("b2b").and_then(|c| c.sink.clone()),
        Some(SinkConfig::Nats {
            url: "nats://127.0.0.1:4222".to_owned(),
            subject: "stock.b2b".to_owned(),
            jetstream: false,
            secret: None,
            timeout_ms: WEBHOOK_TIMEOUT_MS_DEFAULT,
            max_attempts: WEBHOOK_MAX_ATTEMPTS_DEFAULT,
            batch_max: WEBHOOK_BATCH_MAX_DEFAULT,
            backoff_ms: SINK_BACKOFF_MS_DEFAULT,
            backoff_max_ms: SINK_BACKOFF_MAX_MS_DEFAULT,
        })
    );
    Config::from_toml_str(
        &nats_sink(
            r#"url = "nats://127.0.0.1:4222, nats://127.0.0.1:4223", subject = "stock.b2b", jetstream = true, secret = "s""#,
        ),
        "test",
        &[],
    )
    .expect("a cluster's servers, JetStream, signed");
    let refused = [
        (
            r#"url = "", subject = "s""#,
            ".sink.url: must name at least one server",
        ),
        (
            r#"url = "nats://a:b:c", subject = "s""#,
            ".sink.url: invalid server",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "stock.*""#,
            ".sink.subject: invalid subject",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "stock..b2b""#,
            ".sink.subject: invalid subject",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "s", secret = "" "#,
            ".sink.secret: must not be empty",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "s", max_attempts = 0"#,
            ".sink.max_attempts: must be at least 1",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "s", timeout_ms = 0"#,
            ".sink.timeout_ms: must be at least 1",
        ),
        (
            r#"url = "nats://127.0.0.1:4222", subject = "s", stream = "x""#,
            "unknown field",
        ),
    ];
    for (sink, expected) in refused {
        let found = error(&nats_sink(sink));
        assert!(found.contains(expected), "{sink}: {found}");
    }
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
    let text =
        format!("{LOCATIONS}\n[[channels]]\nid = \"web\"\nlocations = [\"wh-east\"]\nbufer = 5\n");
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
    assert!(error(&text).contains("channels[0].locations[1]: location \"wh-east\" is listed twice"));

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

    let config =
        parse_env("", &[("STOCKWIRE_TRANSFER_OVERDUE_SECONDS", "2")]).expect("a valid override");
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
                "cluster",
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
    let config = parse(&key("system", "locations = [\"wh\"]\nsources = [\"wms\"]")).expect("valid");
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

    let upper = parse(&base(&format!("key_sha256 = \"{}\"", hash.to_uppercase()))).expect("valid");
    assert_eq!(upper.keys[0].secret_sha256(), plain.keys[0].secret_sha256());

    assert!(
        error(&base("key_sha256 = \"abc\"")).contains("keys[0].key_sha256: must be 64 hex digits")
    );
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
    let key =
        |body: &str| format!("{with_channel}\n[[keys]]\nname = \"k\"\nkey = \"secret\"\n{body}\n");

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
    assert!(
        error(&key("role = \"system\"")).contains("keys[0].locations: a `system` key must list")
    );
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
    assert!(error("default_ttl_seconds = 0").contains("default_ttl_seconds: must be at least 1"));
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
    assert!(error("batch_events_max = 10001").contains("batch_events_max: must be at most 10000"));
    assert!(
        error("reservation_lines_max = 0").contains("reservation_lines_max: must be at least 1")
    );
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

/// The refusal of `var=value` from the environment, as text.
fn env_error(var: &str, value: &str) -> String {
    match parse_env("", &[(var, value)]) {
        Err(error) => error.to_string(),
        Ok(_) => panic!("{var}={value} accepted"),
    }
}

#[test]
fn every_setting_of_the_table_has_its_default_in_range_and_an_env_override() {
    let env_keys: BTreeSet<&str> = ENV_KEYS.iter().map(|(key, _)| *key).collect();
    let unknown = |var: &str| match parse_env("", &[(var, "1")]) {
        Err(ConfigError::Env { message, .. }) => message.starts_with("unknown variable"),
        _ => false,
    };
    for setting in SETTINGS {
        let var = format!("{ENV_PREFIX}{}", setting.key.to_ascii_uppercase());
        // The table drives the environment: a row with `env` is a known variable, one
        // without (a list or a table) is not.
        assert_eq!(
            setting.env.is_some(),
            env_keys.contains(setting.key),
            "{var}"
        );
        assert_eq!(unknown(&var), setting.env.is_none(), "{var}");

        let Some([default, start, end]) = setting.range else {
            continue;
        };
        assert!(
            start <= default && default <= end,
            "{}: default {default} is not in {start}..={end}",
            setting.key
        );
        assert_eq!(setting.env, Some(EnvValueKind::Scalar), "{var}");
        // The default and both ends of the range are accepted and land in the field (a
        // rule between two keys may refuse an end: that error names the other key).
        for value in [default, start, end] {
            match parse_env("", &[(&var, &value.to_string())]) {
                Ok(config) => {
                    let field = format!(" {}: {value},", setting.key);
                    assert!(format!("{config:?}").contains(&field), "{var}={value}");
                }
                Err(error) => {
                    let message = error.to_string();
                    assert!(!message.starts_with(&var), "{var}={value}: {message}");
                }
            }
        }
        // Just outside the range: refused, naming the variable and the table's bound.
        if start > 0 {
            let below = start - 1;
            assert_eq!(
                env_error(&var, &below.to_string()),
                format!("{var}: invalid value `{below}`: must be at least {start}")
            );
        }
        let above = end + 1;
        assert_eq!(
            env_error(&var, &above.to_string()),
            format!("{var}: invalid value `{above}`: must be at most {end}")
        );
    }
}

#[test]
fn the_rules_the_settings_table_names_run_after_their_range() {
    assert!(error("data_dir = \"\"").contains("data_dir: must not be empty"));
    assert!(error("log_level = \"[[\"").contains("log_level: not a log filter"));
    assert!(error("default_rate_limit = { per_second = 0, burst = 1 }")
        .contains("default_rate_limit.per_second: must be at least 1"));
    // In table order: journal_batch_max's own rule comes before later keys' ranges.
    assert!(error("journal_queue_max = 16\nbatch_events_max = 0")
        .contains("journal_batch_max: must be at most journal_queue_max (16)"));
    assert!(error("journal_batch_max = 0\njournal_queue_max = 0")
        .contains("journal_queue_max: must be at least 16"));
}

#[test]
fn cluster_section_defaults_and_rules() {
    let section = |keys: &str| {
        format!(
            "[cluster]\nnode = \"n1\"\nurl = \"nats://u:p%40ss@127.0.0.1:4222,nats://127.0.0.1:4223\"\n\
             advertise = \"http://10.0.0.1:8080\"\n{keys}\n"
        )
    };
    assert!(
        parse("").unwrap().cluster.is_none(),
        "cluster mode is opt-in"
    );
    let config = parse(&section("")).expect("a minimal [cluster] is valid");
    let cluster = config.cluster.expect("cluster");
    assert_eq!(cluster.node, "n1");
    assert_eq!(cluster.stream, "STOCKWIRE");
    assert_eq!(cluster.replicas, CLUSTER_REPLICAS_DEFAULT);
    assert_eq!(cluster.heartbeat_ms, CLUSTER_HEARTBEAT_MS_DEFAULT);
    assert_eq!(cluster.takeover_after_ms, CLUSTER_TAKEOVER_AFTER_MS_DEFAULT);
    assert_eq!(cluster.append_timeout_ms, CLUSTER_APPEND_TIMEOUT_MS_DEFAULT);
    assert_eq!(cluster.stream_keep, CLUSTER_STREAM_KEEP_DEFAULT);
    let shown = format!("{cluster:?}");
    assert!(
        !shown.contains("p%40ss") && shown.contains("***"),
        "{shown}"
    );

    let refused = [
        (section("replicas = 0"), "cluster.replicas"),
        (section("replicas = 6"), "cluster.replicas"),
        (section("heartbeat_ms = 5"), "cluster.heartbeat_ms"),
        (
            section("takeover_after_ms = 500\nheartbeat_ms = 200"),
            "at least 3 heartbeats",
        ),
        (
            section("append_timeout_ms = 10"),
            "cluster.append_timeout_ms",
        ),
        (section("stream_keep = 10"), "cluster.stream_keep"),
        (section("stream = \"a.b\""), "cluster.stream"),
        (section("stream = \"\""), "cluster.stream"),
        (section("groups = 0"), "cluster.groups"),
        (section("groups = 65"), "cluster.groups"),
        (section("groups = 2\ngroup = 2"), "cluster.group"),
        (section("cart_lease_seconds = 2"), "cluster.cart_lease_seconds"),
        (section("cart_lease_seconds = 3601"), "cluster.cart_lease_seconds"),
        (section("groups = 2\nstream = \"S23456789012345678901234567890123456789012345678901234567890123\""), "cluster.stream"),
        (format!("partitions = 4\n{}", section("groups = 5")), "at most partitions"),
        (section("color = \"red\""), "unknown field"),
        (
            "[cluster]\nnode = \"n 1\"\nurl = \"nats://h:1\"\nadvertise = \"http://h:1\"\n"
                .to_owned(),
            "cluster.node",
        ),
        (
            "[cluster]\nnode = \"n1\"\nurl = \"ws://h:1\"\nadvertise = \"http://h:1\"\n".to_owned(),
            "cluster.url",
        ),
        (
            "[cluster]\nnode = \"n1\"\nurl = \"nats://h:1\"\n".to_owned(),
            "advertise",
        ),
    ];
    for advertise in [
        "https://h:1",
        "http://h",
        "http://h:0",
        "http://h:1/x",
        "h:1",
        "http://u@h:1",
    ] {
        let text = format!(
            "[cluster]\nnode = \"n1\"\nurl = \"nats://h:1\"\nadvertise = \"{advertise}\"\n"
        );
        let found = error(&text);
        assert!(found.contains("cluster.advertise"), "{advertise}: {found}");
    }
    for (text, expected) in refused {
        let found = error(&text);
        assert!(found.contains(expected), "{text}: {found}");
    }
}
