//! The HTTP admin and publish API (`/api/v1`): off by default, bearer token
//! and basic auth, publishes that MQTT subscribers receive at QoS 0/1/2 with
//! their MQTT 5 properties, clear JSON errors for bad requests, and the
//! client, session, subscription and retained listings, and kicking a client.

use std::time::Duration;

use raftmq::codec::{reason, Packet, Protocol, QoS, SubOptions};
use raftmq_e2e::raw::{self, RawClient, Read1};
use raftmq_e2e::{Broker, BrokerConfig};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(5);
const TOKEN: &str = "Bearer s3cret-token";
/// `admin:pw`, base64.
const BASIC: &str = "Basic YWRtaW46cHc=";

/// A broker whose admin API takes the token and, with `basic`, admin/pw.
fn broker(basic: bool) -> Broker {
    let mut c = BrokerConfig::new().env("RAFTMQ_HTTP__ADMIN_TOKEN", "s3cret-token");
    if basic {
        c = c
            .env("RAFTMQ_HTTP__ADMIN_USERNAME", "admin")
            .env("RAFTMQ_HTTP__ADMIN_PASSWORD", "pw");
    }
    Broker::start(c)
}

struct Reply {
    status: u16,
    www_authenticate: Option<String>,
    body: String,
}

impl Reply {
    /// The body as JSON (every answer of the API is JSON, errors too).
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// Asserts a JSON error with this status whose message mentions `about`.
    fn error(&self, status: u16, about: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        let msg = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {}", self.body))
            .to_string();
        assert!(
            msg.to_lowercase().contains(&about.to_lowercase()),
            "error {msg:?} does not mention {about:?}"
        );
    }
}

fn call(
    b: &Broker,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<(&str, String)>,
) -> Reply {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let url = b.http_url(&format!("/api/v1{path}"));
    let result = match (method, body) {
        ("GET", None) => {
            let mut r = agent.get(&url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("DELETE", None) => {
            let mut r = agent.delete(&url);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.call()
        }
        ("POST", Some((content_type, body))) => {
            let mut r = agent.post(&url).header("Content-Type", content_type);
            if let Some(a) = auth {
                r = r.header("Authorization", a);
            }
            r.send(body)
        }
        other => panic!("no such call {other:?}"),
    };
    let mut resp = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Reply {
        status: resp.status().as_u16(),
        www_authenticate: resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        body: resp.body_mut().read_to_string().unwrap_or_default(),
    }
}

fn publish(b: &Broker, auth: Option<&str>, request: Value) -> Reply {
    call(
        b,
        "POST",
        "/publish",
        auth,
        Some(("application/json", request.to_string())),
    )
}

fn v5_subscriber(b: &Broker, id: &str, filter: &str) -> RawClient {
    let (mut c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, id, true));
    assert_eq!(ack.code, 0);
    assert_eq!(c.subscribe(1, filter, QoS::ExactlyOnce), vec![2]);
    c
}

#[test]
fn admin_api_is_off_without_credentials() {
    let b = Broker::start(BrokerConfig::new());
    for path in ["/clients", "/sessions", "/subscriptions", "/retained"] {
        call(&b, "GET", path, None, None).error(404, "admin API is off");
        call(&b, "GET", path, Some(TOKEN), None).error(404, "admin_token");
    }
    let off = publish(&b, Some(TOKEN), json!({"topic": "a", "payload": "x"}));
    off.error(404, "admin API is off");
    call(&b, "DELETE", "/clients/x", None, None).error(404, "admin API is off");
    // The rest of the HTTP server is there.
    assert_eq!(b.http_get("/healthz"), (200, "ok\n".to_string()));
    // Ready once the one-node Raft group has elected itself.
    assert!(raftmq_e2e::eventually(WAIT, || b.http_get("/readyz").0 == 200));
    assert_eq!(b.http_get("/metrics").0, 200);
}

#[test]
fn bearer_token_and_basic_auth_guard_the_api() {
    let b = broker(true);
    for auth in [TOKEN, BASIC] {
        let r = call(&b, "GET", "/clients", Some(auth), None);
        assert_eq!(r.status, 200, "{auth}: {}", r.body);
        assert_eq!(r.json(), json!({"clients": []}));
    }
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer "),
        Some("s3cret-token"),
        Some("Basic YWRtaW46d3Jvbmc="), // admin:wrong
        Some("Basic not-base64!"),
    ] {
        let r = call(&b, "GET", "/clients", auth, None);
        r.error(401, "credentials");
        let challenge = r.www_authenticate.as_deref().unwrap_or_default();
        assert!(
            challenge.contains("Bearer") && challenge.contains("Basic"),
            "{challenge:?}"
        );
    }
    // Basic auth is not on unless a username and password are set.
    let token_only = broker(false);
    call(&token_only, "GET", "/clients", Some(BASIC), None).error(401, "credentials");
    assert_eq!(
        call(&token_only, "GET", "/clients", Some(TOKEN), None).status,
        200
    );
}

#[test]
fn publish_api_delivers_at_each_qos_with_v5_properties() {
    let b = broker(false);
    let mut sub = v5_subscriber(&b, "sub5", "cmd/#");
    for qos in [0u8, 1, 2] {
        let r = publish(
            &b,
            Some(TOKEN),
            json!({"topic": format!("cmd/q{qos}"), "payload": format!("qos {qos} ✓"), "qos": qos}),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json(), json!({"matched": 1}));
        let p = sub.next_publish(WAIT).expect("delivered");
        assert_eq!(&*p.topic, format!("cmd/q{qos}"));
        assert_eq!(&p.payload[..], format!("qos {qos} ✓").as_bytes());
        assert_eq!(p.qos as u8, qos, "delivered at the QoS asked for");
        assert!(!p.retain);
        sub.ack(&p);
    }

    // Base64 payload and every MQTT 5 property a publisher can set.
    let r = publish(
        &b,
        Some(TOKEN),
        json!({
            "topic": "cmd/props",
            "payload": "AP8B",
            "encoding": "base64",
            "qos": 1,
            "properties": {
                "payload_format_indicator": 0,
                "message_expiry_interval": 60,
                "content_type": "application/octet-stream",
                "response_topic": "reply/7",
                "correlation_data": "aWQtMQ==",
                "user_properties": [["k", "1"], ["k", "2"], ["other", "x"]],
            },
        }),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let p = sub.next_publish(WAIT).expect("delivered");
    sub.ack(&p);
    assert_eq!(&p.payload[..], &[0u8, 255, 1][..]);
    let props = &p.properties;
    assert_eq!(props.payload_format_indicator, Some(0));
    let expiry = props.message_expiry_interval.expect("expiry kept");
    assert!((55..=60).contains(&expiry), "{expiry}");
    assert_eq!(
        props.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(props.response_topic.as_deref(), Some("reply/7"));
    assert_eq!(props.correlation_data.as_deref(), Some(&b"id-1"[..]));
    let users: Vec<(&str, &str)> = props.user_properties.iter().collect();
    assert_eq!(users, [("k", "1"), ("k", "2"), ("other", "x")]);

    // Retained: a later subscriber gets it, flagged, and /retained lists it.
    let r = publish(
        &b,
        Some(TOKEN),
        json!({"topic": "cmd/kept", "payload": "on", "qos": 1, "retain": true}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let live = sub.next_publish(WAIT).expect("live copy");
    sub.ack(&live);
    let mut later = v5_subscriber(&b, "later", "cmd/kept");
    let kept = later.next_publish(WAIT).expect("retained copy");
    assert!(kept.retain);
    assert_eq!(&kept.payload[..], b"on");
    let listed = call(&b, "GET", "/retained", Some(TOKEN), None).json();
    assert_eq!(
        listed,
        json!({"retained": [{"topic": "cmd/kept", "qos": 1, "payload_bytes": 2}]})
    );

    // A 3.1.1 subscriber gets the same message without properties, and a
    // publish that matches nobody says so.
    let (mut v3, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "v3", true));
    assert_eq!(v3.subscribe(1, "cmd/v3", QoS::AtLeastOnce), vec![1]);
    let r = publish(
        &b,
        Some(TOKEN),
        json!({"topic": "cmd/v3", "payload": "hi", "qos": 2}),
    );
    assert_eq!(r.json(), json!({"matched": 2}));
    let p = v3.next_publish(WAIT).expect("delivered to 3.1.1");
    assert_eq!((p.qos, &p.payload[..]), (QoS::AtLeastOnce, &b"hi"[..]));
    let r = publish(
        &b,
        Some(TOKEN),
        json!({"topic": "nobody/here", "payload": "x"}),
    );
    assert_eq!(r.json(), json!({"matched": 0}));
}

#[test]
fn publish_api_refuses_bad_requests_with_json_errors() {
    let b = Broker::start(
        BrokerConfig::new()
            .env("RAFTMQ_HTTP__ADMIN_TOKEN", "s3cret-token")
            .env("RAFTMQ_MQTT__MAX_PACKET_SIZE", "1024"),
    );
    let mut sub = v5_subscriber(&b, "watch", "#");
    let raw_body = |body: &str, content_type: &str| {
        call(
            &b,
            "POST",
            "/publish",
            Some(TOKEN),
            Some((content_type, body.to_string())),
        )
    };
    publish(&b, None, json!({"topic": "a", "payload": "x"})).error(401, "credentials");
    publish(&b, Some("Bearer nope"), json!({"topic": "a"})).error(401, "credentials");
    raw_body("{\"topic\": ", "application/json").error(400, "bad request body");
    raw_body("{\"topic\": \"a\"}", "text/plain").error(415, "content-type");
    raw_body("{\"payload\": \"x\"}", "application/json").error(422, "topic");
    raw_body("{\"topic\": \"a\", \"qos\": \"one\"}", "application/json").error(422, "qos");
    raw_body("{\"topic\": \"a\", \"colour\": 1}", "application/json").error(422, "colour");
    let cases = [
        (json!({"topic": "a/+/b", "payload": "x"}), 400, "topic"),
        (json!({"topic": "a/#", "payload": "x"}), 400, "topic"),
        (json!({"topic": "", "payload": "x"}), 400, "topic"),
        (json!({"topic": "a", "qos": 3}), 400, "qos"),
        (
            json!({"topic": "a", "payload": "%%%", "encoding": "base64"}),
            400,
            "base64",
        ),
        (
            json!({"topic": "a", "payload": "x", "encoding": "hex"}),
            400,
            "encoding",
        ),
        (
            json!({"topic": "a", "payload": "/w==", "encoding": "base64",
                   "properties": {"payload_format_indicator": 1}}),
            400,
            "UTF-8",
        ),
        (
            json!({"topic": "a", "properties": {"payload_format_indicator": 2}}),
            400,
            "payload_format_indicator",
        ),
        (
            json!({"topic": "a", "properties": {"correlation_data": "***"}}),
            400,
            "correlation_data",
        ),
        (
            json!({"topic": "a", "payload": "x".repeat(2000)}),
            413,
            "max_packet_size",
        ),
    ];
    for (request, status, about) in cases {
        let r = publish(&b, Some(TOKEN), request.clone());
        assert_eq!(r.status, status, "{request}: {}", r.body);
        r.error(status, about);
    }
    // Bigger than any payload the broker takes, base64 and all: refused
    // before it is read whole.
    raw_body(
        &json!({"topic": "a", "payload": "x".repeat(200_000)}).to_string(),
        "application/json",
    )
    .error(413, "length limit");
    // Nothing refused was delivered; the API still works afterwards.
    sub.expect_no_publish(Duration::from_millis(300));
    let r = publish(&b, Some(TOKEN), json!({"topic": "a", "payload": "fine"}));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        &sub.next_publish(WAIT).expect("delivered").payload[..],
        b"fine"
    );
}

#[test]
fn admin_api_lists_clients_sessions_subscriptions_and_kicks() {
    let b = broker(true);
    let get = |path: &str| {
        let r = call(&b, "GET", path, Some(BASIC), None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    };

    let (mut v5, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V5, "dev-5", true));
    assert_eq!(v5.subscribe(1, "a/#", QoS::AtLeastOnce), vec![1]);
    let options = SubOptions {
        qos: QoS::AtMostOnce,
        no_local: true,
        ..SubOptions::default()
    };
    assert_eq!(v5.subscribe_with(2, "b", options), vec![0]);
    let (mut gone, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "gone", false));
    assert_eq!(gone.subscribe(1, "c/+", QoS::AtLeastOnce), vec![1]);
    gone.publish_qos1("r/1", b"12345", true, 3);
    gone.disconnect();
    let (mut v3, _) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "dev-3", true));

    // Connected clients only; sessions include the persistent one offline.
    let ids = |v: &Value, key: &str| -> Vec<(String, bool)> {
        v[key]
            .as_array()
            .expect("list")
            .iter()
            .map(|c| {
                (
                    c["client_id"].as_str().expect("id").to_string(),
                    c["connected"] == true,
                )
            })
            .collect()
    };
    let clients = get("/clients");
    assert_eq!(
        ids(&clients, "clients"),
        [("dev-3".to_string(), true), ("dev-5".to_string(), true)]
    );
    let sessions = get("/sessions");
    assert_eq!(
        ids(&sessions, "sessions"),
        [
            ("dev-3".to_string(), true),
            ("dev-5".to_string(), true),
            ("gone".to_string(), false)
        ]
    );
    let gone_json = &sessions["sessions"][2];
    assert_eq!(gone_json["persistent"], true);
    assert_eq!(gone_json["subscriptions"], 1);

    // One session with its subscriptions, by either path.
    let one = get("/clients/dev-5");
    assert_eq!(one, get("/sessions/dev-5"));
    assert_eq!(one["connected"], true);
    assert_eq!(one["persistent"], false);
    assert_eq!(
        one["subscriptions"],
        json!([
            {"filter": "a/#", "qos": 1, "identifier": null},
            {"filter": "b", "qos": 0, "identifier": null},
        ])
    );
    call(&b, "GET", "/clients/nobody", Some(BASIC), None).error(404, "nobody");

    let subs = get("/subscriptions")["subscriptions"].clone();
    let mut flat: Vec<(String, String, u64, bool)> = subs
        .as_array()
        .expect("list")
        .iter()
        .map(|s| {
            (
                s["client_id"].as_str().expect("id").into(),
                s["filter"].as_str().expect("filter").into(),
                s["qos"].as_u64().expect("qos"),
                s["no_local"] == true,
            )
        })
        .collect();
    flat.sort();
    assert_eq!(
        flat,
        [
            ("dev-5".into(), "a/#".into(), 1, false),
            ("dev-5".into(), "b".into(), 0, true),
            ("gone".into(), "c/+".into(), 1, false),
        ]
    );
    assert_eq!(
        get("/retained"),
        json!({"retained": [{"topic": "r/1", "qos": 1, "payload_bytes": 5}]})
    );

    // Kick: MQTT 5 hears why, 3.1.1 sees its socket closed.
    let r = call(&b, "DELETE", "/clients/dev-5", Some(TOKEN), None);
    assert_eq!(r.status, 204, "{}", r.body);
    match v5.recv(WAIT) {
        Read1::Packet(Packet::Disconnect(d)) => {
            assert_eq!(d.code, reason::ADMINISTRATIVE_ACTION);
            assert_eq!(
                d.properties.reason_string.as_deref(),
                Some("disconnected by an administrator")
            );
        }
        other => panic!("expected DISCONNECT, got {other:?}"),
    }
    assert!(matches!(v5.recv(WAIT), Read1::Closed));
    assert_eq!(
        call(&b, "DELETE", "/clients/dev-3", Some(BASIC), None).status,
        204
    );
    assert!(
        matches!(v3.recv(WAIT), Read1::Closed),
        "3.1.1 client closed"
    );
    // Offline or unknown clients cannot be kicked.
    call(&b, "DELETE", "/clients/gone", Some(TOKEN), None).error(409, "not connected");
    call(&b, "DELETE", "/clients/nobody", Some(TOKEN), None).error(404, "nobody");
    raftmq_e2e::eventually(WAIT, || {
        call(&b, "GET", "/clients", Some(TOKEN), None).json() == json!({"clients": []})
    });
    assert_eq!(get("/clients"), json!({"clients": []}));
    // The kicked clean sessions are gone; the persistent one stays.
    assert_eq!(
        ids(&get("/sessions"), "sessions"),
        [("gone".to_string(), false)]
    );
}
