"""Migration matching: which GPU takes which position of a new plan, so that the most weights stay put.

How it works (SpotServe, ASPLOS 2024, section 5 "migration planning": device-to-position mapping as a
bipartite matching solved with Kuhn–Munkres, maximising the parameters that stay where they are).
A position of a plan is (group, stage, tensor-parallel rank). GPUs of one host are interchangeable (same
type, same links), so the new plan may give any of its positions on a host to any of its GPUs on that
host without changing its predicted quality. Per host, the weight of (GPU g, new position p) is the
bytes g already holds (its old position) that p needs:

    kept(g, p) = stage_weight_bytes(layer overlap) x |shard(old rank) ∩ shard(new rank)|

where the TP shard of rank r of tp is the interval [r/tp, (r+1)/tp) of every weight matrix. The
Hungarian algorithm (`assign_max`, written here in numpy) picks the mapping with the most bytes kept;
then old groups are matched to new groups the same way (kept bytes between them) so that a replica's
in-flight requests know where they continue. The result lists, per GPU, the layers it must load.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace

import numpy as np

from swarm.models import ModelSpec
from swarm.wire.plan import Plan, Stage


@dataclass(frozen=True)
class Position:
    """One GPU's slot in a plan: its group, stage index, TP rank, layer range and TP degree."""

    group_id: int
    stage: int
    rank: int
    layers: tuple[int, int]
    tp: int


@dataclass(frozen=True)
class Load:
    """Weights one GPU must fetch for its new position (bytes include only what it lacks)."""

    gpu: str
    layers: tuple[int, int]
    rank: int
    tp: int
    num_bytes: int


@dataclass(frozen=True)
class Migration:
    """The new plan with GPUs remapped within hosts, what each GPU loads, and the bytes kept vs moved."""

    plan: Plan
    loads: tuple[Load, ...]
    kept_bytes: int
    moved_bytes: int
    group_map: dict[int, int]  # old group id -> new group id inheriting its requests

    @property
    def kept_share(self) -> float:
        total = self.kept_bytes + self.moved_bytes
        return self.kept_bytes / total if total else 1.0


def assign_max(weights: np.ndarray) -> list[tuple[int, int]]:
    """Row-to-column pairs of maximum total weight (each row and column used at most once)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or 0 in w.shape:
        return []
    if w.shape[0] > w.shape[1]:
        return sorted((r, c) for c, r in assign_max(w.T))
    cols = _hungarian_min(w.max() - w)
    return [(r, int(c)) for r, c in enumerate(cols)]


def _hungarian_min(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost assignment of every row (n <= m): the column of each row.

    Shortest augmenting paths with row/column potentials (Kuhn–Munkres in O(n^2 m)); index 0 of the
    padded arrays is a virtual column that the path starts from.
    """
    n, m = cost.shape
    u, v = np.zeros(n + 1), np.zeros(m + 1)
    row_of = np.zeros(m + 1, dtype=np.int64)  # row_of[j]: row (1-based) assigned to column j, 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        row_of[0], j0 = i, 0
        min_to = np.full(m + 1, np.inf)
        used = np.zeros(m + 1, dtype=bool)
        while row_of[j0] != 0:
            used[j0] = True
            i0 = row_of[j0]
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = ~used[1:] & (reduced < min_to[1:])
            min_to[1:][better] = reduced[better]
            way[1:][better] = j0
            free = np.where(used[1:], np.inf, min_to[1:])
            j1 = int(np.argmin(free)) + 1
            delta = free[j1 - 1]
            u[row_of[used]] += delta
            v[used] -= delta
            min_to[1:][~used[1:]] -= delta
            j0 = j1
        while j0:
            j1 = way[j0]
            row_of[j0] = row_of[j1]
            j0 = j1
    cols = np.zeros(n, dtype=np.int64)
    for j in range(1, m + 1):
        if row_of[j]:
            cols[row_of[j] - 1] = j - 1
    return cols


def positions(plan: Plan) -> dict[str, Position]:
    """Each GPU of the plan and its position."""
    found = {}
    for g in plan.groups:
        for s, stage in enumerate(g.stages):
            for rank, gpu in enumerate(stage.gpus):
                found[gpu] = Position(g.id, s, rank, stage.layers, g.tp)
    return found


def kept_bytes(model: ModelSpec, old: Position | None, new: Position) -> int:
    """Bytes of `new`'s weight shard that a GPU holding `old` already has."""
    if old is None:
        return 0
    a, b = max(old.layers[0], new.layers[0]), min(old.layers[1], new.layers[1])
    if a >= b:
        return 0
    lo = max(old.rank / old.tp, new.rank / new.tp)
    hi = min((old.rank + 1) / old.tp, (new.rank + 1) / new.tp)
    return int(model.stage_weight_bytes(a, b) * max(0.0, hi - lo))


def shard_bytes(model: ModelSpec, position: Position) -> int:
    return model.stage_weight_bytes(*position.layers) // position.tp


def match_migration(old: Plan, new: Plan, model: ModelSpec, available: Collection[str] | None = None) -> Migration:
    """Remap `new`'s GPUs within hosts to keep the most weight bytes of `old` in place.

    `available` (e.g. the new cluster's GPU ids) may add GPUs that `new` leaves idle: a position can
    move to such a GPU of the same host if it already holds the weights. Without it only the GPUs
    `new` names are permuted.
    """
    old_at, new_at = positions(old), positions(new)
    spare = _by_host(g for g in (available or ()) if g not in new_at)
    remap = {}
    for host, host_gpus in _by_host(new_at).items():
        remap.update(_match_host(model, old_at, new_at, host_gpus, host_gpus + spare.get(host, [])))
    plan = _remapped(new, remap)
    new_at = positions(plan)
    loads, kept, moved = [], 0, 0
    for gpu, pos in new_at.items():
        keep = kept_bytes(model, old_at.get(gpu), pos)
        need = shard_bytes(model, pos) - keep
        kept, moved = kept + keep, moved + need
        if need > 0:
            loads.append(Load(gpu, pos.layers, pos.rank, pos.tp, need))
    return Migration(plan, tuple(loads), kept, moved, _group_map(model, old, plan, old_at, new_at))


def _by_host(gpus: Iterable[str]) -> dict[str, list[str]]:
    hosts: dict[str, list[str]] = {}
    for gpu in gpus:
        hosts.setdefault(gpu.rpartition("/")[0], []).append(gpu)
    return hosts


def _match_host(model: ModelSpec, old_at: dict[str, Position], new_at: dict[str, Position],
                slots: list[str], gpus: list[str]) -> dict[str, str]:
    """{GPU named at a position by the new plan: GPU of the same host that takes that position}."""
    weights = np.array([[kept_bytes(model, old_at.get(g), new_at[s]) for g in gpus] for s in slots],
                       dtype=np.float64)
    if not weights.any():
        return {s: s for s in slots}
    # Among equals prefer what the new plan named: a tiny bonus (< 1 byte) on those pairs.
    weights[:, :len(slots)] += np.eye(len(slots)) * 1e-3
    return {slots[s]: gpus[g] for s, g in assign_max(weights)}


def _remapped(plan: Plan, remap: dict[str, str]) -> Plan:
    groups = tuple(replace(g, stages=tuple(Stage(tuple(remap.get(x, x) for x in s.gpus), s.layers)
                                           for s in g.stages)) for g in plan.groups)
    return replace(plan, groups=groups)


def _group_map(model: ModelSpec, old: Plan, new: Plan, old_at: dict[str, Position],
               new_at: dict[str, Position]) -> dict[int, int]:
    """Old group -> new group sharing the most kept bytes (Kuhn–Munkres; unmatched groups left out)."""
    old_ids, new_ids = [g.id for g in old.groups], [g.id for g in new.groups]
    weights = np.zeros((len(old_ids), len(new_ids)))
    for gpu, pos in new_at.items():
        before = old_at.get(gpu)
        if before is not None:
            weights[old_ids.index(before.group_id), new_ids.index(pos.group_id)] += kept_bytes(model, before, pos)
    return {old_ids[r]: new_ids[c] for r, c in assign_max(weights) if weights[r, c] > 0}
