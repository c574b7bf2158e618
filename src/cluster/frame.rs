//! What one journal-stream message carries: a part of one store write (a
//! `WriteBatch`), encoded through the store's codec (version byte + bincode).
//! A write larger than one message is cut into parts; a follower applies a
//! write only once it has every part, so a write is replicated all or none.

use serde::{Deserialize, Serialize};

use crate::storage::{codec, Space, StorageError, WriteBatch, WriteOp};

/// Header naming the node that wrote a message.
pub const NODE_HEADER: &str = "Stockwire-Node";
/// Header of a takeover marker (its value: the new owner's node id).
pub const TAKEOVER_HEADER: &str = "Stockwire-Takeover";
/// Header `i/n` of a write's part (absent: the whole write in one message).
pub const PART_HEADER: &str = "Stockwire-Part";

/// One store operation on the wire: the space as its index in [`Space::ALL`].
#[derive(Serialize, Deserialize)]
struct Op {
    space: u8,
    key: Vec<u8>,
    value: Option<Vec<u8>>,
}

fn space_index(space: Space) -> u8 {
    Space::ALL
        .iter()
        .position(|s| *s == space)
        .map_or(u8::MAX, |i| i as u8)
}

/// Encodes `ops` as parts of at most about `part_bytes` each (one op is never
/// cut: a single op larger than that is one part of its own, which the server's
/// `max_payload` then accepts or refuses).
pub fn encode(ops: &[WriteOp], part_bytes: usize) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut parts = Vec::new();
    let mut current: Vec<Op> = Vec::new();
    let mut size = 0usize;
    for (space, key, value) in ops {
        let op_size = key.len() + value.as_ref().map_or(0, Vec::len) + 16;
        if !current.is_empty() && size + op_size > part_bytes {
            parts.push(codec::encode(&current)?);
            current.clear();
            size = 0;
        }
        size += op_size;
        current.push(Op {
            space: space_index(*space),
            key: key.clone(),
            value: value.clone(),
        });
    }
    if !current.is_empty() || parts.is_empty() {
        parts.push(codec::encode(&current)?);
    }
    Ok(parts)
}

/// Decodes one part back into operations, appended to `batch`.
pub fn decode_into(bytes: &[u8], batch: &mut WriteBatch) -> Result<(), StorageError> {
    let ops: Vec<Op> = codec::decode(bytes)?;
    for op in ops {
        let space = *Space::ALL
            .get(usize::from(op.space))
            .ok_or_else(|| StorageError::Codec(format!("unknown space {}", op.space)))?;
        batch.ops.push((space, op.key, op.value));
    }
    Ok(())
}

/// `i/n` of [`PART_HEADER`].
pub fn parse_part(value: &str) -> Option<(u32, u32)> {
    let (index, count) = value.split_once('/')?;
    let index: u32 = index.parse().ok()?;
    let count: u32 = count.parse().ok()?;
    (index >= 1 && index <= count).then_some((index, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_round_trips_whole_or_in_parts() {
        let mut batch = WriteBatch::default();
        for i in 0..100u32 {
            batch.put(Space::Journal, i.to_be_bytes(), vec![7; 100]);
            batch.delete(Space::Owed, format!("k{i}"));
        }
        for part_bytes in [1 << 20, 1000, 1] {
            let parts = encode(&batch.ops, part_bytes).unwrap();
            let mut back = WriteBatch::default();
            for part in &parts {
                decode_into(part, &mut back).unwrap();
            }
            assert_eq!(back.ops, batch.ops, "{part_bytes}");
            if part_bytes == 1 {
                assert_eq!(parts.len(), 200);
            }
        }
        assert_eq!(encode(&[], 10).unwrap().len(), 1);
    }

    #[test]
    fn bad_parts_and_spaces_are_refused() {
        assert_eq!(parse_part("2/3"), Some((2, 3)));
        for bad in ["0/3", "4/3", "x/3", "3", ""] {
            assert_eq!(parse_part(bad), None, "{bad}");
        }
        let bytes = codec::encode(&vec![Op {
            space: 200,
            key: vec![],
            value: None,
        }])
        .unwrap();
        assert!(decode_into(&bytes, &mut WriteBatch::default()).is_err());
    }
}
