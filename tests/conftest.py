"""Shared fixtures: a real mediasoup-worker per test, routers with common codecs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda.mediasoup import Router, Worker, create_worker
from mafalda.vertical import Mafalda, MafaldaRouter

MEDIA_CODECS: list[Any] = [
    {
        "kind": "audio",
        "mimeType": "audio/opus",
        "clockRate": 48000,
        "channels": 2,
        "parameters": {"useinbandfec": 1, "foo": "bar"},
    },
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
    {
        "kind": "video",
        "mimeType": "video/H264",
        "clockRate": 90000,
        "parameters": {
            "level-asymmetry-allowed": 1,
            "packetization-mode": 1,
            "profile-level-id": "4d0032",
            "foo": "bar",
        },
    },
]


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = await create_worker(log_level="warn")
    yield w
    w.close()
    await w.wait_closed()


@pytest.fixture
async def worker2() -> AsyncIterator[Worker]:
    w = await create_worker(log_level="warn")
    yield w
    w.close()
    await w.wait_closed()


def hosting_worker(router: Any, obj: Any, worker: Worker) -> Worker:
    """The worker an object of ``router`` lives on: ``worker`` for a plain Router."""
    if isinstance(router, MafaldaRouter):
        return router.worker_of(obj)
    return worker


@pytest.fixture(params=["mediasoup", "mafalda"])
async def router(request: pytest.FixtureRequest, worker: Worker) -> AsyncIterator[Router]:
    """A mediasoup Router, and the same API from Mafalda: what "same API" means.

    The Mafalda router spreads its transports over two workers, so consuming pipes
    producers across workers in most tests.
    """
    if request.param == "mediasoup":
        yield await worker.create_router(media_codecs=MEDIA_CODECS)
        return
    mafalda = await Mafalda.start(
        num_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    try:
        yield await mafalda.create_router(media_codecs=MEDIA_CODECS)  # type: ignore[misc]
    finally:
        await mafalda.aclose()
