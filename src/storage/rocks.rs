//! RocksDB implementation of [`Store`]: one column family per [`Space`].

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteOptions, DB};

use super::{Space, StorageError, Store, WriteBatch};

pub struct RocksStore {
    db: DB,
    /// Built once, not per write: `[sync]`, each with `no_slowdown`, so a write
    /// RocksDB would delay (a write stall) comes back at once instead of
    /// blocking the event loop that commits it unseen.
    fast: [WriteOptions; 2],
    /// The same, allowed to wait: the retry of a write that was refused for a
    /// stall (the batch is numbered, so it must land before any other).
    patient: [WriteOptions; 2],
    /// Writes refused for a stall and retried (`stockwire_journal_slowdowns_total`).
    slowdowns: AtomicU64,
}

fn write_options(sync: bool, no_slowdown: bool) -> WriteOptions {
    let mut options = WriteOptions::default();
    options.set_sync(sync);
    options.set_no_slowdown(no_slowdown);
    options
}

fn io(error: rocksdb::Error) -> StorageError {
    StorageError::Io(error.into_string())
}

impl RocksStore {
    pub fn open(path: &Path) -> Result<RocksStore, StorageError> {
        std::fs::create_dir_all(path)
            .map_err(|e| StorageError::Io(format!("{}: {e}", path.display())))?;
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        options.set_max_background_jobs(2);
        options.set_bytes_per_sync(1 << 20);
        options.set_enable_write_thread_adaptive_yield(false);
        let families = Space::ALL
            .iter()
            .map(|space| ColumnFamilyDescriptor::new(space.name(), Options::default()));
        let db = DB::open_cf_descriptors(&options, path, families).map_err(io)?;
        Ok(RocksStore {
            db,
            fast: [write_options(false, true), write_options(true, true)],
            patient: [write_options(false, false), write_options(true, false)],
            slowdowns: AtomicU64::new(0),
        })
    }

    fn build(&self, batch: &WriteBatch) -> Result<rocksdb::WriteBatch, StorageError> {
        let mut write = rocksdb::WriteBatch::default();
        for (space, key, value) in &batch.ops {
            let family = self.family(*space)?;
            match value {
                Some(value) => write.put_cf(family, key, value),
                None => write.delete_cf(family, key),
            }
        }
        Ok(write)
    }

    fn family(&self, space: Space) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StorageError::Io(format!("missing column family {}", space.name())))
    }
}

impl Store for RocksStore {
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let index = usize::from(sync);
        match self.db.write_opt(self.build(&batch)?, &self.fast[index]) {
            Err(error) if error.kind() == rocksdb::ErrorKind::Incomplete => {
                self.slowdowns.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("rocksdb would slow this write down; waiting for it");
                self.db
                    .write_opt(self.build(&batch)?, &self.patient[index])
                    .map_err(io)
            }
            result => result.map_err(io),
        }
    }

    fn slowdowns(&self) -> u64 {
        self.slowdowns.load(Ordering::Relaxed)
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.db.get_cf(self.family(space)?, key).map_err(io)
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let mode = IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.family(space)?, mode) {
            let (key, value) = item.map_err(io)?;
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StorageError> {
        match self
            .db
            .iterator_cf(self.family(space)?, IteratorMode::End)
            .next()
        {
            Some(item) => Ok(Some(item.map_err(io)?.0.to_vec())),
            None => Ok(None),
        }
    }
}
