"""How close to local can any remote mode come here? Two lower bounds on a remote's cost.

Issue #5's benchmark (``bench/remote.py``) asks Remote Mediasoup for 0.7 of the local
rate. Its JSON-RPC design runs the library in the server, so a call pays for a second
library and a third process. This experiment measures the two leaner designs there are,
with nothing but the bytes moved, and runs ``bench/run.py``'s scenarios on each:

- ``relay``: the client runs ``mafalda.mediasoup`` itself and a server process copies
  the worker's channel bytes between a TCP socket and the worker's pipes (no framing,
  no inspection: a "channel relay" mode could only be slower);
- ``direct``: the server hands the accepted TCP socket to the worker as its channel
  (fds 3 and 4) and steps out; nothing but the kernel sits between client and worker.

Neither is shipped. ``direct`` gives anyone who holds the token the worker's raw channel:
mediasoup-worker does not verify the FlatBuffers it reads (``ChannelSocket.cpp`` calls
``GetMessage`` on them unchecked), so a crafted buffer reads and writes its memory; it
could not carry TLS either, nor restrict listen ports. The client side uses the
library's private worker plumbing, so this script lives here and not in ``src``.

    .venv/bin/python bench/remote_ceiling.py [--runs 3] [--scale 0.2] [--only ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
from typing import Any

import run as bench  # bench/run.py: this script's folder is on sys.path

from mafalda import mediasoup
from mafalda.cli import loop_runner
from mafalda.mediasoup import worker as worker_module
from mafalda.mediasoup.channel import Channel, ChannelReader
from mafalda.mediasoup.worker_binary import find_worker_bin

MODES = ("relay", "direct")


# -- servers (run as ``--serve MODE``, each in a process of its own) ---------------------


def _read_line(conn: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        byte = conn.recv(1)
        if not byte:
            raise ConnectionError("closed before the argv line")
        line += byte
    return line


def _serve_direct(listener: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel
    while True:
        conn, _ = listener.accept()
        # The worker writes a response and notifications in separate writes: without
        # this, Nagle holds the second back for the client's delayed ACK (40 ms).
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        argv = json.loads(_read_line(conn))
        if os.fork() == 0:
            # The pid line goes out before the worker exists, so it precedes its bytes.
            conn.sendall(b"%d\n" % os.getpid())
            # Above 4 first: a dup2 onto its own number would keep close-on-exec.
            channel = fcntl.fcntl(conn.fileno(), fcntl.F_DUPFD, 10)
            os.dup2(channel, 3)
            os.dup2(channel, 4)
            env = {**os.environ, "MEDIASOUP_VERSION": worker_module.WORKER_VERSION}
            os.execve(argv[0], argv, env)
        conn.close()


class _ToSocket(asyncio.Protocol):
    def __init__(self, sock: Any) -> None:
        self._sock = sock

    def data_received(self, data: bytes) -> None:
        self._sock.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._sock.close()


class _RelayConnection(asyncio.Protocol):
    def __init__(self) -> None:
        self._head = b""
        self._to_worker: asyncio.WriteTransport | None = None
        self._sock: Any = None

    def connection_made(self, transport: Any) -> None:
        self._sock = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def _start(self, argv: list[str]) -> None:
        loop = asyncio.get_running_loop()
        pid, to_fd, from_fd, out_fd, err_fd = worker_module._spawn(argv)
        os.close(out_fd)
        os.close(err_fd)
        self._to_worker, _ = await loop.connect_write_pipe(
            asyncio.Protocol, worker_module._PipeFile(to_fd)
        )
        self._sock.write(b"%d\n" % pid)  # before any byte of the worker's
        await loop.connect_read_pipe(
            lambda: _ToSocket(self._sock), worker_module._PipeFile(from_fd)
        )

    def data_received(self, data: bytes) -> None:
        if self._to_worker is not None:
            self._to_worker.write(data)
            return
        # The client sends nothing after its argv line before it has the pid.
        self._head += data
        if self._head.endswith(b"\n"):
            asyncio.ensure_future(self._start(json.loads(self._head)))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._to_worker is not None:
            self._to_worker.close()


async def _serve_relay(listener: socket.socket) -> None:
    server = await asyncio.get_running_loop().create_server(_RelayConnection, sock=listener)
    await server.serve_forever()


def serve(mode: str) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    if mode == "direct":
        _serve_direct(listener)
    else:
        loop_runner(os.environ.get("MAFALDA_LOOP", "uvloop"))(_serve_relay(listener))


# -- client ------------------------------------------------------------------------------


class _SocketReader(ChannelReader):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass


async def _tcp_worker(port: int) -> mediasoup.Worker:
    """A Worker whose channel is a TCP connection to a ``--serve`` process."""
    argv = [find_worker_bin(), "--logLevel=warn", "--rtcMinPort=10000", "--rtcMaxPort=59999"]
    conn = socket.create_connection(("127.0.0.1", port))
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn.sendall(json.dumps(argv).encode() + b"\n")
    pid = int(_read_line(conn))
    conn.setblocking(False)
    channel = Channel(pid)
    worker = mediasoup.Worker(pid=pid, channel=channel, app_data=None)
    channel.subscribe(str(pid), worker._on_notification)
    transport, _ = await asyncio.get_running_loop().create_connection(
        lambda: _SocketReader(channel, worker._pipe_lost), sock=conn
    )
    channel.attach(transport)
    worker._pipes_open = 1
    worker._transports.append(transport)
    await worker._started
    return worker


async def _rate(name: str, port: int | None) -> float:
    worker = await (
        mediasoup.create_worker(log_level="warn") if port is None else _tcp_worker(port)
    )
    try:
        router = await worker.create_router(media_codecs=bench.MEDIA_CODECS)
        return await bench.measure_rate(name, router)
    finally:
        if port is None:
            worker.close()
            await worker.wait_closed()
        else:  # not our child: its channel closes with the process
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)
            for transport in worker._transports:
                transport.close()


async def main(runs: int, names: list[str], ports: dict[str, int]) -> None:
    width = max(len(label) for _, _, label in bench.SCENARIOS)
    print(f"{'scenario':<{width}}  {'local':>10}  " + "  ".join(f"{m:>15}" for m in ports))
    for name, _unit, label in bench.SCENARIOS:
        if name not in names:
            continue
        rates: dict[str, list[float]] = {"local": [], **{m: [] for m in ports}}
        for _ in range(runs):  # alternating, so that each meets the same machine load
            rates["local"].append(await _rate(name, None))
            for mode, port in ports.items():
                rates[mode].append(await _rate(name, port))
        local = statistics.median(rates["local"])
        cells = []
        for mode in ports:
            rate = statistics.median(rates[mode])
            cells.append(f"{rate:>8.0f}/s {rate / local:.2f}")
        print(f"{label:<{width}}  {local:>8.0f}/s  " + "  ".join(cells), flush=True)


def cli() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="scale the op counts")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    for count in ("RTT_COUNT", "PLAIN_COUNT", "CONCURRENT"):
        setattr(bench, count, max(1, int(getattr(bench, count) * args.scale)))
    names = [n for n in args.only.split(",") if n] or [n for n, _, _ in bench.SCENARIOS]
    env = {**os.environ, "MAFALDA_LOOP": args.loop}
    servers: list[subprocess.Popen[str]] = []
    try:
        ports: dict[str, int] = {}
        for mode in MODES:
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            servers.append(proc)
            assert proc.stdout is not None
            ports[mode] = int(proc.stdout.readline())
        loop_runner(args.loop)(main(args.runs, names, ports))
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
