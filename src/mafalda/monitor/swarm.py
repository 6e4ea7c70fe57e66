"""The Monitor over a swarm: no Redis; each server answers its own report.

Media server side (``mafalda serve --swarm`` does this)::

    StatsRoute(probe, server, server_id=node.id).start()   # GET /stats, token required

Watching (``mafalda monitor ws://any-server:4443/ --token T``)::

    async with await mafalda.monitor.connect("ws://10.0.0.4:4443/", token=T) as monitor:
        async for view in monitor.views(): ...

The Monitor reads the swarm's table from any server (as ``mafalda.swarm.connect``
does), then every live server's report, all at once; a server that does not answer
shows with its record and no report, as one whose Redis report expired does.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import AsyncIterator, Sequence

import aiohttp
from aiohttp import web

from mafalda.horizontal.registry import ServerRecord
from mafalda.monitor.monitor import poll_views
from mafalda.monitor.probe import Probe
from mafalda.monitor.stats import ServerStats, decode_stats, encode_stats
from mafalda.monitor.view import ClusterView, build_view
from mafalda.remote import RemoteServer
from mafalda.swarm.client import SwarmMembership
from mafalda.swarm.urls import check_seeds, route_url

__all__ = ["STATS_ROUTE", "StatsRoute", "SwarmMonitor", "connect_swarm"]

logger = logging.getLogger("mafalda.monitor")

STATS_ROUTE = "stats"


class StatsRoute:
    """Serves ``probe``'s report at ``GET /stats`` on ``server``'s port. A report is
    sampled at most once per ``interval`` whoever asks (concurrent requests share one
    sample), so any number of monitors cost the server one sample per interval."""

    def __init__(
        self, probe: Probe, server: RemoteServer, *, server_id: str, interval: float = 2.0
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.probe = probe
        self.server = server
        self.interval = interval
        probe.server_id = server_id
        self._latest: tuple[float, bytes] | None = None
        self._sampling: asyncio.Future[bytes] | None = None

    def start(self) -> None:
        self.server.add_route(STATS_ROUTE, self._handle)

    def stop(self) -> None:
        self.server.remove_route(STATS_ROUTE)

    async def report(self) -> bytes:
        """The latest report, encoded; sampled now when older than ``interval``."""
        now = asyncio.get_running_loop().time()
        if self._latest is not None and now - self._latest[0] < self.interval:
            return self._latest[1]
        if self._sampling is None:
            self._sampling = asyncio.ensure_future(self._sample())
        try:
            return await asyncio.shield(self._sampling)
        finally:
            if self._sampling is not None and self._sampling.done():
                self._sampling = None

    async def _sample(self) -> bytes:
        body = encode_stats(await self.probe.sample()).encode()
        self._latest = (asyncio.get_running_loop().time(), body)
        return body

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return web.Response(status=405, text="GET")
        return web.Response(body=await self.report(), content_type="application/json")


class SwarmMonitor:
    """A Monitor of the swarm that ``seeds`` belong to (the Redis Monitor's API)."""

    def __init__(
        self,
        seeds: Sequence[str],
        *,
        token: str,
        interval: float = 2.0,
        ssl: ssl_module.SSLContext | None = None,
        timeout: float = 5.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        urls = check_seeds(seeds, required=True)
        self.interval = interval
        self._ssl = ssl
        self._membership = SwarmMembership(urls, token=token, ssl=ssl, timeout=timeout)
        self._http = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=timeout),
            headers={"Authorization": f"Bearer {token}"},
        )
        self._warned: set[tuple[str, str]] = set()

    async def records(self) -> list[ServerRecord]:
        """The live servers' records (OSError when no server of the swarm answers)."""
        return list((await self._membership.read()).records.values())

    async def _report(self, record: ServerRecord) -> ServerStats | None:
        url = route_url(record["controlUrl"], STATS_ROUTE)
        try:
            async with self._http.get(
                url, ssl=self._ssl if self._ssl is not None else True
            ) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                report = decode_stats(await response.read())
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as error:
            reason = str(error) or type(error).__name__
            if (record["id"], reason) not in self._warned:  # once per server and reason
                self._warned.add((record["id"], reason))
                logger.warning("no report from server %s: %s", record["id"], reason)
            return None
        return report if report["id"] == record["id"] else None

    async def reports(self, records: list[ServerRecord]) -> list[ServerStats]:
        found = await asyncio.gather(*(self._report(record) for record in records))
        return [report for report in found if report is not None]

    async def view(self) -> ClusterView:
        """Read the swarm now (OSError when no server of it answers)."""
        records = await self.records()
        return build_view(records, await self.reports(records))

    def views(self) -> AsyncIterator[ClusterView]:
        """A view now, then one every ``interval`` seconds; while no server answers,
        nothing (logged once), and views again when one does."""
        return poll_views(self.view, self.interval, (OSError,), "reading the swarm")

    async def aclose(self) -> None:
        await self._membership.aclose()
        await self._http.close()

    async def __aenter__(self) -> SwarmMonitor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def connect_swarm(
    seeds: Sequence[str],
    *,
    token: str,
    interval: float = 2.0,
    ssl: ssl_module.SSLContext | None = None,
) -> SwarmMonitor:
    """A Monitor of the swarm (OSError when none of ``seeds`` answers, PermissionError
    when the token is refused)."""
    monitor = SwarmMonitor(seeds, token=token, interval=interval, ssl=ssl)
    try:
        await monitor.records()
    except BaseException:
        await monitor.aclose()
        raise
    return monitor
