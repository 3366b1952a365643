//! For authentication and ACL tests: a mosquitto password file written
//! with raftmq's own `$7$` hashing, CONNECT packets that log in, and
//! proof that a message was *not* delivered without waiting out a
//! timeout: a sentinel the receiver may read, published after the denied
//! messages, arrives after anything routed before it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use raftmq::codec::{ByteStr, Connect, Packet, Protocol, Publish};

use crate::raw::{self, RawClient};

const T: Duration = Duration::from_secs(10);

/// Writes `dir/name` with one `user:$7$...` line per `(user, password)`.
pub fn password_file(dir: &Path, name: &str, users: &[(&str, &str)]) -> PathBuf {
    let text: String = users
        .iter()
        .map(|(u, p)| format!("{u}:{}\n", raftmq::auth::password::hash_password(p)))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write password file");
    path
}

/// A CONNECT (keep alive 60) as `user` with `password`, or anonymous.
pub fn login(
    protocol: Protocol,
    client_id: &str,
    clean: bool,
    user: Option<(&str, &str)>,
) -> Connect {
    let mut c = raw::connect(protocol, client_id, clean);
    if let Some((u, p)) = user {
        c.username = Some(ByteStr::from(u));
        c.password = Some(Bytes::copy_from_slice(p.as_bytes()));
    }
    c
}

/// The PUBLISHes `c` receives (acknowledged) before the first one whose
/// payload is `sentinel`.
pub fn until_sentinel(c: &mut RawClient, sentinel: &str) -> Vec<Publish> {
    let mut got = Vec::new();
    loop {
        let Some(p) = c.next_publish(T) else {
            let topics: Vec<&str> = got.iter().map(|p: &Publish| &*p.topic).collect();
            panic!("no sentinel `{sentinel}`; got {topics:?}");
        };
        c.ack(&p);
        if &p.payload[..] == sentinel.as_bytes() {
            return got;
        }
        got.push(p);
    }
}

/// The topics of `got`, in order.
pub fn topics(got: &[Publish]) -> Vec<&str> {
    got.iter().map(|p| &*p.topic).collect()
}

/// (topic, payload, retain) of each of `got`; payloads are UTF-8 here.
pub fn summary(got: &[Publish]) -> Vec<(&str, &str, bool)> {
    got.iter()
        .map(|p| {
            let payload = std::str::from_utf8(&p.payload).unwrap_or("<not UTF-8>");
            (&*p.topic, payload, p.retain)
        })
        .collect()
}

/// Whether the connection still answers a PINGREQ.
pub fn alive(c: &mut RawClient) -> bool {
    c.send(&Packet::PingReq);
    c.recv_until(T, |p| matches!(p, Packet::PingResp).then_some(()))
        .is_some()
}
