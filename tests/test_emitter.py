from __future__ import annotations

import asyncio

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
    errors: list[str] = []
    e.on("listenererror", errors.append)

    def boom() -> None:
        raise RuntimeError("boom")

    e.on("x", boom)
    e.on("x", lambda: after.append(1))
    assert e.emit("x") is True
    assert after == [1]
    assert errors == ["x"]
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
