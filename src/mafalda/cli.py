"""The ``mafalda`` command.

    mafalda demo [--host 127.0.0.1] [--port 8080] [--rtc-ip 127.0.0.1] [--rtc-port 40000]
                 [--announced-ip ADDRESS]
    mafalda serve [--host 127.0.0.1] [--port 4443] [--token T] [--mafalda] [--grace 10]
                  [--tls-cert PEM --tls-key PEM [--tls-ca PEM]] [--max-workers-per-session N]
                  [--max-workers N] [--max-sessions N] [--max-connections N]
                  [--max-objects-per-session N] [--max-send-backlog BYTES]
                  [--rtc-port-range MIN-MAX]
                  [--cluster REDIS_URL ... | --swarm [SEED_URL ...]]
                  [--peer-token SECRET [--peer-also-accept SECRET]]
    mafalda monitor REDIS_URL|SWARM_SERVER_URL [--token T] [--tls-ca PEM] [--interval 2]
                    [--once] [--json] [--web --port 8090]

Each flag has an environment variable (MAFALDA_DEMO_HOST, MAFALDA_DEMO_PORT,
MAFALDA_DEMO_RTC_IP, MAFALDA_DEMO_RTC_PORT, MAFALDA_DEMO_ANNOUNCED_IP); a flag wins.
``mafalda --loop asyncio|uvloop|auto COMMAND`` (env MAFALDA_LOOP) picks the event loop:
uvloop by default where it is installed (it is a dependency on Linux), as it halves the
loop's cost per request; ``asyncio`` is the standard library's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl as ssl_module

    from mafalda.demo.server import DemoServer
    from mafalda.horizontal import MediaNode
    from mafalda.horizontal.registry import ServerRecord
    from mafalda.monitor import Probe
    from mafalda.monitor.web import MonitorWeb
    from mafalda.remote import RemoteServer
    from mafalda.swarm import SwarmNode

__all__ = ["main"]


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        port = int(value)
    except ValueError:
        raise SystemExit(f"mafalda: {name}={value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise SystemExit(f"mafalda: {name}={value!r} is not a port number")
    return port


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0..65535)")
    return port


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if limit < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number")
    return limit


def _port_range(value: str) -> tuple[int, int]:
    from mafalda.remote._limits import check_port_range

    try:
        low, high = (int(part) for part in value.split("-"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port range (MIN-MAX)") from None
    try:
        check_port_range((low, high))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return low, high


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mafalda", description="Mafalda SFU: mediasoup's server API in Python."
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default=os.environ.get("MAFALDA_LOOP") or "auto",
        help="event loop (env MAFALDA_LOOP): uvloop when installed (auto, the default), "
        "or asyncio's own",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    build = commands.add_parser(
        "build-worker",
        help="build mediasoup-worker into the cache (once; Debian 12, about 7 minutes)",
        description=(
            "Build mediasoup-worker from the mediasoup npm tarball against Debian's "
            "libraries (installing the missing ones with apt), into ~/.cache/mafalda "
            "(MAFALDA_CACHE), and print its path. A worker already built by this recipe "
            "is kept. MEDIASOUP_WORKER_BIN, when set, is used instead of the cache."
        ),
    )
    build.add_argument("--force", action="store_true", help="build again even if cached")
    demo = commands.add_parser(
        "demo",
        help="run the video room demo (open the printed URL in two browser tabs)",
        description=(
            "Serve a one-page video room: camera, microphone, active speaker, chat over a "
            "data channel. By default media goes through one mediasoup worker's "
            "WebRtcServer (UDP and TCP); --layer runs the same rooms on a Mafalda pool, a "
            "`mafalda serve` elsewhere, a cluster or a swarm."
        ),
    )
    env = os.environ.get
    demo.add_argument(
        "--host",
        default=env("MAFALDA_DEMO_HOST") or "127.0.0.1",
        help="HTTP and WebSocket address (env MAFALDA_DEMO_HOST; default %(default)s)",
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=_env_port("MAFALDA_DEMO_PORT", 8080),
        help="HTTP and WebSocket port (env MAFALDA_DEMO_PORT; default %(default)s)",
    )
    demo.add_argument(
        "--rtc-ip",
        default=env("MAFALDA_DEMO_RTC_IP") or "127.0.0.1",
        help="IP media are received on, the WebRtcServer's (env MAFALDA_DEMO_RTC_IP; "
        "default %(default)s); a cluster's or swarm's WebRtcServers are on their "
        "servers' media addresses (0.0.0.0 or ::: on all interfaces, that one announced)",
    )
    demo.add_argument(
        "--rtc-port",
        type=_port,
        default=_env_port("MAFALDA_DEMO_RTC_PORT", 40000),
        help="WebRtcServer port, UDP and TCP; 0 for any (env MAFALDA_DEMO_RTC_PORT; "
        "default %(default)s); where each worker has its own WebRtcServer the ports from "
        "it, one per worker (a Mafalda pool), 16 on each server of a cluster or swarm",
    )
    demo.add_argument(
        "--announced-ip",
        default=env("MAFALDA_DEMO_ANNOUNCED_IP") or None,
        help="address browsers send media to, when it is not --rtc-ip: a public IP behind "
        "NAT, or this host's address when --rtc-ip is 0.0.0.0 (env MAFALDA_DEMO_ANNOUNCED_IP)",
    )
    demo.add_argument(
        "--layer",
        choices=("worker", "mafalda", "remote", "cluster", "swarm"),
        default="worker",
        help="what the rooms run on: one worker (default), a Mafalda pool over the cores "
        "(--num-workers), the `mafalda serve` at --url, the cluster whose Redis is --url, "
        "or the swarm of the server at --url",
    )
    demo.add_argument("--url", default=None, help="--layer remote/cluster/swarm: where")
    demo.add_argument(
        "--token",
        default=env("MAFALDA_REMOTE_TOKEN"),
        help="--layer remote/cluster/swarm: the servers' token (env MAFALDA_REMOTE_TOKEN)",
    )
    demo.add_argument(
        "--num-workers", type=int, default=None, help="--layer mafalda: the pool's size"
    )
    demo.add_argument(
        "--policy",
        default=None,
        help="placement: --layer mafalda: concentrate (default), spread...; cluster/swarm: "
        "least-loaded (default), pack, region",
    )
    demo.add_argument("--room", default="demo", help="room named in the printed URL")
    demo.add_argument(
        "--verbose", "-v", action="store_true", help="log debug messages of the demo too"
    )
    _add_serve_parser(commands)
    _add_monitor_parser(commands)
    return parser


def _add_monitor_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = commands.add_parser(
        "monitor",
        help="watch a cluster live: servers, workers, routers, loads, links",
        description=(
            "Read the cluster's Redis (the servers' registry records and the reports of "
            "`mafalda serve --cluster`), or a swarm through any of its servers (the "
            "swarm's table and each server's report; `mafalda serve --swarm`), and show "
            "it: in this terminal, refreshed every --interval seconds (--once: once), as "
            "JSON (--json), or as a live web page (--web)."
        ),
    )
    monitor.add_argument(
        "url",
        metavar="URL",
        help="the cluster's Redis (redis://, rediss://, redis(s)+sentinel://, "
        "redis(s)+cluster://) or a swarm's server (ws://, wss://)",
    )
    monitor.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="a swarm's: the authorities its servers' wss:// certificates are checked "
        "against (default: the system's)",
    )
    monitor.add_argument(
        "--token",
        default=os.environ.get("MAFALDA_REMOTE_TOKEN"),
        help="a swarm's: the servers' shared secret (default: MAFALDA_REMOTE_TOKEN)",
    )
    monitor.add_argument("--prefix", default="mafalda", help="the cluster's key prefix")
    monitor.add_argument("--interval", type=_positive, default=2.0, help="seconds")
    monitor.add_argument("--once", action="store_true", help="print one view and exit")
    monitor.add_argument("--json", action="store_true", help="print views as JSON lines")
    monitor.add_argument("--web", action="store_true", help="serve the live page instead")
    monitor.add_argument(
        "--host",
        default="127.0.0.1",
        help="--web: address (other than loopback: --web-password is required)",
    )
    monitor.add_argument("--port", type=_port, default=8090, help="--web: port")
    monitor.add_argument(
        "--web-password",
        default=os.environ.get("MAFALDA_MONITOR_PASSWORD") or None,
        help="--web: the page's password (HTTP Basic, any user name; default: "
        "MAFALDA_MONITOR_PASSWORD)",
    )
    monitor.add_argument("--web-cert", default=None, metavar="PEM", help="--web: serve HTTPS")
    monitor.add_argument("--web-key", default=None, metavar="PEM", help="--web-cert's key")


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None


def _positive(value: str) -> float:
    number = _number(value)
    if not 0 < number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive number of seconds")
    return number


def _seconds(value: str) -> float:
    number = _number(value)
    if not 0 <= number < float("inf"):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds (0 or more)")
    return number


def _add_serve_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = os.environ.get
    serve = commands.add_parser(
        "serve",
        help="serve Remote Mediasoup (or Remote Mafalda with --mafalda) over WebSocket",
        description=(
            "Let clients of mafalda.remote.connect() create workers (or, with --mafalda, "
            "routers in a Mafalda pool) on this machine. The token comes from "
            "MAFALDA_REMOTE_TOKEN or --token."
        ),
    )
    serve.add_argument("--host", default=env("MAFALDA_REMOTE_HOST") or "127.0.0.1")
    serve.add_argument("--port", type=_port, default=_env_port("MAFALDA_REMOTE_PORT", 4443))
    serve.add_argument("--token", default=env("MAFALDA_REMOTE_TOKEN"), help="shared secret")
    serve.add_argument(
        "--also-accept",
        action="append",
        default=(env("MAFALDA_REMOTE_ALSO_ACCEPT") or "").split(),
        metavar="TOKEN",
        help="another secret clients and peers may present (repeatable; env "
        "MAFALDA_REMOTE_ALSO_ACCEPT, space-separated): to rotate --token without a stop",
    )
    serve.add_argument("--mafalda", action="store_true", help="serve a Mafalda pool")
    serve.add_argument("--num-workers", type=int, default=None, help="Mafalda pool size")
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds a dropped client may resume"
    )
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve wss://")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    serve.add_argument(
        "--tls-ca",
        default=None,
        metavar="PEM",
        help="--swarm: the certificate authorities that other servers' wss:// certificates "
        "are checked against (default: the system's)",
    )
    limits = serve.add_argument_group("limits (see mafalda.remote.serve)")
    limits.add_argument(
        "--max-workers-per-session",
        type=_limit,
        default=None,
        metavar="N",
        help="workers a client may have at once (default: 4 per CPU core, at least 8)",
    )
    limits.add_argument(
        "--max-workers",
        type=_limit,
        default=None,
        metavar="N",
        help="workers of all clients together (default: 8 per CPU core, at least 16)",
    )
    limits.add_argument(
        "--max-connections",
        type=_limit,
        default=None,
        metavar="N",
        help="open WebSockets, before their hello too (default: --max-sessions + 100)",
    )
    limits.add_argument(
        "--max-sessions",
        type=_limit,
        default=None,
        metavar="N",
        help="clients at once, those within their grace period included (default 1000)",
    )
    limits.add_argument(
        "--max-objects-per-session",
        type=_limit,
        default=None,
        metavar="N",
        help="live objects (routers, transports, producers, consumers...) a client may "
        "hold (default 100000)",
    )
    limits.add_argument(
        "--max-send-backlog",
        type=_limit,
        default=None,
        metavar="BYTES",
        help="answers and events waiting for a client that does not read, before its "
        "connection is dropped (default 67108864: 64 MiB)",
    )
    limits.add_argument(
        "--rtc-port-range",
        type=_port_range,
        default=None,
        metavar="MIN-MAX",
        help="the only RTC ports clients' workers and transports may listen on "
        "(default: any); --mafalda: its workers' range too",
    )
    watch = serve.add_argument_group("monitor (mafalda.monitor)")
    watch.add_argument(
        "--monitor-port",
        type=_port,
        default=None,
        metavar="PORT",
        help="serve this server's live monitor page (and /view JSON) on PORT",
    )
    watch.add_argument(
        "--monitor-host",
        default="127.0.0.1",
        help="the monitor page's address (default %(default)s; other than loopback: "
        "--monitor-password is required)",
    )
    watch.add_argument(
        "--monitor-password",
        default=env("MAFALDA_MONITOR_PASSWORD") or None,
        help="the monitor page's password (HTTP Basic, any user name; default: "
        "MAFALDA_MONITOR_PASSWORD); the page is served over HTTPS with --tls-cert",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_seconds,
        default=30.0,
        help="SIGTERM: seconds to wait for the clients' objects to close (0: stop at once)",
    )
    cluster = serve.add_argument_group("cluster (mafalda.horizontal)")
    cluster.add_argument(
        "--cluster",
        default=None,
        metavar="REDIS_URL",
        help="register in Redis (redis://, rediss://, redis(s)+sentinel://HOST:PORT,.../SERVICE, "
        "redis(s)+cluster://HOST:PORT,...)",
    )
    cluster.add_argument(
        "--swarm",
        nargs="*",
        default=None,
        metavar="SEED_URL",
        help="join a swarm (mafalda.swarm) through these servers' URLs, or start one "
        "(no URL); no Redis: the servers gossip on this port",
    )
    cluster.add_argument(
        "--peer-token",
        default=env("MAFALDA_SWARM_TOKEN") or None,
        metavar="SECRET",
        help="--swarm: the servers' own secret, which no client holds (env "
        "MAFALDA_SWARM_TOKEN): only its holders may gossip, pipe streams out and write "
        "directory entries (default: the clients' token is the servers' too)",
    )
    cluster.add_argument(
        "--peer-also-accept",
        action="append",
        default=(env("MAFALDA_SWARM_ALSO_ACCEPT") or "").split(),
        metavar="SECRET",
        help="--swarm: another servers' secret taken too (repeatable; env "
        "MAFALDA_SWARM_ALSO_ACCEPT, space-separated): to rotate --peer-token without a stop",
    )
    cluster.add_argument("--region", default=None, help="this server's region")
    cluster.add_argument("--announce-ip", default=None, help="media address (default --host)")
    cluster.add_argument("--server-id", default=None, help="registry id (default a UUID)")
    cluster.add_argument(
        "--heartbeat",
        type=float,
        default=2.0,
        help="seconds (--cluster: the record's TTL is 3x; --swarm: a server silent 5x is dropped)",
    )


def serve_limits(args: argparse.Namespace) -> dict[str, Any]:
    """The ``serve()`` keywords of the limits given on the command line (the others keep
    ``serve()``'s defaults)."""
    names = (
        "max_workers_per_session",
        "max_workers",
        "max_sessions",
        "max_connections",
        "max_objects_per_session",
        "max_send_backlog",
        "rtc_port_range",
    )
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def peer_context(ca_file: str | None) -> ssl_module.SSLContext | None:
    """The context other servers' (and a swarm's) certificates are checked with: the
    given authorities', or None (the system's)."""
    if ca_file is None:
        return None
    import ssl

    return ssl.create_default_context(cafile=ca_file)


async def _run_serve(args: argparse.Namespace) -> int:
    import ssl

    from mafalda import mediasoup
    from mafalda.remote import serve
    from mafalda.vertical import Mafalda

    if not args.token:
        print("mafalda: a token is required (--token or MAFALDA_REMOTE_TOKEN)", file=sys.stderr)
        return 2
    if args.cluster and args.swarm is not None:
        print("mafalda: --cluster and --swarm are two ways to join: pick one", file=sys.stderr)
        return 2
    if args.swarm is None and (args.peer_token or args.peer_also_accept):
        print("mafalda: --peer-token and --peer-also-accept need --swarm", file=sys.stderr)
        return 2
    if args.peer_also_accept and not args.peer_token:
        print("mafalda: --peer-also-accept needs --peer-token", file=sys.stderr)
        return 2
    if {args.peer_token, *args.peer_also_accept} & {args.token, *args.also_accept}:
        # (Every app would be a peer: what the peer token keeps from them.)
        print("mafalda: the peer token must not be a token of the apps", file=sys.stderr)
        return 2
    if args.swarm is not None and not args.peer_token:
        print(
            "mafalda: warning: no --peer-token (MAFALDA_SWARM_TOKEN): any client's token "
            "can act as a server of the swarm",
            file=sys.stderr,
        )
    if args.monitor_port is not None:
        from mafalda.monitor.web import check_page_options

        check_page_options(args.monitor_host, args.monitor_password)
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    probe = None
    if args.cluster or args.swarm is not None or args.monitor_port is not None:
        from mafalda.monitor import Probe

        probe = Probe()  # before any worker starts: it follows them from their start
        probe.start()
    pool = None
    if args.mafalda:
        settings = {}
        if args.rtc_port_range is not None:
            # The pool's workers pick the ports of transports that name none.
            low, high = args.rtc_port_range
            settings = {"rtc_min_port": low, "rtc_max_port": high}
        pool = await Mafalda.start(num_workers=args.num_workers, worker_settings=settings)
    try:
        server = await serve(
            host=args.host,
            port=args.port,
            token=args.token,
            accept_tokens=args.also_accept,
            ssl=context,
            target=pool if pool is not None else mediasoup,
            grace_period=args.grace,
            **serve_limits(args),
        )
        # The stack closes what started if a later step fails (a monitor port in use...):
        # a node left registered would be placed on until its record expired.
        async with server, contextlib.AsyncExitStack() as started:
            node: MediaNode | SwarmNode | None = None
            if args.cluster:
                from mafalda.horizontal import MediaNode

                node = MediaNode(
                    server,
                    redis_url=args.cluster,
                    server_id=args.server_id,
                    media_address=args.announce_ip,
                    region=args.region,
                    interval=args.heartbeat,
                )
            elif args.swarm is not None:
                from mafalda.swarm import SwarmNode

                node = SwarmNode(
                    server,
                    token=args.token,
                    peer_token=args.peer_token,
                    accept_peer_tokens=args.peer_also_accept,
                    seeds=args.swarm,
                    ssl=peer_context(args.tls_ca),
                    server_id=args.server_id,
                    media_address=args.announce_ip,
                    region=args.region,
                    interval=args.heartbeat,
                )
            if node is not None:
                await node.start()
                started.push_async_callback(node.aclose)
            if probe is not None:
                probe.clients = server.clients
                if pool is not None:
                    from mafalda.monitor.probe import pool_loads, pool_rooms

                    probe.loads = pool_loads(pool)
                    probe.rooms = pool_rooms(pool)
            if args.cluster and node is not None and probe is not None:
                from mafalda.monitor import Reporter

                reporter = Reporter(
                    probe, redis_url=args.cluster, server_id=node.id, interval=args.heartbeat
                )
                await reporter.start()
                started.push_async_callback(reporter.aclose)
            if args.swarm is not None and node is not None and probe is not None:
                from mafalda.monitor import StatsRoute

                stats = StatsRoute(probe, server, server_id=node.id, interval=args.heartbeat)
                stats.start()
                started.callback(stats.stop)
            page = None
            if probe is not None and args.monitor_port is not None:
                page = await _start_monitor_page(args, context, server, probe, node)
                started.push_async_callback(page.aclose)
            print(f"Mafalda remote server listening on {server.url}", flush=True)
            if page is not None:
                print(f"Mafalda monitor on {page.url}", flush=True)
            await stop.wait()
            # Drain (a second signal: stop now): clients' calls that create are refused,
            # /readyz says so, what is there may finish; then leave the cluster.
            stop.clear()
            if node is not None:
                await node.drain(args.drain_timeout, abort=stop)
                await node.aclose()
            else:
                await server.drain(args.drain_timeout, abort=stop)
    finally:
        if pool is not None:
            await pool.aclose()
    return 0


async def _start_monitor_page(
    args: argparse.Namespace,
    context: ssl_module.SSLContext | None,
    server: RemoteServer,
    probe: Probe,
    node: MediaNode | SwarmNode | None,
) -> MonitorWeb:
    """This server's own monitor page (no Redis): its record as it would publish it."""
    from mafalda.horizontal.node import server_record
    from mafalda.monitor import LocalMonitor
    from mafalda.monitor.web import MonitorWeb

    def record() -> ServerRecord:
        if node is not None:
            return node.record()
        return server_record(
            server, server_id="local", control_url=server.url, media_address=server.host
        )

    interval = args.heartbeat if node is not None else 2.0
    page = MonitorWeb(
        LocalMonitor(probe, record=record, interval=interval),
        host=args.monitor_host,
        port=args.monitor_port,
        password=args.monitor_password,
        ssl=context,
    )
    await page.start()
    return page


async def _run_monitor(args: argparse.Namespace) -> int:
    import ssl

    from mafalda.monitor import connect
    from mafalda.monitor.web import MonitorWeb, check_page_options

    context = None
    if args.web:
        check_page_options(args.host, args.web_password)
        if args.web_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(args.web_cert, args.web_key)
    try:
        opened = connect(
            args.url,
            token=args.token,
            prefix=args.prefix,
            interval=args.interval,
            ssl=peer_context(args.tls_ca),
        )
        mon = await opened
    except ValueError as error:
        print(f"mafalda: {error} (--token or MAFALDA_REMOTE_TOKEN)", file=sys.stderr)
        return 2
    async with mon:
        if args.web:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError):
                    loop.add_signal_handler(sig, stop.set)
            async with MonitorWeb(
                mon, host=args.host, port=args.port, password=args.web_password, ssl=context
            ) as page:
                print(f"Mafalda monitor on {page.url}", flush=True)
                await stop.wait()
            return 0
        if args.once:
            _print_view(await mon.view(), args)
            return 0
        views = mon.views()  # endless: until interrupted
        while True:
            _print_view(await anext(views), args)


def _print_view(view: Any, args: argparse.Namespace) -> None:
    from mafalda.monitor import render_text

    if args.json:
        print(json.dumps(view, separators=(",", ":")), flush=True)
    else:
        # A live terminal view redraws in place; a pipe or --once gets plain pages.
        clear = "" if args.once or not sys.stdout.isatty() else "\x1b[H\x1b[2J"
        print(clear + render_text(view), flush=True)


async def _run_demo(args: argparse.Namespace) -> int:
    from mafalda.demo.server import DemoConfig, DemoServer

    config = DemoConfig(
        host=args.host,
        port=args.port,
        rtc_ip=args.rtc_ip,
        rtc_port=args.rtc_port,
        announced_ip=args.announced_ip,
        layer=args.layer,
        url=args.url,
        token=args.token if args.layer in ("remote", "cluster", "swarm") else None,
        num_workers=args.num_workers,
        policy=args.policy,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        return await _serve(DemoServer(config), stop, args.room)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.remove_signal_handler(sig)


async def _serve(server: DemoServer, stop: asyncio.Event, room: str) -> int:
    from mafalda.demo.server import BUNDLE

    async with server:
        if not BUNDLE.exists():
            print(
                "mafalda: the page's bundle is missing: run `bash scripts/build-demo.sh` "
                "(it needs npm), then reload the page",
                file=sys.stderr,
            )
        print(f"Mafalda demo running: open {server.url(room)} (in two tabs to see both)")
        print("Press Ctrl+C to stop.", flush=True)
        failed = asyncio.ensure_future(server.wait_failed())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if failed.done() and not failed.cancelled():
            print(f"mafalda: {failed.result()}", file=sys.stderr)
            return 1
        failed.cancel()
    return 0


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, int]], int]:
    """``asyncio.run`` or uvloop's equivalent, for --loop ``choice``."""
    if choice == "asyncio":
        return asyncio.run
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("mafalda: --loop uvloop: uvloop is not installed") from None
        return asyncio.run
    return uvloop.run


def _build_worker(*, force: bool) -> int:
    """The packaged recipe's exit code (its progress on stderr, the path on stdout)."""
    from mafalda.mediasoup.worker_binary import build_script

    try:
        done = subprocess.run(["bash", str(build_script()), *(["--force"] if force else [])])
    except OSError as error:  # no bash
        print(f"mafalda: cannot run the worker's build recipe: {error}", file=sys.stderr)
        return 1
    return done.returncode


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "build-worker":
        return _build_worker(force=args.force)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("mafalda.demo").setLevel(
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO
    )
    from mafalda.mediasoup import MediasoupError

    run = loop_runner(args.loop)
    try:
        if args.command == "serve":
            return run(_run_serve(args))
        if args.command == "monitor":
            try:
                return run(_run_monitor(args))
            except KeyboardInterrupt:  # Ctrl+C in the terminal view: done watching
                return 130
        return run(_run_demo(args))
    except (OSError, MediasoupError) as error:
        print(f"mafalda: {error}", file=sys.stderr)
        return 1
    except ValueError as error:  # settings that do not go together (a usage error)
        print(f"mafalda: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
