"""MafaldaRouter: mediasoup's Router API over one child Router per worker it uses.

Transports are created on the worker the pool's policy chooses; what they return
(transports, producers, consumers, data producers and consumers) are mediasoup's own
objects. Consuming a producer that lives on another worker pipes it there first: one
pipe per (producer, worker), shared by every later consumer there, closed when its
last consumer goes; a pipe transport pair per worker pair, closed when it carries
nothing; a child router with no transport left, closed too.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mafalda.mediasoup import ortc
from mafalda.mediasoup.consumer import Consumer
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.direct_transport import DirectTransport
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.pipe_transport import PipeTransport, open_pipe_pair
from mafalda.mediasoup.plain_transport import PlainTransport
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.router import PipeToRouterResult, Router, RouterDump
from mafalda.mediasoup.rtp_observer import RtpObserver
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability, RtpCapabilities
from mafalda.mediasoup.transport import Transport
from mafalda.mediasoup.webrtc_transport import WebRtcTransport
from mafalda.mediasoup.worker import Worker

if TYPE_CHECKING:
    from mafalda.mediasoup.active_speaker_observer import ActiveSpeakerObserver
    from mafalda.mediasoup.audio_level_observer import AudioLevelObserver
    from mafalda.vertical.mafalda import Mafalda

logger = logging.getLogger("mafalda.vertical.router")

_PIPE_LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}


@dataclass(eq=False, slots=True)
class _PipePair:
    """Two connected PipeTransports between the child routers of two workers."""

    key: frozenset[Worker]
    transports: dict[Worker, PipeTransport] = field(default_factory=dict)
    ready: asyncio.Future[None] | None = None
    pipes: set[_Pipe] = field(default_factory=set)
    pending: int = 0
    closed: bool = False


@dataclass(eq=False, slots=True)
class _Pipe:
    """One producer (or data producer) of worker ``home`` made available on ``dst``."""

    key: tuple[str, str, int]
    home: Worker
    dst: Worker
    data: bool
    ready: asyncio.Future[None]
    pair: _PipePair | None = None
    consumer: Consumer | DataConsumer | None = None
    producer: Producer | DataProducer | None = None
    users: set[str] = field(default_factory=set)
    pending: int = 0
    closed: bool = False


class MafaldaRouter(EventSource):
    """A Router spanning the workers of a Mafalda pool. Create with Mafalda.create_router()."""

    def __init__(
        self,
        *,
        mafalda: Mafalda,
        router_id: str,
        rtp_capabilities: RtpCapabilities,
        media_codecs: list[RouterRtpCodecCapability] | None,
        app_data: dict[str, Any] | None,
    ) -> None:
        self._mafalda = mafalda
        self._id = router_id
        self._rtp_capabilities = rtp_capabilities
        self._media_codecs = media_codecs
        self._closed = False
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._children: dict[Worker, Router] = {}
        self._child_futures: dict[Worker, asyncio.Future[Router]] = {}
        self._transports: dict[str, Transport] = {}
        self._transport_worker: dict[str, Worker] = {}
        self._producers: dict[str, Producer] = {}
        self._data_producers: dict[str, DataProducer] = {}
        self._home: dict[str, Worker] = {}
        self._rtp_observers: dict[str, RtpObserver] = {}
        self._observer_worker: dict[str, Worker] = {}
        self._pairs: dict[frozenset[Worker], _PipePair] = {}
        self._pipes: dict[tuple[str, str, int], _Pipe] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.events = EventEmitter()
        self.observer = EventEmitter()

    # -- mediasoup Router properties -----------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rtp_capabilities(self) -> RtpCapabilities:
        return self._rtp_capabilities

    @property
    def transports_for_testing(self) -> dict[str, Transport]:
        return self._transports

    @property
    def mafalda(self) -> Mafalda:
        return self._mafalda

    def __repr__(self) -> str:
        return f"<MafaldaRouter id={self._id} workers={len(self._children)} closed={self._closed}>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Router closed")

    # -- children ----------------------------------------------------------------------------

    def child_router(self, worker: Worker) -> Router | None:
        """The child Router on ``worker``, if this router uses that worker now."""
        return self._children.get(worker)

    @property
    def child_routers(self) -> dict[int, Router]:
        """Child routers by worker pid."""
        return {w.pid: r for w, r in self._children.items()}

    def worker_of(self, obj: Transport | Producer | DataProducer | RtpObserver) -> Worker:
        """The worker hosting a transport, a producer, a data producer or an observer."""
        if isinstance(obj, Transport) and obj.id in self._transport_worker:
            return self._transport_worker[obj.id]
        if isinstance(obj, RtpObserver) and obj.id in self._observer_worker:
            return self._observer_worker[obj.id]
        if obj.id in self._home:
            return self._home[obj.id]
        raise ValueError(f"{type(obj).__name__} {obj.id} is not on this router")

    async def _child(self, worker: Worker) -> Router:
        child = self._children.get(worker)
        if child is not None:
            return child
        future = self._child_futures.get(worker)
        if future is None:
            future = asyncio.ensure_future(self._create_child(worker))
            self._child_futures[worker] = future
            future.add_done_callback(lambda _: self._child_futures.pop(worker, None))
        return await asyncio.shield(future)

    async def _create_child(self, worker: Worker) -> Router:
        child = await worker.create_router(
            media_codecs=copy.deepcopy(self._media_codecs), app_data={"mafaldaRouterId": self._id}
        )
        if self._closed:
            child.close()
            raise InvalidStateError("Router closed")
        self._children[worker] = child
        child.on("workerclose", lambda: self._on_child_lost(worker, child))
        child.observer.on("close", lambda: self._forget_child(worker, child))
        return child

    def _forget_child(self, worker: Worker, child: Router) -> None:
        if self._children.get(worker) is child:
            del self._children[worker]

    def _on_child_lost(self, worker: Worker, child: Router) -> None:
        self._forget_child(worker, child)
        self._mafalda.record_loss(worker, "routers", child.id)

    def _release_child_if_idle(self, worker: Worker) -> None:
        child = self._children.get(worker)
        if child is None or child.closed:
            return
        if any(w is worker for w in self._transport_worker.values()):
            return
        if any(w is worker for w in self._observer_worker.values()):
            return
        if any(p.dst is worker and not p.closed for p in self._pipes.values()):
            return
        logger.debug("closing idle child router %s on worker %s", child.id, worker.pid)
        child.close()

    async def _placed_child(self, worker: Worker | None = None) -> tuple[Worker, Router]:
        self._check_open()
        if worker is None:
            worker = await self._mafalda.place(self)
        with self._mafalda.reserve(worker):
            child = await self._child(worker)
        self._check_open()
        return worker, child

    # -- transports -----------------------------------------------------------------------------

    def _adopt(self, worker: Worker, transport: Transport) -> None:
        tid = transport.id
        self._transports[tid] = transport
        self._transport_worker[tid] = worker
        transport.consume_guard = lambda producer_id: self._pipe_guard(producer_id, worker, False)
        transport.consume_data_guard = lambda data_producer_id: self._pipe_guard(
            data_producer_id, worker, True
        )
        transport.observer.on("close", lambda: self._on_transport_close(worker, transport))
        transport.observer.on("newproducer", lambda p: self._adopt_producer(worker, p))
        transport.observer.on("newdataproducer", lambda d: self._adopt_data_producer(worker, d))
        transport.observer.on("newconsumer", lambda c: self._adopt_consumer(worker, c, False))
        transport.observer.on("newdataconsumer", lambda c: self._adopt_consumer(worker, c, True))
        self.observer.emit("newtransport", transport)

    def _lost(self, worker: Worker) -> bool:
        return worker.died

    def _on_transport_close(self, worker: Worker, transport: Transport) -> None:
        self._transports.pop(transport.id, None)
        self._transport_worker.pop(transport.id, None)
        if self._lost(worker):
            self._mafalda.record_loss(worker, "transports", transport.id)
            return
        self._release_child_if_idle(worker)

    def _adopt_producer(self, worker: Worker, producer: Producer, key: str | None = None) -> None:
        """Register a producer of this router, under ``key`` when its id had to differ."""
        key = key or producer.id
        self._producers[key] = producer
        self._home[key] = worker

        def closed() -> None:
            if self._producers.get(key) is producer:
                del self._producers[key]
                self._home.pop(key, None)
            if self._lost(worker):
                self._mafalda.record_loss(worker, "producers", key)

        producer.observer.on("close", closed)

    def _adopt_data_producer(
        self, worker: Worker, data_producer: DataProducer, key: str | None = None
    ) -> None:
        key = key or data_producer.id
        self._data_producers[key] = data_producer
        self._home[key] = worker

        def closed() -> None:
            if self._data_producers.get(key) is data_producer:
                del self._data_producers[key]
                self._home.pop(key, None)
            if self._lost(worker):
                self._mafalda.record_loss(worker, "dataProducers", key)

        data_producer.observer.on("close", closed)

    def _adopt_consumer(
        self, worker: Worker, consumer: Consumer | DataConsumer, data: bool
    ) -> None:
        source = (
            consumer.data_producer_id
            if isinstance(consumer, DataConsumer)
            else consumer.producer_id
        )
        pipe = self._pipes.get(_pipe_key(source, worker, data))
        if pipe is not None and not pipe.closed:
            pipe.users.add(consumer.id)

        def closed() -> None:
            if pipe is not None:
                pipe.users.discard(consumer.id)
                self._release_pipe_if_idle(pipe)
            if self._lost(worker):
                kind = "dataConsumers" if data else "consumers"
                self._mafalda.record_loss(worker, kind, consumer.id)

        consumer.observer.on("close", closed)

    async def create_webrtc_transport(self, **options: Any) -> WebRtcTransport:
        """As mediasoup's; with ``webrtc_server`` the transport goes to that server's worker."""
        server = options.get("webrtc_server")
        pinned = self._mafalda.worker_of_webrtc_server(server) if server is not None else None
        worker, child = await self._placed_child(pinned)
        with self._mafalda.reserve(worker):
            transport = await child.create_webrtc_transport(**options)
        self._adopt(worker, transport)
        return transport

    async def create_plain_transport(self, **options: Any) -> PlainTransport:
        worker, child = await self._placed_child()
        with self._mafalda.reserve(worker):
            transport = await child.create_plain_transport(**options)
        self._adopt(worker, transport)
        return transport

    async def create_pipe_transport(self, **options: Any) -> PipeTransport:
        worker, child = await self._placed_child()
        with self._mafalda.reserve(worker):
            transport = await child.create_pipe_transport(**options)
        self._adopt(worker, transport)
        return transport

    async def create_direct_transport(self, **options: Any) -> DirectTransport:
        worker, child = await self._placed_child()
        with self._mafalda.reserve(worker):
            transport = await child.create_direct_transport(**options)
        self._adopt(worker, transport)
        return transport

    # -- pipes between workers ----------------------------------------------------------------

    @asynccontextmanager
    async def _pipe_guard(self, source_id: str, dst: Worker, data: bool) -> AsyncIterator[None]:
        """Around a consume on ``dst``: make the (data) producer available there first."""
        home = self._home.get(source_id)
        if home is None or home is dst or self._closed:
            yield
            return
        pipe = await self._acquire_pipe(source_id, home, dst, data)
        try:
            yield
        finally:
            pipe.pending -= 1
            self._release_pipe_if_idle(pipe)

    async def _acquire_pipe(self, source_id: str, home: Worker, dst: Worker, data: bool) -> _Pipe:
        key = _pipe_key(source_id, dst, data)
        pipe = self._pipes.get(key)
        if pipe is None or pipe.closed:
            pipe = _Pipe(
                key=key,
                home=home,
                dst=dst,
                data=data,
                ready=asyncio.get_running_loop().create_future(),
            )
            self._pipes[key] = pipe
            self._spawn(self._open_pipe(pipe, source_id))
        pipe.pending += 1
        try:
            await asyncio.shield(pipe.ready)
        except BaseException:
            pipe.pending -= 1
            raise
        return pipe

    async def _open_pipe(self, pipe: _Pipe, source_id: str) -> None:
        try:
            pair = await self._acquire_pair(pipe.home, pipe.dst)
            pipe.pair = pair
            pair.pipes.add(pipe)
            pair.pending -= 1
            local, remote = pair.transports[pipe.home], pair.transports[pipe.dst]
            if pipe.data:
                await self._open_data_pipe(pipe, source_id, local, remote)
            else:
                await self._open_media_pipe(pipe, source_id, local, remote)
        except BaseException as error:
            self._close_pipe(pipe)
            if not pipe.ready.done():
                pipe.ready.set_exception(error)
                pipe.ready.exception()  # awaiters get it; nobody waiting is fine too
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        pipe.ready.set_result(None)

    async def _open_media_pipe(
        self, pipe: _Pipe, producer_id: str, local: PipeTransport, remote: PipeTransport
    ) -> None:
        producer = self._producers[producer_id]
        consumer = await local.consume(producer_id=producer_id)
        pipe.consumer = consumer
        keep = not self._mafalda.worker_hosts(pipe.dst, producer_id)
        piped = await remote.produce(
            id=producer_id if keep else None,
            kind=consumer.kind,
            rtp_parameters=consumer.rtp_parameters,
            paused=consumer.producer_paused,
            app_data=producer.app_data,
        )
        pipe.producer = piped
        if not keep:
            self._children[pipe.dst].alias_producer(producer_id, piped)
        if producer.closed:
            raise InvalidStateError("original Producer closed")
        self._wire_pipe(pipe, consumer, piped)
        if piped.paused != producer.paused:
            await (piped.pause() if producer.paused else piped.resume())

    async def _open_data_pipe(
        self, pipe: _Pipe, data_producer_id: str, local: PipeTransport, remote: PipeTransport
    ) -> None:
        data_producer = self._data_producers[data_producer_id]
        consumer = await local.consume_data(data_producer_id=data_producer_id)
        pipe.consumer = consumer
        keep = not self._mafalda.worker_hosts(pipe.dst, data_producer_id)
        piped = await remote.produce_data(
            id=data_producer_id if keep else None,
            sctp_stream_parameters=consumer.sctp_stream_parameters,
            label=consumer.label,
            protocol=consumer.protocol,
            app_data=data_producer.app_data,
        )
        pipe.producer = piped
        if not keep:
            self._children[pipe.dst].alias_data_producer(data_producer_id, piped)
        if data_producer.closed:
            raise InvalidStateError("original DataProducer closed")
        self._wire_pipe(pipe, consumer, piped)
        if consumer.data_producer_paused != piped.paused:
            await (piped.pause() if consumer.data_producer_paused else piped.resume())

    def _wire_pipe(
        self,
        pipe: _Pipe,
        consumer: Consumer | DataConsumer,
        piped: Producer | DataProducer,
    ) -> None:
        """The copy follows its pipe consumer: the consumer's pause state follows the
        original (data) producer's, so consumers on the far side see producerpause /
        dataproducerpause and resume (mediasoup's pipeToRouter carries it for media only;
        a Router spanning workers must for data too); either end closing closes the pipe.
        """
        consumer.observer.on("pause", lambda: self._spawn(_quietly(piped.pause())))
        consumer.observer.on("resume", lambda: self._spawn(_quietly(piped.resume())))
        consumer.observer.on("close", lambda: self._close_pipe(pipe))
        piped.observer.on("close", lambda: self._close_pipe(pipe))

    def _release_pipe_if_idle(self, pipe: _Pipe) -> None:
        if not pipe.closed and not pipe.users and pipe.pending == 0 and pipe.ready.done():
            self._close_pipe(pipe)

    def _close_pipe(self, pipe: _Pipe) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        if self._pipes.get(pipe.key) is pipe:
            del self._pipes[pipe.key]
        for end in (pipe.producer, pipe.consumer):
            if end is not None:
                end.close()
        pair = pipe.pair
        if pair is not None:
            pair.pipes.discard(pipe)
            self._release_pair_if_idle(pair)
        if not self._closed:
            self._release_child_if_idle(pipe.dst)

    async def _acquire_pair(self, home: Worker, dst: Worker) -> _PipePair:
        key = frozenset((home, dst))
        pair = self._pairs.get(key)
        if pair is None or pair.closed:
            pair = _PipePair(key=key, ready=asyncio.get_running_loop().create_future())
            self._pairs[key] = pair
            self._spawn(self._open_pair(pair, home, dst))
        pair.pending += 1
        assert pair.ready is not None
        try:
            await asyncio.shield(pair.ready)
        except BaseException:
            pair.pending -= 1
            raise
        return pair

    async def _open_pair(self, pair: _PipePair, home: Worker, dst: Worker) -> None:
        assert pair.ready is not None
        try:
            child_home, child_dst = await asyncio.gather(self._child(home), self._child(dst))
            a, b = await open_pipe_pair(
                child_home.create_pipe_transport(listen_info=_PIPE_LISTEN, enable_sctp=True),
                child_dst.create_pipe_transport(listen_info=_PIPE_LISTEN, enable_sctp=True),
            )
            pair.transports = {home: a, dst: b}
            for transport in (a, b):
                transport.observer.on("close", lambda: self._close_pair(pair))
        except BaseException as error:
            self._close_pair(pair)
            pair.ready.set_exception(error)
            pair.ready.exception()
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        pair.ready.set_result(None)

    def _release_pair_if_idle(self, pair: _PipePair) -> None:
        if not pair.pipes and pair.pending == 0:
            self._close_pair(pair)

    def _close_pair(self, pair: _PipePair) -> None:
        if pair.closed:
            return
        pair.closed = True
        if self._pairs.get(pair.key) is pair:
            del self._pairs[pair.key]
        for pipe in list(pair.pipes):
            self._close_pipe(pipe)
        for transport in pair.transports.values():
            transport.close()
        if not self._closed:
            for worker in pair.key:
                self._release_child_if_idle(worker)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- piping to other routers ----------------------------------------------------------------

    async def pipe_to_router(
        self,
        *,
        router: Router | MafaldaRouter,
        producer_id: str | None = None,
        data_producer_id: str | None = None,
        **options: Any,
    ) -> PipeToRouterResult:
        """As mediasoup's, from wherever the (data) producer lives into ``router``."""
        self._check_open()
        if not producer_id and not data_producer_id:
            raise TypeError("missing producer_id or data_producer_id")
        if producer_id and data_producer_id:
            raise TypeError("just producer_id or data_producer_id can be given")
        if router is self:
            raise TypeError("cannot use this Router as destination")
        source_id = producer_id or data_producer_id
        assert source_id is not None
        home = self._home.get(source_id)
        if home is None:
            kind = "Producer" if producer_id else "DataProducer"
            raise ValueError(f'{kind} with id "{source_id}" not found')
        target: Router
        target_worker: Worker | None = None
        if isinstance(router, MafaldaRouter):
            target_worker = await router._mafalda.place(router)
            _, target = await router._placed_child(target_worker)
            if options.get("keep_id", True) and router._mafalda.worker_hosts(
                target_worker, source_id
            ):
                # Ids are unique per worker: the copy gets its own id there, and the
                # target router knows it by the original one.
                options["keep_id"] = False
        elif isinstance(router, Router):
            target = router
        else:
            raise TypeError("router must be a Router or a MafaldaRouter")
        source = await self._child(home)
        result = await source.pipe_to_router(
            router=target, producer_id=producer_id, data_producer_id=data_producer_id, **options
        )
        if isinstance(router, MafaldaRouter) and target_worker is not None:
            # The piped copy is the target router's producer from now on, by this id.
            if "pipeProducer" in result:
                piped = result["pipeProducer"]
                if piped.id != source_id:
                    target.alias_producer(source_id, piped)
                router._adopt_producer(target_worker, piped, source_id)
            if "pipeDataProducer" in result:
                piped_data = result["pipeDataProducer"]
                if piped_data.id != source_id:
                    target.alias_data_producer(source_id, piped_data)
                router._adopt_data_producer(target_worker, piped_data, source_id)
        return result

    # -- RTP observers --------------------------------------------------------------------------

    def _adopt_observer(self, worker: Worker, rtp_observer: RtpObserver) -> None:
        oid = rtp_observer.id
        self._rtp_observers[oid] = rtp_observer
        self._observer_worker[oid] = worker
        rtp_observer.add_producer_guard = lambda producer_id: self._pipe_guard(
            producer_id, worker, False
        )
        watched: dict[str, _Pipe] = {}

        def added(producer: Producer) -> None:
            pipe = self._pipes.get(_pipe_key(producer.id, worker, False))
            if pipe is not None:
                pipe.users.add(f"observer:{oid}")
                watched[producer.id] = pipe

        def removed(producer: Producer) -> None:
            pipe = watched.pop(producer.id, None)
            if pipe is not None:
                pipe.users.discard(f"observer:{oid}")
                self._release_pipe_if_idle(pipe)

        def closed() -> None:
            self._rtp_observers.pop(oid, None)
            self._observer_worker.pop(oid, None)
            for pipe in watched.values():
                pipe.users.discard(f"observer:{oid}")
                self._release_pipe_if_idle(pipe)
            watched.clear()
            if self._lost(worker):
                self._mafalda.record_loss(worker, "rtpObservers", oid)
            else:
                self._release_child_if_idle(worker)

        rtp_observer.observer.on("addproducer", added)
        rtp_observer.observer.on("removeproducer", removed)
        rtp_observer.observer.on("close", closed)
        self.observer.emit("newrtpobserver", rtp_observer)

    async def create_active_speaker_observer(self, **options: Any) -> ActiveSpeakerObserver:
        worker, child = await self._placed_child()
        rtp_observer = await child.create_active_speaker_observer(**options)
        self._adopt_observer(worker, rtp_observer)
        return rtp_observer

    async def create_audio_level_observer(self, **options: Any) -> AudioLevelObserver:
        worker, child = await self._placed_child()
        rtp_observer = await child.create_audio_level_observer(**options)
        self._adopt_observer(worker, rtp_observer)
        return rtp_observer

    # -- capabilities ---------------------------------------------------------------------------

    def can_consume(self, *, producer_id: str, rtp_capabilities: RtpCapabilities) -> bool:
        producer = self._producers.get(producer_id)
        if producer is None:
            logger.error('can_consume() | Producer with id "%s" not found', producer_id)
            return False
        try:
            return ortc.can_consume(
                producer.consumable_rtp_parameters, copy.deepcopy(rtp_capabilities)
            )
        except (TypeError, ValueError) as error:
            logger.error("can_consume() | invalid rtp_capabilities: %s", error)
            return False

    def update_media_codecs(self, media_codecs: list[RouterRtpCodecCapability]) -> None:
        self._check_open()
        capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))
        for child in self._children.values():
            child.update_media_codecs(media_codecs)
        self._media_codecs = copy.deepcopy(media_codecs)
        self._rtp_capabilities = capabilities

    # -- dumps ----------------------------------------------------------------------------------

    def _internal_ids(self) -> set[str]:
        ids: set[str] = set()
        for pipe in self._pipes.values():
            if pipe.consumer is not None:
                ids.add(pipe.consumer.id)
        for pair in self._pairs.values():
            ids.update(t.id for t in pair.transports.values())
        return ids

    async def dump(self) -> RouterDump:
        """mediasoup's Router dump, merged over the child routers (pipes left out)."""
        self._check_open()
        dumps = await asyncio.gather(*(child.dump() for child in list(self._children.values())))
        internal = self._internal_ids()
        merged: dict[str, dict[str, list[str]]] = {
            "mapProducerIdConsumerIds": {},
            "mapProducerIdObserverIds": {},
            "mapDataProducerIdDataConsumerIds": {},
        }
        pairs: dict[str, dict[str, str]] = {
            "mapConsumerIdProducerId": {},
            "mapDataConsumerIdDataProducerId": {},
        }
        for dump in dumps:
            for name, table in merged.items():
                for entry in dump[name]:  # type: ignore[literal-required]
                    values = [v for v in entry["values"] if v not in internal]
                    table.setdefault(entry["key"], []).extend(values)
            for name, mapping in pairs.items():
                for entry in dump[name]:  # type: ignore[literal-required]
                    if entry["key"] not in internal:
                        mapping[entry["key"]] = entry["value"]
        user_sources = set(self._producers) | set(self._data_producers)
        return {
            "id": self._id,
            "transportIds": list(self._transports),
            "rtpObserverIds": list(self._rtp_observers),
            "mapProducerIdConsumerIds": _entries(merged["mapProducerIdConsumerIds"], user_sources),
            "mapConsumerIdProducerId": [
                {"key": k, "value": v} for k, v in pairs["mapConsumerIdProducerId"].items()
            ],
            "mapProducerIdObserverIds": _entries(merged["mapProducerIdObserverIds"], user_sources),
            "mapDataProducerIdDataConsumerIds": _entries(
                merged["mapDataProducerIdDataConsumerIds"], user_sources
            ),
            "mapDataConsumerIdDataProducerId": [
                {"key": k, "value": v} for k, v in pairs["mapDataConsumerIdDataProducerId"].items()
            ],
        }

    async def mafalda_dump(self) -> dict[str, Any]:
        """Mafalda's view: children per worker, transports, pipes and consumers per worker."""
        workers: dict[int, dict[str, Any]] = {}
        for worker, child in self._children.items():
            transports = child.transports_for_testing.values()
            workers[worker.pid] = {
                "routerId": child.id,
                "transports": sum(1 for t in transports if t.id in self._transports),
                "pipeTransports": sum(
                    1
                    for t in transports
                    if isinstance(t, PipeTransport) and t.id not in self._transports
                ),
                "consumers": sum(len(t.consumers) for t in transports),
                "producers": sum(
                    1 for p, w in self._home.items() if w is worker and p in self._producers
                ),
            }
        return {
            "id": self._id,
            "workers": workers,
            "pipes": [
                {
                    "id": pipe.key[1],
                    "kind": "data" if pipe.data else "media",
                    "from": pipe.home.pid,
                    "to": pipe.dst.pid,
                    "users": len(pipe.users),
                }
                for pipe in self._pipes.values()
            ],
            "pipeTransportPairs": [sorted(w.pid for w in key) for key in self._pairs],
        }

    # -- closing --------------------------------------------------------------------------------

    def _close_all(self) -> None:
        self._closed = True
        # Closing the children closes every pipe with them: mark pipes and pairs closed
        # first so no request is sent for what the cascade closes anyway.
        for pipe in self._pipes.values():
            pipe.closed = True
        for pair in self._pairs.values():
            pair.closed = True
        for task in list(self._tasks):
            task.cancel()
        for future in self._child_futures.values():
            future.cancel()
        for child in list(self._children.values()):
            child.close()
        self._children.clear()
        self._pipes.clear()
        self._pairs.clear()

    def close(self) -> None:
        if self._closed:
            return
        self._close_all()
        self.events.emit("@close")
        self.observer.emit("close")

    def mafalda_closed(self) -> None:
        """Called by Mafalda when it closes (mediasoup's worker_closed)."""
        if self._closed:
            return
        self._close_all()
        self.events.emit("workerclose")
        self.observer.emit("close")


def _pipe_key(source_id: str, dst: Worker, data: bool) -> tuple[str, str, int]:
    return ("data" if data else "media", source_id, dst.pid)


def _entries(table: dict[str, list[str]], keep: set[str]) -> list[dict[str, Any]]:
    return [{"key": k, "values": v} for k, v in table.items() if k in keep]


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as error:
        logger.debug("pipe follow-up failed: %s", error)
