"""Monitor: a live view of a cluster's servers, workers, routers, loads and links.

Media server side (``mafalda serve --cluster`` does this)::

    probe = Probe(); probe.start()     # follows this process's workers
    async with Reporter(probe, redis_url=REDIS, server_id=node.id): ...

A swarm's server (``mafalda serve --swarm`` does this; no Redis)::

    StatsRoute(probe, server, server_id=node.id).start()   # GET /stats

Watching (``mafalda monitor redis://...`` or ``ws://a-swarm-server/ --token T`` in a
terminal, ``--web`` for a live page and ``/metrics`` for Prometheus)::

    async with await mafalda.monitor.connect(REDIS) as monitor:
        async for view in monitor.views():
            print(render_text(view))
"""

from mafalda.monitor.local import LocalMonitor
from mafalda.monitor.metrics import render_metrics
from mafalda.monitor.monitor import Monitor, connect
from mafalda.monitor.probe import Probe
from mafalda.monitor.reporter import Reporter
from mafalda.monitor.stats import PipeEnd, RouterStats, ServerStats, WorkerStats
from mafalda.monitor.swarm import StatsRoute, SwarmMonitor
from mafalda.monitor.view import (
    ClusterView,
    LinkView,
    RoomView,
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
    "RoomView",
    "RouterStats",
    "ServerStats",
    "ServerView",
    "StatsRoute",
    "SwarmMonitor",
    "WorkerStats",
    "build_view",
    "busiest_routers",
    "connect",
    "render_metrics",
    "render_text",
]
