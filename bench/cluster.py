"""Benchmark of a router spanning servers (mafalda.horizontal) against a local one.

Starts a redis-server and two ``mafalda serve --cluster`` processes on 127.0.0.2 and
127.0.0.3 (the test suite's helpers), then measures, local vs cluster:
- time to create (and close) a plain transport, the first one on a server apart (it
  also creates the worker's child router there);
- time from consume() to the first RTP packet at the consumer's socket while RTP flows
  into the producer: same server; across servers with a new pipe; across servers over
  a pipe already open;
- control-plane throughput: the scenarios of ``bench/run.py`` on a cluster router, as
  a ratio to a local router.

    .venv/bin/python bench/cluster.py [--runs 3] [--scale 0.2] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import run as bench  # bench/run.py: this script's folder is on sys.path

from mafalda import horizontal, mediasoup

HERE = Path(__file__).resolve().parent
OPUS_PT = 100
RTP: Any = {
    "codecs": [
        {"mimeType": "audio/opus", "payloadType": OPUS_PT, "clockRate": 48000, "channels": 2}
    ],
    "encodings": [{"ssrc": 7777}],
}
LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}


support = bench.load_path("mafalda_test_processes", HERE.parent / "tests" / "processes.py")


class _First(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.arrived = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223 and not self.arrived.done():
            self.arrived.set_result(time.perf_counter())


async def _feed(address: tuple[str, int], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    sock, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=address)
    seq = 0
    try:
        while not stop.is_set():
            sock.sendto(struct.pack("!BBHII", 0x80, OPUS_PT, seq, seq * 960, 7777) + bytes(80))
            seq = (seq + 1) & 0xFFFF
            await asyncio.sleep(0.002)
    finally:
        sock.close()


async def _first_packet(router: Any, producer: Any, **where: Any) -> float:
    """Seconds from consume() to the first RTP packet at a fresh socket."""
    loop = asyncio.get_running_loop()
    sock, first = await loop.create_datagram_endpoint(_First, local_addr=("127.0.0.1", 0))
    try:
        transport = await router.create_plain_transport(listen_info=LISTEN, **where)
        await transport.connect(ip="127.0.0.1", port=sock.get_extra_info("sockname")[1])
        start = time.perf_counter()
        await transport.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        async with asyncio.timeout(10):
            arrived: float = await first.arrived
        transport.close()
        return arrived - start
    finally:
        sock.close()


async def _latencies(router: Any, cluster: bool, runs: int) -> dict[str, float]:
    s1: Any = {"server": "s1"} if cluster else {}
    s2: Any = {"server": "s2"} if cluster else {}
    out: dict[str, float] = {}
    start = time.perf_counter()
    first = await router.create_plain_transport(listen_info=LISTEN, **s1)
    out["firstTransportMs"] = (time.perf_counter() - start) * 1000
    times = []
    for _ in range(runs * 20):
        start = time.perf_counter()
        transport = await router.create_plain_transport(listen_info=LISTEN, **s1)
        times.append(time.perf_counter() - start)
        transport.close()
    out["transportMs"] = statistics.median(times) * 1000
    send = await router.create_plain_transport(listen_info=LISTEN, comedia=True, **s1)
    producer = await send.produce(kind="audio", rtp_parameters=RTP)
    stop = asyncio.Event()
    feeder = asyncio.ensure_future(
        _feed((send.tuple["localAddress"], send.tuple["localPort"]), stop)
    )
    try:
        same = [await _first_packet(router, producer, **s1) for _ in range(runs)]
        out["firstPacketSameServerMs"] = statistics.median(same) * 1000
        if cluster:
            fresh = []
            for _ in range(runs):
                # Each run pipes anew: the previous consumer's close freed the pipe.
                await asyncio.sleep(0.05)
                fresh.append(await _first_packet(router, producer, **s2))
            out["firstPacketNewPipeMs"] = statistics.median(fresh) * 1000
            keep = await router.create_plain_transport(listen_info=LISTEN, **s2)
            await keep.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
            warm = [await _first_packet(router, producer, **s2) for _ in range(runs)]
            out["firstPacketOpenPipeMs"] = statistics.median(warm) * 1000
            keep.close()
    finally:
        stop.set()
        await feeder
    send.close()
    first.close()
    return out


async def main(runs: int, as_json: bool) -> int:
    redis = support.RedisProcess()
    redis.start()
    servers = support.start_servers(redis.url, [1, 2], heartbeat=0.5)
    worker = await mediasoup.create_worker(log_level="warn")
    results: dict[str, Any] = {"local": {}, "cluster": {}, "throughput": {}}
    try:
        cluster = await horizontal.connect(
            redis.url, token=support.TOKEN, worker_settings={"log_level": "warn"}
        )
        async with cluster:
            local_router = await worker.create_router(media_codecs=bench.MEDIA_CODECS)
            cluster_router = await cluster.create_router(media_codecs=bench.MEDIA_CODECS)
            results["local"] = await _latencies(local_router, False, runs)
            results["cluster"] = await _latencies(cluster_router, True, runs)
            for name, unit, label in bench.SCENARIOS:
                local_rates, cluster_rates = [], []
                for _ in range(runs):
                    local_rates.append(await bench.measure_rate(name, local_router))
                    cluster_rates.append(await bench.measure_rate(name, cluster_router))
                local_rate = statistics.median(local_rates)
                cluster_rate = statistics.median(cluster_rates)
                results["throughput"][name] = {
                    "label": label,
                    "unit": unit,
                    "local": local_rate,
                    "cluster": cluster_rate,
                    "ratio": cluster_rate / local_rate,
                }
    finally:
        worker.close()
        await worker.wait_closed()
        for server in servers:
            server.kill()
        redis.kill()
    if as_json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'latency':<34} {'local':>9} {'cluster':>9}")
    for key in ("firstTransportMs", "transportMs", "firstPacketSameServerMs"):
        print(f"{key:<34} {results['local'][key]:>7.2f}ms {results['cluster'][key]:>7.2f}ms")
    for key in ("firstPacketNewPipeMs", "firstPacketOpenPipeMs"):
        print(f"{key:<34} {'':>9} {results['cluster'][key]:>7.2f}ms")
    print(f"\n{'throughput':<34} {'local':>9} {'cluster':>9}  ratio")
    for row in results["throughput"].values():
        print(
            f"{row['label']:<34} {row['local']:>7.0f}/s {row['cluster']:>7.0f}/s"
            f"  {row['ratio']:.2f}"
        )
    return 0


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="scale the op counts")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    for count in ("RTT_COUNT", "PLAIN_COUNT", "CONCURRENT"):
        setattr(bench, count, max(1, int(getattr(bench, count) * args.scale)))
    return asyncio.run(main(args.runs, args.json))


if __name__ == "__main__":
    sys.exit(cli())
