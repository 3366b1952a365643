#!/usr/bin/env bash
# TLS handshakes per second on raftmq's TLS listener, measured with
# `openssl s_time -new` (a full handshake per connection, no resumption):
# TLS 1.2 and 1.3, with an ECDSA P-256 and an RSA 2048 server key. The
# certificates are made here, in a temporary directory, and thrown away.
#
#   cargo build --release -p raftmq
#   scripts/tls-handshakes.sh [SECONDS per run, default 10] [CLIENTS, default 1]
#   (BROKER=path/to/raftmq to measure another build)
#
# CLIENTS s_time processes run side by side; their rates are added. Client
# and broker share the machine, so the figure is a floor for the broker.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
clients=${2:-1}
bin=${BROKER:-target/release/raftmq}
[ -x "$bin" ] || { echo "build first: cargo build --release -p raftmq" >&2; exit 1; }

dir=$(mktemp -d)
broker=
cleanup() { [ -n "$broker" ] && kill "$broker" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=bench-ca -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$dir/ext"
for kind in ec rsa; do
  if [ "$kind" = ec ]; then opts=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else opts=(-newkey rsa:2048); fi
  openssl req "${opts[@]}" -nodes -subj /CN=localhost -keyout "$dir/$kind.key" -out "$dir/$kind.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$kind.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days 1 -extfile "$dir/ext" -out "$dir/$kind.crt" 2>/dev/null
done

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
tcp=$(port); ec=$(port); rsa=$(port); http=$(port); grpc=$(port)
cat >"$dir/raftmq.toml" <<EOF
data_dir = "$dir/data"
sys_interval = 0
[log]
level = "warn"
[http]
bind = "127.0.0.1:$http"
[cluster]
node_id = 1
bind = "127.0.0.1:$grpc"
advertise = "127.0.0.1:$grpc"
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$tcp"
[[listeners]]
name = "tls-ec"
kind = "tls"
bind = "127.0.0.1:$ec"
certfile = "$dir/ec.crt"
keyfile = "$dir/ec.key"
[[listeners]]
name = "tls-rsa"
kind = "tls"
bind = "127.0.0.1:$rsa"
certfile = "$dir/rsa.crt"
keyfile = "$dir/rsa.key"
EOF
env -u RAFTMQ_BIN "$bin" serve --config "$dir/raftmq.toml" >"$dir/broker.log" 2>&1 &
broker=$!
up=
for _ in $(seq 200); do
  if (echo >"/dev/tcp/127.0.0.1/$rsa") 2>/dev/null; then up=1; break; fi
  sleep 0.1
done
[ -n "$up" ] || { echo "raftmq did not start:" >&2; cat "$dir/broker.log" >&2; exit 1; }

echo "raftmq TLS handshakes/s: $clients client(s), ${seconds}s per run, $(nproc) cores"
for key in ec rsa; do
  p=$ec; [ "$key" = rsa ] && p=$rsa
  for v in 1_2 1_3; do
    pids=()
    for i in $(seq "$clients"); do
      openssl s_time -connect "127.0.0.1:$p" -new -time "$seconds" "-tls$v" \
        -CAfile "$dir/ca.crt" >"$dir/s_time.$i" 2>&1 &
      pids+=($!)
    done
    wait "${pids[@]}" || { cat "$dir"/s_time.* >&2; exit 1; }
    # "N connections in T real seconds" per client.
    total=$(cat "$dir"/s_time.* | awk '/connections in [0-9.]+ real seconds/ {n += $1; t = $4} END {if (t > 0) printf "%.0f", n / t; else print "?"}')
    printf '  %-3s key, TLS %s: %s handshakes/s\n' "$key" "${v/_/.}" "$total"
    rm -f "$dir"/s_time.*
  done
done
