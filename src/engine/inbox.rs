//! What the 3PL inbox keeps in the engine's store: one progress record per
//! file (`Space::Inbox`, keyed by the file's digest), read at start and
//! written through the journal after each chunk of rows.

use super::{Engine, EngineError};
use crate::storage::records::InboxFileRecord;
use crate::storage::{codec, Space, WriteBatch};

impl Engine {
    /// The progress record of the file with digest `key`, if it was seen.
    pub fn inbox_file(&self, key: &[u8; 32]) -> Result<Option<InboxFileRecord>, EngineError> {
        let stored = self.shared.store.get(Space::Inbox, key)?;
        Ok(stored.map(|bytes| codec::decode(&bytes)).transpose()?)
    }

    /// Durably records the progress of the file with digest `key`.
    pub async fn save_inbox_file(
        &self,
        key: &[u8; 32],
        record: &InboxFileRecord,
    ) -> Result<(), EngineError> {
        self.write(inbox_batch(key, record)?).await
    }
}

/// The write of a file's progress record, to go with other changes.
pub(super) fn inbox_batch(
    key: &[u8; 32],
    record: &InboxFileRecord,
) -> Result<WriteBatch, EngineError> {
    let mut batch = WriteBatch::default();
    batch.put(Space::Inbox, key.to_vec(), codec::encode(record)?);
    Ok(batch)
}
