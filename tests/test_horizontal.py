"""mafalda.horizontal against a real Redis and real ``mafalda serve --cluster`` processes.

Each media server is a separate process on its own loopback address (127.0.0.2, .3, .4:
control port and media bound there). Network namespaces with veth pairs were not used
in this increment.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from mafalda import horizontal
from mafalda.horizontal import registry
from mafalda.horizontal.cluster import Cluster, ClusterError, is_loopback
from mafalda.remote import RemoteMediasoup, RemoteWorker
from mafalda.remote import connect as remote_connect

TOKEN = "cluster-secret"
HEARTBEAT = 0.3  # TTL 0.9 s
REDIS_SERVER = "/usr/bin/redis-server"
OPUS_PT = 100
MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}
]

pytestmark = pytest.mark.skipif(
    not os.path.exists(REDIS_SERVER), reason="redis-server is not installed"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisProcess:
    """A throwaway redis-server (no persistence) that the tests may kill and restart."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
            + ["--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        client: aioredis.Redis = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        if await client.ping():
                            return
                    except Exception:
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, server_id: str, url: str) -> None:
        self.proc = proc
        self.id = server_id
        self.url = url


@pytest.fixture
async def redis_server() -> AsyncIterator[RedisProcess]:
    server = RedisProcess()
    await server.start()
    yield server
    server.kill()


@pytest.fixture
async def db(redis_server: RedisProcess) -> AsyncIterator[aioredis.Redis]:
    client: aioredis.Redis = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


async def _start_server(redis_url: str, index: int, *extra: str) -> Server:
    server_id = f"s{index}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mafalda.cli",
        "serve",
        "--host",
        f"127.0.0.{index + 1}",
        "--port",
        "0",
        "--token",
        TOKEN,
        "--cluster",
        redis_url,
        "--server-id",
        server_id,
        "--heartbeat",
        str(HEARTBEAT),
        "--drain-timeout",
        "10",
        *extra,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert "listening on" in line, line
    return Server(proc, server_id, line.split("listening on ")[1].strip())


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
    c = await horizontal.connect(redis_server.url, token=TOKEN, interval=0.2, grace=1.5)
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
        "version": "mafalda-remote/1",
    }
    assert registry.decode_record(registry.encode_record(record)) == record
    assert registry.decode_record(registry.encode_record(record).encode()) == record
    for bad in (b"\xff", "[]", "{", '{"id": "a"}'):
        with pytest.raises(ValueError, match="server record"):
            registry.decode_record(bad)
    for key, value in (("workers", True), ("load", -1), ("region", 3), ("draining", 0)):
        with pytest.raises(ValueError, match="server record"):
            registry.decode_record(registry.encode_record({**record, key: value}))  # type: ignore[misc]
    assert registry.server_key("a") == "mafalda:server:a"
    assert registry.server_key("a", "x") == "x:server:a"
    for bad_id in ("", "a:b", "*"):
        with pytest.raises(ValueError, match="server id"):
            registry.server_key(bad_id)
    assert registry.server_id_from_key(b"mafalda:server:a") == "a"
    assert registry.server_id_from_key("mafalda:server:") is None
    assert registry.server_id_from_key("other:server:a") is None
    assert registry.server_pattern("x") == "x:server:*"
    assert registry.membership_channel() == "mafalda:membership"
    message = registry.encode_membership("leave", "a")
    assert registry.decode_membership(message) == {"event": "leave", "id": "a"}
    for bad in (b"\xff", "1", '{"event": "boom", "id": "a"}', '{"event": "join", "id": ""}'):
        assert registry.decode_membership(bad) is None
    assert is_loopback("127.0.0.3") and is_loopback("localhost") and not is_loopback("10.0.0.1")


async def test_connect_validates_options(redis_server: RedisProcess) -> None:
    with pytest.raises(ValueError, match="policy"):
        await horizontal.connect(redis_server.url, token=TOKEN, policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="region"):
        await horizontal.connect(redis_server.url, token=TOKEN, policy="region")
    with pytest.raises(ValueError, match="interval"):
        await horizontal.connect(redis_server.url, token=TOKEN, interval=0)
    async with await horizontal.connect(redis_server.url, token=TOKEN) as empty:
        assert empty.servers == {} and empty.dump()["servers"] == {}
        with pytest.raises(ClusterError, match="no live media server"):
            await empty.create_worker()
    assert empty.closed
    with pytest.raises(ClusterError, match="closed"):
        await empty.create_worker()


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
        "controlUrl": f"ws://127.0.0.1:{_free_port()}/",
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


# -- media between servers -----------------------------------------------------------------


class _Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rtp = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            self.rtp += 1


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
        rtp_parameters={
            "codecs": [
                {
                    "mimeType": "audio/opus",
                    "payloadType": OPUS_PT,
                    "clockRate": 48000,
                    "channels": 2,
                }
            ],
            "encodings": [{"ssrc": 4321}],
        },
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
        rtp_parameters={
            "codecs": [
                {
                    "mimeType": "audio/opus",
                    "payloadType": OPUS_PT,
                    "clockRate": 48000,
                    "channels": 2,
                }
            ],
            "encodings": [{"ssrc": 4322}],
        },
    )
    await cluster.pipe_to_router(producer=producer2, router=router_a, target_router=router_b)
    assert len(cluster.dump()["pipes"]) == 1


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


async def test_sigterm_drains_then_deregisters(
    db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    workers = [await cluster.create_worker(log_level="warn") for _ in range(3)]
    draining = next(w for w in workers if cluster.server_of(w)["id"] == "s3")  # type: ignore[index]
    router = await draining.create_router(media_codecs=MEDIA_CODECS)

    servers[2].proc.send_signal(signal.SIGTERM)

    async def marked() -> bool:
        record = await record_of(db, "s3")
        return record is not None and record["draining"] and cluster.servers["s3"]["draining"]

    await wait_until(marked)
    assert servers[2].proc.returncode is None  # still serving its objects
    assert (await router.dump())["id"] == router.id
    for _ in range(3):
        fresh = await cluster.create_worker(log_level="warn")
        assert cluster.server_of(fresh)["id"] != "s3"  # type: ignore[index]

    left = asyncio.ensure_future(cluster.observer.wait_for("serverleave"))
    draining.close()
    async with asyncio.timeout(10):
        record, reason = await left
        assert await servers[2].proc.wait() == 0
    assert record["id"] == "s3" and reason == "left"
    assert await record_of(db, "s3") is None


async def test_redis_restart_servers_register_again(
    redis_server: RedisProcess, db: aioredis.Redis, servers: list[Server], cluster: Cluster
) -> None:
    worker = await cluster.create_worker(log_level="warn")
    leaves: list[Any] = []
    cluster.observer.on("serverleave", lambda record, reason: leaves.append(record["id"]))

    redis_server.kill()
    await redis_server.start()  # same port, empty

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
        f"redis://127.0.0.1:{_free_port()}/0",
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
        with pytest.raises(ValueError, match="interval"):
            MediaNode(server, redis_url=redis_server.url, interval=0)
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
