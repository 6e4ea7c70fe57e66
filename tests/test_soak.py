"""A long-lived server keeps nothing per object it ever had: after many cycles of a
transport with a producer, a consumer, data producers and consumers, an RTP observer's
producer, a pipe to another router and (where there is a WebRtcServer) a transport
through it, each closed (by its own close() or its parent's), every map and listener
list of the worker, its channel and the routers is back to what it was after the first
cycle, on a local worker and behind Remote Mediasoup (the server's session and the
client's proxies too)."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda import mediasoup
from mafalda.mediasoup import Router, Worker
from mafalda.remote import RemoteMediasoup, RemoteServer, connect, serve
from mafalda.remote.proxy import RemoteObject
from mafalda.vertical import Mafalda
from tests.conftest import served_by
from tests.rtp_flow import MEDIA_CODECS, OPUS_RTP
from tests.sizes import containers, listeners

LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}
TOKEN = "soak"


def _local_sizes(worker: Worker, routers: list[Router]) -> dict[str, int]:
    channel: Any = worker._channel  # type: ignore[attr-defined]
    sizes = {
        "worker.routers": len(worker._routers),  # type: ignore[attr-defined]
        "worker.listeners": listeners(worker),
        "channel.sents": len(channel._sents),
        "channel.handlers": len(channel._handlers),
    }
    for index, router in enumerate(routers):
        r: Any = router
        sizes |= {
            f"router{index}.transports": len(r._transports),
            f"router{index}.producers": len(r._producers),
            f"router{index}.data_producers": len(r._data_producers),
            f"router{index}.rtp_observers": len(r._rtp_observers),
            f"router{index}.pipe_pairs": len(r._pipe_pairs),
            f"router{index}.listeners": listeners(router),
        }
        for observer in r._rtp_observers.values():
            sizes[f"router{index}.observer.listeners"] = listeners(observer)
    return sizes


async def _cycle(
    router: Router, other: Router, observer: Any, close_parent: bool, webrtc_server: Any = None
) -> None:
    """One participant's life: everything made, then closed (with ``webrtc_server``, a
    transport listening through it too: its close makes the server name it again)."""
    if webrtc_server is not None:
        through = await router.create_webrtc_transport(webrtc_server=webrtc_server)
        through.close()
    send = await router.create_webrtc_transport(listen_infos=[LISTEN], enable_sctp=True)
    recv = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    consumer = await recv.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    await consumer.get_stats()
    await observer.add_producer(producer_id=producer.id)
    data_producer = await send.produce_data(sctp_stream_parameters={"streamId": 1})
    data_consumer = await recv.consume_data(data_producer_id=data_producer.id)
    await data_consumer.dump()
    await router.pipe_to_router(producer_id=producer.id, router=other, keep_id=False)
    if close_parent:  # the transports' close cascades to everything under them
        send.close()
        recv.close()
    else:  # every object closed by itself, the transports last
        await observer.remove_producer(producer_id=producer.id)
        data_consumer.close()
        data_producer.close()
        consumer.close()
        producer.close()
        send.close()
        recv.close()


async def _run_cycles(router: Router, other: Router, cycles: int, webrtc_server: Any = None) -> Any:
    observer = await router.create_audio_level_observer()
    for index in range(cycles):
        await _cycle(router, other, observer, index % 2 == 1, webrtc_server)
    await router.dump()  # every close() above reached the worker before this answer
    await other.dump()
    return observer


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    worker = await mediasoup.create_worker(log_level="warn")
    yield worker
    worker.close()
    await worker.wait_closed()


async def test_a_local_worker_keeps_nothing_per_closed_object(worker: Worker) -> None:
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    other = await worker.create_router(media_codecs=MEDIA_CODECS)
    webrtc_server = await worker.create_webrtc_server(listen_infos=[LISTEN])
    observer = await _run_cycles(router, other, 2, webrtc_server)
    after_two = _local_sizes(worker, [router, other])
    for _ in range(10):
        await _cycle(router, other, observer, False, webrtc_server)
        await _cycle(router, other, observer, True, webrtc_server)
    await router.dump()
    await other.dump()
    assert _local_sizes(worker, [router, other]) == after_two
    assert vars(webrtc_server)["_webrtc_transports"] == {}
    # The pipe pair between the two routers stays for the next pipe, as mediasoup's.
    assert after_two["router0.pipe_pairs"] == 1


@pytest.fixture
async def remote() -> AsyncIterator[tuple[RemoteServer, RemoteMediasoup]]:
    server = await serve(token=TOKEN, grace_period=0)
    client = await connect(server.url, token=TOKEN)
    assert isinstance(client, RemoteMediasoup)
    yield server, client
    await client.aclose()
    await server.close()


def _remote_sizes(server: RemoteServer, client: RemoteMediasoup) -> dict[str, int]:
    [session] = server.sessions.values()
    connection: Any = client.connection
    sizes = {
        "session.objects": len(session.objects),
        "session.handles": len(session.handles),
        "session.kinds": len(session.kinds),
        "session.sent": len(session.sent),
        "session.tasks": len(session.tasks),
        "client.proxies": len(connection.proxies),
        "client.pending": len(connection._pending),
    }
    live: Any = [o for o in connection.proxies.values() if not o.closed]
    sizes["client.children"] = sum(len(o._children) for o in live)
    return sizes


async def test_a_remote_session_keeps_nothing_per_closed_object(
    remote: tuple[RemoteServer, RemoteMediasoup],
) -> None:
    server, client = remote
    worker = await client.create_worker(log_level="warn")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    other = await worker.create_router(media_codecs=MEDIA_CODECS)
    webrtc_server = await worker.create_webrtc_server(listen_infos=[LISTEN])
    observer = await _run_cycles(router, other, 2, webrtc_server)
    gc.collect()
    after_two = _remote_sizes(server, client)
    served_worker = served_by(server, worker)
    served = [served_by(server, router), served_by(server, other)]
    local_after_two = _local_sizes(served_worker, served)
    for _ in range(10):
        await _cycle(router, other, observer, False, webrtc_server)
        await _cycle(router, other, observer, True, webrtc_server)
    await router.dump()
    await other.dump()
    gc.collect()
    assert _remote_sizes(server, client) == after_two
    assert _local_sizes(served_worker, served) == local_after_two
    [session] = server.sessions.values()
    # What is remembered of closed objects is bounded apart (session.gone, _MAX_GONE).
    assert len(session.parents) <= len(session.objects) + len(session.gone)
    assert isinstance(router, RemoteObject)


def _pool_sizes(pool: Mafalda, routers: list[Any]) -> dict[str, int]:
    sizes = containers(pool, "pool")
    for index, router in enumerate(routers):
        sizes |= containers(router, f"router{index}")
        sizes[f"router{index}.listeners"] = listeners(router)
        for host, child in vars(router)["_children"].items():
            sizes |= {
                f"router{index}@{host.pid}.{key}": value
                for key, value in _local_sizes(host, [child]).items()
            }
    return sizes


async def test_a_mafalda_router_keeps_nothing_per_closed_object() -> None:
    """Across the workers of a pool (placement alternating: every consume pipes the
    producer to the other worker), what the spanning routers hold comes back too."""
    pool = await Mafalda.start(
        num_workers=2, min_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    try:
        made: dict[int, int] = {}
        for worker in vars(pool)["_pool"]:
            worker.observer.on(
                "newrouter", lambda r, pid=worker.pid: made.__setitem__(pid, made.get(pid, 0) + 1)
            )
        router = await pool.create_router(media_codecs=MEDIA_CODECS)
        other = await pool.create_router(media_codecs=MEDIA_CODECS)
        observer = await _run_cycles(router, other, 2)
        assert len(made) == 2  # the rooms spanned both workers
        after_two = _pool_sizes(pool, [router, other])
        for _ in range(6):
            await _cycle(router, other, observer, close_parent=False)
            await _cycle(router, other, observer, close_parent=True)
        await router.dump()
        await other.dump()
        assert _pool_sizes(pool, [router, other]) == after_two
    finally:
        await pool.aclose()


async def test_a_remote_mafalda_session_keeps_nothing_per_closed_object() -> None:
    """The same through Remote Mafalda: the session, the proxies and the pool's
    spanning routers behind them."""
    pool = await Mafalda.start(
        num_workers=2, min_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    server = await serve(token=TOKEN, grace_period=0, target=pool)
    client: Any = await connect(server.url, token=TOKEN)
    try:
        router = await client.create_router(media_codecs=MEDIA_CODECS)
        other = await client.create_router(media_codecs=MEDIA_CODECS)
        observer = await _run_cycles(router, other, 2)
        gc.collect()
        served = [served_by(server, router), served_by(server, other)]
        after_two = _remote_sizes(server, client) | _pool_sizes(pool, served)
        for _ in range(6):
            await _cycle(router, other, observer, close_parent=False)
            await _cycle(router, other, observer, close_parent=True)
        await router.dump()
        await other.dump()
        gc.collect()
        assert _remote_sizes(server, client) | _pool_sizes(pool, served) == after_two
    finally:
        await client.aclose()
        await server.close()
        await pool.aclose()
