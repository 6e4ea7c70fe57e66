"""mafalda.swarm: the gossip table alone, SwarmNodes on real servers in this process, and
real ``mafalda serve --swarm`` processes (each on its own loopback address) used as one
cluster through any of them, with RTP between them and servers killed."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import random
import signal
import socket
import ssl
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mafalda import monitor, remote, swarm
from mafalda.horizontal.cluster import Cluster, ClusterError
from mafalda.horizontal.registry import ServerRecord
from mafalda.mediasoup import InvalidStateError, InvalidValueError, MediasoupError
from mafalda.mediasoup.pipe_transport import PipeTransport
from mafalda.monitor import Probe, StatsRoute, SwarmMonitor
from mafalda.monitor.web import MonitorWeb
from mafalda.remote import PROTOCOL_VERSION, RemoteError, RemoteServer
from mafalda.swarm import SwarmNode, Table, gossip
from mafalda.swarm.directory import directory_server
from mafalda.swarm.gossip import Entry, decode_gossip, encode_gossip
from mafalda.swarm.streams import SwarmStreams, check_message
from mafalda.swarm.urls import route_url
from mafalda.vertical import Mafalda
from tests.processes import TOKEN, reap, serve_args, spawn_serve, tls_files
from tests.rtp_flow import MEDIA_CODECS, OPUS_RTP, Sender, received, sink

ROUND = 0.1  # seconds between gossip rounds in this module


def record(server_id: str, **changes: Any) -> ServerRecord:
    base: ServerRecord = {
        "id": server_id,
        "controlUrl": f"ws://{server_id}.invalid:4443/",
        "mediaAddress": "127.0.0.1",
        "region": None,
        "workers": 0,
        "load": 0.0,
        "consumers": 0,
        "draining": False,
        "version": PROTOCOL_VERSION,
        "serves": "mediasoup",
    }
    return {**base, **changes}  # type: ignore[typeddict-item]


def entry(
    server_id: str, generation: int = 1, beat: int = 1, left: bool = False, **rec: Any
) -> Entry:
    return {
        "record": record(server_id, **rec),
        "generation": generation,
        "beat": beat,
        "left": left,
    }


def table(server_id: str = "me", fail_after: float = 5.0, **options: Any) -> Table:
    return Table(record(server_id), generation=1, fail_after=fail_after, **options)


# -- the gossip format and the table, without I/O ------------------------------------------


def test_gossip_round_trip() -> None:
    entries = [entry("a"), entry("b", generation=7, beat=3, left=True, region="eu")]
    assert decode_gossip(encode_gossip(entries)) == entries
    assert decode_gossip(encode_gossip([])) == []


def _message(**item: Any) -> str:
    good: dict[str, Any] = dict(entry("a"))
    good.update(item)
    return json.dumps({"swarm": 1, "entries": [good]})


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "gossip: not JSON"),
        ("[1]", "gossip: not an object"),
        ("[" * 100_000, "gossip: not JSON"),
        ('{"swarm": 2, "entries": []}', "not swarm version 1"),
        ('{"entries": []}', "not swarm version 1"),
        ('{"swarm": 1, "entries": {}}', "invalid 'entries'"),
        ('{"swarm": 1, "entries": [1]}', "gossip entry 0: not an object"),
        (_message(record=[]), "gossip entry 0: invalid 'record'"),
        (_message(record={**record("a"), "workers": -1}), "gossip entry 0: server record"),
        (_message(record={**record("a"), "load": "high"}), "invalid 'load'"),
        (_message(record=record("a:b")), "invalid server id 'a:b'"),
        (_message(record=record("")), "invalid server id ''"),
        (_message(left=0), "gossip entry 0: invalid 'left'"),
        (_message(beat=-1), "gossip entry 0: invalid 'beat'"),
        (_message(beat=True), "invalid 'beat'"),
        (_message(beat=1.5), "invalid 'beat'"),
        (_message(generation=1 << 64), "invalid 'generation'"),
        (_message(generation=None), "invalid 'generation'"),
    ],
)
def test_bad_gossip_is_refused_naming_what(raw: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decode_gossip(raw)


def test_too_many_entries_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossip, "MAX_ENTRIES", 2)
    with pytest.raises(ValueError, match="more than 2 entries"):
        decode_gossip(encode_gossip([entry("a"), entry("b"), entry("c")]))


_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
_json = (
    _leaf
    | st.lists(_leaf, max_size=4)
    | st.dictionaries(st.text(max_size=8), _leaf | st.lists(_leaf, max_size=3), max_size=4)
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        _json.map(json.dumps),
        st.fixed_dictionaries({"swarm": st.just(1), "entries": st.lists(_json, max_size=3)}).map(
            json.dumps
        ),
        st.lists(
            st.fixed_dictionaries(
                {
                    "record": st.fixed_dictionaries(
                        {k: _json for k in ("id", "workers", "load", "draining")}
                    ).map(lambda r: {**record("x"), **r}),
                    "generation": _json,
                    "beat": _json,
                    "left": _json,
                }
            ),
            max_size=3,
        ).map(lambda items: json.dumps({"swarm": 1, "entries": items})),
        st.binary(max_size=64),
    )
)
def test_gossip_fuzz_decodes_or_names_an_error(raw: str | bytes) -> None:
    try:
        entries = decode_gossip(raw)
    except ValueError as error:
        assert str(error).startswith("gossip")
        return
    # What is taken is a table's entry in every field, and a table takes it.
    t = table()
    t.merge(entries, 0.0)
    for item in entries:
        assert isinstance(item["left"], bool) and item["beat"] >= 0 and item["generation"] >= 0


def test_merge_keeps_the_newest_version_of_each_server() -> None:
    t = table()
    assert t.merge([entry("a", beat=2, workers=1)], 0.0) == [("join", "a")]
    assert t.merge([entry("a", beat=1, workers=9)], 0.0) == []  # older: ignored
    assert t.merge([entry("a", beat=2, workers=9)], 0.0) == []  # same version: ignored
    assert t.records()["a"]["workers"] == 1
    assert t.merge([entry("a", beat=3, workers=2)], 0.0) == [("update", "a")]
    assert t.merge([entry("a", beat=4, workers=2)], 0.0) == []  # a beat, nothing new
    # A restart (a newer generation) outranks any beat of the former life: that life
    # left, a new one joins.
    restarted = [("leave", "a"), ("join", "a")]
    assert t.merge([entry("a", generation=2, beat=0, workers=0)], 0.0) == restarted
    assert t.records()["a"]["workers"] == 0
    # What a peer says of this server is ignored: it knows itself best.
    assert t.merge([entry("me", generation=9, beat=9, left=True)], 0.0) == []
    assert set(t.records()) == {"me", "a"}
    assert [e["record"]["id"] for e in t.entries()] == ["me", "a"]
    assert [p["id"] for p in t.peers()] == ["a"]


def test_beat_and_leave_of_the_table_own_server() -> None:
    t = table()
    t.beat(record("me", workers=3))
    t.beat(record("me", workers=4))
    assert (t.own["beat"], t.own["record"]["workers"], t.own["left"]) == (2, 4, False)
    with pytest.raises(ValueError, match="own server"):
        t.beat(record("other"))
    t.leave()
    assert (t.own["beat"], t.own["left"]) == (3, True)
    assert "me" not in t.records()
    # Another table learns the leave as newer than what it knew.
    other = table("other")
    other.merge([{**t.own, "beat": 2, "left": False}], 0.0)
    assert other.merge([t.own], 0.0) == [("leave", "me")]
    assert other.departed() == {"me"} and "me" not in other.records()


def test_a_tombstone_spreads_and_is_forgotten_later() -> None:
    t = table(fail_after=1.0, forget_after=10.0)
    t.merge([entry("a", beat=5)], 0.0)
    # A tombstone of the same version still wins (the server left at that beat).
    assert t.merge([entry("a", beat=5, left=True)], 1.0) == [("leave", "a")]
    assert t.merge([entry("a", beat=5)], 1.0) == []
    assert [e["left"] for e in t.entries() if e["record"]["id"] == "a"] == [True]
    assert t.expire(5.0) == []  # a tombstone is no live server dropped
    assert "a" in t.departed()
    assert t.expire(11.0) == []
    assert t.departed() == frozenset() and all(e["record"]["id"] != "a" for e in t.entries())
    # Remembered a while more: a late peer's old version does not bring it back.
    assert t.merge([entry("a", beat=5)], 12.0) == []
    assert t.merge([entry("a", beat=6)], 12.0) == [("join", "a")]  # back for real


def test_a_silent_server_is_dropped_and_not_brought_back_by_stale_gossip() -> None:
    t = table(fail_after=2.0, forget_after=10.0)
    t.merge([entry("a", beat=1), entry("b", beat=1)], 0.0)
    t.merge([entry("b", beat=2)], 1.5)
    assert t.expire(1.9) == []
    assert t.expire(2.0) == ["a"]  # b was heard of at 1.5
    assert set(t.records()) == {"me", "b"}
    assert t.merge([entry("a", beat=1)], 3.0) == []  # what a slower peer still has
    assert t.merge([entry("a", beat=2)], 3.0) == [("join", "a")]  # it was alive after all
    # An unknown server's tombstone is remembered, not kept: nothing to spread.
    assert t.merge([entry("c", beat=3, left=True)], 3.0) == []
    assert t.merge([entry("c", beat=3)], 3.0) == []
    assert "c" not in t.records() and "c" not in t.departed()
    assert sorted(t.expire(30.0)) == ["a", "b"]
    assert t.merge([entry("c", beat=3)], 41.0) == [("join", "c")]  # forgotten by then


def test_a_table_holds_at_most_max_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gossip, "MAX_ENTRIES", 2)
    t = table()
    assert t.merge([entry("a"), entry("b"), entry("c")], 0.0) == [("join", "a"), ("join", "b")]
    assert t.merge([entry("a", beat=2, workers=1)], 0.0) == [("update", "a")]  # known: taken


def test_table_options_are_checked() -> None:
    with pytest.raises(ValueError, match="fail_after"):
        table(fail_after=0)


def test_gossip_converges_in_a_few_rounds() -> None:
    """64 servers that each know one seed: push-pull with one random peer a round
    spreads everyone to everyone in O(log n) rounds, and a leave as fast."""
    rng = random.Random(7)
    n = 64
    tables = [table(f"s{i}") for i in range(n)]
    for i in range(1, n):  # each knows only server s0 (or the previous one)
        tables[i].merge([tables[rng.randrange(i)].own], 0.0)

    def round_() -> None:
        for t in tables:
            t.beat(t.own["record"])
        for t in tables:
            peers = t.peers()
            if peers:
                peer = tables[int(rng.choice(peers)["id"][1:])]
                t.merge(peer.entries(), 0.0)
                peer.merge(t.entries(), 0.0)

    rounds = 0
    while not all(len(t.records()) == n for t in tables):
        round_()
        rounds += 1
        assert rounds <= 20
    tables[5].leave()
    left_at = rounds
    while any("s5" in t.records() for t in tables if t is not tables[5]):
        round_()
        rounds += 1
        assert rounds - left_at <= 20


# -- SwarmNodes in this process, on real servers -------------------------------------------


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0
) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = predicate()
            if result if isinstance(result, bool) else await result:
                return
            await asyncio.sleep(0.02)


@pytest.fixture
async def trio() -> AsyncIterator[tuple[list[RemoteServer], list[SwarmNode]]]:
    """s1, s2 (seed s1), s3 (seed s2): servers on 127.0.0.2-4 with their nodes."""
    servers: list[RemoteServer] = []
    nodes: list[SwarmNode] = []
    try:
        for i in range(3):
            server = await remote.serve(host=f"127.0.0.{i + 2}", token=TOKEN)
            servers.append(server)
            node = SwarmNode(
                server,
                token=TOKEN,
                seeds=[servers[i - 1].url] if i else [],
                server_id=f"s{i + 1}",
                interval=ROUND,
            )
            await node.start()
            nodes.append(node)
        yield servers, nodes
    finally:
        for node in nodes:
            await node.aclose()
        for server in servers:
            await server.close()


def _everyone_knows(nodes: list[SwarmNode], ids: set[str]) -> Callable[[], bool]:
    return lambda: all(set(n.members) == ids for n in nodes)


async def test_nodes_learn_each_other_drain_and_leave(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    servers, nodes = trio
    # s1 never heard of s3 directly: it learns it through s2's gossip.
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    assert nodes[0].members["s3"]["controlUrl"] == servers[2].url
    assert nodes[0].members["s3"]["version"] == PROTOCOL_VERSION
    # A drain is pushed to every peer (they know it when drain() starts waiting).
    drained = asyncio.ensure_future(nodes[2].drain(timeout=5))
    await wait_until(lambda: all(n.members["s3"]["draining"] for n in nodes[:2]), timeout=5)
    assert await drained and servers[2].draining
    # A polite leave too: a tombstone, pushed to every live peer.
    await nodes[1].aclose()
    assert all(set(n.members) == {"s1", "s3"} for n in (nodes[0], nodes[2]))
    # s3's seed (s2) left: it keeps gossiping with s1, which it learnt from the swarm.
    for _ in range(5):
        await asyncio.sleep(ROUND)
    assert set(nodes[2].members) == {"s1", "s3"} and set(nodes[0].members) == {"s1", "s3"}


async def test_a_swarm_rolls_a_new_token_out_without_a_stop() -> None:
    """Halfway through a rotation: s1 still sends the old token and takes the new one
    too, s2 sends the new one and takes the old one; they gossip both ways, and a
    client with either token reads the swarm through either server."""
    first = await remote.serve(host="127.0.0.2", token="old", accept_tokens=["new"])
    second = await remote.serve(host="127.0.0.3", token="new", accept_tokens=["old"])
    nodes = [
        SwarmNode(first, token="old", server_id="s1", interval=ROUND),
        SwarmNode(second, token="new", seeds=[first.url], server_id="s2", interval=ROUND),
    ]
    try:
        for node in nodes:
            await node.start()
        await wait_until(_everyone_knows(nodes, {"s1", "s2"}))
        for url, token in ((first.url, "new"), (second.url, "old")):
            cluster = await swarm.connect([url], token=token, interval=ROUND)
            try:
                await wait_until(lambda c=cluster: set(c.servers) == {"s1", "s2"})
            finally:
                await cluster.aclose()
    finally:
        for node in nodes:
            await node.aclose()
        await first.close()
        await second.close()


async def test_a_node_cut_off_is_dropped_after_fail_after(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    # s3's server stops answering (closed without its node leaving: as if killed).
    await servers[2].close()
    assert nodes[2]._task is not None
    nodes[2]._task.cancel()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await wait_until(_everyone_knows(nodes[:2], {"s1", "s2"}))
    assert loop.time() - start >= 5 * ROUND * 0.8  # fail_after (5 rounds), not before


async def test_the_gossip_route_refuses_what_is_not_gossip(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    servers, nodes = trio
    url = route_url(servers[0].url)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}):
            async with http.get(url, headers=headers) as response:
                assert response.status == 401
        async with http.post(url, data=b"{junk", headers=auth) as response:
            assert response.status == 400 and "gossip: not JSON" in await response.text()
        async with http.put(url, data=b"", headers=auth) as response:
            assert response.status == 405
        async with http.get(url.replace("/swarm", "/nope"), headers=auth) as response:
            assert response.status == 404
        too_big = encode_gossip([entry(f"x{i}") for i in range(5_000)])
        assert len(too_big) > servers[0].max_message_size
        async with http.post(url, data=io.BytesIO(too_big), headers=auth) as response:
            assert response.status == 413
        # A peer's entry is taken like any gossip (the token is the swarm's trust).
        async with http.post(url, data=encode_gossip([entry("x1")]), headers=auth) as response:
            assert response.status == 200
            answer = decode_gossip(await response.read())
        assert answer[0]["record"]["id"] == "s1"
    assert "x1" in nodes[0].members
    # The Remote Mediasoup side kept serving all along.
    client = await remote.connect(servers[0].url, token=TOKEN)
    try:
        worker = await client.create_worker()
        assert not worker.closed
    finally:
        await client.aclose()


async def test_swarm_node_and_route_arguments() -> None:
    async with await remote.serve(token=TOKEN) as server:
        with pytest.raises(ValueError, match="token"):
            SwarmNode(server, token="")
        with pytest.raises(ValueError, match="interval"):
            SwarmNode(server, token=TOKEN, interval=0)
        with pytest.raises(ValueError, match="fail_after"):
            SwarmNode(server, token=TOKEN, interval=1, fail_after=1)
        with pytest.raises(TypeError, match="not one string"):
            SwarmNode(server, token=TOKEN, seeds="ws://a:1/")
        with pytest.raises(ValueError, match="seed 'http://a:1/' is not a ws"):
            SwarmNode(server, token=TOKEN, seeds=["http://a:1/"])
        with pytest.raises(ValueError, match="seed 'ws://a:x/' is not a URL"):
            SwarmNode(server, token=TOKEN, seeds=["ws://a:x/"])
        with pytest.raises(TypeError, match="seed must be"):
            SwarmNode(server, token=TOKEN, seeds=[1])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="server id"):
            SwarmNode(server, token=TOKEN, server_id="a:b")
        async with await remote.serve(host="0.0.0.0", token=TOKEN) as everywhere:
            with pytest.raises(ValueError, match="every interface"):
                SwarmNode(everywhere, token=TOKEN)
            node = SwarmNode(everywhere, token=TOKEN, media_address="127.0.0.1")
            assert node.control_url == f"ws://127.0.0.1:{everywhere.port}/"
        with pytest.raises(ValueError, match="route name"):
            server.add_route("a/b", _nothing)
        for bad in (0, float("inf")):
            with pytest.raises(ValueError, match="find_timeout must be > 0"):
                SwarmNode(server, token=TOKEN, find_timeout=bad)
        async with SwarmNode(server, token=TOKEN, interval=ROUND, streams=False) as plain:
            assert plain.streams is None and server.before_consume is None
        node = SwarmNode(server, token=TOKEN, interval=ROUND)
        async with node:
            with pytest.raises(RuntimeError, match="already started"):
                await node.start()
            with pytest.raises(ValueError, match="already served"):
                server.add_route("swarm", _nothing)
            assert set(node.members) == {node.id}  # a swarm of one
        await node.aclose()  # twice: nothing more
        server.add_route("swarm", _nothing)  # free again
        # Never started: a drain only drains, a close only closes.
        unstarted = SwarmNode(server, token=TOKEN, interval=ROUND)
        assert await unstarted.drain(timeout=1) and server.draining
        await unstarted.aclose()
        assert set(unstarted.members) == set()  # it left


async def test_a_failing_round_does_not_stop_the_gossip(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A fault no real input produces here (the record is the node's own): the server's
    # record fails once to be computed; the next rounds go on.
    async with await remote.serve(token=TOKEN) as server:
        async with SwarmNode(server, token=TOKEN, interval=ROUND) as node:
            real = node.record
            failed = asyncio.Event()

            def record() -> ServerRecord:
                if not failed.is_set():
                    failed.set()
                    raise RuntimeError("boom")
                return real()

            monkeypatch.setattr(node, "record", record)
            beat = node._table.own["beat"]
            await asyncio.wait_for(failed.wait(), 5)
            await wait_until(lambda: node._table.own["beat"] >= beat + 2)
    assert "gossip round failed" in caplog.text


async def test_a_node_closes_when_a_round_swallows_its_cancellation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """aclose() returns even when the gossip loop's cancellation is lost: aiohttp turns
    a cancellation into a TimeoutError when its own timeout fires at the same moment,
    and the exchange takes that for a peer that failed. That race cannot be produced on
    demand: here a round swallows the cancellation once and finishes, as it then does."""
    async with await remote.serve(token=TOKEN) as server:
        node = SwarmNode(server, token=TOKEN, interval=ROUND)
        inside = asyncio.Event()
        swallowed = False
        real_round = node._round

        async def round_() -> None:
            nonlocal swallowed
            if asyncio.current_task() is node._task and not swallowed:
                inside.set()
                try:
                    await asyncio.sleep(60)
                except asyncio.CancelledError:
                    swallowed = True
                # (Coverage's tracer on Python 3.11 misses what a coroutine resumed by a
                # thrown cancellation runs before it next waits: the loop's end with it.)
                await asyncio.sleep(0)
            await real_round()  # the rest of the round

        monkeypatch.setattr(node, "_round", round_)
        await node.start()
        task = node._task
        assert task is not None
        try:
            async with asyncio.timeout(10):
                await inside.wait()
                await node.aclose()
        finally:
            task.cancel()  # (a loop still running fails the test)
        assert swallowed and task.done() and not task.cancelled()  # it ended by itself


async def _nothing(request: Any) -> Any:
    raise AssertionError("not called")


async def test_a_node_with_another_token_is_not_let_in(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as a,
        await remote.serve(host="127.0.0.3", token="other") as b,
    ):
        async with (
            SwarmNode(a, token=TOKEN, server_id="a", interval=ROUND) as node_a,
            SwarmNode(b, token="other", seeds=[a.url], server_id="b", interval=ROUND) as node_b,
        ):
            for _ in range(3):
                await asyncio.sleep(ROUND)
            assert set(node_a.members) == {"a"} and set(node_b.members) == {"b"}
    assert "refused: HTTP 401" in caplog.text


PEERS = "the-servers-own-secret"  # the servers' secret, which no client holds


async def test_a_peer_token_keeps_clients_from_acting_as_servers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two servers with a peer token gossip and pipe streams with it; the clients'
    token still reads the table (apps, monitors) but may not gossip, pipe streams out
    or write directory entries (403); the peer token opens no session; a server that
    presents the clients' token, or another peer token, is kept out."""
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as one,
        await remote.serve(host="127.0.0.3", token=TOKEN) as two,
        await remote.serve(host="127.0.0.4", token=TOKEN) as three,
        await remote.serve(host="127.0.0.5", token=TOKEN) as four,
    ):
        nodes = [
            SwarmNode(one, token=TOKEN, peer_token=PEERS, server_id="s1", interval=ROUND),
            SwarmNode(
                two,
                token=TOKEN,
                peer_token=PEERS,
                seeds=[one.url],
                server_id="s2",
                interval=ROUND,
            ),
        ]
        # Not of the swarm: no peer token (sends the clients' one), another peer token.
        outsiders = [
            SwarmNode(three, token=TOKEN, seeds=[one.url], server_id="s3", interval=ROUND),
            SwarmNode(
                four,
                token=TOKEN,
                peer_token="another",
                seeds=[one.url],
                server_id="s4",
                interval=ROUND,
            ),
        ]
        async with contextlib.AsyncExitStack() as stack:
            for node in nodes + outsiders:
                await stack.enter_async_context(node)
            await wait_until(_everyone_knows(nodes, {"s1", "s2"}))
            gossip_url, streams_url = route_url(one.url), route_url(one.url, "streams")
            client = {"Authorization": f"Bearer {TOKEN}"}
            peer = {"Authorization": f"Bearer {PEERS}"}
            find = {"op": "find", "producerId": "nope"}
            async with aiohttp.ClientSession() as http:
                async with http.get(gossip_url, headers=client) as response:
                    assert response.status == 200
                    assert {e["record"]["id"] for e in decode_gossip(await response.read())} == {
                        "s1",
                        "s2",
                    }
                # A client's token neither adds a server nor asks or tells the streams.
                forged = encode_gossip([entry("x1")])
                async with http.post(gossip_url, data=forged, headers=client) as response:
                    assert response.status == 403
                    assert "only the swarm's servers" in await response.text()
                announce = {"op": "announce", "producerId": "p1", "at": "s2"}
                for message in (find, announce):
                    async with http.post(streams_url, json=message, headers=client) as response:
                        assert response.status == 403
                assert "x1" not in nodes[0].members
                assert nodes[0].streams is not None
                assert nodes[0].streams.directory.get(("p1", False)) is None
                # The peer token does all that (and reads the table too).
                async with http.post(streams_url, json=find, headers=peer) as response:
                    assert await response.json() == {"found": False}
                async with http.post(gossip_url, data=forged, headers=peer) as response:
                    assert response.status == 200
                assert "x1" in nodes[0].members
            # The peer token is no client's: it opens no Remote Mediasoup session.
            with pytest.raises(RemoteError, match="authentication failed"):
                await remote.connect(one.url, token=PEERS)
            # Apps (the clients' token) consume across the servers: the streams between
            # them go with the peer token.
            a, b = await App.on(one.url), await App.on(two.url)
            try:
                send, producer = await a.producer("127.0.0.2")
                consumer, counter, sock = await b.consumer(producer.id)
                assert consumer.producer_id == producer.id
                with Sender(send):
                    await received(counter)
                sock.close()
            finally:
                await a.client.aclose()
                await b.client.aclose()
            for outsider in outsiders:
                assert set(outsider.members) == {outsider.id}
            assert {"s3", "s4"}.isdisjoint(nodes[0].members)
    assert "refused: HTTP 403" in caplog.text  # s3, with the clients' token
    assert "refused: HTTP 401" in caplog.text  # s4, with another peer token


async def test_a_swarm_rolls_a_new_peer_token_out_without_a_stop() -> None:
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as first,
        await remote.serve(host="127.0.0.3", token=TOKEN) as second,
    ):
        nodes = [
            SwarmNode(
                first,
                token=TOKEN,
                peer_token="old",
                accept_peer_tokens=["new"],
                server_id="s1",
                interval=ROUND,
            ),
            SwarmNode(
                second,
                token=TOKEN,
                peer_token="new",
                accept_peer_tokens=["old"],
                seeds=[first.url],
                server_id="s2",
                interval=ROUND,
            ),
        ]
        async with nodes[0], nodes[1]:
            await wait_until(_everyone_knows(nodes, {"s1", "s2"}))


async def test_peer_token_arguments_are_checked() -> None:
    async with await remote.serve(token=TOKEN) as server:
        with pytest.raises(ValueError, match="peer_token must be a non-empty string"):
            SwarmNode(server, token=TOKEN, peer_token="")
        with pytest.raises(TypeError, match="accept_peer_tokens must be a list"):
            SwarmNode(server, token=TOKEN, peer_token=PEERS, accept_peer_tokens="x")
        with pytest.raises(ValueError, match="accept_peer_tokens: each must be"):
            SwarmNode(server, token=TOKEN, peer_token=PEERS, accept_peer_tokens=[""])
        with pytest.raises(ValueError, match="accept_peer_tokens needs a peer_token"):
            SwarmNode(server, token=TOKEN, accept_peer_tokens=["x"])
        for peer_tokens in ([TOKEN], [PEERS, TOKEN]):
            with pytest.raises(ValueError, match="must not be a token of the server's apps"):
                SwarmNode(
                    server,
                    token=TOKEN,
                    peer_token=peer_tokens[0],
                    accept_peer_tokens=peer_tokens[1:],
                )


# -- the client: mafalda.swarm.connect ----------------------------------------------------


async def test_connect_checks_its_arguments_and_its_seeds(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    servers, _ = trio
    with pytest.raises(TypeError, match="not one string"):
        await swarm.connect(servers[0].url, token=TOKEN)
    with pytest.raises(ValueError, match="at least one"):
        await swarm.connect([], token=TOKEN)
    with pytest.raises(ValueError, match="policy"):
        await swarm.connect([servers[0].url], token=TOKEN, policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="is not a ws"):
        await swarm.connect(["redis://x"], token=TOKEN)
    with pytest.raises(ValueError, match="call_timeout"):
        await swarm.connect([servers[0].url], token=TOKEN, call_timeout=-1)
    with pytest.raises(PermissionError, match="refused the token"):
        await swarm.connect([servers[0].url], token="nope")
    closed = await remote.serve(host="127.0.0.5", token=TOKEN)
    dead = closed.url
    await closed.close()
    with pytest.raises(OSError, match="no server of the swarm answered"):
        await swarm.connect([dead], token=TOKEN)
    # A server that is no swarm's (no gossip route) is no entry point.
    async with await remote.serve(host="127.0.0.5", token=TOKEN) as lone:
        with pytest.raises(OSError, match=f"{lone.url}: HTTP 404"):
            await swarm.connect([lone.url], token=TOKEN)
    # A dead seed first: the next one is read.
    async with await swarm.connect([dead, servers[1].url], token=TOKEN) as cluster:
        assert cluster.membership.entry_point == servers[1].url  # type: ignore[attr-defined]


async def test_the_client_reads_through_any_server_and_follows_leaves(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    async with await swarm.connect(
        [servers[2].url], token=TOKEN, interval=ROUND, call_timeout=5
    ) as cluster:
        assert set(cluster.servers) == {"s1", "s2", "s3"}
        worker = await cluster.create_worker()
        assert worker._connection.call_timeout == 5  # the remote clients' option
        placed = cluster.server_of(worker)
        assert placed is not None
        # A polite leave is gone at the next read, not after grace (5 s).
        left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
        await nodes[0].aclose()
        async with asyncio.timeout(2):
            gone, reason = await left
        assert (gone["id"], reason) == ("s1", "left")
        # The entry point goes away: the client reads another live server.
        await nodes[2].aclose()
        await servers[2].close()
        await wait_until(lambda: set(cluster.servers) == {"s2"}, timeout=10)
        assert cluster.membership.entry_point == servers[1].url  # type: ignore[attr-defined]
        with pytest.raises(ClusterError, match="no live media server 's3'"):
            cluster.check_placeable("s3")


# -- real `mafalda serve --swarm` processes ------------------------------------------------


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, server_id: str, url: str) -> None:
        self.proc, self.id, self.url = proc, server_id, url


async def _start(index: int, *extra: str) -> Server:
    """`mafalda serve --swarm` as s<index> on 127.0.0.<index + 1>; ``extra`` arguments
    follow (seeds first: they are --swarm's)."""
    proc, url = await spawn_serve(
        serve_args(
            "--host",
            f"127.0.0.{index + 1}",
            "--server-id",
            f"s{index}",
            "--heartbeat",
            "0.2",
            "--drain-timeout",
            "10",
            "--peer-token",
            PEERS,
            "--swarm",
            *extra,
        )
    )
    return Server(proc, f"s{index}", url)


@pytest.fixture
async def swarm_servers() -> AsyncIterator[list[Server]]:
    started: list[Server] = []
    try:
        started.append(await _start(1))
        started.append(await _start(2, started[0].url))
        started.append(await _start(3, started[1].url))
        yield started
    finally:
        for server in started:
            if server.proc.returncode is None:
                server.proc.kill()
            await reap(server.proc)


async def test_a_frozen_peer_holds_a_find_only_for_the_find_timeout() -> None:
    """Two `mafalda serve --swarm` processes with a 2 s heartbeat (a silent peer is
    dropped after 10 s); s2 SIGSTOPped: a consume through s1 of an id no server has
    fails once the find timeout (2 s) passed, not after the 10 s of a peer call; s2
    goes on after SIGCONT."""
    s1 = await _start(1, "--heartbeat", "2")
    s2 = await _start(2, s1.url, "--heartbeat", "2")
    client = None
    try:
        async with await swarm.connect([s1.url], token=TOKEN, interval=0.2) as cluster:
            await wait_until(_has(cluster, {"s1", "s2"}), timeout=15)
        client = await remote.connect(s1.url, token=TOKEN)
        assert isinstance(client, remote.RemoteMediasoup)
        worker = await client.create_worker(log_level="warn")
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.2"}
        )
        s2.proc.send_signal(signal.SIGSTOP)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Exception, match="not found") as refused:
            await transport.consume(
                producer_id=str(uuid.uuid4()), rtp_capabilities=router.rtp_capabilities
            )
        took = loop.time() - started
        assert 1.5 <= took < 6, (took, refused.value)
        s2.proc.send_signal(signal.SIGCONT)
    finally:
        if client is not None:
            await client.aclose()
        for server in (s1, s2):
            server.proc.send_signal(signal.SIGCONT)
            server.proc.kill()
            await reap(server.proc)


async def test_a_find_takes_a_silent_peer_as_a_no_after_find_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same in this process (measured): a peer of the swarm whose control port
    takes connections but never answers, as a SIGSTOPped server's does (the kernel
    completes the handshake into the backlog), is taken as a no once ``find_timeout``
    passed, with a warning naming how many peers were silent; the consume of an id no
    server has fails with mediasoup's 'not found' then, not after a peer call's 10 s."""
    find_timeout = 0.3
    frozen = socket.socket()
    frozen.bind(("127.0.0.9", 0))
    frozen.listen(8)  # never accepted
    port = frozen.getsockname()[1]
    try:
        async with (
            await remote.serve(host="127.0.0.2", token=TOKEN) as s1,
            SwarmNode(
                s1,
                token=TOKEN,
                server_id="s1",
                interval=ROUND,
                fail_after=30,  # the frozen peer stays a member throughout
                find_timeout=find_timeout,
            ) as n1,
        ):
            late = entry("frozen", generation=2**40, controlUrl=f"ws://127.0.0.9:{port}/")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=auth) as http:
                async with http.post(route_url(s1.url), data=encode_gossip([late])) as r:
                    assert r.status == 200
            assert set(n1.members) == {"s1", "frozen"}
            app = await App.on(s1.url)
            try:
                transport = await app.router.create_direct_transport()
                loop = asyncio.get_running_loop()
                started = loop.time()
                with pytest.raises(Exception, match="not found"):
                    await transport.consume(
                        producer_id=str(uuid.uuid4()), rtp_capabilities=app.router.rtp_capabilities
                    )
                took = loop.time() - started
                assert find_timeout <= took < 3, took
                assert f"1 peer(s) did not answer within {find_timeout:g} s" in caplog.text
            finally:
                await app.client.aclose()
                frozen.close()  # dead now: s1's leave does not wait for it
    finally:
        frozen.close()


def _has(cluster: Cluster, ids: set[str]) -> Callable[[], bool]:
    return lambda: set(cluster.servers) == ids


async def test_a_room_across_swarm_servers_through_any_entry_point(
    swarm_servers: list[Server],
) -> None:
    """Three `mafalda serve --swarm` processes, each seeded with the previous one; the
    client knows only s3. A producer on s1 is consumed on s2 and s3 (RTP counted);
    killing s2 closes what was there, s1 → s3 goes on; SIGTERM on s3 (the entry point)
    drains and leaves, and the client reads s1 from then on."""
    s1, s2, s3 = swarm_servers
    async with await swarm.connect(
        [s3.url], token=TOKEN, interval=0.2, grace=3.0, worker_idle=0.5
    ) as cluster:
        await wait_until(_has(cluster, {"s1", "s2", "s3"}), timeout=15)
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await router.create_plain_transport(
            server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
        )
        producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
        sinks = {s: await sink(router, s) for s in ("s2", "s3")}
        consumers = {
            s: await t.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
            for s, (t, _, _) in sinks.items()
        }
        assert sorted((p["from"], p["to"]) for p in router.cluster_dump()["pipes"]) == [
            ("s1", "s2"),
            ("s1", "s3"),
        ]
        with Sender(send):
            await asyncio.gather(*(received(counter) for _, counter, _ in sinks.values()))
            left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
            s2.proc.send_signal(signal.SIGKILL)
            await reap(s2.proc)
            async with asyncio.timeout(10):
                gone, _ = await left
            assert gone["id"] == "s2" and consumers["s2"].closed
            await received(sinks["s3"][1])  # s1 → s3 still forwards
        for transport, _, sock in sinks.values():
            transport.close()
            sock.close()
        router.close()
        # SIGTERM: the entry point drains (nothing of this client left there), leaves
        # with a tombstone, and exits 0; the client reads the swarm from s1.
        left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
        s3.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(reap(s3.proc), 20) == 0
        async with asyncio.timeout(10):
            gone, reason = await left
        assert (gone["id"], reason) == ("s3", "left")
        assert set(cluster.servers) == {"s1"}
        assert cluster.membership.entry_point == s1.url  # type: ignore[attr-defined]
        worker = await cluster.create_worker()
        assert cluster.server_of(worker)["id"] == "s1"  # type: ignore[index]


async def test_serve_swarm_and_cluster_are_exclusive() -> None:
    proc = await asyncio.create_subprocess_exec(
        *serve_args("--cluster", "redis://127.0.0.1:1/0", "--swarm"),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"pick one" in err
    # Listening on every interface, the address to tell peers is required.
    proc = await asyncio.create_subprocess_exec(
        *serve_args("--host", "0.0.0.0", "--swarm"), stderr=asyncio.subprocess.PIPE
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"every interface (0.0.0.0)" in err
    assert b"Traceback" not in err
    assert b"warning: no --peer-token" in err  # said before anything else fails
    # The servers' own secret is a swarm's only, and what it rotates needs it.
    for extra, error in (
        (["--peer-token", PEERS], b"--peer-token and --peer-also-accept need --swarm"),
        (["--peer-also-accept", "x", "--swarm"], b"--peer-also-accept needs --peer-token"),
        (["--swarm", "--peer-token", TOKEN], b"the peer token must not be a token of the apps"),
    ):
        proc = await asyncio.create_subprocess_exec(
            *serve_args(*extra), stderr=asyncio.subprocess.PIPE
        )
        _, err = await proc.communicate()
        assert proc.returncode == 2 and error in err, err


# -- streams across entry points (mafalda.swarm.streams) -----------------------------------


_OPEN = b'{"op": "open", "producerId": "p", "pipeId": "x", "pairId": "y", "from": "s", "ip": "1"'


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b"[]", "streams: not an object"),
        (b'{"op": "nope"}', "invalid 'op'"),
        (b'{"op": "find"}', "invalid 'producerId'"),
        (b'{"op": "find", "producerId": ""}', "invalid 'producerId'"),
        (b'{"op": "find", "producerId": "p", "data": 1}', "invalid 'data'"),
        (b'{"op": "close", "pipeId": 3}', "invalid 'pipeId'"),
        (b'{"op": "closepair"}', "invalid 'pairId'"),
        (b'{"op": "open", "producerId": "p", "pipeId": "x", "from": "s"}', "invalid 'pairId'"),
        (_OPEN + b"}", "'port'"),
        (_OPEN + b', "port": 70000}', "'port'"),
        (_OPEN + b', "port": 7, "srtpParameters": 1}', "'srtpParameters'"),
        (_OPEN + b', "port": 7, "incarnation": 1}', "'incarnation'"),
    ],
)
def test_bad_stream_messages_are_refused_naming_what(message: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        check_message(message)


class App:
    """An app's Remote Mediasoup session on one server: a worker and a router."""

    def __init__(self, client: Any, router: Any) -> None:
        self.client, self.router = client, router

    @classmethod
    async def on(cls, url: str) -> App:
        client = await remote.connect(url, token=TOKEN)
        worker = await client.create_worker()
        return cls(client, await worker.create_router(media_codecs=MEDIA_CODECS))

    async def producer(self, host: str) -> tuple[Any, Any]:
        send = await self.router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": host}, comedia=True
        )
        return send, await send.produce(kind="audio", rtp_parameters=OPUS_RTP)

    async def consumer(self, producer_id: str) -> tuple[Any, Any, Any]:
        transport, counter, sock = await sink(self.router)
        caps = self.router.rtp_capabilities
        consumer = await transport.consume(producer_id=producer_id, rtp_capabilities=caps)
        return consumer, counter, sock


async def test_a_stream_is_consumed_through_another_entry_point(
    swarm_servers: list[Server],
) -> None:
    """App A publishes through s1; app B, a separate session of s2, consumes by the
    producer's id with mediasoup's plain API: s2 pipes it in from s1. Pause, resume and
    close reach B's consumer; an unknown id is still 'not found'; a third app on s2
    consumes a producer of B's router (two routers of one server); killing s1 closes
    what came from it."""
    s1, s2, _ = swarm_servers
    a, b, c = await App.on(s1.url), await App.on(s2.url), await App.on(s2.url)
    try:
        send, producer = await a.producer("127.0.0.2")
        caps = b.router.rtp_capabilities
        # The client answers can_consume() as the server's router would: another app's
        # producer is not in it before a consume() brings its copy, which the router
        # knows by the original's id (an alias: the copy has an id of its own).
        assert not b.router.can_consume(producer_id=producer.id, rtp_capabilities=caps)
        assert not b.router.has_producer(producer.id)
        consumer, counter, sock = await b.consumer(producer.id)
        assert consumer.producer_id == producer.id and consumer.kind == "audio"
        assert b.router.can_consume(producer_id=producer.id, rtp_capabilities=caps)
        assert b.router.has_producer(producer.id)
        with Sender(send):
            await received(counter)
            paused = asyncio.ensure_future(consumer.events.wait_for("producerpause"))
            await producer.pause()
            async with asyncio.timeout(5):
                await paused
            assert consumer.producer_paused
            resumed = asyncio.ensure_future(consumer.events.wait_for("producerresume"))
            await producer.resume()
            async with asyncio.timeout(5):
                await resumed
            await received(counter)
            # A second consumer of the same stream on B's router shares the pipe.
            second, counter2, sock2 = await b.consumer(producer.id)
            await received(counter2)
        # B's router has the copy, and one pipe transport more than B made.
        dump = await b.router.dump()
        [mapping] = dump["mapProducerIdConsumerIds"]
        assert mapping["key"] != producer.id  # the copy, by its own id in the worker
        assert sorted(mapping["values"]) == sorted([consumer.id, second.id])
        assert len(dump["transportIds"]) == 3

        probe = await b.router.create_direct_transport()
        with pytest.raises(Exception, match="not found"):
            await probe.consume(
                producer_id="nobody-has-this", rtp_capabilities=b.router.rtp_capabilities
            )

        # Two routers of one server: C consumes what B's direct transport produces.
        direct = await b.router.create_direct_transport()
        local = await direct.produce(kind="audio", rtp_parameters=OPUS_RTP)
        from_b, _, sock3 = await c.consumer(local.id)
        assert from_b.producer_id == local.id

        before = await _transports(b)
        closed = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
        closed2 = asyncio.ensure_future(second.events.wait_for("producerclose"))
        producer.close()
        async with asyncio.timeout(5):
            await asyncio.gather(closed, closed2)
        assert consumer.closed and second.closed
        # The pipe went with it.
        await wait_until(lambda: _count_is(b, before - 1))

        # The owner server dies: what came from it closes on s2.
        send2, producer2 = await a.producer("127.0.0.2")
        consumer3, _, sock4 = await b.consumer(producer2.id)
        gone = asyncio.ensure_future(consumer3.events.wait_for("producerclose"))
        s1.proc.send_signal(signal.SIGKILL)
        await reap(s1.proc)
        async with asyncio.timeout(10):
            await gone
        assert not from_b.closed  # s2's own stream is untouched
        for s in (sock, sock2, sock3, sock4):
            s.close()
    finally:
        for app in (a, b, c):
            await app.client.aclose()


async def _transports(app: App) -> int:
    return len((await app.router.dump())["transportIds"])


async def _count_is(app: App, count: int) -> bool:
    return await _transports(app) == count


async def test_streams_between_servers_of_this_process(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """The same as across processes, in one (so every step is measured): a stream of
    s1 consumed through s2 and s3, pause and close reaching the copies, a router closed
    on the consuming side closing the pipe on the producing side, concurrent consumes
    sharing one pipe, two routers of one server, s1 cut off, s3 leaving."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    a, b, c = [await App.on(server.url) for server in servers]
    d = await App.on(servers[1].url)
    streams = [n.streams for n in nodes]
    assert all(s is not None for s in streams)
    out1, in2, in3 = streams[0]._out, streams[1]._in, streams[2]._in  # type: ignore[union-attr]
    try:
        send, producer = await a.producer("127.0.0.2")
        consumer_b, counter_b, sock_b = await b.consumer(producer.id)
        consumer_c, counter_c, sock_c = await c.consumer(producer.id)
        with Sender(send):
            await asyncio.gather(received(counter_b), received(counter_c))
        assert len(out1) == 2 and len(in2) == 1 and len(in3) == 1
        paused = asyncio.ensure_future(consumer_c.events.wait_for("producerpause"))
        await producer.pause()
        async with asyncio.timeout(5):
            await paused
        # C's router closes: the pipe out of s1 to s3 closes with it.
        c.router.close()
        await wait_until(lambda: len(out1) == 1 and not in3)
        # Concurrent consumes of one stream on a router that has none: one pipe.
        transports = [await sink(d.router) for _ in range(3)]
        more = await asyncio.gather(
            *(
                t.consume(producer_id=producer.id, rtp_capabilities=d.router.rtp_capabilities)
                for t, _, _ in transports
            )
        )
        assert all(m.producer_id == producer.id for m in more)
        assert len(in2) == 2 and len(out1) == 2
        closed = asyncio.ensure_future(consumer_b.events.wait_for("producerclose"))
        producer.close()
        async with asyncio.timeout(5):
            await closed
        await wait_until(lambda: not in2 and not out1 and all(m.closed for m in more))

        # Two routers of one server: D consumes what B's direct transport produces.
        direct = await b.router.create_direct_transport()
        local = await direct.produce(kind="audio", rtp_parameters=OPUS_RTP)
        from_b, _, sock_d = await d.consumer(local.id)
        # mediasoup's own pipe: a copy here, tracked for its idle time, on no pair.
        assert from_b.producer_id == local.id and [p.pair for p in in2.values()] == [None]

        # s1 is cut off: its gossip stops and it cannot reach anyone (a partition; the
        # process cannot be killed here, the test above kills a real one).
        send2, producer2 = await a.producer("127.0.0.2")
        consumer2, _, sock2 = await b.consumer(producer2.id)
        gone = asyncio.ensure_future(consumer2.events.wait_for("producerclose"))
        assert nodes[0]._task is not None and streams[0] is not None
        nodes[0]._task.cancel()
        await streams[0]._http.close()  # type: ignore[union-attr]
        await servers[0].close()
        # Meanwhile, an id nobody has: s1 does not answer, s3 says no: mediasoup's error.
        probe = await b.router.create_direct_transport()
        with pytest.raises(Exception, match="not found"):
            await probe.consume(
                producer_id="nobody-has-this", rtp_capabilities=b.router.rtp_capabilities
            )
        async with asyncio.timeout(10):
            await gone
        assert [p.pair for p in in2.values()] == [None] and not from_b.closed

        # s3 leaves while C has a copy of s2's stream: the copy closes with the leave.
        c2 = await App.on(servers[2].url)
        from_s2, _, sock_c2 = await c2.consumer(local.id)
        left = asyncio.ensure_future(from_s2.events.wait_for("producerclose"))
        await nodes[2].aclose()
        async with asyncio.timeout(5):
            await left
        await wait_until(lambda: not streams[1]._out)  # type: ignore[union-attr]
        for s in (sock_b, sock_c, sock_d, sock2, sock_c2, *(t[2] for t in transports)):
            s.close()
        await c2.client.aclose()
    finally:
        for app in (a, b, c, d):
            await app.client.aclose()


def _network_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_a_stream_over_a_network_is_srtp_and_a_pair_in_the_clear_is_refused() -> None:
    """Servers whose media address is not loopback pipe with SRTP (RTP counted through
    it); the owner refuses a new pair that comes without SRTP from such a peer, whatever
    the asker chose, before anything is made."""
    address = _network_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    servers: list[RemoteServer] = []
    nodes: list[SwarmNode] = []
    try:
        for i in range(2):
            servers.append(await remote.serve(host=f"127.0.0.{i + 2}", token=TOKEN))
            node = SwarmNode(
                servers[i],
                token=TOKEN,
                seeds=[servers[0].url] if i else [],
                server_id=f"s{i + 1}",
                interval=ROUND,
                media_address=address,
            )
            await node.start()
            nodes.append(node)
        await wait_until(_everyone_knows(nodes, {"s1", "s2"}))
        owner, asker = nodes[0].streams, nodes[1].streams
        assert owner is not None and asker is not None
        a, b = await App.on(servers[0].url), await App.on(servers[1].url)
        try:
            send, producer = await a.producer("127.0.0.2")
            consumer, counter, sock = await b.consumer(producer.id)
            with Sender(send):
                await received(counter)
            sock.close()
            [far] = owner._pairs_out.values()
            [near] = asker._pairs_in.values()
            for pair in (far, near):
                assert pair.transport.srtp_parameters is not None
                assert pair.transport.tuple["localAddress"] == address

            before = await _transports(a)
            _, second = await a.producer("127.0.0.2")
            plain = {"op": "open", "producerId": second.id, "data": False, "from": "s2"}
            plain |= {"pipeId": "p", "pairId": "q", "ip": address, "port": 9}
            url = route_url(servers[0].url, "streams")
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with (
                aiohttp.ClientSession(headers=auth) as http,
                http.post(url, json=plain) as response,
            ):
                error = (await response.json())["error"]
            assert error == (
                f"pipe pair q: SRTP is required between {address} and {address} (not both loopback)"
            )
            assert await _transports(a) == before + 1  # the second producer's own only
            assert "q" not in owner._pairs_out and not consumer.closed
        finally:
            await a.client.aclose()
            await b.client.aclose()
    finally:
        for node in nodes:
            await node.aclose()
        for server in servers:
            await server.close()


async def test_a_worker_started_before_the_streams_is_not_followed() -> None:
    async with await remote.serve(host="127.0.0.2", token=TOKEN) as server:
        early = await App.on(server.url)
        try:
            async with SwarmNode(server, token=TOKEN, interval=ROUND) as node:
                assert node.streams is not None
                node.streams.start()  # twice: once
                transport = await early.router.create_direct_transport()
                with pytest.raises(Exception, match="not found"):
                    await transport.consume(
                        producer_id="x", rtp_capabilities=early.router.rtp_capabilities
                    )
        finally:
            await early.client.aclose()
    with pytest.raises(ValueError, match="idle"):
        SwarmStreams(server, server_id="s", token=TOKEN, members=dict, idle=-1)


async def test_two_streams_of_one_router_brought_at_once_share_one_pair(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """Two producers of one router of s1 consumed at once into one router of s2: the
    second open waits for the first's pair and rides on it (one pair, two pipes)."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    a, b = await App.on(servers[0].url), await App.on(servers[1].url)
    sinks = [await sink(b.router) for _ in range(2)]
    try:
        producers = [(await a.producer("127.0.0.2"))[1] for _ in range(2)]
        consumers = await asyncio.gather(
            *(
                transport.consume(producer_id=p.id, rtp_capabilities=b.router.rtp_capabilities)
                for (transport, _, _), p in zip(sinks, producers, strict=True)
            )
        )
        assert [c.producer_id for c in consumers] == [p.id for p in producers]
        streams = nodes[1].streams
        assert streams is not None
        assert len(streams._pairs_in) == 1 and len(streams._in) == 2
        assert streams._pair_opens == {} and len(streams._pair_locks) == 1
    finally:
        for _, _, sock in sinks:
            sock.close()
        await a.client.aclose()
        await b.client.aclose()


Post = Callable[[dict[str, Any]], Awaitable[Any]]


@contextlib.asynccontextmanager
async def _lone_node(**options: Any) -> AsyncIterator[tuple[SwarmStreams, App, Post]]:
    """s1 alone (on 127.0.0.2; ``options`` for its SwarmNode), an app's router there,
    and ``post``, which sends a message to s1's streams route as a peer would."""
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as s1,
        SwarmNode(s1, token=TOKEN, server_id="s1", interval=ROUND, **options) as n1,
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
    ):
        assert n1.streams is not None
        url = route_url(s1.url, "streams")

        async def post(message: dict[str, Any]) -> Any:
            async with http.post(url, json=message) as response:
                return await response.json()

        a = await App.on(s1.url)
        try:
            yield n1.streams, a, post
        finally:
            await a.client.aclose()


async def test_one_pipe_id_opened_twice_at_once_is_opened_once() -> None:
    """A faulty or hostile peer opening one pipe id on two pairs at once (the worker held
    so that the first open waits there): one is opened, the other refused; closing the
    pairs leaves nothing."""
    async with _lone_node() as (streams, a, post):
        _, producer = await a.producer("127.0.0.2")
        # (from a member: this server itself will do)
        opening = {"op": "open", "producerId": producer.id, "from": "s1"}
        for pipe_id, pair_id in (("a", "q1"), ("b", "q2")):
            pair = {"pipeId": pipe_id, "pairId": pair_id, "ip": "127.0.0.1", "port": 9}
            assert (await post(opening | pair))["kind"] == "audio"
        (worker,) = a.client.workers
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            both = asyncio.gather(
                *(post(opening | {"pipeId": "x", "pairId": q}) for q in ("q1", "q2"))
            )
            await asyncio.sleep(0.3)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        answers = await both
        assert sorted(("kind" in answer, answer.get("error")) for answer in answers) == [
            (False, "pipe x is open already"),
            (True, None),
        ]
        assert sorted(streams._out) == ["a", "b", "x"]
        for pair_id in ("q1", "q2"):
            assert await post({"op": "closepair", "pairId": pair_id}) == {}
        assert streams._out == {} and streams._pairs_out == {}


async def test_one_new_pair_id_opened_twice_at_once_is_opened_once() -> None:
    """A faulty or hostile peer opening two streams on one new pair id at once (the
    worker held so that the first open waits there): the second is refused, so no
    pair is made that nothing would close; closing the pair leaves nothing."""
    async with _lone_node() as (streams, a, post):
        _, producer = await a.producer("127.0.0.2")
        _, other = await a.producer("127.0.0.2")
        before = await _transports(a)
        new_pair = {"op": "open", "from": "s1", "pairId": "q", "ip": "127.0.0.1", "port": 9}
        (worker,) = a.client.workers
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            first = asyncio.ensure_future(
                post(new_pair | {"pipeId": "a", "producerId": producer.id})
            )
            await wait_until(lambda: "q" in streams._pairs_opening)
            second = await post(new_pair | {"pipeId": "b", "producerId": other.id})
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert second == {"error": "pipe pair q is being opened already"}
        assert (await first)["kind"] == "audio"
        assert list(streams._out) == ["a"] and list(streams._pairs_out) == ["q"]
        assert await _transports(a) == before + 1
        assert await post({"op": "closepair", "pairId": "q"}) == {}
        assert streams._out == {} and streams._pairs_out == {}
        assert await _transports(a) == before


async def test_a_pipe_or_pair_closed_by_its_peer_while_it_opens_is_not_kept() -> None:
    """A peer that gave up on an open (its call timed out) says 'close' and 'closepair'
    while the open still runs here (the worker held, SIGSTOP): the open fails once the
    worker goes on, and what it made is closed, a new pair with its stream, and on a
    pair that stays only the stream."""
    async with _lone_node() as (streams, a, post):
        (worker,) = a.client.workers
        _, producer = await a.producer("127.0.0.2")
        before = await _transports(a)
        opening = {"op": "open", "producerId": producer.id, "from": "s1"}
        new_pair = {"pipeId": "x", "pairId": "q", "ip": "127.0.0.1", "port": 9}
        close_x = {"op": "close", "pipeId": "x"}
        cases = (
            (new_pair, [close_x, {"op": "closepair", "pairId": "q"}], "pipe pair q was"),
            ({"pipeId": "z", "pairId": "r"}, [{"op": "close", "pipeId": "z"}], "pipe z was"),
        )
        for pair, said, error in cases:
            if pair["pairId"] == "r":  # a pair carrying a stream already
                carried = {"pipeId": "y", "pairId": "r", "ip": "127.0.0.1", "port": 9}
                assert (await post(opening | carried))["kind"] == "audio"
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                answer = asyncio.ensure_future(post(opening | pair))
                await wait_until(lambda p=pair["pipeId"]: p in streams._opening)
                for notice in said:
                    assert await post(notice) == {}
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            assert (await answer)["error"].startswith(error)
            assert streams._cancelled == set() and not streams._pairs_opening
        assert list(streams._out) == ["y"] and list(streams._pairs_out) == ["r"]
        assert await _transports(a) == before + 1  # the pair r
        assert await post({"op": "closepair", "pairId": "r"}) == {}
        assert await _transports(a) == before and not streams._out


async def test_an_open_from_a_server_waits_for_it_to_join_then_not_longer() -> None:
    """A peer may know this server a gossip round before this server knows it: its open
    waits for it to join (at most find_timeout), and the pipe closes with its leave. A
    server that does not join is refused: a pipe to it would never close."""
    async with (
        _lone_node(find_timeout=5) as (streams, a, post),
        await remote.serve(host="127.0.0.3", token=TOKEN) as s2,
    ):
        _, producer = await a.producer("127.0.0.2")
        opening = {"op": "open", "producerId": producer.id, "from": "s2", "pairId": "q"}
        opening |= {"pipeId": "x", "ip": "127.0.0.1", "port": 9}
        answer = asyncio.ensure_future(post(opening))
        await asyncio.sleep(ROUND * 3)
        assert not answer.done() and not streams._out
        async with SwarmNode(
            s2, token=TOKEN, seeds=[streams.server.url], server_id="s2", interval=ROUND
        ) as n2:
            assert (await answer)["kind"] == "audio"
            assert list(streams._out) == ["x"]
            # s2 leaves while a stream on a new pair opens here (the worker held):
            # the pipes close with the leave, and that one once it is made.
            (worker,) = a.client.workers
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                second = asyncio.ensure_future(post(opening | {"pipeId": "x2", "pairId": "q2"}))
                await wait_until(lambda: "x2" in streams._opening)
                await n2.aclose()
                await wait_until(lambda: not streams._out and not streams._pairs_out)
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            # (the new pair's making, cancelled by the leave, fails first)
            error = "pipe pair q2 was closed, or server s2 left, meanwhile"
            assert (await second)["error"] == error
            assert not streams._out and not streams._pairs_out
        streams.find_timeout = 0.2
        refused = await post(opening | {"from": "s9"})
        assert refused == {"error": "server s9 is not in this swarm"}


async def test_streams_route_refuses_and_answers(
    trio: tuple[list[RemoteServer], list[SwarmNode]], caplog: pytest.LogCaptureFixture
) -> None:
    servers, nodes = trio
    url = route_url(servers[0].url, "streams")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(url) as response:
            assert response.status == 405
        async with http.post(url, data=b'{"op": 1}') as response:
            assert response.status == 400 and "invalid 'op'" in await response.text()
        async with http.post(url, data=b'{"op": "find", "producerId": "nope"}') as response:
            assert await response.json() == {"found": False}
        opening = {"op": "open", "producerId": "nope", "pipeId": "p", "from": "s2", "pairId": "q"}
        opening |= {"ip": "127.0.0.1", "port": 9}
        nodes[0].streams.find_timeout = 0.2  # type: ignore[union-attr]
        async with http.post(url, json=opening | {"from": "s9"}) as response:
            assert await response.json() == {"error": "server s9 is not in this swarm"}
        async with http.post(url, json=opening) as response:
            assert await response.json() == {"error": "no producer nope here"}
        async with http.post(url, json=opening | {"data": True}) as response:
            assert await response.json() == {"error": "no data producer nope here"}
        for op in ("close", "pause", "resume"):  # of no pipe: nothing to do
            async with http.post(url, json={"op": op, "pipeId": "p"}) as response:
                assert await response.json() == {}
        # A producer that is here, but an end that cannot be connected to: nothing left.
        a = await App.on(servers[0].url)
        try:
            _, producer = await a.producer("127.0.0.2")
            before = await _transports(a)
            bad = opening | {"producerId": producer.id, "srtpParameters": {}}
            async with http.post(url, json=bad) as response:
                assert "srtp" in (await response.json())["error"].lower()
            assert await _transports(a) == before
            # Opened for s2 (whose notices s2 ignores: it opened none); the pipe closes
            # when this node leaves.
            async with http.post(url, json=opening | {"producerId": producer.id}) as response:
                answer = await response.json()
            assert answer["kind"] == "audio" and answer["srtpParameters"] is None
            assert await _transports(a) == before + 1
            # A second stream of that router on that pair: no transport more.
            _, second = await a.producer("127.0.0.2")
            more = {"producerId": second.id, "pipeId": "p2", "pairId": "q", "from": "s2"}
            async with http.post(url, json={"op": "open"} | more) as response:
                assert (await response.json())["kind"] == "audio"
            assert await _transports(a) == before + 2  # its own sending transport only
            # A pipe id in use already: refused, the first pipe untouched.
            async with http.post(url, json={"op": "open"} | more) as response:
                assert await response.json() == {"error": "pipe p2 is open already"}
            # Not of a pair this server has, nor of another router's producer.
            unknown = {"op": "open"} | more | {"pipeId": "p3", "pairId": "nope"}
            async with http.post(url, json=unknown) as response:
                assert await response.json() == {"error": "no pipe pair nope here"}
            other = await (await a.client.create_worker()).create_router(media_codecs=MEDIA_CODECS)
            _, elsewhere = await App(a.client, other).producer("127.0.0.2")
            wrong = {"op": "open"} | more | {"pipeId": "p4", "producerId": elsewhere.id}
            async with http.post(url, json=wrong) as response:
                assert "is not of" in (await response.json())["error"]
            async with http.post(url, json={"op": "closepair", "pairId": "nope"}) as response:
                assert await response.json() == {}
            # 'closepair' closes the pair and its streams here.
            async with http.post(url, json={"op": "closepair", "pairId": "q"}) as response:
                assert await response.json() == {}
            assert await _transports(a) == before + 1  # the second producer's own
            # A pair whose first consume fails leaves nothing (a fault made by hand: a
            # producer closing between the check and the consume, a race).
            real = PipeTransport.consume

            async def failing(self: Any, **kwargs: Any) -> Any:
                raise RuntimeError("closed meanwhile")

            PipeTransport.consume = failing  # type: ignore[method-assign]
            try:
                async with http.post(url, json=opening | {"producerId": producer.id}) as r:
                    assert await r.json() == {"error": "closed meanwhile"}
            finally:
                PipeTransport.consume = real  # type: ignore[method-assign]
            assert await _transports(a) == before + 1
            async with http.post(url, json=opening | {"producerId": producer.id}) as r:
                assert (await r.json())["kind"] == "audio"
            # The same fault on a pair that carries a stream: the pair stays for it.
            PipeTransport.consume = failing  # type: ignore[method-assign]
            try:
                async with http.post(url, json={"op": "open"} | more | {"pipeId": "p5"}) as r:
                    assert await r.json() == {"error": "closed meanwhile"}
            finally:
                PipeTransport.consume = real  # type: ignore[method-assign]
            assert await _transports(a) == before + 2
            async with http.post(url, json={"op": "open"} | more | {"pipeId": "p6"}) as r:
                assert (await r.json())["kind"] == "audio"
            await producer.pause()
            await nodes[0].aclose()
            assert await _transports(a) == before + 1  # the pair went, not what A made
            assert "telling server" not in caplog.text
        finally:
            await a.client.aclose()


class _LyingPeer:
    """A server of the swarm (it has the token) whose streams route misbehaves: it says
    it has every producer, then answers 'open' with ``answer``; what it is told is
    kept."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.told: list[dict[str, Any]] = []
        self.runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    async def _streams(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        message = await request.json()
        if message["op"] == "find":
            return aiohttp.web.json_response({"found": True, "routerId": "theirs"})
        if message["op"] == "open":
            if isinstance(self.answer, int):
                return aiohttp.web.Response(status=self.answer)
            return aiohttp.web.Response(body=self.answer, content_type="application/json")
        self.told.append(message)
        return aiohttp.web.Response(status=500)  # and it fails what it is told

    async def __aenter__(self) -> _LyingPeer:
        app = aiohttp.web.Application()
        app.router.add_post("/streams", self._streams)
        self.runner = aiohttp.web.AppRunner(app)
        await self.runner.setup()
        site = aiohttp.web.TCPSite(self.runner, "127.0.0.9", 0)
        await site.start()
        self.url = f"ws://127.0.0.9:{self.runner.addresses[0][1]}/"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b'{"error": "boom"}', "server liar: boom"),
        (b'{"ip": "127.0.0.9"}', "could not pipe it here: KeyError"),
        (b"[]", "server liar: not an answer"),
        (503, "server liar: HTTP 503"),
    ],
)
async def test_a_peer_that_cannot_pipe_fails_the_consume_and_leaves_nothing(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
    caplog: pytest.LogCaptureFixture,
    answer: Any,
    error: str,
) -> None:
    servers, nodes = trio
    async with _LyingPeer(answer) as liar:
        # The liar joins through gossip, as any holder of the token can.
        late = entry("liar", generation=2**40, controlUrl=liar.url, mediaAddress="127.0.0.9")
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(route_url(servers[1].url), data=encode_gossip([late])) as r:
                assert r.status == 200
        assert "liar" in nodes[1].members
        b = await App.on(servers[1].url)
        try:
            before = await _transports(b)
            transport, _, sock = await sink(b.router)
            with pytest.raises(Exception, match=error):
                await transport.consume(
                    producer_id="anything", rtp_capabilities=b.router.rtp_capabilities
                )
            sock.close()
            # The pipe transport made for it is closed, and the liar told so.
            assert await _transports(b) == before + 1
            await wait_until(lambda: bool(liar.told))
            assert liar.told[0]["op"] == "close"
            # Nothing kept for the key of the pair that was never made.
            streams = nodes[1].streams
            assert streams is not None and streams._pair_locks == streams._pair_opens == {}
        finally:
            await b.client.aclose()
    await wait_until(lambda: "telling server liar of close failed" in caplog.text)


class _EmptyPeer(_LyingPeer):
    """A server of the swarm that has no producer: it answers every find no, keeps no
    directory entry (as a server of an older version, or one that lost them), and
    records what it is asked and told."""

    def __init__(self) -> None:
        super().__init__(None)
        self.messages: list[dict[str, Any]] = []
        self.beating: asyncio.Future[None] | None = None

    async def join(self, server: RemoteServer) -> None:
        """Join the swarm through ``server``'s gossip, as any holder of the token can, and
        keep beating there every round (else the swarm drops it as silent after
        fail_after, half a second here, mid-test on a slow machine)."""
        await self._beat(server, 1)
        self.beating = asyncio.ensure_future(self._beat_on(server))

    async def join_trio(self, trio: tuple[list[RemoteServer], list[SwarmNode]]) -> set[str]:
        """Join the trio's swarm through s2, until every node knows it: the members."""
        servers, nodes = trio
        await self.join(servers[1])
        members = {"s1", "s2", "s3", "empty"}
        await wait_until(_everyone_knows(nodes, members))
        return members

    async def _beat(self, server: RemoteServer, beat: int) -> None:
        late = entry(
            "empty", generation=2**40, beat=beat, controlUrl=self.url, mediaAddress="127.0.0.9"
        )
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with http.post(route_url(server.url), data=encode_gossip([late])) as r:
                assert r.status == 200

    async def _beat_on(self, server: RemoteServer) -> None:
        beat = 1
        while True:
            await asyncio.sleep(ROUND)
            beat += 1
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await self._beat(server, beat)

    async def __aexit__(self, *exc: object) -> None:
        if self.beating is not None:
            self.beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.beating
        await super().__aexit__(*exc)

    async def _streams(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        message = await request.json()
        self.messages.append(message)
        return aiohttp.web.json_response({"found": False} if message["op"] == "find" else {})


def _record_finds(streams: Any, monkeypatch: pytest.MonkeyPatch) -> list[set[str]]:
    """The peers each find of ``streams`` asks, as it asks them. (What a peer receives
    would not do: a find asks every peer at once and drops the others' requests once
    one says yes, so a slower peer may never see its own.)"""
    asked: list[set[str]] = []
    find_on = streams._find_on

    async def recording(records: list[ServerRecord], producer_id: str, data: bool) -> Any:
        asked.append({r["id"] for r in records})
        return await find_on(records, producer_id, data)

    monkeypatch.setattr(streams, "_find_on", recording)
    return asked


@pytest.fixture
def no_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lookups without the directory (no producer has a directory server): what the
    memory of where producers were found does by itself."""
    monkeypatch.setattr("mafalda.swarm.streams.directory_server", lambda *_: None)


async def test_a_producer_found_once_is_asked_for_where_it_was(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
    no_directory: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer a find found a producer on is asked alone next time (a router of this
    server consuming it after another): the other peers are not asked again. When that
    peer says no (the producer closed), every peer is asked."""
    servers, nodes = trio
    async with _EmptyPeer() as empty:
        await empty.join(servers[1])
        assert "empty" in nodes[1].members
        asked = _record_finds(nodes[1].streams, monkeypatch)
        a = await App.on(servers[0].url)
        apps = [await App.on(servers[1].url) for _ in range(2)]
        try:
            _, producer = await a.producer("127.0.0.2")
            for app in apps:  # two routers of s2: a pipe in each
                consumer, _, sock = await app.consumer(producer.id)
                sock.close()
                assert consumer.producer_id == producer.id
            assert asked == [{"s1", "s3", "empty"}, {"s1"}]
            producer.close()
            third = await App.on(servers[1].url)
            transport, _, sock = await sink(third.router)
            with pytest.raises(Exception, match="not found"):
                await transport.consume(
                    producer_id=producer.id, rtp_capabilities=third.router.rtp_capabilities
                )
            sock.close()
            assert asked[2:] == [{"s1"}, {"s3", "empty"}]  # s1 first, then the others
            await third.client.aclose()
        finally:
            await a.client.aclose()
            for app in apps:
                await app.client.aclose()


async def test_where_producers_were_found_is_remembered_up_to_a_bound(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
    monkeypatch: pytest.MonkeyPatch,
    no_directory: None,
) -> None:
    """The oldest producer's peer is forgotten past the bound (lowered to 1 here: the
    real one, 4096, would take thousands of producers): its next lookup asks everyone."""
    monkeypatch.setattr("mafalda.swarm.streams._MAX_FOUND", 1)
    servers, nodes = trio
    async with _EmptyPeer() as empty:
        await empty.join(servers[1])
        asked = _record_finds(nodes[1].streams, monkeypatch)
        a = await App.on(servers[0].url)
        apps = [await App.on(servers[1].url) for _ in range(2)]
        socks = []
        try:
            first, second = [(await a.producer("127.0.0.2"))[1] for _ in range(2)]
            for app, producer in ((apps[0], first), (apps[0], second), (apps[1], first)):
                _, _, sock = await app.consumer(producer.id)
                socks.append(sock)
            # The first's peer was forgotten for the second's: everyone asked each time.
            assert asked == [{"s1", "s3", "empty"}] * 3
            streams = nodes[1].streams
            assert streams is not None and list(streams._found) == [(first.id, False)]
        finally:
            for sock in socks:
                sock.close()
            await a.client.aclose()
            for app in apps:
                await app.client.aclose()


async def _producer_listed_at(app: App, wanted: str, members: set[str]) -> Any:
    """A producer of ``app`` whose directory server among ``members`` is ``wanted``
    (producer ids are the worker's: a few tries, the others closed)."""
    for _ in range(60):
        send, producer = await app.producer("127.0.0.2")
        if directory_server(producer.id, members) == wanted:
            return producer
        send.close()
    raise AssertionError(f"no producer listed at {wanted} in 60 tries")


async def test_a_lookup_asks_the_directory_server_not_every_peer(
    trio: tuple[list[RemoteServer], list[SwarmNode]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer of s1 consumed through s2 is found through its directory server, where
    that is s3, s1 (its home) or s2 (the asker): the fourth peer is never asked. Its
    close takes its entry back. A directory server that lost the entry (the fourth
    peer keeps none) costs a lookup of every peer, and the consume still works."""
    servers, nodes = trio
    async with _EmptyPeer() as empty:
        members = await empty.join_trio(trio)
        asked = _record_finds(nodes[1].streams, monkeypatch)
        a = await App.on(servers[0].url)
        b = await App.on(servers[1].url)
        socks = []
        try:
            for listed_at, node in (("s3", nodes[2]), ("s1", nodes[0]), ("s2", nodes[1])):
                producer = await _producer_listed_at(a, listed_at, members)
                directory = node.streams.directory  # type: ignore[union-attr]
                key = (producer.id, False)
                await wait_until(lambda key=key, d=directory: d.get(key) == "s1")
                consumer, _, sock = await b.consumer(producer.id)
                socks.append(sock)
                assert consumer.producer_id == producer.id
                producer.close()
                await wait_until(lambda key=key, d=directory: d.get(key) is None)
            assert asked == [{"s1"}] * 3  # the home alone, named by the directory server
            # Told of the producers it is the directory server of (the tries), never asked.
            assert {m["op"] for m in empty.messages} <= {"announce", "forget"}
            lost = await _producer_listed_at(a, "empty", members)

            def about_lost() -> list[str]:
                return [m["op"] for m in empty.messages if m["producerId"] == lost.id]

            await wait_until(lambda: about_lost() == ["announce"])
            consumer, _, sock = await b.consumer(lost.id)
            socks.append(sock)
            assert consumer.producer_id == lost.id
            assert about_lost()[:2] == ["announce", "locate"]
            assert asked[3:] == [{"s1", "s3", "empty"}]
        finally:
            for sock in socks:
                sock.close()
            await a.client.aclose()
            await b.client.aclose()


async def test_a_joining_server_takes_the_entries_it_wins(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """A producer whose directory server becomes a server that joins later: its home
    tells the newcomer, and takes the entry back from the old directory server. When
    the home leaves the swarm, its directory servers forget its entries."""
    servers, nodes = trio
    a = await App.on(servers[0].url)
    try:
        before, after = {"s1", "s2", "s3"}, {"s1", "s2", "s3", "empty"}
        moving = staying = None
        for _ in range(100):
            send, candidate = await a.producer("127.0.0.2")
            old, new = directory_server(candidate.id, before), directory_server(candidate.id, after)
            if moving is None and new == "empty" and old != "s1":
                moving = candidate
            elif staying is None and old == new == "s3":
                staying = candidate
            else:
                send.close()
        assert moving is not None and staying is not None, "no producers to test in 100 tries"
        old = directory_server(moving.id, before)
        assert old is not None
        old_directory = nodes[int(old[1]) - 1].streams.directory  # type: ignore[union-attr]
        s3_directory = nodes[2].streams.directory  # type: ignore[union-attr]
        await wait_until(lambda: old_directory.get((moving.id, False)) == "s1")
        await wait_until(lambda: s3_directory.get((staying.id, False)) == "s1")
        async with _EmptyPeer() as empty:
            await empty.join(servers[0])
            told = {"op": "announce", "producerId": moving.id, "data": False, "at": "s1"}
            await wait_until(lambda: told in empty.messages)
            await wait_until(lambda: old_directory.get((moving.id, False)) is None)
            assert s3_directory.get((staying.id, False)) == "s1"
        # The newcomer went silent: dropped by the swarm, its entries are listed again
        # where they were.
        await wait_until(lambda: old_directory.get((moving.id, False)) == "s1")
        await nodes[0].aclose()  # s1 leaves the swarm, its producers still open
        await wait_until(lambda: s3_directory.get((staying.id, False)) is None)
    finally:
        await a.client.aclose()


class _OldPeer(_EmptyPeer):
    """A server of an older version: it refuses the directory's messages (HTTP 400, as
    for any op it does not know)."""

    async def _streams(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        message = await request.json()
        self.messages.append(message)
        if message["op"] == "find":
            return aiohttp.web.json_response({"found": False})
        return aiohttp.web.Response(status=400, text="streams: invalid 'op'")


async def test_a_directory_server_of_an_older_version_costs_a_lookup_of_everyone(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A producer whose directory server refuses the directory (an older version): its
    announce fails (logged), the lookup's locate fails, every peer is asked, and the
    consume works."""
    servers, nodes = trio
    async with _OldPeer() as old:
        members = await old.join_trio(trio)
        finds = _record_finds(nodes[1].streams, monkeypatch)
        a = await App.on(servers[0].url)
        b = await App.on(servers[1].url)
        try:
            producer = await _producer_listed_at(a, "empty", members)
            await wait_until(lambda: "telling server empty of announce failed" in caplog.text)
            consumer, _, sock = await b.consumer(producer.id)
            sock.close()
            assert consumer.producer_id == producer.id
            asked = [m["op"] for m in old.messages if m["producerId"] == producer.id]
            assert asked[:2] == ["announce", "locate"]
            assert finds == [{"s1", "s3", "empty"}]
        finally:
            await a.client.aclose()
            await b.client.aclose()


async def test_a_directory_takes_announcements_from_members_only(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """An announce naming a server the swarm does not have is dropped: a lookup could
    not go there anyway, and it would take the place of a real entry."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    directory = nodes[0].streams.directory  # type: ignore[union-attr]
    async with aiohttp.ClientSession(headers=auth) as http:
        for home in ("stranger", "s2"):
            told = {"op": "announce", "producerId": "p", "data": False, "at": home}
            async with http.post(route_url(servers[0].url, "streams"), json=told) as r:
                assert r.status == 200
        async with http.post(
            route_url(servers[0].url, "streams"), json={"op": "locate", "producerId": "p"}
        ) as r:
            assert await r.json() == {"at": "s2"}
    assert len(directory) == 1


async def test_notices_after_the_streams_stopped_or_failing_oddly(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A notice that fails in an unexpected way is logged and the next ones to that
    peer still go; a server not in the swarm is told nothing; once stopped, a server's
    producers closing tell no one."""
    servers, nodes = trio
    streams = nodes[0].streams
    assert streams is not None
    sent: list[str] = []
    post = streams._post

    async def odd_once(record: ServerRecord, message: dict[str, Any]) -> dict[str, Any]:
        if not sent:
            sent.append("odd")
            raise RuntimeError("odd")
        sent.append(message["pipeId"])
        return await post(record, message)

    monkeypatch.setattr(streams, "_post", odd_once)
    streams._notify("s2", {"op": "close", "pipeId": "first"})
    streams._notify("s2", {"op": "close", "pipeId": "second"})
    await wait_until(lambda: sent == ["odd", "second"])
    assert "telling server s2 of close failed" in caplog.text
    # A server not in the swarm (it left: its pipes closed with it) is told nothing.
    streams._notify("s9", {"op": "close", "pipeId": "gone"})
    assert list(streams._senders) == ["s2"]
    await nodes[0].aclose()
    streams._notify("s2", {"op": "close", "pipeId": "late"})
    assert streams._senders == {} and streams._queues == {}


async def test_an_id_given_to_two_producers_of_a_server_stays_listed_with_the_second(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """Two apps of s1 give their producers one id (each router has its own id space):
    the first one's close does not take back the entry the second still needs, and a
    consume through s2 finds the second."""
    servers, nodes = trio
    members = {"s1", "s2", "s3"}
    await wait_until(_everyone_knows(nodes, members))
    shared = next(
        i for i in (str(uuid.uuid4()) for _ in range(200)) if directory_server(i, members) == "s3"
    )
    apps = [await App.on(servers[0].url) for _ in range(2)]
    b = await App.on(servers[1].url)
    try:
        producers = []
        for app in apps:
            send = await app.router.create_plain_transport(
                listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
            )
            producers.append(await send.produce(id=shared, kind="audio", rtp_parameters=OPUS_RTP))
        directory = nodes[2].streams.directory  # type: ignore[union-attr]
        await wait_until(lambda: directory.get((shared, False)) == "s1")
        producers[0].close()
        await asyncio.sleep(5 * ROUND)  # a forget would have arrived by now
        assert directory.get((shared, False)) == "s1"
        consumer, _, sock = await b.consumer(shared)
        sock.close()
        assert consumer.producer_id == shared
        producers[1].close()
        await wait_until(lambda: directory.get((shared, False)) is None)
    finally:
        for app in [*apps, b]:
            await app.client.aclose()


# -- the Monitor over a swarm (mafalda.monitor.swarm) --------------------------------------


async def test_monitor_reads_a_swarm_through_any_server(
    trio: tuple[list[RemoteServer], list[SwarmNode]], caplog: pytest.LogCaptureFixture
) -> None:
    """The table from one server, each server's report from itself: s1 serves reports
    (sampled once per interval, whoever asks), s2 and s3 run no probe (their records
    show, unreported, said once)."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    probe = Probe()
    probe.start()
    stats = StatsRoute(probe, servers[0], server_id="s1", interval=60)
    stats.start()
    app = await App.on(servers[0].url)
    try:
        first, again = await asyncio.gather(stats.report(), stats.report())
        assert first is again  # one sample for both
        assert await stats.report() is first  # and until the interval is over
        async with await monitor.connect(servers[2].url, token=TOKEN, interval=0.1) as mon:
            assert isinstance(mon, SwarmMonitor)
            view = await mon.view()
            by_id = {s["id"]: s for s in view["servers"]}
            assert set(by_id) == {"s1", "s2", "s3"}
            assert by_id["s1"]["reported"] and not by_id["s2"]["reported"]
            assert app.router.id in {r["id"] for r in by_id["s1"]["routers"]}
            views = mon.views()
            assert len((await anext(views))["servers"]) == 3
            # The live page over a swarm, as over Redis.
            async with MonitorWeb(mon, port=0) as page:
                async with aiohttp.ClientSession() as http:
                    async with http.get(page.url + "view") as response:
                        assert response.status == 200
                        assert len((await response.json())["servers"]) == 3
            # A server going away leaves the view; while none answers, no view.
            await nodes[1].aclose()
            await wait_until(
                lambda: _view_has(mon, {"s1", "s3"}),
                timeout=5,
            )
            await views.aclose()
        assert caplog.text.count("no report from server s2: HTTP 404") == 1
        closed = await remote.serve(host="127.0.0.5", token=TOKEN)
        dead = closed.url
        await closed.close()
        async with (
            SwarmMonitor([dead], token=TOKEN) as nobody,
            MonitorWeb(nobody, port=0) as page,
            aiohttp.ClientSession() as http,
            http.get(page.url + "view") as response,
        ):
            assert response.status == 503
            assert (await response.text()).startswith(
                "cannot read the cluster: no server of the swarm answered"
            )
        with pytest.raises(ValueError, match="token"):
            await monitor.connect(servers[0].url)
        with pytest.raises(PermissionError):
            await monitor.connect(servers[0].url, token="nope")
        with pytest.raises(TypeError, match="not one string"):
            SwarmMonitor(servers[0].url, token=TOKEN)
        with pytest.raises(ValueError, match="at least one"):
            SwarmMonitor([], token=TOKEN)
        with pytest.raises(ValueError, match="interval"):
            SwarmMonitor([servers[0].url], token=TOKEN, interval=0)
        with pytest.raises(ValueError, match="interval"):
            StatsRoute(probe, servers[0], server_id="s1", interval=0)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession(headers=auth) as http:
            async with http.post(route_url(servers[0].url, "stats")) as response:
                assert response.status == 405
    finally:
        stats.stop()
        probe.stop()
        await app.client.aclose()


async def _view_has(mon: SwarmMonitor, ids: set[str]) -> bool:
    return {s["id"] for s in (await mon.view())["servers"]} == ids


async def test_monitor_command_shows_a_swarm_and_its_streams(
    swarm_servers: list[Server],
) -> None:
    """`mafalda monitor ws://... --once --json` on three `mafalda serve --swarm`
    processes: every server reported, and a stream of s1 consumed through s2 is a link
    s1 -> s2 carrying one stream."""
    s1, s2, s3 = swarm_servers
    a, b = await App.on(s1.url), await App.on(s2.url)
    try:
        _, producer = await a.producer("127.0.0.2")
        _, _, sock = await b.consumer(producer.id)
        sock.close()

        async def view() -> dict[str, Any]:
            proc = await asyncio.create_subprocess_exec(
                *[sys.executable, "-m", "mafalda.cli", "monitor", s3.url, "--once", "--json"],
                stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "MAFALDA_REMOTE_TOKEN": TOKEN},
            )
            out, _ = await proc.communicate()
            assert proc.returncode == 0
            result: dict[str, Any] = json.loads(out)
            return result

        async def linked() -> bool:
            found = await view()
            servers = {s["id"]: s for s in found["servers"]}
            if set(servers) != {"s1", "s2", "s3"} or not all(
                s["reported"] for s in servers.values()
            ):
                return False
            links = [(k["a"]["server"], (k["b"] or {}).get("server"), k) for k in found["links"]]
            return any({x, y} == {"s1", "s2"} and k["aToB"] + k["bToA"] == 1 for x, y, k in links)

        await wait_until(linked, timeout=30)
    finally:
        for app in (a, b):
            await app.client.aclose()
    no_token = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "mafalda.cli", "monitor", s3.url, "--once"],
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != "MAFALDA_REMOTE_TOKEN"},
    )
    _, err = await no_token.communicate()
    assert no_token.returncode == 2 and b"token" in err


async def test_an_unused_copy_from_another_router_here_is_collected() -> None:
    """Two apps on one server: the copy of one's producer in the other's router
    (mediasoup's pipe_to_router()) is collected ``stream_idle`` seconds after its last
    consumer, as a copy from another server is; a consumer back within it reuses it;
    after, a consume makes a new one."""
    idle = 0.3
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as s1,
        SwarmNode(s1, token=TOKEN, server_id="s1", interval=ROUND, stream_idle=idle) as n1,
    ):
        assert n1.streams is not None
        in1 = n1.streams._in
        a, b = await App.on(s1.url), await App.on(s1.url)
        try:
            _, producer = await a.producer("127.0.0.2")
            consumer, _, sock = await b.consumer(producer.id)
            assert consumer.producer_id == producer.id
            [copy_id] = list(in1)
            copy = in1[copy_id].carrier
            consumer.close()
            await asyncio.sleep(idle / 3)
            again, _, sock2 = await b.consumer(producer.id)  # back in time: the same copy
            await asyncio.sleep(idle * 2)
            assert list(in1) == [copy_id] and not copy.closed  # in use: kept
            again.close()
            await wait_until(lambda: not in1, timeout=5)
            assert copy.closed and not n1.streams._copies and not n1.streams._carrying
            # Its pipe consumer in A's router went with it: A's router keeps nothing.
            dump = await a.router.dump()
            assert [e["values"] for e in dump["mapProducerIdConsumerIds"]] == [[]]
            third, _, sock3 = await b.consumer(producer.id)
            assert third.producer_id == producer.id and list(in1) != [copy_id]
            for s in (sock, sock2, sock3):
                s.close()
        finally:
            for app in (a, b):
                await app.client.aclose()


async def test_a_data_stream_from_another_router_here_takes_a_message_sent_at_once() -> None:
    """Two apps on one server, on two workers: a message A sends as soon as B's
    consume_data() of A's data producer returns (mediasoup's pipe_to_router() between
    their routers) reaches B. What makes it so is Router.pipe_to_router() returning once
    the new pair's SCTP association is up (tests/test_pipe_transport.py shows it, ten new
    pairs with a message sent at once); here the swarm's path adds the remote round trips,
    which on one host outlast the handshake anyway: this checks the path, not the wait."""
    async with _lone_node() as (streams, a, _):
        apps = [await App.on(streams.server.url) for _ in range(2)]
        try:
            data_producer = await (await a.router.create_direct_transport()).produce_data()
            for b in apps:
                sink_b = await b.router.create_direct_transport()
                data_consumer = await sink_b.consume_data(data_producer_id=data_producer.id)
                assert await _delivered(data_producer, data_consumer, "at once") == 51
        finally:
            for b in apps:
                await b.client.aclose()


async def test_a_data_copy_from_another_router_here_follows_its_pause() -> None:
    """Two apps on one server: B's consumer of A's data producer, on a copy made by
    mediasoup's pipe_to_router() (which, as Node's, carries no data producer's pause),
    has its pause state, as a copy from another server does: paused when the copy is
    made, then each change; a pause and a resume at once end resumed."""
    async with _lone_node() as (streams, a, _):
        b = await App.on(streams.server.url)
        try:
            data_producer = await (await a.router.create_direct_transport()).produce_data()
            await data_producer.pause()
            sink = await b.router.create_direct_transport()
            consumer = await sink.consume_data(data_producer_id=data_producer.id)
            (pipe,) = streams._in.values()
            assert consumer.data_producer_paused and pipe.carrier.paused
            for paused in (False, True, False):
                await (data_producer.pause() if paused else data_producer.resume())
                await wait_until(lambda paused=paused: consumer.data_producer_paused is paused)
            await data_producer.pause()
            await data_producer.resume()
            await wait_until(lambda: not streams._following)
            assert not pipe.carrier.paused and not consumer.data_producer_paused
            assert await _delivered(data_producer, consumer, "resumed") == 51
        finally:
            await b.client.aclose()


@contextlib.asynccontextmanager
async def _two_nodes(
    idle: float,
) -> AsyncIterator[tuple[RemoteServer, RemoteServer, SwarmNode, SwarmNode]]:
    """Servers s1 (127.0.0.2) and s2 (127.0.0.3) in one swarm, copies idle ``idle`` s."""
    async with (
        await remote.serve(host="127.0.0.2", token=TOKEN) as s1,
        await remote.serve(host="127.0.0.3", token=TOKEN) as s2,
        SwarmNode(s1, token=TOKEN, server_id="s1", interval=ROUND, stream_idle=idle) as n1,
        SwarmNode(
            s2, token=TOKEN, seeds=[s1.url], server_id="s2", interval=ROUND, stream_idle=idle
        ) as n2,
    ):
        await wait_until(_everyone_knows([n1, n2], {"s1", "s2"}))
        yield s1, s2, n1, n2


async def test_an_unused_copy_is_collected_after_stream_idle() -> None:
    """A copy with no consumer left closes its pipe ``stream_idle`` seconds later, on
    both servers; a consumer back within it reuses the pipe; a consume that failed
    after the pipe was made does not leave it."""
    idle = 0.3
    async with _two_nodes(idle) as (s1, s2, n1, n2):
        assert n1.streams is not None and n2.streams is not None
        out1, in2 = n1.streams._out, n2.streams._in
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            _, producer = await a.producer("127.0.0.2")
            consumer, _, sock = await b.consumer(producer.id)
            [pipe_id] = list(in2)
            # A second stream of A's router to B's: the same pipe pair.
            _, other = await a.producer("127.0.0.2")
            extra, _, sock4 = await b.consumer(other.id)
            assert len(in2) == 2 and len(n2.streams._pairs_in) == 1
            assert len(n1.streams._pairs_out) == 1
            extra.close()
            await wait_until(lambda: len(in2) == 1 and len(out1) == 1, timeout=5)
            assert len(n2.streams._pairs_in) == 1  # still carrying the first
            consumer.close()
            await asyncio.sleep(idle / 3)
            again, _, sock2 = await b.consumer(producer.id)  # back in time: the same pipe
            assert list(in2) == [pipe_id]
            await asyncio.sleep(idle * 2)
            assert list(in2) == [pipe_id]  # in use: kept
            again.close()
            await wait_until(lambda: not in2 and not out1, timeout=5)
            # The last stream gone, the pair goes on both sides.
            await wait_until(lambda: not n2.streams._pairs_in and not n1.streams._pairs_out)
            # A consume that fails once the copy is there (capabilities without opus).
            transport, _, sock3 = await sink(b.router)
            with pytest.raises(Exception, match="no compatible media codecs"):
                await transport.consume(
                    producer_id=producer.id, rtp_capabilities={"codecs": [], "headerExtensions": []}
                )
            assert len(in2) == 1
            await wait_until(lambda: not in2 and not out1, timeout=5)
            # An RTP observer's add_producer() brings it too, and keeps it while watched.
            observer = await b.router.create_audio_level_observer()
            await observer.add_producer(producer_id=producer.id)
            await asyncio.sleep(idle * 2)
            assert len(in2) == 1
            await observer.remove_producer(producer_id=producer.id)
            await wait_until(lambda: not in2 and not out1, timeout=5)
            await observer.add_producer(producer_id=producer.id)
            await asyncio.sleep(idle * 2)
            assert len(in2) == 1
            # A producer of s2's own is no copy: nothing to count.
            _, own = await b.producer("127.0.0.3")
            await observer.add_producer(producer_id=own.id)
            await observer.remove_producer(producer_id=own.id)
            assert len(in2) == 1
            observer.close()  # watching nothing any more
            await wait_until(lambda: not in2 and not out1, timeout=5)
            for s in (sock, sock2, sock3, sock4):
                s.close()
            with pytest.raises(ValueError, match="idle"):
                SwarmNode(s1, token=TOKEN, stream_idle=-1)
        finally:
            for app in (a, b):
                await app.client.aclose()


async def test_a_copy_made_again_after_an_own_producer_took_its_id_is_kept() -> None:
    """B's router on s2 holds a copy of A's producer P (s1); then B produces with id P
    itself (mediasoup lets an app choose its producer's id, and s2's worker does not
    have P) and closes it: the router no longer has P, so the next consume of P brings
    a second copy while the first is still there. The first copy, collected once
    unused, does not take the second one's place with it: consumers of P made after go
    on counting on the second copy, which stays while they do."""
    idle = 0.3
    async with _two_nodes(idle) as (s1, s2, n1, n2):
        assert n2.streams is not None
        in2, copies2 = n2.streams._in, n2.streams._copies
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            _, producer = await a.producer("127.0.0.2")
            sink_b = await b.router.create_direct_transport()
            caps = b.router.rtp_capabilities
            first = await sink_b.consume(producer_id=producer.id, rtp_capabilities=caps)
            [first_pipe] = list(in2.values())
            own = await sink_b.produce(id=producer.id, kind="audio", rtp_parameters=OPUS_RTP)
            own.close()
            second = await sink_b.consume(producer_id=producer.id, rtp_capabilities=caps)
            [second_pipe] = [p for p in in2.values() if p is not first_pipe]
            assert second.producer_id == producer.id
            first.close()
            await wait_until(lambda: list(in2.values()) == [second_pipe], timeout=5)
            assert list(copies2.values()) == [second_pipe]
            # A consumer of P made now counts on the second copy, which it keeps.
            third = await sink_b.consume(producer_id=producer.id, rtp_capabilities=caps)
            assert list(in2.values()) == [second_pipe] and second_pipe.users == 2
            second.close()
            await asyncio.sleep(idle * 2)
            assert list(in2.values()) == [second_pipe] and not third.closed
            third.close()
            await wait_until(lambda: not in2 and not copies2, timeout=5)
        finally:
            for app in (a, b):
                await app.client.aclose()


async def _delivered(data_producer: Any, data_consumer: Any, payload: str | bytes) -> int:
    """Send ``payload`` through ``data_producer``; ``data_consumer`` gets it within 5 s
    (its PPID returned: 51 for a string, 53 for bytes)."""
    got = asyncio.ensure_future(data_consumer.events.wait_for("message"))
    data_producer.send(payload)
    async with asyncio.timeout(5):
        message, ppid = await got
    assert bytes(message) == (payload.encode() if isinstance(payload, str) else payload)
    return int(ppid)


async def test_data_streams_between_servers(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """A data producer of an app on s1 consumed through s2 (direct transports, SCTP on
    the pipe): messages arrive, pause/resume and close reach the consumer, and two
    routers of s2 share it through mediasoup's pipe_to_router()."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    a, b, c = (
        await App.on(servers[0].url),
        await App.on(servers[1].url),
        await App.on(servers[1].url),
    )
    in2 = nodes[1].streams._in  # type: ignore[union-attr]
    try:
        source = await a.router.create_direct_transport()
        data_producer = await source.produce_data(label="chat", protocol="text")
        sink_b = await b.router.create_direct_transport()
        data_consumer = await sink_b.consume_data(data_producer_id=data_producer.id)
        assert (data_consumer.label, data_consumer.protocol) == ("chat", "text")
        assert len(in2) == 1
        # Sent at once, a message must not meet an association still being made.
        (pipe,) = in2.values()
        assert pipe.pair.transport.sctp_state == "connected"
        assert await _delivered(data_producer, data_consumer, "hello") == 51  # WebRTC string
        paused = asyncio.ensure_future(data_consumer.events.wait_for("dataproducerpause"))
        await data_producer.pause()
        async with asyncio.timeout(5):
            await paused
        resumed = asyncio.ensure_future(data_consumer.events.wait_for("dataproducerresume"))
        await data_producer.resume()
        async with asyncio.timeout(5):
            await resumed
        # Another app's router on s2 takes the data from B's router, not from s1 again.
        local = await b.router.create_direct_transport()
        b_data = await local.produce_data(label="b")
        sink_c = await c.router.create_direct_transport()
        from_b = await sink_c.consume_data(data_producer_id=b_data.id)
        assert from_b.label == "b" and sorted(p.pair is None for p in in2.values()) == [
            False,
            True,
        ]  # the copy from s1 on its pair, B's here on none
        closed = asyncio.ensure_future(data_consumer.events.wait_for("dataproducerclose"))
        data_producer.close()
        async with asyncio.timeout(5):
            await closed
        await wait_until(lambda: [p.pair for p in in2.values()] == [None])
        with pytest.raises(Exception, match="not found"):
            await sink_b.consume_data(data_producer_id="nobody-has-this")
    finally:
        for app in (a, b, c):
            await app.client.aclose()


async def test_a_data_stream_waits_for_sctp_only_for_find_timeout(
    worker: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """The wait for a pair's SCTP association ends when it is up, when the pair closes,
    or after find_timeout (a peer whose end never connects), with a warning."""
    async with await remote.serve(host="127.0.0.2", token=TOKEN) as server:
        streams = SwarmStreams(server, server_id="s", token=TOKEN, members=dict, find_timeout=0.3)
        router = await worker.create_router()
        ends = [
            await router.create_pipe_transport(listen_ip="127.0.0.1", enable_sctp=True)
            for _ in range(2)
        ]
        start = asyncio.get_running_loop().time()
        await streams._sctp_up(ends[0])  # nobody at the other end
        # (uvloop's clock counts whole milliseconds: a timer may end a hair early on it.)
        assert asyncio.get_running_loop().time() - start >= 0.29
        assert "SCTP is new, not connected" in caplog.text
        # mediasoup starts an association once the transport has a stream, as a pair has.
        source = await router.create_direct_transport()
        data_producer = await source.produce_data()
        out = await ends[1].consume_data(data_producer_id=data_producer.id)
        await ends[0].produce_data(sctp_stream_parameters=out.sctp_stream_parameters)
        for one, other in (ends, ends[::-1]):
            await one.connect(ip="127.0.0.1", port=other.tuple["localPort"])
        streams.find_timeout = 10
        await streams._sctp_up(ends[0])
        assert ends[0].sctp_state == "connected"
        await streams._sctp_up(ends[1])  # up already: at once
        lonely = await router.create_pipe_transport(listen_ip="127.0.0.1", enable_sctp=True)
        streams.find_timeout = 30
        waiting = asyncio.ensure_future(streams._sctp_up(lonely))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        lonely.close()
        async with asyncio.timeout(5):
            await waiting
        assert "SCTP is closed" in caplog.text


def _hold_sctp(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Event, asyncio.Event, list[PipeTransport]]:
    """Hold every data stream's wait for its SCTP association until ``release`` is set
    (``entered``: one is held, on a pipe transport of ``held``): a handshake as slow as
    between loaded servers, on cue."""
    entered, release = asyncio.Event(), asyncio.Event()
    held_on: list[PipeTransport] = []
    original = SwarmStreams._sctp_up

    async def held(self: SwarmStreams, transport: PipeTransport) -> None:
        held_on.append(transport)
        entered.set()
        await release.wait()
        await original(self, transport)

    monkeypatch.setattr(SwarmStreams, "_sctp_up", held)
    return entered, release, held_on


async def test_a_consume_while_a_data_stream_opens_waits_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second consume of a data producer on the router whose stream of it is opening
    waits for it, and uses its copy (two users: the copy outlives the first consumer);
    a pause of the owner's meanwhile reaches the copy once it is made."""
    entered, release, _ = _hold_sctp(monkeypatch)
    idle = 0.3
    async with _two_nodes(idle) as (s1, s2, n1, n2):
        assert n2.streams is not None
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            data_producer = await (await a.router.create_direct_transport()).produce_data()
            sinks = [await b.router.create_direct_transport() for _ in range(2)]
            first = asyncio.ensure_future(sinks[0].consume_data(data_producer_id=data_producer.id))
            await asyncio.wait_for(entered.wait(), 5)
            second = asyncio.ensure_future(sinks[1].consume_data(data_producer_id=data_producer.id))
            await data_producer.pause()
            (early,) = n2.streams._early.values()
            await wait_until(lambda: early == ["pause"])
            assert not first.done() and not second.done()
            release.set()
            consumers = [await first, await second]
            (pipe,) = n2.streams._in.values()
            assert pipe.users == 2 and pipe.carrier.paused
            assert all(c.data_producer_paused for c in consumers)
            consumers[0].close()
            await asyncio.sleep(idle * 3)
            assert not consumers[1].closed and n2.streams._in == {pipe.id: pipe}
        finally:
            for app in (a, b):
                await app.client.aclose()


_CUT = "stream from server s1 was cut while it opened"


@pytest.mark.parametrize(
    ("closing", "error"),
    [
        ("router", InvalidStateError("Router closed")),
        ("producer", InvalidValueError("not found")),
        ("owner leaves", Exception(_CUT)),
        ("asker stops", MediasoupError("server s2: its swarm node stopped before data producer")),
    ],
)
async def test_a_data_stream_closed_on_either_side_while_it_opens(
    monkeypatch: pytest.MonkeyPatch, closing: str, error: Exception
) -> None:
    """The consumer's router, or the data producer, closes while the stream waits for
    its SCTP association, or s1 leaves the swarm (s2 is told), or s2's node stops: the
    consume fails (the producer's as mediasoup's "not found", the stop's saying the node
    stopped), and nothing of the stream
    is left on either server, its new pair included (a copy kept after a leave would
    stay, fed by no one)."""
    entered, release, held_on = _hold_sctp(monkeypatch)
    async with _two_nodes(10) as (s1, s2, n1, n2):
        assert n1.streams is not None and n2.streams is not None
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            data_producer = await (await a.router.create_direct_transport()).produce_data()
            sink_b = await b.router.create_direct_transport()
            consume = asyncio.ensure_future(sink_b.consume_data(data_producer_id=data_producer.id))
            await asyncio.wait_for(entered.wait(), 5)
            if closing == "router":
                b.router.close()
                await wait_until(lambda: held_on[0].closed)  # with the router, on s2
            elif closing == "producer":
                data_producer.close()
                (early,) = n2.streams._early.values()
                await wait_until(lambda: early == ["close"])
            elif closing == "owner leaves":
                await n1.aclose()
                await wait_until(lambda: "s1" not in n2.members)
            else:
                await n2.aclose()
            release.set()
            with pytest.raises(type(error), match=str(error)):
                await consume
            s = n2.streams
            await wait_until(lambda: not (s._in or s._copies or s._pairs_in or s._pair_locks))
            await wait_until(lambda: not (n1.streams._out or n1.streams._pairs_out))
            assert s._early == {}
            if closing != "router":
                assert await _transports(b) == 1  # the sink only: the pair went too
            if closing in ("owner leaves", "asker stops"):
                assert not s._queues and not s._senders  # nothing to tell s1 any more
        finally:
            for app in (a, b):
                await app.client.aclose()


class _DeafPeer(_EmptyPeer):
    """A server of the swarm that has every producer, in one router, and pipes each to
    whoever asks on one pair whose end it never makes: the asker's end sends to a port
    nobody listens on, so the pair's SCTP association never comes up (a peer whose end
    never answers: a fake, as a real server's end always answers)."""

    async def _streams(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        message = await request.json()
        self.messages.append(message)
        if message["op"] == "find":
            return aiohttp.web.json_response({"found": True, "routerId": "theirs"})
        if message["op"] != "open":
            return aiohttp.web.json_response({})
        answer: dict[str, Any] = {"ip": "127.0.0.9", "port": 9, "srtpParameters": None}
        if message["data"]:
            stream = {"streamId": len(self.messages), "ordered": True}
            answer |= {"sctpStreamParameters": stream, "label": "", "protocol": ""}
        else:
            answer |= {"kind": "audio", "rtpParameters": OPUS_RTP}
        return aiohttp.web.json_response(answer | {"paused": False})


async def test_a_stream_is_not_held_behind_another_ones_sctp_wait(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A data stream's consume waits for its pipe pair's SCTP association (here it
    never comes up: up to find_timeout); a media stream of the same pair opened
    meanwhile does not wait behind it, and rides on the same pair."""
    async with (
        _lone_node(find_timeout=2) as (streams, a, _),
        _DeafPeer() as deaf,
    ):
        await deaf.join(streams.server)
        await wait_until(lambda: "empty" in streams._members())
        sinks = [await a.router.create_direct_transport() for _ in range(2)]
        data = asyncio.ensure_future(sinks[0].consume_data(data_producer_id="chat"))
        await wait_until(lambda: [m["op"] for m in deaf.messages].count("open") == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        caps = a.router.rtp_capabilities
        media = await sinks[1].consume(producer_id="voice", rtp_capabilities=caps)
        assert loop.time() - start < 1 and not data.done()
        assert media.producer_id == "voice"
        data_consumer = await data
        assert data_consumer.data_producer_id == "chat"
        assert "early messages may be lost" in caplog.text
        (pair,) = streams._pairs_in.values()
        assert sorted(p.pair is pair for p in streams._in.values()) == [True, True]
        assert pair.opening == 0 and streams._pair_opens == {}


async def test_an_owner_that_leaves_and_is_back_while_a_stream_opens(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """s1 leaves the swarm and joins again under its id (a new node) while s2 opens a
    data stream from it (held in its SCTP wait): s1's end of the stream and of its pair
    went with the leave, and the new node knows nothing of them. The consume fails (the
    stream was cut), and nothing of it is left on either server."""
    entered, release, _ = _hold_sctp(monkeypatch)
    async with _two_nodes(10) as (s1, s2, n1, n2):
        assert n2.streams is not None
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            data_producer = await (await a.router.create_direct_transport()).produce_data()
            sink_b = await b.router.create_direct_transport()
            consume = asyncio.ensure_future(sink_b.consume_data(data_producer_id=data_producer.id))
            await asyncio.wait_for(entered.wait(), 5)
            await n1.aclose()
            await wait_until(lambda: "s1" not in n2.members)
            async with SwarmNode(
                s1, token=TOKEN, seeds=[s2.url], server_id="s1", interval=ROUND
            ) as back:
                await wait_until(lambda: "s1" in n2.members and "s2" in back.members)
                release.set()
                with pytest.raises(Exception, match=_CUT):
                    await consume
                s = n2.streams
                await wait_until(lambda: not (s._in or s._pairs_in or s._pair_locks))
                assert s._early == {}
                assert back.streams is not None
                assert not (back.streams._out or back.streams._pairs_out)
                assert await _transports(b) == 1  # the sink only
        finally:
            for app in (a, b):
                await app.client.aclose()


async def test_a_restart_seen_without_a_leave_closes_the_former_lifes_streams() -> None:
    """s2 holds a copy of a producer of s1, on a pipe pair; then it hears of s1 with a
    newer generation (s1 restarted within fail_after, its former life killed: no leave
    came). That life left with its streams: s2 closes the copy (B's consumer gets
    'producerclose') and the pair at once, not when the old life is dropped as silent."""
    async with _two_nodes(10) as (s1, s2, n1, n2):
        assert n2.streams is not None
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            _, producer = await a.producer("127.0.0.2")
            consumer, _, sock = await b.consumer(producer.id)
            sock.close()
            closed = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
            assert len(n2.streams._in) == 1 and len(n2.streams._pairs_in) == 1
            heard: list[tuple[str, str]] = []
            n2.observer.on("serverleave", lambda i, _: heard.append(("leave", i)))
            n2.observer.on("serverjoin", lambda i: heard.append(("join", i)))
            (former,) = [e for e in n2._table.entries() if e["record"]["id"] == "s1"]
            life = former | {"generation": former["generation"] + 1, "beat": 0}
            auth = {"Authorization": f"Bearer {TOKEN}"}
            async with aiohttp.ClientSession(headers=auth) as http:
                async with http.post(route_url(s2.url), data=encode_gossip([life])) as r:
                    assert r.status == 200
            assert heard == [("leave", "s1"), ("join", "s1")]
            assert not n2.streams._in and not n2.streams._pairs_in
            async with asyncio.timeout(5):
                await closed
        finally:
            for app in (a, b):
                await app.client.aclose()


async def test_an_asker_that_leaves_and_is_back_while_its_stream_opens() -> None:
    """s2 opens a stream (on a new pair) here on s1, whose worker is held: s2 leaves
    and joins again under its id (a new node) meanwhile. The new node knows nothing of
    that stream: s1 does not keep it (nor its pair) once made, though s2 is a member
    again by then."""
    async with (
        _lone_node(find_timeout=5) as (streams, a, post),
        await remote.serve(host="127.0.0.3", token=TOKEN) as s2,
    ):
        _, producer = await a.producer("127.0.0.2")
        opening = {"op": "open", "producerId": producer.id, "from": "s2", "pairId": "q"}
        opening |= {"pipeId": "x", "ip": "127.0.0.1", "port": 9}
        n2 = SwarmNode(s2, token=TOKEN, seeds=[streams.server.url], server_id="s2", interval=ROUND)
        await n2.start()

        async def leave_and_rejoin() -> SwarmNode:
            """s2 leaves the swarm and joins it again under its id (a new node)."""
            await n2.aclose()
            await wait_until(lambda: "s2" not in streams._members())
            node = SwarmNode(
                s2, token=TOKEN, seeds=[streams.server.url], server_id="s2", interval=ROUND
            )
            await node.start()
            await wait_until(lambda: "s2" in streams._members())
            return node

        try:
            await wait_until(lambda: "s2" in streams._members())
            (worker,) = a.client.workers
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                answer = asyncio.ensure_future(post(opening))
                await wait_until(lambda: "q" in streams._pairs_opening)
                n2 = await leave_and_rejoin()
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            error = "pipe pair q was closed, or server s2 left, meanwhile"
            assert await answer == {"error": error}
            assert not (streams._out or streams._pairs_out or streams._cancelled)
            # The same with the pair made already: the stream is not kept.
            answer = await post(opening | {"pairId": "q2"})
            assert answer["kind"] == "audio"
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                more = {"op": "open", "producerId": producer.id, "from": "s2", "pairId": "q2"}
                second = asyncio.ensure_future(post(more | {"pipeId": "x2"}))
                await wait_until(lambda: "x2" in streams._opening)
                n2 = await leave_and_rejoin()
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            assert "error" in await second
            assert not (streams._out or streams._pairs_out or streams._cancelled)
        finally:
            await n2.aclose()


async def test_an_open_from_a_former_run_of_a_server_is_not_taken_from_the_next() -> None:
    """An open that s2 sent before it left reaches s1 late, after s1 dropped s2: s1
    waits for s2 to be a member (it may be one joining), and s2 joins again under its
    id meanwhile, a new run that knows nothing of that open. s1 takes it from the run
    that sent it only (its record's incarnation): refused after find_timeout, nothing
    kept (a pair and a stream nobody would close); the next run's opens are taken."""
    async with (
        _lone_node(find_timeout=1) as (streams, a, post),
        await remote.serve(host="127.0.0.3", token=TOKEN) as s2,
    ):
        _, producer = await a.producer("127.0.0.2")
        opening = {"op": "open", "producerId": producer.id, "from": "s2", "pairId": "q"}
        opening |= {"pipeId": "x", "ip": "127.0.0.1", "port": 9, "incarnation": "former"}
        answer = asyncio.ensure_future(post(opening))
        await wait_until(lambda: "x" in streams._opening)
        seeds = [streams.server.url]
        async with SwarmNode(s2, token=TOKEN, seeds=seeds, server_id="s2", interval=ROUND) as n2:
            await wait_until(lambda: "s2" in streams._members())
            assert await answer == {"error": "server s2 is not in this swarm"}
            assert not (streams._out or streams._pairs_out or streams._opening)
            this_run = opening | {"incarnation": n2.incarnation, "pipeId": "y"}
            assert (await post(this_run))["kind"] == "audio"
            assert list(streams._out) == ["y"]


async def test_a_failed_first_stream_closes_the_owners_end_of_its_pair() -> None:
    """A consume whose stream fails once the owner made its end (a router of s2 without
    the producer's codec): the owner closes its end of the new pair too."""
    async with _two_nodes(10) as (s1, s2, n1, n2):
        assert n1.streams is not None and n2.streams is not None
        a = await App.on(s1.url)
        b = await remote.connect(s2.url, token=TOKEN)
        try:
            vp8 = [{"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}]
            router = await (await b.create_worker()).create_router(media_codecs=vp8)
            _, producer = await a.producer("127.0.0.2")
            sink_b = await router.create_direct_transport()
            with pytest.raises(Exception, match="unsupported codec"):
                await sink_b.consume(
                    producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
                )
            await wait_until(lambda: not (n1.streams._out or n1.streams._pairs_out))
            assert not n2.streams._pairs_in and not n2.streams._in
        finally:
            await a.client.aclose()
            await b.aclose()


async def test_a_consume_under_way_when_the_node_stops_fails_with_a_stream_error() -> None:
    """s2's node stops while a consume there is bringing a producer of s1 (held making
    its end of the pair: its worker stopped): the open it then asks of s1 fails with
    the library's StreamError, not aiohttp's RuntimeError of a closed session, and
    leaves nothing."""
    async with _two_nodes(10) as (s1, s2, n1, n2):
        assert n2.streams is not None
        streams = n2.streams
        a, b = await App.on(s1.url), await App.on(s2.url)
        try:
            _, producer = await a.producer("127.0.0.2")
            sink_b = await b.router.create_direct_transport()
            (worker,) = b.client.workers
            os.kill(worker.pid, signal.SIGSTOP)
            try:
                consume = asyncio.ensure_future(
                    sink_b.consume(
                        producer_id=producer.id, rtp_capabilities=b.router.rtp_capabilities
                    )
                )
                await wait_until(lambda: bool(streams._pair_opens))
                await n2.aclose()
            finally:
                os.kill(worker.pid, signal.SIGCONT)
            with pytest.raises(MediasoupError, match="server s2: its swarm node stopped"):
                await consume
            assert not (streams._in or streams._pairs_in or streams._pair_opens)
            await wait_until(lambda: not (n1.streams._out or n1.streams._pairs_out))  # type: ignore[union-attr]
            assert await _transports(b) == 1  # the sink only
        finally:
            for app in (a, b):
                await app.client.aclose()


async def test_lookups_under_way_when_the_node_stops_fail_with_a_stream_error() -> None:
    """A swarm peer whose control port takes connections but never answers (as a
    SIGSTOPped server's), and more consumes of unknown ids than aiohttp's connection
    limit: the lookups beyond it wait for a connection. The node stops: its HTTP
    client's close cuts the lookups (the asks in flight fail, the waits for a
    connection are cancelled). Every consume fails at once with the swarm's StreamError
    naming its producer id: not mediasoup's "not found" (the producer may well exist:
    this server stopped looking), nor a CANCELLED RemoteError (a cancelled ask is that
    peer's no answer, not the lookup's end); the session serves on."""
    limit, queued = 100, 5  # aiohttp's connections at once per ClientSession; beyond it
    frozen = socket.socket()
    frozen.bind(("127.0.0.9", 0))
    # Never accepted; a backlog for every lookup's connection: each is made (none left
    # retrying its SYN, past the test), and cut when the node's HTTP client closes.
    frozen.listen(limit + queued + 16)
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
                ids = [str(uuid.uuid4()) for _ in range(limit + queued)]
                consumes = [
                    asyncio.ensure_future(transport.consume(producer_id=i, rtp_capabilities=caps))
                    for i in ids
                ]
                assert n1.streams is not None and n1.streams._http is not None
                connector: Any = n1.streams._http.connector
                # (aiohttp tells no count of what waits for a connection but this.)
                await wait_until(
                    lambda: sum(map(len, connector._waiters.values())) == queued, timeout=5
                )
                await n1.aclose()
                async with asyncio.timeout(3):
                    results = await asyncio.gather(*consumes, return_exceptions=True)
                for producer_id, error in zip(ids, results, strict=True):
                    assert isinstance(error, MediasoupError), results
                    assert not isinstance(error, RemoteError), results  # (not CANCELLED)
                    assert str(error) == (
                        f"server s1: its swarm node stopped before producer {producer_id} "
                        "was brought here"
                    )
                # The session goes on (the stopped node no longer looks anything up).
                with pytest.raises(InvalidValueError, match="not found"):
                    await transport.consume(producer_id=str(uuid.uuid4()), rtp_capabilities=caps)
                assert not (await app.router.create_direct_transport()).closed
            finally:
                if app is not None:
                    await app.client.aclose()
                await n1.aclose()
    finally:
        frozen.close()


async def test_a_stream_that_cannot_be_copied_leaves_its_pair_to_the_others(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """B's router on s2 takes no opus: a data stream of A's router on s1 comes in on a
    pipe pair, then the copy of A's opus producer is refused by B's router (mediasoup:
    unsupported codec). The consume fails, s1 is told to close that pipe, and the pair
    stays for the data stream (the failure closed the pair, and the data with it)."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    a = await App.on(servers[0].url)
    b = await remote.connect(servers[1].url, token=TOKEN)
    out1, in2 = nodes[0].streams._out, nodes[1].streams._in  # type: ignore[union-attr]
    try:
        vp8_only = [{"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}]
        router = await (await b.create_worker()).create_router(media_codecs=vp8_only)
        source = await a.router.create_direct_transport()
        data_producer = await source.produce_data(label="chat")
        _, producer = await a.producer("127.0.0.2")
        sink_b = await router.create_direct_transport()
        data_consumer = await sink_b.consume_data(data_producer_id=data_producer.id)
        assert len(in2) == 1 and len(out1) == 1
        with pytest.raises(Exception, match="codec"):
            await sink_b.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        await wait_until(lambda: len(out1) == 1)  # the failed pipe closed on s1 too
        assert len(in2) == 1 and not data_consumer.closed
        await _delivered(data_producer, data_consumer, b"still here")
    finally:
        await a.client.aclose()
        await b.aclose()


async def test_a_pair_closed_while_an_open_on_it_is_under_way_leaves_it_the_lock(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """B's router on s2 takes a second stream of A's router on s1 over their pipe pair
    while A's worker is frozen (SIGSTOP: s1 cannot answer that open), and B's router
    closes meanwhile. The pair goes with it, but the lock of its key stays with the open
    under way (deleted, a consume of that key could open a pair alongside it); once A's
    worker goes on, that open fails and neither server keeps anything of it."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    streams1, streams2 = nodes[0].streams, nodes[1].streams
    assert streams1 is not None and streams2 is not None
    a = await remote.connect(servers[0].url, token=TOKEN)
    b = await App.on(servers[1].url)
    stopped = None
    try:
        worker_a = await a.create_worker()
        app_a = App(a, await worker_a.create_router(media_codecs=MEDIA_CODECS))
        _, first = await app_a.producer("127.0.0.2")
        _, second = await app_a.producer("127.0.0.2")
        sink_b = await b.router.create_direct_transport()
        caps = b.router.rtp_capabilities
        await sink_b.consume(producer_id=first.id, rtp_capabilities=caps)
        [key] = list(streams2._pairs_in)
        os.kill(worker_a.pid, signal.SIGSTOP)
        stopped = worker_a.pid
        opening = asyncio.ensure_future(
            sink_b.consume(producer_id=second.id, rtp_capabilities=caps)
        )
        # s1 answered the find (no worker needed); the open on the pair is under way.
        lock = streams2._pair_locks[key]  # the first open's, kept with its pair
        await wait_until(lock.locked)
        b.router.close()
        await wait_until(lambda: not streams2._pairs_in and not streams2._in)
        assert streams2._pair_locks.get(key) is lock and lock.locked()
        # s2 said 'closepair': s1's end went, with the stream it carried.
        await wait_until(lambda: not streams1._pairs_out and not streams1._out)
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        with pytest.raises(Exception, match="server s1: PipeTransport closed"):
            await opening
        assert not lock.locked()
        assert not streams1._out and not streams1._pairs_out
        assert not streams2._copies and not streams2._carrying and not streams2._pairs_in
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        await a.aclose()
        await b.client.aclose()


async def test_a_swarm_over_tls(tmp_path: Any) -> None:
    """`mafalda serve --swarm --tls-cert --tls-key --tls-ca`: the servers gossip, pipe
    streams and answer the Monitor over HTTPS, checking each other's certificates; a
    server that does not trust their authority stays alone."""
    ca, cert, key = tls_files(tmp_path, "127.0.0.2", "127.0.0.3", "127.0.0.4")
    tls = ["--tls-cert", cert, "--tls-key", key]
    context = ssl.create_default_context(cafile=ca)
    started: list[Server] = []
    try:
        started.append(await _start(1, *tls, "--tls-ca", ca))
        s1 = started[0]
        assert s1.url.startswith("wss://")
        started.append(await _start(2, *tls, "--tls-ca", ca, "--swarm", s1.url))
        started.append(await _start(3, *tls, "--swarm", s1.url))  # the system's CAs only
        s2, s3 = started[1], started[2]
        async with await swarm.connect([s2.url], token=TOKEN, ssl=context) as cluster:
            await wait_until(lambda: set(cluster.servers) == {"s1", "s2"}, timeout=15)
            await asyncio.sleep(1.0)  # five more rounds of s3 trying s1
            await cluster.refresh()
            assert set(cluster.servers) == {"s1", "s2"}
        async with await swarm.connect([s3.url], token=TOKEN, ssl=context) as alone:
            assert set(alone.servers) == {"s3"}
        a = await remote.connect(s1.url, token=TOKEN, ssl=context)
        b = await remote.connect(s2.url, token=TOKEN, ssl=context)
        try:
            source = await (
                await (await a.create_worker()).create_router()
            ).create_direct_transport()
            data_producer = await source.produce_data()
            router_b = await (await b.create_worker()).create_router()
            sink_b = await router_b.create_direct_transport()
            data_consumer = await sink_b.consume_data(data_producer_id=data_producer.id)
            await _delivered(data_producer, data_consumer, b"over tls")
        finally:
            await a.aclose()
            await b.aclose()
        result = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "mafalda.cli", "monitor", s1.url, "--once", "--json"],
            *["--tls-ca", ca, "--token", TOKEN],
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await result.communicate()
        assert result.returncode == 0
        servers = {s["id"]: s for s in json.loads(out)["servers"]}
        assert set(servers) == {"s1", "s2"} and all(s["reported"] for s in servers.values())
    finally:
        for server in started:
            if server.proc.returncode is None:
                server.proc.kill()
            await reap(server.proc)


@contextlib.asynccontextmanager
async def _pool_nodes(
    idle: float = 10,
) -> AsyncIterator[tuple[list[Mafalda], RemoteServer, RemoteServer, SwarmNode, SwarmNode]]:
    """Servers s1 (127.0.0.2) and s2 (127.0.0.3) of two Mafalda pools of two workers
    (policy 'spread'), in one swarm, copies idle ``idle`` s."""
    pools = [await Mafalda.start(num_workers=2, min_workers=2, policy="spread") for _ in range(2)]
    try:
        async with (
            await remote.serve(host="127.0.0.2", token=TOKEN, target=pools[0]) as s1,
            await remote.serve(host="127.0.0.3", token=TOKEN, target=pools[1]) as s2,
            SwarmNode(s1, token=TOKEN, server_id="s1", interval=ROUND, stream_idle=idle) as n1,
            SwarmNode(
                s2, token=TOKEN, seeds=[s1.url], server_id="s2", interval=ROUND, stream_idle=idle
            ) as n2,
        ):
            await wait_until(_everyone_knows([n1, n2], {"s1", "s2"}))
            yield pools, s1, s2, n1, n2
    finally:
        for pool in pools:
            await pool.aclose()


async def test_streams_between_servers_of_mafalda_pools() -> None:
    """`mafalda serve --mafalda --swarm`: Remote Mafalda apps on two servers, each a
    pool of two workers. A producer of a MafaldaRouter on s1 is consumed through s2 on
    transports of its MafaldaRouter on both workers there (the copy lands on one, the
    router pipes it to the other); closing it reaches every consumer. Between two rooms
    of s2, a data producer's copy serves every consumer of it there."""
    async with _pool_nodes() as (pools, s1, s2, n1, n2):
        a = await remote.connect(s1.url, token=TOKEN)
        b = await remote.connect(s2.url, token=TOKEN)
        try:
            room_a = await a.create_router(media_codecs=MEDIA_CODECS)
            room_b = await b.create_router(media_codecs=MEDIA_CODECS)
            app_a, app_b = App(a, room_a), App(b, room_b)
            send, producer = await app_a.producer("127.0.0.2")
            consumers = []
            with Sender(send):
                for _ in range(3):  # spread over s2's two workers (policy 'spread')
                    consumer, counter, sock = await app_b.consumer(producer.id)
                    consumers.append(consumer)
                    await received(counter)
                    sock.close()
            # Both of s2's workers have consumers: one has the copy, the other takes
            # it from there (one pipe in from s1 all the same).
            busy = [w for w in pools[1].stats()["workers"] if w["consumers"] > 0]
            assert len(busy) == 2
            assert len(n2.streams._in) == 1  # type: ignore[union-attr]
            # Another app of s2 takes a data producer of B's room: MafaldaRouter's own
            # pipe_to_router() between the two rooms.
            third = await remote.connect(s2.url, token=TOKEN)
            room_c = await third.create_router(media_codecs=MEDIA_CODECS)
            data_producer = await (await room_b.create_direct_transport()).produce_data()
            sink_c = await room_c.create_direct_transport()
            from_b = await sink_c.consume_data(data_producer_id=data_producer.id)
            await _delivered(data_producer, from_b, b"room to room")
            # A second consumer there uses the same copy (it was piped again, and
            # refused as a DataProducer already there).
            again = await sink_c.consume_data(data_producer_id=data_producer.id)
            assert again.data_producer_id == data_producer.id
            assert n2.streams is not None
            assert n2.streams._copies[(room_c.id, data_producer.id, True)].users == 2
            await third.aclose()
            closed = [asyncio.ensure_future(c.events.wait_for("producerclose")) for c in consumers]
            producer.close()
            async with asyncio.timeout(5):
                await asyncio.gather(*closed)
        finally:
            await a.aclose()
            await b.aclose()


async def test_an_rtp_observer_of_a_pool_keeps_the_copy_it_watches() -> None:
    """On a server of a Mafalda pool, an RTP observer on one worker watches a copy that
    landed on the other (the router pipes it on, and the observer reports the piped
    producer): the copy is in use while watched, and collected once it is not."""
    idle = 0.3
    async with _pool_nodes(idle) as (pools, s1, s2, n1, n2):
        assert n2.streams is not None
        in2 = n2.streams._in
        a = await remote.connect(s1.url, token=TOKEN)
        b = await remote.connect(s2.url, token=TOKEN)
        try:
            app_a = App(a, await a.create_router(media_codecs=MEDIA_CODECS))
            room_b = await b.create_router(media_codecs=MEDIA_CODECS)
            _, producer = await app_a.producer("127.0.0.2")
            observer = await room_b.create_audio_level_observer()
            # A transport beside the observer: the pipe's goes to the other worker
            # (policy 'spread').
            await room_b.create_direct_transport()
            await observer.add_producer(producer_id=producer.id)
            (pipe,) = in2.values()
            # The copy is on one worker, and a pipe consumer there takes it to the other.
            assert sorted(w["consumers"] for w in pools[1].stats()["workers"]) == [0, 1]
            assert pipe.users == 1
            await asyncio.sleep(idle * 2)
            assert list(in2.values()) == [pipe]  # watched: kept
            await observer.remove_producer(producer_id=producer.id)
            await wait_until(lambda: not in2, timeout=5)
            # Another app's room of s2 takes B's own producer Q: a copy of the same id
            # there (the pool's pipe_to_router() keeps ids). B's observer watching Q
            # watches B's own, not that copy: it is collected when unused all the same.
            _, own = await App(b, room_b).producer("127.0.0.3")
            third = await remote.connect(s2.url, token=TOKEN)
            try:
                room_c = await third.create_router(media_codecs=MEDIA_CODECS)
                consumer, _, sock = await App(third, room_c).consumer(own.id)
                (copy,) = in2.values()
                assert copy.key == (room_c.id, own.id, False) and copy.users == 1
                await observer.add_producer(producer_id=own.id)
                assert copy.users == 1
                consumer.close()
                await wait_until(lambda: not in2, timeout=5)
                sock.close()
            finally:
                await third.aclose()
        finally:
            await a.aclose()
            await b.aclose()


async def test_a_cluster_router_over_a_swarm_of_mafalda_pools() -> None:
    """A ClusterRouter (swarm.connect) over two servers of Mafalda pools: a producer and
    a data producer on s1 consumed on s2 through the router's own pipe, and on s2 by
    another app by the producer's id, which the server finds there already (the
    router's copy, whatever id the pool gave it) rather than piping it again."""
    async with _pool_nodes() as (pools, s1, s2, n1, n2):
        async with await swarm.connect([s1.url], token=TOKEN, interval=ROUND) as cluster:
            router = await cluster.create_router(media_codecs=MEDIA_CODECS)
            source = await router.create_direct_transport(server="s1")
            producer = await source.produce(kind="audio", rtp_parameters=OPUS_RTP)
            data_producer = await source.produce_data(label="chat")
            sink = await router.create_direct_transport(server="s2")
            caps = router.rtp_capabilities
            consumer = await sink.consume(producer_id=producer.id, rtp_capabilities=caps)
            data_consumer = await sink.consume_data(data_producer_id=data_producer.id)
            assert consumer.producer_id == producer.id
            await _delivered(data_producer, data_consumer, b"across")
            assert not n2.streams._in  # type: ignore[union-attr]  # the router's pipe
            # A breakout room: its copy of the producer, on s1, maybe of its own id on
            # a worker that hosts the producer; consumed there and on s2.
            breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
            await router.pipe_to_router(router=breakout, producer_id=producer.id)
            await router.pipe_to_router(router=breakout, data_producer_id=data_producer.id)
            for server in ("s1", "s1", "s2"):
                there = await breakout.create_direct_transport(server=server)
                consumer = await there.consume(producer_id=producer.id, rtp_capabilities=caps)
                assert consumer.producer_id == producer.id
                data_consumer = await there.consume_data(data_producer_id=data_producer.id)
                await _delivered(data_producer, data_consumer, b"breakout")
            assert not n1.streams._in and not n2.streams._in  # type: ignore[union-attr]


async def test_swarm_benchmark_runs() -> None:
    """bench/swarm.py once, so that it cannot rot: every figure is there and positive."""
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "bench/swarm.py", "--runs", "1", "--json"],
        stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0
    figures = json.loads(out)
    assert set(figures) == {
        "firstPacketSameEntryMs",
        "firstPacketOtherEntryNewPipeMs",
        "firstPacketOtherEntryCopyThereMs",
        "findNowhereMs",
    }
    assert all(value > 0 for value in figures.values())


async def test_two_routers_of_one_worker_take_copies_of_one_stream(
    trio: tuple[list[RemoteServer], list[SwarmNode]],
) -> None:
    """Producer ids are unique per worker, not per router: two routers of one worker of
    s2 consume one stream of s1 (each its copy, under an id of its own, known by the
    original's), and a third router of that worker consumes a producer of the first
    (a pipe inside the worker). Every consumer is known by the original id."""
    servers, nodes = trio
    await wait_until(_everyone_knows(nodes, {"s1", "s2", "s3"}))
    a = await App.on(servers[0].url)
    b = await remote.connect(servers[1].url, token=TOKEN)
    try:
        send, producer = await a.producer("127.0.0.2")
        worker = await b.create_worker()
        routers = [await worker.create_router(media_codecs=MEDIA_CODECS) for _ in range(3)]
        apps = [App(b, router) for router in routers]
        with Sender(send):
            for app in apps[:2]:
                consumer, counter, sock = await app.consumer(producer.id)
                assert consumer.producer_id == producer.id
                await received(counter)
                sock.close()
        direct = await routers[0].create_direct_transport()
        data_producer = await direct.produce_data()
        local = await routers[2].create_direct_transport()
        data_consumer = await local.consume_data(data_producer_id=data_producer.id)
        assert data_consumer.data_producer_id == data_producer.id
        assert await _delivered(data_producer, data_consumer, b"same worker") == 53
    finally:
        await a.client.aclose()
        await b.aclose()
