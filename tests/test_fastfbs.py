"""The fast codec against the stock flatbuffers runtime, for every table of the schemas;
the C decoders against the Python ones, on real and on corrupt buffers."""

from __future__ import annotations

import functools
import importlib
import importlib.resources
import math
import os
import pkgutil
import random
import struct
import subprocess
import sys
from typing import Any

import flatbuffers
import pytest
from flatbuffers.builder import IsNestedError, IsNotNestedError, OffsetArithmeticError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mafalda.mediasoup import _fastfbs, _fbs
from mafalda.mediasoup._fastfbs import FastBuilder, decoder, python_decoder

# The suite runs the C decoders unless told not to (then they are tested all the same).
PURE = os.environ.get("MAFALDA_PURE_PYTHON", "0") not in ("", "0")


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
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{path}: {a!r} != {b!r}"
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
    python = python_decoder(cls)
    assert python.__name__ == "decode_views", "fell back to InitFromBuf"
    # Each decoder as decoder() gives it, and as the decoders and channel.py call it.
    decoders = [(python, _fastfbs._python.ns[_fastfbs._name(cls)])]
    if _fastfbs.HAVE_NATIVE:
        decoders.append((_native(cls), _native_set.ns[_fastfbs._name(cls)]))
    for _ in range(25):
        obj = random_instance(cls, rng)
        data = _pack(stock, obj)
        assert _pack(fast, obj) == data
        pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
        expected = cls.InitFromBuf(data, pos)
        for decode, internal in decoders:
            assert_same(decode(data, pos), expected)
            assert_same(decode(bytearray(data), pos), expected)
            assert_same(internal(*_fastfbs.views(data), pos), expected)


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
        assert_same(python_decoder(PortRangeT)(data + extra, pos), obj)


@pytest.mark.parametrize("python", [False, True])
def test_unknown_union_type_decodes_to_none(python: bool) -> None:
    from mafalda.mediasoup._fbs.Response import Body
    from mafalda.mediasoup._fbs.RtpStream.Stats import StatsT

    decoders = _fastfbs.union_decoders(Body.BodyCreator, python=python)
    assert decoders[250] is None
    assert decoders[Body.Body.Worker_DumpResponse] is not None
    # A table whose union type is unknown: its value decodes to None, not read.
    data = _pack(flatbuffers.Builder(0), StatsT(dataType=1, data=_fbs_base_stats()))
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    type_at = pos + _field_offset(data, pos, 4)
    corrupt = data[:type_at] + bytes([200]) + data[type_at + 1 :]
    decode = python_decoder(StatsT) if python else decoder(StatsT)
    assert decode(corrupt, pos).data is None
    assert decode(corrupt, pos).dataType == 200


def test_unsupported_shape_falls_back_to_init_from_buf(monkeypatch: pytest.MonkeyPatch) -> None:
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    def refuse(cls: type) -> Any:
        raise _fastfbs.UnsupportedShapeError(cls.__name__)

    monkeypatch.setattr(_fastfbs, "_default", _fastfbs._Compiled(native=not PURE))
    monkeypatch.setattr(_fastfbs, "_spec", refuse)
    decode = decoder(PortRangeT)
    obj = PortRangeT(min=5, max=9)
    data = _pack(flatbuffers.Builder(0), obj)
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    assert decode.__name__ == "decode"
    assert_same(decode(data, pos), obj)


@pytest.mark.parametrize("native", [False, True])
def test_a_table_of_unsupported_shape_inside_a_compiled_one(
    monkeypatch: pytest.MonkeyPatch, native: bool
) -> None:
    from mafalda.mediasoup._fbs.Transport.ListenInfo import ListenInfoT
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    spec = _fastfbs._spec

    def refuse_port_range(cls: type) -> Any:
        if cls is PortRangeT:
            raise _fastfbs.UnsupportedShapeError(cls.__name__)
        return spec(cls)

    monkeypatch.setattr(_fastfbs, "_default", _fastfbs._Compiled(native=native and not PURE))
    monkeypatch.setattr(_fastfbs, "_spec", refuse_port_range)
    decode = decoder(ListenInfoT)
    assert getattr(decode, "__name__", "") != "decode"
    obj = ListenInfoT(ip="127.0.0.1", portRange=PortRangeT(min=5, max=9))
    data = _pack(flatbuffers.Builder(0), obj)
    pos = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    expected = ListenInfoT.InitFromBuf(data, pos)
    assert_same(decode(data, pos), expected)  # views made for the nested Python decoder
    assert_same(decode(data + b"x", pos), expected)  # ... from a padded copy
    internal = _fastfbs._default.ns[_fastfbs._name(ListenInfoT)]
    assert_same(internal(*_fastfbs.views(data), pos), expected)  # views passed along


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


# -- the C decoders -----------------------------------------------------------------

_native_set = _fastfbs._Compiled(native=True)


def _native(cls: type) -> Any:
    """The C decoder of ``cls``, whatever MAFALDA_PURE_PYTHON says."""
    _fastfbs._compile(cls, _native_set)
    decode = _native_set.public[cls]
    assert isinstance(decode, _fastfbs._cfastfbs.Decoder), "fell back to Python"
    return decode


def _root(data: bytes) -> int:
    pos: int = flatbuffers.encode.Get(flatbuffers.packer.uoffset, data, 0)
    return pos


def _field_offset(data: bytes, pos: int, slot: int) -> int:
    """The offset of a table's field from the table (0: absent)."""
    vtable = pos - struct.unpack_from("<i", data, pos)[0]
    size = struct.unpack_from("<H", data, vtable)[0]
    return struct.unpack_from("<H", data, vtable + slot)[0] if slot < size else 0


def _fbs_base_stats() -> Any:
    from mafalda.mediasoup._fbs.RtpStream.BaseStats import BaseStatsT

    return BaseStatsT(ssrc=7, mimeType="audio/opus")


def test_the_c_extension_is_built_and_used() -> None:
    assert _fastfbs.HAVE_NATIVE, "the C extension did not build (pip install -e . needs gcc)"
    assert _fastfbs.NATIVE is not PURE
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    assert isinstance(decoder(PortRangeT), _fastfbs._cfastfbs.Decoder) is not PURE


@pytest.mark.parametrize("value", ["1", "0"])
def test_mafalda_pure_python_picks_the_python_decoders(value: str) -> None:
    code = (
        "from mafalda.mediasoup import _fastfbs\n"
        "from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT\n"
        "print(_fastfbs.NATIVE, type(_fastfbs.decoder(PortRangeT)).__name__)\n"
    )
    env = {**os.environ, "MAFALDA_PURE_PYTHON": value}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out == (["True", "Decoder"] if value == "0" else ["False", "function"])


def _c_or_error(cls: type, data: bytes, pos: int) -> None:
    """The C decoder refuses ``data`` (ValueError) or gives what the Python one gives."""
    try:
        got = _native(cls)(data, pos)
    except ValueError:
        return
    assert_same(got, python_decoder(cls)(data, pos))


FUZZ_CLASSES = [cls for cls in T_CLASSES if _spec(cls).fields]


@functools.cache
def _sample(cls: type, seed: int) -> bytes:
    return _pack(flatbuffers.Builder(0), random_instance(cls, random.Random(seed)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cls=st.sampled_from(FUZZ_CLASSES),
    seed=st.integers(0, 7),
    flips=st.lists(st.tuples(st.integers(0, 2**16), st.integers(0, 7)), max_size=6),
    cut=st.none() | st.integers(0, 2**16),
    noise=st.none() | st.tuples(st.integers(0, 2**16), st.binary(min_size=1, max_size=16)),
)
def test_c_decoder_on_mutated_tables(
    cls: type,
    seed: int,
    flips: list[tuple[int, int]],
    cut: int | None,
    noise: tuple[int, bytes] | None,
) -> None:
    data = bytearray(_sample(cls, seed))
    pos = _root(bytes(data))
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    if noise is not None:
        at = noise[0] % len(data)
        data[at : at + len(noise[1])] = noise[1]
    if cut is not None:
        del data[cut % (len(data) + 1) :]
    _c_or_error(cls, bytes(data), pos)


@settings(max_examples=200, deadline=None)
@given(
    cls=st.sampled_from(FUZZ_CLASSES),
    data=st.binary(max_size=300),
    pos=st.integers(-8, 310),
)
def test_c_decoder_on_random_bytes(cls: type, data: bytes, pos: int) -> None:
    _c_or_error(cls, data, pos)


def test_c_decoder_on_every_byte_changed_and_every_truncation() -> None:
    rng = random.Random("corrupt")
    for cls in FUZZ_CLASSES:
        data = _sample(cls, 0)
        pos = _root(data)
        for at in range(len(data)):
            mask = rng.randrange(1, 256)
            _c_or_error(cls, data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :], pos)
            _c_or_error(cls, data[:at], pos)


def _nested_stats(levels: int) -> Any:
    from mafalda.mediasoup._fbs.RtpStream.RecvStats import RecvStatsT
    from mafalda.mediasoup._fbs.RtpStream.Stats import StatsT

    stats = StatsT(dataType=1, data=_fbs_base_stats())
    for _ in range(levels):
        stats = StatsT(dataType=2, data=RecvStatsT(base=stats, packetCount=3))
    return stats


def test_nesting_is_bounded() -> None:
    from mafalda.mediasoup._fbs.RtpStream.Stats import StatsT

    data = _pack(flatbuffers.Builder(0), _nested_stats(30))  # 61 tables deep
    assert_same(_native(StatsT)(data, _root(data)), python_decoder(StatsT)(data, _root(data)))
    data = _pack(flatbuffers.Builder(0), _nested_stats(40))
    python_decoder(StatsT)(data, _root(data))  # valid, but deeper than a worker sends
    with pytest.raises(ValueError, match="nested too deep"):
        _native(StatsT)(data, _root(data))


def _shared_tables(n: int) -> bytes:
    """RtpParameters whose ``n`` codecs are one table, whose ``n`` RTCP feedbacks are one
    table: ``1 + n + n * n`` tables to decode from ``8 * n`` bytes or so."""
    from mafalda.mediasoup._fbs.RtpParameters import RtcpFeedback as Fb
    from mafalda.mediasoup._fbs.RtpParameters import RtpCodecParameters as Codec
    from mafalda.mediasoup._fbs.RtpParameters import RtpParameters as Params

    def repeated(start_vector: Any, table: int) -> int:
        start_vector(b, n)
        for _ in range(n):
            b.PrependUOffsetTRelative(table)
        return int(b.EndVector())

    b = flatbuffers.Builder(0)
    nack = b.CreateString("nack")
    Fb.Start(b)
    Fb.AddType(b, nack)
    feedbacks = repeated(Codec.StartRtcpFeedbackVector, Fb.End(b))
    mime = b.CreateString("audio/opus")
    Codec.Start(b)
    Codec.AddMimeType(b, mime)
    Codec.AddRtcpFeedback(b, feedbacks)
    codecs = repeated(Params.StartCodecsVector, Codec.End(b))
    Params.Start(b)
    Params.AddCodecs(b, codecs)
    b.Finish(Params.End(b))
    return bytes(b.Output())


def test_tables_decoded_per_call_are_bounded_by_the_buffer() -> None:
    # Shared tables (which writers of this protocol never make) could multiply the work
    # exponentially with the nesting: more tables than the buffer holds is refused.
    from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT

    data = _shared_tables(3)
    got = _native(RtpParametersT)(data, _root(data))
    assert_same(got, python_decoder(RtpParametersT)(data, _root(data)))
    assert len(got.codecs) == 3 and len(got.codecs[2].rtcpFeedback) == 3
    data = _shared_tables(40)
    assert len(python_decoder(RtpParametersT)(data, _root(data)).codecs) == 40
    with pytest.raises(ValueError, match="more tables than the buffer"):
        _native(RtpParametersT)(data, _root(data))


def test_c_decoder_calls_and_descriptors_are_checked() -> None:
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    native = _fastfbs._cfastfbs
    decode = _native(PortRangeT)
    assert decode.cls is PortRangeT
    assert repr(decode) == "<Decoder of PortRangeT>"
    data = _pack(flatbuffers.Builder(0), PortRangeT(min=1, max=2))
    for bad_call in ((data,), (data, 1, 2, 3), ()):
        with pytest.raises(TypeError):
            decode(*bad_call)
    with pytest.raises(TypeError):
        decode(data, pos=4)
    with pytest.raises(TypeError):
        decode(data, "4")
    with pytest.raises(TypeError):
        decode(12, 4)
    with pytest.raises(TypeError):
        native.set_views(1)

    class OwnNew:
        def __new__(cls) -> OwnNew:
            return super().__new__(cls)

    class Plain:
        pass

    field = (0, 4, "B", False, False, -1, 0, None)
    for args in (
        (OwnNew, [], []),
        (Plain, [field[:4]], []),
        (Plain, ["x"], []),
        (Plain, [], ["x"]),
        (Plain, [], [("a", 0, None)]),  # no such field
        (Plain, [(99, *field[1:])], []),  # kind
        (Plain, [(0, 3, *field[2:])], []),  # odd slot
        (Plain, [(0, 4, "x", *field[3:])], []),  # scalar code
        (Plain, [(2, 4, "", False, False, -1, None, 1)], []),  # table decoder not callable
        (Plain, [(7, 4, "", False, False, 0, None, {})], []),  # union without type field
        (Plain, [field, (7, 6, "", False, False, 0, None, 1)], []),  # union map
        (Plain, [field] * 65, []),
    ):
        with pytest.raises((TypeError, ValueError)):
            native.Decoder(*args)
    # PortRange's min and max read as a union's type and value: type 1, which a plain
    # dict (no __missing__) may not know.
    attrs = [("kind", 0, None), ("value", 1, None)]
    union = (7, 6, "", False, False, 0, None, {1: None})
    two = native.Decoder(Plain, [field, union], attrs)
    assert vars(two(data, _root(data))) == {"kind": 1, "value": None}
    two = native.Decoder(Plain, [field, (*union[:-1], {})], attrs)
    with pytest.raises(KeyError):
        two(data, _root(data))


def test_a_class_the_c_decoder_cannot_make_gets_the_python_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    spec = _fastfbs._spec(RtpParametersT)
    ns = _native_set.ns
    _native(RtpParametersT)
    name = _fastfbs._name(RtpParametersT)
    unsupported = [
        replace(spec, init_order=spec.init_order[1:]),
        replace(spec, init_defaults={**spec.init_defaults, "codecs": []}),
        replace(
            spec,
            init_defaults={**spec.init_defaults, "other": []},
            init_order=[*spec.init_order, "other"],
        ),
        replace(spec, cls=type("OwnSetattr", (), {"__setattr__": lambda *a: None})),
    ]
    for bad in unsupported:
        with pytest.raises(_fastfbs.UnsupportedShapeError):
            _fastfbs._native_decoder(bad, name, ns)
    monkeypatch.setattr(_fastfbs, "np", object())  # numpy arrays: the Python decoder
    with pytest.raises(_fastfbs.UnsupportedShapeError):
        _fastfbs._native_decoder(_fastfbs._spec(_fbs_vscalar_class()), "_d_x", ns)
    monkeypatch.undo()

    def refuse(spec: Any, fn_name: str, ns: Any) -> Any:
        raise _fastfbs.UnsupportedShapeError(fn_name)

    monkeypatch.setattr(_fastfbs, "_native_decoder", refuse)
    monkeypatch.setattr(_fastfbs, "_default", _fastfbs._Compiled(native=True))
    decode = decoder(PortRangeT)
    assert decode.__name__ == "decode_views"
    data = _pack(flatbuffers.Builder(0), PortRangeT(min=1, max=2))
    assert_same(decode(data, _root(data)), PortRangeT(min=1, max=2))


def _fbs_vscalar_class() -> type:
    return next(c for c in FUZZ_CLASSES if any(f.kind == "vscalar" for f in _spec(c).fields))


# -- the C encoders -----------------------------------------------------------------


def _encoder(cls: type) -> Any:
    """The C encoder of ``cls``, whatever MAFALDA_PURE_PYTHON says."""
    return _fastfbs._encoder_of(cls)


def _standalone(tail: bytes, root: int) -> tuple[bytes, int]:
    """A C encoder's output as a whole buffer (root offset first, aligned to 8): the
    buffer and the root table's position."""
    pad = (-(4 + len(tail))) & 7
    pos = 4 + pad + len(tail) - root
    return struct.pack("<I", pos) + bytes(pad) + tail, pos


needs_c = pytest.mark.skipif(not _fastfbs.HAVE_NATIVE, reason="the C extension is not built")


@needs_c
@pytest.mark.parametrize("cls", T_CLASSES, ids=lambda c: c.__module__.split("_fbs.")[1])
def test_every_table_encodes_in_c_to_what_decodes_as_packed(cls: type) -> None:
    encode = _encoder(cls)
    assert isinstance(encode, _fastfbs._cfastfbs.Encoder)
    rng = random.Random("encode" + cls.__module__)
    stock = flatbuffers.Builder(0)
    for _ in range(25):
        obj = random_instance(cls, rng)
        data, pos = _standalone(*encode(obj))
        expected = cls.InitFromBuf(_pack(stock, obj), _root(_pack(stock, obj)))
        # The stock reader and the C decoder (which refuses misaligned fields) agree.
        assert_same(cls.InitFromBuf(data, pos), expected)
        if not PURE:
            assert_same(decoder(cls)(data, pos), expected)
        assert _root(data) == pos


@needs_c
def test_c_encoder_writes_defaults_only_where_the_reader_needs_them() -> None:
    from mafalda.mediasoup._fbs.Transport.ConsumeRequest import ConsumeRequestT

    empty = ConsumeRequestT()  # every scalar at its default, nothing else
    data, pos = _standalone(*_encoder(ConsumeRequestT)(empty))
    vtable = pos - struct.unpack_from("<i", data, pos)[0]
    assert struct.unpack_from("<HH", data, vtable) == (4, 4)  # no field, table = soffset
    empty.paused = True
    data, pos = _standalone(*_encoder(ConsumeRequestT)(empty))
    assert ConsumeRequestT.InitFromBuf(data, pos).paused is True


@needs_c
def test_c_encoder_copies_prepacked_children() -> None:
    from mafalda.mediasoup._fbs.Router.CreatePlainTransportRequest import (
        CreatePlainTransportRequestT,
    )

    rng = random.Random("prepacked")
    for _ in range(20):
        obj = random_instance(CreatePlainTransportRequestT, rng)
        if obj.options is None:
            continue
        expected = _standalone(*_encoder(CreatePlainTransportRequestT)(obj))
        obj.options = _fastfbs.prepack(obj.options)
        data, pos = _standalone(*_encoder(CreatePlainTransportRequestT)(obj))
        assert_same(
            CreatePlainTransportRequestT.InitFromBuf(data, pos),
            CreatePlainTransportRequestT.InitFromBuf(*expected),
        )


@needs_c
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", 256),  # uint8 out of range
        ("kind", -1),
        ("kind", "audio"),  # not a number
        ("kind", None),  # not optional
        ("consumerId", 5),  # not a string
        ("consumerId", "\ud800"),  # not encodable
        ("consumableRtpEncodings", "abc"),  # not a list
        ("consumableRtpEncodings", [object()]),  # a child of no known table class
        ("rtpParameters", object()),
    ],
)
def test_c_encoder_leaves_what_it_does_not_pack_to_the_python_packer(
    field: str, value: Any
) -> None:
    from mafalda.mediasoup._fbs.Transport.ConsumeRequest import ConsumeRequestT

    obj = ConsumeRequestT()
    setattr(obj, field, value)
    with pytest.raises(_fastfbs.EncoderUnsupported, match=field):
        _encoder(ConsumeRequestT)(obj)


@needs_c
def test_c_encoder_scalar_ranges_and_kinds() -> None:
    from mafalda.mediasoup._fbs.RtpParameters.RtpEncodingParameters import (
        RtpEncodingParametersT,
    )

    encode = _encoder(RtpEncodingParametersT)
    obj = RtpEncodingParametersT()
    obj.ssrc = 2**32 - 1  # uint32, optional
    obj.maxBitrate = 0  # optional: written although 0
    obj.dtx = 1  # bool from an int
    data, pos = _standalone(*encode(obj))
    back = RtpEncodingParametersT.InitFromBuf(data, pos)
    assert (back.ssrc, back.maxBitrate, back.dtx) == (2**32 - 1, 0, True)
    obj.ssrc = 2**32
    with pytest.raises(_fastfbs.EncoderUnsupported, match="ssrc"):
        encode(obj)


def test_native_encoder_is_none_in_pure_python(monkeypatch: pytest.MonkeyPatch) -> None:
    from mafalda.mediasoup._fbs.Router.CloseTransportRequest import CloseTransportRequestT

    monkeypatch.setattr(_fastfbs, "NATIVE", False)
    assert _fastfbs.native_encoder(CloseTransportRequestT) is None


def test_native_encoder_of_a_class_of_unknown_shape_is_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Foreign:
        pass

    monkeypatch.setattr(_fastfbs, "NATIVE", True)
    monkeypatch.setattr(_fastfbs, "_encoder_for", {})
    assert _fastfbs.native_encoder(Foreign) is None
    assert _fastfbs.native_encoder(Foreign) is None  # remembered
    assert Foreign not in _fastfbs._encoder_registry


@needs_c
def test_c_encoder_grows_its_buffer_for_big_tables() -> None:
    from mafalda.mediasoup._fbs.DataProducer.SendNotification import SendNotificationT
    from mafalda.mediasoup._fbs.RtpParameters.RtpEncodingParameters import (
        RtpEncodingParametersT,
    )
    from mafalda.mediasoup._fbs.Transport.ConsumeRequest import ConsumeRequestT

    message = SendNotificationT()
    message.data = bytes(range(256)) * 4000
    message.subchannels = list(range(3000))
    message.ppid = 53
    back = SendNotificationT.InitFromBuf(*_standalone(*_encoder(SendNotificationT)(message)))
    assert (bytes(back.data), list(back.subchannels), back.ppid) == (
        message.data,
        message.subchannels,
        53,
    )
    request = ConsumeRequestT()
    request.consumerId = "x" * 10000
    request.consumableRtpEncodings = []
    for i in range(5000):
        encoding = RtpEncodingParametersT()
        encoding.ssrc = i
        encoding.rid = str(i)
        request.consumableRtpEncodings.append(encoding)
    back = ConsumeRequestT.InitFromBuf(*_standalone(*_encoder(ConsumeRequestT)(request)))
    assert back.consumerId == request.consumerId
    assert [(e.ssrc, e.rid) for e in back.consumableRtpEncodings] == [
        (i, str(i)) for i in range(5000)
    ]


def test_prepacked_cache_lists() -> None:
    from mafalda.mediasoup._fbs.RtpParameters.RtcpFeedback import RtcpFeedbackT

    cache = _fastfbs.PrepackedCache(2)
    builds: list[str] = []

    def build(kind: str) -> Any:
        def make() -> list[Any]:
            builds.append(kind)
            return [RtcpFeedbackT(type=kind, parameter=p) for p in ("", "pli")]

        return make

    first = cache.get_list(("fb", "nack"), build("nack"))
    again = cache.get_list(("fb", "nack"), build("nack"))
    assert builds == ["nack"]  # the second from the cache...
    assert again == first and again is not first  # ... as a new list of the same blocks
    again.clear()
    assert len(cache.get_list(("fb", "nack"), build("nack"))) == 2
    assert all(isinstance(block, _fastfbs.Prepacked) for block in first)
    builder = FastBuilder(0)
    builder.Finish(first[1].Pack(builder))
    data = builder.output_bytes()
    assert_same(
        RtcpFeedbackT.InitFromBuf(data, _root(data)), RtcpFeedbackT(type="nack", parameter="pli")
    )
    # True and 1 are other keys; a key that is not plain data is built each time.
    cache.get_list(("fb", True), build("ccm"))
    cache.get_list(("fb", 1), build("goog-remb"))
    assert builds == ["nack", "ccm", "goog-remb"]
    unkeyable = ("fb", lambda: None)  # not picklable
    tables = cache.get_list(unkeyable, build("x"))
    cache.get_list(unkeyable, build("x"))
    assert builds[-2:] == ["x", "x"] and isinstance(tables[0], RtcpFeedbackT)
    assert len(cache) <= 2  # bounded: emptied when full


def test_builder_methods_the_generated_code_does_not_call_write_as_the_stock_ones() -> None:
    stock, fast = flatbuffers.Builder(0), FastBuilder(0)
    for b in (stock, fast):
        text = b.CreateString("x")
        b.StartVector(8, 2, 8)  # elements aligned to 8, more than the length's 4
        b.PrependUint64(1)
        b.PrependUint64(2)
        vector = b.EndVector()
        b.StartObject(4)
        b.PrependUOffsetTRelativeSlot(0, text, 0)
        b.PrependUOffsetTRelativeSlot(1, 0, 0)  # the default: not written
        b.PrependUOffsetTRelativeSlot(2, vector, 0)
        b.PrependUint8(7)
        b.Slot(3)
        table = b.EndObject()
        b.PrependSOffsetTRelative(table)
    assert fast.Bytes[fast.head :] == stock.Bytes[stock.head :]
    assert fast.head == stock.head and fast.minalign == stock.minalign == 8


# -- generated code of other shapes -------------------------------------------------
#
# The compilers read the generated code: a flatc writing other shapes must get the
# stock reader or packer (same results, slower), never a wrong compiled one. Each case
# is a real generated module with one edit, imported from a temporary package.

_LISTEN_INFO = "Transport/ListenInfo.py"
_STATS = "RtpStream/Stats.py"
_GET_STATS = "Consumer/GetStatsResponse.py"
_TRACE_EVENT = "Transport/EnableTraceEventRequest.py"
_ODD_ACCESSOR = "    # ListenInfo\n    def Ip(self):"
_ODD_CREATOR = """
from mafalda.mediasoup._fbs.RtpStream.StatsData import StatsData

def OddCreator(unionType, table):
    if unionType == StatsData.BaseStats:
        return None
    return None
"""

# (module, old text, new text): shapes the decoder compiler refuses.
_READER_VARIANTS = {
    "accessor of a vector of unknown items": (
        _LISTEN_INFO,
        _ODD_ACCESSOR,
        "    def Odd(self, j):\n        o = self._tab.Offset(22)\n        return j\n"
        + _ODD_ACCESSOR,
    ),
    "accessor of an unknown kind": (
        _LISTEN_INFO,
        _ODD_ACCESSOR,
        "    def Odd(self):\n        o = self._tab.Offset(22)\n        return o\n" + _ODD_ACCESSOR,
    ),
    "union creator not calling InitFromBuf": (
        _STATS,
        "mafalda.mediasoup._fbs.RtpStream.StatsData.StatsDataCreator(self.dataType",
        "{module}.OddCreator(self.dataType",
    ),
    "__init__ computing an attribute": (_LISTEN_INFO, "self.port = port ", "self.port = +port "),
    "a table accessor assigned as a scalar": (
        _LISTEN_INFO,
        "self.sendBufferSize = listenInfo.SendBufferSize()",
        "self.sendBufferSize = listenInfo.PortRange()",
    ),
    "a scalar accessor as a union's value": (_STATS, "stats.Data())", "stats.DataType())"),
    "an assignment of another form": (
        _LISTEN_INFO,
        "self.port = listenInfo.Port()",
        "self.port = 0 + listenInfo.Port()",
    ),
    "a table decoded as a string": (
        _LISTEN_INFO,
        "self.sendBufferSize = listenInfo.SendBufferSize()\n",
        "self.sendBufferSize = listenInfo.SendBufferSize()\n"
        "        if self.portRange is not None:\n"
        "            self.portRange = self.portRange.decode('utf-8')\n",
    ),
    "a scalar read as a table": (
        _LISTEN_INFO,
        "if listenInfo.PortRange() is not None:",
        "if listenInfo.Port() is not None:",
    ),
    "a vector test of another form": (
        _LISTEN_INFO,
        "self.port = listenInfo.Port()\n",
        "self.port = listenInfo.Port()\n        if not listenInfo.Port():\n            pass\n",
    ),
    "a vector read without an assignment first": (_GET_STATS, "self.stats = []", "pass"),
    "a vector assigned to a local": (_GET_STATS, "self.stats = []", "stats = []"),
    "a vector of tables not made by InitFromObj": (
        _GET_STATS,
        "StatsT.InitFromObj(getStatsResponse.Stats(i))",
        "StatsT.InitFromBuf(getStatsResponse.Stats(i)._tab.Bytes,"
        " getStatsResponse.Stats(i)._tab.Pos)",
    ),
    "a vector of scalars without the numpy test": (_TRACE_EVENT, "if np is None:", "if True:"),
    "a test of another form": (
        _LISTEN_INFO,
        "if listenInfo.PortRange() is not None:",
        "if 0 < 1:",
    ),
    "a statement of another kind": (
        _LISTEN_INFO,
        "self.port = listenInfo.Port()\n",
        "self.port = listenInfo.Port()\n        print(end='')\n",
    ),
}

# Shapes the packer compiler does not inline (it keeps the builder's slot methods).
_PACKER_VARIANTS = {
    "a wrapper called with fewer arguments than it has": (
        _LISTEN_INFO,
        "def ListenInfoAddPort(builder, port):\n    builder.PrependUint16Slot(4, port, 0)",
        "def ListenInfoAddPort(builder, port, d=0):\n    builder.PrependUint16Slot(4, port, d)",
    ),
    "a default that is no literal": (
        _LISTEN_INFO,
        "PrependUint16Slot(4, port, 0)",
        "PrependUint16Slot(4, port, int(0))",
    ),
    "a default with no literal": (
        "RtpParameters/Double.py",
        "PrependFloat64Slot(0, value, 0.0)",
        "PrependFloat64Slot(0, value, 1e999)",
    ),
    "an offset slot whose default is not 0": (
        _LISTEN_INFO,
        "UOffsetTFlags.py_type(ip), 0)",
        "UOffsetTFlags.py_type(ip), 1)",
    ),
    "a slot method it does not know": (
        _LISTEN_INFO,
        "builder.PrependUOffsetTRelativeSlot(5, flatbuffers.number_types.UOffsetTFlags"
        ".py_type(portRange), 0)",
        "builder.PrependStructSlot(5, portRange, 0)",
    ),
    "a field count that is no literal": (
        _LISTEN_INFO,
        "builder.StartObject(9)",
        "builder.StartObject(3 * 3)",
    ),
}

# Shapes that change nothing: the compiled reader and packer are still used.
_HARMLESS_VARIANTS = {
    "an accessor ending without a return": (
        _LISTEN_INFO,
        _ODD_ACCESSOR,
        "    def Odd(self):\n        o = self._tab.Offset(22)\n"
        "        if o != 0:\n            return self._tab.String(o + self._tab.Pos)\n"
        "        pass\n" + _ODD_ACCESSOR,
    ),
    "a number read as a bool": (
        _LISTEN_INFO,
        "return self._tab.Get(flatbuffers.number_types.Uint16Flags, o + self._tab.Pos)",
        "return bool(self._tab.Get(flatbuffers.number_types.Uint16Flags, o + self._tab.Pos))",
    ),
    "module functions that are no wrappers": (
        _LISTEN_INFO,
        "def ListenInfoStart(builder):",
        "def Odd(builder):\n    x = builder\n\n"
        "def Twice(builder):\n    return builder + builder\n\n"
        "def ListenInfoStart(builder):",
    ),
}


def _variant(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, case: tuple[str, str, str]) -> Any:
    """The T class of generated module ``case[0]`` with ``case[1]`` replaced by ``case[2]``
    (where ``{module}`` is the module's own name; it then defines OddCreator too)."""
    path, old, new = case
    source = (importlib.resources.files(_fbs) / path).read_text()
    assert old in source, old
    package = f"fbs_variant_{abs(hash(case))}"
    directory = tmp_path / package
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    name = path.rsplit("/", 1)[1].removesuffix(".py")
    source = source.replace(old, new.replace("{module}", f"{package}.{name}"))
    if "{module}" in new:
        source += _ODD_CREATOR + f"\nimport {package}.{name}\n"
    (directory / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, package, raising=False)
    module = importlib.import_module(f"{package}.{name}")
    return getattr(module, f"{name}T")


def _variant_instances(cls: type, tables: bool = True) -> list[Any]:
    """Instances to pack; ``tables``: a ListenInfo with a table field too."""
    from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT

    name = cls.__name__
    if name == "ListenInfoT":
        full = {"ip": "10.0.0.1", "announcedAddress": "a", "port": 5, "sendBufferSize": 7}
        more = [cls(**full, portRange=PortRangeT(min=1, max=2))] if tables else []
        return [cls(), cls(**full), *more]
    if name == "DoubleT":
        return [cls(), cls(value=0.5)]
    if name == "StatsT":
        return [cls(), cls(dataType=1, data=_fbs_base_stats())]
    if name == "EnableTraceEventRequestT":
        return [cls(), cls(events=[1, 2])]
    return [cls()]


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("case", list(_READER_VARIANTS), ids=str)
def test_generated_reader_of_another_shape_gets_init_from_buf(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, case: str, native: bool
) -> None:
    cls = _variant(tmp_path, monkeypatch, _READER_VARIANTS[case])
    with pytest.raises(_fastfbs.UnsupportedShapeError):
        _fastfbs._spec(cls)
    compiled = _fastfbs._Compiled(native=native and _fastfbs.HAVE_NATIVE)
    _fastfbs._compile(cls, compiled)
    decode = compiled.public[cls]
    assert decode.__name__ == "decode"  # InitFromBuf's
    # (without the tables that some of these edits make InitFromBuf mistake for others)
    for obj in _variant_instances(cls, tables=False):
        data = _pack(flatbuffers.Builder(0), obj)
        assert_same(decode(data, _root(data)), cls.InitFromBuf(data, _root(data)))
    if _fastfbs.HAVE_NATIVE:
        monkeypatch.setattr(_fastfbs, "_encoder_for", {})
        assert _fastfbs._encoder_of(cls) is None  # the Python packer packs it


@pytest.mark.parametrize("case", list(_PACKER_VARIANTS), ids=str)
def test_generated_packer_of_another_shape_keeps_the_builder_calls(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    cls = _variant(tmp_path, monkeypatch, _PACKER_VARIANTS[case])
    pack = _fastfbs._compile_packer(cls)
    assert "StartObject" in pack.__code__.co_names  # not inlined
    for obj in _variant_instances(cls):
        if case == "a slot method it does not know":
            obj.portRange = None  # a struct slot would take no table
        fast = FastBuilder(0)
        fast.Finish(pack(obj, fast))
        assert fast.output_bytes() == _pack(flatbuffers.Builder(0), obj)


@pytest.mark.parametrize("case", list(_HARMLESS_VARIANTS), ids=str)
def test_generated_code_with_harmless_extras_is_still_compiled(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    cls = _variant(tmp_path, monkeypatch, _HARMLESS_VARIANTS[case])
    compiled = _fastfbs._Compiled(native=False)
    _fastfbs._compile(cls, compiled)
    assert compiled.public[cls].__name__ == "decode_views"
    pack = _fastfbs._compile_packer(cls)
    assert "StartObject" not in pack.__code__.co_names  # inlined
    for obj in _variant_instances(cls):
        data = _pack(flatbuffers.Builder(0), obj)
        assert_same(compiled.public[cls](data, _root(data)), cls.InitFromBuf(data, _root(data)))
        fast = FastBuilder(0)
        fast.Finish(pack(obj, fast))
        assert fast.output_bytes() == data


def test_a_scalar_default_the_c_encoder_cannot_hold_leaves_the_class_to_pack(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scalar whose default is a string: decoded alike, packed by the Python packer.
    cls = _variant(
        tmp_path, monkeypatch, (_LISTEN_INFO, "        return 1\n", "        return 'udp'\n")
    )
    monkeypatch.setattr(_fastfbs, "_encoder_for", {})
    assert _fastfbs._encoder_of(cls) is None
    data = _pack(flatbuffers.Builder(0), cls(protocol=2))
    assert python_decoder(cls)(data, _root(data)).protocol == 2


def _run_python(code: str, *path: str) -> list[str]:
    """Run ``code`` in a new interpreter of this environment (measured by coverage too),
    with ``path`` after its own sys.path; its printed words."""
    env = {**os.environ, "MAFALDA_PURE_PYTHON": "0"}
    prelude = f"import sys; sys.path.extend({list(path)!r})\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()


def test_without_the_c_extension_the_python_codec_is_used() -> None:
    """Installed without a C compiler (the extension's import fails, here made to):
    neither C decoders nor C encoders, the generated Python ones decode and pack."""
    code = (
        "sys.modules['mafalda.mediasoup._cfastfbs'] = None  # as if it was never built\n"
        "from mafalda.mediasoup import _fastfbs\n"
        "from mafalda.mediasoup._fbs.Transport.PortRange import PortRangeT\n"
        "from tests.test_fastfbs import _pack, _root\n"
        "data = _pack(_fastfbs.FastBuilder(0), PortRangeT(min=1, max=2))\n"
        "decode = _fastfbs.decoder(PortRangeT)\n"
        "got = decode(data, _root(data))\n"
        "print(_fastfbs.HAVE_NATIVE, _fastfbs.NATIVE, type(decode).__name__,"
        " _fastfbs.native_encoder(PortRangeT), got.min, got.max)\n"
    )
    assert _run_python(code, os.getcwd()) == ["False", "False", "function", "None", "1", "2"]


def _numpy_path() -> str:
    """The site-packages of the base interpreter when numpy is there (it is on the
    project's machines, not in its environment)."""
    import sysconfig

    purelib = sysconfig.get_path("purelib", vars={"base": sys.base_prefix})
    if not os.path.isdir(os.path.join(purelib, "numpy")):
        pytest.skip("no numpy beside this environment")
    return purelib


def test_with_numpy_vectors_of_scalars_decode_to_the_same_arrays() -> None:
    """With numpy installed the generated code reads vectors of scalars as numpy arrays:
    the compiled decoders give the same arrays (dtype and values) as InitFromBuf, for
    every table that has such a vector."""
    code = (
        "import flatbuffers, numpy as np\n"
        "from mafalda.mediasoup import _fastfbs\n"
        "from tests.test_fastfbs import T_CLASSES, _spec, _pack, _root\n"
        "assert _fastfbs.np is np\n"
        "checked = set()\n"
        "for cls in T_CLASSES:\n"
        "    fields = [f for f in _spec(cls).fields if f.kind == 'vscalar']\n"
        "    if not fields:\n"
        "        continue\n"
        "    obj = cls()\n"
        "    for f in fields:\n"
        "        setattr(obj, f.name, [1, 2, 3])\n"
        "    data = _pack(flatbuffers.Builder(0), obj)\n"
        "    want = cls.InitFromBuf(data, _root(data))\n"
        "    for decode in (_fastfbs.python_decoder(cls), _fastfbs.decoder(cls)):\n"
        "        got = decode(data, _root(data))\n"
        "        for f in fields:\n"
        "            a, b = getattr(got, f.name), getattr(want, f.name)\n"
        "            assert type(a) is np.ndarray and a.dtype == b.dtype, (cls, f.name)\n"
        "            assert a.tolist() == b.tolist() == [1, 2, 3], (cls, f.name)\n"
        "            checked.add(str(a.dtype))\n"
        "print(len(checked) > 1)\n"
    )
    assert _run_python(code, os.getcwd(), _numpy_path()) == ["True"]
