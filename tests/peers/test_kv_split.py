"""KV hand-off between pipelines split differently: which stage sends which layers where (`kv_routes`), and
the engines' partial imports (slices of layers arriving separately, a stage runnable only when complete)."""

from __future__ import annotations

from functools import partial

import pytest

from kernels import KvFormat
from peers.daemon_errors import ReplicaFailedError
from peers.engine import Engine, EngineConfig, SamplingParams
from peers.errors import HandoffError
from peers.kvroute import KvRoute, hand_off_phases, kv_routes

PARAMS = SamplingParams(max_tokens=9, ignore_eos=True)
PROMPTS = ([5, 17, 99, 3, 42, 7], [200, 1, 2, 3], [64] * 21)


def test_uneven_splits_route_every_layer_once_to_the_stage_holding_it():
    prefill = [("P0", 0, 10), ("P1", 10, 30)]
    decode = [("D0", 0, 20), ("D1", 20, 30)]
    assert kv_routes(prefill, decode) == [KvRoute("P0", "D0", 0, 0, 10), KvRoute("P1", "D0", 0, 10, 20),
                                          KvRoute("P1", "D1", 1, 20, 30)]
    prefill = [("P0", 0, 7), ("P1", 7, 19), ("P2", 19, 30)]
    decode = [("D0", 0, 12), ("D1", 12, 13), ("D2", 13, 30)]
    routes = kv_routes(prefill, decode)
    assert [(r.source, r.target, r.first_layer, r.last_layer) for r in routes] == [
        ("P0", "D0", 0, 7), ("P1", "D0", 7, 12), ("P1", "D1", 12, 13), ("P1", "D2", 13, 19), ("P2", "D2", 19, 30)]
    for index, (peer, first, last) in enumerate(decode):  # each decode stage gets exactly its layers
        got = sorted(layer for r in routes if r.target_stage == index for layer in range(r.first_layer, r.last_layer))
        assert got == list(range(first, last)) and all(r.target == peer for r in routes if r.target_stage == index)


def test_equal_and_single_stage_splits_send_one_slice_per_stage():
    assert kv_routes([("P", 0, 30)], [("D", 0, 30)]) == [KvRoute("P", "D", 0, 0, 30)]
    same = [("A", 0, 15), ("B", 15, 30)]
    assert [(r.source, r.first_layer, r.last_layer) for r in kv_routes(same, [("X", 0, 15), ("Y", 15, 30)])] == [
        ("A", 0, 15), ("B", 15, 30)]
    assert len(kv_routes([("P", 0, 30)], [("D0", 0, 1), ("D1", 1, 2), ("D2", 2, 30)])) == 3


def test_routes_of_mismatched_replicas_are_refused():
    with pytest.raises(ReplicaFailedError, match="layers"):
        kv_routes([("P", 0, 30)], [("D", 0, 20)])
    with pytest.raises(ReplicaFailedError, match="consecutive"):
        kv_routes([("P0", 0, 10), ("P1", 12, 30)], [("D", 0, 30)])


def test_the_decode_head_gets_its_slices_last():
    routes = kv_routes([("P0", 0, 10), ("P1", 10, 30)], [("D0", 0, 20), ("D1", 20, 30)])
    phases = hand_off_phases(routes)
    assert [[r.target for r in phase] for phase in phases] == [["D1"], ["D0", "D0"]]
    assert hand_off_phases(kv_routes([("P", 0, 30)], [("D", 0, 30)])) == [[KvRoute("P", "D", 0, 0, 30)]]


def engine(folder, role: str, first: int = 0, last: int | None = None) -> Engine:
    return Engine.load(folder, EngineConfig(role=role, first_layer=first, last_layer=last, num_kv_blocks=64,
                                            block_size_tokens=16))


def pipeline_prefill(stages: list[Engine], prompts) -> dict:
    """Prefill every prompt through a pipeline of engines; the first token events."""
    head = stages[0]
    for i, prompt in enumerate(prompts):
        head.add(f"r{i}", prompt, params=PARAMS)
    firsts = {}
    while head.has_work():
        for event in step(stages):
            assert event.finish_reason == "prefilled"
            firsts[event.request_id] = event
    return firsts


def step(stages: list[Engine]) -> list:
    """One step of a one-engine replica or of a pipeline of engines; its token events."""
    head = stages[0]
    if len(stages) == 1:
        return head.step()
    blob = head.step_hidden()
    for stage in stages[1:]:
        blob = stage.run_hidden(blob)
    return head.accept_tokens(blob)


def export_slice(stages: list[Engine], request_id: str, num_tokens: int, layers: tuple[int, int]) -> bytes:
    stage = next(s for s in stages if s.stage.first_layer <= layers[0] < s.stage.last_layer)
    if stage.stage.is_first:
        return stage.export_kv(request_id, KvFormat(bits=16), release=False, layers=layers)
    return stage.export_remote_kv(request_id, num_tokens, layers, KvFormat(bits=16))


def decode_all(stages: list[Engine]) -> dict[str, list[int]]:
    head, outputs = stages[0], {}
    while head.has_work():
        for event in step(stages):
            outputs.setdefault(event.request_id, []).extend(event.token_ids)
    return outputs


def reference(folder) -> list[list[int]]:
    both = engine(folder, "both")
    for i, prompt in enumerate(PROMPTS):
        both.add(f"r{i}", prompt, params=PARAMS)
    outputs = decode_all([both])
    return [outputs[f"r{i}"] for i in range(len(PROMPTS))]


@pytest.mark.parametrize("prefill_split,decode_split", [([1], [3]), ([2], [2]), ([], [1, 2]), ([3], []), ([], [])])
def test_a_prefill_pipeline_hands_kv_to_a_decode_pipeline_split_differently(tiny_model_dir, prefill_split,
                                                                            decode_split):
    def ranges(cuts):
        bounds = [0, *cuts, 4]
        return list(zip(bounds, bounds[1:], strict=False))

    prefill = [engine(tiny_model_dir, "prefill", a, b) for a, b in ranges(prefill_split)]
    decode = [engine(tiny_model_dir, "decode", a, b) for a, b in ranges(decode_split)]
    firsts = pipeline_prefill(prefill, PROMPTS)
    routes = kv_routes([(str(i), *r) for i, r in enumerate(ranges(prefill_split))],
                       [(str(i), *r) for i, r in enumerate(ranges(decode_split))])
    for request_id, first in firsts.items():
        num_tokens = len(first.prompt_token_ids)
        slices_left = [sum(r.target_stage == i for r in routes) for i in range(len(decode))]
        for phase in hand_off_phases(routes):
            for route in phase:
                blob = export_slice(prefill, request_id, num_tokens, (route.first_layer, route.last_layer))
                is_complete = decode[route.target_stage].import_kv_part(
                    request_id, blob, prompt_token_ids=list(first.prompt_token_ids),
                    output_token_ids=list(first.token_ids), params=PARAMS)
                slices_left[route.target_stage] -= 1
                assert is_complete == (slices_left[route.target_stage] == 0)  # complete with its last slice
        assert all(request_id in s.remote_blocks for s in decode[1:]) and request_id in decode[0].seqs
        prefill[0].abort(request_id)
    rest = decode_all(decode)
    got = [list(firsts[f"r{i}"].token_ids) + rest[f"r{i}"] for i in range(len(PROMPTS))]
    assert got == reference(tiny_model_dir)
    released = decode[0].take_released_ids()
    for stage in decode[1:]:
        stage.release_remote(released)
    assert all(s.scheduler.blocks.num_used_blocks == 0 for s in decode)


def test_partial_imports_wait_for_every_layer_and_refuse_what_does_not_fit(tiny_model_dir):
    prefill = [engine(tiny_model_dir, "prefill", 0, 1), engine(tiny_model_dir, "prefill", 1, 4)]
    first = pipeline_prefill(prefill, [PROMPTS[0]])["r0"]
    num_tokens = len(first.prompt_token_ids)
    ids = {"prompt_token_ids": list(first.prompt_token_ids), "output_token_ids": list(first.token_ids),
           "params": PARAMS}
    low = export_slice(prefill, "r0", num_tokens, (0, 1))
    high = export_slice(prefill, "r0", num_tokens, (1, 3))
    last = export_slice(prefill, "r0", num_tokens, (3, 4))
    decode = engine(tiny_model_dir, "decode", 0, 3)
    with pytest.raises(HandoffError, match="own layers"):
        decode.import_kv_part("r0", last, **ids)
    assert decode.scheduler.blocks.num_used_blocks == 0 and not decode.partial_imports
    assert decode.import_kv_part("r0", high, **ids) is False
    assert not decode.has_work() and "r0" not in decode.seqs  # not runnable with layer 0 missing
    with pytest.raises(HandoffError, match="twice"):
        decode.import_kv_part("r0", high, **ids)
    with pytest.raises(HandoffError, match="tokens"):
        decode.import_kv_part("r0", low, **{**ids, "prompt_token_ids": ids["prompt_token_ids"] + [1]})
    assert decode.drop_partial_kv("r0") is True
    assert decode.scheduler.blocks.num_used_blocks == 0 and decode.released_ids == ["r0"]
    assert decode.import_kv_part("r0", low, **ids) is False and decode.import_kv_part("r0", high, **ids) is True
    assert decode.has_work() and decode.partial_imports == {}

    tail = engine(tiny_model_dir, "decode", 3, 4)
    assert tail.import_kv_part("r1", last, **ids) is True and "r1" in tail.remote_blocks
    blob = decode.step_hidden()
    with pytest.raises(HandoffError, match="holds no KV of request 'r0'"):  # never computed on garbage
        tail.run_hidden(blob)


def test_a_later_decode_stage_frees_a_kv_set_that_never_completes(tiny_model_dir, monkeypatch):
    from types import SimpleNamespace

    import trio

    from peers import kvlink
    from peers.daemon import Node
    from peers.worker import EngineWorker, GroupWorker
    from swarm.wire.requests import Ack, KvPush

    monkeypatch.setattr(kvlink, "KV_PART_WAIT_S", 0.3)
    prefill = [engine(tiny_model_dir, "prefill", 0, 2), engine(tiny_model_dir, "prefill", 2, 4)]
    first = pipeline_prefill(prefill, [PROMPTS[2]])["r0"]
    num_tokens = len(first.prompt_token_ids)
    slices = {layers: export_slice(prefill, "r0", num_tokens, layers) for layers in ((1, 2), (2, 4))}
    tail = engine(tiny_model_dir, "decode", 1, 4)

    def push(request_id: str, blob: bytes, group_id: int = 5) -> KvPush:
        return KvPush(request_id, 1, first.prompt_token_ids, first.token_ids, len(blob), group_id=group_id)

    async def main():
        async with trio.open_nursery() as nursery:
            # this peer holds the second stage of decode group 5 (and the prefill group 2, on another GPU)
            groups = {5: GroupWorker(5, 1, 2, None, "cpu", EngineWorker(tail)),
                      2: GroupWorker(2, 0, 1, None, "cpu", EngineWorker(prefill[0]))}
            node = SimpleNamespace(groups=groups, nursery=nursery, decode_sessions={})
            node.later_stage_worker = partial(Node.later_stage_worker, node)
            refused = await kvlink.take_pushed_kv(node, push("other", slices[(2, 4)], 2), slices[(2, 4)])
            assert refused.code == "unknown_request" and "group 2" in refused.message
            assert await kvlink.take_pushed_kv(node, push("lost", slices[(2, 4)]), slices[(2, 4)]) == Ack("lost")
            assert "lost" in tail.partial_imports and tail.scheduler.blocks.num_used_blocks > 0
            for layers in ((1, 2), (2, 4)):  # a set that completes is kept for the decode steps
                assert await kvlink.take_pushed_kv(node, push("kept", slices[layers]), slices[layers]) == Ack("kept")
            await trio.sleep(0.6)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert tail.partial_imports == {} and list(tail.remote_blocks) == ["kept"]
    assert tail.scheduler.blocks.num_used_blocks == len(tail.remote_blocks["kept"])


def test_the_hand_off_follows_the_plan_and_a_one_peer_replica_survives_a_re_plan(tiny_model_dir):
    from types import SimpleNamespace

    from peers.kvroute import replica_stages
    from peers.membership import PlanHolder
    from peers.worker import GroupWorker
    from swarm.wire.plan import PLAN_FORMAT, Group, Plan, Routing, Stage
    from swarm.wire.requests import GenerateRequest, PrefillJob

    peers = {"pa": "QmPa", "pb": "QmPb", "da": "QmDa", "db": "QmDb"}
    plan = Plan(PLAN_FORMAT, 5, "m", (Group(0, "prefill", 1, 2, (Stage(("pa/0",), (0, 1)), Stage(("pb/0",), (1, 4)))),
                                      Group(1, "decode", 1, 2, (Stage(("da/0",), (0, 3)), Stage(("db/0",), (3, 4))))),
                Routing({0: 1.0}, ((0, 1, 1.0),)))
    job = PrefillJob(GenerateRequest("r", prompt="x"), 5, "QmDa", 16, group_id=0, decode_group_id=1)
    old_job = PrefillJob(GenerateRequest("r", prompt="x"), 5, "QmDa", 16)  # from an entry peer without group ids

    def stages(first: int, last: int | None, holder: PlanHolder, job=job):
        group = GroupWorker(0, 0, 2, "QmPb", "cpu",
                            SimpleNamespace(engine=engine(tiny_model_dir, "prefill", first, last)))
        return replica_stages(SimpleNamespace(peer_id="QmPa", holder=holder), group, job)

    following = PlanHolder(plan, peers)
    split = ([("QmPa", 0, 1), ("QmPb", 1, 4)], [("QmDa", 0, 3), ("QmDb", 3, 4)])
    assert stages(0, 1, following) == split
    assert stages(0, 1, following, old_job) == split
    gone = PlanHolder(Plan(PLAN_FORMAT, 6, "m", (), Routing({}, ())), {})
    assert stages(0, None, gone) == ([("QmPa", 0, 4)], [("QmDa", 0, 4)])
    with pytest.raises(ReplicaFailedError, match="plan changed"):
        stages(0, 1, gone)
