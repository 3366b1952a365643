//! The admin API (JSON): clients and sessions, kicking a client,
//! subscriptions, retained topics, and publishing a message. Protected by
//! a bearer token or basic auth from `[http]`; without either it is off and
//! every path under `/api/v1` answers 404 with a JSON error saying how to
//! turn it on. Every error is `{"error": "..."}` with a 4xx/5xx status.
//!
//! | method | path | what |
//! | --- | --- | --- |
//! | GET | `/clients` | connected clients |
//! | GET | `/sessions` | every session, connected or not |
//! | GET | `/clients/{id}`, `/sessions/{id}` | one session with its subscriptions |
//! | DELETE | `/clients/{id}` | disconnect the client (MQTT 5: reason 0x98) |
//! | GET | `/subscriptions` | every subscription of every session |
//! | GET | `/retained` | retained topics (payload sizes, not payloads) |
//! | POST | `/publish` | publish one message |

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::bridge::Bridges;
use crate::codec::{reason, ByteStr, Properties, QoS, UserProperties};
use crate::engine::{Broker, Publisher, SessionCell};
use crate::message::{ForwardedProperties, Message, MessageParts};
use crate::topic_tree::validate_topic_name;

type ApiError = (StatusCode, Json<Value>);

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    (status, Json(json!({ "error": message.into() })))
}

pub fn routes(broker: Arc<Broker>) -> Router<Arc<Broker>> {
    // Room for the largest payload MQTT would take, base64-encoded, plus the
    // rest of the request.
    let body_limit = broker.config.mqtt.max_packet_size as usize / 3 * 4 + 64 * 1024;
    Router::new()
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(get_client).delete(kick_client))
        .route("/sessions", get(list_sessions))
        .route("/sessions/{id}", get(get_client))
        .route("/subscriptions", get(list_subscriptions))
        .route("/retained", get(list_retained))
        .route("/bridges", get(list_bridges))
        .route(
            "/publish",
            post(publish).layer(DefaultBodyLimit::max(body_limit)),
        )
        .layer(middleware::from_fn_with_state(broker, authorize))
}

/// Constant-time comparison, so response timing says nothing about how
/// much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(broker): State<Arc<Broker>>, req: Request, next: Next) -> Response {
    let http = &broker.config.http;
    let basic = match (&http.admin_username, &http.admin_password) {
        (Some(u), Some(p)) => Some(format!("{u}:{p}")),
        _ => None,
    };
    if http.admin_token.is_none() && basic.is_none() {
        return error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set http.admin_token or http.admin_username/admin_password",
        )
        .into_response();
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let ok = if let Some(token) = given.strip_prefix("Bearer ") {
        http.admin_token
            .as_ref()
            .is_some_and(|t| same(t.as_bytes(), token.trim().as_bytes()))
    } else if let Some(b64) = given.strip_prefix("Basic ") {
        let decoded = STANDARD.decode(b64.trim()).unwrap_or_default();
        basic.as_ref().is_some_and(|b| same(b.as_bytes(), &decoded))
    } else {
        false
    };
    if !ok {
        let mut resp =
            error(StatusCode::UNAUTHORIZED, "missing or wrong credentials").into_response();
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer, Basic realm=\"raftmq\""),
        );
        return resp;
    }
    next.run(req).await
}

fn describe(cell: &SessionCell, with_subscriptions: bool) -> Value {
    let s = cell.session.lock();
    let mut v = json!({
        "client_id": cell.client_id.as_str(),
        "connected": s.is_connected(),
        "username": s.username.as_deref(),
        "persistent": s.is_persistent(),
        "session_expiry_interval": s.expiry,
        "subscriptions": s.subscriptions.len(),
        "inflight": s.inflight_len(),
        "queued": s.queued_len(),
        "dropped": s.dropped,
    });
    if with_subscriptions {
        let mut subs: Vec<Value> = s
            .subscriptions
            .iter()
            .map(|(f, r)| json!({ "filter": f.as_str(), "qos": r.options.qos as u8, "identifier": r.identifier }))
            .collect();
        subs.sort_by(|a, b| a["filter"].as_str().cmp(&b["filter"].as_str()));
        v["subscriptions"] = Value::Array(subs);
    }
    v
}

async fn list_clients(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let clients: Vec<Value> = broker
        .sessions_snapshot()
        .iter()
        .filter(|c| c.connected.load(std::sync::atomic::Ordering::Acquire))
        .map(|c| describe(c, false))
        .collect();
    Json(json!({ "clients": clients }))
}

async fn list_sessions(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let sessions: Vec<Value> = broker
        .sessions_snapshot()
        .iter()
        .map(|c| describe(c, false))
        .collect();
    Json(json!({ "sessions": sessions }))
}

async fn get_client(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let cell = broker
        .session(&id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no session for client {id}")))?;
    Ok(Json(describe(&cell, true)))
}

async fn kick_client(
    State(broker): State<Arc<Broker>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let cell = broker
        .session(&id)
        .ok_or_else(|| error(StatusCode::NOT_FOUND, format!("no session for client {id}")))?;
    if cell.kick(reason::ADMINISTRATIVE_ACTION) {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(error(
            StatusCode::CONFLICT,
            format!("client {id} is not connected"),
        ))
    }
}

async fn list_subscriptions(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let mut out = Vec::new();
    for cell in broker.sessions_snapshot() {
        let s = cell.session.lock();
        for (filter, r) in &s.subscriptions {
            out.push(json!({
                "client_id": cell.client_id.as_str(),
                "filter": filter.as_str(),
                "qos": r.options.qos as u8,
                "no_local": r.options.no_local,
                "retain_as_published": r.options.retain_as_published,
                "retain_handling": r.options.retain_handling,
                "identifier": r.identifier,
            }));
        }
    }
    Json(json!({ "subscriptions": out }))
}

/// Every configured bridge: where it runs, its state and figures.
async fn list_bridges(
    State(broker): State<Arc<Broker>>,
    Extension(bridges): Extension<Arc<Bridges>>,
) -> Json<Value> {
    crate::bridge::refresh(&broker, &bridges);
    let placement = broker.placement().borrow().clone();
    let bridges: Vec<Value> = bridges
        .all()
        .iter()
        .map(|b| b.to_json(placement.holder(&b.config.name)))
        .collect();
    Json(serde_json::json!({ "node": broker.node_id, "bridges": bridges }))
}

async fn list_retained(State(broker): State<Arc<Broker>>) -> Json<Value> {
    let mut msgs = broker.local.retained.read().all();
    msgs.sort_by(|a, b| a.topic.cmp(&b.topic));
    let out: Vec<Value> = msgs
        .iter()
        .map(|m| json!({ "topic": m.topic.as_str(), "qos": m.qos as u8, "payload_bytes": m.payload.len() }))
        .collect();
    Json(json!({ "retained": out }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    #[serde(default)]
    payload: String,
    /// "utf8" (default) or "base64".
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    #[serde(default)]
    properties: PublishProperties,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishProperties {
    payload_format_indicator: Option<u8>,
    message_expiry_interval: Option<u32>,
    content_type: Option<String>,
    response_topic: Option<String>,
    /// Base64.
    correlation_data: Option<String>,
    /// `[["key", "value"], ...]`: order kept, keys may repeat.
    #[serde(default)]
    user_properties: Vec<(String, String)>,
}

async fn publish(
    State(broker): State<Arc<Broker>>,
    body: Result<Json<PublishRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    // The rejection's own status says what was wrong: 400 not JSON, 415 not
    // `Content-Type: application/json`, 413 too large, 422 wrong fields.
    let Json(req) =
        body.map_err(|e| error(e.status(), format!("bad request body: {}", e.body_text())))?;
    validate_topic_name(&req.topic, broker.topic_limits)
        .map_err(|e| error(StatusCode::BAD_REQUEST, format!("topic: {e}")))?;
    let qos = QoS::from_u8(req.qos)
        .ok_or_else(|| error(StatusCode::BAD_REQUEST, "qos must be 0, 1 or 2"))?;
    if req.qos > broker.config.mqtt.max_qos {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "qos above the broker's maximum",
        ));
    }
    if req.retain && !broker.config.mqtt.retain_available {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "retained messages are off (mqtt.retain_available = false)",
        ));
    }
    let payload = match req.encoding.as_deref().unwrap_or("utf8") {
        "utf8" => Bytes::from(req.payload),
        "base64" => Bytes::from(STANDARD.decode(req.payload.trim()).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("payload is not base64: {e}"),
            )
        })?),
        other => {
            return Err(error(
                StatusCode::BAD_REQUEST,
                format!("unknown encoding `{other}` (utf8 or base64)"),
            ))
        }
    };
    // What an MQTT client could not send either: the topic and payload
    // alone over the broker's packet limit.
    let limit = broker.config.mqtt.max_packet_size as usize;
    if req.topic.len() + payload.len() > limit {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("topic and payload exceed mqtt.max_packet_size ({limit} bytes)"),
        ));
    }
    let p = req.properties;
    if p.payload_format_indicator.is_some_and(|f| f > 1) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "payload_format_indicator must be 0 or 1",
        ));
    }
    if p.payload_format_indicator == Some(1) && std::str::from_utf8(&payload).is_err() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "payload_format_indicator is 1 but the payload is not UTF-8",
        ));
    }
    let correlation_data = p
        .correlation_data
        .map(|c| STANDARD.decode(c).map(Bytes::from))
        .transpose()
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("correlation_data is not base64: {e}"),
            )
        })?;
    let too_long = |what: &str| {
        error(
            StatusCode::BAD_REQUEST,
            format!("{what} is longer than MQTT can carry (65535 bytes)"),
        )
    };
    let text = |v: Option<String>, what: &str| match v {
        Some(v) if v.len() > 0xFFFF => Err(too_long(what)),
        v => Ok(v.map(ByteStr::from)),
    };
    if correlation_data.as_ref().is_some_and(|c| c.len() > 0xFFFF) {
        return Err(too_long("correlation_data"));
    }
    let properties = Properties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: text(p.content_type, "content_type")?,
        response_topic: text(p.response_topic, "response_topic")?,
        correlation_data,
        user_properties: UserProperties::from_pairs(p.user_properties)
            .map_err(|_| too_long("a user property"))?,
        ..Properties::default()
    };
    if qos != QoS::AtMostOnce && !broker.memory.admits(payload.len()) {
        broker.stats.publish_quota_refused.inc();
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the broker's memory budget (mqtt.max_memory) is spent",
        ));
    }
    let now = Instant::now();
    let message = Arc::new(Message::new(MessageParts {
        topic: ByteStr::from(req.topic),
        payload,
        qos,
        retain: req.retain,
        origin: ByteStr::default(),
        expires_at: p
            .message_expiry_interval
            .map(|s| now + Duration::from_secs(u64::from(s))),
        properties: ForwardedProperties::from_properties(&properties),
        received_at: now,
    }));
    let allowed = broker
        .authorize(Publisher::Admin, &message.topic)
        .map_err(|_| error(StatusCode::FORBIDDEN, "publish denied"))?;
    let routed = broker.publish(message, allowed);
    routed
        .committed
        .wait()
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let later = routed
        .matched_later
        .map_or(0, |l| l.load(std::sync::atomic::Ordering::Acquire));
    Ok(Json(json!({ "matched": routed.matched + later })))
}
