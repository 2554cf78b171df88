#!/usr/bin/env bash
# Generates TypeScript for every schema under proto/ into proto/gen/,
# mirroring the folder layout. Generated code is not committed; setup runs
# this. When any schema is newer than its output, all are compiled again,
# since a schema's output can depend on the schemas it imports.
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
# The standard RPC schemas come from libcapnp-dev, never copied into proto/:
# the RPC engine (services/rpc/) reads rpc.capnp and persistent.capnp.
for schema in rpc persistent; do
  installed="/usr/include/capnp/$schema.capnp"
  out="proto/gen/capnp/$schema.ts"
  if [ ! -f "$out" ] || [ "$installed" -nt "$out" ]; then
    mkdir -p proto/gen
    "$compiler" -I/usr/include --src-prefix=/usr/include -ots:proto/gen \
      "$installed" >/dev/null
    echo "codegen: $installed"
  fi
done
[ ${#changed[@]} -eq 0 ] && exit 0
mapfile -t changed < <(cd proto && find . -name '*.capnp' -not -path './gen/*' |
  sed 's|^\./||' | sort)
mkdir -p proto/gen
# Compiling from inside proto/ keeps the output paths relative to it, and
# -I. lets schemas import each other as "/sandstorm/grain.capnp".
(cd proto && "../$compiler" -I. --src-prefix= -ots:gen "${changed[@]}" \
  >/dev/null)
# capnp-es names imported schemas "./x.js" (or ".//a/x.js" for an absolute
# import); Deno resolves only real file names, so point them at the .ts
# files, relative to the importing file.
find proto/gen -name '*.ts' -not -path 'proto/gen/capnp/*' -print0 |
  xargs -0 perl -pi -MFile::Spec -MFile::Basename -e \
    's{from "\.//([^"]+)\.js"}{"from \"" . (File::Spec->abs2rel("proto/gen/$1",
      dirname($ARGV)) =~ s{^(?!\.)}{./}r) . ".ts\""}ge;
     s{from "(\.\.?/[^"]+)\.js"}{from "$1.ts"}g'
echo "codegen: ${changed[*]}"
