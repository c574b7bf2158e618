//! The in-memory registry of reservations or transfers: each record behind
//! its own async lock, keyed by id, with its size kept in a counter (a
//! `DashMap::len()` read-locks every shard; the create path asks on every
//! request) and room for the first entries made up front (growth doubles a
//! shard's table while that shard is locked).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;

use super::EngineError;

/// Tries to claim an id whose earlier creation is being undone, before the
/// caller is told it is busy.
const CLAIM_ATTEMPTS: usize = 3;

/// What a registry record tells [`Registry::claim_new`].
pub trait Claimable: Clone {
    /// Named in answers: "reservation", "transfer".
    const KIND: &'static str;
    /// Its creation is under way or being undone (not settled yet).
    fn creating(&self) -> bool;
    /// The hash of the request that created it.
    fn request_hash(&self) -> &[u8];
    /// Why a new record may not have this id, when the record there is not
    /// one a request made (`None`: "exists with different content").
    fn taken_because(&self) -> Option<&'static str> {
        None
    }
}

/// The answer of [`Registry::claim_new`].
pub enum Claim<R> {
    /// The id is the caller's: its cell is in the registry.
    New,
    /// The id was created before by the same request: its record now.
    Repeat(R),
}

/// Entries the registry has room for before its first growth (about 1.5 MiB
/// of table; the records themselves are allocated as they come).
const PRESIZED: usize = 1 << 16;

pub type Cell<R> = Arc<tokio::sync::Mutex<R>>;

pub struct Registry<R> {
    map: DashMap<Arc<str>, Cell<R>>,
    len: AtomicUsize,
}

impl<R> Default for Registry<R> {
    fn default() -> Self {
        Registry {
            map: DashMap::with_capacity(PRESIZED),
            len: AtomicUsize::new(0),
        }
    }
}

impl<R> Registry<R> {
    /// Entries now, without locking anything.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn get(&self, id: &str) -> Option<Cell<R>> {
        self.map.get(id).map(|entry| entry.value().clone())
    }

    /// Puts `cell` under `id` if the id is free; otherwise the cell there.
    pub fn claim(&self, id: &Arc<str>, cell: &Cell<R>) -> Result<(), Cell<R>> {
        match self.map.entry(id.clone()) {
            Entry::Occupied(entry) => Err(entry.get().clone()),
            Entry::Vacant(entry) => {
                entry.insert(cell.clone());
                self.len.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    /// Claims `id` for a new record, `cell` (locked by the caller). An id
    /// taken by the same request (same hash) answers that record; by a
    /// different one, `invalid_state`; by a creation being undone, a retry,
    /// then `unavailable` when it stays busy.
    pub async fn claim_new(
        &self,
        id: &Arc<str>,
        cell: &Cell<R>,
        request_hash: &[u8],
    ) -> Result<Claim<R>, EngineError>
    where
        R: Claimable,
    {
        for _attempt in 0..CLAIM_ATTEMPTS {
            let existing = match self.claim(id, cell) {
                Ok(()) => return Ok(Claim::New),
                Err(existing) => existing,
            };
            let current = existing.lock().await;
            if current.creating() {
                // That creation failed and is being removed: try again.
                drop(current);
                tokio::task::yield_now().await;
                continue;
            }
            if let Some(why) = current.taken_because() {
                return Err(EngineError::InvalidState(format!("{} {id} {why}", R::KIND)));
            }
            if current.request_hash() != request_hash {
                return Err(EngineError::InvalidState(format!(
                    "{} {id} exists with different content",
                    R::KIND
                )));
            }
            return Ok(Claim::Repeat(current.clone()));
        }
        Err(EngineError::Unavailable(format!(
            "{} {id} is busy, retry",
            R::KIND
        )))
    }

    /// Installs a recovered record (replacing one with the same id).
    pub fn install(&self, id: Arc<str>, record: R) {
        let cell = Arc::new(tokio::sync::Mutex::new(record));
        if self.map.insert(id, cell).is_none() {
            self.len.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub fn remove(&self, id: &str) {
        if self.map.remove(id).is_some() {
            self.len.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Every entry, for scans (recovery, purges); not a consistent snapshot.
    pub fn iter(&self) -> dashmap::iter::Iter<'_, Arc<str>, Cell<R>> {
        self.map.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_follows_claims_installs_and_removals() {
        let registry: Registry<u32> = Registry::default();
        let a: Arc<str> = Arc::from("a");
        let cell = Arc::new(tokio::sync::Mutex::new(1));
        assert!(registry.claim(&a, &cell).is_ok());
        assert!(registry
            .claim(&a, &Arc::new(tokio::sync::Mutex::new(2)))
            .is_err());
        registry.install(Arc::from("b"), 3);
        registry.install(Arc::from("b"), 4);
        assert_eq!(registry.len(), 2);
        registry.remove("a");
        registry.remove("a");
        registry.remove("nothing");
        assert_eq!(registry.len(), 1);
        assert_eq!(registry.iter().count(), 1);
        assert!(registry.get("b").is_some() && registry.get("a").is_none());
    }
}
