"""The cluster's Redis as a Redis Cluster: URLs (pure), and three real cluster nodes
(Debian's redis-server, joined with redis-cli) that servers, clients and a Monitor use."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mafalda import horizontal, monitor
from mafalda.horizontal import registry
from mafalda.horizontal.membership import RedisMembership
from mafalda.horizontal.redis_url import parse_cluster_url, redis_client
from tests.processes import (
    HAVE_REDIS,
    TOKEN,
    RedisProcess,
    free_ports,
    reap,
    serve_command,
    spawn_serve,
)

from .conftest import MEDIA_CODECS
from .test_redis_sentinel import _has, _sees, _until

REDIS_CLI = shutil.which("redis-cli")
needs_cluster = pytest.mark.skipif(
    not HAVE_REDIS or REDIS_CLI is None, reason="redis-server and redis-cli are needed"
)


def test_cluster_urls() -> None:
    settings = parse_cluster_url("redis+cluster://10.0.0.1:7000,[::1],r3/")
    assert settings.nodes == [("10.0.0.1", 7000), ("::1", 6379), ("r3", 6379)]
    assert settings.username is settings.password is None and settings.tls == {}
    settings = parse_cluster_url("rediss+cluster://app:p%40ss@h:1?ssl_ca_certs=/ca.pem")
    assert (settings.username, settings.password) == ("app", "p@ss")
    assert settings.tls == {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"}


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://h/0", "not a redis+cluster:// or rediss+cluster:// URL"),
        ("redis+cluster://", "no node"),
        ("redis+cluster://h,:5", "a node without a host"),
        ("redis+cluster://h:x", "invalid node port 'x'"),
        ("redis+cluster://h/2", "a Redis Cluster has no database to choose"),
        ("redis+cluster://h?db=1", "unknown option 'db'"),
        ("redis+cluster://h?ssl_ca_certs=/ca.pem", "TLS options need rediss+cluster://"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(ValueError, match="Redis URL") as error:
        parse_cluster_url(url)
    assert named in str(error.value)
    if url.startswith("redis+cluster:"):  # refused before any connection
        with pytest.raises(ValueError, match="Redis URL"):
            redis_client(url, timeout=1)


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 more) is free too, both below the
    ephemeral range (the node binds them later)."""
    while True:
        port = free_ports(1)
        if port + 10000 < 32768:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


def _start_cluster(
    nodes: list[RedisProcess], tmp_path: Path, primaries: int, replicas: int
) -> None:
    """Cluster nodes with every slot between ``primaries`` of them, each with
    ``replicas`` replicas, appended to ``nodes`` as they start (the caller kills them)."""
    for index in range(primaries * (1 + replicas)):
        directory = tmp_path / f"node{index}"
        directory.mkdir()
        node = RedisProcess(
            "127.0.0.1",
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            # A quick failover, and a replica's first sync at once: a replica that
            # never synced does not take over its primary.
            *("--cluster-node-timeout", "500", "--repl-diskless-sync-delay", "0"),
            *("--dir", str(directory)),
        )
        node.port = _cluster_port()
        node.start()
        nodes.append(node)
    assert REDIS_CLI is not None
    subprocess.run(
        [REDIS_CLI, "--cluster", "create"]
        + [f"127.0.0.1:{node.port}" for node in nodes]
        + ["--cluster-replicas", str(replicas), "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[str]:
    """Three cluster nodes with every slot between them: the URL of two of them."""
    nodes: list[RedisProcess] = []
    try:
        _start_cluster(nodes, tmp_path, 3, 0)
        yield f"redis+cluster://127.0.0.1:{nodes[0].port},127.0.0.1:{nodes[1].port}"
    finally:
        for node in nodes:
            node.kill()


async def _cluster_ready(url: str) -> bool:
    client = redis_client(url, timeout=1)
    try:
        info = await client.cluster_info()
        return bool(info.get("cluster_state") == "ok")
    except Exception:
        return False
    finally:
        await client.aclose()


@needs_cluster
async def test_servers_and_clients_over_a_redis_cluster(redis_cluster: str) -> None:
    """Two `mafalda serve --cluster redis+cluster://...` servers register (their keys on
    whichever shards), a cluster client sees both and places on each, a Monitor reads
    both reports; one server's SIGTERM reaches the client (its deregistration and the
    cluster-wide 'leave')."""
    url = redis_cluster
    await _until(lambda: _cluster_ready(url))
    procs = []
    try:
        for index in (1, 2):
            proc, _ = await spawn_serve(serve_command(url, index, 0.3))
            procs.append(proc)
        cluster = await horizontal.connect(url, token=TOKEN, interval=0.2)
        try:
            await _until(lambda: _has(cluster, "s1"))
            await _until(lambda: _has(cluster, "s2"))
            router = await cluster.create_router(media_codecs=MEDIA_CODECS)
            for server_id in ("s1", "s2"):
                transport = await router.create_direct_transport(server=server_id)
                assert router.server_of(transport) == server_id
            async with await monitor.connect(url, interval=0.2) as mon:
                await _until(lambda: _sees(mon, {"s1", "s2"}))
            router.close()  # nothing left for s2 to drain
            procs[1].terminate()
            async with asyncio.timeout(20):
                await reap(procs[1])

            async def gone() -> bool:
                return "s2" not in cluster.servers

            await _until(gone)
            assert "s1" in cluster.servers
        finally:
            await cluster.aclose()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await reap(proc)


@pytest.fixture
def redis_cluster_with_replicas(tmp_path: Path) -> Iterator[list[RedisProcess]]:
    """Three primaries with every slot between them, each with a synced replica."""
    nodes: list[RedisProcess] = []
    try:
        _start_cluster(nodes, tmp_path, 3, 1)
        yield nodes
    finally:
        for node in nodes:
            node.kill()


async def _replicas_synced(nodes: list[RedisProcess]) -> bool:
    synced = 0
    for node in nodes:
        db = aioredis.Redis(port=node.port)
        try:
            info = await db.info("replication")
        finally:
            await db.aclose()
        if info.get("role") == "slave":
            if info.get("master_link_status") != "up":
                return False
            synced += 1
    return synced == len(nodes) // 2


@needs_cluster
async def test_servers_and_clients_ride_out_a_redis_cluster_failover(
    redis_cluster_with_replicas: list[RedisProcess],
) -> None:
    """The primary holding the membership channel's slot and one server's record is
    SIGKILLed; its replica takes over. The servers' heartbeats reach the new primary,
    the client keeps both servers and places on each, and the membership channel
    (listened to alone, with no registry reads) still brings a server's 'leave'."""
    nodes = redis_cluster_with_replicas
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes[:2])
    await _until(lambda: _cluster_ready(url))
    await _until(lambda: _replicas_synced(nodes))
    channel = registry.membership_channel()
    probe = redis_client(url, timeout=1)
    try:
        await probe.initialize()
        victim_port = probe.get_node_from_key(channel).port
        # A server whose record is on the victim's shard, and one on another shard.
        on_victim = next(
            i
            for i in range(1, 200)
            if probe.get_node_from_key(registry.server_key(f"s{i}")).port == victim_port
        )
        elsewhere = next(
            i
            for i in range(1, 200)
            if probe.get_node_from_key(registry.server_key(f"s{i}")).port != victim_port
        )
    finally:
        await probe.aclose()
    victim = next(node for node in nodes if node.port == victim_port)
    ids = (f"s{on_victim}", f"s{elsewhere}")

    left: list[str] = []
    listening = True
    listener_client = redis_client(url, timeout=1)
    await listener_client.initialize()  # its slot map read, as a Cluster's first read does
    listener = RedisMembership(listener_client, prefix="mafalda", interval=0.2)

    async def nothing() -> None:
        return None

    async def record_leave(server_id: str) -> None:
        left.append(server_id)

    watch = asyncio.create_task(
        listener.watch(
            running=lambda: listening,
            refresh=nothing,
            seen=lambda record: None,
            left=record_leave,
        )
    )
    procs = []
    cluster = await horizontal.connect(url, token=TOKEN, interval=0.2, grace=10.0)
    try:
        for index in (on_victim, elsewhere):
            proc, _ = await spawn_serve(serve_command(url, index, 0.3))
            procs.append(proc)
        for server_id in ids:
            await _until(lambda server_id=server_id: _has(cluster, server_id))
        router = await cluster.create_router(media_codecs=MEDIA_CODECS)
        before = await router.create_direct_transport(server=ids[0])
        victim.kill()
        survivors = [node for node in nodes if node is not victim]

        async def promoted() -> bool:
            fresh = redis_client(
                "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in survivors),
                timeout=1,
            )
            try:
                await fresh.initialize()
                info = await fresh.cluster_info()
                return bool(
                    info.get("cluster_state") == "ok"
                    and fresh.get_node_from_key(channel).port != victim_port
                )
            except Exception:
                return False
            finally:
                await fresh.aclose()

        await _until(promoted, 30)
        # A record lives 0.9 s (3 heartbeats): still there well after, so the servers
        # write to the new primary.
        await asyncio.sleep(2.0)
        for server_id in ids:
            assert server_id in cluster.servers
            transport = await router.create_direct_transport(server=server_id)
            assert router.server_of(transport) == server_id
        assert not before.closed
        procs[1].terminate()
        async with asyncio.timeout(20):
            await reap(procs[1])

        async def announced() -> bool:
            return ids[1] in left

        await _until(announced)

        async def gone() -> bool:
            return ids[1] not in cluster.servers

        await _until(gone)
        assert ids[0] in cluster.servers
    finally:
        listening = False
        await watch
        await listener.aclose()
        await cluster.aclose()
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await reap(proc)
