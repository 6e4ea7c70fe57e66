"""The remote client against a misbehaving server: a hand-written WebSocket peer on a real
socket that sends what `mafalda serve` never does (our own server cannot be made to).
The client raises a clear error during the hello, and afterwards drops what it cannot
read, logs it, and keeps serving the calls that are answered properly."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from mafalda.remote import PROTOCOL_VERSION, RemoteConnectionError, RemoteError, connect

from .ws_peer import start_ws_peer

Script = Callable[[web.WebSocketResponse, dict[str, Any]], Awaitable[None]]

HELLO = {"version": PROTOCOL_VERSION, "session": "s1", "serves": "mediasoup", "root": {}}


@pytest.fixture
async def peer() -> AsyncIterator[Callable[[Script], Awaitable[str]]]:
    """Start a WebSocket peer that runs ``script(ws, hello_request)``; its ws:// URL."""
    runners: list[web.AppRunner] = []

    async def start(script: Script) -> str:
        async def handler(request: web.Request) -> web.WebSocketResponse:
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            hello = await ws.receive()
            await script(ws, json.loads(hello.data))
            return ws

        runner, url = await start_ws_peer(handler)
        runners.append(runner)
        return url

    yield start
    for runner in runners:
        await runner.cleanup()


def _answer(request_id: Any, result: Any) -> str:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result})


async def test_hello_faults(peer: Callable[[Script], Awaitable[str]]) -> None:
    async def hang_up(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.close()

    async def notify(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": "state", "params": {}}))
        await ws.receive()

    async def no_session(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], {"serves": "mediasoup"}))
        await ws.receive()

    with pytest.raises(RemoteConnectionError, match="closed the connection during the hello"):
        await connect(await peer(hang_up), token="t", reconnect=False)
    with pytest.raises(RemoteError, match="unexpected hello answer"):
        await connect(await peer(notify), token="t", reconnect=False)
    with pytest.raises(RemoteError, match="invalid hello answer"):
        await connect(await peer(no_session), token="t", reconnect=False)


async def test_unreadable_messages_are_dropped_and_calls_still_answered(
    peer: Callable[[Script], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], HELLO))
        call = json.loads((await ws.receive()).data)
        junk: list[Any] = [
            "{not json",
            {"jsonrpc": "1.0", "id": call["id"], "result": {"value": "wrong version"}},
            {"jsonrpc": "2.0", "id": "x", "error": {"code": -1, "message": "for nobody"}},
            {"jsonrpc": "2.0", "id": 999, "result": {"value": "nobody asked"}},
            {"jsonrpc": "2.0", "id": call["id"], "error": "not an error object"},
            {"jsonrpc": "2.0", "method": "state", "params": {"state": {"answer": 42}}},
            {"jsonrpc": "2.0", "method": "state", "params": {"target": "h", "state": 5}},
            {"jsonrpc": "2.0", "method": "event", "params": {"target": "unknown", "event": "x"}},
            {"jsonrpc": "2.0", "method": "event", "params": {"target": 5}},
        ]
        await ws.send_bytes(b"binary frames are not the protocol's")
        for message in junk:
            await ws.send_str(message if isinstance(message, str) else json.dumps(message))
        await ws.send_str(_answer(call["id"], {"value": "the answer"}))
        await ws.receive()  # until the client goes

    client = await connect(await peer(script), token="t", reconnect=False)
    with caplog.at_level(logging.WARNING, logger="mafalda.remote.client"):
        value = await client.connection.call(None, "get_supported_rtp_capabilities", (), {})
    assert value == "the answer"
    assert client.connection.root_state == {"answer": 42}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings.count("invalid message from the server dropped") == 3
    assert "server error: for nobody" in warnings
    await client.aclose()
