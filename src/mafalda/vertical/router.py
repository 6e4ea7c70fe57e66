"""MafaldaRouter: mediasoup's Router API over one child Router per worker it uses.

Transports are created on the worker the pool's policy chooses; what they return
(transports, producers, consumers, data producers and consumers) are mediasoup's own
objects. Consuming a producer that lives on another worker pipes it there first (the
bookkeeping of pipes, pairs and idle children is SpanningRouter's).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import TYPE_CHECKING, Any

from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.direct_transport import DirectTransport
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.pipe_transport import PipeTransport
from mafalda.mediasoup.plain_transport import PlainTransport
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.router import PipeToRouterResult, Router, validate_listen_choice
from mafalda.mediasoup.rtp_observer import RtpObserver
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability
from mafalda.mediasoup.transport import Transport
from mafalda.mediasoup.webrtc_transport import WebRtcTransport
from mafalda.mediasoup.worker import Worker
from mafalda.vertical.spanning import SpanningRouter, source_open

if TYPE_CHECKING:
    from mafalda.mediasoup.active_speaker_observer import ActiveSpeakerObserver
    from mafalda.mediasoup.audio_level_observer import AudioLevelObserver
    from mafalda.vertical.mafalda import Mafalda

_PIPE_LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}


class MafaldaRouter(SpanningRouter[Worker]):
    """A Router spanning the workers of a Mafalda pool. Create with Mafalda.create_router()."""

    def __init__(
        self,
        *,
        mafalda: Mafalda,
        media_codecs: list[RouterRtpCodecCapability] | None,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__(media_codecs=media_codecs, app_data=app_data)
        self._mafalda = mafalda

    # -- SpanningRouter's hooks -------------------------------------------------------------

    async def _new_child(self, host: Worker) -> Router:
        return await host.create_router(
            media_codecs=copy.deepcopy(self._media_codecs), app_data={"mafaldaRouterId": self._id}
        )

    def _pair_transports(
        self, home: Worker, dst: Worker, child_home: Any, child_dst: Any
    ) -> tuple[Awaitable[Any], Awaitable[Any]]:
        return (
            child_home.create_pipe_transport(listen_info=_PIPE_LISTEN, enable_sctp=True),
            child_dst.create_pipe_transport(listen_info=_PIPE_LISTEN, enable_sctp=True),
        )

    def _lost(self, host: Worker) -> bool:
        return host.died

    def _record_loss(self, host: Worker, kind: str, object_id: str) -> None:
        self._mafalda.record_loss(host, kind, object_id)

    def _claim_id(self, host: Worker, source_id: str) -> contextlib.AbstractContextManager[bool]:
        return self._mafalda.claim_id(host, source_id)

    def _guard(self, host: Worker, transport: Any) -> None:
        # One router: an id is unique in it as in a Router (whose worker refuses a
        # duplicate), whichever worker the new producer would be on, two produce() calls
        # at once included. And in its worker, as the worker wants: refused when a copy
        # has it there, held against a copy being piped there meanwhile.
        transport.produce_guard = lambda producer_id: self._taking(host, producer_id, "Producer")
        transport.produce_data_guard = lambda data_producer_id: self._taking(
            host, data_producer_id, "DataProducer"
        )
        transport.consume_guard = lambda producer_id: self._pipe_guard(producer_id, host, False)
        transport.consume_data_guard = lambda data_producer_id: self._pipe_guard(
            data_producer_id, host, True
        )

    @contextlib.contextmanager
    def _taking(self, host: Worker, object_id: str, kind: str) -> Iterator[None]:
        """Around an application's produce() / produce_data() of ``object_id`` on
        ``host``: the id taken in this router, then on that worker (TypeError if either
        has it)."""
        with self._making(object_id, kind), self._mafalda.take_id(host, object_id):
            yield

    def _guard_observer(self, host: Worker, rtp_observer: Any) -> None:
        rtp_observer.add_producer_guard = lambda producer_id: self._pipe_guard(
            producer_id, host, False
        )

    # -- mediasoup Router properties ----------------------------------------------------------

    @property
    def transports_for_testing(self) -> dict[str, Transport]:
        return self._transports

    @property
    def mafalda(self) -> Mafalda:
        return self._mafalda

    def __repr__(self) -> str:
        return f"<MafaldaRouter id={self._id} workers={len(self._children)} closed={self._closed}>"

    # -- children ----------------------------------------------------------------------------

    def child_router(self, worker: Worker) -> Router | None:
        """The child Router on ``worker``, if this router uses that worker now."""
        child: Router | None = self._children.get(worker)
        return child

    @property
    def child_routers(self) -> dict[int, Router]:
        """Child routers by worker pid."""
        return {w.pid: r for w, r in self._children.items()}

    def worker_of(self, obj: Transport | Producer | DataProducer | RtpObserver) -> Worker:
        """The worker hosting a transport, a producer, a data producer or an observer."""
        if isinstance(obj, Transport) and obj.id in self._transport_host:
            return self._transport_host[obj.id]
        if isinstance(obj, RtpObserver) and obj.id in self._observer_host:
            return self._observer_host[obj.id]
        data = isinstance(obj, DataProducer)
        home = self._home.get((obj.id, data))
        if home is not None:
            return home
        # A copy under its own id on a worker that had the source's, known by the latter.
        table: dict[str, Any] = self._data_producers if data else self._producers
        for key, source in table.items():
            if source is obj:
                return self._home[(key, data)]
        raise ValueError(f"{type(obj).__name__} {obj.id} is not on this router")

    @contextlib.asynccontextmanager
    async def _placed(self, worker: Worker | None = None) -> AsyncIterator[tuple[Worker, Router]]:
        """The worker (``worker``, or the policy's choice) and this router's child there,
        both held (counted by the pool, not idle) until the body has made and adopted
        what it makes."""
        self._check_open()
        if worker is None:
            worker = await self._mafalda.place(self)
        with self._busy(worker), self._mafalda.reserve(worker):
            child: Router = await self._child(worker)
            self._check_open()
            if worker.closed:  # closed from outside while its child was being made
                raise InvalidStateError("Worker closed")
            yield worker, child

    # -- transports -----------------------------------------------------------------------------

    async def create_webrtc_transport(self, **options: Any) -> WebRtcTransport:
        """As mediasoup's. ``webrtc_server``: one of this Mafalda's MafaldaWebRtcServers
        (the transport is placed as any other, on that worker's real WebRtcServer), or a
        WebRtcServer of one of its workers (``create_webrtc_servers()``,
        ``worker.create_webrtc_server()``): the transport goes to that server's worker,
        however loaded, as a WebRtcServer's transports share its worker (a worker started
        after those servers were made has none: no such transport goes there)."""
        from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

        server = options.get("webrtc_server")
        spanning = server if isinstance(server, MafaldaWebRtcServer) else None
        if spanning is not None:
            self._check_open()
            validate_listen_choice(server, options.get("listen_infos"), options.get("listen_ips"))
            spanning._check_usable_by(self._mafalda)
        pinned = None
        if server is not None and spanning is None:
            pinned = self._mafalda.worker_of_webrtc_server(server)
        async with self._placed(pinned) as (worker, child):
            if spanning is not None:
                options["webrtc_server"] = await spanning.on_host(worker)
                self._check_open()
            transport = await child.create_webrtc_transport(**options)
            self._adopt(worker, transport)
        return transport

    async def create_plain_transport(self, **options: Any) -> PlainTransport:
        async with self._placed() as (worker, child):
            transport = await child.create_plain_transport(**options)
            self._adopt(worker, transport)
        return transport

    async def create_pipe_transport(self, **options: Any) -> PipeTransport:
        async with self._placed() as (worker, child):
            transport = await child.create_pipe_transport(**options)
            self._adopt(worker, transport)
        return transport

    async def create_direct_transport(self, **options: Any) -> DirectTransport:
        async with self._placed() as (worker, child):
            transport = await child.create_direct_transport(**options)
            self._adopt(worker, transport)
        return transport

    # -- aliases ------------------------------------------------------------------------------

    def has_producer(self, producer_id: str) -> bool:
        """Whether consume(producer_id=...) finds it in this router (aliases included)."""
        return producer_id in self._producers

    def has_data_producer(self, data_producer_id: str) -> bool:
        """As has_producer(), for consume_data()."""
        return data_producer_id in self._data_producers

    def alias_producer(self, key: str, producer: Producer) -> None:
        """As Router's: ``producer`` of this router (a pipe copy made with its own id
        because its worker hosts that id already) is findable as ``key`` too, from every
        worker of the pool. It goes when the producer closes."""
        worker = self._aliased_home(key, producer, self._producers, "Producer")
        self._children[worker].alias_producer(key, producer)
        self._adopt_producer(worker, producer, key)

    def alias_data_producer(self, key: str, data_producer: DataProducer) -> None:
        """As alias_producer(), for a data producer."""
        worker = self._aliased_home(key, data_producer, self._data_producers, "DataProducer")
        self._children[worker].alias_data_producer(key, data_producer)
        self._adopt_data_producer(worker, data_producer, key)

    def _aliased_home(self, key: str, source: Any, table: dict[str, Any], kind: str) -> Worker:
        self._check_open()
        if not isinstance(key, str) or not key:
            raise TypeError("key must be a non-empty string")
        source_id: str = getattr(source, "id", "")
        if table.get(source_id) is not source:
            raise ValueError(f"{kind} {source_id or source!r} is not of this router")
        self._refuse_taken(key, kind)  # one id space: an id being made is taken too
        return self._home[(source_id, kind == "DataProducer")]

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
        if not isinstance(options.get("keep_id", True), bool):
            raise TypeError("keep_id must be a bool")
        source_id, home = self._pipe_source(router, producer_id, data_producer_id)
        if not isinstance(router, MafaldaRouter) or not options.get("keep_id", True):
            # A copy with a new id takes nothing of the target's id space.
            return await self._pipe_to(
                router, source_id, home, producer_id, data_producer_id, options
            )
        with router._making(source_id, "Producer" if producer_id else "DataProducer"):
            return await self._pipe_to(
                router, source_id, home, producer_id, data_producer_id, options
            )

    async def _pipe_to(
        self,
        router: Router | MafaldaRouter,
        source_id: str,
        home: Worker,
        producer_id: str | None,
        data_producer_id: str | None,
        options: dict[str, Any],
    ) -> PipeToRouterResult:
        target: Router
        target_worker: Worker | None = None
        keep_id = options.get("keep_id", True)
        async with contextlib.AsyncExitStack() as stack:
            if isinstance(router, MafaldaRouter):
                target_worker = await router._mafalda.place(router)
                _, target = await stack.enter_async_context(router._placed(target_worker))
            elif isinstance(router, Router):
                target = router
            else:
                raise TypeError("router must be a Router or a MafaldaRouter")
            source: Router = await self._child(home)
            kind = "Producer" if producer_id else "DataProducer"
            table = self._producers if producer_id else self._data_producers
            # Closed while the target was placed: its id would look free on its own
            # worker, and the copy told to keep it there (the worker's refusal).
            source_open(table.get(source_id), kind)
            if isinstance(router, MafaldaRouter) and target_worker is not None and keep_id:
                # Ids are unique per worker: a copy where the id is taken gets its own
                # there, and the target router knows it by the original one.
                options["keep_id"] = stack.enter_context(
                    router._mafalda.claim_id(target_worker, source_id)
                )
            result = await source.pipe_to_router(
                router=target,
                producer_id=producer_id,
                data_producer_id=data_producer_id,
                **options,
            )
            if isinstance(router, MafaldaRouter) and target_worker is not None:
                # The piped copy is the target router's producer from now on, by the
                # source's id unless the caller asked for a new one.
                if "pipeProducer" in result:
                    piped = result["pipeProducer"]
                    key = source_id if keep_id else piped.id
                    if piped.id != key:
                        target.alias_producer(key, piped)
                    router._adopt_producer(target_worker, piped, key)
                if "pipeDataProducer" in result:
                    piped_data = result["pipeDataProducer"]
                    key = source_id if keep_id else piped_data.id
                    if piped_data.id != key:
                        target.alias_data_producer(key, piped_data)
                    router._adopt_data_producer(target_worker, piped_data, key)
        return result

    # -- RTP observers --------------------------------------------------------------------------

    async def create_active_speaker_observer(self, **options: Any) -> ActiveSpeakerObserver:
        async with self._placed() as (worker, child):
            rtp_observer = await child.create_active_speaker_observer(**options)
            self._adopt_observer(worker, rtp_observer)
        return rtp_observer

    async def create_audio_level_observer(self, **options: Any) -> AudioLevelObserver:
        async with self._placed() as (worker, child):
            rtp_observer = await child.create_audio_level_observer(**options)
            self._adopt_observer(worker, rtp_observer)
        return rtp_observer

    # -- dumps ----------------------------------------------------------------------------------

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
                "producers": self._producer_count(worker),
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

    def mafalda_closed(self) -> None:
        """Called by Mafalda when it closes (mediasoup's worker_closed)."""
        if self._closed:
            return
        self._close_all()
        self.events.emit("workerclose")
        self.observer.emit("close")
