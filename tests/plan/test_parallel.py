"""The lower level: TP inside hosts, layer splits by capability, stage order by bandwidth, caching."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swarm.hardware import parse_cluster
from swarm.models import model_spec
from swarm.plan.cost import group_cost
from swarm.plan.errors import PlanError
from swarm.plan.parallel import candidates, configure, host_chain, objective, split_layers, with_role
from swarm.plan.validate import plan_issues
from swarm.wire.plan import PLAN_FORMAT, Plan, Routing


def _check_deployment(deployment, cluster, model):
    for stage in deployment.stages:
        assert len(stage.gpus) == deployment.tp
        assert len({cluster.host_of(g).name for g in stage.gpus}) == 1  # TP never spans hosts
        assert len({cluster.gpu(g).name for g in stage.gpus}) == 1  # nor GPU types
    layers = [s.layers for s in deployment.stages]
    assert layers[0][0] == 0 and layers[-1][1] == model.num_layers
    assert all(a[1] == b[0] for a, b in zip(layers, layers[1:], strict=False))
    assert all(b > a for a, b in layers)
    assert deployment.pp == len(deployment.stages)


def test_tp_stays_inside_hosts_and_layers_cover_the_model(cloud32, llama30b, conv, make_problem):
    problem = make_problem(cloud32, llama30b, conv)
    rng = np.random.default_rng(3)
    for _ in range(30):
        ids = list(rng.choice(cloud32.gpu_ids, size=int(rng.integers(2, 12)), replace=False))
        for role in ("prefill", "decode", "both"):
            deployment = configure(problem, ids, role)
            if deployment is not None:
                assert sorted(deployment.gpu_ids) == sorted(ids)
                _check_deployment(deployment, cloud32, llama30b)


def test_layer_split_follows_capability(conv, make_problem, two_host_cluster):
    cluster = two_host_cluster("A6000", "RTX3090Ti", 1, 1, gbps=40)  # 155 vs 80 TFLOPS, 48 vs 24 GB, 768 vs 1008 GB/s

    def layers(role, slo_scale):
        problem = make_problem(cluster, model_spec("llama-13b"), conv, slo_scale=slo_scale)
        return {s.gpus[0]: s.layers[1] - s.layers[0] for s in configure(problem, cluster.gpu_ids, role).stages}

    prefill = layers("prefill", 1.0)
    assert prefill["a/0"] > prefill["b/0"]  # compute-bound: the faster A6000 takes more
    tight = layers("decode", 0.9)
    assert tight["a/0"] < tight["b/0"]  # TPOT binds: the higher-bandwidth 3090 Ti takes more
    loose = layers("decode", 8.0)
    assert loose["a/0"] > loose["b/0"]  # memory binds: the 48 GB card takes more, for KV room


def test_split_layers_known_answers():
    assert split_layers(60, [1, 1], [100, 100]) == [30, 30]
    assert split_layers(60, [3, 1], [100, 100]) == [45, 15]
    assert split_layers(60, [1, 1], [10, 100]) == [10, 50]
    assert split_layers(10, [1, 1, 1], [10, 10, 10]) in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    assert split_layers(3, [1000, 1, 1], [10, 10, 10]) == [1, 1, 1]  # every stage keeps a layer
    assert split_layers(60, [1, 1], [20, 20]) is None
    assert split_layers(2, [1, 1, 1], [5, 5, 5]) is None


def test_host_chain_maximises_the_weakest_link():
    cluster = parse_cluster("""
[[host]]
name = "x"
gpu = "A40"
[[host]]
name = "y"
gpu = "A40"
[[host]]
name = "z"
gpu = "A40"
[network]
default_gbps = 1
[[network.link]]
between = ["x", "z"]
gbps = 40
[[network.link]]
between = ["z", "y"]
gbps = 25
""")
    chain = host_chain(cluster, ["x", "y", "z"])
    assert chain in (["x", "z", "y"], ["y", "z", "x"])


def test_configure_is_cached_and_order_free(cloud32, llama30b, conv, make_problem):
    problem = make_problem(cloud32, llama30b, conv)
    ids = cloud32.gpu_ids[:8]
    assert configure(problem, ids, "decode") is configure(problem, list(reversed(ids)), "decode")


def test_roles_pick_their_own_objective(cloud32, llama30b, conv, make_problem, hosts_of):
    problem = make_problem(cloud32, llama30b, conv)
    ids = hosts_of(cloud32)["a40-0"] + hosts_of(cloud32)["a40-1"]
    options = [d for d in candidates(problem, ids, "decode") if group_cost(problem, d).fits]
    assert len(options) >= 2
    best_decode = configure(problem, ids, "decode")
    best_prefill = configure(problem, ids, "prefill")
    best_key = objective(problem, group_cost(problem, best_decode), "decode")
    assert all(best_key <= objective(problem, group_cost(problem, d), "decode") for d in options)
    prefill_s = [group_cost(problem, d).prefill_s(problem.mean_prompt_tokens) for d in options]
    assert group_cost(problem, best_prefill).prefill_s(problem.mean_prompt_tokens) <= min(prefill_s) + 1e-12


def test_with_role_keeps_gpus_and_layers(cloud32, llama30b, conv, make_problem):
    problem = make_problem(cloud32, llama30b, conv)
    deployment = configure(problem, cloud32.gpu_ids[:8], "prefill")
    flipped = with_role(deployment, "decode")
    assert flipped.role == "decode" and flipped.stages == deployment.stages
    with pytest.raises(PlanError, match="role"):
        with_role(deployment, "serve")


def test_configure_names_unknown_gpus(cloud32, llama30b, conv, make_problem):
    problem = make_problem(cloud32, llama30b, conv)
    with pytest.raises(PlanError, match="nohost/0"):
        configure(problem, ["nohost/0"], "decode")


def test_forced_tp_and_pp(inhouse, llama30b, conv, make_problem):
    problem = make_problem(inhouse, llama30b, conv)
    deployment = configure(problem, inhouse.gpu_ids, "decode", tp=2, pp=4)
    assert (deployment.tp, deployment.pp) == (2, 4)
    assert configure(problem, inhouse.gpu_ids, "decode", tp=8) is None  # 52 heads do not split 8 ways


_GPUS = ["A40", "A6000", "A5000", "RTX3090Ti", "A100-80G", "L4"]


@st.composite
def small_clusters(draw):
    num_hosts = draw(st.integers(1, 4))
    lines = []
    for i in range(num_hosts):
        lines += ["[[host]]", f'name = "h{i}"', f'gpu = "{draw(st.sampled_from(_GPUS))}"',
                  f"count = {draw(st.integers(1, 4))}"]
    lines += ["[network]", f"default_gbps = {draw(st.sampled_from([1, 5, 10, 40]))}"]
    for i in range(num_hosts):
        for j in range(i + 1, num_hosts):
            if draw(st.booleans()):
                lines += ["[[network.link]]", f'between = ["h{i}", "h{j}"]',
                          f"gbps = {draw(st.sampled_from([2, 20, 100]))}"]
    return parse_cluster("\n".join(lines), name="random")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cluster=small_clusters(), model_name=st.sampled_from(["llama-7b", "llama-13b", "llama-30b"]),
       role=st.sampled_from(["prefill", "decode", "both"]), data=st.data())
def test_random_small_clusters_give_a_valid_deployment_or_none(cluster, model_name, role, data, conv, make_problem):
    model = model_spec(model_name)
    problem = make_problem(cluster, model, conv)
    ids = data.draw(st.lists(st.sampled_from(cluster.gpu_ids), min_size=1, unique=True))
    deployment = configure(problem, ids, role)
    if deployment is None:
        return
    _check_deployment(deployment, cluster, model)
    plan = Plan(format=PLAN_FORMAT, epoch=0, model=model.name, groups=(with_role(deployment, "both").group(0),),
                routing=Routing(prefill={0: 1.0}, kv=((0, 0, 1.0),)))
    assert plan_issues(plan, cluster, model) == []
