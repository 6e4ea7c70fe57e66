"""The remote client against a misbehaving server: a hand-written WebSocket peer on a real
socket that sends what `mafalda serve` never does (our own server cannot be made to).
The client raises a clear error during the hello, and afterwards drops what it cannot
read, logs it, and keeps serving the calls that are answered properly."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from mafalda.remote import PROTOCOL_VERSION, RemoteConnectionError, RemoteError, connect
from mafalda.remote.protocol import SESSION_TAKEN_OVER, ProtocolError

from .test_remote import until
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
            # Root events (target null): one this client has no use for, a malformed one.
            {"jsonrpc": "2.0", "method": "event", "params": {"target": None, "event": "x"}},
            {"jsonrpc": "2.0", "method": "event", "params": {"target": None, "event": 5}},
            {"jsonrpc": "2.0", "method": "somethingnew", "params": {}},
            {"jsonrpc": "2.0", "id": "x", "result": {"value": "for nobody either"}},
            {"jsonrpc": "2.0", "method": "error", "params": {"error": 5}},
            {"jsonrpc": "2.0", "method": "error", "params": {"error": {"code": "x"}}},
            {
                "jsonrpc": "2.0",
                "method": "error",
                "params": {
                    "method": "send",
                    "error": {
                        "code": -1,
                        "message": "m",
                        "data": {"type": 5, "bases": ["KeyError"]},
                    },
                },
            },
        ]
        await ws.send_bytes(b"binary frames are not the protocol's")
        for message in junk:
            await ws.send_str(message if isinstance(message, str) else json.dumps(message))
        await ws.send_str(_answer(call["id"], {"value": "the answer"}))
        await ws.receive()  # until the client goes

    client = await connect(await peer(script), token="t", reconnect=False)
    errors: list[Any] = []
    client.connection.events.on("callerror", lambda *a: errors.append(a))
    with caplog.at_level(logging.WARNING, logger="mafalda.remote.client"):
        value = await client.connection.call(None, "get_supported_rtp_capabilities", (), {})
    assert value == "the answer"
    assert client.connection.root_state == {"answer": 42}
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings.count("invalid message from the server dropped") == 3
    assert "server error: for nobody" in warnings
    # An error notification whose code is no integer: logged, dropped, nothing emitted;
    # one whose type is no name: its known bases still give its class.
    assert warnings.count("handling a server message failed") == 1
    ((target, method, error),) = errors
    assert (target, method, type(error), error.args) == (None, "send", KeyError, ("m",))
    await client.aclose()


async def test_cancelled_calls_answered_or_lost_later(
    peer: Callable[[Script], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """A call whose caller gave up (its task cancelled) may still be answered, or be
    pending when the connection is lost: neither breaks the client (the connection still
    closes with its 'close' event)."""
    received: list[dict[str, Any]] = []
    both = asyncio.Event()
    answer_and_go = asyncio.Event()

    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], HELLO))
        while len(received) < 2:
            data = json.loads((await ws.receive()).data)
            received.extend(data if isinstance(data, list) else [data])
        both.set()
        await answer_and_go.wait()
        await ws.send_str(_answer(received[0]["id"], {"value": "too late"}))
        await ws.close(code=4000)

    client = await connect(await peer(script), token="t", reconnect=False)
    connection = client.connection
    calls = [asyncio.ensure_future(connection.call(None, "dump", (), {})) for _ in range(2)]
    await asyncio.wait_for(both.wait(), 5)
    for call in calls:
        call.cancel()
    closed = asyncio.ensure_future(connection.events.wait_for("close"))
    with caplog.at_level(logging.WARNING, logger="mafalda.remote.client"):
        answer_and_go.set()
        await asyncio.wait_for(closed, 5)
    assert all(call.cancelled() for call in calls) and client.closed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    await client.aclose()


async def test_a_late_answer_closes_the_objects_it_made_and_only_those(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """A call given up on here (cancelled) is told to the server (``cancel``, naming it),
    and answered later with an object it made and one the client knows: the new one is
    nobody's, so the client closes it (and tells the server); the known one is left as
    it is. The peer makes the answer: our server answers only what it was asked, which
    cannot name both kinds at once."""
    go = asyncio.Event()
    received: list[dict[str, Any]] = []

    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        known = {"$ref": "worker", "id": "w1", "state": {"class": "Worker", "closed": False}}
        await ws.send_str(_answer(hello["id"], {**HELLO, "objects": [known]}))
        call = json.loads((await ws.receive()).data)
        received.append(json.loads((await ws.receive()).data))  # its cancel
        await go.wait()
        made = {"$ref": "worker", "id": "w2", "state": {"class": "Worker", "closed": False}}
        await ws.send_str(_answer(call["id"], {"value": [{"$ref": "worker", "id": "w1"}, made]}))
        received.append(json.loads((await ws.receive()).data))
        await ws.receive()  # until the client goes

    client = await connect(await peer(script), token="t", reconnect=False)
    (known,) = client.objects
    call = asyncio.ensure_future(client.connection.call(None, "create_worker", (), {}))
    await asyncio.sleep(0)  # it is sent
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    go.set()
    await asyncio.wait_for(_until(lambda: len(received) == 2), 5)
    assert received[0] == {"jsonrpc": "2.0", "method": "cancel", "params": {"id": 1}}
    assert received[1]["params"] == {"target": "w2", "method": "close", "args": [], "kwargs": {}}
    made = client.connection.proxies["w2"]  # a worker's proxy waits for its exit
    assert made.closed and not known.closed and client.objects == [known]
    await client.aclose()


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def _dropping(resume: Script) -> Script:
    """A peer that answers a first hello (grace period 1 s), then drops the connection
    (close code 4000: no reason to give up, the client reconnects), and runs ``resume``
    on the connections that come back."""

    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        if hello["params"].get("session") is not None:
            await resume(ws, hello)
            return
        await ws.send_str(_answer(hello["id"], {**HELLO, "gracePeriod": 1}))
        await ws.close(code=4000)

    return script


async def test_a_resume_whose_hello_keeps_failing_gives_up_within_the_grace_period(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """Each resume is closed during its hello (not refused: the client tries again), until
    the grace period is over: the client then closes."""
    attempts: list[str] = []

    async def hang_up(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        attempts.append(hello["params"]["session"])
        await ws.close()

    client = await connect(await peer(_dropping(hang_up)), token="t")
    closed = asyncio.ensure_future(client.connection.events.wait_for("close"))
    await asyncio.wait_for(closed, 10)
    assert client.closed and len(attempts) >= 2 and set(attempts) == {"s1"}
    await client.aclose()


async def test_aclose_stops_a_resume_in_progress(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """The resume's hello is never answered: aclose() does not wait for the grace period,
    it stops the attempt (whose socket closes), tries once to say its bye over a link
    of its own (whose hello is not answered either: given up after connect()'s
    ``timeout``, that socket closed too) and the client closes."""
    hellos: list[dict[str, Any]] = []
    released: list[asyncio.Event] = []

    async def never_answer(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        hellos.append(hello)
        released.append(asyncio.Event())
        await ws.receive()  # until the client lets go
        released[-1].set()

    client = await connect(await peer(_dropping(never_answer)), token="t", timeout=0.5)
    await until(lambda: bool(hellos))
    assert client.connection.reconnecting
    await asyncio.wait_for(client.aclose(), 5)
    assert client.closed
    assert len(hellos) == 2  # the resume's, the bye's
    for event in released:
        await asyncio.wait_for(event.wait(), 5)


async def test_aclose_as_the_connection_drops_makes_no_resume(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """aclose() as the link drops: no resume is made for the client (no 'reconnect'),
    one link is opened to say the bye (which this peer closes at once)."""
    resumes: list[dict[str, Any]] = []

    async def resume(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        resumes.append(hello)
        await ws.close()

    client = await connect(await peer(_dropping(resume)), token="t")
    closing: list[asyncio.Future[None]] = []
    client.connection.events.on(
        "disconnect", lambda: closing.append(asyncio.ensure_future(client.aclose()))
    )
    reconnected: list[object] = []
    client.connection.events.on("reconnect", lambda: reconnected.append(None))
    await asyncio.wait_for(client.connection.events.wait_for("close"), 5)
    await asyncio.wait_for(closing[0], 5)
    assert client.closed and reconnected == []
    assert [hello["params"]["session"] for hello in resumes] == ["s1"]  # the bye's


async def test_an_unreadable_resume_answer_closes_the_client(
    peer: Callable[[Script], Awaitable[str]], caplog: pytest.LogCaptureFixture
) -> None:
    """The resume is answered with a state the client cannot read (bytes that are no
    base64): logged, and the client closes, with the new socket."""
    released = asyncio.Event()

    async def garbled(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], {**HELLO, "root": {"b": {"$bytes": "!!"}}}))
        await ws.receive()
        released.set()

    client = await connect(await peer(_dropping(garbled)), token="t")
    with caplog.at_level(logging.WARNING, logger="mafalda.remote.client"):
        await asyncio.wait_for(client.connection.events.wait_for("close"), 5)
        await asyncio.wait_for(released.wait(), 5)
    assert client.closed
    assert "reconnecting failed" in [r.getMessage() for r in caplog.records]
    await client.aclose()


async def test_an_unreadable_hello_answer_fails_connect_and_closes_the_socket(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    released = asyncio.Event()

    async def garbled(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], {**HELLO, "root": {"b": {"$bytes": "!!"}}}))
        await ws.receive()
        released.set()

    with pytest.raises(ProtocolError, match="bytes"):
        await connect(await peer(garbled), token="t")
    await asyncio.wait_for(released.wait(), 5)


async def test_a_proxy_the_server_closed_stays_closed(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """A server that says an object is open again after saying it closed (ours never
    does: an object's states go out in order, and none reopens): the proxy stays closed."""

    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        worker = {"$ref": "worker", "id": "w1", "state": {"class": "Worker", "closed": False}}
        await ws.send_str(_answer(hello["id"], {**HELLO, "objects": [worker]}))
        call = json.loads((await ws.receive()).data)
        died = {"target": "w1", "event": "died", "args": [], "state": {"closed": True}}
        reopened = {"target": "w1", "state": {"closed": False, "died": False}}
        for method, params in (("event", died), ("state", reopened)):
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "method": method, "params": params}))
        await ws.send_str(_answer(call["id"], {"value": None}))
        await ws.receive()  # until the client goes

    client = await connect(await peer(script), token="t", reconnect=False)
    (worker,) = client.objects
    assert not worker.closed
    await client.connection.call(None, "dump", (), {})  # answered after both
    assert worker.closed and worker.died is False
    await client.aclose()


async def test_a_client_aborted_as_its_resume_is_answered_stays_closed(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """The client is aborted in the very turn its resume's hello is answered (the answer
    in, the reconnecting task not back yet): it does not take the resumed connection up
    (no 'reconnect'), and closes that socket. No timing from outside can aim at that one
    turn: the abort is made by the opener itself, right after the real one returned."""
    released = asyncio.Event()

    async def answer_and_close(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        await ws.send_str(_answer(hello["id"], {**HELLO, "gracePeriod": 1}))
        await ws.close()  # returns once the client's close frame came back
        released.set()

    client = await connect(await peer(_dropping(answer_and_close)), token="t")
    connection = client.connection
    dropped = connection._ws
    opener = connection._opener
    assert opener is not None

    async def aborting(http: Any, session_id: str | None) -> Any:
        opened = await opener(http, session_id)
        client.abort()
        return opened

    connection._opener = aborting  # before the reader hears of the drop
    seen: list[str] = []
    for name in ("disconnect", "reconnect", "close"):
        connection.events.on(name, lambda name=name: seen.append(name))
    await asyncio.wait_for(client.wait_closed(), 5)
    await asyncio.wait_for(released.wait(), 5)
    assert seen == ["disconnect", "close"]
    assert client.closed and not connection.reconnecting and connection._ws is dropped


async def test_aclose_says_no_bye_again_over_a_link_the_server_closed_on_purpose(
    peer: Callable[[Script], Awaitable[str]],
) -> None:
    """The bye is met by the server closing the link on purpose (here: the session taken
    over by another connection; a shutdown alike): no link is opened to say it again
    (it would take the session from its new holder, and end it)."""
    hellos: list[dict[str, Any]] = []

    async def script(ws: web.WebSocketResponse, hello: dict[str, Any]) -> None:
        hellos.append(hello)
        await ws.send_str(_answer(hello["id"], HELLO))
        bye = json.loads((await ws.receive()).data)
        assert bye["method"] == "bye" and isinstance(bye["id"], int)
        await ws.close(code=SESSION_TAKEN_OVER)

    client = await connect(await peer(script), token="t")
    await asyncio.wait_for(client.aclose(), 5)
    assert client.closed and len(hellos) == 1
