//! The end-to-end harness: starts the real `raftmq` binary as a child
//! process on free ports, with a config written to a temporary directory,
//! and gives tests what they need to talk to it and to hurt it (kill -9,
//! SIGSTOP). Clients are real: rumqttc, mosquitto_pub/sub, paho (Python),
//! and raw sockets speaking bytes.

pub mod access;
pub mod bridge;
// The operator's in-process Kubernetes API double, and the lab built on it
// (the operator, a kubelet stand-in running real brokers, QoS 1 load).
#[path = "../../operator/tests/api_double/mod.rs"]
pub mod api_double;
pub mod certs;
pub mod cluster;
pub mod containers;
pub mod load;
pub mod operator_lab;
pub mod probe;
pub mod process;
pub mod raw;
pub mod storage;

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The broker binary, built once per test process (a no-op when it is
/// fresh). `RAFTMQ_BIN` points at a prebuilt one instead.
pub fn broker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("RAFTMQ_BIN") {
            return PathBuf::from(bin);
        }
        build_bin("raftmq", &[])
    })
    .clone()
}

/// `raftmq-faulty`: the broker with storage fault injection compiled in
/// (`FAULT_INJECTION`, see `raftmq::cluster::fault`), a binary of its own
/// beside `raftmq`, so building it never replaces the one the other tests
/// run. `RAFTMQ_FAULTY_BIN` points at a prebuilt one instead.
pub fn faulty_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("RAFTMQ_FAULTY_BIN") {
            return PathBuf::from(bin);
        }
        build_bin("raftmq-faulty", &["--features", "fault-injection"])
    })
    .clone()
}

/// `cargo build -p raftmq --bin <name> <extra>` in the profile the tests
/// run in; returns the binary's path.
fn build_bin(name: &str, extra: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let release = profile_dir.ends_with("release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", "raftmq", "--bin", name]);
    cmd.args(extra);
    // Cargo sets these for the test process (the tests' own package);
    // ring's build script tracks some of them, so passing them on
    // would rebuild ring and all above it here, and again at the next
    // `cargo nextest run`.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let per_package = [
            "CARGO_PKG_",
            "CARGO_MANIFEST_",
            "CARGO_CRATE_",
            "CARGO_BIN_",
        ]
        .iter()
        .any(|p| k.starts_with(p));
        if per_package
            || k == "CARGO_PRIMARY_PACKAGE"
            || k == "CARGO_TARGET_TMPDIR"
            || k == "OUT_DIR"
        {
            cmd.env_remove(&key);
        }
    }
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p raftmq --bin {name} failed"
    );
    profile_dir.join(name)
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A broker's configuration, built up from TOML text. Placeholders
/// `{tcp}`, `{http}`, `{tls}`, `{psk}`, `{ws}`, `{wss}`, `{grpc}`, `{dir}` are replaced
/// by free ports and the broker's directory.
pub struct BrokerConfig {
    toml: String,
    env: Vec<(String, String)>,
    /// Extra `raftmq serve` arguments after `--config FILE`.
    args: Vec<String>,
    /// Written as the top-level `sys_interval` key; 0 (no `$SYS`) unless a
    /// test asks for it with [`BrokerConfig::sys_interval`].
    sys_interval: u64,
    /// The binary to run; `broker_bin()` unless set ([`faulty_bin`]).
    bin: Option<PathBuf>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl BrokerConfig {
    /// One TCP listener, HTTP on, `$SYS` off, short auth-failure delay.
    pub fn new() -> Self {
        BrokerConfig {
            toml: String::new(),
            env: Vec::new(),
            args: Vec::new(),
            sys_interval: 0,
            bin: None,
        }
    }

    /// Runs `bin` instead of the normal broker binary.
    pub fn binary(mut self, bin: PathBuf) -> Self {
        self.bin = Some(bin);
        self
    }

    /// Seconds between `$SYS` updates (the harness default is 0: off).
    pub fn sys_interval(mut self, seconds: u64) -> Self {
        self.sys_interval = seconds;
        self
    }

    /// Adds top-level keys (before any table).
    pub fn top(mut self, line: &str) -> Self {
        self.toml = format!("{line}\n{}", self.toml);
        self
    }

    /// Appends raw TOML (tables, arrays of tables).
    pub fn raw(mut self, text: &str) -> Self {
        self.toml.push('\n');
        self.toml.push_str(text);
        self.toml.push('\n');
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// An extra `raftmq serve` argument (`--log-json`).
    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// Ports a broker was given.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub tcp: u16,
    pub http: u16,
    pub tls: u16,
    pub psk: u16,
    pub ws: u16,
    pub wss: u16,
    /// Cluster gRPC (Raft, Admin).
    pub grpc: u16,
}

/// A running broker process. Killed (SIGKILL) when dropped.
pub struct Broker {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub ports: Ports,
    config_path: PathBuf,
    env: Vec<(String, String)>,
    args: Vec<String>,
    bin: Option<PathBuf>,
}

impl Broker {
    /// Starts a broker with the default config plus `config`'s text and
    /// waits until its TCP listener accepts.
    pub fn start(config: BrokerConfig) -> Broker {
        Self::try_start(config).expect("broker starts")
    }

    /// Ports are picked free but released before the broker binds them,
    /// so a test running beside this one may take one in between: the
    /// broker then fails to bind, and is started again on new ports.
    pub fn try_start(config: BrokerConfig) -> anyhow::Result<Broker> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start_once(&config) {
                Err(e) if attempt < 5 && e.to_string().contains("Address already in use") => {
                    continue
                }
                r => return r,
            }
        }
    }

    fn try_start_once(config: &BrokerConfig) -> anyhow::Result<Broker> {
        let dir = tempfile::tempdir()?;
        let ports = Ports {
            tcp: free_port(),
            http: free_port(),
            tls: free_port(),
            psk: free_port(),
            ws: free_port(),
            wss: free_port(),
            grpc: free_port(),
        };
        let d = dir.path().display().to_string();
        let mut text = format!(
            "data_dir = \"{d}/data\"\nsys_interval = {}\n{}\n[http]\nbind = \"127.0.0.1:{{http}}\"\n",
            config.sys_interval, config.toml
        );
        if !text.contains("[[listeners]]") {
            text.push_str("\n[[listeners]]\nkind = \"tcp\"\nbind = \"127.0.0.1:{tcp}\"\n");
        }
        if !text.contains("[cluster]") {
            // A one-node Raft group on a port of its own.
            text.push_str(
                "\n[cluster]\nnode_id = 1\nbind = \"127.0.0.1:{grpc}\"\nadvertise = \"127.0.0.1:{grpc}\"\n",
            );
        }
        let text = substitute(&text, &ports, &d);
        let config_path = dir.path().join("raftmq.toml");
        std::fs::write(&config_path, text)?;
        let mut broker = Broker {
            child: None,
            dir,
            ports,
            config_path,
            env: config.env.clone(),
            args: config.args.clone(),
            bin: config.bin.clone(),
        };
        broker.spawn()?;
        Ok(broker)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = Command::new(self.bin.clone().unwrap_or_else(broker_bin));
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .args(&self.args)
            .env_remove("RUST_LOG")
            // Ours (the broker to test), not a config key for the broker.
            .env_remove("RAFTMQ_BIN")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // `E2E_BROKER_LOG=raftmq=debug cargo nextest run ...` shows
            // more of what the brokers did in a failing test's output.
            .envs(std::env::var("E2E_BROKER_LOG").map(|l| ("RUST_LOG", l)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let logged = self.logs().len();
        self.child = Some(cmd.spawn()?);
        self.wait_listening(logged, Duration::from_secs(20))
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("broker.log")
    }

    /// Everything the broker wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.ports.tcp))
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.http)
    }

    /// Waits until this broker (not another one that took its port) has
    /// bound every listener: its own log, past `logged` bytes, says it
    /// runs, and its TCP port accepts.
    fn wait_listening(&mut self, logged: usize, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        // A test that narrows the brokers' log filter may hide the line.
        let quiet = std::env::var_os("E2E_BROKER_LOG").is_some();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    anyhow::bail!("broker exited with {status}:\n{}", self.logs());
                }
            }
            let running = quiet
                || self
                    .logs()
                    .get(logged..)
                    .is_some_and(|l| l.contains("raftmq running"));
            if running && TcpStream::connect(self.tcp_addr()).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                anyhow::bail!("broker did not listen in {timeout:?}:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// kill -9: no shutdown path runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays, sockets stay open, nothing answers.
    pub fn pause(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    pub fn resume(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    pub fn sighup(&self) {
        signal(self.pid(), libc::SIGHUP);
    }

    /// SIGTERM and wait for a clean exit; returns the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id() as i32, libc::SIGTERM);
        child.wait().ok().and_then(|s| s.code())
    }

    /// Starts the process again on the same ports, directory and config.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn().expect("broker restarts");
    }

    /// kill -9, then starts again with `extra` arguments for this start
    /// only; the error carries the broker's log when it does not start.
    pub fn try_restart_with(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        self.kill9();
        let kept = self.args.clone();
        self.args.extend(extra.iter().map(|a| a.to_string()));
        let started = self.spawn();
        self.args = kept;
        started
    }

    /// Whether the process still runs (a node that exits on its own).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Rewrites the config file (for reload tests); placeholders allowed.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// GETs an HTTP path and returns (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(&self.http_url(path), None)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("---- broker log ----\n{}", self.logs());
        }
    }
}

fn substitute(text: &str, p: &Ports, dir: &str) -> String {
    text.replace("{tcp}", &p.tcp.to_string())
        .replace("{http}", &p.http.to_string())
        .replace("{tls}", &p.tls.to_string())
        .replace("{psk}", &p.psk.to_string())
        .replace("{ws}", &p.ws.to_string())
        .replace("{wss}", &p.wss.to_string())
        .replace("{grpc}", &p.grpc.to_string())
        .replace("{dir}", dir)
}

fn signal(pid: i32, sig: i32) {
    if pid > 0 {
        // SAFETY: kill(2) with a pid of our own child.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// A plain HTTP GET with an optional `Authorization` header.
pub fn http_get(url: &str, auth: Option<&str>) -> (u16, String) {
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let mut req = agent.get(url);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    match req.call() {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let body = resp.body_mut().read_to_string().unwrap_or_default();
            (status, body)
        }
        Err(e) => panic!("GET {url}: {e}"),
    }
}

/// Runs a command to completion with a timeout; returns (exit code, stdout,
/// stderr). Used for mosquitto_pub/sub and python clients.
pub fn run(cmd: &mut Command, timeout: Duration) -> (Option<i32>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().ok().flatten().is_some() || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let status = child.wait().ok();
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (status.and_then(|s| s.code()), out, err)
}

/// Polls `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// Whether a system tool exists (the test command installs it; a test that
/// needs it fails loudly rather than skipping).
pub fn require_tool(name: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {name}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "{name} is not installed; run ./scripts/test.sh, which installs it"
    );
}
