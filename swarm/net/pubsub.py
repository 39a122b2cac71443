"""The GossipSub adapter: typed `swarm.wire` messages on named topics, one consumer task per topic.

The limits are set on purpose (py-libp2p 0.8.1 drops silently past them):
- spam protection stays on, at 200 messages/s per forwarding peer and topic: a peer relays everyone's
  heartbeats (0.5 s each), so 32 peers make 64/s on that topic — the default of 10/s would drop most;
- libp2p gives each subscription a 32-message queue and silently drops what does not fit; a loaded
  event loop (or a burst: 8 peers' heartbeats plus a plan) overflows that, so the queue is raised to
  `queue_size` (1,024; libp2p reads the module constant `SUBSCRIPTION_CHANNEL_SIZE` when subscribing, so
  this is process-wide); the consumer only hands the decoded message on (handlers must be quick);
- libp2p also gives each *peer* a 32-RPC outbound queue and drops (at debug level) what does not fit.
  A process starved of CPU wakes up to a burst of inbound messages and forwards each to every mesh
  peer before its per-peer sending task runs, so a busy neighbour's queue overflowed. The loss was
  permanent: GossipSub repairs by gossiping message ids (IHAVE) to *non*-mesh peers only, and in a small
  swarm a well-connected peer is in everyone's mesh (8 peers, 7 links: a message never reached the
  bootstrap peer in 4 of 5 loaded runs). The queue is raised to `outbound_queue_size` (1,024; libp2p
  builds it with the module-level name `RpcQueue`, replaced here by `_OutboundQueue`, process-wide), and
  a drop that still happens is logged as a warning and counted (`num_outbound_dropped()`);
- messages are capped at 64 KiB here (libp2p's cap is 1 MiB): gossip is for small control records only;
- the GossipSub heartbeat (mesh upkeep) runs every second, not every 120 s, so a new peer joins the mesh
  in about a second; degree 6 (4..12) as in the libp2p spec.
A message that does not decode, or is not of the topic's types, is rejected by the topic validator (not
forwarded, not delivered) with a log line naming the peer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.peer.id import ID
from libp2p.pubsub import pubsub as libp2p_pubsub
from libp2p.pubsub.gossipsub import PROTOCOL_ID as GOSSIPSUB_PROTOCOL_ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.tools.anyio_service import background_trio_service

from swarm.errors import WireError
from swarm.net.errors import DeadlineError
from swarm.net.host import Host
from swarm.wire.codec import decode, encode

logger = logging.getLogger(__name__)

TOPIC_HEARTBEAT = "/swarm/heartbeat/1.0.0"
TOPIC_LOAD = "/swarm/load/1.0.0"
TOPIC_PROFILE = "/swarm/profile/1.0.0"
TOPIC_ELECTION = "/swarm/election/1.0.0"
TOPIC_PLAN = "/swarm/plan/1.0.0"
MAX_GOSSIP_BYTES = 64 << 10
MAX_DECODED_CACHE = 1024
DROP_LOG_EVERY = 100  # after the first refused RPC to a peer, log every 100th
Handler = Callable[[str, Any], Awaitable[None] | None]


@dataclass(frozen=True)
class GossipConfig:
    degree: int = 6
    degree_low: int = 4
    degree_high: int = 12
    heartbeat_interval_s: float = 1.0
    max_messages_per_topic_per_s: float = 200.0
    max_message_bytes: int = MAX_GOSSIP_BYTES
    is_self_delivered: bool = False  # hand a peer its own messages too
    queue_size: int = 1024  # messages waiting for a topic's consumer before libp2p drops
    outbound_queue_size: int = 1024  # RPCs waiting to be written to one peer before libp2p drops

    def __post_init__(self) -> None:
        if not 1 <= self.degree_low <= self.degree <= self.degree_high:
            raise ValueError("GossipConfig needs 1 <= degree_low <= degree <= degree_high")
        if not 0 < self.max_message_bytes <= 1 << 20:
            raise ValueError("GossipConfig.max_message_bytes must be in (0, 1 MiB] (libp2p's own cap)")
        if self.queue_size < 32 or self.outbound_queue_size < 32:
            raise ValueError("GossipConfig.queue_size and outbound_queue_size must be >= 32 (libp2p's defaults)")


class _OutboundQueue(RpcQueue):
    """libp2p's per-peer outbound RPC queue, `size` long (process-wide), warning when it refuses an RPC."""

    size = 32
    num_dropped = 0  # RPCs refused by all outbound queues of this process

    def __init__(self) -> None:
        super().__init__(max_size=_OutboundQueue.size)
        self.num_dropped_here = 0

    def push(self, rpc, priority: bool = False) -> bool:
        is_queued = super().push(rpc, priority)
        if not is_queued and not self.closed:
            _OutboundQueue.num_dropped += 1
            self.num_dropped_here += 1
            if self.num_dropped_here % DROP_LOG_EVERY == 1:
                logger.warning("gossip: a peer's outbound queue is full (%d RPCs): %d RPC(s) to it dropped so "
                               "far; this process cannot keep up with the gossip rate", _OutboundQueue.size,
                               self.num_dropped_here)
        return is_queued


def num_outbound_dropped() -> int:
    """Gossip RPCs this process dropped because a peer's outbound queue was full (0 when it keeps up)."""
    return _OutboundQueue.num_dropped


class Gossip:
    """Publish and subscribe typed messages; each subscription gets its own consumer task."""

    def __init__(self, host: Host, pubsub: Pubsub, config: GossipConfig, nursery: trio.Nursery) -> None:
        self.host = host
        self.pubsub = pubsub
        self.config = config
        self.nursery = nursery
        self.num_rejected = 0
        self.decoded: dict[tuple, Any] = {}  # validated messages waiting for their consumer

    async def publish(self, topic: str, msg: Any, *, timeout_s: float = 2.0) -> None:
        data = encode(msg)
        if len(data) > self.config.max_message_bytes:
            raise WireError(f"{type(msg).__name__} of {len(data)} bytes exceeds the gossip limit of "
                            f"{self.config.max_message_bytes}; send bulk data over frames")
        with trio.move_on_after(timeout_s) as scope:
            await self.pubsub.publish(topic, data)
        if scope.cancelled_caught:
            raise DeadlineError(f"publishing on {topic} took more than {timeout_s:g} s")

    async def subscribe(self, topic: str, handler: Handler, *, types: tuple[type, ...] = ()) -> None:
        """Deliver every valid message on `topic` as `handler(sender_peer_id, msg)`, in order."""
        self.pubsub.set_topic_validator(topic, self._validator(topic, types), False)
        libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE = max(libp2p_pubsub.SUBSCRIPTION_CHANNEL_SIZE, self.config.queue_size)
        subscription = await self.pubsub.subscribe(topic)
        self.nursery.start_soon(self._consume, topic, subscription, handler)

    def _validator(self, topic: str, types: tuple[type, ...]):
        def validate(forwarder: ID, msg) -> bool:
            try:
                decoded = self._decode(msg.data, types)
            except WireError as e:
                self.num_rejected += 1
                logger.warning("%s: rejected a message from peer %s (forwarded by %s): %s", topic,
                               _author(msg), forwarder, e)
                return False
            if len(self.decoded) >= MAX_DECODED_CACHE:  # consumers lag: forget the oldest
                self.decoded.pop(next(iter(self.decoded)))
            self.decoded[(msg.from_id, msg.seqno, topic)] = decoded  # the consumer takes it, no 2nd decode
            return True

        return validate

    def _decode(self, data: bytes, types: tuple[type, ...]) -> Any:
        msg = decode(data, max_bytes=self.config.max_message_bytes)
        if types and not isinstance(msg, types):
            raise WireError(f"{type(msg).__name__} does not belong on this topic")
        return msg

    async def _consume(self, topic: str, subscription, handler: Handler) -> None:
        async for raw in subscription:
            sender = _author(raw)
            if sender == self.host.peer_id and not self.config.is_self_delivered:
                continue
            msg = self.decoded.pop((raw.from_id, raw.seqno, topic), None)
            try:
                msg = msg if msg is not None else decode(raw.data, max_bytes=self.config.max_message_bytes)
            except WireError as e:  # the validator runs first; this guards our own messages
                logger.warning("%s: dropped a message from peer %s: %s", topic, sender, e)
                continue
            result = handler(sender, msg)
            if result is not None:
                await result


def _author(msg) -> str:
    try:
        return ID(msg.from_id).to_base58()
    except Exception:  # a malformed from_id is reported, not raised
        return "?"


@asynccontextmanager
async def open_gossip(host: Host, config: GossipConfig | None = None) -> AsyncIterator[Gossip]:
    """Start GossipSub on `host`; subscriptions end when the block exits."""
    config = config or GossipConfig()
    _OutboundQueue.size = max(_OutboundQueue.size, config.outbound_queue_size)
    libp2p_pubsub.RpcQueue = _OutboundQueue  # the name libp2p's Pubsub builds each peer's queue with
    router = GossipSub(protocols=[GOSSIPSUB_PROTOCOL_ID], degree=config.degree, degree_low=config.degree_low,
                       degree_high=config.degree_high, heartbeat_interval=config.heartbeat_interval_s,
                       heartbeat_initial_delay=0.1, spam_protection_enabled=True,
                       max_messages_per_topic_per_second=config.max_messages_per_topic_per_s)
    pubsub = Pubsub(host.libp2p, router, max_inbound_rpc_size=config.max_message_bytes * 2)
    async with background_trio_service(pubsub), background_trio_service(router):
        with trio.fail_after(5):
            await pubsub.wait_until_ready()
        async with trio.open_nursery() as nursery:
            yield Gossip(host, pubsub, config, nursery)
            nursery.cancel_scope.cancel()
