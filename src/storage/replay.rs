//! Rebuild one position from durable state: its snapshot plus the journal
//! entries after the snapshot's `seq`. Used to restart a position actor that
//! failed, without touching any other position.

use crate::domain::Position;
use crate::storage::records::{position_key, JournalRecord, PositionSnapshot, META_SNAPSHOT_SEQ};
use crate::storage::{codec, seq_key, Space, StorageError, Store};

/// The durable state of `sku` at `location` and the `seq` it is current to.
pub fn load_position(
    store: &dyn Store,
    sku: &str,
    location: &str,
) -> Result<(Position, u64), StorageError> {
    let snapshot_seq = match store.get(Space::Meta, META_SNAPSHOT_SEQ)? {
        Some(bytes) => codec::decode::<u64>(&bytes)?,
        None => 0,
    };
    // A position's snapshot holds every change it had up to `snapshot_seq`
    // (and maybe later ones): replay after that, skipping entries whose
    // version the snapshot already has.
    let (mut position, mut last_seq) =
        match store.get(Space::Positions, &position_key(sku, location))? {
            Some(bytes) => {
                let snapshot: PositionSnapshot = codec::decode(&bytes)?;
                (snapshot.position, snapshot.last_seq)
            }
            None => (Position::default(), snapshot_seq),
        };
    let from = snapshot_seq + 1;
    let mut failure = None;
    store.scan(Space::Journal, &seq_key(from), &mut |key, value| {
        let mut step = || -> Result<(), StorageError> {
            let seq = super::seq_from_key(key)?;
            let record: JournalRecord = JournalRecord::decode(value)?;
            if record.sku != sku
                || record.location != location
                || record.version <= position.version
            {
                return Ok(());
            }
            position
                .evolve(&record.event)
                .map_err(|e| StorageError::Codec(format!("seq {seq}: {e}")))?;
            last_seq = last_seq.max(seq);
            Ok(())
        };
        match step() {
            Ok(()) => true,
            Err(error) => {
                failure = Some(error);
                false
            }
        }
    })?;
    match failure {
        Some(error) => Err(error),
        None => Ok((position, last_seq)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Command, Counters, Qty};
    use crate::storage::{MemoryStore, WriteBatch};

    fn record(sku: &str, position: &mut Position, qty: u64) -> Vec<u8> {
        let command = Command::Receipt {
            qty: Qty::new(qty).unwrap(),
        };
        let event = position.decide(&command).unwrap().remove(0);
        position.evolve(&event).unwrap();
        codec::encode(&JournalRecord {
            sku: sku.to_string(),
            location: "wh".to_string(),
            event,
            version: position.version,
            counters: position.counters,
            event_id: format!("e-{sku}-{qty}"),
            source: "test".to_string(),
            correlation_id: "c".to_string(),
            occurred_at_ms: 0,
            recorded_at_ms: 0,
            commitments: Vec::new(),
        })
        .unwrap()
    }

    #[test]
    fn one_position_is_rebuilt_from_snapshot_and_journal_tail() {
        let store = MemoryStore::new();
        let (mut a, mut b) = (Position::default(), Position::default());
        let mut batch = WriteBatch::default();
        batch.put(Space::Journal, seq_key(1), record("a", &mut a, 5));
        batch.put(Space::Journal, seq_key(2), record("b", &mut b, 7));
        let snapshot = PositionSnapshot {
            position: a.clone(),
            last_seq: 1,
        };
        batch.put(
            Space::Positions,
            position_key("a", "wh"),
            codec::encode(&snapshot).unwrap(),
        );
        batch.put(
            Space::Meta,
            META_SNAPSHOT_SEQ,
            codec::encode(&1u64).unwrap(),
        );
        batch.put(Space::Journal, seq_key(3), record("a", &mut a, 3));
        batch.put(Space::Journal, seq_key(4), record("b", &mut b, 1));
        store.write(batch, false).unwrap();

        let (loaded, last_seq) = load_position(&store, "a", "wh").unwrap();
        assert_eq!(loaded, a);
        assert_eq!(last_seq, 3);
        let (loaded, last_seq) = load_position(&store, "b", "wh").unwrap();
        assert_eq!(
            loaded.counters,
            Counters {
                on_hand: 8,
                ..Counters::default()
            }
        );
        assert_eq!(last_seq, 4);
        let (missing, _) = load_position(&store, "c", "wh").unwrap();
        assert_eq!(missing, Position::default());
    }
}
