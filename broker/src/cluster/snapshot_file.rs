//! The snapshot's bytes, on disk and on the wire, each part under its own
//! SHA-256 so that damage is found and named, never loaded.
//!
//! What openraft ships to a follower (the "blob"):
//! `RMQSTAT\x01` · state (a prost `StateSnapshot`) · SHA-256 of both.
//!
//! `snapshot.bin`:
//! `RMQSNAP\x02` · meta length (u32 LE) · meta (a prost `SnapshotMeta`) ·
//! SHA-256 of the three · blob.
//!
//! The meta has its own checksum so that a node whose state is damaged can
//! still tell which cluster it belongs to. A file from before checksums
//! (`[u32 meta length][meta][state]`, no header) is read once, with a
//! warning, and rewritten in this format at once (see `state_machine`).

use prost::Message as _;
use raftmq_proto::v1 as pb;
use ring::digest::SHA256;

use super::convert;
use super::types::SnapshotMeta;

const FILE_MAGIC: &[u8; 8] = b"RMQSNAP\x02";
const BLOB_MAGIC: &[u8; 8] = b"RMQSTAT\x01";
const HASH: usize = 32;
/// A pre-checksum file starts with its meta length, always small; a flipped
/// byte in our header can never make it look like one.
const LEGACY_META_MAX: usize = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("{0} is cut short")]
    Short(&'static str),
    #[error("the {0} does not match its SHA-256 checksum")]
    Checksum(&'static str),
    #[error("unknown header: not a raftmq snapshot, or its header is damaged")]
    Header,
    #[error("the {0} does not decode: {1}")]
    Decode(&'static str, String),
}

fn sha(parts: &[&[u8]]) -> [u8; HASH] {
    let mut ctx = ring::digest::Context::new(&SHA256);
    for p in parts {
        ctx.update(p);
    }
    let mut out = [0u8; HASH];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The state as shipped and stored: header, state, checksum.
pub fn seal(state: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(BLOB_MAGIC.len() + state.len() + HASH);
    out.extend_from_slice(BLOB_MAGIC);
    out.extend_from_slice(state);
    out.extend_from_slice(&sha(&[BLOB_MAGIC, state]));
    out
}

/// The state inside a blob, once its header and checksum hold.
pub fn unseal(blob: &[u8]) -> Result<&[u8], SnapshotError> {
    if blob.len() < BLOB_MAGIC.len() + HASH {
        return Err(SnapshotError::Short("the state"));
    }
    if &blob[..BLOB_MAGIC.len()] != BLOB_MAGIC {
        return Err(SnapshotError::Header);
    }
    let (body, sum) = blob.split_at(blob.len() - HASH);
    if sha(&[body]) != sum {
        return Err(SnapshotError::Checksum("state"));
    }
    Ok(&body[BLOB_MAGIC.len()..])
}

pub fn encode_file(meta: &SnapshotMeta, blob: &[u8]) -> Vec<u8> {
    let meta = convert::snapshot_meta_to(meta).encode_to_vec();
    let len = (meta.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(FILE_MAGIC.len() + 4 + meta.len() + HASH + blob.len());
    out.extend_from_slice(FILE_MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&meta);
    out.extend_from_slice(&sha(&[FILE_MAGIC, &len, &meta]));
    out.extend_from_slice(blob);
    out
}

/// What a snapshot file held.
#[derive(Debug)]
pub enum Loaded {
    /// Checked: the meta and the sealed state.
    Checked { meta: SnapshotMeta, blob: Vec<u8> },
    /// A file from before checksums: nothing could be checked.
    Legacy { meta: SnapshotMeta, state: Vec<u8> },
}

/// A damaged file, with its meta when the meta's own checksum held.
#[derive(Debug)]
pub struct Damaged {
    pub error: SnapshotError,
    pub meta: Option<SnapshotMeta>,
}

fn decode_meta(raw: &[u8]) -> Result<SnapshotMeta, SnapshotError> {
    let m = pb::SnapshotMeta::decode(raw)
        .map_err(|e| SnapshotError::Decode("metadata", e.to_string()))?;
    convert::snapshot_meta_from(Some(m))
        .map_err(|e| SnapshotError::Decode("metadata", e.to_string()))
}

pub fn decode_file(raw: &[u8]) -> Result<Loaded, Damaged> {
    let damaged = |error| Damaged { error, meta: None };
    if raw.len() < FILE_MAGIC.len() + 4 {
        return Err(damaged(SnapshotError::Short("the header")));
    }
    if &raw[..FILE_MAGIC.len()] != FILE_MAGIC {
        return decode_legacy(raw).map_err(damaged);
    }
    let len_at = FILE_MAGIC.len();
    let len = u32::from_le_bytes([
        raw[len_at],
        raw[len_at + 1],
        raw[len_at + 2],
        raw[len_at + 3],
    ]) as usize;
    let meta_at = len_at + 4;
    let blob_at = meta_at
        .checked_add(len)
        .and_then(|m| m.checked_add(HASH))
        .filter(|b| *b <= raw.len())
        .ok_or(damaged(SnapshotError::Short("the metadata")))?;
    let meta_raw = &raw[meta_at..meta_at + len];
    if sha(&[&raw[..meta_at + len]]) != raw[meta_at + len..blob_at] {
        return Err(damaged(SnapshotError::Checksum("metadata")));
    }
    let meta = decode_meta(meta_raw).map_err(damaged)?;
    let blob = &raw[blob_at..];
    match unseal(blob) {
        Ok(_) => Ok(Loaded::Checked {
            meta,
            blob: blob.to_vec(),
        }),
        Err(error) => Err(Damaged {
            error,
            meta: Some(meta),
        }),
    }
}

/// `[u32 LE meta length][meta][state]`, the format before checksums.
fn decode_legacy(raw: &[u8]) -> Result<Loaded, SnapshotError> {
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if len > LEGACY_META_MAX {
        return Err(SnapshotError::Header);
    }
    let meta = raw
        .get(4..4 + len)
        .ok_or(SnapshotError::Short("the metadata"))?;
    Ok(Loaded::Legacy {
        meta: decode_meta(meta)?,
        state: raw[4 + len..].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::{LogId, StoredMembership};

    fn meta() -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(openraft::CommittedLeaderId::new(2, 1), 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "2-9-1".into(),
        }
    }

    #[test]
    fn round_trip() {
        let blob = seal(b"the state");
        assert_eq!(unseal(&blob).unwrap(), b"the state");
        let file = encode_file(&meta(), &blob);
        match decode_file(&file) {
            Ok(Loaded::Checked { meta: m, blob: b }) => {
                assert_eq!(m, meta());
                assert_eq!(b, blob);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let file = encode_file(&meta(), &seal(b"retained s/183 and more state"));
        let meta_end = file.len() - seal(b"retained s/183 and more state").len();
        for at in 0..file.len() {
            let mut f = file.clone();
            f[at] ^= 0x20;
            let d = decode_file(&f).expect_err(&format!("flip at {at} refused"));
            // Damage after the meta's checksum leaves the meta readable.
            assert_eq!(
                d.meta.is_some(),
                at >= meta_end,
                "flip at {at}: {:?}",
                d.error
            );
        }
    }

    #[test]
    fn a_file_from_before_checksums_is_read_as_legacy() {
        let m = convert::snapshot_meta_to(&meta()).encode_to_vec();
        let mut raw = (m.len() as u32).to_le_bytes().to_vec();
        raw.extend_from_slice(&m);
        raw.extend_from_slice(b"state");
        match decode_file(&raw) {
            Ok(Loaded::Legacy { meta: got, state }) => {
                assert_eq!(got, meta());
                assert_eq!(state, b"state");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_bad_blob_from_the_wire_is_refused() {
        let mut blob = seal(b"state");
        let n = blob.len();
        blob[n / 2] ^= 1;
        assert_eq!(unseal(&blob), Err(SnapshotError::Checksum("state")));
        assert_eq!(unseal(&blob[..10]), Err(SnapshotError::Short("the state")));
    }
}
