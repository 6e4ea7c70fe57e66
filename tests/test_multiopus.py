"""Multichannel opus (audio/multiopus) through a real worker, as Node's test-multiopus:
the codec's stream parameters take part in matching a producer and a consumer."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda.mediasoup import Router, UnsupportedError, WebRtcTransport, Worker

STREAMS = {"channel_mapping": "0,4,1,2,3,5", "num_streams": 4, "coupled_streams": 2}

MEDIA_CODECS: list[Any] = [
    {
        "kind": "audio",
        "mimeType": "audio/multiopus",
        "preferredPayloadType": 100,
        "clockRate": 48000,
        "channels": 6,
        "parameters": {"useinbandfec": 1, **STREAMS},
    }
]

PRODUCER_RTP_PARAMETERS: Any = {
    "mid": "AUDIO",
    "codecs": [
        {
            "mimeType": "audio/multiopus",
            "payloadType": 0,
            "clockRate": 48000,
            "channels": 6,
            "parameters": {"useinbandfec": 1, **STREAMS},
        }
    ],
    "headerExtensions": [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 10},
        {"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": 12},
    ],
}

DEVICE_CAPABILITIES: Any = {
    "codecs": [
        {
            "mimeType": "audio/multiopus",
            "kind": "audio",
            "preferredPayloadType": 100,
            "clockRate": 48000,
            "channels": 6,
            "parameters": dict(STREAMS),
        }
    ],
    "headerExtensions": [
        {
            "kind": "audio",
            "uri": "urn:ietf:params:rtp-hdrext:sdes:mid",
            "preferredId": 1,
            "preferredEncrypt": False,
        },
        {
            "kind": "audio",
            "uri": "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
            "preferredId": 4,
            "preferredEncrypt": False,
        },
        {
            "kind": "audio",
            "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
            "preferredId": 10,
            "preferredEncrypt": False,
        },
    ],
}


@pytest.fixture
async def router(worker: Worker) -> Router:
    return await worker.create_router(media_codecs=MEDIA_CODECS)


@pytest.fixture
async def transport(router: Router) -> AsyncIterator[WebRtcTransport]:
    transport = await router.create_webrtc_transport(
        listen_infos=[{"protocol": "udp", "ip": "127.0.0.1"}]
    )
    yield transport
    transport.close()


async def test_produce_and_consume_succeed(router: Router, transport: WebRtcTransport) -> None:
    producer = await transport.produce(kind="audio", rtp_parameters=PRODUCER_RTP_PARAMETERS)
    assert producer.rtp_parameters["codecs"] == [
        {**PRODUCER_RTP_PARAMETERS["codecs"][0], "rtcpFeedback": []}
    ]
    assert router.can_consume(producer_id=producer.id, rtp_capabilities=DEVICE_CAPABILITIES)
    consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=DEVICE_CAPABILITIES
    )
    assert consumer.rtp_parameters["codecs"] == [
        {
            "mimeType": "audio/multiopus",
            "payloadType": 100,
            "clockRate": 48000,
            "channels": 6,
            "parameters": {"useinbandfec": 1, **STREAMS},
            "rtcpFeedback": [],
        }
    ]


@pytest.mark.parametrize(
    "streams",
    [
        {"num_streams": 2, "coupled_streams": 2},
        {"num_streams": 4, "coupled_streams": 1},
    ],
)
async def test_produce_with_other_stream_parameters_fails(
    transport: WebRtcTransport, streams: dict[str, int]
) -> None:
    params = copy.deepcopy(PRODUCER_RTP_PARAMETERS)
    del params["headerExtensions"]
    params["codecs"][0]["parameters"] = {"channel_mapping": "0,4,1,2,3,5", **streams}
    with pytest.raises(UnsupportedError):
        await transport.produce(kind="audio", rtp_parameters=params)
    assert not transport.producers


async def test_consume_with_other_channels_fails(
    router: Router, transport: WebRtcTransport
) -> None:
    producer = await transport.produce(kind="audio", rtp_parameters=PRODUCER_RTP_PARAMETERS)
    caps = copy.deepcopy(DEVICE_CAPABILITIES)
    del caps["headerExtensions"]
    caps["codecs"][0]["channels"] = 8
    assert not router.can_consume(producer_id=producer.id, rtp_capabilities=caps)
    with pytest.raises(UnsupportedError):
        await transport.consume(producer_id=producer.id, rtp_capabilities=caps)
    assert not transport.consumers
