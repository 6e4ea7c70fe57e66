"""ClusterWebRtcServer: one WebRtcServer for a cluster's WebRtcTransports, on every server.

    webrtc_server = await cluster.create_webrtc_server(
        listen_infos=[{"protocol": "udp", "port": 44444}, {"protocol": "tcp", "port": 44444}])
    transport = await router.create_webrtc_transport(webrtc_server=webrtc_server)

Nothing is created when it is made: the first transport that needs it on a server
creates a real WebRtcServer there (``SpanningWebRtcServer``), with the listen infos
completed as a ClusterRouter's transports' are (no ``ip``: the server's media address;
0.0.0.0 or ::: announcing it), so a port given here is that port on every server used.
On a server of plain mediasoup it goes on this client's worker for the cluster routers'
children (a transport and its WebRtcServer share a worker); on a server of a Mafalda
pool it is that pool's own spanning WebRtcServer (``Mafalda.create_webrtc_server()``:
one per worker the pool places the transports on, so the ports must differ there: a
``portRange``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mafalda.horizontal.router import _SOME_ADDRESS, _announce
from mafalda.mediasoup.transport import validate_listen_infos
from mafalda.vertical.spanning_webrtc_server import SpanningWebRtcServer

if TYPE_CHECKING:
    from mafalda.horizontal.cluster import Cluster
    from mafalda.remote import RemoteWebRtcServer

__all__ = ["ClusterWebRtcServer"]


class ClusterWebRtcServer(SpanningWebRtcServer[str]):
    """A WebRtcServer for a cluster's routers. Create with Cluster.create_webrtc_server().

    Events: ``workerclose`` (the cluster closed; and the private ``@close``). Observer
    events: ``close``, ``webrtctransporthandled`` and ``webrtctransportunhandled`` (a
    transport of any server, as the ClusterTransport the router returned).
    """

    app_data_key = "clusterWebRtcServerId"
    spans = "cluster"

    def __init__(
        self, *, cluster: Cluster, listen_infos: Any, app_data: dict[str, Any] | None
    ) -> None:
        """Validate everything before anything reaches a server, listen infos as they
        will be once their server's address is filled in."""
        validate_listen_infos(_announce(listen_infos, _SOME_ADDRESS))
        super().__init__(listen_infos=listen_infos, app_data=app_data)
        self._cluster = cluster

    @property
    def cluster(self) -> Cluster:
        return self._cluster

    @property
    def servers(self) -> dict[str, RemoteWebRtcServer]:
        """The real WebRtcServer (a mafalda.remote proxy) on each server used so far."""
        return dict(self._made)

    def __repr__(self) -> str:
        return (
            f"<ClusterWebRtcServer id={self._id} servers={sorted(self._made)} "
            f"closed={self._closed}>"
        )

    def _owner(self) -> object:
        return self._cluster

    def _name(self, host: str) -> str:
        return host

    async def _make(self, host: str) -> RemoteWebRtcServer:
        listen_infos = _announce(self._listen_infos, self._cluster.media_address(host))
        if self._cluster.serves(host) == "mafalda":
            pool = await self._cluster.mafalda_client(host)
            self._check_open()
            return await pool.create_webrtc_server(
                listen_infos=listen_infos, app_data=self._real_app_data()
            )
        worker = await self._cluster.router_worker(host)
        self._check_open()
        real: RemoteWebRtcServer = await worker.create_webrtc_server(
            listen_infos=listen_infos, app_data=self._real_app_data()
        )
        return real

    def handle_webrtc_transport(self, wrapper: Any, transport: Any) -> None:
        """A cluster router's transport listening through this one: mediasoup's observer
        events, with the wrapper the app holds (the real WebRtcServer's would carry the
        bare proxy, before the router has wrapped it)."""
        self.observer.emit("webrtctransporthandled", wrapper)
        transport.observer.once(
            "close", lambda: self.observer.emit("webrtctransportunhandled", wrapper)
        )

    def cluster_closed(self) -> None:
        """Called by the Cluster when it closes (mediasoup's worker_closed)."""
        self._spanned_closed()
