"""A cluster client keeps nothing per room it ever had: rooms (cluster routers) come and
go over two `mafalda serve --cluster` servers, each with a producer on one server and
its consumer on the other (a pipe between them); once every room is closed and the
servers' workers idle out, the client's maps and its connections' proxies are back to
what they were after the first room, and the servers hold no router of it."""

from __future__ import annotations

import asyncio
from typing import Any

from mafalda import horizontal
from tests import processes
from tests.rtp_flow import MEDIA_CODECS, OPUS_RTP


def _sizes(cluster: Any) -> dict[str, int]:
    sizes = {
        f"cluster.{name}": len(value)
        for name, value in vars(cluster).items()
        if isinstance(value, dict | set | list)
    }
    for server_id, client in vars(cluster)["_clients"].items():
        sizes[f"{server_id}.proxies"] = len(client.connection.proxies)
    return sizes


async def _room(cluster: Any) -> None:
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    send = await router.create_plain_transport(
        server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
    )
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    recv = await router.create_plain_transport(
        server="s2", listen_info={"protocol": "udp", "ip": "127.0.0.3"}, comedia=True
    )
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    assert consumer.producer_id == producer.id
    router.close()


async def _settled(cluster: Any, want: dict[str, int]) -> None:
    """Until the client's sizes are ``want`` (the workers' idle timers run first)."""
    try:
        async with asyncio.timeout(15):
            while _sizes(cluster) != want:
                await asyncio.sleep(0.05)
    except TimeoutError:
        assert _sizes(cluster) == want  # says which differ


async def test_a_cluster_client_keeps_nothing_per_room(shared_cluster: str) -> None:
    cluster = await horizontal.connect(
        shared_cluster,
        token=processes.TOKEN,
        interval=0.2,
        grace=1.5,
        worker_idle=0.2,
        worker_settings={"log_level": "warn"},
    )
    try:
        if len(cluster.servers) < 2:
            await cluster.refresh()
        await _room(cluster)
        # Once idle: no router, no worker (its proxy gone once its process exited), no
        # pipe, no timer left for the closed room.
        clients = vars(cluster)["_clients"].values()
        async with asyncio.timeout(15):
            while (
                vars(cluster)["_workers"]
                or vars(cluster)["_idle_timers"]
                or any(client.connection.proxies for client in clients)
            ):
                await asyncio.sleep(0.05)
        after_one = _sizes(cluster)
        assert after_one["cluster._routers"] == 0 and after_one["cluster._pipes"] == 0
        for _ in range(6):
            await _room(cluster)
        await _settled(cluster, after_one)
        for client in vars(cluster)["_clients"].values():
            # The servers closed what this client had there.
            assert [o for o in client.objects if not o.closed] == []
    finally:
        await cluster.aclose()
