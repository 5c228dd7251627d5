#!/usr/bin/env bash
# Instructions each ward sidecar executes per request, counted by valgrind's
# callgrind. Unlike requests/s on a shared 2-core machine, the count repeats
# run after run (within about 0.5 %), so it tells whether a change to the
# data path made it cheaper.
#
#   benches/load/instructions.sh                  # HTTP served (detect), 8 connections
#   WARD_PROTOCOL=tcp benches/load/instructions.sh
#   WARD=/tmp/old/ward benches/load/instructions.sh   # another build, same setup
#   REQUESTS=4000 CONNECTIONS=8 benches/load/instructions.sh
#   URL_PATH=/1m REQUESTS=100 benches/load/instructions.sh   # per 1 MiB answer
#
# Setup as compare.sh (../shared/peers' nginx as the app, the ward pair from
# ward_pair.sh), both sidecars under callgrind. hey sends REQUESTS requests,
# then 2 x REQUESTS, each time on CONNECTIONS new connections; the
# difference between the two counts divided by REQUESTS is the cost of one
# request, the mTLS handshakes and start-up cancelled out.
# Needs: valgrind hey curl nginx haproxy openssl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
peers=${PEERS:-$root/../shared/peers/peers.sh}
REQUESTS=${REQUESTS:-2000}
CONNECTIONS=${CONNECTIONS:-8}
URL_PATH=${URL_PATH:-/}
WARD_PROTOCOL=${WARD_PROTOCOL:-detect}
WORKERS=1
# hey gives each connection REQUESTS / CONNECTIONS requests, rounded down.
[ $((REQUESTS % CONNECTIONS)) -eq 0 ] || { echo "instructions: REQUESTS must be a multiple of CONNECTIONS" >&2; exit 2; }
for tool in valgrind callgrind_control hey curl nginx haproxy openssl; do
  command -v $tool >/dev/null || { echo "instructions: $tool missing (apt-get install -y valgrind hey ...)" >&2; exit 1; }
done
source "$here/ward_pair.sh"
"$peers" up >/dev/null
ward_pair_up valgrind --tool=callgrind --callgrind-out-file="$work/%p.cg" --log-file="$work/valgrind.%p.log"

# Instructions counted since the last zeroing, per sidecar (a dump file
# per call, kept in $KEEP if set; its "summary:" line is the total).
counted() {
  local pid
  for pid in $server_pid $client_pid; do callgrind_control --dump "$pid" >/dev/null 2>&1; done
  sleep 1
  for pid in $server_pid $client_pid; do
    local dump; dump=$(ls -t "$work/$pid.cg"* | head -1)
    [ -n "${KEEP:-}" ] && cp "$dump" "$KEEP/$([ "$pid" = "$server_pid" ] && echo server || echo client).cg"
    awk '/^summary:/ {print $2}' "$dump"
  done
}
zero() { local pid; for pid in $server_pid $client_pid; do callgrind_control --zero "$pid" >/dev/null 2>&1; done; }
load() {
  local out; out=$(hey -n "$1" -c "$CONNECTIONS" "http://127.0.0.1:$WARD_OUT$URL_PATH")
  grep -q "\[200\]"$'\t'"$1 responses" <<<"$out" || { echo "instructions: not every request answered 200:" >&2; echo "$out" >&2; exit 1; }
}

load 200
# Two totals (server, client), each a number, or the script stops.
totals() {
  mapfile -t "$1" < <(counted)
  local -n got=$1
  [[ ${#got[@]} -eq 2 && ${got[0]} =~ ^[0-9]+$ && ${got[1]} =~ ^[0-9]+$ ]] || {
    echo "instructions: no callgrind totals (see $work/valgrind.*.log)" >&2; exit 1; }
}
zero; load "$REQUESTS"; totals first
zero; load $((2 * REQUESTS)); totals second
s1=${first[0]} c1=${first[1]} s2=${second[0]} c2=${second[1]}
echo "# ward $("$ward" --version | cut -d' ' -f2) ($ward), port protocol $WARD_PROTOCOL, $CONNECTIONS connections, $REQUESTS requests of $URL_PATH"
echo "server sidecar: $(( (s2 - s1) / REQUESTS )) instructions per request"
echo "client sidecar: $(( (c2 - c1) / REQUESTS )) instructions per request"
