#!/usr/bin/env bash
# Build mediasoup-worker once, into the cache: the recipe ships inside the package
# (src/mafalda/mediasoup/worker_build/, also run by `mafalda build-worker`), so a
# pip-installed mafalda-sfu builds the same worker as this repository does.
#
#   scripts/build-worker.sh [--force]    prints the worker binary's path
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src/mafalda/mediasoup/worker_build/build-worker.sh" "$@"
