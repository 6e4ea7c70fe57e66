"""WebRtcServer: shared UDP/TCP sockets for many WebRtcTransports of a worker."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, TypedDict

from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Worker.CloseWebRtcServerRequest import CloseWebRtcServerRequestT
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.transport import ListenInfo

if TYPE_CHECKING:
    from mafalda.mediasoup.webrtc_transport import WebRtcTransport

__all__ = [
    "IceUserNameFragment",
    "IpPort",
    "TupleHash",
    "WebRtcServer",
    "WebRtcServerDump",
    "WebRtcServerListenInfo",
    "parse_webrtc_server_dump",
]

logger = logging.getLogger("mafalda.mediasoup.webrtc_server")

#: Deprecated alias kept as mediasoup does.
WebRtcServerListenInfo = ListenInfo


class IpPort(TypedDict):
    ip: str
    port: int


class IceUserNameFragment(TypedDict):
    localIceUsernameFragment: str
    webRtcTransportId: str


class TupleHash(TypedDict):
    tupleHash: int
    webRtcTransportId: str


class WebRtcServerDump(TypedDict):
    id: str
    udpSockets: list[IpPort]
    tcpServers: list[IpPort]
    webRtcTransportIds: list[str]
    localIceUsernameFragments: list[IceUserNameFragment]
    tupleHashes: list[TupleHash]


def parse_webrtc_server_dump(body: Any) -> WebRtcServerDump:
    """A WebRtcServer dump from a ``WebRtcServer.DumpResponseT``."""
    return {
        "id": body.id,
        "udpSockets": [{"ip": s.ip, "port": s.port} for s in body.udpSockets or []],
        "tcpServers": [{"ip": s.ip, "port": s.port} for s in body.tcpServers or []],
        "webRtcTransportIds": list(body.webRtcTransportIds or []),
        "localIceUsernameFragments": [
            {
                "localIceUsernameFragment": f.localIceUsernameFragment,
                "webRtcTransportId": f.webRtcTransportId,
            }
            for f in body.localIceUsernameFragments or []
        ],
        "tupleHashes": [
            {"tupleHash": int(h.tupleHash), "webRtcTransportId": h.webRtcTransportId}
            for h in body.tupleHashes or []
        ],
    }


class WebRtcServer(EventSource):
    """Listening sockets shared by WebRtcTransports. Create with
    ``Worker.create_webrtc_server()``.

    Events: ``workerclose`` (and the private ``@close``). Observer events: ``close``,
    ``webrtctransporthandled`` (transport), ``webrtctransportunhandled`` (transport).
    """

    def __init__(
        self, *, webrtc_server_id: str, channel: Channel, app_data: dict[str, Any] | None
    ) -> None:
        self._id = webrtc_server_id
        self._channel = channel
        self._closed = False
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._webrtc_transports: dict[str, WebRtcTransport] = {}
        self.events = EventEmitter()
        self.observer = EventEmitter()

    # -- properties ------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def webrtc_transports_for_testing(self) -> dict[str, WebRtcTransport]:
        return self._webrtc_transports

    def __repr__(self) -> str:
        return f"<WebRtcServer id={self._id} closed={self._closed}>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("WebRtcServer closed")

    # -- closing ---------------------------------------------------------------------

    def close(self) -> None:
        """Close the server; the WebRtcTransports using it close too
        (``listenserverclose``)."""
        if self._closed:
            return
        self._closed = True
        request = CloseWebRtcServerRequestT()
        request.webRtcServerId = self._id
        self._channel.request_nowait(Method.WORKER_WEBRTCSERVER_CLOSE, "", request)
        transports = list(self._webrtc_transports.values())
        self._webrtc_transports.clear()
        for transport in transports:
            transport.listen_server_closed()
            self.observer.emit("webrtctransportunhandled", transport)
        self.events.emit("@close")
        self.observer.emit("close")

    def worker_closed(self) -> None:
        """The worker closed: the transports are closed by their routers."""
        if self._closed:
            return
        self._closed = True
        self._webrtc_transports.clear()
        self.events.emit("workerclose")
        self.observer.emit("close")

    # -- requests --------------------------------------------------------------------

    async def dump(self) -> WebRtcServerDump:
        self._check_open()
        body = await self._channel.request(Method.WEBRTCSERVER_DUMP, self._id)
        return parse_webrtc_server_dump(body)

    # -- transports ------------------------------------------------------------------

    def handle_webrtc_transport(self, transport: WebRtcTransport) -> None:
        """Track a WebRtcTransport created on this server (called by the Router)."""
        self._webrtc_transports[transport.id] = transport
        self.observer.emit("webrtctransporthandled", transport)

        def on_gone() -> None:
            # Tracked still: a transport emits one of these two once, and what else
            # forgets it (close(), worker_closed()) closes it otherwise or after its router.
            del self._webrtc_transports[transport.id]
            self.observer.emit("webrtctransportunhandled", transport)

        transport.events.on("@close", on_gone)
        # Also when its router closes (Node keeps tracking such a transport).
        transport.events.on("routerclose", on_gone)
