"""Coordinator election with terms and fencing, as a sans-IO state machine.

How it works (lowest-id election in the manner of the bully algorithm, Garcia-Molina 1982, made sticky
and fenced with terms as in Raft, Ongaro & Ousterhout 2014, section 5.1):
- every peer tracks `(term, coordinator_id)`; it learns them from `CoordinatorClaim`s and from the
  heartbeats of others, adopting a pair if its term is higher, or equal with a lower coordinator id
  (so two simultaneous candidates of one term resolve to the lower id everywhere);
- the coordinator stays while it is a member (sticky: a newly joined lower id does not take over, so a
  join does not cost a re-plan); when it leaves the member set, the live member with the lowest peer id
  claims `term + 1` and broadcasts the claim; the others adopt it on arrival;
- a fresh peer first listens for `listen_s` (two heartbeat rounds) to learn an existing coordinator
  before it may claim; a coordinator learned from others that does not become a member within
  `missing_after_s` (3 s: its profile may still be on its way) is treated as lost;
- a peer whose claim is answered by a higher term or a lower id of the same term steps down.
`Fence.accept` rejects anything stamped with an older term (or, for plans, an older `(term, epoch)`), so
a deposed coordinator's late plan is ignored everywhere.

Guarantees: in a connected swarm whose members agree on the member set, exactly one coordinator per
term once claims have propagated (one gossip round). Two peers may both believe they lead the same term
for the time a claim takes to reach the other; the fence then keeps only the lower id's plans.
Limits: this is not consensus. In a network partition each side elects its own coordinator with its
own term; on healing, the higher term (then the lower id) wins and the other side's plans are fenced off.
If members disagree for long about who is alive, claims can alternate until membership converges.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from swarm.proto.errors import ProtoError
from swarm.wire.messages import CoordinatorClaim, PlanAnnouncement


@dataclass(frozen=True)
class SendClaim:
    claim: CoordinatorClaim


@dataclass(frozen=True)
class CoordinatorElected:
    term: int
    coordinator_id: str
    is_self: bool


@dataclass(frozen=True)
class CoordinatorLost:
    term: int
    coordinator_id: str


class Fence:
    """Accepts only epochs that are not older than the newest seen (ints or tuples such as (term, epoch))."""

    def __init__(self, epoch: Any = None) -> None:
        self.epoch = epoch  # None: nothing seen yet

    def accept(self, epoch: Any) -> bool:
        if self.epoch is not None and epoch < self.epoch:
            return False
        self.epoch = epoch
        return True


class Election:
    """One peer's view of who coordinates, and in which term."""

    def __init__(self, self_id: str, now: float, *, listen_s: float = 1.0, missing_after_s: float = 3.0) -> None:
        if listen_s < 0 or missing_after_s < 0:
            raise ProtoError(f"Election.listen_s and missing_after_s must be >= 0, got {listen_s}, {missing_after_s}")
        self.self_id = self_id
        self.listen_s = listen_s
        self.missing_after_s = missing_after_s
        self.term = 0
        self.coordinator_id: str | None = None
        self.member_ids: frozenset[str] = frozenset([self_id])
        self.may_claim_at_s = now + listen_s
        self.missing_since_s: float | None = None  # when the coordinator was first seen outside the members

    @property
    def is_coordinator(self) -> bool:
        return self.coordinator_id == self.self_id

    def members_changed(self, member_ids: Iterable[str], now: float) -> list:
        """The member set changed (from `MembershipChanged`): a coordinator that left is lost at once."""
        was_member = self.coordinator_id in self.member_ids
        self.member_ids = frozenset(member_ids) | {self.self_id}
        if was_member and self.coordinator_id not in self.member_ids:
            return self._lose() + self.tick(now)
        return self.tick(now)

    def claim_received(self, claim: CoordinatorClaim, now: float) -> list:
        return self._learn(claim.term, claim.candidate_id) + self.tick(now)

    def heartbeat_received(self, term: int, coordinator_id: str, now: float) -> list:
        """A heartbeat says its sender follows `coordinator_id` in `term` ("" = none)."""
        if not coordinator_id:
            return self.tick(now)
        return self._learn(term, coordinator_id) + self.tick(now)

    def tick(self, now: float) -> list:
        """Drop a coordinator that never became a member; claim the role if this is the lowest member id."""
        actions = self._check_missing(now)
        if self.coordinator_id is not None or now < self.may_claim_at_s:
            return actions
        if min(self.member_ids) != self.self_id:
            return actions
        self.term += 1
        self.coordinator_id = self.self_id
        return actions + [SendClaim(CoordinatorClaim(self.term, self.self_id)),
                          CoordinatorElected(self.term, self.self_id, True)]

    def accepts_plan(self, announcement: PlanAnnouncement, fence: Fence) -> bool:
        """Whether to apply an announced plan: from the coordinator of the current term, not older than
        the last applied one. A newer term in the announcement is adopted first."""
        self._learn(announcement.term, announcement.coordinator_id)
        if (announcement.term, announcement.coordinator_id) != (self.term, self.coordinator_id):
            return False
        return fence.accept((announcement.term, announcement.plan.epoch))

    def _check_missing(self, now: float) -> list:
        coordinator = self.coordinator_id
        if coordinator is None or coordinator == self.self_id or coordinator in self.member_ids:
            self.missing_since_s = None
            return []
        if self.missing_since_s is None:
            self.missing_since_s = now
        return self._lose() if now - self.missing_since_s >= self.missing_after_s else []

    def _lose(self) -> list:
        lost = CoordinatorLost(self.term, self.coordinator_id or "")
        self.coordinator_id, self.missing_since_s = None, None
        return [lost]

    def _learn(self, term: int, coordinator_id: str) -> list:
        if term < self.term:
            return []
        if term == self.term and self.coordinator_id is not None and coordinator_id >= self.coordinator_id:
            return []
        was_self = self.is_coordinator
        self.term, self.coordinator_id, self.missing_since_s = term, coordinator_id, None
        if coordinator_id == self.self_id and not was_self:
            self.coordinator_id = None  # news of an earlier life of this peer: claim afresh in tick
            return []
        return [CoordinatorElected(term, coordinator_id, coordinator_id == self.self_id)]
