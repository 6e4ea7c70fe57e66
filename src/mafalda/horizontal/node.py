"""A media server node: a Remote Mediasoup server that registers itself in Redis.

    server = await mafalda.remote.serve(host="10.0.0.5", port=4443, token=TOKEN)
    node = MediaNode(server, redis_url="redis://redis:6379/0", region="eu")
    await node.start()          # registered, heart-beating
    ...
    await node.drain(timeout=30)  # SIGTERM: no new placements, wait for objects to close
    await node.aclose()           # deregistered

The record (``registry.ServerRecord``) is rewritten every ``interval`` seconds with a TTL
of ``3 * interval``: a node that stops heart-beating (killed, cut off) disappears from
the registry, and a node whose Redis restarted registers again at its next heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid

from redis.exceptions import RedisError

from mafalda.horizontal import registry
from mafalda.horizontal.periodic import Periodic, check_seconds, start_or_close
from mafalda.horizontal.redis_url import redis_client
from mafalda.horizontal.registry import MembershipEvent, ServerRecord
from mafalda.mediasoup import Consumer, Worker
from mafalda.remote import PROTOCOL_VERSION, RemoteServer

__all__ = ["MediaNode", "control_url", "server_record"]

logger = logging.getLogger("mafalda.horizontal.node")

#: DEL KEYS[1] if it holds the record of this run (ARGV[1]: its incarnation as encoded
#: in the record): 1 deleted, 0 no record, -1 another run's (a restart with this id).
_DELETE_OWN = """
local record = redis.call('GET', KEYS[1])
if not record then return 0 end
if not string.find(record, ARGV[1], 1, true) then return -1 end
return redis.call('DEL', KEYS[1])
"""


def server_record(
    server: RemoteServer,
    *,
    server_id: str,
    control_url: str,
    media_address: str,
    region: str | None = None,
) -> ServerRecord:
    """What ``server`` would publish about itself now (its load, workers, consumers)."""
    objects = server.live_objects()
    consumers = sum(1 for o in objects if isinstance(o, Consumer))
    pool = server.mafalda
    if pool is not None:
        # A Mafalda pool: its workers, and its busiest worker's load (CPU or units).
        stats = pool.stats()
        workers = len(stats["workers"])
        load = max((w["load"] for w in stats["workers"]), default=0.0)
        consumers = sum(w["consumers"] for w in stats["workers"])
    else:
        workers = sum(1 for o in objects if isinstance(o, Worker))
        load = workers / (os.cpu_count() or 1)
    return {
        "id": server_id,
        "controlUrl": control_url,
        "mediaAddress": media_address,
        "region": region,
        "workers": workers,
        "load": round(load, 4),
        "consumers": consumers,
        "draining": server.draining,
        "version": PROTOCOL_VERSION,
        "serves": "mafalda" if pool is not None else "mediasoup",
    }


def control_url(
    server: RemoteServer, control_host: str | None, media_address: str | None
) -> tuple[str, str]:
    """The URL clients reach ``server`` at, and its media address: ``control_host`` or
    the server's host (when that is every interface: the media address)."""
    host = control_host or server.host
    if host in ("0.0.0.0", "::"):
        if not media_address:
            # Peers and clients would be told to reach "0.0.0.0": refused now, not at
            # every client's connect.
            raise ValueError(
                f"the server listens on every interface ({host}): give the address "
                "clients reach it at (control_host, or media_address: --announce-ip)"
            )
        host = media_address
    url = f"{server.scheme}://{f'[{host}]' if ':' in host else host}:{server.port}/"
    return url, media_address or host


class MediaNode:
    """Registers ``server`` in the cluster and keeps its record fresh."""

    def __init__(
        self,
        server: RemoteServer,
        *,
        redis_url: str,
        server_id: str | None = None,
        media_address: str | None = None,
        control_host: str | None = None,
        region: str | None = None,
        prefix: str = registry.DEFAULT_PREFIX,
        interval: float = 2.0,
    ) -> None:
        # Redis takes the record's TTL in whole milliseconds, three intervals.
        check_seconds(interval, "interval", positive=True)
        if interval * 3000 < 1:
            raise ValueError(f"interval must be at least 1/3000 s, got {interval!r}")
        self.server = server
        self.id = server_id or str(uuid.uuid4())
        #: This run's, in its record: a record under its id that is not its own is a
        #: later run's (restarted with this id), which aclose() leaves alone.
        self.incarnation = uuid.uuid4().hex
        registry.server_key(self.id, prefix)  # validates the id
        self.control_url, self.media_address = control_url(server, control_host, media_address)
        self.region = region
        self.prefix = prefix
        self.interval = interval
        self.ttl_ms = int(interval * 3000)
        self.draining = False
        self.registered = False
        self._redis = redis_client(redis_url, timeout=max(interval, 1.0))
        self._key = registry.server_key(self.id, prefix)
        self._channel = registry.membership_channel(prefix)
        self._heartbeat = Periodic(
            self._beat,
            interval=interval,
            logger=logger,
            failed="heartbeat to Redis failed",
            again="registered again in Redis",
            refused="cannot register in Redis",
        )
        self._closed = False

    # -- the record ----------------------------------------------------------------------

    def record(self) -> ServerRecord:
        record = server_record(
            self.server,
            server_id=self.id,
            control_url=self.control_url,
            media_address=self.media_address,
            region=self.region,
        )
        # Clients warn when it is not shorter than their grace (a Redis restart would
        # drop this server: its record is back only at its next heartbeat).
        record["heartbeat"] = self.interval
        record["incarnation"] = self.incarnation
        return record

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Register now (OSError if Redis is unreachable), then heart-beat in the background."""
        await start_or_close(self._heartbeat, self._redis)

    async def _publish(self, event: MembershipEvent) -> None:
        await self._redis.publish(self._channel, registry.encode_membership(event, self.id))

    async def _beat(self) -> None:
        previous = await self._redis.set(
            self._key, registry.encode_record(self.record()), px=self.ttl_ms, get=True
        )
        self.registered = True
        if previous is None:  # first registration, or the record was lost (Redis restart)
            await self._publish("join")

    async def drain(self, timeout: float, abort: asyncio.Event | None = None) -> bool:
        """Take no new placements; wait until every object served here closed (True) or
        ``timeout`` seconds or ``abort`` (False)."""
        self.draining = True
        self.server.draining = True
        with contextlib.suppress(RedisError, OSError):
            await self._beat()
            await self._publish("update")
        return await self.server.drain(timeout, abort)

    async def aclose(self) -> None:
        """Stop heart-beating and deregister (best effort: the TTL covers a failure).
        A record under this id that another run wrote (restarted with this id while
        this one stopped) is left, and no leave announced."""
        if self._closed:
            return
        self._closed = True
        await self._heartbeat.stop()
        own = f'"incarnation":"{self.incarnation}"'  # as encode_record() writes it
        with contextlib.suppress(RedisError, OSError):
            deleted = await self._redis.eval(_DELETE_OWN, 1, self._key, own)
            if deleted != -1:
                await self._publish("leave")
        await self._redis.aclose()

    async def __aenter__(self) -> MediaNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
