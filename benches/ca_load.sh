#!/usr/bin/env bash
# End-to-end SVID issuance throughput: `ward ca serve` (release build, audit
# log on) driven by wrk over HTTPS with keep-alive, everything on 127.0.0.1.
# Each request carries a real join token and a real P-256 CSR, and each
# answer is a freshly signed SVID chain.
#
#   benches/ca_load.sh                     # 32 connections, 10 s
#   CONNS=64 SECONDS_=20 benches/ca_load.sh
#
# Needs: wrk, openssl, curl (apt-get install -y wrk openssl curl).
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=${CONNS:-32}
DURATION=${SECONDS_:-10}
PORT=${PORT:-18643}
for tool in wrk openssl curl; do
  command -v $tool >/dev/null || { echo "ca_load: $tool missing (apt-get install -y $tool)" >&2; exit 1; }
done

cargo build --release --quiet
ward=target/release/ward
work=$(mktemp -d)
server=
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

id=spiffe://load.ward/ns/bench/sa/client
$ward ca init --dir "$work/ca" --trust-domain load.ward --insecure-plaintext-key >/dev/null
token=$($ward ca token --dir "$work/ca" --identity $id --ttl 1h 2>/dev/null)
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout /dev/null \
  -subj "/" -addext "subjectAltName=URI:$id" -out "$work/req.csr" 2>/dev/null

WARD_LOG=warn $ward ca serve --dir "$work/ca" --listen 127.0.0.1:$PORT --audit-log "$work/audit.log" &
server=$!
for _ in $(seq 1 100); do
  curl -sf --cacert "$work/ca/root.pem" https://127.0.0.1:$PORT/healthz >/dev/null && break
  sleep 0.1
done
# One request by hand: the answer must be a chain.
curl -sf --cacert "$work/ca/root.pem" -H "Authorization: Bearer $token" --data-binary @"$work/req.csr" \
  https://127.0.0.1:$PORT/v1/svid | grep -c "BEGIN CERTIFICATE" | grep -qx 2

cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "application/pkcs10"
local f = io.open("$work/req.csr", "rb"); wrk.body = f:read("*a"); f:close()
LUA

issued() { curl -sf --cacert "$work/ca/root.pem" https://127.0.0.1:$PORT/metrics | awk '/^ward_ca_svids_issued_total/ {print $2}'; }
before=$(issued)
echo "ca_load: wrk -t1 -c$CONNS -d${DURATION}s POST /v1/svid (keep-alive, TLS 1.3)"
wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s "$work/post.lua" https://127.0.0.1:$PORT/v1/svid | tee "$work/wrk.txt"
after=$(issued)
if grep -q "Non-2xx" "$work/wrk.txt"; then echo "ca_load: some requests were refused" >&2; exit 1; fi
audited=$(grep -c '"result":"issued"' "$work/audit.log")
echo "ca_load: SVIDs issued during the run: $((after - before)) ($(( (after - before) / DURATION ))/s); audit lines: $audited"
