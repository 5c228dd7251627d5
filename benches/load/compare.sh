#!/usr/bin/env bash
# Side-by-side load comparison on this machine, everything on 127.0.0.1:
#   direct        load tool -> app (nginx)
#   ward pair     load tool -> ward (--forward) ==mTLS==> ward (--inbound) -> app
#   nginx pair    load tool -> nginx ==mTLS==> nginx -> app      (../shared/peers)
#   haproxy pair  load tool -> haproxy ==mTLS==> haproxy -> app  (../shared/peers)
# Every proxy gets the same worker count (WORKERS, default 1).
#
#   benches/load/compare.sh                  # all scenarios
#   WORKERS=2 DURATION=20 benches/load/compare.sh
#   SCENARIOS="stream" benches/load/compare.sh
#   WARD_PROTOCOL=tcp benches/load/compare.sh   # ward carries the port as opaque TCP
#   WARD=/tmp/old/ward benches/load/compare.sh  # another build of ward (A/B runs)
#
# Scenarios (issue 3 targets):
#   rps     HTTP/1.1 keep-alive, ~100-byte responses, 32 connections (wrk);
#           also the CPU time each pair's two proxies spent per request
#           (steadier than requests/s on a machine shared with the load tool)
#   p99     fixed 2,000 requests/s, 20 connections (hey -q): added p99 over direct
#   stream  one connection streaming 1 GiB responses (wrk -c1): MiB/s, and the
#           proxies' CPU time per GiB carried. The peers' app has only a
#           1 MiB file (/1m); this scenario extends that file to STREAM_MIB
#           (default 1024) MiB for its duration, so every pair streams the
#           same long responses. STREAM_MIB=1 gives the earlier scenario,
#           1 MiB responses back to back, where each response's round trip
#           through the chain is a pause in the stream.
#   rss     ward's resident memory when idle, after its first certificate
# Not in the default set (not an issue 3 target):
#   conn    a new connection per request (hey -disable-keepalive -c 32):
#           req/s and the proxies' CPU per request. Each pair's client side
#           keeps its upstream connections across client connections
#           (haproxy, nginx keepalive; ward's pool of HTTP/1 mesh
#           connections, WARD_POOL_MAX_IDLE=0 turns it off for an A/B run).
#           SCENARIOS="rps p99 stream conn" runs it too.
# WARD_PROTOCOL (default detect, what a port gets unless the mesh file says
# otherwise) is the app port's protocol in ward's mesh file: detect or http
# serve HTTP request by request on both sidecars (per-request metrics, L7
# policy), as the nginx and haproxy pairs do; tcp splices bytes.
# Needs: nginx haproxy openssl wrk hey curl (apt-get install -y ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=${PEERS:-$root/../shared/peers/peers.sh}
peers_dir=${PEERS_DIR:-/tmp/ward-peers}
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-10}
SCENARIOS=${SCENARIOS:-rps p99 stream}
STREAM_MIB=${STREAM_MIB:-1024}
WARD_PROTOCOL=${WARD_PROTOCOL:-detect}
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
NGINX=19001; HAPROXY=19002

for tool in nginx haproxy openssl wrk hey curl; do
  command -v $tool >/dev/null || { echo "compare: $tool missing (apt-get install -y $tool)" >&2; exit 1; }
done
source "$here/ward_pair.sh"

"$peers" up --workers "$WORKERS" >/dev/null

# The ward pair: a CA, a server sidecar in front of the app, a client sidecar.
ward_pair_up

names=(direct ward nginx haproxy)
ports=($APP $WARD_OUT $NGINX $HAPROXY)
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); workers per proxy: $WORKERS; ${DURATION}s per run; ward app port protocol: $WARD_PROTOCOL"

# RSS and, in brackets, its anonymous part (heap, stacks): the rest is the
# binary's code mapped from the page cache, shared and reclaimable.
rss_kb() { awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r " (anon " a ")"}' /proc/"$1"/status; }
echo "## rss: idle after first certificate (KiB): server sidecar $(rss_kb $server_pid), client sidecar $(rss_kb $client_pid)"

# The processes doing each pair's proxying (nginx: the master's workers).
proxy_pids() {
  case $1 in
    direct) ;;
    ward) echo "$server_pid $client_pid" ;;
    nginx) for d in nginx-server nginx-client; do pgrep -P "$(cat "$peers_dir/$d/nginx.pid")"; done ;;
    haproxy) cat "$peers_dir/haproxy/server.pid" "$peers_dir/haproxy/client.pid" ;;
  esac
}
# CPU time (user + system, all threads) used so far by these processes, in ms.
cpu_ms() {
  local ticks=0 p
  for p in "$@"; do ticks=$((ticks + $(awk '{print $14 + $15}' /proc/"$p"/stat))); done
  echo $((ticks * 1000 / $(getconf CLK_TCK)))
}

# Runs a load command for pair $1, its output in $out and, in $used, the
# CPU ms its proxies spent meanwhile.
under_load() {
  local pp; pp=$(proxy_pids "$1" | xargs); shift
  local before; before=$(cpu_ms $pp)
  out=$("$@")
  used=$(( $(cpu_ms $pp) - before ))
}

if wants rps; then
echo "## rps: wrk -t1 -c32 -d${DURATION}s, keep-alive, ~100-byte responses; CPU per request of the pair's two proxies"
declare -A rps
for i in "${!names[@]}"; do
  name=${names[$i]}
  under_load "$name" wrk -t1 -c32 -d"${DURATION}s" --latency http://127.0.0.1:${ports[$i]}/
  rps[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu=""
  [ "$name" != direct ] && [ "${n:-0}" -gt 0 ] && cpu=" proxies' CPU $(awk -v ms=$used -v n=$n 'BEGIN {printf "%.1f", ms * 1000 / n}') us/request"
  errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  echo "$name: ${rps[$name]} req/s  p99 $(awk '$1=="99%" {print $2}' <<<"$out")${cpu} ${errs}"
done
echo "ratio ward/haproxy: $(awk -v a=${rps[ward]} -v b=${rps[haproxy]} 'BEGIN {printf "%.2f", a/b}')  ward/nginx: $(awk -v a=${rps[ward]} -v b=${rps[nginx]} 'BEGIN {printf "%.2f", a/b}')  ward/direct: $(awk -v a=${rps[ward]} -v b=${rps[direct]} 'BEGIN {printf "%.2f", a/b}')"
fi

if wants p99; then
echo "## p99: hey -z ${DURATION}s -c 20 -q 100 (2,000 req/s fixed)"
declare -A p99
for i in "${!names[@]}"; do
  out=$(hey -z "${DURATION}s" -c 20 -q 100 http://127.0.0.1:${ports[$i]}/)
  p99[${names[$i]}]=$(awk '$1=="99%" && $2=="in" {print $3}' <<<"$out")
  echo "${names[$i]}: p99 ${p99[${names[$i]}]} s  ($(awk '/Requests\/sec/ {print $2}' <<<"$out") req/s, $(grep -c '\[200\]' <<<"$out") status lines)"
done
awk -v d=${p99[direct]} -v w=${p99[ward]} -v h=${p99[haproxy]} -v n=${p99[nginx]} 'BEGIN {
  printf "added p99 over direct: ward %.3f ms, haproxy %.3f ms, nginx %.3f ms\n", (w-d)*1000, (h-d)*1000, (n-d)*1000 }'
fi

if wants conn; then
echo "## conn: hey -z ${DURATION}s -c 32 -disable-keepalive, one connection per request; CPU per request of the pair's two proxies"
declare -A cps
for i in "${!names[@]}"; do
  name=${names[$i]}
  under_load "$name" hey -z "${DURATION}s" -c 32 -disable-keepalive http://127.0.0.1:${ports[$i]}/
  cps[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  # hey's status line "[200]<tab>N responses"; its error lines start "[N]" too.
  n=$(awk '$1=="[200]" && $3=="responses" {print $2}' <<<"$out")
  errlines=$(awk '/Error distribution/ {e=1; next} e' <<<"$out")
  errs=$(awk '$1 ~ /^\[[0-9]+\]$/ {gsub(/[][]/, "", $1); s+=$1} END {if (s) printf " %d failed", s}' <<<"$errlines")
  cpu=""
  [ "$name" != direct ] && [ "${n:-0}" -gt 0 ] && cpu=" proxies' CPU $(awk -v ms=$used -v n=$n 'BEGIN {printf "%.1f", ms * 1000 / n}') us/request"
  echo "$name: ${cps[$name]} req/s (${n:-0} answered 200${errs})${cpu}"
  [ -z "$errs" ] || head -3 <<<"$errlines" | sed 's/^/  /'
done
echo "ratio ward/haproxy: $(awk -v a=${cps[ward]} -v b=${cps[haproxy]} 'BEGIN {printf "%.2f", a/b}')  ward/nginx: $(awk -v a=${cps[ward]} -v b=${cps[nginx]} 'BEGIN {printf "%.2f", a/b}')"
fi

if wants stream; then
body=$peers_dir/app/1m.bin
[ -f "$body" ] || { echo "compare: $body missing (has ../shared/peers changed?)" >&2; exit 1; }
# Back to 1 MiB however the script ends (the peers' own `up` rewrites it too).
trap 'truncate -c -s 1M "$body"; cleanup' EXIT
truncate -s "${STREAM_MIB}M" "$body"
got=$(curl -sI http://127.0.0.1:$APP/1m | awk 'tolower($1)=="content-length:" {print $2+0}' || true)
[ "$got" = $((STREAM_MIB * 1048576)) ] || { echo "compare: the app serves '$got' bytes on /1m, not $STREAM_MIB MiB" >&2; exit 1; }
echo "## stream: wrk -t1 -c1 -d${DURATION}s, /1m of $STREAM_MIB MiB, responses back to back on one connection; CPU per GiB of the pair's two proxies"
declare -A mbs
# wrk's "N.NNGB read" (or MB, KB) in MiB.
mib_of() { awk '{v=$0; f=1; if (v ~ /GB/) f=1024; else if (v ~ /KB/) f=1/1024; gsub(/[A-Za-z]/, "", v); print v * f}'; }
for i in "${!names[@]}"; do
  name=${names[$i]}
  under_load "$name" wrk -t1 -c1 -d"${DURATION}s" http://127.0.0.1:${ports[$i]}/1m
  mbs[$name]=$(awk '/Transfer\/sec/ {print $2}' <<<"$out" | mib_of)
  mib=$(awk '/ read$/ {print $(NF-1)}' <<<"$out" | tr -d , | mib_of)
  cpu=""
  [ "$name" != direct ] && awk -v m="$mib" 'BEGIN {exit !(m > 0)}' && cpu=" proxies' CPU $(awk -v ms=$used -v n="$mib" 'BEGIN {printf "%.0f", ms * 1024 / n}') ms/GiB"
  echo "$name: ${mbs[$name]} MiB/s${cpu}"
done
echo "ratio ward/direct: $(awk -v a=${mbs[ward]} -v b=${mbs[direct]} 'BEGIN {printf "%.2f", a/b}')  haproxy/direct: $(awk -v a=${mbs[haproxy]} -v b=${mbs[direct]} 'BEGIN {printf "%.2f", a/b}')"
fi
echo "## rss after load (KiB): server sidecar $(rss_kb $server_pid), client sidecar $(rss_kb $client_pid)"
