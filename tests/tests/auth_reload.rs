//! Reloading without a restart, as Kubernetes updates mounted ConfigMaps
//! and Secrets: the ACL changed under a connected client (SIGHUP, a file
//! rewritten in place, a `..data` symlink swapped), an invalid new ACL
//! refused with its line named while the old one stays in force, and TLS
//! certificates and PSK keys replaced while connections stay up. (Password
//! file reloads: tests/tests/passwd_interop.rs.)

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use raftmq::codec::{reason, Protocol, QoS, SubOptions};
use raftmq_e2e::access::{alive, login, password_file, topics, until_sentinel};
use raftmq_e2e::certs::Ca;
use raftmq_e2e::process::Proc;
use raftmq_e2e::raw::RawClient;
use raftmq_e2e::{eventually, require_tool, run, Broker, BrokerConfig};

/// Long enough for the file watch (a 2 s period) on a loaded machine.
const T: Duration = Duration::from_secs(30);

const USERS: &[(&str, &str)] = &[("u", "u-pw"), ("admin", "admin-pw")];

const ACL_AB: &str =
    "user admin\ntopic readwrite #\n\nuser u\ntopic readwrite a/#\ntopic readwrite b/#\n";
const ACL_A: &str = "user admin\ntopic readwrite #\n\nuser u\ntopic readwrite a/#\n";

fn user(name: &str) -> Option<(&str, &str)> {
    USERS.iter().copied().find(|(u, _)| *u == name)
}

fn connect(b: &Broker, id: &str, name: &str) -> RawClient {
    let (c, ack) = RawClient::open(b.tcp_addr(), login(Protocol::V5, id, true, user(name)));
    assert_eq!(ack.code, 0, "{name} refused");
    c
}

fn config(password_file: &Path, acl: &Path) -> BrokerConfig {
    BrokerConfig::new().raw(&format!(
        "[auth]\npassword_file = \"{}\"\nacl_file = \"{}\"\nauth_fail_delay_ms = 10\n",
        password_file.display(),
        acl.display()
    ))
}

/// Writes `text` to `path` the way editors and config tools do: a new file
/// renamed over the old one.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A Kubernetes-style mount: `dir/name -> ..data/name`, `..data -> v1`.
/// [`swap`] points `..data` at a new version atomically, as the kubelet
/// does, so that the file at `dir/name` changes without being written.
fn k8s_mount(dir: &Path, files: &[(&str, &str)]) -> Vec<PathBuf> {
    let v = dir.join("..v1");
    std::fs::create_dir(&v).unwrap();
    for (name, text) in files {
        std::fs::write(v.join(name), text).unwrap();
    }
    symlink("..v1", dir.join("..data")).unwrap();
    files
        .iter()
        .map(|(name, _)| {
            let link = dir.join(name);
            symlink(Path::new("..data").join(name), &link).unwrap();
            link
        })
        .collect()
}

fn swap(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let v = dir.join(format!("..{version}"));
    std::fs::create_dir(&v).unwrap();
    for (name, text) in files {
        std::fs::write(v.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    symlink(format!("..{version}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

fn count(b: &Broker, needle: &str) -> usize {
    b.logs().lines().filter(|l| l.contains(needle)).count()
}

/// Subscribes with No Local, so that the client's own publishes do not come
/// back to it between its PUBLISH and PUBACK.
fn subscribe(c: &mut RawClient, packet_id: u16, filter: &str) {
    let codes = c.subscribe_with(
        packet_id,
        filter,
        SubOptions {
            qos: QoS::AtLeastOnce,
            no_local: true,
            ..SubOptions::default()
        },
    );
    assert_eq!(codes, vec![1], "SUBSCRIBE {filter}");
}

#[test]
fn acl_changed_under_a_connected_client_by_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL_AB).unwrap();
    let pw = password_file(dir.path(), "passwd", USERS);
    let b = Broker::start(config(&pw, &acl));
    // A persistent session of u, away, with a copy queued under the old
    // rules that the new ones will not let it read.
    let mut away = login(Protocol::V5, "u-away", false, user("u"));
    away.properties.session_expiry_interval = Some(300);
    let (mut p, _) = RawClient::open(b.tcp_addr(), away.clone());
    subscribe(&mut p, 1, "a/#");
    subscribe(&mut p, 2, "b/#");
    p.disconnect();
    let mut admin = connect(&b, "admin-1", "admin");
    admin.publish_qos1("b/queued", b"queued", false, 1);
    // The connected client.
    let mut c = connect(&b, "u-live", "u");
    subscribe(&mut c, 1, "a/#");
    subscribe(&mut c, 2, "b/#");
    assert!(c.publish_qos1("b/x", b"before", false, 1) < 0x80);

    std::fs::write(&acl, ACL_A).unwrap();
    b.sighup();
    assert!(
        eventually(T, || count(&b, "authentication files reloaded (SIGHUP)")
            == 1),
        "{}",
        b.logs()
    );
    // The next publish to b/ is refused, a/ still allowed; the connection
    // stays.
    assert_eq!(
        c.publish_qos1("b/y", b"after", false, 2),
        reason::NOT_AUTHORIZED
    );
    assert!(c.publish_qos1("a/y", b"after", false, 3) < 0x80);
    assert!(
        alive(&mut c),
        "the connected client was dropped by the reload"
    );
    // Its old b/# subscription no longer delivers.
    admin.publish_qos1("b/z", b"b/z", false, 2);
    admin.publish_qos1("a/s", b"sentinel", false, 3);
    assert!(until_sentinel(&mut c, "sentinel").is_empty());
    // The copies queued under the old rules are not handed out under the
    // new ones either.
    let (mut p, ack) = RawClient::open(b.tcp_addr(), away);
    assert!(ack.session_present);
    // Queued for it: b/queued and b/x (old rules), a/y (new rules).
    assert_eq!(topics(&until_sentinel(&mut p, "sentinel")), vec!["a/y"]);
}

#[test]
fn acl_file_rewritten_and_symlink_swapped_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("mount");
    std::fs::create_dir(&mount).unwrap();
    let acl = k8s_mount(&mount, &[("acl", ACL_AB)]).remove(0);
    let pw = password_file(dir.path(), "passwd", USERS);
    let b = Broker::start(config(&pw, &acl));
    let mut c = connect(&b, "u-live", "u");
    assert!(c.publish_qos1("b/x", b"1", false, 1) < 0x80);

    // The kubelet's way: `..data` now points at a new version.
    swap(&mount, "v2", &[("acl", ACL_A)]);
    let mut id = 10;
    assert!(
        eventually(T, || {
            id += 1;
            c.publish_qos1("b/x", b"2", false, id) == reason::NOT_AUTHORIZED
        }),
        "the swapped ACL was not picked up:\n{}",
        b.logs()
    );
    assert!(c.publish_qos1("a/x", b"3", false, 100) < 0x80);
    // An edit in place of the file the link resolves to.
    replace(&mount.join("..v2/acl"), ACL_AB);
    assert!(
        eventually(T, || {
            id += 1;
            c.publish_qos1("b/x", b"4", false, id) < 0x80
        }),
        "the rewritten ACL was not picked up:\n{}",
        b.logs()
    );
    assert!(count(&b, "authentication files reloaded (file changed)") >= 2);
    assert!(alive(&mut c));
}

#[test]
fn an_invalid_new_acl_is_refused_naming_its_line_and_the_old_one_stays() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, ACL_A).unwrap();
    let pw = password_file(dir.path(), "passwd", USERS);
    let b = Broker::start(config(&pw, &acl));
    let mut c = connect(&b, "u-live", "u");

    // Line 3 has a `#` that is not the last level.
    let bad = "user u\ntopic readwrite a/#\ntopic readwrite b/#/c\ntopic readwrite b/#\n";
    std::fs::write(&acl, bad).unwrap();
    b.sighup();
    let named = format!("{}:3: invalid topic filter", acl.display());
    assert!(
        eventually(T, || {
            b.logs()
                .lines()
                .any(|l| l.contains(&named) && l.contains("old ones stay in force"))
        }),
        "the bad line is not named:\n{}",
        b.logs()
    );
    // The old rules: a/ yes, b/ no (the bad file would have allowed it).
    assert_eq!(
        c.publish_qos1("b/x", b"x", false, 1),
        reason::NOT_AUTHORIZED
    );
    assert!(c.publish_qos1("a/x", b"x", false, 2) < 0x80);
    // An unknown keyword, by file change this time.
    replace(&acl, "user u\ntopic readwrite b/#\nallow everything\n");
    let named = format!("{}:3: unknown keyword `allow`", acl.display());
    assert!(eventually(T, || b.logs().contains(&named)), "{}", b.logs());
    assert_eq!(
        c.publish_qos1("b/x", b"x", false, 3),
        reason::NOT_AUTHORIZED
    );
    // Fixed: taken at once.
    replace(&acl, ACL_AB);
    let mut id = 10;
    assert!(eventually(T, || {
        id += 1;
        c.publish_qos1("b/x", b"x", false, id) < 0x80
    }));
    assert!(alive(&mut c));
}

/// mosquitto_pub over TLS trusting `ca`; its exit code.
fn tls_pub(port: u16, ca: &Path, topic: &str, payload: &str) -> i32 {
    require_tool("mosquitto_pub");
    let (code, out, err) = run(
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
            .arg(ca)
            .args([
                "-u", "admin", "-P", "admin-pw", "-q", "1", "-t", topic, "-m", payload,
            ]),
        T,
    );
    code.unwrap_or_else(|| panic!("mosquitto_pub did not finish:\n{out}\n{err}"))
}

#[test]
fn certificates_replaced_and_symlink_swapped_while_connections_stay() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cas: Vec<Ca> = (1..=3).map(|i| Ca::new(&format!("CA {i}"))).collect();
    let ca_files: Vec<PathBuf> = cas
        .iter()
        .enumerate()
        .map(|(i, ca)| ca.write(d, &format!("ca{}.crt", i + 1)))
        .collect();
    let first = cas[0].server();
    let mount = d.join("tls");
    std::fs::create_dir(&mount).unwrap();
    let files = k8s_mount(&mount, &[("tls.crt", &first.cert), ("tls.key", &first.key)]);
    let pw = password_file(d, "passwd", USERS);
    let b = Broker::start(BrokerConfig::new().raw(&format!(
        "[auth]\npassword_file = \"{}\"\nauth_fail_delay_ms = 10\n\n\
         [[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{{tcp}}\"\n\n\
         [[listeners]]\nkind = \"tls\"\nbind = \"127.0.0.1:{{tls}}\"\ncertfile = \"{}\"\nkeyfile = \"{}\"\n",
        pw.display(),
        files[0].display(),
        files[1].display()
    )));
    let port = b.ports.tls;
    assert!(eventually(T, || tls_pub(port, &ca_files[0], "cert/0", "0") == 0));

    // A subscriber that stays connected over TLS the whole time.
    require_tool("mosquitto_sub");
    require_tool("stdbuf");
    let mut sub = Proc::spawn(
        Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                "localhost",
                "-p",
                &port.to_string(),
            ])
            .arg("--cafile")
            .arg(&ca_files[0])
            .args([
                "-u", "admin", "-P", "admin-pw", "-d", "-v", "-q", "1", "-t", "cert/#",
            ]),
    );
    sub.expect_line("SUBACK", |l| l.contains("received SUBACK"));

    // In place: the key, then the certificate, each renamed over the old
    // file (a moment of mismatch is refused, the old pair stays meanwhile).
    let second = cas[1].server();
    replace(&mount.join("..v1/tls.key"), &second.key);
    replace(&mount.join("..v1/tls.crt"), &second.cert);
    assert!(
        eventually(T, || tls_pub(port, &ca_files[1], "cert/1", "after-replace")
            == 0),
        "new handshakes do not see the new certificate:\n{}",
        b.logs()
    );
    assert_ne!(tls_pub(port, &ca_files[0], "cert/x", "old-ca"), 0);
    sub.expect_line("message after the replacement", |l| {
        l == "cert/1 after-replace"
    });

    // The kubelet's way: both files change at once by the `..data` swap.
    let third = cas[2].server();
    swap(
        &mount,
        "v2",
        &[("tls.crt", &third.cert), ("tls.key", &third.key)],
    );
    assert!(
        eventually(T, || tls_pub(port, &ca_files[2], "cert/2", "after-swap")
            == 0),
        "new handshakes do not see the swapped certificate:\n{}",
        b.logs()
    );
    assert_ne!(tls_pub(port, &ca_files[1], "cert/x", "old-ca"), 0);
    sub.expect_line("message after the swap", |l| l == "cert/2 after-swap");
    let connacks = sub
        .seen()
        .iter()
        .filter(|l| l.contains("received CONNACK"))
        .count();
    assert_eq!(
        connacks,
        1,
        "the subscriber reconnected:\n{:#?}",
        sub.seen()
    );
    assert!(count(&b, "certificates reloaded (file changed)") >= 2);
}

#[test]
fn psk_keys_reloaded_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let psk = dir.path().join("psk");
    std::fs::write(&psk, "gw1:00112233445566778899aabbccddeeff\n").unwrap();
    let b = Broker::start(BrokerConfig::new().raw(&format!(
        "[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{{tcp}}\"\n\n\
         [[listeners]]\nkind = \"psk\"\nbind = \"127.0.0.1:{{psk}}\"\npsk_file = \"{}\"\n",
        psk.display()
    )));
    let port = b.ports.psk;
    let psk_pub = |id: &str, key: &str| -> i32 {
        require_tool("mosquitto_pub");
        let (code, _, _) = run(
            Command::new("mosquitto_pub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string()])
                .args(["--psk", key, "--psk-identity", id, "-t", "psk/x", "-m", "x"]),
            T,
        );
        code.unwrap_or(-1)
    };
    let (k1, k2) = (
        "00112233445566778899aabbccddeeff",
        "0f0e0d0c0b0a09080706050403020100",
    );
    assert!(eventually(T, || psk_pub("gw1", k1) == 0));
    assert_ne!(psk_pub("gw2", k2), 0);
    // gw2 added, gw1 given a new key.
    replace(&psk, &format!("gw1:{k2}\ngw2:{k2}\n"));
    assert!(eventually(T, || psk_pub("gw2", k2) == 0), "{}", b.logs());
    assert_ne!(psk_pub("gw1", k1), 0);
    assert_eq!(psk_pub("gw1", k2), 0);
    // A broken line: refused with its line, the keys in force stay.
    replace(&psk, &format!("gw1:{k2}\ngw3:xyz\n"));
    let named = format!("{}:2:", psk.display());
    assert!(
        eventually(T, || b
            .logs()
            .lines()
            .any(|l| l.contains(&named) && l.contains("PSK file not reloaded"))),
        "{}",
        b.logs()
    );
    assert_eq!(psk_pub("gw2", k2), 0);
}
