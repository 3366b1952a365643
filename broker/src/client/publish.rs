//! `raftmq pub`: publishes one message (or each line of stdin, or the same
//! message --repeat times), waits for each to be acknowledged at its QoS,
//! and disconnects cleanly, as mosquitto_pub does.

use std::io::{BufRead, Read};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::args::PubArgs;
use super::session::{Note, Session};

pub async fn run(args: PubArgs) -> anyhow::Result<()> {
    // Read before connecting: a slow file or pipe does not hold a
    // connection open (-l is the exception: it is for lines as they come).
    let payload = match args.stdin_line {
        true => None,
        false => Some(payload(&args)?),
    };
    let mut session = Session::connect(&args.connect, "pub").await?;
    if let Some(payload) = payload {
        for i in 0..args.repeat {
            if i > 0 && args.repeat_delay > 0.0 {
                tokio::time::sleep(Duration::from_secs_f64(args.repeat_delay)).await;
            }
            send(&mut session, &args, payload.clone()).await?;
        }
    } else {
        let mut lines = stdin_lines();
        loop {
            // The connection is served (keep-alive pings) while stdin is
            // quiet; both futures are cancel-safe.
            let line = tokio::select! {
                line = lines.recv() => line.transpose().context("cannot read stdin")?,
                note = session.next() => {
                    note?;
                    continue;
                }
            };
            match line {
                Some(line) => send(&mut session, &args, Bytes::from(line.into_bytes())).await?,
                None => break,
            }
        }
    }
    session.close().await
}

/// stdin's lines, read on a thread of their own (a blocking read).
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn payload(args: &PubArgs) -> anyhow::Result<Bytes> {
    if let Some(m) = &args.message {
        return Ok(Bytes::from(m.clone().into_bytes()));
    }
    if let Some(f) = &args.file {
        let data = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        return Ok(Bytes::from(data));
    }
    if args.stdin_file {
        let mut data = Vec::new();
        std::io::stdin()
            .read_to_end(&mut data)
            .context("cannot read stdin")?;
        return Ok(Bytes::from(data));
    }
    // -n
    Ok(Bytes::new())
}

/// Publishes and waits for the broker to have it: written for QoS 0,
/// PUBACK for 1, PUBCOMP for 2. One message in flight at a time keeps
/// the order and says which message failed.
async fn send(session: &mut Session, args: &PubArgs, payload: Bytes) -> anyhow::Result<()> {
    session
        .publish(&args.topic, args.qos, args.retain, payload)
        .await?;
    loop {
        match session.next().await? {
            Note::Sent if args.qos == 0 => return Ok(()),
            Note::Acked if args.qos > 0 => return Ok(()),
            _ => {}
        }
    }
}
