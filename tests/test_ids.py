"""Object ids: version 4 UUID strings, as mediasoup makes them."""

from __future__ import annotations

import os
import uuid

from mafalda.mediasoup._ids import new_id


def test_ids_are_random_version_4_uuids() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value  # canonical form: lowercase, dashed
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every other bit varies: over 2000 ids each of the 122 random bits took both values.
    ints = [uuid.UUID(v).int for v in ids]
    fixed = (0xF000 << 64) | (0xC000 << 48)
    seen_one = 0
    seen_zero = 0
    for n in ints:
        seen_one |= n
        seen_zero |= ~n
    assert seen_one & seen_zero & ((1 << 128) - 1) == ((1 << 128) - 1) & ~fixed


def test_a_forked_child_makes_other_ids() -> None:
    new_id()  # random bytes are read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, " ".join(new_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read().split()
    os.waitpid(pid, 0)
    parent = [new_id() for _ in range(3)]
    assert len(child) == 3
    assert not set(child) & set(parent)
