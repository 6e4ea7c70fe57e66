"""Publishes a Probe's reports in the cluster's Redis, for the Monitor.

    async with Reporter(probe, redis_url=REDIS, server_id=node.id):
        ...   # every ``interval`` seconds: probe.sample() -> SET {prefix}:stats:{id} PX 3x

``mafalda serve --cluster`` runs one beside its MediaNode (same id, same interval). A
report is rewritten with a TTL of three intervals, so a server that stops reporting
(killed, cut off) leaves the Monitor's view with its registry record.
"""

from __future__ import annotations

import contextlib
import logging

from redis.exceptions import RedisError

from mafalda.horizontal import registry
from mafalda.horizontal.periodic import Periodic, start_or_close
from mafalda.horizontal.redis_url import redis_client
from mafalda.monitor.probe import Probe
from mafalda.monitor.stats import encode_stats, stats_key

__all__ = ["Reporter"]

logger = logging.getLogger("mafalda.monitor.reporter")


class Reporter:
    def __init__(
        self,
        probe: Probe,
        *,
        redis_url: str,
        server_id: str,
        prefix: str = registry.DEFAULT_PREFIX,
        interval: float = 2.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.probe = probe
        self.key = stats_key(server_id, prefix)  # ValueError for an id no server has
        probe.server_id = server_id
        self.interval = interval
        self.ttl_ms = int(interval * 3000)
        self._beat = Periodic(
            self.report,
            interval=interval,
            logger=logger,
            failed="report to Redis failed",
            again="reporting to Redis again",
            refused="cannot report to Redis",
        )
        self._redis = redis_client(redis_url, timeout=max(interval, 1.0))
        self._closed = False

    async def report(self) -> None:
        """Sample and publish once (RedisError/OSError when Redis cannot be reached)."""
        stats = await self.probe.sample()
        await self._redis.set(self.key, encode_stats(stats), px=self.ttl_ms)

    async def start(self) -> None:
        """Publish now (OSError if Redis is unreachable), then every ``interval``."""
        await start_or_close(self._beat, self._redis)

    async def aclose(self) -> None:
        """Stop and delete the report (best effort: its TTL covers a failure)."""
        if self._closed:
            return
        self._closed = True
        await self._beat.stop()
        with contextlib.suppress(RedisError, OSError):
            await self._redis.delete(self.key)
        await self._redis.aclose()

    async def __aenter__(self) -> Reporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
