"""Shared fixtures: a real mediasoup-worker per test, routers with common codecs."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest

from mafalda.horizontal.router import ClusterRouter
from mafalda.mediasoup import Router, Worker, create_worker
from mafalda.vertical import Mafalda, MafaldaRouter
from tests import processes

MEDIA_CODECS: list[Any] = [
    {
        "kind": "audio",
        "mimeType": "audio/opus",
        "clockRate": 48000,
        "channels": 2,
        "parameters": {"useinbandfec": 1, "foo": "bar"},
    },
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
    {
        "kind": "video",
        "mimeType": "video/H264",
        "clockRate": 90000,
        "parameters": {
            "level-asymmetry-allowed": 1,
            "packetization-mode": 1,
            "profile-level-id": "4d0032",
            "foo": "bar",
        },
    },
]


if os.environ.get("MAFALDA_TEST_LOOP") == "uvloop":

    def pytest_asyncio_loop_factories(config: Any, item: Any) -> Mapping[str, Any]:
        """MAFALDA_TEST_LOOP=uvloop runs the tests on uvloop instead of asyncio's own
        loop (scripts/test.sh runs a part of the suite that way too)."""
        import uvloop

        return {"uvloop": uvloop.new_event_loop}


def opus_rtp_parameters(ssrc: int, payload_type: int = 100) -> Any:
    """A producer's RTP parameters for one opus stream (plain RTP sent by the tests)."""
    return {
        "codecs": [
            {
                "mimeType": "audio/opus",
                "payloadType": payload_type,
                "clockRate": 48000,
                "channels": 2,
            }
        ],
        "encodings": [{"ssrc": ssrc}],
    }


def served_by(server: Any, obj: Any) -> Any:
    """The library object behind ``obj``: itself, or, for a proxy of a client of the
    loopback ``server`` (one session), the server's object (to look inside)."""
    from mafalda.remote.proxy import RemoteObject

    if server is None or not isinstance(obj, RemoteObject):
        return obj
    (session,) = server.sessions.values()
    return session.objects[obj.handle]


@pytest.fixture
async def worker() -> AsyncIterator[Worker]:
    w = await create_worker(log_level="warn")
    yield w
    w.close()
    await w.wait_closed()


@pytest.fixture
async def worker2() -> AsyncIterator[Worker]:
    w = await create_worker(log_level="warn")
    yield w
    w.close()
    await w.wait_closed()


#: A transport's byte and bitrate counters in get_stats(): all 0 on a fresh transport.
TRANSPORT_STAT_COUNTERS = (
    "bytesReceived",
    "recvBitrate",
    "bytesSent",
    "sendBitrate",
    "rtpBytesReceived",
    "rtpRecvBitrate",
    "rtpBytesSent",
    "rtpSendBitrate",
    "rtxBytesReceived",
    "rtxRecvBitrate",
    "rtxBytesSent",
    "rtxSendBitrate",
    "probationBytesSent",
    "probationSendBitrate",
)


def hosting_worker(router: Any, obj: Any, worker: Worker) -> Worker:
    """The worker an object of ``router`` lives on: ``worker`` for a plain Router."""
    if isinstance(router, MafaldaRouter):
        return router.worker_of(obj)
    return worker


def is_mafalda_router(router: Any) -> bool:
    """Whether ``router`` is a Mafalda router (local, or served by a Remote Mafalda), whose
    consumers may read a piped copy of a producer hosted on another worker."""
    if isinstance(router, MafaldaRouter | ClusterRouter):
        return True
    connection = getattr(router, "_connection", None)
    return getattr(connection, "serves", None) == "mafalda"


#: Tests of the shared modules that cannot run against the remote routers ("remote" and
#: "remote-mafalda"), and why.
REMOTE_SKIPS: dict[str, str] = {
    "test_data_consumer::test_sctp_send_buffer_full_and_buffered_amount_low": (
        "timing: needs 8 MB queued faster than SCTP drains 256 KiB; through the remote link "
        "(base64 over a WebSocket) the peer drains in between"
    ),
    "test_consumer::test_consume_succeeds": (
        "asserts isinstance() against the local class; the remote object is a Remote* proxy"
    ),
    "test_consumer::test_repeated_producer_pause_notifications_are_ignored": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_consumer::test_emits_score": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_consumer::test_emits_layerschange": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_consumer::test_emits_trace_once_per_notification": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_consumer::test_close_succeeds": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_consumer::test_emits_producerclose_if_producer_is_closed": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_data_consumer::test_duplicated_data_producer_pause_notifications_are_ignored": (
        "calls the private _on_notification() to fake a worker notification"
    ),
    "test_data_consumer::test_emits_transportclose_if_transport_is_closed": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_data_consumer::test_sctp_send_buffer_full_notification": (
        "calls the private _on_notification() to fake a worker notification"
    ),
    "test_data_consumer::test_unknown_notification_is_logged": (
        "asserts isinstance() against the local class; the remote object is a Remote* proxy"
    ),
    "test_data_producer::test_emits_transportclose_if_transport_is_closed": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_data_producer::test_unknown_notification_is_logged": (
        "asserts isinstance() against the local class; the remote object is a Remote* proxy"
    ),
    "test_plain_transport::test_create_plain_transport_succeeds": (
        "asserts isinstance() against the local class; the remote object is a Remote* proxy"
    ),
    "test_plain_transport::test_events": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_plain_transport::test_methods_reject_if_closed": (
        "calls the library-internal router_closed() plumbing (not part of the remote API)"
    ),
    "test_plain_transport::test_routerclose_when_worker_closes": (
        "closes the local `worker` fixture via hosting_worker(); the remote router's is remote"
    ),
    "test_direct_transport::test_routerclose_when_worker_closes": (
        "closes the local `worker` fixture via hosting_worker(); the remote router's is remote"
    ),
    "test_producer::test_produce_audio_succeeds": (
        "asserts isinstance() against the local class; the remote object is a Remote* proxy"
    ),
    "test_producer::test_emits_score": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_producer::test_emits_videoorientationchange_and_trace_notifications": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_producer::test_close_succeeds": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_producer::test_closed_producer_ignores_notifications": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_producer::test_emits_transportclose_if_transport_is_closed": (
        "calls the library-internal transport_closed() plumbing (not part of the remote API)"
    ),
    "test_router::test_pipe_to_router_argument_errors": (
        "pipes into a local Router (worker2 fixture), which cannot be sent to the server"
    ),
    "test_webrtc_transport::test_events": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_webrtc_transport::test_unknown_notification_is_logged": (
        "injects worker notifications through channel_for_testing (a client has no worker channel)"
    ),
    "test_webrtc_transport::test_methods_reject_if_closed": (
        "calls the library-internal router_closed() plumbing (not part of the remote API)"
    ),
    "test_webrtc_transport::test_routerclose_when_worker_closes": (
        "closes the local `worker` fixture via hosting_worker(); the remote router's is remote"
    ),
}


#: Tests of the shared modules that cannot run against a cluster router, beyond
#: REMOTE_SKIPS (its objects are mafalda.remote proxies too), and why.
CLUSTER_SKIPS: dict[str, str] = {}


@pytest.fixture(scope="session")
def shared_cluster() -> Iterator[str]:
    """A redis-server and two `mafalda serve --cluster` processes (s1 on 127.0.0.2, s2
    on 127.0.0.3) for the whole session; each test's cluster client has its own objects
    there, closed with it. Yields the Redis URL."""
    if not processes.HAVE_REDIS:
        pytest.skip("redis-server is not installed")
    redis = processes.RedisProcess()
    redis.start()
    try:
        servers = processes.start_servers(redis.url, [1, 2])
        try:
            yield redis.url
        finally:
            for server in servers:
                server.kill()
    finally:
        redis.kill()


async def _cluster_router(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    key = f"{request.node.path.stem}::{request.node.originalname}"
    reason = REMOTE_SKIPS.get(key) or CLUSTER_SKIPS.get(key)
    if reason is not None:
        pytest.skip(f"cluster: {reason}")
    from mafalda import horizontal

    redis_url = request.getfixturevalue("shared_cluster")
    cluster = await horizontal.connect(
        redis_url,
        token=processes.TOKEN,
        interval=0.2,
        grace=1.5,
        worker_settings={"log_level": "warn"},
    )
    try:
        if len(cluster.servers) < 2:
            await cluster.refresh()
        yield await cluster.create_router(media_codecs=MEDIA_CODECS)
    finally:
        await cluster.aclose()


@pytest.fixture(params=["mediasoup", "mafalda", "remote", "remote-mafalda", "cluster"])
async def router(request: pytest.FixtureRequest, worker: Worker) -> AsyncIterator[Router]:
    """A mediasoup Router, and the same API from Mafalda, from Remote Mediasoup (a
    server on 127.0.0.1, a client, a remote worker) and from Remote Mafalda (a server
    on 127.0.0.1 serving a Mafalda, a client's router in its pool) and from a cluster
    (a router spanning two `mafalda serve --cluster` servers): what "same API" means.

    The Mafalda router spreads its transports over two workers, so consuming pipes
    producers across workers in most tests.
    """
    if request.param == "mediasoup":
        yield await worker.create_router(media_codecs=MEDIA_CODECS)
        return
    if request.param == "remote":
        module = request.node.path.stem
        reason = REMOTE_SKIPS.get(f"{module}::{request.node.originalname}")
        if reason is not None:
            pytest.skip(f"remote: {reason}")
        from mafalda.remote import RemoteMediasoup, connect, serve

        server = await serve(token="test-token", grace_period=0)
        client = await connect(server.url, token="test-token")
        assert isinstance(client, RemoteMediasoup)
        try:
            remote_worker = await client.create_worker(log_level="warn")
            yield await remote_worker.create_router(media_codecs=MEDIA_CODECS)
        finally:
            await client.aclose()
            await server.close()
        return
    if request.param == "cluster":
        async for cluster_router in _cluster_router(request):
            yield cluster_router
        return
    if request.param == "remote-mafalda":
        # The same limits as "remote" (a client proxy, no local worker); none added.
        reason = REMOTE_SKIPS.get(f"{request.node.path.stem}::{request.node.originalname}")
        if reason is not None:
            pytest.skip(f"remote-mafalda: {reason}")
        from mafalda.remote import RemoteMafalda, connect, serve

        served = await Mafalda.start(
            num_workers=2, policy="spread", worker_settings={"log_level": "warn"}
        )
        try:
            server = await serve(token="test-token", grace_period=0, target=served)
            try:
                remote = await connect(server.url, token="test-token")
                assert isinstance(remote, RemoteMafalda)
                try:
                    yield await remote.create_router(media_codecs=MEDIA_CODECS)  # type: ignore[misc]
                finally:
                    await remote.aclose()
            finally:
                await server.close()
        finally:
            await served.aclose()
        return
    mafalda = await Mafalda.start(
        num_workers=2, policy="spread", worker_settings={"log_level": "warn"}
    )
    try:
        yield await mafalda.create_router(media_codecs=MEDIA_CODECS)  # type: ignore[misc]
    finally:
        await mafalda.aclose()
