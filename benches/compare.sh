#!/usr/bin/env bash
# Runs the same workloads (tunnel-loadgen) against plain TCP, socat, bore, rathole (tcp and
# tls), ssh -R and the tunnel (public port; private access through tunnel-access; private
# access with the library's Dialer inside the load generator, `tunnel-dialer`), all on
# loopback, and prints one table of medians with ratios to plain TCP.
#
#   benches/compare.sh            # everything (about 10 minutes on a 2-core machine)
#   ONLY="tcp tunnel-public" benches/compare.sh
#   BYTES=268435456 RUNS=1 benches/compare.sh   # quicker
#   BIN=/other/target/release ONLY=tunnel-public benches/compare.sh   # prebuilt binaries, no build
#
# Also: ROWS_OUT=FILE appends the raw rows (tab-separated) to FILE; TUNNEL_ENV="K=V …" is the
# environment of the tunnel's own processes only (relay, agent, access). benches/ab.sh uses
# the three to A/B two builds or two settings.
#
# Installs what it needs: OpenSSH and socat from apt, bore-cli and rathole with cargo install
# into target/compare-tools (skipped with a note where that fails). Only processes this
# script started are stopped, by PID. bore's control port is fixed at 7835 by bore itself.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BYTES=${BYTES:-1073741824}
RUNS=${RUNS:-3}
IDLE=${IDLE:-1000}
ONLY=${ONLY:-"tcp socat bore rathole-tcp rathole-tls ssh-R tunnel-public tunnel-private tunnel-dialer"}
TOOLS=$ROOT/target/compare-tools
WORK=$(mktemp -d /tmp/tunnel-compare.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

need_apt() {
  local missing=()
  for pair in "$@"; do command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} from apt" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}") >/dev/null
  fi
}
need_apt socat:socat ssh:openssh-client /usr/sbin/sshd:openssh-server openssl:openssl pkg-config:pkg-config
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt /nonexistent:libssl-dev
for tool in bore:bore-cli rathole:rathole; do
  [ -x "$TOOLS/bin/${tool%%:*}" ] || {
    echo "cargo install ${tool#*:} (once, into $TOOLS)" >&2
    cargo install --quiet --root "$TOOLS" "${tool#*:}" >&2 || echo "could not install ${tool#*:}; skipping it" >&2
  }
done

if [ -z "${BIN:-}" ]; then
  echo "building release binaries" >&2
  "$ROOT"/scripts/ensure-protoc.sh # the relay's etcd client compiles its protocol files
  cargo build --release --quiet -p tunnel-examples --bins -p tunnel-benches --bin tunnel-loadgen
  BIN=$ROOT/target/release
fi
read -r -a TENV <<<"${TUNNEL_ENV:-}"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # host:port, up to 20 s
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on $1; logs:" >&2; tail -n 5 "$WORK"/*.log >&2; return 1
}
# start NAME CMD...: background process, output to $WORK/NAME.log
start() { local name=$1; shift; "$@" >"$WORK/$name.log" 2>&1 & PIDS+=($!); LAST=$!; }
wait_line() { # file prefix -> rest of the first line starting with prefix, up to 30 s
  for _ in $(seq 300); do
    local l; l=$(grep -m1 "^$2 " "$1" 2>/dev/null || true)
    [ -n "$l" ] && { echo "${l#"$2 "}"; return 0; }
    sleep 0.1
  done
  echo "no '$2' line in $1" >&2; cat "$1" >&2; return 1
}

start servers "$BIN/tunnel-loadgen" servers
SINK=$(wait_line "$WORK/servers.log" sink)
ECHO=$(wait_line "$WORK/servers.log" echo)

ROWS=$WORK/rows.tsv
run() { # NAME SINK ECHO [PID] [extra loadgen args]; SINK and ECHO "-": the extra args say where
  local name=$1 sink=$2 echo=$3 pid=${4:-} targets=(); shift 3; [ $# -gt 0 ] && shift
  if [ "$sink" != - ]; then
    { wait_port "$sink" && wait_port "$echo"; } || { echo "$name: not reachable, skipped" >&2; return 0; }
    targets=(--sink "$sink" --echo "$echo")
  fi
  sleep 1
  echo "== $name" >&2
  "$BIN/tunnel-loadgen" run --name "$name" "${targets[@]}" --bytes "$BYTES" \
    --runs "$RUNS" --idle "$IDLE" ${pid:+--pid "$pid"} "$@" | tee -a "$ROWS" >&2 \
    || { local kept; kept=$ROOT/target/compare-failures/$name-$(date -u +%Y%m%dT%H%M%S)
         mkdir -p "$kept" && cp "$WORK"/*.log "$kept"/
         echo "$name failed; every log kept in $kept; the last lines:" >&2
         grep -h -v -e "stream closed" "$WORK"/*.log | tail -n 15 >&2; }
}
stop_all_but_servers() {
  for p in "${PIDS[@]:1}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=("${PIDS[0]}")
}
enabled() { [[ " $ONLY " == *" $1 "* ]]; }

if enabled tcp; then run tcp "$SINK" "$ECHO"; fi

if enabled socat; then
  p1=$(free_port); p2=$(free_port)
  start socat1 socat "TCP-LISTEN:$p1,bind=127.0.0.1,fork,reuseaddr,nodelay" "TCP:$SINK,nodelay"
  start socat2 socat "TCP-LISTEN:$p2,bind=127.0.0.1,fork,reuseaddr,nodelay" "TCP:$ECHO,nodelay"
  # socat forks a process per connection: no single PID to weigh, and here it stalls near
  # 930 concurrent connections (fork limit), so no 1000-connection run.
  run socat "127.0.0.1:$p1" "127.0.0.1:$p2" "" --no-1000
  stop_all_but_servers
fi

if enabled bore && [ -x "$TOOLS/bin/bore" ]; then
  start bore-server "$TOOLS/bin/bore" server --bind-addr 127.0.0.1
  server_pid=$LAST; wait_port 127.0.0.1:7835
  # bore binds the remote ports we ask for, inside its range
  r1=$(free_port); r2=$(free_port)
  start bore1 "$TOOLS/bin/bore" local "${SINK#*:}" --local-host 127.0.0.1 --to 127.0.0.1 --port "$r1"
  start bore2 "$TOOLS/bin/bore" local "${ECHO#*:}" --local-host 127.0.0.1 --to 127.0.0.1 --port "$r2"
  run bore "127.0.0.1:$r1" "127.0.0.1:$r2" "$server_pid"
  stop_all_but_servers
fi

rathole() { # KIND (tcp|tls)
  local kind=$1 ctl p1 p2 tls_s="" tls_c=""
  ctl=$(free_port); p1=$(free_port); p2=$(free_port)
  if [ "$kind" = tls ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
      -addext subjectAltName=DNS:localhost -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
    openssl pkcs12 -export -out "$WORK/id.pfx" -inkey "$WORK/key.pem" -in "$WORK/cert.pem" -passout pass:bench
    tls_s=$(printf '[server.transport.tls]\npkcs12 = "%s/id.pfx"\npkcs12_password = "bench"' "$WORK")
    tls_c=$(printf '[client.transport.tls]\ntrusted_root = "%s/cert.pem"\nhostname = "localhost"' "$WORK")
  fi
  cat >"$WORK/rs.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$ctl"
default_token = "bench-token"
[server.transport]
type = "$kind"
$tls_s
[server.services.sink]
bind_addr = "127.0.0.1:$p1"
[server.services.echo]
bind_addr = "127.0.0.1:$p2"
EOF
  cat >"$WORK/rc.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$ctl"
default_token = "bench-token"
[client.transport]
type = "$kind"
$tls_c
[client.services.sink]
local_addr = "$SINK"
[client.services.echo]
local_addr = "$ECHO"
EOF
  start rathole-server "$TOOLS/bin/rathole" -s "$WORK/rs.toml"; local server_pid=$LAST
  wait_port "127.0.0.1:$ctl"
  start rathole-client "$TOOLS/bin/rathole" -c "$WORK/rc.toml"
  sleep 2
  run "rathole-$kind" "127.0.0.1:$p1" "127.0.0.1:$p2" "$server_pid"
  stop_all_but_servers
}
if [ -x "$TOOLS/bin/rathole" ]; then
  if enabled rathole-tcp; then rathole tcp; fi
  if enabled rathole-tls; then rathole tls; fi
fi

if enabled ssh-R; then
  mkdir -p /run/sshd "$WORK/ssh"
  ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/host"
  ssh-keygen -q -t ed25519 -N "" -f "$WORK/ssh/user"
  cp "$WORK/ssh/user.pub" "$WORK/ssh/authorized_keys"
  sp=$(free_port)
  cat >"$WORK/ssh/sshd_config" <<EOF
ListenAddress 127.0.0.1:$sp
HostKey $WORK/ssh/host
AuthorizedKeysFile $WORK/ssh/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
AllowTcpForwarding yes
GatewayPorts no
StrictModes no
UsePAM no
PidFile $WORK/ssh/sshd.pid
EOF
  start sshd /usr/sbin/sshd -D -e -f "$WORK/ssh/sshd_config"; sshd_pid=$LAST
  wait_port "127.0.0.1:$sp"
  p1=$(free_port); p2=$(free_port)
  start ssh ssh -N -p "$sp" -i "$WORK/ssh/user" -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o ExitOnForwardFailure=yes -c aes128-gcm@openssh.com \
    -R "127.0.0.1:$p1:$SINK" -R "127.0.0.1:$p2:$ECHO" "$(id -un)@127.0.0.1"
  wait_port "127.0.0.1:$p1"
  # The session's unprivileged child of sshd holds the forwarded connections.
  session_pid=$(pgrep -P "$(pgrep -P "$sshd_pid" | head -1)" | head -1 || pgrep -P "$sshd_pid" | head -1)
  run ssh-R "127.0.0.1:$p1" "127.0.0.1:$p2" "${session_pid:-$sshd_pid}"
  stop_all_but_servers
fi

tunnel() { # KIND (public|private|dialer)
  "$BIN/tunnel-relay" token new --file "$WORK/tokens.toml" --name dev --device bench --public >"$WORK/dev.token" 2>/dev/null
  "$BIN/tunnel-relay" token new --file "$WORK/tokens.toml" --name acc --access 'bench/*' >"$WORK/acc.token" 2>/dev/null
  start relay env "${TENV[@]}" "$BIN/tunnel-relay" serve --listen 127.0.0.1:0 --tokens "$WORK/tokens.toml" \
    --state-dir "$WORK/relay-state-$1" --public-ports 45000-45999 --public-bind 127.0.0.1 --max-streams 1200 \
    --public-max-streams 1199 --public-max-per-source 100000
  local relay_pid=$LAST relay pin
  relay=$(wait_line "$WORK/relay.log" listening); pin=$(wait_line "$WORK/relay.log" pin)
  local common=(--relay "$relay" --pin "$pin" --max-streams 1200)
  start agent env "${TENV[@]}" "$BIN/tunnel-agent" "${common[@]}" --token-file "$WORK/dev.token" --device-id bench \
    --expose "sink=$SINK" --expose "echo=$ECHO" --public sink=0 --public echo=0
  if [ "$1" = public ]; then
    run tunnel-public "127.0.0.1:$(wait_line "$WORK/agent.log" 'public sink')" \
      "127.0.0.1:$(wait_line "$WORK/agent.log" 'public echo')" "$relay_pid"
  elif [ "$1" = dialer ]; then
    wait_line "$WORK/agent.log" 'public sink' >/dev/null
    run tunnel-dialer - - "$relay_pid" --device bench --relay "$relay" --pin "$pin" --token-file "$WORK/acc.token"
  else
    wait_line "$WORK/agent.log" 'public sink' >/dev/null
    start access1 env "${TENV[@]}" "$BIN/tunnel-access" "${common[@]}" --token-file "$WORK/acc.token" --device bench --service sink --listen 127.0.0.1:0
    start access2 env "${TENV[@]}" "$BIN/tunnel-access" "${common[@]}" --token-file "$WORK/acc.token" --device bench --service echo --listen 127.0.0.1:0
    run tunnel-private "$(wait_line "$WORK/access1.log" listening)" "$(wait_line "$WORK/access2.log" listening)" "$relay_pid"
  fi
  stop_all_but_servers
  rm -f "$WORK/tokens.toml"
}
if enabled tunnel-public; then tunnel public; fi
if enabled tunnel-private; then tunnel private; fi
if enabled tunnel-dialer; then tunnel dialer; fi

[ -z "${ROWS_OUT:-}" ] || cat "$ROWS" >>"$ROWS_OUT"
echo
echo "$(date -u +%F), $(nproc) cores, $(uname -r); $BYTES bytes per single-stream run, median of $RUNS; MB = 10^6 bytes"
python3 - "$ROWS" <<'EOF'
import math, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
base = next((r for r in rows if r[0] == "tcp"), None)
def f(x): return float(x)
hdr = ["forwarder", "1 stream MB/s", "x TCP", "rtt p50 µs", "+µs vs TCP", "rtt p99 µs",
       "new conn µs", "100 conns MB/s", "slowest/median", "1000 conns MB/s", "slowest/median", "KiB/idle conn", "server CPU s/GiB",
       "server RSS after load MiB"]
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
for r in rows:
    name, tp, p50, p99, fb, a100, s100, a1000, s1000, idle, cpu, kept = r[0], *map(f, r[1:])
    ratio = f"{tp / f(base[1]):.2f}" if base else "-"
    added = f"{p50 - f(base[2]):+.0f}" if base else "-"
    cells = [name, f"{tp:.0f}", ratio, f"{p50:.0f}", added, f"{p99:.0f}", f"{fb:.0f}",
             f"{a100:.0f}", f"{s100:.2f}", "-" if math.isnan(a1000) else f"{a1000:.0f}",
             "-" if math.isnan(s1000) else f"{s1000:.2f}", "-" if math.isnan(idle) else f"{idle:.1f}",
             "-" if math.isnan(cpu) else f"{cpu:.2f}", "-" if math.isnan(kept) else f"{kept:.1f}"]
    print("| " + " | ".join(cells) + " |")
EOF
