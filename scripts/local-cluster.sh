#!/usr/bin/env bash
# A local 3-node raftmq cluster on 127.0.0.1..3 (MQTT 1883/1884/1885, HTTP
# 9101..9103, gRPC 7101..7103), data under ./data/local-cluster. Node 1
# bootstraps; nodes 2 and 3 are added through the Admin CLI. The cluster
# port runs mutual TLS with certificates from `raftmq cluster certs` (issued
# once into data/local-cluster/certs): each node's names its node id, and
# the CLI presents the admin one.
#   scripts/local-cluster.sh [path to raftmq binary]     Ctrl-C stops all
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/raftmq}
[ -x "$bin" ] || cargo build --release -p raftmq
root=data/local-cluster
mkdir -p "$root"
certs=$root/certs
[ -f "$certs/admin.crt" ] ||
  "$bin" cluster certs --out "$certs" --nodes 3 --ip 127.0.0.2 --ip 127.0.0.3 >/dev/null
admin=(--cafile "$certs/ca.crt" --certfile "$certs/admin.crt" --keyfile "$certs/admin.key")
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
for id in 1 2 3; do
  dir=$root/node$id
  mkdir -p "$dir"
  cat > "$dir/raftmq.toml" <<TOML
data_dir = "$dir/data"
[http]
bind = "127.0.0.$id:910$id"
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:188$((id + 2))"
[cluster]
node_id = $id
bind = "127.0.0.$id:710$id"
advertise = "127.0.0.$id:710$id"
certfile = "$certs/node-$id.crt"
keyfile = "$certs/node-$id.key"
cafile = "$certs/ca.crt"
TOML
  "$bin" serve --config "$dir/raftmq.toml" >"$dir/log" 2>&1 &
  pids+=($!)
done
sleep 2
for id in 2 3; do
  "$bin" cluster --node 127.0.0.1:7101 "${admin[@]}" add --id $id --addr 127.0.0.$id:710$id || true
done
"$bin" cluster --node 127.0.0.1:7101 "${admin[@]}" status
echo "MQTT on 127.0.0.1:1883, :1884, :1885; logs in $root/node*/log; Ctrl-C stops"
wait
