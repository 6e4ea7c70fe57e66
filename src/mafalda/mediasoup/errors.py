"""Errors raised by mafalda.mediasoup.

The tree::

    MediasoupError                  root of every error the library raises itself
    ├── UnsupportedError            something mediasoup does not support (a codec...)
    ├── InvalidStateError           a call on a closed object, or in the wrong state
    │   └── ChannelClosedError      the worker's channel closed (worker closed or died)
    │                               while a request was pending or being sent
    ├── ChannelTimeoutError         the worker did not answer a request in time (frozen)
    └── WorkerError                 the worker refused a request; ``reason`` is its text
        └── WorkerTypeError         ... because an argument was wrong (also a TypeError)

Invalid arguments detected before anything reaches the worker raise TypeError for a
value of the wrong type and InvalidValueError (a TypeError and a ValueError) for one of
the right type that is wrong, naming the field: mediasoup throws TypeError for both, so
code written after Node's catches either, and Python code catches a ValueError.
"""

from __future__ import annotations


class MediasoupError(Exception):
    """Root of the errors raised by mafalda.mediasoup."""


class InvalidValueError(TypeError, ValueError):
    """A value of the expected type whose content is invalid.

    mediasoup throws TypeError for these; being a ValueError as well lets Python
    code catch them the idiomatic way while code written after Node's keeps working.
    """


class UnsupportedError(MediasoupError):
    """Something is not supported (for instance a codec)."""


class InvalidStateError(MediasoupError):
    """A method was called on a closed object or in an invalid state."""


class ChannelClosedError(InvalidStateError):
    """The channel to the worker is closed: the request was not or could not be answered."""


class ChannelTimeoutError(MediasoupError):
    """The worker did not answer a request in time (15 s, plus 0.1 s per request pending
    when it was sent, as mediasoup's 'Channel request timeout'): it is frozen or
    overloaded. Its late answer, if any, is dropped."""


class WorkerError(MediasoupError):
    """The worker answered a request with an error."""

    def __init__(self, reason: str, *, method: str = "") -> None:
        super().__init__(f"{reason} [method:{method}]" if method else reason)
        self.reason = reason
        self.method = method


class WorkerTypeError(WorkerError, TypeError):
    """The worker refused a request because of a wrong argument."""
