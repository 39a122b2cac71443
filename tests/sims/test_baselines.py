"""Every baseline planner produces a valid plan the simulator can run."""

from __future__ import annotations

import pytest

from sims.baselines import SYSTEMS, deployment_table, plan_system
from sims.errors import SimError
from sims.ledger import DONE
from sims.run import simulate
from sims.workloads import resample
from swarm.hardware import load_cluster
from swarm.models import model_spec
from swarm.plan import Problem, base_slo
from swarm.wire.plan import Plan, check_plan
from swarm.workloads import load_workload


@pytest.fixture(scope="module")
def problems():
    model, workload = model_spec("llama-7b"), load_workload("azure-conv")
    slo = base_slo(model, workload)
    return {
        name: Problem(load_cluster(name), model, workload, slo, rate_rps=2.0)
        for name in ("inhouse-8xa100", "mixed-4")
    }


@pytest.mark.parametrize("system", SYSTEMS)
def test_baseline_plan_is_valid_and_runs(problems, system):
    cluster = "inhouse-8xa100" if system in ("vllm-like", "distserve-like") else "mixed-4"
    planned = plan_system(system, problems[cluster], budget_s=0.3, seed=0)
    plan = planned.plan
    check_plan(plan)
    assert Plan.from_json(plan.to_json()) == plan
    assert set(plan.gpu_ids) <= set(problems[cluster].cluster.gpu_ids)
    roles = {g.role for g in plan.groups}
    if system in ("vllm-like", "hexgen-like"):
        assert roles == {"both"}
    else:
        assert roles == {"prefill", "decode"}
    ledger = resample(planned.problem.workload, 1.0, 20.0, seed=0)
    simulate(planned.problem, plan, ledger)
    assert (ledger.state == DONE).all()
    assert deployment_table(planned)[0]["system"] == system


def test_ablations_change_only_their_switch(problems):
    kv16 = plan_system("swarm-kv16", problems["mixed-4"], budget_s=0.3)
    uniform = plan_system("swarm-uniform", problems["mixed-4"], budget_s=0.3)
    assert kv16.problem.kv_bits == 16 and kv16.problem.orchestrate
    assert uniform.problem.kv_bits == 4 and not uniform.problem.orchestrate


def test_vllm_like_uses_fixed_tp(problems):
    plan = plan_system("vllm-like", problems["inhouse-8xa100"], tp=2).plan
    assert len(plan.groups) == 4 and all(g.tp * g.pp == 2 for g in plan.groups)


def test_unknown_system_is_named_in_the_error(problems):
    with pytest.raises(SimError, match="unknown system"):
        plan_system("nope", problems["mixed-4"])
