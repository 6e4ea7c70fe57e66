"""The worker channel: size-prefixed FlatBuffers messages over two pipes.

The codec half (``encode_request``, ``encode_notification``, ``FrameDecoder``,
``decode_message``) is pure and tested with canned bytes; :class:`Channel` is the thin
asyncio driver that owns the pipes, matches responses to requests and dispatches
notifications by handler id.

Ordering rule (as in mediasoup's Node Channel): a notification never overtakes the
response that precedes it. A response resolves a future, whose awaiting task is woken
with ``call_soon``; notifications are dispatched with ``call_soon`` too, so they run
after that task has resumed and, for instance, registered the object they target.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flatbuffers

from mafalda.mediasoup._fastfbs import (
    EncoderUnsupported,
    FastBuilder,
    native_encoder,
    packers,
    union_decoders,
    views,
)
from mafalda.mediasoup._fbs.Message import Message as FbsMessageMod
from mafalda.mediasoup._fbs.Message.Body import Body as MessageBody
from mafalda.mediasoup._fbs.Notification import Notification as FbsNotificationMod
from mafalda.mediasoup._fbs.Notification.Body import Body as NotificationBody
from mafalda.mediasoup._fbs.Notification.Body import BodyCreator as NotificationBodyCreator
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Request.Body import Body as RequestBody
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Response.Body import BodyCreator as ResponseBodyCreator
from mafalda.mediasoup.emitter import EventEmitter
from mafalda.mediasoup.errors import (
    ChannelClosedError,
    ChannelTimeoutError,
    MediasoupError,
    WorkerError,
    WorkerTypeError,
)

logger = logging.getLogger("mafalda.mediasoup.channel")
worker_logger = logging.getLogger("mafalda.mediasoup.worker.log")

#: Largest message either side accepts: a 4 MiB payload plus its length prefix.
MESSAGE_MAX_LEN = 4194308
REQUEST_TIMEOUT = 15.0  # seconds (see Channel.request_timeout)
LATE_ANSWER_GRACE = 60.0  # seconds (see Channel.late_answer_grace)
PAYLOAD_MAX_LEN = 4194304

_FBS_PREFIX = "mafalda.mediasoup._fbs."
_LEN = struct.Struct("<I")

METHOD_NAMES: dict[int, str] = {
    v: k for k, v in vars(Method).items() if not k.startswith("_") and isinstance(v, int)
}
EVENT_NAMES: dict[int, str] = {
    v: k for k, v in vars(Event).items() if not k.startswith("_") and isinstance(v, int)
}


def _method_name(method: int) -> str:
    """A request method's name, for messages (its number when unknown)."""
    return METHOD_NAMES.get(method) or str(method)


def _union_type(enum: type, body: Any) -> int:
    """The union tag of an object-API table, derived from its generated module path.

    ``mafalda.mediasoup._fbs.Worker.CreateRouterRequest`` is the union member
    ``Worker_CreateRouterRequest``: the schemas name every member that way.
    """
    module = type(body).__module__
    if not module.startswith(_FBS_PREFIX):
        raise TypeError(f"not a generated FlatBuffers table: {type(body).__name__}")
    name = module[len(_FBS_PREFIX) :].replace(".", "_")
    try:
        tag: int = getattr(enum, name)
    except AttributeError:
        raise TypeError(f"{name} is not a member of {enum.__module__}") from None
    return tag


_request_tags: dict[type, int] = {}
_notification_tags: dict[type, int] = {}


def _finish(builder: flatbuffers.Builder, data_type: int, data: int) -> bytes:
    FbsMessageMod.Start(builder)
    FbsMessageMod.AddDataType(builder, data_type)
    FbsMessageMod.AddData(builder, data)
    builder.FinishSizePrefixed(FbsMessageMod.End(builder))
    # One copy of the finished bytes (Output() would copy them twice).
    return bytes(memoryview(builder.Bytes)[builder.Head() :])


def _pack(body: Any, builder: flatbuffers.Builder) -> int:
    try:
        offset: int = packers[type(body)](body, builder)
    except struct.error as error:
        # A number out of its field's range (the stock runtime raises TypeError too).
        raise TypeError(f"bad number in {type(body).__name__}: {error}") from None
    return offset


# The request envelope (Message -> Request -> handler id string) is written forward by
# hand: it is the same for every request but for the id, the method, the union tag and
# the handler id, and the builder spends as long on it as on a small body. The layout,
# from the start of the frame (the size prefix, which the stock builder also aligns to):
#
#   0  u32 size            4  u32 root -> 16
#   8  Message vtable      (8, 12, dataType at +8, data at +4)
#  16  Message table       soffset 8, data -> 44, dataType Request
#  28  Request vtable      (14, 20, id +4, method +16, handlerId +8, bodyType +17, body +12)
#  44  Request table       soffset 16, id, handlerId -> 64, body -> ..., method, bodyType
#  64  handler id string   (u32 length, bytes, NUL, padding to 4)
#      zeros up to a multiple of 8 from the end, then the body as the builder made it
#
# The body's bytes keep their offsets from the end of the frame, so their alignment holds.
_REQUEST_HEAD = struct.Struct("<I44sIIIBB2x")
_REQUEST_CONST = struct.pack(
    "<I4HiIB3x7H2xi", 12, 8, 12, 8, 4, 8, 24, MessageBody.Request, 14, 20, 4, 16, 8, 17, 12, 16
)
_REQUEST_CONST_NO_BODY = _REQUEST_CONST[:34] + bytes(4) + _REQUEST_CONST[38:]
_PADS = [bytes(n) for n in range(8)]


@functools.lru_cache(maxsize=1024)
def _string_bytes(value: str) -> bytes:
    """A FlatBuffers string (length, UTF-8 bytes, NUL) padded to a multiple of 4."""
    data = value.encode()
    return _LEN.pack(len(data)) + data + _PADS[4 - (len(data) & 3)]


def encode_request(
    builder: flatbuffers.Builder, request_id: int, method: int, handler_id: str, body: Any = None
) -> bytes:
    """Encode one request message, length prefix included. ``body`` is an object-API table.

    ``builder`` is used for the body only; the caller clears it afterwards."""
    handler = _string_bytes(handler_id)
    if body is None:
        body_type = body_at = 0
        pad = (-len(handler)) & 7
        tail: Any = b""
    else:
        cls = type(body)
        body_type = _request_tags.get(cls) or _request_tags.setdefault(
            cls, _union_type(RequestBody, body)
        )
        encode = native_encoder(cls)
        if encode is not None:
            try:
                tail, offset = encode(body)
            except EncoderUnsupported:
                encode = None
        if encode is None:
            offset = _pack(body, builder)
            tail = memoryview(builder.Bytes)[builder.Head() :]
        size = len(tail)
        pad = (-(len(handler) + size)) & 7
        # From its field at 56 to the body table: what follows the envelope, minus the
        # body's offset (which counts from the end).
        body_at = 8 + len(handler) + pad + size - offset
    total = 64 + len(handler) + pad + len(tail)
    return b"".join(
        (
            _REQUEST_HEAD.pack(
                total - 4,
                _REQUEST_CONST if body_type else _REQUEST_CONST_NO_BODY,
                request_id,
                12,
                body_at,
                method,
                body_type,
            ),
            handler,
            _PADS[pad],
            tail,
        )
    )


def encode_notification(
    builder: flatbuffers.Builder, event: int, handler_id: str, body: Any = None
) -> bytes:
    """Encode one notification message (to the worker), length prefix included."""
    body_type = 0
    body_offset = 0
    if body is not None:
        cls = type(body)
        body_type = _notification_tags.get(cls) or _notification_tags.setdefault(
            cls, _union_type(NotificationBody, body)
        )
        body_offset = _pack(body, builder)
    handler = builder.CreateString(handler_id)
    FbsNotificationMod.Start(builder)
    FbsNotificationMod.AddHandlerId(builder, handler)
    FbsNotificationMod.AddEvent(builder, event)
    if body_type:
        FbsNotificationMod.AddBodyType(builder, body_type)
        FbsNotificationMod.AddBody(builder, body_offset)
    return _finish(builder, MessageBody.Notification, FbsNotificationMod.End(builder))


class FrameError(ValueError):
    """A corrupt stream: a length prefix over PAYLOAD_MAX_LEN. ``frames``: the complete
    payloads that came before it in the data fed, to be handled all the same."""

    def __init__(self, message: str, frames: list[bytes]) -> None:
        super().__init__(message)
        self.frames = frames


class FrameDecoder:
    """Split a byte stream into length-prefixed message payloads."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return every complete payload, in order.

        A prefix announcing more than PAYLOAD_MAX_LEN means the stream is corrupt: the
        buffer and the rest of ``data`` are discarded (as Node does) and FrameError (a
        ValueError) raised, with the payloads complete before it.
        """
        pending = self._buffer
        buf: bytes | bytearray
        if pending:
            pending += data
            buf = pending
        else:
            # Nothing pending (the common case): frames are sliced from ``data`` itself,
            # one copy each; only an incomplete tail is kept.
            buf = data
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > PAYLOAD_MAX_LEN:
                self._buffer = bytearray()
                raise FrameError(f"message length {size} exceeds {PAYLOAD_MAX_LEN}", frames)
            if end - pos - 4 < size:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + size]))
            pos += 4 + size
        if buf is data:
            if pos < end:
                self._buffer = bytearray(data[pos:])
        elif pos:
            del pending[:pos]
        return frames

    @property
    def pending(self) -> int:
        """Bytes received but not yet part of a complete message."""
        return len(self._buffer)


@dataclass(slots=True)
class ResponseMessage:
    id: int
    accepted: bool
    error: str
    reason: str
    body: Any


@dataclass(slots=True)
class NotificationMessage:
    handler_id: str
    event: int
    body: Any


@dataclass(slots=True)
class LogMessage:
    level: str
    text: str


_RESPONSE = MessageBody.Response
_NOTIFICATION = MessageBody.Notification
_LOG = MessageBody.Log
_RESPONSE_BODIES = union_decoders(ResponseBodyCreator)
_NOTIFICATION_BODIES = union_decoders(NotificationBodyCreator)


def decode_message(payload: bytes) -> ResponseMessage | NotificationMessage | LogMessage | None:
    """Decode one payload; None for a message kind the worker should never send us.

    Bodies are object-API tables (``...T``), decoded by the compiled decoders of
    ``_fastfbs`` (the same objects as ``InitFromBuf`` makes, several times faster). The
    envelope (Message, then Response, Notification or Log) is read here directly, by
    the vtable slots of those tables: ``h[v + i] if vn > 2 * i else 0`` is the offset
    of field ``i - 2`` of the table whose vtable is at ``2 * v`` (absent: 0).
    """
    b, w, s, h = views(payload)
    p = w[0]
    v = (p - s[p >> 2]) >> 1
    vn = h[v]
    o = h[v + 2] if vn > 4 else 0
    kind = b[p + o] if o else 0
    if kind != _RESPONSE and kind != _NOTIFICATION and kind != _LOG:
        return None
    o = h[v + 3] if vn > 6 else 0
    if not o:
        raise ValueError("message without data")
    p += o
    p += w[p >> 2]
    v = (p - s[p >> 2]) >> 1
    vn = h[v]
    if kind == _RESPONSE:
        # id: uint32, accepted: bool, body: Body (type, value), error, reason: string
        o = h[v + 2] if vn > 4 else 0
        request_id = w[(p + o) >> 2] if o else 0
        o = h[v + 3] if vn > 6 else 0
        accepted = b[p + o] != 0 if o else False
        return ResponseMessage(
            id=request_id,
            accepted=accepted,
            error=_string(b, w, p, h[v + 6] if vn > 12 else 0),
            reason=_string(b, w, p, h[v + 7] if vn > 14 else 0),
            body=_union(
                _RESPONSE_BODIES,
                (b, w, s, h),
                p,
                h[v + 4] if vn > 8 else 0,
                h[v + 5] if vn > 10 else 0,
            ),
        )
    if kind == _NOTIFICATION:
        # handler_id: string, event: Event (uint8), body: Body (type, value)
        o = h[v + 3] if vn > 6 else 0
        event = b[p + o] if o else 0
        return NotificationMessage(
            handler_id=_string(b, w, p, h[v + 2] if vn > 4 else 0),
            event=event,
            body=_union(
                _NOTIFICATION_BODIES,
                (b, w, s, h),
                p,
                h[v + 4] if vn > 8 else 0,
                h[v + 5] if vn > 10 else 0,
            ),
        )
    # Log: data: string, its first character the level
    text = _string(b, w, p, h[v + 2] if vn > 4 else 0)
    return LogMessage(level=text[:1], text=text[1:])


def _union(
    decoders: dict[int, Any], buf: tuple[Any, Any, Any, Any], p: int, type_at: int, value_at: int
) -> Any:
    """The union value whose type and value fields are at these offsets of the table at
    ``p`` (None when absent or of an unknown type)."""
    b, w, s, h = buf
    decode = decoders[b[p + type_at]] if type_at else None
    if not value_at or decode is None:
        return None
    p += value_at
    return decode(b, w, s, h, p + w[p >> 2])


def _string(b: Any, w: Any, p: int, o: int) -> str:
    """The string field at offset ``o`` of the table at ``p`` ("" when absent)."""
    if not o:
        return ""
    p += o
    p += w[p >> 2]
    text: str = b[p + 4 : p + 4 + w[p >> 2]].decode()
    return text


NotificationHandler = Callable[[int, Any], None]


class Channel:
    """Requests to and notifications from one worker process."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.closed = False
        self._builder = FastBuilder(1024)
        self._decoder = FrameDecoder()
        self._next_id = 0
        # request id -> (future, method, deadline) of the requests whose answer is due;
        # no future for one nobody awaits (request_nowait)
        self._sents: dict[int, tuple[asyncio.Future[Any] | None, int, float]] = {}
        # request id -> (method, until) of the requests past their deadline, awaited
        # (timed out) or not: no longer due (they neither count for _send's batching nor
        # stay for good, should the worker never answer), but an answer until then is
        # expected, and dropped quietly
        self._late: dict[int, tuple[int, float]] = {}
        #: Seconds a request waits for its answer (a frozen worker), plus 0.1 s per
        #: request pending when it is sent, as mediasoup's Node library does. An awaited
        #: one then fails with ChannelTimeoutError.
        self.request_timeout = REQUEST_TIMEOUT
        #: Seconds after its deadline a request's late answer is still expected (and
        #: dropped quietly; later on, it is logged as matching no request).
        self.late_answer_grace = LATE_ANSWER_GRACE
        self._sweeper: asyncio.TimerHandle | None = None
        self._handlers: dict[str, NotificationHandler] = {}
        self._writer: asyncio.WriteTransport | None = None
        self._out: list[bytes] = []  # messages for the next _flush()
        self._loop = asyncio.get_running_loop()
        #: Emits ``close`` once, when the read side ends or close() is called.
        self.events = EventEmitter()

    def attach(self, writer: asyncio.WriteTransport) -> None:
        self._writer = writer

    # -- handlers -----------------------------------------------------------------

    def subscribe(self, handler_id: str, handler: NotificationHandler) -> None:
        """Deliver notifications for ``handler_id`` to ``handler(event, body)``."""
        self._handlers[handler_id] = handler

    def unsubscribe(self, handler_id: str) -> None:
        self._handlers.pop(handler_id, None)

    # -- sending ------------------------------------------------------------------

    def _write(self, data: bytes, what: str) -> None:
        if len(data) > MESSAGE_MAX_LEN:
            raise ValueError(f"{what} too big: {len(data)} bytes")
        writer = self._writer
        if writer is None or writer.is_closing():
            raise ChannelClosedError(f"channel closed, cannot send {what}")
        self._send(writer, data)

    def _send(self, writer: asyncio.WriteTransport, data: bytes) -> None:
        # With two answers or more due the worker has work queued: what is sent
        # meanwhile goes out in one pipe write at the next loop turn, in order (a burst
        # of requests wakes the worker once instead of once per message, which on a
        # busy machine costs more than encoding them). Otherwise at once, requests
        # nobody awaits included: a lone request's latency is what sequential callers
        # wait for, and the worker handles a close while the caller makes its next
        # request (holding the close back to share that request's write cost a loop
        # turn and that overlap: 15-20% of a create+close cycle).
        out = self._out
        if out:
            out.append(data)
        elif len(self._sents) > 1:
            out.append(data)
            self._loop.call_soon(self._flush)
        else:
            writer.write(data)

    def _flush(self) -> None:
        out = self._out
        if not out:  # close() has sent them already
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        writer = self._writer
        # Closed meanwhile: close() fails the requests that were waiting here too.
        if writer is not None and not writer.is_closing():
            writer.write(data)

    def _send_request(self, method: int, handler_id: str, body: Any) -> int:
        """Encode and send one request; its id."""
        if self.closed:
            name = _method_name(method)
            raise ChannelClosedError(f"channel closed, cannot send request [method:{name}]")
        self._next_id = request_id = self._next_id + 1 if self._next_id < 4294967295 else 1
        if body is None:
            data = encode_request(self._builder, request_id, method, handler_id)
        else:
            builder = self._builder
            try:
                data = encode_request(builder, request_id, method, handler_id, body)
            finally:
                builder.Clear()
        writer = self._writer
        if writer is None or len(data) > MESSAGE_MAX_LEN or writer.is_closing():
            name = _method_name(method)
            self._write(data, f"request [method:{name}]")  # raises
        else:
            self._send(writer, data)
        return request_id

    def request(self, method: int, handler_id: str = "", body: Any = None) -> asyncio.Future[Any]:
        """Send a request; the returned future resolves to the response body table.

        Raises ChannelClosedError at once when the channel is closed; the future fails
        with ChannelClosedError when it closes before the answer, WorkerError (or
        WorkerTypeError) when the worker refuses.
        """
        request_id = self._send_request(method, handler_id, body)
        future: asyncio.Future[Any] = self._loop.create_future()
        sents = self._sents
        deadline = self._loop.time() + self.request_timeout + 0.1 * len(sents)
        sents[request_id] = (future, method, deadline)
        sweeper = self._sweeper
        if sweeper is None or deadline < sweeper.when():
            self._sweep_at(deadline)
        return future

    def _sweep_at(self, when: float) -> None:
        # One timer for them all (not one per request): it looks at every pending
        # request when the earliest may have timed out.
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._sweeper = self._loop.call_at(when, self._sweep)

    async def request_making(
        self, method: int, handler_id: str, body: Any, close: tuple[int, str, Any]
    ) -> Any:
        """request() of one that makes an object in the worker, which makes it even when
        its caller is cancelled or the request times out: nothing here would ever close
        it then (it would hold its ports, forward media), so ``close`` (method, handler
        id, body) is sent before the error goes on."""
        future = self.request(method, handler_id, body)
        try:
            return await future
        except (asyncio.CancelledError, ChannelTimeoutError):
            self.request_nowait(*close)
            raise

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        earliest = math.inf
        sents, late = self._sents, self._late
        for request_id, (_, until) in list(late.items()):
            if until <= now:
                del late[request_id]  # never answered (or not yet: then logged)
            else:
                earliest = min(earliest, until)
        until = now + self.late_answer_grace
        for request_id, (future, method, deadline) in list(sents.items()):
            if deadline > now:
                earliest = min(earliest, deadline)
                continue
            del sents[request_id]
            late[request_id] = (method, until)
            earliest = min(earliest, until)
            if future is not None and not future.done():
                name = _method_name(method)
                future.set_exception(
                    ChannelTimeoutError(f"request timeout [method:{name}, id:{request_id}]")
                )
                future.exception()  # a caller that gave up must not cause noise
        if earliest != math.inf:
            self._sweeper = self._loop.call_at(earliest, self._sweep)

    def request_nowait(self, method: int, handler_id: str = "", body: Any = None) -> None:
        """Send a request whose answer nobody awaits (closing things, as Node's
        ``request(...).catch(() => {})``): failures are logged at debug level. No future
        stands for it: its answer only needs to be matched (and it is no longer due
        after the request timeout, as an awaited one)."""
        try:
            request_id = self._send_request(method, handler_id, body)
        except MediasoupError as error:
            logger.debug("request_nowait() failed to send: %s", error)
            return
        sents = self._sents
        deadline = self._loop.time() + self.request_timeout + 0.1 * len(sents)
        sents[request_id] = (None, method, deadline)
        if self._sweeper is None:  # (one due later only lingers until then: it fails nothing)
            self._sweep_at(deadline)

    def notify(self, event: int, handler_id: str = "", body: Any = None) -> None:
        name = EVENT_NAMES.get(event, str(event))
        if self.closed:
            raise ChannelClosedError(f"channel closed, cannot send notification [event:{name}]")
        builder = self._builder
        try:
            data = encode_notification(builder, event, handler_id, body)
        finally:
            builder.Clear()
        self._write(data, f"notification [event:{name}]")

    # -- receiving ----------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        corrupt: FrameError | None = None
        try:
            frames = self._decoder.feed(data)
        except FrameError as invalid:
            # The messages before the corrupt length are handled all the same (their
            # callers would wait for them until they time out), then it is reported.
            frames, corrupt = invalid.frames, invalid
        for payload in frames:
            try:
                message = decode_message(payload)
            except Exception as error:  # a corrupt message must not kill the channel
                logger.error("worker[pid:%s] sent an invalid message: %s", self.pid, error)
                continue
            if isinstance(message, ResponseMessage):
                self._on_response(message)
            elif isinstance(message, NotificationMessage):
                self._loop.call_soon(self._dispatch, message)
            elif isinstance(message, LogMessage):
                self._on_log(message)
            else:
                logger.warning("worker[pid:%s] sent an unexpected message", self.pid)
        if corrupt is not None:
            logger.error("worker[pid:%s] sent an invalid frame: %s", self.pid, corrupt)

    def _on_response(self, message: ResponseMessage) -> None:
        sent = self._sents.pop(message.id, None)
        if sent is None:
            self._on_late_response(message)
            return
        future, method, _ = sent
        if future is None:  # request_nowait()
            if not message.accepted:
                logger.debug(
                    "ignored request failure [method:%s]: %s",
                    _method_name(method),
                    message.reason,
                )
            return
        if future.done():  # the caller was cancelled
            return
        if message.accepted:
            future.set_result(message.body)
            return
        name = _method_name(method)
        if message.error == "TypeError":
            future.set_exception(WorkerTypeError(message.reason, method=name))
        else:
            future.set_exception(WorkerError(message.reason, method=name))

    def _on_late_response(self, message: ResponseMessage) -> None:
        late = self._late.pop(message.id, None)
        if late is None:
            # After close() the pending requests were failed already: their late
            # answers are expected.
            log = logger.debug if self.closed else logger.error
            log("response does not match any sent request [id:%s]", message.id)
        elif not message.accepted:
            logger.debug(
                "ignored request failure [method:%s]: %s", _method_name(late[0]), message.reason
            )

    def _dispatch(self, message: NotificationMessage) -> None:
        handler = self._handlers.get(message.handler_id)
        if handler is None:
            return
        try:
            handler(message.event, message.body)
        except Exception:
            logger.exception(
                "notification handler failed [event:%s]", EVENT_NAMES.get(message.event)
            )

    def _on_log(self, message: LogMessage) -> None:
        level = {"D": logging.DEBUG, "W": logging.WARNING, "E": logging.ERROR}.get(
            message.level, logging.INFO
        )
        worker_logger.log(level, "[pid:%s] %s", self.pid, message.text)

    def close(self) -> None:
        """Close the channel and fail every pending request with ChannelClosedError."""
        if self.closed:
            return
        self.closed = True
        sents, self._sents = self._sents, {}
        self._late.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for request_id, (future, method, _) in sents.items():
            if future is not None and not future.done():
                name = _method_name(method)
                future.set_exception(
                    ChannelClosedError(
                        f"channel closed, pending request aborted [method:{name}, id:{request_id}]"
                    )
                )
                # Mark retrieved: a caller that gave up on this request must not cause
                # "exception was never retrieved" noise.
                future.exception()
        if self._writer is not None:
            if self._out:
                # What waits for the next loop turn goes first (such as the worker's
                # close notification): the transport writes it before it closes.
                self._flush()
            self._writer.close()
        self._handlers.clear()
        self.events.emit("close")


class ChannelReader(asyncio.Protocol):
    """Feeds the worker's output pipe into a Channel."""

    def __init__(self, channel: Channel, on_eof: Callable[[], None]) -> None:
        self._channel = channel
        self._on_eof = on_eof

    def data_received(self, data: bytes) -> None:
        self._channel.data_received(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_eof()
