"""MafaldaWebRtcServer: one WebRtcServer for a Mafalda's WebRtcTransports, on its workers.

    webrtc_server = await mafalda.create_webrtc_server(listen_infos=[
        {"protocol": "udp", "ip": "0.0.0.0", "announcedAddress": "203.0.113.5",
         "portRange": {"min": 44444, "max": 44459}}])
    transport = await router.create_webrtc_transport(webrtc_server=webrtc_server)

The transport goes where the pool's policy places it, as any other, and listens
through the real WebRtcServer on that worker, made there by the first transport that
needs it (``SpanningWebRtcServer``). Every worker's takes its own ports, so a pool that
may have more than one worker is given a ``portRange`` (or no port), not one port.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mafalda.mediasoup.errors import InvalidValueError
from mafalda.mediasoup.transport import validate_listen_infos
from mafalda.mediasoup.webrtc_server import WebRtcServer
from mafalda.mediasoup.worker import Worker
from mafalda.vertical.spanning_webrtc_server import SpanningWebRtcServer

if TYPE_CHECKING:
    from mafalda.vertical.mafalda import Mafalda

__all__ = ["MafaldaWebRtcServer"]


def check_pool_listen_infos(listen_infos: Any, max_workers: int) -> None:
    """Listen infos for the WebRtcServers of a pool's workers: valid ones (TypeError /
    InvalidValueError naming the entry), and no one port for more than one worker (their
    WebRtcServers cannot all listen on it)."""
    validate_listen_infos(listen_infos)
    if max_workers < 2:
        return
    for i, info in enumerate(listen_infos):
        if info.get("port") and "portRange" not in info:
            raise InvalidValueError(
                f"listen_infos[{i}].port: the pool's {max_workers} workers cannot share "
                "one port (each has its own WebRtcServer): give a portRange instead"
            )


class MafaldaWebRtcServer(SpanningWebRtcServer[Worker]):
    """A WebRtcServer for a Mafalda's routers. Create with Mafalda.create_webrtc_server().

    Events: ``workerclose`` (the Mafalda closed; and the private ``@close``). Observer
    events: ``close``, ``webrtctransporthandled`` and ``webrtctransportunhandled`` (as
    a WebRtcServer's, for the transports of every worker).
    """

    app_data_key = "mafaldaWebRtcServerId"
    spans = "Mafalda"

    def __init__(
        self, *, mafalda: Mafalda, listen_infos: Any, app_data: dict[str, Any] | None
    ) -> None:
        check_pool_listen_infos(listen_infos, mafalda.max_workers)
        super().__init__(listen_infos=listen_infos, app_data=app_data)
        self._mafalda = mafalda

    @property
    def mafalda(self) -> Mafalda:
        return self._mafalda

    @property
    def servers(self) -> dict[int, WebRtcServer]:
        """The real WebRtcServer on each worker used so far, by the worker's pid."""
        return {worker.pid: real for worker, real in self._made.items()}

    def __repr__(self) -> str:
        return (
            f"<MafaldaWebRtcServer id={self._id} workers={len(self._made)} closed={self._closed}>"
        )

    def _owner(self) -> object:
        return self._mafalda

    def _name(self, host: Worker) -> str:
        return str(host.pid)  # a dump's keys are strings (JSON's)

    async def _make(self, host: Worker) -> WebRtcServer:
        return await host.create_webrtc_server(
            listen_infos=self._listen_infos, app_data=self._real_app_data()
        )

    def _adopted(self, real: Any) -> None:
        # Its transports are the ones the app holds (a MafaldaRouter returns its
        # children's): mediasoup's WebRtcServer observer events, as they are.
        for name in ("webrtctransporthandled", "webrtctransportunhandled"):
            real.observer.on(name, lambda transport, name=name: self.observer.emit(name, transport))

    def mafalda_closed(self) -> None:
        """Called by the Mafalda when it closes (mediasoup's worker_closed)."""
        self._spanned_closed()
