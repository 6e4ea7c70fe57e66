"""Streams across a swarm's entry points: a producer published through one server can be
consumed through any other, by any app, with mediasoup's plain API.

An app connected to server Y calls ``transport.consume(producer_id=P)`` for a producer
P that another app created on server X. Y's router does not have P, so before the
call runs Y asks its peers who has P, and
pipes it in: a PipeTransport on each side (on each server's media address, SRTP unless
both are loopback, RTX on; X refuses a new pair without SRTP that the rule asks for,
whatever Y sends), X consuming P into its end and Y producing it, with P's id,
into the consuming router. The call then runs as if P had been there all along, and
every later consumer of P on that router shares the copy. The streams between two
routers share one PipeTransport pair, opened by the consuming server with its first
stream and closed after its last.

What happens to P reaches Y's copy: a pause, a resume, its close (Y's consumers get
``producerpause``, ``producerresume``, ``producerclose``); a router closed on either side
closes the pipe; a server that leaves or goes silent closes every pipe to and from it.

Servers talk on their own port, on the token-protected route ``/streams``, in JSON:
``find`` (do you have P, in which router?), ``open`` (pipe P on this pair; a new pair
comes with this end's address), ``locate`` (where is P?, asked of P's directory server:
``mafalda.swarm.directory``), and the notices ``close``, ``pause``, ``resume`` of a
stream, ``closepair``, and ``announce`` / ``forget`` (P is here / gone, told to P's
directory server), sent in order per peer (to members only). An ``open`` is taken from
a member only (one that is joining is waited for, up to ``find_timeout``): a pipe to a
stranger would never close, as no leave of it comes. A stream or pair its asker closes
while it opens, or whose peer leaves meanwhile, is closed once made, and its open
fails. A lookup asks the peer P was found on last,
then P's directory server and the home it names, and only then every peer. A consume
whose lookup or open the node's stop (``aclose()``) cuts fails with a StreamError
saying so (not "not found": P may exist); a lookup ends at once (the stop closes the
HTTP client its asks go through).

Data producers the same way (``consume_data(data_producer_id=P)``; SCTP on the pipe).
RTP observers' ``add_producer(producer_id=P)`` too (a watched copy is in use). On a
server of a Mafalda pool the same happens at its MafaldaRouters (a copy lands on one
worker; the router pipes it on to its other workers). The
remote client answers ``router.can_consume()`` itself, from the producers it knows (as
mediasoup answers it from the router's): False for another app's producer; consume()
and its error are the way to ask. A copy with no consumer left closes its pipe ``idle``
seconds later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl as ssl_module
import uuid
import weakref
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from mafalda import mediasoup
from mafalda.horizontal.cluster import Cluster
from mafalda.horizontal.registry import ServerRecord, json_object
from mafalda.mediasoup import InvalidStateError, Router, Transport, Worker
from mafalda.mediasoup.pipe_transport import PipeTransport
from mafalda.remote import RemoteServer
from mafalda.remote.server import is_peer, peer_refused
from mafalda.swarm.directory import Directory, beats, directory_server
from mafalda.swarm.urls import route_url
from mafalda.vertical.router import MafaldaRouter

__all__ = ["ROUTE", "StreamError", "SwarmStreams", "check_message"]

logger = logging.getLogger("mafalda.swarm.streams")

ROUTE = "streams"
_OPS = (
    "find",
    "open",
    "close",
    "pause",
    "resume",
    "closepair",
    "announce",
    "forget",
    "locate",
)
#: What an owner that could not pipe a stream (or answered nonsense) makes an open raise.
_OWNER_FAULTS = (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError)
#: Seconds before a notice a peer did not hear is sent again, doubling up to the max.
_RETRY_FIRST, _RETRY_MAX = 0.05, 1.0
#: Producers whose peer a SwarmStreams remembers (where a find found them last).
_MAX_FOUND = 4096


class _ProducerGone(Exception):
    """The producer of a stream being opened closed meanwhile (its owner said so)."""


class StreamError(mediasoup.MediasoupError):
    """A producer found on another server could not be piped in."""


def _text(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise ValueError(f"streams: invalid {name!r}")
    return value


def check_message(raw: bytes) -> dict[str, Any]:
    """A message of the streams route, checked (ValueError naming what is wrong)."""
    data = json_object(raw, "streams")
    op = data.get("op")
    if op not in _OPS:
        raise ValueError("streams: invalid 'op'")
    if not isinstance(data.get("data", False), bool):
        raise ValueError("streams: invalid 'data'")
    if op in ("find", "locate"):
        _text(data, "producerId")
    elif op in ("announce", "forget"):
        _text(data, "producerId")
        _text(data, "at")
    elif op == "open":
        _text(data, "producerId")
        _text(data, "pipeId")
        _text(data, "pairId")
        _text(data, "from")
        if "incarnation" in data:  # (not from an older version)
            _text(data, "incarnation")
        if "ip" in data:  # a new pair: the asking end's address
            _text(data, "ip")
            port = data.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
                raise ValueError("streams: invalid 'port'")
            srtp = data.get("srtpParameters")
            if srtp is not None and not isinstance(srtp, dict):
                raise ValueError("streams: invalid 'srtpParameters'")
    elif op == "closepair":
        _text(data, "pairId")
    else:
        _text(data, "pipeId")
    return data


class _Pair:
    """This server's end of a PipeTransport pair between one of its routers and one
    router of a peer, shared by every stream between the two (as mediasoup's
    pipe_to_router() shares one per router pair). The consuming side owns it: it opens
    it with its first stream and closes it ('closepair') after its last."""

    __slots__ = ("id", "key", "opening", "peer", "streams", "transport")

    def __init__(
        self,
        pair_id: str,
        peer: str,
        transport: PipeTransport,
        key: tuple[str, str, str] | None = None,
    ) -> None:
        self.id = pair_id
        self.peer = peer
        self.transport = transport
        self.key = key  # one this server opened: (router id, peer id, peer's router id)
        self.streams: set[str] = set()  # the pipe ids it carries
        self.opening = 0  # streams being opened on it (this server's pairs)


class _Pipe:
    """One piped stream, at this end: its pair and what carries it here (no pair: a copy
    from another router of this server, mediasoup's pipe_to_router())."""

    __slots__ = ("carrier", "id", "idle", "key", "pair", "peer", "users")

    def __init__(
        self,
        pipe_id: str,
        pair: _Pair | None,
        carrier: Any,
        key: tuple[str, str, bool] | None = None,
    ) -> None:
        self.id = pipe_id
        self.key = key  # in: the copy's (router id, producer id, data)
        self.pair = pair
        self.peer = pair.peer if pair is not None else None  # the other server's id
        self.carrier = carrier  # the pipe consumer (out) or the copy (in)
        self.users = 0  # in: the consumers of the copy
        self.idle: asyncio.TimerHandle | None = None  # in: its collection, when unused
        if pair is not None:
            pair.streams.add(pipe_id)


class SwarmStreams:
    """Makes ``server``'s consume() calls find producers on the swarm's other servers.

    ``members`` gives the swarm's live records (a SwarmNode's ``members``); call
    ``start()`` before clients start workers (it follows the server's workers from
    their start), and ``peers_gone()`` with the servers that left or went silent.
    """

    def __init__(
        self,
        server: RemoteServer,
        *,
        server_id: str,
        token: str,
        peer_tokens: tuple[bytes, ...] = (),
        members: Callable[[], dict[str, ServerRecord]],
        timeout: float = 10.0,
        idle: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        media_address: str | None = None,
        find_timeout: float = 2.0,
        incarnation: str | None = None,
    ) -> None:
        """media_address: where this server's pipe transports listen (default: the
        server's host). find_timeout: seconds the peers have to say whether they have a
        producer (a lookup in memory each); a peer still silent then, frozen or cut off
        but not dropped from the swarm yet, is taken as a no, so a consume of an id no
        server has fails in that time rather than in ``timeout``. idle: seconds a copy
        brought from another server stays with no consumer before its pipe closes (a
        consumer back within it reuses the pipe). ssl: the context to reach wss:// peers
        (default: the system's certificate authorities). incarnation: this run of the
        server, which its record in ``members`` names (a SwarmNode's; default: a new
        one): the opens it asks for carry it, and a peer takes them from that run only."""
        if idle < 0:
            raise ValueError("idle must be >= 0")
        if not 0 < find_timeout < float("inf"):
            raise ValueError("find_timeout must be > 0")
        self.find_timeout = find_timeout
        self.incarnation = incarnation or uuid.uuid4().hex
        self.server = server
        self.id = server_id
        self._token = token
        self._peer_tokens = peer_tokens
        self._members = members
        self._timeout = timeout
        self.idle = idle
        self.media_address = media_address or server.host
        self._ssl: ssl_module.SSLContext | bool = ssl if ssl is not None else True
        #: Every producer and data producer of this server by (router id, id, data), and
        #: the origins (not copies made by pipes) by (id, data).
        self._here: weakref.WeakValueDictionary[tuple[str, str, bool], Any] = (
            weakref.WeakValueDictionary()
        )
        self._originals: weakref.WeakValueDictionary[tuple[str, bool], Any] = (
            weakref.WeakValueDictionary()
        )
        #: The router of each transport and origin: a Router, or on a server of a Mafalda
        #: pool the MafaldaRouter (whose transports pipe from its other workers).
        self._router_of: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        #: Pipes out (this server has the producer) and in (this server has a copy), by
        #: pipe id; the pipes in and the copies being made by (router id, id, data). (A
        #: copy from another router of this server is mediasoup's pipe_to_router().)
        self._out: dict[str, _Pipe] = {}
        #: The pipes out being opened, and the pairs peers open here being made: the
        #: peer of each, by id.
        self._opening: dict[str, str] = {}
        self._pairs_opening: dict[str, str] = {}
        #: The pipes and pairs out being opened that their peer closed meanwhile (it
        #: gave up on them: they must not be kept).
        self._cancelled: set[str] = set()
        self._joined = asyncio.Event()  # set (and replaced) when a server joins
        self._in: dict[str, _Pipe] = {}
        self._copies: dict[tuple[str, str, bool], _Pipe] = {}
        self._carrying: dict[str, _Pipe] = {}  # the pipes in, by their copy's own id
        #: Pairs this server opened, by (router id, peer id, peer's router id), and the
        #: making of each (one at a time); the pairs peers opened here, by pair id.
        self._pairs_in: dict[tuple[str, str, str], _Pair] = {}
        self._pair_locks: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._pair_opens: dict[tuple[str, str, str], int] = {}  # opens under way or waiting
        #: The peer each producer was found on lately, by (producer id, data): asked
        #: first next time (at most _MAX_FOUND, the oldest forgotten first).
        self._found: dict[tuple[str, bool], str] = {}
        #: The entries this server keeps as a directory server, and the directory server
        #: it told of each of its own producers.
        self.directory = Directory()
        self._listed: dict[tuple[str, bool], str] = {}
        self._pairs_out: dict[str, _Pair] = {}
        self._bringing: dict[tuple[str, str, bool], asyncio.Future[None]] = {}
        #: The pipes in being opened: the notices ('close', 'pause', 'resume') their
        #: owner sent meanwhile (it may send them once it answered the open).
        self._early: dict[str, list[str]] = {}
        #: Per peer, the notices to send it in order, each with the peer's record then
        #: (a leave cancels the peer's sender).
        self._queues: dict[str, asyncio.Queue[tuple[ServerRecord, dict[str, Any]]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        #: What this server's objects tell it (see _attach()), by id(object).
        self._attached: dict[int, tuple[Any, list[tuple[str, Callable[..., Any]]]]] = {}
        #: The pauses and resumes of copies from another router here under way.
        self._following: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None
        self._started = False

    # -- following this process's producers ---------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.server.observer.on("newworker", self._follow_worker)
        self.server.observer.on("newrouter", self._follow_router)
        self.server.add_route(ROUTE, self._handle, peer_tokens=self._peer_tokens)
        self.server.before_consume = self._before_consume
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"Authorization": f"Bearer {self._token}"},
        )

    def _attach(self, source: Any, event: str, listener: Callable[..., Any]) -> None:
        """``source.observer.on(event, listener)``, taken back by aclose() (a stopped
        node follows nothing: a new node of the same server would be told twice);
        forgotten when ``source`` closes."""
        entry = self._attached.get(id(source))
        if entry is None:

            def gone() -> None:
                self._attached.pop(id(source), None)

            entry = self._attached[id(source)] = (source, [("close", gone)])
            source.observer.on("close", gone)
        entry[1].append((event, listener))
        source.observer.on(event, listener)

    def _follow_worker(self, worker: Worker) -> None:
        self._attach(worker, "newrouter", self._follow_router)

    def _follow_router(self, router: Router | MafaldaRouter) -> None:
        def new_transport(transport: Transport) -> None:
            self._router_of[transport] = router
            # What a pipe produces is a copy of a producer, not a stream's origin.
            origin = not isinstance(transport, PipeTransport)

            def new_producer(producer: Any, data: bool = False) -> None:
                self._here[(router.id, producer.id, data)] = producer
                if origin:
                    key = (producer.id, data)
                    self._originals[key] = producer
                    self._router_of[producer] = router
                    self._list(key)
                    self._attach(producer, "close", lambda: self._unlist(key, producer))

            def new_consumer(consumer: Any, data: bool = False) -> None:
                source = consumer.data_producer_id if data else consumer.producer_id
                pipe = self._copies.get((router.id, source, data))
                if pipe is not None:
                    self._use(pipe, 1)
                    self._attach(consumer, "close", lambda: self._use(pipe, -1))

            self._attach(transport, "newproducer", new_producer)
            self._attach(transport, "newconsumer", new_consumer)
            self._attach(transport, "newdataproducer", lambda p: new_producer(p, True))
            self._attach(transport, "newdataconsumer", lambda c: new_consumer(c, True))

        def new_rtp_observer(rtp_observer: Any) -> None:
            self._router_of[rtp_observer] = router
            watched: set[_Pipe] = set()  # the copies it watches: they are in use

            def copy_of(producer: Any) -> _Pipe | None:
                pipe = self._carrying.get(producer.id)
                if pipe is not None and pipe.carrier is producer:
                    return pipe  # the copy itself
                # On a pool, a copy the router piped on to the observer's worker: that
                # worker knows it by the original's id (and a copy of that id in
                # another router, as pipe_to_router() keeps ids, is not this one).
                return self._copies.get((router.id, producer.id, False))

            def added(producer: Any) -> None:
                pipe = copy_of(producer)
                if pipe is not None and pipe not in watched:
                    watched.add(pipe)
                    self._use(pipe, 1)

            def removed(producer: Any) -> None:
                pipe = copy_of(producer)
                if pipe is not None and pipe in watched:
                    watched.discard(pipe)
                    self._use(pipe, -1)

            def closed() -> None:
                for pipe in watched:
                    self._use(pipe, -1)
                watched.clear()

            self._attach(rtp_observer, "addproducer", added)
            self._attach(rtp_observer, "removeproducer", removed)
            self._attach(rtp_observer, "close", closed)

        self._attach(router, "newtransport", new_transport)
        self._attach(router, "newrtpobserver", new_rtp_observer)

    def _original(self, producer_id: str, data: bool) -> tuple[Any, Any] | None:
        """A live (data) producer of this server's clients (not a copy piped in), and its
        router."""
        producer = self._originals.get((producer_id, data))
        if producer is None or producer.closed:
            return None
        router = self._router_of.get(producer)
        return None if router is None or router.closed else (producer, router)

    # -- the hook: before a consume(), consume_data() or add_producer() ------------------

    def _before_consume(self, target: Any, producer_id: str, data: bool) -> Awaitable[None] | None:
        """Before a consume() / consume_data() on transport ``target`` (or an RTP
        observer's add_producer()): what brings the producer here first, if anything."""
        router = self._router_of.get(target)
        if router is None or router.closed:
            return None
        key = (router.id, producer_id, data)
        # Being brought: its copy may be here, and known by P, before it may be used (a
        # data stream's SCTP association on its way up).
        pending = self._bringing.get(key)
        if pending is None:
            present = self._here.get(key)
            if present is not None and not present.closed:
                pipe = self._copies.get(key)
                if pipe is not None and pipe.users == 0:
                    self._use(pipe, 0)  # an unused copy: a new idle period for this consume
                return None  # here already (its origin or a copy): mediasoup's call as it is
            if (router.has_data_producer if data else router.has_producer)(producer_id):
                return None  # a copy of its own id that the router knows by P's (a breakout's)
            pending = asyncio.ensure_future(self._bring(router, producer_id, data))
            self._bringing[key] = pending
            pending.add_done_callback(lambda _: self._bringing.pop(key, None))
        return asyncio.shield(pending)

    async def _bring(self, router: Any, producer_id: str, data: bool) -> None:
        found = self._original(producer_id, data)
        if found is not None:  # another app's router on this server
            await self._pipe_locally(found[1], router, producer_id, data)
            return
        try:
            await self._bring_from_peers(router, producer_id, data)
        finally:
            task = asyncio.current_task()
            if not self._started and not (task is not None and task.cancelling()):
                # Stopped meanwhile (aclose()): its HTTP client's close cut the lookup
                # and the open, which ended as failed (or cancelled) asks; "not found",
                # or what they raised, would not tell the truth: the producer may exist.
                # (A consume cancelled itself, as its server closes, stays cancelled.)
                kind = "data producer" if data else "producer"
                raise StreamError(
                    f"server {self.id}: its swarm node stopped before {kind} {producer_id} "
                    "was brought here"
                )

    async def _bring_from_peers(self, router: Any, producer_id: str, data: bool) -> None:
        found_at = await self._find(producer_id, data)
        if found_at is not None:  # else nowhere: mediasoup's own "not found" answers the call
            owner, owner_router = found_at
            key = (router.id, owner["id"], owner_router)
            lock = self._pair_locks.setdefault(key, asyncio.Lock())
            self._pair_opens[key] = self._pair_opens.get(key, 0) + 1
            try:
                # Gone meanwhile: mediasoup's own "not found" answers the call.
                with contextlib.suppress(_ProducerGone):
                    await self._open(router, producer_id, owner, key, lock, data)
            finally:
                self._pair_opens[key] -= 1
                if not self._pair_opens[key]:
                    del self._pair_opens[key]
                    if key not in self._pairs_in:  # (a failed first open: no pair)
                        self._pair_locks.pop(key, None)

    async def _pipe_locally(self, source: Any, router: Any, producer_id: str, data: bool) -> None:
        """mediasoup's pipe_to_router(); between plain Routers, with a copy of its own id
        that the router knows by the original's (both routers may share a worker: a
        MafaldaRouter sees to that itself). The copy is known here (a second consume
        uses it) and collected when unused, as a copy from another server is."""
        which = "data_producer_id" if data else "producer_id"
        if isinstance(source, MafaldaRouter):
            result = await source.pipe_to_router(router=router, **{which: producer_id})
        else:
            result = await source.pipe_to_router(
                router=router, keep_id=False, **{which: producer_id}
            )
        copy = result["pipeDataProducer" if data else "pipeProducer"]
        if not isinstance(source, MafaldaRouter):
            if data:
                router.alias_data_producer(producer_id, copy)
            else:
                router.alias_producer(producer_id, copy)
        key = (router.id, producer_id, data)
        self._here[key] = copy
        if data and not isinstance(source, MafaldaRouter):
            # mediasoup's pipe_to_router() (as Node's) makes a data copy unpaused and
            # deaf to its original's pause and resume: it follows them here, as a copy
            # from another server does.
            carrier = result["pipeDataConsumer"]

            def follow() -> None:
                task = asyncio.ensure_future(self._follow_pause(copy, carrier))
                self._following.add(task)
                task.add_done_callback(self._following.discard)

            carrier.on("dataproducerpause", follow)
            carrier.on("dataproducerresume", follow)
            if carrier.data_producer_paused:
                await self._follow_pause(copy, carrier)
        # Collected when unused, as a copy from another server is (closing the copy
        # closes its pipe consumer too: mediasoup links them).
        self._track_copy(_Pipe(copy.id, None, copy, key))

    @staticmethod
    async def _follow_pause(copy: Any, carrier: Any) -> None:
        """Pause or resume ``copy`` as its original is now (``carrier``: its pipe data
        consumer, which tells). Each change sends the state then, in turn: the last
        one sent is the last state."""
        with contextlib.suppress(Exception):  # closed meanwhile
            await (copy.pause() if carrier.data_producer_paused else copy.resume())

    def _track_copy(self, pipe: _Pipe) -> None:
        """A copy here: known by its key and its own id, collected when unused (so also
        when the consume that asked for it fails), forgotten when it closes."""
        assert pipe.key is not None
        self._in[pipe.id] = pipe
        self._copies[pipe.key] = pipe
        self._carrying[pipe.carrier.id] = pipe
        pipe.carrier.observer.on("close", lambda: self._closed_in(pipe, notify=True))
        self._use(pipe, 0)

    async def _find(self, producer_id: str, data: bool) -> tuple[ServerRecord, str] | None:
        """The peer that has the producer, and its router there: the peer that had it
        last time alone first (a producer does not move), else the home its directory
        server names; every peer at once (the first yes wins) when that finds nothing."""
        key = (producer_id, data)
        members = self._members()
        known = self._found.pop(key, None)
        asked = {self.id}
        owner = None
        if known is not None and known in members:
            # Where it was found last: a producer does not move, so a no there means it
            # closed, which only asking everyone tells for sure.
            owner = await self._find_on([members[known]], producer_id, data)
            if owner is not None:
                self._found[key] = known
                return owner
            asked.add(known)
        else:
            home = await self._locate(key, members)
            if home is not None and home not in asked and home in members:
                owner = await self._find_on([members[home]], producer_id, data)
                asked.add(home)
        if owner is None:
            others = [r for i, r in members.items() if i not in asked]
            owner = await self._find_on(others, producer_id, data)
        if owner is not None:
            self._found[key] = owner[0]["id"]
            if len(self._found) > _MAX_FOUND:
                del self._found[next(iter(self._found))]
        return owner

    async def _locate(self, key: tuple[str, bool], members: dict[str, ServerRecord]) -> str | None:
        """The home the producer's directory server names (None: none, or no answer
        within a quarter of ``find_timeout``: a frozen directory server must not hold a
        lookup long before every peer is asked)."""
        server_id = directory_server(key[0], members)
        if server_id == self.id:
            return self.directory.get(key)
        if server_id is None:
            return None
        ask = {"op": "locate", "producerId": key[0], "data": key[1]}
        asking = asyncio.ensure_future(self._post(members[server_id], ask))
        # (A deadline, not asyncio.timeout(): see _find_on().) Past it, no answer.
        try:
            done, _ = await asyncio.wait((asking,), timeout=self.find_timeout / 4)
            # Cancelled, not by this lookup (a closing HTTP client's queued wait): no answer.
            answer = asking.result() if done and not asking.cancelled() else {}
        except (aiohttp.ClientError, OSError, TimeoutError, StreamError, ValueError):
            return None
        finally:
            asking.cancel()  # (nothing once it is done: past the deadline, or cancelled)
        home = answer.get("at")
        return home if isinstance(home, str) else None

    # -- this server's producers in the directory ---------------------------------------

    def _list(self, key: tuple[str, bool]) -> None:
        """Tell the producer's directory server that it lives here."""
        server_id = directory_server(key[0], self._members())
        if server_id is None:
            return
        self._listed[key] = server_id
        if server_id == self.id:
            self.directory.put(key, self.id)
        else:
            self._notify(server_id, {"op": "announce", **self._entry(key)})

    def _unlist(self, key: tuple[str, bool], producer: Any = None) -> None:
        """Take the producer back from its directory server (``producer``: only if it is
        still the one of that id here)."""
        if producer is not None and self._originals.get(key) not in (None, producer):
            return
        server_id = self._listed.pop(key, None)
        if server_id == self.id:
            self.directory.drop(key, self.id)
        elif server_id is not None and server_id in self._members():
            self._notify(server_id, {"op": "forget", **self._entry(key)})

    def _entry(self, key: tuple[str, bool]) -> dict[str, Any]:
        return {"producerId": key[0], "data": key[1], "at": self.id}

    def member_joined(self, server_id: str) -> None:
        """Move this server's producers that a server that joined wins to it (about
        1/N of them: one hash each, none moves elsewhere)."""
        self._joined.set()
        self._joined = asyncio.Event()
        self._relist(lambda key, holder: holder != server_id and beats(server_id, holder, key))

    def _relist(self, moved: Callable[[str, str], bool]) -> None:
        """List again this server's producers whose directory server ``moved(producer
        id, directory server)`` says changed."""
        for key, holder in list(self._listed.items()):
            if moved(key[0], holder):
                self._unlist(key)
                self._list(key)

    async def _find_on(
        self, records: list[ServerRecord], producer_id: str, data: bool
    ) -> tuple[ServerRecord, str] | None:
        """Ask ``records`` at once whether they have the producer (the first yes wins)."""

        async def ask(record: ServerRecord) -> tuple[ServerRecord, str] | None:
            try:
                ask = {"op": "find", "producerId": producer_id, "data": data}
                answer = await self._post(record, ask)
            except (aiohttp.ClientError, OSError, TimeoutError, StreamError, ValueError):
                return None
            router_id = answer.get("routerId")
            if answer.get("found") is True and isinstance(router_id, str):
                return record, router_id
            return None

        # Waited for with a deadline, not asyncio.timeout(): on CPython 3.11 under a
        # sys.settrace tracer (coverage, a debugger) its expiry may end the lookup with
        # a CancelledError rather than a TimeoutError, and a consume waiting on it would
        # never be answered.
        pending = {asyncio.ensure_future(ask(r)) for r in records}
        deadline = asyncio.get_running_loop().time() + self.find_timeout
        try:
            while pending:
                left = deadline - asyncio.get_running_loop().time()
                done, pending = await asyncio.wait(
                    pending, timeout=left, return_when=asyncio.FIRST_COMPLETED
                )
                if not done:
                    logger.warning(
                        "%s %s: %d peer(s) did not answer within %g s, taken as not having it",
                        "data producer" if data else "producer",
                        producer_id,
                        len(pending),
                        self.find_timeout,
                    )
                    break
                for task in done:
                    # An ask cancelled, not by this lookup (its wait for a connection of
                    # a closing HTTP client): that peer's no answer, as a failed ask.
                    found = None if task.cancelled() else task.result()
                    if found is not None:
                        return found
        finally:
            for task in pending:
                task.cancel()
        return None

    async def _open(
        self,
        router: Any,
        producer_id: str,
        owner: ServerRecord,
        key: tuple[str, str, str],
        lock: asyncio.Lock,
        data: bool,
    ) -> None:
        """Pipe the producer in on the key's pair (made first if it has none): the pair
        is made, and each stream asked for and produced on it, one at a time (``lock``);
        a data stream's wait for the pair's SCTP association is not (other streams of
        the pair do not wait behind it)."""
        pipe_id = str(uuid.uuid4())
        message: dict[str, Any] = {"op": "open", "producerId": producer_id, "data": data}
        message |= {"pipeId": pipe_id, "from": self.id, "incarnation": self.incarnation}
        async with lock:
            pair = self._pairs_in.get(key)
            new = pair is None
            if pair is None:
                srtp = Cluster.srtp_between(self.media_address, owner["mediaAddress"])
                pair = await self._new_pair_in(router, owner["id"], key, srtp)
                message |= {
                    "ip": pair.transport.tuple["localAddress"],
                    "port": pair.transport.tuple["localPort"],
                    "srtpParameters": pair.transport.srtp_parameters,
                }
            pair.opening += 1
            message["pairId"] = pair.id
            self._early[pipe_id] = []  # the owner's notices for it until it is tracked
            try:
                answer = await self._post(owner, message)
                if "error" in answer:
                    raise StreamError(f"server {owner['id']}: {answer['error']}")
                if new:
                    await pair.transport.connect(
                        ip=answer["ip"],
                        port=answer["port"],
                        srtp_parameters=answer["srtpParameters"],
                    )
                # The copy gets an id of its own, and the router knows it by P's: ids are
                # unique per worker, and another router of this worker may hold a copy.
                copy: Any
                if data:
                    copy = await pair.transport.produce_data(
                        sctp_stream_parameters=answer["sctpStreamParameters"],
                        label=answer["label"],
                        protocol=answer["protocol"],
                        paused=answer["paused"],
                    )
                else:
                    copy = await pair.transport.produce(
                        kind=answer["kind"],
                        rtp_parameters=answer["rtpParameters"],
                        paused=answer["paused"],
                    )
            except BaseException as error:
                self._abandon(pair, pipe_id, None, new)
                if isinstance(error, _OWNER_FAULTS):
                    raise StreamError(
                        f"producer {producer_id} is on server {owner['id']}, which could not "
                        f"pipe it here: {error!r}"
                    ) from error
                raise
        try:
            if data:  # out of the lock: the pair's other streams go on meanwhile
                await self._sctp_up(pair.transport)
            if router.closed:  # (while the last step ran)
                raise InvalidStateError("Router closed while the stream was opening")
            if "close" in self._early[pipe_id]:
                raise _ProducerGone
            # Its pair closed: the owner left (peers_gone()), even if it is back by now;
            # not a member: peers_gone() or aclose() missed it.
            if copy.closed or not self._live(owner["id"]):
                raise StreamError(
                    f"the stream from server {owner['id']} was cut while it opened (that "
                    "server left, or this one's swarm node stopped)"
                )
        except BaseException:
            self._abandon(pair, pipe_id, copy, new)
            raise
        (router.alias_data_producer if data else router.alias_producer)(producer_id, copy)
        self._here[(router.id, producer_id, data)] = copy
        pair.opening -= 1
        pipe = _Pipe(pipe_id, pair, copy, (router.id, producer_id, data))
        self._track_copy(pipe)
        logger.info("producer %s piped in from server %s", producer_id, owner["id"])
        early = self._early.pop(pipe_id)
        if early:  # the last pause or resume is the owner's state
            await self._set_paused(pipe, early[-1] == "pause")

    async def _new_pair_in(
        self, router: Any, peer: str, key: tuple[str, str, str], srtp: bool
    ) -> _Pair:
        """This server's end of a new pair with ``peer``, the key's pair from now on (the
        next open of the key uses it once this one made it, or closed it)."""
        transport = await self._pipe_transport(router, srtp)
        pair = _Pair(str(uuid.uuid4()), peer, transport, key)
        self._pairs_in[key] = pair
        transport.observer.on("close", lambda: self._pair_in_closed(pair))
        return pair

    def _abandon(self, pair: _Pair, pipe_id: str, copy: Any, new: bool) -> None:
        """A stream that failed to open on ``pair``: the owner is told to close its end,
        and the pair goes too if it carries nothing and no other open uses it (a new
        pair whose first open failed always: nothing may be on it at the owner's)."""
        pair.opening -= 1
        del self._early[pipe_id]
        if copy is not None:  # (on a pair of other streams it would stay)
            copy.close()
        self._notify(pair.peer, {"op": "close", "pipeId": pipe_id})
        assert pair.key is not None
        if new and self._pairs_in.get(pair.key) is not pair:
            # Closed meanwhile (its router, or the owner's leave), 'closepair' told then:
            # the owner may have made its end since (back under the same id).
            self._notify(pair.peer, {"op": "closepair", "pairId": pair.id})
        if not pair.streams and not pair.opening:
            pair.transport.close()  # ('closepair' then: the owner may have made its end)

    async def _sctp_up(self, transport: PipeTransport) -> None:
        """Until the pair's SCTP association is up, at most ``find_timeout`` seconds.

        A message sent before it is dropped by the owner's end, and the app may send one
        as soon as consume_data() returns (between loaded servers the handshake may not
        beat it). (A deadline, not asyncio.timeout(): see _find_on().)
        """
        deadline = asyncio.get_running_loop().time() + self.find_timeout
        while transport.sctp_state not in ("connected", "failed", "closed"):
            changed = transport.observer.wait_for("sctpstatechange")
            closed = transport.observer.wait_for("close")
            try:
                done, _ = await asyncio.wait(
                    (changed, closed),
                    timeout=deadline - asyncio.get_running_loop().time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                changed.cancel()
                closed.cancel()
            if not done:
                break  # the deadline passed
        if transport.sctp_state != "connected":
            logger.warning(
                "pipe transport %s: SCTP is %s, not connected; early messages may be lost",
                transport.id,
                transport.sctp_state,
            )

    def _pair_in_closed(self, pair: _Pair) -> None:
        """A pair of this server closed: its router did (its copies closed first, with
        their transport), its last stream went, its peer left, or its first open
        failed."""
        assert pair.key is not None
        # It is the key's pair: one is made (and is the key's) only when the key has none.
        del self._pairs_in[pair.key]
        if pair.key not in self._pair_opens:  # else an open under way or waiting uses it
            self._pair_locks.pop(pair.key, None)
        self._notify(pair.peer, {"op": "closepair", "pairId": pair.id})

    def _use(self, pipe: _Pipe, change: int) -> None:
        """Count a copy's consumers; with none, close its pipe ``idle`` seconds later."""
        pipe.users += change
        if pipe.idle is not None:
            pipe.idle.cancel()
            pipe.idle = None
        if pipe.users == 0 and pipe.id in self._in:
            pipe.idle = asyncio.get_running_loop().call_later(self.idle, self._collect, pipe)

    def _collect(self, pipe: _Pipe) -> None:
        # Only ever due with no user: a use cancels the timer.
        logger.info("producer %s unused here: its pipe closes", pipe.carrier.id)
        self._closed_in(pipe, notify=True)

    def _closed_in(self, pipe: _Pipe, *, notify: bool) -> None:
        if self._in.pop(pipe.id, None) is None:
            return
        if pipe.idle is not None:
            pipe.idle.cancel()
        assert pipe.key is not None
        if self._copies.get(pipe.key) is pipe:
            del self._copies[pipe.key]
        self._carrying.pop(pipe.carrier.id, None)
        pipe.carrier.close()
        pair = pipe.pair
        if pair is None:  # a copy from another router here
            return
        if notify:
            self._notify(pair.peer, {"op": "close", "pipeId": pipe.id})
        pair.streams.discard(pipe.id)
        assert pair.key is not None
        # Its last stream: the pair goes ('closepair' then), unless an open is under way
        # or waiting on it (which closes it if it fails).
        if not pair.streams and pair.key not in self._pair_opens:
            pair.transport.close()

    # -- the route: what peers ask ------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="POST")
        if not is_peer(request):
            return peer_refused()
        try:
            message = check_message(await request.read())
        except ValueError as error:
            return web.Response(status=400, text=str(error))
        op = message["op"]
        if op in ("announce", "forget", "locate"):
            key = (message["producerId"], message.get("data", False))
            if op == "announce":
                # From a member only: an entry names a home lookups may go to, and a
                # stranger's would only take the place of real ones.
                if message["at"] in self._members():
                    self.directory.put(key, message["at"])
            elif op == "forget":
                self.directory.drop(key, message["at"])
            else:
                home = self.directory.get(key)
                return web.json_response({} if home is None else {"at": home})
            return web.json_response({})
        if op == "find":
            found = self._original(message["producerId"], message.get("data", False))
            if found is None:
                return web.json_response({"found": False})
            return web.json_response({"found": True, "routerId": found[1].id})
        if op == "open":
            try:
                return web.json_response(await self._pipe_out(message))
            except Exception as error:  # the asking server fails its call with this
                return web.json_response({"error": str(error) or type(error).__name__})
        if op == "closepair":
            if message["pairId"] in self._pairs_opening:
                self._cancelled.add(message["pairId"])
            pair = self._pairs_out.pop(message["pairId"], None)
            if pair is not None:
                for pipe_id in list(pair.streams):  # the asking side closed them already
                    self._closed_out(self._out[pipe_id], notify=False)
                pair.transport.close()
            return web.json_response({})
        pipe_id = message["pipeId"]
        if op == "close":
            if pipe_id in self._out:
                self._closed_out(self._out[pipe_id], notify=False)
            elif pipe_id in self._in:
                self._closed_in(self._in[pipe_id], notify=False)
            elif pipe_id in self._opening:
                self._cancelled.add(pipe_id)
        elif pipe_id in self._in:
            await self._set_paused(self._in[pipe_id], op == "pause")
        if pipe_id in self._early:  # a pipe of this server's still opening: later
            self._early[pipe_id].append(op)
        return web.json_response({})

    async def _set_paused(self, pipe: _Pipe, paused: bool) -> None:
        with contextlib.suppress(Exception):  # closed meanwhile
            await (pipe.carrier.pause() if paused else pipe.carrier.resume())

    async def _pipe_out(self, message: dict[str, Any]) -> dict[str, Any]:
        pipe_id = message["pipeId"]
        if pipe_id in self._out or pipe_id in self._opening:
            # A peer reusing an id (only a faulty or hostile one does): the first pipe's
            # consumer would be orphaned, and a close would find the wrong one.
            raise StreamError(f"pipe {pipe_id} is open already")
        # Until it is in _out (or failed): two opens at once.
        self._opening[pipe_id] = message["from"]
        try:
            return await self._open_out(message)
        finally:
            del self._opening[pipe_id]
            self._cancelled.discard(pipe_id)

    async def _open_out(self, message: dict[str, Any]) -> dict[str, Any]:
        peer, incarnation = message["from"], message.get("incarnation")
        await self._member(peer, incarnation)
        data = message.get("data", False)
        found = self._original(message["producerId"], data)
        if found is None:
            kind = "data producer" if data else "producer"
            raise StreamError(f"no {kind} {message['producerId']} here")
        producer, router = found
        pipe_id = message["pipeId"]
        pair = self._pairs_out.get(message["pairId"])
        new = pair is None
        if pair is None:
            if "ip" not in message:
                raise StreamError(f"no pipe pair {message['pairId']} here")
            pair = await self._pair_out(router, message)
        elif self._router_of.get(pair.transport) is not router or pair.peer != peer:
            raise StreamError(f"pipe pair {pair.id} is not of {message['producerId']}'s router")
        consumer: Any
        try:
            if data:
                consumer = await pair.transport.consume_data(data_producer_id=producer.id)
            else:
                consumer = await pair.transport.consume(producer_id=producer.id)
            if consumer.closed or pipe_id in self._cancelled or not self._live(peer, incarnation):
                consumer.close()
                raise StreamError(f"pipe {pipe_id} was closed, or server {peer} left, meanwhile")
        except BaseException:
            if new:
                self._pairs_out.pop(pair.id, None)
                pair.transport.close()
            raise
        pipe = _Pipe(pipe_id, pair, consumer)
        self._out[pipe.id] = pipe
        consumer.observer.on("close", lambda: self._closed_out(pipe, notify=True))
        prefix = "dataproducer" if data else "producer"
        for op in ("pause", "resume"):
            consumer.on(
                prefix + op, lambda op=op: self._notify(peer, {"op": op, "pipeId": pipe.id})
            )
        answer: dict[str, Any] = {
            "ip": pair.transport.tuple["localAddress"],
            "port": pair.transport.tuple["localPort"],
            "srtpParameters": pair.transport.srtp_parameters,
        }
        if data:
            answer |= {
                "sctpStreamParameters": consumer.sctp_stream_parameters,
                "label": consumer.label,
                "protocol": consumer.protocol,
                "paused": consumer.data_producer_paused,
            }
        else:
            answer |= {
                "kind": consumer.kind,
                "rtpParameters": consumer.rtp_parameters,
                "paused": consumer.producer_paused,
            }
        return answer

    async def _pipe_transport(self, router: Any, srtp: bool) -> PipeTransport:
        """This server's end of a pair: on its media address, RTX and SCTP on (media and
        data streams alike)."""
        transport: PipeTransport = await router.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": self.media_address},
            enable_rtx=True,
            enable_srtp=srtp,
            enable_sctp=True,
        )
        return transport

    async def _pair_out(self, router: Any, message: dict[str, Any]) -> _Pair:
        """A pair a peer opens with this server's ``router``: this end, connected."""
        pair_id = message["pairId"]
        if pair_id in self._pairs_opening:
            # Only a faulty or hostile peer (an asker opens a pair once): the pair made
            # second would take the first's place, which nothing would close.
            raise StreamError(f"pipe pair {pair_id} is being opened already")
        srtp = message.get("srtpParameters") is not None
        peer = self._members()[message["from"]]  # (_open_out waited for it, no await since)
        if not srtp and Cluster.srtp_between(self.media_address, peer["mediaAddress"]):
            # The media would cross a network in the clear: the asker decides for its
            # end, this server for its own, by the same rule.
            raise StreamError(
                f"pipe pair {pair_id}: SRTP is required between {self.media_address} and "
                f"{peer['mediaAddress']} (not both loopback)"
            )
        self._pairs_opening[pair_id] = message["from"]
        try:
            transport = await self._pipe_transport(router, srtp)
            try:
                await transport.connect(
                    ip=message["ip"],
                    port=message["port"],
                    srtp_parameters=message.get("srtpParameters"),
                )
                if pair_id in self._cancelled:
                    raise StreamError(
                        f"pipe pair {pair_id} was closed, or server {message['from']} left, "
                        "meanwhile"
                    )
            except BaseException:
                transport.close()
                raise
        finally:
            del self._pairs_opening[pair_id]
            self._cancelled.discard(pair_id)
        pair = _Pair(pair_id, message["from"], transport)
        self._pairs_out[pair.id] = pair

        def closed() -> None:  # its router closed (or 'closepair'): its streams with it
            if self._pairs_out.get(pair.id) is pair:
                del self._pairs_out[pair.id]

        transport.observer.on("close", closed)
        return pair

    def _closed_out(self, pipe: _Pipe, *, notify: bool) -> None:
        if self._out.pop(pipe.id, None) is None:
            return
        pipe.carrier.close()
        pair = pipe.pair
        assert pair is not None  # every pipe out is on a pair
        pair.streams.discard(pipe.id)
        if notify:
            self._notify(pair.peer, {"op": "close", "pipeId": pipe.id})

    # -- talking to peers ---------------------------------------------------------------

    def _is_member(self, server_id: str, incarnation: str | None = None) -> bool:
        """Whether ``server_id`` is a member, in its run ``incarnation`` if given (an
        open its former run sent, late past that run's leave, is not the next run's:
        that one would never close what it opens)."""
        record = self._members().get(server_id)
        return record is not None and incarnation in (None, record.get("incarnation"))

    def _live(self, server_id: str, incarnation: str | None = None) -> bool:
        """Whether this server still streams with ``server_id`` (a member, in that run,
        and not stopped): what an open must check after each wait."""
        return self._started and self._is_member(server_id, incarnation)

    async def _member(self, server_id: str, incarnation: str | None = None) -> None:
        """Until ``server_id`` is a member (in its run ``incarnation`` if given), at most
        ``find_timeout`` seconds (a peer may know this server a gossip round before this
        server knows it); StreamError past that. A pipe to a stranger, or to a run that
        left, would never be closed: no leave of it comes."""
        try:
            async with asyncio.timeout(self.find_timeout):
                while not self._is_member(server_id, incarnation):
                    await self._joined.wait()
        except TimeoutError:
            raise StreamError(f"server {server_id} is not in this swarm") from None

    async def _post(self, record: ServerRecord, message: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        if self._http.closed:
            # Stopped (aclose()) while a consume waited to ask: aiohttp's own refusal
            # would be a RuntimeError, which is not this library's.
            raise StreamError(f"server {self.id}: its swarm node stopped")
        url = route_url(record["controlUrl"], ROUTE)
        async with self._http.post(url, data=json.dumps(message), ssl=self._ssl) as response:
            if response.status != 200:
                raise StreamError(f"server {record['id']}: HTTP {response.status}")
            answer = json.loads(await response.read())
        if not isinstance(answer, dict):
            raise StreamError(f"server {record['id']}: not an answer")
        return answer

    def _notify(self, peer: str, message: dict[str, Any]) -> None:
        """Send a notice to ``peer``, after those sent to it before (one it does not hear
        is sent again until it does or leaves; none once stopped: its producers closing
        after the swarm node left tell no one; none to a server that left: its pipes
        closed with its leave)."""
        record = self._members().get(peer) if self._started else None
        if record is None:
            return
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = asyncio.Queue()
            self._senders[peer] = asyncio.ensure_future(self._send(peer, queue))
        queue.put_nowait((record, message))

    async def _send(
        self, peer: str, queue: asyncio.Queue[tuple[ServerRecord, dict[str, Any]]]
    ) -> None:
        while True:
            record, message = await queue.get()
            delay = _RETRY_FIRST
            while True:
                try:
                    await self._post(record, message)
                except (aiohttp.ClientConnectionError, OSError, TimeoutError) as error:
                    # Not heard (a link cut, a port refusing, a peer slow): again, in
                    # order, until heard or the peer leaves (peers_gone() cancels this
                    # sender, as aclose() does). Every notice may come twice: a close of
                    # what is closed, a pause of what is paused, change nothing; a lost
                    # close would leave a pipe or pair open there for good.
                    logger.info("telling server %s of %s: %r, again", peer, message["op"], error)
                    await asyncio.sleep(delay)
                    record = self._members().get(peer, record)  # (its address may change)
                    delay = min(2 * delay, _RETRY_MAX)
                    continue
                except (aiohttp.ClientError, StreamError, ValueError) as error:
                    logger.warning("telling server %s of %s failed: %r", peer, message["op"], error)
                except Exception:  # the next notices must still go
                    logger.exception("telling server %s of %s failed", peer, message["op"])
                break

    # -- peers gone, and the end ---------------------------------------------------------

    def peers_gone(self, server_ids: list[str]) -> None:
        """Close every pipe to and from servers that left the swarm, and forget their
        producers' entries."""
        gone = set(server_ids)
        self.directory.homes_gone(gone)
        for pipe in [p for p in self._in.values() if p.peer in gone]:
            logger.info("server %s gone: closing its stream %s", pipe.peer, pipe.carrier.id)
            self._closed_in(pipe, notify=False)
        # Its pairs too, those with streams opening on them: the server's end went (even
        # if it is back under the same id by their end, it knows none of it).
        for pair in [p for p in self._pairs_in.values() if p.peer in gone]:
            pair.transport.close()
        for pipe in [p for p in self._out.values() if p.peer in gone]:
            self._closed_out(pipe, notify=False)
        for pair in [p for p in self._pairs_out.values() if p.peer in gone]:
            pair.transport.close()
        # What it opens here: not kept once made (nor if it is back by then).
        opening = (*self._opening.items(), *self._pairs_opening.items())
        self._cancelled.update(i for i, peer in opening if peer in gone)
        for peer in gone:
            self._queues.pop(peer, None)
            sender = self._senders.pop(peer, None)
            if sender is not None:
                sender.cancel()
        self._relist(lambda _, holder: holder in gone)

    async def aclose(self) -> None:
        """Stop: the copies brought here close (their consumers get 'producerclose'),
        and so do the pipes out (peers are told by the swarm: this server left)."""
        if not self._started:
            return
        self._started = False
        for pipe in list(self._in.values()):
            self._closed_in(pipe, notify=False)
        for pipe in list(self._out.values()):
            self._closed_out(pipe, notify=False)
        for pair in list(self._pairs_out.values()):
            pair.transport.close()
        self.server.observer.off("newworker", self._follow_worker)
        self.server.observer.off("newrouter", self._follow_router)
        for source, listeners in self._attached.values():
            for event, listener in listeners:
                source.observer.off(event, listener)
        self._attached.clear()
        self.server.remove_route(ROUTE)
        self.server.before_consume = None
        for task in (*self._senders.values(), *self._following):
            task.cancel()
        await asyncio.gather(*self._following, return_exceptions=True)
        if self._senders:
            await asyncio.wait(list(self._senders.values()))
        self._senders.clear()
        self._queues.clear()
        assert self._http is not None
        await self._http.close()
