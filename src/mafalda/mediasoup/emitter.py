"""A small event emitter with mediasoup's semantics.

mediasoup's EnhancedEventEmitter never lets a listener's exception escape into the
library: it is logged and the emit goes on. Listeners may be plain functions or
coroutine functions; a coroutine is scheduled as a task that the emitter keeps a
reference to until it finishes (so it is never garbage-collected mid-flight).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

logger = logging.getLogger("mafalda.mediasoup.emitter")

Listener = Callable[..., Any]

# Whether instances of a class are awaitable, by class: listeners mostly return None or
# plain values (a dict's pop()), and inspect.isawaitable() costs an ABC check each time.
_awaitable_classes: dict[type, bool] = {}


def _is_awaitable(value: Any) -> bool:
    cls = type(value)
    known = _awaitable_classes.get(cls)
    if known is None:
        if cls is types.GeneratorType:  # awaitable or not by its code's flags
            return inspect.isawaitable(value)
        known = _awaitable_classes[cls] = inspect.isawaitable(value)
    return known


class EventEmitter:
    """Emitter with ``on``/``once``/``off``/``emit`` and a safe emit."""

    __slots__ = ("_listeners", "_tasks")

    def __init__(self) -> None:
        self._listeners: dict[str, list[tuple[Listener, bool]]] = {}
        # Tasks of async listeners, made with the first (most emitters never have one).
        self._tasks: set[asyncio.Task[Any]] | None = None

    def on(self, event: str, listener: Listener | None = None) -> Any:
        """Add ``listener`` for ``event``; without a listener, acts as a decorator."""
        if listener is None:

            def decorator(fn: Listener) -> Listener:
                self._add(event, fn, False)
                return fn

            return decorator
        self._add(event, listener, False)
        return self

    add_listener = on

    def once(self, event: str, listener: Listener | None = None) -> Any:
        """Add a listener called at most once; decorator form without a listener."""
        if listener is None:

            def decorator(fn: Listener) -> Listener:
                self._add(event, fn, True)
                return fn

            return decorator
        self._add(event, listener, True)
        return self

    def prepend_listener(self, event: str, listener: Listener) -> EventEmitter:
        """Add ``listener`` before the others of ``event`` (Node's prependListener)."""
        self._listeners.setdefault(event, []).insert(0, (listener, False))
        return self

    def prepend_once_listener(self, event: str, listener: Listener) -> EventEmitter:
        """As prepend_listener(), called at most once (Node's prependOnceListener)."""
        self._listeners.setdefault(event, []).insert(0, (listener, True))
        return self

    def _add(self, event: str, listener: Listener, once: bool) -> None:
        self._listeners.setdefault(event, []).append((listener, once))

    def off(self, event: str, listener: Listener) -> EventEmitter:
        """Remove one registration of ``listener`` for ``event`` (no error if absent)."""
        entries = self._listeners.get(event)
        if entries:
            for i, (fn, _) in enumerate(entries):
                # ==, not is: a bound method (obj.handler) is a new object at every
                # access, equal to the one given to on().
                if fn == listener:
                    del entries[i]
                    break
            if not entries:
                del self._listeners[event]
        return self

    remove_listener = off

    def remove_all_listeners(self, event: str | None = None) -> EventEmitter:
        if event is None:
            self._listeners.clear()
        else:
            self._listeners.pop(event, None)
        return self

    def listener_count(self, event: str) -> int:
        return len(self._listeners.get(event, ()))

    def listeners(self, event: str) -> list[Listener]:
        return [fn for fn, _ in self._listeners.get(event, ())]

    def event_names(self) -> list[str]:
        return list(self._listeners)

    def emit(self, event: str, *args: Any) -> bool:
        """Call the listeners of ``event``; a failing listener is logged, never raised.

        Returns whether the event had listeners, as Node's emit does.
        """
        entries = self._listeners.get(event)
        if not entries:
            return False
        snapshot = list(entries)
        for entry in snapshot:
            fn, once = entry
            if once:
                current = self._listeners.get(event)
                if current is None or entry not in current:
                    continue
                current.remove(entry)
                if not current:
                    del self._listeners[event]
            try:
                result = fn(*args)
            except Exception as error:
                logger.exception("listener of event %r failed", event)
                self._emit_listener_error(event, error)
                continue
            if result is not None and _is_awaitable(result):
                self._track(event, result)
        return True

    safe_emit = emit

    def _emit_listener_error(self, event: str, error: Exception) -> None:
        # As mediasoup's safeEmit: 'listenererror' gets (event name, exception).
        if event != "listenererror" and "listenererror" in self._listeners:
            self.emit("listenererror", event, error)

    def _track(self, event: str, awaitable: Any) -> None:
        task = asyncio.ensure_future(awaitable)
        tasks = self._tasks
        if tasks is None:
            tasks = self._tasks = set()
        tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                logger.error("async listener of event %r failed", event, exc_info=t.exception())

        task.add_done_callback(done)

    def wait_for(self, event: str) -> asyncio.Future[tuple[Any, ...]]:
        """A future of the next ``event``'s arguments.

        The listener is added at the call, as Node's ``events.once()`` does, not when the
        future is first awaited: an event that comes before that (a process killed right
        after, whose exit the loop reads first) is not missed. Cancelling the future
        removes the listener.
        """
        future: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()

        def listener(*args: Any) -> None:
            if not future.done():
                future.set_result(args)

        self.once(event, listener)
        future.add_done_callback(lambda _: self.off(event, listener))
        return future


class EventSource:
    """Base of the objects that emit mediasoup's events (Node's objects are emitters).

    ``on``/``once``/``off`` act on the object's ``events`` emitter; its ``observer``
    emitter carries the observer events.
    """

    events: EventEmitter

    def on(self, event: str, listener: Listener | None = None) -> Any:
        return self.events.on(event, listener)

    def once(self, event: str, listener: Listener | None = None) -> Any:
        return self.events.once(event, listener)

    def off(self, event: str, listener: Listener) -> Any:
        return self.events.off(event, listener)
