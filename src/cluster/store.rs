//! The store of an owner in cluster mode: every write goes to the journal stream
//! first, fenced by the stream's last sequence, and into the local RocksDB only
//! once the stream acknowledged it. The local store is then always a prefix of the
//! stream, so a node that loses ownership (or crashes) rejoins as a follower of it,
//! and a successor's RocksDB is the same store, replicated.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;

use super::frame::{self, NODE_HEADER, PART_HEADER};
use super::link::{AppendFailure, WriteLink};
use super::{write_applied, Node, PARTS_MAX};
use crate::storage::{RocksStore, Space, StorageError, Store, WriteBatch};

pub struct ReplicatedStore {
    local: Arc<RocksStore>,
    link: WriteLink,
    node: Arc<Node>,
    /// The stream's last sequence as this owner wrote it (0: not the owner yet).
    /// Held across the stream write and the local one, so both see writes in one
    /// order.
    last: Mutex<u64>,
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
            last: Mutex::new(0),
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

    /// Ownership granted: the takeover marker landed at `epoch`.
    pub fn grant(&self, epoch: u64) {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = epoch;
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

    fn write_locked(
        &self,
        last: &mut u64,
        batch: WriteBatch,
        sync: bool,
    ) -> Result<(), StorageError> {
        if *last == 0 || !self.node.may_write() {
            return Err(StorageError::Io(
                "this node does not own the journal".to_string(),
            ));
        }
        let parts = frame::encode(&batch.ops, self.link.part_bytes)?;
        let count = parts.len();
        if count > PARTS_MAX as usize {
            return Err(StorageError::Io(format!(
                "a write of {count} stream messages is more than the {PARTS_MAX} a follower takes"
            )));
        }
        let timeout = Duration::from_millis(self.node.config.append_timeout_ms);
        let deadline = Instant::now() + timeout;
        for (index, part) in parts.into_iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert(NODE_HEADER, self.node.config.node.as_str());
            if count > 1 {
                headers.insert(PART_HEADER, format!("{}/{count}", index + 1).as_str());
            }
            let expected = *last;
            let msg_id = format!("{}:{}", self.node.incarnation, expected + 1);
            let outcome = self.link.append(
                headers,
                part.into(),
                expected,
                msg_id,
                deadline,
                timeout + Duration::from_secs(1),
            );
            match outcome {
                Ok(sequence) => *last = sequence,
                Err(failure) => return Err(Self::refusal(failure)),
            }
        }
        write_applied(&self.local, batch, *last, sync)?;
        self.node.applied_to(*last);
        Ok(())
    }
}

/// How often an idle append connection is driven, and for how long.
const KEEP_EVERY: Duration = Duration::from_millis(250);
const KEEP_FOR: Duration = Duration::from_millis(1);

/// Drives the store's append connection for [`KEEP_FOR`] every [`KEEP_EVERY`]
/// in which no write started (a write drives it itself), until the store is
/// dropped.
fn keep_alive(store: std::sync::Weak<ReplicatedStore>) {
    let mut seen = u64::MAX;
    loop {
        std::thread::sleep(KEEP_EVERY);
        let Some(store) = store.upgrade() else { return };
        let writes = store.node.writes.load(Ordering::Acquire);
        if writes == seen {
            if let Ok(_writing) = store.last.try_lock() {
                store.link.drive(KEEP_FOR);
            }
        }
        seen = writes;
    }
}

impl Store for ReplicatedStore {
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        self.node.writes.fetch_add(1, Ordering::AcqRel);
        let result = self.write_locked(&mut last, batch, sync);
        self.node.writes.fetch_add(1, Ordering::AcqRel);
        if let Err(error) = &result {
            // The journal refuses everything after a failed write: an owner that
            // cannot write must let a follower take over.
            if self.node.may_write() {
                self.node
                    .step_down(&format!("journal write failed: {error}"));
            }
        }
        result
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
}
