"""Benchmark of streams across a swarm's entry points (mafalda.swarm.streams).

Starts two ``mafalda serve --swarm`` processes on 127.0.0.2 and 127.0.0.3; app A (a
Remote Mediasoup session of s1) produces opus-like RTP, app B (a session of s2, a
different entry point) consumes it by id. Measures the time from consume() to the first
RTP packet at the consumer's socket:
- through the same entry point (A's own router: mafalda.remote's cost alone);
- through the other entry point, onto a router with no copy yet (the find, both pipe
  transports, their connect, the pipe consumer and the copy);
- through the other entry point, with the copy there (a consume like any other);
and the time of a find alone (a consume of an id that no server has).

There is no Node.js reference for this (mediasoup has no swarm); bench/cluster.py's
"first packet, other server, new pipe" is the closest figure (a ClusterRouter's pipe,
set up by the client instead of the servers).

    .venv/bin/python bench/swarm.py [--runs 5] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cluster as cluster_bench  # bench/cluster.py: this script's folder is on sys.path
import run as bench

from mafalda import remote

HERE = Path(__file__).resolve().parent
support = bench.load_path("mafalda_test_processes", HERE.parent / "tests" / "processes.py")
LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}


async def _start(index: int, *seeds: str) -> tuple[Any, str]:
    command = support.serve_args(
        *["--host", f"127.0.0.{index + 1}", "--server-id", f"s{index}", "--heartbeat", "0.5"],
        # As in production: the servers' own secret, the apps' token kept out of streams.
        *["--peer-token", "bench-peers", "--swarm", *seeds],
    )
    proc, url = await support.spawn_serve(command)
    return proc, url


async def _router(worker: Any) -> Any:
    return await worker.create_router(media_codecs=bench.MEDIA_CODECS)


async def main(runs: int, as_json: bool) -> int:
    procs: list[Any] = []
    results: dict[str, float] = {}
    try:
        proc1, url1 = await _start(1)
        procs.append(proc1)
        proc2, url2 = await _start(2, url1)
        procs.append(proc2)
        a = await remote.connect(url1, token=support.TOKEN)
        b = await remote.connect(url2, token=support.TOKEN)
        try:
            router_a = await _router(await a.create_worker(log_level="warn"))
            # The swarm knows both once s2 has gossiped once with its seed (at its start).
            worker_b = await b.create_worker(log_level="warn")
            send = await router_a.create_plain_transport(listen_info=LISTEN, comedia=True)
            producer = await send.produce(kind="audio", rtp_parameters=cluster_bench.RTP)
            stop = asyncio.Event()
            feeder = asyncio.ensure_future(
                cluster_bench._feed((send.tuple["localAddress"], send.tuple["localPort"]), stop)
            )
            try:
                same = [await cluster_bench._first_packet(router_a, producer) for _ in range(runs)]
                fresh = []
                for _ in range(runs):
                    router_b = await _router(worker_b)  # no copy there yet
                    fresh.append(await cluster_bench._first_packet(router_b, producer))
                warm_router = await _router(worker_b)
                keep = await warm_router.create_direct_transport()
                await keep.consume(
                    producer_id=producer.id, rtp_capabilities=warm_router.rtp_capabilities
                )
                warm = [
                    await cluster_bench._first_packet(warm_router, producer) for _ in range(runs)
                ]
                finds = []
                probe = await warm_router.create_direct_transport()
                for _ in range(runs):
                    start = time.perf_counter()
                    try:
                        await probe.consume(
                            producer_id="nobody-has-this",
                            rtp_capabilities=warm_router.rtp_capabilities,
                        )
                    except Exception:  # mediasoup's own "not found", after the find
                        finds.append(time.perf_counter() - start)
            finally:
                stop.set()
                await feeder
            results = {
                "firstPacketSameEntryMs": statistics.median(same) * 1000,
                "firstPacketOtherEntryNewPipeMs": statistics.median(fresh) * 1000,
                "firstPacketOtherEntryCopyThereMs": statistics.median(warm) * 1000,
                "findNowhereMs": statistics.median(finds) * 1000,
            }
        finally:
            await a.aclose()
            await b.aclose()
            await asyncio.sleep(0.5)  # the servers tell each other of the pipes closed
    finally:
        for proc in reversed(procs):  # s2 first: it has nothing left to tell s1 then
            if proc.returncode is None:
                proc.kill()
            await support.reap(proc)
    if as_json:
        print(json.dumps(results, indent=2))
        return 0
    labels = {
        "firstPacketSameEntryMs": "first packet, same entry point",
        "firstPacketOtherEntryNewPipeMs": "first packet, other entry, new pipe",
        "firstPacketOtherEntryCopyThereMs": "first packet, other entry, copy there",
        "findNowhereMs": "consume of an id nobody has",
    }
    for key, label in labels.items():
        print(f"{label:<40} {results[key]:>7.2f} ms")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    return asyncio.run(main(args.runs, args.json))


if __name__ == "__main__":
    sys.exit(cli())
