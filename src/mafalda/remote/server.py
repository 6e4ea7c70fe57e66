"""The Remote Mediasoup / Remote Mafalda server (aiohttp WebSocket, JSON-RPC 2.0).

    async with await serve(host="0.0.0.0", port=4443, token=TOKEN, target=mediasoup) as server:
        await server.wait_closed()

``target`` is the ``mafalda.mediasoup`` module (clients create their own workers) or a
running ``Mafalda`` (clients create routers in its pool). Each connection authenticates
with the token, then sees and controls only the objects it created and those created
under them (its session). A session whose connection drops is kept ``grace_period``
seconds for a reconnection (``hello`` with its session id), then its objects are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import itertools
import logging
import ssl as ssl_module
import time
import uuid
import weakref
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType
from typing import Any, TypedDict, cast

import orjson
from aiohttp import WSMsgType, web

from mafalda.mediasoup._io import limit_read_size
from mafalda.mediasoup.consumer import Consumer
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.router import Router
from mafalda.mediasoup.rtp_observer import RtpObserver
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities
from mafalda.mediasoup.transport import Transport
from mafalda.mediasoup.webrtc_server import WebRtcServer
from mafalda.mediasoup.worker import Worker, create_worker
from mafalda.mediasoup.worker_binary import WORKER_VERSION
from mafalda.remote import protocol as p
from mafalda.remote._frames import FrameSender
from mafalda.remote._limits import (
    DEFAULT_MAX_OBJECTS_PER_SESSION,
    DEFAULT_MAX_SEND_BACKLOG,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MAX_WORKERS_PER_SESSION,
    LISTENING_METHODS,
    check_limit,
    check_listen_ports,
    check_port_range,
    worker_ports,
)
from mafalda.remote.errors import ServerDrainingError
from mafalda.vertical.mafalda import Mafalda
from mafalda.vertical.router import MafaldaRouter
from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

__all__ = ["ClientInfo", "RemoteServer", "serve"]

logger = logging.getLogger("mafalda.remote.server")

#: Served classes and the kind their references carry.
KINDS: tuple[tuple[type, str], ...] = (
    (Worker, "worker"),
    (Router, "router"),
    (MafaldaRouter, "router"),
    (Transport, "transport"),
    (Producer, "producer"),
    (Consumer, "consumer"),
    (DataProducer, "dataproducer"),
    (DataConsumer, "dataconsumer"),
    (RtpObserver, "rtpobserver"),
    (WebRtcServer, "webrtcserver"),
    (MafaldaWebRtcServer, "webrtcserver"),
)

#: The kinds an object's parent may have (the parent closes it when it closes).
PARENT_KINDS: dict[str, frozenset[str]] = {
    "router": frozenset({"worker"}),
    "webrtcserver": frozenset({"worker"}),
    "transport": frozenset({"router"}),
    "rtpobserver": frozenset({"router"}),
    "producer": frozenset({"transport"}),
    "consumer": frozenset({"transport"}),
    "dataproducer": frozenset({"transport"}),
    "dataconsumer": frozenset({"transport"}),
}

#: Public names that are plumbing between the library's own objects, never called remotely.
_DENIED = frozenset(
    {
        "on",
        "once",
        "off",
        "worker_closed",
        "router_closed",
        "transport_closed",
        "listen_server_closed",
        "mafalda_closed",
        "handle_webrtc_transport",
        "child_router",
        "worker_of",
        "mafalda_dump",
        "on_host",
    }
)
_STATE_DENIED = frozenset(
    {
        "channel",
        "producers",
        "consumers",
        "data_producers",
        "data_consumers",
        "mafalda",
        "child_routers",
        "routers",
        "workers",
        "servers",
    }
)
#: State that cannot change once an object exists (mediasoup sets it at creation): sent
#: with an object's first reference, never read again for its deltas. A router's
#: rtp_capabilities or a producer's rtp_parameters are most of the JSON of its state.
_FIXED_STATE = frozenset(
    {
        "id",
        "kind",
        "type",
        "pid",
        "rtp_capabilities",
        "rtp_parameters",
        "consumable_rtp_parameters",
        "producer_id",
        "data_producer_id",
        "label",
        "protocol",
        "sctp_stream_parameters",
        "ice_role",
        "ice_candidates",
        "comedia",
        "rtcp_mux",
        "rtx",
    }
)
#: The calls that change what ``_FIXED_STATE`` holds: their answer sends the full state.
_REFRESHING = frozenset({"update_media_codecs"})


def kind_of(obj: Any) -> str | None:
    for cls, kind in KINDS:
        if isinstance(obj, cls):
            return kind
    return None


_schemas: dict[type, dict[str, list[str]]] = {}
_state_props: dict[tuple[type, bool], tuple[str, ...]] = {}


def schema_of(cls: type) -> dict[str, list[str]]:
    """The remotely callable methods of a served class: public, not plumbing, split into
    coroutine functions ('async') and plain ones ('sync')."""
    schema = _schemas.get(cls)
    if schema is None:
        async_names: list[str] = []
        sync_names: list[str] = []
        for name in dir(cls):
            if name.startswith("_") or name in _DENIED:
                continue
            attr = inspect.getattr_static(cls, name)
            if isinstance(attr, staticmethod | classmethod | property):
                continue
            if inspect.iscoroutinefunction(attr):
                async_names.append(name)
            elif inspect.isfunction(attr):
                sync_names.append(name)
        schema = {"async": async_names, "sync": sync_names}
        _schemas[cls] = schema
    return schema


def _state_props_of(cls: type, full: bool = True) -> tuple[str, ...]:
    """The properties of ``cls`` a client's proxy mirrors (``full=False``: those that may
    change, i.e. not in ``_FIXED_STATE``)."""
    props = _state_props.get((cls, full))
    if props is None:
        props = tuple(
            name
            for name in dir(cls)
            if not name.startswith("_")
            and not name.endswith("_for_testing")
            and name not in _STATE_DENIED
            and (full or name not in _FIXED_STATE)
            and isinstance(inspect.getattr_static(cls, name), property)
        )
        _state_props[(cls, full)] = props
    return props


#: create_worker() settings only the server's operator gives (a path on the server).
_SERVER_WORKER_SETTINGS = frozenset(
    {"worker_bin", "dtls_certificate_file", "dtls_private_key_file"}
)


class _MediasoupRoot:
    """The server's side of a server of plain mediasoup workers: the operator's settings
    of the clients' workers, and every worker started for a client."""

    def __init__(self, worker_settings: dict[str, Any]) -> None:
        self.worker_settings = worker_settings
        #: Every worker started for a client: the server's close() waits for them to exit.
        self.workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        #: Workers being started for clients (they count against max_workers already).
        self.starting = 0

    def live_workers(self) -> int:
        return sum(1 for w in self.workers if not w.closed) + self.starting

    def state(self) -> dict[str, Any]:
        return {"version": WORKER_VERSION}


class _MediasoupSessionRoot:
    """What a client calls on a server of plain mediasoup workers."""

    def __init__(self, root: _MediasoupRoot, session: Session) -> None:
        self._root = root
        self._session = session

    async def create_worker(self, **kwargs: Any) -> Worker:
        root, session = self._root, self._session
        server = session.server
        for name in _SERVER_WORKER_SETTINGS.intersection(kwargs):
            # A program of the client's choice run on the server, the server's files read.
            raise TypeError(f"{name} is the server's setting, not a client's")
        settings = worker_ports({**root.worker_settings, **kwargs}, server.rtc_port_range)
        # Counted before the first wait: a frame of many create_worker() calls (their
        # tasks run in turn up to it) cannot pass the limit together.
        session.workers = {w for w in session.workers if not w.closed}
        limit = server.max_workers_per_session
        if len(session.workers) + session.starting_workers >= limit:
            raise p.ProtocolError(
                p.RATE_LIMITED, f"too many workers: max_workers_per_session is {limit}"
            )
        if root.live_workers() >= server.max_workers:
            # Every client's together: sessions x max_workers_per_session can be far more
            # processes than the machine runs well.
            raise p.ProtocolError(
                p.RATE_LIMITED,
                f"too many workers on this server: max_workers is {server.max_workers}",
            )
        session.starting_workers += 1
        root.starting += 1
        try:
            worker = await create_worker(**settings)
        finally:
            session.starting_workers -= 1
            root.starting -= 1
        session.workers.add(worker)
        root.workers.add(worker)
        server.observer.emit("newworker", worker)
        return worker

    def get_supported_rtp_capabilities(self) -> Any:
        return get_supported_rtp_capabilities()


class _MafaldaRoot:
    """What a client calls on a server of a Mafalda pool: the pool is shared, its dump()
    is of the client's own routers (never another client's ids)."""

    def __init__(self, mafalda: Mafalda, session: Session) -> None:
        self._mafalda = mafalda
        self._session = session

    async def create_router(self, **kwargs: Any) -> MafaldaRouter:
        router = await self._mafalda.create_router(**kwargs)
        self._session.server.observer.emit("newrouter", router)
        # The pool's observer event, for this client's own router only (the pool's
        # listener, Session.follow_pool, does not forward it: it cannot tell whose).
        self._session.root_event("observer", "newrouter", (router,))
        return router

    async def create_webrtc_server(self, **kwargs: Any) -> MafaldaWebRtcServer:
        server = await self._mafalda.create_webrtc_server(**kwargs)
        self._session.root_event("observer", "newwebrtcserver", (server,))
        return server

    async def create_webrtc_servers(self, **kwargs: Any) -> list[list[Any]]:
        """The client's own WebRtcServers, one per worker of the pool (closed with its
        session), as ``[pid, server]`` pairs: JSON keys could not be the pids."""
        servers = await self._mafalda.create_webrtc_servers(**kwargs)
        return [[pid, server] for pid, server in servers.items()]

    def stats(self) -> Any:
        return self._mafalda.stats()

    async def dump(self) -> dict[str, Any]:
        own = [
            obj
            for obj in list(self._session.objects.values())
            if isinstance(obj, MafaldaRouter) and not obj.closed
        ]
        return await self._mafalda.dump(routers=own)


#: The events of a Mafalda pool each Remote Mafalda session forwards to its client, as
#: root events (``emitter``, event): a worker travels as the dict of the client's
#: ``workers``, a 'workerdied' loss with only the session's own ids. 'newrouter' and
#: 'newwebrtcserver' are told by the session's own create_*() (another's are not its).
_POOL_EVENTS = (
    ("events", "workerdied"),
    ("events", "workerreplaced"),
    ("observer", "newworker"),
    ("observer", "workerclose"),
    ("observer", "workerdied"),
    ("observer", "close"),
)


def worker_info(worker: Worker) -> dict[str, Any]:
    """A worker of a Mafalda pool as Remote Mafalda clients see it (no proxy)."""
    return {"pid": worker.pid, "closed": worker.closed, "died": worker.died}


#: Closed objects a session remembers (their handles), the oldest forgotten first.
_MAX_GONE = 100_000
#: Seconds a connection being closed has to flush what it was sent, then to close.
FLUSH_TIMEOUT = 2.0
CLOSE_TIMEOUT = 5.0
#: Seconds between two warnings of a session's failed fire-and-forget calls (the first is
#: logged at once, the others counted into one line per interval).
FAILURE_LOG_INTERVAL = 10.0


class _Closed:
    """Stands for a closed object the session forgot: close() does nothing, and any other
    call fails as the object's own would."""

    def __init__(self, message: str) -> None:
        self._message = message

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        def closed(*args: Any, **kwargs: Any) -> Any:
            raise InvalidStateError(self._message)

        return closed


#: Events a client still takes from an object it closed (a worker's exit).
_LATE_EVENTS = frozenset({"subprocessclose", "died"})

#: Calls that change nothing: their answer carries no state refresh.
_READ_ONLY = ("dump", "get_", "can_", "stats")


def check_tokens(
    token: object, accept_tokens: object = (), name: str = "token"
) -> tuple[bytes, ...]:
    """The secrets a server takes: ``token`` first, then ``accept_tokens`` (others it
    also takes, to roll a new secret out without a stop). ValueError/TypeError naming
    which is wrong (``name``: the token's, e.g. 'peer_token' and 'accept_peer_tokens')."""
    accept = f"accept_{name}s"
    if not isinstance(token, str) or not token:
        raise ValueError(f"{name} must be a non-empty string")
    if isinstance(accept_tokens, str) or not isinstance(accept_tokens, Sequence):
        raise TypeError(f"{accept} must be a list of strings")
    for other in accept_tokens:
        if not isinstance(other, str) or not other:
            raise ValueError(f"{accept}: each must be a non-empty string")
    return tuple(dict.fromkeys(t.encode() for t in [token, *accept_tokens]))


def token_matches(given: object, tokens: tuple[bytes, ...]) -> bool:
    """Whether ``given`` is one of ``tokens``, each compared in constant time (all of
    them, whichever matches: the time tells nothing of which one did)."""
    if not isinstance(given, str):
        return False
    encoded = given.encode("utf-8", "replace")
    return any([hmac.compare_digest(encoded, token) for token in tokens])


#: Routes every server answers without a token (see ``RemoteServer.readiness``).
_PROBES = ("healthz", "readyz")

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PEER = web.RequestKey("peer", bool)


def is_peer(request: web.Request) -> bool:
    """Whether a request to a route of ``RemoteServer.add_route()`` carried a peer's
    secret (or, on a route with none of its own, the server's token)."""
    return bool(request.get(_PEER, False))


def peer_refused() -> web.Response:
    """The answer to a client's token on what only a swarm's servers may do."""
    return web.Response(status=403, text="only the swarm's servers may do this")


#: create_*() calls a draining server still takes: pipes carry what is already there.
_DRAIN_OK = frozenset({"create_pipe_transport"})
#: Calls that name a (data) producer by id: a swarm may bring it from another server.
_CONSUMING = frozenset({"consume", "consume_data", "add_producer"})
#: Calls whose news is the object they return (its state goes with its reference), not a
#: change of their target's own state (a router's, a transport's).
_CREATING = ("create_", "consume", "produce", "pipe_to_router")
#: Calls that add a key to a router's table: each is held as an object is, so they count
#: towards ``max_objects_per_session`` too (the table name each one fills).
_ALIASING = {"alias_producer": "_producers", "alias_data_producer": "_data_producers"}

#: Root calls of a Mafalda's that emit a root event just before their answer, in the same
#: turn (``_MafaldaRoot``): that event carries what changed of the root's state (the
#: pool's stats, computed once), its answer nothing.
_TOLD_BY_ROOT_EVENT = frozenset({"create_router", "create_webrtc_server"})

_ROOT_METHODS: dict[str, frozenset[str]] = {
    "mediasoup": frozenset({"create_worker", "get_supported_rtp_capabilities"}),
    "mafalda": frozenset(
        {"create_router", "create_webrtc_server", "create_webrtc_servers", "dump", "stats"}
    ),
}


class _Connection:
    """One WebSocket: frames written in order (at once when the socket takes them), a
    rate limiter."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        rate: float,
        burst: float,
        address: str | None,
        transport: asyncio.Transport,
        max_send_backlog: int = DEFAULT_MAX_SEND_BACKLOG,
    ) -> None:
        self.ws = ws
        self._transport = transport
        #: The client's IP address (for the operator's eyes: the Monitor's clients).
        self.address = address
        self._max_send_backlog = max_send_backlog
        self.frames = FrameSender(ws, max_backlog=max_send_backlog, on_overflow=self._overflow)
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()

    def _overflow(self, waiting: int) -> None:
        logger.warning(
            "client %s not reading: %d bytes wait for it, past max_send_backlog (%d): "
            "connection dropped (its session waits for a resume)",
            self.address,
            waiting,
            self._max_send_backlog,
        )
        # Not a close: its frame could not be written either.
        self._transport.abort()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def send(self, message: dict[str, Any], convert: Callable[[Any], Any] = repr) -> bool:
        """Send ``message``; False when it could not be encoded (dropped; an answer is
        replaced by an error answer)."""
        try:
            data = p.encode_message(message, convert)
        except (TypeError, ValueError, RecursionError) as error:
            # Only the server's own code can make such a value (a cyclic app_data...).
            logger.exception("unencodable message dropped")
            if "result" not in message:
                return False
            # Its caller would wait for this answer forever: an error answer instead.
            error_message = p.error_response(
                message.get("id"),
                p.INTERNAL_ERROR,
                f"the answer could not be encoded: {type(error).__name__}: {error}",
            )
            self.frames.send(p.encode_message(error_message, convert))
            return False
        self.frames.send(data)
        return True

    async def close(self, code: int = 1000) -> None:
        await self.frames.flush(FLUSH_TIMEOUT)
        with contextlib.suppress(Exception):
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self.ws.close(code=code)
            except TimeoutError:
                # A peer that reads nothing: its close frame cannot even be written.
                self._transport.abort()


class _FailureLog:
    """The warnings of a session's fire-and-forget calls that failed (their client hears
    of each): the first at once, then at most one line per ``FAILURE_LOG_INTERVAL``
    seconds counting those held back, with the last of them. A client sending thousands
    of failing calls a second would otherwise write as many lines."""

    __slots__ = ("_held", "_last", "_timer")

    def __init__(self) -> None:
        self._held = 0
        self._last = ""
        #: While set, failures are held back (until it fires: one line for them).
        self._timer: asyncio.TimerHandle | None = None

    def failed(self, method: str, error: Exception) -> None:
        if self._timer is None:
            logger.warning("%.100s() failed: %s", method, error)
            self._wait()
            return
        self._held += 1
        self._last = f"{method:.100}() failed: {error}"

    def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(FAILURE_LOG_INTERVAL, self._flush)

    def _flush(self, closing: bool = False) -> None:
        self._timer = None
        if not self._held:
            return
        logger.warning(
            "%d more fire-and-forget calls failed (the last: %s)", self._held, self._last
        )
        self._held = 0
        self._last = ""
        if not closing:
            self._wait()  # still failing: the next line in an interval at the earliest

    def close(self) -> None:
        """The session ended: what is held back is logged now."""
        if self._timer is not None:
            self._timer.cancel()
            self._flush(closing=True)


class _ForwardingEmitter(EventEmitter):
    """Takes the place of an object's emitter (sharing its listeners) and forwards every
    event to the session's client before the local listeners run."""

    __slots__ = ("_session", "_handle", "_name")

    def __init__(self, original: EventEmitter, session: Session, handle: str, name: str) -> None:
        super().__init__()
        self._listeners = original._listeners
        self._tasks = original._tasks
        self._session = session
        self._handle = handle
        self._name = name

    def emit(self, event: str, *args: Any) -> bool:
        session = self._session
        if not session.closed:
            try:
                session.forward(self._handle, self._name, event, args)
            except Exception:  # never break the library's own emit
                logger.exception("forwarding %s %r failed", self._name, event)
        emitted = super().emit(event, *args)
        if event == "close" and self._name == "observer":
            session.forget(self._handle)
        return emitted

    safe_emit = emit


class ClientInfo(TypedDict):
    address: str | None  # the client's IP address (None: disconnected, in its grace period)
    connected: bool
    objects: int  # live objects it owns (workers, routers, transports...)


class Session:
    """The objects one client owns, kept across reconnections within the grace period."""

    def __init__(self, server: RemoteServer) -> None:
        self.id = str(uuid.uuid4())
        self.server = server
        self.objects: dict[str, Any] = {}
        self.handles: dict[int, str] = {}
        self.kinds: dict[str, str] = {}
        self.parents: dict[str, str | None] = {}
        self.connection: _Connection | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[Any]] = set()
        self.closed = False
        #: The JSON of the last state sent per handle (None: the root), for deltas.
        self.sent: dict[str | None, bytes] = {}
        self._prefix = self.id[:12] + "-"
        #: The handle whose close() the client asked for, while that call runs.
        self.closing: str | None = None
        #: Closed objects forgotten: handle -> the error message calls on them get.
        self.gone: dict[str, str] = {}
        #: Forgotten objects, while something still holds them: their handle, for an
        #: event that names one again (never registered anew: it would stay forever).
        self.forgotten: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        #: Closed workers whose process has not exited yet, until it has.
        self.exiting: dict[str, Any] = {}
        self._counter = itertools.count(1)
        #: The workers this session started (Remote Mediasoup; closed ones are dropped
        #: when the next is asked for), and those still starting: its share of the
        #: server's processes (``max_workers_per_session``).
        self.workers: set[Worker] = set()
        self.starting_workers = 0
        #: Creations running (their objects not registered yet): with ``objects``, what
        #: ``max_objects_per_session`` bounds.
        self.creating = 0
        #: The aliases this session's calls made, maybe gone since (pruned when counted):
        #: (router handle, table, key) -> the router.
        self.aliases: dict[tuple[str, str, str], Any] = {}
        self.failures = _FailureLog()
        #: Held calls (``wait_*()``) running, by request id: what a client's ``cancel``
        #: ends (they would hold their slot of ``max_pending_calls`` until they are done).
        self.held: dict[int | str, asyncio.Task[None]] = {}
        #: The highest integer id of the session's requests: a resume's hello tells it,
        #: so that a client in another process numbers its requests above the late
        #: answers still due to the one before.
        self.last_id = 0
        #: Remote Mafalda: the ids of the objects closed (forgotten) in this turn of the
        #: event loop, and of the routers their transports and RTP observers were on. A
        #: dying worker closes its objects, then the pool emits 'workerdied' in the same
        #: turn: its loss, as this client gets it, keeps only those ids.
        self.closed_now: set[str] = set()
        #: The pool's listeners this session added (``follow_pool()``), removed as it ends.
        self._following: list[tuple[EventEmitter, str, Callable[..., None]]] = []

    def hold(self, request_id: int | str, task: asyncio.Task[None]) -> None:
        """Record ``task``, a held call, for a ``cancel`` naming ``request_id``."""
        self.held[request_id] = task

        def done(_: asyncio.Task[None]) -> None:
            if self.held.get(request_id) is task:  # (not another call with its id)
                del self.held[request_id]

        task.add_done_callback(done)

    def cancel_held(self) -> None:
        """End the held calls of a link that is gone (its client failed them)."""
        held = list(self.held.values())
        self.held.clear()
        for task in held:
            task.cancel()

    def held_count(self, asking_alias: bool = False) -> int:
        """What ``max_objects_per_session`` bounds: live objects, creations running and
        aliases (those gone are only pruned when the count would meet the limit, or for
        an alias: it is asked for seldom, and every creation asks)."""
        count = len(self.objects) + self.creating + len(self.aliases)
        if asking_alias or count >= self.server.max_objects_per_session:
            for entry, router in list(self.aliases.items()):
                source = getattr(router, entry[1]).get(entry[2])
                if router.closed or source is None or source.id == entry[2]:
                    del self.aliases[entry]
            count = len(self.objects) + self.creating + len(self.aliases)
        return count

    # -- registry ------------------------------------------------------------------------------

    def register(self, obj: Any, kind: str, parent: str | None) -> tuple[str, bool]:
        """The handle of ``obj`` (registered now if new, hooking its emitters)."""
        handle = self.handles.get(id(obj))
        if handle is not None:
            if self.parents.get(handle) is None and parent is not None:
                self.parents[handle] = parent
            return handle, False
        # Unique across sessions (the session id's prefix), without a uuid4 per object.
        handle = f"{self._prefix}{next(self._counter):x}"
        self.objects[handle] = obj
        self.handles[id(obj)] = handle
        self.kinds[handle] = kind
        self.parents[handle] = parent
        # Every served kind is an EventSource (its own two emitters), registered once by
        # one session: ref() answers for a forgotten object (never registered anew), and
        # a closed session registers nothing (send(), and forward() through emit()).
        for name in ("events", "observer"):
            setattr(obj, name, _ForwardingEmitter(getattr(obj, name), self, handle, name))
        return handle, True

    def state(self, obj: Any, full: bool = False) -> dict[str, Any]:
        """What a proxy of ``obj`` mirrors: all of it (``full``, for an object the client
        has not seen), or what may have changed since (not ``_FIXED_STATE``)."""
        cls = type(obj)
        state: dict[str, Any] = {"class": cls.__name__} if full else {}
        for name in _state_props_of(cls, full):
            state[name] = getattr(obj, name)
        if full:
            kind_type = getattr(cls, "type", None)
            if isinstance(kind_type, str):  # the transports' class attribute
                state["type"] = kind_type
        state["app_data"] = getattr(obj, "app_data", {})
        if isinstance(obj, Router | MafaldaRouter):
            state[p.ALIASES] = self._aliases(obj)
        return state

    def _aliases(self, router: Router | MafaldaRouter) -> dict[str, dict[str, str | None]]:
        """What a router finds (data) producers by that its client's proxy cannot tell from
        the producers under the router's transports: aliases (``alias_producer()``, made
        by the client, or on the server by a swarm), and producers of the router under
        none of its transports (a Mafalda router's copies piped in from another router);
        each key with the producer's handle. Read from the router's other keys (a Router
        lists neither, and a few keys beat every producer id in each state sent), not from
        every producer: a router event of a big room would walk them all (1000 producers:
        143 us per walk, two or three per transport made)."""
        handles = self.handles
        return {
            name: {
                # (A key with no source: the router closed, its tables cleared.)
                key: handles.get(id(table[key]))
                for key in router._other_keys[name]
                if key in table
            }
            for name, table in (
                ("producers", router._producers),
                ("dataProducers", router._data_producers),
            )
        }

    def news(self, handle: str, obj: Any, full: bool = False) -> dict[str, Any] | None:
        """What of ``obj``'s state its client has not seen (None: nothing); ``full``: all
        of it again (after a call that changed what is otherwise fixed)."""
        return self._news(handle, obj, full)[0]

    def _news(
        self, handle: str, obj: Any, full: bool = False
    ) -> tuple[dict[str, Any] | None, bytes | None]:
        """``news()``, and its plain JSON when it is the full state (see ``_first``)."""
        if full or handle not in self.sent:
            return self._first(handle, obj)
        return self._delta(handle, self.state(obj))

    def _first(self, handle: str, obj: Any) -> tuple[dict[str, Any], bytes | None]:
        """The full state of ``obj``, for a client that has not seen it, and its JSON when
        that is plain (as in ``_delta``); what of it may change is recorded for deltas."""
        full = self.state(obj, full=True)
        changing = (*_state_props_of(type(obj), False), "app_data", p.ALIASES)
        self._delta(handle, {name: full[name] for name in changing if name in full})
        try:
            data = orjson.dumps(full)
        except TypeError:  # objects in app_data (or huge integers): escaped by the caller
            return full, None
        return full, (None if p.needs_walk(data) else data)

    def delta(self, key: str | None, state: dict[str, Any]) -> dict[str, Any] | None:
        """What of ``state`` the client has not seen (None: nothing)."""
        return self._delta(key, state)[0]

    def _delta(
        self, key: str | None, state: dict[str, Any]
    ) -> tuple[dict[str, Any] | None, bytes | None]:
        """``delta()``, and the JSON of it when that is the whole state, plain JSON (no
        object, no ``$`` key: as it goes on the wire). The last state sent is kept as its
        JSON: that copy cannot change under us, whereas properties return the objects'
        own (mutable) dicts and lists."""
        plain = True
        try:
            data = orjson.dumps(state)
        except TypeError:
            plain = False
            try:
                data = orjson.dumps(state, default=repr)
            except TypeError:  # huge integers: no comparison, everything is news
                self.sent.pop(key, None)
                return state, None
        last = self.sent.get(key)
        if key is None or key in self.objects:
            # A forgotten object's last state (its close() answered) is not kept: a long
            # session would keep one per object it ever closed.
            self.sent[key] = data
        if last is None:
            return state, (data if plain and not p.needs_walk(data) else None)
        if last == data:
            return None, None
        old = orjson.loads(last)
        return {k: v for k, v in state.items() if k not in old or old[k] != v}, None

    def ref(self, obj: Any, kind: str, context: str | None) -> dict[str, Any]:
        """A reference to ``obj`` (registered, with ``context`` as its parent when it may
        be), carrying the state the client has not seen, escaped for the wire."""
        if id(obj) not in self.handles:
            old = self.forgotten.get(obj)
            if old is not None:
                ref = p.make_ref(kind, old)
                ref["gone"] = True
                return ref
        parent = None
        if context is not None and self.kinds.get(context) in PARENT_KINDS.get(kind, ()):
            parent = context
        handle, _ = self.register(obj, kind, parent)
        state, data = self._news(handle, obj)
        if data is not None:  # plain JSON already: sent as it is, read as it is
            ref = p.make_ref(kind, handle, self.parents.get(handle), orjson.Fragment(data))
            ref["plain"] = True
            return ref
        return p.make_ref(
            kind,
            handle,
            self.parents.get(handle),
            None if state is None else p.escape(state, self.converter(handle)),
        )

    def forget(self, handle: str) -> None:
        """Drop a closed object (its observer emitted 'close'): a long session must not
        keep every object it ever created. Calls on it then fail as on a closed object
        (its close() does nothing), from a small record of it."""
        obj = self.objects.pop(handle, None)
        if obj is None:
            return
        self.handles.pop(id(obj), None)
        self.forgotten[obj] = handle
        kind = self.kinds.pop(handle, None)
        self.sent.pop(handle, None)
        if kind == "worker" and not getattr(obj, "subprocess_closed", True):
            # Its exit is still to come, with the status wait_closed() returns.
            self.exiting[handle] = obj
        self.gone[handle] = "Router closed" if kind == "router" else f"{type(obj).__name__} closed"
        if self._following:
            self._closed_now(obj)
        if len(self.gone) > _MAX_GONE:
            oldest = next(iter(self.gone))
            del self.gone[oldest]
            # Kept until now for muted(): a late event of a child names its parents.
            self.parents.pop(oldest, None)

    def _closed_now(self, obj: Any) -> None:
        if not self.closed_now:  # the first of this turn: the record ends with it
            asyncio.get_running_loop().call_soon(self.closed_now.clear)
        self.closed_now.add(obj.id)
        # A Mafalda router's child router on the dead worker (the loss lists those): the
        # one a transport or RTP observer of this session was on. (No public property of
        # theirs names it.)
        router_id = getattr(obj, "_router_id", None)
        if isinstance(router_id, str):
            self.closed_now.add(router_id)

    def muted(self, handle: str) -> bool:
        """Whether ``handle`` is the object whose close() the client asked for, or under
        it: the client closed those already, with their events, and drops the server's."""
        node: str | None = handle
        while node is not None:
            if node == self.closing:
                return True
            node = self.parents.get(node)
        return False

    # -- values --------------------------------------------------------------------------------

    def converter(self, context: str | None) -> Callable[[Any], Any]:
        """``protocol.escape``'s hook for what JSON lacks: exceptions, and served objects,
        which become references (registered here with ``context`` as their parent when it
        may be); anything else becomes its repr()."""

        def convert(value: Any) -> Any:
            if isinstance(value, BaseException):
                return {"$error": type(value).__name__, "message": str(value)}
            kind = kind_of(value)
            if kind is not None:
                return self.ref(value, kind, context)
            return repr(value)

        return convert

    def _special(self, request_id: Any) -> Callable[[dict[str, Any]], Any]:
        def special(marker: dict[str, Any]) -> Any:
            if "$ref" in marker and p.is_ref(marker):
                obj = self.objects.get(marker["id"])
                if obj is None:
                    raise p.ProtocolError(p.FORBIDDEN, "unknown object", request_id)
                return obj
            if "$bytes" in marker and p.is_bytes(marker):
                return p.decode_bytes(marker)
            return marker  # clients send no errors: data as it came

        return special

    def decode(self, value: Any, request_id: Any) -> Any:
        """Call arguments from the wire: references to owned objects, bytes, ``$`` keys."""
        return p.unescape(value, self._special(request_id))

    # -- events --------------------------------------------------------------------------------

    def follow_pool(self, mafalda: Mafalda) -> None:
        """Forward the pool's events (``_POOL_EVENTS``) to this session's client."""
        for name, event in _POOL_EVENTS:

            def listener(*args: Any, _name: str = name, _event: str = event) -> None:
                self.pool_event(_name, _event, args)

            emitter: EventEmitter = getattr(mafalda, name)
            emitter.on(event, listener)
            self._following.append((emitter, event, listener))

    def pool_event(self, emitter: str, event: str, args: tuple[Any, ...]) -> None:
        """An event of the pool, as this client may see it: a worker as its dict, a loss
        with the ids of this session's objects only (another's are not told)."""
        if event == "workerdied":
            own = self.closed_now
            loss: dict[str, Any] = args[0]
            args = (
                {
                    key: [i for i in value if i in own] if isinstance(value, list) else value
                    for key, value in loss.items()
                },
            )
        else:  # a worker ('newworker', 'workerclose', 'workerreplaced') or none ('close')
            args = tuple(worker_info(worker) for worker in args)
        self.root_event(emitter, event, args)

    def root_event(self, emitter: str, event: str, args: tuple[Any, ...]) -> None:
        """An event of the served root to the client (target null), with what changed of
        the root's state (the pool's workers, stats): the client's view agrees when it is
        emitted. Not told to a client away (within its grace period): its resume brings
        the root's state."""
        if self.connection is None or self.closed:
            return
        delta = self.delta(None, self.server.root_state(self))
        self.send(p.event_notification(None, emitter, event, list(args), delta))

    def forward(self, handle: str, emitter: str, event: str, args: tuple[Any, ...]) -> None:
        connection = self.connection
        if connection is None:
            # Still register objects created meanwhile: they belong to the session.
            if args:
                p.escape(args, self.converter(handle))
            return
        if self.closing is not None and event not in _LATE_EVENTS and self.muted(handle):
            return
        obj = self.objects.get(handle)
        if obj is None and event in _LATE_EVENTS:  # a closed worker's exit: its last state
            exiting = self.exiting
            obj = exiting.pop(handle, None) if event == "subprocessclose" else exiting.get(handle)
        message = p.event_notification(
            handle, emitter, event, list(args), None if obj is None else self.news(handle, obj)
        )
        self._send_on(connection, message, handle)

    def _send_on(
        self, connection: _Connection, message: dict[str, Any], context: str | None
    ) -> None:
        if not connection.send(message, self.converter(context)):
            # The states its encoding recorded as sent never left: the client gets them
            # whole next time (an object referenced first in it would come without its
            # fixed state, the rest of its first state).
            self.sent.clear()

    def send(self, message: dict[str, Any], context: str | None = None) -> None:
        if self.connection is not None:
            self._send_on(self.connection, message, context)
        elif not self.closed:
            # Detached, within the grace period: what a call created meanwhile (a worker,
            # a Mafalda's router: no event of a parent tells of them) is the session's
            # all the same, resumed or closed with it, never left running.
            p.escape(message, self.converter(context))

    def all_objects(self) -> list[Any]:
        """Every live object, to send with its full state (a new connection knows nothing):
        the converter makes each a reference with its parent."""
        self.sent.clear()
        return [o for o in self.objects.values() if not getattr(o, "closed", False)]

    # -- closing -------------------------------------------------------------------------------

    def close_objects(self) -> None:
        """Close every object of the session (roots first: closing cascades)."""
        self.closed = True
        self.failures.close()
        for emitter, event, listener in self._following:
            emitter.off(event, listener)
        self._following.clear()
        for obj in list(self.objects.values()):
            closer = getattr(obj, "close", None)
            if callable(closer) and not getattr(obj, "closed", True):
                try:
                    closer()
                except Exception:
                    logger.exception("closing %r failed", obj)
        self.objects.clear()
        self.handles.clear()
        for task in list(self.tasks):
            task.cancel()


class RemoteServer:
    """A running server. ``close()`` stops it (closing every session's objects)."""

    def __init__(
        self,
        *,
        target: Any,
        token: str,
        accept_tokens: Sequence[str] = (),
        grace_period: float,
        max_message_size: int,
        rate_limit: float,
        rate_burst: float,
        hello_timeout: float,
        heartbeat: float | None,
        max_pending_calls: int = 10_000,
        max_workers_per_session: int = DEFAULT_MAX_WORKERS_PER_SESSION,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        rtc_port_range: tuple[int, int] | None = None,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_connections: int | None = None,
        max_objects_per_session: int = DEFAULT_MAX_OBJECTS_PER_SESSION,
        max_send_backlog: int = DEFAULT_MAX_SEND_BACKLOG,
    ) -> None:
        #: Workers a Remote Mediasoup session may have at once (closed ones do not count).
        self.max_workers_per_session = check_limit(
            max_workers_per_session, "max_workers_per_session"
        )
        #: Sessions at once, those waiting for a reconnection included: they hold objects.
        self.max_sessions = check_limit(max_sessions, "max_sessions")
        #: Workers of every Remote Mediasoup session together (starting ones included).
        self.max_workers = check_limit(max_workers, "max_workers")
        #: Live objects a session may hold (those being created included), Remote
        #: Mafalda's on the shared pool too.
        self.max_objects_per_session = check_limit(
            max_objects_per_session, "max_objects_per_session"
        )
        #: Open WebSockets, those still before their hello included (default: one per
        #: session, and 100 more for clients saying hello or reconnecting).
        self.max_connections = check_limit(
            self.max_sessions + 100 if max_connections is None else max_connections,
            "max_connections",
        )
        #: The ports the clients' workers, transports and WebRtcServers may listen on
        #: (None: any, as the library allows).
        self.rtc_port_range = check_port_range(rtc_port_range)
        if isinstance(target, Mafalda):
            self.serves = "mafalda"
            self._root: Any = target
        elif isinstance(target, ModuleType) or target is None:
            self.serves = "mediasoup"
            self._root = _MediasoupRoot(worker_ports({}, self.rtc_port_range))
        elif isinstance(target, dict):  # worker settings for clients' workers
            self.serves = "mediasoup"
            # The operator's own ports must fit the operator's range too: refused now,
            # not at every client's create_worker().
            self._root = _MediasoupRoot(worker_ports(target, self.rtc_port_range))
        else:
            raise TypeError("target must be the mafalda.mediasoup module or a Mafalda")
        self._tokens = check_tokens(token, accept_tokens)
        self.grace_period = grace_period
        #: While True, every create_*() call is refused (a draining media server takes
        #: no new workers, routers, transports or observers; the rest keeps working),
        #: except pipe transports: they carry what is already there to other servers.
        self.draining = False
        self.max_message_size = max_message_size
        self._rate_limit = rate_limit
        self._rate_burst = rate_burst
        self.max_pending_calls = max_pending_calls
        #: Bytes of answers and events waiting for a client before its requests wait.
        self.max_backlog = max(4 * max_message_size, 1 << 22)
        #: ... and before its connection is dropped: the requests already read can be
        #: due far more (a frame of calls with large answers), and events come anyway.
        self.max_send_backlog = check_limit(max_send_backlog, "max_send_backlog")
        self._hello_timeout = hello_timeout
        self._heartbeat = heartbeat
        self.sessions: dict[str, Session] = {}
        self._connections: set[_Connection] = set()
        #: Closes of connections whose session was taken over, run in the background.
        self._takeovers: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        #: Each route's handler and the peer secrets it takes besides the server's tokens.
        self._routes: dict[str, tuple[_Handler, tuple[bytes, ...]]] = {}
        #: 'newworker' (worker): a worker started for a client of this server (not the
        #: process's other workers, as mediasoup.observer's); 'newrouter' (router): a
        #: MafaldaRouter created for a client of a server of a Mafalda pool.
        self.observer = EventEmitter()
        #: Called with the transport (or RTP observer), the (data) producer id and
        #: whether it is data, before a client's ``consume()``, ``consume_data()`` or
        #: ``add_producer()`` runs; an awaitable it returns is waited for first (a swarm
        #: pipes in a producer that lives on another server: ``mafalda.swarm.streams``).
        self.before_consume: Callable[[Any, str, bool], Awaitable[None] | None] | None = None
        self._closed = asyncio.Event()
        self.host = ""
        self.port = 0
        self.scheme = "ws"

    @property
    def mafalda(self) -> Mafalda | None:
        """The Mafalda pool served, if this server serves one."""
        return self._root if self.serves == "mafalda" else None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}/"

    def clients(self) -> list[ClientInfo]:
        """The sessions, for the operator (the Monitor): where each client connects
        from (None while it is away, within its grace period) and how many objects it
        holds. Session ids are left out: they are the clients' keys to resume."""
        return [
            {
                "address": None if session.connection is None else session.connection.address,
                "connected": session.connection is not None,
                "objects": sum(
                    1 for o in session.objects.values() if not getattr(o, "closed", True)
                ),
            }
            for session in list(self.sessions.values())
        ]

    def takes_token(self, token: str) -> bool:
        """Whether ``token`` is one of the tokens this server's apps connect with."""
        return token_matches(token, self._tokens)

    def add_route(
        self, name: str, handler: _Handler, *, peer_tokens: tuple[bytes, ...] = ()
    ) -> None:
        """Serve ``handler`` at ``/{name}`` (any method; the body at most
        ``max_message_size``) to requests that carry a token (``Authorization: Bearer
        TOKEN``): one of the server's, or one of ``peer_tokens`` (the secret of the
        servers of a swarm, from ``check_tokens()``); others get 401. ``is_peer(request)``
        tells the handler which kind it got: how a swarm's servers talk on their own
        port, and keep what only servers may do from the clients."""
        if not name.isascii() or not name.isalnum():
            raise ValueError(f"invalid route name {name!r}")
        if name in _PROBES or name in self._routes:
            raise ValueError(f"route /{name} already served")
        self._routes[name] = (handler, peer_tokens)

    def remove_route(self, name: str) -> None:
        self._routes.pop(name, None)

    def live_objects(self) -> list[Any]:
        """Every live object the clients of this server hold."""
        return [
            obj
            for session in list(self.sessions.values())
            for obj in list(session.objects.values())
            if not getattr(obj, "closed", True)
        ]

    async def drain(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """Refuse every create_*() call from now on (``draining``); wait until every
        object served here closed (True), or ``timeout`` seconds or ``abort`` (False)."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.live_objects():
            if loop.time() >= deadline or (abort is not None and abort.is_set()):
                return False
            await asyncio.sleep(0.1)
        return True

    def readiness(self) -> str | None:
        """Why this server should get no new clients now (None: it should): closing,
        draining, or as many sessions as ``max_sessions``."""
        if self._closed.is_set():
            return "closing"
        if self.draining:
            return "draining"
        if len(self.sessions) >= self.max_sessions:
            return f"full: {len(self.sessions)} sessions, max_sessions is {self.max_sessions}"
        return None

    async def _healthz(self, request: web.Request) -> web.Response:
        # Answering at all is the news: the event loop runs.
        return web.Response(text="ok")

    async def _readyz(self, request: web.Request) -> web.Response:
        why = self.readiness()
        if why is None:
            return web.Response(text="ready")
        return web.Response(status=503, text=f"not ready: {why}")

    async def _route(self, request: web.Request) -> web.StreamResponse:
        route = self._routes.get(request.match_info["name"])
        peer_tokens = () if route is None else route[1]
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else None
        # Both sets compared whole, whatever matches: the time tells nothing of which.
        peer = token_matches(given, peer_tokens)
        if not token_matches(given, self._tokens) and not peer:
            return web.Response(status=401, text="a token is required")
        if route is None:
            return web.Response(status=404, text="no such route")
        # A route with no secret of its own takes the servers' token as theirs too.
        request[_PEER] = peer or not peer_tokens
        return await route[0](request)

    async def start(self, host: str, port: int, ssl: ssl_module.SSLContext | None) -> None:
        app = web.Application(client_max_size=self.max_message_size)
        app.router.add_get("/", self._handle)
        # Load balancers' and orchestrators' probes: no token (they say nothing of what
        # is served), before the token-protected routes.
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/{name}", self._route)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl)
        await site.start()
        address = self._runner.addresses[0]
        self.host, self.port = str(address[0]), int(address[1])
        self.scheme = "wss" if ssl is not None else "ws"

    async def close(self) -> None:
        """Stop accepting, drop every connection and close every session's objects."""
        if self._closed.is_set():
            return
        self._closed.set()
        for session in list(self.sessions.values()):
            self._expire(session)
        # Closed with their session or by their client, maybe not exited yet.
        workers = []
        if isinstance(self._root, _MediasoupRoot):
            workers = [w for w in self._root.workers if w.closed]
        for connection in list(self._connections):
            await connection.close()
        if self._runner is not None:
            await self._runner.cleanup()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.gather(*(w.wait_closed() for w in workers), return_exceptions=True)

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def __aenter__(self) -> RemoteServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- sessions ------------------------------------------------------------------------------

    def _expire(self, session: Session) -> None:
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        self.sessions.pop(session.id, None)
        session.close_objects()

    def _detach(self, session: Session, connection: _Connection) -> None:
        if session.connection is not connection:
            return
        session.connection = None
        if self._closed.is_set():
            return
        if self.grace_period <= 0:
            self._expire(session)
        else:
            session.expiry = asyncio.get_running_loop().call_later(
                self.grace_period, self._expire, session
            )

    # -- connection ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_message_size, heartbeat=self._heartbeat)
        await ws.prepare(request)
        limit_read_size(request.transport)
        connection = _Connection(
            ws,
            self._rate_limit,
            self._rate_burst,
            request.remote,
            # Set: prepare() wrote the handshake on it.
            cast(asyncio.Transport, request.transport),
            self.max_send_backlog,
        )
        if len(self._connections) >= self.max_connections:
            # Refused before its hello (answered as the hello's, id 0): a flood of sockets
            # that never say hello would otherwise each hold one for hello_timeout.
            message = f"too many connections: max_connections is {self.max_connections}"
            connection.send(p.error_response(0, p.RATE_LIMITED, message))
            await connection.close()
            return ws
        self._connections.add(connection)
        session: Session | None = None
        try:
            session = await self._hello(connection)
            if session is not None:
                await self._serve(connection, session)
        finally:
            self._connections.discard(connection)
            if session is not None:
                self._detach(session, connection)
            await connection.close()
        return ws

    async def _receive(self, connection: _Connection, timeout: float | None) -> str | None:
        msg = await connection.ws.receive(timeout)
        if msg.type == WSMsgType.TEXT:
            return str(msg.data)
        if msg.type == WSMsgType.BINARY:
            return bytes(msg.data).decode("utf-8", "replace")
        return None

    async def _hello(self, connection: _Connection) -> Session | None:
        try:
            text = await self._receive(connection, self._hello_timeout)
        except TimeoutError:
            return None
        if text is None:
            return None
        try:
            req = p.parse_client_message(text, self.max_message_size)
        except p.ProtocolError as error:
            connection.send(p.error_response(error.request_id, error.code, error.message))
            return None
        if req.method != "hello":
            connection.send(p.error_response(req.id, p.NOT_AUTHENTICATED, "hello first"))
            return None
        params = req.params
        if not token_matches(params.get("token"), self._tokens):
            connection.send(p.error_response(req.id, p.AUTH_FAILED, "authentication failed"))
            return None
        if params.get("version") != p.PROTOCOL_VERSION:
            connection.send(
                p.error_response(
                    req.id,
                    p.VERSION_MISMATCH,
                    f"unsupported protocol version (server speaks {p.PROTOCOL_VERSION})",
                )
            )
            return None
        if self._closed.is_set():
            # close() has closed the sessions there were; a new one would stay open.
            connection.send(p.error_response(req.id, p.RATE_LIMITED, "server closing"))
            return None
        session_id = params.get("session")
        if session_id is None:
            if len(self.sessions) >= self.max_sessions:
                # Sessions in their grace period count: they hold their objects.
                connection.send(
                    p.error_response(
                        req.id,
                        p.RATE_LIMITED,
                        f"too many sessions: max_sessions is {self.max_sessions}",
                    )
                )
                return None
            session = Session(self)
            self.sessions[session.id] = session
            if isinstance(self._root, Mafalda):
                session.follow_pool(self._root)
        else:
            found = self.sessions.get(session_id) if isinstance(session_id, str) else None
            if found is None:
                connection.send(p.error_response(req.id, p.FORBIDDEN, "unknown session"))
                return None
            session = found
            # The held calls (wait_closed()) of the link it had: its client failed them
            # as the link went, and this one never asked them. They would hold their
            # slots of max_pending_calls until done, their answers going to this link.
            session.cancel_held()
            if session.expiry is not None:
                session.expiry.cancel()
                session.expiry = None
            old = session.connection
            # Attached before the old link goes: its end then detaches nothing (else its
            # session would expire under the new one). Closed in the background, as a
            # stalled old link must not hold the resume (nor let a retried one in first).
            session.connection = connection
            if old is not None:
                task = asyncio.get_running_loop().create_task(old.close(p.SESSION_TAKEN_OVER))
                self._takeovers.add(task)
                task.add_done_callback(self._takeovers.discard)
        session.connection = connection
        objects = session.all_objects()
        root = self.root_state(session)
        session.delta(None, root)
        connection.send(
            p.result_response(
                req.id,
                {
                    "version": p.PROTOCOL_VERSION,
                    "session": session.id,
                    "serves": self.serves,
                    "mediasoupVersion": WORKER_VERSION,
                    "gracePeriod": self.grace_period,
                    "lastId": session.last_id,
                    "root": root,
                    "schemas": self._schemas(),
                    "objects": objects,
                },
            ),
            session.converter(None),
        )
        exited = [h for h, worker in session.exiting.items() if worker.subprocess_closed]
        if exited:
            # Closed workers that exited while the client was away: their exit, with the
            # status wait_closed() returns, was not told (the client waits for it).
            connection.frames.end_frame()  # the client reads the hello answer alone
            for handle in exited:
                session.forward(handle, "events", "subprocessclose", ())
        return session

    def _schemas(self) -> dict[str, dict[str, list[str]]]:
        classes: set[type] = set()
        stack = [cls for cls, _ in KINDS]
        while stack:  # a class reached twice (two bases served) is walked twice: no harm
            cls = stack.pop()
            classes.add(cls)
            stack.extend(cls.__subclasses__())
        return {cls.__name__: schema_of(cls) for cls in classes}

    def root_state(self, session: Session) -> dict[str, Any]:
        if isinstance(self._root, Mafalda):
            mafalda = self._root
            return {
                "closed": mafalda.closed,
                "max_workers": mafalda.max_workers,
                "workers": [worker_info(w) for w in mafalda.workers],
                "stats": mafalda.stats(),
            }
        state: dict[str, Any] = self._root.state()
        state["supportedRtpCapabilities"] = get_supported_rtp_capabilities()
        return state

    async def _serve(self, connection: _Connection, session: Session) -> None:
        while not self._closed.is_set():
            try:
                if session.tasks:
                    # The calls of the last frame run up to their first wait, answering
                    # what they can, before the backlog is looked at.
                    await asyncio.sleep(0)
                # A client sending requests without reading their answers: no more
                # requests read (TCP pushes back on it) until it takes what waits.
                await connection.frames.drained(self.max_backlog)
                text = await self._receive(connection, None)
            except (ConnectionError, RuntimeError, asyncio.CancelledError):
                return
            if text is None:
                return
            if session.connection is not connection and session.connection is not None:
                # Taken over (its link closing): its client failed what it sent on it, and
                # the session's new link numbers its requests anew.
                return
            try:
                requests = p.parse_client_frame(text, self.max_message_size)
            except p.ProtocolError as error:
                if connection.allow():
                    connection.send(p.error_response(error.request_id, error.code, error.message))
                continue
            walk = p.needs_walk(text)
            for req in requests:
                if isinstance(req, p.ProtocolError):
                    if connection.allow():
                        connection.send(p.error_response(req.request_id, req.code, req.message))
                    continue
                if type(req.id) is int and req.id > session.last_id:
                    session.last_id = req.id
                try:
                    if not connection.allow():
                        raise p.ProtocolError(p.RATE_LIMITED, "rate limited", req.id)
                    self._dispatch(connection, session, req, walk)
                except p.ProtocolError as error:
                    if req.id is not None:
                        connection.send(p.error_response(req.id, error.code, error.message))
                    elif req.method == "call":  # fire-and-forget: its client hears of it too
                        connection.send(_call_error(req, error.code, error.message))

    def _dispatch(
        self, connection: _Connection, session: Session, req: p.Request, walk: bool = True
    ) -> None:
        if req.method == "ping":
            if req.id is not None:
                connection.send(p.result_response(req.id, "pong"))
            return
        if req.method == "bye":
            session.connection = None
            self._expire(session)
            if req.id is not None:
                # A request: answered (JSON-RPC 2.0), once the session's objects closed.
                connection.send(p.result_response(req.id, None))
            return
        if req.method != "call":
            if req.method == "cancel":
                return self._cancel(connection, session, req)
            raise p.ProtocolError(p.METHOD_NOT_FOUND, f"method not found: {req.method}", req.id)
        if session.closed:
            # After its bye (later in the same frame): what a call made would belong to
            # no session, never closed, counted against the server's limits.
            raise p.ProtocolError(p.INVALID_REQUEST, "session closed", req.id)
        call = p.parse_call(req)
        if call.target is None:
            obj = self._root
            if isinstance(obj, Mafalda):
                obj = _MafaldaRoot(obj, session)
            else:
                obj = _MediasoupSessionRoot(obj, session)
            if call.method not in _ROOT_METHODS[self.serves]:
                raise p.ProtocolError(
                    p.METHOD_NOT_FOUND, f"method not found: {call.method}", req.id
                )
        else:
            found = session.objects.get(call.target)
            if found is None:
                closed = session.gone.get(call.target)
                if closed is None:
                    raise p.ProtocolError(p.FORBIDDEN, "unknown object", req.id)
                found = _Closed(closed)
            obj = found
            if call.method != "set_app_data" and not isinstance(obj, _Closed):
                schema = schema_of(type(obj))
                if call.method not in schema["async"] and call.method not in schema["sync"]:
                    raise p.ProtocolError(
                        p.METHOD_NOT_FOUND, f"method not found: {call.method}", req.id
                    )
        # Plain JSON (no marker, no "$" key anywhere in the text) is used as it came.
        args = session.decode(call.args, req.id) if walk else call.args
        kwargs = session.decode(call.kwargs, req.id) if walk else call.kwargs
        if call.method == "set_app_data":
            if len(args) != 1 or not isinstance(args[0], dict) or kwargs:
                raise p.ProtocolError(p.INVALID_PARAMS, "app_data must be a dict", req.id)
            # On a closed object the session forgot, the stand-in takes it and tells
            # nothing: the client's proxy keeps what it set, as a closed local one does.
            obj.app_data = args[0]
            return self._answer(session, req.id, call.target, obj, None, "set_app_data")
        if len(session.tasks) >= self.max_pending_calls and call.method != "close":
            # Calls held (wait_closed()...) would hold the server's memory without bound.
            raise p.ProtocolError(p.RATE_LIMITED, "too many calls pending", req.id)
        # Every call runs in a task, started in arrival order: a sync call (send()) never
        # overtakes the request of an async one that arrived before it.
        task = asyncio.get_running_loop().create_task(
            self._run(session, req.id, call, obj, args, kwargs)
        )
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)
        if call.method[:5] == "wait_" and req.id is not None:  # held until something ends
            session.hold(req.id, task)
        return None

    def _cancel(self, connection: _Connection, session: Session, req: p.Request) -> None:
        """A call its client gave up on (``params.id``): a held one (``wait_*()``) ends now,
        answered with a CANCELLED error; any other runs to its end (a creation cancelled
        half-way could leave what it made in the worker), its answer late."""
        call_id = req.params.get("id")
        task = None
        if isinstance(call_id, int | str) and not isinstance(call_id, bool):  # (true is 1)
            task = session.held.pop(call_id, None)
        cancelled = task is not None and task.cancel()
        if cancelled:
            connection.send(p.error_response(call_id, p.CANCELLED, "call cancelled"))
        if req.id is not None:
            connection.send(p.result_response(req.id, cancelled))

    async def _run(
        self,
        session: Session,
        request_id: Any,
        call: p.Call,
        obj: Any,
        args: list[Any],
        kwargs: dict[str, Any],
    ) -> None:
        # A fire-and-forget close(): the client closed its proxies (and their children)
        # with their events already; the server's would only be dropped there.
        quiet = request_id is None and call.method == "close" and call.target is not None
        if quiet:
            session.closing = call.target
        counted = False
        try:
            try:
                if (
                    self.draining
                    and call.method.startswith("create_")
                    and call.method not in _DRAIN_OK
                ):
                    raise ServerDrainingError(f"media server draining: {call.method}() refused")
                aliasing = _ALIASING.get(call.method)
                if call.method.startswith(_CREATING) or aliasing is not None:
                    limit = self.max_objects_per_session
                    if session.held_count(aliasing is not None) >= limit:
                        raise p.ProtocolError(
                            p.RATE_LIMITED,
                            f"too many objects: max_objects_per_session is {limit}",
                        )
                    # Counted before the first wait: the calls of one frame (run in turn
                    # up to it) cannot pass the limit together.
                    if aliasing is None:
                        session.creating += 1
                        counted = True
                if call.method in LISTENING_METHODS:
                    check_listen_ports(kwargs, self.rtc_port_range)
                hook = self.before_consume
                if hook is not None and call.method in _CONSUMING:
                    data = call.method == "consume_data"
                    producer_id = kwargs.get("data_producer_id" if data else "producer_id")
                    waiting = hook(obj, producer_id, data) if isinstance(producer_id, str) else None
                    if waiting is not None:
                        await waiting
                        # What it brought may be known by an alias the router has now.
                        self._tell(session, session.parents.get(call.target or ""))
                result = getattr(obj, call.method)(*args, **kwargs)
                if aliasing is not None:
                    key: str = args[0] if args else kwargs["key"]  # a string: it was taken
                    session.aliases[(call.target or "", aliasing, key)] = obj
            except Exception as error:
                self._fail(session, request_id, call, error)
                return
            finally:
                if quiet:
                    session.closing = None
            if quiet and not inspect.isawaitable(result):
                return
            if inspect.isawaitable(result):
                await self._finish(session, request_id, call, obj, result)
                if call.method == "pipe_to_router":
                    # A Mafalda router knows the copy piped into it, under none of its
                    # transports (its state tells it, see Session._aliases).
                    self._tell(session, session.handles.get(id(kwargs.get("router"))))
            else:
                self._answer(session, request_id, call.target, obj, result, call.method)
        except asyncio.CancelledError:
            if _being_cancelled():
                raise  # this server's own (a drain, a close, a cancel): answered, or moot
            # What it awaited was cancelled by something else (a library cancelling a
            # wait of its own as it closes): its client would wait forever.
            message = f"{call.method}() cancelled on the server: what it awaited was cancelled"
            self._fail(session, request_id, call, p.ProtocolError(p.CANCELLED, message))
        finally:
            if counted:  # its objects are registered now (when it made any)
                session.creating -= 1

    async def _finish(
        self, session: Session, request_id: Any, call: p.Call, obj: Any, awaitable: Any
    ) -> None:
        try:
            result = await awaitable
        except Exception as error:
            self._fail(session, request_id, call, error)
            return
        self._answer(session, request_id, call.target, obj, result, call.method)

    def _answer(
        self,
        session: Session,
        request_id: Any,
        target: str | None,
        obj: Any,
        result: Any,
        method: str = "",
    ) -> None:
        answer: dict[str, Any] = {"value": result}  # an object: a reference (converter)
        if isinstance(obj, _Closed):
            pass  # a closed object the session forgot: no state to tell
        elif target is None and method in _TOLD_BY_ROOT_EVENT:
            pass  # its root event, sent just before in this turn, carried the root's state
        elif target is None or not (
            method.startswith(_READ_ONLY) or method.startswith(_CREATING)
        ):  # a call that may change its target, or the root's (its stats() refreshes the
            # client's view of the pool: its workers, stats): what changed
            if target is None:
                delta = session.delta(None, self.root_state(session))
            else:
                delta = session.news(target, obj, method in _REFRESHING)
            if delta is not None:
                answer["state"] = delta
        if request_id is None:
            if "state" in answer:
                session.send(p.notification("state", {"target": target, **answer}), target)
        else:
            session.send(p.result_response(request_id, answer), target)

    def _tell(self, session: Session, handle: str | None) -> None:
        """Send what changed of an object's state when a call on another changed it (a
        router's aliases)."""
        obj = session.objects.get(handle or "")
        if obj is not None:
            self._answer(session, None, handle, obj, None)

    def _fail(self, session: Session, request_id: Any, call: p.Call, error: Exception) -> None:
        code, wire = p.REMOTE_ERROR, None
        if isinstance(error, p.ProtocolError):
            # A server's limit met inside the call (a session's workers): refused as
            # the limits met before a call runs are, not as the method's own error.
            code = error.code
        else:
            wire = {
                "type": type(error).__name__,
                "bases": [c.__name__ for c in type(error).__mro__[1:-2]],
            }
        if request_id is None:
            # Nobody awaits a fire-and-forget call: its client hears of the failure.
            session.failures.failed(call.method, error)
            session.send(
                p.call_error_notification(call.target, call.method, code, str(error), wire)
            )
            return
        session.send(p.error_response(request_id, code, str(error), wire))


def _being_cancelled() -> bool:
    """Whether the running task itself is being cancelled (not only a future it awaited)."""
    task = asyncio.current_task()
    assert task is not None  # (a call runs in its own task)
    return task.cancelling() > 0


def _call_error(req: p.Request, code: int, message: str) -> dict[str, Any]:
    """The ``error`` notification for a fire-and-forget call refused before it ran."""
    target, method = req.params.get("target"), req.params.get("method")
    return p.call_error_notification(
        target if isinstance(target, str) else None,
        method if isinstance(method, str) else "",
        code,
        message,
    )


async def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str,
    accept_tokens: Sequence[str] = (),
    ssl: ssl_module.SSLContext | None = None,
    target: Any = None,
    grace_period: float = 10.0,
    max_message_size: int = 1 << 20,
    rate_limit: float = 20000.0,
    rate_burst: float = 40000.0,
    hello_timeout: float = 10.0,
    heartbeat: float | None = 20.0,
    max_pending_calls: int = 10_000,
    max_workers_per_session: int = DEFAULT_MAX_WORKERS_PER_SESSION,
    max_sessions: int = DEFAULT_MAX_SESSIONS,
    rtc_port_range: tuple[int, int] | None = None,
    max_workers: int = DEFAULT_MAX_WORKERS,
    max_connections: int | None = None,
    max_objects_per_session: int = DEFAULT_MAX_OBJECTS_PER_SESSION,
    max_send_backlog: int = DEFAULT_MAX_SEND_BACKLOG,
) -> RemoteServer:
    """Start a server on ``host``:``port`` (0: any free port, see ``server.port``).

    target: the ``mafalda.mediasoup`` module (default; a dict instead gives default
    ``create_worker`` settings for the clients' workers) or a running ``Mafalda``.
    token: the shared secret clients present (and a swarm's servers send each other);
    accept_tokens: other secrets taken too, to roll a new one out without a stop (see
    the README's "Rotating the token"). ssl: serve ``wss://`` with this context.
    grace_period: seconds a disconnected client's objects survive, waiting for it to
    resume its session. max_message_size: bytes per message (a larger one closes the
    connection). rate_limit / rate_burst: requests per second a connection may send
    (token bucket); more get a 'rate limited' error. max_pending_calls: calls of a
    session running at once (held ones: wait_closed()...); more get a 'too many calls
    pending' error (close() is always taken).

    The operator's limits (refusals come back as ``RemoteError`` with code
    ``RATE_LIMITED``, as 'too many calls pending' does; port refusals as ``ValueError``
    naming the argument, before anything reaches a worker):

    max_workers_per_session: workers one Remote Mediasoup session may have at once
    (closed or dead ones do not count); one more gets a 'too many workers' error. The
    default is 4 per CPU core, at least 8: a worker is a process that uses up to one
    core, so more per session add no media capacity, only processes and memory taken
    from the machine and its other clients, while 4 per core leave room for rooms in
    their own workers and for workers being replaced. (A Mafalda's pool is bounded by
    its own ``num_workers``.)
    max_workers: workers of all Remote Mediasoup sessions together (default 8 per CPU
    core, at least 16: twice what one session may have, so a second client still gets
    some when one took its share); one more gets a 'too many workers on this server'
    error (a cluster client then tries another server).
    max_connections: open WebSockets at once, those still before their hello included
    (default: max_sessions + 100); one more is answered 'too many connections' and closed
    before its hello is read.
    max_sessions: sessions at once (those waiting for a reconnection within their grace
    period count: they hold their objects; a polite ``aclose()`` ends its session at
    once). A new client beyond it gets a 'too many sessions' error from ``connect()``;
    resuming a session is always taken.
    max_objects_per_session: live objects one session may hold (workers, routers,
    transports, producers, consumers, data ones, RTP observers, WebRtcServers; those
    being created count, closed ones do not), on a Mafalda's shared pool too; a
    creation (``create_*()``, ``produce*()``, ``consume*()``, ``pipe_to_router()``)
    when it holds that many gets a 'too many objects' error, before anything reaches a
    worker. The default, 100,000, is far above what an app's rooms use on one machine
    (a worker carries some hundreds of consumers); it bounds the memory one client can
    make the server hold. (A call that makes several objects, as ``pipe_to_router()``,
    is counted as one when it starts.)
    max_send_backlog: bytes of answers and events that may wait for a client that does
    not read them (64 MiB by default); past it its connection is dropped and its
    session waits for a resume, as after any drop (the resume brings its objects'
    states). Its requests are not read while a few MiB wait (``max_backlog``), but
    those already read, and events, can be due without bound.
    rtc_port_range: ``(min, max)``, the only ports clients may have workers, transports
    and WebRtcServers listen on; None (default): any, as the library allows. A client's
    ``create_worker(rtc_min_port=, rtc_max_port=)`` must lie within it (left out: the
    range's bounds); a ``port`` or a ``portRange`` bound given in ``listen_infos``,
    ``listen_info``, ``rtcp_listen_info``, ``listen_ip(s)`` or ``port`` of
    ``create_*_transport()``, ``pipe_to_router()`` or ``create_webrtc_server()`` must be
    0 (the worker picks from its own range) or within it. Serving a Mafalda, start its
    pool with ``worker_settings`` giving the same ``rtc_min_port`` / ``rtc_max_port``
    (its workers are the operator's: port 0 picks from their range).
    """
    server = RemoteServer(
        target=target,
        token=token,
        accept_tokens=accept_tokens,
        grace_period=grace_period,
        max_message_size=max_message_size,
        rate_limit=rate_limit,
        rate_burst=rate_burst,
        hello_timeout=hello_timeout,
        heartbeat=heartbeat,
        max_pending_calls=max_pending_calls,
        max_workers_per_session=max_workers_per_session,
        max_sessions=max_sessions,
        rtc_port_range=rtc_port_range,
        max_workers=max_workers,
        max_connections=max_connections,
        max_objects_per_session=max_objects_per_session,
        max_send_backlog=max_send_backlog,
    )
    await server.start(host, port, ssl)
    return server
