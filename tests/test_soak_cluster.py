"""A cluster client keeps nothing per room it ever had: rooms (cluster routers) come and
go over two `mafalda serve --cluster` servers, each with a producer on one server and
its consumer on the other (a pipe between them); once every room is closed and the
servers' workers idle out, the client's maps and its connections' proxies are back to
what they were after the first room, and the servers hold no router of it."""

from __future__ import annotations

import asyncio
from typing import Any

from mafalda import horizontal
from mafalda.remote import serve as remote_serve
from tests import processes
from tests.rtp_flow import MEDIA_CODECS, OPUS_RTP
from tests.sizes import containers

#: Bounded by time, not by what the client had: when a server's record was last missed
#: (a late heartbeat under load), and when one left (until the next registry read).
_BY_TIME = ("_missing_since", "_left_at")


def _sizes(cluster: Any) -> dict[str, int]:
    sizes = containers(cluster, "cluster", skip=_BY_TIME)
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


async def test_a_cluster_client_keeps_nothing_per_server_that_left() -> None:
    """Servers come and go (autoscaling: each with a new id), a long-lived room uses
    each while it is there; once each has left, the client holds no connection, lock,
    worker, timer or record of it (the same sizes after the sixth as after the first)."""
    from mafalda.horizontal import MediaNode

    redis = processes.RedisProcess()
    redis.start()
    cluster: Any = None
    try:
        cluster = await horizontal.connect(
            redis.url, token=processes.TOKEN, interval=0.1, grace=0.3, worker_idle=0.1
        )
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        sizes: list[dict[str, int]] = []
        for index in range(6):
            server_id = f"autoscaled-{index}"
            async with (
                await remote_serve(host="127.0.0.1", token=processes.TOKEN) as server,
                MediaNode(server, redis_url=redis.url, server_id=server_id, interval=0.1),
            ):
                async with asyncio.timeout(10):
                    while server_id not in cluster.servers:
                        await asyncio.sleep(0.05)
                transport = await router.create_plain_transport(
                    server=server_id, listen_info={"protocol": "udp", "ip": "127.0.0.1"}
                )
                await transport.produce(kind="audio", rtp_parameters=OPUS_RTP)
                transport.close()
            # Deregistered: the client drops it (and, a registry read later, the note of
            # when it left, which only guards the read under way then).
            async with asyncio.timeout(10):
                while (
                    server_id in cluster.servers
                    or vars(cluster)["_clients"]
                    or vars(cluster)["_left_at"]
                ):
                    await asyncio.sleep(0.05)
            sizes.append(_sizes(cluster) | containers(router, "router"))
        assert sizes[-1] == sizes[0]
        for name in ("_connecting", "_router_worker_locks", "_router_workers", "_idle_timers"):
            assert sizes[0][f"cluster.{name}"] == 0, name
    finally:
        if cluster is not None:
            await cluster.aclose()
        redis.kill()
