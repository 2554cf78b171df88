#!/usr/bin/env bash
# Brings a checkout to a working state on a fresh Debian 12 machine:
# Debian packages, Deno (pinned, into .tools/), npm packages, the C shims
# and the generated Cap'n Proto code. Safe to re-run: each step is skipped
# when what it would produce is already there and current.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

DENO_VERSION=2.9.6

# Debian packages. The servers are here because the tests start real ones.
packages=(
  build-essential pkg-config capnproto libcapnp-dev libsodium-dev xz-utils
  openssl iproute2 nftables e2fsprogs fuse3 bubblewrap
  ceph-mon ceph-osd radosgw
  slapd ldap-utils
  nginx-light
  libnbd-bin nbdkit qemu-utils fio
  debootstrap qemu-system-x86
  chromium
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
    missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  # Installing slapd must not prompt; its default database is not used.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
    --no-install-recommends "${missing[@]}" >/dev/null
  # Services the packages start on their own are not ours: tests start
  # their own instances on loopback.
  for s in slapd nginx ceph-mon.target ceph-osd.target ceph-radosgw.target; do
    $sudo systemctl disable --now "$s" >/dev/null 2>&1 || true
  done
fi

# Deno, from the npm package, kept out of the project's package.json so
# that its binary never shadows `deno` inside `deno task`.
deno="$root/.tools/node_modules/.bin/deno"
if ! "$deno" --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
  echo "setup: installing deno $DENO_VERSION into .tools/"
  mkdir -p .tools
  printf '{"private":true,"dependencies":{"deno":"%s"}}\n' "$DENO_VERSION" \
    >.tools/package.json
  (cd .tools && npm install --no-audit --no-fund --loglevel=error >/dev/null)
fi

# npm packages, reinstalled only when the lock file changed.
stamp=node_modules/.blackrock-lock
if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
  cp package-lock.json "$stamp"
fi

make -s -C ffi
make -s -C tests/fixtures/impair_switch
bash tasks/codegen.sh
echo "setup: done (deno at $deno)"
