"""Membership, failure detection, coordinator election and plan fencing: a sans-IO state machine.

How it works (time is a parameter; the daemon feeds events and executes nothing here):
- Every peer pushes its `MemberDigest` to every peer it knows each `gossip_interval_s` and gets the
  other's digest back (push-pull). A peer is alive while a digest from it arrived within
  `failure_timeout_s`; a closed connection (noticed by libp2p in about 0.2 s, also after SIGKILL) kills
  it at once. Digests also carry the addresses of the peers their sender knows, so one bootstrap address
  is enough to find everyone; liveness is only ever learned first-hand.
- Election: the coordinator is the alive *serving* peer with the smallest peer id (a bully election
  without messages: every peer with the same view picks the same one). A new coordinator publishes its
  plans with epochs above every epoch it has seen (`term`), so
- fencing: a plan is applied only if its epoch is above the one held; every older one is ignored,
  everywhere. Two plans of one epoch (two coordinators during a brief split view) are settled the same
  way on every peer: the one whose canonical JSON sorts first wins, so the swarm converges on one plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from swarm.wire.plan import Plan
from swarm.wire.requests import MemberDigest, PeerAddress

REDIAL_DEAD_S = 2.0  # a dead peer's address is retried this often (it may come back)
FORGET_DEAD_S = 60.0  # after this, a dead peer's address is dropped


@dataclass
class Member:
    digest: MemberDigest
    last_heard_s: float


@dataclass
class Membership:
    """This peer's view of the swarm; `self_id` is never in `members`."""

    self_id: str
    failure_timeout_s: float = 2.0
    members: dict[str, Member] = field(default_factory=dict)
    addrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    dead_since_s: dict[str, float] = field(default_factory=dict)
    last_dialled_s: dict[str, float] = field(default_factory=dict)
    term: int = 0  # highest plan epoch seen anywhere

    def on_digest(self, digest: MemberDigest, now_s: float) -> bool:
        """A digest heard first-hand. Returns True if the sender is new or came back."""
        if digest.peer_id == self.self_id:
            return False
        is_new = digest.peer_id not in self.members
        self.members[digest.peer_id] = Member(digest, now_s)
        self.addrs[digest.peer_id] = digest.addrs
        self.dead_since_s.pop(digest.peer_id, None)
        self.term = max(self.term, digest.term)
        for known in digest.known:
            if known.peer_id != self.self_id and known.peer_id not in self.members:
                self.addrs.setdefault(known.peer_id, known.addrs)
        return is_new

    def on_disconnect(self, peer_id: str, now_s: float) -> bool:
        """The last connection to `peer_id` closed. Returns True if it was a member."""
        return self._remove(peer_id, now_s)

    def expire(self, now_s: float) -> list[str]:
        """Members not heard from within the failure timeout; they are removed."""
        late = [p for p, m in self.members.items() if now_s - m.last_heard_s > self.failure_timeout_s]
        for peer_id in late:
            self._remove(peer_id, now_s)
        for peer_id, since in list(self.dead_since_s.items()):
            if now_s - since > FORGET_DEAD_S:
                del self.dead_since_s[peer_id]
                self.addrs.pop(peer_id, None)
        return late

    def dial_targets(self, now_s: float) -> list[tuple[str, tuple[str, ...]]]:
        """(peer id, addrs) to push our digest to now: members, new addresses, dead ones now and then."""
        out = []
        for peer_id, addrs in sorted(self.addrs.items()):
            if peer_id in self.dead_since_s and now_s - self.last_dialled_s.get(peer_id, -1e9) < REDIAL_DEAD_S:
                continue
            self.last_dialled_s[peer_id] = now_s
            out.append((peer_id, addrs))
        return out

    def alive_ids(self) -> list[str]:
        return sorted([self.self_id, *self.members])

    def serving_ids(self, is_self_serving: bool) -> list[str]:
        """Alive peers that serve a model (bootstrap nodes do not)."""
        ids = [p for p, m in self.members.items() if m.digest.profile is not None]
        return sorted(ids + [self.self_id] if is_self_serving else ids)

    def coordinator_id(self, is_self_serving: bool) -> str:
        """The alive serving peer with the smallest id; "" if none."""
        ids = self.serving_ids(is_self_serving)
        return ids[0] if ids else ""

    def known(self) -> tuple[PeerAddress, ...]:
        return tuple(PeerAddress(p, m.digest.addrs) for p, m in sorted(self.members.items()) if m.digest.addrs)

    def _remove(self, peer_id: str, now_s: float) -> bool:
        if peer_id not in self.members:
            return False
        del self.members[peer_id]
        self.dead_since_s[peer_id] = now_s
        return True


@dataclass
class PlanHolder:
    """The plan this peer follows, with the fencing rule of the module docstring."""

    plan: Plan | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # host name in the plan -> peer id

    @property
    def epoch(self) -> int:
        return -1 if self.plan is None else self.plan.epoch

    def offer(self, plan: Plan, hosts: dict[str, str]) -> str:
        """Offer a plan heard from a peer: "applied", "same" or "stale" (ignored)."""
        if self.plan is not None and plan.epoch < self.plan.epoch:
            return "stale"
        if self.plan is not None and plan.epoch == self.plan.epoch:
            if plan == self.plan and hosts == self.hosts:
                return "same"
            if (plan.to_json(None), sorted(hosts.items())) >= (self.plan.to_json(None), sorted(self.hosts.items())):
                return "stale"
        missing = {g.split("/")[0] for g in plan.gpu_ids} - set(hosts)
        if missing:
            return "stale"  # a plan whose hosts we cannot map to peers cannot be followed
        self.plan, self.hosts = plan, dict(hosts)
        return "applied"

    def peer_of_group(self, group_id: int) -> str:
        """The peer holding the first stage of a group."""
        assert self.plan is not None
        return self.hosts[self.plan.group(group_id).stages[0].gpus[0].split("/")[0]]

    def groups_of_peer(self, peer_id: str) -> list[int]:
        """Ids of the groups with a GPU on `peer_id`'s host(s)."""
        if self.plan is None:
            return []
        names = {h for h, p in self.hosts.items() if p == peer_id}
        return [g.id for g in self.plan.groups if any(gpu.split("/")[0] in names for gpu in g.gpu_ids)]
