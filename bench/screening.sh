#!/usr/bin/env bash
# The cost of screening per connection: Portcullis in front of smtp-sink with more and
# more of [screen] switched on, one message per connection.
#
#   bench/screening.sh [MESSAGES] [ROUNDS] [LATENCY_CONNECTIONS]
#
# Every variant runs as its own Portcullis instance, all at once (idle ones cost
# nothing), and the measurements take turns between them, so that drift on the
# machine (a busy neighbour on a VM) spreads over all variants instead of biasing one.
#
#   - CPU per connection of the variant's portcullis process (utime+stime from
#     /proc/PID/stat) and msg/s, while smtp-source sends MESSAGES messages over 20
#     parallel sessions, one connection per message; median of ROUNDS rounds, after a
#     warm-up. unbound's and redis-server's CPU, the DNS queries that reached unbound
#     and Portcullis's calls to Redis, per connection, alongside.
#   - Latency to the greeting (connect() to the final "220 " line, then QUIT), one
#     connection at a time: LATENCY_CONNECTIONS from 127.0.0.1 (the same client again:
#     DNS answers cached), and as many first contacts from distinct addresses 127.0.1.1,
#     127.0.1.2, ... (DNS answers, rates and bans all new); taken in chunks of 100,
#     taking turns between variants, pooled; p50 and p99.
#
# Variants (VARIANTS="none local dns dns-nocache redis all all-nocache" by default):
#   none         no rate limits, no [screen], no [store]
#   local        the three rates (checked, never reached: 1000000/s) and ban_after, in
#                memory
#   dns          local + two DNS lists (a blocklist and an allowlist) through unbound;
#                no client is listed, every answer is NXDOMAIN. The zones have an SOA,
#                so NXDOMAIN is cached for its negative TTL (300 s), as with real lists
#   dns-nocache  the same, zones without an SOA (as in tests/e2e/support.rs Unbound): unbound's
#                NXDOMAIN then carries no negative TTL and hickory caches it for 0 s, so
#                every connection looks up (hickory shares a lookup already in flight
#                for the same name: 20 parallel sessions from one address send fewer
#                queries than lookups; the "DNS qry/conn" column counts what reached
#                unbound)
#   redis        local, with the state in Redis ([store] redis)
#   all          dns + redis;  all-nocache: dns-nocache + redis
# Pregreet is off everywhere: its cost is a wait, not CPU.
#
# Needs: postfix (smtp-source, smtp-sink), unbound, unbound-control, redis-server,
# redis-cli, python3, bc. Run as root (smtp-sink -u). VERBOSE=1 prints every round.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-10000}
ROUNDS=${2:-5}
LATENCY=${3:-500}
read -r -a variants <<<"${VARIANTS:-none local dns dns-nocache redis all all-nocache}"
SESSIONS=20
SIZE=4096
CHUNK=100
SINK_PORT=${SINK_PORT:-12535}
DNS_PORT=${DNS_PORT:-12553}
REDIS_PORT=${REDIS_PORT:-12579}
SMTP_BASE=${SMTP_BASE:-12540}   # variant i listens on SMTP_BASE+i,
ADMIN_BASE=${ADMIN_BASE:-12560} # its admin endpoint on ADMIN_BASE+i
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listening on port $1" >&2
  exit 1
}

smtp-sink -u root -m 1000 "127.0.0.1:$SINK_PORT" 1024 & pids+=($!)

# unbound answering from local data only. bl.test/al.test have an SOA (negative answers
# cacheable for 300 s); bl.nocache.test/al.nocache.test have none.
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

# config VARIANT SMTP_PORT ADMIN_PORT
config() {
  local variant=$1
  cat <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$2"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$SINK_PORT"
identity = "xforward"
[admin]
bind = "127.0.0.1:$3"
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
prefix = "bench-$variant:"
CFG
  esac
}

declare -A pid port admin
for i in "${!variants[@]}"; do
  v=${variants[$i]}
  port[$v]=$((SMTP_BASE + i))
  admin[$v]=$((ADMIN_BASE + i))
  config "$v" "${port[$v]}" "${admin[$v]}" > "$work/$v.toml"
  RUST_LOG=warn target/release/portcullis run --config "$work/$v.toml" 2>"$work/$v.log" & pids+=($!)
  pid[$v]=$!
done
for v in "${variants[@]}"; do wait_port "${port[$v]}"; done

hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
dns_queries() { unbound-control -c "$work/unbound.conf" stats_noreset | awk -F= '$1 == "total.num.queries" {print $2}'; }
# Calls Portcullis makes (its scripts), not the commands the scripts run inside Redis.
redis_calls() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:=,]' '$1 ~ /^cmdstat_(eval|evalsha|eval_ro|evalsha_ro|fcall)$/ {n += $3} END {print n + 0}'
}
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
percentile() { sort -g | awk -v q="$1" '{v[NR] = $1} END {i = int(q * NR) + 1; if (i > NR) i = NR; printf "%.0f", v[i]}'; }
dnsbl_lookups() {
  python3 - "$1" <<'PY'
import sys, urllib.request
page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
print(" ".join(f"{l.split('{', 1)[1].split('}')[0]}={l.rsplit(' ', 1)[1]}" for l in page.splitlines()
               if l.startswith("portcullis_dnsbl_lookups_total{")) or "-")
PY
}

# round VARIANT MESSAGES: one smtp-source run; prints "msg/s portcullis-us/conn
# unbound-us/conn redis-us/conn DNS-queries/conn Redis-calls/conn".
round() {
  local v=$1 n=$2 p0 u0 r0 q0 c0 start end
  p0=$(cpu_ticks "${pid[$v]}"); u0=$(cpu_ticks "$unbound_pid"); r0=$(cpu_ticks "$redis_pid")
  q0=$(dns_queries); c0=$(redis_calls)
  start=$(date +%s.%N)
  smtp-source -s $SESSIONS -m "$n" -l $SIZE -f s@example.org -t u@example.com "127.0.0.1:${port[$v]}"
  end=$(date +%s.%N)
  local us="/ $n * 1000000 / $hz"
  echo "$(echo "$n / ($end - $start)" | bc -l)" \
    "$(echo "($(cpu_ticks "${pid[$v]}") - $p0) $us" | bc -l)" \
    "$(echo "($(cpu_ticks "$unbound_pid") - $u0) $us" | bc -l)" \
    "$(echo "($(cpu_ticks "$redis_pid") - $r0) $us" | bc -l)" \
    "$(echo "($(dns_queries) - $q0) / $n" | bc -l)" \
    "$(echo "($(redis_calls) - $c0) / $n" | bc -l)"
}

for v in "${variants[@]}"; do round "$v" 1000 >/dev/null; done # warm-up: resolver, DNS cache, Redis scripts
for r in $(seq "$ROUNDS"); do
  # Each round starts with the next variant, so none is always first after a pause.
  for k in "${!variants[@]}"; do
    v=${variants[$(((k + r) % ${#variants[@]}))]}
    round "$v" "$MESSAGES" >> "$work/$v.rounds"
  done
done

for ((sent = 0; sent < LATENCY; sent += CHUNK)); do
  n=$((LATENCY - sent < CHUNK ? LATENCY - sent : CHUNK))
  # First contacts continue the address sequence 127.0.1.1 .. 127.0.1.254, 127.0.2.1, ...
  first="127.0.$((1 + sent / 254)).$((1 + sent % 254))"
  for v in "${variants[@]}"; do
    python3 bench/greeting_latency.py 127.0.0.1 "${port[$v]}" "$n" --append "$work/$v.same" >/dev/null
    python3 bench/greeting_latency.py 127.0.0.1 "${port[$v]}" "$n" "$first" --append "$work/$v.first" >/dev/null
  done
done

echo "== portcullis $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
echo "== $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
echo "== $MESSAGES messages of $SIZE bytes per round, $SESSIONS parallel sessions, one connection per message; median of $ROUNDS rounds"
echo "== greeting latency: $LATENCY connections one at a time, connect() to the final 220 line"
fmt='%-12s %6s %10s %8s %8s %9s %9s | %-14s | %-14s\n'
printf "$fmt" variant msg/s portcullis unbound redis DNS Redis "greeting," "greeting,"
printf "$fmt" "" "" "us/conn" "us/conn" "us/conn" "qry/conn" "call/conn" "same client" "first contact"
printf "$fmt" "" "" "" "" "" "" "" "p50 / p99 us" "p50 / p99 us"
for v in "${variants[@]}"; do
  col() { awk -v c="$1" '{print $c}' "$work/$v.rounds" | median; }
  lat() { echo "$(percentile 0.50 < "$1") / $(percentile 0.99 < "$1")"; }
  printf "$fmt" "$v" "$(printf %.0f "$(col 1)")" "$(printf %.1f "$(col 2)")" "$(printf %.1f "$(col 3)")" \
    "$(printf %.1f "$(col 4)")" "$(printf %.2f "$(col 5)")" "$(printf %.2f "$(col 6)")" \
    "$(lat "$work/$v.same")" "$(lat "$work/$v.first")"
  if [ -n "${VERBOSE:-}" ]; then
    awk '{printf "    round: %6.0f msg/s %6.1f %5.1f %5.1f us/conn %5.2f DNS %5.2f Redis\n", $1, $2, $3, $4, $5, $6}' "$work/$v.rounds"
    echo "    dnsbl lookups (portcullis metrics): $(dnsbl_lookups "${admin[$v]}")"
  fi
  if grep -q . "$work/$v.log"; then
    echo "    portcullis log ($v):"
    head -5 "$work/$v.log" | sed 's/^/      /'
  fi
done
