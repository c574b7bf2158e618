//! Cluster mode (`[cluster]`, docs/CLUSTER.md): several stockwire nodes over one
//! journal, a JetStream stream replicated on `replicas` NATS servers.
//!
//! One node at a time owns the journal, and with it every partition: it runs the
//! engine, and its store ([`store::ReplicatedStore`]) writes each group commit to
//! the stream, fenced by `Nats-Expected-Last-Sequence`, before its local RocksDB
//! and before any caller is answered. The other nodes follow the stream into their
//! own RocksDB and forward every request to the owner (`api::forward`). When the
//! owner goes unheard for `takeover_after_ms`, the successor (the live follower
//! with the lowest node id) catches up to the stream's end and appends a takeover
//! marker expecting that end: if it lands, it owns the journal, recovers from its
//! RocksDB (the same store, replicated) and serves; if another write landed
//! first, it goes on following. Heartbeats decide only *when* to try; the fence
//! decides whether a write lands, so a stale owner's next write is refused and it
//! steps down (exits, to be restarted as a follower).

pub mod apply;
pub mod frame;
pub mod link;
pub mod seed;
pub mod store;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;
use crate::storage::{RocksStore, Space, StorageError, Store, WriteBatch};
use frame::{NODE_HEADER, PART_HEADER, TAKEOVER_HEADER};
use link::{AppendFailure, Link};

/// `Space::Meta` key: the last stream sequence the local store holds.
pub const APPLIED_KEY: &[u8] = b"cluster_applied_seq";

/// Most parts one write may be cut into (each at most the server's `max_payload`):
/// the owner refuses a larger write, a follower a longer run of parts.
pub const PARTS_MAX: u32 = 1024;

/// Longest heartbeat read; a longer message on the subject is not one of ours.
const HEARTBEAT_BYTES_MAX: usize = 4096;

/// Adds to `batch` that the store holds the stream up to `seq`, so the marker and
/// the write it came with land together.
pub fn mark_applied(batch: &mut WriteBatch, seq: u64) -> Result<(), StorageError> {
    batch.put(
        Space::Meta,
        APPLIED_KEY,
        crate::storage::codec::encode(&seq)?,
    );
    Ok(())
}

/// Writes `batch` to `local` with the mark that it holds the stream up to `seq`.
pub fn write_applied(
    local: &RocksStore,
    mut batch: WriteBatch,
    seq: u64,
    sync: bool,
) -> Result<(), StorageError> {
    mark_applied(&mut batch, seq)?;
    local.write(batch, sync)
}

/// The exit status of a node that lost ownership (its supervisor restarts it,
/// and it rejoins as a follower).
pub const STEPPED_DOWN_EXIT: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Connecting, or following before it knows the cluster.
    Starting,
    Follower,
    /// Took over; recovering its engine from the local store.
    Recovering,
    Owner,
    /// Lost ownership (fenced, or the stream unavailable); exiting.
    SteppedDown,
    /// Its store does not fit the stream (it holds a later sequence than the
    /// stream's last: another stream's data dir); it stops following.
    Behind,
    /// The stream was purged past its store: copying the owner's (`seed`).
    Seeding,
}

impl Role {
    const ALL: [Role; 7] = [
        Role::Starting,
        Role::Follower,
        Role::Recovering,
        Role::Owner,
        Role::SteppedDown,
        Role::Behind,
        Role::Seeding,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Follower => "follower",
            Role::Recovering => "recovering",
            Role::Owner => "owner",
            Role::SteppedDown => "stepped_down",
            Role::Behind => "behind",
            Role::Seeding => "seeding",
        }
    }
}

/// What a node says every `heartbeat_ms` on `stockwire.<stream>.nodes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node: String,
    pub advertise: String,
    pub role: Role,
    /// The stream sequence of the takeover marker this node knows as the last.
    pub epoch: u64,
    pub applied: u64,
    /// A follower whose takeover attempt failed (it cannot reach the stream, or
    /// cannot catch up): the next one in id order tries instead, for a while.
    #[serde(default)]
    pub yielding: bool,
}

#[derive(Debug, Clone)]
pub struct Peer {
    pub beat: Heartbeat,
    pub heard: Instant,
}

/// The owner as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub epoch: u64,
}

/// This node's part in the cluster: shared by the controller (on the link's
/// thread), the store, the forwarding middleware and `GET /v1/cluster`.
pub struct Node {
    pub config: ClusterConfig,
    /// `<node>.<random>`: this process's message ids can never be taken for an
    /// earlier run's.
    pub incarnation: String,
    role: AtomicU8,
    /// Last stream sequence whose write is in the local store.
    pub applied: AtomicU64,
    /// Last stream sequence in the local store, or past it by the parts of a
    /// write whose last part has not come yet: never past a whole write the local
    /// store lacks (a takeover starts from `seen`).
    pub seen: AtomicU64,
    /// Last stream sequence the follower has received, written or not: its
    /// progress, which the watchdog watches (a large fetch is written only once
    /// whole).
    pub received: AtomicU64,
    /// The stream's last sequence when last asked.
    pub stream_last: AtomicU64,
    /// Ownership changes (takeover markers) seen since start.
    pub failovers: AtomicU64,
    /// Requests forwarded to the owner.
    pub forwarded: AtomicU64,
    /// How long this node's last takeover took, from deciding to serving (ms).
    pub last_takeover_ms: AtomicU64,
    /// Copies of the owner's store this node made (the stream had been purged
    /// past its own).
    pub seeds: AtomicU64,
    /// Chunks of the owner's store copied, over all copies.
    pub seed_chunks: AtomicU64,
    /// The stream sequence the last finished copy started from (0: none).
    pub seeded_from: AtomicU64,
    /// The latest copy's generation, locked while a copy writes (`seed`).
    pub(crate) copies: Mutex<u64>,
    owner: Mutex<Option<Owner>>,
    peers: Mutex<BTreeMap<String, Peer>>,
    /// The owner heard last of each other partition group (`groups > 1`): its
    /// heartbeat, from that group's subject.
    group_owners: Mutex<BTreeMap<u32, Peer>>,
    started: Instant,
    /// When this node last heard its own heartbeat back (ms since `started`): an
    /// owner that cannot reach NATS for a takeover window steps down, since the
    /// others will take over; it does not go on answering reads meanwhile.
    self_heard_ms: AtomicU64,
    /// The epoch of this node's own takeover (0: none): an owner that hears a
    /// later one steps down.
    my_epoch: AtomicU64,
    /// Counts this owner's store writes twice, at their start and at their end
    /// (odd: one is in flight). The lease check trusts a stream answer only when
    /// no write began or ended around it.
    pub writes: AtomicU64,
    /// Until when (ms since `started`) this node yields its turn as successor.
    yield_until_ms: AtomicU64,
    /// Since when (ms since `started`, 0: not) this owner's group's preferred
    /// member has been ready to be handed the group (`hand_back`).
    hand_back_since_ms: AtomicU64,
    /// Set on SIGTERM: this node takes over no more.
    stopping: std::sync::atomic::AtomicBool,
    /// Set while this node catches up for a takeover: its follower asks for more
    /// at once instead of every [`FOLLOW_EVERY`].
    hurry: std::sync::atomic::AtomicBool,
    /// Wakes a follower waiting out [`FOLLOW_EVERY`] when `hurry` is set.
    hurried: tokio::sync::Notify,
    local: Arc<RocksStore>,
}

impl Node {
    pub fn new(config: ClusterConfig, local: Arc<RocksStore>, applied: u64) -> Node {
        let incarnation = format!("{}.{:016x}", config.node, rand::random::<u64>());
        Node {
            config,
            incarnation,
            role: AtomicU8::new(0),
            applied: AtomicU64::new(applied),
            seen: AtomicU64::new(applied),
            received: AtomicU64::new(applied),
            stream_last: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
            last_takeover_ms: AtomicU64::new(0),
            seeds: AtomicU64::new(0),
            seed_chunks: AtomicU64::new(0),
            seeded_from: AtomicU64::new(0),
            copies: Mutex::new(0),
            owner: Mutex::new(None),
            peers: Mutex::new(BTreeMap::new()),
            group_owners: Mutex::new(BTreeMap::new()),
            started: Instant::now(),
            self_heard_ms: AtomicU64::new(0),
            my_epoch: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            yield_until_ms: AtomicU64::new(0),
            hand_back_since_ms: AtomicU64::new(0),
            stopping: std::sync::atomic::AtomicBool::new(false),
            hurry: std::sync::atomic::AtomicBool::new(false),
            hurried: tokio::sync::Notify::new(),
            local,
        }
    }

    /// The last journal `seq` in the local store (a follower's is the owner's,
    /// as far as it has applied).
    pub fn journal_head(&self) -> u64 {
        match self.local.last_key(Space::Journal) {
            Ok(Some(key)) => crate::storage::seq_from_key(&key).unwrap_or(0),
            _ => 0,
        }
    }

    /// The local store now holds the stream up to `seq`, whole writes only.
    fn applied_to(&self, seq: u64) {
        self.applied.store(seq, Ordering::Release);
        self.seen.store(seq, Ordering::Release);
        self.received.store(seq, Ordering::Release);
    }

    /// How far this node's store is behind the stream, as last seen.
    pub fn lag(&self) -> (u64, u64, u64) {
        let applied = self.applied.load(Ordering::Acquire);
        let last = self.stream_last.load(Ordering::Acquire).max(applied);
        (applied, last, last - applied)
    }

    /// Partitions this node serves: its group's on the owner, none elsewhere.
    pub fn owned_partitions(&self, partitions: u32) -> u32 {
        if self.is_owner() {
            group_partitions(partitions, self.config.groups, self.config.group)
        } else {
            0
        }
    }

    /// The other nodes heard within `window`.
    fn live_peers(&self, window: Duration) -> Vec<Peer> {
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .values()
            .filter(|peer| peer.heard.elapsed() < window)
            .cloned()
            .collect()
    }

    /// Other nodes heard within the takeover window.
    pub fn live_peer_count(&self) -> usize {
        self.live_peers(Duration::from_millis(self.config.takeover_after_ms))
            .len()
    }

    pub fn role(&self) -> Role {
        Role::ALL[usize::from(self.role.load(Ordering::Acquire)).min(Role::ALL.len() - 1)]
    }

    fn set_role(&self, role: Role) {
        let index = Role::ALL.iter().position(|r| *r == role).unwrap_or(0);
        self.role.store(index as u8, Ordering::Release);
    }

    pub fn is_owner(&self) -> bool {
        self.role() == Role::Owner
    }

    /// Owns the journal: serving, or recovering its engine after the takeover.
    pub fn may_write(&self) -> bool {
        matches!(self.role(), Role::Owner | Role::Recovering)
    }

    /// The engine recovered: this node serves.
    pub fn serving(&self) {
        if self.role() == Role::Recovering {
            self.set_role(Role::Owner);
        }
    }

    /// The owner as last known: from the stream's markers and the heartbeats.
    pub fn owner(&self) -> Option<Owner> {
        self.owner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn learn_owner(&self, node: &str, epoch: u64) {
        let mut owner = self.owner.lock().unwrap_or_else(|p| p.into_inner());
        if owner.as_ref().is_none_or(|known| epoch > known.epoch) {
            *owner = Some(Owner {
                node: node.to_string(),
                epoch,
            });
        }
    }

    /// Where the owner's HTTP listener is, if it was heard within the takeover
    /// window (and is not this node).
    pub fn owner_address(&self) -> Option<(String, String)> {
        let owner = self.owner()?;
        if owner.node == self.config.node {
            return None;
        }
        let window = Duration::from_millis(self.config.takeover_after_ms);
        let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        let peer = peers.get(&owner.node)?;
        (peer.heard.elapsed() < window && peer.beat.role == Role::Owner)
            .then(|| (owner.node.clone(), peer.beat.advertise.clone()))
    }

    /// Where partition group `group`'s owner listens (its node id and
    /// `advertise`): this node for its own group when it owns it, else an
    /// owner heard within the takeover window.
    pub fn group_owner_address(&self, group: u32) -> Option<(String, String)> {
        if group == self.config.group {
            if self.is_owner() {
                return Some((self.config.node.clone(), self.config.advertise.clone()));
            }
            return self.owner_address();
        }
        let window = Duration::from_millis(self.config.takeover_after_ms);
        let owners = self.group_owners.lock().unwrap_or_else(|p| p.into_inner());
        let owner = owners.get(&group)?;
        (owner.heard.elapsed() < window)
            .then(|| (owner.beat.node.clone(), owner.beat.advertise.clone()))
    }

    /// Partition groups (its own included) this node knows no live owner of:
    /// their SKUs are refused (503) wherever they are asked for.
    pub fn unowned_groups(&self) -> u32 {
        (0..self.config.groups.max(1))
            .filter(|group| self.group_owner_address(*group).is_none())
            .count() as u32
    }

    /// Whether this node can route every group's requests: it has heard every
    /// group's owner, or it has waited three takeover windows since it started
    /// (a group without an owner then is an outage of that group, which the
    /// others' readiness must not follow). Always true without groups.
    pub fn knows_groups(&self) -> bool {
        self.config.groups <= 1
            || self.unowned_groups() == 0
            || self.started.elapsed() > Duration::from_millis(3 * self.config.takeover_after_ms)
    }

    /// The owner of each other group, as last heard.
    pub fn group_owners(&self) -> Vec<(u32, Peer)> {
        let owners = self.group_owners.lock().unwrap_or_else(|p| p.into_inner());
        owners.iter().map(|(g, peer)| (*g, peer.clone())).collect()
    }

    /// An owner's heartbeat on another group's subject.
    fn heard_group_owner(&self, group: u32, beat: Heartbeat) {
        let window = Duration::from_millis(self.config.takeover_after_ms);
        let mut owners = self.group_owners.lock().unwrap_or_else(|p| p.into_inner());
        // A stale owner (an older epoch, still heard) does not displace the
        // latest; once the latest is unheard for a window, anyone heard wins.
        let keep = owners.get(&group).is_some_and(|known| {
            known.beat.node != beat.node
                && known.beat.epoch > beat.epoch
                && known.heard.elapsed() < window
        });
        if !keep {
            owners.insert(
                group,
                Peer {
                    beat,
                    heard: Instant::now(),
                },
            );
        }
    }

    pub fn peers(&self) -> Vec<Peer> {
        self.peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// SIGTERM: no more takeovers. A takeover under way ends as a follower's (the
    /// ownership is not granted), so nobody waits on it.
    pub fn stop_taking_over(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Stops being the owner: refuses every write from now on, and exits the
    /// process shortly (answers to the writes in flight, 503, go out first).
    pub fn step_down(&self, why: &str) {
        if self.role() == Role::SteppedDown {
            return;
        }
        self.set_role(Role::SteppedDown);
        tracing::error!(node = %self.config.node, why, "lost ownership of the journal: stepping down");
        std::thread::spawn(|| {
            std::thread::sleep(Duration::from_millis(500));
            std::process::exit(STEPPED_DOWN_EXIT);
        });
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn yielding(&self) -> bool {
        self.now_ms() < self.yield_until_ms.load(Ordering::Acquire)
    }

    fn heartbeat(&self) -> Heartbeat {
        let role = self.role();
        Heartbeat {
            node: self.config.node.clone(),
            advertise: self.config.advertise.clone(),
            role,
            // An owner says its own epoch; a follower the latest it knows.
            epoch: match role {
                Role::Owner | Role::Recovering => self.my_epoch.load(Ordering::Acquire),
                _ => self.owner().map_or(0, |owner| owner.epoch),
            },
            applied: self.applied.load(Ordering::Acquire),
            yielding: self.yielding(),
        }
    }
}

/// How many of `partitions` fall in `group` of `groups` (partition `p` is in
/// group `p % groups`).
pub fn group_partitions(partitions: u32, groups: u32, group: u32) -> u32 {
    let groups = groups.max(1);
    partitions / groups + u32::from(group < partitions % groups)
}

/// The local store's last applied stream sequence (0 for a new node). A data dir
/// with a journal but no applied sequence was not made in cluster mode: refused,
/// since its history is not in the stream.
pub fn applied_of(store: &RocksStore) -> Result<u64, String> {
    // A copy of the owner's store left unfinished: the node starts as a new one.
    if seed::discard_unfinished(store).map_err(|e| format!("discarding an unfinished copy: {e}"))? {
        tracing::warn!("discarded an unfinished copy of the owner's store");
    }
    let applied: u64 = match store.get(Space::Meta, APPLIED_KEY) {
        Ok(Some(bytes)) => crate::storage::codec::decode(&bytes)
            .map_err(|e| format!("cluster_applied_seq: {e}"))?,
        Ok(None) => 0,
        Err(error) => return Err(error.to_string()),
    };
    if applied == 0 {
        let journal = store.last_key(Space::Journal).map_err(|e| e.to_string())?;
        if journal.is_some() {
            return Err(
                "the data dir holds a journal written outside cluster mode; start a cluster node with an empty data_dir"
                    .to_string(),
            );
        }
    }
    Ok(applied)
}

/// Starts following the stream, heartbeats and the controller on the link's
/// thread. The receiver resolves with the epoch once this node owns the journal.
pub fn start(
    node: Arc<Node>,
    link: Arc<Link>,
    local: Arc<RocksStore>,
) -> tokio::sync::oneshot::Receiver<u64> {
    let (granted, receiver) = tokio::sync::oneshot::channel();
    let runtime = link.runtime().clone();
    runtime.spawn(heartbeats(node.clone(), link.clone()));
    for group in (0..node.config.groups).filter(|g| *g != node.config.group) {
        runtime.spawn(other_group(node.clone(), link.clone(), group));
    }
    runtime.spawn(seed::serve(node.clone(), link.clone(), local.clone()));
    runtime.spawn(control(node, link, local, granted));
    receiver
}

/// Publishes this node's heartbeat and listens to everyone's, subscribing again
/// if the subscription ends.
async fn heartbeats(node: Arc<Node>, link: Arc<Link>) {
    loop {
        beat(&node, &link).await;
        if node.may_write() {
            node.step_down("the heartbeat subscription ended");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn beat(node: &Arc<Node>, link: &Arc<Link>) {
    let subject = link::nodes_subject(&link.stream);
    let mut subscriber = match link.client.subscribe(subject.clone()).await {
        Ok(subscriber) => subscriber,
        Err(error) => {
            tracing::warn!(%error, "cluster heartbeat subscription failed; retrying");
            return;
        }
    };
    let every = Duration::from_millis(node.config.heartbeat_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Ok(body) = serde_json::to_vec(&node.heartbeat()) {
                    let _ = link.client.publish(subject.clone(), body.into()).await;
                }
                hand_back(node);
                if node.is_owner() {
                    let heard = node.self_heard_ms.load(Ordering::Acquire);
                    if node.now_ms().saturating_sub(heard) > node.config.takeover_after_ms {
                        node.step_down("its own heartbeats have not come back for a takeover window (cut off from NATS)");
                    }
                }
            }
            message = subscriber.next() => {
                let Some(message) = message else { return };
                if message.payload.len() > HEARTBEAT_BYTES_MAX {
                    continue;
                }
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) else {
                    continue;
                };
                if beat.node == node.config.node {
                    node.self_heard_ms.store(node.now_ms(), Ordering::Release);
                    continue;
                }
                if beat.role == Role::Owner {
                    // Before its marker lands a successor has no epoch: the fence,
                    // not a heartbeat, decides then.
                    let mine = node.my_epoch.load(Ordering::Acquire);
                    if node.may_write() && mine != 0 && beat.epoch > mine {
                        node.step_down("another node owns a later epoch");
                    }
                    node.learn_owner(&beat.node, beat.epoch);
                }
                let mut peers = node.peers.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded: a node unheard for a minute is forgotten.
                peers.retain(|_, peer| peer.heard.elapsed() < Duration::from_secs(60));
                if peers.len() < 256 || peers.contains_key(&beat.node) {
                    peers.insert(beat.node.clone(), Peer { beat, heard: Instant::now() });
                }
            }
        }
    }
}

/// Listens to another partition group's heartbeats for its owner, so that a
/// request for that group's SKUs can be sent there (`api::dispatch`).
async fn other_group(node: Arc<Node>, link: Arc<Link>, group: u32) {
    let subject = link::nodes_subject(&node.config.group_stream(group));
    loop {
        let mut subscriber = match link.client.subscribe(subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(error) => {
                tracing::warn!(%error, group, "partition group heartbeat subscription failed; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        while let Some(message) = subscriber.next().await {
            if message.payload.len() > HEARTBEAT_BYTES_MAX {
                continue;
            }
            let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) else {
                continue;
            };
            if beat.role == Role::Owner {
                node.heard_group_owner(group, beat);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The owner's check that the stream is still its own: the stream's last
/// sequence must be the last this owner wrote (unless an append is in flight),
/// and the stream must answer within `append_timeout_ms`. Whatever lands on the
/// stream is fenced anyway; this stops an idle stale owner from answering reads.
#[derive(Default)]
struct Lease {
    /// When the stream last answered this check (ms since the node started).
    answered_ms: u64,
}

/// The owner's lease checks, every heartbeat, on a task of their own (a slow
/// stream answer must not hold up the heartbeats).
async fn keep_lease(node: Arc<Node>, link: Arc<Link>) {
    let every = Duration::from_millis(node.config.heartbeat_ms);
    let mut lease = Lease::default();
    while node.may_write() {
        tokio::time::sleep(every).await;
        if node.is_owner() {
            lease.check(&node, &link).await;
        }
    }
}

impl Lease {
    async fn check(&mut self, node: &Node, link: &Link) {
        let now = node.now_ms();
        if self.answered_ms == 0 {
            self.answered_ms = now;
        }
        let before = node.writes.load(Ordering::Acquire);
        let wait = Duration::from_millis(node.config.append_timeout_ms);
        match tokio::time::timeout(wait, stream_last(link)).await {
            Ok(Ok((_, last))) => {
                self.answered_ms = node.now_ms();
                node.stream_last.store(last, Ordering::Release);
                let applied = node.applied.load(Ordering::Acquire);
                let after = node.writes.load(Ordering::Acquire);
                // Only another writer moves the stream past what this owner wrote
                // (a lagging replica's answer could be behind it: not a reason).
                if before == after && before.is_multiple_of(2) && last > applied {
                    node.step_down(&format!(
                        "the stream's last sequence is {last}, this owner wrote {applied}: another node wrote"
                    ));
                }
            }
            // As long as an append retries: a stream without a leader (an election
            // takes 4-9 s) stops every node alike, and stepping down would not help.
            _ if node.now_ms().saturating_sub(self.answered_ms) > node.config.append_timeout_ms => {
                node.step_down("the journal stream has not answered for append_timeout_ms");
            }
            _ => {}
        }
    }
}

/// Follows the stream until this node is the successor of an unheard owner,
/// then takes over.
async fn control(
    node: Arc<Node>,
    link: Arc<Link>,
    local: Arc<RocksStore>,
    granted: tokio::sync::oneshot::Sender<u64>,
) {
    let window = Duration::from_millis(node.config.takeover_after_ms);
    let every = Duration::from_millis(node.config.heartbeat_ms);
    let mut follower = Some(tokio::spawn(follow(
        node.clone(),
        link.clone(),
        local.clone(),
    )));
    let mut stall = Stall::new(&node);
    let mut ticks = 0u64;
    loop {
        tokio::time::sleep(every).await;
        if node.is_stopping() || matches!(node.role(), Role::Behind | Role::SteppedDown) {
            if let Some(task) = follower.take() {
                task.abort();
            }
            return;
        }
        // About once a second: is the follower keeping up with the stream?
        ticks += 1;
        // (A copy of the owner's store stands still on the stream by design.)
        if follower.is_some()
            && node.role() != Role::Seeding
            && ticks.is_multiple_of((1000 / node.config.heartbeat_ms).max(1))
        {
            if let Ok(Ok((_, last))) = tokio::time::timeout(window, stream_last(&link)).await {
                node.stream_last.fetch_max(last, Ordering::AcqRel);
                if stall.check(&node, last, STALL_RESTART) {
                    tracing::warn!(node = %node.config.node, last, seen = node.seen.load(Ordering::Acquire), "following stalled; restarting the consumer");
                    restart(&node, &link, &local, &mut follower);
                    stall = Stall::new(&node);
                }
            }
        }
        if node.role() == Role::Starting && node.started.elapsed() >= window {
            node.set_role(Role::Follower);
        }
        // Not before a whole window since start: the other nodes must have been
        // heard before this one can tell whether it is the successor.
        if node.role() != Role::Follower
            || node.started.elapsed() < window
            || !is_successor(&node, window)
        {
            continue;
        }
        let decided = Instant::now();
        match take_over(&node, &link, &local, &mut follower).await {
            Ok(epoch) => {
                node.last_takeover_ms
                    .store(decided.elapsed().as_millis() as u64, Ordering::Relaxed);
                if node.is_stopping() || granted.send(epoch).is_err() {
                    // SIGTERM came during the takeover: the marker landed, but this
                    // node will not serve. Saying so lets the next one take over now.
                    node.set_role(Role::SteppedDown);
                    tracing::info!(node = %node.config.node, epoch, "took over while stopping; handing on");
                    return;
                }
                tracing::info!(node = %node.config.node, epoch, "took over the journal");
                tokio::spawn(purge(node.clone(), link.clone()));
                tokio::spawn(keep_lease(node.clone(), link.clone()));
                return;
            }
            Err(missed) => {
                let why = match missed {
                    Missed::Local(why) => {
                        // Let the next node in id order try for three windows.
                        let until = node.now_ms() + 3 * node.config.takeover_after_ms;
                        node.yield_until_ms.store(until, Ordering::Release);
                        why
                    }
                    Missed::Shared(why) => why,
                };
                tracing::info!(node = %node.config.node, why, "takeover not made; following");
                if follower.is_none() {
                    follower = Some(tokio::spawn(follow(
                        node.clone(),
                        link.clone(),
                        local.clone(),
                    )));
                }
            }
        }
    }
}

/// No owner heard within `window`, and this node is the successor: the group's
/// preferred member if that is a live follower, else the live follower at the
/// group's place in id order (the lowest id with one group). Deterministic:
/// every node computes the same from the same heartbeats.
fn is_successor(node: &Node, window: Duration) -> bool {
    let latest = node.owner().map_or(0, |owner| owner.epoch);
    let peers = node.peers.lock().unwrap_or_else(|p| p.into_inner());
    let live = |peer: &&Peer| peer.heard.elapsed() < window;
    // A yielding node leaves its turn to another candidate, if there is one.
    let other_candidate = peers
        .values()
        .filter(live)
        .any(|peer| peer.beat.role == Role::Follower && !peer.beat.yielding);
    if node.yielding() && other_candidate {
        return false;
    }
    // An owner of an older epoch is stale (it will be fenced): it does not count.
    if peers.values().filter(live).any(|peer| {
        (peer.beat.role == Role::Owner && peer.beat.epoch >= latest)
            || peer.beat.role == Role::Recovering
    }) {
        return false;
    }
    let candidate = |peer: &&Peer| peer.beat.role == Role::Follower && !peer.beat.yielding;
    // The group's preferred member, if it is a live candidate, takes over:
    // so a group returns to its own machine (see `hand_back`).
    let mut members: Vec<&str> = peers.keys().map(String::as_str).collect();
    members.push(&node.config.node);
    let preferred = successor_of(&mut members, node.config.group);
    if preferred == node.config.node
        || peers
            .get(preferred)
            .filter(live)
            .is_some_and(|peer| candidate(&peer))
    {
        return preferred == node.config.node;
    }
    let mut candidates: Vec<&str> = peers
        .values()
        .filter(live)
        .filter(candidate)
        .map(|peer| peer.beat.node.as_str())
        .collect();
    candidates.push(&node.config.node);
    successor_of(&mut candidates, node.config.group) == node.config.node
}

/// How long a group's preferred member must be a live, caught-up follower
/// before the owner hands the group back to it.
const HAND_BACK_AFTER: Duration = Duration::from_secs(5);

/// How far behind the owner a preferred member may be and still be handed its
/// group (it catches up to the stream's end before it takes over).
const HAND_BACK_LAG_MAX: u64 = 10_000;

/// With partition groups, an owner that is not its group's preferred member
/// (the machine that owns the group at rest: the members heard in the last
/// minute in id order, rotated by the group) hands the group back once that
/// member has been a live, caught-up follower for [`HAND_BACK_AFTER`]: it steps
/// down, and the preferred member is the successor. Without it, a machine that
/// took a group over in a failover would own two groups until the next one.
fn hand_back(node: &Node) {
    if node.config.groups <= 1 || !node.is_owner() {
        node.hand_back_since_ms.store(0, Ordering::Relaxed);
        return;
    }
    let window = Duration::from_millis(node.config.takeover_after_ms);
    let applied = node.applied.load(Ordering::Acquire);
    let ready = {
        let peers = node.peers.lock().unwrap_or_else(|p| p.into_inner());
        let mut members: Vec<&str> = peers.keys().map(String::as_str).collect();
        members.push(&node.config.node);
        let preferred = successor_of(&mut members, node.config.group);
        peers
            .get(preferred)
            .filter(|peer| {
                peer.heard.elapsed() < window
                    && peer.beat.role == Role::Follower
                    && !peer.beat.yielding
                    && peer.beat.applied.saturating_add(HAND_BACK_LAG_MAX) >= applied
            })
            .map(|peer| peer.beat.node.clone())
    };
    let Some(preferred) = ready else {
        node.hand_back_since_ms.store(0, Ordering::Relaxed);
        return;
    };
    let now = node.now_ms().max(1);
    let since = match node.hand_back_since_ms.load(Ordering::Relaxed) {
        0 => {
            node.hand_back_since_ms.store(now, Ordering::Relaxed);
            now
        }
        since => since,
    };
    if now.saturating_sub(since) >= HAND_BACK_AFTER.as_millis() as u64 {
        tracing::warn!(node = %node.config.node, group = node.config.group, %preferred,
            "handing the partition group back to its preferred member");
        node.step_down("handing the partition group back to its preferred member");
    }
}

/// The successor among `candidates` (live followers' ids, this node's among
/// them) for group `group`: the ids in order, rotated by the group, so that with
/// as many nodes as groups each node owns one group at rest. Group 0 (and a
/// cluster of one group) takes the lowest id.
fn successor_of<'a>(candidates: &mut Vec<&'a str>, group: u32) -> &'a str {
    candidates.sort_unstable();
    candidates.dedup();
    candidates[group as usize % candidates.len()]
}

/// The stream's first and last sequence (one STREAM.INFO request).
async fn stream_last(link: &Link) -> Result<(u64, u64), String> {
    let stream = link
        .js
        .get_stream(&link.stream)
        .await
        .map_err(|e| e.to_string())?;
    let state = &stream.cached_info().state;
    Ok((state.first_sequence, state.last_sequence))
}

/// Why a takeover was not made.
enum Missed {
    /// Something about this node (it could not catch up in time): the next
    /// follower in id order should try.
    Local(String),
    /// The stream did not answer, or another node wrote first: any node would
    /// have missed alike.
    Shared(String),
}

/// Catches up to the stream's end, stops following and appends the takeover
/// marker expecting that end.
async fn take_over(
    node: &Arc<Node>,
    link: &Arc<Link>,
    local: &Arc<RocksStore>,
    follower: &mut Option<tokio::task::JoinHandle<()>>,
) -> Result<u64, Missed> {
    let deadline = Instant::now() + Duration::from_millis(node.config.append_timeout_ms);
    let mut stall = Stall::new(node);
    let _hurry = Hurry::on(node);
    let last = loop {
        // The follower found the stream purged past it while this waited: a
        // copy under way is not a store to take over with (nor to restart).
        if node.role() != Role::Follower {
            return Err(Missed::Local(format!(
                "{:?} while catching up",
                node.role()
            )));
        }
        match stream_last(link).await {
            Ok((_, last)) => {
                node.stream_last.fetch_max(last, Ordering::AcqRel);
                if node.seen.load(Ordering::Acquire) >= last {
                    break last;
                }
                if Instant::now() >= deadline {
                    return Err(Missed::Local(format!("still catching up to {last}")));
                }
                // A consumer that stopped delivering is recreated at once here:
                // the cluster is waiting for this node.
                if stall.check(node, last, Duration::from_millis(500)) {
                    restart(node, link, local, follower);
                    stall = Stall::new(node);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Through a stream leader's election: retried until the deadline.
            Err(why) if Instant::now() >= deadline => return Err(Missed::Shared(why)),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if node.is_stopping() {
        return Err(Missed::Shared("stopping".to_string()));
    }
    if let Some(task) = follower.take() {
        task.abort();
        let _ = task.await;
    }
    // The follower may have found the stream purged past it, or a message it
    // cannot apply, just before it stopped: no store to take over with.
    let role = node.role();
    if role != Role::Follower {
        return Err(Missed::Local(format!(
            "{role:?} while stopping the follower"
        )));
    }
    if node.seen.load(Ordering::Acquire) != last {
        return Err(Missed::Shared(
            "the stream moved while stopping the follower".to_string(),
        ));
    }
    node.set_role(Role::Recovering);
    let mut headers = HeaderMap::new();
    headers.insert(NODE_HEADER, node.config.node.as_str());
    headers.insert(TAKEOVER_HEADER, node.config.node.as_str());
    let landed = link::append(
        link.js.clone(),
        link.subject.clone(),
        headers,
        bytes::Bytes::new(),
        last,
        format!("{}:{}", node.incarnation, last + 1),
        deadline,
    )
    .await;
    let epoch = match landed {
        Ok(epoch) => epoch,
        Err(AppendFailure::Fenced(why)) | Err(AppendFailure::Unavailable(why)) => {
            node.set_role(Role::Follower);
            return Err(Missed::Shared(why));
        }
    };
    let written = write_applied(local, WriteBatch::default(), epoch, false);
    if let Err(error) = written {
        node.step_down(&format!("local store: {error}"));
        return Err(Missed::Local(error.to_string()));
    }
    node.applied_to(epoch);
    node.failovers.fetch_add(1, Ordering::Relaxed);
    node.my_epoch.store(epoch, Ordering::Release);
    node.learn_owner(&node.config.node, epoch);
    Ok(epoch)
}

/// While alive, the node's follower fetches without pausing (a takeover waits
/// for it to reach the stream's end).
struct Hurry<'a>(&'a Node);

impl<'a> Hurry<'a> {
    fn on(node: &'a Node) -> Hurry<'a> {
        node.hurry.store(true, Ordering::Release);
        node.hurried.notify_one();
        Hurry(node)
    }
}

impl Drop for Hurry<'_> {
    fn drop(&mut self) {
        self.0.hurry.store(false, Ordering::Release);
    }
}

/// How long a follower may stand still while the stream is ahead of it before its
/// consumer is recreated (a consumer whose server died can stall without an
/// error).
const STALL_RESTART: Duration = Duration::from_secs(2);

/// Watches a follower's progress (`received`: message by message, not fetch by
/// fetch) against the stream's last sequence.
struct Stall {
    received: u64,
    since: Instant,
}

impl Stall {
    fn new(node: &Node) -> Stall {
        Stall {
            received: node.received.load(Ordering::Acquire),
            since: Instant::now(),
        }
    }

    /// True when the follower has not moved for `limit` while `last` is ahead of it.
    fn check(&mut self, node: &Node, last: u64, limit: Duration) -> bool {
        let received = node.received.load(Ordering::Acquire);
        if received != self.received || received >= last {
            self.received = received;
            self.since = Instant::now();
            return false;
        }
        self.since.elapsed() >= limit
    }
}

/// Replaces the follower task with a new one (a new consumer from `applied + 1`).
fn restart(
    node: &Arc<Node>,
    link: &Arc<Link>,
    local: &Arc<RocksStore>,
    follower: &mut Option<tokio::task::JoinHandle<()>>,
) {
    if let Some(task) = follower.take() {
        task.abort();
    }
    *follower = Some(tokio::spawn(follow(
        node.clone(),
        link.clone(),
        local.clone(),
    )));
}

/// Applies the stream to the local store from `applied + 1`, reconnecting after
/// errors, until aborted (takeover) or its store does not fit the stream. When
/// the stream was purged past it, it copies the owner's store first.
async fn follow(node: Arc<Node>, link: Arc<Link>, local: Arc<RocksStore>) {
    loop {
        match follow_once(&node, &link, &local).await {
            Ok(()) => {}
            Err(FollowError::Behind(why)) => {
                tracing::error!(node = %node.config.node, why, "this node's store does not fit the journal stream: start it on an empty data dir");
                node.set_role(Role::Behind);
                return;
            }
            Err(FollowError::Purged(why)) => {
                tracing::warn!(node = %node.config.node, why, "the journal stream no longer holds what this node needs: copying the owner's store");
                node.set_role(Role::Seeding);
                match seed::reseed(&node, &link, &local).await {
                    Ok(applied) => {
                        node.applied_to(applied);
                        node.seeds.fetch_add(1, Ordering::Relaxed);
                        node.set_role(Role::Starting);
                        continue;
                    }
                    Err(why) => {
                        tracing::warn!(node = %node.config.node, why, "copying the owner's store failed; starting over");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
            Err(FollowError::Retry(why)) => {
                tracing::warn!(why, "following the journal stream; retrying");
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug)]
enum FollowError {
    /// The local store does not fit the stream.
    Behind(String),
    /// The stream starts after what the local store holds.
    Purged(String),
    Retry(String),
}

/// A write being received in parts: its operations so far and its part count.
struct Partial {
    batch: WriteBatch,
    next: u32,
    count: u32,
}

/// How long a follower that has caught up waits before asking for more. The
/// messages that land meanwhile come in one answer and go to RocksDB in one
/// write: a follower costs the stream's leader one delivery burst, and itself one
/// wake-up and one write, per interval instead of per message. A successor
/// catching up for a takeover does not wait ([`Node::hurry`]).
const FOLLOW_EVERY: Duration = Duration::from_millis(50);

/// Most messages one fetch asks for, and bytes (unless one message may be
/// larger: then twice the largest part), each lowered to the server's limits
/// for a consumer. A fetch that comes back full, or cut short by its bytes, is
/// followed by the next one at once.
const FETCH_MESSAGES: usize = 1024;
const FETCH_BYTES: usize = 16 * 1024 * 1024;

/// How long a fetch may go without its next message (an idle follower's long
/// poll: this past its expiry). It then ends; with nothing taken in, the
/// consumer is made anew.
const FETCH_WAIT: Duration = Duration::from_secs(2);

/// How long an idle follower's request waits for the next message (a follower
/// whose last fetch found nothing waits on the server instead of asking again
/// every [`FOLLOW_EVERY`]).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// What a follower has received and not yet written: whole writes merged into one
/// local write (puts and deletes of whole keys, in stream order), and the write
/// whose parts are still coming.
struct Received {
    /// Whole writes up to `whole` (0: none yet), merged.
    batch: WriteBatch,
    whole: u64,
    partial: Option<Partial>,
    /// Takeover markers among them: (owner, sequence).
    markers: Vec<(String, u64)>,
    /// The last sequence taken in, whole or part.
    last: u64,
}

impl Received {
    fn new(seen: u64) -> Received {
        Received {
            batch: WriteBatch::default(),
            whole: 0,
            partial: None,
            markers: Vec::new(),
            last: seen,
        }
    }

    /// Takes in message `seq`: a takeover marker, a whole write, or a part of one.
    /// A message refused here is not taken in: `last` stays before it.
    fn take(
        &mut self,
        seq: u64,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(), FollowError> {
        let header = |name: &str| {
            headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_string())
        };
        if let Some(owner) = header(TAKEOVER_HEADER) {
            // A write left in parts by the previous owner never completed.
            self.partial = None;
            self.markers.push((owner, seq));
            self.whole = seq;
            self.last = seq;
            return Ok(());
        }
        let mut decoded = WriteBatch::default();
        frame::decode_into(payload, &mut decoded)
            .map_err(|e| FollowError::Behind(format!("undecodable message {seq}: {e}")))?;
        match header(PART_HEADER).as_deref().map(frame::parse_part) {
            None => {
                self.partial = None;
                self.batch.append(decoded);
                self.whole = seq;
            }
            Some(None) => {
                return Err(FollowError::Behind(format!("bad part header at {seq}")));
            }
            Some(Some((index, count))) => {
                let mut current = match self.partial.take() {
                    Some(current) if index == current.next && count == current.count => current,
                    _ if count > PARTS_MAX => {
                        return Err(FollowError::Behind(format!(
                            "a write of {count} parts at {seq} (at most {PARTS_MAX})"
                        )));
                    }
                    _ if index == 1 => Partial {
                        batch: WriteBatch::default(),
                        next: 1,
                        count,
                    },
                    _ => {
                        // A part without its first part: following starts at a
                        // write's first part, so this is a corrupt stream.
                        return Err(FollowError::Behind(format!(
                            "part {index}/{count} at {seq} without the parts before it"
                        )));
                    }
                };
                current.batch.append(decoded);
                current.next += 1;
                if index < count {
                    self.partial = Some(current);
                } else {
                    self.batch.append(current.batch);
                    self.whole = seq;
                }
            }
        }
        self.last = seq;
        Ok(())
    }

    /// Writes the whole writes taken in to `local` in one write, with the last
    /// one's sequence; then `seen` says what else came (parts of a write still
    /// coming). Nothing awaits in here: a follower stopped for a takeover stops
    /// between awaits, never between this write and what `seen` says, so `seen`
    /// never claims a whole write the store lacks.
    fn flush(&mut self, node: &Node, local: &RocksStore) -> Result<(), FollowError> {
        if self.whole != 0 {
            let batch = std::mem::take(&mut self.batch);
            write_applied(local, batch, self.whole, false)
                .map_err(|e| FollowError::Retry(format!("local store: {e}")))?;
            node.applied_to(self.whole);
            node.received.fetch_max(self.last, Ordering::AcqRel);
            self.whole = 0;
            for (owner, epoch) in self.markers.drain(..) {
                node.learn_owner(&owner, epoch);
                node.failovers.fetch_add(1, Ordering::Relaxed);
            }
            if node.role() == Role::Starting {
                node.set_role(Role::Follower);
            }
        }
        node.seen.fetch_max(self.last, Ordering::AcqRel);
        Ok(())
    }
}

async fn follow_once(node: &Node, link: &Link, local: &RocksStore) -> Result<(), FollowError> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let retry = |e: &dyn std::fmt::Display| FollowError::Retry(e.to_string());
    let applied = node.applied.load(Ordering::Acquire);
    let (first, last) = stream_last(link).await.map_err(|e| retry(&e))?;
    node.stream_last.fetch_max(last, Ordering::AcqRel);
    if applied > last {
        return Err(FollowError::Behind(format!(
            "the local store holds sequence {applied}, the stream ends at {last} (a different stream?)"
        )));
    }
    if last > applied && first > applied + 1 {
        return Err(FollowError::Purged(format!(
            "the stream starts at {first}, this node has {applied}"
        )));
    }
    node.seen.store(applied, Ordering::Release);
    node.received.store(applied, Ordering::Release);
    if node.role() == Role::Starting && last == applied {
        node.set_role(Role::Follower);
    }
    let stream = link
        .js
        .get_stream(&link.stream)
        .await
        .map_err(|e| retry(&e))?;
    // Ephemeral, unacknowledged, in memory: the follower keeps its own place (its
    // store's sequence) and makes a new one from there after an error that
    // brought nothing.
    let consumer = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::ByStartSequence {
                start_sequence: applied + 1,
            },
            ack_policy: AckPolicy::None,
            inactive_threshold: Duration::from_secs(10),
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        })
        .await
        .map_err(|e| retry(&e))?;
    // A fetch ends at a message that does not fit its bytes: one always fits.
    // The server's limits for a request (`max_request_batch` and
    // `max_request_max_bytes`, copied into the consumer) refuse a larger one.
    let limits = &consumer.cached_info().config;
    let lowered = |ours: usize, server: i64| match usize::try_from(server) {
        Ok(server) if server > 0 => ours.min(server),
        _ => ours,
    };
    let batch = lowered(FETCH_MESSAGES, limits.max_batch);
    let bytes = lowered(
        FETCH_BYTES.max(2 * (link.part_bytes + 64 * 1024)),
        limits.max_bytes,
    );
    let mut received = Received::new(applied);
    let mut idle = false;
    loop {
        let (asked, wait) = if idle {
            let poll = consumer.batch().max_messages(1).expires(IDLE_POLL);
            (poll.messages().await, IDLE_POLL + FETCH_WAIT)
        } else {
            let fetch = consumer.fetch().max_messages(batch).max_bytes(bytes);
            (fetch.messages().await, FETCH_WAIT)
        };
        let fetched = match asked {
            Ok(messages) => receive(node, messages, wait, &mut received).await,
            Err(error) => Fetched {
                count: 0,
                ended: Err(retry(&error)),
            },
        };
        // What came before an error is whole and in order: written either way.
        received.flush(node, local)?;
        let full = !idle && fetched.count == batch;
        match after_fetch(&fetched, full, node.hurry.load(Ordering::Acquire)) {
            Then::Fail => return fetched.ended,
            Then::AskNow => idle = false,
            Then::AwaitNext => idle = true,
            Then::Gather => {
                idle = false;
                tokio::select! {
                    _ = tokio::time::sleep(FOLLOW_EVERY) => {}
                    _ = node.hurried.notified() => {}
                }
            }
        }
    }
}

/// What a follower does after a fetch.
#[derive(Debug, PartialEq, Eq)]
enum Then {
    /// Ends this consumer with the fetch's error (`follow` decides what next: a
    /// new consumer, a copy of the owner's store, or no more following).
    Fail,
    /// Fetches again at once.
    AskNow,
    /// Waits on the server for the next message (nothing was there).
    AwaitNext,
    /// Lets the next messages gather for [`FOLLOW_EVERY`], then fetches.
    Gather,
}

/// `fetched` ended a fetch, `full` (as many messages as a fetch asks for; never
/// an idle follower's long poll for one) or not, while this node does or does
/// not `hurry` to a takeover.
fn after_fetch(fetched: &Fetched, full: bool, hurry: bool) -> Then {
    match fetched.ended {
        // A message this node cannot apply: following ends (what came before it
        // is written).
        Err(FollowError::Behind(_)) => Then::Fail,
        // With nothing taken in, an error makes the consumer anew.
        Err(_) if fetched.count == 0 => Then::Fail,
        // Ended by the server (the fetch's bytes full, a lost leader) or by
        // silence: what came is kept, and the next fetch asks at once.
        Err(_) => Then::AskNow,
        Ok(()) if fetched.count == 0 => Then::AwaitNext,
        Ok(()) if full => Then::AskNow,
        Ok(()) if hurry => Then::AskNow,
        // Caught up: an idle wait's first message came alone; the rest of its
        // burst is fetched together.
        Ok(()) => Then::Gather,
    }
}

/// What one fetch brought: how many messages were taken in, and how it ended.
struct Fetched {
    count: usize,
    ended: Result<(), FollowError>,
}

/// Takes in the messages of one fetch, in order, until it ends or goes `wait`
/// without a message.
async fn receive(
    node: &Node,
    mut messages: async_nats::jetstream::consumer::pull::Batch,
    wait: Duration,
    received: &mut Received,
) -> Fetched {
    let mut count = 0;
    let ended = loop {
        let next = match tokio::time::timeout(wait, messages.next()).await {
            Ok(Some(next)) => next,
            Ok(None) => break Ok(()),
            Err(_) => break Err(FollowError::Retry("a fetch went unanswered".to_string())),
        };
        let taken = next
            .map_err(|e| FollowError::Retry(e.to_string()))
            .and_then(|message| {
                let info = message
                    .info()
                    .map_err(|e| FollowError::Retry(e.to_string()))?;
                let seq = info.stream_sequence;
                // What the stream holds beyond this message: the lag the metrics show.
                node.stream_last
                    .fetch_max(seq.saturating_add(info.pending), Ordering::AcqRel);
                let expected = received.last + 1;
                if seq != expected {
                    // A gap (purged meanwhile) shows as Purged on the next pass.
                    return Err(FollowError::Retry(format!(
                        "sequence {seq}, expected {expected}"
                    )));
                }
                received.take(seq, message.headers.as_ref(), &message.payload)?;
                node.received.fetch_max(seq, Ordering::AcqRel);
                Ok(())
            });
        match taken {
            Ok(()) => count += 1,
            Err(error) => break Err(error),
        }
    };
    Fetched { count, ended }
}

/// The owner keeps the stream to `stream_keep` messages.
async fn purge(node: Arc<Node>, link: Arc<Link>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if !node.is_owner() {
            return;
        }
        let Ok(stream) = link.js.get_stream(&link.stream).await else {
            continue;
        };
        let mut stream = stream;
        let Ok(info) = stream.info().await else {
            continue;
        };
        // Keep at least `stream_keep`, and everything a live follower has not
        // applied yet (a follower unheard for a minute is not waited for).
        let last = info.state.last_sequence;
        let first = info.state.first_sequence;
        // A node already behind what the stream holds (or not following) cannot be
        // helped by keeping more; it would stop every purge.
        let slowest = node
            .live_peers(Duration::from_secs(60))
            .iter()
            .filter(|peer| {
                matches!(
                    peer.beat.role,
                    Role::Follower | Role::Starting | Role::Seeding
                )
            })
            .filter(|peer| peer.beat.applied.saturating_add(1) >= first)
            .map(|peer| peer.beat.applied)
            .min()
            .unwrap_or(last);
        let keep = node.config.stream_keep.max(last.saturating_sub(slowest));
        if info.state.messages > keep {
            match stream.purge().keep(keep).await {
                Ok(done) => tracing::info!(purged = done.purged, "journal stream purged"),
                Err(error) => tracing::warn!(%error, "journal stream purge failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> (tempfile::TempDir, Arc<RocksStore>, Node) {
        let dir = tempfile::tempdir().unwrap();
        let local = Arc::new(RocksStore::open(dir.path()).unwrap());
        let config = ClusterConfig {
            node: "n1".to_string(),
            url: "nats://127.0.0.1:4222".to_string(),
            stream: "TEST".to_string(),
            advertise: "http://127.0.0.1:8080".to_string(),
            replicas: 3,
            heartbeat_ms: 200,
            takeover_after_ms: 1000,
            append_timeout_ms: 15000,
            stream_keep: 1000,
            groups: 1,
            group: 0,
            cart_lease_seconds: 30,
        };
        let node = Node::new(config, local.clone(), 0);
        (dir, local, node)
    }

    fn hear(node: &Node, id: &str, role: Role, ago: Duration) {
        let beat = Heartbeat {
            node: id.to_string(),
            advertise: "http://127.0.0.1:1".to_string(),
            role,
            epoch: 0,
            applied: 0,
            yielding: false,
        };
        let heard = Instant::now().checked_sub(ago).unwrap_or_else(Instant::now);
        let mut peers = node.peers.lock().unwrap();
        peers.insert(id.to_string(), Peer { beat, heard });
    }

    /// The group's preferred member (members heard in the last minute, in id
    /// order, rotated by the group) takes over when it is a live follower;
    /// else the live followers' rotation decides.
    #[test]
    fn the_preferred_member_is_the_successor_when_it_is_live() {
        let (_dir, _local, mut node) = node();
        node.config.groups = 2;
        node.config.group = 1;
        let window = Duration::from_millis(node.config.takeover_after_ms);
        // Members n1 (this node) and n2: group 1 prefers n2.
        hear(&node, "n2", Role::Follower, Duration::ZERO);
        assert!(!is_successor(&node, window), "n2, live, is preferred");
        // n2 died (heard 5 s ago, still a member): n1, the only live one.
        hear(&node, "n2", Role::Follower, Duration::from_secs(5));
        assert!(is_successor(&node, window));
        // n3 joins: members n1, n2, n3 prefer n2 for group 1; n2 is dead, so the
        // live followers n1, n3 rotate: group 1 takes n3.
        hear(&node, "n3", Role::Follower, Duration::ZERO);
        assert!(!is_successor(&node, window));
        // With one group the lowest live id, as always.
        node.config.groups = 1;
        node.config.group = 0;
        assert!(is_successor(&node, window));
        hear(&node, "n0", Role::Follower, Duration::ZERO);
        assert!(!is_successor(&node, window));
    }

    /// Group 0 (and a cluster of one group) takes the lowest live id; group g
    /// the g-th, wrapping, so with as many nodes as groups each owns one.
    #[test]
    fn successors_rotate_by_group() {
        let pick = |ids: &[&'static str], group| successor_of(&mut ids.to_vec(), group);
        assert_eq!(pick(&["n3", "n1", "n2"], 0), "n1");
        assert_eq!(pick(&["n3", "n1", "n2"], 1), "n2");
        assert_eq!(pick(&["n3", "n1", "n2"], 2), "n3");
        assert_eq!(pick(&["n3", "n1", "n2"], 3), "n1");
        // n2 gone: group 1 goes to the next in order.
        assert_eq!(pick(&["n3", "n1"], 1), "n3");
        assert_eq!(pick(&["n1", "n1"], 1), "n1");
    }

    #[test]
    fn every_partition_is_in_exactly_one_group() {
        for (partitions, groups) in [(64, 1), (64, 2), (64, 3), (7, 7), (10, 4)] {
            let counts: Vec<u32> = (0..groups)
                .map(|g| group_partitions(partitions, groups, g))
                .collect();
            assert_eq!(
                counts.iter().sum::<u32>(),
                partitions,
                "{partitions}/{groups}"
            );
            for (g, count) in counts.iter().enumerate() {
                let members = (0..partitions).filter(|p| p % groups == g as u32).count();
                assert_eq!(*count as usize, members, "{partitions}/{groups} group {g}");
            }
        }
    }

    /// One write putting `key` = `value` in the journal space, as a message body.
    fn write(key: &str, value: u8) -> Vec<u8> {
        let mut batch = WriteBatch::default();
        batch.put(Space::Journal, key.as_bytes(), vec![value]);
        let mut parts = frame::encode(&batch.ops, 1 << 20).unwrap();
        assert_eq!(parts.len(), 1);
        parts.remove(0)
    }

    fn part(index: u32, count: u32) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(PART_HEADER, format!("{index}/{count}").as_str());
        headers
    }

    fn marker(owner: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(TAKEOVER_HEADER, owner);
        headers
    }

    fn value(local: &RocksStore, key: &str) -> Option<Vec<u8>> {
        local.get(Space::Journal, key.as_bytes()).unwrap()
    }

    #[test]
    fn whole_writes_land_in_one_write_and_a_write_in_parts_only_when_whole() {
        let (_dir, local, node) = node();
        let mut received = Received::new(0);
        received.take(1, None, &write("a", 1)).unwrap();
        received.take(2, None, &write("a", 2)).unwrap();
        received.take(3, Some(&part(1, 2)), &write("b", 3)).unwrap();
        received.flush(&node, &local).unwrap();
        // The later write to one key wins; the first part of `b` waits.
        assert_eq!(value(&local, "a"), Some(vec![2]));
        assert_eq!(value(&local, "b"), None);
        assert_eq!(applied_of(&local).unwrap(), 2);
        assert_eq!(node.applied.load(Ordering::Acquire), 2);
        assert_eq!(node.seen.load(Ordering::Acquire), 3);
        // Its last part comes with the next fetch.
        received.take(4, Some(&part(2, 2)), &write("c", 4)).unwrap();
        received.flush(&node, &local).unwrap();
        assert_eq!(value(&local, "b"), Some(vec![3]));
        assert_eq!(value(&local, "c"), Some(vec![4]));
        assert_eq!(applied_of(&local).unwrap(), 4);
        assert_eq!(node.seen.load(Ordering::Acquire), 4);
    }

    #[test]
    fn a_takeover_marker_drops_an_unfinished_write_and_counts_once_written() {
        let (_dir, local, node) = node();
        let mut received = Received::new(0);
        received.take(1, Some(&part(1, 2)), &write("x", 1)).unwrap();
        received.take(2, Some(&marker("n2")), &[]).unwrap();
        // Not counted nor learned before it is in the store.
        assert_eq!(node.failovers.load(Ordering::Acquire), 0);
        assert_eq!(node.owner(), None);
        received.flush(&node, &local).unwrap();
        assert_eq!(value(&local, "x"), None);
        assert_eq!(applied_of(&local).unwrap(), 2);
        assert_eq!(node.failovers.load(Ordering::Acquire), 1);
        assert_eq!(
            node.owner().map(|owner| (owner.node, owner.epoch)),
            Some(("n2".to_string(), 2))
        );
        // A second part of the dropped write is a corrupt stream now.
        assert!(matches!(
            received.take(3, Some(&part(2, 2)), &write("x", 3)),
            Err(FollowError::Behind(_))
        ));
    }

    #[test]
    fn after_a_fetch_a_follower_gathers_asks_at_once_or_waits_on_the_server() {
        let fetched = |count, failed: bool| Fetched {
            count,
            ended: if failed {
                Err(FollowError::Retry(
                    "409 Message Size Exceeds MaxBytes".to_string(),
                ))
            } else {
                Ok(())
            },
        };
        // Caught up: gather for a while, unless a takeover waits.
        assert_eq!(after_fetch(&fetched(10, false), false, false), Then::Gather);
        assert_eq!(after_fetch(&fetched(10, false), false, true), Then::AskNow);
        // A full fetch: more is there.
        assert_eq!(after_fetch(&fetched(10, false), true, false), Then::AskNow);
        // Ended by its byte cap (or a lost leader) after some messages: they are
        // kept and the next fetch goes on from them, on the same consumer.
        assert_eq!(after_fetch(&fetched(3, true), false, false), Then::AskNow);
        // An error with nothing taken in: a new consumer.
        assert_eq!(after_fetch(&fetched(0, true), false, false), Then::Fail);
        assert_eq!(after_fetch(&fetched(0, true), false, true), Then::Fail);
        // A message this node cannot apply ends following, whatever came before.
        let refused = Fetched {
            count: 5,
            ended: Err(FollowError::Behind("undecodable".to_string())),
        };
        assert_eq!(after_fetch(&refused, false, false), Then::Fail);
        // Nothing there: wait on the server. The long poll's one message is never
        // full: gather the rest of its burst.
        assert_eq!(
            after_fetch(&fetched(0, false), false, false),
            Then::AwaitNext
        );
        assert_eq!(after_fetch(&fetched(1, false), false, false), Then::Gather);
        assert_eq!(after_fetch(&fetched(1, false), false, true), Then::AskNow);
    }

    #[test]
    fn a_refused_message_is_not_claimed_as_seen() {
        let (_dir, local, node) = node();
        let mut received = Received::new(0);
        received.take(1, None, &write("a", 1)).unwrap();
        assert!(matches!(
            received.take(2, None, b"not a frame"),
            Err(FollowError::Behind(_))
        ));
        assert!(matches!(
            received.take(2, Some(&part(2, 3)), &write("b", 2)),
            Err(FollowError::Behind(_))
        ));
        received.flush(&node, &local).unwrap();
        // What came before it is written; it is not.
        assert_eq!(value(&local, "a"), Some(vec![1]));
        assert_eq!(node.applied.load(Ordering::Acquire), 1);
        assert_eq!(node.seen.load(Ordering::Acquire), 1);
    }
}
