"""mafalda.horizontal against a real Redis and real ``mafalda serve --cluster`` processes.

Each media server is a separate process on its own loopback address (127.0.0.2, .3, .4:
control port and media bound there); test_room_across_separate_hosts runs them in
network namespaces on a bridge instead (their own IP addresses, SRTP on the pipes)
where the machine allows it, and says which ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from mafalda import horizontal
from mafalda.horizontal import cluster as cluster_module
from mafalda.horizontal import registry
from mafalda.horizontal.cluster import Cluster, ClusterError, is_loopback
from mafalda.horizontal.router import ClusterTransport
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.remote import (
    PROTOCOL_VERSION,
    RemoteConnectionError,
    RemoteError,
    RemoteMafalda,
    RemoteMediasoup,
    RemoteWorker,
)
from mafalda.remote import connect as remote_connect
from tests.bench_modules import load_bench
from tests.conftest import opus_rtp_parameters
from tests.processes import (
    HAVE_REDIS,
    TOKEN,
    NetnsLab,
    RedisProcess,
    free_port,
    free_ports,
    reap,
    serve_command,
    spawn_serve,
    tls_files,
)
from tests.relay import Relay
from tests.rtp_flow import MEDIA_CODECS, OPUS_PT, OPUS_RTP
from tests.rtp_flow import Counter as _Counter
from tests.rtp_flow import Sender as _Sender
from tests.rtp_flow import received as _received
from tests.rtp_flow import sink as _sink

HEARTBEAT = 0.3  # TTL 0.9 s

pytestmark = pytest.mark.skipif(not HAVE_REDIS, reason="redis-server is not installed")


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, server_id: str, url: str) -> None:
        self.proc = proc
        self.id = server_id
        self.url = url


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    server = RedisProcess()
    server.start()
    yield server
    server.kill()


@pytest.fixture
async def db(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def _start_server(redis_url: str, index: int, *extra: str) -> Server:
    proc, url = await spawn_serve(serve_command(redis_url, index, HEARTBEAT, *extra))
    return Server(proc, f"s{index}", url)


@pytest.fixture
async def servers(redis_server: RedisProcess) -> AsyncIterator[list[Server]]:
    """s1 (region eu) on 127.0.0.2, s2 and s3 (region us) on 127.0.0.3 and .4."""
    started = await asyncio.gather(
        _start_server(redis_server.url, 1, "--region", "eu"),
        _start_server(redis_server.url, 2, "--region", "us"),
        _start_server(redis_server.url, 3, "--region", "us"),
    )
    yield list(started)
    for server in started:
        if server.proc.returncode is None:
            server.proc.kill()
        await server.proc.wait()


@pytest.fixture
async def cluster(redis_server: RedisProcess, servers: list[Server]) -> AsyncIterator[Cluster]:
    c = await horizontal.connect(
        # grace 3 s: a heartbeat late on a loaded machine (TTL 0.9 s) does not drop a server
        redis_server.url,
        token=TOKEN,
        interval=0.2,
        grace=3.0,
        worker_idle=0.5,
    )
    yield c
    await c.aclose()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.05)


async def record_of(db: aioredis.Redis, server_id: str) -> registry.ServerRecord | None:
    raw = await db.get(registry.server_key(server_id))
    return None if raw is None else registry.decode_record(raw)


# -- the registry schema, without Redis ----------------------------------------------------


def test_registry_encoding() -> None:
    record: registry.ServerRecord = {
        "id": "a",
        "controlUrl": "ws://10.0.0.1:4443/",
        "mediaAddress": "10.0.0.1",
        "region": None,
        "workers": 2,
        "load": 0.5,
        "consumers": 7,
        "draining": False,
        "version": "mafalda-remote/2",
        "serves": "mediasoup",
    }
    assert registry.decode_record(registry.encode_record(record)) == record
    legacy = {k: v for k, v in record.items() if k != "serves"}  # first-increment records
    assert registry.decode_record(json.dumps(legacy))["serves"] == "mediasoup"
    assert registry.decode_record(registry.encode_record(record).encode()) == record
    beating: registry.ServerRecord = {**record, "heartbeat": 2.0}  # a MediaNode's
    assert registry.decode_record(registry.encode_record(beating)) == beating
    assert registry.decode_record(json.dumps({**record, "heartbeat": 2}))["heartbeat"] == 2.0
    for heartbeat in (0, -1, True, "2", None, 1e300):
        with pytest.raises(ValueError, match="server record: invalid 'heartbeat'"):
            registry.decode_record(json.dumps({**record, "heartbeat": heartbeat}))
    run: registry.ServerRecord = {**record, "incarnation": "f00d"}  # a MediaNode's
    assert registry.decode_record(registry.encode_record(run)) == run
    for incarnation in (None, 1, ["f00d"]):
        with pytest.raises(ValueError, match="server record: invalid 'incarnation'"):
            registry.decode_record(json.dumps({**record, "incarnation": incarnation}))
    for bad in (b"\xff", "[]", "{", '{"id": "a"}', "[" * 100_000):
        with pytest.raises(ValueError, match="server record"):
            registry.decode_record(bad)
    for key, value in (
        ("workers", True),
        ("workers", -1),
        ("load", -1),
        ("load", True),
        ("region", 3),
        ("draining", 0),
        ("serves", "x"),
    ):
        with pytest.raises(ValueError, match="server record"):
            registry.decode_record(registry.encode_record({**record, key: value}))  # type: ignore[misc]
    # Python's JSON reads these (a browser's does not: the monitor page would stop).
    for text in ("NaN", "Infinity", "1e999", "1" + "0" * 400, "-1"):
        raw = json.dumps({**record, "load": 0.0}).replace('"load": 0.0', f'"load": {text}')
        with pytest.raises(ValueError, match="server record: invalid 'load'"):
            registry.decode_record(raw)
    assert registry.server_key("a") == "mafalda:server:a"
    assert registry.server_key("a", "x") == "x:server:a"
    for bad_id in ("", "a:b", "*"):
        with pytest.raises(ValueError, match="server id"):
            registry.server_key(bad_id)
    assert registry.server_id_from_key(b"mafalda:server:a") == "a"
    assert registry.server_id_from_key("mafalda:server:") is None
    assert registry.server_id_from_key("other:server:a") is None
    for bad_key in (b"mafalda:server:\xff", "mafalda:server:a:b", "mafalda:server:*"):
        assert registry.server_id_from_key(bad_key) is None
    assert registry.server_pattern("x") == "x:server:*"
    assert registry.membership_channel() == "mafalda:membership"
    message = registry.encode_membership("leave", "a")
    assert registry.decode_membership(message) == {"event": "leave", "id": "a"}
    for bad in (
        b"\xff",
        "1",
        "[" * 100_000,
        '{"event": "boom", "id": "a"}',
        '{"event": [], "id": "a"}',
        '{"event": "join", "id": ""}',
        '{"event": "join", "id": "a:b"}',
    ):
        assert registry.decode_membership(bad) is None
    assert is_loopback("127.0.0.3") and is_loopback("localhost") and not is_loopback("10.0.0.1")


async def test_connect_validates_options(redis_server: RedisProcess) -> None:
    with pytest.raises(ValueError, match="policy"):
        await horizontal.connect(redis_server.url, token=TOKEN, policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="region"):
        await horizontal.connect(redis_server.url, token=TOKEN, policy="region")
    nan = float("nan")
    for option, value, message in (
        ("interval", 0, "interval must be a finite number of seconds > 0, got 0"),
        ("interval", nan, "interval must be a finite number of seconds > 0, got nan"),
        ("grace", nan, "grace must be a finite number of seconds >= 0, got nan"),
        ("grace", float("inf"), "grace must be a finite number of seconds >= 0, got inf"),
        ("worker_idle", -1, "worker_idle must be a finite number of seconds >= 0, got -1"),
        ("connect_timeout", 0, "connect_timeout must be a finite number of seconds > 0"),
        ("connect_timeout", "5", "connect_timeout must be a finite number of seconds > 0"),
    ):
        with pytest.raises(ValueError, match=message):
            await horizontal.connect(redis_server.url, token=TOKEN, **{option: value})
    async with await horizontal.connect(redis_server.url, token=TOKEN) as empty:
        assert empty.servers == {} and empty.dump()["servers"] == {}
        with pytest.raises(ClusterError, match="no live media server"):
            await empty.create_worker()
        router = await empty.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(ClusterError, match="no live media server available"):
            await router.create_plain_transport(listen_ip="127.0.0.1")
        # What cluster routers ask of the cluster, about a server it does not know.
        for ask in (empty.serves, empty.media_address, empty.check_placeable):
            with pytest.raises(ClusterError, match="no live media server 'nope'"):
                ask("nope")
        with pytest.raises(ClusterError, match="no live media server 'nope'"):
            await empty.router_worker("nope")
        with pytest.raises(ClusterError, match="no live media server 'nope'"):
            await empty.child_router("nope", media_codecs=MEDIA_CODECS)
    assert empty.closed and router.closed
    with pytest.raises(ClusterError, match="closed"):
        await empty.create_worker()
    with pytest.raises(ClusterError, match="closed"):
        await empty.create_router(media_codecs=MEDIA_CODECS)
    with pytest.raises(ClusterError, match="closed"):
        empty.place()


# -- registration and placement ------------------------------------------------------------


async def test_registration_ttl_and_placement(
    redis_server: RedisProcess,
    db: aioredis.Redis,
    servers: list[Server],
    cluster: Cluster,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for index, server in enumerate(servers, start=1):
        record = await record_of(db, server.id)
        assert record is not None
        assert record["controlUrl"] == server.url
        assert record["mediaAddress"] == f"127.0.0.{index + 1}"
        assert record["workers"] == 0 and not record["draining"]
        ttl = await db.pttl(registry.server_key(server.id))
        assert 0 < ttl <= HEARTBEAT * 3000
    assert set(cluster.servers) == {"s1", "s2", "s3"}
    assert cluster.version and cluster.get_supported_rtp_capabilities()["codecs"]

    # Load s1 with two workers and s2 with one, from other clients.
    others: list[RemoteMediasoup] = []
    for server, count in ((servers[0], 2), (servers[1], 1)):
        other = await remote_connect(server.url, token=TOKEN)
        assert isinstance(other, RemoteMediasoup)
        others.append(other)
        for _ in range(count):
            await other.create_worker(log_level="warn")

    async def loaded() -> bool:
        await cluster.refresh()
        return cluster.servers["s1"]["workers"] == 2 and cluster.servers["s2"]["workers"] == 1

    await wait_until(loaded)
    new_workers: list[RemoteWorker] = []
    cluster.observer.on("newworker", new_workers.append)
    worker = await cluster.create_worker(log_level="warn")
    assert new_workers == [worker]
    placed = cluster.server_of(worker)
    assert placed is not None and placed["id"] == "s3"  # the least loaded
    dump = cluster.dump()
    assert dump["policy"] == "least-loaded"
    assert dump["servers"]["s3"]["clientWorkers"] == [worker.id]
    assert dump["servers"]["s3"]["connected"] and not dump["servers"]["s1"]["connected"]
    assert cluster.workers == [worker]

    # 'pack' fills the most loaded server that is not full; 'region' prefers its region.
    cpus = os.cpu_count() or 1
    async with await horizontal.connect(redis_server.url, token=TOKEN, policy="pack") as pack:
        chosen = pack._choose()
        assert chosen is not None
        if cpus <= 2:
            # s1 is full (load 1.0); s2 holds one worker and s3 holds ours, which its
            # record shows from its next heartbeat on: both are the busiest open ones.
            assert chosen["id"] in {"s2", "s3"}
        else:
            assert chosen["id"] == "s1"
    async with await horizontal.connect(
        redis_server.url, token=TOKEN, policy="region", region="eu"
    ) as eu:
        eu_worker = await eu.create_worker(log_level="warn")
        placed = eu.server_of(eu_worker)
        assert placed is not None and placed["id"] == "s1"
    for other in others:
        await other.aclose()

    # A record that is not one is ignored; a server that does not answer is skipped.
    await db.set(registry.server_key("junk"), "not json", px=5000)
    ghost: registry.ServerRecord = {
        **cluster.servers["s3"],
        "id": "s0",
        "controlUrl": f"ws://127.0.0.1:{free_port()}/",
        "workers": 0,
        "load": 0.0,
    }
    await db.set(registry.server_key("s0"), registry.encode_record(ghost), px=5000)
    await cluster.refresh()
    assert "junk" not in cluster.servers and "s0" in cluster.servers
    with caplog.at_level("WARNING", logger="mafalda.horizontal.cluster"):
        worker = await cluster.create_worker(log_level="warn")
    assert cluster.server_of(worker)["id"] != "s0"  # type: ignore[index]
    assert "server s0 failed" in caplog.text


async def test_a_leave_during_a_read_is_not_undone(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """A registry read begun before a server left must not bring it back (it did, as a
    ghost 'serverjoin', when its read predated the record's deletion)."""
    await db.set(registry.server_key("s9"), _hand_record("s9"), px=60000)
    async with await horizontal.connect(redis_server.url, token=TOKEN, interval=30) as c:
        assert "s9" in c.servers
        # Only this test's reads: the background ones would see the record (still in
        # Redis here) for real and bring it back rightly.
        for task in list(c._tasks):
            task.cancel()
        await asyncio.gather(*c._tasks, return_exceptions=True)
        joins: list[Any] = []
        c.observer.on("serverjoin", joins.append)
        reading = asyncio.ensure_future(c.refresh())
        await asyncio.sleep(0)  # the read is under way
        await c._remove("s9", "left")  # as the 'leave' message does
        await reading
        assert "s9" not in c.servers and joins == []
        await c.refresh()  # a read begun after the leave: the record is there for real
        assert "s9" in c.servers and [j["id"] for j in joins] == ["s9"]


def _hand_record(server_id: str, **changes: Any) -> str:
    """A server record written by hand (no server behind its control URL)."""
    record: dict[str, Any] = {
        "id": server_id,
        "controlUrl": f"ws://127.0.0.1:{free_port()}/",
        "mediaAddress": "127.0.0.1",
        "region": None,
        "workers": 0,
        "load": 0.0,
        "consumers": 0,
        "draining": False,
        "version": PROTOCOL_VERSION,
        "serves": "mediasoup",
        **changes,
    }
    return json.dumps(record)


async def _subscribed(db: aioredis.Redis) -> None:
    """Until the cluster client listens on the membership channel (what is published
    before that is not heard)."""

    async def listening() -> bool:
        [(_, count)] = await db.pubsub_numsub(registry.membership_channel())
        return int(count) > 0

    await wait_until(listening)


async def test_junk_in_the_registry_is_ignored(
    redis_server: RedisProcess, db: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever writes under the prefix, what is no server's record or membership message
    is ignored, one at a time. A record nested too deep (a RecursionError) or a key that
    is not UTF-8 made every registry read fail: connect() raised, and a client already
    connected never saw a server join, leave or expire again. An unhashable event or
    an id no server could have made the membership listener fail and subscribe again
    ``interval`` later, the messages published meanwhile lost."""
    raw: aioredis.Redis = aioredis.from_url(redis_server.url)  # keys that are not UTF-8
    try:
        await raw.set(b"mafalda:server:\xff", _hand_record("s3"))
    finally:
        await raw.aclose()
    await db.set("mafalda:server:deep", "[" * 100_000)
    await db.set("mafalda:server:", _hand_record("s3"))  # no id in the key
    await db.set("mafalda:server:a*b", _hand_record("a*b"))  # an id no server can have
    await db.hset("mafalda:server:h", "id", "h")  # not a string: MGET answers nil
    await db.set("mafalda:server:s7", _hand_record("s8"))  # another server's record
    await db.set("mafalda:server:s1", _hand_record("s1"))
    # interval 30: only the membership listener reads the registry (at its subscribe).
    async with await horizontal.connect(redis_server.url, token=TOKEN, interval=30) as c:
        assert set(c.servers) == {"s1"}
        joins: list[str] = []
        leaves: list[tuple[str, str]] = []
        c.observer.on("serverjoin", lambda record: joins.append(record["id"]))
        c.observer.on("serverleave", lambda record, why: leaves.append((record["id"], why)))
        await _subscribed(db)
        channel = registry.membership_channel()
        await db.set("mafalda:server:s6", "not json")
        for junk in (
            "not json",
            '{"event": [], "id": "s2"}',
            '{"event": "join", "id": "a*b"}',
            '{"event": "join", "id": "a:b"}',
            registry.encode_membership("join", "s5"),  # no record
            registry.encode_membership("join", "s6"),  # not a record
            registry.encode_membership("update", "s7"),  # another server's record
            registry.encode_membership("leave", "s9"),  # not a server of this client
        ):
            await db.publish(channel, junk)
        # Messages arrive in order: once s2's join is heard, the junk was handled.
        joined = asyncio.ensure_future(c.observer.wait_for("serverjoin"))
        await db.set("mafalda:server:s2", _hand_record("s2"))
        await db.publish(channel, registry.encode_membership("join", "s2"))
        async with asyncio.timeout(10):
            await joined
        await db.delete("mafalda:server:s1")
        left = asyncio.ensure_future(c.observer.wait_for("serverleave"))
        await db.publish(channel, registry.encode_membership("leave", "s1"))
        async with asyncio.timeout(10):
            await left
        assert joins == ["s2"] and leaves == [("s1", "left")]
        assert set(c.servers) == {"s2"}
        assert "membership channel" not in caplog.text


async def test_cluster_closes_when_its_loops_swallow_a_cancellation(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose() ends both background loops even when their cancellation is lost: on
    Python 3.11 redis-py's asyncio.wait_for() around a socket write returns instead of
    raising when the cancellation lands as the write completes (see the MediaNode test
    above). That race cannot be produced on demand, so here the registry read of the
    polling loop and the membership read of the listening loop swallow it once and
    return, as they would then."""
    cluster = await horizontal.connect(redis_server.url, token=TOKEN, interval=0.05)
    tasks = list(cluster._tasks)  # not started yet: they call what is patched below
    inside = {"_poll": asyncio.Event(), "watch": asyncio.Event()}
    swallowed: set[str] = set()

    def loop_name() -> str:
        task = asyncio.current_task()
        return getattr(task.get_coro(), "__name__", "") if task is not None else ""

    async def hold(name: str) -> None:
        inside[name].set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            swallowed.add(name)
        # The rest of the call, as redis-py's goes on to read its answer. (Coverage's
        # tracer on Python 3.11 also misses what a coroutine resumed by a thrown
        # cancellation runs before it next waits: the loops' ends went unmeasured.)
        await asyncio.sleep(0)

    real_refresh = cluster.refresh

    async def refresh() -> None:
        if loop_name() == "_poll" and "_poll" not in swallowed:
            await hold("_poll")
            return
        await real_refresh()

    real_get_message = aioredis.client.PubSub.get_message

    async def get_message(self: Any, *args: Any, **kwargs: Any) -> Any:
        if loop_name() == "watch" and "watch" not in swallowed:
            await hold("watch")
            return None
        return await real_get_message(self, *args, **kwargs)

    monkeypatch.setattr(cluster, "refresh", refresh)
    monkeypatch.setattr(aioredis.client.PubSub, "get_message", get_message)
    try:
        async with asyncio.timeout(10):
            await asyncio.gather(*(event.wait() for event in inside.values()))
            await cluster.aclose()
        assert swallowed == {"_poll", "watch"}
        # They ended by themselves, not by aclose() giving up on them after 5 s.
        assert all(task.done() and not task.cancelled() for task in tasks)
    finally:
        for task in tasks:
            task.cancel()


@pytest.mark.parametrize("loop", ["_poll", "watch"])
async def test_the_loops_survive_an_unexpected_error(
    redis_server: RedisProcess,
    db: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    loop: str,
) -> None:
    """A registry read that fails with something else than RedisError or OSError is
    logged with its traceback, and the loop that made it goes on: the polling loop reads
    again ``interval`` later, the membership listener subscribes again. A fault made by
    hand (the read raises once in that loop): no real input makes RedisMembership's read
    fail so since the junk fixed above (test_junk_in_the_registry_is_ignored)."""
    # Only the loop under test can see s9: polling every 0.05 s (its record is written
    # silently), or listening (polls 30 s apart; its join is announced).
    cluster = await horizontal.connect(
        redis_server.url, token=TOKEN, interval=0.05 if loop == "_poll" else 30
    )
    cluster.membership.interval = 0.05  # type: ignore[attr-defined]  # to subscribe again
    failed, listener_read = asyncio.Event(), asyncio.Event()
    real_read = cluster.membership.read

    async def read() -> Any:
        task = asyncio.current_task()
        name = getattr(task.get_coro(), "__name__", "") if task is not None else ""
        if name == loop and not failed.is_set():
            failed.set()
            raise RuntimeError("boom")
        snapshot = await real_read()
        if name == "watch":
            listener_read.set()
        return snapshot

    # Before the loops start (they start at the next step of the event loop).
    monkeypatch.setattr(cluster.membership, "read", read)
    try:
        joined = asyncio.ensure_future(cluster.observer.wait_for("serverjoin"))
        async with asyncio.timeout(10):
            await failed.wait()
            if loop == "_poll":  # the listener read the registry before s9 was there
                await listener_read.wait()
            await db.set(registry.server_key("s9"), _hand_record("s9"), px=60000)
            if loop == "watch":
                await _subscribed(db)  # subscribed again
                await db.publish(
                    registry.membership_channel(), registry.encode_membership("join", "s9")
                )
            [record] = await joined
        assert record["id"] == "s9"
        what = "reading the registry" if loop == "_poll" else "membership channel"
        [logged] = [r for r in caplog.records if r.getMessage() == f"{what} failed"]
        assert logged.exc_info is not None and "boom" in str(logged.exc_info[1])
    finally:
        await cluster.aclose()


async def test_a_cluster_never_started_closes(redis_server: RedisProcess) -> None:
    """A Cluster made with its constructor (open_cluster() reads the membership, then
    starts the loops) closes all the same before it was started: no loop to stop."""
    from mafalda.horizontal.membership import RedisMembership

    client: aioredis.Redis = aioredis.from_url(redis_server.url)
    membership = RedisMembership(client, prefix=registry.DEFAULT_PREFIX, interval=1.0)
    cluster = Cluster(
        membership,
        token=TOKEN,
        policy="least-loaded",
        region=None,
        interval=1.0,
        grace=5.0,
        ssl=None,
        connect_timeout=10.0,
    )
    closed: list[bool] = []
    cluster.observer.on("close", lambda: closed.append(True))
    async with asyncio.timeout(10):
        await cluster.aclose()
    assert cluster.closed and closed == [True]
    with pytest.raises(ClusterError, match="closed"):
        await cluster.create_worker()


async def test_a_record_wrong_about_what_its_server_serves(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """Records that say the wrong thing about what their server serves (written by hand
    here: a server's own record never does; a stale one, of a server restarted as the
    other kind at the same address, can until its next heartbeat): a cluster router's
    child on a server said to serve a pool that serves mediasoup goes on this client's
    worker there; create_worker() on one said to serve mediasoup that serves a pool
    fails naming it."""
    from mafalda.remote import serve
    from mafalda.vertical import Mafalda

    async with (
        await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"}) as pool,
        await serve(host="127.0.0.2", token=TOKEN, target=pool) as pooled,
        await serve(host="127.0.0.3", token=TOKEN) as plain,
    ):
        # "p" says it serves a pool but serves mediasoup; "m" the other way round.
        hand = {"p": (plain, "mafalda"), "m": (pooled, "mediasoup")}
        for server_id, (server, serves) in hand.items():
            record = _hand_record(server_id, controlUrl=server.url, serves=serves)
            await db.set(registry.server_key(server_id), record, px=60000)
        async with await horizontal.connect(redis_server.url, token=TOKEN, interval=30) as c:
            assert set(c.servers) == {"p", "m"}
            router = await c.create_router(media_codecs=MEDIA_CODECS)
            transport = await router.create_direct_transport(server="p")
            assert router.server_of(transport) == "p"
            assert not c._router_workers["p"].closed  # the child is on this worker
            producer = await transport.produce(kind="audio", rtp_parameters=OPUS_RTP)
            assert producer.kind == "audio"
            # "m" is the only server said to take workers.
            with pytest.raises(RemoteError, match="server m serves a Mafalda, not mediasoup"):
                await c.create_worker()
            assert c.workers == [c._router_workers["p"]]  # none made on "m"
            router.close()


async def test_pack_takes_the_least_loaded_when_every_server_is_full(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """'pack' fills the busiest server that is not full; when every one is full, it
    places on the least loaded rather than refusing."""
    await db.set(registry.server_key("s1"), _hand_record("s1", workers=4, load=2.0))
    await db.set(registry.server_key("s2"), _hand_record("s2", workers=2, load=1.0))
    await db.set(registry.server_key("s3"), _hand_record("s3", workers=1, load=0.5))
    async with await horizontal.connect(
        redis_server.url, token=TOKEN, policy="pack", interval=30
    ) as pack:
        assert pack.place() == "s3"  # the only one not full
        await db.set(registry.server_key("s3"), _hand_record("s3", workers=3, load=1.5))
        await pack.refresh()
        assert pack.place() == "s2"


# -- media between servers -----------------------------------------------------------------


@pytest.mark.parametrize("srtp", [None, True], ids=["default-loopback", "srtp"])
async def test_pipe_between_servers_carries_rtp(cluster: Cluster, srtp: bool | None) -> None:
    worker_a = await cluster.create_worker(log_level="warn")
    worker_b = await cluster.create_worker(log_level="warn")
    server_a, server_b = cluster.server_of(worker_a), cluster.server_of(worker_b)
    assert server_a is not None and server_b is not None
    assert server_a["id"] != server_b["id"]  # spread by load
    router_a = await worker_a.create_router(media_codecs=MEDIA_CODECS)
    router_b = await worker_b.create_router(media_codecs=MEDIA_CODECS)

    send = await router_a.create_plain_transport(
        listen_info={"protocol": "udp", "ip": server_a["mediaAddress"]}, comedia=True
    )
    producer = await send.produce(
        kind="audio",
        rtp_parameters=opus_rtp_parameters(4321, OPUS_PT),
    )
    pipe_consumer, pipe_producer = await cluster.pipe_to_router(
        producer=producer, router=router_a, target_router=router_b, enable_srtp=srtp
    )
    assert pipe_producer.id == producer.id and pipe_consumer.type == "pipe"
    [pipe] = cluster.dump()["pipes"]
    assert len(pipe["transportIds"]) == 2
    assert pipe["srtp"] is bool(srtp)  # off by default between loopback addresses

    loop = asyncio.get_running_loop()
    sink, counter = await loop.create_datagram_endpoint(_Counter, local_addr=("127.0.0.1", 0))
    recv = await router_b.create_plain_transport(
        listen_info={"protocol": "udp", "ip": server_b["mediaAddress"]}, comedia=False
    )
    await recv.connect(ip="127.0.0.1", port=sink.get_extra_info("sockname")[1])
    consumer = await recv.consume(
        producer_id=producer.id, rtp_capabilities=router_b.rtp_capabilities
    )
    assert consumer.kind == "audio"
    source, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol,
        remote_addr=(send.tuple["localAddress"], send.tuple["localPort"]),
    )
    try:
        async with asyncio.timeout(10):
            seq = 0
            while counter.rtp < 20:
                source.sendto(
                    struct.pack("!BBHII", 0x80, OPUS_PT, seq, seq * 960, 4321) + bytes(80)
                )
                seq += 1
                await asyncio.sleep(0.005)
    finally:
        source.close()
        sink.close()
    assert counter.rtp >= 20

    # A second producer reuses the same pipe transports.
    producer2 = await send.produce(
        kind="audio",
        rtp_parameters=opus_rtp_parameters(4322, OPUS_PT),
    )
    await cluster.pipe_to_router(producer=producer2, router=router_a, target_router=router_b)
    assert len(cluster.dump()["pipes"]) == 1


async def test_pipe_refuses_foreign_routers_and_undoes_a_failed_pipe(
    servers: list[Server], cluster: Cluster
) -> None:
    """A router of another client (another connection to the same server) is not this
    cluster's: pipe_to_router() refuses it before creating anything. A pipe whose far
    end fails (the producer piped twice into the same router) closes the pipe consumer
    it made at the near end."""
    worker_a = await cluster.create_worker(log_level="warn")
    worker_b = await cluster.create_worker(log_level="warn")
    router_a = await worker_a.create_router(media_codecs=MEDIA_CODECS)
    router_b = await worker_b.create_router(media_codecs=MEDIA_CODECS)
    send = await router_a.create_direct_transport()
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)

    other = await remote_connect(servers[0].url, token=TOKEN)
    try:
        assert isinstance(other, RemoteMediasoup)
        foreign = await (await other.create_worker(log_level="warn")).create_router(
            media_codecs=MEDIA_CODECS
        )
        assert cluster.server_of(other) is None and cluster.server_of(foreign) is None
        with pytest.raises(ClusterError, match="both routers"):
            await cluster.pipe_to_router(producer=producer, router=router_a, target_router=foreign)
        assert cluster.dump()["pipes"] == []
    finally:
        await other.aclose()

    consumer, _ = await cluster.pipe_to_router(
        producer=producer, router=router_a, target_router=router_b
    )
    with pytest.raises(TypeError, match="already exists"):
        await cluster.pipe_to_router(producer=producer, router=router_a, target_router=router_b)
    dump = await router_a.dump()
    assert dump["mapProducerIdConsumerIds"] == [{"key": producer.id, "values": [consumer.id]}]


async def _two_routers_and_producers(cluster: Cluster) -> tuple[Any, Any, Any, list[Any]]:
    """A router on each of two new workers of the cluster's, and three audio producers on
    a direct transport of the first: (router_a, router_b, that transport, producers)."""
    worker_a = await cluster.create_worker(log_level="warn")
    worker_b = await cluster.create_worker(log_level="warn")
    router_a = await worker_a.create_router(media_codecs=MEDIA_CODECS)
    router_b = await worker_b.create_router(media_codecs=MEDIA_CODECS)
    send = await router_a.create_direct_transport()
    producers = [
        await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT))
        for ssrc in (1111, 2222, 3333)
    ]
    return router_a, router_b, send, producers


async def test_concurrent_pipes_share_one_pair_which_closes_as_a_whole(cluster: Cluster) -> None:
    """Producers piped at once between the same two routers share one pipe transport
    pair (the second caller waits for the pair the first opens). When either end
    closes, the other closes too and the pair is forgotten: the next pipe opens a new one
    (as mediasoup's pipeToRouter pairs)."""
    router_a, router_b, send, producers = await _two_routers_and_producers(cluster)
    results = await asyncio.gather(
        *(
            cluster.pipe_to_router(producer=p, router=router_a, target_router=router_b)
            for p in producers[:2]
        )
    )
    assert [piped.id for _, piped in results] == [p.id for p in producers[:2]]
    assert len((await router_a.dump())["transportIds"]) == 2  # the direct one and one pipe
    assert len((await router_b.dump())["transportIds"]) == 1
    [pipe] = cluster.dump()["pipes"]
    near, far = cluster._pipes[(router_a.id, router_b.id)]
    assert [near.id, far.id] == pipe["transportIds"]
    far.close()

    async def near_closed() -> bool:
        return near.closed

    await wait_until(near_closed)
    assert cluster.dump()["pipes"] == [] and cluster._pipes == {}
    assert (await router_a.dump())["transportIds"] == [send.id]

    _, piped = await cluster.pipe_to_router(
        producer=producers[2], router=router_a, target_router=router_b
    )
    assert piped.id == producers[2].id and not piped.closed
    [new_pipe] = cluster.dump()["pipes"]
    assert new_pipe["transportIds"] != pipe["transportIds"]


async def test_a_pipe_pair_opened_for_callers_that_give_up_or_fail(cluster: Cluster) -> None:
    """A caller cancelled while the pair opens does not undo it for the caller that waits
    with it; a pair that cannot open (the target router closed) fails its callers and
    leaves nothing open nor pending, and the next pipe tries afresh."""
    worker_a = await cluster.create_worker(log_level="warn")
    worker_b = await cluster.create_worker(log_level="warn")
    router_a = await worker_a.create_router(media_codecs=MEDIA_CODECS)
    router_b = await worker_b.create_router(media_codecs=MEDIA_CODECS)
    send = await router_a.create_direct_transport()
    first, second = [
        await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT))
        for ssrc in (1111, 2222)
    ]
    given_up = asyncio.ensure_future(
        cluster.pipe_to_router(producer=first, router=router_a, target_router=router_b)
    )
    waited = asyncio.ensure_future(
        cluster.pipe_to_router(producer=second, router=router_a, target_router=router_b)
    )
    await asyncio.sleep(0)  # both wait for the pair
    assert len(cluster._pipes_opening) == 1
    given_up.cancel()
    _, piped = await waited
    assert piped.id == second.id and given_up.cancelled()
    assert len(cluster.dump()["pipes"]) == 1 and not cluster._pipes_opening

    router_c = await worker_b.create_router(media_codecs=MEDIA_CODECS)
    router_c.close()
    with pytest.raises(InvalidStateError):
        await cluster.pipe_to_router(producer=first, router=router_a, target_router=router_c)
    assert not cluster._pipes_opening and len(cluster._pipes) == 1
    assert len((await router_a.dump())["transportIds"]) == 2  # the direct one, one pipe
    router_d = await worker_b.create_router(media_codecs=MEDIA_CODECS)
    _, piped = await cluster.pipe_to_router(producer=first, router=router_a, target_router=router_d)
    assert piped.id == first.id and len(cluster._pipes) == 2


# -- faults and membership -----------------------------------------------------------------


async def test_killed_server_is_removed_and_its_objects_close(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    workers = [await cluster.create_worker(log_level="warn") for _ in range(3)]
    by_server = {cluster.server_of(w)["id"]: w for w in workers}  # type: ignore[index]
    assert set(by_server) == {"s1", "s2", "s3"}
    victim = by_server["s2"]
    router = await victim.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_plain_transport(listen_ip="127.0.0.3")
    events: list[str] = []
    victim.on("died", lambda error: events.append("died"))
    router.on("workerclose", lambda: events.append("router"))
    transport.on("routerclose", lambda: events.append("transport"))
    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))

    servers[1].proc.send_signal(signal.SIGKILL)
    await servers[1].proc.wait()
    async with asyncio.timeout(10):
        record, reason = await left
    assert record["id"] == "s2" and reason == "expired"
    assert sorted(events) == ["died", "router", "transport"]
    assert victim.closed and router.closed and transport.closed
    assert await record_of(db, "s2") is None
    assert "s2" not in cluster.servers and "s2" not in cluster.dump()["servers"]

    # The others keep working, and new workers never land on s2.
    for survivor in (by_server["s1"], by_server["s3"]):
        r = await survivor.create_router(media_codecs=MEDIA_CODECS)
        assert (await r.dump())["id"] == r.id
    extra = await cluster.create_worker(log_level="warn")
    assert cluster.server_of(extra)["id"] in {"s1", "s3"}  # type: ignore[index]


async def test_frozen_server_is_removed_promptly_and_its_objects_close(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    """A server that freezes (SIGSTOP: no heartbeat, its sockets open, nothing answers)
    is removed after the grace period like a dead one, its proxies closed and pending
    calls failed then: not ~10 s later, when a closing handshake with it would give up."""
    workers = [await cluster.create_worker(log_level="warn") for _ in range(3)]
    by_server = {cluster.server_of(w)["id"]: w for w in workers}  # type: ignore[index]
    victim = by_server["s2"]
    router = await victim.create_router(media_codecs=MEDIA_CODECS)
    events: list[str] = []
    victim.on("died", lambda error: events.append("died"))
    router.on("workerclose", lambda: events.append("router"))
    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    servers[1].proc.send_signal(signal.SIGSTOP)
    try:
        pending = asyncio.ensure_future(router.dump())
        started = asyncio.get_running_loop().time()
        async with asyncio.timeout(8):  # grace 3 s + a heartbeat's TTL, and margin
            record, reason = await left
        took = asyncio.get_running_loop().time() - started
        assert record["id"] == "s2" and reason == "expired", (record, reason)
        assert victim.closed and router.closed and sorted(events) == ["died", "router"]
        with pytest.raises(RemoteConnectionError):
            await asyncio.wait_for(pending, 1)
        assert took < 8
        # The others keep working meanwhile.
        r = await by_server["s1"].create_router(media_codecs=MEDIA_CODECS)
        assert (await r.dump())["id"] == r.id
    finally:
        servers[1].proc.send_signal(signal.SIGCONT)


async def test_a_read_begun_before_a_leave_does_not_bring_the_server_back(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    """Registry reads run one at a time: one begun before a server's leave that ends
    after a later read does not list the server again. (The first read's answer is held
    back by a wrapper around the real read: an order of answers cannot be had on cue.)"""
    await _subscribed(db)
    await asyncio.sleep(0.2)  # and its read of what came before, which the leave waits for
    joins: list[str] = []
    cluster.observer.on("serverjoin", lambda record: joins.append(record["id"]))
    real_read = cluster.membership.read
    answered, release = asyncio.Event(), asyncio.Event()

    async def held_read() -> Any:
        snapshot = await real_read()
        answered.set()
        await release.wait()
        return snapshot

    cluster.membership.read = held_read  # type: ignore[method-assign]
    first = asyncio.ensure_future(cluster.refresh())
    await asyncio.wait_for(answered.wait(), 5)
    cluster.membership.read = real_read  # type: ignore[method-assign]
    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    servers[2].proc.send_signal(signal.SIGTERM)  # nothing on it: drained, it leaves
    await asyncio.wait_for(left, 10)
    later = asyncio.ensure_future(cluster.refresh())
    await asyncio.sleep(0.1)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, later), 5)
    assert "s3" not in cluster.servers and joins == []


async def test_aclose_with_frozen_servers_and_a_placement_under_way(
    redis_server: RedisProcess, servers: list[Server]
) -> None:
    """aclose() does not wait on a frozen server's closing handshake (the connection is
    dropped after CLIENT_CLOSE_TIMEOUT), and a placement under way fails instead of
    keeping, on the closed cluster, a connection finished after aclose()."""
    cluster = await horizontal.connect(redis_server.url, token=TOKEN, interval=0.2, grace=30.0)
    frozen = await cluster.create_worker(log_level="warn")
    for server in servers:
        server.proc.send_signal(signal.SIGSTOP)
    try:
        # Waits on a frozen server: the one connected to already, or another's connect.
        placing = asyncio.ensure_future(cluster.create_worker(log_level="warn"))
        await asyncio.sleep(0.3)
        await asyncio.wait_for(cluster.aclose(), cluster_module.CLIENT_CLOSE_TIMEOUT + 3)
        assert frozen.closed
    finally:
        for server in servers:
            server.proc.send_signal(signal.SIGCONT)
    with pytest.raises(ClusterError, match="cluster client closed"):
        await asyncio.wait_for(placing, 15)
    assert cluster._clients == {}


async def test_placements_at_once_spread(redis_server: RedisProcess, servers: list[Server]) -> None:
    """Workers and transports asked for at once spread over equally loaded servers, as
    one after the other do: those being made count as this client's already."""
    async with await horizontal.connect(
        redis_server.url, token=TOKEN, interval=60, grace=60
    ) as cluster:
        workers = await asyncio.gather(*(cluster.create_worker(log_level="warn") for _ in range(4)))
        servers_used = sorted(cluster.server_of(w)["id"] for w in workers)  # type: ignore[index]
        assert servers_used == ["s1", "s1", "s2", "s3"]
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transports = await asyncio.gather(
            *(router.create_plain_transport(listen_ip="127.0.0.1") for _ in range(6))
        )
        placed = sorted(router.server_of(t) for t in transports)
        assert placed == ["s2", "s2", "s2", "s3", "s3", "s3"]  # s1 has two workers of ours
        router.close()


async def test_bad_transport_options_are_refused_before_a_server_is_used(
    redis_server: RedisProcess, servers: list[Server]
) -> None:
    """What every server would refuse (unknown options, bad listen infos) is refused
    before the router makes a child router, and a worker for it, on one."""
    async with await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster:
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
            await router.create_plain_transport(listen_ip="127.0.0.1", bogus=1)
        with pytest.raises(ValueError, match="is not an IP address"):
            await router.create_plain_transport(listen_info={"protocol": "udp", "ip": "x"})
        with pytest.raises(ValueError, match="protocol"):
            await router.create_webrtc_transport(listen_infos=[{"protocol": "sctp"}])
        with pytest.raises(TypeError, match="create_audio_level_observer.. got an unexpected"):
            await router.create_audio_level_observer(threshold=-80, bogus=True)
        assert cluster._clients == {} and router.servers == []
        transport = await router.create_plain_transport(listen_info={"protocol": "udp"})
        assert transport.tuple["localAddress"] == cluster.media_address(router.server_of(transport))


async def test_sigterm_drains_then_deregisters(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    workers = [await cluster.create_worker(log_level="warn") for _ in range(3)]
    draining = next(w for w in workers if cluster.server_of(w)["id"] == "s3")  # type: ignore[index]
    router = await draining.create_router(media_codecs=MEDIA_CODECS)

    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    servers[2].proc.send_signal(signal.SIGTERM)

    async def marked() -> bool:
        record = await record_of(db, "s3")
        return record is not None and record["draining"] and cluster.servers["s3"]["draining"]

    await wait_until(marked)
    assert servers[2].proc.returncode is None  # still serving its objects
    # What a load balancer's probes see meanwhile: alive, not ready for new clients.
    base = cluster.servers["s3"]["controlUrl"].replace("ws://", "http://")
    async with aiohttp.ClientSession() as http:
        async with http.get(base + "readyz") as got:
            assert (got.status, await got.text()) == (503, "not ready: draining")
        async with http.get(base + "healthz") as got:
            assert (got.status, await got.text()) == (200, "ok")
    assert (await router.dump())["id"] == router.id
    for _ in range(3):
        fresh = await cluster.create_worker(log_level="warn")
        assert cluster.server_of(fresh)["id"] != "s3"  # type: ignore[index]

    assert not left.done()  # s3 stays while it has objects
    draining.close()
    async with asyncio.timeout(10):
        record, reason = await left
        assert await servers[2].proc.wait() == 0
    assert record["id"] == "s3" and reason == "left"
    assert await record_of(db, "s3") is None


async def test_a_server_at_its_limit_is_passed_over(redis_server: RedisProcess) -> None:
    """s2 takes one worker per client (--max-workers-per-session 1): with the pack policy
    (the busiest open server first) the next worker and a cluster router's child, both
    refused there (RATE_LIMITED), go to s1 instead of failing."""
    started = [
        await _start_server(redis_server.url, 1),
        await _start_server(redis_server.url, 2, "--max-workers-per-session", "1"),
    ]
    cluster = await horizontal.connect(redis_server.url, token=TOKEN, policy="pack")
    try:
        first = await cluster.create_worker(log_level="warn")
        second = await cluster.create_worker(log_level="warn")
        assert [cluster.server_of(w)["id"] for w in (first, second)] == ["s2", "s1"]  # type: ignore[index]
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_direct_transport()
        assert transport.server_id == "s1"
        # Pinned, the refusal is the caller's to see.
        with pytest.raises(RemoteError, match="max_workers_per_session is 1"):
            await router.create_direct_transport(server="s2")
        # An error of the call itself is not a refusal: no other server is tried.
        with pytest.raises(ValueError, match="invalid log_level"):
            await cluster.create_worker(log_level="nope")
        # Every server refused: nothing to fall back on.
        with pytest.raises(ClusterError, match="no live media server"):
            cluster.place(exclude={"s1", "s2"})
        # A child router failing on its own account is not passed over either.
        bad = await horizontal.connect(
            redis_server.url, token=TOKEN, worker_settings={"log_level": "nope"}
        )
        try:
            broken = await bad.create_router(media_codecs=MEDIA_CODECS)
            with pytest.raises(ValueError, match="invalid log_level"):
                await broken.create_direct_transport()
        finally:
            await bad.aclose()
    finally:
        await cluster.aclose()
        for server in started:
            server.proc.kill()
            await reap(server.proc)


async def test_redis_restart_servers_register_again(
    redis_server: RedisProcess, db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    worker = await cluster.create_worker(log_level="warn")
    leaves: list[Any] = []
    cluster.observer.on("serverleave", lambda record, reason: leaves.append(record["id"]))

    redis_server.kill()
    redis_server.start()  # same port, empty

    async def registered() -> bool:
        try:
            return all([await record_of(db, s.id) is not None for s in servers])
        except Exception:
            return False

    await wait_until(registered)
    await asyncio.sleep(0.5)  # a few registry reads by the cluster client
    assert leaves == [] and set(cluster.servers) == {"s1", "s2", "s3"}
    assert not worker.closed
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    assert (await router.dump())["id"] == router.id
    joined = asyncio.ensure_future(cluster.observer.wait_for("serverjoin"))
    late = await _start_server(redis_server.url, 4)
    try:
        async with asyncio.timeout(5):
            (record,) = await joined
        assert record["id"] == "s4"
    finally:
        late.proc.kill()
        await late.proc.wait()


async def test_media_node_record_of_a_mafalda_pool(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """A node serving a Mafalda pool reports the pool: its workers, consumers and its
    busiest worker's load; draining refuses creations but not pipe transports."""
    from mafalda.horizontal import MediaNode
    from mafalda.mediasoup.errors import InvalidStateError
    from mafalda.remote import serve
    from mafalda.vertical import Mafalda

    async with await Mafalda.start(
        num_workers=2, min_workers=2, worker_settings={"log_level": "warn"}
    ) as pool:
        async with await serve(token=TOKEN, target=pool) as server:
            assert server.mafalda is pool
            async with MediaNode(server, redis_url=redis_server.url, interval=0.1) as node:
                record = node.record()
                assert record["serves"] == "mafalda" and record["workers"] == 2
                client = await remote_connect(server.url, token=TOKEN)
                assert isinstance(client, RemoteMafalda)
                router = await client.create_router(media_codecs=MEDIA_CODECS)
                send = await router.create_direct_transport()
                producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
                recv = await router.create_direct_transport()
                await recv.consume(
                    producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
                )
                record = node.record()
                assert record["consumers"] == 1
                loads = [w["load"] for w in pool.stats()["workers"]]
                assert record["load"] == round(max(loads), 4)
                assert not await node.drain(0)  # objects left: deadline passed
                with pytest.raises(InvalidStateError, match="draining"):
                    await router.create_direct_transport()
                pipe = await router.create_pipe_transport(listen_ip="127.0.0.1")
                assert pipe.id
                await client.aclose()
                assert await node.drain(5)


def test_serve_cluster_arguments() -> None:
    from mafalda import cli

    args = cli.build_parser().parse_args(
        ["serve", "--cluster", "redis://h:1", "--region", "eu", "--announce-ip", "10.0.0.1"]
        + ["--server-id", "a", "--heartbeat", "1", "--drain-timeout", "3"]
    )
    assert (args.cluster, args.region, args.announce_ip, args.server_id) == (
        "redis://h:1",
        "eu",
        "10.0.0.1",
        "a",
    )
    assert (args.heartbeat, args.drain_timeout) == (1.0, 3.0)


async def test_serve_without_redis_fails_cleanly() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mafalda.cli",
        "serve",
        "--port",
        "0",
        "--token",
        TOKEN,
        "--cluster",
        f"redis://127.0.0.1:{free_port()}/0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert b"cannot register in Redis" in err


async def test_media_node_in_process(redis_server: RedisProcess, db: aioredis.Redis) -> None:
    """The node's lifecycle without a subprocess: record, drain (aborted, then done)."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with await serve(host="0.0.0.0", token=TOKEN) as server:
        for interval in (0, float("nan"), float("inf"), True):
            with pytest.raises(ValueError, match="interval must be a finite number"):
                MediaNode(server, redis_url=redis_server.url, interval=interval)
        with pytest.raises(ValueError, match="interval must be at least 1/3000 s"):
            MediaNode(server, redis_url=redis_server.url, interval=1e-5)
        with pytest.raises(ValueError, match="server id"):
            MediaNode(server, redis_url=redis_server.url, server_id="a:b")
        node = MediaNode(
            server, redis_url=redis_server.url, media_address="127.0.0.1", interval=0.1
        )
        async with node:
            assert node.control_url == f"ws://127.0.0.1:{server.port}/"
            record = await record_of(db, node.id)
            assert record == node.record() and record["region"] is None
            client = await remote_connect(f"ws://127.0.0.1:{server.port}/", token=TOKEN)
            assert isinstance(client, RemoteMediasoup)
            worker = await client.create_worker(log_level="warn")

            async def counted() -> bool:
                record = await record_of(db, node.id)
                return record is not None and record["workers"] == 1

            await wait_until(counted)
            abort = asyncio.Event()
            abort.set()
            assert not await node.drain(5, abort=abort)  # a second signal: leave now
            assert (await record_of(db, node.id))["draining"]  # type: ignore[index]
            assert not await node.drain(0)  # deadline passed with objects left
            worker.close()
            assert await node.drain(5)
            await client.aclose()
        assert await record_of(db, node.id) is None
        await node.aclose()  # closing twice does nothing
        with pytest.raises(ValueError, match=r"every interface \(0.0.0.0\).*--announce-ip"):
            MediaNode(server, redis_url=redis_server.url)
        never = MediaNode(
            server, redis_url=redis_server.url, server_id="never", media_address="127.0.0.1"
        )
        await never.aclose()  # never started: nothing to stop, nothing registered
        assert not never.registered and await record_of(db, "never") is None


async def test_a_server_draining_before_its_record_says_so_is_passed_over(
    redis_server: RedisProcess,
) -> None:
    """A server that started draining (its record not rewritten yet: a heartbeat away)
    refuses creations with ServerDrainingError, an InvalidStateError: a cluster client
    tries the next server, for create_worker() and for a cluster router's transport;
    a transport pinned there gets the refusal."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import ServerDrainingError, serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        MediaNode(b, redis_url=redis_server.url, server_id="b", interval=60),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        assert set(cluster.servers) == {"a", "b"}
        a.draining = True  # as MediaNode.drain() starts, before its record is rewritten
        assert not cluster.servers["a"]["draining"]
        worker = await cluster.create_worker()  # "a" first (least loaded, by id), refused
        assert cluster.server_of(worker)["id"] == "b"  # type: ignore[index]
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_plain_transport(listen_ip="127.0.0.1")
        assert router.server_of(transport) == "b"
        with pytest.raises(ServerDrainingError, match="media server draining"):
            await router.create_plain_transport(server="a", listen_ip="127.0.0.1")
        assert issubclass(ServerDrainingError, InvalidStateError)
        router.close()


async def test_a_router_with_a_child_on_a_server_that_starts_draining_goes_elsewhere(
    redis_server: RedisProcess,
) -> None:
    """ "pack" keeps placing a router's transports on the server it uses; that server
    starts draining (its record not rewritten yet): the router's child there refuses the
    next transport and observer, which are made on the other server instead."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        MediaNode(b, redis_url=redis_server.url, server_id="b", interval=60),
        await horizontal.connect(
            redis_server.url, token=TOKEN, interval=60, policy="pack"
        ) as cluster,
    ):
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        first = await router.create_plain_transport(listen_ip="127.0.0.1")
        used = router.server_of(first)
        other = "a" if used == "b" else "b"
        (a if used == "a" else b).draining = True
        second = await router.create_plain_transport(listen_ip="127.0.0.1")
        assert router.server_of(second) == other
        observer = await router.create_audio_level_observer()
        assert router.server_of(observer) == other
        router.close()


async def test_media_node_outlives_a_redis_outage(
    redis_server: RedisProcess,
    db: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis killed under a running node: its heartbeats fail, with one warning (not one
    per beat), and it registers again once Redis is back. The beat is wrapped to count
    the failures (it still does what it does)."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with await serve(host="127.0.0.1", token=TOKEN) as server:
        node = MediaNode(server, redis_url=redis_server.url, interval=0.05)
        real_beat = node._beat
        failed = 0

        async def counted_beat() -> None:
            nonlocal failed
            try:
                await real_beat()
            except Exception:
                failed += 1
                raise

        monkeypatch.setattr(node._heartbeat, "step", counted_beat)
        with caplog.at_level("INFO", logger="mafalda.horizontal.node"):
            async with node:
                redis_server.kill()

                async def failing() -> bool:
                    return failed >= 3

                await wait_until(failing)
                redis_server.start()  # same port, empty

                async def registered() -> bool:
                    return "registered again in Redis" in caplog.text

                await wait_until(registered)
                with contextlib.suppress(Exception):  # db's connection died with Redis
                    await db.ping()
                assert await record_of(db, node.id) is not None
                assert caplog.text.count("heartbeat to Redis failed") == 1
                assert caplog.text.count("registered again in Redis") == 1
        assert await record_of(db, node.id) is None


async def test_media_node_closes_when_a_cancellation_is_swallowed(
    redis_server: RedisProcess, db: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aclose() returns and deregisters even when the heartbeat's cancellation is lost.

    On Python 3.11, redis-py writes commands under asyncio.wait_for(), which returns the
    result instead of raising when the cancellation lands as the write completes (it
    made test_cluster_router_drain time out under load: s3 never left). That race cannot
    be produced on demand, so the record's SET here does what it does then: swallows
    the cancellation and completes."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with await serve(host="127.0.0.1", token=TOKEN) as server:
        node = MediaNode(server, redis_url=redis_server.url, interval=0.05)
        real_set = node._redis.set
        writing = asyncio.Event()
        swallowed = False

        async def set_swallowing_cancellation(*args: Any, **kwargs: Any) -> Any:
            nonlocal swallowed
            writing.set()
            if not swallowed:  # once: the task stays cancellable afterwards
                try:
                    await asyncio.sleep(0.2)
                except asyncio.CancelledError:
                    swallowed = True
            return await real_set(*args, **kwargs)

        monkeypatch.setattr(node._redis, "set", set_swallowing_cancellation)
        await node.start()
        writing.clear()
        await writing.wait()  # the heartbeat is writing the record
        try:
            async with asyncio.timeout(5):
                await node.aclose()
        finally:
            task = node._heartbeat._task
            assert task is not None
            if not task.done():  # a heartbeat still running fails the test
                task.cancel()
        assert swallowed and not task.cancelled()  # it ended by itself
        assert await record_of(db, node.id) is None


# -- Mafalda-horizontal: a router spanning servers -----------------------------------------


async def test_cluster_router_validates_before_anything(cluster: Cluster) -> None:
    from mafalda.mediasoup.errors import InvalidStateError, UnsupportedError

    with pytest.raises(TypeError):
        await cluster.create_router(media_codecs=[{"kind": "audio"}])
    with pytest.raises(UnsupportedError):
        await cluster.create_router(
            media_codecs=[{"kind": "audio", "mimeType": "audio/nope", "clockRate": 1}]
        )
    with pytest.raises(TypeError, match="app_data"):
        await cluster.create_router(app_data="x")  # type: ignore[arg-type]
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    assert cluster.routers == [router] and router.servers == []  # nothing on any server yet
    with pytest.raises(ClusterError, match="no live media server 'nope'"):
        await router.create_plain_transport(server="nope", listen_ip="127.0.0.1")
    with pytest.raises(TypeError, match="ClusterWebRtcServer"):
        await router.create_webrtc_transport(webrtc_server=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="destination"):
        await router.pipe_to_router(router=router, producer_id="x")
    other = await cluster.create_router(media_codecs=MEDIA_CODECS)
    with pytest.raises(TypeError, match="missing"):
        await router.pipe_to_router(router=other)
    with pytest.raises(TypeError, match="just"):
        await router.pipe_to_router(router=other, producer_id="a", data_producer_id="b")
    with pytest.raises(ValueError, match='Producer with id "a" not found'):
        await router.pipe_to_router(router=other, producer_id="a")
    with pytest.raises(ValueError, match='DataProducer with id "a" not found'):
        await router.pipe_to_router(router=other, data_producer_id="a")
    assert router.servers == []  # nothing reached a server
    direct = await router.create_direct_transport()
    data_producer = await direct.produce_data()
    # A transport is its proxy: what is set on it is set there.
    direct.app_data = {"room": "a"}
    assert direct.proxy.app_data == {"room": "a"} and direct.app_data == {"room": "a"}
    with pytest.raises(ValueError, match="not on this router"):
        other.server_of(data_producer)
    with pytest.raises(TypeError, match="ClusterRouter"):
        await router.pipe_to_router(router=object(), data_producer_id=data_producer.id)  # type: ignore[arg-type]
    other.close()
    with pytest.raises(InvalidStateError, match="destination"):
        await router.pipe_to_router(router=other, data_producer_id=data_producer.id)
    router.close()
    assert router.closed and cluster.routers == []


async def test_cluster_router_spans_three_servers(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    """Producer on s1, consumers on s2 and s3: one copy per server, from s1 (a tree);
    killing s2 closes its objects, s1 → s3 keeps forwarding."""
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    send = await router.create_plain_transport(
        server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
    )
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    assert router.server_of(send) == "s1" and router.server_of(producer) == "s1"
    sinks = {s: await _sink(router, s) for s in ("s2", "s3")}
    for server, (transport, _, _) in sinks.items():
        # Listening on all interfaces, the transport announces its server's media address.
        assert transport.tuple["localAddress"] == cluster.media_address(server)
    consumers = {
        s: await t.consume(producer_id=producer.id, rtp_capabilities=router.rtp_capabilities)
        for s, (t, _, _) in sinks.items()
    }
    extra = await sinks["s2"][0].consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    view = router.cluster_dump()
    assert sorted((p["from"], p["to"], p["users"]) for p in view["pipes"]) == [
        ("s1", "s2", 2),
        ("s1", "s3", 1),
    ]
    assert sorted((p["servers"], p["srtp"]) for p in view["pipeTransportPairs"]) == [
        (["s1", "s2"], False),  # loopback addresses: no SRTP by default
        (["s1", "s3"], False),
    ]
    assert cluster.dump()["routers"] == [view]
    # The scale model's count for the same room is what the real cluster made.
    model = load_bench("scale_model").pipe_counts(
        {producer.id: "s1"}, [(producer.id, s) for s in ("s2", "s3", "s2")], "mesh"
    )
    assert model == {"pipes": len(view["pipes"]), "pairs": 2, "hops": 1}
    dump = await router.dump()
    assert sorted(dump["transportIds"]) == sorted([send.id] + [t.id for t, _, _ in sinks.values()])
    [entry] = dump["mapProducerIdConsumerIds"]
    assert entry["key"] == producer.id
    assert sorted(entry["values"]) == sorted([extra.id] + [c.id for c in consumers.values()])

    with _Sender(send):
        await asyncio.gather(*(_received(counter) for _, counter, _ in sinks.values()))
        # Pause reaches the far servers' consumers, and resume too.
        paused = asyncio.ensure_future(consumers["s3"].events.wait_for("producerpause"))
        await producer.pause()
        async with asyncio.timeout(5):
            await paused
        resumed = asyncio.ensure_future(consumers["s3"].events.wait_for("producerresume"))
        await producer.resume()
        async with asyncio.timeout(5):
            await resumed

        closed: list[str] = []
        b_transport = sinks["s2"][0]
        b_transport.on("routerclose", lambda: closed.append("transport"))
        consumers["s2"].on("transportclose", lambda: closed.append("consumer"))
        left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
        servers[1].proc.send_signal(signal.SIGKILL)
        await servers[1].proc.wait()
        async with asyncio.timeout(10):
            record, _ = await left
        assert record["id"] == "s2"
        assert sorted(closed) == ["consumer", "transport"]
        assert b_transport.closed and consumers["s2"].closed and extra.closed
        assert router.servers == ["s1", "s3"] and not router.closed
        assert [(p["from"], p["to"]) for p in router.cluster_dump()["pipes"]] == [("s1", "s3")]
        await _received(sinks["s3"][1])  # s1 → s3 still forwards

        # A new transport lands on a live server, and consumes from s1 too.
        late = await router.create_plain_transport(listen_ip="127.0.0.1")
        assert router.server_of(late) in {"s1", "s3"}

    # Unused pipes, pairs and children close: the last consumer on s3 frees the s1 → s3
    # pipe; the last transport on s3 frees the child router there and the worker.
    consumers["s3"].close()
    assert router.cluster_dump()["pipes"] == []
    assert router.cluster_dump()["pipeTransportPairs"] == []
    for transport, _, sock in sinks.values():
        transport.close()
        sock.close()
    late.close()
    assert router.servers == ["s1"]
    # The worker there stays a while (worker_idle) for a room that comes back, then goes.
    assert cluster.dump()["servers"]["s3"]["clientWorkers"] != []

    async def s3_empty() -> bool:
        record = await record_of(db, "s3")
        return record is not None and record["workers"] == 0

    await wait_until(s3_empty)
    router.close()
    assert send.closed and producer.closed


async def test_a_room_back_within_worker_idle_reuses_the_router_worker(
    redis_server: RedisProcess, servers: list[Server]
) -> None:
    """The client's router worker on a server outlives its last child router by
    worker_idle seconds: a room that comes back meanwhile reuses it (no new worker), and
    its leaving starts the wait anew; a draining server's goes at once."""
    async with await horizontal.connect(
        redis_server.url, token=TOKEN, interval=0.2, grace=3.0, worker_idle=60
    ) as cluster:
        await wait_until(_has_servers(cluster, 3))
        first = await cluster.create_router(media_codecs=MEDIA_CODECS)
        await first.create_direct_transport(server="s2")
        worker = cluster._router_workers["s2"]
        first.close()
        waiting = cluster._idle_timers["s2"]
        assert not worker.closed
        second = await cluster.create_router(media_codecs=MEDIA_CODECS)
        await second.create_direct_transport(server="s2")
        assert cluster._router_workers["s2"] is worker  # reused
        second.close()
        rearmed = cluster._idle_timers["s2"]
        assert waiting.cancelled() and not rearmed.cancelled()
        assert not worker.closed
        closed = asyncio.ensure_future(worker.observer.wait_for("close"))
        servers[1].proc.send_signal(signal.SIGTERM)  # draining: no reason to wait
        async with asyncio.timeout(10):
            await closed
        assert "s2" not in cluster._router_workers
        assert rearmed.cancelled()  # no timer left behind for a worker gone


async def test_an_idle_timer_spares_the_router_worker_a_room_uses_again(
    redis_server: RedisProcess, servers: list[Server]
) -> None:
    """A room that comes back within worker_idle reuses the router worker, and the wait
    started by the room before it is not cancelled (it is rearmed when this room leaves):
    when it ends the worker is in use, and stays."""
    async with await horizontal.connect(
        redis_server.url, token=TOKEN, interval=0.2, grace=3.0, worker_idle=1.0
    ) as cluster:
        await wait_until(_has_servers(cluster, 3))
        first = await cluster.create_router(media_codecs=MEDIA_CODECS)
        await first.create_direct_transport(server="s2")
        worker = cluster._router_workers["s2"]
        first.close()
        waiting = cluster._idle_timers["s2"]
        second = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await second.create_direct_transport(server="s2")
        # (A room back within the second; else this test says the machine is too slow.)
        assert cluster._idle_timers.get("s2") is waiting and not waiting.cancelled()
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.call_at(waiting.when() + 0.001, ended.set_result, None)  # right after it
        async with asyncio.timeout(10):
            await ended
        assert "s2" not in cluster._idle_timers  # its time came
        assert cluster._router_workers["s2"] is worker and not worker.closed
        producer = await transport.produce(kind="audio", rtp_parameters=OPUS_RTP)
        assert not transport.closed and producer.kind == "audio"
        second.close()


async def test_cluster_router_data_and_observers_across_servers(cluster: Cluster) -> None:
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    source = await router.create_direct_transport(server="s1")
    sink = await router.create_direct_transport(server="s3")
    data_producer = await source.produce_data(label="chat")
    data_consumer = await sink.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.label == "chat"
    assert [(p["kind"], p["from"], p["to"]) for p in router.cluster_dump()["pipes"]] == [
        ("data", "s1", "s3")
    ]
    received = asyncio.ensure_future(data_consumer.events.wait_for("message"))
    # At once, once: the pipe's SCTP association is up before consume_data() returns.
    data_producer.send("hello")
    async with asyncio.timeout(5):
        message, ppid = await received
    assert bytes(message) == b"hello" and ppid == 51

    # An RTP observer on another server than the producer: the producer is piped to it.
    producer = await source.produce(kind="audio", rtp_parameters=OPUS_RTP)
    observer = await router.create_audio_level_observer(server="s2")
    assert router.server_of(observer) == "s2"
    await observer.add_producer(producer_id=producer.id)
    pipes = router.cluster_dump()["pipes"]
    assert ("media", "s1", "s2", 1) in [(p["kind"], p["from"], p["to"], p["users"]) for p in pipes]
    dump = await router.dump()
    assert dump["rtpObserverIds"] == [observer.id]
    await observer.remove_producer(producer_id=producer.id)
    assert all(p["kind"] == "data" for p in router.cluster_dump()["pipes"])
    observer.close()
    data_consumer.close()
    assert router.cluster_dump()["pipes"] == [] and router.servers == ["s1", "s3"]
    # A router that another's close event closes, as the cluster closes them, closes once.
    breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
    closes: list[str] = []
    breakout.observer.on("close", lambda: closes.append("close"))
    breakout.events.on("workerclose", lambda: closes.append("workerclose"))
    router.events.on("workerclose", breakout.close)
    await cluster.aclose()
    assert router.closed and source.closed
    assert breakout.closed and closes == ["close"]


async def test_cluster_router_makes_one_id_once(cluster: Cluster) -> None:
    """One router, one id space across its servers: a producer (or data producer) id it
    has on one server is refused on another, two produce() calls with one id on two
    servers at once make one, before anything is sent."""
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    one = await router.create_direct_transport(server="s1")
    two = await router.create_direct_transport(server="s2")
    first = await one.produce(id="taken", kind="audio", rtp_parameters=OPUS_RTP)
    with pytest.raises(TypeError, match='a Producer with same id "taken" already exists'):
        await two.produce(id="taken", kind="audio", rtp_parameters=OPUS_RTP)
    made = await asyncio.gather(
        one.produce_data(id="once", label="a"),
        two.produce_data(id="once", label="b"),
        return_exceptions=True,
    )
    assert not isinstance(made[0], BaseException) and made[0].label == "a"
    assert isinstance(made[1], TypeError) and 'DataProducer with same id "once"' in str(made[1])
    assert router.server_of(first) == "s1" and router.server_of(made[0]) == "s1"
    first.close()
    again = await two.produce(id="taken", kind="audio", rtp_parameters=OPUS_RTP)
    assert router.server_of(again) == "s2"


async def test_cluster_router_drain(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    """SIGTERM s3: new transports go elsewhere, s3 itself refuses creations; it leaves
    once the router's last transport there closed."""
    from mafalda.mediasoup.errors import InvalidStateError

    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    on_s3 = await router.create_plain_transport(server="s3", listen_ip="127.0.0.4")
    producer = await on_s3.produce(kind="audio", rtp_parameters=OPUS_RTP)
    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    servers[2].proc.send_signal(signal.SIGTERM)

    async def marked() -> bool:
        record = cluster.servers.get("s3")
        return record is not None and record["draining"]

    await wait_until(marked)
    for _ in range(3):
        transport = await router.create_plain_transport(listen_ip="127.0.0.1")
        assert router.server_of(transport) != "s3"
    with pytest.raises(ClusterError, match="draining"):
        await router.create_plain_transport(server="s3", listen_ip="127.0.0.4")
    # The server refuses by itself too (a client that did not see the record yet).
    worker = await cluster.router_worker("s3")
    with pytest.raises(InvalidStateError, match="draining"):
        await worker.create_router(media_codecs=MEDIA_CODECS)
    assert (await on_s3.dump())["id"] == on_s3.id  # what is there keeps working
    # ... and reaches new consumers elsewhere (a pipe transport is not a placement).
    elsewhere = await router.create_plain_transport(listen_ip="127.0.0.1")
    consumer = await elsewhere.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    assert [p["from"] for p in router.cluster_dump()["pipes"]] == ["s3"]
    gone = asyncio.ensure_future(consumer.events.wait_for("producerclose"))

    assert not left.done()  # s3 stays while it has objects
    on_s3.close()
    try:
        async with asyncio.timeout(15):
            await gone
            record, reason = await left
    except TimeoutError:  # say where it stuck (the timeout cancels what it awaited)
        pytest.fail(
            f"s3 did not leave: producerclose {not gone.cancelled()}, "
            f"serverleave {not left.cancelled()}, "
            f"s3 exit {servers[2].proc.returncode}, pipes {router.cluster_dump()}, "
            f"children {list(router._children)}, homes {router._home}, "
            f"workers {list(cluster._router_workers)}, record {cluster.servers.get('s3')}"
        )
    assert record["id"] == "s3" and reason == "left"
    async with asyncio.timeout(10):
        assert await servers[2].proc.wait() == 0
    assert "s3" not in router.servers and router.cluster_dump()["pipes"] == []


@pytest.fixture
def hosts() -> Iterator[NetnsLab | None]:
    """Three separate network hosts (namespaces on a bridge) where the machine allows
    it; None otherwise (the test then uses loopback addresses and says so)."""
    lab = NetnsLab(3)
    try:
        if os.geteuid() != 0:
            raise OSError("not root")
        lab.create()
    except OSError as error:
        print(f"network namespaces unavailable ({error}): loopback addresses used")
        yield None
        return
    try:
        yield lab
    finally:
        lab.destroy()


async def test_room_across_separate_hosts(
    hosts: NetnsLab | None, record_property: Callable[[str, object], None]
) -> None:
    """The room of the issue on three hosts, each with its own IP address: a producer on
    A, consumers on B and C; SRTP on the pipes (the addresses are not loopback); B killed:
    its objects close, A keeps forwarding to C."""
    which = "network namespaces" if hosts is not None else "loopback addresses"
    print(f"hosts: {which}")
    record_property("hosts", which)
    gateway = hosts.gateway if hosts is not None else "127.0.0.1"
    redis = RedisProcess(host=gateway)
    redis.start()
    procs: list[asyncio.subprocess.Process] = []
    try:
        for index in (1, 2, 3):
            prefix = hosts.exec_prefix(index) if hosts is not None else []
            address = hosts.addresses[index - 1] if hosts is not None else f"127.0.0.{index + 1}"
            command = serve_command(redis.url, index, HEARTBEAT, host=address)
            proc = await asyncio.create_subprocess_exec(
                *prefix, *command, stdout=asyncio.subprocess.PIPE
            )
            procs.append(proc)
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert "listening on" in line, line
        async with await horizontal.connect(
            redis.url, token=TOKEN, interval=0.2, grace=1.5
        ) as cluster:
            await wait_until(_has_servers(cluster, 3))
            router = await cluster.create_router(media_codecs=MEDIA_CODECS)
            send = await router.create_plain_transport(
                server="s1", listen_info={"protocol": "udp", "ip": "0.0.0.0"}, comedia=True
            )
            assert send.tuple["localAddress"] == cluster.media_address("s1")
            producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            sinks = {s: await _sink(router, s, gateway) for s in ("s2", "s3")}
            for transport, _, _ in sinks.values():
                await transport.consume(
                    producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
                )
            pairs = router.cluster_dump()["pipeTransportPairs"]
            srtp = hosts is not None  # on by default unless both ends are loopback
            assert sorted((p["servers"], p["srtp"]) for p in pairs) == [
                (["s1", "s2"], srtp),
                (["s1", "s3"], srtp),
            ]
            with _Sender(send):
                await asyncio.gather(*(_received(c) for _, c, _ in sinks.values()))
                left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
                procs[1].kill()
                await procs[1].wait()
                async with asyncio.timeout(10):
                    await left
                assert sinks["s2"][0].closed and router.servers == ["s1", "s3"]
                await _received(sinks["s3"][1])
            for _, _, sock in sinks.values():
                sock.close()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()
        redis.kill()


def _has_servers(cluster: Cluster, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        await cluster.refresh()
        return len(cluster.servers) == count

    return check


async def test_redis_auth_and_tls(tmp_path: Any) -> None:
    """Servers and clients reach a Redis that wants a password, over TLS (rediss:// with
    the CA given in the URL); a wrong password is refused with a clear error."""
    import shutil

    from redis.exceptions import AuthenticationError
    from redis.exceptions import ConnectionError as RedisConnectionError

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, cert, key = tls_files(tmp_path)
    redis = RedisProcess(
        "127.0.0.1",
        "--requirepass", "s3cret",
        "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
        "--tls-auth-clients", "no",
        scheme="rediss",
    )  # fmt: skip
    redis.start()
    url = f"rediss://:s3cret@127.0.0.1:{redis.port}/0?ssl_ca_certs={ca}"
    try:
        proc = await asyncio.create_subprocess_exec(
            *serve_command(url, 1, HEARTBEAT), stdout=asyncio.subprocess.PIPE
        )
        try:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert "listening on" in line, line
            async with await horizontal.connect(url, token=TOKEN, interval=0.2) as cluster:
                assert set(cluster.servers) == {"s1"}
                worker = await cluster.create_worker(log_level="warn")
                assert cluster.server_of(worker)["id"] == "s1"  # type: ignore[index]
            wrong = url.replace("s3cret", "wrong")
            with pytest.raises(AuthenticationError):
                await horizontal.connect(wrong, token=TOKEN)
            plain = f"redis://:s3cret@127.0.0.1:{redis.port}/0"
            with pytest.raises(RedisConnectionError):  # not TLS: the server hangs up
                await horizontal.connect(plain, token=TOKEN, interval=0.2)
        finally:
            proc.kill()
            await proc.wait()
    finally:
        redis.kill()


async def test_cluster_router_over_mafalda_servers(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """Servers that serve a Mafalda pool (`mafalda serve --mafalda --cluster`): a cluster
    router's children live in their pools (vertical inside each server, horizontal
    across); they take no create_worker()."""
    started = await asyncio.gather(
        _start_server(redis_server.url, 5, "--mafalda", "--num-workers", "2"),
        # One worker: the two cluster routers' children there share it (and its ids).
        _start_server(redis_server.url, 6, "--mafalda", "--num-workers", "1"),
    )
    try:
        async with await horizontal.connect(
            redis_server.url, token=TOKEN, interval=0.2, grace=1.5
        ) as cluster:
            await wait_until(_has_servers(cluster, 2))
            assert {r["serves"] for r in cluster.servers.values()} == {"mafalda"}
            with pytest.raises(ClusterError, match="no live media server"):
                await cluster.create_worker()
            router = await cluster.create_router(media_codecs=MEDIA_CODECS)
            send = await router.create_plain_transport(
                server="s5", listen_info={"protocol": "udp", "ip": "127.0.0.6"}, comedia=True
            )
            producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            sinks = [await _sink(router, "s6") for _ in range(2)]
            for transport, _, _ in sinks:
                await transport.consume(
                    producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
                )
            [pipe] = router.cluster_dump()["pipes"]
            assert (pipe["from"], pipe["to"], pipe["users"]) == ("s5", "s6", 2)
            # Piped into another cluster router: the copy is made in s5's pool (which
            # tells its routers' ids apart by itself), known there by the original id.
            breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
            await router.pipe_to_router(router=breakout, producer_id=producer.id)
            assert breakout.server_of(producer) == "s5"
            near = await _sink(breakout, "s5")
            consumer = await near[0].consume(
                producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
            )
            assert consumer.producer_id == producer.id
            sinks.append(near)
            # On s6 too, where the room's copy of the producer already has that id.
            far = await _sink(breakout, "s6")
            consumer = await far[0].consume(
                producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
            )
            assert consumer.producer_id == producer.id
            sinks.append(far)
            with _Sender(send):  # one sender: the comedia transport takes its first address
                await asyncio.gather(*(_received(c) for _, c, _ in sinks))

            async def counted() -> bool:
                record = await record_of(db, "s6")
                return record is not None and record["consumers"] >= 2

            await wait_until(counted)
            for _, _, sock in sinks:
                sock.close()
            direct = await router.create_direct_transport(server="s5")
            data_producer = await direct.produce_data(label="notes")
            await router.pipe_to_router(router=breakout, data_producer_id=data_producer.id)
            reader = await breakout.create_direct_transport(server="s6")
            data_consumer = await reader.consume_data(data_producer_id=data_producer.id)
            received = asyncio.ensure_future(data_consumer.events.wait_for("message"))
            data_producer.send("hello")
            async with asyncio.timeout(5):
                message, _ = await received
            assert bytes(message) == b"hello"
            router.close()
            assert send.closed
    finally:
        for server in started:
            server.proc.kill()
            await server.proc.wait()


async def test_cluster_router_pipe_to_router(cluster: Cluster) -> None:
    """A producer (and a data producer) of one cluster router piped into another: the copy
    is made on the producer's server; the target's consumers on other servers get it,
    there too where the first router's consumers have a copy by the same id (on the same
    worker of this client: the target's consume failed with the worker's 'Channel
    request handler with ID ... already exists')."""
    room = await cluster.create_router(media_codecs=MEDIA_CODECS)
    breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
    send = await room.create_plain_transport(
        server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
    )
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    # The room's consumers on s2 have a copy of the producer there, by its id.
    room_sink = await room.create_direct_transport(server="s2")
    await room_sink.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
    result = await room.pipe_to_router(router=breakout, producer_id=producer.id)
    assert result["pipeProducer"].kind == "audio"
    assert breakout.server_of(producer) == "s1"  # known by the original id, on s1
    sink, counter, sock = await _sink(breakout, "s2")
    consumer = await sink.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
    assert consumer.producer_id == producer.id
    assert [(p["from"], p["to"]) for p in breakout.cluster_dump()["pipes"]] == [("s1", "s2")]
    # A second copy is refused, as mediasoup's target router does, before anything is made.
    dumps = room.cluster_dump(), breakout.cluster_dump()
    with pytest.raises(TypeError, match=f'a Producer with same id "{producer.id}" already'):
        await room.pipe_to_router(router=breakout, producer_id=producer.id)
    assert (room.cluster_dump(), breakout.cluster_dump()) == dumps
    with _Sender(send):
        await _received(counter)
    sock.close()

    direct = await room.create_direct_transport(server="s1")
    data_producer = await direct.produce_data(label="notes")
    room_reader = await room.create_direct_transport(server="s3")
    await room_reader.consume_data(data_producer_id=data_producer.id)
    piped = await room.pipe_to_router(router=breakout, data_producer_id=data_producer.id)
    assert piped["pipeDataProducer"].label == "notes"
    with pytest.raises(TypeError, match="a DataProducer with same id"):
        await room.pipe_to_router(router=breakout, data_producer_id=data_producer.id)
    reader = await breakout.create_direct_transport(server="s3")
    data_consumer = await reader.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.label == "notes"
    assert data_consumer.data_producer_id == data_producer.id
    received = asyncio.ensure_future(data_consumer.events.wait_for("message"))
    data_producer.send("hello")
    async with asyncio.timeout(5):
        message, _ = await received
    assert bytes(message) == b"hello"

    # The original closes: the copy and its consumers go with it.
    closed = asyncio.ensure_future(consumer.events.wait_for("producerclose"))
    producer.close()
    async with asyncio.timeout(5):
        await closed
    assert consumer.closed


async def test_two_cluster_routers_bring_one_producer_to_a_server_at_once(
    cluster: Cluster,
) -> None:
    """A room and its breakout room (fed by pipe_to_router) bring the same producer to
    s3 at the same time. Their children there share this client's worker, where ids are
    unique: the first copy to be made there takes an id of its own while the other pipe
    is still opening, which may take the original's (both took it: the second consume
    failed with the worker's 'already exists'). Both consumers get the stream."""
    room = await cluster.create_router(media_codecs=MEDIA_CODECS)
    breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
    send = await room.create_plain_transport(
        server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
    )
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    await room.pipe_to_router(router=breakout, producer_id=producer.id)
    sinks = [await _sink(room, "s3"), await _sink(breakout, "s3")]
    consumers = await asyncio.gather(
        *(
            transport.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
            for transport, _, _ in sinks
        )
    )
    assert [c.producer_id for c in consumers] == [producer.id, producer.id]
    assert [p["to"] for p in room.cluster_dump()["pipes"]] == ["s3"]
    assert [p["to"] for p in breakout.cluster_dump()["pipes"]] == ["s3"]
    with _Sender(send):
        await asyncio.gather(*(_received(counter) for _, counter, _ in sinks))
    for _, _, sock in sinks:
        sock.close()


@pytest.mark.parametrize("closing", ["producer", "router"])
async def test_cluster_closed_while_a_pipe_opens(cluster: Cluster, closing: str) -> None:
    """As on one machine (test_mafalda): the consume waiting for a pipe between servers
    fails with InvalidStateError when the producer closes meanwhile (it failed with a
    KeyError) or the cluster router does (it waited forever), and no pipe stays."""
    from mafalda.mediasoup.errors import InvalidStateError

    room = await cluster.create_router(media_codecs=MEDIA_CODECS)
    send = await room.create_plain_transport(
        server="s1", listen_info={"protocol": "udp", "ip": "127.0.0.2"}, comedia=True
    )
    producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
    far = await room.create_plain_transport(
        server="s2", listen_info={"protocol": "udp", "ip": "127.0.0.3"}
    )
    attempt = asyncio.ensure_future(
        far.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
    )
    await asyncio.sleep(0)  # the pipe is on its way
    (producer if closing == "producer" else room).close()
    message = "original Producer closed" if closing == "producer" else "Router closed"
    with pytest.raises(InvalidStateError, match=message):
        await asyncio.wait_for(attempt, 10)
    assert room.cluster_dump()["pipes"] == []
    room.close()


# -- ClusterWebRtcServer -------------------------------------------------------------------


async def _webrtc_client(transport: Any) -> Callable[[], Awaitable[None]]:
    """A real WebRTC endpoint (aiortc's ICE agent and DTLS, as a browser's) connected to
    a WebRtcTransport through its UDP candidates: returns once DTLS is up on both ends,
    with the function that stops it."""
    from aiortc import (
        RTCCertificate,
        RTCDtlsFingerprint,
        RTCDtlsParameters,
        RTCDtlsTransport,
        RTCIceCandidate,
        RTCIceGatherer,
        RTCIceParameters,
        RTCIceTransport,
    )

    gatherer = RTCIceGatherer()
    await gatherer.gather()
    ice = RTCIceTransport(gatherer)
    # mediasoup is ICE-lite: the client controls (what aiortc's own peer connection does).
    ice._connection.ice_controlling = True
    dtls = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])
    for c in transport.ice_candidates:
        if c["protocol"] == "udp":
            candidate = RTCIceCandidate(
                component=1,
                foundation=c["foundation"],
                ip=c["address"],
                port=c["port"],
                priority=c["priority"],
                protocol="udp",
                type=c["type"],
            )
            await ice.addRemoteCandidate(candidate)
    await ice.addRemoteCandidate(None)
    # The controlling side is aiortc's DTLS server: the transport is told so.
    [local] = [f for f in dtls.getLocalParameters().fingerprints if f.algorithm == "sha-256"]
    await transport.connect(
        dtls_parameters={
            "role": "server",
            "fingerprints": [{"algorithm": local.algorithm, "value": local.value}],
        }
    )
    ice_parameters = transport.ice_parameters
    fingerprints = [
        RTCDtlsFingerprint(algorithm=f["algorithm"], value=f["value"])
        for f in transport.dtls_parameters["fingerprints"]
        if f["algorithm"] == "sha-256"
    ]
    async with asyncio.timeout(15):
        await ice.start(
            RTCIceParameters(
                usernameFragment=ice_parameters["usernameFragment"],
                password=ice_parameters["password"],
                iceLite=True,
            )
        )
        await dtls.start(RTCDtlsParameters(fingerprints=fingerprints, role="auto"))
        while transport.dtls_state != "connected":  # the server's view, by its events
            await asyncio.sleep(0.05)

    async def stop() -> None:
        await dtls.stop()
        await ice.stop()

    return stop


def _candidates(transport: Any) -> set[tuple[str, int, str]]:
    return {(c["address"], c["port"], c["protocol"]) for c in transport.ice_candidates}


async def _router_worker_dump(cluster: Cluster, server_id: str) -> Any:
    return await cluster._router_workers[server_id].dump()


async def test_cluster_webrtc_server_listens_on_each_server_used(cluster: Cluster) -> None:
    """One ClusterWebRtcServer, transports on two servers: each server gets its own
    WebRtcServer (one port on every server, on its media address), made by the first
    transport there and shared by the next; a real WebRTC client connects through it on
    each server; close() closes the transports with 'listenserverclose'."""
    port = free_ports(1)  # each server binds it later (UDP, TCP): below the ephemeral range
    listen_infos: list[Any] = [{"protocol": "udp", "port": port}, {"protocol": "tcp", "port": port}]
    cws = await cluster.create_webrtc_server(listen_infos=listen_infos, app_data={"room": "a"})
    assert cluster.webrtc_servers == [cws] and cws.app_data == {"room": "a"}
    assert cws.cluster is cluster
    assert cws.servers == {} and not cws.closed
    assert all(s["clientWorkers"] == [] for s in cluster.dump()["servers"].values())
    listen_infos.append({"protocol": "udp", "port": 1})  # the caller's list is not kept
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    handled: list[Any] = []
    unhandled: list[Any] = []
    cws.observer.on("webrtctransporthandled", handled.append)
    cws.observer.on("webrtctransportunhandled", unhandled.append)
    t1 = await router.create_webrtc_transport(server="s1", webrtc_server=cws)
    t2 = await router.create_webrtc_transport(server="s2", webrtc_server=cws, enable_tcp=False)
    t3 = await router.create_webrtc_transport(server="s1", webrtc_server=cws)
    assert (
        _candidates(t1)
        == _candidates(t3)
        == {
            ("127.0.0.2", port, "udp"),
            ("127.0.0.2", port, "tcp"),
        }
    )
    assert _candidates(t2) == {("127.0.0.3", port, "udp")}
    servers = cws.servers
    assert sorted(servers) == ["s1", "s2"]
    assert handled == [t1, t2, t3] and unhandled == []  # the wrappers the router gave
    assert repr(cws) == f"<ClusterWebRtcServer id={cws.id} servers=['s1', 's2'] closed=False>"
    assert servers["s1"].app_data == {"clusterWebRtcServerId": cws.id}
    dump = await cws.dump()
    assert sorted(dump["s1"]["webRtcTransportIds"]) == sorted([t1.id, t3.id])
    assert dump["s2"]["webRtcTransportIds"] == [t2.id]
    assert dump["s1"]["udpSockets"] == [{"ip": "127.0.0.2", "port": port}]
    assert dump["s2"]["tcpServers"] == [{"ip": "127.0.0.3", "port": port}]
    for server_id in ("s1", "s2"):
        worker_dump = await _router_worker_dump(cluster, server_id)
        assert worker_dump["webRtcServerIds"] == [servers[server_id].id]

    stops = [await _webrtc_client(t) for t in (t1, t2)]
    try:
        for transport, address in ((t1, "127.0.0.2"), (t2, "127.0.0.3")):
            selected = transport.ice_selected_tuple
            assert (selected["localAddress"], selected["localPort"]) == (address, port)
            assert transport.ice_state in ("connected", "completed")
    finally:
        for stop in stops:
            await stop()

    events: list[str] = []
    for transport in (t1, t2, t3):
        transport.on("listenserverclose", lambda t=transport: events.append(t.id))
    closes: list[None] = []
    cws.observer.on("close", lambda: closes.append(None))
    cws.close()
    cws.close()
    assert cws.closed and cws.servers == {} and cluster.webrtc_servers == [] and closes == [None]

    async def all_closed() -> bool:
        return all(t.closed for t in (t1, t2, t3))

    await wait_until(all_closed, 5)
    assert sorted(events) == sorted([t1.id, t2.id, t3.id])
    assert sorted(t.id for t in unhandled) == sorted(events)  # once each, as wrappers
    assert all(isinstance(t, ClusterTransport) for t in unhandled)
    assert not router.closed and router.transports_for_testing == {}
    with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
        await cws.dump()
    for server_id in ("s1", "s2"):
        assert (await _router_worker_dump(cluster, server_id))["webRtcServerIds"] == []
    router.close()


async def test_cluster_webrtc_server_validates_before_anything(
    redis_server: RedisProcess, cluster: Cluster
) -> None:
    """Wrong listen infos or app_data, a transport with both ways to listen or none, a
    webrtc_server that is not this cluster's or is closed: refused before anything
    reaches a server. A closed cluster makes none and closes its own."""
    await wait_until(_has_servers(cluster, 3))
    with pytest.raises(RemoteError, match="s1 serves mediasoup, not a Mafalda"):
        await cluster.mafalda_client("s1")
    cases: list[tuple[Any, type[Exception], str]] = [
        ([], TypeError, "listen_infos must be a non-empty list"),
        ({"protocol": "udp"}, TypeError, "listen_infos must be a non-empty list"),
        (["udp"], TypeError, r"listen_infos\[0\] must be a dict"),
        ([{"protocol": "sctp"}], ValueError, r"listen_infos\[0\].protocol"),
        ([{"protocol": "udp", "ip": "nope"}], ValueError, r"listen_infos\[0\].ip"),
        ([{"protocol": "udp"}, {"protocol": "tcp", "port": 70000}], ValueError, "port"),
    ]
    for bad, error, match in cases:
        with pytest.raises(error, match=match):
            await cluster.create_webrtc_server(listen_infos=bad)
    with pytest.raises(TypeError, match="app_data"):
        await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}], app_data="x")  # type: ignore[arg-type]
    assert cluster.webrtc_servers == []
    cws = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    udp = [{"protocol": "udp"}]
    with pytest.raises(TypeError, match="only one of webrtc_server, listen_infos"):
        await router.create_webrtc_transport(webrtc_server=cws, listen_infos=udp)
    with pytest.raises(TypeError, match="only one of webrtc_server, listen_infos"):
        await router.create_webrtc_transport(webrtc_server=cws, listen_ips=["127.0.0.2"])
    with pytest.raises(TypeError, match="missing webrtc_server, listen_infos and listen_ips"):
        await router.create_webrtc_transport(server="s1")
    with pytest.raises(TypeError, match="webrtc_server must be a ClusterWebRtcServer"):
        await router.create_webrtc_transport(webrtc_server=object())  # type: ignore[arg-type]
    async with await horizontal.connect(redis_server.url, token=TOKEN) as other:
        foreign = await other.create_webrtc_server(listen_infos=udp)
        with pytest.raises(InvalidValueError, match="belongs to another cluster"):
            await router.create_webrtc_transport(webrtc_server=foreign)
        gone: list[str] = []
        foreign.on("workerclose", lambda: gone.append("workerclose"))
        foreign.observer.on("close", lambda: gone.append("close"))
    assert foreign.closed and gone == ["workerclose", "close"] and other.webrtc_servers == []
    with pytest.raises(ClusterError, match="closed"):
        await other.create_webrtc_server(listen_infos=udp)
    closed = await cluster.create_webrtc_server(listen_infos=udp)
    closed.close()
    with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
        await router.create_webrtc_transport(webrtc_server=closed)
    # Nothing reached a server: no child router, no worker, no WebRtcServer anywhere.
    assert router.servers == [] and cws.servers == {}
    assert all(s["clientWorkers"] == [] for s in cluster.dump()["servers"].values())
    router.close()
    with pytest.raises(InvalidStateError, match="Router closed"):
        await router.create_webrtc_transport(webrtc_server=cws)


async def test_cluster_webrtc_server_made_once_per_server_and_again_when_gone(
    cluster: Cluster,
) -> None:
    """Transports created at once on one server make one WebRtcServer there; one closed
    while its WebRtcServer is being made leaves none behind; the router worker released
    idle takes its WebRtcServer with it, and the next transport there makes another."""
    cws = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    transports = await asyncio.gather(
        *(router.create_webrtc_transport(server="s2", webrtc_server=cws) for _ in range(4))
    )
    [real] = (await _router_worker_dump(cluster, "s2"))["webRtcServerIds"]
    assert cws.servers["s2"].id == real
    assert len({_candidates(t).pop() for t in transports}) == 1  # one port for all
    assert len((await cws.dump())["s2"]["webRtcTransportIds"]) == 4

    # Closed as its WebRtcServer on s3 is about to be made, and as it is being made (the
    # worker there has made it, its answer not read yet): none is left there.
    await router.create_webrtc_transport(server="s3", listen_infos=[{"protocol": "udp"}])
    early = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    attempt = asyncio.ensure_future(
        router.create_webrtc_transport(server="s3", webrtc_server=early)
    )
    await asyncio.sleep(0)
    early.close()
    with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
        await asyncio.wait_for(attempt, 10)
    late = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    made: list[Any] = []

    def made_on_s3(server: Any) -> None:
        made.append(server)
        late.close()

    cluster._router_workers["s3"].observer.on("newwebrtcserver", made_on_s3)
    with pytest.raises(InvalidStateError, match="WebRtcServer closed"):
        await asyncio.wait_for(router.create_webrtc_transport(server="s3", webrtc_server=late), 10)
    assert len(made) == 1 and early.servers == late.servers == {}

    async def none_on_s3() -> bool:
        return not (await _router_worker_dump(cluster, "s3"))["webRtcServerIds"]

    await wait_until(none_on_s3)

    # The last transport on s2 gone, the worker there goes (worker_idle 0.5 s) with the
    # WebRtcServer on it: forgotten, and made anew by the next transport there.
    worker = cluster._router_workers["s2"]
    for transport in transports:
        transport.close()
    async with asyncio.timeout(10):
        await worker.observer.wait_for("close")
    assert cws.servers == {}
    again = await router.create_webrtc_transport(server="s2", webrtc_server=cws)
    assert cws.servers["s2"].id != real
    assert (await cws.dump())["s2"]["webRtcTransportIds"] == [again.id]
    router.close()


async def test_killed_server_forgets_its_webrtc_server(
    servers: list[Server], cluster: Cluster
) -> None:
    """SIGKILL of a server where a ClusterWebRtcServer has a WebRtcServer: its transport
    closes, the WebRtcServer there is forgotten, and the next transports go elsewhere."""
    cws = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    doomed = await router.create_webrtc_transport(server="s2", webrtc_server=cws)
    kept = await router.create_webrtc_transport(server="s3", webrtc_server=cws)
    assert sorted(cws.servers) == ["s2", "s3"]
    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    servers[1].proc.send_signal(signal.SIGKILL)
    await reap(servers[1].proc)
    async with asyncio.timeout(10):
        record, _ = await left
    assert record["id"] == "s2" and doomed.closed and not kept.closed
    assert sorted(cws.servers) == ["s3"]
    late = [await router.create_webrtc_transport(webrtc_server=cws) for _ in range(2)]
    for transport in late:
        server_id = router.server_of(transport)
        assert server_id in ("s1", "s3")
        [(address, port, _)] = _candidates(transport)
        assert address == cluster.media_address(server_id)
        assert port == (await cws.dump())[server_id]["udpSockets"][0]["port"]
    assert sorted(cws.servers) == sorted({router.server_of(t) for t in [kept, *late]})
    router.close()


async def test_cluster_webrtc_server_on_a_mafalda_server(redis_server: RedisProcess) -> None:
    """A server serving a Mafalda pool of two workers: the ClusterWebRtcServer there is
    the pool's own spanning WebRtcServer (one per client), so the pool places the
    transports and each worker it uses listens on a port of the range, on the server's
    media address. One port for the whole pool is refused by the server, and nothing is
    left of it."""
    server = await _start_server(redis_server.url, 5, "--mafalda", "--num-workers", "2")
    try:
        async with await horizontal.connect(
            redis_server.url, token=TOKEN, interval=0.2, grace=1.5
        ) as cluster:
            await wait_until(_has_servers(cluster, 1))
            router = await cluster.create_router(media_codecs=MEDIA_CODECS)
            one_port = await cluster.create_webrtc_server(
                listen_infos=[{"protocol": "udp", "port": free_port("127.0.0.6")}]
            )
            with pytest.raises(ValueError, match="the pool's 2 workers cannot share one port"):
                await router.create_webrtc_transport(webrtc_server=one_port)
            assert one_port.servers == {}
            low = free_ports(21)
            cws = await cluster.create_webrtc_server(
                listen_infos=[{"protocol": "udp", "portRange": {"min": low, "max": low + 20}}]
            )
            transports = [await router.create_webrtc_transport(webrtc_server=cws) for _ in range(3)]
            for transport in transports:
                ((address, port, _),) = _candidates(transport)
                assert address == "127.0.0.6" and low <= port <= low + 20
            client = await cluster.mafalda_client("s5")
            assert client.webrtc_servers == [cws.servers["s5"]]
            dump = (await cws.dump())["s5"]  # the pool's: by worker pid
            assert sorted(i for d in dump.values() for i in d["webRtcTransportIds"]) == sorted(
                t.id for t in transports
            )
            closed = asyncio.Event()
            transports[0].on("listenserverclose", closed.set)
            cws.close()
            await asyncio.wait_for(closed.wait(), 5)
            assert client.webrtc_servers == []
            with pytest.raises(ClusterError, match="no live media server 'nope'"):
                await cluster.mafalda_client("nope")
    finally:
        server.proc.kill()
        await reap(server.proc)


async def test_cluster_router_keeps_a_child_a_transport_is_being_made_on(
    cluster: Cluster,
) -> None:
    """The only transport on a server closes while another is being made there (from
    the router worker's 'newwebrtcserver', as the ClusterWebRtcServer is made): the
    child router stays for the new transport. A transport the server refuses (its port
    taken) on a server the router had no child on leaves no child there."""
    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    first = await router.create_plain_transport(server="s1", listen_info={"protocol": "udp"})
    cws = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
    cluster._router_workers["s1"].observer.on("newwebrtcserver", lambda _: first.close())
    second = await router.create_webrtc_transport(server="s1", webrtc_server=cws)
    assert first.closed and not second.closed and router.servers == ["s1"]
    assert (await second.dump())["id"] == second.id
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.3", 0))
        port = taken.getsockname()[1]
        with pytest.raises(Exception, match=f"address already in use.*{port}|{port}.*in use"):
            await router.create_plain_transport(
                server="s2", listen_info={"protocol": "udp", "port": port}
            )
    assert router.servers == ["s1"]
    router.close()


@pytest.mark.parametrize("made", ["transport", "observer"])
@pytest.mark.parametrize("gone", ["link", "child router"])
async def test_what_comes_closed_from_its_server_is_not_kept(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch, made: str, gone: str
) -> None:
    """Between the answer that made a transport (an RTP observer) and the cluster
    router's taking it, the link to its server closes for good (the server left), or its
    child router there closes: it comes closed, its close gone by unseen. The call fails
    (RemoteConnectionError, as one the link's end cut off; InvalidStateError) and
    nothing is kept; the next one is made anew. It used to be adopted: a closed
    transport (observer) kept in the router for good."""
    from mafalda.remote.client import Connection

    router = await cluster.create_router(media_codecs=MEDIA_CODECS)
    await router.create_direct_transport(server="s1")  # the child router on s1
    child = router._children["s1"]
    method = "create_direct_transport" if made == "transport" else "create_audio_level_observer"
    real = Connection.call

    async def call(self: Connection, target: Any, name: str, *args: Any, **kwargs: Any) -> Any:
        result = await real(self, target, name, *args, **kwargs)
        if target is child and name == method:
            self.abort() if gone == "link" else child.close()
        return result

    monkeypatch.setattr(Connection, "call", call)
    error = RemoteConnectionError if gone == "link" else InvalidStateError
    with pytest.raises(error):
        await getattr(router, method)(server="s1")
    monkeypatch.undo()
    kept = [*router.transports_for_testing.values(), *router._rtp_observers.values()]
    assert [o for o in kept if o.closed] == []
    again = await getattr(router, method)(server="s1")  # (a new link, a new child)
    assert not again.closed and (await router.dump())["id"] == router.id
    router.close()


# -- connections that drop, servers that leave while a client connects ---------------------


def _behind_the_relay(server: Any, redis_url: str) -> Any:
    """Server "a"'s MediaNode (on 127.0.0.2), its control URL a Relay's on 127.0.0.6."""
    from mafalda.horizontal import MediaNode

    return MediaNode(
        server,
        redis_url=redis_url,
        server_id="a",
        control_host="127.0.0.6",
        media_address="127.0.0.2",
        interval=60,
    )


@contextlib.asynccontextmanager
async def _a_behind_a_relay_and_b(
    redis_url: str, **options: Any
) -> AsyncIterator[tuple[Any, Relay, Cluster]]:
    """Servers "a" (grace period 10 s, behind a Relay) and "b" in a cluster, and its
    client (``horizontal.connect()`` ``options``): (a, the relay, the client)."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN, grace_period=10) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        Relay(a.port, host="127.0.0.6", upstream="127.0.0.2", port=a.port) as relay,
        _behind_the_relay(a, redis_url),
        MediaNode(b, redis_url=redis_url, server_id="b", interval=60),
        await horizontal.connect(redis_url, token=TOKEN, interval=60, **options) as cluster,
    ):
        yield a, relay, cluster


def _live_workers(server: Any) -> list[Any]:
    from mafalda.mediasoup import Worker

    return [o for o in server.live_objects() if isinstance(o, Worker)]


def _until(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate()

    return check


async def test_what_a_call_cut_off_by_a_drop_made_is_closed_when_the_session_resumes(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server "a" is making a worker (for create_worker(), then for a cluster router's
    first transport there) when the client's connection to it drops: the call fails, the
    worker is made on "b" instead, while "a" makes it all the same (its answer lost, the
    session's). When the connection resumes, the client closes it: it used to stay on
    "a", in the resumed session, until the client closed."""
    from mafalda.remote import server as server_module

    real_create_worker = server_module.create_worker
    arrived, go = asyncio.Event(), asyncio.Event()
    go.set()

    async def gated_create_worker(**settings: Any) -> Any:
        arrived.set()
        await go.wait()
        return await real_create_worker(**settings)

    monkeypatch.setattr(server_module, "create_worker", gated_create_worker)
    async with _a_behind_a_relay_and_b(redis_server.url) as (a, relay, cluster):

        async def cut_while_a_makes_a_worker(making: Awaitable[Any]) -> Any:
            arrived.clear()
            go.clear()
            task = asyncio.ensure_future(making)
            await arrived.wait()  # "a" is making the worker
            relay.hold()
            relay.cut()
            await wait_until(_until(lambda: all(s.connection is None for s in a.sessions.values())))
            go.set()
            made = await task  # on "b"
            await wait_until(_until(lambda: len(_live_workers(a)) == 1))  # "a" made it too
            relay.release()  # the client resumes its session, which has that worker
            await wait_until(_until(lambda: _live_workers(a) == []))
            return made

        # ("a" comes first: least loaded, then by id.)
        worker = await cut_while_a_makes_a_worker(cluster.create_worker(log_level="warn"))
        assert cluster.server_of(worker)["id"] == "b"  # type: ignore[index]
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await cut_while_a_makes_a_worker(router.create_direct_transport())
        assert transport.server_id == "b"
        client_a = cluster._clients["a"]  # resumed, with nothing left of those calls
        assert not client_a.closed and [o for o in client_a.objects if not o.closed] == []
        assert [w for w in cluster.workers if cluster.server_of(w)["id"] == "a"] == []  # type: ignore[index]
        router.close()


async def test_a_server_that_leaves_while_a_client_connects_to_it_is_not_kept(
    redis_server: RedisProcess,
) -> None:
    """Server "a" leaves the registry while the client connects to it (for create_worker()
    and, waiting for that connection, for a transport pinned there): the connection is
    dropped, the worker goes to "b", the transport fails, and nothing is kept for "a"
    (no connection, no lock). It used to keep that connection (with the worker made
    through it) and reuse it when "a" came back, and to keep the locks for ever."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        Relay(a.port, host="127.0.0.6", upstream="127.0.0.2", port=a.port) as relay,
        MediaNode(b, redis_url=redis_server.url, server_id="b", interval=60),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        node = _behind_the_relay(a, redis_server.url)
        await node.start()
        await wait_until(_until(lambda: "a" in cluster.servers))
        relay.hold()
        making_worker = asyncio.ensure_future(cluster.create_worker(log_level="warn"))
        await wait_until(_until(lambda: relay.waiting == 1))  # connecting to "a"
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        pinned = asyncio.ensure_future(router.create_direct_transport(server="a"))
        await wait_until(_until(lambda: cluster._connecting["a"].users == 2))
        await node.aclose()  # "a" leaves
        await wait_until(_until(lambda: "a" not in cluster.servers))
        relay.release()
        worker = await making_worker
        assert cluster.server_of(worker)["id"] == "b"  # type: ignore[index]
        with pytest.raises(RemoteConnectionError, match="media server 'a' left the cluster"):
            await pinned
        assert _live_workers(a) == []
        assert "a" not in cluster._clients
        assert "a" not in cluster._connecting and "a" not in cluster._router_worker_locks
        # Back (same id): a new connection.
        async with _behind_the_relay(a, redis_server.url):
            await wait_until(_until(lambda: "a" in cluster.servers))
            assert not cluster.dump()["servers"]["a"]["connected"]
            transport = await router.create_direct_transport(server="a")
            assert transport.server_id == "a" and len(_live_workers(a)) == 1
            router.close()


async def test_a_media_node_that_cannot_register_keeps_no_connection(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """Redis refuses the record (here an ACL user without SET; read-only or out of memory
    alike): start() fails and the node's Redis connection is closed (it used to stay
    open: ``async with`` calls no aclose() when start() fails). It may start again."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    url = await redis_server.refusing_writes(db)

    async def none_connected() -> bool:
        return await redis_server.connections_of(db) == 0

    async with await serve(host="127.0.0.1", token=TOKEN) as server:
        node = MediaNode(server, redis_url=url, server_id="n", interval=60)
        with pytest.raises(OSError, match="cannot register in Redis"):
            async with node:
                pass
        await wait_until(none_connected)
        await redis_server.allow_writes(db)
        await node.start()  # allowed now
        assert await record_of(db, "n") is not None
        assert await redis_server.connections_of(db) == 1
        await node.aclose()
        assert await record_of(db, "n") is None
        await wait_until(none_connected)


async def test_a_heartbeat_not_shorter_than_the_grace_is_warned_of(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """A node publishes its heartbeat interval in its record; a client whose grace is not
    longer warns when the server joins (after a Redis restart its record is back only at
    its next heartbeat: the client would drop a live server)."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        MediaNode(a, redis_url=redis_server.url, server_id="slow", interval=5),
        MediaNode(b, redis_url=redis_server.url, server_id="fast", interval=1),
    ):
        with caplog.at_level("WARNING", logger="mafalda.horizontal.cluster"):
            async with await horizontal.connect(
                redis_server.url, token=TOKEN, interval=60, grace=5
            ) as cluster:
                assert cluster.servers["slow"]["heartbeat"] == 5.0
                assert cluster.servers["fast"]["heartbeat"] == 1.0
        warned = [r.getMessage() for r in caplog.records if "heart-beats" in r.getMessage()]
        assert warned == [
            "server slow heart-beats every 5.0 s, not less than this client's grace (5 s): "
            "a Redis restart will drop it (give the client a longer grace, or the server "
            "a shorter --heartbeat)"
        ]


async def test_a_pipe_a_server_made_while_the_connection_was_down_is_not_an_orphan(
    redis_server: RedisProcess,
) -> None:
    """While the client's connection to "a" is down, the server makes a PipeTransport on
    the client's router there itself (as a swarm server pipes a stream out to a peer):
    the resume brings it, and the client leaves it open (it is nobody's orphan)."""
    from mafalda.mediasoup import Router
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN, grace_period=10) as a,
        Relay(a.port, host="127.0.0.6", upstream="127.0.0.2", port=a.port) as relay,
        _behind_the_relay(a, redis_server.url),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        await router.create_direct_transport()
        (served,) = [o for o in a.live_objects() if isinstance(o, Router)]
        relay.hold()
        relay.cut()
        await wait_until(_until(lambda: all(s.connection is None for s in a.sessions.values())))
        pipe = await served.create_pipe_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.2"}
        )
        relay.release()
        await wait_until(_until(lambda: all(s.connection is not None for s in a.sessions.values())))
        client_a = cluster._clients["a"]
        await wait_until(_until(lambda: pipe.id in {o.id for o in client_a.objects}))
        await asyncio.sleep(0.2)
        assert not pipe.closed
        router.close()


def _gate(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, server: Any) -> Any:
    """``cls.name`` held on ``server``'s objects while armed: (arrived, go) events, the
    call waiting for ``go`` once ``arrived`` is set."""
    real = getattr(cls, name)
    arrived, go = asyncio.Event(), asyncio.Event()
    go.set()

    async def gated(self: Any, *args: Any, **kwargs: Any) -> Any:
        if any(o is self for o in server.live_objects()):
            arrived.set()
            await go.wait()
        return await real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, gated)
    return arrived, go


@pytest.mark.parametrize("cut", ["pipe transport", "pipe consumer", "cluster router pair"])
async def test_a_pipe_cut_off_by_a_drop_is_closed_when_the_session_resumes(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """The client's connection to "a" drops while "a" makes the PipeTransport of a
    pipe_to_router() to "b" (or of a cluster router's pair between "a" and "b"), or the
    pipe consumer of a pipe_to_router() on a pair already open: the call fails, "a"
    makes it all the same, and when the session resumes the client closes it. It used
    to stay on "a" for good: pipe transports, and what is under them, were all left (a
    swarm server's own pipes on a client's routers must stay: they still do). A pair
    already open stays, and pipes on."""
    from mafalda.mediasoup import Consumer, PipeTransport, Router

    async with _a_behind_a_relay_and_b(redis_server.url) as (a, relay, cluster):

        def on_a(cls: type) -> list[Any]:
            return [o for o in a.live_objects() if isinstance(o, cls)]

        producers: list[Any] = []
        if cut == "cluster router pair":
            room = await cluster.create_router(media_codecs=MEDIA_CODECS)
            send = await room.create_direct_transport(server="a")
            producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            sink = await room.create_direct_transport(server="b")
            making = sink.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
        else:
            router_a, router_b, send, producers = await _two_routers_and_producers(cluster)
            # The workers went to the least loaded servers, by id.
            assert [cluster.server_of(r)["id"] for r in (router_a, router_b)] == ["a", "b"]  # type: ignore[index]

            def pipe(producer: Any) -> Any:
                return cluster.pipe_to_router(
                    producer=producer, router=router_a, target_router=router_b
                )

            if cut == "pipe consumer":
                await pipe(producers[0])  # the pair is open
            making = pipe(producers[1])
        if cut == "pipe consumer":
            arrived, go = _gate(monkeypatch, PipeTransport, "consume", a)
            kind: type = Consumer
        else:
            arrived, go = _gate(monkeypatch, Router, "create_pipe_transport", a)
            kind = PipeTransport
        before = {o.id for o in on_a(kind)}
        go.clear()
        task = asyncio.ensure_future(making)
        await arrived.wait()  # "a" is making it
        relay.hold()
        relay.cut()
        await wait_until(_until(lambda: all(s.connection is None for s in a.sessions.values())))
        go.set()
        with pytest.raises(RemoteConnectionError):
            await task

        def made() -> set[str]:
            return {o.id for o in on_a(kind)} - before

        await wait_until(_until(lambda: len(made()) == 1))  # "a" made it all the same
        (orphan,) = made()
        relay.release()  # the client resumes its session, which has it
        await wait_until(_until(lambda: all(s.connection is not None for s in a.sessions.values())))
        await wait_until(_until(lambda: orphan not in {o.id for o in on_a(kind)}), timeout=5)
        assert {o.id for o in on_a(kind)} == before
        if cut == "cluster router pair":
            consumer = await sink.consume(
                producer_id=producer.id, rtp_capabilities=room.rtp_capabilities
            )
            assert consumer.producer_id == producer.id
            room.close()
        else:  # the next pipe opens a new pair, or reuses the one open
            _, piped = await pipe(producers[2])
            assert piped.id == producers[2].id
            assert len(on_a(PipeTransport)) == 1


async def test_pipe_to_router_keeps_the_target_child_it_pipes_into(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target router's last transport on the producer's server closes while
    pipe_to_router() makes the copy into its child router there: the child stays for
    the copy, which the target's consumers then get. It was closed under the pipe
    (nothing marked that server busy for the target, as a transport being made does)."""
    from mafalda.horizontal import MediaNode
    from mafalda.mediasoup import Router
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await room.create_direct_transport(server="a")
        producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
        last = await breakout.create_direct_transport(server="a")
        arrived, go = _gate(monkeypatch, Router, "pipe_to_router", a)
        go.clear()
        task = asyncio.ensure_future(room.pipe_to_router(router=breakout, producer_id=producer.id))
        await arrived.wait()  # "a" is making the copy in the target's child
        last.close()
        await wait_until(
            _until(lambda: all(getattr(o, "id", None) != last.id for o in a.live_objects()))
        )
        go.set()
        result = await asyncio.wait_for(task, 5)
        assert not result["pipeProducer"].closed
        assert breakout.servers == ["a"] and breakout.server_of(producer) == "a"
        sink = await breakout.create_direct_transport(server="a")
        consumer = await sink.consume(
            producer_id=producer.id, rtp_capabilities=breakout.rtp_capabilities
        )
        assert consumer.producer_id == producer.id and not consumer.closed


async def test_a_pipe_whose_pair_closes_as_its_copy_is_made_keeps_nothing_open(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cluster router's pipe transport pair closes (here its end on "b"; a worker
    killed there alike) while server "a" makes the pipe consumer on it: "a" answers with
    the consumer, then closes it with the transport, quietly (this client asked). The
    pipe fails, and the consumer its answer brought is closed here too: it used to stay
    open in the client's connection for good (under no proxy: its transport was gone),
    the client and "a" no longer agreeing on what lives there (found by the cluster
    chaos test)."""
    from mafalda.horizontal import MediaNode
    from mafalda.mediasoup import PipeTransport
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        MediaNode(b, redis_url=redis_server.url, server_id="b", interval=60),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await room.create_direct_transport(server="a")
        producer = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
        sink = await room.create_direct_transport(server="b")
        real_consume = PipeTransport.consume

        async def consume_then_lose_the_pair(self: Any, **options: Any) -> Any:
            consumer = await real_consume(self, **options)  # made on "a"
            if any(o is self for o in a.live_objects()):
                (pair,) = room._pairs.values()
                pair.transports["b"].close()  # the pair goes, its end on "a" with it
            return consumer  # answered before "a" hears of that close

        monkeypatch.setattr(PipeTransport, "consume", consume_then_lose_the_pair)
        with pytest.raises(InvalidStateError):
            await sink.consume(producer_id=producer.id, rtp_capabilities=room.rtp_capabilities)
        client_a = cluster._clients["a"]
        session = a.sessions[client_a.session_id]

        def stale() -> list[Any]:
            """Open here, closed (or unknown) on "a"."""
            return [
                proxy
                for handle, proxy in client_a.connection.proxies.items()
                if not proxy.closed and getattr(session.objects.get(handle), "closed", True)
            ]

        await asyncio.sleep(0.2)  # "a" has the close
        assert stale() == []
        monkeypatch.setattr(PipeTransport, "consume", real_consume)
        consumer = await sink.consume(
            producer_id=producer.id, rtp_capabilities=room.rtp_capabilities
        )
        assert consumer.producer_id == producer.id and not consumer.closed
        room.close()


async def test_a_router_worker_that_dies_is_not_kept(redis_server: RedisProcess) -> None:
    """The worker behind a cluster router's children on a server is SIGKILLed: the
    client forgets it at once (it used to keep the dead worker's proxy for worker_idle
    seconds, or until the next child router there replaced it when the worker's close
    came first), and the next transport there gets a new one, released as usual."""
    from mafalda.horizontal import MediaNode
    from mafalda.mediasoup import Worker
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await room.create_direct_transport(server="a")
        worker = cluster._router_workers["a"]
        (served,) = [o for o in a.live_objects() if isinstance(o, Worker)]
        os.kill(served.pid, signal.SIGKILL)
        await wait_until(_until(lambda: worker.closed and transport.closed))
        assert "a" not in cluster._router_workers and cluster.workers == []
        again = await room.create_direct_transport(server="a")
        assert cluster._router_workers["a"] is not worker and not again.closed
        room.close()
        cluster._release_idle("a", cluster._router_workers["a"])  # (its worker_idle over)
        assert "a" not in cluster._router_workers
        await wait_until(_until(lambda: cluster.workers == [] and _live_workers(a) == []))


async def test_a_router_worker_whose_next_child_fails_is_released(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last child router on a server goes while another cluster router's child is
    being made there (the worker in use: kept); that making fails (the connection to the
    server drops): the worker is released all the same, worker_idle later. It stayed,
    unused, until the client closed (nothing asked again)."""
    from mafalda.mediasoup import Worker

    async with _a_behind_a_relay_and_b(redis_server.url, worker_idle=0.2) as (a, relay, cluster):
        first = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await first.create_direct_transport(server="a")
        (worker,) = _live_workers(a)
        arrived, go = _gate(monkeypatch, Worker, "create_router", a)
        go.clear()
        second = await cluster.create_router(media_codecs=MEDIA_CODECS)
        making = asyncio.ensure_future(second.create_direct_transport(server="a"))
        await arrived.wait()  # the second's child being made on "a"
        transport.close()  # the first's child there goes: the worker is in use, kept
        await asyncio.sleep(0.5)  # past worker_idle
        assert not worker.closed
        relay.cut()  # the second's making fails
        with pytest.raises(RemoteConnectionError):
            await making
        go.set()
        await wait_until(_until(lambda: worker.closed), timeout=10)


async def test_a_router_worker_on_a_draining_server_whose_next_child_fails_is_released(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above on a server that starts draining while the second's child is being made
    there: the release is then immediate, not timed. It was asked (by the drain, the
    first's child going, and the making's failure) while the making was under way, which
    held the worker each time: it stayed until the client closed or the server left."""
    from mafalda.mediasoup import Worker
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN, grace_period=10) as a,
        Relay(a.port, host="127.0.0.6", upstream="127.0.0.2", port=a.port) as relay,
        _behind_the_relay(a, redis_server.url) as node,
        await horizontal.connect(redis_server.url, token=TOKEN, interval=60) as cluster,
    ):
        first = await cluster.create_router(media_codecs=MEDIA_CODECS)
        transport = await first.create_direct_transport(server="a")
        (worker,) = _live_workers(a)
        arrived, go = _gate(monkeypatch, Worker, "create_router", a)
        go.clear()
        second = await cluster.create_router(media_codecs=MEDIA_CODECS)
        making = asyncio.ensure_future(second.create_direct_transport(server="a"))
        await arrived.wait()  # the second's child being made on "a"
        stop = asyncio.Event()
        draining = asyncio.ensure_future(node.drain(30, stop))
        await wait_until(_until(lambda: cluster.servers["a"]["draining"]))
        transport.close()  # the first's child there goes: the worker is in use, kept
        relay.cut()  # the second's making fails
        with pytest.raises(RemoteConnectionError):
            await making
        go.set()
        assert "a" not in cluster._router_workers
        await wait_until(_until(lambda: worker.closed), timeout=5)
        assert await draining  # nothing of the client's is left on "a"
        stop.set()


@contextlib.asynccontextmanager
async def _two_servers_and_a_client(
    redis_url: str,
) -> AsyncIterator[tuple[Any, Any, Cluster, list[str]]]:
    """Servers on 127.0.0.2 and .3, none registered, a client, and the ids of the
    servers it saw leave."""
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        await serve(host="127.0.0.3", token=TOKEN) as b,
        await horizontal.connect(redis_url, token=TOKEN, interval=60, grace=30) as cluster,
    ):
        left: list[str] = []
        cluster.observer.on("serverleave", lambda record, reason: left.append(record["id"]))
        yield a, b, cluster, left


async def _heard_all(cluster: Cluster, redis_url: str, marker: str) -> None:
    """A node ``marker`` registered, once the client heard its join: the client has
    handled every announcement made before (one channel, read in order)."""
    from mafalda.horizontal import MediaNode
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.4", token=TOKEN) as server,
        MediaNode(server, redis_url=redis_url, server_id=marker, interval=60),
    ):
        await wait_until(_until(lambda: marker in cluster.servers))


async def test_a_server_restarted_with_its_id_keeps_it_when_the_earlier_run_stops(
    redis_server: RedisProcess, db: aioredis.Redis
) -> None:
    """Server "x" is started again (a new process, same id) before the earlier run has
    stopped: the earlier run's deregistration leaves the new run's record (each run
    stamps its own incarnation) and announces no leave, and clients keep "x", the new
    run. It deleted the new run's record and announced its leave: clients dropped "x"
    (closing what they had made on the new run) until its next heartbeat."""
    from mafalda.horizontal import MediaNode

    async with _two_servers_and_a_client(redis_server.url) as (a, b, cluster, left):
        earlier = MediaNode(a, redis_url=redis_server.url, server_id="x", interval=60)
        later = MediaNode(b, redis_url=redis_server.url, server_id="x", interval=60)
        await earlier.start()
        await wait_until(_until(lambda: "x" in cluster.servers))
        await later.start()
        await cluster.refresh()
        assert cluster.servers["x"]["controlUrl"] == later.control_url
        worker = await cluster.create_worker(log_level="warn")  # on the later run
        await earlier.aclose()
        await _heard_all(cluster, redis_server.url, "marker")
        record = await record_of(db, "x")
        assert record is not None and record["controlUrl"] == later.control_url
        assert "x" in cluster.servers and left == ["marker"]
        assert record["incarnation"] == later.incarnation != earlier.incarnation
        assert not worker.closed
        await later.aclose()  # its own: deleted, and its leave announced
        await wait_until(_until(lambda: left == ["marker", "x"]), timeout=5)
        assert await record_of(db, "x") is None and worker.closed


async def test_a_late_leave_of_an_earlier_run_does_not_drop_the_server(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Server "x" stops (its record deleted) and is started again under that id before
    the stopping run's leave goes out: the client hears the new run's join, then that
    leave, which it checks against the registry (a record is under "x": the new run's)
    and does not believe. It dropped "x", the new run, until its next heartbeat. (The
    stopping run is held between deleting its record and announcing its leave by a
    wrapper: that order cannot be had on cue otherwise.)"""
    from mafalda.horizontal import MediaNode

    async with _two_servers_and_a_client(redis_server.url) as (a, b, cluster, left):
        earlier = MediaNode(a, redis_url=redis_server.url, server_id="x", interval=60)
        later = MediaNode(b, redis_url=redis_server.url, server_id="x", interval=60)
        await earlier.start()
        await wait_until(_until(lambda: "x" in cluster.servers))
        real_publish = earlier._publish

        async def restarted_first(event: Any) -> None:
            await later.start()  # its join announced, its record written
            await real_publish(event)

        monkeypatch.setattr(earlier, "_publish", restarted_first)
        await earlier.aclose()
        await _heard_all(cluster, redis_server.url, "marker")
        assert left == ["marker"]
        assert cluster.servers["x"]["controlUrl"] == later.control_url
        worker = await cluster.create_worker(log_level="warn")  # on the later run
        assert cluster.server_of(worker)["id"] == "x"  # type: ignore[index]
        await later.aclose()
        await wait_until(_until(lambda: left == ["marker", "x"]), timeout=5)


@pytest.mark.parametrize("cut", ["pipe transport", "pipe consumer"])
async def test_a_same_server_pipe_cut_off_by_a_drop_is_closed_when_the_session_resumes(
    redis_server: RedisProcess, monkeypatch: pytest.MonkeyPatch, cut: str
) -> None:
    """A cluster router's pipe_to_router() into another cluster router whose child on the
    producer's server "a" is there too: the client's connection to "a" drops while "a"
    makes the pipe transport pair between the two children (or the pipe consumer on the
    pair already open), the call fails, "a" makes it all the same, and when the session
    resumes the client closes what it made. It stayed on "a" for good: the pair is made
    by "a"'s Router.pipe_to_router(), unmarked, and was taken for a server's own pipe."""
    from mafalda.mediasoup import PipeTransport, Router

    async with _a_behind_a_relay_and_b(redis_server.url) as (a, relay, cluster):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await room.create_direct_transport(server="a")
        producers = [
            await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT))
            for ssrc in (1111, 2222, 3333)
        ]
        await breakout.create_direct_transport(server="a")  # (keeps its child there)

        def pipe(producer: Any) -> Any:
            return room.pipe_to_router(router=breakout, producer_id=producer.id)

        if cut == "pipe consumer":
            await pipe(producers[0])  # the pair is open
            arrived, go = _gate(monkeypatch, PipeTransport, "consume", a)
        else:
            arrived, go = _gate(monkeypatch, Router, "create_pipe_transport", a)
        held = a.live_objects()  # (held: no new object takes the id() of one of them)
        before = {id(o) for o in held}
        go.clear()
        task = asyncio.ensure_future(pipe(producers[1]))
        await arrived.wait()  # "a" is making it
        relay.hold()
        relay.cut()
        await wait_until(_until(lambda: all(s.connection is None for s in a.sessions.values())))
        go.set()
        with pytest.raises(RemoteConnectionError):
            await task
        # "a" made it all the same: the pair's two ends (if new), a consumer, a producer.
        made = 4 if cut == "pipe transport" else 2
        await wait_until(_until(lambda: len({id(o) for o in a.live_objects()} - before) == made))
        relay.release()  # the client resumes its session, which has them
        await wait_until(_until(lambda: all(s.connection is not None for s in a.sessions.values())))
        await wait_until(_until(lambda: {id(o) for o in a.live_objects()} == before), timeout=5)
        result = await pipe(producers[2])  # a new pair, or the one open
        piped = result["pipeProducer"]
        assert not piped.closed and breakout.server_of(producers[2]) == "a"
        pipes = [o for o in a.live_objects() if isinstance(o, PipeTransport)]
        assert len(pipes) == 2
        room.close()
        breakout.close()


async def test_a_same_server_pipe_answered_after_the_resume_is_closed(
    redis_server: RedisProcess,
) -> None:
    """A cluster router's pipe_to_router() into another cluster router whose child on the
    producer's server "a" is there too is cut off while this client's worker there
    (stopped: SIGSTOP) makes the pair between the two children; the session resumes
    before the worker answers, so the pipe's answer comes late, on the resumed link. Its
    copy, its pipe consumer and the pair it made are closed: the pair stayed on "a"
    until a child router closed (no answer names it, and at the resume it did not exist
    yet, so the cluster's resume had nothing to close)."""
    from mafalda.mediasoup import PipeTransport

    async with _a_behind_a_relay_and_b(redis_server.url) as (a, relay, cluster):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        breakout = await cluster.create_router(media_codecs=MEDIA_CODECS)
        send = await room.create_direct_transport(server="a")
        producers = [
            await send.produce(kind="audio", rtp_parameters=opus_rtp_parameters(ssrc, OPUS_PT))
            for ssrc in (1111, 2222)
        ]
        await breakout.create_direct_transport(server="a")  # (keeps its child there)
        held = a.live_objects()  # (held: no new object takes the id() of one of them)
        before = {id(o) for o in held}
        (worker,) = _live_workers(a)
        (session,) = a.sessions.values()
        connection = cluster._clients["a"].connection
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            task = asyncio.ensure_future(
                room.pipe_to_router(router=breakout, producer_id=producers[0].id)
            )
            await wait_until(_until(lambda: bool(session.tasks)))  # waiting in the worker
            resumed = asyncio.ensure_future(connection.events.wait_for("reconnect"))
            relay.cut()
            with pytest.raises(RemoteConnectionError):
                await task
            await asyncio.wait_for(resumed, 10)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        await wait_until(_until(lambda: not session.tasks))  # answered, late
        await wait_until(_until(lambda: {id(o) for o in a.live_objects()} == before), timeout=5)
        result = await room.pipe_to_router(router=breakout, producer_id=producers[1].id)
        assert not result["pipeProducer"].closed
        assert len([o for o in a.live_objects() if isinstance(o, PipeTransport)]) == 2
        room.close()
        breakout.close()


async def test_a_router_worker_made_for_a_webrtc_server_whose_transport_fails_is_released(
    redis_server: RedisProcess,
) -> None:
    """The worker behind a router's child on "a" dies (SIGKILL) as a WebRtcTransport
    through a ClusterWebRtcServer is being made there, its child fetched: the
    WebRtcServer is made on a new worker, and the transport fails (its child router
    closed with the worker). The new worker is released worker_idle later: it stayed
    (with that WebRtcServer) until the client closed, as nothing asked for its release
    (found by the cluster chaos test, seed 275). (The kill is timed by a wrapper around
    the cluster's router_worker(): that order cannot be had on cue otherwise.)"""
    from mafalda.horizontal import MediaNode
    from mafalda.mediasoup import Worker
    from mafalda.remote import serve

    async with (
        await serve(host="127.0.0.2", token=TOKEN) as a,
        MediaNode(a, redis_url=redis_server.url, server_id="a", interval=60),
        await horizontal.connect(
            redis_server.url, token=TOKEN, interval=60, worker_idle=0.2
        ) as cluster,
    ):
        room = await cluster.create_router(media_codecs=MEDIA_CODECS)
        first = await room.create_direct_transport(server="a")
        (served,) = [o for o in a.live_objects() if isinstance(o, Worker)]
        dead = cluster._router_workers["a"]
        real_router_worker = cluster.router_worker

        async def worker_killed_first(server_id: str) -> RemoteWorker:
            os.kill(served.pid, signal.SIGKILL)
            await wait_until(_until(lambda: dead.closed and first.closed))
            return await real_router_worker(server_id)

        cluster.router_worker = worker_killed_first  # type: ignore[method-assign]
        cws = await cluster.create_webrtc_server(listen_infos=[{"protocol": "udp"}])
        with pytest.raises(InvalidStateError, match="Router closed"):
            await room.create_webrtc_transport(server="a", webrtc_server=cws)
        cluster.router_worker = real_router_worker  # type: ignore[method-assign]
        assert room.servers == [] and cluster.workers != []  # the new one
        await wait_until(_until(lambda: cluster.workers == [] and _live_workers(a) == []))
        assert "a" not in cluster._router_workers and cws.servers == {}
        # The next transport there makes a worker (and its WebRtcServer) again.
        transport = await room.create_webrtc_transport(server="a", webrtc_server=cws)
        assert not transport.closed and list(cws.servers) == ["a"]
        room.close()
