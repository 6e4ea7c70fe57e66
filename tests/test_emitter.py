from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Generator
from typing import Any

import pytest

from mafalda.mediasoup.emitter import EventEmitter


def test_on_once_off_and_counts() -> None:
    e = EventEmitter()
    calls: list[tuple[str, int]] = []

    def a(x: int) -> None:
        calls.append(("a", x))

    e.on("x", a)
    e.once("x", lambda x: calls.append(("once", x)))
    assert e.listener_count("x") == 2
    assert e.emit("x", 1) is True
    assert e.emit("x", 2) is True
    assert calls == [("a", 1), ("once", 1), ("a", 2)]
    e.off("x", a)
    e.off("x", a)  # absent: no error
    assert e.emit("x", 3) is False
    assert e.event_names() == []


def test_prepended_listeners_run_first() -> None:
    # Node's prependListener()/prependOnceListener(), which mediasoup's emitters have.
    e = EventEmitter()
    calls: list[str] = []
    e.on("x", lambda: calls.append("on"))
    assert e.prepend_listener("x", lambda: calls.append("first")) is e
    assert e.prepend_once_listener("x", lambda: calls.append("first once")) is e
    e.prepend_listener("y", lambda: calls.append("y"))  # an event with no listener yet
    e.emit("x")
    e.emit("x")
    e.emit("y")
    assert calls == ["first once", "first", "on", "first", "on", "y"]
    assert e.listener_count("x") == 2


def test_off_removes_a_bound_method_given_again() -> None:
    """obj.handler is a new object at each access: off() finds the one on() got by
    equality (it silently kept it before), one registration at a time."""

    class Handler:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def handle(self, x: int) -> None:
            self.seen.append(x)

    e = EventEmitter()
    first, second = Handler(), Handler()
    e.on("x", first.handle)
    e.on("x", first.handle)
    e.on("x", second.handle)
    e.off("x", first.handle)
    e.emit("x", 1)
    assert (first.seen, second.seen) == ([1], [1])
    e.off("x", first.handle)
    e.emit("x", 2)
    assert (first.seen, second.seen) == ([1], [1, 2])  # the other instance's stays
    assert e.listener_count("x") == 1


def test_decorator_forms_and_remove_all() -> None:
    e = EventEmitter()
    seen: list[str] = []

    @e.on("a")
    def _a() -> None:
        seen.append("a")

    @e.once("b")
    def _b() -> None:
        seen.append("b")

    e.emit("a")
    e.emit("b")
    e.emit("b")
    assert seen == ["a", "b"]
    assert e.listeners("a") == [_a]
    e.remove_all_listeners("a")
    assert e.listener_count("a") == 0
    e.on("c", _a)
    e.remove_all_listeners()
    assert e.event_names() == []


def test_listener_error_is_contained(caplog: pytest.LogCaptureFixture) -> None:
    e = EventEmitter()
    after: list[int] = []
    errors: list[tuple[str, Exception]] = []
    e.on("listenererror", lambda name, error: errors.append((name, error)))
    failure = RuntimeError("boom")

    def boom() -> None:
        raise failure

    e.on("x", boom)
    e.on("x", lambda: after.append(1))
    assert e.emit("x") is True
    assert after == [1]
    assert errors == [("x", failure)]
    assert "boom" in caplog.text


def test_once_listener_removed_during_emit_is_skipped() -> None:
    e = EventEmitter()
    seen: list[str] = []

    def second() -> None:
        seen.append("second")

    def first() -> None:
        seen.append("first")
        e.off("x", second)

    e.on("x", first)
    e.once("x", second)
    e.emit("x")
    assert seen == ["first"]


async def test_async_listeners_and_wait_for(caplog: pytest.LogCaptureFixture) -> None:
    e = EventEmitter()
    done = asyncio.Event()

    async def listener(value: int) -> None:
        assert value == 5
        done.set()

    async def failing() -> None:
        raise RuntimeError("async boom")

    e.on("v", listener)
    e.on("f", failing)
    e.emit("v", 5)
    e.emit("f")
    await asyncio.wait_for(done.wait(), 1)
    await asyncio.sleep(0)
    assert "async boom" in caplog.text
    waiter = asyncio.ensure_future(e.wait_for("z"))
    await asyncio.sleep(0)
    e.emit("z", 1, 2)
    assert await waiter == (1, 2)
    assert e.listener_count("z") == 0


async def test_every_kind_of_awaitable_a_listener_returns_is_run() -> None:
    # Coroutines, generator-based coroutines, futures and objects with __await__ are run
    # to completion; plain values (a dict's pop(), a generator) are left alone.
    e = EventEmitter()
    done: list[str] = []

    async def native() -> None:
        done.append("native")

    @types.coroutine
    def generator_based() -> Generator[Any, None, None]:
        yield
        done.append("generator-based")

    class Custom:
        def __await__(self) -> Generator[Any, None, None]:
            yield
            done.append("custom")

    def plain_generator() -> Generator[int, None, None]:
        done.append("plain generator ran")  # never: a plain generator is not awaited
        yield 1

    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.add_done_callback(lambda _: done.append("future"))
    for listener in (native, generator_based, Custom, plain_generator, lambda: future, dict):
        e.on("x", listener)
    for _ in range(2):  # the second time from what was learnt of each class
        e.emit("x")
        future.set_result(None) if not future.done() else None
        for _ in range(5):
            await asyncio.sleep(0)
    # The future's callback runs once: it is the same future both times.
    assert collections.Counter(done) == {
        "native": 2,
        "generator-based": 2,
        "custom": 2,
        "future": 1,
    }


async def test_wait_for_cancelled_as_its_event_comes_is_just_cancelled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The waiter is cancelled, then the event comes before it resumes to remove its
    # listener: the event is for the other listeners, no error is logged.
    e = EventEmitter()
    seen: list[int] = []
    waiter = asyncio.ensure_future(e.wait_for("x"))
    await asyncio.sleep(0)
    e.on("x", seen.append)
    waiter.cancel()
    assert e.emit("x", 1)
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert seen == [1]
    assert e.listener_count("x") == 1
    assert not caplog.records


async def test_wait_for_listens_from_the_call_not_from_the_first_await() -> None:
    # An event emitted before the caller yields (as a killed worker's exit, which the
    # loop can read before a task made by ensure_future() first runs) is not missed.
    e = EventEmitter()
    waiter = asyncio.ensure_future(e.wait_for("x"))
    assert e.emit("x", 7)
    assert await asyncio.wait_for(waiter, 1) == (7,)
    assert e.listener_count("x") == 0
    # A waiter dropped before its event leaves no listener behind.
    dropped = e.wait_for("y")
    dropped.cancel()
    await asyncio.sleep(0)
    assert e.listener_count("y") == 0
    assert not e.emit("y")
