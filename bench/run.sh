#!/usr/bin/env bash
# Throughput, CPU per message and memory per idle session: Portcullis against a direct
# connection to smtp-sink and HAProxy in TCP mode, all in the same run.
#
#   bench/run.sh [MESSAGES] [IDLE_SESSIONS]
#
# Needs: postfix (smtp-source, smtp-sink), haproxy, python3. Run as root (smtp-sink -u).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
IDLE=${2:-2000}
SESSIONS=20
SIZE=4096
SINK_PORT=${SINK_PORT:-12525}
HAPROXY_PORT=${HAPROXY_PORT:-12526}
PORTCULLIS_PORT=${PORTCULLIS_PORT:-12527}
ulimit -n "$(ulimit -Hn)"  # idle sessions need two descriptors each in a proxy

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --quiet

smtp-sink -u root -m $((IDLE + 100)) "127.0.0.1:$SINK_PORT" 1024 & pids+=($!)

cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend be
backend be
  server sink 127.0.0.1:$SINK_PORT
CFG
haproxy -f "$work/haproxy.cfg" -db 2>"$work/haproxy.log" & pids+=($!)
haproxy_pid=$!

identity=${IDENTITY:-xforward}
cat > "$work/portcullis.toml" <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$PORTCULLIS_PORT"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$SINK_PORT"
identity = "$identity"
[limits]
# All load comes from 127.0.0.1: lift the per-client limit for the benchmark.
max_connections = 20000
max_connections_per_ip = 20000
CFG
RUST_LOG=warn target/release/portcullis run --config "$work/portcullis.toml" & pids+=($!)
portcullis_pid=$!
sleep 1

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hz=$(getconf CLK_TCK)

# throughput NAME PORT PID|-  -> "NAME msg/s us-CPU/msg"
throughput() {
  local name=$1 port=$2 pid=$3 before after start end
  [ "$pid" = - ] || before=$(cpu_ticks "$pid")
  start=$(date +%s.%N)
  smtp-source -s $SESSIONS -m "$MESSAGES" -l $SIZE -f a@example.org -t b@example.com "127.0.0.1:$port"
  end=$(date +%s.%N)
  local rate cpu="-"
  rate=$(echo "$MESSAGES / ($end - $start)" | bc -l)
  if [ "$pid" != - ]; then
    after=$(cpu_ticks "$pid")
    cpu=$(echo "($after - $before) * 1000000 / $hz / $MESSAGES" | bc -l)
    cpu=$(printf '%.0f' "$cpu")
  fi
  printf '%-22s %8.0f msg/s   %6s us CPU/msg\n' "$name" "$rate" "$cpu"
}

# idle NAME PORT PID -> KiB of RSS per idle session after EHLO
idle() {
  local name=$1 port=$2 pid=$3 before after
  before=$(rss_kib "$pid")
  python3 bench/idle_sessions.py 127.0.0.1 "$port" "$IDLE" 600 > "$work/idle.out" &
  local holder=$!
  until grep -q ready "$work/idle.out" 2>/dev/null; do sleep 0.2; done
  sleep 1
  after=$(rss_kib "$pid")
  kill $holder; wait $holder 2>/dev/null || true
  printf '%-22s %8.2f KiB RSS per idle session (%d sessions)\n' "$name" "$(echo "($after - $before) / $IDLE" | bc -l)" "$IDLE"
}

echo "== $MESSAGES messages of $SIZE bytes, $SESSIONS parallel sessions, one connection per message =="
throughput "direct to smtp-sink" $SINK_PORT -
throughput "haproxy (tcp mode)" $HAPROXY_PORT $haproxy_pid
throughput "portcullis ($identity)" $PORTCULLIS_PORT $portcullis_pid
echo "== memory per idle session (connected, EHLO done) =="
idle "haproxy (tcp mode)" $HAPROXY_PORT $haproxy_pid
idle "portcullis" $PORTCULLIS_PORT $portcullis_pid
