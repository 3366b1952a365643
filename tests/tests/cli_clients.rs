//! `raftmq pub` and `raftmq sub` (the clients in the broker's binary, for
//! `kubectl exec` into an image with no shell) against mosquitto's own
//! clients, on two brokers: raftmq and a real Debian mosquitto. Each broker
//! has a plain listener (anonymous, plus a user with a password), a TLS
//! listener (certificate from a test CA) and a TLS-PSK listener.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftmq_e2e::access::password_file;
use raftmq_e2e::certs::Ca;
use raftmq_e2e::{broker_bin, eventually, free_port, require_tool, run, Broker, BrokerConfig};

/// How long a client may take on a loaded machine.
const T: Duration = Duration::from_secs(30);
const PSK_KEY: &str = "00112233445566778899aabbccddeeff";
const USER: (&str, &str) = ("alice", "s3cret");

#[derive(Clone, Copy, Debug)]
enum Kind {
    Raftmq,
    Mosquitto,
}

/// A broker with the three listeners and the files their clients need.
struct Target {
    tcp: u16,
    tls: u16,
    psk: u16,
    /// The CA that signed the broker's certificate (for `localhost`).
    ca: PathBuf,
    dir: tempfile::TempDir,
    /// The broker process, killed when the target goes.
    _process: (Option<Broker>, Option<Mosquitto>),
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

impl Target {
    fn start(kind: Kind) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca = Ca::new("cli test CA");
        let server = ca.server().write(d, "server");
        let ca_path = ca.write(d, "ca.crt");
        let pw = password_file(d, "passwd", &[USER]);
        let psk = d.join("psk");
        std::fs::write(&psk, format!("gw1:{PSK_KEY}\n")).unwrap();
        let (cert, key) = (s(&server.cert), s(&server.key));
        match kind {
            Kind::Raftmq => {
                let config = format!(
                    r#"
[auth]
password_file = "{pw}"
allow_anonymous = true
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
kind = "psk"
bind = "127.0.0.1:{{psk}}"
psk_file = "{psk}"
psk_hint = "raftmq"
"#,
                    pw = s(&pw),
                    psk = s(&psk),
                );
                let broker = Broker::start(BrokerConfig::new().raw(&config));
                let p = broker.ports;
                for port in [p.tls, p.psk] {
                    let up = eventually(T, || TcpStream::connect(("127.0.0.1", port)).is_ok());
                    assert!(up, "nothing listens on {port}:\n{}", broker.logs());
                }
                Target {
                    tcp: p.tcp,
                    tls: p.tls,
                    psk: p.psk,
                    ca: ca_path,
                    dir,
                    _process: (Some(broker), None),
                }
            }
            Kind::Mosquitto => {
                let (tcp, tls, psk_port) = (free_port(), free_port(), free_port());
                // `user root`: as root, mosquitto would otherwise switch to
                // the `mosquitto` user, who cannot read our files.
                let conf = format!(
                    "per_listener_settings false\nallow_anonymous true\nuser root\n\
                     password_file {pw}\npsk_file {psk}\n\
                     listener {tcp} 127.0.0.1\n\
                     listener {tls} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n\
                     listener {psk_port} 127.0.0.1\npsk_hint mosquitto\n",
                    pw = s(&pw),
                    psk = s(&psk),
                    ca = s(&ca_path),
                );
                let m = Mosquitto::start(d, &conf, &[tcp, tls, psk_port]);
                Target {
                    tcp,
                    tls,
                    psk: psk_port,
                    ca: ca_path,
                    dir,
                    _process: (None, Some(m)),
                }
            }
        }
    }
}

/// A real Debian mosquitto, killed on drop.
struct Mosquitto {
    child: Child,
    log: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, conf: &str, ports: &[u16]) -> Mosquitto {
        require_tool("mosquitto");
        let path = dir.join("mosquitto.conf");
        std::fs::write(&path, conf).unwrap();
        let log = dir.join("mosquitto.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("spawn mosquitto");
        let m = Mosquitto { child, log };
        for &port in ports {
            let up = eventually(T, || TcpStream::connect(("127.0.0.1", port)).is_ok());
            assert!(up, "mosquitto does not listen on {port}:\n{}", m.logs());
        }
        m
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.logs());
        }
    }
}

/// `raftmq pub` or `mosquitto_pub` (`tool`) to completion: (exit code,
/// stderr).
fn client(tool: &str, port: u16, args: &[&str], stdin: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = command(tool);
    cmd.args(["-h", "localhost", "-p", &port.to_string()])
        .args(args);
    if let Some(input) = stdin {
        // A file, not a pipe: `run` gives the child no stdin of its own.
        let path = std::env::temp_dir().join(format!("cli-clients-stdin-{}", free_port()));
        std::fs::write(&path, input).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        return run_with_stdin(&mut cmd, file);
    }
    let (code, out, err) = run(&mut cmd, T);
    (code, format!("{out}{err}"))
}

/// Like `run`, with stdin from `input`; (exit code, stdout + stderr).
fn run_with_stdin(cmd: &mut Command, input: std::fs::File) -> (Option<i32>, String) {
    let mut child = cmd
        .stdin(Stdio::from(input))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let deadline = Instant::now() + T;
    while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn command(tool: &str) -> Command {
    match tool {
        "raftmq pub" => {
            let mut c = Command::new(broker_bin());
            c.arg("pub").env_remove("RUST_BACKTRACE");
            c
        }
        "raftmq sub" => {
            let mut c = Command::new(broker_bin());
            c.arg("sub").env_remove("RUST_BACKTRACE");
            c
        }
        _ => {
            require_tool(tool);
            Command::new(tool)
        }
    }
}

/// Publishes; must succeed.
fn publish(tool: &str, port: u16, args: &[&str]) {
    let (code, err) = client(tool, port, args, None);
    assert_eq!(code, Some(0), "{tool} {args:?}: {err}");
}

/// A subscriber whose stdout goes to a file, read back as raw bytes.
struct Subscriber {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Subscriber {
    fn start(tool: &str, port: u16, dir: &Path, args: &[&str]) -> Subscriber {
        let stem = tool.replace(' ', "-");
        let out = dir.join(format!("{stem}-{}.out", free_port()));
        let err = out.with_extension("err");
        let child = command(tool)
            .args(["-h", "localhost", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("spawn subscriber");
        Subscriber { child, out, err }
    }

    fn output(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).to_string()
    }

    /// Waits until the output starts with `prefix` (the subscriber is
    /// subscribed once it printed the retained message it was sent).
    fn wait_for(&self, prefix: &str) {
        let ok = eventually(T, || self.output().starts_with(prefix));
        assert!(ok, "no `{prefix}` in {:?}", self.output());
    }

    /// Waits for the exit; (code, stdout, stderr).
    fn finish(mut self) -> (Option<i32>, String, String) {
        let deadline = Instant::now() + T;
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let code = self.child.wait().ok().and_then(|s| s.code());
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        (code, self.output(), err)
    }
}

// ---------------------------------------------------------------------
// `raftmq sub -v` prints exactly what `mosquitto_sub -v` prints
// ---------------------------------------------------------------------

/// Both subscribers, with the same options, get a retained message, then
/// messages at QoS 2, 1 and 0 from raftmq pub and mosquitto_pub (an empty
/// one, a two-line one); their outputs must be the same bytes.
fn sub_prints_as_mosquitto_sub(kind: Kind, version: &str) {
    let t = Target::start(kind);
    let topic = |n: u32| format!("cli/{n}");
    publish(
        "mosquitto_pub",
        t.tcp,
        &["-t", "cli/0", "-m", "retained", "-r", "-q", "1"],
    );
    let args = ["-V", version, "-q", "2", "-t", "cli/#", "-v", "-C", "6"];
    let ours = Subscriber::start("raftmq sub", t.tcp, t.dir.path(), &args);
    let theirs = Subscriber::start("mosquitto_sub", t.tcp, t.dir.path(), &args);
    ours.wait_for("cli/0 retained\n");
    theirs.wait_for("cli/0 retained\n");

    publish(
        "raftmq pub",
        t.tcp,
        &["-t", &topic(1), "-m", "two", "-q", "2"],
    );
    publish(
        "mosquitto_pub",
        t.tcp,
        &["-t", &topic(2), "-m", "one", "-q", "1"],
    );
    publish(
        "raftmq pub",
        t.tcp,
        &["-t", &topic(3), "-n", "-q", "1", "-V", "mqttv5"],
    );
    let (code, err) = client(
        "raftmq pub",
        t.tcp,
        &["-t", &topic(4), "-s", "-q", "1"],
        Some("first line\nsecond line"),
    );
    assert_eq!(code, Some(0), "raftmq pub -s: {err}");
    // QoS 0 last: nothing after it could overtake it.
    publish(
        "raftmq pub",
        t.tcp,
        &["-t", &topic(5), "-m", "zero words", "-q", "0"],
    );

    let expected = "cli/0 retained\ncli/1 two\ncli/2 one\ncli/3 (null)\n\
                    cli/4 first line\nsecond line\ncli/5 zero words\n";
    let (code, mosq_out, err) = theirs.finish();
    assert_eq!(code, Some(0), "mosquitto_sub: {mosq_out:?} {err}");
    assert_eq!(mosq_out, expected, "mosquitto_sub's own output");
    let (code, our_out, err) = ours.finish();
    assert_eq!(code, Some(0), "raftmq sub: {our_out:?} {err}");
    assert_eq!(
        our_out, mosq_out,
        "raftmq sub -v must print what mosquitto_sub -v prints"
    );
}

#[test]
fn sub_prints_as_mosquitto_sub_on_raftmq_v311() {
    sub_prints_as_mosquitto_sub(Kind::Raftmq, "mqttv311");
}

#[test]
fn sub_prints_as_mosquitto_sub_on_raftmq_v5() {
    sub_prints_as_mosquitto_sub(Kind::Raftmq, "mqttv5");
}

#[test]
fn sub_prints_as_mosquitto_sub_on_mosquitto_v311() {
    sub_prints_as_mosquitto_sub(Kind::Mosquitto, "mqttv311");
}

#[test]
fn sub_prints_as_mosquitto_sub_on_mosquitto_v5() {
    sub_prints_as_mosquitto_sub(Kind::Mosquitto, "mqttv5");
}

// ---------------------------------------------------------------------
// raftmq pub -> mosquitto_sub: the QoS and retain flag it sent
// ---------------------------------------------------------------------

/// mosquitto_sub's `-F '%r %q %t %p'` shows the retain flag and the QoS
/// each message arrived with: raftmq pub sent what it was asked for.
fn pub_qos_and_retain(kind: Kind, version: &str) {
    let t = Target::start(kind);
    publish(
        "raftmq pub",
        t.tcp,
        &["-V", version, "-t", "q/r", "-m", "kept", "-r", "-q", "1"],
    );
    let fmt = ["-F", "%r %q %t %p"];
    let live = Subscriber::start(
        "mosquitto_sub",
        t.tcp,
        t.dir.path(),
        &[
            &["-V", "mqttv5", "-q", "2", "-t", "q/#", "-C", "5"][..],
            &fmt,
        ]
        .concat(),
    );
    live.wait_for("1 1 q/r kept\n");
    for q in ["0", "1", "2"] {
        let payload = format!("at qos {q}");
        publish(
            "raftmq pub",
            t.tcp,
            &[
                "-V",
                version,
                "-t",
                &format!("q/{q}"),
                "-m",
                &payload,
                "-q",
                q,
            ],
        );
    }
    // -l: one message per line, over one connection.
    let (code, err) = client(
        "raftmq pub",
        t.tcp,
        &["-V", version, "-t", "q/lines", "-l", "-q", "2"],
        Some("line 1\n"),
    );
    assert_eq!(code, Some(0), "raftmq pub -l: {err}");
    let (code, out, err) = live.finish();
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(
        out,
        "1 1 q/r kept\n0 0 q/0 at qos 0\n0 1 q/1 at qos 1\n0 2 q/2 at qos 2\n0 2 q/lines line 1\n"
    );

    // Retained: a later subscriber gets it with the flag set; an empty
    // retained message (-r -n) clears it.
    let later = ["-t", "q/r", "-C", "1", "-W", "20", "-F", "%r %t %p"];
    let (code, out, err) = run(
        command("mosquitto_sub")
            .args(["-h", "localhost", "-p", &t.tcp.to_string()])
            .args(later),
        T,
    );
    assert_eq!((code, out.as_str()), (Some(0), "1 q/r kept\n"), "{err}");
    publish(
        "raftmq pub",
        t.tcp,
        &["-V", version, "-t", "q/r", "-n", "-r"],
    );
    let (code, out, _) = run(
        command("mosquitto_sub")
            .args(["-h", "localhost", "-p", &t.tcp.to_string()])
            .args(["-t", "q/r", "-W", "2"]),
        T,
    );
    assert_eq!(
        (code, out.as_str()),
        (Some(27), ""),
        "the retained message is cleared"
    );
}

#[test]
fn pub_qos_and_retain_on_raftmq() {
    pub_qos_and_retain(Kind::Raftmq, "mqttv311");
}

#[test]
fn pub_qos_and_retain_on_mosquitto_v5() {
    pub_qos_and_retain(Kind::Mosquitto, "mqttv5");
}

// ---------------------------------------------------------------------
// raftmq sub: -q, -c/-i (a kept session), -C, -R, -W
// ---------------------------------------------------------------------

/// `raftmq sub -c -i ID -q 1 -E` leaves a session that queues QoS 1
/// messages published while it is away; the next `raftmq sub -c -i ID`
/// gets them (so -q, -c and -i reached the broker), stops after -C, and
/// does not print a retained message with -R.
fn sub_session_count_and_stale(kind: Kind, version: &str) {
    let t = Target::start(kind);
    publish(
        "mosquitto_pub",
        t.tcp,
        &["-t", "s/old", "-m", "stale", "-r"],
    );
    let keep = [
        "-V", version, "-c", "-i", "cli-kept", "-q", "1", "-t", "s/#",
    ];
    let (code, err) = client("raftmq sub", t.tcp, &[&keep[..], &["-E"]].concat(), None);
    assert_eq!(code, Some(0), "raftmq sub -E: {err}");
    for i in 1..=3 {
        publish(
            "mosquitto_pub",
            t.tcp,
            &["-t", "s/new", "-m", &format!("m{i}"), "-q", "1"],
        );
    }
    let back = Subscriber::start(
        "raftmq sub",
        t.tcp,
        t.dir.path(),
        &[&keep[..], &["-R", "-C", "2", "-v"]].concat(),
    );
    let (code, out, err) = back.finish();
    assert_eq!(code, Some(0), "{out} {err}");
    assert_eq!(
        out, "s/new m1\ns/new m2\n",
        "queued messages, -C 2, no stale one"
    );

    // -W: nothing comes; mosquitto_sub's "Timed out" and exit code 27.
    let started = Instant::now();
    let (code, err) = client(
        "raftmq sub",
        t.tcp,
        &["-V", version, "-t", "nothing/here", "-W", "1"],
        None,
    );
    assert_eq!(code, Some(27), "{err}");
    assert!(err.contains("Timed out"), "{err}");
    assert!(started.elapsed() < T);
}

#[test]
fn sub_session_count_and_stale_on_raftmq_v5() {
    sub_session_count_and_stale(Kind::Raftmq, "mqttv5");
}

#[test]
fn sub_session_count_and_stale_on_mosquitto_v311() {
    sub_session_count_and_stale(Kind::Mosquitto, "mqttv311");
}

// ---------------------------------------------------------------------
// Username and password, TLS with a CA, TLS-PSK
// ---------------------------------------------------------------------

/// Both directions through one listener with the given client options
/// (ours and mosquitto's take the same ones).
fn both_ways(t: &Target, port: u16, opts: &[&str], topic: &str) {
    let sub = |tool: &str| {
        Subscriber::start(
            tool,
            port,
            t.dir.path(),
            &[opts, &["-t", topic, "-v", "-C", "1", "-W", "25"]].concat(),
        )
    };
    // Retained, so that the subscriber started afterwards gets it.
    let ours = sub("raftmq sub");
    publish(
        "mosquitto_pub",
        port,
        &[opts, &["-t", topic, "-m", "from mosquitto", "-r"]].concat(),
    );
    let (code, out, err) = ours.finish();
    assert_eq!(
        (code, out.as_str()),
        (Some(0), format!("{topic} from mosquitto\n").as_str()),
        "{err}"
    );

    publish(
        "raftmq pub",
        port,
        &[opts, &["-t", topic, "-m", "from raftmq", "-r", "-q", "1"]].concat(),
    );
    let theirs = sub("mosquitto_sub");
    let (code, out, err) = theirs.finish();
    assert_eq!(
        (code, out.as_str()),
        (Some(0), format!("{topic} from raftmq\n").as_str()),
        "{err}"
    );
}

fn credentials_tls_psk(kind: Kind) {
    let t = Target::start(kind);
    let (user, pass) = USER;
    both_ways(&t, t.tcp, &["-u", user, "-P", pass], "auth/ok");
    let (code, err) = client(
        "raftmq pub",
        t.tcp,
        &["-u", user, "-P", "wrong", "-t", "x", "-m", "x"],
        None,
    );
    assert_ne!(code, Some(0), "a wrong password is refused");
    assert!(err.contains("refused the connection"), "{err}");
    let (code, err) = client(
        "raftmq sub",
        t.tcp,
        &["-u", user, "-P", "wrong", "-t", "x"],
        None,
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("refused the connection"), "{err}");

    let ca = s(&t.ca);
    both_ways(&t, t.tls, &["--cafile", ca], "tls/ok");
    let other = Ca::new("not the broker's CA").write(t.dir.path(), "other.crt");
    let (code, err) = client(
        "raftmq pub",
        t.tls,
        &["--cafile", s(&other), "-t", "x", "-m", "x"],
        None,
    );
    assert_ne!(code, Some(0), "a certificate from another CA is refused");
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    both_ways(
        &t,
        t.psk,
        &["--psk", PSK_KEY, "--psk-identity", "gw1"],
        "psk/ok",
    );
    let bad = [
        "--psk",
        "ffff",
        "--psk-identity",
        "gw1",
        "-t",
        "x",
        "-m",
        "x",
    ];
    let (code, err) = client("raftmq pub", t.psk, &bad, None);
    assert_ne!(code, Some(0), "a wrong key is refused");
    assert!(err.contains("TLS-PSK handshake"), "{err}");
}

#[test]
fn credentials_tls_and_psk_on_raftmq() {
    credentials_tls_psk(Kind::Raftmq);
}

#[test]
fn credentials_tls_and_psk_on_mosquitto() {
    credentials_tls_psk(Kind::Mosquitto);
}

/// `--insecure` skips only the host-name check: a certificate for another
/// name is accepted with it and refused without it; a certificate from
/// another CA stays refused.
#[test]
fn insecure_skips_only_the_name_check() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("cli test CA");
    let ca_path = ca.write(d, "ca.crt");
    let server = ca.server_for(&["demo.mqtt.svc"]).write(d, "server");
    let config = format!(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{{tcp}}\"\n\n\
         [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{{tls}}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
        s(&server.cert),
        s(&server.key)
    );
    let b = Broker::start(BrokerConfig::new().raw(&config));
    let port = b.ports.tls;
    assert!(eventually(T, || TcpStream::connect(("127.0.0.1", port)).is_ok()));
    let args = ["--cafile", s(&ca_path), "-t", "x", "-m", "x"];
    let (code, err) = client("raftmq pub", port, &args, None);
    assert_ne!(code, Some(0), "the name does not match: {err}");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let (code, err) = client(
        "raftmq pub",
        port,
        &[&args[..], &["--insecure"]].concat(),
        None,
    );
    assert_eq!(code, Some(0), "--insecure: {err}");
    let other = Ca::new("someone else").write(d, "other.crt");
    let (code, err) = client(
        "raftmq pub",
        port,
        &["--cafile", s(&other), "--insecure", "-t", "x", "-m", "x"],
        None,
    );
    assert_ne!(code, Some(0), "--insecure still checks the CA: {err}");
}

/// Nothing listens: a clear error, exit code 1 (as mosquitto's clients).
#[test]
fn unreachable_broker_is_a_clear_error() {
    let port = free_port();
    for tool in ["raftmq pub", "raftmq sub"] {
        let extra: &[&str] = if tool == "raftmq pub" {
            &["-m", "x"]
        } else {
            &[]
        };
        let (code, err) = client(tool, port, &[&["-t", "x"], extra].concat(), None);
        assert_eq!(code, Some(1), "{tool}: {err}");
        assert!(
            err.contains(&format!("cannot connect to localhost:{port}")),
            "{tool}: {err}"
        );
    }
}
