"""Consumer against a real worker (port of mediasoup's test-Consumer.ts, and more)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import flatbuffers
import pytest

from mafalda.mediasoup import Router
from mafalda.mediasoup._fbs.Consumer.ConsumerLayers import ConsumerLayersT
from mafalda.mediasoup._fbs.Consumer.ConsumerScore import ConsumerScoreT
from mafalda.mediasoup._fbs.Consumer.FirTraceInfo import FirTraceInfoT
from mafalda.mediasoup._fbs.Consumer.LayersChangeNotification import LayersChangeNotificationT
from mafalda.mediasoup._fbs.Consumer.ScoreNotification import ScoreNotificationT
from mafalda.mediasoup._fbs.Consumer.TraceEventType import TraceEventType
from mafalda.mediasoup._fbs.Consumer.TraceInfo import TraceInfo
from mafalda.mediasoup._fbs.Consumer.TraceNotification import TraceNotificationT
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT
from mafalda.mediasoup.channel import Channel, encode_notification
from mafalda.mediasoup.consumer import (
    Consumer,
    consumer_trace_event_type_from_fbs,
    parse_base_consumer_dump,
    parse_consumer_dump,
    parse_rtp_stream,
    parse_trace_event_data,
)
from mafalda.mediasoup.errors import InvalidStateError, UnsupportedError

from .conftest import is_mafalda_router

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
                "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
            }
        ],
        "headerExtensions": [
            {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10},
            {"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": 12},
        ],
        "encodings": [{"ssrc": 11111111}],
        "rtcp": {"cname": "FOOBAR"},
        "msid": "1111-1111-1111-1111 2222-2222-2222-2222",
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
                    {"type": "nack", "parameter": ""},
                    {"type": "nack", "parameter": "pli"},
                    {"type": "goog-remb", "parameter": ""},
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
            {"ssrc": 22222222, "scalabilityMode": "L1T5", "rtx": {"ssrc": 22222223}},
            {"ssrc": 22222224, "scalabilityMode": "L1T5", "rtx": {"ssrc": 22222225}},
            {"ssrc": 22222226, "scalabilityMode": "L1T5", "rtx": {"ssrc": 22222227}},
            {"ssrc": 22222228, "scalabilityMode": "L1T5", "rtx": {"ssrc": 22222229}},
        ],
        "rtcp": {"cname": "FOOBAR"},
    },
    "app_data": {"foo": 1, "bar": "2"},
}

CONSUMER_DEVICE_CAPABILITIES: Any = {
    "codecs": [
        {
            "mimeType": "audio/opus",
            "kind": "audio",
            "preferredPayloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "rtcpFeedback": [{"type": "nack", "parameter": ""}],
        },
        {
            "mimeType": "video/H264",
            "kind": "video",
            "preferredPayloadType": 101,
            "clockRate": 90000,
            "parameters": {
                "level-asymmetry-allowed": 1,
                "packetization-mode": 1,
                "profile-level-id": "4d0032",
            },
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "nack", "parameter": "pli"},
                {"type": "ccm", "parameter": "fir"},
                {"type": "goog-remb", "parameter": ""},
            ],
        },
        {
            "mimeType": "video/rtx",
            "kind": "video",
            "preferredPayloadType": 102,
            "clockRate": 90000,
            "parameters": {"apt": 101},
            "rtcpFeedback": [],
        },
    ],
    "headerExtensions": [
        {
            "kind": "audio",
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "preferredId": 1,
            "preferredEncrypt": False,
        },
        {
            "kind": "video",
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "preferredId": 1,
            "preferredEncrypt": False,
        },
        {
            "kind": "video",
            "uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
            "preferredId": 2,
            "preferredEncrypt": False,
        },
        {
            "kind": "audio",
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "preferredId": 4,
            "preferredEncrypt": False,
        },
        {
            "kind": "video",
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "preferredId": 4,
            "preferredEncrypt": False,
        },
        {
            "kind": "audio",
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "preferredId": 6,
            "preferredEncrypt": False,
        },
        {
            "kind": "video",
            "uri": "urn:3gpp:video-orientation",
            "preferredId": 8,
            "preferredEncrypt": False,
        },
        {
            "kind": "video",
            "uri": "urn:ietf:params:rtp-hdrext:toffset",
            "preferredId": 9,
            "preferredEncrypt": False,
        },
    ],
}

H264_CONSUMER_CODEC = {
    "mimeType": "video/H264",
    "payloadType": 103,
    "clockRate": 90000,
    "parameters": {"packetization-mode": 1, "profile-level-id": "4d0032"},
    "rtcpFeedback": [
        {"type": "nack", "parameter": ""},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
        {"type": "goog-remb", "parameter": ""},
    ],
}
RTX_CONSUMER_CODEC = {
    "mimeType": "video/rtx",
    "payloadType": 104,
    "clockRate": 90000,
    "parameters": {"apt": 103},
    "rtcpFeedback": [],
}

DIRECT_AUDIO_SSRC = 55555555


def rtp_packet(*, ssrc: int, payload_type: int, seq: int, timestamp: int) -> bytes:
    return struct.pack("!BBHII", 0x80, payload_type, seq, timestamp, ssrc) + b"\xaa\xbb\xcc"


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
async def audio_producer(transport1: Any) -> Any:
    return await transport1.produce(**AUDIO_PRODUCER_OPTIONS)


@pytest.fixture
async def video_producer(transport1: Any) -> Any:
    return await transport1.produce(**VIDEO_PRODUCER_OPTIONS)


@pytest.fixture
async def direct_transport(router: Router) -> AsyncIterator[Any]:
    transport = await router.create_direct_transport()
    yield transport
    transport.close()


async def consume_audio(transport: Any, producer: Any, **kwargs: Any) -> Consumer:
    consumer: Consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES, **kwargs
    )
    return consumer


# -- creation ---------------------------------------------------------------------------


async def test_consume_succeeds(
    router: Router, transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    new_consumers: list[Consumer] = []
    transport2.observer.on("newconsumer", new_consumers.append)

    assert router.can_consume(
        producer_id=audio_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    audio_consumer = await consume_audio(transport2, audio_producer, app_data={"baz": "LOL"})

    assert new_consumers == [audio_consumer]
    assert isinstance(audio_consumer, Consumer)
    assert isinstance(audio_consumer.id, str)
    assert audio_consumer.producer_id == audio_producer.id
    assert audio_consumer.closed is False
    assert audio_consumer.kind == "audio"
    assert audio_consumer.rtp_parameters["mid"] == "0"
    assert audio_consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "audio/opus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
            "rtcpFeedback": [],
        }
    ]
    assert audio_consumer.rtp_parameters["msid"] == "1111-1111-1111-1111 2222-2222-2222-2222"
    assert audio_consumer.type == "simple"
    assert audio_consumer.paused is False
    assert audio_consumer.producer_paused is False
    assert audio_consumer.priority == 1
    assert audio_consumer.score == {"score": 10, "producerScore": 0, "producerScores": [0]}
    assert audio_consumer.preferred_layers is None
    assert audio_consumer.current_layers is None
    assert audio_consumer.app_data == {"baz": "LOL"}
    assert "Consumer" in repr(audio_consumer) and audio_consumer.id in repr(audio_consumer)

    dump1 = await router.dump()
    assert {"key": audio_producer.id, "values": [audio_consumer.id]} in dump1[
        "mapProducerIdConsumerIds"
    ]
    assert {"key": audio_consumer.id, "value": audio_producer.id} in dump1[
        "mapConsumerIdProducerId"
    ]
    transport_dump = await transport2.dump()
    assert transport_dump["producerIds"] == []
    assert transport_dump["consumerIds"] == [audio_consumer.id]

    assert router.can_consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    await video_producer.pause()
    video_consumer = await transport2.consume(
        producer_id=video_producer.id,
        rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES,
        paused=True,
        preferred_layers={"spatialLayer": 12, "temporalLayer": 0},
        app_data={"baz": "LOL"},
    )

    assert new_consumers == [audio_consumer, video_consumer]
    assert video_consumer.producer_id == video_producer.id
    assert video_consumer.closed is False
    assert video_consumer.kind == "video"
    assert video_consumer.rtp_parameters["mid"] == "1"
    assert video_consumer.rtp_parameters["codecs"] == [H264_CONSUMER_CODEC, RTX_CONSUMER_CODEC]
    assert "msid" not in video_consumer.rtp_parameters
    assert video_consumer.type == "simulcast"
    assert video_consumer.paused is True
    assert video_consumer.producer_paused is True
    assert video_consumer.priority == 1
    assert video_consumer.score == {
        "score": 10,
        "producerScore": 0,
        "producerScores": [0, 0, 0, 0],
    }
    assert video_consumer.preferred_layers == {"spatialLayer": 3, "temporalLayer": 0}
    assert video_consumer.current_layers is None
    assert video_consumer.app_data == {"baz": "LOL"}

    video_pipe_consumer = await transport2.consume(
        producer_id=video_producer.id,
        rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES,
        pipe=True,
    )

    assert new_consumers == [audio_consumer, video_consumer, video_pipe_consumer]
    assert video_pipe_consumer.producer_id == video_producer.id
    assert video_pipe_consumer.kind == "video"
    assert "mid" not in video_pipe_consumer.rtp_parameters
    assert video_pipe_consumer.rtp_parameters["codecs"] == [
        H264_CONSUMER_CODEC,
        RTX_CONSUMER_CODEC,
    ]
    assert video_pipe_consumer.type == "pipe"
    assert video_pipe_consumer.paused is False
    assert video_pipe_consumer.producer_paused is True
    assert video_pipe_consumer.priority == 1
    assert video_pipe_consumer.score == {
        "score": 10,
        "producerScore": 10,
        "producerScores": [0, 0, 0, 0],
    }
    assert video_pipe_consumer.preferred_layers is None
    assert video_pipe_consumer.current_layers is None
    assert video_pipe_consumer.app_data == {}

    dump2 = await router.dump()
    by_producer = {e["key"]: sorted(e["values"]) for e in dump2["mapProducerIdConsumerIds"]}
    assert by_producer[audio_producer.id] == [audio_consumer.id]
    assert by_producer[video_producer.id] == sorted([video_consumer.id, video_pipe_consumer.id])
    by_consumer = {e["key"]: e["value"] for e in dump2["mapConsumerIdProducerId"]}
    assert by_consumer == {
        audio_consumer.id: audio_producer.id,
        video_consumer.id: video_producer.id,
        video_pipe_consumer.id: video_producer.id,
    }
    transport_dump = await transport2.dump()
    assert transport_dump["producerIds"] == []
    assert sorted(transport_dump["consumerIds"]) == sorted(
        [audio_consumer.id, video_consumer.id, video_pipe_consumer.id]
    )


async def test_consume_with_enable_rtx_succeeds(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer, enable_rtx=True)
    assert consumer.kind == "audio"
    assert consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "audio/opus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 2,
            "parameters": {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"},
            "rtcpFeedback": [{"type": "nack", "parameter": ""}],
        }
    ]


async def test_consume_with_user_provided_mid(transport2: Any, audio_producer: Any) -> None:
    consumer1 = await consume_audio(transport2, audio_producer)
    assert consumer1.rtp_parameters["mid"].isdigit()
    consumer2 = await consume_audio(transport2, audio_producer, mid="custom-mid")
    assert consumer2.rtp_parameters["mid"] == "custom-mid"
    consumer3 = await consume_audio(transport2, audio_producer)
    assert consumer3.rtp_parameters["mid"].isdigit()
    assert int(consumer1.rtp_parameters["mid"]) + 1 == int(consumer3.rtp_parameters["mid"])


async def test_consume_with_incompatible_rtp_capabilities_raises_unsupported_error(
    router: Router, transport2: Any, audio_producer: Any
) -> None:
    invalid: Any = {
        "codecs": [
            {
                "kind": "audio",
                "mimeType": "audio/ISAC",
                "preferredPayloadType": 100,
                "clockRate": 32000,
                "channels": 1,
            }
        ],
        "headerExtensions": [],
    }
    assert not router.can_consume(producer_id=audio_producer.id, rtp_capabilities=invalid)
    with pytest.raises(UnsupportedError):
        await transport2.consume(producer_id=audio_producer.id, rtp_capabilities=invalid)

    invalid = {"codecs": [], "headerExtensions": []}
    assert not router.can_consume(producer_id=audio_producer.id, rtp_capabilities=invalid)
    with pytest.raises(UnsupportedError):
        await transport2.consume(producer_id=audio_producer.id, rtp_capabilities=invalid)
    assert transport2.consumers == {}


# -- dump and stats -------------------------------------------------------------------


async def test_dump_succeeds(
    router: Any, transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    audio_consumer = await consume_audio(transport2, audio_producer)
    dump1: Any = await audio_consumer.dump()
    assert dump1["id"] == audio_consumer.id
    assert dump1["producerId"] == audio_consumer.producer_id
    assert dump1["kind"] == audio_consumer.kind
    params = dump1["rtpParameters"]
    assert len(params["codecs"]) == 1
    codec = params["codecs"][0]
    assert codec["mimeType"] == "audio/opus"
    assert codec["payloadType"] == 100
    assert codec["clockRate"] == 48000
    assert codec["channels"] == 2
    assert codec["parameters"] == {"useinbandfec": 1, "usedtx": 1, "foo": 222.222, "bar": "333"}
    assert codec["rtcpFeedback"] == []
    assert params["headerExtensions"] == [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1, "encrypt": False, "parameters": {}},
        {
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "id": 4,
            "parameters": {},
            "encrypt": False,
        },
        {
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "id": 6,
            "parameters": {},
            "encrypt": False,
        },
    ]
    assert len(params["encodings"]) == 1
    assert params["encodings"][0]["codecPayloadType"] == 100
    assert params["encodings"][0]["ssrc"] == audio_consumer.rtp_parameters["encodings"][0]["ssrc"]
    assert params["msid"] == "1111-1111-1111-1111 2222-2222-2222-2222"
    assert dump1["type"] == "simple"
    assert len(dump1["consumableRtpEncodings"]) == 1
    if not is_mafalda_router(router):
        # Across workers the consumer reads a piped copy of the producer, whose
        # consumable SSRCs are its own (as with mediasoup's pipeToRouter).
        assert (
            dump1["consumableRtpEncodings"][0]["ssrc"]
            == audio_producer.consumable_rtp_parameters["encodings"][0]["ssrc"]
        )
    assert dump1["supportedCodecPayloadTypes"] == [100]
    assert dump1["traceEventTypes"] == []
    assert dump1["paused"] is False
    assert dump1["producerPaused"] is False
    assert dump1["priority"] == 1
    stream = dump1["rtpStream"]
    assert stream["params"]["ssrc"] == audio_consumer.rtp_parameters["encodings"][0]["ssrc"]
    assert stream["params"]["payloadType"] == 100
    assert stream["params"]["mimeType"] == "audio/opus"
    assert stream["params"]["clockRate"] == 48000
    assert stream["params"]["cname"] == "FOOBAR"
    assert "rid" not in stream["params"]
    assert "rtxSsrc" not in stream["params"]
    assert "rtxStream" not in stream
    assert isinstance(stream["score"], int)

    video_consumer = await transport2.consume(
        producer_id=video_producer.id,
        rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES,
        paused=True,
    )
    dump2: Any = await video_consumer.dump()
    assert dump2["id"] == video_consumer.id
    assert dump2["producerId"] == video_consumer.producer_id
    assert dump2["kind"] == video_consumer.kind
    params = dump2["rtpParameters"]
    assert len(params["codecs"]) == 2
    codec = params["codecs"][0]
    assert codec["mimeType"] == "video/H264"
    assert codec["payloadType"] == 103
    assert codec["clockRate"] == 90000
    assert "channels" not in codec
    assert codec["parameters"] == {"packetization-mode": 1, "profile-level-id": "4d0032"}
    assert codec["rtcpFeedback"] == [
        {"type": "nack"},
        {"type": "nack", "parameter": "pli"},
        {"type": "ccm", "parameter": "fir"},
        {"type": "goog-remb"},
    ]
    assert params["headerExtensions"] == [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1, "encrypt": False, "parameters": {}},
        {
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "id": 4,
            "parameters": {},
            "encrypt": False,
        },
        {"uri": "urn:3gpp:video-orientation", "id": 8, "parameters": {}, "encrypt": False},
        {"uri": "urn:ietf:params:rtp-hdrext:toffset", "id": 9, "parameters": {}, "encrypt": False},
    ]
    (encoding,) = params["encodings"]
    consumer_encoding = video_consumer.rtp_parameters["encodings"][0]
    assert encoding["codecPayloadType"] == 103
    assert encoding["ssrc"] == consumer_encoding["ssrc"]
    assert encoding["rtx"] == {"ssrc": consumer_encoding["rtx"]["ssrc"]}
    assert encoding["scalabilityMode"] == "L4T5"
    assert "msid" not in params
    consumable = dump2["consumableRtpEncodings"]
    assert len(consumable) == 4
    for i in range(4):
        assert is_mafalda_router(router) or (
            consumable[i]["ssrc"]
            == video_producer.consumable_rtp_parameters["encodings"][i]["ssrc"]
        )
        assert consumable[i]["scalabilityMode"] == "L1T5"
    assert dump2["supportedCodecPayloadTypes"] == [103]
    assert dump2["paused"] is True
    assert dump2["producerPaused"] is False
    assert dump2["priority"] == 1
    assert dump2["type"] == "simulcast"
    stream = dump2["rtpStream"]
    assert stream["params"]["ssrc"] == consumer_encoding["ssrc"]
    assert stream["params"]["rtxSsrc"] == consumer_encoding["rtx"]["ssrc"]
    assert stream["params"]["rtxPayloadType"] == 104
    assert stream["params"]["useNack"] is True
    assert stream["params"]["usePli"] is True
    assert stream["params"]["useFir"] is True
    assert stream["params"]["spatialLayers"] == 4
    assert stream["params"]["temporalLayers"] == 5
    rtx_params = stream["rtxStream"]["params"]
    assert rtx_params["ssrc"] == consumer_encoding["rtx"]["ssrc"]
    assert rtx_params["payloadType"] == 104
    assert rtx_params["mimeType"] == "video/rtx"
    assert rtx_params["clockRate"] == 90000
    assert rtx_params["cname"] == "FOOBAR"
    for key in (
        "preferredSpatialLayer",
        "targetSpatialLayer",
        "currentSpatialLayer",
        "preferredTemporalLayer",
        "targetTemporalLayer",
        "currentTemporalLayer",
    ):
        assert isinstance(dump2[key], int)
    assert dump2["preferredSpatialLayer"] == 3
    assert dump2["preferredTemporalLayer"] == 4


async def test_pipe_consumer_dump(transport2: Any, video_producer: Any) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id,
        rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES,
        pipe=True,
    )
    dump: Any = await consumer.dump()
    assert dump["type"] == "pipe"
    assert "rtpStream" not in dump
    streams = dump["rtpStreams"]
    assert len(streams) == 4
    encodings = consumer.rtp_parameters["encodings"]
    assert len(encodings) == 4
    assert [s["params"]["ssrc"] for s in streams] == [e["ssrc"] for e in encodings]
    assert [s["rtxStream"]["params"]["ssrc"] for s in streams] == [
        e["rtx"]["ssrc"] for e in encodings
    ]
    assert [s["params"]["encodingIdx"] for s in streams] == [0, 1, 2, 3]


async def test_get_stats_succeeds(
    transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    audio_consumer = await consume_audio(transport2, audio_producer)
    (stat,) = await audio_consumer.get_stats()
    assert stat["type"] == "outbound-rtp"
    assert stat["kind"] == "audio"
    assert stat["mimeType"] == "audio/opus"
    assert stat["ssrc"] == audio_consumer.rtp_parameters["encodings"][0]["ssrc"]

    video_consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    (stat,) = await video_consumer.get_stats()
    assert stat["type"] == "outbound-rtp"
    assert stat["kind"] == "video"
    assert stat["mimeType"] == "video/H264"
    assert stat["ssrc"] == video_consumer.rtp_parameters["encodings"][0]["ssrc"]


# -- pause / resume -------------------------------------------------------------------


async def test_pause_and_resume_succeed(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    pauses: list[None] = []
    resumes: list[None] = []
    consumer.observer.on("pause", lambda: pauses.append(None))
    consumer.observer.on("resume", lambda: resumes.append(None))

    await consumer.pause()
    assert consumer.paused is True
    assert (await consumer.dump())["paused"] is True

    await consumer.resume()
    assert consumer.paused is False
    assert (await consumer.dump())["paused"] is False

    # Calls made without awaiting the previous one (tasks, run in order): the observer
    # still fires 'pause' and 'resume' when the state was the opposite.
    tasks = [
        asyncio.ensure_future(consumer.pause()),
        asyncio.ensure_future(consumer.resume()),
        asyncio.ensure_future(consumer.pause()),
        asyncio.ensure_future(consumer.pause()),
        asyncio.ensure_future(consumer.pause()),
        asyncio.ensure_future(consumer.resume()),
    ]
    await asyncio.gather(*tasks)
    assert len(pauses) == 3
    assert len(resumes) == 3


async def test_producer_pause_and_resume_emit_observer_events(
    transport2: Any, audio_producer: Any
) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    events: list[str] = []
    consumer.observer.once("resume", lambda: events.append("resume"))
    consumer.observer.once("pause", lambda: events.append("pause"))

    resumed = asyncio.ensure_future(consumer.events.wait_for("producerresume"))
    await asyncio.gather(audio_producer.pause(), audio_producer.resume())
    async with asyncio.timeout(5):
        await resumed

    assert events == ["pause", "resume"]
    assert consumer.paused is False


async def test_no_observer_pause_while_the_other_side_is_paused(
    transport2: Any, audio_producer: Any
) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    events: list[str] = []
    consumer.observer.on("pause", lambda: events.append("pause"))
    consumer.observer.on("resume", lambda: events.append("resume"))

    # The producer pauses: the consumer's media stops (observer 'pause').
    async with asyncio.timeout(5):
        await asyncio.gather(consumer.events.wait_for("producerpause"), audio_producer.pause())
    # Pausing the consumer now changes nothing for the observer, nor does resuming it.
    await consumer.pause()
    await consumer.resume()
    assert events == ["pause"]
    # Consumer paused, then producer resumed: media still stopped.
    await consumer.pause()
    async with asyncio.timeout(5):
        await asyncio.gather(consumer.events.wait_for("producerresume"), audio_producer.resume())
    assert events == ["pause"]
    await consumer.resume()
    assert events == ["pause", "resume"]
    # Producer paused while the consumer is paused: no observer event either.
    await consumer.pause()
    async with asyncio.timeout(5):
        await asyncio.gather(consumer.events.wait_for("producerpause"), audio_producer.pause())
    assert events == ["pause", "resume", "pause"]


# -- layers and priority ----------------------------------------------------------------


async def test_set_preferred_layers_succeeds(
    transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    audio_consumer = await consume_audio(transport2, audio_producer)
    video_consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )

    await audio_consumer.set_preferred_layers(spatial_layer=1, temporal_layer=1)
    assert audio_consumer.preferred_layers is None

    await video_consumer.set_preferred_layers(spatial_layer=2, temporal_layer=3)
    assert video_consumer.preferred_layers == {"spatialLayer": 2, "temporalLayer": 3}

    await video_consumer.set_preferred_layers(spatial_layer=3)
    assert video_consumer.preferred_layers == {"spatialLayer": 3, "temporalLayer": 4}

    await video_consumer.set_preferred_layers(spatial_layer=3, temporal_layer=0)
    assert video_consumer.preferred_layers == {"spatialLayer": 3, "temporalLayer": 0}

    await video_consumer.set_preferred_layers(spatial_layer=66, temporal_layer=66)
    assert video_consumer.preferred_layers == {"spatialLayer": 3, "temporalLayer": 4}


async def test_set_preferred_layers_with_wrong_arguments_raises(
    transport2: Any, video_producer: Any
) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    before = consumer.preferred_layers
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers()
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers(foo="123")
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers("foo")
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers(temporal_layer=2)
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers(spatial_layer="1")
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers(spatial_layer=True)
    with pytest.raises(TypeError):
        await consumer.set_preferred_layers(spatial_layer=1, temporal_layer=1.5)
    with pytest.raises(ValueError, match="spatial_layer"):
        await consumer.set_preferred_layers(spatial_layer=-1)
    with pytest.raises(ValueError, match="spatial_layer"):
        await consumer.set_preferred_layers(spatial_layer=256)
    with pytest.raises(ValueError, match="temporal_layer"):
        await consumer.set_preferred_layers(spatial_layer=1, temporal_layer=-1)
    assert consumer.preferred_layers == before


async def test_set_priority_succeeds(transport2: Any, video_producer: Any) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    await consumer.set_priority(2)
    assert consumer.priority == 2
    assert (await consumer.dump())["priority"] == 2


async def test_set_priority_with_wrong_arguments_raises(
    transport2: Any, video_producer: Any
) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    with pytest.raises(TypeError):
        await consumer.set_priority()
    with pytest.raises(ValueError, match="priority"):
        await consumer.set_priority(0)
    with pytest.raises(ValueError, match="priority"):
        await consumer.set_priority(256)
    with pytest.raises(TypeError):
        await consumer.set_priority("foo")
    with pytest.raises(TypeError):
        await consumer.set_priority(1.5)
    assert consumer.priority == 1


async def test_unset_priority_succeeds(transport2: Any, video_producer: Any) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    await consumer.set_priority(5)
    await consumer.unset_priority()
    assert consumer.priority == 1


async def test_request_key_frame_succeeds(
    transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    video_consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    await video_consumer.request_key_frame()
    audio_consumer = await consume_audio(transport2, audio_producer)
    await audio_consumer.request_key_frame()


# -- trace events ---------------------------------------------------------------------


async def test_enable_trace_event_succeeds(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)

    await consumer.enable_trace_event(["rtp", "pli"])
    assert sorted((await consumer.dump())["traceEventTypes"]) == ["pli", "rtp"]

    await consumer.enable_trace_event()
    assert (await consumer.dump())["traceEventTypes"] == []

    await consumer.enable_trace_event(["nack", "FOO", "fir"])  # type: ignore[list-item]
    assert sorted((await consumer.dump())["traceEventTypes"]) == ["fir", "nack"]

    await consumer.enable_trace_event(types=["keyframe"])
    assert (await consumer.dump())["traceEventTypes"] == ["keyframe"]

    await consumer.enable_trace_event()
    assert (await consumer.dump())["traceEventTypes"] == []


async def test_enable_trace_event_with_wrong_arguments_raises_type_error(
    transport2: Any, audio_producer: Any
) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    with pytest.raises(TypeError):
        await consumer.enable_trace_event(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await consumer.enable_trace_event("rtp")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await consumer.enable_trace_event(["fir", 123.123])  # type: ignore[list-item]
    # 'sr' is a producer trace type only.
    await consumer.enable_trace_event(["sr"])  # type: ignore[list-item]
    assert (await consumer.dump())["traceEventTypes"] == []


# -- notifications ----------------------------------------------------------------------


async def test_emits_producerpause_and_producerresume(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    async with asyncio.timeout(5):
        await asyncio.gather(consumer.events.wait_for("producerpause"), audio_producer.pause())
    assert consumer.paused is False
    assert consumer.producer_paused is True

    async with asyncio.timeout(5):
        await asyncio.gather(consumer.events.wait_for("producerresume"), audio_producer.resume())
    assert consumer.paused is False
    assert consumer.producer_paused is False


async def test_repeated_producer_pause_notifications_are_ignored(
    transport2: Any, audio_producer: Any
) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    channel = consumer.channel_for_testing
    events: list[str] = []
    consumer.on("producerpause", lambda: events.append("producerpause"))
    consumer.on("producerresume", lambda: events.append("producerresume"))
    for event in (
        Event.CONSUMER_PRODUCER_RESUME,  # not paused: ignored
        Event.CONSUMER_PRODUCER_PAUSE,
        Event.CONSUMER_PRODUCER_PAUSE,  # already paused: ignored
        Event.CONSUMER_PRODUCER_RESUME,
    ):
        inject(channel, event, consumer.id)
    await next_loop_iteration()
    assert events == ["producerpause", "producerresume"]


async def test_emits_score(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    channel = consumer.channel_for_testing
    scores: list[Any] = []
    observer_scores: list[Any] = []
    consumer.on("score", scores.append)
    consumer.observer.on("score", observer_scores.append)

    body = ScoreNotificationT(score=ConsumerScoreT(score=9, producerScore=10, producerScores=[8]))
    for _ in range(3):
        inject(channel, Event.CONSUMER_SCORE, consumer.id, body)
    await next_loop_iteration()

    assert len(scores) == 3
    assert len(observer_scores) == 3
    assert consumer.score == {"score": 9, "producerScore": 10, "producerScores": [8]}


async def test_emits_layerschange(transport2: Any, video_producer: Any) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    channel = consumer.channel_for_testing
    changes: list[Any] = []
    observer_changes: list[Any] = []
    consumer.on("layerschange", changes.append)
    consumer.observer.on("layerschange", observer_changes.append)

    inject(
        channel,
        Event.CONSUMER_LAYERS_CHANGE,
        consumer.id,
        LayersChangeNotificationT(layers=ConsumerLayersT(spatialLayer=2, temporalLayer=1)),
    )
    await next_loop_iteration()
    assert consumer.current_layers == {"spatialLayer": 2, "temporalLayer": 1}

    inject(
        channel,
        Event.CONSUMER_LAYERS_CHANGE,
        consumer.id,
        LayersChangeNotificationT(layers=ConsumerLayersT(spatialLayer=1)),
    )
    await next_loop_iteration()
    assert consumer.current_layers == {"spatialLayer": 1}

    # No layers: the consumer sends nothing.
    inject(channel, Event.CONSUMER_LAYERS_CHANGE, consumer.id, LayersChangeNotificationT())
    await next_loop_iteration()
    assert consumer.current_layers is None

    assert changes == [
        {"spatialLayer": 2, "temporalLayer": 1},
        {"spatialLayer": 1},
        None,
    ]
    assert observer_changes == changes


async def test_emits_trace_once_per_notification(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    channel = consumer.channel_for_testing
    traces: list[Any] = []
    observer_traces: list[Any] = []
    consumer.on("trace", traces.append)
    consumer.observer.on("trace", observer_traces.append)

    inject(
        channel,
        Event.CONSUMER_TRACE,
        consumer.id,
        TraceNotificationT(
            type=TraceEventType.FIR,
            timestamp=99,
            direction=0,
            infoType=TraceInfo.FirTraceInfo,
            info=FirTraceInfoT(ssrc=1234),
        ),
    )
    # Unknown events are logged and ignored.
    inject(channel, Event.PRODUCER_SCORE, consumer.id)
    await next_loop_iteration()

    assert traces == [{"type": "fir", "timestamp": 99, "direction": "in", "info": {"ssrc": 1234}}]
    assert observer_traces == traces


async def test_direct_consumer_emits_rtp_and_trace(direct_transport: Any, router: Router) -> None:
    producer = await direct_transport.produce(
        kind="audio",
        rtp_parameters={
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": DIRECT_AUDIO_SSRC}],
        },
    )
    consumer = await direct_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert consumer.type == "simple"
    packets: list[bytes] = []
    traces: list[Any] = []
    consumer.on("rtp", packets.append)
    consumer.on("trace", traces.append)
    await consumer.enable_trace_event(["rtp"])

    for seq in (1, 2):
        producer.send(
            rtp_packet(ssrc=DIRECT_AUDIO_SSRC, payload_type=111, seq=seq, timestamp=seq * 960)
        )
    async with asyncio.timeout(5):
        # Two kinds of events, in no guaranteed order through a remote link: poll both.
        while len(packets) < 2 or len(traces) < 2:
            await asyncio.sleep(0.01)

    consumer_ssrc = consumer.rtp_parameters["encodings"][0]["ssrc"]
    consumer_pt = consumer.rtp_parameters["codecs"][0]["payloadType"]
    for packet in packets:
        assert isinstance(packet, bytes)
        assert packet.endswith(b"\xaa\xbb\xcc")
        assert packet[1] & 0x7F == consumer_pt
        assert struct.unpack("!I", packet[8:12])[0] == consumer_ssrc
    trace = traces[0]
    assert trace["type"] == "rtp"
    assert trace["direction"] == "out"
    assert trace["info"]["isRtx"] is False
    assert trace["info"]["rtpPacket"]["ssrc"] == consumer_ssrc

    stats = await consumer.get_stats()
    assert stats[0]["type"] == "outbound-rtp"
    assert stats[0]["packetCount"] == 2
    # The worker adds the producer's inbound stream.
    assert [s["type"] for s in stats[1:]] in ([], ["inbound-rtp"])

    # Once closed, RTP is not emitted anymore.
    consumer.close()
    count = len(packets)
    producer.send(rtp_packet(ssrc=DIRECT_AUDIO_SSRC, payload_type=111, seq=3, timestamp=2880))
    await direct_transport.dump()
    await next_loop_iteration()
    assert len(packets) == count


# -- closing ----------------------------------------------------------------------------


async def test_close_succeeds(
    router: Router, transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    audio_consumer = await consume_audio(transport2, audio_producer)
    video_consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    closes: list[None] = []
    audio_consumer.observer.once("close", lambda: closes.append(None))

    audio_consumer.close()

    assert closes == [None]
    assert audio_consumer.closed is True
    assert list(transport2.consumers) == [video_consumer.id]
    router_dump = await router.dump()
    by_producer = {e["key"]: e["values"] for e in router_dump["mapProducerIdConsumerIds"]}
    assert by_producer[audio_producer.id] == []
    assert by_producer[video_producer.id] == [video_consumer.id]
    assert router_dump["mapConsumerIdProducerId"] == [
        {"key": video_consumer.id, "value": video_producer.id}
    ]
    transport_dump = await transport2.dump()
    assert transport_dump["producerIds"] == []
    assert transport_dump["consumerIds"] == [video_consumer.id]

    audio_consumer.close()
    audio_consumer.transport_closed()
    assert closes == [None]


async def test_methods_raise_if_closed(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    consumer.close()
    with pytest.raises(InvalidStateError, match="Consumer closed"):
        await consumer.dump()
    with pytest.raises(InvalidStateError):
        await consumer.get_stats()
    with pytest.raises(InvalidStateError):
        await consumer.pause()
    with pytest.raises(InvalidStateError):
        await consumer.resume()
    with pytest.raises(InvalidStateError):
        await consumer.set_preferred_layers(spatial_layer=1)
    with pytest.raises(InvalidStateError):
        await consumer.set_priority(2)
    with pytest.raises(InvalidStateError):
        await consumer.unset_priority()
    with pytest.raises(InvalidStateError):
        await consumer.request_key_frame()
    with pytest.raises(InvalidStateError):
        await consumer.enable_trace_event(["rtp"])


async def test_emits_producerclose_if_producer_is_closed(
    transport2: Any, audio_producer: Any
) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    closes: list[None] = []
    events: list[str] = []
    consumer.observer.once("close", lambda: closes.append(None))
    consumer.on("@producerclose", lambda: events.append("@producerclose"))
    consumer.on("producerclose", lambda: events.append("producerclose"))

    closed = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
    audio_producer.close()
    async with asyncio.timeout(5):
        await closed

    assert events == ["@producerclose", "producerclose"]
    assert closes == [None]
    assert consumer.closed is True
    assert transport2.consumers == {}
    consumer.close()
    consumer.transport_closed()
    assert closes == [None]


async def test_emits_transportclose_if_transport_is_closed(
    router: Router, transport2: Any, audio_producer: Any, video_producer: Any
) -> None:
    consumer = await transport2.consume(
        producer_id=video_producer.id, rtp_capabilities=CONSUMER_DEVICE_CAPABILITIES
    )
    closes: list[None] = []
    transport_closes: list[None] = []
    consumer.observer.once("close", lambda: closes.append(None))
    consumer.on("transportclose", lambda: transport_closes.append(None))

    transport2.close()

    assert transport_closes == [None]
    assert closes == [None]
    assert consumer.closed is True
    router_dump = await router.dump()
    by_producer = {e["key"]: e["values"] for e in router_dump["mapProducerIdConsumerIds"]}
    assert by_producer == {audio_producer.id: [], video_producer.id: []}
    assert router_dump["mapConsumerIdProducerId"] == []


async def test_once_off_and_app_data(transport2: Any, audio_producer: Any) -> None:
    consumer = await consume_audio(transport2, audio_producer)
    assert consumer.app_data == {}
    calls: list[str] = []

    def on_score(_: Any) -> None:
        calls.append("on")

    consumer.on("score", on_score)
    consumer.once("score", lambda _: calls.append("once"))
    consumer.events.emit("score", {})
    consumer.off("score", on_score)
    consumer.events.emit("score", {})
    assert calls == ["on", "once"]

    consumer.app_data = {"x": 1}
    assert consumer.app_data == {"x": 1}


# -- helpers ------------------------------------------------------------------------------


def test_consumer_trace_event_type_from_fbs() -> None:
    assert consumer_trace_event_type_from_fbs(TraceEventType.KEYFRAME) == "keyframe"
    with pytest.raises(TypeError):
        consumer_trace_event_type_from_fbs(99)


def test_parse_consumer_dump_with_invalid_type() -> None:
    class Base:
        id = "c"
        producerId = "p"
        kind = 0
        type = 99
        rtpParameters = None
        consumableRtpEncodings = None
        supportedCodecPayloadTypes = None
        traceEventTypes = None
        paused = False
        producerPaused = False
        priority = 1

    class Dump:
        base = Base()
        rtpStreams = None

    with pytest.raises(TypeError, match="invalid Consumer type"):
        parse_consumer_dump(Dump())


def test_parse_rtp_stream_optional_fields() -> None:
    rtx = SimpleNamespace(
        params=SimpleNamespace(
            ssrc=2, payloadType=97, mimeType="video/rtx", clockRate=90000, rrid="r0", cname="c"
        )
    )
    stream = SimpleNamespace(
        params=SimpleNamespace(
            encodingIdx=0,
            ssrc=1,
            payloadType=96,
            mimeType="video/VP8",
            clockRate=90000,
            rid="r0",
            cname="c",
            rtxSsrc=2,
            rtxPayloadType=97,
            useNack=True,
            usePli=True,
            useFir=False,
            useInBandFec=False,
            useDtx=False,
            spatialLayers=1,
            temporalLayers=3,
        ),
        score=10,
        rtxStream=rtx,
    )
    parsed = parse_rtp_stream(stream)
    assert parsed["params"]["rid"] == "r0"
    assert parsed["params"]["rtxSsrc"] == 2
    assert parsed["rtxStream"] == {
        "params": {
            "ssrc": 2,
            "payloadType": 97,
            "mimeType": "video/rtx",
            "clockRate": 90000,
            "rrid": "r0",
            "cname": "c",
        }
    }


def test_parse_base_consumer_dump_without_consumable_encodings() -> None:
    base = SimpleNamespace(
        id="c",
        producerId="p",
        kind=1,
        rtpParameters=RtpParametersT(codecs=[], headerExtensions=[], encodings=[]),
        consumableRtpEncodings=None,
        supportedCodecPayloadTypes=None,
        traceEventTypes=None,
        paused=False,
        producerPaused=True,
        priority=3,
    )
    dump = parse_base_consumer_dump(base)
    assert "consumableRtpEncodings" not in dump
    assert dump["kind"] == "video"
    assert dump["traceEventTypes"] == []
    assert dump["supportedCodecPayloadTypes"] == []
    assert dump["producerPaused"] is True
    assert dump["priority"] == 3


def test_parse_trace_event_data_without_info() -> None:
    trace = SimpleNamespace(type=TraceEventType.PLI, timestamp=5, direction=1, info=None)
    assert parse_trace_event_data(trace) == {"type": "pli", "timestamp": 5, "direction": "out"}
