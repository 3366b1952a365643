//! Logging, read from the broker's stderr: JSON lines (`[log] format` or
//! `--log-json`) whose per-connection span names the client id, the peer
//! and the listener; the level from the config, and RUST_LOG above it.

use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{eventually, Broker, BrokerConfig};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(10);

/// Every line the broker logged, each of which must be a JSON object.
fn json_lines(b: &Broker) -> Vec<Value> {
    b.logs()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            assert!(v["timestamp"].is_string() && v["level"].is_string(), "{l}");
            v
        })
        .collect()
}

fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

/// The `conn` span around an event.
fn conn_span(v: &Value) -> Option<&Value> {
    v["spans"].as_array()?.iter().find(|s| s["name"] == "conn")
}

#[test]
fn json_format_from_config_with_connection_spans_and_rust_log_over_the_level() {
    // The config says warn; RUST_LOG asks for raftmq's debug events.
    let b = Broker::start(
        BrokerConfig::new()
            .raw("[log]\nlevel = \"warn\"\nformat = \"json\"\n")
            .env("RUST_LOG", "raftmq=debug"),
    );
    let (mut c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "log-me", true));
    assert_eq!(ack.code, 0);
    let local = c.local_addr();
    assert_eq!(c.subscribe(1, "x/#", QoS::AtMostOnce), vec![0]);
    c.disconnect();
    assert!(
        eventually(WAIT, || json_lines(&b)
            .iter()
            .any(|v| message(v) == "disconnected")),
        "no `disconnected` event:\n{}",
        b.logs()
    );
    let lines = json_lines(&b);
    let bye = lines
        .iter()
        .find(|v| message(v) == "disconnected")
        .expect("disconnected");
    assert_eq!(bye["level"], "DEBUG", "RUST_LOG's level, not the config's");
    let span = conn_span(bye).unwrap_or_else(|| panic!("no conn span: {bye}"));
    assert_eq!(span["client_id"], "log-me", "{span}");
    assert_eq!(span["peer"], local.to_string(), "{span}");
    assert_eq!(span["listener"], format!("tcp-{}", b.ports.tcp), "{span}");
    // RUST_LOG names only raftmq: nothing from other crates.
    assert!(
        lines.iter().all(|v| v["target"]
            .as_str()
            .unwrap_or_default()
            .starts_with("raftmq")),
        "{}",
        b.logs()
    );
}

#[test]
fn log_json_flag_at_the_default_level_and_the_level_from_the_config() {
    // `--log-json` with the default level (info): the start line, and an
    // authentication failure carrying its connection's span.
    let b = Broker::start(
        BrokerConfig::new()
            .arg("--log-json")
            .raw("[auth]\nallow_anonymous = false\nauth_fail_delay_ms = 10\n"),
    );
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(Protocol::V311, "anon", true));
    assert_eq!(ack.code, 5, "not authorized");
    let local = c.local_addr();
    let failed = |lines: &[Value]| {
        lines
            .iter()
            .find(|v| message(v) == "authentication failed")
            .cloned()
    };
    assert!(
        eventually(WAIT, || failed(&json_lines(&b)).is_some()),
        "{}",
        b.logs()
    );
    assert!(eventually(WAIT, || json_lines(&b)
        .iter()
        .any(|v| message(v) == "raftmq running")));
    let lines = json_lines(&b);
    let running = lines
        .iter()
        .find(|v| message(v) == "raftmq running")
        .unwrap_or_else(|| panic!("no start line:\n{}", b.logs()));
    assert_eq!(running["level"], "INFO");
    assert_eq!(running["fields"]["version"], env!("CARGO_PKG_VERSION"));
    let fail = failed(&lines).expect("auth failure");
    assert_eq!(fail["level"], "INFO");
    let span = conn_span(&fail).unwrap_or_else(|| panic!("no conn span: {fail}"));
    assert_eq!(span["peer"], local.to_string());
    assert!(
        !lines.iter().any(|v| v["level"] == "DEBUG"),
        "debug events at the info level"
    );

    // Human format, the level from the config: raftmq's info lines and no
    // one else's (openraft logs its start at info).
    let quiet = Broker::start(BrokerConfig::new().raw("[log]\nlevel = \"warn,raftmq=info\"\n"));
    eventually(WAIT, || quiet.logs().contains("raftmq running"));
    let text = quiet.logs();
    let start = text
        .lines()
        .find(|l| l.contains("raftmq running"))
        .unwrap_or_else(|| panic!("no start line:\n{text}"));
    assert!(start.contains("INFO") && !start.starts_with('{'), "{start}");
    assert!(!text.contains("openraft"), "{text}");
}
