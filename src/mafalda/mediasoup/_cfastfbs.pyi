"""Compiled FlatBuffers table decoders and encoders for ``_fastfbs`` (``_cfastfbs.c``)."""

from collections.abc import Callable
from typing import Any

class Decoder:
    """A table decoder, called as ``(buf, pos)`` or ``(b, w, s, h, pos)``."""

    def __init__(
        self,
        cls: type,
        fields: list[tuple[int, int, str, bool, bool, int, Any, Any]],
        attrs: list[tuple[str, int, Any]],
    ) -> None: ...
    def __call__(self, *args: Any) -> Any: ...
    @property
    def cls(self) -> type | None: ...

def set_views(fn: Callable[[Any], tuple[Any, Any, Any, Any]]) -> None: ...

class Encoder:
    """A table encoder: called with an object-API table, gives ``(bytes, root)``."""

    def __init__(self, cls_name: str, fields: list[tuple[int, int, str, str, Any]]) -> None: ...
    def __call__(self, table: Any) -> tuple[bytes, int]: ...

class Unsupported(ValueError):
    """A value an Encoder does not pack."""

def set_encoders(registry: dict[type, Encoder], prepacked_type: type) -> None: ...
