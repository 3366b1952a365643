//! The broker's figures, kept as Prometheus metrics from the start so that
//! `/metrics` and `$SYS` read the very same numbers. Counters are single
//! relaxed atomics on the hot path.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

macro_rules! metrics {
    (
        counters { $($c:ident => $ch:literal,)* }
        gauges { $($g:ident => $gh:literal,)* }
    ) => {
        pub struct Stats {
            pub registry: Registry,
            $(#[doc = $ch] pub $c: IntCounter,)*
            $(#[doc = $gh] pub $g: IntGauge,)*
            /// Seconds from a PUBLISH arriving to its copy being written.
            pub publish_latency: Histogram,
            /// Sizes of PUBLISH packets received and sent.
            pub packet_size: prometheus::HistogramVec,
            /// `packet_size{direction="in"}`, looked up once: a label
            /// lookup per message would hash and lock on the hot path.
            pub packet_size_in: Histogram,
            /// `packet_size{direction="out"}`.
            pub packet_size_out: Histogram,
            /// Connections accepted per listener.
            pub listener_connections: IntCounterVec,
            /// Clients connected now per listener.
            pub listener_clients: IntGaugeVec,
        }

        impl Default for Stats {
            fn default() -> Self {
                let registry = Registry::new();
                $(let $c = IntCounter::with_opts(Opts::new(concat!("raftmq_", stringify!($c), "_total"), $ch))
                    .expect("static metric definition");
                  registry.register(Box::new($c.clone())).expect("unique metric name");)*
                $(let $g = IntGauge::with_opts(Opts::new(concat!("raftmq_", stringify!($g)), $gh))
                    .expect("static metric definition");
                  registry.register(Box::new($g.clone())).expect("unique metric name");)*
                let publish_latency = Histogram::with_opts(
                    HistogramOpts::new(
                        "raftmq_publish_latency_seconds",
                        "Seconds from a PUBLISH arriving to its copy being written to a subscriber",
                    )
                    .buckets(vec![
                        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    ]),
                )
                .expect("static metric definition");
                registry.register(Box::new(publish_latency.clone())).expect("unique metric name");
                let packet_size = prometheus::HistogramVec::new(
                    HistogramOpts::new("raftmq_publish_size_bytes", "Sizes of PUBLISH packets")
                        .buckets(prometheus::exponential_buckets(16.0, 4.0, 10).expect("static buckets")),
                    &["direction"],
                )
                .expect("static metric definition");
                registry.register(Box::new(packet_size.clone())).expect("unique metric name");
                let packet_size_in = packet_size.with_label_values(&["in"]);
                let packet_size_out = packet_size.with_label_values(&["out"]);
                let listener_connections = IntCounterVec::new(
                    Opts::new("raftmq_listener_connections_total", "Connections accepted per listener"),
                    &["listener"],
                )
                .expect("static metric definition");
                registry.register(Box::new(listener_connections.clone())).expect("unique metric name");
                let listener_clients = IntGaugeVec::new(
                    Opts::new("raftmq_listener_clients_connected", "Clients connected now per listener"),
                    &["listener"],
                )
                .expect("static metric definition");
                registry.register(Box::new(listener_clients.clone())).expect("unique metric name");
                #[cfg(target_os = "linux")]
                {
                    let process = prometheus::process_collector::ProcessCollector::for_self();
                    let _ = registry.register(Box::new(process));
                }
                Stats {
                    registry,
                    $($c,)*
                    $($g,)*
                    publish_latency,
                    packet_size,
                    packet_size_in,
                    packet_size_out,
                    listener_connections,
                    listener_clients,
                }
            }
        }
    };
}

metrics! {
    counters {
        connections => "MQTT connections accepted (CONNACK success)",
        sockets => "Sockets accepted by the listeners",
        connections_refused => "Sockets refused at accept because a connection limit was reached",
        connects_refused => "CONNECTs refused (protocol, client id, authentication)",
        auth_failures => "CONNECTs refused for bad or missing credentials",
        session_takeover_refused => "CONNECTs refused because their client id (its connection or session) belongs to another identity",
        publish_denied => "PUBLISHes refused by the ACL or because their topic is reserved to the broker ($SYS)",
        publish_quota_refused => "QoS 1/2 PUBLISHes refused because the memory budget (mqtt.max_memory) was spent",
        memory_dropped => "QoS 0 copies and retained QoS 0 messages dropped because the memory budget was spent",
        handshake_failures => "TLS or WebSocket handshakes that failed or timed out",
        messages_received => "MQTT packets received",
        messages_sent => "MQTT packets sent",
        publish_received => "PUBLISH packets received",
        publish_sent => "PUBLISH packets sent",
        publish_dropped => "Message copies dropped by a queue limit, expiry or the client's maximum packet size",
        bytes_received => "Bytes received from clients",
        bytes_sent => "Bytes sent to clients",
        publish_bytes_received => "PUBLISH payload bytes received",
        publish_bytes_sent => "PUBLISH payload bytes sent",
        protocol_errors => "Connections closed for malformed or protocol-violating input",
        sessions_expired => "Persistent sessions that expired",
        keepalive_timeouts => "Connections closed because the keep alive elapsed",
    }
    gauges {
        clients_connected => "Clients connected now",
        clients_maximum => "Most clients connected at once since start",
        sessions => "Sessions, connected or not",
        subscriptions => "Subscriptions",
        retained_messages => "Retained messages",
        messages_inflight => "QoS 1/2 copies sent and not yet acknowledged",
        messages_queued => "Copies queued for sessions beyond their in-flight window",
        memory_budget_bytes => "The memory budget for held messages (mqtt.max_memory)",
        memory_held_bytes => "Bytes of the messages held now (queued, in flight, retained, wills, replicated copies)",
    }
}

impl Stats {
    pub fn connected(&self) {
        self.clients_connected.inc();
        let now = self.clients_connected.get();
        if now > self.clients_maximum.get() {
            self.clients_maximum.set(now);
        }
        self.connections.inc();
    }

    pub fn disconnected(&self) {
        self.clients_connected.dec();
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_else(|e| format!("# encoding failed: {e}\n"))
    }
}
