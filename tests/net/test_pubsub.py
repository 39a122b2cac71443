"""The gossip adapter: typed delivery across hops, and malformed or off-topic messages rejected and logged."""

import logging

import trio

from swarm.net.host import open_host
from swarm.net.pubsub import TOPIC_HEARTBEAT, num_outbound_dropped, open_gossip
from swarm.wire.codec import encode
from swarm.wire.messages import Heartbeat, Ping


async def wait_for(predicate, timeout_s: float) -> None:
    with trio.fail_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)


def test_messages_cross_two_hops_and_bad_ones_are_rejected(host_config, caplog):
    got: list = []

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as a, open_host(host_config()) as b, \
                    open_host(host_config()) as c, open_gossip(a) as ga, open_gossip(b) as gb, \
                    open_gossip(c) as gc:
                for gossip in (ga, gb):
                    await gossip.subscribe(TOPIC_HEARTBEAT, lambda sender, msg: None, types=(Heartbeat,))
                await gc.subscribe(TOPIC_HEARTBEAT, lambda sender, msg: got.append((sender, msg)),
                                   types=(Heartbeat,))
                await b.dial(a.addrs[0])  # a - b - c: a's messages reach c through b
                await c.dial(b.addrs[0])
                await trio.sleep(1.5)  # one GossipSub heartbeat builds the mesh
                ga.pubsub.remove_topic_validator(TOPIC_HEARTBEAT)  # a misbehaves: b must stop it
                await ga.pubsub.publish(TOPIC_HEARTBEAT, b"\xc1 not msgpack")
                await ga.pubsub.publish(TOPIC_HEARTBEAT, encode(Ping(1)))  # valid message, wrong topic
                for i in range(3):
                    await ga.publish(TOPIC_HEARTBEAT, Heartbeat(a.peer_id, i))
                await wait_for(lambda: len(got) >= 3, 5)
                await trio.sleep(0.3)
                assert got == [(a.peer_id, Heartbeat(a.peer_id, i)) for i in range(3)]
                assert gb.num_rejected >= 2  # stopped at the first hop, never forwarded to c

    with caplog.at_level(logging.WARNING, logger="swarm.net.pubsub"):
        trio.run(main)
    assert "rejected a message from peer" in caplog.text and "not a valid msgpack" in caplog.text
    assert "does not belong on this topic" in caplog.text


def test_a_burst_longer_than_libp2ps_peer_queue_arrives_whole(host_config):
    """libp2p queues at most 32 RPCs per peer and drops the rest silently; open_gossip raises that."""
    num_messages = 150  # above libp2p's 32-RPC queue, below the 200/s spam limit of the receiver
    got: list = []

    async def main():
        with trio.fail_after(30):
            async with open_host(host_config()) as a, open_host(host_config()) as b, open_gossip(a) as ga, \
                    open_gossip(b) as gb:
                await ga.subscribe(TOPIC_HEARTBEAT, lambda sender, msg: None, types=(Heartbeat,))
                await gb.subscribe(TOPIC_HEARTBEAT, lambda sender, msg: got.append(msg.sequence), types=(Heartbeat,))
                await b.dial(a.addrs[0])
                await trio.sleep(1.5)  # one GossipSub heartbeat builds the mesh
                dropped_before = num_outbound_dropped()
                for i in range(num_messages):  # no checkpoint in between: the queue fills before it drains
                    ga.pubsub.manager.run_task(ga.pubsub.publish, TOPIC_HEARTBEAT, encode(Heartbeat(a.peer_id, i)))
                await wait_for(lambda: len(got) >= num_messages, 10)
                assert sorted(got) == list(range(num_messages))
                assert num_outbound_dropped() == dropped_before

    trio.run(main)
