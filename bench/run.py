"""Control-plane benchmark: mafalda.mediasoup against Node.js mediasoup 3.19.19.

Both sides drive the same mediasoup-worker binary through the same scenarios
(``bench/node/bench.mjs`` is the Node twin of this file):

1. ``request_rtt``: sequential ``transport.dump()`` round trips on a WebRtcTransport;
2. ``plain_create_close``: sequential PlainTransport create + close;
3. ``webrtc_concurrent``: 200 ``create_webrtc_transport`` gathered at once;
4. ``consume_concurrent``: 200 ``consume()`` gathered at once (one producer, 4 transports);
5. memory: RSS of the driving process and of the worker after the scenarios.

Each scenario runs in a fresh worker per side, once unmeasured (warm-up), then
``--runs`` times, the runs of the two sides alternating so that both meet the same
machine load; the figure is the median. Run: ``.venv/bin/python bench/run.py [--runs 5]``
(``--python-only`` skips Node; ``--only request_rtt,...`` picks scenarios; ``--loop
uvloop`` runs Python on uvloop instead of asyncio's own loop). The Node side
(``bench/node``) is installed with npm on first use.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from mafalda import mediasoup
from mafalda.cli import loop_runner
from mafalda.mediasoup.worker_binary import find_worker_bin

HERE = Path(__file__).resolve().parent
NODE_DIR = HERE / "node"

MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
]
LISTEN = {"protocol": "udp", "ip": "127.0.0.1"}
AUDIO_RTP_PARAMETERS: dict[str, Any] = {
    "codecs": [{"mimeType": "audio/opus", "payloadType": 101, "clockRate": 48000, "channels": 2}],
    "encodings": [{"ssrc": 11111111}],
}

RTT_COUNT = 5000
PLAIN_COUNT = 2000
CONCURRENT = 200
CONSUME_TRANSPORTS = 4

# name, unit, label for the table
SCENARIOS: list[tuple[str, str, str]] = [
    ("request_rtt", "req/s", f"sequential request round trips (dump) x{RTT_COUNT}"),
    ("plain_create_close", "ops/s", f"plain transport create+close (sequential) x{PLAIN_COUNT}"),
    ("webrtc_concurrent", "transports/s", f"{CONCURRENT} concurrent WebRTC transports"),
    ("consume_concurrent", "consumes/s", f"{CONCURRENT} concurrent consumes"),
]
MEMORY: list[tuple[str, str]] = [
    ("rss_mb", "RSS of the driving process (MB)"),
    ("worker_rss_mb", "RSS of the worker (MB)"),
]


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size of a process in MB, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def new_router() -> tuple[Any, Any]:
    worker = await mediasoup.create_worker(log_level="warn")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    return worker, router


async def close_worker(worker: Any) -> None:
    worker.close()
    await worker.wait_closed()


# -- scenarios: each takes a router and returns (ops, seconds) for one measured run -------


async def request_rtt(router: Any, state: dict[str, Any]) -> tuple[int, float]:
    transport = state.get("transport")
    if transport is None:
        transport = state["transport"] = await router.create_webrtc_transport(listen_infos=[LISTEN])
    start = time.perf_counter()
    for _ in range(RTT_COUNT):
        await transport.dump()
    return RTT_COUNT, time.perf_counter() - start


async def plain_create_close(router: Any, state: dict[str, Any]) -> tuple[int, float]:
    start = time.perf_counter()
    for _ in range(PLAIN_COUNT):
        transport = await router.create_plain_transport(listen_info=LISTEN)
        transport.close()
    await router.dump()  # every close request has been processed
    return PLAIN_COUNT, time.perf_counter() - start


async def webrtc_concurrent(router: Any, state: dict[str, Any]) -> tuple[int, float]:
    start = time.perf_counter()
    transports = await asyncio.gather(
        *(router.create_webrtc_transport(listen_infos=[LISTEN]) for _ in range(CONCURRENT))
    )
    elapsed = time.perf_counter() - start
    for transport in transports:
        transport.close()
    await router.dump()
    return CONCURRENT, elapsed


async def consume_concurrent(router: Any, state: dict[str, Any]) -> tuple[int, float]:
    if "producer" not in state:
        send = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
        state["producer"] = await send.produce(kind="audio", rtp_parameters=AUDIO_RTP_PARAMETERS)
        state["transports"] = [
            await router.create_plain_transport(listen_info=LISTEN)
            for _ in range(CONSUME_TRANSPORTS)
        ]
    producer = state["producer"]
    transports = state["transports"]
    caps = router.rtp_capabilities
    start = time.perf_counter()
    consumers = await asyncio.gather(
        *(
            transports[i % CONSUME_TRANSPORTS].consume(
                producer_id=producer.id, rtp_capabilities=caps
            )
            for i in range(CONCURRENT)
        )
    )
    elapsed = time.perf_counter() - start
    for consumer in consumers:
        consumer.close()
    await router.dump()
    return CONCURRENT, elapsed


SCENARIO_FUNCS: dict[str, Callable[[Any, dict[str, Any]], Awaitable[tuple[int, float]]]] = {
    "request_rtt": request_rtt,
    "plain_create_close": plain_create_close,
    "webrtc_concurrent": webrtc_concurrent,
    "consume_concurrent": consume_concurrent,
}


async def measure_rate(name: str, router: Any) -> float:
    """One warm-up run of scenario ``name`` on ``router``, then one measured: its rate."""
    scenario = SCENARIO_FUNCS[name]
    state: dict[str, Any] = {}
    await scenario(router, state)
    ops, seconds = await scenario(router, state)
    return float(ops / seconds)


def load_path(name: str, path: Path) -> Any:
    """Import the Python file at ``path`` as module ``name`` (e.g. tests/processes.py,
    which the other benchmarks use to start servers)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class NodeSide:
    """``bench/node/bench.mjs --serve``: the Node twin, one command per line."""

    def __init__(self, worker_bin: str) -> None:
        node = ensure_node(worker_bin)
        env = {**os.environ, "MEDIASOUP_WORKER_BIN": worker_bin}
        self._proc = subprocess.Popen(
            [node, str(NODE_DIR / "bench.mjs"), "--serve"],
            cwd=NODE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def command(self, cmd: str, **kwargs: Any) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps({"cmd": cmd, **kwargs}) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the Node side exited (code {self._proc.wait()})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
        self._proc.stdin.close()
        self._proc.wait(10)


def _summary(rates: dict[str, list[float]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, values in rates.items():
        result[name] = round(statistics.median(values), 1)
        result[name + "_runs"] = [round(r, 1) for r in values]
    return result


async def run(
    runs: int, only: list[str] | None, node: NodeSide | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every scenario in a fresh worker per side; the measured runs of the two sides
    alternate (Python first on even runs, Node first on odd ones) so that both meet
    the same machine load."""
    py_rates: dict[str, list[float]] = {}
    node_rates: dict[str, list[float]] = {}
    py: dict[str, Any] = {}
    nd: dict[str, Any] = {}
    for name, _, _ in SCENARIOS:
        if only and name not in only:
            continue
        fn = SCENARIO_FUNCS[name]
        worker, router = await new_router()
        state: dict[str, Any] = {}
        try:
            await fn(router, state)  # warm-up
            if node is not None:
                node.command("start", scenario=name)
            py_rates[name], node_rates[name] = [], []
            for i in range(runs):
                for side in ("py", "node") if i % 2 == 0 else ("node", "py"):
                    if side == "node" and node is not None:
                        reply = node.command("run")
                        node_rates[name].append(reply["ops"] / reply["seconds"])
                    elif side == "py":
                        gc.collect()
                        ops, seconds = await fn(router, state)
                        py_rates[name].append(ops / seconds)
            py["worker_rss_mb"] = round(rss_mb(worker.pid), 1)
            if node is not None:
                nd.update(node.command("stop"))
        finally:
            await close_worker(worker)
    gc.collect()
    py.update(_summary(py_rates))
    py["rss_mb"] = round(rss_mb(), 1)
    if node is not None:
        nd.update(_summary(node_rates))
        nd.update(node.command("memory"))
    return py, nd


# -- Node side -------------------------------------------------------------------------


def ensure_node(worker_bin: str) -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        raise SystemExit("node and npm are needed for the Node side (apt-get install nodejs npm)")
    if not (NODE_DIR / "node_modules" / "mediasoup" / "package.json").exists():
        print("installing Node mediasoup 3.19.19 in bench/node ...", file=sys.stderr)
        # The worker binary path makes mediasoup's postinstall skip the worker build.
        env = {**os.environ, "MEDIASOUP_WORKER_BIN": worker_bin}
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            env=env,
            check=True,
        )
    return node


def table(py: dict[str, Any], node: dict[str, Any]) -> str:
    lines = [
        "| scenario | Python | Node | Python/Node |",
        "|---|---:|---:|---:|",
    ]
    for name, unit, label in SCENARIOS:
        if name not in py or name not in node:
            continue
        p, n = py[name], node[name]
        lines.append(f"| {label} ({unit}) | {p:,.0f} | {n:,.0f} | {p / n:.2f} |")
    for name, label in MEMORY:
        if name in py and name in node:
            p, n = py[name], node[name]
            lines.append(f"| {label} | {p:.1f} | {n:.1f} | {p / n:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="measured runs per scenario")
    parser.add_argument("--python-only", action="store_true", help="skip the Node side")
    parser.add_argument(
        "--only", help="comma-separated scenarios: " + ",".join(n for n, _, _ in SCENARIOS)
    )
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="Python's event loop"
    )
    args = parser.parse_args()
    only = args.only.split(",") if args.only else None
    worker_bin = find_worker_bin()

    node = None if args.python_only else NodeSide(worker_bin)
    try:
        py, nd = loop_runner(args.loop)(run(args.runs, only, node))
    finally:
        if node is not None:
            node.close()
    print(json.dumps({"python": py}, indent=2))
    if node is None:
        return
    print(json.dumps({"node": nd}, indent=2))
    print()
    print(
        f"median of {args.runs} runs; Python {platform.python_version()} ({args.loop}), "
        f"Node {nd.get('node_version', '?')}, mediasoup-worker {mediasoup.version}, "
        f"{os.cpu_count()} CPUs ({platform.machine()})"
    )
    print()
    print(table(py, nd))


if __name__ == "__main__":
    main()
