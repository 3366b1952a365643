//! HTTP on 9100: `/metrics` (Prometheus), `/healthz` (the process is
//! alive), `/readyz` (listeners bound; later cluster state), and the admin
//! API under `/api/v1` (off unless a token or a user is configured).

mod admin;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Extension;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::bridge::Bridges;
use crate::engine::Broker;

/// Binds the HTTP listener (so a port clash fails the start) and serves it.
pub async fn spawn(
    broker: Arc<Broker>,
    bridges: Arc<Bridges>,
    bind: SocketAddr,
) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(bind).await?;
    let addr = listener.local_addr()?;
    let app = router(broker, bridges);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    Ok((addr, task))
}

/// The bridges' status is not the engine's (the engine knows no bridge):
/// the handlers that show it get it as an extension.
pub fn router(broker: Arc<Broker>, bridges: Arc<Bridges>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .nest("/api/v1", admin::routes(broker.clone()))
        .layer(Extension(bridges))
        .with_state(broker)
}

async fn ready(State(broker): State<Arc<Broker>>) -> impl IntoResponse {
    // The HTTP server starts only after every listener is bound.
    let mut raft = broker.health.raft_summary.read().clone();
    let cluster = &broker.config.cluster;
    if cluster.plaintext_exposed() {
        raft.push('\n');
        raft.push_str(&crate::cluster::insecure::readiness_note(
            cluster.bind_addr(),
        ));
    }
    match broker.readiness() {
        Ok(()) => (StatusCode::OK, format!("ready\n{raft}\n")),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n{raft}\n"),
        ),
    }
}

async fn metrics(
    State(broker): State<Arc<Broker>>,
    Extension(bridges): Extension<Arc<Bridges>>,
) -> impl IntoResponse {
    broker.refresh_gauges();
    crate::bridge::refresh(&broker, &bridges);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        broker.stats.render(),
    )
}
