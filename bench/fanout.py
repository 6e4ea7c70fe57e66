"""Fan-out benchmark: how many consumers one producer can feed without loss.

Compares (a) one plain mediasoup Router on one worker with (b) one MafaldaRouter
spanning two workers (issue #4, "Benchmark"). Run::

    .venv/bin/python bench/fanout.py            # full run, 2 to 4 minutes
    .venv/bin/python bench/fanout.py --quick    # smoke run, about 1 minute
    .venv/bin/python bench/fanout.py --json out.json

Method (details and results in README.md, "Fan-out benchmark"):

- The stream: one VP8 producer on a PlainTransport with comedia, fed by a separate
  sender PROCESS (this file with ``--sender``) pacing frames on an absolute clock:
  25 fps x 20 packets x 1000-byte payloads = 500 packets/s, about 4 Mbit/s (a 720p
  camera). Every 25th frame is a key frame, every packet carries a VP8 payload
  descriptor with a picture id, so the consumers do their full per-packet work.
- The consumers: N PlainTransports (rtcp_mux off, no congestion control), each sending
  to its own UDP sink socket that is never read while measuring: once its small receive
  buffer is full the kernel drops what arrives and counts it (``drops`` in
  /proc/net/udp), so the sinks cost the measuring side nothing in user space and the
  packets are still counted at the sockets. Their RTCP goes to one more sink.
- (a) one mediasoup Router on one worker; (b) one MafaldaRouter on a 2-worker pool
  whose 'concentrate' policy, with max_units_per_worker = N/2 + 1, splits the consumers
  evenly: half consume on the producer's worker, half through a pipe on the other.
- A trial: build the scenario for N, stream 1 s (consumers sync on a key frame), pause,
  read the counters (every consumer's packetCount, the producer's, the sinks'), stream
  exactly ``rate x window`` packets, pause until the pipeline is empty, read again: no
  timing fuzz, each consumer should have sent exactly the packets the sender sent.
- Loss of a consumer = 1 - (its packets sent in the window / packets the sender sent).
  N is served when the WORST consumer loses at most 0.5%. The largest served N of each
  setup is searched by doubling, then bisection to 4%, the trials of (a) and (b)
  alternating so that both meet the same machine. Each trial first waits for the
  machine to be quiet; a failed trial disturbed by other processes is run again.
- CPU: each worker's ru_utime + ru_stime delta (get_resource_usage) over the window,
  per RTP packet it sent (to consumers, plus the pipe's copy on the producer's worker);
  the harness's and the sender's own CPU time over the same window, and the share of
  the machine used by anything else (/proc/stat), are printed next to it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import socket
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mafalda import Mafalda, mediasoup

HERE = Path(__file__).resolve()

VP8_PT = 96
SSRC = 0x2BADCAFE
LISTEN: Any = {"protocol": "udp", "ip": "127.0.0.1"}
MEDIA_CODECS: list[Any] = [{"kind": "video", "mimeType": "video/VP8", "clockRate": 90000}]
PRODUCER_RTP_PARAMETERS: Any = {
    "codecs": [{"mimeType": "video/VP8", "payloadType": VP8_PT, "clockRate": 90000}],
    "encodings": [{"ssrc": SSRC}],
}
#: Congestion-control feedback the consumers do NOT negotiate: with it, each consumer's
#: transport runs a bandwidth estimator that sends probation padding to our sinks, which
#: never answer (a PlainTransport receiver such as ffmpeg does not negotiate it either).
NO_BWE_FEEDBACK = {"transport-cc", "goog-remb"}
NO_BWE_EXTENSION = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
#: Served means the worst consumer lost at most this fraction of the packets sent.
LOSS_THRESHOLD = 0.005
#: Receive buffer asked for the sinks: tiny, a few packets.
SINK_RCVBUF = 4096
#: A failed trial is repeated once when other processes used more than this share of
#: the machine while it streamed.
DISTURBED = 0.05
#: Before each trial, wait (a while) until other processes use less than this share.
QUIET = 0.08
#: Consumers created concurrently while building a scenario.
SETUP_BATCH = 32


@dataclass(frozen=True, slots=True)
class Stream:
    """What the sender sends: frames of equal-sized packets at a fixed rate."""

    fps: int = 25
    packets_per_frame: int = 20
    payload_bytes: int = 1000
    keyframe_every: int = 25

    @property
    def rate(self) -> int:
        return self.fps * self.packets_per_frame


# -- the sender process ---------------------------------------------------------------------


def _vp8_packet(
    seq: int, ts: int, picture_id: int, first: bool, last: bool, key: bool, size: int
) -> bytes:
    header = struct.pack("!BBHII", 0x80, VP8_PT | (0x80 if last else 0), seq & 0xFFFF, ts, SSRC)
    # VP8 payload descriptor: X=1, S (start of partition 0), I=1 with a 15-bit picture id.
    descriptor = bytes(
        [0x90 if first else 0x80, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF]
    )
    # First byte of the VP8 payload header: P bit clear on a key frame.
    vp8 = bytes([0x00 if key and first else 0x01])
    return header + descriptor + vp8 + bytes(size - len(descriptor) - 1)


def sender_main(stream: Stream) -> None:
    """The sender process: reads JSON commands on stdin, answers one JSON line each.

    ``{"cmd": "target", "port": p}``, ``{"cmd": "send", "frames": f}`` (paced on an
    absolute clock; the answer has packets sent, CPU time used and the worst lag behind
    the schedule), ``{"cmd": "quit"}``.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    target: tuple[str, int] | None = None
    seq = 0
    frame_no = 0
    for line in sys.stdin:
        command = json.loads(line)
        if command["cmd"] == "quit":
            break
        if command["cmd"] == "target":
            target = ("127.0.0.1", int(command["port"]))
            seq = frame_no = 0
            reply: dict[str, Any] = {"ok": True}
        else:
            assert target is not None
            cpu0 = time.process_time_ns()
            start = time.monotonic()
            sent = 0
            worst_lag = 0.0
            for i in range(int(command["frames"])):
                due = start + i / stream.fps
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    worst_lag = max(worst_lag, -delay)
                ts = (frame_no * 90000 // stream.fps) & 0xFFFFFFFF
                key = frame_no % stream.keyframe_every == 0
                n = stream.packets_per_frame
                for k in range(n):
                    packet = _vp8_packet(
                        seq, ts, frame_no & 0x7FFF, k == 0, k == n - 1, key, stream.payload_bytes
                    )
                    sock.sendto(packet, target)
                    seq += 1
                    sent += 1
                frame_no += 1
            reply = {
                "sent": sent,
                "cpu_s": (time.process_time_ns() - cpu0) / 1e9,
                "wall_s": time.monotonic() - start,
                "worst_lag_ms": round(worst_lag * 1000, 3),
            }
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


class Sender:
    """Drives the sender process from the harness."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process

    @classmethod
    async def start(cls, stream: Stream) -> Sender:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE),
            "--sender",
            json.dumps(asdict(stream)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid

    async def command(self, **command: Any) -> dict[str, Any]:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write((json.dumps(command) + "\n").encode())
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError("the sender process exited")
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        stdin = self._process.stdin
        if self._process.returncode is None and stdin is not None:
            with contextlib.suppress(OSError):  # it already exited
                stdin.write(b'{"cmd": "quit"}\n')
                await stdin.drain()
                stdin.close()
        await self._process.wait()


# -- sinks, CPU counters ---------------------------------------------------------------------


class Sinks:
    """One UDP socket per consumer, never read while measuring: the kernel counts.

    Their receive buffer is tiny (a few packets); once it is full, each packet that
    arrives is dropped and counted in the socket's ``drops`` (/proc/net/udp), so the
    harness spends nothing per packet. One socket per consumer, as each viewer is its own
    destination: shared sinks would have both workers contend on the same sockets'
    counters. Their RTCP goes to one more socket.
    """

    def __init__(self, count: int) -> None:
        self.rtp = [self._socket() for _ in range(count)]
        self.rtcp = self._socket()
        self._inodes = {os.fstat(s.fileno()).st_ino for s in self.rtp}

    @staticmethod
    def _socket() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SINK_RCVBUF)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        return sock

    def port(self, index: int) -> int:
        return int(self.rtp[index % len(self.rtp)].getsockname()[1])

    @property
    def rtcp_port(self) -> int:
        return int(self.rtcp.getsockname()[1])

    def drain(self) -> int:
        """Read what is queued (a few packets per socket); how many RTP packets that was."""
        count = 0
        for sock in (*self.rtp, self.rtcp):
            while True:
                try:
                    sock.recv(2048)
                except BlockingIOError:
                    break
                if sock is not self.rtcp:
                    count += 1
        return count

    def drops(self) -> int:
        """Sum of the kernel's drop counters of the RTP sinks (/proc/net/udp)."""
        total = 0
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if int(fields[9]) in self._inodes:
                    total += int(fields[-1])
        return total

    def close(self) -> None:
        for sock in (*self.rtp, self.rtcp):
            sock.close()


def machine_idle_steal_s() -> tuple[float, float]:
    """Idle (with iowait) and steal CPU seconds of the whole machine so far (/proc/stat).

    With a tickless kernel idle time is measured at each idle entry and exit, whereas
    user and system time are sampled at the tick (bursty work between ticks is missed):
    busy time is computed as wall time x CPUs - idle. Steal is time the hypervisor gave
    our virtual CPUs to someone else.
    """
    with open("/proc/stat") as f:
        values = f.readline().split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(values[4]) + int(values[5])) / tick, int(values[8]) / tick


# -- scenarios ------------------------------------------------------------------------------


@dataclass(slots=True)
class Scenario:
    """One producer and N consumers on a router, however many workers it spans."""

    name: str
    workers: list[mediasoup.Worker]
    producer: mediasoup.Producer
    producer_port: int
    consumers: list[mediasoup.Consumer]
    #: pid of the worker hosting each consumer.
    consumer_pids: list[int]
    #: pid of the worker hosting the producer.
    producer_pid: int
    close: Callable[[], Awaitable[None]]


def consumer_rtp_capabilities(router_caps: Any) -> Any:
    """The router's capabilities without congestion control (see NO_BWE_FEEDBACK)."""
    return {
        "codecs": [
            {
                **codec,
                "rtcpFeedback": [
                    fb for fb in codec.get("rtcpFeedback", []) if fb["type"] not in NO_BWE_FEEDBACK
                ],
            }
            for codec in router_caps["codecs"]
        ],
        "headerExtensions": [
            ext for ext in router_caps["headerExtensions"] if ext["uri"] != NO_BWE_EXTENSION
        ],
    }


async def _populate(
    name: str,
    router: Any,
    workers: Callable[[], list[mediasoup.Worker]],
    worker_of: Callable[[Any], int],
    n: int,
    sinks: Sinks,
    close: Callable[[], Awaitable[None]],
) -> Scenario:
    send_transport = await router.create_plain_transport(listen_info=LISTEN, comedia=True)
    producer = await send_transport.produce(kind="video", rtp_parameters=PRODUCER_RTP_PARAMETERS)
    caps = consumer_rtp_capabilities(router.rtp_capabilities)

    async def one(i: int) -> tuple[mediasoup.Consumer, int]:
        transport = await router.create_plain_transport(listen_info=LISTEN, rtcp_mux=False)
        await transport.connect(ip="127.0.0.1", port=sinks.port(i), rtcp_port=sinks.rtcp_port)
        consumer = await transport.consume(producer_id=producer.id, rtp_capabilities=caps)
        return consumer, worker_of(transport)

    consumers: list[mediasoup.Consumer] = []
    pids: list[int] = []
    for start in range(0, n, SETUP_BATCH):
        batch = range(start, min(n, start + SETUP_BATCH))
        for consumer, pid in await asyncio.gather(*(one(i) for i in batch)):
            consumers.append(consumer)
            pids.append(pid)
    return Scenario(
        name=name,
        workers=workers(),
        producer=producer,
        producer_port=send_transport.tuple["localPort"],
        consumers=consumers,
        consumer_pids=pids,
        producer_pid=worker_of(send_transport),
        close=close,
    )


async def plain_scenario(n: int, sinks: Sinks) -> Scenario:
    """(a) one mediasoup Router on one worker."""
    worker = await mediasoup.create_worker(log_level="warn")

    async def close() -> None:
        worker.close()
        await worker.wait_closed()

    try:
        router = await worker.create_router(media_codecs=MEDIA_CODECS)
        return await _populate(
            "plain", router, lambda: [worker], lambda _: worker.pid, n, sinks, close
        )
    except BaseException:
        await close()
        raise


async def mafalda_scenario(n: int, sinks: Sinks) -> Scenario:
    """(b) one MafaldaRouter on two workers, consumers split evenly between them.

    The default 'concentrate' policy fills the producer's worker up to
    max_units_per_worker load units (its producer transport counts one), then spills to
    the second worker: with floor(n/2) + 1 units per worker the consumers split
    floor(n/2) / ceil(n/2). cpu_watermark=1.0 so that CPU does not steer placement
    (nothing streams while the scenario is built).
    """
    mafalda = await Mafalda.start(
        num_workers=2,
        min_workers=2,
        policy="concentrate",
        max_units_per_worker=n // 2 + 1,
        cpu_watermark=1.0,
        worker_settings={"log_level": "warn"},
    )
    try:
        router = await mafalda.create_router(media_codecs=MEDIA_CODECS)
        return await _populate(
            "mafalda",
            router,
            lambda: mafalda.workers,
            lambda transport: router.worker_of(transport).pid,
            n,
            sinks,
            mafalda.aclose,
        )
    except BaseException:
        await mafalda.aclose()
        raise


SCENARIOS: dict[str, Callable[[int, Sinks], Awaitable[Scenario]]] = {
    "plain": plain_scenario,
    "mafalda": mafalda_scenario,
}


# -- one trial -------------------------------------------------------------------------------


@dataclass(slots=True)
class Counters:
    consumer_packets: list[int]
    producer_packets: int
    sink_packets: int


@dataclass(slots=True)
class CpuTimes:
    wall: float
    workers: dict[int, float]
    harness: float
    machine_idle: float
    machine_steal: float


async def _cpu_times(scenario: Scenario) -> CpuTimes:
    usages = await asyncio.gather(*(w.get_resource_usage() for w in scenario.workers))
    idle, steal = machine_idle_steal_s()
    return CpuTimes(
        wall=time.monotonic(),
        workers={
            w.pid: (u["ru_utime"] + u["ru_stime"]) / 1000.0  # milliseconds
            for w, u in zip(scenario.workers, usages, strict=True)
        },
        harness=time.process_time(),
        machine_idle=idle,
        machine_steal=steal,
    )


async def _settle(
    scenario: Scenario, sinks: Sinks, quiet: float = 0.2, limit: float = 10.0
) -> None:
    """Wait until no packet moves: the consumers' counters and the sinks' drop counters
    unchanged over ``quiet`` seconds (at most ``limit``), so a window's counts are final
    however loaded the machine is."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    last: tuple[list[int], int] | None = None
    while loop.time() < deadline:
        stats = await asyncio.gather(*(c.get_stats() for c in scenario.consumers))
        now = (
            [
                int(next(s for s in stat if s["type"] == "outbound-rtp")["packetCount"])
                for stat in stats
            ],
            sinks.drops(),
        )
        if now == last:
            return
        last = now
        await asyncio.sleep(quiet)


async def _counters(scenario: Scenario, sinks: Sinks, *, first: bool) -> Counters:
    stats = await asyncio.gather(*(c.get_stats() for c in scenario.consumers))
    consumer_packets = [
        int(next(s for s in stat if s["type"] == "outbound-rtp")["packetCount"]) for stat in stats
    ]
    producer_stats = await scenario.producer.get_stats()
    producer_packets = int(producer_stats[0]["packetCount"]) if producer_stats else 0
    if first:  # empty the queues, count from the drop counters on
        sinks.drain()
        sink_packets = sinks.drops()
    else:
        sink_packets = sinks.drops() + sinks.drain()
    return Counters(consumer_packets, producer_packets, sink_packets)


@dataclass(slots=True)
class Trial:
    """One measured window for one setup and N consumers (see the module docstring)."""

    setup: str
    consumers: int
    #: pid of the worker hosting the producer.
    producer_worker: str
    window_s: float
    sent: int
    producer_received: int
    #: The worst consumer's loss, the mean over consumers, the loss counted at the sinks.
    max_loss: float
    mean_loss: float
    sink_loss: float
    served: bool
    #: Mean loss of the consumers of each worker (by pid).
    worker_loss: dict[str, float]
    #: Per worker pid: consumers; CPU seconds; CPU share while streaming; RTP packets
    #: sent (consumers, plus the pipe's copy on the producer's worker); CPU per packet.
    consumers_per_worker: dict[str, int]
    worker_cpu_s: dict[str, float]
    worker_cpu_fraction: dict[str, float]
    worker_packets_sent: dict[str, int]
    worker_us_per_packet: dict[str, float]
    #: All workers' CPU per packet delivered to a consumer (pipe overhead included).
    us_per_delivered_packet: float
    #: The measuring side over the same window, and the whole machine while streaming.
    harness_cpu_s: float
    sender_cpu_s: float
    sender_worst_lag_ms: float
    machine_busy_fraction: float
    other_cpu_fraction: float
    steal_fraction: float
    setup_s: float
    #: Share of the machine busy (other processes: we are idle then) just before.
    machine_busy_before: float = 0.0


async def wait_until_quiet(max_wait: float, threshold: float = QUIET) -> float:
    """Wait until the machine is quiet (busy share over half a second below
    ``threshold``), at most ``max_wait`` seconds; the last busy share measured."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        idle0, t0 = machine_idle_steal_s()[0], time.monotonic()
        await asyncio.sleep(0.5)
        total = (time.monotonic() - t0) * (os.cpu_count() or 1)
        busy = max(0.0, 1.0 - (machine_idle_steal_s()[0] - idle0) / total)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        if not said:
            print(f"  (machine {busy:.0%} busy with other work: waiting)", flush=True)
            said = True


async def run_trial(setup: str, n: int, *, stream: Stream, window: float, sender: Sender) -> Trial:
    """Build the scenario with n consumers, measure one window, tear it all down."""
    sinks = Sinks(n)
    try:
        t0 = time.monotonic()
        scenario = await SCENARIOS[setup](n, sinks)
        setup_s = time.monotonic() - t0
        try:
            await sender.command(cmd="target", port=scenario.producer_port)
            # Warm-up: consumers sync on the first key frame; then the pipeline empties.
            await sender.command(cmd="send", frames=stream.fps)
            await _settle(scenario, sinks)
            # Counters are read outside the CPU window, so that the stats requests are
            # not billed to forwarding.
            counters0 = await _counters(scenario, sinks, first=True)
            cpu0 = await _cpu_times(scenario)
            result = await sender.command(cmd="send", frames=max(1, round(window * stream.fps)))
            cpu_streaming = await _cpu_times(scenario)
            await asyncio.sleep(0.5)  # every queue empties: the counts are final
            cpu1 = await _cpu_times(scenario)
            await _settle(scenario, sinks)  # a loaded machine may need longer
            counters1 = await _counters(scenario, sinks, first=False)
        finally:
            await scenario.close()
    finally:
        sinks.close()
    return _trial(scenario, counters0, counters1, cpu0, cpu_streaming, cpu1, result, setup_s)


def _trial(
    scenario: Scenario,
    counters0: Counters,
    counters1: Counters,
    cpu0: CpuTimes,
    cpu_streaming: CpuTimes,
    cpu1: CpuTimes,
    result: dict[str, Any],
    setup_s: float,
) -> Trial:
    sent = int(result["sent"])
    n = len(scenario.consumers)
    deltas = [
        b - a for a, b in zip(counters0.consumer_packets, counters1.consumer_packets, strict=True)
    ]
    losses = [1.0 - d / sent for d in deltas]
    order = sorted(cpu0.workers, key=lambda pid: pid != scenario.producer_pid)
    cpu = {pid: cpu1.workers[pid] - cpu0.workers[pid] for pid in order}
    streaming = {pid: cpu_streaming.workers[pid] - cpu0.workers[pid] for pid in order}
    streaming_wall = cpu_streaming.wall - cpu0.wall
    consumers: dict[int, int] = {pid: 0 for pid in cpu}
    packets: dict[int, int] = {pid: 0 for pid in cpu}
    worker_loss: dict[int, float] = {pid: 0.0 for pid in cpu}
    for pid, d in zip(scenario.consumer_pids, deltas, strict=True):
        consumers[pid] += 1
        packets[pid] += d
    for pid, count in consumers.items():
        if count:
            worker_loss[pid] = 1.0 - packets[pid] / (sent * count)
    producer_received = counters1.producer_packets - counters0.producer_packets
    # The producer's worker also sends one pipe copy of each packet to the other worker.
    for pid in cpu:
        if pid != scenario.producer_pid and consumers[pid]:
            packets[scenario.producer_pid] += producer_received
    delivered = sum(deltas)
    sender_cpu = float(result["cpu_s"])
    total = streaming_wall * (os.cpu_count() or 1)
    busy = total - (cpu_streaming.machine_idle - cpu0.machine_idle)
    harness_streaming = cpu_streaming.harness - cpu0.harness
    other = busy - sum(streaming.values()) - harness_streaming - sender_cpu
    max_loss = max(losses) if losses else 0.0
    return Trial(
        setup=scenario.name,
        consumers=n,
        producer_worker=str(scenario.producer_pid),
        window_s=round(float(result["wall_s"]), 3),
        sent=sent,
        producer_received=producer_received,
        max_loss=round(max_loss, 5),
        mean_loss=round(sum(losses) / n, 5) if n else 0.0,
        sink_loss=(
            round(1.0 - (counters1.sink_packets - counters0.sink_packets) / (sent * n), 5)
            if n
            else 0.0
        ),
        served=max_loss <= LOSS_THRESHOLD,
        worker_loss={str(p): round(v, 5) for p, v in worker_loss.items()},
        consumers_per_worker={str(p): c for p, c in consumers.items()},
        worker_cpu_s={str(p): round(c, 3) for p, c in cpu.items()},
        worker_cpu_fraction={str(p): round(c / streaming_wall, 3) for p, c in streaming.items()},
        worker_packets_sent={str(p): c for p, c in packets.items()},
        worker_us_per_packet={
            str(p): round(cpu[p] / packets[p] * 1e6, 2) if packets[p] else 0.0 for p in cpu
        },
        us_per_delivered_packet=(
            round(sum(cpu.values()) / delivered * 1e6, 2) if delivered else 0.0
        ),
        harness_cpu_s=round(cpu1.harness - cpu0.harness, 3),
        sender_cpu_s=round(sender_cpu, 3),
        sender_worst_lag_ms=float(result["worst_lag_ms"]),
        machine_busy_fraction=round(busy / total, 3) if total else 0.0,
        other_cpu_fraction=round(other / total, 3) if total else 0.0,
        steal_fraction=(
            round((cpu_streaming.machine_steal - cpu0.machine_steal) / total, 3) if total else 0.0
        ),
        setup_s=round(setup_s, 2),
    )


# -- capacity search -----------------------------------------------------------------------


@dataclass(slots=True)
class Search:
    """Largest N served: grow from ``start`` by ``growth`` until a trial fails, then
    bisect until the bracket is narrower than ``resolution`` (a fraction of N)."""

    setup: str
    start: int
    growth: float
    resolution: float
    good: int = 0
    bad: int = 0  # 0: no failure yet
    trials: list[Trial] = field(default_factory=list)

    def next_n(self) -> int | None:
        """The N to try next, or None when the search is over."""
        if not self.bad:
            return max(self.good + 1, round(self.good * self.growth)) if self.good else self.start
        if self.bad - self.good <= max(1, round(self.good * self.resolution)) or self.bad <= 1:
            return None
        return (self.good + self.bad) // 2

    def record(self, trial: Trial) -> None:
        """The outcome of the trial at ``next_n()`` (every attempt is in ``trials``)."""
        if trial.served:
            self.good = max(self.good, trial.consumers)
        else:
            self.bad = min(self.bad or trial.consumers, trial.consumers)


async def find_capacities(
    searches: list[Search],
    *,
    stream: Stream,
    window: float,
    sender: Sender,
    deadline: float,
    quiet_wait: float,
    log: Callable[[Trial], None],
) -> None:
    """Run the searches trial by trial in turn, so that all of them meet the same
    machine (its speed drifts: it is shared and virtual), until done or ``deadline``.

    Each trial waits up to ``quiet_wait`` s for a quiet machine; a failed trial during
    which other processes used more than DISTURBED of the machine is run once more.
    """
    while time.monotonic() < deadline:
        pending = [(s, n) for s in searches if (n := s.next_n()) is not None]
        if not pending:
            return
        for search, n in pending:
            for attempt in range(2):
                busy = await wait_until_quiet(quiet_wait * (1 + attempt))
                trial = await run_trial(
                    search.setup, n, stream=stream, window=window, sender=sender
                )
                trial.machine_busy_before = round(busy, 3)
                search.trials.append(trial)
                log(trial)
                if trial.served or trial.other_cpu_fraction <= DISTURBED or attempt:
                    break
                print(f"  (other processes used {trial.other_cpu_fraction:.0%}: once more)")
            search.record(trial)
            if time.monotonic() >= deadline:
                print("  (time budget spent: stopping the search)", flush=True)
                return


def _log(trial: Trial) -> None:
    workers = " | ".join(
        f"{'P' if pid == trial.producer_worker else 'w'} {trial.consumers_per_worker[pid]:4} "
        f"cons {trial.worker_cpu_fraction[pid]:4.0%} cpu {trial.worker_us_per_packet[pid]:4.2f}us "
        f"loss {trial.worker_loss[pid]:6.2%}"
        for pid in trial.consumers_per_worker
    )
    print(
        f"  {trial.setup:7} N={trial.consumers:4}: {workers} | sink loss {trial.sink_loss:6.2%} "
        f"| harness {trial.harness_cpu_s:.2f}s sender {trial.sender_cpu_s:.2f}s "
        f"| other {trial.other_cpu_fraction:.0%} steal {trial.steal_fraction:.0%} "
        f"| {'served' if trial.served else 'LOSS'}",
        flush=True,
    )


@contextlib.asynccontextmanager
async def running_sender(stream: Stream) -> AsyncIterator[Sender]:
    """The sender process, for as long as the block runs."""
    sender = await Sender.start(stream)
    try:
        yield sender
    finally:
        await sender.close()


def _served_at(trials: list[Trial], n: int) -> Trial | None:
    return next((t for t in reversed(trials) if t.consumers == n and t.served), None)


def _first_failing(trials: list[Trial], n: int) -> int | None:
    above = [t.consumers for t in trials if not t.served and t.consumers > n]  # retried too
    return min(above) if above else None


async def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (about 1 minute)")
    parser.add_argument("--window", type=float, help="seconds measured per trial (default 4)")
    parser.add_argument("--start", type=int, help="first N tried for the plain router")
    parser.add_argument("--json", type=Path, help="also write the full JSON result here")
    args = parser.parse_args(argv)
    stream = Stream()
    quick = bool(args.quick)
    window = args.window or (1.5 if quick else 4.0)
    start = args.start or (64 if quick else 120)
    resolution = 0.2 if quick else 0.04
    budget = 50.0 if quick else 250.0  # seconds for both searches
    load = os.getloadavg()
    print(
        f"fan-out: VP8 {stream.fps} fps x {stream.packets_per_frame} packets x "
        f"{stream.payload_bytes} B = {stream.rate} packets/s; window {window} s; "
        f"served = worst consumer loses <= {LOSS_THRESHOLD:.1%}; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    began = time.monotonic()
    busy = await wait_until_quiet(5.0 if quick else 20.0)
    if busy >= QUIET:
        print(f"warning: other work keeps {busy:.0%} of the machine busy", flush=True)
    # Two workers should serve about twice as many: (b)'s search starts at twice (a)'s.
    searches = [
        Search("plain", start=start, growth=2.0, resolution=resolution),
        Search("mafalda", start=2 * start, growth=2.0, resolution=resolution),
    ]
    async with running_sender(stream) as sender:
        await find_capacities(
            searches,
            stream=stream,
            window=window,
            sender=sender,
            deadline=began + budget,
            quiet_wait=5.0 if quick else 20.0,
            log=_log,
        )
    capacity = {s.setup: s.good for s in searches}
    trials = {s.setup: s.trials for s in searches}
    a, b = capacity["plain"], capacity["mafalda"]
    summary: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_start": [round(x, 2) for x in load],
            "busy_at_start": round(busy, 3),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "stream": {**asdict(stream), "packets_per_s": stream.rate, "codec": "VP8"},
        "window_s": window,
        "loss_threshold": LOSS_THRESHOLD,
        "capacity": {"plain": a, "mafalda": b, "ratio": round(b / a, 2) if a else None},
        "first_failing": {k: _first_failing(v, capacity[k]) for k, v in trials.items()},
        "at_capacity": {
            k: (asdict(t) if (t := _served_at(v, capacity[k])) else None) for k, v in trials.items()
        },
        "duration_s": round(time.monotonic() - began, 1),
    }
    _table(summary)
    print(json.dumps(summary))
    if args.json:
        full = {**summary, "trials": {k: [asdict(t) for t in v] for k, v in trials.items()}}
        args.json.write_text(json.dumps(full, indent=2) + "\n")
    return summary


def _table(summary: dict[str, Any]) -> None:
    header = (
        "setup",
        "max N served",
        "first N failing",
        "RTP out/s",
        "worker CPU (1 core = 100%)",
        "worker us CPU/packet",
        "workers / harness / sender CPU s",
    )
    rows = [header]
    for setup, label in (
        ("plain", "(a) mediasoup Router, 1 worker"),
        ("mafalda", "(b) MafaldaRouter, 2 workers"),
    ):
        n = summary["capacity"][setup]
        failing = summary["first_failing"][setup]
        t = summary["at_capacity"][setup]
        if t is None:
            rows.append((label, str(n), str(failing or "-"), "-", "-", "-", "-"))
            continue
        rows.append(
            (
                label,
                str(n),
                str(failing or "-"),
                f"{n * summary['stream']['packets_per_s']:,}",
                " + ".join(f"{v:.0%}" for v in t["worker_cpu_fraction"].values()),
                " / ".join(f"{v:.2f}" for v in t["worker_us_per_packet"].values()),
                f"{sum(t['worker_cpu_s'].values()):.2f} / {t['harness_cpu_s']:.2f} / "
                f"{t['sender_cpu_s']:.2f}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print()
    for r in [rows[0], tuple("-" * w for w in widths), *rows[1:]]:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    ratio = summary["capacity"]["ratio"]
    print(f"\nratio (b)/(a): {ratio if ratio is not None else '-'}x (goal: 1.7x or more)\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--sender":
        sender_main(Stream(**json.loads(sys.argv[2])))
    else:
        asyncio.run(main())
