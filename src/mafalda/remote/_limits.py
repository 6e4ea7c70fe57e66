"""The operator's limits of a Remote Mediasoup / Remote Mafalda server, as plain checks
(no I/O): the server calls them before anything reaches a worker.

Errors follow the library's own for bad arguments (``mafalda.mediasoup.transport``'s
``validate_listen_info``, ``create_worker``'s settings): an InvalidValueError (a
ValueError, and a TypeError as mediasoup's) naming the argument, the allowed range and
the value. A value of the wrong type is left alone here: the library refuses it with its
own TypeError before the worker hears of it. (The operator's own limits, checked when
the server starts, are plain ValueErrors.)
"""

from __future__ import annotations

import os
from typing import Any

from mafalda.mediasoup.errors import InvalidValueError

__all__ = [
    "DEFAULT_MAX_OBJECTS_PER_SESSION",
    "DEFAULT_MAX_SEND_BACKLOG",
    "DEFAULT_MAX_SESSIONS",
    "DEFAULT_MAX_WORKERS",
    "DEFAULT_MAX_WORKERS_PER_SESSION",
    "LISTENING_METHODS",
    "check_limit",
    "check_listen_ports",
    "check_port_range",
    "worker_ports",
]

#: A mediasoup worker is a process that uses up to one core: past a few per core a session
#: gets no more media capacity, it only takes processes and memory from the machine (and
#: from the other sessions). Four per core leave room for an app that gives rooms their
#: own workers and for workers being replaced; small machines still get eight.
DEFAULT_MAX_WORKERS_PER_SESSION = max(8, 4 * (os.cpu_count() or 1))
#: Every session's workers together: twice one session's share, so that one client
#: taking its whole share leaves room for others; past it a cluster client goes elsewhere.
DEFAULT_MAX_WORKERS = 2 * DEFAULT_MAX_WORKERS_PER_SESSION
#: Generous: a session costs little until it creates objects, and the workers of each
#: are bounded by ``max_workers_per_session``.
DEFAULT_MAX_SESSIONS = 1000
#: Live objects of one session (workers, routers, transports, producers, consumers, data
#: ones, observers, WebRtcServers), on a Remote Mafalda's shared pool too: each holds the
#: server's memory (its Python object, its handle and last state sent) and a worker's.
#: Generous: a worker carries some hundreds of consumers, so an app's rooms on a large
#: machine stay far below it (as the 100,000 closed objects a session remembers), while
#: one client can no longer make the server hold objects without bound.
DEFAULT_MAX_OBJECTS_PER_SESSION = 100_000
#: Bytes of answers and events waiting for one client that does not read them, before
#: its connection is dropped (its session kept for a resume). Generous: a client that
#: reads at all takes them far sooner, while 1000 sessions at it stay within a machine.
DEFAULT_MAX_SEND_BACKLOG = 64 << 20

#: Calls whose keyword arguments may name listening ports (a transport's, a
#: WebRtcServer's). They take keyword arguments only, so their kwargs are all there is.
LISTENING_METHODS = frozenset(
    {
        "create_webrtc_transport",
        "create_plain_transport",
        "create_pipe_transport",
        "pipe_to_router",
        "create_webrtc_server",
        "create_webrtc_servers",
    }
)
#: Where those calls take ListenInfo-like dicts (one, or a list of them).
_LISTEN_ARGUMENTS = ("listen_info", "rtcp_listen_info", "listen_infos", "listen_ip", "listen_ips")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_limit(value: Any, name: str) -> int:
    """``value`` as a limit (a positive integer), or TypeError/ValueError naming it."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an integer")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def check_port_range(value: Any) -> tuple[int, int] | None:
    """The operator's ``rtc_port_range``: None (no restriction) or (min, max) in 1..65535."""
    if value is None:
        return None
    if not isinstance(value, tuple | list) or len(value) != 2:
        raise TypeError("rtc_port_range must be None or a (min, max) tuple")
    low, high = value
    for name, port in (("min", low), ("max", high)):
        if not _is_int(port):
            raise TypeError(f"rtc_port_range {name} must be an integer")
        if not 1 <= port <= 65535:
            raise ValueError(f"rtc_port_range {name} must be in 1..65535, got {port}")
    if low > high:
        raise ValueError(f"rtc_port_range min ({low}) is greater than its max ({high})")
    return int(low), int(high)


def _outside(value: Any, name: str, port_range: tuple[int, int], zero: bool) -> None:
    low, high = port_range
    if not _is_int(value) or (zero and value == 0) or low <= value <= high:
        return
    allowed = f"0 or in {low}..{high}" if zero else f"in {low}..{high}"
    raise InvalidValueError(f"{name} must be {allowed} (the server's rtc_port_range), got {value}")


def worker_ports(settings: dict[str, Any], port_range: tuple[int, int] | None) -> dict[str, Any]:
    """``create_worker()`` settings whose RTC ports lie in ``port_range``: the ones given
    are checked, the ones left out are the range's (the library's defaults, 10000..59999,
    would not be)."""
    if port_range is None:
        return settings
    checked = dict(settings)
    for name, default in zip(("rtc_min_port", "rtc_max_port"), port_range, strict=True):
        if name in checked:
            _outside(checked[name], name, port_range, zero=False)
        else:
            checked[name] = default
    return checked


def check_listen_ports(kwargs: dict[str, Any], port_range: tuple[int, int] | None) -> None:
    """Refuse a port or a portRange bound outside ``port_range`` in the keyword arguments
    of a ``LISTENING_METHODS`` call. 0 (or none given) lets the worker pick from its own
    range, which the server's operator set."""
    if port_range is None:
        return
    _outside(kwargs.get("port"), "port", port_range, zero=True)
    for name in _LISTEN_ARGUMENTS:
        value = kwargs.get(name)
        infos = (
            [(f"{name}[{i}]", v) for i, v in enumerate(value)]
            if isinstance(value, list)
            else [(name, value)]
        )
        for where, info in infos:
            if not isinstance(info, dict):
                continue
            _outside(info.get("port"), f"{where}.port", port_range, zero=True)
            bounds = info.get("portRange")
            if isinstance(bounds, dict):
                for bound in ("min", "max"):
                    # The worker ignores a portRange with a 0 bound (it takes the port,
                    # or its own range instead): 0 is allowed here too.
                    _outside(bounds.get(bound), f"{where}.portRange.{bound}", port_range, True)
