//! The command lines of `raftmq pub` and `raftmq sub`: mosquitto_pub's and
//! mosquitto_sub's options, with the same letters, so that a command
//! written for one works with the other (`-h` is the host, as there; help
//! is `--help` only).

use std::path::PathBuf;

use clap::{ArgAction, ArgGroup, Args};

/// The MQTT protocol version (`-V`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

fn parse_version(s: &str) -> Result<Version, String> {
    match s {
        "mqttv311" | "311" => Ok(Version::V311),
        "mqttv5" | "5" => Ok(Version::V5),
        "mqttv31" | "31" => Err(
            "MQTT 3.1 is not supported by this client; use mqttv311 or mqttv5 \
             (raftmq and mosquitto accept both)"
                .into(),
        ),
        _ => Err(format!(
            "unknown protocol version `{s}`: mqttv311 (311) or mqttv5 (5)"
        )),
    }
}

/// `-x`: seconds, or -1 / `∞` for a session that never expires.
fn parse_expiry(s: &str) -> Result<u32, String> {
    match s {
        "-1" | "∞" => Ok(u32::MAX),
        _ => s
            .parse::<u32>()
            .map_err(|_| format!("`{s}`: a number of seconds, or -1 for never")),
    }
}

/// What both commands share: where to connect and as whom.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The broker's host name or address.
    #[arg(short = 'h', long = "host", default_value = "localhost")]
    pub host: String,
    /// The broker's port. Default 1883, or 8883 with --cafile or --psk.
    #[arg(short = 'p', long = "port")]
    pub port: Option<u16>,
    /// Client id. Default: raftmq_pub_<pid> / raftmq_sub_<pid>.
    #[arg(short = 'i', long = "id")]
    pub id: Option<String>,
    /// Keep alive in seconds (0: none).
    #[arg(short = 'k', long = "keepalive", default_value_t = 60)]
    pub keepalive: u16,
    /// MQTT version: mqttv311 or mqttv5.
    #[arg(short = 'V', long = "protocol-version", default_value = "mqttv311",
          value_parser = parse_version)]
    pub version: Version,
    /// Username.
    #[arg(short = 'u', long = "username")]
    pub username: Option<String>,
    /// Password (with -u).
    #[arg(short = 'P', long = "pw", requires = "username")]
    pub password: Option<String>,
    /// Keep the session: no clean session / clean start (needs -i).
    #[arg(short = 'c', long = "disable-clean-session", requires = "id")]
    pub keep_session: bool,
    /// MQTT 5 session expiry in seconds (-1: never). Default: never with
    /// -c, else 0.
    #[arg(short = 'x', long = "session-expiry", value_parser = parse_expiry,
          allow_negative_numbers = true)]
    pub session_expiry: Option<u32>,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
}

/// Certificate TLS (rustls) or TLS-PSK (OpenSSL), as mosquitto's clients.
#[derive(Args, Debug, Clone, Default)]
pub struct TlsArgs {
    /// CA certificates (PEM) to verify the broker with; turns TLS on.
    #[arg(long, conflicts_with = "psk")]
    pub cafile: Option<PathBuf>,
    /// Client certificate (PEM), for brokers that require one.
    #[arg(long, requires_all = ["cafile", "key"])]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Do not check that the broker's certificate names the host (it is
    /// still checked against --cafile). For `kubectl port-forward` to a
    /// certificate issued for the Service name.
    #[arg(long, requires = "cafile")]
    pub insecure: bool,
    /// TLS-PSK: the pre-shared key, in hex; turns TLS-PSK on.
    #[arg(long, requires = "psk_identity")]
    pub psk: Option<String>,
    /// TLS-PSK: the identity the key belongs to.
    #[arg(long = "psk-identity", requires = "psk")]
    pub psk_identity: Option<String>,
}

impl ConnectArgs {
    pub fn port(&self) -> u16 {
        let secure = self.tls.cafile.is_some() || self.tls.psk.is_some();
        self.port.unwrap_or(if secure { 8883 } else { 1883 })
    }

    pub fn client_id(&self, tool: &str) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| format!("raftmq_{tool}_{}", std::process::id()))
    }
}

/// `raftmq pub`.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("payload").required(true)
    .args(["message", "file", "stdin_file", "stdin_line", "null_message"])))]
pub struct PubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The topic to publish to.
    #[arg(short = 't', long = "topic")]
    pub topic: String,
    /// The message.
    #[arg(short = 'm', long = "message")]
    pub message: Option<String>,
    /// Send the contents of a file as the message.
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Read stdin to its end and send it as one message.
    #[arg(short = 's', long = "stdin-file")]
    pub stdin_file: bool,
    /// Send each line of stdin as a message (as lines arrive).
    #[arg(short = 'l', long = "stdin-line")]
    pub stdin_line: bool,
    /// Send a zero-length message.
    #[arg(short = 'n', long = "null-message")]
    pub null_message: bool,
    /// QoS of the message.
    #[arg(short = 'q', long = "qos", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Retain the message.
    #[arg(short = 'r', long = "retain")]
    pub retain: bool,
    /// Send the message this many times.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Seconds between repeats (fractions allowed).
    #[arg(long = "repeat-delay", default_value_t = 0.0)]
    pub repeat_delay: f64,
}

/// `raftmq sub`.
#[derive(Args, Debug, Clone)]
pub struct SubArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic filter to subscribe to; may be repeated.
    #[arg(short = 't', long = "topic", required = true)]
    pub topics: Vec<String>,
    /// QoS of the subscriptions.
    #[arg(short = 'q', long = "qos", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Print the topic before each payload ("topic payload").
    #[arg(short = 'v', long = "verbose")]
    pub verbose: bool,
    /// Exit after this many messages.
    #[arg(short = 'C', long = "count", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Exit (code 27, "Timed out") after this many seconds from the
    /// connection unless done before.
    #[arg(short = 'W', long = "timeout", value_parser = clap::value_parser!(u32).range(1..))]
    pub timeout: Option<u32>,
    /// Do not print retained (stale) messages.
    #[arg(short = 'R', long = "no-stale")]
    pub no_stale: bool,
    /// Do not add a newline after each payload.
    #[arg(short = 'N', long = "no-eol")]
    pub no_eol: bool,
    /// Exit once the subscriptions are acknowledged.
    #[arg(short = 'E', long = "exit-after-sub")]
    pub exit_after_sub: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(disable_help_flag = true)]
    struct Sub {
        #[command(flatten)]
        a: SubArgs,
    }

    #[derive(Parser)]
    #[command(disable_help_flag = true)]
    struct Pub {
        #[command(flatten)]
        a: PubArgs,
    }

    #[test]
    fn mosquitto_sub_letters() {
        let s = Sub::try_parse_from([
            "sub", "-h", "mqtt", "-p", "1884", "-t", "a/#", "-t", "b", "-v", "-C", "3", "-q", "2",
            "-V", "mqttv5", "-u", "me", "-P", "pw", "-i", "id", "-c", "-x", "-1", "-W", "5",
        ])
        .unwrap()
        .a;
        assert_eq!(s.connect.host, "mqtt");
        assert_eq!(s.connect.port(), 1884);
        assert_eq!(s.topics, ["a/#", "b"]);
        assert!(s.verbose && s.connect.keep_session);
        assert_eq!((s.count, s.qos, s.timeout), (Some(3), 2, Some(5)));
        assert_eq!(s.connect.version, Version::V5);
        assert_eq!(s.connect.session_expiry, Some(u32::MAX));
        assert_eq!(s.connect.password.as_deref(), Some("pw"));
    }

    #[test]
    fn defaults_and_tls_port() {
        let s = Sub::try_parse_from(["sub", "-t", "x"]).unwrap().a;
        assert_eq!(
            (s.connect.host.as_str(), s.connect.port()),
            ("localhost", 1883)
        );
        assert_eq!(s.connect.version, Version::V311);
        let s = Sub::try_parse_from(["sub", "-t", "x", "--cafile", "ca.crt"])
            .unwrap()
            .a;
        assert_eq!(s.connect.port(), 8883);
        let s = Sub::try_parse_from(["sub", "-t", "x", "--psk", "00", "--psk-identity", "a"])
            .unwrap()
            .a;
        assert_eq!(s.connect.port(), 8883);
    }

    #[test]
    fn pub_needs_exactly_one_payload_source() {
        assert!(Pub::try_parse_from(["pub", "-t", "x"]).is_err());
        assert!(Pub::try_parse_from(["pub", "-t", "x", "-m", "a", "-n"]).is_err());
        let p = Pub::try_parse_from(["pub", "-t", "x", "-m", "hi", "-r", "-q", "1"])
            .unwrap()
            .a;
        assert_eq!(
            (p.message.as_deref(), p.retain, p.qos),
            (Some("hi"), true, 1)
        );
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Pub::try_parse_from(["pub", "-t", "x", "-n", "-q", "3"]).is_err());
        assert!(Sub::try_parse_from(["sub", "-t", "x", "-V", "mqttv31"]).is_err());
        assert!(
            Sub::try_parse_from(["sub", "-t", "x", "-c"]).is_err(),
            "-c needs -i"
        );
        assert!(Sub::try_parse_from(["sub", "-t", "x", "--psk", "00"]).is_err());
        assert!(Sub::try_parse_from(["sub", "-t", "x", "--cert", "c"]).is_err());
        assert!(Sub::try_parse_from(["sub"]).is_err(), "a topic is needed");
    }
}
