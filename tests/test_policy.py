"""Placement policies are pure functions of load snapshots."""

from __future__ import annotations

import pytest

from mafalda.vertical.policy import (
    GROW,
    ConcentratePolicy,
    Limits,
    SpreadPolicy,
    WorkerLoad,
    make_policy,
)

LIMITS = Limits(max_units_per_worker=10, cpu_watermark=0.5)


def load(units: int = 0, cpu: float = 0.0, hosts: bool = False, pid: int = 1) -> WorkerLoad:
    return WorkerLoad(pid=pid, cpu=cpu, consumers=units, units=units, hosts_router=hosts)


def test_limits_validate_and_measure() -> None:
    with pytest.raises(ValueError, match="max_units_per_worker"):
        Limits(max_units_per_worker=0)
    with pytest.raises(ValueError, match="cpu_watermark"):
        Limits(cpu_watermark=1.5)
    assert LIMITS.load(load(units=5)) == 0.5
    assert LIMITS.load(load(units=1, cpu=0.4)) == pytest.approx(0.8)
    assert LIMITS.has_headroom(load(units=9))
    assert not LIMITS.has_headroom(load(units=10))
    assert not LIMITS.has_headroom(load(cpu=0.5))


def test_concentrate_prefers_busiest_with_headroom() -> None:
    policy = ConcentratePolicy(LIMITS)
    workers = [load(units=2), load(units=7), load(units=10)]
    assert policy.choose(workers, can_grow=True) == 1
    # CPU counts as load too: the worker at 80% of its watermark is the busiest usable.
    workers = [load(units=2), load(units=3, cpu=0.4)]
    assert policy.choose(workers, can_grow=False) == 1


def test_concentrate_ties_go_to_the_worker_hosting_the_router() -> None:
    policy = ConcentratePolicy(LIMITS)
    workers = [load(units=3), load(units=3, hosts=True), load(units=3)]
    assert policy.choose(workers, can_grow=True) == 1
    workers = [load(units=3), load(units=3)]
    assert policy.choose(workers, can_grow=True) == 0  # first one on a full tie


def test_concentrate_grows_then_spills_to_least_loaded() -> None:
    policy = ConcentratePolicy(LIMITS)
    full = [load(units=12), load(units=10, cpu=0.1)]
    assert policy.choose(full, can_grow=True) == GROW
    assert policy.choose(full, can_grow=False) == 1
    assert policy.choose([], can_grow=True) == GROW


def test_spread_uses_least_loaded_and_grows_while_busy() -> None:
    policy = SpreadPolicy(LIMITS)
    assert policy.choose([], can_grow=True) == GROW
    assert policy.choose([load(units=0)], can_grow=True) == 0
    assert policy.choose([load(units=1)], can_grow=True) == GROW
    assert policy.choose([load(units=4), load(units=1)], can_grow=False) == 1


def test_make_policy() -> None:
    assert isinstance(make_policy("concentrate", LIMITS), ConcentratePolicy)
    assert isinstance(make_policy("spread", LIMITS), SpreadPolicy)
    with pytest.raises(ValueError, match="unknown placement policy"):
        make_policy("random", LIMITS)
