#!/usr/bin/env bash
# Sets up the checkout, then runs every check and test: formatting, lint,
# type checks, and `deno test` over the whole tree. Extra arguments go to
# `deno test` (for example a path or --filter).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tasks/setup.sh
export PATH="$(pwd)/.tools/node_modules/.bin:$PATH"

echo "test: deno fmt --check"
deno fmt --check
echo "test: deno lint"
deno lint
echo "test: deno check"
deno check .

echo "test: deno test"
# Tests start real servers and namespaces, so they run with every
# permission; the roles they start get only their own (see
# services/runtime/permissions.ts).
if [ $# -gt 0 ]; then
  deno test --allow-all "$@"
else
  deno test --allow-all
fi
