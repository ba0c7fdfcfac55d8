# Helpers the namespace suites share (tests/netns, tests/cluster): result lines, processes
# in namespaces, bounded waits, and log timestamps. Sourced after PY, WORK and PIDS are set.
ok()   { echo "PASS: $*"; PASS=$((PASS+1)); }
bad()  { echo "FAIL: $*"; FAIL=$((FAIL+1)); }
measure() { echo "MEASURE $*"; echo "$*" >>"$WORK/measures"; }
inns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
now()  { echo "$EPOCHREALTIME"; }
# spawn NS LOG CMD...: runs CMD in NS in the background, logging to LOG; sets LAST_PID.
spawn() { local ns=$1 log=$2; shift 2; NO_COLOR=1 ip netns exec "$ns" "$@" >>"$log" 2>&1 & LAST_PID=$!; PIDS+=("$LAST_PID"); }
stop_pid() { kill "$1" 2>/dev/null; for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null; }

ms() { local t=${EPOCHREALTIME/./}; echo "${t:0:-3}"; }
# wait_for SECONDS CMD...: polls CMD every 100 ms until it succeeds; bounded in count and
# in time (a slow CMD does not stretch the bound).
wait_for() {
  local n=$(( $1 * 10 )) end=$(( $(ms) + $1 * 1000 )); shift
  for _ in $(seq "$n"); do
    "$@" >/dev/null 2>&1 && return 0
    [ "$(ms)" -ge "$end" ] && return 1
    sleep 0.1
  done
  return 1
}
# log_time FILE REGEX AFTER [NTH]: epoch of the NTH (default 1st) log line matching REGEX
# whose timestamp is after AFTER; empty if none.
log_time() {
  "$PY" - "$@" <<'PY'
import datetime, re, sys
path, pattern, after = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3])
nth = int(sys.argv[4]) if len(sys.argv) > 4 else 1
ansi = re.compile(r"\x1b\[[0-9;]*m")
for line in open(path, errors="replace"):
    line = ansi.sub("", line)
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if not m or not pattern.search(line):
        continue
    t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp()
    if t > after:
        nth -= 1
        if nth == 0:
            print(f"{t:.3f}"); break
PY
}
count_after() { # FILE REGEX AFTER -> number of matching lines after AFTER
  "$PY" - "$@" <<'PY'
import datetime, re, sys
path, pattern, after = sys.argv[1], re.compile(sys.argv[2]), float(sys.argv[3])
ansi = re.compile(r"\x1b\[[0-9;]*m"); n = 0
for line in open(path, errors="replace"):
    line = ansi.sub("", line)
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z", line)
    if m and pattern.search(line) and datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() > after:
        n += 1
print(n)
PY
}
secs() { "$PY" -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.2f}')" "$1" "$2"; }
lt() { "$PY" -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$1" "$2"; }
