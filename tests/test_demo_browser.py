"""The demo end to end in headless Chromium (Debian's /usr/bin/chromium driven by
Playwright, fake camera and microphone): two pages see each other (on one worker, a
Mafalda pool, and on two servers of a cluster or a swarm, each page's video piped from its
server to the other's), and a page's simulcast video is switched between layers on the
server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest

from mafalda.demo.server import BUNDLE, DemoConfig, DemoServer
from mafalda.horizontal import Cluster
from mafalda.horizontal.router import ClusterRouter
from mafalda.mediasoup import Consumer, Producer
from mafalda.vertical import MafaldaRouter
from tests.processes import TOKEN, free_ports, reap, spawn_serve, swarm_command

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TIMEOUT_MS = 90_000  # two Chromium pages encoding and decoding on 2 cores: be patient
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-gpu",
    # Send every simulcast encoding asked for (Chrome otherwise sends 2 at 640x360).
    "--force-fieldtrials=WebRTC-LegacySimulcastLayerLimit/Disabled/",
]

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="/usr/bin/chromium is missing (Debian package chromium: apt-get install chromium)",
    ),
    pytest.mark.timeout(300),
]


@pytest.fixture
async def demo() -> AsyncIterator[DemoServer]:
    assert BUNDLE.exists(), f"{BUNDLE} is missing: run `bash scripts/build-demo.sh` first"
    async with DemoServer(DemoConfig(port=0, rtc_port=0)) as server:
        yield server


@pytest.fixture(params=["worker", "mafalda"])
async def demo_on(request: pytest.FixtureRequest) -> AsyncIterator[DemoServer]:
    """The demo on one worker, and on a Mafalda pool of two workers spreading the
    pages' transports over both: the browser sees no difference."""
    assert BUNDLE.exists(), f"{BUNDLE} is missing: run `bash scripts/build-demo.sh` first"
    config = DemoConfig(port=0, rtc_port=0)
    if request.param == "mafalda":
        config = DemoConfig(port=0, rtc_port=0, layer="mafalda", num_workers=2, policy="spread")
    async with DemoServer(config) as server:
        yield server


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Page:
    """A Playwright page of the demo, remembering the uncaught errors it had."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @classmethod
    async def open(cls, browser: Any) -> Page:
        # One context per page: two separate people (no shared storage).
        context = await browser.new_context(viewport={"width": 1100, "height": 560})
        return cls(await context.new_page())

    async def join(self, url: str) -> None:
        await self.page.goto(url)
        await self.page.click("#join")
        status = await self.page.wait_for_function(
            "['joined', 'error'].includes(window.demo.state.status) && window.demo.state.status",
            timeout=TIMEOUT_MS,
        )
        state = await self.page.evaluate("window.demo.state.error")
        assert await status.json_value() == "joined", state

    async def wait_remote_video(self, peers: int, frames: int) -> list[dict[str, Any]]:
        """Wait until the page decodes ``frames`` frames from each of ``peers`` others.

        Polls getStats() (Playwright's wait_for_function does not await an async
        predicate: the promise itself counts as true)."""
        async with asyncio.timeout(TIMEOUT_MS / 1000):
            while True:
                stats: list[dict[str, Any]] = await self.page.evaluate(
                    "window.demo.remoteVideoStats()"
                )
                if len(stats) == peers and all(s["framesDecoded"] >= frames for s in stats):
                    return stats
                await asyncio.sleep(0.5)


async def test_two_pages_see_each_other(demo_on: DemoServer, browser: Any) -> None:
    demo = demo_on
    url = demo.url("browser")
    alice = await Page.open(browser)
    await alice.join(url + "&name=alice")
    bob = await Page.open(browser)
    await bob.join(url + "&name=bob")

    room = demo.rooms.rooms["browser"]
    peer_ids = {peer.display_name: peer.id for peer in room.peers.values()}
    assert set(peer_ids) == {"alice", "bob"}
    if isinstance(room.router, MafaldaRouter):  # spread: the room spans both workers
        workers = {
            room.router.worker_of(t).pid
            for peer in room.peers.values()
            for t in peer.transports.values()
        }
        assert len(workers) == 2, workers
    for page, other in ((alice, "bob"), (bob, "alice")):
        stats = await page.wait_remote_video(peers=1, frames=1)
        assert stats[0]["peerId"] == peer_ids[other]
        assert stats[0]["framesDecoded"] > 0
        assert stats[0]["frameWidth"] > 0
        # The remote tile's <video> plays what was decoded.
        tile = f'.tile[data-peer-id="{peer_ids[other]}"]'
        await page.page.wait_for_function(
            f"""() => {{
                const video = document.querySelector('{tile} video');
                return video && video.videoWidth > 0 && video.currentTime > 0;
            }}""",
            timeout=TIMEOUT_MS,
        )
        assert await page.page.locator(f"{tile} .label").inner_text() == other
        await page.page.wait_for_function(
            f"document.querySelectorAll('{tile} audio').length === 1", timeout=TIMEOUT_MS
        )
        assert await page.page.locator(".tile").count() == 2

    # Chat over the data channel, typed in one page, shown in the other.
    await alice.page.fill("#chat-input", "hello bob")
    await alice.page.press("#chat-input", "Enter")
    await bob.page.wait_for_function(
        "window.demo.state.chat.some((m) => m.text === 'hello bob' && m.from === 'alice')",
        timeout=TIMEOUT_MS,
    )
    await alice.page.wait_for_function(
        "document.querySelector('.tile.speaking') !== null", timeout=TIMEOUT_MS
    )

    # Let the video run a little so that the picture shows motion, then keep it.
    await alice.wait_remote_video(peers=1, frames=30)
    ARTIFACTS.mkdir(exist_ok=True)
    layer = "" if demo.config.layer == "worker" else f"-{demo.config.layer}"
    await alice.page.screenshot(path=str(ARTIFACTS / f"demo-two-peers{layer}.png"))

    # bob leaves with the button: alice's page drops his tile.
    await bob.page.click("#leave")
    await alice.page.wait_for_function(
        f"document.querySelector('.tile[data-peer-id=\"{peer_ids['bob']}\"]') === null",
        timeout=TIMEOUT_MS,
    )
    assert list(room.peers) == [peer_ids["alice"]]
    assert alice.errors == [] and bob.errors == []


@pytest.fixture(params=["cluster", "swarm"])
async def demo_across(request: pytest.FixtureRequest) -> AsyncIterator[DemoServer]:
    """The demo on two media servers: the session's two `mafalda serve --cluster`
    processes (s1 on 127.0.0.2, s2 on 127.0.0.3, one Redis), or two `mafalda serve
    --swarm` processes (s4 on 127.0.0.5, s5 on 127.0.0.6, the second seeded with the
    first); the demo knows the Redis, or the swarm through s5 only."""
    assert BUNDLE.exists(), f"{BUNDLE} is missing: run `bash scripts/build-demo.sh` first"
    async with AsyncExitStack() as stack:
        if request.param == "cluster":
            url = request.getfixturevalue("shared_cluster")
        else:
            seeds: list[str] = []
            for index in (4, 5):
                proc, url = await spawn_serve(swarm_command(index, *seeds))
                stack.push_async_callback(stop, proc)
                seeds.append(url)
        config = DemoConfig(
            port=0, rtc_port=free_ports(16), layer=request.param, url=url, token=TOKEN
        )
        demo = await stack.enter_async_context(DemoServer(config))
        cluster = demo.rooms.worker
        assert isinstance(cluster, Cluster)
        async with asyncio.timeout(20):
            while len(cluster.servers) < 2:  # (a swarm's table fills as its servers gossip)
                await cluster.refresh()
                await asyncio.sleep(0.1)
        yield demo


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
    await reap(proc)


def pin_peers(router: ClusterRouter, servers: list[str]) -> None:
    """Place the transports of a demo room's n-th peer to ask for one on ``servers[n]``,
    through the router's public ``server=``. (Left to the cluster's least-loaded
    placement, a page's send and recv transports go to different servers, and then a
    page's video may reach the other's recv transport on its own server, never
    crossing: so it went in a run without this, alice sending to s2, bob receiving there.)"""
    create = router.create_webrtc_transport
    placed: dict[str, str] = {}

    async def pinned(**options: Any) -> Any:
        peer_id = options["app_data"]["peerId"]
        if peer_id not in placed:
            placed[peer_id] = servers[len(placed)]
        return await create(server=placed[peer_id], **options)

    router.create_webrtc_transport = pinned  # type: ignore[method-assign]


async def test_two_pages_see_each_other_across_servers(
    demo_across: DemoServer, browser: Any
) -> None:
    """Each page's transports on a server of its own: each page's video reaches the
    other through the pipe between the two servers."""
    demo = demo_across
    cluster = demo.rooms.worker
    assert isinstance(cluster, Cluster)
    servers = sorted(cluster.servers)
    assert len(servers) == 2
    room = await demo.rooms.get_or_create("across")
    router = room.router
    assert isinstance(router, ClusterRouter)
    pin_peers(router, servers)
    url = demo.url("across")
    alice = await Page.open(browser)
    await alice.join(url + "&name=alice")
    bob = await Page.open(browser)
    await bob.join(url + "&name=bob")
    peers = {peer.display_name: peer for peer in room.peers.values()}
    assert set(peers) == {"alice", "bob"}

    # Each server's WebRtcServer (its own dump) holds the transports of one page.
    home = {"alice": servers[0], "bob": servers[1]}
    dumps = await demo.rooms.webrtc_server.dump()
    for name, server in home.items():
        transports = set(peers[name].transports)
        assert len(transports) == 2
        assert transports <= set(dumps[server]["webRtcTransportIds"]), (name, server)
        assert {router.server_of(t) for t in peers[name].transports.values()} == {server}

    for page, other in ((alice, "bob"), (bob, "alice")):
        stats = await page.wait_remote_video(peers=1, frames=10)
        assert stats[0]["peerId"] == peers[other].id
        assert stats[0]["frameWidth"] > 0

    # Each page's video was piped from its server to the other's (no other way: the
    # two servers are separate processes, each with its own worker).
    layout = router.cluster_dump()
    media_pipes = {(p["id"], p["from"], p["to"]) for p in layout["pipes"] if p["kind"] == "media"}
    for name, other in (("alice", "bob"), ("bob", "alice")):
        (video,) = (p for p in peers[name].producers.values() if p.kind == "video")
        assert router.server_of(video) == home[name]
        assert (video.id, home[name], home[other]) in media_pipes, (name, media_pipes)
    assert [pair["servers"] for pair in layout["pipeTransportPairs"]] == [servers]
    assert alice.errors == [] and bob.errors == []


async def wait_event(emitter: Any, event: str, predicate: Any, timeout: float = 60) -> Any:
    """Wait for ``event`` with arguments satisfying ``predicate``."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def listener(*args: Any) -> None:
        if not future.done() and predicate(*args):
            future.set_result(args)

    emitter.on(event, listener)
    try:
        async with asyncio.timeout(timeout):
            return await future
    finally:
        emitter.off(event, listener)


async def test_simulcast_layers_switch_on_the_server(demo: DemoServer, browser: Any) -> None:
    url = demo.url("simulcast")
    page = await Page.open(browser)
    await page.join(url + "&name=sender")  # the page sends three encodings by default
    room = demo.rooms.rooms["simulcast"]
    (sender,) = room.peers.values()
    video: Producer = next(p for p in sender.producers.values() if p.kind == "video")
    assert video.type == "simulcast"
    encodings = video.rtp_parameters["encodings"]
    assert [e.get("rid") for e in encodings] == ["r0", "r1", "r2"]
    assert [e.get("scaleResolutionDownBy") for e in encodings] == [4, 2, 1]

    # Wait until the three streams arrive (the producer scores each one).
    if not (len(video.score) == 3 and all(s["score"] > 0 for s in video.score)):
        await wait_event(
            video, "score", lambda scores: len(scores) == 3 and all(s["score"] > 0 for s in scores)
        )
    stats = await video.get_stats()
    assert sorted(s.get("rid") for s in stats) == ["r0", "r1", "r2"]

    # A server-side consumer on a PlainTransport (RTP to a local UDP socket). No
    # transport-wide congestion control: the consumer follows the preferred layers.
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    try:
        plain = await room.router.create_plain_transport(listen_ip="127.0.0.1", comedia=False)
        await plain.connect(ip="127.0.0.1", port=receiver.getsockname()[1])
        caps: Any = {"codecs": [], "headerExtensions": []}
        for codec in room.router.rtp_capabilities["codecs"]:
            if codec["mimeType"] == "video/VP8":
                feedback = [
                    f for f in codec.get("rtcpFeedback", []) if f["type"] in ("nack", "ccm")
                ]
                caps["codecs"].append({**codec, "rtcpFeedback": feedback})
        consumer: Consumer = await plain.consume(producer_id=video.id, rtp_capabilities=caps)
        assert consumer.type == "simulcast"
        assert consumer.preferred_layers == {"spatialLayer": 2, "temporalLayer": 2}
        changes: list[Any] = []
        consumer.on("layerschange", changes.append)

        for spatial in (0, 2, 1, 0):
            await consumer.set_preferred_layers(spatial_layer=spatial)
            assert consumer.preferred_layers is not None
            assert consumer.preferred_layers["spatialLayer"] == spatial
            if not (consumer.current_layers or {}).get("spatialLayer") == spatial:
                await wait_event(
                    consumer,
                    "layerschange",
                    lambda layers, spatial=spatial: (
                        layers is not None and layers["spatialLayer"] == spatial
                    ),
                )
            assert consumer.current_layers is not None
            assert consumer.current_layers["spatialLayer"] == spatial

        # Temporal layers too: the top spatial layer at its lowest frame rate.
        await consumer.set_preferred_layers(spatial_layer=2, temporal_layer=0)
        await wait_event(
            consumer,
            "layerschange",
            lambda layers: layers == {"spatialLayer": 2, "temporalLayer": 0},
        )
        assert consumer.current_layers == {"spatialLayer": 2, "temporalLayer": 0}
        spatial_seen = [c["spatialLayer"] for c in changes if c is not None]
        assert {0, 1, 2} <= set(spatial_seen)
        outbound = next(s for s in await consumer.get_stats() if s["type"] == "outbound-rtp")
        assert outbound["byteCount"] > 0
        assert page.errors == []
    finally:
        receiver.close()
