//! Password files carry over from mosquitto in both directions: a file
//! written by Debian's `mosquitto_passwd` is read by raftmq, and one written
//! by `raftmq passwd` is accepted by a real Debian `mosquitto` process.
//! Also: `$6$` (mosquitto 1.x) hashes, `-D` / `-U`, plaintext lines refused
//! at start with file and line, the `allow_anonymous` default, and what a
//! failed login leaves behind (log line without the password, a counter, the
//! configured delay before the CONNACK).

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftmq::codec::{ByteStr, Protocol};
use raftmq_e2e::raw::{self, RawClient};
use raftmq_e2e::{broker_bin, eventually, free_port, require_tool, run, Broker, BrokerConfig};

/// How long a client process may take on a loaded machine.
const T: Duration = Duration::from_secs(30);

/// CONNACK codes.
const V3_NOT_AUTHORIZED: u8 = 5;
const V5_BAD_CREDENTIALS: u8 = 0x86;
const V5_NOT_AUTHORIZED: u8 = 0x87;

/// Connects with the raw client and returns the CONNACK code.
fn login(
    addr: std::net::SocketAddr,
    protocol: Protocol,
    id: &str,
    user: Option<&str>,
    pass: Option<&str>,
) -> u8 {
    let mut c = raw::connect(protocol, id, true);
    c.username = user.map(ByteStr::from);
    c.password = pass.map(|p| Bytes::copy_from_slice(p.as_bytes()));
    let (client, ack) = RawClient::open(addr, c);
    if ack.code == 0 {
        client.disconnect();
    }
    ack.code
}

/// `mosquitto_pub` against 127.0.0.1:`port` with `-u`/`-P`; returns its exit
/// code, which mosquitto_pub sets to the CONNACK's refusal code.
fn mosquitto_pub(port: u16, v5: bool, user: &str, pass: &str) -> i32 {
    require_tool("mosquitto_pub");
    let (code, out, err) = run(
        Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-V", if v5 { "mqttv5" } else { "mqttv311" }])
            .args([
                "-u", user, "-P", pass, "-q", "1", "-t", "pw/test", "-m", "x",
            ]),
        T,
    );
    code.unwrap_or_else(|| panic!("mosquitto_pub did not finish:\n{out}\n{err}"))
}

/// Runs a password tool to completion and asserts it succeeded.
fn tool(cmd: &mut Command) {
    let (code, out, err) = run(cmd, T);
    assert_eq!(code, Some(0), "{cmd:?} failed:\n{out}\n{err}");
}

fn raftmq_passwd(args: &[&str]) {
    tool(Command::new(broker_bin()).arg("passwd").args(args));
}

fn mosquitto_passwd(args: &[&str]) {
    require_tool("mosquitto_passwd");
    tool(Command::new("mosquitto_passwd").args(args));
}

fn auth_config(password_file: &Path, extra: &str) -> BrokerConfig {
    BrokerConfig::new().raw(&format!(
        "[auth]\npassword_file = \"{}\"\nauth_fail_delay_ms = 10\n{extra}",
        password_file.display()
    ))
}

/// A real Debian mosquitto on a free port, killed on drop.
struct Mosquitto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Mosquitto {
    fn start(dir: &Path, password_file: &Path) -> Mosquitto {
        require_tool("mosquitto");
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // `user root`: as root, mosquitto would otherwise switch to the
        // `mosquitto` user, who cannot read a 0600 file we own.
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\nuser root\n",
                password_file.display()
            ),
        )
        .expect("write mosquitto.conf");
        let log = dir.join("mosquitto.log");
        let out = std::fs::File::create(&log).expect("mosquitto log");
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .spawn()
            .expect("spawn mosquitto");
        let mut m = Mosquitto { child, port, log };
        let up = eventually(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "mosquitto did not listen:\n{}", m.logs());
        assert!(
            m.child.try_wait().ok().flatten().is_none(),
            "mosquitto exited:\n{}",
            m.logs()
        );
        m
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// mosquitto re-reads its password file on SIGHUP.
    fn sighup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGHUP);
        }
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

#[test]
fn mosquitto_passwd_file_is_read_by_raftmq() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    mosquitto_passwd(&["-c", "-b", pw_s, "alice", "s3cret"]);
    mosquitto_passwd(&["-b", pw_s, "bob", "hunter2"]);
    // -D removes a user from a mosquitto-written file.
    mosquitto_passwd(&["-b", pw_s, "gone", "x"]);
    mosquitto_passwd(&["-D", pw_s, "gone"]);
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.contains("alice:$7$101$"), "{text}");
    assert!(!text.contains("gone:"), "{text}");

    let b = Broker::start(auth_config(&pw, ""));
    let a = b.tcp_addr();
    // Right passwords connect, with mosquitto_pub and with our own client.
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "alice", "s3cret"), 0);
    assert_eq!(mosquitto_pub(b.ports.tcp, true, "bob", "hunter2"), 0);
    assert_eq!(
        login(a, Protocol::V311, "a1", Some("alice"), Some("s3cret")),
        0
    );
    assert_eq!(
        login(a, Protocol::V5, "b1", Some("bob"), Some("hunter2")),
        0
    );
    // Wrong ones are refused: 3.1.1 CONNACK 5, 5.0 0x86.
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "alice", "S3cret"), 5);
    assert_eq!(
        mosquitto_pub(b.ports.tcp, true, "alice", "s3cret "),
        i32::from(V5_BAD_CREDENTIALS)
    );
    // 3.1.1: 5 as from mosquitto (not 4), which clients written against
    // mosquitto expect.
    assert_eq!(
        login(a, Protocol::V311, "a2", Some("alice"), Some("wrong")),
        V3_NOT_AUTHORIZED
    );
    assert_eq!(
        login(a, Protocol::V5, "a3", Some("alice"), Some("wrong")),
        V5_BAD_CREDENTIALS
    );
    // A deleted user and a password without its user are refused too.
    assert_eq!(
        login(a, Protocol::V5, "g1", Some("gone"), Some("x")),
        V5_BAD_CREDENTIALS
    );
    assert_eq!(
        login(a, Protocol::V5, "g2", Some("alice"), None),
        V5_BAD_CREDENTIALS
    );
}

#[test]
fn raftmq_passwd_file_is_accepted_by_mosquitto() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    raftmq_passwd(&["-c", "-b", pw_s, "alice", "s3cret"]);
    raftmq_passwd(&["-b", pw_s, "bob", "hunter2"]);
    raftmq_passwd(&["-b", pw_s, "carol", "first"]);
    // Changing a password replaces the line.
    raftmq_passwd(&["-b", pw_s, "carol", "second"]);
    let text = std::fs::read_to_string(&pw).unwrap();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.split_once(':').unwrap().1.starts_with("$7$101$")),
        "{text}"
    );

    let m = Mosquitto::start(dir.path(), &pw);
    assert_eq!(mosquitto_pub(m.port, false, "alice", "s3cret"), 0);
    assert_eq!(mosquitto_pub(m.port, true, "bob", "hunter2"), 0);
    assert_eq!(mosquitto_pub(m.port, false, "carol", "second"), 0);
    assert_eq!(mosquitto_pub(m.port, false, "carol", "first"), 5);
    assert_eq!(mosquitto_pub(m.port, false, "alice", "wrong"), 5);

    // -D: bob is gone for mosquitto (after its SIGHUP reload) and for us.
    raftmq_passwd(&["-D", pw_s, "bob"]);
    m.sighup();
    assert!(
        eventually(T, || mosquitto_pub(m.port, false, "bob", "hunter2") == 5),
        "mosquitto still accepts a user deleted with raftmq passwd -D"
    );
    assert_eq!(mosquitto_pub(m.port, false, "alice", "s3cret"), 0);

    let b = Broker::start(auth_config(&pw, ""));
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "alice", "s3cret"), 0);
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "bob", "hunter2"), 5);
}

#[test]
fn upgrade_hashes_a_plaintext_file_for_both_brokers() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    std::fs::write(&pw, "# plaintext users\ndave:plain-pw\nerin:other:pw\n").unwrap();
    raftmq_passwd(&["-U", pw_s]);
    let text = std::fs::read_to_string(&pw).unwrap();
    assert!(!text.contains("plain-pw"), "{text}");
    assert!(text.contains("# plaintext users"), "comment kept: {text}");
    assert!(text.contains("dave:$7$"), "{text}");

    let m = Mosquitto::start(dir.path(), &pw);
    assert_eq!(mosquitto_pub(m.port, false, "dave", "plain-pw"), 0);
    // A password may contain ':' (only the first one separates).
    assert_eq!(mosquitto_pub(m.port, false, "erin", "other:pw"), 0);
    drop(m);
    let b = Broker::start(auth_config(&pw, ""));
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "dave", "plain-pw"), 0);
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "erin", "other:pw"), 0);
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "dave", "plain-pwx"), 5);
}

#[test]
fn a_plaintext_line_fails_startup_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    raftmq_passwd(&["-c", "-b", pw_s, "alice", "s3cret"]);
    let mut text = std::fs::read_to_string(&pw).unwrap();
    text.insert_str(0, "# users\n");
    text.push_str("bob:hunter2\n");
    std::fs::write(&pw, &text).unwrap();
    let err = match Broker::try_start(auth_config(&pw, "")) {
        Ok(b) => panic!("broker started with a plaintext password:\n{}", b.logs()),
        Err(e) => e.to_string(),
    };
    assert!(err.contains(&format!("{pw_s}:3:")), "{err}");
    assert!(err.contains("plaintext"), "{err}");
    assert!(!err.contains("hunter2"), "the password is echoed: {err}");
}

#[test]
fn sha512_hashes_of_mosquitto_1x_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    // Debian's mosquitto_passwd writes the 1.x format with -H sha512.
    mosquitto_passwd(&["-c", "-H", "sha512", "-b", pw_s, "old", "legacy-pw"]);
    // And one made by hand: base64(salt), base64(SHA-512(password || salt)).
    require_tool("python3");
    let (code, line, err) = run(
        Command::new("python3").arg("-c").arg(
            "import base64,hashlib,os\n\
             s=os.urandom(12)\n\
             h=hashlib.sha512(b'py-pw'+s).digest()\n\
             print('py:$6$'+base64.b64encode(s).decode()+'$'+base64.b64encode(h).decode())",
        ),
        T,
    );
    assert_eq!(code, Some(0), "{err}");
    let mut text = std::fs::read_to_string(&pw).unwrap();
    assert!(text.starts_with("old:$6$"), "{text}");
    text.push_str(&line);
    std::fs::write(&pw, &text).unwrap();

    let b = Broker::start(auth_config(&pw, ""));
    let a = b.tcp_addr();
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "old", "legacy-pw"), 0);
    assert_eq!(login(a, Protocol::V5, "p1", Some("py"), Some("py-pw")), 0);
    assert_eq!(
        login(a, Protocol::V5, "p2", Some("py"), Some("py-pw2")),
        V5_BAD_CREDENTIALS
    );
    assert_eq!(mosquitto_pub(b.ports.tcp, false, "old", "legacy-pW"), 5);
}

#[test]
fn anonymous_is_refused_once_a_password_file_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    raftmq_passwd(&["-c", "-b", pw_s, "alice", "s3cret"]);

    // No password file: anonymous clients are welcome (the default).
    let open = Broker::start(BrokerConfig::new());
    assert_eq!(login(open.tcp_addr(), Protocol::V311, "n", None, None), 0);
    assert_eq!(login(open.tcp_addr(), Protocol::V5, "n5", None, None), 0);
    drop(open);

    // A password file and no allow_anonymous: refused as not authorized.
    let closed = Broker::start(auth_config(&pw, ""));
    let a = closed.tcp_addr();
    assert_eq!(login(a, Protocol::V311, "n", None, None), V3_NOT_AUTHORIZED);
    assert_eq!(login(a, Protocol::V5, "n5", None, None), V5_NOT_AUTHORIZED);
    assert_eq!(
        login(a, Protocol::V5, "u", Some("alice"), Some("s3cret")),
        0
    );
    drop(closed);

    // allow_anonymous = true with a password file: anonymous in, but a
    // username still has to bring its password.
    let both = Broker::start(auth_config(&pw, "allow_anonymous = true\n"));
    let a = both.tcp_addr();
    assert_eq!(login(a, Protocol::V311, "n", None, None), 0);
    assert_eq!(
        login(a, Protocol::V5, "u", Some("alice"), Some("nope")),
        V5_BAD_CREDENTIALS
    );
    assert_eq!(
        login(a, Protocol::V5, "v", Some("mallory"), None),
        V5_BAD_CREDENTIALS
    );
    drop(both);

    // allow_anonymous = false without a password file: nobody gets in
    // without credentials.
    let none = Broker::start(BrokerConfig::new().raw("[auth]\nallow_anonymous = false\n"));
    assert_eq!(
        login(none.tcp_addr(), Protocol::V5, "n", None, None),
        V5_NOT_AUTHORIZED
    );
}

/// The value of a counter on /metrics (0 when absent).
fn metric(b: &Broker, name: &str) -> f64 {
    let (status, body) = b.http_get("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name).then(|| v.trim().parse::<f64>().ok()).flatten()
        })
        .unwrap_or(0.0)
}

#[test]
fn failed_logins_are_logged_without_the_password_counted_and_delayed() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    raftmq_passwd(&["-c", "-b", pw.to_str().unwrap(), "alice", "s3cret"]);
    let delay = Duration::from_millis(1500);
    let b = Broker::start(BrokerConfig::new().raw(&format!(
        "[auth]\npassword_file = \"{}\"\nauth_fail_delay_ms = {}\n",
        pw.display(),
        delay.as_millis()
    )));
    let before = metric(&b, "raftmq_auth_failures_total");

    let secret = "Sup3r-Secret-Guess-7781";
    let started = Instant::now();
    let code = login(
        b.tcp_addr(),
        Protocol::V5,
        "guesser-42",
        Some("alice"),
        Some(secret),
    );
    let took = started.elapsed();
    assert_eq!(code, V5_BAD_CREDENTIALS);
    assert!(
        took >= delay - Duration::from_millis(50),
        "CONNACK after {took:?}, the configured delay is {delay:?}"
    );
    // 3.1.1 too, and an anonymous attempt counts as well.
    assert_eq!(
        login(b.tcp_addr(), Protocol::V311, "guesser-43", None, None),
        V3_NOT_AUTHORIZED
    );
    assert!(
        eventually(T, || metric(&b, "raftmq_auth_failures_total")
            >= before + 2.0),
        "auth failures not counted: {}",
        metric(&b, "raftmq_auth_failures_total")
    );
    // A good login is not counted as a failure.
    assert_eq!(
        login(
            b.tcp_addr(),
            Protocol::V5,
            "ok",
            Some("alice"),
            Some("s3cret")
        ),
        0
    );
    assert_eq!(metric(&b, "raftmq_auth_failures_total"), before + 2.0);

    let failure_line = |logs: &str| {
        logs.lines()
            .find(|l| l.contains("guesser-42") && l.contains("authentication failed"))
            .map(str::to_string)
    };
    assert!(
        eventually(T, || failure_line(&b.logs()).is_some()),
        "no log line naming the client:\n{}",
        b.logs()
    );
    let line = failure_line(&b.logs()).unwrap();
    assert!(line.contains("127.0.0.1"), "no peer address: {line}");
    let logs = b.logs();
    assert!(
        !logs.contains(secret),
        "the password is in the log:\n{logs}"
    );
}

#[test]
fn password_file_changes_are_picked_up_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("passwd");
    let pw_s = pw.to_str().unwrap();
    raftmq_passwd(&["-c", "-b", pw_s, "alice", "s3cret"]);
    let b = Broker::start(auth_config(&pw, ""));
    let a = b.tcp_addr();
    let mut c = raw::connect(Protocol::V5, "alice-live", true);
    c.username = Some(ByteStr::from("alice"));
    c.password = Some(Bytes::from_static(b"s3cret"));
    let (mut live, ack) = RawClient::open(a, c);
    assert_eq!(ack.code, 0);

    // A new user, written in place: the watch sees the file change.
    raftmq_passwd(&["-b", pw_s, "bob", "hunter2"]);
    assert!(
        eventually(T, || login(
            a,
            Protocol::V5,
            "b",
            Some("bob"),
            Some("hunter2")
        ) == 0),
        "the added user cannot log in:\n{}",
        b.logs()
    );
    // Deleted: new logins refused, the connected client stays.
    raftmq_passwd(&["-D", pw_s, "alice"]);
    assert!(
        eventually(T, || {
            login(a, Protocol::V5, "a", Some("alice"), Some("s3cret")) == V5_BAD_CREDENTIALS
        }),
        "a deleted user can still log in"
    );
    // A plaintext line: refused with its line named, the old users stay.
    let mut text = std::fs::read_to_string(&pw).unwrap();
    text.push_str("carol:plain\n");
    std::fs::write(&pw, &text).unwrap();
    b.sighup();
    let named = format!("{pw_s}:2:");
    assert!(
        eventually(T, || b
            .logs()
            .lines()
            .any(|l| l.contains(&named) && l.contains("not reloaded"))),
        "the bad line is not named:\n{}",
        b.logs()
    );
    assert_eq!(
        login(a, Protocol::V5, "b2", Some("bob"), Some("hunter2")),
        0
    );
    assert_eq!(
        login(a, Protocol::V5, "c", Some("carol"), Some("plain")),
        V5_BAD_CREDENTIALS
    );
    live.send(&raftmq::codec::Packet::PingReq);
    let pong = live.recv_until(T, |p| {
        matches!(p, raftmq::codec::Packet::PingResp).then_some(())
    });
    assert!(
        pong.is_some(),
        "the connected client was dropped by the reload"
    );
}
