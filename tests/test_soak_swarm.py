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
from tests.sizes import containers

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


def _node_sizes(node: SwarmNode) -> dict[str, int]:
    sizes = containers(node, "node") | containers(node.streams, "streams")
    sizes["table.entries"] = len(vars(node._table)["_entries"])  # type: ignore[attr-defined]
    return sizes


async def test_a_swarm_server_keeps_nothing_per_server_that_left() -> None:
    """Servers join (each with a new id), a stream goes from the long-lived one to each,
    then they leave: once their tombstones are forgotten the long-lived server holds
    nothing of them (the same sizes after the fourth as after the first)."""
    first = await remote.serve(host="127.0.0.2", token=TOKEN)
    node = SwarmNode(first, token=TOKEN, server_id="stays", interval=ROUND, stream_idle=0.1)
    await node.start()
    a = await remote.connect(first.url, token=TOKEN)
    sizes: list[dict[str, int]] = []
    try:
        wa: Any = await a.create_worker()  # type: ignore[union-attr]
        ra = await wa.create_router(media_codecs=MEDIA_CODECS)
        listen = {"protocol": "udp", "ip": "127.0.0.2"}
        send = await ra.create_plain_transport(listen_info=listen, comedia=True)
        producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
        for index in range(4):
            server = await remote.serve(host="127.0.0.3", token=TOKEN)
            other = SwarmNode(
                server, token=TOKEN, seeds=[first.url], server_id=f"came-{index}", interval=ROUND
            )
            await other.start()
            b = await remote.connect(server.url, token=TOKEN)
            try:
                async with asyncio.timeout(10):
                    while len(node.members) < 2:
                        await asyncio.sleep(ROUND)
                wb: Any = await b.create_worker()  # type: ignore[union-attr]
                rb = await wb.create_router(media_codecs=MEDIA_CODECS)
                recv = await rb.create_plain_transport(
                    listen_info={"protocol": "udp", "ip": "127.0.0.3"}, comedia=True
                )
                await recv.consume(producer_id=producer.id, rtp_capabilities=rb.rtp_capabilities)
                assert len(vars(node.streams)["_out"]) == 1
            finally:
                await b.aclose()
                await other.aclose()
                await server.close()
            async with asyncio.timeout(15):  # its tombstone forgotten, its pipes closed
                while len(node.members) > 1 or _node_sizes(node)["table.entries"]:
                    await asyncio.sleep(ROUND)
            sizes.append(_node_sizes(node))
        assert sizes[-1] == sizes[0]
        assert sizes[0]["streams._out"] == sizes[0]["streams._queues"] == 0
    finally:
        await a.aclose()
        await node.aclose()
        await first.close()
