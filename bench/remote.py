"""Control-plane benchmark through Remote Mediasoup: remote client on loopback vs local.

Runs the scenarios of ``bench/run.py`` (sequential dump round trips, plain transport
create+close, 200 concurrent WebRTC transports, 200 concurrent consumes) twice per run:
locally (``mafalda.mediasoup``) and through ``mafalda.remote.connect()`` to a
``mafalda serve`` process on 127.0.0.1 (``--in-process`` runs the server in this process
instead). Prints each scenario's median rate on both sides and the ratio remote/local
(goal: 0.7 or more).

    .venv/bin/python bench/remote.py [--runs 3] [--scale 0.2] [--only request_rtt,...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
from pathlib import Path

import run as bench  # bench/run.py: this script's folder is on sys.path

from mafalda import mediasoup
from mafalda.cli import loop_runner
from mafalda.remote import RemoteMediasoup, connect, serve

HERE = Path(__file__).resolve().parent
TOKEN = "bench-token"


processes = bench.load_path("mafalda_test_processes", HERE.parent / "tests" / "processes.py")


async def _start_server_process() -> tuple[asyncio.subprocess.Process, str]:
    result: tuple[asyncio.subprocess.Process, str] = await processes.spawn_serve(
        processes.serve_args(token=TOKEN)
    )
    return result


async def _local(name: str) -> float:
    worker = await mediasoup.create_worker(log_level="warn")
    try:
        router = await worker.create_router(media_codecs=bench.MEDIA_CODECS)
        return await bench.measure_rate(name, router)
    finally:
        worker.close()
        await worker.wait_closed()


async def _remote(name: str, url: str) -> float:
    client = await connect(url, token=TOKEN)
    assert isinstance(client, RemoteMediasoup)
    try:
        worker = await client.create_worker(log_level="warn")
        router = await worker.create_router(media_codecs=bench.MEDIA_CODECS)
        return await bench.measure_rate(name, router)
    finally:
        await client.aclose()


async def main(runs: int, names: list[str], in_process: bool) -> int:
    proc: asyncio.subprocess.Process | None = None
    if in_process:
        server = await serve(token=TOKEN)
        url = server.url
    else:
        proc, url = await _start_server_process()
    rows: list[tuple[str, str, float, float]] = []
    try:
        for name, unit, label in bench.SCENARIOS:
            if name not in names:
                continue
            local: list[float] = []
            remote: list[float] = []
            for _ in range(runs):
                local.append(await _local(name))
                remote.append(await _remote(name, url))
            rows.append((label, unit, statistics.median(local), statistics.median(remote)))
    finally:
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()
        else:
            await server.close()
    width = max(len(label) for label, *_ in rows)
    print(f"{'scenario':<{width}}  {'local':>12}  {'remote':>12}  ratio")
    ratios = []
    for label, unit, local_rate, remote_rate in rows:
        ratio = remote_rate / local_rate
        ratios.append(ratio)
        print(
            f"{label:<{width}}  {local_rate:>10.0f}/s  {remote_rate:>10.0f}/s  {ratio:.2f}"
            f"  ({unit})"
        )
    if ratios:
        print(f"geometric mean ratio: {statistics.geometric_mean(ratios):.2f} (goal >= 0.7)")
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="scale the op counts")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--in-process", action="store_true", help="server in this process")
    parser.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop of both sides (the server process gets it through MAFALDA_LOOP)",
    )
    args = parser.parse_args()
    os.environ["MAFALDA_LOOP"] = args.loop
    for count in ("RTT_COUNT", "PLAIN_COUNT", "CONCURRENT"):
        setattr(bench, count, max(1, int(getattr(bench, count) * args.scale)))
    names = [n for n in args.only.split(",") if n] or [n for n, _, _ in bench.SCENARIOS]
    return loop_runner(args.loop)(main(args.runs, names, args.in_process))


if __name__ == "__main__":
    sys.exit(cli())
