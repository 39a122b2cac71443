"""Liveness: heartbeats and signed profiles over gossip, fed with libp2p disconnects into the sans-IO
membership and election machines (`swarm.proto`), whose actions come out on a channel.

How it works: every `heartbeat_interval_s` (0.5 s) a peer publishes a `Heartbeat` carrying the term and
coordinator it follows, and re-publishes its signed `HardwareProfile` every `profile_interval_s` and
whenever it hears a peer it has no profile of (so newcomers learn everyone within one round). A libp2p
disconnect (clean close or SIGKILL, about 0.2 s) or a health-monitor abort (frozen peer, about 3 s) makes
the peer leave 0.75 s later unless it is still heard through the mesh; otherwise silence longer than
`dead_after_s` (2.5 s) does. Clock: `trio.current_time()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import trio

from swarm.errors import WireError
from swarm.net.host import Host
from swarm.net.pubsub import TOPIC_ELECTION, TOPIC_HEARTBEAT, TOPIC_PROFILE, Gossip
from swarm.net.signed import open_record, sign_record
from swarm.proto.election import Election, SendClaim
from swarm.proto.membership import Membership, MembershipChanged, MembershipConfig
from swarm.wire.hardware import HardwareProfile
from swarm.wire.messages import CoordinatorClaim, Heartbeat, SignedRecord

logger = logging.getLogger(__name__)
MAX_PENDING_EVENTS = 1024
MIN_PROFILE_GAP_S = 1.0


@dataclass(frozen=True)
class LivenessConfig:
    heartbeat_interval_s: float = 0.5
    tick_s: float = 0.1
    profile_interval_s: float = 5.0
    listen_s: float = 1.0  # how long a fresh peer listens for an existing coordinator
    membership: MembershipConfig = field(default_factory=MembershipConfig)

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_s < self.membership.suspect_after_s:
            raise ValueError("LivenessConfig.heartbeat_interval_s must be positive and below suspect_after_s")


class Liveness:
    """The running membership and election of one peer; their actions arrive on `events`."""

    def __init__(self, host: Host, gossip: Gossip, profile: HardwareProfile, config: LivenessConfig) -> None:
        now = trio.current_time()
        self.host = host
        self.gossip = gossip
        self.profile = profile
        self.config = config
        self.membership = Membership(host.peer_id, profile, config.membership)
        self.election = Election(host.peer_id, now, listen_s=config.listen_s)
        self.sequence = 0
        self.next_profile_at_s = now
        self.last_profile_at_s = -MIN_PROFILE_GAP_S
        self.send_events, self.events = trio.open_memory_channel[Any](MAX_PENDING_EVENTS)
        self.outbox: list[Any] = []  # (topic, message) to publish on the next round

    def on_heartbeat(self, sender: str, hb: Heartbeat) -> None:
        now = trio.current_time()
        if hb.peer_id != sender:
            logger.warning("heartbeat from peer %s claims to be from %s; ignored", sender, hb.peer_id)
            return
        if self.membership.state_of(sender) is None:  # a newcomer: tell it who we are, at most once a second
            self.next_profile_at_s = min(self.next_profile_at_s, max(now, self.last_profile_at_s + MIN_PROFILE_GAP_S))
        self._apply(self.membership.heartbeat(sender, now), now)
        self._apply(self.election.heartbeat_received(hb.term, hb.coordinator_id, now), now)

    def on_profile(self, sender: str, record: SignedRecord) -> None:
        try:
            profile = open_record(record, expect=HardwareProfile)
        except WireError as e:
            logger.warning("%s from peer %s: %s; ignored", TOPIC_PROFILE, sender, e)
            return
        if profile.peer_id != record.peer_id:
            logger.warning("profile signed by %s names peer %s; ignored", record.peer_id, profile.peer_id)
            return
        now = trio.current_time()
        self._apply(self.membership.profile_received(record.peer_id, profile, now), now)

    def on_claim(self, sender: str, claim: CoordinatorClaim) -> None:
        now = trio.current_time()
        self._apply(self.election.claim_received(claim, now), now)

    def on_disconnect(self, peer_id: str) -> None:
        now = trio.current_time()
        self._apply(self.membership.disconnected(peer_id, now), now)

    def tick(self) -> None:
        now = trio.current_time()
        self._apply(self.membership.tick(now), now)
        self._apply(self.election.tick(now), now)

    def heartbeat(self) -> Heartbeat:
        self.sequence += 1
        return Heartbeat(self.host.peer_id, self.sequence, self.election.term, self.election.coordinator_id or "")

    def _apply(self, actions: list, now: float) -> None:
        for action in actions:
            if isinstance(action, SendClaim):
                self.outbox.append((TOPIC_ELECTION, action.claim))
                continue
            if isinstance(action, MembershipChanged):
                self._apply(self.election.members_changed(action.peer_ids, now), now)
            try:
                self.send_events.send_nowait(action)
            except trio.WouldBlock:
                logger.warning("liveness event queue full (%d); dropped %s", MAX_PENDING_EVENTS, action)


async def run_liveness(host: Host, gossip: Gossip, profile: HardwareProfile, config: LivenessConfig | None = None,
                       *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Run heartbeats, profiles and the election until cancelled; `task_status.started(liveness)`."""
    live = Liveness(host, gossip, profile, config or LivenessConfig())
    await gossip.subscribe(TOPIC_HEARTBEAT, live.on_heartbeat, types=(Heartbeat,))
    await gossip.subscribe(TOPIC_PROFILE, live.on_profile, types=(SignedRecord,))
    await gossip.subscribe(TOPIC_ELECTION, live.on_claim, types=(CoordinatorClaim,))
    host.on_disconnect(live.on_disconnect)
    task_status.started(live)
    next_beat_s = trio.current_time()
    while True:
        live.tick()
        now = trio.current_time()
        if now >= live.next_profile_at_s:
            live.next_profile_at_s = now + live.config.profile_interval_s
            live.last_profile_at_s = now
            live.outbox.append((TOPIC_PROFILE, sign_record(host.key_pair, profile, live.sequence)))
        if now >= next_beat_s:
            next_beat_s = now + live.config.heartbeat_interval_s
            live.outbox.append((TOPIC_HEARTBEAT, live.heartbeat()))
        await _flush(live)
        await trio.sleep(live.config.tick_s)


async def _flush(live: Liveness) -> None:
    while live.outbox:
        topic, msg = live.outbox.pop(0)
        try:
            # generous: a publish cut short by its deadline is lost, and a loaded loop publishes slowly
            await live.gossip.publish(topic, msg, timeout_s=live.config.membership.dead_after_s)
        except Exception as e:  # a failed publish is retried by the next round, never fatal
            logger.warning("publishing on %s failed: %s", topic, e)
