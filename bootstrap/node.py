"""The bootstrap node: a model-less peer that new peers dial first, relays gossip and circuit-relay traffic,
and answers `/swarm/peers/1.0.0` with the addresses of the peers it knows.

py-libp2p 0.8.1 ships circuit relay v2; the node enables the hop role (bounded reservations and circuits)
so a peer behind NAT can be reached through it. It subscribes to every swarm topic so that peers which
only know the bootstrap node still form one gossip mesh through it.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio
from libp2p.peer.id import ID
from libp2p.relay.circuit_v2.protocol import CircuitV2Protocol
from libp2p.relay.circuit_v2.resources import RelayLimits
from libp2p.tools.anyio_service import background_trio_service

from swarm.net.host import Host, HostConfig, open_host
from swarm.net.pubsub import (
    TOPIC_ELECTION,
    TOPIC_HEARTBEAT,
    TOPIC_LOAD,
    TOPIC_PLAN,
    TOPIC_PROFILE,
    open_gossip,
)
from swarm.net.rpc import serve_rpc
from swarm.wire.messages import PeerList, PeerListRequest

logger = logging.getLogger(__name__)
PEERS_PROTOCOL = "/swarm/peers/1.0.0"
TOPICS = (TOPIC_HEARTBEAT, TOPIC_PROFILE, TOPIC_ELECTION, TOPIC_PLAN, TOPIC_LOAD)
# A relay is a fallback for peers behind NAT, not a data path: small, time-boxed circuits.
RELAY_LIMITS = RelayLimits(duration=600, data=64 << 20, max_circuit_conns=64, max_reservations=128)


@dataclass(frozen=True)
class BootstrapConfig:
    host: HostConfig
    is_relay: bool = True


def peer_addrs(host: Host, max_peers: int) -> list[str]:
    """Full multiaddrs of connected peers, from the peerstore (what they listen on, as identify told us)."""
    addrs = []
    peerstore = host.libp2p.get_peerstore()
    for peer_id in host.connected_peer_ids()[:max_peers]:
        try:
            known = peerstore.addrs(ID.from_base58(peer_id))
        except Exception:  # a peer that vanished between the two calls
            continue
        addrs += [f"{a}/p2p/{peer_id}" for a in known[:1]]
    return addrs


@asynccontextmanager
async def open_bootstrap(config: BootstrapConfig):
    """A running bootstrap node (host, gossip on every topic, peer list, relay hop)."""
    async with open_host(config.host) as host, open_gossip(host) as gossip:
        for topic in TOPICS:
            await gossip.subscribe(topic, _ignore)

        async def list_peers(peer_id: str, request: PeerListRequest) -> PeerList:
            return PeerList(tuple(a for a in peer_addrs(host, request.max_peers) if f"/p2p/{peer_id}" not in a))

        serve_rpc(host, PEERS_PROTOCOL, list_peers, request_types=(PeerListRequest,))
        if not config.is_relay:
            yield host
            return
        relay = CircuitV2Protocol(host.libp2p, limits=RELAY_LIMITS, allow_hop=True)
        async with background_trio_service(relay):
            yield host


def _ignore(sender: str, msg: object) -> None:
    """The bootstrap node only relays gossip; it acts on none of it."""


async def run_bootstrap(config: BootstrapConfig, print_line: Callable[[str], None] = print) -> int:
    """Run until SIGINT or SIGTERM; the first printed line is the node's full multiaddr."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_bootstrap(config) as host:
            print_line(host.addrs[0])
            for addr in host.addrs[1:]:
                logger.info("also listening on %s", addr)
            async for signum in signals:
                logger.info("bootstrap node: %s received, shutting down", signal.Signals(signum).name)
                break
    return 0
