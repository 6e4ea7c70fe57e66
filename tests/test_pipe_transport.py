"""PipeTransport against real workers (port of mediasoup's test-PipeTransport.ts, plus
RTP from a Python socket piped across two workers and counted on the far side)."""

from __future__ import annotations

import asyncio
import os
import signal
import struct
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import flatbuffers
import pytest

from mafalda.mediasoup import (
    DataProducer,
    PipeTransport,
    Producer,
    Router,
    WebRtcTransport,
    Worker,
)
from mafalda.mediasoup._fbs.Common.TraceDirection import TraceDirection
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.SctpAssociation.SctpState import SctpState as FbsSctpState
from mafalda.mediasoup._fbs.Transport.SctpStateChangeNotification import (
    SctpStateChangeNotificationT,
)
from mafalda.mediasoup._fbs.Transport.TraceEventType import TraceEventType
from mafalda.mediasoup._fbs.Transport.TraceNotification import TraceNotificationT
from mafalda.mediasoup.channel import REQUEST_TIMEOUT, Channel, encode_notification
from mafalda.mediasoup.errors import ChannelTimeoutError, InvalidStateError, WorkerError
from mafalda.mediasoup.pipe_transport import open_pipe_pair
from mafalda.mediasoup.router import PipeToRouterResult
from tests.processes import free_ports

from .conftest import opus_rtp_parameters

KEY_GCM_256 = "YTdjcDBvY2JoMGY5YXNlNDc0eDJsdGgwaWRvNnJsamRrdG16aWVpZHphdHo="  # 44 bytes
KEY_AES_CM = "ZnQ3eWJraDg0d3ZoYzM5cXN1Y2pnaHU5NWxrZTVv"  # 30 bytes

MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
]

AUDIO_PRODUCER_OPTIONS: dict[str, Any] = {
    "kind": "audio",
    "rtp_parameters": {
        "mid": "AUDIO",
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": 111,
                "clockRate": 48000,
                "channels": 2,
                "parameters": {"useinbandfec": 1, "foo": "bar1"},
            }
        ],
        "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10}],
        "encodings": [{"ssrc": 11111111}],
        "rtcp": {"cname": "FOOBAR"},
    },
    "app_data": {"foo": "bar1"},
}

VIDEO_PRODUCER_OPTIONS: dict[str, Any] = {
    "kind": "video",
    "rtp_parameters": {
        "mid": "VIDEO",
        "codecs": [
            {
                "mimeType": "video/VP8",
                "payloadType": 112,
                "clockRate": 90000,
                "rtcpFeedback": [
                    {"type": "nack"},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "goog-remb"},
                    {"type": "lalala"},
                ],
            }
        ],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10},
            {"uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", "id": 11},
            {"uri": "urn:3gpp:video-orientation", "id": 13},
        ],
        "encodings": [{"ssrc": 22222222}, {"ssrc": 22222223}, {"ssrc": 22222224}],
        "rtcp": {"cname": "FOOBAR"},
        "msid": "aaaa-bbbb",
    },
    "app_data": {"foo": "bar2"},
}

DATA_PRODUCER_OPTIONS: dict[str, Any] = {
    "sctp_stream_parameters": {"streamId": 666, "ordered": False, "maxPacketLifeTime": 5000},
    "label": "foo",
    "protocol": "bar",
}

CONSUMER_DEVICE_CAPABILITIES: dict[str, Any] = {
    "codecs": [
        {
            "kind": "audio",
            "mimeType": "audio/opus",
            "preferredPayloadType": 100,
            "clockRate": 48000,
            "channels": 2,
        },
        {
            "kind": "video",
            "mimeType": "video/VP8",
            "preferredPayloadType": 101,
            "clockRate": 90000,
            "rtcpFeedback": [
                {"type": "nack"},
                {"type": "ccm", "parameter": "fir"},
                {"type": "transport-cc"},
            ],
        },
        {
            "kind": "video",
            "mimeType": "video/rtx",
            "preferredPayloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ],
    "headerExtensions": [
        {
            "kind": "video",
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "preferredId": 4,
            "preferredEncrypt": False,
            "direction": "sendrecv",
        },
        {
            "kind": "video",
            "uri": "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
            "preferredId": 5,
            "preferredEncrypt": False,
        },
        {
            "kind": "audio",
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "preferredId": 6,
            "preferredEncrypt": False,
        },
    ],
}


def ext(uri: str, id: int) -> dict[str, Any]:
    return {"uri": uri, "id": id, "encrypt": False, "parameters": {}}


DD = "https://aomediacodec.github.io/av1-rtp-spec/#dependency-descriptor-rtp-header-extension"
ABS_CAPTURE_TIME = "http://www.webrtc.org/experiments/rtp-hdrext/abs-capture-time"
PLAYOUT_DELAY = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay"
PACKET_ID = "urn:mediasoup:params:rtp-hdrext:packet-id"

AUDIO_PIPE_HEADER_EXTENSIONS = [
    ext("urn:ietf:params:rtp-hdrext:ssrc-audio-level", 6),
    ext(DD, 7),
    ext(ABS_CAPTURE_TIME, 10),
    ext(PLAYOUT_DELAY, 11),
    ext(PACKET_ID, 12),
]
VIDEO_PIPE_HEADER_EXTENSIONS = [
    ext(DD, 7),
    ext("urn:3gpp:video-orientation", 8),
    ext("urn:ietf:params:rtp-hdrext:toffset", 9),
    ext(ABS_CAPTURE_TIME, 10),
    ext(PLAYOUT_DELAY, 11),
    ext(PACKET_ID, 12),
]


def inject(channel: Channel, event: int, handler_id: str, body: Any = None) -> None:
    """Feed the channel a notification as if the worker had sent it."""
    channel.data_received(encode_notification(flatbuffers.Builder(256), event, handler_id, body))


@dataclass
class Ctx:
    worker1: Worker
    worker2: Worker
    router1: Router
    router2: Router
    webrtc_transport1: WebRtcTransport
    webrtc_transport2: WebRtcTransport
    audio_producer: Producer
    video_producer: Producer
    data_producer: DataProducer


@pytest.fixture
async def ctx(worker: Worker, worker2: Worker) -> Ctx:
    router1 = await worker.create_router(media_codecs=MEDIA_CODECS)
    router2 = await worker2.create_router(media_codecs=MEDIA_CODECS)
    webrtc_transport1 = await router1.create_webrtc_transport(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}], enable_sctp=True
    )
    webrtc_transport2 = await router2.create_webrtc_transport(
        listen_ips=["127.0.0.1"], enable_sctp=True
    )
    return Ctx(
        worker1=worker,
        worker2=worker2,
        router1=router1,
        router2=router2,
        webrtc_transport1=webrtc_transport1,
        webrtc_transport2=webrtc_transport2,
        audio_producer=await webrtc_transport1.produce(**AUDIO_PRODUCER_OPTIONS),
        video_producer=await webrtc_transport1.produce(**VIDEO_PRODUCER_OPTIONS),
        data_producer=await webrtc_transport1.produce_data(**DATA_PRODUCER_OPTIONS),
    )


@pytest.fixture
async def pipe(ctx: Ctx) -> AsyncIterator[PipeTransport]:
    yield await ctx.router1.create_pipe_transport(listen_ip="127.0.0.1")


# -- pipe_to_router ---------------------------------------------------------------------


async def test_pipe_to_router_with_audio(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(producer_id=ctx.audio_producer.id, router=ctx.router2)
    pipe_consumer, pipe_producer = result["pipeConsumer"], result["pipeProducer"]
    # One WebRtcTransport and one PipeTransport in each router.
    assert len((await ctx.router1.dump())["transportIds"]) == 2
    assert len((await ctx.router2.dump())["transportIds"]) == 2
    assert isinstance(pipe_consumer.id, str)
    assert pipe_consumer.closed is False
    assert pipe_consumer.kind == "audio"
    assert "mid" not in pipe_consumer.rtp_parameters
    assert pipe_consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "audio/opus",
            "clockRate": 48000,
            "payloadType": 100,
            "channels": 2,
            "parameters": {"useinbandfec": 1, "foo": "bar1"},
            "rtcpFeedback": [],
        }
    ]
    assert pipe_consumer.rtp_parameters["headerExtensions"] == AUDIO_PIPE_HEADER_EXTENSIONS
    assert pipe_consumer.type == "pipe"
    assert pipe_consumer.paused is False
    assert pipe_consumer.producer_paused is False
    assert pipe_consumer.score == {"score": 10, "producerScore": 10, "producerScores": []}
    assert pipe_consumer.app_data == {}
    assert pipe_producer.id == ctx.audio_producer.id
    assert pipe_producer.closed is False
    assert pipe_producer.kind == "audio"
    assert "mid" not in pipe_producer.rtp_parameters
    assert pipe_producer.rtp_parameters["codecs"] == pipe_consumer.rtp_parameters["codecs"]
    assert pipe_producer.rtp_parameters["headerExtensions"] == AUDIO_PIPE_HEADER_EXTENSIONS
    assert pipe_producer.paused is False


async def test_pipe_to_router_with_video(ctx: Ctx) -> None:
    await ctx.video_producer.pause()
    await ctx.router1.pipe_to_router(producer_id=ctx.audio_producer.id, router=ctx.router2)
    result = await ctx.router1.pipe_to_router(producer_id=ctx.video_producer.id, router=ctx.router2)
    pipe_consumer, pipe_producer = result["pipeConsumer"], result["pipeProducer"]
    # The existing PipeTransport pair is reused.
    assert len((await ctx.router1.dump())["transportIds"]) == 2
    assert len((await ctx.router2.dump())["transportIds"]) == 2
    assert pipe_consumer.kind == "video"
    assert "mid" not in pipe_consumer.rtp_parameters
    codecs = [
        {
            "mimeType": "video/VP8",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": [
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
            ],
        }
    ]
    assert pipe_consumer.rtp_parameters["codecs"] == codecs
    assert pipe_consumer.rtp_parameters["headerExtensions"] == VIDEO_PIPE_HEADER_EXTENSIONS
    # Every consumable encoding goes through the pipe.
    assert len(pipe_consumer.rtp_parameters["encodings"]) == 3
    assert pipe_consumer.type == "pipe"
    assert pipe_consumer.paused is False
    assert pipe_consumer.producer_paused is True
    assert pipe_consumer.score == {"score": 10, "producerScore": 10, "producerScores": []}
    assert pipe_producer.id == ctx.video_producer.id
    assert pipe_producer.kind == "video"
    assert pipe_producer.rtp_parameters["codecs"] == codecs
    assert pipe_producer.rtp_parameters["headerExtensions"] == VIDEO_PIPE_HEADER_EXTENSIONS
    assert pipe_producer.paused is True


async def test_create_pipe_transport_with_wrong_arguments(ctx: Ctx) -> None:
    bad: Any
    with pytest.raises(TypeError):
        await ctx.router1.create_pipe_transport()
    with pytest.raises(ValueError, match="portRange"):
        await ctx.router1.create_pipe_transport(
            listen_info={
                "protocol": "udp",
                "ip": "127.0.0.1",
                "portRange": {"min": 4000, "max": 3000},
            }
        )
    with pytest.raises(ValueError):
        await ctx.router1.create_pipe_transport(listen_ip="123")
    bad = ["127.0.0.1"]
    with pytest.raises(TypeError):
        await ctx.router1.create_pipe_transport(listen_ip=bad)
    with pytest.raises(TypeError):
        await ctx.router1.create_pipe_transport(listen_info={"protocol": "tcp", "ip": "127.0.0.1"})
    bad = "NOT-AN-OBJECT"
    with pytest.raises(TypeError):
        await ctx.router1.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}, app_data=bad
        )


async def test_create_pipe_transport_with_enable_rtx(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 2000, "max": 3000}},
        enable_rtx=True,
    )
    assert pipe_transport.type == "pipe"
    assert pipe_transport.rtx is True
    new_consumers: list[Any] = []
    pipe_transport.observer.once("newconsumer", new_consumers.append)
    pipe_consumer = await pipe_transport.consume(producer_id=ctx.video_producer.id)
    assert new_consumers == [pipe_consumer]
    assert pipe_transport.consumers == {pipe_consumer.id: pipe_consumer}
    assert pipe_consumer.closed is False
    assert pipe_consumer.kind == "video"
    assert "mid" not in pipe_consumer.rtp_parameters
    assert pipe_consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "video/VP8",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
            ],
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ]
    assert pipe_consumer.rtp_parameters["headerExtensions"] == VIDEO_PIPE_HEADER_EXTENSIONS
    assert pipe_consumer.type == "pipe"
    assert pipe_consumer.paused is False
    assert pipe_consumer.producer_paused is False
    assert pipe_consumer.score == {"score": 10, "producerScore": 10, "producerScores": []}
    assert pipe_consumer.app_data == {}
    dump = await pipe_transport.dump()
    assert dump["rtx"] is True
    assert dump["consumerIds"] == [pipe_consumer.id]
    pipe_consumer.close()
    assert pipe_transport.consumers == {}


async def test_pipe_consume_with_app_data_and_wrong_arguments(
    ctx: Ctx, pipe: PipeTransport
) -> None:
    bad: Any
    consumer = await pipe.consume(producer_id=ctx.audio_producer.id, app_data={"baz": 1})
    assert consumer.app_data == {"baz": 1}
    assert consumer.type == "pipe"
    assert pipe.rtx is False
    # Without RTX no NACK feedback and no RTX codec.
    assert [c["mimeType"] for c in consumer.rtp_parameters["codecs"]] == ["audio/opus"]
    video = await pipe.consume(producer_id=ctx.video_producer.id)
    assert [c["mimeType"] for c in video.rtp_parameters["codecs"]] == ["video/VP8"]
    assert all(
        fb["type"] != "nack" or fb.get("parameter")
        for fb in video.rtp_parameters["codecs"][0].get("rtcpFeedback", [])
    )
    with pytest.raises(TypeError, match="producer_id"):
        await pipe.consume(producer_id="")
    bad = 123
    with pytest.raises(TypeError, match="producer_id"):
        await pipe.consume(producer_id=bad)
    with pytest.raises(ValueError, match="not found"):
        await pipe.consume(producer_id="nope")
    bad = "NOT-AN-OBJECT"
    with pytest.raises(TypeError, match="app_data"):
        await pipe.consume(producer_id=ctx.audio_producer.id, app_data=bad)
    # The producer closing closes its pipe consumer.
    waiter = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
    ctx.audio_producer.close()
    await waiter
    assert consumer.closed is True
    assert consumer.id not in pipe.consumers
    assert video.id in pipe.consumers


async def test_connect_with_valid_srtp_parameters(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_ip="127.0.0.1", enable_srtp=True
    )
    assert pipe_transport.srtp_parameters is not None
    assert pipe_transport.srtp_parameters["cryptoSuite"] == "AEAD_AES_256_GCM"
    # The master length of AEAD_AES_256_GCM.
    assert len(pipe_transport.srtp_parameters["keyBase64"]) == 60
    assert (await pipe_transport.dump()).get("srtpParameters") == pipe_transport.srtp_parameters
    await pipe_transport.connect(
        ip="127.0.0.2",
        port=9999,
        srtp_parameters={"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": KEY_GCM_256},
    )
    assert pipe_transport.tuple.get("remoteIp") == "127.0.0.2"
    assert pipe_transport.tuple.get("remotePort") == 9999
    # Must fail if already connected.
    with pytest.raises(WorkerError):
        await pipe_transport.connect(
            ip="127.0.0.2",
            port=9999,
            srtp_parameters={"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": KEY_GCM_256},
        )


async def test_connect_with_srtp_parameters_fails_without_enable_srtp(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 2000, "max": 3000}},
        enable_rtx=True,
    )
    assert pipe_transport.srtp_parameters is None
    bad: Any
    with pytest.raises(TypeError, match="SRTP not enabled"):
        await pipe_transport.connect(
            ip="127.0.0.2",
            port=9999,
            srtp_parameters={"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": KEY_GCM_256},
        )
    # Even invalid parameters are refused because SRTP is off.
    bad = "invalid"
    with pytest.raises(TypeError, match="SRTP not enabled"):
        await pipe_transport.connect(ip="127.0.0.2", port=9999, srtp_parameters=bad)


async def test_connect_with_invalid_srtp_parameters(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_ip="127.0.0.1", enable_srtp=True
    )
    cases: list[tuple[Any, type[Exception], str]] = [
        (None, TypeError, "missing srtp_parameters"),
        (1, TypeError, "srtp_parameters must be a dict"),
        ({"keyBase64": KEY_GCM_256}, TypeError, "missing srtp_parameters.cryptoSuite"),
        ({"cryptoSuite": "AEAD_AES_256_GCM"}, TypeError, "missing srtp_parameters.keyBase64"),
        ({"cryptoSuite": "FOO", "keyBase64": KEY_GCM_256}, ValueError, "cryptoSuite"),
        ({"cryptoSuite": 123, "keyBase64": KEY_GCM_256}, TypeError, "cryptoSuite"),
        ({"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": []}, TypeError, "keyBase64"),
        # A PipeTransport only does AEAD_AES_256_GCM.
        (
            {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": KEY_AES_CM},
            ValueError,
            "cryptoSuite",
        ),
        ({"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": KEY_AES_CM}, ValueError, "needs 44"),
    ]
    for srtp_parameters, error, match in cases:
        with pytest.raises(error, match=match):
            await pipe_transport.connect(ip="127.0.0.2", port=9999, srtp_parameters=srtp_parameters)
    assert "remoteIp" not in pipe_transport.tuple


async def test_connect_with_wrong_address(pipe: PipeTransport) -> None:
    bad: Any
    with pytest.raises(TypeError, match="missing ip"):
        await pipe.connect(ip=None, port=1234)
    with pytest.raises(ValueError, match="ip"):
        await pipe.connect(ip="foo.bar.org", port=1234)
    bad = "1234"
    with pytest.raises(TypeError, match="port"):
        await pipe.connect(ip="127.0.0.1", port=bad)
    with pytest.raises(TypeError, match="missing port"):
        await pipe.connect(ip="127.0.0.1", port=None)
    with pytest.raises(ValueError, match="port"):
        await pipe.connect(ip="127.0.0.1", port=65536)
    await pipe.connect(ip="127.0.0.1", port=1234)
    assert pipe.tuple.get("remotePort") == 1234


async def test_create_pipe_transport_with_fixed_port(ctx: Ctx) -> None:
    port = free_ports(1)  # the worker binds it: below the ephemeral range
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "port": port}
    )
    assert pipe_transport.tuple["localPort"] == port


async def test_dump_and_get_stats(pipe: PipeTransport) -> None:
    assert pipe.sctp_parameters is None
    assert pipe.sctp_state is None
    dump = await pipe.dump()
    assert dump["id"] == pipe.id
    assert dump["tuple"] == pipe.tuple
    assert dump["rtx"] is False
    assert "srtpParameters" not in dump
    assert "sctpParameters" not in dump
    stats = await pipe.get_stats()
    assert len(stats) == 1
    assert stats[0]["type"] == "pipe-transport"
    assert stats[0]["transportId"] == pipe.id
    assert stats[0]["tuple"] == pipe.tuple
    assert stats[0]["bytesReceived"] == 0


async def test_sctp_and_events(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_ip="127.0.0.1", enable_sctp=True, num_sctp_streams={"OS": 256, "MIS": 256}
    )
    assert pipe_transport.sctp_parameters is not None
    assert pipe_transport.sctp_parameters["MIS"] == 256
    # PipeTransport's default maximum SCTP message size.
    assert pipe_transport.sctp_parameters["maxMessageSize"] == 268435456
    assert pipe_transport.sctp_state == "new"
    seen: list[tuple[str, Any]] = []
    for name in ("sctpstatechange", "trace"):
        pipe_transport.on(name, lambda arg, name=name: seen.append((name, arg)))
        pipe_transport.observer.on(name, lambda arg, name=name: seen.append((name, arg)))
    channel = pipe_transport.channel_for_testing
    inject(
        channel,
        Event.TRANSPORT_SCTP_STATE_CHANGE,
        pipe_transport.id,
        SctpStateChangeNotificationT(sctpState=FbsSctpState.CONNECTING),
    )
    inject(
        channel,
        Event.TRANSPORT_TRACE,
        pipe_transport.id,
        TraceNotificationT(
            type=TraceEventType.PROBATION, timestamp=7, direction=TraceDirection.DIRECTION_OUT
        ),
    )
    inject(channel, Event.PLAINTRANSPORT_TUPLE, pipe_transport.id)  # Unknown here: logged.
    await asyncio.sleep(0)
    trace = {"type": "probation", "timestamp": 7, "direction": "out", "info": {}}
    assert seen == [
        ("sctpstatechange", "connecting"),
        ("sctpstatechange", "connecting"),
        ("trace", trace),
        ("trace", trace),
    ]
    assert pipe_transport.sctp_state == "connecting"
    pipe_transport.close()
    assert pipe_transport.sctp_state == "closed"


async def test_methods_reject_if_closed(ctx: Ctx, pipe: PipeTransport) -> None:
    closes: list[None] = []
    pipe.observer.once("close", lambda: closes.append(None))
    pipe.close()
    assert closes == [None]
    assert pipe.closed is True
    with pytest.raises(InvalidStateError):
        await pipe.dump()
    with pytest.raises(InvalidStateError):
        await pipe.get_stats()
    with pytest.raises(InvalidStateError):
        await pipe.connect(ip="127.0.0.1", port=1234)
    with pytest.raises(InvalidStateError):
        await pipe.consume(producer_id=ctx.audio_producer.id)
    pipe.close()
    pipe.router_closed()
    assert closes == [None]


async def test_routerclose_when_router_closes(ctx: Ctx) -> None:
    pipe_transport = await ctx.router1.create_pipe_transport(
        listen_ip="127.0.0.1", enable_sctp=True
    )
    consumer = await pipe_transport.consume(producer_id=ctx.audio_producer.id)
    router_closes: list[None] = []
    pipe_transport.on("routerclose", lambda: router_closes.append(None))
    ctx.router1.close()
    assert router_closes == [None]
    assert pipe_transport.closed is True
    assert pipe_transport.sctp_state == "closed"
    assert consumer.closed is True


async def test_consume_pipe_producer(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(producer_id=ctx.video_producer.id, router=ctx.router2)
    video_consumer = await ctx.webrtc_transport2.consume(
        producer_id=result["pipeProducer"].id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    assert video_consumer.closed is False
    assert video_consumer.kind == "video"
    assert video_consumer.rtp_parameters.get("mid") == "0"
    assert video_consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "video/VP8",
            "payloadType": 101,
            "clockRate": 90000,
            "parameters": {},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "ccm", "parameter": "fir"},
                {"type": "transport-cc", "parameter": ""},
            ],
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ]
    assert video_consumer.rtp_parameters["headerExtensions"] == [
        ext("http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time", 4),
        ext("http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01", 5),
    ]
    encodings = video_consumer.rtp_parameters["encodings"]
    assert len(encodings) == 1
    assert isinstance(encodings[0]["ssrc"], int)
    assert isinstance(encodings[0]["rtx"]["ssrc"], int)
    assert video_consumer.rtp_parameters.get("msid") == "aaaa-bbbb"
    assert video_consumer.type == "simulcast"
    assert video_consumer.paused is False
    assert video_consumer.producer_paused is False
    assert video_consumer.score == {"score": 10, "producerScore": 0, "producerScores": [0, 0, 0]}
    assert video_consumer.app_data == {}


async def test_producer_pause_resume_reach_pipe_consumer(ctx: Ctx) -> None:
    await ctx.video_producer.pause()
    result = await ctx.router1.pipe_to_router(producer_id=ctx.video_producer.id, router=ctx.router2)
    pipe_producer = result["pipeProducer"]
    video_consumer = await ctx.webrtc_transport2.consume(
        producer_id=pipe_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    assert ctx.video_producer.paused is True
    assert video_consumer.producer_paused is True
    assert video_consumer.paused is False

    waiters = [
        asyncio.ensure_future(video_consumer.events.wait_for("producerresume")),
        asyncio.ensure_future(pipe_producer.observer.wait_for("resume")),
    ]
    await asyncio.sleep(0)
    await ctx.video_producer.resume()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert video_consumer.producer_paused is False
    assert video_consumer.paused is False
    assert pipe_producer.paused is False

    waiters = [
        asyncio.ensure_future(video_consumer.events.wait_for("producerpause")),
        asyncio.ensure_future(pipe_producer.observer.wait_for("pause")),
    ]
    await asyncio.sleep(0)
    await ctx.video_producer.pause()
    await asyncio.wait_for(asyncio.gather(*waiters), 5)
    assert video_consumer.producer_paused is True
    assert video_consumer.paused is False
    assert pipe_producer.paused is True


async def test_producer_close_reaches_pipe_consumer(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(producer_id=ctx.video_producer.id, router=ctx.router2)
    video_consumer = await ctx.webrtc_transport2.consume(
        producer_id=result["pipeProducer"].id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    waiter = asyncio.ensure_future(video_consumer.events.wait_for("producerclose"))
    await asyncio.sleep(0)
    ctx.video_producer.close()
    assert ctx.video_producer.closed is True
    await asyncio.wait_for(waiter, 5)
    assert video_consumer.closed is True


async def test_pipe_to_router_keep_id_fails_on_same_worker(ctx: Ctx) -> None:
    router1bis = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    transports = (await ctx.router1.dump())["transportIds"]
    with pytest.raises(TypeError, match="destination Router is in the same Worker"):
        await ctx.router1.pipe_to_router(
            producer_id=ctx.video_producer.id, router=router1bis, keep_id=True
        )
    # Refused before anything was made (the worker would refuse the producer after).
    assert (await ctx.router1.dump())["transportIds"] == transports
    assert (await router1bis.dump())["transportIds"] == []


async def test_pipe_to_router_without_keep_id_on_same_worker(ctx: Ctx) -> None:
    router1bis = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    result = await ctx.router1.pipe_to_router(
        producer_id=ctx.video_producer.id, router=router1bis, keep_id=False
    )
    assert result["pipeProducer"].id != ctx.video_producer.id


async def test_pipe_to_router_with_data(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(
        data_producer_id=ctx.data_producer.id, router=ctx.router2
    )
    pipe_data_consumer = result["pipeDataConsumer"]
    pipe_data_producer = result["pipeDataProducer"]
    assert len((await ctx.router1.dump())["transportIds"]) == 2
    assert len((await ctx.router2.dump())["transportIds"]) == 2
    for item in (pipe_data_consumer, pipe_data_producer):
        assert item.closed is False
        assert item.type == "sctp"
        params = item.sctp_stream_parameters
        assert params is not None
        assert isinstance(params["streamId"], int)
        assert params.get("ordered") is False
        assert params.get("maxPacketLifeTime") == 5000
        assert "maxRetransmits" not in params
        assert item.label == "foo"
        assert item.protocol == "bar"
    assert pipe_data_producer.id == ctx.data_producer.id


async def test_pipe_to_router_with_data_returns_once_the_pair_sctp_is_up(ctx: Ctx) -> None:
    """The worker drops what a pipe data consumer is sent before its pair's SCTP
    association is up (the pair's first data stream starts it). mediasoup's Node library
    returns from pipeToRouter() before that: a message sent at once into a new pair
    between workers was lost about one time in two. Ours returns once it is up: the first
    message into each of ten new pairs arrives."""
    source = await (await ctx.router1.create_direct_transport()).produce_data()
    copies: list[tuple[Router, DataProducer]] = []
    for i in range(10):
        router = await ctx.worker2.create_router(media_codecs=MEDIA_CODECS)
        result = await ctx.router1.pipe_to_router(
            router=router, data_producer_id=source.id, keep_id=False
        )
        source.send(f"message {i}")
        copies.append((router, result["pipeDataProducer"]))
    for router, copy in copies:
        async with asyncio.timeout(5):  # no event tells of a message reaching a copy
            while (await copy.get_stats())[0]["messagesReceived"] == 0:
                await asyncio.sleep(0.02)
        (pipe,) = router.transports_for_testing.values()
        assert isinstance(pipe, PipeTransport) and pipe.sctp_state == "connected"


@pytest.mark.parametrize("closing", ["pipe consumer", "original"])
async def test_pipe_to_router_with_data_fails_when_closed_while_sctp_is_awaited(
    ctx: Ctx, closing: str
) -> None:
    """The association is held (worker2 stopped until the pipe consumer, the pair's first
    data stream, is made, then worker1 until the copy is): pipe_to_router() waits. The
    pipe consumer, or the original, closes meanwhile: it fails once the association is
    up, and leaves no copy open."""
    router1, router2 = ctx.router1, ctx.router2
    source = await (await router1.create_direct_transport()).produce_data()
    await router1.pipe_to_router(router=router2, producer_id=ctx.audio_producer.id)  # the pair
    pair = router1._pipe_pairs[router2.id].result()
    local = pair[router1.id]
    consumers: list[Any] = []

    def hold(consumer: Any) -> None:
        consumers.append(consumer)
        os.kill(ctx.worker1.pid, signal.SIGSTOP)
        os.kill(ctx.worker2.pid, signal.SIGCONT)

    local.observer.once("newdataconsumer", hold)
    os.kill(ctx.worker2.pid, signal.SIGSTOP)
    try:
        piping = asyncio.ensure_future(
            router1.pipe_to_router(router=router2, data_producer_id=source.id)
        )
        async with asyncio.timeout(5):
            while not router2.has_data_producer(source.id):
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not piping.done() and local.sctp_state != "connected"
        copy = router2._data_producers[source.id]
        (consumers[0] if closing == "pipe consumer" else source).close()
    finally:
        os.kill(ctx.worker2.pid, signal.SIGCONT)
        os.kill(ctx.worker1.pid, signal.SIGCONT)
    reason = "pipe DataConsumer closed" if closing == "pipe consumer" else "original DataProducer"
    with pytest.raises(InvalidStateError, match=reason):
        await asyncio.wait_for(piping, 5)
    assert local.sctp_state == "connected"
    assert consumers[0].closed and copy.closed and not router2.has_data_producer(source.id)


async def test_consume_data_of_pipe_data_producer(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(
        data_producer_id=ctx.data_producer.id, router=ctx.router2
    )
    data_consumer = await ctx.webrtc_transport2.consume_data(
        data_producer_id=result["pipeDataProducer"].id
    )
    assert data_consumer.closed is False
    assert data_consumer.type == "sctp"
    params = data_consumer.sctp_stream_parameters
    assert params is not None
    assert isinstance(params["streamId"], int)
    assert params.get("ordered") is False
    assert params.get("maxPacketLifeTime") == 5000
    assert "maxRetransmits" not in params
    assert data_consumer.label == "foo"
    assert data_consumer.protocol == "bar"


async def test_data_producer_close_reaches_pipe_data_consumer(ctx: Ctx) -> None:
    result = await ctx.router1.pipe_to_router(
        data_producer_id=ctx.data_producer.id, router=ctx.router2
    )
    data_consumer = await ctx.webrtc_transport2.consume_data(
        data_producer_id=result["pipeDataProducer"].id
    )
    waiter = asyncio.ensure_future(data_consumer.events.wait_for("dataproducerclose"))
    await asyncio.sleep(0)
    ctx.data_producer.close()
    assert ctx.data_producer.closed is True
    await asyncio.wait_for(waiter, 5)
    assert data_consumer.closed is True


async def test_pipe_to_router_twice_creates_one_pair(ctx: Ctx) -> None:
    router_a = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    router_b = await ctx.worker2.create_router(media_codecs=MEDIA_CODECS)
    transport_a1 = await router_a.create_webrtc_transport(listen_ips=["127.0.0.1"])
    transport_a2 = await router_a.create_webrtc_transport(listen_ips=["127.0.0.1"])
    producer_a1 = await transport_a1.produce(**AUDIO_PRODUCER_OPTIONS)
    producer_a2 = await transport_a2.produce(**AUDIO_PRODUCER_OPTIONS)
    await asyncio.gather(
        router_a.pipe_to_router(producer_id=producer_a1.id, router=router_b),
        router_a.pipe_to_router(producer_id=producer_a2.id, router=router_b),
    )
    # Two WebRtcTransports and one PipeTransport in router A, one PipeTransport in B.
    assert len((await router_a.dump())["transportIds"]) == 3
    assert len((await router_b.dump())["transportIds"]) == 1


async def test_pipe_to_router_both_ways_creates_one_pair(ctx: Ctx) -> None:
    router_a = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    router_b = await ctx.worker2.create_router(media_codecs=MEDIA_CODECS)
    transport_a = await router_a.create_webrtc_transport(listen_ips=["127.0.0.1"])
    transport_b = await router_b.create_webrtc_transport(listen_ips=["127.0.0.1"])
    producer_a = await transport_a.produce(**AUDIO_PRODUCER_OPTIONS)
    producer_b = await transport_b.produce(**AUDIO_PRODUCER_OPTIONS)
    pipes_a: dict[str, PipeTransport] = {}
    pipes_b: dict[str, PipeTransport] = {}

    def track(pipes: dict[str, PipeTransport]) -> Any:
        def on_new_transport(transport: Any) -> None:
            if not isinstance(transport, PipeTransport):
                return
            pipes[transport.id] = transport
            transport.observer.on("close", lambda: pipes.pop(transport.id, None))

        return on_new_transport

    router_a.observer.on("newtransport", track(pipes_a))
    router_b.observer.on("newtransport", track(pipes_b))
    await asyncio.gather(
        router_a.pipe_to_router(producer_id=producer_a.id, router=router_b),
        router_b.pipe_to_router(producer_id=producer_b.id, router=router_a),
    )
    # A single PipeTransport in each router, connected to each other.
    assert len(pipes_a) == 1
    assert len(pipes_b) == 1
    (pipe_a,) = pipes_a.values()
    (pipe_b,) = pipes_b.values()
    assert pipe_a.tuple["localPort"] == pipe_b.tuple.get("remotePort")
    assert pipe_b.tuple["localPort"] == pipe_a.tuple.get("remotePort")
    router_a.close()
    assert len(pipes_a) == 0
    assert len(pipes_b) == 0


async def test_pipe_to_router_without_producer_id_or_data_producer_id_fails(ctx: Ctx) -> None:
    router1bis = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    with pytest.raises(TypeError):
        await ctx.router1.pipe_to_router(router=router1bis)


async def test_pipe_to_router_with_both_ids_fails(ctx: Ctx) -> None:
    router1bis = await ctx.worker1.create_router(media_codecs=MEDIA_CODECS)
    with pytest.raises(TypeError):
        await ctx.router1.pipe_to_router(
            producer_id="1234", data_producer_id="5678", router=router1bis
        )


# -- media across two workers -----------------------------------------------------------

OPUS_PT = 111
OPUS_SSRC = 33333333


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def rtp_payload(data: bytes) -> bytes:
    """The payload of an RTP packet (past CSRCs and header extension, without padding)."""
    offset = 12 + 4 * (data[0] & 0x0F)
    if data[0] & 0x10:
        (length,) = struct.unpack("!H", data[offset + 2 : offset + 4])
        offset += 4 + 4 * length
    end = len(data) - data[-1] if data[0] & 0x20 else len(data)
    return data[offset:end]


async def udp_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return protocol


@pytest.mark.parametrize(
    "options",
    [{}, {"enable_srtp": True}, {"enable_rtx": True}],
    ids=["plain", "srtp", "rtx"],
)
async def test_media_piped_across_workers_is_counted_on_far_side(
    worker: Worker, worker2: Worker, options: dict[str, Any]
) -> None:
    router1 = await worker.create_router(media_codecs=MEDIA_CODECS)
    router2 = await worker2.create_router(media_codecs=MEDIA_CODECS)
    sender = await udp_peer()
    receiver = await udp_peer()
    try:
        ingest = await router1.create_plain_transport(listen_ip="127.0.0.1", comedia=True)
        producer = await ingest.produce(
            kind="audio",
            rtp_parameters=opus_rtp_parameters(OPUS_SSRC, OPUS_PT),
        )
        result = await router1.pipe_to_router(producer_id=producer.id, router=router2, **options)
        pipe_producer = result["pipeProducer"]
        assert pipe_producer.id == producer.id
        egress = await router2.create_plain_transport(listen_ip="127.0.0.1")
        await egress.connect(ip="127.0.0.1", port=receiver.port)
        consumer = await egress.consume(
            producer_id=pipe_producer.id, rtp_capabilities=router2.rtp_capabilities
        )
        out_pt = consumer.rtp_parameters["codecs"][0]["payloadType"]
        out_ssrc = consumer.rtp_parameters["encodings"][0]["ssrc"]

        count = 40
        payload = b"\xf8\xff\xfe" + os.urandom(60)
        for i in range(count):
            packet = struct.pack("!BBHII", 0x80, OPUS_PT, 5000 + i, 960 * i, OPUS_SSRC) + payload
            sender.send(packet, ingest.tuple["localPort"])
            await asyncio.sleep(0.002)
        received = 0
        async with asyncio.timeout(5):
            while received < count:
                data = await receiver.received.get()
                if len(data) < 12 or data[1] & 0x7F != out_pt:
                    continue  # RTCP
                assert data[0] >> 6 == 2
                assert struct.unpack("!I", data[8:12])[0] == out_ssrc
                assert rtp_payload(data) == payload
                received += 1
        assert received == count

        # Both ends of the pipe saw the packets.
        pair_local = next(
            t for t in router1.transports_for_testing.values() if isinstance(t, PipeTransport)
        )
        pair_remote = next(
            t for t in router2.transports_for_testing.values() if isinstance(t, PipeTransport)
        )
        assert pair_local.tuple.get("remotePort") == pair_remote.tuple["localPort"]
        assert (pair_local.srtp_parameters is not None) == bool(options.get("enable_srtp"))
        assert pair_local.rtx == bool(options.get("enable_rtx"))
        sent = (await pair_local.get_stats())[0]
        got = (await pair_remote.get_stats())[0]
        assert sent["rtpBytesSent"] >= count * (12 + len(payload))
        assert got["rtpBytesReceived"] >= count * (12 + len(payload))
        assert (await pipe_producer.get_stats())[0]["packetCount"] == count
    finally:
        sender.close()
        receiver.close()


async def test_open_pipe_pair_connects_both_ends(worker: Worker) -> None:
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    listen: Any = {"protocol": "udp", "ip": "127.0.0.1"}
    a, b = await open_pipe_pair(
        router.create_pipe_transport(listen_info=listen),
        router.create_pipe_transport(listen_info=listen),
    )
    assert (await a.dump())["tuple"]["remotePort"] == b.tuple["localPort"]
    assert (await b.dump())["tuple"]["remotePort"] == a.tuple["localPort"]


async def test_open_pipe_pair_leaves_nothing_open_on_failure(worker: Worker) -> None:
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    listen: Any = {"protocol": "udp", "ip": "127.0.0.1"}

    async def refused() -> Any:
        raise ValueError("no pipe here")

    # One creation fails: the other end, created fine, is closed.
    with pytest.raises(ValueError, match="no pipe here"):
        await open_pipe_pair(router.create_pipe_transport(listen_info=listen), refused())
    assert (await router.dump())["transportIds"] == []
    # A connect fails (here: one end already closed): both ends are closed.
    closed_end = await router.create_pipe_transport(listen_info=listen)
    closed_end.close()

    async def already_closed() -> Any:
        return closed_end

    with pytest.raises(InvalidStateError):
        await open_pipe_pair(router.create_pipe_transport(listen_info=listen), already_closed())
    assert (await router.dump())["transportIds"] == []


# -- pipe_to_router failures and races --------------------------------------------------


async def test_a_pipe_pair_end_closed_before_its_router_hears_of_the_pair(
    worker: Worker,
) -> None:
    """The destination router learns of a pair a loop turn after it is made; its end
    closing in between (its worker dying, the app closing it) leaves no record that
    would refuse the next pipe between the two routers ("key already exists"). The
    ordering is made by hand (the pair's future completed here): it is a race otherwise."""
    router1 = await worker.create_router(media_codecs=MEDIA_CODECS)
    router2 = await worker.create_router(media_codecs=MEDIA_CODECS)
    listen: Any = {"protocol": "udp", "ip": "127.0.0.1"}
    end1 = await router1.create_pipe_transport(listen_info=listen)
    end2 = await router2.create_pipe_transport(listen_info=listen)
    pair: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    router2._add_pipe_transport_pair(router1.id, pair)
    end2.close()
    pair.set_result({router1.id: end1, router2.id: end2})
    await asyncio.sleep(0)  # the pair's done callbacks
    assert router1.id not in router2._pipe_pairs
    # And with its end open, the record goes when that end closes.
    end3 = await router2.create_pipe_transport(listen_info=listen)
    pair2: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    router2._add_pipe_transport_pair(router1.id, pair2)
    pair2.set_result({router1.id: end1, router2.id: end3})
    await asyncio.sleep(0)
    assert router2._pipe_pairs[router1.id] is pair2
    end3.close()
    assert router1.id not in router2._pipe_pairs
    # Both ways the routers pipe again.
    producer = await (await router2.create_direct_transport()).produce(
        kind="audio", rtp_parameters=opus_rtp_parameters(1234)
    )
    result = await router2.pipe_to_router(producer_id=producer.id, router=router1, keep_id=False)
    assert not result["pipeProducer"].closed


T = TypeVar("T")


def _start_now(coro: Coroutine[Any, Any, T]) -> asyncio.Future[T]:
    """Run ``coro`` up to its first suspension now, and the rest in a task (as Python
    3.12's eager tasks): a call made at a given point of a loop turn."""
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[T] = loop.create_future()
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        outcome.set_result(stop.value)
        return outcome
    except BaseException as error:
        outcome.set_exception(error)
        return outcome

    async def rest() -> T:
        nonlocal waiting
        while True:
            if waiting is None:
                await asyncio.sleep(0)
            else:
                waiting._asyncio_future_blocking = False
                await asyncio.wait([waiting])
            try:
                waiting = coro.send(None)
            except StopIteration as stop:
                result: T = stop.value
                return result

    return asyncio.ensure_future(rest())


async def test_a_pipe_to_router_right_after_its_pipe_pair_failed_makes_a_new_pair(
    ctx: Ctx,
) -> None:
    """The pair between two routers fails (the destination worker frozen with SIGSTOP past
    the request timeout) and both routers forget it in the loop turn after, by its done
    callbacks: a pipe_to_router() in that very turn makes a new pair, as one a turn later
    (it does not fail with the other caller's error). That caller is started from the
    failed pair's local end closing (done as the pair fails, in the task making it, so the
    call lands in the turn before the pair's callbacks) and runs its first step at once."""
    router1, router2, producer = ctx.router1, ctx.router2, ctx.audio_producer
    loop = asyncio.get_running_loop()
    late: list[asyncio.Future[PipeToRouterResult]] = []

    def in_the_next_turn() -> None:
        late.append(_start_now(router1.pipe_to_router(router=router2, producer_id=producer.id)))

    def on_failed_end_close() -> None:
        os.kill(ctx.worker2.pid, signal.SIGCONT)
        ctx.worker2._channel.request_timeout = REQUEST_TIMEOUT
        loop.call_soon(in_the_next_turn)

    router1.observer.once(
        "newtransport", lambda end: end.observer.once("close", on_failed_end_close)
    )
    ctx.worker2._channel.request_timeout = 0.2
    os.kill(ctx.worker2.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ChannelTimeoutError):
            await router1.pipe_to_router(router=router2, producer_id=producer.id)
    finally:
        os.kill(ctx.worker2.pid, signal.SIGCONT)
    (caller,) = late
    async with asyncio.timeout(10):
        result = await caller
    assert result["pipeProducer"].id == producer.id and not result["pipeConsumer"].closed
    # Both routers hold the new pair (the failed one's callbacks left it alone).
    pair = router1._pipe_pairs[router2.id]
    assert router2._pipe_pairs[router1.id] is pair and not pair.result()[router1.id].closed
    assert len((await router2.dump())["transportIds"]) == 2  # the new end, and the WebRTC one


async def test_a_pipe_pair_whose_end_closed_as_it_connected_is_not_kept(
    ctx: Ctx, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One end of a new pair closes as the pair connects (its router, its worker or the
    app closing it then): pipe_to_router() fails, the other end is closed, neither router
    keeps the pair, and the next call makes a working one that both hold, which stays
    theirs when the first pair's ends are long gone. (That moment cannot be had on cue:
    the connect is wrapped to close the destination's end once the worker connected it.)
    Before, the open end stayed, a newer pair was dropped by one router only when it
    closed, and a third call failed an assertion."""
    router1, router2, producer = ctx.router1, ctx.router2, ctx.audio_producer
    connect = PipeTransport.connect
    ends2: list[Any] = []
    router2.observer.on("newtransport", ends2.append)

    async def connect_then_close(self: PipeTransport, **kwargs: Any) -> None:
        await connect(self, **kwargs)
        if self in ends2:
            self.close()

    monkeypatch.setattr(PipeTransport, "connect", connect_then_close)
    with pytest.raises(InvalidStateError, match="closed while its pair was opening"):
        await router1.pipe_to_router(router=router2, producer_id=producer.id)
    monkeypatch.undo()
    await asyncio.sleep(0)  # the failed pair's callbacks
    assert router2.id not in router1._pipe_pairs and router1.id not in router2._pipe_pairs
    assert (await router1.dump())["transportIds"] == [ctx.webrtc_transport1.id]
    result = await router1.pipe_to_router(router=router2, producer_id=producer.id)
    assert not result["pipeConsumer"].closed
    pair = router1._pipe_pairs[router2.id]
    assert router2._pipe_pairs[router1.id] is pair
    await router1.pipe_to_router(router=router2, data_producer_id=ctx.data_producer.id)
    assert router1._pipe_pairs[router2.id] is pair and router2._pipe_pairs[router1.id] is pair


async def test_pipe_to_router_closes_the_pipe_consumer_when_the_copy_is_refused(
    ctx: Ctx,
) -> None:
    """Ids are unique per worker: a second copy (keep_id) into another router of the
    same worker is refused by the worker, after the pipe consumer was made; that one
    must not stay behind in the source router."""
    for kwargs in (
        {"producer_id": ctx.audio_producer.id},
        {"data_producer_id": ctx.data_producer.id},
    ):
        await ctx.router1.pipe_to_router(router=ctx.router2, **kwargs)
    router3 = await ctx.worker2.create_router(media_codecs=MEDIA_CODECS)
    pipes: list[PipeTransport] = []
    ctx.router1.observer.on("newtransport", pipes.append)
    with pytest.raises(WorkerError):
        await ctx.router1.pipe_to_router(router=router3, producer_id=ctx.audio_producer.id)
    with pytest.raises(WorkerError):
        await ctx.router1.pipe_to_router(router=router3, data_producer_id=ctx.data_producer.id)
    (pipe,) = pipes  # one pair towards router3, made once
    dump = await pipe.dump()
    assert dump["consumerIds"] == [] and dump["dataConsumerIds"] == []
    assert (await router3.dump())["mapProducerIdConsumerIds"] == []


async def test_pipe_to_router_fails_when_the_producer_closes_while_piping(ctx: Ctx) -> None:
    """The producer closes while the pipe pair is made: nothing is consumed nor produced
    (the pipe pair stays, for the next producers)."""
    closing = [ctx.audio_producer, ctx.data_producer]

    def close_next(transport: PipeTransport) -> None:
        closing.pop(0).close()

    ctx.router1.observer.on("newtransport", close_next)
    with pytest.raises(ValueError, match="not found"):
        await ctx.router1.pipe_to_router(router=ctx.router2, producer_id=ctx.audio_producer.id)
    ctx.router1.observer.off("newtransport", close_next)
    # The data producer: closed when the next pair (towards another router) is made.
    router3 = await ctx.worker2.create_router(media_codecs=MEDIA_CODECS)
    ctx.router1.observer.on("newtransport", close_next)
    with pytest.raises(ValueError, match="not found"):
        await ctx.router1.pipe_to_router(router=router3, data_producer_id=ctx.data_producer.id)
    assert closing == []
    dump = await ctx.router1.dump()
    entries = dump["mapProducerIdConsumerIds"] + dump["mapDataProducerIdDataConsumerIds"]
    assert all(entry["values"] == [] for entry in entries)  # no pipe consumer
    assert len(dump["transportIds"]) == 3  # the pipe pairs stay, for the next producers
    for router in (ctx.router2, router3):  # no copy
        dump = await router.dump()
        assert dump["mapProducerIdConsumerIds"] == []
        assert dump["mapDataProducerIdDataConsumerIds"] == []


@pytest.mark.parametrize("paused", [False, True])
async def test_pipe_to_router_follows_a_pause_or_resume_made_while_piping(
    ctx: Ctx, paused: bool
) -> None:
    """The producer is paused (or resumed) after the pipe consumer was made, before its
    copy is: the copy follows the producer. The race cannot be produced on demand, so the
    destination transport's produce() is wrapped to pause/resume the producer first."""
    producer = ctx.video_producer
    if paused:
        await producer.pause()

    def wrap(transport: PipeTransport) -> None:
        produce = transport.produce

        async def toggling_produce(**kwargs: Any) -> Producer:
            await (producer.resume() if paused else producer.pause())
            return await produce(**kwargs)

        transport.produce = toggling_produce  # type: ignore[method-assign]

    ctx.router2.observer.once("newtransport", wrap)
    result = await ctx.router1.pipe_to_router(router=ctx.router2, producer_id=producer.id)
    copy = result["pipeProducer"]
    assert producer.paused is not paused
    assert copy.paused is not paused
    assert (await copy.dump())["paused"] is not paused


async def test_pipe_consume_on_mafalda_pipes_a_producer_of_another_worker() -> None:
    """A PipeTransport of a Mafalda router consumes a producer living on another worker
    of the pool: the producer is piped into the transport's worker first."""
    from mafalda.vertical import Mafalda

    mafalda = await Mafalda.start(
        num_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    try:
        router: Any = await mafalda.create_router(media_codecs=MEDIA_CODECS)
        direct = await router.create_direct_transport()
        producer = await direct.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1234))
        pipe = await router.create_pipe_transport(listen_ip="127.0.0.1")
        home, there = router.worker_of(direct), router.worker_of(pipe)
        assert home is not there  # spread
        consumer = await pipe.consume(producer_id=producer.id)
        assert consumer.producer_id == producer.id
        assert consumer.kind == "audio" and consumer.type == "pipe"
        # It reads a copy of the producer made on the pipe transport's worker.
        maps = [
            (await child.dump())["mapProducerIdConsumerIds"] for child in there.routers_for_testing
        ]
        assert [[consumer.id]] == [e["values"] for m in maps for e in m if e["values"]]
    finally:
        await mafalda.aclose()


async def test_a_pipe_consumer_closed_during_the_pause_sync_closes_the_copy(ctx: Ctx) -> None:
    """The original is paused while its copy is being made (the destination worker frozen
    with SIGSTOP), so pipe_to_router() pauses the copy once made; the pipe consumer closes
    during that pause (as it does when its producer closes): the copy closes with it and
    pipe_to_router() fails, instead of returning an open copy that nothing feeds any more
    (the two ends were linked only after that pause). The id is free again on the
    destination worker: the next pipe_to_router() makes a paused copy."""
    router1, router2, producer = ctx.router1, ctx.router2, ctx.audio_producer
    await router1.pipe_to_router(router=router2, producer_id=ctx.video_producer.id)  # the pair
    pair = router1._pipe_pairs[router2.id].result()
    local, remote = pair[router1.id], pair[router2.id]
    loop = asyncio.get_running_loop()
    consumers: list[Any] = []
    copies: list[Any] = []
    local.observer.once("newconsumer", consumers.append)

    def copy_made(copy: Any) -> None:
        copies.append(copy)
        # Runs once pipe_to_router() has sent the copy's pause, before its answer.
        loop.call_soon(consumers[0].close)

    remote.observer.once("newproducer", copy_made)
    os.kill(ctx.worker2.pid, signal.SIGSTOP)
    try:
        piping = asyncio.ensure_future(
            router1.pipe_to_router(router=router2, producer_id=producer.id)
        )
        async with asyncio.timeout(5):
            while not consumers:
                await asyncio.sleep(0.01)
        await producer.pause()  # worker1 answers; the copy is asked unpaused of worker2
    finally:
        os.kill(ctx.worker2.pid, signal.SIGCONT)
    with pytest.raises(InvalidStateError, match="pipe Consumer closed"):
        await asyncio.wait_for(piping, 10)
    (consumer,), (copy,) = consumers, copies
    assert consumer.closed and copy.closed and not router2.has_producer(producer.id)
    result = await router1.pipe_to_router(router=router2, producer_id=producer.id)
    assert result["pipeProducer"].id == producer.id and result["pipeProducer"].paused
