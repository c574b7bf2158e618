//! One inbox's worker: the poll loop. Waits for the watcher or the poll
//! interval, finishes what `processing/` holds, then claims complete files
//! into `processing/` one at a time and runs each one's job ([`super::job`]).
//! A failed file is tried again after a back-off; a panic (a bug) restarts
//! the loop from what is on disk.
//!
//! What it owns: the loop one inbox thread runs (started by [`super::Inboxes`]),
//! its runtime, its wake-up and stop channels, and the retry of engine
//! writes refused under back-pressure ([`Worker::durably`]). What it must not
//! do: read or file a file itself.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{select, Receiver, RecvTimeoutError, TryRecvError};

use super::files::{self, Dirs, Settling};
use super::{BACKOFF_MAX, BACKOFF_MIN};
use crate::config::InboxConfig;
use crate::engine::{Engine, EngineError};

/// Why a file was not finished.
#[derive(Debug)]
pub(super) enum Halt {
    /// Shutting down: the file stays in `processing/` and resumes at next start.
    Stopping,
    /// An I/O or storage failure: the file stays in `processing/` and is tried
    /// again after a back-off.
    Failed(String),
}

impl From<io::Error> for Halt {
    fn from(error: io::Error) -> Self {
        Halt::Failed(error.to_string())
    }
}

impl From<csv::Error> for Halt {
    fn from(error: csv::Error) -> Self {
        Halt::Failed(format!("reading csv: {error}"))
    }
}

pub(super) struct Worker {
    pub(super) engine: Arc<Engine>,
    pub(super) inbox: InboxConfig,
    pub(super) dirs: Dirs,
    /// Drives the engine's async calls from this thread.
    pub(super) runtime: tokio::runtime::Runtime,
    /// The watcher's wake-ups (bounded 1: a wake-up, not a queue).
    wake: Receiver<()>,
    /// Disconnected when the server stops.
    pub(super) stop: Receiver<()>,
    settling: Settling,
    /// Rows per chunk: `batch_events_max`, the same bound as one HTTP batch.
    pub(super) chunk_rows: usize,
}

impl Worker {
    pub(super) fn new(
        engine: Arc<Engine>,
        inbox: InboxConfig,
        dirs: Dirs,
        runtime: tokio::runtime::Runtime,
        wake: Receiver<()>,
        stop: Receiver<()>,
    ) -> Worker {
        let chunk_rows = engine.config.batch_events_max.max(1);
        Worker {
            engine,
            inbox,
            dirs,
            runtime,
            wake,
            stop,
            settling: Settling::default(),
            chunk_rows,
        }
    }

    /// Runs until stopped; a panic (a bug) is logged and the loop starts over
    /// after a pause, from what is on disk.
    pub(super) fn run_supervised(mut self) {
        loop {
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run()));
            match run {
                Ok(()) => return,
                Err(_) => {
                    tracing::error!(dir = %self.inbox.dir.display(), "inbox worker panicked; starting over");
                    if self.pause(BACKOFF_MAX) {
                        return;
                    }
                }
            }
        }
    }

    /// True when the server is stopping.
    pub(super) fn stopping(&self) -> bool {
        matches!(self.stop.try_recv(), Err(TryRecvError::Disconnected))
    }

    /// Sleeps `duration` or until stopped; true when stopping.
    pub(super) fn pause(&self, duration: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(duration),
            Err(RecvTimeoutError::Timeout)
        )
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.inbox.poll_interval_ms)
    }

    fn source(&self) -> &str {
        &self.inbox.source
    }

    pub(super) fn count_file(&self, outcome: &str) {
        self.engine
            .metrics
            .inbox_files_total
            .with_label_values(&[self.source(), outcome])
            .inc();
    }

    fn run(&mut self) {
        let mut failures = 0u32;
        loop {
            match self.round() {
                Ok(settling) => {
                    failures = 0;
                    let wait = if settling {
                        let stable = Duration::from_millis(self.inbox.stable_ms);
                        self.poll_interval()
                            .min(stable.max(Duration::from_millis(10)))
                    } else {
                        self.poll_interval()
                    };
                    select! {
                        recv(self.wake) -> _ => {}
                        recv(self.stop) -> _ => return,
                        default(wait) => {}
                    }
                }
                Err(Halt::Stopping) => return,
                Err(Halt::Failed(error)) => {
                    failures = failures.saturating_add(1);
                    let wait = (BACKOFF_MIN * 2u32.saturating_pow(failures.min(16)))
                        .clamp(self.poll_interval(), BACKOFF_MAX.max(self.poll_interval()));
                    tracing::error!(%error, dir = %self.inbox.dir.display(), retry_in_ms = wait.as_millis() as u64, "inbox file failed; will retry");
                    if self.pause(wait) {
                        return;
                    }
                }
            }
        }
    }

    /// Finishes what `processing/` holds, then claims and processes every
    /// complete file. Returns whether files are still settling.
    fn round(&mut self) -> Result<bool, Halt> {
        for name in files::in_processing(&self.dirs)? {
            self.process(&name)?;
        }
        let scan = self.settling.scan(
            &self.dirs.incoming,
            Duration::from_millis(self.inbox.stable_ms),
        )?;
        self.engine
            .metrics
            .inbox_files_waiting
            .with_label_values(&[self.source()])
            .set((scan.ready.len() + scan.settling) as i64);
        for ready in &scan.ready {
            if self.stopping() {
                return Err(Halt::Stopping);
            }
            self.settling.forget(&ready.name);
            match files::claim(&self.dirs, &ready.name) {
                Ok(true) => self.process(&ready.name)?,
                Ok(false) => {} // a file of that name is still being processed
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(scan.settling > 0)
    }

    /// Retries an engine write until it lands (back-pressure is not a reason to
    /// give up a file) or the server stops.
    pub(super) fn durably<F, Fut>(&self, mut attempt: F) -> Result<(), Halt>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), EngineError>>,
    {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.runtime.block_on(attempt()) {
                Ok(()) => return Ok(()),
                Err(error) => {
                    tracing::warn!(%error, "inbox write refused; retrying");
                    if self.pause(backoff) {
                        return Err(Halt::Stopping);
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
