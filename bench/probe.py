"""What the Monitor's probe costs a media server: one sample per heartbeat.

Creates ``routers`` x ``transports`` DirectTransports on one worker, each with a data
producer and a data consumer (and with ``--producers`` an audio producer; with
``--pipes`` that many idle PipeTransports per router: ends beyond the probe's cap of
2,000 are sorted, then left out), then times
``Probe.snapshot()`` (counting, no request; its CPU time too, which other processes on a
shared machine do not inflate as much), ``Probe.sample()`` (the same plus one CPU
request per worker) and the report's JSON (medians of ``repeat`` runs).

    .venv/bin/python bench/probe.py [--routers 1000] [--transports 5] [--producers]
        [--pipes 0]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable

from mafalda import mediasoup
from mafalda.monitor import Probe
from mafalda.monitor.stats import encode_stats

CODECS = [{"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}]


def _timed(call: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    started = clock()
    call()
    return clock() - started


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def _opus(ssrc: int) -> dict[str, object]:
    codec = {"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}
    return {"codecs": [codec], "encodings": [{"ssrc": ssrc}]}


async def main(routers: int, transports: int, repeat: int, producers: bool, pipes: int) -> None:
    probe = Probe()
    probe.start()
    worker = await mediasoup.create_worker(log_level="warn")
    try:
        for _ in range(routers):
            router = await worker.create_router(media_codecs=CODECS)
            for _ in range(transports):
                transport = await router.create_direct_transport()
                producer = await transport.produce_data()
                await transport.consume_data(data_producer_id=producer.id)
                if producers:
                    await transport.produce(kind="audio", rtp_parameters=_opus(1111))
            for _ in range(pipes):
                await router.create_pipe_transport(
                    listen_info={"protocol": "udp", "ip": "127.0.0.1"}
                )
        await probe.sample()
        # Medians: the machine is often shared (CI, other tests), a mean follows its noise.
        snapshot = _median([_timed(probe.snapshot) for _ in range(repeat)])
        cpu = _median([_timed(probe.snapshot, time.process_time) for _ in range(repeat)])
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            report = await probe.sample()
            times.append(time.perf_counter() - started)
        sample = _median(times)
        encode = _median([_timed(lambda: encode_stats(report)) for _ in range(repeat)])
        data = encode_stats(report)
        omitted = report["pipesOmitted"]
    finally:
        worker.close()
        await worker.wait_closed()
    print(
        f"{routers} routers x {transports} transports ({routers * transports} transports, "
        f"{2 * routers * transports} data producers and consumers"
        f"{f', {routers * transports} audio producers' if producers else ''}"
        f"{f', {routers * pipes} pipe ends ({omitted} omitted)' if pipes else ''}): "
        f"snapshot {snapshot * 1000:.2f} ms (CPU {cpu * 1000:.2f} ms), "
        f"sample {sample * 1000:.2f} ms, "
        f"JSON {encode * 1000:.2f} ms, report {len(data) / 1024:.0f} KiB"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", type=int, default=1000)
    parser.add_argument("--transports", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--producers", action="store_true", help="an audio producer each")
    parser.add_argument("--pipes", type=int, default=0, help="idle PipeTransports per router")
    args = parser.parse_args()
    asyncio.run(main(args.routers, args.transports, args.repeat, args.producers, args.pipes))


if __name__ == "__main__":
    cli()
