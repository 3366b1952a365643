//! What the storage tests need to hurt a node's disk for real: the Raft
//! log's and the snapshot's on-disk formats (as the README documents them,
//! read here independently of the broker's code), byte flips in real
//! files, a real tmpfs, and reading back what a node serves.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use raftmq::codec::{Packet, Protocol, QoS};

use crate::raw::{self, RawClient, Read1};

/// One record of a log segment: `[len u32][crc u32][index u64][payload]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub offset: usize,
    /// Whole record, header included.
    pub len: usize,
    pub index: u64,
}

/// The records of a segment, read by their lengths (the file is whole).
pub fn records(segment: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().unwrap()) as usize;
        let index = u64::from_le_bytes(segment[at + 8..at + 16].try_into().unwrap());
        out.push(Record {
            offset: at,
            len: 8 + len,
            index,
        });
        at += 8 + len;
    }
    assert_eq!(at, segment.len(), "segment ends inside a record");
    out
}

/// The segment files of a node's log, oldest first.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft/log"))
        .expect("raft/log")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// The committed index a node saved beside its log (`committed.meta`: a
/// record `["RMQm"][len u32 LE][crc32 u32 LE][payload][zero padding]`, or
/// from older builds a plain payload; the payload a protobuf `LogId`: term
/// 1, node_id 2, index 3, all varints). The checksum is not checked: the
/// tests read what a live or killed node wrote (the page cache holds it
/// whole).
pub fn saved_committed(data_dir: &Path) -> Option<u64> {
    let file = std::fs::read(data_dir.join("raft/log/committed.meta")).ok()?;
    let bytes = match file.strip_prefix(b"RMQm") {
        Some(rest) => {
            let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
            rest.get(8..8 + len)?.to_vec()
        }
        None => file,
    };
    let mut at = 0;
    let mut varint = || {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *bytes.get(at)?;
            at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    let mut index = None;
    while let Some(key) = varint() {
        let value = varint()?;
        if key == 3 << 3 {
            index = Some(value);
        }
    }
    index
}

/// The index of the last record in a node's log.
pub fn last_index(data_dir: &Path) -> Option<u64> {
    let last = segments(data_dir).pop()?;
    records(&std::fs::read(last).ok()?).last().map(|r| r.index)
}

/// Regions of `snapshot.bin`: header (magic, meta length), meta, the meta's
/// checksum, the state's header, the state, the state's checksum.
pub fn snapshot_regions(file: &[u8]) -> Vec<(&'static str, std::ops::Range<usize>)> {
    let meta_len = u32::from_le_bytes(file[8..12].try_into().unwrap()) as usize;
    let meta_end = 12 + meta_len;
    let blob = meta_end + 32;
    let n = file.len();
    vec![
        ("header", 0..12),
        ("metadata", 12..meta_end),
        ("metadata checksum", meta_end..blob),
        ("state header", blob..blob + 8),
        ("state", blob + 8..n - 32),
        ("state checksum", n - 32..n),
    ]
}

pub fn flip(path: &Path, at: usize, mask: u8) {
    let mut b = std::fs::read(path).expect("read file to flip");
    b[at] ^= mask;
    std::fs::write(path, &b).expect("write flipped file");
}

pub fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).expect("remove old copy");
    }
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(
        status.success(),
        "cp -a {} {}",
        from.display(),
        to.display()
    );
}

/// Publishes `n` retained QoS 1 messages `r/<i>` = `v<i>`, one at a time
/// (each its own Raft entry); returns those acknowledged with success.
pub fn publish_retained(addr: SocketAddr, client_id: &str, n: u32) -> BTreeMap<String, Vec<u8>> {
    let (mut c, ack) = RawClient::open(addr, raw::connect(Protocol::V5, client_id, true));
    assert_eq!(ack.code, 0);
    let mut acked = BTreeMap::new();
    for i in 0..n {
        let topic = format!("r/{i}");
        let payload = format!("v{i}").into_bytes();
        // 0x10 (no matching subscribers) is a success too.
        if c.publish_qos1(&topic, &payload, true, (i % 60000 + 1) as u16) < 0x80 {
            acked.insert(topic, payload);
        }
    }
    c.disconnect();
    acked
}

/// The retained messages under `r/#` a node serves, waiting up to `wait`
/// for `expect` of them.
pub fn retained(addr: SocketAddr, expect: usize, wait: Duration) -> BTreeMap<String, Vec<u8>> {
    let (mut c, ack) = RawClient::open(addr, raw::connect(Protocol::V5, "reader", true));
    assert_eq!(ack.code, 0, "reader CONNACK");
    c.subscribe(1, "r/#", QoS::AtMostOnce);
    let mut got = BTreeMap::new();
    let deadline = std::time::Instant::now() + wait;
    while got.len() < expect && std::time::Instant::now() < deadline {
        match c.recv(Duration::from_millis(200)) {
            Read1::Packet(Packet::Publish(p)) => {
                got.insert(p.topic.to_string(), p.payload.to_vec());
            }
            Read1::Closed => break,
            _ => {}
        }
    }
    got
}

/// A real tmpfs of `size` mounted by the test itself (root may mount on
/// this machine and in CI); unmounted when dropped. A test that cannot
/// mount fails with the reason.
pub struct Tmpfs {
    pub dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    pub fn mount(size: &str) -> Tmpfs {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (or CAP_SYS_ADMIN): mount -t tmpfs -o \
             size={size} tmpfs {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            dir,
            _parent: parent,
        }
    }

    /// Fills the file system to the last byte with `filler`; returns it.
    pub fn fill(&self) -> PathBuf {
        let path = self.dir.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0xA5u8; 4096];
        while f.write_all(&block).is_ok() {}
        // The last partial block, byte by byte.
        while f.write_all(&[0xA5]).is_ok() {}
        let _ = f.sync_all();
        path
    }

    /// Bytes still free (what an unprivileged writer may use).
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.dir)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a broker killed a moment ago may still hold a file open.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// A metric's value in a `/metrics` text, summed over its label sets.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Leaves a persistent QoS 1 subscription to `topic` (3.1.1, clean session
/// off) offline on `addr`: its session now holds every copy acknowledged to
/// a publisher, in Raft.
pub fn park_subscriber(addr: SocketAddr, client_id: &str, topic: &str) {
    let (mut c, ack) = RawClient::open(addr, raw::connect(Protocol::V311, client_id, false));
    assert_eq!(ack.code, 0, "{client_id} CONNACK");
    c.subscribe(1, topic, QoS::AtLeastOnce);
    c.disconnect();
}

/// Resumes a parked subscriber on `addr` and takes the ids (u32, big end
/// first) of everything delivered, acknowledging each, until nothing comes
/// for `quiet`.
pub fn drain_subscriber(
    addr: SocketAddr,
    client_id: &str,
    quiet: Duration,
) -> std::collections::BTreeSet<u32> {
    let (mut c, ack) = RawClient::open(addr, raw::connect(Protocol::V311, client_id, false));
    assert_eq!(ack.code, 0, "{client_id} CONNACK");
    let mut got = std::collections::BTreeSet::new();
    while let Some(p) = c.next_publish(quiet) {
        if let Ok(id) = <[u8; 4]>::try_from(&p.payload[..]) {
            got.insert(u32::from_be_bytes(id));
        }
        c.ack(&p);
    }
    got
}

/// Whether a PUBACK reason code says success (0, or 0x10 "no matching
/// subscribers").
pub fn success(code: Option<u8>) -> bool {
    code.is_some_and(|c| c < 0x80)
}

/// Publishes id `id` at QoS 1 to `topic` on a connection of its own;
/// returns the PUBACK's reason code (None when the connection failed).
pub fn publish_one(addr: SocketAddr, topic: &str, id: u32) -> Option<u8> {
    let mut c = RawClient::connect_tcp(addr, Protocol::V5);
    c.send(&Packet::Connect(Box::new(raw::connect(
        Protocol::V5,
        &format!("pub-{id}"),
        true,
    ))));
    match c.recv(Duration::from_secs(8)) {
        Read1::Packet(Packet::ConnAck(a)) if a.code == 0 => {}
        _ => return None,
    }
    c.publish(topic, &id.to_be_bytes(), QoS::AtLeastOnce, false, 1);
    let code = c.recv_until(Duration::from_secs(8), |p| match p {
        Packet::PubAck(a) => Some(a.code),
        _ => None,
    });
    c.disconnect();
    code
}
