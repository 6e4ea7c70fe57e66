"""Remote Mafalda's pool events: a client's ``events`` / ``observer`` emit the pool's
'workerdied', 'workerreplaced', 'newworker', 'workerclose', 'newrouter',
'newwebrtcserver' and 'close' as a local Mafalda's, each client told only of its own
objects."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from mafalda.remote import RemoteMafalda, connect, serve
from mafalda.remote import protocol as p
from mafalda.vertical import Mafalda

from .conftest import MEDIA_CODECS

TOKEN = "s3cret"
LISTEN = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
AUDIO: dict[str, Any] = {
    "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}],
    "encodings": [{"ssrc": 11111111}],
}


def _pid(worker: Any) -> int:
    """A worker's pid: a local pool's Worker, a Remote Mafalda's dict."""
    return int(worker["pid"] if isinstance(worker, dict) else worker.pid)


def _pids(pool: Any) -> list[int]:
    return [_pid(w) for w in pool.workers]


async def _start() -> Mafalda:
    return await Mafalda.start(num_workers=1, min_workers=1, worker_settings={"log_level": "warn"})


async def _objects(pool: Any, tag: str = "", log: list[Any] | None = None) -> dict[str, str]:
    """A router, a WebRtcServer per worker, a transport with a producer and one with a
    consumer of it, all on the pool's one worker; their ids by name (the child router's
    from the dump). ``log``: where the transports' and the WebRtcServer's close events
    go."""
    router = await pool.create_router(media_codecs=MEDIA_CODECS)
    (server,) = (await pool.create_webrtc_servers(listen_infos=LISTEN)).values()
    source = await router.create_plain_transport(listen_ip="127.0.0.1")
    producer = await source.produce(kind="audio", rtp_parameters=AUDIO)
    sink = await router.create_plain_transport(listen_ip="127.0.0.1")
    consumer = await sink.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    if log is not None:
        server.on("workerclose", lambda: log.append("server workerclose"))
        for transport in (source, sink):
            transport.on("routerclose", lambda: log.append("routerclose"))
    (child,) = (await pool.dump())["routers"][0]["workers"].values()
    objects = {"router": router, "server": server, "source": source, "producer": producer}
    objects.update(sink=sink, consumer=consumer)
    ids = {obj.id: tag + name for name, obj in objects.items()}
    ids[child["routerId"]] = tag + "child"
    return ids


async def _killed(pool: Any, log: list[Any]) -> None:
    """The pool's worker SIGKILLed: what ``pool``'s events and observer told, in order
    (with the pids of ``pool.workers`` as each came), and its objects' close events."""
    ids = await _objects(pool, log=log)
    (dead,) = _pids(pool)
    replaced = asyncio.Event()

    def on(emitter: str, event: str) -> Callable[..., None]:
        def listener(*args: Any) -> None:
            if replaced.is_set():  # the scenario is over (the pool's close comes later)
                return
            told: list[Any] = []
            for arg in args:
                if isinstance(arg, dict) and "transports" in arg:  # the loss
                    assert arg["pid"] == dead and "signal:9" in arg["error"]
                    told.append(
                        {
                            k: sorted(ids.get(i, i) for i in v)
                            for k, v in arg.items()
                            if isinstance(v, list)
                        }
                    )
                else:  # a worker
                    new = _pid(arg)
                    told.append("dead" if new == dead else "new" if new in _pids(pool) else new)
            others = ["new" if pid != dead else "dead" for pid in _pids(pool)]
            log.append((emitter, event, *told, others))
            if event == "workerreplaced":
                replaced.set()

        return listener

    for name in ("workerdied", "workerreplaced"):
        pool.events.on(name, on("events", name))
    for name in ("workerdied", "newworker", "workerclose", "close"):
        pool.observer.on(name, on("observer", name))
    os.kill(dead, signal.SIGKILL)
    async with asyncio.timeout(10):
        await replaced.wait()


LOSS = {
    "routers": ["child"],
    "transports": ["sink", "source"],
    "producers": ["producer"],
    "consumers": ["consumer"],
    "dataProducers": [],
    "dataConsumers": [],
    "rtpObservers": [],
    "webRtcServers": ["server"],
}


async def _run_locally_and_remotely(
    scenario: Callable[[Any, list[Any]], Awaitable[None]],
) -> tuple[list[Any], list[Any], dict[str, str]]:
    """``scenario(pool, log)`` on a local Mafalda, then through a Remote Mafalda whose
    pool's one worker also holds another client's objects; the other's ids."""
    local: list[Any] = []
    mafalda = await _start()
    try:
        await scenario(mafalda, local)
    finally:
        await mafalda.aclose()
    remote: list[Any] = []
    mafalda = await _start()
    try:
        async with await serve(token=TOKEN, target=mafalda) as srv:
            other = await connect(srv.url, token=TOKEN)
            client = await connect(srv.url, token=TOKEN)
            assert isinstance(other, RemoteMafalda) and isinstance(client, RemoteMafalda)
            others = await _objects(other, "other ")
            other_log: list[Any] = []
            other.events.on("workerdied", other_log.append)
            await scenario(client, remote)
            # The other client was told of its own loss only.
            (loss,) = other_log
            assert {
                k: sorted(others.get(i, i) for i in v) for k, v in loss.items() if k in LOSS
            } == {k: ["other " + name for name in v] for k, v in LOSS.items()}
            await client.aclose()
            await other.aclose()
    finally:
        await mafalda.aclose()
    return local, remote, others


async def test_a_killed_worker_is_told_as_by_a_local_mafalda() -> None:
    """A worker of the pool SIGKILLed: the objects on it emit their close events, then
    'workerdied' (events, then observer) with the loss, then the replacement's observer
    'newworker' and 'workerreplaced' (min_workers): locally and through Remote Mafalda
    alike, the worker as its dict there, ``workers`` agreeing as each is emitted. The
    remote loss lists only the client's own objects, not those another client has on
    that worker (nor does the other's list this one's)."""
    local, remote, others = await _run_locally_and_remotely(_killed)
    closes = ["server workerclose", "routerclose", "routerclose"]
    pool_events = [
        ("events", "workerdied", LOSS, []),
        ("observer", "workerdied", LOSS, []),
        ("observer", "newworker", "new", ["new"]),
        ("events", "workerreplaced", "new", ["new"]),
    ]
    assert sorted(local[:3]) == sorted(closes)
    assert local[3:] == pool_events
    assert remote == local
    assert not any(other_id in json.dumps(remote) for other_id in others)  # (exact: above)


async def test_a_worker_closed_outside_and_the_pools_close_are_told() -> None:
    """A worker of the served pool closed on the server (not by Mafalda): the client's
    observer emits 'workerclose' with its dict (closed, not died), then 'newworker' and
    events 'workerreplaced' for its replacement, as the pool's own; the pool's close: its
    'close', once (the client's close() after it emits none). A client that was not
    connected then gets nothing, and an old client ignores root events."""
    mafalda = await _start()
    try:
        async with await serve(token=TOKEN, target=mafalda) as srv:
            client = await connect(srv.url, token=TOKEN)
            assert isinstance(client, RemoteMafalda)
            local: list[Any] = []
            remote: list[Any] = []
            replaced = asyncio.Event()
            for name in ("newworker", "workerclose", "close"):
                mafalda.observer.on(name, lambda *a, n=name: local.append((n, *a)))
                client.observer.on(name, lambda *a, n=name: remote.append((n, *a)))
            mafalda.events.on("workerreplaced", lambda w: local.append(("workerreplaced", w)))
            client.events.on("workerreplaced", lambda w: remote.append(("workerreplaced", w)))
            client.events.on("workerreplaced", lambda w: replaced.set())
            (worker,) = mafalda.workers
            worker.close()
            async with asyncio.timeout(10):
                await replaced.wait()
            (new,) = mafalda.workers
            assert client.workers == [{"pid": new.pid, "closed": False, "died": False}]
            assert local == [("workerclose", worker), ("newworker", new), ("workerreplaced", new)]
            assert remote == [
                ("workerclose", {"pid": worker.pid, "closed": True, "died": False}),
                ("newworker", {"pid": new.pid, "closed": False, "died": False}),
                ("workerreplaced", {"pid": new.pid, "closed": False, "died": False}),
            ]
            # An unknown root event, or one an old client gets: nothing breaks.
            (session,) = srv.sessions.values()
            session.send(p.event_notification(None, "events", "somethingnew", [], None))
            session.send(p.event_notification(None, "events", 1, [], None))  # type: ignore[arg-type]
            await client.refresh()
            closed = asyncio.Event()
            client.observer.on("close", lambda: closed.set())
            mafalda.close()
            async with asyncio.timeout(10):
                await closed.wait()
            client.close()
            assert remote[3:] == [("close",)]
            await client.wait_closed()
    finally:
        await mafalda.aclose()


async def test_new_routers_and_webrtc_servers_are_told_once_and_only_to_their_client() -> None:
    """'newrouter' and 'newwebrtcserver' come with the server's event, before the
    creating call returns, once; another client's are not told."""
    mafalda = await _start()
    try:
        async with await serve(token=TOKEN, target=mafalda) as srv:
            a = await connect(srv.url, token=TOKEN)
            b = await connect(srv.url, token=TOKEN)
            assert isinstance(a, RemoteMafalda) and isinstance(b, RemoteMafalda)
            told_a: list[Any] = []
            told_b: list[Any] = []
            for name in ("newrouter", "newwebrtcserver"):
                a.observer.on(name, lambda obj, n=name: told_a.append((n, obj)))
                b.observer.on(name, lambda obj, n=name: told_b.append((n, obj)))
            router = await a.create_router(media_codecs=MEDIA_CODECS)
            server = await a.create_webrtc_server(listen_infos=LISTEN)
            assert told_a == [("newrouter", router), ("newwebrtcserver", server)]
            await b.refresh()
            assert told_b == []
            await a.aclose()
            await b.aclose()
    finally:
        await mafalda.aclose()


async def test_a_disconnected_client_is_not_told() -> None:
    """Pool events while a client is away (within its grace period) are not sent: the
    resume's root state tells its workers."""
    mafalda = await _start()
    try:
        async with await serve(token=TOKEN, target=mafalda, grace_period=5) as srv:
            client = await connect(srv.url, token=TOKEN, reconnect=False)
            assert isinstance(client, RemoteMafalda)
            (session,) = srv.sessions.values()
            connection = session.connection
            session.connection = None
            (worker,) = mafalda.workers
            os.kill(worker.pid, signal.SIGKILL)
            await worker.wait_closed()
            session.connection = connection
            told: list[Any] = []
            client.events.on("workerdied", told.append)
            await client.refresh()
            assert told == []
            assert worker.pid not in _pids(client)
            await client.aclose()
    finally:
        await mafalda.aclose()
