#!/usr/bin/env bash
# Builds every fuzz target with libFuzzer's coverage instrumentation on the stable toolchain
# (the same LLVM flags cargo-fuzz passes, minus the sanitizer) and runs each for N seconds
# (default 10), starting from a small seed corpus. Exit status is non-zero on any crash.
# Usage: fuzz/run.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-10}
flags="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
flags="$flags -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table"
flags="$flags -Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the instrumentation off build scripts (as cargo-fuzz does).
host=$(rustc -vV | sed -n 's/^host: //p')
# Its own target dir (the fuzz crate is its own workspace), whatever the caller exports.
export CARGO_TARGET_DIR=$PWD/target
RUSTFLAGS="$flags" cargo build --quiet --release --bins --target "$host"
seed() { mkdir -p "corpus/$1"; printf '%s' "$2" | xxd -r -p >"corpus/$1/$3"; }
# Seeds: protocol test vectors from PROTOCOL.md (hello, open, status, device list).
seed handshake 00160101010002746b027069010373736801037373684e36 device-hello
seed handshake 000a0101020002746b000000 access-hello
seed header 00081002706903737368 open
seed header 000412040178 status
seed header 000c140001027069010103737368 device-list
mkdir -p corpus/grants corpus/yamux_meter corpus/mux_frames
printf 'pi-42/ssh,lab-*/*,*/web\npi-42/ssh\nlab-1/x\npi-43/web\n' >corpus/grants/seed
printf '\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x02hi\x00\x01\x00\x00\x00\x00\x00\x03\x00\x00\x00\x00' >corpus/yamux_meter/seed
# A stream opened with bytes, a ping, a window update with FIN and ACK, a reset.
printf '\x22\x00\x00\x00\x01\x00\x00\x00\x01\x00\x00\x00\x02hi\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x03\x00\x01\x00\x06\x00\x00\x00\x01\x00\x00\x00\x05\x00\x01\x00\x08\x00\x00\x00\x01\x00\x00\x00\x00' >corpus/mux_frames/seed
mkdir -p artifacts
for t in handshake header grants yamux_meter mux_frames; do
  log="target/fuzz-$t.log"
  if ! "target/$host/release/$t" -max_total_time="$secs" -max_len=4200 -artifact_prefix="artifacts/$t-" \
      "corpus/$t" >"$log" 2>&1; then
    tail -30 "$log"; echo "FAIL: fuzz target $t crashed (input saved under fuzz/artifacts)"; exit 1
  fi
  echo "fuzz $t: $(grep -Eo 'Done [0-9]+ runs in [0-9]+ second\(s\)' "$log" || tail -1 "$log")"
done
