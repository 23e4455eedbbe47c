#!/usr/bin/env bash
# Portcullis against other SMTP proxies, all in the same run, measurements taking turns.
#
#   bench/run.sh [MESSAGES] [ROUNDS] [IDLE_SESSIONS] [LATENCY_MESSAGES]
#
# Every variant runs at once (an idle one costs nothing), each on its own port, all in
# front of ONE sink: examples/bench_sink.rs (a fast do-nothing SMTP server: PIPELINING,
# XCLIENT, XFORWARD, optional PROXY v1/v2 header), which listens on one port per
# variant (those of proxy-v1/v2 expect the header). Variants (VARIANTS=...):
#   direct            smtp-source straight to bench_sink (no proxy)
#   smtp-sink         smtp-source straight to Postfix's smtp-sink (reference only)
#   haproxy           HAProxy, mode tcp
#   haproxy-proxy-v2  HAProxy, mode tcp, send-proxy-v2 toward a sink that takes the header
#                     (the L4 pipe to compare proxy-v2 with)
#   nginx             nginx mail proxy, smtp, smtp_auth none, xclient on; auth_http
#                     answered by a static location of the same nginx (Auth-Status OK,
#                     Auth-Server/Auth-Port = the sink); worker_processes 2
#   postfix           a private Postfix instance: smtpd with smtpd_proxy_filter = the
#                     sink (before-queue proxy filter, streaming: no speed_adjust;
#                     smtpd sends XFORWARD to the filter); CPU of master and all its
#                     children (smtpd, anvil, postlogd writing the log, ...)
#   xforward          Portcullis, identity xforward, backend connection reuse (default)
#   xforward-noreuse  Portcullis, identity xforward, reuse = false
#   none              Portcullis, identity none (reuse = false, the default for none)
#   none-reuse        Portcullis, identity none, reuse = true
#   xclient           Portcullis, identity xclient
#   proxy-v2          Portcullis, identity proxy-v2;  proxy-v1: proxy-v1
#   (with none and xclient both run, the report adds what XCLIENT's own exchange costs:
#   xclient against none, round by round)
#   NAME-before       any Portcullis variant run by the binary PORTCULLIS_BEFORE (say,
#                     a build of the previous commit), to compare in the same run
#
# Measured:
#   - throughput: smtp-source, 20 parallel sessions, MESSAGES messages of 4 KiB, one
#     connection per message (SOURCE=pipelined: examples/bench_source.rs instead, which
#     sends MAIL, RCPT and DATA in one write where PIPELINING is offered, as MTAs do);
#     msg/s and CPU per message summed over the proxy's
#     process tree (utime+stime+cutime+cstime of its root and every descendant from
#     /proc/PID/stat, so Postfix's smtpd processes that exit count through master and
#     nginx's workers count too), and the sink's CPU per message. One warm-up round,
#     then ROUNDS rounds, each starting with the next variant; medians.
#   - latency per message (bench/message_latency.py): one session per variant,
#     LATENCY_MESSAGES messages one after another (MAIL, RCPT, DATA, body, each after the
#     previous reply), variants taking turns message by message; p50/p99, the first
#     message apart; and as many connections with one message each (connect .. 221).
#   - memory per idle session (connected, EHLO done), HAProxy and Portcullis (xforward),
#     at IDLE_SESSIONS and at 10,000 (HAProxy holds two descriptors per session: it gets
#     as many as the hard descriptor limit allows).
#
# Needs: postfix (smtp-source, smtp-sink, a private instance), haproxy, nginx with
# libnginx-mod-mail, python3, bc. Run as root. VERBOSE=1 prints every round.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-20000}
ROUNDS=${2:-3}
IDLE=${3:-2000}
LATENCY=${4:-1000}
BIG_IDLE=${BIG_IDLE:-10000}
read -r -a variants <<<"${VARIANTS:-direct smtp-sink haproxy haproxy-proxy-v2 nginx postfix xforward xforward-noreuse none none-reuse xclient proxy-v2 proxy-v1}"
LATENCY_VARIANTS=${LATENCY_VARIANTS:-direct haproxy nginx postfix xforward xforward-noreuse xclient}
SOURCE=${SOURCE:-smtp-source}
# The binary measured (another build, to compare: PORTCULLIS=/path/to/portcullis), and
# the one the NAME-before variants run.
PORTCULLIS=${PORTCULLIS:-target/release/portcullis}
PORTCULLIS_BEFORE=${PORTCULLIS_BEFORE:-}
SESSIONS=20
SIZE=4096
BASE=${BASE:-12600} # variant i listens on BASE+i, its sink port is BASE+50+i
AUTH_PORT=$((BASE + 99))
ulimit -n "$(ulimit -Hn)" # idle sessions need two descriptors each in a proxy

work=$(mktemp -d /tmp/portcullis-bench-XXXXXX)
chmod 755 "$work"
pids=()
postfix_dir=
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -n "$postfix_dir" ]; then
    postfix -c "$postfix_dir/etc" stop >/dev/null 2>&1 || true
    postconf -e "alternate_config_directories = $(postconf -h alternate_config_directories | sed "s# $postfix_dir/etc##")"
  fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
cargo build --release --quiet --example bench_sink --example bench_source

wait_port() {
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.1; done
  echo "nothing listening on port $1" >&2
  exit 1
}
has() { [[ " ${variants[*]} " == *" $1 "* ]]; }

declare -A port sink root
sink_args=()
for i in "${!variants[@]}"; do
  v=${variants[$i]}
  port[$v]=$((BASE + i))
  sink[$v]=$((BASE + 50 + i))
  case $v in
    direct) port[$v]=${sink[$v]}; sink_args+=("127.0.0.1:${sink[$v]}") ;;
    proxy-v* | haproxy-proxy-v2) sink_args+=("proxy@127.0.0.1:${sink[$v]}") ;;
    *) sink_args+=("127.0.0.1:${sink[$v]}") ;;
  esac
done
target/release/examples/bench_sink "${sink_args[@]}" & pids+=($!)
sink_pid=$!

# HAProxy needs two descriptors per connection and a few of its own (it refuses to
# start if maxconn does not fit under the descriptor limit): below 10,000 sessions when
# the hard limit is 20,000 and cannot be raised.
fd_limit=$(ulimit -Hn)
haproxy_maxconn=$(((fd_limit - 64) / 2 < BIG_IDLE + 100 ? (fd_limit - 64) / 2 : BIG_IDLE + 100))
haproxy_big=$((haproxy_maxconn - 20 < BIG_IDLE ? haproxy_maxconn - 20 : BIG_IDLE))
# start_haproxy VARIANT [SERVER-OPTIONS]
start_haproxy() {
  local v=$1
  cat > "$work/$v.cfg" <<CFG
global
  maxconn $haproxy_maxconn
defaults
  mode tcp
  timeout connect 5s
  timeout client 5m
  timeout server 5m
frontend fe
  bind 127.0.0.1:${port[$v]}
  default_backend be
backend be
  server sink 127.0.0.1:${sink[$v]} ${2:-}
CFG
  haproxy -f "$work/$v.cfg" -db 2>"$work/$v.haproxy-log" & pids+=($!)
  root[$v]=$!
}

start_nginx() {
  mkdir -p "$work/nginx"
  cat > "$work/nginx/nginx.conf" <<CFG
load_module /usr/lib/nginx/modules/ngx_mail_module.so;
daemon off;
master_process on;
worker_processes 2;
worker_rlimit_nofile 20000;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 10000; }
http {
  access_log off;
  client_body_temp_path $work/nginx/body;
  proxy_temp_path $work/nginx/proxy;
  fastcgi_temp_path $work/nginx/fastcgi;
  uwsgi_temp_path $work/nginx/uwsgi;
  scgi_temp_path $work/nginx/scgi;
  server {
    listen 127.0.0.1:$AUTH_PORT;
    location = /auth {
      add_header Auth-Status OK;
      add_header Auth-Server 127.0.0.1;
      add_header Auth-Port ${sink[nginx]};
      return 200 "";
    }
  }
}
mail {
  server_name bench.test;
  auth_http 127.0.0.1:$AUTH_PORT/auth;
  xclient on;
  smtp_auth none;
  smtp_capabilities 8BITMIME PIPELINING;
  server {
    listen 127.0.0.1:${port[nginx]};
    protocol smtp;
  }
}
CFG
  nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" 2>"$work/nginx/stderr" & pids+=($!)
  root[nginx]=$!
}

start_postfix() {
  postfix_dir=$work/postfix
  local D=$postfix_dir
  mkdir -p "$D/etc" "$D/queue" "$D/data"
  chown postfix "$D/data"
  : > "$D/etc/main.cf"
  cp /etc/postfix/master.cf "$D/etc/master.cf"
  postconf -e "alternate_config_directories = $(postconf -h alternate_config_directories) $D/etc"
  postconf -c "$D/etc" -e "queue_directory = $D/queue" "data_directory = $D/data" \
    "maillog_file = $D/postfix.log" "maillog_file_prefixes = $D" \
    'inet_interfaces = 127.0.0.1' 'inet_protocols = ipv4' 'mydestination =' \
    'myhostname = postfix.bench.test' 'syslog_name = pf-bench' 'mynetworks = 127.0.0.1/32' \
    'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination' \
    'compatibility_level = 3.6'
  postconf -c "$D/etc" -M# 'smtp/inet'
  postconf -c "$D/etc" -M "${port[postfix]}/inet=${port[postfix]} inet n - n - - smtpd \
    -o smtpd_proxy_filter=127.0.0.1:${sink[postfix]}"
  postfix -c "$D/etc" start >/dev/null
  wait_port "${port[postfix]}"
  root[postfix]=$(tr -d ' ' < "$D/queue/pid/master.pid")
}

# portcullis_config IDENTITY REUSE(true|false|default) PORT SINK_PORT
portcullis_config() {
  cat <<CFG
[server]
hostname = "bench.test"
[[listener]]
name = "bench"
bind = "127.0.0.1:$3"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "127.0.0.1:$4"
identity = "$1"
CFG
  [ "$2" = default ] || echo "reuse = $2"
  cat <<CFG
[limits]
# All load comes from 127.0.0.1: lift the per-client limit for the benchmark.
max_connections = 20000
max_connections_per_ip = 20000
CFG
}

for v in "${variants[@]}"; do
  case $v in
    direct) ;;
    smtp-sink)
      smtp-sink -u root -m 1000 "127.0.0.1:${port[$v]}" 1024 & pids+=($!)
      root[$v]=$! # its CPU is reported as the sink's
      ;;
    haproxy) start_haproxy haproxy ;;
    haproxy-proxy-v2) start_haproxy haproxy-proxy-v2 send-proxy-v2 ;;
    nginx) start_nginx ;;
    postfix) start_postfix ;;
    xforward* | none* | xclient* | proxy-v1* | proxy-v2*)
      bin=$PORTCULLIS
      if [[ $v == *-before ]]; then
        [ -n "$PORTCULLIS_BEFORE" ] || { echo "$v needs PORTCULLIS_BEFORE" >&2; exit 1; }
        bin=$PORTCULLIS_BEFORE
      fi
      case ${v%-before} in
        xforward-noreuse) args=(xforward false) ;;
        none) args=(none false) ;;
        none-reuse) args=(none true) ;;
        xforward | xclient | proxy-v1 | proxy-v2) args=("${v%-before}" default) ;;
        *) echo "unknown variant $v" >&2; exit 1 ;;
      esac
      portcullis_config "${args[@]}" "${port[$v]}" "${sink[$v]}" > "$work/$v.toml"
      RUST_LOG=warn "$bin" run --config "$work/$v.toml" 2>"$work/$v.log" & pids+=($!)
      root[$v]=$!
      ;;
    *) echo "unknown variant $v" >&2; exit 1 ;;
  esac
done
for v in "${variants[@]}"; do wait_port "${port[$v]}"; done
sleep 1

hz=$(getconf CLK_TCK)
# CPU ticks of a process and all its descendants: utime+stime+cutime+cstime (the
# children it reaped count through its cutime/cstime). "-" for none.
tree_ticks() {
  [ "$1" = - ] && { echo 0; return; }
  # (cat fails when a process exits between the glob and the read: not an error here)
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v root="$1" '{
      pid = $1; sub(/^.*\) /, "")  # after "(comm) ": $1 state, $2 ppid, $12..$15 times
      parent[pid] = $2; t[pid] = $12 + $13 + $14 + $15
    }
    END {
      for (p in t) { q = p; while (q != "" && q != 0 && q != root) q = parent[q]; if (q == root) s += t[p] }
      print s + 0
    }'
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

# round VARIANT N: one smtp-source run; prints "msg/s proxy-us/msg sink-us/msg failed"
round() {
  local v=$1 n=$2 p0 s0 start end failed=0
  p0=$(tree_ticks "${root[$v]:--}"); s0=$(tree_ticks "$sink_pid")
  start=$(date +%s.%N)
  if [ "$SOURCE" = pipelined ]; then
    target/release/examples/bench_source $SESSIONS "$n" $SIZE "127.0.0.1:${port[$v]}" \
      >/dev/null 2>>"$work/$v.source-errors" || failed=1
  else
    smtp-source -s $SESSIONS -m "$n" -l $SIZE -f a@example.org -t b@example.com "127.0.0.1:${port[$v]}" \
      2>>"$work/$v.source-errors" || failed=1
  fi
  end=$(date +%s.%N)
  local us="/ $n * 1000000 / $hz"
  echo "$(echo "$n / ($end - $start)" | bc -l)" \
    "$(echo "($(tree_ticks "${root[$v]:--}") - $p0) $us" | bc -l)" \
    "$(echo "($(tree_ticks "$sink_pid") - $s0) $us" | bc -l)" $failed
}

for v in "${variants[@]}"; do round "$v" 2000 >/dev/null; done # warm-up
for r in $(seq "$ROUNDS"); do
  for k in "${!variants[@]}"; do
    v=${variants[$(((k + r) % ${#variants[@]}))]}
    round "$v" "$MESSAGES" >> "$work/$v.rounds"
    if [ -n "${VERBOSE:-}" ]; then echo "round $r $v: $(tail -1 "$work/$v.rounds")" >&2; fi
  done
done

lat_args=()
for v in $LATENCY_VARIANTS; do has "$v" && lat_args+=("$v=127.0.0.1:${port[$v]}"); done
python3 bench/message_latency.py "$LATENCY" "$SIZE" "${lat_args[@]}" > "$work/latency"

# idle NAME PID PORT N -> "KiB-per-session sessions-held"
idle() {
  local pid=$2 before after
  before=$(rss_kib "$pid")
  rm -f "$work/idle.out"
  python3 bench/idle_sessions.py 127.0.0.1 "$3" "$4" 600 > "$work/idle.out" 2>"$work/idle.err" &
  local holder=$!
  until grep -q ready "$work/idle.out" 2>/dev/null; do
    kill -0 $holder 2>/dev/null || { echo "- 0 ($(tail -1 "$work/idle.err"))"; return; }
    sleep 0.2
  done
  sleep 1
  after=$(rss_kib "$pid")
  kill $holder; wait $holder 2>/dev/null || true
  sleep 2
  echo "$(printf %.2f "$(echo "($after - $before) / $4" | bc -l)") $4"
}
declare -A mem
for v in haproxy xforward; do
  has $v || continue
  mem[$v]="$(idle $v "${root[$v]}" "${port[$v]}" "$IDLE")"
  big=$BIG_IDLE
  if [ $v = haproxy ]; then big=$haproxy_big; fi
  mem[$v.big]="$(idle $v "${root[$v]}" "${port[$v]}" "$big")"
done

# ---- report ----
echo "== portcullis $PORTCULLIS, $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' (with uncommitted changes)'), $(date -u +%FT%TZ)"
echo "== $(nproc) CPUs, $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo); $(haproxy -v | head -1 | cut -d' ' -f1-3), nginx $(nginx -v 2>&1 | cut -d/ -f2), postfix $(postconf -h mail_version)"
echo "== throughput: $MESSAGES messages of $SIZE bytes per round, $SESSIONS parallel sessions ($SOURCE), one connection per message; median of $ROUNDS rounds; every variant in front of bench_sink (smtp-sink: Postfix's smtp-sink, no proxy)"
col() { awk -v c="$2" '{print $c}' "$work/$1.rounds" | median; }
# paired A B COLUMN: the median over rounds of A's figure over B's in the same round (the
# variants of a round run minutes apart at most, so a machine that is slower for a while
# weighs on both).
paired() { paste "$work/$1.rounds" "$work/$2.rounds" | awk -v c="$3" '{print $c / $(c + 4)}' | median; }
h_rate=$(col haproxy 1 2>/dev/null || echo 0); h_cpu=$(col haproxy 2 2>/dev/null || echo 0)
echo
echo "| variant | msg/s | vs HAProxy | proxy CPU µs/msg | vs HAProxy | sink CPU µs/msg | rounds msg/s |"
echo "|---|---:|---:|---:|---:|---:|---|"
for v in "${variants[@]}"; do
  rate=$(col "$v" 1); cpu=$(col "$v" 2); scpu=$(col "$v" 3)
  fails=$(awk '{s += $4} END {print s + 0}' "$work/$v.rounds")
  rr=$(awk '{printf "%s%.0f", (NR > 1 ? " " : ""), $1}' "$work/$v.rounds")
  rcpu="-"; rrate="-"
  if has haproxy; then
    rrate=$(printf %.2f "$(echo "$rate / $h_rate" | bc -l)")
    if [ "$v" != direct ] && [ "$v" != smtp-sink ]; then rcpu=$(printf %.2f "$(echo "$cpu / $h_cpu" | bc -l)"); fi
  fi
  pcpu=$(printf %.1f "$cpu")
  if [ "$v" = direct ] || [ "$v" = smtp-sink ]; then pcpu="-"; fi
  if [ "$v" = smtp-sink ]; then scpu=$(col "$v" 2); fi
  echo "| $v | $(printf %.0f "$rate") | $rrate | $pcpu | $rcpu | $(printf %.1f "$scpu") | $rr$([ "$fails" = 0 ] || echo " ($fails failed)") |"
done
if has haproxy-proxy-v2; then
  hp_rate=$(col haproxy-proxy-v2 1); hp_cpu=$(col haproxy-proxy-v2 2)
  echo
  for v in proxy-v2 proxy-v2-before; do
    has $v || continue
    echo "$v against HAProxy send-proxy-v2 (the same PROXY-taking sink): msg/s $(printf %.2f "$(echo "$(col $v 1) / $hp_rate" | bc -l)")x, CPU per message $(printf %.2f "$(echo "$(col $v 2) / $hp_cpu" | bc -l)")x; round by round $(printf %.2f "$(paired $v haproxy-proxy-v2 1)")x and $(printf %.2f "$(paired $v haproxy-proxy-v2 2)")x"
  done
fi
if has haproxy && has xclient; then
  echo
  echo "xclient against HAProxy, round by round: msg/s $(printf %.2f "$(paired xclient haproxy 1)")x, CPU per message $(printf %.2f "$(paired xclient haproxy 2)")x"
fi
if has none && has xclient; then
  echo
  echo "XCLIENT's own exchange (the XCLIENT command and its 220), xclient against none (the same backend conversation without it), round by round: msg/s $(printf %.2f "$(paired xclient none 1)")x, proxy CPU per message $(printf %.2f "$(paired xclient none 2)")x, sink CPU per message $(printf %.2f "$(paired xclient none 3)")x"
fi
echo
echo "== latency per message: one session per variant, $LATENCY messages one after another, variants taking turns; and $LATENCY connections with one message each (connect() .. 221), µs"
echo
echo "| variant | session p50 | p99 | added p50 | added p99 | first message | per connection p50 | p99 | added p50 | added p99 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
read -r _ d50 d99 _ dc50 dc99 < <(grep '^direct ' "$work/latency" || echo "direct 0 0 0 0 0")
while read -r v p50 p99 first c50 c99; do
  echo "| $v | $p50 | $p99 | $((p50 - d50)) | $((p99 - d99)) | $first | $c50 | $c99 | $((c50 - dc50)) | $((c99 - dc99)) |"
done < "$work/latency"
echo
echo "== memory per idle session (connected, EHLO done): RSS growth of the process / sessions"
for v in haproxy xforward; do
  has $v || continue
  read -r k n <<<"${mem[$v]}"; read -r kb nb <<<"${mem[$v.big]}"
  echo "$v: $k KiB at $n sessions, $kb KiB at $nb sessions"
done
for v in "${variants[@]}"; do
  for f in "$work/$v.log" "$work/$v.source-errors"; do
    if [ -s "$f" ]; then echo "-- $(basename "$f"):"; sort "$f" | uniq -c | sort -rn | head -5; fi
  done
done
if has nginx && grep -q . "$work/nginx/error.log"; then echo "-- nginx error.log:"; tail -5 "$work/nginx/error.log"; fi
for v in haproxy haproxy-proxy-v2; do
  if has $v && grep -qv 'FD limit' "$work/$v.haproxy-log"; then echo "-- $v log:"; tail -5 "$work/$v.haproxy-log"; fi
done
