# Sourced by the load harnesses: a ward CA and a ward sidecar pair on
# 127.0.0.1, in front of the app on $APP (started by ../shared/peers):
#   load tool -> client sidecar (--forward $WARD_OUT) ==mTLS==> server sidecar ($WARD_IN) -> app
# Needs $root (the repository), $peers (peers.sh), $WARD_PROTOCOL and
# $WORKERS. Sourcing builds ward (or takes $WARD, another build), makes
# $work and stops everything on exit (the peers included).
# `ward_pair_up [WRAPPER...]` starts both sidecars, each under WRAPPER if
# given (valgrind, perf), and sets $server_pid and $client_pid.
APP=18080; WARD_OUT=19003; WARD_IN=19445; WARD_CA=18643; ADMIN_IN=19020; ADMIN_OUT=19021
if [ -z "${WARD:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  WARD=$root/target/release/ward
fi
ward=$(realpath "$WARD")
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  "$peers" down >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

ward_pair_up() {
  local td=bench.ward
  "$ward" ca init --dir "$work/ca" --trust-domain $td --insecure-plaintext-key >/dev/null
  WARD_LOG=error "$ward" ca serve --dir "$work/ca" --listen 127.0.0.1:$WARD_CA & pids+=($!)
  for id in client server; do
    "$ward" ca token --dir "$work/ca" --identity spiffe://$td/ns/bench/sa/$id --ttl 1h > "$work/$id.token" 2>/dev/null
  done
  cat > "$work/mesh.yaml" <<EOM
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
EOM
  local common=(--ca https://127.0.0.1:$WARD_CA --ca-bundle "$work/ca/root.pem" --mesh "$work/mesh.yaml")
  sleep 0.3
  WARD_LOG=warn "$@" "$ward" --workers "$WORKERS" proxy "${common[@]}" --identity spiffe://$td/ns/bench/sa/server \
    --token-file "$work/server.token" --inbound 127.0.0.1:$WARD_IN --app 127.0.0.1:$APP --admin 127.0.0.1:$ADMIN_IN & pids+=($!)
  server_pid=$!
  WARD_LOG=warn "$@" "$ward" --workers "$WORKERS" proxy "${common[@]}" --identity spiffe://$td/ns/bench/sa/client \
    --token-file "$work/client.token" --forward 127.0.0.1:$WARD_OUT=app:$APP --admin 127.0.0.1:$ADMIN_OUT & pids+=($!)
  client_pid=$!
  local admin
  for admin in $ADMIN_IN $ADMIN_OUT; do
    for _ in $(seq 1 300); do curl -sf http://127.0.0.1:$admin/ready >/dev/null && break; sleep 0.1; done
    curl -sf http://127.0.0.1:$admin/ready >/dev/null || { echo "ward sidecar on admin $admin not ready" >&2; return 1; }
  done
  curl -sf http://127.0.0.1:$WARD_OUT/ | grep -q "hello from app" || { echo "ward pair does not answer" >&2; return 1; }
}
