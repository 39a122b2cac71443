"""Fixtures of the simulator tests: a small problem and hand-built plans over the real planner parts."""

from __future__ import annotations

import pytest

from swarm.hardware import parse_cluster
from swarm.models import model_spec
from swarm.plan import Problem, base_slo, configure
from swarm.plan.evaluate import evaluate
from swarm.workloads import load_workload

TWO_HOSTS = """
name = "two-hosts"
[[host]]
name = "a"
gpu = "A100-80G"
count = 2
[[host]]
name = "b"
gpu = "A100-80G"
count = 2
[network]
default_gbps = 10
latency_ms = 1.0
"""


@pytest.fixture(scope="session")
def problem():
    cluster = parse_cluster(TWO_HOSTS, name="two-hosts")
    model, workload = model_spec("llama-7b"), load_workload("azure-conv")
    return Problem(cluster, model, workload, base_slo(model, workload).scaled(2.0), rate_rps=2.0)


@pytest.fixture(scope="session")
def split_plan(problem):
    """One prefill replica on host a, one decode replica on host b (KV crosses the 10 Gbit/s link)."""
    ids = problem.cluster.gpu_ids
    return evaluate(problem, [(ids[0:1], "prefill"), (ids[2:3], "decode")]).plan


@pytest.fixture(scope="session")
def wide_plan(problem):
    """Two prefill and two decode replicas of one GPU each."""
    ids = problem.cluster.gpu_ids
    return evaluate(
        problem, [([ids[0]], "prefill"), ([ids[2]], "prefill"), ([ids[1]], "decode"), ([ids[3]], "decode")]
    ).plan


@pytest.fixture(scope="session")
def colocated_plan(problem):
    ids = problem.cluster.gpu_ids
    return evaluate(problem, [([g], "both") for g in ids]).plan


def deployment(problem, gpu_ids, role):
    return configure(problem, gpu_ids, role)
