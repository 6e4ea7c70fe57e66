"""The Monitor: a live view of a cluster's servers, workers, routers, loads and links.

    async with await mafalda.monitor.connect("redis://redis:6379/0") as monitor:
        view = await monitor.view()              # ClusterView, a plain dict
        async for view in monitor.views():       # one now, then one per interval
            print(render_text(view))

It only reads Redis: the registry's records (``mafalda.horizontal``) and the reports
the servers' probes publish beside them (``mafalda serve --cluster`` publishes one), so
watching costs the media servers nothing more, and any number of monitors may watch.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from mafalda.horizontal import registry
from mafalda.horizontal.redis_url import get_many, redis_client
from mafalda.horizontal.registry import ServerRecord
from mafalda.monitor.stats import ServerStats, decode_stats, stats_pattern
from mafalda.monitor.view import ClusterView, build_view

if TYPE_CHECKING:
    from mafalda.monitor.swarm import SwarmMonitor

__all__ = ["Monitor", "connect", "poll_views"]

logger = logging.getLogger("mafalda.monitor")


async def poll_views(
    view: Callable[[], Awaitable[ClusterView]],
    interval: float,
    errors: tuple[type[Exception], ...],
    what: str,
) -> AsyncIterator[ClusterView]:
    """``view()`` now, then every ``interval`` seconds; while it fails with ``errors``,
    nothing (``what`` failed, logged once), and views again when it works."""
    failing = False
    while True:
        try:
            result = await view()
        except errors as error:
            if not failing:
                logger.warning("%s failed: %s", what, error)
            failing = True
        else:
            failing = False
            yield result
        await asyncio.sleep(interval)


class Monitor:
    def __init__(
        self, redis_url: str, *, prefix: str = registry.DEFAULT_PREFIX, interval: float = 2.0
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.prefix = prefix
        self.interval = interval
        self._redis = redis_client(redis_url, timeout=5.0)
        self._warned: set[tuple[str, str]] = set()

    def _ignore(self, key: str, error: ValueError) -> None:
        # Said once per key and reason: a bad key is read again at every refresh.
        if (key, str(error)) not in self._warned:
            self._warned.add((key, str(error)))
            logger.warning("ignoring %s: %s", key, error)

    async def _read(self, pattern: str) -> list[tuple[str, bytes | str]]:
        keys = [key async for key in self._redis.scan_iter(match=pattern, count=500)]
        values = await get_many(self._redis, keys) if keys else []
        return [
            (key.decode(errors="replace") if isinstance(key, bytes) else key, raw)
            for key, raw in zip(keys, values, strict=True)
            if raw is not None  # expired between the scan and the read
        ]

    async def records(self) -> list[ServerRecord]:
        found: list[ServerRecord] = []
        for key, raw in await self._read(registry.server_pattern(self.prefix)):
            server_id = registry.server_id_from_key(key, self.prefix)
            if server_id is None:
                continue
            try:
                record = registry.decode_record(raw)
            except ValueError as error:
                self._ignore(key, error)
                continue
            if record["id"] == server_id:
                found.append(record)
        return found

    async def reports(self) -> list[ServerStats]:
        found: list[ServerStats] = []
        head = f"{self.prefix}:stats:"
        for key, raw in await self._read(stats_pattern(self.prefix)):
            try:
                report = decode_stats(raw)
            except ValueError as error:
                self._ignore(key, error)
                continue
            if key == head + report["id"]:  # a report under another server's key: not it
                found.append(report)
        return found

    async def view(self) -> ClusterView:
        """Read Redis now (RedisError/OSError when it cannot be reached)."""
        records = await self.records()
        return build_view(records, await self.reports())

    def views(self) -> AsyncIterator[ClusterView]:
        """A view now, then one every ``interval`` seconds; while Redis cannot be read,
        nothing (logged once), and views again when it can."""
        return poll_views(self.view, self.interval, (RedisError, OSError), "reading Redis")

    async def aclose(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> Monitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def connect(
    url: str,
    *,
    token: str | None = None,
    prefix: str = registry.DEFAULT_PREFIX,
    interval: float = 2.0,
    ssl: ssl_module.SSLContext | None = None,
) -> Monitor | SwarmMonitor:
    """A Monitor of the cluster whose Redis is ``url`` (``redis://``, ``rediss://``: TLS
    options go in the URL), or of the swarm that the server at ``url`` (``ws://``,
    ``wss://``: ``ssl`` checks the servers' certificates) belongs to, read with the
    servers' ``token``. OSError when it cannot be reached."""
    if url.startswith(("ws://", "wss://")):
        if not token:
            raise ValueError("watching a swarm needs its servers' token")
        from mafalda.monitor.swarm import connect_swarm  # it stands on this module

        return await connect_swarm([url], token=token, interval=interval, ssl=ssl)
    monitor = Monitor(url, prefix=prefix, interval=interval)
    try:
        await monitor._redis.ping()
    except (RedisError, OSError) as error:
        await monitor.aclose()
        raise OSError(f"cannot reach Redis at {url}: {error}") from error
    return monitor
