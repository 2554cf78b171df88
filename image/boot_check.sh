#!/usr/bin/env bash
# Boots an image made by image/build.sh in qemu (software emulation, no
# network device) with a fresh state disk, and checks that systemd starts
# the machine agent, that the agent makes its vat key on the state disk and
# listens. The image is attached read-only, as machines mount it.
#
#   bash image/boot_check.sh OUT_DIR/blackrock-root.img
#
# Needs qemu-system-x86 and e2fsprogs. Takes one to three minutes.
set -euo pipefail
image=${1:?usage: image/boot_check.sh IMAGE}
work=$(mktemp -d "${TMPDIR:-/tmp}/blackrock-boot.XXXXXX")
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

kernel=$(debugfs -R "ls -p /boot" "$image" 2>/dev/null |
  awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | sort | tail -n1)
[ -n "$kernel" ] || { echo "boot-check: no kernel in $image" >&2; exit 1; }
version=${kernel#vmlinuz-}
debugfs -R "dump /boot/$kernel $work/vmlinuz" "$image" 2>/dev/null
debugfs -R "dump /boot/initrd.img-$version $work/initrd" "$image" 2>/dev/null

# A fresh state disk: what provisioning writes, nothing else.
mkdir -p "$work/state"
echo "BLACKROCK_ADDRESS=127.0.0.1" >"$work/state/agent.env"
echo '{"machine": "vm1", "address": "127.0.0.1"}' >"$work/state/agent.json"
truncate -s 256M "$work/state.img"
mkfs.ext4 -q -L blackrock-state -d "$work/state" "$work/state.img"

echo "boot-check: booting $kernel"
qemu-system-x86_64 -accel tcg -m 1536 -smp 2 -nographic -no-reboot -nic none \
  -kernel "$work/vmlinuz" -initrd "$work/initrd" \
  -append "root=LABEL=blackrock-root ro console=ttyS0 panic=-1 \
systemd.journald.forward_to_console=1 systemd.show_status=1" \
  -drive "file=$image,format=raw,if=virtio,readonly=on" \
  -drive "file=$work/state.img,format=raw,if=virtio" \
  </dev/null >"$work/console.log" 2>&1 &
qemu_pid=$!

deadline=$((SECONDS + 300))
until grep -q '"event":"listening"' "$work/console.log"; do
  failures=$(grep -c '"event":"start-failed"\|"event":"config-invalid"' \
    "$work/console.log" || true)
  if ! kill -0 "$qemu_pid" 2>/dev/null || [ $SECONDS -ge $deadline ] ||
    [ "$failures" -ge 2 ]; then
    echo "boot-check: the agent did not start; console tail:" >&2
    tail -n 40 "$work/console.log" >&2
    exit 1
  fi
  sleep 2
done
grep -o '"event":"agent-booted"[^}]*}' "$work/console.log" | head -n1
kill "$qemu_pid"
wait "$qemu_pid" 2>/dev/null || true
qemu_pid=

# The vat key is on the state disk, private. The machine was cut off, not
# shut down, so the disk's journal is replayed before reading it.
e2fsck -fy "$work/state.img" >/dev/null 2>&1 || true
debugfs -R "stat /vat.key" "$work/state.img" 2>/dev/null |
  grep -q "Mode:  0600" || { echo "boot-check: no 0600 vat.key" >&2; exit 1; }
echo "boot-check: agent started, vat key made on the state disk"
