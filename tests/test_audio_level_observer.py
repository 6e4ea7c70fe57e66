"""AudioLevelObserver against a real worker (port of mediasoup's test-AudioLevelObserver.ts,
plus 'volumes' and 'silence' fed by RTP packets carrying the ssrc-audio-level extension)."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda.mediasoup import Router, Worker, create_worker
from mafalda.mediasoup._fbs.AudioLevelObserver.Volume import VolumeT
from mafalda.mediasoup._fbs.AudioLevelObserver.VolumesNotification import VolumesNotificationT
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.audio_level_observer import AudioLevelObserver
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.producer import Producer

MEDIA_CODECS: list[Any] = [
    {
        "kind": "audio",
        "mimeType": "audio/opus",
        "clockRate": 48000,
        "channels": 2,
        "parameters": {"useinbandfec": 1, "foo": "bar"},
    }
]
AUDIO_LEVEL_EXTENSION_ID = 1


@pytest.fixture
async def opus_worker() -> AsyncIterator[Worker]:
    worker = await create_worker(log_level="warn")
    yield worker
    worker.close()
    await worker.wait_closed()


@pytest.fixture
async def opus_router(opus_worker: Worker) -> Router:
    return await opus_worker.create_router(media_codecs=MEDIA_CODECS)


async def audio_producer(router: Router, ssrc: int) -> Producer:
    transport = await router.create_direct_transport()
    rtp_parameters: Any = {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}
        ],
        "headerExtensions": [
            {
                "uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
                "id": AUDIO_LEVEL_EXTENSION_ID,
            }
        ],
        "encodings": [{"ssrc": ssrc}],
    }
    return await transport.produce(kind="audio", rtp_parameters=rtp_parameters)


def rtp_packet(ssrc: int, seq: int, level: int) -> bytes:
    """An opus RTP packet with a one-byte ssrc-audio-level extension (-level dBov)."""
    header = struct.pack("!BBHII", 0x90, 100, seq, seq * 960, ssrc)
    extension = struct.pack("!HHBBxx", 0xBEDE, 1, AUDIO_LEVEL_EXTENSION_ID << 4, 0x80 | level)
    return header + extension + b"\xfc\xff\xfe"


def send_audio(producer: Producer, ssrc: int, level: int, count: int = 20, seq: int = 1) -> None:
    for i in range(count):
        producer.send(rtp_packet(ssrc, seq + i, level))


async def test_create_succeeds(opus_router: Router) -> None:
    new: list[Any] = []
    opus_router.observer.once("newrtpobserver", new.append)
    observer = await opus_router.create_audio_level_observer()
    assert new == [observer]
    assert isinstance(observer.id, str)
    assert observer.closed is False
    assert observer.type == "audiolevel"
    assert observer.paused is False
    assert observer.app_data == {}
    assert (await opus_router.dump())["rtpObserverIds"] == [observer.id]
    assert "AudioLevelObserver" in repr(observer)


async def test_create_with_wrong_arguments(opus_router: Router) -> None:
    for kwargs in (
        {"max_entries": 0},
        {"max_entries": -10},
        {"threshold": "foo"},
        {"interval": False},
        {"app_data": "NOT-AN-OBJECT"},
    ):
        with pytest.raises((TypeError, ValueError)):
            await opus_router.create_audio_level_observer(**kwargs)


async def test_pause_and_resume(opus_router: Router) -> None:
    observer = await opus_router.create_audio_level_observer()
    events: list[str] = []
    observer.observer.on("pause", lambda: events.append("pause"))
    observer.observer.on("resume", lambda: events.append("resume"))
    await observer.pause()
    assert observer.paused is True
    await observer.resume()
    assert observer.paused is False
    assert events == ["pause", "resume"]


async def test_close(opus_router: Router) -> None:
    observer = await opus_router.create_audio_level_observer(max_entries=8)
    assert len((await opus_router.dump())["rtpObserverIds"]) == 1
    closes: list[int] = []
    observer.observer.on("close", lambda: closes.append(1))
    observer.close()
    assert observer.closed is True
    assert closes == [1]
    assert len((await opus_router.dump())["rtpObserverIds"]) == 0
    with pytest.raises(InvalidStateError):
        await observer.pause()


async def test_emits_routerclose_if_router_is_closed(opus_router: Router) -> None:
    observer = await opus_router.create_audio_level_observer()
    events: list[str] = []
    observer.on("routerclose", lambda: events.append("routerclose"))
    observer.observer.on("close", lambda: events.append("close"))
    opus_router.close()
    assert events == ["routerclose", "close"]
    assert observer.closed is True


async def test_emits_routerclose_if_worker_is_closed(
    opus_worker: Worker, opus_router: Router
) -> None:
    observer = await opus_router.create_audio_level_observer()
    routerclose = asyncio.ensure_future(observer.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    opus_worker.close()
    await asyncio.wait_for(routerclose, 2)
    assert observer.closed is True


async def test_volumes_then_silence(opus_router: Router) -> None:
    loud = await audio_producer(opus_router, 1111)
    quiet = await audio_producer(opus_router, 2222)
    muted = await audio_producer(opus_router, 3333)
    observer = await opus_router.create_audio_level_observer(
        max_entries=2, threshold=-70, interval=250
    )
    added: list[Any] = []
    observer.observer.on("addproducer", added.append)
    for producer in (loud, quiet, muted):
        await observer.add_producer(producer_id=producer.id)
    assert added == [loud, quiet, muted]
    observed: list[tuple[str, tuple[Any, ...]]] = []
    observer.observer.on("silence", lambda: observed.append(("silence", ())))
    observer.observer.on("volumes", lambda v: observed.append(("volumes", (v,))))
    volumes_event = asyncio.ensure_future(observer.events.wait_for("volumes"))
    silence_event = asyncio.ensure_future(observer.events.wait_for("silence"))
    await asyncio.sleep(0)
    # At least 10 packets per interval for a producer to count; 'muted' is below the
    # threshold (-90 dBvo < -70), so it is left out; loudest first.
    send_audio(loud, 1111, level=20)
    send_audio(quiet, 2222, level=50)
    send_audio(muted, 3333, level=90)
    (volumes,) = await asyncio.wait_for(volumes_event, 2)
    assert volumes == [{"producer": loud, "volume": -20}, {"producer": quiet, "volume": -50}]
    assert volumes[0]["producer"] is loud
    # Nothing heard during the next interval: 'silence' (once; the worker starts silent).
    assert await asyncio.wait_for(silence_event, 2) == ()
    await asyncio.sleep(0.3)
    assert observed == [("volumes", (volumes,)), ("silence", ())]


async def test_max_entries_limits_volumes(opus_router: Router) -> None:
    producer1 = await audio_producer(opus_router, 1111)
    producer2 = await audio_producer(opus_router, 2222)
    observer = await opus_router.create_audio_level_observer(interval=250)
    await observer.add_producer(producer_id=producer1.id)
    await observer.add_producer(producer_id=producer2.id)
    volumes_event = asyncio.ensure_future(observer.events.wait_for("volumes"))
    await asyncio.sleep(0)
    send_audio(producer1, 1111, level=40)
    send_audio(producer2, 2222, level=10)
    (volumes,) = await asyncio.wait_for(volumes_event, 2)
    assert volumes == [{"producer": producer2, "volume": -10}]


async def test_removed_producer_is_not_reported(opus_router: Router) -> None:
    producer = await audio_producer(opus_router, 1111)
    observer = await opus_router.create_audio_level_observer(interval=250)
    removed: list[Any] = []
    observer.observer.on("removeproducer", removed.append)
    await observer.add_producer(producer_id=producer.id)
    await observer.remove_producer(producer_id=producer.id)
    assert removed == [producer]
    volumes: list[Any] = []
    observer.on("volumes", volumes.append)
    send_audio(producer, 1111, level=20)
    await asyncio.sleep(0.6)
    assert volumes == []


async def test_volumes_of_gone_producers_are_left_out(opus_router: Router) -> None:
    producer = await audio_producer(opus_router, 1111)
    observer = await opus_router.create_audio_level_observer()
    events: list[Any] = []
    observer.on("volumes", events.append)
    observer.observer.on("volumes", events.append)
    observer._on_notification(
        Event.AUDIOLEVELOBSERVER_VOLUMES,
        VolumesNotificationT(volumes=[VolumeT(producerId="gone", volume=-10)]),
    )
    assert events == []
    observer._on_notification(
        Event.AUDIOLEVELOBSERVER_VOLUMES,
        VolumesNotificationT(
            volumes=[
                VolumeT(producerId="gone", volume=-10),
                VolumeT(producerId=producer.id, volume=-30),
            ]
        ),
    )
    assert events == [[{"producer": producer, "volume": -30}]] * 2


async def test_paused_observer_reports_nothing(opus_router: Router) -> None:
    producer = await audio_producer(opus_router, 1111)
    observer = await opus_router.create_audio_level_observer(interval=250)
    await observer.add_producer(producer_id=producer.id)
    await observer.pause()
    events: list[str] = []
    observer.on("volumes", lambda _v: events.append("volumes"))
    observer.on("silence", lambda: events.append("silence"))
    send_audio(producer, 1111, level=20)
    await asyncio.sleep(0.4)
    assert events == []


async def test_unknown_notification_is_logged(
    opus_router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    observer = await opus_router.create_audio_level_observer()
    assert isinstance(observer, AudioLevelObserver)
    with caplog.at_level(logging.ERROR, logger="mafalda.mediasoup.audio_level_observer"):
        observer._on_notification(Event.ACTIVESPEAKEROBSERVER_DOMINANT_SPEAKER, None)
    assert "ignoring unknown event" in caplog.text
