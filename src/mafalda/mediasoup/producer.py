"""Producer: media an endpoint sends into a transport (mediasoup's Producer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

from mafalda.mediasoup._fbs.Common.TraceDirection import TraceDirection as FbsTraceDirection
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Producer import SendNotification as FbsSendNotification
from mafalda.mediasoup._fbs.Producer.EnableTraceEventRequest import EnableTraceEventRequestT
from mafalda.mediasoup._fbs.Producer.TraceEventType import TraceEventType as FbsTraceEventType
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.RtpParameters.MediaKind import MediaKind as FbsMediaKind
from mafalda.mediasoup._fbs.RtpParameters.Type import Type as FbsRtpType
from mafalda.mediasoup._fbs.Transport.CloseProducerRequest import CloseProducerRequestT
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.rtp_parameters import MediaKind, RtpParameters, parse_rtp_parameters
from mafalda.mediasoup.rtp_stream_stats import RtpStreamRecvStats, parse_rtp_stream_recv_stats

if TYPE_CHECKING:
    from mafalda.mediasoup.channel import Channel

__all__ = [
    "Producer",
    "ProducerDump",
    "ProducerRtpStreamDump",
    "ProducerScore",
    "ProducerStat",
    "ProducerTraceEventData",
    "ProducerTraceEventType",
    "ProducerType",
    "ProducerVideoOrientation",
    "RtpMappingDump",
]

logger = logging.getLogger("mafalda.mediasoup.producer")

ProducerType = Literal["simple", "simulcast", "svc"]
ProducerTraceEventType = Literal["rtp", "keyframe", "nack", "pli", "fir", "sr"]
TraceEventDirection = Literal["in", "out"]

ProducerStat = RtpStreamRecvStats


class ProducerScore(TypedDict):
    encodingIdx: int
    ssrc: int
    rid: NotRequired[str]
    score: int


class ProducerVideoOrientation(TypedDict):
    camera: bool
    flip: bool
    rotation: int


class ProducerTraceEventData(TypedDict):
    type: ProducerTraceEventType
    timestamp: int
    direction: TraceEventDirection
    #: Per type information (absent when the worker sent none), as the worker's table.
    info: NotRequired[dict[str, Any]]


class RtpCodecMappingDump(TypedDict):
    payloadType: int
    mappedPayloadType: int


class RtpEncodingMappingDump(TypedDict):
    rid: str | None
    ssrc: int | None
    scalabilityMode: str | None
    mappedSsrc: int


class RtpMappingDump(TypedDict):
    codecs: list[RtpCodecMappingDump]
    encodings: list[RtpEncodingMappingDump]


class ProducerRtpStreamParamsDump(TypedDict):
    encodingIdx: int
    ssrc: int
    payloadType: int
    mimeType: str
    clockRate: int
    rid: str | None
    cname: str
    rtxSsrc: int | None
    rtxPayloadType: int | None
    useNack: bool
    usePli: bool
    useFir: bool
    useInBandFec: bool
    useDtx: bool
    spatialLayers: int
    temporalLayers: int


class ProducerRtxStreamParamsDump(TypedDict):
    ssrc: int
    payloadType: int
    mimeType: str
    clockRate: int
    rrid: str | None
    cname: str


class ProducerRtxStreamDump(TypedDict):
    params: ProducerRtxStreamParamsDump


class ProducerRtpStreamDump(TypedDict):
    params: ProducerRtpStreamParamsDump
    score: int
    rtxStream: ProducerRtxStreamDump | None


class ProducerDump(TypedDict):
    id: str
    kind: MediaKind
    type: ProducerType
    rtpParameters: RtpParameters
    rtpMapping: NotRequired[RtpMappingDump]
    rtpStreams: NotRequired[list[ProducerRtpStreamDump]]
    traceEventTypes: list[ProducerTraceEventType]
    paused: bool


_PRODUCER_TYPE_FROM_FBS: dict[int, ProducerType] = {
    FbsRtpType.SIMPLE: "simple",
    FbsRtpType.SIMULCAST: "simulcast",
    FbsRtpType.SVC: "svc",
}
_PRODUCER_TYPE_TO_FBS: dict[str, int] = {v: k for k, v in _PRODUCER_TYPE_FROM_FBS.items()}

_TRACE_EVENT_TYPE_TO_FBS: dict[str, int] = {
    "keyframe": FbsTraceEventType.KEYFRAME,
    "fir": FbsTraceEventType.FIR,
    "nack": FbsTraceEventType.NACK,
    "pli": FbsTraceEventType.PLI,
    "rtp": FbsTraceEventType.RTP,
    "sr": FbsTraceEventType.SR,
}
_TRACE_EVENT_TYPE_FROM_FBS: dict[int, ProducerTraceEventType] = {
    v: cast(ProducerTraceEventType, k) for k, v in _TRACE_EVENT_TYPE_TO_FBS.items()
}


def producer_type_from_fbs(value: int) -> ProducerType:
    try:
        return _PRODUCER_TYPE_FROM_FBS[value]
    except KeyError:
        raise TypeError(f"invalid FbsRtpParameters.Type: {value}") from None


def producer_type_to_fbs(value: str) -> int:
    try:
        return _PRODUCER_TYPE_TO_FBS[value]
    except KeyError:
        raise TypeError(f"invalid ProducerType: {value!r}") from None


def media_kind_from_fbs(value: int) -> MediaKind:
    return "audio" if value == FbsMediaKind.AUDIO else "video"


def unpack_fbs(value: Any) -> Any:
    """A generated object-API value as plain data, every field kept (as Node's ``unpack()``).

    Tables become dicts keyed by their (camelCase) field names, vectors lists; absent
    fields are None. Union discriminators (``xxxType``) are dropped: the value says it.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes | bytearray):
        return list(value)
    if isinstance(value, list | tuple):
        return [unpack_fbs(item) for item in value]
    if hasattr(value, "tolist"):  # a numpy vector, when numpy is installed
        return value.tolist()
    fields = vars(value)
    return {
        name: unpack_fbs(field)
        for name, field in fields.items()
        if not (name.endswith("Type") and name[:-4] in fields and isinstance(field, int))
    }


def trace_direction_from_fbs(value: int) -> TraceEventDirection:
    return "in" if value == FbsTraceDirection.DIRECTION_IN else "out"


def parse_producer_dump(dump: Any) -> ProducerDump:
    result: ProducerDump = {
        "id": dump.id,
        "kind": media_kind_from_fbs(dump.kind),
        "type": producer_type_from_fbs(dump.type),
        "rtpParameters": parse_rtp_parameters(dump.rtpParameters),
        "traceEventTypes": trace_event_types_from_fbs(
            dump.traceEventTypes, _TRACE_EVENT_TYPE_FROM_FBS
        ),
        "paused": bool(dump.paused),
    }
    if dump.rtpMapping is not None:
        result["rtpMapping"] = cast(RtpMappingDump, unpack_fbs(dump.rtpMapping))
    if dump.rtpStreams:
        result["rtpStreams"] = cast(list[ProducerRtpStreamDump], unpack_fbs(dump.rtpStreams))
    return result


def parse_producer_score(score: Any) -> ProducerScore:
    result: ProducerScore = {
        "encodingIdx": score.encodingIdx,
        "ssrc": score.ssrc,
        "score": score.score,
    }
    if score.rid is not None:
        result["rid"] = score.rid
    return result


def parse_trace_event_data(trace: Any) -> ProducerTraceEventData:
    data: ProducerTraceEventData = {
        "type": _TRACE_EVENT_TYPE_FROM_FBS[int(trace.type)],
        "timestamp": int(trace.timestamp),
        "direction": trace_direction_from_fbs(trace.direction),
    }
    if trace.info is not None:
        data["info"] = unpack_fbs(trace.info)
    return data


class _SendNotificationT(FbsSendNotification.SendNotificationT):  # type: ignore[misc]
    """``Producer.SendNotificationT`` packing its payload in one copy.

    The generated ``Pack`` prepends a vector byte by byte (~2 ms for a 1200 byte packet
    without numpy); this one uses ``CreateByteVector``. The channel derives the union tag
    from the class's module, hence ``__module__``.
    """

    __module__ = FbsSendNotification.SendNotificationT.__module__

    def Pack(self, builder: Any) -> int:  # noqa: N802 - generated API
        data = builder.CreateByteVector(self.data)
        FbsSendNotification.SendNotificationStart(builder)
        FbsSendNotification.SendNotificationAddData(builder, data)
        return cast(int, FbsSendNotification.SendNotificationEnd(builder))


class Producer(EventSource):
    """An audio or video source in a transport. Created by ``Transport.produce()``."""

    def __init__(
        self,
        *,
        transport_id: str,
        producer_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        type: ProducerType,
        consumable_rtp_parameters: RtpParameters,
        channel: Channel,
        app_data: dict[str, Any] | None,
        paused: bool,
    ) -> None:
        self._transport_id = transport_id
        self._id = producer_id
        self._kind: MediaKind = kind
        self._rtp_parameters = rtp_parameters
        self._type: ProducerType = type
        self._consumable_rtp_parameters = consumable_rtp_parameters
        self._channel = channel
        self._closed = False
        self._paused = paused
        self._score: list[ProducerScore] = []
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self.events = EventEmitter()
        self.observer = EventEmitter()
        channel.subscribe(producer_id, self._on_notification)

    # -- properties ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def kind(self) -> MediaKind:
        return self._kind

    @property
    def rtp_parameters(self) -> RtpParameters:
        return self._rtp_parameters

    @property
    def type(self) -> ProducerType:
        return self._type

    @property
    def consumable_rtp_parameters(self) -> RtpParameters:
        """The RTP parameters consumers of this producer are offered (library internal)."""
        return self._consumable_rtp_parameters

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def score(self) -> list[ProducerScore]:
        return self._score

    @property
    def channel_for_testing(self) -> Channel:
        return self._channel

    # -- events -------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<Producer id={self._id} kind={self._kind} type={self._type}"
            f" paused={self._paused} closed={self._closed}>"
        )

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        """Close the producer (its consumers get 'producerclose')."""
        if self._closed:
            return
        logger.debug("close() [id:%s]", self._id)
        self._closed = True
        self._channel.unsubscribe(self._id)
        self._channel.request_nowait(
            Method.TRANSPORT_CLOSE_PRODUCER,
            self._transport_id,
            CloseProducerRequestT(producerId=self._id),
        )
        self.events.emit("@close")
        self.observer.emit("close")

    def transport_closed(self) -> None:
        """The transport closed (called by the Transport)."""
        if self._closed:
            return
        logger.debug("transport_closed() [id:%s]", self._id)
        self._closed = True
        self._channel.unsubscribe(self._id)
        self.events.emit("transportclose")
        self.observer.emit("close")

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Producer closed")

    # -- requests -----------------------------------------------------------------

    async def dump(self) -> ProducerDump:
        self._check_open()
        body = await self._channel.request(Method.PRODUCER_DUMP, self._id)
        return parse_producer_dump(body)

    async def get_stats(self) -> list[ProducerStat]:
        self._check_open()
        body = await self._channel.request(Method.PRODUCER_GET_STATS, self._id)
        stats = body.stats if body is not None and body.stats is not None else []
        return [parse_rtp_stream_recv_stats(s) for s in stats]

    async def pause(self) -> None:
        self._check_open()
        await self._channel.request(Method.PRODUCER_PAUSE, self._id)
        was_paused = self._paused
        self._paused = True
        if not was_paused:
            self.observer.emit("pause")

    async def resume(self) -> None:
        self._check_open()
        await self._channel.request(Method.PRODUCER_RESUME, self._id)
        was_paused = self._paused
        self._paused = False
        if was_paused:
            self.observer.emit("resume")

    async def enable_trace_event(self, types: Sequence[ProducerTraceEventType] = ()) -> None:
        """Enable the 'trace' event for these types (unknown type names are ignored)."""
        fbs_types = trace_event_types_to_fbs(types, _TRACE_EVENT_TYPE_TO_FBS)
        self._check_open()
        await self._channel.request(
            Method.PRODUCER_ENABLE_TRACE_EVENT,
            self._id,
            EnableTraceEventRequestT(events=fbs_types),
        )

    def send(self, rtp_packet: bytes | bytearray | memoryview) -> None:
        """Send an RTP packet (only for producers of a DirectTransport)."""
        if not isinstance(rtp_packet, bytes | bytearray | memoryview):
            raise TypeError("rtp_packet must be bytes")
        self._check_open()
        self._channel.notify(
            Event.PRODUCER_SEND, self._id, _SendNotificationT(data=bytes(rtp_packet))
        )

    # -- notifications --------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        if event == Event.PRODUCER_SCORE:
            scores = body.scores if body is not None and body.scores is not None else []
            score = [parse_producer_score(s) for s in scores]
            self._score = score
            self.events.emit("score", score)
            self.observer.emit("score", score)
        elif event == Event.PRODUCER_VIDEO_ORIENTATION_CHANGE:
            orientation: ProducerVideoOrientation = {
                "camera": bool(body.camera),
                "flip": bool(body.flip),
                "rotation": body.rotation,
            }
            self.events.emit("videoorientationchange", orientation)
            self.observer.emit("videoorientationchange", orientation)
        elif event == Event.PRODUCER_TRACE:
            trace = parse_trace_event_data(body)
            self.events.emit("trace", trace)
            self.observer.emit("trace", trace)
        else:
            logger.error("ignoring unknown event %s", event)


def trace_event_types_from_fbs(values: Any, mapping: dict[int, Any]) -> list[Any]:
    """The names of the trace event types a dump lists (unknown values are skipped)."""
    if values is None:
        return []
    return [mapping[int(v)] for v in values if int(v) in mapping]


def trace_event_types_to_fbs(types: Any, mapping: dict[str, int]) -> list[int]:
    """Validate ``types`` (a list of strings) and map the known ones to FlatBuffers values."""
    if isinstance(types, str) or not isinstance(types, Sequence):
        raise TypeError("types must be a list of strings")
    if any(not isinstance(t, str) for t in types):
        raise TypeError("every type must be a string")
    fbs_types: list[int] = []
    for name in types:
        value = mapping.get(name)
        if value is None:
            logger.warning("enable_trace_event() | ignoring invalid trace event type %r", name)
        else:
            fbs_types.append(value)
    return fbs_types
