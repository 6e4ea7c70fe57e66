"""ActiveSpeakerObserver against a real worker (port of mediasoup's
test-ActiveSpeakerObserver.ts, plus the RtpObserver behaviours and its events)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda.mediasoup import Router, Worker, create_worker
from mafalda.mediasoup._fbs.ActiveSpeakerObserver.DominantSpeakerNotification import (
    DominantSpeakerNotificationT,
)
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.active_speaker_observer import ActiveSpeakerObserver
from mafalda.mediasoup.errors import InvalidStateError
from mafalda.mediasoup.producer import Producer
from mafalda.mediasoup.rtp_observer import RtpObserver

MEDIA_CODECS: list[Any] = [
    {
        "kind": "audio",
        "mimeType": "audio/opus",
        "clockRate": 48000,
        "channels": 2,
        "parameters": {"useinbandfec": 1, "foo": "bar"},
    }
]


def audio_rtp_parameters(ssrc: int) -> dict[str, Any]:
    return {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 100, "clockRate": 48000, "channels": 2}
        ],
        "headerExtensions": [{"uri": "urn:ietf:params:rtp-hdrext:ssrc-audio-level", "id": 1}],
        "encodings": [{"ssrc": ssrc}],
    }


@pytest.fixture
async def opus_worker() -> AsyncIterator[Worker]:
    worker = await create_worker(log_level="warn")
    yield worker
    worker.close()
    await worker.wait_closed()


@pytest.fixture
async def opus_router(opus_worker: Worker) -> Router:
    return await opus_worker.create_router(media_codecs=MEDIA_CODECS)


async def audio_producer(router: Router, ssrc: int = 1111) -> Producer:
    transport = await router.create_direct_transport()
    return await transport.produce(kind="audio", rtp_parameters=audio_rtp_parameters(ssrc))  # type: ignore[arg-type]


async def test_create_succeeds(opus_router: Router) -> None:
    new: list[Any] = []
    opus_router.observer.once("newrtpobserver", new.append)
    observer = await opus_router.create_active_speaker_observer()
    assert new == [observer]
    assert isinstance(observer, RtpObserver)
    assert isinstance(observer.id, str)
    assert observer.closed is False
    assert observer.type == "activespeaker"
    assert observer.paused is False
    assert observer.app_data == {}
    assert (await opus_router.dump())["rtpObserverIds"] == [observer.id]
    assert "ActiveSpeakerObserver" in repr(observer)
    observer.app_data = {"foo": "bar"}
    assert observer.app_data == {"foo": "bar"}


async def test_create_with_wrong_arguments(opus_router: Router) -> None:
    with pytest.raises(TypeError):
        await opus_router.create_active_speaker_observer(interval=False)
    with pytest.raises(TypeError):
        await opus_router.create_active_speaker_observer(app_data="NOT-AN-OBJECT")  # type: ignore[arg-type]


async def test_pause_and_resume(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer()
    events: list[str] = []
    observer.observer.on("pause", lambda: events.append("pause"))
    observer.observer.on("resume", lambda: events.append("resume"))
    await observer.pause()
    assert observer.paused is True
    await observer.resume()
    assert observer.paused is False
    assert events == ["pause", "resume"]
    # Pausing a paused observer (resuming a resumed one) emits nothing.
    await observer.resume()
    await observer.pause()
    await observer.pause()
    assert events == ["pause", "resume", "pause"]


async def test_close(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer(interval=500)
    assert len((await opus_router.dump())["rtpObserverIds"]) == 1
    closes: list[str] = []
    observer.observer.on("close", lambda: closes.append("close"))
    observer.on("@close", lambda: closes.append("@close"))
    observer.close()
    assert observer.closed is True
    assert closes == ["@close", "close"]
    observer.close()  # closing again does nothing
    assert closes == ["@close", "close"]
    assert len((await opus_router.dump())["rtpObserverIds"]) == 0


async def test_methods_reject_if_closed(opus_router: Router) -> None:
    producer = await audio_producer(opus_router)
    observer = await opus_router.create_active_speaker_observer()
    observer.close()
    with pytest.raises(InvalidStateError):
        await observer.pause()
    with pytest.raises(InvalidStateError):
        await observer.resume()
    with pytest.raises(InvalidStateError):
        await observer.add_producer(producer_id=producer.id)
    with pytest.raises(InvalidStateError):
        await observer.remove_producer(producer_id=producer.id)


async def test_emits_routerclose_if_router_is_closed(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer()
    events: list[str] = []
    observer.on("routerclose", lambda: events.append("routerclose"))
    observer.observer.on("close", lambda: events.append("close"))
    opus_router.close()
    assert events == ["routerclose", "close"]
    assert observer.closed is True
    observer.router_closed()  # already closed: nothing happens
    assert events == ["routerclose", "close"]


async def test_emits_routerclose_if_worker_is_closed(
    opus_worker: Worker, opus_router: Router
) -> None:
    observer = await opus_router.create_active_speaker_observer()
    routerclose = asyncio.ensure_future(observer.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    opus_worker.close()
    await asyncio.wait_for(routerclose, 2)
    assert observer.closed is True


async def test_add_producer_emits_dominantspeaker(opus_router: Router) -> None:
    producer = await audio_producer(opus_router)
    observer = await opus_router.create_active_speaker_observer(interval=100)
    added: list[Any] = []
    observer.observer.on("addproducer", added.append)
    observed: list[Any] = []
    observer.observer.on("dominantspeaker", observed.append)
    dominant = asyncio.ensure_future(observer.events.wait_for("dominantspeaker"))
    await observer.add_producer(producer_id=producer.id)
    assert added == [producer]
    dump = await opus_router.dump()
    assert {"key": producer.id, "values": [observer.id]} in dump["mapProducerIdObserverIds"]
    # The only producer becomes the dominant speaker at the next interval.
    (speaker,) = await asyncio.wait_for(dominant, 2)
    assert speaker == {"producer": producer}
    assert speaker["producer"] is producer
    assert observed == [speaker]


async def test_remove_producer(opus_router: Router) -> None:
    producer = await audio_producer(opus_router)
    observer = await opus_router.create_active_speaker_observer()
    removed: list[Any] = []
    observer.observer.on("removeproducer", removed.append)
    await observer.add_producer(producer_id=producer.id)
    await observer.remove_producer(producer_id=producer.id)
    assert removed == [producer]
    dump = await opus_router.dump()
    assert {"key": producer.id, "values": []} in dump["mapProducerIdObserverIds"]


async def test_add_and_remove_producer_with_wrong_arguments(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer()
    with pytest.raises(ValueError, match="not found"):
        await observer.add_producer(producer_id="nope")
    with pytest.raises(ValueError, match="not found"):
        await observer.remove_producer(producer_id="nope")
    with pytest.raises(TypeError, match="producer_id"):
        await observer.add_producer(producer_id=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await observer.add_producer("positional")  # type: ignore[call-arg]


async def test_dominantspeaker_of_an_unknown_producer_is_ignored(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer()
    events: list[Any] = []
    observer.on("dominantspeaker", events.append)
    observer._on_notification(
        Event.ACTIVESPEAKEROBSERVER_DOMINANT_SPEAKER,
        DominantSpeakerNotificationT(producerId="gone"),
    )
    assert events == []


async def test_unknown_notification_is_logged(
    opus_router: Router, caplog: pytest.LogCaptureFixture
) -> None:
    observer = await opus_router.create_active_speaker_observer()
    assert isinstance(observer, ActiveSpeakerObserver)
    with caplog.at_level(logging.ERROR, logger="mafalda.mediasoup.active_speaker_observer"):
        observer._on_notification(Event.AUDIOLEVELOBSERVER_SILENCE, None)
    assert "ignoring unknown event" in caplog.text


async def test_off_removes_a_listener(opus_router: Router) -> None:
    observer = await opus_router.create_active_speaker_observer()
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    observer.once("routerclose", listener)
    observer.off("routerclose", listener)
    opus_router.close()
    assert calls == []


async def test_add_producer_guard_wraps_the_request(opus_router: Router) -> None:
    producer = await audio_producer(opus_router)
    observer = await opus_router.create_active_speaker_observer()
    calls: list[str] = []

    @contextlib.asynccontextmanager
    async def guard(producer_id: str) -> AsyncIterator[None]:
        calls.append(f"enter {producer_id}")
        try:
            yield
        finally:
            calls.append("exit")

    observer.add_producer_guard = guard
    observer.observer.on("addproducer", lambda p: calls.append("addproducer"))
    await observer.add_producer(producer_id=producer.id)
    # The event fires inside the guard: its owner sees the producer in use before it ends.
    assert calls == [f"enter {producer.id}", "addproducer", "exit"]
    with pytest.raises(ValueError, match="not found"):
        await observer.add_producer(producer_id="nope")
    assert calls[-2:] == ["enter nope", "exit"]
