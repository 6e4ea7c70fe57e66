"""mafalda.mediasoup: mediasoup's server API in Python, driving mediasoup-worker 3.19.19.

    import asyncio
    from mafalda import mediasoup

    async def main() -> None:
        worker = await mediasoup.create_worker()
        router = await worker.create_router(media_codecs=[...])
        ...
        worker.close()

Same classes, methods, events and wire dicts as mediasoup's Node.js library, with Python
names (snake_case methods and keyword arguments; camelCase keys inside wire dicts).
"""

from __future__ import annotations

import os

from mafalda.mediasoup import ortc, types
from mafalda.mediasoup.active_speaker_observer import ActiveSpeakerObserver
from mafalda.mediasoup.audio_level_observer import AudioLevelObserver
from mafalda.mediasoup.consumer import Consumer
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.direct_transport import DirectTransport
from mafalda.mediasoup.emitter import EventEmitter
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
from mafalda.mediasoup.log_events import LogEventListeners, set_log_event_listeners
from mafalda.mediasoup.pipe_transport import PipeTransport
from mafalda.mediasoup.plain_transport import PlainTransport
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.router import Router
from mafalda.mediasoup.rtp_observer import RtpObserver
from mafalda.mediasoup.rtp_parameters import (
    MediaKind,
    RouterRtpCodecCapability,
    RtcpFeedback,
    RtcpParameters,
    RtpCapabilities,
    RtpCodecCapability,
    RtpCodecParameters,
    RtpEncodingParameters,
    RtpHeaderExtension,
    RtpHeaderExtensionParameters,
    RtpParameters,
)
from mafalda.mediasoup.scalability_modes import parse_scalability_mode
from mafalda.mediasoup.sctp_parameters import (
    NumSctpStreams,
    SctpCapabilities,
    SctpParameters,
    SctpStreamParameters,
)
from mafalda.mediasoup.srtp_parameters import SrtpCryptoSuite, SrtpParameters
from mafalda.mediasoup.supported_rtp_capabilities import get_supported_rtp_capabilities
from mafalda.mediasoup.transport import ListenInfo, Transport, TransportListenInfo, TransportTuple
from mafalda.mediasoup.webrtc_server import WebRtcServer
from mafalda.mediasoup.webrtc_transport import WebRtcTransport
from mafalda.mediasoup.worker import (
    Worker,
    WorkerDiedError,
    WorkerDump,
    WorkerLogLevel,
    WorkerLogTag,
    WorkerResourceUsage,
    create_worker,
    observer,
)
from mafalda.mediasoup.worker_binary import (
    WORKER_VERSION,
    WorkerBinaryNotFoundError,
    cached_worker_bin,
    find_worker_bin,
)

#: The mediasoup version whose API and worker this package implements.
version = WORKER_VERSION


__all__ = [
    "ActiveSpeakerObserver",
    "AudioLevelObserver",
    "ChannelClosedError",
    "ChannelTimeoutError",
    "Consumer",
    "DataConsumer",
    "DataProducer",
    "DirectTransport",
    "EventEmitter",
    "InvalidStateError",
    "InvalidValueError",
    "ListenInfo",
    "LogEventListeners",
    "MediaKind",
    "MediasoupError",
    "NumSctpStreams",
    "PipeTransport",
    "PlainTransport",
    "Producer",
    "Router",
    "RouterRtpCodecCapability",
    "RtcpFeedback",
    "RtcpParameters",
    "RtpCapabilities",
    "RtpCodecCapability",
    "RtpCodecParameters",
    "RtpEncodingParameters",
    "RtpHeaderExtension",
    "RtpHeaderExtensionParameters",
    "RtpObserver",
    "RtpParameters",
    "SctpCapabilities",
    "SctpParameters",
    "SctpStreamParameters",
    "SrtpCryptoSuite",
    "SrtpParameters",
    "Transport",
    "TransportListenInfo",
    "TransportTuple",
    "UnsupportedError",
    "WebRtcServer",
    "WebRtcTransport",
    "Worker",
    "WorkerBinaryNotFoundError",
    "WorkerDiedError",
    "WorkerDump",
    "WorkerError",
    "WorkerLogLevel",
    "WorkerLogTag",
    "WorkerResourceUsage",
    "WorkerTypeError",
    "create_worker",
    "find_worker_bin",
    "get_supported_rtp_capabilities",
    "observer",
    "ortc",
    "parse_scalability_mode",
    "set_log_event_listeners",
    "types",
    "version",
    "worker_bin",
]


def __getattr__(name: str) -> str:
    # mediasoup's `workerBin`: the binary the next worker starts, whether it is there or
    # not (find_worker_bin() checks it). Read when asked: MEDIASOUP_WORKER_BIN may be set
    # after this import.
    if name == "worker_bin":
        return os.environ.get("MEDIASOUP_WORKER_BIN") or str(cached_worker_bin())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
