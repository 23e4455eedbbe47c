#!/usr/bin/env bash
# Many concurrent sessions: holds SESSIONS idle sessions (after EHLO) spread over
# several client addresses, checks that the per-address limit refuses more, then closes
# them all and checks that descriptors and memory come back.
#
#   bench/load.sh [SESSIONS] [ADDRESSES]
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${1:-10000}
ADDRESSES=${2:-10}
PER_IP=$((SESSIONS / ADDRESSES))
PORT=${PORT:-12627}
ulimit -n "$(ulimit -Hn)"
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
cat > "$work/load.toml" <<CFG
[server]
hostname = "load.test"
[[listener]]
name = "load"
bind = "127.0.0.1:$PORT"
[[backend]]
address = "127.0.0.1:9"
[limits]
max_connections = $((SESSIONS + 1000))
max_connections_per_ip = $PER_IP
CFG
RUST_LOG=warn target/release/portcullis run --config "$work/load.toml" & pid=$!
sleep 1

fds() { ls "/proc/$pid/fd" | wc -l; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
echo "before:  $(fds) descriptors, $(rss) KiB RSS"
for round in $(seq "${ROUNDS:-3}"); do
  rm -f "$work/load.out"
  python3 bench/load.py 127.0.0.1 "$PORT" "$PER_IP" "$ADDRESSES" 20 5 > "$work/load.out" &
  client=$!
  until grep -q ready "$work/load.out" 2>/dev/null; do sleep 0.5; done
  echo "round $round: $(grep -v ready "$work/load.out" | tr '\n' ' ')"
  echo "holding: $(fds) descriptors, $(rss) KiB RSS"
  wait $client
  sleep 2
  # A second round that ends where the first did shows that nothing leaks: freed
  # memory stays with the allocator for reuse rather than going back to the system.
  echo "after:   $(fds) descriptors, $(rss) KiB RSS"
done
