"""Consumer: media a transport sends to an endpoint from a producer (mediasoup's Consumer)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, NotRequired, TypedDict, cast

from mafalda.mediasoup._fbs.Consumer.ConsumerLayers import ConsumerLayersT
from mafalda.mediasoup._fbs.Consumer.EnableTraceEventRequest import EnableTraceEventRequestT
from mafalda.mediasoup._fbs.Consumer.SetPreferredLayersRequest import SetPreferredLayersRequestT
from mafalda.mediasoup._fbs.Consumer.SetPriorityRequest import SetPriorityRequestT
from mafalda.mediasoup._fbs.Consumer.TraceEventType import TraceEventType as FbsTraceEventType
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.RtpParameters.Type import Type as FbsRtpType
from mafalda.mediasoup._fbs.Transport.CloseConsumerRequest import CloseConsumerRequestT
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.producer import (
    TraceEventDirection,
    media_kind_from_fbs,
    trace_direction_from_fbs,
    trace_event_types_from_fbs,
    trace_event_types_to_fbs,
    unpack_fbs,
)
from mafalda.mediasoup.rtp_parameters import (
    MediaKind,
    RtpEncodingParameters,
    RtpParameters,
    parse_rtp_encoding_parameters,
    parse_rtp_parameters,
)
from mafalda.mediasoup.rtp_stream_stats import (
    RtpStreamRecvStats,
    RtpStreamSendStats,
    parse_rtp_stream_stats,
)

if TYPE_CHECKING:
    from mafalda.mediasoup.channel import Channel

__all__ = [
    "BaseConsumerDump",
    "Consumer",
    "ConsumerDump",
    "ConsumerLayers",
    "ConsumerScore",
    "ConsumerStat",
    "ConsumerTraceEventData",
    "ConsumerTraceEventType",
    "ConsumerType",
    "PipeConsumerDump",
    "RtpStreamDump",
    "RtpStreamParametersDump",
    "RtxStreamDump",
    "RtxStreamParameters",
    "SimpleConsumerDump",
    "SimulcastConsumerDump",
    "SvcConsumerDump",
]

logger = logging.getLogger("mafalda.mediasoup.consumer")

ConsumerType = Literal["simple", "simulcast", "svc", "pipe"]
ConsumerTraceEventType = Literal["rtp", "keyframe", "nack", "pli", "fir"]
ConsumerStat = RtpStreamSendStats


class ConsumerScore(TypedDict):
    #: Score of the RTP stream of the consumer.
    score: int
    #: Score of the currently selected RTP stream of the producer.
    producerScore: int
    #: Scores of all RTP streams of the producer, by encoding.
    producerScores: list[int]


class ConsumerLayers(TypedDict):
    spatialLayer: int
    temporalLayer: NotRequired[int]


class ConsumerTraceEventData(TypedDict):
    type: ConsumerTraceEventType
    timestamp: int
    direction: TraceEventDirection
    #: Per type information (absent when the worker sent none), as the worker's table.
    info: NotRequired[dict[str, Any]]


class RtxStreamParameters(TypedDict):
    ssrc: int
    payloadType: int
    mimeType: str
    clockRate: int
    rrid: NotRequired[str]
    cname: str


class RtxStreamDump(TypedDict):
    params: RtxStreamParameters


class RtpStreamParametersDump(TypedDict):
    encodingIdx: int
    ssrc: int
    payloadType: int
    mimeType: str
    clockRate: int
    rid: NotRequired[str]
    cname: str
    rtxSsrc: NotRequired[int]
    rtxPayloadType: NotRequired[int]
    useNack: bool
    usePli: bool
    useFir: bool
    useInBandFec: bool
    useDtx: bool
    spatialLayers: int
    temporalLayers: int


class RtpStreamDump(TypedDict):
    params: RtpStreamParametersDump
    score: int
    rtxStream: NotRequired[RtxStreamDump]


class BaseConsumerDump(TypedDict):
    id: str
    producerId: str
    kind: MediaKind
    rtpParameters: RtpParameters
    consumableRtpEncodings: NotRequired[list[RtpEncodingParameters]]
    traceEventTypes: list[ConsumerTraceEventType]
    supportedCodecPayloadTypes: list[int]
    paused: bool
    producerPaused: bool
    priority: int


class SimpleConsumerDump(BaseConsumerDump):
    type: ConsumerType
    rtpStream: RtpStreamDump


class SimulcastConsumerDump(BaseConsumerDump):
    type: ConsumerType
    rtpStream: RtpStreamDump
    preferredSpatialLayer: int
    targetSpatialLayer: int
    currentSpatialLayer: int
    preferredTemporalLayer: int
    targetTemporalLayer: int
    currentTemporalLayer: int


SvcConsumerDump = SimulcastConsumerDump


class PipeConsumerDump(BaseConsumerDump):
    type: ConsumerType
    rtpStreams: list[RtpStreamDump]


ConsumerDump = SimpleConsumerDump | SimulcastConsumerDump | PipeConsumerDump

_CONSUMER_TYPE_FROM_FBS: dict[int, ConsumerType] = {
    FbsRtpType.SIMPLE: "simple",
    FbsRtpType.SIMULCAST: "simulcast",
    FbsRtpType.SVC: "svc",
    FbsRtpType.PIPE: "pipe",
}

_TRACE_EVENT_TYPE_TO_FBS: dict[str, int] = {
    "keyframe": FbsTraceEventType.KEYFRAME,
    "fir": FbsTraceEventType.FIR,
    "nack": FbsTraceEventType.NACK,
    "pli": FbsTraceEventType.PLI,
    "rtp": FbsTraceEventType.RTP,
}
_TRACE_EVENT_TYPE_FROM_FBS: dict[int, ConsumerTraceEventType] = {
    FbsTraceEventType.KEYFRAME: "keyframe",
    FbsTraceEventType.FIR: "fir",
    FbsTraceEventType.NACK: "nack",
    FbsTraceEventType.PLI: "pli",
    FbsTraceEventType.RTP: "rtp",
}


#: Layers and priorities are uint8 on the wire.
_UINT8_MAX = 255


def check_layers(spatial: object, temporal: object, spatial_name: str, temporal_name: str) -> None:
    """TypeError or InvalidValueError naming what is wrong, unless ``spatial`` is a
    layer (0..255) and ``temporal`` is one or None."""
    if not _is_int(spatial):
        raise TypeError(f"{spatial_name} must be an integer")
    if not 0 <= cast(int, spatial) <= _UINT8_MAX:
        raise InvalidValueError(f"{spatial_name} must be in 0..{_UINT8_MAX}, got {spatial}")
    if temporal is not None:
        if not _is_int(temporal):
            raise TypeError(f"if given, {temporal_name} must be an integer")
        if not 0 <= cast(int, temporal) <= _UINT8_MAX:
            raise InvalidValueError(f"{temporal_name} must be in 0..{_UINT8_MAX}, got {temporal}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_consumer_layers(layers: Any) -> ConsumerLayers:
    result: ConsumerLayers = {"spatialLayer": layers.spatialLayer}
    if layers.temporalLayer is not None:
        result["temporalLayer"] = layers.temporalLayer
    return result


def parse_consumer_score(score: Any) -> ConsumerScore:
    return {
        "score": score.score,
        "producerScore": score.producerScore,
        "producerScores": [int(s) for s in (score.producerScores or ())],
    }


def parse_trace_event_data(trace: Any) -> ConsumerTraceEventData:
    data: ConsumerTraceEventData = {
        "type": consumer_trace_event_type_from_fbs(trace.type),
        "timestamp": int(trace.timestamp),
        "direction": trace_direction_from_fbs(trace.direction),
    }
    if trace.info is not None:
        data["info"] = unpack_fbs(trace.info)
    return data


def consumer_trace_event_type_from_fbs(value: int) -> ConsumerTraceEventType:
    try:
        return _TRACE_EVENT_TYPE_FROM_FBS[int(value)]
    except KeyError:
        raise TypeError(f"invalid FbsConsumer.TraceEventType: {value}") from None


def _parse_rtx_stream(rtx: Any) -> RtxStreamDump:
    p = rtx.params
    params: RtxStreamParameters = {
        "ssrc": p.ssrc,
        "payloadType": p.payloadType,
        "mimeType": p.mimeType,
        "clockRate": p.clockRate,
        "cname": p.cname,
    }
    if p.rrid:
        params["rrid"] = p.rrid
    return {"params": params}


def parse_rtp_stream(stream: Any) -> RtpStreamDump:
    p = stream.params
    params: RtpStreamParametersDump = {
        "encodingIdx": p.encodingIdx,
        "ssrc": p.ssrc,
        "payloadType": p.payloadType,
        "mimeType": p.mimeType,
        "clockRate": p.clockRate,
        "cname": p.cname,
        "useNack": bool(p.useNack),
        "usePli": bool(p.usePli),
        "useFir": bool(p.useFir),
        "useInBandFec": bool(p.useInBandFec),
        "useDtx": bool(p.useDtx),
        "spatialLayers": p.spatialLayers,
        "temporalLayers": p.temporalLayers,
    }
    if p.rid:
        params["rid"] = p.rid
    if p.rtxSsrc is not None:
        params["rtxSsrc"] = p.rtxSsrc
    if p.rtxPayloadType is not None:
        params["rtxPayloadType"] = p.rtxPayloadType
    result: RtpStreamDump = {"params": params, "score": stream.score}
    if stream.rtxStream is not None:
        result["rtxStream"] = _parse_rtx_stream(stream.rtxStream)
    return result


def parse_base_consumer_dump(base: Any) -> BaseConsumerDump:
    result: BaseConsumerDump = {
        "id": base.id,
        "producerId": base.producerId,
        "kind": media_kind_from_fbs(base.kind),
        "rtpParameters": parse_rtp_parameters(base.rtpParameters),
        "traceEventTypes": trace_event_types_from_fbs(
            base.traceEventTypes, _TRACE_EVENT_TYPE_FROM_FBS
        ),
        "supportedCodecPayloadTypes": [int(pt) for pt in (base.supportedCodecPayloadTypes or ())],
        "paused": bool(base.paused),
        "producerPaused": bool(base.producerPaused),
        "priority": base.priority,
    }
    if base.consumableRtpEncodings:
        result["consumableRtpEncodings"] = [
            parse_rtp_encoding_parameters(e) for e in base.consumableRtpEncodings
        ]
    return result


def parse_consumer_dump(dump: Any) -> ConsumerDump:
    """A ``ConsumerDumpT`` (the ``data`` of the DumpResponse) as Node's dump dict."""
    kind = dump.base.type
    if kind not in _CONSUMER_TYPE_FROM_FBS:
        raise TypeError(f"invalid Consumer type: {kind}")
    base = parse_base_consumer_dump(dump.base)
    streams = dump.rtpStreams or []
    if kind == FbsRtpType.SIMPLE:
        return {**base, "type": "simple", "rtpStream": parse_rtp_stream(streams[0])}
    if kind in (FbsRtpType.SIMULCAST, FbsRtpType.SVC):
        return {
            **base,
            "type": _CONSUMER_TYPE_FROM_FBS[kind],
            "rtpStream": parse_rtp_stream(streams[0]),
            "preferredSpatialLayer": dump.preferredSpatialLayer,
            "targetSpatialLayer": dump.targetSpatialLayer,
            "currentSpatialLayer": dump.currentSpatialLayer,
            "preferredTemporalLayer": dump.preferredTemporalLayer,
            "targetTemporalLayer": dump.targetTemporalLayer,
            "currentTemporalLayer": dump.currentTemporalLayer,
        }
    return {**base, "type": "pipe", "rtpStreams": [parse_rtp_stream(s) for s in streams]}


class Consumer(EventSource):
    """Media sent to an endpoint from a producer. Created by ``Transport.consume()``."""

    def __init__(
        self,
        *,
        transport_id: str,
        consumer_id: str,
        producer_id: str,
        kind: MediaKind,
        rtp_parameters: RtpParameters,
        type: ConsumerType,
        channel: Channel,
        app_data: dict[str, Any] | None,
        paused: bool,
        producer_paused: bool,
        score: ConsumerScore | None = None,
        preferred_layers: ConsumerLayers | None = None,
    ) -> None:
        self._transport_id = transport_id
        self._id = consumer_id
        self._producer_id = producer_id
        self._kind: MediaKind = kind
        self._rtp_parameters = rtp_parameters
        self._type: ConsumerType = type
        self._channel = channel
        self._closed = False
        self._paused = paused
        self._producer_paused = producer_paused
        self._priority = 1
        self._score: ConsumerScore = (
            score if score is not None else {"score": 10, "producerScore": 10, "producerScores": []}
        )
        self._preferred_layers = preferred_layers
        self._current_layers: ConsumerLayers | None = None
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self.events = EventEmitter()
        self.observer = EventEmitter()
        channel.subscribe(consumer_id, self._on_notification)

    # -- properties ---------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._id

    @property
    def producer_id(self) -> str:
        return self._producer_id

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
    def type(self) -> ConsumerType:
        return self._type

    @property
    def paused(self) -> bool:
        return self._paused

    @property
    def producer_paused(self) -> bool:
        return self._producer_paused

    @property
    def priority(self) -> int:
        return self._priority

    @property
    def score(self) -> ConsumerScore:
        return self._score

    @property
    def preferred_layers(self) -> ConsumerLayers | None:
        return self._preferred_layers

    @property
    def current_layers(self) -> ConsumerLayers | None:
        return self._current_layers

    @property
    def channel_for_testing(self) -> Channel:
        return self._channel

    # -- events -------------------------------------------------------------------

    def __repr__(self) -> str:
        return (
            f"<Consumer id={self._id} producer_id={self._producer_id} kind={self._kind}"
            f" type={self._type} paused={self._paused} closed={self._closed}>"
        )

    # -- lifecycle ----------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        logger.debug("close() [id:%s]", self._id)
        self._closed = True
        self._channel.unsubscribe(self._id)
        self._channel.request_nowait(
            Method.TRANSPORT_CLOSE_CONSUMER,
            self._transport_id,
            CloseConsumerRequestT(consumerId=self._id),
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
            raise InvalidStateError("Consumer closed")

    # -- requests -----------------------------------------------------------------

    async def dump(self) -> ConsumerDump:
        self._check_open()
        body = await self._channel.request(Method.CONSUMER_DUMP, self._id)
        return parse_consumer_dump(body.data)

    async def get_stats(self) -> list[RtpStreamSendStats | RtpStreamRecvStats]:
        """Stats of the sending stream, then (when the worker adds them) of the producer's."""
        self._check_open()
        body = await self._channel.request(Method.CONSUMER_GET_STATS, self._id)
        stats = body.stats if body is not None and body.stats is not None else []
        return [parse_rtp_stream_stats(s) for s in stats]

    async def pause(self) -> None:
        self._check_open()
        await self._channel.request(Method.CONSUMER_PAUSE, self._id)
        was_paused = self._paused
        self._paused = True
        if not was_paused and not self._producer_paused:
            self.observer.emit("pause")

    async def resume(self) -> None:
        self._check_open()
        await self._channel.request(Method.CONSUMER_RESUME, self._id)
        was_paused = self._paused
        self._paused = False
        if was_paused and not self._producer_paused:
            self.observer.emit("resume")

    async def set_preferred_layers(
        self, *, spatial_layer: int, temporal_layer: int | None = None
    ) -> None:
        """Prefer these layers (simulcast and SVC); the worker clamps them to what exists."""
        check_layers(spatial_layer, temporal_layer, "spatial_layer", "temporal_layer")
        self._check_open()
        layers = ConsumerLayersT(spatialLayer=spatial_layer, temporalLayer=temporal_layer)
        body = await self._channel.request(
            Method.CONSUMER_SET_PREFERRED_LAYERS,
            self._id,
            SetPreferredLayersRequestT(preferredLayers=layers),
        )
        # The response has no body for consumers without layers (simple ones).
        if body is not None and body.preferredLayers is not None:
            self._preferred_layers = parse_consumer_layers(body.preferredLayers)
        else:
            self._preferred_layers = None

    async def set_priority(self, priority: int) -> None:
        """Set the priority (1..255) used to share the available bitrate among consumers."""
        if not _is_int(priority):
            raise TypeError("priority must be an integer")
        if not 1 <= priority <= _UINT8_MAX:
            raise InvalidValueError(f"priority must be in 1..{_UINT8_MAX}, got {priority}")
        self._check_open()
        body = await self._channel.request(
            Method.CONSUMER_SET_PRIORITY, self._id, SetPriorityRequestT(priority=priority)
        )
        self._priority = body.priority

    async def unset_priority(self) -> None:
        await self.set_priority(1)

    async def request_key_frame(self) -> None:
        self._check_open()
        await self._channel.request(Method.CONSUMER_REQUEST_KEY_FRAME, self._id)

    async def enable_trace_event(self, types: Sequence[ConsumerTraceEventType] = ()) -> None:
        """Enable the 'trace' event for these types (unknown type names are ignored)."""
        fbs_types = trace_event_types_to_fbs(types, _TRACE_EVENT_TYPE_TO_FBS)
        self._check_open()
        await self._channel.request(
            Method.CONSUMER_ENABLE_TRACE_EVENT,
            self._id,
            EnableTraceEventRequestT(events=fbs_types),
        )

    # -- notifications --------------------------------------------------------------

    def _on_notification(self, event: int, body: Any) -> None:
        # Closing unsubscribes at once: a closed consumer gets no notification.
        if event == Event.CONSUMER_PRODUCER_CLOSE:
            self._closed = True
            self._channel.unsubscribe(self._id)
            self.events.emit("@producerclose")
            self.events.emit("producerclose")
            self.observer.emit("close")
        elif event == Event.CONSUMER_PRODUCER_PAUSE:
            if self._producer_paused:
                return
            self._producer_paused = True
            self.events.emit("producerpause")
            if not self._paused:
                self.observer.emit("pause")
        elif event == Event.CONSUMER_PRODUCER_RESUME:
            if not self._producer_paused:
                return
            self._producer_paused = False
            self.events.emit("producerresume")
            if not self._paused:
                self.observer.emit("resume")
        elif event == Event.CONSUMER_SCORE:
            score = parse_consumer_score(body.score)
            self._score = score
            self.events.emit("score", score)
            self.observer.emit("score", score)
        elif event == Event.CONSUMER_LAYERS_CHANGE:
            layers = (
                parse_consumer_layers(body.layers)
                if body is not None and body.layers is not None
                else None
            )
            self._current_layers = layers
            self.events.emit("layerschange", layers)
            self.observer.emit("layerschange", layers)
        elif event == Event.CONSUMER_TRACE:
            trace = parse_trace_event_data(body)
            self.events.emit("trace", trace)
            self.observer.emit("trace", trace)
        elif event == Event.CONSUMER_RTP:
            self.events.emit("rtp", bytes(body.data or b""))
        else:
            logger.error("ignoring unknown event %s", event)
