"""Errors of Remote Mediasoup / Remote Mafalda (their root is mediasoup's MediasoupError)."""

from __future__ import annotations

from typing import Any

from mafalda.mediasoup.errors import (
    ChannelClosedError,
    ChannelTimeoutError,
    InvalidStateError,
    MediasoupError,
    UnsupportedError,
    WorkerError,
    WorkerTypeError,
)
from mafalda.mediasoup.rtp_parameters import InvalidValueError

__all__ = ["RemoteConnectionError", "RemoteError", "ServerDrainingError", "error_from_wire"]


class RemoteError(MediasoupError):
    """The server refused a request (protocol, authentication, ownership, rate limit), or
    the called method raised an exception with no local equivalent. ``code`` is the
    JSON-RPC error code, ``type`` the name of the remote exception class (if any)."""

    def __init__(self, message: str, *, code: int = 0, type: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.type = type


class RemoteConnectionError(ChannelClosedError):
    """The connection to the server is closed (or was lost): pending and later calls fail
    with it, and every proxy closes."""


class ServerDrainingError(InvalidStateError):
    """The media server is draining: it takes no new workers, routers, transports or
    observers (a cluster client tries the next server)."""


class _RemoteWorkerError(WorkerError):
    def __init__(self, message: str) -> None:
        super().__init__(message)


class _RemoteWorkerTypeError(WorkerTypeError):
    def __init__(self, message: str) -> None:
        super().__init__(message)


_BY_NAME: dict[str, type[Exception]] = {
    "MediasoupError": MediasoupError,
    "InvalidValueError": InvalidValueError,
    "InvalidStateError": InvalidStateError,
    "ServerDrainingError": ServerDrainingError,
    "ChannelClosedError": ChannelClosedError,
    "ChannelTimeoutError": ChannelTimeoutError,
    "UnsupportedError": UnsupportedError,
    "WorkerError": _RemoteWorkerError,
    "WorkerTypeError": _RemoteWorkerTypeError,
    "WorkerDiedError": InvalidStateError,
    "TypeError": TypeError,
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "OSError": OSError,
    "NotImplementedError": NotImplementedError,
    "TimeoutError": TimeoutError,
}


def error_from_wire(code: int, message: str, data: Any) -> Exception:
    """The local exception for a JSON-RPC error (the same class as the remote one when
    there is one, else RemoteError)."""
    type_name = data.get("type", "") if isinstance(data, dict) else ""
    if not isinstance(type_name, str):
        type_name = ""
    bases = data.get("bases", []) if isinstance(data, dict) else []
    names = (
        [type_name, *(b for b in bases if isinstance(b, str))]
        if isinstance(bases, list)
        else [type_name]
    )
    for name in names:
        cls = _BY_NAME.get(name)
        if cls is not None:
            return cls(message)
    return RemoteError(message, code=code, type=type_name)
