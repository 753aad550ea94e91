#!/usr/bin/env bash
# A Debian 13 (trixie) root with Open MPI 5 + ULFM, for building and testing Phoenix there.
#
#   ulfm_root.sh ensure            build the root if missing or incomplete (idempotent)
#   ulfm_root.sh run CMD...        run CMD inside the root (cwd: the project, mounted at /phoenix)
#   ulfm_root.sh path              print the root's path
#
# The root lives in $PHX_ULFM_ROOT (default /var/lib/phoenix/trixie-ulfm). It is complete when
# its marker file exists (written last, after every package installed). Only Debian packages are
# fetched (debootstrap + apt inside the root). /proc, /sys, /dev, /dev/shm, /run/netns and the
# project are mounted for `run` and unmounted again on every exit path (trap), in reverse order.
# Needs root. Exit 3 when the root cannot be had (no root user, no network to Debian's registry,
# debootstrap failed), with a one-line message. Inside, Open MPI's TCP traffic is kept on loopback
# (OMPI_MCA_btl_tcp_if_include=lo: with every interface of this machine 5.0.7 found "no reachable
# pairing" between its own addresses).
set -euo pipefail
ROOT=${PHX_ULFM_ROOT:-/var/lib/phoenix/trixie-ulfm}
MIRROR=${PHX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
PROJECT=$(cd "$(dirname "$0")/../.." && pwd)
MARKER=$ROOT/.phoenix-root-complete
PKGS="openmpi-bin libopenmpi-dev g++ cmake make pkg-config libhdf5-dev hdf5-tools libcli11-dev \
libdnnl-dev zlib1g-dev libgtest-dev libbenchmark-dev dataset-fashion-mnist procps iproute2 \
python3 python3-numpy util-linux"
# Bump when PKGS changes: an older root is completed (apt-get install of the new list).
ROOT_VERSION=1

die() { echo "ulfm_root: $*" >&2; exit 3; }

ensure() {
  [ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts); run as root or skip the ulfm tests"
  if [ -f "$MARKER" ] && [ "$(cat "$MARKER")" = "$ROOT_VERSION" ]; then
    return 0
  fi
  if ! command -v debootstrap >/dev/null; then
    echo "ulfm_root: installing debootstrap" >&2
    DEBIAN_FRONTEND=noninteractive timeout 300 apt-get install -y -qq debootstrap >/dev/null 2>&1 \
      || { timeout 300 apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive \
           timeout 300 apt-get install -y -qq debootstrap >/dev/null 2>&1; } \
      || die "cannot install debootstrap from Debian's registry (no network?); the Open MPI 5 root cannot be built"
  fi
  if [ ! -x "$ROOT/usr/bin/apt-get" ]; then
    echo "ulfm_root: debootstrap trixie into $ROOT (about a minute)" >&2
    rm -rf "$ROOT.partial"
    mkdir -p "$(dirname "$ROOT")"
    timeout 900 debootstrap --variant=minbase trixie "$ROOT.partial" "$MIRROR" \
      > "$(dirname "$ROOT")/debootstrap.log" 2>&1 \
      || { rm -rf "$ROOT.partial"; die "debootstrap of Debian 13 failed or timed out (log: $(dirname "$ROOT")/debootstrap.log); check access to $MIRROR"; }
    rm -rf "$ROOT"
    mv "$ROOT.partial" "$ROOT"
  fi
  echo "ulfm_root: installing the build packages inside the root" >&2
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  with_mounts chroot "$ROOT" sh -c "export DEBIAN_FRONTEND=noninteractive; \
      timeout 900 apt-get update -qq && timeout 1800 apt-get install -y -qq --no-install-recommends $PKGS" \
      > "$(dirname "$ROOT")/apt.log" 2>&1 \
    || die "installing Open MPI 5 and the build packages in the Debian 13 root failed (log: $(dirname "$ROOT")/apt.log)"
  chroot "$ROOT" sh -c 'test -f /usr/include/x86_64-linux-gnu/openmpi/mpi-ext.h || find /usr -name mpi-ext.h | grep -q .' \
    || die "the Debian 13 root has no Open MPI mpi-ext.h after install"
  echo "$ROOT_VERSION" > "$MARKER"
}

MOUNTED=()
umount_all() {
  local i
  for ((i=${#MOUNTED[@]}-1; i>=0; i--)); do
    umount -l "${MOUNTED[$i]}" 2>/dev/null || true
  done
  MOUNTED=()
}
mnt() { # mnt SRC DST [opts...]
  local src=$1 dst=$2; shift 2
  mkdir -p "$dst"
  mount "$@" "$src" "$dst"
  MOUNTED+=("$dst")
}
with_mounts() {
  trap umount_all EXIT INT TERM
  mnt proc "$ROOT/proc" -t proc
  mnt /sys "$ROOT/sys" --rbind
  mount --make-rslave "$ROOT/sys"
  mnt /dev "$ROOT/dev" --rbind
  mount --make-rslave "$ROOT/dev"
  # /dev/shm is under /dev (rbind) already.
  if [ -d /run/netns ]; then
    mnt /run/netns "$ROOT/run/netns" --rbind
    mount --make-rslave "$ROOT/run/netns"
  fi
  mnt "$PROJECT" "$ROOT/phoenix" --rbind
  mount --make-rslave "$ROOT/phoenix"
  local rc=0
  "$@" || rc=$?
  umount_all
  trap - EXIT INT TERM
  return $rc
}

case "${1:-}" in
  ensure) ensure ;;
  path) echo "$ROOT" ;;
  run)
    shift
    [ -f "$MARKER" ] || die "the Open MPI 5 root $ROOT is not built (run: $0 ensure)"
    cmd="cd /phoenix && $*"
    with_mounts chroot "$ROOT" env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      HOME=/root OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
      OMPI_MCA_btl_tcp_if_include=lo TERM=dumb bash -c "$cmd"
    ;;
  *) echo "usage: $0 ensure | run CMD... | path" >&2; exit 2 ;;
esac
