//! Checks the API server cannot make from the schema alone. Errors stop a
//! reconcile (existing objects are left as they are) and show up as the
//! `Degraded` condition and a Warning Event; warnings are only reported.

use std::collections::BTreeSet;

use raftmq_shared::config::keys;

use crate::crd::{ListenerKind, MqttClusterSpec};
use crate::render::config::{is_reserved, OVERRIDABLE};
use crate::render::{CLUSTER_PORT, HTTP_PORT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason for conditions and Events.
    pub reason: &'static str,
    /// A sentence a person can act on.
    pub message: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Findings {
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    fn error(&mut self, reason: &'static str, message: String) {
        self.errors.push(Problem { reason, message });
    }
    fn warn(&mut self, reason: &'static str, message: String) {
        self.warnings.push(Problem { reason, message });
    }
}

/// Validates an MQTT topic filter as the broker will (`+` fills a whole
/// level, `#` is a whole last level). `%c`/`%u` are allowed (patterns).
pub fn topic_filter_error(filter: &str) -> Option<String> {
    if filter.is_empty() {
        return Some("the topic is empty".into());
    }
    if filter.contains('\0') {
        return Some("the topic contains a NUL character".into());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Some("'#' must be a whole level and the last one".into());
        }
        if level.contains('+') && *level != "+" {
            return Some("'+' must be a whole level".into());
        }
    }
    None
}

/// The longest cluster name: `controller-revision-hash` labels on its pods
/// are `<name>-<10 characters>`, and a label value is at most 63.
pub const NAME_MAX: usize = 52;

/// Why a cluster cannot have this name: it names the cluster's Services, so
/// it must be a DNS-1035 label (lower case letters, digits and '-',
/// starting with a letter, ending with a letter or digit), and at most
/// [`NAME_MAX`] characters. The CRD refuses such names; this catches
/// clusters made before that rule (a CRD Helm did not upgrade).
pub fn name_problem(name: &str) -> Option<Problem> {
    let b = name.as_bytes();
    let label = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-';
    let why = if !label {
        "it names the cluster's Services, so it must be a DNS-1035 label: lower case letters, digits and '-', starting with a letter and ending with a letter or digit"
    } else if b.len() > NAME_MAX {
        "it must be at most 52 characters (StatefulSet pod labels derive from it)"
    } else {
        return None;
    };
    Some(Problem {
        reason: "InvalidName",
        message: format!(
            "the cluster cannot be named {name:?}: {why}; create it again under another name"
        ),
    })
}

/// Everything wrong with a spec that its schema cannot say.
pub fn validate(spec: &MqttClusterSpec) -> Findings {
    let mut f = Findings::default();
    replicas(spec, &mut f);
    listeners(spec, &mut f);
    users(spec, &mut f);
    acl(spec, &mut f);
    config(spec, &mut f);
    bridges(spec, &mut f);
    f
}

fn replicas(spec: &MqttClusterSpec, f: &mut Findings) {
    if spec.replicas < 1 {
        f.error(
            "InvalidReplicas",
            format!("replicas is {}; it must be at least 1", spec.replicas),
        );
    } else if spec.replicas % 2 == 0 {
        f.warn(
            "EvenReplicas",
            format!(
                "replicas is {}: an even-sized Raft group tolerates no more failures than {} pods; prefer an odd count",
                spec.replicas,
                spec.replicas - 1
            ),
        );
    }
}

/// Ports, the PSK identities and the TLS settings the listeners need.
fn listeners(spec: &MqttClusterSpec, f: &mut Findings) {
    let active = spec.listeners.active();
    if active.is_empty() {
        f.error(
            "NoListeners",
            "every listener is disabled; enable at least one".into(),
        );
    }
    let mut seen: Vec<(i32, &str)> = vec![(CLUSTER_PORT, "cluster (gRPC)"), (HTTP_PORT, "http")];
    for l in &active {
        if let Some((_, other)) = seen.iter().find(|(p, _)| *p == l.port) {
            f.error(
                "PortConflict",
                format!(
                    "listener {} uses port {}, which {} already uses",
                    l.kind.as_str(),
                    l.port,
                    other
                ),
            );
        }
        seen.push((l.port, l.kind.as_str()));
        if l.kind == ListenerKind::Psk && spec.psk.is_none() {
            f.error(
                "MissingPsk",
                "the psk listener is enabled but spec.psk names no Secret with identities".into(),
            );
        }
        if l.spec.require_client_certificate && !l.kind.needs_certificate() {
            f.warn(
                "IgnoredSetting",
                format!(
                    "requireClientCertificate only applies to tls and wss listeners, not {}",
                    l.kind.as_str()
                ),
            );
        }
    }
    if let Some(tls) = &spec.tls {
        use crate::crd::TlsMode;
        match tls.mode {
            TlsMode::Secret if tls.secret_name.is_none() => f.error(
                "InvalidTls",
                "tls.mode is Secret but tls.secretName is not set".into(),
            ),
            TlsMode::CertManager if tls.issuer_ref.is_none() => f.error(
                "InvalidTls",
                "tls.mode is CertManager but tls.issuerRef is not set".into(),
            ),
            _ => {}
        }
    }
}

fn users(spec: &MqttClusterSpec, f: &mut Findings) {
    let mut users = BTreeSet::new();
    for u in &spec.auth.users {
        if u.username.is_empty() || u.username.contains([':', ' ', '\n']) {
            f.error(
                "InvalidUser",
                format!(
                    "username {:?} is empty or contains ':' or whitespace",
                    u.username
                ),
            );
        }
        if !users.insert(u.username.as_str()) {
            f.error(
                "DuplicateUser",
                format!("user {} is listed twice in auth.users", u.username),
            );
        }
    }
}

/// Each rule as the broker's ACL file parser will read it.
fn acl(spec: &MqttClusterSpec, f: &mut Findings) {
    for (i, r) in spec.acl.iter().enumerate() {
        if let Some(e) = topic_filter_error(&r.topic) {
            f.error(
                "InvalidAclRule",
                format!("acl[{i}] (topic {:?}): {e}", r.topic),
            );
        }
        if r.topic.contains(['\n', ' ']) {
            f.error(
                "InvalidAclRule",
                format!("acl[{i}] (topic {:?}): a topic in an ACL file cannot contain spaces or newlines", r.topic),
            );
        }
        if r.pattern && r.user.is_some() {
            f.error(
                "InvalidAclRule",
                format!("acl[{i}]: a rule is either for a user or a pattern, not both"),
            );
        }
        if let Some(u) = &r.user {
            if u.is_empty() || u.contains(char::is_whitespace) {
                f.error(
                    "InvalidAclRule",
                    format!("acl[{i}]: user {u:?} is empty or contains whitespace"),
                );
            }
        }
    }
}

/// Each bridge as the broker will read its table (the CRD's rules say the
/// same where they can; this catches resources made before them).
fn bridges(spec: &MqttClusterSpec, f: &mut Findings) {
    let mut names = BTreeSet::new();
    for (i, b) in spec.bridges.iter().enumerate() {
        let at = format!("bridges[{i}] ({})", b.name);
        let name_ok = b.name.len() <= 64
            && b.name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && b.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !name_ok {
            f.error(
                "InvalidBridge",
                format!("{at}: a bridge name is letters, digits, '.', '_' and '-', starting with a letter or digit"),
            );
        }
        if !names.insert(b.name.as_str()) {
            f.error(
                "InvalidBridge",
                format!("{at}: the name is used by another bridge"),
            );
        }
        if b.addresses.is_empty()
            || b.addresses
                .iter()
                .any(|a| a.is_empty() || a.contains(char::is_whitespace))
        {
            f.error(
                "InvalidBridge",
                format!("{at}: addresses must be non-empty host:port values without spaces"),
            );
        }
        if b.topics.is_empty() {
            f.error("InvalidBridge", format!("{at}: needs at least one topic"));
        }
        for (j, t) in b.topics.iter().enumerate() {
            if let Some(e) = bridge_topic_error(t) {
                f.error("InvalidBridge", format!("{at}: topics[{j}]: {e}"));
            }
        }
        if b.tls.is_some() && b.psk.is_some() {
            f.error(
                "InvalidBridge",
                format!("{at}: uses tls (certificates) or psk (TLS-PSK), not both"),
            );
        }
        if let Some(r) = &b.restart_timeout {
            if r.base_seconds < 1 || r.cap_seconds.is_some_and(|c| c < r.base_seconds) {
                f.error(
                    "InvalidBridge",
                    format!(
                        "{at}: restartTimeout needs baseSeconds >= 1 and capSeconds >= baseSeconds"
                    ),
                );
            }
        }
    }
}

/// What the broker would refuse in a bridge topic rule: prefixes are topic
/// names, prefix plus pattern a topic filter on each side, an empty pattern
/// needs a prefix, and no word can hold a space (the rule is one line of
/// words).
pub fn bridge_topic_error(t: &crate::crd::BridgeTopic) -> Option<String> {
    let words = [&t.pattern, &t.local_prefix, &t.remote_prefix];
    if words.iter().any(|w| w.contains(char::is_whitespace)) {
        return Some("pattern and prefixes cannot contain spaces".into());
    }
    if !(0..=2).contains(&t.qos) {
        return Some(format!("qos is {}; it must be 0, 1 or 2", t.qos));
    }
    for p in [&t.local_prefix, &t.remote_prefix] {
        if p.contains(['+', '#']) {
            return Some(format!("prefix {p:?} is a topic name: no wildcards"));
        }
    }
    if t.pattern.is_empty() {
        return (t.local_prefix.is_empty() && t.remote_prefix.is_empty())
            .then(|| "an empty pattern needs a localPrefix or remotePrefix".into());
    }
    for filter in [
        format!("{}{}", t.local_prefix, t.pattern),
        format!("{}{}", t.remote_prefix, t.pattern),
    ] {
        if let Some(e) = topic_filter_error(&filter) {
            return Some(format!("{filter:?}: {e}"));
        }
    }
    None
}

/// `spec.config` may set broker sections, never a key the operator owns.
fn config(spec: &MqttClusterSpec, f: &mut Findings) {
    if let Some(cfg) = &spec.config {
        for (k, v) in cfg {
            if !OVERRIDABLE.contains(&k.as_str()) {
                let why = if is_reserved(k, None) {
                    "the operator manages it"
                } else {
                    "it is not a broker config section"
                };
                f.error(
                    "InvalidConfig",
                    format!("spec.config.{k} cannot be set: {why}"),
                );
                continue;
            }
            if let Some(obj) = v.as_object() {
                for sub in obj.keys() {
                    let path = format!("{k}.{sub}");
                    if is_reserved(k, Some(sub)) {
                        f.error(
                            "InvalidConfig",
                            format!("spec.config.{path} cannot be set: the operator manages it"),
                        );
                    }
                }
            } else if k != keys::SYS_INTERVAL {
                f.error(
                    "InvalidConfig",
                    format!("spec.config.{k} must be a table of keys"),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters() {
        assert_eq!(topic_filter_error("a/+/b/#"), None);
        assert_eq!(topic_filter_error("devices/%c/up"), None);
        assert!(topic_filter_error("a/#/b").is_some());
        assert!(topic_filter_error("a/b#").is_some());
        assert!(topic_filter_error("a+/b").is_some());
        assert!(topic_filter_error("").is_some());
    }
}
