#!/usr/bin/env bash
# Runs the demo: relay, device and access client in one process on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
# The relay's etcd client (tunnel-server) is generated from .proto files at build time.
scripts/ensure-protoc.sh
exec cargo run --quiet --release -p tunnel-examples --bin tunnel-demo -- "$@"
