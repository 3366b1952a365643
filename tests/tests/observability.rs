//! Observability: `$SYS/broker/...` figures against traffic counted byte for
//! byte by the clients themselves, `sys_interval`, `/metrics` read with a
//! Prometheus text parser, and every metric that a Grafana dashboard or an
//! alert rule names present on live brokers (PromQL checked by promtool).

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use raftmq::codec::{self, Disconnect, Packet, Properties, Protocol, QoS};
use raftmq_e2e::raw::{self, RawClient, Read1, Tally};
use raftmq_e2e::{cluster, require_tool, run, Broker, BrokerConfig};

const WAIT: Duration = Duration::from_secs(5);

fn open(b: &Broker, id: &str, protocol: Protocol, clean: bool) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), raw::connect(protocol, id, clean));
    assert_eq!(ack.code, 0, "{id} connects");
    c
}

/// DISCONNECT, then the close; what the client sent and received in all.
fn leave(mut c: RawClient) -> (Tally, Tally) {
    c.send(&Packet::Disconnect(Disconnect {
        code: 0,
        properties: Properties::default(),
    }));
    assert!(matches!(c.recv(WAIT), Read1::Closed), "broker closes");
    (c.sent, c.received)
}

/// A `$SYS/#` subscriber that keeps the latest value of every topic and
/// knows where each update begins (`uptime` comes first and changes every
/// time).
struct SysWatcher {
    client: RawClient,
    /// Latest value per topic, without the `$SYS/broker/` prefix.
    values: BTreeMap<String, String>,
    /// How many times each topic arrived.
    arrivals: BTreeMap<String, usize>,
    /// Topics that arrived with RETAIN set (from the retained store).
    retained: BTreeSet<String>,
    /// What the client had received when the current update began: what
    /// the broker had counted for it when it took the update's figures.
    began: Option<Tally>,
    /// When each live update began, and its `uptime`.
    updates: Vec<(Instant, u64)>,
}

impl SysWatcher {
    fn open(b: &Broker, id: &str) -> SysWatcher {
        let mut client = open(b, id, Protocol::V311, true);
        assert_eq!(client.subscribe(1, "$SYS/#", QoS::AtMostOnce), vec![0]);
        SysWatcher {
            client,
            values: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            retained: BTreeSet::new(),
            began: None,
            updates: Vec::new(),
        }
    }

    /// Reads until the next live update begins and returns the update
    /// before it, complete: the tally when it began and every value.
    fn next_update(&mut self, timeout: Duration) -> Option<(Tally, BTreeMap<String, String>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let before = self.client.received;
            let left = deadline.saturating_duration_since(Instant::now());
            let p = match self.client.recv(left) {
                Read1::Packet(Packet::Publish(p)) => p,
                Read1::Timeout => return None,
                other => panic!("$SYS subscriber got {other:?}"),
            };
            let topic = p
                .topic
                .strip_prefix("$SYS/broker/")
                .unwrap_or_else(|| panic!("not a $SYS/broker topic: {}", &*p.topic))
                .to_string();
            let value = String::from_utf8(p.payload.to_vec()).expect("UTF-8 value");
            let mut done = None;
            if topic == "uptime" && !p.retain {
                let secs = value
                    .strip_suffix(" seconds")
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("uptime is `N seconds`, not {value:?}"));
                self.updates.push((Instant::now(), secs));
                done = self.began.map(|t| (t, self.values.clone()));
                self.began = Some(before);
            }
            if p.retain {
                self.retained.insert(topic.clone());
            }
            *self.arrivals.entry(topic.clone()).or_default() += 1;
            self.values.insert(topic, value);
            if done.is_some() {
                return done;
            }
        }
    }
}

fn number(values: &BTreeMap<String, String>, topic: &str) -> f64 {
    values
        .get(topic)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{topic} is a number: {:?}", values.get(topic)))
}

/// The value of an unlabelled sample in a Prometheus text exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} on /metrics"))
}

#[test]
fn sys_figures_match_the_traffic_exactly() {
    let b = Broker::start(BrokerConfig::new().sys_interval(1));
    let mut watcher = SysWatcher::open(&b, "watcher");

    // `#` and `+/...` never reach `$SYS` (MQTT 4.7.2).
    let mut hash = open(&b, "hash", Protocol::V311, true);
    assert_eq!(hash.subscribe(1, "#", QoS::AtMostOnce), vec![0]);
    assert_eq!(
        hash.subscribe(2, "+/broker/uptime", QoS::AtMostOnce),
        vec![0]
    );
    let mut sub = open(&b, "sub", Protocol::V311, false);
    assert_eq!(sub.subscribe(1, "t/#", QoS::AtLeastOnce), vec![1]);
    let mut publ = open(&b, "pub", Protocol::V5, true);
    for _ in 0..3 {
        publ.publish("t/a", b"hello", QoS::AtMostOnce, false, 0);
    }
    assert_eq!(publ.publish_qos1("t/r", b"kept", true, 7), 0);
    for c in [&mut hash, &mut sub] {
        for _ in 0..4 {
            let p = c.next_publish(WAIT).expect("delivered");
            c.ack(&p);
        }
    }
    // Five connected at once, then a session that expires after 1 s.
    let mut short = raw::connect(Protocol::V5, "short", true);
    short.properties.session_expiry_interval = Some(1);
    let (short, ack) = RawClient::open(b.tcp_addr(), short);
    assert_eq!(ack.code, 0);
    let mut done = vec![leave(short), leave(publ), leave(sub)];
    done.push((hash.sent, hash.received));
    let sent = done
        .iter()
        .fold(watcher.client.sent, |acc, (s, _)| acc + *s);
    let others_received = done.iter().fold(Tally::default(), |acc, (_, r)| acc + *r);
    assert_eq!(sent.publishes, 4);

    // The broker's figures catch up with the traffic within a few updates
    // and then equal it exactly; what the watcher itself was sent counts
    // up to the start of the update.
    let deadline = Instant::now() + Duration::from_secs(15);
    let values = loop {
        let (watcher_received, values) = watcher
            .next_update(Duration::from_secs(5))
            .expect("an update every second");
        let received = others_received + watcher_received;
        let retained = values.len() + 1; // every $SYS topic, and t/r
        let expected: Vec<(&str, String)> = vec![
            ("clients/connected", "2".into()),
            ("clients/active", "2".into()),
            ("clients/disconnected", "1".into()),
            ("clients/inactive", "1".into()),
            ("clients/total", "3".into()),
            ("clients/maximum", "5".into()),
            ("clients/expired", "1".into()),
            ("subscriptions/count", "4".into()),
            ("messages/received", sent.packets.to_string()),
            ("messages/sent", received.packets.to_string()),
            ("publish/messages/received", sent.publishes.to_string()),
            ("publish/messages/sent", received.publishes.to_string()),
            ("publish/messages/dropped", "0".into()),
            ("publish/bytes/received", sent.payload_bytes.to_string()),
            ("publish/bytes/sent", received.payload_bytes.to_string()),
            ("bytes/received", sent.bytes.to_string()),
            ("bytes/sent", received.bytes.to_string()),
            ("messages/inflight", "0".into()),
            ("retained messages/count", retained.to_string()),
            ("messages/stored", retained.to_string()),
            ("store/messages/count", retained.to_string()),
        ];
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(k, v)| values.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}: expected {v}, got {:?}", values.get(*k)))
            .collect();
        if wrong.is_empty() {
            break values;
        }
        assert!(
            Instant::now() < deadline,
            "$SYS never matched the traffic:\n{}",
            wrong.join("\n")
        );
    };
    assert_eq!(sent.payload_bytes, 3 * 5 + 4);

    // The rest of the tree, by shape.
    let version = format!("raftmq version {}", env!("CARGO_PKG_VERSION"));
    assert_eq!(values.get("version"), Some(&version));
    assert!(number(&values, "timestamp") > 1.7e9, "{values:?}");
    assert!(number(&values, "heap/current") > 0.0);
    assert!(number(&values, "heap/maximum") >= number(&values, "heap/current"));
    for load in [
        "publish/received",
        "messages/received",
        "bytes/sent",
        "connections",
        "sockets",
    ] {
        for window in ["1min", "5min", "15min"] {
            let v = number(&values, &format!("load/{load}/{window}"));
            assert!(v > 0.0, "load/{load}/{window} = {v}");
        }
    }
    assert_eq!(number(&values, "load/publish/dropped/1min"), 0.0);

    // Static topics once per subscriber, however many updates pass.
    while watcher.updates.len() < 4 {
        watcher.next_update(WAIT).expect("updates go on");
    }
    assert_eq!(watcher.arrivals["version"], 1, "{:?}", watcher.arrivals);
    assert_eq!(watcher.arrivals["timestamp"], 1, "{:?}", watcher.arrivals);
    hash.expect_no_publish(Duration::from_millis(300));

    // Retained as mosquitto does: a late subscriber gets every topic at once
    // with RETAIN set, and the static ones only then.
    let mut late = SysWatcher::open(&b, "late");
    late.next_update(WAIT).expect("a live update");
    let all: BTreeSet<String> = watcher.values.keys().cloned().collect();
    assert_eq!(late.retained, all, "every $SYS topic is retained");
    for topic in [
        "version",
        "uptime",
        "timestamp",
        "clients/connected",
        "clients/disconnected",
        "clients/expired",
        "clients/maximum",
        "clients/total",
        "messages/received",
        "messages/sent",
        "messages/stored",
        "messages/inflight",
        "publish/messages/dropped",
        "publish/messages/received",
        "publish/messages/sent",
        "bytes/received",
        "bytes/sent",
        "retained messages/count",
        "subscriptions/count",
        "heap/current",
        "heap/maximum",
        "load/messages/received/1min",
        "load/bytes/sent/5min",
        "load/publish/sent/15min",
        "load/connections/1min",
        "load/sockets/15min",
    ] {
        assert!(all.contains(topic), "$SYS/broker/{topic} missing: {all:?}");
    }
    late.next_update(WAIT).expect("a second live update");
    assert_eq!(late.arrivals["version"], 1);

    // /metrics reads the same figures.
    let (status, text) = b.http_get("/metrics");
    assert_eq!(status, 200);
    assert_eq!(sample(&text, "raftmq_publish_received_total"), 4.0);
    assert_eq!(sample(&text, "raftmq_publish_bytes_received_total"), 19.0);
    assert_eq!(sample(&text, "raftmq_clients_connected"), 3.0);
    assert_eq!(sample(&text, "raftmq_clients_maximum"), 5.0);
    assert_eq!(sample(&text, "raftmq_sessions_expired_total"), 1.0);
    assert_eq!(sample(&text, "raftmq_subscriptions"), 5.0);
    assert_eq!(sample(&text, "raftmq_sessions"), 4.0);
}

#[test]
fn sys_interval_sets_the_period_and_zero_turns_it_off() {
    let off = Broker::start(BrokerConfig::new());
    let every2 = Broker::start(BrokerConfig::new().sys_interval(2));
    let mut quiet = open(&off, "quiet", Protocol::V311, true);
    assert_eq!(quiet.subscribe(1, "$SYS/#", QoS::AtMostOnce), vec![0]);
    let mut w = SysWatcher::open(&every2, "w");
    while w.updates.len() < 4 {
        w.next_update(Duration::from_secs(8))
            .expect("an update every 2 s");
    }
    // Loosely: the machine may be busy, but 2 s is neither 1 s nor 4 s.
    let (first, up0) = w.updates[0];
    let (last, up3) = w.updates[3];
    let period = last.duration_since(first).as_secs_f64() / 3.0;
    assert!((1.5..=3.0).contains(&period), "period {period:.2} s");
    assert!((5..=7).contains(&(up3 - up0)), "uptime {up0} -> {up3}");
    // Nothing at all from the broker with sys_interval = 0, retained or not.
    quiet.expect_no_publish(Duration::from_millis(200));
}

/// Parses an exposition strictly: every line must be a HELP, TYPE or sample
/// line (prometheus-parse itself skips what it does not understand).
fn parse(text: &str) -> prometheus_parse::Scrape {
    use prometheus_parse::LineInfo;
    for line in text.lines() {
        assert!(
            !matches!(LineInfo::parse(line), LineInfo::Ignored),
            "not Prometheus text format: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parses")
}

/// Every series name a PromQL query can use, with histograms as their
/// `_bucket`, `_sum` and `_count` series.
fn series_names(scrape: &prometheus_parse::Scrape) -> BTreeSet<String> {
    scrape
        .samples
        .iter()
        .map(|s| match s.value {
            prometheus_parse::Value::Histogram(_) => format!("{}_bucket", s.metric),
            _ => s.metric.clone(),
        })
        .collect()
}

fn labelled(scrape: &prometheus_parse::Scrape, name: &str, label: &str, value: &str) -> f64 {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get(label) == Some(value))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain sample"),
        })
        .unwrap_or_else(|| panic!("{name}{{{label}=\"{value}\"}} on /metrics"))
}

#[test]
fn metrics_parse_with_listener_labels_histograms_and_process_figures() {
    let b = Broker::start(BrokerConfig::new().raw(
        "[[listeners]]\nname = \"devices\"\nkind = \"tcp\"\nbind = \"127.0.0.1:{tcp}\"\n\
         [[listeners]]\nname = \"backend\"\nkind = \"tcp\"\nbind = \"127.0.0.1:{tls}\"\n",
    ));
    let backend_addr = std::net::SocketAddr::from(([127, 0, 0, 1], b.ports.tls));
    let (mut sub, _) = RawClient::open(backend_addr, raw::connect(Protocol::V311, "sub", true));
    assert_eq!(sub.subscribe(1, "m/#", QoS::AtMostOnce), vec![0]);
    let mut devices: Vec<RawClient> = (0..2)
        .map(|i| open(&b, &format!("dev{i}"), Protocol::V311, true))
        .collect();
    let payloads: [&[u8]; 3] = [b"", b"0123456789", &[7u8; 300]];
    let mut in_bytes = 0;
    for p in payloads {
        let packet = Packet::Publish(raw::publish("m/x", p, QoS::AtMostOnce, false, 0));
        in_bytes += codec::encoded_len(&packet, Protocol::V311);
        devices[0].send(&packet);
    }
    let mut out_bytes = 0;
    for _ in payloads {
        let got = sub.next_publish(WAIT).expect("delivered");
        out_bytes += codec::encoded_len(&Packet::Publish(got), Protocol::V311);
    }

    let (status, text) = b.http_get("/metrics");
    assert_eq!(status, 200);
    let scrape = parse(&text);
    let names = series_names(&scrape);

    // Per listener.
    for (listener, n) in [("devices", 2.0), ("backend", 1.0)] {
        let connected = labelled(
            &scrape,
            "raftmq_listener_clients_connected",
            "listener",
            listener,
        );
        let accepted = labelled(
            &scrape,
            "raftmq_listener_connections_total",
            "listener",
            listener,
        );
        assert_eq!((connected, accepted), (n, n), "{listener}");
    }
    // Histograms: exact packet sizes both ways, one latency per delivery.
    let histogram = |name: &str, direction: Option<&str>| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("direction") == direction)
            .and_then(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => Some(h.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("histogram {name} {direction:?}"))
    };
    for (direction, bytes) in [("in", in_bytes), ("out", out_bytes)] {
        let h = histogram("raftmq_publish_size_bytes", Some(direction));
        assert_eq!(h.last().map(|c| c.count), Some(3.0), "{direction}: {h:?}");
        let sum = labelled(
            &scrape,
            "raftmq_publish_size_bytes_sum",
            "direction",
            direction,
        );
        assert_eq!(sum, bytes as f64, "{direction} bytes");
    }
    let latency = histogram("raftmq_publish_latency_seconds", None);
    assert_eq!(latency.last().map(|c| c.count), Some(3.0));
    assert!(latency.iter().all(|c| c.count <= 3.0));
    for n in [
        "raftmq_publish_latency_seconds_sum",
        "raftmq_publish_latency_seconds_count",
    ] {
        assert!(names.contains(n), "{n}");
    }
    // Counters are counters named _total; every family has its help.
    for s in &scrape.samples {
        if let prometheus_parse::Value::Counter(_) = s.value {
            assert!(s.metric.ends_with("_total"), "counter {}", s.metric);
        }
        let family = s.metric.trim_end_matches("_sum").trim_end_matches("_count");
        assert!(scrape.docs.contains_key(family), "no HELP for {}", s.metric);
    }
    assert_eq!(sample(&text, "raftmq_clients_connected"), 3.0);
    assert_eq!(sample(&text, "raftmq_publish_received_total"), 3.0);
    // Process figures.
    for n in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "process_threads",
    ] {
        assert!(names.contains(n), "{n} missing");
    }
    assert!(sample(&text, "process_resident_memory_bytes") > 1e6);
    eprintln!(
        "figures: {} metric families, {} series on a broker with 2 listeners",
        text.lines().filter(|l| l.starts_with("# TYPE ")).count(),
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .count()
    );
}

/// `raftmq_*` and `process_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    // String literals (label values, regexes) name no metric.
    let mut bare = String::with_capacity(expr.len());
    let (mut quoted, mut prev) = (false, ' ');
    for c in expr.chars() {
        if c == '"' && prev != '\\' {
            quoted = !quoted;
        }
        bare.push(if quoted || c == '"' { ' ' } else { c });
        prev = c;
    }
    // `$` belongs to the word so that Grafana variables are left out.
    bare.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '$'))
        .filter(|w| w.starts_with("raftmq_") || w.starts_with("process_"))
        .map(String::from)
        .collect()
}

/// Every PromQL expression in a Grafana dashboard: targets and variable
/// queries (the `label_values(...)` form is Grafana's, not PromQL).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<(String, bool)>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push((e.clone(), true)),
                    ("definition", serde_json::Value::String(e)) => out.push((e.clone(), false)),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(repo(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

/// The operator's own registry with every family holding a series (a
/// labelled family shows up only once a label value is used).
fn operator_series() -> BTreeSet<String> {
    let m = raftmq_operator::telemetry::Metrics::new().expect("operator metrics");
    m.observe("ok", Duration::from_millis(3));
    m.failures.with_label_values(&["api"]).inc();
    m.certificates_issued.with_label_values(&["ca"]).inc();
    m.leader.set(1);
    series_names(&parse(&m.render()))
}

#[test]
fn every_metric_in_dashboards_and_alert_rules_exists_on_live_brokers() {
    require_tool("promtool");
    // Two nodes, so that the leader exports per-follower replication lag;
    // one delivery, so that the labelled histograms have their series; a
    // bridge (to a port nobody listens on), so that its series exist.
    let bridge = format!(
        "[[bridges]]\nname = \"probe\"\naddresses = [\"127.0.0.1:{}\"]\ntopic = [\"b/# out 1\"]\n",
        raftmq_e2e::free_port()
    );
    let nodes = cluster::start_each(2, "", |_, c| c.raw(&bridge));
    let mut sub = open(&nodes[0], "sub", Protocol::V311, true);
    assert_eq!(sub.subscribe(1, "d", QoS::AtMostOnce), vec![0]);
    open(&nodes[0], "pub", Protocol::V311, true).publish("d", b"x", QoS::AtMostOnce, false, 0);
    sub.next_publish(WAIT).expect("delivered");
    let mut live = BTreeSet::new();
    let scrape_all = |live: &mut BTreeSet<String>| {
        for n in &nodes {
            let (status, text) = n.http_get("/metrics");
            assert_eq!(status, 200);
            live.extend(series_names(&parse(&text)));
        }
    };
    // The leader learns its follower's progress with the first heartbeats.
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        scrape_all(&mut live);
        !live.contains("raftmq_raft_replication_lag")
    } {
        assert!(
            Instant::now() < deadline,
            "no replication lag series: {live:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let operator = operator_series();

    // Each name must be exported by what the file is about: the operator's
    // dashboard by the operator, everything else by the brokers.
    let mut used = BTreeSet::new();
    let mut missing = Vec::new();
    let mut check = |name: String, file: &std::path::Path, exported: &BTreeSet<String>| {
        if !exported.contains(&name) {
            missing.push(format!("{name} (in {})", file.display()));
        }
        used.insert(name);
    };
    let mut promql = Vec::new();
    let mut dashboards = files("deploy/grafana", "json");
    dashboards.extend(files("charts/raftmq/dashboards", "json"));
    assert!(dashboards.len() >= 3, "{dashboards:?}");
    for path in &dashboards {
        let text = std::fs::read_to_string(path).expect("dashboard");
        let json: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut queries = Vec::new();
        dashboard_queries(&json, &mut queries);
        assert!(!queries.is_empty(), "{}", path.display());
        let about_operator = path.to_string_lossy().ends_with("raftmq-operator.json");
        let exported = if about_operator { &operator } else { &live };
        for (q, is_promql) in queries {
            for name in metric_names(&q) {
                check(name, path, exported);
            }
            if is_promql {
                promql.push(q);
            }
        }
    }
    let rules_path = repo("deploy/prometheus/raftmq-rules.yaml");
    let rules: serde_norway::Value =
        serde_norway::from_str(&std::fs::read_to_string(&rules_path).expect("rules"))
            .expect("rules are YAML");
    let mut alerts = 0;
    for group in rules["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let expr = rule["expr"].as_str().expect("expr");
            alerts += 1;
            for name in metric_names(expr) {
                check(name, &rules_path, &live);
            }
        }
    }
    assert!(alerts >= 4, "{alerts} alerts");
    for must in [
        "raftmq_clients_connected",
        "raftmq_publish_latency_seconds_bucket",
        "raftmq_raft_is_leader",
        "raftmq_operator_reconciles_total",
    ] {
        assert!(used.contains(must), "nothing uses {must}: {used:?}");
    }
    assert!(
        missing.is_empty(),
        "named but not exported:\n{}",
        missing.join("\n")
    );

    // Every panel expression is valid PromQL: promtool checks them as
    // recording rules, with Grafana's variables filled in.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = String::from("groups:\n  - name: dashboards\n    rules:\n");
    for (i, q) in promql.iter().enumerate() {
        let q = q
            .replace("$__rate_interval", "1m")
            .replace("$namespace", ".*")
            .replace("$pod", ".*");
        let quoted = serde_json::to_string(&q).expect("quote");
        file.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {quoted}\n"
        ));
    }
    let checked = dir.path().join("dashboards.yaml");
    std::fs::write(&checked, file).expect("write");
    for args in [
        vec![
            "check".to_string(),
            "rules".into(),
            checked.display().to_string(),
        ],
        vec![
            "check".into(),
            "rules".into(),
            rules_path.display().to_string(),
        ],
        // Each alert fires on what it is about, and not on a healthy cluster.
        vec![
            "test".into(),
            "rules".into(),
            repo("deploy/prometheus/raftmq-rules.test.yaml")
                .display()
                .to_string(),
        ],
    ] {
        let (code, out, err) = run(
            Command::new("promtool").args(&args),
            Duration::from_secs(60),
        );
        assert_eq!(code, Some(0), "promtool {args:?}:\n{out}{err}");
    }
}

#[test]
fn metric_name_extraction_counts_histogram_series() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.99, sum by (le) (rate(raftmq_publish_latency_seconds_bucket{pod=~\"$pod\"}[$__rate_interval])))"
        ),
        ["raftmq_publish_latency_seconds_bucket"]
    );
    assert_eq!(
        metric_names(
            "(up == 0) and on (instance) max_over_time(raftmq_raft_term[1d]) + process_open_fds"
        ),
        ["raftmq_raft_term", "process_open_fds"]
    );
    // Label values and variables are not metric names.
    assert!(metric_names("x{job=\"raftmq_x\"} + $raftmq_var").is_empty());
    let scrape = parse("# HELP h_seconds h\n# TYPE h_seconds histogram\nh_seconds_bucket{le=\"1\"} 1\nh_seconds_bucket{le=\"+Inf\"} 1\nh_seconds_sum 0.5\nh_seconds_count 1\n");
    let names: Vec<String> = series_names(&scrape).into_iter().collect();
    assert_eq!(
        names,
        ["h_seconds_bucket", "h_seconds_count", "h_seconds_sum"]
    );
}
