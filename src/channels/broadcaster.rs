//! The broadcaster: tails the journal, keeps a bounded mirror of the positions channels
//! sell from, and offers each channel the SKUs whose published value really changed.
//!
//! Each channel has its own read position (`next_seq`, starting at its durable cursor).
//! Channels close to the front are served from one shared read of the journal; a channel
//! that fell behind (its publisher was full) is caught up with reads of its own, a chunk
//! per pump, so it never holds the others back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use super::policy::{summed_view, Policy, PositionView};
use super::publisher::{Offer, Publisher, Rewound};
use super::runtime::ChannelStatus;
use super::Update;
use crate::actors::{now_ms, PositionReadout};
use crate::engine::Engine;
use crate::storage::records::JournalRecord;

/// Journal entries read per chunk.
const CHUNK: usize = 1024;

/// SKUs kept in the mirror; past this it is cleared and refilled from reads.
pub const MIRROR_SKUS_MAX: usize = 200_000;

/// SKUs refreshed (resync, dead-letter replay) per message, so live changes interleave.
const REFRESH_SLICE: usize = 256;

/// How often channels that were full are looked at again.
const TICK: Duration = Duration::from_millis(100);

pub struct Target {
    pub id: Arc<str>,
    pub locations: Vec<Arc<str>>,
    pub policy: Policy,
    pub status: Arc<ChannelStatus>,
    pub publisher: Addr<Publisher>,
    pub pending_max: usize,
    /// Every journal entry up to here has been offered to this channel.
    pub next_seq: u64,
    /// Entries up to here are offered even when the value did not change (replay).
    pub force_through: u64,
}

impl Target {
    fn has_room(&self) -> bool {
        self.status.pending() < self.pending_max
    }
}

struct SkuEntry {
    positions: Vec<(Arc<str>, PositionView)>,
    /// Last value offered to each target (by index).
    last_offered: Vec<Option<u64>>,
}

impl SkuEntry {
    fn apply(&mut self, location: &Arc<str>, view: PositionView) {
        match self.positions.iter_mut().find(|(l, _)| l == location) {
            Some((_, current)) if current.version >= view.version => {}
            Some((_, current)) => *current = view,
            None => self.positions.push((location.clone(), view)),
        }
    }
}

/// Journal entries read for some targets.
struct Chunk {
    targets: Vec<usize>,
    through: u64,
    records: Vec<(u64, JournalRecord)>,
}

pub struct Broadcaster {
    engine: Arc<Engine>,
    targets: Vec<Target>,
    /// Every location some target sells from.
    locations: Vec<Arc<str>>,
    mirror: HashMap<Arc<str>, SkuEntry>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Pump;

/// Offer the current value of `skus` to one target, changed or not.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Refresh {
    pub target: usize,
    pub skus: Vec<Arc<str>>,
}

/// Re-offer everything after `after_seq` to one target.
#[derive(Message)]
#[rtype(result = "Result<(), String>")]
pub struct Rewind {
    pub target: usize,
    pub after_seq: u64,
}

impl Broadcaster {
    pub fn new(engine: Arc<Engine>, targets: Vec<Target>) -> Broadcaster {
        let mut locations: Vec<Arc<str>> = targets
            .iter()
            .flat_map(|t| t.locations.iter().cloned())
            .collect();
        locations.sort_unstable();
        locations.dedup();
        Broadcaster {
            engine,
            targets,
            locations,
            mirror: HashMap::new(),
        }
    }

    /// Reads the next chunks: one shared by the targets near the front, one per target
    /// that lags behind them.
    fn plan(&self) -> Vec<Chunk> {
        let head = self.engine.journal().head();
        let eligible: Vec<usize> = (0..self.targets.len())
            .filter(|&i| self.targets[i].next_seq < head && self.targets[i].has_room())
            .collect();
        let Some(front) = eligible.iter().map(|&i| self.targets[i].next_seq).max() else {
            return Vec::new();
        };
        let near = front.saturating_sub(CHUNK as u64);
        let (group, lagging): (Vec<usize>, Vec<usize>) = eligible
            .into_iter()
            .partition(|&i| self.targets[i].next_seq >= near);
        let mut chunks = Vec::new();
        let mut read = |targets: Vec<usize>| {
            let from = targets
                .iter()
                .map(|&i| self.targets[i].next_seq)
                .min()
                .unwrap_or(head);
            match self.engine.read_log(from, CHUNK) {
                Ok(records) => {
                    let through = records.last().map_or(from, |(seq, _)| *seq);
                    chunks.push(Chunk {
                        targets,
                        through,
                        records,
                    });
                }
                Err(error) => {
                    tracing::error!(%error, from, "broadcaster could not read the journal")
                }
            }
        };
        read(group);
        for target in lagging {
            read(vec![target]);
        }
        chunks
    }

    /// SKUs of `chunks` that channels care about and the mirror does not know.
    fn misses(&self, chunks: &[Chunk]) -> Vec<Arc<str>> {
        let mut misses: Vec<Arc<str>> = chunks
            .iter()
            .flat_map(|c| c.records.iter())
            .filter(|(_, r)| self.locations.iter().any(|l| **l == *r.location))
            .filter(|(_, r)| !self.mirror.contains_key(r.sku.as_str()))
            .map(|(_, r)| Arc::from(r.sku.as_str()))
            .collect();
        misses.sort_unstable();
        misses.dedup();
        misses
    }

    /// Keeps the mirror bounded. Only called between pumps: an entry must not vanish
    /// between its read and its offer.
    fn trim_mirror(&mut self) {
        if self.mirror.len() >= MIRROR_SKUS_MAX {
            tracing::debug!("broadcaster mirror full; clearing it");
            self.mirror.clear();
        }
    }

    fn entry(&mut self, sku: &Arc<str>) -> &mut SkuEntry {
        let targets = self.targets.len();
        self.mirror.entry(sku.clone()).or_insert_with(|| SkuEntry {
            positions: Vec::new(),
            last_offered: vec![None; targets],
        })
    }

    fn apply_reads(&mut self, reads: Vec<(Arc<str>, Vec<PositionReadout>)>) {
        for (sku, readouts) in reads {
            let entry = self.entry(&sku);
            for readout in readouts {
                let view = PositionView {
                    version: readout.version,
                    available: readout.available(),
                    commitments: readout.commitments.clone(),
                };
                entry.apply(&readout.location, view);
            }
        }
    }

    fn location(&self, name: &str) -> Option<Arc<str>> {
        self.locations.iter().find(|l| ***l == *name).cloned()
    }

    /// Applies the chunks to the mirror and offers what changed.
    fn finish(&mut self, chunks: Vec<Chunk>) {
        for chunk in &chunks {
            for (_, record) in &chunk.records {
                let Some(location) = self.location(&record.location) else {
                    continue;
                };
                let sku: Arc<str> = Arc::from(record.sku.as_str());
                let view = PositionView {
                    version: record.version,
                    available: record.counters.available(),
                    commitments: record.commitments.clone(),
                };
                self.entry(&sku).apply(&location, view);
            }
        }
        for chunk in chunks {
            for &index in &chunk.targets {
                self.offer_chunk(index, &chunk);
            }
        }
    }

    fn offer_chunk(&mut self, index: usize, chunk: &Chunk) {
        let (next_seq, force_through) = {
            let t = &self.targets[index];
            (t.next_seq, t.force_through)
        };
        // sku -> (latest seq, first seq, at of latest)
        let mut dirty: HashMap<&str, (u64, u64, i64)> = HashMap::new();
        for (seq, record) in &chunk.records {
            if *seq <= next_seq
                || !self.targets[index]
                    .locations
                    .iter()
                    .any(|l| **l == *record.location)
            {
                continue;
            }
            dirty
                .entry(record.sku.as_str())
                .and_modify(|d| {
                    d.0 = *seq;
                    d.2 = record.recorded_at_ms;
                })
                .or_insert((*seq, *seq, record.recorded_at_ms));
        }
        let mut updates = Vec::new();
        let mut offered = Vec::new();
        for (sku, (seq, first_seq, at_ms)) in dirty {
            let Some(entry) = self.mirror.get(sku) else {
                continue;
            };
            let value = self.value(index, entry);
            if entry.last_offered[index] == Some(value) && seq > force_through {
                continue;
            }
            let sku: Arc<str> = Arc::from(sku);
            offered.push((sku.clone(), value));
            updates.push(Update {
                sku,
                available: value,
                seq,
                first_seq,
                at_ms,
                owed: false,
            });
        }
        updates.sort_unstable_by_key(|u| u.seq);
        let target = &mut self.targets[index];
        let offer = Offer {
            through_seq: chunk.through.max(next_seq),
            updates,
        };
        if target.publisher.try_send(offer).is_err() {
            // Mailbox full: this channel stays where it was and catches up later.
            return;
        }
        target.next_seq = chunk.through.max(next_seq);
        for (sku, value) in offered {
            if let Some(entry) = self.mirror.get_mut(&sku) {
                entry.last_offered[index] = Some(value);
            }
        }
    }

    fn value(&self, index: usize, entry: &SkuEntry) -> u64 {
        let target = &self.targets[index];
        let positions = entry
            .positions
            .iter()
            .filter(|(l, _)| target.locations.contains(l))
            .map(|(_, view)| view);
        target.policy.apply(summed_view(&target.id, positions))
    }

    fn reads(
        &self,
        skus: Vec<Arc<str>>,
    ) -> impl Future<Output = Vec<(Arc<str>, Vec<PositionReadout>)>> {
        let engine = self.engine.clone();
        let locations = self.locations.clone();
        async move {
            let reads = skus.into_iter().map(|sku| {
                let engine = engine.clone();
                let locations = locations.clone();
                async move {
                    let readouts = engine
                        .read_sku(&sku, Some(&locations), None)
                        .await
                        .unwrap_or_default();
                    (sku, readouts)
                }
            });
            join_all(reads).await
        }
    }

    fn more_to_do(&self) -> bool {
        let head = self.engine.journal().head();
        self.targets
            .iter()
            .any(|t| t.next_seq < head && t.has_room())
    }
}

impl Actor for Broadcaster {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Wake on every journal append (the watch coalesces), and on a tick for
        // channels whose publishers had no room.
        let mut head = self.engine.journal().subscribe();
        let addr = ctx.address();
        ctx.spawn(
            async move {
                while head.changed().await.is_ok() {
                    if addr.send(Pump).await.is_err() {
                        break;
                    }
                }
            }
            .into_actor(self),
        );
        ctx.run_interval(TICK, |_, ctx| ctx.notify(Pump));
        ctx.notify(Pump);
    }
}

impl Handler<Pump> for Broadcaster {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, _: Pump, _ctx: &mut Context<Self>) -> Self::Result {
        self.trim_mirror();
        let chunks = self.plan();
        let misses = self.misses(&chunks);
        let reads = self.reads(misses);
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(reads).map(
            move |reads, act: &mut Self, ctx: &mut Context<Self>| {
                act.apply_reads(reads);
                let progressed = !chunks.iter().all(|c| c.records.is_empty());
                act.finish(chunks);
                if progressed && act.more_to_do() {
                    ctx.notify(Pump);
                }
            },
        )))
    }
}

impl Handler<Refresh> for Broadcaster {
    type Result = AtomicResponse<Self, ()>;

    fn handle(&mut self, mut refresh: Refresh, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(target) = self.targets.get(refresh.target) else {
            return AtomicResponse::new(Box::pin(actix::fut::ready(())));
        };
        if !target.has_room() {
            // Back-pressure: try again shortly, the live flow goes on meanwhile.
            return AtomicResponse::new(Box::pin(actix::fut::ready(()).map(
                move |(), _act: &mut Self, ctx: &mut Context<Self>| {
                    ctx.notify_later(refresh, TICK);
                },
            )));
        }
        let rest = refresh
            .skus
            .split_off(refresh.skus.len().min(REFRESH_SLICE));
        let slice = std::mem::take(&mut refresh.skus);
        let index = refresh.target;
        let reads = self.reads(slice);
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(reads).map(
            move |reads, act: &mut Self, ctx: &mut Context<Self>| {
                let seq = act.engine.journal().head();
                let at_ms = now_ms();
                let skus: Vec<Arc<str>> = reads.iter().map(|(sku, _)| sku.clone()).collect();
                act.apply_reads(reads);
                let mut updates = Vec::with_capacity(skus.len());
                for sku in skus {
                    let Some(entry) = act.mirror.get(&sku) else {
                        continue;
                    };
                    let value = act.value(index, entry);
                    updates.push(Update {
                        sku: sku.clone(),
                        available: value,
                        seq,
                        first_seq: 0,
                        at_ms,
                        owed: true,
                    });
                }
                let offered: Vec<(Arc<str>, u64)> = updates
                    .iter()
                    .map(|u| (u.sku.clone(), u.available))
                    .collect();
                let offer = Offer {
                    through_seq: 0,
                    updates,
                };
                match act.targets[index].publisher.try_send(offer) {
                    Ok(()) => {
                        for (sku, value) in offered {
                            if let Some(entry) = act.mirror.get_mut(&sku) {
                                entry.last_offered[index] = Some(value);
                            }
                        }
                        if !rest.is_empty() {
                            ctx.notify(Refresh {
                                target: index,
                                skus: rest,
                            });
                        }
                    }
                    Err(SendError::Closed(_)) => {}
                    Err(SendError::Full(Offer { updates, .. })) => {
                        let mut skus: Vec<Arc<str>> = updates.into_iter().map(|u| u.sku).collect();
                        skus.extend(rest);
                        ctx.notify_later(
                            Refresh {
                                target: index,
                                skus,
                            },
                            TICK,
                        );
                    }
                }
            },
        )))
    }
}

impl Handler<Rewind> for Broadcaster {
    type Result = AtomicResponse<Self, Result<(), String>>;

    /// Moves the channel's durable cursor back first (in mailbox order, behind every
    /// offer already sent), then re-reads the journal from there.
    fn handle(&mut self, rewind: Rewind, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(target) = self.targets.get(rewind.target) else {
            return AtomicResponse::new(Box::pin(actix::fut::ready(Ok(()))));
        };
        let moved = target.publisher.send(Rewound {
            after_seq: rewind.after_seq,
        });
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(moved).map(
            move |sent, act: &mut Self, ctx: &mut Context<Self>| {
                sent.map_err(|e| e.to_string())??;
                let head = act.engine.journal().head();
                let target = &mut act.targets[rewind.target];
                target.next_seq = target.next_seq.min(rewind.after_seq);
                target.force_through = head;
                ctx.notify(Pump);
                Ok(())
            },
        )))
    }
}
