#!/usr/bin/env bash
# Refreshes the web console's vendored front-end libraries (services/gateway/console/vendor/)
# from the npm registry. The files are committed: neither the gateway nor its tests need
# Node.js. Change a version here, update its sha512 (`npm view <pkg>@<ver> dist.integrity`),
# and run `make console-vendor`.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=services/gateway/console/vendor
PACKAGES=(
  "preact 11.2.0 sha512-/HfHI/7N84e6GrWBJ3J280z3mLaRJiDcSvj/A+y/4AbLnND/1UlGHe1sR6oYuTGwId0nP7dqDU9OnLxMPZ7xBg=="
  "htm 3.1.1 sha512-983Vyg8NwUE7JkZ6NmOqpCZ+sh1bKv2iYTlUkzlWmA5JD2acKoxd4KVxbMmxX/85mtfdnDmTFoNKcg5DGAvxNQ=="
  "uplot 1.6.32 sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw=="
)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for entry in "${PACKAGES[@]}"; do
  read -r name version integrity <<<"$entry"
  tarball=$(cd "$work" && npm pack --silent "$name@$version")
  actual="sha512-$(openssl dgst -sha512 -binary "$work/$tarball" | base64 -w0)"
  [[ "$actual" == "$integrity" ]] || { echo "$name@$version: integrity $actual, expected $integrity" >&2; exit 1; }
  mkdir -p "$work/$name" && tar xzf "$work/$tarball" -C "$work/$name"
done
rm -rf "$VENDOR" && mkdir -p "$VENDOR"
# Source maps are not vendored; drop the comments that point at them.
strip_map() { sed '/^\/\/# sourceMappingURL=/d' "$1" > "$2"; }
strip_map "$work/preact/package/dist/preact.mjs" "$VENDOR/preact.mjs"
# The hooks import the bare name "preact"; a relative path needs no import map (and no inline script).
sed -e '/^\/\/# sourceMappingURL=/d' -e 's#from"preact"#from"./preact.mjs"#' "$work/preact/package/hooks/dist/hooks.mjs" >"$VENDOR/preact-hooks.mjs"
strip_map "$work/htm/package/dist/htm.mjs" "$VENDOR/htm.mjs"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$VENDOR/uPlot.iife.min.js"
cp "$work/uplot/package/dist/uPlot.min.css" "$VENDOR/uPlot.min.css"
{
  for entry in "${PACKAGES[@]}"; do
    read -r name version integrity <<<"$entry"
    printf '%s@%s %s\n\n' "$name" "$version" "$integrity"
    cat "$work/$name/package/LICENSE"*
    printf '\n\n'
  done
} > "$VENDOR/LICENSES.txt"
echo "vendored into $VENDOR:" && ls -l "$VENDOR"
