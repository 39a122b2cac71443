"""Membership and failure detection as a sans-IO state machine: events and `now` in, actions out.

How it works (a heartbeat failure detector with a suspect stage, as in SWIM without the indirect probes,
and a timeout that adapts to each peer's rhythm, in the spirit of the phi-accrual detector):
- a peer *joins* when its hardware profile arrives; every heartbeat updates its last-seen time;
- silent for longer than its timeout it is declared *dead* and leaves; silent for `suspect_after_s /
  dead_after_s` of that timeout it is *suspected* first (still a member: the plan is not changed for a
  hiccup). The timeout is `dead_after_s` (2.5 s) until `gap_window` gaps between its messages have been
  seen; then it is `gap_multiple` (3) times the longest of those recent gaps, capped at `dead_after_s`.
  A peer whose 0.5 s heartbeats arrive on time is declared dead after 1.5 s of silence (three missed
  heartbeats); one whose heartbeats come late (a loaded box, a slow gossip path) gets up to 2.5 s, so
  the detector is fast where it can be and patient where it must be, and never slower than 2.5 s (a
  killed or frozen peer is noticed in under 3 s). A gap that got the peer suspected but not declared
  dead counts too, so a peer that stalls once is given more time from then on;
- a goodbye is immediate; a libp2p disconnect is strong evidence: the peer leaves after
  `disconnect_grace_s` (0.75 s, about one heartbeat) unless a heartbeat arrives meanwhile — peers are not
  all directly connected, and a dropped connection to a peer whose heartbeats still arrive through the
  gossip mesh must not cost a membership change (and a re-plan);
- flapping is damped: a peer that left must be heard again without a gap for `rejoin_after_s` before it
  rejoins, so a peer that drops every other second does not trigger a re-plan each time.
Each change of the member set bumps `version` and emits `MembershipChanged`. Time never comes from a
clock here: the daemon passes `trio.current_time()`, the simulator its own time.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from swarm.proto.errors import ProtoError

ALIVE, SUSPECT, DEAD, REJOINING = "alive", "suspect", "dead", "rejoining"


@dataclass(frozen=True)
class PeerJoined:
    peer_id: str
    profile: Any


@dataclass(frozen=True)
class PeerSuspected:
    peer_id: str


@dataclass(frozen=True)
class PeerLeft:
    peer_id: str
    reason: str  # "silent", "disconnected" or "goodbye"


@dataclass(frozen=True)
class MembershipChanged:
    version: int
    peer_ids: tuple[str, ...]  # members, this peer included, sorted


@dataclass(frozen=True)
class MembershipConfig:
    suspect_after_s: float = 1.5
    dead_after_s: float = 2.5
    rejoin_after_s: float = 1.0
    disconnect_grace_s: float = 0.75
    gap_multiple: float = 3.0  # x the longest recent gap between a peer's messages: its timeout
    gap_window: int = 20  # recent gaps remembered per peer (10 s of 0.5 s heartbeats); 0: fixed timeout

    def __post_init__(self) -> None:
        if not 0 < self.suspect_after_s < self.dead_after_s:
            raise ProtoError("MembershipConfig needs 0 < suspect_after_s < dead_after_s, got "
                             f"{self.suspect_after_s} and {self.dead_after_s}")
        if self.rejoin_after_s < 0 or self.disconnect_grace_s < 0:
            raise ProtoError("MembershipConfig.rejoin_after_s and disconnect_grace_s must be >= 0, got "
                             f"{self.rejoin_after_s} and {self.disconnect_grace_s}")
        if self.gap_multiple <= 1 or self.gap_window < 0:
            raise ProtoError("MembershipConfig needs gap_multiple > 1 (a timeout longer than the gaps it "
                             f"learnt from) and gap_window >= 0, got {self.gap_multiple} and {self.gap_window}")

    def dead_after_for(self, gaps) -> float:
        """The silence after which a peer with these recent gaps between its messages is dead."""
        if self.gap_window == 0 or len(gaps) < self.gap_window:
            return self.dead_after_s
        return min(self.dead_after_s, self.gap_multiple * max(gaps))


@dataclass
class PeerState:
    state: str
    profile: Any
    last_seen_s: float
    heard_since_s: float  # start of the current gap-free run of messages (for rejoining)
    leaves_at_s: float | None = None  # disconnected: leaves then unless heard before
    gaps: deque = field(default_factory=deque)  # recent gaps between its messages while a member (s)


class Membership:
    """This peer's view of the swarm: who is a member, who is suspected, and the view's version."""

    def __init__(self, self_id: str, profile: Any = None, config: MembershipConfig | None = None) -> None:
        self.self_id = self_id
        self.config = config or MembershipConfig()
        self.peers: dict[str, PeerState] = {}
        self.self_profile = profile
        self.version = 0

    @property
    def member_ids(self) -> tuple[str, ...]:
        """Members (alive or suspected) including this peer, sorted."""
        others = [p for p, s in self.peers.items() if s.state in (ALIVE, SUSPECT)]
        return tuple(sorted([self.self_id, *others]))

    def state_of(self, peer_id: str) -> str | None:
        return ALIVE if peer_id == self.self_id else getattr(self.peers.get(peer_id), "state", None)

    def dead_after_s(self, peer_id: str) -> float:
        """The silence after which `peer_id` is declared dead now (see the module docstring)."""
        return self.config.dead_after_for(self.peers[peer_id].gaps)

    def profile_received(self, peer_id: str, profile: Any, now: float) -> list:
        """A (verified) hardware profile: a new peer joins; a known one updates its profile."""
        if peer_id == self.self_id:
            return []
        peer = self.peers.get(peer_id)
        if peer is None:
            self.peers[peer_id] = PeerState(ALIVE, profile, now, now)
            return [PeerJoined(peer_id, profile), self._changed()]
        peer.profile = profile
        return self._heard(peer_id, peer, now)

    def heartbeat(self, peer_id: str, now: float) -> list:
        """A heartbeat (or any message) from `peer_id`; unknown peers wait for their profile."""
        peer = self.peers.get(peer_id)
        if peer is None or peer_id == self.self_id:
            return []
        return self._heard(peer_id, peer, now)

    def disconnected(self, peer_id: str, now: float, *, reason: str = "disconnected") -> list:
        """libp2p closed the last connection: the peer leaves after the grace period unless heard.
        With reason "goodbye" (it said so itself) it leaves now."""
        peer = self.peers.get(peer_id)
        if peer is None or peer.state in (DEAD, REJOINING):
            if peer is not None:
                peer.state = DEAD
            return []
        if reason == "goodbye" or self.config.disconnect_grace_s == 0:
            return self._leave(peer_id, peer, reason)
        peer.leaves_at_s = now + self.config.disconnect_grace_s
        return []

    def tick(self, now: float) -> list:
        """Advance time: suspect and declare dead the peers that went silent."""
        actions: list = []
        cfg = self.config
        for peer_id, peer in sorted(self.peers.items()):
            silent_s = now - peer.last_seen_s
            dead_after_s = cfg.dead_after_for(peer.gaps)
            if peer.leaves_at_s is not None and now >= peer.leaves_at_s:
                actions += self._leave(peer_id, peer, "disconnected")
            elif peer.state in (ALIVE, SUSPECT) and silent_s > dead_after_s:
                actions += self._leave(peer_id, peer, "silent")
            elif peer.state == ALIVE and silent_s > dead_after_s * cfg.suspect_after_s / cfg.dead_after_s:
                peer.state = SUSPECT
                actions.append(PeerSuspected(peer_id))
            elif peer.state == REJOINING and silent_s > self.config.suspect_after_s:
                peer.state = DEAD
        return actions

    def _heard(self, peer_id: str, peer: PeerState, now: float) -> list:
        peer.leaves_at_s = None  # heard after a disconnect: still alive, through someone else
        if peer.state in (ALIVE, SUSPECT) and now > peer.last_seen_s and self.config.gap_window > 0:
            peer.gaps.append(now - peer.last_seen_s)
            if len(peer.gaps) > self.config.gap_window:
                peer.gaps.popleft()
        if now - peer.last_seen_s > self.config.suspect_after_s:
            peer.heard_since_s = now  # a gap restarts the rejoin clock
        peer.last_seen_s = max(peer.last_seen_s, now)
        if peer.state == SUSPECT:
            peer.state = ALIVE
        elif peer.state == DEAD:
            peer.state, peer.heard_since_s = REJOINING, now
        if peer.state == REJOINING and now - peer.heard_since_s >= self.config.rejoin_after_s:
            peer.state = ALIVE
            return [PeerJoined(peer_id, peer.profile), self._changed()]
        return []

    def _leave(self, peer_id: str, peer: PeerState, reason: str) -> list:
        peer.state, peer.leaves_at_s = DEAD, None
        return [PeerLeft(peer_id, reason), self._changed()]

    def _changed(self) -> MembershipChanged:
        self.version += 1
        return MembershipChanged(self.version, self.member_ids)
