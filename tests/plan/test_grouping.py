"""Initial grouping by bandwidth clustering, and the neighbourhood moves of the tabu search."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from swarm.plan.grouping import apply_move, canonical, initial_clusters, neighbours, topology, zones

ROLES = ("prefill", "decode")


def _partition_ok(topo, grouping) -> bool:
    gpus = [g for ids, _ in grouping for g in ids]
    return sorted(gpus) == sorted(topo.order) and len(gpus) == len(set(gpus))


def test_initial_clusters_partition_the_cluster_and_each_holds_the_model(make_problem, cloud32, llama30b, conv):
    topo = topology(make_problem(cloud32, llama30b, conv))
    clusters = initial_clusters(topo)
    assert sorted(g for c in clusters for g in c) == sorted(cloud32.gpu_ids)
    assert all(topo.holds_model(c) for c in clusters)


def test_initial_clusters_follow_fast_links(make_problem, cloud32, llama30b, conv):
    """cloud-32's 2-GPU hosts pair up over 20-40 Gbps links, never over the 5 Gbps default."""
    topo = topology(make_problem(cloud32, llama30b, conv))
    for cluster in initial_clusters(topo):
        hosts = sorted({cloud32.host_of(g).name for g in cluster})
        for i, a in enumerate(hosts):
            for b in hosts[i + 1:]:
                assert cloud32.host_gbps(a, b) >= 20, (cluster, a, b)


def test_large_hosts_are_cut_into_replica_sized_chunks(make_problem, inhouse, llama7b, conv):
    """8x A100-80G and llama-7b: one GPU holds a replica, so the host becomes 8 one-GPU groups."""
    topo = topology(make_problem(inhouse, llama7b, conv))
    assert sorted(len(c) for c in initial_clusters(topo)) == [1] * 8


def test_a_model_too_large_for_a_host_spans_hosts(make_problem, cloud32, conv):
    """llama-65b (130 GB) fits a 4x 48 GB host, but 24 GB GPUs must pool two hosts or more."""
    from swarm.models import model_spec

    topo = topology(make_problem(cloud32, model_spec("llama-65b"), conv))
    clusters = initial_clusters(topo)
    assert all(topo.holds_model(c) for c in clusters)
    for c in clusters:
        if cloud32.gpu(c[0]).memory_gb < 48:
            assert len({cloud32.host_of(g).name for g in c}) >= 2, c


@pytest.fixture
def start(make_problem, mixed8, llama7b, conv, hosts_of):
    """mixed-8 (4 hosts of 2) with llama-7b, which one GPU holds: one group per host, roles alternating."""
    topo = topology(make_problem(mixed8, llama7b, conv))
    return topo, canonical(topo, [(ids, ROLES[i % 2]) for i, ids in enumerate(hosts_of(mixed8).values())])


def test_every_move_keeps_a_partition_of_all_gpus(start):
    topo, grouping = start
    moves = neighbours(topo, grouping, random.Random(0), ROLES)
    assert {m.kind for m in moves} == {"flip", "split", "merge", "move", "swap"}
    for move in moves:
        after = apply_move(topo, grouping, move)
        assert _partition_ok(topo, after), move
        assert after != grouping


def test_flip_changes_only_one_role(start):
    topo, grouping = start
    flips = [m for m in neighbours(topo, grouping, random.Random(0), ROLES) if m.kind == "flip"]
    assert len(flips) == len(grouping)
    for move in flips:
        after = apply_move(topo, grouping, move)
        assert [ids for ids, _ in after] == [ids for ids, _ in grouping]
        assert sum(a != b for a, b in zip(after, grouping, strict=True)) == 1


def test_neighbourhood_order_is_seeded_and_mixed(start):
    topo, grouping = start
    a = neighbours(topo, grouping, random.Random(7), ROLES)
    assert a == neighbours(topo, grouping, random.Random(7), ROLES)
    assert a != neighbours(topo, grouping, random.Random(8), ROLES)
    assert len(Counter(m.kind for m in a[:10])) == 5  # interleaved round-robin over the kinds


def test_colocated_roles_have_no_flips(start):
    topo, grouping = start
    both = canonical(topo, [(ids, "both") for ids, _ in grouping])
    moves = neighbours(topo, both, random.Random(0), ("both",))
    assert moves and all(m.kind != "flip" for m in moves)
    assert all(role == "both" for m in moves for _, role in m.added)


def test_zones_respect_the_cap_and_cut_the_slowest_links(make_problem, cloud32, llama30b, conv):
    """cloud-32 in zones of 16: the us-east A6000/A40 hosts (40 Gbps) and the rest (20-40 Gbps)."""
    topo = topology(make_problem(cloud32, llama30b, conv))
    found = zones(topo, 16)
    assert sorted(g for z in found for g in z) == sorted(cloud32.gpu_ids)
    assert all(len(z) <= 16 for z in found)
    east = {g for h in ("a6000-0", "a6000-1", "a40-0", "a40-1") for g in cloud32.host(h).gpu_ids}
    assert set(map(frozenset, found)) == {frozenset(east), frozenset(set(cloud32.gpu_ids) - east)}
