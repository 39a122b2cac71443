"""validate_plan(): every way a plan can fail to fit its cluster and model is named."""

from __future__ import annotations

import pytest

from swarm.errors import WireError
from swarm.models import model_spec
from swarm.plan.errors import InvalidPlanError
from swarm.plan.validate import plan_issues, validate_plan
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage


def _plan(groups, model="llama-30b"):
    prefill = [g.id for g in groups if g.role in ("prefill", "both")]
    decode = [g.id for g in groups if g.role == "decode"]
    if decode:
        kv = tuple((p, d, 1 / (len(prefill) * len(decode))) for p in prefill for d in decode)
    else:
        kv = tuple((p, p, 1 / len(prefill)) for p in prefill)
    return Plan(format=PLAN_FORMAT, epoch=1, model=model, groups=tuple(groups),
                routing=Routing(prefill={p: 1 / len(prefill) for p in prefill}, kv=kv))


def _group(gid, role, stages, tp):
    return Group(id=gid, role=role, tp=tp, pp=len(stages),
                 stages=tuple(Stage(gpus=tuple(g), layers=layers) for g, layers in stages))


def test_a_good_plan_passes(cloud32, llama30b):
    plan = _plan([_group(0, "prefill", [(["a40-0/0", "a40-0/1"], (0, 60))], 2),
                  _group(1, "decode", [(["a6000-0/0", "a6000-0/1"], (0, 30)), (["a6000-1/0", "a6000-1/1"], (30, 60))], 2)])
    validate_plan(plan, cloud32, llama30b)


def test_unknown_gpu_is_named(cloud32, llama30b):
    plan = _plan([_group(0, "both", [(["a40-9/0", "a40-0/1"], (0, 60))], 2)])
    with pytest.raises(InvalidPlanError, match="'a40-9/0' is not in cluster"):
        validate_plan(plan, cloud32, llama30b)


def test_tensor_parallel_across_hosts_is_rejected(cloud32, llama30b):
    plan = _plan([_group(0, "both", [(["a40-0/0", "a40-1/0"], (0, 60))], 2)])
    assert any("spans hosts" in issue for issue in plan_issues(plan, cloud32, llama30b))


def test_layers_must_cover_the_model(cloud32):
    plan = _plan([_group(0, "both", [(["a40-0/0", "a40-0/1"], (0, 60))], 2)])
    issues = plan_issues(plan, cloud32, model_spec("llama-7b"))
    assert any("32 layers" in issue for issue in issues)
    assert any("model 'llama-30b'" in issue for issue in issues)


def test_memory_overflow_names_the_sizes(cloud32, llama30b):
    plan = _plan([_group(0, "both", [(["a5000-1/0"], (0, 30)), (["a5000-1/1"], (30, 60))], 1)])
    with pytest.raises(InvalidPlanError, match=r"need \d+\.\d GB per GPU .* A5000 offers 21\.6 GB"):
        validate_plan(plan, cloud32, llama30b)


def test_tp_must_divide_the_heads(inhouse, llama30b):
    gpus = [f"a100-0/{i}" for i in range(8)]
    plan = _plan([_group(0, "both", [(gpus, (0, 60))], 8)])
    assert any("tp=8 does not divide" in issue for issue in plan_issues(plan, inhouse, llama30b))


def test_a_gpu_in_two_groups_never_makes_a_plan():
    with pytest.raises(WireError, match="already in another group"):
        _plan([_group(0, "prefill", [(["a40-0/0"], (0, 60))], 1), _group(1, "decode", [(["a40-0/0"], (0, 60))], 1)])
