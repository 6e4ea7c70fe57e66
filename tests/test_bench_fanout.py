"""Smoke test of bench/fanout.py, so that the fan-out benchmark cannot rot.

One short trial per setup with three consumers: the sender process streams, every
consumer forwards, the sinks count what the workers say they sent.
"""

from __future__ import annotations

import pytest

from .bench_modules import load_bench

fanout = load_bench("fanout")


@pytest.mark.parametrize("setup", ["plain", "mafalda"])
async def test_trial_reaches_every_consumer(setup: str) -> None:
    stream = fanout.Stream()
    async with fanout.running_sender(stream) as sender:
        trial = await fanout.run_trial(setup, 3, stream=stream, window=1.0, sender=sender)
    assert trial.setup == setup and trial.consumers == 3
    assert trial.sent == stream.rate  # one second of stream
    assert trial.producer_received > 0
    assert trial.max_loss < 0.5  # every consumer forwarded most of the window
    # The sinks counted exactly what the workers reported sending.
    assert trial.sink_loss == pytest.approx(trial.mean_loss, abs=1e-6)
    assert trial.harness_cpu_s >= 0 and trial.sender_cpu_s > 0
    assert sum(trial.worker_cpu_s.values()) > 0
    per_worker = trial.consumers_per_worker
    if setup == "plain":
        assert list(per_worker.values()) == [3]
    else:
        # Split over both workers: the producer's worker also sends the pipe's copy.
        assert sorted(per_worker.values()) == [1, 2]
        assert sum(trial.worker_packets_sent.values()) > 3 * trial.sent * (1 - trial.max_loss)
