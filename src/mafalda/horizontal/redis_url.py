"""The cluster's Redis, named by a URL: one server, or a service behind Redis Sentinel.

    redis://[[user]:password@]host[:port][/db]          one Redis (redis-py's URL)
    rediss://...                                        the same over TLS
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...]
    rediss+sentinel://...[?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...
        &ssl_cert_reqs=required|optional|none]           the same, TLS to every server
    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/]
    rediss+cluster://...[?ssl_...]                      a Redis Cluster (its seed nodes)

With Sentinel, every connection asks the sentinels which server is the service's master
(redis-py's ``SentinelConnectionPool``): after a failover, the next command and the next
subscription go to the promoted replica, so the cluster rides out the loss of its Redis
master as it rides out a Redis restart. The URL's user and password are the master's;
``sentinel_password`` the sentinels' own, when they ask for one. With ``rediss+``, the
sentinels and the master are reached over TLS with the same options (a CA file, a client
certificate and key, whether the server's certificate is checked), named as in redis-py's
``rediss://`` URLs.

With Redis Cluster (redis-py's ``RedisCluster``), the seed nodes tell the client the
others; a server's record and report keys land on any shard: the registry's SCAN walks
every primary, and its multi-key reads go shard by shard (``get_many``). Publishing is
cluster-wide, as Redis Cluster's PUBLISH is.

``parse_sentinel_url`` and ``parse_cluster_url`` are pure; ``redis_client`` makes the
client (no I/O until used).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

__all__ = [
    "CLUSTER_SCHEME",
    "CLUSTER_TLS_SCHEME",
    "SENTINEL_SCHEME",
    "SENTINEL_TLS_SCHEME",
    "ClusterSettings",
    "RedisClient",
    "SentinelSettings",
    "get_many",
    "parse_cluster_url",
    "parse_sentinel_url",
    "redis_client",
]

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_TLS_SCHEME = "rediss+sentinel"
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_TLS_SCHEME = "rediss+cluster"
_REDIS_PORT = 6379

#: What redis_client() makes: one Redis (plain, or a Sentinel service's master), or a
#: Redis Cluster.
RedisClient = aioredis.Redis | RedisCluster
_TLS_FILES = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_CERT_REQS = ("required", "optional", "none")
_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelSettings:
    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None
    sentinel_password: str | None
    #: redis-py's TLS arguments (``ssl`` and the URL's ``ssl_*`` options); empty: no TLS
    tls: dict[str, Any]


def _host_port(part: str, url: str, what: str, default_port: int) -> tuple[str, int]:
    if part.startswith("["):  # an IPv6 address
        host, _, rest = part[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise ValueError(f"Redis URL {url!r}: a {what} without a host")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"Redis URL {url!r}: invalid {what} port {port_text!r}")
    return host, int(port_text)


def _split(
    url: str, schemes: tuple[str, str], what: str, default_port: int
) -> tuple[SplitResult, str | None, str | None, list[tuple[str, int]]]:
    """(parts, user, password, (host, port) of each ``what``) of a URL of ``schemes``."""
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ValueError(f"Redis URL {url!r}: not a {schemes[0]}:// or {schemes[1]}:// URL")
    credentials, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user_text, colon, password_text = credentials.partition(":")
        username = unquote(user_text) or None
        password = unquote(password_text) if colon else None
    if not hosts:
        raise ValueError(f"Redis URL {url!r}: no {what} (host:port,...)")
    addresses = [_host_port(part, url, what, default_port) for part in hosts.split(",")]
    return parts, username, password, addresses


def _options(
    parts: SplitResult, url: str, allowed: set[str], tls_scheme: str
) -> tuple[dict[str, str], dict[str, Any]]:
    """A URL's query options (only ``allowed`` ones and the TLS ones), and redis-py's
    TLS arguments from them."""
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {*allowed, "ssl_cert_reqs", *_TLS_FILES}
    if unknown:
        raise ValueError(f"Redis URL {url!r}: unknown option {sorted(unknown)[0]!r}")
    return query, _tls_options(query, parts.scheme == tls_scheme, url, tls_scheme)


def _tls_options(query: dict[str, str], tls: bool, url: str, scheme: str) -> dict[str, Any]:
    """redis-py's TLS arguments from a URL's ``ssl_*`` options (refused without TLS)."""
    if not tls:
        if set(query) & {"ssl_cert_reqs", *_TLS_FILES}:
            raise ValueError(f"Redis URL {url!r}: TLS options need {scheme}://")
        return {}
    options: dict[str, Any] = {"ssl": True}
    options |= {name: query[name] for name in _TLS_FILES if query.get(name)}
    reqs = query.get("ssl_cert_reqs", "required")
    if reqs not in _CERT_REQS:
        raise ValueError(f"Redis URL {url!r}: ssl_cert_reqs must be one of {_CERT_REQS}")
    options["ssl_cert_reqs"] = reqs
    return options


@dataclass(frozen=True)
class ClusterSettings:
    nodes: list[tuple[str, int]]
    username: str | None
    password: str | None
    #: redis-py's TLS arguments (``ssl`` and the URL's ``ssl_*`` options); empty: no TLS
    tls: dict[str, Any]


def parse_cluster_url(url: str) -> ClusterSettings:
    """The settings a ``redis+cluster://`` or ``rediss+cluster://`` URL names (ValueError
    naming what is wrong)."""
    schemes = (CLUSTER_SCHEME, CLUSTER_TLS_SCHEME)
    parts, username, password, nodes = _split(url, schemes, "node", _REDIS_PORT)
    if parts.path.strip("/"):
        raise ValueError(f"Redis URL {url!r}: a Redis Cluster has no database to choose")
    _, tls = _options(parts, url, set(), CLUSTER_TLS_SCHEME)
    return ClusterSettings(nodes=nodes, username=username, password=password, tls=tls)


async def get_many(client: RedisClient, keys: list[Any]) -> list[Any]:
    """MGET, shard by shard on a Redis Cluster (whose MGET takes keys of one slot)."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(keys)
    return list(await client.mget(keys))


async def route_to(client: RedisClient, key: str) -> None:
    """On a Redis Cluster, bring the client's slot map up to date for ``key``'s slot.

    redis-py's cluster pub/sub picks its node from that map but never reads the slots
    itself: a client that ran no command yet has no map (KeyError), and after a
    failover the map names the dead primary until some command fails on it. A keyed
    command re-reads the slots on a connection error and retries on the new primary."""
    if isinstance(client, RedisCluster):
        await client.exists(key)


def parse_sentinel_url(url: str) -> SentinelSettings:
    """The settings a ``redis+sentinel://`` or ``rediss+sentinel://`` URL names
    (ValueError naming what is wrong)."""
    schemes = (SENTINEL_SCHEME, SENTINEL_TLS_SCHEME)
    parts, username, password, sentinels = _split(url, schemes, "sentinel", _SENTINEL_PORT)
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError(f"Redis URL {url!r}: the path must be /service or /service/db")
    service = unquote(path[0])
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise ValueError(f"Redis URL {url!r}: invalid database {path[1]!r}")
        db = int(path[1])
    query, tls = _options(parts, url, {"sentinel_password"}, SENTINEL_TLS_SCHEME)
    sentinel_password = query.get("sentinel_password")
    return SentinelSettings(
        sentinels=sentinels,
        service=service,
        db=db,
        username=username,
        password=password,
        sentinel_password=sentinel_password or None,
        tls=tls,
    )


class _SentinelRedis(aioredis.Redis):
    """The master's client; closing it closes the connections to the sentinels too."""

    # Not "sentinel": Redis has a method of that name (the SENTINEL command). Set by
    # redis_client() as soon as master_for() made it.
    sentinels_of: Sentinel

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinels_of.sentinels:
            await client.aclose()


def redis_client(url: str, *, timeout: float) -> RedisClient:
    """A client of the Redis ``url`` names, its socket and connect timeouts ``timeout``."""
    if not isinstance(url, str):
        raise TypeError("the Redis URL must be a string")
    if url.startswith((CLUSTER_SCHEME + ":", CLUSTER_TLS_SCHEME + ":")):
        cluster = parse_cluster_url(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in cluster.nodes],
            username=cluster.username,
            password=cluster.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            **cluster.tls,
        )
    if not url.startswith((SENTINEL_SCHEME + ":", SENTINEL_TLS_SCHEME + ":")):
        client: aioredis.Redis = aioredis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        return client
    settings = parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        **settings.tls,
    }
    if settings.sentinel_password is not None:
        sentinel_kwargs["password"] = settings.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        settings.sentinels,
        sentinel_kwargs=sentinel_kwargs,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        db=settings.db,
        username=settings.username,
        password=settings.password,
        **settings.tls,
    )
    master = sentinel.master_for(settings.service, redis_class=_SentinelRedis)
    assert isinstance(master, _SentinelRedis)
    master.sentinels_of = sentinel
    return master
