"""Shared fixtures of the planner tests: built-in clusters, models, workloads and a problem factory."""

from __future__ import annotations

import pytest

from swarm.hardware import load_cluster, parse_cluster
from swarm.models import model_spec
from swarm.plan.problem import Problem, base_slo
from swarm.workloads import load_workload


@pytest.fixture(scope="session")
def cloud32():
    return load_cluster("cloud-32")


@pytest.fixture(scope="session")
def mixed8():
    return load_cluster("mixed-8")


@pytest.fixture(scope="session")
def inhouse():
    return load_cluster("inhouse-8xa100")


@pytest.fixture(scope="session")
def llama30b():
    return model_spec("llama-30b")


@pytest.fixture(scope="session")
def llama7b():
    return model_spec("llama-7b")


@pytest.fixture(scope="session")
def conv():
    return load_workload("azure-conv")


@pytest.fixture(scope="session")
def code():
    return load_workload("azure-code")


def _make_problem(cluster, model, workload, *, rate_rps: float = 1.0, slo_scale: float = 1.0, **kwargs) -> Problem:
    """A problem at the base SLO times `slo_scale`; extra keyword arguments go to Problem."""
    return Problem(cluster, model, workload, base_slo(model, workload).scaled(slo_scale), rate_rps, **kwargs)


def _two_host_cluster(gpu_a: str = "A40", gpu_b: str = "A40", count_a: int = 2, count_b: int = 2,
                     gbps: float = 10.0, intra_gbps: float = 128.0):
    """Hosts 'a' and 'b' joined by one `gbps` link."""
    text = f"""
[[host]]
name = "a"
gpu = "{gpu_a}"
count = {count_a}
[[host]]
name = "b"
gpu = "{gpu_b}"
count = {count_b}
[network]
intra_host_gbps = {intra_gbps}
default_gbps = {gbps}
"""
    return parse_cluster(text, name=f"two-{gbps:g}")


def _hosts_of(cluster) -> dict[str, list[str]]:
    """GPU ids per host name, in cluster order."""
    return {h.name: h.gpu_ids for h in cluster.hosts}


@pytest.fixture(scope="session")
def make_problem():
    """Factory: make_problem(cluster, model, workload, rate_rps=1.0, slo_scale=1.0, **Problem fields)."""
    return _make_problem


@pytest.fixture(scope="session")
def two_host_cluster():
    """Factory: two_host_cluster(gpu_a, gpu_b, count_a, count_b, gbps, intra_gbps)."""
    return _two_host_cluster


@pytest.fixture(scope="session")
def hosts_of():
    """hosts_of(cluster) -> {host name: [gpu ids]}."""
    return _hosts_of
