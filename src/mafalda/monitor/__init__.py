"""Monitor: a live view of a cluster's servers, workers, routers, loads and links.

Media server side (``mafalda serve --cluster`` does this)::

    probe = Probe(); probe.start()     # follows this process's workers
    async with Reporter(probe, redis_url=REDIS, server_id=node.id): ...

Watching (``mafalda monitor redis://...`` in a terminal, ``--web`` for a live page)::

    async with await mafalda.monitor.connect(REDIS) as monitor:
        async for view in monitor.views():
            print(render_text(view))
"""

from mafalda.monitor.local import LocalMonitor
from mafalda.monitor.monitor import Monitor, connect
from mafalda.monitor.probe import Probe
from mafalda.monitor.reporter import Reporter
from mafalda.monitor.stats import PipeEnd, RouterStats, ServerStats, WorkerStats
from mafalda.monitor.view import (
    ClusterView,
    LinkView,
    ServerView,
    build_view,
    busiest_routers,
    render_text,
)

__all__ = [
    "ClusterView",
    "LinkView",
    "LocalMonitor",
    "Monitor",
    "PipeEnd",
    "Probe",
    "Reporter",
    "RouterStats",
    "ServerStats",
    "ServerView",
    "WorkerStats",
    "build_view",
    "busiest_routers",
    "connect",
    "render_text",
]
