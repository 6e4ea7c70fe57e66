"""Producer against a real worker (port of mediasoup's test-Producer.ts, and more)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import flatbuffers
import pytest

from mafalda.mediasoup import Router
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Producer.Score import ScoreT
from mafalda.mediasoup._fbs.Producer.ScoreNotification import ScoreNotificationT
from mafalda.mediasoup._fbs.Producer.TraceNotification import TraceNotificationT
from mafalda.mediasoup._fbs.Producer.VideoOrientationChangeNotification import (
    VideoOrientationChangeNotificationT,
)
from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT
from mafalda.mediasoup._fbs.RtpParameters.Type import Type as FbsRtpType
from mafalda.mediasoup.channel import Channel, encode_notification
from mafalda.mediasoup.errors import InvalidStateError, UnsupportedError, WorkerError
from mafalda.mediasoup.producer import (
    Producer,
    parse_producer_dump,
    producer_type_from_fbs,
    producer_type_to_fbs,
    unpack_fbs,
)

AUDIO_PRODUCER_OPTIONS: dict[str, Any] = {
    "kind": "audio",
    "rtp_parameters": {
        "mid": "AUDIO",
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": 0,
                "clockRate": 48000,
                "channels": 2,
                "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
            }
        ],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10},
            {"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": 12},
        ],
        # Missing encodings on purpose.
        "rtcp": {"cname": "audio-1"},
    },
    "app_data": {"foo": 1, "bar": "2"},
}

VIDEO_PRODUCER_OPTIONS: dict[str, Any] = {
    "kind": "video",
    "rtp_parameters": {
        "mid": "VIDEO",
        "codecs": [
            {
                "mimeType": "video/h264",
                "payloadType": 112,
                "clockRate": 90000,
                "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
                "rtcpFeedback": [
                    {"type": "nack"},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "goog-remb"},
                ],
            },
            {
                "mimeType": "video/rtx",
                "payloadType": 113,
                "clockRate": 90000,
                "parameters": {"apt": 112},
            },
        ],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10},
            {"uri": "urn:3gpp:video-orientation", "id": 13},
        ],
        "encodings": [
            {"ssrc": 22222222, "rtx": {"ssrc": 22222223}, "scalabilityMode": "L1T3"},
            {"ssrc": 22222224, "rtx": {"ssrc": 22222225}},
            {"ssrc": 22222226, "rtx": {"ssrc": 22222227}},
            {"ssrc": 22222228, "rtx": {"ssrc": 22222229}},
        ],
        "rtcp": {"cname": "video-1"},
    },
    "app_data": {"foo": 1, "bar": "2"},
}

AUDIO_SSRC = 33333333
VIDEO_SSRC = 44444444


def direct_audio_options() -> dict[str, Any]:
    return {
        "kind": "audio",
        "rtp_parameters": {
            "codecs": [
                {
                    "mimeType": "audio/opus",
                    "payloadType": 111,
                    "clockRate": 48000,
                    "channels": 2,
                }
            ],
            "encodings": [{"ssrc": AUDIO_SSRC}],
        },
    }


def direct_video_options() -> dict[str, Any]:
    return {
        "kind": "video",
        "rtp_parameters": {
            "codecs": [{"mimeType": "video/VP8", "payloadType": 96, "clockRate": 90000}],
            "headerExtensions": [{"uri": "urn:3gpp:video-orientation", "id": 13}],
            "encodings": [{"ssrc": VIDEO_SSRC}],
        },
    }


def rtp_packet(
    *,
    ssrc: int,
    payload_type: int,
    seq: int,
    timestamp: int,
    payload: bytes = b"\x01\x02\x03\x04",
    extensions: dict[int, bytes] | None = None,
) -> bytes:
    """An RTP packet, with one-byte header extensions (RFC 8285) when given."""
    has_ext = bool(extensions)
    first = 0x80 | (0x10 if has_ext else 0)
    header = struct.pack("!BBHII", first, payload_type & 0x7F, seq, timestamp, ssrc)
    if extensions:
        body = b"".join(
            bytes([(ext_id << 4) | (len(value) - 1)]) + value
            for ext_id, value in extensions.items()
        )
        body += b"\x00" * (-len(body) % 4)
        header += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    return header + payload


def inject(channel: Channel, event: int, handler_id: str, body: Any = None) -> None:
    """Feed the channel a notification as if the worker had sent it."""
    channel.data_received(encode_notification(flatbuffers.Builder(256), event, handler_id, body))


async def next_loop_iteration() -> None:
    # Notifications are dispatched with call_soon: one loop iteration delivers them.
    await asyncio.sleep(0)


@pytest.fixture
async def transport1(router: Router) -> Any:
    return await router.create_webrtc_transport(listen_ips=["127.0.0.1"])


@pytest.fixture
async def transport2(router: Router) -> Any:
    return await router.create_webrtc_transport(listen_ips=["127.0.0.1"])


@pytest.fixture
async def direct_transport(router: Router) -> AsyncIterator[Any]:
    transport = await router.create_direct_transport()
    yield transport
    transport.close()


# -- creation ---------------------------------------------------------------------------


async def test_produce_audio_succeeds(router: Router, transport1: Any) -> None:
    new_producers: list[Producer] = []
    transport1.observer.once("newproducer", new_producers.append)

    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)

    assert new_producers == [producer]
    assert isinstance(producer, Producer)
    assert isinstance(producer.id, str)
    assert producer.closed is False
    assert producer.kind == "audio"
    assert isinstance(producer.rtp_parameters, dict)
    assert producer.type == "simple"
    assert isinstance(producer.consumable_rtp_parameters, dict)
    assert producer.paused is False
    assert producer.score == []
    assert producer.app_data == {"foo": 1, "bar": "2"}
    assert producer.channel_for_testing is transport1.channel_for_testing
    assert "Producer" in repr(producer) and producer.id in repr(producer)

    router_dump = await router.dump()
    assert router_dump["mapProducerIdConsumerIds"] == [{"key": producer.id, "values": []}]
    assert router_dump["mapConsumerIdProducerId"] == []
    transport_dump = await transport1.dump()
    assert transport_dump["id"] == transport1.id
    assert transport_dump["producerIds"] == [producer.id]
    assert transport_dump["consumerIds"] == []


async def test_produce_video_succeeds(router: Router, transport2: Any) -> None:
    new_producers: list[Producer] = []
    transport2.observer.once("newproducer", new_producers.append)

    producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)

    assert new_producers == [producer]
    assert producer.closed is False
    assert producer.kind == "video"
    assert producer.type == "simulcast"
    assert isinstance(producer.consumable_rtp_parameters, dict)
    assert producer.paused is False
    assert producer.score == []
    assert producer.app_data == {"foo": 1, "bar": "2"}

    router_dump = await router.dump()
    assert {"key": producer.id, "values": []} in router_dump["mapProducerIdConsumerIds"]
    assert router_dump["mapConsumerIdProducerId"] == []
    transport_dump = await transport2.dump()
    assert transport_dump["producerIds"] == [producer.id]
    assert transport_dump["consumerIds"] == []


async def test_produce_without_header_extensions_and_rtcp_succeeds(transport1: Any) -> None:
    new_producers: list[Producer] = []
    transport1.observer.once("newproducer", new_producers.append)

    producer = await transport1.produce(
        kind="audio",
        rtp_parameters={
            "mid": "AUDIO2",
            "codecs": [
                {
                    "mimeType": "audio/opus",
                    "payloadType": 0,
                    "clockRate": 48000,
                    "channels": 2,
                    "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
                }
            ],
        },
        app_data={"foo": 1, "bar": "2"},
    )

    assert new_producers == [producer]
    assert producer.kind == "audio"
    assert producer.type == "simple"
    assert producer.paused is False
    assert producer.score == []
    assert producer.app_data == {"foo": 1, "bar": "2"}
    producer.close()


async def test_produce_with_wrong_arguments_raises_type_error(transport1: Any) -> None:
    with pytest.raises(TypeError):
        await transport1.produce(kind="chicken", rtp_parameters={})
    with pytest.raises(TypeError):
        await transport1.produce(kind="audio", rtp_parameters={})
    # Invalid ssrc.
    with pytest.raises(TypeError):
        await transport1.produce(
            kind="audio",
            rtp_parameters={
                "codecs": [],
                "headerExtensions": [],
                "encodings": [{"ssrc": "1111"}],
                "rtcp": {"cname": "qwerty"},
            },
        )
    h264_codecs: list[Any] = [
        {
            "mimeType": "video/h264",
            "payloadType": 112,
            "clockRate": 90000,
            "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
        },
        {
            "mimeType": "video/rtx",
            "payloadType": 113,
            "clockRate": 90000,
            "parameters": {"apt": 112},
        },
    ]
    # Missing or empty rtp_parameters.encodings.
    with pytest.raises(TypeError):
        await transport1.produce(
            kind="video",
            rtp_parameters={
                "codecs": h264_codecs,
                "headerExtensions": [],
                "encodings": [],
                "rtcp": {"cname": "qwerty"},
            },
        )
    # Wrong apt in RTX codec.
    wrong_apt = [h264_codecs[0], {**h264_codecs[1], "parameters": {"apt": 111}}]
    with pytest.raises(TypeError):
        await transport1.produce(
            kind="audio",
            rtp_parameters={
                "codecs": wrong_apt,
                "headerExtensions": [],
                "encodings": [{"ssrc": 6666, "rtx": {"ssrc": 6667}}],
                "rtcp": {"cname": "video-1"},
            },
        )
    assert transport1.producers == {}


async def test_produce_with_unsupported_codecs_raises_unsupported_error(transport1: Any) -> None:
    with pytest.raises(UnsupportedError):
        await transport1.produce(
            kind="audio",
            rtp_parameters={
                "codecs": [{"mimeType": "audio/ISAC", "payloadType": 108, "clockRate": 32000}],
                "headerExtensions": [],
                "encodings": [{"ssrc": 1111}],
                "rtcp": {"cname": "audio"},
            },
        )
    # Invalid H264 profile-level-id.
    with pytest.raises(UnsupportedError):
        await transport1.produce(
            kind="video",
            rtp_parameters={
                "codecs": [
                    {
                        "mimeType": "video/h264",
                        "payloadType": 112,
                        "clockRate": 90000,
                        "parameters": {"packetization-mode": 1, "profile-level-id": "CHICKEN"},
                    },
                    {
                        "mimeType": "video/rtx",
                        "payloadType": 113,
                        "clockRate": 90000,
                        "parameters": {"apt": 112},
                    },
                ],
                "headerExtensions": [],
                "encodings": [{"ssrc": 6666, "rtx": {"ssrc": 6667}}],
            },
        )


async def test_produce_with_already_used_mid_or_ssrc_raises(
    transport1: Any, transport2: Any
) -> None:
    audio_options: dict[str, Any] = {
        "kind": "audio",
        "rtp_parameters": {
            "mid": "AUDIO",
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 0, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": 33333333}],
        },
    }
    video_options: dict[str, Any] = {
        "kind": "video",
        "rtp_parameters": {
            "mid": "VIDEO2",
            "codecs": [
                {
                    "mimeType": "video/h264",
                    "payloadType": 112,
                    "clockRate": 90000,
                    "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
                }
            ],
            "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10}],
            "encodings": [{"ssrc": 22222222}],
            "rtcp": {"cname": "video-1"},
        },
    }
    await transport1.produce(**audio_options)
    with pytest.raises(WorkerError):
        await transport1.produce(**audio_options)
    await transport2.produce(**video_options)
    with pytest.raises(WorkerError):
        await transport2.produce(**video_options)


async def test_produce_without_mid_and_single_encoding_without_rid_or_ssrc_raises(
    transport1: Any,
) -> None:
    with pytest.raises(WorkerError):
        await transport1.produce(
            kind="audio",
            rtp_parameters={
                "codecs": [
                    {
                        "mimeType": "audio/opus",
                        "payloadType": 111,
                        "clockRate": 48000,
                        "channels": 2,
                    }
                ],
                "encodings": [{}],
            },
        )


# -- dump and stats -------------------------------------------------------------------


async def test_dump_succeeds(transport1: Any, transport2: Any) -> None:
    audio_producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    dump1 = await audio_producer.dump()
    assert dump1["id"] == audio_producer.id
    assert dump1["kind"] == audio_producer.kind
    params = dump1["rtpParameters"]
    assert len(params["codecs"]) == 1
    codec = params["codecs"][0]
    assert codec["mimeType"] == "audio/opus"
    assert codec["payloadType"] == 0
    assert codec["clockRate"] == 48000
    assert codec["channels"] == 2
    assert codec["parameters"] == {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"}
    assert codec["rtcpFeedback"] == []
    assert params["headerExtensions"] == [
        {
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "id": 10,
            "parameters": {},
            "encrypt": False,
        },
        {
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "id": 12,
            "parameters": {},
            "encrypt": False,
        },
    ]
    assert len(params["encodings"]) == 1
    assert params["encodings"][0]["codecPayloadType"] == 0
    assert dump1["type"] == "simple"
    assert dump1["traceEventTypes"] == []
    assert dump1["paused"] is False
    # Mapping of the producer's payload types and encodings onto the router's.
    mapping = dump1["rtpMapping"]
    assert mapping["codecs"] == [{"payloadType": 0, "mappedPayloadType": 100}]
    assert len(mapping["encodings"]) == 1
    assert set(mapping["encodings"][0]) == {"rid", "ssrc", "scalabilityMode", "mappedSsrc"}
    assert (
        mapping["encodings"][0]["mappedSsrc"]
        == (audio_producer.consumable_rtp_parameters["encodings"][0]["ssrc"])
    )
    # No RTP received yet: no streams.
    assert "rtpStreams" not in dump1

    video_producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    dump2 = await video_producer.dump()
    assert dump2["id"] == video_producer.id
    assert dump2["kind"] == video_producer.kind
    params = dump2["rtpParameters"]
    assert len(params["codecs"]) == 2
    h264, rtx = params["codecs"]
    assert h264["mimeType"] == "video/H264"
    assert h264["payloadType"] == 112
    assert h264["clockRate"] == 90000
    assert "channels" not in h264
    assert h264["parameters"] == {"packetization-mode": 1, "profile-level-id": "4d0032"}
    assert h264["rtcpFeedback"] == [
        {"type": "nack"},
        {"type": "nack", "parameter": "pli"},
        {"type": "goog-remb"},
    ]
    assert rtx["mimeType"] == "video/rtx"
    assert rtx["payloadType"] == 113
    assert rtx["clockRate"] == 90000
    assert "channels" not in rtx
    assert rtx["parameters"] == {"apt": 112}
    assert rtx["rtcpFeedback"] == []
    assert params["headerExtensions"] == [
        {
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "id": 10,
            "parameters": {},
            "encrypt": False,
        },
        {"uri": "urn:3gpp:video-orientation", "id": 13, "parameters": {}, "encrypt": False},
    ]
    encodings = params["encodings"]
    assert len(encodings) == 4
    expected = [
        (22222222, 22222223, "L1T3"),
        (22222224, 22222225, "S1T1"),
        (22222226, 22222227, "S1T1"),
        (22222228, 22222229, "S1T1"),
    ]
    for encoding, (ssrc, rtx_ssrc, mode) in zip(encodings, expected, strict=True):
        assert encoding["codecPayloadType"] == 112
        assert encoding["ssrc"] == ssrc
        assert encoding["rtx"] == {"ssrc": rtx_ssrc}
        assert encoding["scalabilityMode"] == mode  # the worker defaults it
    assert dump2["type"] == "simulcast"


async def test_get_stats_succeeds(transport1: Any, transport2: Any) -> None:
    audio_producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    video_producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    assert await audio_producer.get_stats() == []
    assert await video_producer.get_stats() == []


# -- pause / resume -------------------------------------------------------------------


async def test_pause_and_resume_succeed(transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    pauses: list[None] = []
    resumes: list[None] = []
    producer.observer.on("pause", lambda: pauses.append(None))
    producer.observer.on("resume", lambda: resumes.append(None))

    await producer.pause()
    assert producer.paused is True
    assert (await producer.dump())["paused"] is True

    await producer.resume()
    assert producer.paused is False
    assert (await producer.dump())["paused"] is False

    # Calls made without awaiting the previous one (tasks, run in order): the observer
    # still fires 'pause' and 'resume' when the state was the opposite.
    tasks = [
        asyncio.ensure_future(producer.pause()),
        asyncio.ensure_future(producer.resume()),
        asyncio.ensure_future(producer.pause()),
        asyncio.ensure_future(producer.pause()),
        asyncio.ensure_future(producer.pause()),
        asyncio.ensure_future(producer.resume()),
    ]
    await asyncio.gather(*tasks)
    assert len(pauses) == 3
    assert len(resumes) == 3


async def test_pause_and_resume_emit_events_in_order(transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    events: list[str] = []
    producer.observer.once("resume", lambda: events.append("resume"))
    producer.observer.once("pause", lambda: events.append("pause"))

    await asyncio.gather(producer.pause(), producer.resume())

    assert events == ["pause", "resume"]
    assert producer.paused is False


async def test_pause_when_paused_emits_nothing(transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS, paused=True)
    events: list[str] = []
    producer.observer.on("pause", lambda: events.append("pause"))
    producer.observer.on("resume", lambda: events.append("resume"))
    assert producer.paused is True
    await producer.pause()
    await producer.resume()
    await producer.resume()
    assert events == ["resume"]


async def test_failing_listener_emits_listenererror_with_the_error(transport1: Any) -> None:
    """As mediasoup's safeEmit: 'listenererror' gets the event name and the exception,
    and the pause still succeeds."""
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    failure = RuntimeError("listener failed")
    errors: list[tuple[str, Exception]] = []

    def fail() -> None:
        raise failure

    producer.observer.on("pause", fail)
    producer.observer.on("listenererror", lambda name, error: errors.append((name, error)))
    await producer.pause()
    assert producer.paused is True
    assert errors == [("pause", failure)]


# -- trace events ---------------------------------------------------------------------


async def test_enable_trace_event_succeeds(transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)

    await producer.enable_trace_event(["rtp", "pli"])
    assert sorted((await producer.dump())["traceEventTypes"]) == ["pli", "rtp"]

    await producer.enable_trace_event()
    assert (await producer.dump())["traceEventTypes"] == []

    await producer.enable_trace_event(["nack", "FOO", "fir"])
    assert sorted((await producer.dump())["traceEventTypes"]) == ["fir", "nack"]

    # The worker accepts 'sr' but leaves it out of its dump.
    await producer.enable_trace_event(types=["keyframe", "sr"])
    assert (await producer.dump())["traceEventTypes"] == ["keyframe"]

    await producer.enable_trace_event([])
    assert (await producer.dump())["traceEventTypes"] == []


async def test_enable_trace_event_with_wrong_arguments_raises_type_error(
    transport1: Any,
) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    with pytest.raises(TypeError):
        await producer.enable_trace_event(123)
    with pytest.raises(TypeError):
        await producer.enable_trace_event("rtp")
    with pytest.raises(TypeError):
        await producer.enable_trace_event(["fir", 123.123])
    # Nothing reached the worker.
    assert (await producer.dump())["traceEventTypes"] == []


# -- notifications ----------------------------------------------------------------------


async def test_emits_score(transport2: Any) -> None:
    producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    channel = producer.channel_for_testing
    scores: list[Any] = []
    observer_scores: list[Any] = []
    producer.on("score", scores.append)
    producer.observer.on("score", observer_scores.append)

    body = ScoreNotificationT(
        scores=[
            ScoreT(encodingIdx=0, ssrc=11, rid=None, score=10),
            ScoreT(encodingIdx=1, ssrc=22, rid="r1", score=9),
        ]
    )
    for _ in range(3):
        inject(channel, Event.PRODUCER_SCORE, producer.id, body)
    await next_loop_iteration()

    expected = [
        {"encodingIdx": 0, "ssrc": 11, "score": 10},
        {"encodingIdx": 1, "ssrc": 22, "rid": "r1", "score": 9},
    ]
    assert len(scores) == 3
    assert len(observer_scores) == 3
    assert scores[0] == expected
    assert producer.score == expected

    # An empty notification body means no scores.
    inject(channel, Event.PRODUCER_SCORE, producer.id, ScoreNotificationT())
    await next_loop_iteration()
    assert producer.score == []


async def test_emits_videoorientationchange_and_trace_notifications(transport2: Any) -> None:
    producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    channel = producer.channel_for_testing
    orientations: list[Any] = []
    observer_orientations: list[Any] = []
    traces: list[Any] = []
    observer_traces: list[Any] = []
    producer.on("videoorientationchange", orientations.append)
    producer.observer.on("videoorientationchange", observer_orientations.append)
    producer.on("trace", traces.append)
    producer.observer.on("trace", observer_traces.append)

    inject(
        channel,
        Event.PRODUCER_VIDEO_ORIENTATION_CHANGE,
        producer.id,
        VideoOrientationChangeNotificationT(camera=True, flip=False, rotation=90),
    )
    inject(
        channel,
        Event.PRODUCER_TRACE,
        producer.id,
        TraceNotificationT(type=3, timestamp=1234, direction=1),
    )
    # Unknown events are logged and ignored.
    inject(channel, Event.CONSUMER_RTP, producer.id)
    await next_loop_iteration()

    assert orientations == [{"camera": True, "flip": False, "rotation": 90}]
    assert observer_orientations == orientations
    assert traces == [{"type": "pli", "timestamp": 1234, "direction": "out"}]
    assert observer_traces == traces


async def test_direct_producer_send_emits_trace_and_stats(direct_transport: Any) -> None:
    producer = await direct_transport.produce(**direct_audio_options())
    traces: list[Any] = []
    observer_traces: list[Any] = []
    producer.on("trace", traces.append)
    producer.observer.on("trace", observer_traces.append)
    await producer.enable_trace_event(["rtp"])

    got_trace = asyncio.ensure_future(producer.events.wait_for("trace"))
    producer.send(rtp_packet(ssrc=AUDIO_SSRC, payload_type=111, seq=1, timestamp=960))
    producer.send(bytearray(rtp_packet(ssrc=AUDIO_SSRC, payload_type=111, seq=2, timestamp=1920)))
    producer.send(memoryview(rtp_packet(ssrc=AUDIO_SSRC, payload_type=111, seq=3, timestamp=2880)))
    async with asyncio.timeout(5):
        await got_trace
        while len(traces) < 3:
            await producer.events.wait_for("trace")

    trace = traces[0]
    assert trace["type"] == "rtp"
    assert trace["direction"] == "in"
    assert isinstance(trace["timestamp"], int)
    info = trace["info"]
    assert info["isRtx"] is False
    packet = info["rtpPacket"]
    assert packet["ssrc"] == AUDIO_SSRC
    assert packet["payloadType"] == 111
    assert packet["sequenceNumber"] == 1
    assert packet["timestamp"] == 960
    assert packet["payloadSize"] == 4
    assert set(packet) == {
        "payloadType", "sequenceNumber", "timestamp", "marker", "ssrc", "isKeyFrame", "size",
        "payloadSize", "spatialLayer", "temporalLayer", "mid", "rid", "rrid",
        "wideSequenceNumber",
    }  # fmt: skip
    assert [t["info"]["rtpPacket"]["sequenceNumber"] for t in traces] == [1, 2, 3]
    assert observer_traces == traces

    stats = await producer.get_stats()
    assert len(stats) == 1
    stat = stats[0]
    assert stat["type"] == "inbound-rtp"
    assert stat["kind"] == "audio"
    assert stat["mimeType"] == "audio/opus"
    assert stat["ssrc"] == AUDIO_SSRC
    assert stat["packetCount"] == 3

    dump = await producer.dump()
    streams = dump["rtpStreams"]
    assert len(streams) == 1
    assert streams[0]["params"]["ssrc"] == AUDIO_SSRC
    assert streams[0]["params"]["mimeType"] == "audio/opus"
    assert streams[0]["params"]["rid"] in (None, "")
    assert streams[0]["rtxStream"] is None
    assert isinstance(streams[0]["score"], int)


async def test_direct_producer_emits_videoorientationchange(direct_transport: Any) -> None:
    producer = await direct_transport.produce(**direct_video_options())
    orientations: list[Any] = []
    producer.observer.on("videoorientationchange", orientations.append)

    # Camera, no flip, rotation 90 (CVO byte 0b1001), twice: notified once.
    for seq in (1, 2):
        producer.send(
            rtp_packet(
                ssrc=VIDEO_SSRC,
                payload_type=96,
                seq=seq,
                timestamp=seq * 3000,
                extensions={13: b"\x09"},
            )
        )
    async with asyncio.timeout(5):
        (orientation,) = await producer.events.wait_for("videoorientationchange")
    assert orientation == {"camera": True, "flip": False, "rotation": 90}

    # Flip and rotation 270 (0b0111).
    producer.send(
        rtp_packet(
            ssrc=VIDEO_SSRC, payload_type=96, seq=3, timestamp=9000, extensions={13: b"\x07"}
        )
    )
    async with asyncio.timeout(5):
        (orientation,) = await producer.events.wait_for("videoorientationchange")
    assert orientation == {"camera": False, "flip": True, "rotation": 270}
    assert orientations == [
        {"camera": True, "flip": False, "rotation": 90},
        {"camera": False, "flip": True, "rotation": 270},
    ]


async def test_send_with_wrong_argument_raises_type_error(direct_transport: Any) -> None:
    producer = await direct_transport.produce(**direct_audio_options())
    with pytest.raises(TypeError):
        producer.send("not bytes")
    with pytest.raises(TypeError):
        producer.send([1, 2, 3])


# -- closing ----------------------------------------------------------------------------


async def test_close_succeeds(router: Router, transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    closes: list[None] = []
    producer.observer.once("close", lambda: closes.append(None))

    producer.close()

    assert closes == [None]
    assert producer.closed is True
    assert transport1.producers == {}
    router_dump = await router.dump()
    assert router_dump["mapProducerIdConsumerIds"] == []
    assert router_dump["mapConsumerIdProducerId"] == []
    transport_dump = await transport1.dump()
    assert transport_dump["producerIds"] == []
    assert transport_dump["consumerIds"] == []

    # Closing again does nothing.
    producer.close()
    producer.transport_closed()
    assert closes == [None]


async def test_methods_raise_if_closed(transport1: Any, direct_transport: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    producer.close()
    with pytest.raises(InvalidStateError, match="Producer closed"):
        await producer.dump()
    with pytest.raises(InvalidStateError):
        await producer.get_stats()
    with pytest.raises(InvalidStateError):
        await producer.pause()
    with pytest.raises(InvalidStateError):
        await producer.resume()
    with pytest.raises(InvalidStateError):
        await producer.enable_trace_event(["rtp"])
    assert producer.paused is False

    direct_producer = await direct_transport.produce(**direct_audio_options())
    direct_producer.close()
    with pytest.raises(InvalidStateError):
        direct_producer.send(rtp_packet(ssrc=AUDIO_SSRC, payload_type=111, seq=1, timestamp=0))


async def test_closed_producer_ignores_notifications(transport2: Any) -> None:
    producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    channel = producer.channel_for_testing
    scores: list[Any] = []
    producer.on("score", scores.append)
    producer.close()
    inject(
        channel,
        Event.PRODUCER_SCORE,
        producer.id,
        ScoreNotificationT(scores=[ScoreT(encodingIdx=0, ssrc=1, score=5)]),
    )
    await next_loop_iteration()
    assert scores == []
    assert producer.score == []


async def test_emits_transportclose_if_transport_is_closed(transport2: Any) -> None:
    producer = await transport2.produce(**VIDEO_PRODUCER_OPTIONS)
    closes: list[None] = []
    transport_closes: list[None] = []
    producer.observer.once("close", lambda: closes.append(None))
    producer.on("transportclose", lambda: transport_closes.append(None))

    transport2.close()

    assert transport_closes == [None]
    assert closes == [None]
    assert producer.closed is True
    # And it is closed for good.
    producer.close()
    producer.transport_closed()
    assert closes == [None]
    assert transport_closes == [None]


async def test_once_and_off_delegate_to_events(transport1: Any) -> None:
    producer = await transport1.produce(**AUDIO_PRODUCER_OPTIONS)
    calls: list[str] = []

    def on_score(_: Any) -> None:
        calls.append("on")

    producer.on("score", on_score)
    producer.once("score", lambda _: calls.append("once"))
    producer.events.emit("score", [])
    producer.off("score", on_score)
    producer.events.emit("score", [])
    assert calls == ["on", "once"]

    producer.app_data = {"x": 1}
    assert producer.app_data == {"x": 1}


async def test_app_data_defaults_to_empty_dict(transport1: Any) -> None:
    options = {k: v for k, v in AUDIO_PRODUCER_OPTIONS.items() if k != "app_data"}
    producer = await transport1.produce(**options)
    assert producer.app_data == {}


# -- helpers ------------------------------------------------------------------------------


def test_producer_type_conversions() -> None:
    for name, value in (
        ("simple", FbsRtpType.SIMPLE),
        ("simulcast", FbsRtpType.SIMULCAST),
        ("svc", FbsRtpType.SVC),
    ):
        assert producer_type_to_fbs(name) == value
        assert producer_type_from_fbs(value) == name
    with pytest.raises(TypeError):
        producer_type_from_fbs(FbsRtpType.PIPE)
    with pytest.raises(TypeError):
        producer_type_to_fbs("pipe")


def test_unpack_fbs() -> None:
    class Vector:
        def tolist(self) -> list[int]:
            return [1, 2]

    class Table:
        def __init__(self) -> None:
            self.name = "x"
            self.data = b"\x01\x02"
            self.items = (Vector(), None, 1.5)
            self.infoType = 1
            self.info = {"not": "a table"}
            self.kindType = 3  # no 'kind' field: kept

    table = Table()
    table.info = Table()  # type: ignore[assignment]
    table.info.info = None  # type: ignore[attr-defined]
    result = unpack_fbs(table)
    assert result == {
        "name": "x",
        "data": [1, 2],
        "items": [[1, 2], None, 1.5],
        "info": {"name": "x", "data": [1, 2], "items": [[1, 2], None, 1.5], "info": None,
                 "kindType": 3},
        "kindType": 3,
    }  # fmt: skip


def test_parse_producer_dump_without_optional_fields() -> None:
    dump = SimpleNamespace(
        id="p",
        kind=0,
        type=FbsRtpType.SIMPLE,
        rtpParameters=RtpParametersT(codecs=[], headerExtensions=[], encodings=[]),
        rtpMapping=None,
        rtpStreams=None,
        traceEventTypes=None,
        paused=True,
    )
    result = parse_producer_dump(dump)
    assert result["kind"] == "audio"
    assert result["traceEventTypes"] == []
    assert result["paused"] is True
    assert "rtpMapping" not in result
    assert "rtpStreams" not in result
