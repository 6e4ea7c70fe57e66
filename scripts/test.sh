#!/usr/bin/env bash
# The whole test suite: setup (idempotent), lint, types, tests with coverage.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup.sh --no-run
.venv/bin/ruff check src tests bench examples
.venv/bin/ruff format --check src tests bench examples
.venv/bin/mypy
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q \
	--cov=mafalda --cov-branch --cov-report=term --cov-fail-under="$(cat .ci/coverage-floor)" "$@"
# The foundation, Mafalda and the remote client again on uvloop, the `mafalda` command's
# default loop (the servers that tests start as processes run on it already).
MAFALDA_TEST_LOOP=uvloop PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest -q -p no:cacheprovider \
	-k "not cluster" tests/test_worker.py tests/test_channel.py tests/test_router.py \
	tests/test_webrtc_server.py tests/test_webrtc_transport.py tests/test_plain_transport.py \
	tests/test_pipe_transport.py tests/test_producer.py tests/test_consumer.py \
	tests/test_data_producer.py tests/test_data_consumer.py tests/test_active_speaker_observer.py \
	tests/test_audio_level_observer.py tests/test_mafalda.py tests/test_remote.py tests/test_cli.py \
	tests/test_monitor.py tests/test_swarm.py
