//! The `raftmq` command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmq::cluster::cli::ClusterCommand;
use raftmq::config::{Config, LogFormat};
use raftmq::engine::DrainMode;
use raftmq::passwd;
use raftmq::server::Server;
use tracing_subscriber::EnvFilter;

/// raftmq: a clustered MQTT 3.1 / 3.1.1 / 5.0 broker.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker. Without --config every key has its default: MQTT on
    /// 0.0.0.0:1883, HTTP on 0.0.0.0:9100, data under ./data. RAFTMQ_*
    /// environment variables override keys (RAFTMQ_MQTT__MAX_PACKET_SIZE).
    Serve {
        /// The TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long)]
        log_json: bool,
        /// On a member of a cluster of several nodes whose Raft log is
        /// damaged: cut the log at the bad record and be caught up by the
        /// leader (see the README's Storage section). For one start.
        #[arg(long)]
        repair_log: bool,
    },
    /// Manage a mosquitto-format password file (mosquitto_passwd's
    /// options). Writes $7$ PBKDF2-SHA512 hashes that mosquitto 2 reads too.
    ///
    ///   raftmq passwd -c FILE USER        create FILE with USER (prompts)
    ///   raftmq passwd FILE USER           add or change USER (prompts)
    ///   raftmq passwd -b FILE USER PASS   password on the command line
    ///   raftmq passwd -D FILE USER        delete USER
    ///   raftmq passwd -U FILE             hash every plaintext line
    #[command(verbatim_doc_comment)]
    Passwd {
        /// Create a new file, overwriting an existing one.
        #[arg(short = 'c', conflicts_with_all = ["delete", "upgrade"])]
        create: bool,
        /// Batch mode: take the password from the command line.
        #[arg(short = 'b', conflicts_with_all = ["delete", "upgrade"])]
        batch: bool,
        /// Delete the user.
        #[arg(short = 'D', conflicts_with = "upgrade")]
        delete: bool,
        /// Upgrade a file of plaintext `user:password` lines to hashes.
        #[arg(short = 'U')]
        upgrade: bool,
        file: PathBuf,
        username: Option<String>,
        password: Option<String>,
    },
    /// Inspect and change the Raft cluster through a node's gRPC Admin
    /// service (membership changes go to the leader).
    /// Publish a message (mosquitto_pub's options: -h -p -t -m -q -r -u -P
    /// -i -V, --cafile/--cert/--key, --psk/--psk-identity, -f -s -l -n).
    #[command(disable_help_flag = true)]
    Pub(raftmq::client::PubArgs),
    /// Subscribe and print what arrives (mosquitto_sub's options: -h -p
    /// -t... -q -v -C -W -R -N -E -u -P -i -c -V, TLS and PSK as pub).
    #[command(disable_help_flag = true)]
    Sub(raftmq::client::SubArgs),
    Cluster {
        /// Any node's gRPC address.
        #[arg(long, default_value = "127.0.0.1:7100", global = true)]
        node: String,
        #[command(flatten)]
        tls: raftmq::cluster::cli::TlsArgs,
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve {
            config,
            log_json,
            repair_log,
        } => {
            let mut config = Config::load(config.as_deref(), std::env::vars())?;
            if log_json {
                config.log.format = LogFormat::Json;
            }
            if repair_log {
                config.cluster.repair_log = true;
            }
            init_logging(&config);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
        Command::Passwd {
            create,
            batch,
            delete,
            upgrade,
            file,
            username,
            password,
        } => {
            let edit = passwd_edit(create, batch, delete, upgrade, username, password)?;
            passwd::edit_file(&file, &edit)?;
            Ok(())
        }
        Command::Pub(args) => client_runtime()?.block_on(raftmq::client::publish::run(args)),
        Command::Sub(args) => {
            let outcome = client_runtime()?.block_on(raftmq::client::subscribe::run(args))?;
            std::process::exit(outcome.exit_code())
        }
        Command::Cluster { node, tls, command } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?
            .block_on(raftmq::cluster::cli::run(&node, &tls, command)),
    }
}

fn client_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn passwd_edit(
    create: bool,
    batch: bool,
    delete: bool,
    upgrade: bool,
    username: Option<String>,
    password: Option<String>,
) -> anyhow::Result<passwd::Edit> {
    if upgrade {
        anyhow::ensure!(username.is_none(), "-U takes only the file");
        return Ok(passwd::Edit::Upgrade);
    }
    let user = username.context("a username is needed")?;
    if delete {
        return Ok(passwd::Edit::Delete { user });
    }
    let password = if batch {
        password.context("-b needs the password after the username")?
    } else {
        anyhow::ensure!(
            password.is_none(),
            "a password on the command line needs -b"
        );
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Reenter password: ")?;
        anyhow::ensure!(first == again, "passwords do not match");
        first
    };
    Ok(passwd::Edit::Set {
        user,
        password,
        create,
    })
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

/// The whole stop after SIGTERM/SIGINT fits in this, inside Kubernetes'
/// default terminationGracePeriodSeconds (30 s).
const STOP_BUDGET: Duration = Duration::from_secs(20);
/// Of which the clients get this long to be gone.
const STOP_DRAIN: Duration = Duration::from_secs(10);
/// And a leadership transfer this long per step (catch-up, election).
const STOP_TRANSFER_STEP: Duration = Duration::from_secs(4);

async fn serve(config: Config) -> anyhow::Result<()> {
    let mut signals = StopSignals::new();
    let server = Server::start(config).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = server.broker.node_id,
        "raftmq running"
    );
    let first = signals.next().await;
    tracing::info!(
        signal = first,
        "stopping: handing clients and leadership to other nodes (a second signal stops at once)"
    );
    // A second Ctrl-C (or SIGTERM) means now: nothing more is waited for.
    tokio::spawn(async move {
        let again = signals.next().await;
        tracing::warn!(signal = again, "second signal: stopping at once");
        std::process::exit(1);
    });
    let started = std::time::Instant::now();
    let hand_over = async {
        // Clients first: they reconnect elsewhere while this node can still
        // commit their departures (as leader, or through the leader).
        server.broker.drain(DrainMode::shutdown(), STOP_DRAIN).await;
        server
            .cluster
            .hand_over_leadership(STOP_TRANSFER_STEP)
            .await;
    };
    // The steps bound themselves (10 s + 2 x 4 s); this is the backstop.
    if tokio::time::timeout(STOP_BUDGET, hand_over).await.is_err() {
        tracing::warn!("hand-over not finished in {STOP_BUDGET:?}; stopping anyway");
    }
    server.stop();
    if tokio::time::timeout(Duration::from_secs(3), server.cluster.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft did not shut down in 3 s");
    }
    tracing::info!(ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// SIGTERM (Kubernetes stopping the pod) and SIGINT (Ctrl-C), both a
/// graceful stop. Registered before the broker starts: a signal that came
/// between the listeners binding and a later registration would kill the
/// process with the default action instead.
struct StopSignals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn new() -> StopSignals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            StopSignals {
                term: signal(SignalKind::terminate()).ok(),
                int: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    /// Waits for the next one; returns which.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
            tokio::select! {
                _ = recv(&mut self.term) => "SIGTERM",
                _ = recv(&mut self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
