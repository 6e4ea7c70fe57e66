"""PlainTransport: plain RTP/RTCP (optionally SRTP) over UDP, e.g. to FFmpeg or GStreamer."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
from collections.abc import Collection
from typing import Any, Final, NotRequired

from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.PlainTransport.ConnectRequest import ConnectRequestT
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.rtp_parameters import InvalidValueError
from mafalda.mediasoup.sctp_parameters import SctpParameters
from mafalda.mediasoup.srtp_parameters import (
    SrtpParameters,
    parse_srtp_parameters,
    serialize_srtp_parameters,
)
from mafalda.mediasoup.transport import (
    BaseTransportDump,
    BaseTransportStats,
    RouterBook,
    SctpState,
    Transport,
    TransportTuple,
    parse_base_transport_dump,
    parse_base_transport_stats,
    parse_sctp_state,
    parse_tuple,
)

__all__ = [
    "PlainTransport",
    "PlainTransportDump",
    "PlainTransportStat",
    "parse_plain_transport_dump",
    "parse_plain_transport_stats",
    "validate_remote_ip",
    "validate_remote_port",
    "validate_srtp_parameters",
]

logger = logging.getLogger("mafalda.mediasoup.plain_transport")


class PlainTransportDump(BaseTransportDump):
    rtcpMux: bool
    comedia: bool
    tuple: TransportTuple
    rtcpTuple: NotRequired[TransportTuple]
    srtpParameters: NotRequired[SrtpParameters]


class PlainTransportStat(BaseTransportStats):
    rtcpMux: bool
    comedia: bool
    tuple: TransportTuple
    rtcpTuple: NotRequired[TransportTuple]


#: Length in bytes of the SRTP master key + salt of each crypto suite.
SRTP_MASTER_LENGTHS: Final[dict[str, int]] = {
    "AEAD_AES_256_GCM": 44,
    "AEAD_AES_128_GCM": 28,
    "AES_CM_128_HMAC_SHA1_80": 30,
    "AES_CM_128_HMAC_SHA1_32": 30,
}


# -- validation (shared with PipeTransport) --------------------------------------------


def validate_remote_ip(value: Any, name: str = "ip") -> None:
    if value is None:
        raise TypeError(f"missing {name}")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValueError(f"{name} {value!r} is not an IP address") from None


def validate_remote_port(value: Any, name: str = "port") -> None:
    if value is None:
        raise TypeError(f"missing {name}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    if not 1 <= value <= 65535:
        raise InvalidValueError(f"{name} must be in 1..65535, got {value}")


def validate_srtp_parameters(
    value: Any,
    name: str = "srtp_parameters",
    *,
    crypto_suites: Collection[str] = tuple(SRTP_MASTER_LENGTHS),
) -> None:
    """Raise TypeError naming the field unless ``value`` holds a known crypto suite and a
    base64 key of that suite's master length (InvalidValueError, also a ValueError, when
    a value of the right type is wrong)."""
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict")
    suite = value.get("cryptoSuite")
    if suite is None:
        raise TypeError(f"missing {name}.cryptoSuite")
    if not isinstance(suite, str):
        raise TypeError(f"{name}.cryptoSuite must be a string")
    if suite not in crypto_suites:
        raise InvalidValueError(
            f"{name}.cryptoSuite must be one of {sorted(crypto_suites)}, got {suite!r}"
        )
    key = value.get("keyBase64")
    if key is None:
        raise TypeError(f"missing {name}.keyBase64")
    if not isinstance(key, str):
        raise TypeError(f"{name}.keyBase64 must be a string")
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidValueError(f"{name}.keyBase64 is not valid base64") from None
    if len(decoded) != SRTP_MASTER_LENGTHS[suite]:
        raise InvalidValueError(
            f"{name}.keyBase64 decodes to {len(decoded)} bytes, "
            f"{suite} needs {SRTP_MASTER_LENGTHS[suite]}"
        )


# -- parsing ---------------------------------------------------------------------------


def parse_plain_transport_dump(body: Any) -> PlainTransportDump:
    """A PlainTransport dump from a ``PlainTransport.DumpResponseT``."""
    dump: PlainTransportDump = {
        **parse_base_transport_dump(body.base),  # type: ignore[typeddict-item]
        "rtcpMux": bool(body.rtcpMux),
        "comedia": bool(body.comedia),
        "tuple": parse_tuple(body.tuple),
    }
    if body.rtcpTuple is not None:
        dump["rtcpTuple"] = parse_tuple(body.rtcpTuple)
    if body.srtpParameters is not None:
        dump["srtpParameters"] = parse_srtp_parameters(body.srtpParameters)
    return dump


def parse_plain_transport_stats(body: Any) -> PlainTransportStat:
    """PlainTransport stats from a ``PlainTransport.GetStatsResponseT``."""
    stats: PlainTransportStat = {
        **parse_base_transport_stats(body.base, "plain-rtp-transport"),  # type: ignore[typeddict-item]
        "rtcpMux": bool(body.rtcpMux),
        "comedia": bool(body.comedia),
        "tuple": parse_tuple(body.tuple),
    }
    if body.rtcpTuple is not None:
        stats["rtcpTuple"] = parse_tuple(body.rtcpTuple)
    return stats


# -- the transport ---------------------------------------------------------------------


class PlainTransport(Transport):
    """Plain RTP/RTCP over UDP (or SRTP when created with ``enable_srtp``).

    Events: ``tuple`` (tuple), ``rtcptuple`` (tuple), ``sctpstatechange`` (state),
    ``trace`` (data), ``routerclose``; the observer emits the same plus ``close``,
    ``newproducer``, ``newconsumer``, ``newdataproducer``, ``newdataconsumer``.
    """

    type = "plain"

    def __init__(
        self,
        *,
        router_id: str,
        transport_id: str,
        channel: Channel,
        app_data: dict[str, Any] | None,
        book: RouterBook,
        data: PlainTransportDump,
    ) -> None:
        super().__init__(
            router_id=router_id,
            transport_id=transport_id,
            channel=channel,
            app_data=app_data,
            book=book,
            sctp_parameters=data.get("sctpParameters"),
        )
        self._rtcp_mux = data["rtcpMux"]
        self._comedia = data["comedia"]
        self._tuple: TransportTuple = data["tuple"]
        self._rtcp_tuple: TransportTuple | None = data.get("rtcpTuple")
        self._sctp_parameters: SctpParameters | None = data.get("sctpParameters")
        self._sctp_state: SctpState | None = data.get("sctpState")
        self._srtp_parameters: SrtpParameters | None = data.get("srtpParameters")

    # -- properties ------------------------------------------------------------------

    @property
    def rtcp_mux(self) -> bool:
        return self._rtcp_mux

    @property
    def comedia(self) -> bool:
        return self._comedia

    @property
    def tuple(self) -> TransportTuple:
        return self._tuple

    @property
    def rtcp_tuple(self) -> TransportTuple | None:
        return self._rtcp_tuple

    @property
    def sctp_parameters(self) -> SctpParameters | None:
        return self._sctp_parameters

    @property
    def sctp_state(self) -> SctpState | None:
        return self._sctp_state

    @property
    def srtp_parameters(self) -> SrtpParameters | None:
        """The local SRTP parameters (give them to the remote), None without SRTP."""
        return self._srtp_parameters

    # -- closing ---------------------------------------------------------------------

    def _mark_closed(self) -> None:
        if self._sctp_state:
            self._sctp_state = "closed"

    # -- requests --------------------------------------------------------------------

    async def dump(self) -> PlainTransportDump:
        return parse_plain_transport_dump(await self._dump_body())

    async def get_stats(self) -> list[PlainTransportStat]:
        return [parse_plain_transport_stats(await self._stats_body())]

    async def connect(
        self,
        *,
        ip: str | None = None,
        port: int | None = None,
        rtcp_port: int | None = None,
        srtp_parameters: SrtpParameters | None = None,
    ) -> None:
        """Give the remote address (unless ``comedia``) and, with SRTP, the remote
        SRTP parameters.

        With ``comedia`` the remote address is learnt from the first packet received
        and ``ip``/``port``/``rtcp_port`` are ignored.
        """
        self._check_open()
        if self._srtp_parameters is None:
            if srtp_parameters is not None:
                raise TypeError("invalid srtp_parameters (SRTP not enabled)")
        else:
            if srtp_parameters is None:
                raise TypeError("missing srtp_parameters (SRTP enabled)")
            validate_srtp_parameters(srtp_parameters)
        if self._comedia:
            if ip is not None:
                validate_remote_ip(ip)
            if port is not None:
                validate_remote_port(port)
            if rtcp_port is not None:
                validate_remote_port(rtcp_port, "rtcp_port")
        else:
            validate_remote_ip(ip)
            validate_remote_port(port)
            if rtcp_port is not None:
                if self._rtcp_mux:
                    raise TypeError("cannot set rtcp_port with rtcp_mux enabled")
                validate_remote_port(rtcp_port, "rtcp_port")
            elif not self._rtcp_mux:
                raise TypeError("missing rtcp_port (required with rtcp_mux disabled)")
        request = ConnectRequestT()
        request.ip = ip
        request.port = port
        request.rtcpPort = rtcp_port
        if srtp_parameters is not None:
            request.srtpParameters = serialize_srtp_parameters(srtp_parameters)
        response = await self._request(Method.PLAINTRANSPORT_CONNECT, request)
        if response.tuple is not None:
            self._tuple = parse_tuple(response.tuple)
        if response.rtcpTuple is not None:
            self._rtcp_tuple = parse_tuple(response.rtcpTuple)
        if response.srtpParameters is not None:
            self._srtp_parameters = parse_srtp_parameters(response.srtpParameters)

    # -- notifications ---------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.PLAINTRANSPORT_TUPLE:
            tuple_ = parse_tuple(body.tuple)
            self._tuple = tuple_
            self.events.emit("tuple", tuple_)
            self.observer.emit("tuple", tuple_)
        elif event == Event.PLAINTRANSPORT_RTCP_TUPLE:
            rtcp_tuple = parse_tuple(body.tuple)
            self._rtcp_tuple = rtcp_tuple
            self.events.emit("rtcptuple", rtcp_tuple)
            self.observer.emit("rtcptuple", rtcp_tuple)
        elif event == Event.TRANSPORT_SCTP_STATE_CHANGE:
            sctp_state = parse_sctp_state(body.sctpState)
            self._sctp_state = sctp_state
            self.events.emit("sctpstatechange", sctp_state)
            self.observer.emit("sctpstatechange", sctp_state)
        else:
            super()._on_notification(event, body)
