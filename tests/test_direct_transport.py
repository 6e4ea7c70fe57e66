"""DirectTransport against a real worker (port of mediasoup's test-DirectTransport.ts, plus
RTCP both ways: packets the app sends into the router, and the worker's that reach the
app as 'rtcp' events). The data path through DirectTransports is in
test_data_consumer.py and test_data_producer.py."""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import flatbuffers
import pytest

from mafalda.mediasoup import InvalidStateError, Router, UnsupportedError, Worker
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.channel import encode_notification

from .conftest import TRANSPORT_STAT_COUNTERS, hosting_worker, opus_rtp_parameters

VP8_PT = 101
VIDEO_SSRC = 22223333

# A receiver report (PT 201) from SSRC 1 with one report block about VIDEO_SSRC.
RECEIVER_REPORT = struct.pack("!BBHI", 0x81, 201, 7, 1) + struct.pack(
    "!IIIIII", VIDEO_SSRC, 0, 0, 0, 0, 0
)


def vp8_packet(seq: int) -> bytes:
    # A VP8 payload descriptor and a key frame header: enough for the worker to relay it.
    header = struct.pack("!BBHII", 0x80, VP8_PT, seq, seq * 3000, VIDEO_SSRC)
    return header + b"\x90\x80" + bytes([seq & 0x7F]) + b"\x10\x02\x00\x9d\x01\x2a" + bytes(20)


async def test_create_succeeds(router: Router) -> None:
    created: list[Any] = []
    router.observer.once("newtransport", created.append)
    transport = await router.create_direct_transport(app_data={"foo": "bar"})
    assert created == [transport]
    assert transport.id in (await router.dump())["transportIds"]
    assert isinstance(transport.id, str)
    assert transport.type == "direct"
    assert transport.closed is False
    assert transport.app_data == {"foo": "bar"}
    dump = await transport.dump()
    assert dump["id"] == transport.id
    assert dump["direct"] is True
    assert (
        dump["producerIds"],
        dump["consumerIds"],
        dump["dataProducerIds"],
        dump["dataConsumerIds"],
    ) == ([], [], [], [])
    assert isinstance(dump["recvRtpHeaderExtensions"], dict)
    assert isinstance(dump["rtpListener"], dict)
    transport.close()
    assert transport.closed is True
    assert transport.id not in (await router.dump())["transportIds"]


async def test_create_with_wrong_arguments_rejects(router: Router) -> None:
    with pytest.raises(TypeError):
        await router.create_direct_transport(max_message_size="foo")  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError)):
        await router.create_direct_transport(max_message_size=-2000)
    with pytest.raises(TypeError):
        await router.create_direct_transport(app_data="NOT-AN-OBJECT")  # type: ignore[arg-type]


async def test_get_stats_succeeds(router: Router) -> None:
    transport = await router.create_direct_transport()
    stats = await transport.get_stats()
    assert len(stats) == 1
    stat = stats[0]
    assert stat["type"] == "direct-transport"
    assert stat["transportId"] == transport.id
    assert isinstance(stat["timestamp"], int)
    for key in TRANSPORT_STAT_COUNTERS:
        assert stat[key] == 0, key  # type: ignore[literal-required]


async def test_connect_succeeds_and_bitrates_are_unsupported(router: Router) -> None:
    transport = await router.create_direct_transport()
    assert await transport.connect() is None
    for method in (
        transport.set_max_incoming_bitrate,
        transport.set_max_outgoing_bitrate,
        transport.set_min_outgoing_bitrate,
    ):
        with pytest.raises(UnsupportedError):
            await method(100000)


async def test_methods_reject_if_closed(router: Router) -> None:
    transport = await router.create_direct_transport()
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    transport.close()
    assert closes == [None]
    assert transport.closed is True
    with pytest.raises(InvalidStateError):
        await transport.dump()
    with pytest.raises(InvalidStateError):
        await transport.get_stats()
    with pytest.raises(InvalidStateError):
        await transport.connect()
    with pytest.raises(InvalidStateError):
        transport.send_rtcp(RECEIVER_REPORT)


async def test_routerclose_when_router_closes(router: Router) -> None:
    transport = await router.create_direct_transport()
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(transport.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    router.close()
    await asyncio.wait_for(waiter, 5)
    assert closes == [None]
    assert transport.closed is True


async def test_routerclose_when_worker_closes(router: Router, worker: Worker) -> None:
    transport = await router.create_direct_transport()
    waiter = asyncio.ensure_future(transport.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    hosting_worker(router, transport, worker).close()
    await asyncio.wait_for(waiter, 5)
    assert transport.closed is True


async def test_send_rtcp_reaches_the_router(router: Router) -> None:
    transport = await router.create_direct_transport()
    with pytest.raises(TypeError):
        transport.send_rtcp("not bytes")  # type: ignore[arg-type]
    transport.send_rtcp(RECEIVER_REPORT)
    transport.send_rtcp(bytearray(RECEIVER_REPORT))
    async with asyncio.timeout(5):  # counted as received by the transport
        while (await transport.get_stats())[0]["bytesReceived"] < 2 * len(RECEIVER_REPORT):
            await asyncio.sleep(0.02)


async def test_worker_rtcp_reaches_the_app_as_rtcp_events(router: Router) -> None:
    # A video producer fed by the app and a consumer of it, on DirectTransports. A
    # DirectTransport never "connects", so the worker sends it no periodic reports; what
    # it sends at once does reach the app: the PLI with which the producer asks the app
    # for a key frame when the consumer requests one.
    sending = await router.create_direct_transport()
    receiving = await router.create_direct_transport()
    producer = await sending.produce(
        kind="video",
        rtp_parameters={
            "codecs": [
                {
                    "mimeType": "video/VP8",
                    "payloadType": VP8_PT,
                    "clockRate": 90000,
                    # the producer asks for key frames the ways its codec says it may
                    "rtcpFeedback": [{"type": "nack", "parameter": "pli"}],
                }
            ],
            "encodings": [{"ssrc": VIDEO_SSRC}],
        },
    )
    consumer = await receiving.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    packets: list[bytes] = []
    sending.on("rtcp", packets.append)
    producer.send(vp8_packet(1))
    async with asyncio.timeout(5):
        while not any(_pli_about(packet, VIDEO_SSRC) for packet in packets):
            await consumer.request_key_frame()
            await asyncio.sleep(0.05)
    assert all(isinstance(packet, bytes) for packet in packets)


def _pli_about(packet: bytes, media_ssrc: int) -> bool:
    """Whether compound RTCP ``packet`` holds a PLI (PSFB, FMT 1) for ``media_ssrc``."""
    at = 0
    while at + 12 <= len(packet):
        fmt, kind = packet[at] & 0x1F, packet[at + 1]
        (words,) = struct.unpack_from("!H", packet, at + 2)
        if kind == 206 and fmt == 1 and struct.unpack_from("!I", packet, at + 8)[0] == media_ssrc:
            return True
        at += 4 * (words + 1)
    return False


async def test_unknown_notification_is_logged(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A notification a DirectTransport has no use for (injected: the worker sends none)
    is logged, not raised."""
    router = await worker.create_router()
    transport = await router.create_direct_transport()
    notification = encode_notification(
        flatbuffers.Builder(256), Event.PLAINTRANSPORT_TUPLE, transport.id, None
    )
    with caplog.at_level(logging.ERROR):
        transport.channel_for_testing.data_received(notification)
        await asyncio.sleep(0)  # notifications are dispatched with call_soon
    assert "ignoring unknown event" in caplog.text
    assert transport.closed is False


async def test_consumer_mids_wrap_around(worker: Worker) -> None:
    """The mids given to consumers count up to 99999999 then start again at 0 (as
    mediasoup's). The counter is set near its end: 10^8 consumers are out of reach."""
    router = await worker.create_router(
        media_codecs=[
            {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}
        ]
    )
    sending = await router.create_direct_transport()
    producer = await sending.produce(kind="audio", rtp_parameters=opus_rtp_parameters(1234))
    receiving = await router.create_direct_transport()
    receiving._next_mid_for_consumers = 99999999
    mids = [
        (
            await receiving.consume(
                producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
            )
        ).rtp_parameters.get("mid")
        for _ in range(2)
    ]
    assert mids == ["99999999", "0"]
