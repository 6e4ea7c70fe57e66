"""Ids of the objects the library creates: random (version 4) UUIDs, as mediasoup's.

``str(uuid.uuid4())`` spends most of its 4-5 µs building a UUID object that is thrown
away and a system call for 16 random bytes; a creation makes one or two ids. These are
the same strings, cut from the hex of 2 KiB of ``os.urandom`` read at a time (a forked
child starts its own, so no two processes share ids).
"""

from __future__ import annotations

import os

_CHUNK = 2048  # random bytes read at once: 128 ids
# The variant nibble (10xx, RFC 4122) from a random one.
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
_hex = ""
_pos = 0


def new_id() -> str:
    """A random UUID string (RFC 4122 version 4, from ``os.urandom`` as ``uuid4``)."""
    global _hex, _pos
    pos = _pos
    if pos >= len(_hex):
        _hex = os.urandom(_CHUNK).hex()
        pos = 0
    _pos = pos + 32
    x = _hex[pos : pos + 32]
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{_VARIANT[x[16]]}{x[17:20]}-{x[20:]}"


def _forget() -> None:
    global _hex, _pos
    _hex = ""
    _pos = 0


os.register_at_fork(after_in_child=_forget)
