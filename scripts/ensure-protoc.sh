#!/usr/bin/env bash
# Makes sure `protoc` and protobuf's well-known types (google/protobuf/*.proto) are there:
# the etcd client crate (etcd-client, used by tunnel-server for relay clusters) compiles
# etcd's .proto files, which import them, when it builds. Installs Debian's
# protobuf-compiler and libprotobuf-dev (the well-known types; apt treats them as a mere
# recommendation of protobuf-compiler) with apt-get when missing (as root); otherwise
# says what to install.
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
# protoc finds the well-known types beside itself (../include), in /usr/include, or where
# PROTOC_INCLUDE says.
have() {
  local protoc=${PROTOC:-protoc}
  command -v "$protoc" >/dev/null || return 1
  local dir; dir=$(dirname "$(readlink -f "$(command -v "$protoc")")")
  [ -f "$dir/../include/google/protobuf/descriptor.proto" ] ||
    [ -f /usr/include/google/protobuf/descriptor.proto ] ||
    [ -n "${PROTOC_INCLUDE:-}" ]
}
have && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing protoc and protobuf's well-known types (apt: protobuf-compiler," \
    "libprotobuf-dev), needed to build the etcd client" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends protobuf-compiler libprotobuf-dev; } >/dev/null 2>&1 || true
fi
have && exit 0
echo "protoc or protobuf's well-known types (google/protobuf/descriptor.proto) not found:" >&2
echo "the build needs them for the etcd client. Install them (Debian/Ubuntu: apt-get install" >&2
echo "protobuf-compiler libprotobuf-dev; macOS: brew install protobuf) or point PROTOC at a" >&2
echo "protoc binary and PROTOC_INCLUDE at its include directory." >&2
exit 1
