#!/usr/bin/env bash
# A relay cluster on one machine: three etcd members, three relays, a device and a laptop,
# all on loopback. The laptop reaches the device through a relay that does not hold it
# (one relay-to-relay hop); then the device's relay is killed with SIGKILL and the device
# is reachable again through the survivors. Everything it starts is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
scripts/ensure-protoc.sh
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing etcd (apt: etcd-server etcd-client)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends etcd-server etcd-client; } >/dev/null 2>&1 || true
  fi
  command -v etcd >/dev/null || { echo "etcd not found: apt-get install etcd-server etcd-client" >&2; exit 1; }
fi
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

# BIN=target/debug uses binaries built already (e.g. by scripts/test.sh).
if [ -z "${BIN:-}" ]; then
  cargo build --quiet --release -p tunnel-examples --bins
  BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)
WORK=$(mktemp -d /tmp/tunnel-cluster-demo.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { local n=$(( $1 * 10 )); shift; for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done; return 1; }
field() { awk -v k="$2" '$1==k {print $2; exit}' "$1"; }

say "three etcd members"
CLUSTER=""; URLS=""
declare -A CPORT PPORT
for i in 1 2 3; do CPORT[$i]=$(free_port); PPORT[$i]=$(free_port); done
for i in 1 2 3; do
  CLUSTER+="${CLUSTER:+,}e$i=http://127.0.0.1:${PPORT[$i]}"
  URLS+="${URLS:+,}http://127.0.0.1:${CPORT[$i]}"
done
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$WORK/e$i" \
    --listen-client-urls "http://127.0.0.1:${CPORT[$i]}" --advertise-client-urls "http://127.0.0.1:${CPORT[$i]}" \
    --listen-peer-urls "http://127.0.0.1:${PPORT[$i]}" --initial-advertise-peer-urls "http://127.0.0.1:${PPORT[$i]}" \
    --initial-cluster "$CLUSTER" --initial-cluster-state new >"$WORK/e$i.log" 2>&1 &
  PIDS+=($!)
done
ETCDCTL_API=3 wait_for 20 etcdctl --endpoints "$URLS" endpoint health || { echo "etcd did not start"; exit 1; }
echo "etcd at $URLS"

say "a cluster CA, one public identity, three relays"
"$BIN/tunnel-relay" cluster-ca new --dir "$WORK/ca" 2>/dev/null
PIN=$("$BIN/tunnel-relay" pin --state-dir "$WORK/shared")
for i in 1 2 3; do
  "$BIN/tunnel-relay" serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --relay-id "r$i" \
    --etcd "$URLS" --cluster-ca "$WORK/ca" --state-dir "$WORK/r$i" \
    --cert "$WORK/shared/relay.crt" --key "$WORK/shared/relay.key" --heartbeat-ms 1000 --grace-secs 2 \
    >"$WORK/r$i.out" 2>"$WORK/r$i.log" &
  PIDS+=($!); eval "R${i}_PID=$!"
done
for i in 1 2 3; do wait_for 20 grep -q '^cluster' "$WORK/r$i.out" || { echo "relay r$i did not join"; cat "$WORK/r$i.log"; exit 1; }; done
declare -A ADDR ADMIN
for i in 1 2 3; do ADDR[r$i]=$(field "$WORK/r$i.out" listening); ADMIN[r$i]=$(field "$WORK/r$i.out" admin); echo "relay r$i at ${ADDR[r$i]} (admin ${ADMIN[r$i]})"; done
ALL="${ADDR[r1]},${ADDR[r2]},${ADDR[r3]}"

say "credentials, in etcd: every relay knows them at once"
DEV_TOKEN=$("$BIN/tunnel-relay" token new --etcd "$URLS" --name pi --device pi 2>/dev/null)
LAP_TOKEN=$("$BIN/tunnel-relay" token new --etcd "$URLS" --name alice --access 'pi/*' 2>/dev/null)
ADMIN_TOKEN=$("$BIN/tunnel-relay" admin-token new --etcd "$URLS" --name ops 2>/dev/null)
echo "device pi, laptop alice, admin ops"

say "the device: a web page, an agent that knows all three relays"
mkdir -p "$WORK/www"; echo "hello from the device behind NAT" >"$WORK/www/index.html"
WEB=$(free_port)
python3 -m http.server "$WEB" --bind 127.0.0.1 --directory "$WORK/www" >/dev/null 2>&1 &
PIDS+=($!)
TUNNEL_TOKEN=$DEV_TOKEN "$BIN/tunnel-agent" --relay "$ALL" --pin "$PIN" --device-id pi \
  --expose "web=127.0.0.1:$WEB" >"$WORK/agent.log" 2>&1 &
PIDS+=($!)
holder() { ETCDCTL_API=3 etcdctl --endpoints "$URLS" get tunnel/presence/pi --print-value-only | python3 -c 'import json,sys; print(json.load(sys.stdin)["relay"])'; }
wait_for 20 holder || { echo "the device did not register"; cat "$WORK/agent.log"; exit 1; }
HOLDER=$(holder); echo "pi is held by $HOLDER"

OTHER=r1; [ "$HOLDER" = r1 ] && OTHER=r2
say "the laptop reaches pi through $OTHER (one hop to $HOLDER)"
LOCAL=$(free_port)
TUNNEL_TOKEN=$LAP_TOKEN "$BIN/tunnel-access" --relay "${ADDR[$OTHER]}" --pin "$PIN" --device pi --service web \
  --listen "127.0.0.1:$LOCAL" >"$WORK/access.log" 2>&1 &
PIDS+=($!)
wait_for 10 curl -sf "http://127.0.0.1:$LOCAL/" || true
curl -sS --max-time 10 "http://127.0.0.1:$LOCAL/"

say "the admin API of $OTHER answers for the whole cluster"
curl -sS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://${ADMIN[$OTHER]}/api/v1/devices" | python3 -c '
import json, sys
for d in json.load(sys.stdin)["items"]:
    print("  device %s: online=%s on relay %s" % (d["id"], d["online"], d["relay"]))'
curl -sS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" "http://${ADMIN[$OTHER]}/api/v1/cluster" | python3 -c '
import json, sys
c = json.load(sys.stdin)
for r in c["relays"]:
    print("  relay %s at %s: %s devices, %s access sessions" % (r["id"], r["addr"], r["devices"], r["access"]))'

say "kill -9 the device's relay ($HOLDER)"
eval "VICTIM=\$R${HOLDER#r}_PID"
kill -9 "$VICTIM"; wait "$VICTIM" 2>/dev/null || true
T0=$(date +%s.%N)
moved() { h=$(holder) && [ "$h" != "$HOLDER" ]; }
wait_for 15 moved || { echo "the device did not move"; cat "$WORK/agent.log"; exit 1; }
printf 'pi moved to %s after %.2f s\n' "$(holder)" "$(echo "$(date +%s.%N) - $T0" | bc)"
NEW=$(holder); SURVIVOR=$NEW
for r in r1 r2 r3; do [ "$r" != "$HOLDER" ] && [ "$r" != "$NEW" ] && SURVIVOR=$r; done
LOCAL2=$(free_port)
TUNNEL_TOKEN=$LAP_TOKEN "$BIN/tunnel-access" --relay "${ADDR[$SURVIVOR]}" --pin "$PIN" --device pi --service web \
  --listen "127.0.0.1:$LOCAL2" >"$WORK/access2.log" 2>&1 &
PIDS+=($!)
wait_for 10 curl -sf "http://127.0.0.1:$LOCAL2/" || true
echo "through $SURVIVOR (pi is on $NEW now):"; curl -sS --max-time 10 "http://127.0.0.1:$LOCAL2/"
say "done; stopping everything"
