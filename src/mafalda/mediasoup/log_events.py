"""``set_log_event_listeners()``: mediasoup's hook to hand the library's logs to an app's
own logger.

Python's ``logging`` stays the source: the library logs under ``mafalda.mediasoup`` (the
worker's own lines under ``mafalda.mediasoup.worker.log``) and the listeners get what
that logger lets through: its level decides, as Node's ``DEBUG`` decides what mediasoup
prints. Set ``logging.getLogger("mafalda.mediasoup").setLevel(logging.DEBUG)`` for
``ondebug`` to see debug lines. The namespace a listener gets is the logger's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TypedDict, cast

__all__ = ["LogEventListeners", "set_log_event_listeners"]

LOGGER_NAME = "mafalda.mediasoup"


class LogEventListeners(TypedDict, total=False):
    ondebug: Callable[[str, str], None] | None
    onwarn: Callable[[str, str], None] | None
    onerror: Callable[[str, str, BaseException | None], None] | None


_KEYS = frozenset(LogEventListeners.__annotations__)


class _ListenersHandler(logging.Handler):
    """Debug and info records to ``ondebug``, warnings to ``onwarn``, errors (and worse,
    with the exception they carry) to ``onerror``."""

    def __init__(self, listeners: LogEventListeners) -> None:
        super().__init__(logging.DEBUG)
        self.ondebug = listeners.get("ondebug")
        self.onwarn = listeners.get("onwarn")
        self.onerror = listeners.get("onerror")

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if record.levelno >= logging.ERROR:
                if self.onerror is not None:
                    error = record.exc_info[1] if record.exc_info else None
                    self.onerror(record.name, record.getMessage(), error)
            elif record.levelno >= logging.WARNING:
                if self.onwarn is not None:
                    self.onwarn(record.name, record.getMessage())
            elif self.ondebug is not None:
                self.ondebug(record.name, record.getMessage())
        except Exception:
            # Not logged again: that would call the failing listener once more.
            self.handleError(record)


def check_listeners(listeners: object) -> LogEventListeners:
    """TypeError naming what is wrong unless ``listeners`` is a mapping of ``ondebug``,
    ``onwarn``, ``onerror`` to callables (or None)."""
    if not isinstance(listeners, Mapping):
        raise TypeError("listeners must be a dict of ondebug, onwarn, onerror")
    for key, listener in listeners.items():
        if key not in _KEYS:
            raise TypeError(f"unknown log event listener {key!r} (ondebug, onwarn, onerror)")
        if listener is not None and not callable(listener):
            raise TypeError(f"log event listener {key!r} must be callable")
    return cast(LogEventListeners, dict(listeners))


def set_log_event_listeners(listeners: LogEventListeners | None = None) -> None:
    """Send the library's logs to ``listeners`` (replacing those set before); None or
    no argument: stop."""
    checked = check_listeners(listeners) if listeners is not None else None
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        if isinstance(handler, _ListenersHandler):
            logger.removeHandler(handler)
    if checked is not None:
        logger.addHandler(_ListenersHandler(checked))
