#!/usr/bin/env bash
# Real NAT and network faults, with the project's own binaries (target/debug/tunnel-relay,
# tunnel-agent, tunnel-access), real OpenSSH and curl, in network namespaces this script
# creates and always removes (trap), named with its PID.
#
#   [dev ] 10.201.2.2 --- [nat ] 10.201.1.2 --\                     /-- 10.201.1.3 [nat2] --- 10.201.3.2 [lap]
#   device: tunnel-agent,  MASQUERADE + stateful FW  [pub] br0 10.201.1.1   MASQUERADE + FW   access client:
#   sshd, http, source     (conntrack 5 s, loose=0)   tunnel-relay :7835                      tunnel-access, ssh, curl
#
# Scenarios (each prints PASS/FAIL and MEASURE lines with its figures):
#   1. the device is unreachable from the public side except through the tunnel (ssh, curl)
#   2. NAT idle expiry: heartbeats keep a 5 s conntrack mapping alive; after `conntrack -F`
#      the device comes back under the same identity and the stale session is replaced
#   3. a long silent partition (drop rule): both sides detect it within 3 heartbeats, the
#      relay frees the session, the device reconnects after the partition heals
#   4. RST injection on the device's flow: fast reconnect; an in-flight stream sees a reset
#   5. 1% random loss each way (nftables numgen) + a 100 Mbit/s tbf cap: 64 MiB byte-exact
#   6. graceful relay shutdown: new streams refused, a running transfer finishes in the grace
#   7. relay killed (SIGKILL) and restarted with 100 devices connected: all return, spread
#      out by the reconnect jitter
# Needs root, iproute2, nftables, conntrack, openssh, curl, python3; skips (exit 0) with a
# message where network namespaces are not available. Usage: tests/netns/run.sh [TARGET_DIR]
set -uo pipefail
cd "$(dirname "$0")/../.."

skip() { echo "SKIP netns suite: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces, nftables)"
command -v ip >/dev/null || skip "iproute2 (ip) not installed"
PFX="tn$$"
ip netns add "$PFX-probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "$PFX-probe"

BIN=${1:-target/debug}
for b in tunnel-relay tunnel-agent tunnel-access; do
  [ -x "$BIN/$b" ] || { echo "FAIL: $BIN/$b missing (cargo build -p tunnel-examples --bins)"; exit 1; }
done
BIN=$(cd "$BIN" && pwd)
PY=${PY:-/usr/bin/python3}
[ -x "$PY" ] || PY=$(command -v python3)
[ -x "$PY" ] || skip "python3 not installed"
for t in nft conntrack sshd ssh ssh-keygen curl tc; do
  command -v "$t" >/dev/null || PATH="$PATH:/usr/sbin:/sbin"
  command -v "$t" >/dev/null || skip "$t not installed (scripts/test.sh installs it with apt-get)"
done

PUB=$PFX-pub; NAT=$PFX-nat; DEV=$PFX-dev; NAT2=$PFX-nat2; LAP=$PFX-lap
WORK=$(mktemp -d "/tmp/$PFX.XXXXXX")
PIDS=()
PASS=0; FAIL=0
RELAY=10.201.1.1:7835
HB_MS=1000   # relay heartbeat: a silent peer is dead after 3 s

. tests/lib.sh

cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  for ns in "$LAP" "$NAT2" "$DEV" "$NAT" "$PUB"; do ip netns del "$ns" 2>/dev/null; done
  if [ "${KEEP_LOGS:-0}" = 1 ]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------- topology
for ns in "$PUB" "$NAT" "$DEV" "$NAT2" "$LAP"; do ip netns add "$ns"; inns "$ns" ip link set lo up; done
ip -n "$PUB" link add br0 type bridge; ip -n "$PUB" link set br0 up
ip -n "$PUB" addr add 10.201.1.1/24 dev br0
ip -n "$NAT"  link add wan0 type veth peer name up1 netns "$PUB"
ip -n "$NAT2" link add wan0 type veth peer name up2 netns "$PUB"
for p in up1 up2; do ip -n "$PUB" link set "$p" master br0; ip -n "$PUB" link set "$p" up; done
ip -n "$DEV" link add eth0 type veth peer name lan0 netns "$NAT"
ip -n "$LAP" link add eth0 type veth peer name lan0 netns "$NAT2"
ip -n "$NAT"  addr add 10.201.1.2/24 dev wan0; ip -n "$NAT"  link set wan0 up
ip -n "$NAT2" addr add 10.201.1.3/24 dev wan0; ip -n "$NAT2" link set wan0 up
ip -n "$NAT"  addr add 10.201.2.1/24 dev lan0; ip -n "$NAT"  link set lan0 up
ip -n "$NAT2" addr add 10.201.3.1/24 dev lan0; ip -n "$NAT2" link set lan0 up
ip -n "$DEV" addr add 10.201.2.2/24 dev eth0; ip -n "$DEV" link set eth0 up
ip -n "$LAP" addr add 10.201.3.2/24 dev eth0; ip -n "$LAP" link set eth0 up
ip -n "$DEV" route add default via 10.201.2.1
ip -n "$LAP" route add default via 10.201.3.1
for r in "$NAT" "$NAT2"; do
  ip -n "$r" route add default via 10.201.1.1
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
# The device's router forgets an idle TCP mapping after 5 s and drops mid-stream packets it
# has no state for (as home routers and CGNATs do). Set before any flow starts.
inns "$NAT" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_established=5
inns "$NAT" sysctl -qw net.netfilter.nf_conntrack_tcp_loose=0

# ---------------------------------------------------------------------------- services
mkdir -p "$WORK/www" "$WORK/relay"
head -c $((64 << 20)) /dev/urandom >"$WORK/www/blob.bin"
echo "hello-from-device" >"$WORK/www/index.txt"
BLOB_SHA=$(sha256sum <"$WORK/www/blob.bin" | cut -d' ' -f1)
cat >"$WORK/www.py" <<'PY'
import functools, http.server, socketserver, sys
class S(http.server.ThreadingHTTPServer):
    def server_bind(self):
        socketserver.TCPServer.server_bind(self); self.server_name, self.server_port = "device", self.server_address[1]
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
S((sys.argv[1], int(sys.argv[2])), functools.partial(H, directory=sys.argv[3])).serve_forever()
PY
cat >"$WORK/source.py" <<'PY'
# endless source: writes 64 KiB chunks to whoever connects (bounded to 4 GiB per connection)
import socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(16)
def serve(c):
    try:
        for _ in range(65536): c.sendall(b"\x5a" * 65536)
    except OSError: pass
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
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
EOF
spawn "$DEV" "$WORK/sshd.log" "$(command -v sshd)" -D -e -f "$WORK/sshd_config"
spawn "$DEV" "$WORK/www.log" "$PY" "$WORK/www.py" 10.201.2.2 8000 "$WORK/www"
spawn "$DEV" "$WORK/source.log" "$PY" "$WORK/source.py" 127.0.0.1 9000
listening() { inns "$1" ss -Hltn "src $2" | grep -q .; }
wait_for 10 listening "$DEV" 127.0.0.1:2222 && wait_for 10 listening "$DEV" 10.201.2.2:8000 \
  && wait_for 10 listening "$DEV" 127.0.0.1:9000 || { bad "device services did not start"; exit 1; }

# ---------------------------------------------------------------------------- relay + clients
TOKENS="$WORK/relay/tokens.toml"
DEV_TOKEN=$("$BIN/tunnel-relay" token new --file "$TOKENS" --name pi --device pi 2>/dev/null)
USER_TOKEN=$("$BIN/tunnel-relay" token new --file "$TOKENS" --name alice --access 'pi/*' 2>/dev/null)
FLEET_A=$("$BIN/tunnel-relay" token new --file "$TOKENS" --name fleet-a --device 'fa-*' 2>/dev/null)
FLEET_B=$("$BIN/tunnel-relay" token new --file "$TOKENS" --name fleet-b --device 'fb-*' 2>/dev/null)
start_relay() { # [extra args]: starts the relay in PUB; sets RELAY_PID and PIN
  spawn "$PUB" "$WORK/relay.log" env RUST_LOG=info "$BIN/tunnel-relay" serve --listen "$RELAY" \
    --tokens "$TOKENS" --state-dir "$WORK/relay/state" --heartbeat-ms "$HB_MS" "$@"
  RELAY_PID=$LAST_PID
  wait_for 30 grep -q '^pin ' "$WORK/relay.log" || { bad "relay did not start"; exit 1; }
  PIN=$(grep '^pin ' "$WORK/relay.log" | tail -1 | cut -d' ' -f2)
}
start_relay --grace-secs 20
T_START=$(now)
spawn "$DEV" "$WORK/agent.log" env TUNNEL_TOKEN="$DEV_TOKEN" RUST_LOG=info "$BIN/tunnel-agent" \
  --relay "$RELAY" --pin "$PIN" --device-id pi \
  --expose ssh=127.0.0.1:2222 --expose web=10.201.2.2:8000 --expose src=127.0.0.1:9000
AGENT_PID=$LAST_PID
for svc in web:18080 src:19000; do
  spawn "$LAP" "$WORK/access-${svc%%:*}.log" env TUNNEL_TOKEN="$USER_TOKEN" RUST_LOG=info "$BIN/tunnel-access" \
    --relay "$RELAY" --pin "$PIN" --device pi --service "${svc%%:*}" --listen "127.0.0.1:${svc##*:}"
done
registered() { [ "$(count_after "$WORK/agent.log" 'registered with the relay' "$1")" -ge "${2:-1}" ]; }
wait_for 30 registered "$T_START" || { bad "device did not register"; exit 1; }
wait_for 10 listening "$LAP" 127.0.0.1:18080 && wait_for 10 listening "$LAP" 127.0.0.1:19000 \
  || { bad "access client did not listen"; exit 1; }
web() { inns "$LAP" curl -sf -m "${2:-10}" "http://127.0.0.1:18080/$1"; }
wait_for 20 web index.txt || bad "first request through the tunnel"

# ---------------------------------------------------------------------------- 1. unreachable
echo "== 1. the device is reachable only through the tunnel"
inns "$PUB" curl -s -m 2 -o /dev/null http://10.201.2.2:8000/ && bad "public side reached the device without a route" || ok "no route from the public side to the device"
ip -n "$PUB" route add 10.201.2.0/24 via 10.201.1.2
inns "$PUB" curl -s -m 2 -o /dev/null http://10.201.2.2:8000/ && bad "stateful firewall let an inbound connection through" || ok "an attacker with a route is stopped by the device's router"
ip -n "$PUB" route del 10.201.2.0/24 via 10.201.1.2
inns "$PUB" curl -s -m 2 -o /dev/null http://10.201.1.2:8000/ && bad "router's public address answered" || ok "no port is open on the router's public address"
inns "$PUB" curl -s -m 2 -o /dev/null http://10.201.1.1:8000/ && bad "relay exposes the service" || ok "the relay publishes no port for the device"
[ "$(web index.txt)" = hello-from-device ] && ok "curl from behind the second NAT reaches the device's web service through the tunnel" || bad "curl through the tunnel"
out=$(inns "$LAP" ssh -F /dev/null -i "$WORK/id" -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o ConnectTimeout=20 -o ProxyCommand="env TUNNEL_TOKEN=$USER_TOKEN $BIN/tunnel-access --relay $RELAY --pin $PIN --device pi --service ssh --stdio" \
  root@pi cat "$WORK/marker" 2>"$WORK/ssh.err")
[ "$out" = "marker-$PFX" ] && ok "OpenSSH through the tunnel (ProxyCommand tunnel-access --stdio) runs a command on the device" || bad "ssh through the tunnel: '$out' $(tail -3 "$WORK/ssh.err")"
out=$(inns "$LAP" env TUNNEL_TOKEN="$DEV_TOKEN" timeout 20 "$BIN/tunnel-access" --relay "$RELAY" --pin "$PIN" --device pi --service ssh --stdio </dev/null 2>&1)
echo "$out" | grep -qi denied && ok "a credential without an access grant is denied" || bad "device token opened a stream: $out"

# ---------------------------------------------------------------------------- 2. NAT idle expiry
echo "== 2. NAT idle expiry (conntrack established timeout 5 s, loose=0)"
T0=$(now); sleep 12
n=$(count_after "$WORK/agent.log" 'session with the relay lost' "$T_START")
[ "$n" = 0 ] && web index.txt >/dev/null && ok "12 s without user traffic: heartbeats kept the 5 s NAT mapping alive (no reconnect)" || bad "idle session was lost ($n losses)"
T0=$(now)
inns "$NAT" conntrack -F >/dev/null 2>&1
wait_for 30 registered "$T0" && T1=$(log_time "$WORK/agent.log" 'registered with the relay' "$T0") || T1=""
if [ -n "$T1" ]; then
  TD=$(log_time "$WORK/agent.log" 'heartbeat failed|session with the relay lost' "$T0")
  TR=$(log_time "$WORK/relay.log" 'replacing the previous session|missed its heartbeats' "$T0")
  how=$(grep -c 'replacing the previous session' "$WORK/relay.log")
  [ "$(web index.txt)" = hello-from-device ] && ok "after conntrack -F the device came back as pi and serves again" || bad "no service after conntrack flush"
  grep -q 'replacing the previous session' "$WORK/relay.log" && ok "the relay replaced the stale session of the same identity" \
    || { [ -n "$TR" ] && ok "the relay dropped the stale session by heartbeat before the device returned"; } \
    || bad "the stale session was neither replaced nor dropped" 
  measure "nat-flush: device detected loss after $(secs "${TD:-$T1}" "$T0") s, re-registered after $(secs "$T1" "$T0") s; relay dropped/replaced the stale session after $(secs "${TR:-$T1}" "$T0") s (replacements so far: $how)"
else
  bad "device did not recover after conntrack -F"
fi

# ---------------------------------------------------------------------------- 3. partition
echo "== 3. silent partition for 10 s (drop both ways at the device's router)"
sleep 2
T0=$(now)
inns "$NAT" nft insert rule inet fw forward iifname wan0 counter drop comment \"partition\"
inns "$NAT" nft insert rule inet fw forward oifname wan0 counter drop comment \"partition\"
sleep 10
TRD=$(log_time "$WORK/relay.log" 'missed its heartbeats' "$T0")
TRO=$(log_time "$WORK/relay.log" 'device offline' "$T0")
TDD=$(log_time "$WORK/agent.log" 'heartbeat failed|session with the relay lost' "$T0")
for h in $(inns "$NAT" nft -a list chain inet fw forward | awk '/partition/ {print $NF}'); do inns "$NAT" nft delete rule inet fw forward handle "$h"; done
T_HEAL=$(now)
if [ -n "$TRD" ] && [ -n "$TDD" ] && [ -n "$TRO" ]; then
  lt "$(secs "$TRD" "$T0")" 4.5 && lt "$(secs "$TDD" "$T0")" 4.5 \
    && ok "both sides detected the partition within the bound (3 × ${HB_MS} ms + one interval of scheduling slack)" \
    || bad "partition detected too late"
  ok "the relay freed the device's session (device offline)"
else
  bad "partition not detected (relay: '$TRD' offline: '$TRO' device: '$TDD')"
fi
wait_for 40 registered "$T_HEAL" && TRC=$(log_time "$WORK/agent.log" 'registered with the relay' "$T_HEAL") || TRC=""
[ -n "$TRC" ] && [ "$(web index.txt)" = hello-from-device ] && ok "the device reconnected after the partition healed" || bad "no reconnect after heal"
measure "partition: relay detected after $(secs "${TRD:-0}" "$T0") s and freed the session after $(secs "${TRO:-0}" "$T0") s, device detected after $(secs "${TDD:-0}" "$T0") s (bound 3 × ${HB_MS} ms); reconnected $(secs "${TRC:-0}" "$T_HEAL") s after the heal"

# ---------------------------------------------------------------------------- 4. RST injection
echo "== 4. RST injection on the device's flow, with a stream in flight"
sleep 11   # let the session become stable, so the backoff starts from its base
cat >"$WORK/reader.py" <<'PY'
# reads an endless stream through the tunnel; reports how it ended: reset, eof or timeout
import socket, sys, time
s = socket.create_connection(("127.0.0.1", 19000), 10); s.settimeout(20)
got = 0; marked = False
try:
    while True:
        d = s.recv(65536)
        if not d: print("eof", got); break
        got += len(d)
        if got > (1 << 20) and not marked:
            open(sys.argv[1], "w").write("1"); marked = True
except ConnectionResetError: print("reset", got)
except socket.timeout: print("timeout", got)
except OSError as e: print("error", e, got)
PY
rm -f "$WORK/reading"
inns "$LAP" "$PY" "$WORK/reader.py" "$WORK/reading" >"$WORK/reader.out" 2>&1 &
READER=$!; PIDS+=("$READER")
wait_for 20 test -f "$WORK/reading" || bad "stream did not start"
T0=$(now)
inns "$NAT" nft insert rule inet fw forward ip daddr 10.201.1.1 tcp dport 7835 reject with tcp reset comment \"rst\"
sleep 0.2
for h in $(inns "$NAT" nft -a list chain inet fw forward | awk '/"rst"/ {print $NF}'); do inns "$NAT" nft delete rule inet fw forward handle "$h"; done
for _ in $(seq 300); do kill -0 "$READER" 2>/dev/null || break; sleep 0.1; done
res=$(cat "$WORK/reader.out")
TDD=$(log_time "$WORK/agent.log" 'session with the relay lost' "$T0")
wait_for 30 registered "$T0" && TRC=$(log_time "$WORK/agent.log" 'registered with the relay' "$T0") || TRC=""
case "$res" in reset*|error*) ok "the in-flight stream ended with an error ($res bytes), not a clean end of stream";; *) bad "in-flight stream after RST: $res";; esac
[ -n "$TRC" ] && [ "$(web index.txt)" = hello-from-device ] && ok "the device reconnected after the reset" || bad "no reconnect after RST"
measure "rst: device saw the reset after $(secs "${TDD:-0}" "$T0") s and re-registered after $(secs "${TRC:-0}" "$T0") s; in-flight stream: ${res%% *}"

# ---------------------------------------------------------------------------- 5. loss + rate
echo "== 5. 1% loss each way + 100 Mbit/s tbf: 64 MiB through the tunnel"
# One TCP segment per packet from both ends (no TSO/GSO super-packets), so that 1% of the
# packets really is 1% of the segments.
ip -n "$DEV" link set eth0 gso_max_segs 1
ip -n "$PUB" link set br0 gso_max_segs 1
inns "$NAT" nft insert rule inet fw forward iifname wan0 numgen random mod 100 \< 1 counter drop comment \"loss\"
inns "$NAT" nft insert rule inet fw forward oifname wan0 numgen random mod 100 \< 1 counter drop comment \"loss\"
inns "$NAT" tc qdisc add dev wan0 root tbf rate 100mbit burst 64kb latency 50ms
T0=$(now)
got=$(web blob.bin 120 | sha256sum | cut -d' ' -f1)
T1=$(now)
drops=$(inns "$NAT" nft list chain inet fw forward | awk '/"loss"/ {for (i=1;i<=NF;i++) if ($i=="packets") s+=$(i+1)} END {print s+0}')
[ "$got" = "$BLOB_SHA" ] && ok "64 MiB arrived byte-exact under 1% loss and a rate cap" || bad "64 MiB transfer corrupted or incomplete"
measure "loss: 64 MiB in $(secs "$T1" "$T0") s under 1% loss each way ($drops packets dropped) and tbf 100 Mbit/s; sha256 $( [ "$got" = "$BLOB_SHA" ] && echo match || echo MISMATCH ), bytes lost: $( [ "$got" = "$BLOB_SHA" ] && echo 0 || echo unknown )"
for h in $(inns "$NAT" nft -a list chain inet fw forward | awk '/"loss"/ {print $NF}'); do inns "$NAT" nft delete rule inet fw forward handle "$h"; done

# ---------------------------------------------------------------------------- 6. graceful shutdown
echo "== 6. graceful relay shutdown during a transfer (grace 20 s, tbf still on: ~6 s transfer)"
(web blob.bin 120 | sha256sum | cut -d' ' -f1 >"$WORK/graceful.sha") &
FETCH=$!
sleep 1.5
T0=$(now)
kill -TERM "$RELAY_PID"
sleep 0.5
web index.txt 5 >/dev/null && bad "a new stream was accepted while draining" || ok "new streams are refused while the relay drains"
for _ in $(seq 600); do kill -0 "$FETCH" 2>/dev/null || break; sleep 0.1; done
T1=$(now)
for _ in $(seq 300); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
T2=$(now)
[ "$(cat "$WORK/graceful.sha" 2>/dev/null)" = "$BLOB_SHA" ] && ok "the running 64 MiB transfer finished byte-exact during the grace period" || bad "running transfer cut by shutdown"
kill -0 "$RELAY_PID" 2>/dev/null && bad "relay did not exit" || ok "the relay exited after the drain"
measure "graceful: running transfer finished $(secs "$T1" "$T0") s after SIGTERM, relay exited after $(secs "$T2" "$T0") s (grace 20 s), new streams refused"
inns "$NAT" tc qdisc del dev wan0 root

# ---------------------------------------------------------------------------- 7. restart with 100
echo "== 7. relay killed and restarted with 100 devices"
stop_pid "$AGENT_PID"
start_relay --grace-secs 1
FLEET_PIDS=()
T_FLEET=$(now)
for i in $(seq 0 99); do
  if [ "$i" -lt 50 ]; then id=fa-$i; tok=$FLEET_A; else id=fb-$i; tok=$FLEET_B; fi
  spawn "$DEV" "$WORK/fleet.log" env TUNNEL_TOKEN="$tok" RUST_LOG=info "$BIN/tunnel-agent" \
    --relay "$RELAY" --pin "$PIN" --device-id "$id" --expose ssh=127.0.0.1:2222
  FLEET_PIDS+=("$LAST_PID")
done
online() { [ "$(count_after "$WORK/relay.log" 'device online' "$1")" -ge 100 ]; }
wait_for 90 online "$T_FLEET" || bad "the fleet did not come online ($(count_after "$WORK/relay.log" 'device online' "$T_FLEET")/100)"
sleep 11   # sessions become stable: the next loss retries from the base delay
T0=$(now)
kill -9 "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null
sleep 2
T_UP=$(now)
start_relay --grace-secs 1
wait_for 120 online "$T_UP"
n=$(count_after "$WORK/relay.log" 'device online' "$T_UP")
[ "$n" -ge 100 ] && ok "all 100 devices came back after the relay was killed and restarted" || bad "only $n/100 devices came back"
stats=$("$PY" - "$WORK/relay.log" "$T_UP" <<'PY'
import datetime, re, sys
ansi = re.compile(r"\x1b\[[0-9;]*m"); up = float(sys.argv[2]); ts = []
for line in open(sys.argv[1], errors="replace"):
    line = ansi.sub("", line)
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if m and "device online" in line:
        t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
        if t > up: ts.append(t - up)
ts.sort()
if ts:
    busiest = max(sum(1 for u in ts if t <= u < t + 0.1) for t in ts)
    print(f"first {ts[0]:.2f} s, median {ts[len(ts)//2]:.2f} s, last {ts[-1]:.2f} s after the restart; spread {ts[-1]-ts[0]:.2f} s; at most {busiest} registrations in any 100 ms")
PY
)
refusals=$(count_after "$WORK/fleet.log" 'cannot reach the relay' "$T0")
measure "restart-100: relay down $(secs "$T_UP" "$T0") s; $n/100 back: $stats; $refusals failed attempts while down"
echo "$stats" | grep -q spread && ! echo "$stats" | grep -q 'spread 0.0' && ok "reconnects were spread out by jitter" || bad "no spread in reconnects: $stats"

echo
echo "netns summary: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
