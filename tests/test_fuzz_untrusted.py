"""What browsers and mediasoup-client send (RTP parameters and capabilities, DTLS
parameters, SCTP stream parameters, layers) is untrusted input an app hands to the
library as it comes. Fuzzed from valid dicts (keys dropped, values replaced by junk of
any type, unknown keys, list items dropped or repeated, at any depth) against a real
worker, local and through Remote Mediasoup: every call ends (within 5 s) in success or
in a TypeError / ValueError / mediasoup error naming the problem (the library's or the
worker's refusal), never in an unexpected exception (KeyError, AttributeError,
OverflowError, struct.error...), and the worker is alive and answering after each
one."""

from __future__ import annotations

import asyncio
import collections
import copy
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mafalda.mediasoup import MediasoupError, Router, Worker, create_worker
from mafalda.remote import connect, serve

LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}
MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
]
VIDEO_RTP: Any = {
    "mid": "v",
    "codecs": [
        {
            "mimeType": "video/VP8",
            "payloadType": 96,
            "clockRate": 90000,
            "parameters": {"x-google-start-bitrate": 1000},
            "rtcpFeedback": [
                {"type": "nack", "parameter": ""},
                {"type": "ccm", "parameter": "fir"},
            ],
        },
        {"mimeType": "video/rtx", "payloadType": 97, "clockRate": 90000, "parameters": {"apt": 96}},
    ],
    "headerExtensions": [
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:mid", "id": 1},
        {"uri": "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id", "id": 2},
    ],
    "encodings": [
        {"rid": "r0", "maxBitrate": 100000, "scalabilityMode": "L1T3"},
        {"rid": "r1", "maxBitrate": 300000, "scaleResolutionDownBy": 2},
    ],
    "rtcp": {"cname": "fuzz", "reducedSize": True},
}
DTLS: dict[str, Any] = {
    "role": "client",
    "fingerprints": [{"algorithm": "sha-256", "value": ":".join(["AB"] * 32)}],
}
SCTP_STREAM: dict[str, Any] = {"streamId": 3, "ordered": False, "maxRetransmits": 2}
LAYERS: dict[str, Any] = {"spatialLayer": 1, "temporalLayer": 0}

#: Values of any type, with the edges that break encoders: huge, negative, NaN, empty.
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-1, 0, 255, 256, 65535, 65536, 2**31, 2**32, 2**63, 2**64]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["", "video/rtx", "audio/opus", "sha-256", "client", "\x00", "é" * 300]),
    st.lists(st.integers(min_value=-5, max_value=300), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


@pytest.fixture(params=["mediasoup", "remote"])
async def worker(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """A local worker, and one through Remote Mediasoup (the same input from the app,
    over the wire to a loopback server: the same outcomes)."""
    if request.param == "mediasoup":
        local = await create_worker(log_level="warn")
        yield local
        local.close()
        await local.wait_closed()
        return
    server = await serve(token="fuzz", grace_period=0)
    client: Any = await connect(server.url, token="fuzz")
    try:
        yield await client.create_worker(log_level="warn")
    finally:
        await client.aclose()
        await server.close()


ALLOWED = (TypeError, ValueError, MediasoupError)
#: Messages that name no field: Python's own, or the encoder's, leaking through.
UNCLEAR = re.compile(
    r"int\(\)|invalid literal|cannot convert|CreateString|bad number in|format requires"
    r"|out of range|has no attribute|not subscriptable|unhashable|NoneType|not iterable"
    r"|object is not|argument must be"
)


@st.composite
def mutated(draw: st.DrawFn, value: Any, depth: int = 0) -> Any:
    """``value`` with a few changes, anywhere in it (the same value quite often)."""
    if isinstance(value, dict) and depth < 4:
        value = dict(value)
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            op = draw(st.sampled_from(["drop", "junk", "deeper", "deeper", "extra"]))
            if op == "extra" or not value:
                value[draw(st.text(max_size=10))] = draw(JUNK)
                continue
            key = draw(st.sampled_from(sorted(value)))
            if op == "drop":
                del value[key]
            elif op == "junk":
                value[key] = draw(JUNK)
            else:
                value[key] = draw(mutated(value[key], depth + 1))
        return value
    if isinstance(value, list) and depth < 4:
        value = list(value)
        for _ in range(draw(st.integers(min_value=0, max_value=2))):
            op = draw(st.sampled_from(["drop", "repeat", "junk", "deeper", "deeper"]))
            if not value:
                value.append(draw(JUNK))
                continue
            index = draw(st.integers(min_value=0, max_value=len(value) - 1))
            if op == "drop":
                del value[index]
            elif op == "repeat":
                value.insert(index, copy.deepcopy(value[index]))
            elif op == "junk":
                value[index] = draw(JUNK)
            else:
                value[index] = draw(mutated(value[index], depth + 1))
        return value
    return draw(st.one_of(st.just(value), JUNK))


#: FUZZ_SCALE=N draws N times more inputs (a hunt; CI runs with 1, a few seconds).
SCALE = int(os.environ.get("FUZZ_SCALE", "1"))


def examples(valid: Any, count: int) -> list[Any]:
    """``count`` mutations of ``valid`` (drawn up front: the calls are async)."""
    drawn: list[Any] = []

    @settings(max_examples=count * SCALE, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(valid), mutated(valid), JUNK))
    def collect(value: Any) -> None:
        drawn.append(value)

    collect()
    return drawn


class Calls:
    """Runs untrusted calls on ``worker``: a call's result (None when refused as
    allowed), failing the test naming the input otherwise; counts both ways."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.done = 0
        self.refused: collections.Counter[str] = collections.Counter()

    async def run(self, what: str, value: Any, call: Awaitable[Any]) -> Any:
        try:
            async with asyncio.timeout(5):
                result = await call
        except ALLOWED as error:
            assert str(error), f"{what}({value!r}): {type(error).__name__} with no message"
            assert not UNCLEAR.search(str(error)), f"{what}({value!r}): unclear {error!r}"
            self.refused[type(error).__name__] += 1
            return None
        except Exception as error:  # what this test is for: the input that broke a call
            pytest.fail(f"{what}({value!r}) raised {type(error).__name__}: {error}")
        finally:
            assert not self.worker.died, f"{what}({value!r}) killed the worker"
        self.done += 1
        return result

    def check(self) -> None:
        """Both ways were taken: valid inputs made it, the worker refused some (so the
        library let through what it cannot judge) or the library did."""
        assert self.done > 0 and sum(self.refused.values()) > 0, (self.done, self.refused)


def camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


async def _kwargs_call(method: Callable[..., Awaitable[Any]], arguments: dict[str, Any]) -> Any:
    return await method(**arguments)  # a wrong name: Python's own TypeError, inside


async def _router(worker: Worker) -> Router:
    return await worker.create_router(media_codecs=MEDIA_CODECS)


async def test_produce_with_untrusted_rtp_parameters(worker: Worker) -> None:
    router = await _router(worker)
    transport = await router.create_webrtc_transport(listen_infos=[LISTEN])
    calls = Calls(worker)
    for value in examples(VIDEO_RTP, 300):
        producer = await calls.run(
            "produce", value, transport.produce(kind="video", rtp_parameters=value)
        )
        if producer is not None:
            producer.close()
    calls.check()
    assert (await transport.dump())["id"] == transport.id


async def test_consume_and_can_consume_with_untrusted_rtp_capabilities(worker: Worker) -> None:
    router = await _router(worker)
    transport = await router.create_webrtc_transport(listen_infos=[LISTEN])
    producer = await transport.produce(kind="video", rtp_parameters=VIDEO_RTP)
    calls = Calls(worker)
    for value in examples(copy.deepcopy(router.rtp_capabilities), 300):
        try:
            can = router.can_consume(producer_id=producer.id, rtp_capabilities=value)
        except ALLOWED:
            can = False
        except Exception as error:
            pytest.fail(f"can_consume({value!r}) raised {type(error).__name__}: {error}")
        consumer = await calls.run(
            "consume", value, transport.consume(producer_id=producer.id, rtp_capabilities=value)
        )
        assert can == (consumer is not None), value  # what can_consume() said holds
        if consumer is not None:
            consumer.close()
    calls.check()
    assert (await producer.dump())["id"] == producer.id


async def test_connect_with_untrusted_dtls_parameters(worker: Worker) -> None:
    router = await _router(worker)
    calls = Calls(worker)
    for value in examples(DTLS, 150):
        transport = await router.create_webrtc_transport(listen_infos=[LISTEN])
        await calls.run("connect", value, transport.connect(dtls_parameters=value))
        transport.close()
    calls.check()
    assert (await router.dump())["id"] == router.id


async def test_produce_data_with_untrusted_sctp_stream_parameters(worker: Worker) -> None:
    router = await _router(worker)
    transport = await router.create_webrtc_transport(listen_infos=[LISTEN], enable_sctp=True)
    labels = examples("chat", 20)
    calls = Calls(worker)
    for index, value in enumerate(examples(SCTP_STREAM, 200)):
        label = labels[index % len(labels)]
        data_producer = await calls.run(
            "produce_data",
            (value, label),
            transport.produce_data(sctp_stream_parameters=value, label=label, protocol=label),
        )
        if data_producer is not None:
            data_producer.close()
    calls.check()
    assert (await transport.dump())["id"] == transport.id


async def test_consumer_layers_and_priority_untrusted(worker: Worker) -> None:
    router = await _router(worker)
    transport = await router.create_webrtc_transport(listen_infos=[LISTEN])
    producer = await transport.produce(kind="video", rtp_parameters=VIDEO_RTP)
    consumer = await transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    calls = Calls(worker)
    for value in examples(LAYERS, 150):
        # As an app passes what a client sent: the dict's keys as arguments.
        if isinstance(value, dict) and all(isinstance(key, str) for key in value):
            arguments = {camel_to_snake(key): item for key, item in value.items()}
            call = _kwargs_call(consumer.set_preferred_layers, arguments)
        else:
            call = _kwargs_call(consumer.set_preferred_layers, {"spatial_layer": value})
        await calls.run("set_preferred_layers", value, call)
    for value in examples(1, 80):
        await calls.run("set_priority", value, consumer.set_priority(value))
    calls.check()
    assert (await consumer.dump())["id"] == consumer.id
