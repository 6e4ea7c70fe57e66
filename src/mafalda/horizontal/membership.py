"""Where a cluster client learns the live media servers.

A ``Cluster`` reads its servers' records from a membership: the Redis registry here
(``RedisMembership``: records under keys with a TTL, join/update/leave announced on a
pub/sub channel), or a swarm's gossip (``mafalda.swarm``: any server's table, no
Redis). Placement, pipes and cluster routers are the same over either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol

from redis.exceptions import RedisError

from mafalda.horizontal import registry
from mafalda.horizontal.redis_url import RedisClient, get_many, route_to
from mafalda.horizontal.registry import ServerRecord

__all__ = ["Membership", "RedisMembership", "Snapshot"]

logger = logging.getLogger("mafalda.horizontal.cluster")


class Snapshot(NamedTuple):
    """The live servers' records, and the servers known to have left (at once gone,
    without waiting for the client's grace)."""

    records: dict[str, ServerRecord]
    left: frozenset[str] = frozenset()


class Membership(Protocol):
    async def read(self) -> Snapshot:
        """Every live server's record now (RedisError or OSError when it cannot)."""

    async def watch(
        self,
        *,
        running: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]],
        seen: Callable[[ServerRecord], None],
        left: Callable[[str], Awaitable[None]],
    ) -> None:
        """Tell the client of changes as they are announced, while ``running()``
        (returns at once when the membership has no announcements: reads only)."""

    async def aclose(self) -> None: ...


class RedisMembership:
    """The registry in Redis (``registry``'s keys), read by SCAN and announced by
    pub/sub."""

    def __init__(self, client: RedisClient, *, prefix: str, interval: float) -> None:
        self._redis = client
        self.prefix = prefix
        self.interval = interval

    async def read(self) -> Snapshot:
        found: dict[str, ServerRecord] = {}
        pattern = registry.server_pattern(self.prefix)
        keys = [key async for key in self._redis.scan_iter(match=pattern, count=500)]
        values = await get_many(self._redis, keys) if keys else []
        for key, raw in zip(keys, values, strict=True):
            server_id = registry.server_id_from_key(key, self.prefix)
            if server_id is None or raw is None:
                continue
            try:
                record = registry.decode_record(raw)
            except ValueError as error:
                logger.warning("ignoring server %s: %s", server_id, error)
                continue
            if record["id"] == server_id:
                found[server_id] = record
        return Snapshot(found)

    async def _fetch(self, server_id: str) -> ServerRecord | None:
        raw = await self._redis.get(registry.server_key(server_id, self.prefix))
        if raw is None:
            return None
        try:
            record = registry.decode_record(raw)
        except ValueError:
            return None
        return record if record["id"] == server_id else None

    async def watch(
        self,
        *,
        running: Callable[[], bool],
        refresh: Callable[[], Awaitable[None]],
        seen: Callable[[ServerRecord], None],
        left: Callable[[str], Awaitable[None]],
    ) -> None:
        # Also stops on ``running()``: redis-py may turn a cancellation into a
        # TimeoutError (an OSError), which this loop would otherwise survive.
        channel = registry.membership_channel(self.prefix)
        while running():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await route_to(self._redis, channel)
                await pubsub.subscribe(channel)
                await refresh()  # what happened while not subscribed
                while running():
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    parsed = registry.decode_membership(message["data"])
                    if parsed is None:
                        continue
                    record = await self._fetch(parsed["id"])
                    if record is not None:
                        # (A leave with a record there: late, of an earlier run of a
                        # server restarted with that id, which registered since.)
                        seen(record)
                    elif parsed["event"] == "leave":
                        await left(parsed["id"])
            except (RedisError, OSError) as error:
                logger.warning("membership channel lost: %s", error)
                await asyncio.sleep(self.interval)
            except Exception:  # keep listening whatever happened
                logger.exception("membership channel failed")
                await asyncio.sleep(self.interval)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        await self._redis.aclose()
