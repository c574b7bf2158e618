//! `stockwire serve [--config PATH]`: load config, open RocksDB, start the
//! HTTP server at once (so `/healthz` and `/readyz` answer during
//! recovery), recover, then serve: channel publication and the 3PL inboxes
//! start once recovery is done. SIGTERM: stop accepting, drain in-flight
//! requests, stop the inboxes (each finishes its chunk of rows), write a
//! snapshot, flush the journal, exit 0.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use stockwire::api::{edge_middleware, routes, AppState};
use stockwire::channels::Channels;
use stockwire::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
use stockwire::engine::{recover, Engine};
use stockwire::ingest::Inboxes;
use stockwire::metrics::Metrics;
use stockwire::storage::{RocksStore, Store};

#[derive(Parser)]
#[command(
    name = "stockwire",
    version,
    about = "Real-time inventory availability and reservations"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Run the server.
    Serve {
        /// Config file (default: config/stockwire.toml; also STOCKWIRE_CONFIG).
        #[arg(long, env = "STOCKWIRE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Make a new API key: prints the secret (give it to the caller) and the
    /// `[[keys]]` entry with its SHA-256 (put that in config).
    NewKey {
        /// The key's id in logs and metrics.
        #[arg(long)]
        name: String,
        /// admin | channel | system | observer
        #[arg(long)]
        role: String,
    },
    /// Print the SHA-256 of a key read from stdin, for `key_sha256`.
    HashKey,
    /// Reconcile a running server against a system of record's on-hand snapshot
    /// (CSV with a header `sku,location,on_hand`), streamed from the file.
    Reconcile {
        /// The system the snapshot comes from (e.g. erp, wms).
        #[arg(long)]
        source: String,
        /// The CSV snapshot.
        #[arg(long)]
        file: PathBuf,
        /// Correct each difference (where the source is authoritative for on-hand).
        #[arg(long)]
        apply: bool,
        /// The server.
        #[arg(long, env = "STOCKWIRE_URL", default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin or system API key.
        #[arg(long, env = "STOCKWIRE_API_KEY")]
        key: Option<String>,
    },
}

/// Seconds actix-web waits for in-flight requests on SIGTERM.
const SHUTDOWN_DRAIN_SECONDS: u64 = 10;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve { config } => {
            let (path, is_default) = match config {
                Some(path) => (path, false),
                None => (PathBuf::from(DEFAULT_CONFIG_PATH), true),
            };
            let env: Vec<(String, String)> = std::env::vars().collect();
            let config = Config::load(&path, is_default, &env)?;
            init_logging(config.log_format, &config.log_level);
            actix_web::rt::System::new().block_on(serve(Arc::new(config)))
        }
        Commands::NewKey { name, role } => {
            if !stockwire::config::is_valid_id(&name) {
                anyhow::bail!("--name must be 1-64 characters from [A-Za-z0-9._:-]");
            }
            let Some(role) = stockwire::config::Role::parse(&role) else {
                anyhow::bail!("--role must be admin, channel, system or observer");
            };
            let secret = format!("sw_{}", hex::encode(rand::random::<[u8; 24]>()));
            let digest = hex::encode(Sha256::digest(secret.as_bytes()));
            println!("# secret (shown once; the caller sends Authorization: Bearer <secret>):");
            println!("# {secret}");
            println!("[[keys]]");
            println!("name = \"{name}\"");
            println!("key_sha256 = \"{digest}\"");
            println!("role = \"{}\"", role.as_str());
            match role {
                stockwire::config::Role::Channel => println!("channel = \"<channel id>\""),
                stockwire::config::Role::System => {
                    println!("locations = [\"<location id>\"]");
                    println!("sources = [\"<source this system posts as>\"]");
                }
                _ => {}
            }
            Ok(())
        }
        Commands::Reconcile {
            source,
            file,
            apply,
            url,
            key,
        } => actix_web::rt::System::new().block_on(reconcile(source, file, apply, url, key)),
        Commands::HashKey => {
            let mut secret = String::new();
            std::io::stdin()
                .read_line(&mut secret)
                .context("reading the key from stdin")?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            if secret.is_empty() {
                anyhow::bail!("give the key on stdin");
            }
            println!("{}", hex::encode(Sha256::digest(secret.as_bytes())));
            Ok(())
        }
    }
}

/// Streams `file` to `POST /v1/reconciliations` as CSV and prints the report.
/// Exit code 0 when nothing differs (or every difference was corrected), 2 when
/// differences remain, 1 on errors.
async fn reconcile(
    source: String,
    file: PathBuf,
    apply: bool,
    url: String,
    key: Option<String>,
) -> anyhow::Result<()> {
    use std::io::Read;
    const PART: usize = 256 * 1024;
    if !stockwire::config::is_valid_id(&source) {
        anyhow::bail!("--source must be 1-64 characters from [A-Za-z0-9._:-]");
    }
    let mut reader =
        std::fs::File::open(&file).with_context(|| format!("opening {}", file.display()))?;
    let body = futures_util::stream::poll_fn(move |_| {
        let mut buf = vec![0u8; PART];
        std::task::Poll::Ready(match reader.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok::<_, std::io::Error>(bytes::Bytes::from(buf)))
            }
            Err(error) => Some(Err(error)),
        })
    });
    let endpoint = format!(
        "{}/v1/reconciliations?source={source}&apply={apply}",
        url.trim_end_matches('/')
    );
    let client = awc::Client::builder()
        .timeout(std::time::Duration::from_secs(24 * 3600))
        .finish();
    let mut request = client
        .post(&endpoint)
        .insert_header(("content-type", "text/csv"));
    if let Some(key) = &key {
        request = request.bearer_auth(key);
    }
    let mut response = request
        .send_stream(body)
        .await
        .map_err(|e| anyhow::anyhow!("POST {endpoint}: {e}"))?;
    let answer = response
        .body()
        .limit(256 * 1024 * 1024)
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
    let text = String::from_utf8_lossy(&answer);
    if !response.status().is_success() {
        anyhow::bail!("{}: {text}", response.status());
    }
    let report: serde_json::Value =
        serde_json::from_str(&text).context("the answer is not JSON")?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    let differences = report["differences"].as_u64().unwrap_or(0);
    let applied = report["applied"].as_u64().unwrap_or(0);
    if differences > applied {
        std::process::exit(2);
    }
    Ok(())
}

/// `STOCKWIRE_LOG`, if set and valid, else the config's `log_level` (validated).
fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOCKWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// How long start-up waits for RocksDB's LOCK while another process holds it: a
/// supervisor restarting us right after a kill may start us before the old
/// process's last threads have let go of its files.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn open_store(dir: &std::path::Path) -> Result<RocksStore, stockwire::storage::StorageError> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match RocksStore::open(dir) {
            Err(error)
                if error.to_string().contains("lock") && std::time::Instant::now() < deadline =>
            {
                tracing::warn!(%error, "data dir locked by another process; waiting");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut terminate), Ok(mut interrupt)) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        }
        _ => {
            tracing::warn!("signal handlers unavailable; stop with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}

async fn serve(config: Arc<Config>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics.prepare(&config);
    let store: Arc<dyn Store> = Arc::new(
        open_store(&config.data_dir)
            .with_context(|| format!("opening data dir {}", config.data_dir.display()))?,
    );
    let state = web::Data::new(AppState::new(config.clone(), metrics.clone()));
    if state.keys.is_open() {
        tracing::warn!(
            "no [[keys]] configured: the API is open, every caller acts as admin (development only)"
        );
    }
    for key in config.keys.iter().filter(|key| key.key.is_some()) {
        tracing::warn!(key = %key.name, "key stored in plain text in config; use key_sha256 outside development");
    }
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let app_state = state.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(app_state.clone())
            .wrap(from_fn(edge_middleware))
            .configure(routes)
    })
    .workers(workers)
    // Open connections over all workers (each worker takes its share).
    .max_connections(config.connections_max.div_ceil(workers).max(1))
    .bind(&config.listen)
    .with_context(|| format!("binding {}", config.listen))?
    .shutdown_timeout(SHUTDOWN_DRAIN_SECONDS)
    // Signals are handled below: actix-server's own handler stops the whole
    // actix system after draining, which would stop the shards before the
    // final snapshot.
    .disable_signals()
    .run();
    let handle = server.handle();
    let signal_handle = handle.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: stop accepting, drain in-flight requests");
        signal_handle.stop(true).await;
    });
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), durability = ?config.durability, "listening, recovering");

    let recovery_state = state.clone();
    let recovery = actix_web::rt::spawn(async move {
        let for_recovery = store.clone();
        let recovered = web::block(move || recover(&*for_recovery)).await;
        let recovered = match recovered {
            Ok(Ok(recovered)) => recovered,
            Ok(Err(error)) => {
                tracing::error!(%error, "recovery failed");
                handle.stop(false).await;
                return Err(anyhow::anyhow!("recovery failed: {error}"));
            }
            Err(error) => {
                handle.stop(false).await;
                return Err(anyhow::anyhow!("recovery failed: {error}"));
            }
        };
        let engine = Engine::start(
            recovery_state.config.clone(),
            store,
            recovered,
            recovery_state.metrics.clone(),
        )
        .await;
        engine.finish_recovery().await;
        let channels = match Channels::start(engine.clone()) {
            Ok(channels) => channels,
            Err(error) => {
                tracing::error!(%error, "channel publication could not start");
                engine.shutdown().await;
                handle.stop(false).await;
                return Err(anyhow::anyhow!("channel publication: {error}"));
            }
        };
        let inboxes = match Inboxes::start(engine.clone()) {
            Ok(inboxes) => inboxes,
            Err(error) => {
                tracing::error!(%error, "inbox could not start");
                channels.stop();
                engine.shutdown().await;
                handle.stop(false).await;
                return Err(anyhow::anyhow!("inbox: {error}"));
            }
        };
        let _ = recovery_state.channels.set(channels);
        let _ = recovery_state.engine.set(engine);
        Ok(inboxes)
    });

    server.await.context("http server")?;
    tracing::info!("http server stopped, shutting down engine");
    let mut inboxes = match recovery.await {
        Ok(Ok(inboxes)) => inboxes,
        Ok(Err(error)) => return Err(error),
        Err(error) => return Err(anyhow::anyhow!("recovery task: {error}")),
    };
    // Ingest stops before the engine: each worker finishes the chunk of rows
    // it is on (its outcomes recorded), so a restart resumes after it.
    if web::block(move || inboxes.stop()).await.is_err() {
        tracing::error!("inbox workers did not stop cleanly");
    }
    if let Some(channels) = state.channels.get() {
        channels.stop();
    }
    if let Some(engine) = state.engine.get() {
        engine.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}
