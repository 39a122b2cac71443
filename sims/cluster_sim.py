"""A plan executing on a simulated cluster: routing, KV transfers, failures, preemptions and re-plans.

How it works: arrivals are chained events (one pending at a time). An arriving request goes to a
prefill (or colocated) replica among those with a `routing.prefill` share that are up: the one with
the least outstanding work per unit of share (DESIGN.md: "by the plan's routing fractions and current
load"; `routing="random"` draws by share instead). When its prompt is done, a decode replica is chosen
the same way among the plan's `routing.kv` pairs of that prefill group, and the KV (at the
problem's `kv_bits`) crosses the bottleneck host link, shared with every other transfer on it
(`network.py`). Requests with nowhere to go wait at the entry (`pending`).
Failures stop the replicas holding a failed GPU; their requests are recovered by the chosen policy:
  * "stateful" (SpotServe section 5, and swarm): resume from the last delivered token — KV moved to
    another decode replica within the grace period if there is one, else the context is re-prefilled;
  * "restart": from scratch (tokens delivered are thrown away).
A re-plan keeps the replicas whose (role, stages) are unchanged, flips roles without moving weights,
and brings new layouts up after their weight-reload time.
"""

from __future__ import annotations

import math

import numpy as np

from sims.core import Simulator
from sims.errors import SimError
from sims.ledger import DONE, QUEUED, Ledger
from sims.network import Network, kv_route
from sims.replica import DecodeReplica, PrefillReplica
from swarm.plan.cost import group_cost, kv_wire_bytes
from swarm.plan.parallel import Deployment
from swarm.plan.problem import Problem
from swarm.wire.plan import Plan

RECOVERY = ("stateful", "restart")
ROUTING = ("load", "random")


class ClusterSim:
    """Runs `plan` for the requests of `ledger`; schedule failures and re-plans before `run`."""

    def __init__(
        self,
        problem: Problem,
        plan: Plan,
        ledger: Ledger,
        *,
        seed: int = 0,
        recovery: str = "stateful",
        routing: str = "load",
        record: bool = False,
    ) -> None:
        if recovery not in RECOVERY:
            raise SimError(f"recovery must be one of {RECOVERY}, got {recovery!r}")
        if routing not in ROUTING:
            raise SimError(f"routing must be one of {ROUTING}, got {routing!r}")
        self.routing = routing
        self.problem, self.ledger, self.recovery = problem, ledger, recovery
        self.sim = Simulator(seed, record=record)
        self.network = Network(self.sim, problem.cluster, problem.efficiency)
        self.dead_gpus: set[str] = set()
        self.pending: list[int] = []
        self.replicas: dict[int, PrefillReplica | DecodeReplica] = {}
        self.up_at_s: dict[int, float] = {}
        self.plan = plan
        self.log: list[tuple[float, str]] = []
        self._stages: dict[int, tuple] = {}
        self._routes: dict[tuple[int, int], tuple[str, str, float]] = {}
        self._install(plan, reload_s=0.0, flip_s=0.0)
        self._next_arrival = 0
        if len(ledger):
            self.sim.at(float(ledger.arrival_s[0]), self._arrive)

    # -- public ---------------------------------------------------------------------------------------
    def run(self, until_s: float = math.inf) -> Ledger:
        self.sim.run(until_s)
        return self.ledger

    def fail_at(self, time_s: float, gpu_ids, *, grace_s: float = 0.0) -> None:
        """GPUs fail at `time_s` (or, with `grace_s` > 0, get a preemption notice with that much time)."""
        self.sim.at(time_s, self._fail, frozenset(gpu_ids), grace_s)

    def replan_at(
        self, time_s: float, plan: Plan, *, reload_s: float, flip_s: float = 0.0, restart: bool = False
    ) -> None:
        """Install `plan` at `time_s`; new layouts serve after `reload_s`, flipped groups after `flip_s`.

        `restart=True` is restart-based recovery: every replica reloads and every request starts over.
        """
        self.sim.at(time_s, self._replan, plan, reload_s, flip_s, restart)

    # -- routing ------------------------------------------------------------------------------------
    def _arrive(self) -> None:
        rid = self._next_arrival
        self._next_arrival += 1
        if self._next_arrival < len(self.ledger):
            self.sim.at(float(self.ledger.arrival_s[self._next_arrival]), self._arrive)
        self._to_prefill(rid)

    def _is_up(self, gid: int) -> bool:
        replica = self.replicas.get(gid)
        return replica is not None and replica.is_alive and self.up_at_s[gid] <= self.sim.now_s

    def _draw(self, options: list[tuple[int, float]]) -> int | None:
        """A replica among `options` (gid, plan share) that is up: the least loaded per unit of share
        ("load", what an entry peer does with load reports), or a draw weighted by share ("random")."""
        live = [(g, s) for g, s in options if self._is_up(g) and s > 0]
        if not live:
            return None
        if self.routing == "load":
            return min(live, key=lambda gs: ((self.replicas[gs[0]].load_tokens + 1.0) / gs[1], gs[0]))[0]
        weights = np.array([s for _, s in live], dtype=np.float64)
        if weights.sum() <= 0:
            weights[:] = 1.0
        pick = self.sim.rng.random() * weights.sum()
        return live[min(int(np.searchsorted(np.cumsum(weights), pick, side="right")), len(live) - 1)][0]

    def _to_prefill(self, rid: int) -> None:
        shares = list(self.plan.routing.prefill.items())
        gid = self._draw(shares) if shares else None
        if gid is None:  # the plan's prefill groups are all down: any prefill-capable replica
            gid = self._draw([(g, 1.0) for g, r in self.replicas.items() if r.role != "decode"])
        if gid is None:
            self.pending.append(rid)
            return
        self.replicas[gid].submit(rid)

    def _prefilled(self, replica: PrefillReplica, batch: list[int]) -> None:
        for rid in batch:
            pairs = [(d, s) for p, d, s in self.plan.routing.kv if p == replica.gid]
            dgid = self._draw(pairs)
            if dgid is None:
                dgid = self._draw([(g, 1.0) for g, r in self.replicas.items() if r.role == "decode"])
            if dgid is None:
                self.pending.append(rid)  # its KV is lost with nowhere to go: re-prefill later
                continue
            self._send_kv(rid, replica.gid, dgid, math.inf)

    def _send_kv(self, rid: int, src_gid: int, dst_gid: int, deadline_s: float) -> None:
        key = (src_gid, dst_gid)
        if key not in self._routes:
            self._routes[key] = kv_route(
                self.problem.cluster,
                self._stages[src_gid],
                self._stages[dst_gid],
                self.problem.model.num_layers,
            )
        src, dst, frac = self._routes[key]
        # the KV of the prompt and of every delivered token but the newest (not yet computed)
        tokens = self.ledger.prompt_tokens[rid] + max(int(self.ledger.tokens_done[rid]) - 1, 0)
        num_bytes = float(kv_wire_bytes(self.problem.model, tokens, self.problem.kv_bits)) * frac
        self.network.send(
            src, dst, num_bytes, self._kv_arrived, rid, self.replicas[dst_gid], self.sim.now_s, deadline_s
        )

    def _kv_arrived(self, rid: int, decode: DecodeReplica, sent_s: float, deadline_s: float) -> None:
        self.ledger.kv_s[rid] += self.sim.now_s - sent_s
        if self.ledger.state[rid] != QUEUED:
            return
        if not decode.is_alive or self.sim.now_s > deadline_s:
            self._recover([rid], has_kv=False)
            return
        decode.admit_kv(rid)

    def _finished(self, rid: int) -> None:
        """A request is complete (the ledger already says so); nothing else to route."""

    # -- failures and plans --------------------------------------------------------------------------
    def _fail(self, gpu_ids: frozenset[str], grace_s: float) -> None:
        self.dead_gpus |= gpu_ids
        self.log.append((self.sim.now_s, f"fail {len(gpu_ids)} GPU(s), grace {grace_s:g} s"))
        hit = [g for g, r in self.replicas.items() if r.is_alive and gpu_ids & set(self._gpus(g))]
        for gid in hit:
            self._retire(gid, deadline_s=self.sim.now_s + grace_s if grace_s > 0 else None)
        self._flush_pending()

    def _retire(self, gid: int, deadline_s: float | None) -> None:
        """Stop replica `gid`; with a deadline (grace period or planned retirement) its KV may move."""
        replica = self.replicas[gid]
        if isinstance(replica, PrefillReplica):
            self._recover(replica.stop(), has_kv=False)
            return
        without_kv, with_kv = replica.stop()
        self._recover(without_kv, has_kv=False)
        targets = [(g, 1.0) for g, r in self.replicas.items() if r.role == replica.role and g != gid]
        for rid in with_kv:
            dgid = self._draw(targets) if deadline_s is not None and self.recovery == "stateful" else None
            if dgid is None:
                self._recover([rid], has_kv=False)
            else:
                self._send_kv(rid, gid, dgid, deadline_s)

    def _recover(self, rids: list[int], *, has_kv: bool) -> None:
        for rid in rids:
            if self.ledger.state[rid] != QUEUED:
                continue
            self.ledger.num_restarts[rid] += 1
            if self.recovery == "restart":
                self.ledger.tokens_done[rid] = 0
            self._to_prefill(rid)

    def _flush_pending(self) -> None:
        waiting, self.pending = self.pending, []
        for rid in waiting:
            self._to_prefill(rid)

    def _replan(self, plan: Plan, reload_s: float, flip_s: float, restart: bool) -> None:
        self.log.append((self.sim.now_s, f"install plan epoch {plan.epoch} ({len(plan.groups)} groups)"))
        old = {(r.role, self._stages[g]): g for g, r in self.replicas.items() if r.is_alive}
        if restart:
            old = {}
        layouts = {self._stages[g]: g for g in old.values()}
        kept = {old[(g.role, g.stages)] for g in plan.groups if (g.role, g.stages) in old}
        stopped = [g for g, r in self.replicas.items() if r.is_alive and g not in kept]
        if restart:
            for gid in stopped:
                for rid in self._stop_all(gid):
                    self.ledger.tokens_done[rid] = 0
                    self.pending.append(rid)
            stopped = []
        survivors = {g: self.replicas[g] for g in kept}
        survivors_up = {g: self.up_at_s[g] for g in kept}
        retiring = {g: (self.replicas[g], self._stages[g]) for g in stopped}
        self._install(plan, reload_s=reload_s, flip_s=flip_s, keep=(survivors, survivors_up, old, layouts))
        for gid, (replica, stages) in retiring.items():  # kept under negative ids while they drain
            self.replicas[-1 - gid], self.up_at_s[-1 - gid], self._stages[-1 - gid] = replica, 0.0, stages
            self._retire(-1 - gid, deadline_s=math.inf)
        self._flush_pending()

    def _stop_all(self, gid: int) -> list[int]:
        replica = self.replicas[gid]
        if isinstance(replica, PrefillReplica):
            return replica.stop()
        a, b = replica.stop()
        return a + b

    # -- building replicas ---------------------------------------------------------------------------
    def _install(self, plan: Plan, *, reload_s: float, flip_s: float, keep=None) -> None:
        survivors, survivors_up, old, layouts = keep or ({}, {}, {}, {})
        by_key = {key: gid for key, gid in old.items()}
        replicas, up_at, stages = {}, {}, {}
        for group in plan.groups:
            if set(group.gpu_ids) & self.dead_gpus:
                raise SimError(
                    f"plan group {group.id} uses failed GPU(s) {sorted(set(group.gpu_ids) & self.dead_gpus)}"
                )
            old_gid = by_key.get((group.role, group.stages))
            if old_gid is not None and old_gid in survivors:
                replica = survivors[old_gid]
                replica.gid = group.id
                replicas[group.id], up_at[group.id] = replica, survivors_up[old_gid]
            else:
                replicas[group.id] = self._build(group)
                delay_s = flip_s if group.stages in layouts else reload_s
                up_at[group.id] = self.sim.now_s + delay_s
                if delay_s > 0:
                    self.sim.after(delay_s, self._flush_pending)
            stages[group.id] = group.stages
        self.plan, self.replicas, self.up_at_s, self._stages = plan, replicas, up_at, stages
        self._routes = {}

    def _build(self, group) -> PrefillReplica | DecodeReplica:
        cost = group_cost(self.problem, Deployment.from_group(group))
        if group.role == "prefill":
            return PrefillReplica(self.sim, group.id, cost, self.ledger, self._prefilled)
        return DecodeReplica(
            self.sim, group.id, cost, self.ledger, self._finished, colocated=group.role == "both"
        )

    def _gpus(self, gid: int) -> list[str]:
        return [g for s in self._stages[gid] for g in s.gpus]

    # -- summaries -----------------------------------------------------------------------------------
    def busy_share(self, horizon_s: float) -> dict[int, float]:
        """Share of the horizon each replica of the current plan spent computing."""
        return {g: r.busy_s / max(horizon_s, 1e-9) for g, r in self.replicas.items()}

    def num_done(self) -> int:
        return int((self.ledger.state == DONE).sum())
