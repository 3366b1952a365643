//! A snapshot arriving from the leader in chunks: put together here, and
//! checked (`snapshot_file::unseal`) before openraft sees any of it. A bad
//! one is refused with `DATA_LOSS`, which the leader's side of the network
//! (`network.rs`) turns into openraft's "start again from offset 0": the
//! member asks for the snapshot anew instead of installing it, and its Raft
//! core never sees a storage error for it.

use parking_lot::Mutex;
use tonic::Status;

use super::snapshot_file;

/// The largest snapshot a member takes from a leader.
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024 * 1024;

#[derive(Default)]
pub struct SnapshotInbox {
    receiving: Mutex<Option<Receiving>>,
    /// Snapshots refused for a bad checksum.
    pub refused: std::sync::atomic::AtomicU64,
}

struct Receiving {
    id: String,
    buf: Vec<u8>,
}

/// Tells the leader to send the snapshot again from its start.
pub fn resend(why: impl std::fmt::Display) -> Status {
    Status::data_loss(format!("snapshot refused, send it again: {why}"))
}

impl SnapshotInbox {
    /// Takes one chunk; the whole checked blob once `done`.
    pub fn take(
        &self,
        id: &str,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> Result<Option<Vec<u8>>, Status> {
        let mut slot = self.receiving.lock();
        if offset == 0 {
            *slot = Some(Receiving {
                id: id.to_string(),
                buf: Vec::new(),
            });
        }
        let Some(r) = slot.as_mut().filter(|r| r.id == id) else {
            return Err(resend(format!(
                "chunk at {offset} of {id}, which did not start"
            )));
        };
        if offset != r.buf.len() as u64 {
            let got = r.buf.len();
            *slot = None;
            return Err(resend(format!("chunk at {offset}, expected {got}")));
        }
        if r.buf.len() + data.len() > MAX_SNAPSHOT_BYTES {
            *slot = None;
            return Err(Status::resource_exhausted(format!(
                "snapshot larger than {MAX_SNAPSHOT_BYTES} bytes"
            )));
        }
        r.buf.extend_from_slice(data);
        if !done {
            return Ok(None);
        }
        let Some(r) = slot.take() else {
            return Ok(None);
        };
        if let Err(e) = snapshot_file::unseal(&r.buf) {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(
                snapshot = %id,
                bytes = r.buf.len(),
                "snapshot from the leader refused: {e}; asking for it again"
            );
            return Err(resend(e));
        }
        Ok(Some(r.buf))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_make_a_checked_blob() {
        let blob = snapshot_file::seal(&[7u8; 1000]);
        let inbox = SnapshotInbox::default();
        let (a, b) = blob.split_at(300);
        assert_eq!(inbox.take("s1", 0, a, false).unwrap(), None);
        assert_eq!(inbox.take("s1", 300, b, true).unwrap(), Some(blob.clone()));
    }

    #[test]
    fn a_bad_blob_or_a_chunk_out_of_place_asks_again() {
        let mut blob = snapshot_file::seal(&[7u8; 1000]);
        blob[500] ^= 1;
        let inbox = SnapshotInbox::default();
        let e = inbox.take("s1", 0, &blob, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss);
        assert_eq!(inbox.refused.load(std::sync::atomic::Ordering::Relaxed), 1);
        let e = inbox.take("s2", 10, &blob, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss);
        inbox.take("s3", 0, &blob[..10], false).unwrap();
        let e = inbox.take("s3", 20, &blob[10..], true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::DataLoss);
    }
}
