//! The journal: numbering and committing appends, one commit at a time.
//!
//! An append is a set of encoded entries plus writes that must land atomically
//! with them. It is committed one of two ways, both through [`Committer::commit`],
//! which numbers entries with consecutive `seq`s and writes them as one atomic
//! batch while holding the commit lock, so `seq` is gap-free and in commit order
//! whatever thread commits:
//!
//! - **On the caller's thread, once per event-loop tick** (`wal` durability, on
//!   an actix arbiter: the HTTP workers, which own the shards). The first append
//!   of a tick spawns a local flush task; every append made before that task runs
//!   joins the same batch, and the task writes it and resolves the tickets on the
//!   same thread. No thread hop, no wake-up of another thread.
//! - **On the writer thread** (`fsync` durability, or a caller outside any
//!   arbiter): a bounded queue, group commit of up to `batch_max` appends, one
//!   fsync per group. A tick's batch goes there as one request.
//!
//! Callers get a [`Ticket`] that resolves once the batch is durable. A failed
//! write poisons the journal (fail-stop): every later append, on every thread,
//! fails, because in-memory state may be ahead of the durable state; a restart
//! recovers from what is durable. A write that takes longer than
//! [`STALL_AFTER`] is a stall: the writer thread's watchdog counts it and exposes
//! its age while it lasts, so it cannot block the loop unseen.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use tokio::sync::{oneshot, watch};

use super::records::{EntrySummary, JournalRecord};
use super::{seq_key, Space, StorageError, Store, WriteBatch};

pub type AppendError = StorageError;

/// A write slower than this counts as a stall (`stockwire_journal_stalls_total`).
pub const STALL_AFTER: Duration = Duration::from_millis(500);

/// How often the watchdog looks at the write in progress.
const WATCHDOG_EVERY: Duration = Duration::from_millis(100);

/// Resolves to the first `seq` of the append's entries once they are durable.
/// The only way to an append's outcome: drop it and the outcome is lost (the
/// append still happens).
#[must_use = "an append is acknowledged only through its ticket"]
pub struct Ticket {
    receiver: oneshot::Receiver<Result<u64, StorageError>>,
}

impl Future for Ticket {
    type Output = Result<u64, StorageError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.receiver)
            .poll(cx)
            .map(|result| result.unwrap_or(Err(StorageError::Closed)))
    }
}

/// One journal entry: the bytes stored under its `seq` and, when the writer of the
/// entry has it at hand, its [`EntrySummary`] for readers that follow the head.
pub struct Entry {
    pub bytes: Vec<u8>,
    pub summary: Option<Arc<EntrySummary>>,
}

impl From<Vec<u8>> for Entry {
    fn from(bytes: Vec<u8>) -> Entry {
        Entry {
            bytes,
            summary: None,
        }
    }
}

/// Summaries of the most recent entries kept in memory, so followers of the head
/// (channel publication) read them without a RocksDB read and a decode each.
pub const RECENT_MAX: usize = 32_768;

/// The last durable entries' summaries, contiguous in `seq` (cleared when an entry
/// without a summary is written, so a reader never sees a gap).
#[derive(Default)]
struct Recent {
    entries: VecDeque<(u64, Arc<EntrySummary>)>,
}

impl Recent {
    /// Up to `limit` summaries with `seq > after`, or `None` when `after + 1` is no
    /// longer (or not yet) here.
    fn read(&self, after: u64, limit: usize) -> Option<Vec<(u64, Arc<EntrySummary>)>> {
        let first = self.entries.front()?.0;
        if after + 1 < first {
            return None;
        }
        let skip = usize::try_from(after + 1 - first).ok()?;
        if skip > self.entries.len() {
            return None;
        }
        let end = skip.saturating_add(limit).min(self.entries.len());
        Some(self.entries.range(skip..end).cloned().collect())
    }
}

struct AppendRequest {
    entries: Vec<Entry>,
    extra: WriteBatch,
    reply: oneshot::Sender<Result<u64, StorageError>>,
}

enum Message {
    /// Appends to commit together (one tick's batch, or one caller's append),
    /// and the sending thread's count of batches handed over, if it keeps one.
    Appends(Vec<AppendRequest>, Option<Arc<AtomicUsize>>),
    Stop,
}

/// Counters the journal exposes (tests and metrics read them).
#[derive(Default)]
pub struct JournalStats {
    pub appends: AtomicU64,
    /// Atomic writes (commits) made.
    pub batches: AtomicU64,
    pub entries: AtomicU64,
    /// Commits made on the appending thread at the end of its tick.
    pub tick_commits: AtomicU64,
    /// Writes that took longer than [`STALL_AFTER`].
    pub stalls: AtomicU64,
    /// Start of the write in progress (ms since the journal started, plus one), 0
    /// when none is.
    write_started_ms: AtomicU64,
}

impl JournalStats {
    /// How long the write in progress has run, if one is.
    pub fn write_in_progress(&self, epoch: Instant) -> Option<Duration> {
        let started = self.write_started_ms.load(Ordering::Acquire);
        if started == 0 {
            return None;
        }
        let now = epoch.elapsed().as_millis() as u64 + 1;
        Some(Duration::from_millis(now.saturating_sub(started)))
    }
}

pub struct JournalOptions {
    pub sync: bool,
    pub queue_max: usize,
    pub batch_max: usize,
    /// Observes the duration of each batch write, in seconds.
    pub on_write: Option<Box<dyn Fn(f64) + Send + Sync>>,
}

/// What every committing thread shares. `commit` holds `state` across numbering
/// and the write, so two threads' batches never interleave their `seq`s and a
/// batch is numbered only if every earlier one was written.
struct Committer {
    store: Arc<dyn Store>,
    state: Mutex<CommitState>,
    recent: Mutex<Recent>,
    poisoned: AtomicBool,
    stats: JournalStats,
    /// Appends reserved and not yet committed; at most `queue_max`.
    queued: AtomicUsize,
    queue_max: usize,
    batch_max: usize,
    sync: bool,
    /// Every batch goes to the writer thread (`fsync` mode, or a store whose
    /// writes wait on the network).
    offload: bool,
    on_write: Option<Box<dyn Fn(f64) + Send + Sync>>,
    epoch: Instant,
}

struct CommitState {
    next_seq: u64,
    head_sender: watch::Sender<u64>,
}

impl Committer {
    fn refuse(&self, requests: Vec<AppendRequest>, error: &StorageError) {
        self.queued.fetch_sub(requests.len(), Ordering::AcqRel);
        for request in requests {
            let _ = request.reply.send(Err(error.clone()));
        }
    }

    /// Numbers, writes and answers `requests` as one atomic batch, waiting
    /// for the commit lock.
    fn commit(&self, requests: Vec<AppendRequest>) {
        if requests.is_empty() {
            return;
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        self.commit_locked(state, requests);
    }

    /// Like [`Committer::commit`] if the commit lock is free; else hands the
    /// requests back at once (another thread is writing: this event loop does
    /// not wait for it).
    fn try_commit(&self, requests: Vec<AppendRequest>) -> Option<Vec<AppendRequest>> {
        match self.state.try_lock() {
            Ok(state) => {
                self.commit_locked(state, requests);
                None
            }
            Err(std::sync::TryLockError::Poisoned(poisoned)) => {
                self.commit_locked(poisoned.into_inner(), requests);
                None
            }
            Err(std::sync::TryLockError::WouldBlock) => Some(requests),
        }
    }

    fn commit_locked(
        &self,
        mut state: std::sync::MutexGuard<'_, CommitState>,
        requests: Vec<AppendRequest>,
    ) {
        if self.poisoned.load(Ordering::Acquire) {
            drop(state);
            self.refuse(requests, &StorageError::Poisoned);
            return;
        }
        let mut batch = WriteBatch::default();
        let mut replies = Vec::with_capacity(requests.len());
        let mut seq = state.next_seq;
        let mut entries = 0u64;
        let mut summaries = Vec::new();
        let count = requests.len();
        for mut request in requests {
            replies.push((seq, request.reply));
            for entry in request.entries.drain(..) {
                batch.put(Space::Journal, seq_key(seq), entry.bytes);
                summaries.push((seq, entry.summary));
                seq += 1;
                entries += 1;
            }
            batch.append(std::mem::take(&mut request.extra));
        }
        let started = Instant::now();
        self.stats.write_started_ms.store(
            self.epoch.elapsed().as_millis() as u64 + 1,
            Ordering::Release,
        );
        let result = self.store.write(batch, self.sync);
        self.stats.write_started_ms.store(0, Ordering::Release);
        let took = started.elapsed();
        if let Some(observe) = &self.on_write {
            observe(took.as_secs_f64());
        }
        if took >= STALL_AFTER {
            self.stats.stalls.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(took_ms = took.as_millis() as u64, "journal write stalled");
        }
        self.queued.fetch_sub(count, Ordering::AcqRel);
        match result {
            Ok(()) => {
                state.next_seq = seq;
                let evicted = self.remember(summaries);
                state.head_sender.send_replace(seq - 1);
                drop(state);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .appends
                    .fetch_add(count as u64, Ordering::Relaxed);
                self.stats.entries.fetch_add(entries, Ordering::Relaxed);
                for (first, reply) in replies {
                    let _ = reply.send(Ok(first));
                }
                // Freed after the replies, off the acknowledgement's path.
                drop(evicted);
            }
            Err(error) => {
                // Poisoned before the lock is released: no later batch, on any
                // thread, is written on top of the one that failed.
                self.poisoned.store(true, Ordering::Release);
                drop(state);
                tracing::error!(%error, "journal write failed, refusing further appends");
                for (_, reply) in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }

    /// Adds durable entries' summaries to the recent ring; returns what fell out.
    fn remember(
        &self,
        summaries: Vec<(u64, Option<Arc<EntrySummary>>)>,
    ) -> Vec<(u64, Arc<EntrySummary>)> {
        let mut evicted = Vec::new();
        let Ok(mut recent) = self.recent.lock() else {
            return evicted;
        };
        for (seq, summary) in summaries {
            match summary {
                Some(summary) => {
                    if recent.entries.len() >= RECENT_MAX {
                        evicted.extend(recent.entries.pop_front());
                    }
                    recent.entries.push_back((seq, summary));
                }
                None => evicted.extend(recent.entries.drain(..)),
            }
        }
        evicted
    }
}

/// Appends made on this thread during the current tick, per journal.
struct TickBatch {
    committer: Arc<Committer>,
    requests: Vec<AppendRequest>,
    /// This thread's batches handed to the writer and not yet written. While
    /// any is, later ones go the same way, behind it, so this thread's appends
    /// stay in order.
    handed_over: Arc<AtomicUsize>,
}

thread_local! {
    /// Usually one journal per thread; tests may run several on one thread.
    static TICK: RefCell<Vec<TickBatch>> = const { RefCell::new(Vec::new()) };
}

fn with_tick<R>(committer: &Arc<Committer>, f: impl FnOnce(&mut TickBatch) -> R) -> R {
    TICK.with(|tick| {
        let mut tick = tick.borrow_mut();
        let index = match tick
            .iter()
            .position(|batch| Arc::ptr_eq(&batch.committer, committer))
        {
            Some(index) => index,
            None => {
                tick.push(TickBatch {
                    committer: committer.clone(),
                    requests: Vec::new(),
                    handed_over: Arc::new(AtomicUsize::new(0)),
                });
                tick.len() - 1
            }
        };
        f(&mut tick[index])
    })
}

pub struct Journal {
    committer: Arc<Committer>,
    /// The writer thread's queue (bounded by `queue_max` through `queued`).
    sender: Sender<Message>,
    head: watch::Receiver<u64>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Journal {
    /// Starts the writer; `head` is the last durable `seq` (0 when empty).
    /// If the writer thread cannot be spawned the journal starts poisoned:
    /// every append is refused and readiness reports it.
    pub fn start(store: Arc<dyn Store>, head: u64, options: JournalOptions) -> Journal {
        let queue_max = options.queue_max.max(1);
        let (sender, receiver) = bounded(queue_max + 1);
        let (head_sender, head_receiver) = watch::channel(head);
        let store_waits = store.waits_on_network();
        let committer = Arc::new(Committer {
            store,
            state: Mutex::new(CommitState {
                next_seq: head + 1,
                head_sender,
            }),
            recent: Mutex::new(Recent::default()),
            poisoned: AtomicBool::new(false),
            stats: JournalStats::default(),
            queued: AtomicUsize::new(0),
            queue_max,
            batch_max: options.batch_max.max(1),
            sync: options.sync,
            offload: options.sync || store_waits,
            on_write: options.on_write,
            epoch: Instant::now(),
        });
        let writer = Writer {
            committer: committer.clone(),
            receiver,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".to_string())
            .spawn(move || writer.run())
            .map_err(|error| {
                tracing::error!(%error, "journal writer thread could not start");
                committer.poisoned.store(true, Ordering::Release);
            })
            .ok();
        Journal {
            committer,
            sender,
            head: head_receiver,
            writer: Mutex::new(handle),
        }
    }

    /// Takes a place in the queue, or refuses at once when it is full or the
    /// journal is poisoned. Callers reserve *before* changing state, so a
    /// refusal leaves nothing to undo.
    pub fn reserve(&self) -> Result<AppendPermit<'_>, AppendError> {
        let committer = &self.committer;
        if committer.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        let taken = committer.queued.fetch_add(1, Ordering::AcqRel);
        if taken >= committer.queue_max {
            committer.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StorageError::Overloaded);
        }
        Ok(AppendPermit {
            journal: self,
            used: false,
        })
    }

    /// Queues an append without blocking (`reserve` + `send`).
    pub fn append(&self, entries: Vec<Entry>, extra: WriteBatch) -> Result<Ticket, AppendError> {
        Ok(self.reserve()?.send(entries, extra))
    }

    /// The last durable `seq`.
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Wakes on every new durable head (SSE streams and publishers follow it).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    pub fn is_poisoned(&self) -> bool {
        self.committer.poisoned.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.committer.stats
    }

    /// How long the write in progress has run (a stall while it lasts).
    pub fn write_in_progress(&self) -> Option<Duration> {
        self.committer.stats.write_in_progress(self.committer.epoch)
    }

    /// Up to `limit` summaries of durable entries with `seq > after`, in order: from
    /// memory when they are recent enough, else read back and decoded.
    pub fn read_summaries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Arc<EntrySummary>)>, StorageError> {
        if let Ok(recent) = self.committer.recent.lock() {
            if let Some(found) = recent.read(after, limit) {
                return Ok(found);
            }
        }
        self.read(after, limit)?
            .into_iter()
            .map(|(seq, bytes)| {
                let record = JournalRecord::decode(&bytes)?;
                Ok((seq, Arc::new(EntrySummary::of(&record))))
            })
            .collect()
    }

    /// Up to `limit` durable entries with `seq > after`, in order.
    pub fn read(&self, after: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let mut entries = Vec::new();
        let head = self.head();
        if after >= head || limit == 0 {
            return Ok(entries);
        }
        let mut failure = None;
        self.committer
            .store
            .scan(
                Space::Journal,
                &seq_key(after + 1),
                &mut |key, value| match super::seq_from_key(key) {
                    Ok(seq) if seq <= head => {
                        entries.push((seq, value.to_vec()));
                        entries.len() < limit
                    }
                    Ok(_) => false,
                    Err(error) => {
                        failure = Some(error);
                        false
                    }
                },
            )?;
        match failure {
            Some(error) => Err(error),
            None => Ok(entries),
        }
    }

    /// Writes everything queued so far, then stops the writer.
    pub fn shutdown(&self) {
        let _ = self.sender.send(Message::Stop);
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    /// Hands `requests` to the writer thread (it answers `Closed` after shutdown).
    fn send_to_writer(
        sender: &Sender<Message>,
        committer: &Committer,
        requests: Vec<AppendRequest>,
        handed_over: Option<Arc<AtomicUsize>>,
    ) {
        match sender.try_send(Message::Appends(requests, handed_over)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Appends(requests, handed_over)))
            | Err(TrySendError::Disconnected(Message::Appends(requests, handed_over))) => {
                committer.refuse(requests, &StorageError::Closed);
                if let Some(count) = handed_over {
                    count.fetch_sub(1, Ordering::AcqRel);
                }
            }
            Err(_) => {}
        }
    }
}

/// Commits this thread's tick batch: yields once, so every task already
/// runnable in this tick adds its appends first, then writes them in batches of
/// `batch_max`: inline in `wal` mode when the commit lock is free; else (another
/// thread is writing; `fsync` mode, whose group commit shares one fsync among
/// every thread's batches; or a store that waits on the network) handed to the
/// writer thread.
async fn flush_tick(committer: Arc<Committer>, sender: Sender<Message>) {
    tokio::task::yield_now().await;
    loop {
        let (requests, handed_over) = with_tick(&committer, |tick| {
            let take = tick.requests.len().min(committer.batch_max);
            (
                tick.requests.drain(..take).collect::<Vec<_>>(),
                tick.handed_over.clone(),
            )
        });
        if requests.is_empty() {
            return;
        }
        let requests = if committer.offload || handed_over.load(Ordering::Acquire) > 0 {
            Some(requests)
        } else {
            let left = committer.try_commit(requests);
            if left.is_none() {
                committer.stats.tick_commits.fetch_add(1, Ordering::Relaxed);
            }
            left
        };
        if let Some(requests) = requests {
            handed_over.fetch_add(1, Ordering::AcqRel);
            Journal::send_to_writer(&sender, &committer, requests, Some(handed_over));
        }
    }
}

/// A reserved place in the journal queue; dropping it unused gives it back.
pub struct AppendPermit<'a> {
    journal: &'a Journal,
    used: bool,
}

impl AppendPermit<'_> {
    /// Queues the append: into this thread's tick batch on an actix arbiter,
    /// else to the writer thread. Cannot be refused for space (the place is
    /// reserved); after shutdown the ticket resolves to `Closed`.
    pub fn send(mut self, entries: Vec<Entry>, extra: WriteBatch) -> Ticket {
        self.used = true;
        let (reply, receiver) = oneshot::channel();
        let request = AppendRequest {
            entries,
            extra,
            reply,
        };
        let journal = self.journal;
        if actix_rt::Arbiter::try_current().is_some() {
            let first = with_tick(&journal.committer, |tick| {
                tick.requests.push(request);
                tick.requests.len() == 1
            });
            if first {
                actix_rt::spawn(flush_tick(
                    journal.committer.clone(),
                    journal.sender.clone(),
                ));
            }
        } else {
            Journal::send_to_writer(&journal.sender, &journal.committer, vec![request], None);
        }
        Ticket { receiver }
    }
}

impl Drop for AppendPermit<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.journal.committer.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// The writer thread: group-commits what is sent to it and watches for stalls.
struct Writer {
    committer: Arc<Committer>,
    receiver: Receiver<Message>,
}

impl Writer {
    fn run(self) {
        let mut stalled_seen = false;
        loop {
            let mut requests = Vec::new();
            let mut counts = Vec::new();
            let mut take = |message: Message, requests: &mut Vec<AppendRequest>| match message {
                Message::Appends(more, count) => {
                    requests.extend(more);
                    counts.extend(count);
                    false
                }
                Message::Stop => true,
            };
            let mut stop = match self.receiver.recv_timeout(WATCHDOG_EVERY) {
                Ok(message) => take(message, &mut requests),
                Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => {
                    stalled_seen = self.watch(stalled_seen);
                    continue;
                }
            };
            while !stop && requests.len() < self.committer.batch_max {
                match self.receiver.try_recv() {
                    Ok(message) => stop = take(message, &mut requests),
                    Err(_) => break,
                }
            }
            self.committer.commit(requests);
            for count in counts {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            if stop {
                // Anything that raced in after Stop is refused, not dropped silently.
                while let Ok(message) = self.receiver.try_recv() {
                    if let Message::Appends(requests, count) = message {
                        self.committer.refuse(requests, &StorageError::Closed);
                        if let Some(count) = count {
                            count.fetch_sub(1, Ordering::AcqRel);
                        }
                    }
                }
                return;
            }
        }
    }

    /// Logs a write in progress past [`STALL_AFTER`] once (it is counted when it
    /// ends); true while one is.
    fn watch(&self, seen: bool) -> bool {
        match self.committer.stats.write_in_progress(self.committer.epoch) {
            Some(age) if age >= STALL_AFTER => {
                if !seen {
                    tracing::error!(
                        age_ms = age.as_millis() as u64,
                        "journal write in progress is stalled"
                    );
                }
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    fn options() -> JournalOptions {
        JournalOptions {
            sync: false,
            queue_max: 1024,
            batch_max: 64,
            on_write: None,
        }
    }

    fn summarised(sku: &str, version: u64) -> Entry {
        let record = JournalRecord {
            sku: sku.to_string(),
            location: "wh-east".to_string(),
            event: crate::domain::Event {
                kind: crate::domain::EventKind::Received,
                reservation_id: None,
                channel: None,
                delta: crate::domain::Delta::default(),
                commitment_used: 0,
                commitment_qty: None,
            },
            version,
            counters: crate::domain::Counters::default(),
            event_id: format!("e-{version}"),
            source: "test".to_string(),
            correlation_id: "c".to_string(),
            occurred_at_ms: 1,
            recorded_at_ms: 2,
            commitments: Vec::new(),
        };
        Entry {
            bytes: crate::storage::codec::encode(&record).unwrap(),
            summary: Some(Arc::new(EntrySummary::of(&record))),
        }
    }

    #[tokio::test]
    async fn recent_summaries_come_from_memory_and_match_the_stored_entries() {
        let store = Arc::new(MemoryStore::new());
        let journal = Journal::start(store, 0, options());
        let stored = |journal: &Journal, after| -> Vec<(u64, Arc<EntrySummary>)> {
            journal
                .read(after, 100)
                .unwrap()
                .into_iter()
                .map(|(seq, b)| {
                    let record = JournalRecord::decode(&b).unwrap();
                    (seq, Arc::new(EntrySummary::of(&record)))
                })
                .collect()
        };
        // Seq 1 has no summary: it is only on disk.
        journal
            .append(vec![vec![9].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        for version in 1..=3 {
            let entries = vec![summarised("a", version), summarised("b", version)];
            journal
                .append(entries, WriteBatch::default())
                .unwrap()
                .await
                .unwrap();
        }
        assert_eq!(journal.head(), 7);
        let recent = journal
            .committer
            .recent
            .lock()
            .unwrap()
            .read(1, 100)
            .unwrap();
        assert_eq!(recent, stored(&journal, 1));
        assert_eq!(recent.len(), 6);
        assert_eq!(
            journal.read_summaries(3, 2).unwrap(),
            stored(&journal, 3)[..2]
        );
        assert_eq!(journal.read_summaries(7, 10).unwrap(), Vec::new());
        // Before the ring starts: not in memory, read back (and seq 1 does not decode).
        assert!(journal
            .committer
            .recent
            .lock()
            .unwrap()
            .read(0, 100)
            .is_none());
        assert!(journal.read_summaries(0, 10).is_err());
        // An entry without a summary empties the ring, so it never has a gap.
        journal
            .append(vec![vec![9].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        assert!(journal.committer.recent.lock().unwrap().entries.is_empty());
        journal
            .append(vec![summarised("a", 4)], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        assert!(journal
            .committer
            .recent
            .lock()
            .unwrap()
            .read(7, 10)
            .is_none());
        assert_eq!(journal.read_summaries(8, 10).unwrap(), stored(&journal, 8));
    }

    #[tokio::test]
    async fn sequences_are_gap_free_across_concurrent_appends() {
        let store = Arc::new(MemoryStore::new());
        let journal = Arc::new(Journal::start(store, 0, options()));
        let mut tickets = Vec::new();
        for i in 0..200u8 {
            let entries: Vec<Entry> = (0..usize::from(i % 3) + 1)
                .map(|_| vec![i].into())
                .collect();
            tickets.push((
                entries.len(),
                journal.append(entries, WriteBatch::default()).unwrap(),
            ));
        }
        let mut firsts = Vec::new();
        for (count, ticket) in tickets {
            firsts.push((ticket.await.unwrap(), count));
        }
        let mut expected = 1;
        for (first, count) in firsts {
            assert_eq!(first, expected);
            expected += count as u64;
        }
        assert_eq!(journal.head(), expected - 1);
        let all = journal.read(0, 10_000).unwrap();
        let seqs: Vec<u64> = all.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..expected).collect::<Vec<_>>());
        assert_eq!(journal.read(5, 3).unwrap().len(), 3);
        journal.shutdown();
    }

    #[tokio::test]
    async fn a_failed_write_poisons_the_journal() {
        let store = Arc::new(MemoryStore::new());
        let journal = Journal::start(store.clone(), 0, options());
        journal
            .append(vec![vec![1].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        store.set_failing(true);
        let failed = journal
            .append(vec![vec![2].into()], WriteBatch::default())
            .unwrap()
            .await;
        assert!(failed.is_err());
        store.set_failing(false);
        assert!(matches!(
            journal.append(vec![vec![3].into()], WriteBatch::default()),
            Err(StorageError::Poisoned)
        ));
        assert_eq!(journal.head(), 1);
        journal.shutdown();
    }

    #[tokio::test]
    async fn appends_queued_during_a_write_commit_together() {
        let store = Arc::new(MemoryStore::new());
        let journal = Journal::start(
            store,
            0,
            JournalOptions {
                sync: false,
                queue_max: 1024,
                batch_max: 64,
                // A slow write: everything appended meanwhile waits in the queue.
                on_write: Some(Box::new(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                })),
            },
        );
        let tickets: Vec<_> = (0..200u8)
            .map(|i| {
                journal
                    .append(vec![vec![i].into()], WriteBatch::default())
                    .unwrap()
            })
            .collect();
        for ticket in tickets {
            ticket.await.unwrap();
        }
        let stats = journal.stats();
        assert_eq!(stats.appends.load(Ordering::Relaxed), 200);
        assert_eq!(stats.entries.load(Ordering::Relaxed), 200);
        let batches = stats.batches.load(Ordering::Relaxed);
        assert!(batches <= 10, "200 appends took {batches} writes");
        journal.shutdown();
    }

    #[test]
    fn a_full_queue_is_refused_not_buffered() {
        let store = Arc::new(MemoryStore::new());
        store.set_failing(false);
        let journal = Journal::start(
            store,
            0,
            JournalOptions {
                sync: false,
                queue_max: 1,
                batch_max: 1,
                on_write: Some(Box::new(|_| {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                })),
            },
        );
        let mut refused = 0;
        for _ in 0..50 {
            if matches!(
                journal.append(vec![vec![0].into()], WriteBatch::default()),
                Err(StorageError::Overloaded)
            ) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        journal.shutdown();
    }

    /// Appends made in one tick of an arbiter commit as one write, on that thread.
    #[actix_rt::test]
    async fn appends_of_one_tick_commit_together_on_the_appending_thread() {
        let store = Arc::new(MemoryStore::new());
        let journal = Journal::start(store, 0, options());
        let tickets: Vec<Ticket> = (0..100u8)
            .map(|i| {
                journal
                    .append(vec![vec![i].into()], WriteBatch::default())
                    .unwrap()
            })
            .collect();
        let mut firsts = Vec::new();
        for ticket in tickets {
            firsts.push(ticket.await.unwrap());
        }
        assert_eq!(firsts, (1..=100).collect::<Vec<u64>>());
        let stats = journal.stats();
        // batch_max is 64: two writes, both made by this thread's flush.
        assert_eq!(stats.batches.load(Ordering::Relaxed), 2);
        assert_eq!(stats.tick_commits.load(Ordering::Relaxed), 2);
        assert_eq!(journal.head(), 100);
        journal.shutdown();
    }

    /// Several arbiters committing at once: `seq` stays gap-free and each
    /// append's entries stay contiguous.
    #[actix_rt::test]
    async fn ticks_on_several_threads_number_without_gaps() {
        let store = Arc::new(MemoryStore::new());
        let journal = Arc::new(Journal::start(store, 0, options()));
        let arbiters: Vec<actix_rt::Arbiter> = (0..3).map(|_| actix_rt::Arbiter::new()).collect();
        let (sender, mut results) = tokio::sync::mpsc::unbounded_channel();
        for (index, arbiter) in arbiters.iter().enumerate() {
            let journal = journal.clone();
            let sender = sender.clone();
            arbiter.spawn(async move {
                for round in 0..50u8 {
                    let tickets: Vec<(usize, Ticket)> = (0..(round % 5) + 1)
                        .map(|n| {
                            let count = usize::from(n % 3) + 1;
                            let entries = (0..count).map(|_| vec![index as u8].into()).collect();
                            (
                                count,
                                journal.append(entries, WriteBatch::default()).unwrap(),
                            )
                        })
                        .collect();
                    for (count, ticket) in tickets {
                        let _ = sender.send((ticket.await.unwrap(), count, index));
                    }
                }
            });
        }
        drop(sender);
        let mut all = Vec::new();
        while let Some(result) = results.recv().await {
            all.push(result);
        }
        all.sort();
        let mut expected = 1;
        for (first, count, _) in &all {
            assert_eq!(*first, expected, "appends do not overlap or leave gaps");
            expected += *count as u64;
        }
        assert_eq!(journal.head(), expected - 1);
        // Each append's entries were written under its own seqs, by its thread.
        let stored = journal.read(0, 100_000).unwrap();
        for (first, count, index) in &all {
            for seq in *first..*first + *count as u64 {
                assert_eq!(stored[(seq - 1) as usize].1, vec![*index as u8]);
            }
        }
        for arbiter in arbiters {
            arbiter.stop();
            arbiter.join().unwrap();
        }
        journal.shutdown();
    }

    /// A write that fails on one thread stops every other thread's appends: none
    /// is acknowledged after it, and the durable journal has no gap.
    #[actix_rt::test]
    async fn a_failed_tick_on_one_thread_stops_appends_on_all() {
        let store = Arc::new(MemoryStore::new());
        let journal = Arc::new(Journal::start(store.clone(), 0, options()));
        journal
            .append(vec![vec![1].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        let other = actix_rt::Arbiter::new();
        store.set_failing(true);
        let failing = journal.clone();
        let (done, failed) = tokio::sync::oneshot::channel();
        other.spawn(async move {
            let result = failing
                .append(vec![vec![2].into()], WriteBatch::default())
                .unwrap()
                .await;
            let _ = done.send(result);
        });
        assert!(
            failed.await.unwrap().is_err(),
            "the failed write is not acknowledged"
        );
        store.set_failing(false);
        // This thread's next append is refused, though the store works again.
        assert!(matches!(
            journal.append(vec![vec![3].into()], WriteBatch::default()),
            Err(StorageError::Poisoned)
        ));
        assert!(journal.is_poisoned());
        assert_eq!(journal.head(), 1);
        other.stop();
        other.join().unwrap();
        journal.shutdown();
    }
}
