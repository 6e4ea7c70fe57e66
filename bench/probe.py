"""What the Monitor's probe costs a media server: one sample per heartbeat.

Creates ``routers`` x ``transports`` DirectTransports on one worker, each with a data
producer and a data consumer, then times ``Probe.snapshot()`` (counting, no request),
``Probe.sample()`` (the same plus one CPU request per worker) and the report's JSON.

    .venv/bin/python bench/probe.py [--routers 1000] [--transports 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from mafalda import mediasoup
from mafalda.monitor import Probe
from mafalda.monitor.stats import encode_stats

CODECS = [{"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}]


async def main(routers: int, transports: int, repeat: int) -> None:
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
        await probe.sample()
        started = time.perf_counter()
        for _ in range(repeat):
            probe.snapshot()
        snapshot = (time.perf_counter() - started) / repeat
        started = time.perf_counter()
        for _ in range(repeat):
            report = await probe.sample()
        sample = (time.perf_counter() - started) / repeat
        started = time.perf_counter()
        for _ in range(repeat):
            data = encode_stats(report)
        encode = (time.perf_counter() - started) / repeat
    finally:
        worker.close()
        await worker.wait_closed()
    print(
        f"{routers} routers x {transports} transports ({routers * transports} transports, "
        f"{2 * routers * transports} data producers and consumers): "
        f"snapshot {snapshot * 1000:.2f} ms, sample {sample * 1000:.2f} ms, "
        f"JSON {encode * 1000:.2f} ms, report {len(data) / 1024:.0f} KiB"
    )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routers", type=int, default=1000)
    parser.add_argument("--transports", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    asyncio.run(main(args.routers, args.transports, args.repeat))


if __name__ == "__main__":
    cli()
