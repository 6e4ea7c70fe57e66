"""Shared fixtures: a real mediasoup-worker per test, routers with common codecs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda.mediasoup import Router, Worker, create_worker

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


@pytest.fixture
async def router(worker: Worker) -> Router:
    return await worker.create_router(media_codecs=MEDIA_CODECS)
