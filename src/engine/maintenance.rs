//! Background loops: reservation expiry, transfer timers (overdue checks
//! and retried steps), periodic snapshots, and retention of closed
//! reservations, closed transfers and idempotency keys. Each loop does
//! bounded work per tick.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use futures_util::StreamExt;

use super::registry::Registry;
use super::{Engine, EngineError};
use crate::actors::CollectSnapshot;
use crate::storage::records::{
    IdempotencyRecord, ReservationRecord, TransferRecord, META_SNAPSHOT_SEQ,
};
use crate::storage::{codec, Space, WriteBatch};

/// Expiry checks per second: deadlines fire within `1000 / rate` ms.
pub(super) const EXPIRY_TICK_MS: u64 = 100;
/// Expirations handled per tick; the rest wait for the next tick.
const EXPIRIES_PER_TICK_MAX: usize = 10_000;
/// Expirations running at once.
const EXPIRIES_IN_FLIGHT_MAX: usize = 64;
/// Transfer timers are checked this often: overdue fires within a second.
const TRANSFER_TICK_MS: u64 = 250;
/// Positions per snapshot write batch. Snapshots go through the journal queue, so
/// reservations queued behind one wait for its write: small batches keep that wait
/// short (5,000 stalled everything for 100-250 ms under load).
const SNAPSHOT_BATCH_MAX: usize = 256;
const RETENTION_TICK_SECONDS: u64 = 60;
const PURGE_PER_TICK_MAX: usize = 100_000;

pub(super) fn spawn_loops(engine: Arc<Engine>) {
    let expiry = engine.clone();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(EXPIRY_TICK_MS));
        loop {
            tick.tick().await;
            if expiry.is_ready() {
                expiry.expire_due().await;
            }
        }
    });
    let transfers = engine.clone();
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(TRANSFER_TICK_MS));
        loop {
            tick.tick().await;
            if transfers.is_ready() {
                transfers.transfer_timers_due().await;
            }
        }
    });
    let snapshots = engine.clone();
    actix::spawn(async move {
        let every = Duration::from_secs(snapshots.config.snapshot_interval_seconds);
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            if !snapshots.is_ready() {
                continue;
            }
            if let Err(error) = snapshots.snapshot().await {
                tracing::error!(%error, "snapshot failed");
            }
        }
    });
    actix::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(RETENTION_TICK_SECONDS));
        loop {
            tick.tick().await;
            if engine.is_ready() {
                engine.retention().await;
            }
        }
    });
}

impl Engine {
    /// Expires every held reservation whose deadline has passed; a cart's
    /// part on its lease settles with its siblings instead (engine::carts),
    /// alongside.
    pub async fn expire_due(&self) {
        let due = self.expiry.take_due(self.now_ms(), EXPIRIES_PER_TICK_MAX);
        // Cart parts at their lease's end ask their siblings first
        // (engine::carts); every other deadline expires its hold.
        let mut parts = Vec::new();
        let mut plain = Vec::with_capacity(due.len());
        for id in due {
            match self.cart_part_due(&id) {
                Ok(Some((siblings, nonce))) => parts.push((id, siblings, nonce)),
                Ok(None) => plain.push(id),
                Err(()) => {}
            }
        }
        let due = plain;
        let settle = async {
            if !parts.is_empty() {
                self.settle_cart_parts(parts).await;
            }
        };
        // Concurrently (bounded): each expiry waits a journal round trip, and
        // group commit makes many at once cost little more than one.
        let expire = futures_util::stream::iter(due)
            .map(|id| async move {
                match self.expire_reservation(&id).await {
                    Ok(()) => None,
                    Err(error) => {
                        tracing::warn!(reservation = %id, %error, "expiry failed, will retry");
                        Some(id)
                    }
                }
            })
            .buffer_unordered(EXPIRIES_IN_FLIGHT_MAX)
            .filter_map(|failed| async move { failed })
            .collect::<Vec<Arc<str>>>();
        let (failed, ()) = futures_util::future::join(expire, settle).await;
        if !failed.is_empty() {
            // Put them back so they are retried on a later tick.
            let retry_at = self.now_ms() + 1000;
            for id in failed {
                self.expiry.schedule(retry_at, id);
            }
        }
    }

    /// Writes every position changed since the last snapshot, then the
    /// journal `seq` the snapshot covers. Recovery replays from that `seq`.
    pub async fn snapshot(&self) -> Result<usize, EngineError> {
        let covers = self.journal().head();
        let full = self.snapshot_full_next.swap(false, Ordering::AcqRel);
        let collected = join_all(
            self.shards
                .iter()
                .map(|shard| shard.send(CollectSnapshot { full })),
        )
        .await;
        let mut written = 0;
        let result: Result<(), EngineError> = async {
            if self.journal().is_poisoned() {
                return Err(EngineError::Unavailable(
                    "journal failed: state in memory may be ahead of it".to_string(),
                ));
            }
            for answer in collected {
                let entries = answer.ok().and_then(Result::ok).ok_or_else(|| {
                    EngineError::Unavailable("a position could not be snapshotted".to_string())
                })?;
                for chunk in entries.chunks(SNAPSHOT_BATCH_MAX) {
                    let mut batch = WriteBatch::default();
                    for (key, snapshot) in chunk {
                        batch.put(Space::Positions, key.clone(), codec::encode(snapshot)?);
                    }
                    // Through the journal queue: it lands after every entry
                    // whose effect it contains, or not at all.
                    self.write(batch).await?;
                    written += chunk.len();
                }
            }
            let mut batch = WriteBatch::default();
            batch.put(Space::Meta, META_SNAPSHOT_SEQ, codec::encode(&covers)?);
            self.write(batch).await?;
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(positions = written, covers, "snapshot written");
                Ok(written)
            }
            Err(error) => {
                // Positions collected but not written are no longer marked dirty.
                self.snapshot_full_next.store(true, Ordering::Release);
                Err(error)
            }
        }
    }

    /// Drops up to `PURGE_PER_TICK_MAX` closed records (reservations or
    /// transfers) last changed before `older_than_ms`, from the store and then
    /// from memory. Records locked right now are left for the next tick.
    async fn purge_closed<R: Closable>(
        &self,
        registry: &Registry<R>,
        space: Space,
        older_than_ms: i64,
    ) -> usize {
        let old: Vec<Arc<str>> = registry
            .iter()
            .filter_map(|entry| {
                let record = entry.value().try_lock().ok()?;
                record.purgeable(older_than_ms).then(|| entry.key().clone())
            })
            .take(PURGE_PER_TICK_MAX)
            .collect();
        let mut batch = WriteBatch::default();
        for id in &old {
            batch.delete(space, id.as_bytes());
        }
        if !old.is_empty() && self.write(batch).await.is_ok() {
            for id in &old {
                registry.remove(id);
            }
            return old.len();
        }
        0
    }

    /// Purges closed reservations, closed transfers and idempotency keys past
    /// their retention.
    pub async fn retention(&self) {
        let hours = |h: u64| (h.saturating_mul(3_600_000)) as i64;
        let reservations_before = self.now_ms() - hours(self.config.reservation_retention_hours);
        let purged = self
            .purge_closed(&self.reservations, Space::Reservations, reservations_before)
            .await;
        let transfers_before = self.now_ms() - hours(self.config.transfer_retention_hours);
        let transfers_purged = self
            .purge_closed(&self.transfers, Space::Transfers, transfers_before)
            .await;
        if transfers_purged > 0 {
            tracing::info!(
                purged = transfers_purged,
                "closed transfers past retention removed"
            );
        }
        let keys_before = self.now_ms() - hours(self.config.idempotency_retention_hours);
        // The scan reads the whole space: off the thread that runs expiry.
        let store = self.shared.store.clone();
        let scanned = tokio::task::spawn_blocking(move || {
            let mut expired_keys = Vec::new();
            let scanned = store.scan(Space::Idempotency, &[], &mut |key, value| {
                if let Ok(record) = codec::decode::<IdempotencyRecord>(value) {
                    if record.created_at_ms < keys_before {
                        expired_keys.push(key.to_vec());
                    }
                }
                expired_keys.len() < PURGE_PER_TICK_MAX
            });
            scanned.map(|()| expired_keys)
        })
        .await;
        let expired_keys = match scanned {
            Ok(Ok(keys)) => keys,
            Ok(Err(error)) => {
                tracing::warn!(%error, "idempotency retention scan failed");
                Vec::new()
            }
            Err(error) => {
                tracing::warn!(%error, "idempotency retention scan did not finish");
                Vec::new()
            }
        };
        if !expired_keys.is_empty() {
            let mut batch = WriteBatch::default();
            let count = expired_keys.len();
            for key in expired_keys {
                batch.delete(Space::Idempotency, key);
            }
            if self.write(batch).await.is_ok() {
                tracing::info!(count, "idempotency keys past retention removed");
            }
        }
        if purged > 0 {
            tracing::info!(purged, "closed reservations past retention removed");
        }
    }
}

/// A record the retention purge may drop once it is closed and old.
pub(super) trait Closable {
    fn purgeable(&self, older_than_ms: i64) -> bool;
}

impl Closable for ReservationRecord {
    fn purgeable(&self, older_than_ms: i64) -> bool {
        !self.status.is_open() && self.pending.is_none() && self.updated_at_ms < older_than_ms
    }
}

impl Closable for TransferRecord {
    fn purgeable(&self, older_than_ms: i64) -> bool {
        !self.status.is_open() && self.pending.is_none() && self.updated_at_ms < older_than_ms
    }
}
