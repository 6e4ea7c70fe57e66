"""Transport: the base of WebRtcTransport, PlainTransport, PipeTransport, DirectTransport.

It owns the producers, consumers, data producers and data consumers created on it,
and the helpers every transport kind shares (listen infos, tuples, base dump/stats).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import ipaddress
import logging
import marshal
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

from mafalda.mediasoup import ortc
from mafalda.mediasoup._fbs.Common.TraceDirection import TraceDirection
from mafalda.mediasoup._fbs.Consumer.ConsumerLayers import ConsumerLayersT
from mafalda.mediasoup._fbs.DataProducer.Type import Type as FbsDataProducerType
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Router.CloseTransportRequest import CloseTransportRequestT
from mafalda.mediasoup._fbs.RtpParameters.MediaKind import MediaKind as FbsMediaKind
from mafalda.mediasoup._fbs.RtpParameters.Type import Type as FbsRtpType
from mafalda.mediasoup._fbs.SctpAssociation.SctpState import SctpState as FbsSctpState
from mafalda.mediasoup._fbs.Transport.BweType import BweType
from mafalda.mediasoup._fbs.Transport.CloseConsumerRequest import CloseConsumerRequestT
from mafalda.mediasoup._fbs.Transport.CloseDataConsumerRequest import CloseDataConsumerRequestT
from mafalda.mediasoup._fbs.Transport.CloseDataProducerRequest import CloseDataProducerRequestT
from mafalda.mediasoup._fbs.Transport.CloseProducerRequest import CloseProducerRequestT
from mafalda.mediasoup._fbs.Transport.ConsumeDataRequest import ConsumeDataRequestT
from mafalda.mediasoup._fbs.Transport.ConsumeRequest import ConsumeRequestT
from mafalda.mediasoup._fbs.Transport.EnableTraceEventRequest import EnableTraceEventRequestT
from mafalda.mediasoup._fbs.Transport.ListenInfo import ListenInfoT
from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT
from mafalda.mediasoup._fbs.Transport.ProduceDataRequest import ProduceDataRequestT
from mafalda.mediasoup._fbs.Transport.ProduceRequest import ProduceRequestT
from mafalda.mediasoup._fbs.Transport.Protocol import Protocol as FbsProtocol
from mafalda.mediasoup._fbs.Transport.SetMaxIncomingBitrateRequest import (
    SetMaxIncomingBitrateRequestT,
)
from mafalda.mediasoup._fbs.Transport.SetMaxOutgoingBitrateRequest import (
    SetMaxOutgoingBitrateRequestT,
)
from mafalda.mediasoup._fbs.Transport.SetMinOutgoingBitrateRequest import (
    SetMinOutgoingBitrateRequestT,
)
from mafalda.mediasoup._fbs.Transport.SocketFlags import SocketFlagsT
from mafalda.mediasoup._fbs.Transport.TraceEventType import TraceEventType as FbsTraceEventType
from mafalda.mediasoup._ids import new_id
from mafalda.mediasoup.channel import Channel
from mafalda.mediasoup.consumer import Consumer, ConsumerLayers, check_layers
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.rtp_parameters import (
    MediaKind,
    RtpCapabilities,
    RtpParameters,
    serialize_rtp_encoding_parameters,
    serialize_rtp_parameters,
)
from mafalda.mediasoup.sctp_parameters import (
    SctpParameters,
    SctpStreamParameters,
    parse_sctp_parameters_dump,
    serialize_sctp_stream_parameters,
)
from mafalda.mediasoup.worker import validate_app_data

if TYPE_CHECKING:
    pass

logger = logging.getLogger("mafalda.mediasoup.transport")

#: See Transport.consume_guard.
ConsumeGuard = Callable[[str], AbstractAsyncContextManager[None]]

TransportProtocol = Literal["udp", "tcp"]
SctpState = Literal["new", "connecting", "connected", "failed", "closed"]
TransportTraceEventType = Literal["probation", "bwe"]
TransportType = Literal["webrtc", "plain", "pipe", "direct"]


class TransportPortRange(TypedDict):
    min: int
    max: int


class TransportSocketFlags(TypedDict, total=False):
    ipv6Only: bool
    udpReusePort: bool


class ListenInfo(TypedDict):
    """Where a transport or WebRtcServer listens (mediasoup's TransportListenInfo)."""

    protocol: TransportProtocol
    ip: str
    announcedAddress: NotRequired[str]
    announcedIp: NotRequired[str]
    exposeInternalIp: NotRequired[bool]
    port: NotRequired[int]
    portRange: NotRequired[TransportPortRange]
    flags: NotRequired[TransportSocketFlags]
    sendBufferSize: NotRequired[int]
    recvBufferSize: NotRequired[int]


TransportListenInfo = ListenInfo


class TransportListenIp(TypedDict):
    """Deprecated form of a listen address (listen_ips / listen_ip)."""

    ip: str
    announcedIp: NotRequired[str]


class TransportTuple(TypedDict):
    localAddress: str
    localIp: str
    localPort: int
    remoteIp: NotRequired[str]
    remotePort: NotRequired[int]
    protocol: TransportProtocol


class RecvRtpHeaderExtensions(TypedDict, total=False):
    mid: int
    rid: int
    rrid: int
    absSendTime: int
    transportWideCc01: int


class RtpListenerDump(TypedDict):
    ssrcTable: list[dict[str, Any]]
    midTable: list[dict[str, Any]]
    ridTable: list[dict[str, Any]]


class SctpListenerDump(TypedDict):
    streamIdTable: list[dict[str, Any]]


class BaseTransportDump(TypedDict):
    id: str
    direct: bool
    producerIds: list[str]
    consumerIds: list[str]
    mapSsrcConsumerId: list[dict[str, Any]]
    mapRtxSsrcConsumerId: list[dict[str, Any]]
    dataProducerIds: list[str]
    dataConsumerIds: list[str]
    recvRtpHeaderExtensions: RecvRtpHeaderExtensions
    rtpListener: RtpListenerDump
    maxMessageSize: int
    sctpParameters: NotRequired[SctpParameters]
    sctpState: NotRequired[SctpState]
    sctpListener: NotRequired[SctpListenerDump]
    traceEventTypes: list[TransportTraceEventType]


class BaseTransportStats(TypedDict):
    type: str
    transportId: str
    timestamp: int
    sctpState: NotRequired[SctpState]
    bytesReceived: int
    recvBitrate: int
    bytesSent: int
    sendBitrate: int
    rtpBytesReceived: int
    rtpRecvBitrate: int
    rtpBytesSent: int
    rtpSendBitrate: int
    rtxBytesReceived: int
    rtxRecvBitrate: int
    rtxBytesSent: int
    rtxSendBitrate: int
    probationBytesSent: int
    probationSendBitrate: int
    availableOutgoingBitrate: NotRequired[int]
    availableIncomingBitrate: NotRequired[int]
    maxIncomingBitrate: NotRequired[int]
    maxOutgoingBitrate: NotRequired[int]
    minOutgoingBitrate: NotRequired[int]
    rtpPacketLossReceived: NotRequired[float]
    rtpPacketLossSent: NotRequired[float]


class TransportTraceEventData(TypedDict):
    type: TransportTraceEventType
    timestamp: int
    direction: Literal["in", "out"]
    info: dict[str, Any]


# -- listen infos ---------------------------------------------------------------------


def _check_port(value: Any, name: str, *, allow_zero: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer")
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        raise InvalidValueError(f"{name} must be in {low}..65535, got {value}")


@functools.lru_cache(maxsize=256)
def _is_ip(value: str) -> bool:
    # Apps listen on a few addresses, every creation checks one: parse each once.
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_ip(value: Any, name: str) -> None:
    if not isinstance(value, str) or not value:
        raise TypeError(f"missing {name}")
    if not _is_ip(value):
        raise InvalidValueError(f"{name} {value!r} is not an IP address")


def validate_listen_info(info: Any, name: str = "listen_info") -> None:
    """Raise TypeError/ValueError naming the field when ``info`` is not a valid ListenInfo."""
    if not isinstance(info, dict):
        raise TypeError(f"{name} must be a dict")
    if info.get("protocol") not in ("udp", "tcp"):
        raise InvalidValueError(
            f"{name}.protocol must be 'udp' or 'tcp', got {info.get('protocol')!r}"
        )
    _check_ip(info.get("ip"), f"{name}.ip")
    for key in ("announcedAddress", "announcedIp"):
        if key in info and info[key] is not None and not isinstance(info[key], str):
            raise TypeError(f"{name}.{key} must be a string")
    if "port" in info and info["port"] is not None:
        _check_port(info["port"], f"{name}.port")
    port_range = info.get("portRange")
    if port_range is not None:
        if not isinstance(port_range, dict):
            raise TypeError(f"{name}.portRange must be a dict")
        _check_port(port_range.get("min"), f"{name}.portRange.min")
        _check_port(port_range.get("max"), f"{name}.portRange.max")
        if port_range["min"] > port_range["max"]:
            raise InvalidValueError(f"{name}.portRange.min is greater than {name}.portRange.max")
    flags = info.get("flags")
    if flags is not None and not isinstance(flags, dict):
        raise TypeError(f"{name}.flags must be a dict")
    for key in ("sendBufferSize", "recvBufferSize"):
        value = info.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidValueError(f"{name}.{key} must be a non-negative integer")


def validate_listen_infos(listen_infos: Any, name: str = "listen_infos") -> None:
    """Raise TypeError/ValueError naming the entry when ``listen_infos`` is not a
    non-empty list of valid ListenInfos."""
    if not isinstance(listen_infos, list) or not listen_infos:
        raise TypeError(f"{name} must be a non-empty list")
    for i, info in enumerate(listen_infos):
        validate_listen_info(info, f"{name}[{i}]")


def listen_ip_to_listen_info(listen_ip: Any, protocol: TransportProtocol, name: str) -> ListenInfo:
    """Turn a deprecated listen IP (a string or {ip, announcedIp}) into a ListenInfo."""
    if isinstance(listen_ip, str):
        return {"protocol": protocol, "ip": listen_ip}
    if isinstance(listen_ip, dict):
        info: ListenInfo = {"protocol": protocol, "ip": listen_ip.get("ip", "")}
        if listen_ip.get("announcedIp"):
            info["announcedAddress"] = listen_ip["announcedIp"]
        validate_listen_info(info, name)
        return info
    raise TypeError(f"{name} must be a string or a dict")


def serialize_protocol(protocol: TransportProtocol) -> int:
    return int(FbsProtocol.UDP if protocol == "udp" else FbsProtocol.TCP)


def parse_protocol(protocol: int) -> TransportProtocol:
    return "udp" if protocol == FbsProtocol.UDP else "tcp"


def listen_info_to_fbs(info: ListenInfo) -> ListenInfoT:
    t = ListenInfoT()
    t.protocol = serialize_protocol(info["protocol"])
    t.ip = info["ip"]
    t.announcedAddress = info.get("announcedAddress") or info.get("announcedIp")
    t.exposeInternalIp = bool(info.get("exposeInternalIp", False))
    t.port = info.get("port") or 0
    port_range = PortRangeT()
    pr = info.get("portRange")
    if pr:
        port_range.min = pr["min"]
        port_range.max = pr["max"]
    t.portRange = port_range
    flags = SocketFlagsT()
    fl = info.get("flags") or {}
    flags.ipv6Only = bool(fl.get("ipv6Only", False))
    flags.udpReusePort = bool(fl.get("udpReusePort", False))
    t.flags = flags
    t.sendBufferSize = info.get("sendBufferSize") or 0
    t.recvBufferSize = info.get("recvBufferSize") or 0
    return t


# -- remote RTP capabilities ----------------------------------------------------------

_normalized_caps: dict[bytes, RtpCapabilities] = {}


def _shared_normalized_rtp_capabilities(rtp_capabilities: RtpCapabilities) -> RtpCapabilities:
    """The validated and normalized form of ``rtp_capabilities`` (TypeError or
    ValueError when invalid), as ``ortc.validate_and_normalize_rtp_capabilities`` on a
    copy, SHARED: the result may be the cached one, which nobody may modify (consume()
    only reads it). Apps pass the same capabilities to every consume(): the validation,
    which is deterministic, runs once per distinct content, keyed by its marshal form:
    exact about types (True is not 1, 2 not 2.0, a tuple not a list) and faster than a
    pickle (2x for the dicts a remote client sends, whose strings are distinct objects)."""
    try:
        key = marshal.dumps(cast(Any, rtp_capabilities))
    except ValueError:  # subclasses, objects: validate (and reject) without caching
        key = b""
    normalized = _normalized_caps.get(key) if key else None
    if normalized is None:
        normalized = ortc._clone(rtp_capabilities)
        ortc.validate_and_normalize_rtp_capabilities(normalized)
        if key:
            if len(_normalized_caps) >= 64:
                _normalized_caps.clear()
            _normalized_caps[key] = normalized
    return normalized


def normalized_rtp_capabilities(rtp_capabilities: RtpCapabilities) -> RtpCapabilities:
    """A private, validated and normalized copy of ``rtp_capabilities`` (TypeError or
    ValueError when invalid), as ``ortc.validate_and_normalize_rtp_capabilities`` on a
    copy; the validation runs once per distinct content."""
    return ortc._clone(_shared_normalized_rtp_capabilities(rtp_capabilities))


# -- parsing ---------------------------------------------------------------------------

_SCTP_STATES: dict[int, SctpState] = {
    FbsSctpState.NEW: "new",
    FbsSctpState.CONNECTING: "connecting",
    FbsSctpState.CONNECTED: "connected",
    FbsSctpState.FAILED: "failed",
    FbsSctpState.CLOSED: "closed",
}
_TRACE_TYPES_TO_FBS: dict[str, int] = {
    "probation": FbsTraceEventType.PROBATION,
    "bwe": FbsTraceEventType.BWE,
}
_TRACE_TYPES_FROM_FBS: dict[int, TransportTraceEventType] = {
    FbsTraceEventType.PROBATION: "probation",
    FbsTraceEventType.BWE: "bwe",
}


def parse_sctp_state(state: int) -> SctpState:
    return _SCTP_STATES[state]


def parse_tuple(t: Any) -> TransportTuple:
    result: TransportTuple = {
        "localAddress": t.localAddress,
        "localIp": t.localAddress,
        "localPort": t.localPort,
        "protocol": parse_protocol(t.protocol),
    }
    if t.remoteIp is not None:
        result["remoteIp"] = t.remoteIp
        result["remotePort"] = t.remotePort
    return result


def _key_values(items: Any) -> list[dict[str, Any]]:
    return [{"key": kv.key, "value": kv.value} for kv in items] if items else []


def parse_base_transport_dump(t: Any) -> BaseTransportDump:
    # recvRtpHeaderExtensions and rtpListener are required fields (transport.fbs).
    recv_ext: RecvRtpHeaderExtensions = {}
    for key, value in vars(t.recvRtpHeaderExtensions).items():  # the wire keys are the fields
        if value is not None:
            recv_ext[key] = value  # type: ignore[literal-required]
    listener = t.rtpListener
    trace = t.traceEventTypes
    dump: BaseTransportDump = {
        "id": t.id,
        "direct": bool(t.direct),
        "producerIds": list(t.producerIds) if t.producerIds else [],
        "consumerIds": list(t.consumerIds) if t.consumerIds else [],
        "mapSsrcConsumerId": _key_values(t.mapSsrcConsumerId),
        "mapRtxSsrcConsumerId": _key_values(t.mapRtxSsrcConsumerId),
        "dataProducerIds": list(t.dataProducerIds) if t.dataProducerIds else [],
        "dataConsumerIds": list(t.dataConsumerIds) if t.dataConsumerIds else [],
        "recvRtpHeaderExtensions": recv_ext,
        "rtpListener": {
            "ssrcTable": _key_values(listener.ssrcTable),
            "midTable": _key_values(listener.midTable),
            "ridTable": _key_values(listener.ridTable),
        },
        "maxMessageSize": t.maxMessageSize,
        "traceEventTypes": [_TRACE_TYPES_FROM_FBS[e] for e in trace] if trace else [],
    }
    if t.sctpParameters is not None:
        dump["sctpParameters"] = parse_sctp_parameters_dump(t.sctpParameters)
    if t.sctpState is not None:
        dump["sctpState"] = parse_sctp_state(t.sctpState)
    if t.sctpListener is not None:
        dump["sctpListener"] = {"streamIdTable": _key_values(t.sctpListener.streamIdTable)}
    return dump


def parse_base_transport_stats(t: Any, type_name: str) -> BaseTransportStats:
    stats: BaseTransportStats = {
        "type": type_name,
        "transportId": t.transportId,
        "timestamp": t.timestamp,
        "bytesReceived": t.bytesReceived,
        "recvBitrate": t.recvBitrate,
        "bytesSent": t.bytesSent,
        "sendBitrate": t.sendBitrate,
        "rtpBytesReceived": t.rtpBytesReceived,
        "rtpRecvBitrate": t.rtpRecvBitrate,
        "rtpBytesSent": t.rtpBytesSent,
        "rtpSendBitrate": t.rtpSendBitrate,
        "rtxBytesReceived": t.rtxBytesReceived,
        "rtxRecvBitrate": t.rtxRecvBitrate,
        "rtxBytesSent": t.rtxBytesSent,
        "rtxSendBitrate": t.rtxSendBitrate,
        "probationBytesSent": t.probationBytesSent,
        "probationSendBitrate": t.probationSendBitrate,
    }
    if t.sctpState is not None:
        stats["sctpState"] = parse_sctp_state(t.sctpState)
    for key in (
        "availableOutgoingBitrate",
        "availableIncomingBitrate",
        "maxIncomingBitrate",
        "maxOutgoingBitrate",
        "minOutgoingBitrate",
        "rtpPacketLossReceived",
        "rtpPacketLossSent",
    ):
        value = getattr(t, key)
        if value is not None:
            stats[key] = value
    return stats


def parse_transport_trace_event_data(t: Any) -> TransportTraceEventData:
    direction: Literal["in", "out"] = "in" if t.direction == TraceDirection.DIRECTION_IN else "out"
    info: dict[str, Any] = {}
    if t.type == FbsTraceEventType.BWE and t.info is not None:
        i = t.info
        info = {
            "desiredBitrate": i.desiredBitrate,
            "effectiveDesiredBitrate": i.effectiveDesiredBitrate,
            "minBitrate": i.minBitrate,
            "maxBitrate": i.maxBitrate,
            "startBitrate": i.startBitrate,
            "maxPaddingBitrate": i.maxPaddingBitrate,
            "availableBitrate": i.availableBitrate,
            "bweType": "transport-cc" if i.bweType == BweType.TRANSPORT_CC else "remb",
        }
    return {
        "type": _TRACE_TYPES_FROM_FBS[t.type],
        "timestamp": t.timestamp,
        "direction": direction,
        "info": info,
    }


def _check_id(value: Any) -> None:
    # A non-string id would key this library's maps by another value than the worker's.
    if value is not None and (not isinstance(value, str) or not value):
        raise TypeError("if given, id must be a non-empty string")


def _check_bitrate(bitrate: Any, name: str = "bitrate") -> None:
    if isinstance(bitrate, bool) or not isinstance(bitrate, int):
        raise TypeError(f"{name} must be an integer")
    if not 0 <= bitrate <= 0xFFFFFFFF:
        raise InvalidValueError(f"{name} must be in 0..4294967295, got {bitrate}")


_PRODUCER_TYPES = {FbsRtpType.SIMPLE: "simple", FbsRtpType.SIMULCAST: "simulcast",
                   FbsRtpType.SVC: "svc"}  # fmt: skip
_PRODUCER_TYPES_TO_FBS = {v: k for k, v in _PRODUCER_TYPES.items()}


def _close_all(children: dict[str, Any], router_map: dict[str, Any] | None) -> None:
    """Tell each of a transport's ``children`` that it closed (and drop it from the
    router's map, when given), then forget them."""
    if not children:  # the common case, at no cost
        return
    for child in list(children.values()):
        child.transport_closed()
        if router_map is not None:
            router_map.pop(child.id, None)
    children.clear()


class RouterBook:
    """A Router's maps of its transports, producers and data producers, which its
    transports keep up to date themselves (six listeners per transport cost as much as
    the rest of its creation), and how to read the router's RTP capabilities."""

    __slots__ = ("data_producers", "get_rtp_capabilities", "producers", "transports")

    def __init__(self, get_rtp_capabilities: Callable[[], RtpCapabilities]) -> None:
        self.get_rtp_capabilities = get_rtp_capabilities
        self.transports: dict[str, Transport] = {}
        self.producers: dict[str, Producer] = {}
        self.data_producers: dict[str, DataProducer] = {}


class Transport(EventSource):
    """Base class of every transport: produce/consume and their bookkeeping."""

    type: TransportType

    def __init__(
        self,
        *,
        router_id: str,
        transport_id: str,
        channel: Channel,
        app_data: dict[str, Any] | None,
        book: RouterBook,
        sctp_parameters: SctpParameters | None = None,
    ) -> None:
        self._router_id = router_id
        self._id = transport_id
        self._channel = channel
        self._closed = False
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._book = book
        self._get_router_rtp_capabilities = book.get_rtp_capabilities
        self._get_producer_by_id = book.producers.get
        self._get_data_producer_by_id = book.data_producers.get
        self._base_sctp_parameters = sctp_parameters
        self._producers: dict[str, Producer] = {}
        self._consumers: dict[str, Consumer] = {}
        self._data_producers: dict[str, DataProducer] = {}
        self._data_consumers: dict[str, DataConsumer] = {}
        self._cname_for_producers: str | None = None
        self._next_mid_for_consumers = 0
        self._sctp_stream_ids: bytearray | None = None
        self._next_sctp_stream_id = 0
        #: Entered with the producer id around the rest of consume() (and with the data
        #: producer id around consume_data()): the layers above (Mafalda) pipe a producer
        #: living on another worker into this router there, and know when it is done.
        self.consume_guard: ConsumeGuard | None = None
        self.consume_data_guard: ConsumeGuard | None = None
        #: Entered with the id a produce() / produce_data() asks for, before anything is
        #: sent, until the new producer is there: the layers above (Mafalda) refuse an id
        #: their other workers have or are making.
        self.produce_guard: Callable[[str], AbstractContextManager[None]] | None = None
        self.produce_data_guard: Callable[[str], AbstractContextManager[None]] | None = None
        self.events = EventEmitter()
        self.observer = EventEmitter()
        channel.subscribe(transport_id, self._on_notification)

    # -- properties ------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def channel_for_testing(self) -> Channel:
        return self._channel

    @property
    def producers(self) -> dict[str, Producer]:
        return self._producers

    @property
    def consumers(self) -> dict[str, Consumer]:
        return self._consumers

    @property
    def data_producers(self) -> dict[str, DataProducer]:
        return self._data_producers

    @property
    def data_consumers(self) -> dict[str, DataConsumer]:
        return self._data_consumers

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self._id} closed={self._closed}>"

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError(f"{type(self).__name__} closed")

    # -- notifications (subclasses extend) ---------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        """The events of every transport type (the subclasses handle their own first)."""
        if event == Event.TRANSPORT_TRACE:
            trace = parse_transport_trace_event_data(body)
            self.events.emit("trace", trace)
            self.observer.emit("trace", trace)
        else:
            logger.error("ignoring unknown event %s in %s", event, type(self).__name__)

    # -- closing -----------------------------------------------------------------------

    def _close_children(self, *, notify_router: bool) -> None:
        self._channel.unsubscribe(self._id)
        book = self._book
        _close_all(self._producers, book.producers if notify_router else None)
        _close_all(self._consumers, None)
        _close_all(self._data_producers, book.data_producers if notify_router else None)
        _close_all(self._data_consumers, None)

    def _mark_closed(self) -> None:
        """Set the state properties of a subclass to their closed values (before the
        close events, so that listeners see them)."""

    def close(self) -> None:
        """Close the transport and everything on it."""
        if self._closed:
            return
        self._closed = True
        self._mark_closed()
        request = CloseTransportRequestT()
        request.transportId = self._id
        self._channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, self._router_id, request)
        self._close_children(notify_router=True)
        self._book.transports.pop(self._id, None)
        self.events.emit("@close")
        self.observer.emit("close")

    def router_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mark_closed()
        self._close_children(notify_router=False)
        self.events.emit("routerclose")
        self.observer.emit("close")

    def listen_server_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._mark_closed()
        # The router lives on: it must forget this transport's producers (Node's does
        # not, and keeps offering them to consume()).
        self._close_children(notify_router=True)
        self._book.transports.pop(self._id, None)
        self.events.emit("@listenserverclose")
        self.events.emit("listenserverclose")
        self.observer.emit("close")

    # -- requests ----------------------------------------------------------------------

    async def _request(self, method: int, body: Any = None) -> Any:
        self._check_open()
        return await self._channel.request(method, self._id, body)

    async def _request_making(
        self, method: int, body: Any, close_method: int, close_body: Any
    ) -> Any:
        """A request that makes a child: closed in the worker if the caller goes first
        (see Channel.request_making)."""
        self._check_open()
        return await self._channel.request_making(
            method, self._id, body, (close_method, self._id, close_body)
        )

    async def _dump_body(self) -> Any:
        return await self._request(Method.TRANSPORT_DUMP)

    async def _stats_body(self) -> Any:
        return await self._request(Method.TRANSPORT_GET_STATS)

    async def set_max_incoming_bitrate(self, bitrate: int) -> None:
        _check_bitrate(bitrate)
        request = SetMaxIncomingBitrateRequestT()
        request.maxIncomingBitrate = bitrate
        await self._request(Method.TRANSPORT_SET_MAX_INCOMING_BITRATE, request)

    async def set_max_outgoing_bitrate(self, bitrate: int) -> None:
        _check_bitrate(bitrate)
        request = SetMaxOutgoingBitrateRequestT()
        request.maxOutgoingBitrate = bitrate
        await self._request(Method.TRANSPORT_SET_MAX_OUTGOING_BITRATE, request)

    async def set_min_outgoing_bitrate(self, bitrate: int) -> None:
        _check_bitrate(bitrate)
        request = SetMinOutgoingBitrateRequestT()
        request.minOutgoingBitrate = bitrate
        await self._request(Method.TRANSPORT_SET_MIN_OUTGOING_BITRATE, request)

    async def enable_trace_event(self, types: list[TransportTraceEventType] | None = None) -> None:
        types = [] if types is None else types
        if not isinstance(types, list):
            raise TypeError("types must be a list")
        for item in types:
            if not isinstance(item, str):
                raise TypeError("every type must be a string")
        request = EnableTraceEventRequestT()
        # Unknown types are ignored, as mediasoup does.
        request.events = [_TRACE_TYPES_TO_FBS[t] for t in types if t in _TRACE_TYPES_TO_FBS]
        await self._request(Method.TRANSPORT_ENABLE_TRACE_EVENT, request)

    async def produce(
        self,
        *,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        id: str | None = None,
        paused: bool = False,
        key_frame_request_delay: int | None = None,
        enable_mediasoup_packet_id_header_extension: bool | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> Producer:
        self._check_open()
        _check_id(id)
        if id is not None and id in self._producers:
            raise TypeError(f'a Producer with same id "{id}" already exists')
        guard = (
            self.produce_guard(id)
            if id is not None and self.produce_guard is not None
            else contextlib.nullcontext()
        )
        with guard:
            if kind not in ("audio", "video"):
                raise TypeError(f'invalid kind "{kind}"')
            validate_app_data(app_data)
            if key_frame_request_delay is not None:
                _check_bitrate(key_frame_request_delay, "key_frame_request_delay")
            params: RtpParameters = copy.deepcopy(rtp_parameters)
            ortc.validate_and_normalize_rtp_parameters(params)
            if not params.get("encodings"):
                params["encodings"] = [{}]
            if self.type != "pipe":
                rtcp = params.get("rtcp") or {}
                if not self._cname_for_producers:
                    self._cname_for_producers = rtcp.get("cname") or new_id()[:8]
                rtcp["cname"] = self._cname_for_producers
                params["rtcp"] = rtcp
            router_caps = self._get_router_rtp_capabilities()
            rtp_mapping = ortc.get_producer_rtp_parameters_mapping(params, router_caps)
            consumable = ortc.get_consumable_rtp_parameters(kind, params, router_caps, rtp_mapping)
            producer_id = id or new_id()
            request = ProduceRequestT()
            request.producerId = producer_id
            request.kind = FbsMediaKind.AUDIO if kind == "audio" else FbsMediaKind.VIDEO
            request.rtpParameters = serialize_rtp_parameters(params, prepacked=True)
            request.rtpMapping = ortc.serialize_rtp_mapping(rtp_mapping)
            request.paused = bool(paused)
            request.keyFrameRequestDelay = key_frame_request_delay or 0
            request.enableMediasoupPacketIdHeaderExtension = bool(
                enable_mediasoup_packet_id_header_extension
            )
            response = await self._request_making(
                Method.TRANSPORT_PRODUCE,
                request,
                Method.TRANSPORT_CLOSE_PRODUCER,
                CloseProducerRequestT(producerId=producer_id),
            )
            producer = Producer(
                transport_id=self._id,
                producer_id=producer_id,
                kind=kind,
                rtp_parameters=params,
                type=_PRODUCER_TYPES[response.type],  # type: ignore[arg-type]
                consumable_rtp_parameters=consumable,
                channel=self._channel,
                app_data=app_data,
                paused=bool(paused),
            )
            self._check_still_open(producer)
            self._producers[producer_id] = producer
            book = self._book

            def on_close() -> None:
                self._producers.pop(producer_id, None)
                book.producers.pop(producer_id, None)

            producer.events.on("@close", on_close)
            book.producers[producer_id] = producer
            self.observer.emit("newproducer", producer)
            return producer

    async def consume(
        self,
        *,
        producer_id: str,
        rtp_capabilities: RtpCapabilities,
        paused: bool = False,
        mid: str | None = None,
        preferred_layers: ConsumerLayers | None = None,
        ignore_dtx: bool = False,
        enable_rtx: bool | None = None,
        pipe: bool = False,
        app_data: dict[str, Any] | None = None,
    ) -> Consumer:
        self._check_open()
        if not producer_id or not isinstance(producer_id, str):
            raise TypeError("missing producer_id")
        validate_app_data(app_data)
        if mid is not None and (not isinstance(mid, str) or not mid):
            raise TypeError("if given, mid must be non empty string")
        if preferred_layers is not None:
            if not isinstance(preferred_layers, dict):
                raise TypeError("if given, preferred_layers must be a dict")
            check_layers(
                preferred_layers.get("spatialLayer"),
                preferred_layers.get("temporalLayer"),
                "preferred_layers.spatialLayer",
                "preferred_layers.temporalLayer",
            )
        # Read-only from here on: get_consumer_rtp_parameters() copies what it keeps.
        caps = _shared_normalized_rtp_capabilities(rtp_capabilities)
        guard = self.consume_guard(producer_id) if self.consume_guard else contextlib.nullcontext()
        async with guard:
            self._check_open()
            producer = self._get_producer_by_id(producer_id)
            if producer is None:
                raise InvalidValueError(f'Producer with id "{producer_id}" not found')
            if enable_rtx is None:
                enable_rtx = producer.kind == "video"
            rtp_parameters = ortc.get_consumer_rtp_parameters(
                consumable_rtp_parameters=producer.consumable_rtp_parameters,
                remote_rtp_capabilities=caps,
                pipe=pipe,
                enable_rtx=enable_rtx,
                normalized=True,
            )
            if not pipe:
                if mid:
                    rtp_parameters["mid"] = mid
                else:
                    rtp_parameters["mid"] = str(self._next_mid_for_consumers)
                    self._next_mid_for_consumers += 1
                    if self._next_mid_for_consumers == 100000000:
                        self._next_mid_for_consumers = 0
            consumer_id = new_id()
            request = ConsumeRequestT()
            request.consumerId = consumer_id
            request.producerId = producer.id
            request.kind = FbsMediaKind.AUDIO if producer.kind == "audio" else FbsMediaKind.VIDEO
            request.rtpParameters = serialize_rtp_parameters(rtp_parameters, prepacked=True)
            request.type = FbsRtpType.PIPE if pipe else _PRODUCER_TYPES_TO_FBS[producer.type]
            request.consumableRtpEncodings = serialize_rtp_encoding_parameters(
                producer.consumable_rtp_parameters.get("encodings") or []
            )
            request.paused = bool(paused)
            if preferred_layers is not None:
                layers = ConsumerLayersT()
                layers.spatialLayer = preferred_layers["spatialLayer"]
                layers.temporalLayer = preferred_layers.get("temporalLayer")
                request.preferredLayers = layers
            request.ignoreDtx = bool(ignore_dtx)
            status = await self._request_making(
                Method.TRANSPORT_CONSUME,
                request,
                Method.TRANSPORT_CLOSE_CONSUMER,
                CloseConsumerRequestT(consumerId=consumer_id),
            )
            score = status.score
            status_layers = status.preferredLayers
            consumer = Consumer(
                transport_id=self._id,
                consumer_id=consumer_id,
                producer_id=producer_id,
                kind=producer.kind,
                rtp_parameters=rtp_parameters,
                type="pipe" if pipe else producer.type,
                channel=self._channel,
                app_data=app_data,
                paused=bool(status.paused),
                producer_paused=bool(status.producerPaused),
                score={
                    "score": score.score,
                    "producerScore": score.producerScore,
                    "producerScores": list(score.producerScores or []),
                }
                if score is not None
                else None,
                preferred_layers=(
                    {"spatialLayer": status_layers.spatialLayer}
                    | (
                        {"temporalLayer": status_layers.temporalLayer}
                        if status_layers.temporalLayer is not None
                        else {}
                    )  # type: ignore[arg-type]
                )
                if status_layers is not None
                else None,
            )
            self._adopt_consumer(consumer)
            return consumer

    def _check_still_open(self, child: Any) -> None:
        """InvalidStateError when this transport closed while the worker made ``child``
        (the worker closed that with the transport): handing it out would give the app
        an object that looks open and is not; it is marked closed instead."""
        if self._closed:
            child.transport_closed()
            raise InvalidStateError(f"{type(self).__name__} closed")

    def _adopt_consumer(self, consumer: Consumer) -> None:
        """Track a consumer created on this transport until it or its producer closes."""
        self._check_still_open(consumer)
        consumer_id = consumer.id
        self._consumers[consumer_id] = consumer

        def on_gone() -> None:
            self._consumers.pop(consumer_id, None)

        consumer.events.on("@close", on_gone)
        consumer.events.on("@producerclose", on_gone)
        self.observer.emit("newconsumer", consumer)

    async def produce_data(
        self,
        *,
        sctp_stream_parameters: SctpStreamParameters | None = None,
        label: str = "",
        protocol: str = "",
        id: str | None = None,
        paused: bool = False,
        app_data: dict[str, Any] | None = None,
    ) -> DataProducer:
        from mafalda.mediasoup.data_producer import parse_data_producer_dump

        self._check_open()
        _check_id(id)
        if id is not None and id in self._data_producers:
            raise TypeError(f'a DataProducer with same id "{id}" already exists')
        guard = (
            self.produce_data_guard(id)
            if id is not None and self.produce_data_guard is not None
            else contextlib.nullcontext()
        )
        with guard:
            validate_app_data(app_data)
            if not isinstance(label, str):
                raise TypeError("label must be a string")
            if not isinstance(protocol, str):
                raise TypeError("protocol must be a string")
            params: SctpStreamParameters | None = copy.deepcopy(sctp_stream_parameters)
            if self.type != "direct":
                kind = "sctp"
                if params is None:
                    raise TypeError("missing sctp_stream_parameters")
                ortc.validate_and_normalize_sctp_stream_parameters(params)
            else:
                kind = "direct"
                if params is not None:
                    logger.warning(
                        "produce_data() | sctp_stream_parameters are ignored on a DirectTransport"
                    )
                    params = None
            data_producer_id = id or new_id()
            request = ProduceDataRequestT()
            request.dataProducerId = data_producer_id
            sctp = kind == "sctp"
            request.type = FbsDataProducerType.SCTP if sctp else FbsDataProducerType.DIRECT
            if params is not None:
                request.sctpStreamParameters = serialize_sctp_stream_parameters(params)
            request.label = label
            request.protocol = protocol
            request.paused = bool(paused)
            body = await self._request_making(
                Method.TRANSPORT_PRODUCE_DATA,
                request,
                Method.TRANSPORT_CLOSE_DATAPRODUCER,
                CloseDataProducerRequestT(dataProducerId=data_producer_id),
            )
            dump = parse_data_producer_dump(body)
            data_producer = DataProducer(
                transport_id=self._id,
                data_producer_id=data_producer_id,
                type=dump["type"],
                sctp_stream_parameters=dump.get("sctpStreamParameters"),
                label=dump["label"],
                protocol=dump["protocol"],
                channel=self._channel,
                paused=bool(paused),
                app_data=app_data,
            )
            self._check_still_open(data_producer)
            self._data_producers[data_producer_id] = data_producer
            book = self._book

            def on_close() -> None:
                self._data_producers.pop(data_producer_id, None)
                book.data_producers.pop(data_producer_id, None)

            data_producer.events.on("@close", on_close)
            book.data_producers[data_producer_id] = data_producer
            self.observer.emit("newdataproducer", data_producer)
            return data_producer

    async def consume_data(
        self,
        *,
        data_producer_id: str,
        ordered: bool | None = None,
        max_packet_life_time: int | None = None,
        max_retransmits: int | None = None,
        paused: bool = False,
        subchannels: list[int] | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> DataConsumer:
        from mafalda.mediasoup.data_consumer import parse_data_consumer_dump

        self._check_open()
        if not data_producer_id or not isinstance(data_producer_id, str):
            raise TypeError("missing data_producer_id")
        validate_app_data(app_data)
        if subchannels is not None:
            if not isinstance(subchannels, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= 65535
                for s in subchannels
            ):
                raise TypeError("subchannels must be a list of integers in 0..65535")
        for name, value in (
            ("max_packet_life_time", max_packet_life_time),
            ("max_retransmits", max_retransmits),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise TypeError(f"{name} must be a non-negative integer")
            if value is not None and value > 65535:
                raise InvalidValueError(f"{name} must be in 0..65535, got {value}")
        if ordered is not None and not isinstance(ordered, bool):
            raise TypeError("if given, ordered must be a bool")
        guard = (
            self.consume_data_guard(data_producer_id)
            if self.consume_data_guard
            else contextlib.nullcontext()
        )
        async with guard:
            self._check_open()
            data_producer = self._get_data_producer_by_id(data_producer_id)
            if data_producer is None:
                raise InvalidValueError(f'DataProducer with id "{data_producer_id}" not found')
            sctp_stream_id: int | None = None
            params: SctpStreamParameters | None = None
            if self.type == "direct":
                kind = "direct"
                if (
                    ordered is not None
                    or max_packet_life_time is not None
                    or max_retransmits is not None
                ):
                    logger.warning(
                        "consume_data() | ordered, max_packet_life_time and max_retransmits are "
                        "ignored on a DirectTransport"
                    )
            else:
                kind = "sctp"
                sctp_stream_id = self._get_next_sctp_stream_id()
                source = data_producer.sctp_stream_parameters
                params = (
                    copy.deepcopy(source)
                    if source
                    else {"streamId": sctp_stream_id, "ordered": True}
                )
                params["streamId"] = sctp_stream_id
                if ordered is not None:
                    params["ordered"] = ordered
                    if ordered:
                        params.pop("maxPacketLifeTime", None)
                        params.pop("maxRetransmits", None)
                if not ordered:
                    if max_packet_life_time is not None:
                        params["ordered"] = False
                        params["maxPacketLifeTime"] = max_packet_life_time
                    if max_retransmits is not None:
                        params["ordered"] = False
                        params["maxRetransmits"] = max_retransmits
            data_consumer_id = new_id()
            request = ConsumeDataRequestT()
            request.dataConsumerId = data_consumer_id
            request.dataProducerId = data_producer.id  # not an alias
            request.type = (
                FbsDataProducerType.SCTP if kind == "sctp" else FbsDataProducerType.DIRECT
            )
            if params is not None:
                request.sctpStreamParameters = serialize_sctp_stream_parameters(params)
            request.label = data_producer.label
            request.protocol = data_producer.protocol
            request.paused = bool(paused)
            request.subchannels = list(subchannels or [])
            try:
                body = await self._request_making(
                    Method.TRANSPORT_CONSUME_DATA,
                    request,
                    Method.TRANSPORT_CLOSE_DATACONSUMER,
                    CloseDataConsumerRequestT(dataConsumerId=data_consumer_id),
                )
            except BaseException:
                self._release_sctp_stream_id(sctp_stream_id)
                raise
            dump = parse_data_consumer_dump(body)
            data_consumer = DataConsumer(
                transport_id=self._id,
                data_consumer_id=data_consumer_id,
                data_producer_id=data_producer_id,  # as asked (an alias stays an alias)
                type=dump["type"],
                sctp_stream_parameters=dump.get("sctpStreamParameters"),
                label=dump["label"],
                protocol=dump["protocol"],
                buffered_amount_low_threshold=dump["bufferedAmountLowThreshold"],
                channel=self._channel,
                paused=dump["paused"],
                data_producer_paused=dump["dataProducerPaused"],
                subchannels=dump["subchannels"],
                app_data=app_data,
            )
            try:
                self._check_still_open(data_consumer)
            except InvalidStateError:
                self._release_sctp_stream_id(sctp_stream_id)
                raise
            self._data_consumers[data_consumer_id] = data_consumer

            def on_gone() -> None:
                self._data_consumers.pop(data_consumer_id, None)
                self._release_sctp_stream_id(sctp_stream_id)

            data_consumer.events.on("@close", on_gone)
            data_consumer.events.on("@dataproducerclose", on_gone)
            self.observer.emit("newdataconsumer", data_consumer)
            return data_consumer

    def _release_sctp_stream_id(self, stream_id: int | None) -> None:
        if stream_id is not None and self._sctp_stream_ids is not None:
            self._sctp_stream_ids[stream_id] = 0

    def _get_next_sctp_stream_id(self) -> int:
        params = self._base_sctp_parameters
        if not params or not isinstance(params.get("MIS"), int):
            raise TypeError("missing sctpParameters.MIS (SCTP not enabled on this transport)")
        if self._sctp_stream_ids is None:
            self._sctp_stream_ids = bytearray(params["MIS"])
        ids = self._sctp_stream_ids
        for idx in range(len(ids)):
            stream_id = (self._next_sctp_stream_id + idx) % len(ids)
            if not ids[stream_id]:
                ids[stream_id] = 1
                self._next_sctp_stream_id = stream_id + 1
                return stream_id
        raise InvalidValueError("no sctpStreamId available")
