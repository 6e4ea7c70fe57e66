#!/usr/bin/env bash
# Build the browser bundle of `mafalda demo` (idempotent: fast when done).
#
#   bash scripts/build-demo.sh
#
# npm installs mediasoup-client and esbuild (versions pinned in
# src/mafalda/demo/web/package.json) into src/mafalda/demo/web/node_modules, then
# esbuild bundles src/mafalda/demo/web/app.js into src/mafalda/demo/static/build/demo.js.
# Both folders are build products, ignored by git. Needs Node.js and npm.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WEB="$ROOT/src/mafalda/demo/web"
OUT="$ROOT/src/mafalda/demo/static/build"
say() { echo "build-demo: $*" >&2; }

if ! command -v npm >/dev/null 2>&1; then
	say "npm is missing (apt-get install nodejs npm, or Node.js from elsewhere)"
	exit 1
fi

stamp="$WEB/node_modules/.mafalda-installed"
if [[ ! -f "$stamp" || "$WEB/package.json" -nt "$stamp" ]]; then
	say "npm install (mediasoup-client, esbuild)"
	# No lock file: package.json pins the versions. esbuild runs without its
	# postinstall step (its binary comes in the @esbuild/<platform> package).
	(cd "$WEB" && npm install --no-package-lock --ignore-scripts --no-audit --no-fund \
		--loglevel=error >/dev/null)
	touch "$stamp"
fi

bundle="$OUT/demo.js"
if [[ ! -f "$bundle" || -n "$(find "$WEB/app.js" "$WEB/package.json" "$stamp" -newer "$bundle" 2>/dev/null)" ]]; then
	say "bundling $bundle"
	mkdir -p "$OUT"
	"$WEB/node_modules/.bin/esbuild" "$WEB/app.js" --bundle --format=esm --target=es2020 \
		--minify --sourcemap --log-level=warning --outfile="$bundle"
fi
