#!/usr/bin/env bash
# A/B of two builds (or two settings) of the tunnel on benches/compare.sh's workloads, run
# interleaved A B B A A B … (the order flips each pair, so neither side always runs on the
# heels of the other) so that a drift of the machine hits both sides alike, then printed
# as min / median / max per side and the ratio B/A pair by pair.
#
#   benches/ab.sh A_BIN B_BIN
#     A_BIN, B_BIN: directories with tunnel-relay, tunnel-agent, tunnel-access and
#     tunnel-loadgen (a release build of each side: cargo build --release -p tunnel-examples
#     --bins -p tunnel-benches --bin tunnel-loadgen, into two target directories)
#
# Environment: PAIRS (5), ONLY ("tunnel-public tunnel-private"), BYTES (256 MiB per
# single-stream run), IDLE (1000), A_ENV / B_ENV (environment of each side's tunnel
# processes, e.g. B_ENV=TOKIO_WORKER_THREADS=1 to A/B a setting with A_BIN = B_BIN).
# Columns: MB/s of one stream; rtt p50 and p99 (µs); new connection to first byte (µs);
# MB/s over 100 and over 1000 connections; KiB of server RSS per idle connection; CPU
# seconds of the server process (the relay) per GiB of the single-stream transfers; its RSS
# (MiB) 15 s after the load ended, every connection closed.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { sed -n 2,18p "$0" >&2; exit 2; }
A_BIN=$(cd "$1" && pwd); B_BIN=$(cd "$2" && pwd)
PAIRS=${PAIRS:-5}
ONLY=${ONLY:-"tunnel-public tunnel-private"}
OUT=$(mktemp -d /tmp/tunnel-ab.XXXXXX)
for i in $(seq "$PAIRS"); do
  order="A B"; [ $((i % 2)) = 1 ] || order="B A"
  for side in $order; do
    if [ $side = A ]; then bin=$A_BIN env=${A_ENV:-}; else bin=$B_BIN env=${B_ENV:-}; fi
    echo "== pair $i/$PAIRS, side $side" >&2
    BIN=$bin TUNNEL_ENV=$env ROWS_OUT=$OUT/$side.$i.tsv ONLY=$ONLY RUNS=1 \
      BYTES=${BYTES:-268435456} IDLE=${IDLE:-1000} benches/compare.sh >/dev/null
  done
done
python3 - "$OUT" "$PAIRS" <<'PY'
import glob, math, statistics, sys
out, pairs = sys.argv[1], int(sys.argv[2])
cols = ["1 stream MB/s", "rtt p50 µs", "rtt p99 µs", "new conn µs", "100 conns MB/s",
        "1000 conns MB/s", "KiB/idle conn", "server CPU s/GiB", "server RSS after load MiB"]
idx = [1, 2, 3, 4, 5, 7, 9, 10, 11]
def rows(side, i):
    try:
        return {l.split("\t")[0]: l.rstrip("\n").split("\t") for l in open(f"{out}/{side}.{i}.tsv") if l.strip()}
    except FileNotFoundError:
        return {}
names = sorted({n for i in range(1, pairs + 1) for s in "AB" for n in rows(s, i)})
def mmm(v):
    v = [x for x in v if not math.isnan(x)]
    return "-" if not v else f"{min(v):.4g} / {statistics.median(v):.4g} / {max(v):.4g}"
print(f"{pairs} pairs, interleaved (A B, B A, …); each cell min / median / max")
print("| row | figure | A | B | B/A pair by pair |")
print("|---|---|---|---|---|")
for n in names:
    for c, k in zip(cols, idx):
        a = [float(rows("A", i)[n][k]) for i in range(1, pairs + 1) if n in rows("A", i)]
        b = [float(rows("B", i)[n][k]) for i in range(1, pairs + 1) if n in rows("B", i)]
        r = [y / x for x, y in zip(a, b) if x and not math.isnan(x) and not math.isnan(y)]
        print(f"| {n} | {c} | {mmm(a)} | {mmm(b)} | {mmm(r)} |")
PY
rm -rf "$OUT"
