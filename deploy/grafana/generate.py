#!/usr/bin/env python3
"""Writes deploy/grafana/raftmq-overview.json and the Helm chart's copy of it
(charts/raftmq/dashboards/, which Helm can only read inside the chart).

Panels are data here so that the dashboard stays regular. Every metric named
must exist on a live /metrics and every expression must be valid PromQL: the
test suite checks both (tests/tests/observability.rs).

    python3 deploy/grafana/generate.py
"""
import json
import pathlib

# Every series is filtered by the dashboard's namespace and pod variables.
SEL = '{namespace=~"$namespace", pod=~"$pod"}'
RATE = "[$__rate_interval]"


def rate(metric, by="pod"):
    return f"sum by ({by}) (rate({metric}{SEL}{RATE}))"


def quantile(q, metric, by=""):
    by = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{SEL}{RATE})))"


# (row, [(title, [(legend, expr), ...], unit, kind), ...])
ROWS = [
    ("Connections", [
        ("Clients connected", [("clients", f"sum(raftmq_clients_connected{SEL})")], "short", "stat"),
        ("Clients connected per pod", [("{{pod}}", f"sum by (pod) (raftmq_clients_connected{SEL})")], "short", "timeseries"),
        ("Clients per listener", [("{{listener}}", f"sum by (listener) (raftmq_listener_clients_connected{SEL})")], "short", "timeseries"),
        ("New connections /s", [("{{pod}}", rate("raftmq_connections_total"))], "ops", "timeseries"),
        ("Auth failures /s", [("{{pod}}", rate("raftmq_auth_failures_total"))], "ops", "timeseries"),
        ("Refused /s", [
            ("at accept (limit) {{pod}}", rate("raftmq_connections_refused_total")),
            ("CONNECT refused {{pod}}", rate("raftmq_connects_refused_total")),
            ("TLS/WebSocket handshake failed {{pod}}", rate("raftmq_handshake_failures_total")),
        ], "ops", "timeseries"),
        ("Keep-alive timeouts /s", [("{{pod}}", rate("raftmq_keepalive_timeouts_total"))], "ops", "timeseries"),
        ("Protocol errors /s", [("{{pod}}", rate("raftmq_protocol_errors_total"))], "ops", "timeseries"),
    ]),
    ("Messages", [
        ("Publishes in /s", [("{{pod}}", rate("raftmq_publish_received_total"))], "ops", "timeseries"),
        ("Publishes out /s", [("{{pod}}", rate("raftmq_publish_sent_total"))], "ops", "timeseries"),
        ("Dropped /s", [("{{pod}}", rate("raftmq_publish_dropped_total"))], "ops", "timeseries"),
        ("Bytes in / out /s", [
            ("in", f"sum(rate(raftmq_bytes_received_total{SEL}{RATE}))"),
            ("out", f"sum(rate(raftmq_bytes_sent_total{SEL}{RATE}))"),
            ("payload in", f"sum(rate(raftmq_publish_bytes_received_total{SEL}{RATE}))"),
            ("payload out", f"sum(rate(raftmq_publish_bytes_sent_total{SEL}{RATE}))"),
        ], "Bps", "timeseries"),
        ("Publish-to-delivery latency", [
            ("p50", quantile(0.5, "raftmq_publish_latency_seconds")),
            ("p99", quantile(0.99, "raftmq_publish_latency_seconds")),
            ("p99.9", quantile(0.999, "raftmq_publish_latency_seconds")),
        ], "s", "timeseries"),
        ("PUBLISH packet size", [
            ("p50 {{direction}}", quantile(0.5, "raftmq_publish_size_bytes", "direction")),
            ("p99 {{direction}}", quantile(0.99, "raftmq_publish_size_bytes", "direction")),
        ], "bytes", "timeseries"),
        ("In flight / queued", [
            ("in flight {{pod}}", f"sum by (pod) (raftmq_messages_inflight{SEL})"),
            ("queued {{pod}}", f"sum by (pod) (raftmq_messages_queued{SEL})"),
        ], "short", "timeseries"),
    ]),
    ("State", [
        ("Sessions", [("{{pod}}", f"sum by (pod) (raftmq_sessions{SEL})")], "short", "timeseries"),
        ("Subscriptions", [("{{pod}}", f"sum by (pod) (raftmq_subscriptions{SEL})")], "short", "timeseries"),
        ("Retained messages", [("{{pod}}", f"max by (pod) (raftmq_retained_messages{SEL})")], "short", "timeseries"),
        ("Sessions expired /s", [("{{pod}}", rate("raftmq_sessions_expired_total"))], "ops", "timeseries"),
        ("Resident memory", [("{{pod}}", f"sum by (pod) (process_resident_memory_bytes{SEL})")], "bytes", "timeseries"),
        ("CPU", [("{{pod}}", f"sum by (pod) (rate(process_cpu_seconds_total{SEL}{RATE}))")], "percentunit", "timeseries"),
        ("Open file descriptors", [("{{pod}}", f"sum by (pod) (process_open_fds{SEL})")], "short", "timeseries"),
    ]),
    ("Cluster (Raft)", [
        ("Leader", [("leader node id", f"max(raftmq_raft_leader_id{SEL})")], "none", "stat"),
        ("Voters", [("voters", f"max(raftmq_raft_voters{SEL})")], "short", "stat"),
        ("Term", [("{{pod}}", f"max by (pod) (raftmq_raft_term{SEL})")], "none", "timeseries"),
        ("Leader changes", [("{{pod}}", f"sum by (pod) (increase(raftmq_raft_leader_changes_total{SEL}[1h]))")], "short", "timeseries"),
        ("Replication lag (entries, at the leader)", [("follower {{follower}}", f"max by (follower) (raftmq_raft_replication_lag{SEL})")], "short", "timeseries"),
        ("Apply latency", [
            ("p50", quantile(0.5, "raftmq_raft_apply_seconds")),
            ("p99", quantile(0.99, "raftmq_raft_apply_seconds")),
        ], "s", "timeseries"),
        ("Entries not yet applied", [("{{pod}}", f"max by (pod) (raftmq_raft_last_log_index{SEL} - raftmq_raft_applied_index{SEL})")], "short", "timeseries"),
        ("Log entries /s", [("{{pod}}", f"max by (pod) (rate(raftmq_raft_applied_index{SEL}{RATE}))")], "ops", "timeseries"),
        ("Snapshot size", [("{{pod}}", f"max by (pod) (raftmq_raft_snapshot_bytes{SEL})")], "bytes", "timeseries"),
    ]),
    ("Bridges", [
        ("Bridges connected", [("{{bridge}}", f"max by (bridge) (raftmq_bridge_connected{SEL})")], "none", "timeseries"),
        ("Bridged messages /s", [("{{bridge}} {{direction}}", f"sum by (bridge, direction) (rate(raftmq_bridge_messages_total{SEL}{RATE}))")], "ops", "timeseries"),
        ("Bridged payload /s", [("{{bridge}} {{direction}}", f"sum by (bridge, direction) (rate(raftmq_bridge_bytes_total{SEL}{RATE}))")], "Bps", "timeseries"),
        ("Bridge queue", [
            ("queued {{bridge}}", f"max by (bridge) (raftmq_bridge_queued_messages{SEL})"),
            ("dropped {{bridge}}", f"max by (bridge) (raftmq_bridge_dropped_messages{SEL})"),
        ], "short", "timeseries"),
        ("Bridge reconnects", [("{{bridge}}", f"sum by (bridge) (increase(raftmq_bridge_reconnects_total{SEL}[1h]))")], "short", "timeseries"),
    ]),
    ("Storage", [
        ("Pods whose storage fails", [("pods", f"count(raftmq_storage_healthy{SEL} == 0) or vector(0)")], "short", "stat"),
        ("Data dir free", [("{{pod}}", f"min by (pod) (raftmq_data_dir_free_bytes{SEL})")], "bytes", "timeseries"),
        ("Data dir free %", [("{{pod}}", f"min by (pod) (raftmq_data_dir_free_bytes{SEL} / raftmq_data_dir_size_bytes{SEL})")], "percentunit", "timeseries"),
        ("Storage healthy", [("{{pod}}", f"min by (pod) (raftmq_storage_healthy{SEL})")], "none", "timeseries"),
        ("Storage errors /s", [("{{pod}}", rate("raftmq_storage_errors_total"))], "ops", "timeseries"),
    ]),
]


def panel(pid, title, targets, unit, kind, x, y):
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard():
    panels, pid, y = [], 1, 0
    for row, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (title, targets, unit, kind) in enumerate(items):
            panels.append(panel(pid, title, targets, unit, kind, (i % 3) * 8, y + (i // 3) * 8))
            pid += 1
        y += ((len(items) + 2) // 3) * 8

    def var(name, query):
        return {
            "name": name, "type": "query", "refresh": 2, "includeAll": True, "multi": True,
            "allValue": ".*",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": {"query": query, "refId": name}, "definition": query, "current": {},
        }

    return {
        "uid": "raftmq-overview",
        "title": "raftmq / broker overview",
        "description": "One raftmq cluster or many: connections, message rates, drops, "
                       "latency, state, Raft and storage, per pod. Generated by deploy/grafana/generate.py.",
        "tags": ["raftmq", "mqtt"],
        "schemaVersion": 39,
        "version": 2,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "current": {}},
            var("namespace", "label_values(raftmq_clients_connected, namespace)"),
            var("pod", 'label_values(raftmq_clients_connected{namespace=~"$namespace"}, pod)'),
        ]},
        "panels": panels,
    }


def main():
    here = pathlib.Path(__file__).resolve().parent
    text = json.dumps(dashboard(), indent=2) + "\n"
    for out in (here / "raftmq-overview.json",
                here.parent.parent / "charts" / "raftmq" / "dashboards" / "raftmq-overview.json"):
        out.write_text(text)


if __name__ == "__main__":
    main()
