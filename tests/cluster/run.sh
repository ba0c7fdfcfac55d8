#!/usr/bin/env bash
# A cluster of three relays sharing their state in a three-member etcd, with the project's
# own binaries (target/debug/tunnel-relay, tunnel-agent, tunnel-access), real OpenSSH and
# curl, in network namespaces this script creates and always removes (trap), named with
# its PID.
#
#   [e1] 10.202.1.11  [e2] .12  [e3] .13     etcd members (client :2379, peer :2380)
#   [r1] 10.202.1.1   [r2] .2   [r3] .3      tunnel-relay :7835, admin API :7836
#        all on the bridge br0 10.202.1.254 in [pub] (CLI, etcdctl, admin API calls)
#   [dev ] 10.202.2.2 --- [nat ] 10.202.1.21       10.202.1.22 [nat2] --- 10.202.3.2 [lap]
#   device: tunnel-agent, sshd,  MASQUERADE +       MASQUERADE +          access clients,
#   http (1 GiB blob)            stateful FW        stateful FW           ssh, curl
#
# Scenarios (each prints PASS/FAIL and MEASURE lines with its figures):
#   1. a device on relay 1 reached from relay 3: OpenSSH runs a command; 1 GiB byte-exact
#   2. a revocation through relay 2's admin API cuts the credential's sessions on relays 1
#      and 3 within 1 s
#   3. kill -9 of the device's relay: the device is back on a survivor within its backoff
#      + 2 s, reachable from both survivors; no stale key after the lease TTL
#   4. one etcd member (the leader) killed: no visible effect
#   5. etcd quorum lost (longer than the lease TTL) and restored: connected devices and
#      local streams go on; new registrations, cross-relay dials and API writes are refused
#      as unavailable; /readyz turns 503; all of it recovers by itself once the members are
#      back, and every connected device is claimed again under the relays' new leases
#   6. a relay cut off from its peers (etcd still reachable): a dial to a device on another
#      relay fails as unreachable within 10 s; local streams work; the dial works after
#   7. two credentials racing for one device ID on two relays: exactly one wins (5 rounds)
#   8. rolling restart (SIGTERM, restart) of all three relays under a running transfer:
#      the bytes arrive intact; the device is reachable from every relay afterwards
# Needs root, iproute2, nftables, etcd + etcdctl, openssh, curl, python3; skips (exit 0)
# with a message when one is missing. Usage: tests/cluster/run.sh [TARGET_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP cluster suite: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, nftables)"
PATH="$PATH:/usr/sbin:/sbin"
command -v ip >/dev/null || skip "iproute2 (ip) not installed"
PFX="tc$$"
ip netns add "$PFX-probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "$PFX-probe"
ETCD_BIN=$(command -v etcd) || skip "etcd not installed (scripts/test.sh installs etcd-server with apt-get)"
command -v etcdctl >/dev/null || skip "etcdctl not installed (scripts/test.sh installs etcd-client with apt-get)"

BIN=${1:-target/debug}
for b in tunnel-relay tunnel-agent tunnel-access; do
  [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b missing (cargo build -p tunnel-examples --bins)"; exit 1; }
done
BIN=$(cd "$BIN" && pwd)
PY=${PY:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3)
[ -x "$PY" ] || skip "python3 not installed"
for t in nft sshd ssh ssh-keygen curl; do
  command -v "$t" >/dev/null || skip "$t not installed (scripts/test.sh installs it with apt-get)"
done

PUB=$PFX-pub; NAT=$PFX-nat; DEV=$PFX-dev; NAT2=$PFX-nat2; LAP=$PFX-lap
RNS=("" "$PFX-r1" "$PFX-r2" "$PFX-r3")   # relay namespaces, 1-based
ENS=("" "$PFX-e1" "$PFX-e2" "$PFX-e3")   # etcd namespaces, 1-based
ALL_NS=("$LAP" "$NAT2" "$DEV" "$NAT" "${RNS[1]}" "${RNS[2]}" "${RNS[3]}" "${ENS[1]}" "${ENS[2]}" "${ENS[3]}" "$PUB")
# Work files on tmpfs when there is one: the etcd members fsync, and the 1 GiB blob.
TMPBASE=/tmp; [ -d /dev/shm ] && [ -w /dev/shm ] && TMPBASE=/dev/shm
WORK=$(mktemp -d "$TMPBASE/$PFX.XXXXXX")
PIDS=()
PASS=0; FAIL=0
ETCD=http://10.202.1.11:2379,http://10.202.1.12:2379,http://10.202.1.13:2379
HB_MS=1000        # relay heartbeat: a silent peer is dead after 3 s
GRACE=60          # relay drain: running streams get this long to finish
LEASE_TTL=10      # the relays' etcd lease (tunnel_server::cluster::LEASE_TTL)
T_SUITE=$EPOCHREALTIME

. tests/lib.sh

cleanup() {
  disown -a 2>/dev/null   # no "Killed" job notices
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  # and whatever still runs in the namespaces this script made (a pipeline's inner commands)
  for ns in "${ALL_NS[@]}"; do for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null; done; done
  for ns in "${ALL_NS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  rm -f "$WORK/www/big.bin" "$WORK/www/mid.bin"
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# last_line FILE REGEX AFTER: the last matching log line after AFTER (for FAIL messages)
last_line() { grep -E "$2" "$1" 2>/dev/null | tail -1 | cut -c1-400; }

# ---------------------------------------------------------------------------- topology
for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; inns "$ns" ip link set lo up; done
ip -n "$PUB" link add br0 type bridge; ip -n "$PUB" link set br0 up
ip -n "$PUB" addr add 10.202.1.254/24 dev br0
# plug NS IFNAME ADDR: a veth from NS (eth0 or wan0) to the bridge, with ADDR/24
plug() {
  local ns=$1 port=$2 ifname=$3 addr=$4
  ip -n "$ns" link add "$ifname" type veth peer name "$port" netns "$PUB"
  ip -n "$PUB" link set "$port" master br0; ip -n "$PUB" link set "$port" up
  ip -n "$ns" addr add "$addr/24" dev "$ifname"; ip -n "$ns" link set "$ifname" up
}
for i in 1 2 3; do
  plug "${RNS[$i]}" "vr$i" eth0 "10.202.1.$i"
  plug "${ENS[$i]}" "ve$i" eth0 "10.202.1.1$i"
done
plug "$NAT" vnat wan0 10.202.1.21
plug "$NAT2" vnat2 wan0 10.202.1.22
ip -n "$DEV" link add eth0 type veth peer name lan0 netns "$NAT"
ip -n "$LAP" link add eth0 type veth peer name lan0 netns "$NAT2"
ip -n "$NAT"  addr add 10.202.2.1/24 dev lan0; ip -n "$NAT"  link set lan0 up
ip -n "$NAT2" addr add 10.202.3.1/24 dev lan0; ip -n "$NAT2" link set lan0 up
ip -n "$DEV" addr add 10.202.2.2/24 dev eth0; ip -n "$DEV" link set eth0 up
ip -n "$LAP" addr add 10.202.3.2/24 dev eth0; ip -n "$LAP" link set eth0 up
ip -n "$DEV" route add default via 10.202.2.1
ip -n "$LAP" route add default via 10.202.3.1
for r in "$NAT" "$NAT2"; do
  ip -n "$r" route add default via 10.202.1.254
  inns "$r" sysctl -qw net.ipv4.ip_forward=1
  inns "$r" nft -f - <<'NFT' || { echo "FAIL: nft ruleset"; exit 1; }
table ip nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept; oifname "wan0" masquerade; }
}
table inet fw {
  chain input { type filter hook input priority filter; policy drop;
    iifname "lo" accept; ct state established,related accept; iifname "lan0" accept; }
  chain forward { type filter hook forward priority filter; policy drop;
    ct state invalid drop; ct state established,related accept; iifname "lan0" oifname "wan0" accept; }
}
NFT
done

# ---------------------------------------------------------------------------- device services
mkdir -p "$WORK/www" "$WORK/shared" "$WORK/ca"
# The 1 GiB blob and its hash, made in the background while the cluster starts.
cat >"$WORK/sha.py" <<'PY'
# sha256 of a file (argument) or of stdin, in hex; also prints the byte count with -n
import hashlib, sys
args = [a for a in sys.argv[1:] if a != "-n"]
f = open(args[0], "rb") if args else sys.stdin.buffer
h = hashlib.sha256(); n = 0
while True:
    b = f.read(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print(h.hexdigest(), n) if "-n" in sys.argv else print(h.hexdigest())
PY
( head -c $((1 << 30)) /dev/urandom >"$WORK/www/big.bin" \
  && head -c $((96 << 20)) "$WORK/www/big.bin" >"$WORK/www/mid.bin" \
  && "$PY" "$WORK/sha.py" "$WORK/www/big.bin" >"$WORK/big.sha" \
  && "$PY" "$WORK/sha.py" "$WORK/www/mid.bin" >"$WORK/mid.sha" ) &
BLOB_JOB=$!; PIDS+=("$BLOB_JOB")
echo "hello-from-device" >"$WORK/www/index.txt"
cat >"$WORK/www.py" <<'PY'
import functools, http.server, socketserver, sys
class S(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self); self.server_name, self.server_port = "device", self.server_address[1]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
S((sys.argv[1], int(sys.argv[2])), functools.partial(H, directory=sys.argv[3])).serve_forever()
PY
ssh-keygen -q -t ed25519 -N '' -f "$WORK/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$WORK/id"
cp "$WORK/id.pub" "$WORK/authorized_keys"
echo "marker-$PFX" >"$WORK/marker"
mkdir -p /run/sshd
cat >"$WORK/sshd_config" <<EOF
Port 2222
ListenAddress 127.0.0.1
HostKey $WORK/host_key
PidFile $WORK/sshd.pid
AuthorizedKeysFile $WORK/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
LoginGraceTime 300
EOF
spawn "$DEV" "$WORK/sshd.log" "$(command -v sshd)" -D -e -f "$WORK/sshd_config"
spawn "$DEV" "$WORK/www.log" "$PY" "$WORK/www.py" 10.202.2.2 8000 "$WORK/www"
listening() { inns "$1" ss -Hltn "src $2" | grep -q .; }
wait_for 10 listening "$DEV" 127.0.0.1:2222 && wait_for 10 listening "$DEV" 10.202.2.2:8000 \
  || { bad "device services did not start"; exit 1; }

# ---------------------------------------------------------------------------- etcd
INITIAL=e1=http://10.202.1.11:2380,e2=http://10.202.1.12:2380,e3=http://10.202.1.13:2380
EPID=("" "" "" "")
etcd_up() { # I: starts member eI (the same command for the first start and a restart)
  local i=$1 ip=10.202.1.1$1
  spawn "${ENS[$i]}" "$WORK/e$i.log" "$ETCD_BIN" --name "e$i" --data-dir "$WORK/e$i.etcd" \
    --listen-client-urls "http://$ip:2379" --advertise-client-urls "http://$ip:2379" \
    --listen-peer-urls "http://$ip:2380" --initial-advertise-peer-urls "http://$ip:2380" \
    --initial-cluster "$INITIAL" --initial-cluster-token "$PFX" --initial-cluster-state new \
    --logger zap --log-level warn
  EPID[$i]=$LAST_PID
}
ectl() { inns "$PUB" env ETCDCTL_API=3 etcdctl --endpoints "$ETCD" --command-timeout=3s "$@"; }
member_healthy() { inns "$PUB" env ETCDCTL_API=3 etcdctl --endpoints "http://10.202.1.1$1:2379" --command-timeout=2s endpoint health; }
all_healthy() { member_healthy 1 && member_healthy 2 && member_healthy 3; }
# etcd_leader: the index (1-3) of the member that is the leader, from the live members
etcd_leader() {
  local i s
  for i in 1 2 3; do
    s=$(inns "$PUB" env ETCDCTL_API=3 etcdctl --endpoints "http://10.202.1.1$i:2379" --command-timeout=2s endpoint status -w json 2>/dev/null) || continue
    "$PY" -c 'import json,sys; s=json.loads(sys.argv[1])[0]["Status"]; sys.exit(0 if s["header"]["member_id"]==s["leader"] else 1)' "$s" 2>/dev/null && { echo "$i"; return 0; }
  done
  return 1
}
has_leader() { etcd_leader >/dev/null; }
for i in 1 2 3; do etcd_up "$i"; done
wait_for 30 all_healthy || { bad "etcd did not start: $(tail -3 "$WORK/e1.log")"; exit 1; }

# ---------------------------------------------------------------------------- relays
PIN=$("$BIN/tunnel-relay" pin --state-dir "$WORK/shared" 2>/dev/null)
[ -f "$WORK/shared/relay.crt" ] && [ -f "$WORK/shared/relay.key" ] && [[ "$PIN" == sha256:* ]] \
  || { bad "tunnel-relay pin did not create the shared identity ($PIN)"; exit 1; }
"$BIN/tunnel-relay" cluster-ca new --dir "$WORK/ca" >/dev/null 2>&1 || { bad "cluster-ca new failed"; exit 1; }
relay_cli() { inns "$PUB" "$BIN/tunnel-relay" "$@" --etcd "$ETCD" 2>>"$WORK/cli.log"; }
ADMIN=$(relay_cli admin-token new --name ops)
DEV1_TOKEN=$(relay_cli token new --name dev1 --device dev1)
DEV2_TOKEN=$(relay_cli token new --name dev2 --device dev2)
DEV3_TOKEN=$(relay_cli token new --name dev3 --device dev3)
RACE_A=$(relay_cli token new --name race-a --device race)
RACE_B=$(relay_cli token new --name race-b --device race)
ALICE=$(relay_cli token new --name alice --access 'dev1/*')
BOB=$(relay_cli token new --name bob --access '*/*')
FLEET=$(relay_cli token new --name fleet --device 'new-*')
for t in ADMIN DEV1_TOKEN DEV2_TOKEN DEV3_TOKEN RACE_A RACE_B ALICE BOB FLEET; do
  [ -n "${!t}" ] || { bad "creating credential $t in etcd failed: $(tail -2 "$WORK/cli.log")"; exit 1; }
done

RPID=("" "" "" ""); STARTS=(0 0 0 0)
R=("" 10.202.1.1:7835 10.202.1.2:7835 10.202.1.3:7835)
ALL_RELAYS=${R[1]},${R[2]},${R[3]}
relay_started() { [ "$(grep -c '^admin ' "$WORK/r$1.log")" -ge "${STARTS[$1]}" ]; }
relay_up() { # I: starts relay rI (the same flags every time)
  local i=$1
  spawn "${RNS[$i]}" "$WORK/r$i.log" env RUST_LOG=info "$BIN/tunnel-relay" serve \
    --listen "${R[$i]}" --relay-id "r$i" --etcd "$ETCD" --cluster-ca "$WORK/ca" \
    --state-dir "$WORK/r$i" --cert "$WORK/shared/relay.crt" --key "$WORK/shared/relay.key" \
    --admin-listen "10.202.1.$i:7836" --heartbeat-ms "$HB_MS" --grace-secs "$GRACE"
  RPID[$i]=$LAST_PID; STARTS[$i]=$(( STARTS[$i] + 1 ))
  wait_for 30 relay_started "$i" || { bad "relay r$i did not start: $(tail -3 "$WORK/r$i.log")"; return 1; }
}
api() { # I METHOD PATH [curl args]: the admin API of relay rI; prints the body, then the code
  local i=$1 m=$2 p=$3; shift 3
  inns "$PUB" curl -s -m 10 -X "$m" -H "Authorization: Bearer $ADMIN" -w '\n%{http_code}' "$@" "http://10.202.1.$i:7836$p"
}
readyz() { inns "$PUB" curl -s -o /dev/null -m 5 -w '%{http_code}' "http://10.202.1.$1:7836/readyz"; }
ready() { [ "$(readyz "$1")" = 200 ]; }
not_ready() { [ "$(readyz "$1")" = 503 ]; }
relay_key() { [ -n "$(ectl get "tunnel/relay/r$1" --print-value-only 2>/dev/null)" ]; }
# presence_of DEVICE: the relay holding DEVICE, from etcd (empty when none)
presence_of() { ectl get "tunnel/presence/$1" --print-value-only 2>/dev/null | sed -n 's/.*"relay":"\([^"]*\)".*/\1/p' | head -1; }
on_relay() { [ "$(presence_of "$1")" = "$2" ]; }
no_presence() { [ -z "$(ectl get "tunnel/presence/$1" --print-value-only 2>/dev/null)" ]; }
has_presence() { [ -n "$(presence_of "$1")" ]; }
for i in 1 2 3; do relay_up "$i" || exit 1; done
wait_for 10 ready 1 && wait_for 10 ready 2 && wait_for 10 ready 3 || { bad "relays not ready"; exit 1; }
n=$(api 1 GET /api/v1/cluster | head -1 | "$PY" -c 'import json,sys; print(len(json.load(sys.stdin)["relays"]))' 2>/dev/null)
[ "$n" = 3 ] && ok "three relays joined one cluster (the admin API of r1 lists $n relays)" || bad "cluster view of r1 lists '$n' relays"

# agent NAME TOKEN DEVICE RELAYS: starts a device agent in DEV; sets LAST_PID
agent() {
  local name=$1 token=$2 device=$3 relays=$4
  spawn "$DEV" "$WORK/agent-$name.log" env TUNNEL_TOKEN="$token" RUST_LOG=info "$BIN/tunnel-agent" \
    --relay "$relays" --pin "$PIN" --device-id "$device" \
    --expose ssh=127.0.0.1:2222 --expose web=10.202.2.2:8000
}
# agent_relay NAME: the relay (r1-r3) the agent NAME registered with last
agent_relay() { grep 'registered with the relay' "$WORK/agent-$1.log" | tail -1 | sed -n 's/.*relay="10\.202\.1\.\([0-9]\):7835".*/r\1/p'; }
registered() { [ "$(count_after "$WORK/agent-$1.log" 'registered with the relay' "$2")" -ge "${3:-1}" ]; }
# present_or_restart NAME TOKEN RELAYS PIDVAR: a later scenario needs device NAME visible in
# the cluster; if an earlier failure left it without presence, its agent is restarted
# (not counted again: the scenario that lost it failed already).
present_or_restart() {
  has_presence "$1" && return 0
  echo "note: $1 has no presence (see the failures above); restarting its agent"
  stop_pid "${!4}"; wait_for 10 no_presence "$1"
  local t; t=$(now); agent "$1" "$2" "$1" "$3"; printf -v "$4" '%s' "$LAST_PID"
  wait_for 20 registered "$1" "$t" && wait_for 10 has_presence "$1"
}
# get_via RELAY DEVICE [TOKEN]: one stream from the laptop through RELAY to DEVICE's web
# service (GET /index.txt); prints the answer or the access client's error.
get_via() {
  printf 'GET /index.txt HTTP/1.0\r\n\r\n' | inns "$LAP" env TUNNEL_TOKEN="${3:-$BOB}" NO_COLOR=1 timeout 25 \
    "$BIN/tunnel-access" --relay "$1" --pin "$PIN" --device "$2" --service web --stdio 2>&1
}
reach() { get_via "$1" "$2" | grep -q hello-from-device; }
# access NAME TOKEN RELAY DEVICE SERVICE PORT: a tunnel-access --listen on the laptop
access() {
  spawn "$LAP" "$WORK/access-$1.log" env TUNNEL_TOKEN="$2" RUST_LOG=info "$BIN/tunnel-access" \
    --relay "$3" --pin "$PIN" --device "$4" --service "$5" --listen "127.0.0.1:$6"
  wait_for 20 listening "$LAP" "127.0.0.1:$6" || bad "access client $1 did not listen: $(tail -2 "$WORK/access-$1.log")"
}

# ---------------------------------------------------------------------------- 1. cross-relay
echo "== 1. a device on relay 1 reached from relay 3 (ssh, 1 GiB)"
T0=$(now)
agent dev1 "$DEV1_TOKEN" dev1 "${R[1]}"; AG1=$LAST_PID
wait_for 30 registered dev1 "$T0" || bad "dev1 did not register on r1: $(tail -3 "$WORK/agent-dev1.log")"
wait_for 10 on_relay dev1 r1 && ok "dev1 registered on r1; its presence in etcd names r1" || bad "presence of dev1: '$(presence_of dev1)'"
devices=$(api 2 GET /api/v1/devices | head -1)
echo "$devices" | "$PY" -c 'import json,sys; d=[i for i in json.load(sys.stdin)["items"] if i["id"]=="dev1"]; sys.exit(0 if d and d[0]["online"] and d[0]["relay"]=="r1" else 1)' 2>/dev/null \
  && ok "the admin API of r2 lists dev1 online on r1 (one view of the whole cluster)" || bad "GET /api/v1/devices on r2: $(echo "$devices" | cut -c1-300)"
out=$(inns "$LAP" ssh -F /dev/null -i "$WORK/id" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o ConnectTimeout=20 -o ProxyCommand="env TUNNEL_TOKEN=$BOB $BIN/tunnel-access --relay ${R[3]} --pin $PIN --device dev1 --service ssh --stdio" \
  root@dev1 cat "$WORK/marker" 2>"$WORK/ssh.err")
[ "$out" = "marker-$PFX" ] && ok "OpenSSH through relay 3 (ProxyCommand tunnel-access --stdio) runs a command on dev1, held by relay 1" \
  || bad "ssh through r3 to dev1 on r1: '$out' $(tail -3 "$WORK/ssh.err")"
grep -q 'link to peer relay opened.*r1' "$WORK/r3.log" && ok "r3 opened a link to r1 for it" || bad "no link from r3 to r1 in its log"
access big "$BOB" "${R[3]}" dev1 web 18080
for _ in $(seq 600); do kill -0 "$BLOB_JOB" 2>/dev/null || break; sleep 0.1; done
BIG_SHA=$(cat "$WORK/big.sha" 2>/dev/null); MID_SHA=$(cat "$WORK/mid.sha" 2>/dev/null)
[ -n "$BIG_SHA" ] && [ -n "$MID_SHA" ] || { bad "could not make the 1 GiB blob"; exit 1; }
T0=$(now)
got=$(inns "$LAP" curl -s -m 200 http://127.0.0.1:18080/big.bin | "$PY" "$WORK/sha.py" -n)
T1=$(now)
[ "${got% *}" = "$BIG_SHA" ] && ok "1 GiB through r3 -> r1 -> dev1 arrived byte-exact (sha256)" \
  || bad "1 GiB transfer: got sha256/bytes '$got', want $BIG_SHA/$((1 << 30))"
mbs=$("$PY" -c "import sys; print(f'{int(sys.argv[1]) / (1 << 20) / (float(sys.argv[3]) - float(sys.argv[2])):.1f}')" "${got#* }" "$T0" "$T1")
measure "cross-relay: ${got#* } bytes in $(secs "$T1" "$T0") s = $mbs MiB/s (laptop -> nat2 -> r3 -> r1 -> nat -> dev1, debug build), sha256 $([ "${got% *}" = "$BIG_SHA" ] && echo match || echo MISMATCH)"
stop_pid "$LAST_PID"

# ---------------------------------------------------------------------------- 2. revocation
echo "== 2. revocation on relay 2 cuts the credential's sessions on relays 1 and 3"
cat >"$WORK/holder.py" <<'PY'
# holds one stream open through a local access port: reads the ssh banner (the stream is
# open end to end), marks the file READY, then waits; prints how and when it ended
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), 10); s.settimeout(200)
banner = s.recv(256)
if not banner.startswith(b"SSH-"):
    print("nobanner", repr(banner), time.time()); sys.exit(1)
open(sys.argv[2], "w").write("1")
try:
    while True:
        d = s.recv(65536)
        if not d: print("eof", f"{time.time():.3f}"); break
except socket.timeout: print("timeout", f"{time.time():.3f}")
except OSError as e: print("error", f"{time.time():.3f}", e)
PY
access alice1 "$ALICE" "${R[1]}" dev1 ssh 18101
access alice3 "$ALICE" "${R[3]}" dev1 ssh 18103
HOLDERS=()
for i in 1 3; do
  rm -f "$WORK/held$i"
  ip netns exec "$LAP" "$PY" "$WORK/holder.py" "1810$i" "$WORK/held$i" >"$WORK/holder$i.out" 2>&1 &
  HOLDERS+=("$!"); PIDS+=("$!")
done
wait_for 20 test -f "$WORK/held1" && wait_for 20 test -f "$WORK/held3" \
  && ok "alice holds an ssh stream to dev1 through r1 (direct) and one through r3 (cross-relay)" \
  || bad "alice's streams did not open: $(cat "$WORK/holder1.out" "$WORK/holder3.out")"
sleep 0.5
T0=$(now)
code=$(api 2 DELETE /api/v1/credentials/alice | tail -1)
T1=$(now)
for h in "${HOLDERS[@]}"; do for _ in $(seq 50); do kill -0 "$h" 2>/dev/null || break; sleep 0.1; done; done
[[ "$code" == 2* ]] && ok "DELETE /api/v1/credentials/alice on r2 answered $code" || bad "DELETE on r2 answered '$code'"
sleep 0.5
C1=$(log_time "$WORK/r1.log" 'closed the sessions of a credential.*alice' "$T0")
C3=$(log_time "$WORK/r3.log" 'closed the sessions of a credential.*alice' "$T0")
H1=$(awk '{print $2}' "$WORK/holder1.out"); H3=$(awk '{print $2}' "$WORK/holder3.out")
if [ -n "$C1" ] && [ -n "$C3" ] && [ -n "$H1" ] && [ -n "$H3" ]; then
  lt "$(secs "$C1" "$T0")" 1.5 && lt "$(secs "$C3" "$T0")" 1.5 && lt "$(secs "$H1" "$T0")" 1.5 && lt "$(secs "$H3" "$T0")" 1.5 \
    && ok "r1 and r3 closed alice's sessions and both held streams dropped within 1 s of the DELETE on r2 (+0.5 s margin)" \
    || bad "revocation too slow: r1 $(secs "$C1" "$T0") s, r3 $(secs "$C3" "$T0") s, streams $(secs "$H1" "$T0") / $(secs "$H3" "$T0") s"
else
  bad "revocation did not cut every session (r1 log: '$C1', r3 log: '$C3', held streams: '$(cat "$WORK/holder1.out")' '$(cat "$WORK/holder3.out")')"
fi
measure "revocation: DELETE on r2 answered in $(secs "$T1" "$T0") s; r1 closed alice's sessions after $(secs "${C1:-0}" "$T0") s, r3 after $(secs "${C3:-0}" "$T0") s; held streams ended after $(secs "${H1:-0}" "$T0") s (r1) and $(secs "${H3:-0}" "$T0") s (r3) (bound 1 s)"
out=$(get_via "${R[3]}" dev1 "$ALICE")
echo "$out" | grep -qiE 'denied|auth|revoked' && ok "alice is refused after the revocation: $(echo "$out" | tail -1 | cut -c1-120)" || bad "alice after revocation: $out"

# ---------------------------------------------------------------------------- 3. relay killed
echo "== 3. kill -9 of the device's relay"
stop_pid "$AG1"
wait_for 10 no_presence dev1 || bad "dev1's presence stayed after its agent stopped"
T0=$(now)
agent dev1 "$DEV1_TOKEN" dev1 "$ALL_RELAYS"; AG1=$LAST_PID
wait_for 30 registered dev1 "$T0" || bad "dev1 (three relays) did not register"
wait_for 10 has_presence dev1
HOME_RELAY=$(presence_of dev1); K=${HOME_RELAY#r}
if [ -z "$HOME_RELAY" ]; then
  bad "no presence for dev1"; K=1
else
  ok "dev1, given all three relays, registered on $HOME_RELAY"
fi
SURV=(); for i in 1 2 3; do [ "$i" != "$K" ] && SURV+=("$i"); done
sleep 1
T0=$(now)
kill -9 "${RPID[$K]}"; wait "${RPID[$K]}" 2>/dev/null
where=""
wait_for 15 registered dev1 "$T0" && TR=$(log_time "$WORK/agent-dev1.log" 'registered with the relay' "$T0") || TR=""
if [ -n "$TR" ]; then
  where=$(grep 'registered with the relay' "$WORK/agent-dev1.log" | tail -1 | sed -n 's/.*relay="\([^"]*\)".*/\1/p')
  lt "$(secs "$TR" "$T0")" 3 && ok "dev1 registered again on $where $(secs "$TR" "$T0") s after r$K was killed (bound: backoff 0.5 s + 2 s = 3 s)" \
    || bad "dev1 re-registered only after $(secs "$TR" "$T0") s (bound 3 s)"
else
  bad "dev1 did not register again after r$K was killed: $(tail -3 "$WORK/agent-dev1.log")"
fi
for s in "${SURV[@]}"; do
  reach "${R[$s]}" dev1 && ok "dev1 is reachable through survivor r$s" || bad "dev1 through r$s: $(get_via "${R[$s]}" dev1 | tail -1)"
done
stale() { relay_key "$K" || ectl get tunnel/presence/ --prefix --print-value-only | grep -q "\"relay\":\"r$K\""; }
not_stale() { ! stale; }
wait_for 16 not_stale && TG=$(now) || TG=""
if [ -n "$TG" ] && lt "$(secs "$TG" "$T0")" 15; then
  ok "no stale state $(secs "$TG" "$T0") s after the kill: no tunnel/relay/r$K key, no presence naming r$K (lease TTL ${LEASE_TTL} s, bound 15 s)"
else
  bad "stale state 15 s after the kill: $(ectl get tunnel/relay/r$K --print-value-only) $(ectl get tunnel/presence/ --prefix --print-value-only | grep "\"relay\":\"r$K\"")"
fi
measure "relay-kill: dev1 back on $where $(secs "${TR:-0}" "$T0") s after kill -9 of r$K (bound 3 s); r$K's record and presence gone after $(secs "${TG:-0}" "$T0") s (lease ${LEASE_TTL} s, bound 15 s)"
T0=$(now)
relay_up "$K" && wait_for 15 ready "$K" && wait_for 10 relay_key "$K" \
  && ok "r$K restarted with the same flags and rejoined ($(secs "$(now)" "$T0") s)" || bad "r$K did not come back: $(tail -3 "$WORK/r$K.log")"

# ---------------------------------------------------------------------------- 4. one member down
echo "== 4. one etcd member (the leader) killed: no visible effect"
L=$(etcd_leader) || L=1
T0=$(now)
kill -9 "${EPID[$L]}"; wait "${EPID[$L]}" 2>/dev/null
wait_for 10 has_leader && TL=$(now) || TL=""
[ -n "$TL" ] || bad "no new etcd leader after e$L was killed"
# From here on the cluster has a leader and quorum: nothing may show. Each check is
# repeated (a single request can be lucky), spread over several seconds.
T1=$(now)
agent dev2 "$DEV2_TOKEN" dev2 "${R[1]}"; AG2=$LAST_PID
NEW_PIDS=()
for j in 1 2 3 4 5 6; do agent "new-$j" "$FLEET" "new-$j" "${R[$(( j % 3 + 1 ))]}"; NEW_PIDS+=("$LAST_PID"); done
wait_for 20 registered dev2 "$T1" && TD=$(log_time "$WORK/agent-dev2.log" 'registered with the relay' "$T1") || TD=""
all_new() { local j; for j in 1 2 3 4 5 6; do registered "new-$j" "$T1" || return 1; done; }
wait_for 20 all_new || bad "not every new device registered with e$L down"
dials=0; dial_fail=""; dial_n=0; writes=0; write_fail=""; write_n=0; polls=0; poll_fail=""; poll_n=0
for j in 1 2 3 4 5 6 7 8; do
  for i in 2 3; do
    out=$(get_via "${R[$i]}" dev2); dials=$((dials+1))
    echo "$out" | grep -q hello-from-device || { dial_n=$((dial_n+1)); [ -n "$dial_fail" ] || dial_fail=" e.g. through r$i: $(echo "$out" | tail -1 | cut -c1-260)"; }
  done
  out=$(api $(( j % 3 + 1 )) POST /api/v1/credentials -H 'Content-Type: application/json' -d "{\"name\":\"carol$j\",\"grants\":{\"devices\":[\"carol$j\"]}}")
  writes=$((writes+1))
  [[ "$(echo "$out" | tail -1)" == 2* ]] || { write_n=$((write_n+1)); [ -n "$write_fail" ] || write_fail=" e.g. on r$(( j % 3 + 1 )): $(echo "$out" | tail -1) $(echo "$out" | head -1 | cut -c1-260)"; }
  for i in 1 2 3; do
    polls=$((polls+1)); c=$(readyz "$i"); [ "$c" = 200 ] || { poll_n=$((poll_n+1)); poll_fail="$poll_fail r$i:$c"; }
  done
  sleep 0.5
done
refused=0; for i in 1 2 3; do refused=$(( refused + $(count_after "$WORK/r$i.log" 'cluster refused the device id' "$T1") )); done
[ -n "$TD" ] && [ "$refused" = 0 ] && ok "7 new devices (dev2 on r1, new-1..6 on r1-r3) registered, none refused, with e$L down" \
  || bad "new devices with e$L down: the relays refused $refused registration attempts (of dev2 and new-1..6) before they got in: $(cat "$WORK"/r?.log | grep 'cluster refused the device id' | tail -1 | sed 's/.*why=//' | cut -c1-220)"
[ -z "$dial_fail" ] && ok "$dials/$dials cross-relay dials (r2 -> r1, r3 -> r1) work with e$L down" \
  || bad "$dial_n/$dials cross-relay dials with e$L down failed:$dial_fail"
[ -z "$write_fail" ] && ok "$writes/$writes admin API writes (POST /api/v1/credentials on r1-r3) work with e$L down" \
  || bad "$write_n/$writes admin API writes with e$L down failed:$write_fail"
[ -z "$poll_fail" ] && ok "/readyz answered 200 $polls/$polls times on the three relays with e$L down" \
  || bad "/readyz with e$L down was not 200 $poll_n/$polls times:$poll_fail"
LOST_RE='cluster store unreachable|lease expired|presence was lost|reachable again|re-claiming devices failed'
lost=0; for i in 1 2 3; do lost=$(( lost + $(count_after "$WORK/r$i.log" "$LOST_RE" "$T0") )); done
[ "$lost" = 0 ] && ok "no relay lost its store or its lease" \
  || bad "the relays logged $lost store/lease losses or renewals with one member down: $(grep -h -E "$LOST_RE" "$WORK"/r?.log | tail -2 | cut -c1-220 | tr '\n' ' ')"
p2=$(presence_of dev2)
[ "$p2" = r1 ] || bad "dev2 is connected to r1 but its presence in etcd is '$p2'"
ka=0; for i in 1 2 3; do ka=$(( ka + $(count_after "$WORK/r$i.log" 'lease keep-alive failed' "$TL") )); done
measure "etcd-member: e$L (leader) killed; new leader after $(secs "${TL:-0}" "$T0") s; then: dev2 registered $(secs "${TD:-0}" "$T1") s after its start, $refused registration attempts of 7 new devices refused, $dial_n/$dials cross-relay dials failed, $write_n/$writes API writes failed, $poll_n/$polls /readyz not 200, $ka failed lease keep-alives logged"
T0=$(now)
etcd_up "$L"
wait_for 30 all_healthy && ok "e$L restarted with its data dir and rejoined ($(secs "$(now)" "$T0") s)" || bad "e$L did not rejoin: $(tail -2 "$WORK/e$L.log")"
sleep 1

# ---------------------------------------------------------------------------- 5. quorum lost
echo "== 5. etcd quorum lost (two members killed) for longer than the lease TTL, then restored"
access hold2 "$BOB" "${R[1]}" dev2 ssh 18201
rm -f "$WORK/held5"
ip netns exec "$LAP" "$PY" "$WORK/holder.py" 18201 "$WORK/held5" >"$WORK/holder5.out" 2>&1 &
HOLD5=$!; PIDS+=("$HOLD5")
wait_for 20 test -f "$WORK/held5" || bad "the stream held through r1 to dev2 did not open: $(cat "$WORK/holder5.out")"
L=$(etcd_leader) || L=1
O=$(( L % 3 + 1 ))
T0=$(now)
kill -9 "${EPID[$L]}" "${EPID[$O]}"; wait "${EPID[$L]}" "${EPID[$O]}" 2>/dev/null
agent dev3 "$DEV3_TOKEN" dev3 "${R[3]}"; AG3=$LAST_PID
wait_for 20 not_ready 1 && T503=$(now) || T503=""
[ -n "$T503" ] && lt "$(secs "$T503" "$T0")" 15 && ok "/readyz of r1 turned 503 $(secs "$T503" "$T0") s after quorum was lost (bound ~15 s)" \
  || bad "/readyz of r1 after quorum loss: $(readyz 1) after $(secs "$(now)" "$T0") s"
not_ready 2 && not_ready 3 && ok "/readyz of r2 and r3 are 503 too" || bad "/readyz of r2, r3 without quorum: $(readyz 2) $(readyz 3)"
reach "${R[1]}" dev2 && ok "a new stream through dev2's own relay (r1) works without quorum" || bad "local stream r1 -> dev2 without quorum: $(get_via "${R[1]}" dev2 | tail -1)"
refusal() { [ "$(count_after "$WORK/agent-dev3.log" 'refused the session \(Unavailable\)' "$T0")" -ge 1 ]; }
wait_for 15 refusal && ! registered dev3 "$T0" \
  && ok "a new device (dev3 on r3) is refused: $(last_line "$WORK/agent-dev3.log" 'refused the session' | sed 's/.*error=//' | cut -c1-150)" \
  || bad "dev3 without quorum: $(tail -2 "$WORK/agent-dev3.log")"
T1=$(now); out=$(get_via "${R[3]}" dev2); T2=$(now)
echo "$out" | grep -q '^error: unavailable: .*store' && ok "a cross-relay dial (r3 -> dev2 on r1) fails clearly in $(secs "$T2" "$T1") s: $(echo "$out" | tail -1 | cut -c1-160)" \
  || bad "cross-relay dial without quorum: $out"
out=$(api 1 POST /api/v1/credentials -H 'Content-Type: application/json' -d '{"name":"dave","grants":{"devices":["dave"]}}')
code=$(echo "$out" | tail -1)
[[ "$code" != 2* ]] && [ "$code" != 000 ] && ok "an admin API write fails without quorum ($code: $(echo "$out" | head -1 | cut -c1-120))" || bad "API write without quorum answered '$code'"
# Past the lease TTL: every relay gives its lease up and says so.
gave_up() { local i; for i in 1 2 3; do [ "$(count_after "$WORK/r$i.log" 'cluster store unreachable' "$T0")" -ge 1 ] || return 1; done; }
wait_for 40 gave_up && TU=$(now) || TU=""
[ -n "$TU" ] && ok "every relay noticed its lease is gone ($(secs "$TU" "$T0") s: 'cluster store unreachable')" || bad "the relays did not log the store outage: $(for i in 1 2 3; do last_line "$WORK/r$i.log" 'keep-alive|unreachable' | cut -c1-120; done)"
n=$(count_after "$WORK/agent-dev2.log" 'session with the relay lost' "$T0")
reach "${R[1]}" dev2 && [ "$n" = 0 ] && kill -0 "$HOLD5" 2>/dev/null \
  && ok "after $(secs "$(now)" "$T0") s without quorum dev2 is still connected to r1, serves new local streams, and the stream opened before the outage is still open" \
  || bad "dev2 during the outage: $n session losses, held stream: $(kill -0 "$HOLD5" 2>/dev/null && echo open || echo "ended $(cat "$WORK/holder5.out")")"
T_R=$(now)
# as members come back in practice: one (quorum is back), then the other a moment later
etcd_up "$L"; sleep 2; etcd_up "$O"
RD=""; RX=""; RR=""
for _ in $(seq 150); do
  [ -z "$RD" ] && registered dev3 "$T_R" && RD=$(log_time "$WORK/agent-dev3.log" 'registered with the relay' "$T_R")
  [ -z "$RX" ] && reach "${R[3]}" dev2 && RX=$(now)
  [ -z "$RR" ] && ready 1 && ready 2 && ready 3 && RR=$(now)
  [ -n "$RD" ] && [ -n "$RX" ] && [ -n "$RR" ] && break
  lt 40 "$(secs "$(now)" "$T_R")" && break
  sleep 0.2
done
[ -n "$RD" ] && lt "$(secs "$RD" "$T_R")" 30 && ok "dev3 registered by itself $(secs "$RD" "$T_R") s after the members restarted (bound 30 s)" \
  || bad "dev3 not registered within 30 s of the restore: $(tail -2 "$WORK/agent-dev3.log")"
[ -n "$RX" ] && lt "$(secs "$RX" "$T_R")" 30 && ok "cross-relay dials work again $(secs "$RX" "$T_R") s after the restore (r1 claimed dev2 again under a new lease)" \
  || bad "cross-relay dial after the restore: $(get_via "${R[3]}" dev2 | tail -1)"
[ -n "$RR" ] && lt "$(secs "$RR" "$T_R")" 30 && ok "/readyz is 200 on every relay $(secs "$RR" "$T_R") s after the restore" \
  || bad "/readyz after the restore: $(readyz 1) $(readyz 2) $(readyz 3)"
kill -0 "$HOLD5" 2>/dev/null && ok "the stream held through r1 since before the outage survived it" || bad "the held stream ended: $(cat "$WORK/holder5.out")"
kill "$HOLD5" 2>/dev/null
# The presence written before the outage hangs on the relays' old leases, which expire one
# TTL after etcd is back: by then each relay must have claimed its devices again.
for _ in $(seq 80); do lt "$(secs "$(now)" "$T_R")" $(( LEASE_TTL + 5 )) || break; sleep 0.5; done
missing=""
for d in dev1 dev2 dev3 new-1 new-2 new-3 new-4 new-5 new-6; do
  want=$(agent_relay "$d"); got=$(presence_of "$d")
  [ -n "$want" ] && [ "$want" = "$got" ] || missing="$missing $d (connected to '$want', presence '$got')"
done
[ -z "$missing" ] && ok "$(secs "$(now)" "$T_R") s after the restore every connected device (dev1-3, new-1..6) has its presence again, naming its relay" \
  || bad "connected devices without presence $(secs "$(now)" "$T_R") s after the restore (unreachable from the other relays):$missing; $(grep -h -E 're-claiming devices failed' "$WORK"/r?.log | tail -1 | cut -c1-250)"
H=$(agent_relay dev1); H=${H#r}; O1=$(( ${H:-1} % 3 + 1 ))
out=$(get_via "${R[$O1]}" dev1)
echo "$out" | grep -q hello-from-device && ok "dev1 (on r${H:-?}) is reachable through r$O1 after the outage" || bad "dev1 (on r${H:-?}) through r$O1 after the outage: $(echo "$out" | tail -1)"
for p in "${NEW_PIDS[@]}"; do stop_pid "$p"; done
measure "quorum: readyz 503 after $(secs "${T503:-0}" "$T0") s; relays gave up their lease after $(secs "${TU:-0}" "$T0") s; outage $(secs "$T_R" "$T0") s; after the restore: readyz 200 on all relays in $(secs "${RR:-0}" "$T_R") s, cross-relay dial in $(secs "${RX:-0}" "$T_R") s, the refused device registered in $(secs "${RD:-0}" "$T_R") s (bound 30 s)"
wait_for 30 all_healthy || bad "etcd not healthy after the restore"

# ---------------------------------------------------------------------------- 6. partition
echo "== 6. relay r3 cut off from r1 and r2 on :7835 (etcd still reachable)"
present_or_restart dev2 "$DEV2_TOKEN" "${R[1]}" AG2; present_or_restart dev3 "$DEV3_TOKEN" "${R[3]}" AG3
wait_for 10 reach "${R[3]}" dev2 || bad "r3 -> dev2 before the partition: $(get_via "${R[3]}" dev2 | tail -1)"
wait_for 10 on_relay dev3 r3 || bad "dev3 is not on r3: '$(presence_of dev3)'"
# A silent partition: each side drops what it receives from the other on the relay port.
partition() { # NS PEERS
  inns "$1" nft -f - <<NFT
table inet part {
  chain input { type filter hook input priority filter; policy accept;
    ip saddr { $2 } tcp sport 7835 drop; ip saddr { $2 } tcp dport 7835 drop; }
}
NFT
}
partition "${RNS[3]}" "10.202.1.1, 10.202.1.2"
partition "${RNS[1]}" 10.202.1.3
partition "${RNS[2]}" 10.202.1.3
T0=$(now); out=$(get_via "${R[3]}" dev2); T1=$(now)
echo "$out" | grep -q '^error: .*unreachable' && lt "$(secs "$T1" "$T0")" 10 \
  && ok "a dial from r3 to dev2 (on r1, over the link r3 already had) fails as unreachable in $(secs "$T1" "$T0") s (bound 10 s): $(echo "$out" | tail -1 | cut -c1-160)" \
  || bad "dial r3 -> dev2 (link already open) during the partition ($(secs "$T1" "$T0") s): $(echo "$out" | tail -2)"
# The failed dial made r3 forget that link: the next one must open a new link to r1,
# which cannot answer either.
T2=$(now); out1=$(get_via "${R[3]}" dev2); T3=$(now)
echo "$out1" | grep -q '^error: .*unreachable' && lt "$(secs "$T3" "$T2")" 10 \
  && ok "a second dial from r3 to dev2 (r3 must open a new link to r1) fails as unreachable in $(secs "$T3" "$T2") s (bound 10 s)" \
  || bad "second dial r3 -> dev2 (new link to r1) during the partition: no 'unreachable' error within 10 s ($(secs "$T3" "$T2") s): $(echo "$out1" | tail -2)"
reach "${R[3]}" dev3 && ok "a local stream on r3 (to dev3) still works" || bad "local stream on r3 during the partition: $(get_via "${R[3]}" dev3 | tail -1)"
rz=$(inns "$PUB" curl -s -m 5 "http://10.202.1.3:7836/readyz")
for i in 1 2 3; do inns "${RNS[$i]}" nft delete table inet part; done
T_H=$(now)
wait_for 20 reach "${R[3]}" dev2 && TW=$(now) || TW=""
[ -n "$TW" ] && ok "after the partition healed, r3 -> dev2 works again ($(secs "$TW" "$T_H") s)" || bad "r3 -> dev2 after the heal: $(get_via "${R[3]}" dev2 | tail -1)"
wait_for 10 reach "${R[1]}" dev3 && ok "and r1 -> dev3 (on r3) works" || bad "r1 -> dev3 after the heal: $(get_via "${R[1]}" dev3 | tail -1)"
measure "partition: r3 -> dev2 failed in $(secs "$T1" "$T0") s over the open link, in $(secs "$T3" "$T2") s with a new link (bound 10 s); r3 /readyz during it: '$rz'; dial worked again $(secs "${TW:-0}" "$T_H") s after the heal"

# ---------------------------------------------------------------------------- 7. ID race
echo "== 7. two credentials race for device id 'race' on r1 and r2 (5 rounds)"
good=0; wins=""
for round in 1 2 3 4 5; do
  T0=$(now)
  agent race-a "$RACE_A" race "${R[1]}"; PA=$LAST_PID
  agent race-b "$RACE_B" race "${R[2]}"; PB=$LAST_PID
  decided() {
    local ra rb ta tb
    ra=$(count_after "$WORK/agent-race-a.log" 'registered with the relay' "$T0"); rb=$(count_after "$WORK/agent-race-b.log" 'registered with the relay' "$T0")
    ta=$(count_after "$WORK/agent-race-a.log" 'DeviceIdTaken' "$T0"); tb=$(count_after "$WORK/agent-race-b.log" 'DeviceIdTaken' "$T0")
    { [ "$ra" -ge 1 ] && [ "$tb" -ge 1 ]; } || { [ "$rb" -ge 1 ] && [ "$ta" -ge 1 ]; }
  }
  wait_for 15 decided
  sleep 1.5   # the loser retries meanwhile: it must stay refused
  ra=$(count_after "$WORK/agent-race-a.log" 'registered with the relay' "$T0"); rb=$(count_after "$WORK/agent-race-b.log" 'registered with the relay' "$T0")
  ta=$(count_after "$WORK/agent-race-a.log" 'DeviceIdTaken' "$T0"); tb=$(count_after "$WORK/agent-race-b.log" 'DeviceIdTaken' "$T0")
  p=$(presence_of race)
  if [ "$ra" = 1 ] && [ "$rb" = 0 ] && [ "$tb" -ge 1 ] && [ "$p" = r1 ]; then good=$((good+1)); wins="$wins a@r1"
  elif [ "$rb" = 1 ] && [ "$ra" = 0 ] && [ "$ta" -ge 1 ] && [ "$p" = r2 ]; then good=$((good+1)); wins="$wins b@r2"
  else
    bad "race round $round: race-a registered $ra× (refused taken $ta×), race-b registered $rb× (refused taken $tb×), presence '$p'"
    wins="$wins ?"
  fi
  stop_pid "$PA"; stop_pid "$PB"
  wait_for 10 no_presence race || bad "race round $round: presence stayed after both agents stopped"
done
[ "$good" = 5 ] && ok "5/5 rounds: exactly one agent held 'race' (presence named its relay), the other was refused as device id taken" \
  || bad "only $good/5 race rounds held"
measure "id-race: winners per round:$wins; loser's refusal: $(cat "$WORK/agent-race-a.log" "$WORK/agent-race-b.log" | grep DeviceIdTaken | tail -1 | sed 's/.*error=//' | cut -c1-140)"

# ---------------------------------------------------------------------------- 8. rolling restart
echo "== 8. rolling restart of r1, r2, r3 under a running 96 MiB transfer (6 MiB/s)"
present_or_restart dev1 "$DEV1_TOKEN" "$ALL_RELAYS" AG1
D=$(presence_of dev1); D=${D#r}; [ -n "$D" ] || { bad "dev1 has no relay"; D=1; }
A=$(( D % 3 + 1 )); U=$(( A % 3 + 1 ))
access roll "$BOB" "${R[$A]}" dev1 web 18088
( inns "$LAP" curl -s -m 150 --limit-rate 6M http://127.0.0.1:18088/mid.bin | "$PY" "$WORK/sha.py" -n >"$WORK/roll.out" ) &
XFER=$!; PIDS+=("$XFER")
T_X=$(now)
sleep 1.5
# the uninvolved relay first, then the device's relay (its drain waits for the transfer),
# then the caller's relay
for k in "$U" "$D" "$A"; do
  running=no; kill -0 "$XFER" 2>/dev/null && running=yes
  Ts=$(now)
  kill -TERM "${RPID[$k]}"
  if [ "$k" = "$D" ] && [ "$running" = yes ]; then
    # its drain lasts as long as the transfer: the others see it draining meanwhile
    draining() { api "$A" GET /api/v1/cluster | head -1 | "$PY" -c 'import json,sys; sys.exit(0 if any(r["id"]==sys.argv[1] and r["draining"] for r in json.load(sys.stdin)["relays"]) else 1)' "r$k"; }
    wait_for 5 draining && ok "while r$k drains, the cluster view on r$A shows it draining" || bad "r$k not shown draining on r$A: $(api "$A" GET /api/v1/cluster | head -1 | cut -c1-300)"
  fi
  for _ in $(seq $(( (GRACE + 10) * 10 ))); do kill -0 "${RPID[$k]}" 2>/dev/null || break; sleep 0.1; done
  Te=$(now)
  kill -0 "${RPID[$k]}" 2>/dev/null && { bad "r$k did not exit after SIGTERM"; kill -9 "${RPID[$k]}"; }
  rejoined() { ectl get "tunnel/relay/r$k" --print-value-only | grep -q '"draining":false'; }
  relay_up "$k" && wait_for 20 ready "$k" && wait_for 10 rejoined && Tr=$(now) || Tr=""
  [ -n "$Tr" ] && ok "r$k drained, exited and rejoined (transfer running at SIGTERM: $running)" || bad "r$k did not rejoin: $(tail -3 "$WORK/r$k.log")"
  measure "rolling: r$k exited $(secs "$Te" "$Ts") s after SIGTERM (transfer running: $running), ready and rejoined $(secs "${Tr:-0}" "$Te") s after its restart"
done
for _ in $(seq 1200); do kill -0 "$XFER" 2>/dev/null || break; sleep 0.1; done
T_XE=$(now)
got=$(cat "$WORK/roll.out" 2>/dev/null)
[ "${got% *}" = "$MID_SHA" ] && ok "the 96 MiB transfer through r$A -> r$D arrived intact across the rolling restart (sha256)" \
  || bad "transfer across the rolling restart: got '$got', want $MID_SHA $((96 << 20))"
measure "rolling: transfer of ${got#* } bytes took $(secs "$T_XE" "$T_X") s, sha256 $([ "${got% *}" = "$MID_SHA" ] && echo match || echo MISMATCH); dev1 now on $(presence_of dev1)"
for i in 1 2 3; do
  wait_for 20 reach "${R[$i]}" dev1 && ok "after the rolling restart dev1 is reachable through r$i" || bad "dev1 through r$i after the rolling restart: $(get_via "${R[$i]}" dev1 | tail -1)"
done

echo
measure "cluster suite total: $(secs "$(now)" "$T_SUITE") s"
echo "cluster suite: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
