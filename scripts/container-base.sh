#!/usr/bin/env bash
# Builds the two base images the Dockerfile needs, locally, because no image registry is
# reachable here: a Debian bookworm runtime (debootstrap) and a Rust builder (the same plus
# gcc and this machine's Rust toolchain). Idempotent: existing images are kept.
# Prints the build args to pass to `podman build`.
set -euo pipefail
CACHE=${FUNKREC_CONTAINER_CACHE:-/var/cache/funkrec}
# The Debian mirror this machine's apt uses (deb822 sources first, then the one-line
# format), the non-security entry; DEBIAN_MIRROR overrides it.
host_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
         $0 !~ /Suites:[^\n]*-security/ {
           for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); print a[2]; exit }
         }' "$f" | head -n 1
    return
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    awk '$1 == "deb" && $0 !~ /-security/ {
           for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit }
         }' "$f" | head -n 1
  done | head -n 1
}
MIRROR=${DEBIAN_MIRROR:-$(host_mirror)}
if [ -z "$MIRROR" ]; then
  echo "container-base.sh: no Debian mirror found in /etc/apt sources; set DEBIAN_MIRROR" >&2
  exit 1
fi
RUNTIME_IMAGE=localhost/funkrec-base/debian:bookworm-slim
RUST_IMAGE=localhost/funkrec-base/rust:bookworm-2
PODMAN=(podman --runtime runc)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$(dirname "$0")/containers.conf}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need podman || ! need runc || ! need debootstrap; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
mkdir -p "$CACHE"

has_image() { "${PODMAN[@]}" image exists "$1"; }

if ! has_image "$RUNTIME_IMAGE"; then
  rootfs="$CACHE/rootfs-runtime"
  if [ ! -x "$rootfs/bin/sh" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=ca-certificates bookworm "$rootfs" "$MIRROR" >&2
  fi
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import --change 'CMD ["/bin/bash"]' - "$RUNTIME_IMAGE" >&2
fi

if ! has_image "$RUST_IMAGE"; then
  rootfs="$CACHE/rootfs-rust"
  if [ ! -x "$rootfs/usr/bin/gcc" ]; then
    rm -rf "$rootfs"
    debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,pkg-config bookworm "$rootfs" "$MIRROR" >&2
  fi
  toolchain=$(rustc --print sysroot)
  rm -rf "$rootfs/usr/local/rust"
  cp -a "$toolchain" "$rootfs/usr/local/rust"
  rm -rf "$rootfs/usr/local/rust/share/doc"
  # Trust what this machine trusts (its package traffic may pass a TLS-inspecting proxy).
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  tar -C "$rootfs" -c . | "${PODMAN[@]}" import \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'CMD ["/bin/bash"]' - "$RUST_IMAGE" >&2
fi

echo "--build-arg RUNTIME_IMAGE=$RUNTIME_IMAGE --build-arg RUST_IMAGE=$RUST_IMAGE"
