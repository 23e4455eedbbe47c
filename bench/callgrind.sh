#!/usr/bin/env bash
# Instructions per message under valgrind's callgrind: a figure that does not depend on
# what else the machine is doing.
#
#   bench/callgrind.sh [PORTCULLIS_BINARY] [MESSAGES]
#
# Portcullis (one worker; identity IDENTITY, default xforward with connection reuse;
# xclient, proxy-v2, proxy-v1, none also) in front of examples/bench_sink, under
# callgrind, for each script:
#   idle        start, stop (subtracted from the others)
#   session     smtp-source -d -s 1 -m MESSAGES -l 4096: one session, the messages one
#               after another, each command after the previous reply
#   pipelined   examples/bench_source 1 MESSAGES 4096: one connection per message,
#               MAIL, RCPT and DATA in one write
# Prints instructions per message for each; KEEP=PREFIX keeps each callgrind output as
# PREFIX.SCRIPT (for callgrind_annotate). Needs valgrind and postfix (smtp-source).
# The clock calibration done once at start-up is taken out of every total.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/portcullis}
MESSAGES=${2:-1000}
PORT=${PORT:-12700}
IDENTITY=${IDENTITY:-xforward}
cargo build --release --quiet --example bench_sink --example bench_source
[ "$BIN" = target/release/portcullis ] && cargo build --release --quiet
work=$(mktemp -d /tmp/portcullis-callgrind-XXXXXX)
case $IDENTITY in proxy-v*) sink_addr="proxy@127.0.0.1:$((PORT + 1))" ;; *) sink_addr="127.0.0.1:$((PORT + 1))" ;; esac
target/release/examples/bench_sink "$sink_addr" & sink=$!
trap 'kill $sink 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/p.toml" <<CFG
[server]
hostname = "bench.test"
workers = 1
[[listener]]
name = "bench"
bind = "127.0.0.1:$PORT"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$((PORT + 1))"
identity = "$IDENTITY"
check_interval = "0s"
CFG

wait_port() {
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listening on port $1" >&2
  exit 1
}

# total SCRIPT: instructions executed by Portcullis over a run of SCRIPT
total() {
  rm -f "$work"/cg.out*
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$BIN" run --config "$work/p.toml" 2>"$work/valgrind.log" &
  local pid=$!
  wait_port "$PORT"
  case $1 in
    idle) ;;
    session) smtp-source -d -s 1 -m "$MESSAGES" -l 4096 -f a@example.org -t b@example.com "127.0.0.1:$PORT" ;;
    pipelined) target/release/examples/bench_source 1 "$MESSAGES" 4096 "127.0.0.1:$PORT" >/dev/null ;;
  esac
  kill -TERM $pid
  wait $pid || true
  if [ -n "${KEEP:-}" ]; then cp "$work/cg.out" "$KEEP.$1"; fi
  # Less the clock's start-up calibration (quanta, behind the metrics): it loops until
  # the TSC looks stable, so its cost differs from run to run (seen: 8.5M and 18.5M
  # instructions) and would otherwise swamp a difference of a few percent.
  local all calibration
  all=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out")
  calibration=$(callgrind_annotate --inclusive=yes "$work/cg.out" 2>/dev/null |
    awk '/quanta::Clock::new/ {gsub(",", "", $1); print $1; exit}')
  echo $((all - ${calibration:-0}))
}

idle=$(total idle)
for script in session pipelined; do
  t=$(total $script)
  echo "$script: $(((t - idle) / MESSAGES)) instructions per message ($t total, idle $idle)"
done
