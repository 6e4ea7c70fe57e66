"""DataConsumer against a real worker (port of mediasoup's test-DataConsumer.ts, and more)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from mafalda.mediasoup import Router
from mafalda.mediasoup._fbs.DataConsumer.DumpResponse import DumpResponseT
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup.data_consumer import (
    DataConsumer,
    DataConsumerType,
    data_consumer_type_from_fbs,
    data_consumer_type_to_fbs,
    parse_data_consumer_dump,
)
from mafalda.mediasoup.data_producer import DataProducer
from mafalda.mediasoup.direct_transport import DirectTransport
from mafalda.mediasoup.errors import InvalidStateError, WorkerError, WorkerTypeError
from mafalda.mediasoup.plain_transport import PlainTransport
from mafalda.mediasoup.webrtc_transport import WebRtcTransport

LISTEN_INFOS: list[Any] = [{"protocol": "udp", "ip": "127.0.0.1"}]

SCTP_DATA_PRODUCER_OPTIONS: dict[str, Any] = {
    "sctp_stream_parameters": {"streamId": 12345, "ordered": False, "maxPacketLifeTime": 5000},
    "label": "foo",
    "protocol": "bar",
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


@pytest.fixture
async def sctp_data_producer(transport1: WebRtcTransport) -> DataProducer:
    return await transport1.produce_data(**SCTP_DATA_PRODUCER_OPTIONS)


@pytest.fixture
async def direct_data_producer(direct: DirectTransport) -> DataProducer:
    return await direct.produce_data()


def record(emitter: Any, *events: str) -> list[tuple[str, tuple[Any, ...]]]:
    """Record the given events of an emitter, in order, with their arguments."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    for event in events:
        emitter.on(event, lambda *args, _event=event: seen.append((_event, args)))
    return seen


async def until(predicate: Any, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


# -- creation (test-DataConsumer.ts) -------------------------------------------------------


async def test_consume_data_succeeds(
    router: Router, transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    new: list[Any] = []
    transport2.observer.once("newdataconsumer", new.append)
    data_consumer = await transport2.consume_data(
        data_producer_id=sctp_data_producer.id,
        max_packet_life_time=4000,
        # Node wraps 65536 and 65537 to 0 and 1 (uint16); we refuse them (see below).
        subchannels=[0, 1, 1, 1, 2, 65535, 100],
        app_data={"baz": "LOL"},
    )
    assert new == [data_consumer]
    assert isinstance(data_consumer.id, str)
    assert data_consumer.data_producer_id == sctp_data_producer.id
    assert data_consumer.closed is False
    assert data_consumer.type == "sctp"
    params = data_consumer.sctp_stream_parameters
    assert params is not None
    assert isinstance(params["streamId"], int)
    assert params["ordered"] is False
    assert params["maxPacketLifeTime"] == 4000
    assert "maxRetransmits" not in params
    assert data_consumer.label == "foo"
    assert data_consumer.protocol == "bar"
    assert data_consumer.paused is False
    assert data_consumer.data_producer_paused is False
    assert sorted(data_consumer.subchannels) == [0, 1, 2, 100, 65535]
    assert data_consumer.app_data == {"baz": "LOL"}
    dump = await router.dump()
    assert {
        "key": sctp_data_producer.id,
        "values": [data_consumer.id],
    } in dump["mapDataProducerIdDataConsumerIds"]
    assert {
        "key": data_consumer.id,
        "value": sctp_data_producer.id,
    } in dump["mapDataConsumerIdDataProducerId"]
    transport_dump = await transport2.dump()
    assert transport_dump["dataProducerIds"] == []
    assert transport_dump["dataConsumerIds"] == [data_consumer.id]
    assert "DataConsumer" in repr(data_consumer)


async def test_consume_data_with_out_of_range_subchannels_fails(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    with pytest.raises(TypeError, match="subchannels"):
        await transport2.consume_data(data_producer_id=sctp_data_producer.id, subchannels=[65536])


async def test_dump(transport2: WebRtcTransport, sctp_data_producer: DataProducer) -> None:
    data_consumer = await transport2.consume_data(
        data_producer_id=sctp_data_producer.id,
        ordered=True,
        subchannels=[0, 1, 1, 1, 2, 65535, 100],
        app_data={"baz": "LOL"},
    )
    dump = await data_consumer.dump()
    assert data_consumer.sctp_stream_parameters is not None
    assert sorted(dump["subchannels"]) == [0, 1, 2, 100, 65535]
    assert {**dump, "subchannels": []} == {
        "id": data_consumer.id,
        "dataProducerId": data_consumer.data_producer_id,
        "type": "sctp",
        "sctpStreamParameters": {
            "streamId": data_consumer.sctp_stream_parameters["streamId"],
            "ordered": True,
        },
        "label": "foo",
        "protocol": "bar",
        "bufferedAmountLowThreshold": 0,
        "paused": False,
        "dataProducerPaused": False,
        "subchannels": [],
    }


async def test_get_stats(transport2: WebRtcTransport, sctp_data_producer: DataProducer) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    stats = await data_consumer.get_stats()
    assert len(stats) == 1
    stat = stats[0]
    assert set(stat) == {
        "type",
        "timestamp",
        "label",
        "protocol",
        "messagesSent",
        "bytesSent",
        "bufferedAmount",
    }
    assert stat["type"] == "data-consumer"
    assert stat["label"] == data_consumer.label
    assert stat["protocol"] == data_consumer.protocol
    assert stat["messagesSent"] == 0
    assert stat["bytesSent"] == 0
    assert stat["bufferedAmount"] == 0


async def test_set_subchannels(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    await data_consumer.set_subchannels([999, 999, 998, 0])
    assert sorted(data_consumer.subchannels) == [0, 998, 999]
    # The property is a copy.
    data_consumer.subchannels.append(5)
    assert sorted(data_consumer.subchannels) == [0, 998, 999]
    assert sorted((await data_consumer.dump())["subchannels"]) == [0, 998, 999]
    await data_consumer.set_subchannels((7, 8))  # type: ignore[arg-type]
    assert sorted(data_consumer.subchannels) == [7, 8]


async def test_add_subchannel_and_remove_subchannel(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    await data_consumer.set_subchannels([])
    assert data_consumer.subchannels == []
    await data_consumer.add_subchannel(5)
    assert data_consumer.subchannels == [5]
    await data_consumer.add_subchannel(10)
    assert sorted(data_consumer.subchannels) == [5, 10]
    await data_consumer.add_subchannel(5)
    assert sorted(data_consumer.subchannels) == [5, 10]
    await data_consumer.remove_subchannel(666)
    assert sorted(data_consumer.subchannels) == [5, 10]
    await data_consumer.remove_subchannel(5)
    assert data_consumer.subchannels == [10]
    await data_consumer.set_subchannels([])
    assert data_consumer.subchannels == []


async def test_subchannel_methods_with_wrong_arguments(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(
        data_producer_id=sctp_data_producer.id, subchannels=[1]
    )
    with pytest.raises(ValueError, match="subchannels"):
        await data_consumer.set_subchannels([999, 65536])  # Node would wrap it to 0
    with pytest.raises(TypeError, match="subchannels"):
        await data_consumer.set_subchannels(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="subchannels"):
        await data_consumer.set_subchannels(["1"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="subchannel"):
        await data_consumer.add_subchannel("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subchannel"):
        await data_consumer.add_subchannel(-1)
    with pytest.raises(TypeError, match="subchannel"):
        await data_consumer.remove_subchannel(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="subchannel"):
        await data_consumer.remove_subchannel(70000)
    assert data_consumer.subchannels == [1]
    assert (await data_consumer.dump())["subchannels"] == [1]


async def test_consume_data_from_a_direct_data_producer(
    router: Router, transport2: WebRtcTransport, direct_data_producer: DataProducer
) -> None:
    new: list[Any] = []
    transport2.observer.once("newdataconsumer", new.append)
    data_consumer = await transport2.consume_data(data_producer_id=direct_data_producer.id)
    assert new == [data_consumer]
    assert data_consumer.data_producer_id == direct_data_producer.id
    assert data_consumer.closed is False
    assert data_consumer.type == "sctp"
    params = data_consumer.sctp_stream_parameters
    assert params is not None
    assert isinstance(params["streamId"], int)
    assert params == {"streamId": params["streamId"], "ordered": True}
    assert data_consumer.label == ""
    assert data_consumer.protocol == ""
    assert data_consumer.paused is False
    assert data_consumer.subchannels == []
    assert data_consumer.app_data == {}
    dump = await router.dump()
    assert {
        "key": direct_data_producer.id,
        "values": [data_consumer.id],
    } in dump["mapDataProducerIdDataConsumerIds"]
    assert {
        "key": data_consumer.id,
        "value": direct_data_producer.id,
    } in dump["mapDataConsumerIdDataProducerId"]
    assert (await transport2.dump())["dataConsumerIds"] == [data_consumer.id]


async def test_dump_consuming_from_a_direct_data_producer(
    transport2: WebRtcTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(
        data_producer_id=direct_data_producer.id,
        ordered=False,
        max_retransmits=2,
        subchannels=[0, 1],
    )
    dump = await data_consumer.dump()
    assert data_consumer.sctp_stream_parameters is not None
    assert dump["sctpStreamParameters"] == {
        "streamId": data_consumer.sctp_stream_parameters["streamId"],
        "ordered": False,
        "maxRetransmits": 2,
    }
    assert dump["type"] == "sctp"
    assert dump["label"] == ""
    assert dump["protocol"] == ""
    assert dump["paused"] is False
    assert dump["dataProducerPaused"] is False
    assert sorted(dump["subchannels"]) == [0, 1]


async def test_consume_data_on_a_direct_transport(
    direct: DirectTransport, direct_data_producer: DataProducer, sctp_data_producer: DataProducer
) -> None:
    new: list[Any] = []
    direct.observer.once("newdataconsumer", new.append)
    data_consumer = await direct.consume_data(
        data_producer_id=sctp_data_producer.id, paused=True, app_data={"hehe": "HEHE"}
    )
    assert new == [data_consumer]
    assert data_consumer.data_producer_id == sctp_data_producer.id
    assert data_consumer.type == "direct"
    assert data_consumer.sctp_stream_parameters is None
    assert data_consumer.label == "foo"
    assert data_consumer.protocol == "bar"
    assert data_consumer.paused is True
    assert data_consumer.app_data == {"hehe": "HEHE"}
    transport_dump = await direct.dump()
    assert transport_dump["dataProducerIds"] == [direct_data_producer.id]
    assert transport_dump["dataConsumerIds"] == [data_consumer.id]


async def test_dump_on_a_direct_transport(
    direct: DirectTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=sctp_data_producer.id, paused=True)
    assert await data_consumer.dump() == {
        "id": data_consumer.id,
        "dataProducerId": data_consumer.data_producer_id,
        "type": "direct",
        "label": "foo",
        "protocol": "bar",
        "bufferedAmountLowThreshold": 0,
        "paused": True,
        "dataProducerPaused": False,
        "subchannels": [],
    }


async def test_get_stats_on_a_direct_transport(
    direct: DirectTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=sctp_data_producer.id)
    stats = await data_consumer.get_stats()
    assert stats[0]["type"] == "data-consumer"
    assert stats[0]["label"] == "foo"
    assert stats[0]["protocol"] == "bar"
    assert stats[0]["messagesSent"] == 0
    assert stats[0]["bytesSent"] == 0


# -- pause/resume -------------------------------------------------------------------------


async def test_pause_and_resume(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    seen = record(data_consumer.observer, "pause", "resume")
    await data_consumer.pause()
    assert data_consumer.paused is True
    assert (await data_consumer.dump())["paused"] is True
    await data_consumer.resume()
    assert data_consumer.paused is False
    assert (await data_consumer.dump())["paused"] is False
    await asyncio.gather(
        data_consumer.pause(),
        data_consumer.resume(),
        data_consumer.pause(),
        data_consumer.pause(),
        data_consumer.pause(),
        data_consumer.resume(),
    )
    assert [name for name, _ in seen].count("pause") == 3
    assert [name for name, _ in seen].count("resume") == 3


async def test_data_producer_pause_and_resume_emit_events(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    observed = record(data_consumer.observer, "pause", "resume")
    events = record(data_consumer, "dataproducerpause", "dataproducerresume")
    await asyncio.gather(sctp_data_producer.pause(), sctp_data_producer.resume())
    await until(lambda: len(observed) == 2)
    assert [name for name, _ in observed] == ["pause", "resume"]
    assert [name for name, _ in events] == ["dataproducerpause", "dataproducerresume"]
    assert data_consumer.paused is False
    assert data_consumer.data_producer_paused is False


async def test_data_producer_pause_while_paused_emits_no_observer_event(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    await data_consumer.pause()
    observed = record(data_consumer.observer, "pause", "resume")
    events = record(data_consumer, "dataproducerpause", "dataproducerresume")
    await sctp_data_producer.pause()
    await until(lambda: len(events) == 1)
    assert data_consumer.data_producer_paused is True
    assert (await data_consumer.dump())["dataProducerPaused"] is True
    # Its own resume() does not "resume" it either: the data producer is still paused.
    await data_consumer.resume()
    await data_consumer.pause()
    await sctp_data_producer.resume()
    await until(lambda: len(events) == 2)
    assert [name for name, _ in events] == ["dataproducerpause", "dataproducerresume"]
    assert observed == []
    assert data_consumer.data_producer_paused is False


async def test_duplicated_data_producer_pause_notifications_are_ignored(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    events = record(data_consumer, "dataproducerpause", "dataproducerresume")
    data_consumer._on_notification(Event.DATACONSUMER_DATAPRODUCER_RESUME, None)
    data_consumer._on_notification(Event.DATACONSUMER_DATAPRODUCER_PAUSE, None)
    data_consumer._on_notification(Event.DATACONSUMER_DATAPRODUCER_PAUSE, None)
    assert [name for name, _ in events] == ["dataproducerpause"]


async def test_consume_data_from_a_paused_data_producer(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    await direct_data_producer.pause()
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    assert data_consumer.data_producer_paused is True
    observed = record(data_consumer.observer, "resume")
    await direct_data_producer.resume()
    await until(lambda: not data_consumer.data_producer_paused)
    assert observed == [("resume", ())]


# -- close --------------------------------------------------------------------------------


async def test_close(
    router: Router, transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    observed = record(data_consumer.observer, "close")
    private = record(data_consumer, "@close")
    data_consumer.close()
    assert observed == [("close", ())]
    assert private == [("@close", ())]
    assert data_consumer.closed is True
    data_consumer.close()
    assert len(observed) == 1
    dump = await router.dump()
    assert {
        "key": sctp_data_producer.id,
        "values": [],
    } in dump["mapDataProducerIdDataConsumerIds"]
    assert dump["mapDataConsumerIdDataProducerId"] == []
    transport_dump = await transport2.dump()
    assert transport_dump["dataProducerIds"] == []
    assert transport_dump["dataConsumerIds"] == []


async def test_methods_reject_if_closed(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    data_consumer.close()
    for call in (
        data_consumer.dump(),
        data_consumer.get_stats(),
        data_consumer.pause(),
        data_consumer.resume(),
        data_consumer.get_buffered_amount(),
        data_consumer.set_buffered_amount_low_threshold(10),
        data_consumer.send("foo"),
        data_consumer.set_subchannels([1]),
        data_consumer.add_subchannel(1),
        data_consumer.remove_subchannel(1),
    ):
        with pytest.raises(InvalidStateError):
            await call


async def test_emits_dataproducerclose_if_data_producer_is_closed(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    observed = record(data_consumer.observer, "close")
    events = record(data_consumer, "@dataproducerclose", "dataproducerclose")
    closed = asyncio.ensure_future(data_consumer.events.wait_for("dataproducerclose"))
    await asyncio.sleep(0)
    sctp_data_producer.close()
    await asyncio.wait_for(closed, 2)
    assert [name for name, _ in events] == ["@dataproducerclose", "dataproducerclose"]
    assert observed == [("close", ())]
    assert data_consumer.closed is True
    assert transport2.data_consumers == {}


async def test_emits_transportclose_if_transport_is_closed(
    router: Router, transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    observed = record(data_consumer.observer, "close")
    events = record(data_consumer, "transportclose")
    transport2.close()
    assert events == [("transportclose", ())]
    assert observed == [("close", ())]
    assert data_consumer.closed is True
    data_consumer.transport_closed()
    assert len(observed) == 1
    dump = await router.dump()
    assert dump["mapDataProducerIdDataConsumerIds"] == [
        {"key": sctp_data_producer.id, "values": []}
    ]
    assert dump["mapDataConsumerIdDataProducerId"] == []


async def test_off_removes_a_listener(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    calls: list[Any] = []
    data_consumer.once("message", calls.append)
    data_consumer.off("message", calls.append)
    direct_data_producer.send("x")
    await asyncio.sleep(0.05)
    assert calls == []


# -- buffered amount, send() --------------------------------------------------------------


async def test_buffered_amount_low_threshold(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    assert await data_consumer.get_buffered_amount() == 0
    low = asyncio.ensure_future(data_consumer.events.wait_for("bufferedamountlow"))
    await asyncio.sleep(0)
    # Nothing is buffered: the worker notifies 'bufferedamountlow' at once.
    await data_consumer.set_buffered_amount_low_threshold(1000)
    assert await asyncio.wait_for(low, 2) == (0,)
    assert (await data_consumer.dump())["bufferedAmountLowThreshold"] == 1000


async def test_buffered_amount_with_wrong_arguments(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    with pytest.raises(TypeError, match="threshold"):
        await data_consumer.set_buffered_amount_low_threshold("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="threshold"):
        await data_consumer.set_buffered_amount_low_threshold(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold"):
        await data_consumer.set_buffered_amount_low_threshold(-1)
    with pytest.raises(ValueError, match="threshold"):
        await data_consumer.set_buffered_amount_low_threshold(2**32)


async def test_buffered_amount_of_a_direct_data_consumer_is_refused(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    with pytest.raises(WorkerTypeError):
        await data_consumer.get_buffered_amount()
    with pytest.raises(WorkerTypeError):
        await data_consumer.set_buffered_amount_low_threshold(10)


async def test_send_on_a_direct_data_consumer_is_refused(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    with pytest.raises(WorkerTypeError, match="invalid DataConsumer type"):
        await data_consumer.send("foo")


async def test_send_without_sctp_connection_fails(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    with pytest.raises(WorkerError, match="message send failed"):
        await data_consumer.send("foo")
    with pytest.raises(WorkerError, match="message send failed"):
        await data_consumer.send(b"foo", ppid=53)


async def test_send_with_wrong_arguments(
    transport2: WebRtcTransport, sctp_data_producer: DataProducer
) -> None:
    data_consumer = await transport2.consume_data(data_producer_id=sctp_data_producer.id)
    with pytest.raises(TypeError, match="message"):
        await data_consumer.send(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ppid"):
        await data_consumer.send("x", ppid="51")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ppid"):
        await data_consumer.send("x", ppid=-3)
    assert (await data_consumer.get_stats())[0]["messagesSent"] == 0


# -- worker notifications -----------------------------------------------------------------


async def test_sctp_send_buffer_full_notification(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    events = record(data_consumer, "sctpsendbufferfull")
    data_consumer._on_notification(Event.DATACONSUMER_SCTP_SENDBUFFER_FULL, None)
    assert events == [("sctpsendbufferfull", ())]


async def test_unknown_notification_is_logged(
    direct: DirectTransport, direct_data_producer: DataProducer, caplog: pytest.LogCaptureFixture
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    assert isinstance(data_consumer, DataConsumer)
    with caplog.at_level(logging.ERROR, logger="mafalda.mediasoup.data_consumer"):
        data_consumer._on_notification(Event.PRODUCER_SCORE, None)
    assert "ignoring unknown event" in caplog.text


async def test_app_data_is_settable(
    direct: DirectTransport, direct_data_producer: DataProducer
) -> None:
    data_consumer = await direct.consume_data(data_producer_id=direct_data_producer.id)
    assert data_consumer.app_data == {}
    data_consumer.app_data = {"x": 1}
    assert data_consumer.app_data == {"x": 1}


# -- pure helpers -------------------------------------------------------------------------


def test_type_conversions() -> None:
    kinds: tuple[DataConsumerType, ...] = ("sctp", "direct")
    for kind in kinds:
        assert data_consumer_type_from_fbs(data_consumer_type_to_fbs(kind)) == kind
    with pytest.raises(TypeError, match="DataConsumerType"):
        data_consumer_type_to_fbs("foo")  # type: ignore[arg-type]


def test_parse_dump_without_subchannels_vector() -> None:
    body = DumpResponseT(
        id="a",
        dataProducerId="b",
        type=data_consumer_type_to_fbs("direct"),
        label="",
        protocol="",
        bufferedAmountLowThreshold=5,
        paused=False,
        dataProducerPaused=True,
        subchannels=None,
    )
    assert parse_data_consumer_dump(body) == {
        "id": "a",
        "dataProducerId": "b",
        "type": "direct",
        "label": "",
        "protocol": "",
        "bufferedAmountLowThreshold": 5,
        "paused": False,
        "dataProducerPaused": True,
        "subchannels": [],
    }


# -- a real SCTP association: two PlainTransports of the router connected to each other ---


async def sctp_link(
    router: Router, **options: Any
) -> tuple[PlainTransport, PlainTransport, DirectTransport]:
    """Two PlainTransports with SCTP, connected to each other over 127.0.0.1, and a
    DirectTransport to inject and collect messages."""
    listen_info: Any = {"protocol": "udp", "ip": "127.0.0.1"}
    left = await router.create_plain_transport(listen_info=listen_info, enable_sctp=True, **options)
    right = await router.create_plain_transport(listen_info=listen_info, enable_sctp=True)
    await left.connect(ip="127.0.0.1", port=right.tuple["localPort"])
    await right.connect(ip="127.0.0.1", port=left.tuple["localPort"])
    direct = await router.create_direct_transport()
    return left, right, direct


async def wire(
    left: Any, right: Any, direct: DirectTransport, source: DataProducer
) -> tuple[DataConsumer, DataProducer, DataConsumer]:
    """source (direct) -> SCTP DataConsumer on left ~~SCTP~~> SCTP DataProducer on right ->
    direct DataConsumer (sink)."""
    sctp_consumer = await left.consume_data(data_producer_id=source.id)
    sctp_producer = await right.produce_data(
        sctp_stream_parameters=sctp_consumer.sctp_stream_parameters,
        label=sctp_consumer.label,
        protocol=sctp_consumer.protocol,
    )
    sink = await direct.consume_data(data_producer_id=sctp_producer.id)
    await until(lambda: left.sctp_state == "connected" and right.sctp_state == "connected", 5)
    return sctp_consumer, sctp_producer, sink


async def test_sctp_data_path(router: Router) -> None:
    left, right, direct = await sctp_link(router)
    source = await direct.produce_data(label="chat", protocol="text")
    sctp_consumer, sctp_producer, sink = await wire(left, right, direct, source)
    assert sctp_consumer.type == "sctp"
    assert sctp_producer.label == "chat"
    received: list[tuple[bytes, int]] = []
    sink.on("message", lambda message, ppid: received.append((message, ppid)))
    # Relayed by the worker: direct DataProducer -> SCTP -> direct DataConsumer.
    source.send("hello")
    source.send(b"\x00\x01")
    source.send("")
    await until(lambda: len(received) == 3)
    # DataConsumer.send(): straight to the remote SCTP endpoint, on its stream.
    await sctp_consumer.send("from the consumer")
    await sctp_consumer.send(b"bin")
    await sctp_consumer.send(b"", ppid=57)
    await until(lambda: len(received) == 6)
    assert received == [
        (b"hello", 51),
        (b"\x00\x01", 53),
        (b" ", 56),
        (b"from the consumer", 51),
        (b"bin", 53),
        (b"\x00", 57),
    ]
    stats = await sctp_consumer.get_stats()
    assert stats[0]["messagesSent"] == 6
    assert stats[0]["bytesSent"] == 5 + 2 + 1 + 17 + 3 + 1
    assert await sctp_consumer.get_buffered_amount() >= 0
    producer_stats = await sctp_producer.get_stats()
    assert producer_stats[0]["messagesReceived"] == 6
    # A paused SCTP DataConsumer refuses to send.
    await sctp_consumer.pause()
    with pytest.raises(WorkerError, match="message send failed"):
        await sctp_consumer.send("nope")
    await sctp_consumer.resume()
    await sctp_consumer.send("again")
    await until(lambda: len(received) == 7)
    # Over maxMessageSize (262144 by default): refused before reaching SCTP.
    with pytest.raises(WorkerTypeError, match="maxMessageSize"):
        await sctp_consumer.send(b"x" * 262145)


async def test_sctp_send_buffer_full_and_buffered_amount_low(router: Router) -> None:
    left, right, direct = await sctp_link(router, sctp_send_buffer_size=262144)
    source = await direct.produce_data()
    # No direct sink here: the receiving SCTP DataProducer's stats tell what arrived.
    sctp_consumer, sctp_producer, _ = await wire(left, right, direct, source)
    events = record(sctp_consumer, "sctpsendbufferfull", "bufferedamountlow")
    await sctp_consumer.set_buffered_amount_low_threshold(0)
    await until(lambda: len(events) == 1)  # immediate: nothing buffered yet
    assert events == [("bufferedamountlow", (0,))]
    # Queue far more than the send buffer holds (8 MB into 256 KiB), without waiting for
    # any answer: even on a loaded machine the peer cannot drain it in between.
    message = b"m" * 200000
    results = await asyncio.gather(
        *(sctp_consumer.send(message) for _ in range(40)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, Exception)]
    assert refused, "the SCTP send buffer never filled up"
    assert all(isinstance(r, WorkerError) and "sctpsendbufferfull" in str(r) for r in refused)
    await until(lambda: ("sctpsendbufferfull", ()) in events)
    accepted = len(results) - len(refused)

    async def received() -> int:
        return (await sctp_producer.get_stats())[0]["messagesReceived"]

    # Once the peer acknowledged everything, the buffered amount drops to the threshold.
    async with asyncio.timeout(5):
        while await received() < accepted:
            await asyncio.sleep(0.02)
    await until(lambda: events[-1][0] == "bufferedamountlow" and len(events) > 2, 5)
    assert events[-1] == ("bufferedamountlow", (0,))
    async with asyncio.timeout(5):
        while await sctp_consumer.get_buffered_amount() != 0:
            await asyncio.sleep(0.02)
    assert (await sctp_consumer.get_stats())[0]["messagesSent"] == len(results)
