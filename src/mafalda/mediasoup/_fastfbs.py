"""Fast FlatBuffers codec for the generated object API (``_fbs``), same results.

The ``flatbuffers`` runtime checks the range of every number it reads or writes and
reaches each field through several calls; the object API's ``_UnPack`` calls every
accessor twice. That costs most of a channel round trip. This module keeps the
generated code as the single source of truth and makes it cheaper:

- :class:`FastBuilder` is a ``flatbuffers.Builder`` whose hot methods are rewritten
  without the per-number checks (a value out of range for its field still fails, as
  ``struct.error`` instead of ``TypeError``): the generated ``Pack`` methods run
  unchanged on it and produce byte-identical buffers.
- :func:`decoder` compiles, once per object-API class ``XxxT``, a function
  ``(buf, pos) -> XxxT`` equivalent to ``XxxT.InitFromBuf(buf, pos)``: it reads the
  generated reader class and ``_UnPack`` method (whose shapes are fixed by the pinned
  flatc) and emits straight-line reads, mostly subscripts of uint32/int32/uint16
  views of the buffer rather than ``struct`` calls. A class whose code has an
  unexpected shape falls back to ``InitFromBuf``.
- Where the C extension ``_cfastfbs`` is built, the same reading of the generated code
  describes each class to it instead, and its decoders (same objects, same calling
  convention) replace the generated Python ones, which stay the fallback: for a class
  it cannot decode alike, without the extension, or with ``MAFALDA_PURE_PYTHON=1``.
- The same descriptions make C encoders (:func:`native_encoder`), which pack a request
  body in one call: other bytes than ``Pack`` writes (fields by size, no shared
  vtables) that decode to the same object. A value they do not expect (out of range,
  of another type) is left to the compiled Python packer, which gives the usual error.

``tests/test_fastfbs.py`` checks them against the stock runtime for every table of the
schemas, with random contents, the C decoders against the Python ones on corrupt
buffers, and what the C encoders write against what ``Pack`` writes, decoded.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import math
import os
import pickle
import struct
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import flatbuffers
from flatbuffers import number_types as _N
from flatbuffers.builder import IsNestedError, IsNotNestedError, OffsetArithmeticError
from flatbuffers.compat import import_numpy

try:
    from mafalda.mediasoup import _cfastfbs
except ImportError:  # installed without a C compiler
    HAVE_NATIVE = False
else:
    HAVE_NATIVE = True

np = import_numpy()

Decoder = Callable[[Any, int], Any]

_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_I32 = struct.Struct("<i")
_U32 = struct.Struct("<I")
_pack_u32 = _U32.pack_into
_pack_i32 = _I32.pack_into
_pack_u8 = _U8.pack_into

# -- encoding -----------------------------------------------------------------------

_vt_packers: dict[int, Callable[..., None]] = {}  # vtables of n fields
_ZEROS = [bytes(n) for n in range(8)]


def _slot_method(packer: struct.Struct) -> Callable[..., None]:
    pack_into = packer.pack_into
    size = packer.size

    def prepend_slot(self: FastBuilder, o: int, x: Any, d: Any) -> None:
        if x != d or (self.forceDefaults and d is not None):
            head = self.head
            if size > self.minalign:
                self.minalign = size
            buf = self.Bytes
            align = (head - len(buf)) & (size - 1)
            if head < align + size:
                self.Prep(size, 0)
            elif align:
                buf[head - align : head] = bytes(align)
                head -= align
                self.head = head
            head = self.head - size
            pack_into(self.Bytes, head, x)
            self.head = head
            if not self.nested:
                raise IsNotNestedError()
            self.current_vtable[o] = len(self.Bytes) - head

    return prepend_slot


def _prepend_method(packer: struct.Struct) -> Callable[..., None]:
    pack_into = packer.pack_into
    size = packer.size

    def prepend(self: FastBuilder, x: Any) -> None:
        self.Prep(size, 0)
        head = self.head - size
        pack_into(self.Bytes, head, x)
        self.head = head

    return prepend


class FastBuilder(flatbuffers.Builder):  # type: ignore[misc]
    """``flatbuffers.Builder`` with the generated code's hot paths made cheap.

    Same buffers, same vtable deduplication, same errors for misuse (nesting,
    offsets); only the per-number range checks are left to ``struct``.
    """

    Bytes: bytearray
    head: int
    minalign: int
    nested: bool
    forceDefaults: bool
    finished: bool
    objectEnd: int
    current_vtable: list[int]
    vtables: dict[tuple[int, ...], int]
    vectorNumElems: int

    def Prep(self, size: int, additionalBytes: int) -> None:
        if size > self.minalign:
            self.minalign = size
        head = self.head
        buf_len = len(self.Bytes)
        align = (head - buf_len - additionalBytes) & (size - 1)
        needed = align + size + additionalBytes
        while head < needed:
            old = buf_len
            self.GrowByteBuffer()
            buf_len = len(self.Bytes)
            head += buf_len - old
        if align:
            self.Bytes[head - align : head] = bytes(align)
            head -= align
        self.head = head

    def StartObject(self, numfields: int) -> None:
        if self.nested:
            raise IsNestedError()
        self.current_vtable = [0] * numfields
        self.objectEnd = len(self.Bytes) - self.head
        self.nested = True

    def Slot(self, slotnum: int) -> None:
        if not self.nested:
            raise IsNotNestedError()
        self.current_vtable[slotnum] = len(self.Bytes) - self.head

    def EndObject(self) -> int:
        if not self.nested:
            raise IsNotNestedError()
        self.nested = False
        return self.WriteVtable()

    def WriteVtable(self) -> int:
        # The object's soffset to its vtable (Prep(4, 0) inlined), filled below.
        head = self.head
        end = len(self.Bytes)
        if self.minalign < 4:
            self.minalign = 4
        align = (head - end) & 3
        if head < align + 4:
            self.Prep(4, 0)
            head = self.head
            end = len(self.Bytes)
        elif align:
            self.Bytes[head - align : head] = bytes(align)
            head -= align
        head -= 4
        object_offset = end - head
        current = self.current_vtable
        n = len(current)
        while n and current[n - 1] == 0:
            n -= 1
        # (object size, field offsets...): the vtable after its own size. As the stock
        # builder's key (reversed offsets + size), it identifies the vtable's bytes.
        key = (
            object_offset - self.objectEnd,
            *[
                object_offset - e if e else 0
                for e in (current if n == len(current) else current[:n])
            ],
        )
        existing = self.vtables.get(key)
        if existing is None:
            size = (n + 2) * 2
            if head < size:  # Prep(2, size - 2): no padding, head is 4-aligned here
                self.head = head
                self.Prep(2, size - 2)
                head = self.head
                end = len(self.Bytes)
            head -= size
            buf = self.Bytes
            packer = _vt_packers.get(n)
            if packer is None:
                packer = _vt_packers[n] = struct.Struct(f"<{n + 2}H").pack_into
            packer(buf, head, size, *key)
            _pack_i32(buf, end - object_offset, (end - head) - object_offset)
            self.vtables[key] = end - head
        else:
            head = end - object_offset
            _pack_i32(self.Bytes, head, existing - object_offset)
        self.head = head
        self.current_vtable = None  # type: ignore[assignment]
        return int(object_offset)

    def PrependSOffsetTRelative(self, off: int) -> None:
        self.Prep(4, 0)
        offset = len(self.Bytes) - self.head
        if not off <= offset:
            raise OffsetArithmeticError("flatbuffers: Offset arithmetic error.")
        self.head -= 4
        _pack_i32(self.Bytes, self.head, offset - off + 4)

    def PrependUOffsetTRelative(self, off: int) -> None:
        head = self.head
        end = len(self.Bytes)
        if self.minalign < 4:
            self.minalign = 4
        align = (head - end) & 3
        if head < align + 4:
            self.Prep(4, 0)
            head = self.head
            end = len(self.Bytes)
        elif align:
            self.Bytes[head - align : head] = bytes(align)
            head -= align
        offset = end - head
        if not off <= offset:
            self.head = head
            raise OffsetArithmeticError("flatbuffers: Offset arithmetic error.")
        head -= 4
        _pack_u32(self.Bytes, head, offset - off + 4)
        self.head = head

    def PrependUOffsetTRelativeSlot(self, o: int, x: int, d: int) -> None:
        if x != d or self.forceDefaults:
            self.PrependUOffsetTRelative(x)
            if not self.nested:
                raise IsNotNestedError()
            self.current_vtable[o] = len(self.Bytes) - self.head

    def StartVector(self, elemSize: int, numElems: int, alignment: int) -> int:
        if self.nested:
            raise IsNestedError()
        self.nested = True
        self.vectorNumElems = numElems
        self.Prep(4, elemSize * numElems)
        if alignment > 4:  # otherwise a no-op after Prep(4, same bytes)
            self.Prep(alignment, elemSize * numElems)
        return int(len(self.Bytes) - self.head)

    def EndVector(self, numElems: int | None = None) -> int:
        if numElems:
            return int(super().EndVector(numElems))
        if not self.nested:
            raise IsNotNestedError()
        self.nested = False
        self.head -= 4
        _pack_u32(self.Bytes, self.head, self.vectorNumElems)
        self.vectorNumElems = None  # type: ignore[assignment]
        return int(len(self.Bytes) - self.head)

    def CreateString(self, s: Any, encoding: str = "utf-8", errors: str = "strict") -> int:
        if self.nested:
            raise IsNestedError()
        x: bytes | bytearray
        if isinstance(s, str):
            x = s.encode(encoding, errors)
        elif isinstance(s, bytes | bytearray):
            x = s
        else:
            raise TypeError("non-string passed to CreateString")
        n = len(x)
        # Prep(4, n + 1), its common case inlined.
        head = self.head
        buf = self.Bytes
        if self.minalign < 4:
            self.minalign = 4
        align = (head - len(buf) - n - 1) & 3
        if head < align + 4 + n + 1:
            self.Prep(4, n + 1)
            head = self.head
            buf = self.Bytes
        elif align:
            buf[head - align : head] = _ZEROS[align]
            head -= align
        head -= n + 1
        buf[head : head + n] = x
        buf[head + n] = 0
        head -= 4
        _pack_u32(buf, head, n)
        self.head = head
        return int(len(buf) - head)

    PrependBoolSlot = _slot_method(struct.Struct("<?"))
    PrependByteSlot = _slot_method(_U8)
    PrependUint8Slot = _slot_method(_U8)
    PrependUint16Slot = _slot_method(_U16)
    PrependUint32Slot = _slot_method(_U32)
    PrependUint64Slot = _slot_method(struct.Struct("<Q"))
    PrependInt8Slot = _slot_method(struct.Struct("<b"))
    PrependInt16Slot = _slot_method(struct.Struct("<h"))
    PrependInt32Slot = _slot_method(_I32)
    PrependInt64Slot = _slot_method(struct.Struct("<q"))
    PrependFloat32Slot = _slot_method(struct.Struct("<f"))
    PrependFloat64Slot = _slot_method(struct.Struct("<d"))

    PrependBool = _prepend_method(struct.Struct("<?"))
    PrependByte = _prepend_method(_U8)
    PrependUint8 = _prepend_method(_U8)
    PrependUint16 = _prepend_method(_U16)
    PrependUint32 = _prepend_method(_U32)
    PrependUint64 = _prepend_method(struct.Struct("<Q"))
    PrependInt8 = _prepend_method(struct.Struct("<b"))
    PrependInt16 = _prepend_method(struct.Struct("<h"))
    PrependInt32 = _prepend_method(_I32)
    PrependInt64 = _prepend_method(struct.Struct("<q"))
    PrependFloat32 = _prepend_method(struct.Struct("<f"))
    PrependFloat64 = _prepend_method(struct.Struct("<d"))
    PrependVOffsetT = _prepend_method(_U16)

    def output_bytes(self) -> bytes:
        """The finished buffer as bytes (one copy; ``Output()`` makes a bytearray)."""
        if not self.finished:
            return bytes(self.Output())
        return bytes(memoryview(self.Bytes)[self.head :])


# -- decoding -----------------------------------------------------------------------

_FLAG_CODES: dict[str, str] = {
    "BoolFlags": "?",
    "Uint8Flags": "B",
    "Uint16Flags": "H",
    "Uint32Flags": "I",
    "Uint64Flags": "Q",
    "Int8Flags": "b",
    "Int16Flags": "h",
    "Int32Flags": "i",
    "Int64Flags": "q",
    "Float32Flags": "f",
    "Float64Flags": "d",
}


class UnsupportedShapeError(Exception):
    """Generated code of a shape this compiler does not know: use InitFromBuf."""


@dataclass
class Accessor:
    """One reader method: where its field is and what it holds."""

    kind: str  # scalar | string | table | vtable | vstring | vscalar | union | other
    slot: int = 0  # vtable byte offset (4, 6, ...)
    flags: str = ""
    default: Any = None
    wrap_bool: bool = False


@dataclass
class Field:
    """One statement of ``_UnPack``: attribute ``name`` from accessor ``acc``."""

    name: str
    kind: str  # scalar | string | table | vtable | vstring | vscalar | union
    acc: Accessor
    decode: bool = False
    target: Any = None  # T class (table, vtable) or union map {type: T class}
    type_attr: str = ""  # union: the attribute holding the union type


@dataclass
class Spec:
    cls: type
    fields: list[Field] = field(default_factory=list)
    init_defaults: dict[str, Any] = field(default_factory=dict)
    init_order: list[str] = field(default_factory=list)  # the attributes __init__ sets


def _module_ast(module: Any) -> ast.Module:
    return ast.parse(inspect.getsource(module))


def _classify_accessor(fn: ast.FunctionDef) -> Accessor:
    src = ast.unparse(fn)
    slots = [int(s) for s in _re_slot(src)]
    if not slots:
        return Accessor("other")
    slot = slots[0]
    has_j = len(fn.args.args) == 2
    last = fn.body[-1]
    default: Any = None
    if isinstance(last, ast.Return) and last.value is not None:
        try:
            default = ast.literal_eval(last.value)
        except ValueError:
            default = None
    if "Union(" in src:
        return Accessor("union", slot)
    if "GetVectorAsNumpy" in src or "VectorLen" in src or "return o == 0" in src:
        return Accessor("other", slot)
    if has_j:
        if "Indirect(" in src:
            return Accessor("vtable", slot)
        if "String(" in src:
            return Accessor("vstring", slot)
        flags = _re_flags(src)
        if flags:
            return Accessor("vscalar", slot, flags=flags[-1])
        raise UnsupportedShapeError(src)
    if "Indirect(" in src:
        return Accessor("table", slot)
    if "String(" in src:
        return Accessor("string", slot)
    flags = _re_flags(src)
    if flags and "Get(" in src:
        return Accessor("scalar", slot, flags[-1], default, wrap_bool="bool(self._tab.Get" in src)
    raise UnsupportedShapeError(src)


def _re_slot(src: str) -> list[str]:
    import re

    return re.findall(r"self\._tab\.Offset\((\d+)\)", src)


def _re_flags(src: str) -> list[str]:
    import re

    return [f for f in re.findall(r"number_types\.(\w+Flags)", src) if f != "UOffsetTFlags"]


def _resolve(dotted: str) -> Any:
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _dotted(node: ast.expr) -> str:
    return ast.unparse(node)


def _is_self_attr(node: ast.expr) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    ):
        return node.attr
    return None


def _reader_call(node: ast.expr, reader: str) -> str | None:
    """``reader.Method()`` or ``reader.Method(i)`` -> 'Method'."""
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == reader
    ):
        return node.func.attr
    return None


def _union_map(creator: Any) -> dict[int, type]:
    """``{union type: T class}`` from a generated ``XxxCreator`` function."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(creator)))
    fn = tree.body[0]
    assert isinstance(fn, ast.FunctionDef)
    enum_module = importlib.import_module(creator.__module__)
    result: dict[int, type] = {}
    for stmt in fn.body:
        if not isinstance(stmt, ast.If):
            continue
        test = stmt.test
        if not (
            isinstance(test, ast.Compare)
            and isinstance(test.ops[0], ast.Eq)
            and isinstance(test.comparators[0], ast.Attribute)
        ):
            continue
        member = test.comparators[0]
        assert isinstance(member.value, ast.Name)
        enum = getattr(enum_module, member.value.id)
        value = getattr(enum, member.attr)
        ret = stmt.body[-1]
        if not (
            isinstance(ret, ast.Return)
            and isinstance(ret.value, ast.Call)
            and isinstance(ret.value.func, ast.Attribute)
            and ret.value.func.attr == "InitFromBuf"
        ):
            raise UnsupportedShapeError(ast.unparse(stmt))
        result[value] = _resolve(_dotted(ret.value.func.value))
    return result


def _spec(cls: type) -> Spec:
    module = importlib.import_module(cls.__module__)
    tree = _module_ast(module)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    t_node = classes[cls.__name__]
    reader_node = classes[cls.__name__[:-1]]
    accessors = {
        fn.name: _classify_accessor(fn)
        for fn in reader_node.body
        if isinstance(fn, ast.FunctionDef)
    }
    methods = {fn.name: fn for fn in t_node.body if isinstance(fn, ast.FunctionDef)}
    spec = Spec(cls)
    # __init__ must only store its parameters: then the defaults are the attributes.
    init = methods["__init__"]
    for stmt in init.body:
        if not (
            isinstance(stmt, ast.Assign)
            and _is_self_attr(stmt.targets[0]) is not None
            and isinstance(stmt.value, ast.Name)
            and stmt.value.id == _is_self_attr(stmt.targets[0])
        ):
            raise UnsupportedShapeError(ast.unparse(stmt))
        spec.init_order.append(stmt.value.id)
    params = inspect.signature(cls).parameters
    spec.init_defaults = {name: p.default for name, p in params.items() if name != "self"}
    unpack = methods["_UnPack"]
    reader = unpack.args.args[1].arg
    by_name: dict[str, Field] = {}
    for stmt in unpack.body:
        src = ast.unparse(stmt)
        if isinstance(stmt, ast.If) and src.startswith(f"if {reader} is None:"):
            continue
        if isinstance(stmt, ast.Assign):
            name = _is_self_attr(stmt.targets[0])
            value = stmt.value
            method = _reader_call(value, reader)
            if name is not None and method is not None:
                acc = accessors[method]
                if acc.kind not in ("scalar", "string"):
                    raise UnsupportedShapeError(src)
                by_name[name] = f = Field(name, acc.kind, acc)
                spec.fields.append(f)
                continue
            if (
                name is not None
                and isinstance(value, ast.Call)
                and len(value.args) == 2
                and _is_self_attr(value.args[0]) is not None
                and _reader_call(value.args[1], reader) is not None
            ):
                method = _reader_call(value.args[1], reader)
                assert method is not None
                acc = accessors[method]
                if acc.kind != "union":
                    raise UnsupportedShapeError(src)
                type_attr = _is_self_attr(value.args[0])
                assert type_attr is not None
                f = Field(name, "union", acc, type_attr=type_attr)
                f.target = _union_map(_resolve(_dotted(value.func)))
                by_name[name] = f
                spec.fields.append(f)
                continue
            raise UnsupportedShapeError(src)
        if isinstance(stmt, ast.If):
            test = stmt.test
            # if self.x is not None: self.x = self.x.decode('utf-8')
            if (
                isinstance(test, ast.Compare)
                and _is_self_attr(test.left) is not None
                and ".decode('utf-8')" in src
            ):
                name = _is_self_attr(test.left)
                assert name is not None
                if name not in by_name or by_name[name].kind != "string":
                    raise UnsupportedShapeError(src)
                by_name[name].decode = True
                continue
            # if reader.X() is not None: self.x = T.InitFromObj(reader.X())
            if isinstance(test, ast.Compare) and _reader_call(test.left, reader) is not None:
                method = _reader_call(test.left, reader)
                assert method is not None
                acc = accessors[method]
                body = stmt.body[0]
                if (
                    acc.kind != "table"
                    or len(stmt.body) != 1
                    or not isinstance(body, ast.Assign)
                    or not isinstance(body.value, ast.Call)
                    or not isinstance(body.value.func, ast.Attribute)
                    or body.value.func.attr != "InitFromObj"
                ):
                    raise UnsupportedShapeError(src)
                name = _is_self_attr(body.targets[0])
                assert name is not None
                f = Field(name, "table", acc, target=_resolve(_dotted(body.value.func.value)))
                by_name[name] = f
                spec.fields.append(f)
                continue
            # if not reader.XIsNone(): <vector>
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                is_none = _reader_call(test.operand, reader)
                if is_none is None or not is_none.endswith("IsNone"):
                    raise UnsupportedShapeError(src)
                method = is_none[: -len("IsNone")]
                acc = accessors[method]
                first = stmt.body[-1 if "bytes(_tab.Bytes[" in src else 0]
                if isinstance(first, ast.If):  # the numpy branch of a scalar vector
                    first = first.body[0]
                if not isinstance(first, ast.Assign):
                    raise UnsupportedShapeError(src)
                name = _is_self_attr(first.targets[0])
                if name is None:
                    raise UnsupportedShapeError(src)
                if acc.kind == "vscalar" and "bytes(_tab.Bytes[" in src:
                    f = Field(name, "vbytes", acc)
                elif acc.kind == "vtable":
                    import re

                    m = re.search(r"([\w.]+)\.InitFromObj", src)
                    if m is None:
                        raise UnsupportedShapeError(src)
                    f = Field(name, "vtable", acc, target=_resolve(m.group(1)))
                elif acc.kind == "vstring":
                    f = Field(name, "vstring", acc, decode=".decode('utf-8')" in src)
                elif acc.kind == "vscalar" and "np is None" in src:
                    f = Field(name, "vscalar", acc)
                else:
                    raise UnsupportedShapeError(src)
                by_name[name] = f
                spec.fields.append(f)
                continue
        raise UnsupportedShapeError(src)
    return spec


class _Compiled:
    """One set of compiled decoders. ``ns`` is the namespace the generated Python ones
    share (they call each other by name) and holds every internal decoder by
    ``_name(cls)``; ``public`` has the ``(buf, pos)`` ones. ``native``: compile to
    ``_cfastfbs`` decoders where the class allows."""

    def __init__(self, native: bool) -> None:
        self.native = native
        self.ns: dict[str, Any] = {"np": np, "struct": struct}
        self.public: dict[type, Decoder] = {}


_names: dict[type, str] = {}


def _numpy_dtype(flags: str) -> Any:
    return np.dtype(getattr(_N, flags).name).newbyteorder("<")


# Scalars read through the views (``w``: uint32, ``s``: int32, ``h``: uint16 words of the
# buffer) or by byte; the others with struct.
_VIEW_READS: dict[str, str] = {
    "Uint8Flags": "b[{at}]",
    "BoolFlags": "b[{at}] != 0",
    "Uint16Flags": "h[({at}) >> 1]",
    "Uint32Flags": "w[({at}) >> 2]",
    "Int32Flags": "s[({at}) >> 2]",
}


def _scalar_read(flags: str, at: str, ns: dict[str, Any]) -> str:
    view = _VIEW_READS.get(flags)
    if view is not None:
        return view.format(at=at)
    st = f"_s_{flags}"
    ns[st] = struct.Struct("<" + _FLAG_CODES[flags]).unpack_from
    return f"{st}(b, {at})[0]"


def _gen(
    spec: Spec, fn_name: str, ns: dict[str, Any]
) -> tuple[str, list[type], dict[str, dict[int, type]]]:
    """Python source of the decoder function, the T classes it calls, its unions.

    The decoder takes the buffer ``b``, its ``w``/``s``/``h`` views (see ``views``) and
    the table's position: a uoffset, a length or a small scalar is a subscript of a view
    instead of a ``struct`` call, which is most of what decoding costs. FlatBuffers
    writers align every number to its size (from the start of a finished buffer, and of
    a payload after its 4-byte size prefix), so the views see them whole.
    """
    deps: list[type] = []
    unions: dict[str, dict[int, type]] = {}
    # The vtable, entry by entry: a writer trims trailing absent fields, so an entry
    # past its end (vn: its size in bytes) is 0.
    lines = [f"def {fn_name}(b, w, s, h, p):", "    v = (p - s[p >> 2]) >> 1", "    vn = h[v]"]
    values: dict[str, str] = {}
    for i, f in enumerate(spec.fields):
        var = f"f{i}"
        values[f.name] = var
        idx = f.acc.slot // 2
        o = f"o{i}"
        lines.append(f"    {o} = h[v + {idx}] if vn > {2 * idx} else 0")
        if f.kind == "scalar":
            expr = _scalar_read(f.acc.flags, f"p + {o}", ns)
            if f.acc.wrap_bool and f.acc.flags != "BoolFlags":
                expr = f"bool({expr})"
            lines.append(f"    {var} = {expr} if {o} else {f.acc.default!r}")
        elif f.kind == "string":
            lines += [
                f"    if {o}:",
                f"        q = p + {o}",
                "        q += w[q >> 2]",
                (
                    f"        {var} = b[q + 4 : q + 4 + w[q >> 2]].decode()"
                    if f.decode
                    else f"        {var} = bytes(b[q + 4 : q + 4 + w[q >> 2]])"
                ),
                "    else:",
                f"        {var} = None",
            ]
        elif f.kind == "table":
            deps.append(f.target)
            lines += [
                f"    if {o}:",
                f"        q = p + {o}",
                f"        {var} = {_name(f.target)}(b, w, s, h, q + w[q >> 2])",
                "    else:",
                f"        {var} = {spec.init_defaults[f.name]!r}",
            ]
        elif f.kind in ("vtable", "vstring", "vscalar", "vbytes"):
            lines += [
                f"    if {o}:",
                f"        q = p + {o}",
                "        q += w[q >> 2]",
                "        n = w[q >> 2]",
                "        q += 4",
            ]
            if f.kind == "vtable":
                deps.append(f.target)
                dec = _name(f.target)
                lines.append(
                    f"        {var} = [{dec}(b, w, s, h, e + w[e >> 2])"
                    " for e in range(q, q + 4 * n, 4)] if n else []"
                )
            elif f.kind == "vbytes":
                lines.append(f"        {var} = bytes(b[q : q + n])")
            elif f.kind == "vstring":
                item = "b[e + 4 : e + 4 + w[e >> 2]]"
                item = f"{item}.decode()" if f.decode else f"bytes({item})"
                lines += [
                    f"        {var} = []",
                    "        for e in range(q, q + 4 * n, 4):",
                    "            e += w[e >> 2]",
                    f"            {var}.append({item})",
                ]
            else:
                code = _FLAG_CODES[f.acc.flags]
                if np is not None:
                    dt = f"_dt_{f.acc.flags}"
                    ns[dt] = _numpy_dtype(f.acc.flags)
                    lines.append(f"        {var} = np.frombuffer(b, dtype={dt}, count=n, offset=q)")
                elif code == "B":
                    lines.append(f"        {var} = list(b[q : q + n])")
                else:
                    lines.append(f"        {var} = list(struct.unpack_from('<%d{code}' % n, b, q))")
            lines += ["    else:", f"        {var} = {spec.init_defaults[f.name]!r}"]
        else:  # union: _spec makes no other kind
            umap = _union_name(fn_name, f)
            unions[umap] = f.target
            lines += [
                f"    if {o}:",
                f"        d = {umap}[{values[f.type_attr]}]",
                f"        q = p + {o}",
                f"        {var} = d(b, w, s, h, q + w[q >> 2]) if d is not None else None",
                "    else:",
                f"        {var} = None",
            ]
    # __init__ only stores its parameters (checked by _spec): call it positionally.
    args = ", ".join(
        values.get(name, repr(default)) for name, default in spec.init_defaults.items()
    )
    cls_name = "_c_" + fn_name[3:]
    ns[cls_name] = spec.cls
    lines.append(f"    return {cls_name}({args})")
    return "\n".join(lines) + "\n", deps, unions


def _union_name(fn_name: str, f: Field) -> str:
    return f"_u_{fn_name}_{f.name}"


def _name(cls: type) -> str:
    name = _names.get(cls)
    if name is None:
        short = cls.__module__.removeprefix("mafalda.mediasoup._fbs.").replace(".", "_")
        name = _names[cls] = f"_d_{short}"
    return name


# -- the C decoders -----------------------------------------------------------------
#
# A ``_cfastfbs.Decoder`` is made of the same Spec: it reads what the generated Python
# decoder reads and gives the same object (it stores the attributes as __init__ would,
# without calling it), or raises ValueError where the buffer is out of shape.

_NATIVE_KINDS = {
    kind: i
    for i, kind in enumerate(
        ("scalar", "string", "table", "vtable", "vstring", "vscalar", "vbytes", "union")
    )
}
# One object serves every decoded table only if nobody can change it in place (the
# Python decoders make a new one from its repr each time).
_SHAREABLE = (type(None), bool, int, float, str, bytes)


def _absent_value(spec: Spec, f: Field) -> Any:
    """What the Python decoder gives for an absent field."""
    if f.kind == "scalar":
        return f.acc.default
    if f.kind in ("string", "union"):
        return None
    return spec.init_defaults[f.name]


def _native_decoder(spec: Spec, fn_name: str, ns: dict[str, Any]) -> Any:
    """The ``_cfastfbs.Decoder`` of ``spec``; UnsupportedShapeError when it cannot give
    what the Python decoder gives. Its dependencies are compiled already (in ``ns``)."""
    cls = spec.cls
    if any("__new__" in vars(k) or "__setattr__" in vars(k) for k in cls.__mro__[:-1]):
        raise UnsupportedShapeError(f"{cls.__name__}: own __new__ or __setattr__")
    if set(spec.init_order) != set(spec.init_defaults):
        raise UnsupportedShapeError(f"{cls.__name__}: __init__ skips a parameter")
    index = {f.name: i for i, f in enumerate(spec.fields)}
    fields: list[tuple[int, int, str, bool, bool, int, Any, Any]] = []
    for f in spec.fields:
        absent = _absent_value(spec, f)
        if type(absent) not in _SHAREABLE:
            raise UnsupportedShapeError(f"{cls.__name__}.{f.name}: mutable default")
        if f.kind == "vscalar" and np is not None:
            raise UnsupportedShapeError(f"{cls.__name__}.{f.name}: numpy array")
        code = _FLAG_CODES[f.acc.flags] if f.kind in ("scalar", "vscalar") else ""
        target: Any = None
        type_field = -1
        if f.kind in ("table", "vtable"):
            target = ns[_name(f.target)]
        elif f.kind == "union":
            target = ns[_union_name(fn_name, f)]
            type_field = index[f.type_attr]
        kind = _NATIVE_KINDS[f.kind]
        fields.append(
            (kind, f.acc.slot, code, f.acc.wrap_bool, f.decode, type_field, absent, target)
        )
    attrs = [(name, index.get(name, -1), spec.init_defaults[name]) for name in spec.init_order]
    if any(type(value) not in _SHAREABLE for _, _, value in attrs):
        raise UnsupportedShapeError(f"{cls.__name__}: mutable default")
    return _cfastfbs.Decoder(cls, fields, attrs)


def _fallback(cls: Any) -> Callable[..., Any]:
    def fallback(b: Any, w: Any, s: Any, h: Any, p: int) -> Any:
        return cls.InitFromBuf(b, p)

    return fallback


def views(buf: Any) -> tuple[Any, Any, Any, Any]:
    """The buffer (padded to whole words if needed) and its uint32, int32 and uint16
    views, as the compiled decoders take them."""
    if len(buf) & 3:
        buf = bytes(buf) + bytes(4 - (len(buf) & 3))
    m = memoryview(buf)
    return buf, m.cast("I"), m.cast("i"), m.cast("H")


def _public(cls: Any, internal: Callable[..., Any]) -> Decoder:
    if HAVE_NATIVE and isinstance(internal, _cfastfbs.Decoder):
        return internal  # takes (buf, pos) as well
    if internal.__name__ == "fallback":

        def decode(buf: Any, pos: int) -> Any:
            return cls.InitFromBuf(buf, pos)

        return decode

    def decode_views(buf: Any, pos: int) -> Any:
        return internal(*views(buf), pos)

    return decode_views


class _UnionDecoders(dict[int, Callable[..., Any] | None]):
    """``{union type: internal decoder}``, each member compiled on first use (None:
    unknown type)."""

    def __init__(self, members: dict[int, type], compiled: _Compiled) -> None:
        super().__init__()
        self._members = members
        self._compiled = compiled

    def __missing__(self, tag: int) -> Callable[..., Any] | None:
        cls = self._members.get(tag)
        dec = None
        if cls is not None:
            _compile(cls, self._compiled)
            dec = self._compiled.ns[_name(cls)]
        self[tag] = dec
        return dec


def _compile(cls: type, compiled: _Compiled) -> None:
    if cls in compiled.public:
        return
    ns = compiled.ns
    name = _name(cls)
    # A placeholder while its dependencies compile (and the answer if compiling fails).
    ns[name] = _fallback(cls)
    compiled.public[cls] = _public(cls, ns[name])
    try:
        spec = _spec(cls)
        source, deps, unions = _gen(spec, name, ns)
    except (UnsupportedShapeError, KeyError, AssertionError, AttributeError, TypeError):
        return
    for dep in deps:
        _compile(dep, compiled)
    for umap, members in unions.items():
        ns[umap] = _UnionDecoders(members, compiled)
    internal = None
    if compiled.native:
        try:
            internal = _native_decoder(spec, name, ns)
        except (UnsupportedShapeError, TypeError, ValueError):
            internal = None  # the Python decoder below
    if internal is None:
        exec(compile(source, f"<fastfbs {cls.__module__}>", "exec"), ns)
        internal = ns[name]
    ns[name] = internal
    compiled.public[cls] = _public(cls, internal)


#: The C decoders are in use: the extension is built and ``MAFALDA_PURE_PYTHON`` is
#: unset (or "0"). Either way both kinds give the same objects.
NATIVE = HAVE_NATIVE and os.environ.get("MAFALDA_PURE_PYTHON", "0") in ("", "0")
_default = _Compiled(native=NATIVE)
# The generated Python decoders alone, whatever NATIVE says: the fallback, kept tested.
_python = _default if not NATIVE else _Compiled(native=False)
if HAVE_NATIVE:
    _cfastfbs.set_views(views)


def decoder(cls: type) -> Decoder:
    """``(buf, pos) -> cls`` instance, equivalent to ``cls.InitFromBuf(buf, pos)`` for a
    ``buf`` of bytes or bytearray (a C decoder when ``NATIVE``)."""
    dec = _default.public.get(cls)
    if dec is None:
        _compile(cls, _default)
        dec = _default.public[cls]
    return dec


def python_decoder(cls: type) -> Decoder:
    """As ``decoder(cls)``, but the generated Python decoder whatever ``NATIVE`` says."""
    _compile(cls, _python)
    return _python.public[cls]


def union_decoders(creator: Any, python: bool = False) -> dict[int, Callable[..., Any] | None]:
    """``{union type: decoder or None}`` for a generated ``XxxCreator`` function; members
    are compiled on first use, an unknown type maps to None. The decoders take
    ``(*views(buf), pos)``; ``python``: the Python ones whatever ``NATIVE`` says."""
    return _UnionDecoders(_union_map(creator), _python if python else _default)


# -- the C encoders -----------------------------------------------------------------
#
# A ``_cfastfbs.Encoder`` packs a table from the same Spec as its decoder: per field its
# kind, vtable slot, scalar code and default (None: an optional scalar). Children are
# packed by the Encoder of their class, found in ``_encoder_registry`` (which holds
# Encoders only: the C code looks them up there).

_encoder_registry: dict[type, Any] = {}
_encoder_for: dict[type, Any] = {}


class _NoEncoder(Exception):
    pass


#: What an Encoder raises for a value it does not pack (then the Python packer packs it).
EncoderUnsupported: type[Exception] = _cfastfbs.Unsupported if HAVE_NATIVE else _NoEncoder


def _build_encoder(cls: type) -> Any:
    spec = _spec(cls)
    fields: list[tuple[int, int, str, str, Any]] = []
    children: list[type] = []
    for f in spec.fields:
        code = _FLAG_CODES[f.acc.flags] if f.kind in ("scalar", "vscalar") else ""
        default = f.acc.default if f.kind == "scalar" else None
        if f.kind == "scalar" and type(default) not in (type(None), bool, int, float):
            raise UnsupportedShapeError(f"{cls.__name__}.{f.name}: default {default!r}")
        fields.append((_NATIVE_KINDS[f.kind], (f.acc.slot - 4) // 2, code, f.name, default))
        if f.kind in ("table", "vtable"):
            children.append(f.target)
        elif f.kind == "union":
            children.extend(f.target.values())
    encoder = _cfastfbs.Encoder(cls.__name__, fields)
    _encoder_for[cls] = encoder
    _encoder_registry[cls] = encoder
    for child in children:
        _encoder_of(child)
    return encoder


def _encoder_of(cls: type) -> Any:
    if cls in _encoder_for:
        return _encoder_for[cls]
    _encoder_for[cls] = None  # while its children are built (a cycle ends here)
    try:
        return _build_encoder(cls)
    except (UnsupportedShapeError, KeyError, AssertionError, AttributeError, TypeError,
            ValueError, OSError):  # fmt: skip
        _encoder_for[cls] = None
        _encoder_registry.pop(cls, None)
        return None


def native_encoder(cls: type) -> Callable[[Any], tuple[bytes, int]] | None:
    """The C encoder of table class ``cls`` (``encoder(table) -> (bytes, root)``, root
    the table's offset from the end of the bytes), None when ``NATIVE`` is off or the
    class is of a shape it does not know. It raises ``EncoderUnsupported`` for a value
    it does not pack."""
    return _encoder_of(cls) if NATIVE else None


# -- packing ------------------------------------------------------------------------
#
# A generated ``Pack`` calls a module-level one-line wrapper per field
# (``XAddF(builder, v)`` -> ``builder.PrependUint8Slot(3, v, 0)``) and each child's
# ``Pack``. The compiled packer is the same ``Pack`` body with those wrappers inlined
# and children packed by their own compiled packers: the same builder calls in the
# same order, hence the same bytes.


def _wrappers(tree: ast.Module) -> dict[str, tuple[list[str], ast.expr]]:
    """Module-level functions whose body is one expression using each parameter once."""
    result: dict[str, tuple[list[str], ast.expr]] = {}
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or len(node.body) != 1:
            continue
        stmt = node.body[0]
        if isinstance(stmt, ast.Expr | ast.Return) and stmt.value is not None:
            params = [a.arg for a in node.args.args]
            names = [n.id for n in ast.walk(stmt.value) if isinstance(n, ast.Name)]
            if all(names.count(p) <= 1 for p in params):
                result[node.name] = (params, stmt.value)
    return result


class _Substitute(ast.NodeTransformer):
    def __init__(self, mapping: dict[str, ast.expr]) -> None:
        self.mapping = mapping

    def visit_Name(self, node: ast.Name) -> ast.expr:
        return self.mapping.get(node.id, node)


class _Inline(ast.NodeTransformer):
    def __init__(self, wrappers: dict[str, tuple[list[str], ast.expr]]) -> None:
        self.wrappers = wrappers

    def visit_Call(self, node: ast.Call) -> ast.expr:
        self.generic_visit(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "py_type"
            and ast.unparse(func.value) == "flatbuffers.number_types.UOffsetTFlags"
            and len(node.args) == 1
        ):
            return node.args[0]  # int() of an offset, which is an int
        if isinstance(func, ast.Name) and func.id in self.wrappers and not node.keywords:
            params, expr = self.wrappers[func.id]
            if len(params) == len(node.args):
                body = _Substitute(dict(zip(params, node.args, strict=True))).visit(
                    copy.deepcopy(expr)
                )
                result: ast.expr = self.visit(body)
                return result
        if isinstance(func, ast.Attribute) and func.attr == "Pack" and len(node.args) == 1:
            # obj.Pack(builder) -> _P[type(obj)](obj, builder)
            target = func.value
            dispatch = ast.Subscript(
                value=ast.Name("_P", ast.Load()),
                slice=ast.Call(ast.Name("type", ast.Load()), [target], []),
                ctx=ast.Load(),
            )
            return ast.Call(dispatch, [copy.deepcopy(target), node.args[0]], [])
        return node


_SLOT_FORMATS: dict[str, str] = {
    "PrependBoolSlot": "?",
    "PrependByteSlot": "B",
    "PrependUint8Slot": "B",
    "PrependUint16Slot": "H",
    "PrependUint32Slot": "I",
    "PrependUint64Slot": "Q",
    "PrependInt8Slot": "b",
    "PrependInt16Slot": "h",
    "PrependInt32Slot": "i",
    "PrependInt64Slot": "q",
    "PrependFloat32Slot": "f",
    "PrependFloat64Slot": "d",
}


def _builder_call(stmt: ast.stmt, builder: str) -> tuple[str, list[ast.expr]] | None:
    """``builder.Method(args)`` as a statement -> (Method, args)."""
    if (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and isinstance(stmt.value.func, ast.Attribute)
        and isinstance(stmt.value.func.value, ast.Name)
        and stmt.value.func.value.id == builder
        and not stmt.value.keywords
    ):
        return stmt.value.func.attr, list(stmt.value.args)
    return None


def _inline_slots(stmts: list[ast.stmt], builder: str, reserve: list[int]) -> list[ast.stmt]:
    """The field writes of a table, with the builder's slot methods inlined on the locals
    ``_buf``/``_h``/``_end`` (buffer, head, buffer length) and ``_vt`` (vtable)."""
    out: list[ast.stmt] = []
    for stmt in stmts:
        if isinstance(stmt, ast.If) and not stmt.orelse:
            stmt.body = _inline_slots(stmt.body, builder, reserve)
            out.append(stmt)
            continue
        call = _builder_call(stmt, builder)
        if call is None or len(call[1]) != 3:
            raise UnsupportedShapeError(ast.unparse(stmt))
        method, (slot, value, default) = call
        if not isinstance(slot, ast.Constant) or not isinstance(default, ast.Constant):
            raise UnsupportedShapeError(ast.unparse(stmt))
        d = default.value
        if isinstance(d, float) and not math.isfinite(d):  # no literal for it
            raise UnsupportedShapeError(ast.unparse(stmt))
        if method == "PrependUOffsetTRelativeSlot":
            size = 4
            write = [
                "_o = _end - _h",
                "if _v > _o:",
                "    raise OffsetArithmeticError('flatbuffers: Offset arithmetic error.')",
                "_h -= 4",
                "_pk_u32(_buf, _h, _o - _v + 4)",
            ]
            cond = "_v != 0 or _fd" if d == 0 else None
            if cond is None:
                raise UnsupportedShapeError(ast.unparse(stmt))
        elif method in _SLOT_FORMATS:
            code = _SLOT_FORMATS[method]
            size = struct.calcsize(code)
            store = f"_pk_{code}" if code != "?" else "_pk_bool"
            write = [f"_h -= {size}", f"{store}(_buf, _h, _v)"]
            cond = f"_v != {d!r}" + (" or _fd" if d is not None else "")
        else:
            raise UnsupportedShapeError(ast.unparse(stmt))
        reserve[0] += 2 * size - 1
        lines = [f"_v = {ast.unparse(value)}", f"if {cond}:"]
        if size > 1:
            lines += [
                f"    _p = (_h - _end) & {size - 1}",
                "    if _p:",
                "        _buf[_h - _p:_h] = _Z[_p]",
                "        _h -= _p",
                f"    if {builder}.minalign < {size}:",
                f"        {builder}.minalign = {size}",
            ]
        lines += ["    " + line for line in write]
        lines.append(f"    _vt{slot.value!r} = _end - _h")
        out.extend(ast.parse("\n".join(lines)).body)
    return out


def _inline_table(fn: ast.FunctionDef) -> None:
    """Inline ``builder.StartObject(n)``, the slot writes and ``builder.EndObject()``: the
    vtable is kept in locals and written (or shared) as ``FastBuilder.WriteVtable`` does."""
    builder = fn.args.args[1].arg
    body = fn.body
    start = next(
        i for i, st in enumerate(body) if (_builder_call(st, builder) or ("",))[0] == "StartObject"
    )
    end = next(
        i
        for i, st in enumerate(body)
        if isinstance(st, ast.Assign) and ast.unparse(st.value) == f"{builder}.EndObject()"
    )
    start_call = body[start]
    assert isinstance(start_call, ast.Expr) and isinstance(start_call.value, ast.Call)
    num_fields = start_call.value.args[0]
    if not isinstance(num_fields, ast.Constant) or not isinstance(num_fields.value, int):
        raise UnsupportedShapeError(ast.unparse(start_call))
    end_assign = body[end]
    assert isinstance(end_assign, ast.Assign)
    n = num_fields.value
    reserve = [0]
    fields = _inline_slots(body[start + 1 : end], builder, reserve)
    # Room for the fields, the soffset (aligned) and the largest vtable.
    room = reserve[0] + 7 + 2 * (n + 2)
    slots = [f"_vt{i}" for i in range(n)]
    setup = ast.parse(
        "\n".join(
            [
                # StartObject(n), inlined: the vtable's entries are the locals _vt0...
                f"if {builder}.nested:",
                "    raise IsNestedError()",
                f"_fd = {builder}.forceDefaults",
                f"if {builder}.head < {room}:",
                f"    _reserve({builder}, {room})",
                f"_buf = {builder}.Bytes",
                f"_h = {builder}.head",
                "_end = len(_buf)",
                "_oe = _end - _h",
                " = ".join([*slots, "0"]),
            ]
        )
    ).body
    # EndObject(), inlined: FastBuilder.WriteVtable on the locals (same key, same bytes).
    entries = "".join(f"_oo - {e} if {e} else 0, " for e in slots)
    store = ast.parse(
        "\n".join(
            [
                "_p = (_h - _end) & 3",
                "if _p:",
                "    _buf[_h - _p:_h] = _Z[_p]",
                "    _h -= _p",
                f"if {builder}.minalign < 4:",
                f"    {builder}.minalign = 4",
                "_h -= 4",
                "_oo = _end - _h",
                f"_key = (_oo - _oe, {entries})",
                "if not _key[-1]:",
                "    _key = _trim(_key)",
                f"_x = {builder}.vtables.get(_key)",
                "if _x is None:",
                "    _s = 2 * len(_key) + 2",
                "    _h -= _s",
                "    _vtw[len(_key)](_buf, _h, _s, *_key)",
                "    _pk_i(_buf, _end - _oo, _end - _h - _oo)",
                f"    {builder}.vtables[_key] = _end - _h",
                "else:",
                "    _h = _end - _oo",
                "    _pk_i(_buf, _h, _x - _oo)",
                f"{builder}.head = _h",
                f"{ast.unparse(end_assign.targets[0])} = _oo",
            ]
        )
    ).body
    fn.body = body[:start] + setup + fields + store + body[end + 1 :]


def _trim(key: tuple[int, ...]) -> tuple[int, ...]:
    """A vtable key without its trailing absent fields (its first item, the object's
    size, is never 0)."""
    n = len(key)
    while not key[n - 1]:
        n -= 1
    return key[:n]


class _VtableWriters(dict[int, Callable[..., None]]):
    """``{key length: pack_into of the vtable's size and its key}``."""

    def __missing__(self, n: int) -> Callable[..., None]:
        writer: Callable[..., None] = struct.Struct(f"<{n + 1}H").pack_into
        self[n] = writer
        return writer


def _reserve(builder: Any, size: int) -> None:
    """Grow the buffer until ``size`` bytes are free before the head (the bytes written
    are the same: offsets count from the end of the buffer)."""
    while builder.head < size:
        old = len(builder.Bytes)
        builder.GrowByteBuffer()
        builder.head += len(builder.Bytes) - old


_pack_namespace: dict[str, Any] = {
    "IsNestedError": IsNestedError,
    "_reserve": _reserve,
    "_trim": _trim,
    "_vtw": _VtableWriters(),
    "OffsetArithmeticError": OffsetArithmeticError,
    "_Z": [bytes(n) for n in range(8)],
    "_pk_u32": _pack_u32,
    "_pk_bool": struct.Struct("<?").pack_into,
    **{f"_pk_{c}": struct.Struct("<" + c).pack_into for c in "BHIQbhiqfd"},
}


def _compile_packer(cls: type) -> Callable[[Any, Any], int]:
    module = importlib.import_module(cls.__module__)
    tree = _module_ast(module)
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    methods = {fn.name: fn for fn in classes[cls.__name__].body if isinstance(fn, ast.FunctionDef)}
    pack = copy.deepcopy(methods["Pack"])
    pack.name = "_p_" + _name(cls)[3:]
    pack.decorator_list = []
    pack = _Inline(_wrappers(tree)).visit(pack)
    # On a copy: a shape it does not know can stop the inlining half-way (the fields
    # under an ``if`` inlined, a later one not), which must leave nothing of it.
    inlined = copy.deepcopy(pack)
    try:
        _inline_table(inlined)
    except (UnsupportedShapeError, StopIteration):
        pass  # keep the builder's slot methods
    else:
        pack = inlined
    source = ast.unparse(ast.fix_missing_locations(pack))
    namespace = dict(vars(module))
    namespace.update(_pack_namespace)
    namespace["_P"] = packers
    exec(compile(source, f"<fastfbs pack {cls.__module__}>", "exec"), namespace)
    fn: Callable[[Any, Any], int] = namespace[pack.name]
    return fn


class _Packers(dict[type, Callable[[Any, Any], int]]):
    """``{T class: packer(obj, builder) -> offset}``, compiled on first use."""

    def __missing__(self, cls: type) -> Callable[[Any, Any], int]:
        try:
            fn = _compile_packer(cls)
        except (KeyError, SyntaxError, TypeError, ValueError, AttributeError, OSError):
            fn = getattr(cls, "Pack")  # noqa: B009 - not generated: its own Pack
        self[cls] = fn
        return fn


#: ``packers[type(obj)](obj, builder)`` is ``obj.Pack(builder)``, with fewer calls.
packers = _Packers()


class Prepacked:
    """A table packed once (by ``channel.prepack``), which packs into later buffers by
    copying its bytes: their offsets are relative (to the end of the buffer, or from
    one field to what it points to), so they hold wherever the block lands at the same
    alignment. For the option tables that sequential creations repeat."""

    __slots__ = ("align", "data", "root")

    def __init__(self, data: bytes, root: int, align: int) -> None:
        self.data = data  # the packed bytes, the table and everything below it
        self.root = root  # the table's offset from the end of ``data``
        self.align = align  # the largest alignment inside ``data``

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the object API's name
        """As a table's own Pack(), for the stock packers of enclosing tables."""
        return _pack_prepacked(self, builder)


def _pack_prepacked(obj: Prepacked, builder: Any) -> int:
    builder.Prep(obj.align, 0)  # the block's end lands on a multiple of its alignment
    data = obj.data
    size = len(data)
    if builder.head < size:
        _reserve(builder, size)
    head = builder.head - size
    builder.Bytes[head : head + size] = data
    builder.head = head
    offset: int = len(builder.Bytes) - head - size + obj.root
    return offset


packers[Prepacked] = _pack_prepacked


def prepack(table: Any) -> Prepacked:
    """``table`` (an object-API table) packed once, to stand for it in later request
    bodies; TypeError for a number out of its field's range, as when sending it."""
    builder = FastBuilder(256)
    try:
        root = packers[type(table)](table, builder)
    except struct.error as error:
        raise TypeError(f"bad number in {type(table).__name__}: {error}") from None
    return Prepacked(bytes(builder.Bytes[builder.head :]), root, builder.minalign)


class PrepackedCache:
    """Tables packed once per distinct content of the arguments they are made of
    (keyed by their pickle, which tells True from 1 and a tuple from a list), for the
    option sets, codecs and header extensions that apps repeat request after request.
    Building validates as it goes, deterministically: a key seen before built without
    error. Bounded: emptied when full."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._tables: dict[bytes, Any] = {}  # a Prepacked, or a tuple of them

    def get(self, key: Any, build: Callable[[], Any]) -> Any:
        """The prepacked table that ``build()`` makes for ``key``; ``build()``'s own
        table when ``key`` is not plain data."""
        return self._get(key, lambda: prepack(build()), build)

    def get_list(self, key: Any, build: Callable[[], list[Any]]) -> list[Any]:
        """As ``get``, for a list of tables (``build()`` makes them): a new list of
        their prepacked forms (one lookup for, say, all the codecs of some RTP
        parameters)."""
        return list(self._get(key, lambda: tuple(prepack(t) for t in build()), build))

    def _get(self, key: Any, make: Callable[[], Any], build: Callable[[], Any]) -> Any:
        try:
            pickled = pickle.dumps(key, pickle.HIGHEST_PROTOCOL)
        except Exception:  # not plain data: build it each time
            return build()
        found = self._tables.get(pickled)
        if found is None:
            found = make()
            if len(self._tables) >= self._size:
                self._tables.clear()
            self._tables[pickled] = found
        return found

    def __len__(self) -> int:
        return len(self._tables)


if HAVE_NATIVE:
    _cfastfbs.set_encoders(_encoder_registry, Prepacked)
