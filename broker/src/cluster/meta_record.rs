//! A self-checking record for a metadata file that is overwritten in
//! place (the committed index, rewritten on every commit): a power loss may
//! tear such a write, so a reader must tell a whole record from a torn one.
//!
//! `[magic "RMQm"][len u32 LE][crc32 u32 LE][payload][zeros to 64 bytes]`:
//! the CRC covers `len` and the payload. Records are padded to one size so
//! that overwriting one never changes the file's length. A file that does
//! not start with the magic was written before records (a plain payload,
//! replaced by rename): those, prost `LogId`s, never start with it (their
//! first byte is the key of field 1, 2 or 3; `R` would be field 10's).

const MAGIC: [u8; 4] = *b"RMQm";
const HEADER: usize = 12;
/// Every record short enough is padded to this length.
pub const RECORD_BYTES: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    #[error("record cut short ({0} bytes)")]
    Short(usize),
    #[error("record's checksum does not match (torn or damaged)")]
    Checksum,
}

fn checksum(len: [u8; 4], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(payload);
    h.finalize()
}

/// The record holding `payload`.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(RECORD_BYTES.max(HEADER + payload.len()));
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&checksum(len, payload).to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(RECORD_BYTES.max(out.len()), 0);
    out
}

/// The payload of the record in `raw`, or `None` when `raw` is not a
/// record (a file from before records: its bytes are the payload, for the
/// caller to judge). A record that does not check out is an error, never
/// a payload.
pub fn decode(raw: &[u8]) -> Result<Option<&[u8]>, BadRecord> {
    if raw.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return Ok(None);
    }
    let short = || BadRecord::Short(raw.len());
    let header = raw.get(..HEADER).ok_or_else(short)?;
    let len: [u8; 4] = header[4..8].try_into().map_err(|_| short())?;
    let sum: [u8; 4] = header[8..12].try_into().map_err(|_| short())?;
    let end = HEADER
        .checked_add(u32::from_le_bytes(len) as usize)
        .ok_or_else(short)?;
    let payload = raw.get(HEADER..end).ok_or_else(short)?;
    if checksum(len, payload) != u32::from_le_bytes(sum) {
        return Err(BadRecord::Checksum);
    }
    Ok(Some(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_reads_back_and_every_damaged_byte_is_refused() {
        for payload in [&b""[..], b"\x08\x02\x10\x01\x18\x09", &[7u8; 100]] {
            let rec = encode(payload);
            assert_eq!(rec.len(), RECORD_BYTES.max(HEADER + payload.len()));
            assert_eq!(decode(&rec), Ok(Some(payload)));
            // Bytes past the payload (padding, an older longer record's
            // tail) are not part of it.
            let mut longer = rec.clone();
            longer.extend_from_slice(b"tail");
            assert_eq!(decode(&longer), Ok(Some(payload)));
            for at in MAGIC.len()..HEADER + payload.len() {
                for mask in [0x01, 0x80, 0xff] {
                    let mut bad = rec.clone();
                    bad[at] ^= mask;
                    assert!(decode(&bad).is_err(), "byte {at} ^ {mask:#x}");
                }
            }
            for cut in MAGIC.len()..HEADER + payload.len() {
                assert!(decode(&rec[..cut]).is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn anything_without_the_magic_is_not_a_record() {
        for raw in [&b""[..], b"\x08\x02\x18\x09", &[0u8; 64], b"RMQ"] {
            assert_eq!(decode(raw), Ok(None), "{raw:?}");
        }
    }
}
