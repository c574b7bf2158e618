//! Recovery: latest position snapshot + replay of the journal after it,
//! through the same `Position::evolve` live traffic uses.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::actors::{ColdEntry, PositionKey};
use crate::storage::records::{
    split_position_key, JournalRecord, PositionSnapshot, ReservationRecord, TransferRecord,
    META_SNAPSHOT_SEQ,
};
use crate::storage::{codec, seq_from_key, seq_key, Space, StorageError, Store};

pub struct Recovered {
    pub positions_by_key: HashMap<PositionKey, ColdEntry>,
    pub reservations: Vec<ReservationRecord>,
    pub transfers: Vec<TransferRecord>,
    pub head: u64,
    pub snapshot_seq: u64,
    pub next_exception_id: u64,
    pub positions: usize,
    pub oversold: i64,
    pub replayed: u64,
}

fn corrupt(what: String) -> StorageError {
    StorageError::Codec(what)
}

/// Rebuilds every position, reservation and transfer from `store`.
pub fn recover(store: &dyn Store) -> Result<Recovered, StorageError> {
    let started = Instant::now();
    let snapshot_seq = match store.get(Space::Meta, META_SNAPSHOT_SEQ)? {
        Some(bytes) => codec::decode::<u64>(&bytes)?,
        None => 0,
    };
    let mut interned: HashMap<String, Arc<str>> = HashMap::new();
    let mut intern = |location: &str| -> Arc<str> {
        interned
            .entry(location.to_string())
            .or_insert_with(|| Arc::from(location))
            .clone()
    };
    let mut positions: HashMap<PositionKey, ColdEntry> = HashMap::new();
    let mut failure = None;
    store.scan(Space::Positions, &[], &mut |key, value| {
        let parsed = split_position_key(key)
            .ok_or_else(|| corrupt("bad position key".to_string()))
            .and_then(|(sku, location)| {
                let snapshot: PositionSnapshot = codec::decode(value)?;
                Ok((sku, location, snapshot))
            });
        match parsed {
            Ok((sku, location, snapshot)) => {
                let key = PositionKey {
                    sku: Arc::from(sku),
                    location: intern(location),
                };
                positions.insert(
                    key,
                    ColdEntry {
                        position: snapshot.position,
                        last_seq: snapshot.last_seq,
                        dirty: false,
                    },
                );
                true
            }
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    let mut head = snapshot_seq;
    let mut replayed = 0u64;
    store.scan(
        Space::Journal,
        &seq_key(snapshot_seq + 1),
        &mut |key, value| {
            let mut step = || -> Result<(), StorageError> {
                let seq = seq_from_key(key)?;
                if seq != head + 1 {
                    return Err(corrupt(format!("journal gap: {head} then {seq}")));
                }
                head = seq;
                let record: JournalRecord = JournalRecord::decode(value)?;
                let key = PositionKey {
                    sku: Arc::from(record.sku.as_str()),
                    location: intern(&record.location),
                };
                let entry = positions.entry(key).or_default();
                // The position's snapshot already contains this entry.
                if record.version <= entry.position.version {
                    return Ok(());
                }
                entry
                    .position
                    .evolve(&record.event)
                    .map_err(|e| corrupt(format!("seq {seq}: {e}")))?;
                if entry.position.version != record.version {
                    return Err(corrupt(format!(
                        "seq {seq}: replay reached version {}, journal says {}",
                        entry.position.version, record.version
                    )));
                }
                entry.last_seq = seq;
                entry.dirty = true;
                replayed += 1;
                Ok(())
            };
            match step() {
                Ok(()) => true,
                Err(error) => {
                    failure = Some(error);
                    false
                }
            }
        },
    )?;
    if let Some(error) = failure {
        return Err(error);
    }
    let mut reservations = Vec::new();
    store.scan(
        Space::Reservations,
        &[],
        &mut |_, value| match ReservationRecord::decode(value) {
            Ok(record) => {
                reservations.push(record);
                true
            }
            Err(error) => {
                failure = Some(error);
                false
            }
        },
    )?;
    if let Some(error) = failure {
        return Err(error);
    }
    let mut transfers = Vec::new();
    store.scan(
        Space::Transfers,
        &[],
        &mut |_, value| match codec::decode::<TransferRecord>(value) {
            Ok(record) => {
                transfers.push(record);
                true
            }
            Err(error) => {
                failure = Some(error);
                false
            }
        },
    )?;
    if let Some(error) = failure {
        return Err(error);
    }
    let next_exception_id = match store.last_key(Space::Exceptions)? {
        Some(key) => seq_from_key(&key)? + 1,
        None => 1,
    };
    let oversold = positions
        .values()
        .filter(|entry| entry.position.is_oversold())
        .count() as i64;
    let count = positions.len();
    tracing::info!(
        positions = count,
        replayed,
        head,
        snapshot_seq,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "recovered"
    );
    Ok(Recovered {
        positions_by_key: positions,
        reservations,
        transfers,
        head,
        snapshot_seq,
        next_exception_id,
        positions: count,
        oversold,
        replayed,
    })
}
