"""RTP through clusters in tests: a UDP sink counting RTP packets and an opus-like
sender into a comedia PlainTransport (mafalda.horizontal and mafalda.swarm tests)."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from tests.conftest import opus_rtp_parameters

OPUS_PT = 100
MEDIA_CODECS: list[Any] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2}
]


class Counter(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.rtp = 0

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and not 192 <= data[1] <= 223:  # RTP, not RTCP
            self.rtp += 1


OPUS_RTP: Any = opus_rtp_parameters(5555, OPUS_PT)


async def sink(
    router: Any, server: str | None = None, local: str = "127.0.0.1"
) -> tuple[Any, Counter, Any]:
    """A plain transport (on ``server`` of a cluster router; all interfaces: the
    server's address is announced) sending to a fresh UDP socket on ``local`` whose RTP
    packets are counted."""
    loop = asyncio.get_running_loop()
    sock, counter = await loop.create_datagram_endpoint(Counter, local_addr=(local, 0))
    where = {} if server is None else {"server": server}
    transport = await router.create_plain_transport(
        **where, listen_info={"protocol": "udp", "ip": "0.0.0.0"}, comedia=False
    )
    await transport.connect(ip=local, port=sock.get_extra_info("sockname")[1])
    return transport, counter, sock


class Sender:
    """Sends opus-like RTP into a comedia PlainTransport until stopped."""

    def __init__(self, transport: Any) -> None:
        self.address = (transport.tuple["localAddress"], transport.tuple["localPort"])
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        sock, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=self.address
        )
        try:
            seq = 0
            while True:
                sock.sendto(struct.pack("!BBHII", 0x80, OPUS_PT, seq, seq * 960, 5555) + bytes(80))
                seq = (seq + 1) & 0xFFFF
                await asyncio.sleep(0.005)
        finally:
            sock.close()

    def __enter__(self) -> Sender:
        self.task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()


async def received(counter: Counter, more: int = 20, timeout: float = 10.0) -> None:
    target = counter.rtp + more
    async with asyncio.timeout(timeout):
        while counter.rtp < target:
            await asyncio.sleep(0.02)
