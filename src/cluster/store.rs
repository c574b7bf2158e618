//! The store of an owner in cluster mode: every write goes to the journal stream
//! first, fenced by the stream's last sequence, and into the local RocksDB only
//! once the stream acknowledged it. The local store is then always a prefix of the
//! stream, so a node that loses ownership (or crashes) rejoins as a follower of it,
//! and a successor's RocksDB is the same store, replicated.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;

use super::frame::{self, NODE_HEADER, PART_HEADER};
use super::link::{is_fence, AckFuture, AppendFailure, WriteLink};
use super::{write_applied, Node, PARTS_MAX};
use crate::storage::{Pipeline, RocksStore, Space, StorageError, Store, WriteBatch};

pub struct ReplicatedStore {
    local: Arc<RocksStore>,
    link: WriteLink,
    node: Arc<Node>,
    /// This owner's writes: held while one is begun, waited on or finished, so
    /// the stream and the local store see them in one order.
    chain: Mutex<Chain>,
}

/// An owner's writes to the stream, in the order they were begun.
#[derive(Default)]
struct Chain {
    /// The stream's last sequence as this owner wrote it (0: not the owner
    /// yet): where the last finished write landed.
    last: u64,
    /// Writes begun and not finished, oldest first.
    in_flight: VecDeque<InFlight>,
    /// A write failed: every write after it fails too.
    broken: bool,
}

/// A write begun and not finished.
struct InFlight {
    batch: WriteBatch,
    sync: bool,
    sending: Sending,
    deadline: Instant,
}

enum Sending {
    /// Not sent: why it fails.
    Refused(StorageError),
    /// A write in parts: sent, part after part, when it is finished (it never
    /// overlaps another).
    Parts(Vec<Vec<u8>>),
    /// One message, sent when begun.
    One(Message),
}

struct Message {
    headers: HeaderMap,
    payload: bytes::Bytes,
    /// The sequence the stream's last must be (where the write before it lands).
    expected: u64,
    msg_id: String,
    /// Sent while the write before it was unanswered: chained to that write's
    /// id, and its refusal is final only once that write has landed.
    pipelined: bool,
    ack: Option<AckFuture>,
    /// The stream's first answer: where it landed, or why not and whether
    /// that was a fence (or why it could not be sent).
    answer: Option<Result<u64, (String, bool)>>,
}

impl ReplicatedStore {
    /// The store, and a thread that keeps its append connection alive while
    /// nothing writes (a follower's, or an idle owner's): the connection's
    /// runtime runs only while a thread drives it.
    pub fn new(local: Arc<RocksStore>, link: WriteLink, node: Arc<Node>) -> Arc<ReplicatedStore> {
        let store = Arc::new(ReplicatedStore {
            local,
            link,
            node,
            chain: Mutex::new(Chain::default()),
        });
        let weak = Arc::downgrade(&store);
        let kept = std::thread::Builder::new()
            .name("journal-link".to_string())
            .spawn(move || keep_alive(weak));
        if let Err(error) = kept {
            // Appends still work: a dead connection reconnects within the
            // append's retries.
            tracing::warn!(%error, "the journal connection's keep-alive thread did not start");
        }
        store
    }

    fn chain(&self) -> std::sync::MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ownership granted: the takeover marker landed at `epoch`.
    pub fn grant(&self, epoch: u64) {
        self.chain().last = epoch;
    }

    fn refusal(failure: AppendFailure) -> StorageError {
        match failure {
            AppendFailure::Fenced(why) => StorageError::Io(format!(
                "another node owns the journal now ({why}); this node steps down"
            )),
            // Whether it landed is unknown: the node cannot go on writing on top
            // of it. It steps down; its successor (or itself, restarted) reads the
            // stream to find out.
            AppendFailure::Unavailable(why) => {
                StorageError::Io(format!("journal stream unavailable: {why}"))
            }
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.node.config.append_timeout_ms)
    }

    /// How `batch` goes to the stream, behind the writes in flight; `None`
    /// when it cannot overlap them.
    fn sending(&self, chain: &Chain, batch: &WriteBatch) -> Option<Sending> {
        let ahead = &chain.in_flight;
        if chain.broken
            || ahead
                .iter()
                .any(|w| matches!(w.sending, Sending::Refused(_)))
        {
            return Some(Sending::Refused(StorageError::Io(
                "a journal write before this one failed".to_string(),
            )));
        }
        if chain.last == 0 || !self.node.may_write() {
            return Some(Sending::Refused(StorageError::Io(
                "this node does not own the journal".to_string(),
            )));
        }
        let mut parts = match frame::encode(&batch.ops, self.link.part_bytes) {
            Ok(parts) => parts,
            Err(error) => return Some(Sending::Refused(error)),
        };
        let count = parts.len();
        if count > PARTS_MAX as usize {
            return Some(Sending::Refused(StorageError::Io(format!(
                "a write of {count} stream messages is more than the {PARTS_MAX} a follower takes"
            ))));
        }
        let before = ahead.back().map(|w| &w.sending);
        if count > 1 || matches!(before, Some(Sending::Parts(_))) {
            return ahead.is_empty().then_some(Sending::Parts(parts));
        }
        // Every write ahead is one message that lands right after the one before.
        let expected = chain.last + ahead.len() as u64;
        let msg_id = format!("{}:{}", self.node.incarnation, expected + 1);
        let mut headers = HeaderMap::new();
        headers.insert(NODE_HEADER, self.node.config.node.as_str());
        if let Some(Sending::One(before)) = before {
            headers.insert(AFTER_HEADER, before.msg_id.as_str());
        }
        let pipelined = before.is_some();
        let payload = bytes::Bytes::from(parts.pop().unwrap_or_default());
        let mut first = headers.clone();
        first.insert(EXPECTED_HEADER, expected.to_string().as_str());
        first.insert(MSG_ID_HEADER, msg_id.as_str());
        let (ack, answer) = match self.link.send(first, payload.clone()) {
            Ok(ack) => (Some(ack), None),
            Err(error) => (None, Some(Err((error, false)))),
        };
        Some(Sending::One(Message {
            headers,
            payload,
            expected,
            msg_id,
            pipelined,
            ack,
            answer,
        }))
    }

    /// Sends a write's parts one after the other, each expecting the one before.
    fn send_parts(
        &self,
        last: u64,
        parts: Vec<Vec<u8>>,
        deadline: Instant,
    ) -> Result<u64, StorageError> {
        let count = parts.len();
        let mut last = last;
        for (index, part) in parts.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NODE_HEADER, self.node.config.node.as_str());
            headers.insert(PART_HEADER, format!("{}/{count}", index + 1).as_str());
            let msg_id = format!("{}:{}", self.node.incarnation, last + 1);
            last = self
                .link
                .append(
                    headers,
                    part.into(),
                    last,
                    msg_id,
                    deadline,
                    self.timeout() + Duration::from_secs(1),
                )
                .map_err(Self::refusal)?;
        }
        Ok(last)
    }

    /// Where one message landed: its first answer, or else the append retried
    /// (the same id: a retry of one that landed is answered as a duplicate).
    fn landed(&self, message: Message, deadline: Instant) -> Result<u64, StorageError> {
        let Message {
            headers,
            payload,
            expected,
            msg_id,
            pipelined,
            mut ack,
            answer,
        } = message;
        let answer = match (answer, &mut ack) {
            (Some(answer), _) => Some(answer),
            (None, Some(ack)) => {
                let wait = deadline.saturating_duration_since(Instant::now());
                self.link
                    .wait(ack, wait)
                    .map(|answer| answer.map_err(|error| (error.to_string(), is_fence(&error))))
            }
            (None, None) => None,
        };
        let sequence = match answer {
            Some(Ok(sequence)) => sequence,
            // A fence is final unless the write was pipelined: then the write
            // before it may have landed only on a retry, after this one was
            // checked. Anything else is retried.
            Some(Err((why, true))) if !pipelined => {
                return Err(Self::refusal(AppendFailure::Fenced(why)))
            }
            _ => self
                .link
                .append(
                    headers,
                    payload,
                    expected,
                    msg_id,
                    deadline,
                    self.timeout() + Duration::from_secs(1),
                )
                .map_err(Self::refusal)?,
        };
        if sequence != expected + 1 {
            return Err(StorageError::Io(format!(
                "a journal write expecting {expected} landed at {sequence}"
            )));
        }
        Ok(sequence)
    }
}

/// Stream headers of an append.
const EXPECTED_HEADER: &str = "Nats-Expected-Last-Sequence";
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// A pipelined write lands only right after the write sent before it.
const AFTER_HEADER: &str = "Nats-Expected-Last-Msg-Id";

/// How often an idle append connection is driven, and for how long.
const KEEP_EVERY: Duration = Duration::from_millis(250);
const KEEP_FOR: Duration = Duration::from_millis(1);

/// Drives the store's append connection for [`KEEP_FOR`] every [`KEEP_EVERY`]
/// in which no write started or was in flight (a write drives it itself),
/// until the store is dropped.
fn keep_alive(store: std::sync::Weak<ReplicatedStore>) {
    let mut seen = u64::MAX;
    loop {
        std::thread::sleep(KEEP_EVERY);
        let Some(store) = store.upgrade() else { return };
        let writes = store.node.writes.load(Ordering::Acquire);
        if writes == seen && writes.is_multiple_of(2) {
            if let Ok(_writing) = store.chain.try_lock() {
                store.link.drive(KEEP_FOR);
            }
        }
        seen = writes;
    }
}

impl Pipeline for ReplicatedStore {
    fn begin(&self, batch: WriteBatch, sync: bool) -> Option<WriteBatch> {
        let mut chain = self.chain();
        let Some(sending) = self.sending(&chain, &batch) else {
            return Some(batch);
        };
        if chain.in_flight.is_empty() {
            // Odd while any write is in flight (the lease check's cue).
            self.node.writes.fetch_add(1, Ordering::AcqRel);
        }
        chain.in_flight.push_back(InFlight {
            batch,
            sync,
            sending,
            deadline: Instant::now() + self.timeout(),
        });
        None
    }

    fn poll(&self, wait: Duration) -> bool {
        let mut chain = self.chain();
        let Some(front) = chain.in_flight.front_mut() else {
            return true;
        };
        let Sending::One(message) = &mut front.sending else {
            return true;
        };
        if message.answer.is_some() {
            return true;
        }
        let Some(ack) = &mut message.ack else {
            return true;
        };
        match self.link.wait(ack, wait) {
            Some(answer) => {
                message.answer =
                    Some(answer.map_err(|error| (error.to_string(), is_fence(&error))));
                true
            }
            None => false,
        }
    }

    fn finish(&self) -> Result<(), StorageError> {
        let mut chain = self.chain();
        let Some(write) = chain.in_flight.pop_front() else {
            return Err(StorageError::Io("no journal write in flight".to_string()));
        };
        let landed = match write.sending {
            _ if chain.broken => Err(StorageError::Io(
                "a journal write before this one failed".to_string(),
            )),
            Sending::Refused(error) => Err(error),
            Sending::Parts(parts) => self.send_parts(chain.last, parts, write.deadline),
            Sending::One(message) => self.landed(message, write.deadline),
        };
        let result = landed.and_then(|sequence| {
            write_applied(&self.local, write.batch, sequence, write.sync)?;
            chain.last = sequence;
            self.node.applied_to(sequence);
            Ok(())
        });
        if chain.in_flight.is_empty() {
            self.node.writes.fetch_add(1, Ordering::AcqRel);
        }
        if let Err(error) = &result {
            chain.broken = true;
            // The journal refuses everything after a failed write: an owner that
            // cannot write must let a follower take over.
            if self.node.may_write() {
                self.node
                    .step_down(&format!("journal write failed: {error}"));
            }
        }
        result
    }
}

impl Store for ReplicatedStore {
    /// One write, begun and finished (the journal's writer uses the pipeline).
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        if self.begin(batch, sync).is_some() {
            return Err(StorageError::Io(
                "a journal write while others are in flight".to_string(),
            ));
        }
        self.finish()
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.local.get(space, key)
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        self.local.scan(space, from, visit)
    }

    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StorageError> {
        self.local.last_key(space)
    }

    fn slowdowns(&self) -> u64 {
        self.local.slowdowns()
    }

    fn waits_on_network(&self) -> bool {
        true
    }

    fn pipeline(&self) -> Option<&dyn Pipeline> {
        Some(self)
    }
}
