"""Ids of the objects the library creates: random (version 4) UUIDs, as mediasoup's.

``str(uuid.uuid4())`` spends most of its 4-5 µs building a UUID object that is thrown
away; a creation makes one or two ids, so this is the same string made directly.
"""

from __future__ import annotations

import os


def new_id() -> str:
    """A random UUID string (RFC 4122 version 4, from ``os.urandom`` as ``uuid4``)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    x = raw.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"
