"""Compiled FlatBuffers table decoders for ``_fastfbs`` (``_cfastfbs.c``)."""

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
