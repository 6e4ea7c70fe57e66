"""Random operations and faults through a Remote Mediasoup client, checked against the
server: workers, routers, transports, producers, consumers, pipes, pauses, dumps and
closes, in sequence and in bursts, while workers are killed (SIGKILL) and the client's
connection is cut (a TCP relay aborting both sockets). Every call ends within its
timeout (none hangs), fails only with the library's own errors, and once things settle
the client's live proxies are exactly the server's live objects of its session; closing
the workers leaves nothing on the server. Seeded: a failure names its seed and step."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections import Counter
from typing import Any

import pytest

from mafalda.mediasoup.errors import InvalidValueError, MediasoupError
from mafalda.remote import RemoteMediasoup, connect, serve
from tests.conftest import opus_rtp_parameters
from tests.relay import Relay
from tests.rtp_flow import MEDIA_CODECS, OPUS_PT

TOKEN = "chaos-token"
CALL_TIMEOUT = 15.0  # generous: a loaded CI machine; a hang waits forever
#: What a call may fail with while objects close under it and the connection comes and
#: goes: the library's own errors (closed objects, a dead worker, a lost connection).
EXPECTED = (MediasoupError, InvalidValueError)


class Chaos:
    def __init__(self, rng: random.Random, client: RemoteMediasoup, relay: Relay) -> None:
        self.rng = rng
        self.client = client
        self.relay = relay
        self.objects: dict[str, list[Any]] = {
            k: [] for k in ("worker", "router", "transport", "producer", "consumer")
        }
        self.errors: Counter[str] = Counter()
        self.ssrc = 10_000
        self.log: list[Any] = []

    def live(self, kind: str) -> list[Any]:
        return [o for o in self.objects[kind] if not o.closed]

    def pick(self, kind: str) -> Any:
        live = self.live(kind)
        return self.rng.choice(live) if live else None

    async def create_worker(self) -> None:
        if len(self.live("worker")) < 3:
            self.objects["worker"].append(await self.client.create_worker(log_level="none"))

    async def create_router(self) -> None:
        worker = self.pick("worker")
        if worker is not None:
            self.objects["router"].append(await worker.create_router(media_codecs=MEDIA_CODECS))

    async def create_transport(self) -> None:
        router = self.pick("router")
        if router is None:
            return
        if self.rng.random() < 0.5:
            transport = await router.create_direct_transport()
        else:
            transport = await router.create_plain_transport(
                listen_info={"protocol": "udp", "ip": "127.0.0.1"}, comedia=True
            )
        self.objects["transport"].append(transport)

    async def produce(self) -> None:
        transport = self.pick("transport")
        if transport is None:
            return
        self.ssrc += 1
        parameters = opus_rtp_parameters(self.ssrc, OPUS_PT)
        self.objects["producer"].append(
            await transport.produce(kind="audio", rtp_parameters=parameters)
        )

    async def consume(self) -> None:
        producer = self.pick("producer")
        if producer is None:
            return
        router = producer._parent._parent
        transports = [t for t in self.live("transport") if t._parent is router]
        if not transports:
            return
        transport = self.rng.choice(transports)
        self.objects["consumer"].append(
            await transport.consume(
                producer_id=producer.id,
                rtp_capabilities=router.rtp_capabilities,
                paused=self.rng.random() < 0.3,
            )
        )

    async def pipe(self) -> None:
        producer = self.pick("producer")
        target = self.pick("router")
        if producer is None or target is None:
            return
        router = producer._parent._parent
        if target is router:
            return
        # Within one worker the copy needs another id.
        keep_id = target._parent is not router._parent
        try:
            result = await router.pipe_to_router(
                producer_id=producer.id, router=target, keep_id=keep_id
            )
        except TypeError as error:  # piped there already (mediasoup's own refusal)
            if "already exists" not in str(error):
                raise
            return
        self.objects["consumer"].append(result["pipeConsumer"])
        self.objects["producer"].append(result["pipeProducer"])

    async def pause(self) -> None:
        obj = self.pick(self.rng.choice(["producer", "consumer"]))
        if obj is not None:
            await (obj.pause() if self.rng.random() < 0.5 else obj.resume())

    async def dump(self) -> None:
        obj = self.pick(self.rng.choice(list(self.objects)))
        if obj is not None:
            await obj.dump()

    async def close(self) -> None:
        obj = self.pick(self.rng.choice(list(self.objects)))
        if obj is not None:
            obj.close()

    async def kill_worker(self) -> None:
        worker = self.pick("worker")
        if worker is not None:
            with contextlib.suppress(ProcessLookupError):  # killed in this burst already
                os.kill(worker.pid, signal.SIGKILL)

    async def cut(self) -> None:
        self.relay.cut()

    async def settle(self) -> None:
        # A cut this turn is noticed a few turns later: until then the link looks up.
        await asyncio.sleep(0.05)
        await until(lambda: not self.client.connection.reconnecting, CALL_TIMEOUT)

    OPS: tuple[tuple[str, int], ...] = (
        ("create_worker", 2),
        ("create_router", 4),
        ("create_transport", 8),
        ("produce", 8),
        ("consume", 10),
        ("pipe", 4),
        ("pause", 6),
        ("dump", 6),
        ("close", 5),
        ("kill_worker", 2),
        ("cut", 3),
        ("settle", 2),
    )

    async def step(self) -> None:
        names, weights = zip(*self.OPS, strict=True)
        count = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 5)  # a burst
        ops = self.rng.choices(names, weights, k=count)
        self.log.append(ops)
        results = await asyncio.wait_for(
            asyncio.gather(*(getattr(self, op)() for op in ops), return_exceptions=True),
            CALL_TIMEOUT,
        )
        for op, result in zip(ops, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, EXPECTED):
                    raise AssertionError(f"{op}() failed with {result!r}") from result
                self.errors[f"{op}: {type(result).__name__}"] += 1


async def until(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


#: Seeds run by the suite (each a few seconds); ``CHAOS_SEEDS=1-200`` runs more by hand.
_SEEDS = os.environ.get("CHAOS_SEEDS", "1-6")
SEEDS = list(range(int(_SEEDS.split("-")[0]), int(_SEEDS.split("-")[-1]) + 1))


@pytest.mark.parametrize("seed", SEEDS)
async def test_random_operations_and_faults_keep_client_and_server_in_step(seed: int) -> None:
    rng = random.Random(seed)
    async with (
        await serve(token=TOKEN, grace_period=10) as server,
        Relay(server.port) as relay,
    ):
        client = await connect(relay.url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        chaos = Chaos(rng, client, relay)
        for step in range(200):
            try:
                await chaos.step()
            except (AssertionError, TimeoutError) as error:
                raise AssertionError(f"seed {seed}, step {step}: {error!r}") from error
        await chaos.settle()
        session = server.sessions[client.session_id]

        def differences() -> tuple[dict[str, Any], dict[str, Any]]:
            """(live on the server only, live here only)."""
            served = {h: o for h, o in session.objects.items() if not getattr(o, "closed", True)}
            held = {h: p for h, p in client.connection.proxies.items() if not p.closed}
            return (
                {h: served[h] for h in served.keys() - held.keys()},
                {h: held[h] for h in held.keys() - served.keys()},
            )

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
        for worker in client.workers:
            worker.close()
        await until(lambda: server.live_objects() == [], 10)
        await client.aclose()  # its bye ends the session
        await until(lambda: not server.sessions, 5)
        print(f"seed {seed}, failures met: {dict(chaos.errors)}")
