#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for Mafalda SFU (idempotent: fast when done).
#
#   bash scripts/setup.sh          set up, then start the demo video room
#   bash scripts/setup.sh --no-run set up only (the test command uses this)
#
# Steps: Debian packages (worker build deps, chromium for the browser tests),
# the mediasoup-worker build (cached under ~/.cache/mafalda, built once),
# Prometheus's binaries for the /metrics tests (unpacked into the same cache), a
# virtualenv in .venv with the package installed editable plus the development
# tools, the demo page's bundle (mediasoup-client from npm, esbuild).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
run_main=1
[[ "${1:-}" == "--no-run" ]] && run_main=0

say() { echo "setup: $*" >&2; }

need_apt=()
for pkg in python3-venv; do
	dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if ((${#need_apt[@]})); then
	if python3 -m venv --help >/dev/null 2>&1; then
		need_apt=()  # this python (pyenv, for instance) has venv already
	fi
fi
if ((${#need_apt[@]})); then
	say "installing ${need_apt[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Debian's chromium for the demo's browser tests (Playwright drives it, no browser
# download), npm for its browser bundle, redis-server for the cluster tests.
need_demo=()
[[ -x /usr/bin/chromium ]] || need_demo+=(chromium)
command -v npm >/dev/null 2>&1 || need_demo+=(nodejs npm)
# Redis for mafalda.horizontal's tests (started by the tests themselves).
[[ -x /usr/bin/redis-server ]] || need_demo+=(redis-server)
if ((${#need_demo[@]})); then
	say "installing ${need_demo[*]}"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_demo[@]}" >/dev/null
fi

say "mediasoup-worker"
bash scripts/build-worker.sh >/dev/null

# Prometheus and promtool (Debian's, unpacked into the cache: no service) for the
# tests that scrape the monitor's /metrics.
say "prometheus"
bash scripts/fetch-prometheus.sh >/dev/null

if [[ ! -x .venv/bin/python ]]; then
	say "creating .venv"
	python3 -m venv .venv
fi
stamp=.venv/.mafalda-installed
# Reinstalling also rebuilds the C extension: when its source changes too.
stale=0
for f in pyproject.toml setup.py src/mafalda/mediasoup/_cfastfbs.c; do
	[[ "$f" -nt "$stamp" ]] && stale=1
done
if [[ ! -f "$stamp" || $stale == 1 ]]; then
	say "installing mafalda-sfu (editable) and dev tools into .venv"
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	touch "$stamp"
fi

say "demo bundle"
bash scripts/build-demo.sh

if ((run_main)); then
	say "starting the demo room (Ctrl-C to stop)"
	exec .venv/bin/mafalda demo
fi
