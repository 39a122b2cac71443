"""The tabu upper level: never worse than its start, deterministic per seed, colocated mode, clean errors."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.errors import SwarmError
from swarm.hardware import parse_cluster
from swarm.models import model_spec
from swarm.plan.errors import InfeasibleError, PlanError
from swarm.plan.evaluate import evaluate
from swarm.plan.search import default_evaluations, plan, ternary_max
from swarm.plan.validate import validate_plan

BIG = 1e6  # a wall-clock cap that never binds: the evaluation count decides


@pytest.fixture(scope="module")
def cloud_problem(make_problem, cloud32, llama30b, conv):
    return make_problem(cloud32, llama30b, conv, rate_rps=conv.rate_rps)


def test_search_is_never_worse_than_its_start(cloud_problem):
    result = plan(cloud_problem, budget_s=BIG, max_evaluations=40)
    assert result.start is not None and result.start.is_feasible
    assert result.best.score >= result.start.score
    assert result.num_evaluations == 40
    scores = [score for _, _, score in result.history]
    assert scores == sorted(scores) and len(set(scores)) == len(scores)  # the best only improves


def test_search_is_never_worse_than_an_initial_plan(cloud_problem):
    seeded = plan(cloud_problem, budget_s=BIG, max_evaluations=60, seed=3).best
    again = plan(cloud_problem, budget_s=BIG, max_evaluations=20, seed=5, initial=seeded.plan)
    assert again.best.score >= seeded.score


def test_same_seed_same_plan(make_problem, cloud32, llama30b, conv):
    # Fresh problems, so no cache is shared between the two runs.
    runs = [plan(make_problem(cloud32, llama30b, conv, rate_rps=conv.rate_rps), budget_s=BIG, seed=11,
                 max_evaluations=30) for _ in range(2)]
    assert runs[0].best.plan.to_json() == runs[1].best.plan.to_json()
    assert runs[0].num_evaluations == runs[1].num_evaluations == 30


def test_plan_is_valid_and_mixes_roles_and_gpu_types(cloud_problem, cloud32, llama30b):
    best = plan(cloud_problem, budget_s=BIG, max_evaluations=60).best
    validate_plan(best.plan, cloud32, llama30b)
    roles = {g.role for g in best.plan.groups}
    assert roles == {"prefill", "decode"}
    types = {cloud32.gpu(g).name for g in best.plan.gpu_ids}
    assert len(types) >= 3
    assert best.goodput_rps > 0
    assert best.score == evaluate(cloud_problem, [(g.gpu_ids, g.role) for g in best.plan.groups]).score


def test_colocated_search_gives_both_groups(cloud_problem, cloud32, llama30b):
    best = plan(cloud_problem, budget_s=BIG, max_evaluations=30, allowed_roles=("both",)).best
    assert {g.role for g in best.plan.groups} == {"both"}
    assert all(p == d for p, d, _ in best.plan.routing.kv)
    validate_plan(best.plan, cloud32, llama30b)


def test_model_that_fits_nowhere_is_a_clean_error(make_problem, mixed8, conv):
    problem = make_problem(mixed8, model_spec("llama-2-70b").__class__(
        "huge", 96, 12288, 96, 96, 49152, 32000, 2048), conv)
    with pytest.raises(InfeasibleError, match="huge.*(add GPUs|larger GPUs)"):
        plan(problem, budget_s=BIG, max_evaluations=10)


def test_bad_arguments_are_plan_errors(cloud_problem):
    with pytest.raises(PlanError, match="allowed_roles"):
        plan(cloud_problem, allowed_roles=("prefill",))
    with pytest.raises(PlanError, match="allowed_roles"):
        plan(cloud_problem, allowed_roles=("both", "decode"))
    with pytest.raises(PlanError, match="budget"):
        plan(cloud_problem, budget_s=0)


def test_wall_clock_cap_stops_the_search(make_problem, cloud32, llama30b, conv):
    result = plan(make_problem(cloud32, llama30b, conv), budget_s=0.3, max_evaluations=100_000)
    assert result.elapsed_s < 3.0 and result.num_evaluations < 100_000


def test_large_clusters_are_planned_zone_by_zone(monkeypatch, make_problem, cloud32, llama30b, conv):
    import swarm.plan.search as search

    monkeypatch.setattr(search, "DECOMPOSE_GPUS", 16)
    monkeypatch.setattr(search, "ZONE_GPUS", 16)
    result = plan(make_problem(cloud32, llama30b, conv, rate_rps=conv.rate_rps), budget_s=3.0,
                  max_evaluations=10)
    east = {g for h in ("a6000-0", "a6000-1", "a40-0", "a40-1") for g in cloud32.host(h).gpu_ids}
    for group in result.start.plan.groups:  # the start is the union of the two zones' plans
        assert set(group.gpu_ids) <= east or not set(group.gpu_ids) & east
    assert result.best.score >= result.start.score
    validate_plan(result.best.plan, cloud32, llama30b)


def test_default_evaluation_count_grows_with_the_budget():
    assert default_evaluations(20.0, 32) >= 9 * default_evaluations(2.0, 32)
    assert default_evaluations(2.0, 512) < default_evaluations(2.0, 32)


def test_ternary_max_finds_the_peak():
    for peak in range(1, 12):
        assert ternary_max(lambda k, p=peak: -abs(k - p), 1, 11) == peak


_GPUS = ["A40", "A6000", "A5000", "RTX3090Ti", "A100-80G"]


@st.composite
def small_clusters(draw):
    num_hosts = draw(st.integers(1, 3))
    text = ""
    for i in range(num_hosts):
        text += (f'[[host]]\nname = "h{i}"\ngpu = "{draw(st.sampled_from(_GPUS))}"\n'
                 f"count = {draw(st.integers(1, 3))}\n")
    text += f"[network]\ndefault_gbps = {draw(st.sampled_from([5, 10, 40]))}\n"
    return parse_cluster(text, name="random")


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(cluster=small_clusters(), model_name=st.sampled_from(["llama-7b", "llama-13b", "llama-30b"]))
def test_random_small_clusters_give_a_valid_plan_or_a_clean_error(make_problem, conv, cluster, model_name):
    model = model_spec(model_name)
    try:
        best = plan(make_problem(cluster, model, conv), budget_s=BIG, max_evaluations=15).best
    except SwarmError as e:
        assert str(e)
        return
    validate_plan(best.plan, cluster, model)
    assert {g.role for g in best.plan.groups} == {"prefill", "decode"}


def test_zone_plans_side_by_side_are_one_valid_plan(monkeypatch, make_problem, cloud32, llama30b, conv):
    """What a cluster too big for one routing LP gets: each zone routes within itself, requests split by
    the zones' goodput, and the predicted goodput is their sum."""
    import swarm.plan.search as search

    monkeypatch.setattr(search, "ZONE_GPUS", 16)
    problem = make_problem(cloud32, llama30b, conv, rate_rps=conv.rate_rps)
    _, zone_plans = search._plan_zones(problem, 1.0, 0, ("prefill", "decode"))
    assert len(zone_plans) == 2
    combined = search._side_by_side(problem, zone_plans)
    validate_plan(combined.plan, cloud32, llama30b)
    assert combined.goodput_rps == pytest.approx(sum(e.goodput_rps for e in zone_plans))
    zone_of = {g: i for i, e in enumerate(zone_plans) for g in e.plan.gpu_ids}
    groups = {g.id: g for g in combined.plan.groups}
    for p, d, _ in combined.plan.routing.kv:
        assert zone_of[groups[p].gpu_ids[0]] == zone_of[groups[d].gpu_ids[0]]
    first_zone = sum(s for gid, s in combined.plan.routing.prefill.items() if zone_of[groups[gid].gpu_ids[0]] == 0)
    assert first_zone == pytest.approx(zone_plans[0].goodput_rps / combined.goodput_rps)
