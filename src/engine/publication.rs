//! What publication reads and writes of its own durable state (cursors, the
//! publication ledger, dead letters, owed SKUs): named operations over
//! [`crate::storage::ledger`], so the channels never touch the store.

use std::time::Duration;

use super::{Engine, EngineError};
use crate::storage::ledger::{self, Cursor, DeadLetter, LedgerWrite, PublishedRecord};
use crate::storage::StorageError;

/// A full journal queue is waited out by publication, from this pause up to the next.
const WRITE_RETRY_FIRST: Duration = Duration::from_millis(5);
const WRITE_RETRY_MAX: Duration = Duration::from_millis(500);

impl Engine {
    /// The channel's durable cursor, `None` if it never had one written.
    pub fn channel_cursor(&self, channel: &str) -> Result<Option<Cursor>, StorageError> {
        ledger::stored_cursor(&*self.shared.store, channel)
    }

    /// Every SKU still owed to `channel`.
    pub fn owed_skus(&self, channel: &str) -> Result<Vec<String>, StorageError> {
        ledger::owed_skus(&*self.shared.store, channel)
    }

    /// How many dead letters `channel` has.
    pub fn count_dead_letters(&self, channel: &str) -> Result<u64, StorageError> {
        ledger::count_dead_letters(&*self.shared.store, channel)
    }

    /// Up to `limit` dead letters of `channel` with id > `after`, oldest first.
    pub fn dead_letters(
        &self,
        channel: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, DeadLetter)>, StorageError> {
        ledger::dead_letters(&*self.shared.store, channel, after, limit)
    }

    /// The last value `channel` acknowledged for `sku`.
    pub fn published(
        &self,
        channel: &str,
        sku: &str,
    ) -> Result<Option<PublishedRecord>, StorageError> {
        ledger::get_published(&*self.shared.store, channel, sku)
    }

    /// Writes `write` through the journal (ordered after every change it
    /// reflects), waiting out a full queue: publication is not refused like
    /// a client request, it waits and the channel lags meanwhile. Fails only
    /// when the journal has failed or stopped.
    pub async fn write_ledger(&self, write: LedgerWrite) -> Result<(), StorageError> {
        let batch = write.into_batch();
        let mut delay = WRITE_RETRY_FIRST;
        loop {
            match self.journal().append(Vec::new(), batch.clone()) {
                Ok(ticket) => return ticket.await.map(|_| ()),
                Err(StorageError::Overloaded) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(WRITE_RETRY_MAX);
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Writes `write` for an API request: a full journal queue refuses it
    /// (503) rather than making the caller wait.
    pub async fn try_write_ledger(&self, write: LedgerWrite) -> Result<(), EngineError> {
        self.write(write.into_batch()).await
    }
}
