#!/usr/bin/env bash
# What scraping /metrics costs QoS 0 throughput: `raftmq-bench fan-in`
# against one release broker, RUNS times without a scraper and RUNS times
# with one GETting /metrics every second, alternating so that a change in
# the machine's load hits both alike. Prints every run, the medians, the
# metric families and series on the broker, the broker's CPU time per scrape
# (what a scraper costs, whatever else the machine is doing), and the load
# average.
#
#   scripts/metrics-overhead.sh                 # 5 + 5 runs, 4 x 250k msgs
#   RUNS=5 PUBLISHERS=8 MESSAGES=100000 scripts/metrics-overhead.sh
#   BIN=/path/to/release/bin scripts/metrics-overhead.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
PUBLISHERS=${PUBLISHERS:-4}
MESSAGES=${MESSAGES:-250000}
PAYLOAD=${PAYLOAD:-64}

# BIN=DIR: use the raftmq and raftmq-bench binaries there instead of building.
if [ -n "${BIN:-}" ]; then
  bin=$BIN
else
  cargo build --release --quiet -p raftmq -p raftmq-bench
  bin=target/release
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
mqtt=$(free_port); http=$(free_port); grpc=$(free_port)
dir=$(mktemp -d)
broker=""; scraper=""
cleanup() {
  [ -n "$scraper" ] && kill "$scraper" 2>/dev/null || true
  [ -n "$broker" ] && kill "$broker" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

cat > "$dir/raftmq.toml" <<EOF
data_dir = "$dir/data"
sys_interval = 0
[log]
level = "warn"
[[listeners]]
kind = "tcp"
bind = "127.0.0.1:$mqtt"
[http]
bind = "127.0.0.1:$http"
[cluster]
node_id = 1
bind = "127.0.0.1:$grpc"
advertise = "127.0.0.1:$grpc"
EOF
"$bin/raftmq" serve --config "$dir/raftmq.toml" 2> "$dir/broker.log" &
broker=$!
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$http/readyz" >/dev/null && break
  sleep 0.1
done

bench() {
  "$bin/raftmq-bench" --addr "127.0.0.1:$mqtt" fan-in --publishers "$PUBLISHERS" \
    --messages "$MESSAGES" --qos 0 --payload "$PAYLOAD" | tail -n 1
}
rate() { python3 -c 'import json,sys; o=json.loads(sys.stdin.read()); print(o["msgs_per_sec"], o["lost"])'; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "fan-in: $PUBLISHERS publishers x $MESSAGES messages, QoS 0, $PAYLOAD-byte payloads"
without=(); with=()
for i in $(seq "$RUNS"); do
  read -r r lost < <(bench | rate)
  echo "run $i without scraper: $r msgs/s (lost $lost)"
  without+=("$r")
  ( while true; do curl -s -o /dev/null "http://127.0.0.1:$http/metrics"; sleep 1; done ) &
  scraper=$!
  read -r r lost < <(bench | rate)
  kill "$scraper"; wait "$scraper" 2>/dev/null || true; scraper=""
  echo "run $i with scraper:    $r msgs/s (lost $lost)"
  with+=("$r")
done
m0=$(printf '%s\n' "${without[@]}" | median)
m1=$(printf '%s\n' "${with[@]}" | median)
echo "median without scraper: $m0 msgs/s"
echo "median with scraper:    $m1 msgs/s ($(python3 -c "print(f'{($m1 - $m0) / $m0 * 100:+.1f}')")%)"
metrics=$(curl -s "http://127.0.0.1:$http/metrics")
echo "metric families: $(grep -c '^# TYPE ' <<<"$metrics"), series: $(grep -vc '^#' <<<"$metrics")"
# The broker's own CPU time (user + system, /proc/PID/stat) for 1000
# scrapes over one keep-alive connection.
cpu() { awk '{print $14 + $15}' "/proc/$broker/stat"; }
ticks=$(getconf CLK_TCK)
urls=(); for _ in $(seq 1000); do urls+=("http://127.0.0.1:$http/metrics"); done
before=$(cpu); start=$(date +%s%N)
curl -s "${urls[@]}" >/dev/null
wall=$(( ($(date +%s%N) - start) / 1000000 )); after=$(cpu)
echo "1000 scrapes ($(wc -c <<<"$metrics") bytes each): broker CPU $(( (after - before) * 1000 / ticks )) ms, wall $wall ms"
python3 -c "ms = ($after - $before) / $ticks; print(f'  = {ms:.3f} ms of broker CPU per scrape: {ms / 10:.3f} % of one core at one scrape per second')"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
