"""GPU groupings for the upper level: the initial grouping by bandwidth clustering, and the moves.

How it works (ThunderServe, MLSys 2025, section 4.1 "upper level"). A grouping partitions every GPU of
the cluster into groups, one model replica each, with a role per group. GPUs of a group that cannot
hold the model are simply left idle by `evaluate`, so every partition is a valid search state.

Initial grouping: single-linkage agglomerative clustering of hosts on the bandwidth matrix. Hosts with
room for two or more replicas are first cut into power-of-two chunks that each just hold the model;
then, while some cluster is "open" (too small for the model), the pair with the fastest link that
involves an open cluster is merged (two open ones first among equal links), so slow links are never
used to complete a replica while a fast one could.

Moves (the neighbourhood): flip a group's role; split a group (one host peeled off, or a single host
halved); merge two groups; move a piece of a group (one host's part, the second half of a part of
four or more GPUs, or one GPU) to another group; swap equal-sized pieces of two groups. Merges, moves
and swaps only pair a group with its MAX_PARTNERS best-linked groups plus RANDOM_PARTNERS random
others (a prefill pipeline may span a slow link): the neighbourhood grows linearly with the cluster.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from swarm.plan.cost import MEMORY_UTILISATION, MIN_KV_TOKENS
from swarm.plan.problem import Problem

MAX_PARTNERS = 4
RANDOM_PARTNERS = 2
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
    return cluster_levels(topo)[0]


def cluster_levels(topo: Topology) -> list[list[tuple[str, ...]]]:
    """The dendrogram: level 0 is `initial_clusters`; each next level merges its best-linked pair
    (fastest link, then the smaller merged memory), down to a single cluster."""
    agg = _Agglomeration(topo, _atoms(topo))
    while agg.merge(open_only=True):
        pass
    levels = [agg.clusters()]
    while agg.merge(open_only=False):
        levels.append(agg.clusters())
    return levels


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


class _Agglomeration:
    """Single-linkage agglomerative clustering on a cluster-to-cluster link matrix (Gbit/s)."""

    def __init__(self, topo: Topology, atoms: list[tuple[str, ...]]) -> None:
        self.topo = topo
        self.members: list[tuple[str, ...] | None] = list(atoms)
        hosts = [sorted({topo.host_of[g] for g in a}) for a in atoms]
        reach = np.stack([topo.gbps[h].max(axis=0) for h in hosts])  # (atoms, hosts)
        self.link = np.stack([reach[:, h].max(axis=1) for h in hosts], axis=1)  # (atoms, atoms)
        self.memory = np.array([sum(topo.memory_bytes[g] for g in a) for a in atoms], dtype=np.float64)
        self.is_open = np.array([not topo.holds_model(a) for a in atoms])

    def clusters(self) -> list[tuple[str, ...]]:
        return [self.topo.sorted_ids(m) for m in self.members if m is not None]

    def merge(self, *, open_only: bool) -> bool:
        """Merge the best pair (with an open cluster in it, if `open_only`); False when there is none."""
        alive = np.array([m is not None for m in self.members])
        i, j = np.triu_indices(len(self.members), k=1)
        ok = alive[i] & alive[j]
        if open_only:
            ok &= self.is_open[i] | self.is_open[j]
        i, j = i[ok], j[ok]
        if len(i) == 0:
            return False
        both_open = self.is_open[i] & self.is_open[j]
        # lexsort: the last key is the primary one; -i, -j make the earliest pair win among equals.
        k = np.lexsort((-j, -i, -(self.memory[i] + self.memory[j]), both_open, self.link[i, j]))[-1]
        a, b = int(i[k]), int(j[k])
        self.members[a] = self.members[a] + self.members[b]
        self.members[b] = None
        self.link[a] = self.link[:, a] = np.maximum(self.link[a], self.link[b])
        self.memory[a] += self.memory[b]
        self.is_open[a] = not self.topo.holds_model(self.members[a])
        return True


def prefill_affinity(topo: Topology, gpu_ids) -> float:
    """FLOP/s per byte/s of memory bandwidth: compute-heavy groups suit prefill (ThunderServe 4.1)."""
    cluster = topo.problem.cluster
    specs = [cluster.gpu(g) for g in gpu_ids]
    return sum(s.tflops for s in specs) / sum(s.memory_bandwidth_gbs for s in specs)


def neighbours(topo: Topology, grouping: Grouping, rng, allowed_roles: tuple[str, ...]) -> list[Move]:
    """Every move from `grouping`, each kind shuffled by `rng`, interleaved round-robin over the kinds
    (so any prefix of the list is a mixed sample of the neighbourhood)."""
    partners = _partners(topo, grouping, rng)
    kinds = [_flips(grouping, allowed_roles), _splits(topo, grouping, allowed_roles),
             _merges(grouping, partners, allowed_roles), _transfers(topo, grouping, partners),
             _swaps(topo, grouping, partners)]
    for k in kinds:
        rng.shuffle(k)
    interleaved: list[Move] = []
    for i in range(max(len(k) for k in kinds)):
        interleaved += [k[i] for k in kinds if i < len(k)]
    return interleaved


def _partners(topo: Topology, grouping: Grouping, rng) -> list[list[int]]:
    """For each group, the MAX_PARTNERS other groups with the fastest links to it (ties: earlier first),
    plus RANDOM_PARTNERS others drawn by `rng` (a prefill pipeline may well span a slow link)."""
    hosts = [sorted({topo.host_of[g] for g in ids}) for ids, _ in grouping]
    reach = np.stack([topo.gbps[h].max(axis=0) for h in hosts])  # (groups, hosts): best link to each host
    link = np.stack([reach[:, h].max(axis=1) for h in hosts], axis=1)  # (groups, groups)
    partners = []
    for i in range(len(grouping)):
        others = [j for j in np.argsort(-link[i], kind="stable") if j != i]
        rest = others[MAX_PARTNERS:]
        extra = rng.sample(rest, min(RANDOM_PARTNERS, len(rest)))
        partners.append([int(j) for j in others[:MAX_PARTNERS] + extra])
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
        for piece in _pieces(topo, src_ids):
            rest = tuple(g for g in src_ids if g not in piece)
            if not rest or (topo.holds_model(src_ids) and not topo.holds_model(rest)):
                continue
            for j in js:
                dst_ids, dst_role = grouping[j]
                moves.append(Move("move", (grouping[i], grouping[j]), ((rest, src_role), (dst_ids + piece, dst_role))))
    return moves


def _swaps(topo: Topology, grouping: Grouping, partners: list[list[int]]) -> list[Move]:
    """Equal-sized pieces (a host's part of a group, or one GPU) on two hosts exchanged between groups."""
    moves = []
    for i, js in enumerate(partners):
        a_ids, a_role = grouping[i]
        for j in js:
            if j < i:
                continue
            b_ids, b_role = grouping[j]
            for p in _pieces(topo, a_ids):
                for q in _pieces(topo, b_ids):
                    whole = len(p) == len(a_ids) and len(q) == len(b_ids)  # = exchanging roles
                    if whole or len(p) != len(q) or topo.host_of[p[0]] == topo.host_of[q[0]]:
                        continue
                    new_a = tuple(g for g in a_ids if g not in p) + q
                    new_b = tuple(g for g in b_ids if g not in q) + p
                    moves.append(Move("swap", (grouping[i], grouping[j]), ((new_a, a_role), (new_b, b_role))))
    return moves


def _pieces(topo: Topology, gpu_ids: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each host's part of a group, the second half of a part of four or more GPUs (a TP-sized stage),
    and the last GPU of a part of two or more."""
    pieces = []
    for part in topo.host_parts(gpu_ids).values():
        pieces.append(tuple(part))
        if len(part) >= 4:
            pieces.append(tuple(part[len(part) // 2:]))
        if len(part) > 1:
            pieces.append((part[-1],))
    return pieces


def zones(topo: Topology, max_gpus: int) -> list[list[str]]:
    """Hosts clustered by bandwidth (single linkage, fastest links first) into zones of at most
    `max_gpus` GPUs, for planning a large cluster piece by piece. Returns GPU ids per zone."""
    cluster = topo.problem.cluster
    members = [list(h.gpu_ids) for h in cluster.hosts]
    link = topo.gbps.copy()
    np.fill_diagonal(link, -np.inf)
    alive = np.ones(len(members), dtype=bool)
    sizes = np.array([len(m) for m in members])
    while True:
        fits = (sizes[:, None] + sizes[None, :] <= max_gpus) & alive[:, None] & alive[None, :]
        candidates = np.where(fits, link, -np.inf)
        a, b = np.unravel_index(int(np.argmax(candidates)), candidates.shape)  # first of equals
        if not np.isfinite(candidates[a, b]):
            return [members[i] for i in range(len(members)) if alive[i]]
        a, b = min(a, b), max(a, b)
        members[a] += members[b]
        sizes[a] += sizes[b]
        alive[b] = False
        link[a] = link[:, a] = np.maximum(link[a], link[b])
        link[a, a] = -np.inf
