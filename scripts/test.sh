#!/usr/bin/env bash
# Runs every test: formatting, lints, Rust unit + integration + doc tests, benches compile,
# and the Python suite when the bindings exist. Same command locally and in CI (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings

echo "== cargo test"
# The integration tests start the example binaries; build them first.
cargo build --quiet -p tunnel-examples --bins
cargo test --workspace --quiet

echo "== docs"
RUSTDOCFLAGS="-D warnings" cargo doc --quiet -p tunnel-core --no-deps

echo "== benches compile"
cargo bench --workspace --no-run --quiet

if [ -f python/pyproject.toml ] && [ -d python/tests ]; then
  echo "== python tests"
  python3 -m venv .venv
  . .venv/bin/activate
  pip install --quiet "maturin>=1.9.4,<2" pytest
  (cd python && maturin develop --quiet --release)
  pytest -q python/tests
fi
echo "all tests passed"
