"""This peer's view of the swarm: `swarm.proto` membership and election fed by digests, and the followed plan.

How it works (still sans-IO: time is a parameter, the daemon executes nothing here but logs the actions):
- every peer pushes its `MemberDigest` to every peer it knows each gossip interval and gets the other's
  digest back (push-pull over direct streams, so Noise authenticates the sender). A digest counts as that
  peer's profile (a record signed with its libp2p key, verified by the daemon) and heartbeat for
  `swarm.proto.membership` (dead after 3x the longest of the peer's last 20 gaps between digests,
  capped at the failure timeout, 2 s; suspected after 60% of that; after a closed libp2p connection,
  e.g. a SIGKILL, it leaves within 0.75 s unless a digest arrives). Digests also carry the addresses their
  sender knows, so one bootstrap address finds everyone; liveness is only learned first-hand;
- the serving members feed `swarm.proto.election` (lowest id, sticky, fenced by terms); a digest says
  whom its sender follows in which term, which is how a claim spreads. Bootstrap nodes never claim;
- a plan travels with the (term, coordinator) that published it and is followed only if the election
  accepts it: from the current term's coordinator, and (term, epoch) not older than the last one
  (`Fence`). Older plans are ignored everywhere;
- lighter digests: a digest carries fingerprints of the plan its sender follows and of the peers it knows
  (`plan_hash`, `members_hash`), and the bodies (plan with host map, known addresses) only where the
  receiver may lack them: `trimmed_for` leaves a body out when the receiver's last digest showed the same
  fingerprint, i.e. it holds that plan or knows those peers already. A late joiner (no plan, few peers),
  a peer that missed a change, a restarted one and a peer that predates the fingerprints (empty ones)
  show a different fingerprint, so they get the bodies, in the reply to their own push at the latest.
  In a settled swarm the digest is the sender's own state only (profile, load, term, fingerprints).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from swarm.proto.election import CoordinatorLost, Election, Fence
from swarm.proto.membership import Membership, MembershipChanged, MembershipConfig, PeerLeft
from swarm.wire.hardware import HardwareProfile
from swarm.wire.messages import PlanAnnouncement
from swarm.wire.plan import Plan
from swarm.wire.requests import MemberDigest, PeerAddress, fingerprint

REDIAL_DEAD_S = 2.0  # a dead peer's address is retried this often (it may come back)
FORGET_DEAD_S = 60.0  # after this, a dead peer's address is dropped
SUSPECT_FRACTION = 0.6


@dataclass
class Member:
    digest: MemberDigest
    profile: HardwareProfile | None  # verified from the digest's signed record; None: a bootstrap node
    last_heard_s: float


class SwarmView:
    """Membership, election and the address book of one peer; `self_id` is never in `members`."""

    def __init__(self, self_id: str, *, is_serving: bool, now_s: float, failure_timeout_s: float = 2.0) -> None:
        self.self_id = self_id
        self.is_serving = is_serving
        config = MembershipConfig(suspect_after_s=failure_timeout_s * SUSPECT_FRACTION, dead_after_s=failure_timeout_s,
                                  rejoin_after_s=0.0)
        self.proto = Membership(self_id, config=config)
        # a bootstrap node follows the election but never claims (it serves no model, so cannot plan)
        self.election = Election(self_id, now_s, listen_s=failure_timeout_s if is_serving else math.inf)
        self.fence = Fence()
        self.digests: dict[str, Member] = {}
        self.addrs: dict[str, tuple[str, ...]] = {}
        self.dead_since_s: dict[str, float] = {}
        self.last_dialled_s: dict[str, float] = {}
        self.max_epoch = 0  # highest plan epoch seen anywhere: the next plan's epoch is above it

    @property
    def members(self) -> dict[str, Member]:
        return {p: self.digests[p] for p in self.proto.member_ids if p != self.self_id and p in self.digests}

    @property
    def coordinator_id(self) -> str:
        return self.election.coordinator_id or ""

    def on_digest(self, digest: MemberDigest, profile: HardwareProfile | None, now_s: float) -> list:
        """A digest heard first-hand (its signed profile already verified); returns the proto actions."""
        peer_id = digest.peer_id
        if peer_id == self.self_id:
            return []
        self.digests[peer_id] = Member(digest, profile, now_s)
        self.addrs[peer_id] = digest.addrs
        self.dead_since_s.pop(peer_id, None)
        self.max_epoch = max(self.max_epoch, digest.max_epoch)
        for known in digest.known:
            if known.peer_id != self.self_id and known.peer_id not in self.digests:
                self.addrs.setdefault(known.peer_id, known.addrs)
        actions = self._membership(self.proto.profile_received(peer_id, profile, now_s), now_s)
        return actions + self.election.heartbeat_received(digest.coordinator_term, digest.coordinator_id, now_s)

    def on_disconnect(self, peer_id: str, now_s: float) -> list:
        """The last libp2p connection to `peer_id` closed: it leaves at once."""
        return self._membership(self.proto.disconnected(peer_id, now_s), now_s)

    def tick(self, now_s: float) -> list:
        """Advance time: silent peers are suspected, then removed; the election may claim or drop."""
        actions = self._membership(self.proto.tick(now_s), now_s) + self.election.tick(now_s)
        for peer_id, since in list(self.dead_since_s.items()):
            if now_s - since > FORGET_DEAD_S:
                del self.dead_since_s[peer_id]
                self.addrs.pop(peer_id, None)
                self.digests.pop(peer_id, None)
        return actions

    def accepts_plan(self, plan: Plan, term: int, coordinator_id: str) -> bool:
        """The election's fence: from the current term's coordinator, and not older than the last plan."""
        if not coordinator_id:
            return False
        return self.election.accepts_plan(PlanAnnouncement(term, coordinator_id, plan), self.fence)

    def dial_targets(self, now_s: float) -> list[tuple[str, tuple[str, ...]]]:
        """(peer id, addrs) to push our digest to now: members, new addresses, dead ones now and then."""
        out = []
        for peer_id, addrs in sorted(self.addrs.items()):
            if peer_id in self.dead_since_s and now_s - self.last_dialled_s.get(peer_id, -1e9) < REDIAL_DEAD_S:
                continue
            self.last_dialled_s[peer_id] = now_s
            out.append((peer_id, addrs))
        return out

    def serving_ids(self, *, with_self: bool = True) -> list[str]:
        """Members that serve a model (bootstrap nodes do not), sorted."""
        ids = [p for p, m in self.members.items() if m.profile is not None]
        return sorted(ids + [self.self_id] if with_self and self.is_serving else ids)

    def known(self) -> tuple[PeerAddress, ...]:
        return tuple(PeerAddress(p, m.digest.addrs) for p, m in sorted(self.members.items()) if m.digest.addrs)

    def members_fingerprint(self, known: tuple[PeerAddress, ...], self_addrs: tuple[str, ...]) -> bytes:
        """Fingerprint of the peers this one knows (`known()`) and itself, with their addresses: two peers
        with equal ones know each other and the same others at the same addresses."""
        return fingerprint(sorted([(a.peer_id, a.addrs) for a in known] + [(self.self_id, self_addrs)]))

    def _membership(self, actions: list, now_s: float) -> list:
        for action in actions:
            if isinstance(action, PeerLeft):
                self.dead_since_s[action.peer_id] = now_s
        if any(isinstance(a, MembershipChanged) for a in actions):
            actions = actions + self.election.members_changed(self.serving_ids(), now_s)
        return actions


@dataclass
class PlanHolder:
    """The plan this peer follows, the term and coordinator that published it, and its host -> peer map."""

    plan: Plan | None = None
    hosts: dict[str, str] = field(default_factory=dict)  # host name in the plan -> peer id
    term: int = 0
    coordinator_id: str = ""
    plan_hash: bytes = field(init=False, default=b"")  # `fingerprint` of the above; empty: no plan

    def __post_init__(self) -> None:
        self.plan_hash = plan_fingerprint(self.plan, self.hosts, self.term, self.coordinator_id)

    @property
    def epoch(self) -> int:
        return -1 if self.plan is None else self.plan.epoch

    def offer(self, view: SwarmView, plan: Plan, hosts: dict[str, str], term: int, coordinator_id: str) -> str:
        """Offer a plan heard from a peer: "applied", "same", or "stale" (fenced off or unusable)."""
        missing = {g.split("/")[0] for g in plan.gpu_ids} - set(hosts)
        if missing or not view.accepts_plan(plan, term, coordinator_id):
            return "stale"
        if (plan, hosts, term, coordinator_id) == (self.plan, self.hosts, self.term, self.coordinator_id):
            return "same"
        self.plan, self.hosts, self.term, self.coordinator_id = plan, dict(hosts), term, coordinator_id
        self.plan_hash = plan_fingerprint(plan, self.hosts, term, coordinator_id)
        view.max_epoch = max(view.max_epoch, plan.epoch)
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


def plan_fingerprint(plan: Plan | None, hosts: dict[str, str], term: int, coordinator_id: str) -> bytes:
    """Fingerprint of a followed plan with its host map (sorted), term and coordinator; empty for no plan."""
    return b"" if plan is None else fingerprint((plan, sorted(hosts.items()), term, coordinator_id))


def trimmed_for(digest: MemberDigest, receiver: MemberDigest | None) -> MemberDigest:
    """`digest` as sent to the peer whose last digest heard here is `receiver` (None: none yet): the plan
    and its host map are left out when the receiver showed the same `plan_hash` (it follows that plan),
    the known addresses when it showed the same `members_hash` (it knows the same peers at the same
    addresses). Anything else, an empty (older peer's) fingerprint included, gets the bodies. A receiver
    whose state changed since its last digest may get a body it has, never lack one for long: its next
    digest shows its fingerprints, and the reply to that digest is trimmed for it exactly."""
    if receiver is None:
        return digest
    changes: dict = {}
    if digest.plan is not None and digest.plan_hash and receiver.plan_hash == digest.plan_hash:
        changes.update(plan=None, plan_hosts={})
    if digest.known and digest.members_hash and receiver.members_hash == digest.members_hash:
        changes["known"] = ()
    return dataclasses.replace(digest, **changes) if changes else digest


def peer_stages(group, hosts: dict[str, str]) -> list[tuple[str, int, int]]:
    """(peer id, first layer, last layer) per peer along a group's pipeline: consecutive stages on one peer
    (several of its GPUs) merge into one range, since a peer runs one engine per group."""
    out: list[tuple[str, int, int]] = []
    for stage in group.stages:
        peer = hosts[stage.gpus[0].split("/")[0]]
        if out and out[-1][0] == peer:
            out[-1] = (peer, out[-1][1], stage.layers[1])
        else:
            out.append((peer, *stage.layers))
    return out


@dataclass(frozen=True)
class Placement:
    """One peer's part of one group of a plan: its engine's role and layers, where it sits in the group's
    pipeline, and `gpu_index`, the i of the group's first GPU "host/i" on this peer (its device on CUDA)."""

    group_id: int
    role: str
    stage: int  # index of this peer's part along the group's pipeline (`peer_stages`); 0: the head
    num_stages: int
    first_layer: int
    last_layer: int
    next_peer: str | None  # the peer of the next part, None on the last
    gpu_index: int

    def describe(self) -> str:
        """E.g. "group 2 (decode, stage 1 of 2, layers 0-15)"."""
        where = f"stage {self.stage + 1} of {self.num_stages}, " if self.num_stages > 1 else ""
        return f"group {self.group_id} ({self.role}, {where}layers {self.first_layer}-{self.last_layer})"


def placements(plan: Plan | None, hosts: dict[str, str], peer_id: str) -> list[Placement]:
    """This peer's part of every group of `plan` with a GPU on its host(s), by group id: a peer with several
    GPUs runs one engine per group it is in (`is_servable` guarantees one consecutive range per group)."""
    if plan is None:
        return []
    out = []
    for group in plan.groups:
        stages = peer_stages(group, hosts)
        index = next((i for i, (peer, _, _) in enumerate(stages) if peer == peer_id), None)
        if index is None:
            continue
        gpu = next(gpu for stage in group.stages for gpu in stage.gpus if hosts.get(gpu.split("/")[0]) == peer_id)
        _, first, last = stages[index]
        next_peer = stages[index + 1][0] if index + 1 < len(stages) else None
        out.append(Placement(group.id, group.role, index, len(stages), first, last, next_peer,
                             gpu_index(gpu)))
    return out


def gpu_index(gpu_id: str) -> int:
    """The i of a plan GPU id "host/i" (0 for one without an index)."""
    _, _, index = gpu_id.partition("/")
    return int(index) if index.isdigit() else 0


def ready_groups(digest: MemberDigest, holder: PlanHolder) -> set[int]:
    """The groups of the followed plan a member's digest says it is ready for. A digest from a peer that
    predates per-group readiness (`ready_groups` empty, `ready_epoch` set) counts for its first group,
    the only one such a peer serves."""
    if digest.ready_epoch < 0 or digest.ready_epoch != holder.epoch:
        return set()
    if digest.ready_groups:
        return set(digest.ready_groups)
    return set(holder.groups_of_peer(digest.peer_id)[:1])


def ready_group_ids(holder: PlanHolder, ready: dict[str, set[int]]) -> set[int]:
    """Groups of the followed plan every peer of which is ready for it (`ready`: peer id -> its groups)."""
    if holder.plan is None:
        return set()
    out = set()
    for group in holder.plan.groups:
        peers = {holder.hosts.get(gpu.split("/")[0]) for gpu in group.gpu_ids}
        if all(peer is not None and group.id in ready.get(peer, ()) for peer in peers):
            out.add(group.id)
    return out


def is_servable(plan: Plan, hosts: dict[str, str]) -> str:
    """"" if every group can be served here, else why not. Any group may be a pipeline across peers (prefill
    and decode pipelines hand KV over per layer slice, `peers.kvroute`), and a peer may serve several groups
    (one engine each), but one group's engine on a peer holds one consecutive layer range, so a group cannot
    put two of its stages on a peer with another peer's stage between them."""
    for group in plan.groups:
        peers = [peer for peer, _, _ in peer_stages(group, hosts)]
        twice = sorted({peer for peer in peers if peers.count(peer) > 1})
        if twice:
            return (f"group {group.id} puts stages on peer(s) {', '.join(twice)} on both sides of another peer's "
                    "stage; a peer runs one engine per group, which holds one consecutive layer range")
    return ""


def describe_action(action) -> str | None:
    """An operator's log line for a proto action, or None for the ones not worth a line."""
    name = type(action).__name__
    if name == "PeerJoined":
        profile = action.profile
        what = f"{profile.gpu}x{profile.num_gpus} on {profile.host}" if profile is not None else "bootstrap node"
        return f"peer {action.peer_id} joined ({what})"
    if name == "PeerLeft":
        return f"peer {action.peer_id} left the swarm ({action.reason})"
    if name == "PeerSuspected":
        return f"peer {action.peer_id} is silent; suspected"
    if name == "CoordinatorElected":
        return f"coordinator for term {action.term}: {'this peer' if action.is_self else action.coordinator_id}"
    if isinstance(action, CoordinatorLost):
        return f"coordinator {action.coordinator_id} of term {action.term} is gone"
    return None
