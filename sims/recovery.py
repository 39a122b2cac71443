"""Re-planning policies during a run, and how fast SLO attainment recovers after an event.

Costs of a re-plan in simulated time (assumptions, stated in docs/simulator.md):
  * planner time: the planner's measured wall time on this machine;
  * lightweight (ThunderServe section 4.4): roles flip in place, no weights move (FLIP_S);
  * full: each GPU loads the weight bytes Kuhn-Munkres matching could not keep in place
    (`swarm.plan.match_migration`) at LOAD_GBPS, after an engine restart (ENGINE_START_S).
    Installed "break before make" (`install`), the replicas the new plan changes stop at once and
    their GPUs serve nothing until the reload is done. Installed "make before break"
    (`install(..., make_before_break=True)`, what swarm does, as SpotServe's migration keeps instances
    serving while parameters move): the old plan keeps serving while each GPU's new weights are
    staged in host memory and its new engine process starts beside the old one (its CUDA context fits
    in the memory the engine leaves free, 1 - MEMORY_UTILISATION); only the cut-over stops it: the old
    engine exits, the staged weights cross PCIe (PCIE_GBPS) and the KV pool is set up (CUTOVER_BASE_S).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sims.baselines import plan_system
from sims.cluster_sim import ClusterSim
from sims.ledger import Ledger, meets_slo
from swarm.plan import match_migration, replan
from swarm.plan.problem import Problem
from swarm.wire.plan import Plan

LOAD_GBPS = 8.0  # weights from local NVMe or a peer, about 1 GB/s per GPU
ENGINE_START_S = 20.0  # process start, CUDA context, allocator warm-up
FLIP_S = 0.1  # switching a replica's phase: drain bookkeeping only
PCIE_GBPS = 80.0  # host to GPU, PCIe 3.0 x16 at about 10 GB/s (T4, V100 and the cloud-32 GPUs are 3.0 or 4.0)
CUTOVER_BASE_S = 2.0  # old engine exit, new engine's KV pool allocation and warm-up


@dataclass(frozen=True)
class Replanned:
    plan: Plan
    planner_s: float
    reload_s: float
    kind: str
    cutover_s: float = 0.0  # of reload_s, the part that stops serving when installed make-before-break


def lightweight(problem: Problem, current: Plan) -> Replanned:
    """Keep the surviving groups, re-decide roles and routing (no weights move)."""
    start = time.perf_counter()
    evaluation = replan(problem, current)
    return Replanned(evaluation.plan, time.perf_counter() - start, 0.0, "lightweight")


def full(problem: Problem, current: Plan, *, budget_s: float, seed: int = 0) -> Replanned:
    """A new search on the problem's cluster; GPUs then load what the migration could not keep."""
    start = time.perf_counter()
    new = plan_system("swarm", problem, budget_s=budget_s, seed=seed).plan.with_epoch(current.epoch + 1)
    migration = match_migration(current, new, problem.model, available=problem.cluster.gpu_ids)
    planner_s = time.perf_counter() - start
    return Replanned(migration.plan, planner_s, reload_time_s(migration.loads), "full",
                     cutover_time_s(migration.loads))


def reload_time_s(loads) -> float:
    """Time until every GPU has its new weights: the largest per-GPU load, plus an engine restart."""
    if not loads:
        return 0.0
    return ENGINE_START_S + max(load.num_bytes for load in loads) * 8 / (LOAD_GBPS * 1e9)


def cutover_time_s(loads) -> float:
    """The serving pause of a make-before-break install: weights staged in host memory cross PCIe."""
    if not loads:
        return 0.0
    return CUTOVER_BASE_S + max(load.num_bytes for load in loads) * 8 / (PCIE_GBPS * 1e9)


def full_reload_s(problem: Problem, plan: Plan) -> float:
    """Restart-based recovery: every GPU loads its whole shard."""
    per_gpu = max(problem.model.stage_weight_bytes(*s.layers) / g.tp for g in plan.groups for s in g.stages)
    return ENGINE_START_S + per_gpu * 8 / (LOAD_GBPS * 1e9)


def install(sim: ClusterSim, at_s: float, replanned: Replanned, *, make_before_break: bool = False,
            not_before_s: float = 0.0) -> float:
    """Schedule the new plan once the planner is done; returns when it starts serving (incl. reload).

    `make_before_break`: the current plan serves on while the new weights are staged, and the new plan
    is installed only for the cut-over (`Replanned.cutover_s`). `not_before_s`: the new plan is not
    installed before then (a preemption notice: the doomed replicas serve on until shortly before
    they go, and only then hand their requests and KV over)."""
    ready_s = at_s + replanned.planner_s
    if not make_before_break or replanned.reload_s == 0:
        install_s = max(ready_s, not_before_s)
        sim.replan_at(install_s, replanned.plan, reload_s=replanned.reload_s, flip_s=FLIP_S)
        return install_s + replanned.reload_s
    install_s = max(ready_s + replanned.reload_s - replanned.cutover_s, not_before_s)
    sim.replan_at(install_s, replanned.plan, reload_s=replanned.cutover_s, flip_s=FLIP_S)
    return install_s + replanned.cutover_s


def recovery_time_s(
    ledger: Ledger,
    ttft_s: float,
    tpot_s: float,
    event_s: float,
    *,
    window_s: float = 10.0,
    share: float = 0.9,
    before_s: float = 60.0,
    end_s: float | None = None,
    reference: Ledger | None = None,
    first: bool = False,
) -> tuple[float, float]:
    """(seconds after `event_s` from which every `window_s` window of arrivals meets the SLO at `share`
    of the pre-event attainment (over the `before_s` before the event), that pre-event attainment).

    Windows start at each arrival after the event and must end by `end_s` (default: the last arrival);
    0 if no window after the event falls short, inf if the last one still does. With `reference` (the same
    arrivals run without the event) each window must reach `share` of the reference's attainment over
    the same arrivals, and the pre-event attainment is the reference's: the workload's own ups and downs
    then cancel out, and requests still running when the event struck do not lower the baseline.
    `first=True`: the start of the first window that meets it instead (inf if none does).
    """
    ok = meets_slo(ledger, ttft_s, tpot_s).astype(np.float64)
    base_ok = ok if reference is None else meets_slo(reference, ttft_s, tpot_s).astype(np.float64)
    t = ledger.arrival_s
    end_s = float(t[-1]) if end_s is None else end_s
    pre = (t >= event_s - before_s) & (t < event_s)
    baseline = float(base_ok[pre].mean()) if pre.any() else 1.0
    after = np.flatnonzero((t >= event_s) & (t + window_s <= end_s))
    if len(after) == 0:
        return 0.0, baseline
    ends = np.searchsorted(t, t[after] + window_s)
    attainment = _window_means(ok, after, ends)
    target = share * (baseline if reference is None else _window_means(base_ok, after, ends))
    if first:
        good = np.flatnonzero(attainment >= target - 1e-12)
        return (float(t[after[good[0]]] - event_s) if len(good) else float("inf")), baseline
    bad = np.flatnonzero(attainment < target - 1e-12)
    if len(bad) == 0:
        return 0.0, baseline
    if bad[-1] == len(after) - 1:
        return float("inf"), baseline
    return float(t[after[bad[-1] + 1]] - event_s), baseline


def _window_means(ok: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    cum = np.concatenate(([0.0], np.cumsum(ok)))
    return (cum[ends] - cum[starts]) / np.maximum(ends - starts, 1)
