"""The wire protocol of Remote Mediasoup / Remote Mafalda, version ``mafalda-remote/2``.

Pure functions, no I/O. Every WebSocket text frame is one JSON-RPC 2.0 message, or a
batch of them (a JSON array, as JSON-RPC 2.0's): both sides gather the messages of one
turn of their event loop into one frame. Messages of a batch are handled in order, each
as if it came alone (a client's batch gets no array answer: each answer comes when its
call is done, possibly in a batch of its own).

Client to server:

- ``{"jsonrpc": "2.0", "id": 1, "method": "hello", "params": {"version": "mafalda-remote/2",
  "token": "...", "session": null}}``: must come first. The result is ``{"version", "session",
  "serves": "mediasoup" | "mafalda", "mediasoupVersion", "gracePeriod", "lastId", "root":
  <root state>, "schemas", "objects": [<ref>...]}``; ``objects`` lists every live object
  the session owns, with its full state (empty for a new session, the surviving objects
  when resuming a session within its grace period, which is ``gracePeriod`` seconds).
  ``lastId`` is the highest integer request id the session has seen (0 for a new one):
  answers to requests of its previous link may still come on the new one (calls keep
  running), so a client resuming from another process numbers its requests above it.
  Frames that reach a link after its session was resumed on another are not read.
- ``{"jsonrpc": "2.0", "id": 2, "method": "call", "params": {"target": <handle> | null,
  "method": "create_router", "args": [...], "kwargs": {...}}}``: calls a public method of an
  owned object (``target`` null: the served root, the mediasoup module or the Mafalda
  instance). The result is ``{"value": <encoded return value>, "state": <state delta>}``.
  Sent without ``id`` (a JSON-RPC notification) for fire-and-forget calls (``close()``,
  ``send()``); their failure comes back as an ``error`` notification.
- ``{"jsonrpc": "2.0", "method": "cancel", "params": {"id": 7}}``: the client gave up on
  call 7 (its caller was cancelled, or it timed out). A held call (``wait_*()``, as a
  worker's ``wait_closed()``, which runs until something ends) ends now, and is answered
  with a ``CANCELLED`` (-32006) error: it no longer holds one of the calls a session may
  have running at once. Any other call runs to its end (a creation stopped half-way
  could leave what it made in the worker) and is answered as usual, late (the client
  closes what it made: nobody holds it). (A call whose awaited work the server did not
  cancel itself ends in ``CANCELLED`` too: a library closing under it.) Sent with an
  ``id``, it is answered ``true``
  when it cancelled a call, else ``false``. (A server that knows no ``cancel`` answers
  nothing to it: an unknown method sent without ``id`` gets no answer.) When a session
  is resumed, the held calls of its previous link are cancelled, without an answer: the
  client failed them as the link dropped.
- ``{"jsonrpc": "2.0", "method": "bye"}``: close the session's objects now (no grace);
  calls after it are refused ('session closed'). Sent with an ``id`` (a request), it is
  answered ``"result": null`` once they are closed.

Server to client (notifications, no ``id``):

- ``{"method": "event", "params": {"target": <handle>, "emitter": "events" | "observer",
  "event": "score", "args": [...], "state": <state delta>}}``.
- The same with ``"target": null``: an event of the served root, a Mafalda pool's (Remote
  Mafalda; a Remote Mediasoup server sends none), its ``state`` what changed of the
  root's (``workers``, ``stats``): the pool's ``events`` 'workerdied' (the loss) and
  'workerreplaced' (a worker), its ``observer`` 'newworker', 'workerclose',
  'workerdied', 'newrouter', 'newwebrtcserver' and 'close'. A worker travels as it is in
  the root's ``workers``: ``{"pid", "closed", "died"}``. Each session is told only of its
  own: a 'workerdied' loss lists the ids of this session's objects (and of the child
  routers its transports and RTP observers were on), others dropped; 'newrouter' and
  'newwebrtcserver' come only for the session's own, before the answer of the call that
  made them. The objects of a dead worker send their close events before the
  'workerdied'. Events that fire while the session has no link (within its grace
  period) are not sent. (A client that knows no root event drops it: an event whose
  target is not a handle it knows is ignored.)
- ``{"method": "state", "params": {"target": <handle> | null, "state": <state delta>}}``.
- ``{"method": "error", "params": {"target": <handle> | null, "method": "close",
  "error": {"code", "message", "data"}}}``: a fire-and-forget call failed on the server.

State: a reference carries the object's full state (its properties, ``class``,
``app_data``) where the object first appears; after that answers and events carry only
the properties that changed since the last state sent for that object (``state`` is
left out when nothing changed). A property never changes back to "absent". A router's
state also holds ``"_aliases": {"producers": {<key>: <handle>}, "dataProducers": {...}}``:
the keys it finds (data) producers by (``consume()``, ``has_producer()``...) that are not
the id of one under its transports (aliases, from ``alias_producer()``, made by the
client or on the server; a Mafalda router's copies piped in from another router), each
with the handle of its (data) producer (null: not the client's); it is sent again when
a consume the server prepared (``RemoteServer.before_consume``) or a
``pipe_to_router()`` changed it.

Values: JSON values pass through (wire dicts keep their camelCase keys), bytes travel as
``{"$bytes": "<base64>"}``, tuples and sets as lists, objects as references ``{"$ref":
"<kind>", "id": "<handle>", "parent": "<handle>", "state": {...}}`` (``state`` and
``parent`` only where the object first appears or changes; ``"plain": true`` when that
state holds no marker and no ``$`` key, so that it is read as it is; ``"gone": true``,
no state, for an object already closed and forgotten that an event names again, such as
the transport in a WebRtcServer's 'webrtctransportunhandled'), exceptions (event
arguments, such as a worker's death) as ``{"$error": "<class name>", "message": "..."}``.
So that those markers cannot be confused with data, every other dict key that starts
with ``$`` is sent with one more ``$`` in front (``{"$ref": 1}`` in app_data travels as
``{"$$ref": 1}``); the receiver removes it. Integers travel within 64 bits (orjson's
range: a larger one is sent, but read back as a float); floats NaN and +-Infinity, which
JSON lacks, travel as ``null`` (no value of the worker's is one: mediasoup's validation
refuses them in parameters; only an app's own ``app_data`` may hold one).

Changes from ``mafalda-remote/1``: batches both ways, state deltas instead of full
snapshots, the ``error`` notification, ``gracePeriod`` in the hello result, ``class``
(was ``$class``) in states, and the ``$`` escaping of keys.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = [
    "ALIASES",
    "AUTH_FAILED",
    "CANCELLED",
    "FORBIDDEN",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "METHOD_NOT_FOUND",
    "NOT_AUTHENTICATED",
    "PARSE_ERROR",
    "PROTOCOL_VERSION",
    "RATE_LIMITED",
    "SESSION_TAKEN_OVER",
    "REMOTE_ERROR",
    "VERSION_MISMATCH",
    "Call",
    "Notification",
    "ProtocolError",
    "Request",
    "Response",
    "call_error_notification",
    "decode_bytes",
    "dumps",
    "encode_bytes",
    "encode_message",
    "escape",
    "error_response",
    "event_notification",
    "is_bytes",
    "is_error",
    "is_ref",
    "make_call",
    "make_ref",
    "needs_walk",
    "notification",
    "parse_call",
    "parse_client_frame",
    "parse_client_message",
    "parse_server_frame",
    "parse_server_message",
    "request",
    "result_response",
    "unescape",
]

PROTOCOL_VERSION = "mafalda-remote/2"
#: The state key of a router's aliases: ``{"producers": {key: handle}, "dataProducers":
#: {...}}``, what it finds (data) producers by besides the ids of those under its
#: transports (see the docstring). A ``_`` name: no property of the proxy, as a Router
#: has none.
ALIASES = "_aliases"

# JSON-RPC 2.0 standard codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
# Ours (implementation-defined server errors).
REMOTE_ERROR = -32000  #: the called method raised; ``data`` names the exception
NOT_AUTHENTICATED = -32001
AUTH_FAILED = -32002
VERSION_MISMATCH = -32003
FORBIDDEN = -32004  #: unknown object, or one owned by another connection
RATE_LIMITED = -32005
CANCELLED = -32006  #: a held call its client cancelled, or one whose wait was cancelled under it
#: The WebSocket close code a connection gets when its session is resumed on another
#: connection (a client does not reconnect after it).
SESSION_TAKEN_OVER = 4001

_MAX_DEPTH = 64


class ProtocolError(Exception):
    """A message that breaks the protocol: ``code`` is the JSON-RPC error code to answer."""

    def __init__(self, code: int, message: str, request_id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass(frozen=True)
class Request:
    """A client request (``id`` None: a notification, no answer expected)."""

    id: int | str | None
    method: str
    params: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """The parameters of a ``call`` request."""

    target: str | None
    method: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Response:
    """A server answer: ``result`` or ``error`` (``{"code", "message", "data"?}``)."""

    id: int | str | None
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True)
class Notification:
    """A server notification (``event`` or ``state``)."""

    method: str
    params: dict[str, Any]


# -- building -------------------------------------------------------------------------------


def dumps(message: dict[str, Any]) -> bytes:
    """A message of plain JSON values as UTF-8 JSON (see ``encode_message`` for others)."""
    return orjson.dumps(message)


def needs_walk(data: bytes | str) -> bool:
    """Whether encoded JSON may hold a marker or a ``$`` key (a quote followed by ``$``):
    messages without one are plain JSON both ways, encoded and decoded without a walk
    through their values in Python."""
    return (b'"$' in data) if isinstance(data, bytes) else ('"$' in data)


def escape(value: Any, convert: Callable[[Any], Any]) -> Any:
    """``value`` as wire JSON: ``$`` keys escaped, bytes as ``$bytes``, tuples and sets as
    lists; anything else is ``convert(value)`` (which returns wire JSON, or raises)."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = key if isinstance(key, str) else str(key)
            out["$" + name if name[:1] == "$" else name] = escape(item, convert)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [escape(item, convert) for item in value]
    if isinstance(value, bytes | bytearray | memoryview):
        return encode_bytes(value)
    return convert(value)


def unescape(value: Any, special: Callable[[dict[str, Any]], Any]) -> Any:
    """The inverse of ``escape``: ``special(marker)`` gives the value of each ``$ref`` /
    ``$bytes`` / ``$error`` marker (references are resolved by the caller)."""
    if isinstance(value, dict):
        if ("$ref" in value or "$bytes" in value or "$error" in value) and (
            is_ref(value) or is_bytes(value) or is_error(value)
        ):
            return special(value)
        return {
            (key[1:] if key[:2] == "$$" else key): unescape(item, special)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [unescape(item, special) for item in value]
    return value


def encode_message(message: dict[str, Any], convert: Callable[[Any], Any]) -> bytes:
    """A message as UTF-8 JSON, ``escape``'s wire form. In one orjson pass when it can be:
    what JSON lacks (objects, bytes, sets) goes through orjson's ``default`` hook, and the
    result stands when every ``"$`` in it is one of the markers the hook made (no ``$``
    key to escape). Else the message is walked by ``escape``, reusing what ``convert``
    made in the first pass (it runs once per value: references carry state once)."""
    made: dict[int, Any] = {}
    markers = 0

    def default(value: Any) -> Any:
        nonlocal markers
        wire = made.get(id(value), _NONE)
        if wire is _NONE:
            if isinstance(value, bytes | bytearray | memoryview):
                wire = encode_bytes(value)
            elif isinstance(value, set | frozenset):
                wire = list(value)
            else:
                wire = convert(value)
            made[id(value)] = wire
        if isinstance(wire, dict):
            markers += _dollars(wire)
        return wire

    try:
        data = orjson.dumps(message, default=default)
    except TypeError:  # non-string keys, huge integers (or a value convert refuses)
        pass
    else:
        if data.count(b'"$') == markers:
            return data

    def again(value: Any) -> Any:
        wire = made.get(id(value), _NONE)
        return convert(value) if wire is _NONE else wire

    wire = escape(message, again)
    try:
        return orjson.dumps(wire)
    except TypeError:  # integers past 64 bits
        return orjson.dumps(_wide_ints(wire))


def _wide_ints(value: Any) -> Any:
    """``value`` with its integers past 64 bits as their decimal text in a Fragment, which
    orjson writes as it is (it writes no such integer; the standard library's encoder,
    which does, cannot write the Fragments of plain states)."""
    if isinstance(value, dict):
        return {key: _wide_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wide_ints(item) for item in value]
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return orjson.Fragment(str(value))
    return value


_NONE = object()


def _dollars(marker: dict[str, Any]) -> int:
    """How many ``"$`` a marker made by ``default`` above puts in the JSON: one per ``$``
    key, plus those of a state already escaped (a plain state, a Fragment, has none)."""
    state = marker.get("state")
    if state is None or isinstance(state, orjson.Fragment):
        return sum(1 for key in marker if key[:1] == "$")
    return orjson.dumps(marker).count(b'"$')


def request(request_id: int | None, method: str, params: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method, "params": params}
    if request_id is not None:
        message["id"] = request_id
    return message


def make_call(
    request_id: int | None,
    target: str | None,
    method: str,
    args: list[Any],
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    return request(
        request_id, "call", {"target": target, "method": method, "args": args, "kwargs": kwargs}
    )


def notification(method: str, params: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def event_notification(
    target: str | None, emitter: str, event: str, args: list[Any], state: dict[str, Any] | None
) -> dict[str, Any]:
    params: dict[str, Any] = {"target": target, "emitter": emitter, "event": event, "args": args}
    if state is not None:
        params["state"] = state
    return notification("event", params)


def call_error_notification(
    target: str | None, method: str, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    """A fire-and-forget call failed (or was refused) on the server."""
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return notification("error", {"target": target, "method": method, "error": error})


def result_response(request_id: int | str | None, result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "result": result}


def error_response(
    request_id: int | str | None, code: int, message: str, data: Any = None
) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


def make_ref(
    kind: str, handle: str, parent: str | None = None, state: Any = None
) -> dict[str, Any]:
    ref: dict[str, Any] = {"$ref": kind, "id": handle}
    if parent is not None:
        ref["parent"] = parent
    if state is not None:
        ref["state"] = state
    return ref


def encode_bytes(data: bytes | bytearray | memoryview) -> dict[str, str]:
    return {"$bytes": base64.b64encode(bytes(data)).decode("ascii")}


def is_ref(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("$ref"), str)
        and isinstance(value.get("id"), str)
    )


def is_bytes(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("$bytes"), str)


def is_error(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and isinstance(value.get("$error"), str)
        and isinstance(value.get("message"), str)
    )


def decode_bytes(value: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(value["$bytes"], validate=True)
    except (ValueError, TypeError) as error:
        raise ProtocolError(INVALID_PARAMS, "invalid $bytes value") from error


# -- parsing --------------------------------------------------------------------------------


def _loads(text: str | bytes, max_size: int | None) -> Any:
    if max_size is not None and len(text) > max_size:
        raise ProtocolError(INVALID_REQUEST, "message too large")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ProtocolError(PARSE_ERROR, "parse error: not JSON") from error
    # No message nests deeper than it has brackets: only a message with many of them
    # needs its depth measured, from its text when it can be, else by a walk.
    if _brackets(text) > _MAX_DEPTH:
        depth = _text_depth(text)
        if (_depth(message) if depth is None else depth) > _MAX_DEPTH:
            raise ProtocolError(INVALID_REQUEST, "message nested too deeply")
    return message


def _brackets(text: str | bytes) -> int:
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


_TO_SQUARE = bytes.maketrans(b"{}", b"[]")
_NOT_SKELETON = bytes(c for c in range(256) if c not in b'[]{}"')


def _text_depth(text: str | bytes) -> int | None:
    """How deep valid JSON ``text`` nests (counted up to ``_MAX_DEPTH + 1``), from its
    brackets and quotes alone, at C speed (4x faster than ``_depth`` on a batch of
    requests); None when it cannot tell: an escaped quote, or a bracket in a string.
    Without escaped quotes every string leaves two quotes in the skeleton, adjacent only
    when the string holds no bracket; once they are gone, each pass that deletes the
    innermost ``[]`` pairs is one level."""
    data = text.encode() if isinstance(text, str) else text
    if b"\\" in data and b'\\"' in data:  # memchr first: backslashes are rare
        return None
    skeleton = data.translate(_TO_SQUARE, _NOT_SKELETON)
    if skeleton.count(b'""') * 2 != skeleton.count(b'"'):
        return None
    skeleton = skeleton.translate(None, b'"')
    depth = 0
    while skeleton and depth <= _MAX_DEPTH:
        skeleton = skeleton.replace(b"[]", b"")
        depth += 1
    return depth


def _depth(value: Any) -> int:
    """How many containers deep ``value`` nests (counted up to ``_MAX_DEPTH + 1``): level
    by level, looking at each value once (a batch of requests has brackets enough to be
    walked, and a recursive walk cost as much as the rest of its parsing)."""
    level = 0
    current = [value] if type(value) in _CONTAINERS else []
    while current and level <= _MAX_DEPTH:
        level += 1
        below: list[Any] = []
        for item in current:
            below += [v for v in (item.values() if type(item) is dict else item)
                      if type(v) in _CONTAINERS]  # fmt: skip
        current = below
    return level


_CONTAINERS = (dict, list)  # what orjson.loads makes


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, int | str) and not isinstance(value, bool))


def parse_client_message(text: str | bytes, max_size: int | None = None) -> Request:
    """Validate one client message. Raises ProtocolError (answer its ``code``)."""
    return _request_of(_loads(text, max_size))


def parse_client_frame(
    text: str | bytes, max_size: int | None = None
) -> list[Request | ProtocolError]:
    """Validate one frame from a client: a message, or a batch of them (a JSON array, as
    JSON-RPC 2.0's). Raises ProtocolError when the frame is not JSON, too large or too
    deep, or an empty batch; an invalid message is its ProtocolError in the list."""
    message = _loads(text, max_size)
    if not isinstance(message, list):
        try:
            return [_request_of(message)]
        except ProtocolError as error:
            return [error]
    if not message:
        raise ProtocolError(INVALID_REQUEST, "invalid request: empty batch")
    requests: list[Request | ProtocolError] = []
    for item in message:
        try:
            requests.append(_request_of(item))
        except ProtocolError as error:
            requests.append(error)
    return requests


def _request_of(message: Any) -> Request:
    if not isinstance(message, dict):
        raise ProtocolError(INVALID_REQUEST, "invalid request: not an object")
    request_id = message.get("id")
    if not _valid_id(request_id):
        raise ProtocolError(INVALID_REQUEST, "invalid request: bad id")
    if message.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, "invalid request: jsonrpc must be '2.0'", request_id)
    method = message.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, "invalid request: method missing", request_id)
    params = message.get("params", {})
    if not isinstance(params, dict):
        raise ProtocolError(INVALID_PARAMS, "invalid params: must be an object", request_id)
    return Request(request_id, method, params)


def parse_call(req: Request) -> Call:
    """The ``call`` parameters of a request, validated."""
    params = req.params
    target = params.get("target")
    if target is not None and not isinstance(target, str):
        raise ProtocolError(INVALID_PARAMS, "invalid params: target", req.id)
    method = params.get("method")
    if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
        raise ProtocolError(METHOD_NOT_FOUND, f"method not found: {method!r}", req.id)
    args = params.get("args", [])
    kwargs = params.get("kwargs", {})
    if not isinstance(args, list):
        raise ProtocolError(INVALID_PARAMS, "invalid params: args must be a list", req.id)
    if not isinstance(kwargs, dict) or not all(
        isinstance(k, str) and k.isidentifier() for k in kwargs
    ):
        raise ProtocolError(INVALID_PARAMS, "invalid params: kwargs", req.id)
    return Call(target, method, args, kwargs)


ServerMessage = Response | Notification


def parse_server_message(
    text: str | bytes, special: Callable[[dict[str, Any]], Any] | None = None
) -> ServerMessage:
    """Validate one server message (client side); ``special`` as ``unescape``'s (turning
    references, bytes and errors into values; the walk is skipped for plain JSON)."""
    messages = parse_server_frame(text, special)
    if len(messages) != 1 or isinstance(messages[0], ProtocolError):
        raise ProtocolError(INVALID_REQUEST, "invalid message")
    return messages[0]


def parse_server_frame(
    text: str | bytes, special: Callable[[dict[str, Any]], Any] | None = None
) -> list[ServerMessage | ProtocolError]:
    """The messages of one frame from the server (one, or a batch: a JSON array); an
    invalid one is a ProtocolError in the list. Raises ProtocolError if not JSON."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(PARSE_ERROR, "parse error: not JSON") from exc
    if special is not None and needs_walk(text):
        message = unescape(message, special)
    if isinstance(message, list) and message:
        return [_server_message(item) for item in message]
    return [_server_message(message)]


def _server_message(message: Any) -> ServerMessage | ProtocolError:
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return ProtocolError(INVALID_REQUEST, "invalid message")
    if "id" in message and "method" not in message:
        error = message.get("error")
        if error is not None and not (
            isinstance(error, dict)
            and isinstance(error.get("code"), int)
            and isinstance(error.get("message"), str)
        ):
            return ProtocolError(INVALID_REQUEST, "invalid error object")
        return Response(message["id"], message.get("result"), error)
    method = message.get("method")
    params = message.get("params")
    if not isinstance(method, str) or not isinstance(params, dict):
        return ProtocolError(INVALID_REQUEST, "invalid notification")
    return Notification(method, params)


Emitter = Literal["events", "observer"]
