"""DirectTransport: RTP, RTCP and data exchanged with the application through the channel."""

from __future__ import annotations

import logging
from typing import Any

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Transport.SendRtcpNotification import SendRtcpNotificationT
from mafalda.mediasoup.errors import UnsupportedError
from mafalda.mediasoup.transport import (
    BaseTransportDump,
    BaseTransportStats,
    Transport,
    parse_base_transport_dump,
    parse_base_transport_stats,
)

logger = logging.getLogger("mafalda.mediasoup.direct_transport")

DirectTransportDump = BaseTransportDump
DirectTransportStat = BaseTransportStats


def parse_direct_transport_dump(body: Any) -> DirectTransportDump:
    return parse_base_transport_dump(body.base)


def _as_bytes(data: Any) -> bytes:
    # The object API yields a list of ints (or a numpy array when numpy is present).
    return bytes(data) if data is not None else b""


class DirectTransport(Transport):
    """A transport without network: the app sends and receives RTP/RTCP/data itself."""

    type = "direct"

    def __init__(self, *, data: DirectTransportDump, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._data = data

    async def dump(self) -> DirectTransportDump:
        return parse_direct_transport_dump(await self._dump_body())

    async def get_stats(self) -> list[DirectTransportStat]:
        body = await self._stats_body()
        return [parse_base_transport_stats(body.base, "direct-transport")]

    async def connect(self) -> None:
        """Nothing to connect: kept so every transport has ``connect``."""
        self._check_open()

    async def set_max_incoming_bitrate(self, bitrate: int) -> None:
        raise UnsupportedError("set_max_incoming_bitrate() not implemented in DirectTransport")

    async def set_max_outgoing_bitrate(self, bitrate: int) -> None:
        raise UnsupportedError("set_max_outgoing_bitrate() not implemented in DirectTransport")

    async def set_min_outgoing_bitrate(self, bitrate: int) -> None:
        raise UnsupportedError("set_min_outgoing_bitrate() not implemented in DirectTransport")

    def send_rtcp(self, rtcp_packet: bytes) -> None:
        """Send an RTCP packet (compound or not) from the app into the router."""
        self._check_open()
        if not isinstance(rtcp_packet, bytes | bytearray | memoryview):
            raise TypeError("rtcp_packet must be bytes")
        notification = SendRtcpNotificationT()
        notification.data = bytes(rtcp_packet)
        self._channel.notify(Event.TRANSPORT_SEND_RTCP, self._id, notification)

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.DIRECTTRANSPORT_RTCP:
            # Never after close: closing unsubscribes this handler from the channel.
            self.events.emit("rtcp", _as_bytes(body.data))
        else:
            super()._on_notification(event, body)
