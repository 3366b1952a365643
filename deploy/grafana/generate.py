#!/usr/bin/env python3
"""Writes deploy/grafana/raftmq-overview.json. Panels are data here so that
the dashboard stays regular; every metric named must exist on a live
/metrics (the test suite checks it)."""
import json
import pathlib

ROWS = [
    ("Connections", [
        ("Clients connected", 'sum(raftmq_clients_connected{namespace=~"$namespace", pod=~"$pod"})', "short", "stat"),
        ("Clients connected per pod", 'sum by (pod) (raftmq_clients_connected{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
        ("Clients per listener", 'sum by (listener) (raftmq_listener_clients_connected{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
        ("New connections /s", 'sum by (pod) (rate(raftmq_connections_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Auth failures /s", 'sum by (pod) (rate(raftmq_auth_failures_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Refused at accept /s", 'sum by (pod) (rate(raftmq_connections_refused_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
    ]),
    ("Messages", [
        ("Publishes in /s", 'sum by (pod) (rate(raftmq_publish_received_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Publishes out /s", 'sum by (pod) (rate(raftmq_publish_sent_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Dropped /s", 'sum by (pod) (rate(raftmq_publish_dropped_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Bytes in / out /s", 'sum(rate(raftmq_bytes_received_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))\n---\nsum(rate(raftmq_bytes_sent_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "Bps", "timeseries"),
        ("Publish-to-delivery latency", 'histogram_quantile(0.5, sum by (le) (rate(raftmq_publish_latency_seconds_bucket{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval])))\n---\nhistogram_quantile(0.99, sum by (le) (rate(raftmq_publish_latency_seconds_bucket{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval])))\n---\nhistogram_quantile(0.999, sum by (le) (rate(raftmq_publish_latency_seconds_bucket{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval])))', "s", "timeseries"),
        ("In flight / queued", 'sum by (pod) (raftmq_messages_inflight{namespace=~"$namespace", pod=~"$pod"})\n---\nsum by (pod) (raftmq_messages_queued{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
    ]),
    ("State", [
        ("Sessions", 'sum by (pod) (raftmq_sessions{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
        ("Subscriptions", 'sum by (pod) (raftmq_subscriptions{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
        ("Retained messages", 'max by (pod) (raftmq_retained_messages{namespace=~"$namespace", pod=~"$pod"})', "short", "timeseries"),
        ("Protocol errors /s", 'sum by (pod) (rate(raftmq_protocol_errors_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "ops", "timeseries"),
        ("Resident memory", 'sum by (pod) (process_resident_memory_bytes{namespace=~"$namespace", pod=~"$pod"})', "bytes", "timeseries"),
        ("CPU", 'sum by (pod) (rate(process_cpu_seconds_total{namespace=~"$namespace", pod=~"$pod"}[$__rate_interval]))', "percentunit", "timeseries"),
    ]),
]


def panel(pid, title, exprs, unit, kind, x, y):
    targets = [
        {"refId": chr(ord("A") + i), "expr": e.strip(), "legendFormat": "{{pod}}"}
        for i, e in enumerate(exprs.split("---"))
    ]
    return {
        "id": pid,
        "type": kind,
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 8, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "targets": targets,
    }


def main():
    panels, pid, y = [], 1, 0
    for row, items in ROWS:
        panels.append({"id": pid, "type": "row", "title": row, "collapsed": False,
                       "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
        pid += 1
        y += 1
        for i, (title, expr, unit, kind) in enumerate(items):
            panels.append(panel(pid, title, expr, unit, kind, (i % 3) * 8, y + (i // 3) * 8))
            pid += 1
        y += ((len(items) + 2) // 3) * 8
    var = lambda name, query: {
        "name": name, "type": "query", "refresh": 2, "includeAll": True, "multi": True,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "query": {"query": query, "refId": name}, "definition": query, "current": {},
    }
    dashboard = {
        "uid": "raftmq-overview",
        "title": "raftmq / broker overview",
        "tags": ["raftmq", "mqtt"],
        "schemaVersion": 39,
        "version": 1,
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
    out = pathlib.Path(__file__).with_name("raftmq-overview.json")
    out.write_text(json.dumps(dashboard, indent=2) + "\n")


if __name__ == "__main__":
    main()
