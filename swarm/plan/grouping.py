"""GPU groupings for the upper level: the initial grouping by bandwidth clustering, and the moves.

How it works (ThunderServe, MLSys 2025, section 4.1 "upper level"). A grouping partitions every GPU of
the cluster into groups, one model replica each, with a role per group. GPUs of a group that cannot
hold the model are simply left idle by `evaluate`, so every partition is a valid search state.

Initial grouping: single-linkage agglomerative clustering of hosts on the bandwidth matrix. Hosts with
room for two or more replicas are first cut into power-of-two chunks that each just hold the model;
then the two "open" clusters (too small for the model) with the fastest link between them are merged,
until no open cluster is left (a last one joins its best-linked closed cluster).

Moves (the neighbourhood): flip a group's role; split a group (one host peeled off, a single host
halved, or the host chain cut at its weakest link); merge two groups; move one host's part of a group,
or one GPU, to another group; swap equal-sized host parts of two groups. Merges and moves only target
the MAX_PARTNERS best-linked groups, which keeps the neighbourhood linear in the cluster size.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from swarm.plan.cost import MEMORY_UTILISATION, MIN_KV_TOKENS
from swarm.plan.problem import Problem

MAX_PARTNERS = 4
# A group "holds the model" (for clustering and move filters) if its usable memory covers the weights
# and one MIN_KV_TOKENS sequence, times this margin for activations; `configure` has the last word.
FIT_MARGIN = 1.05

Group = tuple[tuple[str, ...], str]  # (GPU ids in cluster order, role)
Grouping = tuple[Group, ...]  # groups in order of their first GPU


@dataclass(frozen=True)
class Move:
    """A neighbourhood move: `removed` groups are replaced by `added` groups."""

    kind: str
    removed: tuple[Group, ...]
    added: tuple[Group, ...]


class Topology:
    """Per-problem lookups: each GPU's host index and memory, and the host bandwidth matrix (Gbit/s)."""

    def __init__(self, problem: Problem) -> None:
        cluster, model = problem.cluster, problem.model
        self.problem = problem
        self.order = problem.gpu_order
        self.hosts = [h.name for h in cluster.hosts]
        self.host_of = {g: i for i, h in enumerate(cluster.hosts) for g in h.gpu_ids}
        self.memory_bytes = {g: h.gpu.memory_bytes for h in cluster.hosts for g in h.gpu_ids}
        self.need_bytes = FIT_MARGIN * (model.weight_bytes + MIN_KV_TOKENS * model.kv_bytes_per_token)
        n = len(self.hosts)
        self.gbps = np.array([[cluster.host_gbps(a, b) for b in self.hosts] for a in self.hosts]).reshape(n, n)

    def holds_model(self, gpu_ids) -> bool:
        return MEMORY_UTILISATION * sum(self.memory_bytes[g] for g in gpu_ids) >= self.need_bytes

    def sorted_ids(self, gpu_ids) -> tuple[str, ...]:
        return tuple(sorted(gpu_ids, key=self.order.__getitem__))

    def host_parts(self, gpu_ids) -> dict[int, list[str]]:
        parts: dict[int, list[str]] = {}
        for g in gpu_ids:
            parts.setdefault(self.host_of[g], []).append(g)
        return parts

    def link_gbps(self, a_ids, b_ids) -> float:
        """Single linkage: the fastest host link between two GPU sets."""
        ha = sorted({self.host_of[g] for g in a_ids})
        hb = sorted({self.host_of[g] for g in b_ids})
        return float(self.gbps[np.ix_(ha, hb)].max())

    @cached_property
    def chunk_gpus(self) -> list[int]:
        """Per host: the smallest power-of-two number of its GPUs that holds the model (0: none does)."""
        sizes = []
        for h in self.problem.cluster.hosts:
            ids, size = h.gpu_ids, 1
            while size <= len(ids) and not self.holds_model(ids[:size]):
                size *= 2
            sizes.append(size if size <= len(ids) else 0)
        return sizes


_TOPOLOGIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def topology(problem: Problem) -> Topology:
    if problem not in _TOPOLOGIES:
        _TOPOLOGIES[problem] = Topology(problem)
    return _TOPOLOGIES[problem]


def canonical(topo: Topology, groups) -> Grouping:
    """Groups with sorted GPU ids, ordered by their first GPU: equal groupings compare equal."""
    found = [(topo.sorted_ids(ids), role) for ids, role in groups if ids]
    return tuple(sorted(found, key=lambda g: topo.order[g[0][0]]))


def apply_move(topo: Topology, grouping: Grouping, move: Move) -> Grouping:
    kept = [g for g in grouping if g not in move.removed]
    return canonical(topo, kept + list(move.added))


def initial_clusters(topo: Topology) -> list[tuple[str, ...]]:
    """GPU sets from hierarchical clustering of the bandwidth matrix, each just large enough for the model."""
    atoms = _atoms(topo)
    closed = [a for a in atoms if topo.holds_model(a)]
    open_ = [a for a in atoms if not topo.holds_model(a)]
    while len(open_) > 1:
        i, j = _fastest_pair(topo, open_)
        merged = open_[i] + open_[j]
        open_ = [a for k, a in enumerate(open_) if k not in (i, j)]
        (closed if topo.holds_model(merged) else open_).append(merged)
    if open_ and closed:
        k = max(range(len(closed)), key=lambda c: (topo.link_gbps(open_[0], closed[c]), -c))
        closed[k] = closed[k] + open_.pop()
    return [topo.sorted_ids(c) for c in closed + open_]


def _atoms(topo: Topology) -> list[tuple[str, ...]]:
    """Whole hosts, except hosts that can hold two replicas or more, cut into chunks that hold one."""
    atoms = []
    for h, size in zip(topo.problem.cluster.hosts, topo.chunk_gpus, strict=True):
        ids = h.gpu_ids
        if size == 0 or 2 * size > len(ids):
            atoms.append(tuple(ids))
            continue
        chunks = [tuple(ids[i:i + size]) for i in range(0, len(ids), size)]
        if len(chunks[-1]) < size:  # a remainder that cannot hold the model joins the previous chunk
            chunks[-2:] = [chunks[-2] + chunks[-1]]
        atoms.extend(chunks)
    return atoms


def _fastest_pair(topo: Topology, clusters: list[tuple[str, ...]]) -> tuple[int, int]:
    """The pair with the fastest link; ties go to the smaller merged memory, then the earlier pair."""
    best, best_key = (0, 1), None
    for i in range(len(clusters)):
        for j in range(i + 1, len(clusters)):
            memory = sum(topo.memory_bytes[g] for g in clusters[i] + clusters[j])
            key = (topo.link_gbps(clusters[i], clusters[j]), -memory)
            if best_key is None or key > best_key:
                best, best_key = (i, j), key
    return best


def prefill_affinity(topo: Topology, gpu_ids) -> float:
    """FLOP/s per byte/s of memory bandwidth: compute-heavy groups suit prefill (ThunderServe 4.1)."""
    cluster = topo.problem.cluster
    specs = [cluster.gpu(g) for g in gpu_ids]
    return sum(s.tflops for s in specs) / sum(s.memory_bandwidth_gbs for s in specs)


def neighbours(topo: Topology, grouping: Grouping, rng, allowed_roles: tuple[str, ...],
               max_moves: int) -> list[Move]:
    """The moves from `grouping`: all of them, or `max_moves` drawn round-robin over the move kinds."""
    partners = _partners(topo, grouping)
    kinds = [_flips(grouping, allowed_roles), _splits(topo, grouping, allowed_roles),
             _merges(grouping, partners, allowed_roles), _transfers(topo, grouping, partners),
             _swaps(topo, grouping, partners)]
    if sum(len(k) for k in kinds) <= max_moves:
        return [m for k in kinds for m in k]
    for k in kinds:
        rng.shuffle(k)
    picked: list[Move] = []
    while len(picked) < max_moves:
        for k in kinds:
            if k and len(picked) < max_moves:
                picked.append(k.pop())
    return picked


def _partners(topo: Topology, grouping: Grouping) -> list[list[int]]:
    """For each group, the MAX_PARTNERS other groups with the fastest links to it (ties: earlier first)."""
    hosts = [sorted({topo.host_of[g] for g in ids}) for ids, _ in grouping]
    reach = np.stack([topo.gbps[h].max(axis=0) for h in hosts])  # (groups, hosts): best link to each host
    link = np.stack([reach[:, h].max(axis=1) for h in hosts], axis=1)  # (groups, groups)
    partners = []
    for i in range(len(grouping)):
        others = [j for j in np.argsort(-link[i], kind="stable") if j != i]
        partners.append([int(j) for j in others[:MAX_PARTNERS]])
    return partners


def _flips(grouping: Grouping, allowed_roles: tuple[str, ...]) -> list[Move]:
    return [Move("flip", (g,), ((g[0], role),)) for g in grouping for role in allowed_roles if role != g[1]]


def _role_pairs(role: str, allowed_roles: tuple[str, ...]) -> list[tuple[str, str]]:
    pairs = [(role, role)] if role in allowed_roles else []
    for other in allowed_roles:
        if other != role:
            pairs += [(role, other), (other, role)] if role in allowed_roles else [(other, other)]
    return pairs


def _splits(topo: Topology, grouping: Grouping, allowed_roles: tuple[str, ...]) -> list[Move]:
    moves = []
    for group in grouping:
        ids, role = group
        parts = topo.host_parts(ids)
        if len(parts) == 1:
            halves = [(ids[:len(ids) // 2], ids[len(ids) // 2:])] if len(ids) > 1 else []
        else:
            halves = [(tuple(p), tuple(g for g in ids if g not in p)) for p in parts.values()]
        for a, b in halves:
            if topo.holds_model(a) and topo.holds_model(b):
                moves += [Move("split", (group,), ((a, ra), (b, rb))) for ra, rb in _role_pairs(role, allowed_roles)]
    return moves


def _merges(grouping: Grouping, partners: list[list[int]], allowed_roles: tuple[str, ...]) -> list[Move]:
    moves, seen = [], set()
    for i, js in enumerate(partners):
        for j in js:
            if (min(i, j), max(i, j)) in seen:
                continue
            seen.add((min(i, j), max(i, j)))
            a, b = grouping[i], grouping[j]
            roles = dict.fromkeys(r for r in (a[1], b[1]) if r in allowed_roles) or dict.fromkeys(allowed_roles[:1])
            moves += [Move("merge", (a, b), ((a[0] + b[0], r),)) for r in roles]
    return moves


def _transfers(topo: Topology, grouping: Grouping, partners: list[list[int]]) -> list[Move]:
    """One host's part of a group, or one GPU of it, moved to a partner group."""
    moves = []
    for i, js in enumerate(partners):
        src_ids, src_role = grouping[i]
        for part in topo.host_parts(src_ids).values():
            pieces = [tuple(part)] + ([tuple(part[-1:])] if len(part) > 1 else [])
            for piece in pieces:
                rest = tuple(g for g in src_ids if g not in piece)
                if not rest or (topo.holds_model(src_ids) and not topo.holds_model(rest)):
                    continue
                for j in js:
                    dst_ids, dst_role = grouping[j]
                    moves.append(Move("move", (grouping[i], grouping[j]),
                                      ((rest, src_role), (dst_ids + piece, dst_role))))
    return moves


def _swaps(topo: Topology, grouping: Grouping, partners: list[list[int]]) -> list[Move]:
    """Equal-sized host parts of two groups exchanged (e.g. an A40 host for an RTX 3090 Ti host)."""
    moves = []
    for i, js in enumerate(partners):
        a_ids, a_role = grouping[i]
        for j in js:
            if j < i:
                continue
            b_ids, b_role = grouping[j]
            for p in topo.host_parts(a_ids).values():
                for q in topo.host_parts(b_ids).values():
                    if len(p) != len(q) or topo.host_of[p[0]] == topo.host_of[q[0]]:
                        continue
                    new_a = tuple(g for g in a_ids if g not in p) + tuple(q)
                    new_b = tuple(g for g in b_ids if g not in q) + tuple(p)
                    moves.append(Move("swap", (grouping[i], grouping[j]), ((new_a, a_role), (new_b, b_role))))
    return moves
