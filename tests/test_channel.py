"""The channel codec with canned bytes, and the driver's ordering and failure rules."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import struct
from typing import Any

import flatbuffers
import pytest

from mafalda.mediasoup import Worker
from mafalda.mediasoup._fastfbs import FastBuilder, prepack
from mafalda.mediasoup._fbs.Log import Log as LogMod
from mafalda.mediasoup._fbs.Message import Message as MessageMod
from mafalda.mediasoup._fbs.Message.Body import Body as MessageBody
from mafalda.mediasoup._fbs.Message.Message import Message, MessageT
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Notification.Notification import Notification
from mafalda.mediasoup._fbs.Request.Body import Body as RequestBody
from mafalda.mediasoup._fbs.Request.Method import Method
from mafalda.mediasoup._fbs.Request.Request import Request
from mafalda.mediasoup._fbs.Response import Response as ResponseMod
from mafalda.mediasoup._fbs.Response.Body import Body as ResponseBody
from mafalda.mediasoup._fbs.Router.DumpResponse import DumpResponseT
from mafalda.mediasoup._fbs.RtpParameters.Double import DoubleT
from mafalda.mediasoup._fbs.RtpParameters.Parameter import ParameterT
from mafalda.mediasoup._fbs.RtpParameters.RtpCodecParameters import RtpCodecParametersT
from mafalda.mediasoup._fbs.RtpParameters.RtpParameters import RtpParametersT
from mafalda.mediasoup._fbs.RtpParameters.Value import Value
from mafalda.mediasoup._fbs.Transport.ProduceRequest import ProduceRequestT
from mafalda.mediasoup._fbs.Transport.SendRtcpNotification import SendRtcpNotificationT
from mafalda.mediasoup._fbs.Worker.CreateRouterRequest import CreateRouterRequestT
from mafalda.mediasoup.channel import (
    PAYLOAD_MAX_LEN,
    REQUEST_TIMEOUT,
    Channel,
    FrameDecoder,
    FrameError,
    LogMessage,
    NotificationMessage,
    ResponseMessage,
    decode_message,
    encode_notification,
    encode_request,
)
from mafalda.mediasoup.errors import (
    ChannelClosedError,
    ChannelTimeoutError,
    WorkerError,
    WorkerTypeError,
)


def _response(
    request_id: int, *, accepted: bool = True, error: str = "", reason: str = "", body: Any = None
) -> bytes:
    b = flatbuffers.Builder(256)
    body_offset = body.Pack(b) if body is not None else 0
    err = b.CreateString(error) if error else 0
    rsn = b.CreateString(reason) if reason else 0
    ResponseMod.Start(b)
    ResponseMod.AddId(b, request_id)
    ResponseMod.AddAccepted(b, accepted)
    if body is not None:
        ResponseMod.AddBodyType(b, ResponseBody.Router_DumpResponse)
        ResponseMod.AddBody(b, body_offset)
    if err:
        ResponseMod.AddError(b, err)
    if rsn:
        ResponseMod.AddReason(b, rsn)
    resp = ResponseMod.End(b)
    MessageMod.Start(b)
    MessageMod.AddDataType(b, MessageBody.Response)
    MessageMod.AddData(b, resp)
    b.FinishSizePrefixed(MessageMod.End(b))
    return bytes(b.Output())


def _log(text: str) -> bytes:
    b = flatbuffers.Builder(64)
    data = b.CreateString(text)
    LogMod.Start(b)
    LogMod.AddData(b, data)
    log = LogMod.End(b)
    MessageMod.Start(b)
    MessageMod.AddDataType(b, MessageBody.Log)
    MessageMod.AddData(b, log)
    b.FinishSizePrefixed(MessageMod.End(b))
    return bytes(b.Output())


def test_encode_request_round_trip() -> None:
    body = CreateRouterRequestT()
    body.routerId = "r1"
    data = encode_request(flatbuffers.Builder(0), 7, Method.WORKER_CREATE_ROUTER, "h", body)
    (size,) = struct.unpack_from("<I", data)
    assert size == len(data) - 4
    message = Message.GetRootAs(data, 4)
    assert message.DataType() == MessageBody.Request
    request = Request()
    table = message.Data()
    request.Init(table.Bytes, table.Pos)
    assert request.Id() == 7
    assert request.Method() == Method.WORKER_CREATE_ROUTER
    assert request.HandlerId() == b"h"
    assert request.BodyType() == RequestBody.Worker_CreateRouterRequest


def test_encode_request_without_body() -> None:
    data = encode_request(flatbuffers.Builder(0), 1, Method.WORKER_DUMP, "")
    message = Message.GetRootAs(data, 4)
    request = Request()
    request.Init(message.Data().Bytes, message.Data().Pos)
    assert request.BodyType() == RequestBody.NONE


def test_encode_rejects_foreign_bodies() -> None:
    with pytest.raises(TypeError, match="not a generated FlatBuffers table"):
        encode_request(flatbuffers.Builder(0), 1, Method.WORKER_DUMP, "", object())
    # A table that exists but is no member of the request union.
    with pytest.raises(TypeError, match="not a member"):
        encode_request(flatbuffers.Builder(0), 1, Method.WORKER_DUMP, "", DumpResponseT())


def test_encode_notification() -> None:
    body = SendRtcpNotificationT()
    body.data = [1, 2, 3]
    data = encode_notification(flatbuffers.Builder(0), Event.TRANSPORT_SEND_RTCP, "t", body)
    message = Message.GetRootAs(data, 4)
    assert message.DataType() == MessageBody.Notification
    notification = Notification()
    notification.Init(message.Data().Bytes, message.Data().Pos)
    assert notification.Event() == Event.TRANSPORT_SEND_RTCP
    assert notification.HandlerId() == b"t"


def test_frame_decoder_splits_and_joins() -> None:
    frames = _response(1) + _response(2)
    decoder = FrameDecoder()
    # Byte by byte: nothing until a frame is whole, then exactly that frame.
    out: list[bytes] = []
    for i in range(len(frames)):
        out.extend(decoder.feed(frames[i : i + 1]))
    assert len(out) == 2
    assert decoder.pending == 0
    first = decode_message(out[0])
    assert isinstance(first, ResponseMessage) and first.id == 1


def test_frame_decoder_rejects_oversized_length() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ValueError, match="exceeds") as info:
        decoder.feed(struct.pack("<I", PAYLOAD_MAX_LEN + 1) + b"x")
    assert isinstance(info.value, FrameError) and info.value.frames == []
    assert decoder.pending == 0


def test_frame_decoder_error_carries_the_frames_before_the_corrupt_length() -> None:
    decoder = FrameDecoder()
    head = _response(1) + _response(2)
    decoder.feed(head[:10])  # some pending: the frames then come from the buffer
    with pytest.raises(FrameError) as info:
        decoder.feed(head[10:] + struct.pack("<I", PAYLOAD_MAX_LEN + 1) + _response(3))
    assert info.value.frames == [_response(1)[4:], _response(2)[4:]]
    assert decoder.pending == 0  # the rest of the chunk is dropped, as Node does


def test_decode_response_error_and_body() -> None:
    body = DumpResponseT()
    body.id = "router-x"
    body.transportIds = []
    body.rtpObserverIds = []
    body.mapProducerIdConsumerIds = []
    body.mapConsumerIdProducerId = []
    body.mapProducerIdObserverIds = []
    body.mapDataProducerIdDataConsumerIds = []
    body.mapDataConsumerIdDataProducerId = []
    message = decode_message(_response(3, body=body)[4:])
    assert isinstance(message, ResponseMessage)
    assert message.accepted and message.body.id == "router-x"
    refused = decode_message(_response(4, accepted=False, error="Error", reason="nope")[4:])
    assert isinstance(refused, ResponseMessage)
    assert (refused.accepted, refused.error, refused.reason) == (False, "Error", "nope")


def test_decode_log() -> None:
    message = decode_message(_log("Wsomething odd")[4:])
    assert message == LogMessage(level="W", text="something odd")


def _message(kind: int, fill: Any) -> bytes:
    """A size-prefixed Message of ``kind`` whose data table ``fill(builder)`` writes."""
    b = flatbuffers.Builder(64)
    data = fill(b)
    MessageMod.Start(b)
    MessageMod.AddDataType(b, kind)
    if data:
        MessageMod.AddData(b, data)
    b.FinishSizePrefixed(MessageMod.End(b))
    return bytes(b.Output())


def _notification(handler_id: str | None, event: int, body: Any = None) -> bytes:
    from mafalda.mediasoup._fbs.Notification import Notification as NotificationMod
    from mafalda.mediasoup._fbs.Notification.Body import Body as NotificationBody

    def fill(b: flatbuffers.Builder) -> int:
        body_offset = body.Pack(b) if body is not None else 0
        handler = b.CreateString(handler_id) if handler_id is not None else 0
        NotificationMod.Start(b)
        if handler:
            NotificationMod.AddHandlerId(b, handler)
        NotificationMod.AddEvent(b, event)
        if body is not None:
            NotificationMod.AddBodyType(b, NotificationBody.Transport_SendRtcpNotification)
            NotificationMod.AddBody(b, body_offset)
        end: int = NotificationMod.End(b)
        return end

    return _message(MessageBody.Notification, fill)


def test_decode_message_reads_the_envelope_as_the_object_api_does() -> None:
    # The envelope is read by hand from the vtables: every field present or absent,
    # as the stock reader sees it.
    frames = [
        _response(0),
        _response(4294967295, body=DumpResponseT(id="r")),
        _response(2, accepted=False, error="TypeError", reason="bad é"),
        _notification("h", Event.TRANSPORT_SEND_RTCP, SendRtcpNotificationT(data=[1, 2])),
        _notification(None, 0),
        _notification("é" * 9, Event.PRODUCER_SCORE),
        _log("Dtext"),
        _message(MessageBody.Log, lambda b: (LogMod.Start(b), LogMod.End(b))[1]),
    ]
    for frame in frames:
        expected = MessageT.InitFromPackedBuf(frame, 4).data
        message = decode_message(frame[4:])
        if isinstance(message, ResponseMessage):
            assert (message.id, message.accepted, message.error, message.reason) == (
                expected.id,
                expected.accepted,
                expected.error or "",
                expected.reason or "",
            )
            assert vars(message.body or expected) == vars(expected.body or expected)
        elif isinstance(message, NotificationMessage):
            assert (message.handler_id, message.event) == (expected.handlerId or "", expected.event)
            assert vars(message.body or expected) == vars(expected.body or expected)
        else:
            text = expected.data or ""
            assert message == LogMessage(level=text[:1], text=text[1:])
    # No data: refused (the channel logs it); a request or no kind: not for us.
    with pytest.raises(ValueError, match="without data"):
        decode_message(_message(MessageBody.Response, lambda b: 0)[4:])
    assert decode_message(_message(MessageBody.Request, lambda b: 0)[4:]) is None
    assert decode_message(_message(MessageBody.NONE, lambda b: 0)[4:]) is None


async def _next_turn() -> None:
    """Return after the callbacks scheduled so far have run (one loop turn)."""
    loop = asyncio.get_running_loop()
    turn = loop.create_future()
    loop.call_soon(turn.set_result, None)
    await turn


class _Writer:
    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def _attached(pid: int = 1) -> Channel:
    """A channel writing into a _Writer (no worker: the tests feed its answers)."""
    channel = Channel(pid=pid)
    channel.attach(_Writer())  # type: ignore[arg-type]
    return channel


async def test_channel_matches_responses_and_maps_errors() -> None:
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    ok = channel.request(Method.WORKER_DUMP)
    bad = channel.request(Method.WORKER_DUMP)
    typed = channel.request(Method.WORKER_DUMP)
    await _next_turn()
    assert len(FrameDecoder().feed(b"".join(writer.sent))) == 3
    channel.data_received(
        _response(2, accepted=False, error="Error", reason="boom")
        + _response(1)
        + _response(3, accepted=False, error="TypeError", reason="wrong")
        + _response(99)  # matches nothing: logged, ignored
    )
    assert await ok is None
    with pytest.raises(WorkerError, match="boom"):
        await bad
    with pytest.raises(WorkerTypeError) as info:
        await typed
    assert isinstance(info.value, TypeError)


async def test_channel_close_fails_pending_and_refuses_new() -> None:
    channel = _attached()
    pending = channel.request(Method.WORKER_DUMP)
    channel.close()
    channel.close()  # idempotent
    with pytest.raises(ChannelClosedError, match="pending request aborted"):
        await pending
    with pytest.raises(ChannelClosedError):
        channel.request(Method.WORKER_DUMP)
    with pytest.raises(ChannelClosedError):
        channel.notify(Event.WORKER_CLOSE)
    channel.request_nowait(Method.WORKER_DUMP)  # swallowed


async def test_notification_never_overtakes_its_response() -> None:
    """A response and a notification in one read: the awaiting task runs first."""
    channel = _attached()
    order: list[str] = []

    async def requester() -> None:
        await channel.request(Method.WORKER_DUMP)
        order.append("response")
        channel.subscribe("obj", lambda event, body: order.append(f"notification:{event}"))

    task = asyncio.ensure_future(requester())
    await asyncio.sleep(0)
    b = flatbuffers.Builder(64)
    from mafalda.mediasoup._fbs.Notification import Notification as NotificationMod

    handler = b.CreateString("obj")
    NotificationMod.Start(b)
    NotificationMod.AddHandlerId(b, handler)
    NotificationMod.AddEvent(b, Event.PRODUCER_SCORE)
    n = NotificationMod.End(b)
    MessageMod.Start(b)
    MessageMod.AddDataType(b, MessageBody.Notification)
    MessageMod.AddData(b, n)
    b.FinishSizePrefixed(MessageMod.End(b))
    channel.data_received(_response(1) + bytes(b.Output()))
    await task
    await asyncio.sleep(0)
    assert order == ["response", f"notification:{Event.PRODUCER_SCORE}"]
    notif = decode_message(bytes(b.Output())[4:])
    assert isinstance(notif, NotificationMessage) and notif.handler_id == "obj"


async def test_responses_before_a_corrupt_length_are_handled_then_it_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A fake stream (a worker never sends a corrupt length): the responses read in the
    same chunk before it resolve their requests (they would hang until their timeout),
    then the corrupt frame is logged."""
    channel = _attached(7)
    first = channel.request(Method.WORKER_DUMP)
    second = channel.request(Method.WORKER_DUMP)
    lost = channel.request(Method.WORKER_DUMP)
    channel.data_received(
        _response(1)
        + _response(2, accepted=False, reason="no")
        + struct.pack("<I", PAYLOAD_MAX_LEN + 5)
        + _response(3)  # after the corruption: dropped with it
    )
    assert first.done() and await first is None
    with pytest.raises(WorkerError, match="no"):
        await second
    assert not lost.done()
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.ERROR,
            f"worker[pid:7] sent an invalid frame: message length {PAYLOAD_MAX_LEN + 5} "
            f"exceeds {PAYLOAD_MAX_LEN}",
        )
    ]
    channel.close()


async def test_channel_survives_garbage() -> None:
    channel = _attached()
    channel.data_received(struct.pack("<I", 4) + b"\x00\x00\x00\x00")  # not a message
    channel.data_received(struct.pack("<I", PAYLOAD_MAX_LEN + 5))  # corrupt length
    pending = channel.request(Method.WORKER_DUMP)
    channel.data_received(_response(1))
    assert await pending is None


@pytest.mark.parametrize("handler_id", ["", "h", "ab", "abc", "abcd", "a-much-longer-id-é"])
def test_request_envelope_reads_back_and_keeps_the_body_aligned(handler_id: str) -> None:
    # The envelope is written by hand: the stock reader must find every field, whatever
    # the padding of the handler id, and the body must keep its builder bytes at the
    # end of a frame whose size is a multiple of 8 (its 8-byte numbers stay aligned).
    parameter = ParameterT(name="x-double", valueType=Value.Double, value=DoubleT(value=0.5))
    codec = RtpCodecParametersT(mimeType="audio/opus", payloadType=100, clockRate=48000)
    codec.parameters = [parameter]
    rtp_parameters = RtpParametersT(codecs=[codec])
    body = ProduceRequestT(producerId="p", kind=1, rtpParameters=rtp_parameters)
    builder = FastBuilder(0)
    data = encode_request(builder, 4294967295, Method.TRANSPORT_PRODUCE, handler_id, body)
    assert struct.unpack_from("<I", data)[0] == len(data) - 4
    assert len(data) % 8 == 0
    packed = builder.Bytes[builder.Head() :]
    assert data.endswith(packed)
    message = MessageT.InitFromPackedBuf(data, 4)
    assert message.dataType == MessageBody.Request
    request = message.data
    assert (request.id, request.method, request.handlerId) == (
        4294967295,
        Method.TRANSPORT_PRODUCE,
        handler_id,
    )
    assert request.bodyType == RequestBody.Transport_ProduceRequest
    decoded = request.body
    assert decoded.producerId == "p"
    param = decoded.rtpParameters.codecs[0].parameters[0]
    assert (param.name, param.value.value) == ("x-double", 0.5)
    # Without a body: no union in the vtable, the same framing.
    data = encode_request(builder, 3, Method.TRANSPORT_DUMP, handler_id)
    assert len(data) % 8 == 0
    request = MessageT.InitFromPackedBuf(data, 4).data
    assert (request.id, request.method, request.handlerId, request.bodyType) == (
        3,
        Method.TRANSPORT_DUMP,
        handler_id,
        RequestBody.NONE,
    )
    assert request.body is None


def _fields(value: Any) -> Any:
    """An object-API table as nested dicts (the tables have no __eq__)."""
    if isinstance(value, list):
        return [_fields(item) for item in value]
    if hasattr(value, "__dict__"):
        return {key: _fields(item) for key, item in vars(value).items()}
    return value


@pytest.mark.parametrize("producer_id", ["", "p", "pr", "pro", "prod", "produ", "a" * 37])
def test_prepacked_table_reads_back_as_the_table_itself(producer_id: str) -> None:
    # The packed bytes of a table copied into a later buffer: the decoded request is
    # the one the table itself makes, whatever the padding before it (the 8-byte
    # double inside must stay aligned).
    parameter = ParameterT(name="x-double", valueType=Value.Double, value=DoubleT(value=0.5))
    codec = RtpCodecParametersT(mimeType="audio/opus", payloadType=100, clockRate=48000)
    codec.parameters = [parameter]
    rtp_parameters = RtpParametersT(codecs=[codec])
    prepacked = prepack(rtp_parameters)
    decoded = []
    for table in (rtp_parameters, prepacked, prepacked):
        body = ProduceRequestT(producerId=producer_id, kind=1, rtpParameters=table)
        data = encode_request(FastBuilder(0), 7, Method.TRANSPORT_PRODUCE, "t", body)
        decoded.append(_fields(MessageT.InitFromPackedBuf(data, 4).data.body))
    assert decoded[0]["rtpParameters"]["codecs"][0]["parameters"][0]["value"]["value"] == 0.5
    assert decoded[1] == decoded[0] and decoded[2] == decoded[0]


def test_prepack_out_of_range_number_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="bad number"):
        prepack(RtpCodecParametersT(mimeType="audio/opus", payloadType=256, clockRate=48000))


async def test_channel_sends_what_encode_request_makes() -> None:
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    for handler_id in ("", "h", "a-much-longer-handler-id-é"):
        for method in (Method.WORKER_DUMP, Method.TRANSPORT_DUMP, Method.PRODUCER_GET_STATS):
            for request_id in (1, 2, 255, 256, 65536, 4294967295):
                channel._next_id = request_id - 1
                pending = channel.request(method, handler_id)
                expected = encode_request(flatbuffers.Builder(0), request_id, method, handler_id)
                assert writer.sent[-1] == expected
                channel.data_received(_response(request_id))
                assert pending.done()
    channel.close()


async def test_requests_sent_while_two_are_awaited_go_out_together_in_order() -> None:
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    futures = [channel.request(Method.WORKER_DUMP, f"h{i}") for i in range(5)]
    channel.notify(Event.TRANSPORT_SEND_RTCP, "t")
    # The first two at once, the rest (the notification included) in one write at the
    # next loop turn.
    assert len(writer.sent) == 2
    await _next_turn()
    assert len(writer.sent) == 3
    expected = [
        encode_request(flatbuffers.Builder(0), i + 1, Method.WORKER_DUMP, f"h{i}") for i in range(5)
    ]
    assert writer.sent[:2] == expected[:2]
    assert writer.sent[2].startswith(b"".join(expected[2:]))
    # Then the notification, after the requests it follows.
    (notification,) = FrameDecoder().feed(writer.sent[2][len(b"".join(expected[2:])) :])
    message = decode_message(notification)
    assert isinstance(message, NotificationMessage) and message.handler_id == "t"
    for i, future in enumerate(futures):
        channel.data_received(_response(i + 1))
        assert await future is None
    channel.close()


async def test_unawaited_requests_go_out_at_once_or_with_a_burst() -> None:
    # As transport.close() then the next create: the close request is written at once
    # (the worker handles it while the caller makes its next request), and so is that
    # request; with two answers awaited, what follows waits for the burst's write at the
    # loop turn, unawaited requests as the others.
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r")
    assert writer.sent == [
        encode_request(flatbuffers.Builder(0), 1, Method.ROUTER_CLOSE_TRANSPORT, "r")
    ]
    future = channel.request(Method.WORKER_DUMP, "w")
    assert writer.sent[1:] == [encode_request(flatbuffers.Builder(0), 2, Method.WORKER_DUMP, "w")]
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r2")
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r3")
    assert len(writer.sent) == 2
    await _next_turn()
    assert writer.sent[2:] == [
        encode_request(flatbuffers.Builder(0), 3, Method.ROUTER_CLOSE_TRANSPORT, "r2")
        + encode_request(flatbuffers.Builder(0), 4, Method.ROUTER_CLOSE_TRANSPORT, "r3")
    ]
    for request_id in (1, 2, 3, 4):
        channel.data_received(_response(request_id))
    assert await future is None
    channel.close()


async def test_unawaited_request_answers_are_matched_and_refusals_logged_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # request_nowait() keeps no future: its answer is matched by id (no "does not match"
    # error), a refusal is only logged at debug level, and closing the channel while it
    # is pending raises nothing.
    channel = _attached()
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r")
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r2")
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r3")
    with caplog.at_level(logging.DEBUG, logger="mafalda.mediasoup.channel"):
        channel.data_received(_response(1))
        channel.data_received(_response(2, accepted=False, error="Error", reason="gone"))
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records == [
        (logging.DEBUG, "ignored request failure [method:ROUTER_CLOSE_TRANSPORT]: gone")
    ]
    channel.close()  # request 3 is still pending: nothing to fail, nothing raised
    assert channel.closed


async def test_closing_with_messages_waiting_sends_them_first() -> None:
    # As Worker.close() does: a notification for the worker, then close(), while
    # requests are awaited. What waited for the loop turn is written before the close.
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    futures = [channel.request(Method.WORKER_DUMP) for _ in range(3)]
    channel.notify(Event.WORKER_CLOSE)
    channel.close()
    assert writer.closed
    frames = FrameDecoder().feed(b"".join(writer.sent))
    last = decode_message(frames[-1])
    assert len(frames) == 4
    assert isinstance(last, NotificationMessage) and last.event == Event.WORKER_CLOSE
    await _next_turn()
    assert len(FrameDecoder().feed(b"".join(writer.sent))) == 4  # nothing more
    for future in futures:
        with pytest.raises(ChannelClosedError):
            await future


def test_encode_out_of_range_number_is_a_type_error() -> None:
    from mafalda.mediasoup._fbs.Transport.SetMaxIncomingBitrateRequest import (
        SetMaxIncomingBitrateRequestT,
    )

    body = SetMaxIncomingBitrateRequestT()
    body.maxIncomingBitrate = 2**40  # a uint32 field
    with pytest.raises(TypeError, match="bad number"):
        encode_request(FastBuilder(0), 1, Method.TRANSPORT_SET_MAX_INCOMING_BITRATE, "t", body)


@pytest.mark.parametrize(
    "body",
    [
        CreateRouterRequestT(routerId="r1"),
        ProduceRequestT(
            producerId="p",
            kind=1,
            rtpParameters=RtpParametersT(
                codecs=[RtpCodecParametersT(mimeType="audio/opus", payloadType=100)]
            ),
        ),
    ],
    ids=["flat", "nested"],
)
def test_requests_without_the_c_encoders_read_back_the_same(
    monkeypatch: pytest.MonkeyPatch, body: Any
) -> None:
    # MAFALDA_PURE_PYTHON=1 (or no C extension): the Python packer writes the body.
    from mafalda.mediasoup import _fastfbs

    method = Method.TRANSPORT_PRODUCE
    native = MessageT.InitFromPackedBuf(encode_request(FastBuilder(0), 9, method, "h", body), 4)
    monkeypatch.setattr(_fastfbs, "NATIVE", False)
    builder = FastBuilder(0)
    data = encode_request(builder, 9, method, "h", body)
    assert data.endswith(builder.Bytes[builder.Head() :])  # the builder's bytes are the body
    assert len(data) % 8 == 0
    assert _fields(MessageT.InitFromPackedBuf(data, 4)) == _fields(native)


async def test_a_message_too_big_for_the_channel_is_refused_and_the_channel_goes_on(
    worker: Any,
) -> None:
    # A DataProducer's message over 4 MiB cannot be framed for the worker (as Node's
    # "Channel request too big"); the channel is not broken by it.
    from tests.conftest import MEDIA_CODECS

    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    transport = await router.create_direct_transport()
    data_producer = await transport.produce_data()
    with pytest.raises(ValueError, match="too big"):
        data_producer.send(bytes(PAYLOAD_MAX_LEN))
    data_producer.send(b"small")
    assert (await data_producer.get_stats())[0]["messagesReceived"] == 1


async def test_requests_to_a_pipe_that_is_gone_raise_channel_closed() -> None:
    # Not attached yet, or the write side closed (the worker exited) before the
    # channel learns it.
    channel = Channel(pid=1)
    with pytest.raises(ChannelClosedError, match="cannot send request"):
        channel.request(Method.WORKER_DUMP)
    with pytest.raises(ChannelClosedError, match="cannot send notification"):
        channel.notify(Event.WORKER_CLOSE)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    writer.closed = True
    with pytest.raises(ChannelClosedError, match="cannot send request"):
        channel.request(Method.WORKER_DUMP, "h", CreateRouterRequestT(routerId="r"))
    assert writer.sent == [] and not channel._sents


async def test_a_burst_whose_pipe_closes_before_its_write_is_failed_by_close() -> None:
    channel = Channel(pid=1)
    writer = _Writer()
    channel.attach(writer)  # type: ignore[arg-type]
    futures = [channel.request(Method.WORKER_DUMP) for _ in range(3)]
    assert len(writer.sent) == 2  # the third waits for the loop turn
    writer.closed = True
    await _next_turn()
    assert len(writer.sent) == 2  # nothing written to a closing pipe
    channel.close()
    for future in futures:
        with pytest.raises(ChannelClosedError):
            await future


async def test_closing_a_channel_never_attached() -> None:
    channel = Channel(pid=1)
    closed: list[bool] = []
    channel.events.on("close", lambda: closed.append(True))
    channel.close()
    assert channel.closed and closed == [True]


async def test_an_invalid_message_is_logged_and_the_next_ones_handled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = _attached(7)
    pending = channel.request(Method.WORKER_DUMP)
    no_data = _message(MessageBody.Response, lambda b: 0)
    channel.data_received(no_data + _response(1))
    assert await pending is None
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "worker[pid:7] sent an invalid message: message without data")
    ]


async def test_the_answer_to_a_cancelled_request_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = _attached()
    cancelled = channel.request(Method.WORKER_DUMP)
    cancelled.cancel()
    pending = channel.request(Method.WORKER_DUMP)
    channel.data_received(_response(1) + _response(2))
    assert await pending is None
    assert cancelled.cancelled()
    assert not caplog.records  # matched (no "does not match any sent request")
    assert not channel._sents


async def test_a_request_not_answered_in_time_fails_and_its_late_answer_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """As mediasoup's 'Channel request timeout': the timeout, plus 0.1 s per request
    pending when it was sent; one timer looks at them all and goes on for the later ones;
    what nobody awaits fails nothing; a late answer is matched and dropped quietly."""
    channel = _attached()
    channel.request_timeout = 0.05
    channel.request_nowait(Method.WORKER_DUMP)  # id 1
    first = channel.request(Method.WORKER_DUMP)  # id 2: 0.05 + 0.1 s
    answered = channel.request(Method.WORKER_DUMP)  # id 3
    later = channel.request(Method.WORKER_DUMP)  # id 4: 0.05 + 0.3 s
    channel.data_received(_response(3))
    assert await answered is None
    with pytest.raises(ChannelTimeoutError, match=r"request timeout \[method:WORKER_DUMP, id:2\]"):
        await first
    assert not later.done()
    with pytest.raises(ChannelTimeoutError, match="id:4"):
        await later
    channel.data_received(_response(2) + _response(4) + _response(1))
    assert not caplog.records and not channel._sents and not channel._late
    # close() stops the timer with the requests it fails.
    pending = channel.request(Method.WORKER_DUMP)
    assert channel._sweeper is not None
    channel.close()
    assert channel._sweeper is None
    with pytest.raises(ChannelClosedError):
        await pending


async def test_a_failing_notification_handler_is_logged_and_the_others_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    channel = _attached()
    seen: list[int] = []

    def failing(event: int, body: Any) -> None:
        raise RuntimeError("handler boom")

    channel.subscribe("bad", failing)
    channel.subscribe("good", lambda event, body: seen.append(event))
    channel.data_received(
        _notification("bad", Event.PRODUCER_SCORE) + _notification("good", Event.PRODUCER_SCORE)
    )
    await _next_turn()
    assert seen == [Event.PRODUCER_SCORE]
    (record,) = caplog.records
    assert record.getMessage() == "notification handler failed [event:PRODUCER_SCORE]"
    assert record.exc_info is not None and str(record.exc_info[1]) == "handler boom"


async def test_a_request_cancelled_by_its_caller_is_skipped_by_the_timeout_sweep(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A caller that gave up (cancelled its request) before the deadline: the sweep
    finds a done future, leaves it alone and still times out the others, then the late
    answers are matched quietly."""
    channel = _attached()
    channel.request_timeout = 0.05
    given_up = channel.request(Method.WORKER_DUMP)  # id 1: 0.05 s
    waited = channel.request(Method.WORKER_DUMP)  # id 2: 0.05 + 0.1 s
    given_up.cancel()
    async with asyncio.timeout(5):
        with pytest.raises(ChannelTimeoutError, match="id:2"):
            await waited
    assert given_up.cancelled()
    channel.data_received(_response(1) + _response(2))
    assert not caplog.records and not channel._sents


async def test_requests_past_their_deadline_are_kept_for_their_late_answer_then_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Awaited or not, a request past its deadline is no longer due (nothing waits for
    its answer to write the next requests), its late answer (a refusal included) is
    dropped quietly for a grace, then the request is forgotten: an answer after that
    matches nothing and is logged. close() forgets them too."""
    channel = _attached()
    channel.request_timeout = 0.05
    channel.late_answer_grace = 0.3
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r")  # id 1: 0.05 s
    channel.request_timeout = 1.0
    awaited = channel.request(Method.WORKER_DUMP)  # id 2: 1.1 s
    with caplog.at_level(logging.DEBUG, logger="mafalda.mediasoup.channel"):
        async with asyncio.timeout(5):
            while 1 not in channel._late:
                await asyncio.sleep(0.01)
            assert list(channel._sents) == [2]
            # The timer goes on for the grace of the first (until 0.35 s), then for the
            # second's deadline and grace (until 1.4 s).
            while 1 in channel._late:
                await asyncio.sleep(0.01)
            with pytest.raises(ChannelTimeoutError, match="id:2"):
                await awaited
        assert not channel._sents and set(channel._late) == {2}
        channel.data_received(_response(2, accepted=False, reason="late"))
        channel.data_received(_response(1))
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, "ignored request failure [method:WORKER_DUMP]: late"),
        (logging.ERROR, "response does not match any sent request [id:1]"),
    ]
    channel.request_nowait(Method.ROUTER_CLOSE_TRANSPORT, "r")  # id 3
    channel.request_timeout = 0.01
    async with asyncio.timeout(5):
        while not channel._late:
            await asyncio.sleep(0.01)
    channel.close()
    assert not channel._late and channel._sweeper is None


async def test_timed_out_requests_no_longer_hold_back_the_next_ones(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A frozen worker (SIGSTOP): two requests time out. They are no longer due: a
    request after them is written at once, not held for the next loop turn as when two
    answers are due. The worker resumed, their late answers are dropped quietly and the
    new request is answered."""
    channel = worker._channel
    channel.request_timeout = 0.2
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        async with asyncio.timeout(5):
            for result in await asyncio.gather(
                worker.dump(), worker.dump(), return_exceptions=True
            ):
                assert isinstance(result, ChannelTimeoutError)
        channel.request_timeout = REQUEST_TIMEOUT
        pending = channel.request(Method.WORKER_DUMP)
        assert not channel._out  # written at once
        assert len(channel._sents) == 1 and len(channel._late) == 2
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    with caplog.at_level(logging.DEBUG, logger="mafalda.mediasoup.channel"):
        async with asyncio.timeout(10):
            await pending
    assert not channel._sents and not channel._late
    assert not [r for r in caplog.records if r.name == "mafalda.mediasoup.channel"]


async def test_a_request_the_worker_never_answers_is_dropped_after_the_grace(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker frozen for longer than a request's timeout and grace (SIGSTOP): the
    request is forgotten (it would stay for good if the worker never answered); its
    answer once the worker resumes matches nothing and is logged."""
    channel = worker._channel
    channel.request_timeout = 0.1
    channel.late_answer_grace = 0.2
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ChannelTimeoutError):
            await worker.dump()
        async with asyncio.timeout(5):
            while channel._sents or channel._late:
                await asyncio.sleep(0.02)
        channel.request_timeout = REQUEST_TIMEOUT
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    await worker.dump()  # answered after the forgotten one
    records = [r for r in caplog.records if r.name == "mafalda.mediasoup.channel"]
    assert [(r.levelno, r.getMessage()) for r in records] == [
        (logging.ERROR, f"response does not match any sent request [id:{channel._next_id - 1}]")
    ]
