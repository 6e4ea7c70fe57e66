"""The fast codec against the stock flatbuffers runtime, for every table of the schemas."""

from __future__ import annotations

import functools
import importlib
import pkgutil
import random
import struct
from typing import Any

import flatbuffers
import pytest
from flatbuffers.builder import IsNestedError, IsNotNestedError, OffsetArithmeticError

from mafalda.mediasoup import _fastfbs, _fbs
from mafalda.mediasoup._fastfbs import FastBuilder, decoder


def _all_t_classes() -> list[type]:
    classes = []
    for info in pkgutil.walk_packages(_fbs.__path__, _fbs.__name__ + "."):
        module = importlib.import_module(info.name)
        name = info.name.rsplit(".", 1)[1] + "T"
        cls = getattr(module, name, None)
        if cls is not None and hasattr(cls, "_UnPack"):
            classes.append(cls)
    return sorted(classes, key=lambda c: c.__module__)


T_CLASSES = _all_t_classes()

_RANGES = {
    "Uint8Flags": (0, 2**8 - 1),
    "Uint16Flags": (0, 2**16 - 1),
    "Uint32Flags": (0, 2**32 - 1),
    "Uint64Flags": (0, 2**64 - 1),
    "Int8Flags": (-(2**7), 2**7 - 1),
    "Int16Flags": (-(2**15), 2**15 - 1),
    "Int32Flags": (-(2**31), 2**31 - 1),
    "Int64Flags": (-(2**63), 2**63 - 1),
}


def _scalar(rng: random.Random, flags: str) -> Any:
    if flags == "BoolFlags":
        return rng.random() < 0.5
    if flags == "Float32Flags":
        return struct.unpack("<f", struct.pack("<f", rng.uniform(-1e6, 1e6)))[0]
    if flags == "Float64Flags":
        return rng.uniform(-1e9, 1e9)
    low, high = _RANGES[flags]
    return rng.choice([low, high, 0, 1, rng.randint(low, high)])


def _text(rng: random.Random) -> str:
    return "".join(rng.choice("abcdef-é€😀0123") for _ in range(rng.randint(0, 12)))


_spec = functools.cache(_fastfbs._spec)


def random_instance(cls: type, rng: random.Random, depth: int = 0) -> Any:
    """A T instance with random contents (absent optional parts included)."""
    spec = _spec(cls)
    x = cls()
    deep = depth > 3
    for f in spec.fields:
        absent = rng.random() < 0.2
        if f.kind == "scalar":
            value = None if absent and f.acc.default is None else _scalar(rng, f.acc.flags)
        elif f.kind == "string":
            value = None if absent else _text(rng)
        elif f.kind == "table":
            value = None if absent or deep else random_instance(f.target, rng, depth + 1)
        elif f.kind == "vtable":
            value = (
                None
                if absent or deep
                else [random_instance(f.target, rng, depth + 1) for _ in range(rng.randint(0, 3))]
            )
        elif f.kind == "vstring":
            value = None if absent else [_text(rng) for _ in range(rng.randint(0, 4))]
        elif f.kind == "vscalar":
            value = (
                None if absent else [_scalar(rng, f.acc.flags) for _ in range(rng.randint(0, 5))]
            )
        elif f.kind == "vbytes":
            value = None if absent else rng.randbytes(rng.randint(0, 40))
        elif f.kind == "union":
            if absent or deep or not f.target:
                setattr(x, f.type_attr, 0)
                value = None
            else:
                tag = rng.choice(sorted(f.target))
                setattr(x, f.type_attr, tag)
                value = random_instance(f.target[tag], rng, depth + 1)
        else:  # pragma: no cover
            raise AssertionError(f.kind)
        setattr(x, f.name, value)
    return x


def assert_same(a: Any, b: Any, path: str = "root") -> None:
    assert type(a) is type(b), f"{path}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{path}[{i}]")
    elif hasattr(a, "__dict__"):
        assert list(vars(a)) == list(vars(b)), path
        for key in vars(a):
            assert_same(vars(a)[key], vars(b)[key], f"{path}.{key}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def _pack(builder: Any, obj: Any) -> bytes:
    builder.Clear()
    builder.Finish(obj.Pack(builder))
    return bytes(builder.Output())


@pytest.mark.parametrize("cls", T_CLASSES, ids=lambda c: c.__module__.split("_fbs.")[1])
def test_every_table_packs_and_unpacks_like_the_stock_runtime(cls: type) -> None:
    spec = _fastfbs._spec(cls)  # every generated table has a known shape
    assert spec.fields or not cls().__dict__
    rng = random.Random(cls.__module__)
    stock = flatbuffers.Builder(16)
    # A dirty, reused buffer: padding must be written, not assumed zero.
    fast = FastBuilder(16)
    fast.Bytes[:] = b"\xaa" * len(fast.Bytes)
    decode = decoder(cls)
    assert decode.__name__ != "decode", "fell back to InitFromBuf"
    for _ in range(25):
        obj = random_instance(cls, rng)
        data = _pack(stock, obj)
        assert _pack(fast, obj) == data
        pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
        assert_same(decode(data, pos), cls.InitFromBuf(data, pos))
        assert_same(decode(bytearray(data), pos), cls.InitFromBuf(data, pos))


def test_default_instances_pack_alike_with_force_defaults() -> None:
    for cls in T_CLASSES:
        stock, fast = flatbuffers.Builder(0), FastBuilder(0)
        stock.ForceDefaults(True)
        fast.ForceDefaults(True)
        obj = cls()
        assert _pack(fast, obj) == _pack(stock, obj), cls


def test_size_prefixed_finish_and_output_bytes() -> None:
    from mafalda.mediasoup._fbs.Worker.CloseRouterRequest import CloseRouterRequestT

    obj = CloseRouterRequestT(routerId="r" * 100)
    stock, fast = flatbuffers.Builder(8), FastBuilder(8)
    stock.FinishSizePrefixed(obj.Pack(stock))
    fast.FinishSizePrefixed(obj.Pack(fast))
    assert fast.output_bytes() == bytes(stock.Output())


def test_output_bytes_of_an_unfinished_builder_raises() -> None:
    with pytest.raises(flatbuffers.builder.BuilderNotFinishedError):
        FastBuilder(8).output_bytes()


def test_builder_misuse_raises_like_the_stock_one() -> None:
    b = FastBuilder(8)
    b.StartObject(1)
    with pytest.raises(IsNestedError):
        b.StartObject(1)
    with pytest.raises(IsNestedError):
        b.CreateString("x")
    with pytest.raises(IsNestedError):
        b.StartVector(1, 1, 1)
    b = FastBuilder(8)
    with pytest.raises(IsNotNestedError):
        b.EndObject()
    with pytest.raises(IsNotNestedError):
        b.Slot(0)
    with pytest.raises(IsNotNestedError):
        b.EndVector()
    with pytest.raises(IsNotNestedError):
        b.PrependUint8Slot(0, 1, 0)
    with pytest.raises(IsNotNestedError):
        b.PrependUOffsetTRelativeSlot(0, 1, 0)
    with pytest.raises(OffsetArithmeticError):
        b.PrependUOffsetTRelative(1000)
    with pytest.raises(OffsetArithmeticError):
        b.PrependSOffsetTRelative(1000)
    with pytest.raises(TypeError):
        b.CreateString(1)
    b.StartObject(1)
    with pytest.raises(struct.error):
        b.PrependUint8Slot(0, 256, 0)


def test_create_string_accepts_bytes_and_end_vector_checks_its_count() -> None:
    stock, fast = flatbuffers.Builder(0), FastBuilder(0)
    for b in (stock, fast):
        b.CreateString(b"bytes")
        b.CreateString(bytearray(b"more"))
        b.StartVector(1, 2, 1)
        b.PrependUint8(1)
        b.PrependUint8(2)
        with pytest.warns(DeprecationWarning):
            b.EndVector(2)
    assert fast.Bytes[fast.head :] == stock.Bytes[stock.head :]


def test_a_buffer_of_partial_words_decodes_too() -> None:
    # The views need whole words: a buffer with trailing bytes is decoded from a padded
    # copy (a worker's payload never has them; a caller's slice may).
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    obj = PortRangeT(min=5, max=9)
    data = _pack(flatbuffers.Builder(0), obj)
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    for extra in (b"x", b"xy", b"xyz"):
        assert_same(decoder(PortRangeT)(data + extra, pos), obj)


def test_unknown_union_type_decodes_to_none() -> None:
    from mafalda.mediasoup._fbs.Response import Body

    decoders = _fastfbs.union_decoders(Body.BodyCreator)
    assert decoders[250] is None
    assert decoders[Body.Body.Worker_DumpResponse] is not None


def test_unsupported_shape_falls_back_to_init_from_buf(monkeypatch: pytest.MonkeyPatch) -> None:
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    def refuse(cls: type) -> Any:
        raise _fastfbs.UnsupportedShapeError(cls.__name__)

    monkeypatch.setattr(_fastfbs, "_decoders", {})
    monkeypatch.setattr(_fastfbs, "_ns", dict(_fastfbs._ns))
    monkeypatch.setattr(_fastfbs, "_spec", refuse)
    decode = decoder(PortRangeT)
    obj = PortRangeT(min=5, max=9)
    data = _pack(flatbuffers.Builder(0), obj)
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    assert decode.__name__ == "decode"
    assert_same(decode(data, pos), obj)


def test_a_table_of_unsupported_shape_inside_a_compiled_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mafalda.mediasoup._fbs.Transport.ListenInfo import ListenInfoT
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    spec = _fastfbs._spec

    def refuse_port_range(cls: type) -> Any:
        if cls is PortRangeT:
            raise _fastfbs.UnsupportedShapeError(cls.__name__)
        return spec(cls)

    monkeypatch.setattr(_fastfbs, "_decoders", {})
    monkeypatch.setattr(_fastfbs, "_ns", dict(_fastfbs._ns))
    monkeypatch.setattr(_fastfbs, "_spec", refuse_port_range)
    decode = decoder(ListenInfoT)
    assert decode.__name__ != "decode"
    obj = ListenInfoT(ip="127.0.0.1", portRange=PortRangeT(min=5, max=9))
    data = _pack(flatbuffers.Builder(0), obj)
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    assert_same(decode(data, pos), ListenInfoT.InitFromBuf(data, pos))


@pytest.mark.parametrize("cls", T_CLASSES, ids=lambda c: c.__module__.split("_fbs.")[1])
def test_every_compiled_packer_packs_like_pack(cls: type) -> None:
    rng = random.Random("pack" + cls.__module__)
    pack = _fastfbs.packers[cls]
    assert pack is not cls.Pack, "fell back to Pack"
    stock, fast = flatbuffers.Builder(0), FastBuilder(0)
    for _ in range(10):
        obj = random_instance(cls, rng)
        stock.Clear()
        stock.Finish(obj.Pack(stock))
        fast.Clear()
        fast.Finish(pack(obj, fast))
        assert fast.output_bytes() == bytes(stock.Output())


def test_packer_of_a_foreign_class_is_its_own_pack() -> None:
    class Foreign:
        def Pack(self, builder: Any) -> int:  # noqa: N802
            return 0

    assert _fastfbs.packers[Foreign] is Foreign.Pack
