//! `raftmq sub`: subscribes and prints what arrives, byte for byte as
//! mosquitto_sub prints it (`-v`: "topic payload", an empty payload as
//! "topic (null)"), until -C messages, -W seconds, or Ctrl-C.

use std::io::Write;

use tokio::time::{timeout_at, Instant};

use super::args::SubArgs;
use super::session::{Message, Note, Session};

/// mosquitto_sub's exit code when -W runs out (MOSQ_ERR_TIMEOUT).
pub const TIMED_OUT: i32 = 27;

/// How a subscription ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Done,
    TimedOut,
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::TimedOut => TIMED_OUT,
        }
    }
}

pub async fn run(args: SubArgs) -> anyhow::Result<Outcome> {
    let mut session = Session::connect(&args.connect, "sub").await?;
    let deadline = args
        .timeout
        .map(|s| Instant::now() + std::time::Duration::from_secs(s.into()));
    session.subscribe(&args.topics, args.qos).await?;
    let mut printed = 0u64;
    let mut out = std::io::stdout().lock();
    loop {
        let note = match deadline {
            Some(d) => match timeout_at(d, session.next()).await {
                Ok(note) => note?,
                Err(_) => {
                    eprintln!("Timed out");
                    return Ok(Outcome::TimedOut);
                }
            },
            None => session.next().await?,
        };
        match note {
            Note::SubAck(granted) => {
                check_granted(&args.topics, &granted)?;
                if args.exit_after_sub {
                    break;
                }
            }
            Note::Message(m, ack) => {
                if m.retain && args.no_stale {
                    session.ack(ack).await?;
                    continue;
                }
                if let Err(e) = print(&mut out, &m, args.verbose, !args.no_eol) {
                    // `raftmq sub ... | head -1`: the reader is gone.
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        break;
                    }
                    return Err(e.into());
                }
                // Acknowledged only once printed: a message cut off by -C
                // stays with the broker (for a kept session, -c).
                session.ack(ack).await?;
                printed += 1;
                if args.count.is_some_and(|c| printed >= c) {
                    break;
                }
            }
            _ => {}
        }
    }
    session.close().await?;
    Ok(Outcome::Done)
}

/// Warns about each refused filter; fails when all are refused (there is
/// nothing to wait for).
fn check_granted(topics: &[String], granted: &[Option<u8>]) -> anyhow::Result<()> {
    for (topic, g) in topics.iter().zip(granted) {
        if g.is_none() {
            eprintln!("Warning: subscription to {topic} was refused by the broker");
        }
    }
    anyhow::ensure!(
        granted.iter().any(Option::is_some),
        "all subscription requests were refused by the broker"
    );
    Ok(())
}

/// mosquitto_sub's output (client/sub_client_output.c, print_message).
pub fn print(out: &mut impl Write, m: &Message, verbose: bool, eol: bool) -> std::io::Result<()> {
    let nl: &[u8] = if eol { b"\n" } else { b"" };
    if verbose {
        if m.payload.is_empty() {
            // Without an end of line mosquitto prints nothing at all for it.
            if eol {
                out.write_all(&m.topic)?;
                out.write_all(b" (null)\n")?;
            }
        } else {
            out.write_all(&m.topic)?;
            out.write_all(b" ")?;
            out.write_all(&m.payload)?;
            out.write_all(nl)?;
        }
    } else if !m.payload.is_empty() {
        out.write_all(&m.payload)?;
        out.write_all(nl)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn shown(topic: &str, payload: &str, verbose: bool, eol: bool) -> String {
        let m = Message {
            topic: Bytes::from(topic.to_string()),
            payload: Bytes::from(payload.to_string()),
            retain: false,
        };
        let mut out = Vec::new();
        print(&mut out, &m, verbose, eol).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn prints_as_mosquitto_sub() {
        assert_eq!(shown("a/b", "hi there", true, true), "a/b hi there\n");
        assert_eq!(shown("a/b", "", true, true), "a/b (null)\n");
        assert_eq!(shown("a/b", "hi", false, true), "hi\n");
        assert_eq!(shown("a/b", "", false, true), "");
        assert_eq!(shown("a/b", "hi", false, false), "hi");
        assert_eq!(shown("a/b", "", true, false), "");
    }

    #[test]
    fn all_refused_is_an_error() {
        let t = vec!["a".to_string(), "b".to_string()];
        assert!(check_granted(&t, &[None, Some(1)]).is_ok());
        assert!(check_granted(&t, &[None, None]).is_err());
    }
}
