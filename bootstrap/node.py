"""The bootstrap node's own services: the circuit-relay v2 hop and `/swarm/peers/1.0.0` (the addresses of
the peers it is connected to), installed on a given host.

`swarm bootstrap` runs the peer daemon with serving off (the daemon's membership digests, so peers that
only know the bootstrap node learn of each other) and starts `run_bootstrap_services` on the daemon's
host; `swarm.cli.bootstrap_cmd` composes the two (this package and `peers` do not import each other).
py-libp2p 0.8.1 ships circuit relay v2; the hop role (bounded reservations and circuits) lets a peer
behind NAT be reached through the node. `open_bootstrap` is the same services on a bare host with
GossipSub on every swarm topic (for tools that gossip through `swarm.net.pubsub`).
"""

from __future__ import annotations

import logging
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


def serve_peer_list(host: Host) -> None:
    """Answer `/swarm/peers/1.0.0` on `host` with the connected peers' addresses (the asker's left out)."""

    async def list_peers(peer_id: str, request: PeerListRequest) -> PeerList:
        return PeerList(tuple(a for a in peer_addrs(host, request.max_peers) if f"/p2p/{peer_id}" not in a))

    serve_rpc(host, PEERS_PROTOCOL, list_peers, request_types=(PeerListRequest,))


@asynccontextmanager
async def open_relay(host: Host, *, is_relay: bool = True):
    """The circuit-relay v2 hop on `host` while the block runs (nothing if not `is_relay`)."""
    if not is_relay:
        yield
        return
    relay = CircuitV2Protocol(host.libp2p, limits=RELAY_LIMITS, allow_hop=True)
    async with background_trio_service(relay):
        yield


async def run_bootstrap_services(host: Host, *, is_relay: bool = True,
                                 task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Peer list and relay hop on an open host (the daemon's) until cancelled."""
    serve_peer_list(host)
    async with open_relay(host, is_relay=is_relay):
        task_status.started()
        await trio.sleep_forever()


@asynccontextmanager
async def open_bootstrap(config: BootstrapConfig):
    """A bootstrap node on a bare host (gossip on every topic, peer list, relay hop), without the daemon."""
    async with open_host(config.host) as host, open_gossip(host) as gossip:
        for topic in TOPICS:
            await gossip.subscribe(topic, _ignore)
        serve_peer_list(host)
        async with open_relay(host, is_relay=config.is_relay):
            yield host


def _ignore(sender: str, msg: object) -> None:
    """The bootstrap node only relays gossip; it acts on none of it."""
