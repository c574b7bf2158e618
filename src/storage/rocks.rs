//! RocksDB implementation of [`Store`]: one column family per [`Space`].

use std::path::Path;

use rocksdb::{ColumnFamilyDescriptor, IteratorMode, Options, WriteOptions, DB};

use super::{Space, StorageError, Store, WriteBatch};

pub struct RocksStore {
    db: DB,
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
        Ok(RocksStore { db })
    }

    fn family(&self, space: Space) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db
            .cf_handle(space.name())
            .ok_or_else(|| StorageError::Io(format!("missing column family {}", space.name())))
    }
}

impl Store for RocksStore {
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut write = rocksdb::WriteBatch::default();
        for (space, key, value) in &batch.ops {
            let family = self.family(*space)?;
            match value {
                Some(value) => write.put_cf(family, key, value),
                None => write.delete_cf(family, key),
            }
        }
        let mut options = WriteOptions::default();
        options.set_sync(sync);
        self.db.write_opt(write, &options).map_err(io)
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
