#!/usr/bin/env bash
# Sets up the checkout and starts a single-machine Blackrock on embedded
# defaults: every role that exists, on loopback, with state under .data/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tasks/setup.sh
export PATH="$(pwd)/.tools/node_modules/.bin:$PATH"
exec deno task start "$@"
