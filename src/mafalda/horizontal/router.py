"""ClusterRouter: mediasoup's Router API over the media servers of a cluster.

    router = await cluster.create_router(media_codecs=[...])
    transport = await router.create_webrtc_transport(listen_infos=[...])   # placed by load
    consumer = await transport.consume(producer_id=..., rtp_capabilities=...)

Each transport goes to a server chosen by the cluster's policy (or the one named with
``server=``), where the router has a child Router on this client's worker for that
server. Consuming a producer that lives on another server pipes it there first, from
the producer's server: one copy per (producer, server) shared by every consumer there
(a tree rooted at the producer's server, never a full mesh of copies), one PipeTransport
pair per server pair, both closed when unused (SpanningRouter's bookkeeping). What the
router returns are mafalda.remote proxies, except transports and RTP observers, which
are thin wrappers whose consume() / consume_data() / add_producer() pipe first.

A server that dies takes its transports, producers and consumers with it (their close
events fire, copies of its producers on other servers close, so their consumers see
'producerclose'); the router keeps working on the servers that remain.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.router import Router, validate_listen_choice
from mafalda.mediasoup.transport import validate_listen_info, validate_listen_infos
from mafalda.remote import RemoteConnectionError, RemoteError, ServerDrainingError
from mafalda.remote.protocol import RATE_LIMITED
from mafalda.remote.proxy import RemoteDataProducer
from mafalda.vertical.spanning import SpanningRouter

if TYPE_CHECKING:
    from mafalda.horizontal.cluster import Cluster
    from mafalda.horizontal.webrtc_server import ClusterWebRtcServer

__all__ = ["ClusterRouter", "ClusterRtpObserver", "ClusterTransport"]

_ANY_ADDRESS = ("0.0.0.0", "::")
#: Stands for the media address, unknown until a server is chosen, when listen infos
#: are validated: any IP address validates the same way.
_SOME_ADDRESS = "192.0.2.1"


logger = logging.getLogger("mafalda.horizontal.router")

_T = TypeVar("_T")


def refused_by_server(error: BaseException) -> bool:
    """True for an error that says the server cannot take the call now (unreachable,
    draining before this client saw its record say so, or at one of its limits:
    sessions, workers per session...), so that the next candidate should be tried;
    False for an error of the call itself."""
    if isinstance(error, ServerDrainingError):
        return True
    if isinstance(error, RemoteError):
        return error.code == RATE_LIMITED
    return isinstance(error, RemoteConnectionError | OSError | TimeoutError)


def _made_open(made: _T) -> _T:
    """``made`` (a transport or an RTP observer a child router just made), unless it came
    closed as its server's link closed for good (the server left): RemoteConnectionError,
    as for a call the link's end cut off, so that a placed call tries another server.
    (Closed otherwise, its router there closed meanwhile: SpanningRouter refuses it.)"""
    proxy: Any = made
    if proxy.closed and proxy.connection.closed:
        raise RemoteConnectionError("remote connection closed")
    return made


class _Wrapper:
    """Delegates every attribute to a remote proxy, except what the subclass defines."""

    __slots__ = ("_proxy", "_router", "_server_id")
    _proxy: Any
    _router: ClusterRouter
    _server_id: str

    def __init__(self, router: ClusterRouter, server_id: str, proxy: Any) -> None:
        object.__setattr__(self, "_proxy", proxy)
        object.__setattr__(self, "_router", router)
        object.__setattr__(self, "_server_id", server_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._proxy, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._proxy, name, value)

    @property
    def server_id(self) -> str:
        """The media server this object lives on."""
        return self._server_id

    @property
    def proxy(self) -> Any:
        """The mafalda.remote proxy behind this wrapper."""
        return self._proxy

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._proxy!r} server={self._server_id}>"


class ClusterTransport(_Wrapper):
    """A transport of a ClusterRouter (any type: its properties are the proxy's)."""

    __slots__ = ()

    async def produce(self, **options: Any) -> Any:
        return await self._produce("produce", "Producer", options)

    async def produce_data(self, **options: Any) -> Any:
        return await self._produce("produce_data", "DataProducer", options)

    async def _produce(self, method: str, kind: str, options: dict[str, Any]) -> Any:
        # One router, one id space: an id it has on any server (or is making) is refused,
        # as a Router's worker refuses it, before anything is sent.
        source_id = options.get("id")
        if source_id is None:
            return await getattr(self._proxy, method)(**options)
        with self._router._making(source_id, kind):
            return await getattr(self._proxy, method)(**options)

    async def consume(self, **options: Any) -> Any:
        async with self._router._pipe_guard(
            _source(options, "producer_id"), self._server_id, False
        ):
            return await self._proxy.consume(**options)

    async def consume_data(self, **options: Any) -> Any:
        source = _source(options, "data_producer_id")
        async with self._router._pipe_guard(source, self._server_id, True):
            return await self._proxy.consume_data(**options)


class ClusterRtpObserver(_Wrapper):
    """An RTP observer of a ClusterRouter: add_producer() brings the producer to it."""

    __slots__ = ()

    async def add_producer(self, **options: Any) -> None:
        async with self._router._pipe_guard(
            _source(options, "producer_id"), self._server_id, False
        ):
            await self._proxy.add_producer(**options)


def _announce(value: Any, address: str) -> Any:
    """Listen info(s) with the server's media address filled in: as the address to
    listen on where they name none, announced where they listen on all interfaces and
    announce nothing (anything else is left for validation)."""
    if isinstance(value, list):
        return [_announce(info, address) for info in value]
    if isinstance(value, dict) and "ip" not in value:
        return {**value, "ip": address}
    if (
        isinstance(value, dict)
        and value.get("ip") in _ANY_ADDRESS
        and not value.get("announcedAddress")
        and not value.get("announcedIp")
    ):
        return {**value, "announcedAddress": address}
    return value


@functools.cache
def _signature(method: str) -> inspect.Signature:
    return inspect.signature(getattr(Router, method))


def check_create_options(method: str, options: dict[str, Any]) -> None:
    """What a server's Router would refuse of these options (unknown names, listen
    infos), refused before a child router, and a worker for it, is made on a server."""
    try:
        _signature(method).bind(None, **options)
    except TypeError as error:
        raise TypeError(f"{method}() {error}") from None
    if "listen_infos" in options:
        validate_listen_infos(_announce(options["listen_infos"], _SOME_ADDRESS))
    if "listen_info" in options:
        validate_listen_info(_announce(options["listen_info"], _SOME_ADDRESS))


def _source(options: dict[str, Any], key: str) -> str:
    """The (data) producer id a call names; a wrong one is the proxy's to reject."""
    value = options.get(key)
    return value if isinstance(value, str) else ""


class ClusterRouter(SpanningRouter[str]):
    """A Router spanning the media servers of a cluster. Create with Cluster.create_router()."""

    def __init__(
        self,
        *,
        cluster: Cluster,
        media_codecs: Any,
        app_data: dict[str, Any] | None,
    ) -> None:
        super().__init__(media_codecs=media_codecs, app_data=app_data)
        self._cluster = cluster

    # -- SpanningRouter's hooks ----------------------------------------------------------

    async def _create_child(self, host: str) -> Any:
        # Run as the child's making (made_once's task): once it is over (its future
        # dropped: that callback came first), a child not kept (one that failed to be
        # made, or went at once) leaves its worker to be released. A release asked while
        # it was under way (the last child there went) found the worker in use, and at
        # once on a draining server: nobody would ask again.
        making = asyncio.current_task()
        assert making is not None
        making.add_done_callback(lambda _: self._making_over(host))
        return await super()._create_child(host)

    def _making_over(self, host: str) -> None:
        if host not in self._children:
            self._cluster.release_router_worker(host)

    async def _new_child(self, host: str) -> Any:
        return await self._cluster.child_router(
            host,
            media_codecs=copy.deepcopy(self._media_codecs),
            app_data={"clusterRouterId": self._id},
        )

    def _pair_transports(
        self, home: str, dst: str, child_home: Any, child_dst: Any
    ) -> tuple[Awaitable[Any], Awaitable[Any]]:
        a, b = self._cluster.media_address(home), self._cluster.media_address(dst)
        options = {
            "enable_rtx": True,
            "enable_sctp": True,
            "enable_srtp": self._cluster.srtp_between(a, b),
        }
        return (
            self._cluster._own_pipe_transport(child_home, a, **options),
            self._cluster._own_pipe_transport(child_dst, b, **options),
        )

    def _lost(self, host: str) -> bool:
        return self._cluster.server_lost(host)

    def _child_gone(self, host: str) -> None:
        self._cluster.release_router_worker(host)

    def _claim_id(self, host: str, source_id: str) -> contextlib.AbstractContextManager[bool]:
        return contextlib.nullcontext(not self._hosts_source(host, source_id))

    def _hosts_source(self, host: str, source_id: str) -> bool:
        # On a mediasoup server every cluster router's child lives on this client's one
        # worker there, where ids are unique: another router (a breakout room fed by
        # pipe_to_router) may have piped a copy there under that id already. A Mafalda
        # server's pool places its routers itself, on workers this client does not see:
        # a copy there always takes its own id, and its router an alias.
        if self._cluster.serves(host) != "mediasoup":
            return True
        return any(
            router._holds(host, source_id, opening=router is self)
            for router in self._cluster.routers
        )

    def _holds(self, host: str, source_id: str, *, opening: bool) -> bool:
        """Whether this router has, or may be about to have, a pipe copy with this very
        id on ``host`` (``opening``: its own pipe there is the one asking). Originals
        need no look: every router's (data) producer by that id, and pipe_to_router's
        copies of it, live on its home, which a pipe never goes to."""
        for pipe in self._pipes.values():
            if pipe.dst != host or pipe.closed:
                continue
            if pipe.producer is not None:
                if pipe.producer.id == source_id:
                    return True
            elif not opening and pipe.key[1] == source_id:
                return True  # still opening: it may take the id
        return False

    def has_child_on(self, server_id: str) -> bool:
        """Whether this router has (or is creating) a child router on a server."""
        return server_id in self._children or server_id in self._child_futures

    # -- properties ----------------------------------------------------------------------

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def transports_for_testing(self) -> dict[str, ClusterTransport]:
        return dict(self._transports)

    @property
    def servers(self) -> list[str]:
        """The servers this router has a child on now."""
        return sorted(self._children)

    def transports_on(self, server_id: str) -> list[str]:
        """Ids of this router's transports on a server."""
        return [t for t, h in self._transport_host.items() if h == server_id]

    def making_on(self, server_id: str) -> int:
        """Transports and observers of this router being made on a server."""
        return self._busy_hosts.get(server_id, 0)

    def server_of(self, obj: Any) -> str:
        """The server hosting a transport, an RTP observer, a producer or a data producer."""
        oid = obj.id
        if isinstance(obj, ClusterTransport | ClusterRtpObserver):
            return obj.server_id
        home = self._home.get((oid, isinstance(obj, RemoteDataProducer)))
        if home is not None:
            return home
        raise ValueError(f"{type(obj).__name__} {oid} is not on this router")

    def __repr__(self) -> str:
        return f"<ClusterRouter id={self._id} servers={self.servers} closed={self._closed}>"

    # -- transports and observers --------------------------------------------------------

    async def _made_on(self, server: str | None, make: Callable[[str, Any], Awaitable[_T]]) -> _T:
        """``make(server, child router)`` on ``server``, or where the policy says, the
        child kept (not idle) until it is done. Unpinned, what a server refuses (its child
        router or ``make`` itself: draining before its record said so, at a limit, gone)
        is made on the next server."""
        self._check_open()
        if server is not None:
            self._cluster.check_placeable(server)
            with self._busy(server):
                child = await self._child(server)
                self._check_open()
                return await make(server, child)
        refused: set[str] = set()
        while True:
            server = self._cluster.place(exclude=refused)  # ClusterError when none is left
            with self._busy(server):
                try:
                    child = await self._child(server)
                    self._check_open()
                    return await make(server, child)
                except Exception as error:
                    if not refused_by_server(error):
                        raise
                    logger.warning("server %s refused: %s", server, error)
                    refused.add(server)

    async def _create(
        self,
        method: str,
        server: str | None,
        options: dict[str, Any],
        webrtc_server: ClusterWebRtcServer | None = None,
    ) -> ClusterTransport:
        check_create_options(method, options)

        async def make(host: str, child: Any) -> tuple[ClusterTransport, Any]:
            placed = dict(options)  # announced for this host (another may come next)
            address = self._cluster.media_address(host)
            for key in ("listen_infos", "listen_info"):
                if key in placed:
                    placed[key] = _announce(placed[key], address)
            if webrtc_server is not None:
                placed["webrtc_server"] = await webrtc_server.on_host(host)
                self._check_open()
            transport = _made_open(await getattr(child, method)(**placed))
            wrapper = ClusterTransport(self, host, transport)
            self._adopt(host, transport, wrapper)
            return wrapper, transport

        wrapper, transport = await self._made_on(server, make)
        if webrtc_server is not None:
            webrtc_server.handle_webrtc_transport(wrapper, transport)
        return wrapper

    async def create_webrtc_transport(
        self,
        *,
        server: str | None = None,
        webrtc_server: ClusterWebRtcServer | None = None,
        **options: Any,
    ) -> ClusterTransport:
        """As mediasoup's, on ``server`` or where the policy says. A listen info without
        an ``ip`` listens on the server's media address; one on all interfaces (0.0.0.0
        or ::) without an announced address announces it (behind NAT): the caller need
        not know which server it is. ``webrtc_server``: a ClusterWebRtcServer of this
        cluster, whose WebRtcServer on the chosen server (made there if it is the first
        transport to need it) the transport listens through."""
        # Imported here: that module imports this one (for _announce).
        from mafalda.horizontal.webrtc_server import ClusterWebRtcServer

        self._check_open()
        listen_infos, listen_ips = options.get("listen_infos"), options.get("listen_ips")
        validate_listen_choice(webrtc_server, listen_infos, listen_ips)
        if webrtc_server is not None:
            if not isinstance(webrtc_server, ClusterWebRtcServer):
                raise TypeError("webrtc_server must be a ClusterWebRtcServer")
            webrtc_server._check_usable_by(self._cluster)
        return await self._create("create_webrtc_transport", server, options, webrtc_server)

    async def create_plain_transport(
        self, *, server: str | None = None, **options: Any
    ) -> ClusterTransport:
        return await self._create("create_plain_transport", server, options)

    async def create_pipe_transport(
        self, *, server: str | None = None, **options: Any
    ) -> ClusterTransport:
        return await self._create("create_pipe_transport", server, options)

    async def create_direct_transport(
        self, *, server: str | None = None, **options: Any
    ) -> ClusterTransport:
        return await self._create("create_direct_transport", server, options)

    async def _create_observer(
        self, method: str, server: str | None, options: dict[str, Any]
    ) -> ClusterRtpObserver:
        check_create_options(method, options)

        async def make(host: str, child: Any) -> ClusterRtpObserver:
            rtp_observer = _made_open(await getattr(child, method)(**options))
            wrapper = ClusterRtpObserver(self, host, rtp_observer)
            self._adopt_observer(host, rtp_observer, wrapper)
            return wrapper

        return await self._made_on(server, make)

    async def create_active_speaker_observer(
        self, *, server: str | None = None, **options: Any
    ) -> ClusterRtpObserver:
        return await self._create_observer("create_active_speaker_observer", server, options)

    async def create_audio_level_observer(
        self, *, server: str | None = None, **options: Any
    ) -> ClusterRtpObserver:
        return await self._create_observer("create_audio_level_observer", server, options)

    async def pipe_to_router(
        self,
        *,
        router: ClusterRouter,
        producer_id: str | None = None,
        data_producer_id: str | None = None,
        **options: Any,
    ) -> Any:
        """As mediasoup's, into another ClusterRouter of the same cluster: the copy is
        made on the (data) producer's server, so no media crosses servers for it; from
        there the target router pipes it wherever its consumers are."""
        source_id, home = self._pipe_source(router, producer_id, data_producer_id)
        if not isinstance(router, ClusterRouter) or router.cluster is not self._cluster:
            raise TypeError("router must be a ClusterRouter of the same cluster")
        if router.closed:
            raise InvalidStateError("destination Router closed")
        with router._making(source_id, "Producer" if producer_id else "DataProducer"):
            return await self._pipe_in(router, source_id, home, producer_id, options)

    async def _pipe_in(
        self,
        router: ClusterRouter,
        source_id: str,
        home: str,
        producer_id: str | None,
        options: dict[str, Any],
    ) -> Any:
        data_producer_id = None if producer_id else source_id
        # The target's child there is held until the copy is adopted, as a transport
        # being made holds its child: the target's last transport there closing meanwhile
        # closed it under the pipe ("destination Router closed"). A pipe that fails leaves
        # it to go if idle.
        with router._busy(home):
            source, target = await asyncio.gather(self._child(home), router._child(home))
            one_worker = self._cluster.serves(home) == "mediasoup"
            if one_worker:
                # Both children live on this client's worker there, and ids are unique per
                # worker: the copy gets its own id, and the target child knows it by ours.
                options["keep_id"] = False
            result = await source.pipe_to_router(
                router=target, producer_id=producer_id, data_producer_id=data_producer_id, **options
            )
            if producer_id:
                piped = result["pipeProducer"]
                if one_worker and piped.id != source_id:
                    target.alias_producer(source_id, piped)
                router._adopt_producer(home, piped, source_id)
            else:
                piped = result["pipeDataProducer"]
                if one_worker and piped.id != source_id:
                    target.alias_data_producer(source_id, piped)
                router._adopt_data_producer(home, piped, source_id)
        return result

    # -- visibility ----------------------------------------------------------------------

    def cluster_dump(self) -> dict[str, Any]:
        """The router's view for the monitor: children per server, pipes between servers."""
        servers: dict[str, Any] = {}
        for server_id, child in self._children.items():
            servers[server_id] = {
                "routerId": child.id,
                "transports": sum(1 for h in self._transport_host.values() if h == server_id),
                "producers": self._producer_count(server_id),
                "rtpObservers": sum(1 for h in self._observer_host.values() if h == server_id),
            }
        return {
            "id": self._id,
            "servers": servers,
            "pipes": [
                {
                    "id": pipe.key[1],
                    "kind": "data" if pipe.data else "media",
                    "from": pipe.home,
                    "to": pipe.dst,
                    "users": len(pipe.users),
                }
                for pipe in self._pipes.values()
                if not pipe.closed
            ],
            "pipeTransportPairs": [
                {
                    "servers": sorted(key),
                    "srtp": any(
                        getattr(t, "srtp_parameters", None) for t in pair.transports.values()
                    ),
                }
                for key, pair in self._pairs.items()
                if not pair.closed
            ],
        }

    def cluster_closed(self) -> None:
        """Called by the Cluster when it closes (mediasoup's worker_closed)."""
        if self._closed:
            return
        self._close_all()
        self.events.emit("workerclose")
        self.observer.emit("close")
