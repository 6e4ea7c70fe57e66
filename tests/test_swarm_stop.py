"""A stopped SwarmNode follows nothing of its server any more (in one process, as tests
restart nodes): what its server's workers make after the stop is not its business."""

from __future__ import annotations

from mafalda import remote
from mafalda.swarm import SwarmNode
from tests.processes import TOKEN
from tests.rtp_flow import MEDIA_CODECS, OPUS_PT, OPUS_RTP, opus_rtp_parameters

ROUND = 0.1


async def test_a_stopped_node_does_not_follow_what_it_knew() -> None:
    """A node that followed a worker, its router and a transport: after aclose(), a new
    router on that worker, a new transport on the router and a new producer on the
    transport are not tracked (nor listed in its directory), and nothing of the node is
    left on the server's objects."""
    async with await remote.serve(host="127.0.0.2", token=TOKEN) as s1:
        node = SwarmNode(s1, token=TOKEN, server_id="s1", interval=ROUND)
        await node.start()
        streams = node.streams
        assert streams is not None
        client = await remote.connect(s1.url, token=TOKEN)
        try:
            worker = await client.create_worker()
            router = await worker.create_router(media_codecs=MEDIA_CODECS)
            listen = {"protocol": "udp", "ip": "127.0.0.2"}
            send = await router.create_plain_transport(listen_info=listen, comedia=True)
            known = await send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            assert (known.id, False) in streams._originals  # followed while it ran
            assert streams.directory.get((known.id, False)) == "s1"
            await node.aclose()
            later_router = await worker.create_router(media_codecs=MEDIA_CODECS)
            later_send = await later_router.create_plain_transport(listen_info=listen, comedia=True)
            other_ssrc = opus_rtp_parameters(5556, OPUS_PT)
            on_old_transport = await send.produce(kind="audio", rtp_parameters=other_ssrc)
            later_transport = await router.create_plain_transport(listen_info=listen)
            on_new_transport = await later_transport.produce(kind="audio", rtp_parameters=OPUS_RTP)
            on_new_router = await later_send.produce(kind="audio", rtp_parameters=OPUS_RTP)
            followed = {t.id for t in streams._router_of}
            for made in (later_router, later_send, later_transport):
                assert made.id not in followed
            for producer in (on_old_transport, on_new_transport, on_new_router):
                assert (producer.id, False) not in streams._originals
                assert streams.directory.get((producer.id, False)) is None
            assert not streams._attached  # nothing of it left on the server's objects
        finally:
            await client.aclose()
