//! What publication keeps durably: each channel's cursor and batch counter (`Meta`),
//! the publication ledger (`Published`), the dead-letter queue (`DeadLetters`) and
//! the SKUs a resync or replay still owes the channel (`Owed`): their records, their
//! keys and their reads. Publication changes them through a [`LedgerWrite`], which
//! the engine writes atomically (`Engine::write_ledger`); it never sees the spaces.

use serde::{Deserialize, Serialize};

use super::{codec, seq_from_key, seq_key, Space, StorageError, Store, WriteBatch};

/// The last value a channel acknowledged for a SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedRecord {
    pub available: u64,
    /// Journal `seq` of the latest change that value reflects.
    pub seq: u64,
    /// When the channel acknowledged it.
    pub acked_at_ms: i64,
}

/// A batch that failed `max_attempts` times.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// `(sku, available, seq, at_ms)` as last attempted.
    pub updates: Vec<(String, u64, u64, i64)>,
    pub attempts: u32,
    pub last_error: String,
    pub parked_at_ms: i64,
}

/// Durable per-channel progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Every change with `seq <= cursor_seq` is delivered, superseded or parked.
    pub cursor_seq: u64,
    /// Batches handed to the sink so far (file names, X12 control numbers).
    pub batches: u64,
    /// Dead letters written so far (their ids).
    pub dead_letters: u64,
}

fn prefixed(channel: &str, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(channel.len() + 1 + rest.len());
    key.extend_from_slice(channel.as_bytes());
    key.push(0);
    key.extend_from_slice(rest);
    key
}

fn cursor_key(channel: &str) -> Vec<u8> {
    format!("channel_cursor/{channel}").into_bytes()
}

pub fn load_cursor(store: &dyn Store, channel: &str) -> Result<Cursor, StorageError> {
    Ok(stored_cursor(store, channel)?.unwrap_or_default())
}

/// The channel's cursor, `None` if it never had one written.
pub fn stored_cursor(store: &dyn Store, channel: &str) -> Result<Option<Cursor>, StorageError> {
    store
        .get(Space::Meta, &cursor_key(channel))?
        .map(|bytes| codec::decode(&bytes))
        .transpose()
}

/// The last value `channel` acknowledged for `sku`.
pub fn get_published(
    store: &dyn Store,
    channel: &str,
    sku: &str,
) -> Result<Option<PublishedRecord>, StorageError> {
    store
        .get(Space::Published, &prefixed(channel, sku.as_bytes()))?
        .map(|bytes| codec::decode(&bytes))
        .transpose()
}

/// One atomic change to channels' publication state: built by a publisher or
/// the runtime, written by `Engine::write_ledger` through the journal.
#[derive(Debug, Default)]
pub struct LedgerWrite {
    batch: WriteBatch,
}

impl LedgerWrite {
    pub fn new() -> LedgerWrite {
        LedgerWrite::default()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The batch to write (for the engine).
    pub(crate) fn into_batch(self) -> WriteBatch {
        self.batch
    }

    /// The channel's progress.
    pub fn cursor(&mut self, channel: &str, cursor: &Cursor) -> Result<(), StorageError> {
        self.batch
            .put(Space::Meta, cursor_key(channel), codec::encode(cursor)?);
        Ok(())
    }

    /// The value the channel acknowledged for `sku`.
    pub fn published(
        &mut self,
        channel: &str,
        sku: &str,
        record: &PublishedRecord,
    ) -> Result<(), StorageError> {
        self.batch.put(
            Space::Published,
            prefixed(channel, sku.as_bytes()),
            codec::encode(record)?,
        );
        Ok(())
    }

    /// Parks a batch as dead letter `id`.
    pub fn dead_letter(
        &mut self,
        channel: &str,
        id: u64,
        letter: &DeadLetter,
    ) -> Result<(), StorageError> {
        self.batch.put(
            Space::DeadLetters,
            prefixed(channel, &seq_key(id)),
            codec::encode(letter)?,
        );
        Ok(())
    }

    /// Dead letter `id` was taken for replay.
    pub fn remove_dead_letter(&mut self, channel: &str, id: u64) {
        self.batch
            .delete(Space::DeadLetters, prefixed(channel, &seq_key(id)));
    }

    /// `sku` is owed to `channel`: a refresh or replay was accepted for it.
    pub fn owed(&mut self, channel: &str, sku: &str) {
        self.batch
            .put(Space::Owed, prefixed(channel, sku.as_bytes()), Vec::new());
    }

    /// The channel acknowledged (or parked) the owed value of `sku`.
    pub fn paid(&mut self, channel: &str, sku: &str) {
        self.batch
            .delete(Space::Owed, prefixed(channel, sku.as_bytes()));
    }
}

/// Up to `limit` dead letters of `channel` with id > `after`, oldest first.
pub fn dead_letters(
    store: &dyn Store,
    channel: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<(u64, DeadLetter)>, StorageError> {
    let from = prefixed(channel, &seq_key(after.saturating_add(1)));
    let prefix = prefixed(channel, &[]);
    let mut found = Vec::new();
    let mut failure = None;
    store.scan(Space::DeadLetters, &from, &mut |key, value| {
        if !key.starts_with(&prefix) || found.len() >= limit {
            return false;
        }
        let decoded = seq_from_key(&key[prefix.len()..])
            .and_then(|id| Ok((id, codec::decode::<DeadLetter>(value)?)));
        match decoded {
            Ok(entry) => {
                found.push(entry);
                true
            }
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    match failure {
        Some(error) => Err(error),
        None => Ok(found),
    }
}

/// Every SKU still owed to `channel` (read once at start-up).
pub fn owed_skus(store: &dyn Store, channel: &str) -> Result<Vec<String>, StorageError> {
    let prefix = prefixed(channel, &[]);
    let mut found = Vec::new();
    store.scan(Space::Owed, &prefix, &mut |key, _| {
        if !key.starts_with(&prefix) {
            return false;
        }
        found.push(String::from_utf8_lossy(&key[prefix.len()..]).into_owned());
        true
    })?;
    Ok(found)
}

/// Number of dead letters of `channel` (counted once at start-up).
pub fn count_dead_letters(store: &dyn Store, channel: &str) -> Result<u64, StorageError> {
    let prefix = prefixed(channel, &[]);
    let mut count = 0u64;
    store.scan(Space::DeadLetters, &prefix, &mut |key, _| {
        if key.starts_with(&prefix) {
            count += 1;
            true
        } else {
            false
        }
    })?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemoryStore;

    #[test]
    fn ledger_cursor_and_dead_letters_round_trip_per_channel() {
        let store = MemoryStore::new();
        let mut write = LedgerWrite::new();
        let record = PublishedRecord {
            available: 7,
            seq: 42,
            acked_at_ms: 1000,
        };
        write.published("web", "sku-1", &record).unwrap();
        let cursor = Cursor {
            cursor_seq: 42,
            batches: 3,
            dead_letters: 2,
        };
        write.cursor("web", &cursor).unwrap();
        let letter = DeadLetter {
            updates: vec![("sku-1".into(), 7, 42, 1000)],
            attempts: 3,
            last_error: "500".into(),
            parked_at_ms: 5,
        };
        for id in 1..=2 {
            write.dead_letter("web", id, &letter).unwrap();
        }
        write.dead_letter("webx", 1, &letter).unwrap();
        store.write(write.into_batch(), false).unwrap();

        assert_eq!(get_published(&store, "web", "sku-1").unwrap(), Some(record));
        assert_eq!(get_published(&store, "marketplace", "sku-1").unwrap(), None);
        assert_eq!(load_cursor(&store, "web").unwrap(), cursor);
        assert_eq!(load_cursor(&store, "other").unwrap(), Cursor::default());
        assert_eq!(count_dead_letters(&store, "web").unwrap(), 2);
        let listed = dead_letters(&store, "web", 1, 10).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].0, 2);

        let mut write = LedgerWrite::new();
        write.remove_dead_letter("web", 1);
        store.write(write.into_batch(), false).unwrap();
        assert_eq!(count_dead_letters(&store, "web").unwrap(), 1);
        assert_eq!(count_dead_letters(&store, "webx").unwrap(), 1);
    }

    #[test]
    fn owed_skus_are_kept_per_channel_until_deleted() {
        let store = MemoryStore::new();
        let mut write = LedgerWrite::new();
        write.owed("web", "b");
        write.owed("web", "a");
        write.owed("webx", "c");
        store.write(write.into_batch(), false).unwrap();
        assert_eq!(owed_skus(&store, "web").unwrap(), ["a", "b"]);
        assert_eq!(owed_skus(&store, "we").unwrap(), Vec::<String>::new());

        let mut write = LedgerWrite::new();
        write.paid("web", "a");
        store.write(write.into_batch(), false).unwrap();
        assert_eq!(owed_skus(&store, "web").unwrap(), ["b"]);
        assert_eq!(owed_skus(&store, "webx").unwrap(), ["c"]);
    }
}
