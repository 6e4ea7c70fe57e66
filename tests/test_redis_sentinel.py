"""The cluster's Redis behind Redis Sentinel: URLs (pure), and a real failover (a master,
its replica and a sentinel, all Debian's redis-server) that the cluster rides out."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from mafalda import horizontal, monitor
from mafalda.horizontal.redis_url import parse_sentinel_url, redis_client
from tests.processes import (
    HAVE_REDIS,
    REDIS_SERVER,
    TOKEN,
    RedisProcess,
    free_ports,
    reap,
    serve_command,
    spawn_serve,
    tls_files,
)

needs_redis = pytest.mark.skipif(not HAVE_REDIS, reason="redis-server is not installed")


def test_sentinel_urls() -> None:
    settings = parse_sentinel_url("redis+sentinel://10.0.0.1:26380,[::1],s3/cluster/2")
    assert settings.sentinels == [("10.0.0.1", 26380), ("::1", 26379), ("s3", 26379)]
    assert (settings.service, settings.db) == ("cluster", 2)
    assert settings.username is settings.password is settings.sentinel_password is None
    settings = parse_sentinel_url("redis+sentinel://app:p%40ss@h:1/main?sentinel_password=s3cret")
    assert (settings.username, settings.password) == ("app", "p@ss")
    assert (settings.service, settings.db, settings.sentinel_password) == ("main", 0, "s3cret")
    settings = parse_sentinel_url("redis+sentinel://app@h/main")
    assert (settings.username, settings.password) == ("app", None)
    settings = parse_sentinel_url("redis+sentinel://:pw@[::1]:5/main")
    assert (settings.username, settings.password, settings.sentinels) == (None, "pw", [("::1", 5)])


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("redis://h/0", "not a redis+sentinel:// or rediss+sentinel:// URL"),
        ("redis+sentinel://h/main?ssl_ca_certs=/ca.pem", "TLS options need rediss+sentinel://"),
        ("rediss+sentinel://h/main?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("redis+sentinel:///main", "no sentinel"),
        ("redis+sentinel://h,:5/main", "a sentinel without a host"),
        ("redis+sentinel://h:x/main", "invalid sentinel port 'x'"),
        ("redis+sentinel://h:70000/main", "invalid sentinel port '70000'"),
        ("redis+sentinel://h", "the path must be /service or /service/db"),
        ("redis+sentinel://h/a/b/c", "the path must be /service or /service/db"),
        ("redis+sentinel://h/main/x", "invalid database 'x'"),
        ("redis+sentinel://h/main?password=x", "unknown option 'password'"),
    ],
)
def test_a_bad_sentinel_url_is_refused_naming_what_is_wrong(url: str, named: str) -> None:
    with pytest.raises(ValueError, match="Redis URL") as error:
        parse_sentinel_url(url)
    assert named in str(error.value)


def test_tls_sentinel_urls() -> None:
    settings = parse_sentinel_url(
        "rediss+sentinel://:pw@h:1/main?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem"
        "&ssl_keyfile=/k.pem&ssl_cert_reqs=optional&sentinel_password=s"
    )
    assert settings.tls == {
        "ssl": True,
        "ssl_ca_certs": "/ca.pem",
        "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/k.pem",
        "ssl_cert_reqs": "optional",
    }
    assert (settings.password, settings.sentinel_password) == ("pw", "s")
    assert parse_sentinel_url("rediss+sentinel://h/main").tls == {
        "ssl": True,
        "ssl_cert_reqs": "required",  # the server's certificate is checked unless told
    }
    assert parse_sentinel_url("redis+sentinel://h/main?sentinel_password=").tls == {}


async def test_redis_client_over_sentinels_passes_each_its_password() -> None:
    client = redis_client(
        "redis+sentinel://u:master-pw@127.0.0.1:1,127.0.0.1:2/main/3?sentinel_password=s-pw",
        timeout=1.5,
    )
    try:
        sentinels = client.sentinels_of.sentinels  # type: ignore[attr-defined]
        assert len(sentinels) == 2
        for sentinel in sentinels:
            kwargs = sentinel.connection_pool.connection_kwargs
            assert (kwargs["port"], kwargs["password"]) in ((1, "s-pw"), (2, "s-pw"))
            assert kwargs["socket_timeout"] == 1.5
        master = client.connection_pool.connection_kwargs
        assert (master["username"], master["password"], master["db"]) == ("u", "master-pw", 3)
        assert client.connection_pool.service_name == "main"  # type: ignore[attr-defined]
    finally:
        await client.aclose()  # nothing was opened: nothing to wait for


async def test_redis_client_refuses_a_bad_url_before_any_connection() -> None:
    with pytest.raises(ValueError, match="invalid sentinel port"):
        redis_client("redis+sentinel://h:x/main", timeout=1)
    with pytest.raises(TypeError, match="must be a string"):
        redis_client(None, timeout=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="invalid sentinel port"):
        await horizontal.connect("redis+sentinel://h:x/main", token=TOKEN)


class _Sentinel:
    """A redis-server in sentinel mode watching ``master`` as service ``main`` (TLS only,
    with ``tls``: its certificate, key and CA files; masters reached over TLS too)."""

    def __init__(self, master_port: int, directory: Path, tls: tuple[str, ...] = ()) -> None:
        self.port = free_ports(1)  # the sentinel binds it later: below the ephemeral range
        conf = directory / "sentinel.conf"
        listen = f"port {self.port}\n"
        if tls:
            cert, key, ca = tls
            listen = (
                f"port 0\ntls-port {self.port}\ntls-cert-file {cert}\ntls-key-file {key}\n"
                f"tls-ca-cert-file {ca}\ntls-auth-clients no\ntls-replication yes\n"
            )
        conf.write_text(  # the sentinel rewrites it: a file of its own
            f"{listen}bind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor main 127.0.0.1 {master_port} 1\n"
            "sentinel down-after-milliseconds main 400\n"
            "sentinel failover-timeout main 3000\n"
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


async def _until(check: object, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # type: ignore[operator]
            await asyncio.sleep(0.1)


@pytest.fixture
def redis_pair(tmp_path: Path) -> Iterator[tuple[RedisProcess, RedisProcess, _Sentinel]]:
    # Their own directories: a replica's first sync goes through an RDB file.
    for name in ("master", "replica"):
        (tmp_path / name).mkdir()
    master = RedisProcess("127.0.0.1", "--dir", str(tmp_path / "master"))
    master.start()
    replica = RedisProcess(
        "127.0.0.1",
        *("--dir", str(tmp_path / "replica")),
        *("--replicaof", "127.0.0.1", str(master.port)),
    )
    replica.start()
    sentinel = _Sentinel(master.port, tmp_path)
    try:
        yield master, replica, sentinel
    finally:
        sentinel.kill()
        replica.kill()
        master.kill()


@needs_redis
async def test_a_cluster_rides_out_a_sentinel_failover(
    redis_pair: tuple[RedisProcess, RedisProcess, _Sentinel],
) -> None:
    """A `mafalda serve --cluster redis+sentinel://...` server and a cluster client: the
    master is SIGKILLed; the sentinel promotes the replica; the server registers there,
    the client keeps the server and places a new worker on it; a Monitor on the same URL
    sees it too."""
    master, replica, sentinel = redis_pair
    url = f"redis+sentinel://127.0.0.1:{sentinel.port}/main"
    sentinel_db = aioredis.Redis(port=sentinel.port)
    db = aioredis.Redis(port=replica.port)

    async def synced() -> bool:
        info = await db.info("replication")
        return info.get("master_link_status") == "up"

    async def watched() -> bool:
        try:
            replicas = await sentinel_db.execute_command(  # type: ignore[no-untyped-call]
                "SENTINEL", "REPLICAS", "main"
            )
            return len(replicas) == 1
        except (OSError, aioredis.RedisError):
            return False

    await _until(synced)
    await _until(watched)
    proc, _ = await spawn_serve(serve_command(url, 1, 0.3))
    procs = [proc]
    cluster = await horizontal.connect(url, token=TOKEN, interval=0.2, grace=10.0)
    try:
        await _until(lambda: _has(cluster, "s1"))
        before = await cluster.create_worker(log_level="warn")
        master.kill()

        async def promoted() -> bool:
            try:
                address = await sentinel_db.execute_command(  # type: ignore[no-untyped-call]
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "main"
                )
            except (OSError, aioredis.RedisError):
                return False
            return int(address[1]) == replica.port

        await _until(promoted, 30)
        # The record the replica had from the old master lives 0.9 s (3 heartbeats):
        # still there well after, the server writes to the new master.
        await asyncio.sleep(2.0)
        assert await _registered(db, "s1")
        after = await cluster.create_worker(log_level="warn")
        assert cluster.server_of(after)["id"] == "s1"  # type: ignore[index]
        assert not before.closed  # the media server never went: its worker stays
        # A server that only the new master knows: the client reads the new master.
        second, _ = await spawn_serve(serve_command(url, 2, 0.3))
        procs.append(second)
        await _until(lambda: _has(cluster, "s2"))
        async with await monitor.connect(url, interval=0.2) as mon:
            await _until(lambda: _sees(mon, {"s1", "s2"}))
    finally:
        await cluster.aclose()
        await sentinel_db.aclose()
        await db.aclose()
        for each in procs:
            each.kill()
            await reap(each)


@needs_redis
async def test_a_cluster_over_tls_sentinels(tmp_path: Path) -> None:
    """``rediss+sentinel://``: the sentinel and the master take TLS only; a `mafalda serve
    --cluster` server and a cluster client find the master through the sentinel with the
    CA from the URL; with another CA, the connection is refused."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    ca, cert, key = tls_files(tmp_path)
    master = RedisProcess(
        "127.0.0.1",
        "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
        "--tls-auth-clients", "no",
        scheme="rediss",
    )  # fmt: skip
    master.start()
    sentinel = _Sentinel(master.port, tmp_path, (cert, key, ca))
    url = f"rediss+sentinel://127.0.0.1:{sentinel.port}/main?ssl_ca_certs={ca}"
    procs: list[asyncio.subprocess.Process] = []
    try:
        client = redis_client(url, timeout=2)
        try:
            await _until(lambda: _answers(client))
        finally:
            await client.aclose()
        proc, _ = await spawn_serve(serve_command(url, 1, 0.3))
        procs.append(proc)
        async with await horizontal.connect(url, token=TOKEN, interval=0.2) as cluster:
            await _until(lambda: _has(cluster, "s1"))
            worker = await cluster.create_worker(log_level="warn")
            assert cluster.server_of(worker)["id"] == "s1"  # type: ignore[index]
        (tmp_path / "other").mkdir()
        other_ca, _, _ = tls_files(tmp_path / "other")
        # The sentinel's certificate is not trusted with another CA: refused.
        refused = redis_client(url.replace(ca, other_ca), timeout=0.5)
        try:
            with pytest.raises(RedisConnectionError):
                await refused.ping()
        finally:
            await refused.aclose()
    finally:
        for each in procs:
            each.kill()
            await reap(each)
        sentinel.kill()
        master.kill()


async def _answers(client: aioredis.Redis) -> bool:
    try:
        await client.set("probe", "1")
    except (OSError, aioredis.RedisError):
        return False
    return await client.get("probe") == b"1"


async def _has(cluster: horizontal.Cluster, server_id: str) -> bool:
    return server_id in cluster.servers


async def _registered(db: aioredis.Redis, server_id: str) -> bool:
    return bool(await db.exists(f"mafalda:server:{server_id}"))


async def _sees(mon: monitor.Monitor | monitor.SwarmMonitor, ids: set[str]) -> bool:
    view = await mon.view()
    return {s["id"] for s in view["servers"] if s["reported"]} == ids
