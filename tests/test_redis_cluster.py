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

from mafalda import horizontal, monitor
from mafalda.horizontal.redis_url import parse_cluster_url, redis_client
from tests.processes import (
    HAVE_REDIS,
    TOKEN,
    RedisProcess,
    free_port,
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
    """A free port whose cluster bus port (10000 more) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[str]:
    """Three cluster nodes with every slot between them: the URL of two of them."""
    nodes = []
    try:
        for index in range(3):
            directory = tmp_path / f"node{index}"
            directory.mkdir()
            node = RedisProcess(
                "127.0.0.1",
                *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
                *("--dir", str(directory)),
            )
            node.port = _cluster_port()
            node.start()
            nodes.append(node)
        assert REDIS_CLI is not None
        subprocess.run(
            [REDIS_CLI, "--cluster", "create"]
            + [f"127.0.0.1:{node.port}" for node in nodes]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=30,
        )
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
