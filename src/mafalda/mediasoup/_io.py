"""asyncio transport tuning shared by the worker channel and the remote connections."""

from __future__ import annotations

from typing import Any

#: Bytes asked for per read. asyncio's pipe and socket transports ask for 256 KiB: a
#: fresh bytes object of that size is above glibc's mmap threshold, so every read paid
#: an mmap and a munmap (about 15 µs here, a quarter of a small request's round trip);
#: 64 KiB comes from the heap. Bigger messages just take several reads.
READ_SIZE = 65536


def limit_read_size(transport: Any) -> None:
    """Make ``transport`` read at most READ_SIZE bytes at a time, where it lets us.

    ``max_size`` is an implementation attribute of asyncio's selector and pipe
    transports; other loops (uvloop) read into their own buffers and lack it.
    """
    if transport is not None and isinstance(getattr(type(transport), "max_size", None), int):
        transport.max_size = READ_SIZE
