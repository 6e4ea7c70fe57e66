"""Quickstart: a worker, a router, a producer fed with real RTP over UDP, a consumer.

Run: .venv/bin/python examples/quickstart.py
"""

from __future__ import annotations

import asyncio
import socket
import struct

from mafalda import mediasoup

MEDIA_CODECS: list[mediasoup.RouterRtpCodecCapability] = [
    {"kind": "audio", "mimeType": "audio/opus", "clockRate": 48000, "channels": 2},
    {"kind": "video", "mimeType": "video/VP8", "clockRate": 90000},
]


def rtp_packet(seq: int, timestamp: int, ssrc: int, payload_type: int) -> bytes:
    header = struct.pack("!BBHII", 0x80, payload_type, seq & 0xFFFF, timestamp, ssrc)
    return header + bytes(160)


async def main() -> None:
    worker = await mediasoup.create_worker(log_level="warn")
    print(f"worker pid {worker.pid} running mediasoup-worker {mediasoup.version}")
    router = await worker.create_router(media_codecs=MEDIA_CODECS)
    print(f"router {router.id} with {len(router.rtp_capabilities['codecs'])} codecs")

    listen = {"protocol": "udp", "ip": "127.0.0.1"}
    send_transport = await router.create_plain_transport(listen_info=listen, comedia=True)
    recv_transport = await router.create_plain_transport(listen_info=listen)

    ssrc = 11111111
    producer = await send_transport.produce(
        kind="audio",
        rtp_parameters={
            "codecs": [
                {"mimeType": "audio/opus", "payloadType": 101, "clockRate": 48000, "channels": 2}
            ],
            "encodings": [{"ssrc": ssrc}],
        },
    )
    print(f"producer {producer.id} kind={producer.kind} type={producer.type}")

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    await recv_transport.connect(ip="127.0.0.1", port=receiver.getsockname()[1])
    consumer = await recv_transport.consume(
        producer_id=producer.id, rtp_capabilities=router.rtp_capabilities
    )
    print(f"consumer {consumer.id} of producer {consumer.producer_id}, type={consumer.type}")

    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = (send_transport.tuple["localAddress"], send_transport.tuple["localPort"])
    sent = 0
    for seq in range(100):
        sender.sendto(rtp_packet(seq, seq * 960, ssrc, 101), target)
        sent += 1
        await asyncio.sleep(0.002)
    received = 0
    loop = asyncio.get_running_loop()
    try:
        while True:
            packet = await asyncio.wait_for(loop.sock_recv(receiver, 2048), 0.5)
            # Count RTP only: RTCP (receiver reports...) shares the socket (rtcp-mux).
            if not 192 <= packet[1] <= 223:
                received += 1
    except TimeoutError:
        pass
    stats = await consumer.get_stats()
    outbound = next(s for s in stats if s["type"] == "outbound-rtp")
    print(f"sent {sent} RTP packets, the consumer's socket received {received}")
    packets, octets = outbound["packetCount"], outbound["byteCount"]
    print(f"consumer stats: packetCount={packets} byteCount={octets}")
    sender.close()
    receiver.close()
    worker.close()
    await worker.wait_closed()
    print("worker closed")


if __name__ == "__main__":
    asyncio.run(main())
