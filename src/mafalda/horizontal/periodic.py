"""A step run now, then every ``interval`` seconds, riding out Redis outages.

A media server's registry heartbeat (``MediaNode``) and its Monitor reports
(``mafalda.monitor.Reporter``) both write to Redis on a beat: the first write must
succeed (``start()`` raises OSError otherwise: a misconfigured server fails at once),
later failures are logged once per outage, and the beat goes on until ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

__all__ = ["Periodic", "check_seconds", "start_or_close"]


class Periodic:
    def __init__(
        self,
        step: Callable[[], Awaitable[object]],
        *,
        interval: float,
        logger: logging.Logger,
        failed: str,
        again: str,
        refused: str,
    ) -> None:
        """``failed`` is logged (with the error) when a step fails after a success,
        ``again`` when one succeeds after a failure; ``refused`` starts the OSError of a
        first step that fails. ``interval`` > 0 (its users check it).
        """
        self.step = step
        self.interval = interval
        self._logger = logger
        self._failed, self._again, self._refused = failed, again, refused
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    async def start(self) -> None:
        try:
            await self.step()
        except RedisError as error:
            raise OSError(f"{self._refused}: {error}") from error
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        failing = False
        # Also stops on ``_stopped``: on Python 3.11, redis-py's asyncio.wait_for() around
        # a socket write swallows a cancellation that lands as the write completes, and
        # stop() would wait for this loop forever (the beat going on meanwhile).
        while not self._stopped:
            await asyncio.sleep(self.interval)
            try:
                await self.step()
                if failing:
                    self._logger.info(self._again)
                failing = False
            except (RedisError, OSError) as error:
                if not failing:
                    self._logger.warning("%s: %s", self._failed, error)
                failing = True

    async def stop(self) -> None:
        """Stop beating (a step under way is cancelled)."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            # wait(), not await: a cancellation of stop() itself must not be swallowed.
            await asyncio.wait([self._task])


def check_seconds(value: object, name: str, *, positive: bool = False) -> None:
    """ValueError unless ``value`` is a finite number of seconds, > 0 or >= 0 (NaN
    compares false with everything: a NaN grace would never expire a server)."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not (0 < value if positive else 0 <= value)
        or not value < float("inf")
    ):
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")


async def start_or_close(periodic: Periodic, redis: Any) -> None:
    """``periodic.start()``, whose steps write with ``redis``; when it fails, ``redis`` is
    closed and start()'s own error raised. Its connection would stay open otherwise
    (Redis refused the write: read-only, out of memory, not allowed...): ``async with``
    calls no aclose() when start() fails. It may be started again."""
    try:
        await periodic.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await redis.aclose()
        raise
