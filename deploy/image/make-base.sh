#!/usr/bin/env bash
# Makes the image the Dockerfile builds FROM on a machine that reaches Debian's mirror but no container
# registry: a debootstrap of Debian 12 (bookworm, minbase) with python3.11, python3-venv and ca-certificates,
# imported into podman as $CANARYD_BASE_IMAGE (default localhost/canaryd-base:bookworm-py3.11).
#
# The root filesystem is cached as a tarball (/var/cache/canaryd as root, else ~/.cache/canaryd), keyed by
# the suite and package list: the first run takes a few minutes, later runs seconds (nothing at all when the
# image is still in podman's storage). Needs root, debootstrap and podman (scripts/setup.sh installs them).
# Prints the image name on its last line.
set -euo pipefail

SUITE=bookworm
PACKAGES=python3.11,python3-venv,ca-certificates
MIRROR=${CANARYD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=${CANARYD_BASE_IMAGE:-localhost/canaryd-base:bookworm-py3.11}
PODMAN=(podman --cgroup-manager=cgroupfs --events-backend=file --runtime=runc)

if [[ $(id -u) -eq 0 ]]; then
  CACHE=${CANARYD_IMAGE_CACHE:-/var/cache/canaryd}
else
  CACHE=${CANARYD_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/canaryd}
fi
# Bump the trailing number when the way the root filesystem is made changes.
KEY=$(printf '%s|%s|%s' "$SUITE" "$PACKAGES" 1 | sha256sum | cut -c1-12)
TARBALL=$CACHE/base-$SUITE-$KEY.tar

log() { echo "make-base: $*" >&2; }

have_image() {
  [[ $("${PODMAN[@]}" image inspect --format '{{index .Labels "org.canaryd.base-key"}}' "$IMAGE" 2>/dev/null) == "$KEY" ]]
}

mkdir -p "$CACHE"
# One maker at a time per machine (test runs in parallel share the cache); the others wait, then find it.
exec 9>"$CACHE/make-base.lock"
flock 9

if have_image; then
  log "$IMAGE is present (key $KEY)"
  echo "$IMAGE"
  exit 0
fi

for tool in debootstrap podman; do
  command -v "$tool" >/dev/null || {
    log "$tool is not installed: apt-get install -y podman runc debootstrap (scripts/setup.sh does this)"
    exit 1
  }
done

if [[ ! -f $TARBALL ]]; then
  [[ $(id -u) -eq 0 ]] || { log "debootstrap needs root"; exit 1; }
  rootfs=$(mktemp -d "$CACHE/rootfs.XXXXXX")
  trap 'rm -rf "$rootfs" "$TARBALL.part"' EXIT
  log "debootstrap $SUITE ($PACKAGES) from $MIRROR; a few minutes, once"
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  # What an image does not need: package caches and lists, documentation, manual pages.
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/var/log/*.log \
    "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/lib/dpkg/*-old
  tar --numeric-owner --xattrs -C "$rootfs" -cf "$TARBALL.part" .
  mv "$TARBALL.part" "$TARBALL"
  rm -rf "$rootfs"
  trap - EXIT
fi

log "importing $TARBALL as $IMAGE"
"${PODMAN[@]}" import --quiet \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL org.canaryd.base-key=$KEY" \
  --change 'CMD ["/bin/bash"]' \
  "$TARBALL" "$IMAGE" >/dev/null
echo "$IMAGE"
