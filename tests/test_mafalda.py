"""Mafalda (vertical scaling) against real workers: placement, pipes, media, faults.

The tests of a Mafalda router's behaviour (``SIDES``: the ``pool`` fixture, ``_pool()``)
run twice: on the Mafalda itself and through Remote Mafalda (a loopback server serving
it), looking into the served Mafalda for what no client sees (which worker hosts what,
its pipes). Those of the pool itself (start options, workers dying or idle, placement
policies) are the server's business and run locally only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiortc.rtcsctptransport import AbortChunk, InitChunk, parse_packet, serialize_packet

from mafalda import Mafalda, MafaldaRouter
from mafalda.mediasoup import (
    DataProducer,
    InvalidStateError,
    InvalidValueError,
    PipeTransport,
    PlainTransport,
    Producer,
    Worker,
    create_worker,
)
from mafalda.mediasoup.channel import REQUEST_TIMEOUT
from mafalda.remote import RemoteMafalda, RemoteServer, connect, serve
from mafalda.vertical import SpreadPolicy, WorkerLoss
from mafalda.vertical.policy import Limits
from mafalda.vertical.spanning import pipe_key, source_open
from tests.processes import free_ports

from .conftest import MEDIA_CODECS, opus_rtp_parameters, served_by

OPUS_PT = 100
LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}


class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rtp = 0
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            self.rtp += 1
            self.arrived.set()


async def _receiver() -> tuple[asyncio.DatagramTransport, _Counter]:
    loop = asyncio.get_running_loop()
    transport, counter = await loop.create_datagram_endpoint(_Counter, local_addr=("127.0.0.1", 0))
    return transport, counter


def _rtp(seq: int, ssrc: int) -> bytes:
    return struct.pack("!BBHII", 0x80, OPUS_PT, seq, seq * 960, ssrc) + bytes(100)


async def _send_rtp(transport: PlainTransport, ssrc: int, count: int) -> None:
    loop = asyncio.get_running_loop()
    sock, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol,
        remote_addr=(transport.tuple["localAddress"], transport.tuple["localPort"]),
    )
    try:
        for seq in range(count):
            sock.sendto(_rtp(seq, ssrc))
            await asyncio.sleep(0.002)
    finally:
        sock.close()


async def _audio_producer(
    router: MafaldaRouter, ssrc: int = 1234
) -> tuple[PlainTransport, Producer]:
    transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await transport.produce(
        kind="audio",
        rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT),
    )
    return transport, producer


async def _start_pool() -> Mafalda:
    return await Mafalda.start(
        num_workers=2, max_units_per_worker=4, worker_settings={"log_level": "warn"}
    )


@pytest.fixture
async def mafalda() -> AsyncIterator[Mafalda]:
    m = await _start_pool()
    yield m
    await m.aclose()


@dataclass
class Pool:
    """What a test drives (``api``: the Mafalda itself, or a Remote Mafalda client of a
    loopback server serving it) and the Mafalda behind it (``inside``), to look into."""

    api: Any
    inside: Mafalda
    server: RemoteServer | None = None

    def served(self, obj: Any) -> Any:
        """The library object behind ``obj`` (itself, or the server's for a proxy)."""
        return served_by(self.server, obj)

    def worker_of(self, router: Any, obj: Any) -> Worker:
        worker: Worker = self.served(router).worker_of(self.served(obj))
        return worker

    async def mafalda_dump(self, router: Any) -> Any:
        return await self.served(router).mafalda_dump()


SIDES = ["mafalda", "remote-mafalda"]


@contextlib.asynccontextmanager
async def _pool(side: str, **options: Any) -> AsyncIterator[Pool]:
    """A Mafalda started with ``options``, driven directly or through Remote Mafalda."""
    inside = await Mafalda.start(worker_settings={"log_level": "warn"}, **options)
    try:
        if side == "mafalda":
            yield Pool(inside, inside)
            return
        async with await serve(token="pool", target=inside, grace_period=0) as server:
            client = await connect(server.url, token="pool")
            assert isinstance(client, RemoteMafalda)
            try:
                yield Pool(client, inside, server)
            finally:
                await client.aclose()
    finally:
        await inside.aclose()


@pytest.fixture(params=SIDES)
async def pool(request: pytest.FixtureRequest) -> AsyncIterator[Pool]:
    """Mafalda's router behaviour, driven locally and through Remote Mafalda."""
    async with _pool(request.param, num_workers=2, max_units_per_worker=4) as p:
        yield p


async def test_start_validates_options() -> None:
    with pytest.raises(ValueError, match="num_workers"):
        await Mafalda.start(num_workers=0)
    with pytest.raises(ValueError, match="min_workers"):
        await Mafalda.start(num_workers=1, min_workers=2)
    with pytest.raises(TypeError, match="min_workers"):
        await Mafalda.start(num_workers=1, min_workers="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown placement policy"):
        await Mafalda.start(num_workers=1, policy="random")
    with pytest.raises(TypeError, match="policy"):
        await Mafalda.start(num_workers=1, policy=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="app_data"):
        await Mafalda.start(num_workers=1, worker_settings={"app_data": {}})
    with pytest.raises(ValueError, match="load_interval"):
        await Mafalda.start(num_workers=1, load_interval=0)
    with pytest.raises(ValueError, match="log_level"):
        await Mafalda.start(num_workers=1, worker_settings={"log_level": "chicken"})


async def test_start_and_close_with_async_with() -> None:
    async with await Mafalda.start(num_workers=3, min_workers=2) as m:
        assert len(m.workers) == 2 and m.max_workers == 3
        pids = [w.pid for w in m.workers]
        router = await m.create_router(media_codecs=MEDIA_CODECS, app_data={"room": "a"})
        assert router.app_data == {"room": "a"}
        assert m.routers == [router]
        closed: list[str] = []
        router.on("workerclose", lambda: closed.append("router"))
    assert m.closed and router.closed and closed == ["router"]
    assert router.mafalda is m
    events: list[str] = []
    m.observer.on("close", lambda: events.append("close"))
    await m.aclose()  # closed already: nothing happens
    assert events == []
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    with pytest.raises(InvalidStateError):
        await m.create_router(media_codecs=MEDIA_CODECS)


async def test_router_capabilities_match_mediasoup(pool: Pool, worker: Worker) -> None:
    plain = await worker.create_router(media_codecs=MEDIA_CODECS)
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    assert router.rtp_capabilities == plain.rtp_capabilities


async def test_consumers_spill_to_second_worker_and_all_receive_media(pool: Pool) -> None:
    """K=4 load units per worker: 8 consumers of one producer end up on both workers."""
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    send_transport, producer = await _audio_producer(router)
    receivers: list[tuple[asyncio.DatagramTransport, _Counter]] = []
    transports: list[PlainTransport] = []
    try:
        for _ in range(7):
            transport = await router.create_plain_transport(listen_info=LISTEN)
            sock, counter = await _receiver()
            receivers.append((sock, counter))
            port = sock.get_extra_info("sockname")[1]
            await transport.connect(ip="127.0.0.1", port=port)
            await transport.consume(
                producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
            )
            transports.append(transport)
        hosts = {pool.worker_of(router, t).pid for t in transports}
        assert hosts == {w.pid for w in pool.inside.workers} and len(hosts) == 2
        # The producer's worker holds 4 units (its transport + 3 consumers); 4 consumers
        # went to the other one through one pipe.
        home = pool.worker_of(router, producer)
        assert sum(pool.worker_of(router, t) is home for t in transports) == 3
        dump = await pool.api.dump()
        (rdump,) = dump["routers"]
        assert len(rdump["pipes"]) == 1 and rdump["pipes"][0]["users"] == 4
        assert sorted(w["consumers"] for w in dump["workers"]) == [4, 4]  # 3 + pipe consumer
        await _send_rtp(send_transport, 1234, 50)
        for _, counter in receivers:
            await asyncio.wait_for(counter.arrived.wait(), 5)
        await asyncio.sleep(0.2)
        assert all(c.rtp >= 45 for _, c in receivers), [c.rtp for _, c in receivers]
    finally:
        for sock, _ in receivers:
            sock.close()


async def test_pipes_and_children_are_freed(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    inside = pool.served(router)
    send_transport, producer = await _audio_producer(router)
    consumers = []
    transports = []
    for _ in range(6):
        transport = await router.create_plain_transport(listen_info=LISTEN)
        transports.append(transport)
        consumers.append(
            await transport.consume(
                producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
            )
        )
    assert len(inside.child_routers) == 2
    far = [
        c
        for c, t in zip(consumers, transports, strict=True)
        if pool.worker_of(router, t) is not pool.worker_of(router, producer)
    ]
    assert far
    # The pipe lives while one consumer needs it.
    for consumer in far[:-1]:
        consumer.close()
    await router.dump()  # the closes went before it (through the remote link too)
    assert len((await inside.mafalda_dump())["pipes"]) == 1
    far[-1].close()
    await router.dump()
    await asyncio.sleep(0.05)
    dump = await inside.mafalda_dump()
    assert dump["pipes"] == [] and dump["pipeTransportPairs"] == []
    for pid, info in dump["workers"].items():
        assert info["pipeTransports"] == 0, pid
    # Closing every transport closes the child routers too.
    for transport in transports:
        transport.close()
    send_transport.close()
    await router.dump()
    await asyncio.sleep(0.05)
    assert inside.child_routers == {}
    for worker in pool.inside.workers:
        assert (await worker.dump())["routerIds"] == []
    assert (await router.dump())["transportIds"] == []


async def test_producer_pause_resume_and_close_reach_other_workers(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    pool.inside.policy = SpreadPolicy(Limits(max_units_per_worker=4))
    _, producer = await _audio_producer(router)
    far_transport = await router.create_plain_transport(listen_info=LISTEN)
    assert pool.worker_of(router, far_transport) is not pool.worker_of(router, producer)
    consumer = await far_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    events: list[str] = []
    for name in ("producerpause", "producerresume", "producerclose"):
        consumer.on(name, lambda name=name: events.append(name))
    await producer.pause()
    await asyncio.wait_for(_until(lambda: consumer.producer_paused), 5)
    await producer.resume()
    await asyncio.wait_for(_until(lambda: not consumer.producer_paused), 5)
    producer.close()
    await asyncio.wait_for(_until(lambda: consumer.closed), 5)
    assert events == ["producerpause", "producerresume", "producerclose"]
    await router.dump()
    assert (await pool.mafalda_dump(router))["pipes"] == []


async def test_consume_paused_producer_on_other_worker(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    pool.inside.policy = SpreadPolicy(Limits(max_units_per_worker=4))
    _, producer = await _audio_producer(router)
    await producer.pause()
    far_transport = await router.create_plain_transport(listen_info=LISTEN)
    consumer = await far_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert consumer.producer_paused is True


async def test_data_producer_piped_to_other_worker(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    pool.inside.policy = SpreadPolicy(Limits(max_units_per_worker=4))
    source = await router.create_direct_transport()
    sink = await router.create_direct_transport()
    assert pool.worker_of(router, source) is not pool.worker_of(router, sink)
    data_producer = await source.produce_data(label="chat")
    data_consumer = await sink.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.label == "chat"
    received: asyncio.Future[tuple[bytes, int]] = asyncio.get_running_loop().create_future()
    data_consumer.on("message", lambda m, ppid: received.done() or received.set_result((m, ppid)))
    # At once: the pipe's SCTP association is up before consume_data() returns (a message
    # sent into a pipe before that would be dropped by the worker).
    data_producer.send("hello across workers")
    message, ppid = await asyncio.wait_for(received, 5)
    assert (message, ppid) == (b"hello across workers", 51)
    dump = await router.dump()
    assert {"key": data_consumer.id, "value": data_producer.id} in dump[
        "mapDataConsumerIdDataProducerId"
    ]
    data_consumer.close()
    await router.dump()
    await asyncio.sleep(0.05)
    assert (await pool.mafalda_dump(router))["pipes"] == []


async def test_killed_worker_is_replaced_and_reported(worker: Worker) -> None:
    m = await Mafalda.start(num_workers=2, min_workers=2, policy="spread")
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        send_transport, producer = await _audio_producer(router)
        near = await router.create_plain_transport(listen_info=LISTEN)
        far = await router.create_plain_transport(listen_info=LISTEN)
        home = router.worker_of(producer)
        if router.worker_of(near) is not home:
            near, far = far, near
        assert router.worker_of(near) is home and router.worker_of(far) is not home
        sock, counter = await _receiver()
        await near.connect(ip="127.0.0.1", port=sock.get_extra_info("sockname")[1])
        await near.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        far_consumer = await far.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        )
        victim = router.worker_of(far)
        observer = await router.create_audio_level_observer()
        assert router.worker_of(observer) is victim  # the least loaded
        losses: asyncio.Future[WorkerLoss] = asyncio.get_running_loop().create_future()
        m.on("workerdied", losses.set_result)
        replaced: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        m.on("workerreplaced", replaced.set_result)
        far_closed = asyncio.Event()
        far.on("routerclose", far_closed.set)
        os.kill(victim.pid, signal.SIGKILL)
        loss = await asyncio.wait_for(losses, 5)
        assert loss["pid"] == victim.pid
        assert far.id in loss["transports"] and far_consumer.id in loss["consumers"]
        assert loss["rtpObservers"] == [observer.id] and observer.closed
        assert send_transport.id not in loss["transports"]
        assert far_closed.is_set() and far_consumer.closed
        new_worker = await asyncio.wait_for(replaced, 10)
        assert new_worker in m.workers and len(m.workers) == 2
        # The surviving worker keeps forwarding.
        await _send_rtp(send_transport, 1234, 30)
        await asyncio.wait_for(counter.arrived.wait(), 5)
        assert not producer.closed
        # And the router goes on using the pool, the new worker included.
        again = await router.create_plain_transport(listen_info=LISTEN)
        await again.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        sock.close()
    finally:
        await m.aclose()


async def test_idle_workers_are_freed() -> None:
    m = await Mafalda.start(
        num_workers=2, min_workers=1, policy="spread", load_interval=0.05, idle_worker_timeout=0.1
    )
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        a = await router.create_direct_transport()
        b = await router.create_direct_transport()
        assert len(m.workers) == 2 and router.worker_of(a) is not router.worker_of(b)
        stats = m.stats()
        assert [w["transports"] for w in stats["workers"]] == [1, 1]
        b.close()
        await asyncio.wait_for(_until(lambda: len(m.workers) == 1), 5)
        assert router.worker_of(a) in m.workers
        # Once its process has exited, the freed worker is forgotten.
        await asyncio.wait_for(_until(lambda: not m._retired), 5)
        await m.sample_load()
        assert 0.0 <= m.stats()["workers"][0]["cpu"] < 1.5
    finally:
        await m.aclose()


async def test_rtp_observer_watches_producer_of_other_worker(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    pool.inside.policy = SpreadPolicy(Limits(max_units_per_worker=4))
    _, producer = await _audio_producer(router)
    observer = await router.create_audio_level_observer()
    assert pool.worker_of(router, observer) is not pool.worker_of(router, producer)
    await observer.add_producer(producer_id=producer.id)
    dump = await router.dump()
    assert dump["rtpObserverIds"] == [observer.id]
    assert {"key": producer.id, "values": [observer.id]} in dump["mapProducerIdObserverIds"]
    assert len((await pool.mafalda_dump(router))["pipes"]) == 1
    await observer.remove_producer(producer_id=producer.id)
    assert (await pool.mafalda_dump(router))["pipes"] == []
    # Closing an observer that watches a piped producer frees the pipe too.
    await observer.add_producer(producer_id=producer.id)
    assert len((await pool.mafalda_dump(router))["pipes"]) == 1
    observer.close()
    await router.dump()  # a remote close() went before it
    assert (await pool.mafalda_dump(router))["pipes"] == []
    # An observer on the producer's own worker watches it without a pipe.
    home = pool.worker_of(router, producer)
    pool.inside.policy = _Pinned(pool.inside.workers.index(home))
    near = await router.create_active_speaker_observer()
    assert pool.worker_of(router, near) is home
    await near.add_producer(producer_id=producer.id)
    assert (await pool.mafalda_dump(router))["pipes"] == []
    assert {"key": producer.id, "values": [near.id]} in (await router.dump())[
        "mapProducerIdObserverIds"
    ]
    await near.remove_producer(producer_id=producer.id)
    assert (await router.dump())["mapProducerIdObserverIds"] == [{"key": producer.id, "values": []}]


async def test_pipe_to_plain_router_and_between_mafalda_routers(
    mafalda: Mafalda, worker: Worker
) -> None:
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    _, producer = await _audio_producer(router)
    other = await worker.create_router(media_codecs=MEDIA_CODECS)
    result = await router.pipe_to_router(router=other, producer_id=producer.id)
    assert result["pipeProducer"].id == producer.id
    second = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    result = await router.pipe_to_router(router=second, producer_id=producer.id)
    # Same worker: the copy needs its own id there; the target knows it by the original.
    assert second.can_consume(producer_id=producer.id, rtp_capabilities=second.rtp_capabilities)
    assert result["pipeProducer"].kind == "audio"
    with pytest.raises(TypeError, match="missing"):
        await router.pipe_to_router(router=other)
    with pytest.raises(TypeError, match="just"):
        await router.pipe_to_router(router=other, producer_id="a", data_producer_id="b")
    with pytest.raises(TypeError, match="this Router"):
        await router.pipe_to_router(router=router, producer_id=producer.id)
    with pytest.raises(InvalidValueError, match="not found"):  # as a Router's
        await router.pipe_to_router(router=other, producer_id="nope")
    with pytest.raises(TypeError, match="router must be"):
        await router.pipe_to_router(router="x", producer_id=producer.id)  # type: ignore[arg-type]


async def test_alias_makes_a_producer_findable_by_another_id_on_every_worker(
    mafalda: Mafalda,
) -> None:
    """What a cluster router asks of a Mafalda server's router for a pipe copy made with
    its own id: the alias consumes from another worker (piped there by the alias), pipes
    to another router, and goes with the producer; bad aliases are refused first."""
    room = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    other = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    _, producer = await _audio_producer(room)
    data_producer = await (await room.create_direct_transport()).produce_data(label="c")
    with pytest.raises(TypeError, match="key must be"):
        room.alias_producer("", producer)
    with pytest.raises(ValueError, match="not of this router"):
        other.alias_producer("copy", producer)
    with pytest.raises(TypeError, match="same id"):
        room.alias_data_producer(data_producer.id, data_producer)
    room.alias_producer("copy", producer)
    room.alias_data_producer("data-copy", data_producer)
    counts = (await room.mafalda_dump())["workers"]
    assert counts[mafalda.workers[0].pid]["producers"] == 1  # one producer, two ids
    mafalda.policy = _Pinned(1)
    sink = await room.create_direct_transport()
    assert room.worker_of(sink) is mafalda.workers[1]
    consumer = await sink.consume(producer_id="copy", rtp_capabilities=room.rtp_capabilities)
    assert consumer.kind == "audio"
    assert [p["id"] for p in (await room.mafalda_dump())["pipes"]] == ["copy"]
    # The router's dump knows the producer by both ids (an app's alias renames nothing).
    entries = {e["key"]: e["values"] for e in (await room.dump())["mapProducerIdConsumerIds"]}
    assert entries == {producer.id: [], "copy": [consumer.id]}
    data_consumer = await sink.consume_data(data_producer_id="data-copy")
    assert data_consumer.label == "c"
    await room.pipe_to_router(router=other, producer_id="copy")
    assert other.can_consume(producer_id="copy", rtp_capabilities=other.rtp_capabilities)
    closed = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
    producer.close()
    await asyncio.wait_for(closed, 5)
    with pytest.raises(ValueError, match="not found"):
        await sink.consume(producer_id="copy", rtp_capabilities=room.rtp_capabilities)
    room.close()
    with pytest.raises(InvalidStateError):
        room.alias_data_producer("late", data_producer)


@pytest.mark.parametrize("data", [False, True], ids=["producer", "data_producer"])
async def test_second_copy_into_a_mafalda_router_is_refused(mafalda: Mafalda, data: bool) -> None:
    """As mediasoup's target router refuses a second copy of a producer, before anything
    is made: it could otherwise land on another worker and shadow the first copy."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    if data:
        original: Any = await (await room_a.create_direct_transport()).produce_data(label="c")
        ids = {"data_producer_id": original.id}
    else:
        _, original = await _audio_producer(room_a)
        ids = {"producer_id": original.id}
    mafalda.policy = _Pinned(1)
    first = await room_a.pipe_to_router(router=room_b, **ids)
    made = await room_b.mafalda_dump(), await room_a.mafalda_dump()
    mafalda.policy = _Pinned(0)  # the second copy would go to the other worker
    kind = "DataProducer" if data else "Producer"
    with pytest.raises(TypeError, match=f'a {kind} with same id "{original.id}" already exists'):
        await room_a.pipe_to_router(router=room_b, **ids)
    assert (await room_b.mafalda_dump(), await room_a.mafalda_dump()) == made
    copy = first["pipeDataProducer" if data else "pipeProducer"]
    assert not copy.closed and room_b.worker_of(original) is mafalda.workers[1]


@pytest.mark.parametrize("data", [False, True], ids=["producer", "data_producer"])
async def test_a_source_closed_as_it_is_piped_into_a_mafalda_router_on_its_worker(
    mafalda: Mafalda, data: bool
) -> None:
    """pipe_to_router() into another MafaldaRouter whose copy goes to the original's own
    worker; the original closes as the target's child router is made there: the call
    fails as for a closed original (InvalidStateError), not with the worker's keep_id
    refusal (the id looked free on that worker once the original was gone), which the
    caller, who passed no keep_id, could make nothing of. Nothing is left behind."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    if data:
        original: Any = await (await room_a.create_direct_transport()).produce_data(label="c")
        ids = {"data_producer_id": original.id}
    else:
        _, original = await _audio_producer(room_a)
        ids = {"producer_id": original.id}
    piping = asyncio.ensure_future(room_a.pipe_to_router(router=room_b, **ids))
    await asyncio.wait_for(_until(lambda: room_b.unfinished_tasks()), 5)  # its child
    original.close()
    kind = "DataProducer" if data else "Producer"
    with pytest.raises(InvalidStateError, match=f"original {kind} closed"):
        await asyncio.wait_for(piping, 5)
    assert room_b.child_routers == {}
    assert (await room_a.mafalda_dump())["pipeTransportPairs"] == []


async def test_webrtc_server_pins_placement(mafalda: Mafalda) -> None:
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    servers = await mafalda.create_webrtc_servers(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
    )
    ((pid, server),) = servers.items()
    transport = await router.create_webrtc_transport(webrtc_server=server)
    assert router.worker_of(transport).pid == pid
    stranger = await create_worker()
    try:
        foreign = await stranger.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
        )
        with pytest.raises(ValueError, match="does not belong"):
            await router.create_webrtc_transport(webrtc_server=foreign)
    finally:
        stranger.close()
        await stranger.wait_closed()


async def test_webrtc_servers_pin_their_transports_past_the_limits() -> None:
    """A transport given a WebRtcServer of create_webrtc_servers() goes to that server's
    worker however loaded (no placement: the pool does not grow for it); a worker started
    afterwards gets no server, and takes the transports without one. Once the server is
    closed, a transport given it is an InvalidStateError, as a Router's (it was a
    ValueError saying the server was not of the pool)."""
    async with await Mafalda.start(
        num_workers=2, min_workers=1, max_units_per_worker=1, worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        listen: Any = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
        ((pid, server),) = (await m.create_webrtc_servers(listen_infos=listen)).items()
        (first,) = m.workers
        pinned = [await router.create_webrtc_transport(webrtc_server=server) for _ in range(3)]
        assert {router.worker_of(t) for t in pinned} == {first} and first.pid == pid
        assert m.workers == [first]  # three units on a worker of one: no growth for them
        spilled = await router.create_direct_transport()
        (second,) = (w for w in m.workers if w is not first)
        assert router.worker_of(spilled) is second
        assert second.webrtc_servers_for_testing == set()
        server.close()
        with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
            await router.create_webrtc_transport(webrtc_server=server)
        assert all(t.closed for t in pinned)


@pytest.mark.parametrize("side", SIDES)
async def test_webrtc_servers_one_per_worker_pin_their_transports(side: str) -> None:
    """create_webrtc_servers() makes one per worker of the pool, keyed by its pid; a
    transport given one lives on that worker and listens on its port; closing the
    server closes its transports ('listenserverclose'). Through Remote Mafalda they
    are the client's own: another client cannot use them, and they close with the
    client's session."""
    async with _pool(side, num_workers=2, min_workers=2) as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(TypeError, match="listen_infos"):
            await pool.api.create_webrtc_servers(listen_infos="udp")
        servers = await pool.api.create_webrtc_servers(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 0}],
            app_data={"room": "a"},
        )
        assert sorted(servers) == sorted(w.pid for w in pool.inside.workers)
        transports = {}
        for pid, server in servers.items():
            assert server.app_data == {"room": "a"}
            transport = await router.create_webrtc_transport(webrtc_server=server)
            assert pool.worker_of(router, transport).pid == pid
            (udp,) = (await server.dump())["udpSockets"]
            assert [c["port"] for c in transport.ice_candidates] == [udp["port"]]
            assert (await server.dump())["webRtcTransportIds"] == [transport.id]
            transports[pid] = transport
        first_pid, first = next(iter(servers.items()))
        heard = asyncio.Event()
        transports[first_pid].on("listenserverclose", heard.set)
        first.close()
        await asyncio.wait_for(heard.wait(), 5)
        assert transports[first_pid].closed and first.closed
        assert all(not t.closed for pid, t in transports.items() if pid != first_pid)
        if pool.server is None:
            return
        second, last = list(servers.values())[1], list(transports.values())[1]
        assert pool.api.webrtc_servers == []  # its spanning ones only, as Mafalda's
        assert second in pool.api.objects
        await _only_its_client_uses(pool, second, last, closing=False)


async def _only_its_client_uses(pool: Pool, server: Any, transport: Any, *, closing: bool) -> None:
    """Through Remote Mafalda: another client cannot use the client's WebRtcServer, which
    closes with the client (``closing``: its close(), which closes its proxies, else its
    session's end), ``transport`` with it."""
    assert pool.server is not None
    inside = pool.served(server)
    other = await connect(pool.server.url, token="pool")
    try:
        other_router = await other.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(Exception, match="unknown object"):
            await other_router.create_webrtc_transport(webrtc_server=server)
    finally:
        await other.aclose()
    assert not inside.closed
    if closing:
        pool.api.close()
        assert server.closed  # at once, as a local close() does
    await pool.api.aclose()  # grace_period=0: the session ends, its objects close
    async with asyncio.timeout(5):
        while not inside.closed:
            await asyncio.sleep(0.02)
    assert server.closed and transport.closed


@pytest.mark.parametrize("side", SIDES)
async def test_webrtc_servers_are_made_on_every_worker_or_none(side: str) -> None:
    """create_webrtc_servers() on two workers with one port between them: the second
    worker refuses, and the first one's is closed (on a shared pool it would otherwise
    hold its port for good). One fixed port for two workers is refused up front."""
    async with _pool(side, num_workers=2, min_workers=2) as pool:
        port = free_ports(1)  # the first worker binds it: below the ephemeral range
        with pytest.raises(ValueError, match="the pool's 2 workers cannot share one port"):
            await pool.api.create_webrtc_servers(
                listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": port}]
            )
        one_port = {"min": port, "max": port}
        with pytest.raises(Exception, match="no more available ports|in use|port"):
            await pool.api.create_webrtc_servers(
                listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "portRange": one_port}]
            )
        for worker in pool.inside.workers:
            assert worker.webrtc_servers_for_testing == set()
            assert (await worker.dump())["webRtcServerIds"] == []


async def test_remote_mafalda_webrtc_servers_keep_to_the_port_range() -> None:
    """A Remote Mafalda server with an rtc_port_range refuses a WebRtcServer outside it
    before any worker is asked."""
    inside = await Mafalda.start(worker_settings={"log_level": "warn"}, num_workers=1)
    try:
        async with await serve(
            token="pool", target=inside, grace_period=0, rtc_port_range=(40000, 40099)
        ) as server:
            async with await connect(server.url, token="pool") as client:
                with pytest.raises(ValueError, match="rtc_port_range"):
                    await client.create_webrtc_servers(
                        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "port": 5000}]
                    )
                assert inside.workers[0].webrtc_servers_for_testing == set()
    finally:
        await inside.aclose()


def _port_range(size: int = 20) -> dict[str, int]:
    low = free_ports(size)
    return {"min": low, "max": low + size - 1}


@pytest.mark.parametrize("side", SIDES)
async def test_a_mafalda_webrtc_server_follows_placement(side: str) -> None:
    """create_webrtc_server(): transports are placed as any other (here spread over two
    workers), each listening through its worker's real WebRtcServer, made by the first
    transport there and shared by the next (one port of the range per worker); the
    observer tells of each transport; close() closes them ('listenserverclose')."""
    async with _pool(side, num_workers=2, min_workers=2, policy="spread") as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        ports = _port_range()
        told: list[Any] = []
        pool.api.observer.on("newwebrtcserver", told.append)
        server = await pool.api.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1", "portRange": ports}],
            app_data={"room": "a"},
        )
        assert server.app_data == {"room": "a"} and not server.closed
        inside = pool.served(server)
        assert inside.servers == {}  # nothing made before a transport needs it
        assert pool.api.webrtc_servers == [server] and told == [server]
        handled: list[Any] = []
        server.observer.on("webrtctransporthandled", handled.append)
        transports = [await router.create_webrtc_transport(webrtc_server=server) for _ in range(4)]
        by_worker: dict[int, set[int]] = {}
        for transport in transports:
            pid = pool.worker_of(router, transport).pid
            (candidate,) = transport.ice_candidates
            assert ports["min"] <= candidate["port"] <= ports["max"]
            by_worker.setdefault(pid, set()).add(candidate["port"])
        assert sorted(by_worker) == sorted(w.pid for w in pool.inside.workers)
        assert all(len(used) == 1 for used in by_worker.values())  # one port per worker
        assert len({port for used in by_worker.values() for port in used}) == 2
        assert handled == transports
        assert sorted(inside.servers) == sorted(by_worker)
        dump = await server.dump()
        assert sorted(dump) == sorted(str(pid) for pid in by_worker)
        for pid, real_dump in dump.items():
            assert sorted(real_dump["webRtcTransportIds"]) == sorted(
                t.id for t in transports if pool.worker_of(router, t).pid == int(pid)
            )
            assert real_dump["udpSockets"][0]["port"] in by_worker[int(pid)]
        real = next(iter(inside.servers.values()))
        assert real.app_data == {"mafaldaWebRtcServerId": server.id}
        closed = asyncio.Event()
        transports[0].on("listenserverclose", closed.set)
        server.close()
        server.close()
        await asyncio.wait_for(closed.wait(), 5)
        async with asyncio.timeout(5):
            # (A remote proxy closes its transports at once, as the local one: the
            # server behind it hears of the close a round trip later.)
            while not all(t.closed for t in transports) or inside.servers:
                await asyncio.sleep(0.02)
        assert server.closed and inside.servers == {}
        assert all(w.webrtc_servers_for_testing == set() for w in pool.inside.workers)


@pytest.mark.parametrize("side", SIDES)
async def test_a_mafalda_webrtc_server_is_checked_before_anything(side: str) -> None:
    async with _pool(side, num_workers=2) as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        one_port = [{"protocol": "udp", "ip": "127.0.0.1", "port": 40000}]
        with pytest.raises(ValueError, match=r"listen_infos\[0\].port: the pool's 2 workers"):
            await pool.api.create_webrtc_server(listen_infos=one_port)
        with pytest.raises(TypeError, match="listen_infos must be a non-empty list"):
            await pool.api.create_webrtc_server(listen_infos=[])
        with pytest.raises(TypeError, match="app_data"):
            await pool.api.create_webrtc_server(
                listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}], app_data=[]
            )
        server = await pool.api.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
        )
        with pytest.raises(TypeError, match="only one of"):
            await router.create_webrtc_transport(
                webrtc_server=server, listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
            )
        server.close()
        with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
            await router.create_webrtc_transport(webrtc_server=server)
        with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
            await server.dump()
        assert router.transports_for_testing == {}
        assert all(w.webrtc_servers_for_testing == set() for w in pool.inside.workers)


async def test_a_mafalda_webrtc_server_of_another_pool_or_a_closed_pool(mafalda: Mafalda) -> None:
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    listen = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
    other = await _start_pool()
    try:
        foreign = await other.create_webrtc_server(listen_infos=listen)
        with pytest.raises(ValueError, match="another Mafalda"):
            await router.create_webrtc_transport(webrtc_server=foreign)
    finally:
        await other.aclose()
    assert foreign.closed  # with its pool ('workerclose')
    foreign.on("workerclose", lambda: pytest.fail("told twice"))
    foreign.mafalda_closed()
    server = await mafalda.create_webrtc_server(listen_infos=listen)
    assert mafalda.webrtc_servers == [server] and server.mafalda is mafalda
    assert repr(server) == f"<MafaldaWebRtcServer id={server.id} workers=0 closed=False>"
    await router.create_webrtc_transport(webrtc_server=server)
    gone = asyncio.Event()
    server.on("workerclose", gone.set)
    await mafalda.aclose()
    assert gone.is_set() and server.closed and mafalda.webrtc_servers == []
    with pytest.raises(InvalidStateError):
        await mafalda.create_webrtc_server(listen_infos=listen)


async def test_a_mafalda_webrtc_server_is_made_again_on_a_new_worker(mafalda: Mafalda) -> None:
    """The worker of a real WebRtcServer dies: its transports close, it is forgotten,
    and the next transport (on the replacement worker) makes a new one."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    server = await mafalda.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
    )
    first, second = await asyncio.gather(
        router.create_webrtc_transport(webrtc_server=server),
        router.create_webrtc_transport(webrtc_server=server),
    )
    ((pid, real),) = server.servers.items()  # two at once: one made
    assert first.ice_candidates[0]["port"] == second.ice_candidates[0]["port"]
    os.kill(pid, signal.SIGKILL)
    async with asyncio.timeout(10):
        while not (real.closed and first.closed):
            await asyncio.sleep(0.02)
        while not mafalda.workers or mafalda.workers[0].pid == pid:
            await asyncio.sleep(0.02)
    assert server.servers == {} and not server.closed
    again = await router.create_webrtc_transport(webrtc_server=server)
    assert list(server.servers) == [router.worker_of(again).pid] != [pid]


async def test_a_mafalda_webrtc_server_whose_worker_closes_as_it_is_made(
    mafalda: Mafalda,
) -> None:
    """The worker closes as its real WebRtcServer is being made: the transport fails
    (nothing kept of it), and the next one, on the replacement worker, works."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    server = await mafalda.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
    )
    (worker,) = mafalda.workers
    worker.observer.on("newwebrtcserver", lambda _: worker.close())
    with pytest.raises(InvalidStateError, match="closed"):
        await router.create_webrtc_transport(webrtc_server=server)
    assert server.servers == {} and not server.closed
    async with asyncio.timeout(10):
        while not mafalda.workers or mafalda.workers[0] is worker:
            await asyncio.sleep(0.02)
    transport = await router.create_webrtc_transport(webrtc_server=server)
    assert list(server.servers) == [router.worker_of(transport).pid]


@pytest.mark.parametrize("side", ["remote-mafalda"])
async def test_a_remote_mafalda_webrtc_server_is_the_clients_own(side: str) -> None:
    """Through Remote Mafalda: another client cannot use it, and it closes with the
    client's session (its transports with it)."""
    async with _pool(side, num_workers=1) as pool:
        assert pool.server is not None
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        server = await pool.api.create_webrtc_server(
            listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
        )
        transport = await router.create_webrtc_transport(webrtc_server=server)
        assert pool.api.webrtc_servers == [server]
        await _only_its_client_uses(pool, server, transport, closing=True)
        assert pool.inside.workers[0].webrtc_servers_for_testing == set()


@pytest.mark.parametrize("side", SIDES)
async def test_the_last_transport_closing_while_another_is_made_keeps_the_child(
    side: str,
) -> None:
    """The only transport on a worker closes while another is being made there (from
    the child router's own 'newtransport'): the child router stays for the new one,
    which works; it goes once that one closes too."""
    async with _pool(side, num_workers=1) as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        first = await router.create_plain_transport(listen_info=LISTEN)
        (worker,) = pool.inside.workers
        child = pool.served(router).child_router(worker)
        served_first = pool.served(first)
        child.observer.on(
            "newtransport", lambda t: None if t is served_first else served_first.close()
        )
        second = await router.create_direct_transport()
        assert served_first.closed and not pool.served(second).closed
        assert pool.served(router).child_router(worker) is child and not child.closed
        assert (await second.dump())["id"] == second.id
        second.close()
        async with asyncio.timeout(5):
            while not child.closed:
                await asyncio.sleep(0.02)


@pytest.mark.parametrize("side", SIDES)
async def test_a_failed_transport_leaves_no_idle_child(side: str) -> None:
    """A transport the worker refuses (its port taken) on a worker this router had no
    child on: the child router made for it goes too."""
    async with _pool(side, num_workers=1) as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
            taken.bind(("127.0.0.1", 0))
            port = taken.getsockname()[1]
            with pytest.raises(Exception, match=str(port)):
                await router.create_plain_transport(
                    listen_info={"protocol": "udp", "ip": "127.0.0.1", "port": port}
                )
        (worker,) = pool.inside.workers
        assert pool.served(router).child_router(worker) is None
        assert (await worker.dump())["routerIds"] == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("made", ["transport", "observer"])
@pytest.mark.parametrize("closer", ["itself", "child router", "worker"])
async def test_what_comes_closed_from_its_child_router_is_not_kept(
    side: str, made: str, closer: str
) -> None:
    """A listener of the child router's 'newtransport' ('newrtpobserver') closes what it
    makes, that child router or its worker, before the Mafalda router takes it: it comes
    closed, its close gone by unseen. The call fails with InvalidStateError, as a
    Router's does when its closing cuts one off, and nothing is kept: no closed
    transport (observer) listed, the child router made for it gone; the next one is made
    and freed as any. It used to be adopted: listed for good, and the worker's next
    child router never idle. (A worker killed as the answer arrives is not this hole:
    the child Router sees its close before it hands the object out, and raises.)"""
    async with _pool(side, num_workers=1, min_workers=1) as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        inside = pool.served(router)
        (worker,) = pool.inside.workers
        event = "newtransport" if made == "transport" else "newrtpobserver"
        method = "create_direct_transport" if made == "transport" else "create_audio_level_observer"
        listed = "transportIds" if made == "transport" else "rtpObserverIds"

        def hook(child: Any) -> None:
            def close(new: Any) -> None:
                {"itself": new.close, "child router": child.close, "worker": worker.close}[closer]()

            child.observer.once(event, close)

        worker.observer.once("newrouter", hook)
        with pytest.raises(InvalidStateError, match="closed as it was made"):
            await getattr(router, method)()
        dump = await router.dump()
        assert dump["transportIds"] == [] and dump["rtpObserverIds"] == []
        assert inside.child_routers == {}
        if closer != "worker":
            assert (await worker.dump())["routerIds"] == []
        again = await asyncio.wait_for(getattr(router, method)(), 10)
        assert not again.closed
        host = inside.worker_of(pool.served(again))
        assert (host is worker) == (closer != "worker")
        assert (await router.dump())[listed] == [again.id]
        again.close()
        await asyncio.wait_for(_until(lambda: inside.child_routers == {}), 5)
        assert (await host.dump())["routerIds"] == []


@pytest.mark.parametrize("made", ["producer", "consumer"])
async def test_a_producer_or_consumer_closed_before_the_router_sees_it_is_not_kept(
    made: str,
) -> None:
    """A listener the application put on a transport's 'newproducer' ('newconsumer')
    through its child router, so before the Mafalda router's own, closes the producer
    (the consumer of a producer of another worker) it is told of: the router hears of
    it closed. It is not kept: no closed producer listed nor holding its worker's child
    router, no pipe held for a closed consumer. (It used to be: the child router, the
    pipe, kept for good.)"""
    async with await Mafalda.start(
        num_workers=2, min_workers=2, worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        source_transport, source = await _audio_producer(router)
        m.policy = _Pinned(1)
        event = "newproducer" if made == "producer" else "newconsumer"
        first, second = m.workers
        second.observer.once(
            "newrouter",
            lambda child: child.observer.once(
                "newtransport",
                lambda transport: transport.observer.once(event, lambda new: new.close()),
            ),
        )
        transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
        assert router.worker_of(transport) is second
        if made == "producer":
            producer = await transport.produce(
                kind="audio", rtp_parameters=opus_rtp_parameters(4321, OPUS_PT)
            )
            assert producer.closed and not router.has_producer(producer.id)
        else:
            consumer = await transport.consume(
                producer_id=source.id, rtp_capabilities=router.rtp_capabilities
            )
            assert consumer.closed
            assert (await router.mafalda_dump())["pipes"] == []
        transport.close()
        assert router.child_router(second) is None
        assert list(router.child_routers) == [first.pid]
        source_transport.close()
        assert router.child_routers == {}


async def test_worker_closed_from_outside_leaves_the_pool(mafalda: Mafalda) -> None:
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_direct_transport()
    host = router.worker_of(transport)
    closed = asyncio.Event()
    transport.on("routerclose", closed.set)
    host.close()
    await asyncio.wait_for(closed.wait(), 5)
    assert host not in mafalda.workers
    # min_workers=1: a replacement is started.
    await asyncio.wait_for(_until(lambda: len(mafalda.workers) == 1), 10)
    assert router.transports_for_testing == {}
    again = await router.create_direct_transport()
    assert router.worker_of(again) in mafalda.workers


async def test_can_consume_update_codecs_and_close(pool: Pool) -> None:
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    inside = pool.served(router)
    _, producer = await _audio_producer(router)
    served_producer = pool.served(producer)
    assert router.can_consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    assert not router.can_consume(producer_id="nope", rtp_capabilities=router.rtp_capabilities)
    assert not router.can_consume(producer_id=producer.id, rtp_capabilities={"codecs": 1})  # type: ignore[typeddict-item]
    router.update_media_codecs(MEDIA_CODECS[:1])
    assert [c["mimeType"] for c in router.rtp_capabilities["codecs"]] == ["audio/opus"]
    events: list[str] = []
    router.observer.on("close", lambda: events.append("close"))
    router.close()
    router.close()
    assert events == ["close"] and producer.closed
    with pytest.raises(InvalidStateError):
        await router.create_plain_transport(listen_info=LISTEN)
    with pytest.raises(InvalidStateError):
        await router.dump()
    with pytest.raises(ValueError, match="not on this router"):
        inside.worker_of(served_producer)
    await pool.api.dump()  # a remote close() went before it
    assert inside.closed and pool.api.routers == []


@pytest.mark.parametrize("data", [False, True])
async def test_a_closed_source_is_not_consumed_through_its_copies(
    mafalda: Mafalda, data: bool
) -> None:
    """A (data) producer closed: its copy on another worker goes at once, not when the
    worker tells its pipe consumer, so a consume there right after fails (as of a closed
    Router's producer), and one of a new source with its id gets the new one."""
    router, near, far, _ = await _source_and_sink(mafalda, data)

    async def make() -> Any:
        if data:
            return await near.produce_data(id="stable", label="chat")
        return await near.produce(
            id="stable", kind="audio", rtp_parameters=opus_rtp_parameters(1234, OPUS_PT)
        )

    async def consume() -> Any:
        if data:
            return await far.consume_data(data_producer_id="stable")
        return await far.consume(producer_id="stable", rtp_capabilities=router.rtp_capabilities)

    first = await make()
    await consume()
    first.close()
    with pytest.raises(InvalidValueError, match="not found"):
        await consume()
    second = await make()
    consumer = await consume()
    await asyncio.sleep(0.1)
    assert not consumer.closed and not second.closed


async def _source_and_sink(mafalda: Mafalda, data: bool) -> tuple[Any, Any, Any, Worker]:
    """A router, a transport on the first worker (``near``: the sources) and one on the
    second (``far``: the consumers), and the second worker."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    near: Any = await (
        router.create_direct_transport()
        if data
        else router.create_plain_transport(listen_info=LISTEN, comedia=True)
    )
    mafalda.policy = _Pinned(1)
    far = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=data)
    return router, near, far, router.worker_of(far)


def _make_source(near: Any, data: bool, source_id: str, ssrc: int) -> Any:
    if data:
        return near.produce_data(id=source_id, label="chat")
    return near.produce(
        id=source_id, kind="audio", rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT)
    )


def _consume(router: Any, far: Any, data: bool, source_id: str) -> Any:
    if data:
        return far.consume_data(data_producer_id=source_id)
    return far.consume(producer_id=source_id, rtp_capabilities=router.rtp_capabilities)


@pytest.mark.parametrize("pair_ready", [True, False], ids=["pair-ready", "pair-opening"])
@pytest.mark.parametrize("data", [False, True], ids=["media", "data"])
async def test_a_source_closed_while_piped_leaves_no_pipe_for_a_new_one_with_its_id(
    mafalda: Mafalda, data: bool, pair_ready: bool
) -> None:
    """A (data) producer closes while its pipe to another worker is being opened (that
    worker held with SIGSTOP, in the making of the copy, or of the pipe pair): the pipe
    is dropped at once, its consume fails at once, and a new source with the same id
    consumed there meanwhile gets a pipe of its own (it joined the stale one, and failed
    with "original Producer closed" once that one was made)."""
    router, near, far, dst = await _source_and_sink(mafalda, data)
    if pair_ready:
        await _make_source(near, data, "other", 1111)
        await _consume(router, far, data, "other")
    first = await _make_source(near, data, "stable", 1234)
    key = pipe_key("stable", dst, data)
    os.kill(dst.pid, signal.SIGSTOP)
    try:
        stale = asyncio.ensure_future(_consume(router, far, data, "stable"))
        if pair_ready:  # the pipe consumer made, the copy being made on the held worker
            await asyncio.wait_for(
                _until(lambda: key in router._pipes and router._pipes[key].consumer), 5
            )
        else:
            await asyncio.wait_for(_until(lambda: router._pairs), 5)
        first.close()
        name = "DataProducer" if data else "Producer"
        with pytest.raises(InvalidStateError, match=f"original {name} closed"):
            await asyncio.wait_for(stale, 2)  # the worker still held
        assert key not in router._pipes
        second = await _make_source(near, data, "stable", 5678)
        fresh = asyncio.ensure_future(_consume(router, far, data, "stable"))
        await asyncio.wait_for(_until(lambda: key in router._pipes), 5)
    finally:
        os.kill(dst.pid, signal.SIGCONT)
    consumer = await asyncio.wait_for(fresh, 10)
    if data:
        assert consumer.data_producer_id == "stable"
    else:
        assert consumer.producer_id == "stable"
    await asyncio.sleep(0.1)
    assert not consumer.closed and not second.closed
    # One copy of "stable" on the far worker, the new source's, with its own id (the
    # stale one was closed there).
    dump = await router.child_router(dst).dump()
    table = "mapDataProducerIdDataConsumerIds" if data else "mapProducerIdConsumerIds"
    copies = {e["key"]: e["values"] for e in dump[table]}
    assert copies.pop("stable") == [consumer.id]
    assert list(copies) == (["other"] if pair_ready else [])


async def test_a_pipe_pair_opened_for_a_pipe_dropped_meanwhile_closes_once_open(
    mafalda: Mafalda,
) -> None:
    """A producer closes while its pipe waits for the pipe pair being opened (the far
    worker held with SIGSTOP): the pipe is dropped, and the pair, wanted by nothing
    else, closes once open instead of staying."""
    router, near, far, dst = await _source_and_sink(mafalda, False)
    first = await _make_source(near, False, "stable", 1234)
    os.kill(dst.pid, signal.SIGSTOP)
    try:
        stale = asyncio.ensure_future(_consume(router, far, False, "stable"))
        await asyncio.wait_for(_until(lambda: router._pairs), 5)
        (pair,) = router._pairs.values()
        first.close()
        with pytest.raises(InvalidStateError, match="original Producer closed"):
            await asyncio.wait_for(stale, 2)
        assert not pair.ready.done() and not pair.closed
    finally:
        os.kill(dst.pid, signal.SIGCONT)
    await asyncio.wait_for(_until(lambda: pair.closed), 5)
    assert not router._pairs and pair.transports
    assert all(transport.closed for transport in pair.transports.values())
    # The far worker keeps the consuming transport only.
    assert (await router.child_router(dst).dump())["transportIds"] == [far.id]


async def test_a_router_closed_as_a_pipe_of_a_closed_source_is_dropped(
    mafalda: Mafalda, caplog: pytest.LogCaptureFixture
) -> None:
    """The router closes right after a producer closed while its pipe was being opened
    (the far worker held with SIGSTOP, in the making of the copy): the consume fails,
    both workers are left with nothing, and no failure goes unretrieved ("exception was
    never retrieved" is logged by asyncio)."""
    router, near, far, dst = await _source_and_sink(mafalda, False)
    await _make_source(near, False, "other", 1111)
    await _consume(router, far, False, "other")  # the pipe pair
    first = await _make_source(near, False, "stable", 1234)
    key = pipe_key("stable", dst, False)
    os.kill(dst.pid, signal.SIGSTOP)
    try:
        stale = asyncio.ensure_future(_consume(router, far, False, "stable"))
        await asyncio.wait_for(
            _until(lambda: key in router._pipes and router._pipes[key].consumer), 5
        )
        pipe = router._pipes[key]
        pipe_consumer = pipe.consumer
        first.close()
        router.close()
        with pytest.raises(InvalidStateError, match="original Producer closed"):
            await asyncio.wait_for(stale, 2)
    finally:
        os.kill(dst.pid, signal.SIGCONT)
    assert pipe.closed and pipe_consumer.closed and not router._tasks
    for worker in mafalda.workers:
        assert (await worker.dump())["routerIds"] == []
    gc.collect()
    await asyncio.sleep(0)
    # (The workers may log refusals of closes racing their own: those are not ours.)
    assert not [r for r in caplog.records if not r.name.startswith("mafalda.mediasoup.worker")]


async def test_create_webrtc_servers_cancelled_leaves_none() -> None:
    """create_webrtc_servers() cancelled while one worker has made its server and the
    other (held with SIGSTOP) has not: neither is left (one closed here, the other by
    its cancelled creation)."""
    async with await Mafalda.start(
        num_workers=2, min_workers=2, worker_settings={"log_level": "warn"}
    ) as m:
        done, held = m.workers
        os.kill(held.pid, signal.SIGSTOP)
        try:
            making = asyncio.ensure_future(
                m.create_webrtc_servers(listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}])
            )
            await asyncio.wait_for(_until(lambda: done.webrtc_servers_for_testing), 5)
            making.cancel()
            with pytest.raises(asyncio.CancelledError):
                await making
        finally:
            os.kill(held.pid, signal.SIGCONT)
        for worker in (done, held):
            await asyncio.wait_for(_until(lambda w=worker: not w.webrtc_servers_for_testing), 5)
            assert (await worker.dump())["webRtcServerIds"] == []


async def test_codecs_updated_while_a_child_router_is_made(mafalda: Mafalda) -> None:
    """update_media_codecs() while the router's first transport on a worker makes its
    child router there (the worker held with SIGSTOP): the new child gets the new codecs."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS[:1])
    mafalda.policy = _Pinned(1)
    (await router.create_direct_transport()).close()  # the pool has its second worker
    worker = mafalda.workers[1]
    await asyncio.wait_for(_until(lambda: router.child_router(worker) is None), 5)
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        making = asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
        await asyncio.wait_for(_until(lambda: worker in router._child_futures), 5)
        router.update_media_codecs(MEDIA_CODECS)
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    transport = await asyncio.wait_for(making, 5)
    assert router.worker_of(transport) is worker
    assert router.child_router(worker).rtp_capabilities == router.rtp_capabilities
    vp8 = next(c for c in router.rtp_capabilities["codecs"] if c["mimeType"] == "video/VP8")
    producer = await transport.produce(
        kind="video",
        rtp_parameters={
            "codecs": [
                {
                    "mimeType": "video/VP8",
                    "payloadType": vp8["preferredPayloadType"],
                    "clockRate": 90000,
                }
            ],
            "encodings": [{"ssrc": 5555}],
        },
    )
    assert producer.kind == "video"


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


class _Pinned:
    """A placement policy for tests: the worker at ``index``, growing the pool to reach it."""

    def __init__(self, index: int) -> None:
        self.limits = Limits()
        self.index = index

    def choose(self, workers: Any, *, can_grow: bool) -> int:
        if len(workers) <= self.index:
            return -1
        return self.index


async def test_piped_copy_on_a_worker_hosting_the_id_gets_an_alias(mafalda: Mafalda) -> None:
    """Ids are unique per worker: room B piping back into room A's worker uses an alias."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    send_transport, producer = await _audio_producer(room_a)
    first, second = mafalda.workers[0], None
    mafalda.policy = _Pinned(1)
    await room_a.pipe_to_router(router=room_b, producer_id=producer.id)
    second = mafalda.workers[1]
    assert room_b.worker_of(producer) is second  # room B's copy, known by the original id
    # A consumer of room B on the first worker: piped from the second worker back into
    # the first, which already hosts that id (room A's original).
    mafalda.policy = _Pinned(0)
    transport = await room_b.create_plain_transport(listen_info=LISTEN)
    assert room_b.worker_of(transport) is first
    sock, counter = await _receiver()
    await transport.connect(ip="127.0.0.1", port=sock.get_extra_info("sockname")[1])
    consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=room_b.rtp_capabilities
    )
    assert consumer.producer_id == producer.id
    # Room B's dump knows the copy there by the original id too, its consumer included.
    dump = await room_b.dump()
    assert {"key": producer.id, "values": [consumer.id]} in dump["mapProducerIdConsumerIds"]
    assert dump["mapConsumerIdProducerId"] == [{"key": consumer.id, "value": producer.id}]
    await _send_rtp(send_transport, 1234, 30)
    await asyncio.wait_for(counter.arrived.wait(), 5)
    sock.close()
    consumer.close()
    await asyncio.sleep(0.05)
    assert (await room_b.mafalda_dump())["pipes"] == []


@pytest.mark.parametrize("data", [False, True])
async def test_pipe_into_a_mafalda_router_under_a_new_id(mafalda: Mafalda, data: bool) -> None:
    """keep_id=False: as mediasoup's, the target knows each copy by its new id only (the
    source's stays free there) and consumes it on any worker."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    original: Any
    if data:
        original = await (await room_a.create_direct_transport()).produce_data(label="chat")
        field, source = "pipeDataProducer", {"data_producer_id": original.id}
    else:
        _, original = await _audio_producer(room_a)
        field, source = "pipeProducer", {"producer_id": original.id}
    with pytest.raises(TypeError, match="keep_id must be a bool"):
        await room_a.pipe_to_router(router=room_b, keep_id=1, **source)
    first = (await room_a.pipe_to_router(router=room_b, keep_id=False, **source))[field]
    second = (await room_a.pipe_to_router(router=room_b, keep_id=False, **source))[field]
    assert len({original.id, first.id, second.id}) == 3
    assert room_b.worker_of(first) is room_b.worker_of(second) is mafalda.workers[0]
    has = room_b.has_data_producer if data else room_b.has_producer
    assert has(first.id) and has(second.id) and not has(original.id)
    mafalda.policy = _Pinned(1)
    if data:
        far: Any = await room_b.create_direct_transport()
        consumer: Any = await far.consume_data(data_producer_id=first.id)
        assert consumer.data_producer_id == first.id
    else:
        far = await room_b.create_plain_transport(listen_info=LISTEN)
        consumer = await far.consume(producer_id=first.id, rtp_capabilities=room_b.rtp_capabilities)
        assert consumer.producer_id == first.id
    assert room_b.worker_of(far) is mafalda.workers[1]
    first.close()
    await asyncio.wait_for(_until(lambda: consumer.closed), 5)
    assert not has(first.id) and has(second.id)
    # Keeping the id on the source's own worker: the copy there needs another, and the
    # target knows it by the source's.
    mafalda.policy = _Pinned(0)
    kept = (await room_a.pipe_to_router(router=room_b, **source))[field]
    assert kept.id != original.id and has(original.id)
    assert room_b.worker_of(kept) is mafalda.workers[0]


async def test_two_rooms_piping_one_id_into_a_worker_at_once() -> None:
    """Room A's producer and room B's copy of it (pipe_to_router keeps the id) are both
    piped into a third worker at once: the first copy takes the id there, the second an
    alias, instead of the worker refusing it. The third worker is held with SIGSTOP so that
    both copies are being made together."""
    async with await Mafalda.start(
        num_workers=3, min_workers=3, worker_settings={"log_level": "warn"}
    ) as m:
        room_a = await m.create_router(media_codecs=MEDIA_CODECS)
        room_b = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        _, producer = await _audio_producer(room_a)
        _, other_a = await _audio_producer(room_a, ssrc=2222)
        m.policy = _Pinned(1)
        await room_a.pipe_to_router(router=room_b, producer_id=producer.id)
        _, other_b = await _audio_producer(room_b, ssrc=3333)
        m.policy = _Pinned(2)
        third = m.workers[2]
        a = await room_a.create_plain_transport(listen_info=LISTEN)
        b = await room_b.create_plain_transport(listen_info=LISTEN)
        # The pipe pairs into the third worker are open already: what follows only makes
        # copies there.
        await a.consume(producer_id=other_a.id, rtp_capabilities=room_a.rtp_capabilities)
        await b.consume(producer_id=other_b.id, rtp_capabilities=room_a.rtp_capabilities)
        key = ("media", producer.id, third)
        os.kill(third.pid, signal.SIGSTOP)
        try:
            consumes = [
                asyncio.ensure_future(
                    t.consume(producer_id=producer.id, rtp_capabilities=room_a.rtp_capabilities)
                )
                for t in (a, b)
            ]
            await asyncio.wait_for(
                _until(
                    lambda: all(
                        key in r._pipes and r._pipes[key].consumer is not None
                        for r in (room_a, room_b)
                    )
                ),
                5,
            )
        finally:
            os.kill(third.pid, signal.SIGCONT)
        for consumer in await asyncio.wait_for(asyncio.gather(*consumes), 5):
            assert consumer.producer_id == producer.id
        ids = {room_a._pipes[key].producer.id, room_b._pipes[key].producer.id}
        assert producer.id in ids and len(ids) == 2


async def test_observer_watching_a_copy_with_an_alias_holds_its_pipe(mafalda: Mafalda) -> None:
    """An observer on a worker that hosts the id already (room B's copy) watches room A's
    producer through a copy under an alias: the observer holds that pipe open."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    _, producer = await _audio_producer(room_a)
    mafalda.policy = _Pinned(1)
    await room_a.pipe_to_router(router=room_b, producer_id=producer.id)
    observer = await room_a.create_audio_level_observer()
    assert room_a.worker_of(observer) is mafalda.workers[1]
    await observer.add_producer(producer_id=producer.id)
    await asyncio.sleep(0.05)
    assert len((await room_a.mafalda_dump())["pipes"]) == 1
    assert {"key": producer.id, "values": [observer.id]} in (await room_a.dump())[
        "mapProducerIdObserverIds"
    ]
    await observer.remove_producer(producer_id=producer.id)
    assert (await room_a.mafalda_dump())["pipes"] == []


@pytest.mark.parametrize("target", ["router", "mafalda-router"])
async def test_pipe_to_router_of_data_returns_once_the_pair_sctp_is_up(
    worker: Worker, target: str
) -> None:
    """A MafaldaRouter's pipe_to_router(data_producer_id=...) into a router of another
    worker (a Router, a MafaldaRouter of another pool) returns once the pair's SCTP
    association is up: the worker drops what is sent before (mediasoup's pipeToRouter()
    does not wait). The association is held: the destination worker is stopped until
    the pipe consumer is made (the pair's first data stream, which starts it), then the
    source worker until the copy is made."""
    source_pool = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
    target_pool = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
    (source_worker,), (target_worker,) = source_pool.workers, target_pool.workers
    try:
        room = await source_pool.create_router(media_codecs=MEDIA_CODECS)
        _, producer = await _audio_producer(room)
        data_producer = await (await room.create_direct_transport()).produce_data()
        other: Any = await (
            worker.create_router(media_codecs=MEDIA_CODECS)
            if target == "router"
            else target_pool.create_router(media_codecs=MEDIA_CODECS)
        )
        await room.pipe_to_router(router=other, producer_id=producer.id)  # the pair, no SCTP
        child = room.child_router(source_worker)
        assert child is not None
        target_child = other if target == "router" else other.child_router(target_worker)
        local = child._pipe_pairs[target_child.id].result()[child.id]
        assert local.sctp_state == "new"
        far_pid = worker.pid if target == "router" else target_worker.pid

        def hold(consumer: Any) -> None:
            os.kill(source_worker.pid, signal.SIGSTOP)
            os.kill(far_pid, signal.SIGCONT)

        local.observer.once("newdataconsumer", hold)
        os.kill(far_pid, signal.SIGSTOP)
        try:
            piping = asyncio.ensure_future(
                room.pipe_to_router(router=other, data_producer_id=data_producer.id)
            )
            await asyncio.wait_for(
                _until(lambda: target_child.has_data_producer(data_producer.id)), 5
            )
            await asyncio.sleep(0.1)
            assert not piping.done()  # the copy is made, the association is not up
        finally:
            os.kill(far_pid, signal.SIGCONT)
            os.kill(source_worker.pid, signal.SIGCONT)
        result = await asyncio.wait_for(piping, 5)
        assert local.sctp_state == "connected"
        sink = await other.create_direct_transport()
        data_consumer = await sink.consume_data(data_producer_id=data_producer.id)
        received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        data_consumer.on("message", lambda m, ppid: received.done() or received.set_result(m))
        data_producer.send("at once")
        assert await asyncio.wait_for(received, 5) == b"at once"
        assert result["pipeDataProducer"].id == data_producer.id
    finally:
        await source_pool.aclose()
        await target_pool.aclose()


async def test_sctp_connected_waits_for_the_association(worker: Worker) -> None:
    # Two workers, as Mafalda's pipes (two SCTP ends in one worker never connect).
    other_worker = await create_worker()
    try:
        await _sctp_connected_cases(
            await worker.create_router(media_codecs=MEDIA_CODECS),
            await other_worker.create_router(media_codecs=MEDIA_CODECS),
        )
    finally:
        other_worker.close()
        await other_worker.wait_closed()


async def _sctp_connected_cases(router: Any, other: Any) -> None:
    from mafalda.vertical.spanning import sctp_connected

    a = await router.create_pipe_transport(listen_info=LISTEN, enable_sctp=True)
    b = await other.create_pipe_transport(listen_info=LISTEN, enable_sctp=True)
    waiting = asyncio.ensure_future(sctp_connected(a))
    await a.connect(ip="127.0.0.1", port=b.tuple["localPort"])
    await b.connect(ip="127.0.0.1", port=a.tuple["localPort"])
    await asyncio.sleep(0.05)
    # Connected transports, but no association yet: the worker starts it with the first
    # SCTP stream.
    assert not waiting.done()
    source = await (await router.create_direct_transport()).produce_data()
    await a.consume_data(data_producer_id=source.id)
    await asyncio.wait_for(waiting, 5)
    assert a.sctp_state == "connected"
    await sctp_connected(a)  # connected already: at once
    # A transport that closes while waited for fails the wait at once.
    c = await router.create_pipe_transport(listen_info=LISTEN, enable_sctp=True)
    waiting = asyncio.ensure_future(sctp_connected(c))
    await asyncio.sleep(0)
    c.close()
    with pytest.raises(InvalidStateError, match="closed"):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(InvalidStateError, match="closed"):
        await sctp_connected(c)
    # And one that never connects: TimeoutError, its listeners gone.
    d = await router.create_pipe_transport(listen_info=LISTEN, enable_sctp=True)
    with pytest.raises(TimeoutError):
        await sctp_connected(d, timeout=0.05)
    assert d.observer.listener_count("sctpstatechange") == 0
    assert d.observer.listener_count("close") == 0


async def _far_consume_under_way(
    pool: Pool, data: bool
) -> tuple[MafaldaRouter, Any, PlainTransport, asyncio.Future[Any]]:
    """A (data) producer, a transport on the other worker, and a consume there that has
    just started opening the pipe between the two workers."""
    router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
    if data:
        source_transport: Any = await router.create_direct_transport()
        original: Any = await source_transport.produce_data(label="chat")
    else:
        _, original = await _audio_producer(router)
    for _ in range(4):  # until placement picks the other worker
        far = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=data)
        if pool.worker_of(router, far) is not pool.worker_of(router, original):
            break
    assert pool.worker_of(router, far) is not pool.worker_of(router, original)
    if data:
        attempt = asyncio.ensure_future(far.consume_data(data_producer_id=original.id))
    else:
        attempt = asyncio.ensure_future(
            far.consume(producer_id=original.id, rtp_capabilities=router.rtp_capabilities)
        )
    await asyncio.sleep(0)  # the pipe is on its way
    return router, original, far, attempt


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("data", [False, True])
async def test_original_closed_while_its_pipe_opens_fails_the_consume_and_frees_the_pipe(
    data: bool, side: str
) -> None:
    """The consume waits for a pipe from the original's worker; the original goes away
    meanwhile: the consume fails with an error, and the half-made pipe is torn down."""
    async with _pool(side, num_workers=2, max_units_per_worker=2) as pool:
        router, original, far, attempt = await _far_consume_under_way(pool, data)
        original.close()
        with pytest.raises(InvalidStateError, match="original (Data)?Producer closed"):
            await attempt
        await router.dump()  # a remote close() went before it
        dump = await pool.mafalda_dump(router)
        assert dump["pipes"] == []
        assert all(info["pipeTransports"] == 0 for info in dump["workers"].values())
        served = pool.served(far)
        assert served.consumers == {} and served.data_consumers == {}


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("victim_side", ["original", "far"])
async def test_worker_killed_while_a_pipe_opens_fails_the_consume_promptly(
    victim_side: str, side: str
) -> None:
    """A worker at either end of a pipe being opened dies: the consume waiting for the
    pipe fails with an error (it does not hang), and the router keeps working."""
    async with _pool(side, num_workers=2, min_workers=2, policy="spread") as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        send_transport, producer = await _audio_producer(router)
        for _ in range(4):
            far = await router.create_plain_transport(listen_info=LISTEN)
            if pool.worker_of(router, far) is not pool.worker_of(router, producer):
                break
        assert pool.worker_of(router, far) is not pool.worker_of(router, producer)
        victim = pool.worker_of(router, producer if victim_side == "original" else far)
        attempt = asyncio.ensure_future(
            far.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        )
        await asyncio.sleep(0)  # the pipe is on its way
        os.kill(victim.pid, signal.SIGKILL)
        # The pipe's requests to the dead worker are aborted ("channel closed"), or the
        # death is seen before they go ("Worker closed", "Router closed", a transport's):
        # which comes first depends on the loop and the machine's load. Through the remote
        # link the server may even see the death before the consume arrives, the
        # producer gone with its worker: 'not found', as for any unknown producer.
        expected: tuple[type[Exception], ...] = (InvalidStateError,)
        if side != "mafalda" and victim_side == "original":
            expected = (InvalidStateError, ValueError)
        with pytest.raises(expected, match="closed|not found"):
            await asyncio.wait_for(attempt, 5)
        # The router goes on: a new producer and a consumer on another worker.
        await asyncio.wait_for(victim.wait_closed(), 5)
        source, again = await _audio_producer(router, ssrc=4321)
        for _ in range(4):
            sink = await router.create_plain_transport(listen_info=LISTEN)
            if pool.worker_of(router, sink) is not pool.worker_of(router, again):
                break
        consumer = await sink.consume(
            producer_id=again.id, rtp_capabilities=router.rtp_capabilities
        )
        assert consumer.producer_id == again.id and not consumer.closed


@pytest.mark.parametrize("victim_side", ["original", "far"])
async def test_worker_killed_while_a_data_pipe_waits_for_its_sctp_fails_at_once(
    victim_side: str,
) -> None:
    """The consume_data() of a data pipe waits for the pair's SCTP association, held (the
    original's worker stopped once the pipe consumer is made, so the far worker's answer
    to its INIT goes unanswered); a worker at either end dies: the consume fails at once,
    not at the end of the wait's timeout, and neither end's wait is left running (the
    pair closes with either transport, which ends the other's wait too)."""
    async with _pool("mafalda", num_workers=2, min_workers=2, policy="spread") as pool:
        router = await pool.api.create_router(media_codecs=MEDIA_CODECS)
        source = await router.create_direct_transport()
        data_producer = await source.produce_data()
        home = router.worker_of(data_producer)
        for _ in range(4):
            far = await router.create_direct_transport()
            if router.worker_of(far) is not home:
                break
        dst = router.worker_of(far)
        assert dst is not home
        # A media pipe first: the pair is open, its SCTP association not started.
        _, producer = await _audio_producer(router)
        sink = far if router.worker_of(producer) is home else source
        await sink.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        child = router.child_router(home)
        assert child is not None
        transports = child.transports_for_testing.values()
        (local,) = [t for t in transports if isinstance(t, PipeTransport)]
        assert local.sctp_state == "new"
        victim = router.worker_of(data_producer if victim_side == "original" else far)
        survivor = dst if victim is home else home
        held = asyncio.get_running_loop().create_future()

        def hold(consumer: Any) -> None:
            os.kill(home.pid, signal.SIGSTOP)
            os.kill(dst.pid, signal.SIGCONT)
            held.set_result(None)

        local.observer.once("newdataconsumer", hold)
        os.kill(dst.pid, signal.SIGSTOP)
        try:
            attempt = asyncio.ensure_future(far.consume_data(data_producer_id=data_producer.id))
            await asyncio.wait_for(held, 5)
            copy = pipe_key(data_producer.id, dst, True)
            await asyncio.wait_for(_until(lambda: router._pipes[copy].producer is not None), 5)
            assert not attempt.done()  # waiting for the association
            os.kill(victim.pid, signal.SIGKILL)
            os.kill(survivor.pid, signal.SIGCONT)
            with pytest.raises(InvalidStateError, match="closed"):
                await asyncio.wait_for(attempt, 2)
        finally:
            for worker in (home, dst):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGCONT)
        waits = [t for t in asyncio.all_tasks() if "sctp_connected" in repr(t.get_coro())]
        assert waits == []


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("data", [False, True])
async def test_original_paused_while_its_pipe_opens_reaches_the_far_consumer(
    data: bool, side: str
) -> None:
    """A producer paused while a consumer on another worker waits for its pipe: that
    consumer ends up seeing it paused (and resumed after), as a local one would."""
    async with _pool(side, num_workers=2, max_units_per_worker=2) as pool:
        router, original, far, attempt = await _far_consume_under_way(pool, data)
        await original.pause()
        consumer = await asyncio.wait_for(attempt, 5)
        paused = "data_producer_paused" if data else "producer_paused"
        async with asyncio.timeout(5):
            while not getattr(consumer, paused):
                await asyncio.sleep(0.01)
        await original.resume()
        async with asyncio.timeout(5):
            while getattr(consumer, paused):
                await asyncio.sleep(0.01)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("closing", ["router", "far transport"])
async def test_closed_while_a_pipe_opens_fails_the_consume_and_frees_everything(
    closing: str, side: str
) -> None:
    """The router, or the transport that consumes, closes while the consume waits for its
    pipe: the consume fails with InvalidStateError (no hang, no stray error) and no
    pipe or child router is left on the workers."""
    async with _pool(side, num_workers=2, max_units_per_worker=2) as pool:
        router, original, far, attempt = await _far_consume_under_way(pool, data=False)
        served_router = pool.served(router)
        (router if closing == "router" else far).close()
        with pytest.raises(InvalidStateError, match="closed"):
            await asyncio.wait_for(attempt, 5)
        await pool.api.dump()  # a remote close() went before it
        if closing == "router":
            for worker in pool.inside.workers:
                assert (await worker.dump())["routerIds"] == []
        else:
            assert far.closed and not original.closed
            dump = await served_router.mafalda_dump()
            assert dump["pipes"] == []
            assert all(info["pipeTransports"] == 0 for info in dump["workers"].values())


async def test_router_closed_while_a_transport_is_being_placed() -> None:
    """The first transport of a router makes its child router on a worker; the router
    closes meanwhile: the creation fails with InvalidStateError (not CancelledError),
    and the child router made in the worker is closed, not left behind."""
    async with await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"}) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        attempt = asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
        await asyncio.sleep(0)  # the child router is being made
        router.close()
        with pytest.raises(InvalidStateError, match="Router closed"):
            await asyncio.wait_for(attempt, 5)
        (worker,) = m.workers
        assert (await worker.dump())["routerIds"] == []


async def test_worker_killed_while_a_transport_is_being_placed_on_it() -> None:
    """The worker chosen for a router's first transport dies while the child router is
    made there: the creation fails with InvalidStateError, and the next one is placed on
    the replacement worker."""
    async with await Mafalda.start(
        num_workers=1, min_workers=1, worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        (victim,) = m.workers
        replaced: asyncio.Future[Worker] = asyncio.get_running_loop().create_future()
        m.on("workerreplaced", replaced.set_result)
        attempt = asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
        await asyncio.sleep(0)  # the child router is being made on the victim
        os.kill(victim.pid, signal.SIGKILL)
        with pytest.raises(InvalidStateError, match="closed"):
            await asyncio.wait_for(attempt, 5)
        new_worker = await asyncio.wait_for(replaced, 10)
        transport = await router.create_plain_transport(listen_info=LISTEN)
        assert router.worker_of(transport) is new_worker


@pytest.mark.parametrize("grows", [False, True])
async def test_a_lost_worker_is_replaced_once_whatever_placement_does(grows: bool) -> None:
    """A transport placed right after a worker died, before its replacement started: a
    full pool does not grow past num_workers for it; a pool that may grow does, and then
    the replacement is not needed."""
    async with await Mafalda.start(
        num_workers=3 if grows else 2,
        min_workers=2,
        policy="spread",
        worker_settings={"log_level": "warn"},
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        victim, survivor = m.workers
        # One transport on each worker: "spread" wants a new worker from then on.
        await router.create_direct_transport()
        await router.create_direct_transport()
        replaced: list[Worker] = []
        m.on("workerreplaced", replaced.append)
        placed: list[asyncio.Future[PlainTransport]] = []
        if grows:
            m.policy = _Pinned(2)  # a new worker each time the pool may grow
        # From the 'workerdied' handler: placed before the replacement starts.
        m.on(
            "workerdied",
            lambda loss: placed.append(
                asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
            ),
        )
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda: placed), 5)
        transport = await asyncio.wait_for(placed[0], 10)
        await asyncio.wait_for(_until(lambda: m._replacing == 0), 10)
        assert len(m.workers) == 2 and victim not in m.workers
        if grows:
            assert replaced == [] and router.worker_of(transport) not in (victim, survivor)
        else:
            assert router.worker_of(transport) is survivor and replaced == [m.workers[1]]


@pytest.mark.parametrize("policy", ["concentrate", "spread"])
async def test_a_placement_while_the_only_worker_is_replaced_waits_for_it(policy: str) -> None:
    """The pool's one worker died and its replacement is starting: a transport placed
    meanwhile waits for it (the pool may not grow past num_workers, and refusing would
    fail every creation for as long as a worker takes to start)."""
    async with await Mafalda.start(
        num_workers=1, min_workers=1, policy=policy, worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        (victim,) = m.workers
        placed: list[asyncio.Future[Any]] = []
        m.on(
            "workerdied",
            lambda loss: placed.append(asyncio.ensure_future(router.create_direct_transport())),
        )
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda: placed), 5)
        transport = await asyncio.wait_for(placed[0], 10)
        (replacement,) = m.workers
        assert replacement is not victim and router.worker_of(transport) is replacement


async def _split(m: Mafalda, data: bool) -> tuple[MafaldaRouter, Any, PlainTransport]:
    """A router of ``m`` with a (data) producer on the first worker and a transport on
    the second, where consuming it needs a pipe."""
    router = await m.create_router(media_codecs=MEDIA_CODECS)
    m.policy = _Pinned(0)
    original: Any
    if data:
        original = await (await router.create_direct_transport()).produce_data(label="chat")
    else:
        _, original = await _audio_producer(router)
    m.policy = _Pinned(1)
    far = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=data)
    assert router.worker_of(far) is not router.worker_of(original)
    return router, original, far


def _on_pipe_stage(router: MafaldaRouter, home: Worker, stage: str, callback: Any) -> None:
    """Call ``callback`` (synchronously) when a pipe out of ``home`` reaches ``stage``:
    'pair' (a pipe transport of the pair made there, the pair not connected yet) or
    'consumer' / 'dataconsumer' (the pipe's consumer made there, its copy on the other
    worker not yet)."""
    child = router.child_router(home)
    assert child is not None

    def new_transport(transport: Any) -> None:
        if not isinstance(transport, PipeTransport):
            return
        if stage == "pair":
            callback()
        else:
            transport.observer.on(f"new{stage}", lambda _consumer: callback())

    child.observer.on("newtransport", new_transport)


def _far_consume(router: MafaldaRouter, far: PlainTransport, original: Any) -> asyncio.Future[Any]:
    if isinstance(original, Producer):
        return asyncio.ensure_future(
            far.consume(producer_id=original.id, rtp_capabilities=router.rtp_capabilities)
        )
    return asyncio.ensure_future(far.consume_data(data_producer_id=original.id))


async def test_router_closed_while_the_pipe_transports_open(mafalda: Mafalda) -> None:
    """The router closes while the pipe transport pair between two workers is being made
    for a consume: the consume fails with InvalidStateError, the router's own tasks end
    cancelled (no error left that nobody retrieves), and no router is left on the workers."""
    router, producer, far = await _split(mafalda, data=False)
    opening = asyncio.Event()
    _on_pipe_stage(router, router.worker_of(producer), "pair", opening.set)
    attempt = _far_consume(router, far, producer)
    await asyncio.wait_for(opening.wait(), 5)
    tasks = set(router._tasks)
    assert tasks  # the pipe and its pair being opened
    router.close()
    with pytest.raises(InvalidStateError, match="Router closed"):
        await asyncio.wait_for(attempt, 5)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results), results
    for worker in mafalda.workers:
        assert (await worker.dump())["routerIds"] == []


@pytest.mark.parametrize("data", [False, True])
async def test_original_closed_once_its_pipe_consumer_exists(mafalda: Mafalda, data: bool) -> None:
    """The original (data) producer closes after its pipe consumed it but before the copy
    on the other worker exists: the consume fails with InvalidStateError, and neither the
    pipe nor the half-made copy is left."""
    router, original, far = await _split(mafalda, data)
    home = router.worker_of(original)
    _on_pipe_stage(router, home, "dataconsumer" if data else "consumer", original.close)
    attempt = _far_consume(router, far, original)
    with pytest.raises(InvalidStateError, match="original (Data)?Producer closed"):
        await asyncio.wait_for(attempt, 5)
    dump = await router.mafalda_dump()
    assert dump["pipes"] == []
    assert all(info["pipeTransports"] == 0 for info in dump["workers"].values())
    assert far.consumers == {} and far.data_consumers == {}
    (far_child,) = (c for w, c in router._children.items() if w is not home)
    for transport in far_child.transports_for_testing.values():
        assert transport.producers == {} and transport.data_producers == {}


async def test_producer_paused_while_its_copy_is_made_reaches_the_far_consumer(
    mafalda: Mafalda,
) -> None:
    """The producer pauses after its pipe consumer exists (made unpaused) and before the
    copy on the other worker is made: the copy is paused too, so the far consumer starts
    paused. The other worker is held with SIGSTOP so that the pause lands in between."""
    router, producer, far = await _split(mafalda, data=False)
    home = router.worker_of(producer)
    (dst,) = (w for w in mafalda.workers if w is not home)
    held = asyncio.Event()

    def hold() -> None:
        os.kill(dst.pid, signal.SIGSTOP)
        held.set()

    _on_pipe_stage(router, home, "consumer", hold)
    attempt = _far_consume(router, far, producer)
    try:
        await asyncio.wait_for(held.wait(), 5)
        await producer.pause()
    finally:
        os.kill(dst.pid, signal.SIGCONT)
    consumer = await asyncio.wait_for(attempt, 5)
    assert consumer.producer_paused is True
    await producer.resume()
    await asyncio.wait_for(_until(lambda: not consumer.producer_paused), 5)


async def test_a_pipe_pair_closed_while_the_copy_pause_syncs_fails_the_consume(
    mafalda: Mafalda,
) -> None:
    """The producer pauses while its copy is made unpaused (the far worker held with
    SIGSTOP), so the opening pauses the copy last; the pipe pair closes while that pause
    is answered (the far worker held again): the consume fails with InvalidStateError,
    not in the worker on a copy already closed, and nothing is left of the pipe; a new
    consume makes a new one, and once all is closed no child router is left."""
    router, producer, far = await _split(mafalda, data=False)
    home = router.worker_of(producer)
    dst = router.worker_of(far)
    key = pipe_key(producer.id, dst, False)
    held = asyncio.Event()
    holds = 2  # (the hooks stay: the new pipe at the end must go unheld)

    def hold() -> None:
        nonlocal holds
        if holds:
            holds -= 1
            os.kill(dst.pid, signal.SIGSTOP)
            held.set()

    def hold_copy(transport: Any) -> None:
        if isinstance(transport, PipeTransport):  # the copy made: its pause comes next
            transport.observer.on("newproducer", lambda _copy: hold())

    _on_pipe_stage(router, home, "consumer", hold)
    far_child = router.child_router(dst)
    assert far_child is not None
    far_child.observer.on("newtransport", hold_copy)
    attempt = _far_consume(router, far, producer)
    try:
        await asyncio.wait_for(held.wait(), 5)
        await producer.pause()  # the copy's produce sent unpaused, not answered yet
        held.clear()
        os.kill(dst.pid, signal.SIGCONT)
        await asyncio.wait_for(held.wait(), 5)  # the copy's pause sent, not answered
        pipe = router._pipes[key]
        assert pipe.producer is not None and not pipe.ready.done()
        assert pipe.pair is not None
        pipe.pair.transports[home].close()
        assert pipe.closed
    finally:
        os.kill(dst.pid, signal.SIGCONT)
    with pytest.raises(InvalidStateError, match="closed"):
        await asyncio.wait_for(attempt, 5)
    dump = await router.mafalda_dump()
    assert dump["pipes"] == [] and dump["pipeTransportPairs"] == []
    assert all(info["pipeTransports"] == 0 for info in dump["workers"].values())
    assert far.consumers == {}
    assert (await router.child_router(dst).dump())["transportIds"] == [far.id]
    consumer = await asyncio.wait_for(_far_consume(router, far, producer), 5)
    assert consumer.producer_id == producer.id and consumer.producer_paused
    far.close()
    for transport in list(router.child_router(home).transports_for_testing.values()):
        transport.close()
    await asyncio.wait_for(_until(lambda: not router._children), 5)
    for worker in (home, dst):
        assert (await worker.dump())["routerIds"] == []


async def test_worker_closed_once_a_pipe_consumer_exists(mafalda: Mafalda) -> None:
    """The far worker is closed from outside after the pipe consumed the producer, before
    the copy exists there: the consume fails with InvalidStateError, the pipe's consumer
    on the producer's worker is closed with it, and the router goes on (the pool starts
    a new worker for the next far transport)."""
    router, producer, far = await _split(mafalda, data=False)
    home = router.worker_of(producer)
    (dst,) = (w for w in mafalda.workers if w is not home)
    _on_pipe_stage(router, home, "consumer", dst.close)
    attempt = _far_consume(router, far, producer)
    with pytest.raises(InvalidStateError, match="closed"):
        await asyncio.wait_for(attempt, 5)
    dump = await router.mafalda_dump()
    assert dump["pipes"] == [] and dump["pipeTransportPairs"] == []
    assert list(dump["workers"]) == [home.pid]
    assert dump["workers"][home.pid]["consumers"] == 0
    again = await router.create_plain_transport(listen_info=LISTEN)
    assert router.worker_of(again) not in (home, dst)
    consumer = await again.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert consumer.producer_id == producer.id


class _Fixed:
    """A placement policy that may break its contract: always ``choice``, GROW (-1)
    included even when the pool cannot grow."""

    def __init__(self, choice: int) -> None:
        self.limits = Limits()
        self.choice = choice

    def choose(self, workers: Any, *, can_grow: bool) -> int:
        return self.choice


async def test_policy_instance_and_its_contract() -> None:
    """A PlacementPolicy object is used as given; one that asks for a new worker in a full
    pool, or for a worker that is not there, gets a clear error (not a hang)."""
    policy = SpreadPolicy(Limits(max_units_per_worker=1))
    async with await Mafalda.start(
        num_workers=1, policy=policy, worker_settings={"log_level": "warn"}
    ) as m:
        assert m.policy is policy
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Fixed(-1)
        with pytest.raises(ValueError, match="placement policy .* full pool"):
            await asyncio.wait_for(router.create_direct_transport(), 5)
        for wrong in (1, -2):
            m.policy = _Fixed(wrong)
            with pytest.raises(ValueError, match=f"placement policy chose worker {wrong} of 1"):
                await router.create_direct_transport()
        assert len(m.workers) == 1 and router.transports_for_testing == {}


async def test_concurrent_placements_grow_the_pool_once() -> None:
    """Two transports placed at once on a worker not started yet: the pool grows by one
    worker, which both get (the second sees the first's growth and chooses again)."""
    async with await Mafalda.start(
        num_workers=3, min_workers=1, worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(1)
        a, b = await asyncio.gather(
            router.create_direct_transport(), router.create_direct_transport()
        )
        assert len(m.workers) == 2
        assert router.worker_of(a) is router.worker_of(b) is m.workers[1]


async def test_worker_closed_as_a_child_router_is_made_on_it(mafalda: Mafalda) -> None:
    """The worker chosen for a router's first transport is closed from outside right as
    the child router is made there: the creation fails with InvalidStateError, the closed
    child is not kept (the router's dump still works), and the next transport is placed
    on the worker that replaces it."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    (victim,) = mafalda.workers
    victim.observer.on("newrouter", lambda _router: victim.close())
    replaced = asyncio.Event()
    mafalda.observer.on("newworker", lambda _worker: replaced.set())
    with pytest.raises(InvalidStateError, match="closed"):
        await router.create_direct_transport()
    assert router.child_routers == {}
    assert (await router.dump())["transportIds"] == []
    await asyncio.wait_for(replaced.wait(), 10)
    transport = await router.create_direct_transport()
    assert router.worker_of(transport) in mafalda.workers
    assert router.worker_of(transport) is not victim


async def test_workers_lost_above_min_workers_are_not_replaced() -> None:
    """A pool above min_workers that loses a worker (killed, or closed from outside)
    reports it and goes on with the others: no replacement is started."""
    async with await Mafalda.start(
        num_workers=3, min_workers=1, policy="spread", worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        transports = [await router.create_direct_transport() for _ in range(3)]
        killed, closed, kept = (router.worker_of(t) for t in transports)
        assert len({killed, closed, kept}) == 3
        losses: asyncio.Future[WorkerLoss] = asyncio.get_running_loop().create_future()
        m.on("workerdied", losses.set_result)
        os.kill(killed.pid, signal.SIGKILL)
        loss = await asyncio.wait_for(losses, 5)
        assert loss["pid"] == killed.pid and loss["transports"] == [transports[0].id]
        assert m.workers == [closed, kept] and m._replacing == 0
        closed.close()
        assert m.workers == [kept] and m._replacing == 0
        assert list(router.transports_for_testing) == [transports[2].id]


async def test_a_dead_worker_reports_the_application_webrtc_servers_it_took() -> None:
    """A worker dies holding a WebRtcServer of the application's own (create_webrtc_servers())
    and a MafaldaWebRtcServer's real one: the loss lists the former (closed, with
    'workerclose' and observer 'close', as mediasoup's on its worker's close), its
    transport too; not the latter, whose MafaldaWebRtcServer lives on. The other
    worker's server stays open."""
    async with await Mafalda.start(
        num_workers=2, min_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        listen: Any = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
        servers = await m.create_webrtc_servers(listen_infos=listen)
        victim, survivor = m.workers
        server, other = servers[victim.pid], servers[survivor.pid]
        pinned = await router.create_webrtc_transport(webrtc_server=server)
        spanning = await m.create_webrtc_server(listen_infos=listen)
        placed = [await router.create_webrtc_transport(webrtc_server=spanning) for _ in range(2)]
        assert {router.worker_of(t) for t in placed} == {victim, survivor}
        assert set(spanning.servers) == {victim.pid, survivor.pid}
        events: list[str] = []
        server.on("workerclose", lambda: events.append("workerclose"))
        server.observer.on("close", lambda: events.append("observer close"))
        losses: asyncio.Future[WorkerLoss] = asyncio.get_running_loop().create_future()
        m.on("workerdied", losses.set_result)
        os.kill(victim.pid, signal.SIGKILL)
        loss = await asyncio.wait_for(losses, 5)
        assert loss["webRtcServers"] == [server.id]
        assert server.closed and events == ["workerclose", "observer close"]
        assert pinned.id in loss["transports"] and pinned.closed
        assert not other.closed and not spanning.closed
        assert set(spanning.servers) == {survivor.pid}


async def test_a_dead_worker_that_cannot_be_replaced(tmp_path: Any, caplog: Any) -> None:
    """The worker binary is gone when a worker dies (e.g. removed by an upgrade): the
    replacement fails with a logged error, and the next placement, which has to start a
    worker, fails with the start's error instead of hanging."""
    from mafalda.mediasoup.worker_binary import find_worker_bin

    binary = tmp_path / "mediasoup-worker"
    shutil.copy(find_worker_bin(), binary)
    async with await Mafalda.start(
        num_workers=1, worker_settings={"worker_bin": str(binary), "log_level": "warn"}
    ) as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        (victim,) = m.workers
        binary.unlink()
        os.kill(victim.pid, signal.SIGKILL)
        await asyncio.wait_for(_until(lambda: "could not replace a dead worker" in caplog.text), 10)
        assert m.workers == []
        with pytest.raises(OSError):
            await router.create_direct_transport()


async def test_workers_dying_or_closed_while_the_load_is_sampled() -> None:
    """sample_load() goes on over a worker that dies under it (its request fails) and one
    closed while it waits for another: no error, the others are sampled."""
    async with await Mafalda.start(
        num_workers=3, min_workers=3, load_interval=3600, worker_settings={"log_level": "warn"}
    ) as m:
        killed, sampled, closed = m.workers
        os.kill(killed.pid, signal.SIGKILL)
        sampling = asyncio.ensure_future(m.sample_load())
        await asyncio.sleep(0)  # it waits for the killed worker's answer
        closed.close()
        await asyncio.wait_for(sampling, 5)
        assert closed not in m.workers
        await m.sample_load()
        assert sampled in m.workers
        assert [w["pid"] for w in m.stats()["workers"]].count(sampled.pid) == 1


async def _sampled_by_hand() -> Mafalda:
    """A pool of up to two workers whose load is sampled only by ``sample_load()`` (after
    the sampler's first run), and whose workers are idle past the timeout at once."""
    return await Mafalda.start(
        num_workers=2,
        min_workers=1,
        load_interval=3600,
        idle_worker_timeout=1e-6,
        worker_settings={"log_level": "warn"},
    )


async def test_an_idle_worker_chosen_for_a_transport_is_not_freed() -> None:
    """A worker idle for longer than idle_worker_timeout is chosen for a transport; the
    load is sampled while its child router is being made there (the worker has no router
    of the pool yet): the worker is kept, and the transport is made on it."""
    async with await _sampled_by_hand() as m:
        # Ours comes after the sampler's first run (same worker, answers in order): that
        # run is over, with one worker in the pool, when this returns.
        await m.sample_load()
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(1)
        busy = await router.create_direct_transport()
        first, second = m.workers
        assert router.worker_of(busy) is second
        m.policy = _Pinned(0)
        attempt = asyncio.ensure_future(router.create_direct_transport())
        await asyncio.sleep(0)  # placed on the idle worker, its child router requested
        await m.sample_load()
        transport = await asyncio.wait_for(attempt, 5)
        assert router.worker_of(transport) is first
        assert m.workers == [first, second] and not first.closed


async def test_data_producer_piped_onto_a_worker_that_hosts_its_id(mafalda: Mafalda) -> None:
    """Ids are unique per worker: a data producer piped into another Mafalda router on
    its own worker, or piped by that router from elsewhere back into its worker, gets its
    own id there and is known by the original one; messages flow through both."""
    room_a = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_b = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    room_c = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    mafalda.policy = _Pinned(0)
    original = await (await room_a.create_direct_transport()).produce_data(label="chat")
    first = mafalda.workers[0]
    # Into room B on the same worker: an alias there.
    result = await room_a.pipe_to_router(router=room_b, data_producer_id=original.id)
    assert result["pipeDataProducer"].id != original.id
    assert room_b.worker_of(original) is first  # known by the original id
    # Into room C on the second worker: the original id; then room C consumes it back on
    # the first worker, which hosts that id: its pipe's copy gets an alias there.
    mafalda.policy = _Pinned(1)
    result = await room_a.pipe_to_router(router=room_c, data_producer_id=original.id)
    assert result["pipeDataProducer"].id == original.id
    assert room_c.worker_of(original) is mafalda.workers[1]
    mafalda.policy = _Pinned(0)
    sinks = [await room.create_direct_transport() for room in (room_b, room_c)]
    assert all(room.worker_of(s) is first for room, s in zip((room_b, room_c), sinks, strict=True))
    received: list[asyncio.Future[bytes]] = []
    for room, sink in zip((room_b, room_c), sinks, strict=True):
        consumer = await sink.consume_data(data_producer_id=original.id)
        assert consumer.data_producer_id == original.id
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        consumer.on("message", lambda m, _ppid, f=future: f.done() or f.set_result(m))
        received.append(future)
        # Each room's dump knows its copy by the original id (room B's adopted one, room
        # C's pipe's), its consumer included.
        dump = await room.dump()
        assert dump["mapDataProducerIdDataConsumerIds"] == [
            {"key": original.id, "values": [consumer.id]}
        ]
        assert dump["mapDataConsumerIdDataProducerId"] == [
            {"key": consumer.id, "value": original.id}
        ]
    assert len((await room_c.mafalda_dump())["pipes"]) == 1
    original.send("to every room")
    for future in received:
        assert await asyncio.wait_for(future, 5) == b"to every room"


async def test_mafalda_closed_from_a_close_listener_of_a_closing_router() -> None:
    """The application closes the whole pool when a transport closes, and that happens
    because its router is closing: the router closes once (one 'close', no 'workerclose'
    on top), and the pool closes."""
    m = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_direct_transport()
        transport.observer.on("close", m.close)
        events: list[str] = []
        router.observer.on("close", lambda: events.append("close"))
        router.on("workerclose", lambda: events.append("workerclose"))
        router.close()
        assert events == ["close"] and m.closed and m.routers == []
    finally:
        await m.aclose()


async def test_worker_closed_as_its_new_child_router_is_handed_out(mafalda: Mafalda) -> None:
    """The worker chosen for a router's first transport is closed from outside right
    after its child router is made there, before the placement that waits for it gets
    it: the creation fails with InvalidStateError (the worker is gone from the pool), and
    the next transport goes to the worker that replaces it."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    (victim,) = mafalda.workers
    loop = asyncio.get_running_loop()
    # Queued before the child router's creation completes: runs before its waiter resumes.
    victim.observer.on("newrouter", lambda _router: loop.call_soon(victim.close))
    replaced = asyncio.Event()
    mafalda.observer.on("newworker", lambda _worker: replaced.set())
    with pytest.raises(InvalidStateError, match="Worker closed"):
        await router.create_direct_transport()
    assert victim.closed and victim not in mafalda.workers
    assert router.child_routers == {}
    with pytest.raises(InvalidStateError, match="Worker closed"):
        with mafalda.reserve(victim):  # what is made on it would fail anyway
            pass
    await asyncio.wait_for(replaced.wait(), 10)
    transport = await router.create_direct_transport()
    assert router.worker_of(transport) in mafalda.workers
    assert [w["units"] for w in mafalda.stats()["workers"]] == [1]


async def test_a_worker_left_without_routers_is_freed_once_idle_long_enough() -> None:
    """A worker whose last child router closes is idle from the first load sample that
    sees it without routers: that sample keeps it (idle for no time yet), a later one
    (idle_worker_timeout after) frees it, down to min_workers."""
    async with await _sampled_by_hand() as m:
        await m.sample_load()  # after the sampler's first run (see the test above)
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        kept = await router.create_direct_transport()
        m.policy = _Pinned(1)
        left = await router.create_direct_transport()
        first, second = m.workers
        assert router.worker_of(kept) is first and router.worker_of(left) is second
        await m.sample_load()  # both host a router: neither is idle
        left.close()
        assert router.child_router(second) is None
        await m.sample_load()  # idle from now on
        assert m.workers == [first, second] and not second.closed
        await m.sample_load()
        assert m.workers == [first] and second.closed


async def test_a_worker_used_between_two_load_samples_is_not_freed_right_after() -> None:
    """A worker idle since a load sample gets a transport (and a child router) that come
    and go before the next sample: that sample starts its idle clock again, it does not
    free it at once for an idleness the use interrupted (it did: the clock was reset
    only by a sample that saw a router there, so a new user's worker was restarted
    right after). A later sample, idle_worker_timeout after, frees it."""
    async with await _sampled_by_hand() as m:
        await m.sample_load()  # after the sampler's first run (see above)
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        kept = await router.create_direct_transport()
        m.policy = _Pinned(1)
        left = await router.create_direct_transport()
        first, second = m.workers
        await m.sample_load()  # both host a router: neither is idle
        left.close()
        await m.sample_load()  # the second is idle from now on
        assert m.workers == [first, second]
        used = await router.create_direct_transport()
        assert router.worker_of(used) is second
        used.close()
        assert router.child_router(second) is None
        await m.sample_load()  # used since the last sample: idle from now on
        assert m.workers == [first, second] and not second.closed
        await m.sample_load()
        assert m.workers == [first] and second.closed
        assert router.worker_of(kept) is first


async def test_a_worker_reserved_for_a_placement_is_not_freed_however_idle() -> None:
    """A worker reserved for something being placed on it (a transport being made, its
    child router not there yet) is kept by the samples that find it idle past
    idle_worker_timeout; once the reservation ends, a sample frees it."""
    async with await _sampled_by_hand() as m:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        kept = await router.create_direct_transport()  # the first worker stays in use
        m.policy = _Pinned(1)
        (await router.create_direct_transport()).close()  # the second started, unused
        first, second = m.workers
        with m.reserve(second):
            await m.sample_load()  # no router there: idle from now on
            await m.sample_load()  # idle past the timeout, and reserved
            assert m.workers == [first, second] and not second.closed
        await m.sample_load()
        assert m.workers == [first] and second.closed
        assert router.worker_of(kept) is first


def test_child_router_being_made_when_the_loop_shuts_down() -> None:
    """The application's loop shuts down (asyncio.run() returning, Runner.close()) while
    a router's child router is being made for a transport (its worker held with SIGSTOP,
    so it is still being made): the loop cancels every task, that creation included,
    which ends cancelled without an error for the loop's exception handler; the
    application's task closing the pool when cancelled still closes every worker."""
    errors: list[dict[str, Any]] = []
    seen: dict[str, Any] = {}

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, c: errors.append(c))
        m = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        (worker,) = m.workers

        async def close_when_cancelled() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                os.kill(worker.pid, signal.SIGCONT)
                await m.aclose()

        seen["closer"] = asyncio.ensure_future(close_when_cancelled())
        seen["mafalda"], seen["pid"] = m, worker.pid
        os.kill(worker.pid, signal.SIGSTOP)
        seen["attempt"] = asyncio.ensure_future(router.create_direct_transport())
        await asyncio.sleep(0)  # placed: its child router is being made
        seen["creations"] = list(router._child_futures.values())

    loop_factory = None
    if os.environ.get("MAFALDA_TEST_LOOP") == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(main())
    assert errors == []
    (creation,) = seen["creations"]
    assert creation.cancelled() and seen["attempt"].cancelled()
    assert seen["mafalda"].closed and seen["closer"].cancelled()
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)


async def test_dump_while_a_pipe_opens(mafalda: Mafalda) -> None:
    """dump() asked as a consume on another worker starts opening its pipe answers (the
    pipe, still without its consumer on the producer's worker, left out); once the
    consume is done it lists the consumer, and still not the pipe's."""
    router, producer, far = await _split(mafalda, data=False)
    # The dump's requests go first: each worker answers them before any of the pipe's.
    dumping = asyncio.ensure_future(router.dump())
    attempt = _far_consume(router, far, producer)
    dump = await asyncio.wait_for(dumping, 5)
    assert not attempt.done() and len((await router.mafalda_dump())["pipes"]) == 1
    assert dump["mapProducerIdConsumerIds"] == [{"key": producer.id, "values": []}]
    assert dump["mapConsumerIdProducerId"] == []
    consumer = await asyncio.wait_for(attempt, 5)
    dump = await router.dump()
    assert dump["mapProducerIdConsumerIds"] == [{"key": producer.id, "values": [consumer.id]}]
    assert dump["mapConsumerIdProducerId"] == [{"key": consumer.id, "value": producer.id}]


class _RefusingSctpPeer(asyncio.DatagramProtocol):
    """The far end of a plain transport's SCTP association (SCTP over plain UDP): it
    answers the worker's INIT with an ABORT when told, as a peer refusing it would."""

    def __init__(self) -> None:
        self.init: asyncio.Future[tuple[int, int, int, Any]] = (
            asyncio.get_running_loop().create_future()
        )
        self.socket: Any = None

    def connection_made(self, transport: Any) -> None:
        self.socket = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source_port, destination_port, _tag, chunks = parse_packet(data)
        for chunk in chunks:
            if isinstance(chunk, InitChunk) and not self.init.done():
                self.init.set_result((source_port, destination_port, chunk.initiate_tag, addr))

    def abort(self) -> None:
        source_port, destination_port, initiate_tag, addr = self.init.result()
        packet = serialize_packet(destination_port, source_port, initiate_tag, AbortChunk())
        self.socket.sendto(packet, addr)


@pytest.mark.parametrize("closing", [None, "on its event", "on its observer's"])
async def test_sctp_connected_when_the_association_fails(
    worker: Worker, closing: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The peer refuses the SCTP association (ABORT): a wait for it fails with
    InvalidStateError at once, and so does a later one (the association failed already,
    no wait for the timeout). An application closing the transport as the association
    fails (from its own listener, before or after the wait's) changes nothing but the
    reason of whichever came first, and no listener fails."""
    from mafalda.vertical.spanning import sctp_connected

    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    sock, peer = await asyncio.get_running_loop().create_datagram_endpoint(
        _RefusingSctpPeer, local_addr=("127.0.0.1", 0)
    )
    try:
        await transport.connect(ip="127.0.0.1", port=sock.get_extra_info("sockname")[1])
        waiting = asyncio.ensure_future(sctp_connected(transport))
        source = await (await router.create_direct_transport()).produce_data()
        await transport.consume_data(data_producer_id=source.id)  # starts the association
        await asyncio.wait_for(peer.init, 5)
        assert not waiting.done()

        def close_if_failed(state: str) -> None:
            if state == "failed":  # not on 'connecting', which may come after the INIT
                transport.close()

        if closing == "on its event":  # emitted before the observer's
            transport.on("sctpstatechange", close_if_failed)
        elif closing == "on its observer's":  # after the wait's own listener
            transport.observer.on("sctpstatechange", close_if_failed)
        peer.abort()
        reason = "transport closed" if closing == "on its event" else "SCTP association failed"
        with pytest.raises(InvalidStateError, match=reason):
            await asyncio.wait_for(waiting, 5)
        assert "listener of event" not in caplog.text
        if closing is None:
            assert transport.sctp_state == "failed" and not transport.closed
            with pytest.raises(InvalidStateError, match="SCTP association failed"):
                await asyncio.wait_for(sctp_connected(transport), 1)
        else:
            assert transport.closed
    finally:
        sock.close()


async def test_a_pause_that_cannot_reach_the_piped_copy_is_logged(
    mafalda: Mafalda, caplog: pytest.LogCaptureFixture
) -> None:
    """The producer pauses while the worker of its piped copy is frozen (SIGSTOP): the
    copy's pause times out, which is logged (debug) and fails nothing else; once that
    worker answers again the far consumer follows the producer again."""
    caplog.set_level(logging.DEBUG, logger="mafalda.vertical.spanning")
    router, producer, far = await _split(mafalda, data=False)
    consumer = await far.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    dst = router.worker_of(far)
    dst._channel.request_timeout = 0.2
    os.kill(dst.pid, signal.SIGSTOP)
    try:
        await producer.pause()  # its worker answers
        async with asyncio.timeout(5):
            await _until(lambda: "pipe follow-up failed: request timeout" in caplog.text)
    finally:
        os.kill(dst.pid, signal.SIGCONT)
        dst._channel.request_timeout = REQUEST_TIMEOUT
    await dst.dump()  # after the late pause and its notification
    assert consumer.producer_paused and not consumer.closed
    await producer.resume()
    async with asyncio.timeout(5):
        await _until(lambda: not consumer.producer_paused)


async def _on_two_workers(router: MafaldaRouter) -> tuple[PlainTransport, PlainTransport]:
    """Two SCTP-enabled plain transports of ``router``, on two workers (policy 'spread')."""
    one = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    two = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    if router.worker_of(two) is router.worker_of(one):
        two = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
    assert router.worker_of(two) is not router.worker_of(one)
    return one, two


async def test_one_id_asked_on_two_workers_at_once_is_made_once() -> None:
    """Two produce() (and produce_data()) calls with one id on two workers of a router,
    in one turn: one is made, the other refused (each worker alone would accept it);
    an id whose produce() failed is free again."""
    m = await Mafalda.start(num_workers=2, min_workers=2, policy="spread")
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        one, two = await _on_two_workers(router)
        made = await asyncio.gather(
            *(
                t.produce(id="one-id", kind="audio", rtp_parameters=opus_rtp_parameters(s))
                for t, s in ((one, 1111), (two, 2222))
            ),
            return_exceptions=True,
        )
        assert isinstance(made[0], Producer) and made[0].id == "one-id"
        assert isinstance(made[1], TypeError) and 'Producer with same id "one-id"' in str(made[1])
        streams = ({"streamId": 1}, {"streamId": 2})
        made = await asyncio.gather(
            *(
                t.produce_data(id="data-id", sctp_stream_parameters=p)
                for t, p in zip((one, two), streams, strict=True)
            ),
            return_exceptions=True,
        )
        assert isinstance(made[0], DataProducer) and made[0].id == "data-id"
        assert isinstance(made[1], TypeError) and "same id" in str(made[1])
        with pytest.raises(TypeError, match="invalid kind"):
            await two.produce(id="free-id", kind="text", rtp_parameters=opus_rtp_parameters(3))
        again = await two.produce(id="free-id", kind="audio", rtp_parameters=opus_rtp_parameters(3))
        assert again.id == "free-id" and router.worker_of(again) is router.worker_of(two)
    finally:
        await m.aclose()


async def test_an_id_taken_on_another_worker_is_refused() -> None:
    """One router: a producer (or data producer) id it has is refused on any of its
    workers, as a Router refuses one (there the worker does), before anything is sent;
    once the first is closed the id is free again."""
    m = await Mafalda.start(num_workers=2, min_workers=2, policy="spread")
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        first, producer = await _audio_producer(router)
        other = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
        if router.worker_of(other) is router.worker_of(first):
            other = await router.create_plain_transport(listen_info=LISTEN, enable_sctp=True)
        assert router.worker_of(other) is not router.worker_of(first)
        rtp = opus_rtp_parameters(4321, OPUS_PT)
        with pytest.raises(TypeError, match=f'a Producer with same id "{producer.id}"'):
            await other.produce(id=producer.id, kind="audio", rtp_parameters=rtp)
        direct = await router.create_direct_transport()
        data = await direct.produce_data()
        with pytest.raises(TypeError, match=f'a DataProducer with same id "{data.id}"'):
            await other.produce_data(id=data.id, sctp_stream_parameters={"streamId": 1})
        # The originals are untouched, and consumers still get them.
        consumer = await other.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        )
        assert consumer.producer_id == producer.id and not producer.closed
        gone = asyncio.get_running_loop().create_future()
        consumer.on("producerclose", lambda: gone.set_result(None))
        producer.close()
        async with asyncio.timeout(10):
            await gone  # its copy on the other worker closed too
        again = await other.produce(id=producer.id, kind="audio", rtp_parameters=rtp)
        assert again.id == producer.id
    finally:
        await m.aclose()


async def test_a_producer_and_a_data_producer_of_one_id_keep_their_homes() -> None:
    """A producer and a data producer may share an id (two id spaces, as in mediasoup),
    each on its own worker: each is found on its worker, and one closing leaves the
    other's home (a consume from the third transport still pipes it there)."""
    m = await Mafalda.start(num_workers=2, min_workers=2, policy="spread")
    try:
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        one, two = await _on_two_workers(router)
        producer = await one.produce(id="same", kind="audio", rtp_parameters=opus_rtp_parameters(1))
        data_producer = await two.produce_data(
            id="same", sctp_stream_parameters={"streamId": 1, "ordered": True}
        )
        assert router.worker_of(producer) is router.worker_of(one)
        assert router.worker_of(data_producer) is router.worker_of(two)
        data_producer.close()
        assert router.worker_of(producer) is router.worker_of(one)
        consumer = await two.consume(producer_id="same", rtp_capabilities=router.rtp_capabilities)
        assert consumer.producer_id == "same"
        assert (await router.mafalda_dump())["workers"][router.worker_of(one).pid]["producers"] == 1
    finally:
        await m.aclose()


async def test_an_alias_for_an_id_being_made_is_refused(mafalda: Mafalda) -> None:
    """alias_producer() for an id that a produce() of the router is making: refused as
    for an id it has (else the producer made would take the alias's place in the router,
    and whichever closed first would take the other's entry with it). The producer made
    is the router's by that id, whatever else closes."""
    room = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    _, copy = await _audio_producer(room)
    transport = await room.create_plain_transport(listen_info=LISTEN)
    rtp = opus_rtp_parameters(4321, OPUS_PT)
    making = asyncio.ensure_future(transport.produce(id="taken", kind="audio", rtp_parameters=rtp))
    await asyncio.sleep(0)  # it runs up to the worker's answer, its id held
    assert not making.done()
    with pytest.raises(TypeError, match='a Producer with same id "taken" already exists'):
        room.alias_producer("taken", copy)
    producer = await making
    copy.close()
    sink = await room.create_direct_transport()
    consumer = await sink.consume(producer_id="taken", rtp_capabilities=room.rtp_capabilities)
    assert consumer.producer_id == "taken" and not producer.closed
    assert room.worker_of(producer) is room.worker_of(transport)


async def test_concurrent_pipes_of_one_producer_into_a_router_make_one_copy() -> None:
    """Two pipe_to_router() of one producer into the same MafaldaRouter at once: one
    copy, the other call refused as mediasoup's second copy is ('already exists'),
    wherever each would have been placed."""
    m = await Mafalda.start(num_workers=2, min_workers=2, policy="spread")
    try:
        source = await m.create_router(media_codecs=MEDIA_CODECS)
        target = await m.create_router(media_codecs=MEDIA_CODECS)
        _, producer = await _audio_producer(source)
        results = await asyncio.gather(
            source.pipe_to_router(producer_id=producer.id, router=target),
            source.pipe_to_router(producer_id=producer.id, router=target),
            return_exceptions=True,
        )
        copies = [r for r in results if isinstance(r, dict)]
        [refused] = [r for r in results if isinstance(r, BaseException)]
        assert len(copies) == 1 and isinstance(refused, TypeError)
        assert f'a Producer with same id "{producer.id}" already exists' in str(refused)
        # The one copy is what the target router consumes from.
        recv = await target.create_plain_transport(listen_info=LISTEN)
        consumer = await recv.consume(
            producer_id=producer.id, rtp_capabilities=target.rtp_capabilities
        )
        assert consumer.producer_id == producer.id
    finally:
        await m.aclose()


async def test_a_pipe_is_not_opened_for_a_source_gone_or_closed(mafalda: Mafalda) -> None:
    """The check the opening of a pipe makes of its source: a local one's closing cancels
    that opening first, but a remote one (a ClusterRouter's proxy) may show its closed
    state before its close event, so the check is called here with such states."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_direct_transport()
    source = await transport.produce_data(label="chat")
    assert source_open(source, "DataProducer") is source
    source.close()
    for gone, what in ((source, "DataProducer"), (None, "Producer")):
        with pytest.raises(InvalidStateError, match=f"original {what} closed"):
            source_open(gone, what)


async def test_a_transport_cancelled_while_its_child_router_is_made_leaves_none(
    mafalda: Mafalda,
) -> None:
    """The caller of a router's first transport on a worker is cancelled (a timeout, a
    client gone) while the child router is made there: the making goes on without it
    (shielded, for whoever else waits), and the child, which nobody then uses, is closed
    once made instead of staying on the worker for good (keeping it from being freed)."""
    router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
    attempt = asyncio.ensure_future(router.create_plain_transport(listen_info=LISTEN))
    await asyncio.sleep(0)  # the child router is being made
    (making,) = router._child_futures.values()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    await asyncio.wait_for(asyncio.gather(making, return_exceptions=True), 5)
    assert router.child_routers == {}
    for worker in mafalda.workers:
        assert (await worker.dump())["routerIds"] == []
    assert all(info["routers"] == 0 for info in mafalda.stats()["workers"])
    # The router goes on: the next transport makes its child again.
    transport = await router.create_plain_transport(listen_info=LISTEN)
    assert router.child_router(router.worker_of(transport)) is not None


@pytest.mark.parametrize("data", [False, True])
async def test_a_consume_cancelled_while_its_pipe_opens_leaves_no_pipe(
    mafalda: Mafalda, data: bool
) -> None:
    """A consume on another worker is cancelled while it waits for its pipe: the pipe's
    opening goes on (others may share it), and once open with nobody using it, it is
    closed with its pipe transport pair, instead of staying until the original closes
    (with the far worker's child router, even after its last transport goes)."""
    router, original, far = await _split(mafalda, data)
    home = router.worker_of(original)
    attempt = _far_consume(router, far, original)
    await asyncio.sleep(0)  # the pipe is on its way
    (pipe,) = router._pipes.values()
    attempt.cancel()
    with pytest.raises(asyncio.CancelledError):
        await attempt
    assert pipe.opening is not None
    await asyncio.wait_for(asyncio.gather(pipe.opening, return_exceptions=True), 5)
    dump = await router.mafalda_dump()
    assert dump["pipes"] == [] and dump["pipeTransportPairs"] == []
    assert all(info["pipeTransports"] == 0 for info in dump["workers"].values())
    far.close()
    assert list(router.child_routers) == [home.pid]


@pytest.mark.parametrize("data", [False, True])
async def test_a_piped_source_closing_sends_nothing_its_worker_refuses(
    mafalda: Mafalda, data: bool, caplog: Any
) -> None:
    """A (data) producer consumed on another worker closes: its copy there goes at once,
    but its pipe consumer, which its worker closes with it, is not closed again by a
    request (refused there: 'Consumer not found', an error in the worker's log at every
    such close)."""
    router, original, far = await _split(mafalda, data)
    consumer = await _far_consume(router, far, original)
    home = router.worker_of(original)
    (pipe,) = router._pipes.values()
    pipe_consumer = pipe.consumer
    caplog.set_level(logging.WARNING, logger="mafalda.mediasoup.worker.log")
    original.close()
    await asyncio.wait_for(_until(lambda: consumer.closed), 5)
    assert (await router.mafalda_dump())["pipes"] == []
    await asyncio.wait_for(_until(lambda: pipe_consumer.closed), 5)  # as its worker told
    await home.dump()  # its answers (and logs) to all sent before have arrived
    assert [r.getMessage() for r in caplog.records if r.name.endswith("worker.log")] == []


async def test_a_worker_holding_an_application_webrtc_server_is_not_freed() -> None:
    """create_webrtc_servers() makes one on each worker; the second worker then has no
    router for longer than idle_worker_timeout: it is kept, its WebRtcServer stays open,
    and a transport given it is made there (before, the worker was freed as idle and the
    application's server closed with it). A MafaldaWebRtcServer's real server there does
    not hold it (it is made again wherever a transport goes): once the application
    closes its own, the worker is freed."""
    async with await _sampled_by_hand() as m:
        await m.sample_load()  # after the sampler's first run (see above)
        router = await m.create_router(media_codecs=MEDIA_CODECS)
        m.policy = _Pinned(0)
        kept = await router.create_direct_transport()
        m.policy = _Pinned(1)
        (await router.create_direct_transport()).close()  # the second started, unused
        first, second = m.workers
        listen: Any = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
        server = (await m.create_webrtc_servers(listen_infos=listen))[second.pid]
        await m.sample_load()  # no router there: idle from now on
        await m.sample_load()  # idle past the timeout, and holding the server
        assert m.workers == [first, second] and not second.closed and not server.closed
        transport = await router.create_webrtc_transport(webrtc_server=server)
        assert router.worker_of(transport) is second
        spanning = await m.create_webrtc_server(listen_infos=listen)
        (await router.create_webrtc_transport(webrtc_server=spanning)).close()
        assert list(spanning.servers) == [second.pid]
        transport.close()
        await m.sample_load()
        await m.sample_load()
        assert m.workers == [first, second] and not server.closed
        server.close()
        await m.sample_load()
        assert m.workers == [first] and second.closed and spanning.servers == {}
        assert router.worker_of(kept) is first and not spanning.closed


async def test_aclose_awaits_the_tasks_of_its_routers() -> None:
    """aclose() returns once every task of the pool's routers has ended: those of a router
    it closes (a pipe and its pair being opened for a consume, a follow-up whose
    unwinding outlasts the workers' exit) and those of a router the application closed
    before (cancelled then, and nobody's since). Before, it waited for the workers'
    processes only."""
    m = await Mafalda.start(num_workers=2, worker_settings={"log_level": "warn"})
    router, producer, far = await _split(m, data=False)
    left = await m.create_router(media_codecs=MEDIA_CODECS)
    await left.create_direct_transport()
    opening = asyncio.Event()
    _on_pipe_stage(router, router.worker_of(producer), "pair", opening.set)
    attempt = _far_consume(router, far, producer)
    await asyncio.wait_for(opening.wait(), 5)
    workers = m.workers

    async def outlasting() -> None:
        try:
            await asyncio.Event().wait()
        finally:  # cancelled: its unwinding ends well after the workers' exit
            await asyncio.gather(*(w.wait_closed() for w in workers))
            await asyncio.sleep(0.2)

    router._spawn(outlasting())
    left._spawn(outlasting())
    await asyncio.sleep(0)  # both running
    left.close()
    tasks = set(router._tasks) | set(left._tasks)
    assert len(tasks) == 4  # the pipe's opening, its pair's, and the two follow-ups
    await m.aclose()
    assert all(task.done() for task in tasks)
    with pytest.raises(InvalidStateError, match="Router closed"):
        await attempt
    assert asyncio.all_tasks() == {asyncio.current_task()}


async def _room_b_on_the_copys_worker(
    m: Mafalda,
) -> tuple[MafaldaRouter, Producer, PlainTransport, MafaldaRouter, PlainTransport, Worker]:
    """Room A's producer on the first worker, and a transport of room A and one of room B
    on the second, with room A's pipe pair between the two open already (consuming the
    producer there only makes a copy)."""
    room_a = await m.create_router(media_codecs=MEDIA_CODECS)
    room_b = await m.create_router(media_codecs=MEDIA_CODECS)
    m.policy = _Pinned(0)
    _, producer = await _audio_producer(room_a)
    _, other = await _audio_producer(room_a, ssrc=2222)
    m.policy = _Pinned(1)
    a = await room_a.create_plain_transport(listen_info=LISTEN)
    b = await room_b.create_plain_transport(listen_info=LISTEN)
    await a.consume(producer_id=other.id, rtp_capabilities=room_a.rtp_capabilities)
    second = m.workers[1]
    assert room_b.worker_of(b) is second and room_a.worker_of(producer) is not second
    return room_a, producer, a, room_b, b, second


async def test_a_produce_of_an_id_sent_before_a_copy_of_it_keeps_the_id() -> None:
    """Room B's produce(id=X) on the second worker is sent, then room A's consume there of
    its producer X makes a copy, both reaching the worker together (frozen by SIGSTOP):
    room B's producer gets the id, room A's copy its own and an alias, and both work
    (before, the copy was asked with that id too: the worker refused it, and room A's
    consume failed with the worker's error)."""
    async with await Mafalda.start(
        num_workers=2, min_workers=2, worker_settings={"log_level": "warn"}
    ) as m:
        room_a, producer, a, room_b, b, second = await _room_b_on_the_copys_worker(m)
        key = pipe_key(producer.id, second, False)
        rtp = opus_rtp_parameters(3333, OPUS_PT)
        os.kill(second.pid, signal.SIGSTOP)
        try:
            produced = asyncio.ensure_future(
                b.produce(id=producer.id, kind="audio", rtp_parameters=rtp)
            )
            await asyncio.sleep(0)  # its request is sent
            consumed = asyncio.ensure_future(
                a.consume(producer_id=producer.id, rtp_capabilities=room_a.rtp_capabilities)
            )
            await asyncio.wait_for(
                _until(lambda: key in room_a._pipes and room_a._pipes[key].consumer is not None), 5
            )
        finally:
            os.kill(second.pid, signal.SIGCONT)
        mine, consumer = await asyncio.wait_for(asyncio.gather(produced, consumed), 5)
        assert mine.id == producer.id and room_b.worker_of(mine) is second
        copy = room_a._pipes[key].producer
        assert copy.id != producer.id and not copy.closed
        assert consumer.producer_id == producer.id and room_a.worker_of(producer) is m.workers[0]


async def test_a_produce_of_an_id_a_copy_has_or_takes_in_its_worker_is_refused() -> None:
    """Room A's consume on the second worker makes a copy of its producer X there (the
    worker frozen by SIGSTOP), and room B asks produce(id=X) on that worker meanwhile: a
    TypeError before anything is sent (before, the request was sent, and the worker
    refused it with a WorkerError once awake), and room A's copy gets the id. Once the
    copy is made, the same TypeError; once its pipe closes, the id is free there."""
    async with await Mafalda.start(
        num_workers=2, min_workers=2, worker_settings={"log_level": "warn"}
    ) as m:
        room_a, producer, a, room_b, b, second = await _room_b_on_the_copys_worker(m)
        key = pipe_key(producer.id, second, False)
        rtp = opus_rtp_parameters(3333, OPUS_PT)
        refused = f'a Producer or DataProducer with same id "{producer.id}" already exists'
        os.kill(second.pid, signal.SIGSTOP)
        try:
            consumed = asyncio.ensure_future(
                a.consume(producer_id=producer.id, rtp_capabilities=room_a.rtp_capabilities)
            )
            await asyncio.wait_for(
                _until(lambda: key in room_a._pipes and room_a._pipes[key].consumer is not None), 5
            )
            with pytest.raises(TypeError, match=refused):
                await asyncio.wait_for(
                    b.produce(id=producer.id, kind="audio", rtp_parameters=rtp), 1
                )
        finally:
            os.kill(second.pid, signal.SIGCONT)
        consumer = await asyncio.wait_for(consumed, 5)
        assert room_a._pipes[key].producer.id == producer.id
        with pytest.raises(TypeError, match=refused):
            await b.produce_data(id=producer.id, sctp_stream_parameters={"streamId": 1})
        consumer.close()
        assert key not in room_a._pipes
        mine = await b.produce(id=producer.id, kind="audio", rtp_parameters=rtp)
        assert mine.id == producer.id and room_b.worker_of(mine) is second
