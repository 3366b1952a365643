//! raftmq in Docker containers, for faults that only a network can make:
//! a node cut off from its peers while its clients still reach it. The
//! image is built from the broker binary under test (deploy/Dockerfile,
//! FROM scratch: no base image is pulled). Every container sits on two
//! networks: `cluster` (Raft and forwarding; the one a test cuts) and
//! `clients` (MQTT, HTTP and the Admin API from the test, never cut).
//! The cluster port runs mutual TLS with `raftmq cluster certs`
//! certificates for both networks' addresses, mounted read-only.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::cluster::Certs;
use crate::{broker_bin, run};

/// Node certificates for ids 1..=LAB_NODES.
const LAB_NODES: u64 = 5;

fn docker(args: &[&str]) -> (Option<i32>, String) {
    let (code, out, err) = run(Command::new("docker").args(args), Duration::from_secs(300));
    (code, format!("{out}{err}"))
}

fn must(args: &[&str]) -> String {
    let (code, out) = docker(args);
    assert_eq!(code, Some(0), "docker {}: {out}", args.join(" "));
    out
}

/// The broker image, built once per test process from the binary under
/// test.
pub fn image() -> String {
    static IMAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let (code, out) = docker(&["info", "--format", "{{.ServerVersion}}"]);
            assert_eq!(
                code,
                Some(0),
                "these tests need a running Docker engine (scripts/test.sh starts one): {out}"
            );
            let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let staged = tempfile::tempdir().expect("temp dir");
            let context = staged.path().join("context");
            let (code, out, err) = run(
                Command::new(root.join("deploy/stage-rootfs.sh"))
                    .arg(broker_bin())
                    .arg(&context),
                Duration::from_secs(120),
            );
            assert_eq!(code, Some(0), "stage-rootfs: {out}{err}");
            // One tag, replaced by each run (the old image is pruned below).
            let tag = "raftmq-e2e:test".to_string();
            let dockerfile = root.join("deploy/Dockerfile");
            must(&[
                "build",
                "-q",
                "-f",
                &dockerfile.display().to_string(),
                "-t",
                &tag,
                &context.display().to_string(),
            ]);
            tag
        })
        .clone()
}

/// Two networks and the containers on them; all removed on drop.
pub struct Lab {
    pub name: String,
    /// Third octet of both subnets: 172.28.N.0/24 (cluster), 172.29.N.0/24
    /// (clients).
    net: u8,
    containers: Vec<String>,
    /// The cluster's certificates (the CLI's admin ones too).
    pub certs: Certs,
    _certs_dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let pid = std::process::id();
        let net = (pid % 200 + 20) as u8;
        let name = format!("raftmq-e2e-{pid}");
        let dir = tempfile::tempdir().expect("certificate dir");
        let ips: Vec<String> = (1..=LAB_NODES)
            .flat_map(|id| [28, 29].map(|second| format!("172.{second}.{net}.{}", 10 + id)))
            .collect();
        let certs = Certs::issue(dir.path(), LAB_NODES, &ips);
        // The container's user (65532) reads them; the directory is this
        // test's own.
        for entry in std::fs::read_dir(dir.path())
            .expect("certificates")
            .flatten()
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o644));
        }
        let lab = Lab {
            name,
            net,
            containers: Vec::new(),
            certs,
            _certs_dir: dir,
        };
        for (kind, second) in [("cluster", 28), ("clients", 29)] {
            must(&[
                "network",
                "create",
                "--subnet",
                &format!("172.{second}.{net}.0/24"),
                &lab.network(kind),
            ]);
        }
        lab
    }

    fn network(&self, kind: &str) -> String {
        format!("{}-{kind}", self.name)
    }

    fn container(&self, id: u64) -> String {
        format!("{}-n{id}", self.name)
    }

    pub fn cluster_ip(&self, id: u64) -> String {
        format!("172.28.{}.{}", self.net, 10 + id)
    }

    pub fn client_ip(&self, id: u64) -> String {
        format!("172.29.{}.{}", self.net, 10 + id)
    }

    pub fn mqtt(&self, id: u64) -> SocketAddr {
        format!("{}:1883", self.client_ip(id))
            .parse()
            .expect("an address")
    }

    /// Where the test reaches node `id`'s Admin API.
    pub fn admin(&self, id: u64) -> String {
        format!("{}:7100", self.client_ip(id))
    }

    /// Starts node `id`; it advertises its cluster address to its peers.
    pub fn start(&mut self, image: &str, id: u64, election_timeout_ms: u64) {
        let name = self.container(id);
        let cluster_ip = self.cluster_ip(id);
        must(&[
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            &format!("raftmq-{}", id - 1),
            "--network",
            &self.network("cluster"),
            "--ip",
            &cluster_ip,
            "-e",
            &format!("RAFTMQ_CLUSTER__NODE_ID={id}"),
            "-e",
            &format!("RAFTMQ_CLUSTER__ADVERTISE={cluster_ip}:7100"),
            "-e",
            &format!("RAFTMQ_CLUSTER__ELECTION_TIMEOUT_MS={election_timeout_ms}"),
            "-e",
            "RAFTMQ_SYS_INTERVAL=0",
            "-v",
            &format!("{}:/certs:ro", self.certs.dir.display()),
            "-e",
            &format!("RAFTMQ_CLUSTER__CERTFILE=/certs/node-{id}.crt"),
            "-e",
            &format!("RAFTMQ_CLUSTER__KEYFILE=/certs/node-{id}.key"),
            "-e",
            "RAFTMQ_CLUSTER__CAFILE=/certs/ca.crt",
            image,
        ]);
        self.containers.push(name.clone());
        must(&[
            "network",
            "connect",
            "--ip",
            &self.client_ip(id),
            &self.network("clients"),
            &name,
        ]);
    }

    /// Cuts node `id` off from its peers (its clients still reach it).
    pub fn isolate(&self, id: u64) {
        must(&[
            "network",
            "disconnect",
            &self.network("cluster"),
            &self.container(id),
        ]);
    }

    pub fn heal(&self, id: u64) {
        must(&[
            "network",
            "connect",
            "--ip",
            &self.cluster_ip(id),
            &self.network("cluster"),
            &self.container(id),
        ]);
    }

    pub fn logs(&self, id: u64) -> String {
        docker(&["logs", &self.container(id)]).1
    }
}

impl Default for Lab {
    fn default() -> Self {
        Lab::new()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for c in &self.containers {
                eprintln!("---- {c} ----\n{}", docker(&["logs", c]).1);
            }
        }
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for kind in ["cluster", "clients"] {
            let _ = docker(&["network", "rm", &self.network(kind)]);
        }
        // Images of earlier runs, replaced under the same tag.
        let _ = docker(&["image", "prune", "-f"]);
    }
}
