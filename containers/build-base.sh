#!/usr/bin/env bash
# Makes a Debian bookworm base image from Debian's own packages, for a machine that reaches Debian's
# package mirror but no container registry, then builds containers/Containerfile on it:
#
#   containers/build-base.sh [ROOTFS] [MIRROR]       # as root; needs debootstrap and buildah
#
# ROOTFS: the folder debootstrap fills (default /tmp/arepas-rootfs, about 200 MB); MIRROR: the
# Debian mirror, by default the first one apt uses here. The image is localhost/debian-bookworm;
# then, from the repository root:
#
#   buildah --storage-driver vfs bud --pull=never --isolation chroot \
#       --build-arg BASE=localhost/debian-bookworm -f containers/Containerfile -t localhost/arepas .
set -euo pipefail
rootfs=${1:-/tmp/arepas-rootfs}
mirror=${2:-$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null ||
    awk '/^deb / {print $2; exit}' /etc/apt/sources.list)}
[[ -x $rootfs/usr/bin/apt-get ]] || debootstrap --variant=minbase bookworm "$rootfs" "$mirror"
container=$(buildah --storage-driver vfs from scratch)
cp -a "$rootfs"/. "$(buildah --storage-driver vfs mount "$container")"/
buildah --storage-driver vfs commit --rm "$container" localhost/debian-bookworm
