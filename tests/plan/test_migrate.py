"""Migration matching: Kuhn–Munkres against brute force, identity, and small cases with known optima."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from swarm.models import model_spec
from swarm.plan.migrate import assign_max, match_migration
from swarm.wire.plan import Group, Plan, Routing, Stage

MODEL = model_spec("llama-7b")  # 32 layers


def _plan(*groups: tuple[str, list[tuple[tuple[str, ...], tuple[int, int]]]]) -> Plan:
    """groups: (role, [(gpus of a stage, layers)]); routing sends everything from the first prefill group."""
    built = tuple(Group(id=i, role=role, tp=len(stages[0][0]), pp=len(stages),
                        stages=tuple(Stage(gpus, layers) for gpus, layers in stages))
                  for i, (role, stages) in enumerate(groups))
    p = next(g.id for g in built if g.role == "prefill")
    d = next(g.id for g in built if g.role == "decode")
    return Plan(format=1, epoch=0, model=MODEL.name, groups=built,
                routing=Routing(prefill={p: 1.0}, kv=((p, d, 1.0),)))


def _brute_force(w: np.ndarray) -> float:
    n, m = w.shape
    if n <= m:
        return max(sum(w[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(m), n))
    return _brute_force(w.T)


@pytest.mark.parametrize("seed", range(40))
def test_assignment_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n, m = (int(x) for x in rng.integers(1, 6, size=2))
    w = rng.integers(0, 20, size=(n, m)).astype(float)
    pairs = assign_max(w)
    assert len(pairs) == min(n, m)
    assert len({r for r, _ in pairs}) == len(pairs) and len({c for _, c in pairs}) == len(pairs)
    assert sum(w[r, c] for r, c in pairs) == pytest.approx(_brute_force(w))


def test_assignment_of_known_matrix():
    w = np.array([[7.0, 5.0, 11.0], [5.0, 4.0, 1.0], [9.0, 3.0, 2.0]])
    assert sorted(assign_max(w)) == [(0, 2), (1, 1), (2, 0)]  # 11 + 4 + 9 = 24


def test_identical_plans_keep_everything():
    plan = _plan(("prefill", [(("a/0", "a/1"), (0, 32))]),
                 ("decode", [(("b/0",), (0, 16)), (("c/0",), (16, 32))]))
    m = match_migration(plan, plan, MODEL)
    assert m.moved_bytes == 0 and m.loads == ()
    assert m.kept_bytes == MODEL.weight_bytes * 2
    assert m.plan == plan
    assert m.group_map == {0: 0, 1: 1}


def test_swapped_tp_ranks_are_matched_back():
    old = _plan(("prefill", [(("a/0", "a/1"), (0, 32))]), ("decode", [(("b/0",), (0, 32))]))
    new = _plan(("prefill", [(("a/1", "a/0"), (0, 32))]), ("decode", [(("b/0",), (0, 32))]))
    m = match_migration(old, new, MODEL)
    assert m.moved_bytes == 0
    assert m.plan.groups[0].stages[0].gpus == ("a/0", "a/1")


def test_swapped_pipeline_stages_on_one_host_are_matched_back():
    old = _plan(("prefill", [(("a/0",), (0, 16)), (("a/1",), (16, 32))]), ("decode", [(("b/0",), (0, 32))]))
    new = _plan(("prefill", [(("a/1",), (0, 16)), (("a/0",), (16, 32))]), ("decode", [(("b/0",), (0, 32))]))
    m = match_migration(old, new, MODEL)
    assert m.moved_bytes == 0
    assert [s.gpus for s in m.plan.groups[0].stages] == [("a/0",), ("a/1",)]


def test_new_split_keeps_the_overlap_and_loads_the_rest():
    """Old: a/0 holds [0, 32). New: a pipeline [0, 20) on some GPU of host a, [20, 32) on host b."""
    old = _plan(("prefill", [(("a/0",), (0, 32))]), ("decode", [(("c/0",), (0, 32))]))
    new = _plan(("prefill", [(("a/1",), (0, 20)), (("b/0",), (20, 32))]), ("decode", [(("c/0",), (0, 32))]))
    assert match_migration(old, new, MODEL).plan == new  # only the GPUs `new` names: nothing to permute
    m = match_migration(old, new, MODEL, available=["a/0", "a/1", "b/0", "c/0"])
    # The best choice puts stage [0, 20) on a/0 (idle in `new`), which holds those layers already.
    assert m.plan.groups[0].stages[0].gpus == ("a/0",)
    assert m.kept_bytes == MODEL.stage_weight_bytes(0, 20) + MODEL.weight_bytes
    loads = {load.gpu: load for load in m.loads}
    assert set(loads) == {"b/0"} and loads["b/0"].num_bytes == MODEL.stage_weight_bytes(20, 32)
    assert m.moved_bytes == MODEL.stage_weight_bytes(20, 32)


def test_tp_change_keeps_shard_overlap():
    """tp 2 -> tp 1 on a/0: rank 0 of 2 held half of every matrix, so half the bytes are kept."""
    old = _plan(("prefill", [(("a/0", "a/1"), (0, 32))]), ("decode", [(("b/0",), (0, 32))]))
    new = _plan(("prefill", [(("a/0",), (0, 32))]), ("decode", [(("b/0",), (0, 32))]))
    m = match_migration(old, new, MODEL)
    assert m.kept_bytes == MODEL.weight_bytes // 2 + MODEL.weight_bytes
    assert m.moved_bytes == MODEL.weight_bytes - MODEL.weight_bytes // 2


def test_group_map_follows_the_kept_bytes():
    old = _plan(("prefill", [(("a/0",), (0, 32))]), ("decode", [(("b/0",), (0, 32))]))
    new = _plan(("decode", [(("a/0",), (0, 32))]), ("prefill", [(("b/0",), (0, 32))]))
    m = match_migration(old, new, MODEL)
    assert m.moved_bytes == 0
    assert m.group_map == {0: 0, 1: 1}
