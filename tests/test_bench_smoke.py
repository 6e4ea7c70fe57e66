"""Smoke tests of the control-plane benchmarks (bench/run.py, bench/remote.py), so that
they cannot rot: each runs once, small, as a user runs it, and prints its figures.
(The Node side of bench/run.py needs npm and takes minutes: left to the benchmark.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import HAVE_REDIS

BENCH = Path(__file__).resolve().parent.parent / "bench"
SCENARIOS = ("request_rtt", "plain_create_close", "webrtc_concurrent", "consume_concurrent")


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_control_plane_benchmark_runs() -> None:
    figures = json.loads(_run(str(BENCH / "run.py"), "--python-only", "--runs", "1"))["python"]
    for scenario in SCENARIOS:
        assert figures[scenario] > 0 and len(figures[f"{scenario}_runs"]) == 1
    assert figures["rss_mb"] > 0 and figures["worker_rss_mb"] > 0


def test_remote_benchmark_prints_its_ratios() -> None:
    out = _run(str(BENCH / "remote.py"), "--runs", "1", "--scale", "0.02")
    rows = [line for line in out.splitlines() if "/s" in line]
    assert len(rows) == 4, out
    for row in rows:
        ratio = float(row.split()[-2])
        assert 0 < ratio < 10, row
    assert "geometric mean ratio: " in out and "(goal >= 0.7)" in out


@pytest.mark.skipif(not HAVE_REDIS, reason="redis-server is not installed")
def test_cluster_benchmark_runs() -> None:
    """bench/cluster.py starts its own Redis and two `mafalda serve --cluster`."""
    figures = json.loads(
        _run(str(BENCH / "cluster.py"), "--runs", "1", "--scale", "0.02", "--json")
    )
    assert figures["cluster"]["firstPacketNewPipeMs"] > 0
    assert figures["cluster"]["firstPacketOpenPipeMs"] > 0
    for scenario in SCENARIOS:
        assert figures["throughput"][scenario]["ratio"] > 0


def test_probe_benchmark_runs() -> None:
    out = _run(str(BENCH / "probe.py"), "--routers", "10", "--transports", "2", "--repeat", "2")
    assert out.startswith("10 routers x 2 transports") and "report" in out


def test_remote_ceiling_benchmark_prints_both_modes() -> None:
    """bench/remote_ceiling.py starts its relay and direct servers and drives real
    workers through both: each scenario's row has a rate and a ratio per mode."""
    out = _run(str(BENCH / "remote_ceiling.py"), "--runs", "1", "--scale", "0.02")
    header, *rows = out.splitlines()
    assert header.split()[-3:] == ["local", "relay", "direct"]
    assert len(rows) == 4, out
    for row in rows:
        cells = row.split()
        for ratio in (cells[-1], cells[-3]):
            assert 0 < float(ratio) < 10, row
        assert cells[-2].endswith("/s") and float(cells[-2][:-2]) > 0, row
