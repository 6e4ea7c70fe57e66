"""Random operations and faults, seeded: routers, transports, producers, consumers, pipes,
pauses, dumps and closes, in sequence and in bursts, while workers are killed (SIGKILL)
and, through a remote client, its connection is cut (a TCP relay aborting both sockets).

Three sides: a Remote Mediasoup client (workers too), a Mafalda pool driven locally, and
one driven through Remote Mafalda. Every call ends within its timeout (none hangs) and
fails only with the library's own errors. Once things settle, a remote client's live
proxies are exactly its session's live objects on the server; closing everything leaves
nothing on the server, and a pool's workers hold no router (no pipe, no child router
left behind). A failure names its seed, its step and the last steps."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from mafalda import Mafalda
from mafalda.remote import RemoteMafalda, RemoteMediasoup, RemoteServer, connect, serve
from tests import chaos
from tests.chaos import live_differences, until
from tests.relay import Relay
from tests.rtp_flow import MEDIA_CODECS

TOKEN = "chaos-token"
KINDS = (
    "worker",
    "router",
    "transport",
    "producer",
    "consumer",
    "dataProducer",
    "dataConsumer",
    "observer",
    "webrtcServer",
)


class Chaos(chaos.Chaos):
    """The operations, on ``api`` (a Remote Mediasoup client, a Mafalda, or a Remote
    Mafalda client); ``pool``: the Mafalda whose workers are killed (None: the client's
    own workers); ``relay``: the remote client's (None: local)."""

    KINDS = KINDS

    def __init__(
        self, rng: random.Random, api: Any, pool: Mafalda | None, relay: Relay | None
    ) -> None:
        super().__init__(rng)
        self.api = api
        self.pool = pool
        self.relay = relay

    async def create_worker(self) -> None:
        if self.pool is None and len(self.live("worker")) < 3:
            self.add("worker", await self.api.create_worker(log_level="none"), None)

    async def create_router(self) -> None:
        if self.pool is not None:
            if len(self.live("router")) < 4:
                self.add("router", await self.api.create_router(media_codecs=MEDIA_CODECS), None)
            return
        worker = self.pick("worker")
        if worker is not None:
            router = await worker.create_router(media_codecs=MEDIA_CODECS)
            self.add("router", router, worker)

    async def create_webrtc_server(self) -> None:
        if len(self.live("webrtcServer")) >= 2:
            return
        listen = [{"protocol": "udp", "ip": "127.0.0.1", "port": 0}]
        if self.pool is not None:
            listen = [{"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 0, "max": 0}}]
            self.add("webrtcServer", await self.api.create_webrtc_server(listen_infos=listen), None)
            return
        worker = self.pick("worker")
        if worker is not None:
            server = await worker.create_webrtc_server(listen_infos=listen)
            self.add("webrtcServer", server, worker)

    async def create_transport(self) -> None:
        router = self.pick("router")
        if router is None:
            return
        servers = [
            s
            for s in self.live("webrtcServer")
            if self.pool is not None or self.parent[id(s)] is self.parent[id(router)]
        ]
        if servers and self.rng.random() < 0.3:
            transport = await router.create_webrtc_transport(webrtc_server=self.rng.choice(servers))
            self.add("transport", transport, router)
            return
        if self.rng.random() < 0.5:
            transport = await router.create_direct_transport()
            self.direct.add(id(transport))
        else:
            transport = await router.create_plain_transport(
                listen_info={"protocol": "udp", "ip": "127.0.0.1"}, comedia=True
            )
        self.add("transport", transport, router)

    async def consume(self) -> None:
        producer = self.pick("producer")
        if producer is None:
            return
        router = self.parent[id(producer)]
        transports = [t for t in self.live("transport") if self.parent[id(t)] is router]
        if not transports:
            return
        consumer = await self.rng.choice(transports).consume(
            producer_id=producer.id,
            rtp_capabilities=router.rtp_capabilities,
            paused=self.rng.random() < 0.3,
        )
        self.add("consumer", consumer, router)

    async def consume_data(self) -> None:
        data_producer = self.pick("dataProducer")
        if data_producer is None:
            return
        router = self.parent[id(data_producer)]
        transports = [
            t
            for t in self.live("transport")
            if self.parent[id(t)] is router and id(t) in self.direct
        ]
        if transports:
            consumer = await self.rng.choice(transports).consume_data(
                data_producer_id=data_producer.id
            )
            self.add("dataConsumer", consumer, router)

    async def observe(self) -> None:
        router = self.pick("router")
        if router is None:
            return
        producers = [p for p in self.live("producer") if self.parent[id(p)] is router]
        observer = await router.create_audio_level_observer(interval=100)
        self.add("observer", observer, router)
        for producer in producers[:2]:
            await observer.add_producer(producer_id=producer.id)

    async def pipe(self) -> None:
        producer = self.pick("producer")
        target = self.pick("router")
        if producer is None or target is None:
            return
        router = self.parent[id(producer)]
        if target is router:
            return
        # Within one worker the copy needs another id (a pool's routers span them all).
        keep_id = self.pool is None and self.parent[id(target)] is not self.parent[id(router)]
        result = await self.piped(router, producer_id=producer.id, router=target, keep_id=keep_id)
        if result is None:
            return
        self.add("consumer", result["pipeConsumer"], router)
        self.add("producer", result["pipeProducer"], target)

    async def pipe_data(self) -> None:
        data_producer = self.pick("dataProducer")
        target = self.pick("router")
        if self.pool is None or data_producer is None or target is None:
            return  # (a pool's: its routers wait for the pair's SCTP, spanning workers)
        router = self.parent[id(data_producer)]
        if target is router:
            return
        result = await self.piped(router, data_producer_id=data_producer.id, router=target)
        if result is None:
            return
        self.add("dataConsumer", result["pipeDataConsumer"], router)
        self.add("dataProducer", result["pipeDataProducer"], target)

    async def pause(self) -> None:
        obj = self.pick(self.rng.choice(["producer", "consumer", "observer"]))
        if obj is not None:
            await (obj.pause() if self.rng.random() < 0.5 else obj.resume())

    async def kill_worker(self) -> None:
        if self.pool is not None:
            pids = [w.pid for w in self.pool.workers if not w.closed]
        else:
            pids = [w.pid for w in self.live("worker")]
        if pids:
            with contextlib.suppress(ProcessLookupError):  # killed in this burst already
                os.kill(self.rng.choice(pids), signal.SIGKILL)

    async def cut(self) -> None:
        if self.relay is not None:
            self.relay.cut()

    async def settle(self) -> None:
        if self.relay is not None:
            await self.link_up(lambda: self.api.connection)

    OPS: tuple[tuple[str, int], ...] = (
        ("create_worker", 2),
        ("create_router", 4),
        ("create_transport", 8),
        ("create_webrtc_server", 1),
        ("produce", 8),
        ("consume", 10),
        ("pipe", 3),
        ("pipe_data", 1),
        ("produce_data", 3),
        ("consume_data", 3),
        ("observe", 1),
        ("pause", 6),
        ("dump", 6),
        ("close", 5),
        ("kill_worker", 2),
        ("cut", 3),
        ("settle", 2),
    )


@contextlib.asynccontextmanager
async def _side(
    side: str, seed: int
) -> AsyncIterator[tuple[Any, Mafalda | None, RemoteServer | None, Relay | None]]:
    """(the api, the pool, the server, the relay) of ``side``. A pool frees its idle
    workers at once on odd seeds (they come and go under its routers), never on even."""
    pool = None
    if side != "remote-mediasoup":
        idle = {"idle_worker_timeout": 0.01, "load_interval": 0.05} if seed % 2 else {}
        pool = await Mafalda.start(
            num_workers=3,
            worker_settings={"log_level": "none"},
            **({"idle_worker_timeout": 3600.0} | idle),
        )
    try:
        if side == "mafalda":
            yield pool, pool, None, None
            return
        async with (
            await serve(token=TOKEN, target=pool, grace_period=10) as server,
            Relay(server.port) as relay,
        ):
            client = await connect(relay.url, token=TOKEN)
            assert isinstance(client, RemoteMafalda if pool else RemoteMediasoup)
            try:
                yield client, pool, server, relay
            finally:
                await client.aclose()
    finally:
        if pool is not None:
            await pool.aclose()


#: Seeds run by the suite (each a few seconds); ``CHAOS_SEEDS=1-200`` runs more by hand.
SEEDS = chaos.seeds("1-4")
STEPS = int(os.environ.get("CHAOS_STEPS", "200"))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("side", ["remote-mediasoup", "mafalda", "remote-mafalda"])
async def test_random_operations_and_faults_leave_things_in_step(side: str, seed: int) -> None:
    async with _side(side, seed) as (api, pool, server, relay):
        chaos = Chaos(random.Random(seed), api, pool, relay)
        await chaos.run(STEPS, seed)
        await chaos.settle()
        if server is not None:
            await _client_and_server_agree(api, server, chaos, seed)
        if pool is not None:
            await _nothing_idle_kept(pool, chaos, seed)
        for kind in ("router", "webrtcServer", "worker"):
            for obj in chaos.live(kind):
                obj.close()
        if server is not None:
            await until(lambda: server.live_objects() == [], 10)
        if pool is not None:
            await _no_router_left(pool, seed)
        print(f"{side} seed {seed}, failures met: {dict(chaos.errors)}")


async def _client_and_server_agree(api: Any, server: RemoteServer, chaos: Chaos, seed: int) -> None:
    session = server.sessions[api.session_id]

    def differences() -> tuple[dict[str, Any], dict[str, Any]]:
        return live_differences(session, api.connection)

    try:  # the events of what closed last may still be on their way
        await until(lambda: differences() == ({}, {}), 5)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed}: (on the server only, here only) {differences()}; "
            f"the last steps: {chaos.log[-20:]}"
        ) from None
    for kind, objects in chaos.objects.items():
        for proxy in objects:
            served = session.objects.get(proxy.handle)
            if proxy.closed:
                assert served is None or served.closed, (seed, kind, proxy)
            else:
                assert served is not None and not served.closed, (seed, kind, proxy)


async def _nothing_idle_kept(pool: Mafalda, chaos: Chaos, seed: int) -> None:
    """Once its tasks are done, no router of the pool keeps what nothing uses: a pipe
    without consumers, a pipe transport pair without pipes, a child router with nothing
    on its worker (each should have closed with its last user)."""

    def idle() -> list[str]:
        found = []
        for router in pool.routers:
            if router.unfinished_tasks():
                return ["tasks under way"]
            pipes = router._pipes.values()
            found += [f"pipe {p.key}" for p in pipes if not p.users and not p.pending]
            found += [f"pair {k}" for k, pair in router._pairs.items() if not pair.pipes]
            for worker in router._children:
                if not (
                    worker in router._transport_host.values()
                    or worker in router._observer_host.values()
                    or worker in router._home.values()
                    or any(p.dst is worker for p in pipes)
                ):
                    found.append(f"child router on worker {worker.pid}")
        return found

    try:  # the closes of the last steps may still be on their way
        await until(lambda: idle() == [], 5)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed}: kept idle: {idle()}; the last steps: {chaos.log[-20:]}"
        ) from None


async def _no_router_left(pool: Mafalda, seed: int) -> None:
    """Every router closed: no worker of the pool holds a router (child routers, pipes)."""

    async def routers() -> dict[int, list[str]]:
        live = [w for w in pool.workers if not w.closed]
        dumps = await asyncio.gather(*(w.dump() for w in live), return_exceptions=True)
        return {
            w.pid: d["routerIds"] for w, d in zip(live, dumps, strict=True) if isinstance(d, dict)
        }

    left: dict[int, list[str]] = {}
    for _ in range(100):
        left = {pid: ids for pid, ids in (await routers()).items() if ids}
        if not left:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"seed {seed}: routers left on the pool's workers: {left}")
