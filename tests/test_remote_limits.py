"""The operator's limits of a Remote Mediasoup / Remote Mafalda server: workers per
session, sessions, objects per session, the RTC port range. The checks alone (no I/O),
then against real loopback servers, clients and workers, and the `mafalda serve` flags."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mafalda import cli
from mafalda.remote import (
    RemoteError,
    RemoteMafalda,
    RemoteMediasoup,
    connect,
    serve,
)
from mafalda.remote import protocol as p
from mafalda.remote._limits import (
    DEFAULT_MAX_OBJECTS_PER_SESSION,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_MAX_WORKERS,
    DEFAULT_MAX_WORKERS_PER_SESSION,
    check_limit,
    check_listen_ports,
    check_port_range,
    worker_ports,
)
from mafalda.vertical import Mafalda

from .conftest import MEDIA_CODECS, served_by
from .processes import reap, serve_args, spawn_serve

TOKEN = "limits"
LISTEN: dict[str, Any] = {"protocol": "udp", "ip": "127.0.0.1"}
AUDIO: dict[str, Any] = {
    "codecs": [{"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}],
    "encodings": [{"ssrc": 11111111}],
}
RANGE = (40000, 40099)
OUTSIDE = re.escape("(the server's rtc_port_range)")


def port_range(size: int = 30) -> tuple[int, int]:
    """``size`` ports from one free for UDP on 127.0.0.1 now (the first is used as an
    explicit port inside the range)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        low = min(int(sock.getsockname()[1]), 65535 - size)
    return low, low + size - 1


def rtc_ports_of(pid: int) -> tuple[int, int]:
    """The RTC port range a mediasoup-worker process was started with."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    ports = dict(a[2:].split("=", 1) for a in argv if a.startswith("--rtc"))
    return int(ports["rtcMinPort"]), int(ports["rtcMaxPort"])


async def until(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# -- the checks alone ----------------------------------------------------------------------


def test_defaults() -> None:
    assert DEFAULT_MAX_WORKERS_PER_SESSION == max(8, 4 * (os.cpu_count() or 1))
    assert DEFAULT_MAX_WORKERS == 2 * DEFAULT_MAX_WORKERS_PER_SESSION
    assert DEFAULT_MAX_SESSIONS == 1000
    assert DEFAULT_MAX_OBJECTS_PER_SESSION == 100_000


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("3", TypeError, "max_sessions must be an integer"),
        (True, TypeError, "max_sessions must be an integer"),
        (0, ValueError, "max_sessions must be at least 1, got 0"),
    ],
)
def test_check_limit_refuses(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_limit(value, "max_sessions")


def test_check_limit_takes_positive_integers() -> None:
    assert check_limit(1, "max_sessions") == 1


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("40000-40099", TypeError, r"rtc_port_range must be None or a \(min, max\) tuple"),
        ((40000,), TypeError, r"rtc_port_range must be None or a \(min, max\) tuple"),
        ((40000.0, 40099), TypeError, "rtc_port_range min must be an integer"),
        ((40000, None), TypeError, "rtc_port_range max must be an integer"),
        ((0, 40099), ValueError, "rtc_port_range min must be in 1..65535, got 0"),
        ((40000, 65536), ValueError, "rtc_port_range max must be in 1..65535, got 65536"),
        ((40099, 40000), ValueError, r"rtc_port_range min \(40099\) is greater than its max"),
    ],
)
def test_check_port_range_refuses(value: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        check_port_range(value)


def test_check_port_range_takes_none_or_a_pair() -> None:
    assert check_port_range(None) is None
    assert check_port_range([40000, 40000]) == (40000, 40000)
    assert check_port_range(RANGE) == RANGE


def test_worker_ports() -> None:
    # No range: the settings as they are (the library's defaults apply).
    assert worker_ports({"log_level": "warn"}, None) == {"log_level": "warn"}
    # Left out: the range's bounds; given within it: kept.
    assert worker_ports({}, RANGE) == {"rtc_min_port": 40000, "rtc_max_port": 40099}
    assert worker_ports({"rtc_min_port": 40050}, RANGE) == {
        "rtc_min_port": 40050,
        "rtc_max_port": 40099,
    }
    assert worker_ports({"rtc_min_port": 40000, "rtc_max_port": 40000}, RANGE) == {
        "rtc_min_port": 40000,
        "rtc_max_port": 40000,
    }
    with pytest.raises(ValueError, match=rf"rtc_min_port must be in 40000..40099 {OUTSIDE}"):
        worker_ports({"rtc_min_port": 39999}, RANGE)
    with pytest.raises(ValueError, match=r"rtc_max_port must be in 40000..40099 .*got 10000"):
        worker_ports({"rtc_max_port": 10000}, RANGE)
    # 0 is no "worker picks" for a worker's range: refused (the library would too).
    with pytest.raises(ValueError, match=r"rtc_min_port must be in 40000..40099 .*got 0$"):
        worker_ports({"rtc_min_port": 0}, RANGE)
    # A value of the wrong type is the library's to refuse (its own TypeError).
    assert worker_ports({"rtc_min_port": "x"}, RANGE)["rtc_min_port"] == "x"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"listen_info": LISTEN},
        {"listen_info": {**LISTEN, "port": 0}},
        {"listen_info": {**LISTEN, "port": None}},
        {"listen_info": {**LISTEN, "port": 40000}},
        {"listen_info": {**LISTEN, "port": 40099}},
        {"listen_info": {**LISTEN, "portRange": {"min": 40000, "max": 40099}}},
        # A 0 bound: the worker ignores the portRange (its port, or its own range).
        {"listen_info": {**LISTEN, "portRange": {"min": 0, "max": 0}}},
        {"listen_info": {**LISTEN, "portRange": {"min": 40010, "max": 0}}},
        {"listen_infos": [LISTEN, {**LISTEN, "protocol": "tcp", "port": 40001}]},
        {"listen_ip": "127.0.0.1", "port": 40002},
        {"listen_ips": ["127.0.0.1", {"ip": "127.0.0.1"}], "port": 0},
        {"rtcp_listen_info": {**LISTEN, "port": 40003}},
        # Wrong types are the library's to refuse (TypeError naming the field).
        {"listen_info": "udp://127.0.0.1:1"},
        {"listen_info": {**LISTEN, "port": "1"}},
        {"listen_info": {**LISTEN, "portRange": [1, 2]}},
        {"listen_infos": "nope", "port": True},
    ],
)
def test_check_listen_ports_takes(kwargs: dict[str, Any]) -> None:
    check_listen_ports(kwargs, RANGE)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen_info": {**LISTEN, "port": 39999}}, "listen_info.port must be 0 or in"),
        ({"listen_info": {**LISTEN, "port": 40100}}, "listen_info.port must be 0 or in"),
        ({"listen_ip": "127.0.0.1", "port": 5000}, "port must be 0 or in"),
        ({"rtcp_listen_info": {**LISTEN, "port": 22}}, "rtcp_listen_info.port must be 0 or in"),
        (
            {"listen_infos": [LISTEN, {**LISTEN, "port": 1}]},
            r"listen_infos\[1\].port must be 0 or in",
        ),
        ({"listen_ips": [{"ip": "127.0.0.1", "port": 1}]}, r"listen_ips\[0\].port must be 0 or in"),
        (
            {"listen_info": {**LISTEN, "portRange": {"min": 40000, "max": 40100}}},
            "listen_info.portRange.max must be 0 or in",
        ),
        (
            {"listen_infos": [{**LISTEN, "portRange": {"min": 1000, "max": 40099}}]},
            r"listen_infos\[0\].portRange.min must be 0 or in",
        ),
    ],
)
def test_check_listen_ports_refuses(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=rf"{message} 40000..40099 \(the server's rtc_port_range"):
        check_listen_ports(kwargs, RANGE)


def test_check_listen_ports_without_a_range_takes_anything() -> None:
    check_listen_ports({"listen_info": {**LISTEN, "port": 22}, "port": 1}, None)


async def test_serve_refuses_bad_limits() -> None:
    with pytest.raises(ValueError, match="max_workers_per_session must be at least 1"):
        await serve(token=TOKEN, max_workers_per_session=0)
    with pytest.raises(TypeError, match="max_sessions must be an integer"):
        await serve(token=TOKEN, max_sessions=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_objects_per_session must be at least 1"):
        await serve(token=TOKEN, max_objects_per_session=0)
    with pytest.raises(TypeError, match="max_send_backlog must be an integer"):
        await serve(token=TOKEN, max_send_backlog=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtc_port_range min .* is greater than its max"):
        await serve(token=TOKEN, rtc_port_range=(2, 1))
    # The operator's own worker settings must fit the operator's range.
    with pytest.raises(ValueError, match="rtc_max_port must be in 40000..40099"):
        await serve(token=TOKEN, target={"rtc_max_port": 50000}, rtc_port_range=RANGE)


# -- workers per session -------------------------------------------------------------------


async def test_max_workers_per_session() -> None:
    """Past max_workers_per_session a session's create_worker() is refused (RemoteError,
    code RATE_LIMITED, the limit named) and no process starts; a closed or dead worker
    frees its slot; the limit is per session; concurrent calls cannot pass it together;
    a failed creation takes no slot."""
    async with await serve(token=TOKEN, grace_period=0, max_workers_per_session=2) as srv:
        assert srv.max_workers_per_session == 2
        a = await connect(srv.url, token=TOKEN)
        assert isinstance(a, RemoteMediasoup)
        first = await a.create_worker(log_level="warn")
        second = await a.create_worker(log_level="warn")  # at the limit: taken
        started = len(list(srv._root.workers))
        with pytest.raises(RemoteError, match="too many workers: max_workers_per_session is 2"):
            await a.create_worker(log_level="warn")
        assert len(list(srv._root.workers)) == started
        assert a.objects == [first, second]
        # Another session has its own share.
        b = await connect(srv.url, token=TOKEN)
        assert isinstance(b, RemoteMediasoup)
        other = await b.create_worker(log_level="warn")
        # A fire-and-forget creation past the limit: its client hears of the refusal.
        errors: list[Any] = []
        a.connection.events.on("callerror", lambda *e: errors.append(e))
        a.connection.call_nowait(None, "create_worker", (), {"log_level": "warn"})
        await until(lambda: errors != [])
        ((target, method, error),) = errors
        assert (target, method) == (None, "create_worker")
        assert isinstance(error, RemoteError) and error.code == p.RATE_LIMITED
        assert str(error) == "too many workers: max_workers_per_session is 2"
        # A closed worker frees its slot.
        first.close()
        third = await a.create_worker(log_level="warn")
        # So does a dead one.
        os.kill(second.pid, signal.SIGKILL)
        await asyncio.wait_for(second.events.wait_for("died"), 5)
        fourth = await a.create_worker(log_level="warn")
        with pytest.raises(RemoteError, match="max_workers_per_session is 2") as info:
            await a.create_worker(log_level="warn")
        assert info.value.code == p.RATE_LIMITED
        third.close()
        fourth.close()
        # Calls of one frame run in turn: two get a slot, the third is refused.
        results = await asyncio.gather(
            *(a.create_worker(log_level="warn") for _ in range(3)), return_exceptions=True
        )
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and "max_workers_per_session is 2" in str(refused[0])
        for worker in results:
            if not isinstance(worker, Exception):
                worker.close()
        # A creation that fails (a bad setting) leaves no slot taken.
        with pytest.raises(ValueError, match="invalid log_level"):
            await a.create_worker(log_level="nope")
        assert [await a.create_worker(log_level="warn") for _ in range(2)]
        assert not other.closed
        await a.aclose()
        await b.aclose()


async def test_max_workers_counts_every_session_together() -> None:
    """max_workers bounds all sessions' workers together (starting ones included): the
    next is refused (RATE_LIMITED, the limit named) until one closes, whichever session's."""
    async with await serve(token=TOKEN, grace_period=0, max_workers=3) as srv:
        a = await connect(srv.url, token=TOKEN)
        b = await connect(srv.url, token=TOKEN)
        assert isinstance(a, RemoteMediasoup) and isinstance(b, RemoteMediasoup)
        # One frame of calls: the three slots go, the fourth call is refused.
        results = await asyncio.gather(
            *(a.create_worker(log_level="warn") for _ in range(2)),
            *(b.create_worker(log_level="warn") for _ in range(2)),
            return_exceptions=True,
        )
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1
        assert isinstance(refused[0], RemoteError) and refused[0].code == p.RATE_LIMITED
        assert str(refused[0]) == "too many workers on this server: max_workers is 3"
        live = [r for r in results if not isinstance(r, BaseException)]
        live[0].close()
        extra = await b.create_worker(log_level="warn")  # a slot freed by another's close
        with pytest.raises(RemoteError, match="max_workers is 3"):
            await a.create_worker(log_level="warn")
        assert not extra.closed
        await a.aclose()
        await b.aclose()


# -- sessions ------------------------------------------------------------------------------


async def test_max_connections_counts_sockets_before_their_hello() -> None:
    """Sockets that never say hello hold connections: past max_connections a new one is
    answered RATE_LIMITED (connect() raises it) and closed; a slot frees when one goes."""
    async with await serve(token=TOKEN, max_connections=2) as srv:
        async with aiohttp.ClientSession() as http:
            silent = [await http.ws_connect(srv.url) for _ in range(2)]
            with pytest.raises(RemoteError) as info:
                await connect(srv.url, token=TOKEN)
            assert info.value.code == p.RATE_LIMITED
            assert str(info.value) == "too many connections: max_connections is 2"
            await silent[0].close()
            await until(lambda: len(srv._connections) < 2)
            client = await connect(srv.url, token=TOKEN)
            assert isinstance(client, RemoteMediasoup)
            await client.aclose()
            await silent[1].close()
    async with await serve(token=TOKEN, max_sessions=7) as srv:
        assert srv.max_connections == 107  # by default, the sessions and 100 more


async def test_max_sessions() -> None:
    """Past max_sessions a new client's connect() is refused (RemoteError, code
    RATE_LIMITED, the limit named). A session waiting for its client within its grace
    period counts, and is resumed all the same; a session that ends (after its grace
    period, or at once on a polite aclose()) frees its place."""
    async with await serve(token=TOKEN, grace_period=0.5, max_sessions=2) as srv:
        a = await connect(srv.url, token=TOKEN)
        b = await connect(srv.url, token=TOKEN)  # at the limit: taken
        with pytest.raises(RemoteError, match="too many sessions: max_sessions is 2") as info:
            await connect(srv.url, token=TOKEN)
        assert info.value.code == p.RATE_LIMITED
        assert set(srv.sessions) == {a.session_id, b.session_id}
        # A dropped client's session waits for it: it counts, and it is resumed.
        await a.aclose(keep_session=True)
        with pytest.raises(RemoteError, match="max_sessions is 2"):
            await connect(srv.url, token=TOKEN)
        resumed = await connect(srv.url, token=TOKEN, session=a.session_id)
        assert resumed.session_id == a.session_id
        # Its grace period over, it is gone: a new client takes its place.
        await resumed.aclose(keep_session=True)
        await until(lambda: a.session_id not in srv.sessions)
        c = await connect(srv.url, token=TOKEN)
        with pytest.raises(RemoteError, match="max_sessions is 2"):
            await connect(srv.url, token=TOKEN)
        # A polite close ends its session at once.
        await b.aclose()
        await until(lambda: b.session_id not in srv.sessions, timeout=0.4)
        d = await connect(srv.url, token=TOKEN)
        assert set(srv.sessions) == {c.session_id, d.session_id}
        await c.aclose()
        await d.aclose()


# -- objects per session -------------------------------------------------------------------


async def test_max_objects_per_session_remote_mafalda() -> None:
    """On a Mafalda's shared pool, a session holding max_objects_per_session live objects
    gets a 'too many objects' error (RemoteError, code RATE_LIMITED, the limit named) for
    its next creation, before anything reaches a worker; other sessions are served on;
    closed objects free their slots; the calls of one frame cannot pass it together; a
    creation that fails takes no slot."""
    mafalda = await Mafalda.start(num_workers=1, worker_settings={"log_level": "warn"})
    try:
        async with await serve(
            token=TOKEN, target=mafalda, grace_period=0, max_objects_per_session=3
        ) as srv:
            assert srv.max_objects_per_session == 3
            a = await connect(srv.url, token=TOKEN)
            assert isinstance(a, RemoteMafalda)
            router = await a.create_router(media_codecs=MEDIA_CODECS)
            transport = await router.create_plain_transport(listen_ip="127.0.0.1")
            await transport.produce(kind="audio", rtp_parameters=AUDIO)  # at the limit
            served = srv.sessions[a.session_id]
            assert len(served.objects) == 3
            (worker,) = mafalda.workers
            routers = (await worker.dump())["routerIds"]
            transports = dict(served_by(srv, router).transports_for_testing)
            limit = "too many objects: max_objects_per_session is 3"
            with pytest.raises(RemoteError, match=limit) as info:
                await router.create_plain_transport(listen_ip="127.0.0.1")
            assert info.value.code == p.RATE_LIMITED
            with pytest.raises(RemoteError, match=limit):
                await a.create_router(media_codecs=MEDIA_CODECS)
            with pytest.raises(RemoteError, match=limit):
                await transport.produce(kind="audio", rtp_parameters=AUDIO)
            # Nothing reached the worker.
            assert (await worker.dump())["routerIds"] == routers
            assert served_by(srv, router).transports_for_testing == transports
            assert len(a.objects) == 3 and len(served.objects) == 3
            # A fire-and-forget creation past it: its client hears of the refusal.
            errors: list[Any] = []
            a.connection.events.on("callerror", lambda *e: errors.append(e))
            a.connection.call_nowait(router, "create_plain_transport", (), {"listen_ip": "::1"})
            await until(lambda: errors != [])
            ((target, method, error),) = errors
            assert (target, method) == (router, "create_plain_transport")
            assert isinstance(error, RemoteError) and error.code == p.RATE_LIMITED
            assert str(error) == limit
            # Another session has its own objects, on the same pool.
            b = await connect(srv.url, token=TOKEN)
            assert isinstance(b, RemoteMafalda)
            other = await b.create_router(media_codecs=MEDIA_CODECS)
            await other.create_plain_transport(listen_ip="127.0.0.1")
            # Closed objects free their slots (the transport's producer with it).
            transport.close()
            await until(lambda: len(served.objects) == 1)
            # Calls of one frame run in turn: two get a slot, the third is refused.
            results = await asyncio.gather(
                *(router.create_plain_transport(listen_ip="127.0.0.1") for _ in range(3)),
                return_exceptions=True,
            )
            refused = [r for r in results if isinstance(r, Exception)]
            assert len(refused) == 1 and str(refused[0]) == limit
            assert len(served.objects) == 3 and served.creating == 0
            # A creation that fails (its own error) leaves no slot taken.
            results[0 if refused[0] is not results[0] else 1].close()
            await until(lambda: len(served.objects) == 2)
            with pytest.raises(TypeError):
                await router.create_plain_transport(listen_ip="127.0.0.1", bogus=1)
            assert served.creating == 0
            await router.create_plain_transport(listen_ip="127.0.0.1")
            await a.aclose()
            await b.aclose()
    finally:
        await mafalda.aclose()


async def test_max_objects_per_session_remote_mediasoup() -> None:
    """A Remote Mediasoup session's workers count among its objects: past the limit no
    router is made, and no worker starts."""
    async with await serve(token=TOKEN, grace_period=0, max_objects_per_session=2) as srv:
        client = await connect(srv.url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        worker = await client.create_worker(log_level="warn")
        await worker.create_router(media_codecs=MEDIA_CODECS)
        routers = (await worker.dump())["routerIds"]
        with pytest.raises(RemoteError, match="max_objects_per_session is 2"):
            await worker.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(RemoteError, match="max_objects_per_session is 2"):
            await client.create_worker(log_level="warn")
        assert (await worker.dump())["routerIds"] == routers
        assert len(list(srv._root.workers)) == 1
        await client.aclose()


async def test_aliases_count_towards_max_objects_per_session() -> None:
    """A router's aliases are held for the session as its objects are: past
    max_objects_per_session an alias is refused (told as a 'callerror', the server's
    router without it), as is a creation; aliases gone with their producer count no more.
    They were not capped: a client could fill its routers' tables without bound."""
    async with await serve(token=TOKEN, grace_period=0, max_objects_per_session=5) as srv:
        client = await connect(srv.url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        errors: list[tuple[Any, ...]] = []
        client.connection.events.on("callerror", lambda *a: errors.append(a))
        worker = await client.create_worker(log_level="warn")
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_direct_transport()
        producer = await transport.produce(kind="audio", rtp_parameters=AUDIO)
        served = next(iter(srv.sessions.values())).objects[router.handle]
        router.alias_producer("a1", producer)
        router.alias_producer("a2", producer)
        await router.dump()  # (a round trip: both aliases asked)
        assert [(e[1], str(e[2])) for e in errors] == [
            ("alias_producer", "too many objects: max_objects_per_session is 5")
        ]
        assert served.has_producer("a1") and not served.has_producer("a2")
        with pytest.raises(RemoteError, match="max_objects_per_session is 5"):
            await router.create_direct_transport()
        producer.close()  # its alias goes with it
        again = await transport.produce(kind="audio", rtp_parameters=AUDIO)
        router.alias_producer("a3", again)
        await router.dump()
        assert len(errors) == 1 and served.has_producer("a3")
        await client.aclose()


# -- the RTC port range --------------------------------------------------------------------


async def test_rtc_port_range_remote_mediasoup() -> None:
    """With rtc_port_range, a client's workers get the operator's range (or one of their
    own within it), and its transports and WebRtcServers listen within it: a port or a
    portRange outside is refused with a ValueError naming it, and the worker hears
    nothing of it; port 0 (or none) is the worker's pick, within the range."""
    low, high = port_range()
    allowed = rf"{low}..{high} \(the server's rtc_port_range\)"
    async with await serve(token=TOKEN, grace_period=0, rtc_port_range=(low, high)) as srv:
        client = await connect(srv.url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        # Workers: the range when the client names none, the client's within it.
        default = await client.create_worker(log_level="warn")
        assert rtc_ports_of(default.pid) == (low, high)
        default.close()
        # Its picks leave the first port alone: it is given explicitly below.
        worker = await client.create_worker(log_level="warn", rtc_min_port=low + 1)
        assert rtc_ports_of(worker.pid) == (low + 1, high)
        # (Just past the range: a fixed port such as 59999 fell in it for ~4% of ranges.)
        for kwargs in ({"rtc_min_port": low - 1}, {"rtc_min_port": low, "rtc_max_port": high + 1}):
            with pytest.raises(ValueError, match=rf"rtc_m.._port must be in {allowed}"):
                await client.create_worker(**kwargs)
        assert [w for w in client.workers if not w.closed] == [worker]
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        channel = served_by(srv, worker)._channel
        sent = channel._next_id
        refused: list[tuple[Any, dict[str, Any], str]] = [
            (
                router.create_plain_transport,
                {"listen_info": {**LISTEN, "port": high + 1}},
                "listen_info.port",
            ),
            (router.create_plain_transport, {"listen_ip": "127.0.0.1", "port": low - 1}, "port"),
            (
                router.create_plain_transport,
                {
                    "listen_info": LISTEN,
                    "rtcp_mux": False,
                    "rtcp_listen_info": {**LISTEN, "port": 1},
                },
                "rtcp_listen_info.port",
            ),
            (
                router.create_webrtc_transport,
                {"listen_infos": [LISTEN, {**LISTEN, "portRange": {"min": low, "max": high + 1}}]},
                r"listen_infos\[1\].portRange.max",
            ),
            (router.create_webrtc_transport, {"listen_ips": ["127.0.0.1"], "port": 22}, "port"),
            (
                router.create_pipe_transport,
                {"listen_info": {**LISTEN, "port": 65535}},
                "listen_info.port",
            ),
            (
                worker.create_webrtc_server,
                {"listen_infos": [{**LISTEN, "port": 1024}]},
                r"listen_infos\[0\].port",
            ),
        ]
        for method, kwargs, name in refused:
            with pytest.raises(ValueError, match=rf"^{name} must be 0 or in {allowed}"):
                await method(**kwargs)
        other = await worker.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_plain_transport(listen_info=LISTEN)
        producer = await transport.produce(kind="audio", rtp_parameters=AUDIO)
        with pytest.raises(ValueError, match=rf"^listen_info.port must be 0 or in {allowed}"):
            await router.pipe_to_router(
                router=other,
                producer_id=producer.id,
                keep_id=False,
                listen_info={**LISTEN, "port": high + 1},
            )
        assert channel._next_id == sent + 3  # a router, a transport, a producer: no more
        assert (await router.dump())["transportIds"] == [transport.id]
        assert (await worker.dump())["webRtcServerIds"] == []
        # Within the range, or the worker's pick: taken, listening within it.
        assert low + 1 <= transport.tuple["localPort"] <= high
        pinned = await router.create_plain_transport(listen_info={**LISTEN, "port": low})
        assert pinned.tuple["localPort"] == low
        ranged = await router.create_webrtc_transport(
            listen_infos=[{**LISTEN, "portRange": {"min": low + 1, "max": high}}]
        )
        assert low + 1 <= ranged.ice_candidates[0]["port"] <= high
        picked = await router.create_pipe_transport(listen_info={**LISTEN, "port": 0})
        assert low + 1 <= picked.tuple["localPort"] <= high
        server = await worker.create_webrtc_server(
            listen_infos=[{**LISTEN, "portRange": {"min": low, "max": high}}]
        )
        assert low <= (await server.dump())["udpSockets"][0]["port"] <= high
        piped = await router.pipe_to_router(router=other, producer_id=producer.id, keep_id=False)
        assert piped["pipeProducer"] is not None
        await client.aclose()


async def test_rtc_port_range_remote_mafalda() -> None:
    """Serving a Mafalda (its pool started with the same range), the listen ports of a
    client's transports are checked the same way on its MafaldaRouters."""
    low, high = port_range()
    allowed = rf"{low}..{high} \(the server's rtc_port_range\)"
    mafalda = await Mafalda.start(
        num_workers=1,
        # Its picks leave the first port alone: it is given explicitly below.
        worker_settings={"log_level": "warn", "rtc_min_port": low + 1, "rtc_max_port": high},
    )
    try:
        async with await serve(
            token=TOKEN, target=mafalda, grace_period=0, rtc_port_range=(low, high)
        ) as srv:
            assert srv.rtc_port_range == (low, high)
            client = await connect(srv.url, token=TOKEN)
            assert isinstance(client, RemoteMafalda)
            router = await client.create_router(media_codecs=MEDIA_CODECS)
            other = await client.create_router(media_codecs=MEDIA_CODECS)
            transport = await router.create_plain_transport(listen_ip="127.0.0.1")
            assert low + 1 <= transport.tuple["localPort"] <= high
            producer = await transport.produce(kind="audio", rtp_parameters=AUDIO)
            refused: list[tuple[Any, dict[str, Any], str]] = [
                (
                    router.create_plain_transport,
                    {"listen_ip": "127.0.0.1", "port": high + 1},
                    "port",
                ),
                (
                    router.create_webrtc_transport,
                    {"listen_infos": [{**LISTEN, "portRange": {"min": 1, "max": high}}]},
                    r"listen_infos\[0\].portRange.min",
                ),
                (
                    router.create_pipe_transport,
                    {"listen_info": {**LISTEN, "port": 1}},
                    "listen_info.port",
                ),
                (
                    router.pipe_to_router,
                    {
                        "router": other,
                        "producer_id": producer.id,
                        "listen_info": {**LISTEN, "port": 1},
                    },
                    "listen_info.port",
                ),
            ]
            for method, kwargs, name in refused:
                with pytest.raises(ValueError, match=rf"^{name} must be 0 or in {allowed}"):
                    await method(**kwargs)
            assert (await router.dump())["transportIds"] == [transport.id]
            pinned = await router.create_pipe_transport(listen_info={**LISTEN, "port": low})
            assert pinned.tuple["localPort"] == low
            ranged = await router.create_webrtc_transport(
                listen_infos=[{**LISTEN, "portRange": {"min": low + 1, "max": high}}]
            )
            assert low + 1 <= ranged.ice_candidates[0]["port"] <= high
            piped = await router.pipe_to_router(router=other, producer_id=producer.id)
            assert piped["pipeProducer"] is not None
            await client.aclose()
    finally:
        await mafalda.aclose()


# -- the command ---------------------------------------------------------------------------


def test_serve_limit_flags() -> None:
    parse = cli.build_parser().parse_args
    assert cli.serve_limits(parse(["serve"])) == {}  # serve()'s defaults
    args = parse(
        [
            "serve",
            "--max-workers-per-session",
            "3",
            "--max-sessions",
            "5",
            "--max-workers",
            "7",
            "--max-connections",
            "9",
            "--max-objects-per-session",
            "11",
            "--max-send-backlog",
            "1048576",
            "--rtc-port-range",
            "40000-40099",
        ]
    )
    assert cli.serve_limits(args) == {
        "max_connections": 9,
        "max_objects_per_session": 11,
        "max_send_backlog": 1 << 20,
        "max_workers": 7,
        "max_workers_per_session": 3,
        "max_sessions": 5,
        "rtc_port_range": (40000, 40099),
    }
    assert cli.serve_limits(parse(["serve", "--rtc-port-range", "5-5"])) == {
        "rtc_port_range": (5, 5)
    }


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-sessions", "0"], "'0' is not a positive number"),
        (["--max-workers-per-session", "x"], "'x' is not a number"),
        (["--rtc-port-range", "40000"], r"'40000' is not a port range \(MIN-MAX\)"),
        (["--rtc-port-range", "a-b"], r"'a-b' is not a port range \(MIN-MAX\)"),
        (["--rtc-port-range", "1-2-3"], r"'1-2-3' is not a port range \(MIN-MAX\)"),
        (["--rtc-port-range", "2-1"], r"rtc_port_range min \(2\) is greater than its max"),
        (["--rtc-port-range", "0-10"], "rtc_port_range min must be in 1..65535, got 0"),
    ],
)
def test_serve_limit_flags_refused(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", *flags])
    assert re.search(message, capsys.readouterr().err)


async def test_serve_command_limits() -> None:
    """`mafalda serve` with the limit flags: its server applies them (and with --mafalda
    the pool's workers take the port range)."""
    low, high = port_range()
    proc, url = await spawn_serve(
        serve_args(
            "--max-sessions",
            "1",
            "--max-workers-per-session",
            "1",
            "--max-objects-per-session",
            "2",
            "--max-send-backlog",
            "1048576",
            "--rtc-port-range",
            f"{low}-{high}",
            token=TOKEN,
        )
    )
    try:
        client = await connect(url, token=TOKEN)
        assert isinstance(client, RemoteMediasoup)
        worker = await client.create_worker(log_level="warn")
        assert rtc_ports_of(worker.pid) == (low, high)
        with pytest.raises(RemoteError, match="max_workers_per_session is 1"):
            await client.create_worker(log_level="warn")
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        with pytest.raises(RemoteError, match="max_objects_per_session is 2"):
            await router.create_plain_transport(listen_ip="127.0.0.1")
        with pytest.raises(RemoteError, match="max_sessions is 1"):
            await connect(url, token=TOKEN)
        await client.aclose()
    finally:
        proc.terminate()
        assert await reap(proc) == 0
    proc, url = await spawn_serve(
        serve_args(
            "--mafalda", "--num-workers", "1", "--rtc-port-range", f"{low}-{high}", token=TOKEN
        )
    )
    try:
        remote = await connect(url, token=TOKEN)
        assert isinstance(remote, RemoteMafalda)
        router = await remote.create_router(media_codecs=MEDIA_CODECS)
        transport = await router.create_plain_transport(listen_ip="127.0.0.1")
        assert low <= transport.tuple["localPort"] <= high
        with pytest.raises(ValueError, match="listen_info.port must be 0 or in"):
            await router.create_plain_transport(listen_info={**LISTEN, "port": high + 1})
        await remote.aclose()
    finally:
        proc.terminate()
        assert await reap(proc) == 0
