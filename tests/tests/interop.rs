//! Interop: real third-party clients against raftmq. mosquitto_pub /
//! mosquitto_sub (Debian's mosquitto-clients) and paho-mqtt 2.x (Python,
//! driven through tests/clients/paho_client.py) publish and subscribe at
//! QoS 0/1/2 in MQTT 3.1.1 and 5.0, with retained messages, wills and
//! persistent sessions resumed with their queued messages. Every test
//! asserts what the client printed that it received.

use std::process::Command;
use std::time::Duration;

use raftmq_e2e::process::Proc;
use raftmq_e2e::{require_tool, run, Broker, BrokerConfig};
use serde_json::Value;

/// How long a client may take to do its part on a loaded machine.
const T: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------
// mosquitto_pub / mosquitto_sub
// ---------------------------------------------------------------------

fn version_flag(v5: bool) -> &'static str {
    if v5 {
        "mqttv5"
    } else {
        "mqttv311"
    }
}

/// `mosquitto_sub` against the broker, with `-d` so that the test sees the
/// SUBACK (and the QoS each PUBLISH arrived with) before it publishes.
/// `stdbuf -oL`: its debug lines are stdio-buffered when stdout is a pipe.
fn mosq_sub(b: &Broker, v5: bool, args: &[&str]) -> Proc {
    require_tool("mosquitto_sub");
    require_tool("stdbuf");
    let mut cmd = Command::new("stdbuf");
    cmd.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &b.ports.tcp.to_string(),
    ])
    .args(["-V", version_flag(v5), "-d"])
    .args(args);
    Proc::spawn(&mut cmd)
}

/// Waits until a `mosquitto_sub -d` has its SUBACK.
fn wait_suback(p: &mut Proc) {
    p.expect_line("SUBACK", |l| l.contains("received SUBACK"));
}

/// Runs `mosquitto_pub` to completion and asserts it exited 0.
fn mosq_pub(b: &Broker, v5: bool, args: &[&str]) {
    require_tool("mosquitto_pub");
    let (code, out, err) = run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &b.ports.tcp.to_string()])
            .args(["-V", version_flag(v5)])
            .args(args),
        T,
    );
    assert_eq!(
        code,
        Some(0),
        "mosquitto_pub {args:?} failed\nstdout:\n{out}\nstderr:\n{err}"
    );
}

/// `mosquitto_pub -l`: one message per stdin line, one connection.
fn mosq_pub_lines(b: &Broker, v5: bool, args: &[&str], lines: &[String]) -> Proc {
    require_tool("mosquitto_pub");
    let mut input = lines.join("\n");
    input.push('\n');
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &b.ports.tcp.to_string()])
        .args(["-V", version_flag(v5), "-l"])
        .args(args);
    Proc::spawn_with_stdin(&mut cmd, Some(&input))
}

/// The QoS of a `-d` debug line "Client x received PUBLISH (d0, q1, ...".
fn debug_publish_qos(line: &str) -> Option<u8> {
    let rest = line.split("received PUBLISH (").nth(1)?;
    let q = rest.split(", ").find(|f| f.starts_with('q'))?;
    q[1..].parse().ok()
}

/// Two concurrent `mosquitto_pub -l` publishers (20 messages each, to
/// their own topic) and then an end marker; a `mosquitto_sub -v` that
/// subscribed first must print exactly those 41 messages, each
/// publisher's in order, the marker last, every one at `qos`.
fn mosquitto_round_trip(sub_v5: bool, pub_v5: bool, qos: u8) {
    let b = Broker::start(BrokerConfig::new());
    let q = qos.to_string();
    let n = 20;
    let mut sub = mosq_sub(
        &b,
        sub_v5,
        &[
            "-i", "sub", "-q", &q, "-t", "it/#", "-v", "-C", "41", "-W", "40",
        ],
    );
    wait_suback(&mut sub);

    let msgs = |p: &str| (0..n).map(|i| format!("{p}-{i}")).collect::<Vec<_>>();
    let (a, c) = (msgs("a"), msgs("c"));
    let pa = mosq_pub_lines(&b, pub_v5, &["-i", "pa", "-q", &q, "-t", "it/a"], &a);
    let pc = mosq_pub_lines(&b, pub_v5, &["-i", "pc", "-q", &q, "-t", "it/c"], &c);
    for p in [pa, pc] {
        let (code, out, err) = p.finish(T);
        assert_eq!(code, Some(0), "mosquitto_pub -l: {out:?} {err}");
    }
    mosq_pub(
        &b,
        pub_v5,
        &["-i", "pe", "-q", &q, "-t", "it/end", "-m", "end"],
    );

    let (code, lines, err) = sub.finish(T);
    let got: Vec<&String> = lines.iter().filter(|l| l.starts_with("it/")).collect();
    assert_eq!(code, Some(0), "mosquitto_sub: {lines:#?}\n{err}");
    assert_eq!(got.len(), 2 * n + 1, "{lines:#?}");
    assert_eq!(got.last().map(|s| s.as_str()), Some("it/end end"));
    let per = |topic: &str| -> Vec<String> {
        got.iter()
            .filter_map(|l| l.strip_prefix(&format!("{topic} ")))
            .map(String::from)
            .collect()
    };
    assert_eq!(per("it/a"), a, "publisher a: content and order");
    assert_eq!(per("it/c"), c, "publisher c: content and order");
    let qoses: Vec<u8> = lines.iter().filter_map(|l| debug_publish_qos(l)).collect();
    assert_eq!(qoses, vec![qos; 2 * n + 1], "delivered QoS");
}

#[test]
fn mosquitto_v311_qos0() {
    mosquitto_round_trip(false, false, 0);
}

#[test]
fn mosquitto_v311_qos1() {
    mosquitto_round_trip(false, false, 1);
}

#[test]
fn mosquitto_v311_qos2() {
    mosquitto_round_trip(false, false, 2);
}

#[test]
fn mosquitto_v5_qos0() {
    mosquitto_round_trip(true, true, 0);
}

#[test]
fn mosquitto_v5_qos1() {
    mosquitto_round_trip(true, true, 1);
}

#[test]
fn mosquitto_v5_qos2() {
    mosquitto_round_trip(true, true, 2);
}

#[test]
fn mosquitto_v5_publisher_to_v311_subscriber() {
    mosquitto_round_trip(false, true, 1);
}

#[test]
fn mosquitto_v311_publisher_to_v5_subscriber() {
    mosquitto_round_trip(true, false, 2);
}

/// A retained message reaches a later subscriber with RETAIN set (in
/// either protocol), a live subscriber sees it with RETAIN clear, and an
/// empty retained payload clears it.
#[test]
fn mosquitto_retained_set_and_clear() {
    let b = Broker::start(BrokerConfig::new());
    let fmt = ["-F", "%r %q %t %p"];
    let mut live = mosq_sub(
        &b,
        true,
        &["-i", "live", "-t", "ret/#", "-q", "1", "-C", "1"],
    );
    wait_suback(&mut live);
    mosq_pub(
        &b,
        false,
        &["-i", "p1", "-q", "1", "-r", "-t", "ret/a", "-m", "kept"],
    );
    let (code, lines, err) = live.finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("received PUBLISH (d0, q1, r0,")),
        "a live subscriber gets RETAIN clear: {lines:#?}"
    );

    for v5 in [false, true] {
        let id = format!("late{}", u8::from(v5));
        let (code, out, err) = run(
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &b.ports.tcp.to_string()])
                .args(["-V", version_flag(v5), "-i", &id, "-q", "1"])
                .args(["-t", "ret/#", "-C", "1", "-W", "30"])
                .args(fmt),
            T,
        );
        assert_eq!(code, Some(0), "{out} {err}");
        assert_eq!(out, "1 1 ret/a kept\n", "v5={v5}");
    }

    // Clear with an empty retained payload, and retain another topic: a
    // new subscriber to both gets only the other one.
    mosq_pub(
        &b,
        true,
        &["-i", "p2", "-q", "1", "-r", "-n", "-t", "ret/a"],
    );
    mosq_pub(
        &b,
        true,
        &["-i", "p3", "-q", "1", "-r", "-t", "ret/b", "-m", "other"],
    );
    // The retained copies are sent at subscribe time, so a live publish
    // made after the SUBACK comes after them: the subscriber must print
    // the retained ret/b and then the live one, and never ret/a.
    let mut after = mosq_sub(
        &b,
        false,
        &[
            "-i",
            "after",
            "-q",
            "1",
            "-t",
            "ret/a",
            "-t",
            "ret/b",
            "-C",
            "2",
            "-W",
            "40",
            "-F",
            "%r %q %t %p",
        ],
    );
    wait_suback(&mut after);
    mosq_pub(
        &b,
        false,
        &["-i", "p4", "-q", "1", "-t", "ret/b", "-m", "live"],
    );
    let (code, lines, err) = after.finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let got: Vec<&String> = lines.iter().filter(|l| l.contains(" ret/")).collect();
    let got: Vec<&String> = got
        .into_iter()
        .filter(|l| !l.starts_with("Client "))
        .collect();
    assert_eq!(got, ["1 1 ret/b other", "0 1 ret/b live"], "{lines:#?}");
}

/// `mosquitto_sub` with a will, started and then killed by SIGKILL (the
/// broker sees the socket close without DISCONNECT): its will reaches a
/// subscriber, for a 3.1.1 and a 5.0 client.
#[test]
fn mosquitto_will_on_sigkill() {
    let b = Broker::start(BrokerConfig::new());
    let mut watch = mosq_sub(
        &b,
        false,
        &[
            "-i", "watch", "-q", "1", "-t", "will/#", "-v", "-C", "2", "-W", "40",
        ],
    );
    wait_suback(&mut watch);
    for (v5, name) in [(false, "w311"), (true, "w5")] {
        let topic = format!("will/{name}");
        let payload = format!("{name} is gone");
        let mut c = mosq_sub(
            &b,
            v5,
            &[
                "-i",
                name,
                "-t",
                "whatever",
                "--will-topic",
                &topic,
                "--will-payload",
                &payload,
                "--will-qos",
                "1",
            ],
        );
        wait_suback(&mut c);
        c.kill9();
        assert!(
            watch.wait_line(T, |l| l == format!("{topic} {payload}")),
            "will of {name}: {:#?}",
            watch.seen()
        );
    }
    let (code, lines, err) = watch.finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let got: Vec<&String> = lines.iter().filter(|l| l.starts_with("will/")).collect();
    assert_eq!(got, ["will/w311 w311 is gone", "will/w5 w5 is gone"]);
}

/// A client with a will that exits normally (mosquitto_sub -E sends
/// DISCONNECT after its SUBACK) leaves no will; a later SIGKILLed client's
/// will is the first and only thing the watcher gets.
#[test]
fn mosquitto_no_will_on_normal_disconnect() {
    let b = Broker::start(BrokerConfig::new());
    let mut watch = mosq_sub(
        &b,
        true,
        &[
            "-i", "watch", "-q", "1", "-t", "will/#", "-v", "-C", "1", "-W", "40",
        ],
    );
    wait_suback(&mut watch);
    for v5 in [false, true] {
        let id = format!("polite{}", u8::from(v5));
        let topic = format!("will/{id}");
        let (code, out, err) = run(
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &b.ports.tcp.to_string()])
                .args(["-V", version_flag(v5), "-i", &id, "-t", "x", "-E"])
                .args(["--will-topic", &topic, "--will-payload", "must not arrive"]),
            T,
        );
        assert_eq!(code, Some(0), "{out} {err}");
    }
    let mut rude = mosq_sub(
        &b,
        true,
        &[
            "-i",
            "rude",
            "-t",
            "x",
            "--will-topic",
            "will/rude",
            "--will-payload",
            "sentinel",
        ],
    );
    wait_suback(&mut rude);
    rude.kill9();
    let (code, lines, err) = watch.finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    let got: Vec<&String> = lines.iter().filter(|l| l.starts_with("will/")).collect();
    assert_eq!(got, ["will/rude sentinel"]);
}

/// `mosquitto_sub -c -i id -q 2` subscribes and leaves (3.1.1 clean
/// session 0; 5.0 clean start 0 with `-x` session expiry); messages
/// published at QoS 1 and 2 while it is away are queued, and the
/// reconnecting client gets them in order at their QoS.
fn mosquitto_persistent_session(v5: bool) {
    let b = Broker::start(BrokerConfig::new());
    let id = if v5 { "ps5" } else { "ps311" };
    let mut session = vec!["-c", "-i", id, "-q", "2", "-t", "ps/#"];
    if v5 {
        session.extend(["-x", "300"]);
    }
    let mut first = session.clone();
    first.push("-E");
    let (code, lines, err) = mosq_sub(&b, v5, &first).finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");

    // Published at QoS 1, 2, 1, 2 while the subscriber is away, and one
    // more publish of the same topics by a 5.0 client.
    for (i, qos) in ["1", "2", "1", "2"].iter().enumerate() {
        let m = format!("queued-{i}");
        mosq_pub(&b, false, &["-i", "pub", "-q", qos, "-t", "ps/x", "-m", &m]);
    }
    mosq_pub(
        &b,
        true,
        &["-i", "pub5", "-q", "2", "-t", "ps/y", "-m", "queued-4"],
    );

    let mut again = session.clone();
    again.extend(["-C", "5", "-W", "40", "-F", "%q %t %p"]);
    let (code, lines, err) = mosq_sub(&b, v5, &again).finish(T);
    assert_eq!(code, Some(0), "{lines:#?} {err}");
    // The broker sends the queue in order; the client hands a QoS 2
    // message to the application only at PUBREL, so the printed order
    // interleaves by QoS. Check the wire order from the debug lines and
    // the printed messages per QoS.
    let wire: Vec<u8> = lines.iter().filter_map(|l| debug_publish_qos(l)).collect();
    assert_eq!(wire, [1, 2, 1, 2, 2], "{lines:#?}");
    let printed = |q: &str| -> Vec<&str> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{q} ")))
            .filter(|l| l.starts_with("ps/"))
            .collect()
    };
    assert_eq!(
        printed("1"),
        ["ps/x queued-0", "ps/x queued-2"],
        "{lines:#?}"
    );
    assert_eq!(
        printed("2"),
        ["ps/x queued-1", "ps/x queued-3", "ps/y queued-4"],
        "{lines:#?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("received PUBLISH (d1")),
        "nothing was in flight, so nothing is a duplicate: {lines:#?}"
    );
}

#[test]
fn mosquitto_persistent_session_v311() {
    mosquitto_persistent_session(false);
}

#[test]
fn mosquitto_persistent_session_v5() {
    mosquitto_persistent_session(true);
}

// ---------------------------------------------------------------------
// paho-mqtt (Python)
// ---------------------------------------------------------------------

fn paho_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/clients/paho_client.py").to_string()
}

fn paho_cmd(b: &Broker, mode: &str, v5: bool, args: &[&str]) -> Command {
    require_tool("python3");
    let mut cmd = Command::new("python3");
    cmd.arg(paho_script())
        .arg(mode)
        .args(["--port", &b.ports.tcp.to_string()])
        .args(["--version", if v5 { "5" } else { "311" }])
        .args(["--timeout", "30"])
        .args(args);
    cmd
}

fn json_lines(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn events<'a>(vals: &'a [Value], kind: &str) -> Vec<&'a Value> {
    vals.iter().filter(|v| v["event"] == kind).collect()
}

/// A paho subscriber, followed until it reports its SUBACK.
fn paho_sub(b: &Broker, v5: bool, args: &[&str]) -> Proc {
    let mut p = Proc::spawn(&mut paho_cmd(b, "sub", v5, args));
    p.expect_line("ready", |l| l.contains(r#""event": "ready""#));
    p
}

/// Runs a paho client to completion; asserts exit 0; returns its events.
fn paho_run(b: &Broker, mode: &str, v5: bool, args: &[&str]) -> Vec<Value> {
    let (code, out, err) = run(&mut paho_cmd(b, mode, v5, args), T + T);
    assert_eq!(
        code,
        Some(0),
        "paho {mode} {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    json_lines(&out.lines().map(String::from).collect::<Vec<_>>())
}

/// Finishes a paho subscriber; asserts exit 0; returns its events.
fn paho_finish(p: Proc) -> Vec<Value> {
    let (code, lines, err) = p.finish(T + T);
    assert_eq!(
        code,
        Some(0),
        "paho sub\nstdout:\n{lines:#?}\nstderr:\n{err}"
    );
    json_lines(&lines)
}

fn payloads(msgs: &[&Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["payload"].as_str().expect("payload").to_string())
        .collect()
}

/// paho publisher → paho subscriber at QoS 0, 1 and 2: ten messages each,
/// received in order at the QoS asked for, no duplicates.
fn paho_qos_levels(v5: bool) {
    let b = Broker::start(BrokerConfig::new());
    for qos in 0..=2u8 {
        let q = qos.to_string();
        let topic = format!("paho/q{qos}");
        let sub = paho_sub(
            &b,
            v5,
            &["--id", "s", "--topic", &topic, "--qos", &q, "--count", "10"],
        );
        let sent: Vec<String> = (0..10).map(|i| format!("q{qos}-{i}")).collect();
        let mut args = vec!["--id", "p", "--topic", &topic, "--qos", &q];
        for m in &sent {
            args.extend(["--message", m]);
        }
        let out = paho_run(&b, "pub", v5, &args);
        assert_eq!(events(&out, "published")[0]["count"], 10);
        let got = paho_finish(sub);
        let msgs = events(&got, "message");
        assert_eq!(payloads(&msgs), sent, "QoS {qos}");
        for m in &msgs {
            assert_eq!(m["topic"], topic.as_str());
            assert_eq!(m["qos"], qos);
            assert_eq!(m["retain"], false);
            assert_eq!(m["dup"], false);
        }
    }
}

#[test]
fn paho_qos_levels_v311() {
    paho_qos_levels(false);
}

#[test]
fn paho_qos_levels_v5() {
    paho_qos_levels(true);
}

/// A retained message published by paho 5.0 reaches a later paho 3.1.1
/// subscriber with retain set; an empty retained payload clears it.
#[test]
fn paho_retained_set_and_clear() {
    let b = Broker::start(BrokerConfig::new());
    paho_run(
        &b,
        "pub",
        true,
        &[
            "--id",
            "p",
            "--topic",
            "pr/a",
            "--qos",
            "1",
            "--retain",
            "--message",
            "kept",
        ],
    );
    for v5 in [false, true] {
        let got = paho_finish(paho_sub(
            &b,
            v5,
            &["--id", "s", "--topic", "pr/#", "--qos", "1", "--count", "1"],
        ));
        let msgs = events(&got, "message");
        assert_eq!(payloads(&msgs), ["kept"]);
        assert_eq!(msgs[0]["retain"], true);
        assert_eq!(msgs[0]["topic"], "pr/a");
    }
    paho_run(
        &b,
        "pub",
        false,
        &[
            "--id",
            "p",
            "--topic",
            "pr/a",
            "--qos",
            "1",
            "--retain",
            "--message",
            "",
        ],
    );
    paho_run(
        &b,
        "pub",
        false,
        &[
            "--id",
            "p",
            "--topic",
            "pr/b",
            "--qos",
            "1",
            "--retain",
            "--message",
            "other",
        ],
    );
    // Subscribe to both: only pr/b is retained now.
    let got = paho_finish(paho_sub(
        &b,
        true,
        &[
            "--id", "s", "--topic", "pr/a", "--topic", "pr/b", "--qos", "1", "--count", "1",
        ],
    ));
    let msgs = events(&got, "message");
    assert_eq!(payloads(&msgs), ["other"]);
    assert_eq!(msgs[0]["topic"], "pr/b");
    // And nothing arrives within a second of subscribing to pr/a alone.
    let got = paho_finish(paho_sub(
        &b,
        false,
        &[
            "--id", "s2", "--topic", "pr/a", "--qos", "1", "--linger", "1",
        ],
    ));
    assert!(events(&got, "message").is_empty(), "{got:?}");
}

/// A paho client (3.1.1 and 5.0) with a will whose process exits without
/// DISCONNECT: the will reaches a paho subscriber. A client that
/// disconnects normally leaves no will: the watcher's first will is the
/// one of the client that died after it.
#[test]
fn paho_will_on_unclean_close_not_on_disconnect() {
    let b = Broker::start(BrokerConfig::new());
    let watch = paho_sub(
        &b,
        true,
        &[
            "--id", "watch", "--topic", "pw/#", "--qos", "1", "--count", "2",
        ],
    );
    for v5 in [false, true] {
        let id = format!("polite{}", u8::from(v5));
        let topic = format!("pw/{id}");
        paho_run(
            &b,
            "sub",
            v5,
            &[
                "--id",
                &id,
                "--will-topic",
                &topic,
                "--will-payload",
                "must not arrive",
                "--will-qos",
                "1",
            ],
        );
    }
    for v5 in [false, true] {
        let id = format!("rude{}", u8::from(v5));
        let topic = format!("pw/{id}");
        let payload = format!("{id} died");
        let out = paho_run(
            &b,
            "sub",
            v5,
            &[
                "--id",
                &id,
                "--will-topic",
                &topic,
                "--will-payload",
                &payload,
                "--will-qos",
                "1",
                "--abort",
            ],
        );
        assert_eq!(events(&out, "done").len(), 1);
    }
    let got = paho_finish(watch);
    let msgs = events(&got, "message");
    let seen: Vec<(String, String)> = msgs
        .iter()
        .map(|m| {
            (
                m["topic"].as_str().unwrap().into(),
                m["payload"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("pw/rude0".to_string(), "rude0 died".to_string()),
            ("pw/rude1".to_string(), "rude1 died".to_string()),
        ]
    );
}

/// paho subscribes with a persistent session (3.1.1 clean_session False;
/// 5.0 clean_start False with a SessionExpiryInterval) and disconnects;
/// QoS 1 and 2 messages published meanwhile are delivered when it comes
/// back without subscribing again, with session_present set.
fn paho_persistent_session(v5: bool) {
    let b = Broker::start(BrokerConfig::new());
    let id = if v5 { "pp5" } else { "pp311" };
    let mut first = vec!["--id", id, "--topic", "pp/#", "--qos", "2"];
    if v5 {
        // A fresh session (clean start) that outlives the connection.
        first.extend(["--session-expiry", "300"]);
    } else {
        first.push("--no-clean");
    }
    let got = paho_finish(paho_sub(&b, v5, &first));
    assert_eq!(events(&got, "connected")[0]["session_present"], false);
    assert_eq!(
        events(&got, "subscribed")[0]["granted"],
        serde_json::json!([2])
    );

    let sent: Vec<String> = (0..4).map(|i| format!("queued-{i}")).collect();
    for (i, m) in sent.iter().enumerate() {
        let q = if i % 2 == 0 { "1" } else { "2" };
        paho_run(
            &b,
            "pub",
            !v5,
            &["--id", "p", "--topic", "pp/t", "--qos", q, "--message", m],
        );
    }

    let mut again = vec!["--id", id, "--no-clean", "--count", "4"];
    if v5 {
        again.extend(["--session-expiry", "300"]);
    }
    let got = paho_finish(Proc::spawn(&mut paho_cmd(&b, "sub", v5, &again)));
    assert_eq!(
        events(&got, "connected")[0]["session_present"],
        true,
        "{got:?}"
    );
    // paho hands a QoS 2 message to the application at PUBREL, so the
    // order is checked per QoS.
    let msgs = events(&got, "message");
    let per_qos = |q: u64| -> Vec<String> {
        let of_q: Vec<&Value> = msgs.iter().copied().filter(|m| m["qos"] == q).collect();
        payloads(&of_q)
    };
    assert_eq!(per_qos(1), ["queued-0", "queued-2"], "{got:?}");
    assert_eq!(per_qos(2), ["queued-1", "queued-3"], "{got:?}");
    assert_eq!(msgs.len(), 4, "{got:?}");
    assert!(msgs.iter().all(|m| m["dup"] == false), "{got:?}");
}

#[test]
fn paho_persistent_session_v311() {
    paho_persistent_session(false);
}

#[test]
fn paho_persistent_session_v5() {
    paho_persistent_session(true);
}

/// MQTT 5 publish properties pass through unchanged from a paho publisher
/// to a paho subscriber: user properties (order and duplicates kept),
/// content type, response topic, correlation data.
#[test]
fn paho_v5_properties_round_trip() {
    let b = Broker::start(BrokerConfig::new());
    let sub = paho_sub(
        &b,
        true,
        &[
            "--id", "s", "--topic", "props", "--qos", "1", "--count", "1",
        ],
    );
    paho_run(
        &b,
        "pub",
        true,
        &[
            "--id",
            "p",
            "--topic",
            "props",
            "--qos",
            "1",
            "--message",
            "with properties",
            "--user-property",
            "k=v",
            "--user-property",
            "k=second",
            "--user-property",
            "trace=abc-123",
            "--content-type",
            "text/plain; charset=utf-8",
            "--response-topic",
            "props/reply",
            "--correlation-data",
            "corr-7",
        ],
    );
    let got = paho_finish(sub);
    let msgs = events(&got, "message");
    assert_eq!(payloads(&msgs), ["with properties"]);
    let props = &msgs[0]["properties"];
    assert_eq!(
        props["UserProperty"],
        serde_json::json!([["k", "v"], ["k", "second"], ["trace", "abc-123"]])
    );
    assert_eq!(props["ContentType"], "text/plain; charset=utf-8");
    assert_eq!(props["ResponseTopic"], "props/reply");
    assert_eq!(props["CorrelationData"], hex("corr-7"));
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}
