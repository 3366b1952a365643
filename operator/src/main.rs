use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use axum::routing::get;
use clap::{Parser, Subcommand};
use k8s_openapi::api::coordination::v1::Lease;
use kube::{Api, Client};
use raftmq_operator::controller::{self, Context};
use raftmq_operator::leader::{self, Ending, LeaseLock, Timing};
use raftmq_operator::membership::admin::AdminMembership;
use raftmq_operator::schema::{self, Checked};
use raftmq_operator::telemetry::Metrics;
use tokio::sync::watch;
use tracing::{info, warn};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "raftmq-operator",
    version,
    about = "Kubernetes operator for raftmq"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator.
    Run(RunArgs),
    /// Print the MqttCluster CustomResourceDefinition as YAML.
    Crd,
    /// Check Kubernetes manifests (files or `-` for stdin) against the API
    /// types of the Kubernetes version this operator targets, unknown
    /// fields denied.
    Validate {
        #[arg(required = true)]
        files: Vec<String>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Namespaces to watch (repeat or comma-separate); all when empty.
    #[arg(long = "namespace", env = "WATCH_NAMESPACES", value_delimiter = ',')]
    namespaces: Vec<String>,
    /// Where /metrics, /healthz and /readyz listen.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Take a Lease before reconciling, so several replicas are safe.
    #[arg(long, env = "LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    #[arg(long, env = "LEASE_NAME", default_value = "raftmq-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Logs as JSON lines.
    #[arg(long, env = "LOG_JSON")]
    log_json: bool,
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            let yaml = raftmq_operator::crd_yaml().context("serialising the CRD")?;
            let mut out = std::io::stdout().lock();
            match std::io::Write::write_all(&mut out, yaml.as_bytes()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
        Command::Validate { files } => validate(&files),
        Command::Run(args) => {
            init_logging(args.log_json);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(run(args))
        }
    }
}

fn validate(files: &[String]) -> anyhow::Result<()> {
    let mut errors = 0;
    let (mut typed, mut shape) = (0, 0);
    for f in files {
        let text = if f == "-" {
            std::io::read_to_string(std::io::stdin()).context("reading stdin")?
        } else {
            std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
        };
        let docs = schema::parse_yaml_stream(&text).with_context(|| format!("parsing {f}"))?;
        for d in docs {
            match schema::validate(&d) {
                Ok(Checked::Typed) => typed += 1,
                Ok(Checked::Shape) => {
                    shape += 1;
                    println!(
                        "{f}: {} {}: third-party kind, shape checked only",
                        d["apiVersion"].as_str().unwrap_or("?"),
                        d["kind"].as_str().unwrap_or("?")
                    );
                }
                Err(e) => {
                    errors += 1;
                    println!("{f}: {e}");
                }
            }
        }
    }
    println!("{typed} objects valid against the schema, {shape} shape-checked, {errors} invalid");
    if errors > 0 {
        bail!("{errors} invalid objects");
    }
    Ok(())
}

/// Longer than the API server's watch timeout (kube's watcher asks for
/// 290 s), so a quiet watch is not cut, short enough that a connection that
/// stalls is noticed.
const WATCH_READ_TIMEOUT: Duration = Duration::from_secs(295);

/// A client that gives up connecting after `connect` and waiting for a
/// response after `read` (kube's defaults: no read timeout at all).
fn api_client(
    mut config: kube::Config,
    connect: Duration,
    read: Duration,
) -> anyhow::Result<Client> {
    config.connect_timeout = Some(connect);
    config.read_timeout = Some(read);
    config.write_timeout = Some(read);
    // The read timeout counts from the request, not from when a pooled
    // connection last carried anything.
    config.reset_reader_on_write = true;
    Client::try_from(config).context("building the Kubernetes API client")
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `/metrics`, `/healthz` and `/readyz` (ready once the API server was
/// reached), until `stop`.
async fn serve_http(
    addr: SocketAddr,
    m: Metrics,
    ready: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move { m.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = *ready.borrow();
                async move {
                    if ready {
                        (axum::http::StatusCode::OK, "ready")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "not connected yet",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    Ok(tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.changed().await;
            })
            .await;
    }))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = watch::channel(false);

    let http = serve_http(
        args.metrics_addr,
        metrics.clone(),
        ready_rx,
        stop_rx.clone(),
    )
    .await?;

    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutdown requested");
        let _ = stop_tx.send(true);
    });

    let timing = Timing::default();
    let config = kube::Config::infer()
        .await
        .context("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)")?;
    let client = api_client(config.clone(), Duration::from_secs(10), WATCH_READ_TIMEOUT)?;
    // The Lease has a client of its own whose every call gives up well
    // inside the renew deadline (the leader loop also bounds each attempt).
    let lease_client = api_client(config, timing.retry, timing.renew_deadline)?;
    let _ = ready_tx.send(true);
    let identity = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| format!("raftmq-operator-{}", std::process::id()));

    let ctx = Arc::new(Context::new(
        client.clone(),
        metrics.clone(),
        // Raft membership through each broker's Admin service at
        // <pod>.<headless>.<ns>.svc:7100.
        Arc::new(AdminMembership::default()),
    ));
    let namespaces: Vec<Option<String>> = if args.namespaces.is_empty() {
        vec![None]
    } else {
        args.namespaces.iter().cloned().map(Some).collect()
    };
    let start = {
        let (ctx, stop_rx, metrics) = (ctx.clone(), stop_rx.clone(), metrics.clone());
        move || {
            metrics.leader.set(1);
            info!(?namespaces, "starting controllers");
            namespaces
                .into_iter()
                .map(|ns| {
                    let mut stop = stop_rx.clone();
                    tokio::spawn(controller::run(ctx.clone(), ns, async move {
                        let _ = stop.changed().await;
                    }))
                })
                .collect::<Vec<_>>()
        }
    };

    let lock = args.leader_election.then(|| {
        LeaseLock::new(
            Api::<Lease>::namespaced(lease_client.clone(), &args.lease_namespace),
            &args.lease_name,
            &identity,
            timing.lease,
        )
    });
    let controllers = match &lock {
        Some(lock) => {
            info!(identity = lock.identity(), lease = %args.lease_name, "waiting for the leader Lease");
            match leader::run(lock, timing, stop_rx.clone(), start).await {
                (Ending::Lost, _) => std::process::exit(1),
                (Ending::Stopped, controllers) => controllers,
            }
        }
        None => {
            let controllers = start();
            let mut stop = stop_rx.clone();
            let _ = stop.changed().await;
            controllers
        }
    };
    for c in controllers {
        let _ = c.await;
    }
    if let Some(lock) = &lock {
        if let Err(e) = lock.release().await {
            warn!(error = %e, "releasing the leader Lease");
        }
    }
    metrics.leader.set(0);
    let _ = http.await;
    info!("stopped");
    Ok(())
}
