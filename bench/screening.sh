#!/usr/bin/env bash
# The cost of screening per connection: Portcullis in front of smtp-sink with more and
# more of [screen] switched on, one message per connection.
#
#   bench/screening.sh [MESSAGES] [ROUNDS] [LATENCY_CONNECTIONS]
#
# For each variant (VARIANTS="none local dns dns-nocache redis all all-nocache" by default):
#   - CPU per connection of the portcullis process (utime+stime, /proc/PID/stat) and
#     msg/s, while smtp-source sends MESSAGES messages over 20 parallel sessions, one
#     connection each; the median of ROUNDS rounds (after a warm-up round). unbound's
#     and redis-server's CPU, DNS queries and Redis commands per connection alongside.
#   - Latency to the greeting of one connection at a time: LATENCY_CONNECTIONS
#     connections from 127.0.0.1 (the same client again: DNS answers cached), then as
#     many first contacts from distinct addresses 127.0.1.1, 127.0.1.2, ...
#
# Variants:
#   none         no rate limits, no [screen], no [store]
#   local        the three rates (never reached: 1000000/s) and ban_after, in memory
#   dns          local + two DNS lists (a blocklist and an allowlist) through unbound;
#                the zones have an SOA, so NXDOMAIN is cached (negative TTL 300 s), as
#                with real lists
#   dns-nocache  the same without an SOA in the zones: unbound's NXDOMAIN then carries
#                no negative TTL and hickory caches it for 0 s; every connection asks
#                (hickory shares a lookup already in flight for the same name, so 20
#                parallel sessions from one address send fewer queries than lookups:
#                the "DNS qry/conn" column shows how many reached unbound)
#   redis        local, with the state in Redis ([store] redis)
#   all          dns + redis;  all-nocache: dns-nocache + redis
# Pregreet is off everywhere: its cost is a wait, not CPU.
#
# Needs: postfix (smtp-source, smtp-sink), unbound, unbound-control, redis-server,
# redis-cli, python3, bc. Run as root (smtp-sink -u).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
ROUNDS=${2:-3}
LATENCY=${3:-500}
VARIANTS=${VARIANTS:-none local dns dns-nocache redis all all-nocache}
SESSIONS=20
SIZE=4096
SINK_PORT=${SINK_PORT:-12535}
PORTCULLIS_PORT=${PORTCULLIS_PORT:-12537}
ADMIN_PORT=${ADMIN_PORT:-12538}
DNS_PORT=${DNS_PORT:-12553}
REDIS_PORT=${REDIS_PORT:-12579}
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
portcullis_pid=
cleanup() {
  [ -z "$portcullis_pid" ] || kill "$portcullis_pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done; echo "port $1 not listening" >&2; exit 1; }

smtp-sink -u root -m 1000 "127.0.0.1:$SINK_PORT" 1024 & pids+=($!)

# unbound answering from local data only. bl.test/al.test have an SOA (negative answers
# cacheable for 300 s); bl.nocache.test/al.nocache.test have none. No client of this
# benchmark is listed: every lookup is an NXDOMAIN.
soa() { echo "  local-data: \"$1. 3600 IN SOA ns.$1. hostmaster.$1. 1 3600 600 86400 300\""; }
cat > "$work/unbound.conf" <<CFG
server:
  interface: 127.0.0.1@$DNS_PORT
  port: $DNS_PORT
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$work"
  pidfile: "$work/unbound.pid"
  use-syslog: no
  logfile: "$work/unbound.log"
  verbosity: 1
  access-control: 127.0.0.0/8 allow
  local-zone: "bl.test." static
  local-zone: "al.test." static
  local-zone: "bl.nocache.test." static
  local-zone: "al.nocache.test." static
$(soa bl.test)
$(soa al.test)
remote-control:
  control-enable: yes
  control-interface: $work/unbound.ctl
  control-use-cert: no
CFG
unbound -c "$work/unbound.conf" & pids+=($!)
unbound_pid=$!
wait_port "$DNS_PORT"

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 & pids+=($!)
redis_pid=$!
wait_port "$REDIS_PORT"

config() {
  local variant=$1
  cat <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$PORTCULLIS_PORT"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$SINK_PORT"
identity = "xforward"
[admin]
bind = "127.0.0.1:$ADMIN_PORT"
[limits]
# All load comes from 127.0.0.1: lift the per-client limit for the benchmark.
max_connections = 20000
max_connections_per_ip = 20000
CFG
  [ "$variant" = none ] && return
  local zones='"bl.test=127.0.0.[2..11]*2", "al.test*-2"'
  [[ $variant == *nocache ]] && zones='"bl.nocache.test=127.0.0.[2..11]*2", "al.nocache.test*-2"'
  cat <<CFG
# Checked on every connection, message and recipient; never reached.
max_connection_rate = "1000000/s"
max_message_rate = "1000000/s"
max_recipient_rate = "1000000/s"
[screen]
ban_after = 10
pregreet = false
CFG
  case $variant in dns* | all*)
    cat <<CFG
nameservers = ["127.0.0.1:$DNS_PORT"]
dnsbl = [$zones]
threshold = 2
dnsbl_timeout = "2s"
CFG
  esac
  case $variant in redis | all*)
    cat <<CFG
[store]
redis = "redis://127.0.0.1:$REDIS_PORT/0"
CFG
  esac
}

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
dns_queries() { unbound-control -c "$work/unbound.conf" stats_noreset | awk -F= '$1 == "total.num.queries" {print $2}'; }
# Calls Portcullis makes (its scripts), not the commands the scripts run inside Redis.
redis_calls() { redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
  awk -F'[:=,]' '$1 ~ /^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|fcall)$/ {n += $3} END {print n + 0}'; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
dnsbl_metric() { python3 - "$ADMIN_PORT" <<'PY'
import sys, urllib.request
page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(" ".join(f"{l.split('{', 1)[1].split('}')[0]}={l.rsplit(' ', 1)[1]}" for l in page.splitlines()
               if l.startswith("portcullis_dnsbl_lookups_total{")) or "-")
PY
}

# One round of smtp-source; appends "msg/s portcullis-us unbound-us redis-us DNS-queries/conn Redis-calls/conn".
round() {
  local p0 u0 r0 q0 c0 start end
  p0=$(cpu_ticks "$portcullis_pid"); u0=$(cpu_ticks "$unbound_pid"); r0=$(cpu_ticks "$redis_pid")
  q0=$(dns_queries); c0=$(redis_calls)
  start=$(date +%s.%N)
  smtp-source -s $SESSIONS -m "$1" -l $SIZE -f s@example.org -t u@example.com "127.0.0.1:$PORTCULLIS_PORT"
  end=$(date +%s.%N)
  local per="/ $1 * 1000000 / $hz"
  echo "$(echo "$1 / ($end - $start)" | bc -l)" \
    "$(echo "($(cpu_ticks "$portcullis_pid") - $p0) $per" | bc -l)" \
    "$(echo "($(cpu_ticks "$unbound_pid") - $u0) $per" | bc -l)" \
    "$(echo "($(cpu_ticks "$redis_pid") - $r0) $per" | bc -l)" \
    "$(echo "($(dns_queries) - $q0) / $1" | bc -l)" \
    "$(echo "($(redis_calls) - $c0) / $1" | bc -l)"
}

echo "== portcullis $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
echo "== $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "== $MESSAGES messages of $SIZE bytes per round, $SESSIONS parallel sessions, one connection per message; median of $ROUNDS rounds"
echo "== greeting latency: $LATENCY connections one at a time (us, connect to final 220 line)"
printf '%-12s %7s %9s %9s %8s %9s %9s | %-22s | %-22s\n' variant msg/s "us/conn" "unbound" "redis" "DNS"  "Redis" \
  "greeting, same client" "greeting, first contact"
printf '%-12s %7s %9s %9s %8s %9s %9s | %-22s | %-22s\n' "" "" portcullis "us/conn" "us/conn" "qry/conn" "call/conn" "p50 / p99 us" "p50 / p99 us"
for variant in $VARIANTS; do
  config "$variant" > "$work/$variant.toml"
  redis-cli -p "$REDIS_PORT" flushall >/dev/null  # first contacts are first contacts again
  RUST_LOG=warn target/release/portcullis run --config "$work/$variant.toml" 2>"$work/$variant.log" &
  portcullis_pid=$!
  wait_port "$PORTCULLIS_PORT"
  round 1000 >/dev/null  # warm-up: connections, resolver, DNS cache, Redis scripts
  : > "$work/rounds"
  for _ in $(seq "$ROUNDS"); do round "$MESSAGES" >> "$work/rounds"; done
  col() { awk -v c="$1" '{print $c}' "$work/rounds" | median; }
  same=$(python3 bench/greeting_latency.py 127.0.0.1 "$PORTCULLIS_PORT" "$LATENCY")
  first=$(python3 bench/greeting_latency.py 127.0.0.1 "$PORTCULLIS_PORT" "$LATENCY" 127.0.1.1)
  lat() { sed -E 's/.*p50=([0-9]+).*p99=([0-9]+).*/\1 \/ \2/' <<<"$1"; }
  printf '%-12s %7.0f %9.1f %9.1f %8.1f %9.2f %9.2f | %-22s | %-22s\n' "$variant" "$(col 1)" "$(col 2)" "$(col 3)" \
    "$(col 4)" "$(col 5)" "$(col 6)" "$(lat "$same")" "$(lat "$first")"
  if [ -n "${VERBOSE:-}" ]; then sed 's/^/    round: /' "$work/rounds"; echo "    same: $same"; echo "    first: $first"; \
    echo "    dnsbl lookups (portcullis metrics): $(dnsbl_metric)"; fi
  kill "$portcullis_pid"; wait "$portcullis_pid" 2>/dev/null || true
  portcullis_pid=
  if grep -q . "$work/$variant.log"; then echo "    portcullis log ($variant):"; sed 's/^/      /' "$work/$variant.log" | head -5; fi
done
