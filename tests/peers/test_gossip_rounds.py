"""Gossip rounds do not wait for their exchanges: a peer whose exchange hangs (up to EXCHANGE_TIMEOUT_S) holds
back neither the membership's clock nor the exchanges with the other peers.

A real `Node` runs `run_gossip` under trio's virtual clock (so the test takes no real time and has no timing
margin); the libp2p host underneath is replaced by one whose streams to "QmSlow" never open and whose streams
to "QmFast" are refused at once, and each attempt is counted."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing

from peers.config import PeerConfig
from peers.daemon import Node
from peers.gossip import EXCHANGE_TIMEOUT_S, run_gossip
from swarm.errors import SwarmError

SLOW, FAST = "QmSlow", "QmFast"


def test_a_hanging_exchange_does_not_hold_back_the_next_rounds():
    opened: list[str] = []
    ticks: list[float] = []

    async def open_stream(peer_id: str, protocol: str):
        opened.append(peer_id)
        if peer_id == SLOW:
            await trio.sleep_forever()
        raise SwarmError(f"peer {peer_id} refused the stream")

    async def main():
        async with trio.open_nursery() as nursery:
            host = SimpleNamespace(peer_id="QmSelf", addrs=["/ip4/127.0.0.1/tcp/1/p2p/QmSelf"],
                                   connected_peer_ids=lambda: [SLOW, FAST], open_stream=open_stream,
                                   on_disconnect=lambda callback: None)
            node = Node(PeerConfig(gossip_interval_s=0.1, failure_timeout_s=0.6), host, nursery)
            node.membership.addrs.update({SLOW: ("/ip4/127.0.0.1/tcp/2",), FAST: ("/ip4/127.0.0.1/tcp/3",)})
            tick = node.membership.tick
            node.membership.tick = lambda now_s: ticks.append(trio.current_time()) or tick(now_s)
            await nursery.start(run_gossip, node)
            await trio.sleep(EXCHANGE_TIMEOUT_S - 0.2)  # the slow exchange is still running all along
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert opened.count(SLOW) == 1  # never a second exchange while one is in flight
    assert opened.count(FAST) >= 10 and len(ticks) >= 10  # a round every 0.1 s meanwhile
