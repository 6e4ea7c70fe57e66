"""mediasoup.set_log_event_listeners(): the library's and the worker's logs handed to an
app's listeners, on a real worker."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from mafalda import mediasoup
from tests.rtp_flow import MEDIA_CODECS, Sender


@pytest.fixture
def debug_enabled() -> Iterator[None]:
    logger = logging.getLogger("mafalda.mediasoup")
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(level)
    mediasoup.set_log_event_listeners()


def _collector() -> tuple[dict[str, list[tuple[Any, ...]]], mediasoup.LogEventListeners]:
    seen: dict[str, list[tuple[Any, ...]]] = {"debug": [], "warn": [], "error": []}
    return seen, {
        "ondebug": lambda namespace, log: seen["debug"].append((namespace, log)),
        "onwarn": lambda namespace, log: seen["warn"].append((namespace, log)),
        "onerror": lambda namespace, log, error: seen["error"].append((namespace, log, error)),
    }


async def _until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@pytest.mark.usefixtures("debug_enabled")
async def test_listeners_get_the_library_and_the_worker_logs() -> None:
    seen, listeners = _collector()
    mediasoup.set_log_event_listeners(listeners)
    worker = await mediasoup.create_worker(log_level="warn", log_tags=["rtp"])
    try:
        failure = RuntimeError("app bug")

        def failing(router: Any) -> None:
            raise failure

        worker.observer.on("newrouter", failing)
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        # A listener that raised: an error log carrying the exception itself.
        [(namespace, log, error)] = [e for e in seen["error"] if e[2] is failure]
        assert namespace == "mafalda.mediasoup.emitter" and "newrouter" in log

        direct = await router.create_direct_transport()
        data_producer = await direct.produce_data()
        await data_producer.dump()
        assert ("mafalda.mediasoup.data_producer", "dump()") in seen["debug"]

        # The worker's own warning (RTP for no producer), through the channel.
        transport = await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}, comedia=True, rtcp_mux=True
        )
        with Sender(transport):
            await _until(lambda: any("no suitable Producer" in w[1] for w in seen["warn"]))
        assert all(w[0] == "mafalda.mediasoup.worker.log" for w in seen["warn"])

        # Replaced, then removed: later logs reach no listener.
        later: list[str] = []
        mediasoup.set_log_event_listeners({"ondebug": lambda namespace, log: later.append(log)})
        mediasoup.set_log_event_listeners({"ondebug": lambda namespace, log: later.append(log)})
        await data_producer.dump()
        assert later == ["dump()"]  # one handler, not two
        mediasoup.set_log_event_listeners()
        counts = {key: len(value) for key, value in seen.items()}
        await data_producer.get_stats()
        assert later == ["dump()"]
        assert {key: len(value) for key, value in seen.items()} == counts
    finally:
        worker.close()
        await worker.wait_closed()


@pytest.mark.usefixtures("debug_enabled")
async def test_a_failing_listener_does_not_break_the_call(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A listener that raises is reported by logging's own error path (stderr), never
    into the library's call, and never logged again to itself."""
    calls = []

    def broken(namespace: str, log: str) -> None:
        calls.append(log)
        raise ValueError("listener broken")

    mediasoup.set_log_event_listeners({"ondebug": broken, "onwarn": None})
    worker = await mediasoup.create_worker()
    try:
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        direct = await router.create_direct_transport()
        data_producer = await direct.produce_data()
        assert (await data_producer.dump())["id"] == data_producer.id
        assert "dump()" in calls
        assert "ValueError: listener broken" in capsys.readouterr().err
        logging.getLogger("mafalda.mediasoup.test").warning("to no listener")  # onwarn None
        assert "to no listener" not in calls and capsys.readouterr().err == ""
    finally:
        worker.close()
        await worker.wait_closed()


@pytest.mark.parametrize(
    ("listeners", "message"),
    [
        ([], "listeners must be a dict"),
        ({"onwarning": print}, "unknown log event listener 'onwarning'"),
        ({"onerror": "print"}, "log event listener 'onerror' must be callable"),
    ],
)
@pytest.mark.usefixtures("debug_enabled")
def test_bad_listeners_are_refused_and_change_nothing(listeners: Any, message: str) -> None:
    """Refused naming the key, the listeners set before kept; the app's own handlers on
    the logger are never touched; levels without a listener go nowhere."""
    seen: list[str] = []
    own = logging.NullHandler()
    logger = logging.getLogger("mafalda.mediasoup")
    logger.addHandler(own)
    mediasoup.set_log_event_listeners({"onwarn": lambda namespace, log: seen.append(log)})
    try:
        with pytest.raises(TypeError, match=message):
            mediasoup.set_log_event_listeners(listeners)
        test_logger = logging.getLogger("mafalda.mediasoup.test")
        for level in (logging.DEBUG, logging.WARNING, logging.ERROR):
            test_logger.log(level, "level %s", level)
        assert seen == [f"level {logging.WARNING}"]  # the listeners set before are kept
        mediasoup.set_log_event_listeners()
        assert own in logger.handlers
    finally:
        logger.removeHandler(own)
