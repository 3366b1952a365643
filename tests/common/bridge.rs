//! For the bridge tests: Debian's mosquitto as the remote broker (plain,
//! TLS or TLS-PSK listener, optionally persistent so that a subscriber's
//! queue survives a restart), stopped and started again on the same port,
//! and the `[[bridges]]` TOML that points raftmq at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftmq::codec::{Packet, Protocol, Publish, QoS};

use crate::raw::{self, RawClient, Read1};
use crate::{free_port, require_tool};

/// What the mosquitto listener speaks.
pub enum Listener {
    Plain,
    /// TLS with a server certificate for localhost / 127.0.0.1.
    Tls {
        cert: PathBuf,
        key: PathBuf,
    },
    /// TLS-PSK: `identity:hexkey`.
    Psk {
        identity: String,
        key: String,
    },
}

/// A mosquitto process. Killed when dropped.
pub struct Mosquitto {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts mosquitto; `persistent` keeps sessions across a stop/start.
    pub fn start(listener: Listener, persistent: bool) -> Mosquitto {
        Self::start_with(listener, persistent, |_| String::new())
    }

    /// As [`Mosquitto::start`], with the lines `extra` gives for its
    /// directory added to the config (a `password_file`, say).
    pub fn start_with(
        listener: Listener,
        persistent: bool,
        extra: impl FnOnce(&std::path::Path) -> String,
    ) -> Mosquitto {
        require_tool("mosquitto");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display().to_string();
        let mut conf = format!(
            "per_listener_settings false\nallow_anonymous true\nmax_queued_messages 0\n\
             max_inflight_messages 100\nlog_dest file {d}/mosquitto.log\nlog_type all\n\
             listener {port} 127.0.0.1\n"
        );
        match listener {
            Listener::Plain => {}
            Listener::Tls { cert, key } => {
                conf.push_str(&format!(
                    "certfile {}\nkeyfile {}\n",
                    cert.display(),
                    key.display()
                ));
            }
            Listener::Psk { identity, key } => {
                std::fs::write(dir.path().join("psk"), format!("{identity}:{key}\n"))
                    .expect("write psk file");
                conf.push_str(&format!("psk_hint raftmq-tests\npsk_file {d}/psk\n"));
            }
        }
        if persistent {
            conf.push_str(&format!(
                "persistence true\npersistence_location {d}/\nautosave_interval 0\n"
            ));
        }
        conf.push_str(&extra(dir.path()));
        let path = dir.path().join("mosquitto.conf");
        std::fs::write(&path, conf).expect("write mosquitto.conf");
        let mut m = Mosquitto {
            child: None,
            dir,
            port,
            conf: path,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// SIGTERM (mosquitto saves its persistent sessions) and wait.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
    }

    /// SIGHUP: mosquitto reads its password file again (connected
    /// clients stay).
    pub fn reload(&self) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGHUP);
            }
        }
    }

    /// Starts again on the same port and files.
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- mosquitto log (tail) ----");
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A `[[bridges]]` table to `addr` with `rules` (mosquitto syntax) and
/// `extra` keys; reconnects after 1 s.
pub fn bridge_toml(
    name: &str,
    addr: SocketAddr,
    protocol: &str,
    rules: &[&str],
    extra: &str,
) -> String {
    let topics: Vec<String> = rules.iter().map(|r| format!("{r:?}")).collect();
    format!(
        "[[bridges]]\nname = \"{name}\"\naddresses = [\"{addr}\"]\nprotocol = \"{protocol}\"\n\
         restart_timeout = 1\nkeepalive_interval = 10\ntopic = [{}]\n{extra}\n",
        topics.join(", ")
    )
}

/// A subscribed client (acks what it gets through [`Sub::take`]).
pub struct Sub(pub RawClient);

impl Sub {
    pub fn new(
        addr: SocketAddr,
        protocol: Protocol,
        client_id: &str,
        clean: bool,
        filter: &str,
        qos: QoS,
    ) -> Sub {
        let (mut c, ack) = RawClient::open(addr, raw::connect(protocol, client_id, clean));
        assert_eq!(ack.code, 0, "CONNACK");
        let codes = c.subscribe(1, filter, qos);
        assert!(codes.iter().all(|c| *c < 0x80), "SUBACK {codes:?}");
        Sub(c)
    }

    /// Resumes a persistent session (subscribed before): no SUBSCRIBE,
    /// whose wait for SUBACK would pass over the queued messages that
    /// come first.
    pub fn resume(addr: SocketAddr, protocol: Protocol, client_id: &str) -> Sub {
        let (c, ack) = RawClient::open(addr, raw::connect(protocol, client_id, false));
        assert_eq!(ack.code, 0, "CONNACK");
        assert!(ack.session_present, "the session was kept");
        Sub(c)
    }

    /// Up to `n` PUBLISHes within `timeout` (acknowledged as they come).
    pub fn take(&mut self, n: usize, timeout: Duration) -> Vec<Publish> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.0.recv(left.min(Duration::from_secs(1))) {
                Read1::Packet(Packet::Publish(p)) => {
                    self.0.ack(&p);
                    got.push(p);
                }
                Read1::Packet(_) | Read1::Timeout => {}
                Read1::Closed => break,
            }
        }
        got
    }

    /// Asserts nothing more arrives within `wait`.
    pub fn quiet(&mut self, wait: Duration) {
        let extra = self.take(1, wait);
        assert!(
            extra.is_empty(),
            "unexpected PUBLISH {:?}",
            extra.first().map(|p| &p.topic)
        );
    }
}

/// Publishes one message (QoS 1/2 acknowledged) with a client of its own.
pub fn publish_one(
    addr: SocketAddr,
    protocol: Protocol,
    topic: &str,
    payload: &[u8],
    qos: QoS,
    retain: bool,
) {
    let id = format!("pub-{}", rand_suffix());
    let (mut c, ack) = RawClient::open(addr, raw::connect(protocol, &id, true));
    assert_eq!(ack.code, 0);
    c.publish(topic, payload, qos, retain, 7);
    match qos {
        QoS::AtMostOnce => {}
        QoS::AtLeastOnce => {
            let got = c.recv_until(Duration::from_secs(10), |p| {
                matches!(p, Packet::PubAck(_)).then_some(())
            });
            assert!(got.is_some(), "no PUBACK");
        }
        QoS::ExactlyOnce => {
            let got = c.recv_until(Duration::from_secs(10), |p| {
                matches!(p, Packet::PubRec(_)).then_some(())
            });
            assert!(got.is_some(), "no PUBREC");
            c.send(&Packet::PubRel(raftmq::codec::PubResp::new(7, 0)));
            let got = c.recv_until(Duration::from_secs(10), |p| {
                matches!(p, Packet::PubComp(_)).then_some(())
            });
            assert!(got.is_some(), "no PUBCOMP");
        }
    }
    c.disconnect();
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::process::id() as u64 * 1_000_000 + N.fetch_add(1, Ordering::Relaxed)
}

/// Waits until the bridge reports itself connected on `/api/v1`-less
/// `/metrics` (`raftmq_bridge_connected{bridge=name} 1`).
pub fn wait_connected(b: &crate::Broker, name: &str, timeout: Duration) -> bool {
    crate::eventually(timeout, || {
        let (_, text) = b.http_get("/metrics");
        text.lines()
            .any(|l| l == format!("raftmq_bridge_connected{{bridge=\"{name}\"}} 1"))
    })
}

/// A metric of one bridge (`raftmq_bridge_<what>{bridge=name,...}`).
pub fn bridge_metric(b: &crate::Broker, line_prefix: &str) -> Option<f64> {
    let (_, text) = b.http_get("/metrics");
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A TCP relay to a remote broker that a test can cut (every connection
/// closed, new ones refused) and restore on the same port: the remote
/// goes away for the bridge while its own clients stay connected.
pub struct Relay {
    pub port: u16,
    target: SocketAddr,
    state: std::sync::Arc<RelayState>,
}

#[derive(Default)]
struct RelayState {
    up: std::sync::atomic::AtomicBool,
    generation: std::sync::atomic::AtomicU64,
}

impl Relay {
    pub fn start(target: SocketAddr) -> Relay {
        let port = free_port();
        let relay = Relay {
            port,
            target,
            state: std::sync::Arc::new(RelayState::default()),
        };
        relay.restore();
        relay
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Closes every relayed connection and stops listening.
    pub fn cut(&self) {
        use std::sync::atomic::Ordering;
        self.state.up.store(false, Ordering::SeqCst);
        self.state.generation.fetch_add(1, Ordering::SeqCst);
        // Wake the accept loop so that it lets the port go.
        let _ = std::net::TcpStream::connect(self.addr());
        std::thread::sleep(Duration::from_millis(300));
    }

    /// Listens again on the same port.
    pub fn restore(&self) {
        use std::sync::atomic::Ordering;
        let listener = loop {
            match std::net::TcpListener::bind(self.addr()) {
                Ok(l) => break l,
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        self.state.up.store(true, Ordering::SeqCst);
        let state = self.state.clone();
        let target = self.target;
        let generation = state.generation.load(Ordering::SeqCst);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if state.generation.load(Ordering::SeqCst) != generation {
                    return;
                }
                let Ok(client) = conn else { continue };
                let Ok(server) = std::net::TcpStream::connect(target) else {
                    continue;
                };
                for (from, to) in [
                    (client.try_clone(), server.try_clone()),
                    (server.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        continue;
                    };
                    let state = state.clone();
                    std::thread::spawn(move || {
                        use std::io::{Read, Write};
                        from.set_read_timeout(Some(Duration::from_millis(100))).ok();
                        let mut buf = [0u8; 16384];
                        loop {
                            if state.generation.load(Ordering::SeqCst) != generation {
                                break;
                            }
                            match from.read(&mut buf) {
                                Ok(0) => break,
                                Ok(n) => {
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                Err(e)
                                    if matches!(
                                        e.kind(),
                                        std::io::ErrorKind::WouldBlock
                                            | std::io::ErrorKind::TimedOut
                                    ) => {}
                                Err(_) => break,
                            }
                        }
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
    }
}

/// Collects the 4-byte big-endian ids published on `filter` at `addr`,
/// as a well-behaved QoS 0/1/2 subscriber does: a QoS 2 PUBLISH whose
/// packet id it holds (PUBREC sent, PUBREL not yet come) is the same
/// message again and not counted; every other one is. So what the channel
/// receives twice, the broker delivered twice.
pub fn collect_ids(
    addr: SocketAddr,
    client_id: &str,
    filter: &str,
    qos: QoS,
) -> std::sync::mpsc::Receiver<u32> {
    use raftmq::codec::PubResp;
    let (tx, rx) = std::sync::mpsc::channel();
    let mut sub = Sub::new(addr, Protocol::V311, client_id, true, filter, qos);
    std::thread::spawn(move || {
        let mut held = std::collections::HashSet::new();
        loop {
            let p = match sub.0.recv(Duration::from_millis(500)) {
                Read1::Packet(p) => p,
                Read1::Timeout => continue,
                Read1::Closed => return,
            };
            let id = match p {
                Packet::Publish(p) => {
                    let fresh = match p.qos {
                        QoS::AtMostOnce => true,
                        QoS::AtLeastOnce => {
                            sub.0.send(&Packet::PubAck(PubResp::new(p.packet_id, 0)));
                            true
                        }
                        QoS::ExactlyOnce => {
                            sub.0.send(&Packet::PubRec(PubResp::new(p.packet_id, 0)));
                            held.insert(p.packet_id)
                        }
                    };
                    match <[u8; 4]>::try_from(&p.payload[..]) {
                        Ok(b) if fresh => u32::from_be_bytes(b),
                        _ => continue,
                    }
                }
                Packet::PubRel(r) => {
                    held.remove(&r.packet_id);
                    sub.0.send(&Packet::PubComp(PubResp::new(r.packet_id, 0)));
                    continue;
                }
                _ => continue,
            };
            if tx.send(id).is_err() {
                return;
            }
        }
    });
    rx
}

/// The bridges as `GET /api/v1/bridges` on `b` shows them (admin token
/// `token`): name -> (the node its claim names, runs here, connected).
pub fn bridges_api(
    b: &crate::Broker,
    token: &str,
) -> std::collections::BTreeMap<String, (Option<u64>, bool, bool)> {
    let (code, body) = crate::http_get(
        &b.http_url("/api/v1/bridges"),
        Some(&format!("Bearer {token}")),
    );
    assert_eq!(code, 200, "GET /api/v1/bridges: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    v["bridges"]
        .as_array()
        .expect("bridges")
        .iter()
        .map(|b| {
            (
                b["name"].as_str().unwrap_or_default().to_string(),
                (
                    b["runs_on"].as_u64(),
                    b["running_here"].as_bool().unwrap_or(false),
                    b["connected"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}
