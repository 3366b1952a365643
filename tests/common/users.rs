//! Users for auth tests: a mosquitto password file written with raftmq's
//! own `$7$` hashing, and CONNECT packets that log in as one of them.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use raftmq::codec::{ByteStr, Connect, Protocol};

use crate::raw;

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
