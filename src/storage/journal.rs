//! The journal: a single writer thread that owns sequence numbers and
//! group-commits appends.
//!
//! Callers enqueue an append (encoded entries plus any writes that must land
//! atomically with them) into a bounded queue and get a oneshot that resolves
//! once the batch is durable. The writer drains up to `batch_max` requests,
//! numbers their entries with consecutive `seq`s, and writes them as one
//! atomic batch (fsync'd in `fsync` mode). `seq` is therefore gap-free and in
//! append order. A failed write poisons the journal (fail-stop): every later
//! append fails, because in-memory state may be ahead of the durable state;
//! a restart recovers from what is durable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tokio::sync::{oneshot, watch};

use super::records::{EntrySummary, JournalRecord};
use super::{seq_key, Space, StorageError, Store, WriteBatch};

pub type AppendError = StorageError;

/// Resolves to the first `seq` of the append's entries once durable.
pub type AppendTicket = oneshot::Receiver<Result<u64, StorageError>>;

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
    Append(AppendRequest),
    Stop,
}

/// Counters the journal exposes (tests and metrics read them).
#[derive(Default)]
pub struct JournalStats {
    pub appends: AtomicU64,
    pub batches: AtomicU64,
    pub entries: AtomicU64,
}

pub struct Journal {
    /// Bounded: a full queue is answered `Overloaded` (503), never buffered.
    sender: Sender<Message>,
    /// Appends reserved or queued; at most `queue_max` (see [`Journal::reserve`]).
    queued: Arc<AtomicUsize>,
    queue_max: usize,
    head: watch::Receiver<u64>,
    poisoned: Arc<AtomicBool>,
    stats: Arc<JournalStats>,
    store: Arc<dyn Store>,
    recent: Arc<Mutex<Recent>>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

pub struct JournalOptions {
    pub sync: bool,
    pub queue_max: usize,
    pub batch_max: usize,
    /// Observes the duration of each batch write, in seconds.
    pub on_write: Option<Box<dyn Fn(f64) + Send>>,
}

impl Journal {
    /// Starts the writer; `head` is the last durable `seq` (0 when empty).
    /// If the writer thread cannot be spawned the journal starts poisoned:
    /// every append is refused and readiness reports it.
    pub fn start(store: Arc<dyn Store>, head: u64, options: JournalOptions) -> Journal {
        let queue_max = options.queue_max.max(1);
        let (sender, receiver) = bounded(queue_max + 1);
        let queued = Arc::new(AtomicUsize::new(0));
        let (head_sender, head_receiver) = watch::channel(head);
        let poisoned = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(JournalStats::default());
        let recent = Arc::new(Mutex::new(Recent::default()));
        let writer = Writer {
            recent: recent.clone(),
            store: store.clone(),
            receiver,
            head_sender,
            next_seq: head + 1,
            poisoned: poisoned.clone(),
            stats: stats.clone(),
            queued: queued.clone(),
            options,
        };
        let handle = std::thread::Builder::new()
            .name("journal-writer".to_string())
            .spawn(move || writer.run())
            .map_err(|error| {
                tracing::error!(%error, "journal writer thread could not start");
                poisoned.store(true, Ordering::Release);
            })
            .ok();
        Journal {
            sender,
            queued,
            queue_max,
            head: head_receiver,
            poisoned,
            stats,
            store,
            recent,
            writer: Mutex::new(handle),
        }
    }

    /// Takes a place in the queue, or refuses at once when it is full or the
    /// journal is poisoned. Callers reserve *before* changing state, so a
    /// refusal leaves nothing to undo.
    pub fn reserve(&self) -> Result<AppendPermit<'_>, AppendError> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(StorageError::Poisoned);
        }
        let taken = self.queued.fetch_add(1, Ordering::AcqRel);
        if taken >= self.queue_max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(StorageError::Overloaded);
        }
        Ok(AppendPermit {
            journal: self,
            used: false,
        })
    }

    /// Enqueues an append without blocking (`reserve` + `send`).
    pub fn append(
        &self,
        entries: Vec<Entry>,
        extra: WriteBatch,
    ) -> Result<AppendTicket, AppendError> {
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
        self.poisoned.load(Ordering::Acquire)
    }

    pub fn stats(&self) -> &JournalStats {
        &self.stats
    }

    /// Up to `limit` summaries of durable entries with `seq > after`, in order: from
    /// memory when they are recent enough, else read back and decoded.
    pub fn read_summaries(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Arc<EntrySummary>)>, StorageError> {
        if let Ok(recent) = self.recent.lock() {
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
        self.store
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
}

/// A reserved place in the journal queue; dropping it unused gives it back.
pub struct AppendPermit<'a> {
    journal: &'a Journal,
    used: bool,
}

impl AppendPermit<'_> {
    /// Queues the append. Cannot be refused for space (the place is
    /// reserved); after shutdown the ticket resolves to `Closed`.
    pub fn send(mut self, entries: Vec<Entry>, extra: WriteBatch) -> AppendTicket {
        self.used = true;
        let (reply, ticket) = oneshot::channel();
        let request = AppendRequest {
            entries,
            extra,
            reply,
        };
        match self.journal.sender.try_send(Message::Append(request)) {
            Ok(()) => {}
            Err(TrySendError::Full(Message::Append(request)))
            | Err(TrySendError::Disconnected(Message::Append(request))) => {
                self.journal.queued.fetch_sub(1, Ordering::AcqRel);
                let _ = request.reply.send(Err(StorageError::Closed));
            }
            Err(_) => {}
        }
        ticket
    }
}

impl Drop for AppendPermit<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.journal.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Writer {
    store: Arc<dyn Store>,
    recent: Arc<Mutex<Recent>>,
    receiver: Receiver<Message>,
    head_sender: watch::Sender<u64>,
    next_seq: u64,
    poisoned: Arc<AtomicBool>,
    stats: Arc<JournalStats>,
    queued: Arc<AtomicUsize>,
    options: JournalOptions,
}

impl Writer {
    fn receive(&self, message: Result<Message, ()>) -> Option<Message> {
        let message = message.ok()?;
        if matches!(message, Message::Append(_)) {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
        Some(message)
    }

    fn run(mut self) {
        let mut requests = Vec::with_capacity(self.options.batch_max);
        loop {
            let mut stop = match self.receive(self.receiver.recv().map_err(drop)) {
                Some(Message::Append(request)) => {
                    requests.push(request);
                    false
                }
                Some(Message::Stop) | None => true,
            };
            while !stop && requests.len() < self.options.batch_max {
                match self.receive(self.receiver.try_recv().map_err(drop)) {
                    Some(Message::Append(request)) => requests.push(request),
                    Some(Message::Stop) => stop = true,
                    None => break,
                }
            }
            if !requests.is_empty() {
                self.commit(&mut requests);
            }
            if stop {
                // Anything that raced in after Stop is refused, not dropped silently.
                while let Some(Message::Append(request)) =
                    self.receive(self.receiver.try_recv().map_err(drop))
                {
                    let _ = request.reply.send(Err(StorageError::Closed));
                }
                return;
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

    fn commit(&mut self, requests: &mut Vec<AppendRequest>) {
        if self.poisoned.load(Ordering::Acquire) {
            for request in requests.drain(..) {
                let _ = request.reply.send(Err(StorageError::Poisoned));
            }
            return;
        }
        let mut batch = WriteBatch::default();
        let mut firsts = Vec::with_capacity(requests.len());
        let mut seq = self.next_seq;
        let mut entries = 0u64;
        let mut summaries = Vec::new();
        for request in requests.iter_mut() {
            firsts.push(seq);
            for entry in request.entries.drain(..) {
                batch.put(Space::Journal, seq_key(seq), entry.bytes);
                summaries.push((seq, entry.summary));
                seq += 1;
                entries += 1;
            }
            batch.append(std::mem::take(&mut request.extra));
        }
        let started = Instant::now();
        let result = self.store.write(batch, self.options.sync);
        if let Some(observe) = &self.options.on_write {
            observe(started.elapsed().as_secs_f64());
        }
        match result {
            Ok(()) => {
                self.next_seq = seq;
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .appends
                    .fetch_add(requests.len() as u64, Ordering::Relaxed);
                self.stats.entries.fetch_add(entries, Ordering::Relaxed);
                let evicted = self.remember(summaries);
                self.head_sender.send_replace(seq - 1);
                for (request, first) in requests.drain(..).zip(firsts) {
                    let _ = request.reply.send(Ok(first));
                }
                // Freed after the replies, off the acknowledgement's path.
                drop(evicted);
            }
            Err(error) => {
                tracing::error!(%error, "journal write failed, refusing further appends");
                self.poisoned.store(true, Ordering::Release);
                for request in requests.drain(..) {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
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
            .unwrap()
            .unwrap();
        for version in 1..=3 {
            let entries = vec![summarised("a", version), summarised("b", version)];
            journal
                .append(entries, WriteBatch::default())
                .unwrap()
                .await
                .unwrap()
                .unwrap();
        }
        assert_eq!(journal.head(), 7);
        let recent = journal.recent.lock().unwrap().read(1, 100).unwrap();
        assert_eq!(recent, stored(&journal, 1));
        assert_eq!(recent.len(), 6);
        assert_eq!(
            journal.read_summaries(3, 2).unwrap(),
            stored(&journal, 3)[..2]
        );
        assert_eq!(journal.read_summaries(7, 10).unwrap(), Vec::new());
        // Before the ring starts: not in memory, read back (and seq 1 does not decode).
        assert!(journal.recent.lock().unwrap().read(0, 100).is_none());
        assert!(journal.read_summaries(0, 10).is_err());
        // An entry without a summary empties the ring, so it never has a gap.
        journal
            .append(vec![vec![9].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(journal.recent.lock().unwrap().entries.is_empty());
        journal
            .append(vec![summarised("a", 4)], WriteBatch::default())
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        assert!(journal.recent.lock().unwrap().read(7, 10).is_none());
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
            firsts.push((ticket.await.unwrap().unwrap(), count));
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
            .unwrap()
            .unwrap();
        store.set_failing(true);
        let failed = journal
            .append(vec![vec![2].into()], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
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
            ticket.await.unwrap().unwrap();
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
}
