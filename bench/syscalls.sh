#!/usr/bin/env bash
# System calls per message, by call, of Portcullis and of HAProxy in front of the same
# sink: strace -c on each proxy while smtp-source sends MESSAGES messages of 4 KiB, 20
# sessions, one connection per message.
#
#   bench/syscalls.sh [MESSAGES]
#
# IDENTITY= picks Portcullis' identity (default xclient; proxy-v2 and proxy-v1 send the
# PROXY header, and HAProxy then does too: send-proxy-v2 / send-proxy). PORTCULLIS=
# names the binary. strace slows both down; the counts, not the times, are the point.
# Needs strace, haproxy and postfix (smtp-source). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-2000}
IDENTITY=${IDENTITY:-xclient}
PORTCULLIS=${PORTCULLIS:-target/release/portcullis}
PORT=${PORT:-12760}
cargo build --release --quiet --example bench_sink
[ "$PORTCULLIS" = target/release/portcullis ] && cargo build --release --quiet
work=$(mktemp -d /tmp/portcullis-syscalls-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

sink=127.0.0.1:$((PORT + 2)) send_proxy=
case $IDENTITY in
  proxy-v2) sink=proxy@$sink send_proxy=send-proxy-v2 ;;
  proxy-v1) sink=proxy@$sink send_proxy=send-proxy ;;
esac
target/release/examples/bench_sink "$sink" & pids+=($!)
cat > "$work/p.toml" <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$PORT"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$((PORT + 2))"
identity = "$IDENTITY"
[limits]
max_connections = 20000
max_connections_per_ip = 20000
CFG
RUST_LOG=warn "$PORTCULLIS" run --config "$work/p.toml" 2>"$work/portcullis.log" & pids+=($!)
portcullis=$!
cat > "$work/h.cfg" <<CFG
global
  maxconn 5000
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend fe
  bind 127.0.0.1:$((PORT + 1))
  default_backend be
backend be
  server sink 127.0.0.1:$((PORT + 2)) $send_proxy
CFG
haproxy -f "$work/h.cfg" -db 2>"$work/haproxy.log" & pids+=($!)
haproxy=$!
for p in $PORT $((PORT + 1)); do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
sleep 0.5

# count NAME PID PORT: per-message system calls of PID (all threads) over one run
count() {
  strace -c -f -p "$2" -o "$work/$1.strace" 2>/dev/null &
  local tracer=$!
  sleep 1
  smtp-source -s 20 -m "$MESSAGES" -l 4096 -f a@example.org -t b@example.com "127.0.0.1:$3"
  sleep 0.5
  kill -INT $tracer
  wait $tracer 2>/dev/null || true
  awk -v n="$MESSAGES" -v name="$1" '
    $NF != "total" && $4 ~ /^[0-9]+$/ { calls = $4; errors = ($6 == "") ? 0 : $5; sys = $NF
      printf "%s %-14s %6.2f%s\n", name, sys, calls / n, (errors > 0) ? sprintf("  (%.2f failed)", errors / n) : ""
      total += calls }
    END { printf "%s %-14s %6.2f\n", name, "total", total / n }' "$work/$1.strace" | sort -k3 -rn
}
echo "== system calls per message: $MESSAGES messages, 20 sessions, one connection per message; Portcullis identity $IDENTITY; HAProxy${send_proxy:+ $send_proxy}"
count haproxy $haproxy $((PORT + 1))
count portcullis $portcullis $PORT
