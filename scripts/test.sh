#!/usr/bin/env bash
# Runs every test: formatting, lints (which also compile the benches), Rust unit +
# integration + doc tests, the namespace suites (NAT faults, the relay cluster on etcd),
# fuzzing, and the Python suite when the bindings exist. Same command locally and in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

echo "== tools the tests need (apt, only what is missing)"
# Idempotent and quiet: installs only the tools that are missing, where apt-get exists.
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for need in nft:nftables conntrack:conntrack sshd:openssh-server ssh:openssh-client \
              curl:curl ip:iproute2 tc:iproute2 xxd:xxd \
              etcd:etcd-server etcdctl:etcd-client \
              promtool:prometheus; do
    command -v "${need%%:*}" >/dev/null || missing+=("${need##*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1 \
      || echo "could not install ${missing[*]}; the suites that need them say SKIP"
  fi
fi

# The relay's etcd client (tunnel-server) is generated from .proto files at build time.
scripts/ensure-protoc.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
# Cargo builds the example binaries for their own tests (examples/tests/); the namespace
# suite and the Python tests below run them from target/debug, so build them explicitly.
cargo build --quiet -p tunnel-examples --bins
cargo test --workspace --quiet
# The workspace unifies features, so the tests above run tunnel-core on aws-lc-rs (the
# binaries' provider); the library's default provider, ring, gets its own run.
echo "== tunnel-core alone, on its default crypto provider (ring)"
cargo test --quiet -p tunnel-core --lib

echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet -p tunnel-core -p tunnel-server --no-deps

echo "== a device build stays lean (no HTTP server, database or etcd client in tunnel-core)"
heavy=$(cargo tree -p tunnel-core -e normal --prefix none | grep -E '^(axum|hyper|rusqlite|libsqlite3-sys|etcd-client|tonic) ' || true)
if [ -n "$heavy" ]; then
  echo "tunnel-core depends on server crates:"; echo "$heavy"; exit 1
fi

# The benches need no release build here: `cargo clippy --all-targets` above compiles
# (type-checks and lints) every bench target; they run with `cargo bench` and
# benches/compare.sh, never in this command (performance is not a test).

echo "== network faults in namespaces (real NAT, ssh, curl; skipped without root/netns)"
tests/netns/run.sh target/debug

echo "== relay cluster in namespaces (etcd, three relays; skipped without root/netns/etcd)"
tests/cluster/run.sh target/debug

echo "== fuzz targets (stable toolchain, 10 s each)"
fuzz/run.sh 10

if [ -f python/pyproject.toml ] && [ -d python/tests ]; then
  echo "== python tests"
  python3 -m venv .venv
  . .venv/bin/activate
  pip install --quiet "maturin>=1.9.4,<2" pytest pytest-timeout
  # Builds the tunnel-ffi extension (abi3) into .venv; the tests also drive the example
  # binaries built above (target/debug).
  (cd python && maturin develop --quiet --release)
  pytest -q python/tests
fi
echo "all tests passed"
