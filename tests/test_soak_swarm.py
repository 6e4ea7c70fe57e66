"""A swarm's servers keep nothing per stream they ever carried: rooms come and go on two
entry points (a new router on each per room), each room's consumer on one server takes
the producer of the other (a pipe pair, a copy), then everything closes; once the copies'
idle time passes, every map of the streams on both servers is empty again (pipes in and
out, copies, pairs, their locks, the copies being made)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda import remote
from mafalda.remote import RemoteServer
from mafalda.swarm import SwarmNode
from tests.processes import TOKEN
from tests.rtp_flow import MEDIA_CODECS, OPUS_RTP

ROUND = 0.1
PER_STREAM = (
    "_out",
    "_in",
    "_copies",
    "_carrying",
    "_pairs_in",
    "_pair_locks",
    "_pairs_out",
    "_bringing",
)


@pytest.fixture
async def pair_of_nodes() -> AsyncIterator[list[tuple[RemoteServer, SwarmNode]]]:
    made: list[tuple[RemoteServer, SwarmNode]] = []
    try:
        for i in range(2):
            server = await remote.serve(host=f"127.0.0.{i + 2}", token=TOKEN)
            node = SwarmNode(
                server,
                token=TOKEN,
                seeds=[made[0][0].url] if i else [],
                server_id=f"s{i + 1}",
                interval=ROUND,
                stream_idle=0.1,
            )
            made.append((server, node))
            await node.start()
        async with asyncio.timeout(10):
            while any(len(node.members) < 2 for _, node in made):
                await asyncio.sleep(ROUND)
        yield made
    finally:
        for _, node in made:
            await node.aclose()
        for server, _ in made:
            await server.close()


def _sizes(node: SwarmNode) -> dict[str, int]:
    streams: Any = node.streams
    return {f"{node.id}.{name}": len(getattr(streams, name)) for name in PER_STREAM}


async def test_a_swarm_keeps_nothing_per_stream_it_carried(
    pair_of_nodes: list[tuple[RemoteServer, SwarmNode]],
) -> None:
    (s1, n1), (s2, n2) = pair_of_nodes
    a = await remote.connect(s1.url, token=TOKEN)
    b = await remote.connect(s2.url, token=TOKEN)
    try:
        wa: Any = await a.create_worker()  # type: ignore[union-attr]
        wb: Any = await b.create_worker()  # type: ignore[union-attr]
        listen = {"protocol": "udp", "ip": "127.0.0.1"}
        for room in range(8):
            ra = await wa.create_router(media_codecs=MEDIA_CODECS)
            rb = await wb.create_router(media_codecs=MEDIA_CODECS)
            send = await ra.create_plain_transport(listen_info=listen, comedia=True)
            producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            recv = await rb.create_plain_transport(listen_info=listen, comedia=True)
            consumer = await recv.consume(
                producer_id=producer.id, rtp_capabilities=rb.rtp_capabilities
            )
            assert consumer.producer_id == producer.id  # a copy through s2's pipe from s1
            busy = _sizes(n1) | _sizes(n2)
            assert busy["s1._out"] == 1 and busy["s2._in"] == 1
            # Half the rooms end consumer first, half with the rooms' routers closing.
            if room % 2:
                consumer.close()
                producer.close()
            ra.close()
            rb.close()
        empty = {key: 0 for key in _sizes(n1) | _sizes(n2)}
        async with asyncio.timeout(10):  # the copies' idle time, then the pairs' closing
            while _sizes(n1) | _sizes(n2) != empty:
                await asyncio.sleep(0.05)
    finally:
        await a.aclose()
        await b.aclose()
