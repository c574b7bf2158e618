//! A shard: the supervisor of the position actors of its partitions, on its
//! own arbiter. It routes each command to the position's actor, activating
//! it on first use from the resident state, and keeps the state of
//! passivated positions (compact, no actor) so millions of positions do not
//! need millions of live actors.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use futures_util::future::join_all;

use super::messages::{Exec, ExecError, ExecOutcome, PositionReadout, ReadSku};
use super::position::{
    readout, store_key, CheckIdle, ColdEntry, Parking, PositionActor, Read, Run, TakeSnapshot,
};
use super::{PositionKey, Shared};
use crate::storage::records::PositionSnapshot;
use crate::storage::replay::load_position;

/// Commands queued for one position before it answers 503: a hot SKU gets
/// back-pressure instead of an ever longer queue (and latency).
const POSITION_IN_FLIGHT_MAX: u32 = 1024;

struct LiveEntry {
    addr: Addr<PositionActor>,
    /// Messages routed to the actor and not answered yet. Everything reaches
    /// the actor through the shard, so zero means an empty mailbox.
    in_flight: u32,
}

/// State shared by the shard and its actors, all on the shard's thread.
#[derive(Default)]
pub struct ShardState {
    live: HashMap<PositionKey, LiveEntry>,
    /// Boxed: the map keeps ~2x buckets for its entries, and a bucket of a
    /// pointer is 24 bytes cheaper per spare slot than an inline entry.
    cold: HashMap<PositionKey, Box<ColdEntry>>,
}

impl Parking for ShardState {
    fn in_flight(&self, key: &PositionKey) -> u32 {
        self.live.get(key).map_or(0, |entry| entry.in_flight)
    }

    fn park(&mut self, key: PositionKey, entry: ColdEntry) {
        self.live.remove(&key);
        // A position that never had an event (only rejected commands) does
        // not exist: drop it rather than keep it resident.
        if entry.position.version > 0 {
            self.cold.insert(key, Box::new(entry));
        }
    }
}

impl ShardState {
    fn finished(&mut self, key: &PositionKey) {
        if let Some(entry) = self.live.get_mut(key) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
        }
    }
}

pub struct ShardActor {
    shared: Arc<Shared>,
    state: Rc<RefCell<ShardState>>,
}

impl ShardActor {
    pub fn new(shared: Arc<Shared>) -> ShardActor {
        ShardActor {
            shared,
            state: Rc::new(RefCell::new(ShardState::default())),
        }
    }

    /// The live actor of `key`, started from its cold state (or, with
    /// `create`, from an empty position) when it has none.
    fn activate(&mut self, key: &PositionKey, create: bool) -> Option<Addr<PositionActor>> {
        let mut state = self.state.borrow_mut();
        let mut stopped = false;
        if let Some(entry) = state.live.get(key) {
            if entry.addr.connected() {
                return Some(entry.addr.clone());
            }
            stopped = true;
        }
        let entry = if stopped {
            // The actor stopped without parking its state: rebuild it from
            // what is durable rather than start from nothing.
            state.live.remove(key);
            match load_position(&*self.shared.store, &key.sku, &key.location) {
                Ok((position, last_seq)) => ColdEntry {
                    position,
                    last_seq,
                    dirty: true,
                },
                Err(error) => {
                    tracing::error!(%error, sku = %key.sku, "could not reload a stopped position");
                    return None;
                }
            }
        } else {
            match state.cold.remove(key) {
                Some(entry) => *entry,
                None if create => ColdEntry::default(),
                None => return None,
            }
        };
        let actor = PositionActor::new(key.clone(), entry, self.shared.clone(), self.state.clone());
        let addr = actor.start();
        state.live.insert(
            key.clone(),
            LiveEntry {
                addr: addr.clone(),
                in_flight: 0,
            },
        );
        Some(addr)
    }
}

impl Actor for ShardActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Callers use `send().await`, so a full shard mailbox makes them wait
        // (back-pressure to the HTTP workers) rather than grow a queue.
        ctx.set_mailbox_capacity(4096);
    }
}

type Local<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

impl ShardActor {
    /// Routes `exec` to its position's actor; the future resolves once the
    /// outcome is durable.
    fn run(&mut self, exec: Exec) -> Local<Result<ExecOutcome, ExecError>> {
        let key = PositionKey {
            sku: exec.sku.clone(),
            location: exec.location.clone(),
        };
        let Some(addr) = self.activate(&key, exec.create) else {
            return Box::pin(async { Err(ExecError::NotFound) });
        };
        if let Some(entry) = self.state.borrow_mut().live.get_mut(&key) {
            if entry.in_flight >= POSITION_IN_FLIGHT_MAX {
                return Box::pin(async {
                    Err(ExecError::Storage(crate::storage::StorageError::Overloaded))
                });
            }
            entry.in_flight += 1;
        }
        let state = self.state.clone();
        Box::pin(async move {
            let result = addr.send(Run(exec)).await;
            state.borrow_mut().finished(&key);
            match result {
                // Decided; wait here (a task of its own, not the actor's) for
                // the append to be durable.
                Ok(Ok(pending)) => pending.durable().await,
                Ok(Err(error)) => Err(error),
                Err(_) => Err(ExecError::Mailbox),
            }
        })
    }
}

impl Handler<Exec> for ShardActor {
    type Result = ResponseFuture<Result<ExecOutcome, ExecError>>;

    fn handle(&mut self, exec: Exec, _ctx: &mut Context<Self>) -> Self::Result {
        self.run(exec)
    }
}

/// Holds a line that names no location at the first of `locations` whose
/// channel view covers it, reading and holding in one message: the read and
/// then the hold as two messages cost a second round trip to the shard,
/// across threads when the SKU lives on another worker. `make` builds the
/// hold for the location chosen. `Ok(None)`: by the read, no location
/// covers the line; an `Err` is the refused hold. The read may be stale
/// either way: the caller then tries each location, and the holds decide.
pub struct HoldFirstFit {
    pub sku: Arc<str>,
    pub channel: Arc<str>,
    pub locations: Vec<Arc<str>>,
    pub qty: u64,
    /// The hold at the chosen location (`Err`: it could not be built, e.g.
    /// its record did not encode; answered as is).
    pub make: Box<dyn FnOnce(Arc<str>) -> Result<Exec, ExecError> + Send>,
}

impl Message for HoldFirstFit {
    type Result = Result<Option<(Arc<str>, ExecOutcome)>, ExecError>;
}

impl Handler<HoldFirstFit> for ShardActor {
    type Result = ResponseActFuture<Self, Result<Option<(Arc<str>, ExecOutcome)>, ExecError>>;

    fn handle(&mut self, hold: HoldFirstFit, _ctx: &mut Context<Self>) -> Self::Result {
        let read = self.read(ReadSku {
            sku: hold.sku,
            locations: hold.locations,
            hold_of: None,
        });
        let (channel, qty, make) = (hold.channel, hold.qty, hold.make);
        Box::pin(read.into_actor(self).then(move |readouts, shard, _ctx| {
            // Readouts come in the order of the locations asked for.
            let fitting = readouts
                .iter()
                .find(|r| u64::try_from(r.channel_view(&channel)).is_ok_and(|view| view >= qty))
                .map(|r| r.location.clone());
            let held: Local<_> = match fitting {
                None => Box::pin(async { Ok(None) }),
                Some(location) => match make(location.clone()) {
                    Ok(exec) => {
                        let run = shard.run(exec);
                        Box::pin(async move { run.await.map(|outcome| Some((location, outcome))) })
                    }
                    Err(error) => Box::pin(async move { Err(error) }),
                },
            };
            held.into_actor(shard)
        }))
    }
}

/// The distinct SKUs with a position at any of `locations` (resync, drift checks).
pub struct ListSkus {
    pub locations: Vec<Arc<str>>,
}

impl Message for ListSkus {
    type Result = Vec<Arc<str>>;
}

impl Handler<ListSkus> for ShardActor {
    type Result = MessageResult<ListSkus>;

    fn handle(&mut self, list: ListSkus, _ctx: &mut Context<Self>) -> Self::Result {
        let state = self.state.borrow();
        let mut skus: Vec<Arc<str>> = state
            .live
            .keys()
            .chain(state.cold.keys())
            .filter(|key| list.locations.contains(&key.location))
            .map(|key| key.sku.clone())
            .collect();
        skus.sort_unstable();
        skus.dedup();
        MessageResult(skus)
    }
}

impl Handler<ReadSku> for ShardActor {
    type Result = ResponseFuture<Vec<PositionReadout>>;

    fn handle(&mut self, read: ReadSku, _ctx: &mut Context<Self>) -> Self::Result {
        self.read(read)
    }
}

impl ShardActor {
    /// The existing positions of `read.sku` at `read.locations`, in that order.
    fn read(&mut self, read: ReadSku) -> Local<Vec<PositionReadout>> {
        let mut state = self.state.borrow_mut();
        let mut ready = Vec::new();
        let mut pending = Vec::new();
        let mut routed = Vec::new();
        for (index, location) in read.locations.iter().enumerate() {
            let key = PositionKey {
                sku: read.sku.clone(),
                location: location.clone(),
            };
            if let Some(entry) = state.live.get_mut(&key) {
                // Counted like a command, so the actor cannot passivate
                // (and drop this read) before answering it.
                entry.in_flight += 1;
                let request = entry.addr.send(Read {
                    hold_of: read.hold_of.clone(),
                });
                pending.push((index, request));
                routed.push(key);
            } else if let Some(entry) = state.cold.get(&key) {
                ready.push((index, readout(&key, &entry.position, read.hold_of.as_ref())));
            }
        }
        drop(state);
        let shard_state = self.state.clone();
        Box::pin(async move {
            let indexes: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
            let answers = join_all(pending.into_iter().map(|(_, request)| request)).await;
            {
                let mut state = shard_state.borrow_mut();
                for key in &routed {
                    state.finished(key);
                }
            }
            for (index, answer) in indexes.into_iter().zip(answers) {
                if let Ok(readout) = answer {
                    ready.push((index, readout));
                }
            }
            ready.sort_by_key(|(index, _)| *index);
            // A position that never had an event does not exist (SPEC §1).
            ready
                .into_iter()
                .map(|(_, readout)| readout)
                .filter(|readout| readout.version > 0)
                .collect()
        })
    }
}

/// Collect positions changed since the last snapshot (all with `full`).
pub struct CollectSnapshot {
    pub full: bool,
}

/// `Err` when a live position could not hand over durable state.
impl Message for CollectSnapshot {
    type Result = Result<Vec<(Vec<u8>, PositionSnapshot)>, ()>;
}

/// Live position actors asked for their state at once, per wave of a snapshot.
const SNAPSHOT_WAVE: usize = 256;

/// Resident (cold) positions copied per slice of a snapshot: the shard's
/// thread is an HTTP worker's, and it serves requests between slices rather
/// than copying a million positions in one go.
const SNAPSHOT_SLICE: usize = 1024;

impl Handler<CollectSnapshot> for ShardActor {
    type Result = ResponseFuture<Result<Vec<(Vec<u8>, PositionSnapshot)>, ()>>;

    fn handle(&mut self, collect: CollectSnapshot, _ctx: &mut Context<Self>) -> Self::Result {
        let full = collect.full;
        let mut state = self.state.borrow_mut();
        // Only the keys now; the positions are copied slice by slice below.
        let cold: Vec<PositionKey> = state
            .cold
            .iter()
            .filter(|(_, entry)| (entry.dirty || full) && entry.position.version > 0)
            .map(|(key, _)| key.clone())
            .collect();
        let mut live: Vec<(PositionKey, Addr<PositionActor>)> = state
            .live
            .iter_mut()
            .map(|(key, entry)| {
                // Counted in flight now, so none passivates before its turn.
                entry.in_flight += 1;
                (key.clone(), entry.addr.clone())
            })
            .collect();
        drop(state);
        let shard_state = self.state.clone();
        Box::pin(async move {
            let mut ready = Vec::with_capacity(cold.len());
            for slice in cold.chunks(SNAPSHOT_SLICE) {
                {
                    let mut state = shard_state.borrow_mut();
                    for key in slice {
                        if let Some(entry) = state.cold.get_mut(key) {
                            // Changed since the keys were taken only by going
                            // live and parking again, which marks it dirty.
                            if entry.dirty || full {
                                entry.dirty = false;
                                let snapshot = PositionSnapshot {
                                    position: entry.position.clone(),
                                    last_seq: entry.last_seq,
                                };
                                ready.push((store_key(key), snapshot));
                            }
                        } else if let Some(entry) = state.live.get_mut(key) {
                            // Activated meanwhile, with its dirty state: ask
                            // its actor, or its changes before the snapshot's
                            // `seq` would be in neither the snapshot nor the
                            // replay.
                            entry.in_flight += 1;
                            live.push((key.clone(), entry.addr.clone()));
                        }
                    }
                }
                tokio::task::yield_now().await;
            }
            // In waves: every live actor asked at once would put thousands of
            // messages ahead of the reservations on this shard.
            let mut answers = Vec::with_capacity(live.len());
            for wave in live.chunks(SNAPSHOT_WAVE) {
                let requests = wave
                    .iter()
                    .map(|(_, addr)| addr.send(TakeSnapshot { full }));
                answers.extend(join_all(requests).await);
            }
            {
                let mut state = shard_state.borrow_mut();
                for (key, _) in &live {
                    state.finished(key);
                }
            }
            for ((key, _), answer) in live.iter().zip(answers) {
                match answer {
                    Ok(Ok(Some((position, last_seq)))) if position.version > 0 => {
                        let snapshot = PositionSnapshot { position, last_seq };
                        ready.push((store_key(key), snapshot));
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(())) | Err(_) => return Err(()),
                }
            }
            Ok(ready)
        })
    }
}

/// Every live position checks whether it has been idle long enough to
/// passivate (simulated time: on a manual clock nothing checks by itself).
pub struct PassivateIdle;

impl Message for PassivateIdle {
    type Result = ();
}

impl Handler<PassivateIdle> for ShardActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: PassivateIdle, _ctx: &mut Context<Self>) -> Self::Result {
        let live: Vec<Addr<PositionActor>> = self
            .state
            .borrow()
            .live
            .values()
            .map(|entry| entry.addr.clone())
            .collect();
        Box::pin(async move {
            join_all(live.iter().map(|addr| addr.send(CheckIdle))).await;
        })
    }
}

/// Install recovered positions (cold) at start-up.
pub struct LoadPositions(pub Vec<(PositionKey, ColdEntry)>);

impl Message for LoadPositions {
    type Result = ();
}

impl Handler<LoadPositions> for ShardActor {
    type Result = ();

    fn handle(&mut self, load: LoadPositions, _ctx: &mut Context<Self>) {
        let mut state = self.state.borrow_mut();
        state.cold.reserve(load.0.len());
        for (key, entry) in load.0 {
            state.cold.insert(key, Box::new(entry));
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ShardStats {
    pub live: usize,
    pub cold: usize,
}

pub struct Stats;

impl Message for Stats {
    type Result = ShardStats;
}

impl Handler<Stats> for ShardActor {
    type Result = MessageResult<Stats>;

    fn handle(&mut self, _: Stats, _ctx: &mut Context<Self>) -> Self::Result {
        let state = self.state.borrow();
        MessageResult(ShardStats {
            live: state.live.len(),
            cold: state.cold.len(),
        })
    }
}
