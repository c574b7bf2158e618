//! `stockwire serve [--config PATH]`: load config, open RocksDB, start the
//! HTTP server at once (so `/healthz` and `/readyz` answer during
//! recovery), recover, then serve: channel publication and the 3PL inboxes
//! start once recovery is done. SIGTERM: stop accepting, drain in-flight
//! requests, stop the inboxes (each finishes its chunk of rows), write a
//! snapshot, flush the journal, exit 0.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::middleware::from_fn;
use actix_web::{web, App, HttpServer};
use anyhow::Context;
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use stockwire::api::{edge_middleware, routes, AppState};
use stockwire::channels::Channels;
use stockwire::clock::Clock;
use stockwire::config::{Config, LogFormat, DEFAULT_CONFIG_PATH};
use stockwire::engine::{recover, Engine};
use stockwire::ingest::Inboxes;
use stockwire::metrics::Metrics;
use stockwire::storage::{RocksStore, Store};

/// mimalloc, not glibc's malloc: per-thread heaps without the arena locks the
/// HTTP workers contended on (docs/PERFORMANCE.md, "Reservation hot path").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
            // Kept until exit: dropping it flushes the lines still queued.
            let (_log_guard, log_drops) = init_logging(config.log_format, &config.log_level);
            actix_web::rt::System::new().block_on(serve(Arc::new(config), log_drops))
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
        .timeout(Duration::from_secs(24 * 3600))
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
/// Lines go to stdout in batches (`stockwire::logging`; colour only on a
/// terminal); keep the guard alive until exit, it writes what is left.
fn init_logging(
    format: LogFormat,
    level: &str,
) -> (
    stockwire::logging::FlushGuard,
    stockwire::logging::BatchedWriter,
) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOCKWIRE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let ansi = std::io::stdout().is_terminal();
    // Our own handle on fd 1: std's Stdout would write line by line.
    let out: Box<dyn std::io::Write + Send> = match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        Err(_) => Box::new(std::io::stdout()),
    };
    let (writer, guard) = stockwire::logging::batched(out);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer.clone())
        .with_ansi(ansi)
        .with_target(false);
    match format {
        // The current span only: the list of every enclosing span repeated it
        // (one span deep here), adding ~160 bytes to every line.
        LogFormat::Json => builder.json().with_span_list(false).init(),
        LogFormat::Text => builder.init(),
    }
    (guard, writer)
}

/// How long start-up waits for RocksDB's LOCK while another process holds it: a
/// supervisor restarting us right after a kill may start us before the old
/// process's last threads have let go of its files.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// How long start-up waits for the NATS servers and the journal stream.
const CLUSTER_CONNECT_WAIT: Duration = Duration::from_secs(30);

fn open_store(dir: &std::path::Path) -> Result<RocksStore, stockwire::storage::StorageError> {
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match RocksStore::open(dir) {
            Err(error) if error.to_string().contains("lock") && Instant::now() < deadline => {
                tracing::warn!(%error, "data dir locked by another process; waiting");
                std::thread::sleep(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Where the shards run: the arbiters of the HTTP workers, each registered by
/// the app factory on its worker's thread. A request for a SKU of this worker's
/// shard is then served without leaving the thread.
struct Placement {
    workers: usize,
    arbiters: std::sync::Mutex<Vec<actix::ArbiterHandle>>,
    all_registered: tokio::sync::Notify,
}

thread_local! {
    /// The factory runs once per worker and bound address: register once.
    static REGISTERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Placement {
    fn new(workers: usize) -> Placement {
        Placement {
            workers,
            arbiters: std::sync::Mutex::new(Vec::with_capacity(workers)),
            all_registered: tokio::sync::Notify::new(),
        }
    }

    fn register_this_thread(&self) {
        if REGISTERED.with(|registered| registered.replace(true)) {
            return;
        }
        let Some(arbiter) = actix::Arbiter::try_current() else {
            return;
        };
        let mut arbiters = self.arbiters.lock().unwrap_or_else(|p| p.into_inner());
        arbiters.push(arbiter);
        if arbiters.len() == self.workers {
            self.all_registered.notify_one();
        }
    }

    /// Every worker's arbiter, once all have started.
    async fn arbiters(&self) -> Vec<actix::ArbiterHandle> {
        loop {
            let notified = self.all_registered.notified();
            {
                let arbiters = self.arbiters.lock().unwrap_or_else(|p| p.into_inner());
                if arbiters.len() >= self.workers {
                    return arbiters.clone();
                }
            }
            notified.await;
        }
    }
}

/// The first step of a SIGTERM, with accepting already paused: every answer
/// now closes its connection, and this waits until no connection is open,
/// or no request has come for a moment (idle keep-alive connections send
/// nothing), or [`SHUTDOWN_DRAIN_SECONDS`] have passed. Requests still
/// arriving after that are refused with 503 once the engine stops.
async fn drain(state: &AppState) {
    const QUIET: Duration = Duration::from_millis(200);
    state.begin_drain();
    let until = Instant::now() + Duration::from_secs(SHUTDOWN_DRAIN_SECONDS);
    let mut seen = (state.requests_started(), Instant::now());
    while state.open_connections() > 0 && Instant::now() < until {
        let started = state.requests_started();
        if started != seen.0 || state.requests_in_flight() > 0 {
            seen = (started, Instant::now());
        } else if seen.1.elapsed() >= QUIET {
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    tracing::info!(
        open_connections = state.open_connections(),
        "drained; stopping ingest, channels and the engine"
    );
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

async fn serve(config: Arc<Config>, log: stockwire::logging::BatchedWriter) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    metrics.count_log_drops_from(move || log.dropped_lines());
    metrics.prepare(&config);
    let local = Arc::new(
        open_store(&config.data_dir)
            .with_context(|| format!("opening data dir {}", config.data_dir.display()))?,
    );
    let state = web::Data::new(AppState::new(config.clone(), metrics.clone()));
    // Cluster mode: the engine starts only once this node owns the journal; until
    // then it follows the stream and forwards requests to the owner.
    let (store, ownership): (Arc<dyn Store>, _) = match &config.cluster {
        None => (local, None),
        Some(cluster) => {
            let applied = stockwire::cluster::applied_of(&local).map_err(|e| anyhow::anyhow!(e))?;
            let link = Arc::new(
                stockwire::cluster::link::Link::start(cluster, CLUSTER_CONNECT_WAIT)
                    .map_err(|e| anyhow::anyhow!("cluster: {e}"))?,
            );
            let node = Arc::new(stockwire::cluster::Node::new(
                cluster.clone(),
                local.clone(),
                applied,
            ));
            let appends =
                stockwire::cluster::link::WriteLink::connect(cluster, &link, CLUSTER_CONNECT_WAIT)
                    .map_err(|e| anyhow::anyhow!("cluster: {e}"))?;
            let replicated = stockwire::cluster::store::ReplicatedStore::new(
                local.clone(),
                appends,
                node.clone(),
            );
            let granted = stockwire::cluster::start(node.clone(), link.clone(), local);
            let _ = state.cluster.set(node.clone());
            metrics.watch_cluster(node.clone());
            tracing::info!(node = %cluster.node, applied, "cluster mode: following the journal stream");
            (
                replicated.clone() as Arc<dyn Store>,
                Some((granted, replicated, node, link)),
            )
        }
    };
    if state.keys.is_open() {
        tracing::warn!(
            "no [[keys]] configured: the API is open, every caller acts as admin (development only)"
        );
    }
    for key in config.keys.iter().filter(|key| key.key.is_some()) {
        tracing::warn!(key = %key.name, "key stored in plain text in config; use key_sha256 outside development");
    }
    // One shard per HTTP worker, on the worker's own thread (see `Placement`).
    let workers = config.shard_count();
    let placement = Arc::new(Placement::new(workers));
    let app_state = state.clone();
    let for_workers = placement.clone();
    let clustered = config.cluster.is_some();
    let server = HttpServer::new(move || {
        for_workers.register_this_thread();
        App::new()
            .app_data(app_state.clone())
            .wrap(from_fn(edge_middleware))
            // Outermost: a follower forwards before anything else looks at the call.
            .wrap(actix_web::middleware::Condition::new(
                clustered,
                from_fn(stockwire::api::forward::middleware),
            ))
            .configure(routes)
    })
    .on_connect({
        let state = state.clone();
        move |_, data| {
            data.insert(state.connection_opened());
        }
    })
    .workers(workers)
    // Open connections over all workers (each worker takes its share).
    .max_connections(config.connections_max.div_ceil(workers).max(1))
    .bind(&config.listen)
    .with_context(|| format!("binding {}", config.listen))?
    .shutdown_timeout(SHUTDOWN_DRAIN_SECONDS)
    // Signals are handled below: the shards live on the workers' threads, so
    // the final snapshot must be taken before the workers stop.
    .disable_signals()
    .run();
    let handle = server.handle();
    let stop_requested = Arc::new(tokio::sync::Notify::new());
    let on_signal = stop_requested.clone();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        on_signal.notify_one();
    });
    tracing::info!(listen = %config.listen, data_dir = %config.data_dir.display(), durability = ?config.durability, workers, "listening, recovering");

    let recovery_state = state.clone();
    let recovery_handle = handle.clone();
    let recovery = actix_web::rt::spawn(async move {
        let handle = recovery_handle;
        let mut serving = None;
        let mut groups = None;
        if let Some((granted, replicated, node, link)) = ownership {
            if node.config.groups > 1 {
                groups = Some((link, node.config.clone()));
            }
            match granted.await {
                Ok(epoch) => {
                    replicated.grant(epoch);
                    serving = Some(node);
                }
                Err(_) => {
                    // Behind what the stream keeps (or stepped down): it never owns,
                    // but goes on forwarding; /readyz and /v1/cluster say why.
                    tracing::error!("cluster: this node can no longer take over; it only forwards");
                    return Ok(None);
                }
            }
        }
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
        let engine = Engine::start_on(
            recovery_state.config.clone(),
            store,
            recovered,
            recovery_state.metrics.clone(),
            placement.arbiters().await,
            Clock::system(),
        )
        .await;
        engine.finish_recovery().await;
        // Partition groups: other groups' events go to their owners, this
        // group's come here; the inboxes run on group 0's owner only (a file's
        // rows reach every group through it).
        let mut run_inboxes = true;
        if let Some((link, cluster)) = groups {
            engine.set_remote(Arc::new(stockwire::cluster::apply::Remote::new(
                link.clone(),
                cluster.clone(),
            )));
            stockwire::cluster::apply::serve(link, &cluster, engine.clone());
            run_inboxes = cluster.group == 0;
        }
        let channels = match Channels::start(engine.clone()) {
            Ok(channels) => channels,
            Err(error) => {
                tracing::error!(%error, "channel publication could not start");
                engine.shutdown().await;
                handle.stop(false).await;
                return Err(anyhow::anyhow!("channel publication: {error}"));
            }
        };
        let started = if run_inboxes {
            Inboxes::start(engine.clone())
        } else {
            Ok(Inboxes::none())
        };
        let inboxes = match started {
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
        if let Some(node) = serving {
            node.serving();
            tracing::info!(node = %node.config.node, "cluster mode: this node owns the journal and serves");
        }
        Ok(Some(inboxes))
    });

    // Polled on its own: the server answers `handle` commands (pause, stop)
    // only while its future runs.
    let mut server = actix_web::rt::spawn(server);
    tokio::select! {
        result = &mut server => {
            // Stopped without a signal: recovery failed and stopped it.
            result.context("http server task")?.context("http server")?;
            return match recovery.await {
                Ok(Ok(_)) => Err(anyhow::anyhow!("http server stopped")),
                Ok(Err(error)) => Err(error),
                Err(error) => Err(anyhow::anyhow!("recovery task: {error}")),
            };
        }
        _ = stop_requested.notified() => {}
    }
    // SIGTERM: stop accepting, refuse new calls (503) and let the ones under
    // way finish, stop ingest and publication, take the final snapshot while
    // the shards (on the workers' threads) are still there, then stop HTTP.
    tracing::info!("signal received: stop accepting, drain in-flight requests");
    handle.pause().await;
    // A cluster follower waits for ownership that may never come: it takes over no
    // more, and stops waiting now. A takeover under way ends without granting
    // ownership (the recovery task then ends), or, if it already did, recovers.
    if let Some(node) = state.cluster.get() {
        node.stop_taking_over();
        if !node.may_write() {
            recovery.abort();
        }
    }
    let inboxes = match recovery.await {
        Ok(Ok(inboxes)) => inboxes,
        Ok(Err(error)) => return Err(error),
        Err(error) if error.is_cancelled() => None,
        Err(error) => return Err(anyhow::anyhow!("recovery task: {error}")),
    };
    drain(&state).await;
    if let Some(engine) = state.engine.get() {
        engine.begin_shutdown();
    }
    let drain_until = Instant::now() + Duration::from_secs(1);
    while state.requests_in_flight() > 0 && Instant::now() < drain_until {
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    }
    // Ingest stops before the engine: each worker finishes the chunk of rows
    // it is on (its outcomes recorded), so a restart resumes after it.
    let stopped = match inboxes {
        Some(mut inboxes) => web::block(move || inboxes.stop()).await.is_ok(),
        None => true,
    };
    if !stopped {
        tracing::error!("inbox workers did not stop cleanly");
    }
    if let Some(channels) = state.channels.get() {
        channels.stop();
    }
    if let Some(engine) = state.engine.get() {
        engine.shutdown().await;
    }
    handle.stop(true).await;
    server
        .await
        .context("http server task")?
        .context("http server")?;
    tracing::info!("stopped");
    Ok(())
}
