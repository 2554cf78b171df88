#!/usr/bin/env bash
# Builds the Blackrock machine image: a Debian bookworm root filesystem made
# with debootstrap, holding Deno, the Blackrock code and the systemd units
# of image/units/, packed as an ext4 file that machines mount read-only.
#
#   bash image/build.sh OUT_DIR [SIZE_MIB]
#
# Produces OUT_DIR/blackrock-root.img (label blackrock-root) and
# OUT_DIR/blackrock-root.manifest (packages and the code's commit). Machines
# keep everything that changes on a second disk labelled blackrock-state,
# mounted at /var/lib/blackrock (see image/README.md). Needs root (for
# debootstrap's chroot) and Debian's mirror, as configured for apt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: image/build.sh OUT_DIR [SIZE_MIB]}
size_mib=${2:-2048}
suite=bookworm
mirror=${BLACKROCK_MIRROR:-$(sed -n 's/^URIs: *//p' \
  /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
mirror=${mirror:-http://deb.debian.org/debian}
deno=.tools/node_modules/.bin/deno
[ -x "$deno" ] || { echo "build: run tasks/setup.sh first (no $deno)" >&2; exit 1; }
[ -f ffi/build/libblackrock.so ] || make -C ffi >/dev/null

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/blackrock-image.XXXXXX")
cleanup() {
  for m in proc sys dev; do umount "$work/root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
root="$work/root"

# What the roles need at run time: systemd to start the agent, bubblewrap
# for grain sandboxes, nginx for the gateway, the NBD and FUSE pieces for
# grain volumes, libsodium for ffi/, and iproute2 to look at the network.
include=systemd,systemd-sysv,udev,iproute2,ca-certificates,bubblewrap
include+=,nginx-light,fuse3,nbd-client,libnbd-bin,libsodium23,e2fsprogs
include+=,openssl,kmod,linux-image-amd64
echo "build: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}

echo "build: Deno, code and units"
install -m 0755 "$(readlink -f "$deno")" "$root/usr/local/bin/deno"
mkdir -p "$root/opt/blackrock"
# The committed code only (no local edits, no .data/), plus what is built
# or installed outside git: node_modules, generated schemas, the FFI shim.
git archive --format=tar HEAD | tar -x -C "$root/opt/blackrock"
cp -a node_modules "$root/opt/blackrock/"
mkdir -p "$root/opt/blackrock/proto/gen" "$root/opt/blackrock/ffi/build"
cp -a proto/gen/. "$root/opt/blackrock/proto/gen/"
cp ffi/build/libblackrock.so "$root/opt/blackrock/ffi/build/"
install -m 0644 image/units/*.service "$root/etc/systemd/system/"
mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
# The gateway role runs its own nginx; the distribution's must not start.
rm -f "$root/etc/systemd/system/multi-user.target.wants/nginx.service"
ln -sf /etc/systemd/system/blackrock-agent.service \
  "$root/etc/systemd/system/multi-user.target.wants/blackrock-agent.service"

# Read-only root: everything that changes lives on the state disk or in
# memory. The journal is kept in memory too (roles' logs also go to the
# cluster's log sink).
mkdir -p "$root/var/lib/blackrock"
cat >"$root/etc/fstab" <<'FSTAB'
LABEL=blackrock-root   /                    ext4   ro,noatime            0 1
LABEL=blackrock-state  /var/lib/blackrock   ext4   rw,noatime,nofail     0 2
tmpfs                  /tmp                 tmpfs  mode=1777,nosuid      0 0
tmpfs                  /var/tmp             tmpfs  mode=1777,nosuid      0 0
tmpfs                  /var/log             tmpfs  mode=0755             0 0
FSTAB
mkdir -p "$root/etc/systemd/journald.conf.d"
printf '[Journal]\nStorage=volatile\n' \
  >"$root/etc/systemd/journald.conf.d/blackrock.conf"
echo blackrock >"$root/etc/hostname"
# The machine's identity is its vat key on the state disk, never the image:
# the image carries no machine ID, no SSH host key, no vat key.
: >"$root/etc/machine-id"
rm -f "$root"/etc/ssh/ssh_host_* 2>/dev/null || true

echo "build: packing ${size_mib} MiB ext4 image"
chroot "$root" dpkg-query -W -f='${Package} ${Version}\n' \
  >"$out/blackrock-root.manifest"
echo "blackrock $(git rev-parse HEAD)" >>"$out/blackrock-root.manifest"
rm -f "$out/blackrock-root.img"
mkfs.ext4 -q -L blackrock-root -d "$root" "$out/blackrock-root.img" \
  "${size_mib}M"
echo "build: $out/blackrock-root.img"
