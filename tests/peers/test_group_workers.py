"""A peer with several GPUs serves every group the plan puts it in, one engine each: its part of each group
(`placements`), the device of each part, which running engines a re-plan keeps (same layers, same device:
a role flip), which it stops and loads, per-group readiness in the digest and the status rows, and which
group a request record goes to (`group_for`)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import trio

from peers.applier import apply_plan, group_device
from peers.config import PeerConfig
from peers.daemon import Node
from peers.membership import Placement, PlanHolder, placements, ready_group_ids, ready_groups
from peers.pipeline import PipelineWorker
from peers.status import member_status
from peers.worker import EngineWorker, GroupWorker, group_for
from swarm.hardware import declared_profile
from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
from swarm.wire.requests import NO_GROUP, MemberDigest

DUO, TAIL = "QmDuo", "QmTail"
HOSTS = {"duo": DUO, "tail": TAIL}


def plan(epoch: int, model: str, groups: tuple[Group, ...], routing: Routing | None = None) -> Plan:
    prefill = [g.id for g in groups if g.role == "prefill"]
    decode = [g.id for g in groups if g.role == "decode"]
    return Plan(PLAN_FORMAT, epoch, model, groups,
                routing or Routing({p: 1 / len(prefill) for p in prefill}, tuple((p, d, 1.0) for p in prefill
                                                                                for d in decode[:1])))


def whole(group_id: int, role: str, gpu: str, num_layers: int = 4) -> Group:
    return Group(group_id, role, 1, 1, (Stage((gpu,), (0, num_layers)),))


def test_placements_list_this_peers_part_of_every_group():
    groups = (whole(0, "prefill", "duo/0"),
              Group(1, "decode", 1, 3, (Stage(("duo/2",), (0, 1)), Stage(("duo/3",), (1, 2)),
                                        Stage(("tail/0",), (2, 4)))),
              Group(2, "decode", 1, 2, (Stage(("tail/1",), (0, 3)), Stage(("duo/1",), (3, 4)))))
    p = plan(4, "m", groups)
    assert placements(p, HOSTS, DUO) == [
        Placement(0, "prefill", 0, 1, 0, 4, None, 0),
        Placement(1, "decode", 0, 2, 0, 2, TAIL, 2),  # duo/2 and duo/3 merge into one range on one engine
        Placement(2, "decode", 1, 2, 3, 4, None, 1)]
    assert [x.group_id for x in placements(p, HOSTS, TAIL)] == [1, 2]
    assert placements(p, HOSTS, "QmNobody") == [] and placements(None, HOSTS, DUO) == []
    assert placements(p, HOSTS, DUO)[1].describe() == "group 1 (decode, stage 1 of 2, layers 0-2)"


def test_readiness_is_per_group_and_a_digest_from_an_older_peer_counts_for_its_first_group():
    holder = PlanHolder(plan(4, "m", (whole(0, "prefill", "duo/0"), whole(1, "decode", "duo/1"),
                                      whole(2, "decode", "tail/0"))), HOSTS)
    assert ready_groups(MemberDigest(DUO, 1, (), ready_epoch=4, ready_groups=(1,)), holder) == {1}
    assert ready_groups(MemberDigest(DUO, 1, (), ready_epoch=3, ready_groups=(1,)), holder) == set()
    assert ready_groups(MemberDigest(DUO, 1, (), ready_epoch=4), holder) == {0}  # predates ready_groups
    assert ready_groups(MemberDigest(DUO, 1, ()), holder) == set()
    assert ready_group_ids(holder, {DUO: {1}, TAIL: {2}}) == {1, 2}
    assert ready_group_ids(holder, {DUO: {2}}) == set()


def test_group_for_picks_the_named_group_or_for_an_old_record_the_only_one_that_fits():
    head = GroupWorker(3, 0, 1, None, "cpu", worker=SimpleNamespace(engine=SimpleNamespace(
        config=SimpleNamespace(role="prefill"))))
    tail = GroupWorker(7, 1, 2, None, "cpu", worker=SimpleNamespace(engine=SimpleNamespace(
        config=SimpleNamespace(role="decode"))))
    loading = GroupWorker(8, 0, 1, None, "cpu")  # no worker yet
    groups = {3: head, 7: tail, 8: loading}
    assert group_for(groups, 7) is tail
    assert group_for(groups, 7, lambda g: g.stage == 0) is None
    assert group_for(groups, 8) is None and group_for(groups, 9) is None
    assert group_for(groups, NO_GROUP, lambda g: g.stage > 0) is tail
    assert group_for(groups, NO_GROUP) is None  # two groups fit: an old record cannot say which


def test_each_part_runs_on_its_first_gpus_cuda_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    def node(device: str, profile: str = "A40x4", is_probed: bool = False):
        prof = declared_profile(profile, peer_id=DUO, host="duo")
        prof = type(prof)(**{**vars(prof), "device": "cpu" if device == "cpu" else "cuda",
                             "is_emulated": not is_probed})
        return SimpleNamespace(profile=prof, config=PeerConfig(device=device))

    part = Placement(0, "decode", 0, 1, 0, 4, None, 3)
    assert group_device(node("cuda"), part) == "cuda:1"  # 4 declared GPUs on a 2-GPU machine share them
    assert group_device(node("cuda", is_probed=True), part) == "cuda:3"  # a real GPU 3: the load says if absent
    assert group_device(node("auto"), Placement(0, "decode", 0, 1, 0, 4, None, 1)) == "cuda:1"
    assert group_device(node("cuda:0"), part) == "cuda:0"  # pinned by the operator
    assert group_device(node("cpu"), part) == "cpu"


@pytest.fixture
def duo_node_run(tiny_model_dir):
    """Run `body(node)` with a real `Node` for peer "duo" (2 declared GPUs, engines on the CPU)."""

    def run(body):
        async def main():
            async with trio.open_nursery() as nursery:
                config = PeerConfig(device="cpu", kv_cache_bytes=8 << 20, max_num_seqs=4, profile="RTX3090Tix2")
                node = Node(config, SimpleNamespace(peer_id=DUO, addrs=[]), nursery)
                node.profile = declared_profile("RTX3090Tix2", peer_id=DUO, host="duo")
                node.model_path, node.model_name = tiny_model_dir, tiny_model_dir.name
                await node.preload()
                await body(node)
                nursery.cancel_scope.cancel()

        trio.run(main)

    return run


def test_a_re_plan_keeps_engines_with_the_same_layers_and_device_and_replaces_the_others(duo_node_run, caplog):
    caplog.set_level("INFO", logger="peers.applier")

    async def apply(node, p: Plan) -> None:
        node.holder = PlanHolder(p, HOSTS, 1, DUO)
        await apply_plan(node, p)

    async def body(node):
        name = node.model_name
        spare = node.spare
        await apply(node, plan(1, name, (whole(0, "prefill", "duo/0"), whole(1, "decode", "duo/1"))))
        assert sorted(node.groups) == [0, 1] and node.spare is None
        assert node.groups[0].worker.engine is spare  # the preloaded whole model took the first group: a role flip
        assert [node.groups[i].role for i in (0, 1)] == ["prefill", "decode"]
        assert node.ready_group_ids() == (0, 1) and node.digest().ready_groups == (0, 1)
        assert node.digest().ready_epoch == 1 and node.ready_by_peer()[DUO] == {0, 1}
        rows = member_status(node, node.digest(), node.profile, 0.0)
        assert [(g.group_id, g.role, g.device, g.is_ready) for g in rows.groups] == [
            (0, "prefill", "cpu", True), (1, "decode", "cpu", True)]
        assert rows.is_ready and (rows.group_id, rows.role) == (0, "prefill")
        assert "serving group 0 (prefill, layers 0-4) on cpu and group 1 (decode, layers 0-4) on cpu" in caplog.text

        engines = {g.worker.engine for g in node.groups.values()}
        await apply(node, plan(2, name, (whole(5, "decode", "duo/0"), whole(6, "prefill", "duo/1"))))
        assert sorted(node.groups) == [5, 6] and {g.worker.engine for g in node.groups.values()} == engines
        assert {g.role for g in node.groups.values()} == {"prefill", "decode"}
        assert all(g.role == g.worker.engine.config.role for g in node.groups.values())
        assert node.digest().ready_groups == (5, 6) and node.digest().ready_epoch == 2

        old_workers = [g.worker for g in node.groups.values()]
        pipeline = Group(9, "prefill", 1, 2, (Stage(("duo/0",), (0, 2)), Stage(("tail/0",), (2, 4))))
        await apply(node, plan(3, name, (pipeline, whole(10, "decode", "tail/1"))))
        (group,) = node.groups.values()
        assert (group.group_id, group.stage, group.next_peer, group.layers) == (9, 0, TAIL, (0, 2))
        assert isinstance(group.worker, PipelineWorker) and group.worker.engine not in engines
        assert all(w.channels == {} for w in old_workers)
        assert node.digest().ready_groups == (9,)
        assert node.ready_by_peer()[DUO] == {9} and 9 not in ready_group_ids(node.holder, node.ready_by_peer())

        await apply(node, plan(4, name, (whole(0, "prefill", "tail/0"), whole(1, "decode", "tail/1"))))
        assert node.groups == {} and node.digest().ready_epoch == -1 and node.digest().ready_groups == ()
        assert not rows_of(node).groups

    duo_node_run(body)


def rows_of(node):
    return member_status(node, node.digest(), node.profile, 0.0)


def test_requests_of_a_stopped_group_end_instead_of_hanging(duo_node_run):
    from peers.engine import SamplingParams

    async def body(node):
        p = plan(1, node.model_name, (whole(0, "prefill", "duo/0"), whole(1, "decode", "duo/1")))
        node.holder = PlanHolder(p, HOSTS, 1, DUO)
        await apply_plan(node, p)
        worker: EngineWorker = node.groups[0].worker
        node.groups[0].scope.cancel()  # hold the engine still, so the request stays in flight
        await trio.sleep(0.05)
        events = await worker.add("r", [1, 2, 3], params=SamplingParams(max_tokens=50, ignore_eos=True))
        node.stop_group(node.groups.pop(0))
        with trio.fail_after(5):
            assert [e async for e in events] == []

    duo_node_run(body)


def test_a_group_that_cannot_be_loaded_is_left_out_and_the_others_serve(duo_node_run, caplog):
    async def body(node):
        # a plan for a 9-layer model, on the 4-layer tiny model: duo's part of group 0 (layers 0-4) loads,
        # its part of group 1 (layers 0-9) cannot
        groups = (Group(0, "prefill", 1, 2, (Stage(("duo/0",), (0, 4)), Stage(("tail/0",), (4, 9)))),
                  Group(1, "decode", 1, 1, (Stage(("duo/1",), (0, 9)),)))
        p = Plan(PLAN_FORMAT, 1, node.model_name, groups, Routing({0: 1.0}, ((0, 1, 1.0),)))
        node.holder = PlanHolder(p, HOSTS, 1, DUO)
        await apply_plan(node, p)
        assert list(node.groups) == [0] and node.digest().ready_groups == (0,)
        assert "cannot load group 1 (decode, layers 0-9) on cpu" in caplog.text
        assert "serving group 0 (prefill, stage 1 of 2, layers 0-4) on cpu" in caplog.text

    caplog.set_level("INFO", logger="peers.applier")
    duo_node_run(body)
