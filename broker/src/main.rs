//! The `raftmq` command line.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use raftmq::config::{Config, LogFormat};
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
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, log_json } => {
            let mut config = Config::load(config.as_deref(), std::env::vars())?;
            if log_json {
                config.log.format = LogFormat::Json;
            }
            init_logging(&config);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(serve(config))
        }
    }
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Human => builder.init(),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::start(config).await?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        node_id = server.broker.node_id,
        "raftmq running"
    );
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop();
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
