#!/usr/bin/env bash
# Makes sure `protoc` is there: the etcd client crate (etcd-client, used by tunnel-server
# for relay clusters) compiles etcd's .proto files when it builds. Installs Debian's
# protobuf-compiler with apt-get when missing (as root); otherwise says what to install.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
if [ -n "${PROTOC:-}" ] || command -v protoc >/dev/null; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing protoc (apt: protobuf-compiler), needed to build the etcd client" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends protobuf-compiler; } >/dev/null 2>&1 || true
fi
command -v protoc >/dev/null && exit 0
echo "protoc not found: the build needs it for the etcd client." >&2
echo "Install it (Debian/Ubuntu: apt-get install protobuf-compiler; macOS: brew install protobuf)" >&2
echo "or point PROTOC at a protoc binary." >&2
exit 1
