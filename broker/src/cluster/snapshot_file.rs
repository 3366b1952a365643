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
//!
//! A node writes and reads its own file a piece at a time
//! ([`write_streamed`], [`read_streamed`], [`verify`]): the state goes
//! through the checksum a message at a time (`snapshot_stream`), so that
//! neither the file nor a second copy of the state is ever held whole.

use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use prost::Message as _;
use raftmq_proto::v1 as pb;
use ring::digest::SHA256;

use super::convert;
use super::snapshot_stream;
use super::types::SnapshotMeta;
use crate::state::ReplicatedState;

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

/// The state as shipped and stored: header, state, checksum (a node
/// writes it a piece at a time, see [`write_streamed`]).
#[cfg(test)]
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

#[cfg(test)]
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
#[cfg(test)]
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

/// A whole file in memory (a node reads its own with [`read_streamed`]).
#[cfg(test)]
pub fn decode_file(raw: &[u8]) -> Result<Loaded, Damaged> {
    let damaged = |error| Damaged { error, meta: None };
    if raw.len() < FILE_MAGIC.len() + 4 {
        return Err(damaged(SnapshotError::Short("the header")));
    }
    if &raw[..FILE_MAGIC.len()] != FILE_MAGIC {
        let (meta, state) = decode_legacy(raw).map_err(damaged)?;
        return Ok(Loaded::Legacy { meta, state });
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
fn decode_legacy(raw: &[u8]) -> Result<(SnapshotMeta, Vec<u8>), SnapshotError> {
    let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    if len > LEGACY_META_MAX {
        return Err(SnapshotError::Header);
    }
    let meta = raw
        .get(4..4 + len)
        .ok_or(SnapshotError::Short("the metadata"))?;
    Ok((decode_meta(meta)?, raw[4 + len..].to_vec()))
}

/// What goes through it goes into a SHA-256 too.
struct Hashing<T> {
    inner: T,
    ctx: ring::digest::Context,
}

impl<T> Hashing<T> {
    fn new(inner: T) -> Self {
        Hashing {
            inner,
            ctx: ring::digest::Context::new(&SHA256),
        }
    }

    fn sum(self) -> (T, [u8; HASH]) {
        let mut out = [0u8; HASH];
        out.copy_from_slice(self.ctx.finish().as_ref());
        (self.inner, out)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.ctx.update(&buf[..n]);
        Ok(n)
    }
}

/// The header, meta and meta checksum of a file.
fn write_head(w: &mut impl Write, meta: &SnapshotMeta) -> io::Result<()> {
    let meta = convert::snapshot_meta_to(meta).encode_to_vec();
    let len = (meta.len() as u32).to_le_bytes();
    w.write_all(FILE_MAGIC)?;
    w.write_all(&len)?;
    w.write_all(&meta)?;
    w.write_all(&sha(&[FILE_MAGIC, &len, &meta]))
}

/// Writes the file of `meta` and `state` (the bytes [`encode_file`] makes
/// of the sealed encoded state), the state a message at a time. Returns
/// the blob's size.
pub fn write_streamed(
    w: &mut impl Write,
    meta: &SnapshotMeta,
    state: &ReplicatedState,
) -> io::Result<u64> {
    write_head(w, meta)?;
    let mut blob = Hashing::new(w);
    blob.write_all(BLOB_MAGIC)?;
    let n = snapshot_stream::write_state(state, &mut blob)?;
    let (w, sum) = blob.sum();
    w.write_all(&sum)?;
    Ok(BLOB_MAGIC.len() as u64 + n + HASH as u64)
}

/// Writes the file of a sealed `blob` (a leader's) without copying it.
pub fn write_with_blob(w: &mut impl Write, meta: &SnapshotMeta, blob: &[u8]) -> io::Result<()> {
    write_head(w, meta)?;
    w.write_all(blob)
}

/// An open file past its checked meta: where its blob starts and how long
/// it is.
struct Opened {
    meta: SnapshotMeta,
    r: BufReader<std::fs::File>,
    blob_len: u64,
}

fn damaged(error: SnapshotError) -> Damaged {
    Damaged { error, meta: None }
}

fn io_damage(what: &'static str) -> impl Fn(io::Error) -> Damaged {
    move |e| {
        damaged(if e.kind() == io::ErrorKind::UnexpectedEof {
            SnapshotError::Short(what)
        } else {
            SnapshotError::Decode(what, e.to_string())
        })
    }
}

/// Opens `path` and checks its header and meta. `Ok(None)`: a file from
/// before checksums.
fn open_checked(path: &Path) -> Result<Option<Opened>, Damaged> {
    let f = std::fs::File::open(path).map_err(io_damage("the header"))?;
    let file_len = f.metadata().map_err(io_damage("the header"))?.len();
    let mut r = BufReader::new(f);
    let mut head = [0u8; 12];
    r.read_exact(&mut head).map_err(io_damage("the header"))?;
    if &head[..8] != FILE_MAGIC {
        return Ok(None);
    }
    let len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as u64;
    let blob_at = 12 + len + HASH as u64;
    if blob_at > file_len {
        return Err(damaged(SnapshotError::Short("the metadata")));
    }
    let mut meta = vec![0u8; len as usize];
    r.read_exact(&mut meta).map_err(io_damage("the metadata"))?;
    let mut sum = [0u8; HASH];
    r.read_exact(&mut sum).map_err(io_damage("the metadata"))?;
    if sha(&[&head, &meta]) != sum {
        return Err(damaged(SnapshotError::Checksum("metadata")));
    }
    Ok(Some(Opened {
        meta: decode_meta(&meta).map_err(damaged)?,
        r,
        blob_len: file_len - blob_at,
    }))
}

/// What [`read_streamed`] found.
pub struct FromFile {
    pub meta: SnapshotMeta,
    pub state: ReplicatedState,
    /// A file from before checksums (to be rewritten with them).
    pub legacy: bool,
}

/// Reads a snapshot file: its meta, and its state built a message at a
/// time as the blob goes through its checksum. A state whose checksum does
/// not hold is never returned, whatever it decoded to.
pub fn read_streamed(path: &Path) -> Result<FromFile, Damaged> {
    let Some(opened) = open_checked(path)? else {
        let raw = std::fs::read(path).map_err(io_damage("the header"))?;
        let (meta, state) = decode_legacy(&raw).map_err(damaged)?;
        let state = snapshot_stream::read_state(&mut &state[..]).map_err(|e| Damaged {
            error: SnapshotError::Decode("state", e.to_string()),
            meta: Some(meta.clone()),
        })?;
        return Ok(FromFile {
            meta,
            state,
            legacy: true,
        });
    };
    let Opened { meta, r, blob_len } = opened;
    let fail = |error| Damaged {
        error,
        meta: Some(meta.clone()),
    };
    let Some(state_len) = blob_len.checked_sub((BLOB_MAGIC.len() + HASH) as u64) else {
        return Err(fail(SnapshotError::Short("the state")));
    };
    let mut blob = Hashing::new(r);
    let mut magic = [0u8; 8];
    blob.read_exact(&mut magic)
        .map_err(|_| fail(SnapshotError::Short("the state")))?;
    if &magic != BLOB_MAGIC {
        return Err(fail(SnapshotError::Header));
    }
    let mut body = blob.take(state_len);
    let decoded = snapshot_stream::read_state(&mut body);
    // Damage is named by the checksum, whatever the decoder made of it:
    // what it did not read goes through the checksum too.
    let rest = io::copy(&mut body, &mut io::sink());
    let (mut r, sum) = body.into_inner().sum();
    let mut expected = [0u8; HASH];
    if rest.is_err() || r.read_exact(&mut expected).is_err() {
        return Err(fail(SnapshotError::Short("the state")));
    }
    if sum != expected {
        return Err(fail(SnapshotError::Checksum("state")));
    }
    let state = decoded.map_err(|e| fail(SnapshotError::Decode("state", e.to_string())))?;
    Ok(FromFile {
        meta,
        state,
        legacy: false,
    })
}

/// Checks a file's header and both checksums a piece at a time (that
/// what was written reads back).
pub fn verify(path: &Path) -> Result<SnapshotMeta, Damaged> {
    let Some(Opened { meta, r, blob_len }) = open_checked(path)? else {
        return Err(damaged(SnapshotError::Header));
    };
    let fail = |error| Damaged {
        error,
        meta: Some(meta.clone()),
    };
    let Some(body_len) = blob_len.checked_sub(HASH as u64) else {
        return Err(fail(SnapshotError::Short("the state")));
    };
    let mut body = Hashing::new(r).take(body_len);
    let copied = io::copy(&mut body, &mut io::sink()).unwrap_or(0);
    let (mut r, sum) = body.into_inner().sum();
    let mut expected = [0u8; HASH];
    if copied != body_len || r.read_exact(&mut expected).is_err() {
        return Err(fail(SnapshotError::Short("the state")));
    }
    if sum != expected {
        return Err(fail(SnapshotError::Checksum("state")));
    }
    Ok(meta)
}

/// The sealed blob of a checked file (what a follower is sent), with the
/// file's meta.
pub fn read_blob(path: &Path) -> Result<(SnapshotMeta, Vec<u8>), Damaged> {
    let Some(Opened { meta, mut r, .. }) = open_checked(path)? else {
        return Err(damaged(SnapshotError::Header));
    };
    let mut blob = Vec::new();
    r.read_to_end(&mut blob).map_err(io_damage("the state"))?;
    Ok((meta, blob))
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

    #[test]
    fn streamed_files_are_the_same_bytes_and_read_back() {
        let state = ReplicatedState {
            routes: [("a/#".into(), [1u64, 2].into_iter().collect())].into(),
            ..Default::default()
        };
        let whole = convert::state_to(&state).encode_to_vec();
        let mut streamed = Vec::new();
        let n = write_streamed(&mut streamed, &meta(), &state).unwrap();
        assert_eq!(streamed, encode_file(&meta(), &seal(&whole)));
        assert_eq!(n as usize, seal(&whole).len());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snapshot.bin");
        std::fs::write(&path, &streamed).unwrap();
        let read = read_streamed(&path).unwrap();
        assert_eq!((read.meta, read.legacy), (meta(), false));
        assert_eq!(read.state.digest(), state.digest());
        assert_eq!(verify(&path).unwrap(), meta());
        assert_eq!(read_blob(&path).unwrap().1, seal(&whole));
        let mut again = Vec::new();
        write_with_blob(&mut again, &meta(), &seal(&whole)).unwrap();
        assert_eq!(again, streamed);
        // Every flipped byte is refused, by the checksum where it covers it.
        for at in 0..streamed.len() {
            let mut f = streamed.clone();
            f[at] ^= 0x20;
            std::fs::write(&path, &f).unwrap();
            assert!(read_streamed(&path).is_err(), "flip at {at} read");
            assert!(verify(&path).is_err(), "flip at {at} verified");
        }
    }
}
