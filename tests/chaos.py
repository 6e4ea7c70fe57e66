"""What the seeded chaos tests share (tests/test_chaos_remote.py, test_chaos_cluster.py):
the objects made so far, random picks among the live ones, and a step that runs one
operation or a burst of them at once, each of which must end within CALL_TIMEOUT and
fail only with the library's own errors."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from mafalda.mediasoup.errors import InvalidValueError, MediasoupError
from tests.conftest import opus_rtp_parameters
from tests.rtp_flow import OPUS_PT

CALL_TIMEOUT = 15.0  # generous: a loaded CI machine; a hang waits forever
#: What a call may fail with while objects close under it, workers die and connections
#: come and go: the library's own errors (the remote ones and a cluster's ClusterError
#: are MediasoupErrors).
EXPECTED = (MediasoupError, InvalidValueError)


def seeds(default: str) -> list[int]:
    """The seeds to run: ``CHAOS_SEEDS`` ("1-200") if set, else ``default``."""
    first, _, last = os.environ.get("CHAOS_SEEDS", default).partition("-")
    return list(range(int(first), int(last or first) + 1))


async def until(predicate: Any, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def live_differences(session: Any, connection: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """(live on the server only, live here only): the live objects of a server's session
    (None: gone, nothing there) against a client connection's live proxies."""
    objects = session.objects if session is not None else {}
    served = {h: o for h, o in objects.items() if not getattr(o, "closed", True)}
    held = {h: p for h, p in connection.proxies.items() if not p.closed}
    return (
        {h: served[h] for h in served.keys() - held.keys()},
        {h: held[h] for h in held.keys() - served.keys()},
    )


class Chaos:
    """Subclasses give KINDS (what they make) and OPS (operation name, weight): each
    operation is a coroutine method of that name."""

    KINDS: tuple[str, ...] = ()
    OPS: tuple[tuple[str, int], ...] = ()

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.objects: dict[str, list[Any]] = {k: [] for k in self.KINDS}
        #: Each object's parent as the test sees it (a router, a worker).
        self.parent: dict[Any, Any] = {}
        self.direct: set[int] = set()  # direct transports (data goes through them)
        self.errors: Counter[str] = Counter()
        self.ssrc = 10_000
        self.log: list[Any] = []

    async def run(self, steps: int, seed: int) -> None:
        """``steps`` steps; a failed check says the seed, the step and the last ones."""
        for step in range(steps):
            try:
                await self.step()
            except (AssertionError, TimeoutError) as error:
                raise AssertionError(
                    f"seed {seed}, step {step}: {error!r}; the last steps: {self.log[-10:]}"
                ) from error

    def live(self, kind: str) -> list[Any]:
        return [o for o in self.objects[kind] if not o.closed]

    def pick(self, kind: str) -> Any:
        live = self.live(kind)
        return self.rng.choice(live) if live else None

    def add(self, kind: str, obj: Any, parent: Any) -> None:
        self.objects[kind].append(obj)
        self.parent[id(obj)] = parent

    async def produce(self) -> None:
        transport = self.pick("transport")
        if transport is None:
            return
        self.ssrc += 1
        parameters = opus_rtp_parameters(self.ssrc, OPUS_PT)
        producer = await transport.produce(kind="audio", rtp_parameters=parameters)
        self.add("producer", producer, self.parent[id(transport)])

    async def produce_data(self) -> None:
        transport = self.pick("transport")
        if transport is None or id(transport) not in self.direct:
            return  # (a direct transport's: no SCTP to set up)
        data_producer = await transport.produce_data()
        self.add("dataProducer", data_producer, self.parent[id(transport)])

    async def dump(self) -> None:
        obj = self.pick(self.rng.choice([k for k in self.KINDS if k != "observer"]))  # (none)
        if obj is not None:
            await obj.dump()

    async def close(self) -> None:
        obj = self.pick(self.rng.choice(self.KINDS))
        if obj is not None:
            obj.close()

    @staticmethod
    async def piped(source_router: Any, /, **options: Any) -> Any:
        """``source_router.pipe_to_router(**options)``'s result, or None when its target
        has that source piped in already (mediasoup's own refusal)."""
        try:
            return await source_router.pipe_to_router(**options)
        except TypeError as error:
            if "already exists" not in str(error):
                raise
            return None

    @staticmethod
    async def link_up(connection_of: Callable[[], Any]) -> None:
        """Once the remote connection ``connection_of()`` gives (None: none) is up after
        the cuts made so far: a cut this turn is noticed a few turns later, until then
        the link looks up."""
        await asyncio.sleep(0.05)
        connection = connection_of()
        if connection is not None:
            await until(lambda: not connection.reconnecting, CALL_TIMEOUT)

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
