#!/usr/bin/env python3
"""A small paho-mqtt (2.x) client for the interop tests (tests/tests/interop.rs).

Two modes, both printing one JSON object per line on stdout (flushed at once,
so the test can follow along while the process runs):

  sub: connect, optionally subscribe, print {"event": "ready"} once the
       subscriptions are acknowledged, then print every message received
       until --count messages arrived or --timeout passed; then DISCONNECT
       (or, with --abort, exit without sending DISCONNECT).
  pub: connect, publish every --message in order at --qos, wait until each
       publish completed its QoS flow, then DISCONNECT.

Transports: TCP (default) or --transport websockets (--ws-path, default
/mqtt); --cafile turns TLS on (so websockets + --cafile is wss).

Events:
  {"event": "connected", "reason_code": int, "session_present": bool}
  {"event": "subscribed", "granted": [int, ...]}
  {"event": "ready"}
  {"event": "message", "topic": str, "payload": str, "qos": int,
   "retain": bool, "dup": bool, "properties": {...}}
  {"event": "published", "count": int}
  {"event": "done", "received": int}
  {"event": "error", "what": str}

Exit code 0 on success, 2 on a timeout or error.
"""

import argparse
import json
import os
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


_out = threading.Lock()


def emit(obj):
    with _out:
        sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
        sys.stdout.flush()


def fail(what):
    emit({"event": "error", "what": what})
    sys.stdout.flush()
    os._exit(2)


def props_json(props):
    if props is None:
        return {}
    out = props.json()
    if "UserProperty" in out:
        out["UserProperty"] = [list(kv) for kv in out["UserProperty"]]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["sub", "pub"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--version", choices=["311", "5"], default="311")
    ap.add_argument("--id", default="")
    ap.add_argument("--topic", action="append", default=[])
    ap.add_argument("--qos", type=int, default=0)
    ap.add_argument("--keepalive", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--transport", choices=["tcp", "websockets"], default="tcp")
    ap.add_argument("--ws-path", default="/mqtt")
    ap.add_argument("--cafile", default=None, help="TLS, trusting this CA")
    ap.add_argument("--username", default=None)
    ap.add_argument("--password", default=None)
    # Sessions: 3.1.1 clean session flag; 5.0 clean start + expiry.
    ap.add_argument("--no-clean", action="store_true")
    ap.add_argument("--session-expiry", type=int, default=None)
    # sub
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--linger", type=float, default=0.2,
                    help="without --count: seconds to stay after SUBACK")
    ap.add_argument("--abort", action="store_true",
                    help="exit without DISCONNECT (socket loss) when finished")
    # pub
    ap.add_argument("--message", action="append", default=[])
    ap.add_argument("--retain", action="store_true")
    ap.add_argument("--user-property", action="append", default=[],
                    help="key=value (5.0)")
    ap.add_argument("--content-type", default=None)
    ap.add_argument("--response-topic", default=None)
    ap.add_argument("--correlation-data", default=None)
    # will
    ap.add_argument("--will-topic", default=None)
    ap.add_argument("--will-payload", default="")
    ap.add_argument("--will-qos", type=int, default=0)
    ap.add_argument("--will-retain", action="store_true")
    a = ap.parse_args()

    v5 = a.version == "5"
    kwargs = {
        "callback_api_version": mqtt.CallbackAPIVersion.VERSION2,
        "client_id": a.id,
        "protocol": mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
    }
    if not v5:
        kwargs["clean_session"] = not a.no_clean
    kwargs["transport"] = a.transport
    c = mqtt.Client(**kwargs)
    if a.transport == "websockets":
        c.ws_set_options(path=a.ws_path)
    if a.cafile:
        c.tls_set(ca_certs=a.cafile)
    if a.username is not None:
        c.username_pw_set(a.username, a.password)
    # Every message is printed; nothing is re-ordered or held back by paho.
    c.max_inflight_messages_set(20)
    c.max_queued_messages_set(0)

    connected = threading.Event()
    subscribed = threading.Event()
    got_enough = threading.Event()
    state = {"received": 0, "connect_rc": None}
    lock = threading.Lock()

    def on_connect(client, userdata, flags, reason_code, properties):
        state["connect_rc"] = reason_code.value
        emit({
            "event": "connected",
            "reason_code": reason_code.value,
            "session_present": bool(flags.session_present),
        })
        connected.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        emit({"event": "subscribed", "granted": [rc.value for rc in reason_codes]})
        subscribed.set()

    def on_message(client, userdata, msg):
        with lock:
            emit({
                "event": "message",
                "topic": msg.topic,
                "payload": msg.payload.decode("utf-8", "replace"),
                "qos": msg.qos,
                "retain": bool(msg.retain),
                "dup": bool(msg.dup),
                "properties": props_json(getattr(msg, "properties", None)) if v5 else {},
            })
            state["received"] += 1
            if a.count and state["received"] >= a.count:
                got_enough.set()

    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    c.on_message = on_message

    if a.will_topic is not None:
        c.will_set(a.will_topic, a.will_payload, qos=a.will_qos, retain=a.will_retain)

    connect_props = None
    clean_start = mqtt.MQTT_CLEAN_START_FIRST_ONLY
    if v5:
        clean_start = not a.no_clean
        if a.session_expiry is not None:
            connect_props = Properties(PacketTypes.CONNECT)
            connect_props.SessionExpiryInterval = a.session_expiry
    try:
        if v5:
            c.connect(a.host, a.port, a.keepalive, clean_start=clean_start,
                      properties=connect_props)
        else:
            c.connect(a.host, a.port, a.keepalive)
    except Exception as e:  # noqa: BLE001 - reported to the test
        fail(f"connect: {e}")
    c.loop_start()
    if not connected.wait(a.timeout):
        fail("no CONNACK")
    if state["connect_rc"] != 0:
        fail(f"connect refused: {state['connect_rc']}")

    if a.mode == "sub":
        if a.topic:
            c.subscribe([(t, a.qos) for t in a.topic])
            if not subscribed.wait(a.timeout):
                fail("no SUBACK")
        emit({"event": "ready"})
        if a.count:
            got_enough.wait(a.timeout)
            # Let paho send the PUBACK / PUBCOMP of the last message.
            time.sleep(0.3)
        else:
            time.sleep(a.linger)
        ok = not a.count or got_enough.is_set()
    else:
        props = None
        if v5 and (a.user_property or a.content_type or a.response_topic
                   or a.correlation_data):
            props = Properties(PacketTypes.PUBLISH)
            if a.user_property:
                props.UserProperty = [tuple(kv.split("=", 1)) for kv in a.user_property]
            if a.content_type:
                props.ContentType = a.content_type
            if a.response_topic:
                props.ResponseTopic = a.response_topic
            if a.correlation_data:
                props.CorrelationData = a.correlation_data.encode()
        infos = []
        for m in a.message:
            for t in a.topic:
                infos.append(c.publish(t, m, qos=a.qos, retain=a.retain, properties=props))
        deadline = time.monotonic() + a.timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
        ok = all(info.is_published() for info in infos)
        emit({"event": "published", "count": sum(1 for i in infos if i.is_published())})

    if a.abort:
        # Socket loss: the process dies without a DISCONNECT; the kernel
        # closes the socket.
        emit({"event": "done", "received": state["received"]})
        os._exit(0 if ok else 2)
    c.disconnect()
    c.loop_stop()
    emit({"event": "done", "received": state["received"]})
    sys.exit(0 if ok else 2)


if __name__ == "__main__":
    main()
