//! The engine: what the HTTP layer calls. It owns the shards, the journal,
//! the reservation and transfer registries and the background loops (expiry,
//! transfer timers, snapshots, retention), and coordinates work that spans
//! positions: multi-line reservations (all-or-nothing, with compensation),
//! transfers between locations, and event batches.
//!
//! It never touches a position's state itself: every change is a message to
//! the position's actor through its shard.

mod carts;
mod events;
mod inbox;
mod maintenance;
mod publication;
mod reconcile;
mod recovery;
mod registry;
mod reservations;
mod timers;
mod transfers;

pub use carts::{PartState, PART_STATES_PER_REQUEST};
pub use events::{
    error_code, EventCommand, EventOutcome, EventStatus, ExceptionClaim, ExceptionFilter,
    Rejection, RemoteApply, WarehouseEvent,
};
pub use reconcile::{
    Difference, ReconReport, Reconciliation, RowError, SnapshotRow, RECONCILE_CHUNK,
    REPORT_LIST_MAX,
};
pub use recovery::{recover, Recovered};
pub use reservations::{
    new_reservation_id, LineRequest, NewReservation, RememberAnswer, ReservationView, ShipLine,
    Shortage,
};
pub use transfers::{NewTransfer, TransferView};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix::prelude::*;
use dashmap::DashMap;

use registry::Registry;
use timers::Timers;

use crate::actors::{
    partition_of, Exec, ExecError, ExecOutcome, ListSkus, LoadPositions, Meta, PassivateIdle,
    PositionReadout, ReadSku, ShardActor, Shared, Stats,
};
use crate::clock::Clock;
use crate::config::{Config, Durability};
use crate::domain::{Command, Reject};
use crate::metrics::Metrics;
use crate::storage::records::{
    IdempotencyRecord, JournalRecord, ReservationRecord, TransferRecord,
};
use crate::storage::{codec, Journal, JournalOptions, Space, StorageError, Store, WriteBatch};

/// Errors the engine answers with; the API maps each to a status and code.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("insufficient available")]
    Insufficient(Vec<Shortage>),
    #[error("{0}")]
    InvalidState(String),
    #[error("expected version {expected}, position is at version {actual}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("{0}")]
    QuantityOutOfRange(String),
    #[error("{0}")]
    NotFound(String),
    #[error("unknown sku {0}")]
    UnknownSku(String),
    #[error("{0}")]
    UnknownLocation(String),
    #[error("{0}")]
    UnknownChannel(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<ExecError> for EngineError {
    fn from(error: ExecError) -> Self {
        match error {
            ExecError::Reject(reject) => reject.into(),
            ExecError::NotFound => EngineError::NotFound("position does not exist".to_string()),
            ExecError::Storage(StorageError::Overloaded) => {
                EngineError::Unavailable("journal queue is full, retry".to_string())
            }
            ExecError::Storage(error) => EngineError::Unavailable(error.to_string()),
            ExecError::Mailbox => EngineError::Unavailable("shard unavailable".to_string()),
            error @ ExecError::OtherGroup(_) => EngineError::Unavailable(error.to_string()),
        }
    }
}

impl From<Reject> for EngineError {
    fn from(reject: Reject) -> Self {
        match reject {
            Reject::Insufficient {
                requested,
                available,
            } => EngineError::Insufficient(vec![Shortage {
                sku: String::new(),
                location: None,
                requested,
                available,
                absent: false,
            }]),
            Reject::InvalidState(detail) | Reject::NoHold(detail) => {
                EngineError::InvalidState(detail)
            }
            Reject::VersionConflict { expected, actual } => {
                EngineError::VersionConflict { expected, actual }
            }
            Reject::QuantityOutOfRange(detail) => EngineError::QuantityOutOfRange(detail),
        }
    }
}

impl From<StorageError> for EngineError {
    fn from(error: StorageError) -> Self {
        EngineError::Unavailable(error.to_string())
    }
}

/// A configured channel, with interned ids.
#[derive(Debug, Clone)]
pub struct ChannelInfo {
    pub id: Arc<str>,
    /// Sourcing order too.
    pub locations: Vec<Arc<str>>,
    /// `stockwire_reservations_total{channel, outcome="created"}`, resolved once.
    pub reservations_created: prometheus::IntCounter,
}

pub struct Engine {
    pub config: Arc<Config>,
    shared: Arc<Shared>,
    pub metrics: Arc<Metrics>,
    shards: Vec<Addr<ShardActor>>,
    arbiters: Mutex<Vec<Arbiter>>,
    channels: HashMap<String, ChannelInfo>,
    locations: HashMap<String, Arc<str>>,
    /// Configured locations in config order.
    location_order: Vec<Arc<str>>,
    /// Every reservation still readable. Each has its own async lock, held
    /// while a transition runs, so two calls on one reservation serialize.
    reservations: Registry<ReservationRecord>,
    /// `(deadline_ms, id)` of held reservations.
    expiry: Timers,
    /// Every transfer still readable, each with its own async lock (held
    /// while a step runs), like `reservations`.
    transfers: Registry<TransferRecord>,
    /// `(at_ms, id)`: when to look at a transfer again (its overdue deadline,
    /// or a retry of a step the journal refused).
    transfer_timers: Timers,
    /// Event sources used as metric labels (bounded, see `source_label`).
    source_labels: DashMap<String, ()>,
    /// Event ids being applied right now (see `claim_event_id`).
    events_in_flight: DashMap<String, ()>,
    /// Exceptions being retried or resolved (one change at a time each).
    exceptions_in_flight: DashMap<u64, ()>,
    /// Idempotency keys being processed right now.
    idempotency_in_flight: DashMap<String, ()>,
    /// After a failed snapshot write, the next snapshot writes every position.
    snapshot_full_next: AtomicBool,
    ready: AtomicBool,
    /// `(groups, group)` in cluster mode with partition groups: only SKUs of
    /// `group`'s partitions are served here.
    group: Option<(u32, u32)>,
    /// With partition groups: where events of other groups' SKUs are applied
    /// ([`Engine::apply_events_in_order`], for the inboxes).
    remote: std::sync::OnceLock<Arc<dyn RemoteApply>>,
}

impl Engine {
    /// Starts shards and the journal from recovered state. Must run inside an
    /// actix system. Call [`Engine::finish_recovery`] next.
    pub async fn start(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        recovered: Recovered,
        metrics: Arc<Metrics>,
    ) -> Arc<Engine> {
        Engine::start_on(
            config,
            store,
            recovered,
            metrics,
            Vec::new(),
            Clock::system(),
        )
        .await
    }

    /// Like [`Engine::start`], on `clock`. On a manual clock the engine runs
    /// no timer loops: the caller drives [`Engine::expire_due`],
    /// [`Engine::transfer_timers_due`], [`Engine::passivate_idle`],
    /// [`Engine::snapshot`] and [`Engine::retention`] (simulated time).
    pub async fn start_with_clock(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        recovered: Recovered,
        metrics: Arc<Metrics>,
        clock: Clock,
    ) -> Arc<Engine> {
        Engine::start_on(config, store, recovered, metrics, Vec::new(), clock).await
    }

    /// Like [`Engine::start`], with shard `i` on `placement[i]` (the HTTP
    /// workers' arbiters, so a request for a SKU its worker owns never leaves
    /// that thread). With no placement, each shard gets an arbiter of its own.
    pub async fn start_on(
        config: Arc<Config>,
        store: Arc<dyn Store>,
        recovered: Recovered,
        metrics: Arc<Metrics>,
        placement: Vec<ArbiterHandle>,
        clock: Clock,
    ) -> Arc<Engine> {
        let histogram = metrics.journal_append_duration_seconds.clone();
        let head_gauge = metrics.journal_head_seq.clone();
        let journal = Arc::new(Journal::start(
            store.clone(),
            recovered.head,
            JournalOptions {
                sync: config.durability == Durability::Fsync,
                queue_max: config.journal_queue_max,
                batch_max: config.journal_batch_max,
                on_write: Some(Box::new(move |seconds| histogram.observe(seconds))),
            },
        ));
        head_gauge.set(recovered.head as i64);
        metrics.positions.set(recovered.positions as i64);
        metrics.oversold_positions.set(recovered.oversold);
        // With partition groups: (groups, group); only that group's SKUs are
        // served here.
        let grouped = config
            .cluster
            .as_ref()
            .filter(|cluster| cluster.groups > 1)
            .map(|cluster| (cluster.groups, cluster.group));
        let (groups, group) = grouped.unwrap_or((1, 0));
        let shared = Arc::new(Shared {
            journal,
            store,
            metrics: metrics.clone(),
            next_exception_id: AtomicU64::new(crate::actors::first_exception_id(
                recovered.next_exception_id.saturating_sub(1),
                groups,
                group,
            )),
            exception_id_step: u64::from(groups),
            oversold_positions: AtomicI64::new(recovered.oversold),
            positions: AtomicI64::new(recovered.positions as i64),
            passivate_after_ms: config.passivate_after_seconds.saturating_mul(1000),
            clock,
        });
        let mut arbiters = Vec::new();
        let placement = if placement.is_empty() {
            arbiters = (0..config.shard_count()).map(|_| Arbiter::new()).collect();
            arbiters.iter().map(Arbiter::handle).collect()
        } else {
            placement
        };
        let shard_count = placement.len();
        let shards: Vec<Addr<ShardActor>> = placement
            .iter()
            .map(|arbiter| {
                let for_shard = shared.clone();
                ShardActor::start_in_arbiter(arbiter, move |_| ShardActor::new(for_shard))
            })
            .collect();
        let partitions = config.partitions;
        let mut per_shard: Vec<Vec<_>> = (0..shard_count).map(|_| Vec::new()).collect();
        for (key, entry) in recovered.positions_by_key {
            let shard = partition_of(&key.sku, partitions) as usize % shard_count;
            per_shard[shard].push((key, entry));
        }
        for (shard, mut entries) in per_shard.into_iter().enumerate() {
            while !entries.is_empty() {
                let chunk: Vec<_> = entries.drain(..entries.len().min(50_000)).collect();
                let _ = shards[shard].send(LoadPositions(chunk)).await;
            }
        }
        release_free_memory();
        let locations: HashMap<String, Arc<str>> = config
            .locations
            .iter()
            .map(|l| (l.id.clone(), Arc::from(l.id.as_str())))
            .collect();
        let location_order = config
            .locations
            .iter()
            .filter_map(|l| locations.get(&l.id).cloned())
            .collect();
        let channels = config
            .channels
            .iter()
            .map(|c| {
                let info = ChannelInfo {
                    id: Arc::from(c.id.as_str()),
                    reservations_created: metrics
                        .reservations_total
                        .with_label_values(&[c.id.as_str(), "created"]),
                    locations: c
                        .locations
                        .iter()
                        .filter_map(|l| locations.get(l).cloned())
                        .collect(),
                };
                (c.id.clone(), info)
            })
            .collect();
        let engine = Arc::new(Engine {
            config,
            shared,
            metrics,
            shards,
            arbiters: Mutex::new(arbiters),
            channels,
            locations,
            location_order,
            reservations: Registry::default(),
            expiry: Timers::default(),
            transfers: Registry::default(),
            transfer_timers: Timers::default(),
            idempotency_in_flight: DashMap::new(),
            events_in_flight: DashMap::new(),
            exceptions_in_flight: DashMap::new(),
            source_labels: DashMap::new(),
            snapshot_full_next: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            group: grouped,
            remote: std::sync::OnceLock::new(),
        });
        engine.install_reservations(recovered.reservations);
        engine.install_transfers(recovered.transfers);
        engine
    }

    /// Completes what a crash interrupted, starts the background loops and
    /// marks the engine ready.
    pub async fn finish_recovery(self: &Arc<Self>) {
        self.complete_pending().await;
        self.complete_pending_transfers().await;
        if !self.shared.clock.is_manual() {
            maintenance::spawn_loops(self.clone());
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!(head = self.journal().head(), "engine ready");
    }

    /// With partition groups: sends other groups' events to their owners.
    pub fn set_remote(&self, remote: Arc<dyn RemoteApply>) {
        let _ = self.remote.set(remote);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && !self.journal().is_poisoned()
    }

    /// Now, on the engine's clock.
    #[inline]
    pub fn now_ms(&self) -> i64 {
        self.shared.clock.now_ms()
    }

    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn journal(&self) -> &Journal {
        &self.shared.journal
    }

    pub fn channel(&self, id: &str) -> Option<&ChannelInfo> {
        self.channels.get(id)
    }

    pub fn channels(&self) -> impl Iterator<Item = &ChannelInfo> {
        self.config
            .channels
            .iter()
            .filter_map(|c| self.channels.get(&c.id))
    }

    pub fn location(&self, id: &str) -> Option<&Arc<str>> {
        self.locations.get(id)
    }

    /// Whether a row naming `sku` is this process's to handle, with partition
    /// groups (a reconciliation's body goes to every group, each taking its
    /// SKUs' rows). A row without a readable SKU is group 0's. Always true
    /// without groups.
    pub fn row_is_mine(&self, sku: Option<&str>) -> bool {
        match (self.group, sku) {
            (None, _) => true,
            (Some((_, group)), None) => group == 0,
            (Some((_, group)), Some(sku)) => crate::actors::group_of(sku, &self.config) == group,
        }
    }

    /// The shard of `sku`'s partition; refused when the partition is in another
    /// partition group than this node's (cluster mode with `groups > 1`).
    fn shard_of(&self, sku: &str) -> Result<&Addr<ShardActor>, ExecError> {
        let partition = partition_of(sku, self.config.partitions);
        if let Some((groups, group)) = self.group {
            if partition % groups != group {
                return Err(ExecError::OtherGroup(partition % groups));
            }
        }
        Ok(&self.shards[partition as usize % self.shards.len()])
    }

    /// Runs one command on one position.
    pub async fn exec(&self, exec: Exec) -> Result<ExecOutcome, ExecError> {
        self.shard_of(&exec.sku)?
            .send(exec)
            .await
            .unwrap_or(Err(ExecError::Mailbox))
    }

    /// A command on one position with no extra writes.
    pub async fn command(
        &self,
        sku: &Arc<str>,
        location: &Arc<str>,
        command: Command,
        meta: Meta,
        create: bool,
    ) -> Result<ExecOutcome, ExecError> {
        self.exec(Exec {
            sku: sku.clone(),
            location: location.clone(),
            command,
            meta,
            extra: WriteBatch::default(),
            finish: None,
            dedupe: false,
            content: None,
            create,
        })
        .await
    }

    /// The existing positions of `sku` at `locations` (all configured ones
    /// when `None`), in that order.
    pub async fn read_sku(
        &self,
        sku: &str,
        locations: Option<&[Arc<str>]>,
        hold_of: Option<Arc<str>>,
    ) -> Result<Vec<PositionReadout>, EngineError> {
        let locations = locations.unwrap_or(&self.location_order).to_vec();
        self.shard_of(sku)?
            .send(ReadSku {
                sku: Arc::from(sku),
                locations,
                hold_of,
            })
            .await
            .map_err(|_| EngineError::Unavailable("shard unavailable".to_string()))
    }

    /// Every SKU with a position at any of `locations`, shard by shard (sorted within
    /// a shard). Costs one message per shard and memory for the list.
    pub async fn list_skus(&self, locations: &[Arc<str>]) -> Result<Vec<Arc<str>>, EngineError> {
        let mut all = Vec::new();
        for shard in &self.shards {
            let skus = shard
                .send(ListSkus {
                    locations: locations.to_vec(),
                })
                .await
                .map_err(|_| EngineError::Unavailable("shard unavailable".to_string()))?;
            all.extend(skus);
        }
        Ok(all)
    }

    /// Up to `limit` journal entries after `after`.
    pub fn read_log(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, JournalRecord)>, EngineError> {
        let raw = self.journal().read(after, limit)?;
        raw.into_iter()
            .map(|(seq, bytes)| Ok((seq, JournalRecord::decode(&bytes)?)))
            .collect()
    }

    /// Writes `batch` through the journal (ordered and as durable as events).
    /// For the engine and the channels' ledger (the one subsystem with records
    /// of its own); the API and the inbox call the named operations.
    async fn write(&self, batch: WriteBatch) -> Result<(), EngineError> {
        let ticket = self.journal().append(Vec::new(), batch)?;
        ticket.await?;
        Ok(())
    }

    /// Writes the store refused for a stall and retried (for the metric).
    pub fn store_slowdowns(&self) -> u64 {
        self.shared.store.slowdowns()
    }

    pub fn idempotency_get(&self, key: &str) -> Result<Option<IdempotencyRecord>, EngineError> {
        match self.shared.store.get(Space::Idempotency, key.as_bytes())? {
            Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
            None => Ok(None),
        }
    }

    pub async fn idempotency_put(
        &self,
        key: &str,
        record: &IdempotencyRecord,
    ) -> Result<(), EngineError> {
        let mut batch = WriteBatch::default();
        batch.put(Space::Idempotency, key.as_bytes(), codec::encode(record)?);
        self.write(batch).await
    }

    /// Marks an idempotency key as in progress; false if it already is.
    pub fn idempotency_begin(&self, key: &str) -> bool {
        self.idempotency_in_flight
            .insert(key.to_string(), ())
            .is_none()
    }

    pub fn idempotency_end(&self, key: &str) {
        self.idempotency_in_flight.remove(key);
    }

    /// Live position actors and resident positions across shards.
    pub async fn stats(&self) -> (usize, usize) {
        let mut live = 0;
        let mut cold = 0;
        for shard in &self.shards {
            if let Ok(stats) = shard.send(Stats).await {
                live += stats.live;
                cold += stats.cold;
            }
        }
        (live, cold)
    }

    /// Passivates every position idle for `passivate_after_seconds` (on the
    /// system clock each actor does this by itself; on a manual clock, here).
    pub async fn passivate_idle(&self) {
        futures_util::future::join_all(self.shards.iter().map(|shard| shard.send(PassivateIdle)))
            .await;
    }

    /// Stops the loops, writes a final snapshot, flushes the journal and
    /// stops the shards (SIGTERM path).
    pub async fn shutdown(&self) {
        self.stop(true).await;
    }

    /// Refuses new API calls (not ready) ahead of a shutdown; the engine
    /// itself keeps working for what is already under way.
    pub fn begin_shutdown(&self) {
        self.ready.store(false, Ordering::Release);
    }

    /// Stops like [`Engine::shutdown`]; without `snapshot`, the next start
    /// replays the journal from the last periodic snapshot (what a crash
    /// would leave, minus the crash).
    pub async fn stop(&self, snapshot: bool) {
        self.ready.store(false, Ordering::Release);
        if snapshot {
            if let Err(error) = self.snapshot().await {
                tracing::error!(%error, "final snapshot failed");
            }
        }
        self.journal().shutdown();
        let arbiters = std::mem::take(
            &mut *self
                .arbiters
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        // Join the shard threads so their actors (and their references to
        // the store) are gone before RocksDB is closed on this thread.
        for arbiter in arbiters {
            arbiter.stop();
            if arbiter.join().is_err() {
                tracing::error!("a shard thread panicked while stopping");
            }
        }
    }
}

/// Recovery builds large temporary maps; glibc keeps freed memory in its
/// arenas, so a recovered server would carry that peak as resident memory
/// for its whole life. Hand it back to the OS once positions are loaded.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it has no
    // preconditions and touches no memory the program still uses.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;
