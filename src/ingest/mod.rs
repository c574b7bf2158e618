//! The 3PL managed file exchange (SPEC §5): one worker per `[[inbox]]`
//! directory turns the partner's CSV files into canonical warehouse events.
//!
//! What it owns:
//! - the inbox directories (`incoming` = `dir`, `processing/`, `processed/`,
//!   `rejected/`) and what is written there (result files, rejected rows);
//! - per file, its progress record (`Space::Inbox`), written through the
//!   journal writer, so a restart resumes a file and a re-dropped file is known;
//! - the partner layout: columns, delimiter, header, dates, code mapping
//!   ([`layout`]).
//!
//! What it must not do: validate events its own way (rows go through
//! [`crate::input::validate_event`], the checks of `POST /v1/events`), change a
//! position other than through [`Engine::apply_events_in_order`], or hold a
//! whole file in memory (rows are read in chunks of `batch_events_max`).
//!
//! The modules: `worker` (one inbox's poll loop), `job` (one file from
//! `processing/` to filed), `reader` (the file as the partner's CSV, row by
//! row), `progress` (a chunk's rows to a durable outcome, and the file's
//! progress record), `rejects` (the rejected-rows file), `layout` (columns
//! and mappings) and `files` (the directories, settling, fingerprints,
//! durable moves).
//!
//! `docs/INBOX.md` is the operator's description: conventions, ids, result
//! files, guarantees.

mod files;
mod job;
mod layout;
mod progress;
mod reader;
mod rejects;
mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, Sender};
use notify::Watcher;

use crate::engine::Engine;

pub use layout::{parse_time, Layout, RowContext, RowError};

/// An inbox that could not start.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error("inbox[{index}] {dir}: {message}")]
    Start {
        index: usize,
        dir: String,
        message: String,
    },
}

/// The running inbox workers (one thread each: file I/O is blocking, and one
/// slow partner file must not hold up another inbox).
pub struct Inboxes {
    workers: Vec<Running>,
}

struct Running {
    /// Dropped to stop the worker (its receiver sees the channel disconnect).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Kept alive for the worker's lifetime; `None` when the platform watcher
    /// could not start (the periodic scan still runs).
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Inboxes {
    /// No inboxes (a partition group other than 0 in cluster mode).
    pub fn none() -> Inboxes {
        Inboxes {
            workers: Vec::new(),
        }
    }

    /// Creates each inbox's directories and starts its worker. Call after
    /// recovery, once the engine is ready.
    pub fn start(engine: Arc<Engine>) -> Result<Inboxes, InboxError> {
        let mut workers = Vec::new();
        for (index, inbox) in engine.config.inbox.iter().enumerate() {
            let fail = |message: String| InboxError::Start {
                index,
                dir: inbox.dir.display().to_string(),
                message,
            };
            let dirs = files::Dirs::create(&inbox.dir).map_err(|e| fail(e.to_string()))?;
            // A wake-up, not a queue: the worker scans the whole directory on
            // each, so a full channel loses nothing.
            let (wake_tx, wake_rx) = bounded::<()>(1);
            let (stop_tx, stop_rx) = bounded::<()>(0);
            let watcher =
                notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                    // The worker's own scans open the directory, which inotify
                    // reports as access events: waking on those would rescan in a
                    // loop and keep a core busy. Only changes can bring a file.
                    let is_access = matches!(&event, Ok(event) if event.kind.is_access());
                    if !is_access {
                        let _ = wake_tx.try_send(());
                    }
                })
                .and_then(|mut watcher| {
                    watcher.watch(&dirs.incoming, notify::RecursiveMode::NonRecursive)?;
                    Ok(watcher)
                });
            let watcher = match watcher {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    tracing::warn!(%error, dir = %inbox.dir.display(), "inbox watcher unavailable, polling only");
                    None
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .map_err(|e| fail(format!("runtime: {e}")))?;
            let worker = worker::Worker::new(
                engine.clone(),
                inbox.clone(),
                dirs,
                runtime,
                wake_rx,
                stop_rx,
            );
            let thread = std::thread::Builder::new()
                .name(format!("inbox-{index}"))
                .spawn(move || worker.run_supervised())
                .map_err(|e| fail(format!("thread: {e}")))?;
            tracing::info!(dir = %inbox.dir.display(), source = %inbox.source, watcher = watcher.is_some(), "inbox started");
            workers.push(Running {
                stop: Some(stop_tx),
                thread: Some(thread),
                _watcher: watcher,
            });
        }
        Ok(Inboxes { workers })
    }

    /// Stops every worker and waits for it (blocking): a worker finishes the
    /// chunk of rows it is on, so everything answered is recorded, and the
    /// next start resumes its file after that chunk.
    pub fn stop(&mut self) {
        for running in &mut self.workers {
            running.stop.take();
        }
        for running in &mut self.workers {
            if let Some(thread) = running.thread.take() {
                if thread.join().is_err() {
                    tracing::error!("an inbox worker panicked while stopping");
                }
            }
        }
    }
}

impl Drop for Inboxes {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Back-off of a worker waiting out back-pressure or a failed file.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
