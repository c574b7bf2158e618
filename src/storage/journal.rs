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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tokio::sync::{oneshot, watch};

use super::{seq_key, Space, StorageError, Store, WriteBatch};

pub type AppendError = StorageError;

/// Resolves to the first `seq` of the append's entries once durable.
pub type AppendTicket = oneshot::Receiver<Result<u64, StorageError>>;

struct AppendRequest {
    entries: Vec<Vec<u8>>,
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
        let writer = Writer {
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
        entries: Vec<Vec<u8>>,
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
    pub fn send(mut self, entries: Vec<Vec<u8>>, extra: WriteBatch) -> AppendTicket {
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
        for request in requests.iter_mut() {
            firsts.push(seq);
            for entry in request.entries.drain(..) {
                batch.put(Space::Journal, seq_key(seq), entry);
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
                self.head_sender.send_replace(seq - 1);
                for (request, first) in requests.drain(..).zip(firsts) {
                    let _ = request.reply.send(Ok(first));
                }
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

    #[tokio::test]
    async fn sequences_are_gap_free_across_concurrent_appends() {
        let store = Arc::new(MemoryStore::new());
        let journal = Arc::new(Journal::start(store, 0, options()));
        let mut tickets = Vec::new();
        for i in 0..200u8 {
            let entries = vec![vec![i]; usize::from(i % 3) + 1];
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
            .append(vec![vec![1]], WriteBatch::default())
            .unwrap()
            .await
            .unwrap()
            .unwrap();
        store.set_failing(true);
        let failed = journal
            .append(vec![vec![2]], WriteBatch::default())
            .unwrap()
            .await
            .unwrap();
        assert!(failed.is_err());
        store.set_failing(false);
        assert!(matches!(
            journal.append(vec![vec![3]], WriteBatch::default()),
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
                    .append(vec![vec![i]], WriteBatch::default())
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
                journal.append(vec![vec![0]], WriteBatch::default()),
                Err(StorageError::Overloaded)
            ) {
                refused += 1;
            }
        }
        assert!(refused > 0);
        journal.shutdown();
    }
}
