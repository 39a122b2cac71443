"""Exhaustive search over groupings and roles of a small cluster (at most MAX_GPUS): the yardstick for tabu.

How it works. GPUs of one host are interchangeable (same type, same links), so a group is a vector of
GPU counts per host and a grouping a multiset partition of the host counts. Partitions are generated
once each (blocks in non-increasing lexicographic order). Blocks whose GPUs cannot hold the model
(`configure` finds no deployment) would be left idle by `evaluate`, so they get no role; every role
assignment of the other blocks is evaluated once (duplicates up to symmetry are skipped).
The lower level (`configure`) and the LP are the same as tabu's, so the two compare like for like.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from swarm.plan.errors import InfeasibleError, PlanError
from swarm.plan.evaluate import Evaluation, evaluate
from swarm.plan.grouping import Grouping, canonical, topology
from swarm.plan.parallel import configure
from swarm.plan.problem import Problem
from swarm.plan.search import SearchResult

MAX_GPUS = 8

Counts = tuple[int, ...]  # GPUs per host


def exhaustive(problem: Problem, *, allowed_roles: tuple[str, ...] = ("prefill", "decode")) -> SearchResult:
    """The best grouping and roles of every one there is (clusters of at most MAX_GPUS GPUs)."""
    cluster = problem.cluster
    if cluster.num_gpus > MAX_GPUS:
        raise PlanError(f"exhaustive search is for clusters of at most {MAX_GPUS} GPUs; {cluster.name!r} has "
                        f"{cluster.num_gpus} (use swarm.plan.plan for larger ones)")
    started = time.perf_counter()
    best: Evaluation | None = None
    history, count = [], 0
    for grouping in groupings(problem, allowed_roles):
        evaluation = evaluate(problem, grouping)
        count += 1
        if best is None or evaluation.score > best.score:
            best = evaluation
            history.append((count, time.perf_counter() - started, evaluation.score))
    if best is None or not best.is_feasible:
        raise InfeasibleError(f"no grouping of cluster {cluster.name!r} can serve {problem.model.name} with roles "
                              f"{allowed_roles}: no group of its GPUs holds the model, or too few do")
    return SearchResult(best, count, time.perf_counter() - started, tuple(history))


def groupings(problem: Problem, allowed_roles: tuple[str, ...]) -> Iterator[Grouping]:
    """Every distinct grouping (up to interchangeable GPUs of a host) with every role assignment."""
    topo = topology(problem)
    hosts = problem.cluster.hosts
    seen: set[tuple] = set()
    for blocks in multiset_partitions(tuple(h.num_gpus for h in hosts)):
        gpu_sets = _gpu_sets(problem, blocks)
        fitting = [ids for ids in gpu_sets if _fits(problem, ids)]
        idle = [ids for ids in gpu_sets if not _fits(problem, ids)]
        for roles in itertools.product(allowed_roles, repeat=len(fitting)):
            key = tuple(sorted((_counts_key(topo, ids), role) for ids, role in zip(fitting, roles, strict=True)))
            if key in seen:
                continue
            seen.add(key)
            yield canonical(topo, list(zip(fitting, roles, strict=True)) + [(ids, allowed_roles[0]) for ids in idle])


def multiset_partitions(counts: Counts) -> Iterator[list[Counts]]:
    """Partitions of the multiset with `counts` copies of each item, each exactly once."""
    def rec(remaining: Counts, bound: Counts) -> Iterator[list[Counts]]:
        if not any(remaining):
            yield []
            return
        for block in _blocks(remaining, bound):
            rest = tuple(r - b for r, b in zip(remaining, block, strict=True))
            for tail in rec(rest, block):
                yield [block, *tail]
    yield from rec(counts, counts)


def _blocks(remaining: Counts, bound: Counts) -> Iterator[Counts]:
    """Non-zero vectors <= remaining, lexicographically <= bound, largest first."""
    ranges = [range(r, -1, -1) for r in remaining]
    for block in itertools.product(*ranges):
        if any(block) and block <= bound:
            yield block


def _gpu_sets(problem: Problem, blocks: list[Counts]) -> list[tuple[str, ...]]:
    """Concrete GPU ids for each block: each host's GPUs handed out in order."""
    pools = [list(h.gpu_ids) for h in problem.cluster.hosts]
    sets = []
    for block in blocks:
        ids: list[str] = []
        for pool, n in zip(pools, block, strict=True):
            ids += pool[:n]
            del pool[:n]
        sets.append(tuple(ids))
    return sets


def _fits(problem: Problem, gpu_ids: tuple[str, ...]) -> bool:
    return any(configure(problem, gpu_ids, role) is not None for role in ("prefill", "decode", "both"))


def _counts_key(topo, gpu_ids: tuple[str, ...]) -> tuple[int, ...]:
    counts = [0] * len(topo.hosts)
    for g in gpu_ids:
        counts[topo.host_of[g]] += 1
    return tuple(counts)

