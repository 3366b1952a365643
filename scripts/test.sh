#!/usr/bin/env bash
# The project's one test command (README, .ci/run): installs what the tests
# need on a fresh Debian machine, then runs every check. Test runner last, so
# its summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: mosquitto (interop peer and its clients), libssl-dev and
# pkg-config (the TLS-PSK listener links OpenSSL), the openssl CLI (the
# listener tests' s_client / s_server: TLS versions, PSK hint), prometheus
# for promtool (checks the alert rules and the dashboards' PromQL; its
# daemon is not used).
missing=()
command -v mosquitto >/dev/null || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
command -v openssl >/dev/null || missing+=(openssl)
dpkg -s libssl-dev >/dev/null 2>&1 || missing+=(libssl-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v promtool >/dev/null || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c 'import paho.mqtt' 2>/dev/null || python3 -m pip install --quiet 'paho-mqtt>=2,<3'

# The partition test runs brokers in containers (an image built FROM
# scratch, nothing pulled): it needs a Docker engine.
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    echo "== installing docker.io"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io >/dev/null
  fi
  echo "== starting the Docker engine"
  as_root sh -c 'nohup dockerd >/var/log/dockerd.log 2>&1 &'
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null || { echo "the Docker engine did not start; see /var/log/dockerd.log" >&2; exit 1; }
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

echo "== format"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The tests' raftmq-faulty binary: the broker with storage fault injection.
cargo clippy -p raftmq --all-targets --features fault-injection -- -D warnings
echo "== module graph (no import circle among broker/src's modules)"
python3 scripts/module-graph.py

if [ -x scripts/fuzz.sh ]; then
  echo "== fuzz (bounded)"
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
if [ -x scripts/operator-checks.sh ]; then
  echo "== operator: CRD drift, helm lint/template, schema validation"
  scripts/operator-checks.sh
fi

echo "== tests"
# The storage tests' raftmq-faulty (the broker with fault injection), built
# here rather than inside a test's time limit; beside raftmq, never over it.
cargo build -p raftmq --bin raftmq-faulty --features fault-injection
cargo nextest run --workspace --no-fail-fast
