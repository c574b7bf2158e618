//! In-memory [`Store`] for tests, with fault injection: it can be told to
//! fail writes, now or after a number of them (a crash between two writes,
//! as far as durable state can tell), which exercises the journal's
//! fail-stop path and recovery.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use super::{Space, StorageError, Store, WriteBatch};

type Entries = BTreeMap<(Space, Vec<u8>), Vec<u8>>;

#[derive(Default)]
pub struct MemoryStore {
    spaces: Mutex<Entries>,
    failing: AtomicBool,
    /// Writes that may still succeed before every later one fails.
    writes_left: Mutex<Option<u64>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Makes every following write fail (true) or succeed again (false).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, Ordering::SeqCst);
        if !failing {
            *self.writes_left() = None;
        }
    }

    /// Lets the next `writes` writes succeed and fails every one after them,
    /// until `set_failing(false)`.
    pub fn fail_after(&self, writes: u64) {
        *self.writes_left() = Some(writes);
    }

    fn writes_left(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.writes_left
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.spaces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Store for MemoryStore {
    fn write(&self, batch: WriteBatch, _sync: bool) -> Result<(), StorageError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected write failure".to_string()));
        }
        if let Some(left) = self.writes_left().as_mut() {
            if *left == 0 {
                return Err(StorageError::Io("injected write failure".to_string()));
            }
            *left -= 1;
        }
        let mut spaces = self.lock();
        for (space, key, value) in batch.ops {
            match value {
                Some(value) => spaces.insert((space, key), value),
                None => spaces.remove(&(space, key)),
            };
        }
        Ok(())
    }

    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.lock().get(&(space, key.to_vec())).cloned())
    }

    fn scan(
        &self,
        space: Space,
        from: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let entries: Vec<(Vec<u8>, Vec<u8>)> = self
            .lock()
            .range((space, from.to_vec())..)
            .take_while(|((s, _), _)| *s == space)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect();
        for (key, value) in entries {
            if !visit(&key, &value) {
                break;
            }
        }
        Ok(())
    }

    fn last_key(&self, space: Space) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .lock()
            .range((space, Vec::new())..)
            .take_while(|((s, _), _)| *s == space)
            .last()
            .map(|((_, k), _)| k.clone()))
    }
}
