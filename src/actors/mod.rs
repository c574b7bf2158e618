//! The actor shell around the domain: one [`PositionActor`] per active
//! SKU-location, owned by the [`ShardActor`] of its partition.
//!
//! SKUs map to a fixed number of partitions (a stable hash); partition `p` is
//! owned by shard `p % shards`, and each shard runs on its own arbiter
//! (thread). All positions of one SKU are in one partition, so an availability
//! read is a single message. Position actors are thin: decode the message,
//! `decide`, `evolve`, journal, and only then reply. They never await anything
//! but their own journal append, and never a publisher.

mod messages;
mod position;
mod shard;

pub use messages::{Exec, ExecError, ExecOutcome, Finish, Meta, PositionReadout, ReadSku};
pub use position::{ColdEntry, PositionActor};
pub use shard::{
    CollectSnapshot, HoldFirstFit, ListSkus, LoadPositions, PassivateIdle, ShardActor, ShardStats,
    Stats,
};

use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::Arc;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::storage::{Journal, Store};

/// What every actor shares: the journal, the store and the metrics.
pub struct Shared {
    pub journal: Arc<Journal>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// Next exception-queue id (see [`Shared::new_exception_id`]).
    pub next_exception_id: AtomicU64,
    /// How far apart this process's exception ids are: the partition groups'
    /// count (1 without them).
    pub exception_id_step: u64,
    /// Positions with `available < 0`, kept exact by the actors.
    pub oversold_positions: AtomicI64,
    /// Positions that exist (had at least one event).
    pub positions: AtomicI64,
    pub passivate_after_ms: u64,
    /// Where time is read ([`Clock::system`] in the server).
    pub clock: Clock,
}

impl Shared {
    /// A new exception-queue id. With partition groups, group `g` of `G` numbers
    /// its exceptions `g + 1`, `g + 1 + G`, ...: ids are unique over the groups,
    /// and an id says its group (`(id - 1) % G`).
    pub fn new_exception_id(&self) -> u64 {
        self.next_exception_id
            .fetch_add(self.exception_id_step, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The first exception id a process of group `group` of `groups` hands out,
/// after `last`, the last one in its store (0: none).
pub fn first_exception_id(last: u64, groups: u32, group: u32) -> u64 {
    if last == 0 {
        u64::from(group) + 1
    } else {
        last + u64::from(groups.max(1))
    }
}

/// A SKU-location, as actors and shards key it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PositionKey {
    pub sku: Arc<str>,
    pub location: Arc<str>,
}

/// Stable FNV-1a hash of the SKU: the partition must not change between
/// runs or builds, so `std`'s randomized hasher is not usable here.
pub fn partition_of(sku: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sku.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// The partition group `sku` is in: its partition modulo `[cluster] groups`
/// (0 without groups). The one place the rule is written.
pub fn group_of(sku: &str, config: &crate::config::Config) -> u32 {
    let groups = config.cluster.as_ref().map_or(1, |c| c.groups.max(1));
    partition_of(sku, config.partitions) % groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_in_range() {
        assert_eq!(partition_of("sku-1", 64), partition_of("sku-1", 64));
        assert!((0..1000).all(|i| partition_of(&format!("sku-{i}"), 7) < 7));
        assert_eq!(partition_of("anything", 1), 0);
    }
}
