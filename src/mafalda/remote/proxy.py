"""Client-side proxies: the objects of ``mafalda.mediasoup`` living on a remote server.

Each proxy has the methods, properties and events of its local twin. Methods are called
remotely by name (async ones await the server's answer; sync ones such as ``send()`` are
fire-and-forget). Properties are read from a snapshot of the object's state that the
server sends with every reference, every event and every answer. ``close()`` closes the
proxy and its children at once, with the same events as the local objects, then tells
the server.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mafalda.mediasoup import ortc
from mafalda.mediasoup.data_producer import (
    resolve_message_ppid,
    validate_subchannel,
    validate_subchannels,
)
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.router import answer_can_consume
from mafalda.remote.protocol import ALIASES

if TYPE_CHECKING:
    from mafalda.remote.client import Connection

__all__ = [
    "RemoteConsumer",
    "RemoteDataConsumer",
    "RemoteDataProducer",
    "RemoteObject",
    "RemoteProducer",
    "RemoteRouter",
    "RemoteRtpObserver",
    "RemoteTransport",
    "RemoteWebRtcServer",
    "RemoteWorker",
    "adopt_app_data",
    "proxy_class",
]

logger = logging.getLogger("mafalda.remote.client")


class RemoteObject:
    """Base of the proxies: state snapshot, events, remote calls by name, local close."""

    proxy_kind: ClassVar[str] = ""
    #: The local class's name, for a proxy whose state does not tell it (a closed
    #: stand-in): the kind's base class.
    local_name: ClassVar[str] = "RemoteObject"
    #: The event the object emits when its parent closes (Node's 'transportclose'...).
    parent_close_event: ClassVar[str | None] = None
    #: The event emitted on ``events`` by ``close()`` (None: none, as Worker).
    close_event: ClassVar[str | None] = "@close"
    #: Events still delivered after the proxy was closed locally.
    late_events: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, connection: Connection, handle: str, state: dict[str, Any]) -> None:
        self._connection = connection
        self._handle = handle
        self._state: dict[str, Any] = {}
        self._closed_local = False
        self._parent: RemoteObject | None = None
        self._children: dict[str, RemoteObject] = {}
        self._app_data: dict[str, Any] = {}
        #: The id of the last request its connection had sent when the proxy was made:
        #: a late answer to a later request did not make it (see ``_close_unclaimed``).
        self._born = 0
        #: Closed as its connection was lost for good (not by a close() of the app or the
        #: server): its calls fail with RemoteConnectionError, which says more.
        self._lost = False
        self.events = EventEmitter()
        self.observer = EventEmitter()
        self._apply_state(state)
        app_data = state.get("app_data")
        self._app_data = app_data if isinstance(app_data, dict) else {}

    # -- state -----------------------------------------------------------------------------

    def _apply_state(self, state: dict[str, Any]) -> None:
        closed = self._state.get("closed", False)
        for key, value in state.items():
            if key != "app_data":
                self._state[key] = value
        if closed:
            self._state["closed"] = True

    def _link(self, parent: RemoteObject) -> None:
        if self._parent is None:
            self._parent = parent
            parent._children[self._handle] = self

    @property
    def handle(self) -> str:
        """The server's handle for this object (its reference id)."""
        return self._handle

    @property
    def connection(self) -> Connection:
        """The connection to the server this object lives on (a proxy's own: the layers
        above tell servers apart by it)."""
        return self._connection

    @property
    def parent(self) -> RemoteObject | None:
        """The proxy of the object this one was made under (a proxy's own; None for a
        worker, a Remote Mafalda's routers, and a closed stand-in)."""
        return self._parent

    @property
    def id(self) -> str:
        return str(self._state.get("id", self._handle))

    @property
    def closed(self) -> bool:
        return self._closed_local or bool(self._state.get("closed", False))

    @property
    def app_data(self) -> dict[str, Any]:
        return self._app_data

    @app_data.setter
    def app_data(self, value: dict[str, Any]) -> None:
        self._app_data = value
        if not self._connection.closed and isinstance(value, dict):
            self._connection.call_nowait(self, "set_app_data", (value,), {})

    @property
    def _class_name(self) -> str:
        """The class of the server's object (``WebRtcTransport``, ``MafaldaRouter``...)."""
        return str(self._state.get("class", self.local_name))

    def _closed_message(self) -> str:
        return f"{self._class_name} closed"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        state = self.__dict__.get("_state", {})
        if name in state:
            value = state[name]
            # As the local properties: a copy, never the snapshot itself.
            return copy.deepcopy(value) if isinstance(value, dict | list) else value
        schema = self._connection.schema(state.get("class", ""))
        if name in schema["async"]:
            return functools.partial(self._call, name)
        # A sync method is a proxy's own (each says how it is sent, what it checks here).
        raise AttributeError(f"{self._class_name!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        # Named as the local object (the proxy's own class is an implementation detail).
        return f"<{self._class_name} id={self.id} closed={self.closed}>"

    # -- events ----------------------------------------------------------------------------

    def on(self, event: str, listener: Any = None) -> Any:
        return self.events.on(event, listener)

    def once(self, event: str, listener: Any = None) -> Any:
        return self.events.once(event, listener)

    def off(self, event: str, listener: Any) -> Any:
        return self.events.off(event, listener)

    # -- calls -----------------------------------------------------------------------------

    async def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.closed and not self._lost and not self._connection.usable:
            # As the local object's (the server says so when it can be asked): closed by
            # its app or its server, not by a drop of the link, which would say more.
            raise InvalidStateError(self._closed_message())
        made = await self._connection.call(self, method, args, kwargs)
        adopt_app_data(made, kwargs)
        return made

    def _call_sync(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self.closed:
            raise InvalidStateError(self._closed_message())
        self._connection.call_nowait(self, method, args, kwargs)

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        if self.closed:
            return
        self._close_locally(self.close_event)
        self._connection.call_nowait(self, "close", (), {})

    def _close_locally(self, event: str | None, *args: Any) -> None:
        """Close here (children first, with their parent-close event), emitting ``event``
        on ``events`` and 'close' on ``observer``."""
        self._closed_local = True
        self._state["closed"] = True
        # In mediasoup's order: a transport closes its producers, then its consumers, data
        # producers and data consumers; a router its transports, then its RTP observers; a
        # worker its routers, then its WebRtcServers (each kind in creation order).
        for child in sorted(self._children.values(), key=_close_rank):
            if not child.closed:
                child._close_locally(child.parent_close_event)
        self._children.clear()
        if self._parent is not None:
            self._parent._children.pop(self._handle, None)
        self._connection._closed_here(self)
        self._emit_close(event, args)

    def _emit_close(self, event: str | None, args: tuple[Any, ...]) -> None:
        """The events of a close here: ``event`` (with ``args``), then the observer's."""
        if event is not None:
            self.events.emit(event, *args)
        self.observer.emit("close")

    def _on_event(self, emitter: EventEmitter, event: str, args: list[Any]) -> None:
        """An event of the server's object (its state applied already), emitted here."""
        emitter.emit(event, *args)

    def _connection_lost(self, error: Exception) -> None:
        if not self.closed:
            self._close_locally(self.parent_close_event)

    def _forget(self) -> None:
        """Drop the links of an object the server closed (its children's closes came
        before its own: they are gone from ``_children`` already)."""
        self._children.clear()
        if self._parent is not None:
            self._parent._children.pop(self._handle, None)

    def _open_children(self, kind: str) -> dict[str, Any]:
        return {
            child.id: child
            for child in self._children.values()
            if child.proxy_kind == kind and not child.closed
        }


#: The rank of a kind among its siblings when their parent closes (see _close_locally).
_CLOSE_RANKS = {
    "webrtcserver": 1,
    "rtpobserver": 1,
    "consumer": 1,
    "dataproducer": 2,
    "dataconsumer": 3,
}


def _close_rank(child: RemoteObject) -> int:
    return _CLOSE_RANKS.get(child.proxy_kind, 0)


def adopt_app_data(made: Any, kwargs: dict[str, Any]) -> None:
    """A local object made with ``app_data=`` keeps the caller's dict itself (changes to it
    are the object's, as mediasoup's): so does a proxy whose app_data came back equal
    (else the server changed it, or the wire did, as a tuple made a list)."""
    app_data = kwargs.get("app_data")
    if isinstance(made, RemoteObject) and isinstance(app_data, dict) and made.app_data == app_data:
        made._app_data = app_data


def _status(value: Any) -> tuple[int | None, int | None] | None:
    """A worker's (exit code, signal) as the local one gives it (JSON made it a list)."""
    return (value[0], value[1]) if isinstance(value, list | tuple) and len(value) == 2 else None


class RemoteWorker(RemoteObject):
    """A mediasoup Worker on the server (``pid`` is the server's process id)."""

    proxy_kind = "worker"
    local_name = "Worker"
    close_event = None
    late_events = frozenset({"subprocessclose", "died"})

    @property
    def id(self) -> str:
        return self._handle

    def _connection_lost(self, error: Exception) -> None:
        if self.closed:
            return
        self._state["died"] = True
        self._state["subprocess_closed"] = True
        self._close_locally("died", error)

    def _emit_close(self, event: str | None, args: tuple[Any, ...]) -> None:
        if event == "died":  # as a local worker's death: 'subprocessclose' before 'close'
            self.events.emit("died", *args)
            self.events.emit("subprocessclose")
            self.observer.emit("close")
        else:
            super()._emit_close(event, args)

    @property
    def exit_status(self) -> tuple[int | None, int | None] | None:
        return _status(self._state.get("exit_status"))

    async def wait_closed(self) -> tuple[int | None, int | None] | None:
        """As the local worker's: until the process exited, (exit code, signal). Once
        the worker is closed the server has forgotten it: its exit comes here as the
        late 'subprocessclose' event (with the status in its state); None when the
        connection went first and the status is unknown."""
        if not self.closed:
            try:
                return _status(await self._call("wait_closed"))
            except InvalidStateError:
                # It died as this was asked: its events came before this answer.
                if not self.closed:
                    raise
        if not self._state.get("subprocess_closed") and not self._connection.closed:
            exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def on_exit(*args: Any) -> None:
                if not exited.done():
                    exited.set_result(None)

            self.events.on("subprocessclose", on_exit)
            self._connection.events.on("close", on_exit)
            try:
                await exited
            finally:
                self.events.off("subprocessclose", on_exit)
                self._connection.events.off("close", on_exit)
        return self.exit_status

    async def __aenter__(self) -> RemoteWorker:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


class RemoteWebRtcServer(RemoteObject):
    """A WebRtcServer (or a MafaldaWebRtcServer). As mediasoup's, it emits
    'webrtctransportunhandled' as one of its transports closes (before the transport's
    'routerclose' or '@close' listeners run), and its close() closes them first
    ('listenserverclose'): it knows them from its 'webrtctransporthandled' events."""

    proxy_kind = "webrtcserver"
    local_name = "WebRtcServer"
    parent_close_event = "workerclose"

    def __init__(self, connection: Connection, handle: str, state: dict[str, Any]) -> None:
        super().__init__(connection, handle, state)
        #: Its open transports (each one's ``_listen_server`` is this server).
        self._transports: dict[str, RemoteTransport] = {}
        #: Transports whose 'webrtctransportunhandled' was emitted here as they closed:
        #: the server's own, which follows, is dropped.
        self._told: set[str] = set()

    def _on_event(self, emitter: EventEmitter, event: str, args: list[Any]) -> None:
        transport = args[0] if args and isinstance(args[0], RemoteTransport) else None
        if emitter is self.observer and transport is not None:
            if event == "webrtctransporthandled":
                self._transports[transport.handle] = transport
                transport._listen_server = self
            elif transport.handle in self._told:  # 'webrtctransportunhandled', emitted here
                self._told.discard(transport.handle)
                return
            else:  # 'webrtctransportunhandled' of a transport closed otherwise (its server's)
                self._transports.pop(transport.handle, None)
                transport._listen_server = None
        super()._on_event(emitter, event, args)

    def _unhandle(self, transport: RemoteTransport) -> None:
        """``transport`` (one of its own) closes: 'webrtctransportunhandled' now."""
        transport._listen_server = None
        self._transports.pop(transport.handle, None)
        self._told.add(transport.handle)
        self.observer.emit("webrtctransportunhandled", transport)

    def _release(self) -> list[RemoteTransport]:
        transports = list(self._transports.values())
        for transport in transports:
            transport._listen_server = None
        self._transports.clear()
        self._told.clear()  # closed: no more of its events come
        return transports

    def _emit_close(self, event: str | None, args: tuple[Any, ...]) -> None:
        transports = self._release()
        if event == "@close":  # close(): its transports close first, as mediasoup's do
            for transport in transports:
                transport._close_locally("listenserverclose")
                self.observer.emit("webrtctransportunhandled", transport)
        super()._emit_close(event, args)

    def _forget(self) -> None:
        self._release()
        super()._forget()


class RemoteRouter(RemoteObject):
    """A Router (or a MafaldaRouter) on the server."""

    proxy_kind = "router"
    local_name = "Router"
    parent_close_event = "workerclose"

    def _closed_message(self) -> str:
        return "Router closed"

    @property
    def transports_for_testing(self) -> dict[str, Any]:
        return self._open_children("transport")

    def __init__(self, connection: Connection, handle: str, state: dict[str, Any]) -> None:
        #: Aliases made here that the server's state has not told of yet: (table, key)
        #: -> (data) producer. A state sent before the call reached the server lacks them.
        self._made: dict[tuple[str, str], RemoteObject] = {}
        super().__init__(connection, handle, state)

    def _apply_state(self, state: dict[str, Any]) -> None:
        super()._apply_state(state)
        told = state.get(ALIASES)
        if isinstance(told, dict):
            self._made = {
                (table, key): source
                for (table, key), source in self._made.items()
                if key not in told.get(table, {})
            }

    # -- as the Router's: answered here (the router's ids and aliases are in its state) -----

    def _source(self, key: Any, table: str) -> RemoteObject | None:
        """The open (data) producer ``consume(producer_id=key)`` finds in this router: one
        under its transports by its own id, else one known by ``key`` on the server (an
        alias: made here, or there, as a swarm's; a Mafalda router's piped copy)."""
        if self.closed:
            return None
        kind = "producer" if table == "producers" else "dataproducer"
        for transport in self._children.values():
            for child in transport._children.values():
                if child.proxy_kind == kind and child.id == key and not child.closed:
                    return child
        source = self._made.get((table, key))
        if source is None:
            handle = self._state.get(ALIASES, {}).get(table, {}).get(key)
            source = self._connection.proxies.get(handle)
        return None if source is None or source.closed else source

    def has_producer(self, producer_id: str) -> bool:
        """Whether consume(producer_id=...) finds it in this router (aliases included)."""
        return self._source(producer_id, "producers") is not None

    def has_data_producer(self, data_producer_id: str) -> bool:
        """As has_producer(), for consume_data()."""
        return self._source(data_producer_id, "dataProducers") is not None

    def alias_producer(self, key: str, producer: Any) -> None:
        """As the Router's: checked here (the same errors, before anything is sent)."""
        self._alias(key, producer, "producers", "Producer", "alias_producer")

    def alias_data_producer(self, key: str, data_producer: Any) -> None:
        """As alias_producer(), for a data producer."""
        self._alias(key, data_producer, "dataProducers", "DataProducer", "alias_data_producer")

    def _alias(self, key: str, source: Any, table: str, kind: str, method: str) -> None:
        if self.closed:
            raise InvalidStateError(self._closed_message())
        if not isinstance(key, str) or not key:
            raise TypeError("key must be a non-empty string")
        source_id = getattr(source, "id", "")
        # A Mafalda router refuses with a ValueError, and any key it has already.
        mafalda = self._state.get("class") == "MafaldaRouter"
        found = self._source(source_id, table)
        if found is None or found is not source:
            error = ValueError if mafalda else InvalidValueError
            raise error(f"{kind} {source_id or source!r} is not of this router")
        held = self._source(key, table)
        if held is found and not mafalda:
            return  # one alias, however often it is asked for
        if held is not None and (mafalda or held.id == key):
            raise TypeError(f'a {kind} with same id "{key}" already exists')
        self._made[(table, key)] = found
        self._connection.call_nowait(self, method, (key, found), {})

    def can_consume(self, *, producer_id: str, rtp_capabilities: Any) -> bool:
        """Answered here, from the producer's consumable RTP parameters (as the Router)."""
        producer = self._source(producer_id, "producers")
        consumable = None if producer is None else producer._state["consumable_rtp_parameters"]
        return answer_can_consume(producer_id, consumable, rtp_capabilities, logger)

    def update_media_codecs(self, media_codecs: list[Any]) -> None:
        if self.closed:
            raise InvalidStateError(self._closed_message())
        capabilities = ortc.generate_router_rtp_capabilities(copy.deepcopy(media_codecs))
        self._state["rtp_capabilities"] = capabilities
        self._connection.call_nowait(self, "update_media_codecs", (media_codecs,), {})


class RemoteTransport(RemoteObject):
    """Any transport (WebRtc, Plain, Pipe, Direct): its type's properties come with its
    state (``ice_parameters``, ``tuple``...)."""

    proxy_kind = "transport"
    local_name = "Transport"
    parent_close_event = "routerclose"
    #: The WebRtcServer it listens through (told of its close, see RemoteWebRtcServer).
    _listen_server: RemoteWebRtcServer | None = None

    @property
    def producers(self) -> dict[str, Any]:
        return self._open_children("producer")

    def _close_locally(self, event: str | None, *args: Any) -> None:
        # As the local transports do when closing.
        if self._state.get("class") == "WebRtcTransport":
            self._state.update(ice_state="closed", ice_selected_tuple=None, dtls_state="closed")
        if self._state.get("sctp_state"):
            self._state["sctp_state"] = "closed"
        super()._close_locally(event, *args)

    def _emit_close(self, event: str | None, args: tuple[Any, ...]) -> None:
        self._tell_listen_server(event)
        super()._emit_close(event, args)

    def _on_event(self, emitter: EventEmitter, event: str, args: list[Any]) -> None:
        if emitter is self.events:
            self._tell_listen_server(event)
        super()._on_event(emitter, event, args)

    def _tell_listen_server(self, event: str | None) -> None:
        # mediasoup's WebRtcServer listens to these two (before the app's listeners).
        if event in ("@close", "routerclose") and self._listen_server is not None:
            self._listen_server._unhandle(self)

    @property
    def send_rtcp(self) -> Callable[[bytes], None]:
        """DirectTransport only, as in mediasoup: the other transports have no such
        attribute (AttributeError, ``hasattr()`` False), where a call would be refused."""
        if "send_rtcp" not in self._connection.schema(self._state.get("class", ""))["sync"]:
            raise AttributeError(f"{self._state.get('class')} has no attribute 'send_rtcp'")
        return self._send_rtcp

    def _send_rtcp(self, rtcp_packet: bytes) -> None:
        """Send an RTCP packet into the router (fire-and-forget)."""
        if self.closed:
            raise InvalidStateError(self._closed_message())
        if not isinstance(rtcp_packet, bytes | bytearray | memoryview):
            raise TypeError("rtcp_packet must be bytes")
        self._call_sync("send_rtcp", bytes(rtcp_packet))

    @property
    def consumers(self) -> dict[str, Any]:
        return self._open_children("consumer")

    @property
    def data_producers(self) -> dict[str, Any]:
        return self._open_children("dataproducer")

    @property
    def data_consumers(self) -> dict[str, Any]:
        return self._open_children("dataconsumer")


class RemoteProducer(RemoteObject):
    proxy_kind = "producer"
    local_name = "Producer"
    parent_close_event = "transportclose"

    def send(self, rtp_packet: bytes | bytearray | memoryview) -> None:
        """Send an RTP packet (DirectTransport producers; fire-and-forget)."""
        if not isinstance(rtp_packet, bytes | bytearray | memoryview):
            raise TypeError("rtp_packet must be bytes")
        self._call_sync("send", bytes(rtp_packet))


class RemoteConsumer(RemoteObject):
    proxy_kind = "consumer"
    local_name = "Consumer"
    parent_close_event = "transportclose"


class RemoteDataProducer(RemoteObject):
    proxy_kind = "dataproducer"
    local_name = "DataProducer"
    parent_close_event = "transportclose"

    def send(
        self,
        message: str | bytes | bytearray | memoryview,
        ppid: int | None = None,
        subchannels: list[int] | None = None,
        required_subchannel: int | None = None,
    ) -> None:
        """Send a message (fire-and-forget), validated here as the local DataProducer does."""
        if self.closed:
            raise InvalidStateError(self._closed_message())
        payload, ppid = resolve_message_ppid(message, ppid)
        channels = None if subchannels is None else validate_subchannels(subchannels)
        if required_subchannel is not None:
            validate_subchannel(required_subchannel, "required_subchannel")
        self._call_sync(
            "send",
            message if isinstance(message, str) else payload,
            ppid,
            channels,
            required_subchannel,
        )


class RemoteDataConsumer(RemoteObject):
    proxy_kind = "dataconsumer"
    local_name = "DataConsumer"
    parent_close_event = "transportclose"


class RemoteRtpObserver(RemoteObject):
    proxy_kind = "rtpobserver"
    local_name = "RtpObserver"
    parent_close_event = "routerclose"


_CLASSES: dict[str, type[RemoteObject]] = {
    cls.proxy_kind: cls
    for cls in (
        RemoteWorker,
        RemoteWebRtcServer,
        RemoteRouter,
        RemoteTransport,
        RemoteProducer,
        RemoteConsumer,
        RemoteDataProducer,
        RemoteDataConsumer,
        RemoteRtpObserver,
    )
}


def proxy_class(kind: str) -> type[RemoteObject]:
    return _CLASSES.get(kind, RemoteObject)
