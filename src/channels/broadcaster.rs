//! The broadcaster: tails the journal, keeps a bounded mirror of the positions channels
//! sell from, and offers each channel the SKUs whose published value really changed.
//!
//! Each channel has its own read position (`next_seq`, starting at its durable cursor).
//! Channels close to the front are served from one shared read of the journal; a channel
//! that fell behind (its publisher was full) is caught up with reads of its own, a chunk
//! per pump, so it never holds the others back.

// foldhash: a fast, randomly seeded hasher; these maps are keyed by SKU and touched
// once or more per journal entry, where SipHash showed in profiles.
use foldhash::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::future::join_all;

use super::policy::{summed_view, Policy, PositionView};
use super::publisher::{Offer, Publisher, Rewound};
use super::status::ChannelStatus;
use super::Update;
use crate::actors::PositionReadout;
use crate::engine::Engine;
use crate::storage::records::EntrySummary;

/// Journal entries read per chunk.
const CHUNK: usize = 1024;

/// SKUs kept in the mirror; past this it is cleared and refilled from reads.
pub const MIRROR_SKUS_MAX: usize = 200_000;

/// SKUs refreshed (resync, dead-letter replay) per message, so live changes interleave.
const REFRESH_SLICE: usize = 256;

/// Least time between two pumps woken by journal appends: a tenth of the shortest
/// `coalesce_ms` of the channels, within these bounds. Publication coalesces over
/// that window anyway; reading the journal once per group commit, and offering every
/// SKU once per pump, would cost the reservation path CPU for nothing.
const PUMP_SPACING_MIN: Duration = Duration::from_millis(2);
const PUMP_SPACING_MAX: Duration = Duration::from_millis(50);

fn pump_spacing(targets: &[Target]) -> Duration {
    let shortest = targets
        .iter()
        .map(|t| t.coalesce)
        .min()
        .unwrap_or(PUMP_SPACING_MAX);
    (shortest / 10).clamp(PUMP_SPACING_MIN, PUMP_SPACING_MAX)
}

/// How often channels that were full are looked at again.
const TICK: Duration = Duration::from_millis(100);

pub struct Target {
    pub id: Arc<str>,
    pub locations: Vec<Arc<str>>,
    pub policy: Policy,
    pub status: Arc<ChannelStatus>,
    pub publisher: Addr<Publisher>,
    pub pending_max: usize,
    /// The channel's `coalesce_ms`.
    pub coalesce: Duration,
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
    /// Highest `seq` offered to each target: an offer never carries a lower one, so
    /// a channel sees a SKU's seqs only increase (a refresh stamped with the head can
    /// run ahead of a lagging channel's live offers).
    offered_seq: Vec<u64>,
    /// The pump that last touched it (for eviction: the least recent go first).
    touched: u64,
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

/// What one chunk changed, per SKU and location: `(first seq, last seq, time of last)`.
type Touched = HashMap<Arc<str>, Vec<TouchedAt>>;

struct TouchedAt {
    location: Arc<str>,
    first_seq: u64,
    last_seq: u64,
    last_at_ms: i64,
}

/// The value `target` publishes for a SKU, from the mirror.
fn target_value(target: &Target, entry: &SkuEntry) -> u64 {
    let positions = entry
        .positions
        .iter()
        .filter(|(l, _)| target.locations.contains(l))
        .map(|(_, view)| view);
    target.policy.apply(summed_view(&target.id, positions))
}

/// Keeps the more recently touched half of the mirror (all of it goes only when every
/// entry was touched by the same pump). An evicted SKU is read again on its next
/// change and offered once more: a level sent twice, never a loss.
fn evict_least_recent(mirror: &mut HashMap<Arc<str>, SkuEntry>) {
    let mut touched: Vec<u64> = mirror.values().map(|e| e.touched).collect();
    if touched.is_empty() {
        return;
    }
    let middle = touched.len() / 2;
    let (_, cutoff, _) = touched.select_nth_unstable(middle);
    let cutoff = *cutoff;
    mirror.retain(|_, entry| entry.touched > cutoff);
}

/// Journal entries read for some targets.
struct Chunk {
    targets: Vec<usize>,
    through: u64,
    records: Vec<(u64, Arc<EntrySummary>)>,
}

pub struct Broadcaster {
    engine: Arc<Engine>,
    targets: Vec<Target>,
    /// Every location some target sells from.
    locations: Vec<Arc<str>>,
    mirror: HashMap<Arc<str>, SkuEntry>,
    /// Pumps so far (the mirror's clock).
    pumps: u64,
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
            mirror: HashMap::default(),
            pumps: 0,
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
            match self.engine.journal().read_summaries(from, CHUNK) {
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
            .filter(|(_, r)| !self.mirror.contains_key(&r.sku))
            .map(|(_, r)| r.sku.clone())
            .collect();
        misses.sort_unstable();
        misses.dedup();
        misses
    }

    /// Keeps the mirror bounded. Only called between pumps: an entry must not vanish
    /// between its read and its offer.
    fn trim_mirror(&mut self) {
        if self.mirror.len() < MIRROR_SKUS_MAX {
            return;
        }
        evict_least_recent(&mut self.mirror);
        tracing::debug!(
            kept = self.mirror.len(),
            "broadcaster mirror full; evicted the least recent"
        );
    }

    fn entry(&mut self, sku: &Arc<str>) -> &mut SkuEntry {
        let targets = self.targets.len();
        let pumps = self.pumps;
        let entry = self.mirror.entry(sku.clone()).or_insert_with(|| SkuEntry {
            positions: Vec::new(),
            last_offered: vec![None; targets],
            offered_seq: vec![0; targets],
            touched: pumps,
        });
        entry.touched = pumps;
        entry
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

    /// Applies the chunks to the mirror, then offers each target what changed.
    fn finish(&mut self, chunks: Vec<Chunk>) {
        let touched: Vec<Touched> = chunks.iter().map(|c| self.apply_chunk(c)).collect();
        for (chunk, touched) in chunks.iter().zip(&touched) {
            for &index in &chunk.targets {
                self.offer_touched(index, chunk.through, touched);
            }
        }
    }

    /// Updates the mirror from one chunk and returns, per SKU, where and when it changed.
    fn apply_chunk(&mut self, chunk: &Chunk) -> Touched {
        let mut touched = Touched::default();
        for (seq, record) in &chunk.records {
            if !self.locations.contains(&record.location) {
                continue;
            }
            let view = PositionView {
                version: record.version,
                available: record.counters.available(),
                commitments: record.commitments.clone(),
            };
            self.entry(&record.sku).apply(&record.location, view);
            let places = touched.entry(record.sku.clone()).or_default();
            match places.iter_mut().find(|t| t.location == record.location) {
                Some(place) => {
                    place.last_seq = *seq;
                    place.last_at_ms = record.recorded_at_ms;
                }
                None => places.push(TouchedAt {
                    location: record.location.clone(),
                    first_seq: *seq,
                    last_seq: *seq,
                    last_at_ms: record.recorded_at_ms,
                }),
            }
        }
        touched
    }

    /// Offers one target the SKUs of a chunk it has not seen whose value changed.
    fn offer_touched(&mut self, index: usize, through: u64, touched: &Touched) {
        let target = &self.targets[index];
        let (next_seq, force_through) = (target.next_seq, target.force_through);
        let mut updates = Vec::new();
        for (sku, places) in touched {
            let (mut seq, mut first_seq, mut at_ms) = (0, u64::MAX, 0);
            for place in places
                .iter()
                .filter(|p| p.last_seq > next_seq && target.locations.contains(&p.location))
            {
                if place.last_seq > seq {
                    seq = place.last_seq;
                    at_ms = place.last_at_ms;
                }
                // Entries at or before `next_seq` were offered already; the first one
                // after it is at least `next_seq + 1` (a lower bound keeps the cursor safe).
                first_seq = first_seq.min(place.first_seq.max(next_seq + 1));
            }
            if seq == 0 {
                continue;
            }
            let Some(entry) = self.mirror.get_mut(sku) else {
                continue;
            };
            let value = target_value(target, entry);
            if entry.last_offered[index] == Some(value) && seq > force_through {
                continue;
            }
            entry.last_offered[index] = Some(value);
            // The value is the mirror's latest, so a higher label is also the truer one.
            let seq = seq.max(entry.offered_seq[index]);
            entry.offered_seq[index] = seq;
            updates.push(Update {
                sku: sku.clone(),
                available: value,
                seq,
                first_seq,
                at_ms,
                owed: false,
            });
        }
        updates.sort_unstable_by_key(|u| u.seq);
        let through = through.max(next_seq);
        let offer = Offer {
            through_seq: through,
            updates,
        };
        match target.publisher.try_send(offer) {
            Ok(()) => self.targets[index].next_seq = through,
            Err(SendError::Full(offer) | SendError::Closed(offer)) => {
                // Mailbox full: this channel stays where it was and catches up later,
                // when these SKUs must be offered again whatever their value.
                for update in offer.updates {
                    if let Some(entry) = self.mirror.get_mut(&update.sku) {
                        entry.last_offered[index] = None;
                    }
                }
            }
        }
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
        let spacing = pump_spacing(&self.targets);
        ctx.spawn(
            async move {
                while head.changed().await.is_ok() {
                    if addr.send(Pump).await.is_err() {
                        break;
                    }
                    // Appends that land meanwhile are read together by the next pump:
                    // one journal read per spacing, not one per group commit.
                    tokio::time::sleep(spacing).await;
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
        self.pumps += 1;
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
        // Stamped with the head from before the reads: every change a read may have
        // missed is after it, so its live update outranks this value when merged.
        let seq = self.engine.journal().head();
        let reads = self.reads(slice);
        AtomicResponse::new(Box::pin(actix::fut::wrap_future(reads).map(
            move |reads, act: &mut Self, ctx: &mut Context<Self>| {
                let at_ms = act.engine.now_ms();
                let skus: Vec<Arc<str>> = reads.iter().map(|(sku, _)| sku.clone()).collect();
                act.apply_reads(reads);
                let mut updates = Vec::with_capacity(skus.len());
                for sku in skus {
                    let Some(entry) = act.mirror.get_mut(&sku) else {
                        continue;
                    };
                    let value = target_value(&act.targets[index], entry);
                    let seq = seq.max(entry.offered_seq[index]);
                    entry.offered_seq[index] = seq;
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
                        if rest.is_empty() {
                            act.targets[index].status.set_refreshing(false);
                        } else {
                            ctx.notify(Refresh {
                                target: index,
                                skus: rest,
                            });
                        }
                    }
                    Err(SendError::Closed(_)) => act.targets[index].status.set_refreshing(false),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_mirror_keeps_its_most_recently_touched_half() {
        let mut mirror: HashMap<Arc<str>, SkuEntry> = HashMap::default();
        for n in 0..10u64 {
            mirror.insert(
                Arc::from(format!("sku-{n}").as_str()),
                SkuEntry {
                    positions: Vec::new(),
                    last_offered: vec![Some(n)],
                    offered_seq: vec![n],
                    touched: n,
                },
            );
        }
        evict_least_recent(&mut mirror);
        let mut kept: Vec<u64> = mirror.values().map(|e| e.touched).collect();
        kept.sort_unstable();
        assert_eq!(kept, [6, 7, 8, 9]);
        evict_least_recent(&mut HashMap::default());
    }
}
