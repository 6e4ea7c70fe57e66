"""PlainTransport against a real worker (port of mediasoup's test-PlainTransport.ts,
plus RTP and SRTP media sent from Python UDP sockets through the worker)."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

import flatbuffers
import pylibsrtp
import pytest

from mafalda.mediasoup import PlainTransport, Router, Worker, find_worker_bin
from mafalda.mediasoup._fbs.Common.TraceDirection import TraceDirection
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.PlainTransport.RtcpTupleNotification import RtcpTupleNotificationT
from mafalda.mediasoup._fbs.PlainTransport.TupleNotification import TupleNotificationT
from mafalda.mediasoup._fbs.SctpAssociation.SctpState import SctpState as FbsSctpState
from mafalda.mediasoup._fbs.Transport.Protocol import Protocol
from mafalda.mediasoup._fbs.Transport.SctpStateChangeNotification import (
    SctpStateChangeNotificationT,
)
from mafalda.mediasoup._fbs.Transport.TraceEventType import TraceEventType
from mafalda.mediasoup._fbs.Transport.TraceNotification import TraceNotificationT
from mafalda.mediasoup._fbs.Transport.Tuple import TupleT
from mafalda.mediasoup.channel import Channel, encode_notification
from mafalda.mediasoup.errors import InvalidStateError, WorkerError
from mafalda.mediasoup.plain_transport import validate_srtp_parameters
from tests.processes import free_ports

from .conftest import TRANSPORT_STAT_COUNTERS, hosting_worker

KEY_AES_CM = "ZnQ3eWJraDg0d3ZoYzM5cXN1Y2pnaHU5NWxrZTVv"  # 30 bytes
KEY_GCM_256 = "YTdjcDBvY2JoMGY5YXNlNDc0eDJsdGgwaWRvNnJsamRrdG16aWVpZHphdHo="  # 44 bytes
KEY_GCM_128 = base64.b64encode(bytes(range(28))).decode()

OPUS_PT = 111
OPUS_SSRC = 11111111
OPUS_PRODUCER_PARAMETERS: dict[str, Any] = {
    "codecs": [
        {"mimeType": "audio/opus", "payloadType": OPUS_PT, "clockRate": 48000, "channels": 2}
    ],
    "encodings": [{"ssrc": OPUS_SSRC}],
}


def inject(channel: Channel, event: int, handler_id: str, body: Any = None) -> None:
    """Feed the channel a notification as if the worker had sent it."""
    channel.data_received(encode_notification(flatbuffers.Builder(256), event, handler_id, body))


def rtp_packet(payload_type: int, ssrc: int, seq: int, timestamp: int, payload: bytes) -> bytes:
    """A minimal RTP packet: version 2, no padding, extension, CSRC or marker."""
    return struct.pack("!BBHII", 0x80, payload_type, seq & 0xFFFF, timestamp, ssrc) + payload


def parse_rtp(data: bytes) -> tuple[int, int, int] | None:
    """(payload type, sequence number, ssrc) of an RTP packet; None for RTCP/garbage."""
    if len(data) < 12 or data[0] >> 6 != 2:
        return None
    payload_type = data[1] & 0x7F
    if 72 <= payload_type <= 76:  # RTCP packet types 200..204 with the marker bit.
        return None
    seq, _, ssrc = struct.unpack("!HII", data[2:12])
    return payload_type, seq, ssrc


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket on 127.0.0.1 that queues what it receives."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.put_nowait(data)

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port

    def send(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def udp_peer() -> UdpPeer:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_datagram_endpoint(UdpPeer, local_addr=("127.0.0.1", 0))
    return protocol


async def collect_rtp(
    peer: UdpPeer,
    count: int,
    *,
    payload_type: int,
    ssrc: int,
    decrypt: Any = None,
    timeout: float = 5.0,
) -> list[int]:
    """Sequence numbers of the first ``count`` RTP packets of that payload type and ssrc."""
    seqs: list[int] = []
    async with asyncio.timeout(timeout):
        while len(seqs) < count:
            data = await peer.received.get()
            if decrypt is not None:
                if parse_rtp(data) is None:
                    continue
                data = decrypt(data)
            parsed = parse_rtp(data)
            if parsed is not None and parsed[0] == payload_type and parsed[2] == ssrc:
                seqs.append(parsed[1])
    return seqs


@pytest.fixture
async def plain(router: Router) -> PlainTransport:
    return await router.create_plain_transport(listen_ip="127.0.0.1")


# -- creation ---------------------------------------------------------------------------


async def test_create_plain_transport_succeeds(router: Router) -> None:
    transport1 = await router.create_plain_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 2000, "max": 3000}}
    )
    assert (await router.dump())["transportIds"] == [transport1.id]
    new_transports: list[Any] = []
    router.observer.once("newtransport", new_transports.append)
    transport = await router.create_plain_transport(
        listen_info={
            "protocol": "udp",
            "ip": "127.0.0.1",
            "announcedAddress": "9.9.9.1",
            "portRange": {"min": 2000, "max": 3000},
        },
        enable_sctp=True,
        app_data={"foo": "bar"},
    )
    assert new_transports == [transport]
    assert isinstance(transport.id, str)
    assert transport.closed is False
    assert transport.type == "plain"
    assert transport.app_data == {"foo": "bar"}
    assert transport.tuple["localIp"] == "9.9.9.1"
    assert transport.tuple["localAddress"] == "9.9.9.1"
    assert 2000 <= transport.tuple["localPort"] <= 3000
    assert transport.tuple["protocol"] == "udp"
    assert "remoteIp" not in transport.tuple
    assert transport.rtcp_tuple is None
    assert transport.rtcp_mux is True
    assert transport.comedia is False
    assert transport.sctp_parameters is not None
    assert transport.sctp_parameters["port"] == 5000
    assert transport.sctp_parameters["OS"] == 1024
    assert transport.sctp_parameters["MIS"] == 1024
    assert transport.sctp_parameters["maxMessageSize"] == 262144
    assert transport.sctp_state == "new"
    assert transport.srtp_parameters is None

    dump = await transport.dump()
    assert dump["id"] == transport.id
    assert dump["producerIds"] == []
    assert dump["consumerIds"] == []
    assert dump["tuple"] == transport.tuple
    assert dump.get("rtcpTuple") == transport.rtcp_tuple
    assert dump.get("sctpParameters") == transport.sctp_parameters
    assert dump.get("sctpState") == "new"
    assert dump["rtcpMux"] is True
    assert dump["comedia"] is False
    assert "srtpParameters" not in dump
    assert dump["recvRtpHeaderExtensions"] == {}
    assert dump["rtpListener"] == {"ssrcTable": [], "midTable": [], "ridTable": []}
    transport.close()
    assert transport.closed is True
    assert transport.sctp_state == "closed"

    another = await router.create_plain_transport(listen_ip="127.0.0.1")
    assert isinstance(another, PlainTransport)

    rtp_port = free_ports(2)  # the worker binds them: below the ephemeral range
    rtcp_port = rtp_port + 1
    transport2 = await router.create_plain_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "port": rtp_port},
        rtcp_listen_info={"protocol": "udp", "ip": "127.0.0.1", "port": rtcp_port},
    )
    assert transport2.app_data == {}
    assert transport2.tuple["localAddress"] == "127.0.0.1"
    assert transport2.tuple["localPort"] == rtp_port
    assert transport2.tuple["protocol"] == "udp"
    assert transport2.rtcp_tuple is not None
    assert transport2.rtcp_tuple["localIp"] == "127.0.0.1"
    assert transport2.rtcp_tuple["localAddress"] == "127.0.0.1"
    assert transport2.rtcp_tuple["localPort"] == rtcp_port
    assert transport2.rtcp_tuple["protocol"] == "udp"
    # rtcp_listen_info disables rtcp_mux.
    assert transport2.rtcp_mux is False
    assert transport2.sctp_parameters is None
    assert transport2.sctp_state is None
    dump2 = await transport2.dump()
    assert dump2["id"] == transport2.id
    assert dump2["tuple"] == transport2.tuple
    assert dump2.get("rtcpTuple") == transport2.rtcp_tuple
    assert "sctpState" not in dump2


async def test_create_plain_transport_with_wrong_arguments(router: Router) -> None:
    bad: Any
    with pytest.raises(TypeError):
        await router.create_plain_transport()
    with pytest.raises(ValueError, match="portRange"):
        await router.create_plain_transport(
            listen_info={
                "protocol": "udp",
                "ip": "127.0.0.1",
                "portRange": {"min": 4000, "max": 3000},
            }
        )
    with pytest.raises(ValueError):
        await router.create_plain_transport(listen_ip="123")
    bad = ["127.0.0.1"]
    with pytest.raises(TypeError):
        await router.create_plain_transport(listen_ip=bad)
    # A PlainTransport does not do TCP: the worker refuses it.
    with pytest.raises(TypeError):
        await router.create_plain_transport(listen_info={"protocol": "tcp", "ip": "127.0.0.1"})
    bad = "NOT-AN-OBJECT"
    with pytest.raises(TypeError):
        await router.create_plain_transport(
            listen_info={"protocol": "udp", "ip": "127.0.0.1"}, app_data=bad
        )


async def test_create_plain_transport_with_enable_srtp(router: Router) -> None:
    # Default crypto suite: AES_CM_128_HMAC_SHA1_80.
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", enable_srtp=True)
    assert transport.srtp_parameters is not None
    assert transport.srtp_parameters["cryptoSuite"] == "AES_CM_128_HMAC_SHA1_80"
    assert len(transport.srtp_parameters["keyBase64"]) == 40
    assert (await transport.dump()).get("srtpParameters") == transport.srtp_parameters
    cases: list[tuple[Any, type[Exception], str]] = [
        (None, TypeError, "missing srtp_parameters"),
        (1, TypeError, "srtp_parameters must be a dict"),
        ({"keyBase64": KEY_AES_CM}, TypeError, "missing srtp_parameters.cryptoSuite"),
        (
            {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80"},
            TypeError,
            "missing srtp_parameters.keyBase64",
        ),
        ({"cryptoSuite": "FOO", "keyBase64": KEY_AES_CM}, ValueError, "cryptoSuite"),
        ({"cryptoSuite": 123, "keyBase64": KEY_AES_CM}, TypeError, "cryptoSuite"),
        ({"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": []}, TypeError, "keyBase64"),
        (
            {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": "not base64!"},
            ValueError,
            "not valid base64",
        ),
        (
            {"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": KEY_GCM_256},
            ValueError,
            "needs 30",
        ),
    ]
    for srtp_parameters, error, match in cases:
        with pytest.raises(error, match=match):
            await transport.connect(ip="127.0.0.2", port=9999, srtp_parameters=srtp_parameters)
    # Value errors are ValueErrors and, as in Node, TypeErrors too.
    with pytest.raises(TypeError):
        await transport.connect(
            ip="127.0.0.2", port=9999, srtp_parameters={"cryptoSuite": "FOO", "keyBase64": ""}
        )
    # Valid parameters, with another crypto suite: the local one follows.
    await transport.connect(
        ip="127.0.0.2",
        port=9999,
        srtp_parameters={"cryptoSuite": "AEAD_AES_256_GCM", "keyBase64": KEY_GCM_256},
    )
    assert transport.srtp_parameters["cryptoSuite"] == "AEAD_AES_256_GCM"
    assert len(transport.srtp_parameters["keyBase64"]) == 60
    validate_srtp_parameters(transport.srtp_parameters)
    assert transport.tuple.get("remoteIp") == "127.0.0.2"
    assert transport.tuple.get("remotePort") == 9999


@pytest.mark.parametrize(
    ("suite", "length"),
    [
        ("AEAD_AES_256_GCM", 44),
        ("AEAD_AES_128_GCM", 28),
        ("AES_CM_128_HMAC_SHA1_80", 30),
        ("AES_CM_128_HMAC_SHA1_32", 30),
    ],
)
async def test_create_plain_transport_with_srtp_crypto_suite(
    router: Router, suite: Any, length: int
) -> None:
    transport = await router.create_plain_transport(
        listen_ip="127.0.0.1", enable_srtp=True, srtp_crypto_suite=suite
    )
    assert transport.srtp_parameters is not None
    assert transport.srtp_parameters["cryptoSuite"] == suite
    assert len(base64.b64decode(transport.srtp_parameters["keyBase64"])) == length


async def test_create_plain_transport_with_non_bindable_ip(router: Router) -> None:
    with pytest.raises(WorkerError):
        await router.create_plain_transport(listen_ip="8.8.8.8")


async def test_two_transports_on_same_port_with_udp_reuse_port(router: Router) -> None:
    multicast_ip = "224.0.0.1"
    port = free_ports(1)
    # ipv6Only is ignored: the IP is IPv4.
    await router.create_plain_transport(
        listen_info={
            "protocol": "udp",
            "ip": multicast_ip,
            "port": port,
            "flags": {"udpReusePort": True, "ipv6Only": True},
        }
    )
    await router.create_plain_transport(
        listen_info={
            "protocol": "udp",
            "ip": multicast_ip,
            "port": port,
            "flags": {"udpReusePort": True},
        }
    )


async def test_two_transports_on_same_port_without_udp_reuse_port_fail(router: Router) -> None:
    multicast_ip = "224.0.0.1"
    port = free_ports(1)
    info: Any = {
        "protocol": "udp",
        "ip": multicast_ip,
        "port": port,
        "flags": {"udpReusePort": False},
    }
    await router.create_plain_transport(listen_info=info)
    with pytest.raises(WorkerError):
        await router.create_plain_transport(listen_info=info)


async def test_create_plain_transport_with_fixed_port(router: Router) -> None:
    port = free_ports(1)
    transport = await router.create_plain_transport(
        listen_info={"protocol": "udp", "ip": "127.0.0.1", "port": port}
    )
    assert transport.tuple["localPort"] == port


# -- stats, connect ---------------------------------------------------------------------


async def test_get_stats(plain: PlainTransport) -> None:
    stats = await plain.get_stats()
    assert isinstance(stats, list)
    assert len(stats) == 1
    stat = stats[0]
    assert stat["type"] == "plain-rtp-transport"
    assert stat["transportId"] == plain.id
    assert isinstance(stat["timestamp"], int)
    for key in TRANSPORT_STAT_COUNTERS:
        assert stat[key] == 0, key
    assert stat["tuple"]["localIp"] == "127.0.0.1"
    assert stat["tuple"]["localAddress"] == "127.0.0.1"
    assert isinstance(stat["tuple"]["localPort"], int)
    assert stat["tuple"]["protocol"] == "udp"
    assert "rtcpTuple" not in stat
    assert stat["rtcpMux"] is True
    assert stat["comedia"] is False
    assert "sctpState" not in stat


async def test_get_stats_with_rtcp_tuple(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", rtcp_mux=False)
    stat = (await transport.get_stats())[0]
    assert stat["rtcpMux"] is False
    # The worker reports the RTCP tuple in stats once connected.
    assert "rtcpTuple" not in stat
    await transport.connect(ip="127.0.0.1", port=1234, rtcp_port=1235)
    stat = (await transport.get_stats())[0]
    assert stat.get("rtcpTuple") == transport.rtcp_tuple
    assert stat["tuple"] == transport.tuple


async def test_connect_succeeds(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", rtcp_mux=False)
    assert await transport.connect(ip="1.2.3.4", port=1234, rtcp_port=1235) is None
    # Must fail if already connected.
    with pytest.raises(WorkerError):
        await transport.connect(ip="1.2.3.4", port=1234, rtcp_port=1235)
    assert transport.tuple.get("remoteIp") == "1.2.3.4"
    assert transport.tuple.get("remotePort") == 1234
    assert transport.tuple["protocol"] == "udp"
    assert transport.rtcp_tuple is not None
    assert transport.rtcp_tuple.get("remoteIp") == "1.2.3.4"
    assert transport.rtcp_tuple.get("remotePort") == 1235
    assert transport.rtcp_tuple["protocol"] == "udp"
    dump = await transport.dump()
    assert dump["tuple"] == transport.tuple
    assert dump.get("rtcpTuple") == transport.rtcp_tuple


async def test_connect_ipv6(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="::1")
    await transport.connect(ip="::1", port=1234)
    assert transport.tuple.get("remoteIp") == "::1"


async def test_connect_with_wrong_arguments(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", rtcp_mux=False)
    bad: Any
    # No SRTP enabled: srtp_parameters must not be given.
    with pytest.raises(TypeError, match="SRTP not enabled"):
        await transport.connect(
            ip="127.0.0.2",
            port=9998,
            rtcp_port=9999,
            srtp_parameters={"cryptoSuite": "AES_CM_128_HMAC_SHA1_80", "keyBase64": KEY_AES_CM},
        )
    with pytest.raises(TypeError, match="missing ip"):
        await transport.connect()
    with pytest.raises(ValueError, match="ip"):
        await transport.connect(ip="::::1234", port=1234, rtcp_port=1235)
    bad = 1234
    with pytest.raises(TypeError, match="ip"):
        await transport.connect(ip=bad, port=1234, rtcp_port=1235)
    # rtcp_mux is disabled: rtcp_port is required.
    with pytest.raises(TypeError, match="missing rtcp_port"):
        await transport.connect(ip="127.0.0.1", port=1234)
    with pytest.raises(TypeError, match="missing port"):
        await transport.connect(ip="127.0.0.1", rtcp_port=1235)
    bad = "chicken"
    with pytest.raises(TypeError, match="port"):
        await transport.connect(ip="127.0.0.1", port=bad, rtcp_port=1235)
    with pytest.raises(ValueError, match="port"):
        await transport.connect(ip="127.0.0.1", port=70000, rtcp_port=1235)
    with pytest.raises(ValueError, match="rtcp_port"):
        await transport.connect(ip="127.0.0.1", port=1234, rtcp_port=0)
    muxed = await router.create_plain_transport(listen_ip="127.0.0.1")
    with pytest.raises(TypeError, match="rtcp_mux enabled"):
        await muxed.connect(ip="127.0.0.1", port=1234, rtcp_port=1235)
    # Nothing reached the worker.
    await transport.connect(ip="127.0.0.1", port=1234, rtcp_port=1235)
    await muxed.connect(ip="127.0.0.1", port=1234)


def worker_has_assertions() -> bool:
    """Whether the worker binary was built without NDEBUG (assert() compiled in)."""
    try:
        with open(find_worker_bin(), "rb") as f:
            return b"flatbuffers/flatbuffer_builder.h" in f.read()
    except OSError:  # No worker binary: the fixtures fail with a clear message.
        return False


needs_ndebug_worker = pytest.mark.skipif(
    worker_has_assertions(),
    reason=(
        "this worker was built with assertions (meson b_ndebug=false, unlike upstream's "
        "-Db_ndebug=true): connect() on a comedia transport not yet reached by a packet "
        "answers a ConnectResponse without its required tuple, and the worker aborts"
    ),
)


async def test_connect_with_comedia_validates_arguments(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", comedia=True)
    assert transport.comedia is True
    bad: Any = "chicken"
    with pytest.raises(TypeError, match="port"):
        await transport.connect(port=bad)
    with pytest.raises(ValueError, match="ip"):
        await transport.connect(ip="nope")
    with pytest.raises(ValueError, match="rtcp_port"):
        await transport.connect(rtcp_port=-1)
    srtp = await router.create_plain_transport(
        listen_ip="127.0.0.1", comedia=True, enable_srtp=True
    )
    with pytest.raises(TypeError, match="missing srtp_parameters"):
        await srtp.connect()


@needs_ndebug_worker
async def test_connect_with_comedia(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", comedia=True)
    # With comedia the remote address comes from the first packet: nothing is needed.
    await transport.connect(ip="127.0.0.1", port=1234)
    assert "remoteIp" not in transport.tuple

    srtp = await router.create_plain_transport(
        listen_ip="127.0.0.1", comedia=True, enable_srtp=True
    )
    await srtp.connect(
        srtp_parameters={"cryptoSuite": "AEAD_AES_128_GCM", "keyBase64": KEY_GCM_128}
    )
    assert srtp.srtp_parameters is not None
    assert srtp.srtp_parameters["cryptoSuite"] == "AEAD_AES_128_GCM"
    assert "remoteIp" not in srtp.tuple


async def test_events(plain: PlainTransport) -> None:
    channel = plain.channel_for_testing
    seen: list[tuple[str, Any]] = []
    observed: list[tuple[str, Any]] = []
    for name in ("tuple", "rtcptuple", "sctpstatechange", "trace"):
        plain.on(name, lambda arg, name=name: seen.append((name, arg)))
        plain.observer.on(name, lambda arg, name=name: observed.append((name, arg)))
    wire = TupleT(
        localAddress="127.0.0.1",
        localPort=1111,
        remoteIp="2.2.2.2",
        remotePort=2222,
        protocol=Protocol.UDP,
    )
    expected = {
        "localAddress": "127.0.0.1",
        "localIp": "127.0.0.1",
        "localPort": 1111,
        "remoteIp": "2.2.2.2",
        "remotePort": 2222,
        "protocol": "udp",
    }
    inject(channel, Event.PLAINTRANSPORT_TUPLE, plain.id, TupleNotificationT(tuple=wire))
    inject(channel, Event.PLAINTRANSPORT_RTCP_TUPLE, plain.id, RtcpTupleNotificationT(tuple=wire))
    inject(
        channel,
        Event.TRANSPORT_SCTP_STATE_CHANGE,
        plain.id,
        SctpStateChangeNotificationT(sctpState=FbsSctpState.FAILED),
    )
    inject(
        channel,
        Event.TRANSPORT_TRACE,
        plain.id,
        TraceNotificationT(
            type=TraceEventType.PROBATION, timestamp=5, direction=TraceDirection.DIRECTION_IN
        ),
    )
    inject(channel, Event.WEBRTCTRANSPORT_ICE_STATE_CHANGE, plain.id)  # Unknown here: logged.
    await asyncio.sleep(0)
    assert seen == [
        ("tuple", expected),
        ("rtcptuple", expected),
        ("sctpstatechange", "failed"),
        ("trace", {"type": "probation", "timestamp": 5, "direction": "in", "info": {}}),
    ]
    assert observed == seen
    assert plain.tuple == expected
    assert plain.rtcp_tuple == expected
    assert plain.sctp_state == "failed"


# -- closing ----------------------------------------------------------------------------


async def test_methods_reject_if_closed(plain: PlainTransport) -> None:
    closes: list[None] = []
    plain.observer.once("close", lambda: closes.append(None))
    plain.close()
    assert closes == [None]
    assert plain.closed is True
    with pytest.raises(InvalidStateError):
        await plain.dump()
    with pytest.raises(InvalidStateError):
        await plain.get_stats()
    with pytest.raises(InvalidStateError):
        await plain.connect()
    with pytest.raises(InvalidStateError):
        await plain.set_max_incoming_bitrate(1000)
    plain.close()
    plain.router_closed()
    assert closes == [None]


async def test_routerclose_when_router_closes(router: Router) -> None:
    transport = await router.create_plain_transport(listen_ip="127.0.0.1", enable_sctp=True)
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(transport.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    router.close()
    await waiter
    assert closes == [None]
    assert transport.closed is True
    assert transport.sctp_state == "closed"


async def test_routerclose_when_worker_closes(
    router: Router, worker: Worker, plain: PlainTransport
) -> None:
    closes: list[None] = []
    plain.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(plain.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    hosting_worker(router, plain, worker).close()
    await waiter
    assert closes == [None]
    assert plain.closed is True


# -- media ------------------------------------------------------------------------------


async def test_rtp_from_udp_socket_reaches_consumer_socket(router: Router) -> None:
    """comedia producer fed by a Python socket; a consumer sends to another socket."""
    sender = await udp_peer()
    receiver = await udp_peer()
    try:
        producer_transport = await router.create_plain_transport(
            listen_ip="127.0.0.1", comedia=True
        )
        tuples: list[Any] = []
        producer_transport.on("tuple", tuples.append)
        producer = await producer_transport.produce(
            kind="audio", rtp_parameters=OPUS_PRODUCER_PARAMETERS
        )
        consumer_transport = await router.create_plain_transport(listen_ip="127.0.0.1")
        await consumer_transport.connect(ip="127.0.0.1", port=receiver.port)
        assert consumer_transport.tuple.get("remotePort") == receiver.port
        consumer = await consumer_transport.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        )
        out_pt = consumer.rtp_parameters["codecs"][0]["payloadType"]
        out_ssrc = consumer.rtp_parameters["encodings"][0]["ssrc"]

        count = 50
        payload = b"\xf8\xff\xfe" + os.urandom(40)
        for i in range(count):
            sender.send(
                rtp_packet(OPUS_PT, OPUS_SSRC, 1000 + i, 960 * i, payload),
                producer_transport.tuple["localPort"],
            )
            await asyncio.sleep(0.002)
        seqs = await collect_rtp(receiver, count, payload_type=out_pt, ssrc=out_ssrc)
        assert len(seqs) == count
        # The consumer rewrites sequence numbers but keeps them consecutive.
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(seqs, seqs[1:], strict=False))

        # comedia learnt the remote address from the first packet.
        assert tuples and tuples[0].get("remotePort") == sender.port
        assert producer_transport.tuple.get("remotePort") == sender.port
        assert producer_transport.tuple.get("remoteIp") == "127.0.0.1"
        in_stats = (await producer_transport.get_stats())[0]
        assert in_stats["rtpBytesReceived"] >= count * (12 + len(payload))
        assert in_stats["tuple"] == producer_transport.tuple
        out_stats = (await consumer_transport.get_stats())[0]
        assert out_stats["rtpBytesSent"] >= count * (12 + len(payload))
        producer_stats = await producer.get_stats()
        assert producer_stats[0]["packetCount"] == count
    finally:
        sender.close()
        receiver.close()


async def test_srtp_from_udp_socket_reaches_consumer_socket(router: Router) -> None:
    """Same path with SRTP both ways (libsrtp through pylibsrtp on our side)."""
    sender = await udp_peer()
    receiver = await udp_peer()
    try:
        our_key = os.urandom(30)
        producer_transport = await router.create_plain_transport(
            listen_ip="127.0.0.1", enable_srtp=True
        )
        await producer_transport.connect(
            ip="127.0.0.1",
            port=sender.port,
            srtp_parameters={
                "cryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                "keyBase64": base64.b64encode(our_key).decode(),
            },
        )
        producer = await producer_transport.produce(
            kind="audio", rtp_parameters=OPUS_PRODUCER_PARAMETERS
        )
        consumer_transport = await router.create_plain_transport(
            listen_ip="127.0.0.1", enable_srtp=True
        )
        await consumer_transport.connect(
            ip="127.0.0.1",
            port=receiver.port,
            srtp_parameters={
                "cryptoSuite": "AES_CM_128_HMAC_SHA1_80",
                "keyBase64": base64.b64encode(os.urandom(30)).decode(),
            },
        )
        consumer = await consumer_transport.consume(
            producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
        )
        assert consumer_transport.srtp_parameters is not None
        their_key = base64.b64decode(consumer_transport.srtp_parameters["keyBase64"])
        protect = pylibsrtp.Session(
            pylibsrtp.Policy(key=our_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
        )
        unprotect = pylibsrtp.Session(
            pylibsrtp.Policy(key=their_key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        )
        count = 30
        for i in range(count):
            packet = rtp_packet(OPUS_PT, OPUS_SSRC, 1 + i, 960 * i, b"\xf8\xff\xfe" * 10)
            sender.send(protect.protect(packet), producer_transport.tuple["localPort"])
            await asyncio.sleep(0.002)
        seqs = await collect_rtp(
            receiver,
            count,
            payload_type=consumer.rtp_parameters["codecs"][0]["payloadType"],
            ssrc=consumer.rtp_parameters["encodings"][0]["ssrc"],
            decrypt=unprotect.unprotect,
        )
        assert len(seqs) == count
    finally:
        sender.close()
        receiver.close()
