"""The media server's side of the Monitor: what this process's workers hold.

    probe = Probe()
    probe.start()                  # before creating workers: it follows them from then on
    worker = await mafalda.mediasoup.create_worker()
    ...
    stats = await probe.sample()   # ServerStats: workers (with CPU), routers, pipe ends

It follows mediasoup's observer API only (``newworker``, ``newrouter``,
``newtransport``), as a monitoring tool of mediasoup would: every worker this process
starts is seen, whoever starts it (a Remote Mediasoup client, a Mafalda pool, the app).
Objects are held weakly and closed ones skipped, so the probe adds no listener per
producer or consumer and keeps nothing alive.

Each router comes with its transports by type, its producers by kind and, from its
app_data, the room it is a part of: the cluster router whose child it is
(``clusterRouterId``, set by ``horizontal``; through its Mafalda router's app_data when
given ``rooms=pool_rooms(pool)``), else the pool router whose child it is
(``mafaldaRouterId``, set by ``vertical``).
"""

from __future__ import annotations

import asyncio
import functools
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeGuard

from mafalda import mediasoup
from mafalda.mediasoup import PipeTransport, Router, Transport, Worker
from mafalda.monitor.stats import (
    MAX_ROOM_ID,
    ClientStats,
    PipeEnd,
    RouterStats,
    ServerStats,
    WorkerStats,
)
from mafalda.vertical import Mafalda

__all__ = ["Probe", "pool_loads", "pool_rooms"]


class Probe:
    """Follows the workers this process starts; ``sample()`` reports on them."""

    def __init__(
        self,
        *,
        server_id: str = "local",
        max_routers: int = 1000,
        clients: Callable[[], Sequence[ClientStats]] | None = None,
        max_clients: int = 1000,
        max_pipes: int = 2000,
        loads: Callable[[], Mapping[int, float]] | None = None,
        rooms: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """``clients``: who is connected to this process, as ``RemoteServer.clients``
        (settable later: ``mafalda serve`` starts the probe before its server).
        ``loads``: placement loads by worker pid (a Mafalda pool's, see ``pool_loads``).
        ``rooms``: cluster router ids by Mafalda router id (a pool's, see ``pool_rooms``):
        a pool router's children carry only its id, the cluster's is in its app_data.
        ``max_pipes``: pipe ends reported, those of the reported routers first (their
        rooms' links whole), then the busiest. Twice ``max_routers`` by default: each
        reported router keeps its ends to two peers (a pool router's child on one of
        three workers, a cluster router's on one of three servers); an end is about
        260 bytes of JSON, 2,000 about 510 KiB every heartbeat."""
        if max_routers < 0 or max_clients < 0 or max_pipes < 0:
            raise ValueError("max_routers, max_clients and max_pipes must be >= 0")
        self.server_id = server_id
        self.max_routers = max_routers
        self.clients = clients
        self.max_clients = max_clients
        self.max_pipes = max_pipes
        self.loads = loads
        self.rooms = rooms
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        self._routers: weakref.WeakKeyDictionary[Router, Worker] = weakref.WeakKeyDictionary()
        self._transports: weakref.WeakKeyDictionary[Transport, Router] = weakref.WeakKeyDictionary()
        # pid -> (monotonic time, CPU seconds) of the previous sample
        self._cpu: dict[int, tuple[float, float]] = {}
        self._started = False

    # -- following ----------------------------------------------------------------------

    def start(self) -> None:
        """Follow every worker started from now on (``mafalda.mediasoup.observer``)."""
        if not self._started:
            self._started = True
            mediasoup.observer.on("newworker", self.add_worker)

    def stop(self) -> None:
        """Stop following (what is followed already stays followed until it closes)."""
        if self._started:
            self._started = False
            mediasoup.observer.off("newworker", self.add_worker)

    def add_worker(self, worker: Worker) -> None:
        """Follow a worker started before ``start()`` (its routers from now on)."""
        if worker not in self._workers:
            self._workers.add(worker)
            worker.observer.on("newrouter", functools.partial(self._add_router, worker))

    def _add_router(self, worker: Worker, router: Router) -> None:
        self._routers[router] = worker
        router.observer.on("newtransport", functools.partial(self._add_transport, router))

    def _add_transport(self, router: Router, transport: Transport) -> None:
        self._transports[transport] = router

    # -- reporting ----------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        return sorted((w for w in self._workers if not w.closed), key=lambda w: w.pid)

    async def _cpu_seconds(self, worker: Worker) -> float | None:
        try:
            usage = await worker.get_resource_usage()
        except mediasoup.MediasoupError:  # closed or died meanwhile (then left out)
            return None
        return (usage["ru_utime"] + usage["ru_stime"]) / 1000.0

    async def sample(self) -> ServerStats:
        """Ask each worker its CPU time (one request each, concurrently) and report."""
        workers = self.workers()
        seconds = await asyncio.gather(*(self._cpu_seconds(w) for w in workers))
        now = time.monotonic()
        cpu: dict[int, float | None] = {}
        previous, self._cpu = self._cpu, {}
        for worker, used in zip(workers, seconds, strict=True):
            if used is None:
                cpu[worker.pid] = None
                continue
            self._cpu[worker.pid] = (now, used)
            before = previous.get(worker.pid)
            if before is None or now <= before[0]:
                cpu[worker.pid] = None
            else:
                cpu[worker.pid] = round(max(0.0, used - before[1]) / (now - before[0]), 4)
        return self.snapshot(cpu)

    def snapshot(self, cpu: dict[int, float | None] | None = None) -> ServerStats:
        """The report without asking the workers anything (CPU from ``cpu``, by pid)."""
        cpu = cpu or {}
        loads = self.loads() if self.loads is not None else {}
        workers: dict[Worker, WorkerStats] = {
            worker: {
                "pid": worker.pid,
                "cpu": cpu.get(worker.pid),
                "cpuTime": self._cpu[worker.pid][1] if worker.pid in self._cpu else None,
                "load": loads.get(worker.pid),
                "routers": 0,
                "transports": 0,
                "producers": 0,
                "consumers": 0,
                "dataProducers": 0,
                "dataConsumers": 0,
            }
            for worker in self.workers()
        }
        rooms = self.rooms() if self.rooms is not None else {}
        routers: dict[Router, RouterStats] = {}
        for router, worker in list(self._routers.items()):
            if router.closed or worker not in workers:
                continue
            workers[worker]["routers"] += 1
            made: RouterStats = {
                "id": router.id,
                "worker": worker.pid,
                "transports": 0,
                "producers": 0,
                "consumers": 0,
                "dataProducers": 0,
                "dataConsumers": 0,
            }
            routers[router] = made
            room = _room(router.app_data, rooms)
            if room is not None:
                made[room[0]] = room[1]  # type: ignore[literal-required]
        pipes: list[PipeEnd] = []
        for transport, router in list(self._transports.items()):
            entry = routers.get(router)
            if transport.closed or entry is None:
                continue
            worker_entry = workers[self._routers[router]]
            # Written out (no dict per transport, no loop over the fields): this runs for
            # each of thousands of transports every sample.
            producers = transport.producers
            consumers = len(transport.consumers)
            data_producers = len(transport.data_producers)
            data_consumers = len(transport.data_consumers)
            entry["transports"] += 1
            entry["producers"] += len(producers)
            entry["consumers"] += consumers
            entry["dataProducers"] += data_producers
            entry["dataConsumers"] += data_consumers
            worker_entry["transports"] += 1
            worker_entry["producers"] += len(producers)
            worker_entry["consumers"] += consumers
            worker_entry["dataProducers"] += data_producers
            worker_entry["dataConsumers"] += data_consumers
            types = entry.get("transportTypes")
            if types is None:
                types = entry["transportTypes"] = {}
            type_ = transport.type
            types[type_] = types.get(type_, 0) + 1
            if producers:
                kinds = entry.get("producerKinds")
                if kinds is None:
                    kinds = entry["producerKinds"] = {}
                for producer in producers.values():  # (nothing awaited meanwhile)
                    media = producer.kind
                    kinds[media] = kinds.get(media, 0) + 1
            if isinstance(transport, PipeTransport):
                counts = {
                    "producers": len(producers),
                    "consumers": consumers,
                    "dataProducers": data_producers,
                    "dataConsumers": data_consumers,
                }
                pipes.append(_pipe_end(transport, router, entry["worker"], counts))
        kept = _busiest(routers.values(), self.max_routers)
        pipes_kept = _pipes_kept(pipes, {r["id"] for r in kept}, self.max_pipes)
        clients = list(self.clients()) if self.clients is not None else []
        return {
            "id": self.server_id,
            "time": time.time(),
            "workers": list(workers.values()),
            "routers": kept,
            "routersOmitted": len(routers) - len(kept),
            "pipes": pipes_kept,
            "pipesOmitted": len(pipes) - len(pipes_kept),
            # The busiest clients are kept (those away last: they are leaving).
            "clients": sorted(clients, key=lambda c: (not c["connected"], -c["objects"]))[
                : self.max_clients
            ],
            "clientsOmitted": max(0, len(clients) - self.max_clients),
        }


def pool_loads(pool: Mafalda) -> Callable[[], dict[int, float]]:
    """A Mafalda pool's placement loads by worker pid, for ``Probe(loads=...)``."""
    return lambda: {w["pid"]: w["load"] for w in pool.stats()["workers"]}


def pool_rooms(pool: Mafalda) -> Callable[[], dict[str, str]]:
    """A Mafalda pool's routers that are cluster routers' children: the cluster router's
    id by the pool router's, for ``Probe(rooms=...)``."""
    return lambda: {
        router.id: cluster
        for router in pool.routers
        if isinstance(cluster := router.app_data.get("clusterRouterId"), str)
    }


def _room_id(value: object) -> TypeGuard[str]:
    return isinstance(value, str) and 0 < len(value) <= MAX_ROOM_ID


def _room(app_data: dict[str, Any], rooms: Mapping[str, str]) -> tuple[str, str] | None:
    """The room a router is a part of, from its app_data: (key, id), or None."""
    cluster = app_data.get("clusterRouterId")
    if _room_id(cluster):
        return ("clusterRouterId", cluster)
    pool_router = app_data.get("mafaldaRouterId")
    if _room_id(pool_router):
        cluster = rooms.get(pool_router)
        if _room_id(cluster):
            return ("clusterRouterId", cluster)
        return ("mafaldaRouterId", pool_router)
    return None


def _busiest(routers: Iterable[RouterStats], limit: int) -> list[RouterStats]:
    ordered = sorted(
        routers, key=lambda r: (-(r["consumers"] + r["producers"]), -r["transports"], r["id"])
    )
    return ordered[:limit]


def _pipes_kept(pipes: list[PipeEnd], routers: set[str], limit: int) -> list[PipeEnd]:
    """The ``limit`` ends to report: those on ``routers`` (the reported ones: their
    rooms' links stay whole) first, then the busiest (streams in and out). Ties go by
    pipe (its two addresses), so both ends of a pipe between this server's workers,
    which carry the same streams, are kept or left together."""

    def order(end: PipeEnd) -> tuple[bool, int, tuple[str, int], str]:
        local = (end["localIp"], end["localPort"])
        remote = (end["remoteIp"] or "", end["remotePort"] or 0)
        return (
            end["routerId"] not in routers,
            -(end["producers"] + end["consumers"] + end["dataProducers"] + end["dataConsumers"]),
            min(local, remote),
            end["transportId"],
        )

    kept = sorted(pipes, key=order)[:limit] if len(pipes) > limit else pipes
    return sorted(kept, key=lambda p: p["transportId"])


def _pipe_end(
    transport: PipeTransport, router: Router, pid: int, counts: dict[str, int]
) -> PipeEnd:
    tuple_ = transport.tuple
    remote_ip = tuple_.get("remoteIp")
    remote_port = tuple_.get("remotePort")
    connected = bool(remote_ip) and bool(remote_port)
    return {
        "transportId": transport.id,
        "routerId": router.id,
        "worker": pid,
        # The address a peer connects to (the announced one, if any), as the other end's
        # remoteIp says it: the Monitor pairs ends by these.
        "localIp": tuple_["localAddress"],
        "localPort": tuple_["localPort"],
        "remoteIp": remote_ip if connected else None,
        "remotePort": remote_port if connected else None,
        **counts,  # type: ignore[typeddict-item]
    }
