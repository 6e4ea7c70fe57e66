"""mafalda.remote.protocol: canned messages, and a hypothesis fuzz of the parser."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mafalda.remote import protocol as p


def test_request_round_trip() -> None:
    text = p.dumps(p.make_call(7, "h1", "dump", [1, "a"], {"x": None}))
    req = p.parse_client_message(text)
    assert (req.id, req.method) == (7, "call")
    call = p.parse_call(req)
    assert call == p.Call("h1", "dump", [1, "a"], {"x": None})


def test_notification_has_no_id() -> None:
    req = p.parse_client_message(p.dumps(p.make_call(None, None, "close", [], {})))
    assert req.id is None


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("not json", p.PARSE_ERROR),
        ("[1, 2]", p.INVALID_REQUEST),
        ('{"jsonrpc": "1.0", "method": "x", "id": 1}', p.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "id": 1}', p.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "x", "id": true}', p.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "x", "id": {}}', p.INVALID_REQUEST),
        ('{"jsonrpc": "2.0", "method": "x", "id": 1, "params": [1]}', p.INVALID_PARAMS),
        ("[" * 200 + "]" * 200, p.INVALID_REQUEST),
    ],
)
def test_invalid_messages(text: str, code: int) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_client_message(text)
    assert info.value.code == code


def test_too_large() -> None:
    with pytest.raises(p.ProtocolError, match="too large"):
        p.parse_client_message('{"jsonrpc": "2.0", "method": "ping"}', max_size=10)


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"target": 1, "method": "dump"}, p.INVALID_PARAMS),
        ({"method": "_channel"}, p.METHOD_NOT_FOUND),
        ({"method": "__class__"}, p.METHOD_NOT_FOUND),
        ({"method": "a b"}, p.METHOD_NOT_FOUND),
        ({"method": None}, p.METHOD_NOT_FOUND),
        ({"method": "dump", "args": {}}, p.INVALID_PARAMS),
        ({"method": "dump", "kwargs": []}, p.INVALID_PARAMS),
        ({"method": "dump", "kwargs": {"not an identifier": 1}}, p.INVALID_PARAMS),
    ],
)
def test_invalid_calls(params: dict[str, Any], code: int) -> None:
    with pytest.raises(p.ProtocolError) as info:
        p.parse_call(p.Request(3, "call", params))
    assert (info.value.code, info.value.request_id) == (code, 3)


def test_values() -> None:
    assert p.decode_bytes(p.encode_bytes(b"\x00\xff")) == b"\x00\xff"
    assert p.is_bytes({"$bytes": "AA=="}) and not p.is_bytes({"$bytes": 1})
    with pytest.raises(p.ProtocolError):
        p.decode_bytes({"$bytes": "!!"})
    ref = p.make_ref("router", "h", "w", {"closed": False})
    assert p.is_ref(ref) and ref["parent"] == "w"
    assert not p.is_ref({"$ref": "router"})
    assert p.is_error({"$error": "TypeError", "message": "m"})


def test_server_messages() -> None:
    ok = p.parse_server_message(p.dumps(p.result_response(1, {"value": 2})))
    assert ok == p.Response(1, {"value": 2}, None)
    err = p.parse_server_message(p.dumps(p.error_response(2, p.FORBIDDEN, "no", {"a": 1})))
    assert isinstance(err, p.Response) and err.error == {
        "code": p.FORBIDDEN,
        "message": "no",
        "data": {"a": 1},
    }
    event = p.parse_server_message(p.dumps(p.event_notification("h", "events", "x", [], None)))
    assert event == p.Notification(
        "event", {"target": "h", "emitter": "events", "event": "x", "args": []}
    )
    for bad in ("{}", '{"jsonrpc": "2.0", "id": 1, "error": 5}', '{"jsonrpc": "2.0"}'):
        with pytest.raises(p.ProtocolError):
            p.parse_server_message(bad)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.text() | st.binary().map(lambda b: b.decode("latin-1")))
def test_fuzz_parser_with_text(text: str) -> None:
    """Any text: a Request or a ProtocolError, nothing else."""
    try:
        req = p.parse_client_message(text)
    except p.ProtocolError as error:
        assert error.code in {p.PARSE_ERROR, p.INVALID_REQUEST, p.INVALID_PARAMS}
        return
    assert isinstance(req.method, str)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "jsonrpc": st.sampled_from(["2.0", "1.0", 2]),
            "id": json_values,
            "method": st.sampled_from(["call", "hello", "ping"]) | json_values,
            "params": st.fixed_dictionaries(
                {},
                optional={
                    "target": json_values,
                    "method": st.sampled_from(["dump", "close", "_x"]) | json_values,
                    "args": json_values,
                    "kwargs": json_values,
                },
            )
            | json_values,
        },
    )
)
def test_fuzz_parser_with_structures(message: dict[str, Any]) -> None:
    try:
        req = p.parse_client_message(json.dumps(message))
        if req.method == "call":
            call = p.parse_call(req)
            assert not call.method.startswith("_")
    except p.ProtocolError:
        pass


# Keys that look like the protocol's markers, and JSON within orjson's integer range.
marker_keys = st.sampled_from(["$ref", "$bytes", "$error", "$$ref", "$", "$$", "id", "message"])
wire_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children) | st.dictionaries(marker_keys | st.text(), children),
    max_leaves=25,
)


def _no_special(marker: dict[str, Any]) -> Any:
    raise AssertionError(f"plain data read as a marker: {marker}")


def _no_object(value: Any) -> Any:
    raise AssertionError(f"not JSON: {value!r}")


@settings(max_examples=300, deadline=None)
@given(wire_values)
def test_any_json_round_trips(value: Any) -> None:
    """Dicts whose keys look like markers ("$ref", "$bytes"...) are data, never markers."""
    data = p.encode_message({"v": value}, _no_object)
    assert p.unescape(json.loads(data), _no_special)["v"] == value


def test_marker_keys_are_escaped() -> None:
    app_data = {
        "$ref": "router",
        "id": "h",
        "$bytes": "AA==",
        "x": [{"$error": "E", "message": ""}],
    }
    data = p.encode_message({"v": app_data, "b": b"\x01"}, _no_object)
    wire = json.loads(data)
    assert wire["v"]["$$ref"] == "router" and wire["b"] == {"$bytes": "AQ=="}
    assert p.unescape(wire, lambda m: p.decode_bytes(m)) == {"v": app_data, "b": b"\x01"}
    # Without markers or "$" keys, a message goes through as it is.
    assert not p.needs_walk(p.encode_message({"v": {"a": [1, "b"]}}, _no_object))


class _Served:
    """Stands for a served object: convert() makes it a reference."""

    def __init__(self, handle: str) -> None:
        self.handle = handle


def _counting_convert(calls: list[Any]) -> Any:
    def convert(value: Any) -> Any:
        calls.append(value)
        if isinstance(value, _Served):
            return p.make_ref("router", value.handle, None, {"x": {"$$k": value.handle}})
        return f'repr "${type(value).__name__}'  # a string with a quote and a dollar

    return convert


with_objects = st.recursive(
    wire_values
    | st.binary(max_size=8)
    | st.frozensets(st.integers(0, 3), max_size=3)
    | st.builds(_Served, st.sampled_from(["a", "b"]))
    | st.builds(object),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(marker_keys | st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(with_objects)
def test_encoding_is_the_walks_and_converts_each_object_once(value: Any) -> None:
    calls: list[Any] = []
    data = p.encode_message({"v": value}, _counting_convert(calls))
    walked: list[Any] = []
    expected = p.escape({"v": value}, _counting_convert(walked))
    assert json.loads(data) == json.loads(json.dumps(expected))
    assert len(calls) == len({id(v) for v in calls}) == len({id(v) for v in walked})


def test_objects_with_marker_keys_beside_them_are_converted_once() -> None:
    calls: list[Any] = []
    router = _Served("r1")
    message = {"v": [router, {"$ref": "data"}, b"\x02", router]}
    wire = json.loads(p.encode_message(message, _counting_convert(calls)))
    assert calls == [router]  # a reference carries its state, once made, wherever it goes
    assert wire["v"][1] == {"$$ref": "data"} and wire["v"][2] == {"$bytes": "Ag=="}
    assert (
        wire["v"][0]
        == wire["v"][3]
        == {"$ref": "router", "id": "r1", "state": {"x": {"$$k": "r1"}}}
    )


def test_integers_past_64_bits_beside_plain_states_are_encoded() -> None:
    """A message whose integers orjson cannot write is walked, then written with them as
    they are, and with the plain states (Fragments) of the references it holds: the
    standard library's encoder, used before, failed on those (the message was dropped)."""

    def convert(value: Any) -> Any:
        assert isinstance(value, _Served)
        return p.make_ref("router", value.handle, None, orjson.Fragment(b'{"closed":false}'))

    message = {"v": [_Served("r1"), {"$k": 2**70, "small": -(2**63)}], "n": -(2**64)}
    wire = json.loads(p.encode_message(message, convert))
    assert wire["v"][0] == {"$ref": "router", "id": "r1", "state": {"closed": False}}
    assert wire["v"][1] == {"$$k": 2**70, "small": -(2**63)} and wire["n"] == -(2**64)


def _nested(levels: int) -> Any:
    value: Any = 1
    for i in range(levels):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("batch", [False, True])
def test_messages_nested_too_deeply_are_refused(batch: bool) -> None:
    def frame(levels: int) -> bytes:
        # the message itself is 2 containers (the request, its params) around kwargs
        message = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": _nested(levels)}}
        return json.dumps([message, message] if batch else message).encode()

    limit = p._MAX_DEPTH - 2 - batch
    assert len(p.parse_client_frame(frame(limit))) == 1 + batch
    with pytest.raises(p.ProtocolError, match="nested too deeply") as info:
        p.parse_client_frame(frame(limit + 1))
    assert info.value.code == p.INVALID_REQUEST


_JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.text(alphabet='ab[]{}"\\:, ')
_JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='k[{"\\', max_size=3), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(_JSON_VALUES)
def test_depth_from_text_is_the_walks_or_unknown(value: Any) -> None:
    text = json.dumps(value)
    expected = p._depth(value)
    assert p._text_depth(text) in (None, expected)
    assert p._text_depth(text.encode()) == p._text_depth(text)
    if not any(c in s for s in _strings(value) for c in '[]{}"\\'):
        # strings without brackets, quotes or backslashes: the text always tells
        assert p._text_depth(text) == expected


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [*value, *(s for v in value.values() for s in _strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def test_depth_from_text_of_a_batch_and_past_the_limit() -> None:
    request = {"jsonrpc": "2.0", "id": 1, "method": "m", "params": {"x": _nested(5)}}
    assert p._text_depth(json.dumps([request] * 100)) == 8
    assert p._text_depth(json.dumps(_nested(500))) == p._MAX_DEPTH + 1
    assert p._text_depth(json.dumps({"a": "x]"})) is None  # a bracket in a string
    assert p._text_depth(json.dumps({"a": 'say "hi"'})) is None  # an escaped quote
    assert p._text_depth(json.dumps(['"]"'])) is None  # quotes that would pair up wrongly


def test_depth_counts_containers_on_the_deepest_path() -> None:
    assert p._depth(1) == 0
    assert p._depth("[[[") == 0
    assert p._depth({}) == 1
    assert p._depth([1, {"a": []}, []]) == 3
    assert p._depth([_nested(3), _nested(7), 5]) == 8
    assert p._depth(_nested(500)) == p._MAX_DEPTH + 1  # counting stops past the limit
