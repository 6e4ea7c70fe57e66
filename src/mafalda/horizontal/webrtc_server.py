"""ClusterWebRtcServer: one WebRtcServer for a cluster's WebRtcTransports, on every server.

    webrtc_server = await cluster.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "port": 44444}, {"protocol": "tcp", "port": 44444}])
    transport = await router.create_webrtc_transport(webrtc_server=webrtc_server)

Nothing is created when it is made: the first transport that needs it on a server
creates a real WebRtcServer there, on the worker of that server's cluster router
children (a transport and its WebRtcServer must share a worker), with the listen infos
completed as a ClusterRouter's transports' are (no ``ip``: the server's media address;
0.0.0.0 or ::: announcing it). So a port given here is that port on every server used.
A realization that closes (its worker released idle, its server gone) is forgotten and
made again by the next transport there.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from typing import TYPE_CHECKING, Any

from mafalda.horizontal.router import _announce
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, UnsupportedError
from mafalda.mediasoup.transport import validate_listen_infos
from mafalda.mediasoup.worker import validate_app_data

if TYPE_CHECKING:
    from mafalda.horizontal.cluster import Cluster
    from mafalda.remote import RemoteWebRtcServer

__all__ = ["ClusterWebRtcServer"]

#: Stands for the media address, unknown until a server is chosen, when listen infos
#: are validated: any IP address validates the same way.
_SOME_ADDRESS = "192.0.2.1"


class ClusterWebRtcServer(EventSource):
    """A WebRtcServer for a cluster's routers. Create with Cluster.create_webrtc_server().

    Events: ``workerclose`` (the cluster closed; and the private ``@close``). Observer
    events: ``close``.
    """

    def __init__(
        self, *, cluster: Cluster, listen_infos: Any, app_data: dict[str, Any] | None
    ) -> None:
        """Validate everything before anything reaches a server, listen infos as they
        will be once their server's address is filled in."""
        validate_listen_infos(_announce(listen_infos, _SOME_ADDRESS))
        validate_app_data(app_data)
        self._id = str(uuid.uuid4())
        self._cluster = cluster
        # A copy: what the caller changes afterwards must not reach later realizations.
        self._listen_infos: list[Any] = copy.deepcopy(listen_infos)
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._closed = False
        self._realized: dict[str, RemoteWebRtcServer] = {}
        self._realizing: dict[str, asyncio.Future[RemoteWebRtcServer]] = {}
        self.events = EventEmitter()
        self.observer = EventEmitter()

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def servers(self) -> dict[str, RemoteWebRtcServer]:
        """The real WebRtcServer (a mafalda.remote proxy) on each server used so far."""
        return dict(self._realized)

    def __repr__(self) -> str:
        return (
            f"<ClusterWebRtcServer id={self._id} servers={sorted(self._realized)} "
            f"closed={self._closed}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("WebRtcServer closed")

    async def dump(self) -> dict[str, Any]:
        """Each realization's dump, by server."""
        self._check_open()
        realized = list(self._realized.items())
        dumps = await asyncio.gather(*(real.dump() for _, real in realized))
        return {server_id: dump for (server_id, _), dump in zip(realized, dumps, strict=True)}

    # -- realizations --------------------------------------------------------------------

    async def on_server(self, server_id: str) -> RemoteWebRtcServer:
        """The real WebRtcServer on ``server_id``, made by the first to ask (whoever asks
        meanwhile waits for that one: a second would take the same ports)."""
        self._check_open()
        real = self._realized.get(server_id)
        if real is not None and not real.closed:
            return real
        future = self._realizing.get(server_id)
        if future is None:
            future = asyncio.ensure_future(self._realize(server_id))
            self._realizing[server_id] = future

            def done(f: asyncio.Future[RemoteWebRtcServer]) -> None:
                self._realizing.pop(server_id, None)
                if not f.cancelled():
                    f.exception()  # its waiters raise it; none at all is fine too

            future.add_done_callback(done)
        # Shielded: a caller cancelled must not cancel a creation others wait for, nor
        # leave a WebRtcServer made on the server that nobody knows of.
        return await asyncio.shield(future)

    async def _realize(self, server_id: str) -> RemoteWebRtcServer:
        """Create the real WebRtcServer on ``server_id`` (the one place that does)."""
        if self._cluster.serves(server_id) == "mafalda":
            raise UnsupportedError(
                f"server {server_id!r} serves a Mafalda pool: a ClusterWebRtcServer does not "
                "use a Mafalda server's WebRtcServers yet"
            )
        worker = await self._cluster.router_worker(server_id)
        self._check_open()
        real: RemoteWebRtcServer = await worker.create_webrtc_server(
            listen_infos=_announce(self._listen_infos, self._cluster.media_address(server_id)),
            app_data={"clusterWebRtcServerId": self._id},
        )
        if self._closed:  # closed while it was being made: nobody else would close it
            real.close()
            raise InvalidStateError("WebRtcServer closed")
        if real.closed:
            raise InvalidStateError("WebRtcServer closed with its worker")
        self._realized[server_id] = real
        real.observer.on("close", lambda: self._forget(server_id, real))
        return real

    def _forget(self, server_id: str, real: RemoteWebRtcServer) -> None:
        if self._realized.get(server_id) is real:
            del self._realized[server_id]

    # -- closing -------------------------------------------------------------------------

    def _close_realizations(self) -> None:
        self._closed = True
        realized = list(self._realized.values())
        self._realized.clear()
        for real in realized:
            real.close()  # on the server its transports close: 'listenserverclose'

    def close(self) -> None:
        """Close every realization: the transports using them close with
        'listenserverclose'. One being made is closed when it arrives."""
        if self._closed:
            return
        self._close_realizations()
        self.events.emit("@close")
        self.observer.emit("close")

    def cluster_closed(self) -> None:
        """Called by the Cluster when it closes (mediasoup's worker_closed)."""
        if self._closed:
            return
        self._close_realizations()
        self.events.emit("workerclose")
        self.observer.emit("close")
