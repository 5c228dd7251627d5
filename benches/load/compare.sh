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
#
# Scenarios (issue 3 targets):
#   rps     HTTP/1.1 keep-alive, ~100-byte responses, 32 connections (wrk)
#   p99     fixed 2,000 requests/s, 20 connections (hey -q): added p99 over direct
#   stream  one connection fetching 1 MiB responses back to back (wrk -c1): MB/s
#   rss     ward's resident memory when idle, after its first certificate
# WARD_PROTOCOL (default detect, what a port gets unless the mesh file says
# otherwise) is the app port's protocol in ward's mesh file: detect or http
# serve HTTP request by request on both sidecars (per-request metrics, L7
# policy), as the nginx and haproxy pairs do; tcp splices bytes.
# Needs: nginx haproxy openssl wrk hey curl (apt-get install -y ...).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=${PEERS:-$root/../shared/peers/peers.sh}
WORKERS=${WORKERS:-1}
DURATION=${DURATION:-10}
SCENARIOS=${SCENARIOS:-rps p99 stream}
WARD_PROTOCOL=${WARD_PROTOCOL:-detect}
wants() { [[ " $SCENARIOS " == *" $1 "* ]]; }
APP=18080; NGINX=19001; HAPROXY=19002
WARD_OUT=19003; WARD_IN=19445; WARD_CA=18643; ADMIN_IN=19020; ADMIN_OUT=19021

for tool in nginx haproxy openssl wrk hey curl; do
  command -v $tool >/dev/null || { echo "compare: $tool missing (apt-get install -y $tool)" >&2; exit 1; }
done
cd "$root"
cargo build --release --quiet
ward=$root/target/release/ward
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$peers" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$peers" up --workers "$WORKERS" >/dev/null

# The ward pair: a CA, a server sidecar in front of the app, a client sidecar.
td=bench.ward
$ward ca init --dir "$work/ca" --trust-domain $td --insecure-plaintext-key >/dev/null
WARD_LOG=warn $ward ca serve --dir "$work/ca" --listen 127.0.0.1:$WARD_CA & pids+=($!)
for id in client server; do
  $ward ca token --dir "$work/ca" --identity spiffe://$td/ns/bench/sa/$id --ttl 1h > "$work/$id.token" 2>/dev/null
done
cat > "$work/mesh.yaml" <<EOF
trust_domain: $td
services:
  app:
    identity: spiffe://$td/ns/bench/sa/server
    endpoints: ["127.0.0.1:$WARD_IN"]
    ports:
      - port: $APP
        protocol: $WARD_PROTOCOL
# ward denies by default: the load client is allowed, so every connection
# pays for a policy decision, as in production.
roles:
  load:
    - spiffe://$td/ns/bench/sa/client
allow:
  - name: load-to-app
    from: [load]
    to: app
    ports: [$APP]
EOF
common=(--ca https://127.0.0.1:$WARD_CA --ca-bundle "$work/ca/root.pem" --mesh "$work/mesh.yaml")
sleep 0.3
WARD_LOG=warn $ward --workers "$WORKERS" proxy "${common[@]}" --identity spiffe://$td/ns/bench/sa/server \
  --token-file "$work/server.token" --inbound 127.0.0.1:$WARD_IN --app 127.0.0.1:$APP --admin 127.0.0.1:$ADMIN_IN & pids+=($!)
server_pid=$!
WARD_LOG=warn $ward --workers "$WORKERS" proxy "${common[@]}" --identity spiffe://$td/ns/bench/sa/client \
  --token-file "$work/client.token" --forward 127.0.0.1:$WARD_OUT=app:$APP --admin 127.0.0.1:$ADMIN_OUT & pids+=($!)
client_pid=$!
for admin in $ADMIN_IN $ADMIN_OUT; do
  for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$admin/ready >/dev/null && break; sleep 0.1; done
  curl -sf http://127.0.0.1:$admin/ready >/dev/null || { echo "compare: ward sidecar on admin $admin not ready" >&2; exit 1; }
done
curl -sf http://127.0.0.1:$WARD_OUT/ | grep -q "hello from app" || { echo "compare: ward pair does not answer" >&2; exit 1; }

names=(direct ward nginx haproxy)
ports=($APP $WARD_OUT $NGINX $HAPROXY)
echo "# machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); workers per proxy: $WORKERS; ${DURATION}s per run; ward app port protocol: $WARD_PROTOCOL"

# RSS and, in brackets, its anonymous part (heap, stacks): the rest is the
# binary's code mapped from the page cache, shared and reclaimable.
rss_kb() { awk '/VmRSS/ {r=$2} /RssAnon/ {a=$2} END {print r " (anon " a ")"}' /proc/"$1"/status; }
echo "## rss: idle after first certificate (KiB): server sidecar $(rss_kb $server_pid), client sidecar $(rss_kb $client_pid)"

if wants rps; then
echo "## rps: wrk -t1 -c32 -d${DURATION}s, keep-alive, ~100-byte responses"
declare -A rps
for i in "${!names[@]}"; do
  out=$(wrk -t1 -c32 -d"${DURATION}s" --latency http://127.0.0.1:${ports[$i]}/)
  rps[${names[$i]}]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
  errs=$(grep -E "Non-2xx|Socket errors" <<<"$out" || true)
  echo "${names[$i]}: ${rps[${names[$i]}]} req/s  p99 $(awk '$1=="99%" {print $2}' <<<"$out") ${errs}"
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

if wants stream; then
echo "## stream: wrk -t1 -c1 -d${DURATION}s /1m (1 MiB responses back to back on one connection)"
declare -A mbs
for i in "${!names[@]}"; do
  out=$(wrk -t1 -c1 -d"${DURATION}s" http://127.0.0.1:${ports[$i]}/1m)
  mbs[${names[$i]}]=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else {sub("MB","",v)}; print v}' <<<"$out")
  echo "${names[$i]}: ${mbs[${names[$i]}]} MB/s"
done
echo "ratio ward/direct: $(awk -v a=${mbs[ward]} -v b=${mbs[direct]} 'BEGIN {printf "%.2f", a/b}')  haproxy/direct: $(awk -v a=${mbs[haproxy]} -v b=${mbs[direct]} 'BEGIN {printf "%.2f", a/b}')"
fi
echo "## rss after load (KiB): server sidecar $(rss_kb $server_pid), client sidecar $(rss_kb $client_pid)"
