"""Where a new transport goes: placement policies over worker load snapshots.

Pure functions of a snapshot, so they are tested without processes. A worker's load
is the larger of two fractions of its capacity: CPU time against the CPU watermark,
and "load units" against the per-worker limit, where a transport counts for the number
of consumers it carries, at least one (a transport just created will soon consume).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """A snapshot of one pool worker, as the policies see it."""

    pid: int
    #: Fraction of one core used over the last sampling interval (0.0 to ~1.0).
    cpu: float
    #: Consumers on the worker (pipe consumers included: they cost the same).
    consumers: int
    #: Sum over its transports of max(1, consumers on the transport).
    units: int
    #: Whether the router being placed already has a child router there.
    hosts_router: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    """Capacity of one worker."""

    #: mediasoup's guidance is about 500 consumers per worker.
    max_units_per_worker: int = 500
    #: Above this CPU fraction a worker is considered full.
    cpu_watermark: float = 0.6

    def __post_init__(self) -> None:
        if self.max_units_per_worker < 1:
            raise ValueError("max_units_per_worker must be at least 1")
        if not 0.0 < self.cpu_watermark <= 1.0:
            raise ValueError("cpu_watermark must be in (0, 1]")

    def load(self, w: WorkerLoad) -> float:
        return max(w.cpu / self.cpu_watermark, w.units / self.max_units_per_worker)

    def has_headroom(self, w: WorkerLoad) -> bool:
        return self.load(w) < 1.0


#: ``choose`` returns the index of the worker to use, or GROW to start a new worker.
GROW = -1


class PlacementPolicy(Protocol):
    """Chooses the worker for a new transport."""

    limits: Limits

    def choose(self, workers: Sequence[WorkerLoad], *, can_grow: bool) -> int:
        """Index into ``workers``, or GROW (only when ``can_grow``)."""
        ...


@dataclass(slots=True)
class ConcentratePolicy:
    """The busiest worker that still has headroom (Mafalda's default).

    Concentrating keeps rooms on few workers, so producers are piped to few places (a
    tree of pipes, not a mesh) and idle workers can be freed. Among equally loaded
    workers, one already hosting the router wins (no new pipe needed). When no worker
    has headroom, a new one is started if allowed, else the least loaded one is used.
    """

    limits: Limits

    def choose(self, workers: Sequence[WorkerLoad], *, can_grow: bool) -> int:
        usable = [i for i, w in enumerate(workers) if self.limits.has_headroom(w)]
        if usable:
            return max(
                usable,
                key=lambda i: (self.limits.load(workers[i]), workers[i].hosts_router, -i),
            )
        if can_grow or not workers:
            return GROW
        return min(range(len(workers)), key=lambda i: (self.limits.load(workers[i]), i))


@dataclass(slots=True)
class SpreadPolicy:
    """The least loaded worker, starting workers while any is in use (round-robin-like)."""

    limits: Limits

    def choose(self, workers: Sequence[WorkerLoad], *, can_grow: bool) -> int:
        if not workers:
            return GROW
        best = min(range(len(workers)), key=lambda i: (self.limits.load(workers[i]), i))
        if can_grow and workers[best].units > 0:
            return GROW
        return best


def make_policy(name: str, limits: Limits) -> PlacementPolicy:
    if name == "concentrate":
        return ConcentratePolicy(limits)
    if name == "spread":
        return SpreadPolicy(limits)
    raise ValueError(f"unknown placement policy {name!r} (expected 'concentrate' or 'spread')")
