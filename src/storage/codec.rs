//! The one place that knows how stored records are encoded.
//!
//! Every value written to the store is `[FORMAT_VERSION, bincode(value)...]`.
//! Moving to another format (e.g. postcard) means a new version byte here and
//! a decode branch for the old one; nothing else changes.

use serde::{de::DeserializeOwned, Serialize};

use super::StorageError;

/// Version 3: bincode 2.0.1, standard config (varint integers, little endian).
/// Versions 1 and 2 are the same encoding; only two records changed shape:
/// `JournalRecord` gained `commitments` in 2 (`JournalRecord::decode` reads
/// both), and `ReservationRecord` gained `cart` in 3
/// (`ReservationRecord::decode` reads all three).
pub const FORMAT_VERSION: u8 = 3;
const FORMAT_VERSIONS_READ: [u8; 3] = [1, 2, 3];

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    let mut bytes = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .map_err(|e| StorageError::Codec(e.to_string()))?;
    Ok(bytes)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    match bytes.split_first() {
        Some((version, body)) if FORMAT_VERSIONS_READ.contains(version) => {
            let (value, read) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| StorageError::Codec(e.to_string()))?;
            if read != body.len() {
                return Err(StorageError::Codec(format!(
                    "{} trailing bytes after record",
                    body.len() - read
                )));
            }
            Ok(value)
        }
        Some((version, _)) => Err(StorageError::Codec(format!(
            "unknown record format version {version}"
        ))),
        None => Err(StorageError::Codec("empty record".to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let value = (42u64, "sku-1".to_string(), Some(-7i64));
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<(u64, String, Option<i64>)>(&bytes).unwrap(), value);
        let mut future = bytes.clone();
        future[0] = 99;
        assert!(decode::<(u64, String, Option<i64>)>(&future).is_err());
        assert!(decode::<u64>(&[]).is_err());
        let mut trailing = bytes;
        trailing.push(0);
        assert!(decode::<(u64, String, Option<i64>)>(&trailing).is_err());
    }
}
