"""DataProducer against a real worker (port of mediasoup's test-DataProducer.ts, the send()
tests of test-DirectTransport.ts, and more)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mafalda.mediasoup import Router
from mafalda.mediasoup._fbs.DataProducer.DumpResponse import DumpResponseT
from mafalda.mediasoup._fbs.DataProducer.SendNotification import (
    SendNotification,
    SendNotificationT,
)
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.Notification.Notification import Notification
from mafalda.mediasoup._fbs.SctpParameters.SctpStreamParameters import SctpStreamParametersT
from mafalda.mediasoup.channel import encode_notification
from mafalda.mediasoup.data_consumer import DataConsumer
from mafalda.mediasoup.data_producer import (
    DataProducer,
    DataProducerType,
    data_producer_type_from_fbs,
    data_producer_type_to_fbs,
    parse_data_producer_dump,
    resolve_message_ppid,
)
from mafalda.mediasoup.direct_transport import DirectTransport
from mafalda.mediasoup.errors import InvalidStateError, WorkerError
from mafalda.mediasoup.webrtc_transport import WebRtcTransport

LISTEN_INFOS: list[Any] = [{"protocol": "udp", "ip": "127.0.0.1"}]

OPTIONS1: dict[str, Any] = {
    "sctp_stream_parameters": {"streamId": 666},
    "label": "foo",
    "protocol": "bar",
    "app_data": {"foo": 1, "bar": "2"},
}
OPTIONS2: dict[str, Any] = {
    "sctp_stream_parameters": {"streamId": 777, "maxRetransmits": 3},
    "label": "foo",
    "protocol": "bar",
    "paused": True,
    "app_data": {"foo": 1, "bar": "2"},
}


@pytest.fixture
async def transport1(router: Router) -> WebRtcTransport:
    return await router.create_webrtc_transport(listen_infos=LISTEN_INFOS, enable_sctp=True)


@pytest.fixture
async def transport2(router: Router) -> WebRtcTransport:
    return await router.create_webrtc_transport(listen_infos=LISTEN_INFOS, enable_sctp=True)


@pytest.fixture
async def direct(router: Router) -> DirectTransport:
    return await router.create_direct_transport()


class Inbox:
    """Collects the 'message' events of a DataConsumer."""

    def __init__(self, data_consumer: DataConsumer) -> None:
        self.messages: list[tuple[bytes, int]] = []
        self._changed = asyncio.Event()
        data_consumer.on("message", self._on_message)

    def _on_message(self, message: bytes, ppid: int) -> None:
        self.messages.append((message, ppid))
        self._changed.set()

    async def wait(self, count: int, timeout: float = 2.0) -> list[tuple[bytes, int]]:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.messages


# -- creation (test-DataProducer.ts) ------------------------------------------------------


async def test_produce_data_succeeds(router: Router, transport1: WebRtcTransport) -> None:
    new: list[Any] = []
    transport1.observer.once("newdataproducer", new.append)
    data_producer = await transport1.produce_data(**OPTIONS1)
    assert new == [data_producer]
    assert isinstance(data_producer.id, str)
    assert data_producer.closed is False
    assert data_producer.type == "sctp"
    assert data_producer.sctp_stream_parameters == {"streamId": 666, "ordered": True}
    assert data_producer.label == "foo"
    assert data_producer.protocol == "bar"
    assert data_producer.paused is False
    assert data_producer.app_data == {"foo": 1, "bar": "2"}
    dump = await router.dump()
    assert {"key": data_producer.id, "values": []} in dump["mapDataProducerIdDataConsumerIds"]
    assert dump["mapDataConsumerIdDataProducerId"] == []
    transport_dump = await transport1.dump()
    assert transport_dump["id"] == transport1.id
    assert transport_dump["dataProducerIds"] == [data_producer.id]
    assert transport_dump["dataConsumerIds"] == []
    assert "DataProducer" in repr(data_producer)


async def test_produce_data_paused_with_max_retransmits(
    router: Router, transport2: WebRtcTransport
) -> None:
    new: list[Any] = []
    transport2.observer.once("newdataproducer", new.append)
    data_producer = await transport2.produce_data(**OPTIONS2)
    assert new == [data_producer]
    assert data_producer.type == "sctp"
    assert data_producer.sctp_stream_parameters == {
        "streamId": 777,
        "ordered": False,
        "maxRetransmits": 3,
    }
    assert data_producer.paused is True
    assert data_producer.app_data == {"foo": 1, "bar": "2"}
    dump = await router.dump()
    assert {"key": data_producer.id, "values": []} in dump["mapDataProducerIdDataConsumerIds"]
    assert (await transport2.dump())["dataProducerIds"] == [data_producer.id]


async def test_produce_data_with_wrong_arguments(transport1: WebRtcTransport) -> None:
    with pytest.raises(TypeError):
        await transport1.produce_data()
    with pytest.raises(TypeError):
        await transport1.produce_data(sctp_stream_parameters={"foo": "foo"})  # type: ignore[arg-type]


async def test_produce_data_with_used_stream_id_fails(transport1: WebRtcTransport) -> None:
    await transport1.produce_data(**OPTIONS1)
    with pytest.raises(WorkerError):
        await transport1.produce_data(sctp_stream_parameters={"streamId": 666})


async def test_produce_data_ordered_with_max_packet_life_time_fails(
    transport1: WebRtcTransport,
) -> None:
    with pytest.raises(TypeError):
        await transport1.produce_data(
            sctp_stream_parameters={"streamId": 999, "ordered": True, "maxPacketLifeTime": 4000}
        )


async def test_produce_data_on_direct_transport(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data(label="foo", protocol="bar")
    assert data_producer.type == "direct"
    assert data_producer.sctp_stream_parameters is None
    assert data_producer.app_data == {}
    dump = await data_producer.dump()
    assert dump == {
        "id": data_producer.id,
        "type": "direct",
        "label": "foo",
        "protocol": "bar",
        "paused": False,
    }


# -- dump, stats, pause/resume ------------------------------------------------------------


async def test_dump(transport1: WebRtcTransport, transport2: WebRtcTransport) -> None:
    data_producer1 = await transport1.produce_data(**OPTIONS1)
    assert await data_producer1.dump() == {
        "id": data_producer1.id,
        "type": "sctp",
        "sctpStreamParameters": {"streamId": 666, "ordered": True},
        "label": "foo",
        "protocol": "bar",
        "paused": False,
    }
    data_producer2 = await transport2.produce_data(**OPTIONS2)
    assert await data_producer2.dump() == {
        "id": data_producer2.id,
        "type": "sctp",
        "sctpStreamParameters": {"streamId": 777, "ordered": False, "maxRetransmits": 3},
        "label": "foo",
        "protocol": "bar",
        "paused": True,
    }


async def test_get_stats(transport1: WebRtcTransport, transport2: WebRtcTransport) -> None:
    for transport, options in ((transport1, OPTIONS1), (transport2, OPTIONS2)):
        data_producer = await transport.produce_data(**options)
        stats = await data_producer.get_stats()
        assert len(stats) == 1
        stat = stats[0]
        assert set(stat) == {
            "type",
            "timestamp",
            "label",
            "protocol",
            "messagesReceived",
            "bytesReceived",
        }
        assert stat["type"] == "data-producer"
        assert isinstance(stat["timestamp"], int) and stat["timestamp"] > 0
        assert stat["label"] == data_producer.label
        assert stat["protocol"] == data_producer.protocol
        assert stat["messagesReceived"] == 0
        assert stat["bytesReceived"] == 0


async def test_pause_and_resume(transport1: WebRtcTransport) -> None:
    data_producer = await transport1.produce_data(**OPTIONS1)
    pauses: list[int] = []
    resumes: list[int] = []
    data_producer.observer.on("pause", lambda: pauses.append(1))
    data_producer.observer.on("resume", lambda: resumes.append(1))
    await data_producer.pause()
    assert data_producer.paused is True
    assert (await data_producer.dump())["paused"] is True
    await data_producer.resume()
    assert data_producer.paused is False
    assert (await data_producer.dump())["paused"] is False
    # Not awaited one by one: the observer still fires when the state flips (each
    # coroutine sends its request when it first runs, in task creation order).
    await asyncio.gather(
        data_producer.pause(),
        data_producer.resume(),
        data_producer.pause(),
        data_producer.pause(),
        data_producer.pause(),
        data_producer.resume(),
    )
    assert len(pauses) == 3
    assert len(resumes) == 3
    # Pausing a paused producer (resuming a resumed one) emits nothing.
    await data_producer.resume()
    assert len(resumes) == 3


async def test_pause_and_resume_emit_events_in_order(transport1: WebRtcTransport) -> None:
    data_producer = await transport1.produce_data(**OPTIONS1)
    events: list[str] = []
    data_producer.observer.once("resume", lambda: events.append("resume"))
    data_producer.observer.once("pause", lambda: events.append("pause"))
    await asyncio.gather(data_producer.pause(), data_producer.resume())
    assert events == ["pause", "resume"]
    assert data_producer.paused is False


# -- close --------------------------------------------------------------------------------


async def test_close(router: Router, transport1: WebRtcTransport) -> None:
    data_producer = await transport1.produce_data(**OPTIONS1)
    closes: list[int] = []
    private: list[int] = []
    data_producer.observer.once("close", lambda: closes.append(1))
    data_producer.on("@close", lambda: private.append(1))
    data_producer.close()
    assert closes == [1]
    assert private == [1]
    assert data_producer.closed is True
    data_producer.close()  # closing again does nothing
    assert closes == [1]
    dump = await router.dump()
    assert dump["mapDataProducerIdDataConsumerIds"] == []
    assert dump["mapDataConsumerIdDataProducerId"] == []
    transport_dump = await transport1.dump()
    assert transport_dump["dataProducerIds"] == []
    assert transport_dump["dataConsumerIds"] == []


async def test_methods_reject_if_closed(transport1: WebRtcTransport) -> None:
    data_producer = await transport1.produce_data(**OPTIONS1)
    data_producer.close()
    with pytest.raises(InvalidStateError):
        await data_producer.dump()
    with pytest.raises(InvalidStateError):
        await data_producer.get_stats()
    with pytest.raises(InvalidStateError):
        await data_producer.pause()
    with pytest.raises(InvalidStateError):
        await data_producer.resume()
    with pytest.raises(InvalidStateError):
        data_producer.send("foo")


async def test_emits_transportclose_if_transport_is_closed(transport2: WebRtcTransport) -> None:
    data_producer = await transport2.produce_data(**OPTIONS2)
    closes: list[int] = []
    transport_closes: list[int] = []
    data_producer.observer.once("close", lambda: closes.append(1))
    data_producer.on("transportclose", lambda: transport_closes.append(1))
    transport2.close()
    assert transport_closes == [1]
    assert closes == [1]
    assert data_producer.closed is True
    data_producer.transport_closed()  # already closed: nothing happens
    assert closes == [1]
    with pytest.raises(InvalidStateError):
        await data_producer.dump()


async def test_emits_transportclose_if_router_is_closed(
    router: Router, direct: DirectTransport
) -> None:
    data_producer = await direct.produce_data()
    transport_closes: list[int] = []
    data_producer.on("transportclose", lambda: transport_closes.append(1))
    router.close()
    assert transport_closes == [1]
    assert data_producer.closed is True


async def test_on_once_off(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data()
    calls: list[int] = []

    def listener() -> None:
        calls.append(1)

    data_producer.on("transportclose", listener)
    data_producer.off("transportclose", listener)
    data_producer.once("transportclose", listener)
    direct.close()
    assert calls == [1]


# -- send() through a DirectTransport ------------------------------------------------------


async def test_send_strings_and_binary(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data(label="foo", protocol="bar")
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    inbox = Inbox(data_consumer)
    data_producer.send("héllo")
    data_producer.send(b"\x00\x01\xff")
    data_producer.send(bytearray(b"ba"))
    data_producer.send(memoryview(b"mv"))
    data_producer.send("")
    data_producer.send(b"")
    data_producer.send("custom", ppid=1234)
    data_producer.send(b"", ppid=56)  # PPID 56 always carries a single space
    messages = await inbox.wait(8)
    assert messages == [
        ("héllo".encode(), 51),
        (b"\x00\x01\xff", 53),
        (b"ba", 53),
        (b"mv", 53),
        (b" ", 56),
        (b"\x00", 57),
        (b"custom", 1234),
        (b" ", 56),
    ]
    assert all(type(message) is bytes for message, _ in messages)
    stats = await data_producer.get_stats()
    assert stats[0]["messagesReceived"] == 8
    assert stats[0]["bytesReceived"] == len("héllo".encode()) + 3 + 2 + 2 + 1 + 1 + 6 + 1


async def test_send_many_messages_with_pauses(direct: DirectTransport) -> None:
    """Port of test-DirectTransport.ts 'dataProducer.send() succeeds'."""
    data_producer = await direct.produce_data(label="foo", protocol="bar", app_data={"foo": "bar"})
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    num_messages = 200
    pause_sending_at, resume_sending_at = 10, 20
    pause_receiving_at, resume_receiving_at = 40, 60
    expected_received = (
        num_messages
        - (resume_sending_at - pause_sending_at)
        - (resume_receiving_at - pause_receiving_at)
    )
    received: list[tuple[int, int, int]] = []
    last = asyncio.get_running_loop().create_future()

    def on_message(message: bytes, ppid: int) -> None:
        message_id = int(message.decode())
        received.append((message_id, ppid, len(message)))
        if message_id == num_messages:
            last.set_result(None)

    data_consumer.on("message", on_message)
    sent_bytes = 0
    effectively_sent_bytes = 0
    for message_id in range(1, num_messages + 1):
        if message_id == pause_sending_at:
            await data_producer.pause()
        elif message_id == resume_sending_at:
            await data_producer.resume()
        elif message_id == pause_receiving_at:
            await data_consumer.pause()
        elif message_id == resume_receiving_at:
            await data_consumer.resume()
        message: str | bytes
        if message_id < num_messages / 2:
            message = str(message_id)
        else:
            message = str(message_id).encode()
        data_producer.send(message)
        size = len(str(message_id))
        sent_bytes += size
        if not data_producer.paused and not data_consumer.paused:
            effectively_sent_bytes += size
    await asyncio.wait_for(last, 5)
    assert len(received) == expected_received
    assert sum(size for _, _, size in received) == effectively_sent_bytes
    for message_id, ppid, _ in received:
        assert ppid == (51 if message_id < num_messages / 2 else 53)
    producer_stats = await data_producer.get_stats()
    assert producer_stats[0]["messagesReceived"] == num_messages
    assert producer_stats[0]["bytesReceived"] == sent_bytes
    consumer_stats = await data_consumer.get_stats()
    assert consumer_stats[0]["type"] == "data-consumer"
    assert consumer_stats[0]["label"] == data_consumer.label
    assert consumer_stats[0]["protocol"] == data_consumer.protocol
    assert consumer_stats[0]["messagesSent"] == expected_received
    assert consumer_stats[0]["bytesSent"] == effectively_sent_bytes


async def test_send_with_subchannels(direct: DirectTransport) -> None:
    """Port of test-DirectTransport.ts 'dataProducer.send() with subchannels succeeds'."""
    data_producer = await direct.produce_data()
    data_consumer1 = await direct.consume_data(
        data_producer_id=data_producer.id, subchannels=[1, 11, 666]
    )
    data_consumer2 = await direct.consume_data(
        data_producer_id=data_producer.id, subchannels=[2, 22, 666]
    )
    inbox1 = Inbox(data_consumer1)
    inbox2 = Inbox(data_consumer2)
    data_producer.send("both")
    data_producer.send("both", subchannels=[1, 2])
    data_producer.send("both", subchannels=[11, 22, 33], required_subchannel=666)
    data_producer.send("none", subchannels=[3], required_subchannel=666)
    data_producer.send("none", subchannels=[666], required_subchannel=3)
    data_producer.send("dc1", subchannels=[1])
    data_producer.send("dc1", subchannels=[11], required_subchannel=1)
    data_producer.send("dc1", subchannels=[666], required_subchannel=11)
    data_producer.send("dc2", subchannels=[666], required_subchannel=2)
    # Make data_consumer2 also subscribe to subchannel 1. Not awaited, as in Node: its
    # request is written when the task first runs, so let it run before the next send.
    task = asyncio.ensure_future(data_consumer2.set_subchannels([*data_consumer2.subchannels, 1]))
    await asyncio.sleep(0)
    data_producer.send("both", subchannels=[1], required_subchannel=666)
    # Positional arguments, as Node's send(message, ppid, subchannels, requiredSubchannel).
    data_producer.send("dc1", None, [11], None)
    await task
    messages1 = [m.decode() for m, _ in await inbox1.wait(8)]
    messages2 = [m.decode() for m, _ in await inbox2.wait(5)]
    await asyncio.sleep(0.05)  # nothing else arrives
    assert messages1 == ["both", "both", "both", "dc1", "dc1", "dc1", "both", "dc1"]
    assert messages2 == ["both", "both", "both", "dc2", "both"]
    assert sorted(data_consumer2.subchannels) == [1, 2, 22, 666]


async def test_send_over_max_message_size_is_dropped(router: Router) -> None:
    transport = await router.create_direct_transport(max_message_size=10)
    data_producer = await transport.produce_data()
    data_consumer = await transport.consume_data(data_producer_id=data_producer.id)
    inbox = Inbox(data_consumer)
    data_producer.send(b"x" * 11)  # the worker refuses the notification (and logs it)
    data_producer.send(b"y" * 10)
    assert await inbox.wait(1) == [(b"y" * 10, 53)]
    stats = await data_producer.get_stats()
    assert stats[0]["messagesReceived"] == 1
    assert stats[0]["bytesReceived"] == 10


async def test_send_large_binary_message(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data()
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    inbox = Inbox(data_consumer)
    payload = bytes(range(256)) * 1024  # 256 KiB: the DirectTransport's maxMessageSize
    data_producer.send(payload)
    messages = await inbox.wait(1, timeout=5)
    assert messages[0][0] == payload
    assert messages[0][1] == 53


async def test_paused_data_producer_sends_nothing(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data(paused=True)
    data_consumer = await direct.consume_data(data_producer_id=data_producer.id)
    assert data_consumer.data_producer_paused is True
    inbox = Inbox(data_consumer)
    data_producer.send("lost")
    await data_producer.resume()
    data_producer.send("kept")
    assert await inbox.wait(1) == [(b"kept", 51)]
    await asyncio.sleep(0.05)
    assert len(inbox.messages) == 1


async def test_send_with_wrong_arguments(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data()
    with pytest.raises(TypeError, match="message"):
        data_producer.send(123)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="message"):
        data_producer.send(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ppid"):
        data_producer.send("x", ppid="51")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ppid"):
        data_producer.send("x", ppid=True)
    with pytest.raises(ValueError, match="ppid"):
        data_producer.send("x", ppid=-1)
    with pytest.raises(ValueError, match="ppid"):
        data_producer.send("x", ppid=2**32)
    with pytest.raises(TypeError, match="subchannels"):
        data_producer.send("x", subchannels=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subchannels"):
        data_producer.send("x", subchannels="12")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subchannels"):
        data_producer.send("x", subchannels=[1.5])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="subchannels"):
        data_producer.send("x", subchannels=[65536])
    with pytest.raises(TypeError, match="required_subchannel"):
        data_producer.send("x", required_subchannel="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="required_subchannel"):
        data_producer.send("x", required_subchannel=-1)
    # Nothing reached the worker.
    assert (await data_producer.get_stats())[0]["messagesReceived"] == 0


async def test_app_data_is_settable(direct: DirectTransport) -> None:
    data_producer = await direct.produce_data(app_data={"a": 1})
    data_producer.app_data = {"b": 2}
    assert data_producer.app_data == {"b": 2}


# -- pure helpers -------------------------------------------------------------------------


def test_type_conversions() -> None:
    kinds: tuple[DataProducerType, ...] = ("sctp", "direct")
    for kind in kinds:
        assert data_producer_type_from_fbs(data_producer_type_to_fbs(kind)) == kind
    with pytest.raises(TypeError):
        data_producer_type_to_fbs("foo")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        data_producer_type_from_fbs(99)


def test_resolve_message_ppid() -> None:
    assert resolve_message_ppid("a", None) == (b"a", 51)
    assert resolve_message_ppid("", None) == (b" ", 56)
    assert resolve_message_ppid(b"a", None) == (b"a", 53)
    assert resolve_message_ppid(b"", None) == (b"\x00", 57)
    assert resolve_message_ppid("abc", 57) == (b"\x00", 57)
    assert resolve_message_ppid(b"abc", 51) == (b"abc", 51)


def test_parse_dump_with_all_sctp_fields() -> None:
    body = DumpResponseT(
        id="x",
        type=data_producer_type_to_fbs("sctp"),
        sctpStreamParameters=SctpStreamParametersT(
            streamId=3, ordered=False, maxPacketLifeTime=100
        ),
        label="l",
        protocol="p",
        paused=True,
    )
    assert parse_data_producer_dump(body) == {
        "id": "x",
        "type": "sctp",
        "sctpStreamParameters": {"streamId": 3, "ordered": False, "maxPacketLifeTime": 100},
        "label": "l",
        "protocol": "p",
        "paused": True,
    }


def test_send_notification_encoding() -> None:
    """What DataProducer.send() writes: the payload as a byte vector, subchannels."""
    import flatbuffers

    builder = flatbuffers.Builder(64)
    data = encode_notification(
        builder,
        Event.DATAPRODUCER_SEND,
        "dp",
        SendNotificationT(ppid=53, data=b"\x01\x02\x03", subchannels=[7, 8], requiredSubchannel=9),
    )
    notification = _decode_notification(data)
    body = SendNotification()
    body.Init(notification.Body().Bytes, notification.Body().Pos)
    assert notification.HandlerId() == b"dp"
    assert notification.Event() == Event.DATAPRODUCER_SEND
    assert body.Ppid() == 53
    assert bytes(body.Data(i) for i in range(body.DataLength())) == b"\x01\x02\x03"
    assert [body.Subchannels(i) for i in range(body.SubchannelsLength())] == [7, 8]
    assert body.RequiredSubchannel() == 9
    builder = flatbuffers.Builder(64)
    data = encode_notification(
        builder, Event.DATAPRODUCER_SEND, "dp", SendNotificationT(ppid=51, data=b"", subchannels=[])
    )
    notification = _decode_notification(data)
    body = SendNotification()
    body.Init(notification.Body().Bytes, notification.Body().Pos)
    assert body.DataLength() == 0
    assert body.SubchannelsLength() == 0
    assert body.RequiredSubchannel() is None


def _decode_notification(data: bytes) -> Any:
    from mafalda.mediasoup._fbs.Message.Message import Message

    message = Message.GetRootAs(data[4:], 0)
    table = message.Data()
    notification = Notification()
    notification.Init(table.Bytes, table.Pos)
    return notification


async def test_unknown_notification_is_logged(
    direct: DirectTransport, caplog: pytest.LogCaptureFixture
) -> None:
    data_producer = await direct.produce_data()
    assert isinstance(data_producer, DataProducer)
    with caplog.at_level(logging.ERROR, logger="mafalda.mediasoup.data_producer"):
        data_producer._on_notification(Event.PRODUCER_SCORE, None)
    assert "ignoring unknown event" in caplog.text
