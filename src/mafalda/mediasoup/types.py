"""Every public type of mafalda.mediasoup in one place, as mediasoup's ``types``
namespace (``import type { types } from 'mediasoup'``):

    from mafalda.mediasoup import types

    def on_dump(dump: types.WebRtcTransportDump) -> None: ...

The object classes and errors, the wire dicts (TypedDicts, camelCase keys as the
worker's JSON) and the string sets (Literal aliases). Each is the one its own module
defines; this module only gathers them.
"""

from __future__ import annotations

from typing import Any

from mafalda.mediasoup.active_speaker_observer import (
    ActiveSpeakerObserver,
    ActiveSpeakerObserverDominantSpeaker,
)
from mafalda.mediasoup.audio_level_observer import (
    AudioLevelObserver,
    AudioLevelObserverVolume,
)
from mafalda.mediasoup.consumer import (
    BaseConsumerDump,
    Consumer,
    ConsumerLayers,
    ConsumerScore,
    ConsumerTraceEventData,
    ConsumerTraceEventType,
    ConsumerType,
    PipeConsumerDump,
    RtpStreamDump,
    RtpStreamParametersDump,
    RtxStreamDump,
    RtxStreamParameters,
    SimpleConsumerDump,
    SimulcastConsumerDump,
    SvcConsumerDump,
)
from mafalda.mediasoup.data_consumer import (
    DataConsumer,
    DataConsumerDump,
    DataConsumerStat,
    DataConsumerType,
)
from mafalda.mediasoup.data_producer import (
    DataProducer,
    DataProducerDump,
    DataProducerStat,
    DataProducerType,
)
from mafalda.mediasoup.direct_transport import (
    DirectTransport,
)
from mafalda.mediasoup.errors import (
    ChannelClosedError,
    ChannelTimeoutError,
    InvalidStateError,
    InvalidValueError,
    MediasoupError,
    UnsupportedError,
    WorkerError,
    WorkerTypeError,
)
from mafalda.mediasoup.log_events import (
    LogEventListeners,
)
from mafalda.mediasoup.ortc import (
    RtpCodecMapping,
    RtpCodecsEncodingsMapping,
    RtpEncodingMapping,
)
from mafalda.mediasoup.pipe_transport import (
    PipeTransport,
    PipeTransportDump,
    PipeTransportStat,
)
from mafalda.mediasoup.plain_transport import (
    PlainTransport,
    PlainTransportDump,
    PlainTransportStat,
)
from mafalda.mediasoup.producer import (
    Producer,
    ProducerDump,
    ProducerRtpStreamDump,
    ProducerRtpStreamParamsDump,
    ProducerRtxStreamDump,
    ProducerRtxStreamParamsDump,
    ProducerScore,
    ProducerTraceEventData,
    ProducerTraceEventType,
    ProducerType,
    ProducerVideoOrientation,
    RtpCodecMappingDump,
    RtpEncodingMappingDump,
    RtpMappingDump,
    TraceEventDirection,
)
from mafalda.mediasoup.router import (
    PipeToRouterResult,
    Router,
    RouterDump,
)
from mafalda.mediasoup.rtp_observer import (
    RtpObserver,
    RtpObserverType,
)
from mafalda.mediasoup.rtp_parameters import (
    MediaKind,
    RouterRtpCapabilities,
    RouterRtpCodecCapability,
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpEncodingRtx,
    RtpHeaderExtension,
    RtpHeaderExtensionDirection,
    RtpHeaderExtensionParameters,
    RtpHeaderExtensionUri,
    RtpParameters,
)
from mafalda.mediasoup.rtp_stream_stats import (
    BaseRtpStreamStats,
    RtpStreamRecvStats,
    RtpStreamSendStats,
)
from mafalda.mediasoup.scalability_modes import (
    ScalabilityMode,
)
from mafalda.mediasoup.sctp_parameters import (
    NumSctpStreams,
    SctpCapabilities,
    SctpParameters,
    SctpParametersDump,
    SctpStreamParameters,
)
from mafalda.mediasoup.srtp_parameters import (
    SrtpCryptoSuite,
    SrtpParameters,
)
from mafalda.mediasoup.transport import (
    BaseTransportDump,
    BaseTransportStats,
    ListenInfo,
    RecvRtpHeaderExtensions,
    RtpListenerDump,
    SctpListenerDump,
    SctpState,
    Transport,
    TransportListenInfo,
    TransportListenIp,
    TransportPortRange,
    TransportProtocol,
    TransportSocketFlags,
    TransportTraceEventData,
    TransportTraceEventType,
    TransportTuple,
    TransportType,
)
from mafalda.mediasoup.webrtc_server import (
    IceUserNameFragment,
    IpPort,
    TupleHash,
    WebRtcServer,
    WebRtcServerDump,
)
from mafalda.mediasoup.webrtc_transport import (
    DtlsFingerprint,
    DtlsParameters,
    DtlsRole,
    DtlsState,
    FingerprintAlgorithm,
    IceCandidate,
    IceCandidateTcpType,
    IceCandidateType,
    IceParameters,
    IceRole,
    IceState,
    WebRtcTransport,
    WebRtcTransportDump,
    WebRtcTransportStat,
)
from mafalda.mediasoup.worker import (
    ChannelMessageHandlers,
    LiburingDump,
    Worker,
    WorkerDiedError,
    WorkerDump,
    WorkerLogLevel,
    WorkerLogTag,
    WorkerResourceUsage,
)

#: What ``app_data`` holds (mediasoup's ``AppData``): the application's own keys.
AppData = dict[str, Any]

__all__ = [
    "ActiveSpeakerObserver",
    "ActiveSpeakerObserverDominantSpeaker",
    "AppData",
    "AudioLevelObserver",
    "AudioLevelObserverVolume",
    "BaseConsumerDump",
    "BaseRtpStreamStats",
    "BaseTransportDump",
    "BaseTransportStats",
    "ChannelClosedError",
    "ChannelMessageHandlers",
    "ChannelTimeoutError",
    "Consumer",
    "ConsumerLayers",
    "ConsumerScore",
    "ConsumerTraceEventData",
    "ConsumerTraceEventType",
    "ConsumerType",
    "DataConsumer",
    "DataConsumerDump",
    "DataConsumerStat",
    "DataConsumerType",
    "DataProducer",
    "DataProducerDump",
    "DataProducerStat",
    "DataProducerType",
    "DirectTransport",
    "DtlsFingerprint",
    "DtlsParameters",
    "DtlsRole",
    "DtlsState",
    "FingerprintAlgorithm",
    "IceCandidate",
    "IceCandidateTcpType",
    "IceCandidateType",
    "IceParameters",
    "IceRole",
    "IceState",
    "IceUserNameFragment",
    "InvalidStateError",
    "InvalidValueError",
    "IpPort",
    "LiburingDump",
    "ListenInfo",
    "LogEventListeners",
    "MediaKind",
    "MediasoupError",
    "NumSctpStreams",
    "PipeConsumerDump",
    "PipeToRouterResult",
    "PipeTransport",
    "PipeTransportDump",
    "PipeTransportStat",
    "PlainTransport",
    "PlainTransportDump",
    "PlainTransportStat",
    "Producer",
    "ProducerDump",
    "ProducerRtpStreamDump",
    "ProducerRtpStreamParamsDump",
    "ProducerRtxStreamDump",
    "ProducerRtxStreamParamsDump",
    "ProducerScore",
    "ProducerTraceEventData",
    "ProducerTraceEventType",
    "ProducerType",
    "ProducerVideoOrientation",
    "RecvRtpHeaderExtensions",
    "Router",
    "RouterDump",
    "RouterRtpCapabilities",
    "RouterRtpCodecCapability",
    "RtcpFeedback",
    "RtcpParameters",
    "RtpCapabilities",
    "RtpCodecCapability",
    "RtpCodecMapping",
    "RtpCodecMappingDump",
    "RtpCodecParameters",
    "RtpCodecsEncodingsMapping",
    "RtpEncodingMapping",
    "RtpEncodingMappingDump",
    "RtpEncodingParameters",
    "RtpEncodingRtx",
    "RtpHeaderExtension",
    "RtpHeaderExtensionDirection",
    "RtpHeaderExtensionParameters",
    "RtpHeaderExtensionUri",
    "RtpListenerDump",
    "RtpMappingDump",
    "RtpObserver",
    "RtpObserverType",
    "RtpParameters",
    "RtpStreamDump",
    "RtpStreamParametersDump",
    "RtpStreamRecvStats",
    "RtpStreamSendStats",
    "RtxStreamDump",
    "RtxStreamParameters",
    "ScalabilityMode",
    "SctpCapabilities",
    "SctpListenerDump",
    "SctpParameters",
    "SctpParametersDump",
    "SctpState",
    "SctpStreamParameters",
    "SimpleConsumerDump",
    "SimulcastConsumerDump",
    "SrtpCryptoSuite",
    "SrtpParameters",
    "SvcConsumerDump",
    "TraceEventDirection",
    "Transport",
    "TransportListenInfo",
    "TransportListenIp",
    "TransportPortRange",
    "TransportProtocol",
    "TransportSocketFlags",
    "TransportTraceEventData",
    "TransportTraceEventType",
    "TransportTuple",
    "TransportType",
    "TupleHash",
    "UnsupportedError",
    "WebRtcServer",
    "WebRtcServerDump",
    "WebRtcTransport",
    "WebRtcTransportDump",
    "WebRtcTransportStat",
    "Worker",
    "WorkerDiedError",
    "WorkerDump",
    "WorkerError",
    "WorkerLogLevel",
    "WorkerLogTag",
    "WorkerResourceUsage",
    "WorkerTypeError",
]
