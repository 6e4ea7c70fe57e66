"""What the soak tests compare: the size of every map and list an object holds, and
how many listeners its emitters have."""

from __future__ import annotations

from typing import Any


def containers(obj: Any, name: str, skip: tuple[str, ...] = ()) -> dict[str, int]:
    """The size of every dict, set and list ``obj`` holds (but ``skip``), as
    ``name.attribute``: a map added later is watched too."""
    return {
        f"{name}.{attr}": len(value)
        for attr, value in vars(obj).items()
        if isinstance(value, dict | set | list) and attr not in skip
    }


def listeners(obj: Any) -> int:
    """The listeners of ``obj``'s events and observer emitters together."""
    total = 0
    for name in ("events", "observer"):
        emitter = getattr(obj, name, None)
        if emitter is not None:
            total += sum(emitter.listener_count(event) for event in emitter.event_names())
    return total
