"""mafalda.remote._frames.FrameSender on a real aiohttp WebSocket: frames in order, written
at once while the socket takes them, queued (then drained in order) while it pushes back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from mafalda.remote._frames import FrameSender

from .ws_peer import start_ws_peer

FRAME = 256 * 1024
COUNT = 64  # 16 MiB: more than the loopback socket buffers hold


@pytest.fixture
async def pair(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[FrameSender, aiohttp.ClientWebSocketResponse]]:
    """A sender on the server side of a WebSocket, and its client. Parameters (indirect):
    ``batch_limit``, ``compress`` (the client asks for permessage-deflate)."""
    options: dict[str, int] = getattr(request, "param", {})
    ready: asyncio.Future[FrameSender] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        ready.set_result(FrameSender(ws, options.get("batch_limit", 256 * 1024)))
        async for _msg in ws:  # until the client closes
            pass
        return ws

    runner, url = await start_ws_peer(handler)
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(url, max_msg_size=2 * FRAME, compress=options.get("compress", 0))
        sender = await ready
        yield sender, ws
        await ws.close()
    await runner.cleanup()


async def test_frames_arrive_in_order_through_back_pressure(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    sender, ws = pair
    for i in range(COUNT):
        sender.send(b'"%05d' % i + b"x" * (FRAME - 7) + b'"')
    # The reader has not read a byte: the socket pushed back and frames wait their turn.
    assert sender._backlog
    received = []
    for _ in range(COUNT):
        msg = await ws.receive(10)
        assert msg.type == aiohttp.WSMsgType.TEXT
        received.append(int(msg.data[1:6]))
    assert received == list(range(COUNT))
    await sender.flush(5)
    assert not sender._backlog and not sender.broken
    sender.send(b'"after"')  # written at once again
    assert not sender._backlog
    assert (await ws.receive(5)).data == '"after"'


@pytest.mark.parametrize("pair", [{}, {"batch_limit": 1}], indirect=True)
async def test_a_closed_socket_breaks_the_sender(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    """Whether the socket breaks on the first frame of a turn or on its last (a batch
    limit of 1 byte: one frame per message), what is left is dropped without error."""
    sender, ws = pair
    await ws.close()
    await asyncio.sleep(0.05)
    for _ in range(3):
        sender.send(b"1")
    await sender.flush(5)
    assert sender.broken
    sender.send(b"2")  # dropped, no error


async def test_a_socket_lost_under_back_pressure_breaks_the_sender(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    """Frames waiting for the transport when the peer goes away are dropped: flush()
    returns (it waits for the writer), the sender is broken, nothing is kept."""
    sender, ws = pair
    for _ in range(COUNT):
        sender.send(b'"' + b"x" * (FRAME - 2) + b'"')
    assert sender._backlog
    ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await sender.flush(5)
    assert sender.broken and not sender._backlog


@pytest.mark.parametrize("pair", [{"compress": 15}], indirect=True)
async def test_compressed_frames_arrive_in_order(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    """With permessage-deflate (a client may ask for it), frames are not written at once
    but through aiohttp's compressing send_frame(), still in order."""
    sender, ws = pair
    for i in range(3):
        sender.send(b'"%d"' % i)
        await asyncio.sleep(0)  # one frame per turn
    await sender.flush(5)
    assert [(await ws.receive(5)).data for _ in range(3)] == ['"0"', '"1"', '"2"']


async def test_messages_of_one_turn_share_a_frame(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    sender, ws = pair
    for data in (b'{"a":1}', b'{"b":2}', b"3"):
        sender.send(data)
    assert (await ws.receive(5)).data == '[{"a":1},{"b":2},3]'
    sender.send(b'"alone"')
    assert (await ws.receive(5)).data == '"alone"'


async def test_waiting_for_the_backlog_ends_when_the_socket_is_lost(
    pair: tuple[FrameSender, aiohttp.ClientWebSocketResponse],
) -> None:
    """A reader waiting for the backlog to drain (``drained()``) while the peer does not
    read: when the peer goes away, the wait ends (the sender is broken), it does not
    hang."""
    sender, ws = pair
    for _ in range(COUNT):
        sender.send(b'"' + b"x" * (FRAME - 2) + b'"')
    waiting = asyncio.ensure_future(sender.drained(0))
    await asyncio.sleep(0)
    assert not waiting.done() and sender.backlog_bytes > 0
    ws._response.connection.transport.abort()  # type: ignore[union-attr]
    await asyncio.wait_for(waiting, 5)
    assert sender.broken and sender.backlog_bytes == 0
