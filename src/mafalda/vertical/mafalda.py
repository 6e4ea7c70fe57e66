"""Mafalda: a pool of mediasoup workers behind Routers that span them all.

``Mafalda.start()`` owns the workers (by default up to one per CPU core, started as
load requires), samples their CPU time, places every new transport with a policy, and
replaces a worker that dies, telling the application what was lost with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict

from mafalda.mediasoup import Worker, create_worker
from mafalda.mediasoup.emitter import EventEmitter, EventSource
from mafalda.mediasoup.errors import InvalidStateError, InvalidValueError
from mafalda.mediasoup.rtp_parameters import RouterRtpCodecCapability
from mafalda.mediasoup.webrtc_server import WebRtcServer
from mafalda.mediasoup.worker import validate_app_data
from mafalda.vertical.policy import GROW, Limits, PlacementPolicy, WorkerLoad, make_policy

if TYPE_CHECKING:
    from mafalda.vertical.router import MafaldaRouter
    from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

logger = logging.getLogger("mafalda.vertical")


class WorkerLoss(TypedDict):
    """What a dead worker took with it (the ``workerdied`` event's argument): ids of the
    pool's routers' objects, and ``webRtcServers``, the application's own WebRtcServers
    (``create_webrtc_servers()``, ``worker.create_webrtc_server()``) that closed with it
    ('workerclose', observer 'close'). A MafaldaWebRtcServer's real ones are not listed:
    it lives on, and makes one again on the worker its next transport goes to."""

    pid: int
    error: str
    routers: list[str]
    transports: list[str]
    producers: list[str]
    consumers: list[str]
    dataProducers: list[str]
    dataConsumers: list[str]
    rtpObservers: list[str]
    webRtcServers: list[str]


class WorkerStats(TypedDict):
    pid: int
    cpu: float
    consumers: int
    units: int
    load: float
    routers: int
    transports: int


class MafaldaStats(TypedDict):
    workers: list[WorkerStats]
    routers: int
    maxWorkers: int


@dataclass(slots=True)
class _PoolWorker:
    worker: Worker
    cpu: float = 0.0
    last_cpu_ms: float | None = None
    last_sample: float = 0.0
    idle_since: float | None = None
    reserved: int = 0
    loss: dict[str, list[str]] = field(default_factory=dict)


class Mafalda(EventSource):
    """A pool of mediasoup workers; create Routers that span them with create_router()."""

    def __init__(
        self,
        *,
        num_workers: int,
        min_workers: int,
        worker_settings: dict[str, Any],
        policy: PlacementPolicy,
        load_interval: float,
        idle_worker_timeout: float,
        app_data: dict[str, Any] | None,
    ) -> None:
        self._num_workers = num_workers
        self._min_workers = min_workers
        self._worker_settings = worker_settings
        self.policy = policy
        self._load_interval = load_interval
        self._idle_worker_timeout = idle_worker_timeout
        self.app_data: dict[str, Any] = app_data if app_data is not None else {}
        self._pool: dict[Worker, _PoolWorker] = {}
        #: Workers that left the pool (freed, closed from outside) until their processes
        #: have exited: aclose() waits for them.
        self._retired: set[Worker] = set()
        self._routers: dict[str, MafaldaRouter] = {}
        self._webrtc_servers: dict[str, MafaldaWebRtcServer] = {}
        self._closed = False
        self._grow_lock = asyncio.Lock()
        #: Replacements of lost workers under way: placement counts them as started (or a
        #: pool that lost a worker would grow past num_workers), and waits for one when
        #: they are all it may have.
        self._replacements: set[asyncio.Task[None]] = set()
        #: (worker, id) of the copies being made there under their source's id, and of
        #: the application's produce() / produce_data() with an id under way there.
        self._claimed: set[tuple[Worker, str]] = set()
        self._tasks: set[asyncio.Future[Any]] = set()
        self._sampler: asyncio.Task[None] | None = None
        self.events = EventEmitter()
        self.observer = EventEmitter()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    async def start(
        cls,
        *,
        num_workers: int | None = None,
        min_workers: int = 1,
        worker_settings: dict[str, Any] | None = None,
        policy: str | PlacementPolicy = "concentrate",
        max_units_per_worker: int = 500,
        cpu_watermark: float = 0.6,
        load_interval: float = 1.0,
        idle_worker_timeout: float = 30.0,
        app_data: dict[str, Any] | None = None,
    ) -> Mafalda:
        """Start a pool.

        num_workers: the most workers used (default: one per CPU core). min_workers:
        started at once and never freed. worker_settings: keyword arguments of
        ``create_worker`` for every worker. policy: 'concentrate' (default), 'spread'
        or a PlacementPolicy; max_units_per_worker and cpu_watermark set the capacity
        of a worker for the named policies. A worker with no router for
        idle_worker_timeout seconds is closed (down to min_workers).
        """
        count = os.cpu_count() or 1 if num_workers is None else num_workers
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError("num_workers must be a positive integer")
        if isinstance(min_workers, bool) or not isinstance(min_workers, int):
            raise TypeError("min_workers must be an integer")
        if not 0 <= min_workers <= count:
            raise ValueError("min_workers must be in 0..num_workers")
        settings = dict(worker_settings or {})
        if "app_data" in settings:
            raise ValueError("worker_settings cannot set app_data (Mafalda owns the workers)")
        if isinstance(policy, str):
            chosen = make_policy(
                policy,
                Limits(max_units_per_worker=max_units_per_worker, cpu_watermark=cpu_watermark),
            )
        elif hasattr(policy, "choose") and hasattr(policy, "limits"):
            chosen = policy
        else:
            raise TypeError("policy must be 'concentrate', 'spread' or a PlacementPolicy")
        for name, value in (
            ("load_interval", load_interval),
            ("idle_worker_timeout", idle_worker_timeout),
        ):
            if not isinstance(value, int | float) or value <= 0:
                raise ValueError(f"{name} must be a positive number")
        validate_app_data(app_data)
        mafalda = cls(
            num_workers=count,
            min_workers=min_workers,
            worker_settings=settings,
            policy=chosen,
            load_interval=float(load_interval),
            idle_worker_timeout=float(idle_worker_timeout),
            app_data=app_data,
        )
        try:
            await asyncio.gather(*(mafalda._add_worker() for _ in range(min_workers)))
        except BaseException:
            await mafalda.aclose()
            raise
        mafalda._sampler = asyncio.ensure_future(mafalda._sample_forever())
        return mafalda

    async def __aenter__(self) -> Mafalda:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- properties ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def workers(self) -> list[Worker]:
        return list(self._pool)

    @property
    def max_workers(self) -> int:
        return self._num_workers

    @property
    def routers(self) -> list[MafaldaRouter]:
        return list(self._routers.values())

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidStateError("Mafalda closed")

    # -- workers -----------------------------------------------------------------------------

    async def _add_worker(self) -> Worker:
        worker = await create_worker(**self._worker_settings)
        if self._closed:
            self._retire(worker)
            worker.close()
            raise InvalidStateError("Mafalda closed")
        entry = _PoolWorker(worker=worker, idle_since=time.monotonic())
        self._pool[worker] = entry
        worker.on("died", lambda error: self._on_worker_died(worker, error))
        worker.observer.on("close", lambda: self._on_worker_closed(worker))
        worker.observer.on("newwebrtcserver", lambda server: self._follow(worker, server))
        self.observer.emit("newworker", worker)
        logger.info("worker %s started (%d in the pool)", worker.pid, len(self._pool))
        return worker

    def _on_worker_died(self, worker: Worker, error: Exception) -> None:
        # A worker leaves the pool only by dying or by being closed (then it cannot die).
        entry = self._pool.pop(worker)
        loss: WorkerLoss = {
            "pid": worker.pid,
            "error": str(error),
            "routers": entry.loss.get("routers", []),
            "transports": entry.loss.get("transports", []),
            "producers": entry.loss.get("producers", []),
            "consumers": entry.loss.get("consumers", []),
            "dataProducers": entry.loss.get("dataProducers", []),
            "dataConsumers": entry.loss.get("dataConsumers", []),
            "rtpObservers": entry.loss.get("rtpObservers", []),
            "webRtcServers": entry.loss.get("webRtcServers", []),
        }
        logger.error(
            "worker %s died (%s): %d transports lost", worker.pid, error, len(loss["transports"])
        )
        self.events.emit("workerdied", loss)
        self.observer.emit("workerdied", loss)
        if not self._closed and len(self._pool) < self._min_workers:
            self._replace_soon()

    def _follow(self, worker: Worker, server: WebRtcServer) -> None:
        """A WebRtcServer made on ``worker``: one of the application's that dies with it
        is in the worker's loss (it closes before the worker's 'died'). A
        MafaldaWebRtcServer's real one is known by its app_data (it may die before its
        making returns, before its MafaldaWebRtcServer knows it)."""
        from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

        if MafaldaWebRtcServer.app_data_key in server.app_data:
            return

        def worker_closed() -> None:
            if worker.died:
                self.record_loss(worker, "webRtcServers", server.id)

        server.events.on("workerclose", worker_closed)

    def _on_worker_closed(self, worker: Worker) -> None:
        """A worker closed by someone else (not died): forget it, keep min_workers."""
        if worker.died or self._closed or self._pool.pop(worker, None) is None:
            return
        self._retire(worker)
        logger.warning("worker %s was closed outside Mafalda", worker.pid)
        self.observer.emit("workerclose", worker)
        if len(self._pool) < self._min_workers:
            self._replace_soon()

    def _retire(self, worker: Worker) -> None:
        self._retired.add(worker)
        self._spawn(self._forget_when_exited(worker))

    async def _forget_when_exited(self, worker: Worker) -> None:
        await worker.wait_closed()
        self._retired.discard(worker)

    @property
    def _replacing(self) -> int:
        return sum(1 for task in self._replacements if not task.done())

    def _replace_soon(self) -> None:
        task = asyncio.ensure_future(self._replace_worker())
        for tasks in (self._tasks, self._replacements):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def _replace_worker(self) -> None:
        try:
            # Under the lock of placement's growth: a pool grown back to min_workers
            # meanwhile needs no replacement.
            async with self._grow_lock:
                if len(self._pool) >= self._min_workers:
                    return
                worker = await self._add_worker()
        except Exception as error:
            if not self._closed:
                logger.error("could not replace a dead worker: %s", error)
            return
        self.events.emit("workerreplaced", worker)

    def record_loss(self, worker: Worker, kind: str, object_id: str) -> None:
        """Called by MafaldaRouters for every object closed because ``worker`` died.

        A dying worker closes its routers, and with them every object this records,
        before it emits 'died': it is still in the pool (_on_worker_died takes it out).
        """
        self._pool[worker].loss.setdefault(kind, []).append(object_id)

    @contextlib.contextmanager
    def claim_id(self, worker: Worker, producer_id: str) -> Iterator[bool]:
        """Around the making of a copy of a (data) producer on ``worker``: whether it may
        keep the id, which it then holds until made (two routers piping copies of one id
        there at once, or an application's produce() of that id there: the later one
        gets its own)."""
        if self.worker_hosts(worker, producer_id):
            yield False
            return
        with self._holding(worker, producer_id):
            yield True

    @contextlib.contextmanager
    def take_id(self, worker: Worker, object_id: str) -> Iterator[None]:
        """Around an application's produce() or produce_data() with an id on ``worker``:
        TypeError before anything is sent when a (data) producer there has it, a copy
        piped there included, or one is being made there with it (the worker would refuse
        it: ids are unique per worker); else the id is held until made, so a copy piped
        there meanwhile gets its own id and an alias, not the worker's refusal."""
        if self.worker_hosts(worker, object_id):
            raise TypeError(
                f'a Producer or DataProducer with same id "{object_id}" already exists in '
                "its worker"
            )
        with self._holding(worker, object_id):
            yield

    @contextlib.contextmanager
    def _holding(self, worker: Worker, object_id: str) -> Iterator[None]:
        claim = (worker, object_id)
        self._claimed.add(claim)
        try:
            yield
        finally:
            self._claimed.discard(claim)

    def worker_hosts(self, worker: Worker, producer_id: str) -> bool:
        """Whether a producer or data producer with this id exists on ``worker``, or a
        copy is being made there with it."""
        if (worker, producer_id) in self._claimed:
            return True
        for router in self._routers.values():
            child = router.child_router(worker)
            if child is None:
                continue
            for transport in child.transports_for_testing.values():
                if producer_id in transport.producers or producer_id in transport.data_producers:
                    return True
        return False

    def worker_of_webrtc_server(self, server: WebRtcServer) -> Worker:
        """The worker of a WebRtcServer of the application's own: a transport given it
        goes there, whatever the placement policy would choose and however loaded that
        worker is (a WebRtcServer and its transports share a worker). InvalidStateError
        once it is closed (by the application, or with its worker), as a Router's."""
        if getattr(server, "closed", False):
            raise InvalidStateError("WebRtcServer closed")
        for worker in self._pool:
            if server in worker.webrtc_servers_for_testing:
                return worker
        raise InvalidValueError("webrtc_server does not belong to a worker of this Mafalda")

    async def create_webrtc_servers(
        self, *, listen_infos: list[Any], app_data: dict[str, Any] | None = None
    ) -> dict[int, WebRtcServer]:
        """One WebRtcServer per current worker (ports must differ: use a portRange or port
        0). All or none: when one worker refuses, those made on the others are closed.
        Each is the application's until it closes it: its worker is not freed as idle
        meanwhile. A transport given one goes to its worker, however loaded (placement
        does not apply, and the pool does not grow for it); a worker started later gets
        none, so only transports without one go there (make one on it from the
        observer's 'newworker' with ``worker.create_webrtc_server()``, or use
        create_webrtc_server(), whose transports are placed as any other). A worker that
        dies takes its server with it: the 'workerdied' loss names it."""
        from mafalda.vertical.webrtc_server import check_pool_listen_infos

        self._check_open()
        workers = list(self._pool)
        check_pool_listen_infos(listen_infos, len(workers))
        tasks = [
            asyncio.ensure_future(
                w.create_webrtc_server(listen_infos=listen_infos, app_data=app_data)
            )
            for w in workers
        ]
        try:
            made = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # Those still running were cancelled with the gather (each closes what its
            # worker made); those made already are nobody's: closed here.
            for task in tasks:
                if not task.cancelled() and task.exception() is None:
                    task.result().close()
            raise
        servers = [s for s in made if isinstance(s, WebRtcServer)]
        if len(servers) < len(made):
            for server in servers:
                server.close()
            error = next(e for e in made if isinstance(e, BaseException))
            raise error
        return {w.pid: s for w, s in zip(workers, servers, strict=True)}

    @property
    def webrtc_servers(self) -> list[MafaldaWebRtcServer]:
        return list(self._webrtc_servers.values())

    async def create_webrtc_server(
        self, *, listen_infos: list[Any], app_data: dict[str, Any] | None = None
    ) -> MafaldaWebRtcServer:
        """A WebRtcServer for this pool's routers' WebRtcTransports, placed as any other:
        each worker a transport goes to gets a real one (made by the first transport
        there), so give a pool of several workers a portRange, not one port."""
        from mafalda.vertical.webrtc_server import MafaldaWebRtcServer

        self._check_open()
        server = MafaldaWebRtcServer(mafalda=self, listen_infos=listen_infos, app_data=app_data)
        self._webrtc_servers[server.id] = server
        server.events.on("@close", lambda: self._forget(self._webrtc_servers, server))
        self.observer.emit("newwebrtcserver", server)
        return server

    # -- load ---------------------------------------------------------------------------------

    def _counts(self, worker: Worker) -> tuple[int, int, int, int]:
        """(consumers, units, routers, transports) on a worker, over every MafaldaRouter."""
        consumers = units = routers = transports = 0
        for router in self._routers.values():
            child = router.child_router(worker)
            if child is None:
                continue
            routers += 1
            for transport in child.transports_for_testing.values():
                n = len(transport.consumers)
                consumers += n
                units += max(1, n)
                transports += 1
        return consumers, units, routers, transports

    def loads(self, router: MafaldaRouter | None = None) -> list[WorkerLoad]:
        """Load snapshots of the pool's workers, in pool order."""
        result = []
        for worker, entry in self._pool.items():
            consumers, units, _, _ = self._counts(worker)
            result.append(
                WorkerLoad(
                    pid=worker.pid,
                    cpu=entry.cpu,
                    consumers=consumers,
                    units=units + entry.reserved,
                    hosts_router=router is not None and router.child_router(worker) is not None,
                )
            )
        return result

    async def _sample(self) -> None:
        now = time.monotonic()
        for worker, entry in list(self._pool.items()):
            if worker.closed:
                continue
            try:
                usage = await worker.get_resource_usage()
            except Exception:  # the worker died meanwhile: its death is handled elsewhere
                continue
            # ru_utime / ru_stime are milliseconds of CPU time.
            cpu_ms = float(usage["ru_utime"] + usage["ru_stime"])
            if entry.last_cpu_ms is not None and now > entry.last_sample:
                entry.cpu = max(
                    0.0, (cpu_ms - entry.last_cpu_ms) / ((now - entry.last_sample) * 1000.0)
                )
            entry.last_cpu_ms = cpu_ms
            entry.last_sample = now
            _, _, routers, _ = self._counts(worker)
            if routers:
                entry.idle_since = None
            elif entry.idle_since is None:
                entry.idle_since = now
        await self._free_idle_workers(now)

    async def _free_idle_workers(self, now: float) -> None:
        for worker, entry in list(self._pool.items()):
            if len(self._pool) <= self._min_workers:
                return
            if entry.idle_since is not None and now - entry.idle_since >= self._idle_worker_timeout:
                if entry.reserved or self._counts(worker)[2] or self._holds_app_server(worker):
                    continue
                logger.info("closing idle worker %s", worker.pid)
                del self._pool[worker]
                self._retire(worker)
                worker.close()
                self.observer.emit("workerclose", worker)

    def _holds_app_server(self, worker: Worker) -> bool:
        """Whether ``worker`` has an open WebRtcServer of the application's own
        (``create_webrtc_servers()``, ``worker.create_webrtc_server()``): the application
        holds it, its ports and the transports it pins there, so the worker is not freed
        under it. The real ones of a MafaldaWebRtcServer do not hold it: they are made
        again on whatever worker a transport goes to."""
        spanned = {
            id(real) for server in self._webrtc_servers.values() for real in server.servers.values()
        }
        return any(id(server) not in spanned for server in worker.webrtc_servers_for_testing)

    async def _sample_forever(self) -> None:
        while True:  # until close() cancels it
            try:
                await self._sample()
            except Exception:  # pragma: no cover - sampling must never stop the pool
                logger.exception("load sampling failed")
            await asyncio.sleep(self._load_interval)

    async def sample_load(self) -> None:
        """Sample CPU load now (it is also sampled every load_interval seconds)."""
        self._check_open()
        await self._sample()

    async def place(self, router: MafaldaRouter) -> Worker:
        """The worker where ``router``'s next transport goes (may start a worker)."""
        self._check_open()
        while True:
            workers = list(self._pool)
            can_grow = len(workers) + self._replacing < self._num_workers
            choice = self.policy.choose(self.loads(router), can_grow=can_grow)
            if choice == GROW and can_grow:
                async with self._grow_lock:
                    if len(self._pool) != len(workers):
                        continue  # someone else grew the pool: choose again
                    return await self._add_worker()
            if choice == GROW and self._replacing:
                # Every worker there may be is a replacement under way: wait for one.
                starting = [task for task in self._replacements if not task.done()]
                await asyncio.wait(starting, return_when=asyncio.FIRST_COMPLETED)
                self._check_open()
                continue
            # A custom policy breaking its contract: an error, not a loop that never yields
            # (a negative index would silently pick another worker).
            if choice == GROW:
                raise ValueError(
                    f"placement policy chose to start a worker in a full pool ({len(workers)})"
                )
            if not isinstance(choice, int) or not 0 <= choice < len(workers):
                raise ValueError(
                    f"placement policy chose worker {choice!r} of {len(workers)} in the pool"
                )
            return workers[choice]

    @contextlib.contextmanager
    def reserve(self, worker: Worker) -> Any:
        """Count a transport being created on ``worker`` until it exists.

        InvalidStateError when ``worker`` left the pool since it was chosen: it closed or
        died, and whatever would be made on it fails anyway.
        """
        entry = self._pool.get(worker)
        if entry is None:
            raise InvalidStateError("Worker closed")
        entry.reserved += 1
        # In use: whatever idleness the samples saw is over, even when what is made here
        # is gone before the next sample (which then starts the clock again, instead of
        # freeing the worker for an idleness this use interrupted).
        entry.idle_since = None
        try:
            yield
        finally:
            entry.reserved -= 1

    # -- routers ----------------------------------------------------------------------------

    async def create_router(
        self,
        *,
        media_codecs: list[RouterRtpCodecCapability] | None = None,
        app_data: dict[str, Any] | None = None,
    ) -> MafaldaRouter:
        """A Router with mediasoup's API whose transports are spread over the pool."""
        from mafalda.vertical.router import MafaldaRouter

        self._check_open()
        router = MafaldaRouter(mafalda=self, media_codecs=media_codecs, app_data=app_data)
        self._routers[router.id] = router
        router.events.on("@close", lambda: self._forget(self._routers, router))
        self.observer.emit("newrouter", router)
        return router

    # -- views ---------------------------------------------------------------------------------

    def stats(self) -> MafaldaStats:
        """A plain-dict view of the pool's load (no worker request)."""
        workers: list[WorkerStats] = []
        for worker, entry in self._pool.items():
            consumers, units, routers, transports = self._counts(worker)
            load = WorkerLoad(pid=worker.pid, cpu=entry.cpu, consumers=consumers, units=units)
            workers.append(
                {
                    "pid": worker.pid,
                    "cpu": round(entry.cpu, 4),
                    "consumers": consumers,
                    "units": units,
                    "load": round(self.policy.limits.load(load), 4),
                    "routers": routers,
                    "transports": transports,
                }
            )
        return {"workers": workers, "routers": len(self._routers), "maxWorkers": self._num_workers}

    async def dump(self, *, routers: Iterable[MafaldaRouter] | None = None) -> dict[str, Any]:
        """Workers with their load, and every router (or only ``routers``) with its
        children, transports and pipes."""
        self._check_open()
        stats = self.stats()
        chosen = list(self._routers.values()) if routers is None else list(routers)
        return {
            "workers": stats["workers"],
            "maxWorkers": stats["maxWorkers"],
            "routers": [await router.mafalda_dump() for router in chosen],
        }

    # -- closing --------------------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        self._keep(asyncio.ensure_future(coro))

    def _keep(self, task: asyncio.Future[Any]) -> None:
        """Hold ``task`` until done: aclose() awaits it."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget(self, table: dict[str, Any], closed: MafaldaRouter | MafaldaWebRtcServer) -> None:
        """A router or WebRtcServer of the pool closed: its tasks, cancelled or finishing
        (a child router or a real WebRtcServer being made closes what it makes), are
        the pool's to await from now on."""
        table.pop(closed.id, None)
        for task in closed.unfinished_tasks():
            self._keep(task)

    def close(self) -> None:
        """Close every router and worker of the pool."""
        if self._closed:
            return
        self._closed = True
        if self._sampler is not None:
            self._sampler.cancel()
        # Replacement workers being started are left to finish: they see the pool closed
        # and close their worker (a start cancelled midway could leave a pipe behind).
        for router in list(self._routers.values()):
            router.mafalda_closed()
            self._forget(self._routers, router)
        for webrtc_server in list(self._webrtc_servers.values()):
            webrtc_server.mafalda_closed()
            self._forget(self._webrtc_servers, webrtc_server)
        for worker in list(self._pool):
            worker.close()
        self.observer.emit("close")

    async def aclose(self) -> None:
        """Close, and wait until every task of the pool and of its routers and WebRtcServers
        has ended and every worker process has exited."""
        self._retired.update(self._pool)
        self.close()
        self._pool.clear()
        tasks = [t for t in (self._sampler, *self._tasks) if t is not None]
        await asyncio.gather(*tasks, return_exceptions=True)
        # After the tasks: a worker being started when close() came is retired by now.
        workers = list(self._retired)
        await asyncio.gather(*(w.wait_closed() for w in workers), return_exceptions=True)
