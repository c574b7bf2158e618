//! Re-seeding a node that the stream has been purged past: it copies the owner's
//! store, chunk by chunk over NATS request/reply, then follows the stream from
//! where the copy began.
//!
//! The copy is fuzzy: the owner keeps writing while it is read, so a chunk may
//! hold a key as of a later write than the first chunk. It is made exact the way
//! a fuzzy checkpoint is. The first chunk says the owner's applied sequence `S0`
//! before anything was read, every chunk is read from a store that holds at
//! least `S0` (the owner's; a new owner caught up to the stream's end first), and
//! the node then applies every stream write after `S0` in order. Each chunk
//! says the applied sequence of the store it was read from; one below `S0` (a
//! stale owner's, not yet stepped down) is refused and asked for again. A key written
//! after `S0` ends as its last write left it, whatever the copy held; a key not
//! written after `S0` was copied as it was at `S0`. Each write puts or deletes
//! whole keys, so a write applied on top of its own effect changes nothing.
//!
//! While it copies, the node's store is marked (`cluster_seeding` in
//! `Space::Meta`); a node that crashes meanwhile starts from sequence 0 and,
//! finding the stream purged, copies again.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::link::Link;
use super::{mark_applied, Node, APPLIED_KEY};
use crate::storage::{codec, RocksStore, Space, StorageError, Store, WriteBatch};

/// `Space::Meta` key present while the local store is being copied.
pub const SEEDING_KEY: &[u8] = b"cluster_seeding";

/// How long a node keeps asking for one chunk (through a failover) before it
/// starts its copy over.
const CHUNK_PATIENCE: Duration = Duration::from_secs(30);

/// Chunks refused in a row (for coming from a store behind the copy's start)
/// before the copy starts over.
const STALE_MAX: u32 = 60;

/// Keys deleted per write when the local store is emptied.
const WIPE_BATCH: usize = 10_000;

/// The core subject the owner answers copy requests on.
pub fn seed_subject(stream: &str) -> String {
    format!("stockwire.{stream}.seed")
}

/// A request for the keys after `after` (all of them when `None`) in space
/// `space` and the spaces after it.
#[derive(Debug, Serialize, Deserialize)]
struct Request {
    space: u8,
    after: Option<Vec<u8>>,
}

impl Request {
    /// The request for the chunk after one whose `next` this is (`None`: done).
    fn after(next: Option<(u8, Vec<u8>)>) -> Option<Request> {
        next.map(|(space, after)| Request {
            space,
            after: Some(after),
        })
    }
}

/// The owner's answer: its applied sequence before reading, keys in order, and
/// where the next chunk starts (`None`: that was the last).
#[derive(Debug, Serialize, Deserialize)]
struct Chunk {
    applied: u64,
    entries: Vec<(u8, Vec<u8>, Vec<u8>)>,
    next: Option<(u8, Vec<u8>)>,
}

/// Keys this node's own cluster state lives under: never copied.
fn own_key(space: Space, key: &[u8]) -> bool {
    space == Space::Meta && (key == APPLIED_KEY || key == SEEDING_KEY)
}

/// Up to about `limit` bytes of keys from `request`'s position, read from `local`.
fn read_chunk(
    local: &RocksStore,
    request: &Request,
    limit: usize,
    applied: u64,
) -> Result<Chunk, StorageError> {
    let mut chunk = Chunk {
        applied,
        entries: Vec::new(),
        next: None,
    };
    let mut bytes = 0usize;
    let mut after = request.after.clone();
    for index in usize::from(request.space)..Space::ALL.len() {
        let space = Space::ALL[index];
        let from = match after.take() {
            // The first key after `key`.
            Some(mut key) => {
                key.push(0);
                key
            }
            None => Vec::new(),
        };
        let mut full = None;
        local.scan(space, &from, &mut |key, value| {
            if own_key(space, key) {
                return true;
            }
            // Checked before the entry goes in, so a chunk stays within `limit`;
            // an entry larger than that goes alone (every value landed in one
            // stream message once, so it fits in one).
            let size = key.len() + value.len() + 16;
            if bytes + size > limit && !chunk.entries.is_empty() {
                full = Some(());
                return false;
            }
            bytes += size;
            chunk
                .entries
                .push((index as u8, key.to_vec(), value.to_vec()));
            true
        })?;
        if full.is_some() {
            let last = chunk.entries.last().map(|(s, k, _)| (*s, k.clone()));
            chunk.next = last;
            return Ok(chunk);
        }
    }
    Ok(chunk)
}

/// Answers copy requests while this node owns the journal, on the link's thread
/// (each chunk is read off it). Runs for the life of the node.
pub async fn serve(node: Arc<Node>, link: Arc<Link>, local: Arc<RocksStore>) {
    let subject = seed_subject(&link.stream);
    let limit = link.part_bytes / 2;
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !node.is_owner() {
            continue;
        }
        let mut requests = match link.client.subscribe(subject.clone()).await {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "seed subscription failed; retrying");
                continue;
            }
        };
        while node.is_owner() {
            let message = tokio::select! {
                message = requests.next() => message,
                // Looks at the role again now and then.
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            let Some(message) = message else { break };
            let Some(reply) = message.reply else { continue };
            let Ok(request) = codec::decode::<Request>(&message.payload) else {
                continue;
            };
            let applied = node.applied.load(Ordering::Acquire);
            let store = local.clone();
            let read =
                tokio::task::spawn_blocking(move || read_chunk(&store, &request, limit, applied))
                    .await;
            match read {
                Ok(Ok(chunk)) => match codec::encode(&chunk) {
                    Ok(bytes) => {
                        if let Err(error) = link.client.publish(reply, bytes.into()).await {
                            tracing::warn!(%error, "seed chunk not sent");
                        }
                    }
                    Err(error) => tracing::warn!(%error, "seed chunk not encoded"),
                },
                Ok(Err(error)) => tracing::warn!(%error, "seed chunk not read"),
                Err(error) => tracing::warn!(%error, "seed chunk reader failed"),
            }
        }
    }
}

/// Empties `local` but for the seeding mark, which it sets first.
fn wipe(local: &RocksStore) -> Result<(), StorageError> {
    let mut batch = WriteBatch::default();
    batch.put(Space::Meta, SEEDING_KEY, Vec::new());
    batch.delete(Space::Meta, APPLIED_KEY);
    local.write(batch, false)?;
    for space in Space::ALL {
        // Each pass starts after the last key deleted, not over its tombstones.
        let mut from = Vec::new();
        loop {
            let mut keys = Vec::new();
            local.scan(space, &from, &mut |key, _| {
                if !own_key(space, key) {
                    keys.push(key.to_vec());
                }
                keys.len() < WIPE_BATCH
            })?;
            let Some(last) = keys.last() else { break };
            from = last.clone();
            from.push(0);
            let mut batch = WriteBatch::default();
            for key in keys {
                batch.delete(space, key);
            }
            local.write(batch, false)?;
        }
    }
    Ok(())
}

/// A copy left unfinished by a crash: emptied, mark and all, so the node starts
/// as a new one. Following a stream that was never purged from 0 onto the rest
/// of a half copy would keep keys no write in that stream made.
pub fn discard_unfinished(local: &RocksStore) -> Result<bool, StorageError> {
    if local.get(Space::Meta, SEEDING_KEY)?.is_none() {
        return Ok(false);
    }
    wipe(local)?;
    let mut batch = WriteBatch::default();
    batch.delete(Space::Meta, SEEDING_KEY);
    local.write(batch, false)?;
    Ok(true)
}

/// Asks the owner for one chunk, through a failover, for up to [`CHUNK_PATIENCE`].
async fn ask(link: &Link, request: &Request) -> Result<Chunk, String> {
    let subject = seed_subject(&link.stream);
    let payload = codec::encode(request).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + CHUNK_PATIENCE;
    loop {
        let answer = link
            .client
            .request(subject.clone(), payload.clone().into())
            .await;
        let why = match answer {
            Ok(message) => match codec::decode::<Chunk>(&message.payload) {
                Ok(chunk) => return Ok(chunk),
                Err(error) => format!("undecodable chunk: {error}"),
            },
            Err(error) => error.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("no chunk from the owner: {why}"));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A copy in progress: the chunks taken so far.
#[derive(Default)]
struct Copy {
    /// `S0`: the applied sequence the first chunk said.
    start: Option<u64>,
    keys: usize,
}

/// What to do with a chunk.
enum Step {
    /// Write this; then ask for the next chunk from here (`None`: done).
    Write(WriteBatch, Option<(u8, Vec<u8>)>),
    /// Read from a store behind `S0`: ask again.
    Stale,
}

impl Copy {
    fn take(&mut self, chunk: Chunk) -> Result<Step, String> {
        let start = *self.start.get_or_insert(chunk.applied);
        if chunk.applied < start {
            return Ok(Step::Stale);
        }
        let mut batch = WriteBatch::default();
        for (space, key, value) in chunk.entries {
            let space = *Space::ALL
                .get(usize::from(space))
                .ok_or_else(|| format!("unknown space {space} in a chunk"))?;
            if !own_key(space, &key) {
                batch.put(space, key, value);
                self.keys += 1;
            }
        }
        if chunk.next.is_none() {
            // The copy holds every write up to `S0`: the node follows from there.
            mark_applied(&mut batch, start).map_err(|e| e.to_string())?;
            batch.delete(Space::Meta, SEEDING_KEY);
        }
        Ok(Step::Write(batch, chunk.next))
    }
}

/// Runs `write` on a blocking thread if `generation` is still the latest copy's,
/// under the lock a new copy takes to start: the write of a copy aborted while it
/// was on its way (its task cancelled) cannot land inside the next copy.
async fn write_for<T: Send + 'static>(
    node: &Arc<Node>,
    generation: u64,
    write: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, String> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let latest = node.copies.lock().unwrap_or_else(|p| p.into_inner());
        if *latest != generation {
            return Err("a later copy has started".to_string());
        }
        write().map_err(|e| format!("local store: {e}"))
    })
    .await
    .map_err(|e| format!("local store: {e}"))?
}

/// Replaces the local store with a copy of the owner's; the stream sequence the
/// copy holds every write up to (the node follows the stream from after it).
pub async fn reseed(node: &Arc<Node>, link: &Link, local: &Arc<RocksStore>) -> Result<u64, String> {
    node.applied_to(0);
    let generation = {
        let node = node.clone();
        let store = local.clone();
        tokio::task::spawn_blocking(move || {
            let mut latest = node.copies.lock().unwrap_or_else(|p| p.into_inner());
            *latest += 1;
            wipe(&store).map(|()| *latest)
        })
        .await
        .map_err(|e| format!("wipe: {e}"))?
        .map_err(|e| format!("wipe: {e}"))?
    };
    let mut request = Request {
        space: 0,
        after: None,
    };
    let mut copy = Copy::default();
    let mut stale = 0u32;
    loop {
        let chunk = ask(link, &request).await?;
        let (batch, next) = match copy.take(chunk)? {
            Step::Write(batch, next) => (batch, next),
            Step::Stale => {
                // From a stale owner that has not noticed yet.
                stale += 1;
                if stale > STALE_MAX {
                    return Err("chunks keep coming from a store behind the copy's start".into());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        stale = 0;
        let store = local.clone();
        write_for(node, generation, move || store.write(batch, false)).await?;
        node.seed_chunks.fetch_add(1, Ordering::Relaxed);
        // The copy's start, in the heartbeat: the owner's purge keeps the stream
        // from there while this node copies.
        let start = copy.start.unwrap_or(0);
        node.applied_to(start);
        match Request::after(next) {
            Some(next) => request = next,
            None => {
                node.seeded_from.store(start, Ordering::Relaxed);
                tracing::info!(node = %node.config.node, applied = start, keys = copy.keys, "copied the owner's store");
                return Ok(start);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, RocksStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = RocksStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn chunks_cover_every_space_in_order_without_the_nodes_own_keys() {
        let (_dir, source) = store();
        let mut batch = WriteBatch::default();
        for i in 0..500u32 {
            batch.put(Space::Journal, i.to_be_bytes(), vec![1; 50]);
            batch.put(Space::Reservations, format!("r{i:04}"), vec![2; 30]);
        }
        batch.put(Space::Meta, b"snapshot_seq", vec![3]);
        mark_applied(&mut batch, 77).unwrap();
        source.write(batch, false).unwrap();
        let (_dir2, target) = store();
        let mut request = Request {
            space: 0,
            after: None,
        };
        let mut chunks = 0;
        loop {
            let chunk = read_chunk(&source, &request, 2_000, 77).unwrap();
            assert_eq!(chunk.applied, 77);
            chunks += 1;
            let mut batch = WriteBatch::default();
            for (space, key, value) in chunk.entries {
                batch.put(Space::ALL[usize::from(space)], key, value);
            }
            target.write(batch, false).unwrap();
            match Request::after(chunk.next) {
                Some(next) => request = next,
                None => break,
            }
        }
        assert!(chunks > 10, "{chunks} chunks");
        for space in Space::ALL {
            let mut a = Vec::new();
            let mut b = Vec::new();
            source
                .scan(space, &[], &mut |k, v| {
                    if !own_key(space, k) {
                        a.push((k.to_vec(), v.to_vec()));
                    }
                    true
                })
                .unwrap();
            target
                .scan(space, &[], &mut |k, v| {
                    b.push((k.to_vec(), v.to_vec()));
                    true
                })
                .unwrap();
            assert_eq!(a, b, "{space:?}");
        }
        assert_eq!(target.get(Space::Meta, APPLIED_KEY).unwrap(), None);
    }

    #[test]
    fn a_chunk_stays_within_its_limit_and_a_large_value_goes_alone() {
        let (_dir, source) = store();
        let mut batch = WriteBatch::default();
        for i in 0..40u32 {
            // Every seventh value is larger than a whole chunk.
            let size = if i % 7 == 3 { 5_000 } else { 300 };
            batch.put(Space::Reservations, format!("r{i:04}"), vec![7; size]);
        }
        source.write(batch, false).unwrap();
        let mut request = Request {
            space: 0,
            after: None,
        };
        let (mut keys, mut alone) = (0, 0);
        loop {
            let chunk = read_chunk(&source, &request, 2_000, 1).unwrap();
            let bytes: usize = chunk
                .entries
                .iter()
                .map(|(_, k, v)| k.len() + v.len() + 16)
                .sum();
            assert!(
                bytes <= 2_000 || chunk.entries.len() == 1,
                "{bytes} bytes in {} entries",
                chunk.entries.len()
            );
            alone += usize::from(bytes > 2_000);
            keys += chunk.entries.len();
            match Request::after(chunk.next) {
                Some(next) => request = next,
                None => break,
            }
        }
        assert_eq!((keys, alone), (40, 6));
    }

    /// Every key of `store` but the node's own, in order.
    fn contents(store: &RocksStore) -> Vec<(Space, Vec<u8>, Vec<u8>)> {
        let mut all = Vec::new();
        for space in Space::ALL {
            store
                .scan(space, &[], &mut |k, v| {
                    if !own_key(space, k) {
                        all.push((space, k.to_vec(), v.to_vec()));
                    }
                    true
                })
                .unwrap();
        }
        all
    }

    /// The owner writes while it is copied (updates behind the copy's cursor,
    /// deletes, new keys): the copy plus the writes after the first chunk's
    /// applied sequence, in order, is the owner's store.
    #[test]
    fn a_fuzzy_copy_plus_the_writes_after_its_start_is_exact() {
        let (_dir, owner) = store();
        let mut writes: Vec<(u64, WriteBatch)> = Vec::new();
        // The owner's write: to its store, and to the stream (`writes`).
        fn write(owner: &RocksStore, batch: WriteBatch, writes: &mut Vec<(u64, WriteBatch)>) {
            owner
                .write(
                    WriteBatch {
                        ops: batch.ops.clone(),
                    },
                    false,
                )
                .unwrap();
            writes.push((writes.len() as u64 + 1, batch));
        }
        for i in 0..300u32 {
            let mut batch = WriteBatch::default();
            batch.put(Space::Reservations, format!("r{i:04}"), b"held".to_vec());
            batch.put(Space::Journal, u64::from(i).to_be_bytes(), vec![1; 40]);
            write(&owner, batch, &mut writes);
        }
        let (_dir2, target) = store();
        let mut copy = Copy::default();
        let mut request = Request {
            space: 0,
            after: None,
        };
        let mut round = 0u32;
        loop {
            let applied = writes.len() as u64;
            let chunk = read_chunk(&owner, &request, 1_500, applied).unwrap();
            let Step::Write(batch, next) = copy.take(chunk).unwrap() else {
                panic!("stale")
            };
            target.write(batch, false).unwrap();
            // Between chunks the owner writes: an update and a delete of keys
            // copied already, and a key after the cursor.
            round += 1;
            let mut batch = WriteBatch::default();
            batch.put(
                Space::Reservations,
                format!("r{:04}", round % 5),
                format!("released {round}").into_bytes(),
            );
            batch.delete(Space::Reservations, format!("r{:04}", 5 + round));
            batch.put(Space::Exceptions, round.to_be_bytes(), b"new".to_vec());
            write(&owner, batch, &mut writes);
            match Request::after(next) {
                Some(next) => request = next,
                None => break,
            }
        }
        assert!(round > 10, "{round} chunks");
        let start = copy.start.unwrap();
        assert_eq!(start, 300, "the first chunk's applied sequence");
        for (seq, batch) in writes.into_iter().filter(|(seq, _)| *seq > start) {
            let mut batch = batch;
            mark_applied(&mut batch, seq).unwrap();
            target.write(batch, false).unwrap();
        }
        assert_eq!(contents(&target), contents(&owner));
        assert_eq!(target.get(Space::Meta, SEEDING_KEY).unwrap(), None);
        // A chunk from a store behind the start is refused.
        let behind = Chunk {
            applied: start - 1,
            entries: Vec::new(),
            next: None,
        };
        assert!(matches!(copy.take(behind), Ok(Step::Stale)));
    }

    #[test]
    fn a_wipe_leaves_only_the_seeding_mark() {
        let (_dir, local) = store();
        let mut batch = WriteBatch::default();
        for i in 0..25_000u32 {
            batch.put(Space::Journal, i.to_be_bytes(), vec![1]);
        }
        mark_applied(&mut batch, 9).unwrap();
        local.write(batch, false).unwrap();
        wipe(&local).unwrap();
        assert_eq!(local.last_key(Space::Journal).unwrap(), None);
        assert_eq!(local.get(Space::Meta, APPLIED_KEY).unwrap(), None);
        assert!(local.get(Space::Meta, SEEDING_KEY).unwrap().is_some());
        // A node starting on an unfinished copy (a crash mid-copy) discards it.
        let mut batch = WriteBatch::default();
        batch.put(Space::Reservations, b"half-copied", vec![1]);
        local.write(batch, false).unwrap();
        assert_eq!(super::super::applied_of(&local), Ok(0));
        assert_eq!(local.get(Space::Meta, SEEDING_KEY).unwrap(), None);
        assert_eq!(
            local.get(Space::Reservations, b"half-copied").unwrap(),
            None
        );
        assert!(!discard_unfinished(&local).unwrap());
    }
}
