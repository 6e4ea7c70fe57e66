"""WebRtcTransport against a real worker (port of mediasoup's test-WebRtcTransport.ts,
plus real DTLS handshakes with an aiortc peer driven by pymediasoup)."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import flatbuffers
import pytest
from aiortc import VideoStreamTrack
from pymediasoup import AiortcHandler, Device
from pymediasoup.models.transport import DtlsParameters, IceCandidate, IceParameters
from pymediasoup.rtp_parameters import RtpCapabilities, RtpParameters

from mafalda.mediasoup import Router, WebRtcTransport, Worker
from mafalda.mediasoup._fbs.Common.TraceDirection import TraceDirection
from mafalda.mediasoup._fbs.Notification.Event import Event
from mafalda.mediasoup._fbs.SctpAssociation.SctpState import SctpState as FbsSctpState
from mafalda.mediasoup._fbs.Transport.BweTraceInfo import BweTraceInfoT
from mafalda.mediasoup._fbs.Transport.BweType import BweType
from mafalda.mediasoup._fbs.Transport.Protocol import Protocol
from mafalda.mediasoup._fbs.Transport.SctpStateChangeNotification import (
    SctpStateChangeNotificationT,
)
from mafalda.mediasoup._fbs.Transport.TraceEventType import TraceEventType
from mafalda.mediasoup._fbs.Transport.TraceInfo import TraceInfo
from mafalda.mediasoup._fbs.Transport.TraceNotification import TraceNotificationT
from mafalda.mediasoup._fbs.Transport.Tuple import TupleT
from mafalda.mediasoup._fbs.WebRtcTransport.DtlsState import DtlsState as FbsDtlsState
from mafalda.mediasoup._fbs.WebRtcTransport.DtlsStateChangeNotification import (
    DtlsStateChangeNotificationT,
)
from mafalda.mediasoup._fbs.WebRtcTransport.IceSelectedTupleChangeNotification import (
    IceSelectedTupleChangeNotificationT,
)
from mafalda.mediasoup._fbs.WebRtcTransport.IceState import IceState as FbsIceState
from mafalda.mediasoup._fbs.WebRtcTransport.IceStateChangeNotification import (
    IceStateChangeNotificationT,
)
from mafalda.mediasoup.channel import Channel, encode_notification
from mafalda.mediasoup.errors import InvalidStateError, WorkerError, WorkerTypeError
from mafalda.mediasoup.webrtc_transport import (
    parse_dtls_parameters,
    serialize_dtls_parameters,
    validate_dtls_parameters,
)

from .conftest import TRANSPORT_STAT_COUNTERS, hosting_worker

SHA256_VALUE = (
    "82:5A:68:3D:36:C3:0A:DE:AF:E7:32:43:D2:88:83:57:"
    "AC:2D:65:E5:80:C4:B6:FB:AF:1A:A0:21:9F:6D:0C:AD"
)
LOCAL_UDP: dict[str, Any] = {
    "protocol": "udp",
    "ip": "127.0.0.1",
    "portRange": {"min": 2000, "max": 3000},
}


def inject(channel: Channel, event: int, handler_id: str, body: Any = None) -> None:
    """Feed the channel a notification as if the worker had sent it."""
    channel.data_received(encode_notification(flatbuffers.Builder(256), event, handler_id, body))


async def next_loop_iteration() -> None:
    # Notifications are dispatched with call_soon: one loop iteration delivers them.
    await asyncio.sleep(0)


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def transport(router: Router) -> WebRtcTransport:
    return await router.create_webrtc_transport(listen_infos=[dict(LOCAL_UDP)])


# -- creation ---------------------------------------------------------------------------


async def test_create_webrtc_transport_succeeds(router: Router) -> None:
    new_transports: list[Any] = []
    router.observer.once("newtransport", new_transports.append)
    transport = await router.create_webrtc_transport(
        listen_infos=[
            {
                "protocol": "udp",
                "ip": "127.0.0.1",
                "announcedAddress": "9.9.9.1",
                # exposeInternalIp generates an extra ICE candidate with the ip.
                "exposeInternalIp": True,
                "portRange": {"min": 2000, "max": 3000},
            },
            {
                "protocol": "tcp",
                "ip": "127.0.0.1",
                "announcedAddress": "9.9.9.1",
                "portRange": {"min": 2000, "max": 3000},
            },
            {
                "protocol": "udp",
                "ip": "0.0.0.0",
                "announcedAddress": "foo1.bar.org",
                "portRange": {"min": 2000, "max": 3000},
            },
            {
                "protocol": "tcp",
                "ip": "0.0.0.0",
                "announcedAddress": "foo2.bar.org",
                "portRange": {"min": 2000, "max": 3000},
            },
            {"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 2000, "max": 3000}},
            {"protocol": "tcp", "ip": "127.0.0.1", "portRange": {"min": 2000, "max": 3000}},
        ],
        enable_tcp=True,
        prefer_udp=True,
        enable_sctp=True,
        num_sctp_streams={"OS": 2048, "MIS": 2048},
        max_sctp_message_size=1000000,
        app_data={"foo": "bar"},
    )
    assert (await router.dump())["transportIds"] == [transport.id]
    assert new_transports == [transport]
    assert isinstance(transport.id, str)
    assert transport.closed is False
    assert transport.type == "webrtc"
    assert transport.app_data == {"foo": "bar"}
    assert transport.ice_role == "controlled"
    assert transport.ice_parameters["iceLite"] is True
    assert isinstance(transport.ice_parameters["usernameFragment"], str)
    assert isinstance(transport.ice_parameters["password"], str)
    assert transport.sctp_parameters is not None
    assert transport.sctp_parameters["port"] == 5000
    assert transport.sctp_parameters["OS"] == 2048
    assert transport.sctp_parameters["MIS"] == 2048
    assert transport.sctp_parameters["maxMessageSize"] == 1000000
    candidates = transport.ice_candidates
    expected = [
        ("9.9.9.1", "udp", None),
        ("127.0.0.1", "udp", None),
        ("9.9.9.1", "tcp", "passive"),
        ("foo1.bar.org", "udp", None),
        ("foo2.bar.org", "tcp", "passive"),
        ("127.0.0.1", "udp", None),
        ("127.0.0.1", "tcp", "passive"),
    ]
    assert len(candidates) == len(expected)
    for candidate, (ip, protocol, tcp_type) in zip(candidates, expected, strict=True):
        assert candidate["ip"] == ip
        assert candidate["address"] == ip
        assert candidate["protocol"] == protocol
        assert candidate["type"] == "host"
        assert candidate.get("tcpType") == tcp_type
        assert ("tcpType" in candidate) == (tcp_type is not None)
        assert 2000 <= candidate["port"] <= 3000
        assert isinstance(candidate["foundation"], str)
    for higher, lower in zip(candidates, candidates[1:], strict=False):
        assert higher["priority"] > lower["priority"]
    assert transport.ice_state == "new"
    assert transport.ice_selected_tuple is None
    assert isinstance(transport.dtls_parameters["fingerprints"], list)
    assert {fp["algorithm"] for fp in transport.dtls_parameters["fingerprints"]} == {
        "sha-1",
        "sha-224",
        "sha-256",
        "sha-384",
        "sha-512",
    }
    validate_dtls_parameters(transport.dtls_parameters)
    assert transport.dtls_parameters["role"] == "auto"
    assert transport.dtls_state == "new"
    assert transport.dtls_remote_cert is None
    assert transport.sctp_state == "new"

    dump = await transport.dump()
    assert dump["id"] == transport.id
    assert dump["direct"] is False
    assert dump["producerIds"] == []
    assert dump["consumerIds"] == []
    assert dump["iceRole"] == transport.ice_role
    assert dump["iceParameters"] == transport.ice_parameters
    assert dump["iceCandidates"] == transport.ice_candidates
    assert dump["iceState"] == transport.ice_state
    assert dump.get("iceSelectedTuple") == transport.ice_selected_tuple
    assert dump["dtlsParameters"] == transport.dtls_parameters
    assert dump["dtlsState"] == transport.dtls_state
    assert dump.get("sctpParameters") == transport.sctp_parameters
    assert dump.get("sctpState") == transport.sctp_state
    assert dump["recvRtpHeaderExtensions"] == {}
    assert dump["rtpListener"] == {"ssrcTable": [], "midTable": [], "ridTable": []}
    assert dump["traceEventTypes"] == []
    assert "dtlsRemoteCert" not in dump

    transport.close()
    assert transport.closed is True


async def test_create_webrtc_transport_with_deprecated_listen_ips(router: Router) -> None:
    transport = await router.create_webrtc_transport(
        listen_ips=[{"ip": "127.0.0.1"}],
        enable_udp=True,
        enable_tcp=True,
        prefer_udp=False,
        initial_available_outgoing_bitrate=1000000,
    )
    candidates = transport.ice_candidates
    assert len(candidates) == 2
    assert (candidates[0]["ip"], candidates[0]["protocol"]) == ("127.0.0.1", "udp")
    assert "tcpType" not in candidates[0]
    assert (candidates[1]["ip"], candidates[1]["protocol"]) == ("127.0.0.1", "tcp")
    assert candidates[1]["tcpType"] == "passive"
    assert candidates[0]["priority"] > candidates[1]["priority"]


async def test_create_webrtc_transport_with_fixed_port(router: Router) -> None:
    port = free_port(socket.SOCK_STREAM)
    transport = await router.create_webrtc_transport(
        # udpReusePort is ignored: the protocol is TCP.
        listen_infos=[
            {"protocol": "tcp", "ip": "127.0.0.1", "port": port, "flags": {"udpReusePort": True}}
        ],
    )
    assert transport.ice_candidates[0]["port"] == port


async def test_create_webrtc_transport_with_port_range(router: Router) -> None:
    port_range = {"min": 11111, "max": 11112}
    info: Any = {"protocol": "udp", "ip": "127.0.0.1", "portRange": port_range}
    transport1 = await router.create_webrtc_transport(listen_infos=[info])
    candidate1 = transport1.ice_candidates[0]
    assert candidate1["ip"] == "127.0.0.1"
    assert 11111 <= candidate1["port"] <= 11112
    assert candidate1["protocol"] == "udp"
    transport2 = await router.create_webrtc_transport(listen_infos=[info])
    candidate2 = transport2.ice_candidates[0]
    assert 11111 <= candidate2["port"] <= 11112
    assert candidate2["port"] != candidate1["port"]
    # No more available ports.
    with pytest.raises(WorkerError):
        await router.create_webrtc_transport(listen_infos=[info])


async def test_create_webrtc_transport_with_wrong_arguments(router: Router) -> None:
    bad: Any
    with pytest.raises(TypeError):
        await router.create_webrtc_transport()
    with pytest.raises(ValueError, match="portRange"):
        await router.create_webrtc_transport(
            listen_infos=[
                {"protocol": "udp", "ip": "127.0.0.1", "portRange": {"min": 4000, "max": 3000}}
            ]
        )
    bad = [123]
    with pytest.raises(TypeError):
        await router.create_webrtc_transport(listen_ips=bad)
    bad = "127.0.0.1"
    with pytest.raises(TypeError):
        await router.create_webrtc_transport(listen_infos=bad)
    with pytest.raises(TypeError):
        await router.create_webrtc_transport(listen_ips=bad)
    bad = "NOT-AN-OBJECT"
    with pytest.raises(TypeError):
        await router.create_webrtc_transport(listen_ips=["127.0.0.1"], app_data=bad)
    bad = "foo"
    with pytest.raises(TypeError):
        await router.create_webrtc_transport(
            listen_ips=["127.0.0.1"], enable_sctp=True, num_sctp_streams=bad
        )
    assert (await router.dump())["transportIds"] == []


async def test_create_webrtc_transport_with_non_bindable_ip(router: Router) -> None:
    with pytest.raises(WorkerError):
        await router.create_webrtc_transport(
            listen_infos=[
                {"protocol": "udp", "ip": "8.8.8.8", "portRange": {"min": 2000, "max": 3000}}
            ]  # fmt: skip
        )


# -- stats and requests -----------------------------------------------------------------


async def test_get_stats(router: Router) -> None:
    transport = await router.create_webrtc_transport(
        listen_infos=[
            {
                "protocol": "udp",
                "ip": "127.0.0.1",
                "announcedAddress": "9.9.9.1",
                "portRange": {"min": 2000, "max": 3000},
            }
        ]
    )
    stats = await transport.get_stats()
    assert isinstance(stats, list)
    assert len(stats) == 1
    stat = stats[0]
    assert stat["type"] == "webrtc-transport"
    assert stat["transportId"] == transport.id
    assert isinstance(stat["timestamp"], int)
    assert stat["iceRole"] == "controlled"
    assert stat["iceState"] == "new"
    assert stat["dtlsState"] == "new"
    assert "sctpState" not in stat
    for key in TRANSPORT_STAT_COUNTERS:
        assert stat[key] == 0, key
    assert "iceSelectedTuple" not in stat
    assert "maxIncomingBitrate" not in stat


async def test_get_stats_with_sctp(router: Router) -> None:
    transport = await router.create_webrtc_transport(listen_ips=["127.0.0.1"], enable_sctp=True)
    stats = await transport.get_stats()
    assert stats[0]["sctpState"] == "new"


async def test_connect_succeeds(transport: WebRtcTransport) -> None:
    remote: Any = {
        "fingerprints": [{"algorithm": "sha-256", "value": SHA256_VALUE}],
        "role": "client",
    }
    assert await transport.connect(dtls_parameters=remote) is None
    # Must fail if already connected.
    with pytest.raises(WorkerError):
        await transport.connect(dtls_parameters=remote)
    assert transport.dtls_parameters["role"] == "server"
    # The input was not modified.
    assert remote == {
        "fingerprints": [{"algorithm": "sha-256", "value": SHA256_VALUE}],
        "role": "client",
    }


@pytest.mark.parametrize(
    ("remote_role", "local_role"),
    [("server", "client"), ("auto", "client"), (None, "client")],
)
async def test_connect_decides_local_role(
    transport: WebRtcTransport, remote_role: str | None, local_role: str
) -> None:
    remote: Any = {"fingerprints": [{"algorithm": "sha-256", "value": SHA256_VALUE.lower()}]}
    if remote_role is not None:
        remote["role"] = remote_role
    await transport.connect(dtls_parameters=remote)
    assert transport.dtls_parameters["role"] == local_role


async def test_connect_with_wrong_arguments(transport: WebRtcTransport) -> None:
    fingerprint = {"algorithm": "sha-256", "value": SHA256_VALUE}
    cases: list[tuple[Any, type[Exception], str]] = [
        ({}, TypeError, "missing dtls_parameters.fingerprints"),
        ("foo", TypeError, "dtls_parameters must be a dict"),
        ({"fingerprints": fingerprint}, TypeError, "fingerprints must be a list"),
        ({"fingerprints": [], "role": "client"}, ValueError, "must not be empty"),
        (
            {"fingerprints": [{"algorithm": "sha-256000", "value": SHA256_VALUE}]},
            ValueError,
            r"fingerprints\[0\].algorithm",
        ),
        (
            {"fingerprints": [{"algorithm": 256, "value": SHA256_VALUE}]},
            TypeError,
            r"fingerprints\[0\].algorithm",
        ),
        ({"fingerprints": [fingerprint], "role": "chicken"}, ValueError, "role"),
        ({"fingerprints": [fingerprint], "role": 1}, TypeError, "role"),
        ({"fingerprints": ["sha-256"]}, TypeError, r"fingerprints\[0\] must be a dict"),
        (
            {"fingerprints": [{"algorithm": "sha-256"}]},
            TypeError,
            r"fingerprints\[0\].value",
        ),
        (
            {"fingerprints": [{"algorithm": "sha-256", "value": "not hex"}]},
            ValueError,
            r"fingerprints\[0\].value",
        ),
        (
            {"fingerprints": [{"algorithm": "sha-1", "value": SHA256_VALUE}]},
            ValueError,
            "sha-1 needs 20",
        ),
    ]
    for dtls_parameters, error, match in cases:
        with pytest.raises(error, match=match):
            await transport.connect(dtls_parameters=dtls_parameters)
    # Value errors are ValueErrors and, as in Node, TypeErrors too.
    with pytest.raises(TypeError):
        await transport.connect(dtls_parameters={"fingerprints": [fingerprint], "role": "chicken"})
    assert transport.dtls_parameters["role"] == "auto"
    # Nothing reached the worker: a valid connect still works.
    await transport.connect(dtls_parameters={"fingerprints": [fingerprint], "role": "server"})
    assert transport.dtls_parameters["role"] == "client"


def test_dtls_parameters_round_trip() -> None:
    params: Any = {"fingerprints": [{"algorithm": "sha-512", "value": "AB:" * 63 + "CD"}]}
    validate_dtls_parameters(params)
    assert parse_dtls_parameters(serialize_dtls_parameters(params)) == {**params, "role": "auto"}


async def test_set_max_incoming_bitrate(transport: WebRtcTransport) -> None:
    await transport.set_max_incoming_bitrate(1000000)
    # Remove the limit.
    await transport.set_max_incoming_bitrate(0)


async def test_set_max_outgoing_bitrate(transport: WebRtcTransport) -> None:
    await transport.set_max_outgoing_bitrate(2000000)
    await transport.set_max_outgoing_bitrate(0)


async def test_set_min_outgoing_bitrate(transport: WebRtcTransport) -> None:
    await transport.set_min_outgoing_bitrate(100000)
    await transport.set_min_outgoing_bitrate(0)


async def test_set_max_outgoing_bitrate_lower_than_min_fails(transport: WebRtcTransport) -> None:
    await transport.set_min_outgoing_bitrate(3000000)
    with pytest.raises(WorkerError):
        await transport.set_max_outgoing_bitrate(2000000)
    await transport.set_min_outgoing_bitrate(0)


async def test_set_min_outgoing_bitrate_higher_than_max_fails(
    transport: WebRtcTransport,
) -> None:
    await transport.set_max_outgoing_bitrate(2000000)
    with pytest.raises(WorkerError):
        await transport.set_min_outgoing_bitrate(3000000)
    await transport.set_max_outgoing_bitrate(0)


async def test_restart_ice(transport: WebRtcTransport) -> None:
    previous = dict(transport.ice_parameters)
    ice_parameters = await transport.restart_ice()
    assert isinstance(ice_parameters["usernameFragment"], str)
    assert isinstance(ice_parameters["password"], str)
    assert ice_parameters["iceLite"] is True
    assert transport.ice_parameters == ice_parameters
    assert ice_parameters["usernameFragment"] != previous["usernameFragment"]
    assert ice_parameters["password"] != previous["password"]
    assert (await transport.dump())["iceParameters"] == ice_parameters


async def test_enable_trace_event(transport: WebRtcTransport) -> None:
    await transport.enable_trace_event(["foo", "probation"])
    assert (await transport.dump())["traceEventTypes"] == ["probation"]
    await transport.enable_trace_event()
    assert (await transport.dump())["traceEventTypes"] == []
    await transport.enable_trace_event(["probation", "FOO", "bwe", "BAR"])
    assert (await transport.dump())["traceEventTypes"] == ["probation", "bwe"]
    await transport.enable_trace_event()
    assert (await transport.dump())["traceEventTypes"] == []


async def test_enable_trace_event_with_wrong_arguments(transport: WebRtcTransport) -> None:
    bad: Any
    for bad in (123, "probation", ["probation", 123.123]):
        with pytest.raises(TypeError):
            await transport.enable_trace_event(bad)


# -- events -----------------------------------------------------------------------------


async def test_events(transport: WebRtcTransport) -> None:
    channel = transport.channel_for_testing
    seen: list[tuple[str, Any]] = []
    observed: list[tuple[str, Any]] = []
    for name in (
        "icestatechange",
        "iceselectedtuplechange",
        "dtlsstatechange",
        "sctpstatechange",
        "trace",
    ):
        transport.on(name, lambda arg, name=name: seen.append((name, arg)))
        transport.observer.on(name, lambda arg, name=name: observed.append((name, arg)))

    inject(
        channel,
        Event.WEBRTCTRANSPORT_ICE_STATE_CHANGE,
        transport.id,
        IceStateChangeNotificationT(iceState=FbsIceState.COMPLETED),
    )
    await next_loop_iteration()
    assert seen == [("icestatechange", "completed")]
    assert transport.ice_state == "completed"

    tuple_ = {
        "localAddress": "1.1.1.1",
        "localIp": "1.1.1.1",
        "localPort": 1111,
        "remoteIp": "2.2.2.2",
        "remotePort": 2222,
        "protocol": "udp",
    }
    inject(
        channel,
        Event.WEBRTCTRANSPORT_ICE_SELECTED_TUPLE_CHANGE,
        transport.id,
        IceSelectedTupleChangeNotificationT(
            tuple=TupleT(
                localAddress="1.1.1.1",
                localPort=1111,
                remoteIp="2.2.2.2",
                remotePort=2222,
                protocol=Protocol.UDP,
            )
        ),
    )
    await next_loop_iteration()
    assert seen[-1] == ("iceselectedtuplechange", tuple_)
    assert transport.ice_selected_tuple == tuple_

    inject(
        channel,
        Event.WEBRTCTRANSPORT_DTLS_STATE_CHANGE,
        transport.id,
        DtlsStateChangeNotificationT(dtlsState=FbsDtlsState.CONNECTING),
    )
    await next_loop_iteration()
    assert seen[-1] == ("dtlsstatechange", "connecting")
    assert transport.dtls_state == "connecting"
    assert transport.dtls_remote_cert is None

    inject(
        channel,
        Event.WEBRTCTRANSPORT_DTLS_STATE_CHANGE,
        transport.id,
        DtlsStateChangeNotificationT(dtlsState=FbsDtlsState.CONNECTED, remoteCert="PEM"),
    )
    await next_loop_iteration()
    assert seen[-1] == ("dtlsstatechange", "connected")
    assert transport.dtls_remote_cert == "PEM"

    inject(
        channel,
        Event.TRANSPORT_SCTP_STATE_CHANGE,
        transport.id,
        SctpStateChangeNotificationT(sctpState=FbsSctpState.CONNECTED),
    )
    await next_loop_iteration()
    assert seen[-1] == ("sctpstatechange", "connected")
    assert transport.sctp_state == "connected"

    info = BweTraceInfoT(
        bweType=BweType.TRANSPORT_CC,
        desiredBitrate=1,
        effectiveDesiredBitrate=2,
        minBitrate=3,
        maxBitrate=4,
        startBitrate=5,
        maxPaddingBitrate=6,
        availableBitrate=7,
    )
    inject(
        channel,
        Event.TRANSPORT_TRACE,
        transport.id,
        TraceNotificationT(
            type=TraceEventType.BWE,
            timestamp=1234,
            direction=TraceDirection.DIRECTION_OUT,
            infoType=TraceInfo.BweTraceInfo,
            info=info,
        ),
    )
    await next_loop_iteration()
    assert seen[-1] == (
        "trace",
        {
            "type": "bwe",
            "timestamp": 1234,
            "direction": "out",
            "info": {
                "desiredBitrate": 1,
                "effectiveDesiredBitrate": 2,
                "minBitrate": 3,
                "maxBitrate": 4,
                "startBitrate": 5,
                "maxPaddingBitrate": 6,
                "availableBitrate": 7,
                "bweType": "transport-cc",
            },
        },
    )
    assert observed == seen


async def test_unknown_notification_is_logged(
    transport: WebRtcTransport, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        inject(transport.channel_for_testing, Event.PLAINTRANSPORT_TUPLE, transport.id)
        await next_loop_iteration()
    assert "ignoring unknown event" in caplog.text


# -- closing ----------------------------------------------------------------------------


async def test_methods_reject_if_closed(transport: WebRtcTransport) -> None:
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    transport.close()
    assert closes == [None]
    assert transport.closed is True
    assert transport.ice_state == "closed"
    assert transport.ice_selected_tuple is None
    assert transport.dtls_state == "closed"
    assert transport.sctp_state is None
    with pytest.raises(InvalidStateError):
        await transport.dump()
    with pytest.raises(InvalidStateError):
        await transport.get_stats()
    with pytest.raises(InvalidStateError):
        await transport.connect(dtls_parameters={})
    with pytest.raises(InvalidStateError):
        await transport.set_max_incoming_bitrate(200000)
    with pytest.raises(InvalidStateError):
        await transport.set_max_outgoing_bitrate(200000)
    with pytest.raises(InvalidStateError):
        await transport.set_min_outgoing_bitrate(100000)
    with pytest.raises(InvalidStateError):
        await transport.restart_ice()
    with pytest.raises(InvalidStateError):
        await transport.enable_trace_event(["bwe"])
    # Closing again does nothing.
    transport.close()
    transport.router_closed()
    transport.listen_server_closed()
    assert closes == [None]


async def test_close_with_sctp_marks_sctp_closed(router: Router) -> None:
    transport = await router.create_webrtc_transport(listen_ips=["127.0.0.1"], enable_sctp=True)
    transport.close()
    assert transport.sctp_state == "closed"
    assert (await router.dump())["transportIds"] == []


async def test_routerclose_when_router_closes(router: Router) -> None:
    transport = await router.create_webrtc_transport(listen_ips=["127.0.0.1"], enable_sctp=True)
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(transport.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    router.close()
    await waiter
    assert closes == [None]
    assert transport.closed is True
    assert transport.ice_state == "closed"
    assert transport.ice_selected_tuple is None
    assert transport.dtls_state == "closed"
    assert transport.sctp_state == "closed"


async def test_routerclose_when_worker_closes(
    router: Router, worker: Worker, transport: WebRtcTransport
) -> None:
    closes: list[None] = []
    transport.observer.once("close", lambda: closes.append(None))
    waiter = asyncio.ensure_future(transport.events.wait_for("routerclose"))
    await asyncio.sleep(0)
    hosting_worker(router, transport, worker).close()
    await waiter
    assert closes == [None]
    assert transport.closed is True
    assert transport.ice_state == "closed"
    assert transport.dtls_state == "closed"
    assert transport.sctp_state is None


# -- real DTLS peers (aiortc through pymediasoup) ---------------------------------------


class Peer:
    """A pymediasoup Device with an aiortc handler, connected to our server objects."""

    def __init__(self) -> None:
        self.device = Device(handlerFactory=AiortcHandler.createFactory(tracks=[]))
        self.transports: list[Any] = []
        self.connect_roles: list[str] = []

    async def load(self, router: Router) -> None:
        await self.device.load(RtpCapabilities(**router.rtp_capabilities))

    def _options(self, transport: WebRtcTransport) -> dict[str, Any]:
        return {
            "id": transport.id,
            "iceParameters": IceParameters(**transport.ice_parameters),
            "iceCandidates": [IceCandidate(**c) for c in transport.ice_candidates],
            "dtlsParameters": DtlsParameters(**transport.dtls_parameters),
            "sctpParameters": None,
        }

    def _on_connect(self, peer_transport: Any, transport: WebRtcTransport) -> None:
        async def on_connect(dtlsParameters: Any) -> None:
            parameters = dtlsParameters.model_dump(exclude_none=True)
            self.connect_roles.append(parameters["role"])
            await transport.connect(dtls_parameters=parameters)

        peer_transport.on("connect", on_connect)

    def send_transport(self, transport: WebRtcTransport) -> Any:
        peer_transport = self.device.createSendTransport(**self._options(transport))
        self.transports.append(peer_transport)
        self._on_connect(peer_transport, transport)

        async def on_produce(kind: str, rtpParameters: Any, appData: Any) -> str:
            producer = await transport.produce(
                kind=kind,
                rtp_parameters=rtpParameters.model_dump(exclude_none=True),
            )
            return producer.id

        peer_transport.on("produce", on_produce)
        return peer_transport

    def recv_transport(self, transport: WebRtcTransport) -> Any:
        peer_transport = self.device.createRecvTransport(**self._options(transport))
        self.transports.append(peer_transport)
        self._on_connect(peer_transport, transport)
        return peer_transport

    async def close(self) -> None:
        for peer_transport in self.transports:
            await peer_transport.close()


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    p = Peer()
    yield p
    await p.close()


async def wait_dtls_connected(transport: WebRtcTransport) -> None:
    async with asyncio.timeout(15):
        while transport.dtls_state != "connected":
            state = (await transport.events.wait_for("dtlsstatechange"))[0]
            assert state in ("connecting", "connected"), state


async def test_dtls_handshake_with_worker_as_dtls_client(router: Router, peer: Peer) -> None:
    """The peer sends (pymediasoup takes the 'server' role): the worker is DTLS client."""
    await peer.load(router)
    transport = await router.create_webrtc_transport(listen_infos=[dict(LOCAL_UDP)])
    states: list[str] = []
    transport.observer.on("dtlsstatechange", states.append)
    ice_states: list[str] = []
    transport.on("icestatechange", ice_states.append)
    tuples: list[Any] = []
    transport.on("iceselectedtuplechange", tuples.append)
    send_transport = peer.send_transport(transport)
    track = VideoStreamTrack()
    try:
        await send_transport.produce(track=track, stopTracks=False)
        await wait_dtls_connected(transport)
    finally:
        track.stop()
    assert peer.connect_roles == ["server"]
    assert transport.dtls_parameters["role"] == "client"
    assert transport.dtls_state == "connected"
    assert states[-1] == "connected"
    assert transport.dtls_remote_cert is not None
    assert transport.dtls_remote_cert.startswith("-----BEGIN CERTIFICATE-----")
    assert transport.ice_state in ("connected", "completed")
    assert ice_states[0] == "connected"
    assert tuples and transport.ice_selected_tuple == tuples[-1]
    selected = transport.ice_selected_tuple
    assert selected is not None
    assert selected["protocol"] == "udp"
    assert selected["localPort"] == transport.ice_candidates[0]["port"]
    assert isinstance(selected.get("remoteIp"), str)
    dump = await transport.dump()
    assert dump["dtlsState"] == "connected"
    assert dump["dtlsParameters"]["role"] == "client"
    assert dump.get("iceSelectedTuple") == selected
    stats = (await transport.get_stats())[0]
    assert stats["dtlsState"] == "connected"
    assert stats.get("iceSelectedTuple") == selected
    assert stats["bytesReceived"] > 0


async def test_dtls_handshake_with_worker_as_dtls_server(router: Router, peer: Peer) -> None:
    """The peer receives (pymediasoup takes the 'client' role): the worker is DTLS server."""
    await peer.load(router)
    # Something to consume: a producer on a PlainTransport (no media needed).
    plain = await router.create_plain_transport(listen_ip="127.0.0.1", comedia=True)
    producer = await plain.produce(
        kind="audio",
        rtp_parameters={
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 111, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": 1111}],
        },
    )
    transport = await router.create_webrtc_transport(listen_infos=[dict(LOCAL_UDP)])
    recv_transport = peer.recv_transport(transport)
    rtp_capabilities = peer.device.rtpCapabilities.model_dump(exclude_none=True)
    consumer = await transport.consume(producer_id=producer.id, rtp_capabilities=rtp_capabilities)
    await recv_transport.consume(
        id=consumer.id,
        producerId=producer.id,
        kind=consumer.kind,
        rtpParameters=RtpParameters(**consumer.rtp_parameters),
    )
    await wait_dtls_connected(transport)
    assert peer.connect_roles == ["client"]
    assert transport.dtls_parameters["role"] == "server"
    assert transport.dtls_state == "connected"
    assert transport.dtls_remote_cert is not None
    assert transport.ice_selected_tuple is not None
    assert (await transport.dump())["dtlsState"] == "connected"


async def test_sctp_stream_ids_are_taken_and_given_back(worker: Worker) -> None:
    """A data consumer takes a free SCTP stream id (up to MIS), gives it back when it
    closes, and when the worker refuses it."""
    router = await worker.create_router()
    transport = await router.create_webrtc_transport(
        listen_infos=[LOCAL_UDP], enable_sctp=True, num_sctp_streams={"OS": 2, "MIS": 2}
    )
    source = await router.create_direct_transport()
    data_producer = await source.produce_data(label="chat")
    with pytest.raises(WorkerTypeError, match="maxPacketLifeTime and maxRetransmits"):
        await transport.consume_data(
            data_producer_id=data_producer.id, max_packet_life_time=100, max_retransmits=3
        )
    first = await transport.consume_data(data_producer_id=data_producer.id)
    second = await transport.consume_data(data_producer_id=data_producer.id)
    ids = [c.sctp_stream_parameters["streamId"] for c in (first, second)]  # type: ignore[index]
    assert sorted(ids) == [0, 1]  # the refused one took none
    with pytest.raises(ValueError, match="no sctpStreamId available"):
        await transport.consume_data(data_producer_id=data_producer.id)
    first.close()
    third = await transport.consume_data(data_producer_id=data_producer.id)
    assert third.sctp_stream_parameters["streamId"] == ids[0]  # type: ignore[index]
    assert len((await transport.dump())["dataConsumerIds"]) == 2
