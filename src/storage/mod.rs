//! Durable storage behind traits: a key-value [`Store`] with atomic batches
//! (RocksDB for real, an in-memory one with fault injection for tests), the
//! group-committing [`journal`], and the record formats ([`records`]).
//!
//! Nothing here knows about actors or HTTP. The journal is the only writer of
//! journal entries and the only place sequence numbers are assigned.

pub mod codec;
pub mod journal;
pub mod ledger;
mod memory;
pub mod records;
pub mod replay;
mod rocks;

pub use journal::{
    AppendError, AppendPermit, Entry, Journal, JournalOptions, JournalStats, Ticket, STALL_AFTER,
};
pub use memory::MemoryStore;
pub use rocks::RocksStore;

/// The key spaces (RocksDB column families).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// `seq` (u64 big-endian) -> `JournalRecord`: the ordered event log.
    Journal,
    /// position key -> `PositionSnapshot`, written by periodic snapshots.
    Positions,
    /// reservation id -> `ReservationRecord`, written with the journal entries.
    Reservations,
    /// small named values (snapshot sequence number).
    Meta,
    /// `Idempotency-Key` -> `IdempotencyRecord`.
    Idempotency,
    /// `event_id` -> seq of the journal entry it produced.
    EventIds,
    /// exception id (u64 big-endian) -> `ExceptionRecord`.
    Exceptions,
    /// channel \0 sku -> `PublishedRecord`: the publication ledger.
    Published,
    /// channel \0 id (u64 big-endian) -> `DeadLetter`: parked deliveries.
    DeadLetters,
    /// channel \0 sku -> empty: a resync or dead-letter replay accepted for that SKU
    /// and not yet acknowledged by the channel (re-offered after a restart).
    Owed,
    /// transfer id -> `TransferRecord`, written with the journal entries.
    Transfers,
    /// 3PL inbox file digest (32 bytes) -> `InboxFileRecord`: how far a file is
    /// processed, so a restart resumes it and a re-dropped file is known.
    Inbox,
}

impl Space {
    pub const ALL: [Space; 12] = [
        Space::Journal,
        Space::Positions,
        Space::Reservations,
        Space::Meta,
        Space::Idempotency,
        Space::EventIds,
        Space::Exceptions,
        Space::Published,
        Space::DeadLetters,
        Space::Owed,
        Space::Transfers,
        Space::Inbox,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Space::Journal => "journal",
            Space::Positions => "positions",
            Space::Reservations => "reservations",
            Space::Meta => "meta",
            Space::Idempotency => "idempotency",
            Space::EventIds => "event_ids",
            Space::Exceptions => "exceptions",
            Space::Published => "published",
            Space::DeadLetters => "dead_letters",
            Space::Owed => "owed",
            Space::Transfers => "transfers",
            Space::Inbox => "inbox",
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("storage i/o: {0}")]
    Io(String),
    #[error("record codec: {0}")]
    Codec(String),
    #[error("journal stopped after a failed write; restart to recover")]
    Poisoned,
    #[error("journal queue is full")]
    Overloaded,
    #[error("journal is shut down")]
    Closed,
}

/// One put (`Some`) or delete (`None`).
pub type WriteOp = (Space, Vec<u8>, Option<Vec<u8>>);

/// Writes applied atomically, all or none.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn put(&mut self, space: Space, key: impl Into<Vec<u8>>, value: Vec<u8>) {
        self.ops.push((space, key.into(), Some(value)));
    }

    pub fn delete(&mut self, space: Space, key: impl Into<Vec<u8>>) {
        self.ops.push((space, key.into(), None));
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn append(&mut self, other: WriteBatch) {
        self.ops.extend(other.ops);
    }
}

/// A key-value store with ordered keys per space and atomic batches.
pub trait Store: Send + Sync + 'static {
    /// Applies the batch atomically; with `sync`, durable against power loss
    /// before returning, otherwise against a process crash (write-ahead log).
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError>;
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Calls `visit` for each entry with key >= `from`, in key order, until it returns false.
    fn scan(
        &self,
        space: Space,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError>;
    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StorageError>;
    /// Writes the store delayed because it was stalling (0 for stores that never do).
    fn slowdowns(&self) -> u64 {
        0
    }
    /// True for a store whose writes wait on the network (cluster mode): the
    /// journal then commits on its writer thread only, never on an event loop.
    fn waits_on_network(&self) -> bool {
        false
    }
}

pub fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

pub fn seq_from_key(key: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| StorageError::Codec(format!("sequence key of {} bytes", key.len())))?;
    Ok(u64::from_be_bytes(bytes))
}
