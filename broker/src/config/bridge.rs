//! `[[bridges]]`: mosquitto's `connection` block in TOML, with mosquitto's
//! option names and meanings (the README's migration section has the
//! conversion table). Every check runs while the TOML is deserialised, so a
//! bad bridge is reported with the file and the line of its table.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::{Protocol, QoS};
use crate::topic_tree::{validate_filter, validate_topic_name, TopicLimits};

/// The protocol's own limits (the broker's may be tighter; they apply
/// to what the bridge publishes, as to any client).
const LIMITS: TopicLimits = TopicLimits {
    max_levels: 128,
    max_length: 65535,
};

/// One bridge to a remote broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawBridge", into = "RawBridge")]
pub struct BridgeConfig {
    pub name: String,
    pub addresses: Vec<Address>,
    pub round_robin: bool,
    pub topics: Vec<TopicRule>,
    pub protocol: Protocol,
    pub clean_start: bool,
    pub remote_clientid: Option<String>,
    pub remote_username: Option<String>,
    pub remote_password: Option<String>,
    pub remote_password_file: Option<PathBuf>,
    pub keepalive_interval: u16,
    pub restart_timeout: Backoff,
    pub try_private: bool,
    pub notifications: bool,
    pub notification_topic: Option<String>,
    pub tls: Option<BridgeTls>,
    pub max_queued_messages: Option<usize>,
}

/// How the bridge secures its connection to the remote broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BridgeTls {
    /// TLS verified against `cafile`; a client certificate when both
    /// `certfile` and `keyfile` are set.
    Certificates {
        cafile: PathBuf,
        certfile: Option<PathBuf>,
        keyfile: Option<PathBuf>,
        /// The name the remote's certificate must carry; default: the
        /// address's host.
        server_name: Option<String>,
        /// mosquitto's `bridge_insecure`: the chain is still verified, the
        /// host name is not.
        insecure: bool,
    },
    /// TLS-PSK (OpenSSL), the way Bluetooth gateways connect.
    Psk { identity: String, psk: PskKey },
}

/// Where the pre-shared key is: in the config (`psk`, hex), or in a file
/// holding it in hex (`psk_file`, read at each connection; a change to it
/// reconnects the bridge, see `BridgeSet::apply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PskKey {
    Hex(String),
    File(PathBuf),
}

impl PskKey {
    /// The key in hex, now.
    pub fn hex(&self) -> Result<String, String> {
        match self {
            PskKey::Hex(h) => Ok(h.clone()),
            PskKey::File(path) => std::fs::read_to_string(path)
                .map(|t| t.trim().to_string())
                .map_err(|e| format!("psk_file {}: {e}", path.display())),
        }
    }
}

/// A `host:port` the bridge may connect to (port 1883 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl TryFrom<&str> for Address {
    type Error = String;

    fn try_from(s: &str) -> Result<Self, String> {
        let (host, port) = match s.rsplit_once(':') {
            // `[::1]:1883`, `host:1883`; a bare IPv6 address has colons
            // but no brackets and takes the default port.
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                let port = p
                    .parse::<u16>()
                    .map_err(|_| format!("address `{s}`: `{p}` is not a port"))?;
                (h.trim_start_matches('[').trim_end_matches(']'), port)
            }
            _ => (s, 1883),
        };
        if host.is_empty() || port == 0 {
            return Err(format!(
                "address `{s}`: needs a host and a port other than 0"
            ));
        }
        Ok(Address {
            host: host.to_string(),
            port,
        })
    }
}

/// Which way a topic rule forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
    Both,
}

impl Direction {
    pub fn outgoing(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }

    pub fn incoming(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }
}

/// mosquitto's `topic pattern [[[out|in|both] qos] local-prefix
/// remote-prefix]`: `local_prefix + pattern` here is `remote_prefix +
/// pattern` there. `""` stands for an empty pattern or prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRule {
    pub pattern: String,
    pub direction: Direction,
    pub qos: QoS,
    pub local_prefix: String,
    pub remote_prefix: String,
}

impl TopicRule {
    /// The filter subscribed to on the local broker (out rules).
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter subscribed to on the remote broker (in rules).
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// `topic` (a local one matching [`Self::local_filter`]) as the remote
    /// names it.
    pub fn to_remote(&self, topic: &str) -> Option<String> {
        swap_prefix(topic, &self.local_prefix, &self.remote_prefix)
    }

    /// `topic` (a remote one matching [`Self::remote_filter`]) as named here.
    pub fn to_local(&self, topic: &str) -> Option<String> {
        swap_prefix(topic, &self.remote_prefix, &self.local_prefix)
    }

    fn render(&self) -> String {
        let quote = |s: &str| {
            if s.is_empty() {
                "\"\"".to_string()
            } else {
                s.to_string()
            }
        };
        let dir = match self.direction {
            Direction::Out => "out",
            Direction::In => "in",
            Direction::Both => "both",
        };
        format!(
            "{} {dir} {} {} {}",
            quote(&self.pattern),
            self.qos as u8,
            quote(&self.local_prefix),
            quote(&self.remote_prefix)
        )
    }
}

fn swap_prefix(topic: &str, from: &str, to: &str) -> Option<String> {
    topic.strip_prefix(from).map(|rest| format!("{to}{rest}"))
}

impl TryFrom<&str> for TopicRule {
    type Error = String;

    fn try_from(line: &str) -> Result<Self, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let unquote = |w: &str| {
            if w == "\"\"" {
                String::new()
            } else {
                w.to_string()
            }
        };
        let bad = |why: &str| format!("topic `{line}`: {why}");
        if words.is_empty() || words.len() == 4 || words.len() > 5 {
            return Err(bad(
                "expected `pattern [[[out|in|both] qos] local-prefix remote-prefix]`",
            ));
        }
        let direction = match words.get(1).copied() {
            None | Some("out") => Direction::Out,
            Some("in") => Direction::In,
            Some("both") => Direction::Both,
            Some(other) => return Err(bad(&format!("direction `{other}` is not out, in or both"))),
        };
        let qos = match words.get(2) {
            None => QoS::AtMostOnce,
            Some(q) => q
                .parse::<u8>()
                .ok()
                .and_then(QoS::from_u8)
                .ok_or_else(|| bad(&format!("QoS `{q}` is not 0, 1 or 2")))?,
        };
        let rule = TopicRule {
            pattern: unquote(words[0]),
            direction,
            qos,
            local_prefix: words.get(3).map(|w| unquote(w)).unwrap_or_default(),
            remote_prefix: words.get(4).map(|w| unquote(w)).unwrap_or_default(),
        };
        rule.check().map_err(|why| bad(&why))?;
        Ok(rule)
    }
}

impl TopicRule {
    /// mosquitto's rules: prefixes are topic names (no wildcards), and a
    /// rule with no pattern takes its whole topic from its prefixes.
    fn check(&self) -> Result<(), String> {
        let limits = LIMITS;
        for (what, prefix) in [
            ("local", &self.local_prefix),
            ("remote", &self.remote_prefix),
        ] {
            if !prefix.is_empty() && validate_topic_name(prefix, limits).is_err() {
                return Err(format!("{what} prefix `{prefix}` is not a topic name"));
            }
        }
        if self.pattern.is_empty() {
            if self.local_prefix.is_empty() && self.remote_prefix.is_empty() {
                return Err("an empty pattern needs a prefix".into());
            }
            return Ok(());
        }
        for filter in [self.local_filter(), self.remote_filter()] {
            if validate_filter(&filter, limits).is_err() {
                return Err(format!("`{filter}` is not a topic filter"));
            }
        }
        Ok(())
    }
}

/// mosquitto's `restart_timeout`: one number (a constant wait) or `base
/// cap` (a backoff between them, with jitter). Seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: u64,
    pub cap: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
enum RawBackoff {
    Constant(u64),
    Range(Vec<u64>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum RawProtocol {
    #[serde(rename = "3.1.1", alias = "mqttv311")]
    V311,
    #[serde(rename = "5.0", alias = "5", alias = "mqttv50")]
    V5,
}

/// The TOML form, checked into a [`BridgeConfig`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    name: String,
    #[serde(alias = "address")]
    addresses: Vec<String>,
    #[serde(default)]
    round_robin: bool,
    #[serde(default)]
    topic: Vec<String>,
    #[serde(default = "default_protocol", alias = "bridge_protocol_version")]
    protocol: RawProtocol,
    #[serde(default, alias = "cleansession")]
    clean_start: bool,
    #[serde(default)]
    remote_clientid: Option<String>,
    #[serde(default)]
    remote_username: Option<String>,
    #[serde(default)]
    remote_password: Option<String>,
    #[serde(default)]
    remote_password_file: Option<PathBuf>,
    #[serde(default = "default_keepalive")]
    keepalive_interval: u16,
    #[serde(default = "default_restart")]
    restart_timeout: RawBackoff,
    #[serde(default = "yes")]
    try_private: bool,
    #[serde(default = "yes")]
    notifications: bool,
    #[serde(default)]
    notification_topic: Option<String>,
    #[serde(default, alias = "bridge_cafile")]
    cafile: Option<PathBuf>,
    #[serde(default, alias = "bridge_certfile")]
    certfile: Option<PathBuf>,
    #[serde(default, alias = "bridge_keyfile")]
    keyfile: Option<PathBuf>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default, alias = "bridge_insecure")]
    insecure: bool,
    #[serde(default, alias = "bridge_identity")]
    identity: Option<String>,
    #[serde(default, alias = "bridge_psk")]
    psk: Option<String>,
    #[serde(default)]
    psk_file: Option<PathBuf>,
    #[serde(default)]
    max_queued_messages: Option<usize>,
}

fn default_protocol() -> RawProtocol {
    RawProtocol::V311
}
fn default_keepalive() -> u16 {
    60
}
fn default_restart() -> RawBackoff {
    RawBackoff::Range(vec![5, 30])
}
fn yes() -> bool {
    true
}

impl TryFrom<RawBridge> for BridgeConfig {
    type Error = String;

    fn try_from(r: RawBridge) -> Result<Self, String> {
        let name = r.name.clone();
        let bad = |why: String| format!("bridge `{name}`: {why}");
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "bridge name `{name}`: use letters, digits, `-`, `_` or `.`"
            ));
        }
        if r.addresses.is_empty() {
            return Err(bad("needs at least one address".into()));
        }
        let addresses = r
            .addresses
            .iter()
            .map(|a| Address::try_from(a.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        if r.topic.is_empty() {
            return Err(bad("needs at least one `topic` rule".into()));
        }
        let topics = r
            .topic
            .iter()
            .map(|t| TopicRule::try_from(t.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad)?;
        let restart_timeout = match &r.restart_timeout {
            RawBackoff::Constant(s) => Backoff { base: *s, cap: *s },
            RawBackoff::Range(v) => match v[..] {
                [base, cap] if base <= cap => Backoff { base, cap },
                _ => return Err(bad("restart_timeout is `secs` or `[base, cap]`".into())),
            },
        };
        if restart_timeout.cap == 0 {
            return Err(bad("restart_timeout must be at least 1 second".into()));
        }
        if r.remote_password.is_some() && r.remote_password_file.is_some() {
            return Err(bad(
                "remote_password and remote_password_file exclude each other".into(),
            ));
        }
        let tls = tls(&r).map_err(bad)?;
        if r.max_queued_messages == Some(0) {
            return Err(bad("max_queued_messages must be at least 1".into()));
        }
        if let Some(t) = &r.notification_topic {
            if validate_topic_name(t, LIMITS).is_err() {
                return Err(bad(format!("notification_topic `{t}` is not a topic name")));
            }
        }
        Ok(BridgeConfig {
            name: name.clone(),
            addresses,
            round_robin: r.round_robin,
            topics,
            protocol: match r.protocol {
                RawProtocol::V311 => Protocol::V311,
                RawProtocol::V5 => Protocol::V5,
            },
            clean_start: r.clean_start,
            remote_clientid: r.remote_clientid,
            remote_username: r.remote_username,
            remote_password: r.remote_password,
            remote_password_file: r.remote_password_file,
            keepalive_interval: r.keepalive_interval,
            restart_timeout,
            try_private: r.try_private,
            notifications: r.notifications,
            notification_topic: r.notification_topic,
            tls,
            max_queued_messages: r.max_queued_messages,
        })
    }
}

/// TLS with certificates, or TLS-PSK, or neither; never half of one.
fn tls(r: &RawBridge) -> Result<Option<BridgeTls>, String> {
    let psk = r.identity.is_some() || r.psk.is_some() || r.psk_file.is_some();
    let certs = r.cafile.is_some() || r.certfile.is_some() || r.keyfile.is_some();
    if psk && certs {
        return Err(
            "TLS-PSK (identity, psk) and certificates (cafile, ...) exclude each other".into(),
        );
    }
    if psk {
        let key = match (&r.psk, &r.psk_file) {
            (Some(psk), None) => {
                let hex_ok = !psk.is_empty()
                    && psk.len() % 2 == 0
                    && psk.chars().all(|c| c.is_ascii_hexdigit());
                if !hex_ok {
                    return Err("psk must be the key in hex (as in mosquitto's psk_file)".into());
                }
                PskKey::Hex(psk.clone())
            }
            (None, Some(file)) => PskKey::File(file.clone()),
            (Some(_), Some(_)) => return Err("psk and psk_file exclude each other".into()),
            (None, None) => return Err("TLS-PSK needs psk or psk_file".into()),
        };
        let Some(identity) = &r.identity else {
            return Err("TLS-PSK needs identity".into());
        };
        return Ok(Some(BridgeTls::Psk {
            identity: identity.clone(),
            psk: key,
        }));
    }
    if !certs {
        if r.insecure || r.server_name.is_some() {
            return Err("insecure and server_name need TLS (cafile)".into());
        }
        return Ok(None);
    }
    let Some(cafile) = r.cafile.clone() else {
        return Err("TLS needs cafile to verify the remote broker against".into());
    };
    if r.certfile.is_some() != r.keyfile.is_some() {
        return Err("certfile and keyfile go together".into());
    }
    Ok(Some(BridgeTls::Certificates {
        cafile,
        certfile: r.certfile.clone(),
        keyfile: r.keyfile.clone(),
        server_name: r.server_name.clone(),
        insecure: r.insecure,
    }))
}

impl From<BridgeConfig> for RawBridge {
    fn from(b: BridgeConfig) -> RawBridge {
        let (mut cafile, mut certfile, mut keyfile, mut server_name) = (None, None, None, None);
        let (mut insecure, mut identity, mut psk, mut psk_file) = (false, None, None, None);
        match b.tls {
            Some(BridgeTls::Certificates {
                cafile: ca,
                certfile: c,
                keyfile: k,
                server_name: s,
                insecure: i,
            }) => (cafile, certfile, keyfile, server_name, insecure) = (Some(ca), c, k, s, i),
            Some(BridgeTls::Psk {
                identity: id,
                psk: PskKey::Hex(key),
            }) => (identity, psk) = (Some(id), Some(key)),
            Some(BridgeTls::Psk {
                identity: id,
                psk: PskKey::File(file),
            }) => (identity, psk_file) = (Some(id), Some(file)),
            None => {}
        }
        RawBridge {
            name: b.name,
            addresses: b.addresses.iter().map(ToString::to_string).collect(),
            round_robin: b.round_robin,
            topic: b.topics.iter().map(TopicRule::render).collect(),
            protocol: if b.protocol.is_v5() {
                RawProtocol::V5
            } else {
                RawProtocol::V311
            },
            clean_start: b.clean_start,
            remote_clientid: b.remote_clientid,
            remote_username: b.remote_username,
            remote_password: b.remote_password,
            remote_password_file: b.remote_password_file,
            keepalive_interval: b.keepalive_interval,
            restart_timeout: RawBackoff::Range(vec![b.restart_timeout.base, b.restart_timeout.cap]),
            try_private: b.try_private,
            notifications: b.notifications,
            notification_topic: b.notification_topic,
            cafile,
            certfile,
            keyfile,
            server_name,
            insecure,
            identity,
            psk,
            psk_file,
            max_queued_messages: b.max_queued_messages,
        }
    }
}

impl BridgeConfig {
    /// The client id of the bridge's session on this broker (its outgoing
    /// queue). Clients cannot take it: it carries the bridge's identity.
    pub fn local_clientid(&self) -> String {
        format!("$bridge/{}", self.name)
    }

    /// The filters the bridge's session subscribes to here: its `out`
    /// rules' local filters.
    pub fn local_filters(&self) -> Vec<String> {
        self.topics
            .iter()
            .filter(|t| t.direction.outgoing())
            .map(|t| t.local_filter())
            .collect()
    }

    /// The files the bridge reads at each connection: its password,
    /// certificates and keys.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self.remote_password_file.iter().cloned().collect();
        match &self.tls {
            Some(BridgeTls::Certificates {
                cafile,
                certfile,
                keyfile,
                ..
            }) => {
                files.push(cafile.clone());
                files.extend(certfile.iter().chain(keyfile).cloned());
            }
            Some(BridgeTls::Psk {
                psk: PskKey::File(path),
                ..
            }) => files.push(path.clone()),
            Some(BridgeTls::Psk { .. }) | None => {}
        }
        files
    }

    /// The client id the remote broker sees (mosquitto: `<host>.<name>`).
    /// A StatefulSet pod's ordinal is left out (`mq-2` -> `mq`): every
    /// node of a cluster connects as the same client, so the remote's
    /// session (its QoS 2 state) carries over when another node takes the
    /// bridge over.
    pub fn remote_clientid(&self, hostname: &str) -> String {
        self.remote_clientid.clone().unwrap_or_else(|| {
            let host = match hostname.rsplit_once('-') {
                Some((set, ordinal))
                    if !set.is_empty()
                        && !ordinal.is_empty()
                        && ordinal.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    set
                }
                _ => hostname,
            };
            format!("{host}.{}", self.name)
        })
    }

    /// mosquitto's default: `$SYS/broker/connection/<name>/state`.
    pub fn notification_topic(&self) -> String {
        self.notification_topic
            .clone()
            .unwrap_or_else(|| format!("$SYS/broker/connection/{}/state", self.name))
    }
}

/// `bridges_file`: `[[bridges]]` tables with the same keys as inline ones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BridgesFile {
    #[serde(default)]
    bridges: Vec<BridgeConfig>,
}

/// Reads a `bridges_file`; the error names the file and, for a bad table,
/// its line.
pub fn read_bridges_file(path: &Path) -> Result<Vec<BridgeConfig>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read bridges_file {}: {e}", path.display()))?;
    let file: BridgesFile =
        toml::from_str(&text).map_err(|e| format!("bridges_file {}: {e}", path.display()))?;
    check_unique(&file.bridges).map_err(|e| format!("bridges_file {}: {e}", path.display()))?;
    Ok(file.bridges)
}

/// Checks across bridges: names are unique (they name the sessions).
pub fn check_unique(bridges: &[BridgeConfig]) -> Result<(), String> {
    let mut names: Vec<&str> = bridges.iter().map(|b| b.name.as_str()).collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(format!("two bridges are named `{}`", w[0])),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Result<TopicRule, String> {
        TopicRule::try_from(s)
    }

    #[test]
    fn topic_rules_read_as_mosquitto_does() {
        let r = rule("sensors/#").unwrap();
        assert_eq!((r.direction, r.qos), (Direction::Out, QoS::AtMostOnce));
        let r = rule("# both 2 site/ central/site1/").unwrap();
        assert_eq!(r.direction, Direction::Both);
        assert_eq!(r.qos, QoS::ExactlyOnce);
        assert_eq!(r.local_filter(), "site/#");
        assert_eq!(r.remote_filter(), "central/site1/#");
        assert_eq!(
            r.to_remote("site/a/b").as_deref(),
            Some("central/site1/a/b")
        );
        assert_eq!(r.to_local("central/site1/x").as_deref(), Some("site/x"));
        let r = rule("\"\" in 1 local/cmd remote/cmd").unwrap();
        assert_eq!(r.local_filter(), "local/cmd");
        assert_eq!(r.to_local("remote/cmd").as_deref(), Some("local/cmd"));
    }

    #[test]
    fn bad_topic_rules_are_refused() {
        for bad in [
            "a/# sideways 1",
            "a/# out 3",
            "a/# out 1 onlyone",
            "a/# out 1 x y z",
            "a/# out 1 lo+/ r/",
            "\"\" out 1 \"\" \"\"",
            "a/#/b out 1",
        ] {
            assert!(rule(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_psk_is_inline_or_in_a_file_not_both() {
        let parse = |keys: &str| {
            toml::from_str::<BridgeConfig>(&format!(
                "name = \"g\"\naddresses = [\"h\"]\ntopic = [\"a/# out\"]\nidentity = \"gw\"\n{keys}"
            ))
        };
        let b = parse("psk_file = \"/psk/key\"\n").unwrap();
        assert_eq!(
            b.tls,
            Some(BridgeTls::Psk {
                identity: "gw".into(),
                psk: PskKey::File("/psk/key".into())
            })
        );
        assert!(parse("psk = \"a1b2\"\npsk_file = \"/psk/key\"\n").is_err());
        assert!(parse("").is_err());
        // Written back the way it was read.
        let again: BridgeConfig = toml::from_str(&toml::to_string(&b).unwrap()).unwrap();
        assert_eq!(again, b);
    }

    #[test]
    fn the_remote_client_id_is_the_same_on_every_pod() {
        let b: BridgeConfig =
            toml::from_str("name = \"central\"\naddresses = [\"h\"]\ntopic = [\"a/# out\"]\n")
                .unwrap();
        assert_eq!(b.remote_clientid("mq-0"), "mq.central");
        assert_eq!(b.remote_clientid("mq-12"), "mq.central");
        assert_eq!(b.remote_clientid("gateway"), "gateway.central");
        assert_eq!(b.remote_clientid("gw-a"), "gw-a.central");
    }

    #[test]
    fn addresses_default_to_1883() {
        let a = Address::try_from("broker.example").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("broker.example", 1883));
        let a = Address::try_from("[::1]:8883").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 8883));
        assert!(Address::try_from("h:x").is_err());
    }
}
