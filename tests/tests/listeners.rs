//! Every listener with real clients, all of them running together from
//! one configuration: TCP with `-u/-P`, TLS with `--cafile` (TLS 1.2 and
//! 1.3 accepted, 1.1 refused), mutual TLS whose certificate CN is the ACL
//! username, TLS-PSK whose identity is the ACL username, WebSocket and
//! secure WebSocket with paho-mqtt, and a session begun over WebSocket and
//! resumed over TCP with the message queued for it meanwhile.
//!
//! Certificates are made by each test (tests/common/certs.rs).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use raftmq::codec::{Protocol, QoS};
use raftmq_e2e::access::{alive, login, password_file};
use raftmq_e2e::certs::{Ca, PairFiles};
use raftmq_e2e::raw::RawClient;
use raftmq_e2e::{eventually, free_port, require_tool, run, Broker, BrokerConfig};
use serde_json::Value;

/// How long a client process may take on a loaded machine.
const T: Duration = Duration::from_secs(30);

const PSK_KEY: &str = "00112233445566778899aabbccddeeff";
const BACKEND: (&str, &str) = ("backend", "backend-pw");

const ACL: &str = "\
user backend
topic readwrite #

# The CN of a client certificate on the mutual-TLS listener.
user gw-a
topic readwrite gw/a/#

# A PSK identity.
user gw1
topic readwrite psk/gw1/#
";

/// A broker with every listener kind, and the files its clients need.
struct Site {
    broker: Broker,
    dir: tempfile::TempDir,
    ca: PathBuf,
    /// A CA the broker does not trust, and a client certificate it signed.
    other_ca: PathBuf,
    stranger: PairFiles,
    /// CN `gw-a`, signed by the trusted CA.
    gw_a: PairFiles,
    /// The mutual-TLS listener (require_certificate, identity as username).
    mtls: u16,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("raftmq test CA");
    let other = Ca::new("somebody else's CA");
    let server = ca.server().write(d, "server");
    let gw_a = ca.client("gw-a").write(d, "gw-a");
    let stranger = other.client("gw-a").write(d, "stranger");
    let ca_path = ca.write(d, "ca.crt");
    let other_ca = other.write(d, "other-ca.crt");
    std::fs::write(d.join("acl"), ACL).unwrap();
    std::fs::write(
        d.join("psk"),
        format!("# identity:key\ngw1:{PSK_KEY}\ngw2:ffeeddccbbaa99887766554433221100\n"),
    )
    .unwrap();
    let pw = password_file(d, "passwd", &[BACKEND]);
    let mtls = free_port();
    let (cert, key) = (server.cert.display(), server.key.display());
    let config = format!(
        r#"
[auth]
password_file = "{pw}"
acl_file = "{acl}"
auth_fail_delay_ms = 10

[[listeners]]
kind = "tcp"
bind = "127.0.0.1:{{tcp}}"

[[listeners]]
kind = "tls"
bind = "127.0.0.1:{{tls}}"
certfile = "{cert}"
keyfile = "{key}"

[[listeners]]
name = "mtls"
kind = "tls"
bind = "127.0.0.1:{mtls}"
certfile = "{cert}"
keyfile = "{key}"
cafile = "{ca}"
require_certificate = true
use_identity_as_username = true

[[listeners]]
kind = "psk"
bind = "127.0.0.1:{{psk}}"
psk_file = "{psk}"
psk_hint = "raftmq"
use_identity_as_username = true

[[listeners]]
kind = "ws"
bind = "127.0.0.1:{{ws}}"

[[listeners]]
kind = "wss"
bind = "127.0.0.1:{{wss}}"
certfile = "{cert}"
keyfile = "{key}"
"#,
        pw = pw.display(),
        acl = d.join("acl").display(),
        ca = ca_path.display(),
        psk = d.join("psk").display(),
    );
    let broker = Broker::start(BrokerConfig::new().raw(&config));
    // The harness waits for the TCP listener, which is bound first.
    let p = broker.ports;
    for port in [p.tls, mtls, p.psk, p.ws, p.wss] {
        let up = eventually(T, || TcpStream::connect(("127.0.0.1", port)).is_ok());
        assert!(up, "nothing listens on {port}:\n{}", broker.logs());
    }
    Site {
        broker,
        dir,
        ca: ca_path,
        other_ca,
        stranger,
        gw_a,
        mtls,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

/// Runs a mosquitto client against 127.0.0.1:`port`; (exit code, stdout,
/// stderr). The host is `localhost` when TLS certificates are checked.
fn mosquitto(tool: &str, port: u16, args: &[&str]) -> (i32, String, String) {
    require_tool(tool);
    let host = if args.contains(&"--cafile") {
        "localhost"
    } else {
        "127.0.0.1"
    };
    let (code, out, err) = run(
        Command::new(tool)
            .args(["-h", host, "-p", &port.to_string()])
            .args(args),
        T,
    );
    let code = code.unwrap_or_else(|| panic!("{tool} {args:?} did not finish:\n{out}\n{err}"));
    (code, out, err)
}

/// mosquitto_pub that must succeed; returns its stderr (where a refused
/// PUBLISH shows up as "Publish 1 failed: Not authorized").
fn publish_ok(port: u16, args: &[&str]) -> String {
    let (code, out, err) = mosquitto("mosquitto_pub", port, args);
    assert_eq!(code, 0, "mosquitto_pub {args:?}\n{out}\n{err}");
    err
}

/// mosquitto_sub for the first retained message under `filter`.
fn first_retained(port: u16, filter: &str, args: &[&str]) -> String {
    let mut all = vec!["-t", filter, "-C", "1", "-W", "20", "-v"];
    all.extend_from_slice(args);
    let (code, out, err) = mosquitto("mosquitto_sub", port, &all);
    assert_eq!(code, 0, "mosquitto_sub {all:?}\n{out}\n{err}");
    out.trim_end().to_string()
}

fn paho_script() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/clients/paho_client.py").to_string()
}

/// Runs tests/clients/paho_client.py to completion; asserts exit 0;
/// returns its JSON events.
fn paho(port: u16, mode: &str, args: &[&str]) -> Vec<Value> {
    require_tool("python3");
    let mut cmd = Command::new("python3");
    cmd.arg(paho_script())
        .arg(mode)
        .args(["--host", "localhost", "--port", &port.to_string()])
        .args(args);
    let (code, out, err) = run(&mut cmd, T + T);
    assert_eq!(
        code,
        Some(0),
        "paho {mode} {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn messages(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .filter(|e| e["event"] == "message")
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or_default().to_string(),
                e["payload"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

const NOT_AUTHORIZED: &str = "Not authorized";

#[test]
fn tls_with_a_ca_file_and_passwords() {
    let site = site();
    let port = site.broker.ports.tls;
    let ca = s(&site.ca);
    let creds = ["-u", BACKEND.0, "-P", BACKEND.1];
    for version in ["tlsv1.2", "tlsv1.3"] {
        let topic = format!("tls/{version}");
        let mut args = vec!["--cafile", ca, "--tls-version", version];
        args.extend(creds);
        args.extend(["-q", "1", "-r", "-t", &topic, "-m", version]);
        publish_ok(port, &args);
    }
    assert_eq!(
        first_retained(
            port,
            "tls/tlsv1.3",
            &["--cafile", ca, "-u", "backend", "-P", "backend-pw"]
        ),
        "tls/tlsv1.3 tlsv1.3"
    );
    // A wrong password over TLS: CONNACK 5 (3.1.1), as over TCP.
    let (code, _, _) = mosquitto(
        "mosquitto_pub",
        port,
        &[
            "--cafile", ca, "-u", "backend", "-P", "nope", "-t", "x", "-m", "x",
        ],
    );
    assert_eq!(code, 5);
    // A client that does not trust our CA, and one that speaks plain MQTT
    // to the TLS port, do not get through.
    let (code, _, err) = mosquitto(
        "mosquitto_pub",
        port,
        &[
            "--cafile",
            s(&site.other_ca),
            "-u",
            "backend",
            "-P",
            "backend-pw",
            "-t",
            "x",
            "-m",
            "x",
        ],
    );
    assert_ne!(code, 0, "{err}");
    let (code, _, err) = mosquitto(
        "mosquitto_pub",
        port,
        &["-u", "backend", "-P", "backend-pw", "-t", "x", "-m", "x"],
    );
    assert_ne!(code, 0, "{err}");
}

/// `openssl s_client` with one protocol version; (exit code, output).
fn s_client(port: u16, version: &str, extra: &[&str]) -> (Option<i32>, String) {
    require_tool("openssl");
    let (code, out, err) = run(
        Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .arg(version)
            .args(extra),
        T,
    );
    (code, out + &err)
}

#[test]
fn tls_1_2_and_1_3_are_accepted_and_1_1_is_refused() {
    let site = site();
    let port = site.broker.ports.tls;
    let ca = s(&site.ca);
    for (flag, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (code, out) = s_client(port, flag, &["-CAfile", ca, "-verify_return_error"]);
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains(&format!("New, {name}, Cipher is")), "{out}");
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    }
    // OpenSSL 3 offers TLS 1.1 only at security level 0. That this client
    // can speak it is shown against an openssl s_server that accepts it.
    let old = ["-cipher", "DEFAULT@SECLEVEL=0"];
    let (code, out) = s_client(port, "-tls1_1", &old);
    assert_ne!(code, Some(0), "{out}");
    assert!(
        out.contains("Cipher is (NONE)"),
        "TLS 1.1 handshake completed:\n{out}"
    );
    let control = free_port();
    let server = site.dir.path().join("server");
    let mut s_server = Command::new("openssl")
        .args(["s_server", "-quiet", "-tls1_1", "-accept"])
        .arg(format!("127.0.0.1:{control}"))
        .arg("-cert")
        .arg(server.with_extension("crt"))
        .arg("-key")
        .arg(server.with_extension("key"))
        .args(old)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl s_server");
    let up = eventually(T, || TcpStream::connect(("127.0.0.1", control)).is_ok());
    let (_, out) = s_client(control, "-tls1_1", &old);
    let _ = s_server.kill();
    let _ = s_server.wait();
    assert!(up, "openssl s_server did not listen");
    assert!(
        out.contains("Protocol  : TLSv1.1") && !out.contains("Cipher is (NONE)"),
        "the control handshake failed, so the refusal above proves nothing:\n{out}"
    );
}

#[test]
fn mutual_tls_makes_the_certificate_cn_the_acl_username() {
    let site = site();
    let port = site.mtls;
    let (ca, cert, key) = (s(&site.ca), s(&site.gw_a.cert), s(&site.gw_a.key));
    let tls = ["--cafile", ca, "--cert", cert, "--key", key, "-V", "mqttv5"];
    let mut own = tls.to_vec();
    own.extend(["-q", "1", "-r", "-t", "gw/a/state", "-m", "on", "-d"]);
    let err = publish_ok(port, &own);
    assert!(!err.contains(NOT_AUTHORIZED), "{err}");
    // Another gateway's topic: PUBACK 0x87. A username and password in the
    // CONNECT change nothing: the certificate says who this is.
    for extra in [&[][..], &["-u", "backend", "-P", "backend-pw"][..]] {
        let mut args = tls.to_vec();
        args.extend(["-q", "1", "-t", "gw/b/state", "-m", "x"]);
        args.extend(extra);
        let err = publish_ok(port, &args);
        assert!(err.contains(NOT_AUTHORIZED), "{extra:?}: {err}");
    }
    assert_eq!(first_retained(port, "gw/a/#", &tls), "gw/a/state on");
    // No certificate, or one from a CA we do not trust: no connection.
    let (code, _, err) = mosquitto(
        "mosquitto_pub",
        port,
        &["--cafile", ca, "-t", "gw/a/x", "-m", "x"],
    );
    assert_ne!(code, 0, "{err}");
    let stranger = [
        "--cafile",
        ca,
        "--cert",
        s(&site.stranger.cert),
        "--key",
        s(&site.stranger.key),
        "-t",
        "gw/a/x",
        "-m",
        "x",
    ];
    let (code, _, err) = mosquitto("mosquitto_pub", port, &stranger);
    assert_ne!(code, 0, "{err}");
}

#[test]
fn psk_identity_is_the_acl_username() {
    let site = site();
    let port = site.broker.ports.psk;
    for version in ["tlsv1.2", "tlsv1.3"] {
        let topic = format!("psk/gw1/{version}");
        let args = [
            "--psk",
            PSK_KEY,
            "--psk-identity",
            "gw1",
            "--tls-version",
            version,
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-r",
            "-t",
            &topic,
            "-m",
            version,
        ];
        let err = publish_ok(port, &args);
        assert!(!err.contains(NOT_AUTHORIZED), "{version}: {err}");
    }
    let psk = ["--psk", PSK_KEY, "--psk-identity", "gw1"];
    assert_eq!(
        first_retained(port, "psk/gw1/tlsv1.2", &psk),
        "psk/gw1/tlsv1.2 tlsv1.2"
    );
    // gw1 may not publish as gw2, whatever username it sends.
    let args = [
        "--psk",
        PSK_KEY,
        "--psk-identity",
        "gw1",
        "-V",
        "mqttv5",
        "-u",
        "backend",
        "-P",
        "backend-pw",
        "-q",
        "1",
        "-t",
        "psk/gw2/x",
        "-m",
        "x",
    ];
    assert!(publish_ok(port, &args).contains(NOT_AUTHORIZED));
    // A wrong key, or an identity that is not in the file: no connection.
    for (key, id) in [
        (&PSK_KEY[2..], "gw1"),
        ("ffeeddccbbaa99887766554433221100", "gw1"),
        (PSK_KEY, "nobody"),
    ] {
        let (code, _, err) = mosquitto(
            "mosquitto_pub",
            port,
            &[
                "--psk",
                key,
                "--psk-identity",
                id,
                "-t",
                "psk/gw1/x",
                "-m",
                "x",
            ],
        );
        assert_ne!(code, 0, "key {key} identity {id}: {err}");
    }
    // The identity hint (psk_hint), as a TLS 1.2 client sees it.
    let (code, out) = s_client(port, "-tls1_2", &["-psk", PSK_KEY, "-psk_identity", "gw1"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("PSK identity hint: raftmq"), "{out}");
}

/// Sends an HTTP upgrade request for `path` offering `protocols`; returns
/// the response head.
fn upgrade(port: u16, path: &str, protocols: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(T)).ok();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {protocols}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).expect("send the upgrade");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).to_lowercase()
}

#[test]
fn websocket_and_secure_websocket_with_paho() {
    let site = site();
    let ca = s(&site.ca);
    let b = &site.broker;
    let creds = ["--username", BACKEND.0, "--password", BACKEND.1];
    for (port, name, tls) in [
        (b.ports.ws, "ws", &[][..]),
        (b.ports.wss, "wss", &["--cafile", ca][..]),
    ] {
        for version in ["311", "5"] {
            let topic = format!("{name}/v{version}");
            let mut args = vec!["--transport", "websockets", "--version", version];
            args.extend(tls);
            args.extend(creds);
            let mut publish = args.clone();
            publish.extend([
                "--topic",
                &topic,
                "--qos",
                "1",
                "--retain",
                "--message",
                name,
            ]);
            paho(port, "pub", &publish);
            let mut subscribe = args.clone();
            subscribe.extend(["--topic", &topic, "--qos", "1", "--count", "1"]);
            let got = messages(&paho(port, "sub", &subscribe));
            assert_eq!(
                got,
                vec![(topic.clone(), name.to_string())],
                "{name} v{version}"
            );
        }
    }
    // The upgrade itself: path /mqtt, subprotocol mqtt (or MQTT 3.1's
    // mqttv3.1) echoed; another path is not found.
    let head = upgrade(b.ports.ws, "/mqtt", "mqtt");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("sec-websocket-protocol: mqtt\r\n"), "{head}");
    let head = upgrade(b.ports.ws, "/mqtt", "mqttv3.1");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("sec-websocket-protocol: mqttv3.1\r\n"),
        "{head}"
    );
    let head = upgrade(b.ports.ws, "/elsewhere", "mqtt");
    assert!(head.starts_with("http/1.1 404"), "{head}");
}

#[test]
fn all_listeners_together_and_a_websocket_session_resumed_over_tcp() {
    let site = site();
    let b = &site.broker;
    let (ca, cert, key) = (s(&site.ca), s(&site.gw_a.cert), s(&site.gw_a.key));
    let mut watch = RawClient::open(
        b.tcp_addr(),
        login(Protocol::V5, "watch", true, Some(BACKEND)),
    )
    .0;
    assert_eq!(watch.subscribe(1, "#", QoS::AtLeastOnce), vec![1]);

    let creds = &["-u", BACKEND.0, "-P", BACKEND.1][..];
    let q1 = &["-q", "1", "-m", "hi", "-t"][..];
    let runs = [
        (b.ports.tcp, [creds, q1, &["all/tcp"]].concat()),
        (
            b.ports.tls,
            [&["--cafile", ca], creds, q1, &["all/tls"]].concat(),
        ),
        (
            site.mtls,
            [
                &["--cafile", ca, "--cert", cert, "--key", key],
                q1,
                &["gw/a/all"],
            ]
            .concat(),
        ),
        (
            b.ports.psk,
            [
                &["--psk", PSK_KEY, "--psk-identity", "gw1"],
                q1,
                &["psk/gw1/all"],
            ]
            .concat(),
        ),
    ];
    for (port, args) in &runs {
        publish_ok(*port, args);
    }
    let paho_creds = ["--username", BACKEND.0, "--password", BACKEND.1];
    for (port, topic, tls) in [
        (b.ports.ws, "all/ws", &[][..]),
        (b.ports.wss, "all/wss", &["--cafile", ca][..]),
    ] {
        let mut args = vec![
            "--transport",
            "websockets",
            "--topic",
            topic,
            "--qos",
            "1",
            "--message",
            "hi",
        ];
        args.extend(tls);
        args.extend(paho_creds);
        paho(port, "pub", &args);
    }
    let mut got = Vec::new();
    while got.len() < 6 {
        let p = watch
            .next_publish(T)
            .unwrap_or_else(|| panic!("only {got:?}"));
        watch.ack(&p);
        got.push(p.topic.to_string());
    }
    assert_eq!(
        got,
        [
            "all/tcp",
            "all/tls",
            "gw/a/all",
            "psk/gw1/all",
            "all/ws",
            "all/wss"
        ]
    );

    // A persistent session begun over WebSocket (paho, 3.1.1, clean
    // session off) ...
    let ws = [
        "--transport",
        "websockets",
        "--version",
        "311",
        "--id",
        "roamer",
        "--no-clean",
        "--topic",
        "roam/#",
        "--qos",
        "1",
        "--username",
        BACKEND.0,
        "--password",
        BACKEND.1,
    ];
    let events = paho(b.ports.ws, "sub", &ws);
    assert!(events.iter().any(|e| e["event"] == "ready"), "{events:?}");
    // ... gets a message queued while it is away ...
    let queue = ["-q", "1", "-t", "roam/x", "-m", "queued-for-roamer"];
    publish_ok(b.ports.tcp, &[creds, &queue].concat());
    // ... and resumes over plain TCP with it.
    let (mut tcp, ack) = RawClient::open(
        b.tcp_addr(),
        login(Protocol::V311, "roamer", false, Some(BACKEND)),
    );
    assert_eq!(ack.code, 0);
    assert!(ack.session_present, "the WebSocket session was not resumed");
    let p = tcp.next_publish(T).expect("the queued message");
    assert_eq!(
        (&*p.topic, &p.payload[..]),
        ("roam/x", &b"queued-for-roamer"[..])
    );
    assert_eq!(p.qos, QoS::AtLeastOnce);
    tcp.ack(&p);
    assert!(alive(&mut tcp));
}
