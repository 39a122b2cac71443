"""The coordinator's planning steps on emulated profiles: full plan, lightweight re-plan after a loss, fallback."""

from __future__ import annotations

from peers.config import PeerConfig
from peers.coordinator import PlanInputs, fallback_plan, full_plan, lightweight_plan
from swarm.hardware import declared_profile
from swarm.wire.plan import check_plan

PROFILES = (declared_profile("A40", peer_id="QmA40", host="a40"),
            declared_profile("RTX3090Ti", peer_id="QmTi0", host="ti0"),
            declared_profile("RTX3090Ti", peer_id="QmTi1", host="ti1"))
CONFIG = PeerConfig(plan_budget_s=0.3)


def inputs(profiles) -> PlanInputs:
    return PlanInputs(tuple(profiles), ())


def hosts_of(plan) -> set[str]:
    return {gpu.split("/")[0] for gpu in plan.gpu_ids}


def test_full_plan_splits_phases_over_the_three_peers(tiny_model_dir):
    plan, hosts, how = full_plan(CONFIG, tiny_model_dir, inputs(PROFILES), None, tiny_model_dir.name)
    check_plan(plan)
    assert how == "full" and plan.model == tiny_model_dir.name
    assert {g.role for g in plan.groups} == {"prefill", "decode"}
    assert hosts == {"a40": "QmA40", "ti0": "QmTi0", "ti1": "QmTi1"} and hosts_of(plan) <= set(hosts)


def test_lightweight_replan_after_a_loss_keeps_the_surviving_groups(tiny_model_dir):
    plan, hosts, _ = full_plan(CONFIG, tiny_model_dir, inputs(PROFILES), None, tiny_model_dir.name)
    survivors = [p for p in PROFILES if p.host != "ti1"]
    light = lightweight_plan(CONFIG, tiny_model_dir, inputs(survivors), plan, hosts)
    assert light is not None
    evaluation, light_hosts = light
    check_plan(evaluation.plan)
    kept = {tuple(g.gpu_ids) for g in evaluation.plan.groups}
    assert kept <= {tuple(g.gpu_ids) for g in plan.groups} and "ti1" not in hosts_of(evaluation.plan)
    assert {g.stages for g in evaluation.plan.groups} <= {g.stages for g in plan.groups}  # no weights move


def test_one_peer_gets_a_colocated_plan(tiny_model_dir):
    plan, _, how = full_plan(CONFIG, tiny_model_dir, inputs(PROFILES[:1]), None, tiny_model_dir.name)
    assert how == "full" and [g.role for g in plan.groups] == ["both"]


def test_fallback_plan_is_valid_for_one_and_many_peers(tiny_model_dir):
    single = fallback_plan(inputs(PROFILES[:1]), tiny_model_dir, "m")
    many = fallback_plan(inputs(PROFILES), tiny_model_dir, "m")
    check_plan(single), check_plan(many)
    assert [g.role for g in single.groups] == ["both"]
    assert [g.role for g in many.groups] == ["prefill", "decode", "decode"]
    assert many.groups[0].stages[0].gpus == ("a40/0",)  # the fastest peer prefills
