"""A swarm's servers used as one: ``mafalda.horizontal``'s Cluster, its membership read
from any server of the swarm instead of Redis.

    cluster = await mafalda.swarm.connect(["ws://10.0.0.4:4443/"], token=TOKEN)
    router = await cluster.create_router(media_codecs=[...])   # spans the servers
    worker = await cluster.create_worker()   # or: a worker placed by load on a server
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from mafalda.horizontal.cluster import Cluster, Policy, check_options, open_cluster
from mafalda.horizontal.membership import Snapshot
from mafalda.horizontal.registry import ServerRecord
from mafalda.swarm.gossip import decode_gossip
from mafalda.swarm.urls import check_seeds, route_url

__all__ = ["SwarmMembership", "connect"]


class SwarmMembership:
    """The swarm's table as one of its servers answers it (``GET /swarm``): the server
    that answered last, else another live one, else a seed."""

    def __init__(
        self, seeds: list[str], *, token: str, ssl: ssl_module.SSLContext | None, timeout: float
    ) -> None:
        self.seeds = seeds
        self._ssl = ssl
        self._known: list[str] = []  # the live servers' control URLs, as last read
        self._last: str | None = None
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Authorization": f"Bearer {token}"},
        )

    @property
    def entry_point(self) -> str | None:
        """The server whose table was read last."""
        return self._last

    async def read(self) -> Snapshot:
        candidates = [self._last, *self._known, *self.seeds]
        failures: list[str] = []
        for url in dict.fromkeys(u for u in candidates if u is not None):
            try:
                async with self._http.get(
                    route_url(url), ssl=self._ssl if self._ssl is not None else True
                ) as response:
                    status, body = response.status, await response.read()
            except (aiohttp.ClientError, OSError, TimeoutError) as error:
                failures.append(f"{url}: {error or type(error).__name__}")
                continue
            if status == 401:
                raise PermissionError(f"the swarm's server {url} refused the token")
            try:
                if status != 200:
                    raise ValueError(f"HTTP {status}")
                entries = decode_gossip(body)
            except ValueError as error:
                failures.append(f"{url}: {error}")
                continue
            self._last = url
            live: dict[str, ServerRecord] = {
                e["record"]["id"]: e["record"] for e in entries if not e["left"]
            }
            self._known = [record["controlUrl"] for record in live.values()]
            return Snapshot(live, frozenset(e["record"]["id"] for e in entries if e["left"]))
        raise OSError("no server of the swarm answered: " + "; ".join(failures))

    async def watch(
        self,
        *,
        running: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]],
        seen: Callable[[ServerRecord], None],
        left: Callable[[str], Awaitable[None]],
    ) -> None:
        """Nothing is pushed: the client reads a table every ``interval``."""

    async def aclose(self) -> None:
        await self._http.close()


async def connect(
    seeds: Sequence[str],
    *,
    token: str,
    policy: Policy = "least-loaded",
    region: str | None = None,
    interval: float = 1.0,
    grace: float = 5.0,
    ssl: ssl_module.SSLContext | None = None,
    connect_timeout: float = 10.0,
    worker_settings: dict[str, Any] | None = None,
    worker_idle: float = 10.0,
    call_timeout: float | None = None,
) -> Cluster:
    """Use the servers of the swarm that ``seeds`` (URLs of any of its servers) belong
    to; the same Cluster, and the same options, as ``mafalda.horizontal.connect()``.

    The servers' table is read from one of them every ``interval`` seconds (any server
    is an entry point: when one goes away, the next known one is read). A server that
    left politely is dropped at the next read; one the swarm dropped as silent, or that
    is missing from the table, ``grace`` seconds later.
    """
    urls = check_seeds(seeds, required=True)
    check_options(
        policy=policy,
        region=region,
        interval=interval,
        grace=grace,
        worker_idle=worker_idle,
        call_timeout=call_timeout,
        connect_timeout=connect_timeout,
    )
    membership = SwarmMembership(
        urls, token=token, ssl=ssl, timeout=min(connect_timeout, max(interval, 1.0) * 2)
    )
    return await open_cluster(
        membership,
        token=token,
        policy=policy,
        region=region,
        interval=interval,
        grace=grace,
        ssl=ssl,
        connect_timeout=connect_timeout,
        worker_settings=worker_settings,
        worker_idle=worker_idle,
        call_timeout=call_timeout,
    )
