"""RemoteServer: a call whose awaited work ends in a CancelledError that the server did
not ask for (its own task is not being cancelled) is answered with a CANCELLED error,
and its session goes on."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from mafalda import remote
from mafalda.mediasoup import InvalidValueError
from mafalda.remote import RemoteError
from mafalda.remote.protocol import CANCELLED
from tests.processes import TOKEN
from tests.test_swarm import App


async def test_a_consume_whose_awaited_work_is_cancelled_under_it_is_answered() -> None:
    """A consume waits on what the server's ``before_consume`` hook returned, and that
    is cancelled by something other than the server: the consume fails at once with a
    CANCELLED RemoteError naming the call (it went unanswered: a client without
    call_timeout waited forever), and the session serves the next call.

    The hook is a fake: no library known to this server cancels under a call any more
    (the swarm's lookups cut by their node's stop fail with its StreamError,
    tests/test_swarm.py), and the answer must hold for the next one that does."""
    async with await remote.serve(host="127.0.0.2", token=TOKEN) as server:
        held: list[asyncio.Future[None]] = []
        called = asyncio.Event()

        def hook(target: Any, producer_id: str, data: bool) -> asyncio.Future[None]:
            held.append(asyncio.get_running_loop().create_future())
            called.set()
            return held[-1]

        server.before_consume = hook
        app = await App.on(server.url)
        try:
            transport = await app.router.create_direct_transport()
            caps = app.router.rtp_capabilities
            consume = asyncio.ensure_future(
                transport.consume(producer_id=str(uuid.uuid4()), rtp_capabilities=caps)
            )
            async with asyncio.timeout(3):
                await called.wait()
            held[0].cancel()
            async with asyncio.timeout(3):
                with pytest.raises(RemoteError) as raised:
                    await consume
            assert raised.value.code == CANCELLED
            assert str(raised.value) == (
                "consume() cancelled on the server: what it awaited was cancelled"
            )
            # The session goes on.
            server.before_consume = None
            with pytest.raises(InvalidValueError, match="not found"):
                await transport.consume(producer_id=str(uuid.uuid4()), rtp_capabilities=caps)
            assert not (await app.router.create_direct_transport()).closed
        finally:
            await app.client.aclose()
