"""The Monitor's view of one process, without Redis: ``mafalda serve --monitor-port``.

    local = LocalMonitor(probe, record=lambda: server_record(server, ...))
    view = await local.view()        # a ClusterView of one server, as the Monitor's
    async with MonitorWeb(local, port=8091): ...

A server outside a cluster (or one server of a cluster, looked at alone) gets the same
page and JSON as a cluster's Monitor: its clients, workers, routers, loads, and the
links between its workers (a Mafalda pool's pipes; pipes to other servers show as links
to nobody).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from mafalda.horizontal.registry import ServerRecord
from mafalda.monitor.probe import Probe
from mafalda.monitor.view import ClusterView, build_view

__all__ = ["LocalMonitor"]


class LocalMonitor:
    def __init__(
        self, probe: Probe, *, record: Callable[[], ServerRecord], interval: float = 2.0
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.probe = probe
        self.record = record
        self.interval = interval

    async def view(self) -> ClusterView:
        """Sample the probe now (one request per worker)."""
        report = await self.probe.sample()
        record = self.record()
        return build_view([record], [{**report, "id": record["id"]}])

    async def views(self) -> AsyncIterator[ClusterView]:
        """A view now, then one every ``interval`` seconds."""
        while True:
            yield await self.view()
            await asyncio.sleep(self.interval)
