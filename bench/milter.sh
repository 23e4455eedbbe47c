#!/usr/bin/env bash
# The cost of content filters (milters) per message: Portcullis in front of smtp-sink
# with no filter, one, and two, through Debian's clamav-milter + clamd and opendkim.
#
#   bench/milter.sh [MESSAGES] [ROUNDS] [LATENCY_MESSAGES]
#
# Every variant runs as its own Portcullis instance, all at once (idle ones cost
# nothing), sharing the filters and the sink; the measurements take turns between
# variants, so that drift on the machine spreads over all of them.
#
#   - msg/s and CPU per message of the variant's portcullis process, of clamav-milter +
#     clamd together, and of opendkim (utime+stime from /proc/PID/stat), while
#     smtp-source sends MESSAGES messages of 4096 bytes (From: <s@example.org>) over 20
#     parallel sessions, one connection per message (so the filters are connected and
#     negotiated once per message, as at an MX); median of ROUNDS rounds, after a
#     warm-up.
#   - Latency per message on an otherwise idle machine: one session, messages one after
#     another, from sending MAIL to the final reply to the dot (bench/milter_latency.py);
#     LATENCY_MESSAGES per variant in sessions of CHUNK messages, taking turns between
#     variants, pooled; p50 and p99. The first message of each session (the one that
#     connects the filters) is left out of the pool and shown apart (median).
#
# Variants (VARIANTS="none clamav noop clamav-dkim" by default):
#   none         no filter
#   clamav       milters = ["clamav"]: clamav-milter (AddHeader Replace: it adds
#                X-Virus-Scanned and X-Virus-Status) with clamd; clamd's database is one
#                EICAR signature, as in tests/e2e/milter.rs, so its scan is far cheaper than
#                with the real signatures (millions): the clamd figure is a lower bound
#   noop         milters = ["noop"]: opendkim in verify mode on unsigned mail, a real
#                filter that changes nothing and only lets the message through: mostly
#                the cost of the milter protocol itself
#   clamav-dkim  milters = ["clamav", "dkim"]: the above, then opendkim signing (Mode s,
#                example.org, a 2048-bit key from opendkim-genkey, InternalHosts
#                127.0.0.0/8), which adds DKIM-Signature
# Before measuring, one message from smtp-source and one from milter_latency.py go
# through a check instance (clamav + dkim) to a sink that keeps them, to show that both
# are scanned and signed.
#
# FILTER_NODELAY=1 runs clamav-milter and opendkim with TCP_NODELAY on the sockets they
# accept (bench/milter_nodelay.c, LD_PRELOAD; needs cc). libmilter leaves Nagle on and
# writes each reply packet apart: a filter that answers the end of message with changes
# and then "accept" has its last packets held until Portcullis ACKs the first, which
# Linux delays by up to 40 ms (a TCP_QUICKACK matter on our side). Without it, the
# latency and msg/s of clamav and clamav-dkim show mostly that wait.
#
# PORTCULLIS_BIN: the binary to measure; unset, `cargo build --release` and
# target/release/portcullis.
# Needs: postfix (smtp-source, smtp-sink), clamd, clamav-milter, opendkim,
# opendkim-genkey, python3, bc. Run as root (smtp-sink -u, the filters' User root).
# VERBOSE=1 prints every round and the filters' verdicts as Portcullis counted them.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-5000}
ROUNDS=${2:-5}
LATENCY=${3:-300}
read -r -a variants <<<"${VARIANTS:-none clamav noop clamav-dkim}"
SESSIONS=20
SIZE=4096
CHUNK=${CHUNK:-100}
SINK_PORT=${SINK_PORT:-12635}
CHECK_SINK_PORT=${CHECK_SINK_PORT:-12636}
CLAM_PORT=${CLAM_PORT:-12637}
DKIM_PORT=${DKIM_PORT:-12638}
NOOP_PORT=${NOOP_PORT:-12639}
SMTP_BASE=${SMTP_BASE:-12640}   # variant i listens on SMTP_BASE+i, the check on SMTP_BASE+19
ADMIN_BASE=${ADMIN_BASE:-12660} # its admin endpoint on ADMIN_BASE+i
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${PORTCULLIS_BIN:-}" ]; then
  bin=$PORTCULLIS_BIN
else
  cargo build --release --quiet
  bin=target/release/portcullis
fi
bin=$(realpath "$bin")

wait_port() {
  for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listening on port $1" >&2
  exit 1
}

preload=()
if [ -n "${FILTER_NODELAY:-}" ]; then
  cc -shared -fPIC -O2 -o "$work/milter_nodelay.so" bench/milter_nodelay.c -ldl
  preload=(env LD_PRELOAD="$work/milter_nodelay.so")
fi

smtp-sink -u root -m 1000 "127.0.0.1:$SINK_PORT" 1024 & pids+=($!)
mkdir "$work/dump"
smtp-sink -u root -D "$work/dump/all" "127.0.0.1:$CHECK_SINK_PORT" 16 & pids+=($!)

# clamd with a one-line EICAR signature, clamav-milter in front of it (tests/e2e/milter.rs,
# without per-message logging).
mkdir "$work/clamdb"
eicar='X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*'
echo "Eicar-Test-Signature-Local:0:*:$(printf %s "${eicar:0:40}" | od -An -tx1 | tr -d ' \n')" > "$work/clamdb/local.ndb"
cat > "$work/clamd.conf" <<CFG
Foreground true
LocalSocket $work/clamd.sock
DatabaseDirectory $work/clamdb
User root
LogFile $work/clamd.log
CFG
cat > "$work/clamav-milter.conf" <<CFG
Foreground true
MilterSocket inet:$CLAM_PORT@127.0.0.1
ClamdSocket unix:$work/clamd.sock
User root
LogFile $work/clamav-milter.log
OnInfected Reject
OnFail Defer
AddHeader Replace
LogInfected Basic
LogClean Off
CFG
clamd -c "$work/clamd.conf" >/dev/null 2>&1 & pids+=($!)
clamd_pid=$!
for _ in $(seq 600); do [ -S "$work/clamd.sock" ] && break; sleep 0.1; done
"${preload[@]}" clamav-milter -c "$work/clamav-milter.conf" >/dev/null 2>&1 & pids+=($!)
clamav_milter_pid=$!
wait_port "$CLAM_PORT"

# opendkim: a signer for example.org (tests/e2e/milter.rs), and a verifier that sees only
# unsigned mail (the no-op filter). InternalHosts of the verifier is an address no mail
# comes from, so that it verifies rather than skips.
opendkim-genkey -b 2048 -d example.org -s bench -D "$work"
cat > "$work/opendkim-sign.conf" <<CFG
Syslog no
Mode s
Domain example.org
Selector bench
KeyFile $work/bench.private
Socket inet:$DKIM_PORT@127.0.0.1
InternalHosts 127.0.0.0/8
Canonicalization relaxed/relaxed
RequireSafeKeys no
PidFile $work/opendkim-sign.pid
UserID root
CFG
cat > "$work/opendkim-verify.conf" <<CFG
Syslog no
Mode v
Socket inet:$NOOP_PORT@127.0.0.1
InternalHosts 192.0.2.1
RequireSafeKeys no
PidFile $work/opendkim-verify.pid
UserID root
CFG
"${preload[@]}" opendkim -f -x "$work/opendkim-sign.conf" >/dev/null 2>&1 & pids+=($!)
dkim_pid=$!
"${preload[@]}" opendkim -f -x "$work/opendkim-verify.conf" >/dev/null 2>&1 & pids+=($!)
noop_pid=$!
wait_port "$DKIM_PORT"
wait_port "$NOOP_PORT"

# config VARIANT SMTP_PORT ADMIN_PORT [BACKEND_PORT]
config() {
  local variant=$1 milters
  case $variant in
    none) milters='' ;;
    clamav) milters='"clamav"' ;;
    noop) milters='"noop"' ;;
    clamav-dkim) milters='"clamav", "dkim"' ;;
    *) echo "unknown variant $variant" >&2; exit 1 ;;
  esac
  cat <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$2"
milters = [$milters]
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:${4:-$SINK_PORT}"
identity = "xforward"
[admin]
bind = "127.0.0.1:$3"
[limits]
# All load comes from 127.0.0.1: lift the per-client limit for the benchmark.
max_connections = 20000
max_connections_per_ip = 20000
CFG
  case $variant in *clamav*)
    printf '[[milter]]\nname = "clamav"\naddress = "inet:127.0.0.1:%s"\n' "$CLAM_PORT"
  esac
  case $variant in *dkim*)
    printf '[[milter]]\nname = "dkim"\naddress = "inet:127.0.0.1:%s"\n' "$DKIM_PORT"
  esac
  case $variant in noop)
    printf '[[milter]]\nname = "noop"\naddress = "inet:127.0.0.1:%s"\n' "$NOOP_PORT"
  esac
}

declare -A pid port admin
for i in "${!variants[@]}"; do
  v=${variants[$i]}
  port[$v]=$((SMTP_BASE + i))
  admin[$v]=$((ADMIN_BASE + i))
  config "$v" "${port[$v]}" "${admin[$v]}" > "$work/$v.toml"
  RUST_LOG=warn "$bin" run --config "$work/$v.toml" 2>"$work/$v.log" & pids+=($!)
  pid[$v]=$!
done
check_port=$((SMTP_BASE + 19))
config clamav-dkim "$check_port" $((ADMIN_BASE + 19)) "$CHECK_SINK_PORT" > "$work/check.toml"
RUST_LOG=warn "$bin" run --config "$work/check.toml" 2>"$work/check.log" & pids+=($!)
check_pid=$!
for v in "${variants[@]}"; do wait_port "${port[$v]}"; done
wait_port "$check_port"

# Both clients' messages, through clamav + dkim, as the backend receives them.
smtp-source -m 1 -l $SIZE -f s@example.org -t u@example.com "127.0.0.1:$check_port"
python3 bench/milter_latency.py 127.0.0.1 "$check_port" 1 >/dev/null
sleep 0.5
kill "$check_pid"
# smtp-sink puts X-Client-Addr first in every message it keeps.
check=$(awk '/^X-Client-Addr:/ {n++} /^Subject: latency/ {c[n] = "milter_latency.py"} /^DKIM-Signature:/ {d[n]++}
  /^X-Virus-Status:/ {x[n] = $0} END {for (i = 1; i <= n; i++) printf "    check, %s message at the backend: %d DKIM-Signature, %s\n",
  c[i] ? c[i] : "smtp-source", d[i], x[i] ? x[i] : "no X-Virus-Status"}' "$work/dump/all")

hz=$(getconf CLK_TCK)
cpu_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $t; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }
percentile() { sort -g | awk -v q="$1" '{v[NR] = $1} END {i = int(q * NR) + 1; if (i > NR) i = NR; printf "%.0f", v[i]}'; }
metrics() {
  python3 - "$1" <<'PY'
import sys, urllib.request
page = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
for l in page.splitlines():
    if l.startswith(("portcullis_milter_verdicts_total{", "portcullis_milter_errors_total{", "portcullis_messages_total{")):
        print("      " + l)
PY
}

# round VARIANT MESSAGES: one smtp-source run; prints "msg/s portcullis-us/msg
# clamav-us/msg opendkim-us/msg" (clamav: clamav-milter + clamd; opendkim: signer +
# verifier, only one of which works in any variant).
round() {
  local v=$1 n=$2 p0 c0 d0 start end
  p0=$(cpu_ticks "${pid[$v]}"); c0=$(cpu_ticks "$clamd_pid" "$clamav_milter_pid"); d0=$(cpu_ticks "$dkim_pid" "$noop_pid")
  start=$(date +%s.%N)
  smtp-source -s $SESSIONS -m "$n" -l $SIZE -f s@example.org -t u@example.com "127.0.0.1:${port[$v]}"
  end=$(date +%s.%N)
  local us="/ $n * 1000000 / $hz"
  echo "$(echo "$n / ($end - $start)" | bc -l)" \
    "$(echo "($(cpu_ticks "${pid[$v]}") - $p0) $us" | bc -l)" \
    "$(echo "($(cpu_ticks "$clamd_pid" "$clamav_milter_pid") - $c0) $us" | bc -l)" \
    "$(echo "($(cpu_ticks "$dkim_pid" "$noop_pid") - $d0) $us" | bc -l)"
}

for v in "${variants[@]}"; do round "$v" 500 >/dev/null; done # warm-up
for r in $(seq "$ROUNDS"); do
  # Each round starts with the next variant, so none is always first after a pause.
  for k in "${!variants[@]}"; do
    v=${variants[$(((k + r) % ${#variants[@]}))]}
    round "$v" "$MESSAGES" >> "$work/$v.rounds"
  done
done

for ((sent = 0; sent < LATENCY; sent += CHUNK)); do
  n=$((LATENCY - sent < CHUNK ? LATENCY - sent : CHUNK))
  for v in "${variants[@]}"; do
    python3 bench/milter_latency.py 127.0.0.1 "${port[$v]}" $((n + 1)) --append "$work/$v.lat" --first "$work/$v.first" >/dev/null
  done
done

git_dir=$(git -C "$(dirname "$bin")" rev-parse --show-toplevel 2>/dev/null || true)
if [ -n "$git_dir" ]; then
  built="$(git -C "$git_dir" rev-parse --short HEAD)$(git -C "$git_dir" diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)') in $git_dir"
else
  built=$bin
fi
echo "== portcullis $built, $(date -u +%FT%TZ)"
echo "== $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); $(clamd --version), $(opendkim -V | head -1 | sed 's/^opendkim: //')"
echo "== throughput: smtp-source, $MESSAGES messages of $SIZE bytes per round, $SESSIONS parallel sessions, one connection per message; median of $ROUNDS rounds"
echo "== filters: Nagle $([ -n "${FILTER_NODELAY:-}" ] && echo "off (FILTER_NODELAY=1: TCP_NODELAY preloaded into clamav-milter and opendkim)" || echo "on, as shipped")"
echo "== latency: $LATENCY messages per variant, one at a time, sessions of $CHUNK (+1 first message, apart), MAIL to the final reply to the dot"
echo "$check"
fmt='%-12s %6s %10s %13s %9s | %-14s | %8s\n'
printf "$fmt" variant msg/s portcullis "clamav-milter" opendkim "latency" "1st msg"
printf "$fmt" "" "" "us/msg" "+clamd us/msg" "us/msg" "p50 / p99 us" "p50 us"
for v in "${variants[@]}"; do
  col() { awk -v c="$1" '{print $c}' "$work/$v.rounds" | median; }
  printf "$fmt" "$v" "$(printf %.0f "$(col 1)")" "$(printf %.1f "$(col 2)")" "$(printf %.1f "$(col 3)")" \
    "$(printf %.1f "$(col 4)")" "$(percentile 0.50 < "$work/$v.lat") / $(percentile 0.99 < "$work/$v.lat")" \
    "$(median < "$work/$v.first" | xargs printf %.0f)"
  if [ -n "${VERBOSE:-}" ]; then
    awk '{printf "    round: %6.0f msg/s %7.1f %7.1f %7.1f us/msg\n", $1, $2, $3, $4}' "$work/$v.rounds"
    metrics "${admin[$v]}"
  fi
  if grep -q . "$work/$v.log"; then
    echo "    portcullis log ($v):"
    head -5 "$work/$v.log" | sed 's/^/      /'
  fi
done
