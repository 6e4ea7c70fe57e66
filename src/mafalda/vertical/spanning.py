"""SpanningRouter: mediasoup's Router API over one child Router per host it uses.

A host is whatever runs a child router: a worker of a Mafalda pool (MafaldaRouter) or a
media server of a cluster (ClusterRouter). This base keeps the bookkeeping both share:
which host each transport, producer and observer lives on; consuming a producer that
lives on another host pipes it there first (one pipe per (producer, host), shared by
every later consumer there, closed when its last user goes); one pipe transport pair
per host pair, closed when it carries nothing; a child router with nothing left on it,
closed too. Subclasses say where things go and how a host's objects are made.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Hashable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mafalda.mediasoup import ortc
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.pipe_transport import open_pipe_pair, sctp_connected
from mafalda.mediasoup.router import RouterDump, answer_can_consume
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability, RtpCapabilities
from mafalda.mediasoup.worker import validate_app_data

logger = logging.getLogger("mafalda.vertical.spanning")

H = TypeVar("H", bound=Hashable)
T = TypeVar("T")


def made_once(
    makings: dict[H, asyncio.Future[T]], key: H, make: Callable[[H], Awaitable[T]]
) -> Awaitable[T]:
    """The making of ``key`` under way in ``makings``, or ``make(key)`` started there:
    whoever asks meanwhile waits for the same one. Shielded: a caller cancelled must not
    cancel a making others wait for, nor leave what it made unknown to everyone."""
    future = makings.get(key)
    if future is None:
        future = asyncio.ensure_future(make(key))
        makings[key] = future

        def done(f: asyncio.Future[T]) -> None:
            makings.pop(key, None)
            if not f.cancelled():
                f.exception()  # its waiters raise it; none at all is fine too

        future.add_done_callback(done)
    return asyncio.shield(future)


@contextlib.contextmanager
def counting(counts: dict[H, int], key: H) -> Iterator[None]:
    """``counts[key]`` one more while inside (the key gone when back to none)."""
    counts[key] = counts.get(key, 0) + 1
    try:
        yield
    finally:
        left = counts[key] - 1
        if left:
            counts[key] = left
        else:
            del counts[key]


@dataclass(eq=False, slots=True)
class PipePair(Generic[H]):
    """Two connected PipeTransports between the child routers of two hosts."""

    key: frozenset[H]
    ready: asyncio.Future[None]
    transports: dict[H, Any] = field(default_factory=dict)
    pipes: set[Pipe[H]] = field(default_factory=set)
    pending: int = 0
    closed: bool = False


@dataclass(eq=False, slots=True)
class Pipe(Generic[H]):
    """One producer (or data producer) of host ``home`` made available on ``dst``."""

    key: tuple[str, str, H]
    home: H
    dst: H
    data: bool
    ready: asyncio.Future[None]
    opening: asyncio.Task[None] | None = None
    pair: PipePair[H] | None = None
    consumer: Any = None
    producer: Any = None
    users: set[str] = field(default_factory=set)
    pending: int = 0
    closed: bool = False


def pipe_key(source_id: str, dst: H, data: bool) -> tuple[str, str, H]:
    return ("data" if data else "media", source_id, dst)


class SpanningRouter(EventSource, Generic[H], ABC):
    """The shared machinery of routers that span hosts (see the module docstring)."""

    def __init__(
        self,
        *,
        media_codecs: list[RouterRtpCodecCapability] | None,
        app_data: dict[str, Any] | None,
    ) -> None:
        """Validate ``app_data`` and the codecs (the Router's RTP capabilities come from
        them) before anything reaches a host."""
        validate_app_data(app_data)
        self._rtp_capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))
        # Router capabilities are a deterministic function of the media codecs, so every
        # child router generated from the same codecs agrees on payload types.
        self._media_codecs = copy.deepcopy(media_codecs)
        self._id = str(uuid.uuid4())
        self._closed = False
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._children: dict[H, Any] = {}
        self._child_futures: dict[H, asyncio.Future[Any]] = {}
        #: How many wait for the child being made on each host (see _create_child).
        self._child_askers: dict[H, int] = {}
        self._transports: dict[str, Any] = {}
        self._transport_host: dict[str, H] = {}
        self._producers: dict[str, Any] = {}
        self._data_producers: dict[str, Any] = {}
        #: The keys of each table that are not its own transports' sources under their
        #: ids (aliases, copies piped in): the layers above list them without a walk of
        #: every producer.
        self._other_keys: dict[str, set[str]] = {"producers": set(), "dataProducers": set()}
        #: The host of each producer (id, False) and data producer (id, True): two id
        #: spaces, as in mediasoup.
        self._home: dict[tuple[str, bool], H] = {}
        self._rtp_observers: dict[str, Any] = {}
        self._observer_host: dict[str, H] = {}
        self._pairs: dict[frozenset[H], PipePair[H]] = {}
        self._pipes: dict[tuple[str, str, H], Pipe[H]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        #: (id, kind) of the producers being made here with an id given (produce()) or
        #: piped in (pipe_to_router() from another router): a second at once would
        #: shadow the first.
        self._incoming: set[tuple[str, str]] = set()
        #: Transports and observers being made on each host: its child is not idle.
        self._busy_hosts: dict[H, int] = {}
        self.events = EventEmitter()
        self.observer = EventEmitter()

    # -- what subclasses provide ---------------------------------------------------------

    @abstractmethod
    async def _new_child(self, host: H) -> Any:
        """Create this router's child Router on ``host``."""

    @abstractmethod
    def _pair_transports(
        self, home: H, dst: H, child_home: Any, child_dst: Any
    ) -> tuple[Awaitable[Any], Awaitable[Any]]:
        """The two create_pipe_transport() calls of a pair between ``home`` and ``dst``."""

    @abstractmethod
    def _lost(self, host: H) -> bool:
        """Whether ``host`` is gone (its objects closed because it died)."""

    def _record_loss(self, host: H, kind: str, object_id: str) -> None:
        """An object of this router closed because ``host`` died."""

    @abstractmethod
    def _claim_id(self, host: H, source_id: str) -> contextlib.AbstractContextManager[bool]:
        """Around the making of a copy of ``source_id`` on ``host``: whether it may keep
        that id (no (data) producer there has it or is being made with it). One that may
        not gets its own id, and the child knows it by the original one too."""

    def _alias(self, host: H, source_id: str, piped: Any, data: bool) -> None:
        """Make ``host``'s child find the copy ``piped`` (made with its own id) by
        ``source_id`` too."""
        child = self._children[host]
        if data:
            child.alias_data_producer(source_id, piped)
        else:
            child.alias_producer(source_id, piped)

    def _guard(self, host: H, transport: Any) -> None:
        """Make consume() / consume_data() on ``transport`` call ``_pipe_guard`` first."""

    def _guard_observer(self, host: H, rtp_observer: Any) -> None:
        """Make add_producer() on ``rtp_observer`` call ``_pipe_guard`` first."""

    # -- mediasoup Router properties -----------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def rtp_capabilities(self) -> RtpCapabilities:
        return self._rtp_capabilities

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Router closed")

    # -- children ------------------------------------------------------------------------

    async def _child(self, host: H) -> Any:
        child = self._children.get(host)
        if child is not None:
            return child
        with counting(self._child_askers, host):
            return await made_once(self._child_futures, host, self._create_child)

    async def _create_child(self, host: H) -> Any:
        media_codecs = self._media_codecs
        child = await self._new_child(host)
        if self._closed:
            child.close()
            raise InvalidStateError("Router closed")
        if child.closed:
            # Its host closed as it was being made: its 'workerclose' is gone already, so
            # kept it would stay in the router for good (and fail every dump()).
            raise InvalidStateError("child router closed with its host")
        if self._media_codecs is not media_codecs:
            # update_media_codecs() went over the children while this one was being made.
            child.update_media_codecs(copy.deepcopy(self._media_codecs))
        self._children[host] = child
        child.on("workerclose", lambda: self._on_child_lost(host, child))
        child.observer.on("close", lambda: self._forget_child(host, child))
        if host not in self._child_askers:
            # All who asked for it were cancelled meanwhile (its making went on without
            # them): nothing would ever use it, nor close it, and it would keep its host
            # from being freed.
            self._release_child_if_idle(host)
        return child

    def _forget_child(self, host: H, child: Any) -> None:
        if self._children.get(host) is child:
            del self._children[host]
            self._child_gone(host)

    def _child_gone(self, host: H) -> None:
        """The child router on ``host`` closed (for whatever reason)."""

    def _on_child_lost(self, host: H, child: Any) -> None:
        self._forget_child(host, child)
        self._record_loss(host, "routers", child.id)

    @contextlib.contextmanager
    def _busy(self, host: H) -> Iterator[None]:
        """A transport or observer being made on ``host``, from before its child router is
        fetched until it is adopted: a last one closing there meanwhile must not close
        the child under it. After a making that failed, the child goes if idle."""
        try:
            with counting(self._busy_hosts, host):
                yield
        finally:
            if host not in self._busy_hosts and not self._closed:
                self._release_child_if_idle(host)

    def _release_child_if_idle(self, host: H) -> None:
        child = self._children.get(host)
        if child is None or child.closed or host in self._busy_hosts:
            return
        if any(h == host for h in self._transport_host.values()):
            return
        if any(h == host for h in self._observer_host.values()):
            return
        if any(h == host for h in self._home.values()):  # e.g. a copy piped in
            return
        if any(p.dst == host and not p.closed for p in self._pipes.values()):
            return
        logger.debug("closing idle child router %s on %s", child.id, host)
        child.close()

    # -- what lives where ----------------------------------------------------------------

    def _adopt(self, host: H, transport: Any, key: Any = None) -> None:
        """Register a transport created on ``host``'s child (``key``: what the router's
        users hold for it, when not the transport itself); InvalidStateError if it came
        closed (see made_open)."""
        made_open(transport, "Transport")
        tid = transport.id
        self._transports[tid] = transport if key is None else key
        self._transport_host[tid] = host
        self._guard(host, transport)
        transport.observer.on("close", lambda: self._on_transport_close(host, tid))
        transport.observer.on("newproducer", lambda p: self._adopt_producer(host, p))
        transport.observer.on("newdataproducer", lambda d: self._adopt_data_producer(host, d))
        transport.observer.on("newconsumer", lambda c: self._adopt_consumer(host, c, False))
        transport.observer.on("newdataconsumer", lambda c: self._adopt_consumer(host, c, True))
        self.observer.emit("newtransport", transport if key is None else key)

    def _on_transport_close(self, host: H, transport_id: str) -> None:
        self._transports.pop(transport_id, None)
        self._transport_host.pop(transport_id, None)
        if self._lost(host):
            self._record_loss(host, "transports", transport_id)
            return
        self._release_child_if_idle(host)

    def _adopt_producer(self, host: H, producer: Any, key: str | None = None) -> None:
        """Register a producer of this router: one of its transports' (no ``key``), or
        another (an alias, a copy piped in) under ``key``."""
        self._adopt_source(host, producer, key, self._producers, "producers")

    def _adopt_data_producer(self, host: H, data_producer: Any, key: str | None = None) -> None:
        self._adopt_source(host, data_producer, key, self._data_producers, "dataProducers")

    def _adopt_source(
        self, host: H, source: Any, other: str | None, table: dict[str, Any], kind: str
    ) -> None:
        key: str = source.id if other is None else other
        table[key] = source
        others = self._other_keys[kind]
        if other is not None:
            others.add(key)
        home_key = (key, kind == "dataProducers")
        self._home[home_key] = host

        def closed() -> None:
            # Still the key's source: one id space per router (an id it has or is making
            # is refused: _refuse_taken), so no other took the key meanwhile.
            table.pop(key, None)
            others.discard(key)
            self._home.pop(home_key, None)
            # Its copies go now, not when the worker tells their pipe consumers: until then
            # they would be consumed in its place (a new source with its id included).
            # So do those being made, which would fail only once made, and meanwhile be
            # joined by the consumers of a new source with its id.
            pipe_kind = "data" if home_key[1] else "media"
            for pipe in list(self._pipes.values()):
                if pipe.key[:2] == (pipe_kind, key):
                    if not pipe.ready.done():
                        self._abort_pipe(pipe)
                    # Its consumer went with the source on the source's host, which tells
                    # it soon: a close request would be refused there ('Consumer not
                    # found', an error in the worker's log at every such close).
                    pipe.consumer = None
                    self._close_pipe(pipe)
            if self._lost(host):
                self._record_loss(host, kind, key)
            elif not self._closed:
                self._release_child_if_idle(host)

        source.observer.on("close", closed)
        if source.closed:  # came closed (see made_open): its close went by unseen
            closed()

    def _adopt_consumer(self, host: H, consumer: Any, data: bool) -> None:
        source = consumer.data_producer_id if data else consumer.producer_id
        pipe = self._pipes.get(pipe_key(source, host, data))
        if pipe is not None and not pipe.closed:
            pipe.users.add(consumer.id)

        def closed() -> None:
            if pipe is not None:
                pipe.users.discard(consumer.id)
                self._release_pipe_if_idle(pipe)
            if self._lost(host):
                self._record_loss(host, "dataConsumers" if data else "consumers", consumer.id)

        consumer.observer.on("close", closed)
        if consumer.closed:  # came closed (see made_open): its close went by unseen
            closed()

    # -- pipes between hosts -------------------------------------------------------------

    @asynccontextmanager
    async def _pipe_guard(self, source_id: str, dst: H, data: bool) -> AsyncIterator[None]:
        """Around a consume on ``dst``: make the (data) producer available there first."""
        home = self._home.get((source_id, data))
        if home is None or home == dst or self._closed:
            yield
            return
        pipe = await self._acquire_pipe(source_id, home, dst, data)
        try:
            yield
        finally:
            pipe.pending -= 1
            self._release_pipe_if_idle(pipe)

    async def _acquire_pipe(self, source_id: str, home: H, dst: H, data: bool) -> Pipe[H]:
        key = pipe_key(source_id, dst, data)
        pipe = self._pipes.get(key)
        if pipe is None or pipe.closed:
            pipe = Pipe(
                key=key,
                home=home,
                dst=dst,
                data=data,
                ready=asyncio.get_running_loop().create_future(),
            )
            self._pipes[key] = pipe
            pipe.opening = self._spawn(self._open_pipe(pipe, source_id))
        pipe.pending += 1
        try:
            await asyncio.shield(pipe.ready)
        except BaseException:
            pipe.pending -= 1
            raise
        return pipe

    async def _open_pipe(self, pipe: Pipe[H], source_id: str) -> None:
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
            if pipe.closed:
                # Closed (its pair, or one of its ends) as its last request, the copy's
                # pause or resume, was answered: ready, its consumes would go on with a
                # copy already gone.
                raise InvalidStateError("pipe closed as it was opened")
        except BaseException as error:
            self._close_pipe(pipe)
            if not pipe.ready.done():
                pipe.ready.set_exception(error)
                pipe.ready.exception()  # awaiters get it; nobody waiting is fine too
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        pipe.ready.set_result(None)
        # Its consumes were all cancelled meanwhile (its opening went on without them):
        # unused, it would stay open until its source closes.
        self._release_pipe_if_idle(pipe)

    async def _make_copy(
        self,
        pipe: Pipe[H],
        source_id: str,
        make: Callable[..., Awaitable[Any]],
        options: dict[str, Any],
    ) -> Any:
        """The pipe's copy, made by ``make`` with the source's id where free, else its own."""
        with self._claim_id(pipe.dst, source_id) as keep:
            pipe.producer = await make(id=source_id if keep else None, **options)
        return pipe.producer

    async def _open_media_pipe(
        self, pipe: Pipe[H], producer_id: str, local: Any, remote: Any
    ) -> None:
        producer = source_open(self._producers.get(producer_id), "Producer")
        consumer = await local.consume(producer_id=producer_id)
        pipe.consumer = consumer
        piped = await self._make_copy(
            pipe,
            producer_id,
            remote.produce,
            {
                "kind": consumer.kind,
                "rtp_parameters": consumer.rtp_parameters,
                "paused": consumer.producer_paused,
                "app_data": producer.app_data,
            },
        )
        if piped.id != producer_id:
            self._alias(pipe.dst, producer_id, piped, False)
        source_open(producer, "Producer")
        self._wire_pipe(pipe, consumer, piped)
        if piped.paused != producer.paused:
            await (piped.pause() if producer.paused else piped.resume())

    async def _open_data_pipe(
        self, pipe: Pipe[H], data_producer_id: str, local: Any, remote: Any
    ) -> None:
        data_producer = source_open(self._data_producers.get(data_producer_id), "DataProducer")
        consumer = await local.consume_data(data_producer_id=data_producer_id)
        pipe.consumer = consumer
        piped = await self._make_copy(
            pipe,
            data_producer_id,
            remote.produce_data,
            {
                "sctp_stream_parameters": consumer.sctp_stream_parameters,
                "label": consumer.label,
                "protocol": consumer.protocol,
                "app_data": data_producer.app_data,
            },
        )
        # Messages sent into the pipe before its SCTP association is up are dropped by
        # the worker, which starts it with the first stream (the consumer above): the
        # pipe is ready once it is up (at once but for a pair's first data pipe).
        await asyncio.gather(sctp_connected(local), sctp_connected(remote))
        if piped.id != data_producer_id:
            self._alias(pipe.dst, data_producer_id, piped, True)
        source_open(data_producer, "DataProducer")
        self._wire_pipe(pipe, consumer, piped)
        if consumer.data_producer_paused != piped.paused:
            await (piped.pause() if consumer.data_producer_paused else piped.resume())

    def _wire_pipe(self, pipe: Pipe[H], consumer: Any, piped: Any) -> None:
        """The copy follows its pipe consumer: the consumer's pause state follows the
        original (data) producer's, so consumers on the far side see producerpause /
        dataproducerpause and resume (mediasoup's pipeToRouter carries it for media only;
        a Router spanning hosts must for data too); either end closing closes the pipe.
        """

        def follow(request: Awaitable[Any]) -> None:
            self._spawn(_quietly(request))

        consumer.observer.on("pause", lambda: follow(piped.pause()))
        consumer.observer.on("resume", lambda: follow(piped.resume()))
        consumer.observer.on("close", lambda: self._close_pipe(pipe))
        piped.observer.on("close", lambda: self._close_pipe(pipe))

    def _abort_pipe(self, pipe: Pipe[H]) -> None:
        """Stop the opening of ``pipe``, whose source closed: its waiters fail at once, and
        its task is cancelled (what a creation cancelled once sent makes is closed where
        it was made; what the pipe holds already, _close_pipe() closes)."""
        source = "DataProducer" if pipe.data else "Producer"
        pipe.ready.set_exception(InvalidStateError(f"original {source} closed"))
        pipe.ready.exception()  # awaiters get it; nobody waiting is fine too
        assert pipe.opening is not None
        pipe.opening.cancel()

    def _release_pipe_if_idle(self, pipe: Pipe[H]) -> None:
        if not pipe.closed and not pipe.users and pipe.pending == 0 and pipe.ready.done():
            self._close_pipe(pipe)

    def _close_pipe(self, pipe: Pipe[H]) -> None:
        if pipe.closed:
            return
        pipe.closed = True
        # An open pipe is always the one registered under its key (it is replaced only
        # once closed, and a closing router marks every pipe closed first).
        del self._pipes[pipe.key]
        for end in (pipe.producer, pipe.consumer):
            if end is not None:
                end.close()
        pair = pipe.pair
        if pair is not None:
            pair.pipes.discard(pipe)
            self._release_pair_if_idle(pair)
        self._release_child_if_idle(pipe.dst)

    async def _acquire_pair(self, home: H, dst: H) -> PipePair[H]:
        key = frozenset((home, dst))
        pair = self._pairs.get(key)
        if pair is None or pair.closed:
            pair = PipePair(key=key, ready=asyncio.get_running_loop().create_future())
            self._pairs[key] = pair
            self._spawn(self._open_pair(pair, home, dst))
        pair.pending += 1
        try:
            await asyncio.shield(pair.ready)
        except BaseException:
            # Failed (the pair is closed), or its pipe's opening cancelled (_abort_pipe):
            # the pair goes if nothing else wants it, or once open if it is being opened.
            pair.pending -= 1
            self._release_pair_if_idle(pair)
            raise
        return pair

    async def _open_pair(self, pair: PipePair[H], home: H, dst: H) -> None:
        try:
            child_home, child_dst = await asyncio.gather(self._child(home), self._child(dst))
            a, b = await open_pipe_pair(*self._pair_transports(home, dst, child_home, child_dst))
            pair.transports = {home: a, dst: b}
            for transport in (a, b):
                transport.observer.on("close", lambda: self._close_pair(pair))
        except BaseException as error:
            self._close_pair(pair)
            # A router closing fails the waiters itself before cancelling this task.
            if not pair.ready.done():
                pair.ready.set_exception(error)
                pair.ready.exception()
            if isinstance(error, asyncio.CancelledError):
                raise
            return
        pair.ready.set_result(None)
        self._release_pair_if_idle(pair)  # all its waiters gone meanwhile

    def _release_pair_if_idle(self, pair: PipePair[H]) -> None:
        if not pair.pipes and pair.pending == 0 and pair.ready.done():
            self._close_pair(pair)

    def _close_pair(self, pair: PipePair[H]) -> None:
        if pair.closed:
            return
        pair.closed = True
        del self._pairs[pair.key]  # as for pipes: an open pair is the registered one
        for pipe in list(pair.pipes):
            self._close_pipe(pipe)
        for transport in pair.transports.values():
            transport.close()
        for host in pair.key:
            self._release_child_if_idle(host)

    def unfinished_tasks(self) -> list[asyncio.Future[Any]]:
        """Its tasks not done yet (pipe and pair openings, pause follow-ups, child routers
        being made): once it is closed, cancelled or finishing, for its owner to await."""
        return [t for t in (*self._tasks, *self._child_futures.values()) if not t.done()]

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _pipe_source(
        self, router: Any, producer_id: str | None, data_producer_id: str | None
    ) -> tuple[str, H]:
        """mediasoup's argument checks of pipe_to_router(); the (data) producer's id and
        the host it lives on."""
        self._check_open()
        if not producer_id and not data_producer_id:
            raise TypeError("missing producer_id or data_producer_id")
        if producer_id and data_producer_id:
            raise TypeError("just producer_id or data_producer_id can be given")
        if router is self:
            raise TypeError("cannot use this Router as destination")
        source_id = producer_id or data_producer_id
        assert source_id is not None
        kind = "Producer" if producer_id else "DataProducer"
        home = self._home.get((source_id, kind == "DataProducer"))
        if home is None:
            # As a Router's (a TypeError and a ValueError, as mediasoup's is a TypeError).
            raise InvalidValueError(f'{kind} with id "{source_id}" not found')
        if isinstance(router, SpanningRouter):
            # As mediasoup's target refuses a second copy: here it could land on another
            # host and silently shadow the first.
            router._refuse_taken(source_id, kind)
        return source_id, home

    @contextlib.contextmanager
    def _making(self, source_id: str, kind: str) -> Iterator[None]:
        """Around the making of a ``kind`` with id ``source_id`` here (produce() with an
        id, or a copy piped in): TypeError if the id is taken, else it is held until done."""
        self._refuse_taken(source_id, kind)
        entry = (source_id, kind)
        self._incoming.add(entry)
        try:
            yield
        finally:
            self._incoming.discard(entry)

    def _refuse_taken(self, source_id: str, kind: str) -> None:
        """TypeError when this router has a ``kind`` ('Producer' or 'DataProducer') of
        this id on any host, or one is being piped in: one router, one id space."""
        table = self._producers if kind == "Producer" else self._data_producers
        if source_id in table or (source_id, kind) in self._incoming:
            raise TypeError(f'a {kind} with same id "{source_id}" already exists')

    # -- RTP observers -------------------------------------------------------------------

    def _adopt_observer(self, host: H, rtp_observer: Any, key: Any = None) -> None:
        """As _adopt(), for an RTP observer."""
        made_open(rtp_observer, "RtpObserver")
        oid = rtp_observer.id
        self._rtp_observers[oid] = rtp_observer if key is None else key
        self._observer_host[oid] = host
        self._guard_observer(host, rtp_observer)
        watched: dict[str, Pipe[H]] = {}

        def added(producer: Any) -> None:
            pipe = self._pipes.get(pipe_key(producer.id, host, False))
            if pipe is None or pipe.producer is not producer:
                # A copy on a host that had its id already goes by an alias.
                pipe = next((p for p in self._pipes.values() if p.producer is producer), None)
            if pipe is not None:
                pipe.users.add(f"observer:{oid}")
                watched[producer.id] = pipe

        def removed(producer: Any) -> None:
            pipe = watched.pop(producer.id, None)
            if pipe is not None:
                pipe.users.discard(f"observer:{oid}")
                self._release_pipe_if_idle(pipe)

        def closed() -> None:
            self._rtp_observers.pop(oid, None)
            self._observer_host.pop(oid, None)
            for pipe in watched.values():
                pipe.users.discard(f"observer:{oid}")
                self._release_pipe_if_idle(pipe)
            watched.clear()
            if self._lost(host):
                self._record_loss(host, "rtpObservers", oid)
            else:
                self._release_child_if_idle(host)

        rtp_observer.observer.on("addproducer", added)
        rtp_observer.observer.on("removeproducer", removed)
        rtp_observer.observer.on("close", closed)
        self.observer.emit("newrtpobserver", rtp_observer if key is None else key)

    # -- capabilities --------------------------------------------------------------------

    def can_consume(self, *, producer_id: str, rtp_capabilities: RtpCapabilities) -> bool:
        producer = self._producers.get(producer_id)
        consumable = None if producer is None else producer.consumable_rtp_parameters
        return answer_can_consume(producer_id, consumable, rtp_capabilities, logger)

    def update_media_codecs(self, media_codecs: list[RouterRtpCodecCapability]) -> None:
        self._check_open()
        capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))
        for child in self._children.values():
            child.update_media_codecs(media_codecs)
        self._media_codecs = copy.deepcopy(media_codecs)
        self._rtp_capabilities = capabilities

    # -- dumps ---------------------------------------------------------------------------

    def _internal_ids(self) -> set[str]:
        ids: set[str] = set()
        for pipe in self._pipes.values():
            if pipe.consumer is not None:
                ids.add(pipe.consumer.id)
        for pair in self._pairs.values():
            ids.update(t.id for t in pair.transports.values())
        return ids

    def _producer_count(self, host: H) -> int:
        """The producers homed on ``host``, one known by two ids (an alias) counted once."""
        table = self._producers
        return len({id(p) for key, p in table.items() if self._home[(key, False)] == host})

    def _renamed(self) -> dict[tuple[H, bool], dict[str, str]]:
        """By host and kind (data or not), the copies there that have an id of their own,
        mapped to the id this router knows them by: a source adopted under an alias
        alone, and a pipe's copy on a host that held the id already. (A source it knows
        by its own id too, as an app's alias_producer() makes, keeps its own.)"""
        renamed: dict[tuple[H, bool], dict[str, str]] = {}
        for data, table in ((False, self._producers), (True, self._data_producers)):
            for key, source in table.items():
                if source.id not in table:
                    renamed.setdefault((self._home[(key, data)], data), {})[source.id] = key
        for pipe in self._pipes.values():
            source_id = pipe.key[1]
            if pipe.producer is not None and pipe.producer.id != source_id:
                renamed.setdefault((pipe.dst, pipe.data), {})[pipe.producer.id] = source_id
        return renamed

    async def dump(self) -> RouterDump:
        """mediasoup's Router dump, merged over the child routers (pipes left out, copies
        by the ids this router knows them by)."""
        self._check_open()
        hosts = list(self._children)
        dumps = await asyncio.gather(*(self._children[host].dump() for host in hosts))
        internal = self._internal_ids()
        renamed = self._renamed()
        merged: dict[str, dict[str, list[str]]] = {
            "mapProducerIdConsumerIds": {},
            "mapProducerIdObserverIds": {},
            "mapDataProducerIdDataConsumerIds": {},
        }
        pairs: dict[str, dict[str, str]] = {
            "mapConsumerIdProducerId": {},
            "mapDataConsumerIdDataProducerId": {},
        }
        for host, dump in zip(hosts, dumps, strict=True):
            media, data = renamed.get((host, False), {}), renamed.get((host, True), {})
            for name, table in merged.items():
                names = data if name.startswith("mapData") else media
                for entry in dump[name]:
                    values = [v for v in entry["values"] if v not in internal]
                    table.setdefault(names.get(entry["key"], entry["key"]), []).extend(values)
            for name, mapping in pairs.items():
                names = data if name.startswith("mapData") else media
                for entry in dump[name]:
                    if entry["key"] not in internal:
                        mapping[entry["key"]] = names.get(entry["value"], entry["value"])
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

    # -- closing -------------------------------------------------------------------------

    def _close_all(self) -> None:
        self._closed = True
        # Closing the children closes every pipe with them: mark pipes and pairs closed
        # first so no request is sent for what the cascade closes anyway. Whoever waits
        # for one hears that the router closed (their opening task, cancelled below,
        # may not even have started).
        for pipe in self._pipes.values():
            pipe.closed = True
            _fail_waiters(pipe.ready)
        for pair in self._pairs.values():
            pair.closed = True
            _fail_waiters(pair.ready)
        for task in list(self._tasks):
            task.cancel()
        # Children being created are not cancelled: a cancelled creation would leave its
        # router in the worker; _create_child closes it and fails its waiters instead.
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


def made_open(made: Any, what: str) -> None:
    """InvalidStateError if ``made`` (a transport or an RTP observer a child router just
    made, ``what`` its kind) came closed: closed between its making and its adoption,
    by a listener of its child router's 'newtransport' / 'newrtpobserver' closing it, its
    child router or its host, or as a remote child shows a close it has not told yet.
    Its close has gone by unseen: adopted, it would stay listed for good and keep its
    child router from ever being idle. The caller gets the error a Router gives for what
    its closing cut off; its child goes if idle (_busy)."""
    if made.closed:
        raise InvalidStateError(f"{what} closed as it was made")


def source_open(source: Any, what: str) -> Any:
    """``source``, the (data) producer a pipe being opened copies, still open. Its closing
    cancels that opening (_abort_pipe), but a remote one (a ClusterRouter's) may show its
    closed state a frame before it tells its close: InvalidStateError then."""
    if source is None or source.closed:
        raise InvalidStateError(f"original {what} closed")
    return source


def _fail_waiters(ready: asyncio.Future[Any]) -> None:
    if not ready.done():
        ready.set_exception(InvalidStateError("Router closed"))
        ready.exception()  # nobody waiting is fine too


def _entries(table: dict[str, list[str]], keep: set[str]) -> list[dict[str, Any]]:
    return [{"key": k, "values": v} for k, v in table.items() if k in keep]


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except Exception as error:
        logger.debug("pipe follow-up failed: %s", error)
