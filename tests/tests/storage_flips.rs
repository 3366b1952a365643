//! Real damage to a node's own files: one flipped byte at a time in a real
//! Raft log (every record of its segments, several places in each) and in
//! every region of a real snapshot, each run starting the real broker
//! binary on the damaged copy. Each run must either refuse to start and
//! name what is damaged (file, byte offset, log index), or start with every
//! acknowledged message present. Never a start with acknowledged data
//! missing. Runs go three at a time; the counts are printed
//! (`--no-capture`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raftmq_e2e::storage::{self, copy_dir, flip, records, segments, snapshot_regions};
use raftmq_e2e::{Broker, BrokerConfig};

/// Retained messages written (each one Raft entry).
const MESSAGES: u32 = 60;
const WORKERS: usize = 3;

/// What one run does to the data dir, and what it must lead to.
#[derive(Debug, Clone)]
struct Damage {
    file: PathBuf,
    at: usize,
    mask: u8,
    /// What the refusal must name (all of them), if refusing is right.
    names: Vec<String>,
    /// Whether the node may start (a torn write the node never finished).
    may_start: bool,
    /// Extra bytes appended to `file` before the flip (a torn write).
    append: Vec<u8>,
}

#[derive(Debug, Default)]
struct Tally {
    tried: usize,
    refused: usize,
    started_whole: usize,
    failures: Vec<String>,
}

fn config(extra_env: &[(&str, &str)]) -> BrokerConfig {
    let mut c = BrokerConfig::new().env("RAFTMQ_CLUSTER__LOG_SEGMENT_BYTES", "2048");
    for (k, v) in extra_env {
        c = c.env(k, v);
    }
    c
}

/// Writes the messages on a real node, then kills it: the data dir left
/// behind is the template every run copies.
fn template(extra_env: &[(&str, &str)]) -> (Broker, BTreeMap<String, Vec<u8>>) {
    let mut b = Broker::start(config(extra_env));
    let acked = storage::publish_retained(b.tcp_addr(), "writer", MESSAGES);
    assert_eq!(acked.len(), MESSAGES as usize, "every write acknowledged");
    // Whatever the writer's goodbye appended is committed too by now: every
    // record is one the node knows as committed.
    std::thread::sleep(Duration::from_millis(500));
    b.kill9();
    (b, acked)
}

/// Runs every damage on its own copy of `template`, `WORKERS` at a time.
fn run_all(
    template: &Path,
    damages: Vec<Damage>,
    acked: &BTreeMap<String, Vec<u8>>,
    extra_env: &[(&str, &str)],
) -> Tally {
    let queue = Mutex::new(damages);
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut b = Broker::start(config(extra_env));
                loop {
                    let Some(d) = queue.lock().unwrap().pop() else {
                        break;
                    };
                    let outcome = run_one(&mut b, template, &d, acked);
                    let mut t = tally.lock().unwrap();
                    t.tried += 1;
                    match outcome {
                        Ok(true) => t.started_whole += 1,
                        Ok(false) => t.refused += 1,
                        Err(e) => t.failures.push(e),
                    }
                }
            });
        }
    });
    tally.into_inner().unwrap()
}

/// Ok(true): started with everything; Ok(false): refused, naming what it
/// must; Err: anything else.
fn run_one(
    b: &mut Broker,
    template: &Path,
    d: &Damage,
    acked: &BTreeMap<String, Vec<u8>>,
) -> Result<bool, String> {
    b.kill9();
    let data = b.path("data");
    copy_dir(template, &data);
    let file = data.join(&d.file);
    if !d.append.is_empty() {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.extend_from_slice(&d.append);
        std::fs::write(&file, bytes).unwrap();
    }
    flip(&file, d.at, d.mask);
    let logged = b.logs().len();
    let what = format!("{} byte {} ^{:#04x}", d.file.display(), d.at, d.mask);
    match b.try_restart_with(&[]) {
        Err(_) => {
            let log = b.logs()[logged..].to_string();
            if d.names.is_empty() {
                return Err(format!(
                    "{what}: refused, but a torn write must start:\n{log}"
                ));
            }
            match d.names.iter().find(|n| !log.contains(n.as_str())) {
                None => Ok(false),
                Some(n) => Err(format!("{what}: refused without naming {n:?}:\n{log}")),
            }
        }
        Ok(()) => {
            if !d.may_start {
                // Allowed only with every acknowledged message there; it
                // is still counted as a wrong outcome for damage the node
                // must see.
                return Err(format!("{what}: started on damaged data it must refuse"));
            }
            let got = storage::retained(b.tcp_addr(), acked.len(), Duration::from_secs(5));
            if &got != acked {
                let missing: Vec<&String> =
                    acked.keys().filter(|k| !got.contains_key(*k)).collect();
                return Err(format!(
                    "{what}: started with acknowledged data missing or wrong: {} of {} served, \
                     missing {missing:?}",
                    got.len(),
                    acked.len()
                ));
            }
            Ok(true)
        }
    }
}

/// Log damage: every record of every segment, flipped at three places (its
/// length, its checksum or index, its payload), each refused with the file,
/// the record's offset and its index; and torn writes after the last
/// record, which the node cuts and starts without.
fn log_damages(data: &Path) -> Vec<Damage> {
    let mut out = Vec::new();
    let segs = segments(data);
    assert!(segs.len() >= 2, "the log spans several segments: {segs:?}");
    for seg in &segs {
        let bytes = std::fs::read(seg).unwrap();
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        let rel = Path::new("raft/log").join(&name);
        for r in records(&bytes) {
            for (n, at) in [
                r.offset + 1,
                r.offset + 4 + (r.index as usize % 12),
                r.offset + r.len - 1,
            ]
            .into_iter()
            .enumerate()
            {
                out.push(Damage {
                    file: rel.clone(),
                    at,
                    mask: [0x01, 0x80, 0x24][n],
                    names: vec![
                        name.clone(),
                        format!("byte {}", r.offset),
                        format!("log index {}", r.index),
                    ],
                    may_start: false,
                    append: Vec::new(),
                });
            }
        }
    }
    // Torn writes: a record the node never finished, after the last one.
    let last = segs.last().unwrap();
    let bytes = std::fs::read(last).unwrap();
    let tail = *records(&bytes).last().unwrap();
    let mut next = bytes[tail.offset..tail.offset + tail.len].to_vec();
    next[8..16].copy_from_slice(&(tail.index + 1).to_le_bytes());
    let rel = Path::new("raft/log").join(last.file_name().unwrap());
    for cut in [
        1usize,
        5,
        9,
        15,
        16,
        17,
        next.len() / 2,
        next.len() - 1,
        next.len(),
    ] {
        // Flipping a byte of the torn part itself (so every case has one).
        let at = bytes.len() + cut - 1;
        out.push(Damage {
            file: rel.clone(),
            at,
            mask: 0x10,
            names: Vec::new(),
            may_start: true,
            append: next[..cut].to_vec(),
        });
    }
    out
}

#[test]
fn every_flipped_log_record_is_refused_by_name_and_torn_writes_are_cut() {
    let started = Instant::now();
    let (b, acked) = template(&[]);
    let template = b.path("data");
    let damages = log_damages(&template);
    let torn = damages.iter().filter(|d| d.may_start).count();
    let t = run_all(&template, damages, &acked, &[]);
    println!(
        "log flips: {} runs in {:.0?}: {} refused naming the record, {} torn writes cut and \
         started with all {} acknowledged messages",
        t.tried,
        started.elapsed(),
        t.refused,
        t.started_whole,
        acked.len()
    );
    assert!(
        t.failures.is_empty(),
        "{} wrong outcomes:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    assert_eq!(t.started_whole, torn);
    assert_eq!(t.refused + t.started_whole, t.tried);
}

/// Snapshot damage: the node snapshots every 20 entries and keeps 5, so
/// most of what was acknowledged lives only in `snapshot.bin`. Every byte
/// of its header, metadata and checksums and 40 bytes spread over its
/// state are flipped in turn: each start is refused naming the file.
#[test]
fn every_region_of_a_flipped_snapshot_is_refused_by_name() {
    let env = [
        ("RAFTMQ_CLUSTER__SNAPSHOT_LOGS", "20"),
        ("RAFTMQ_CLUSTER__KEEP_LOGS", "5"),
    ];
    let started = Instant::now();
    let (b, acked) = template(&env);
    let template = b.path("data");
    let snap = template.join("raft/snapshot/snapshot.bin");
    let bytes = std::fs::read(&snap).expect("a snapshot was written");
    let mut damages = Vec::new();
    let mut per_region = Vec::new();
    for (region, range) in snapshot_regions(&bytes) {
        let len = range.len();
        let picks: Vec<usize> = if region == "state" {
            (0..40).map(|k| range.start + k * len / 40).collect()
        } else {
            range.collect()
        };
        per_region.push(format!("{region} {}", picks.len()));
        for at in picks {
            damages.push(Damage {
                file: PathBuf::from("raft/snapshot/snapshot.bin"),
                at,
                mask: 0x04,
                names: vec!["snapshot.bin".into(), "does not start".into()],
                may_start: false,
                append: Vec::new(),
            });
        }
    }
    let t = run_all(&template, damages, &acked, &env);
    println!(
        "snapshot flips ({}): {} runs in {:.0?}: {} refused naming snapshot.bin, {} started",
        per_region.join(", "),
        t.tried,
        started.elapsed(),
        t.refused,
        t.started_whole
    );
    assert!(
        t.failures.is_empty(),
        "{} wrong outcomes:\n{}",
        t.failures.len(),
        t.failures.join("\n")
    );
    assert_eq!(t.refused, t.tried);
}
