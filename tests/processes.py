"""Real processes for tests and benchmarks: `mafalda serve` servers, a throwaway
redis-server, cluster media servers each on its own loopback address (127.0.0.2, .3, ...)
or in its own network namespace. The synchronous starters use plain subprocesses, so a
session-wide cluster outlives every test's event loop; ``spawn_serve`` is the asyncio one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import select
import socket
import subprocess
import sys
import time
from typing import Any

REDIS_SERVER = "/usr/bin/redis-server"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, however it dies
    (a session-wide server must not outlive a pytest killed hard)."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


TOKEN = "cluster-secret"
HAVE_REDIS = os.path.exists(REDIS_SERVER)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive ports free for UDP and TCP on every address,
    below Linux's ephemeral range (32768 up), so that no outgoing connection takes one
    before what the test starts binds them (a process, a worker, a WebRtcServer's
    ``portRange``)."""
    while True:
        first = random.randrange(20000, 32768 - count)
        try:
            with contextlib.ExitStack() as held:
                for port in range(first, first + count):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        sock = held.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind(("0.0.0.0", port))
        except OSError:
            continue
        return first


class RedisProcess:
    """A redis-server without persistence that tests may kill and start again (same port)."""

    def __init__(self, host: str = "127.0.0.1", *extra: str, scheme: str = "redis") -> None:
        """``extra``: more redis-server arguments (a password, TLS files...); with
        ``scheme="rediss"`` the port given is the TLS one (the plain port is off)."""
        self.host = host
        self.port = free_ports(1)  # bound later (again after a kill): not an ephemeral one
        self.url = f"{scheme}://{host}:{self.port}/0"
        self.extra = extra
        self.tls = scheme == "rediss"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        port = (
            ["--port", "0", "--tls-port", str(self.port)]
            if self.tls
            else ["--port", str(self.port)]
        )
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *port, "--bind", self.host]
            + ["--save", "", "--appendonly", "no", "--protected-mode", "no", *self.extra],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                # Listening is enough: redis-server binds once it is ready.
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def refusing_writes(self, db: Any, user: str = "noset") -> str:
        """The URL of a new ACL user ``user`` that may do anything but SET (as a Redis
        read-only, out of memory or not allowing it refuses writes); ``db``: an admin
        client. ``allow_writes()`` lifts it."""
        await db.acl_setuser(
            user, enabled=True, passwords=["+pw"], keys=["*"], channels=["*"], commands=["+@all"]
        )
        await db.acl_setuser(user, enabled=True, commands=["-set"])
        return f"redis://{user}:pw@{self.host}:{self.port}/0"

    @staticmethod
    async def allow_writes(db: Any, user: str = "noset") -> None:
        await db.acl_setuser(user, enabled=True, commands=["+set"])

    @staticmethod
    async def connections_of(db: Any, user: str = "noset") -> int:
        return sum(1 for c in await db.client_list() if c["user"] == user)


class ServerProcess:
    """A `mafalda serve --cluster` process; ``url`` is its control URL."""

    def __init__(self, proc: subprocess.Popen[bytes], server_id: str, url: str) -> None:
        self.proc = proc
        self.id = server_id
        self.url = url

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def serve_args(*extra: str, token: str = TOKEN) -> list[str]:
    """The command line of `mafalda serve` on a free port, with ``extra`` arguments."""
    return [sys.executable, "-m", "mafalda.cli", "serve", "--port", "0", "--token", token, *extra]


def _url_of(line: bytes) -> str:
    text = line.decode(errors="replace")
    if "listening on " not in text:
        raise RuntimeError(f"mafalda serve did not start: {text!r}")
    return text.split("listening on ")[1].strip()


async def spawn_serve(
    command: list[str], timeout: float = 30.0
) -> tuple[asyncio.subprocess.Process, str]:
    """Start a `mafalda serve` command; its process and URL once it listens."""
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        return proc, _url_of(await asyncio.wait_for(proc.stdout.readline(), timeout))
    except BaseException:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        raise


async def reap(proc: asyncio.subprocess.Process) -> int:
    """Wait for ``proc`` to exit, then close its pipes: uvloop may see a pipe's end later
    than the exit, and a loop closed with that pipe still open fails (EBUSY)."""
    code = await proc.wait()
    proc._transport.close()  # type: ignore[attr-defined]
    return code


def _server_args(index: int, heartbeat: float, host: str | None, *mode: str) -> list[str]:
    """`mafalda serve` for server s<index> on 127.0.0.<index+1> (or ``host``), in ``mode``
    (``--cluster URL`` or ``--swarm SEED...``, and any extra options)."""
    return serve_args(
        "--host",
        host or f"127.0.0.{index + 1}",
        "--server-id",
        f"s{index}",
        "--heartbeat",
        str(heartbeat),
        "--drain-timeout",
        "10",
        *mode,
    )


def serve_command(
    redis_url: str, index: int, heartbeat: float, *extra: str, host: str | None = None
) -> list[str]:
    """`mafalda serve --cluster` for server s<index> on 127.0.0.<index+1> (or ``host``)."""
    return _server_args(index, heartbeat, host, "--cluster", redis_url, *extra)


def swarm_command(index: int, *seeds: str, heartbeat: float = 0.2) -> list[str]:
    """`mafalda serve --swarm` for server s<index> on 127.0.0.<index+1>, joining the
    swarm through ``seeds`` (none: it starts one)."""
    return _server_args(index, heartbeat, None, "--swarm", *seeds)


def start_servers(
    redis_url: str, indexes: list[int], heartbeat: float = 0.3, timeout: float = 30.0
) -> list[ServerProcess]:
    """Start media servers s<i> on 127.0.0.<i+1> at once; wait until each listens."""
    procs = [
        subprocess.Popen(
            serve_command(redis_url, i, heartbeat),
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        for i in indexes
    ]
    started: list[ServerProcess] = []
    try:
        for index, proc in zip(indexes, procs, strict=True):
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            url = _url_of(proc.stdout.readline() if ready else b"")
            started.append(ServerProcess(proc, f"s{index}", url))
    except BaseException:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        raise
    return started


class NetnsLab:
    """Separate network hosts on this machine: one network namespace per server, each
    with a veth pair whose outer end is on a bridge in the root namespace (which holds
    ``gateway``). Needs root and `ip`; ``create()`` raises OSError when the machine
    does not allow it. Names and the subnet derive from the pid, so concurrent runs
    do not collide."""

    def __init__(self, count: int) -> None:
        pid = os.getpid()
        self.tag = str(pid % 1_000_000)
        self.bridge = f"mfb{self.tag}"
        subnet = f"10.{100 + pid % 100}.{pid // 100 % 250}"
        self.gateway = f"{subnet}.1"
        self.namespaces = [f"mafalda-{self.tag}-{i}" for i in range(1, count + 1)]
        self.addresses = [f"{subnet}.{10 + i}" for i in range(1, count + 1)]
        self._created: list[list[str]] = []  # undo commands, run in reverse

    def _ip(self, *args: str) -> None:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise OSError(f"ip {' '.join(args)}: {result.stderr.strip()}")

    def create(self) -> None:
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._created.append(["link", "del", self.bridge])
            self._ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
            for i, (ns, address) in enumerate(
                zip(self.namespaces, self.addresses, strict=True), start=1
            ):
                outer, inner = f"mfv{self.tag}{i}", f"mfp{self.tag}{i}"
                self._ip("netns", "add", ns)
                self._created.append(["netns", "del", ns])
                self._ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                self._created.append(["link", "del", outer])
                self._ip("link", "set", outer, "master", self.bridge, "up")
                self._ip("link", "set", inner, "netns", ns)
                self._ip("-n", ns, "addr", "add", f"{address}/24", "dev", inner)
                self._ip("-n", ns, "link", "set", inner, "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.destroy()
            raise

    def destroy(self) -> None:
        while self._created:
            undo = self._created.pop()
            subprocess.run(["ip", *undo], capture_output=True, check=False)

    def exec_prefix(self, index: int) -> list[str]:
        """The command prefix that runs a program in server ``index``'s namespace (1-based)."""
        return ["ip", "netns", "exec", self.namespaces[index - 1]]


def tls_files(tmp_path: Any, *ips: str) -> tuple[str, str, str]:
    """A CA, and a certificate it signed for 127.0.0.1 and ``ips`` (openssl from Debian):
    (CA file, certificate file, key file)."""
    ca_key, ca, key, csr, cert = (
        str(tmp_path / name) for name in ("ca.key", "ca.pem", "key.pem", "req.csr", "cert.pem")
    )

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
        "-days", "1", "-subj", "/CN=test CA",
    )  # fmt: skip
    openssl(
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
        "-subj", "/CN=127.0.0.1",
    )  # fmt: skip
    san = tmp_path / "san.ext"
    names = ",".join(f"IP:{ip}" for ip in ("127.0.0.1", *ips))
    san.write_text(f"subjectAltName={names}\n")
    openssl(
        "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
        "-out", cert, "-days", "1", "-extfile", str(san),
    )  # fmt: skip
    return ca, cert, key
