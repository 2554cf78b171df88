#!/usr/bin/env bash
# Generates TypeScript for every schema under proto/ into proto/gen/,
# mirroring the folder layout. Generated code is not committed; setup runs
# this, and it is rerun only for schemas newer than their output.
set -euo pipefail
cd "$(dirname "$0")/.."
compiler=node_modules/.bin/capnp-es
changed=()
while IFS= read -r schema; do
  rel=${schema#proto/}
  out="proto/gen/${rel%.capnp}.ts"
  if [ ! -f "$out" ] || [ "$schema" -nt "$out" ]; then
    changed+=("$rel")
  fi
done < <(find proto -name '*.capnp' -not -path 'proto/gen/*' | sort)
[ ${#changed[@]} -eq 0 ] && exit 0
mkdir -p proto/gen
# Compiling from inside proto/ keeps the output paths relative to it, and
# -I. lets schemas import each other as "/sandstorm/grain.capnp".
(cd proto && "../$compiler" -I. --src-prefix= -ots:gen "${changed[@]}" \
  >/dev/null)
echo "codegen: ${changed[*]}"
