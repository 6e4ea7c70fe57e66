#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for Mafalda SFU (idempotent: fast when done).
#
#   bash scripts/setup.sh          set up, then run the main example
#   bash scripts/setup.sh --no-run set up only (the test command uses this)
#
# Steps: Debian packages, the mediasoup-worker build (cached under
# ~/.cache/mafalda, built once), a virtualenv in .venv with the package
# installed editable plus the development tools.
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

say "mediasoup-worker"
bash scripts/build-worker.sh >/dev/null

if [[ ! -x .venv/bin/python ]]; then
	say "creating .venv"
	python3 -m venv .venv
fi
stamp=.venv/.mafalda-installed
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
	say "installing mafalda-sfu (editable) and dev tools into .venv"
	.venv/bin/pip install -q --upgrade pip
	.venv/bin/pip install -q -e '.[dev]'
	touch "$stamp"
fi

if ((run_main)); then
	say "running the example"
	exec .venv/bin/python examples/quickstart.py
fi
