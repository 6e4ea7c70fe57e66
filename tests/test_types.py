"""mafalda.mediasoup.types: every public type in one namespace, as mediasoup's ``types``."""

from __future__ import annotations

import importlib
import pkgutil
import re
import typing
from pathlib import Path

from mafalda import mediasoup
from mafalda.mediasoup import types


def _defined_types() -> dict[str, object]:
    """The wire dicts (TypedDicts) and string sets (``Name = Literal[...]``) each public
    module of the package defines."""
    found: dict[str, object] = {}
    for info in pkgutil.iter_modules(mediasoup.__path__):
        if info.name.startswith("_") or info.name == "types":
            continue
        module = importlib.import_module(f"mafalda.mediasoup.{info.name}")
        source = Path(module.__file__ or "").read_text()
        for name, value in vars(module).items():
            if name.startswith("_"):
                continue
            typed_dict = typing.is_typeddict(value) and value.__module__ == module.__name__
            literal = typing.get_origin(value) is typing.Literal and re.search(
                rf"^{name} = Literal", source, re.M
            )
            if typed_dict or literal:
                found[name] = value
    return found


def test_every_public_type_is_in_types() -> None:
    defined = _defined_types()
    assert {"WebRtcTransportDump", "ProducerScore", "DtlsState", "MediaKind"} <= set(defined)
    missing = sorted(set(defined) - set(types.__all__))
    assert not missing, f"add to mafalda/mediasoup/types.py: {missing}"
    for name, value in defined.items():
        assert getattr(types, name) is value, name


def test_types_has_the_classes_and_errors_and_is_the_package_attribute() -> None:
    assert mediasoup.types is types and "types" in mediasoup.__all__
    assert types.Worker is mediasoup.Worker and types.Consumer is mediasoup.Consumer
    assert types.InvalidStateError is mediasoup.InvalidStateError
    assert types.AppData == dict[str, typing.Any]
    for name in types.__all__:
        assert hasattr(types, name), name
