"""Lightweight re-plan: surviving groups keep their exact stages (no weights move); roles and routing change."""

from __future__ import annotations

import pytest

from swarm.plan.errors import InfeasibleError, PlanError
from swarm.plan.evaluate import evaluate_deployments
from swarm.plan.migrate import match_migration
from swarm.plan.parallel import Deployment
from swarm.plan.replan import replan, surviving_groups
from swarm.plan.search import plan
from swarm.plan.validate import validate_plan
from swarm.wire.plan import Group


def _layout(group: Group) -> tuple:
    """What must not change for weights to stay put: GPUs, TP, PP and each stage's layers."""
    return (group.tp, group.pp, group.stages)


@pytest.fixture(scope="module")
def current(make_problem, cloud32, llama30b, conv):
    problem = make_problem(cloud32, llama30b, conv, rate_rps=conv.rate_rps)
    return plan(problem, budget_s=1e6, max_evaluations=40, seed=1).best.plan.with_epoch(4)


def test_losing_a_gpu_drops_its_group_and_keeps_the_others_exactly(make_problem, cloud32, llama30b, conv,
                                                                   current):
    lost_group = max(current.groups, key=lambda g: len(g.gpu_ids))
    lost = lost_group.gpu_ids[-1]
    problem = make_problem(cloud32.without([lost]), llama30b, conv, rate_rps=conv.rate_rps)
    after = replan(problem, current).plan
    assert after.epoch == 5
    before = {_layout(g) for g in current.groups if g.id != lost_group.id}
    assert {_layout(g) for g in after.groups} == before
    assert lost not in after.gpu_ids
    validate_plan(after, problem.cluster, llama30b)
    assert match_migration(current, after, llama30b).moved_bytes == 0  # no weights move


def test_workload_shift_rechooses_roles_without_moving_weights(make_problem, cloud32, llama30b, code, current):
    problem = make_problem(cloud32, llama30b, code, rate_rps=code.rate_rps)
    result = replan(problem, current)
    assert {_layout(g) for g in result.plan.groups} == {_layout(g) for g in current.groups}
    assert match_migration(current, result.plan, llama30b).moved_bytes == 0
    kept_roles = evaluate_deployments(problem, [Deployment.from_group(g) for g in current.groups])
    assert result.score >= kept_roles.score  # never worse than keeping the old roles


def test_surviving_groups_are_the_untouched_ones(cloud32, current, make_problem, llama30b, conv):
    first = current.groups[0]
    problem = make_problem(cloud32.without(first.gpu_ids[:1]), llama30b, conv)
    survivors = surviving_groups(problem, current)
    assert [d.stages for d in survivors] == [g.stages for g in current.groups[1:]]


def test_nothing_left_is_a_clear_error(make_problem, cloud32, llama30b, conv, current):
    one_per_group = [g.gpu_ids[0] for g in current.groups]
    problem = make_problem(cloud32.without(one_per_group), llama30b, conv)
    with pytest.raises(InfeasibleError, match="full re-plan"):
        replan(problem, current)


def test_plan_for_another_model_is_rejected(make_problem, cloud32, llama7b, conv, current):
    with pytest.raises(PlanError, match="llama-30b"):
        replan(make_problem(cloud32, llama7b, conv), current)


def test_a_lone_surviving_decode_group_serves_both_phases(make_problem, cloud32, llama30b, conv, current):
    survivor = next(g for g in current.groups if g.role == "decode")
    lost = [g.gpu_ids[0] for g in current.groups if g.id != survivor.id]
    problem = make_problem(cloud32.without(lost), llama30b, conv, rate_rps=0.2)
    after = replan(problem, current).plan
    assert [(g.role, _layout(g)) for g in after.groups] == [("both", _layout(survivor))]
