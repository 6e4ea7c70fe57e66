"""Streams across a swarm's entry points: a producer published through one server can be
consumed through any other, by any app, with mediasoup's plain API.

An app connected to server Y calls ``transport.consume(producer_id=P)`` for a producer
P that another app created on server X. Y's router does not have P, so before the
call runs Y asks its peers who has P, and
pipes it in: a PipeTransport on each side (on each server's media address, SRTP unless
both are loopback, RTX on), X consuming P into its end and Y producing it, with P's id,
into the consuming router. The call then runs as if P had been there all along, and
every later consumer of P on that router shares the pipe.

What happens to P reaches Y's copy: a pause, a resume, its close (Y's consumers get
``producerpause``, ``producerresume``, ``producerclose``); a router closed on either side
closes the pipe; a server that leaves or goes silent closes every pipe to and from it.

Servers talk on their own port, on the token-protected route ``/streams``, in JSON:
``find`` (do you have P?), ``open`` (pipe P to this end), and the notices ``close``,
``pause``, ``resume`` of a pipe, sent in order per peer.

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
from mafalda.mediasoup import Router, Transport, Worker
from mafalda.mediasoup.pipe_transport import PipeTransport
from mafalda.remote import RemoteServer
from mafalda.swarm.urls import route_url
from mafalda.vertical.router import MafaldaRouter

__all__ = ["ROUTE", "StreamError", "SwarmStreams", "check_message"]

logger = logging.getLogger("mafalda.swarm.streams")

ROUTE = "streams"
_OPS = ("find", "open", "close", "pause", "resume")


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
    if op == "find":
        _text(data, "producerId")
    elif op == "open":
        _text(data, "producerId")
        _text(data, "pipeId")
        _text(data, "from")
        _text(data, "ip")
        port = data.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise ValueError("streams: invalid 'port'")
        srtp = data.get("srtpParameters")
        if srtp is not None and not isinstance(srtp, dict):
            raise ValueError("streams: invalid 'srtpParameters'")
    else:
        _text(data, "pipeId")
    return data


class _Pipe:
    """One end of a piped stream: this server's PipeTransport and what it carries."""

    __slots__ = ("carrier", "id", "idle", "peer", "transport", "users")

    def __init__(self, pipe_id: str, peer: str, transport: PipeTransport, carrier: Any) -> None:
        self.id = pipe_id
        self.peer = peer  # the other server's id
        self.transport = transport
        self.carrier = carrier  # the pipe consumer (out) or the pipe producer (in)
        self.users = 0  # in: the consumers of the copy
        self.idle: asyncio.TimerHandle | None = None  # in: its collection, when unused


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
        members: Callable[[], dict[str, ServerRecord]],
        timeout: float = 10.0,
        idle: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
    ) -> None:
        """idle: seconds a copy brought from another server stays with no consumer
        before its pipe closes (a consumer back within it reuses the pipe). ssl: the
        context to reach wss:// peers (default: the system's certificate authorities)."""
        if idle < 0:
            raise ValueError("idle must be >= 0")
        self.server = server
        self.id = server_id
        self._token = token
        self._members = members
        self._timeout = timeout
        self.idle = idle
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
        self._in: dict[str, _Pipe] = {}
        self._copies: dict[tuple[str, str, bool], _Pipe] = {}
        self._carrying: dict[str, _Pipe] = {}  # the pipes in, by their copy's own id
        self._bringing: dict[tuple[str, str, bool], asyncio.Future[None]] = {}
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._senders: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        self._started = False

    # -- following this process's producers ---------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self.server.observer.on("newworker", self._follow_worker)
        self.server.observer.on("newrouter", self._follow_router)
        self.server.add_route(ROUTE, self._handle)
        self.server.before_consume = self._before_consume
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            headers={"Authorization": f"Bearer {self._token}"},
        )

    def _follow_worker(self, worker: Worker) -> None:
        worker.observer.on("newrouter", self._follow_router)

    def _follow_router(self, router: Router | MafaldaRouter) -> None:
        def new_transport(transport: Transport) -> None:
            self._router_of[transport] = router
            # What a pipe produces is a copy of a producer, not a stream's origin.
            origin = not isinstance(transport, PipeTransport)

            def new_producer(producer: Any, data: bool = False) -> None:
                self._here[(router.id, producer.id, data)] = producer
                if origin:
                    self._originals[(producer.id, data)] = producer
                    self._router_of[producer] = router

            def new_consumer(consumer: Any, data: bool = False) -> None:
                source = consumer.data_producer_id if data else consumer.producer_id
                pipe = self._copies.get((router.id, source, data))
                if pipe is not None:
                    self._use(pipe, 1)
                    consumer.observer.on("close", lambda: self._use(pipe, -1))

            transport.observer.on("newproducer", new_producer)
            transport.observer.on("newconsumer", new_consumer)
            transport.observer.on("newdataproducer", lambda p: new_producer(p, True))
            transport.observer.on("newdataconsumer", lambda c: new_consumer(c, True))

        def new_rtp_observer(rtp_observer: Any) -> None:
            self._router_of[rtp_observer] = router
            watched: set[_Pipe] = set()  # the copies it watches: they are in use

            def added(producer: Any) -> None:
                pipe = self._carrying.get(producer.id)
                if pipe is not None and pipe not in watched:
                    watched.add(pipe)
                    self._use(pipe, 1)

            def removed(producer: Any) -> None:
                pipe = self._carrying.get(producer.id)
                if pipe is not None and pipe in watched:
                    watched.discard(pipe)
                    self._use(pipe, -1)

            def closed() -> None:
                for pipe in watched:
                    self._use(pipe, -1)
                watched.clear()

            rtp_observer.observer.on("addproducer", added)
            rtp_observer.observer.on("removeproducer", removed)
            rtp_observer.observer.on("close", closed)

        router.observer.on("newtransport", new_transport)
        router.observer.on("newrtpobserver", new_rtp_observer)

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
        present = self._here.get(key)
        if present is not None and not present.closed:
            pipe = self._copies.get(key)
            if pipe is not None and pipe.users == 0:
                self._use(pipe, 0)  # an unused copy: a new idle period for this consume
            return None  # here already (its origin or a copy): mediasoup's call as it is
        pending = self._bringing.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._bring(router, producer_id, data))
            self._bringing[key] = pending
            pending.add_done_callback(lambda _: self._bringing.pop(key, None))
        return asyncio.shield(pending)

    async def _bring(self, router: Any, producer_id: str, data: bool) -> None:
        found = self._original(producer_id, data)
        if found is not None:  # another app's router on this server
            await self._pipe_locally(found[1], router, producer_id, data)
            return
        owner = await self._find(producer_id, data)
        if owner is not None:  # else nowhere: mediasoup's own "not found" answers the call
            await self._open(router, producer_id, owner, data)

    async def _pipe_locally(self, source: Any, router: Any, producer_id: str, data: bool) -> None:
        """mediasoup's pipe_to_router(); between plain Routers, with a copy of its own id
        that the router knows by the original's (both routers may share a worker: a
        MafaldaRouter sees to that itself)."""
        which = "data_producer_id" if data else "producer_id"
        if isinstance(source, MafaldaRouter):
            await source.pipe_to_router(router=router, **{which: producer_id})
            return
        result = await source.pipe_to_router(router=router, keep_id=False, **{which: producer_id})
        if data:
            copy = result["pipeDataProducer"]
            router.alias_data_producer(producer_id, copy)
        else:
            copy = result["pipeProducer"]
            router.alias_producer(producer_id, copy)
        self._here[(router.id, producer_id, data)] = copy

    async def _find(self, producer_id: str, data: bool) -> ServerRecord | None:
        """The peer that has the producer (asked all at once; the first yes wins)."""

        async def ask(record: ServerRecord) -> ServerRecord | None:
            try:
                ask = {"op": "find", "producerId": producer_id, "data": data}
                answer = await self._post(record, ask)
            except (aiohttp.ClientError, OSError, TimeoutError, StreamError, ValueError):
                return None
            return record if answer.get("found") is True else None

        asks = [asyncio.ensure_future(ask(r)) for i, r in self._members().items() if i != self.id]
        try:
            for next_answer in asyncio.as_completed(asks):
                owner = await next_answer
                if owner is not None:
                    return owner
            return None
        finally:
            for task in asks:
                task.cancel()

    async def _open(self, router: Any, producer_id: str, owner: ServerRecord, data: bool) -> None:
        me = self._members().get(self.id)
        address = me["mediaAddress"] if me is not None else self.server.host
        srtp = Cluster.srtp_between(address, owner["mediaAddress"])
        transport = await router.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": address},
            enable_rtx=True,
            enable_srtp=srtp,
            enable_sctp=data,
        )
        pipe_id = str(uuid.uuid4())
        try:
            answer = await self._post(
                owner,
                {
                    "op": "open",
                    "producerId": producer_id,
                    "data": data,
                    "pipeId": pipe_id,
                    "from": self.id,
                    "ip": transport.tuple["localAddress"],
                    "port": transport.tuple["localPort"],
                    "srtpParameters": transport.srtp_parameters,
                },
            )
            if "error" in answer:
                raise StreamError(f"server {owner['id']}: {answer['error']}")
            await transport.connect(
                ip=answer["ip"], port=answer["port"], srtp_parameters=answer["srtpParameters"]
            )
            # The copy gets an id of its own, and the router knows it by P's: ids are
            # unique per worker, and another router of this worker may hold a copy of P.
            copy: Any
            if data:
                copy = await transport.produce_data(
                    sctp_stream_parameters=answer["sctpStreamParameters"],
                    label=answer["label"],
                    protocol=answer["protocol"],
                    paused=answer["paused"],
                )
                router.alias_data_producer(producer_id, copy)
            else:
                copy = await transport.produce(
                    kind=answer["kind"],
                    rtp_parameters=answer["rtpParameters"],
                    paused=answer["paused"],
                )
                router.alias_producer(producer_id, copy)
            self._here[(router.id, producer_id, data)] = copy
        except BaseException as error:
            transport.close()
            self._notify(owner["id"], {"op": "close", "pipeId": pipe_id})
            wrong = (aiohttp.ClientError, OSError, TimeoutError, KeyError, TypeError, ValueError)
            if isinstance(error, wrong):
                raise StreamError(
                    f"producer {producer_id} is on server {owner['id']}, which could not "
                    f"pipe it here: {error!r}"
                ) from error
            raise
        pipe = _Pipe(pipe_id, owner["id"], transport, copy)
        self._in[pipe_id] = pipe
        self._copies[(router.id, producer_id, data)] = pipe
        self._carrying[copy.id] = pipe
        transport.observer.on("close", lambda: self._closed_in(pipe, notify=True))
        self._use(pipe, 0)  # collected if the consume that asked for it fails
        logger.info("producer %s piped in from server %s", producer_id, owner["id"])

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
        for key, copy in list(self._copies.items()):
            if copy is pipe:
                del self._copies[key]
        self._carrying.pop(pipe.carrier.id, None)
        pipe.transport.close()  # the copy closes with it
        if notify:
            self._notify(pipe.peer, {"op": "close", "pipeId": pipe.id})

    # -- the route: what peers ask ------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return web.Response(status=405, text="POST")
        try:
            message = check_message(await request.read())
        except ValueError as error:
            return web.Response(status=400, text=str(error))
        op = message["op"]
        if op == "find":
            found = self._original(message["producerId"], message.get("data", False))
            return web.json_response({"found": found is not None})
        if op == "open":
            try:
                return web.json_response(await self._pipe_out(message))
            except Exception as error:  # the asking server fails its call with this
                return web.json_response({"error": str(error) or type(error).__name__})
        pipe_id = message["pipeId"]
        if op == "close":
            if pipe_id in self._out:
                self._closed_out(self._out[pipe_id], notify=False)
            elif pipe_id in self._in:
                self._closed_in(self._in[pipe_id], notify=False)
        else:
            pipe = self._in.get(pipe_id)
            if pipe is not None:
                with contextlib.suppress(Exception):  # closed meanwhile
                    await (pipe.carrier.pause() if op == "pause" else pipe.carrier.resume())
        return web.json_response({})

    async def _pipe_out(self, message: dict[str, Any]) -> dict[str, Any]:
        data = message.get("data", False)
        found = self._original(message["producerId"], data)
        if found is None:
            kind = "data producer" if data else "producer"
            raise StreamError(f"no {kind} {message['producerId']} here")
        producer, router = found
        peer = message["from"]
        me = self._members().get(self.id)
        address = me["mediaAddress"] if me is not None else self.server.host
        srtp = message.get("srtpParameters") is not None
        transport = await router.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": address},
            enable_rtx=True,
            enable_srtp=srtp,
            enable_sctp=data,
        )
        try:
            await transport.connect(
                ip=message["ip"],
                port=message["port"],
                srtp_parameters=message.get("srtpParameters"),
            )
            consumer: Any
            if data:
                consumer = await transport.consume_data(data_producer_id=producer.id)
            else:
                consumer = await transport.consume(producer_id=producer.id)
        except BaseException:
            transport.close()
            raise
        pipe = _Pipe(message["pipeId"], peer, transport, consumer)
        self._out[pipe.id] = pipe
        transport.observer.on("close", lambda: self._closed_out(pipe, notify=True))
        consumer.observer.on("close", lambda: self._closed_out(pipe, notify=True))
        prefix = "dataproducer" if data else "producer"
        for op in ("pause", "resume"):
            consumer.on(
                prefix + op, lambda op=op: self._notify(peer, {"op": op, "pipeId": pipe.id})
            )
        answer: dict[str, Any] = {
            "ip": transport.tuple["localAddress"],
            "port": transport.tuple["localPort"],
            "srtpParameters": transport.srtp_parameters,
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

    def _closed_out(self, pipe: _Pipe, *, notify: bool) -> None:
        if self._out.pop(pipe.id, None) is None:
            return
        pipe.transport.close()
        if notify:
            self._notify(pipe.peer, {"op": "close", "pipeId": pipe.id})

    # -- talking to peers ---------------------------------------------------------------

    async def _post(self, record: ServerRecord, message: dict[str, Any]) -> dict[str, Any]:
        assert self._http is not None
        url = route_url(record["controlUrl"], ROUTE)
        async with self._http.post(url, data=json.dumps(message), ssl=self._ssl) as response:
            if response.status != 200:
                raise StreamError(f"server {record['id']}: HTTP {response.status}")
            answer = json.loads(await response.read())
        if not isinstance(answer, dict):
            raise StreamError(f"server {record['id']}: not an answer")
        return answer

    def _notify(self, peer: str, message: dict[str, Any]) -> None:
        """Send a notice to ``peer``, after those sent to it before (best effort)."""
        queue = self._queues.get(peer)
        if queue is None:
            queue = self._queues[peer] = asyncio.Queue()
            self._senders[peer] = asyncio.ensure_future(self._send(peer, queue))
        queue.put_nowait(message)

    async def _send(self, peer: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            message = await queue.get()
            record = self._members().get(peer)
            if record is None:
                continue  # gone: its pipes close with it
            try:
                await self._post(record, message)
            except (aiohttp.ClientError, OSError, TimeoutError, StreamError, ValueError) as error:
                logger.warning("telling server %s of %s failed: %r", peer, message["op"], error)

    # -- peers gone, and the end ---------------------------------------------------------

    def peers_gone(self, server_ids: list[str]) -> None:
        """Close every pipe to and from servers that left the swarm."""
        gone = set(server_ids)
        for pipe in [p for p in self._in.values() if p.peer in gone]:
            logger.info("server %s gone: closing its stream %s", pipe.peer, pipe.carrier.id)
            self._closed_in(pipe, notify=False)
        for pipe in [p for p in self._out.values() if p.peer in gone]:
            self._closed_out(pipe, notify=False)
        for peer in gone:
            self._queues.pop(peer, None)
            sender = self._senders.pop(peer, None)
            if sender is not None:
                sender.cancel()

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
        self.server.observer.off("newworker", self._follow_worker)
        self.server.observer.off("newrouter", self._follow_router)
        self.server.remove_route(ROUTE)
        self.server.before_consume = None
        for sender in self._senders.values():
            sender.cancel()
        if self._senders:
            await asyncio.wait(list(self._senders.values()))
        self._senders.clear()
        assert self._http is not None
        await self._http.close()
