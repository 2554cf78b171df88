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
# The runner's summary is repeated as a plain "tests: N passed, N failed"
# line, which CI reads whatever the runner.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
deno test --allow-all "$@" 2>&1 | tee "$log" || status=$?
summary=$(sed 's/\x1b\[[0-9;]*m//g' "$log" |
  grep -E '^(ok|FAILED) \| [0-9]+ passed' | tail -n 1)
passed=$(printf '%s\n' "$summary" | sed -nE 's/.*\| ([0-9]+) passed.*/\1/p')
failed=$(printf '%s\n' "$summary" | sed -nE 's/.*\| ([0-9]+) failed.*/\1/p')
if [ -n "$passed" ] && [ -n "$failed" ]; then
  echo "tests: $passed passed, $failed failed"
fi
exit "$status"
