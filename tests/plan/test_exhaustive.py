"""Exhaustive search on clusters of up to 8 GPUs, and tabu against it (within 2% of goodput)."""

from __future__ import annotations

import random

import pytest

from swarm.hardware import parse_cluster
from swarm.models import model_spec
from swarm.plan.errors import PlanError
from swarm.plan.exhaustive import exhaustive, groupings, multiset_partitions
from swarm.plan.search import plan

TOLERANCE = 0.02
BIG = 1e6


@pytest.mark.parametrize(("counts", "expected"), [
    ((1,), 1), ((1, 1, 1), 5), ((1, 1, 1, 1), 15),  # Bell numbers
    ((3,), 3), ((4,), 5),  # integer partitions
    ((2, 2), 9), ((2, 2, 2), 66), ((2, 2, 2, 2), 712),  # OEIS A020555
])
def test_multiset_partitions_are_counted_once_each(counts, expected):
    found = list(multiset_partitions(counts))
    assert len(found) == expected
    assert len({tuple(sorted(p)) for p in found}) == expected
    assert all(tuple(map(sum, zip(*p, strict=True))) == counts for p in found)


def test_groupings_cover_every_gpu_once(make_problem, mixed8, llama30b, conv):
    problem = make_problem(mixed8, llama30b, conv)
    for grouping in groupings(problem, ("prefill", "decode")):
        gpus = [g for ids, _ in grouping for g in ids]
        assert sorted(gpus) == sorted(mixed8.gpu_ids)


def _agrees(problem, seeds=(0, 1), max_evaluations=100):
    best = exhaustive(problem).best
    assert best.goodput_rps > 0
    for seed in seeds:
        found = plan(problem, budget_s=BIG, seed=seed, max_evaluations=max_evaluations).best
        assert found.score <= best.score + 1e-9  # exhaustive is an upper bound for the same evaluator
        assert found.goodput_rps >= (1 - TOLERANCE) * best.goodput_rps, (seed, found.plan, best.plan)


def test_tabu_matches_exhaustive_on_mixed4(make_problem, conv):
    from swarm.hardware import load_cluster

    _agrees(make_problem(load_cluster("mixed-4"), model_spec("llama-7b"), conv, slo_scale=3.0,
                         rate_rps=conv.rate_rps))


def test_tabu_matches_exhaustive_on_mixed8(make_problem, mixed8, llama30b, conv):
    _agrees(make_problem(mixed8, llama30b, conv, slo_scale=2.0, rate_rps=conv.rate_rps), seeds=(0,))


def _random_cluster(seed: int):
    """2-3 hosts of 1-2 GPUs (at most 5 GPUs) of random types, 5 or 40 Gbps between hosts."""
    rng = random.Random(seed)
    text, num_gpus = "", 0
    for i in range(rng.randint(2, 3)):
        count = min(rng.randint(1, 2), 5 - num_gpus)
        num_gpus += count
        text += f'[[host]]\nname = "h{i}"\ngpu = "{rng.choice(["A40", "A6000", "A5000", "RTX3090Ti"])}"\n'
        text += f"count = {count}\n"
    text += f"[network]\ndefault_gbps = {rng.choice([5, 40])}\n"
    return parse_cluster(text, name=f"random-{seed}")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tabu_matches_exhaustive_on_random_small_clusters(make_problem, conv, seed):
    cluster = _random_cluster(seed)
    problem = make_problem(cluster, model_spec("llama-7b"), conv, slo_scale=3.0, rate_rps=conv.rate_rps)
    _agrees(problem, seeds=(seed,), max_evaluations=100)


def test_exhaustive_refuses_large_clusters(make_problem, cloud32, llama30b, conv):
    with pytest.raises(PlanError, match="at most 8 GPUs"):
        exhaustive(make_problem(cloud32, llama30b, conv))
