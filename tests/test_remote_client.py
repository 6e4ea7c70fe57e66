"""The remote client against a real server and workers: what it makes of answers that
race its own closes, how aclose() ends a session, how its proxies show and fail."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import pytest

from mafalda.mediasoup.errors import InvalidStateError
from mafalda.remote import RemoteConnectionError, RemoteServer, connect, serve

from .conftest import MEDIA_CODECS, served_by
from .processes import reap
from .relay import Relay
from .test_remote import AUDIO, LISTEN, TOKEN, _start_server_process, client_of, until


@pytest.fixture
async def server() -> Any:
    async with await serve(token=TOKEN, grace_period=0.3) as srv:
        yield srv


# -- an object made under a parent closed here ---------------------------------------------


async def test_an_object_made_under_a_transport_closed_here_comes_closed(
    server: RemoteServer,
) -> None:
    """The server has made a consumer and answers; the app closes its transport here
    before that answer is read (the transport's close() goes to the server, which closes
    the consumer with it and tells nothing). The consumer the call returns is closed,
    kept nowhere, and no open proxy outlives its transport."""
    client = await client_of(server)
    worker = await client.create_worker(log_level="warn")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    source = await router.create_direct_transport()
    producer = await source.produce(kind="audio", rtp_parameters=AUDIO)
    sink = await router.create_direct_transport()
    heard: list[Any] = []
    sink.observer.on("newconsumer", heard.append)
    # The server's transport made it: the app closes its proxy now, before the answer.
    served_by(server, sink).observer.once("newconsumer", lambda consumer: sink.close())
    consumer = await sink.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
    assert sink.closed and consumer.closed
    assert consumer.id and consumer.kind == "audio"  # its state, as sent
    assert consumer.handle not in client.connection.proxies
    assert [o for o in client.objects if o.proxy_kind in ("transport", "consumer")] == [source]
    assert heard == []
    await router.dump()  # the server ran the close
    (session,) = server.sessions.values()
    assert consumer.handle not in session.objects
    consumer.close()  # closed: nothing
    with pytest.raises(Exception, match="closed"):
        await consumer.dump()
    await client.aclose()


async def test_an_object_made_under_a_router_closed_here_comes_closed(
    server: RemoteServer,
) -> None:
    """As above one level up (a transport made as its router closes here); its
    transport-kind state closes as a local transport's does."""
    client = await client_of(server)
    worker = await client.create_worker(log_level="warn")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    served_by(server, router).observer.once("newtransport", lambda transport: router.close())
    transport = await router.create_webrtc_transport(listen_infos=LISTEN)
    assert router.closed and transport.closed
    assert transport.ice_state == "closed" and transport.dtls_state == "closed"
    assert transport.handle not in client.connection.proxies
    assert router.transports_for_testing == {}
    await worker.dump()  # the server ran the close
    (session,) = server.sessions.values()
    assert transport.handle not in session.objects
    await client.aclose()


# -- aclose() ends the session ---------------------------------------------------------------


async def test_aclose_on_a_link_cut_in_the_same_turn_ends_the_session() -> None:
    """The link is cut and aclose() is called before the client could notice: its bye
    went nowhere. The bye is said again over a link resumed for it: the server ends the
    session at once (it used to keep it, and its workers, for its grace period)."""
    async with await serve(token=TOKEN, grace_period=30) as srv, Relay(srv.port) as cutter:
        client = await connect(cutter.url, token=TOKEN)
        worker = await client.create_worker(log_level="warn")  # type: ignore[union-attr]
        (session,) = srv.sessions.values()
        served = session.objects[worker.handle]
        closes: list[Any] = []
        worker.observer.on("close", lambda: closes.append("worker"))
        cutter.cut()
        async with asyncio.timeout(5):
            await client.aclose()
        assert srv.sessions == {} and served.closed
        assert client.closed and worker.closed and closes == ["worker"]
        await client.aclose()  # closed: nothing


async def test_aclose_while_reconnecting_ends_the_session() -> None:
    """aclose() while the client waits to resume (its tries held): the server is told
    over a link opened for the bye once it can be reached (it used to keep the session
    for its grace period)."""
    async with await serve(token=TOKEN, grace_period=30) as srv, Relay(srv.port) as cutter:
        client = await connect(cutter.url, token=TOKEN)
        await client.create_worker(log_level="warn")  # type: ignore[union-attr]
        (session,) = srv.sessions.values()
        disconnected = asyncio.ensure_future(client.connection.events.wait_for("disconnect"))
        cutter.hold()
        cutter.cut()
        await asyncio.wait_for(disconnected, 5)
        await until(lambda: session.connection is None and cutter.waiting >= 1)
        closing = asyncio.ensure_future(client.aclose())
        cutter.release()
        async with asyncio.timeout(5):
            await closing
        assert srv.sessions == {}


async def test_aclose_with_the_server_unreachable_or_the_session_gone_ends_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The bye cannot go: the server refuses connections (logged: it keeps the session
    for its grace period), or no longer knows the session (another process resumed and
    closed it). aclose() ends at once either way."""
    async with await serve(token=TOKEN, grace_period=30) as srv, Relay(srv.port) as cutter:
        client = await connect(cutter.url, token=TOKEN, reconnect=False)
        (session_id,) = srv.sessions
        cutter.cut()
        cutter.refuse()
        with caplog.at_level(logging.WARNING, logger="mafalda.remote.client"):
            async with asyncio.timeout(5):
                await client.aclose()
        assert "the server cannot be told" in caplog.text
        assert list(srv.sessions) == [session_id]  # kept for its grace period
    async with await serve(token=TOKEN, grace_period=30) as srv, Relay(srv.port) as cutter:
        client = await connect(cutter.url, token=TOKEN)
        (session,) = srv.sessions.values()
        disconnected = asyncio.ensure_future(client.connection.events.wait_for("disconnect"))
        cutter.hold()
        cutter.cut()
        await asyncio.wait_for(disconnected, 5)
        await until(lambda: session.connection is None)
        other = await connect(srv.url, token=TOKEN, session=client.session_id)
        await other.aclose()
        assert srv.sessions == {}
        closing = asyncio.ensure_future(client.aclose())
        cutter.release()
        async with asyncio.timeout(5):
            await closing  # its bye's hello answered 'unknown session'
        assert client.closed


async def test_aclose_of_a_frozen_server_ends_within_its_timeout() -> None:
    """A server that stops answering (SIGSTOP) would never answer the bye: aclose()
    gives up after connect()'s ``timeout`` and drops the socket, as abort() does."""
    proc, url = await _start_server_process()
    try:
        client = await connect(url, token=TOKEN, timeout=0.5)
        worker = await client.create_worker(log_level="warn")  # type: ignore[union-attr]
        proc.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        async with asyncio.timeout(5):
            await client.aclose()
        assert time.monotonic() - started < 2
        assert worker.closed and client.closed
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        await reap(proc)


# -- how proxies show and fail -----------------------------------------------------------------


async def test_a_proxys_repr_names_the_local_class(server: RemoteServer) -> None:
    """A proxy shows as the object it stands for (its class as the local one's, its id),
    not as its proxy class; a closed stand-in, whose class is unknown, by its kind."""
    client = await client_of(server)
    worker = await client.create_worker(log_level="warn")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    webrtc = await router.create_webrtc_transport(listen_infos=LISTEN)
    direct = await router.create_direct_transport()
    producer = await direct.produce(kind="audio", rtp_parameters=AUDIO)
    observer = await router.create_audio_level_observer()
    assert repr(worker) == f"<Worker id={worker.id} closed=False>"
    assert repr(router) == f"<Router id={router.id} closed=False>"
    assert repr(webrtc) == f"<WebRtcTransport id={webrtc.id} closed=False>"
    assert repr(direct) == f"<DirectTransport id={direct.id} closed=False>"
    assert repr(producer) == f"<Producer id={producer.id} closed=False>"
    assert repr(observer) == f"<AudioLevelObserver id={observer.id} closed=False>"
    with pytest.raises(AttributeError, match="'WebRtcTransport' object has no attribute 'x'"):
        webrtc.x  # noqa: B018
    webrtc.close()
    assert repr(webrtc) == f"<WebRtcTransport id={webrtc.id} closed=True>"
    stand_in = client.connection._resolve({"$ref": "transport", "id": "gone", "gone": True})
    assert repr(stand_in) == "<Transport id=gone closed=True>"
    await client.aclose()


async def test_a_closed_proxy_fails_as_the_local_object_whatever_the_link() -> None:
    """A call on a proxy closed here fails with the local object's InvalidStateError,
    the link up (the server says so), reconnecting (it used to raise
    RemoteConnectionError) or gone for good; an open proxy's call while reconnecting,
    and one closed by the loss of the link, fail with RemoteConnectionError, which says
    more."""
    async with await serve(token=TOKEN, grace_period=30) as srv, Relay(srv.port) as cutter:
        client = await connect(cutter.url, token=TOKEN)
        worker = await client.create_worker(log_level="warn")  # type: ignore[union-attr]
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        kept = await router.create_direct_transport()
        closed = await router.create_direct_transport()
        closed_router = await worker.create_router(media_codecs=MEDIA_CODECS)
        closed.close()
        closed_router.close()

        async def fails_as_locally() -> None:
            with pytest.raises(InvalidStateError, match="^DirectTransport closed$"):
                await closed.dump()
            with pytest.raises(InvalidStateError, match="^Router closed$"):
                await closed_router.create_direct_transport()

        await fails_as_locally()  # asked to the server
        disconnected = asyncio.ensure_future(client.connection.events.wait_for("disconnect"))
        cutter.hold()
        cutter.cut()
        await asyncio.wait_for(disconnected, 5)
        assert client.connection.reconnecting
        await fails_as_locally()
        with pytest.raises(RemoteConnectionError, match="reconnecting"):
            await kept.dump()
        client.abort()
        assert kept.closed
        await fails_as_locally()
        with pytest.raises(RemoteConnectionError):
            await kept.dump()


async def test_a_proxy_closed_by_a_listener_as_the_connection_goes_sends_nothing(
    server: RemoteServer,
) -> None:
    """As the connection is lost every proxy closes, one root after the other: a 'died'
    listener of the first worker closing the second's router (still open then) closes
    it here, with its events, and sends nothing (the connection is closed)."""
    client = await client_of(server)
    first = await client.create_worker(log_level="warn")
    second = await client.create_worker(log_level="warn")
    router = await second.create_router(media_codecs=MEDIA_CODECS)
    events: list[str] = []
    router.observer.on("close", lambda: events.append("router"))
    first.on("died", lambda error: router.close())
    client.abort()
    assert first.closed and second.closed and router.closed
    assert events == ["router"]
    await client.wait_closed()
