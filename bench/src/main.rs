//! raftmq-bench: a load generator for MQTT brokers (raftmq, mosquitto,
//! rumqttd alike). Every scenario counts what it sent and what arrived, so a
//! throughput figure always comes with its loss. Results are one JSON line
//! each, for `bench/compare` to collect.

mod client;
mod commit;
mod conns;
mod latency;
mod lifecycle;
mod suback;
mod throughput;
mod tls;
mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use raftmq::codec::QoS;

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// The broker to measure.
    #[arg(long, default_value = "127.0.0.1:1883", global = true)]
    addr: SocketAddr,
    /// Where the subscribers of fan-in, fan-out and pairs connect (default:
    /// `--addr`): another node of a cluster, for cross-node figures.
    #[arg(long, global = true)]
    sub_addr: Option<SocketAddr>,
    /// Give up waiting for messages after this many seconds of silence
    /// (what is missing then is counted as lost).
    #[arg(long, default_value_t = 5, global = true)]
    idle_timeout: u64,
    /// Connect with TLS, trusting this CA (PEM); fan-in, fan-out and pairs.
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// The name the broker's certificate is checked against.
    #[arg(long, default_value = "localhost", global = true)]
    tls_name: String,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Args, Clone, Copy)]
struct Flow {
    #[arg(long, default_value_t = 0)]
    qos: u8,
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// QoS 1: unacknowledged publishes a publisher keeps in flight.
    #[arg(long, default_value_t = 100)]
    window: u16,
    /// Subscribers connect with clean session off (persistent sessions:
    /// on raftmq their QoS 1/2 copies are committed through Raft); their
    /// sessions are ended with a clean reconnect after the run.
    #[arg(long)]
    persistent: bool,
}

#[derive(Subcommand)]
enum Scenario {
    /// (a) P publishers -> one subscriber on a wildcard filter.
    FanIn {
        #[arg(long, default_value_t = 4)]
        publishers: usize,
        /// Messages per publisher.
        #[arg(long, default_value_t = 250_000)]
        messages: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// (b) One publisher -> S subscribers on a wildcard filter.
    FanOut {
        #[arg(long, default_value_t = 10)]
        subscribers: usize,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// (c) N publishers, each with one subscriber on its own topic.
    Pairs {
        #[arg(long, default_value_t = 1000)]
        pairs: usize,
        /// Messages per publisher.
        #[arg(long, default_value_t = 500)]
        messages: u64,
        #[command(flatten)]
        flow: Flow,
    },
    /// (d) Latency percentiles at a fixed publish rate (1 -> 1).
    Latency {
        /// Messages per second.
        #[arg(long, default_value_t = 20_000)]
        rate: u64,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 0)]
        qos: u8,
        #[arg(long, default_value_t = 64)]
        payload: usize,
        /// Messages per write: 1 spreads them evenly; 20 at 20,000/s sends
        /// 20 in one write every millisecond (a client's timer tick).
        #[arg(long, default_value_t = 1)]
        burst: u64,
    },
    /// (e) N idle connections: the broker's RSS per connection.
    Idle {
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// The broker's process id (its /proc/PID/status is read).
        #[arg(long)]
        broker_pid: u32,
        /// Source addresses 127.0.0.10.. to spread the sockets over.
        #[arg(long, default_value_t = 4)]
        sources: usize,
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        #[arg(long, default_value_t = 2)]
        settle: u64,
    },
    /// N persistent sessions with one subscription each, disconnected:
    /// the broker's RSS per idle persistent session.
    IdlePersistent {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// The broker's process id (its /proc/PID/status is read).
        #[arg(long)]
        broker_pid: u32,
        /// Source addresses 127.0.0.10.. to spread the sockets over.
        #[arg(long, default_value_t = 4)]
        sources: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 2)]
        settle: u64,
    },
    /// (f) Connect storm: CONNECT/CONNACK per second.
    Storm {
        /// Handshakes in flight (one loop each).
        #[arg(long, alias = "in-flight", default_value_t = 100)]
        workers: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        sources: usize,
        /// Clean session off, one fixed client id per loop: every connect
        /// resumes a persistent session (in raftmq, a Raft commit).
        #[arg(long)]
        persistent: bool,
    },
    /// Persistent sessions' lifecycle: CONNECT (clean session off, a new
    /// client id each time), SUBSCRIBE, DISCONNECT per second.
    Lifecycle {
        /// Clients at once (1: one client after another).
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        sources: usize,
    },
    /// Reconnect storm: N persistent sessions (one subscription each) lose
    /// their connections at once and all come back.
    Reconnect {
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 100)]
        workers: usize,
        #[arg(long, default_value_t = 8)]
        sources: usize,
    },
    /// (g) SUBACK latency: one clean-session client subscribes to new
    /// filters one after another.
    Suback {
        #[arg(long, default_value_t = 2000)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        qos: u8,
    },
    /// W writers, each publishing QoS 1 retained messages one at a time:
    /// replicated commits per second and their latency.
    Commit {
        #[arg(long, default_value_t = 16)]
        writers: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 64)]
        payload: usize,
    },
}

/// What a throughput run measured; printed as one JSON line.
#[derive(Debug)]
pub struct Outcome {
    pub scenario: String,
    pub sent: u64,
    pub received: u64,
    pub expected: u64,
    pub seconds: f64,
}

impl Outcome {
    fn print(&self) {
        let rate = self.received as f64 / self.seconds.max(1e-9);
        println!(
            "{{\"scenario\":\"{}\",\"sent\":{},\"expected\":{},\"received\":{},\"lost\":{},\"seconds\":{:.3},\"msgs_per_sec\":{:.0}}}",
            self.scenario,
            self.sent,
            self.expected,
            self.received,
            self.expected.saturating_sub(self.received),
            self.seconds,
            rate
        );
    }
}

fn qos(q: u8) -> anyhow::Result<QoS> {
    QoS::from_u8(q)
        .filter(|q| *q != QoS::ExactlyOnce)
        .context("--qos must be 0 or 1")
}

impl Flow {
    fn common(self, idle_timeout: u64) -> anyhow::Result<throughput::Common> {
        Ok(throughput::Common {
            qos: qos(self.qos)?,
            payload: self.payload,
            window: self.window.max(1),
            persistent: self.persistent,
            idle_timeout: Duration::from_secs(idle_timeout),
        })
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(ca) = &cli.tls_ca {
        tls::init(ca, &cli.tls_name)?;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let addr = cli.addr;
    let addrs = throughput::Addrs {
        publishers: addr,
        subscribers: cli.sub_addr.unwrap_or(addr),
    };
    let idle = cli.idle_timeout;
    rt.block_on(async {
        let plan = match cli.scenario {
            Scenario::FanIn {
                publishers,
                messages,
                flow,
            } => throughput::fan_in(publishers, messages, flow.common(idle)?),
            Scenario::FanOut {
                subscribers,
                messages,
                flow,
            } => throughput::fan_out(subscribers, messages, flow.common(idle)?),
            Scenario::Pairs {
                pairs,
                messages,
                flow,
            } => throughput::pairs(pairs, messages, flow.common(idle)?),
            Scenario::Latency {
                rate,
                seconds,
                qos: q,
                payload,
                burst,
            } => {
                return latency::run(
                    addr,
                    latency::Settings {
                        rate,
                        seconds,
                        payload,
                        qos: qos(q)?,
                        idle_timeout: Duration::from_secs(idle),
                        burst,
                    },
                )
                .await
            }
            Scenario::Idle {
                connections,
                broker_pid,
                sources,
                concurrency,
                settle,
            } => {
                return conns::idle(
                    addr,
                    conns::IdleSettings {
                        connections,
                        sources,
                        broker_pid,
                        concurrency,
                        settle,
                    },
                )
                .await
            }
            Scenario::IdlePersistent {
                sessions,
                broker_pid,
                sources,
                concurrency,
                settle,
            } => {
                return conns::idle_persistent(
                    addr,
                    conns::IdleSettings {
                        connections: sessions,
                        sources,
                        broker_pid,
                        concurrency,
                        settle,
                    },
                )
                .await
            }
            Scenario::Storm {
                workers,
                seconds,
                sources,
                persistent,
            } => {
                return conns::storm(
                    addr,
                    conns::StormSettings {
                        workers,
                        seconds,
                        sources,
                        persistent,
                    },
                )
                .await
            }
            Scenario::Lifecycle {
                workers,
                seconds,
                sources,
            } => {
                let s = lifecycle::LifecycleSettings {
                    workers,
                    seconds,
                    sources,
                };
                return lifecycle::lifecycle(addr, s).await;
            }
            Scenario::Reconnect {
                sessions,
                workers,
                sources,
            } => {
                let s = lifecycle::ReconnectSettings {
                    sessions,
                    workers,
                    sources,
                };
                return lifecycle::reconnect(addr, s).await;
            }
            Scenario::Suback { count, qos: q } => return suback::run(addr, count, qos(q)?).await,
            Scenario::Commit {
                writers,
                seconds,
                payload,
            } => return commit::run(addr, writers, seconds, payload).await,
        };
        throughput::run(addrs, plan).await?.print();
        anyhow::Ok(())
    })
}
