"""RemoteServer: a call whose awaited work ends in a CancelledError that the server did
not ask for (its own task is not being cancelled) is answered with a CANCELLED error,
and its session goes on."""

from __future__ import annotations

import asyncio
import socket
import uuid
from typing import Any

import aiohttp
import pytest

from mafalda import remote
from mafalda.remote import RemoteError
from mafalda.remote.protocol import CANCELLED
from mafalda.swarm import SwarmNode
from mafalda.swarm.gossip import encode_gossip
from mafalda.swarm.urls import route_url
from tests.processes import TOKEN
from tests.test_swarm import ROUND, App, entry, wait_until

LIMIT = 100  # aiohttp's default connections at once per ClientSession (its connector's)
QUEUED = 5  # lookups beyond it, queued for a connection


async def test_consumes_queued_in_a_lookup_when_the_swarm_node_stops_are_answered() -> None:
    """A real path: a swarm peer whose control port takes connections but never answers
    (as a SIGSTOPped server's), and more consumes of unknown ids than aiohttp's
    connection limit: the lookups beyond it wait for a connection. The swarm node stops
    (its HTTP client closes, and aiohttp cancels the waits of what it queued): those
    consumes, whose own tasks nobody cancelled, fail at once with a CANCELLED
    RemoteError naming the call (they went unanswered: a client without call_timeout
    waited forever); the others fail as lookups that found nothing do; the session
    serves the next call."""
    frozen = socket.socket()
    frozen.bind(("127.0.0.9", 0))
    # Never accepted; a backlog for every lookup's connection: each is made (none left
    # retrying its SYN, past the test), and cut when the node's HTTP client closes.
    frozen.listen(LIMIT + QUEUED + 16)
    port = frozen.getsockname()[1]
    try:
        async with await remote.serve(host="127.0.0.2", token=TOKEN) as s1:
            n1 = SwarmNode(
                s1,
                token=TOKEN,
                server_id="s1",
                interval=ROUND,
                fail_after=30,  # the frozen peer stays a member throughout
                find_timeout=60,  # no lookup ends by its deadline during the test
            )
            await n1.start()
            app = None
            try:
                late = entry("frozen", generation=2**40, controlUrl=f"ws://127.0.0.9:{port}/")
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with aiohttp.ClientSession(headers=auth) as http:
                    async with http.post(route_url(s1.url), data=encode_gossip([late])) as r:
                        assert r.status == 200
                assert set(n1.members) == {"s1", "frozen"}
                app = await App.on(s1.url)
                transport = await app.router.create_direct_transport()
                caps = app.router.rtp_capabilities
                consumes = [
                    asyncio.ensure_future(
                        transport.consume(producer_id=str(uuid.uuid4()), rtp_capabilities=caps)
                    )
                    for _ in range(LIMIT + QUEUED)
                ]
                assert n1.streams is not None and n1.streams._http is not None
                connector: Any = n1.streams._http.connector
                # (aiohttp tells no count of what waits for a connection but this.)
                await wait_until(
                    lambda: sum(map(len, connector._waiters.values())) == QUEUED, timeout=5
                )
                await n1.aclose()
                async with asyncio.timeout(3):
                    results = await asyncio.gather(*consumes, return_exceptions=True)
                cancelled = [
                    e for e in results if isinstance(e, RemoteError) and e.code == CANCELLED
                ]
                assert len(cancelled) == QUEUED, results
                assert str(cancelled[0]) == (
                    "consume() cancelled on the server: what it awaited was cancelled"
                )
                others = [e for e in results if e not in cancelled]
                assert all("not found" in str(e) for e in others), others
                # The session goes on (the stopped node no longer looks anything up).
                with pytest.raises(Exception, match="not found"):
                    await transport.consume(producer_id=str(uuid.uuid4()), rtp_capabilities=caps)
                assert not (await app.router.create_direct_transport()).closed
            finally:
                if app is not None:
                    await app.client.aclose()
                await n1.aclose()
    finally:
        frozen.close()
