"""Calls cut off by a dropped link that the server finishes only after the session
resumed: their caller failed with RemoteConnectionError, and their answer comes on the
resumed link, late. What it made is nobody's and is closed; nothing else is. A real
server, real workers, a real link cut (tests/relay.py); the worker is stopped (SIGSTOP)
to hold the calls until the session has resumed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from mafalda.remote import RemoteConnectionError, RemoteMediasoup, RemoteServer, connect, serve

from .conftest import MEDIA_CODECS
from .relay import Relay
from .test_remote import TOKEN, until


def _audio(ssrc: int) -> dict[str, Any]:
    return {
        "codecs": [
            {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
        ],
        "encodings": [{"ssrc": ssrc}],
    }


@dataclass
class _Setup:
    server: RemoteServer
    relay: Relay
    client: RemoteMediasoup
    worker: Any  # stopped to hold the calls
    router: Any  # on ``worker``
    target: Any  # on another worker, which answers
    producers: list[Any]  # on ``router``

    def live(self) -> set[str]:
        session = self.server.sessions[self.client.session_id]
        return {h for h, o in session.objects.items() if not getattr(o, "closed", True)}

    def tasks(self) -> set[asyncio.Task[Any]]:
        return self.server.sessions[self.client.session_id].tasks

    async def cut_while(self, *calls: Any) -> None:
        """Cut the link while ``calls`` (futures) wait in the stopped worker, each failing
        with RemoteConnectionError; return once the session resumed."""
        await until(lambda: len(self.tasks()) == len(calls))
        resumed = asyncio.ensure_future(self.client.connection.events.wait_for("reconnect"))
        self.relay.cut()
        for call in calls:
            with pytest.raises(RemoteConnectionError):
                await asyncio.wait_for(call, 5)
        await asyncio.wait_for(resumed, 10)


@contextlib.asynccontextmanager
async def _setup() -> AsyncIterator[_Setup]:
    async with await serve(token=TOKEN, grace_period=5) as srv, Relay(srv.port) as relay:
        client = await connect(relay.url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        worker = await client.create_worker(log_level="warn")
        other = await client.create_worker(log_level="warn")
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        target = await other.create_router(media_codecs=MEDIA_CODECS)
        send = await router.create_direct_transport()
        producers = [
            await send.produce(kind="audio", rtp_parameters=_audio(ssrc)) for ssrc in (1, 2, 3)
        ]
        setup = _Setup(srv, relay, client, worker, router, target, producers)
        try:
            yield setup
        finally:
            os.kill(worker.pid, signal.SIGCONT)
            await client.aclose()


async def test_what_a_call_answered_after_the_resume_made_is_closed() -> None:
    """A transport and two pipe_to_router() (one PipeTransport pair for both) cut off,
    the worker answering only once the session resumed: the late answers come on the
    resumed link, and what they made is closed, the pair with the last pipe on it (no
    answer names its ends: it stayed, with its ports, until a router closed). A
    transport the app made after the resume stays; no pipe copy was closed under
    another's answer."""
    async with _setup() as s:
        before = s.live()
        under_the_pair: list[str] = []

        def watch(transport: Any) -> None:
            # A pipe copy closed with its transport (not by its own late answer) says
            # the pair was closed under a pipe still to be answered.
            for event in ("newconsumer", "newproducer"):
                transport.observer.on(
                    event,
                    lambda copy: copy.on("transportclose", lambda: under_the_pair.append(copy)),
                )

        s.router.observer.on("newtransport", watch)
        s.target.observer.on("newtransport", watch)
        os.kill(s.worker.pid, signal.SIGSTOP)
        calls = [
            asyncio.ensure_future(s.router.create_direct_transport()),
            *(
                asyncio.ensure_future(s.router.pipe_to_router(producer_id=p.id, router=s.target))
                for p in s.producers[:2]
            ),
        ]
        await s.cut_while(*calls)
        mine = await s.target.create_direct_transport()  # (its worker answers)
        os.kill(s.worker.pid, signal.SIGCONT)
        await until(lambda: not s.tasks())  # answered, late
        await until(lambda: s.live() == before | {mine.handle})
        assert under_the_pair == [] and not mine.closed
        held = {h for h, proxy in s.client.connection.proxies.items() if not proxy.closed}
        assert held == s.live()
        # The router pair pipes again, over a new pair.
        result = await s.router.pipe_to_router(producer_id=s.producers[2].id, router=s.target)
        assert not result["pipeProducer"].closed
        assert len(s.live() - before) == 5  # the pair, the copy and its consumer, mine


async def test_a_pair_another_pipe_shares_stays_when_the_late_answer_comes() -> None:
    """A pipe_to_router() cut off; once the session resumed, the app pipes another
    producer between the same routers as the late answer of the first is on its way
    (sent by the server, not read here yet): the server gives it the same pair. The
    late answer's copy and pipe consumer are closed; the pair, which the other pipe
    (still under way here, nothing of it seen yet) goes over, stays."""
    async with _setup() as s:
        before = s.live()
        os.kill(s.worker.pid, signal.SIGSTOP)
        first = asyncio.ensure_future(
            s.router.pipe_to_router(producer_id=s.producers[0].id, router=s.target)
        )
        await s.cut_while(first)
        (late,) = s.tasks()
        piping: list[asyncio.Future[Any]] = []

        def retried(_: Any) -> None:
            # Its answer is written: the other pipe is asked before the client reads it.
            piping.append(
                asyncio.ensure_future(
                    s.router.pipe_to_router(producer_id=s.producers[1].id, router=s.target)
                )
            )

        late.add_done_callback(retried)
        os.kill(s.worker.pid, signal.SIGCONT)
        await until(lambda: bool(piping))
        result = await asyncio.wait_for(piping[0], 5)
        consumer, copy = result["pipeConsumer"], result["pipeProducer"]
        await until(lambda: len(s.live() - before) == 4)  # the late pipe's copies closed
        await s.router.dump()  # after any close the late answer sent
        assert not consumer.closed and not copy.closed
        ends = {consumer.parent, copy.parent}
        assert len(ends) == 2 and not any(end.closed for end in ends)
        assert s.live() - before == {consumer.handle, copy.handle} | {e.handle for e in ends}
